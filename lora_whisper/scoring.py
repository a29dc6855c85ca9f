"""WER and CER, raw and normalized with Whisper's text normalizers.

jiwer computes the edit distances (it is what ``evaluate``'s "wer"/"cer" metrics wrap; ``evaluate.load`` would fetch
the metric's code from the Hub at run time, which is remote code and impossible offline). The normalizers are
Whisper's own, as shipped in transformers; the English spelling table comes from the whisper-normalizer package.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

CHARACTER_LANGUAGES = {"zh", "ja", "ko", "th", "yue", "my", "lo", "km", "bo"}
"""Languages written without spaces between words: scored by characters (CER is the headline)."""


@functools.cache
def _english_normalizer():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    mapping = {}
    try:
        import whisper_normalizer

        f = Path(whisper_normalizer.__file__).parent / "normalizers" / "english.json"
        mapping = json.loads(f.read_text())
    except (ImportError, OSError):
        pass
    return EnglishTextNormalizer(mapping)


@functools.cache
def _basic_normalizer(split_letters: bool):
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return BasicTextNormalizer(split_letters=split_letters)


def normalize(text: str, language: str | None) -> str:
    """Whisper's normalization: English normalizer for en, basic for others, split letters for zh/ja/ko/th."""
    if language == "en":
        return _english_normalizer()(text).strip()
    return _basic_normalizer(language in CHARACTER_LANGUAGES)(text).strip()


@dataclass
class Score:
    """Error rates over a set of (reference, hypothesis) pairs."""

    n: int
    """Number of utterances scored."""
    wer: float
    """Word error rate on normalized text (the headline number)."""
    cer: float
    """Character error rate on normalized text."""
    wer_raw: float
    """Word error rate on the text as written (case and punctuation count)."""
    cer_raw: float
    """Character error rate on the text as written."""

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _rates(refs: list[str], hyps: list[str], by_chars: bool) -> tuple[float, float]:
    import jiwer

    pairs = [(r, h) for r, h in zip(refs, hyps) if r.strip()]
    if not pairs:
        return float("nan"), float("nan")
    r, h = [p[0] for p in pairs], [p[1] for p in pairs]
    if by_chars:
        # no word boundaries: WER on characters equals CER; keep both fields meaningful.
        r_words = [" ".join(x.replace(" ", "")) for x in r]
        h_words = [" ".join(x.replace(" ", "")) or "" for x in h]
        w = jiwer.wer(r_words, h_words)
        return float(w), float(jiwer.cer([x.replace(" ", "") for x in r], [x.replace(" ", "") for x in h]))
    else:
        w = jiwer.wer(r, h)
    return float(w), float(jiwer.cer(r, h))


def score(refs: list[str], hyps: list[str], language: str | None) -> Score:
    """Score hypotheses against references in one language (``None``: basic normalizer)."""
    chars = language in CHARACTER_LANGUAGES
    wer_raw, cer_raw = _rates(refs, hyps, chars)
    nr = [normalize(t, language) for t in refs]
    nh = [normalize(t, language) for t in hyps]
    wer, cer = _rates(nr, nh, chars)
    return Score(n=len(refs), wer=wer, cer=cer, wer_raw=wer_raw, cer_raw=cer_raw)
