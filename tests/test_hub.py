import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import TINY_HUB_ID, file_adapter
from hubserver import FakeHub

from lora_whisper.adapters.registry import Registry


@pytest.fixture()
def hub(monkeypatch):
    with FakeHub() as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.setenv("HF_TOKEN", h.token)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        import huggingface_hub.constants as c

        monkeypatch.setattr(c, "ENDPOINT", h.url)
        monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", h.url + "/{repo_id}/resolve/{revision}/{filename}")
        yield h


def test_push_then_plain_peft_loads_then_pull(hub, tmp_path, tiny_adapter_factory, tiny_model_dir, monkeypatch):
    from lora_whisper.cli import main

    reg = Registry(tmp_path / "a")
    file_adapter(
        reg,
        tiny_adapter_factory(),
        "fr-medical",
        "fr",
        "medical",
        fingerprint=tiny_adapter_factory.fingerprint,
        metrics={"before": {"wer": 0.9, "cer": 0.5}, "after": {"wer": 0.3, "cer": 0.1}},
        calibration={"threshold": 0.15, "margin": 1.1, "own": {"n": 60, "accepted": 51}, "other": {"n": 189}},
    )
    runner = CliRunner()
    res = runner.invoke(main, ["--registry", str(reg.root), "push", "fr-medical", "--repo", "tester/fr-medical"])
    assert res.exit_code == 0, res.output
    files = hub.repos["tester/fr-medical"]
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "lora_whisper.json"} <= set(files)
    card = files["README.md"].decode()
    for needle in (
        "library_name: peft",
        f"base_model: {TINY_HUB_ID}",
        "pipeline_tag: automatic-speech-recognition",
        "- fr",
        "model-index",
        "type: wer",
        "value: 0.3",
    ):
        assert needle in card, needle
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == TINY_HUB_ID

    # plain peft in a fresh process (no lora-whisper import), the Hub repo id given to from_pretrained
    script = f"""
import torch
from peft import PeftModel
from transformers import WhisperForConditionalGeneration
hub = PeftModel.from_pretrained(WhisperForConditionalGeneration.from_pretrained({str(tiny_model_dir)!r}), "tester/fr-medical")
local = PeftModel.from_pretrained(WhisperForConditionalGeneration.from_pretrained({str(tiny_model_dir)!r}), {str(reg.get("fr-medical").path)!r})
x, d = torch.randn(1, 80, 3000), torch.tensor([[50258]])
assert torch.equal(hub(input_features=x, decoder_input_ids=d).logits, local(input_features=x, decoder_input_ids=d).logits)
assert hub.peft_config["default"].base_model_name_or_path == {TINY_HUB_ID!r}
print("PLAIN_PEFT_OK")
"""
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": hub.token, "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert "PLAIN_PEFT_OK" in proc.stdout, proc.stderr[-2000:]

    other = Registry(tmp_path / "b")
    res = runner.invoke(
        main, ["--registry", str(other.root), "--base", str(tiny_model_dir), "pull", "tester/fr-medical"]
    )
    assert res.exit_code == 0, res.output
    rec = other.get("fr-medical")
    assert (rec.language, rec.domain, rec.source) == ("fr", "medical", "hf://tester/fr-medical")
    assert rec.metrics["after"]["wer"] == 0.3 and rec.base["fingerprint"] == tiny_adapter_factory.fingerprint
    # the routing threshold travels with it: the pulled adapter is routed by the same rule
    assert rec.calibration == reg.get("fr-medical").calibration and rec.calibration["threshold"] == 0.15


def test_pull_rejects_pickles_and_bad_names(hub, tmp_path, tiny_adapter_factory):
    from lora_whisper.adapters.hub import HubError, pull

    hub.repos["evil/pickled"] = {"adapter_config.json": b"{}", "adapter_model.bin": b"\x80\x04."}
    hub.commits["evil/pickled"] = "1" * 40
    reg = Registry(tmp_path / "r")
    with pytest.raises(HubError, match="pickled adapter_model.bin"):
        pull(reg, "evil/pickled")
    a = tiny_adapter_factory()
    meta = {"name": "../../escape", "version": 1, "language": "fr", "base": {"hub_id": TINY_HUB_ID}}
    hub.repos["evil/name"] = {
        "adapter_config.json": (a / "adapter_config.json").read_bytes(),
        "adapter_model.safetensors": (a / "adapter_model.safetensors").read_bytes(),
        "lora_whisper.json": json.dumps(meta).encode(),
    }
    hub.commits["evil/name"] = "2" * 40
    with pytest.raises(HubError, match="not allowed"):
        pull(reg, "evil/name")
    assert not (tmp_path / "escape").exists() and reg.list() == []


def test_push_without_token_fails_before_work(tmp_path, monkeypatch, tiny_adapter_factory):
    from lora_whisper.cli import main

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setattr(c, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf" / "stored_tokens"))
    res = CliRunner().invoke(main, ["--registry", str(tmp_path / "none"), "push", "x", "--repo", "u/x"])
    assert res.exit_code == 2 and "no Hugging Face token" in res.stderr


def test_card_reports_in_and_out_of_template_figures_and_inactive_status():
    from huggingface_hub.repocard import RepoCard

    from lora_whisper.adapters.hub import model_card
    from lora_whisper.adapters.registry import AdapterRecord

    ev = [
        {
            "kind": "synthetic-out-of-template",
            "split": "test-out",
            "n": 60,
            "before": {"wer": 1.2, "cer": 0.8},
            "after": {"wer": 0.7, "cer": 0.4},
        },
        {
            "kind": "synthetic-in-template",
            "split": "test",
            "n": 60,
            "before": {"wer": 1.1, "cer": 0.7},
            "after": {"wer": 0.2, "cer": 0.1},
        },
    ]
    rec = AdapterRecord(
        "fr-medical",
        3,
        "fr",
        {"hub_id": "openai/whisper-base", "fingerprint": "sha256:x"},
        domain="medical",
        metrics={
            "before": ev[0]["before"],
            "after": ev[0]["after"],
            "kind": ev[0]["kind"],
            "split": "test-out",
            "evaluations": ev,
        },
        inactive_reason="not better than the base on real dev",
    )
    card = model_card(rec, "user/fr-medical")
    assert "| synthetic-out-of-template | test-out | 60 | WER | 1.200 | 0.700 |" in card
    assert "| synthetic-in-template | test | 60 | WER | 1.100 | 0.200 |" in card
    assert "never used in training" in card and "**Inactive**: not better than the base on real dev" in card
    meta = RepoCard(card).data.to_dict()
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"]["split"] == "test-out" and result["metrics"][0]["value"] == 0.7


def test_card_model_index_has_base_and_adapter_figures_and_the_routing_threshold():
    from huggingface_hub.repocard import RepoCard

    from lora_whisper.adapters.hub import model_card
    from lora_whisper.adapters.registry import AdapterRecord

    cal = {
        "threshold": 0.2113,
        "margin": 1.1,
        "own": {"n": 64, "accepted": 60},
        "other": {"n": 189, "accepted": 0, "max_score": 0.1921},
        "languages": ["de", "en", "es"],
    }
    rec = AdapterRecord(
        "fa-commonvoice",
        1,
        "fa",
        {"hub_id": "openai/whisper-base", "fingerprint": "sha256:x"},
        metrics={
            "before": {"wer": 1.0, "cer": 0.42},
            "after": {"wer": 0.6, "cer": 0.2},
            "kind": "real",
            "split": "dev",
        },
        calibration=cal,
    )
    card = model_card(rec, "user/fa-commonvoice")
    metrics = RepoCard(card).data.to_dict()["model-index"][0]["results"][0]["metrics"]
    got = {(m["name"], m["value"]) for m in metrics}
    assert {("WER (adapter)", 0.6), ("CER (adapter)", 0.2)} <= got
    assert {
        ("WER (base openai/whisper-base, no adapter)", 1.0),
        ("CER (base openai/whisper-base, no adapter)", 0.42),
    } <= got
    assert ">= 0.2113" in card and "189 clips" in card and "60 of\n64" in card.replace("60 of 64", "60 of\n64")
    assert "--keep-failed" not in card  # no decoding section without the field
    rec.decoding = {"drop_failed": True}
    assert "left out of the text" in model_card(rec, "user/fa-commonvoice")
    assert "beam search" not in model_card(rec, "user/fa-commonvoice")
    rec.decoding = {"drop_failed": True, "beam_size": 5}
    card = model_card(rec, "user/fa-commonvoice")
    assert "beam search of width 5" in card and "left out of the text" in card
