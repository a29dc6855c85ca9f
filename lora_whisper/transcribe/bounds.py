"""Bounds of the transcription options, checked wherever options come from outside (command-line flags, the server's
``--set`` defaults) before any model loads: types, finite numbers and ranges (a beam of 100000 takes gigabytes before
failing, a NaN threshold silently turns a check off). ``TranscribeOptions.validate`` keeps the choices (task,
long-form mode, batching); this module keeps the numbers."""

from __future__ import annotations

import math

from ..adapters.schema import show as _show
from .segments import MAX_BEAM_SIZE

MAX_BATCH_SIZE = 256
"""Most pieces per encoder / generate call."""
MAX_TOP_K = 100
"""Whisper has 100 languages."""
MAX_PROMPT_CHARS = 4000
"""An initial prompt longer than this is refused (Whisper keeps the last 223 tokens of it anyway)."""
MAX_NEW_TOKENS = 440
"""Whisper's 448 decoder positions, less the start tokens."""


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _in(v, low: float, high: float) -> bool:
    return _number(v) and low <= v <= high


RULES: dict[str, tuple] = {
    "beam_size": (lambda v: _integer(v) and 1 <= v <= MAX_BEAM_SIZE, f"an integer from 1 to {MAX_BEAM_SIZE}"),
    "max_new_tokens": (lambda v: _integer(v) and 1 <= v <= MAX_NEW_TOKENS, f"an integer from 1 to {MAX_NEW_TOKENS}"),
    "batch_size": (lambda v: _integer(v) and 1 <= v <= MAX_BATCH_SIZE, f"an integer from 1 to {MAX_BATCH_SIZE}"),
    "top_k": (lambda v: _integer(v) and 1 <= v <= MAX_TOP_K, f"an integer from 1 to {MAX_TOP_K}"),
    "temperature": (
        lambda v: isinstance(v, (tuple, list)) and 0 < len(v) <= 20 and all(_in(t, 0, 1) for t in v),
        "1 to 20 numbers from 0 to 1",
    ),
    "compression_ratio_threshold": (lambda v: _number(v) and v > 0, "a finite number > 0"),
    "logprob_threshold": (_number, "a finite number"),
    "no_speech_threshold": (lambda v: _in(v, 0, 1), "a number from 0 to 1"),
    "threshold": (lambda v: _in(v, 0, 1), "a number from 0 to 1"),
    "consult_below": (lambda v: _in(v, 0, 1), "a number from 0 to 1"),
    "combine_weights": (
        lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and all(_in(w, -10, 10) for w in v),
        "two numbers from -10 to 10",
    ),
    "initial_prompt": (
        lambda v: isinstance(v, str) and len(v) <= MAX_PROMPT_CHARS,
        f"a text of at most {MAX_PROMPT_CHARS} characters",
    ),
    "language": (lambda v: isinstance(v, str), "a language code"),
    "languages": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of language codes"),
    "domain": (
        lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
        "a domain or a list of domains",
    ),
    "adapter": (lambda v: isinstance(v, str), "auto, none or an adapter name"),
}
"""option -> (test, what it must be); None passes every test (the option's default or 'unset')."""
FLAGS = ("condition_on_previous_text", "word_timestamps", "drop_failed", "vad", "merge", "per_segment")
"""Options that must be true or false."""


def problems(options) -> list[str]:
    """Every option of ``options`` (TranscribeOptions, or a dict of its fields) out of bounds, one line each."""
    get = options.get if isinstance(options, dict) else (lambda k, d=None: getattr(options, k, d))
    out = []
    for name, (test, what) in RULES.items():
        v = get(name, None)
        if v is not None and not test(v):
            out.append(f"{name} must be {what}, got {_show(v)}")
    for name in FLAGS:
        v = get(name, None)
        if v is not None and not isinstance(v, bool):
            out.append(f"{name} must be true or false, got {_show(v)}")
    return out


def check(options) -> None:
    """Raise ValueError naming every option out of bounds (one line)."""
    if bad := problems(options):
        raise ValueError("; ".join(bad))
