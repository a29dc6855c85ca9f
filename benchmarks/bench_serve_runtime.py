"""`lora-whisper serve` on the ct2 runtime against the torch runtime: throughput, failures, server RSS over requests.

    python benchmarks/bench_serve_runtime.py [--requests 100] [--clients 4] [--clips tests/data/audio]
    python benchmarks/bench_serve_runtime.py --runtimes ct2,ct2:2,torch --requests 400   # ct2:2 = --workers 2
    python benchmarks/bench_serve_runtime.py --runtimes ct2:2,torch --requests 200 --rounds 4   # RSS after each round

Each runtime is a real ``lora-whisper --runtime R serve`` process (``bench_serve.ServerProcess``, given the runtime
through ``LORA_WHISPER_RUNTIME``) on an empty temporary registry; requests cycle through the clips (``model=auto``),
sent by ``--clients`` threads after a warm-up of ``--clients`` requests. Prints per runtime: requests, failures,
wall seconds, audio seconds per second, latency p50/p95, the server's RSS after the warm-up and at the end, and
whether SIGTERM ended it with 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_serve import ServerProcess, load_test, percentile, split_rounds  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--clips", default=str(Path(__file__).parents[1] / "tests" / "data" / "audio"))
    ap.add_argument("--runtimes", default="ct2,torch")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=1, help="read the server's RSS after each of this many rounds")
    a = ap.parse_args()

    from lora_whisper.transcribe.audio import AUDIO_EXTENSIONS, audio_info

    clips = sorted(p for p in Path(a.clips).iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS)
    payloads = [(p.name, p.read_bytes(), audio_info(p)) for p in clips]
    rows = []
    for rt in a.runtimes.split(","):
        # "ct2:2": the ct2 runtime with --workers 2 (two files of a micro-batch decoded at once)
        os.environ["LORA_WHISPER_RUNTIME"], _, workers = rt.partition(":")
        os.environ["LORA_WHISPER_WORKERS"] = workers or "1"
        with tempfile.TemporaryDirectory() as reg:
            server = ServerProcess(reg, "offline", "auto", a.max_batch, 50, 1000)
            server.wait_ready()
            load_test(server.url, payloads, 0, a.clients, a.clients)
            rss0 = server.rss_mb()
            r, series, start = None, [], a.clients
            for per in split_rounds(a.requests, a.rounds):
                part = load_test(server.url, payloads, start, per, a.clients)
                start += per
                series.append(server.rss_mb())
                r = part if r is None else {key: r[key] + part[key] for key in ("wall", "audio_s", "lat", "failures")}
            rss1 = series[-1]
            code = server.stop()
        rows.append((rt, r, rss0, rss1, code))
        if a.rounds > 1:
            print(f"  {rt}: RSS MB after warm-up {rss0:.0f}, after each round " + ", ".join(f"{x:.0f}" for x in series))
        print(f"  {rt}: {r['wall']:.1f} s, {len(r['failures'])} failed", file=sys.stderr, flush=True)
    print(f"\n{a.requests} requests, {a.clients} clients, clips of {a.clips}\n")
    print("| runtime | failed | wall s | audio s / s | p50 s | p95 s | RSS after warm-up MB | RSS at end MB | exit |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rt, r, rss0, rss1, code in rows:
        print(
            f"| {rt} | {len(r['failures'])} | {r['wall']:.1f} | {r['audio_s'] / r['wall']:.2f} | "
            f"{percentile(r['lat'], 50):.2f} | {percentile(r['lat'], 95):.2f} | {rss0:.0f} | {rss1:.0f} | {code} |"
        )


if __name__ == "__main__":
    main()
