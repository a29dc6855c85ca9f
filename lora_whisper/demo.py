"""The main job's second half (``make demo``): transcribe held-out French medical clips with routing.

    python -m lora_whisper.demo [--n 8] [--registry adapters]

The language is not given: it is detected from the audio, and the fr-medical adapter is chosen by routing.
"""

from __future__ import annotations

import argparse
import sys

from .adapters.registry import Registry
from .base.loading import load_base, quiet_libraries
from .scoring import score
from .train.recipe import find_recipe, load_recipe
from .train.trainer import load_data
from .transcribe.engine import Engine, TranscribeOptions


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="held-out clips to transcribe")
    ap.add_argument("--registry", default=None)
    args = ap.parse_args(argv)
    quiet_libraries()
    reg = Registry(args.registry)
    if reg.find("fr", "medical") is None:
        print("no fr-medical adapter in the registry: run `lora-whisper train --lang fr --domain medical` first")
        return 1
    recipe = load_recipe(find_recipe("fr", "medical"))
    _, test = load_data(recipe)
    examples = test.examples[: args.n]
    engine = Engine(load_base(recipe.base.model, "auto"), reg)  # as `transcribe` loads it
    longest = max(len(e.text) for e in examples)
    # max_new_tokens bounds the base's loops on synthetic speech; one clip per call, because the temperature
    # fallback samples with a fixed seed per call: a clip's text then depends on nothing but the clip (in a batch
    # it would depend on its neighbours, and base-only and routed runs batch the clips differently)
    common = dict(max_new_tokens=min(440, longest + 16), batch_size=1)
    base = list(engine.transcribe([e.audio for e in examples], TranscribeOptions(adapter="none", **common)))
    routed = list(engine.transcribe([e.audio for e in examples], TranscribeOptions(domain="medical", **common)))
    print(f"{'clip':<6}{'base: language':<18}{'routed: language / adapter':<36}{'WER base':>9}{'WER routed':>11}")
    for k, (e, b, r) in enumerate(zip(examples, base, routed)):
        wb = score([e.text], [b.text], "fr").wer
        wr = score([e.text], [r.text], "fr").wer
        print(
            f"{k:<6}{b.language + f' {b.language_probability:.2f}':<18}"
            f"{f'{r.language} {r.language_probability:.2f} / {r.adapter}':<36}{wb:>9.3f}{wr:>11.3f}"
        )
    sb = score([e.text for e in examples], [b.text for b in base], "fr")
    sr = score([e.text for e in examples], [r.text for r in routed], "fr")
    print(
        f"\nheld-out clips: {len(examples)}   WER base {sb.wer:.3f} -> routed {sr.wer:.3f}   "
        f"CER {sb.cer:.3f} -> {sr.cer:.3f}"
    )
    print(f"example  ref: {examples[0].text}\n         base: {base[0].text[:120]}\n       routed: {routed[0].text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
