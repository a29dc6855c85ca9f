"""`lora-whisper serve`: the OpenAI-compatible HTTP server and the scheduler that owns its Engine."""
