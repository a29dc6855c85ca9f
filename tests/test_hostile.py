"""Hostile and careless input (issue 30): a bad adapter must not break routing, nothing from outside a folder gets
into the registry, small uploads cannot take the server's memory, no transcript is lost, and a bad recipe or option
is refused whole, in one line, before any model loads or anything is deleted.

Families: malformed records (bad nested types, non-finite numbers), links and special files, bombs (decoded length,
nesting, size), output name collisions, recipes, option bounds, base mismatch, disconnecting clients."""

import json
import logging
import math
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from conftest import TINY_HUB_ID, file_adapter

from lora_whisper.adapters.registry import (
    METADATA_FILE,
    AdapterMismatchError,
    Registry,
    RegistryError,
)
from lora_whisper.cli import main

NO_BASE = "/nonexistent/lora-whisper-base"
"""A --base that cannot load: a command refused with our message never reached the model."""


@pytest.fixture()
def reg(tmp_path):
    return Registry(tmp_path / "adapters")


@pytest.fixture()
def records():
    """Log records of lora_whisper and uvicorn (the CLI may have set lora_whisper not to propagate)."""
    got: list[logging.LogRecord] = []

    class H(logging.Handler):
        def emit(self, record):
            got.append(record)

    h = H(level=logging.DEBUG)
    names = ("lora_whisper", "uvicorn", "uvicorn.error")
    old = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).addHandler(h)
        logging.getLogger(n).setLevel(logging.INFO)
    yield got
    for n in names:
        logging.getLogger(n).removeHandler(h)
        logging.getLogger(n).setLevel(old[n])


def _one_line_error(res, *needles):
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    text = res.stderr.strip()
    assert text, res.output
    for n in needles:
        assert n in text, text
    return text


def _edit_record(folder, path: str, value):
    """Set ``path`` (``calibration.threshold``) in a filed version's lora_whisper.json, as a hand edit would."""
    meta = folder / METADATA_FILE
    d = json.loads(meta.read_text())
    node, *keys = path.split(".")
    if not keys:
        d[node] = value
    else:
        sub = d.get(node) if isinstance(d.get(node), dict) else {}
        d[node] = sub
        for k in keys[:-1]:
            sub = sub.setdefault(k, {})
        sub[keys[-1]] = value
    meta.write_text(json.dumps(d))


# ---- 1. one malformed adapter --------------------------------------------------------------------------------------
BAD_FIELDS = [
    ("calibration.threshold", "high"),
    ("calibration.threshold", float("nan")),
    ("calibration.threshold", -1),
    ("calibration.threshold", [0.5]),
    ("calibration.score", "bogus"),
    ("calibration.margin", float("inf")),
    ("calibration", [0.5]),
    ("decoding.beam_size", 100000),
    ("decoding.beam_size", "5"),
    ("decoding.beam_size", True),
    ("decoding.drop_failed", "yes"),
    ("lora.scope", "both"),
    ("lora.r", "high"),
    ("lora.alpha", float("nan")),
    ("metrics.before", [0.9]),
    ("metrics.after.wer", "low"),
    ("language", "../../etc"),
    ("language", "xx"),
    ("domain", "../up"),
    ("base.hub_id", 7),
    ("base.fingerprint", ["x"]),
    ("recipe.data", "synthetic"),
    ("train_seconds", float("inf")),
    ("inactive_reason", 3),
]


@pytest.mark.parametrize("field, value", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_bad_record_field_is_refused_on_filing_and_skipped_on_reading(reg, tiny_adapter_factory, field, value):
    a = tiny_adapter_factory()
    good = file_adapter(reg, a, "de", "de")
    bad = file_adapter(reg, a, "es", "es")
    _edit_record(bad.path, field, value)
    records, problems = reg.scan()
    assert [r.ref for r in records] == [good.ref]
    (p,) = problems
    assert "/es/v1" in p.path and field.split(".")[-1] in p.message and "\n" not in p.message
    with pytest.raises(RegistryError, match="not usable"):
        reg.get("es")
    # the same record is refused where it enters: filing, and importing the folder
    with pytest.raises(RegistryError, match=field.split(".")[-1]):
        reg.import_folder(bad.path, name="es2")
    assert [r.name for r in reg.list()] == ["de"]


def test_one_malformed_adapter_does_not_break_auto_routing(tiny_model_dir, reg, tiny_adapter_factory, wavs, records):
    """Before: calibration.threshold "high" made routing.should_consult raise TypeError for every file."""
    from lora_whisper.base.loading import load_base
    from lora_whisper.transcribe.engine import Engine, FileError, TranscribeOptions
    from lora_whisper.transcribe.routing import should_consult

    fp = tiny_adapter_factory.fingerprint
    file_adapter(reg, tiny_adapter_factory("decoder", 1), "de", "de", fingerprint=fp, scope="decoder")
    bad = file_adapter(reg, tiny_adapter_factory("decoder", 2), "fr", "fr", fingerprint=fp, scope="decoder")
    _edit_record(bad.path, "calibration", {"threshold": "high", "score": "geometric"})
    for _ in range(3):  # scanned on every request: warned once
        assert [r.ref for r in reg.routable()] == ["de@1"]
    assert should_consult({"fr": 0.9, "de": 0.1}, 0.5, reg.routable()) in (True, False)
    engine = Engine(load_base(str(tiny_model_dir), quantize="none", device="cpu"), reg)
    opts = TranscribeOptions(temperature=(0.0,), max_new_tokens=4, consult_below=1e-9)
    (res,) = list(engine.transcribe([wavs["good"]], opts))
    assert not isinstance(res, FileError)
    warned = [r.getMessage() for r in records if r.levelno >= logging.WARNING and "/fr/v1" in r.getMessage()]
    assert len(warned) == 1 and "calibration.threshold" in warned[0], warned


def test_cli_import_of_a_malformed_record_is_one_line(reg, tiny_adapter_factory, tmp_path, tiny_model_dir):
    src = tmp_path / "bad"
    shutil.copytree(file_adapter(reg, tiny_adapter_factory(), "fr", "fr").path, src)
    _edit_record(src, "calibration.threshold", "high")
    res = CliRunner().invoke(
        main, ["--registry", str(reg.root), "--base", str(tiny_model_dir), "adapters", "import", str(src)]
    )
    _one_line_error(res, "calibration.threshold", "'high'")
    assert [r.ref for r in reg.list()] == ["fr@1"]


def test_record_schema_scores_are_routing_scores():
    from lora_whisper.adapters.schema import SCORE_KINDS
    from lora_whisper.transcribe.routing import SCORES

    assert set(SCORE_KINDS) == set(SCORES)


def test_valid_records_still_round_trip(reg, tiny_adapter_factory):
    cal = {"threshold": 2.5, "score": "odds", "margin": 1.1, "min_own_prob": 0.5, "own": {"n": 3}, "languages": ["de"]}
    rec = file_adapter(
        reg,
        tiny_adapter_factory(),
        "fa-cv",
        "fa",
        calibration=cal,
        decoding={"beam_size": 5, "drop_failed": True},
        metrics={"before": None, "after": {"wer": 0.3, "cer": 0.1}, "final_loss": float("nan")},
    )
    got = reg.get("fa-cv")
    assert got.calibration == cal and got.decoding == rec.decoding and math.isnan(got.metrics["final_loss"])


# ---- 2. links and special files --------------------------------------------------------------------------------------
def _folder(tmp_path, tiny_adapter_factory, name="src"):
    src = tmp_path / name
    shutil.copytree(tiny_adapter_factory(), src)
    return src


def test_link_out_of_the_folder_is_refused(reg, tiny_adapter_factory, tmp_path):
    """Before: notes.txt -> /etc/passwd was copied into the registry (and would be exported, pushed)."""
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0\n")
    src = _folder(tmp_path, tiny_adapter_factory)
    (src / "notes.txt").symlink_to(secret)
    with pytest.raises(RegistryError, match="notes.txt is a symbolic link"):
        reg.import_folder(src, language="fr")
    assert reg.list() == [] and not any("secret" in p.read_text(errors="ignore") for p in reg.root.rglob("*.txt"))


@pytest.mark.parametrize("kind", ["loop", "self-dir", "dangling", "dir-outside", "weights-outside"])
def test_bad_links_are_one_line(reg, tiny_adapter_factory, tmp_path, tiny_model_dir, kind):
    src = _folder(tmp_path, tiny_adapter_factory)
    if kind == "loop":
        os.symlink(src / "b", src / "a")
        os.symlink(src / "a", src / "b")
    elif kind == "self-dir":  # copytree followed it 40 levels deep, then a traceback
        os.symlink(src, src / "sub")
    elif kind == "dangling":
        os.symlink(tmp_path / "nowhere", src / "gone.txt")
    elif kind == "dir-outside":
        (tmp_path / "outside").mkdir()
        os.symlink(tmp_path / "outside", src / "more")
    else:
        w = src / "adapter_model.safetensors"
        shutil.move(w, tmp_path / "w.safetensors")
        os.symlink(tmp_path / "w.safetensors", w)
    res = CliRunner().invoke(
        main,
        [
            "--registry",
            str(reg.root),
            "--base",
            str(tiny_model_dir),
            "adapters",
            "import",
            str(src),
            "--language",
            "fr",
        ],
    )
    _one_line_error(res, "symbolic link")
    assert len(res.stderr.strip().splitlines()) == 1 and reg.list() == []


def test_link_to_a_file_inside_the_folder_is_copied_as_a_file(reg, tiny_adapter_factory, tmp_path):
    src = _folder(tmp_path, tiny_adapter_factory)
    (src / "docs").mkdir()
    (src / "docs" / "card.md").write_text("# card\n")
    os.symlink("docs/card.md", src / "README.txt")
    rec = reg.import_folder(src, language="fr")
    copied = rec.path / "README.txt"
    assert copied.is_file() and not copied.is_symlink() and copied.read_text() == "# card\n"
    assert not any(p.is_symlink() for p in rec.path.rglob("*"))


def test_a_huge_folder_is_not_walked_whole(reg, tiny_adapter_factory, tmp_path):
    """`adapters import /` walked the whole disk (and copied it) before any check."""
    src = _folder(tmp_path, tiny_adapter_factory)
    for i in range(40):
        (src / f"d{i}").mkdir()
        for j in range(30):
            (src / f"d{i}" / f"f{j}.txt").write_text("x")
    with pytest.raises(RegistryError, match="more than 1000 files"):
        reg.import_folder(src, language="fr")


def test_fifo_in_the_folder_is_refused_without_hanging(reg, tiny_adapter_factory, tmp_path):
    src = _folder(tmp_path, tiny_adapter_factory)
    os.mkfifo(src / "pipe")
    with pytest.raises(RegistryError, match="pipe is not a regular file"):
        reg.import_folder(src, language="fr")
    fifo_config = _folder(tmp_path, tiny_adapter_factory, "src2")
    (fifo_config / "adapter_config.json").unlink()
    os.mkfifo(fifo_config / "adapter_config.json")  # reading it would block forever
    with pytest.raises(RegistryError, match="not a regular file"):
        reg.import_folder(fifo_config, language="fr")


# ---- 3. bombs ------------------------------------------------------------------------------------------------------
def test_deeply_nested_or_huge_metadata_is_refused_in_one_line(reg, tiny_adapter_factory, tmp_path):
    a = tiny_adapter_factory()
    deep = file_adapter(reg, a, "deep", "fr")
    (deep.path / METADATA_FILE).write_text("[" * 100000 + "]" * 100000)
    big = file_adapter(reg, a, "big", "fr")
    (big.path / METADATA_FILE).write_text(json.dumps({"name": "big", "pad": "x" * (5 << 20)}))
    cfg = file_adapter(reg, a, "cfg", "fr")
    (cfg.path / "adapter_config.json").write_text('{"r": ' + "[" * 100000 + "]" * 100000 + "}")
    records, problems = reg.scan()
    assert records == [] and len(problems) == 3
    assert all("\n" not in p.message for p in problems)
    src = _folder(tmp_path, tiny_adapter_factory)
    (src / METADATA_FILE).write_text("{" * 50000)
    with pytest.raises(RegistryError, match="unreadable metadata"):
        reg.import_folder(src)


def test_adapter_config_sizing_the_layers_is_bounded(reg, tiny_adapter_factory, tmp_path):
    """peft sizes the LoRA layers by adapter_config.json's r: r = 10^9 would allocate before failing."""
    for key, value in (("r", 10**9), ("r", "8"), ("lora_alpha", float("nan"))):
        src = tmp_path / f"{key}-{value}"
        shutil.copytree(tiny_adapter_factory(), src)
        cfg = json.loads((src / "adapter_config.json").read_text())
        cfg[key] = value
        (src / "adapter_config.json").write_text(json.dumps(cfg))
        with pytest.raises(RegistryError, match=key):
            reg.import_folder(src, language="fr")
    assert reg.list() == []


_ALIAS_BOMB = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from lora_whisper.train.recipe import RecipeError, load_recipe
try:
    load_recipe(sys.argv[1])
except RecipeError as e:
    print("REFUSED", e.problems)
"""


@pytest.mark.parametrize("field", ["data.dataset", "lora.target_modules", "train.lr", "data.contrast"])
def test_recipe_yaml_alias_bomb_is_refused_at_once(tmp_path, field):
    """A 'billion laughs' recipe (YAML aliases nesting 10^9 items in a few lines) is refused, not walked or printed."""
    import subprocess
    import sys

    levels = ["&l0 [a, a, a, a, a, a, a, a, a, a]"] + [
        f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)
    ]
    section, key = field.split(".")
    path = tmp_path / "bomb.yaml"
    body = "language: fr\ndata:\n  source: synthetic\n  corpus: fr-medical\n"
    if section != "data":
        body += f"{section}:\n"
    path.write_text(body + f"  {key}: [{', '.join(levels)}]\n")
    here = str(Path(__file__).resolve().parents[1])  # this checkout's package, as the test process imports it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-c", _ALIAS_BOMB, str(path)], capture_output=True, text=True, timeout=120, env=env
    )
    assert "REFUSED" in proc.stdout and field in proc.stdout, proc.stderr[-1000:]
    assert len(proc.stdout) < 2000


def _silent_opus(path, seconds, rate=48000):
    sf.write(path, np.zeros(int(rate * seconds), np.float32), rate, format="OGG", subtype="OPUS")
    return path


def test_decoding_stops_past_the_limit_with_bounded_memory(tmp_path, monkeypatch):
    """Before: the whole file was decoded (at its own rate, every channel) and only then checked."""
    import tracemalloc

    from lora_whisper.transcribe.audio import AudioTooLong, load_audio

    f = _silent_opus(tmp_path / "silence.opus", 300)
    assert f.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(AudioTooLong, match="over the limit of 20 s"):
            load_audio(f, max_seconds=20)
        # a header that does not say its length (or lies): decoding itself stops past the limit
        monkeypatch.setattr("lora_whisper.transcribe.audio._claimed_seconds", lambda f: 0.0)
        tracemalloc.reset_peak()
        with pytest.raises(AudioTooLong, match="more than"):
            load_audio(f, max_seconds=20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6, peak  # the whole file would be 300 s x 48 kHz x 4 B = 58 MB


def test_bounded_decoding_gives_the_same_samples(tmp_path):
    from lora_whisper.transcribe.audio import load_audio

    rng = np.random.default_rng(0)
    x = (0.3 * rng.normal(0, 1, (44100 * 3 + 7, 2))).astype(np.float32)
    for name, kw in (("a.wav", {}), ("a.mp3", {"format": "MP3"})):
        sf.write(tmp_path / name, x, 44100, **kw)
        assert np.array_equal(load_audio(tmp_path / name), load_audio(tmp_path / name, max_seconds=60))


# ---- 4. --out collisions, 9. empty folders ----------------------------------------------------------------------------
def _cli_transcribe(tiny_model_dir, tmp_path, *args):
    base = ["--base", str(tiny_model_dir), "--quantize", "none", "--runtime", "torch"]
    opts = ["--temperature", "0", "--max-new-tokens", "4"]
    return CliRunner().invoke(main, [*base, "--registry", str(tmp_path / "reg"), "transcribe", *opts, *args])


def test_out_keeps_every_input_when_names_collide(tiny_model_dir, tmp_path, wavs):
    """Before: three inputs named good1 in different folders left one good1.srt, exit 0."""
    ins = []
    for d in ("a", "b", "c"):
        (tmp_path / d).mkdir()
        ins.append(tmp_path / d / "good1.wav")
        shutil.copy(wavs["good"], ins[-1])
    shutil.copy(wavs["good2"], tmp_path / "a" / "good1.flac")
    out = tmp_path / "out"
    res = _cli_transcribe(
        tiny_model_dir, tmp_path, "--format", "json", "--out", str(out), *map(str, ins), str(tmp_path / "a")
    )
    assert res.exit_code == 0, res.output
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 4, written
    files = {json.loads(p.read_text())["file"] for p in out.iterdir()}
    assert files == {str(p) for p in ins} | {str(tmp_path / "a" / "good1.flac")}


def test_output_names_are_distinct_and_stable():
    from lora_whisper.transcribe.output import output_names

    files = [
        "/x/a/g.wav",
        "/x/b/g.wav",
        "/x/a/g.flac",
        "/x/a/h.wav",
        "/x/a/../a/h.wav",
        "/q/a__b/c.wav",
        "/q/a/b__c.wav",
    ]
    names = output_names(files, "srt")
    assert names["/x/a/h.wav"] == names["/x/a/../a/h.wav"] == "h.srt"
    assert len({v for k, v in names.items() if k != "/x/a/../a/h.wav"}) == len(files) - 1
    assert names["/x/a/g.flac"] == "g.flac.srt" and names["/x/b/g.wav"] == "b__g.wav.srt"


@pytest.mark.parametrize("command", ["transcribe", "detect"])
def test_folder_without_audio_is_an_error(tmp_path, command):
    """Before: `transcribe DIR` on a folder with no audio printed nothing and exited 0."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no audio\n")
    res = CliRunner().invoke(main, ["--base", NO_BASE, command, str(empty)])
    _one_line_error(res, "no audio files")
    assert "cannot" not in res.stderr  # refused before the base was looked at


# ---- 5, 6. recipes ------------------------------------------------------------------------------------------------
RECIPE = "data:\n  source: synthetic\n  corpus: fr-medical\n"


def test_recipe_without_language_is_refused(tmp_path):
    """Before: it trained as French (the dataclass default) and filed a Spanish adapter as fr."""
    from lora_whisper.train.recipe import RecipeError, load_recipe

    path = tmp_path / "es.yaml"
    path.write_text(RECIPE)
    with pytest.raises(RecipeError, match="language: required"):
        load_recipe(path)
    res = CliRunner().invoke(main, ["--base", NO_BASE, "train", "--recipe", str(path)])
    _one_line_error(res, "1 problem")
    # the command line's --lang gives the language, as before
    assert load_recipe(path, ["language=es"]).language == "es"
    assert load_recipe(None, [], language="fr", domain="medical", data={"corpus": "fr-medical"}).name == "fr-medical"


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.lr=.nan", "train.lr"),
        ("train.lr=nan", "train.lr"),
        ("train.lr=.inf", "train.lr"),
        ("train.lr=true", "train.lr"),
        ("train.epochs=.inf", "train.epochs"),
        ("train.weight_decay=.nan", "train.weight_decay"),
        ("train.warmup_steps=-3", "train.warmup_steps"),
        ("lora.alpha=.nan", "lora.alpha"),
        ("lora.dropout=.nan", "lora.dropout"),
        ("lora.r=100000", "lora.r"),
        ("data.noise_snr_db=.nan", "data.noise_snr_db"),
        ("calibration.margin=.inf", "calibration.margin"),
        ("eval.batch_size=0", "eval.batch_size"),
        ("eval.max_new_tokens=100000", "eval.max_new_tokens"),
        ("data.pitch=[.nan, 3]", "data.pitch"),
    ],
)
def test_non_finite_and_out_of_range_numbers_are_named(override, field):
    from lora_whisper.train.recipe import RecipeError, load_recipe

    with pytest.raises(RecipeError) as e:
        load_recipe(None, [override], language="fr", data={"corpus": "fr-medical"})
    assert any(p.startswith(field) for p in e.value.problems), e.value.problems


def test_bad_recipe_keeps_the_previous_runs_checkpoints(tmp_path, reg):
    """Before: `lr: .nan` passed validation and the run deleted the previous run's checkpoints before torch refused it."""
    from lora_whisper.train.recipe import RecipeError, load_recipe
    from lora_whisper.train.trainer import train

    run = tmp_path / "run"
    (run / "checkpoint-5").mkdir(parents=True)
    (run / "best").mkdir()
    path = tmp_path / "r.yaml"
    path.write_text(f"language: fr\n{RECIPE}train:\n  lr: .nan\noutput:\n  run_dir: {run}\n")
    res = CliRunner().invoke(main, ["--base", NO_BASE, "--registry", str(reg.root), "train", "--recipe", str(path)])
    _one_line_error(res, "problem")
    recipe = load_recipe(path, ["train.lr=1e-3"])
    recipe.train.lr = float("nan")  # a library caller's recipe, changed after loading
    with pytest.raises(RecipeError, match="train.lr"):
        train(recipe, reg)
    assert (run / "checkpoint-5").is_dir() and (run / "best").is_dir()


# ---- 7. another base ----------------------------------------------------------------------------------------------
def _foreign(tmp_path, reg, tiny_adapter_factory):
    """An adapter folder whose record says it was made for openai/whisper-small."""
    rec = file_adapter(Registry(tmp_path / "elsewhere"), tiny_adapter_factory(), "es", "es")
    src = tmp_path / "foreign"
    shutil.copytree(rec.path, src)
    _edit_record(src, "base", {"hub_id": "openai/whisper-small", "fingerprint": "sha256:small"})
    return src


def test_adapter_for_another_base_is_refused_on_import(tmp_path, reg, tiny_adapter_factory, tiny_model_dir):
    """Before: imported, listed active, and when used it still forced its language on the base."""
    src = _foreign(tmp_path, reg, tiny_adapter_factory)
    res = CliRunner().invoke(
        main, ["--registry", str(reg.root), "--base", str(tiny_model_dir), "adapters", "import", str(src)]
    )
    _one_line_error(res, "openai/whisper-small", TINY_HUB_ID, "not filed")
    assert reg.list() == []
    with pytest.raises(AdapterMismatchError):
        Registry(reg.root, base={"hub_id": TINY_HUB_ID, "fingerprint": None}).import_folder(src)


def test_adapter_for_another_base_in_the_registry_is_skipped_and_not_forced(
    tmp_path, reg, tiny_adapter_factory, tiny_model_dir, wavs
):
    src = _foreign(tmp_path, reg, tiny_adapter_factory)
    reg.import_folder(src)  # a registry not bound to a base files it (as a copy by hand would)
    bound = Registry(reg.root, base={"hub_id": TINY_HUB_ID, "fingerprint": tiny_adapter_factory.fingerprint})
    records, problems = bound.scan()
    assert records == [] and "trained on base openai/whisper-small" in problems[0].message
    with pytest.raises(RegistryError, match="not usable.*whisper-small"):
        bound.get("es")
    # --adapter NAME: refused before the model loads, naming both bases
    res = CliRunner().invoke(
        main, ["--base", str(tiny_model_dir), "--registry", str(reg.root), "transcribe", "--adapter", "es", "x.wav"]
    )
    _one_line_error(res, "--adapter 'es'", "openai/whisper-small")


# ---- 8. option bounds -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, needle",
    [
        (["--beam-size", "100000"], "--beam-size must be an integer from 1 to 16"),
        (["--beam-size", "0"], "beam size 0"),
        (["--temperature", "nan"], "--temperature"),
        (["--temperature", "0,inf"], "--temperature"),
        (["--threshold", "nan"], "--threshold"),
        (["--consult-below", "2"], "--consult-below"),
        (["--batch-size", "100000"], "--batch-size must be an integer from 1 to 256"),
        (["--threshold", "-1"], "--threshold"),
        (["--compression-ratio-threshold", "nan"], "--compression-ratio-threshold"),
        (["--no-speech-threshold", "inf"], "--no-speech-threshold"),
        (["--logprob-threshold", "-inf"], "--logprob-threshold"),
        (["--combine-weights", "nan,1"], "--combine-weights"),
        (["--initial-prompt", "x" * 5000], "--initial-prompt"),
    ],
)
def test_transcribe_bounds_fail_before_the_model_loads(tmp_path, wavs, args, needle):
    res = CliRunner().invoke(
        main, ["--base", NO_BASE, "--registry", str(tmp_path), "transcribe", *args, str(wavs["good"])]
    )
    text = _one_line_error(res, needle)
    assert len(text.splitlines()) == 1 and "cannot" not in text


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--max-upload-mb", "nan"], "--max-upload-mb"),
        (["--max-upload-mb", "-1"], "--max-upload-mb"),
        (["--max-upload-mb", "inf"], "--max-upload-mb"),
        (["--max-audio-s", "0"], "--max-audio-s"),
        (["--max-audio-s", "nan"], "--max-audio-s"),
        (["--port", "70000"], "--port"),
        (["--drain-timeout", "-5"], "--drain-timeout"),
        (["--drain-timeout", "nan"], "--drain-timeout"),
        (["--set", "beam_size=100000"], "beam_size must be an integer from 1 to 16"),
        (["--set", "temperature=.nan"], "temperature"),
        (["--set", "vad=maybe"], "vad must be true or false"),
        (["--set", "beam_size=["], "not a YAML value"),
        (["--set", "threshold=.inf"], "threshold"),
    ],
)
def test_serve_bounds_fail_before_the_model_loads(tmp_path, args, needle):
    res = CliRunner().invoke(main, ["--base", NO_BASE, "--registry", str(tmp_path), "serve", *args])
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit), res.output
    assert needle in res.output and "cannot load base" not in res.output and "Traceback" not in res.output
    assert "No such option" not in res.output


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--language", "../../etc"], "got '../../etc'"),
        (["--language", "xx"], "language"),
        (["--domain", "../x"], "domain"),
        (["--name", "../x"], "not allowed"),
    ],
)
def test_import_options_are_checked(reg, tiny_adapter_factory, tmp_path, tiny_model_dir, args, needle):
    res = CliRunner().invoke(
        main,
        ["--registry", str(reg.root), "--base", str(tiny_model_dir), "adapters", "import", str(tiny_adapter_factory())]
        + (args if args[0] == "--language" else ["--language", "fr", *args]),
    )
    _one_line_error(res, needle)
    assert reg.list() == [] and not (reg.root / ".." / "etc").exists()


@pytest.mark.parametrize("args", [["--threads", "-1"], ["--cache-size", "0"]])
def test_global_bounds(args):
    res = CliRunner().invoke(main, [*args, "--base", NO_BASE, "detect", "x.wav"])
    assert res.exit_code == 2 and "Invalid value" in res.output


# ---- the server: 1, 3, 7, 10 -----------------------------------------------------------------------------------------
@pytest.fixture()
def served(tiny_model_dir, reg, tiny_adapter_factory):
    from test_server import running

    from lora_whisper.base.loading import load_base
    from lora_whisper.transcribe.engine import Engine

    fp = tiny_adapter_factory.fingerprint
    file_adapter(reg, tiny_adapter_factory("decoder", 3), "de", "de", fingerprint=fp, scope="decoder")
    engine = Engine(load_base(str(tiny_model_dir), quantize="none", device="cpu"), reg)

    def start(**kw):
        return running(engine, **kw)

    return start


def test_server_bounds_decoded_audio_and_keeps_serving(served, tmp_path, wavs):
    """Before: 2.7 MB of Opus holding 2 h of silence took the server from 1.0 to 3.75 GB."""
    from test_server import _error, post

    bomb = _silent_opus(tmp_path / "bomb.opus", 300)
    with served(max_audio_seconds=60) as (url, _):
        err = _error(post(url, "/v1/audio/transcriptions", bomb, {"model": "auto"}), 413)
        assert err["code"] == "audio_too_long" and "60 s" in err["message"] and str(tmp_path) not in err["message"]
        ok = post(url, "/v1/audio/transcriptions", wavs["good"], {"model": "auto"})
        assert ok.status_code == 200, ok.text


def test_server_skips_a_malformed_adapter_and_refuses_bad_imports(
    served, reg, tiny_adapter_factory, tmp_path, wavs, records
):
    from test_server import KEY, _error, post

    bad = file_adapter(reg, tiny_adapter_factory("decoder", 4), "fr", "fr", scope="decoder")
    _edit_record(bad.path, "calibration.threshold", "high")
    root = tmp_path / "imports"
    root.mkdir()
    src = root / "bad"
    shutil.copytree(bad.path, src)
    linked = root / "linked"
    shutil.copytree(tiny_adapter_factory(), linked)
    (linked / "notes.txt").symlink_to("/etc/passwd")
    foreign = shutil.copytree(_foreign(tmp_path, reg, tiny_adapter_factory), root / "foreign")
    with served(api_key=KEY, import_roots=[str(root)]) as (url, _):
        from test_server import httpx

        h = {"Authorization": f"Bearer {KEY}"}
        models = httpx.get(url + "/v1/models", headers=h).json()["data"]
        assert [m["id"] for m in models] == ["auto", "base", "de"]
        for _ in range(2):
            r = post(url, "/v1/audio/transcriptions", wavs["good"], {"model": "auto"}, key=KEY)
            assert r.status_code == 200, r.text
        err = _error(post(url, "/v1/audio/transcriptions", wavs["good"], {"model": "fr"}, key=KEY), 404)
        assert "calibration.threshold" in err["message"]
        for folder, needle in ((src, "calibration.threshold"), (linked, "symbolic link"), (foreign, "whisper-small")):
            body = {"lora_name": f"x-{folder.name}", "lora_path": str(folder), "language": "fr"}
            err = _error(httpx.post(url + "/v1/load_lora_adapter", json=body, headers=h), 400)
            assert needle in err["message"], err
        body = {"lora_name": "y", "lora_path": str(linked.parent / "bad"), "language": "../../etc"}
        assert httpx.post(url + "/v1/load_lora_adapter", json=body, headers=h).status_code == 400
        deep = httpx.post(url + "/v1/load_lora_adapter", content=b"[" * 100000, headers=h)
        assert _error(deep, 400)["message"].startswith("body is not JSON")
    assert sorted(r.name for r in reg.list()) == ["de"]
    warned = [r.getMessage() for r in records if "/fr/v1" in r.getMessage()]
    assert len(warned) == 1, warned


def test_client_disconnecting_mid_upload_is_one_log_line(served, records):
    """Before: an unhandled ClientDisconnect traceback in the server log."""
    with served() as (url, _):
        host, port = url.removeprefix("http://").split(":")
        for _ in range(2):
            s = socket.create_connection((host, int(port)))
            s.sendall(
                b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n"
                b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n' + b"\0" * 1000
            )
            time.sleep(0.3)
            s.close()
        deadline = time.time() + 10
        while time.time() < deadline and not any("disconnected" in r.getMessage() for r in records):
            time.sleep(0.1)
        from test_server import httpx

        assert httpx.get(url + "/health").status_code == 200
    assert [r for r in records if r.exc_info] == []
    gone = [r.getMessage() for r in records if "disconnected" in r.getMessage()]
    assert len(gone) == 2 and all("\n" not in m for m in gone), gone
