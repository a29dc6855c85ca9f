"""Evaluate the base or an adapter on a data set: WER/CER per language and overall."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..scoring import Score, score
from ..transcribe.engine import Engine, FileError, TranscribeOptions
from .data import Example


@dataclass
class EvalReport:
    """Scores of one evaluation run."""

    adapter: str | None
    """What was evaluated: an adapter reference, ``auto`` routing, or None for the base."""
    overall: Score
    by_language: dict[str, Score] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    """Per utterance: id, language, reference, hypothesis, adapter."""
    errors: list[str] = field(default_factory=list)

    def to_dict(self, rows: bool = False) -> dict:
        d = {
            "adapter": self.adapter,
            "overall": self.overall.to_dict(),
            "by_language": {k: v.to_dict() for k, v in self.by_language.items()},
            "errors": self.errors,
        }
        if rows:
            d["rows"] = self.rows
        return d


def evaluate(engine: Engine, examples: list[Example], options: TranscribeOptions, progress=None) -> EvalReport:
    """Transcribe every example and score it.

    Rows that carry a language are decoded with it forced (unless ``options.language`` is set, which wins); rows
    without one go through detection and routing like ``transcribe``.
    """
    groups: dict[str | None, list[Example]] = {}
    for ex in examples:
        groups.setdefault(options.language or ex.language, []).append(ex)
    rows, errors = [], []
    for lang, exs in groups.items():
        opts = TranscribeOptions(**{**options.__dict__, "language": lang})
        inputs = [(ex.id, ex.audio) if isinstance(ex.audio, np.ndarray) else ex.audio for ex in exs]
        for ex, res in zip(exs, engine.transcribe(inputs, opts, progress=progress)):
            if isinstance(res, FileError):
                errors.append(res.error)
                continue
            rows.append(
                {
                    "id": ex.id,
                    "language": ex.language or res.language,
                    "reference": ex.text,
                    "hypothesis": res.text,
                    "adapter": res.adapter,
                }
            )
    by_lang = {}
    for lang in sorted({r["language"] or "?" for r in rows}):
        rs = [r for r in rows if (r["language"] or "?") == lang]
        by_lang[lang] = score([r["reference"] for r in rs], [r["hypothesis"] for r in rs], lang)
    if len(by_lang) == 1:
        overall = next(iter(by_lang.values()))
    else:
        # pooled over languages, each row normalized for its own language
        from ..scoring import normalize

        refs = [normalize(r["reference"], r["language"]) for r in rows]
        hyps = [normalize(r["hypothesis"], r["language"]) for r in rows]
        overall = score(refs, hyps, None)
    adapter = options.adapter if options.adapter not in ("none",) else None
    return EvalReport(adapter, overall, by_lang, rows, errors)
