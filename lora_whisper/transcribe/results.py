"""What a run gives back per input: a ``Transcription``, a ``Detection``, or a ``FileError`` naming the input."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .segments import Segment


@dataclass
class Transcription:
    """The result for one input file."""

    file: str
    text: str
    language: str | None
    language_probability: float | None
    adapter: str | None
    merged: bool
    duration: float
    languages: dict[str, float] = field(default_factory=dict)
    """Top-k detected language probabilities (empty when the language was forced)."""
    route: str = ""
    """Why this adapter (or the base) was used."""
    segments: list[Segment] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["segments"] = [s.to_dict() for s in self.segments]
        d["languages"] = {k: round(v, 4) for k, v in d["languages"].items()}
        if d["language_probability"] is not None:
            d["language_probability"] = round(d["language_probability"], 4)
        return d


@dataclass
class FileError:
    """An input that could not be transcribed; ``error`` is one line naming the file."""

    file: str
    error: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Detection:
    """Language probabilities for one file."""

    file: str
    language: str | None
    probability: float | None
    languages: dict[str, float]

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "language": self.language,
            "language_probability": None if self.probability is None else round(self.probability, 4),
            "languages": {k: round(v, 4) for k, v in self.languages.items()},
        }
