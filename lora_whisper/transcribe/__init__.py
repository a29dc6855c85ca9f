"""Transcription: audio in, routed segments out (audio, VAD, decoding, routing, runtimes, engine, outputs)."""
