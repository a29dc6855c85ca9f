"""Data sources behind one interface: Hub data set, local audiofolder, JSONL/CSV manifest, synthetic speech.

Every source yields ``Example`` rows; bad rows are reported (naming the row) and skipped, never fatal.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..transcribe.audio import SAMPLE_RATE, AudioError, load_audio

logger = logging.getLogger("lora_whisper")

MAX_SECONDS = 30.0
MAX_LABEL_TOKENS = 448


class DataError(ValueError):
    """A data source is unusable as a whole (missing file, wrong column); names the source and field."""


@dataclass
class Example:
    """One utterance: audio (a path, or decoded samples at 16 kHz) and its transcript."""

    id: str
    """Where it came from: ``manifest.jsonl:12`` or a file name."""
    audio: str | Path | np.ndarray
    text: str
    language: str | None = None
    speaker: str | None = None
    """Speaker id, when the source has one (validation subsets hold whole speakers)."""
    timed: bool = False
    """The clip is one utterance whose speech span is its segment (synthetic speech): it may get timestamped labels."""

    def load(self) -> np.ndarray:
        if isinstance(self.audio, np.ndarray):
            return self.audio
        return load_audio(self.audio)


@dataclass
class Rejected:
    """A row that was skipped, and why."""

    id: str
    reason: str


@dataclass
class Loaded:
    """What a source produced."""

    examples: list[Example] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def _rows_from_manifest(path: Path) -> list[tuple[str, dict]]:
    if not path.is_file():
        raise DataError(f"{path}: no such manifest")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        return [(f"{path.name}:{n}", row) for n, row in enumerate(reader, start=2)]
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            rows.append((f"{path.name}:{n}", {"__error__": f"not valid JSON ({e.msg})"}))
            continue
        rows.append((f"{path.name}:{n}", row if isinstance(row, dict) else {"__error__": "not a JSON object"}))
    return rows


def load_manifest(
    path: str | Path,
    audio_column: str = "audio",
    text_column: str = "text",
    language_column: str = "lang",
    language: str | None = None,
    split: str | list[str] | None = None,
    split_column: str | None = None,
    speaker_column: str | None = None,
) -> Loaded:
    """Rows of a JSONL or CSV manifest; audio paths are relative to the manifest's folder.

    Args:
        split, split_column: keep only rows whose ``split_column`` equals ``split``, or one of them when ``split`` is a
            list (one manifest, several splits).
        speaker_column: column holding the speaker id (kept on each example).
    """
    path = Path(path)
    rows = _rows_from_manifest(path)
    splits = [split] if isinstance(split, str) else [str(x) for x in split or []]
    if rows:
        keys = set().union(*(r.keys() for _, r in rows if "__error__" not in r))
        for col in (audio_column, text_column, split_column, speaker_column):
            if keys and col and col not in keys:
                raise DataError(f"{path}: no column {col!r}; columns are {sorted(keys)}")
        if split_column and splits:
            have = sorted({str(r.get(split_column)) for _, r in rows if "__error__" not in r})
            if not set(splits) & set(have):
                raise DataError(f"{path}: no rows with {split_column}={split!r}; splits are {have}")
    out = Loaded()
    for rid, row in rows:
        if "__error__" in row:
            out.rejected.append(Rejected(rid, row["__error__"]))
            continue
        if split_column and splits and str(row.get(split_column)) not in splits:
            continue
        audio = row.get(audio_column)
        if isinstance(audio, dict):  # {"path": ...} as in Hugging Face exports
            audio = audio.get("path")
        if not audio:
            out.rejected.append(Rejected(rid, f"empty {audio_column!r}"))
            continue
        speaker = row.get(speaker_column) if speaker_column else None
        out.examples.append(
            Example(
                rid,
                path.parent / str(audio),
                str(row.get(text_column) or ""),
                row.get(language_column) or language,
                None if speaker in (None, "") else str(speaker),
            )
        )
    return out


def has_column(path: str | Path, column: str) -> bool:
    """Whether a manifest's rows have ``column`` (a manifest mixing sources may have a split column or not)."""
    return any(column in r for _, r in _rows_from_manifest(Path(path)) if "__error__" not in r)


def hold_out_speakers(examples: list[Example], n: int, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Split ``examples`` into (train, validation) with about ``n`` validation clips.

    Validation takes whole speakers (never a clip of a speaker who stays in training), skipping speakers who hold
    more than ``n`` clips (they would be the whole validation set); examples without speakers are drawn clip by
    clip. Seeded, so resumes agree.
    """
    import random

    if n <= 0 or not examples:
        return examples, []
    rng = random.Random(seed)
    by_spk: dict[str, list[int]] = {}
    loose = []
    for i, ex in enumerate(examples):
        (by_spk.setdefault(ex.speaker, []) if ex.speaker else loose).append(i)
    chosen: set[int] = set()
    speakers = sorted(s for s, idx in by_spk.items() if len(idx) <= n)
    rng.shuffle(speakers)
    for s in speakers:
        if len(chosen) >= n:
            break
        chosen.update(by_spk[s])
    if len(chosen) < n and loose:
        chosen.update(rng.sample(loose, min(len(loose), n - len(chosen))))
    if len(chosen) >= len(examples):
        raise DataError(f"validation subset of {n} clips would leave no training data ({len(examples)} clips)")
    return [e for i, e in enumerate(examples) if i not in chosen], [e for i, e in enumerate(examples) if i in chosen]


def load_folder(path: str | Path, language: str | None = None, text_column: str = "transcription") -> Loaded:
    """A Hugging Face ``audiofolder``: audio files plus ``metadata.csv`` (or .jsonl) with ``file_name`` and text."""
    path = Path(path)
    for name in ("metadata.csv", "metadata.jsonl"):
        meta = path / name
        if meta.is_file():
            rows = _rows_from_manifest(meta)
            cols = set().union(*(r.keys() for _, r in rows)) if rows else set()
            text_col = next((c for c in (text_column, "text", "sentence") if c in cols), None)
            if "file_name" not in cols or text_col is None:
                raise DataError(
                    f"{meta}: needs columns 'file_name' and {text_column!r} (or 'text'); has {sorted(cols)}"
                )
            return load_manifest(meta, "file_name", text_col, language=language)
    raise DataError(f"{path}: no metadata.csv or metadata.jsonl (audiofolder layout)")


def load_hub(
    dataset: str,
    config: str | None = None,
    split: str = "test",
    audio_column: str = "audio",
    text_column: str = "sentence",
    language: str | None = None,
    limit: int | None = None,
    streaming: bool = True,
) -> Loaded:
    """A Hub data set (Common Voice / FLEURS style), streamed; audio decoded here with soundfile, not torchcodec.

    Needs the network (and possibly a token for gated sets); the offline tests cover the rows' handling through a
    local ``datasets`` data set instead.
    """
    from datasets import Audio, load_dataset

    try:
        ds = load_dataset(dataset, config, split=split, streaming=streaming)
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; one line for the user
        raise DataError(f"hub data set {dataset!r} ({config}, {split}): cannot load ({type(e).__name__}: {e})") from e
    return rows_from_dataset(
        ds.cast_column(audio_column, Audio(decode=False))
        if audio_column in (ds.column_names or [audio_column])
        else ds,
        f"{dataset}/{split}",
        audio_column,
        text_column,
        language,
        limit,
    )


def rows_from_dataset(
    ds, name: str, audio_column: str, text_column: str, language: str | None, limit: int | None
) -> Loaded:
    """Turn rows of a ``datasets`` data set (audio not decoded: bytes or path) into examples."""
    import soundfile as sf
    import soxr

    cols = getattr(ds, "column_names", None)
    for col in (audio_column, text_column):
        if cols and col not in cols:
            raise DataError(f"{name}: no column {col!r}; columns are {sorted(cols)}")
    out = Loaded()
    for n, row in enumerate(ds):
        if limit is not None and n >= limit:
            break
        rid = f"{name}:{n}"
        a = row.get(audio_column) or {}
        try:
            if a.get("bytes"):
                audio, sr = sf.read(io.BytesIO(a["bytes"]), dtype="float32", always_2d=True)
                audio = audio.mean(1)
                if sr != SAMPLE_RATE:
                    audio = soxr.resample(audio, sr, SAMPLE_RATE).astype(np.float32)
            elif a.get("path"):
                audio = load_audio(a["path"], check_silence=False)
            else:
                raise AudioError("no audio bytes or path")
        except Exception as e:  # noqa: BLE001
            out.rejected.append(
                Rejected(rid, f"unreadable audio ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
            )
            continue
        out.examples.append(Example(rid, audio, str(row.get(text_column) or ""), row.get("language") or language))
    return out


# Letters that keyboards and corpora take from the Arabic block where the language writes its own: Persian writes
# ی (U+06CC) and ک (U+06A9), not Arabic ي / ى / ك. Training labels are mapped, so an adapter learns the language's
# own spelling (Whisper's normalizer leaves them apart, and a reference in Persian script counts ي as a wrong letter).
ORTHOGRAPHY = {"fa": str.maketrans({"\u064a": "\u06cc", "\u0649": "\u06cc", "\u0643": "\u06a9"})}


def orthography(text: str, language: str | None) -> str:
    """``text`` in the language's own script conventions (see ``ORTHOGRAPHY``); unchanged for other languages."""
    table = ORTHOGRAPHY.get(language or "")
    return text.translate(table) if table else text


def validate(
    loaded: Loaded, tokenizer=None, max_seconds: float = MAX_SECONDS, max_label_tokens: int = MAX_LABEL_TOKENS
) -> Loaded:
    """Decode every example once and drop bad rows: unreadable audio, empty text, over 30 s, labels over 448 tokens.

    Decoded audio replaces paths, so training never decodes twice.
    """
    out = Loaded(rejected=list(loaded.rejected))
    for ex in loaded.examples:
        if not ex.text.strip():
            out.rejected.append(Rejected(ex.id, "empty transcript"))
            continue
        try:
            audio = ex.load() if not isinstance(ex.audio, np.ndarray) else ex.audio
        except AudioError as e:
            out.rejected.append(Rejected(ex.id, str(e)))
            continue
        if len(audio) > max_seconds * SAMPLE_RATE:
            out.rejected.append(Rejected(ex.id, f"clip is {len(audio) / SAMPLE_RATE:.1f} s, over {max_seconds:.0f} s"))
            continue
        if tokenizer is not None and len(tokenizer(ex.text).input_ids) + 2 > max_label_tokens:  # + timestamps
            out.rejected.append(Rejected(ex.id, f"transcript over {max_label_tokens - 2} tokens (the decoder's limit)"))
            continue
        text = orthography(ex.text, ex.language)
        out.examples.append(Example(ex.id, audio, text, ex.language, ex.speaker, ex.timed))
    for r in out.rejected[len(loaded.rejected) :]:
        logger.warning("skipped %s: %s", r.id, r.reason)
    return out


def fingerprint(examples: list[Example]) -> str:
    """Hash of the data: ids, texts, languages and audio samples."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(f"{ex.id}\0{ex.text}\0{ex.language}\0".encode())
        a = ex.audio if isinstance(ex.audio, np.ndarray) else np.frombuffer(Path(ex.audio).read_bytes(), np.uint8)
        h.update(np.ascontiguousarray(a).tobytes())
    return "sha256:" + h.hexdigest()[:32]
