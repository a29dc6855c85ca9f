"""Peak memory of `lora-whisper transcribe` against the audio's length: a 1-minute file vs a 60-minute file.

    python benchmarks/bench_memory.py [--clips tests/data/cv-en-long] [--minutes 1,60] [--vad]

Each file is real speech: the clips of ``--clips`` (a folder with manifest.jsonl rows ``audio``) joined with 0.5 s
of silence and repeated until the length is reached, written as 16 kHz WAV. Each length is transcribed by the real
CLI (``lora-whisper transcribe FILE --language en --adapter none --format json``, default options: sequential
long-form with timestamps, previous-text prompt and fallback; ``--vad`` adds Silero VAD) in its own process; the
peak resident set (``ru_maxrss`` of that process, from ``os.wait4``) and the wall time are printed, with the ratio of
each peak to the shortest file's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GAP = 0.5


def joined(clips: Path, minutes: float, out: Path) -> float:
    import soundfile as sf

    from lora_whisper.transcribe.audio import load_audio

    rows = [json.loads(x) for x in (clips / "manifest.jsonl").read_text().splitlines() if x.strip()]
    parts = [load_audio(clips / r["audio"]) for r in rows]
    gap = np.zeros(int(GAP * 16000), np.float32)
    target, n = int(minutes * 60 * 16000), 0
    with sf.SoundFile(out, "w", samplerate=16000, channels=1, subtype="PCM_16") as f:
        while n < target:  # written piece by piece: this script's memory must not matter either
            for a in parts:
                a = a[: target - n]
                f.write(a)
                f.write(gap)
                n += len(a) + len(gap)
                if n >= target:
                    break
    return n / 16000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=Path, default=ROOT / "tests" / "data" / "cv-en-long")
    ap.add_argument("--minutes", default="1,60")
    ap.add_argument("--vad", action="store_true")
    ap.add_argument("--keep", type=Path, default=None, help="write the transcripts here")
    args = ap.parse_args()

    exe = Path(sys.executable).with_name("lora-whisper")
    cmd0 = [str(exe)] if exe.exists() else [sys.executable, "-c", "from lora_whisper.cli import main; main()"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        reg = Path(tmp) / "adapters"
        for m in [float(x) for x in args.minutes.split(",")]:
            wav = Path(tmp) / f"joined-{m:g}min.wav"
            secs = joined(args.clips, m, wav)
            out = args.keep or Path(tmp) / "out"
            cmd = cmd0 + ["--registry", str(reg), "transcribe", str(wav), "--language", "en", "--adapter", "none"]
            cmd += ["--format", "json", "--out", str(out)] + (["--vad"] if args.vad else [])
            t = time.perf_counter()
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            _, status, usage = os.wait4(p.pid, 0)
            wall = time.perf_counter() - t
            err = p.stderr.read().decode(errors="replace")
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
            segs = json.loads((out / f"{wav.stem}.json").read_text())["segments"]
            row = dict(minutes=m, audio_s=round(secs, 1), peak_rss_mb=round(usage.ru_maxrss / 1024), wall_s=round(wall))
            row["segments"] = len(segs)
            rows.append(row)
            print(json.dumps(row), flush=True)
    ref = rows[0]["peak_rss_mb"]
    print(f"\n| audio | segments | peak RSS | x {rows[0]['minutes']:g}-min file | wall |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['minutes']:g} min | {r['segments']} | {r['peak_rss_mb']} MB | {r['peak_rss_mb'] / ref:.2f}x "
            f"| {r['wall_s']} s |"
        )


if __name__ == "__main__":
    main()
