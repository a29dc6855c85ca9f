"""Routing, hot swap, LRU, merge, combine, mixed batches and export on the tiny Whisper with random LoRA adapters."""

import json
import shutil

import pytest
import torch
from conftest import file_adapter

from lora_whisper.adapters.registry import Registry
from lora_whisper.base.loading import load_base
from lora_whisper.transcribe.engine import Engine, TranscribeOptions


@pytest.fixture()
def reg(tmp_path, tiny_adapter_factory):
    r = Registry(tmp_path / "adapters")
    fp = tiny_adapter_factory.fingerprint
    file_adapter(r, tiny_adapter_factory("encoder+decoder", 1), "fr", "fr", fingerprint=fp)
    file_adapter(r, tiny_adapter_factory("encoder+decoder", 2), "fr-medical", "fr", "medical", fingerprint=fp)
    file_adapter(r, tiny_adapter_factory("decoder", 3), "de", "de", fingerprint=fp, scope="decoder")
    return r


@pytest.fixture(scope="module")
def fp32_base(tiny_model_dir):
    return load_base(str(tiny_model_dir), quantize="none", device="cpu")


def _texts(engine, files, **kw):
    kw.setdefault("max_new_tokens", 8)
    kw.setdefault("temperature", (0.0,))  # a random tiny model fails every fallback check: keep decoding greedy
    return list(engine.transcribe(files, TranscribeOptions(**kw)))


def test_routes_to_domain_language_or_base(fp32_base, reg, wavs):
    engine = Engine(fp32_base, reg)
    files = [wavs["good"], wavs["good2"]]
    base = _texts(engine, files, language="fr", adapter="none")
    med = _texts(engine, files, language="fr", domain="medical")
    lang = _texts(engine, files, language="fr")
    es = _texts(engine, files, language="es", domain="medical")
    assert [r.adapter for r in med] == ["fr-medical@1"] * 2 and [r.adapter for r in lang] == ["fr@1"] * 2
    assert [r.adapter for r in es] == [None, None] and [r.adapter for r in base] == [None, None]
    assert all(json.loads(json.dumps(r.to_dict()))["merged"] is False for r in med)
    assert [r.text for r in med] != [r.text for r in base]  # the adapter is really applied
    # swapping back to the base gives the base's output exactly (no leftover adapter)
    assert [r.text for r in _texts(engine, files, language="fr", adapter="none")] == [r.text for r in base]


def test_grouped_mixed_and_single_agree(fp32_base, reg, wavs):
    engine = Engine(fp32_base, reg)
    files = [wavs["good"], wavs["good2"], wavs["mp3"]] * 2
    # route per file through forced adapters: alternate by running per-segment with distinct forced refs
    singles = []
    for f, ref in zip(files, ["fr@1", "de@1", "none", "fr-medical@1", "fr@1", "de@1"]):
        singles += [r.text for r in _texts(engine, [f], adapter=ref, language="fr")]
    # the same mix in one call: the route comes from the language+domain policy, so build it from forced refs
    from lora_whisper.transcribe import engine as eng

    mixed, grouped = [], []
    rows_calls = []
    orig_rows = engine.pool.rows
    engine.pool.rows = lambda names: rows_calls.append(list(names)) or orig_rows(names)
    for batching, out in (("mixed", mixed), ("grouped", grouped)):
        refs = iter(["fr@1", "de@1", None, "fr-medical@1", "fr@1", "de@1"])
        orig = eng.decide

        def fake_route(probs, claims, records, request, _refs=refs):
            from lora_whisper.transcribe.routing import Route

            return Route("fr", None, next(_refs), "test")

        eng.decide = fake_route
        try:
            out += [r.text for r in _texts(engine, files, language="fr", batching=batching, batch_size=6)]
        finally:
            eng.decide = orig
    # the mixed path ran once, one batch holding rows of three adapters and the base
    assert rows_calls == [["fr@1", "de@1", "__base__", "fr-medical@1", "fr@1", "de@1"]]
    assert mixed == grouped == singles
    assert len(set(singles)) >= 3  # the adapters really differ, so a wrong row assignment would show


def test_merge_fp32_identical_int8_reported(fp32_base, tiny_model_dir, reg, wavs):
    files = [wavs["good"], wavs["good2"]]
    engine = Engine(fp32_base, reg)
    unmerged = _texts(engine, files, language="fr", domain="medical")
    merged = _texts(engine, files, language="fr", domain="medical", merge=True)
    assert [r.text for r in merged] == [r.text for r in unmerged]
    assert all(r.merged for r in merged) and not any(r.merged for r in unmerged)
    # unmerge restored the weights: unmerged output is unchanged afterwards
    assert [r.text for r in _texts(engine, files, language="fr", domain="medical")] == [r.text for r in unmerged]
    int8 = Engine(load_base(str(tiny_model_dir), quantize="int8", device="cpu"), reg)
    m8 = _texts(int8, files, language="fr", domain="medical", merge=True)
    assert all(r.merged and r.adapter == "fr-medical@1" for r in m8)
    # the 8-bit base merges into a float32 copy: its text is the float32 base's with the adapter, not the int8's
    assert [r.text for r in m8] == [r.text for r in unmerged]
    assert [r.text for r in _texts(int8, files, language="fr", adapter="none")] != [r.text for r in m8]


def test_combined_adapter_is_derived_and_cached(fp32_base, reg, wavs):
    engine = Engine(fp32_base, reg)
    res = _texts(engine, [wavs["good"]], language="fr", domain="medical", combine="cat")
    assert res[0].adapter == "fr@1+fr-medical@1" and "cat" in res[0].route
    keys = list(engine.resident)
    _texts(engine, [wavs["good"]], language="fr", domain="medical", combine="cat")
    assert list(engine.resident) == keys  # cached, not rebuilt
    lin = _texts(engine, [wavs["good"]], language="fr", domain="medical", combine="linear", combine_weights=(0.5, 0.5))
    assert lin[0].adapter == "fr@1+fr-medical@1"
    # each weighting is its own derived adapter (the cache key holds the weights), and each really changes the model
    import torch

    from lora_whisper.transcribe.audio import load_audio

    f = engine.features([load_audio(wavs["good"])])
    dec = torch.tensor([[50258, 50265, 50359]])

    def logits(key):
        with torch.inference_mode(), engine.pool.active(key):
            return engine.pool.peft(input_features=f, decoder_input_ids=dec).logits

    files = [wavs["good"], wavs["good2"]]
    lang_only = _texts(engine, files, language="fr")
    dom_only = _texts(engine, files, language="fr", domain="medical")
    assert [r.text for r in lang_only] != [r.text for r in dom_only]
    keys = []
    for w in ((1.0, 0.0), (0.0, 1.0)):
        (r,) = _texts(engine, [wavs["good"]], language="fr", domain="medical", combine="linear", combine_weights=w)
        keys.append(engine.pool.key_for(r.adapter, "linear", w))
        assert keys[-1] in engine.resident
    assert not torch.allclose(logits(keys[0]), logits(keys[1]), atol=1e-3)
    assert not torch.allclose(logits(keys[0]), logits(None), atol=1e-3)
    # cat of both is neither adapter alone
    assert res[0].text not in (lang_only[0].text, dom_only[0].text)


def test_more_adapters_in_one_run_than_the_cache_holds(fp32_base, reg, wavs, monkeypatch):
    from lora_whisper.transcribe import engine as eng
    from lora_whisper.transcribe.routing import Route

    files = [wavs["good"], wavs["good2"], wavs["mp3"]]
    refs = ["fr@1", "fr-medical@1", "de@1"]
    singles = [_texts(Engine(fp32_base, reg), [f], adapter=r, language="fr")[0].text for f, r in zip(files, refs)]
    it = iter(refs)
    monkeypatch.setattr(eng, "decide", lambda probs, claims, records, request: Route("fr", None, next(it), "test"))
    engine = Engine(fp32_base, reg, cache_size=1)
    res = _texts(engine, files, language="fr", batch_size=3)
    assert [r.adapter for r in res] == refs and [r.text for r in res] == singles
    assert len(engine.resident) == 1  # back to its size once the batch no longer pins them


def test_lru_cache_size(fp32_base, reg, wavs):
    engine = Engine(fp32_base, reg, cache_size=1)
    a = _texts(engine, [wavs["good"]], language="fr", domain="medical")[0].text
    _texts(engine, [wavs["good"]], language="de")
    assert list(engine.resident) == ["de@1"]
    assert _texts(engine, [wavs["good"]], language="fr", domain="medical")[0].text == a


def test_bad_adapters_warn_and_fall_back_to_base(fp32_base, reg, wavs, tiny_adapter_factory):
    base_text = _texts(Engine(fp32_base), [wavs["good"]], language="fr")[0].text
    # another base: fingerprint differs
    file_adapter(reg, tiny_adapter_factory("encoder+decoder", 4), "es", "es", fingerprint="sha256:other")
    # corrupt weights after filing
    file_adapter(
        reg, tiny_adapter_factory("encoder+decoder", 5), "pt", "pt", fingerprint=tiny_adapter_factory.fingerprint
    )
    w = reg.get("pt").path / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:-10])
    engine = Engine(fp32_base, reg)
    (es,) = _texts(engine, [wavs["good"]], language="es")
    assert es.adapter is None and "trained on base" in es.warnings[0] and "sha256:other" in es.warnings[0]
    (missing,) = _texts(engine, [wavs["good"]], language="fr", adapter="nope")
    assert missing.adapter is None and "not found" in missing.warnings[0] and missing.text == base_text
    (forced_pt,) = _texts(engine, [wavs["good"]], language="pt", adapter="pt")
    assert forced_pt.adapter is None and forced_pt.warnings  # corrupt: not listed, so not found -> base


def test_export_merged_and_ct2(tmp_path, tiny_model_dir, reg, wavs):
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    from lora_whisper.adapters.export import export_merged

    paths = export_merged(reg, "fr-medical", tmp_path / "exp", base=str(tiny_model_dir), ct2=True)
    merged = WhisperForConditionalGeneration.from_pretrained(paths[0]).eval()
    peft_model = PeftModel.from_pretrained(
        WhisperForConditionalGeneration.from_pretrained(tiny_model_dir), str(reg.get("fr-medical").path)
    ).eval()
    x, d = torch.randn(1, 80, 3000), torch.tensor([[50258, 50265]])
    with torch.no_grad():
        assert torch.allclose(
            merged(input_features=x, decoder_input_ids=d).logits,
            peft_model(input_features=x, decoder_input_ids=d).logits,
            atol=1e-4,
        )
    assert (paths[1] / "model.bin").is_file()
    fw = pytest.importorskip("faster_whisper")
    segments, info = fw.WhisperModel(str(paths[1]), device="cpu", compute_type="int8").transcribe(
        str(wavs["good"]), language="fr", max_new_tokens=4, without_timestamps=True
    )
    list(segments)
    assert info.language == "fr"
    shutil.rmtree(tmp_path / "exp")


def test_cli_merge_combine_and_domain_list(tiny_model_dir, reg, wavs):
    from click.testing import CliRunner

    from lora_whisper.cli import main

    def run(*extra):
        args = ["--base", str(tiny_model_dir), "--quantize", "none", "--registry", str(reg.root)]
        args += ["--runtime", "torch", "transcribe"]  # hot swap, merge, combine, mixed batches: the torch runtime
        res = CliRunner().invoke(
            main,
            [
                *args,
                "--temperature",
                "0",
                "--max-new-tokens",
                "8",
                "--format",
                "json",
                "--language",
                "fr",
                *extra,
                str(wavs["good"]),
            ],
        )
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    plain = run("--domain", "legal,medical")  # a comma list is tried in order: no legal adapter, then medical
    assert plain["adapter"] == "fr-medical@1" and plain["merged"] is False
    merged = run("--domain", "medical", "--merge")
    assert merged["adapter"] == "fr-medical@1" and merged["merged"] is True and merged["text"] == plain["text"]
    combined = run("--domain", "medical", "--combine", "linear", "--combine-weights", "0.5,0.5")
    assert combined["adapter"] == "fr@1+fr-medical@1" and "linear" in combined["route"]
    mixed = run("--domain", "medical", "--batching", "mixed", "--consult-below", "0")
    assert mixed["text"] == plain["text"]
    res = CliRunner().invoke(main, ["--registry", str(reg.root), "transcribe", "--combine-weights", "1", "x.wav"])
    assert res.exit_code == 2 and "--combine-weights '1': give two numbers" in res.stderr


def test_dynamic_int8_base_hot_swap_merge_and_mixed(tiny_model_dir, fp32_base, reg, wavs):
    """torch dynamic int8 base (CPU inference): peft wraps its layers, adapters change the text, merging agrees."""
    from peft.tuners.lora import Linear as LoraLinear

    from lora_whisper.base.int8 import DynamicInt8Linear

    dyn = load_base(str(tiny_model_dir), quantize="dynamic", device="cpu")
    assert isinstance(dyn.model.proj_out, DynamicInt8Linear)
    assert dyn.model.proj_out.weight is dyn.model.model.decoder.embed_tokens.weight  # tied weights stay tied
    # the int8 kernel is close to the float layer it came from
    lin = fp32_base.model.model.decoder.layers[0].fc1
    x = torch.randn(4, lin.in_features)
    with torch.inference_mode():
        ref, got = lin(x), DynamicInt8Linear.from_linear(lin)(x)
    assert (got - ref).abs().max() / ref.abs().max() < 0.05 and not torch.equal(got, ref)

    engine = Engine(dyn, reg)
    files = [wavs["good"], wavs["good2"]]
    base = _texts(engine, files, language="fr", adapter="none")
    med = _texts(engine, files, language="fr", domain="medical")
    assert [r.adapter for r in med] == ["fr-medical@1"] * 2
    assert [r.text for r in med] != [r.text for r in base]
    wrapped = [m for m in engine.pool.peft.modules() if isinstance(m, LoraLinear)]
    assert wrapped and all(isinstance(m.base_layer, DynamicInt8Linear) for m in wrapped)
    # the merged copy is quantized afresh from the merged float weights: same text as the hot-swapped adapter
    merged = _texts(engine, files, language="fr", domain="medical", merge=True)
    assert all(r.merged for r in merged) and [r.text for r in merged] == [r.text for r in med]
    assert isinstance(engine.pool._merged_cache[1].proj_out, DynamicInt8Linear)
    # back to the base: exactly the base's text (the float weights under the int8 kernels never changed)
    assert [r.text for r in _texts(engine, files, language="fr", adapter="none")] == [r.text for r in base]


def test_dynamic_int8_refuses_training_and_cuda(tiny_model_dir):
    from lora_whisper.base.int8 import DynamicInt8Linear
    from lora_whisper.base.loading import BaseModelError, load_model

    with pytest.raises(BaseModelError, match="CPU only"):
        load_model(tiny_model_dir, "dynamic", "cuda:0")
    layer = DynamicInt8Linear.from_linear(torch.nn.Linear(8, 4))
    with pytest.raises(RuntimeError, match="no backward"):
        layer(torch.randn(2, 8, requires_grad=True))
