"""`lora-whisper batch`: transcription of an archive on Ray Data (issue 11; being written)."""

from __future__ import annotations

import click


@click.command()
@click.pass_context
def batch(ctx):
    """Transcribe an archive on a Ray cluster (local by default)."""
    raise click.ClickException("batch is not available in this version")
