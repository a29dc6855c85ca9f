"""Reading requests: bodies under the upload limit, multipart forms and JSON bodies, OpenAI's form fields (plus our
extensions) validated, the uploaded audio decoded, and the TranscribeOptions a request asks for (on top of the
server's ``--set`` defaults, parsed here too). Every problem is an APIError naming the field."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path

from .responses import APIError

logger = logging.getLogger("lora_whisper")

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")
_SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")


async def run_sync(fn, *args):
    """``fn(*args)`` in a worker thread (registry scans, audio decoding): the event loop keeps serving."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


# ---- bodies ------------------------------------------------------------------------------------------------------
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
    from starlette.requests import ClientDisconnect

    chunks, got = [], 0
    try:
        async for chunk in request.stream():
            got += len(chunk)
            if got > limit:
                raise APIError(
                    413, f"request body is over the limit of {limit} bytes", param="file", code="request_too_large"
                )
            chunks.append(chunk)
    except ClientDisconnect:  # nobody to answer: one log line, no traceback
        raise client_gone(request, got) from None
    return b"".join(chunks)


def client_gone(request, received: int | None = None) -> APIError:
    """Log that the client of ``request`` went away mid-request (one line); the APIError to end the request with."""
    who = f"{request.client.host}:{request.client.port}" if request.client else "a client"
    got = f" after {received} bytes" if received is not None else ""
    logger.warning("%s %s: %s disconnected before the request was read%s", request.method, request.url.path, who, got)
    return APIError(400, "client disconnected before the request was read", code="client_disconnected")


async def read_form(request, limit: int):
    """The multipart form of a request whose body is at most ``limit`` bytes; the caller closes it."""
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
    """The request's JSON object (an empty body is ``{}``)."""
    body = await read_body(request, limit)
    try:
        data = json.loads(body or b"{}")
    except (ValueError, RecursionError) as e:  # RecursionError: nested thousands deep
        raise APIError(400, f"body is not JSON: {type(e).__name__}: {str(e)[:200]}") from e
    if not isinstance(data, dict):
        raise APIError(400, "body must be a JSON object")
    return data


# ---- form fields -------------------------------------------------------------------------------------------------
def _list_field(form, name: str) -> list[str]:
    """Values of ``name`` given as ``name[]`` or ``name`` (repeated, or one comma-separated value)."""
    out = []
    for key in (f"{name}[]", name):
        for v in form.getlist(key):
            if isinstance(v, str):
                out += [x.strip() for x in v.split(",") if x.strip()]
    return out


def _text_field(form, name: str) -> str | None:
    v = form.get(name)
    if v is None:
        return None
    if not isinstance(v, str):
        raise APIError(400, f"{name} must be a text field, not a file", param=name)
    return v.strip() or None


def parse_fields(form, task: str) -> dict:
    """OpenAI's form fields plus our extensions, validated; APIError(400) naming the field otherwise."""
    fmt = _text_field(form, "response_format") or "json"
    if fmt not in RESPONSE_FORMATS:
        raise APIError(400, f"response_format {fmt!r} is not one of {list(RESPONSE_FORMATS)}", param="response_format")
    temperature = _temperature(_text_field(form, "temperature"))
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
    stream = (_text_field(form, "stream") or "false").lower()
    if stream not in ("true", "false", "1", "0"):
        raise APIError(400, f"stream {stream!r} is not true or false", param="stream")
    return {
        "model": _text_field(form, "model") or "auto",
        "language": _text_field(form, "language"),
        "languages": _list_field(form, "languages") or None,
        "domain": _list_field(form, "domain") or None,
        "prompt": _text_field(form, "prompt"),
        "response_format": fmt,
        "temperature": temperature,
        "granularities": grans or ["segment"],
        "stream": stream in ("true", "1"),
        "task": task,
    }


def _temperature(value: str | None) -> float:
    if value is None:
        return 0.0
    try:
        temperature = float(value)
    except ValueError:
        raise APIError(400, f"temperature {value!r} is not a number", param="temperature") from None
    if not 0.0 <= temperature <= 1.0 or math.isnan(temperature):
        raise APIError(400, f"temperature {temperature} is outside [0, 1]", param="temperature")
    return temperature


# ---- the request's TranscribeOptions -----------------------------------------------------------------------------
def transcribe_options(engine, fields: dict, adapter: str, task: str, defaults: dict | None = None):
    """TranscribeOptions for a request: the engine's defaults (as the CLI's) plus what the request asks."""
    from ..transcribe.engine import TranscribeOptions

    known = {f.name for f in dataclasses.fields(TranscribeOptions)}
    langs = engine.base.languages
    _check_languages(fields, langs)
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
        kw["temperature"] = _fallback_temperatures(fields["temperature"])
    options = TranscribeOptions(**kw)
    if hasattr(options, "validate"):
        try:
            options.validate(langs)
        except ValueError as e:
            raise APIError(400, str(e)) from e
    return options


def _check_languages(fields: dict, langs) -> None:
    for lang in [fields["language"], *(fields["languages"] or [])]:
        if lang is not None and langs and lang not in langs:
            raise APIError(
                400,
                f"language {lang!r} is not one of the base's languages: {sorted(langs)}",
                param="language" if lang == fields["language"] else "languages",
            )


def _fallback_temperatures(start: float) -> tuple[float, ...]:
    """Like openai-whisper's CLI: start at the given temperature, fall back upwards in steps of 0.2."""
    t, temps = start, []
    while t <= 1.0 + 1e-6:
        temps.append(round(t, 2))
        t += 0.2
    return tuple(temps)


def parse_defaults(pairs: list[str]) -> dict:
    """``KEY=VALUE`` strings (YAML values) -> TranscribeOptions fields; ValueError naming a bad key or value."""
    import yaml

    from ..transcribe import bounds
    from ..transcribe.engine import TranscribeOptions

    known = {f.name: f for f in dataclasses.fields(TranscribeOptions)}
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise ValueError(f"--set {pair!r}: give KEY=VALUE with KEY one of {sorted(known)}")
        try:
            v = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"--set {pair!r}: not a YAML value ({str(e).splitlines()[0]})") from e
        if key in ("temperature", "combine_weights"):
            v = tuple(v) if isinstance(v, list) else (v,) if key == "temperature" else v
        out[key] = v
    try:
        bounds.check(out)  # numbers out of range, NaN, wrong types: before validate compares them
        opts = TranscribeOptions(**out)
        if hasattr(opts, "validate"):
            opts.validate()
    except (TypeError, ValueError) as e:
        raise ValueError(f"--set: {e}") from e
    return out


# ---- the upload --------------------------------------------------------------------------------------------------
async def decode_upload(form, tmpdir: str, max_seconds: float | None = None):
    """(float32 16 kHz samples, client file name) of the ``file`` field; APIError(400) naming the problem, 413 when
    the audio is longer than ``max_seconds`` (decoding stops there: memory stays bounded by the limit)."""
    from ..transcribe.audio import AudioError, AudioTooLong, load_audio

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
            samples = await run_sync(load_audio, tmp, 16000, True, max_seconds)
        except AudioTooLong as e:
            raise APIError(
                413,
                f"{str(e).replace(tmp, name)} (the server's --max-audio-s)",
                param="file",
                code="audio_too_long",
            ) from e
        except AudioError as e:
            raise APIError(400, str(e).replace(tmp, name), param="file", code="invalid_audio") from e
    finally:
        os.unlink(tmp)
    return samples, name
