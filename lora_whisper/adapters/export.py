"""Export an adapter merged into a full model: transformers format, and CTranslate2 for faster-whisper.

``merge_adapter`` and ``convert_ct2`` are also the two steps of compiling an adapter for the CTranslate2 runtime
(``compile.py``).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from .registry import AdapterRecord, Registry, RegistryError, check_base

logger = logging.getLogger("lora_whisper")

CT2_COPY_FILES = ("tokenizer.json", "preprocessor_config.json")
"""Files faster-whisper reads beside ``model.bin`` (without tokenizer.json it would fetch one from the Hub)."""


def merge_adapter(record: AdapterRecord, base, out: str | Path) -> Path:
    """Merge ``record`` into a float32 copy of ``base`` (a loaded float32 ``Base``) and save it with the processor.

    Merging happens in float32, never into 8-bit weights (which loses accuracy).
    """
    from peft import PeftModel

    check_base(record, base.identity.to_dict())
    out = Path(out)
    model = PeftModel.from_pretrained(base.model, str(record.path)).merge_and_unload()
    model.save_pretrained(out)
    base.processor.save_pretrained(out)
    meta = {"adapter": record.ref, "base": base.identity.hub_id, "fingerprint": base.identity.fingerprint}
    (out / "lora_whisper_export.json").write_text(json.dumps(meta) + "\n")
    return out


def convert_ct2(src: str | Path, out: str | Path, quantization: str = "int8", tokenizer_from: Path | None = None):
    """Convert a transformers Whisper folder to CTranslate2 with CTranslate2's own converter.

    ``tokenizer_from``: a folder to take ``tokenizer.json`` from when ``src`` has none.
    """
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError as e:
        raise RegistryError("CTranslate2 conversion needs ctranslate2: pip install ctranslate2") from e
    src, out = Path(src), Path(out)
    copy = [f for f in CT2_COPY_FILES if (src / f).is_file()]
    TransformersConverter(str(src), copy_files=copy).convert(str(out), quantization=quantization, force=True)
    if (
        not (out / "tokenizer.json").is_file()
        and tokenizer_from
        and (Path(tokenizer_from) / "tokenizer.json").is_file()
    ):
        shutil.copy2(Path(tokenizer_from) / "tokenizer.json", out / "tokenizer.json")
    return out


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

    faster-whisper has no adapter support, so a merged CTranslate2 model is how its users deploy an adapter;
    CTranslate2's own converter does it.
    """
    from ..base.loading import load_base

    rec = registry.get(ref)
    b = load_base(base, quantize="none", device=device)
    check_base(rec, b.identity.to_dict())
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise RegistryError(f"{out}: exists and is not empty")
    merge_adapter(rec, b, out)
    paths = [out]
    if ct2:
        paths.append(convert_ct2(out, out / "ct2", ct2_quantization))
    return paths
