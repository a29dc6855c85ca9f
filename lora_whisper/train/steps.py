"""The steps of a training run: which process reports, progress bars, and each step's wall time.

``StepTimer`` times the steps ``trainer.train`` runs one after the other; the table (``step_table``) is what
``lora-whisper train`` prints at the end, and the seconds are filed in the adapter's record
(``metrics["step_seconds"]``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

logger = logging.getLogger("lora_whisper")

STEPS = {
    "base": "load the base (8-bit, for training)",
    "data": "data: synthesis, decoding and checks, contrast clips, calibration negatives",
    "base scoring": "the base's held-out WER (as transcribe decodes; cached per data and runtime)",
    "encoder cache": "frozen-encoder outputs of every clip (decoder-only LoRA)",
    "fit": "training steps (with validation WER and checkpoints)",
    "save": "the adapter's files",
    "adapter scoring": "the adapter's held-out WER (as transcribe decodes: compiled on ct2)",
    "calibration": "routing threshold on its own clips and other languages' speech",
    "filing": "plot, record and registry",
}
"""The steps of ``train`` in order, with what each one does."""


def rank() -> int:
    """This process's rank in a distributed run (0 alone)."""
    return int(os.environ.get("RANK", "0"))


def bar(progress: bool, desc: str, total: int | None = None):
    """A tqdm bar on rank 0 when ``progress``, else None."""
    if not progress or rank() != 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="clip")


class StepTimer:
    """Wall time of each step of a run, in the order they ran (``with timer("fit"): ...``)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, step: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] = round(self.seconds.get(step, 0.0) + time.perf_counter() - t, 1)
            logger.info("step %s: %.1f s", step, self.seconds[step])


def step_table(seconds: dict[str, float]) -> str:
    """The steps' wall times as a small text table, with the total."""
    if not seconds:
        return ""
    width = max(len(s) for s in [*seconds, "total"])
    total = sum(seconds.values())
    lines = [f"{'step':<{width}}  {'seconds':>8}  {'share':>5}"]
    for step, s in seconds.items():
        lines.append(f"{step:<{width}}  {s:>8.1f}  {s / total if total else 0:>5.0%}")
    lines.append(f"{'total':<{width}}  {total:>8.1f}")
    return "\n".join(lines)
