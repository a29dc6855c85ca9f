"""The ``lora-whisper serve`` command: its flags become :class:`~lora_whisper.serve.app.ServeOptions`, the base
is loaded with the global options (``--registry``, ``--base``, ``--quantize``...), then :func:`run_server` runs.
Light to import (no FastAPI, no torch): the CLI imports it at start-up."""

from __future__ import annotations

import os
from pathlib import Path

import click

from .app import ServeOptions, run_server
from .auth import API_KEY_ENV
from .parsing import parse_defaults


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port (0 = any free port, printed).")
@click.option(
    "--api-key-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help=f"File holding the API key (else ${API_KEY_ENV}); needed for the admin endpoints.",
)
@click.option(
    "--max-batch",
    default=8,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Most requests per engine call (1 = no micro-batching).",
)
@click.option(
    "--max-wait-ms",
    default=50,
    show_default=True,
    type=click.IntRange(0, 60000),
    help="Longest a queued request waits for others to batch with.",
)
@click.option(
    "--max-queue",
    default=64,
    show_default=True,
    type=click.IntRange(1, 100000),
    help="Queued requests beyond this get 503 + Retry-After.",
)
@click.option("--max-upload-mb", default=25.0, show_default=True, type=float, help="Largest upload (413 above).")
@click.option(
    "--drain-timeout",
    default=30.0,
    show_default=True,
    type=float,
    help="On SIGTERM, seconds to finish accepted requests.",
)
@click.option(
    "--import-root",
    multiple=True,
    type=click.Path(file_okay=False),
    help="Folder under which /v1/load_lora_adapter may import local adapter folders (repeatable).",
)
@click.option("--no-access-log", is_flag=True, help="No per-request log lines.")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="Default transcription option for every request, e.g. --set beam_size=5 --set vad=true "
    "(requests override model, language, prompt, temperature...).",
)
@click.pass_context
def serve(
    ctx,
    host,
    port,
    api_key_file,
    max_batch,
    max_wait_ms,
    max_queue,
    max_upload_mb,
    drain_timeout,
    import_root,
    no_access_log,
    settings,
):
    """OpenAI-compatible /v1/audio/transcriptions server with model=auto routing."""
    key = _api_key(api_key_file)
    try:
        defaults = parse_defaults(list(settings))
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    options = ServeOptions(
        defaults=defaults,
        host=host,
        port=port,
        api_key=key,
        max_batch=max_batch,
        max_wait=max_wait_ms / 1000,
        max_queue=max_queue,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        drain_timeout=drain_timeout,
        import_roots=list(import_root),
        access_log=not no_access_log,
    )
    engine = _load_engine(ctx.obj or {}, defaults)
    if not key:
        click.echo(
            f"lora-whisper serve: no API key ({API_KEY_ENV} / --api-key-file): open access, admin endpoints off",
            err=True,
        )
    run_server(engine, options, announce=lambda m: click.echo(m, err=True))


def _api_key(api_key_file: str | None) -> str | None:
    """The key of ``--api-key-file``, else of $LORA_WHISPER_API_KEY; None for none."""
    key = os.environ.get(API_KEY_ENV) or None
    if api_key_file:
        key = Path(api_key_file).read_text().strip() or None
        if key is None:
            raise click.ClickException(f"{api_key_file}: empty API key file")
    return key


def _load_engine(o: dict, defaults: dict):
    """The Engine the global options ask for; one line, not a traceback, when the base cannot be loaded."""
    from ..adapters.registry import Registry
    from ..transcribe.runtime import build_engine

    try:
        return build_engine(
            o.get("base", "offline"),
            o.get("quantize", "int8"),
            o.get("device"),
            Registry(o.get("registry") or "adapters"),
            cache_size=o.get("cache_size", 4),
            runtime=o.get("runtime", "auto"),
            threads=o.get("threads", 0),
            workers=o.get("workers", 1),
            options=defaults,
        )
    except Exception as e:  # noqa: BLE001 - one line, not a traceback
        raise click.ClickException(f"cannot load base {o.get('base', 'offline')!r}: {e}") from e
