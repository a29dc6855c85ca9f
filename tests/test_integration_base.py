"""The real packaged whisper-base on real speech (tests/data/audio: see its README for sources and licences)."""

import json

import pytest
from click.testing import CliRunner
from conftest import AUDIO

pytestmark = pytest.mark.integration

MANIFEST = [json.loads(x) for x in (AUDIO / "manifest.jsonl").read_text().splitlines() if x.strip()]


def test_jfk_exact_reference_text(cache_dir):
    from lora_whisper.cli import main

    ref = next(r["text"] for r in MANIFEST if r["audio"] == "jfk_inaugural.wav")
    torch_run = CliRunner().invoke(main, ["--runtime", "torch", "transcribe", str(AUDIO / "jfk_inaugural.wav")])
    assert torch_run.exit_code == 0, torch_run.stderr
    # the CPU default (ct2: faster-whisper's pipeline at int8) and the torch runtime (float32) read the clip the
    # same way (zero-padded log-mel): the same words as the reference, one comma apart ("Americans, ask")
    ct2_run = CliRunner().invoke(main, ["transcribe", str(AUDIO / "jfk_inaugural.wav")])
    assert ct2_run.exit_code == 0, ct2_run.stderr
    for res in (torch_run, ct2_run):
        assert res.stdout.replace(",", "") == ref.replace(",", "") + "\n"


def test_detection_right_on_every_clip(offline_base):
    from lora_whisper.transcribe.engine import Engine

    engine = Engine(offline_base)
    results = list(engine.detect([AUDIO / r["audio"] for r in MANIFEST]))
    assert [r.language for r in results] == [r["lang"] for r in MANIFEST]
    assert all(r.probability > 0.9 for r in results)


def test_eval_real_clips_low_error(offline_base):
    from lora_whisper.train.data import load_manifest
    from lora_whisper.train.evaluation import evaluate
    from lora_whisper.transcribe.engine import Engine, TranscribeOptions

    loaded = load_manifest(AUDIO / "manifest.jsonl")
    report = evaluate(Engine(offline_base), loaded.examples, TranscribeOptions(adapter="none"))
    assert not report.errors and set(report.by_language) == {"en", "zh", "de", "es", "fr", "pt"}
    assert report.by_language["en"].wer == 0
    assert report.overall.wer < 0.3, report.to_dict()
