"""Real whisper-base: a short real training run, then routing on real clips and on its own held-out speech."""

import json
import os
from pathlib import Path

import pytest
from conftest import AUDIO

pytestmark = pytest.mark.integration
REAL = [json.loads(x) for x in (AUDIO / "manifest.jsonl").read_text().splitlines() if x.strip()]


@pytest.fixture(scope="session")
def short_run(tmp_path_factory, cache_dir):
    """`lora-whisper train --lang fr --domain medical` on the real 8-bit base, cut to 2 steps of 8 clips."""
    from click.testing import CliRunner

    from lora_whisper.cli import main

    tmp = tmp_path_factory.mktemp("real-train")
    res = CliRunner().invoke(
        main,
        [
            "--registry",
            str(tmp / "adapters"),
            "train",
            "--lang",
            "fr",
            "--domain",
            "medical",
            "--no-progress",
            "--set",
            "data.max_train=8",
            "--set",
            "data.max_test=4",
            "--set",
            "data.max_test_out=4",
            "--set",
            "train.max_steps=2",
            "--set",
            f"output.run_dir={tmp / 'run'}",
            "--set",
            "eval.skip_before=true",
            "--set",
            "calibration.max_per_source=20",
            "--set",
            "data.contrast_max=4",
        ],
    )
    assert res.exit_code == 0, res.output
    from lora_whisper.adapters.registry import Registry

    return Registry(tmp / "adapters")


def test_short_real_training_record(short_run):
    rec = short_run.get("fr-medical")
    assert rec.base["hub_id"] == "openai/whisper-base" and rec.metrics["steps"] == 2
    assert rec.lora["trainable_params"] == 1_179_648  # r=32 on q_proj, v_proj of 6+6 layers, self and cross attention
    assert (
        json.loads((rec.path / "adapter_config.json").read_text())["base_model_name_or_path"] == "openai/whisper-base"
    )


def test_eval_with_adapter_reproduces_training_figure(short_run, offline_base):
    from lora_whisper.train.data import validate
    from lora_whisper.train.recipe import find_recipe, load_recipe
    from lora_whisper.train.trainer import evaluate_adapter, inference_engine, load_data

    rec = short_run.get("fr-medical")
    recipe = load_recipe(find_recipe("fr", "medical"), ["data.max_train=8", "data.max_test=4", "data.max_test_out=4"])
    _, test = load_data(recipe)
    examples = validate(test, offline_base.processor.tokenizer).examples
    # train scores on the engine `transcribe` builds (ct2 on CPU), whatever base it trained on
    score = evaluate_adapter(inference_engine(offline_base, "offline", "auto", rec), examples, recipe, rec)
    assert round(score.wer, 4) == rec.metrics["after"]["wer"] and round(score.cer, 4) == rec.metrics["after"]["cer"]


def test_routed_real_clips_equal_base_without_matching_adapters(short_run, offline_base):
    """The registry holds only a (fr, medical) adapter; no --domain: every clip goes to the base, unchanged."""
    from lora_whisper.transcribe.engine import Engine, TranscribeOptions

    files = [AUDIO / r["audio"] for r in REAL]
    routed = list(Engine(offline_base, short_run).transcribe(files, TranscribeOptions()))
    base = list(Engine(offline_base).transcribe(files, TranscribeOptions(adapter="none")))
    assert [r.adapter for r in routed] == [None] * len(files)
    assert [r.text for r in routed] == [r.text for r in base]
    assert [r.language for r in routed] == [r["lang"] for r in REAL]


def test_cli_json_and_bad_inputs_with_real_base(short_run, wavs, tmp_path):
    from click.testing import CliRunner

    from lora_whisper.cli import main

    files = [wavs[k] for k in ("empty", "text", "truncated", "silence", "mp3", "missing")]
    files.insert(3, AUDIO / "fleurs-fr-000.wav")
    res = CliRunner().invoke(
        main,
        ["--registry", str(short_run.root), "transcribe", "--format", "json", "--domain", "medical", *map(str, files)],
    )
    assert res.exit_code == 1
    out = [json.loads(x) for x in res.stdout.splitlines()]
    assert [o["file"] for o in out] == [str(AUDIO / "fleurs-fr-000.wav"), str(wavs["mp3"])]
    assert out[0]["language"] == "fr" and out[0]["adapter"] == "fr-medical@1" and out[0]["merged"] is False
    errors = res.stderr.strip().splitlines()
    assert len(errors) == 5 and all(e.startswith("error: ") for e in errors)
    for k in ("empty", "text", "truncated", "silence", "missing"):
        assert any(str(wavs[k]) in e for e in errors), k


@pytest.mark.slow
def test_main_job_adapter_routes_without_language():
    """After `make demo`: held-out French medical speech routes to fr-medical with no language given, and the WER
    equals the adapter's own held-out figure (same clips, same decoding)."""
    from lora_whisper.adapters.registry import Registry
    from lora_whisper.base.loading import load_base
    from lora_whisper.scoring import score
    from lora_whisper.train.data import validate
    from lora_whisper.train.recipe import load_recipe
    from lora_whisper.train.trainer import _max_new_tokens, load_data
    from lora_whisper.transcribe.engine import Engine, TranscribeOptions

    reg = Registry(os.environ.get("LORA_WHISPER_ADAPTERS", Path(__file__).parents[1] / "adapters"))
    rec = reg.find("fr", "medical")
    if rec is None or rec.metrics.get("held_out", 0) < 60:
        pytest.skip("run `make demo` first")
    base = load_base("offline", "int8")
    recipe = load_recipe(None, [], **{k: rec.recipe[k] for k in ("language", "domain", "data", "eval")})
    _, test = load_data(recipe)
    examples = validate(test, base.processor.tokenizer).examples
    limit = _max_new_tokens(recipe, base, examples)
    engine = Engine(base, reg)
    inputs = [(e.id, e.audio) for e in examples]
    routed = list(engine.transcribe(inputs, TranscribeOptions(domain="medical", max_new_tokens=limit)))
    forced = list(engine.transcribe(inputs, TranscribeOptions(language="fr", adapter=rec.ref, max_new_tokens=limit)))
    refs = [e.text for e in examples]
    # the adapter's own figure is reproduced by the engine with language and adapter forced
    assert round(score(refs, [r.text for r in forced], "fr").wer, 4) == rec.metrics["after"]["wer"]
    # without the language, routing picks the adapter for (nearly) every clip, and those clips decode identically
    hits = [i for i, r in enumerate(routed) if r.adapter == rec.ref]
    assert len(hits) >= 0.95 * len(examples), [(r.language, r.route) for r in routed if r.adapter != rec.ref]
    assert all(routed[i].text == forced[i].text for i in hits)
    print(
        f"routed to {rec.ref}: {len(hits)}/{len(examples)}; WER routed "
        f"{score(refs, [r.text for r in routed], 'fr').wer:.3f} vs the adapter's figure {rec.metrics['after']['wer']}"
    )
