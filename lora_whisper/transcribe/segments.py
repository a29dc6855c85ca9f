"""The result rows and decoding options every runtime shares (no torch, no transformers).

``Word``, ``Segment``, ``DecodeOptions`` and ``Piece`` are what a runtime returns or takes; the torch runtime's
``decoding`` module and the CTranslate2 runtime (``runtime_ct2``) both speak them, and ``engine`` re-exports them.
They live here, outside ``decoding`` (which patches transformers at import), so that a CTranslate2 run imports
neither torch nor transformers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

WINDOW_SECONDS = 30.0
"""Whisper's receptive field."""
BLOCK_SECONDS = 240.0
"""Long-form audio is decoded in blocks of this length by the torch runtime (features and encoder work stay
bounded); the last window of a block is decoded again at the start of the next one, with the previous text as the
prompt."""
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
TASKS = ("transcribe", "translate")


@dataclass
class Word:
    """One word with its time in the file (from cross-attention on the alignment heads)."""

    start: float
    end: float
    word: str
    probability: float | None = None


@dataclass
class Segment:
    """A stretch of speech with its text, as decoded (times in seconds from the start of the file)."""

    start: float
    end: float
    text: str
    language: str | None = None
    language_probability: float | None = None
    adapter: str | None = None
    merged: bool = False
    words: list[Word] | None = None
    avg_logprob: float | None = None
    compression_ratio: float | None = None
    no_speech_prob: float | None = None
    temperature: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("avg_logprob", "compression_ratio", "no_speech_prob", "language_probability"):
            if d[k] is not None:
                d[k] = round(d[k], 4)
        if d["words"] is None:
            del d["words"]
        return d


MAX_BEAM_SIZE = 16
"""The widest beam an adapter's record may file (``decoding.beam_size``)."""


def filed_beam_size(value) -> int | None:
    """``value`` when it is a beam size a record or recipe may file (an integer from 1 to MAX_BEAM_SIZE), else None."""
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_BEAM_SIZE
    return value if ok else None


@dataclass
class DecodeOptions:
    """How to decode (names as in openai-whisper / faster-whisper)."""

    task: str = "transcribe"
    """``transcribe`` or ``translate`` (to English)."""
    beam_size: int | None = None
    """1 = greedy (at temperature 0). None: as the routed adapter's record says (``decoding.beam_size``, from its
    recipe's ``eval.beam_size``), else greedy."""
    temperature: tuple[float, ...] = TEMPERATURES
    """Temperatures tried in turn when a window fails the checks below (fallback)."""
    compression_ratio_threshold: float | None = 2.4
    """A window whose text gzip-compresses better than this is repetitive: decode it again hotter."""
    logprob_threshold: float | None = -1.0
    """A window whose average token log-prob is below this is decoded again hotter."""
    no_speech_threshold: float | None = 0.6
    """A window with no-speech probability above this and a low log-prob is silence: skipped."""
    condition_on_previous_text: bool = True
    """Prompt each window with the text before it (consistent style and names; can propagate a loop)."""
    initial_prompt: str | None = None
    """Text to prompt the first window with (spelling of names, style)."""
    word_timestamps: bool = False
    """Words with start/end times (cross-attention on the alignment heads; forces eager attention, slower)."""
    drop_failed: bool | None = None
    """Leave out a window whose every temperature failed the checks above (the try kept is still repetitive or
    improbable), as a no-speech window is; Whisper keeps it. None: as the routed adapter's record says
    (``decoding.drop_failed``, from its recipe); the base keeps such windows."""
    max_new_tokens: int | None = None
    """Token limit per window. Default on the torch runtime: half the decoder's context, 220 for Whisper's 448, as
    openai-whisper's ``sample_len`` (the other half holds the previous-text prompt); on the ct2 runtime:
    faster-whisper's, the rest of the 448-token context."""


@dataclass
class Piece:
    """At most 30 s of one input's audio, with where it lies in the file (VAD may have removed silence inside)."""

    audio: np.ndarray
    offset: float
    """Start time in the file of the piece's first sample."""
    spans: list[tuple[float, float]] = field(default_factory=list)
    """(start, end) in the file of each speech span concatenated into ``audio`` (empty: contiguous audio)."""

    def to_file_time(self, t: float) -> float:
        """Map a time inside the piece to the file (skipping the silence that VAD removed)."""
        if not self.spans:
            return round(self.offset + t, 3)
        acc = 0.0
        for s, e in self.spans:
            if t <= acc + (e - s) + 1e-6:
                return round(s + (t - acc), 3)
            acc += e - s
        s, e = self.spans[-1]
        return round(e, 3)


def failed_window(segment: dict, options: DecodeOptions) -> bool:
    """Whether a decoded window failed the fallback checks at every temperature.

    faster-whisper and the torch decoder stop at the first temperature whose try passes (compression ratio at most
    ``compression_ratio_threshold``, average log-prob at least ``logprob_threshold``); a window they return that
    still fails a check is one where no temperature passed, and they keep a try anyway. Where only the first
    temperature is tried (batched long-form, mixed batches), failing it counts as failing.
    """
    cr, lp = segment.get("compression_ratio"), segment.get("avg_logprob")
    too_repetitive = options.compression_ratio_threshold is not None and cr is not None
    too_repetitive = too_repetitive and cr > options.compression_ratio_threshold
    improbable = options.logprob_threshold is not None and lp is not None and lp < options.logprob_threshold
    return bool(too_repetitive or improbable)
