"""A recipe's values checked, section by section: every problem collected (``validate``), none raised here.

``recipe.load_recipe`` raises them together (``RecipeError``)."""

from __future__ import annotations

import os
import re

from ..adapters.lora import TARGET_MODULES
from ..transcribe.segments import MAX_BEAM_SIZE, filed_beam_size

PRECISIONS = ("fp32", "fp16", "bf16")
WHISPER_LANGUAGES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg lt la mi "
    "ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so af oc ka be tg sd "
    "gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su yue"
).split()


def validate(r) -> list[str]:
    """Every problem with a recipe's values (empty when valid), section by section."""
    return _check_top(r) + _check_data(r) + _check_lora(r) + _check_train(r) + _check_calibration(r)


def _check_top(r) -> list[str]:
    """Problems with language, domain, base and output."""
    p = []
    if r.language not in WHISPER_LANGUAGES:
        p.append(f"language: {r.language!r} is not a Whisper language code (e.g. fr, de, es, en)")
    if r.domain is not None and (not isinstance(r.domain, str) or not r.domain.replace("-", "").isalnum()):
        p.append(f"domain: {r.domain!r} must be letters, digits or '-'")
    if r.base.quantize not in ("int8", "none"):
        p.append(f"base.quantize: {r.base.quantize!r} is not one of ['int8', 'none']")
    if r.output.name is not None:
        from ..adapters.registry import NAME_RE

        if not NAME_RE.match(str(r.output.name)) or ".." in str(r.output.name):
            p.append(f"output.name: {r.output.name!r} must be lower-case letters, digits, '.', '_' or '-'")
    return p


def _check_data(r) -> list[str]:
    """Problems in the ``data`` section."""
    p = []
    d = r.data
    if d.source not in ("synthetic", "manifest", "folder", "hub"):
        p.append(f"data.source: {d.source!r} is not one of ['synthetic', 'manifest', 'folder', 'hub']")
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
        p.append(f"data.validation: must be 0 or a positive integer, got {d.validation!r}")
    if not isinstance(d.timestamps, (int, float)) or not 0 <= d.timestamps <= 1:
        p.append(f"data.timestamps: must be a fraction in [0, 1], got {d.timestamps!r}")
    sp = d.speed_perturb
    if sp is not None:
        if not (
            isinstance(sp, (tuple, list))
            and len(sp) == 2
            and all(isinstance(x, (int, float)) for x in sp)
            and 0.5 <= sp[0] <= sp[1] <= 2.0
        ):
            p.append(f"data.speed_perturb: expected [low, high] factors within [0.5, 2.0], got {sp!r}")
        elif r.lora.scope == "decoder" and (not isinstance(d.speed_copies, int) or d.speed_copies < 1):
            p.append(
                "data.speed_copies: decoder-only speed perturbation adds copies: expected 1 or more, "
                f"got {d.speed_copies!r}"
            )
    if not isinstance(d.contrast, list) or not all(isinstance(x, str) for x in d.contrast):
        p.append(f"data.contrast: expected a list of manifest paths, got {d.contrast!r}")
    else:
        for v in d.contrast:
            if unset := _unset_vars(v):
                p.append(
                    f"data.contrast: environment variable {unset[0]} is not set; export it or pass --set data.contrast=[PATH]"
                )
    p += _check_filter("data.contrast_split", d.contrast_split, "data.contrast_languages", d.contrast_languages)
    if not isinstance(d.contrast_max, int) or d.contrast_max < 0:
        p.append(f"data.contrast_max: must be 0 or a positive integer, got {d.contrast_max!r}")
    if d.source == "hub" and not d.dataset:
        p.append("data.dataset: required for source hub")
    for k in ("speed", "pitch"):
        v = getattr(d, k)
        if not (isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, int) for x in v) and v[0] <= v[1]):
            p.append(f"data.{k}: expected [low, high] integers, got {v!r}")
    for k in ("max_train", "max_test", "max_test_out"):
        v = getattr(d, k)
        if v is not None and (not isinstance(v, int) or v < 1):
            p.append(f"data.{k}: must be a positive integer or null, got {v!r}")
    return p


def _check_lora(r) -> list[str]:
    """Problems in the ``lora`` section."""
    p = []
    lo = r.lora
    if lo.scope not in ("encoder+decoder", "decoder"):
        p.append(f"lora.scope: {lo.scope!r} is not one of ['encoder+decoder', 'decoder']")
    if not isinstance(lo.r, int) or lo.r < 1:
        p.append(f"lora.r: must be a positive integer, got {lo.r!r}")
    if not isinstance(lo.alpha, (int, float)) or lo.alpha <= 0:
        p.append(f"lora.alpha: must be positive, got {lo.alpha!r}")
    if not isinstance(lo.dropout, (int, float)) or not 0 <= lo.dropout < 1:
        p.append(f"lora.dropout: must be in [0, 1), got {lo.dropout!r}")
    if not lo.target_modules or not set(lo.target_modules) <= set(TARGET_MODULES):
        p.append(f"lora.target_modules: {lo.target_modules!r}; choose from {list(TARGET_MODULES)}")
    return p


def _check_train(r) -> list[str]:
    """Problems in the ``train`` section."""
    p = []
    t = r.train
    if not isinstance(t.lr, (int, float)) or t.lr <= 0:
        p.append(f"train.lr: must be positive, got {t.lr!r}")
    for k in ("batch_size", "grad_accum", "save_steps", "logging_steps", "save_total_limit"):
        v = getattr(t, k)
        if not isinstance(v, int) or v < 1:
            p.append(f"train.{k}: must be a positive integer, got {v!r}")
    if not isinstance(t.max_steps, int) or (t.max_steps < 1 and t.max_steps != -1):
        p.append(f"train.max_steps: must be -1 or a positive integer, got {t.max_steps!r}")
    if t.precision not in PRECISIONS:
        p.append(f"train.precision: {t.precision!r} is not one of {list(PRECISIONS)}")
    if not isinstance(t.validate_every, int) or t.validate_every < 0:
        p.append(f"train.validate_every: must be 0 or a positive integer, got {t.validate_every!r}")
    for k in ("mask_time_prob", "mask_feature_prob"):
        v = getattr(t, k)
        if not isinstance(v, (int, float)) or not 0 <= v < 1:
            p.append(f"train.{k}: must be in [0, 1), got {v!r}")
    if t.max_steps == -1 and (not isinstance(t.epochs, (int, float)) or t.epochs <= 0):
        p.append(f"train.epochs: must be positive, got {t.epochs!r}")
    b = r.eval.beam_size
    if b is not None and filed_beam_size(b) is None:
        p.append(f"eval.beam_size: must be an integer from 1 to {MAX_BEAM_SIZE} or null, got {b!r}")
    return p


def _check_calibration(r) -> list[str]:
    """Problems in the ``calibration`` section."""
    p = []
    c = r.calibration
    if not isinstance(c.negatives, list) or not all(isinstance(x, str) and x for x in c.negatives):
        p.append(f"calibration.negatives: expected a list of paths, got {c.negatives!r}")
    if not isinstance(c.max_per_source, int) or c.max_per_source < 1:
        p.append(f"calibration.max_per_source: must be a positive integer, got {c.max_per_source!r}")
    if not isinstance(c.margin, (int, float)) or c.margin < 1:
        p.append(f"calibration.margin: must be 1 or more, got {c.margin!r}")
    return p + _check_filter("calibration.split", c.split, "calibration.languages", c.languages)


def _check_filter(split_field: str, split, languages_field: str, languages) -> list[str]:
    """Problems in a (split, languages) row filter of other-language sources."""
    p = []
    if split is not None and not (
        (isinstance(split, str) and split)
        or (isinstance(split, list) and split and all(isinstance(x, str) and x for x in split))
    ):
        p.append(f"{split_field}: expected a split name, a list of them or null, got {split!r}")
    if languages is not None:
        if not isinstance(languages, list) or not languages or not all(isinstance(x, str) for x in languages):
            p.append(f"{languages_field}: expected a list of language codes or null, got {languages!r}")
        elif bad := [x for x in languages if x not in WHISPER_LANGUAGES]:
            p.append(f"{languages_field}: not Whisper language codes: {bad}")
    return p


def _unset_vars(text: str) -> list[str]:
    """Names of ``$VAR`` / ``${VAR}`` references in ``text`` that the environment does not define."""
    return [m.group(1) or m.group(2) for m in _VAR_RE.finditer(text) if (m.group(1) or m.group(2)) not in os.environ]


_VAR_RE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
