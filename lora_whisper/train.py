"""train(recipe) -> a registered adapter: frozen 8-bit base + LoRA, transformers' Trainer, WER before and after.

The Trainer brings checkpoints and resume, TensorBoard logs, the seed, gradient checkpointing and data parallelism
(torchrun / accelerate launch set the environment it reads); none of that is re-implemented here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .base import Base, cache_dir, cache_get, cache_put, load_base
from .config import Recipe
from .data import Example, Loaded, fingerprint, load_folder, load_hub, load_manifest, validate
from .registry import AdapterRecord, Registry
from .scoring import Score

logger = logging.getLogger("lora_whisper")


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


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


# ---- data ------------------------------------------------------------------------------------------------------
def load_data(recipe: Recipe, progress=None) -> tuple[Loaded, Loaded]:
    """(train, test) examples for a recipe, not yet validated."""
    d = recipe.data
    lang = recipe.language
    if d.source == "synthetic":
        from .synth import TEST_VARIANTS, TRAIN_VARIANTS, corpus_path, read_corpus, synthesize, voices_for

        train_text, test_text = read_corpus(corpus_path(d.corpus))
        if not test_text:
            raise ValueError(f"data.corpus {d.corpus}: no held-out sentences (add a '# test' line)")
        train_text, test_text = train_text[: d.max_train], test_text[: d.max_test]
        seed = recipe.train.seed
        tv = voices_for(lang, TRAIN_VARIANTS, d.speed, d.pitch, d.train_voices, seed)
        ev = voices_for(lang, TEST_VARIANTS, d.speed, d.pitch, d.test_voices, seed + 1)
        cache = cache_dir() / "tts" / lang
        train = synthesize(
            train_text, lang, tv, cache, d.noise_snr_db, seed, prefix=f"{d.corpus}:train", progress=progress
        )
        test = synthesize(
            test_text, lang, ev, cache, d.noise_snr_db, seed + 1, prefix=f"{d.corpus}:test", progress=progress
        )
        return Loaded(train), Loaded(test)
    if d.source == "manifest":
        return (
            load_manifest(d.train, d.audio_column, d.text_column, language=lang),
            load_manifest(d.test, d.audio_column, d.text_column, language=lang),
        )
    if d.source == "folder":
        return load_folder(d.train, language=lang, text_column=d.text_column), load_folder(
            d.test, language=lang, text_column=d.text_column
        )
    return (
        load_hub(d.dataset, d.config, d.train_split, d.audio_column, d.text_column, lang, d.max_train),
        load_hub(d.dataset, d.config, d.test_split, d.audio_column, d.text_column, lang, d.max_test),
    )


def _cap(loaded: Loaded, n: int | None) -> Loaded:
    return Loaded(loaded.examples[:n] if n else loaded.examples, loaded.rejected)


class _Collator:
    """Pads label ids with -100 and drops the leading <|startoftranscript|> (the model prepends it when shifting)."""

    def __init__(self, sot: int):
        self.sot = sot

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        labels = [r["labels"] for r in rows]
        if all(lab[0] == self.sot for lab in labels):
            labels = [lab[1:] for lab in labels]
        width = max(len(lab) for lab in labels)
        padded = torch.full((len(labels), width), -100, dtype=torch.long)
        for i, lab in enumerate(labels):
            padded[i, : len(lab)] = torch.tensor(lab)
        batch = {"labels": padded}
        if "encoder_hidden" in rows[0]:
            batch["encoder_outputs"] = (torch.stack([torch.as_tensor(r["encoder_hidden"]) for r in rows]).float(),)
        else:
            batch["input_features"] = torch.stack([torch.as_tensor(r["input_features"]) for r in rows])
        return batch


def _encoder_cache(base: Base, examples: list[Example], data_fp: str, batch_size: int, progress=None):
    """Frozen-encoder outputs for every training clip, computed once (float16 safetensors in the cache dir)."""
    import torch
    from safetensors.torch import load_file, save_file

    key = f"{base.identity.fingerprint}-{base.quantize}-{data_fp}".replace(":", "")
    path = cache_dir() / "encoder" / f"{key[:96]}.safetensors"
    if path.is_file():
        return load_file(str(path))["hidden"]
    from .engine import Engine

    engine = Engine(base)
    outs = []
    for k in range(0, len(examples), batch_size):
        chunk = examples[k : k + batch_size]
        outs.append(engine.encode(engine.features([e.audio for e in chunk])).to("cpu", torch.float16))
        if progress:
            progress(len(chunk))
    hidden = torch.cat(outs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_file({"hidden": hidden.contiguous()}, str(tmp))
    os.replace(tmp, path)
    return hidden


def _dataset(base: Base, examples: list[Example], language: str, encoder_hidden=None):
    """A ``datasets.Dataset`` whose rows become log-mel features (or cached encoder output) + label ids on access."""
    import datasets

    tok = base.processor.tokenizer
    tok.set_prefix_tokens(language=language, task="transcribe", predict_timestamps=False)
    labels = [tok(e.text).input_ids for e in examples]
    ds = datasets.Dataset.from_dict({"idx": list(range(len(examples))), "labels": labels})
    fe = base.processor.feature_extractor
    audio = [e.audio for e in examples]

    def transform(batch):
        out = {"labels": batch["labels"]}
        if encoder_hidden is not None:
            out["encoder_hidden"] = [encoder_hidden[i] for i in batch["idx"]]
        else:
            out["input_features"] = list(
                fe([audio[i] for i in batch["idx"]], sampling_rate=16000, return_tensors="pt").input_features
            )
        return out

    return ds.with_transform(transform)


# ---- evaluation ------------------------------------------------------------------------------------------------
def _max_new_tokens(recipe: Recipe, base: Base, examples: list[Example]) -> int:
    if recipe.eval.max_new_tokens:
        return recipe.eval.max_new_tokens
    longest = max(len(base.processor.tokenizer(e.text, add_special_tokens=False).input_ids) for e in examples)
    return min(440, 2 * longest + 16)


def evaluate_adapter(base: Base, examples: list[Example], recipe: Recipe, adapter: AdapterRecord | None) -> Score:
    """WER/CER on ``examples`` with the language forced, through the same engine as ``lora-whisper eval``."""
    from .engine import Engine, TranscribeOptions
    from .evaluation import evaluate

    engine = Engine(base)
    if adapter is not None:
        engine.pin(adapter)
    opts = TranscribeOptions(
        language=recipe.language,
        adapter=adapter.ref if adapter else "none",
        batch_size=recipe.eval.batch_size,
        max_new_tokens=_max_new_tokens(recipe, base, examples),
    )
    return evaluate(engine, examples, opts).overall


def _plot(log_history: list[dict], before: Score | None, after: Score | None, out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in log_history if "loss" in h]
    loss = [h["loss"] for h in log_history if "loss" in h]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [2.2, 1]})
    a.plot(steps, loss, marker=".", color="tab:blue")
    a.set_xlabel("optimizer step")
    a.set_ylabel("training loss")
    a.set_title(f"{title}: loss")
    a.grid(alpha=0.3)
    names, vals = [], []
    for name, s in (("base", before), ("adapter", after)):
        if s is not None:
            names += [f"{name}\nWER", f"{name}\nCER"]
            vals += [s.wer, s.cer]
    bars = b.bar(names, vals, color=["tab:gray", "lightgray", "tab:green", "lightgreen"][: len(vals)])
    b.bar_label(bars, fmt="%.3f")
    b.set_title("held-out error (normalized)")
    b.set_ylim(0, max(vals + [0.1]) * 1.2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ---- training --------------------------------------------------------------------------------------------------
def train(
    recipe: Recipe, registry: Registry, resume: bool = False, progress: bool = True, base: Base | None = None
) -> TrainResult:
    """Train a LoRA adapter as the recipe says, evaluate before/after, and file it in ``registry``.

    Args:
        resume: continue from the last checkpoint in the run folder (after a crash or a kill).
        base: an already loaded base to train on (tests); by default it is loaded from the recipe.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import Trainer, TrainingArguments, set_seed

    from .lora import lora_config, save_adapter

    set_seed(recipe.train.seed)
    run_dir = recipe.run_dir
    if run_dir.exists() and not resume and _rank() == 0:
        stale = sorted(run_dir.glob("checkpoint-*"))
        if stale:
            logger.warning("%s has checkpoints from an earlier run; starting over (use --resume to continue)", run_dir)
            for c in stale:
                shutil.rmtree(c, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)

    # data: decode, check and drop bad rows once
    bar = _bar(progress, "prepare data")
    base = base or load_base(recipe.base.model, recipe.base.quantize)
    train_raw, test_raw = load_data(recipe, progress=bar.update if bar is not None else None)
    train_set = validate(_cap(train_raw, recipe.data.max_train), base.processor.tokenizer)
    test_set = validate(_cap(test_raw, recipe.data.max_test), base.processor.tokenizer)
    if bar is not None:
        bar.close()
    if not train_set.examples or not test_set.examples:
        raise ValueError(
            f"no usable {'training' if not train_set.examples else 'held-out'} rows "
            f"({len(train_set.rejected) + len(test_set.rejected)} rejected)"
        )
    data_fp = fingerprint(train_set.examples + test_set.examples)
    logger.info("data: %d train / %d held-out clips (%s)", len(train_set.examples), len(test_set.examples), data_fp)

    before = None
    if not recipe.eval.skip_before and _rank() == 0:
        before = _cached_before(base, test_set.examples, recipe, data_fp)
        logger.info("before: WER %.3f CER %.3f", before.wer, before.cer)

    # model: frozen (8-bit) base + LoRA
    encoder_hidden = None
    if recipe.lora.scope == "decoder":
        bar = _bar(progress, "encoder cache", len(train_set.examples))
        encoder_hidden = _encoder_cache(
            base, train_set.examples, data_fp, recipe.eval.batch_size, bar.update if bar is not None else None
        )
        if bar is not None:
            bar.close()
    model = base.model
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

    args = TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=recipe.train.batch_size,
        gradient_accumulation_steps=recipe.train.grad_accum,
        learning_rate=recipe.train.lr,
        num_train_epochs=recipe.train.epochs,
        max_steps=recipe.train.max_steps,
        warmup_steps=recipe.train.warmup_steps,
        weight_decay=recipe.train.weight_decay,
        lr_scheduler_type="linear",
        logging_steps=recipe.train.logging_steps,
        save_strategy="steps",
        save_steps=recipe.train.save_steps,
        save_total_limit=recipe.train.save_total_limit,
        seed=recipe.train.seed,
        report_to=["tensorboard"],
        use_cpu=base.device == "cpu",
        ddp_backend="gloo" if base.device == "cpu" and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        ddp_find_unused_parameters=False,
        remove_unused_columns=False,
        label_names=["labels"],
        activation_checkpointing=recipe.train.gradient_checkpointing and recipe.lora.scope != "decoder",
        activation_checkpointing_kwargs={"use_reentrant": False},
        dataloader_num_workers=0,
        disable_tqdm=not progress,
        save_only_model=False,
    )
    trainer = Trainer(
        model=peft_model,
        args=args,
        train_dataset=_dataset(base, train_set.examples, recipe.language, encoder_hidden),
        data_collator=_Collator(base.processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")),
    )
    last = _last_checkpoint(run_dir) if resume else None
    if resume and last is None:
        logger.warning("--resume: no checkpoint in %s; starting from step 0", run_dir)
    elif last:
        logger.info("resuming from %s", last)
    t0, previous = time.perf_counter(), _previous_seconds(last)
    trainer.add_callback(_seconds_callback(t0, previous))
    out = trainer.train(resume_from_checkpoint=str(last) if last else None)
    seconds = time.perf_counter() - t0 + previous
    if _rank() != 0:
        return TrainResult(
            None, before, None, seconds, out.global_step, run_dir, train_set.rejected + test_set.rejected
        )

    # save with safetensors, evaluate through the same path as `eval`, file in the registry
    adapter_dir = run_dir / "adapter"
    shutil.rmtree(adapter_dir, ignore_errors=True)
    save_adapter(peft_model, adapter_dir, base.identity.hub_id)
    log_history = trainer.state.log_history
    # The trained model carries LoRA layers and k-bit preparation; evaluate the saved files on a fresh base, exactly
    # as `lora-whisper eval --adapter` will (one extra load of ~3 s, weights fingerprint cached).
    del trainer, peft_model, model
    base.model = None
    fresh = load_base(str(base.path), base.quantize, base.device)
    fresh.identity = base.identity
    record = AdapterRecord(
        name=recipe.name,
        version=0,
        language=recipe.language,
        domain=recipe.domain,
        base=base.identity.to_dict(),
        lora={
            "r": recipe.lora.r,
            "alpha": recipe.lora.alpha,
            "dropout": recipe.lora.dropout,
            "target_modules": list(recipe.lora.target_modules),
            "scope": recipe.lora.scope,
            "trainable_params": trainable,
        },
        recipe=recipe.to_dict(),
        data_fingerprint=data_fp,
        train_seconds=round(seconds, 1),
        source="train",
        path=adapter_dir,
    )
    after = evaluate_adapter(fresh, test_set.examples, recipe, record)
    logger.info("after: WER %.3f CER %.3f", after.wer, after.cer)
    record.metrics = {
        "before": before.to_dict() if before else None,
        "after": after.to_dict(),
        "held_out": len(test_set.examples),
        "train_clips": len(train_set.examples),
        "steps": out.global_step,
        "final_loss": next((h["loss"] for h in reversed(log_history) if "loss" in h), None),
    }
    plot = _plot(log_history, before, after, run_dir / "training.png", recipe.name)
    record.path = None
    filed = registry.add(
        adapter_dir,
        record,
        extra_files={
            "recipe.yaml": f"# lora-whisper train --recipe recipe.yaml\n{recipe.to_yaml()}",
            "training.png": plot.read_bytes(),
        },
    )
    return TrainResult(filed, before, after, seconds, out.global_step, run_dir, train_set.rejected + test_set.rejected)


def _cached_before(base: Base, examples: list[Example], recipe: Recipe, data_fp: str) -> Score:
    """The base's held-out score, remembered per (base, data, eval settings): a resumed run needn't redo it."""
    key = f"{base.identity.fingerprint}|{base.quantize}|{data_fp}|{recipe.eval}"
    if known := cache_get("before_scores.json", key):
        return Score(**known)
    score = evaluate_adapter(base, examples, recipe, None)
    cache_put("before_scores.json", key, score.__dict__)
    return score


def _last_checkpoint(run_dir: Path) -> Path | None:
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


def _bar(progress: bool, desc: str, total: int | None = None):
    if not progress or _rank() != 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="clip")
