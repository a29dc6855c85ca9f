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


def output_names(files: list, fmt: str) -> dict[str, str]:
    """A distinct ``--out`` file name for every input (keyed as the engine names results: ``str(path)``).

    ``NAME.<fmt>`` from the input's stem; inputs that share it (``a/good1.wav``, ``b/good1.wav``, ``good1.flac``)
    are told apart by more of their path, the extension then the folders above, joined with ``__``
    (``good1.flac.srt``, ``a__good1.wav.srt``), so that no transcript overwrites another. The same file named
    twice keeps one name.
    """
    from pathlib import Path

    paths = {str(f): Path(str(f)).resolve() for f in files if not isinstance(f, tuple)}
    unique = sorted(set(paths.values()))
    level = dict.fromkeys(unique, 0)

    def name(p: Path, k: int) -> str:
        if k == 0:
            return p.stem
        folders = p.parent.relative_to(p.anchor).parts
        return "__".join([*folders[max(0, len(folders) - (k - 1)) :], p.name])

    names: dict[Path, str] = {}
    for _ in range(max((len(p.parts) for p in unique), default=0) + 2):
        names = {p: name(p, level[p]) for p in unique}
        taken: dict[str, list[Path]] = {}
        for p in unique:
            taken.setdefault(names[p].lower(), []).append(p)  # case-insensitive file systems too
        clashes = [ps for ps in taken.values() if len(ps) > 1]
        if not clashes:
            break
        for ps in clashes:
            for p in ps:
                level[p] += 1
    else:  # paths that spell the same name even in full (a__b/c, a/b__c): numbered
        seen: dict[str, int] = {}
        for p in unique:
            n = seen[names[p].lower()] = seen.get(names[p].lower(), 0) + 1
            names[p] += f"-{n}" if n > 1 else ""
    return {key: f"{names[p]}.{fmt}" for key, p in paths.items()}
