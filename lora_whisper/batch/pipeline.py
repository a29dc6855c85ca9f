"""A batch run end to end (the flow in the package docstring): ``run_batch`` checks the options, collects the inputs,
skips those done, and ``_run`` runs the Ray Data passes (``_pipeline``: decode tasks -> actor pool), the detection
pass when routes depend on the audio, then the transcription pass, whose rows it appends to this run's part file
with progress lines (``Progress``) before ``run_batch`` merges the output."""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from .cluster import _check_resources, _data_context, _start_ray
from .inputs import collect_inputs
from .options import BatchError, BatchOptions, BatchSummary, EngineSpec, Item
from .resume import (
    FORMATS,
    PARTS_DIR,
    ROUTES_NAME,
    _read_routes,
    _route_signature,
    latest_rows,
    merge_output,
    new_part,
    read_rows,
    route_line,
)
from .units import _static_route, make_units
from .worker import FAULT_ENV, _decode_unit, _Worker


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


def _pipeline(units: list[dict], spec: EngineSpec, topts, options: BatchOptions, mode: str, fault: str | None):
    """The lazy Ray Data dataset of one pass (``mode``: ``detect`` or ``transcribe``): units -> decode tasks -> a pool
    of ``_Worker`` actors (restarted, their units retried, up to ``options.max_retries`` times)."""
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


def run_batch(
    inputs: list[str],
    options: BatchOptions,
    spec: EngineSpec,
    topts=None,
    echo: Callable[[str], None] | None = None,
) -> BatchSummary:
    """Transcribe ``inputs`` on Ray Data into ``options.out``; see the package docstring (``lora_whisper.batch``).

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


def _run(todo: list[Item], options: BatchOptions, spec: EngineSpec, topts, out: Path, summary: BatchSummary, echo):
    """Route ``todo`` (a detection pass when routes depend on the audio), cut it into units, transcribe them."""
    check_silence = not getattr(topts, "vad", False)  # as the engine: with VAD a silent file is no error
    routes = _routes(todo, options, spec, topts, out, summary, echo, check_silence)
    units = make_units(todo, routes, options.batch_size, check_silence=check_silence)
    for u in units:
        summary.routes[u["route"]] = summary.routes.get(u["route"], 0) + 1
    if echo:
        groups = ", ".join(f"{r}: {n}" for r, n in summary.routes.items())
        echo(
            f"batch: {len(todo)} files in {len(units)} units on {options.num_workers} worker(s) (units per route: {groups})"
        )
    _transcribe(units, len(todo), options, spec, topts, out, summary, echo)


def _routes(
    todo: list[Item],
    options: BatchOptions,
    spec: EngineSpec,
    topts,
    out: Path,
    summary: BatchSummary,
    echo,
    check_silence: bool,
) -> dict[str, str]:
    """The route of every file of ``todo``: the static one (or ``base`` with ``--no-group``) when it does not depend
    on the audio, else from the routes cache and a detection pass over the rest (its routes appended to the cache)."""
    static = _static_route(topts, spec.registry)
    if static is not None or not options.group:
        return {it.key: static or "base" for it in todo}
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
                f.write(route_line(str(row["key"]), r, sig))
    summary.detect_seconds = time.perf_counter() - t
    return routes


def _transcribe(
    units: list[dict],
    total: int,
    options: BatchOptions,
    spec: EngineSpec,
    topts,
    out: Path,
    summary: BatchSummary,
    echo,
) -> None:
    """The transcription pass: each row appended to this run's part file as it arrives (once per key), fsynced every
    2 s and at the end, with progress lines and the counts of ``summary``."""
    fault = os.environ.get(FAULT_ENV) or None
    part = new_part(out)
    progress = Progress(total, options.progress_every, echo)
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
