"""`lora-whisper serve`: an OpenAI-compatible speech-to-text server (issue 10; being written)."""

from __future__ import annotations

import click


@click.command()
@click.pass_context
def serve(ctx):
    """OpenAI-compatible /v1/audio/transcriptions server with model=auto routing."""
    raise click.ClickException("serve is not available in this version")
