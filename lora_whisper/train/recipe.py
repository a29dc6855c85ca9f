"""Recipes: YAML files loaded into dataclasses, with ``key.sub=value`` overrides and one validation pass that
collects every problem before raising."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from ..adapters.lora import TARGET_MODULES
from ..adapters.schema import DOMAIN_RE, NAME_RE, WHISPER_LANGUAGES
from ..adapters.schema import show as _show
from ..transcribe.segments import MAX_BEAM_SIZE, filed_beam_size

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
"""The project's recipes/ folder (an editable install finds it beside the package)."""
PRECISIONS = ("fp32", "fp16", "bf16")


class RecipeError(ValueError):
    """Every problem found in a recipe, one per line."""

    def __init__(self, problems: list[str], source: str = "recipe"):
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass
class BaseConfig:
    """The frozen base."""

    model: str = "offline"
    """'offline' (packaged whisper-base), a local folder, or a Hub id."""
    quantize: str = "int8"
    """'int8' (bitsandbytes) or 'none'."""


@dataclass
class DataConfig:
    """Where the training and held-out data come from."""

    source: str = "synthetic"
    """synthetic | manifest | folder | hub."""
    corpus: str | None = None
    """synthetic: shipped corpus name (fr-medical) or a .txt path; lines after '# test' are held out."""
    train: str | None = None
    """manifest/folder: training manifest (.jsonl/.csv) or audiofolder."""
    test: str | None = None
    """manifest/folder: held-out manifest or audiofolder."""
    dataset: str | None = None
    """hub: data set id (mozilla-foundation/common_voice_17_0, google/fleurs)."""
    config: str | None = None
    """hub: data set config (often the language)."""
    train_split: str = "train"
    """hub: training split."""
    test_split: str = "test"
    """hub: held-out split."""
    audio_column: str = "audio"
    """Column holding audio (manifest: a path)."""
    text_column: str = "text"
    """Column holding the transcript."""
    max_train: int | None = 300
    """Use at most this many training clips (None: all); manifests and the Hub draw them at random (seeded) from
    what the validation speakers leave, so runs with different caps are validated on the same clips."""
    max_test: int | None = 60
    """Use at most this many held-out rows."""
    train_voices: int = 8
    """synthetic: number of distinct training voices (variant x speed x pitch)."""
    test_voices: int = 4
    """synthetic: held-out voices (other variants than training)."""
    speed: tuple[int, int] = (140, 180)
    """synthetic: words-per-minute range."""
    pitch: tuple[int, int] = (35, 65)
    """synthetic: pitch range (0-99)."""
    noise_snr_db: float | None = None
    """synthetic: add white noise at this SNR (None: clean)."""
    max_test_out: int | None = 60
    """synthetic: at most this many out-of-template held-out rows (corpus lines after '# test-out': templates and
    vocabulary never used in training); they give the adapter's headline figure."""
    split_column: str | None = None
    """manifest: column naming each row's split (train/dev/test); rows are then taken by ``train_split`` and
    ``test_split``, and ``train``/``test`` may name the same manifest."""
    speaker_column: str | None = None
    """manifest: column naming each row's speaker; the validation subset then holds whole speakers."""
    validation: int = 0
    """Clips held out of the TRAINING data (whole speakers when ``speaker_column`` is set, never the test split) to
    pick the best checkpoint by WER; 0 keeps the last checkpoint."""
    timestamps: float = 0.5
    """synthetic: fraction of training clips whose labels carry timestamp tokens (``<|0.00|> text <|end|>``, from the
    clip's real speech span) so adapters keep Whisper's timestamp prediction; data without times (manifests, the
    Hub) keeps ``<|notimestamps|>`` unless ``utterances`` says each clip is one utterance."""
    utterances: bool = False
    """manifest: each clip is one utterance (Common Voice, FLEURS): its speech span, found from the clip's energy as
    for synthetic speech, gives ``timestamps`` of the training clips timestamped labels, the segment format
    ``transcribe`` decodes in."""
    speed_perturb: tuple[float, float] | None = None
    """Speed perturbation (tempo and pitch, as Kaldi's), factors in [low, high] (e.g. [0.9, 1.1]); None: off.
    encoder+decoder: each training clip is resampled by a new factor every time it is used. decoder-only (cached
    encoder output): ``speed_copies`` resampled copies of every training clip are added, each at a factor drawn once
    (seeded), and their encoder output is cached like any clip's (Kaldi's offline 3-way perturbation, drawn)."""
    speed_copies: int = 1
    """decoder-only with ``speed_perturb``: resampled copies added per training clip (each costs one encoder pass
    and one more clip per epoch)."""
    contrast: list[str] = field(default_factory=list)
    """Manifests (with a ``lang`` column) of speech in *other* languages (real, or synthetic where no recordings are at
    hand: ``recipes/contrast-tts``), mixed into training with the language token as their only label: the adapter
    learns to say its language only on audio of it, so its own-language probability can route (``calibration``).
    Clips that are also calibration negatives are never trained on."""
    contrast_split: str | list[str] | None = "train"
    """Rows of this ``split`` column value (or of these values) only (None: every row): keep other languages' dev sets
    held out."""
    contrast_languages: list[str] | None = None
    """Only clips of these languages (None: every language but the adapter's): keep some languages out of training
    and calibration, to measure routing on languages the adapter never saw."""
    contrast_max: int = 400
    """At most this many contrast clips (drawn at random, seeded), over all sources."""


@dataclass
class LoraSettings:
    """The adapter."""

    scope: str = "encoder+decoder"
    """'encoder+decoder' or 'decoder' (decoder-only trains on cached encoder outputs)."""
    r: int = 32
    """Rank."""
    alpha: int = 64
    """Scaling numerator (lora_alpha)."""
    dropout: float = 0.05
    """Dropout on the LoRA path."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    """Linear layers to adapt: q_proj, k_proj, v_proj, out_proj, fc1, fc2."""


@dataclass
class TrainSettings:
    """The optimisation."""

    epochs: float = 1.0
    """Passes over the training data (ignored when max_steps > 0)."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: use epochs)."""
    batch_size: int = 8
    """Clips per device per step."""
    grad_accum: int = 1
    """Gradient accumulation steps."""
    lr: float = 1e-3
    """Peak learning rate (AdamW, linear decay)."""
    warmup_steps: int = 3
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    seed: int = 0
    """Seed for data order, dropout and LoRA init."""
    save_steps: int = 10
    """Checkpoint every N steps (resume with --resume)."""
    save_total_limit: int = 2
    """Keep this many checkpoints."""
    logging_steps: int = 1
    """Log loss every N steps (TensorBoard + plot)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, ~1.2x slower step."""
    precision: str = "fp32"
    """fp32 | fp16 | bf16: mixed precision of the trainable path (fp16/bf16 need a GPU; bf16 needs Ampere or
    newer). The frozen base keeps ``base.quantize``."""
    validate_every: int = 0
    """With ``data.validation``: validation WER every N optimizer steps (0: twice per epoch); the best checkpoint is
    the one filed."""
    spec_augment: bool = False
    """SpecAugment: encoder+decoder uses transformers' ``apply_spec_augment`` (time/feature masks on the log-mel);
    decoder-only masks spans of the cached encoder output in time."""
    mask_time_prob: float = 0.05
    """SpecAugment: fraction of time steps masked."""
    mask_feature_prob: float = 0.0
    """SpecAugment (encoder+decoder): fraction of mel channels masked."""


@dataclass
class EvalSettings:
    """WER/CER on the held-out split, before and after."""

    batch_size: int = 8
    """Clips per generate call."""
    max_new_tokens: int | None = None
    """Token limit per clip, as ``transcribe --max-new-tokens`` (None: transcribe's default). The validation WER
    that picks checkpoints uses 2 x the longest reference + 16 when this is None."""
    skip_before: bool = False
    """Skip the 'before' evaluation (its numbers are then missing from the record)."""
    drop_failed: bool = False
    """File the adapter with ``decoding.drop_failed``: ``transcribe`` (and the 'after' figure) then leaves out a
    window whose every fallback temperature failed, instead of keeping the last try (``--keep-failed`` overrides)."""
    beam_size: int | None = None
    """File the adapter with ``decoding.beam_size``: ``transcribe`` (and the 'after' figure) then decodes with beam
    search of this width where the adapter is routed (``--beam-size`` overrides). None: greedy, as the base."""


@dataclass
class CalibrationSettings:
    """How sure the adapter must be before it may take audio the base did not give its language (routing).

    At the end of training the base and the adapter score every validation clip (its own language) and clips of
    *other* languages (real, and synthetic where no recordings are at hand); ``routing.calibrate`` puts the routing
    threshold just above the highest score of any other-language clip, and it is stored in the registry record. No
    negatives: no threshold, and the adapter is only routed to when the base itself detects its language
    (synthetic-voice adapters keep the fixed gate)."""

    negatives: list[str] = field(default_factory=list)
    """Manifests (JSONL/CSV with audio, text and a ``lang`` column) or audiofolders of speech in other languages
    (real; synthetic ones only stand in for languages without recordings); rows of the adapter's own language are
    skipped."""
    max_per_source: int = 300
    """At most this many clips from each source, drawn at random (seeded) so that every language of a source with
    many is represented."""
    split: str | list[str] | None = None
    """Rows of this ``split`` column value (or of these values) only (None: every row): keep dev sets held out."""
    languages: list[str] | None = None
    """Only clips of these languages (None: every language but the adapter's)."""
    margin: float = 1.1
    """The threshold is the highest other-language score times this."""


@dataclass
class OutputSettings:
    """Where results go."""

    name: str | None = None
    """Registry name (default: language-domain, or language)."""
    run_dir: str | None = None
    """Checkpoints, TensorBoard logs and the adapter before filing (default: runs/NAME)."""


@dataclass
class Recipe:
    """Everything a training run needs; saved beside the adapter."""

    language: str | None = None
    """Whisper language code of the data: required (a recipe, ``--lang`` or ``--set language=..`` gives it)."""
    domain: str | None = None
    """Domain label (medical, legal, ...); None for a general language adapter."""
    base: BaseConfig = field(default_factory=BaseConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    output: OutputSettings = field(default_factory=OutputSettings)

    @property
    def name(self) -> str:
        return self.output.name or (f"{self.language}-{self.domain}" if self.domain else self.language)

    @property
    def run_dir(self) -> Path:
        return Path(self.output.run_dir or Path("runs") / self.name)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self) -> str:
        d = self.to_dict()
        for key in ("speed", "pitch", "speed_perturb"):
            if d["data"][key] is not None:
                d["data"][key] = list(d["data"][key])
        return yaml.safe_dump(d, sort_keys=False, allow_unicode=True)


def _build(cls, data: dict, where: str, problems: list[str]):
    """Dataclass from a dict, recursing into nested dataclasses; unknown keys are problems."""
    if not isinstance(data, dict):
        problems.append(f"{where or 'recipe'}: expected a mapping, got {type(data).__name__}")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            problems.append(f"{path}: unknown field; valid fields: {sorted(fields)}")
            continue
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value or {}, path, problems)
        elif isinstance(default, tuple) and isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def _parse_value(text: str):
    value = yaml.safe_load(text) if text != "" else None
    if isinstance(value, str):
        try:  # YAML 1.1 reads 1e-4 as a string; users mean the number
            return float(value)
        except ValueError:
            pass
    return value


def apply_overrides(data: dict, overrides: list[str], problems: list[str]) -> dict:
    """``train.lr=1e-4`` style overrides (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            problems.append(f"--set {item!r}: expected key.sub=value")
            continue
        key, value = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                problems.append(f"--set {key}: {p} is not a section")
                break
        else:
            node[parts[-1]] = _parse_value(value)
    return data


def validate(r: Recipe) -> list[str]:
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


def _check_top(r: Recipe) -> list[str]:
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


def _check_data(r: Recipe) -> list[str]:
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
        for v in d.contrast:
            if unset := _unset_vars(v):
                p.append(
                    f"data.contrast: environment variable {unset[0]} is not set; export it or pass --set data.contrast=[PATH]"
                )
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


def _check_lora(r: Recipe) -> list[str]:
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


def _check_train(r: Recipe) -> list[str]:
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


def _check_calibration(r: Recipe) -> list[str]:
    """Problems in the ``calibration`` section."""
    p = []
    c = r.calibration
    if not isinstance(c.negatives, list) or not all(isinstance(x, str) and x for x in c.negatives):
        p.append(f"calibration.negatives: expected a list of paths, got {_show(c.negatives)}")
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


def _unset_vars(text: str) -> list[str]:
    """Names of ``$VAR`` / ``${VAR}`` references in ``text`` that the environment does not define."""
    return [m.group(1) or m.group(2) for m in _VAR_RE.finditer(text) if (m.group(1) or m.group(2)) not in os.environ]


_VAR_RE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def expand_path(value: str | None) -> str | None:
    """A data path with ``$VAR``/``${VAR}`` and ``~`` expanded (recipes name user-specific paths through the
    environment)."""
    return os.path.expanduser(os.path.expandvars(value)) if value else value


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None, **fields) -> Recipe:
    """Load a recipe file (or defaults), apply ``fields`` (language=, domain=) and ``key=value`` overrides, validate.

    Raises:
        RecipeError: listing every problem found.
    """
    problems: list[str] = []
    data: dict = {}
    source = str(path) if path else "recipe"
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise RecipeError([f"cannot read: {e}"], source) from e
    for k, v in fields.items():
        if v is not None:
            data[k] = v
    data = apply_overrides(data, overrides or [], problems)
    recipe = _build(Recipe, data, "", problems)
    if not problems:
        problems += validate(recipe)
    if problems:
        raise RecipeError(problems, source)
    return recipe


def find_recipe(language: str, domain: str | None, search: list[Path] | None = None) -> Path | None:
    """``recipes/<language>-<domain>.yaml`` (project folder first, then the shipped ones), or None."""
    name = f"{language}-{domain}.yaml" if domain else f"{language}.yaml"
    for d in search or [Path("recipes"), RECIPES_DIR]:
        if (d / name).is_file():
            return d / name
    return None
