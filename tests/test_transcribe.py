import json

import numpy as np
import pytest
from click.testing import CliRunner

from lora_whisper.transcribe.audio import AudioError, chunk_audio, load_audio
from lora_whisper.transcribe.engine import Engine, TranscribeOptions, Transcription
from lora_whisper.transcribe.output import render


@pytest.mark.parametrize(
    "kind, message",
    [
        ("empty", "empty file"),
        ("text", "cannot decode"),
        ("truncated", "cannot decode|truncated|only"),
        ("silence", "silent"),
        ("missing", "no such file"),
    ],
)
def test_bad_audio_one_line_error(wavs, kind, message):
    import re

    with pytest.raises(AudioError) as e:
        load_audio(wavs[kind])
    assert str(wavs[kind]) in str(e.value) and "\n" not in str(e.value)
    assert re.search(message, str(e.value))


def test_mp3_8k_stereo_is_resampled_to_16k_mono(wavs):
    a = load_audio(wavs["mp3"])
    assert a.ndim == 1 and abs(len(a) / 16000 - 2.0) < 0.1


def test_chunking_over_30s():
    a = np.ones(16000 * 65, np.float32)
    chunks = chunk_audio(a)
    assert [(c.start, c.end) for c in chunks] == [(0, 30), (30, 60), (60, 65)]
    assert chunk_audio(np.ones(16000 * 60 + 100, np.float32))[-1].end == 60  # a sliver is dropped


def test_batch_goes_on_after_bad_files(tiny_base, wavs):
    engine = Engine(tiny_base)
    order = ["good", "empty", "text", "mp3", "truncated", "silence", "missing", "good2"]
    results = list(
        engine.transcribe(
            [wavs[k] for k in order], TranscribeOptions(batch_size=2, max_new_tokens=5, temperature=(0.0,))
        )
    )
    assert [type(r).__name__ for r in results] == [
        "Transcription",
        "FileError",
        "FileError",
        "Transcription",
        "FileError",
        "FileError",
        "FileError",
        "Transcription",
    ]
    for k, r in zip(order, results):
        assert r.file == str(wavs[k])
        if isinstance(r, Transcription):
            assert r.adapter is None and r.language in tiny_base.languages and 0 < r.language_probability <= 1


def test_batched_equals_one_at_a_time(tiny_base, wavs):
    engine = Engine(tiny_base)
    files = [wavs["good"], wavs["good2"], wavs["mp3"]]
    opts = dict(max_new_tokens=6, language="fr", temperature=(0.0,))
    batched = [r.text for r in engine.transcribe(files, TranscribeOptions(batch_size=3, **opts))]
    single = [r.text for r in engine.transcribe(files, TranscribeOptions(batch_size=1, **opts))]
    assert batched == single


def test_language_restriction(tiny_base, wavs):
    engine = Engine(tiny_base)
    (d,) = engine.detect([wavs["good"]], TranscribeOptions(languages=["de", "es"]))
    assert set(d.languages) == {"de", "es"} and abs(sum(d.languages.values()) - 1) < 1e-5
    (r,) = engine.transcribe(
        [wavs["good"]], TranscribeOptions(languages=["de", "es"], max_new_tokens=3, temperature=(0.0,))
    )
    assert r.language in ("de", "es")
    (r,) = engine.transcribe([wavs["good"]], TranscribeOptions(language="pt", max_new_tokens=3, temperature=(0.0,)))
    assert r.language == "pt" and r.language_probability is None and r.languages == {}


def test_render_formats():
    from lora_whisper.transcribe.engine import Segment

    r = Transcription(
        "a.wav",
        "hello there",
        "en",
        0.9,
        None,
        False,
        35.0,
        segments=[Segment(0, 30, "hello", "en", 0.9, None), Segment(30, 35.5, "there", "en", 0.9, None)],
    )
    assert render(r, "txt") == "hello there\n"
    assert json.loads(render(r, "json"))["adapter"] is None
    assert "00:00:30,000 --> 00:00:35,500\nthere" in render(r, "srt")
    assert render(r, "vtt").startswith("WEBVTT") and "00:00:30.000 --> 00:00:35.500" in render(r, "vtt")


def test_cli_contract_json_and_errors(tiny_model_dir, wavs, tmp_path):
    from lora_whisper.cli import main

    runner = CliRunner()
    args = [
        "--base",
        str(tiny_model_dir),
        "--quantize",
        "none",
        "--registry",
        str(tmp_path / "reg"),
        "transcribe",
        "--temperature",
        "0",
        "--max-new-tokens",
        "6",
        "--format",
        "json",
        str(wavs["good"]),
        str(wavs["empty"]),
        str(wavs["mp3"]),
    ]
    res = runner.invoke(main, args)
    assert res.exit_code == 1, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [x["file"] for x in lines] == [str(wavs["good"]), str(wavs["mp3"])]
    for x in lines:
        assert {"file", "text", "language", "language_probability", "adapter", "merged"} <= set(x)
    assert res.stderr.strip() == f"error: {wavs['empty']}: empty file"
    out = tmp_path / "out"
    res = runner.invoke(main, args[:11] + ["--format", "srt", "--out", str(out), str(wavs["good"])])
    assert res.exit_code == 0 and (out / "good.srt").is_file()
    res = runner.invoke(main, args[:6] + ["detect", "--format", "json", "--languages", "fr,de", str(wavs["good"])])
    assert res.exit_code == 0 and set(json.loads(res.stdout)["languages"]) == {"fr", "de"}
