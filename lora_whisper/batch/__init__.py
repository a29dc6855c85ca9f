"""`lora-whisper batch`: transcription of an archive on Ray Data, resumable (issue 11).

The flow (``pipeline.run_batch``):

1. Inputs (folders, globs, JSONL/CSV manifests, a Hugging Face data set) become items, one per input, each with a
   key (the manifest's or data set's ``id``, else the file name) that identifies its row in the output
   (``inputs``).
2. Items whose key already has a result row under ``--out`` are skipped (resume: ``resume``).
3. When the route of a file depends on its audio (``--adapter auto``, no ``--language``, adapters in the
   registry), a detection pass runs first: decode tasks, then an actor pool in which each actor holds one Engine
   and computes each file's route from the base's language probabilities on its first 30 s (kept in
   ``OUT/routes.jsonl``, so a rerun with the same options and adapters detects only what it had not: ``resume``).
4. Items are sorted by route and cut into units of at most ``--batch-size`` files that never mix routes, so each
   call of a transcription actor works with one adapter (``units``).
5. ``ray.data.from_items(units)`` -> decode tasks (``load_audio``: soundfile + soxr; a bad file becomes an error
   row) -> an actor pool (``--num-workers`` actors, ``--num-gpus-per-worker`` each) whose actors build one Engine in
   ``__init__`` and call ``engine.transcribe([(name, samples), ...], options)`` per unit -> rows equal to
   ``Transcription.to_dict()`` (or ``{"file", "error"}``), carried through Arrow as JSON text (``worker``: what Ray
   ships; ``pipeline._pipeline``: the dataset; ``cluster``: starting or joining Ray).
6. The driver appends each row to this run's part file (``OUT/parts/``) as it arrives, prints progress on stderr,
   and at the end merges every part into ``OUT/transcripts.jsonl`` (or ``.parquet``): one row per input, in input
   order (``pipeline``, ``resume.merge_output``).

A killed actor is restarted by Ray and its unit retried (``max_restarts`` / ``max_task_retries``); rows are only
written once a unit is done, so nothing is lost and nothing is written twice. Ray is imported inside functions: it
is an optional extra (``pip install 'lora-whisper[ray]'``).

Modules: ``options`` (settings and records), ``inputs``, ``resume`` (part files, rows, merge, routes cache),
``units`` (routes and units), ``worker`` (the decode task and the actor), ``cluster`` (the Ray runtime),
``pipeline`` (the passes, ``run_batch``), ``command`` (the click command). This package imports only ``options``
at load; ``run_batch`` and ``read_output`` are imported on first use.
"""

from __future__ import annotations

from .options import BatchError, BatchOptions, BatchSummary, EngineSpec

__all__ = ["BatchError", "BatchOptions", "BatchSummary", "EngineSpec", "read_output", "run_batch"]


def __getattr__(name: str):
    if name == "run_batch":
        from .pipeline import run_batch

        return run_batch
    if name == "read_output":
        from .resume import read_output

        return read_output
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
