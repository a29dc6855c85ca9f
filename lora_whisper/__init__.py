"""lora-whisper: LoRA adapters for Whisper, per language and domain, on one frozen 8-bit base.

Packages, by what the user does:

- ``train``: recipes, data sources, synthetic speech, the trainer, evaluation and routing calibration;
- ``adapters``: the registry on disk, LoRA files, the Hub, merged exports, CTranslate2 compiles;
- ``transcribe``: audio, VAD, decoding, routing, the torch and CTranslate2 runtimes, the Engine, output writers;
- ``serve`` and ``batch``: the same Engine behind an OpenAI-compatible server, and over a Ray cluster;
- ``base``: the frozen base model (the packaged offline whisper-base, 8-bit loading), used by all of them.

The names below are imported on first use, so ``import lora_whisper`` stays light (a CTranslate2 run never
imports torch).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "Engine": "transcribe.engine",
    "TranscribeOptions": "transcribe.engine",
    "Transcription": "transcribe.engine",
    "RouteRequest": "transcribe.routing",
    "Route": "transcribe.routing",
    "route": "transcribe.routing",
    "Registry": "adapters.registry",
    "AdapterRecord": "adapters.registry",
    "load_base": "base.loading",
    "Recipe": "train.recipe",
    "load_recipe": "train.recipe",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'lora_whisper' has no attribute {name!r}")
