"""A recipe's values checked, section by section: every problem collected (``validate``), none raised here.

``recipe.load_recipe`` raises them together (``RecipeError``). Every value is checked whole before any run folder is
touched: types, finite numbers, ranges, names that stay inside the registry (``adapters.schema``)."""

from __future__ import annotations

import dataclasses
import math
import os
import re

from ..adapters.lora import TARGET_MODULES
from ..adapters.schema import DOMAIN_RE, NAME_RE, WHISPER_LANGUAGES
from ..adapters.schema import show as _show
from ..transcribe.segments import MAX_BEAM_SIZE, filed_beam_size

PRECISIONS = ("fp32", "fp16", "bf16")
__all__ = ["PRECISIONS", "WHISPER_LANGUAGES", "validate"]


def validate(r) -> list[str]:
    """Every problem with a recipe's values (empty when valid), section by section."""
    p = _check_top(r) + _check_data(r) + _check_lora(r) + _check_train(r) + _check_calibration(r)
    named = {x.split(":")[0] for x in p}
    return p + [x for x in _check_values(r, "", set()) if x.split(":")[0].split("[")[0] not in named]


def _check_values(value, where: str, seen: set) -> list[str]:
    """Every NaN or infinite number anywhere in the recipe (``lr: .nan`` passes ``lr <= 0``) and every text field
    holding something else than text, by field. Each object is visited once: YAML aliases share them, and a
    'billion laughs' file would otherwise be walked (or copied by ``asdict``) a billion times."""
    if id(value) in seen:
        return []
    if dataclasses.is_dataclass(value):
        seen.add(id(value))
        out = []
        for f in dataclasses.fields(value):
            v, path = getattr(value, f.name), f"{where}.{f.name}" if where else f.name
            if f.type in ("str", "str | None") and not (isinstance(v, str) or (v is None and "None" in f.type)):
                out.append(f"{path}: expected text, got {type(v).__name__}")
            else:
                out += _check_values(v, path, seen)
        return out
    if isinstance(value, (list, tuple, dict)):
        seen.add(id(value))
        items = value.items() if isinstance(value, dict) else enumerate(value)
        return [p for k, v in items for p in _check_values(v, f"{where}[{_show(k)}]", seen)]
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{where}: must be a finite number, got {_show(value)}"]
    return []


def _num(v, low: float | None = None, high: float | None = None, low_open: bool = False) -> bool:
    """A finite number (not a bool) within [low, high] (``low_open``: above low)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return False
    return (low is None or (v > low if low_open else v >= low)) and (high is None or v <= high)


def _int(v, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _check_top(r) -> list[str]:
    """Problems with language, domain, base and output."""
    p = []
    if r.language is None:
        p.append("language: required: the Whisper language code of the data (e.g. fr, de, es, en)")
    elif r.language not in WHISPER_LANGUAGES:
        p.append(f"language: {_show(r.language)} is not a Whisper language code (e.g. fr, de, es, en)")
    if r.domain is not None and (not isinstance(r.domain, str) or not DOMAIN_RE.match(r.domain)):
        p.append(f"domain: {_show(r.domain)} must be letters, digits or '-'")
    if not isinstance(r.base.model, str) or not r.base.model:
        p.append(f"base.model: expected 'offline', a folder or a Hub id, got {_show(r.base.model)}")
    if r.base.quantize not in ("int8", "none"):
        p.append(f"base.quantize: {_show(r.base.quantize)} is not one of ['int8', 'none']")
    if r.output.name is not None:
        if not NAME_RE.match(str(r.output.name)) or ".." in str(r.output.name):
            p.append(f"output.name: {_show(r.output.name)} must be lower-case letters, digits, '.', '_' or '-'")
    return p


def _check_data(r) -> list[str]:
    """Problems in the ``data`` section."""
    p = []
    d = r.data
    if d.source not in ("synthetic", "manifest", "folder", "hub"):
        p.append(f"data.source: {_show(d.source)} is not one of ['synthetic', 'manifest', 'folder', 'hub']")
    if d.source == "synthetic" and not d.corpus:
        p.append("data.corpus: required for synthetic data (a shipped corpus name or a .txt file)")
    if d.source in ("manifest", "folder"):
        for k in ("train", "test"):
            v = getattr(d, k)
            if not v:
                p.append(f"data.{k}: required for source {d.source}")
            elif unset := _unset_vars(str(v)):
                p.append(f"data.{k}: environment variable {unset[0]} is not set; export it or pass --set data.{k}=PATH")
    if d.source != "manifest" and (d.split_column or d.speaker_column):
        p.append("data.split_column/speaker_column: only for source manifest")
    if not isinstance(d.validation, int) or d.validation < 0:
        p.append(f"data.validation: must be 0 or a positive integer, got {_show(d.validation)}")
    if not isinstance(d.timestamps, (int, float)) or not 0 <= d.timestamps <= 1:
        p.append(f"data.timestamps: must be a fraction in [0, 1], got {_show(d.timestamps)}")
    sp = d.speed_perturb
    if sp is not None:
        if not (
            isinstance(sp, (tuple, list))
            and len(sp) == 2
            and all(isinstance(x, (int, float)) for x in sp)
            and 0.5 <= sp[0] <= sp[1] <= 2.0
        ):
            p.append(f"data.speed_perturb: expected [low, high] factors within [0.5, 2.0], got {_show(sp)}")
        elif r.lora.scope == "decoder" and (not isinstance(d.speed_copies, int) or d.speed_copies < 1):
            p.append(
                "data.speed_copies: decoder-only speed perturbation adds copies: expected 1 or more, "
                f"got {_show(d.speed_copies)}"
            )
    if not isinstance(d.contrast, list) or not all(isinstance(x, str) for x in d.contrast):
        p.append(f"data.contrast: expected a list of manifest paths, got {_show(d.contrast)}")
    else:
        p += _unset_in("data.contrast", d.contrast)
    p += _check_filter("data.contrast_split", d.contrast_split, "data.contrast_languages", d.contrast_languages)
    if not isinstance(d.contrast_max, int) or d.contrast_max < 0:
        p.append(f"data.contrast_max: must be 0 or a positive integer, got {_show(d.contrast_max)}")
    if d.source == "hub" and not d.dataset:
        p.append("data.dataset: required for source hub")
    for k in ("speed", "pitch"):
        v = getattr(d, k)
        if not (isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, int) for x in v) and v[0] <= v[1]):
            p.append(f"data.{k}: expected [low, high] integers, got {_show(v)}")
    for k in ("max_train", "max_test", "max_test_out"):
        v = getattr(d, k)
        if v is not None and (not isinstance(v, int) or v < 1):
            p.append(f"data.{k}: must be a positive integer or null, got {_show(v)}")
    if d.noise_snr_db is not None and not _num(d.noise_snr_db, -20, 100):
        p.append(f"data.noise_snr_db: must be a number of dB in [-20, 100] or null, got {_show(d.noise_snr_db)}")
    return p


def _check_lora(r) -> list[str]:
    """Problems in the ``lora`` section."""
    p = []
    lo = r.lora
    if lo.scope not in ("encoder+decoder", "decoder"):
        p.append(f"lora.scope: {_show(lo.scope)} is not one of ['encoder+decoder', 'decoder']")
    if not _int(lo.r, 1) or lo.r > 4096:
        p.append(f"lora.r: must be an integer from 1 to 4096, got {_show(lo.r)}")
    if not _num(lo.alpha, 0, low_open=True):
        p.append(f"lora.alpha: must be positive, got {_show(lo.alpha)}")
    if not _num(lo.dropout, 0) or lo.dropout >= 1:
        p.append(f"lora.dropout: must be in [0, 1), got {_show(lo.dropout)}")
    targets = lo.target_modules
    if not isinstance(targets, list) or not targets or not all(isinstance(x, str) for x in targets):
        p.append(f"lora.target_modules: {_show(targets)}; give a list from {list(TARGET_MODULES)}")
    elif not set(targets) <= set(TARGET_MODULES):
        p.append(f"lora.target_modules: {_show(lo.target_modules)}; choose from {list(TARGET_MODULES)}")
    return p


def _check_train(r) -> list[str]:
    """Problems in the ``train`` section."""
    p = []
    t = r.train
    if not _num(t.lr, 0, 1, low_open=True):
        p.append(f"train.lr: must be a number in (0, 1], got {_show(t.lr)}")
    if not _int(t.warmup_steps, 0):
        p.append(f"train.warmup_steps: must be 0 or a positive integer, got {_show(t.warmup_steps)}")
    if not _num(t.weight_decay, 0, 1):
        p.append(f"train.weight_decay: must be a number in [0, 1], got {_show(t.weight_decay)}")
    if not _int(t.seed, 0):
        p.append(f"train.seed: must be 0 or a positive integer, got {_show(t.seed)}")
    for k in ("gradient_checkpointing", "spec_augment"):
        if not isinstance(getattr(t, k), bool):
            p.append(f"train.{k}: must be true or false, got {_show(getattr(t, k))}")
    e = r.eval
    if not _int(e.batch_size, 1):
        p.append(f"eval.batch_size: must be a positive integer, got {_show(e.batch_size)}")
    if e.max_new_tokens is not None and not (_int(e.max_new_tokens, 1) and e.max_new_tokens <= 440):
        p.append(f"eval.max_new_tokens: must be an integer from 1 to 440 or null, got {_show(e.max_new_tokens)}")
    for k in ("skip_before", "drop_failed"):
        if not isinstance(getattr(e, k), bool):
            p.append(f"eval.{k}: must be true or false, got {_show(getattr(e, k))}")
    for k in ("batch_size", "grad_accum", "save_steps", "logging_steps", "save_total_limit"):
        v = getattr(t, k)
        if not isinstance(v, int) or v < 1:
            p.append(f"train.{k}: must be a positive integer, got {_show(v)}")
    if not isinstance(t.max_steps, int) or (t.max_steps < 1 and t.max_steps != -1):
        p.append(f"train.max_steps: must be -1 or a positive integer, got {_show(t.max_steps)}")
    if t.precision not in PRECISIONS:
        p.append(f"train.precision: {_show(t.precision)} is not one of {list(PRECISIONS)}")
    if not isinstance(t.validate_every, int) or t.validate_every < 0:
        p.append(f"train.validate_every: must be 0 or a positive integer, got {_show(t.validate_every)}")
    for k in ("mask_time_prob", "mask_feature_prob"):
        v = getattr(t, k)
        if not isinstance(v, (int, float)) or not 0 <= v < 1:
            p.append(f"train.{k}: must be in [0, 1), got {_show(v)}")
    if t.max_steps == -1 and not _num(t.epochs, 0, 10000, low_open=True):
        p.append(f"train.epochs: must be a number in (0, 10000], got {_show(t.epochs)}")
    b = r.eval.beam_size
    if b is not None and filed_beam_size(b) is None:
        p.append(f"eval.beam_size: must be an integer from 1 to {MAX_BEAM_SIZE} or null, got {_show(b)}")
    return p


def _check_calibration(r) -> list[str]:
    """Problems in the ``calibration`` section."""
    p = []
    c = r.calibration
    if not isinstance(c.negatives, list) or not all(isinstance(x, str) and x for x in c.negatives):
        p.append(f"calibration.negatives: expected a list of paths, got {_show(c.negatives)}")
    else:
        p += _unset_in("calibration.negatives", c.negatives)
    if not isinstance(c.max_per_source, int) or c.max_per_source < 1:
        p.append(f"calibration.max_per_source: must be a positive integer, got {_show(c.max_per_source)}")
    if not _num(c.margin, 1):
        p.append(f"calibration.margin: must be 1 or more, got {_show(c.margin)}")
    return p + _check_filter("calibration.split", c.split, "calibration.languages", c.languages)


def _check_filter(split_field: str, split, languages_field: str, languages) -> list[str]:
    """Problems in a (split, languages) row filter of other-language sources."""
    p = []
    if split is not None and not (
        (isinstance(split, str) and split)
        or (isinstance(split, list) and split and all(isinstance(x, str) and x for x in split))
    ):
        p.append(f"{split_field}: expected a split name, a list of them or null, got {_show(split)}")
    if languages is not None:
        if not isinstance(languages, list) or not languages or not all(isinstance(x, str) for x in languages):
            p.append(f"{languages_field}: expected a list of language codes or null, got {_show(languages)}")
        elif bad := [x for x in languages if x not in WHISPER_LANGUAGES]:
            p.append(f"{languages_field}: not Whisper language codes: {bad}")
    return p


def _unset_in(field: str, paths: list[str]) -> list[str]:
    """One problem per path of a list field that names an environment variable the environment does not define."""
    return [
        f"{field}: environment variable {unset[0]} is not set; export it or pass --set {field}=[PATH]"
        for v in paths
        if (unset := _unset_vars(v))
    ]


def _unset_vars(text: str) -> list[str]:
    """Names of ``$VAR`` / ``${VAR}`` references in ``text`` that the environment does not define."""
    return [m.group(1) or m.group(2) for m in _VAR_RE.finditer(text) if (m.group(1) or m.group(2)) not in os.environ]


_VAR_RE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
