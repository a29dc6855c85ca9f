"""What the server answers: errors in OpenAI's shape (and the app's handlers that turn every failure into one), a
result in the requested ``response_format`` (json, verbose_json, text, srt, vtt), and server-sent events when
streaming.

FastAPI is imported inside the functions: the CLI imports this module (through ``serve.command``) at start-up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time

logger = logging.getLogger("lora_whisper")


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


def engine_failure(e: Exception) -> APIError:
    """The 500 answered when the engine failed on a request (the server goes on)."""
    return APIError(500, f"transcription failed: {type(e).__name__}: {str(e)[:300]}", "server_error")


def add_error_handlers(app) -> None:
    """Answer APIError, HTTP errors (404, 405...), invalid requests (400) and anything else (500) in OpenAI's shape."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return JSONResponse(APIError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        return JSONResponse(APIError(400, str(exc)).body(), status_code=400)

    from starlette.requests import ClientDisconnect

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request, exc):  # the client left mid-request: one log line, not a traceback
        from .parsing import client_gone

        err = client_gone(request)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(Exception)
    async def _internal_error(request, exc):
        logger.exception("internal error on %s", request.url.path)
        return JSONResponse(
            APIError(500, f"internal error: {type(exc).__name__}", "server_error").body(), status_code=500
        )


# ---- one result, in the requested response_format ----------------------------------------------------------------
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
    if fmt == "json":
        return JSONResponse({"text": result.text, "usage": _usage(result)})
    return JSONResponse(verbose_json(result, fields["granularities"], task))


def verbose_json(result, granularities: list[str], task: str) -> dict:
    """OpenAI's verbose_json body plus our fields (adapter, route, language_probability, languages, warnings)."""
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
        "usage": _usage(result),
    }
    if "segment" in granularities:
        body["segments"] = [_segment_dict(i, s) for i, s in enumerate(result.segments)]
    if "word" in granularities:
        body["words"] = [
            dataclasses.asdict(w) if dataclasses.is_dataclass(w) else dict(w)
            for s in result.segments
            for w in (getattr(s, "words", None) or [])
        ]
    return body


def _usage(result) -> dict:
    return {"type": "duration", "seconds": result.duration}


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


# ---- streaming (server-sent events) ------------------------------------------------------------------------------
def sse_response(events: asyncio.Queue, latency, t0: float):
    """A ``text/event-stream`` response of the events of one job (see :func:`sse_events`)."""
    from fastapi.responses import StreamingResponse

    return StreamingResponse(
        sse_events(events, latency, t0),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def sse_events(events: asyncio.Queue, latency, t0: float):
    """``transcript.text.delta`` per segment, then ``transcript.text.done`` (or an error event), then ``[DONE]``.

    ``events`` yields ``("segment", segment)`` as the engine decodes and ``("done", future)`` at the end;
    ``latency`` (a histogram) observes the time from ``t0`` to the last event."""
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
            yield _event(engine_failure(e).body() | {"type": "error"})
            break
        if isinstance(result, FileError):
            yield _event(APIError(400, result.error).body() | {"type": "error"})
            break
        if sent == 0:  # the engine does not stream: one event per segment of the final result
            for seg in result.segments:
                if seg.text:
                    yield _event(delta_event(seg, sent))
                    sent += 1
        yield _event(done_event(result))
        break
    latency.observe(time.perf_counter() - t0)
    yield "data: [DONE]\n\n"


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


def done_event(result) -> dict:
    return {
        "type": "transcript.text.done",
        "text": result.text,
        "language": result.language,
        "duration": result.duration,
        "adapter": result.adapter,
        "route": result.route,
        "usage": _usage(result),
    }
