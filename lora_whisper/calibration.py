"""Routing calibration at the end of training: how the base and the new adapter score the adapter's language on its
validation clips and on real speech of other languages; ``routing.calibrate`` turns that into the threshold kept in
the adapter's registry record.

The probabilities are the ones the engine's adapter-consulted detection computes (``Decoder.language_probs``: one
decoder step after <|startoftranscript|>, over the language tokens), on the first 30 s of each clip.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .data import Example, load_folder, load_manifest, validate

logger = logging.getLogger("lora_whisper")


def load_negatives(sources: list[str], language: str, max_per_source: int) -> list[Example]:
    """Real clips of other languages than ``language`` from manifests or audiofolders (rows without a language or
    in ``language`` are skipped; unreadable rows are reported and skipped)."""
    from .config import expand_path

    out: list[Example] = []
    for src in sources:
        path = Path(expand_path(src))
        loaded = load_folder(path) if path.is_dir() else load_manifest(path)
        rows = [e for e in loaded.examples if e.language and e.language != language][:max_per_source]
        out += validate(type(loaded)(rows)).examples
    return out


def measure(base, adapter_dir: Path, decoder_only: bool, examples: list[Example], language: str, batch_size: int = 8):
    """(base probabilities over every language, the adapter's probability of ``language``) for each example.

    Wraps ``base.model`` in the adapter (peft); call it last on a base loaded for the purpose.
    """
    import torch
    from peft import PeftModel

    from .decoding import Decoder

    decoder = Decoder(base)
    model = PeftModel.from_pretrained(base.model, str(adapter_dir), is_trainable=False)
    model.eval()
    out = []
    with torch.inference_mode():
        for k in range(0, len(examples), batch_size):
            chunk = examples[k : k + batch_size]
            feats = decoder.features([e.load()[: 30 * 16000] for e in chunk])
            with model.disable_adapter():
                enc = decoder.encode(feats, model=model.base_model.model)
                base_probs = decoder.language_probs(enc, None, model=model.base_model.model)
            own_enc = enc if decoder_only else decoder.encode(feats, model=model.base_model.model)
            own = decoder.language_probs(own_enc, None, model=model.base_model.model)
            out += [(b, o.get(language, 0.0)) for b, o in zip(base_probs, own)]
    return out
