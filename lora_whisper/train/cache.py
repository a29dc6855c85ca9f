"""What a run computes once per clip and keeps: the frozen encoder's outputs (decoder-only LoRA) and speed copies."""

from __future__ import annotations

import os
from pathlib import Path

from ..base.loading import Base, cache_dir
from .data import Example


def samples_digest(e: Example) -> str:
    """sha256 of a clip's samples (float32): what the encoder cache and the contrast/negative check key on."""
    import hashlib

    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(e.load(), dtype=np.float32).tobytes()).hexdigest()


def encoder_cache(base: Base, examples: list[Example], batch_size: int, progress=None):
    """Frozen-encoder outputs for every clip, computed once per clip and base (float16 safetensors in the cache dir).

    Keyed per clip (its samples) rather than per data set, so runs over other subsets of the same clips (a learning
    curve, another validation split) reuse what was computed and only encode clips never seen.
    """

    import torch
    from safetensors.torch import load_file, save_file

    folder = cache_dir() / "encoder" / f"{base.identity.fingerprint}-{base.quantize}".replace(":", "")[:80]
    folder.mkdir(parents=True, exist_ok=True)

    def path_of(e: Example) -> Path:
        return folder / f"{samples_digest(e)[:32]}.safetensors"

    paths = [path_of(e) for e in examples]
    todo = [i for i, p in enumerate(paths) if not p.is_file()]
    if progress and len(todo) < len(examples):
        progress(len(examples) - len(todo))
    engine = None
    for k in range(0, len(todo), batch_size):
        if engine is None:
            from ..transcribe.engine import Engine

            engine = Engine(base)
            engine.decoder.padding = "audio"  # training's features: transformers' (the cache holds only these)
        idx = todo[k : k + batch_size]
        hidden = engine.encode(engine.features([examples[i].audio for i in idx])).to("cpu", torch.float16)
        for i, h in zip(idx, hidden):
            tmp = paths[i].with_suffix(f".{os.getpid()}.tmp")
            save_file({"hidden": h.contiguous()}, str(tmp))
            os.replace(tmp, paths[i])  # atomic: a killed run leaves whole files only
        if progress:
            progress(len(idx))
    # filled in place: stacking a list of loaded tensors held the cache twice (18 GB peak for 3,718 clips: the kernel
    # killed a Persian run with speed copies on a 24 GB machine)
    if not paths:
        return torch.empty(0)
    first = load_file(str(paths[0]))["hidden"]
    out = torch.empty((len(paths), *first.shape), dtype=first.dtype)
    for j, p in enumerate(paths):
        out[j] = first if j == 0 else load_file(str(p))["hidden"]
    return out


def perturb_speed(audio, factor: float):
    """Speed perturbation (tempo and pitch, as Kaldi's): resample as if recorded at ``16 kHz x factor``."""
    import numpy as np
    import soxr

    if abs(factor - 1.0) < 1e-3:
        return audio
    return soxr.resample(audio, 16000 * factor, 16000).astype(np.float32)


def speed_copies(
    examples: list[Example], factors: tuple[float, float], copies: int, seed: int, progress: bool = False
) -> list[Example]:
    """``copies`` speed-perturbed copies of each example, each at a factor drawn once from ``factors`` (seeded).

    For decoder-only training, whose encoder output is cached per clip: a fixed copy is what can be cached (Kaldi's
    offline speed perturbation), where encoder+decoder training draws a new factor at every access (``_dataset``).
    The copies keep the text and speaker; their labels carry no timestamps (the span moved).
    """
    import random

    from tqdm import tqdm

    rng = random.Random(seed + 7919)
    out = []
    for e in tqdm(examples, desc="speed copies", unit="clip", disable=not progress):
        audio = e.load()
        for _ in range(copies):
            f = rng.uniform(*factors)
            out.append(
                Example(f"{e.id}@speed{f:.3f}", perturb_speed(audio, f), e.text, e.language, e.speaker, timed=False)
            )
    return out
