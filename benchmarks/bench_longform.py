"""Long-form decoding on real recordings: lora-whisper vs faster-whisper on the same files and weights, one run.

    python benchmarks/bench_longform.py --speech DIR [--audio tests/data/audio] [--threads 2] [--quantize none,dynamic]
    python benchmarks/bench_longform.py --speech DIR --systems fw,ct2 --modes sequential   # the CTranslate2 runtime
    python benchmarks/bench_longform.py --speech DIR --systems ct2 --modes sequential      # alone: its peak RSS

Long files are real clips joined with 0.5 s of silence: Common Voice speakers of a manifest's ``dev`` split
(``--speech``: a folder with manifest.jsonl rows audio/text/lang/split/speaker) grouped in speaker order into files of
at least ``--min-minutes``, plus the clips of ``--audio`` joined into one multilingual file. For each system and mode
(sequential, sequential + VAD, batched + VAD) it prints WER (Whisper's normalizers), compute seconds and the ratio
to faster-whisper int8 sequential, and the median distance from each real clip boundary to the nearest cue boundary.
Greedy decoding, Whisper's defaults (timestamps, previous-text prompt, temperature fallback) on both sides.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GAP = 0.5
LABEL = {"none": "float32", "dynamic": "dynamic int8", "int8": "8-bit (bitsandbytes)", "ct2": "--runtime ct2 (int8)"}


def build_files(speech: Path | None, audio: Path, min_minutes: float, max_files: int):
    from lora_whisper.transcribe.audio import load_audio

    files = []  # (name, samples, language, reference text, [clip boundary times])

    def join(rows, base):
        parts, refs, bounds, t = [], [], [], 0.0
        for r in rows:
            a = load_audio(base / r["audio"])
            parts += [a, np.zeros(int(GAP * 16000), np.float32)]
            refs.append(r["text"])
            t += len(a) / 16000
            bounds.append(t + GAP / 2)
            t += GAP
        return np.concatenate(parts), " ".join(refs), bounds[:-1]

    if speech is not None:
        rows = [json.loads(x) for x in (speech / "manifest.jsonl").read_text().splitlines() if x.strip()]
        rows = [r for r in rows if r.get("split") == "dev"]
        rows.sort(key=lambda r: (r["speaker"], r["audio"]))
        cur, dur = [], 0.0
        for r in rows:
            cur.append(r)
            dur += r["duration_s"] + GAP
            if dur >= min_minutes * 60 and len(files) < max_files:
                a, ref, b = join(cur, speech)
                files.append((f"cv-en-long-{len(files)}", a, "en", ref, b))
                cur, dur = [], 0.0
    rows = [json.loads(x) for x in (audio / "manifest.jsonl").read_text().splitlines() if x.strip()]
    a, ref, b = join(rows, audio)
    files.append(("clips-joined-multilingual", a, None, ref, b))
    return files


def score(ref: str, hyp: str, lang: str | None) -> tuple[int, int]:
    import jiwer

    from lora_whisper.scoring import normalize

    r, h = normalize(ref, lang or "xx"), normalize(hyp, lang or "xx")
    out = jiwer.process_words(r, h)
    return out.substitutions + out.deletions + out.insertions, len(r.split())


def boundary_distance(bounds: list[float], segs: list[tuple[float, float]]) -> float | None:
    edges = sorted({t for s in segs for t in s})
    if not edges or not bounds:
        return None
    return statistics.median(min(abs(b - e) for e in edges) for b in bounds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--speech", type=Path, default=None, help="folder with manifest.jsonl (split=dev rows used)")
    ap.add_argument("--audio", type=Path, default=ROOT / "tests" / "data" / "audio")
    ap.add_argument("--min-minutes", type=float, default=5.0)
    ap.add_argument("--max-files", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quantize", default="none", help="comma list of none, dynamic, int8: one engine each, same run")
    ap.add_argument("--modes", default="sequential,sequential+vad,batched+vad")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument(
        "--systems",
        default="fw,torch",
        help="comma list of fw (faster-whisper int8), ct2 (lora-whisper --runtime ct2, int8), torch (one engine per "
        "--quantize); run one alone for its process's peak RSS, printed at the end",
    )
    args = ap.parse_args()
    systems = args.systems.split(",")

    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from lora_whisper.base.loading import load_base, offline_ct2_path, quiet_libraries
    from lora_whisper.transcribe.engine import Engine, TranscribeOptions

    quiet_libraries()
    if "torch" in systems:  # a ct2 or fw run alone never imports torch (its peak RSS is its own)
        import torch

        torch.set_num_threads(args.threads)
    files = build_files(args.speech, args.audio, args.min_minutes, args.max_files)
    total = sum(len(a) for _, a, *_ in files) / 16000
    print(
        f"{len(files)} files, {total / 60:.1f} min of audio: "
        + ", ".join(f"{n} {len(a) / 16000:.0f}s" for n, a, *_ in files)
    )
    modes = args.modes.split(",")
    results = []

    def run(system, mode, fn):
        errs = words = 0
        dists, t = [], 0.0
        per_file, per_file_s = {}, {}
        for name, a, lang, ref, bounds in files:
            t0 = time.perf_counter()
            text, segs = fn(name, a, lang)
            dt = time.perf_counter() - t0
            t += dt
            e, n = score(ref, text, lang)
            errs, words = errs + e, words + n
            per_file[name] = round(e / max(n, 1), 3)
            per_file_s[name] = round(dt, 1)
            d = boundary_distance(bounds, segs)
            if d is not None:
                dists.append(d)
        row = {
            "system": system,
            "mode": mode,
            "wer": round(errs / max(words, 1), 4),
            "seconds": round(t, 1),
            "boundary_median_s": round(statistics.median(dists), 2) if dists else None,
            "per_file": per_file,
            "per_file_seconds": per_file_s,
        }
        results.append(row)
        print(json.dumps(row), flush=True)

    if "fw" in systems:
        fw = WhisperModel(str(offline_ct2_path()), device="cpu", compute_type="int8", cpu_threads=args.threads)
        batched = BatchedInferencePipeline(fw)

    def fw_fn(vad: bool, batch: bool):
        def fn(name, a, lang):
            if batch:
                segs, _ = batched.transcribe(a, language=lang, beam_size=1, batch_size=args.batch_size)
            else:
                segs, _ = fw.transcribe(a, language=lang, beam_size=1, vad_filter=vad)
            segs = list(segs)
            return " ".join(s.text.strip() for s in segs), [(s.start, s.end) for s in segs]

        return fn

    engines = {}
    if "ct2" in systems:
        from lora_whisper.transcribe.runtime import build_engine

        engines["ct2"] = build_engine("offline", "auto", "cpu", None, runtime="ct2", threads=args.threads)
    if "torch" in systems:
        engines |= {q: Engine(load_base("offline", quantize=q, device="cpu")) for q in args.quantize.split(",")}

    def ours_fn(engine, vad: bool, batch: bool):
        def fn(name, a, lang):
            opts = TranscribeOptions(
                language=lang,
                adapter="none",
                vad=vad,
                long_form="batched" if batch else "sequential",
                batch_size=args.batch_size,
            )
            (res,) = engine.transcribe([(name, a)], opts)
            return res.text, [(s.start, s.end) for s in res.segments]

        return fn

    for mode in modes:
        vad, batch = "vad" in mode, mode.startswith("batched")
        if "fw" in systems:
            run("faster-whisper int8", mode, fw_fn(vad, batch))
        for q, engine in engines.items():
            run(f"lora-whisper {LABEL[q]}", mode, ours_fn(engine, vad, batch))

    base = next((r["seconds"] for r in results if r["system"].startswith("faster") and r["mode"] == "sequential"), None)
    names = [f[0] for f in files]
    print("\n| system | mode | WER | " + " | ".join(names) + " | seconds | x fw sequential | boundary |")
    print("|---" * (len(names) + 6) + "|")
    for r in results:
        ratio = f"{r['seconds'] / base:.2f}" if base else "-"
        b = "-" if r["boundary_median_s"] is None else f"{r['boundary_median_s']:.2f} s"
        cells = [f"{r['per_file'][n]:.3f} ({r['per_file_seconds'][n]:.0f} s)" for n in names]
        print(
            f"| {r['system']} | {r['mode']} | {r['wer']:.3f} | "
            + " | ".join(cells)
            + f" | {r['seconds']:.1f} | {ratio} | {b} |"
        )
    import resource

    print(
        f"\npeak RSS of this process ({args.systems}): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
