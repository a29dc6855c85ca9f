"""Short clips on the torch runtime: pad the audio before the log-mel, or pad the log-mel with zeros?

    python benchmarks/bench_padding.py tests/data/audio/manifest.jsonl
    python benchmarks/bench_padding.py /data/cv-en/manifest.jsonl --split dev

transformers' feature extractor pads a clip under 30 s with silence and then computes the log-mel (the padding
frames are the log-mel of silence); openai-whisper's ``transcribe()`` and faster-whisper compute the log-mel of the
clip alone and pad it with zero frames. This decodes the same clips with the torch runtime both ways (language
detected, as ``transcribe`` decodes: greedy, temperature fallback, timestamps) and with faster-whisper float32 on the
same base, and prints WER after Whisper's normalizers and how often each way gives faster-whisper's exact text.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench_runtime import wer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", type=Path, help="JSONL with audio (relative path), text, lang[, split]")
    ap.add_argument("--split", default=None)
    ap.add_argument("--max", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()

    rows = [json.loads(x) for x in a.manifest.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if a.split is None or r.get("split") == a.split][: a.max]
    files = [a.manifest.parent / r["audio"] for r in rows]

    from faster_whisper import WhisperModel

    from lora_whisper.transcribe.audio import load_audio
    from lora_whisper.transcribe.decoding import Decoder
    from lora_whisper.transcribe.engine import TranscribeOptions
    from lora_whisper.transcribe.runtime import build_engine
    from lora_whisper.transcribe.runtime_ct2 import fw_options, load_ct2_base

    options = TranscribeOptions(adapter="none")
    audios = [load_audio(f) for f in files]
    ct2 = load_ct2_base("offline", "none", "cpu")
    fw = WhisperModel(str(ct2.ct2_path), device="cpu", compute_type="float32", cpu_threads=a.threads)
    fw_hyps = []
    for audio in audios:
        segs, _ = fw.transcribe(audio, **fw_options(options, None))
        fw_hyps.append(" ".join(s.text.strip() for s in segs if s.text.strip()))
    del fw
    table = [("faster-whisper float32", None, fw_hyps)]
    eng = build_engine("offline", "auto", "cpu", None, runtime="torch", threads=a.threads)
    for padding in ("audio", "features"):
        Decoder.padding = padding
        t = time.perf_counter()
        hyps = [r.text for r in eng.transcribe(files, options)]
        table.append((f"torch runtime, padding={padding}", time.perf_counter() - t, hyps))
        print(f"  {padding}: {table[-1][1]:.0f} s", file=sys.stderr, flush=True)

    print(f"\n{len(files)} clips of {a.manifest}{f' ({a.split})' if a.split else ''}, language detected\n")
    print("| decoding | WER | text equal to faster-whisper float32 | seconds |")
    print("|---|---|---|---|")
    for name, t, hyps in table:
        w = wer([(r["lang"], r["text"], h) for r, h in zip(rows, hyps)])
        same = sum(x == y for x, y in zip(hyps, fw_hyps))
        print(f"| {name} | {w:.3f} | {same}/{len(files)} | {'' if t is None else f'{t:.0f}'} |")


if __name__ == "__main__":
    main()
