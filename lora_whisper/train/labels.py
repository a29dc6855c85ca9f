"""Training targets: Whisper's label ids (timestamped or not), contrast clips' language-only labels, the collator, and
the data set whose rows become features (or cached encoder output) + labels on access."""

from __future__ import annotations

from ..base.loading import Base
from .cache import perturb_speed
from .data import Example


def timestamp_token(tokenizer, seconds: float) -> int:
    """The id of Whisper's ``<|x.xx|>`` timestamp token nearest to ``seconds`` (20 ms grid, 0-30 s)."""
    t = min(max(round(seconds / 0.02) * 0.02, 0.0), 30.0)
    tid = tokenizer.convert_tokens_to_ids(f"<|{t:.2f}|>")
    if tid is None or tid == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no timestamp token <|{t:.2f}|>")
    return tid


def label_ids(tokenizer, example: Example, language: str, timestamped: bool) -> list[int]:
    """Whisper's training target for one clip.

    ``<|sot|><|lang|><|transcribe|><|notimestamps|> text<|eot|>``, or, when ``timestamped`` (the clip knows its speech
    span: synthetic speech), ``<|sot|><|lang|><|transcribe|><|start|> text<|end|><|eot|>`` with the span's times, the
    segment format Whisper's long-form decoding predicts. Mixing both keeps an adapter's timestamp prediction
    (training on ``<|notimestamps|>`` only can break it: transformers #30148).
    """
    if not timestamped:
        tokenizer.set_prefix_tokens(language=language, task="transcribe", predict_timestamps=False)
        return tokenizer(example.text).input_ids
    from .synth import speech_span

    start, end = speech_span(example.load())
    tokenizer.set_prefix_tokens(language=language, task="transcribe", predict_timestamps=True)
    prefix = tokenizer("", add_special_tokens=True).input_ids[:-1]  # sot, lang, task (no eot)
    text = tokenizer(" " + example.text.strip(), add_special_tokens=False).input_ids
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    tokenizer.set_prefix_tokens(language=language, task="transcribe", predict_timestamps=False)
    return prefix + [timestamp_token(tokenizer, start)] + text + [timestamp_token(tokenizer, end), eot]


def language_label(tokenizer, language: str) -> list[int]:
    """A contrast clip's target: ``<|sot|><|lang|>`` only (its language, nothing of its words)."""
    tokenizer.set_prefix_tokens(language=language, task="transcribe", predict_timestamps=False)
    return tokenizer("", add_special_tokens=True).input_ids[:2]


def timestamped_rows(examples: list[Example], fraction: float, seed: int) -> set[int]:
    """Indices of the examples that get timestamped labels: ``fraction`` of those that know their times, seeded."""
    import random

    timed = [i for i, e in enumerate(examples) if e.timed]
    k = round(fraction * len(timed))
    return set(random.Random(seed).sample(timed, k)) if k else set()


class Collator:
    """Pads label ids with -100 and drops the leading <|startoftranscript|> (the model prepends it when shifting).

    With ``time_mask`` > 0 (decoder-only SpecAugment), spans of 10 cached encoder frames are zeroed so that about
    that fraction of each clip's frames is masked; ``seed`` makes the masks reproducible.
    """

    def __init__(self, sot: int, time_mask: float = 0.0, seed: int = 0):
        self.sot = sot
        self.time_mask = time_mask
        import random

        self.rng = random.Random(seed)

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        labels = [r["labels"] for r in rows]
        if all(lab[0] == self.sot for lab in labels):
            labels = [lab[1:] for lab in labels]
        width = max(len(lab) for lab in labels)
        padded = torch.full((len(labels), width), -100, dtype=torch.long)
        for i, lab in enumerate(labels):
            padded[i, : len(lab)] = torch.tensor(lab)
        batch = {"labels": padded}
        if "encoder_hidden" in rows[0]:
            hidden = torch.stack([torch.as_tensor(r["encoder_hidden"]) for r in rows]).float()
            if self.time_mask > 0:
                frames, span = hidden.shape[1], 10
                for row in hidden:
                    for _ in range(int(self.time_mask * frames / span)):
                        s0 = self.rng.randrange(0, max(1, frames - span))
                        row[s0 : s0 + span] = 0
            batch["encoder_outputs"] = (hidden,)
        else:
            batch["input_features"] = torch.stack([torch.as_tensor(r["input_features"]) for r in rows])
        return batch


def make_dataset(
    base: Base,
    examples: list[Example],
    language: str,
    encoder_hidden=None,
    timestamped: set[int] | None = None,
    speed_perturb: tuple[float, float] | None = None,
    seed: int = 0,
    contrast: int = 0,
):
    """A ``datasets.Dataset`` whose rows become log-mel features (or cached encoder output) + label ids on access.

    Rows in ``timestamped`` get timestamped labels; with ``speed_perturb`` every access resamples the clip by a
    random factor in that range (timestamped rows excepted: their times would no longer hold). The last
    ``contrast`` examples are other languages' clips, labelled with their language token only (``language_label``).
    """
    import random

    import datasets

    tok = base.processor.tokenizer
    timestamped = timestamped or set()
    own = len(examples) - contrast
    labels = [label_ids(tok, e, language, i in timestamped) for i, e in enumerate(examples[:own])]
    labels += [language_label(tok, e.language) for e in examples[own:]]
    ds = datasets.Dataset.from_dict({"idx": list(range(len(examples))), "labels": labels})
    fe = base.processor.feature_extractor
    audio = [e.audio for e in examples]
    rng = random.Random(seed)

    def transform(batch):
        out = {"labels": batch["labels"]}
        if encoder_hidden is not None:
            out["encoder_hidden"] = [encoder_hidden[i] for i in batch["idx"]]
        else:
            clips = [audio[i] for i in batch["idx"]]
            if speed_perturb:
                clips = [
                    c if i in timestamped else perturb_speed(c, rng.uniform(*speed_perturb))
                    for i, c in zip(batch["idx"], clips)
                ]
            out["input_features"] = list(fe(clips, sampling_rate=16000, return_tensors="pt").input_features)
        return out

    return ds.with_transform(transform)
