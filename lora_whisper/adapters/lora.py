"""LoRA on Whisper with peft: which modules, and how an adapter is saved so it loads on the Hub base."""

from __future__ import annotations

import json
from pathlib import Path

SCOPES = ("encoder+decoder", "decoder")
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
"""Whisper's attention and FFN linears that LoRA may target."""


def target_regex(scope: str, modules: list[str]) -> str:
    """A peft ``target_modules`` regex (full match) for the attention/FFN linears of the chosen stacks."""
    if scope not in SCOPES:
        raise ValueError(f"lora scope {scope!r} is not one of {list(SCOPES)}")
    stacks = "(encoder|decoder)" if scope == "encoder+decoder" else "decoder"
    unknown = set(modules) - set(TARGET_MODULES)
    if unknown or not modules:
        raise ValueError(
            f"lora target modules {sorted(unknown) or modules} unknown; choose from {list(TARGET_MODULES)}"
        )
    attn = sorted(m for m in set(modules) if m.endswith("_proj"))
    ffn = sorted(m for m in set(modules) if m in ("fc1", "fc2"))
    alts = ([rf"(self_attn|encoder_attn)\.({'|'.join(attn)})"] if attn else []) + (
        [f"({'|'.join(ffn)})"] if ffn else []
    )
    return rf"model\.{stacks}\.layers\.\d+\.({'|'.join(alts)})"


def lora_config(
    scope: str = "encoder+decoder",
    r: int = 32,
    alpha: int = 64,
    dropout: float = 0.05,
    modules: tuple[str, ...] = ("q_proj", "v_proj"),
):
    from peft import LoraConfig

    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_regex(scope, list(modules)), bias="none"
    )


def save_adapter(peft_model, out: str | Path, base_hub_id: str, adapter_name: str = "default") -> Path:
    """Save with safetensors and point ``base_model_name_or_path`` at the base's Hub id, never a local path.

    A local cache path there breaks loading from the Hub for everyone else (peft issue 2001).
    """
    out = Path(out)
    peft_model.save_pretrained(str(out), safe_serialization=True, selected_adapters=[adapter_name])
    src = out if adapter_name == "default" else out / adapter_name
    if src != out:  # peft writes non-default adapters to a sub-folder
        for f in src.iterdir():
            f.replace(out / f.name)
        src.rmdir()
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base_hub_id
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return out
