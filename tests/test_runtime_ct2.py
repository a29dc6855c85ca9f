"""The CTranslate2 runtime on the tiny random Whisper: decode equal to faster-whisper on the same converted folder,
compiled adapters (cache hit, rebuild after re-filing, concurrent compiles), torch-only options, no torch import."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import file_adapter, file_keep_and_drop

from lora_whisper.adapters.compile import COMPILED_DIR, compile_adapter, find_compiled, list_compiled
from lora_whisper.adapters.registry import Registry
from lora_whisper.transcribe.engine import TranscribeOptions
from lora_whisper.transcribe.runtime import TorchOnlyError, build_engine, resolve_runtime
from lora_whisper.transcribe.runtime_ct2 import fw_options, load_ct2_base

OPTS = dict(max_new_tokens=8, temperature=(0.0,))  # a random tiny model fails every fallback check: stay greedy


@pytest.fixture()
def reg(tmp_path, tiny_adapter_factory):
    r = Registry(tmp_path / "adapters")
    fp = tiny_adapter_factory.fingerprint
    file_adapter(r, tiny_adapter_factory("encoder+decoder", 1), "fr", "fr", fingerprint=fp)
    file_adapter(r, tiny_adapter_factory("decoder", 3), "de", "de", fingerprint=fp, scope="decoder")
    return r


@pytest.fixture()
def engine(tiny_model_dir, reg):
    return build_engine(str(tiny_model_dir), "auto", "cpu", reg, cache_size=1, runtime="ct2")


def _fw(folder, audio, language, **opts):
    from faster_whisper import WhisperModel

    model = WhisperModel(str(folder), device="cpu", compute_type="int8")
    segments, _ = model.transcribe(audio, **fw_options(TranscribeOptions(**opts), language))
    return " ".join(s.text.strip() for s in segments if s.text.strip())


def test_auto_runtime_is_ct2_on_cpu_and_torch_for_torch_only_options():
    assert resolve_runtime("auto", "cpu") == "ct2" and resolve_runtime("auto", "cuda:0") == "torch"
    assert resolve_runtime("auto", "cpu", TranscribeOptions(merge=True)) == "torch"
    assert resolve_runtime("ct2", "cuda") == "ct2"


def test_decode_equals_faster_whisper_on_the_converted_folder(engine, wavs):
    from lora_whisper.transcribe.audio import load_audio

    assert engine.runtime.kind == "ct2" and engine.base.languages
    files = [wavs["good"], wavs["mp3"]]
    results = list(engine.transcribe(files, TranscribeOptions(language="fr", adapter="none", **OPTS)))
    for f, r in zip(files, results):
        want = _fw(engine.runtime.base.ct2_path, load_audio(f), "fr", **OPTS)
        assert r.text == want and r.adapter is None and r.language == "fr"
        assert {"file", "text", "language", "language_probability", "adapter", "merged"} <= set(r.to_dict())
    # detection: the base's probabilities, restricted and renormalised over candidates
    (det,) = engine.detect([wavs["good"]], TranscribeOptions(languages=["fr", "de"], adapter="none"))
    assert set(det.languages) == {"fr", "de"} and abs(sum(det.languages.values()) - 1) < 1e-5
    # errors are rows, as on torch
    bad = list(engine.transcribe([wavs["empty"]], TranscribeOptions(**OPTS)))
    assert bad[0].error.endswith("empty file")


def test_routed_adapter_is_compiled_once_and_decodes_as_the_compiled_folder(engine, reg, wavs):
    from lora_whisper.transcribe.audio import load_audio

    (r,) = engine.transcribe([wavs["good"]], TranscribeOptions(language="fr", **OPTS))
    assert r.adapter == "fr@1" and r.segments and all(s.adapter == "fr@1" for s in r.segments)
    rec = reg.get("fr")
    (c,) = list_compiled(rec)
    assert c.path.parent.parent.name == COMPILED_DIR and c.path.parent.name == "v1"
    assert not any(p.suffix in (".pt", ".pkl", ".pth") for p in c.path.rglob("*"))
    assert r.text == _fw(c.path, load_audio(wavs["good"]), "fr", **OPTS)
    (base,) = engine.transcribe([wavs["good"]], TranscribeOptions(language="fr", adapter="none", **OPTS))
    assert base.text != r.text  # the adapter is really applied
    # cache size 1: a second adapter evicts the first; both still work
    (d,) = engine.transcribe([wavs["good"]], TranscribeOptions(language="de", **OPTS))
    assert d.adapter == "de@1" and list(engine.runtime.models) == ["de@1"] == list(engine.resident)
    assert engine.runtime.stats["evictions"] == 1 and engine.runtime.stats["compiles"] == 2


def test_compile_cache_hit_rebuild_after_refiling(tiny_model_dir, reg, tiny_adapter_factory):
    b = load_ct2_base(str(tiny_model_dir), "auto", "cpu")
    rec = reg.get("fr")
    first = compile_adapter(rec, b.path, b.identity.to_dict(), tokenizer_from=b.ct2_path)
    again = compile_adapter(rec, b.path, b.identity.to_dict(), tokenizer_from=b.ct2_path)
    assert first.built and not again.built and again.path == first.path
    assert json.loads((first.path / "lora_whisper_compiled.json").read_text())["adapter"] == "fr@1"
    # re-filed: same name and version number, other weights -> another key, built again, the stale build dropped
    reg.remove("fr")
    file_adapter(
        reg, tiny_adapter_factory("encoder+decoder", 7), "fr", "fr", fingerprint=tiny_adapter_factory.fingerprint
    )
    rec2 = reg.get("fr")
    assert rec2.version == 1 and find_compiled(rec2, b.identity.fingerprint, "int8") is None
    third = compile_adapter(rec2, b.path, b.identity.to_dict(), tokenizer_from=b.ct2_path)
    assert third.built and third.key != first.key and third.path.is_dir()
    assert reg.get("fr").ref == "fr@1"  # the registry still reads the version (compiled copies are beside it)
    reg.remove("de@1")
    assert [r.ref for r in reg.list()] == ["fr@1"]


def test_two_concurrent_compiles_leave_one_good_copy(tiny_model_dir, reg):
    """Two processes (and two threads) compile the same adapter at once: one copy, both use it."""
    b = load_ct2_base(str(tiny_model_dir), "auto", "cpu")
    rec = reg.get("de")
    code = f"""
from lora_whisper.adapters.registry import Registry
from lora_whisper.adapters.compile import compile_adapter
rec = Registry({str(reg.root)!r}).get("de")
c = compile_adapter(rec, {str(b.path)!r}, {b.identity.to_dict()!r}, tokenizer_from={str(b.ct2_path)!r})
print(c.path, c.built)
"""
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0][0] == outs[1][0]
    path = Path(outs[0][0])
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # one copy, no temporary folder left
    assert (path / "model.bin").is_file() and (path / "tokenizer.json").is_file()
    threads_out = []
    threads = [
        threading.Thread(
            target=lambda: threads_out.append(
                compile_adapter(rec, b.path, b.identity.to_dict(), tokenizer_from=b.ct2_path)
            )
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [c.path for c in threads_out] == [path, path] and not any(c.built for c in threads_out)


def test_torch_only_option_on_ct2_is_one_clear_line(tiny_model_dir, reg, wavs, engine):
    from click.testing import CliRunner

    from lora_whisper.cli import main

    with pytest.raises(TorchOnlyError, match="--merge needs the torch runtime.*--runtime torch"):
        list(engine.transcribe([wavs["good"]], TranscribeOptions(merge=True)))
    for extra in (["--merge"], ["--batching", "mixed"], ["--combine", "linear", "--domain", "medical"]):
        args = ["--base", str(tiny_model_dir), "--registry", str(reg.root), "--runtime", "ct2", "transcribe"]
        res = CliRunner().invoke(main, [*args, *extra, str(wavs["good"])])
        assert res.exit_code == 2, res.output
        (line,) = res.stderr.strip().splitlines()
        assert line.startswith(f"error: {extra[0]}") and "use --runtime torch" in line


def test_cli_compile_and_list(tiny_model_dir, reg):
    from click.testing import CliRunner

    from lora_whisper.cli import main

    g = ["--base", str(tiny_model_dir), "--registry", str(reg.root)]
    res = CliRunner().invoke(main, [*g, "adapters", "list"])
    assert res.exit_code == 0 and "threshold" in res.stdout and "compiled" in res.stdout
    res = CliRunner().invoke(main, [*g, "adapters", "compile", "de@1"])
    assert res.exit_code == 0, res.output
    assert "de@1\tint8\tcompiled in" in res.stdout
    res = CliRunner().invoke(main, [*g, "adapters", "compile", "de"])
    assert "already compiled" in res.stdout
    rows = {line.split()[0]: line for line in CliRunner().invoke(main, [*g, "adapters", "list"]).stdout.splitlines()}
    assert " int8 " in rows["de"] and " int8 " not in rows["fr"]


def test_compiled_ct2_run_imports_neither_torch_nor_transformers(tiny_model_dir, reg, wavs, engine):
    list(engine.transcribe([wavs["good"]], TranscribeOptions(language="fr", **OPTS)))  # compiles fr@1 (torch, once)
    code = f"""
import sys
from click.testing import CliRunner
from lora_whisper.cli import main
res = CliRunner().invoke(main, ["--base", {str(tiny_model_dir)!r}, "--registry", {str(reg.root)!r}, "--device", "cpu",
    "transcribe", "--language", "fr", "--temperature", "0", "--max-new-tokens", "8", "--format", "json",
    {str(wavs["good"])!r}])
assert res.exit_code == 0, res.output
print(res.stdout.strip())
print("LOADED", [m for m in ("torch", "transformers", "peft") if m in sys.modules])
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), timeout=300
    )
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout.splitlines()[0])
    assert row["adapter"] == "fr@1"
    assert out.stdout.splitlines()[-1] == "LOADED []"


@pytest.mark.integration
def test_real_base_ct2_text_equals_faster_whisper(cache_dir):
    """The packaged whisper-base on three real clips: the ct2 runtime's text is faster-whisper int8's exactly."""
    from conftest import AUDIO

    from lora_whisper.transcribe.audio import load_audio

    files = [AUDIO / n for n in ("jfk_inaugural.wav", "fleurs-fr-000.wav", "fleurs-de-000.wav")]
    engine = build_engine("offline", "auto", "cpu", None, runtime="ct2")
    results = list(engine.transcribe(files, TranscribeOptions(adapter="none")))
    assert [r.language for r in results] == ["en", "fr", "de"]
    for f, r in zip(files, results):
        assert r.text == _fw(engine.runtime.base.ct2_path, load_audio(f), None, adapter="none")


def test_word_timestamps_vad_and_batched_long_form_run_on_ct2(engine, wavs):
    (w,) = engine.transcribe(
        [wavs["good"]], TranscribeOptions(language="fr", adapter="none", word_timestamps=True, **OPTS)
    )
    words = [x for s in w.segments for x in (s.words or [])]
    assert words and all(s.start <= x.start <= x.end <= s.end for s in w.segments for x in s.words)
    (v,) = engine.transcribe([wavs["silence"]], TranscribeOptions(vad=True, adapter="none", **OPTS))
    assert v.text == "" and v.route == "no speech found (VAD)"
    (b,) = engine.transcribe(
        [wavs["good"]], TranscribeOptions(long_form="batched", language="fr", adapter="none", **OPTS)
    )
    assert b.duration == 2.0 and b.language == "fr"


def test_server_on_ct2_equals_the_engine(engine, wavs):
    from test_server import running

    from lora_whisper.serve.app import ServeOptions  # noqa: F401 - the server module loads without torch on ct2

    files = [wavs["good"], wavs["good2"]]
    cases = [("auto", {}), ("fr", {"language": "fr"}), ("base", {"language": "de"})]
    want = {}
    for model, extra in cases:
        o = TranscribeOptions(adapter={"base": "none"}.get(model, model), language=extra.get("language"), **OPTS)
        want[model] = [r.text for r in engine.transcribe(files, o)]
    import httpx2 as httpx

    with running(engine, defaults=dict(OPTS)) as (url, _app):
        for model, extra in cases:
            got = []
            for f in files:
                r = httpx.post(
                    url + "/v1/audio/transcriptions",
                    files={"file": (f.name, f.read_bytes())},
                    data={"model": model, **extra},
                    timeout=120,
                )
                assert r.status_code == 200, r.text
                got.append(r.json()["text"])
            assert got == want[model], model


def test_consulted_detection_asks_the_compiled_adapters(engine, reg, wavs):
    (r,) = engine.transcribe([wavs["good"]], TranscribeOptions(consult_below=1.0, threshold=0.0, **OPTS))
    assert engine.runtime.stats["compiles"] == 2  # every candidate adapter was compiled to score its language
    assert r.adapter in (None, "fr@1", "de@1") and r.route


def test_a_decoder_only_adapters_detection_reuses_the_bases_encoder_output(engine, wavs):
    """The base's detection and a decoder-only adapter's share one encoder pass (their compiled encoders are the
    same weights), and give what faster-whisper's own detect_language gives on each model; an encoder+decoder
    adapter encodes with its own encoder."""
    from lora_whisper.transcribe.audio import load_audio

    rt = engine.runtime
    audio = load_audio(wavs["good"])
    calls = []
    encode = rt.model.encode
    rt.model.encode = lambda f: calls.append(1) or encode(f)
    base, de = rt.detect(audio, None), rt.detect(audio, None, "de@1")
    assert len(calls) == 1 and de != base  # the adapter's own decoder ran on the base's encoder output
    rt.detect(audio, None, "fr@1")  # encoder+decoder: its own encoder
    assert len(calls) == 1
    for probs, model in ((base, rt.model), (de, rt.model_for("de@1"))):
        _, _, want = model.detect_language(audio=audio[: 30 * 16000])
        want = {k: v for k, v in want if k in rt.languages}
        assert probs == pytest.approx({k: v / sum(want.values()) for k, v in want.items()}, abs=1e-6)


def test_torch_runtime_speaks_the_same_interface(tiny_base, wavs):
    from lora_whisper.transcribe.audio import load_audio
    from lora_whisper.transcribe.runtime import TorchRuntime

    rt = TorchRuntime(tiny_base)
    audio = load_audio(wavs["good"])
    probs = rt.detect(audio, ["fr", "de"])
    assert set(probs) == {"fr", "de"} and abs(sum(probs.values()) - 1) < 1e-5
    rows = list(rt.decode(audio, "fr", TranscribeOptions(**OPTS)))
    assert all({"start", "end", "text"} <= set(x) for x in rows)


def test_bad_device_is_one_line_on_ct2(tiny_model_dir, wavs):
    from click.testing import CliRunner

    from lora_whisper.cli import main

    args = ["--base", str(tiny_model_dir), "--device", "tpu", "--runtime", "ct2", "transcribe", str(wavs["good"])]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "device 'tpu' is not one of" in res.stderr


def test_a_model_with_fewer_positions_than_whisper_decodes_without_a_limit_given(engine, wavs):
    """The tiny model has 64 decoder positions, faster-whisper assumes 448: the runtime tells it (no crash)."""
    assert engine.runtime.base.max_length == 64
    (r,) = engine.transcribe([wavs["good"]], TranscribeOptions(language="fr", adapter="none", temperature=(0.0,)))
    assert r.duration == 2.0


def test_workers_decode_files_at_once_in_input_order_with_the_same_rows(tiny_model_dir, reg, wavs, engine):
    """--workers 2: two files decode at once on two model replicas; the rows (text, routes, errors) and their order
    are those of one worker, with adapters of two languages routed in the same list."""
    files = [wavs["good"], wavs["empty"], wavs["mp3"], wavs["good2"], wavs["missing"], wavs["good"]]
    two = build_engine(str(tiny_model_dir), "auto", "cpu", reg, cache_size=2, runtime="ct2", workers=2)
    assert two.runtime.workers == 2 and two.runtime.model.model.num_workers == 2

    def rows(eng):
        out = []
        for lang in ("fr", "de"):
            res = list(eng.transcribe(files, TranscribeOptions(language=lang, **OPTS)))
            out += [
                (r.file, getattr(r, "error", None), getattr(r, "text", None), getattr(r, "adapter", None)) for r in res
            ]
        return out

    one, par = rows(engine), rows(two)
    assert par == one
    assert {a for *_, a in par if a} == {"fr@1", "de@1"} and sum(e is not None for _, e, *_ in par) == 4


def test_adapter_filed_with_drop_failed_leaves_out_windows_that_failed_every_temperature(
    tiny_model_dir, tmp_path, tiny_adapter_factory, wavs
):
    from dataclasses import asdict

    from lora_whisper.transcribe.segments import failed_window

    r = Registry(tmp_path / "adapters")
    file_keep_and_drop(r, tiny_adapter_factory, "de", "de2", "de", seed=3)
    assert r.get("de2").decoding == {"drop_failed": True}  # the registry field round-trips
    engine = build_engine(str(tiny_model_dir), "auto", "cpu", r, runtime="ct2")
    opts = TranscribeOptions(language="de", **OPTS)
    (kept,) = engine.transcribe([wavs["good"]], TranscribeOptions(language="de", adapter="de", **OPTS))
    # the random tiny model fails the log-prob check on every window: the premise of what follows
    assert kept.text and kept.segments and all(failed_window(asdict(s), opts) for s in kept.segments)
    (dropped,) = engine.transcribe([wavs["good"]], TranscribeOptions(language="de", adapter="de2", **OPTS))
    assert dropped.adapter == "de2@1" and dropped.text == "" and dropped.segments == []
    # the run's own option wins over the record, both ways
    (forced,) = engine.transcribe(
        [wavs["good"]], TranscribeOptions(language="de", adapter="de2", drop_failed=False, **OPTS)
    )
    assert forced.text == kept.text
    (base,) = engine.transcribe([wavs["good"]], TranscribeOptions(language="de", adapter="none", **OPTS))
    assert base.text  # the base keeps such windows, as Whisper does
    (none,) = engine.transcribe(
        [wavs["good"]], TranscribeOptions(language="de", adapter="none", drop_failed=True, **OPTS)
    )
    assert none.text == ""


def test_adapter_filed_with_a_beam_size_is_decoded_with_it_unless_the_run_says_otherwise(
    tiny_model_dir, tmp_path, tiny_adapter_factory, wavs
):
    r = Registry(tmp_path / "adapters")
    folder = tiny_adapter_factory("decoder", 3)
    fp = tiny_adapter_factory.fingerprint
    file_adapter(r, folder, "de", "de", fingerprint=fp, scope="decoder")
    file_adapter(r, folder, "deb", "de", fingerprint=fp, scope="decoder", decoding={"beam_size": 4})
    assert r.get("deb").decoding == {"beam_size": 4}  # the registry field round-trips
    engine = build_engine(str(tiny_model_dir), "auto", "cpu", r, runtime="ct2")
    opts = dict(language="de", max_new_tokens=24, temperature=(0.0,))

    def text(adapter, **kw):
        (res,) = engine.transcribe([wavs["good"]], TranscribeOptions(adapter=adapter, **opts, **kw))
        assert res.adapter == f"{adapter}@1"
        return res.text, [round(s.avg_logprob, 4) for s in res.segments]  # same text, other log-prob: compare both

    greedy, beam = text("de"), text("de", beam_size=4)
    # the premise: on this random model, beam search finds a more probable output than greedy
    assert beam[1][0] > greedy[1][0]
    assert text("deb") == beam  # the record's beam size, without asking
    assert text("deb", beam_size=1) == greedy  # the run's own option wins
    assert engine.decoding_for(None, TranscribeOptions()).beam_size == 1  # the base: greedy
    assert engine.decoding_for("deb", TranscribeOptions()).beam_size == 4
