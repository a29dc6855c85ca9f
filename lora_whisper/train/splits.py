"""The data of a run: its splits (training, held-out sets, validation speakers), caps, contrast clips and calibration
negatives, decoded and checked once (``prepare_data``)."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

from ..base.loading import Base, cache_dir
from .cache import samples_digest, speed_copies
from .data import (
    Example,
    Loaded,
    fingerprint,
    has_column,
    hold_out_speakers,
    load_folder,
    load_hub,
    load_manifest,
    validate,
)
from .recipe import Recipe, expand_path
from .steps import bar

logger = logging.getLogger("lora_whisper")

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

        def rows(path, split):
            return load_manifest(
                path,
                d.audio_column,
                d.text_column,
                language=lang,
                split=split if split_col else None,
                split_column=split_col,
                speaker_column=d.speaker_column,
            )

        train, test = rows(train_path, d.train_split), rows(test_path, d.test_split)
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


def calibration_negatives(recipe: Recipe) -> list[Example]:
    """The recipe's calibration negatives (``calibration``), the same draw wherever they are asked for."""
    from .calibration import load_negatives

    c = recipe.calibration
    return load_negatives(c.negatives, recipe.language, c.max_per_source, c.split, c.languages, recipe.train.seed)


def load_contrast(recipe: Recipe, negatives: list[Example] | None = None) -> list[Example]:
    """The recipe's ``data.contrast`` clips: real speech of other languages, at most ``contrast_max`` drawn at random
    (seeded) in turn from each language, decoded and checked, none of them a calibration negative (compared by their
    samples): the threshold must be measured on clips the adapter never trained on. ``negatives``: the recipe's
    calibration negatives when the caller has them already (``calibration_negatives``), else they are drawn here."""
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
    if negatives is None:
        negatives = calibration_negatives(recipe)
    held = {samples_digest(e) for e in negatives}
    out: list[Example] = []
    for e in rows:
        if len(out) >= d.contrast_max:
            break
        ok = validate(Loaded([e])).examples
        if ok and samples_digest(ok[0]) not in held:
            out.append(ok[0])
    return out


@dataclass
@dataclass
class Prepared:
    """The data of one run, decoded and checked once: what trains, what picks the checkpoint, what scores."""

    train: list[Example]
    validation: list[Example]
    """Whole training speakers held back from training (``data.validation`` clips): they pick the checkpoint."""
    contrast: list[Example]
    """Other languages' clips, trained on their language token only (``data.contrast``)."""
    held: list[HeldOut]
    negatives: list[Example]
    """Real speech of other languages that calibrates the routing threshold (``calibration``), decoded once."""
    rejected: list
    fingerprint: str


def prepare_data(recipe: Recipe, base: Base, progress: bool) -> Prepared:
    """Decode, check and drop bad rows once; hold out validation speakers; draw ``max_train``; add contrast clips; draw
    the calibration negatives (once: the contrast clips must not hold one, and calibration measures them)."""
    pbar = bar(progress, "prepare data")
    train_raw, held_raw = load_splits(recipe, progress=pbar.update if pbar is not None else None)
    tok = base.processor.tokenizer
    limit = min(448, getattr(base.model.config, "max_target_positions", 448))
    train_all = validate(train_raw, tok, max_label_tokens=limit)
    held = [HeldOut(h.kind, h.split, validate(h.data, tok, max_label_tokens=limit)) for h in held_raw]
    if recipe.data.source != "synthetic":
        held = [HeldOut(h.kind, h.split, _cap(h.data, recipe.data.max_test)) for h in held]
    if pbar is not None:
        pbar.close()
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
    negatives = calibration_negatives(recipe)
    contrast = load_contrast(recipe, negatives)
    data_fp = fingerprint(train_all.examples + contrast + [e for h in held for e in h.data.examples])
    logger.info(
        "data: %d train (+%d other languages) / %d validation (train speakers) / %s held-out clips (%s)",
        len(train_examples),
        len(contrast),
        len(val_examples),
        " + ".join(f"{len(h.data.examples)} {h.kind} {h.split}" for h in held),
        data_fp,
    )
    return Prepared(train_examples, val_examples, contrast, held, negatives, rejected, data_fp)
