"""`lora-whisper batch`: transcription of an archive on Ray Data, resumable (issue 11).

The flow (``run_batch``):

1. Inputs (folders, globs, JSONL/CSV manifests, a Hugging Face data set) become items, one per input, each with a
   key (the manifest's or data set's ``id``, else the file name) that identifies its row in the output.
2. Items whose key already has a result row under ``--out`` are skipped (resume).
3. When the route of a file depends on its audio (``--adapter auto``, no ``--language``, adapters in the
   registry), a detection pass runs first: decode tasks, then an actor pool in which each actor holds one Engine
   and computes each file's route from the base's language probabilities on its first 30 s (kept in
   ``OUT/routes.jsonl``, so a rerun with the same options and adapters detects only what it had not).
4. Items are sorted by route and cut into units of at most ``--batch-size`` files that never mix routes, so each
   call of a transcription actor works with one adapter.
5. ``ray.data.from_items(units)`` -> decode tasks (``load_audio``: soundfile + soxr; a bad file becomes an error
   row) -> an actor pool (``--num-workers`` actors, ``--num-gpus-per-worker`` each) whose actors build one Engine in
   ``__init__`` and call ``engine.transcribe([(name, samples), ...], options)`` per unit -> rows equal to
   ``Transcription.to_dict()`` (or ``{"file", "error"}``), carried through Arrow as JSON text.
6. The driver appends each row to this run's part file (``OUT/parts/``) as it arrives, prints progress on stderr,
   and at the end merges every part into ``OUT/transcripts.jsonl`` (or ``.parquet``): one row per input, in input
   order.

A killed actor is restarted by Ray and its unit retried (``max_restarts`` / ``max_task_retries``); rows are only
written once a unit is done, so nothing is lost and nothing is written twice. Ray is imported inside functions: it
is an optional extra (``pip install 'lora-whisper[ray]'``).
"""

from __future__ import annotations

import dataclasses
import glob as globlib
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import click

from ..transcribe.audio import AUDIO_EXTENSIONS, SAMPLE_RATE, AudioError, expand_inputs

logger = logging.getLogger("lora_whisper")

MANIFEST_EXTENSIONS = (".jsonl", ".csv", ".json")
INPUT_TYPES = ("auto", "files", "manifest", "hf")
FORMATS = ("jsonl", "parquet")
MERGED_NAME = "transcripts"
PARTS_DIR = "parts"
ROUTES_NAME = "routes.jsonl"
"""Routes found by detection passes (key, route, signature of what they depend on), kept for resumed runs."""
FAULT_ENV = "LORA_WHISPER_BATCH_FAULT"
"""For fault-injection tests: ``SUBSTRING:MARKER``: the transcription actor that gets a file whose name contains
SUBSTRING kills its own process (``os._exit``) once, recording MARKER so that Ray's retry succeeds."""
NESTED_FIELDS = ("languages", "segments", "warnings")
"""Fields of a result row stored as JSON text in Parquet (their shape grows with the engine; JSON keeps it)."""
RAY_MISSING = "Ray is not installed: pip install 'lora-whisper[ray]' (Ray Data is needed by lora-whisper batch)"


class BatchError(RuntimeError):
    """A batch run cannot start (no inputs, unreadable manifest, no Ray); the message says what and where."""


@dataclass
class BatchOptions:
    """Settings of one batch run (the transcription options are a separate ``TranscribeOptions``)."""

    out: Path
    """Output folder: ``parts/`` (one JSON lines file per run) and the merged ``transcripts.jsonl``/``.parquet``."""
    fmt: str = "jsonl"
    """Merged output format: ``jsonl`` (same lines as ``transcribe --format json``) or ``parquet``."""
    num_workers: int = 1
    """Transcription actors (each loads the base once)."""
    num_gpus_per_worker: float = 0.0
    """GPUs reserved per actor (0 = CPU; fractions share a GPU between actors)."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per actor (Ray sets the actor's thread count from it)."""
    decode_cpus: float = 0.5
    """CPUs reserved per decoding task."""
    address: str | None = None
    """Ray cluster to join: ``auto`` or ``ray://host:10001``; None starts a local Ray on this machine."""
    batch_size: int = 8
    """Files per actor call; a call never mixes routes."""
    group: bool = True
    """Detect first and group files by routed adapter (skipped when the route does not depend on the audio)."""
    max_retries: int = 3
    """Restarts of a dead actor and retries of its unit (a worker killed mid-run loses nothing)."""
    input_type: str = "auto"
    """``auto``, ``files`` (folders, globs, audio files), ``manifest`` (JSONL/CSV) or ``hf`` (a data set id or folder)."""
    split: str = "test"
    """Hugging Face data sets: the split."""
    config: str | None = None
    """Hugging Face data sets: the configuration (e.g. a language)."""
    audio_column: str = "audio"
    """Hugging Face data sets: the audio column (manifests: ``audio`` or ``path``)."""
    id_column: str = "id"
    """Manifests and data sets: the column naming each row (optional; else the file name or row number)."""
    limit: int | None = None
    """Hugging Face data sets: at most this many rows."""
    progress_every: float = 10.0
    """Seconds between progress lines on stderr (0 = after every unit)."""


@dataclass
class EngineSpec:
    """How each actor builds its Engine (paths must be visible from every node of a cluster)."""

    base: str = "offline"
    """``offline``, a local folder or a Hub id."""
    quantize: str = "int8"
    """``int8`` or ``none``."""
    device: str | None = None
    """``cpu``, ``cuda`` or None (cuda when the actor has a GPU)."""
    registry: str | None = None
    """Adapter registry folder (None: the base only)."""
    cache_size: int = 4
    """Resident adapters per actor (LRU)."""
    runtime: str = "torch"
    """``torch``, ``ct2`` or ``auto`` (ct2 on an actor without a GPU, torch with one); see ``runtime.py``."""
    threads: int = 0
    """CPU threads per actor's engine (0: the runtime's default)."""


@dataclass
class Item:
    """One input: a file (``path``) or audio bytes from a data set (``data``)."""

    index: int
    """Position in the input list (the merged output keeps this order)."""
    key: str
    """The row's identity in the output: ``id`` when given, else ``file``."""
    file: str
    """The ``file`` field of its row."""
    id: str | None = None
    path: str | None = None
    data: bytes | None = None
    error: str | None = None
    """Set when the input itself is unusable (a bad manifest row): it becomes an error row without decoding."""


@dataclass
class BatchSummary:
    """What a run did."""

    inputs: int = 0
    """Inputs given (one row each in the merged output)."""
    skipped: int = 0
    """Inputs already done in ``--out`` (resume)."""
    done: int = 0
    """Rows written by this run."""
    errors: int = 0
    """Error rows written by this run."""
    errors_total: int = 0
    """Error rows in the merged output."""
    audio_seconds: float = 0.0
    """Audio transcribed by this run."""
    wall_seconds: float = 0.0
    """Wall time of this run (Ray start included)."""
    transcribe_seconds: float = 0.0
    """Wall time of the transcription pass alone (from its first row requested to its last row)."""
    detect_seconds: float = 0.0
    """Wall time of the detection pass (0 when skipped)."""
    detected: int = 0
    """Files whose route the detection pass computed (routes kept from an earlier run with the same options and
    adapters are not detected again)."""
    routes: dict[str, int] = field(default_factory=dict)
    """Units per route (adapter reference or ``base``) in the transcription pass."""
    output: str = ""
    """The merged output file."""

    def line(self) -> str:
        rate = self.done / self.wall_seconds if self.wall_seconds else 0.0
        rtf = self.audio_seconds / self.wall_seconds if self.wall_seconds else 0.0
        return (
            f"batch: {self.done} done ({self.errors} errors), {self.skipped} skipped as already done, "
            f"{self.inputs} inputs; {self.audio_seconds / 3600:.3f} h audio in {self.wall_seconds:.1f} s "
            f"({rate:.2f} files/s, {rtf:.1f}x real time); output {self.output} ({self.errors_total} error rows)"
        )


# ---- inputs ---------------------------------------------------------------------------------------------------
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


# ---- output: part files, resume, merge ------------------------------------------------------------------------
def row_key(row: dict) -> str:
    return str(row["id"]) if row.get("id") is not None else str(row["file"])


def read_rows(out: Path) -> list[dict]:
    """Every row written so far under ``out/parts`` (oldest part first); torn last lines of a killed run skipped."""
    rows = []
    for part in sorted((out / PARTS_DIR).glob("*.jsonl")):
        with part.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    logger.warning("%s:%d: not a complete JSON line (a run killed while writing?); ignored", part, n)
                    continue
                if isinstance(row, dict) and "file" in row:
                    rows.append(row)
    return rows


def latest_rows(rows: list[dict]) -> dict[str, dict]:
    """One row per key: the latest result, else the latest error (a later run retries errors)."""
    best: dict[str, dict] = {}
    for row in rows:
        k = row_key(row)
        if k not in best or "error" not in row or "error" in best[k]:
            best[k] = row
    return best


def merge_output(out: Path, items: list[Item], fmt: str) -> tuple[Path, int]:
    """Write the merged output (atomically): one row per key, inputs of this run first in input order, then rows of
    earlier runs' other inputs. Returns (path, error rows)."""
    best = latest_rows(read_rows(out))
    order = [it.key for it in items if it.key in best]
    order += [k for k in best if k not in set(order)]
    rows = [best[k] for k in order]
    dest = out / f"{MERGED_NAME}.{'parquet' if fmt == 'parquet' else 'jsonl'}"
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        keys = list(dict.fromkeys(k for r in rows for k in r))  # the union: pyarrow infers from the first row only
        flat = [
            {
                k: (json.dumps(r[k], ensure_ascii=False) if k in NESTED_FIELDS else r[k]) if k in r else None
                for k in keys
            }
            for r in rows
        ]
        pq.write_table(pa.Table.from_pylist(flat), tmp)
    else:
        with tmp.open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, dest)
    for other in FORMATS:  # a merged file of the other format would be stale now
        stale = out / f"{MERGED_NAME}.{other}"
        if stale != dest and stale.exists():
            stale.unlink()
    return dest, sum("error" in r for r in rows)


def read_output(path: str | Path) -> list[dict]:
    """Rows of a merged output (JSON lines or Parquet, nested fields decoded back)."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = []
        for r in pq.read_table(path).to_pylist():
            if r.get("error") is not None:  # an error row: {"file", "error"} (+ "id")
                r = {k: v for k, v in r.items() if k in ("file", "error") or (k == "id" and v is not None)}
            else:
                r = {k: v for k, v in r.items() if k != "error" and not (k == "id" and v is None)}
            rows.append({k: (json.loads(v) if k in NESTED_FIELDS and isinstance(v, str) else v) for k, v in r.items()})
        return rows
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---- Ray stages ---------------------------------------------------------------------------------------------------
def _decode_unit(unit: dict) -> dict:
    """Decode every file of a unit (CPU task). Samples travel as float32 bytes; a bad file gets its error."""
    import tempfile

    import numpy as np

    from ..transcribe.audio import load_audio

    audio, errors = [], []
    for file, path, data, err in zip(unit["files"], unit["paths"], unit["data"], unit["errors"]):
        samples = np.zeros(0, np.float32)
        if not err:
            try:
                if data:  # data set bytes: decode through a temporary file so every check of load_audio applies
                    suffix = Path(path or "").suffix if len(Path(path or "").suffix) <= 6 else ""
                    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
                        tmp.write(data)
                        tmp.flush()
                        try:
                            samples = load_audio(tmp.name, check_silence=unit.get("check_silence", True))
                        except AudioError as e:
                            raise AudioError(str(e).replace(tmp.name, file)) from e
                else:
                    samples = load_audio(path, check_silence=unit.get("check_silence", True))
                if unit.get("head_seconds"):
                    samples = samples[: int(unit["head_seconds"] * SAMPLE_RATE)]
            except AudioError as e:
                err = str(e)
            except Exception as e:  # noqa: BLE001 - a decoder crash on one file must not fail the unit
                err = f"{file}: cannot decode audio ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        audio.append(np.ascontiguousarray(samples, np.float32).tobytes())
        errors.append(err or "")
    return {**unit, "data": [b""] * len(audio), "audio": audio, "errors": errors}


class _Worker:
    """A Ray Data actor: one Engine, built once; ``__call__`` transcribes (or detects routes for) one unit."""

    settings: dict = {}
    """spec (EngineSpec as a dict), options (TranscribeOptions as a dict), mode (transcribe | detect), fault."""

    def __init__(self):
        from ..adapters.registry import Registry
        from ..transcribe.engine import TranscribeOptions
        from ..transcribe.runtime import build_engine

        spec, options = self.settings["spec"], self.settings["options"]
        mode, fault = self.settings.get("mode", "transcribe"), self.settings.get("fault")
        logging.getLogger("lora_whisper").setLevel(logging.WARNING)
        s = EngineSpec(**spec)
        self.engine = build_engine(
            s.base,
            s.quantize,
            s.device,
            Registry(s.registry) if s.registry else None,
            cache_size=s.cache_size,
            runtime=s.runtime,
            threads=s.threads,
        )
        self.options = TranscribeOptions(**options)
        self.mode = mode
        self.fault = fault

    def _maybe_fail(self, files: list[str]) -> None:
        if not self.fault or self.mode != "transcribe":
            return
        needle, _, marker = self.fault.partition(":")
        if any(needle in f for f in files) and marker and not os.path.exists(marker):
            Path(marker).write_text(f"killed pid {os.getpid()} on {needle}\n")
            os._exit(17)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        out: dict[str, list] = {"key": [], "index": [], "row": [], "duration": [], "ok": [], "route": []}
        for n in range(len(batch["keys"])):
            unit = {k: batch[k][n] for k in batch}
            for k, v in self._unit(unit).items():
                out[k] += v
        return {k: np.array(v, dtype=object) for k, v in out.items()}

    def _unit(self, unit: dict) -> dict:
        import numpy as np

        from ..transcribe.engine import FileError

        files = [str(f) for f in unit["files"]]
        self._maybe_fail(files)
        ids = [None if i in (None, "") else str(i) for i in unit["ids"]]
        errors = [str(e) for e in unit["errors"]]
        good = [j for j, e in enumerate(errors) if not e]
        inputs = [(files[j], np.frombuffer(unit["audio"][j], np.float32)) for j in good]
        results: dict[int, object] = {j: FileError(files[j], errors[j]) for j in range(len(files)) if errors[j]}
        routes = [""] * len(files)
        try:
            if self.mode == "detect":
                for j, det in zip(good, self.engine.detect(inputs, self.options)):
                    routes[j] = self._route_of(det)
                    results[j] = det
            else:
                for j, res in zip(good, self.engine.transcribe(inputs, self.options)):
                    results[j] = res
        except Exception as e:  # noqa: BLE001 - an engine failure becomes error rows (retried by the next run)
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            logger.error("unit of %d files failed: %s", len(files), reason)
            for j in good:
                if j not in results or self.mode == "transcribe":
                    results[j] = FileError(files[j], f"{files[j]}: transcription failed ({reason})")
        out = {"key": [], "index": [], "row": [], "duration": [], "ok": [], "route": []}
        for j in range(len(files)):
            res = results[j]
            row = res.to_dict()
            if ids[j] is not None:
                row["id"] = ids[j]
            ok = not isinstance(res, FileError)
            out["key"].append(str(unit["keys"][j]))
            out["index"].append(int(unit["indices"][j]))
            out["row"].append(json.dumps(row, ensure_ascii=False, default=_plain))
            out["duration"].append(float(getattr(res, "duration", 0.0) or 0.0) if ok else 0.0)
            out["ok"].append(ok)
            out["route"].append(routes[j])
        return out

    def _route_of(self, det) -> str:
        from ..transcribe.routing import RouteRequest, route

        reg = self.engine.registry
        records = reg.active() if reg is not None else []
        o = self.options
        r = route(det.languages or None, records, RouteRequest(o.adapter, o.domain, o.language, o.threshold))
        return r.adapter or "base"


def _plain(value):
    """JSON for what ``to_dict`` may leave as numpy scalars or arrays."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _static_route(options, registry: str | None) -> str | None:
    """The route every file takes when it does not depend on the audio, else None (detection needed)."""
    if options.adapter == "none":
        return "base"
    if options.adapter not in ("auto", None, ""):
        return options.adapter
    if registry is None:
        return "base"
    from ..adapters.registry import Registry

    records = Registry(registry).active()
    if not records:
        return "base"
    if options.language:
        from ..transcribe.routing import RouteRequest, route

        r = route(None, records, RouteRequest(options.adapter, options.domain, options.language, options.threshold))
        return r.adapter or "base"
    return None


def make_units(items: list[Item], routes: dict[str, str], batch_size: int, **settings) -> list[dict]:
    """Cut items (sorted by route, then input order) into units of at most ``batch_size`` that never mix routes.

    ``settings`` go into every unit for the decode task: ``head_seconds`` (keep only the start: detection),
    ``check_silence`` (False with VAD, as the engine does)."""
    order = sorted(items, key=lambda it: (routes.get(it.key, "base") != "base", routes.get(it.key, "base"), it.index))
    units: list[dict] = []
    for it in order:
        r = routes.get(it.key, "base")
        if not units or units[-1]["route"] != r or len(units[-1]["keys"]) >= batch_size:
            units.append(
                {"route": r, "keys": [], "indices": [], "files": [], "ids": [], "paths": [], "data": [], "errors": []}
                | settings
            )
        u = units[-1]
        u["keys"].append(it.key)
        u["indices"].append(it.index)
        u["files"].append(it.file)
        u["ids"].append(it.id or "")
        u["paths"].append(it.path or "")
        u["data"].append(it.data or b"")
        u["errors"].append(it.error or "")
    return units


def _pipeline(units: list[dict], spec: EngineSpec, topts, options: BatchOptions, mode: str, fault: str | None):
    import ray.data

    ds = ray.data.from_items(units, override_num_blocks=max(1, len(units)))
    ds = ds.map(_decode_unit, num_cpus=options.decode_cpus)
    # the settings are baked into a subclass rather than passed as constructor arguments: Ray keeps those in the
    # object store, and a restarted actor cannot be rebuilt once they are gone (ray-project/ray#53727)
    init = dict(spec=dataclasses.asdict(spec), options=dataclasses.asdict(topts), mode=mode, fault=fault)
    worker = type("LoraWhisperWorker", (_Worker,), {"settings": init})
    kwargs = dict(
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=max(1, options.num_workers)),
        num_cpus=options.cpus_per_worker,
        num_gpus=options.num_gpus_per_worker or None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Ray 2.5x: "ray_remote_args is deprecated" for the two retry settings
        try:
            return ds.map_batches(
                worker, max_restarts=options.max_retries, max_task_retries=options.max_retries, **kwargs
            )
        except TypeError:  # a Ray without per-call remote args: its defaults restart actors and retry their tasks
            return ds.map_batches(worker, **kwargs)


def _start_ray(options: BatchOptions) -> bool:
    """Connect to (or start) Ray; True when this call started it (and must shut it down)."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise BatchError(RAY_MISSING) from e
    if ray.is_initialized():
        return False
    kw: dict = dict(include_dashboard=False, logging_level=logging.WARNING, configure_logging=True)
    if options.address:
        try:
            ray.init(address=options.address, **kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BatchError(
                f"cannot join the Ray cluster at {options.address!r} ({reason}); start one with `ray start --head`, "
                "or leave out --address to run on this machine"
            ) from e
    else:
        # actors hold their CPUs for the whole run: reserve room for the decode tasks beside them, else they wait
        need = options.num_workers * options.cpus_per_worker + options.decode_cpus
        ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(need)), **kw)
    return True


def _check_resources(options: BatchOptions) -> None:
    """Fail at once, rather than wait forever, when the cluster cannot hold the actors beside a decode task (an
    autoscaling cluster must have its nodes up before the run)."""
    import ray

    have = ray.cluster_resources()
    gpus, cpus = have.get("GPU", 0.0), have.get("CPU", 0.0)
    if options.num_gpus_per_worker > gpus:
        raise BatchError(
            f"--num-gpus-per-worker {options.num_gpus_per_worker:g}: the Ray cluster has {gpus:g} GPU(s); "
            "use 0 to run on CPU, or join a cluster with GPUs (--address)"
        )
    if options.cpus_per_worker + options.decode_cpus > cpus:
        raise BatchError(
            f"the Ray cluster has {cpus:g} CPU(s): not enough for one actor ({options.cpus_per_worker:g} CPU) "
            f"and a decode task ({options.decode_cpus:g} CPU) beside it; lower --cpus-per-worker"
        )
    if options.num_workers * options.cpus_per_worker + options.decode_cpus > cpus:
        # actors hold their CPUs for the whole run: decode tasks that find none left would wait forever
        raise BatchError(
            f"{options.num_workers} workers x {options.cpus_per_worker:g} CPU plus a decode task "
            f"({options.decode_cpus:g} CPU) do not fit in the Ray cluster's {cpus:g} CPU(s); lower --num-workers or "
            "--cpus-per-worker"
        )


def _data_context() -> None:
    import ray.data

    if not logger.isEnabledFor(logging.INFO):
        # Ray Data logs every execution start/end at INFO and its own progress-bar notice at WARNING; without -v
        # our progress lines say it all (its logs still go to the Ray session's log folder)
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our own progress lines (files, audio hours, throughput, errors) instead
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False


class Progress:
    """Progress lines on stderr: files done, audio hours, throughput, errors."""

    def __init__(self, total: int, every: float, echo: Callable[[str], None] | None, what: str = "transcribe"):
        self.total, self.every, self.echo, self.what = total, every, echo, what
        self.done = self.errors = 0
        self.audio = 0.0
        self.t0 = self.last = time.perf_counter()

    def update(self, n: int, errors: int, audio: float) -> None:
        self.done += n
        self.errors += errors
        self.audio += audio
        now = time.perf_counter()
        if self.echo and (now - self.last >= self.every or self.done == self.total):
            self.last = now
            self.echo(self.line())

    def line(self) -> str:
        el = max(time.perf_counter() - self.t0, 1e-9)
        rate = self.done / el
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        return (
            f"{self.what}: {self.done}/{self.total} files ({self.errors} errors), {self.audio / 3600:.3f} h audio, "
            f"{rate:.2f} files/s, {self.audio / el:.1f}x real time, {el:.0f} s elapsed, ETA {eta:.0f} s"
        )


def run_batch(
    inputs: list[str],
    options: BatchOptions,
    spec: EngineSpec,
    topts=None,
    echo: Callable[[str], None] | None = None,
) -> BatchSummary:
    """Transcribe ``inputs`` on Ray Data into ``options.out``; see the module docstring.

    Uses the running Ray when there is one (tests, notebooks), else starts or joins one and shuts it down after.

    Raises:
        BatchError: inputs unusable as a whole, Ray missing, an unknown format.
    """
    from ..transcribe.engine import TranscribeOptions

    t0 = time.perf_counter()
    topts = topts or TranscribeOptions()
    if options.fmt not in FORMATS:
        raise BatchError(f"format {options.fmt!r} is not one of {list(FORMATS)}")
    if options.num_workers < 1 or options.batch_size < 1:
        raise BatchError("--num-workers and --batch-size must be at least 1")
    spec = dataclasses.replace(spec, registry=str(Path(spec.registry).resolve()) if spec.registry else None)
    out = Path(options.out)
    items = collect_inputs(inputs, options)
    if not items:
        raise BatchError(f"no inputs found in {list(inputs)}")
    (out / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    done_keys = {k for k, r in latest_rows(read_rows(out)).items() if "error" not in r}
    todo = [it for it in items if it.key not in done_keys]
    summary = BatchSummary(inputs=len(items), skipped=len(items) - len(todo))
    if echo and summary.skipped:
        echo(f"batch: {summary.skipped} of {len(items)} inputs already done in {out}; {len(todo)} to go")
    if todo:
        started = _start_ray(options)
        try:
            _check_resources(options)
            _data_context()
            _run(todo, options, spec, topts, out, summary, echo)
        finally:
            if started:
                import ray

                ray.shutdown()
    path, summary.errors_total = merge_output(out, items, options.fmt)
    summary.output = str(path)
    summary.wall_seconds = time.perf_counter() - t0
    return summary


def _route_signature(topts, spec: EngineSpec) -> str:
    """What a detected route depends on: the base, the routing options and the registry's active adapters."""
    import hashlib

    from ..adapters.registry import Registry

    active = sorted(r.ref for r in Registry(spec.registry).active()) if spec.registry else []
    keys = ("adapter", "domain", "language", "languages", "threshold", "vad")
    what = {"base": spec.base, "active": active, **{k: getattr(topts, k, None) for k in keys}}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_routes(path: Path, sig: str) -> dict[str, str]:
    """Routes detected by earlier runs with the same signature (a torn line is ignored)."""
    routes = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and row.get("sig") == sig and row.get("route") != "unreadable":
                routes[str(row["key"])] = str(row["route"])
    return routes


def _run(todo: list[Item], options: BatchOptions, spec: EngineSpec, topts, out: Path, summary: BatchSummary, echo):
    fault = os.environ.get(FAULT_ENV) or None
    static = _static_route(topts, spec.registry)
    check_silence = not getattr(topts, "vad", False)  # as the engine: with VAD a silent file is no error
    if static is not None or not options.group:
        routes = {it.key: static or "base" for it in todo}
    else:
        t = time.perf_counter()
        sig = _route_signature(topts, spec)
        cache = out / ROUTES_NAME
        routes = {k: r for k, r in _read_routes(cache, sig).items() if k in {it.key for it in todo}}
        need = [it for it in todo if it.key not in routes]
        summary.detected = len(need)
        if echo:
            echo(
                f"batch: detecting the route of {len(need)} files (first 30 s each) to group them by adapter"
                + (f"; {len(routes)} known from an earlier run" if routes else "")
            )
        if need:
            det_units = make_units(need, {}, options.batch_size, head_seconds=30.0, check_silence=check_silence)
            with cache.open("a", encoding="utf-8") as f:
                for row in _pipeline(det_units, spec, topts, options, "detect", None).iter_rows():
                    r = (str(row["route"]) or "base") if row["ok"] else "unreadable"
                    routes[str(row["key"])] = r
                    f.write(json.dumps({"key": str(row["key"]), "route": r, "sig": sig}, ensure_ascii=False) + "\n")
        summary.detect_seconds = time.perf_counter() - t
    units = make_units(todo, routes, options.batch_size, check_silence=check_silence)
    for u in units:
        summary.routes[u["route"]] = summary.routes.get(u["route"], 0) + 1
    if echo:
        groups = ", ".join(f"{r}: {n}" for r, n in summary.routes.items())
        echo(
            f"batch: {len(todo)} files in {len(units)} units on {options.num_workers} worker(s) (units per route: {groups})"
        )
    part = out / PARTS_DIR / f"part-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}.jsonl"
    progress = Progress(len(todo), options.progress_every, echo)
    written: set[str] = set()
    t = time.perf_counter()
    with part.open("a", encoding="utf-8") as f:
        last_sync = time.perf_counter()
        for row in _pipeline(units, spec, topts, options, "transcribe", fault).iter_rows():
            key = str(row["key"])
            if key in written:  # a unit re-executed by Ray after its output was already delivered
                continue
            written.add(key)
            f.write(str(row["row"]) + "\n")
            f.flush()
            if time.perf_counter() - last_sync > 2.0:
                os.fsync(f.fileno())
                last_sync = time.perf_counter()
            ok = bool(row["ok"])
            if not ok and echo:
                echo(f"error: {json.loads(row['row'])['error']}")
            summary.done += 1
            summary.errors += 0 if ok else 1
            summary.audio_seconds += float(row["duration"])
            progress.update(1, 0 if ok else 1, float(row["duration"]))
        os.fsync(f.fileno())
    summary.transcribe_seconds = time.perf_counter() - t


# ---- command -------------------------------------------------------------------------------------------------------
def _parse_set(values: tuple[str, ...]) -> dict:
    """``--set key=value`` pairs for TranscribeOptions fields (values parsed as YAML: 0.2, true, [0.0, 0.2])."""
    import yaml

    from ..transcribe.engine import TranscribeOptions

    known = {f.name for f in dataclasses.fields(TranscribeOptions)}
    out = {}
    for v in values:
        key, eq, raw = v.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in known:
            raise click.BadParameter(f"{v!r}: give FIELD=VALUE with FIELD one of {sorted(known)}", param_hint="--set")
        value = yaml.safe_load(raw)
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder (resumable).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="jsonl",
    show_default=True,
    help="Merged output: JSON lines (as transcribe --format json) or Parquet.",
)
@click.option("--num-workers", default=1, show_default=True, type=click.IntRange(1), help="Transcription actors.")
@click.option(
    "--num-gpus-per-worker", default=0.0, show_default=True, type=click.FloatRange(0), help="GPUs per actor (0 = CPU)."
)
@click.option("--cpus-per-worker", default=1.0, show_default=True, type=click.FloatRange(0), help="CPUs per actor.")
@click.option(
    "--address",
    default=None,
    help="Ray cluster: 'auto' (a cluster started on this node) or ray://HOST:10001; default: local Ray.",
)
@click.option(
    "--batch-size",
    default=8,
    show_default=True,
    type=click.IntRange(1),
    help="Files per actor call (and chunks per generate call).",
)
@click.option("--no-group", is_flag=True, help="Skip the detection pass that groups files by adapter.")
@click.option(
    "--max-retries",
    default=3,
    show_default=True,
    type=click.IntRange(0),
    help="Restarts of a dead actor and retries of its work.",
)
@click.option("--input-type", type=click.Choice(INPUT_TYPES), default="auto", show_default=True)
@click.option("--split", default="test", show_default=True, help="Data sets: split.")
@click.option("--config", "ds_config", default=None, help="Data sets: configuration (e.g. fr_fr).")
@click.option("--audio-column", default="audio", show_default=True, help="Data sets: audio column.")
@click.option("--id-column", default="id", show_default=True, help="Manifests and data sets: row id column.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Data sets: at most this many rows.")
@click.option("--progress-every", default=10.0, show_default=True, help="Seconds between progress lines.")
@click.option("--language", default=None, help="Force the language (skip detection).")
@click.option("--languages", default=None, help="Restrict detection to these languages: fr,de,es.")
@click.option("--adapter", default="auto", show_default=True, help="auto (route), none (base), or NAME[@VERSION].")
@click.option("--domain", default=None, help="Prefer the adapter for this domain (or domains, in order).")
@click.option(
    "--route", "route_mode", type=click.Choice(["per-file", "per-segment"]), default="per-file", show_default=True
)
@click.option("--threshold", default=0.5, show_default=True, help="Minimum language probability to use an adapter.")
@click.option("--beam-size", default=1, show_default=True)
@click.option("--merge", is_flag=True, help="Merge each adapter into the weights while it is used.")
@click.option(
    "--combine",
    type=click.Choice(["linear", "cat", "ties"]),
    default=None,
    help="With --domain: combine the language and domain adapters.",
)
@click.option("--combine-weights", default="1,1", show_default=True)
@click.option("--batching", type=click.Choice(["grouped", "mixed"]), default="grouped", show_default=True)
@click.option(
    "--consult-below",
    default=0.8,
    show_default=True,
    help="Ask the candidate adapters when the base's language probability is below this (0: never).",
)
@click.option(
    "--set",
    "extra",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Any other transcription option by name (task=translate, temperature=[0.0,0.2], vad=true).",
)
@click.pass_context
def batch(
    ctx,
    inputs,
    out_dir,
    fmt,
    num_workers,
    num_gpus_per_worker,
    cpus_per_worker,
    address,
    batch_size,
    no_group,
    max_retries,
    input_type,
    split,
    ds_config,
    audio_column,
    id_column,
    limit,
    progress_every,
    language,
    languages,
    adapter,
    domain,
    route_mode,
    threshold,
    beam_size,
    merge,
    combine,
    combine_weights,
    batching,
    consult_below,
    extra,
):
    """Transcribe an archive on Ray Data (local by default): folders, globs, JSONL/CSV manifests or a data set.

    Rows go to OUT/transcripts.jsonl (the fields of `transcribe --format json`, one row per input); a rerun with the
    same --out skips inputs already done.
    """
    from ..transcribe.engine import TranscribeOptions

    try:
        weights = tuple(float(w) for w in _csv(combine_weights) or [])
    except ValueError:
        weights = ()
    if len(weights) != 2:
        raise click.BadParameter(f"{combine_weights!r}: give two numbers, e.g. 0.7,0.3", param_hint="--combine-weights")
    kw = dict(
        language=language,
        languages=_csv(languages),
        adapter=adapter,
        domain=_csv(domain),
        threshold=threshold,
        per_segment=route_mode == "per-segment",
        batch_size=batch_size,
        beam_size=beam_size,
        merge=merge,
        combine=combine,
        combine_weights=weights,
        batching=batching,
        consult_below=consult_below,
    )
    kw.update(_parse_set(extra))
    try:
        topts = TranscribeOptions(**kw)
        if hasattr(topts, "validate"):
            topts.validate()
    except (TypeError, ValueError) as e:
        raise click.ClickException(f"transcription options: {e}") from e
    o = ctx.obj or {}
    registry = o.get("registry") or "adapters"
    spec = EngineSpec(
        base=o.get("base", "offline"),
        quantize=o.get("quantize", "int8"),
        device=o.get("device"),
        registry=registry if Path(registry).is_dir() else None,
        cache_size=o.get("cache_size", 4),
        runtime=o.get("runtime", "auto"),
        threads=o.get("threads", 0),
    )
    from ..transcribe.runtime import TorchOnlyError, check_runtime_options, resolve_runtime

    if spec.runtime == "auto":
        # batch stays on torch unless asked: its actors micro-batch rows through the torch runtime, while the ct2
        # runtime decodes them file by file (explicit --runtime ct2 runs there)
        spec.runtime = "torch"
    try:
        check_runtime_options(resolve_runtime(spec.runtime, spec.device), topts)
    except TorchOnlyError as e:
        raise click.ClickException(str(e)) from e
    options = BatchOptions(
        out=Path(out_dir),
        fmt=fmt,
        num_workers=num_workers,
        num_gpus_per_worker=num_gpus_per_worker,
        cpus_per_worker=cpus_per_worker,
        address=address,
        batch_size=batch_size,
        group=not no_group,
        max_retries=max_retries,
        input_type=input_type,
        split=split,
        config=ds_config,
        audio_column=audio_column,
        id_column=id_column,
        limit=limit,
        progress_every=progress_every,
    )

    def echo(msg: str) -> None:
        click.echo(msg, err=True)

    try:
        summary = run_batch(list(inputs), options, spec, topts, echo=echo)
    except BatchError as e:
        raise click.ClickException(str(e)) from e
    echo(summary.line())
    sys.exit(1 if summary.errors_total else 0)
