"""`lora-whisper batch`: an archive transcribed on a Ray cluster, resumable."""
