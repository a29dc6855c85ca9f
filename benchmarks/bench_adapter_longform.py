"""Long-form decoding with an adapter active: does a trained adapter keep Whisper's timestamps (segments, no lost text)?

    python benchmarks/bench_adapter_longform.py [--registry adapters] [--adapter fr-medical] [--sentences 16]

An adapter trained only on ``<|notimestamps|>`` labels can stop predicting timestamp tokens, and long-form decoding
then loses text (transformers #30148); ours are trained with timestamped labels on part of the synthetic clips
(``data.timestamps``). The file: held-out sentences of the adapter's corpus (``# test-out``: templates and vocabulary
never used in training), each spoken by a voice never used in training, joined with 0.5 s of silence into one file
longer than 30 s. It is decoded sequentially (timestamps, previous-text prompt, fallback; language forced) with the
base and with the adapter. Prints, for each: segments, words out vs reference words, WER and its deletions, the
median distance from each sentence boundary to the nearest cue edge, and where the last segment ends.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GAP = 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", default=str(ROOT / "adapters"))
    ap.add_argument("--adapter", default="fr-medical")
    ap.add_argument("--sentences", type=int, default=16)
    ap.add_argument("--splits", default="test,test-out", help="corpus parts: test (in-template), test-out")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import jiwer
    import torch

    from lora_whisper.adapters.registry import Registry
    from lora_whisper.base.loading import load_base, quiet_libraries
    from lora_whisper.scoring import normalize
    from lora_whisper.train.synth import TEST_VARIANTS, corpus_path, read_corpus_splits, synthesize, voices_for
    from lora_whisper.transcribe.audio import load_audio
    from lora_whisper.transcribe.engine import Engine, TranscribeOptions

    quiet_libraries()
    torch.set_num_threads(args.threads)
    registry = Registry(args.registry)
    rec = registry.get(args.adapter)
    lang = rec.language
    corpus = (rec.recipe.get("data") or {}).get("corpus") or f"{rec.language}-{rec.domain}"
    engine = Engine(load_base("offline", "none", "cpu"), registry)
    for split in args.splits.split(","):
        sentences = read_corpus_splits(corpus_path(corpus))[split][: args.sentences]
        voices = voices_for(lang, TEST_VARIANTS, (130, 170), (30, 70), len(sentences), seed=7)
        with tempfile.TemporaryDirectory() as tmp:
            clips = [load_audio(ex.audio, check_silence=False) for ex in synthesize(sentences, lang, voices, Path(tmp))]
        parts, bounds, t = [], [], 0.0
        for a in clips:
            parts += [a, np.zeros(int(GAP * 16000), np.float32)]
            t += len(a) / 16000 + GAP
            bounds.append(t - GAP / 2)
        audio = np.concatenate(parts)
        ref = normalize(" ".join(sentences), lang)
        n = len(ref.split())
        print(
            f"\n{len(sentences)} held-out sentences ({corpus}, {split}), other voices than training, joined: "
            f"{len(audio) / 16000:.1f} s, language {lang}"
        )
        print("| decoder | segments | words out / ref | WER | deletions | boundary median | last segment end |")
        print("|---|---|---|---|---|---|---|")
        for name, adapter in (("base", "none"), (rec.ref, rec.ref)):
            (res,) = engine.transcribe([("joined", audio)], TranscribeOptions(language=lang, adapter=adapter))
            hyp = normalize(res.text, lang)
            out = jiwer.process_words(ref, hyp) if hyp.strip() else None
            wer, dels = (out.wer, out.deletions / n) if out else (1.0, 1.0)
            dist = end = "-"
            if res.segments:
                edges = sorted({x for s in res.segments for x in (s.start, s.end)})
                dist = f"{statistics.median(min(abs(b - e) for e in edges) for b in bounds[:-1]):.2f} s"
                end = f"{res.segments[-1].end:.1f} of {len(audio) / 16000:.1f} s"
            print(
                f"| {name} | {len(res.segments)} | {len(hyp.split())} / {n} | {wer:.3f} | {dels:.3f} | {dist} | {end} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
