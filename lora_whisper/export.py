"""Export an adapter merged into a full model: transformers format, and CTranslate2 for faster-whisper."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .registry import Registry, RegistryError, check_base

logger = logging.getLogger("lora_whisper")


def export_merged(
    registry: Registry,
    ref: str,
    out: str | Path,
    base: str = "offline",
    ct2: bool = False,
    ct2_quantization: str = "int8",
    device: str | None = "cpu",
) -> list[Path]:
    """Merge adapter ``ref`` into a float32 copy of its base and save it (plus a CTranslate2 copy with ``ct2``).

    Merging happens in float32 (never into 8-bit weights, which loses accuracy). faster-whisper has no adapter
    support, so a merged CTranslate2 model is how its users deploy an adapter; CTranslate2's own converter does it.
    """
    from peft import PeftModel

    from .base import load_base

    rec = registry.get(ref)
    b = load_base(base, quantize="none", device=device)
    check_base(rec, b.identity.to_dict())
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise RegistryError(f"{out}: exists and is not empty")
    model = PeftModel.from_pretrained(b.model, str(rec.path)).merge_and_unload()
    model.save_pretrained(out)
    b.processor.save_pretrained(out)
    meta = {"adapter": rec.ref, "base": b.identity.hub_id, "fingerprint": b.identity.fingerprint}
    (out / "lora_whisper_export.json").write_text(json.dumps(meta) + "\n")
    paths = [out]
    if ct2:
        try:
            from ctranslate2.converters import TransformersConverter
        except ImportError as e:
            raise RegistryError("--ct2 needs ctranslate2: pip install 'lora-whisper[ct2]'") from e
        ct2_dir = out / "ct2"
        copy = [f for f in ("tokenizer.json", "preprocessor_config.json") if (out / f).is_file()]
        TransformersConverter(str(out), copy_files=copy).convert(
            str(ct2_dir), quantization=ct2_quantization, force=True
        )
        paths.append(ct2_dir)
    return paths
