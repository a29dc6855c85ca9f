"""`lora-whisper batch` on Ray Data against the plain engine and the `transcribe` CLI, on the same files.

    python benchmarks/bench_batch.py [--data DIR_OR_MANIFEST] [--limit N] [--workers 1,2] [--quantize int8]

Audio: by default the 10 real clips of tests/data/audio plus the 12 Common Voice clips of tests/data/cv-en
(``--data`` or ``LORA_WHISPER_BENCH_DATA`` takes another folder or manifest, e.g. a larger Common Voice extract).
Every run uses the same options (the engine's defaults, the base only: an empty registry) and is timed end to end
(process or Ray start, base loading, decoding, transcription); the model-only time of each is printed beside it.

Measured here, in this one script: files/s and audio seconds per second for (1) the engine in this process, with
all CPUs (the baseline) and with one thread (what an actor holding one CPU gets), (2) ``lora-whisper transcribe
--format json`` as a subprocess, (3) ``lora-whisper batch`` with 1..N actors, and the
ratios to (1). Projected (not measured): the scaling with N GPU actors, from the measured parts (fixed start-up
cost, per-file decode cost on CPU, per-file model cost of one actor), written out as a formula and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = [ROOT / "tests" / "data" / "audio", ROOT / "tests" / "data" / "cv-en" / "clips"]


def _files(args) -> list[Path]:
    from lora_whisper.transcribe.audio import expand_inputs

    src = args.data or os.environ.get("LORA_WHISPER_BENCH_DATA")
    if not src:
        files = expand_inputs([str(d) for d in DEFAULT_DATA])
    else:
        p = Path(src)
        if p.suffix in (".jsonl", ".csv"):
            from lora_whisper.batch.inputs import collect_inputs
            from lora_whisper.batch.options import BatchOptions

            files = [Path(i.path) for i in collect_inputs([str(p)], BatchOptions(out=Path("."))) if i.path]
        else:
            files = expand_inputs([str(p)])
    return [Path(f) for f in files][: args.limit] if args.limit else [Path(f) for f in files]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=None, help="Folder or manifest (default: tests/data/audio + tests/data/cv-en).")
    ap.add_argument("--limit", type=int, default=None, help="At most this many files.")
    ap.add_argument("--workers", default="1,2", help="Actor counts to run, e.g. 1,2.")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--quantize", default="int8", choices=["int8", "none"])
    ap.add_argument(
        "--threads",
        default=f"{os.cpu_count() or 2},1",
        help="torch threads of the in-process engine runs; the first is the baseline (1 = what a one-CPU actor gets).",
    )
    ap.add_argument("--skip-cli", action="store_true", help="Leave out the transcribe CLI run.")
    args = ap.parse_args()

    import torch

    from lora_whisper.base.loading import load_base, quiet_libraries
    from lora_whisper.batch.options import BatchOptions, EngineSpec
    from lora_whisper.batch.pipeline import run_batch
    from lora_whisper.batch.resume import read_output
    from lora_whisper.transcribe.audio import load_audio
    from lora_whisper.transcribe.engine import Engine, TranscribeOptions

    quiet_libraries()
    files = _files(args)
    t = time.perf_counter()
    audio_s = sum(len(load_audio(f)) / 16000 for f in files)
    decode_per_file = (time.perf_counter() - t) / len(files)
    print(f"{len(files)} files, {audio_s:.1f} s of audio; {os.cpu_count()} CPUs; base offline ({args.quantize})")
    print(f"decode (soundfile + soxr, one CPU): {1000 * decode_per_file:.1f} ms per file")
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    empty_reg = work / "adapters"
    empty_reg.mkdir()
    options = TranscribeOptions(batch_size=args.batch_size)
    results: dict[str, dict] = {}

    # (1) the engine in this process (the first thread count is the baseline; the runs share one base load)
    t = time.perf_counter()
    engine = Engine(load_base("offline", args.quantize, "cpu"))
    load_s = time.perf_counter() - t
    base_rows, baseline = None, None
    for threads in [int(x) for x in args.threads.split(",") if x.strip()]:
        torch.set_num_threads(threads)
        t = time.perf_counter()
        rows = [r.to_dict() for r in engine.transcribe(files, options)]
        model_s = time.perf_counter() - t
        base_rows = base_rows or rows
        baseline = baseline or f"engine, {threads} thread(s)"
        results[f"engine, {threads} thread(s)"] = {
            "wall": load_s + model_s,
            "model": model_s,
            "same": rows == base_rows,
        }
    torch.set_num_threads(os.cpu_count() or 2)
    del engine

    # (2) the transcribe CLI (a subprocess: Python start and base load included)
    if not args.skip_cli:
        cli = shutil.which("lora-whisper") or str(Path(sys.executable).parent / "lora-whisper")
        cmd = [cli, "--quantize", args.quantize, "--registry", str(empty_reg), "transcribe", *map(str, files)]
        t = time.perf_counter()
        proc = subprocess.run(
            [*cmd, "--format", "json", "--batch-size", str(args.batch_size)], capture_output=True, text=True
        )
        cli_rows = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
        results["transcribe CLI"] = {"wall": time.perf_counter() - t, "model": None, "same": cli_rows == base_rows}

    # (3) batch on Ray Data, 1..N actors (a local Ray started and stopped by each run: its start is in the wall time)
    spec = EngineSpec(base="offline", quantize=args.quantize, device="cpu", registry=str(empty_reg))
    for n in [int(x) for x in args.workers.split(",") if x.strip()]:
        opts = BatchOptions(out=work / f"out-{n}", num_workers=n, batch_size=args.batch_size, progress_every=1e9)
        s = run_batch([str(f) for f in files], opts, spec, options)
        results[f"batch, {n} actor(s)"] = {
            "wall": s.wall_seconds,
            "model": s.transcribe_seconds,
            "same": read_output(s.output) == base_rows,
        }

    base = results[baseline]["wall"]
    print(f"\nMEASURED (this machine, one script; ratio = throughput / that of '{baseline}', end to end)")
    print(f"{'run':24} {'wall s':>8} {'files/s':>8} {'audio s/s':>9} {'ratio':>6}   model-only s")
    for name, r in results.items():
        model = "" if r["model"] is None else f"{r['model']:.1f}"
        print(
            f"{name:24} {r['wall']:8.1f} {len(files) / r['wall']:8.2f} {audio_s / r['wall']:9.2f} {base / r['wall']:6.2f}"
            f"   {model}"
        )
    print(f"rows equal to those of '{baseline}': " + ", ".join(f"{k}: {r['same']}" for k, r in results.items()))

    # projection: fixed start + decode (CPU tasks, in parallel with the model) + model work split over N actors
    one = results.get("batch, 1 actor(s)")
    if one:
        per_file = one["model"] / len(files)  # one actor, one CPU thread, pipeline included
        fixed = one["wall"] - one["model"]
        print(
            "\nPROJECTED (not measured: no GPU here). With N actors, each F times faster per file than the one CPU actor"
        )
        print(f"measured above ({per_file:.2f} s/file), C CPUs decoding at {decode_per_file * 1000:.0f} ms/file:")
        print("  wall(N) ~= start + max(files x decode / C, files x model_per_file / (F x N))")
        print(f"  start ~= {fixed:.0f} s here (Ray start + actor base load; on a cluster: the slowest actor's load)")
        print(f"  {'N':>3} {'F':>4} {'C':>4} {'files/s (model-bound)':>22} {'decode cap files/s':>19}")
        for n_act, f, c in ((1, 1, 2), (2, 1, 2), (1, 20, 8), (4, 20, 32), (8, 20, 64), (16, 20, 128)):
            model_rate = f * n_act / per_file
            decode_cap = c / decode_per_file
            print(f"  {n_act:>3} {f:>4} {c:>4} {model_rate:>22.1f} {decode_cap:>19.1f}")
        print(
            "  F ~= 20 is an assumption for whisper-base on one data-centre GPU vs one CPU thread, to be measured with"
        )
        print(
            "  benchmarks/gpu_check.sh; the table only shows where decoding (CPU) or the model (GPU) becomes the limit."
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
