"""Runtimes: what turns audio and an adapter choice into language probabilities and segments, and the engine over one.

Two implementations of one protocol (``runtime_protocol.Runtime``):

- ``torch`` (``runtime_torch.TorchRuntime``): transformers + peft on the base, adapters hot-swapped without merging (the
  ``AdapterPool``: LRU with pins, merged copies, combinations, mixed-adapter batches). Training, GPUs, and the
  torch-only features.
- ``ct2`` (``runtime_ct2.CT2Runtime``): faster-whisper's ``WhisperModel`` on CTranslate2 models; adapters compiled on
  first use (merged in float32, converted, cached in the registry), an LRU of compiled models. The CPU default.

``auto`` is ``ct2`` for inference on CPU and ``torch`` on CUDA (``resolve_runtime``). The engine keeps routing (the
``Router`` a runtime calls back while it walks an input); ``build_engine`` makes an engine over the runtime a command
asked for. This module sits above the engine and both runtimes: nothing below imports it.
"""

from __future__ import annotations

from .runtime_protocol import (  # noqa: F401 - the names callers import from here
    RUNTIMES,
    TORCH_ONLY,
    Router,
    Runtime,
    TorchOnlyError,
    check_runtime_options,
    cuda_available,
    cuda_count,
    resolve_runtime,
    torch_only,
)


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


_LAZY = {"TorchRuntime": "runtime_torch", "CT2Runtime": "runtime_ct2"}
"""Runtime classes importable from here, imported when asked for (torch's only for the torch one)."""


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
