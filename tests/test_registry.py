import json
import multiprocessing as mp
import os
import shutil

import pytest
from click.testing import CliRunner
from conftest import TINY_HUB_ID, file_adapter

from lora_whisper.registry import (
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


def _file_many(root, folder, n, q):
    from lora_whisper.registry import Registry

    try:
        for _ in range(n):
            file_adapter(Registry(root), folder, "fr-medical", "fr", "medical")
        q.put("ok")
    except Exception as e:  # pragma: no cover - reported to the parent
        q.put(repr(e))


def test_concurrent_filing_is_consistent(reg, tiny_adapter_factory):
    a = tiny_adapter_factory()
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_file_many, args=(reg.root, a, 5, q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [q.get(timeout=5) for _ in procs] == ["ok", "ok"]
    records, problems = reg.scan()
    assert problems == []
    assert sorted(r.version for r in records) == list(range(1, 11))
    assert sum(r.active for r in records) == 1
    assert not [p for p in os.listdir(reg.root) if p.startswith((".tmp", ".trash"))]


def test_cli_import_export_show_rm(reg, tiny_adapter_factory, tmp_path):
    from lora_whisper.cli import main

    runner = CliRunner()
    a = tiny_adapter_factory()
    base = ["--registry", str(reg.root)]
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
