"""Training on the tiny random Whisper with synthetic speech: the real Trainer / peft / bitsandbytes paths."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TINY_HUB_ID

from lora_whisper.adapters.registry import Registry
from lora_whisper.cli import main

SMALL = [
    "--set",
    "calibration.max_per_source=3",
    "--set",
    "data.contrast_max=2",
    "--set",
    "data.max_train=8",
    "--set",
    "data.max_test=4",
    "--set",
    "data.max_test_out=4",
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
    # each step's wall time: filed in the record (all but the filing, which writes it) and printed as a table
    steps = rec.metrics["step_seconds"]
    assert list(steps) == [
        "base",
        "data",
        "base scoring",
        "encoder cache",
        "fit",
        "save",
        "adapter scoring",
        "calibration",
    ]
    assert all(s >= 0 for s in steps.values()) and steps["fit"] > 0
    table = res.stdout[res.stdout.index("step ") :].splitlines()
    assert [line.split()[0] for line in table[1:-1]] == [*[s.split()[0] for s in steps], "filing"]
    assert table[-1].startswith("total")
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


@pytest.mark.processes
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
    from lora_whisper.train.trainer import _last_checkpoint

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


@pytest.mark.processes
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


def test_timestamped_labels_for_synthetic_rows(tiny_base):
    import numpy as np

    from lora_whisper.train.data import Example
    from lora_whisper.train.trainer import _Collator, _dataset, label_ids, timestamped_rows

    tok = tiny_base.processor.tokenizer
    rng = np.random.default_rng(0)
    speech = (0.3 * rng.standard_normal(16000)).astype(np.float32)
    clip = np.concatenate([np.zeros(4800, np.float32), speech, np.zeros(8000, np.float32)])  # 0.3 s + 1 s + 0.5 s
    timed = [Example(f"tts:{i}", clip, "bonjour tout le monde", "fr", timed=True) for i in range(6)]
    real = [Example(f"real:{i}", clip, "bonjour tout le monde", "fr") for i in range(2)]
    rows = timestamped_rows(timed + real, 0.5, seed=0)
    assert len(rows) == 3 and rows <= set(range(6))  # half of the clips that know their times; never real rows
    ts = lambda t: tok.convert_tokens_to_ids(t)  # noqa: E731
    lab = label_ids(tok, timed[0], "fr", timestamped=True)
    assert lab[:3] == [ts("<|startoftranscript|>"), ts("<|fr|>"), ts("<|transcribe|>")]
    assert lab[3] == ts("<|0.30|>") and lab[-2] == ts("<|1.30|>") and lab[-1] == ts("<|endoftext|>")
    assert ts("<|notimestamps|>") not in lab
    assert tok.decode(lab[4:-2]).strip() == "bonjour tout le monde"
    plain = label_ids(tok, real[0], "fr", timestamped=False)
    assert ts("<|notimestamps|>") in plain and not any(ts("<|0.00|>") <= t <= ts("<|30.00|>") for t in plain)
    # through the dataset and the collator, as the Trainer sees them
    ds = _dataset(tiny_base, timed + real, "fr", timestamped=rows)
    batch = _Collator(ts("<|startoftranscript|>"))([ds[i] for i in range(len(ds))])
    first_ts, last_ts = ts("<|0.00|>"), ts("<|30.00|>")
    for i, row in enumerate(batch["labels"].tolist()):
        has_ts = any(first_ts <= t <= last_ts for t in row)
        assert has_ts == (i in rows), i
        assert (ts("<|notimestamps|>") in row) == (i not in rows)


def test_precision_needs_a_gpu_and_device_is_checked(tiny_model_dir, tmp_path):
    res = _train(tiny_model_dir, tmp_path, "--set", "train.precision=fp16")
    assert res.exit_code != 0 and "train.precision fp16 needs a GPU (device is cpu)" in res.output
    res = CliRunner().invoke(main, ["--device", "tpu", *_args(tiny_model_dir, tmp_path)])
    assert res.exit_code != 0 and "device 'tpu' is not one of ['auto', 'cpu', 'cuda', 'cuda:N']" in res.output


def test_placement_each_rank_picks_its_own_gpu():
    import pytest

    from lora_whisper.base.loading import BaseModelError, pick_device

    # torchrun / accelerate launch on 4 GPUs: each process its own GPU, never all on cuda:0
    assert [pick_device(None, {"LOCAL_RANK": str(r), "RANK": str(r + 4)}, 4) for r in range(4)] == [
        "cuda:0",
        "cuda:1",
        "cuda:2",
        "cuda:3",
    ]
    assert pick_device("cuda", {"LOCAL_RANK": "2"}, 4) == "cuda:2"  # --device cuda means this process's GPU
    assert pick_device("cuda:1", {"LOCAL_RANK": "0"}, 2) == "cuda:1"  # an explicit index is honoured
    assert pick_device(None, {}, 1) == "cuda:0" and pick_device(None, {}, 0) == "cpu"
    assert pick_device("cpu", {"LOCAL_RANK": "1"}, 2) == "cpu"
    with pytest.raises(BaseModelError, match="only 2 GPU"):
        pick_device(None, {"LOCAL_RANK": "3"}, 2)
    with pytest.raises(BaseModelError, match="no CUDA GPU"):
        pick_device("cuda", {}, 0)


def test_real_speech_training_through_the_manifest_source(tiny_model_dir, tmp_path):
    """The en-commonvoice recipe on a few real clips: splits by column, validation by speaker, best checkpoint."""

    import torch
    from safetensors.torch import load_file

    audio = Path(__file__).parent / "data" / "audio"
    rows = [json.loads(line) for line in (audio / "manifest.jsonl").read_text().splitlines() if line.strip()]
    data = tmp_path / "data"
    data.mkdir()
    out = []
    for i, r in enumerate(rows):
        shutil.copy(audio / r["audio"], data / r["audio"])
        split = "dev" if i in (0, 1) else "train"
        short = " ".join(r["text"].split()[:5])  # the tiny model's decoder holds 64 tokens
        out.append({**r, "text": short, "split": split, "speaker": f"spk{i % 4}", "lang": "en"})
    (data / "cv.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in out) + "\n")
    recipe = Path(__file__).parents[1] / "recipes" / "en-commonvoice.yaml"
    # an earlier run's best checkpoint in the run folder: a fresh (not --resume) run must not inherit it
    from safetensors.torch import save_file

    (tmp_path / "run" / "best").mkdir(parents=True)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "run" / "best" / "weights.safetensors"))
    (tmp_path / "run" / "best" / "best.json").write_text(
        json.dumps({"wer": 0.0, "step": 99, "history": [{"step": 99}]})
    )
    res = CliRunner().invoke(
        main,
        [
            *("--base", str(tiny_model_dir), "--quantize", "none", "--registry", str(tmp_path / "adapters")),
            *("train", "--recipe", str(recipe), "--no-progress"),
            *("--set", f"data.train={data / 'cv.jsonl'}", "--set", f"data.test={data / 'cv.jsonl'}"),
            *("--set", "data.validation=2", "--set", "train.max_steps=6", "--set", "train.lr=0.05"),
            *("--set", "train.batch_size=4", "--set", "train.validate_every=3", "--set", "train.save_steps=3"),
            *("--set", "eval.max_new_tokens=8", "--set", f"output.run_dir={tmp_path / 'run'}"),
        ],
    )
    assert res.exit_code == 0, res.output
    rec = Registry(tmp_path / "adapters").get("en-commonvoice")
    m = rec.metrics
    assert (m["kind"], m["split"], m["held_out"]) == ("real", "dev", 2) and m["train_kind"] == "real"
    assert m["timestamped_clips"] == 0  # real data without times keeps <|notimestamps|>
    val = m["validation"]
    assert val["n"] >= 2 and [h["step"] for h in val["history"]] == [3, 6] and val["best_step"] in (3, 6)
    assert m["train_clips"] + val["n"] == 8
    state = json.loads(sorted((tmp_path / "run").glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert losses[-1] < losses[0], losses
    weights = load_file(str(rec.path / "adapter_model.safetensors"))
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    assert lora_b and any(torch.count_nonzero(t) > 0 for t in lora_b)  # B starts at zero: training moved it
    assert "measured  on real dev" in res.output


def test_persian_recipe_on_real_clips_learns_and_calibrates(tiny_model_dir, tmp_path):
    """recipes/fa-commonvoice.yaml on a handful of real Common Voice Persian clips: the loss falls, the LoRA weights
    move, labels keep Persian letters, and the routing threshold is measured against other languages' real clips."""
    import torch
    from safetensors.torch import load_file

    data = Path(__file__).parent / "data" / "cv-fa" / "manifest.jsonl"
    recipe = Path(__file__).parents[1] / "recipes" / "fa-commonvoice.yaml"
    audio = Path(__file__).parent / "data" / "audio" / "manifest.jsonl"
    english = Path(__file__).parent / "data" / "cv-en" / "manifest.jsonl"
    res = CliRunner().invoke(
        main,
        [
            *("--base", str(tiny_model_dir), "--quantize", "int8", "--registry", str(tmp_path / "adapters")),
            *("train", "--recipe", str(recipe), "--no-progress"),
            *("--set", f"data.train={data}", "--set", f"data.test={data}", "--set", "data.validation=2"),
            *("--set", "train.max_steps=8", "--set", "train.lr=0.02", "--set", "train.batch_size=6"),
            *("--set", "train.validate_every=4", "--set", "train.save_steps=4", "--set", "eval.max_new_tokens=8"),
            *("--set", f"calibration.negatives=[{audio}]", "--set", f"output.run_dir={tmp_path / 'run'}"),
            *("--set", f"data.contrast=[{english}]", "--set", "data.contrast_split=dev"),
        ],
    )
    assert res.exit_code == 0, res.output
    rec = Registry(tmp_path / "adapters").get("fa-commonvoice")
    assert rec.metrics["contrast_clips"] == 12
    assert rec.decoding == {"drop_failed": True, "beam_size": 5}  # the recipe's eval section, filed with the adapter
    assert rec.recipe["data"]["speed_perturb"] is None  # the recipe trains on the clips as recorded (45 min budget)
    assert rec.language == "fa" and rec.lora["scope"] == "decoder" and rec.metrics["held_out"] == 4
    state = json.loads(sorted((tmp_path / "run").glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert losses[-1] < losses[0], losses
    lora_b = [t for k, t in load_file(str(rec.path / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert lora_b and any(torch.count_nonzero(t) > 0 for t in lora_b)
    cal = rec.calibration
    assert cal["other"]["n"] == 10 and cal["other"]["accepted"] == 0  # every real clip of another language refused
    assert cal["own"]["n"] == 2 and cal["threshold"] > 0 and cal["languages"] == ["de", "en", "es", "fr", "pt", "zh"]
    assert cal["score"] == "odds"  # a real-speech adapter: the base's and its own odds
    # the record round-trips through the registry file
    assert Registry(tmp_path / "adapters").get("fa-commonvoice@1").calibration == cal


def test_persian_labels_use_persian_letters():
    from lora_whisper.train.data import Example, Loaded, orthography, validate

    assert orthography("كتاب علي", "fa") == "کتاب علی"  # Arabic kaf / yeh -> Persian
    assert orthography("كتاب علي", "ar") == "كتاب علي"  # Arabic keeps its own
    ex = Example("x", __import__("numpy").ones(1600, "float32") * 0.1, "يك", "fa")
    assert validate(Loaded([ex])).examples[0].text == "یک"


def test_contrast_clips_teach_the_language_token_only_and_skip_calibration_clips(tiny_base, tmp_path):
    """Other languages' clips join training with ``<|sot|><|lang|>`` as their whole label, and a clip that is also a
    calibration negative is never among them (the threshold must be measured on clips the adapter never heard)."""

    from lora_whisper.train.recipe import load_recipe
    from lora_whisper.train.trainer import _Collator, _dataset, load_contrast

    src = Path(__file__).parent / "data" / "cv-en"
    rows = [json.loads(line) for line in (src / "manifest.jsonl").read_text().splitlines()]
    shutil.copytree(src / "clips", tmp_path / "clips")
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "cal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))  # 3 of them calibrate
    recipe = load_recipe(
        None,
        [f"data.contrast=[{tmp_path / 'all.jsonl'}]", "data.contrast_split=dev", "data.contrast_max=100"],
        language="fa",
        domain=None,
        data={"source": "manifest", "train": "t.jsonl", "test": "t.jsonl"},
    )
    recipe.calibration.negatives = [str(tmp_path / "cal.jsonl")]
    contrast = load_contrast(recipe)
    assert len(contrast) == 9 and all(e.language == "en" for e in contrast)
    assert not {e.text for e in contrast} & {r["text"] for r in rows[:3]}
    recipe.data.contrast_max = 4
    assert len(load_contrast(recipe)) == 4
    tok = tiny_base.processor.tokenizer
    ids = tok.convert_tokens_to_ids
    ds = _dataset(tiny_base, contrast[:2], "fa", contrast=1)
    batch = _Collator(ids("<|startoftranscript|>"))([ds[0], ds[1]])
    own, other = batch["labels"].tolist()
    assert own[0] == ids("<|fa|>") and len([t for t in own if t != -100]) > 3
    assert [t for t in other if t != -100] == [ids("<|en|>")]


def test_utterance_manifests_get_timestamped_labels(tmp_path, tiny_base):
    """data.utterances: a manifest's clips are single utterances, so their speech span gives timestamped labels
    (the segment format transcribe decodes in) to data.timestamps of them; without it they keep <|notimestamps|>."""
    from lora_whisper.train.recipe import load_recipe
    from lora_whisper.train.trainer import label_ids, load_data, timestamped_rows

    audio = Path(__file__).parent / "data" / "audio"
    rows = [json.loads(x) for x in (audio / "manifest.jsonl").read_text().splitlines() if x.strip()]
    for r in rows:
        shutil.copy(audio / r["audio"], tmp_path / r["audio"])
    lines = [{**r, "split": "dev" if i < 2 else "train", "speaker": f"s{i}"} for i, r in enumerate(rows)]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in lines) + "\n")
    recipe_file = Path(__file__).parents[1] / "recipes" / "en-commonvoice.yaml"
    sets = [f"data.train={tmp_path / 'm.jsonl'}", f"data.test={tmp_path / 'm.jsonl'}"]
    plain, _ = load_data(load_recipe(recipe_file, sets))
    assert not any(e.timed for e in plain.examples)
    train, held = load_data(load_recipe(recipe_file, [*sets, "data.utterances=true"]))
    assert len(train.examples) == 8 and all(e.timed for e in train.examples)
    assert not any(e.timed for e in held.examples)  # held-out clips are only decoded
    stamped = timestamped_rows(train.examples, 0.5, seed=0)
    assert len(stamped) == 4
    tok = tiny_base.processor.tokenizer
    first = train.examples[min(stamped)]
    lab = tok.convert_ids_to_tokens(label_ids(tok, first, "en", timestamped=True))
    times = [t for t in lab if t.startswith("<|") and t[2:3].isdigit()]
    assert len(times) == 2 and float(times[0][2:-2]) < float(times[1][2:-2]) <= 30.0


def test_decoder_only_speed_perturbation_adds_fixed_resampled_copies():
    """data.speed_perturb on cached encoder output: each training clip gets speed_copies copies, each resampled at a
    factor drawn once from the range (seeded), same text and speaker, no timestamps; the same copies every run."""
    import numpy as np

    from lora_whisper.train.data import Example
    from lora_whisper.train.trainer import speed_copies

    clips = [
        Example(
            f"c{i}", np.random.default_rng(i).standard_normal(16000).astype(np.float32), f"t{i}", "fa", f"s{i}", True
        )
        for i in range(3)
    ]
    copies = speed_copies(clips, (0.9, 1.1), 2, seed=0)
    assert len(copies) == 6 and [c.text for c in copies] == ["t0", "t0", "t1", "t1", "t2", "t2"]
    assert all(c.speaker == clips[i // 2].speaker and not c.timed for i, c in enumerate(copies))
    lengths = [len(c.audio) for c in copies]
    assert all(16000 / 1.1 - 2 <= n <= 16000 / 0.9 + 2 for n in lengths) and len(set(lengths)) > 1
    assert [len(c.audio) for c in speed_copies(clips, (0.9, 1.1), 2, seed=0)] == lengths
