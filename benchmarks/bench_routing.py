"""Routed transcription: detection overhead, swap and load latency, mixed batches, merge; vs faster-whisper int8.

    python benchmarks/bench_routing.py [--registry adapters] [--threads 2]

Needs adapters in the registry: fr-medical (make demo) and, for the 3-adapter batch, de-legal and es-finance
(benchmarks/README.md has the commands). Clips: held-out synthetic clips of each adapter's corpus (8 each) and the
10 real clips in tests/data/audio. Everything is measured in this one process; ratios are to a baseline measured here.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

AUDIO = Path(__file__).resolve().parents[1] / "tests" / "data" / "audio"


def best_of(fn, reps: int) -> float:
    """Best time of ``reps`` runs after a warm-up run; reps=0: a single run, no warm-up."""
    if reps == 0:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    fn()
    out = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--registry", default="adapters")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--per-adapter", type=int, default=8)
    ap.add_argument("--sections", default="quality,batch,latency,real,merge", help="which parts to run")
    args = ap.parse_args()

    import torch
    from faster_whisper import WhisperModel, decode_audio

    from lora_whisper.adapters.registry import Registry
    from lora_whisper.base.loading import load_base, offline_ct2_path, quiet_libraries
    from lora_whisper.scoring import score
    from lora_whisper.train.recipe import load_recipe
    from lora_whisper.train.trainer import load_data
    from lora_whisper.transcribe.audio import load_audio
    from lora_whisper.transcribe.engine import Engine, TranscribeOptions, adapter_key

    quiet_libraries()
    torch.set_num_threads(args.threads)
    reg = Registry(args.registry)
    recs = [r for r in reg.active() if r.domain]
    if not recs:
        raise SystemExit(f"no domain adapters in {reg.root}: run `make demo` first")
    domains = [r.domain for r in recs]
    clips, refs = [], []
    for r in recs:
        recipe = load_recipe(None, [], **{k: v for k, v in r.recipe.items() if k in ("language", "domain", "data")})
        _, test = load_data(recipe)
        for e in test.examples[: args.per_adapter]:
            clips.append(e.audio)
            refs.append((r.language, r.ref, e.text))
    real = [json.loads(x) for x in (AUDIO / "manifest.jsonl").read_text().splitlines() if x.strip()]
    real_files = [AUDIO / r["audio"] for r in real]
    secs = sum(len(load_audio(f)) / 16000 for f in clips)
    print(f"adapters: {[r.ref for r in recs]}; {len(clips)} synthetic clips ({secs:.0f} s); threads {args.threads}")

    engine = Engine(load_base("offline", "int8"), reg, cache_size=8)
    longest = max(len(t) for _, _, t in refs)
    opts = dict(domain=domains, max_new_tokens=min(440, longest + 16))

    # 1. routing quality: detection and adapter choice without the language given
    for consult in (0.0, 0.8) if "quality" in args.sections else ():
        res = list(engine.transcribe(clips, TranscribeOptions(consult_below=consult, batch_size=8, **opts)))
        right_lang = sum(r.language == lang for r, (lang, _, _) in zip(res, refs))
        right_ad = sum(r.adapter == ref for r, (_, ref, _) in zip(res, refs))
        wer = {}
        for lang in sorted({x[0] for x in refs}):
            idx = [i for i, x in enumerate(refs) if x[0] == lang]
            wer[lang] = score([refs[i][2] for i in idx], [res[i].text for i in idx], lang).wer
        name = "base detection only" if consult == 0 else f"adapter-consulted (base p < {consult})"
        print(
            f"routing, {name:<36} language right {right_lang}/{len(res)}, adapter right {right_ad}/{len(res)}, "
            f"WER {json.dumps({k: round(v, 3) for k, v in wer.items()})}"
        )

    # 2. one call over the 24 clips vs one clip at a time, the same auto routing (detection, consultation) in both
    def one_at_a_time():
        for f in clips:
            list(engine.transcribe([f], TranscribeOptions(batch_size=1, **opts)))

    def batched(batching, bs=len(clips)):
        list(engine.transcribe(clips, TranscribeOptions(batch_size=bs, batching=batching, **opts)))

    if "batch" in args.sections:
        t1 = best_of(one_at_a_time, args.reps)
        tg = best_of(lambda: batched("grouped"), args.reps)
        tm = best_of(lambda: batched("mixed"), args.reps)
        t8 = best_of(lambda: batched("grouped", 8), args.reps)
        print(
            f"{len(clips)} clips over {len(recs)} adapters, auto routing: one at a time {t1:.1f} s; one call, grouped "
            f"by adapter {tg:.1f} s ({t1 / tg:.2f}x throughput); mixed adapter_names {tm:.1f} s ({t1 / tm:.2f}x); "
            f"grouped in batches of 8 {t8:.1f} s ({t1 / t8:.2f}x)"
        )

    # 3. swap and load latency
    keys = [engine.load_adapter(r) for r in recs]
    n = 200
    t = time.perf_counter()
    for i in range(n):
        engine.peft.set_adapter(keys[i % len(keys)])
    swap_ms = 1000 * (time.perf_counter() - t) / n
    loads = []
    for _ in range(3):
        for r in recs:
            engine.peft.set_adapter(keys[0] if adapter_key(r.ref) != keys[0] else keys[-1])
            if len(keys) == 1:
                break
            engine.peft.delete_adapter(adapter_key(r.ref))
            engine.resident.pop(adapter_key(r.ref))
            t = time.perf_counter()
            engine.load_adapter(r)
            loads.append(time.perf_counter() - t)
    print(
        f"hot swap (set_adapter): {swap_ms:.2f} ms; cold load from the registry (checks + peft load): "
        f"{1000 * sum(loads) / max(len(loads), 1):.0f} ms mean of {len(loads)}"
    )

    # 4. real clips: routed (auto language, adapters present) vs faster-whisper int8 with detection
    fw = WhisperModel(str(offline_ct2_path()), device="cpu", compute_type="int8", cpu_threads=args.threads)
    audios = [decode_audio(str(f)) for f in real_files]

    def run_fw(fixed):
        for a, r in zip(audios, real):
            segs, _ = fw.transcribe(
                a,
                language=r["lang"] if fixed else None,
                beam_size=1,
                without_timestamps=True,
                condition_on_previous_text=False,
                temperature=0.0,
            )
            list(segs)

    fw_fixed = best_of(lambda: run_fw(True), args.reps)
    fw_auto = best_of(lambda: run_fw(False), args.reps)
    routed_auto = best_of(lambda: list(engine.transcribe(real_files, TranscribeOptions(batch_size=8))), args.reps)
    by_lang = {}
    for f, r in zip(real_files, real):
        by_lang.setdefault(r["lang"], []).append(f)
    routed_fixed = best_of(
        lambda: [
            list(engine.transcribe(fs, TranscribeOptions(language=lang, batch_size=8))) for lang, fs in by_lang.items()
        ],
        args.reps,
    )
    res_routed = list(engine.transcribe(real_files, TranscribeOptions(batch_size=8)))
    res_base = list(engine.transcribe(real_files, TranscribeOptions(batch_size=8, adapter="none")))
    same = sum(a.text == b.text for a, b in zip(res_routed, res_base))
    print(
        f"real clips ({len(real_files)}): routed auto {routed_auto:.1f} s = {routed_auto / fw_auto:.2f}x faster-whisper "
        f"int8 auto ({fw_auto:.1f} s; language given {fw_fixed:.1f} s); detection overhead {routed_auto / routed_fixed - 1:+.1%} vs language given; "
        f"routed == base transcript on {same}/{len(real_files)}"
    )

    # 5. merge: 8-bit unmerged vs merged into a float32 copy, on the first adapter's clips
    idx = [i for i, x in enumerate(refs) if x[1] == recs[0].ref]
    sel = [clips[i] for i in idx]
    o = dict(language=refs[idx[0]][0], adapter=recs[0].ref, batch_size=8, max_new_tokens=opts["max_new_tokens"])
    t_un = best_of(lambda: list(engine.transcribe(sel, TranscribeOptions(**o))), args.reps)
    t_me = best_of(lambda: list(engine.transcribe(sel, TranscribeOptions(merge=True, **o))), args.reps)
    un = list(engine.transcribe(sel, TranscribeOptions(**o)))
    me = list(engine.transcribe(sel, TranscribeOptions(merge=True, **o)))
    agree = sum(a.text == b.text for a, b in zip(un, me))
    w_un = score([refs[i][2] for i in idx], [r.text for r in un], o["language"]).wer
    w_me = score([refs[i][2] for i in idx], [r.text for r in me], o["language"]).wer
    print(
        f"merge ({recs[0].ref}, {len(sel)} clips): 8-bit unmerged {t_un:.1f} s WER {w_un:.3f}; merged into float32 "
        f"copy {t_me:.1f} s WER {w_me:.3f}; identical text on {agree}/{len(sel)}"
    )
    engine = None  # free the 8-bit engine before loading a float32 base
    fp32 = Engine(load_base("offline", "none"), reg)
    t_un32 = best_of(lambda: list(fp32.transcribe(sel, TranscribeOptions(**o))), args.reps)
    t_me32 = best_of(lambda: list(fp32.transcribe(sel, TranscribeOptions(merge=True, **o))), args.reps)
    un32 = list(fp32.transcribe(sel, TranscribeOptions(**o)))
    me32 = list(fp32.transcribe(sel, TranscribeOptions(merge=True, **o)))
    agree32 = sum(a.text == b.text for a, b in zip(un32, me32))
    print(
        f"merge on a float32 base: unmerged {t_un32:.1f} s, merged in place {t_me32:.1f} s; identical text on "
        f"{agree32}/{len(sel)}"
    )


if __name__ == "__main__":
    main()
