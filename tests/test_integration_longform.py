"""Long-form decoding on the real whisper-base: a 2+ minute file of real English clips joined with silences."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import AUDIO

pytestmark = pytest.mark.integration

CV = Path(__file__).parent / "data" / "cv-en-long"


def _joined():
    from lora_whisper.transcribe.audio import load_audio

    rows = [json.loads(x) for x in (CV / "manifest.jsonl").read_text().splitlines() if x.strip()]
    items = [(CV / r["audio"], r["text"]) for r in rows]
    jfk = json.loads(next(x for x in (AUDIO / "manifest.jsonl").read_text().splitlines() if "jfk" in x))
    items = items[:12] + [(AUDIO / jfk["audio"], jfk["text"])] + items[12:]
    parts, refs, bounds, t = [], [], [], 0.0
    for path, text in items:
        a = load_audio(path)
        parts += [a, np.zeros(8000, np.float32)]
        refs.append(text)
        t += len(a) / 16000 + 0.5
        bounds.append(t - 0.25)
    return np.concatenate(parts), " ".join(refs), bounds[:-1]


@pytest.fixture(scope="module")
def engine_fp32():
    from lora_whisper.base.loading import load_base
    from lora_whisper.transcribe.engine import Engine

    return Engine(load_base("offline", quantize="none", device="cpu"))


@pytest.mark.parametrize("mode", ["sequential", "batched"])
def test_long_file_text_segments_and_times(engine_fp32, mode):
    from lora_whisper.scoring import score
    from lora_whisper.transcribe.engine import Segment, TranscribeOptions

    audio, ref, bounds = _joined()
    duration = len(audio) / 16000
    assert duration > 120
    opts = TranscribeOptions(language="en", adapter="none", long_form=mode, vad=mode == "batched")
    items = list(engine_fp32.stream(("joined", audio), opts))
    res, segs = items[-1], [x for x in items if isinstance(x, Segment)]
    assert segs == res.segments and len(segs) >= 10, res.to_dict()
    assert all(0 <= s.start < s.end <= duration + 0.01 for s in segs)
    assert all(a.end <= b.start + 0.01 for a, b in zip(segs, segs[1:]))  # monotonic cues
    assert score([ref], [res.text], "en").wer < 0.2, res.text
    # cue boundaries fall near the real clip boundaries
    edges = sorted({t for s in segs for t in (s.start, s.end)})
    near = float(np.median([min(abs(b - e) for e in edges) for b in bounds]))
    assert near < 1.0, near


def test_word_timestamps_real(engine_fp32):
    from lora_whisper.transcribe.engine import TranscribeOptions

    (res,) = engine_fp32.transcribe([AUDIO / "jfk_inaugural.wav"], TranscribeOptions(word_timestamps=True))
    words = [w for s in res.segments for w in s.words]
    assert " ".join(w.word.strip() for w in words).startswith("And so my fellow Americans")
    assert all(a.start <= b.start for a, b in zip(words, words[1:])) and words[-1].end <= 11.01
    assert 0.3 < words[0].start < 1.2  # "And" is spoken at about 0.5 s
