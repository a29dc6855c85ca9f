"""The Ray runtime of a run: start a local Ray or join a cluster (``_start_ray``), fail early when the actors and a
decode task do not fit (``_check_resources``), and quiet Ray Data's own logs and progress bars (``_data_context``).
Ray is imported inside the functions: it is an optional extra."""

from __future__ import annotations

import logging
import math
import os

from .options import BatchError, BatchOptions

logger = logging.getLogger("lora_whisper")

RAY_MISSING = "Ray is not installed: pip install 'lora-whisper[ray]' (Ray Data is needed by lora-whisper batch)"


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
