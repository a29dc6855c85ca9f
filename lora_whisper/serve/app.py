"""`lora-whisper serve`: an OpenAI-compatible speech-to-text server with ``model=auto`` routing (issue 10).

``POST /v1/audio/transcriptions`` and ``/v1/audio/translations`` take OpenAI's multipart fields; ``model`` is
``auto`` (detect the language, route to its adapter), ``base`` (or the base's hub id) or an adapter reference.
One :class:`~lora_whisper.serve.scheduler.Scheduler` thread owns the Engine and runs queued requests in micro-batches;
HTTP handlers only parse, decode the upload, queue, and await. The registry folder is read on every request, so
adapters filed, activated, pulled or removed (by this server, the CLI or another server sharing the folder) are
seen without a restart.

FastAPI, uvicorn and prometheus-client are imported inside functions so ``lora-whisper --help`` stays fast.
"""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) at runtime
import asyncio
import dataclasses
import hmac
import json
import logging
import math
import os
import re
import signal
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

logger = logging.getLogger("lora_whisper")

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")
API_KEY_ENV = "LORA_WHISPER_API_KEY"
HUB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")


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
    drain_timeout: float = 30.0
    """On SIGTERM: seconds to finish requests already accepted before giving up on them."""
    import_roots: list[str] = field(default_factory=list)
    """Local folders under which ``/v1/load_lora_adapter`` may import adapter folders (empty: Hub ids only)."""
    access_log: bool = True
    """Log one line per HTTP request (uvicorn's access log)."""
    defaults: dict = field(default_factory=dict)
    """TranscribeOptions fields every request starts from (e.g. ``{"beam_size": 5, "vad": True}``); the request's
    own fields (model, language, prompt, temperature, ...) override them."""


class APIError(Exception):
    """An error answered in OpenAI's JSON shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self, status: int, message: str, type: str = "invalid_request_error", param=None, code=None, headers=None
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---- metrics ---------------------------------------------------------------------------------------------------
class Metrics:
    """Prometheus metrics on a registry of their own (several apps can live in one process)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        p = "lora_whisper_"
        self.requests = Counter(
            p + "requests", "HTTP requests by endpoint, status and model", ["endpoint", "status", "model"], registry=r
        )
        self.audio_seconds = Counter(p + "audio_seconds", "Seconds of audio transcribed", registry=r)
        lat = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160)
        self.latency = Histogram(
            p + "request_latency_seconds", "Request latency, upload to response", buckets=lat, registry=r
        )
        self.queue_wait = Histogram(
            p + "queue_wait_seconds", "Time a request waited in the queue", buckets=lat, registry=r
        )
        self.batch_size = Histogram(
            p + "batch_size", "Requests per engine call", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r
        )
        self.queue_depth = Gauge(p + "queue_depth", "Requests waiting in the queue", registry=r)
        self.adapter_loads = Counter(p + "adapter_loads", "Adapters loaded into memory", registry=r)
        self.adapter_swaps = Counter(p + "adapter_swaps", "Switches of the active adapter between groups", registry=r)
        self.adapter_evictions = Counter(p + "adapter_evictions", "Adapters evicted from memory (LRU)", registry=r)


# ---- the app ---------------------------------------------------------------------------------------------------
def create_app(engine, options: ServeOptions | None = None):
    """A FastAPI app serving ``engine`` (its registry is the adapter registry). Starts its scheduler on startup
    and drains it on shutdown."""
    import contextlib

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .scheduler import Scheduler, SchedulerOptions

    opts = options or ServeOptions()
    metrics = Metrics()
    scheduler = Scheduler(engine, SchedulerOptions(opts.max_batch, opts.max_wait, opts.max_queue), metrics)
    registry = engine.registry
    base_id = engine.base.identity.hub_id
    tmpdir = tempfile.mkdtemp(prefix="lora-whisper-serve-")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        try:
            yield
        finally:
            drained = await asyncio.get_running_loop().run_in_executor(None, scheduler.stop, opts.drain_timeout)
            logger.info("scheduler stopped (%s)", "drained" if drained else "not drained")
            import shutil

            shutil.rmtree(tmpdir, ignore_errors=True)

    app = FastAPI(title="lora-whisper", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler, app.state.metrics, app.state.options = scheduler, metrics, opts

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return JSONResponse(APIError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        return JSONResponse(APIError(400, str(exc)).body(), status_code=400)

    @app.exception_handler(Exception)
    async def _internal_error(request, exc):
        logger.exception("internal error on %s", request.url.path)
        return JSONResponse(
            APIError(500, f"internal error: {type(exc).__name__}", "server_error").body(), status_code=500
        )

    def check_auth(request: Request) -> None:
        if not opts.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), opts.api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")

    def check_admin(request: Request) -> None:
        if not opts.api_key:
            raise APIError(
                403,
                f"admin endpoints are off: start the server with an API key ({API_KEY_ENV} or --api-key-file)",
                "permission_error",
            )
        check_auth(request)

    # ---- endpoints ------------------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "base": base_id, "queued": scheduler.depth, "busy": scheduler.busy}

    @app.get("/metrics")
    async def prometheus(request: Request):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        check_auth(request)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request):
        check_auth(request)
        return {"object": "list", "data": await _run_sync(model_cards)}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request):
        check_auth(request)
        cards = await _run_sync(model_cards)
        for c in cards:
            if model_id in (c["id"], c.get("ref")) or (model_id == base_id and c["id"] == "base"):
                return c
        raise APIError(
            404,
            f"model {model_id!r} not found; valid models: {[c['id'] for c in cards]}",
            param="model",
            code="model_not_found",
        )

    def model_cards() -> list[dict]:
        now = int(time.time())
        cards = [
            {
                "id": "auto",
                "object": "model",
                "created": now,
                "owned_by": "lora-whisper",
                "root": base_id,
                "description": "detect the language, route to its adapter (or the base)",
            },
            {
                "id": "base",
                "object": "model",
                "created": now,
                "owned_by": "lora-whisper",
                "root": base_id,
                "aliases": [base_id],
            },
        ]
        if registry is None:
            return cards
        records, problems = registry.scan()
        for p in problems:
            logger.warning("registry: %s: %s", p.path, p.message)
        for r in records:
            if not r.active:
                continue
            m = r.metrics or {}
            cards.append(
                {
                    "id": r.name,
                    "ref": r.ref,
                    "object": "model",
                    "created": _epoch(r.created, now),
                    "owned_by": "lora-whisper",
                    "root": base_id,
                    "parent": "base",
                    "version": r.version,
                    "versions": [x.version for x in records if x.name == r.name],
                    "language": r.language,
                    "domain": r.domain,
                    "scope": r.lora.get("scope"),
                    "wer_before": (m.get("before") or {}).get("wer"),
                    "wer_after": (m.get("after") or {}).get("wer"),
                    "metrics": m,
                    "source": r.source,
                }
            )
        return cards

    def resolve_model(name: str) -> tuple[str, str]:
        """(adapter option, metrics label) for a ``model`` field; 404 listing the valid models."""
        from ..adapters.registry import RegistryError

        if name == "auto":
            return "auto", "auto"
        if name in ("base", base_id):
            return "none", "base"
        if registry is not None:
            try:
                rec = registry.get(name)
                return rec.ref, rec.name
            except RegistryError:
                pass
        valid = ["auto", "base", base_id]
        if registry is not None:
            recs = registry.list()
            valid += sorted({r.name for r in recs}) + [r.ref for r in recs]
        raise APIError(404, f"model {name!r} not found; valid models: {valid}", param="model", code="model_not_found")

    async def audio(request: Request, task: str):
        t0 = time.perf_counter()
        endpoint = "translations" if task == "translate" else "transcriptions"
        label = "-"
        try:
            check_auth(request)
            form = await read_form(request, opts.max_upload_bytes)
            try:
                fields = parse_fields(form, task)
                label = "-"
                adapter, label = await _run_sync(resolve_model, fields["model"])
                t_opts = transcribe_options(engine, fields, adapter, task, opts.defaults)
                samples, name = await decode_upload(form, tmpdir)
            finally:
                await form.close()
            from .scheduler import Job, QueueFull, ShuttingDown

            job = Job((name, samples), t_opts, stream=fields["stream"], audio_seconds=len(samples) / 16000)
            if fields["stream"]:
                loop = asyncio.get_running_loop()
                events: asyncio.Queue = asyncio.Queue()
                job.on_event = lambda ev: loop.call_soon_threadsafe(events.put_nowait, ("segment", ev))
            try:
                fut = scheduler.submit(job)
            except QueueFull as e:
                raise APIError(
                    503,
                    f"{e}; retry later",
                    "server_error",
                    code="queue_full",
                    headers={"Retry-After": str(scheduler.retry_after())},
                ) from e
            except ShuttingDown as e:
                raise APIError(503, str(e), "server_error", code="shutting_down", headers={"Retry-After": "5"}) from e
            if fields["stream"]:
                fut.add_done_callback(lambda f: loop.call_soon_threadsafe(events.put_nowait, ("done", f)))
                metrics.requests.labels(endpoint, "200", label).inc()
                return StreamingResponse(
                    sse(events, fields, t0),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
            try:
                result = await asyncio.wrap_future(fut)
            except ShuttingDown as e:
                raise APIError(503, str(e), "server_error", code="shutting_down") from e
            except Exception as e:  # noqa: BLE001 - the engine failed on this request: 500, the server goes on
                raise APIError(500, f"transcription failed: {type(e).__name__}: {str(e)[:300]}", "server_error") from e
            response = render_response(result, fields, task)
            metrics.requests.labels(endpoint, "200", label).inc()
            metrics.latency.observe(time.perf_counter() - t0)
            return response
        except APIError as e:
            metrics.requests.labels(endpoint, str(e.status), label).inc()
            raise

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request):
        return await audio(request, "transcribe")

    @app.post("/v1/audio/translations")
    async def translations(request: Request):
        return await audio(request, "translate")

    async def sse(events: asyncio.Queue, fields: dict, t0: float):
        from ..transcribe.engine import FileError

        sent = 0
        while True:
            kind, item = await events.get()
            if kind == "segment":
                yield _event(delta_event(item, sent))
                sent += 1
                continue
            try:
                result = item.result()
            except Exception as e:  # noqa: BLE001
                yield _event(
                    APIError(500, f"transcription failed: {type(e).__name__}: {str(e)[:300]}", "server_error").body()
                    | {"type": "error"}
                )
                break
            if isinstance(result, FileError):
                yield _event(APIError(400, result.error).body() | {"type": "error"})
                break
            if sent == 0:  # the engine does not stream: one event per segment of the final result
                for seg in result.segments:
                    if seg.text:
                        yield _event(delta_event(seg, sent))
                        sent += 1
            yield _event(
                {
                    "type": "transcript.text.done",
                    "text": result.text,
                    "language": result.language,
                    "duration": result.duration,
                    "adapter": result.adapter,
                    "route": result.route,
                    "usage": {"type": "duration", "seconds": result.duration},
                }
            )
            break
        metrics.latency.observe(time.perf_counter() - t0)
        yield "data: [DONE]\n\n"

    # ---- admin ----------------------------------------------------------------------------------------------
    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request):
        check_admin(request)
        body = await read_json(request)
        rec = await _run_sync(load_adapter, body)
        return {
            "message": f"Success: LoRA adapter {rec.name!r} added as {rec.ref}",
            "id": rec.name,
            "ref": rec.ref,
            "language": rec.language,
            "domain": rec.domain,
            "active": rec.active,
        }

    def load_adapter(body: dict):
        from ..adapters.hub import HubError, pull
        from ..adapters.registry import RegistryError, check_name

        name, path = body.get("lora_name"), body.get("lora_path")
        language, domain = body.get("language"), body.get("domain")
        for key, v in (("lora_name", name), ("lora_path", path), ("language", language), ("domain", domain)):
            if v is not None and not isinstance(v, str):
                raise APIError(400, f"{key} must be a string", param=key)
        if not name or not path:
            raise APIError(
                400,
                "give lora_name and lora_path (a local PEFT folder or a Hub repo id)",
                param="lora_name" if not name else "lora_path",
            )
        try:
            check_name(name)
        except RegistryError as e:
            raise APIError(400, str(e), param="lora_name") from e
        if registry is None:
            raise APIError(400, "this server has no adapter registry")
        local = Path(path).expanduser()
        try:
            if local.is_absolute() or path.startswith(".") or local.exists():
                roots = [Path(r).resolve() for r in opts.import_roots]
                real = local.resolve()
                if not any(real == r or r in real.parents for r in roots):
                    raise APIError(
                        403,
                        f"lora_path {path!r}: local folders can only be imported from under "
                        f"--import-root ({[str(r) for r in roots] or 'none configured'})",
                        "permission_error",
                        param="lora_path",
                    )
                if not real.is_dir():
                    raise APIError(400, f"lora_path {path!r}: not a folder", param="lora_path")
                return registry.import_folder(real, name=name, language=language, domain=domain)
            if not HUB_ID_RE.fullmatch(path):
                raise APIError(
                    400,
                    f"lora_path {path!r} is neither a local folder nor a Hub repo id (owner/name)",
                    param="lora_path",
                )
            return pull(registry, path, name=name, language=language, domain=domain)
        except (RegistryError, HubError) as e:
            raise APIError(400, str(e), param="lora_path") from e

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request):
        from ..adapters.registry import RegistryError

        check_admin(request)
        body = await read_json(request)
        name = body.get("lora_name")
        if not isinstance(name, str) or not name:
            raise APIError(400, "give lora_name (an adapter name, or name@version)", param="lora_name")
        try:
            removed = await _run_sync(registry.remove, name)
        except RegistryError as e:
            status = 404 if "not found" in str(e) or "no version" in str(e) else 400
            raise APIError(status, str(e), param="lora_name", code="model_not_found" if status == 404 else None) from e
        return {"message": f"Success: LoRA adapter {name!r} removed", "removed": removed}

    return app


# ---- request parsing -------------------------------------------------------------------------------------------
async def _run_sync(fn, *args):
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


async def read_body(request, limit: int) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes before reading them when the length is known."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise APIError(400, "invalid Content-Length header") from None
        if n > limit:
            raise APIError(
                413,
                f"request body of {n} bytes is over the limit of {limit} bytes",
                param="file",
                code="request_too_large",
            )
    chunks, got = [], 0
    async for chunk in request.stream():
        got += len(chunk)
        if got > limit:
            raise APIError(
                413, f"request body is over the limit of {limit} bytes", param="file", code="request_too_large"
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def read_form(request, limit: int):
    from starlette.requests import Request

    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise APIError(
            400,
            f"expected a multipart/form-data body with a 'file' field, got {ctype or 'no content type'!r}",
            param="file",
        )
    body = await read_body(request, limit)
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, receive).form(max_files=1, max_fields=100)
    except Exception as e:  # noqa: BLE001 - python-multipart raises several kinds for malformed bodies
        raise APIError(400, f"malformed multipart body: {getattr(e, 'detail', None) or e}", param="file") from e


async def read_json(request, limit: int = 1 << 20) -> dict:
    body = await read_body(request, limit)
    try:
        data = json.loads(body or b"{}")
    except ValueError as e:
        raise APIError(400, f"body is not JSON: {e}") from e
    if not isinstance(data, dict):
        raise APIError(400, "body must be a JSON object")
    return data


def _list_field(form, name: str) -> list[str]:
    """Values of ``name`` given as ``name[]`` or ``name`` (repeated, or one comma-separated value)."""
    out = []
    for key in (f"{name}[]", name):
        for v in form.getlist(key):
            if isinstance(v, str):
                out += [x.strip() for x in v.split(",") if x.strip()]
    return out


def parse_fields(form, task: str) -> dict:
    """OpenAI's form fields plus our extensions, validated; APIError(400) naming the field otherwise."""

    def text(name: str) -> str | None:
        v = form.get(name)
        if v is None:
            return None
        if not isinstance(v, str):
            raise APIError(400, f"{name} must be a text field, not a file", param=name)
        return v.strip() or None

    fmt = text("response_format") or "json"
    if fmt not in RESPONSE_FORMATS:
        raise APIError(400, f"response_format {fmt!r} is not one of {list(RESPONSE_FORMATS)}", param="response_format")
    temperature = 0.0
    if text("temperature") is not None:
        try:
            temperature = float(text("temperature"))
        except ValueError:
            raise APIError(400, f"temperature {text('temperature')!r} is not a number", param="temperature") from None
        if not 0.0 <= temperature <= 1.0 or math.isnan(temperature):
            raise APIError(400, f"temperature {temperature} is outside [0, 1]", param="temperature")
    grans = _list_field(form, "timestamp_granularities")
    bad = [g for g in grans if g not in GRANULARITIES]
    if bad:
        raise APIError(
            400, f"timestamp_granularities {bad} not in {list(GRANULARITIES)}", param="timestamp_granularities"
        )
    if grans and fmt != "verbose_json":
        raise APIError(
            400, "timestamp_granularities needs response_format=verbose_json", param="timestamp_granularities"
        )
    stream = (text("stream") or "false").lower()
    if stream not in ("true", "false", "1", "0"):
        raise APIError(400, f"stream {stream!r} is not true or false", param="stream")
    return {
        "model": text("model") or "auto",
        "language": text("language"),
        "languages": _list_field(form, "languages") or None,
        "domain": _list_field(form, "domain") or None,
        "prompt": text("prompt"),
        "response_format": fmt,
        "temperature": temperature,
        "granularities": grans or ["segment"],
        "stream": stream in ("true", "1"),
        "task": task,
    }


def transcribe_options(engine, fields: dict, adapter: str, task: str, defaults: dict | None = None):
    """TranscribeOptions for a request: the engine's defaults (as the CLI's) plus what the request asks."""
    from ..transcribe.engine import TranscribeOptions

    known = {f.name for f in dataclasses.fields(TranscribeOptions)}
    langs = engine.base.languages
    for lang in [fields["language"], *(fields["languages"] or [])]:
        if lang is not None and langs and lang not in langs:
            raise APIError(
                400,
                f"language {lang!r} is not one of the base's languages: {sorted(langs)}",
                param="language" if lang == fields["language"] else "languages",
            )
    domain = fields["domain"]
    kw = dict(defaults or {})
    kw.update(
        adapter=adapter,
        language=fields["language"],
        languages=fields["languages"],
        domain=domain[0] if domain and len(domain) == 1 else domain,
    )

    def need(option: str, what: str, param: str):
        if option not in known:
            raise APIError(400, f"{what} is not supported by this engine version", param=param)

    if task != "transcribe":
        need("task", "translation", "model")
        kw["task"] = task
    if fields["prompt"]:
        need("initial_prompt", "prompt", "prompt")
        kw["initial_prompt"] = fields["prompt"]
    if "word" in fields["granularities"]:
        need("word_timestamps", "word timestamps", "timestamp_granularities")
        kw["word_timestamps"] = True
    if fields["temperature"] > 0:
        need("temperature", "a temperature other than 0", "temperature")
        # like openai-whisper's CLI: start at the given temperature, fall back upwards in steps of 0.2
        t, temps = fields["temperature"], []
        while t <= 1.0 + 1e-6:
            temps.append(round(t, 2))
            t += 0.2
        kw["temperature"] = tuple(temps)
    options = TranscribeOptions(**kw)
    if hasattr(options, "validate"):
        try:
            options.validate(langs)
        except ValueError as e:
            raise APIError(400, str(e)) from e
    return options


def parse_defaults(pairs: list[str]) -> dict:
    """``KEY=VALUE`` strings (YAML values) -> TranscribeOptions fields; ValueError naming a bad key or value."""
    import yaml

    from ..transcribe.engine import TranscribeOptions

    known = {f.name: f for f in dataclasses.fields(TranscribeOptions)}
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise ValueError(f"--set {pair!r}: give KEY=VALUE with KEY one of {sorted(known)}")
        v = yaml.safe_load(value)
        if key in ("temperature", "combine_weights"):
            v = tuple(v) if isinstance(v, list) else (v,) if key == "temperature" else v
        out[key] = v
    try:
        opts = TranscribeOptions(**out)
        if hasattr(opts, "validate"):
            opts.validate()
    except (TypeError, ValueError) as e:
        raise ValueError(f"--set: {e}") from e
    return out


async def decode_upload(form, tmpdir: str):
    """(float32 16 kHz samples, client file name) of the ``file`` field; APIError(400) naming the problem."""
    from ..transcribe.audio import AudioError, load_audio

    upload = form.get("file")
    if upload is None:
        raise APIError(400, "no 'file' field: send the audio as a multipart file", param="file")
    if isinstance(upload, str):
        raise APIError(400, "'file' must be a file upload, not a text field", param="file")
    name = _SAFE_NAME_RE.sub("_", Path(upload.filename or "upload").name)[:100] or "upload"
    suffix = Path(name).suffix.lower() if len(Path(name).suffix) <= 6 else ""
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=tmpdir)
    try:
        with os.fdopen(fd, "wb") as f:
            while chunk := await upload.read(1 << 20):
                f.write(chunk)
        try:
            samples = await _run_sync(load_audio, tmp)
        except AudioError as e:
            raise APIError(400, str(e).replace(tmp, name), param="file", code="invalid_audio") from e
    finally:
        os.unlink(tmp)
    return samples, name


# ---- responses -------------------------------------------------------------------------------------------------
def _event(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def delta_event(seg, index: int) -> dict:
    return {
        "type": "transcript.text.delta",
        "delta": (" " if index else "") + seg.text,
        "start": seg.start,
        "end": seg.end,
        "language": seg.language,
        "adapter": seg.adapter,
    }


def _segment_dict(i: int, s) -> dict:
    return {
        "id": i,
        "seek": int(round(s.start * 100)),
        "start": s.start,
        "end": s.end,
        "text": s.text,
        "tokens": list(getattr(s, "tokens", None) or []),
        "temperature": getattr(s, "temperature", None),
        "avg_logprob": getattr(s, "avg_logprob", None),
        "compression_ratio": getattr(s, "compression_ratio", None),
        "no_speech_prob": getattr(s, "no_speech_prob", None),
        "language": s.language,
        "adapter": s.adapter,
    }


def render_response(result, fields: dict, task: str):
    """The HTTP response for one result in the requested response_format."""
    from fastapi.responses import JSONResponse, PlainTextResponse

    from ..transcribe.engine import FileError
    from ..transcribe.output import render

    if isinstance(result, FileError):
        raise APIError(400, result.error, param="file", code="invalid_audio")
    fmt = fields["response_format"]
    if fmt == "text":
        return PlainTextResponse(result.text + "\n")
    if fmt in ("srt", "vtt"):
        return PlainTextResponse(render(result, fmt), media_type="text/vtt" if fmt == "vtt" else "application/x-subrip")
    usage = {"type": "duration", "seconds": result.duration}
    if fmt == "json":
        return JSONResponse({"text": result.text, "usage": usage})
    body = {
        "task": task,
        "language": result.language,
        "duration": result.duration,
        "text": result.text,
        "language_probability": result.language_probability,
        "languages": result.to_dict()["languages"],
        "adapter": result.adapter,
        "route": result.route,
        "warnings": result.warnings,
        "usage": usage,
    }
    if "segment" in fields["granularities"]:
        body["segments"] = [_segment_dict(i, s) for i, s in enumerate(result.segments)]
    if "word" in fields["granularities"]:
        body["words"] = [
            dataclasses.asdict(w) if dataclasses.is_dataclass(w) else dict(w)
            for s in result.segments
            for w in (getattr(s, "words", None) or [])
        ]
    return JSONResponse(body)


def _epoch(created: str, default: int) -> int:
    import datetime as dt

    try:
        return int(dt.datetime.fromisoformat(created).timestamp())
    except (TypeError, ValueError):
        return default


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
    from ..adapters.registry import Registry
    from ..transcribe.runtime import build_engine

    key = os.environ.get(API_KEY_ENV) or None
    if api_key_file:
        key = Path(api_key_file).read_text().strip() or None
        if key is None:
            raise click.ClickException(f"{api_key_file}: empty API key file")
    try:
        defaults = parse_defaults(list(settings))
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    o = ctx.obj or {}
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
    try:
        engine = build_engine(
            o.get("base", "offline"),
            o.get("quantize", "int8"),
            o.get("device"),
            Registry(o.get("registry") or "adapters"),
            cache_size=o.get("cache_size", 4),
            runtime=o.get("runtime", "auto"),
            threads=o.get("threads", 0),
            options=defaults,
        )
    except Exception as e:  # noqa: BLE001 - one line, not a traceback
        raise click.ClickException(f"cannot load base {o.get('base', 'offline')!r}: {e}") from e
    if not key:
        click.echo(
            f"lora-whisper serve: no API key ({API_KEY_ENV} / --api-key-file): open access, admin endpoints off",
            err=True,
        )
    run_server(engine, options, announce=lambda m: click.echo(m, err=True))
