"""The same files through both runtimes (tiny random Whisper, float32): the engine's routing and rows are written
once, so routes, warnings, errors, durations and row fields agree, and the base's text starts the same; only the model
work differs."""

import pytest
from conftest import file_adapter

from lora_whisper.adapters.registry import Registry
from lora_whisper.transcribe.engine import FileError, TranscribeOptions, Transcription
from lora_whisper.transcribe.runtime import build_engine

OPTS = dict(max_new_tokens=8, temperature=(0.0,))  # a random tiny model fails every fallback check: stay greedy


@pytest.fixture()
def engines(tmp_path, tiny_model_dir, tiny_adapter_factory):
    reg = Registry(tmp_path / "adapters")
    fp = tiny_adapter_factory.fingerprint
    file_adapter(reg, tiny_adapter_factory("encoder+decoder", 1), "fr", "fr", fingerprint=fp)
    file_adapter(reg, tiny_adapter_factory("decoder", 3), "de", "de", fingerprint=fp, scope="decoder")
    return {kind: build_engine(str(tiny_model_dir), "none", "cpu", reg, runtime=kind) for kind in ("torch", "ct2")}


def _rows(engine, files, **opts):
    return list(engine.transcribe(files, TranscribeOptions(**OPTS, **opts)))


def test_both_runtimes_route_and_report_the_same(engines, wavs):
    files = [wavs["good"], wavs["empty"], wavs["good2"], wavs["text"], wavs["mp3"]]
    for opts in (dict(language="fr"), dict(language="de"), dict(language="fr", adapter="none")):
        torch_rows, ct2_rows = (_rows(engines[k], files, **opts) for k in ("torch", "ct2"))
        assert [type(r) for r in torch_rows] == [type(r) for r in ct2_rows]
        for t, c in zip(torch_rows, ct2_rows):
            if isinstance(t, FileError):
                assert t == c  # the same one-line error, naming the file
                continue
            assert isinstance(t, Transcription) and set(t.to_dict()) == set(c.to_dict())
            assert (t.file, t.language, t.adapter, t.route, t.duration, t.warnings, t.merged) == (
                c.file,
                c.language,
                c.adapter,
                c.route,
                c.duration,
                c.warnings,
                c.merged,
            )
            assert {s.adapter for s in t.segments} <= {t.adapter} and {s.adapter for s in c.segments} <= {c.adapter}
            if opts.get("adapter") == "none":
                # the base in float32, greedy, the same prompt: the first word agrees (after it, faster-whisper's and
                # transformers' long-form loops cut a random model's runaway windows at different places)
                assert t.text.split()[:1] == c.text.split()[:1] != []
    # an adapter that cannot load: the same warning and the same fallback to the base on both
    torch_rows, ct2_rows = (_rows(engines[k], [wavs["good"]], language="fr", adapter="nope") for k in ("torch", "ct2"))
    assert torch_rows[0].adapter is None and ct2_rows[0].adapter is None
    assert torch_rows[0].warnings == ct2_rows[0].warnings and torch_rows[0].route == ct2_rows[0].route


def test_both_runtimes_stream_segments_then_the_row(engines, wavs):
    for engine in engines.values():
        items = list(engine.stream(wavs["good"], TranscribeOptions(language="fr", **OPTS)))
        *segs, row = items
        assert isinstance(row, Transcription) and segs == row.segments and row.adapter == "fr@1"
        (err,) = engine.stream(wavs["missing"], TranscribeOptions(**OPTS))
        assert isinstance(err, FileError) and str(wavs["missing"]) in err.error
