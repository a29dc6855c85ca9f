"""Routing calibration at the end of training: how the base and the new adapter score the adapter's language on its
validation clips and on speech of other languages; ``routing.calibrate`` turns that into the threshold kept in
the adapter's registry record.

The probabilities are the ones the engine's adapter-consulted detection computes, on the runtime ``transcribe`` uses
(``Runtime.detect``: one decoder step after <|startoftranscript|>, over the language tokens, on the first 30 s).
"""

from __future__ import annotations

import logging
from pathlib import Path

from .data import Example, has_column, load_folder, load_manifest, validate

logger = logging.getLogger("lora_whisper")


def load_negatives(
    sources: list[str],
    language: str,
    max_per_source: int,
    split: str | list[str] | None = None,
    languages: list[str] | None = None,
    seed: int = 0,
) -> list[Example]:
    """Clips of other languages than ``language`` from manifests or audiofolders (rows without a language or
    in ``language`` are skipped; unreadable rows are reported and skipped).

    Args:
        max_per_source: at most this many rows of each source, drawn at random (seeded: resumes and the contrast
            clips, which must not hold a negative, see the same draw).
        split: rows of a manifest whose ``split`` column is this value (or one of these) only; audiofolders and
            manifests without that column keep every row.
        languages: rows of these languages only (None: any other language).
    """
    import random

    from .recipe import expand_path

    out: list[Example] = []
    for src in sources:
        path = Path(expand_path(src))
        if path.is_dir():
            loaded = load_folder(path)
        else:
            loaded = load_manifest(
                path, split=split, split_column="split" if split and has_column(path, "split") else None
            )
        rows = [
            e
            for e in loaded.examples
            if e.language and e.language != language and (languages is None or e.language in languages)
        ]
        if len(rows) > max_per_source:
            rows = random.Random(f"{seed}:{src}").sample(rows, max_per_source)
        out += validate(type(loaded)(rows)).examples
    return out


def measure(runtime, adapter: str, examples: list[Example], language: str, progress=None):
    """(base probabilities over every language, the adapter's probability of ``language``) for each example, on
    the runtime ``transcribe`` uses (``Runtime.detect``: the first 30 s, base and adapter)."""
    out = []
    for e in examples:
        audio = e.load()
        base = runtime.detect(audio, None, None)
        own = runtime.detect(audio, None, adapter)
        out.append((base, own.get(language, 0.0)))
        if progress:
            progress(1)
    return out
