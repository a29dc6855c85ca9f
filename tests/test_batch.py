"""`lora-whisper batch` on a local Ray runtime (2 CPUs), with a tiny random Whisper and two tiny random adapters.

One Ray runtime serves the whole session (Ray starts in ~6 s). The fixtures are session-scoped: under xdist a worker
may run other modules between these tests, and module-scoped ones were then built twice. The tiny model is
re-initialised with larger weights (std 0.3) so that its language probabilities depend on the audio: restricted to pt and ro, some clips detect as pt
and the others as ro, which gives two routes (two adapters) to group by.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import file_adapter

ray = pytest.importorskip("ray")
# `make test` runs with --dist loadfile: every test of this module runs in the same worker, with one Ray runtime
pytestmark = pytest.mark.processes

from lora_whisper.adapters.registry import Registry  # noqa: E402
from lora_whisper.batch.inputs import collect_inputs  # noqa: E402
from lora_whisper.batch.options import BatchError, BatchOptions, EngineSpec, Item  # noqa: E402
from lora_whisper.batch.pipeline import run_batch  # noqa: E402
from lora_whisper.batch.resume import latest_rows, read_output  # noqa: E402
from lora_whisper.batch.units import make_units  # noqa: E402
from lora_whisper.batch.worker import FAULT_ENV  # noqa: E402
from lora_whisper.transcribe.engine import Engine, TranscribeOptions  # noqa: E402

N_GOOD = 8
BAD = ("empty.wav", "notes.wav", "silence.wav")


@pytest.fixture(scope="session")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny Whisper with weights drawn at std 0.3 (its detection then varies with the audio)."""
    import torch
    from transformers import WhisperForConditionalGeneration

    out = tmp_path_factory.mktemp("tiny-std03")
    shutil.copytree(tiny_model_dir, out, dirs_exist_ok=True)
    torch.manual_seed(4)  # a draw whose detection differs between the clips (the 31 s one is pt, the rest ro)
    m = WhisperForConditionalGeneration.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.dim() >= 2 and "embed_positions" not in n:
                p.normal_(0, 0.3)
    m.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def registry(model_dir, tmp_path_factory) -> Registry:
    """Two language adapters, pt and ro (random non-zero LoRA weights)."""
    import torch
    from peft import get_peft_model
    from transformers import WhisperForConditionalGeneration

    from lora_whisper.adapters.lora import lora_config, save_adapter
    from lora_whisper.base.loading import weights_fingerprint

    root = tmp_path_factory.mktemp("batch-reg")
    reg = Registry(root / "adapters")
    fp = weights_fingerprint(model_dir)
    for seed, lang in enumerate(("pt", "ro"), start=1):
        torch.manual_seed(seed)
        pm = get_peft_model(
            WhisperForConditionalGeneration.from_pretrained(model_dir), lora_config("encoder+decoder", r=4, alpha=8)
        )
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5)
        save_adapter(pm, root / f"ad-{lang}", "test/tiny-whisper")
        file_adapter(reg, root / f"ad-{lang}", lang, lang, fingerprint=fp)
    return reg


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory) -> Path:
    """Eight clips (1.5-5 s of noisy tones, one 31 s: two chunks) and three bad files."""
    d = tmp_path_factory.mktemp("batch-audio")
    rng = np.random.default_rng(1)
    for i in range(N_GOOD):
        secs = 31.0 if i == 5 else 1.5 + i * 0.5
        t = np.arange(int(16000 * secs)) / 16000
        a = (0.3 * np.sin(2 * np.pi * (120 + 110 * i) * t) * (1 + rng.normal(0, 0.2 + 0.1 * i, t.size))).astype(
            np.float32
        )
        sf.write(d / f"clip{i}.wav", a, 16000)
    (d / "empty.wav").write_bytes(b"")
    (d / "notes.wav").write_text("this is not audio\n")
    sf.write(d / "silence.wav", np.zeros(16000, np.float32), 16000)
    return d


def _topts(**kw) -> TranscribeOptions:
    # temperature 0 only: the fallback samples at higher temperatures, which no two processes repeat
    base = dict(
        languages=["pt", "ro"], threshold=0.0, consult_below=0.0, max_new_tokens=6, batch_size=3, temperature=(0.0,)
    )
    return TranscribeOptions(**{**base, **kw})


def _spec(model_dir, registry) -> EngineSpec:
    return EngineSpec(base=str(model_dir), quantize="none", device="cpu", registry=str(registry.root))


def _expected(model_dir, registry, files, topts) -> list[dict]:
    """What the plain engine gives for the same files (one thread, as a Ray actor with one CPU runs)."""
    import torch

    from lora_whisper.base.loading import load_base

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine = Engine(load_base(str(model_dir), "none", "cpu"), registry)
        return [r.to_dict() for r in engine.transcribe(files, topts)]
    finally:
        torch.set_num_threads(n)


def _run(inputs, out, model_dir, registry, topts=None, **kw) -> tuple:
    opts = BatchOptions(out=out, batch_size=kw.pop("batch_size", 3), progress_every=0, **kw)
    lines: list[str] = []
    s = run_batch([str(i) for i in inputs], opts, _spec(model_dir, registry), topts or _topts(), echo=lines.append)
    return s, read_output(s.output), lines


@pytest.fixture(scope="session")
def first_run(ray_local, model_dir, registry, audio_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch-out")
    return (out, *_run([audio_dir], out, model_dir, registry))


# ---- against the plain engine ---------------------------------------------------------------------------------------
def test_rows_equal_engine_transcribe_and_group_by_adapter(first_run, model_dir, registry, audio_dir):
    out, summary, rows, lines = first_run
    files = sorted(audio_dir.iterdir())
    expected = _expected(model_dir, registry, files, _topts())
    assert rows == expected  # same fields, same values, input order, bad files as {"file", "error"}
    adapters = [r.get("adapter") for r in rows if "error" not in r]
    assert {"pt@1", "ro@1"} <= set(adapters), adapters  # two routes really exercised
    # grouped: a detection pass ran, and every unit holds one route
    assert summary.detect_seconds > 0 and summary.detected == len(files)
    assert set(summary.routes) == {"pt@1", "ro@1", "unreadable"}
    assert summary.done == len(files) and summary.errors == len(BAD) and summary.skipped == 0
    assert summary.audio_seconds == pytest.approx(sum(r["duration"] for r in rows if "error" not in r))
    # progress lines on stderr: files, hours, throughput, errors
    prog = [x for x in lines if x.startswith("transcribe:")]
    assert prog and f"{len(files)}/{len(files)} files ({len(BAD)} errors)" in prog[-1] and "files/s" in prog[-1]
    assert sum(x.startswith("error: ") for x in lines) == len(BAD)


def test_bad_files_become_error_rows_naming_them(first_run, audio_dir):
    _, _, rows, _ = first_run
    errors = {Path(r["file"]).name: r["error"] for r in rows if "error" in r}
    assert set(errors) == set(BAD)
    assert "empty file" in errors["empty.wav"] and "cannot decode" in errors["notes.wav"]
    assert "silent" in errors["silence.wav"]
    assert all(str(audio_dir / name) in msg for name, msg in errors.items())
    assert all(set(r) == {"file", "error"} for r in rows if "error" in r)


def test_resume_skips_done_files_and_keeps_one_row_per_input(first_run, model_dir, registry, audio_dir):
    out, _, rows, _ = first_run
    s2, rows2, lines = _run([audio_dir], out, model_dir, registry)
    # successes skipped; only the bad files (error rows) are tried again
    assert s2.skipped == N_GOOD and s2.done == len(BAD) and s2.errors == len(BAD)
    assert rows2 == rows and len({r["file"] for r in rows2}) == len(rows2)
    assert any("already done" in x for x in lines)


def test_partial_run_then_rerun_does_only_the_rest(ray_local, model_dir, registry, audio_dir, tmp_path):
    out = tmp_path / "out"
    s1, rows1, _ = _run([audio_dir / "clip[0-3].wav"], out, model_dir, registry, group=False)
    assert s1.done == 4 and len(rows1) == 4
    # a run killed while writing leaves a torn last line: it is ignored, the rest is used
    part = next((out / "parts").glob("*.jsonl"))
    with part.open("a") as f:
        f.write('{"file": "torn')
    s2, rows2, _ = _run([audio_dir], out, model_dir, registry, group=False)
    assert s2.skipped == 4 and s2.done == N_GOOD - 4 + len(BAD)
    files = sorted(audio_dir.iterdir())
    assert rows2 == _expected(model_dir, registry, files, _topts())


def test_routes_detected_once_across_runs(ray_local, model_dir, registry, audio_dir, tmp_path):
    """A run that died after its detection pass: the rerun detects only what it had not (routes.jsonl), unless
    the options or the adapters changed."""
    out = tmp_path / "out"
    s1, _, _ = _run([audio_dir / "clip[0-3].wav"], out, model_dir, registry)
    assert s1.detected == 4 and (out / "routes.jsonl").is_file()
    shutil.rmtree(out / "parts")  # as if no row had been written
    (out / "transcripts.jsonl").unlink()
    s2, rows2, _ = _run([audio_dir], out, model_dir, registry)
    assert s2.skipped == 0 and s2.detected == N_GOOD - 4 + len(BAD) and s2.done == N_GOOD + len(BAD)
    assert rows2 == _expected(model_dir, registry, sorted(audio_dir.iterdir()), _topts())
    from lora_whisper.batch.resume import _read_routes, _route_signature

    sig = _route_signature(_topts(), _spec(model_dir, registry))
    assert len(_read_routes(out / "routes.jsonl", sig)) == N_GOOD  # unreadable files are not remembered
    assert _route_signature(_topts(threshold=0.3), _spec(model_dir, registry)) != sig


def test_killed_worker_loses_nothing(ray_local, model_dir, registry, audio_dir, tmp_path, monkeypatch):
    """The actor that gets clip4 kills its own process once (os._exit); Ray restarts it and retries the unit."""
    marker = tmp_path / "killed.txt"
    monkeypatch.setenv(FAULT_ENV, f"clip4:{marker}")
    s, rows, _ = _run([audio_dir], tmp_path / "out", model_dir, registry, group=False)
    assert marker.exists() and "killed pid" in marker.read_text()  # the worker really died mid-run
    files = sorted(audio_dir.iterdir())
    assert rows == _expected(model_dir, registry, files, _topts())
    parts = list((tmp_path / "out" / "parts").glob("*.jsonl"))
    written = [json.loads(x)["file"] for p in parts for x in p.read_text().splitlines()]
    assert sorted(written) == sorted(str(f) for f in files)  # each input written exactly once


def test_forced_language_skips_detection_and_parquet(ray_local, model_dir, registry, audio_dir, tmp_path):
    topts = _topts(language="ro", languages=None)
    s, rows, _ = _run([audio_dir], tmp_path / "out", model_dir, registry, topts, fmt="parquet", num_workers=1)
    assert s.output.endswith(".parquet") and s.detect_seconds == 0 and set(s.routes) == {"ro@1"}
    files = sorted(audio_dir.iterdir())
    assert rows == _expected(model_dir, registry, files, topts)


def test_other_options_pass_through_vad(ray_local, model_dir, registry, audio_dir, tmp_path):
    """Options beyond the CLI's own reach the actors' engines (here vad=True): with VAD a silent file is no error,
    as in the engine, whose rows these equal."""
    topts = _topts(language="pt", languages=None, vad=True)
    s, rows, _ = _run([audio_dir], tmp_path / "out", model_dir, registry, topts)
    files = sorted(audio_dir.iterdir())
    assert rows == _expected(model_dir, registry, files, topts)
    silent = next(r for r in rows if r["file"].endswith("silence.wav"))
    assert "error" not in silent and silent["text"] == ""


def test_manifest_with_ids_and_bad_rows(ray_local, model_dir, registry, audio_dir, tmp_path):
    man = tmp_path / "list.jsonl"
    lines = [
        json.dumps({"id": "a", "audio": str(audio_dir / "clip1.wav")}),
        json.dumps({"id": "b", "path": str(audio_dir / "clip2.wav")}),
        "{not json",
        json.dumps({"id": "c", "text": "no audio field"}),
        json.dumps({"audio": "missing.wav"}),
    ]
    man.write_text("\n".join(lines) + "\n")
    s, rows, _ = _run([man], tmp_path / "out", model_dir, registry)
    assert [r.get("id") for r in rows] == ["a", "b", None, "c", None]
    exp = _expected(model_dir, registry, [audio_dir / "clip1.wav", audio_dir / "clip2.wav"], _topts())
    assert [{k: v for k, v in r.items() if k != "id"} for r in rows[:2]] == exp
    assert rows[2] == {
        "file": "list.jsonl:3",
        "error": "list.jsonl:3: not valid JSON (Expecting property name enclosed in double quotes)",
    }
    assert rows[3]["error"] == "list.jsonl:4: no 'audio' or 'path' field"
    assert rows[4]["error"] == f"{tmp_path / 'missing.wav'}: no such file"
    # resume by id: only the errors are tried again (here without the detection pass: --no-group)
    s2, rows2, _ = _run([man], tmp_path / "out", model_dir, registry, group=False)
    assert s2.skipped == 2 and s2.done == 3 and s2.detect_seconds == 0 and rows2 == rows


def test_hf_dataset_folder_streamed(ray_local, model_dir, registry, audio_dir, tmp_path):
    """A local data set folder (parquet shard with an Audio feature, as the Hub's parquet exports) through
    datasets' streaming loader; audio bytes decoded with soundfile in the decode tasks."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    clips = [audio_dir / "clip0.wav", audio_dir / "clip3.wav"]
    table = pa.table(
        {
            "id": ["x0", "x3", "bad"],
            "audio": [{"bytes": c.read_bytes(), "path": c.name} for c in clips] + [{"bytes": b"junk", "path": "j.wav"}],
            "sentence": ["", "", ""],
        }
    )
    feats = {
        "id": {"dtype": "string", "_type": "Value"},
        "audio": {"_type": "Audio"},
        "sentence": {"dtype": "string", "_type": "Value"},
    }
    table = table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": feats}}).encode()})
    (tmp_path / "ds" / "data").mkdir(parents=True)
    pq.write_table(table, tmp_path / "ds" / "data" / "test-00000-of-00001.parquet")
    s, rows, _ = _run([tmp_path / "ds"], tmp_path / "out", model_dir, registry, group=False)
    assert [r["id"] for r in rows] == ["x0", "x3", "bad"]
    assert [r["file"] for r in rows] == [f"{tmp_path / 'ds'}/test:{n}" for n in range(3)]
    arrays = [(f"{tmp_path / 'ds'}/test:{n}", sf.read(c, dtype="float32")[0]) for n, c in enumerate(clips)]
    exp = _expected(model_dir, registry, arrays, _topts())
    assert [{k: v for k, v in r.items() if k != "id"} for r in rows[:2]] == exp
    assert rows[2]["error"].startswith(f"{tmp_path / 'ds'}/test:2: cannot decode audio")


def test_cli_batch_and_summary(ray_local, model_dir, registry, audio_dir, tmp_path):
    from click.testing import CliRunner

    from lora_whisper.cli import main

    args = [
        "--registry",
        str(registry.root),
        "--base",
        str(model_dir),
        "--quantize",
        "none",
        "--device",
        "cpu",
        "batch",
        str(audio_dir / "clip[01].wav"),
        "--out",
        str(tmp_path / "o"),
        "--languages",
        "pt,ro",
        "--threshold",
        "0",
        "--consult-below",
        "0",
        "--batch-size",
        "3",
        "--set",
        "max_new_tokens=6",
        "--set",
        "temperature=[0.0]",
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "batch: 2 done (0 errors)" in res.stderr and "h audio" in res.stderr
    rows = read_output(tmp_path / "o" / "transcripts.jsonl")
    assert rows == _expected(model_dir, registry, [audio_dir / "clip0.wav", audio_dir / "clip1.wav"], _topts())
    bad = CliRunner().invoke(main, [*args[:8], "batch", "x.wav", "--out", str(tmp_path / "p"), "--set", "nope=1"])
    assert bad.exit_code == 2 and "nope=1" in bad.output and "max_new_tokens" in bad.output


def test_resources_that_cannot_fit_fail_at_once(ray_local, model_dir, registry, audio_dir, tmp_path):
    spec, files = _spec(model_dir, registry), [str(audio_dir / "clip0.wav")]
    with pytest.raises(BatchError, match="--num-gpus-per-worker 1: the Ray cluster has 0 GPU"):
        run_batch(files, BatchOptions(out=tmp_path / "a", num_gpus_per_worker=1), spec, _topts())
    with pytest.raises(
        BatchError, match="2 workers x 1 CPU plus a decode task .* do not fit in the Ray cluster's 2 CPU"
    ):
        run_batch(files, BatchOptions(out=tmp_path / "b", num_workers=2), spec, _topts())


# ---- without Ray ------------------------------------------------------------------------------------------------------
def test_missing_ray_says_how_to_install(monkeypatch, audio_dir, tmp_path, model_dir, registry):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(BatchError, match=r"pip install 'lora-whisper\[ray\]'"):
        run_batch(
            [str(audio_dir / "clip0.wav")], BatchOptions(out=tmp_path / "o"), _spec(model_dir, registry), _topts()
        )


def test_inputs_globs_duplicates_and_units(audio_dir, tmp_path):
    opts = BatchOptions(out=tmp_path)
    items = collect_inputs([str(audio_dir / "clip[0-2].wav"), str(audio_dir), str(tmp_path / "gone.wav")], opts)
    names = [Path(i.file).name for i in items]
    assert names[:3] == ["clip0.wav", "clip1.wav", "clip2.wav"] and names.count("clip1.wav") == 1
    assert (
        names[-1] == "gone.wav"
        and len(items) == N_GOOD + len(BAD) + 1
        and [i.index for i in items] == list(range(len(items)))
    )
    with pytest.raises(BatchError, match="gone.jsonl: cannot read the manifest"):
        collect_inputs([str(tmp_path / "gone.jsonl")], opts)
    with pytest.raises(BatchError, match="not a file, folder or manifest here, and cannot load it as a data set"):
        collect_inputs(["nobody/no-such-dataset"], opts)  # HF_HUB_OFFLINE in tests: fails at once
    with pytest.raises(BatchError, match="no file matches"):
        collect_inputs([str(audio_dir / "*.nothing")], opts)
    with pytest.raises(BatchError, match="input type 'x' is not one of"):
        collect_inputs([str(audio_dir)], BatchOptions(out=tmp_path, input_type="x"))
    its = [Item(n, f"k{n}", f"f{n}") for n in range(7)]
    routes = {"k0": "a", "k1": "b", "k2": "a", "k3": "base", "k4": "a", "k5": "a", "k6": "b"}
    units = make_units(its, routes, 2)
    assert all(len({routes[k] for k in u["keys"]}) == 1 and len(u["keys"]) <= 2 for u in units)
    assert sorted(k for u in units for k in u["keys"]) == sorted(routes) and units[0]["route"] == "base"


def test_latest_rows_prefer_results_over_errors():
    rows = [
        {"file": "a", "error": "x"},
        {"file": "a", "text": "ok"},
        {"file": "a", "error": "y"},
        {"file": "b", "error": "1"},
        {"file": "b", "error": "2"},
        {"file": "c", "id": "7", "text": "t"},
    ]
    best = latest_rows(rows)
    assert best["a"]["text"] == "ok" and best["b"]["error"] == "2" and set(best) == {"a", "b", "7"}


# ---- the real base ------------------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_real_base_rows_equal_transcribe_cli(ray_local, cache_dir, tmp_path):
    """22 real clips (tests/data/audio: 5 languages; tests/data/cv-en: 12 Common Voice English) with two adapters
    filed (en, fr: small random LoRA weights on the real base): `batch` rows == `transcribe --format json` lines."""
    import torch
    from click.testing import CliRunner
    from conftest import AUDIO, DATA
    from peft import get_peft_model
    from transformers import WhisperForConditionalGeneration

    from lora_whisper.adapters.lora import lora_config, save_adapter
    from lora_whisper.adapters.registry import AdapterRecord
    from lora_whisper.base.loading import resolve_base, weights_fingerprint
    from lora_whisper.cli import main

    path, hub_id = resolve_base("offline")
    reg = Registry(tmp_path / "adapters")
    for seed, lang in enumerate(("en", "fr"), start=1):
        torch.manual_seed(seed)
        pm = get_peft_model(WhisperForConditionalGeneration.from_pretrained(path), lora_config("decoder", r=4, alpha=8))
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.01)
        save_adapter(pm, tmp_path / f"ad-{lang}", hub_id)
        rec = AdapterRecord(
            name=lang,
            version=0,
            language=lang,
            base={"hub_id": hub_id, "fingerprint": weights_fingerprint(path)},
            lora={"r": 4, "alpha": 8, "scope": "decoder"},
            source="test",
        )
        reg.add(tmp_path / f"ad-{lang}", rec)
        del pm
    inputs = [str(AUDIO), str(DATA / "cv-en" / "clips")]
    glob = ["--registry", str(reg.root), "--runtime", "torch"]  # batch under auto stays on torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as the one-CPU actor
    try:
        cli = CliRunner().invoke(main, [*glob, "transcribe", *inputs, "--format", "json"])
    finally:
        torch.set_num_threads(n)
    assert cli.exit_code == 0, cli.output
    expected = [json.loads(x) for x in cli.stdout.splitlines() if x.startswith("{")]
    res = CliRunner().invoke(main, [*glob, "batch", *inputs, "--out", str(tmp_path / "out"), "--progress-every", "0"])
    assert res.exit_code == 0, res.output
    rows = read_output(tmp_path / "out" / "transcripts.jsonl")
    assert len(rows) == 22 and rows == expected
    assert {r["adapter"] for r in rows} == {"en@1", "fr@1", None}  # both adapters and the base really used
    assert "batch: 22 done (0 errors)" in res.stderr
