"""Runtimes: what turns audio and an adapter choice into language probabilities and segments.

Two implementations of one small interface (``Runtime``):

- ``torch`` (``TorchRuntime``): transformers + peft on the base, adapters hot-swapped without merging (the
  ``AdapterPool``: LRU with pins, merged copies, combinations, mixed-adapter batches). Training, GPUs, and the
  torch-only features below.
- ``ct2`` (``runtime_ct2.CT2Runtime``): faster-whisper's ``WhisperModel`` on CTranslate2 models; adapters compiled on
  first use (merged in float32, converted, cached in the registry), an LRU of compiled models. The CPU default.

``auto`` is ``ct2`` for inference on CPU and ``torch`` on CUDA (``resolve_runtime``). The engine keeps routing and
orchestration; ``build_engine`` makes an engine over the runtime a command asked for.
"""

from __future__ import annotations

from typing import Protocol

RUNTIMES = ("auto", "torch", "ct2")

TORCH_ONLY = {
    "merge": "--merge",
    "combine": "--combine",
    "batching": "--batching mixed",
    "per_segment": "--route per-segment",
}
"""Options the ct2 runtime does not have (option field -> how the user spelled it)."""


class TorchOnlyError(ValueError):
    """A ct2 run asked for a torch-only feature; the message is one line naming the option."""


class Runtime(Protocol):
    """detect / decode / load / unload: everything the engine asks of a model."""

    kind: str
    base: object
    """``identity`` (hub id, fingerprint) and ``languages`` (code -> token id) at least."""

    def detect(self, audio, candidates: list[str] | None = None, adapter: str | None = None) -> dict[str, float]:
        """Language probabilities of the first 30 s of ``audio`` (highest first), on the base or an adapter."""

    def decode(self, audio, language: str | None, options, adapter: str | None = None):
        """Raw segments of ``audio``: dicts with start, end (seconds in ``audio``), text, words and statistics."""

    def resolve(self, ref: str):
        """(record, None) with the adapter ready to use, or (None, one-line warning): the run goes on with the base."""

    def unload(self, ref: str) -> None:
        """Drop an adapter from memory."""


def cuda_count() -> int:
    """How many CUDA GPUs are visible, asked of CTranslate2 (no torch import)."""
    try:
        import ctranslate2

        return int(ctranslate2.get_cuda_device_count())
    except Exception:  # noqa: BLE001 - no ctranslate2, or no driver
        return 0


def cuda_available() -> bool:
    return cuda_count() > 0


def torch_only(options) -> str | None:
    """The first torch-only feature ``options`` (TranscribeOptions, or a dict of its fields) asks for, as the user
    spells it (``--merge``), or None."""
    if options is None:
        return None
    get = options.get if isinstance(options, dict) else (lambda k, d=None: getattr(options, k, d))
    for name, flag in TORCH_ONLY.items():
        value = get(name, None)
        if name == "batching":
            value = value == "mixed"
        if value:
            return flag
    return None


def resolve_runtime(runtime: str | None, device: str | None = None, options=None) -> str:
    """``auto`` -> ``torch`` on CUDA (asked for, or visible with no device given) or when ``options`` ask for a
    torch-only feature, else ``ct2``. An explicit choice is kept (``check_runtime_options`` then says what is
    missing)."""
    runtime = (runtime or "auto").lower()
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r} is not one of {list(RUNTIMES)}")
    if runtime != "auto":
        return runtime
    if torch_only(options):
        return "torch"
    device = (device or "auto").lower()
    if device.startswith("cuda"):
        return "torch"
    if device == "cpu":
        return "ct2"
    return "torch" if cuda_available() else "ct2"


def check_runtime_options(kind: str, options) -> None:
    """Raise TorchOnlyError (one line) when a ct2 run asks for a torch-only feature."""
    if kind != "ct2":
        return
    flag = torch_only(options)
    if flag:
        raise TorchOnlyError(
            f"{flag} needs the torch runtime (the ct2 runtime has no such feature): use --runtime torch"
        )


class TorchRuntime:
    """The torch runtime: transformers' Whisper on the base, peft adapters in an ``AdapterPool``.

    The engine's torch path uses ``decoder`` and ``pool`` directly (batched short clips, blocked long-form, mixed
    batches, merges, combinations); the methods below are the common interface over them.
    """

    kind = "torch"

    def __init__(self, base, registry=None, cache_size: int = 4):
        from .decoding import Decoder
        from .pool import AdapterPool

        self.base = base
        self.registry = registry
        self.decoder = Decoder(base)
        self.pool = AdapterPool(base, registry, cache_size)

    @property
    def languages(self) -> dict[str, int]:
        return self.base.languages

    def detect(self, audio, candidates=None, adapter=None) -> dict[str, float]:
        from .pool import adapter_key

        key = adapter_key(adapter) if adapter else None
        if key:
            self.pool.ensure(adapter)
        with self.pool.active(key):
            enc = self.decoder.encode(self.decoder.features([audio[: 30 * 16000]]))
            return self.decoder.language_probs(enc, candidates)[0]

    def decode(self, audio, language, options, adapter=None):
        from .pool import adapter_key

        key = adapter_key(adapter) if adapter else None
        if key:
            self.pool.ensure(adapter)
        feats, mask = self.decoder.long_features(audio)
        with self.pool.using([key]), self.pool.active(key):
            rows = self.decoder.generate(
                [language], options, features=feats, attention_mask=mask, prompt=options.initial_prompt
            )
        yield from rows[0]

    def resolve(self, ref: str):
        return self.pool.resolve(ref)

    def unload(self, ref: str) -> None:
        from .pool import adapter_key

        key = adapter_key(ref)
        if key in self.pool.resident and not self.pool.in_use.get(key):
            del self.pool.resident[key]
            self.pool.peft.delete_adapter(key)


def build_engine(
    base: str = "offline",
    quantize: str = "auto",
    device: str | None = None,
    registry=None,
    cache_size: int = 4,
    runtime: str = "auto",
    threads: int = 0,
    options=None,
    workers: int = 1,
):
    """An Engine over the runtime asked for (``auto``: ct2 on CPU, torch on CUDA or when ``options`` need torch)."""
    from .engine import Engine

    kind = resolve_runtime(runtime, device, options)
    if kind == "ct2":
        from .runtime_ct2 import CT2Runtime, load_ct2_base

        rt = CT2Runtime(load_ct2_base(base, quantize, device), registry, cache_size, threads, workers)
        return Engine(None, registry, cache_size, runtime=rt)
    from ..base.loading import load_base, quiet_libraries

    quiet_libraries()
    if threads:
        import torch

        torch.set_num_threads(threads)
    return Engine(load_base(base, quantize, device), registry, cache_size=cache_size)
