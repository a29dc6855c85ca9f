"""Load test of `lora-whisper serve` on loopback: micro-batching on vs off vs the engine without a server.

    python benchmarks/bench_serve.py [--clients 8] [--requests 400] [--clips DIR] [--adapters fr,de,es]
                                     [--registry DIR] [--base offline|PATH] [--quantize int8|none] [--threads 2]
                                     [--rounds 2] [--modes sequential,cli-batch,serve-off,serve-on]

Requests cycle through the real clips of ``--clips`` (default tests/data/audio; any folder of audio files, e.g. a
Common Voice sample via ``$LORA_WHISPER_BENCH_CLIPS``), ``model=auto``, sent by ``--clients`` concurrent clients
(threads, raw multipart over HTTP/1.1) to a real uvicorn server in this process. Modes, on the same files and the
same engine:

- ``sequential``: ``engine.transcribe([file])`` one file at a time (the CLI, one file per run);
- ``cli-batch``: ``engine.transcribe(all files)`` in one call (the CLI given the whole list);
- ``serve, batching off``: the server with ``--max-batch 1``;
- ``serve, batching on``: the server with ``--max-batch`` (default 8) and ``--max-wait-ms`` (default 50).

Prints, per mode: requests, failures (asserted 0), wall time, throughput in audio seconds per second and its ratio
to ``sequential``, latency p50/p95/p99 (server modes), and RSS at start, after warm-up and at the end (growth after
warm-up). ``--adapters fr,de,es`` files small random LoRA adapters for the base (r=8, weights ~N(0, 0.01): outputs
stay near the base's) in a temporary registry, so routing, loads and swaps are exercised; quality is not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

AUDIO = Path(__file__).resolve().parents[1] / "tests" / "data" / "audio"


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def make_adapters(base, langs: list[str], registry) -> None:
    """Small random LoRA adapters for ``base`` (not trained: they exercise serving, not quality)."""
    import torch
    from peft import get_peft_model

    from lora_whisper.base import load_model
    from lora_whisper.lora import lora_config, save_adapter
    from lora_whisper.registry import AdapterRecord

    model = load_model(base.path, "none", "cpu")
    for k, lang in enumerate(langs):
        torch.manual_seed(k)
        peft_model = get_peft_model(model, lora_config("encoder+decoder", r=8, alpha=16), adapter_name=lang)
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.01)
        with tempfile.TemporaryDirectory() as tmp:
            save_adapter(peft_model, tmp, base.identity.hub_id, adapter_name=lang)
            registry.add(
                tmp,
                AdapterRecord(
                    name=f"{lang}-bench",
                    version=0,
                    language=lang,
                    base=base.identity.to_dict(),
                    lora={"r": 8, "alpha": 16, "scope": "encoder+decoder"},
                    source="bench_serve (random)",
                ),
            )
        model = peft_model.unload()


def percentile(xs: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(xs, q)) if xs else float("nan")


def load_test(url: str, payloads: list[tuple[str, bytes, float]], start: int, n: int, clients: int) -> dict:
    import httpx2 as httpx

    lat, failures, audio_s = [], [], 0.0
    lock = threading.Lock()
    local = threading.local()

    def one(k: int):
        nonlocal audio_s
        name, data, secs = payloads[k % len(payloads)]
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=600)
        t = time.perf_counter()
        try:
            r = local.client.post(
                url + "/v1/audio/transcriptions", files={"file": (name, data)}, data={"model": "auto"}
            )
            ok = r.status_code == 200 and "text" in r.json()
            why = f"{r.status_code} {r.text[:200]}"
        except Exception as e:  # noqa: BLE001 - count it, keep going
            ok, why = False, f"{type(e).__name__}: {e}"
        dt = time.perf_counter() - t
        with lock:
            if ok:
                lat.append(dt)
                audio_s += secs
            else:
                failures.append(why)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(start, start + n)))
    wall = time.perf_counter() - t0
    return {"wall": wall, "lat": lat, "failures": failures, "audio_s": audio_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=None, help="requests before measuring (default: --clients)")
    ap.add_argument("--clips", default=os.environ.get("LORA_WHISPER_BENCH_CLIPS") or str(AUDIO))
    ap.add_argument("--base", default="offline")
    ap.add_argument("--quantize", default="int8", choices=["int8", "none"])
    ap.add_argument("--registry", default=None, help="an adapter registry to serve (default: an empty temporary one)")
    ap.add_argument(
        "--adapters", default="fr,de,es", help="random adapters to file in the temporary registry ('' none)"
    )
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default="sequential,cli-batch,serve-off,serve-on")
    ap.add_argument("--rounds", type=int, default=2, help="interleave the modes in this many rounds")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()

    import torch

    from lora_whisper.audio import AUDIO_EXTENSIONS, AudioError, load_audio
    from lora_whisper.base import load_base, quiet_libraries
    from lora_whisper.engine import Engine, TranscribeOptions
    from lora_whisper.registry import Registry
    from lora_whisper.server import ServeOptions, bind_socket, create_app, make_server

    quiet_libraries()
    torch.set_num_threads(args.threads)
    files = sorted(f for f in Path(args.clips).rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS)
    payloads, arrays = [], []
    for f in files:
        try:
            a = load_audio(f)
        except AudioError as e:
            print(f"skip {e}")
            continue
        payloads.append((f.name, f.read_bytes(), len(a) / 16000))
        arrays.append((f.name, a))
    if not payloads:
        raise SystemExit(f"no audio files in {args.clips}")
    n, warm = args.requests, args.warmup if args.warmup is not None else args.clients
    rss0 = rss_mb()
    base = load_base(args.base, args.quantize, "cpu")
    tmp = tempfile.TemporaryDirectory()
    registry = Registry(args.registry or Path(tmp.name) / "adapters")
    if not args.registry and args.adapters:
        make_adapters(base, [x for x in args.adapters.split(",") if x], registry)
    engine = Engine(base, registry)
    modes = args.modes.split(",")
    clip_s = sum(p[2] for p in payloads)
    print(
        f"clips: {len(payloads)} files, {clip_s:.1f} s of audio, from {args.clips}; {n} requests, "
        f"{args.clients} clients, warm-up {warm}; base {args.base} ({args.quantize}), {args.threads} threads; "
        f"adapters: {[r.ref for r in registry.active()]}"
    )
    print(f"RSS at start {rss0:.0f} MB, with the base loaded {rss_mb():.0f} MB")
    names = {
        "sequential": "sequential (engine, 1 file/call)",
        "cli-batch": "cli-batch (engine, all files/call)",
        "serve-off": "serve, batching off (max-batch 1)",
        "serve-on": f"serve, batching on (max-batch {args.max_batch})",
    }
    bad = [m for m in modes if m not in names]
    if bad:
        raise SystemExit(f"unknown mode(s) {bad}: choose from {list(names)}")
    acc = {m: dict(mode=names[m], requests=0, failed=0, wall=0.0, audio_s=0.0, lat=[], batches=0) for m in modes}

    def engine_run(m: str, start: int, count: int) -> None:
        idx = range(start, start + count)
        items = [arrays[k % len(arrays)] for k in idx]
        t0, lat = time.perf_counter(), []
        if m == "sequential":
            for x in items:
                t = time.perf_counter()
                res = list(engine.transcribe([x], TranscribeOptions()))
                lat.append(time.perf_counter() - t)
                assert len(res) == 1 and hasattr(res[0], "text"), res
        else:
            res = list(engine.transcribe(items, TranscribeOptions()))
            assert len(res) == count and all(hasattr(r, "text") for r in res), res
        r = acc[m]
        r["wall"] += time.perf_counter() - t0
        r["audio_s"] += sum(payloads[k % len(payloads)][2] for k in idx)
        r["lat"] += lat
        r["requests"] += count
        r["batches"] = None

    def serve_run(m: str, start: int, count: int) -> None:
        max_batch = 1 if m == "serve-off" else args.max_batch
        opts = ServeOptions(
            port=0, max_batch=max_batch, max_wait=args.max_wait_ms / 1000, max_queue=max(64, 4 * n), access_log=False
        )
        app = create_app(engine, opts)
        server = make_server(app, opts, log_level="warning")
        sock = bind_socket("127.0.0.1", 0)
        th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        th.start()
        while not server.started:
            time.sleep(0.05)
        try:
            b0 = app.state.scheduler.batches
            res = load_test(f"http://127.0.0.1:{sock.getsockname()[1]}", payloads, start, count, args.clients)
            batches = app.state.scheduler.batches - b0
        finally:
            server.should_exit = True
            th.join(120)
            sock.close()
        for why in res["failures"][:5]:
            print(f"  failure: {why}")
        r = acc[m]
        r["wall"] += res["wall"]
        r["audio_s"] += res["audio_s"]
        r["lat"] += res["lat"]
        r["requests"] += count
        r["failed"] += len(res["failures"])
        r["batches"] += batches

    def run(m: str, start: int, count: int) -> None:
        if m in ("sequential", "cli-batch"):
            # in a worker thread, as the server's scheduler runs the engine: torch's thread settings differ between
            # the main thread and others (measured here: the same file 2.4x slower in the main thread on a busy
            # 2-core machine), and the comparison is about serving, not that
            with ThreadPoolExecutor(1) as one:
                one.submit(engine_run, m, start, count).result()
        else:
            serve_run(m, start, count)

    # warm-up every mode (adapters loaded, allocator grown), then rounds that interleave the modes, so a change in
    # the machine's load (2 shared cores) hits every mode alike
    for m in modes:
        run(m, 0, warm)
    for r in acc.values():
        r.update(requests=0, failed=0, wall=0.0, audio_s=0.0, lat=[], batches=0)
    rss_warm = rss_mb()
    per = [n // args.rounds + (1 if k < n % args.rounds else 0) for k in range(args.rounds)]
    start, rss_rounds = 0, []
    for k, count in enumerate(per):
        for m in modes:
            run(m, start, count)
            print(
                f"  round {k + 1}/{args.rounds} {names[m]}: {acc[m]['wall']:.1f} s so far, RSS {rss_mb():.0f} MB",
                flush=True,
            )
        start += count
        rss_rounds.append(rss_mb())
    rss_end = rss_mb()

    ref = acc.get("sequential") or next(iter(acc.values()))
    ref_tp = ref["audio_s"] / ref["wall"]
    head = "| mode | requests | failed | wall s | audio s/s | vs sequential | p50 s | p95 s | p99 s | engine calls |"
    print()
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    out = []
    for r in acc.values():
        tp = r["audio_s"] / r["wall"]
        p = [percentile(r["lat"], q) for q in (50, 95, 99)]
        lat = " | ".join(f"{x:.2f}" if r["lat"] else "-" for x in p)
        calls = r["batches"] if r["batches"] is not None else "-"
        print(
            f"| {r['mode']} | {r['requests']} | {r['failed']} | {r['wall']:.1f} | {tp:.2f} | {tp / ref_tp:.2f}x | {lat} | {calls} |"
        )
        out.append(
            {k: v for k, v in r.items() if k != "lat"} | {"throughput": tp, "p50": p[0], "p95": p[1], "p99": p[2]}
        )
    growth = (rss_end - rss_warm) / rss_warm
    print(
        f"\nRSS: start {rss0:.0f} MB, after the small warm-up {rss_warm:.0f} MB, end {rss_end:.0f} MB "
        f"({growth:+.1%}); after each round {[round(x) for x in rss_rounds]} MB"
    )
    if len(rss_rounds) > 1:
        # round 1 runs every mode at full size (batches of --max-batch, the whole list for cli-batch): the memory
        # high-water mark is reached there; growth after it is what would be a leak
        leak = (rss_rounds[-1] - rss_rounds[0]) / rss_rounds[0]
        print(f"RSS growth from the end of round 1 to the end: {leak:+.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps({"modes": out, "rss": [rss0, rss_warm, rss_end, rss_rounds]}, indent=2))
    failed = sum(r["failed"] for r in acc.values())
    assert failed == 0, f"{failed} failed requests"
    tmp.cleanup()


if __name__ == "__main__":
    main()
