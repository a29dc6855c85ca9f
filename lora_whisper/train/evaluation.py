"""Evaluate the base or an adapter on a data set: WER/CER per language and overall; the before/after figures of a
training run, decoded exactly as ``lora-whisper transcribe`` decodes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..adapters.registry import AdapterRecord
from ..base.loading import Base, cache_get, cache_put, load_base
from ..scoring import Score, score
from ..transcribe.engine import Engine, FileError, TranscribeOptions
from ..transcribe.runtime import resolve_runtime
from .data import Example, fingerprint
from .recipe import Recipe
from .steps import bar, rank

logger = logging.getLogger("lora_whisper")


@dataclass
class EvalReport:
    """Scores of one evaluation run."""

    adapter: str | None
    """What was evaluated: an adapter reference, ``auto`` routing, or None for the base."""
    overall: Score
    by_language: dict[str, Score] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    """Per utterance: id, language, reference, hypothesis, adapter."""
    errors: list[str] = field(default_factory=list)

    def to_dict(self, rows: bool = False) -> dict:
        d = {
            "adapter": self.adapter,
            "overall": self.overall.to_dict(),
            "by_language": {k: v.to_dict() for k, v in self.by_language.items()},
            "errors": self.errors,
        }
        if rows:
            d["rows"] = self.rows
        return d


def evaluate(engine: Engine, examples: list[Example], options: TranscribeOptions, progress=None) -> EvalReport:
    """Transcribe every example and score it.

    Rows that carry a language are decoded with it forced (unless ``options.language`` is set, which wins); rows
    without one go through detection and routing like ``transcribe``.
    """
    groups: dict[str | None, list[Example]] = {}
    for ex in examples:
        groups.setdefault(options.language or ex.language, []).append(ex)
    rows, errors = [], []
    for lang, exs in groups.items():
        opts = TranscribeOptions(**{**options.__dict__, "language": lang})
        inputs = [(ex.id, ex.audio) if isinstance(ex.audio, np.ndarray) else ex.audio for ex in exs]
        for ex, res in zip(exs, engine.transcribe(inputs, opts, progress=progress)):
            if isinstance(res, FileError):
                errors.append(res.error)
                continue
            rows.append(
                {
                    "id": ex.id,
                    "language": ex.language or res.language,
                    "reference": ex.text,
                    "hypothesis": res.text,
                    "adapter": res.adapter,
                }
            )
    by_lang = {}
    for lang in sorted({r["language"] or "?" for r in rows}):
        rs = [r for r in rows if (r["language"] or "?") == lang]
        by_lang[lang] = score([r["reference"] for r in rs], [r["hypothesis"] for r in rs], lang)
    if len(by_lang) == 1:
        overall = next(iter(by_lang.values()))
    else:
        # pooled over languages, each row normalized for its own language
        from ..scoring import normalize

        refs = [normalize(r["reference"], r["language"]) for r in rows]
        hyps = [normalize(r["hypothesis"], r["language"]) for r in rows]
        overall = score(refs, hyps, None)
    adapter = options.adapter if options.adapter not in ("none",) else None
    return EvalReport(adapter, overall, by_lang, rows, errors)


def max_new_tokens(recipe: Recipe, base: Base, examples: list[Example]) -> int:
    """The eval token limit: the recipe's, else twice the longest transcript's tokens (+16), at most 440."""
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


def lazy_engine(base: Base, model: str | None, runtime: str) -> Callable:
    """``inference_engine(base, model, runtime)``, built on the first call and kept: the base's scoring, the adapter's
    and the calibration share one engine (one model load), and a run whose base figures are cached builds it only
    for the adapter."""
    made: list = []

    def get():
        if not made:
            made.append(inference_engine(base, model, runtime))
        return made[0]

    return get


def evaluate_adapter(engine, examples: list[Example], recipe: Recipe, adapter: AdapterRecord | None, progress=False):
    """WER/CER on ``examples`` with the language forced, decoded exactly as ``lora-whisper transcribe`` decodes.

    Same engine (``inference_engine``), same options as ``transcribe --language L`` (temperature fallback,
    compression-ratio and log-prob checks, the default token limit): on a language the base cannot read, greedy
    decoding without fallback loops, and a figure taken that way flatters whichever model loops less.
    """
    opts = TranscribeOptions(
        language=recipe.language,
        adapter=adapter.ref if adapter else "none",
        batch_size=recipe.eval.batch_size,
        max_new_tokens=recipe.eval.max_new_tokens,  # transcribe's --max-new-tokens; None: its default
    )
    pbar = bar(progress, f"score {adapter.name if adapter else 'base'}", len(examples))
    try:
        return evaluate(engine, examples, opts, progress=pbar.update if pbar is not None else None).overall
    finally:
        if pbar is not None:
            pbar.close()


def score_base(
    recipe: Recipe, base: Base, held: list, engine: Callable, runtime: str, progress: bool
) -> list[Score | None]:
    """The base's WER/CER on each held-out set (``splits.HeldOut``), decoded as ``transcribe`` decodes (cached per data
    and runtime); ``engine()`` gives the inference engine, built on a cache miss only (``lazy_engine``)."""
    if recipe.eval.skip_before or rank() != 0:
        return [None] * len(held)
    kind = resolve_runtime(runtime, base.device)  # the runtime inference_engine builds
    befores = [
        _cached_before(engine, kind, base, h.data.examples, recipe, fingerprint(h.data.examples), progress)
        for h in held
    ]
    for h, b in zip(held, befores):
        logger.info("before (%s %s): WER %.3f CER %.3f", h.kind, h.split, b.wer, b.cer)
    return befores


def _cached_before(
    engine: Callable, kind: str, base: Base, examples: list[Example], recipe: Recipe, data_fp: str, progress=False
) -> Score:
    """The base's held-out score, remembered per (base, runtime, data, eval settings): a resumed run, or another run
    on the same held-out clips, needn't redo it."""
    key = f"{base.identity.fingerprint}|{kind}|{data_fp}|{recipe.eval}|transcribe"
    if known := cache_get("before_scores.json", key):
        return Score(**known)
    score = evaluate_adapter(engine(), examples, recipe, None, progress)
    cache_put("before_scores.json", key, score.__dict__)
    return score


def inactive_reason(before: Score | None, after: Score, kind: str, split: str) -> str | None:
    """Why an adapter must not be routed to: not better than the base on its held-out set (None: it may be)."""
    if before is None:
        return None
    if after.wer >= before.wer:
        return f"not better than the base on {kind} {split}: WER {after.wer:.3f} vs base {before.wer:.3f}"
    return None
