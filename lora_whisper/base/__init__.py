"""The frozen base: the packaged offline whisper-base (CTranslate2 weights read into transformers), 8-bit."""
