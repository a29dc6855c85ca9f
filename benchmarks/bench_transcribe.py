"""Transcription speed: lora-whisper (transformers, fp32 and 8-bit) vs faster-whisper int8 on the same weights.

    python benchmarks/bench_transcribe.py [--reps 2] [--threads 2]

Audio: the 10 real clips in tests/data/audio (6 languages). Greedy decoding, no timestamps. "fixed" gives each
clip its language; "auto" detects it. Prints real-time factors (seconds of compute per second of audio) and the
ratio to faster-whisper int8 with the language fixed, all measured in this one process.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

AUDIO = Path(__file__).resolve().parents[1] / "tests" / "data" / "audio"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from faster_whisper import WhisperModel, decode_audio

    from lora_whisper.base.loading import load_base, offline_ct2_path, quiet_libraries
    from lora_whisper.transcribe.audio import load_audio
    from lora_whisper.transcribe.engine import Engine, TranscribeOptions

    quiet_libraries()
    torch.set_num_threads(args.threads)
    rows = [json.loads(x) for x in (AUDIO / "manifest.jsonl").read_text().splitlines() if x.strip()]
    files = [AUDIO / r["audio"] for r in rows]
    langs = [r["lang"] for r in rows]
    seconds = sum(len(load_audio(f)) / 16000 for f in files)

    def timed(fn) -> float:
        fn()  # warm-up
        best = float("inf")
        for _ in range(args.reps):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        return best

    results = {}
    fw = WhisperModel(str(offline_ct2_path()), device="cpu", compute_type="int8", cpu_threads=args.threads)
    audios = [decode_audio(str(f)) for f in files]

    def run_fw(fixed: bool):
        for a, lang in zip(audios, langs):
            segs, _ = fw.transcribe(
                a,
                language=lang if fixed else None,
                beam_size=1,
                without_timestamps=True,
                condition_on_previous_text=False,
                temperature=0.0,
            )
            list(segs)

    results["faster-whisper int8, fixed"] = timed(lambda: run_fw(True))
    results["faster-whisper int8, auto"] = timed(lambda: run_fw(False))
    fw = None

    for quantize in ("none", "int8"):
        engine = Engine(load_base("offline", quantize=quantize, device="cpu"))
        for bs in (1, 8):

            def run(fixed: bool, engine=engine, bs=bs):
                if fixed:
                    for lang in sorted(set(langs)):
                        sel = [f for f, x in zip(files, langs) if x == lang]
                        list(engine.transcribe(sel, TranscribeOptions(language=lang, adapter="none", batch_size=bs)))
                else:
                    list(engine.transcribe(files, TranscribeOptions(adapter="none", batch_size=bs)))

            name = f"lora-whisper {'fp32' if quantize == 'none' else '8-bit'} batch {bs}"
            results[f"{name}, fixed"] = timed(lambda run=run: run(True))
            results[f"{name}, auto"] = timed(lambda run=run: run(False))
        del engine

    ref = results["faster-whisper int8, fixed"]
    print(f"audio: {len(files)} clips, {seconds:.1f} s; threads {args.threads}; best of {args.reps}")
    print(f"{'system':<44}{'seconds':>9}{'RTF':>8}{'x fw-int8 fixed':>17}")
    for name, t in results.items():
        print(f"{name:<44}{t:>9.2f}{t / seconds:>8.3f}{t / ref:>17.2f}")


if __name__ == "__main__":
    main()
