"""Voice activity detection: Silero VAD as packaged by faster-whisper (its ONNX model file and helpers).

The only module that imports faster_whisper at run time for decoding; the VAD runs on onnxruntime, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .audio import SAMPLE_RATE


@dataclass
class VadOptions:
    """Silero VAD settings (faster-whisper's names and defaults, except where noted)."""

    threshold: float = 0.5
    """Speech probability above which a 32 ms frame is speech."""
    min_silence_duration_ms: int = 2000
    """Silence shorter than this does not end a speech region."""
    speech_pad_ms: int = 400
    """Padding kept around each speech region."""
    min_speech_duration_ms: int = 250
    """Speech regions shorter than this are dropped (faster-whisper: 0; a 250 ms blip holds no word)."""
    max_speech_duration_s: float = float("inf")
    """Longer regions are split (at a silence of 100 ms or more when there is one)."""


def speech_regions(audio: np.ndarray, options: VadOptions | None = None) -> list[tuple[int, int]]:
    """(start, end) sample indices of the speech regions of 16 kHz mono audio."""
    from faster_whisper.vad import VadOptions as FwVadOptions
    from faster_whisper.vad import get_speech_timestamps

    o = options or VadOptions()
    fw = FwVadOptions(
        threshold=o.threshold,
        min_silence_duration_ms=o.min_silence_duration_ms,
        speech_pad_ms=o.speech_pad_ms,
        min_speech_duration_ms=o.min_speech_duration_ms,
        max_speech_duration_s=o.max_speech_duration_s,
    )
    if len(audio) == 0:
        return []
    return [(int(c["start"]), int(c["end"])) for c in get_speech_timestamps(audio, fw, sampling_rate=SAMPLE_RATE)]


def pack(regions: list[tuple[int, int]], max_seconds: float = 30.0) -> list[list[tuple[int, int]]]:
    """Group consecutive speech regions into pieces of at most ``max_seconds`` of speech (faster-whisper's
    collect_chunks rule: a region that would overflow the piece starts the next one)."""
    limit = int(max_seconds * SAMPLE_RATE)
    pieces, cur, dur = [], [], 0
    for s, e in regions:
        while e - s > limit:  # a region longer than a piece (max_speech_duration_s not applied): cut it
            if cur:
                pieces.append(cur)
                cur, dur = [], 0
            pieces.append([(s, s + limit)])
            s += limit
        if cur and dur + (e - s) > limit:
            pieces.append(cur)
            cur, dur = [], 0
        cur.append((s, e))
        dur += e - s
    if cur:
        pieces.append(cur)
    return pieces
