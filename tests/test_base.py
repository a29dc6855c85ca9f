import json

import numpy as np
import pytest
import torch

from lora_whisper.base.ct2 import CT2FormatError, import_ct2, parse_ct2_model
from lora_whisper.base.loading import BaseModelError, load_base, weights_fingerprint


def test_ct2_round_trip_matches_transformers(tiny_model_dir, tmp_path):
    """tiny HF model -> CTranslate2's own converter -> our importer -> same logits."""
    ct2 = pytest.importorskip("ctranslate2")
    from ctranslate2.converters import TransformersConverter
    from transformers import WhisperForConditionalGeneration

    ct2_dir = tmp_path / "ct2"
    TransformersConverter(str(tiny_model_dir), copy_files=["tokenizer.json"]).convert(
        str(ct2_dir), quantization="float32"
    )
    assert (ct2_dir / "model.bin").is_file() and ct2
    # the converter writes config.json; our importer needs tokenizer.json and lang ids as faster-whisper ships them
    cfg = json.loads((ct2_dir / "config.json").read_text())
    assert "lang_ids" in cfg
    out = import_ct2(ct2_dir, tmp_path / "hf", hub_id="test/roundtrip")
    a = WhisperForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    b = WhisperForConditionalGeneration.from_pretrained(out).eval()
    feats = torch.randn(1, 80, 3000)
    dec = torch.tensor([[50258, 50259, 50359]])
    with torch.no_grad():
        la = a(input_features=feats, decoder_input_ids=dec).logits
        lb = b(input_features=feats, decoder_input_ids=dec).logits
    assert torch.allclose(la, lb, atol=1e-4)
    assert weights_fingerprint(tiny_model_dir) == weights_fingerprint(out)
    assert json.loads((out / "lora_whisper_base.json").read_text())["hub_id"] == "test/roundtrip"


def test_ct2_parser_rejects_truncated_and_foreign(tmp_path):
    with pytest.raises(CT2FormatError, match="truncated"):
        parse_ct2_model(b"\x06\x00\x00\x00", "m.bin")
    bad = b"\x06\x00\x00\x00" + (8).to_bytes(2, "little") + b"BertSpe\x00"
    with pytest.raises(CT2FormatError, match="BertSpe"):
        parse_ct2_model(bad, "m.bin")


def test_import_ct2_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.bin"):
        import_ct2(tmp_path, tmp_path / "out")


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_load_base_frozen(tiny_model_dir, quantize):
    base = load_base(str(tiny_model_dir), quantize=quantize, device="cpu")
    assert not any(p.requires_grad for p in base.model.parameters())
    assert base.identity.hub_id == "test/tiny-whisper"
    assert base.identity.fingerprint.startswith("sha256:")
    assert "fr" in base.languages and len(base.languages) == 99
    if quantize == "int8":
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in base.model.modules())


def test_load_base_errors(tmp_path):
    with pytest.raises(BaseModelError, match="not a model folder"):
        load_base(str(tmp_path / "nope"))
    with pytest.raises(BaseModelError, match="quantize"):
        from lora_whisper.base.loading import load_model

        load_model(tmp_path, quantize="int4")


def test_fingerprint_independent_of_dtype(tiny_model_dir, tmp_path):
    from transformers import WhisperForConditionalGeneration

    m = WhisperForConditionalGeneration.from_pretrained(tiny_model_dir)
    # round through float16 as CTranslate2 does: same float16 values -> same fingerprint
    m.half().float().save_pretrained(tmp_path / "rounded")
    assert weights_fingerprint(tmp_path / "rounded") == weights_fingerprint(tiny_model_dir)
    with torch.no_grad():
        m.model.encoder.conv1.weight.add_(np.float32(0.5))
    m.save_pretrained(tmp_path / "changed")
    assert weights_fingerprint(tmp_path / "changed") != weights_fingerprint(tiny_model_dir)
