"""Decoding: log-mel features, the encoder, language probabilities, and Whisper's decoding with timestamps.

Generation is transformers' own ``WhisperForConditionalGeneration.generate`` (timestamp tokens, sequential long-form,
conditioning on previous text, temperature fallback on compression ratio / average log-prob / no-speech): nothing of
Whisper's algorithm is written again here. What this module adds is what that method does not return: each window's
decoding statistics (average log-prob, compression ratio, no-speech probability, final temperature) and words with
times from the alignment heads, plus bounded blocks so memory stays flat however long the file is.
"""

from __future__ import annotations

import contextlib
import logging
import zlib

import numpy as np

from .audio import SAMPLE_RATE

# the rows and options every runtime shares live in ``segments`` (no torch there, so the ct2 runtime can use them)
from .segments import (  # noqa: F401 - re-exported: callers import them from here
    BLOCK_SECONDS,
    TASKS,
    TEMPERATURES,
    WINDOW_SECONDS,
    DecodeOptions,
    Piece,
    Segment,
    Word,
)

logger = logging.getLogger("lora_whisper")


def text_compression_ratio(text: str) -> float:
    """openai-whisper's compression ratio: bytes of the text over bytes of its zlib compression."""
    b = text.encode("utf-8")
    return len(b) / len(zlib.compress(b)) if b else 0.0


# transformers measures the compression ratio on token ids packed as bytes, not on the text (its docs suggest 1.35
# where openai-whisper uses 2.4 on text); we take Whisper's text threshold from the user and scale it to transformers'
# measure so the familiar default keeps its meaning.
_TOKEN_RATIO_PER_TEXT_RATIO = 1.35 / 2.4


def log_mel_chunked(fe, audio: np.ndarray, chunk_seconds: float = WINDOW_SECONDS):
    """The log-mel features of ``fe`` (a WhisperFeatureExtractor) for a long block, computed 30 s at a time.

    Written by hand because the feature extractor computes the whole block's STFT at once (its float temporaries
    for a 240 s block peak at ~150 MB, against ~25 MB here); the steps are its ``_torch_extract_fbank_features``
    (Hann-windowed, centred STFT, |.|^2 without the last frame, mel filters, log10, clamp to max - 8, (x + 4) / 4)
    and the result matches it (tests/test_decoding.py). Each chunk is read with 3 hops of context on each side, so
    every kept frame sees the same samples as in one STFT over the block; the clamp uses the block's maximum.
    """
    import torch

    hop, n = fe.hop_length, len(audio)
    frames = n // hop
    margin = 3 * hop  # >= n_fft / 2: a kept frame's window never reaches the chunk's padded edge
    step = int(chunk_seconds * SAMPLE_RATE) // hop * hop
    window = torch.hann_window(fe.n_fft)
    filters = torch.from_numpy(fe.mel_filters).to(torch.float32).T
    wav = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    out = torch.empty(filters.shape[0], frames)
    for start in range(0, frames * hop, step):
        lo, hi = max(0, start - margin), min(n, start + step + margin)
        stft = torch.stft(wav[lo:hi], fe.n_fft, hop, window=window, return_complex=True)
        mel = filters @ (stft[..., :-1].abs() ** 2).contiguous()
        first, last = start // hop, min(frames, (start + step) // hop)
        skip = (start - lo) // hop
        out[:, first:last] = torch.clamp(mel[:, skip : skip + last - first], min=1e-10).log10()
    out = torch.maximum(out, out.max() - 8.0)
    return (out + 4.0) / 4.0


def zero_padded_features(fe, audio: np.ndarray):
    """The log-mel of a clip of at most 30 s computed on the clip alone, then padded with zero frames to 30 s, as
    openai-whisper's ``transcribe()`` and faster-whisper feed Whisper (transformers pads the audio instead; it
    does this only for the last window of a long file, so there is no switch for it to call)."""
    import torch

    n_fft = fe.n_fft
    clip = audio if len(audio) > n_fft else np.pad(audio, (0, n_fft + 1 - len(audio)))
    f = fe([clip], sampling_rate=SAMPLE_RATE, padding="longest", truncation=False, return_tensors="pt")
    f = f.input_features[0, :, : fe.nb_max_frames]
    return torch.nn.functional.pad(f, (0, fe.nb_max_frames - f.shape[-1]))


class Decoder:
    """The decoding steps on one base (and, for merged adapters, on a separate merged model)."""

    def __init__(self, base):
        self.base = base
        tok = base.processor.tokenizer
        self.tokenizer = tok
        self.sot = tok.convert_tokens_to_ids("<|startoftranscript|>")
        self.dtype = base.model.model.encoder.conv1.weight.dtype
        self.multilingual = bool(base.languages)

    # ---- features, encoder, language ------------------------------------------------------------------------
    padding = "features"
    """How a clip under 30 s is brought to Whisper's 30 s input: ``features`` computes the log-mel of the clip alone
    and pads it with zero frames (openai-whisper's ``transcribe()`` and faster-whisper), ``audio`` pads the samples
    with silence before the log-mel (transformers' feature extractor: the padding frames are the log-mel of
    silence). Measured on real speech (docs/runtime.md, ``benchmarks/bench_padding.py``): the same WER, and the
    torch runtime's text equals faster-whisper's far more often with ``features`` (151/156 against 105/156 on
    Common Voice English), so both runtimes read a clip the same way. Training keeps ``audio``, transformers'
    fine-tuning convention, on which every adapter here was trained."""

    def features(self, audios: list[np.ndarray]):
        """Log-mel features of clips of at most 30 s, padded to 30 s (Whisper's input)."""
        import torch

        fe = self.base.processor.feature_extractor
        if self.padding == "features":
            f = torch.stack([zero_padded_features(fe, a) for a in audios])
        else:
            f = fe(audios, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        return f.to(self.base.device, self.dtype)

    def long_features(self, audio: np.ndarray):
        """Un-truncated features and attention mask of one block for transformers' sequential long-form decoding."""
        import torch

        fe = self.base.processor.feature_extractor
        if len(audio) <= WINDOW_SECONDS * SAMPLE_RATE and self.padding == "features":
            features = zero_padded_features(fe, audio)[None]
            # the mask marks the clip's own frames, as the feature extractor's does: generate seeks within them
            mask = torch.zeros(1, features.shape[-1], dtype=torch.long)
            mask[:, : min(len(audio) // fe.hop_length, features.shape[-1])] = 1
            return features.to(self.base.device, self.dtype), mask.to(self.base.device)
        if len(audio) <= WINDOW_SECONDS * SAMPLE_RATE or fe.dither != 0.0:
            # a block under 30 s: Whisper's input is always 30 s, padded
            kw = {} if len(audio) <= WINDOW_SECONDS * SAMPLE_RATE else {"truncation": False, "padding": "longest"}
            inp = fe([audio], sampling_rate=SAMPLE_RATE, return_attention_mask=True, return_tensors="pt", **kw)
            return inp.input_features.to(self.base.device, self.dtype), inp.attention_mask.to(self.base.device)
        features = log_mel_chunked(fe, audio)[None]
        mask = torch.ones(1, features.shape[-1], dtype=torch.long)
        return features.to(self.base.device, self.dtype), mask.to(self.base.device)

    def encode(self, features, model=None):
        import torch

        model = model or self.base.model
        with torch.inference_mode():
            return model.model.encoder(features.to(model.model.encoder.conv1.weight.dtype)).last_hidden_state

    def language_probs(self, encoded, candidates: list[str] | None = None, model=None) -> list[dict[str, float]]:
        """Language probabilities from one decoder step on encoder output.

        Written by hand because transformers' ``detect_language`` returns only the argmax token, and Whisper's own
        method (openai/whisper decoding.detect_language) is exactly this: softmax of the logits after
        <|startoftranscript|>, over the language tokens.
        """
        import torch

        langs = self.base.languages
        if not langs:
            return [{} for _ in range(len(encoded))]
        names = [c for c in (candidates or langs) if c in langs] or list(langs)
        ids = torch.tensor([langs[c] for c in names], device=encoded.device)
        start = torch.full((len(encoded), 1), self.sot, device=encoded.device)
        with torch.inference_mode():
            logits = (model or self.base.model)(encoder_outputs=(encoded,), decoder_input_ids=start).logits[:, -1]
        probs = logits.float()[:, ids].softmax(-1).cpu().numpy()
        return [dict(sorted(zip(names, map(float, row)), key=lambda kv: -kv[1])) for row in probs]

    # ---- generation ---------------------------------------------------------------------------------------------
    def _kwargs(self, options: DecodeOptions, languages, fallback: bool = True) -> dict:
        if options.task not in TASKS:
            raise ValueError(f"task {options.task!r} is not one of {list(TASKS)}")
        temps = tuple(options.temperature) if fallback else tuple(options.temperature)[:1]
        kw = dict(
            return_timestamps=True,
            return_segments=True,
            condition_on_prev_tokens=options.condition_on_previous_text,
            temperature=temps if len(temps) > 1 else temps[0],
            num_beams=options.beam_size or 1,
            # the checks only matter when there is a hotter temperature to fall back to
            compression_ratio_threshold=(
                options.compression_ratio_threshold * _TOKEN_RATIO_PER_TEXT_RATIO
                if (options.compression_ratio_threshold and len(temps) > 1)
                else None
            ),
            logprob_threshold=options.logprob_threshold,
            no_speech_threshold=options.no_speech_threshold if options.logprob_threshold is not None else None,
        )
        if temps[0] > 0:
            kw["do_sample"] = True
        # the prompt (previous text: up to half the context) and 4 start tokens share the decoder's context; without
        # a limit, transformers' generate runs to its 448-token max_length, and a window that loops (a language the
        # base reads poorly) costs twice openai-whisper's, at every fallback temperature
        ctx = self.base.model.config.max_target_positions
        kw["max_new_tokens"] = min(options.max_new_tokens or ctx, ctx - ctx // 2 - 4)
        if options.word_timestamps:
            if not getattr(self.base.model.generation_config, "alignment_heads", None):
                raise ValueError("word timestamps need the base's alignment heads (generation_config.alignment_heads)")
            kw["return_token_timestamps"] = True
        if self.multilingual:
            kw["task"] = options.task
            langs = list(languages)
            kw["language"] = langs if len(set(langs)) > 1 else langs[0]
        return kw

    @property
    def max_prompt_tokens(self) -> int:
        """The prompt takes at most half of the decoder's context, as in Whisper (223 tokens for whisper-base)."""
        return self.base.model.config.max_target_positions // 2 - 1

    def prompt_tokens(self, text: str | None) -> list[int]:
        """The token ids of a text prompt (without ``<|startofprev|>``)."""
        if not text or not text.strip():
            return []
        return [int(t) for t in self.tokenizer.get_prompt_ids(" " + text.strip())[1:]]

    def _prompt_ids(self, prompt: str | list[int] | None):
        """``<|startofprev|>`` + the prompt's newest ``max_prompt_tokens`` tokens, as in Whisper. The prompt is text
        (``--initial-prompt``) or the tokens decoded before (timestamp tokens included), as Whisper conditions each
        window on the tokens before it."""
        import torch

        tokens = prompt if isinstance(prompt, list) else self.prompt_tokens(prompt)
        if not tokens:
            return None
        ids = [self.tokenizer.convert_tokens_to_ids("<|startofprev|>"), *tokens[-self.max_prompt_tokens :]]
        return torch.tensor(ids, device=self.base.device)

    @contextlib.contextmanager
    def _generation(self, model, features=None, encoded=None):
        """Install the hooks for one generate call; undo transformers' switch to eager attention (word timestamps)."""
        _install_stats_hook(model)
        cache = _install_encoder_cache(model)
        cache.clear()
        if features is not None and encoded is not None:
            cache.prime(features, encoded)
        cache.enabled = True
        head = _install_prompt_logits_skip(model, self.tokenizer.convert_tokens_to_ids("<|startoftranscript|>"))
        head.enabled = SKIP_PROMPT_LOGITS
        attn = model.config._attn_implementation
        try:
            yield
        finally:
            cache.enabled = False
            head.enabled = False
            cache.clear()
            if model.config._attn_implementation != attn:
                model.config._attn_implementation = attn

    def generate(
        self,
        languages: list[str | None],
        options: DecodeOptions,
        *,
        features=None,
        attention_mask=None,
        encoded=None,
        model=None,
        prompt: str | None = None,
        fallback: bool = True,
    ) -> list[list[dict]]:
        """Decode a batch (rows of at most 30 s, or one long block) and return, per row, raw segments:
        dicts with start/end (seconds in the row), text, tokens, words and the window's statistics."""
        import torch

        model = model or self.base.model
        kw = self._kwargs(options, languages, fallback)
        model._lora_whisper_keep_scores = bool(options.word_timestamps)
        prompt_ids = self._prompt_ids(prompt)
        if prompt_ids is not None:
            kw["prompt_ids"] = prompt_ids
        features = features.to(model.model.encoder.conv1.weight.dtype)
        # features are always given (transformers' no-speech check runs the model on them); ``encoded`` (the
        # encoder output the caller computed for language detection) is reused instead of a second encoder pass
        # temperature fallback samples: a fixed seed per call makes a run reproducible without touching the
        # caller's random state
        with torch.inference_mode(), self._generation(model, features, encoded), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            out = model.generate(features, attention_mask=attention_mask, **kw)
        rows = out["segments"] if isinstance(out, dict) else [[] for _ in languages]
        return [[self._raw(seg, lang) for seg in row] for row, lang in zip(rows, languages)]

    def _raw(self, seg: dict, language: str | None) -> dict:
        tokens = [int(t) for t in seg["tokens"].tolist()]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        stats = (seg.get("result") or {}).get("lora_whisper_stats", {}) if isinstance(seg.get("result"), dict) else {}
        raw = {
            "start": float(seg["start"]),
            "end": float(seg["end"]),
            "text": text.strip(),
            "avg_logprob": stats.get("avg_logprob"),
            "no_speech_prob": stats.get("no_speech_prob"),
            "temperature": stats.get("temperature"),
            "compression_ratio": text_compression_ratio(text.strip()),
            "words": None,
            "window": id(seg.get("result")),  # segments of one decoding window share its output
            "tokens": tokens,  # text and timestamp tokens, the next block's prompt
        }
        if seg.get("token_timestamps") is not None:
            raw["words"] = self._words(tokens, seg["token_timestamps"], seg, language)
        return raw

    def _words(self, tokens: list[int], times, seg: dict, language: str | None) -> list[dict]:
        """Group tokens into words (transformers' Whisper tokenizer helper: spaces, or characters for zh/ja/th...)."""
        from transformers.models.whisper.tokenization_whisper import _combine_tokens_into_words

        times = [float(t) for t in times.tolist()]
        probs = _token_probs(seg, tokens)
        eot = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        text_idx = [i for i, t in enumerate(tokens) if t < eot]
        if not text_idx:
            return []
        text_tokens = [tokens[i] for i in text_idx]
        words, _word_tokens, indices = _combine_tokens_into_words(self.tokenizer, text_tokens, language or "english")
        out = []
        start0, end0 = float(seg["start"]), float(seg["end"])
        for w, idx in zip(words, indices):
            if not w.strip():
                continue
            first, last = text_idx[idx[0]], text_idx[idx[-1]]
            # token_timestamps[i] is the time token i starts; a word ends where the token after it starts
            s = times[first] if first < len(times) else start0
            e = times[last + 1] if last + 1 < len(times) else times[min(last, len(times) - 1)]
            p = float(np.mean([probs[text_idx[i]] for i in idx])) if probs else None
            # cross-attention times can fall outside the segment the timestamp tokens gave: keep words inside it
            s = min(max(s, start0), end0)
            e = min(max(e, s), end0)
            out.append({"start": round(s, 2), "end": round(e, 2), "word": w, "probability": p})
        return out


def _token_probs(seg: dict, tokens: list[int]) -> list[float] | None:
    result = seg.get("result")
    if not isinstance(result, dict) or result.get("scores") is None:
        return None
    import torch

    lo, _hi = seg["idxs"]  # indices into result["sequences"], which start with the prompt tokens
    scores = result["scores"]  # one per generated token
    lo -= len(result["sequences"]) - len(scores)
    probs = []
    for k, t in enumerate(tokens):
        i = lo + k
        if i >= len(scores):
            probs.append(float("nan"))
            continue
        probs.append(float(torch.softmax(scores[i].float(), -1)[t]))
    return probs


def _install_stats_hook(model) -> None:
    """Record each decoded window's statistics next to its output.

    transformers computes the average log-prob and the no-speech probability inside ``_need_fallback`` to decide on
    temperature fallback, but does not return them; Whisper users expect them on every segment. We wrap that method
    on the model instance (once) and store what it used in the window's output dict, which every segment of that
    window references as ``segment["result"]``.
    """
    if getattr(model, "_lora_whisper_hooked", False):
        return
    from transformers.models.whisper.generation_whisper import WhisperNoSpeechDetection, _get_attr_from_logit_processors

    orig = model._need_fallback

    def need_fallback(seek_sequence, seek_outputs, index, logits_processor, generation_config, vocab_size, temperature):
        res = orig(seek_sequence, seek_outputs, index, logits_processor, generation_config, vocab_size, temperature)
        out = seek_outputs[index]
        if isinstance(out, dict):
            stats = {"temperature": float(temperature or 0.0)}
            try:
                if out.get("sequences_scores") is not None:
                    stats["avg_logprob"] = float(out["sequences_scores"])
                elif out.get("scores") is not None:
                    stats["avg_logprob"] = float(
                        model._retrieve_avg_logprobs(out["scores"], seek_sequence, temperature)
                    )
                nsp = _get_attr_from_logit_processors(logits_processor, WhisperNoSpeechDetection, "no_speech_prob")
                if nsp is not None:
                    stats["no_speech_prob"] = float(nsp[index])
            except Exception:  # noqa: BLE001 - statistics are informative; never break decoding for them
                pass
            out["lora_whisper_stats"] = stats
            if not getattr(model, "_lora_whisper_keep_scores", True):
                # the window's per-token scores (vocabulary-sized, ~200 KB a token) were only needed for the checks
                # above; every segment keeps its window's output until the whole block is decoded, so without this
                # a 240 s block holds ~100 MB of them. Kept for word timestamps (word probabilities).
                out.pop("scores", None)
        return res

    model._need_fallback = need_fallback
    model._lora_whisper_hooked = True


class _EncoderCache:
    """Encoder outputs of the current generate call, found by the features they came from."""

    def __init__(self):
        self.enabled = False
        self.items: list = []

    def clear(self):
        self.items = []

    def prime(self, features, encoded):
        from transformers.modeling_outputs import BaseModelOutput

        self.items = [(features.clone(), BaseModelOutput(last_hidden_state=encoded))]

    def find(self, x):
        import torch

        # by value, against a copy: transformers may refill the same tensor with the next window's features
        for f, out in self.items:
            if f.shape == x.shape and f.dtype == x.dtype and torch.equal(f, x):
                return out
        return None


def _install_encoder_cache(model) -> _EncoderCache:
    """Run the encoder once per window.

    Inside one ``generate`` call transformers runs the encoder on a window, then its no-speech detector
    (WhisperNoSpeechDetection) runs the whole model on the same window again, encoder included; and for clips we
    already encoded for language detection. Equal features give equal encoder outputs while the active adapter does
    not change, which holds within one generate call (the cache is emptied before and after each).
    """
    enc = model.model.encoder
    cache = getattr(enc, "_lora_whisper_cache", None)
    if cache is not None:
        return cache
    cache = _EncoderCache()
    orig = enc.forward

    def forward(input_features=None, *args, **kwargs):
        if cache.enabled and input_features is not None and not args:
            hit = cache.find(input_features)
            if hit is not None:
                return hit
            out = orig(input_features, **kwargs)
            cache.items = [*cache.items[-1:], (input_features.clone(), out)]
            return out
        return orig(input_features, *args, **kwargs)

    enc.forward = forward
    enc._lora_whisper_cache = cache
    return cache


SKIP_PROMPT_LOGITS = True
"""Leave the prompt's rows of the output head uncomputed while generating (see _install_prompt_logits_skip)."""


class _PromptLogitsSkip:
    """State of the output-head hook: on during generate only; the prompt positions of the current decoder call."""

    def __init__(self):
        self.enabled = False
        self.skip = 0
        self.rows_skipped = 0


def _install_prompt_logits_skip(model, sot: int) -> _PromptLogitsSkip:
    """Compute no vocabulary logits for the previous-text prompt's positions while generating.

    With ``condition_on_prev_tokens`` every window's first decoder call carries up to 224 prompt tokens, and the
    output head turns each into a vocabulary-sized row (51,865 floats: ~47 MB a call for a full prompt); transformers'
    no-speech detector runs a second such call. Nothing reads those rows: generate takes the last position's logits,
    the no-speech detector the ``<|startoftranscript|>`` position's. transformers' ``logits_to_keep`` does this for
    decoder-only models, but WhisperForConditionalGeneration does not accept it, hence this hook: the head's output
    keeps its shape, rows before ``<|startoftranscript|>`` are left unwritten (``torch.empty``: never-touched pages
    cost no memory), and the rows from it on are computed as before. Off outside generate (training reads every row).
    Measured: it removes the growth of the peak over a long file's first windows (the prompt filling up).
    """
    import torch

    decoder, head = model.model.decoder, model.proj_out
    state = getattr(head, "_lora_whisper_skip", None)
    if state is not None:
        return state
    state = _PromptLogitsSkip()

    def before_decoder(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        state.skip = 0
        if state.enabled and ids is not None and ids.dim() == 2 and ids.shape[1] > 1:
            at_sot = ids == sot
            if bool(at_sot.any(dim=1).all()):
                state.skip = int(at_sot.int().argmax(dim=1).min())

    orig = head.forward

    def forward(hidden):
        k, state.skip = state.skip, 0
        if not state.enabled or k <= 0 or hidden.dim() != 3 or hidden.shape[1] <= k:
            return orig(hidden)
        rows = orig(hidden[:, k:])
        state.rows_skipped += k * hidden.shape[0]
        out = torch.empty(hidden.shape[0], hidden.shape[1], rows.shape[-1], dtype=rows.dtype, device=rows.device)
        out[:, k:] = rows
        return out

    decoder.register_forward_pre_hook(before_decoder, with_kwargs=True)
    head.forward = forward
    head._lora_whisper_skip = state
    return state


def _cache_suppress_masks() -> None:
    """Make transformers' token-suppression processors compute their vocabulary mask once, not at every step.

    SuppressTokensLogitsProcessor and SuppressTokensAtBeginLogitsProcessor rebuild ``torch.isin(arange(vocab),
    tokens)`` for every generated token; on a 2-core CPU that took 15-350 ms a token (OpenMP under load), more than
    the whole whisper-base decoder step. Same mask, same result: it is only kept on the processor instance.
    """
    import torch
    from transformers.generation import logits_process as lp

    if getattr(lp.SuppressTokensLogitsProcessor, "_lora_whisper_cached", False):
        return

    def mask(self, tokens, scores):
        key = (scores.shape[-1], scores.device)
        cached = getattr(self, "_lw_mask", None)
        if cached is None or cached[0] != key:
            m = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
            t = tokens.to(scores.device)
            m[t[(t >= 0) & (t < scores.shape[-1])]] = True
            self._lw_mask = cached = (key, m)
        return cached[1]

    def suppress(self, input_ids, scores):
        return torch.where(mask(self, self.suppress_tokens, scores), -float("inf"), scores)

    def suppress_at_begin(self, input_ids, scores):
        if input_ids.shape[-1] == self.begin_index:
            return torch.where(mask(self, self.begin_suppress_tokens, scores), -float("inf"), scores)
        return scores

    lp.SuppressTokensLogitsProcessor.__call__ = suppress
    lp.SuppressTokensAtBeginLogitsProcessor.__call__ = suppress_at_begin
    lp.SuppressTokensLogitsProcessor._lora_whisper_cached = True


_cache_suppress_masks()
