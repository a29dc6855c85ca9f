"""The language probabilities routing decides on, per clip: the base's and each adapter's, dumped once.

    python benchmarks/routing_probs.py --registry adapters --out probs.jsonl \
        --sets fa=$CV_FA_MANIFEST:dev,ur=$CV_UR_MANIFEST:dev,other=$CV_OTHER_MANIFEST [--max-per-language 100]

For every clip: the base's probabilities over every language and each active adapter's (adapter active), from the
first 30 s on the runtime ``transcribe`` uses (``Runtime.detect``, the call adapter-consulted detection and the
calibration make). ``bench_languages.py --probs FILE`` replays the routing rule on them without a model, so a rule
can be compared on thousands of clips in seconds; its routed figures are then measured through ``transcribe``.
Rows already in ``--out`` are kept (the run resumes), and adapters filed since are added to them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KEEP = 1e-7
"""Probabilities below this are not written (they cannot move a decision: the odds score clips at 1e-6)."""


def load_sets(spec: str, max_per_language: int | None):
    """``name=manifest[:split]`` items, comma-separated, as (name, examples); rows without a language skipped, and
    at most ``max_per_language`` rows of each language in a set of several languages."""
    from lora_whisper.train.data import has_column, load_manifest, validate

    out = []
    for item in spec.split(","):
        name, _, rest = item.partition("=")
        path, _, split = rest.partition(":")
        by_split = split and has_column(path, "split")
        speaker = "speaker" if has_column(path, "speaker") else None
        loaded = load_manifest(
            path, split=split or None, split_column="split" if by_split else None, speaker_column=speaker
        )
        rows, seen = [], {}
        several = len({e.language for e in loaded.examples if e.language}) > 1  # a one-language set is kept whole
        for e in loaded.examples:
            if not e.language:
                continue
            seen[e.language] = seen.get(e.language, 0) + 1
            if max_per_language is None or not several or seen[e.language] <= max_per_language:
                rows.append(e)
        out.append((name, validate(type(loaded)(rows)).examples))
    return out


def _kept(probs: dict, always: set[str]) -> dict:
    return {k: v for k, v in probs.items() if v >= KEEP or k in always}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", default="adapters")
    ap.add_argument("--sets", required=True, help="name=manifest[:split],... (rows of every language)")
    ap.add_argument("--max-per-language", type=int, default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from tqdm import tqdm

    from lora_whisper.adapters.registry import Registry
    from lora_whisper.transcribe.runtime import build_engine

    reg = Registry(args.registry)
    records = [r for r in reg.active() if not r.domain]
    engine = build_engine("offline", "auto", None, reg, runtime="ct2", threads=args.threads)
    rt = engine.runtime
    always = {r.language for r in records}
    out = Path(args.out)
    rows: dict[str, dict] = {}
    if out.exists():
        rows = {r["id"]: r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines()) if r}
    t0, n = time.perf_counter(), 0
    for name, examples in load_sets(args.sets, args.max_per_language):
        for e in tqdm(examples, desc=name, unit="clip"):
            key = f"{name}/{e.id}"
            row = rows.get(key)
            todo = [r for r in records if row is None or r.ref not in row["adapters"]]
            if row is not None and not todo:
                continue  # resumed: adapters filed since the last run are added to the rows already measured
            audio = e.load()
            if row is None:
                row = rows[key] = {
                    "id": key,
                    "set": name,
                    "lang": e.language,
                    "speaker": e.speaker,
                    "seconds": round(len(audio) / 16000, 2),
                    "base": _kept(rt.detect(audio), always),
                    "adapters": {},
                }
            for r in todo:
                row["adapters"][r.ref] = _kept(rt.detect(audio, None, r.ref), always | {row["lang"]})
            n += 1
        tmp = out.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows.values()), encoding="utf-8")
        tmp.replace(out)
    print(f"{n} clips measured in {time.perf_counter() - t0:.0f} s -> {out} ({', '.join(r.ref for r in records)})")


if __name__ == "__main__":
    main()
