"""A trained adapter on both runtimes: time against faster-whisper on the merged model, WER against torch.

    python benchmarks/bench_adapter_runtime.py --registry adapters --adapter fa-commonvoice --manifest FA.jsonl
    python benchmarks/bench_adapter_runtime.py --registry adapters --adapter fr-medical --synthetic fr-medical

The adapter is compiled ahead (``adapters compile``), then the same clips, language forced, adapter forced, are
decoded in one process, one thread each, with the same options (``transcribe``'s: greedy, temperature fallback,
timestamps, previous-text prompt):
  1. faster-whisper int8 loading the compiled folder (the adapter merged into the base) directly;
  2. ``lora-whisper --runtime ct2`` (the engine: routing bookkeeping, the compiled model from its LRU);
  3. ``lora-whisper --runtime torch`` (float32 base + the peft adapter, unmerged).
Prints seconds and the ct2 / faster-whisper ratio, WER / CER (Whisper's basic normalizer) and the ct2 / torch WER
ratio. Clips: the manifest's dev rows (``--max``), or, with ``--synthetic CORPUS``, held-out espeak-ng sentences of
that corpus (other voices and sentences than training).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def clips(a) -> list[tuple[str, object, str]]:
    """(id, audio, reference) rows."""
    from lora_whisper.transcribe.audio import load_audio

    if a.manifest:
        rows = [json.loads(x) for x in Path(a.manifest).read_text().splitlines() if x.strip()]
        rows = [r for r in rows if r.get("split") == "dev"][: a.max]
        return [(r["audio"], load_audio(Path(a.manifest).parent / r["audio"]), r["text"]) for r in rows]
    from lora_whisper.train.recipe import find_recipe, load_recipe
    from lora_whisper.train.trainer import load_splits

    recipe = load_recipe(find_recipe(a.language, "medical"), [f"data.max_test_out={a.max}"])
    _, held = load_splits(recipe)
    return [(e.id, e.load(), e.text) for e in held[0].data.examples[: a.max]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--registry", default="adapters")
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--manifest", default=None)
    ap.add_argument("--synthetic", default=None, help="a corpus name: held-out synthetic clips of it")
    ap.add_argument("--max", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--quantize", default="auto", choices=["auto", "none"], help="ct2 side: int8 (auto) or float32 (none)"
    )
    a = ap.parse_args()

    from faster_whisper import WhisperModel

    from lora_whisper.adapters.registry import Registry
    from lora_whisper.scoring import score
    from lora_whisper.transcribe.engine import TranscribeOptions
    from lora_whisper.transcribe.runtime import build_engine
    from lora_whisper.transcribe.runtime_ct2 import fw_options

    reg = Registry(a.registry)
    rec = reg.get(a.adapter)
    a.language = rec.language
    data = clips(a)
    refs = [r for _, _, r in data]
    opts = TranscribeOptions(adapter=rec.ref, language=rec.language)
    ct2 = build_engine("offline", a.quantize, "cpu", reg, runtime="ct2", threads=a.threads)
    compute = "float32" if a.quantize == "none" else "int8"
    compiled = ct2.runtime.compile(rec)
    rows = []

    fw = WhisperModel(str(compiled.path), device="cpu", compute_type=compute, cpu_threads=a.threads)
    fw.transcribe(data[0][1][:16000], **fw_options(opts, rec.language))
    t = time.perf_counter()
    hyps = []
    for _, audio, _ in data:
        segs, _ = fw.transcribe(audio, **fw_options(opts, rec.language))
        hyps.append(" ".join(s.text.strip() for s in segs if s.text.strip()))
    rows.append((f"faster-whisper {compute} on the compiled (merged) folder", time.perf_counter() - t, hyps))
    del fw

    list(ct2.transcribe([("warm", data[0][1][:16000])], opts))
    t = time.perf_counter()
    hyps = [r.text for r in ct2.transcribe([(i, au) for i, au, _ in data], opts)]
    rows.append((f"lora-whisper --runtime ct2, {rec.ref} routed", time.perf_counter() - t, hyps))
    del ct2

    eng = build_engine("offline", "auto", "cpu", reg, runtime="torch", threads=a.threads)
    list(eng.transcribe([("warm", data[0][1][:16000])], opts))
    t = time.perf_counter()
    hyps = [r.text for r in eng.transcribe([(i, au) for i, au, _ in data], opts)]
    rows.append((f"lora-whisper --runtime torch, {rec.ref} (peft, unmerged)", time.perf_counter() - t, hyps))

    fw_t, torch_wer = rows[0][1], score(refs, rows[2][2], rec.language).wer
    print(f"\n{len(data)} clips, {rec.language} forced, adapter {rec.ref}, {a.threads} thread(s)\n")
    print("| system | seconds | x faster-whisper merged | WER | CER | WER / torch's |")
    print("|---|---|---|---|---|---|")
    for name, sec, hyps in rows:
        s = score(refs, hyps, rec.language)
        print(f"| {name} | {sec:.1f} | {sec / fw_t:.2f} | {s.wer:.3f} | {s.cer:.3f} | {s.wer / torch_wer:.3f} |")
    same = sum(x == y for x, y in zip(rows[0][2], rows[1][2]))
    print(f"\nct2 runtime text equal to faster-whisper on the merged folder: {same}/{len(data)}")


if __name__ == "__main__":
    main()
