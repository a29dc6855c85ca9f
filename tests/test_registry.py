import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import TINY_HUB_ID, file_adapter

from lora_whisper.adapters.registry import (
    AdapterMismatchError,
    AdapterRecord,
    Registry,
    RegistryError,
    check_base,
    check_name,
    parse_ref,
)


@pytest.fixture()
def reg(tmp_path):
    return Registry(tmp_path / "adapters")


def test_versions_and_activation(reg, tiny_adapter_factory):
    a = tiny_adapter_factory()
    r1 = file_adapter(reg, a, "fr-medical", "fr", "medical", metrics={"after": {"wer": 0.3}})
    r2 = file_adapter(reg, a, "fr-medical", "fr", "medical")
    assert (r1.version, r2.version) == (1, 2) and r2.active
    assert reg.find("fr", "medical").ref == "fr-medical@2"
    assert reg.find("fr") is None and reg.find("de", "medical") is None
    reg.activate("fr-medical@1")
    assert reg.get("fr-medical").version == 1 and reg.get("fr-medical@v2").version == 2
    assert reg.get("fr-medical").metrics == {"after": {"wer": 0.3}}
    assert reg.remove("fr-medical@1") == ["fr-medical@1"]
    assert reg.get("fr-medical").version == 2  # active falls back to the newest valid version
    with pytest.raises(RegistryError, match="available: \\['fr-medical'\\]"):
        reg.get("de")
    assert reg.remove("fr-medical") == ["fr-medical@2"] and reg.list() == []


@pytest.mark.parametrize("bad", ["../evil", "a/b", "..", "", "UPPER", ".hidden", "x" * 65, "a..b"])
def test_names_cannot_escape(bad):
    with pytest.raises(RegistryError):
        check_name(bad)
    with pytest.raises(RegistryError):
        parse_ref(bad + "@1")


def test_broken_folders_are_reported_not_fatal(reg, tiny_adapter_factory, tmp_path):
    a = tiny_adapter_factory()
    good = file_adapter(reg, a, "de", "de")
    for name in ("trunc", "pickle", "meta"):
        file_adapter(reg, a, name, "fr")
    # a truncated safetensors file
    w = reg.root / "trunc" / "v1" / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    # a pickled adapter next to it
    (reg.root / "pickle" / "v1" / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    # metadata with missing fields
    m = reg.root / "meta" / "v1" / "lora_whisper.json"
    d = json.loads(m.read_text())
    del d["language"], d["base"]
    m.write_text(json.dumps(d))
    (reg.root / ".tmp-crashed").mkdir()  # an interrupted write: ignored
    records, problems = reg.scan()
    assert [r.ref for r in records] == [good.ref]
    msgs = {p.path.split("/")[-2]: p.message for p in problems}
    assert "truncated safetensors" in msgs["trunc"]
    assert "pickled files are not accepted (adapter_model.bin)" in msgs["pickle"]
    assert "missing field(s) language, base" in msgs["meta"]
    res = CliRunner().invoke(__import__("lora_whisper.cli").cli.main, ["--registry", str(reg.root), "adapters", "list"])
    assert res.exit_code == 0 and "de" in res.stdout and res.stderr.count("warning: skipped") == 3


def test_add_rejects_bad_sources_and_leaves_nothing(reg, tiny_adapter_factory, tmp_path):
    a = tiny_adapter_factory()
    bad = tmp_path / "bad"
    shutil.copytree(a, bad)
    (bad / "adapter_model.safetensors").unlink()
    (bad / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(RegistryError, match="pickled"):
        file_adapter(reg, bad, "x", "fr")
    assert not reg.root.exists() or [p.name for p in reg.root.iterdir() if p.name != ".lock"] == []


def test_base_mismatch_names_both():
    rec = AdapterRecord("fr", 1, "fr", {"hub_id": "openai/whisper-base", "fingerprint": "sha256:aaa"})
    check_base(rec, {"hub_id": "openai/whisper-base", "fingerprint": "sha256:aaa"})
    with pytest.raises(AdapterMismatchError, match="openai/whisper-base.*sha256:aaa.*openai/whisper-small.*sha256:bbb"):
        check_base(rec, {"hub_id": "openai/whisper-small", "fingerprint": "sha256:bbb"})
    foreign = AdapterRecord("x", 1, "fr", {"hub_id": "openai/whisper-base", "fingerprint": None})
    check_base(foreign, {"hub_id": "openai/whisper-base", "fingerprint": "sha256:aaa"})


# Each writer is a fresh interpreter (not a fork): forking a process that holds torch's thread pools can deadlock the
# child, and a hung child then keeps pytest from exiting.
_FILE_MANY = """
import sys
sys.path.insert(0, sys.argv[3])
from conftest import file_adapter
from lora_whisper.adapters.registry import Registry
for _ in range(5):
    file_adapter(Registry(sys.argv[1]), sys.argv[2], "fr-medical", "fr", "medical")
"""


def test_concurrent_filing_is_consistent(reg, tiny_adapter_factory):
    a = tiny_adapter_factory()
    here = os.path.dirname(__file__)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _FILE_MANY, str(reg.root), str(a), here], stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    try:
        errors = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], errors
    records, problems = reg.scan()
    assert problems == []
    assert sorted(r.version for r in records) == list(range(1, 11))
    assert sum(r.active for r in records) == 1
    assert not [p for p in os.listdir(reg.root) if p.startswith((".tmp", ".trash"))]


def test_cli_import_export_show_rm(reg, tiny_adapter_factory, tmp_path, tiny_model_dir):
    from lora_whisper.cli import main

    runner = CliRunner()
    a = tiny_adapter_factory()
    base = ["--registry", str(reg.root), "--base", str(tiny_model_dir)]
    # a plain peft folder (no lora-whisper metadata) needs a language
    res = runner.invoke(main, base + ["adapters", "import", str(a), "--name", "plain"])
    assert res.exit_code == 2 and "pass --language" in res.stderr
    res = runner.invoke(main, base + ["adapters", "import", str(a), "--name", "plain", "--language", "es"])
    assert res.exit_code == 0, res.output
    shown = json.loads(runner.invoke(main, base + ["adapters", "show", "plain"]).stdout)
    assert shown["language"] == "es" and shown["base"]["hub_id"] == TINY_HUB_ID and shown["lora"]["r"] == 4
    out = tmp_path / "exported"
    assert runner.invoke(main, base + ["adapters", "export", "plain", str(out)]).exit_code == 0
    assert {"adapter_config.json", "adapter_model.safetensors", "lora_whisper.json"} <= {p.name for p in out.iterdir()}
    # re-importing the export keeps its metadata and makes version 2
    assert runner.invoke(main, base + ["adapters", "import", str(out)]).exit_code == 0
    assert reg.get("plain").version == 2
    assert "removed plain@1" in runner.invoke(main, base + ["adapters", "rm", "plain"]).stdout
    assert runner.invoke(main, base + ["adapters", "show", "../x"]).exit_code == 2


def test_plain_peft_folder_takes_language_from_model_card(reg, tiny_adapter_factory, tmp_path):
    src = tmp_path / "card-adapter"
    shutil.copytree(tiny_adapter_factory(), src)
    (src / "README.md").write_text("---\nlanguage:\n- de\nlibrary_name: peft\n---\n# an adapter\n")
    assert reg.import_folder(src).language == "de"
    (src / "README.md").write_text("---\nlanguage: [unclosed\n---\n")
    with pytest.raises(RegistryError, match="no language in its model card: pass --language"):
        reg.import_folder(src)


def _header_file(path, header):
    import struct

    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 16)


def test_malformed_headers_wrong_types_are_warned_and_skipped(reg, tiny_adapter_factory, caplog):
    a = tiny_adapter_factory()
    good = file_adapter(reg, a, "good", "de")
    for name in ("hlist", "hoffsets", "hbool", "tversion", "tmetrics", "tlang", "tbase"):
        file_adapter(reg, a, name, "fr")
    _header_file(reg.root / "hlist" / "v1" / "adapter_model.safetensors", [1, 2])
    _header_file(reg.root / "hoffsets" / "v1" / "adapter_model.safetensors", {"w": {"dtype": "F32", "shape": [4]}})
    _header_file(
        reg.root / "hbool" / "v1" / "adapter_model.safetensors",
        {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, "16"]}},
    )
    for name, field, value in (
        ("tversion", "version", "1"),
        ("tmetrics", "metrics", [0.3]),
        ("tlang", "language", 7),
        ("tbase", "base", "openai/whisper-base"),
    ):
        m = reg.root / name / "v1" / "lora_whisper.json"
        d = json.loads(m.read_text())
        d[field] = value
        m.write_text(json.dumps(d))
    with caplog.at_level("WARNING", logger="lora_whisper"):
        records, problems = reg.scan()  # never raises
    assert [r.ref for r in records] == [good.ref]
    msgs = {p.path.split("/")[-2]: p.message for p in problems}
    assert "JSON list, not an object" in msgs["hlist"]
    assert "tensor 'w' has no valid data_offsets" in msgs["hoffsets"] and "data_offsets" in msgs["hbool"]
    assert "wrong type for field(s) version (str, expected int)" in msgs["tversion"]
    assert "metrics (list, expected dict)" in msgs["tmetrics"] and "language (int" in msgs["tlang"]
    assert "base (str, expected dict)" in msgs["tbase"]
    assert sum("registry: skipped" in r.message for r in caplog.records) == 7
    assert [r.ref for r in reg.routable()] == [good.ref] and reg.languages() == {"de"}


def test_folders_appearing_or_vanishing_mid_scan(reg, tiny_adapter_factory, monkeypatch):
    from pathlib import Path

    import lora_whisper.adapters.registry as registry_mod

    a = tiny_adapter_factory()
    for name in ("aa", "bb", "cc"):
        file_adapter(reg, a, name, "fr")
    real_read = registry_mod.Registry._read_version

    def racing_read(self, name, vdir):
        if name == "aa":  # another process removes bb and files dd while we read aa
            shutil.rmtree(reg.root / "bb", ignore_errors=True)
            shutil.copytree(reg.root / "cc", reg.root / "dd")
        if name == "cc":  # and cc's version folder is swapped out under us
            shutil.rmtree(vdir)
            raise registry_mod.RegistryError(f"{vdir}: no lora_whisper.json")
        return real_read(self, name, vdir)

    monkeypatch.setattr(registry_mod.Registry, "_read_version", racing_read)
    real_iterdir = Path.iterdir

    def gone_iterdir(self):
        if self.name == "bb" and not self.exists():
            raise FileNotFoundError(self)
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", gone_iterdir)
    records, problems = reg.scan()
    assert [r.ref for r in records] == ["aa@1"]  # bb vanished, cc's version vanished mid-read: no exception
    assert not [p for p in problems if "/bb" in p.path]  # a vanished family is simply gone
    assert [p.message for p in problems] == ["no adapter versions inside"]  # cc is now an empty folder: true
    monkeypatch.undo()
    assert sorted(r.name for r in reg.scan()[0]) == ["aa"] and any("dd" in p.path for p in reg.scan()[1])


def test_inactive_adapter_is_listed_with_its_reason_and_only_forced(reg, tiny_adapter_factory):
    from lora_whisper.transcribe.routing import RouteRequest, accept_claim, route

    a = tiny_adapter_factory()
    why = "not better than the base on real dev: WER 0.140 vs base 0.130"
    bad = file_adapter(
        reg,
        a,
        "en-cv",
        "en",
        metrics={"before": {"wer": 0.13}, "after": {"wer": 0.14}, "kind": "real", "split": "dev"},
        inactive_reason=why,
    )
    assert bad.active and not bad.routable and reg.routable() == [] and reg.languages() == set()
    r = route({"en": 0.99}, reg.active(), RouteRequest())
    assert r.adapter is None
    assert not accept_claim({"en": 0.5, "fr": 0.4}, bad, own_prob=0.99)
    forced = route({"en": 0.99}, reg.active(), RouteRequest(adapter="en-cv"))
    assert forced.adapter == "en-cv@1"
    res = CliRunner().invoke(__import__("lora_whisper.cli").cli.main, ["--registry", str(reg.root), "adapters", "list"])
    assert res.exit_code == 0, res.output
    row = next(line for line in res.stdout.splitlines() if line.startswith("en-cv"))
    assert "real dev" in row and "inactive" in row
    assert f"en-cv@1 is inactive: {why}" in res.stdout and "--adapter en-cv forces it" in res.stdout


def test_calibration_round_trips_and_adapters_list_shows_the_threshold(reg, tiny_adapter_factory):
    cal = {"threshold": 0.1234, "margin": 1.1, "own": {"n": 64, "accepted": 60}, "other": {"n": 189, "accepted": 0}}
    file_adapter(reg, tiny_adapter_factory(), "fa-cv", "fa", metrics={"kind": "real", "split": "dev"}, calibration=cal)
    file_adapter(reg, tiny_adapter_factory(seed=1), "de-x", "de")
    assert reg.get("fa-cv").calibration == cal and reg.get("de-x").calibration is None
    res = CliRunner().invoke(__import__("lora_whisper.cli").cli.main, ["--registry", str(reg.root), "adapters", "list"])
    assert res.exit_code == 0, res.output
    header = next(line for line in res.stdout.splitlines() if "threshold" in line)
    col = header.index("threshold")
    rows = {line.split()[0]: line for line in res.stdout.splitlines() if line.startswith(("fa-cv", "de-x"))}
    assert rows["fa-cv"][col:].split()[0] == "0.123" and rows["de-x"][col:].split()[0] == "-"


def test_show_figures_reads_the_filed_metrics():
    from lora_whisper.adapters.registry import AdapterRecord
    from lora_whisper.cli import _figures

    rec = AdapterRecord(
        "ur-cv",
        2,
        "ur",
        {"hub_id": TINY_HUB_ID, "fingerprint": "x"},
        lora={"scope": "decoder", "r": 32},
        metrics={
            "train_clips": 1006,
            "contrast_clips": 600,
            "steps": 202,
            "evaluations": [
                {
                    "kind": "real",
                    "split": "dev",
                    "n": 155,
                    "before": {"wer": 0.709, "cer": 0.342},
                    "after": {"wer": 0.5, "cer": 0.2},
                }
            ],
            "step_seconds": {"encoder cache": 120.0, "fit": 600.0},
        },
        calibration={
            "threshold": 12.5,
            "score": "odds",
            "rule": "odds",
            "own": {"n": 73, "accepted": 70},
            "other": {"n": 650, "accepted": 0},
            "languages": ["fa", "hi"],
        },
        decoding={"beam_size": 5},
        active=True,
    )
    text = "\n".join(_figures(rec))
    assert "ur-cv@2: ur, decoder LoRA r=32" in text
    assert "1006 clips (+600 of other languages), 202 steps" in text
    assert "held out (real dev, 155 clips): WER 0.709 -> 0.500, CER 0.342 -> 0.200" in text
    assert "threshold 12.5; passes 70/73 of its own held-out clips and 0/650 clips of fa,hi" in text
    assert "decoding filed: beam_size=5" in text and "time: 720 s (encoder cache 120 s, fit 600 s)" in text
    bare = AdapterRecord("x", 1, "fr", {"hub_id": TINY_HUB_ID, "fingerprint": "x"}, active=True)
    assert _figures(bare)[-1].startswith("routing: uncalibrated")
