"""The server's app and how it runs: :class:`ServeOptions`, :func:`create_app` (the app's state, its scheduler, the
error handlers and the routers of :mod:`.routes` and :mod:`.admin`), and :func:`run_server` (a uvicorn server on a
bound socket, drained on SIGTERM).

FastAPI and uvicorn are imported inside the functions: the CLI imports this module (through ``serve.command``)
and ``lora-whisper --help`` stays fast; on the ct2 runtime, importing it loads no torch either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import socket
import tempfile
from dataclasses import dataclass, field

logger = logging.getLogger("lora_whisper")


@dataclass
class ServeOptions:
    """Settings of one server (one base, one registry folder)."""

    host: str = "127.0.0.1"
    """Interface to listen on."""
    port: int = 8000
    """TCP port (0 = any free port; the chosen one is printed)."""
    api_key: str | None = None
    """When set, every endpoint but /health needs ``Authorization: Bearer <key>``; admin endpoints need it set."""
    max_batch: int = 8
    """Most requests in one engine call (1 = micro-batching off)."""
    max_wait: float = 0.05
    """Seconds the oldest queued request waits for others with the same options before its batch runs."""
    max_queue: int = 64
    """Requests waiting beyond this are refused with 503 and Retry-After."""
    max_upload_bytes: int = 25 * 1024 * 1024
    """Largest request body accepted (OpenAI's limit is 25 MB); larger ones get 413."""
    max_audio_seconds: float = 600.0
    """Longest audio accepted, as decoded (a small compressed upload can hold hours); decoding stops past it and the
    request gets 413. Ten minutes are 38 MB of 16 kHz samples, and about 420 MB more while the ct2 runtime computes
    the whole file's features (measured), so a server stays under 1.5 GB."""
    drain_timeout: float = 30.0
    """On SIGTERM: seconds to finish requests already accepted before giving up on them."""
    import_roots: list[str] = field(default_factory=list)
    """Local folders under which ``/v1/load_lora_adapter`` may import adapter folders (empty: Hub ids only)."""
    access_log: bool = True
    """Log one line per HTTP request (uvicorn's access log)."""
    defaults: dict = field(default_factory=dict)
    """TranscribeOptions fields every request starts from (e.g. ``{"beam_size": 5, "vad": True}``); the request's
    own fields (model, language, prompt, temperature, ...) override them."""


def create_app(engine, options: ServeOptions | None = None):
    """A FastAPI app serving ``engine`` (its registry is the adapter registry). Starts its scheduler on startup
    and drains it on shutdown."""
    from fastapi import FastAPI

    from . import admin, routes
    from .metrics import Metrics
    from .responses import add_error_handlers
    from .scheduler import Scheduler, SchedulerOptions

    opts = options or ServeOptions()
    metrics = Metrics()
    scheduler = Scheduler(engine, SchedulerOptions(opts.max_batch, opts.max_wait, opts.max_queue), metrics)
    app = FastAPI(title="lora-whisper", lifespan=_lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    state = app.state
    state.engine, state.registry, state.base_id = engine, engine.registry, engine.base.identity.hub_id
    if engine.registry is not None:  # adapters made for another base: skipped with one warning, refused on import
        engine.registry.base = engine.base.identity.to_dict()
    state.options, state.scheduler, state.metrics = opts, scheduler, metrics
    state.tmpdir = tempfile.mkdtemp(prefix="lora-whisper-serve-")  # uploads, each deleted once decoded
    add_error_handlers(app)
    app.include_router(routes.router)
    app.include_router(admin.router)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app):
    """Run the scheduler while the app serves; on shutdown drain it (bounded) and remove the upload folder."""
    state = app.state
    state.scheduler.start()
    try:
        yield
    finally:
        loop = asyncio.get_running_loop()
        drained = await loop.run_in_executor(None, state.scheduler.stop, state.options.drain_timeout)
        logger.info("scheduler stopped (%s)", "drained" if drained else "not drained")
        shutil.rmtree(state.tmpdir, ignore_errors=True)


# ---- running ---------------------------------------------------------------------------------------------------
def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    # listening before the address is announced: a client that connects at once waits in the backlog until uvicorn
    # accepts, instead of being refused (a race the ct2 runtime's fast start made visible)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def make_server(app, options: ServeOptions, log_level: str = "info"):
    """A uvicorn Server for ``app``: graceful shutdown bounded by ``options.drain_timeout``."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        timeout_graceful_shutdown=max(1, int(options.drain_timeout)),
        access_log=options.access_log,
        log_level=log_level,
        lifespan="on",
    )
    return uvicorn.Server(config)


def run_server(engine, options: ServeOptions, announce=None) -> None:
    """Serve until SIGTERM/SIGINT: then stop accepting, finish accepted requests (bounded), return."""
    app = create_app(engine, options)
    sock = bind_socket(options.host, options.port)
    port = sock.getsockname()[1]
    if announce:
        announce(f"lora-whisper serve: listening on http://{options.host}:{port} (base {engine.base.identity.hub_id})")
    server = make_server(app, options)
    # uvicorn re-raises the signal it caught after its graceful shutdown; with these no-op handlers in place the
    # re-raised signal does nothing and the process exits 0 once everything accepted is answered
    old = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        sock.close()
