"""Real speech: base vs adapter, synthetic in/out-of-template, the routing gate, and wrong-adapter damage.

    python benchmarks/bench_real.py --registry adapters --cv $CV_EN_MANIFEST [--sections cv,synthetic,routing,damage]

Sections (each prints a table; the numbers in docs/training.md come from this script):
  cv         WER on the cv-en dev split (speakers never heard in training; English normalizer), base vs the English
             adapter forced, through the engine (`Engine.transcribe`, language forced).
  synthetic  each synthetic adapter (record.metrics.train_kind == synthetic): WER on its corpus's in-template and
             out-of-template held-out clips (other voices), and on real clips of its language from tests/data/audio
             (plus --real-manifest rows of that language), base vs adapter.
  routing    language probabilities of the base and of every adapter (its own language token, adapter active) on
             real clips (tests/data/audio, cv-en dev) and synthetic held-out clips; then the decisions of the old gate
             (consult below 0.8, accept own >= 0.5) and of routing.should_consult/accept_claim, as a confusion table
             (true language -> decided language, and how many clips went to another language's adapter), with
             --domain as given (default: medical). --save-probs writes the measured probabilities as JSON (the
             regression data of tests/test_routing.py).
  damage     routed transcription (`--adapter auto`, the English adapter in the registry) vs the base alone on real
             English outside cv-en (jfk) and on the other languages' real clips.

The English adapter is the registry's active ``en`` adapter without a domain (or --en NAME). Everything runs in this
one process on CPU; ratios and differences are between runs of this process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT / "tests" / "data" / "audio"
sys.path.insert(0, str(ROOT))


@dataclass
class Clip:
    id: str
    kind: str  # real | synthetic-in-template | synthetic-out-of-template
    language: str
    text: str
    audio: object  # float32 numpy array, 16 kHz
    probs: dict = field(default_factory=dict)  # base language probabilities (all languages)
    own: dict = field(default_factory=dict)  # adapter ref -> its probability of its own language (adapter active)
    adapter_top: dict = field(default_factory=dict)  # adapter ref -> its probability of the base's top language


def real_clips(cv: str | None, cv_max: int | None) -> list[Clip]:
    from lora_whisper.transcribe.audio import load_audio

    out = []
    for line in (AUDIO / "manifest.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out.append(Clip(f"audio/{r['audio']}", "real", r["lang"], r["text"], load_audio(AUDIO / r["audio"])))
    if cv:
        rows = [json.loads(x) for x in Path(cv).read_text().splitlines() if x.strip()]
        rows = [r for r in rows if r.get("split") == "dev"][: cv_max or None]
        for r in rows:
            a = load_audio(Path(cv).parent / r["audio"])
            out.append(Clip(f"cv-dev/{Path(r['audio']).name}", "real", r.get("lang", "en"), r["text"], a))
    return out


def synthetic_clips(records, per_set: int) -> list[Clip]:
    from lora_whisper.train.recipe import load_recipe
    from lora_whisper.train.trainer import load_splits

    out = []
    for rec in records:
        if (rec.metrics or {}).get("train_kind") != "synthetic" or not rec.recipe:
            continue
        recipe = load_recipe(
            None,
            [f"data.max_test={per_set}", f"data.max_test_out={per_set}", "data.max_train=1"],
            **{k: v for k, v in rec.recipe.items() if k in ("language", "domain", "data")},
        )
        _, held = load_splits(recipe)
        for h in held:
            for ex in h.data.examples:
                out.append(
                    Clip(f"{rec.name}/{h.split}/{ex.id.split(':')[-2]}", h.kind, rec.language, ex.text, ex.load())
                )
    return out


class Probe:
    """Language probabilities with the base and with each adapter active (Whisper's detect_language: one decoder
    step after <|startoftranscript|>, softmax over the language tokens), on one peft model holding every adapter."""

    def __init__(self, base, records):
        from peft import PeftModel

        self.base, self.records = base, records
        self.model = None
        for rec in records:
            if self.model is None:
                self.model = PeftModel.from_pretrained(base.model, str(rec.path), adapter_name=rec.name)
            else:
                self.model.load_adapter(str(rec.path), adapter_name=rec.name)
        self.sot = base.processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
        self.langs = base.languages

    def _probs(self, feats, adapter: str | None, base_enc=None) -> tuple[list[dict], object]:
        """Probabilities (and the encoder output used); ``base_enc`` is reused for decoder-only adapters."""
        import contextlib

        import torch

        names = list(self.langs)
        ids = torch.tensor([self.langs[n] for n in names])
        m = self.model if self.model is not None else self.base.model
        if adapter is None:
            ctx = self.model.disable_adapter() if self.model is not None else contextlib.nullcontext()
        else:
            self.model.set_adapter(adapter)
            ctx = contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            enc = base_enc if base_enc is not None else m.get_encoder()(feats).last_hidden_state
            start = torch.full((len(feats), 1), self.sot)
            logits = m(encoder_outputs=(enc,), decoder_input_ids=start).logits[:, -1]
        p = logits.float()[:, ids].softmax(-1).numpy()
        return [dict(zip(names, map(float, row))) for row in p], enc

    def run(self, clips: list[Clip], batch: int = 8) -> None:
        fe = self.base.processor.feature_extractor
        for k in range(0, len(clips), batch):
            chunk = clips[k : k + batch]
            feats = fe([c.audio[: 30 * 16000] for c in chunk], sampling_rate=16000, return_tensors="pt").input_features
            probs, base_enc = self._probs(feats, None)
            for c, p in zip(chunk, probs):
                c.probs = p
            for rec in self.records:
                probs, _ = self._probs(feats, rec.name, base_enc if rec.decoder_only else None)
                for c, p in zip(chunk, probs):
                    c.own[rec.ref] = p.get(rec.language, 0.0)
                    c.adapter_top[rec.ref] = p.get(max(c.probs, key=c.probs.get), 0.0)
            print(f"  probabilities: {min(k + batch, len(clips))}/{len(clips)}", file=sys.stderr, flush=True)


def decide(clip: Clip, records, domains: list[str], gate: str) -> tuple[str, str | None]:
    """(language, adapter ref) the engine would choose for this clip: route() on the base's probabilities, then
    adapter-consulted detection when the gate says so (the engine's _consult, with old or new gate functions)."""
    from lora_whisper.transcribe.routing import RouteRequest, accept_claim, route, should_consult

    r = route(clip.probs, records, RouteRequest(domain=domains or None))
    cands = [x for x in records if x.active and ((x.domain in domains) if domains else not x.domain)]
    if gate == "old":
        consult = max(clip.probs.values()) < 0.8
    else:
        consult = should_consult(clip.probs, 0.8, cands)
    if not consult:
        return r.language, r.adapter
    best = None
    for rec in cands:
        own = clip.own.get(rec.ref, 0.0)
        ok = (own >= 0.5 and rec.active) if gate == "old" else accept_claim(clip.probs, rec, own)
        if ok and (best is None or own > best[0]):
            best = (own, rec)
    if best is None:
        return r.language, r.adapter
    return best[1].language, best[1].ref


def routing_section(clips: list[Clip], records, domains: list[str]) -> None:
    print(
        f"\n## Routing on measured probabilities (--domain {','.join(domains) or '-'}; adapters: "
        f"{', '.join(r.ref for r in records)})"
    )
    for gate in ("old", "new"):
        table: dict[tuple[str, str], dict] = {}
        for c in clips:
            lang, ad = decide(c, records, domains, gate)
            row = table.setdefault((c.kind, c.language), {"n": 0, "right": 0, "base_right": 0, "to": {}, "other": 0})
            row["n"] += 1
            row["right"] += lang == c.language
            row["base_right"] += max(c.probs, key=c.probs.get) == c.language
            row["to"][f"{lang}{'+' + ad if ad else ''}"] = row["to"].get(f"{lang}{'+' + ad if ad else ''}", 0) + 1
            ad_lang = next((r.language for r in records if r.ref == ad), None)
            row["other"] += ad_lang is not None and ad_lang != c.language
        print(f"\n{gate} gate:")
        print(f"{'kind':<28}{'lang':<6}{'n':>5}{'base right':>12}{'right':>7}{'to other-lang adapter':>23}  decided")
        for (kind, lang), row in sorted(table.items()):
            to = ", ".join(f"{k} {v}" for k, v in sorted(row["to"].items(), key=lambda kv: -kv[1]))
            print(f"{kind:<28}{lang:<6}{row['n']:>5}{row['base_right']:>12}{row['right']:>7}{row['other']:>23}  {to}")
        real = [v for (k, _), v in table.items() if k == "real"]
        print(
            f"real speech: language right {sum(v['right'] for v in real)} (base alone {sum(v['base_right'] for v in real)}),"
            f" routed to another language's adapter {sum(v['other'] for v in real)}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", default="adapters")
    ap.add_argument("--cv", default=os.environ.get("CV_EN_MANIFEST"), help="cv-en manifest (split/speaker columns)")
    ap.add_argument("--cv-max", type=int, default=None, help="at most this many dev clips")
    ap.add_argument("--en", default=None, help="the English adapter (default: the active en adapter, no domain)")
    ap.add_argument("--sections", default="cv,synthetic,routing,damage")
    ap.add_argument("--domain", default="medical", help="--domain for the routing section ('' for none)")
    ap.add_argument("--synthetic-per-set", type=int, default=40)
    ap.add_argument("--save-probs", default=None, help="write the measured probabilities here (JSON)")
    ap.add_argument(
        "--from-probs",
        default=None,
        help="routing tables from saved probabilities (no model): e.g. tests/data/routing_probs.json",
    )
    ap.add_argument("--quantize", default="none")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sections = set(args.sections.split(","))

    if args.from_probs:
        from lora_whisper.adapters.registry import AdapterRecord

        data = json.loads(Path(args.from_probs).read_text())
        recs = [
            AdapterRecord(
                a["ref"].split("@")[0],
                int(a["ref"].split("@")[1]),
                a["language"],
                {"hub_id": "-"},
                domain=a["domain"],
                metrics={"train_kind": a["train_kind"]},
                lora={"scope": a["scope"]},
                active=True,
            )
            for a in data["adapters"]
        ]
        clips = [
            Clip(
                c["id"],
                c["kind"],
                c["language"],
                "",
                None,
                c["base_probs"],
                c["own_prob"],
                c["adapter_prob_of_base_top"],
            )
            for c in data["clips"]
        ]
        domains = [d for d in args.domain.split(",") if d]
        routing_section(clips, recs, domains)
        if domains:
            routing_section(clips, recs, [])
        return

    import torch

    from lora_whisper.adapters.registry import Registry
    from lora_whisper.base.loading import load_base, quiet_libraries
    from lora_whisper.scoring import score
    from lora_whisper.train.data import Example
    from lora_whisper.train.evaluation import evaluate
    from lora_whisper.transcribe.engine import Engine, TranscribeOptions

    quiet_libraries()
    torch.set_num_threads(args.threads)
    reg = Registry(args.registry)
    active = reg.active()
    en = reg.get(args.en) if args.en else next((r for r in active if r.language == "en" and not r.domain), None)
    t0 = time.perf_counter()
    base = load_base("offline", args.quantize)
    engine = Engine(base, reg)

    def wer(examples, adapter, language=None):
        opts = TranscribeOptions(adapter=adapter, language=language, batch_size=8)
        return evaluate(engine, examples, opts).overall

    if "cv" in sections:
        if not args.cv:
            print("cv: skipped (give --cv or CV_EN_MANIFEST)")
        elif en is None:
            print("cv: skipped (no English adapter in the registry)")
        else:
            from lora_whisper.train.data import load_manifest, validate

            dev = validate(load_manifest(args.cv, split="dev", split_column="split", language="en")).examples
            dev = dev[: args.cv_max or None]
            b, a = wer(dev, "none", "en"), wer(dev, en.ref, "en")
            print(f"\n## cv-en dev ({len(dev)} clips, speakers never heard in training), English normalizer")
            print(f"{'':<24}{'WER':>8}{'CER':>8}")
            print(f"{'base':<24}{b.wer:>8.3f}{b.cer:>8.3f}")
            print(f"{en.ref:<24}{a.wer:>8.3f}{a.cer:>8.3f}")
            print(f"relative WER change: {(a.wer - b.wer) / b.wer:+.1%} (target: -10% or better)")

    synth_records = [r for r in active if (r.metrics or {}).get("train_kind") == "synthetic"]
    synth = synthetic_clips(synth_records, args.synthetic_per_set) if ({"synthetic", "routing"} & sections) else []
    real = real_clips(args.cv, args.cv_max) if ({"synthetic", "routing", "damage"} & sections) else []

    if "synthetic" in sections:
        print("\n## Synthetic-speech adapters: in-template vs out-of-template held-out (other voices), and real speech")
        print(f"{'adapter':<20}{'set':<30}{'n':>5}{'base WER':>10}{'adapter WER':>13}{'change':>9}")
        for rec in synth_records:
            sets = {}
            for ev in (rec.metrics or {}).get("evaluations") or []:  # measured by `train` on this adapter's own data
                b, a = (ev.get("before") or {}).get("wer"), (ev.get("after") or {}).get("wer")
                if b is not None and a is not None:
                    ch = (a - b) / b if b else float("nan")
                    print(f"{rec.ref:<20}{ev['kind'] + ' (train)':<30}{ev['n']:>5}{b:>10.3f}{a:>13.3f}{ch:>+9.1%}")
                else:
                    for c in synth:
                        if c.id.startswith(rec.name + "/") and c.kind == ev["kind"]:
                            sets.setdefault(c.kind, []).append(c)
            sets["real"] = [c for c in real if c.language == rec.language]
            for kind, cs in sets.items():
                if not cs:
                    continue
                ex = [Example(c.id, c.audio, c.text, c.language) for c in cs]
                b, a = wer(ex, "none", rec.language), wer(ex, rec.ref, rec.language)
                ch = (a.wer - b.wer) / b.wer if b.wer else float("nan")
                print(f"{rec.ref:<20}{kind:<30}{len(cs):>5}{b.wer:>10.3f}{a.wer:>13.3f}{ch:>+9.1%}")

    if "routing" in sections:
        clips = real + synth
        Probe(base, active).run(clips)
        domains = [d for d in args.domain.split(",") if d]
        routing_section(clips, active, domains)
        if domains:
            routing_section(clips, active, [])
        if args.save_probs:
            keep = []
            for c in clips:
                top = dict(sorted(c.probs.items(), key=lambda kv: -kv[1])[:5])
                for rec in active:  # the adapters' languages are kept even when outside the top 5
                    top.setdefault(rec.language, c.probs.get(rec.language, 0.0))
                keep.append(
                    {
                        "id": c.id,
                        "kind": c.kind,
                        "language": c.language,
                        "base_probs": {k: round(v, 5) for k, v in top.items()},
                        "own_prob": {k: round(v, 5) for k, v in c.own.items()},
                        "adapter_prob_of_base_top": {k: round(v, 5) for k, v in c.adapter_top.items()},
                    }
                )
            adapters = [
                {
                    "ref": r.ref,
                    "language": r.language,
                    "domain": r.domain,
                    "train_kind": (r.metrics or {}).get("train_kind"),
                    "scope": r.lora.get("scope"),
                }
                for r in active
            ]
            Path(args.save_probs).write_text(json.dumps({"adapters": adapters, "clips": keep}, indent=1) + "\n")
            print(f"\nsaved {len(keep)} clips' probabilities to {args.save_probs}")

    if "damage" in sections and en is not None:
        print(f"\n## Wrong-adapter damage: routed (--adapter auto, {en.ref} in the registry) vs base alone")
        print(f"{'set':<34}{'n':>4}{'base WER':>10}{'routed WER':>12}{'change':>9}  routes")
        groups = {"English outside cv-en (jfk)": [c for c in real if c.language == "en" and c.id.startswith("audio/")]}
        for lang in sorted({c.language for c in real if c.language != "en"}):
            groups[f"{lang} (real, base should serve)"] = [c for c in real if c.language == lang]
        for name, cs in groups.items():
            if not cs:
                continue
            inputs = [(c.id, c.audio) for c in cs]
            base_out = list(engine.transcribe(inputs, TranscribeOptions(adapter="none", batch_size=8)))
            auto_out = list(engine.transcribe(inputs, TranscribeOptions(adapter="auto", batch_size=8)))
            lang = cs[0].language
            b = score([c.text for c in cs], [getattr(o, "text", "") for o in base_out], lang)
            a = score([c.text for c in cs], [getattr(o, "text", "") for o in auto_out], lang)
            routes = sorted({str(getattr(o, "adapter", None)) for o in auto_out})
            ch = (a.wer - b.wer) / b.wer if b.wer else 0.0
            print(f"{name:<34}{len(cs):>4}{b.wer:>10.3f}{a.wer:>12.3f}{ch:>+9.1%}  {', '.join(routes)}")
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
