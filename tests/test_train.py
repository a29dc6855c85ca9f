"""Training on the tiny random Whisper with synthetic speech: the real Trainer / peft / bitsandbytes paths."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner
from conftest import TINY_HUB_ID

from lora_whisper.cli import main
from lora_whisper.registry import Registry

SMALL = [
    "--set",
    "data.max_train=8",
    "--set",
    "data.max_test=4",
    "--set",
    "train.batch_size=4",
    "--set",
    "data.train_voices=2",
    "--set",
    "data.test_voices=2",
]


def _args(tiny_model_dir, tmp_path, *extra, quantize="int8") -> list[str]:
    """`lora-whisper ... train --lang fr --domain medical` on the tiny base with a few synthetic clips."""
    return [
        *("--base", str(tiny_model_dir), "--quantize", quantize, "--registry", str(tmp_path / "adapters")),
        *("train", "--lang", "fr", "--domain", "medical", "--no-progress"),
        *("--set", f"output.run_dir={tmp_path / 'run'}", *SMALL, *extra),
    ]


def _train(tiny_model_dir, tmp_path, *extra, quantize="int8"):
    return CliRunner().invoke(main, _args(tiny_model_dir, tmp_path, *extra, quantize=quantize))


def test_short_training_files_a_complete_record(tiny_model_dir, tmp_path):
    res = _train(tiny_model_dir, tmp_path, "--set", "train.max_steps=2")
    assert res.exit_code == 0, res.output
    rec = Registry(tmp_path / "adapters").get("fr-medical")
    assert (rec.language, rec.domain, rec.version) == ("fr", "medical", 1)
    assert rec.base["hub_id"] == TINY_HUB_ID and rec.base["fingerprint"].startswith("sha256:")
    assert rec.data_fingerprint.startswith("sha256:") and rec.train_seconds > 0
    for side in ("before", "after"):
        assert set(rec.metrics[side]) >= {"wer", "cer", "wer_raw", "cer_raw", "n"}
    assert rec.metrics["steps"] == 2 and rec.recipe["train"]["max_steps"] == 2
    assert rec.lora["scope"] == "encoder+decoder" and rec.lora["trainable_params"] > 0
    files = {p.name for p in rec.path.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "lora_whisper.json",
        "recipe.yaml",
        "training.png",
    } <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth"))]
    assert json.loads((rec.path / "adapter_config.json").read_text())["base_model_name_or_path"] == TINY_HUB_ID
    assert (tmp_path / "run" / "runs").is_dir()  # TensorBoard event files
    assert "WER" in res.stdout and "fr-medical@1" in res.stdout
    # training the same pair again makes version 2, active
    assert (
        _train(tiny_model_dir, tmp_path, "--set", "train.max_steps=1", "--set", "eval.skip_before=true").exit_code == 0
    )
    assert Registry(tmp_path / "adapters").get("fr-medical").version == 2


def test_decoder_only_trains_on_cached_encoder_output(tiny_model_dir, tmp_path, cache_dir):
    before = set((cache_dir / "encoder").glob("*.safetensors")) if (cache_dir / "encoder").is_dir() else set()
    res = _train(
        tiny_model_dir,
        tmp_path,
        "--set",
        "lora.scope=decoder",
        "--set",
        "train.max_steps=2",
        "--set",
        "eval.skip_before=true",
    )
    assert res.exit_code == 0, res.output
    rec = Registry(tmp_path / "adapters").get("fr-medical")
    assert rec.lora["scope"] == "decoder" and rec.decoder_only
    assert "encoder" not in json.loads((rec.path / "adapter_config.json").read_text())["target_modules"].replace(
        "encoder_attn", ""
    )
    assert len(set((cache_dir / "encoder").glob("*.safetensors")) - before) <= 1  # computed once (or reused)


def test_gradient_checkpointing_with_8bit_base(tiny_model_dir, tmp_path):
    res = _train(
        tiny_model_dir,
        tmp_path,
        "--set",
        "train.gradient_checkpointing=true",
        "--set",
        "train.max_steps=2",
        "--set",
        "eval.skip_before=true",
    )
    assert res.exit_code == 0, res.output


def test_bad_data_files_nothing(tiny_model_dir, tmp_path, wavs):
    m = tmp_path / "bad.jsonl"
    m.write_text(
        json.dumps({"audio": str(wavs["empty"]), "text": "x"})
        + "\n"
        + json.dumps({"audio": str(wavs["good"]), "text": ""})
        + "\n"
    )
    args = [
        "--base",
        str(tiny_model_dir),
        "--registry",
        str(tmp_path / "adapters"),
        "train",
        "--lang",
        "fr",
        "--set",
        "data.source=manifest",
        "--set",
        f"data.train={m}",
        "--set",
        f"data.test={m}",
        "--no-progress",
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "no usable training rows" in res.stderr
    assert Registry(tmp_path / "adapters").list() == []
    res = CliRunner().invoke(main, args[:4] + ["train", "--lang", "xx", "--domain", "medical"])
    assert res.exit_code == 2 and "language: 'xx' is not a Whisper language code" in res.stderr


def _cli(*args):
    return [sys.executable, "-m", "lora_whisper.cli", *args]


def test_kill_then_resume_continues_from_checkpoint(tiny_model_dir, tmp_path):
    common = _args(
        tiny_model_dir,
        tmp_path,
        *("--set", "train.max_steps=40", "--set", "train.save_steps=2"),
        *("--set", "train.save_total_limit=3", "--set", "eval.skip_before=true"),
    )
    proc = subprocess.Popen(_cli(*common), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list((tmp_path / "run").glob("checkpoint-4")):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    ckpts = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "run").glob("checkpoint-*"))
    assert ckpts and max(ckpts) < 40, ckpts
    assert Registry(tmp_path / "adapters").list() == []  # nothing filed by the killed run
    # A kill during a save leaves a folder without trainer state (the kill above may or may not have hit one):
    # make one for sure, newest of all; resume must skip it and take the newest complete checkpoint.
    partial = tmp_path / "run" / f"checkpoint-{max(ckpts) + 1}"
    partial.mkdir()
    (partial / "adapter_config.json").write_text("{}")
    res = subprocess.run(_cli("-v", *common, "--resume"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{partial}: incomplete checkpoint" in res.stderr
    resumed = int(res.stderr.split(f"resuming from {tmp_path / 'run'}/checkpoint-")[1].split()[0])
    assert resumed in ckpts and resumed >= 2
    state = json.loads((tmp_path / "run" / "checkpoint-40" / "trainer_state.json").read_text())
    logged = [h["step"] for h in state["log_history"] if "loss" in h]
    assert logged == list(range(1, 41))  # one history, continued, not restarted
    assert Registry(tmp_path / "adapters").get("fr-medical").metrics["steps"] == 40


def test_last_checkpoint_skips_half_written(tmp_path):
    from lora_whisper.train import _last_checkpoint

    assert _last_checkpoint(tmp_path / "nothing") is None
    for step, state in [(2, {"global_step": 2}), (4, {"global_step": 4}), (6, None), (8, '{"global_st')]:
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        (ckpt / "adapter_model.safetensors").write_bytes(b"x")
        if state is not None:
            (ckpt / "trainer_state.json").write_text(state if isinstance(state, str) else json.dumps(state))
    (tmp_path / "checkpoint-10").mkdir()  # killed before anything was written
    assert _last_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    (tmp_path / "checkpoint-4" / "adapter_model.safetensors").unlink()
    assert _last_checkpoint(tmp_path) == tmp_path / "checkpoint-2"


def test_data_parallel_two_cpu_processes(tiny_model_dir, tmp_path):
    """torchrun with 2 processes (gloo): the Trainer's own DDP; rank 0 evaluates and files."""
    extra = ("--set", "train.max_steps=2", "--set", "eval.skip_before=true", "--set", "train.batch_size=2")
    args = [
        "--nproc_per_node",
        "2",
        "-m",
        "lora_whisper.cli",
        *_args(tiny_model_dir, tmp_path, *extra, quantize="none"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", *args], capture_output=True, text=True, timeout=600, env=env
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rec = Registry(tmp_path / "adapters").get("fr-medical")
    assert rec.version == 1 and len(Registry(tmp_path / "adapters").list()) == 1
    state = json.loads((tmp_path / "run" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["train_batch_size"] == 2
    args_bin = Path(tmp_path / "run" / "checkpoint-2")
    assert args_bin.is_dir()
