"""The pieces of audio a run moves through detect -> route -> decode, and how inputs are read and cut into them.

Shared by the engine (which routes ``Unit``s) and both runtimes (which cut inputs into units and decode them); no
torch, no transformers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np

from ..adapters.registry import RegistryError
from .audio import SAMPLE_RATE, AudioError, audio_info, load_audio, stream_audio
from .results import FileError
from .routing import Route
from .segments import BLOCK_SECONDS, WINDOW_SECONDS, DecodeOptions, Piece, filed_beam_size

D = TypeVar("D", bound=DecodeOptions)


@dataclass
class Unit:
    """A piece of one input on its way through detect -> route -> decode.

    ``features``, ``encoded`` and ``adapter_encoded`` are what a runtime keeps of the piece between detection and
    decoding (the torch runtime: log-mel features, the base's and consulted adapters' encoder outputs)."""

    file: int
    piece: Piece
    features: object = None
    encoded: object = None
    probs: dict[str, float] | None = None
    route: Route | None = None
    adapter_encoded: dict = field(default_factory=dict)


def input_name(item) -> str:
    """How an input is named in rows and errors: its path, or the name of an in-memory ``(name, samples)`` pair."""
    return item[0] if isinstance(item, tuple) else str(item)


def groups(items: list, n: int) -> Iterator[list]:
    for k in range(0, len(items), n):
        yield items[k : k + n]


def read(item, options) -> np.ndarray:
    """The samples of an input; raises AudioError naming it."""
    # with VAD, a silent file is no error: it has no speech, so no text
    return item[1] if isinstance(item, tuple) else load_audio(item, check_silence=not options.vad)


def total(item) -> float:
    """Length of an input in seconds (read from its header for a file)."""
    if isinstance(item, tuple):
        return len(item[1]) / SAMPLE_RATE
    return audio_info(item)


def length_kind(item):
    """'short' (at most 30 s: decoded in memory) or 'long' (streamed in blocks), or a FileError."""
    try:
        seconds = total(item)
    except AudioError as e:
        return FileError(input_name(item), str(e))
    return "long" if seconds > WINDOW_SECONDS + 0.05 else "short"


def blocks(item) -> Iterator[tuple[float, np.ndarray]]:
    """(offset, samples) of an input in blocks of ``BLOCK_SECONDS`` (memory stays flat in its length)."""
    if isinstance(item, tuple):
        n = int(BLOCK_SECONDS * SAMPLE_RATE)
        for k in range(0, len(item[1]), n):
            yield k / SAMPLE_RATE, item[1][k : k + n]
    else:
        yield from stream_audio(item, BLOCK_SECONDS)


def pieces(audio: np.ndarray, offset: float, options, split: bool) -> list[Piece]:
    """The pieces of a block: speech regions packed into <= 30 s (VAD), or the block itself when it fits, or
    30 s windows (``split`` without VAD)."""
    if options.vad or (split and len(audio) > WINDOW_SECONDS * SAMPLE_RATE):
        from .vad import VadOptions, pack, speech_regions

        if options.vad:
            vo = VadOptions(max_speech_duration_s=WINDOW_SECONDS) if split else VadOptions()
            regions = speech_regions(audio, vo)
        else:
            n = int(WINDOW_SECONDS * SAMPLE_RATE)
            regions = [(k, min(k + n, len(audio))) for k in range(0, len(audio), n)]
        out = []
        for group in pack(regions, WINDOW_SECONDS):
            a = np.concatenate([audio[s:e] for s, e in group])
            spans = [(offset + s / SAMPLE_RATE, offset + e / SAMPLE_RATE) for s, e in group]
            out.append(Piece(a, spans[0][0], spans))
        return out
    return [Piece(audio, offset)]


def join(parts: list[Piece], offset: float) -> Piece | None:
    """One piece of all speech in a block (VAD regions concatenated), or None without speech."""
    if not parts:
        return None
    audio = np.concatenate([p.audio for p in parts])
    spans = [s for p in parts for s in p.spans]
    return Piece(audio, spans[0][0] if spans else offset, spans)


def head(speech: Piece) -> Piece:
    """The first 30 s of a piece: what detection and routing look at."""
    return Piece(speech.audio[: int(WINDOW_SECONDS * SAMPLE_RATE)], speech.offset, speech.spans)


def decoding_for(holder, ref: str | None, options: D) -> D:
    """``options`` for adapter ``ref`` (None: the base): each field the run left unset (None) that the adapter's
    record files (``decoding``: ``drop_failed``, ``beam_size``) takes the record's value, the rest the project's
    defaults (keep failed windows, greedy), as a Hub model's ``generation_config.json`` sets its decoding defaults and
    a caller's arguments override them. ``holder`` resolves references to records (a runtime)."""
    filed = {}
    if ref is not None and (options.drop_failed is None or options.beam_size is None):
        try:
            filed = holder.record(ref).decoding or {}
        except RegistryError:
            filed = {}
    beam = filed_beam_size(filed.get("beam_size")) or 1
    return replace(
        options,
        drop_failed=bool(filed.get("drop_failed", False)) if options.drop_failed is None else options.drop_failed,
        beam_size=beam if options.beam_size is None else options.beam_size,
    )
