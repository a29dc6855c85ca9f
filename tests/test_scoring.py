import pytest

from lora_whisper.scoring import normalize, score


def test_english_normalizer_spelling_and_numbers():
    assert normalize("Colour, Mr. Smith! It's twenty-one.", "en") == normalize("color mister smith it is 21", "en")


def test_basic_normalizer_for_other_languages():
    assert normalize("Bonjour, le Médecin !", "fr") == "bonjour le médecin"


def test_scores_raw_and_normalized():
    s = score(["Hello, world."], ["hello world"], "en")
    assert s.wer == 0 and s.wer_raw == 1.0 and s.cer_raw > 0 and s.n == 1
    s = score(["le patient a de la fièvre"], ["le patient a la fièvre"], "fr")
    assert s.wer == pytest.approx(1 / 6)


def test_chinese_scored_by_characters():
    s = score(["广州市房地产"], ["广州市房产"], "zh")
    assert s.cer == pytest.approx(1 / 6) and s.wer == pytest.approx(1 / 6)
