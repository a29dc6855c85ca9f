"""lora-whisper: LoRA adapters for Whisper, per language and domain, on one frozen 8-bit base."""

__version__ = "0.1.0"

__all__ = ["__version__"]
