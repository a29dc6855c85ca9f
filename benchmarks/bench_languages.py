"""Several real-language adapters in one registry: per-language figures, routing between them, and its cost.

    python benchmarks/bench_languages.py --registry adapters \
        --dev fa=$CV_FA_MANIFEST,ur=$CV_UR_MANIFEST --other $CV_OTHER_MANIFEST [--other-per-language 10] \
        [--probs probs.jsonl] [--sections replay,forced,routed,other]

Sections:
  replay   the routing rule (``routing.consult`` + ``routing.decide``, the functions the engine calls) replayed on the
           per-clip language probabilities that ``routing_probs.py`` dumps (--probs): per set and language, how many
           clips go to each adapter, and how many adapters were consulted. Languages that no adapter calibrated on
           (``calibration.languages`` of the records) are marked "held out": they are the honest figure.
  forced   each adapter's dev split with its language forced: the base alone (``--adapter none``) vs the adapter.
  routed   the dev splits with no language, ``--adapter auto``: an empty registry vs this one; how many clips reach
           their own adapter, how many the other one, WER / CER as routed.
  other    real clips of other languages (--other, --other-per-language of each), no language: an empty registry vs
           this one, in one process: clips sent to an adapter, language detected right, WER, and the time ratio.

Everything is decoded as ``lora-whisper transcribe`` decodes (the engine, ct2 on CPU, the adapters' filed decoding),
scored with Whisper's basic normalizer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def replay(rows: list[dict], records, consult_below: float) -> dict:
    """Per (set, language): Counter of destinations (adapter name or "base") and consulted adapter count."""
    from lora_whisper.transcribe.routing import RouteRequest, consult, decide

    out: dict = defaultdict(Counter)
    request = RouteRequest()
    for row in rows:
        base = row["base"]
        asked = consult(base, records, consult_below)
        claims = {r.ref: row["adapters"].get(r.ref, {}).get(r.language, 0.0) for r in asked}
        r = decide(base, claims, records, request)
        name = next((x.name for x in records if x.ref == r.adapter), "base")
        key = (row["set"], row["lang"])
        out[key][name] += 1
        out[key]["_consulted"] += len(asked)
        out[key]["_n"] += 1
        out[key]["_lang_right"] += r.language == row["lang"]
    return out


def print_replay(rows, records, consult_below):
    calibrated = set().union(*[set((r.calibration or {}).get("languages") or []) for r in records])
    own = {r.language for r in records}
    res = replay(rows, records, consult_below)
    names = [r.name for r in records]
    print(f"\n## routing replayed on {len(rows)} clips ({', '.join(r.ref for r in records)})")
    print(f"{'set':<8}{'lang':<6}{'kind':<11}{'n':>5}" + "".join(f"{'to ' + n:>22}" for n in names) + f"{'asked':>7}")
    totals: dict = defaultdict(Counter)
    for (s, lang), c in sorted(res.items()):
        kind = "own" if lang in own else ("calibrated" if lang in calibrated else "held out")
        print(
            f"{s:<8}{lang:<6}{kind:<11}{c['_n']:>5}" + "".join(f"{c[n]:>22}" for n in names) + f"{c['_consulted']:>7}"
        )
        totals[kind].update(c)
    for kind, c in totals.items():
        if kind != "own":
            sent = sum(c[n] for n in names)
            print(f"{'all':<8}{'':<6}{kind:<11}{c['_n']:>5}  sent to an adapter: {sent} ({sent / c['_n']:.1%})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", default="adapters")
    ap.add_argument("--dev", default="", help="lang=manifest,... (their dev rows)")
    ap.add_argument("--dev-max", type=int, default=None, help="at most this many dev clips per language")
    ap.add_argument("--other", default=None, help="manifest of other languages' speech")
    ap.add_argument("--other-per-language", type=int, default=10)
    ap.add_argument("--held-out-only", action="store_true", help="other: only languages no adapter calibrated on")
    ap.add_argument("--probs", default=None, help="routing_probs.py output, for replay")
    ap.add_argument("--consult-below", type=float, default=0.8)
    ap.add_argument("--sections", default="replay,forced,routed,other")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from bench_fa import scored

    from lora_whisper.adapters.registry import Registry
    from lora_whisper.train.data import load_manifest, validate
    from lora_whisper.transcribe.runtime import build_engine

    sections = set(args.sections.split(","))
    reg = Registry(args.registry)
    records = [r for r in reg.active() if not r.domain]
    for r in records:
        print(f"{r.ref} ({r.language}): calibration {json.dumps(r.calibration)}")

    if "replay" in sections and args.probs:
        rows = [json.loads(x) for x in Path(args.probs).read_text(encoding="utf-8").splitlines() if x.strip()]
        print_replay(rows, records, args.consult_below)

    dev = {}
    for item in filter(None, args.dev.split(",")):
        lang, _, path = item.partition("=")
        dev[lang] = validate(load_manifest(path, split="dev", split_column="split", language=lang)).examples
        dev[lang] = dev[lang][: args.dev_max or None]
    if not ({"forced", "routed", "other"} & sections):
        return
    routed_engine = build_engine("offline", "auto", None, reg, runtime="auto", threads=args.threads)
    empty_engine = build_engine("offline", "auto", None, None, runtime="auto", threads=args.threads)
    by_lang = {r.language: r for r in records}

    if "forced" in sections:
        from bench_fa import run as fa_run

        print("\n## dev splits, language forced (speakers never heard in training)")
        print(f"{'language':<10}{'n':>5}{'base WER':>10}{'CER':>7}{'adapter WER':>13}{'CER':>7}{'CER ratio':>11}")
        for lang, ex in dev.items():
            b, _ = fa_run(routed_engine, ex, "none", lang)
            a, _ = fa_run(routed_engine, ex, by_lang[lang].ref, lang)
            (bw, bc, _), (aw, ac, _) = scored(b, lang), scored(a, lang)
            print(f"{lang:<10}{len(ex):>5}{bw:>10.3f}{bc:>7.3f}{aw:>13.3f}{ac:>7.3f}{ac / bc:>11.2f}")

    if "routed" in sections:
        from bench_fa import run as fa_run

        print("\n## dev splits, no language, --adapter auto: empty registry vs this one")
        head = "".join(f"{'to ' + r.name:>22}" for r in records)
        print(f"{'language':<10}{'registry':<10}{'n':>5}{'LID right':>11}{head}{'WER':>8}{'CER':>7}")
        for lang, ex in dev.items():
            for label, engine in (("empty", empty_engine), ("this", routed_engine)):
                rows, _ = fa_run(engine, ex, "auto", None)
                w, c, _ = scored(rows, lang)
                to = "".join(f"{sum(x[3] == r.ref for x in rows):>22}" for r in records)
                right = sum(x[2] == lang for x in rows)
                print(f"{lang:<10}{label:<10}{len(rows):>5}{right:>11}{to}{w:>8.3f}{c:>7.3f}")

    if "other" in sections and args.other:
        from bench_fa import run as fa_run

        calibrated = set().union(*[set((r.calibration or {}).get("languages") or []) for r in records])
        loaded = load_manifest(args.other)
        seen: Counter = Counter()
        ex = []
        for e in loaded.examples:
            if not e.language or e.language in by_lang or (args.held_out_only and e.language in calibrated):
                continue
            seen[e.language] += 1
            if seen[e.language] <= args.other_per_language:
                ex.append(e)
        ex = validate(type(loaded)(ex)).examples
        for e in ex:  # decoded once, outside the timings
            e.audio = e.load()
        print(f"\n## other languages, no language, --adapter auto ({len(ex)} clips, {len(seen)} languages)")
        t0 = time.perf_counter()
        b_rows, _ = fa_run(empty_engine, ex, "auto", None)
        tb = time.perf_counter() - t0
        t0 = time.perf_counter()
        r_rows, _ = fa_run(routed_engine, ex, "auto", None)
        tr = time.perf_counter() - t0
        print(f"{'language':<10}{'kind':<11}{'n':>4}{'LID right empty':>17}{'this':>6}{'to an adapter':>15}")
        for code in sorted(seen):
            idx = [i for i, e in enumerate(ex) if e.language == code]
            kind = "calibrated" if code in calibrated else "held out"
            to = sum(r_rows[i][3] is not None for i in idx)
            print(
                f"{code:<10}{kind:<11}{len(idx):>4}{sum(b_rows[i][2] == code for i in idx):>17}"
                f"{sum(r_rows[i][2] == code for i in idx):>6}{to:>15}"
            )
        from lora_whisper.scoring import score

        wer_b = sum(score([b[0]], [b[1]], e.language).wer for b, e in zip(b_rows, ex)) / len(ex)
        wer_r = sum(score([r[0]], [r[1]], e.language).wer for r, e in zip(r_rows, ex)) / len(ex)
        sent = sum(r[3] is not None for r in r_rows)
        print(
            f"sent to an adapter {sent}/{len(ex)}; mean clip WER {wer_b:.3f} empty, {wer_r:.3f} this "
            f"({wer_r / wer_b:.3f}x); time {tb:.0f} s empty, {tr:.0f} s this: {tr / tb:.2f}x"
        )


if __name__ == "__main__":
    main()
