"""train(recipe) -> a registered adapter: frozen 8-bit base + LoRA, transformers' Trainer, WER before and after.

The Trainer brings checkpoints and resume, TensorBoard logs, the seed, gradient checkpointing and data parallelism
(torchrun / accelerate launch set the environment it reads); none of that is re-implemented here.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..adapters.registry import AdapterRecord, Registry
from ..base.loading import Base, cache_dir, cache_get, cache_put, load_base, pick_device
from ..scoring import Score
from .data import Example, Loaded, fingerprint, has_column, hold_out_speakers, load_folder, load_hub, load_manifest, validate
from .recipe import Recipe, expand_path

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
KIND_REAL = "real"
KIND_IN_TEMPLATE = "synthetic-in-template"
KIND_OUT_OF_TEMPLATE = "synthetic-out-of-template"
DATA_KINDS = (KIND_REAL, KIND_IN_TEMPLATE, KIND_OUT_OF_TEMPLATE)
"""What a held-out figure is measured on: real recordings, or synthetic speech of sentences from the training
templates (in-template) or from templates and vocabulary never used in training (out-of-template)."""


@dataclass
class HeldOut:
    """One held-out set: its examples and what they are."""

    kind: str
    """One of DATA_KINDS."""
    split: str
    """Which split: ``dev``, ``test``, ``test-out``, a manifest's file name."""
    data: Loaded


def load_splits(recipe: Recipe, progress=None) -> tuple[Loaded, list[HeldOut]]:
    """Training examples and the held-out sets (the first one gives the adapter's headline figure), not yet
    validated. Synthetic corpora give the out-of-template set first, then the in-template one."""
    d = recipe.data
    lang = recipe.language
    if d.source == "synthetic":
        from .synth import TEST_VARIANTS, TRAIN_VARIANTS, corpus_path, read_corpus_splits, synthesize, voices_for

        splits = read_corpus_splits(corpus_path(d.corpus))
        if not splits["test"] and not splits["test-out"]:
            raise ValueError(f"data.corpus {d.corpus}: no held-out sentences (add a '# test' or '# test-out' line)")
        seed = recipe.train.seed
        tv = voices_for(lang, TRAIN_VARIANTS, d.speed, d.pitch, d.train_voices, seed)
        ev = voices_for(lang, TEST_VARIANTS, d.speed, d.pitch, d.test_voices, seed + 1)
        cache = cache_dir() / "tts" / lang
        train = synthesize(
            splits["train"][: d.max_train], lang, tv, cache, d.noise_snr_db, seed, f"{d.corpus}:train", progress
        )
        held = []
        for split, kind, cap in (
            ("test-out", KIND_OUT_OF_TEMPLATE, d.max_test_out),
            ("test", KIND_IN_TEMPLATE, d.max_test),
        ):
            if splits[split] and cap != 0:
                ex = synthesize(
                    splits[split][:cap], lang, ev, cache, d.noise_snr_db, seed + 1, f"{d.corpus}:{split}", progress
                )
                held.append(HeldOut(kind, split, Loaded(ex)))
        return Loaded(train), held
    if d.source == "manifest":
        train_path, test_path = expand_path(d.train), expand_path(d.test)
        split_col = d.split_column
        train = load_manifest(
            train_path,
            d.audio_column,
            d.text_column,
            language=lang,
            split=d.train_split if split_col else None,
            split_column=split_col,
            speaker_column=d.speaker_column,
        )
        test = load_manifest(
            test_path,
            d.audio_column,
            d.text_column,
            language=lang,
            split=d.test_split if split_col else None,
            split_column=split_col,
            speaker_column=d.speaker_column,
        )
        if split_col and Path(train_path).resolve() == Path(test_path).resolve() and d.train_split == d.test_split:
            raise ValueError(f"data.test_split: {d.test_split!r} is also the training split")
        if d.utterances:  # one utterance per clip: its speech span is its segment (timestamped labels)
            for e in train.examples:
                e.timed = True
        return train, [HeldOut(KIND_REAL, d.test_split if split_col else Path(test_path).name, test)]
    if d.source == "folder":
        return load_folder(expand_path(d.train), language=lang, text_column=d.text_column), [
            HeldOut(KIND_REAL, Path(expand_path(d.test)).name, load_folder(expand_path(d.test), lang, d.text_column))
        ]
    return (
        load_hub(d.dataset, d.config, d.train_split, d.audio_column, d.text_column, lang, d.max_train),
        [
            HeldOut(
                KIND_REAL,
                d.test_split,
                load_hub(d.dataset, d.config, d.test_split, d.audio_column, d.text_column, lang, d.max_test),
            )
        ],
    )


def load_data(recipe: Recipe, progress=None) -> tuple[Loaded, Loaded]:
    """(train, headline held-out) examples for a recipe, not yet validated."""
    train, held = load_splits(recipe, progress)
    return train, held[0].data


def _sample(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    """``n`` of ``examples`` drawn at random (seeded), in their original order; all of them when ``n`` is None."""
    import random

    if not n or n >= len(examples):
        return examples
    keep = set(random.Random(seed).sample(range(len(examples)), n))
    return [e for i, e in enumerate(examples) if i in keep]


def _cap(loaded: Loaded, n: int | None) -> Loaded:
    return Loaded(loaded.examples[:n] if n else loaded.examples, loaded.rejected)


def _samples_digest(e: Example) -> str:
    import hashlib

    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(e.load(), dtype=np.float32).tobytes()).hexdigest()


def calibration_negatives(recipe: Recipe) -> list[Example]:
    """The recipe's calibration negatives (``calibration``), the same draw wherever they are asked for."""
    from .calibration import load_negatives

    c = recipe.calibration
    return load_negatives(c.negatives, recipe.language, c.max_per_source, c.split, c.languages, recipe.train.seed)


def load_contrast(recipe: Recipe) -> list[Example]:
    """The recipe's ``data.contrast`` clips: real speech of other languages, at most ``contrast_max`` drawn at random
    (seeded) in turn from each language, decoded and checked, none of them a calibration negative (compared by their samples): the threshold
    must be measured on clips the adapter never trained on."""
    import random

    d = recipe.data
    if not d.contrast or not d.contrast_max:
        return []
    rows: list[Example] = []
    for src in d.contrast:
        path = expand_path(src)
        by_split = d.contrast_split and has_column(path, "split")
        loaded = load_manifest(path, split=d.contrast_split, split_column="split" if by_split else None)
        rows += [
            e
            for e in loaded.examples
            if e.language
            and e.language != recipe.language
            and (d.contrast_languages is None or e.language in d.contrast_languages)
        ]
    random.Random(recipe.train.seed).shuffle(rows)
    # drawn round-robin over languages: the adapter must learn to refuse every language, not only the one with the
    # most rows (a rival language's 1,900 clips would otherwise crowd out the 100 of a close one)
    by_lang: dict[str, list[Example]] = {}
    for e in rows:
        by_lang.setdefault(e.language, []).append(e)
    rows = [e for group in itertools.zip_longest(*by_lang.values()) for e in group if e is not None]
    held = {_samples_digest(e) for e in calibration_negatives(recipe)}
    out: list[Example] = []
    for e in rows:
        if len(out) >= d.contrast_max:
            break
        ok = validate(Loaded([e])).examples
        if ok and _samples_digest(ok[0]) not in held:
            out.append(ok[0])
    return out


class _Collator:
    """Pads label ids with -100 and drops the leading <|startoftranscript|> (the model prepends it when shifting).

    With ``time_mask`` > 0 (decoder-only SpecAugment), spans of 10 cached encoder frames are zeroed so that about
    that fraction of each clip's frames is masked; ``seed`` makes the masks reproducible.
    """

    def __init__(self, sot: int, time_mask: float = 0.0, seed: int = 0):
        self.sot = sot
        self.time_mask = time_mask
        import random

        self.rng = random.Random(seed)

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
            hidden = torch.stack([torch.as_tensor(r["encoder_hidden"]) for r in rows]).float()
            if self.time_mask > 0:
                frames, span = hidden.shape[1], 10
                for row in hidden:
                    for _ in range(int(self.time_mask * frames / span)):
                        s0 = self.rng.randrange(0, max(1, frames - span))
                        row[s0 : s0 + span] = 0
            batch["encoder_outputs"] = (hidden,)
        else:
            batch["input_features"] = torch.stack([torch.as_tensor(r["input_features"]) for r in rows])
        return batch


def _encoder_cache(base: Base, examples: list[Example], batch_size: int, progress=None):
    """Frozen-encoder outputs for every clip, computed once per clip and base (float16 safetensors in the cache dir).

    Keyed per clip (its samples) rather than per data set, so runs over other subsets of the same clips (a learning
    curve, another validation split) reuse what was computed and only encode clips never seen.
    """

    import torch
    from safetensors.torch import load_file, save_file

    folder = cache_dir() / "encoder" / f"{base.identity.fingerprint}-{base.quantize}".replace(":", "")[:80]
    folder.mkdir(parents=True, exist_ok=True)

    def path_of(e: Example) -> Path:
        return folder / f"{_samples_digest(e)[:32]}.safetensors"

    paths = [path_of(e) for e in examples]
    todo = [i for i, p in enumerate(paths) if not p.is_file()]
    if progress and len(todo) < len(examples):
        progress(len(examples) - len(todo))
    engine = None
    for k in range(0, len(todo), batch_size):
        if engine is None:
            from ..transcribe.engine import Engine

            engine = Engine(base)
            engine.decoder.padding = "audio"  # training's features: transformers' (the cache holds only these)
        idx = todo[k : k + batch_size]
        hidden = engine.encode(engine.features([examples[i].audio for i in idx])).to("cpu", torch.float16)
        for i, h in zip(idx, hidden):
            tmp = paths[i].with_suffix(f".{os.getpid()}.tmp")
            save_file({"hidden": h.contiguous()}, str(tmp))
            os.replace(tmp, paths[i])  # atomic: a killed run leaves whole files only
        if progress:
            progress(len(idx))
    # filled in place: stacking a list of loaded tensors held the cache twice (18 GB peak for 3,718 clips: the kernel
    # killed a Persian run with speed copies on a 24 GB machine)
    if not paths:
        return torch.empty(0)
    first = load_file(str(paths[0]))["hidden"]
    out = torch.empty((len(paths), *first.shape), dtype=first.dtype)
    for j, p in enumerate(paths):
        out[j] = first if j == 0 else load_file(str(p))["hidden"]
    return out


def timestamp_token(tokenizer, seconds: float) -> int:
    """The id of Whisper's ``<|x.xx|>`` timestamp token nearest to ``seconds`` (20 ms grid, 0-30 s)."""
    t = min(max(round(seconds / 0.02) * 0.02, 0.0), 30.0)
    tid = tokenizer.convert_tokens_to_ids(f"<|{t:.2f}|>")
    if tid is None or tid == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no timestamp token <|{t:.2f}|>")
    return tid


def label_ids(tokenizer, example: Example, language: str, timestamped: bool) -> list[int]:
    """Whisper's training target for one clip.

    ``<|sot|><|lang|><|transcribe|><|notimestamps|> text<|eot|>``, or, when ``timestamped`` (the clip knows its speech
    span: synthetic speech), ``<|sot|><|lang|><|transcribe|><|start|> text<|end|><|eot|>`` with the span's times, the
    segment format Whisper's long-form decoding predicts. Mixing both keeps an adapter's timestamp prediction
    (training on ``<|notimestamps|>`` only can break it: transformers #30148).
    """
    if not timestamped:
        tokenizer.set_prefix_tokens(language=language, task="transcribe", predict_timestamps=False)
        return tokenizer(example.text).input_ids
    from .synth import speech_span

    start, end = speech_span(example.load())
    tokenizer.set_prefix_tokens(language=language, task="transcribe", predict_timestamps=True)
    prefix = tokenizer("", add_special_tokens=True).input_ids[:-1]  # sot, lang, task (no eot)
    text = tokenizer(" " + example.text.strip(), add_special_tokens=False).input_ids
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    tokenizer.set_prefix_tokens(language=language, task="transcribe", predict_timestamps=False)
    return prefix + [timestamp_token(tokenizer, start)] + text + [timestamp_token(tokenizer, end), eot]


def language_label(tokenizer, language: str) -> list[int]:
    """A contrast clip's target: ``<|sot|><|lang|>`` only (its language, nothing of its words)."""
    tokenizer.set_prefix_tokens(language=language, task="transcribe", predict_timestamps=False)
    return tokenizer("", add_special_tokens=True).input_ids[:2]


def timestamped_rows(examples: list[Example], fraction: float, seed: int) -> set[int]:
    """Indices of the examples that get timestamped labels: ``fraction`` of those that know their times, seeded."""
    import random

    timed = [i for i, e in enumerate(examples) if e.timed]
    k = round(fraction * len(timed))
    return set(random.Random(seed).sample(timed, k)) if k else set()


def _speed(audio, factor: float):
    """Speed perturbation (tempo and pitch, as Kaldi's): resample as if recorded at ``16 kHz x factor``."""
    import numpy as np
    import soxr

    if abs(factor - 1.0) < 1e-3:
        return audio
    return soxr.resample(audio, 16000 * factor, 16000).astype(np.float32)


def speed_copies(
    examples: list[Example], factors: tuple[float, float], copies: int, seed: int, progress: bool = False
) -> list[Example]:
    """``copies`` speed-perturbed copies of each example, each at a factor drawn once from ``factors`` (seeded).

    For decoder-only training, whose encoder output is cached per clip: a fixed copy is what can be cached (Kaldi's
    offline speed perturbation), where encoder+decoder training draws a new factor at every access (``_dataset``).
    The copies keep the text and speaker; their labels carry no timestamps (the span moved).
    """
    import random

    from tqdm import tqdm

    rng = random.Random(seed + 7919)
    out = []
    for e in tqdm(examples, desc="speed copies", unit="clip", disable=not progress):
        audio = e.load()
        for _ in range(copies):
            f = rng.uniform(*factors)
            out.append(Example(f"{e.id}@speed{f:.3f}", _speed(audio, f), e.text, e.language, e.speaker, timed=False))
    return out


def _dataset(
    base: Base,
    examples: list[Example],
    language: str,
    encoder_hidden=None,
    timestamped: set[int] | None = None,
    speed_perturb: tuple[float, float] | None = None,
    seed: int = 0,
    contrast: int = 0,
):
    """A ``datasets.Dataset`` whose rows become log-mel features (or cached encoder output) + label ids on access.

    Rows in ``timestamped`` get timestamped labels; with ``speed_perturb`` every access resamples the clip by a
    random factor in that range (timestamped rows excepted: their times would no longer hold). The last
    ``contrast`` examples are other languages' clips, labelled with their language token only (``language_label``).
    """
    import random

    import datasets

    tok = base.processor.tokenizer
    timestamped = timestamped or set()
    own = len(examples) - contrast
    labels = [label_ids(tok, e, language, i in timestamped) for i, e in enumerate(examples[:own])]
    labels += [language_label(tok, e.language) for e in examples[own:]]
    ds = datasets.Dataset.from_dict({"idx": list(range(len(examples))), "labels": labels})
    fe = base.processor.feature_extractor
    audio = [e.audio for e in examples]
    rng = random.Random(seed)

    def transform(batch):
        out = {"labels": batch["labels"]}
        if encoder_hidden is not None:
            out["encoder_hidden"] = [encoder_hidden[i] for i in batch["idx"]]
        else:
            clips = [audio[i] for i in batch["idx"]]
            if speed_perturb:
                clips = [
                    c if i in timestamped else _speed(c, rng.uniform(*speed_perturb))
                    for i, c in zip(batch["idx"], clips)
                ]
            out["input_features"] = list(fe(clips, sampling_rate=16000, return_tensors="pt").input_features)
        return out

    return ds.with_transform(transform)


# ---- evaluation ------------------------------------------------------------------------------------------------
def _max_new_tokens(recipe: Recipe, base: Base, examples: list[Example]) -> int:
    if recipe.eval.max_new_tokens:
        return recipe.eval.max_new_tokens
    longest = max(len(base.processor.tokenizer(e.text, add_special_tokens=False).input_ids) for e in examples)
    return min(440, 2 * longest + 16)


def inference_engine(base: Base, model: str | None = None, runtime: str = "auto", adapter: AdapterRecord | None = None):
    """The engine ``lora-whisper transcribe --runtime RUNTIME`` builds on ``base``'s device: ``auto`` is the ct2
    runtime on CPU (the adapter compiled: merged in float32, converted to CTranslate2 int8) and torch on CUDA
    (8-bit), so a figure ``train`` reports is what users get.

    Args:
        base: the training base (its weights and device); the inference copy is loaded afresh.
        model: the recipe's ``base.model`` (``offline`` uses the packaged CTranslate2 model as it is).
        adapter: an adapter not yet in a registry, made resolvable by its reference.
    """
    from ..transcribe.engine import Engine
    from ..transcribe.runtime import resolve_runtime

    if resolve_runtime(runtime, base.device) == "ct2":
        from ..transcribe.runtime_ct2 import CT2Runtime, load_ct2_base

        engine = Engine(None, None, runtime=CT2Runtime(load_ct2_base(model or str(base.path), "auto", base.device)))
    else:
        ev = load_base(str(base.path), "auto", base.device)
        ev.identity = base.identity
        engine = Engine(ev)
    if adapter is not None:
        engine.pin(adapter)
    return engine


def evaluate_adapter(engine, examples: list[Example], recipe: Recipe, adapter: AdapterRecord | None, progress=False):
    """WER/CER on ``examples`` with the language forced, decoded exactly as ``lora-whisper transcribe`` decodes.

    Same engine (``inference_engine``), same options as ``transcribe --language L`` (temperature fallback,
    compression-ratio and log-prob checks, the default token limit): on a language the base cannot read, greedy
    decoding without fallback loops, and a figure taken that way flatters whichever model loops less.
    """
    from ..transcribe.engine import TranscribeOptions
    from .evaluation import evaluate

    opts = TranscribeOptions(
        language=recipe.language,
        adapter=adapter.ref if adapter else "none",
        batch_size=recipe.eval.batch_size,
        max_new_tokens=recipe.eval.max_new_tokens,  # transcribe's --max-new-tokens; None: its default
    )
    bar = _bar(progress, f"score {adapter.name if adapter else 'base'}", len(examples))
    try:
        return evaluate(engine, examples, opts, progress=bar.update if bar is not None else None).overall
    finally:
        if bar is not None:
            bar.close()


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
@dataclass
class _Prepared:
    """The data of one run, decoded and checked once: what trains, what picks the checkpoint, what scores."""

    train: list[Example]
    validation: list[Example]
    """Whole training speakers held back from training (``data.validation`` clips): they pick the checkpoint."""
    contrast: list[Example]
    """Other languages' clips, trained on their language token only (``data.contrast``)."""
    held: list[HeldOut]
    rejected: list
    fingerprint: str


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

    from .recipe import RecipeError
    from .recipe import validate as recipe_problems

    # the whole recipe, before the run folder (an earlier run's checkpoints) is touched
    if problems := recipe_problems(recipe):
        raise RecipeError(problems, "recipe")
    set_seed(recipe.train.seed)
    run_dir = recipe.run_dir
    _prepare_run_dir(run_dir, resume)
    # placement first: under torchrun / accelerate each process loads the base on its own GPU
    device = device or (base.device if base is not None else pick_device(None))
    _check_precision(recipe.train.precision, device)
    base = base or load_base(recipe.base.model, recipe.base.quantize, device)
    data = _prepare_data(recipe, base, progress)
    befores = _befores(recipe, base, data.held, runtime, progress)
    peft_model, trainable = _lora_model(recipe, base)
    trainer, best, stamped = _trainer(recipe, base, peft_model, data, device, progress)
    out, seconds = _fit(trainer, run_dir, resume)
    if _rank() != 0:
        return TrainResult(None, befores[0], None, seconds, out.global_step, run_dir, data.rejected)
    if best is not None:
        best.restore()
    # save with safetensors; the trained model carries LoRA layers and k-bit preparation, so the saved files are
    # evaluated on a fresh inference engine, exactly as `lora-whisper transcribe --adapter` will use them
    adapter_dir = run_dir / "adapter"
    shutil.rmtree(adapter_dir, ignore_errors=True)
    _save(peft_model, adapter_dir, base)
    log_history = trainer.state.log_history
    del trainer, peft_model
    base.model = None
    record = _new_record(recipe, base, trainable, data.fingerprint, seconds, adapter_dir)
    engine = inference_engine(base, recipe.base.model, runtime, record)
    afters = [evaluate_adapter(engine, h.data.examples, recipe, record, progress) for h in data.held]
    for h, a in zip(data.held, afters):
        logger.info("after (%s %s): WER %.3f CER %.3f", h.kind, h.split, a.wer, a.cer)
    record.metrics = _metrics(data, befores, afters, best, out, log_history, len(stamped))
    record.inactive_reason = inactive_reason(befores[0], afters[0], data.held[0].kind, data.held[0].split)
    record.calibration = _calibrate(engine, record, recipe, data.validation or data.held[0].data.examples)
    del engine
    plot = _plot(log_history, befores[0], afters[0], run_dir / "training.png", recipe.name)
    filed = _file(registry, record, recipe, adapter_dir, plot)
    return TrainResult(filed, befores[0], afters[0], seconds, out.global_step, run_dir, data.rejected)


def _prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """A fresh run removes an earlier run's checkpoints and best weights (a warning says so); ``resume`` keeps them."""
    if run_dir.exists() and not resume and _rank() == 0:
        stale = sorted(run_dir.glob("checkpoint-*"))
        if stale:
            logger.warning("%s has checkpoints from an earlier run; starting over (use --resume to continue)", run_dir)
            for c in stale:
                shutil.rmtree(c, ignore_errors=True)
        # and its best-by-validation weights: a fresh run must not start from another run's best
        shutil.rmtree(run_dir / "best", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def _prepare_data(recipe: Recipe, base: Base, progress: bool) -> _Prepared:
    """Decode, check and drop bad rows once; hold out validation speakers; draw ``max_train``; add contrast clips."""
    bar = _bar(progress, "prepare data")
    train_raw, held_raw = load_splits(recipe, progress=bar.update if bar is not None else None)
    tok = base.processor.tokenizer
    limit = min(448, getattr(base.model.config, "max_target_positions", 448))
    train_all = validate(train_raw, tok, max_label_tokens=limit)
    held = [HeldOut(h.kind, h.split, validate(h.data, tok, max_label_tokens=limit)) for h in held_raw]
    if recipe.data.source != "synthetic":
        held = [HeldOut(h.kind, h.split, _cap(h.data, recipe.data.max_test)) for h in held]
    if bar is not None:
        bar.close()
    rejected = train_all.rejected + [r for h in held for r in h.data.rejected]
    if not train_all.examples or not held or not held[0].data.examples:
        raise ValueError(
            f"no usable {'training' if not train_all.examples else 'held-out'} rows ({len(rejected)} rejected)"
        )
    train_examples, val_examples = hold_out_speakers(train_all.examples, recipe.data.validation, recipe.train.seed)
    # max_train draws from what validation left, at random (seeded): the validation speakers stay the same whatever
    # the cap, so runs with 250, 500, 1,000 clips are scored on the same clips (a learning curve)
    train_examples = _sample(train_examples, recipe.data.max_train, recipe.train.seed)
    if recipe.lora.scope == "decoder" and recipe.data.speed_perturb:
        train_examples = train_examples + speed_copies(
            train_examples, recipe.data.speed_perturb, recipe.data.speed_copies, recipe.train.seed, progress
        )
    contrast = load_contrast(recipe)
    data_fp = fingerprint(train_all.examples + contrast + [e for h in held for e in h.data.examples])
    logger.info(
        "data: %d train (+%d other languages) / %d validation (train speakers) / %s held-out clips (%s)",
        len(train_examples),
        len(contrast),
        len(val_examples),
        " + ".join(f"{len(h.data.examples)} {h.kind} {h.split}" for h in held),
        data_fp,
    )
    return _Prepared(train_examples, val_examples, contrast, held, rejected, data_fp)


def _befores(recipe: Recipe, base: Base, held: list[HeldOut], runtime: str, progress: bool) -> list[Score | None]:
    """The base's WER/CER on each held-out set, decoded as ``transcribe`` decodes (cached per data and runtime)."""
    if recipe.eval.skip_before or _rank() != 0:
        return [None] * len(held)
    ev = inference_engine(base, recipe.base.model, runtime)
    befores = [_cached_before(ev, base, h.data.examples, recipe, fingerprint(h.data.examples), progress) for h in held]
    for h, b in zip(held, befores):
        logger.info("before (%s %s): WER %.3f CER %.3f", h.kind, h.split, b.wer, b.cer)
    return befores


def _lora_model(recipe: Recipe, base: Base):
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


def _trainer(recipe: Recipe, base: Base, peft_model, data: _Prepared, device: str, progress: bool):
    """transformers' Trainer over the training (+ contrast) clips, with the best-by-validation callback.

    Decoder-only LoRA trains on the frozen encoder's cached output (``_encoder_cache``): the encoder pass is paid
    once per clip. Returns (trainer, best-checkpoint keeper or None, indices of timestamped rows)."""
    from transformers import Trainer

    encoder_hidden = val_hidden = None
    if recipe.lora.scope == "decoder":
        clips = data.train + data.contrast + data.validation
        bar = _bar(progress, "encoder cache", len(clips))
        hidden = _encoder_cache(base, clips, recipe.eval.batch_size, bar.update if bar is not None else None)
        n = len(data.train) + len(data.contrast)
        encoder_hidden, val_hidden = hidden[:n], hidden[n:]
        if bar is not None:
            bar.close()
    stamped = timestamped_rows(data.train, recipe.data.timestamps, recipe.train.seed)
    train_ds = _dataset(
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
        args=_training_args(recipe, recipe.run_dir, device, progress),
        train_dataset=train_ds,
        data_collator=_Collator(sot, time_mask),
    )
    best = None
    if data.validation:
        steps_per_epoch = max(1, -(-len(train_ds) // (recipe.train.batch_size * recipe.train.grad_accum)))
        every = recipe.train.validate_every or max(1, steps_per_epoch // 2)
        best = _BestCheckpoint(base, peft_model, data.validation, val_hidden, recipe, recipe.run_dir, every)
        trainer.add_callback(best.callback())
    return trainer, best, stamped


def _training_args(recipe: Recipe, run_dir: Path, device: str, progress: bool):
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


def _fit(trainer, run_dir: Path, resume: bool):
    """Train, from the last whole checkpoint when resuming; returns (train output, seconds over all attempts)."""
    last = _last_checkpoint(run_dir) if resume else None
    if resume and last is None:
        logger.warning("--resume: no checkpoint in %s; starting from step 0", run_dir)
    elif last:
        logger.info("resuming from %s", last)
    t0, previous = time.perf_counter(), _previous_seconds(last)
    trainer.add_callback(_seconds_callback(t0, previous))
    out = trainer.train(resume_from_checkpoint=str(last) if last else None)
    return out, time.perf_counter() - t0 + previous


def _save(peft_model, adapter_dir: Path, base: Base) -> None:
    from ..adapters.lora import save_adapter

    save_adapter(peft_model, adapter_dir, base.identity.hub_id)


def _new_record(
    recipe: Recipe, base: Base, trainable: int, data_fp: str, seconds: float, adapter_dir: Path
) -> AdapterRecord:
    """The registry record of the trained adapter, before scoring (version 0: the registry numbers it)."""
    return AdapterRecord(
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
        decoding=_filed_decoding(recipe.eval),
        path=adapter_dir,
    )


def _filed_decoding(settings) -> dict | None:
    """The record's ``decoding``: what the recipe's eval section says ``transcribe`` should decode this adapter with."""
    out = {"drop_failed": True} if settings.drop_failed else {}
    if settings.beam_size is not None:
        out["beam_size"] = settings.beam_size
    return out or None


def _metrics(data: _Prepared, befores, afters, best, out, log_history: list[dict], timestamped: int) -> dict:
    """The record's ``metrics``: the headline before/after, every held-out set, and how training went."""
    held = data.held
    before, after = befores[0], afters[0]
    return {
        "before": before.to_dict() if before else None,
        "after": after.to_dict(),
        "kind": held[0].kind,
        "split": held[0].split,
        "held_out": len(held[0].data.examples),
        "evaluations": [
            {
                "kind": h.kind,
                "split": h.split,
                "n": len(h.data.examples),
                "before": b.to_dict() if b else None,
                "after": a.to_dict(),
            }
            for h, b, a in zip(held, befores, afters)
        ],
        "train_clips": len(data.train),
        "contrast_clips": len(data.contrast),
        "train_kind": KIND_REAL if data.held[0].kind == KIND_REAL else "synthetic",
        "timestamped_clips": timestamped,
        "validation": best.summary() if best is not None else None,
        "steps": out.global_step,
        "final_loss": next((h["loss"] for h in reversed(log_history) if "loss" in h), None),
    }


def _file(registry: Registry, record: AdapterRecord, recipe: Recipe, adapter_dir: Path, plot: Path) -> AdapterRecord:
    """File the adapter with its recipe and plot. A version held back as not better than the base does not displace
    an active version that is routable (a warning says which stays active)."""
    record.path = None
    current = next((r for r in registry.list() if r.name == record.name and r.active), None)
    activate = record.inactive_reason is None or current is None or current.inactive_reason is not None
    filed = registry.add(
        adapter_dir,
        record,
        activate=activate,
        extra_files={
            "recipe.yaml": f"# lora-whisper train --recipe recipe.yaml\n{recipe.to_yaml()}",
            "training.png": plot.read_bytes(),
        },
    )
    if record.inactive_reason:
        logger.warning(
            "%s filed INACTIVE: %s; routing will not pick it (force it with --adapter %s)%s",
            filed.ref,
            record.inactive_reason,
            filed.ref,
            "" if activate else f"; {current.ref} stays the active version",
        )
    return filed


def _calibrate(engine, record: AdapterRecord, recipe: Recipe, own: list[Example]):
    """The adapter's routing threshold (``routing.calibrate``) from its own clips (validation, else the held-out
    set: the threshold is set by the other languages only, the own clips say how many it lets through) and the
    recipe's real clips of other languages; None when the recipe names none."""
    from ..transcribe.routing import calibrate, trained_on_synthetic
    from .calibration import measure

    c = recipe.calibration
    if not c.negatives:
        return None
    negatives = calibration_negatives(recipe)
    if not negatives:
        logger.warning("calibration: no clips of other languages in %s; the adapter stays uncalibrated", c.negatives)
        return None
    pos = measure(engine.runtime, record.ref, own, recipe.language)
    neg = measure(engine.runtime, record.ref, negatives, recipe.language)
    cal = calibrate(pos, neg, recipe.language, c.margin, synthetic=trained_on_synthetic(record))
    cal["languages"] = sorted({e.language for e in negatives})
    logger.info(
        "calibration: threshold %.4f accepts %d/%d of its own clips and %d/%d clips of %s",
        cal["threshold"],
        cal["own"]["accepted"],
        cal["own"]["n"],
        cal["other"]["accepted"],
        cal["other"]["n"],
        ",".join(cal["languages"]),
    )
    return cal


def inactive_reason(before: Score | None, after: Score, kind: str, split: str) -> str | None:
    """Why an adapter must not be routed to: not better than the base on its held-out set (None: it may be)."""
    if before is None:
        return None
    if after.wer >= before.wer:
        return f"not better than the base on {kind} {split}: WER {after.wer:.3f} vs base {before.wer:.3f}"
    return None


def _check_precision(precision: str, device: str) -> None:
    if precision != "fp32" and not str(device).startswith("cuda"):
        raise ValueError(
            f"train.precision {precision} needs a GPU (device is {device}); use train.precision=fp32 on CPU"
        )


class _BestCheckpoint:
    """Validation WER (clips of training speakers held out of training, never the test split) every ``every``
    steps; the LoRA weights of the best step are kept (in memory and in ``run_dir/best``) and restored at the end."""

    def __init__(self, base, peft_model, examples, hidden, recipe: Recipe, run_dir: Path, every: int):
        self.base, self.model, self.examples, self.hidden = base, peft_model, examples, hidden
        self.recipe, self.dir, self.every = recipe, run_dir / "best", every
        self.history: list[dict] = []
        self.best: tuple[float, int, dict] | None = None
        self.max_new_tokens = _max_new_tokens(recipe, base, examples)
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


def _cached_before(engine, base: Base, examples: list[Example], recipe: Recipe, data_fp: str, progress=False) -> Score:
    """The base's held-out score, remembered per (base, runtime, data, eval settings): a resumed run, or another run
    on the same held-out clips, needn't redo it."""
    key = f"{base.identity.fingerprint}|{engine.runtime.kind}|{data_fp}|{recipe.eval}|transcribe"
    if known := cache_get("before_scores.json", key):
        return Score(**known)
    score = evaluate_adapter(engine, examples, recipe, None, progress)
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
