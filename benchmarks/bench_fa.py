"""A language adapter on real speech of speakers it never heard: base vs adapter, routing without a language.

    python benchmarks/bench_fa.py --registry adapters --manifest $CV_FA_MANIFEST [--adapter fa-commonvoice]
        [--other tests/data/audio/manifest.jsonl,tests/data/cv-en/manifest.jsonl] [--long 300] [--threads 2]

Everything is decoded as `lora-whisper transcribe` decodes (the engine, temperature fallback, compression-ratio
check), scored with Whisper's basic normalizer. Sections:
  forced   the manifest's dev split with the language forced: base (`--adapter none`) vs the adapter
           (`--adapter NAME`): WER, CER, clips that loop.
  routed   the same clips with no language and `--adapter auto`: language detected right, routed to the adapter, WER
           and CER; the base alone (no adapter in the registry) for comparison.
  other    real clips of other languages (--other manifests, rows of the adapter's language skipped), no language,
           `--adapter auto`: how many go to the adapter (must be 0), language right vs the base alone.
  espeak   synthetic speech (espeak-ng, 4 voices) of short sentences in Arabic, Urdu and Turkish: no real recordings
           of these languages ship here, and the base is less sure of synthetic voices than of real ones, so this
           is a harder (pessimistic) stand-in for the real-speech check: how many go to the adapter.
  probs    the routing probabilities themselves, per set (dev, --other, the espeak clips): how many clips the adapter
           claims (its own p(lang) >= 0.5), its median own p(lang), the highest claim score, how many pass the
           threshold: what decides routing, without decoding.
  long     dev clips joined with 0.5 s gaps into one file of --long seconds, routed automatically: segments, where
           the last one ends, repeated segments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


ESPEAK_SENTENCES = {
    "ar": [
        "ذهبت إلى السوق في الصباح",
        "الجو جميل اليوم في المدينة",
        "أين محطة القطار من فضلك",
        "قرأت كتابا جديدا هذا الأسبوع",
        "نحن نعمل في المستشفى منذ سنتين",
        "هل تريد فنجانا من القهوة",
        "المدرسة قريبة من بيتنا",
        "سافر أخي إلى القاهرة أمس",
    ],
    "ur": [
        "میں صبح بازار گیا تھا",
        "آج شہر میں موسم اچھا ہے",
        "ریلوے اسٹیشن کہاں ہے",
        "میں نے اس ہفتے ایک نئی کتاب پڑھی",
        "ہم دو سال سے ہسپتال میں کام کر رہے ہیں",
        "کیا آپ چائے پینا چاہتے ہیں",
        "اسکول ہمارے گھر کے قریب ہے",
        "میرا بھائی کل لاہور گیا",
    ],
    "tr": [
        "sabah pazara gittim",
        "bugün şehirde hava çok güzel",
        "tren istasyonu nerede acaba",
        "bu hafta yeni bir kitap okudum",
        "iki yıldır hastanede çalışıyoruz",
        "bir fincan kahve ister misiniz",
        "okul evimize çok yakın",
        "kardeşim dün İstanbul'a gitti",
    ],
}
"""Short everyday sentences written for this benchmark (not from any corpus)."""


def loops(ref: str, hyp: str) -> bool:
    """A hypothesis that runs on: over twice the reference's words plus 4, or one word repeated 5 times in a row."""
    words = hyp.split()
    if len(words) > 2 * len(ref.split()) + 4:
        return True
    return any(len(set(words[i : i + 5])) == 1 for i in range(max(0, len(words) - 4)))


def run(engine, examples, adapter, language):
    """(rows of (reference, hypothesis, language, adapter), seconds) through Engine.transcribe."""
    from lora_whisper.transcribe.engine import FileError, TranscribeOptions

    opts = TranscribeOptions(adapter=adapter, language=language, batch_size=8)
    t0 = time.perf_counter()
    out = []
    inputs = [(e.id, e.audio if isinstance(e.audio, np.ndarray) else e.load()) for e in examples]
    for ex, res in zip(examples, engine.transcribe(inputs, opts)):
        if isinstance(res, FileError):
            print(f"  error: {res.error}", file=sys.stderr)
            continue
        out.append((ex.text, res.text, res.language, res.adapter))
    return out, time.perf_counter() - t0


def scored(rows, language):
    from lora_whisper.scoring import score

    s = score([r[0] for r in rows], [r[1] for r in rows], language)
    return s.wer, s.cer, sum(loops(r[0], r[1]) for r in rows)


def other_examples(args, lang):
    """Real clips of other languages from the --other manifests (rows in ``lang`` skipped), as (source, examples)."""
    from lora_whisper.train.data import load_manifest, validate

    out = []
    for src in args.other.split(",") if args.other else []:
        path = ROOT / src if not Path(src).is_absolute() else Path(src)
        has_split = '"split"' in path.read_text(encoding="utf-8").split("\n", 1)[0]  # manifests without splits: all
        split = {"split": args.other_split, "split_column": "split"} if args.other_split and has_split else {}
        loaded = load_manifest(path, **split)
        rows = [e for e in loaded.examples if e.language and e.language != lang][: args.other_max or None]
        out.append((path.parent.name, validate(type(loaded)(rows)).examples))
    return out


def espeak_examples():
    """The synthetic probe: ``ESPEAK_SENTENCES`` in the 4 test voices, as (language, examples)."""
    from lora_whisper.base.loading import cache_dir
    from lora_whisper.train.synth import TEST_VARIANTS, synthesize, voices_for

    out = []
    for code, texts in ESPEAK_SENTENCES.items():
        voices = voices_for(code, TEST_VARIANTS, (140, 180), (35, 65), 4, 0)
        out.append((code, synthesize(texts, code, voices, cache_dir() / "tts" / code, seed=0, prefix=f"bench-{code}")))
    return out


def print_probs(name, examples, engine, rec, lang):
    """One row of the ``probs`` section: the probabilities calibration measures (``calibration.measure``)."""
    from lora_whisper.train.calibration import measure
    from lora_whisper.transcribe.routing import claim_score

    cal = rec.calibration or {}
    kind, t = cal.get("score", "geometric"), cal.get("threshold")
    rows = measure(engine.runtime, rec.ref, examples, lang)
    own = np.array([o for _, o in rows])
    claims = [claim_score(b.get(lang, 0.0), o, kind) for b, o in rows if o >= 0.5]
    passed = sum(s >= t for s in claims) if t is not None else "-"
    print(
        f"{name:<22}{len(rows):>4}{int((own >= 0.5).sum()):>12}{np.median(own):>12.4f}{max(claims, default=0):>17.4f}{passed:>6}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", default="adapters")
    ap.add_argument("--manifest", required=True, help="JSONL with audio, text, split (dev rows are used)")
    ap.add_argument("--split", default="dev", help="dev rows, or validation: the speaker the recipe held out")
    ap.add_argument(
        "--adapter", default=None, help="adapter name (default: the registry's active one for the language)"
    )
    ap.add_argument("--language", default="fa")
    ap.add_argument("--other", default="tests/data/audio/manifest.jsonl,tests/data/cv-en/manifest.jsonl")
    ap.add_argument("--other-split", default=None, help="keep only --other rows of this split (e.g. dev)")
    ap.add_argument("--other-max", type=int, default=None, help="at most this many rows per --other manifest")
    ap.add_argument("--max", type=int, default=None, help="at most this many dev clips")
    ap.add_argument("--long", type=float, default=300.0, help="seconds of the joined long file (0: skip)")
    ap.add_argument("--sections", default="forced,routed,other,espeak,long")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runtime", default="auto", help="auto (ct2 on CPU, as transcribe), torch or ct2")
    ap.add_argument("--no-forced-base", dest="forced_base", action="store_false", help="forced: adapter row only")
    ap.add_argument(
        "--no-routed-base", dest="routed_base", action="store_false", help="routed: the registry's row only"
    )
    ap.add_argument("--json", default=None, help="write every row here")
    args = ap.parse_args()

    from lora_whisper.adapters.registry import Registry
    from lora_whisper.train.data import load_manifest, validate
    from lora_whisper.transcribe.engine import TranscribeOptions
    from lora_whisper.transcribe.runtime import build_engine

    sections = set(args.sections.split(","))
    reg = Registry(args.registry)
    rec = (
        reg.get(args.adapter)
        if args.adapter
        else next(r for r in reg.active() if r.language == args.language and not r.domain)
    )
    print(f"adapter {rec.ref}: calibration {json.dumps(rec.calibration)}")
    lang = args.language
    if args.split == "validation":  # the recipe's validation speaker: held out of the train split as training does
        from lora_whisper.train.data import hold_out_speakers

        train = load_manifest(
            args.manifest, split="train", split_column="split", language=lang, speaker_column="speaker"
        )
        _, dev = hold_out_speakers(
            validate(train).examples, rec.recipe["data"]["validation"], rec.recipe["train"]["seed"]
        )
    else:
        dev = validate(load_manifest(args.manifest, split=args.split, split_column="split", language=lang)).examples
    dev = dev[: args.max or None]
    routed_engine = build_engine("offline", "auto", None, reg, runtime=args.runtime, threads=args.threads)
    base_engine = build_engine("offline", "auto", None, None, runtime=args.runtime, threads=args.threads)
    print(f"runtime {routed_engine.runtime.kind} (as `transcribe --runtime {args.runtime}`)")
    dump = {}

    if "forced" in sections:
        print(f"\n## {args.split}, language forced to {lang} ({len(dev)} clips, speakers never heard in training)")
        print(f"{'':<24}{'WER':>8}{'CER':>8}{'loops':>7}{'seconds':>9}")
        for name, adapter in (("base", "none"), (rec.ref, rec.ref))[0 if args.forced_base else 1 :]:
            rows, sec = run(routed_engine, dev, adapter, lang)
            w, c, lp = scored(rows, lang)
            dump[f"forced/{name}"] = rows
            print(f"{name:<24}{w:>8.3f}{c:>8.3f}{lp:>7}{sec:>9.0f}")

    if "routed" in sections:
        print(f"\n## {args.split}, no language, --adapter auto ({len(dev)} clips)")
        print(f"{'':<34}{'LID right':>10}{'to adapter':>11}{'WER':>8}{'CER':>8}{'loops':>7}")
        engines = (("base alone (empty registry)", base_engine), (f"registry with {rec.ref}", routed_engine))
        for name, engine in engines[0 if args.routed_base else 1 :]:
            rows, _ = run(engine, dev, "auto", None)
            w, c, lp = scored(rows, lang)
            right = sum(r[2] == lang for r in rows)
            to = sum(r[3] == rec.ref for r in rows)
            dump[f"routed/{name}"] = rows
            print(f"{name:<34}{right:>6}/{len(rows):<3}{to:>7}/{len(rows):<3}{w:>8.3f}{c:>8.3f}{lp:>7}")

    if "other" in sections and args.other:
        others = [e for _, ex in other_examples(args, lang) for e in ex]
        print(f"\n## real speech of other languages, no language, --adapter auto ({len(others)} clips)")
        langs = sorted({e.language for e in others})
        print(
            f"{'language':<10}{'n':>4}{'base alone: right':>19}{'with ' + rec.ref + ': right':>28}{'to ' + rec.name:>24}"
        )
        b_rows, _ = run(base_engine, others, "auto", None)
        r_rows, _ = run(routed_engine, others, "auto", None)
        for code in langs:
            idx = [i for i, e in enumerate(others) if e.language == code]
            print(
                f"{code:<10}{len(idx):>4}{sum(b_rows[i][2] == code for i in idx):>19}"
                f"{sum(r_rows[i][2] == code for i in idx):>28}{sum(r_rows[i][3] == rec.ref for i in idx):>24}"
            )
        dump["other/base"], dump["other/routed"] = b_rows, r_rows

    if "espeak" in sections:
        print("\n## synthetic speech (espeak-ng) of nearby languages, no language, --adapter auto")
        print(
            f"{'language':<10}{'n':>4}{'base alone: right':>19}{'with ' + rec.ref + ': right':>28}{'to ' + rec.name:>24}"
        )
        for code, ex in espeak_examples():
            b_rows, _ = run(base_engine, ex, "auto", None)
            r_rows, _ = run(routed_engine, ex, "auto", None)
            print(
                f"{code:<10}{len(ex):>4}{sum(r[2] == code for r in b_rows):>19}{sum(r[2] == code for r in r_rows):>28}"
                f"{sum(r[3] == rec.ref for r in r_rows):>24}"
            )

    if "probs" in sections:
        print(f"\n## routing probabilities ({rec.ref}: {(rec.calibration or {}).get('score', 'geometric')} score)")
        print(f"{'set':<22}{'n':>4}{'own >= 0.5':>12}{'median own':>12}{'max claim score':>17}{'pass':>6}")
        sets = [(f"{args.split} ({lang})", dev), *other_examples(args, lang)]
        for name, ex in sets + [(f"espeak {code}", ex) for code, ex in espeak_examples()]:
            print_probs(name, ex, routed_engine, rec, lang)

    if "long" in sections and args.long > 0:
        gap = np.zeros(8000, dtype=np.float32)
        parts, refs, total = [], [], 0.0
        for e in dev:
            a = e.load()
            if total + (len(a) + len(gap)) / 16000 > args.long:
                break
            parts += [a, gap]
            refs.append(e.text)
            total += (len(a) + len(gap)) / 16000
        audio = np.concatenate(parts)
        opts = TranscribeOptions(adapter="auto")
        t0 = time.perf_counter()
        res = next(iter(routed_engine.transcribe([("long.wav", audio)], opts)))
        sec = time.perf_counter() - t0
        texts = [s.text.strip() for s in res.segments]
        repeats = sum(1 for a, b in zip(texts, texts[1:]) if a and a == b)
        from lora_whisper.scoring import score

        s = score([" ".join(refs)], [res.text], lang)
        print(f"\n## one file of {total:.0f} s ({len(refs)} dev clips joined), no language, --adapter auto")
        print(
            f"language {res.language}, adapter {res.adapter}; {len(res.segments)} segments, last ends at "
            f"{res.segments[-1].end if res.segments else 0:.1f} s; repeated consecutive segments {repeats}; "
            f"WER {s.wer:.3f} CER {s.cer:.3f}; loops {loops(' '.join(refs), res.text)}; {sec:.0f} s"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(dump, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
