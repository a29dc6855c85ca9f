"""Short clips (one 30 s window each): lora-whisper vs faster-whisper on the same files and weights, one run.

    python benchmarks/bench_short.py [--speech DIR] [--audio tests/data/audio] [--threads 2] [--batch-size 8]

Sets: the clips of ``--audio`` (a folder with manifest.jsonl rows audio/text/lang) and, with ``--speech``, the
``dev`` rows of a Common Voice-style manifest (audio/text/lang/split). Both systems run as a user would run them:
language detected from the audio, greedy decoding, Whisper's defaults (timestamps, temperature fallback), no VAD;
ours batches the clips (``engine.transcribe(list)``), faster-whisper takes one at a time (its API). Prints per set:
pooled WER (Whisper's normalizers; errors over reference words), language right, compute seconds and their ratio to
faster-whisper int8, all in this one process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABEL = {"none": "float32", "dynamic": "dynamic int8", "int8": "8-bit (bitsandbytes)"}
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_longform import score  # noqa: E402  (the same scoring as the long-form table)


def load_set(folder: Path, split: str | None):
    from lora_whisper.transcribe.audio import load_audio

    rows = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines() if x.strip()]
    if split:
        rows = [r for r in rows if r.get("split") == split]
    return [(r["audio"], load_audio(folder / r["audio"]), r["lang"], r["text"]) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--speech", type=Path, default=None, help="folder with manifest.jsonl (split=dev rows used)")
    ap.add_argument("--audio", type=Path, default=ROOT / "tests" / "data" / "audio")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--quantize", default="none", help="comma list of none, dynamic, int8: one engine each, same run")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch
    from faster_whisper import WhisperModel

    from lora_whisper.base.loading import load_base, offline_ct2_path, quiet_libraries
    from lora_whisper.transcribe.engine import Engine, TranscribeOptions

    quiet_libraries()
    torch.set_num_threads(args.threads)
    sets = {args.audio.name: load_set(args.audio, None)}
    if args.speech is not None:
        sets[f"{args.speech.name} dev"] = load_set(args.speech, "dev")
    fw = WhisperModel(str(offline_ct2_path()), device="cpu", compute_type="int8", cpu_threads=args.threads)
    engines = {q: Engine(load_base("offline", quantize=q, device="cpu")) for q in args.quantize.split(",")}
    # warm all (first-call costs are not what is compared)
    _, a0, _, _ = next(iter(sets.values()))[0]
    list(fw.transcribe(a0, beam_size=1)[0])
    for engine in engines.values():
        list(engine.transcribe([("warm", a0)], TranscribeOptions(adapter="none")))

    def run_fw(clips):
        out = []
        for _, a, _, _ in clips:
            segs, info = fw.transcribe(a, beam_size=1)
            out.append((" ".join(s.text.strip() for s in segs), info.language))
        return out

    def ours(engine):
        def run_ours(clips):
            res = engine.transcribe(
                [(n, a) for n, a, _, _ in clips], TranscribeOptions(adapter="none", batch_size=args.batch_size)
            )
            return [(r.text, r.language) for r in res]

        return run_ours

    systems = [("faster-whisper int8", run_fw)] + [(f"lora-whisper {LABEL[q]}", ours(e)) for q, e in engines.items()]

    results = []
    for set_name, clips in sets.items():
        secs = sum(len(a) for _, a, _, _ in clips) / 16000
        for system, fn in systems:
            t = time.perf_counter()
            out = fn(clips)
            dt = time.perf_counter() - t
            errs = words = right = 0
            for (_, _, lang, ref), (hyp, got) in zip(clips, out):
                e, n = score(ref, hyp, lang)
                errs, words, right = errs + e, words + n, right + (got == lang)
            row = dict(
                set=set_name,
                clips=len(clips),
                audio_s=round(secs, 1),
                system=system,
                wer=round(errs / max(words, 1), 4),
                lang_right=right,
                seconds=round(dt, 1),
            )
            results.append(row)
            print(json.dumps(row), flush=True)

    print("\n| set | clips | system | WER | language right | seconds | x faster-whisper |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        ref = next(x for x in results if x["set"] == r["set"] and x["system"].startswith("faster"))
        print(
            f"| {r['set']} | {r['clips']} | {r['system']} | {r['wer']:.3f} | {r['lang_right']}/{r['clips']} "
            f"| {r['seconds']:.1f} | {r['seconds'] / ref['seconds']:.2f}x |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
