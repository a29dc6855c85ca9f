"""train(recipe) -> a registered adapter: frozen 8-bit base + LoRA, transformers' Trainer, WER before and after.

``train`` is the list of steps, each in its own module and timed (``steps.StepTimer``; the table is printed at the end
and filed in the record's ``metrics["step_seconds"]``):

- ``splits``: the data (synthesis, decoding and checks, held-out sets, validation speakers, contrast clips,
  calibration negatives), each clip decoded once;
- ``evaluation``: the base's held-out figures (``score_base``) and the adapter's (``evaluate_adapter``), decoded as
  ``transcribe`` decodes, on one inference engine (``lazy_engine``) that the calibration uses too;
- ``cache``: frozen-encoder outputs (decoder-only LoRA) and speed copies; ``labels``: label ids, collator, data set;
- ``fit``: peft model, transformers' Trainer, the best checkpoint by validation WER, resume;
- ``filing``: the adapter's files, its record (metrics, decoding, routing calibration), plot and registry entry.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..adapters.registry import AdapterRecord, Registry
from ..base.loading import Base, load_base, pick_device
from ..scoring import Score
from .cache import encoder_cache as _encoder_cache  # noqa: F401 - the names callers import from here
from .cache import speed_copies
from .evaluation import evaluate_adapter, inactive_reason, inference_engine, lazy_engine, score_base
from .evaluation import max_new_tokens as _max_new_tokens  # noqa: F401
from .filing import calibrate_routing, file_adapter, metrics, new_record, plot_training, save_adapter_files
from .fit import check_precision, encoder_outputs, fit, lora_model, make_trainer, prepare_run_dir
from .fit import last_checkpoint as _last_checkpoint  # noqa: F401
from .labels import Collator as _Collator  # noqa: F401
from .labels import label_ids, language_label, timestamp_token, timestamped_rows
from .labels import make_dataset as _dataset  # noqa: F401
from .recipe import Recipe
from .splits import (
    DATA_KINDS,
    KIND_IN_TEMPLATE,
    KIND_OUT_OF_TEMPLATE,
    KIND_REAL,
    HeldOut,
    calibration_negatives,
    load_contrast,
    load_data,
    load_splits,
    prepare_data,
)
from .steps import StepTimer, rank, step_table

logger = logging.getLogger("lora_whisper")

__all__ = [
    "DATA_KINDS",
    "KIND_IN_TEMPLATE",
    "KIND_OUT_OF_TEMPLATE",
    "KIND_REAL",
    "HeldOut",
    "TrainResult",
    "calibration_negatives",
    "evaluate_adapter",
    "inactive_reason",
    "inference_engine",
    "label_ids",
    "language_label",
    "load_contrast",
    "load_data",
    "load_splits",
    "speed_copies",
    "timestamp_token",
    "timestamped_rows",
    "train",
]


@dataclass
class TrainResult:
    """What a training run produced."""

    record: AdapterRecord | None
    """The filed adapter (None on non-zero ranks of a distributed run)."""
    before: Score | None
    after: Score | None
    train_seconds: float
    steps: int
    run_dir: Path
    rejected: list
    step_seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of each step of the run, in order (``steps.STEPS``); ``steps.step_table`` prints them."""


def check_whole(recipe: Recipe) -> None:
    """Raise ``RecipeError`` listing every problem of ``recipe`` (a recipe built in code skips ``load_recipe``)."""
    from .recipe import RecipeError
    from .recipe import validate as recipe_problems

    if problems := recipe_problems(recipe):
        raise RecipeError(problems, "recipe")


def train(
    recipe: Recipe,
    registry: Registry,
    resume: bool = False,
    progress: bool = True,
    base: Base | None = None,
    device: str | None = None,
    runtime: str = "auto",
) -> TrainResult:
    """Train a LoRA adapter as the recipe says, evaluate before/after, and file it in ``registry``.

    The steps: prepare the run folder, the data and the base's before-figures; build the frozen base + LoRA; fit
    (resumable, best checkpoint by validation WER); save; score the adapter as ``transcribe`` decodes; calibrate its
    routing threshold; file it. An adapter that is not better than the base on its headline held-out set is filed
    with ``inactive_reason`` (a warning says so): routing never picks it, ``--adapter NAME`` still forces it.

    Args:
        resume: continue from the last checkpoint in the run folder (after a crash or a kill).
        base: an already loaded base to train on (tests); by default it is loaded from the recipe.
        device: ``cpu``, ``cuda`` or ``cuda:N``; default: this process's own GPU under torchrun/accelerate
            (``LOCAL_RANK``), else cuda when available, else cpu (see ``base.pick_device``).
        runtime: the runtime the before/after figures and the routing calibration are measured on, as
            ``transcribe --runtime`` (``auto``: ct2 on CPU, torch on CUDA); training itself is always torch.
    """
    from transformers import set_seed

    check_whole(recipe)  # before the run folder (an earlier run's checkpoints) is touched
    set_seed(recipe.train.seed)
    timer, run_dir = StepTimer(), recipe.run_dir
    prepare_run_dir(run_dir, resume)
    # placement first: under torchrun / accelerate each process loads the base on its own GPU
    device = device or (base.device if base is not None else pick_device(None))
    check_precision(recipe.train.precision, device)
    with timer("base"):
        base = base or load_base(recipe.base.model, recipe.base.quantize, device)
    with timer("data"):
        data = prepare_data(recipe, base, progress)
    engine = lazy_engine(base, recipe.base.model, runtime)  # scores the base and the adapter, and calibrates
    with timer("base scoring"):
        befores = score_base(recipe, base, data.held, engine, runtime, progress)
    with timer("encoder cache"):
        hidden = encoder_outputs(recipe, base, data, progress)
    peft_model, trainable = lora_model(recipe, base)
    trainer, best, stamped = make_trainer(recipe, base, peft_model, data, hidden, device, progress)
    with timer("fit"):
        out, seconds = fit(trainer, run_dir, resume)
    if rank() != 0:
        return TrainResult(None, befores[0], None, seconds, out.global_step, run_dir, data.rejected, timer.seconds)
    # save with safetensors; the trained model carries LoRA layers and k-bit preparation, so the saved files are
    # evaluated on the inference engine, exactly as `lora-whisper transcribe --adapter` will use them
    adapter_dir = run_dir / "adapter"
    with timer("save"):
        if best is not None:
            best.restore()
        shutil.rmtree(adapter_dir, ignore_errors=True)
        save_adapter_files(peft_model, adapter_dir, base)
    log_history = trainer.state.log_history
    del trainer, peft_model
    base.model = None
    record = new_record(recipe, base, trainable, data.fingerprint, seconds, adapter_dir)
    with timer("adapter scoring"):
        engine().pin(record)
        afters = [evaluate_adapter(engine(), h.data.examples, recipe, record, progress) for h in data.held]
    for h, a in zip(data.held, afters):
        logger.info("after (%s %s): WER %.3f CER %.3f", h.kind, h.split, a.wer, a.cer)
    record.metrics = metrics(data, befores, afters, best, out, log_history, len(stamped))
    record.inactive_reason = inactive_reason(befores[0], afters[0], data.held[0].kind, data.held[0].split)
    with timer("calibration"):  # after the metrics: how far its own claims count depends on what it trained on
        own = data.validation or data.held[0].data.examples
        record.calibration = calibrate_routing(engine(), record, recipe, own, data.negatives)
    del engine
    record.metrics["step_seconds"] = dict(timer.seconds)  # every step but the filing itself, which writes it
    with timer("filing"):
        plot = plot_training(log_history, befores[0], afters[0], run_dir / "training.png", recipe.name)
        filed = file_adapter(registry, record, recipe, adapter_dir, plot)
    logger.info("steps (wall seconds):\n%s", step_table(timer.seconds))
    return TrainResult(filed, befores[0], afters[0], seconds, out.global_step, run_dir, data.rejected, timer.seconds)
