"""The fit: frozen base + LoRA (peft), transformers' Trainer, the best checkpoint by validation WER, and resume.

The Trainer brings checkpoints and resume, TensorBoard logs, the seed, gradient checkpointing and data parallelism
(torchrun / accelerate launch set the environment it reads); none of that is re-implemented here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from ..base.loading import Base
from .cache import encoder_cache
from .evaluation import max_new_tokens
from .labels import Collator, make_dataset, timestamped_rows
from .recipe import Recipe
from .splits import Prepared
from .steps import bar, rank

logger = logging.getLogger("lora_whisper")


def check_precision(precision: str, device: str) -> None:
    """fp16/bf16 need a GPU: one line saying so on CPU."""
    if precision != "fp32" and not str(device).startswith("cuda"):
        raise ValueError(
            f"train.precision {precision} needs a GPU (device is {device}); use train.precision=fp32 on CPU"
        )


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """A fresh run removes an earlier run's checkpoints and best weights (a warning says so); ``resume`` keeps them."""
    if run_dir.exists() and not resume and rank() == 0:
        stale = sorted(run_dir.glob("checkpoint-*"))
        if stale:
            logger.warning("%s has checkpoints from an earlier run; starting over (use --resume to continue)", run_dir)
            for c in stale:
                shutil.rmtree(c, ignore_errors=True)
        # and its best-by-validation weights: a fresh run must not start from another run's best
        shutil.rmtree(run_dir / "best", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def lora_model(recipe: Recipe, base: Base):
    """The frozen base (prepared for k-bit training when 8-bit, SpecAugment when the encoder trains) + LoRA."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    from ..adapters.lora import lora_config

    model = base.model
    if recipe.train.spec_augment and recipe.lora.scope != "decoder":
        model.config.apply_spec_augment = True
        model.config.mask_time_prob = recipe.train.mask_time_prob
        model.config.mask_feature_prob = recipe.train.mask_feature_prob
    if base.quantize == "int8":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=recipe.train.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    lc = lora_config(
        recipe.lora.scope, recipe.lora.r, recipe.lora.alpha, recipe.lora.dropout, tuple(recipe.lora.target_modules)
    )
    peft_model = get_peft_model(model, lc)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    logger.info("LoRA %s r=%d: %d trainable parameters", recipe.lora.scope, recipe.lora.r, trainable)
    return peft_model, trainable


def encoder_outputs(recipe: Recipe, base: Base, data: Prepared, progress: bool):
    """(training + contrast, validation) frozen-encoder outputs for decoder-only LoRA, which trains on them
    (``cache.encoder_cache``: the encoder pass is paid once per clip); (None, None) when the encoder trains."""
    if recipe.lora.scope != "decoder":
        return None, None
    clips = data.train + data.contrast + data.validation
    pbar = bar(progress, "encoder cache", len(clips))
    hidden = encoder_cache(base, clips, recipe.eval.batch_size, pbar.update if pbar is not None else None)
    if pbar is not None:
        pbar.close()
    n = len(data.train) + len(data.contrast)
    return hidden[:n], hidden[n:]


def make_trainer(recipe: Recipe, base: Base, peft_model, data: Prepared, hidden, device: str, progress: bool):
    """transformers' Trainer over the training (+ contrast) clips, with the best-by-validation callback.

    ``hidden``: (training, validation) encoder outputs from ``encoder_outputs`` (decoder-only LoRA), or (None, None).
    Returns (trainer, best-checkpoint keeper or None, indices of timestamped rows)."""
    from transformers import Trainer

    encoder_hidden, val_hidden = hidden
    stamped = timestamped_rows(data.train, recipe.data.timestamps, recipe.train.seed)
    train_ds = make_dataset(
        base,
        data.train + data.contrast,
        recipe.language,
        encoder_hidden,
        timestamped=stamped,
        speed_perturb=tuple(recipe.data.speed_perturb) if recipe.data.speed_perturb else None,
        seed=recipe.train.seed,
        contrast=len(data.contrast),
    )
    sot = base.processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    time_mask = recipe.train.mask_time_prob if recipe.train.spec_augment and encoder_hidden is not None else 0.0
    trainer = Trainer(
        model=peft_model,
        args=training_args(recipe, recipe.run_dir, device, progress),
        train_dataset=train_ds,
        data_collator=Collator(sot, time_mask),
    )
    best = None
    if data.validation:
        steps_per_epoch = max(1, -(-len(train_ds) // (recipe.train.batch_size * recipe.train.grad_accum)))
        every = recipe.train.validate_every or max(1, steps_per_epoch // 2)
        best = BestCheckpoint(base, peft_model, data.validation, val_hidden, recipe, recipe.run_dir, every)
        trainer.add_callback(best.callback())
    return trainer, best, stamped


def training_args(recipe: Recipe, run_dir: Path, device: str, progress: bool):
    """The recipe's ``train`` settings as transformers ``TrainingArguments`` (checkpoints every ``save_steps``)."""
    from transformers import TrainingArguments

    t = recipe.train
    return TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        lr_scheduler_type="linear",
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        report_to=["tensorboard"],
        use_cpu=not str(device).startswith("cuda"),
        fp16=t.precision == "fp16",
        bf16=t.precision == "bf16",
        ddp_backend="gloo" if device == "cpu" and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        ddp_find_unused_parameters=False,
        remove_unused_columns=False,
        label_names=["labels"],
        activation_checkpointing=t.gradient_checkpointing and recipe.lora.scope != "decoder",
        activation_checkpointing_kwargs={"use_reentrant": False},
        dataloader_num_workers=0,
        disable_tqdm=not progress,
        save_only_model=False,
    )


def fit(trainer, run_dir: Path, resume: bool):
    """Train, from the last whole checkpoint when resuming; returns (train output, seconds over all attempts)."""
    last = last_checkpoint(run_dir) if resume else None
    if resume and last is None:
        logger.warning("--resume: no checkpoint in %s; starting from step 0", run_dir)
    elif last:
        logger.info("resuming from %s", last)
    t0, previous = time.perf_counter(), _previous_seconds(last)
    trainer.add_callback(_seconds_callback(t0, previous))
    out = trainer.train(resume_from_checkpoint=str(last) if last else None)
    return out, time.perf_counter() - t0 + previous


class BestCheckpoint:
    """Validation WER (clips of training speakers held out of training, never the test split) every ``every``
    steps; the LoRA weights of the best step are kept (in memory and in ``run_dir/best``) and restored at the end."""

    def __init__(self, base, peft_model, examples, hidden, recipe: Recipe, run_dir: Path, every: int):
        self.base, self.model, self.examples, self.hidden = base, peft_model, examples, hidden
        self.recipe, self.dir, self.every = recipe, run_dir / "best", every
        self.history: list[dict] = []
        self.best: tuple[float, int, dict] | None = None
        self.max_new_tokens = max_new_tokens(recipe, base, examples)
        known = self.dir / "best.json"
        if known.is_file():  # a resumed run keeps the best found before the kill
            try:
                from safetensors.torch import load_file

                info = json.loads(known.read_text())
                self.best = (info["wer"], info["step"], load_file(str(self.dir / "weights.safetensors")))
                self.history = info.get("history", [])
            except (OSError, ValueError, KeyError):
                self.best = None

    def wer(self) -> float:
        """Greedy WER on the validation clips with the current weights."""
        import torch
        from transformers.modeling_outputs import BaseModelOutput

        from ..scoring import score

        model, tok, bs = self.model, self.base.processor.tokenizer, self.recipe.eval.batch_size
        was_training = model.training
        model.eval()
        hyps = []
        dev = next(p.device for p in model.parameters())
        with torch.inference_mode():
            for k in range(0, len(self.examples), bs):
                chunk = self.examples[k : k + bs]
                kw = dict(language=self.recipe.language, task="transcribe", max_new_tokens=self.max_new_tokens)
                if self.hidden is not None:
                    enc = self.hidden[k : k + bs].to(dev, torch.float32)
                    out = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=enc), **kw)
                else:
                    fe = self.base.processor.feature_extractor
                    feats = fe([e.audio for e in chunk], sampling_rate=16000, return_tensors="pt").input_features
                    out = model.generate(input_features=feats.to(dev, next(model.parameters()).dtype), **kw)
                seqs = out.sequences if hasattr(out, "sequences") else out
                hyps += [t.strip() for t in tok.batch_decode(seqs, skip_special_tokens=True)]
        if was_training:
            model.train()
        return score([e.text for e in self.examples], hyps, self.recipe.language).wer

    def check(self, step: int) -> None:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        w = self.wer()
        self.history.append({"step": step, "wer": round(w, 4)})
        logger.info("step %d: validation WER %.4f", step, w)
        if self.best is None or w < self.best[0]:
            state = {
                k: v.detach().to("cpu").clone().contiguous() for k, v in get_peft_model_state_dict(self.model).items()
            }
            self.best = (w, step, state)
            self.dir.mkdir(parents=True, exist_ok=True)
            save_file(state, str(self.dir / "weights.safetensors"))
        if self.best is not None:
            info = {"wer": self.best[0], "step": self.best[1], "history": self.history}
            (self.dir / "best.json").write_text(json.dumps(info))

    def restore(self) -> None:
        from peft import set_peft_model_state_dict

        if self.best is not None:
            set_peft_model_state_dict(self.model, self.best[2])
            logger.info("keeping the best checkpoint: step %d, validation WER %.4f", self.best[1], self.best[0])

    def summary(self) -> dict:
        return {
            "split": "validation (training speakers held out of training)",
            "n": len(self.examples),
            "best_step": self.best[1] if self.best else None,
            "wer": self.best[0] if self.best else None,
            "history": self.history,
        }

    def callback(self):
        from transformers import TrainerCallback

        outer = self

        class BestCallback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.is_world_process_zero and (
                    state.global_step % outer.every == 0 or state.global_step == state.max_steps
                ):
                    outer.check(state.global_step)

        return BestCallback()


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest *complete* checkpoint: a kill during a save leaves a folder without its trainer state.

    transformers' ``get_last_checkpoint`` takes the highest-numbered folder whatever it holds, and resuming from a
    half-written one fails ("Can't find a valid checkpoint"). The Trainer writes ``trainer_state.json`` after the
    weights, optimizer and RNG states, so a parseable state whose step matches the folder marks a finished save.
    """
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not run_dir.is_dir():
        return None
    found = []
    for path in run_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = path.name.rsplit("-", 1)[-1]
        if path.is_dir() and step.isdigit():
            found.append((int(step), path))
    for step, path in sorted(found, reverse=True):
        try:
            state = json.loads((path / "trainer_state.json").read_text())
            complete = state.get("global_step") == step and any(path.glob("*.safetensors"))
        except (OSError, ValueError, AttributeError):
            complete = False
        if complete:
            return path
        logger.warning("%s: incomplete checkpoint (interrupted while saving), skipped", path)
    return None


SECONDS_FILE = "lora_whisper_seconds.json"


def _previous_seconds(last: Path | None) -> float:
    """Training time spent up to a checkpoint, so a resumed run records the total."""
    try:
        return float(json.loads((last / SECONDS_FILE).read_text())["seconds"]) if last else 0.0
    except (OSError, ValueError, KeyError):
        return 0.0


def _seconds_callback(start: float, previous: float):
    """Writes the elapsed training time into every checkpoint (the Trainer does not keep wall time)."""
    from transformers import TrainerCallback

    class SecondsCallback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir() and state.is_world_process_zero:
                (ckpt / SECONDS_FILE).write_text(json.dumps({"seconds": previous + time.perf_counter() - start}))

    return SecondsCallback()
