"""`lora-whisper serve`: a real uvicorn server on 127.0.0.1 (ephemeral port), called with the official `openai`
client and raw multipart requests (httpx), on the tiny random Whisper with tiny random adapters."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf
from conftest import AUDIO, file_adapter

from lora_whisper.adapters.registry import Registry
from lora_whisper.base.loading import load_base
from lora_whisper.serve.app import ServeOptions, bind_socket, create_app, make_server
from lora_whisper.transcribe.engine import Engine, TranscribeOptions

try:  # openai >= 3 ships its HTTP client as httpx2; older ones use httpx
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx

KEY = "sk-test-key"
FAST = dict(temperature=(0.0,), max_new_tokens=8)
"""Server defaults for the tiny random model: it fails every fallback check, so keep decoding greedy and short."""


@contextlib.contextmanager
def running(engine, **kw):
    """A real uvicorn server in a thread on an ephemeral port; yields (base url, app)."""
    kw.setdefault("defaults", FAST)
    opts = ServeOptions(port=0, access_log=False, **kw)
    app = create_app(engine, opts)
    server = make_server(app, opts, log_level="warning")
    sock = bind_socket("127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def client(url, key="unused"):
    from openai import OpenAI

    return OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


def post(url, path, file=None, data=None, key=None, **kw):
    files = {"file": (file.name, file.read_bytes())} if file is not None else None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + path, files=files, data=data or {}, headers=headers, timeout=120, **kw)


def tone(path, seconds=2.0, freq=220.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t) * (1 + rng.normal(0, 0.1, t.size))).astype(np.float32), 16000)
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the tiny model gains nothing from more, and 2 cores shared by several jobs make OpenMP
    threads spin against each other (minutes instead of seconds)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def reg(tmp_path, tiny_adapter_factory):
    r = Registry(tmp_path / "adapters")
    fp = tiny_adapter_factory.fingerprint
    file_adapter(
        r,
        tiny_adapter_factory("encoder+decoder", 1),
        "fr",
        "fr",
        fingerprint=fp,
        metrics={"before": {"wer": 0.9}, "after": {"wer": 0.3}},
    )
    file_adapter(r, tiny_adapter_factory("encoder+decoder", 2), "fr-medical", "fr", "medical", fingerprint=fp)
    file_adapter(r, tiny_adapter_factory("decoder", 3), "de", "de", fingerprint=fp, scope="decoder")
    return r


@pytest.fixture()
def engine(tiny_model_dir, reg):
    # a base of its own: peft injects adapter layers into the base model in place
    return Engine(load_base(str(tiny_model_dir), quantize="none", device="cpu"), reg)


@pytest.fixture()
def clips(tmp_path):
    return [tone(tmp_path / "a.wav", 2.0, 220, 0), tone(tmp_path / "b.flac", 3.0, 330, 1)]


def _error(r, status):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


# ---- formats, routing, equality with the engine -----------------------------------------------------------------
def test_every_format_and_model_matches_the_engine(engine, clips):
    cases = [
        ("auto", {}),
        ("auto", {"language": "fr"}),
        ("fr-medical", {}),
        ("fr-medical@1", {}),
        ("base", {}),
        ("test/tiny-whisper", {}),
        ("de", {"language": "de"}),
        ("fr", {"prompt": "Bonjour docteur."}),
        ("auto", {"extra_body": {"domain": "medical", "languages": "fr,de"}}),
    ]
    adapters = {"auto": "auto", "base": "none", "test/tiny-whisper": "none"}
    want = {}
    for k, (model, extra) in enumerate(cases):  # computed before the scheduler owns the engine
        # one file per call, as the server runs sequential requests (the tiny random model's near-flat logits let
        # the batch's composition flip a token; real models and int8 with threshold 0 are row-independent)
        body = extra.get("extra_body", {})
        o = TranscribeOptions(
            adapter=adapters.get(model, model),
            language=extra.get("language"),
            initial_prompt=extra.get("prompt"),
            domain=body.get("domain"),
            languages=body["languages"].split(",") if body else None,
            **FAST,
        )
        want[k] = [r for c in clips for r in engine.transcribe([c], o)]
    with running(engine) as (url, _app):
        c = client(url)
        for k, (model, extra) in enumerate(cases):
            for clip, exp in zip(clips, want[k]):
                with open(clip, "rb") as f:
                    v = c.audio.transcriptions.create(
                        model=model,
                        file=f,
                        response_format="verbose_json",
                        timestamp_granularities=["segment"],
                        **extra,
                    )
                assert v.text == exp.text and v.language == exp.language and v.duration == exp.duration
                assert v.adapter == exp.adapter and v.route == exp.route
                assert [s.text for s in v.segments] == [s.text for s in exp.segments]
        assert want[2][0].adapter == "fr-medical@1" and want[4][0].adapter is None
        assert want[1][0].adapter == "fr@1" and want[6][0].adapter == "de@1" and want[7][0].text != want[1][0].text

        exp = want[2][0]
        with open(clips[0], "rb") as f:
            j = c.audio.transcriptions.create(model="fr-medical", file=f)
        assert j.text == exp.text
        with open(clips[0], "rb") as f:
            assert c.audio.transcriptions.create(model="fr-medical", file=f, response_format="text").strip() == exp.text
        from lora_whisper.transcribe.output import render

        for fmt in ("srt", "vtt"):
            r = post(url, "/v1/audio/transcriptions", clips[0], {"model": "fr-medical", "response_format": fmt})
            assert r.status_code == 200 and r.text == render(exp, fmt)
        r = post(url, "/v1/audio/transcriptions", clips[0], {"model": "fr-medical", "response_format": "json"})
        assert r.json()["text"] == exp.text


def test_streaming_sse(engine, clips):
    exp = next(engine.transcribe([clips[1]], TranscribeOptions(adapter="fr", **FAST)))
    with running(engine) as (url, _app):
        with open(clips[1], "rb") as f:
            events = list(client(url).audio.transcriptions.create(model="fr", file=f, stream=True))
        assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1) and len(events) >= 2
        assert events[-1].type == "transcript.text.done" and events[-1].text == exp.text
        assert "".join(e.delta for e in events[:-1]).strip() == exp.text
        assert events[-1].adapter == "fr@1"
        # raw: text/event-stream, data: lines, [DONE] at the end
        with (
            open(clips[1], "rb") as f,
            httpx.stream(
                "POST",
                url + "/v1/audio/transcriptions",
                files={"file": ("b.flac", f.read())},
                data={"model": "fr", "stream": "true"},
                timeout=120,
            ) as r,
        ):
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            lines = [ln for ln in r.iter_lines() if ln]
        assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)
        assert json.loads(lines[-2][6:])["text"] == exp.text


def test_translation_and_server_defaults(engine, clips):
    from lora_whisper.serve.parsing import parse_defaults

    exp = next(engine.transcribe([clips[0]], TranscribeOptions(task="translate", adapter="none", **FAST)))
    with running(engine) as (url, _app):
        with open(clips[0], "rb") as f:
            t = client(url).audio.translations.create(model="base", file=f, response_format="verbose_json")
    assert t.task == "translate" and t.text == exp.text
    assert parse_defaults(["beam_size=2", "temperature=[0, 0.5]", "vad=true", "temperature=0"]) == {
        "beam_size": 2,
        "temperature": (0,),
        "vad": True,
    }
    with pytest.raises(ValueError, match="beam_size"):
        parse_defaults(["beam=2"])
    with pytest.raises(ValueError, match="beam.size"):
        parse_defaults(["beam_size=0"])


# ---- errors ------------------------------------------------------------------------------------------------------
def test_errors_in_openai_shape(engine, clips, tmp_path, wavs):
    big = tone(tmp_path / "big.wav", 10.0)  # 320 kB
    with running(engine, api_key=KEY, max_upload_bytes=100_000) as (url, _app):
        # 401 everywhere but /health; constant-time compare of the bearer token
        assert httpx.get(url + "/health").status_code == 200
        for path in ("/v1/models", "/metrics"):
            _error(httpx.get(url + path), 401)
            _error(httpx.get(url + path, headers={"Authorization": "Bearer wrong"}), 401)
            assert httpx.get(url + path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        _error(post(url, "/v1/audio/transcriptions", clips[0], {"model": "auto"}), 401)
        import openai

        with pytest.raises(openai.AuthenticationError), open(clips[0], "rb") as f:
            client(url, "wrong").audio.transcriptions.create(model="auto", file=f)
        # 413: over the upload limit
        err = _error(post(url, "/v1/audio/transcriptions", big, {"model": "auto"}, key=KEY), 413)
        assert "limit" in err["message"]

        def chunked():  # no Content-Length: counted while reading
            yield b"--x\r\n"
            for _ in range(30):
                yield b"0" * 10_000

        r = httpx.post(
            url + "/v1/audio/transcriptions",
            content=chunked(),
            timeout=60,
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "multipart/form-data; boundary=x"},
        )
        _error(r, 413)
        # 400: unreadable audio names the file and the problem
        for bad, needle in (
            (wavs["text"], "notes.wav: cannot decode"),
            (wavs["empty"], "empty"),
            (wavs["silence"], "silent"),
            (wavs["truncated"], "truncated.wav"),
        ):
            err = _error(post(url, "/v1/audio/transcriptions", bad, {"model": "auto"}, key=KEY), 400)
            assert needle in err["message"] and err["param"] == "file" and str(tmp_path) not in err["message"]
        for data, param in (
            ({"model": "auto", "response_format": "xml"}, "response_format"),
            ({"model": "auto", "temperature": "hot"}, "temperature"),
            ({"model": "auto", "temperature": "3"}, "temperature"),
            ({"model": "auto", "language": "xx"}, "language"),
            ({"model": "auto", "languages": "fr,qq"}, "languages"),
            (
                {"model": "auto", "timestamp_granularities[]": "char", "response_format": "verbose_json"},
                "timestamp_granularities",
            ),
            ({"model": "auto", "stream": "maybe"}, "stream"),
        ):
            err = _error(post(url, "/v1/audio/transcriptions", clips[0], data, key=KEY), 400)
            assert err["param"] == param, err
        _error(post(url, "/v1/audio/transcriptions", None, {"model": "auto"}, key=KEY), 400)
        r = httpx.post(
            url + "/v1/audio/transcriptions", json={"model": "auto"}, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert "multipart" in _error(r, 400)["message"]
        # 404: unknown model or version, listing the valid ones; nothing outside the registry is reachable
        for model in ("nope", "fr@9", "../../etc", "fr-medical@x"):
            err = _error(post(url, "/v1/audio/transcriptions", clips[0], {"model": model}, key=KEY), 404)
            assert "auto" in err["message"] and "fr-medical" in err["message"] and err["code"] == "model_not_found"
        _error(httpx.get(url + "/v1/nothing-here", headers={"Authorization": f"Bearer {KEY}"}), 404)
        # the server is still fine
        assert post(url, "/v1/audio/transcriptions", clips[0], {"model": "auto"}, key=KEY).status_code == 200
        metrics = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
        assert 'lora_whisper_requests_total{endpoint="transcriptions",model="-",status="413"} 2.0' in metrics
        assert 'lora_whisper_requests_total{endpoint="transcriptions",model="auto",status="200"} 1.0' in metrics


def test_admin_endpoints_need_a_key(engine, reg, tiny_adapter_factory):
    with running(engine) as (url, _app):
        err = _error(httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "a/b"}), 403)
        assert "API key" in err["message"]
        _error(httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "fr"}), 403)
    assert reg.get("fr").ref == "fr@1"


class Gate:
    """Wraps engine.transcribe: every engine call waits until the gate opens; records batch sizes."""

    def __init__(self, engine):
        self.open, self.sizes, self.inner = threading.Event(), [], engine.transcribe
        engine.transcribe = self

    def __call__(self, inputs, options=None, *a, **kw):
        self.sizes.append(len(inputs))
        assert self.open.wait(120)
        return self.inner(inputs, options, *a, **kw)


def _wait(cond, what, timeout=60):
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_queue_full_503_and_micro_batches(engine, clips):
    gate = Gate(engine)
    order = [clips[0], AUDIO / "jfk_inaugural.wav", clips[0]]  # another file (duration) than the tone
    single = next(gate.inner([clips[0]], TranscribeOptions(adapter="none", **FAST)))
    batched = list(gate.inner(order, TranscribeOptions(adapter="none", **FAST)))  # the same batch, unserved
    v = {"model": "base", "response_format": "verbose_json"}
    with running(engine, max_queue=3, max_batch=8, max_wait=0.0) as (url, app):
        sched = app.state.scheduler
        with ThreadPoolExecutor(8) as pool:
            first = pool.submit(post, url, "/v1/audio/transcriptions", clips[0], v)
            _wait(lambda: gate.sizes, "the first batch")  # running (blocked), queue empty
            queued = []
            for k, clip in enumerate(order):  # one at a time, so the queue order is known
                queued.append(pool.submit(post, url, "/v1/audio/transcriptions", clip, v))
                _wait(lambda k=k: sched.depth == k + 1, f"{k + 1} queued requests")
            r = post(url, "/v1/audio/transcriptions", clips[0], v)
            err = _error(r, 503)
            assert int(r.headers["Retry-After"]) >= 1 and err["code"] == "queue_full"
            assert httpx.get(url + "/health").json()["queued"] == 3
            gate.open.set()
            results = [first.result()] + [q.result() for q in queued]
        assert [x.status_code for x in results] == [200] * 4
        # the three queued requests shared one engine call
        assert gate.sizes == [1, 3]
        # each request got its own row's result
        got = [(x.json()["duration"], x.json()["text"]) for x in results]
        assert got == [(r.duration, r.text) for r in [single, *batched]] and got[1][0] != got[2][0]
        m = httpx.get(url + "/metrics").text
        assert 'status="503"' in m and "lora_whisper_batch_size_count 2.0" in m
        assert "lora_whisper_adapter_loads_total 0.0" in m


def test_requests_with_other_options_are_not_batched_together(engine, clips):
    gate = Gate(engine)
    with running(engine, max_batch=8, max_wait=0.0) as (url, app):
        with ThreadPoolExecutor(8) as pool:
            first = pool.submit(post, url, "/v1/audio/transcriptions", clips[0], {"model": "base"})
            _wait(lambda: gate.sizes, "the first batch")
            models = ["fr", "de", "fr", "auto", "de", "fr"]
            futs = []
            for k, m in enumerate(models):  # one at a time, so the queue order is known
                futs.append(
                    pool.submit(
                        post, url, "/v1/audio/transcriptions", clips[0], {"model": m, "response_format": "verbose_json"}
                    )
                )
                _wait(lambda k=k: app.state.scheduler.depth == k + 1, f"{k + 1} queued requests")
            gate.open.set()
            out = [f.result().json() for f in futs]
            assert first.result().status_code == 200
        assert [o["adapter"] for o in out] == [{"fr": "fr@1", "de": "de@1"}.get(m) for m in models]
        # fr x3 first (oldest), then de x2, then auto: one engine call per options key, oldest first
        assert gate.sizes == [1, 3, 2, 1]
        m = httpx.get(url + "/metrics").text
        assert "lora_whisper_adapter_loads_total 2.0" in m and "lora_whisper_adapter_swaps_total" in m


# ---- registry changes, admin, two servers ------------------------------------------------------------------------
def test_two_servers_share_a_registry(tiny_model_dir, reg, tiny_adapter_factory, tmp_path, clips):
    fp = tiny_adapter_factory.fingerprint
    e1 = Engine(load_base(str(tiny_model_dir), quantize="none", device="cpu"), Registry(reg.root))
    e2 = Engine(load_base(str(tiny_model_dir), quantize="none", device="cpu"), Registry(reg.root))
    staged = tmp_path / "incoming" / "es-legal"
    import shutil

    shutil.copytree(tiny_adapter_factory("encoder+decoder", 5), staged)
    kw = dict(api_key=KEY, import_roots=[str(tmp_path / "incoming")])
    with running(e1, **kw) as (u1, _), running(e2, **kw) as (u2, _):
        auth = {"Authorization": f"Bearer {KEY}"}

        def ids(u):
            return [m["id"] for m in httpx.get(u + "/v1/models", headers=auth).json()["data"]]

        assert ids(u1) == ids(u2) == ["auto", "base", "de", "fr", "fr-medical"]
        card = next(m for m in httpx.get(u1 + "/v1/models", headers=auth).json()["data"] if m["id"] == "fr")
        assert (card["language"], card["domain"], card["wer_before"], card["wer_after"]) == ("fr", None, 0.9, 0.3)
        _error(post(u2, "/v1/audio/transcriptions", clips[0], {"model": "es"}, key=KEY), 404)
        # filed (by the CLI, a trainer, anyone) while both run: both see it and use it
        file_adapter(Registry(reg.root), tiny_adapter_factory("encoder+decoder", 4), "es", "es", fingerprint=fp)
        for u in (u1, u2):
            assert "es" in ids(u)
            r = post(
                u, "/v1/audio/transcriptions", clips[0], {"model": "es", "response_format": "verbose_json"}, key=KEY
            )
            assert r.json()["adapter"] == "es@1"
            r = post(
                u,
                "/v1/audio/transcriptions",
                clips[0],
                {"model": "auto", "language": "es", "response_format": "verbose_json"},
                key=KEY,
            )
            assert r.json()["adapter"] == "es@1"
        # a new version filed: model=es now means es@2 on both; es@1 still answers when asked for
        file_adapter(Registry(reg.root), tiny_adapter_factory("encoder+decoder", 6), "es", "es", fingerprint=fp)
        for u in (u1, u2):
            assert (
                post(
                    u, "/v1/audio/transcriptions", clips[0], {"model": "es", "response_format": "verbose_json"}, key=KEY
                ).json()["adapter"]
                == "es@2"
            )
            assert (
                post(
                    u,
                    "/v1/audio/transcriptions",
                    clips[0],
                    {"model": "es@1", "response_format": "verbose_json"},
                    key=KEY,
                ).json()["adapter"]
                == "es@1"
            )
        # admin: import a local folder through one server, remove through the other
        r = httpx.post(
            u1 + "/v1/load_lora_adapter",
            headers=auth,
            json={"lora_name": "es-legal", "lora_path": str(staged), "language": "es", "domain": "legal"},
        )
        assert r.status_code == 200 and r.json()["ref"] == "es-legal@1", r.text
        assert (
            post(
                u2,
                "/v1/audio/transcriptions",
                clips[0],
                {"model": "auto", "language": "es", "domain": "legal", "response_format": "verbose_json"},
                key=KEY,
            ).json()["adapter"]
            == "es-legal@1"
        )
        outside = tiny_adapter_factory("encoder+decoder", 7)  # not under --import-root
        err = _error(
            httpx.post(
                u1 + "/v1/load_lora_adapter",
                headers=auth,
                json={"lora_name": "x", "lora_path": str(outside), "language": "es"},
            ),
            403,
        )
        assert "--import-root" in err["message"]
        err = _error(
            httpx.post(
                u1 + "/v1/load_lora_adapter", headers=auth, json={"lora_name": "../x", "lora_path": str(staged)}
            ),
            400,
        )
        assert err["param"] == "lora_name"
        r = httpx.post(u2 + "/v1/unload_lora_adapter", headers=auth, json={"lora_name": "es"})
        assert r.status_code == 200 and r.json()["removed"] == ["es@1", "es@2"]
        for u in (u1, u2):
            _error(post(u, "/v1/audio/transcriptions", clips[0], {"model": "es"}, key=KEY), 404)
            assert "es" not in ids(u)
        _error(httpx.post(u1 + "/v1/unload_lora_adapter", headers=auth, json={"lora_name": "es"}), 404)


def test_load_adapter_from_the_hub(engine, reg, tiny_adapter_factory, monkeypatch, clips):
    from hubserver import FakeHub

    from lora_whisper.adapters.hub import push

    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", hub.token)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        import huggingface_hub.constants as c

        monkeypatch.setattr(c, "ENDPOINT", hub.url)
        monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        push(reg, "fr-medical", "tester/fr-medical")
        with running(engine, api_key=KEY) as (url, _app):
            auth = {"Authorization": f"Bearer {KEY}"}
            r = httpx.post(
                url + "/v1/load_lora_adapter",
                headers=auth,
                json={"lora_name": "fr-medical-hub", "lora_path": "tester/fr-medical"},
            )
            assert r.status_code == 200, r.text
            assert (r.json()["ref"], r.json()["language"], r.json()["domain"]) == ("fr-medical-hub@1", "fr", "medical")
            v = post(
                url,
                "/v1/audio/transcriptions",
                clips[0],
                {"model": "fr-medical-hub", "response_format": "verbose_json"},
                key=KEY,
            ).json()
            assert v["adapter"] == "fr-medical-hub@1"
            err = _error(
                httpx.post(
                    url + "/v1/load_lora_adapter",
                    headers=auth,
                    json={"lora_name": "y", "lora_path": "tester/does-not-exist"},
                ),
                400,
            )
            assert "tester/does-not-exist" in err["message"]


def test_removing_an_adapter_in_use_breaks_no_request(engine, reg, clips):
    gate = Gate(engine)
    with running(engine, max_wait=0.0) as (url, app):
        with ThreadPoolExecutor(6) as pool:
            futs = [
                pool.submit(
                    post,
                    url,
                    "/v1/audio/transcriptions",
                    clips[k % 2],
                    {"model": "fr-medical", "response_format": "verbose_json"},
                )
                for k in range(4)
            ]
            _wait(lambda: app.state.scheduler.busy == 4, "4 accepted requests")
            reg.remove("fr-medical")
            gate.open.set()
            out = [f.result() for f in futs]
        assert [r.status_code for r in out] == [200] * 4
        _error(post(url, "/v1/audio/transcriptions", clips[0], {"model": "fr-medical"}), 404)


# ---- SIGTERM -----------------------------------------------------------------------------------------------------
def test_sigterm_under_load_loses_no_accepted_request(tiny_model_dir, reg, clips, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "lora_whisper.cli",
        "--registry",
        str(reg.root),
        "--base",
        str(tiny_model_dir),
        "--quantize",
        "none",
        "--device",
        "cpu",
        "serve",
        "--port",
        "0",
        "--max-batch",
        "2",
        "--no-access-log",
        "--drain-timeout",
        "600",
        "--set",
        "temperature=0",
        "--set",
        "max_new_tokens=8",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("LORA_WHISPER_API_KEY", None)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url, seen = None, []
        deadline = time.time() + 120
        while url is None:
            line = proc.stderr.readline()
            seen.append(line)
            assert line or proc.poll() is None, "".join(seen)
            assert time.time() < deadline, "".join(seen)
            if "listening on " in line:
                url = line.split("listening on ")[1].split()[0]
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
        n = 10
        with ThreadPoolExecutor(n) as pool:
            futs = [
                pool.submit(post, url, "/v1/audio/transcriptions", clips[k % 2], {"model": "auto"}) for k in range(n)
            ]

            def accepted():
                done = sum(f.done() for f in futs)
                return done + httpx.get(url + "/health").json()["busy"] >= n

            _wait(accepted, "all requests accepted", 120)
            assert httpx.get(url + "/health").json()["busy"] > 0, "the load finished before SIGTERM"
            proc.send_signal(signal.SIGTERM)
            results = [f.result() for f in futs]
        assert [r.status_code for r in results] == [200] * n, [r.text for r in results]
        assert all(r.json()["text"] for r in results)
        assert proc.wait(120) == 0
        with pytest.raises(httpx.ConnectError):  # no longer accepting
            httpx.get(url + "/health")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- the real base ------------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_real_base_server_equals_engine(offline_base, tmp_path):
    engine = Engine(offline_base, Registry(tmp_path / "empty"))
    files = [AUDIO / "jfk_inaugural.wav", AUDIO / "fleurs-fr-000.wav"]
    want = list(engine.transcribe(files, TranscribeOptions()))
    with running(engine, defaults={}) as (url, _app):
        c = client(url)
        with ThreadPoolExecutor(2) as pool:  # concurrent: they share a micro-batch

            def one(f):
                with open(f, "rb") as fh:
                    return c.audio.transcriptions.create(model="auto", file=fh, response_format="verbose_json")

            got = list(pool.map(one, files))
        assert [g.language for g in got] == ["en", "fr"] and "ask not what your country" in got[0].text.lower()
        with open(files[0], "rb") as fh:  # word timestamps, and translation of the French clip
            v = c.audio.transcriptions.create(
                model="base", file=fh, response_format="verbose_json", timestamp_granularities=["word", "segment"]
            )
        words = [w.word.strip().lower().strip(",.") for w in v.words]
        assert "country" in words and all(w.start <= w.end for w in v.words) and v.segments
        with open(files[1], "rb") as fh:
            t = c.audio.translations.create(model="base", file=fh, response_format="verbose_json")
        assert t.task == "translate" and t.language == "fr" and t.text != got[1].text
    assert [g.text for g in got] == [w.text for w in want]
