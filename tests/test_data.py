import json

import numpy as np
import pytest
import soundfile as sf

from lora_whisper.train.data import DataError, load_folder, load_manifest, rows_from_dataset, validate


@pytest.fixture()
def clips(tmp_path, wavs):
    long = tmp_path / "long.wav"
    sf.write(long, 0.1 * np.sin(np.arange(16000 * 31) / 10).astype(np.float32), 16000)
    return {"good": wavs["good"].name, "text": wavs["text"].name, "long": long.name, "mp3": wavs["mp3"].name}


def test_manifest_bad_rows_are_named_and_skipped(tmp_path, clips, tiny_base):
    rows = [
        {"audio": clips["good"], "text": "bonjour"},
        {"audio": "nowhere.wav", "text": "absent"},
        {"audio": clips["text"], "text": "pas du son"},
        {"audio": clips["good"], "text": "  "},
        {"audio": clips["long"], "text": "trop long"},
        {"audio": clips["mp3"], "text": "mp3 stéréo"},
    ]
    m = tmp_path / "m.jsonl"
    m.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    loaded = validate(load_manifest(m, language="fr"), tiny_base.processor.tokenizer)
    assert [e.text for e in loaded.examples] == ["bonjour", "mp3 stéréo"]
    reasons = {r.id: r.reason for r in loaded.rejected}
    assert "no such file" in reasons["m.jsonl:2"] and "nowhere.wav" in reasons["m.jsonl:2"]
    assert "cannot decode" in reasons["m.jsonl:3"]
    assert reasons["m.jsonl:4"] == "empty transcript"
    assert "over 30 s" in reasons["m.jsonl:5"]
    assert "not valid JSON" in reasons["m.jsonl:7"]
    assert all(isinstance(e.audio, np.ndarray) and e.language == "fr" for e in loaded.examples)


def test_wrong_column_is_named(tmp_path, clips):
    m = tmp_path / "m.csv"
    m.write_text(f"path,sentence\n{clips['good']},bonjour\n")
    with pytest.raises(DataError, match="no column 'audio'; columns are \\['path', 'sentence'\\]"):
        load_manifest(m)
    assert load_manifest(m, "path", "sentence").examples[0].text == "bonjour"


def test_audiofolder(tmp_path, clips):
    (tmp_path / "metadata.csv").write_text(f"file_name,transcription\n{clips['good']},bonjour\n{clips['mp3']},salut\n")
    loaded = load_folder(tmp_path, language="fr")
    assert [e.text for e in loaded.examples] == ["bonjour", "salut"]
    with pytest.raises(DataError, match="metadata.csv"):
        load_folder(tmp_path / "empty_dir_missing")


def test_hub_style_dataset_rows(wavs):
    """The rows a Hub data set yields (Audio(decode=False): bytes or path), through a local `datasets` data set."""
    import datasets

    ds = datasets.Dataset.from_dict(
        {
            "audio": [
                {"bytes": wavs["good"].read_bytes(), "path": None},
                {"bytes": None, "path": str(wavs["mp3"])},
                {"bytes": b"garbage", "path": None},
            ],
            "sentence": ["un", "deux", "trois"],
        }
    )
    loaded = rows_from_dataset(ds, "local/ds", "audio", "sentence", "fr", None)
    assert [e.text for e in loaded.examples] == ["un", "deux"]
    assert loaded.rejected[0].id == "local/ds:2" and "unreadable audio" in loaded.rejected[0].reason
    with pytest.raises(DataError, match="no column 'text'"):
        rows_from_dataset(ds, "local/ds", "audio", "text", "fr", None)


def test_synthetic_speech_both_backends(tmp_path):
    import shutil

    from lora_whisper.train.synth import TRAIN_VARIANTS, Voice, speak, synthesize, voices_for

    v = Voice("fr+m3", 160, 50)
    lib = speak("Le patient tousse.", v, "library")
    assert 0.5 < len(lib) / 16000 < 5 and np.abs(lib).max() > 0.05
    if shutil.which("espeak-ng"):
        cli = speak("Le patient tousse.", v, "cli")
        assert 0.5 < len(cli) / 16000 < 5
    voices = voices_for("fr", TRAIN_VARIANTS, (140, 180), (35, 65), 3, 0)
    assert len({x.key() for x in voices}) == 3
    ex = synthesize(["Bonjour.", "Au revoir."], "fr", voices, tmp_path, noise_snr_db=20)
    assert [e.text for e in ex] == ["Bonjour.", "Au revoir."] and all(e.language == "fr" for e in ex)
    mtime = ex[0].audio.stat().st_mtime_ns
    assert synthesize(["Bonjour."], "fr", voices, tmp_path, noise_snr_db=20)[0].audio.stat().st_mtime_ns == mtime


def test_manifest_splits_and_speakers(tmp_path, clips):
    from lora_whisper.train.data import DataError, hold_out_speakers, load_manifest

    rows = []
    for i in range(30):
        spk = "big" if i < 12 else f"s{i % 6}"
        rows.append(
            {"audio": clips["good"], "text": f"t{i}", "split": "dev" if i % 10 == 9 else "train", "speaker": spk}
        )
    m = tmp_path / "m.jsonl"
    m.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    train = load_manifest(m, split="train", split_column="split", speaker_column="speaker")
    dev = load_manifest(m, split="dev", split_column="split", speaker_column="speaker")
    assert len(train.examples) == 27 and len(dev.examples) == 3
    assert {e.text for e in train.examples}.isdisjoint(e.text for e in dev.examples)
    with pytest.raises(DataError, match="no rows with split='test'; splits are \\['dev', 'train'\\]"):
        load_manifest(m, split="test", split_column="split")
    with pytest.raises(DataError, match="no column 'spk'"):
        load_manifest(m, speaker_column="spk")
    tr, val = hold_out_speakers(train.examples, 5, seed=0)
    assert len(tr) + len(val) == 27 and len(val) >= 5
    val_spk = {e.speaker for e in val}
    assert "big" not in val_spk  # a speaker with over a tenth of the data stays in training
    assert val_spk.isdisjoint(e.speaker for e in tr)  # whole speakers
    assert hold_out_speakers(train.examples, 5, seed=0)[1] == val  # seeded: a resume agrees
    assert hold_out_speakers(train.examples, 0)[1] == []


def test_shipped_contrast_and_calibration_clips_are_disjoint():
    """recipes/contrast-tts: contrast (trained on), calibration (routing negatives) and the benchmark's synthetic
    probe share no sentence and no voice variant; the real English contrast clips are no calibration clip; every
    row decodes."""
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    sys.path.insert(0, str(root / "benchmarks"))
    from bench_fa import ESPEAK_SENTENCES

    from lora_whisper.train.synth import TEST_VARIANTS

    tts = root / "recipes" / "contrast-tts"
    train = validate(load_manifest(tts / "manifest.jsonl")).examples
    cal = validate(load_manifest(tts / "calibration.jsonl")).examples
    assert len(train) == 240 and len(cal) == 36  # nothing skipped: every clip decodes
    assert {"ar", "ur", "tr"} <= {e.language for e in cal} and "fa" not in {e.language for e in train + cal}
    bench = {s for texts in ESPEAK_SENTENCES.values() for s in texts}
    texts = [{e.text for e in train}, {e.text for e in cal}, bench]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])

    def variants(path):
        return {json.loads(line)["speaker"].split("+")[1].split("-s")[0] for line in open(path, encoding="utf-8")}

    v_train, v_cal = variants(tts / "manifest.jsonl"), variants(tts / "calibration.jsonl")
    assert not (v_train & v_cal) and not (v_train & set(TEST_VARIANTS)) and not (v_cal & set(TEST_VARIANTS))
    real = root / "recipes" / "contrast"
    contrast = {json.loads(line)["audio"] for line in open(real / "manifest.jsonl")}
    calibration = {json.loads(line)["audio"] for line in open(root / "recipes" / "calibration" / "manifest.jsonl")}
    assert len(contrast) == 96 and not (contrast & calibration)
