"""The OpenAI-compatible endpoints: ``/v1/audio/transcriptions`` and ``/v1/audio/translations`` (parse, decode the
upload, queue a job on the scheduler, await it or stream it), ``/v1/models``, ``/health`` and ``/metrics``.

Handlers hold no state of their own: they read what :func:`~lora_whisper.serve.app.create_app` put on
``request.app.state`` (engine, registry, base_id, options, scheduler, metrics, tmpdir).
"""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) at runtime
import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from .auth import check_auth
from .models import find_card, model_cards, resolve_model
from .parsing import decode_upload, parse_fields, read_form, run_sync, transcribe_options
from .responses import APIError, engine_failure, render_response, sse_response
from .scheduler import Job, QueueFull, ShuttingDown

router = APIRouter()


@router.get("/health")
async def health(request: Request):
    state = request.app.state
    return {"status": "ok", "base": state.base_id, "queued": state.scheduler.depth, "busy": state.scheduler.busy}


@router.get("/metrics")
async def prometheus(request: Request):
    check_auth(request)
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, media_type=content_type)


@router.get("/v1/models")
async def models(request: Request):
    check_auth(request)
    state = request.app.state
    return {"object": "list", "data": await run_sync(model_cards, state.registry, state.base_id)}


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, request: Request):
    check_auth(request)
    state = request.app.state
    cards = await run_sync(model_cards, state.registry, state.base_id)
    return find_card(cards, model_id, state.base_id)


@router.post("/v1/audio/transcriptions")
async def transcriptions(request: Request):
    return await audio(request, "transcribe")


@router.post("/v1/audio/translations")
async def translations(request: Request):
    return await audio(request, "translate")


# ---- one audio request -------------------------------------------------------------------------------------------
async def audio(request: Request, task: str):
    """Answer one transcription or translation request, counting it (endpoint, status, model) in the metrics."""
    state = request.app.state
    t0 = time.perf_counter()
    endpoint = "translations" if task == "translate" else "transcriptions"
    label = "-"  # the metrics' model label until the model field is resolved
    try:
        check_auth(request)
        form = await read_form(request, state.options.max_upload_bytes)
        try:
            fields = parse_fields(form, task)
            adapter, label = await run_sync(resolve_model, state.registry, state.base_id, fields["model"])
            t_opts = transcribe_options(state.engine, fields, adapter, task, state.options.defaults)
            samples, name = await decode_upload(form, state.tmpdir, state.options.max_audio_seconds)
        finally:
            await form.close()
        job = Job((name, samples), t_opts, stream=fields["stream"], audio_seconds=len(samples) / 16000)
        if fields["stream"]:
            events = _stream_segments(job)  # before submitting: the scheduler may decode the first one at once
            _stream_end(submit(state.scheduler, job), events)
            state.metrics.requests.labels(endpoint, "200", label).inc()
            return sse_response(events, state.metrics.latency, t0)
        result = await wait_result(submit(state.scheduler, job))
        response = render_response(result, fields, task)
        state.metrics.requests.labels(endpoint, "200", label).inc()
        state.metrics.latency.observe(time.perf_counter() - t0)
        return response
    except APIError as e:
        state.metrics.requests.labels(endpoint, str(e.status), label).inc()
        raise


def submit(scheduler, job: Job):
    """Queue ``job``; its future. 503 with Retry-After when the queue is full or the server is shutting down."""
    try:
        return scheduler.submit(job)
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


async def wait_result(fut):
    """The job's result; 503 when the server shut down before running it, 500 when the engine failed on it."""
    try:
        return await asyncio.wrap_future(fut)
    except ShuttingDown as e:
        raise APIError(503, str(e), "server_error", code="shutting_down") from e
    except Exception as e:  # noqa: BLE001 - the engine failed on this request: 500, the server goes on
        raise engine_failure(e) from e


def _stream_segments(job: Job) -> asyncio.Queue:
    """A queue the scheduler thread feeds with ``("segment", segment)`` as the engine decodes ``job``."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    job.on_event = lambda ev: loop.call_soon_threadsafe(events.put_nowait, ("segment", ev))
    return events


def _stream_end(fut, events: asyncio.Queue) -> None:
    """Put ``("done", fut)`` on ``events`` once the job's future is done."""
    loop = asyncio.get_running_loop()
    fut.add_done_callback(lambda f: loop.call_soon_threadsafe(events.put_nowait, ("done", f)))
