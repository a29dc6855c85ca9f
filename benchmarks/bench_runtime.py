"""Time and WER of faster-whisper int8 vs lora-whisper --runtime ct2 vs --runtime torch, in one process.

    python benchmarks/bench_runtime.py tests/data/audio --threads 1

Every system decodes the same files with the same options (greedy, Whisper's temperature fallback, timestamps,
previous-text prompt; language detected). Then, on a temporary registry with two random LoRA adapters on the base
(r=32, encoder+decoder q/v, like fr-medical): the first compile of an adapter (merge in float32 + CTranslate2 int8
conversion), the switch between two compiled adapters (cache size 1: a model load; cache size 2: resident), and a
run with an adapter forced against faster-whisper loading the compiled folder (the merged model) directly.

References come from the folder's manifest.jsonl (``audio``, ``lang``, ``text``); WER is pooled over all files after
Whisper's normalizers (characters for zh/ja/ko/th). Absolute seconds depend on the machine; compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def wer(rows: list[tuple[str, str, str]]) -> float:
    import jiwer

    from lora_whisper.scoring import CHARACTER_LANGUAGES, normalize

    refs, hyps = [], []
    for lang, ref, hyp in rows:
        r, h = normalize(ref, lang), normalize(hyp, lang)
        if lang in CHARACTER_LANGUAGES:
            r, h = " ".join(r.replace(" ", "")), " ".join(h.replace(" ", ""))
        refs.append(r)
        hyps.append(h)
    return float(jiwer.wer(refs, hyps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--base", default="offline")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-adapters", action="store_true")
    ap.add_argument(
        "--only",
        choices=["fw", "ct2", "torch"],
        default=None,
        help="Run one system in this process (for its own peak RSS): print 'system seconds WER peak-RSS-MB'.",
    )
    a = ap.parse_args()

    manifest = [json.loads(x) for x in (a.folder / "manifest.jsonl").read_text().splitlines() if x.strip()]
    files = [a.folder / m["audio"] for m in manifest]
    seconds = sum(m.get("duration_s", 0) for m in manifest)

    from lora_whisper.transcribe.audio import load_audio
    from lora_whisper.transcribe.engine import TranscribeOptions
    from lora_whisper.transcribe.runtime import build_engine
    from lora_whisper.transcribe.runtime_ct2 import fw_options, load_ct2_base

    options = TranscribeOptions(adapter="none")
    audios = [load_audio(f) for f in files]
    table = []
    if a.only:
        only(a, files, audios, manifest, options)
        return

    def row(name, t, hyps, base=None):
        w = wer([(m["lang"], m["text"], h) for m, h in zip(manifest, hyps)])
        table.append((name, t, w, rss_mb(), base))
        print(f"  {name}: {t:.1f} s, WER {w:.3f}", file=sys.stderr, flush=True)
        return hyps

    # 1. faster-whisper int8 on the packaged base, as its users run it (same decoding options)
    from faster_whisper import WhisperModel

    ct2base = load_ct2_base(a.base, "auto", "cpu")
    fw = WhisperModel(str(ct2base.ct2_path), device="cpu", compute_type="int8", cpu_threads=a.threads)
    fw.transcribe(audios[0][:16000], **fw_options(options, "en"))  # warm-up (first call allocates)
    t = time.perf_counter()
    fw_hyps = []
    for audio in audios:
        segs, _info = fw.transcribe(audio, **fw_options(options, None))
        fw_hyps.append(" ".join(s.text.strip() for s in segs if s.text.strip()))
    fw_t = time.perf_counter() - t
    row("faster-whisper int8", fw_t, fw_hyps)
    del fw

    # 2. lora-whisper on the ct2 runtime (detection + routing with an empty registry, then faster-whisper's pipeline)
    eng = build_engine(a.base, "auto", "cpu", None, runtime="ct2", threads=a.threads)
    list(eng.transcribe([("warm", audios[0][:16000])], TranscribeOptions(adapter="none", language="en")))
    t = time.perf_counter()
    ct2_hyps = [r.text for r in eng.transcribe(files, options)]
    row("lora-whisper --runtime ct2", time.perf_counter() - t, ct2_hyps)
    same = sum(x == y for x, y in zip(fw_hyps, ct2_hyps))
    print(f"  ct2 text equal to faster-whisper's on {same}/{len(files)} files", file=sys.stderr)
    del eng

    # 3. lora-whisper on the torch runtime (float32 on CPU, its CPU default)
    torch_hyps = None
    if not a.skip_torch:
        eng = build_engine(a.base, "auto", "cpu", None, runtime="torch", threads=a.threads)
        list(eng.transcribe([("warm", audios[0][:16000])], TranscribeOptions(adapter="none", language="en")))
        t = time.perf_counter()
        torch_hyps = [r.text for r in eng.transcribe(files, options)]
        row("lora-whisper --runtime torch", time.perf_counter() - t, torch_hyps)
        del eng

    print(f"\n{len(files)} files, {seconds:.0f} s of audio, {a.threads} thread(s)\n")
    print("| system | seconds | x faster-whisper | WER | peak RSS so far (MB) |")
    print("|---|---|---|---|---|")
    for name, t, w, rss, _ in table:
        print(f"| {name} | {t:.1f} | {t / fw_t:.2f} | {w:.3f} | {rss:.0f} |")
    print(f"\nct2 text equal to faster-whisper's on {same}/{len(files)} files")

    if a.skip_adapters:
        return
    # 4. compiled adapters: first compile, switch, decode with an adapter forced
    from bench_cache import random_adapter

    from lora_whisper.adapters.compile import compile_adapter
    from lora_whisper.adapters.registry import Registry
    from lora_whisper.transcribe.runtime_ct2 import CT2Runtime

    tmp = Path(tempfile.mkdtemp(prefix="bench-runtime-"))
    reg = Registry(tmp / "adapters")
    for k, (name, lang) in enumerate([("a-fr", "fr"), ("b-de", "de")]):
        random_adapter(reg, name, lang, ct2base, k)
    compiles = []
    for ref in ("a-fr", "b-de"):
        c = compile_adapter(reg.get(ref), ct2base.path, ct2base.identity.to_dict(), tokenizer_from=ct2base.ct2_path)
        compiles.append(c)
    rt = CT2Runtime(ct2base, reg, cache_size=1, threads=a.threads)
    recs = [reg.get("a-fr"), reg.get("b-de")]
    cold = []
    for k in range(6):
        t = time.perf_counter()
        rt.load(recs[k % 2])
        cold.append(1000 * (time.perf_counter() - t))
    rt2 = CT2Runtime(ct2base, reg, cache_size=2, threads=a.threads)
    rt2.load(recs[0]), rt2.load(recs[1])
    warm = []
    for k in range(6):
        t = time.perf_counter()
        rt2.load(recs[k % 2])
        warm.append(1000 * (time.perf_counter() - t))
    # an adapter forced on the French files, against faster-whisper on the compiled (merged) folder
    from lora_whisper.transcribe.engine import Engine

    fr = [(f, au) for f, au, m in zip(files, audios, manifest) if m["lang"] == "fr"]
    eng = Engine(None, reg, 2, runtime=rt2)
    opts = TranscribeOptions(adapter="a-fr@1", language="fr")
    t = time.perf_counter()
    ad_hyps = [r.text for r in eng.transcribe([f for f, _ in fr], opts)]
    ad_t = time.perf_counter() - t
    merged = WhisperModel(str(compiles[0].path), device="cpu", compute_type="int8", cpu_threads=a.threads)
    t = time.perf_counter()
    mg_hyps = []
    for _, au in fr:
        segs, _ = merged.transcribe(au, **fw_options(opts, "fr"))
        mg_hyps.append(" ".join(s.text.strip() for s in segs if s.text.strip()))
    mg_t = time.perf_counter() - t
    print("\n| compiled adapters (whisper-base, LoRA r=32 encoder+decoder) | |")
    print("|---|---|")
    print(f"| first compile (merge fp32 + convert int8), s | {', '.join(f'{c.seconds:.1f}' for c in compiles)} |")
    print(f"| switch, cache size 1 (load a compiled model), ms | median {statistics.median(cold):.0f} |")
    print(f"| switch, cache size 2 (resident), ms | median {statistics.median(warm):.2f} |")
    print(
        f"| {len(fr)} fr files, adapter forced: lora-whisper ct2 / faster-whisper on the merged folder | "
        f"{ad_t:.1f} s / {mg_t:.1f} s = {ad_t / mg_t:.2f}; same text {sum(x == y for x, y in zip(ad_hyps, mg_hyps))}/{len(fr)} |"
    )


def only(a, files, audios, manifest, options) -> None:
    """One system in this process: its time, WER and the whole process's peak RSS (nothing else loaded)."""
    from lora_whisper.transcribe.engine import TranscribeOptions
    from lora_whisper.transcribe.runtime import build_engine

    warm = [("warm", audios[0][:16000])]
    if a.only == "fw":
        from faster_whisper import WhisperModel

        from lora_whisper.transcribe.runtime_ct2 import fw_options, load_ct2_base

        fw = WhisperModel(str(load_ct2_base(a.base).ct2_path), device="cpu", compute_type="int8", cpu_threads=a.threads)
        fw.transcribe(warm[0][1], **fw_options(options, "en"))
        t = time.perf_counter()
        hyps = []
        for audio in audios:
            segs, _ = fw.transcribe(audio, **fw_options(options, None))
            hyps.append(" ".join(s.text.strip() for s in segs if s.text.strip()))
    else:
        eng = build_engine(a.base, "auto", "cpu", None, runtime=a.only, threads=a.threads)
        list(eng.transcribe(warm, TranscribeOptions(adapter="none", language="en")))
        t = time.perf_counter()
        hyps = [r.text for r in eng.transcribe(files, options)]
    dt = time.perf_counter() - t
    w = wer([(m["lang"], m["text"], h) for m, h in zip(manifest, hyps)])
    print(f"{a.only} {dt:.1f} {w:.3f} {rss_mb():.0f}")


if __name__ == "__main__":
    main()
