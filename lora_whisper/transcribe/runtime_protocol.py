"""The runtime protocol: what the engine asks of a runtime (``Runtime``) and what a runtime asks of the engine
(``Router``), and which runtime a run gets (``resolve_runtime``, ``check_runtime_options``).

Both runtimes (``runtime_torch.TorchRuntime``, ``runtime_ct2.CT2Runtime``) and the engine import this module; it
imports neither. ``runtime.build_engine`` puts them together.
"""

from __future__ import annotations

from collections.abc import Iterator
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


class Router(Protocol):
    """What a runtime asks of the engine while it walks an input: the routing, written once for every runtime."""

    def candidates(self, options) -> list[str] | None:
        """The languages detection is restricted to (None: all)."""

    def route_units(self, units: list, options, warnings: dict[int, list[str]]) -> None:
        """Give every unit (``units.Unit``) its route; warnings are collected per input (``Unit.file``)."""

    def result(self, item, units: list, segments: list, duration: float, options, warnings: list[str]):
        """The ``Transcription`` row of one input from its routed units and decoded segments."""


class Runtime(Protocol):
    """Everything the engine asks of a model: the walk of inputs (how audio is cut, batched, detected and decoded),
    what is resident, and the adapters it can resolve. The engine routes (``Router``); the runtime does the rest."""

    kind: str
    base: object
    """``identity`` (hub id, fingerprint) and ``languages`` (code -> token id) at least."""

    def check(self, options) -> None:
        """Raise TorchOnlyError (one line) when ``options`` ask for a feature this runtime does not have."""

    def detect_inputs(self, items: list, options, candidates: list[str] | None) -> Iterator[tuple[object, dict]]:
        """(input, language probabilities of its first 30 s of speech) per input in order, or a FileError for it."""

    def transcribe(self, items: list, options, router: Router) -> Iterator:
        """One ``Transcription`` (or ``FileError``) per input, in input order."""

    def stream(self, item, options, router: Router) -> Iterator:
        """One input's segments as they are decoded, then its ``Transcription`` (or a ``FileError``)."""

    def claims(self, units: list, record, options) -> dict[int, float]:
        """How sure adapter ``record`` is of its own language on each unit (by ``id``), from its own model."""

    def combine(self, refs: list[str], how: str, weights) -> None:
        """Make the combination of adapters ``refs`` resolvable (torch only)."""

    def detect(self, audio, candidates: list[str] | None = None, adapter: str | None = None) -> dict[str, float]:
        """Language probabilities of the first 30 s of ``audio`` (highest first), on the base or an adapter."""

    def decode(self, audio, language: str | None, options, adapter: str | None = None):
        """Raw segments of ``audio``: dicts with start, end (seconds in ``audio``), text, words and statistics."""

    @property
    def resident(self):
        """The adapters held in memory now (peft adapter names, or references of compiled models)."""

    def record(self, ref: str):
        """The record of adapter ``ref`` (the registry's, or one added with ``add``); raises RegistryError."""

    def add(self, record) -> None:
        """Make an adapter that is not (yet) in the registry resolvable by its reference."""

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
