"""Inputs to items (step 1 of the flow): folders, globs and audio files, JSONL/CSV manifests and Hugging Face data
sets become one ``Item`` each, keyed by its id or file name, in input order, duplicates dropped."""

from __future__ import annotations

import glob as globlib
import logging
from collections.abc import Iterable
from pathlib import Path

from ..transcribe.audio import AUDIO_EXTENSIONS, expand_inputs
from .options import BatchError, BatchOptions, Item

logger = logging.getLogger("lora_whisper")

MANIFEST_EXTENSIONS = (".jsonl", ".csv", ".json")
INPUT_TYPES = ("auto", "files", "manifest", "hf")


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def collect_inputs(specs: Iterable[str], options: BatchOptions) -> list[Item]:
    """Items for every input, in order; duplicates (same key) are dropped with a warning.

    Raises:
        BatchError: a glob matching nothing, an unreadable manifest or data set, an unknown input type.
    """
    if options.input_type not in INPUT_TYPES:
        raise BatchError(f"input type {options.input_type!r} is not one of {list(INPUT_TYPES)}")
    items: list[Item] = []
    for spec in specs:
        kind = options.input_type if options.input_type != "auto" else _guess_kind(spec)
        if kind == "manifest":
            items += _manifest_items(Path(spec), options)
        elif kind == "hf":
            items += _hf_items(spec, options)
        elif _is_glob(spec) and not Path(spec).exists():
            found = sorted(p for p in globlib.glob(spec, recursive=True) if Path(p).is_file())
            if not found:
                raise BatchError(f"{spec}: no file matches this pattern")
            items += [Item(0, p, p, path=p) for p in found]
        else:
            items += [Item(0, str(p), str(p), path=str(p)) for p in expand_inputs([spec])]
    seen: dict[str, int] = {}
    out = []
    for it in items:
        if it.key in seen:
            logger.warning("%s: given twice (also input %d); transcribed once", it.key, seen[it.key] + 1)
            continue
        seen[it.key] = len(out)
        it.index = len(out)
        out.append(it)
    return out


def _guess_kind(spec: str) -> str:
    p = Path(spec)
    if p.suffix.lower() in MANIFEST_EXTENSIONS and not p.is_dir():
        return "manifest"  # a missing one is reported as such
    if p.is_dir():
        if any(f.suffix.lower() in AUDIO_EXTENSIONS for f in p.rglob("*") if f.is_file()):
            return "files"
        return "hf"  # a local data set folder (parquet / arrow / json shards)
    if p.exists() or _is_glob(spec) or p.suffix.lower() in AUDIO_EXTENSIONS:
        return "files"  # a missing audio file becomes an error row naming it
    return "hf"


def _manifest_items(path: Path, options: BatchOptions) -> list[Item]:
    from ..train.data import DataError, _rows_from_manifest

    try:
        rows = _rows_from_manifest(path)
    except (DataError, OSError, UnicodeDecodeError) as e:
        raise BatchError(f"{path}: cannot read the manifest ({e})") from e
    items = []
    for rid, row in rows:
        rid_id = row.get(options.id_column) if isinstance(row, dict) else None
        rid_id = None if rid_id in (None, "") else str(rid_id)
        if "__error__" in row:
            items.append(Item(0, rid_id or rid, rid, rid_id, error=f"{rid}: {row['__error__']}"))
            continue
        audio = row.get("audio") or row.get("path")
        if isinstance(audio, dict):  # {"path": ...} as in Hugging Face exports
            audio = audio.get("path")
        if not audio:
            items.append(Item(0, rid_id or rid, rid, rid_id, error=f"{rid}: no 'audio' or 'path' field"))
            continue
        file = str(path.parent / str(audio))
        items.append(Item(0, rid_id or file, file, rid_id, path=file))
    return items


def _hf_items(spec: str, options: BatchOptions) -> list[Item]:
    """Rows of a Hugging Face data set (a Hub id or a local data set folder), streamed; audio kept as bytes (or a
    path) and decoded by the decode tasks with soundfile, not by ``datasets`` (torchcodec)."""
    try:
        from datasets import Audio, load_dataset
    except ImportError as e:  # pragma: no cover - datasets is a core dependency
        raise BatchError(f"{spec}: the datasets package is needed for data sets ({e})") from e
    try:
        ds = load_dataset(spec, options.config, split=options.split, streaming=True)
        cols = ds.column_names
        if cols is not None and options.audio_column not in cols:
            raise BatchError(f"{spec}: no audio column {options.audio_column!r}; columns are {sorted(cols)}")
        if cols is None or isinstance((ds.features or {}).get(options.audio_column), Audio):
            ds = ds.cast_column(options.audio_column, Audio(decode=False))
        items = []
        for n, row in enumerate(ds):
            if options.limit is not None and n >= options.limit:
                break
            rid = f"{spec}/{options.split}:{n}"
            row_id = row.get(options.id_column)
            row_id = None if row_id in (None, "") else str(row_id)
            a = row.get(options.audio_column)
            if isinstance(a, dict) and a.get("bytes"):
                name = Path(a.get("path") or "audio").name
                items.append(Item(0, row_id or rid, rid, row_id, path=name, data=bytes(a["bytes"])))
            elif isinstance(a, dict) and a.get("path"):
                items.append(Item(0, row_id or rid, rid, row_id, path=str(a["path"])))
            elif isinstance(a, str) and a:
                items.append(Item(0, row_id or rid, rid, row_id, path=a))
            else:
                items.append(Item(0, row_id or rid, rid, row_id, error=f"{rid}: no audio bytes or path"))
        return items
    except BatchError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; one line for the user
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        where = "" if Path(spec).exists() else "not a file, folder or manifest here, and "
        raise BatchError(
            f"{spec}: {where}cannot load it as a data set (config {options.config}, split {options.split}: {reason})"
        ) from e
