"""Writers for transcription results: txt, json (one object per line), srt, vtt."""

from __future__ import annotations

import json

from .engine import Transcription

FORMATS = ("txt", "json", "srt", "vtt")


def _ts(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def render(result: Transcription, fmt: str) -> str:
    """The text of one result in ``fmt``; json is a single line."""
    if fmt == "txt":
        return result.text + "\n"
    if fmt == "json":
        return json.dumps(result.to_dict(), ensure_ascii=False) + "\n"
    cues = [s for s in result.segments if s.text]
    if fmt == "srt":
        return "".join(f"{n}\n{_ts(s.start, ',')} --> {_ts(s.end, ',')}\n{s.text}\n\n" for n, s in enumerate(cues, 1))
    if fmt == "vtt":
        return "WEBVTT\n\n" + "".join(f"{_ts(s.start, '.')} --> {_ts(s.end, '.')}\n{s.text}\n\n" for s in cues)
    raise ValueError(f"format {fmt!r} is not one of {list(FORMATS)}")
