"""The engine: files -> detect -> route -> decode -> results.

The walk of one file: ``transcribe`` reads it (streamed in blocks when long), optionally keeps only speech (VAD),
detects the language on its first 30 s of speech (``Decoder.language_probs``), routes it (``routing.route``, a pure
function), makes the adapter resident (``AdapterPool``) and decodes with Whisper's algorithm (``Decoder.generate``:
timestamps, previous-text prompt, temperature fallback). Segments come out as they are decoded (``stream``).

Short inputs (at most 30 s, or VAD pieces in ``batched`` mode) are decoded in batches; longer ones sequentially,
Whisper's long-form algorithm, one file at a time.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from ..adapters.registry import AdapterRecord, Registry, RegistryError
from .audio import SAMPLE_RATE, AudioError, audio_info, expand_inputs, load_audio, stream_audio
from .pool import adapter_key
from .routing import Route, RouteRequest, accept_claim, route, should_consult
from .runtime import check_runtime_options
from .segments import (
    BLOCK_SECONDS,
    TASKS,
    WINDOW_SECONDS,
    DecodeOptions,
    Piece,
    Segment,
    Word,
    failed_window,
    filed_beam_size,
)

D = TypeVar("D", bound=DecodeOptions)

logger = logging.getLogger("lora_whisper")

__all__ = [
    "Detection",
    "Engine",
    "FileError",
    "Segment",
    "TranscribeOptions",
    "Transcription",
    "Word",
    "adapter_key",
]

LONG_FORM_MODES = ("sequential", "batched")


@dataclass
class TranscribeOptions(DecodeOptions):
    """Options of a transcription run: routing, batching, and the decoding options (``DecodeOptions``)."""

    language: str | None = None
    """Force this language (skip detection)."""
    languages: list[str] | None = None
    """Restrict detection to these candidates (plus the registry's languages when routing to adapters)."""
    adapter: str = "auto"
    """``auto``, ``none`` or an adapter reference."""
    domain: str | list[str] | None = None
    """Preferred domain(s) for adapter routing, tried in order."""
    threshold: float = 0.5
    """Minimum language probability to use a language's adapter."""
    per_segment: bool = False
    """Detect and route every speech segment (VAD) on its own (code-switched recordings)."""
    vad: bool = False
    """Decode speech regions only (Silero VAD): silence is skipped, a file without speech gives no text."""
    long_form: str = "sequential"
    """``sequential``: Whisper's algorithm, window after window, each prompted with the tokens before it.
    ``batched``: VAD pieces of up to 30 s decoded in batches at the first temperature (faster, no context across
    pieces, no fallback)."""
    batch_size: int = 8
    """Pieces per encoder / generate call."""
    top_k: int = 5
    """Language probabilities reported per file."""
    merge: bool = False
    """Merge an adapter into the weights while a group uses it (into a float32 copy when the base is 8-bit)."""
    combine: str | None = None
    """With --domain: combine the language adapter and the domain adapter (peft add_weighted_adapter)."""
    combine_weights: tuple[float, float] = (1.0, 1.0)
    """Weights of (language adapter, domain adapter) in the combination."""
    consult_below: float = 0.8
    """When the base's top language probability is below this, ask the candidate adapters (0 disables)."""
    batching: str = "grouped"
    """'grouped': one generate per adapter; 'mixed': rows of different adapters in one generate call (peft
    adapter_names; decoded without temperature fallback, which re-batches rows and peft cannot follow)."""

    def validate(self, languages: dict[str, int] | None = None) -> None:
        """Raise ValueError naming the first bad option and what is allowed."""
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {list(TASKS)}")
        if self.beam_size is not None and self.beam_size < 1:
            raise ValueError(f"beam size {self.beam_size} must be 1 (greedy) or more")
        if not self.temperature or any(t < 0 for t in self.temperature):
            raise ValueError(f"temperature {self.temperature}: give one or more values >= 0, e.g. 0,0.2,0.4")
        if self.max_new_tokens is not None and not 1 <= self.max_new_tokens <= 440:
            raise ValueError(f"max new tokens {self.max_new_tokens} must be between 1 and 440")
        if self.long_form not in LONG_FORM_MODES:
            raise ValueError(f"long-form mode {self.long_form!r} is not one of {list(LONG_FORM_MODES)}")
        if self.batching not in ("grouped", "mixed"):
            raise ValueError(f"batching {self.batching!r} is not one of ['grouped', 'mixed']")
        if self.batch_size < 1:
            raise ValueError(f"batch size {self.batch_size} must be 1 or more")
        if languages:
            for code in [self.language, *(self.languages or [])]:
                if code is not None and code not in languages:
                    raise ValueError(
                        f"language {code!r} is not one of the base's languages: {', '.join(sorted(languages))}"
                    )

    def decode_options(self) -> DecodeOptions:
        return DecodeOptions(**{f.name: getattr(self, f.name) for f in fields(DecodeOptions)})


@dataclass
class Transcription:
    """The result for one input file."""

    file: str
    text: str
    language: str | None
    language_probability: float | None
    adapter: str | None
    merged: bool
    duration: float
    languages: dict[str, float] = field(default_factory=dict)
    """Top-k detected language probabilities (empty when the language was forced)."""
    route: str = ""
    """Why this adapter (or the base) was used."""
    segments: list[Segment] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["segments"] = [s.to_dict() for s in self.segments]
        d["languages"] = {k: round(v, 4) for k, v in d["languages"].items()}
        if d["language_probability"] is not None:
            d["language_probability"] = round(d["language_probability"], 4)
        return d


@dataclass
class FileError:
    """An input that could not be transcribed; ``error`` is one line naming the file."""

    file: str
    error: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Detection:
    """Language probabilities for one file."""

    file: str
    language: str | None
    probability: float | None
    languages: dict[str, float]

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "language": self.language,
            "language_probability": None if self.probability is None else round(self.probability, 4),
            "languages": {k: round(v, 4) for k, v in self.languages.items()},
        }


@dataclass
class _Unit:
    """A piece of one input on its way through detect -> route -> decode."""

    file: int
    piece: Piece
    features: object = None
    encoded: object = None
    probs: dict[str, float] | None = None
    route: Route | None = None
    adapter_encoded: dict = field(default_factory=dict)


class Engine:
    """Files -> detect -> route -> decode -> results, over one runtime (``runtime.py``).

    ``Engine(base, registry)`` runs on the torch runtime (a loaded ``Base``); ``Engine(None, registry,
    runtime=CT2Runtime(...))`` on the CTranslate2 one (``runtime.build_engine`` picks). Routing (``routing.route``,
    adapter-consulted detection) is the same on both; the torch runtime decodes short inputs in batches and long ones
    in blocks (``_transcribe_short`` / ``_transcribe_long``), the ct2 runtime hands each file to faster-whisper's
    pipeline (``_ct2_stream``).
    """

    def __init__(self, base, registry: Registry | None = None, cache_size: int = 4, runtime=None):
        if runtime is None:
            from .runtime import TorchRuntime

            runtime = TorchRuntime(base, registry, cache_size)
        self.runtime = runtime
        self.base = runtime.base
        self.registry = registry
        if runtime.kind == "torch":
            self.decoder = runtime.decoder
            self.pool = runtime.pool

    # kept for callers of the first release
    @property
    def resident(self):
        """Resident adapters: peft adapter names (torch) or references of loaded compiled models (ct2)."""
        return self.pool.resident if self.runtime.kind == "torch" else self.runtime.models

    @property
    def peft(self):
        return self.pool.peft

    def pin(self, record: AdapterRecord) -> None:
        """Make an adapter that is not (yet) in the registry resolvable by its reference (used after training)."""
        (self.pool if self.runtime.kind == "torch" else self.runtime).add(record)

    def features(self, audios):
        return self.decoder.features(audios)

    def encode(self, features, adapter: str | None = None):
        with self.pool.active(adapter):
            return self.decoder.encode(features)

    # ---- public API -------------------------------------------------------------------------------------------
    def detect(
        self, paths: list[str | Path], options: TranscribeOptions | None = None
    ) -> Iterator[Detection | FileError]:
        """Language probabilities per file, from its first 30 s (of speech, with ``vad``)."""
        options = options or TranscribeOptions()
        candidates = self._candidates(options)
        if self.runtime.kind == "ct2":
            yield from self._ct2_detect(paths, options, candidates)
            return
        for group in _groups(expand_inputs(paths), options.batch_size):
            units, errors, _ = self._short_units(group, options, first_only=True)
            self._encode_detect(units, options, candidates)
            for i, item in enumerate(group):
                if i in errors:
                    yield errors[i]
                    continue
                mine = [u for u in units if u.file == i]
                probs = mine[0].probs if mine else {}
                top = next(iter(probs), None)
                yield Detection(_name(item), top, probs.get(top), dict(list(probs.items())[: options.top_k]))

    def transcribe(
        self,
        paths: list,
        options: TranscribeOptions | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[Transcription | FileError]:
        """Transcribe files (folders are expanded), yielding one result per file in input order."""
        options = options or TranscribeOptions()
        check_runtime_options(self.runtime.kind, options)
        files = expand_inputs(paths)
        if self.runtime.kind == "ct2":
            yield from self._ct2_transcribe(files, options, progress)
            return
        for group in _groups(files, max(options.batch_size, 1) * 2):
            kinds = [self._kind(item, options) for item in group]
            short = [i for i, k in enumerate(kinds) if k == "short"]
            results = self._transcribe_short([group[i] for i in short], options) if short else []
            by_index = dict(zip(short, results))
            for i, item in enumerate(group):
                if isinstance(kinds[i], FileError):
                    res = kinds[i]
                elif i in by_index:
                    res = by_index[i]
                else:
                    res = [r for r in self.stream(item, options) if not isinstance(r, Segment)][-1]
                yield res
                if progress:
                    progress(1)

    def stream(self, item, options: TranscribeOptions | None = None) -> Iterator[Segment | Transcription | FileError]:
        """Transcribe one input, yielding its segments as they are decoded, then the Transcription (or a FileError).

        Memory stays flat in the length of the audio: long files are read and decoded in blocks.
        """
        options = options or TranscribeOptions()
        check_runtime_options(self.runtime.kind, options)
        if self.runtime.kind == "ct2":
            yield from self._ct2_stream(item, options)
            return
        kind = self._kind(item, options)
        if isinstance(kind, FileError):
            yield kind
            return
        if kind == "short":
            (res,) = self._transcribe_short([item], options)
            if isinstance(res, Transcription):
                yield from res.segments
            yield res
            return
        yield from self._transcribe_long(item, options)

    # ---- inputs ------------------------------------------------------------------------------------------------
    def _kind(self, item, options: TranscribeOptions):
        """'short' (decoded in batches, in memory) or 'long' (streamed in blocks), or a FileError."""
        try:
            seconds = len(item[1]) / SAMPLE_RATE if isinstance(item, tuple) else audio_info(item)
        except AudioError as e:
            return FileError(_name(item), str(e))
        return "long" if seconds > WINDOW_SECONDS + 0.05 else "short"

    def _blocks(self, item):
        if isinstance(item, tuple):
            n = int(BLOCK_SECONDS * SAMPLE_RATE)
            for k in range(0, len(item[1]), n):
                yield k / SAMPLE_RATE, item[1][k : k + n]
        else:
            yield from stream_audio(item, BLOCK_SECONDS)

    def _pieces(self, audio: np.ndarray, offset: float, options: TranscribeOptions, split: bool) -> list[Piece]:
        """The pieces of a block: speech regions packed into <= 30 s (VAD), or the block itself when it fits, or
        30 s windows (``split`` without VAD)."""
        if options.vad or (split and len(audio) > WINDOW_SECONDS * SAMPLE_RATE):
            from .vad import VadOptions, pack, speech_regions

            if options.vad:
                vo = VadOptions(max_speech_duration_s=WINDOW_SECONDS) if split else VadOptions()
                regions = speech_regions(audio, vo)
            else:
                n = int(WINDOW_SECONDS * SAMPLE_RATE)
                regions = [(k, min(k + n, len(audio))) for k in range(0, len(audio), n)]
            out = []
            for group in pack(regions, WINDOW_SECONDS):
                a = np.concatenate([audio[s:e] for s, e in group])
                spans = [(offset + s / SAMPLE_RATE, offset + e / SAMPLE_RATE) for s, e in group]
                out.append(Piece(a, spans[0][0], spans))
            return out
        return [Piece(audio, offset)]

    def _short_units(self, group, options, first_only=False):
        errors: dict[int, FileError] = {}
        units: list[_Unit] = []
        durations: dict[int, float] = {}
        for i, item in enumerate(group):
            try:
                # with VAD, a silent file is no error: it has no speech, so no text
                audio = item[1] if isinstance(item, tuple) else load_audio(item, check_silence=not options.vad)
            except AudioError as e:
                errors[i] = FileError(_name(item), str(e))
                continue
            durations[i] = round(len(audio) / SAMPLE_RATE, 3)
            split = options.long_form == "batched" or options.per_segment
            pieces = self._pieces(audio, 0.0, options, split)
            for p in pieces[:1] if first_only else pieces:
                units.append(_Unit(i, p))
        return units, errors, durations

    # ---- detection and routing -------------------------------------------------------------------------------
    def _candidates(self, options: TranscribeOptions) -> list[str] | None:
        if not options.languages:
            return None
        extra = self.registry.languages() if (self.registry and options.adapter == "auto") else set()
        return sorted(set(options.languages) | extra)

    def _encode_detect(self, units: list[_Unit], options: TranscribeOptions, candidates=None, detect=True) -> None:
        """Features and base encoder output of every unit; language probabilities unless the language is forced."""
        for batch in _groups(units, options.batch_size):
            f = self.decoder.features([u.piece.audio for u in batch])
            with self.pool.active(None):
                enc = self.decoder.encode(f)
                p = self.decoder.language_probs(enc, candidates) if detect else [None] * len(batch)
            for k, u in enumerate(batch):
                u.features, u.encoded, u.probs = f[k : k + 1], enc[k : k + 1], p[k]

    def _route_units(self, units: list[_Unit], options: TranscribeOptions, warnings: dict[int, list[str]]) -> None:
        """Give every unit its route: per file (from the file's first piece, as Whisper detects on its first 30 s
        of speech) or per unit (``per_segment``)."""
        records = self.registry.active() if (self.registry and options.adapter != "none") else []
        request = RouteRequest(options.adapter, options.domain, options.language, options.threshold)
        owners: dict = {}
        for j, u in enumerate(units):
            key = j if options.per_segment else u.file
            owners.setdefault(key, []).append(u)
        consulted = self._consult(owners, records, options)
        for key, members in owners.items():
            if key in consulted:
                r = consulted[key]
            else:
                r = route(members[0].probs or None, records, request)
                r = self._resolve_route(r, options, warnings.setdefault(members[0].file, []))
            for u in members:
                u.route = Route(r.language, r.probability, r.adapter, r.reason)

    def _resolve_route(self, r: Route, options: TranscribeOptions, warn: list[str]) -> Route:
        """Load the routed adapter (or fall back to the base with a warning); build a combination if asked."""
        if r.adapter is None:
            return r
        rec, msg = self.runtime.resolve(r.adapter)
        if rec is None:
            warn.append(msg)
            return Route(r.language, r.probability, None, msg)
        r.adapter = rec.ref
        lang_rec = self.registry.find(r.language) if (self.registry and options.combine and rec.domain) else None
        if lang_rec is not None and lang_rec.ref != rec.ref and options.adapter == "auto":
            try:
                self.pool.combined([lang_rec.ref, rec.ref], options.combine, options.combine_weights)
                r.adapter = f"{lang_rec.ref}+{rec.ref}"
                r.reason += f" + {lang_rec.ref} ({options.combine})"
            except Exception as e:  # noqa: BLE001 - e.g. linear needs equal ranks: say so, keep the domain adapter
                warn.append(f"cannot combine {lang_rec.ref} and {rec.ref}: {str(e).splitlines()[0]}")
        return r

    def _consult(self, owners: dict, records: list[AdapterRecord], options: TranscribeOptions) -> dict:
        """Adapter-consulted detection where the base is unsure (``routing.should_consult``): each candidate adapter
        scores its own language on the audio, and ``routing.accept_claim`` decides. An adapter's encoder output is
        kept for decoding (no second pass)."""
        if options.adapter != "auto" or options.language or not records:
            return {}
        domains = [options.domain] if isinstance(options.domain, str) else list(options.domain or [])
        cands = [r for r in records if r.active and ((r.domain in domains) if domains else not r.domain)]
        if options.languages:
            cands = [r for r in cands if r.language in options.languages]
        unsure = {
            k: m for k, m in owners.items() if m[0].probs and should_consult(m[0].probs, options.consult_below, cands)
        }
        if not unsure or not cands:
            return {}
        first = [m[0] for m in unsure.values()]
        best: dict = {}
        for rec in cands:
            got, _warn = self.runtime.resolve(rec.ref)
            if got is None:
                continue
            own = self._claims(first, rec, options)
            for k, members in unsure.items():
                score = own[id(members[0])]
                if accept_claim(members[0].probs, rec, score) and score > best.get(k, (0.0, None))[0]:
                    best[k] = (score, rec)
        out = {}
        for k, (score, rec) in best.items():
            base_top = unsure[k][0].probs
            lang0 = max(base_top, key=base_top.get)
            out[k] = Route(
                rec.language,
                score,
                rec.ref,
                f"base unsure ({lang0} {base_top[lang0]:.2f}); adapter {rec.ref} recognises {rec.language} ({score:.2f})",
            )
        return out

    def _claims(self, first: list[_Unit], rec: AdapterRecord, options: TranscribeOptions) -> dict[int, float]:
        """How sure adapter ``rec`` is of its own language on each unit (by ``id``), from its own model."""
        if self.runtime.kind == "ct2":
            return {
                id(u): self.runtime.detect(u.piece.audio, None, adapter=rec.ref).get(rec.language, 0.0) for u in first
            }
        import torch

        key = adapter_key(rec.ref)
        own = {}
        with self.pool.using([key]):
            for batch in _groups(first, options.batch_size):
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

    # ---- decoding ----------------------------------------------------------------------------------------------
    def _decode_units(
        self, units: list[_Unit], options: TranscribeOptions, fallback: bool = True
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
        decs = {ref: self.decoding_for(ref, dec) for ref in refs}  # one record lookup per adapter, not per unit
        keys: dict = {}
        with contextlib.ExitStack() as pins:
            # each adapter is pinned as soon as it is resident, so loading the next cannot evict it
            for ref in refs:
                keys[ref] = self.pool.ensure(ref, options.combine, options.combine_weights)
                pins.enter_context(self.pool.using([keys[ref]]))
            if options.batching == "mixed" and not options.merge and len(refs) > 1:
                # one generate call for every adapter: the run's beam size (greedy if unset), not each record's
                mixed = replace(dec, beam_size=dec.beam_size or 1)
                for batch in _groups(list(enumerate(units)), options.batch_size):
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
                ctx = self.pool.merged(key) if merge else _null()
                with ctx as merged_model:
                    for batch in _groups(members, options.batch_size):
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

    def decoding_for(self, ref: str | None, options: D) -> D:
        """``options`` for adapter ``ref`` (None: the base): each field the run left unset (None) that the adapter's
        record files (``decoding``: ``drop_failed``, ``beam_size``) takes the record's value, the rest the
        project's defaults (keep failed windows, greedy), as a Hub model's ``generation_config.json`` sets its
        decoding defaults and a caller's arguments override them."""
        filed = {}
        if ref is not None and (options.drop_failed is None or options.beam_size is None):
            holder = self.pool if self.runtime.kind == "torch" else self.runtime
            try:
                filed = holder.record(ref).decoding or {}
            except RegistryError:
                filed = {}
        beam = filed_beam_size(filed.get("beam_size")) or 1
        return replace(
            options,
            drop_failed=bool(filed.get("drop_failed", False)) if options.drop_failed is None else options.drop_failed,
            beam_size=beam if options.beam_size is None else options.beam_size,
        )

    def _segments(self, u: _Unit, raw: list[dict], merged: bool, options: DecodeOptions, drop: bool) -> list[Segment]:
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

    def _transcribe_short(self, group: list, options: TranscribeOptions) -> list[Transcription | FileError]:
        """Inputs of at most 30 s (or any length in ``batched`` mode, in memory): pieces decoded in batches."""
        options.validate(self.base.languages)
        units, errors, durations = self._short_units(group, options)
        self._encode_detect(units, options, self._candidates(options), detect=not options.language)
        warnings: dict[int, list[str]] = {}
        segs: dict[int, list[Segment]] = {}
        if units:
            self._route_units(units, options, warnings)
            segs = self._decode_units(units, options)
        results = []
        for i, item in enumerate(group):
            if i in errors:
                results.append(errors[i])
                continue
            mine = [j for j, u in enumerate(units) if u.file == i]
            results.append(
                self._result(
                    item,
                    [units[j] for j in mine],
                    [s for j in mine for s in segs[j]],
                    durations[i],
                    options,
                    warnings.get(i, []),
                )
            )
        return results

    def _result(
        self, item, units: list[_Unit], segs: list[Segment], duration: float, options, warnings
    ) -> Transcription:
        first = units[0] if units else None
        r = first.route if first else Route(options.language, None, None, "no speech found (VAD)")
        probs = (first.probs or {}) if first else {}
        language, prob = r.language, r.probability
        if options.per_segment and segs:
            spoken: dict = {}
            for s in segs:
                spoken[s.language] = spoken.get(s.language, 0.0) + (s.end - s.start)
            language = max(spoken, key=spoken.get)
            prob = probs.get(language)
        adapters = {u.route.adapter for u in units} or {None}
        return Transcription(
            file=_name(item),
            text=" ".join(s.text for s in segs).strip(),
            language=language,
            language_probability=prob,
            adapter=r.adapter if len(adapters) == 1 else ",".join(sorted(a or "base" for a in adapters)),
            merged=any(s.merged for s in segs),
            duration=duration,
            languages=dict(list(probs.items())[: options.top_k]),
            route=r.reason,
            segments=segs,
            warnings=list(dict.fromkeys(warnings)),
        )

    def _transcribe_long(self, item, options: TranscribeOptions) -> Iterator[Segment | Transcription | FileError]:
        """A long input, read in blocks: ``batched`` / per-segment routing decode its pieces in batches; otherwise
        Whisper's sequential long-form algorithm on each block, routed once from the first 30 s of speech."""
        options.validate(self.base.languages)
        name = _name(item)
        segs: list[Segment] = []
        warnings: list[str] = []
        first: _Unit | None = None
        duration = 0.0
        prompt = options.initial_prompt
        carry = np.zeros(0, np.float32)  # audio of the block's last window, decoded again with the next block
        carry_offset = 0.0
        try:
            blocks = self._blocks(item)
            for offset, block in blocks:
                duration = offset + len(block) / SAMPLE_RATE
                if options.long_form == "batched" or options.per_segment:
                    units = [_Unit(0, p) for p in self._pieces(block, offset, options, split=True)]
                    if not units:
                        continue
                    self._encode_detect(units, options, self._candidates(options), detect=not options.language)
                    if first is None or options.per_segment:
                        w: dict = {}
                        self._route_units(units, options, w)
                        warnings += w.get(0, [])
                        first = first or units[0]
                    else:
                        for u in units:
                            u.route = first.route
                    out = self._decode_units(units, options, fallback=options.long_form != "batched")
                    for j in range(len(units)):
                        for s in out[j]:
                            segs.append(s)
                            yield s
                    continue
                audio = np.concatenate([carry, block]) if len(carry) else block
                start = carry_offset if len(carry) else offset
                pieces = self._pieces(audio, start, options, split=False)
                speech = pieces[0] if not options.vad else _join(pieces, start)
                if speech is None:
                    carry = np.zeros(0, np.float32)
                    continue
                if first is None:
                    head = Piece(speech.audio[: int(WINDOW_SECONDS * SAMPLE_RATE)], speech.offset, speech.spans)
                    first = _Unit(0, head)
                    self._encode_detect([first], options, self._candidates(options), detect=not options.language)
                    w = {}
                    self._route_units([first], options, w)
                    warnings += w.get(0, [])
                last_block = duration >= _total(item) - 1e-3
                new, keep_until, tokens = self._decode_block(speech, first, options, prompt, last_block)
                for s in new:
                    segs.append(s)
                    yield s
                if options.condition_on_previous_text:
                    # Whisper's prompt across the block edge: the tokens decoded so far, timestamps included (a
                    # text-only prompt made the next block's windows run sentences together without timestamps);
                    # None: the block ended on a window decoded hotter than 0.5, which resets it, as in Whisper
                    head = prompt if isinstance(prompt, list) else self.decoder.prompt_tokens(prompt)
                    prompt = None if tokens is None else (head + tokens)[-self.decoder.max_prompt_tokens :]
                else:
                    prompt = None  # the initial prompt is for the first window only (transformers' "first-segment")
                # audio after the last kept segment goes round again with the next block
                if keep_until is None:
                    carry = np.zeros(0, np.float32)
                else:
                    cut = int(round((keep_until - start) * SAMPLE_RATE))
                    carry, carry_offset = audio[cut:].copy(), keep_until
        except AudioError as e:
            yield FileError(name, str(e))
            return
        units = [first] if first else []
        if duration < 0.1:
            yield FileError(name, f"{name}: only {duration:.3f} s of audio (truncated?)")
            return
        yield self._result(item, units, segs, round(duration, 3), options, warnings)

    def _decode_block(self, speech: Piece, first: _Unit, options, prompt, last_block: bool):
        """Sequential long-form decoding of one block with the file's route. Returns (segments, keep_until): the
        block's last window is dropped unless this is the last block, and decoded again with the next one."""
        r = first.route
        dec = self.decoding_for(r.adapter, options.decode_options())
        key = self.pool.ensure(r.adapter, options.combine, options.combine_weights)
        feats, mask = self.decoder.long_features(speech.audio)
        unit = _Unit(0, speech, route=r)
        with self.pool.using([key]):
            if options.merge and key:
                with self.pool.merged(key) as merged_model, self.pool.active(key) if merged_model is None else _null():
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

    # ---- the ct2 runtime: one file at a time through faster-whisper's pipeline --------------------------------------
    def _ct2_audio(self, item, options: TranscribeOptions) -> np.ndarray:
        # with VAD, a silent file is no error: it has no speech, so no text
        return item[1] if isinstance(item, tuple) else load_audio(item, check_silence=not options.vad)

    def _ct2_head(self, audio: np.ndarray, options: TranscribeOptions) -> Piece | None:
        """The first 30 s (of speech, with VAD) that detection and routing look at; None when VAD finds no speech."""
        n = int(WINDOW_SECONDS * SAMPLE_RATE)
        if not options.vad:
            return Piece(audio[:n], 0.0)
        speech = _join(self._pieces(audio[: 4 * n], 0.0, options, split=False), 0.0)
        return None if speech is None else Piece(speech.audio[:n], speech.offset, speech.spans)

    def _ct2_detect(self, paths, options: TranscribeOptions, candidates) -> Iterator[Detection | FileError]:
        for item in expand_inputs(paths):
            try:
                audio = self._ct2_audio(item, options)
            except AudioError as e:
                yield FileError(_name(item), str(e))
                continue
            head = self._ct2_head(audio, options)
            probs = self.runtime.detect(head.audio, candidates) if head is not None else {}
            top = next(iter(probs), None)
            yield Detection(_name(item), top, probs.get(top), dict(list(probs.items())[: options.top_k]))

    def _ct2_transcribe(self, files: list, options: TranscribeOptions, progress) -> Iterator[Transcription | FileError]:
        """Files in input order; with ``workers`` > 1 that many decode at once on Python threads (CTranslate2 and
        the audio decoders release the GIL), one replica of the model each."""

        def final(item):
            return [r for r in self._ct2_stream(item, options) if not isinstance(r, Segment)][-1]

        workers, pool = min(self.runtime.workers, len(files)), None
        if workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(workers, thread_name_prefix="ct2-file")
        try:
            for res in pool.map(final, files) if pool else map(final, files):
                yield res
                if progress:
                    progress(1)
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)

    def _ct2_stream(self, item, options: TranscribeOptions) -> Iterator[Segment | Transcription | FileError]:
        """One input on the ct2 runtime: detect on the first 30 s of speech (base model), route (adapter-consulted
        detection on compiled adapters when the base is unsure), decode the whole input with faster-whisper's
        ``transcribe`` on the routed model; segments come out as faster-whisper yields them."""
        options.validate(self.base.languages)
        name = _name(item)
        try:
            audio = self._ct2_audio(item, options)
        except AudioError as e:
            yield FileError(name, str(e))
            return
        duration = round(len(audio) / SAMPLE_RATE, 3)
        head = self._ct2_head(audio, options)
        if head is None:
            yield self._result(item, [], [], duration, options, [])
            return
        unit = _Unit(0, head)
        if not options.language:
            unit.probs = self.runtime.detect(head.audio, self._candidates(options))
        warnings: dict[int, list[str]] = {}
        self._route_units([unit], options, warnings)
        r = unit.route
        segs: list[Segment] = []
        length = len(audio) / SAMPLE_RATE
        options = self.decoding_for(r.adapter, options)
        for raw in self.runtime.decode(audio, r.language, options, r.adapter):
            if not raw["text"] or (options.drop_failed and failed_window(raw, options)):
                continue
            start = round(min(raw["start"], length), 3)
            end = round(max(start, min(raw["end"], length)), 3)
            words = None
            if raw["words"] is not None:
                words = [
                    Word(
                        round(min(max(w.start, start), end), 3),
                        round(min(max(w.end, start), end), 3),
                        w.word,
                        w.probability,
                    )
                    for w in raw["words"]
                ]
            seg = Segment(
                start,
                end,
                raw["text"],
                r.language,
                r.probability,
                r.adapter,
                False,  # ``merged`` reports --merge (torch); a compiled adapter's merge is how ct2 runs every adapter
                words,
                raw["avg_logprob"],
                raw["compression_ratio"],
                raw["no_speech_prob"],
                raw["temperature"],
            )
            segs.append(seg)
            yield seg
        yield self._result(item, [unit], segs, duration, options, warnings.get(0, []))


def _join(pieces: list[Piece], offset: float) -> Piece | None:
    """One piece of all speech in a block (VAD regions concatenated), or None without speech."""
    if not pieces:
        return None
    audio = np.concatenate([p.audio for p in pieces])
    spans = [s for p in pieces for s in p.spans]
    return Piece(audio, spans[0][0] if spans else offset, spans)


def _total(item) -> float:
    if isinstance(item, tuple):
        return len(item[1]) / SAMPLE_RATE
    return audio_info(item)


def _null():
    import contextlib

    return contextlib.nullcontext(None)


def _name(item) -> str:
    return item[0] if isinstance(item, tuple) else str(item)


def _groups(items: list, n: int) -> Iterator[list]:
    for k in range(0, len(items), n):
        yield items[k : k + n]
