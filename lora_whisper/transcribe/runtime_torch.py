"""The torch runtime: transformers' Whisper on the base (``Decoder``), peft adapters in an ``AdapterPool``.

How it walks inputs: inputs of at most 30 s (or VAD pieces in ``batched`` mode, or per-segment routing) are cut into
units and decoded in batches (``_transcribe_short``: features and the base's encoder output once per unit, reused by
detection, consulting and decoding); longer ones are read in 240 s blocks and decoded with Whisper's sequential
long-form algorithm (``_transcribe_long`` / ``_decode_block``: previous-text prompt across blocks, the last window of a
block decoded again with the next). Decoding is grouped by adapter, or in mixed-adapter batches, or on a merged copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from ..adapters.registry import AdapterRecord
from .audio import SAMPLE_RATE, AudioError
from .options import TranscribeOptions
from .pool import adapter_key
from .results import FileError, Transcription
from .runtime_protocol import Router, check_runtime_options
from .segments import DecodeOptions, Piece, Segment, Word, failed_window
from .units import (
    Unit,
    blocks,
    decoding_for,
    groups,
    head,
    input_name,
    join,
    length_kind,
    pieces,
    read,
    total,
)


class TorchRuntime:
    """The torch runtime: the engine's walks of inputs on ``decoder`` (``Decoder``) and ``pool`` (``AdapterPool``)."""

    kind = "torch"

    def __init__(self, base, registry=None, cache_size: int = 4):
        from .decoding import Decoder
        from .pool import AdapterPool

        self.base = base
        self.registry = registry
        self.decoder = Decoder(base)
        self.pool = AdapterPool(base, registry, cache_size)

    @property
    def languages(self) -> dict[str, int]:
        return self.base.languages

    # ---- adapters ---------------------------------------------------------------------------------------------
    @property
    def resident(self):
        """peft adapter names of the resident adapters."""
        return self.pool.resident

    def record(self, ref: str) -> AdapterRecord:
        return self.pool.record(ref)

    def add(self, record: AdapterRecord) -> None:
        self.pool.add(record)

    def resolve(self, ref: str):
        return self.pool.resolve(ref)

    def combine(self, refs: list[str], how: str, weights) -> None:
        self.pool.combined(refs, how, weights)

    def unload(self, ref: str) -> None:
        key = adapter_key(ref)
        if key in self.pool.resident and not self.pool.in_use.get(key):
            del self.pool.resident[key]
            self.pool.peft.delete_adapter(key)

    def check(self, options) -> None:
        check_runtime_options(self.kind, options)

    # ---- one clip (calibration, benchmarks) -------------------------------------------------------------------
    def detect(self, audio, candidates=None, adapter=None) -> dict[str, float]:
        key = adapter_key(adapter) if adapter else None
        if key:
            self.pool.ensure(adapter)
        with self.pool.active(key):
            enc = self.decoder.encode(self.decoder.features([audio[: 30 * 16000]]))
            return self.decoder.language_probs(enc, candidates)[0]

    def decode(self, audio, language, options, adapter=None):
        key = adapter_key(adapter) if adapter else None
        if key:
            self.pool.ensure(adapter)
        feats, mask = self.decoder.long_features(audio)
        with self.pool.using([key]), self.pool.active(key):
            rows = self.decoder.generate(
                [language], options, features=feats, attention_mask=mask, prompt=options.initial_prompt
            )
        yield from rows[0]

    # ---- inputs -----------------------------------------------------------------------------------------------
    def detect_inputs(self, items: list, options: TranscribeOptions, candidates) -> Iterator[tuple | FileError]:
        """Inputs in batches of ``batch_size``: each one's first piece encoded and detected with the others."""
        for group in groups(items, options.batch_size):
            units, errors, _ = self._short_units(group, options, first_only=True)
            self._encode_detect(units, options, candidates)
            for i, item in enumerate(group):
                if i in errors:
                    yield errors[i]
                    continue
                mine = [u for u in units if u.file == i]
                yield item, (mine[0].probs if mine else {})

    def transcribe(
        self, items: list, options: TranscribeOptions, router: Router
    ) -> Iterator[Transcription | FileError]:
        """Short inputs batched together (groups of twice ``batch_size`` inputs), long ones one after the other."""
        for group in groups(items, max(options.batch_size, 1) * 2):
            kinds = [length_kind(item) for item in group]
            short = [i for i, k in enumerate(kinds) if k == "short"]
            results = self._transcribe_short([group[i] for i in short], options, router) if short else []
            by_index = dict(zip(short, results))
            for i, item in enumerate(group):
                if isinstance(kinds[i], FileError):
                    yield kinds[i]
                elif i in by_index:
                    yield by_index[i]
                else:
                    yield [r for r in self._transcribe_long(item, options, router) if not isinstance(r, Segment)][-1]

    def stream(self, item, options: TranscribeOptions, router: Router) -> Iterator[Segment | Transcription | FileError]:
        kind = length_kind(item)
        if isinstance(kind, FileError):
            yield kind
            return
        if kind == "short":
            (res,) = self._transcribe_short([item], options, router)
            if isinstance(res, Transcription):
                yield from res.segments
            yield res
            return
        yield from self._transcribe_long(item, options, router)

    def _short_units(self, group, options, first_only=False):
        """The inputs of ``group`` read and cut into units (only each one's first with ``first_only``); returns (units,
        FileErrors by position, durations by position)."""
        errors: dict[int, FileError] = {}
        units: list[Unit] = []
        durations: dict[int, float] = {}
        for i, item in enumerate(group):
            try:
                audio = read(item, options)
            except AudioError as e:
                errors[i] = FileError(input_name(item), str(e))
                continue
            durations[i] = round(len(audio) / SAMPLE_RATE, 3)
            split = options.long_form == "batched" or options.per_segment
            cut = pieces(audio, 0.0, options, split)
            for p in cut[:1] if first_only else cut:
                units.append(Unit(i, p))
        return units, errors, durations

    def _encode_detect(self, units: list[Unit], options: TranscribeOptions, candidates=None, detect=True) -> None:
        """Features and base encoder output of every unit; language probabilities unless the language is forced."""
        for batch in groups(units, options.batch_size):
            f = self.decoder.features([u.piece.audio for u in batch])
            with self.pool.active(None):
                enc = self.decoder.encode(f)
                p = self.decoder.language_probs(enc, candidates) if detect else [None] * len(batch)
            for k, u in enumerate(batch):
                u.features, u.encoded, u.probs = f[k : k + 1], enc[k : k + 1], p[k]

    def claims(self, first: list[Unit], rec: AdapterRecord, options: TranscribeOptions) -> dict[int, float]:
        """How sure adapter ``rec`` is of its own language on each unit (by ``id``), from its own model. An
        encoder+decoder adapter's encoder output is kept on the unit for decoding (no second pass)."""
        import torch

        key = adapter_key(rec.ref)
        own = {}
        with self.pool.using([key]):
            for batch in groups(first, options.batch_size):
                with self.pool.active(key):
                    if rec.decoder_only:
                        enc = torch.cat([u.encoded for u in batch])
                    else:
                        enc = self.decoder.encode(torch.cat([u.features for u in batch]))
                        for k, u in enumerate(batch):
                            u.adapter_encoded[key] = enc[k : k + 1]
                    probs = self.decoder.language_probs(enc, None)
                for u, p in zip(batch, probs):
                    own[id(u)] = p.get(rec.language, 0.0)
        return own

    def decode_units(
        self, units: list[Unit], options: TranscribeOptions, fallback: bool = True
    ) -> dict[int, list[Segment]]:
        """Segments of every unit (by position), grouped by adapter (or in mixed batches), pinned while used.

        ``fallback=False``: the first temperature only. The batched long-form mode decodes so, as faster-whisper's
        BatchedInferencePipeline does: re-decoding at every hotter temperature took 6x the time on audio the model
        cannot read (224 s vs 36 s on 149 s of clips in six languages decoded as one; same text on English files).
        """
        import torch

        dec = options.decode_options()
        out: dict[int, list[Segment]] = {}
        refs = list(dict.fromkeys(u.route.adapter for u in units))
        decs = {ref: decoding_for(self, ref, dec) for ref in refs}  # one record lookup per adapter, not per unit
        keys: dict = {}
        with contextlib.ExitStack() as pins:
            # each adapter is pinned as soon as it is resident, so loading the next cannot evict it
            for ref in refs:
                keys[ref] = self.pool.ensure(ref, options.combine, options.combine_weights)
                pins.enter_context(self.pool.using([keys[ref]]))
            if options.batching == "mixed" and not options.merge and len(refs) > 1:
                # one generate call for every adapter: the run's beam size (greedy if unset), not each record's
                mixed = replace(dec, beam_size=dec.beam_size or 1)
                for batch in groups(list(enumerate(units)), options.batch_size):
                    names = [keys[u.route.adapter] or "__base__" for _, u in batch]
                    f = torch.cat([u.features for _, u in batch])
                    with self.pool.rows(names):
                        rows = self.decoder.generate(
                            [u.route.language for _, u in batch], mixed, features=f, fallback=False
                        )
                    for (j, u), raw in zip(batch, rows):
                        out[j] = self._segments(u, raw, False, mixed, decs[u.route.adapter].drop_failed)
                return out
            for ref in refs:
                dec = decs[ref]
                members = [(j, u) for j, u in enumerate(units) if u.route.adapter == ref]
                key = keys[ref]
                rec = self.pool.resident.get(key) if key else None
                merge = bool(options.merge and key)
                ctx = self.pool.merged(key) if merge else contextlib.nullcontext(None)
                with ctx as merged_model:
                    for batch in groups(members, options.batch_size):
                        f = torch.cat([u.features for _, u in batch])
                        langs = [u.route.language for _, u in batch]
                        if merged_model is not None:  # a merged float32 copy: its own encoder and decoder
                            rows = self.decoder.generate(
                                langs,
                                dec,
                                features=f,
                                model=merged_model,
                                prompt=dec.initial_prompt,
                                fallback=fallback,
                            )
                        else:
                            if rec is None or rec.decoder_only:
                                enc = torch.cat([u.encoded for _, u in batch])  # the encoder is unchanged: reuse
                            elif all(key in u.adapter_encoded for _, u in batch):
                                enc = torch.cat([u.adapter_encoded[key] for _, u in batch])  # from consulting
                            else:
                                enc = None
                            with self.pool.active(key):
                                rows = self.decoder.generate(
                                    langs, dec, features=f, encoded=enc, prompt=dec.initial_prompt, fallback=fallback
                                )
                        for (j, u), raw in zip(batch, rows):
                            out[j] = self._segments(u, raw, merge, dec, dec.drop_failed)
        return out

    def _segments(self, u: Unit, raw: list[dict], merged: bool, options: DecodeOptions, drop: bool) -> list[Segment]:
        """The unit's decoded windows as Segments in file time; ``drop``: leave out windows that failed every
        temperature (``decoding_for``)."""
        segs = []
        length = len(u.piece.audio) / SAMPLE_RATE
        for r in raw:
            if not r["text"] or (drop and failed_window(r, options)):
                continue
            # the model's closing timestamp can point past the audio's end: cues stay inside the file
            r = {**r, "start": min(r["start"], length), "end": min(r["end"], length)}
            start = u.piece.to_file_time(r["start"])
            end = max(start, u.piece.to_file_time(r["end"]))
            words = None
            if r["words"] is not None:

                def inside(t: float, lo=start, hi=end) -> float:
                    return min(max(t, lo), hi)

                words = [
                    Word(
                        inside(u.piece.to_file_time(min(w["start"], length))),
                        inside(u.piece.to_file_time(min(w["end"], length))),
                        w["word"],
                        w["probability"],
                    )
                    for w in r["words"]
                ]
            segs.append(
                Segment(
                    start,
                    end,
                    r["text"],
                    u.route.language,
                    u.route.probability,
                    u.route.adapter,
                    merged,
                    words,
                    r["avg_logprob"],
                    r["compression_ratio"],
                    r["no_speech_prob"],
                    r["temperature"],
                )
            )
        return segs

    def _transcribe_short(
        self, group: list, options: TranscribeOptions, router: Router
    ) -> list[Transcription | FileError]:
        """Inputs of at most 30 s (or any length in ``batched`` mode, in memory): pieces decoded in batches."""
        units, errors, durations = self._short_units(group, options)
        self._encode_detect(units, options, router.candidates(options), detect=not options.language)
        warnings: dict[int, list[str]] = {}
        segs: dict[int, list[Segment]] = {}
        if units:
            router.route_units(units, options, warnings)
            segs = self.decode_units(units, options)
        results = []
        for i, item in enumerate(group):
            if i in errors:
                results.append(errors[i])
                continue
            mine = [j for j, u in enumerate(units) if u.file == i]
            results.append(
                router.result(
                    item,
                    [units[j] for j in mine],
                    [s for j in mine for s in segs[j]],
                    durations[i],
                    options,
                    warnings.get(i, []),
                )
            )
        return results

    def _transcribe_long(
        self, item, options: TranscribeOptions, router: Router
    ) -> Iterator[Segment | Transcription | FileError]:
        """A long input, read in blocks: ``batched`` / per-segment routing decode its pieces in batches; otherwise
        Whisper's sequential long-form algorithm on each block, routed once from the first 30 s of speech."""
        label = input_name(item)
        segs: list[Segment] = []
        warnings: list[str] = []
        first: Unit | None = None
        duration = 0.0
        prompt = options.initial_prompt
        carry = np.zeros(0, np.float32)  # audio of the block's last window, decoded again with the next block
        carry_offset = 0.0
        try:
            for offset, block in blocks(item):
                duration = offset + len(block) / SAMPLE_RATE
                if options.long_form == "batched" or options.per_segment:
                    units = [Unit(0, p) for p in pieces(block, offset, options, split=True)]
                    if not units:
                        continue
                    self._encode_detect(units, options, router.candidates(options), detect=not options.language)
                    if first is None or options.per_segment:
                        w: dict = {}
                        router.route_units(units, options, w)
                        warnings += w.get(0, [])
                        first = first or units[0]
                    else:
                        for u in units:
                            u.route = first.route
                    out = self.decode_units(units, options, fallback=options.long_form != "batched")
                    for j in range(len(units)):
                        for s in out[j]:
                            segs.append(s)
                            yield s
                    continue
                audio = np.concatenate([carry, block]) if len(carry) else block
                start = carry_offset if len(carry) else offset
                cut = pieces(audio, start, options, split=False)
                speech = cut[0] if not options.vad else join(cut, start)
                if speech is None:
                    carry = np.zeros(0, np.float32)
                    continue
                if first is None:
                    first = Unit(0, head(speech))
                    self._encode_detect([first], options, router.candidates(options), detect=not options.language)
                    w = {}
                    router.route_units([first], options, w)
                    warnings += w.get(0, [])
                last_block = duration >= total(item) - 1e-3
                new, keep_until, tokens = self._decode_block(speech, first, options, prompt, last_block)
                for s in new:
                    segs.append(s)
                    yield s
                if options.condition_on_previous_text:
                    # Whisper's prompt across the block edge: the tokens decoded so far, timestamps included (a
                    # text-only prompt made the next block's windows run sentences together without timestamps);
                    # None: the block ended on a window decoded hotter than 0.5, which resets it, as in Whisper
                    before = prompt if isinstance(prompt, list) else self.decoder.prompt_tokens(prompt)
                    prompt = None if tokens is None else (before + tokens)[-self.decoder.max_prompt_tokens :]
                else:
                    prompt = None  # the initial prompt is for the first window only (transformers' "first-segment")
                # audio after the last kept segment goes round again with the next block
                if keep_until is None:
                    carry = np.zeros(0, np.float32)
                else:
                    cut = int(round((keep_until - start) * SAMPLE_RATE))
                    carry, carry_offset = audio[cut:].copy(), keep_until
        except AudioError as e:
            yield FileError(label, str(e))
            return
        units = [first] if first else []
        if duration < 0.1:
            yield FileError(label, f"{label}: only {duration:.3f} s of audio (truncated?)")
            return
        yield router.result(item, units, segs, round(duration, 3), options, warnings)

    def _decode_block(self, speech: Piece, first: Unit, options, prompt, last_block: bool):
        """Sequential long-form decoding of one block with the file's route. Returns (segments, keep_until): the
        block's last window is dropped unless this is the last block, and decoded again with the next one."""
        r = first.route
        dec = decoding_for(self, r.adapter, options.decode_options())
        key = self.pool.ensure(r.adapter, options.combine, options.combine_weights)
        feats, mask = self.decoder.long_features(speech.audio)
        unit = Unit(0, speech, route=r)
        with self.pool.using([key]):
            if options.merge and key:
                with (
                    self.pool.merged(key) as merged_model,
                    self.pool.active(key) if merged_model is None else contextlib.nullcontext(None),
                ):
                    raw = self.decoder.generate(
                        [r.language], dec, features=feats, attention_mask=mask, model=merged_model, prompt=prompt
                    )
                merged = True
            else:
                with self.pool.active(key):
                    raw = self.decoder.generate([r.language], dec, features=feats, attention_mask=mask, prompt=prompt)
                merged = False
        rows = raw[0]
        block_end = len(speech.audio) / SAMPLE_RATE
        keep_until = None
        if not last_block and rows:
            # the block's last window was decoded against audio cut at the block's end: its segments (and any that
            # end near the cut) are decoded again at the start of the next block, prompted with the tokens before
            last_window = rows[-1]["window"]
            kept = [x for x in rows if x["window"] != last_window and x["end"] <= block_end - 1.0]
            if kept:
                rows = kept
                keep_until = speech.to_file_time(kept[-1]["end"])
        # as Whisper: a window decoded hotter than 0.5 does not prompt the next one
        hot = bool(rows) and (rows[-1].get("temperature") or 0.0) > 0.5
        tokens = None if hot else [t for x in rows for t in x["tokens"]]
        return self._segments(unit, rows, merged, dec, dec.drop_failed), keep_until, tokens
