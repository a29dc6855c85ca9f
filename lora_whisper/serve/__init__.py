"""`lora-whisper serve`: an OpenAI-compatible speech-to-text server with ``model=auto`` routing (issue 10).

``POST /v1/audio/transcriptions`` and ``/v1/audio/translations`` take OpenAI's multipart fields; ``model`` is
``auto`` (detect the language, route to its adapter), ``base`` (or the base's hub id) or an adapter reference.
One :class:`~lora_whisper.serve.scheduler.Scheduler` thread owns the Engine and runs queued requests in
micro-batches; HTTP handlers only parse, decode the upload, queue, and await. The registry folder is read on every
request, so adapters filed, activated, pulled or removed (by this server, the CLI or another server sharing the
folder) are seen without a restart.

Modules, outermost first:

- :mod:`.command`: the ``lora-whisper serve`` click command (flags -> ServeOptions, load the base, run).
- :mod:`.app`: ServeOptions, ``create_app`` (state, scheduler, error handlers, routers) and running under uvicorn.
- :mod:`.routes`: the OpenAI-compatible endpoints (audio, models, health, metrics), an APIRouter over ``app.state``.
- :mod:`.admin`: ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``, an APIRouter.
- :mod:`.auth`: the bearer API key and the admin gate.
- :mod:`.models`: the ``model`` names (``/v1/models`` cards, resolving a request's model to an adapter).
- :mod:`.parsing`: request bodies, form fields, the upload, and the request's TranscribeOptions.
- :mod:`.responses`: OpenAI-shaped errors, response formats (json, verbose_json, text, srt, vtt), SSE streaming.
- :mod:`.metrics`: the Prometheus metrics.
- :mod:`.scheduler`: the thread that owns the Engine and runs queued requests in micro-batches.

Only ``routes`` and ``admin`` import FastAPI at module level, and only ``create_app`` imports them: the CLI imports
``command`` at start-up and ``lora-whisper --help`` stays fast. Nothing here is imported by the rest of the package.
"""
