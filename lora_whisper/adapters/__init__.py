"""Keeping adapters: the registry on disk, LoRA files, the Hub, merged exports and CTranslate2 compiles."""
