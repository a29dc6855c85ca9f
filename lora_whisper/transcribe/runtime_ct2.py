"""The CTranslate2 runtime: the base and compiled adapters decoded by faster-whisper's own ``WhisperModel``.

Language detection runs on the base model (``WhisperModel.detect_language``, split so that decoder-only adapters
reuse the base's encoder output when consulted); an adapter is compiled on first use
(``compile.compile_adapter``: merged in float32, converted by CTranslate2's converter, cached in the registry) and
kept resident in a small LRU of CTranslate2 models; decoding is ``WhisperModel.transcribe`` (sequential long-form,
VAD, word timestamps, temperature fallback, initial prompt) or faster-whisper's ``BatchedInferencePipeline`` for the
``batched`` long-form mode, with the project's options mapped one to one (``fw_options``).

Nothing here imports torch or transformers; only compiling an adapter does (once per version, in ``compile.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..adapters.compile import Compiled, compile_adapter, find_compiled
from ..adapters.registry import AdapterRecord, Registry, RegistryError, ResolvesAdapters
from .audio import AudioError
from .results import FileError
from .runtime_protocol import Router, TorchOnlyError, check_runtime_options, cuda_count
from .segments import WINDOW_SECONDS, Piece, Segment, Word, failed_window
from .units import Unit, decoding_for, head, input_name, join, pieces, read

logger = logging.getLogger("lora_whisper")

SAMPLE_RATE = 16000


@dataclass
class _Identity:
    hub_id: str
    fingerprint: str | None

    def to_dict(self) -> dict:
        return {"hub_id": self.hub_id, "fingerprint": self.fingerprint}


@dataclass
class CT2Base:
    """The base as the ct2 runtime needs it: its identity, its CTranslate2 folder, and the transformers folder that
    adapters are merged into when they are compiled."""

    identity: _Identity
    path: Path
    """Transformers folder of the base (merged into when compiling an adapter)."""
    ct2_path: Path
    """CTranslate2 folder of the base (what faster-whisper loads)."""
    quantize: str = "int8"
    """CTranslate2 compute type of every model of this runtime; also the weight type compiled adapters are stored in."""
    device: str = "cpu"
    languages: dict[str, int] = field(default_factory=dict)
    max_length: int = 448
    """Decoder positions (Whisper: 448). faster-whisper assumes 448; a smaller model is told its own."""


def ct2_quantization(quantize: str | None) -> str:
    """The CLI's ``--quantize`` as a CTranslate2 type: auto/int8/dynamic -> int8, none -> float32."""
    return "float32" if quantize == "none" else "int8"


def load_ct2_base(name: str = "offline", quantize: str | None = "auto", device: str | None = None) -> CT2Base:
    """The base for the ct2 runtime: ``offline`` uses the packaged CTranslate2 model as it is; any other base (a
    transformers folder or a Hub id) is converted once by CTranslate2's converter and kept in the cache."""
    from ..base.loading import (
        OFFLINE,
        OFFLINE_HUB_ID,
        cache_dir,
        offline_base_path,
        offline_ct2_path,
        pick_device,
        resolve_base,
        weights_fingerprint,
    )

    quant = ct2_quantization(quantize)
    device = pick_device(device, cuda_count=cuda_count())  # checks the name (cpu, cuda, cuda:N) without torch
    if name in (OFFLINE, "", None):
        ct2_path = offline_ct2_path()
        path, hub_id = offline_base_path(), OFFLINE_HUB_ID
        fingerprint = weights_fingerprint(path)
    else:
        path, hub_id = resolve_base(name)
        fingerprint = weights_fingerprint(path)
        ct2_path = cache_dir() / "ct2-bases" / f"{fingerprint.removeprefix('sha256:')[:16]}-{quant}"
        if not (ct2_path / "model.bin").is_file():
            from ..adapters.export import convert_ct2

            tmp = ct2_path.with_name(ct2_path.name + f".tmp{os.getpid()}")
            logger.info("converting base %s to CTranslate2 (%s, once) -> %s", name, quant, ct2_path)
            convert_ct2(path, tmp, quant)
            try:
                os.replace(tmp, ct2_path) if not ct2_path.exists() else None
            except OSError:
                pass
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        max_length = int(json.loads((Path(path) / "config.json").read_text()).get("max_target_positions") or 448)
    except (OSError, ValueError):
        max_length = 448
    return CT2Base(_Identity(hub_id, fingerprint), Path(path), Path(ct2_path), quant, device, max_length=max_length)


def fw_options(options, language: str | None) -> dict:
    """The project's decoding options as faster-whisper's ``transcribe`` arguments (one to one)."""
    o = options
    return dict(
        language=language,
        task=o.task,
        beam_size=o.beam_size or 1,
        temperature=list(o.temperature),
        compression_ratio_threshold=o.compression_ratio_threshold,
        log_prob_threshold=o.logprob_threshold,
        no_speech_threshold=o.no_speech_threshold,
        condition_on_previous_text=o.condition_on_previous_text,
        initial_prompt=o.initial_prompt,
        word_timestamps=o.word_timestamps,
        max_new_tokens=o.max_new_tokens,
        vad_filter=bool(getattr(o, "vad", False)),
    )


class CT2Runtime(ResolvesAdapters):
    """Detect, decode, load/unload an adapter, on CTranslate2 models through faster-whisper.

    How it walks inputs: one file at a time (``workers`` at once on threads), each read whole, detected on its first
    30 s of speech (base model), routed by the engine, and handed whole to faster-whisper's ``transcribe`` on the
    routed model (``stream``).

    Args:
        base: from ``load_ct2_base``.
        registry: where adapters (and their compiled copies) live.
        cache_size: compiled adapter models kept resident (least recently used dropped; the base is always kept).
        threads: CPU threads per model (0: CTranslate2's default).
        workers: files decoded at once (faster-whisper's ``num_workers``: each model holds this many replicas,
            each with ``threads`` threads); the engine then decodes a list of files on that many Python threads.
    """

    kind = "ct2"

    def __init__(
        self, base: CT2Base, registry: Registry | None = None, cache_size: int = 4, threads: int = 0, workers: int = 1
    ):
        from faster_whisper import WhisperModel

        self.base = base
        self.registry = registry
        self.cache_size = max(1, cache_size)
        self.workers = max(1, workers)
        # several replicas at CTranslate2's default threads each would oversubscribe the cores: share them out
        self.threads = threads or (max(1, (os.cpu_count() or 1) // self.workers) if self.workers > 1 else 0)
        self._lock = threading.RLock()  # the LRU and compiles, when several files decode at once
        self._WhisperModel = WhisperModel
        self.model = self._load_model(base.ct2_path)
        self.base.languages = self._languages(self.model)
        self.models: OrderedDict[str, tuple[object, Compiled]] = OrderedDict()
        self.extra: dict[str, AdapterRecord] = {}
        self._failed: dict[str, str] = {}
        self._encodings: OrderedDict[tuple, object] = OrderedDict()
        self.stats = {"loads": 0, "evictions": 0, "compiles": 0, "load_ms": []}

    @property
    def languages(self) -> dict[str, int]:
        return self.base.languages

    def _load_model(self, path: Path):
        kind, _, index = self.base.device.partition(":")
        model = self._WhisperModel(
            str(path),
            device=kind,
            device_index=int(index or 0),
            compute_type=self.base.quantize,
            cpu_threads=self.threads,
            num_workers=self.workers,
        )
        model.max_length = self.base.max_length  # prompt and generation limits follow the model's positions
        return model

    @staticmethod
    def _languages(model) -> dict[str, int]:
        if not model.model.is_multilingual:
            return {}
        tok = model.hf_tokenizer
        out = {}
        for code in model.supported_languages:
            i = tok.token_to_id(f"<|{code}|>")
            if i is not None:
                out[code] = i
        return out

    # ---- adapters -----------------------------------------------------------------------------------------------
    def compile(self, record: AdapterRecord, force: bool = False) -> Compiled:
        """The compiled copy of ``record`` for this base and weight type (built when missing)."""
        if not force:
            hit = find_compiled(record, self.base.identity.fingerprint, self.base.quantize)
            if hit is not None:
                return hit
        c = compile_adapter(
            record,
            self.base.path,
            self.base.identity.to_dict(),
            self.base.quantize,
            tokenizer_from=self.base.ct2_path,
            force=force,
        )
        self.stats["compiles"] += c.built
        return c

    def load(self, record: AdapterRecord):
        """Make the compiled model of ``record`` resident (compiling it first if needed); returns the model."""
        with self._lock:
            return self._load(record)

    def _load(self, record: AdapterRecord):
        ref = record.ref
        if ref in self.models:
            model, compiled = self.models[ref]
            if compiled.path.is_dir() and compiled.key.startswith(f"v{record.version}-"):
                from ..adapters.compile import compile_key

                if compile_key(record, self.base.identity.fingerprint, self.base.quantize) == compiled.key:
                    self.models.move_to_end(ref)
                    return model
            del self.models[ref]  # re-filed since it was loaded: load the new build
        try:
            compiled = self.compile(record)
            t = time.perf_counter()
            model = self._load_model(compiled.path)
        except RegistryError:
            raise
        except Exception as e:  # noqa: BLE001 - converter / CTranslate2 raise many kinds; one line
            raise RegistryError(
                f"adapter {ref}: cannot compile or load for the ct2 runtime "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
            ) from e
        self.stats["load_ms"].append(round(1000 * (time.perf_counter() - t), 1))
        self.stats["loads"] += 1
        self.models[ref] = (model, compiled)
        while len(self.models) > self.cache_size:
            old, _ = self.models.popitem(last=False)
            self.stats["evictions"] += 1
            logger.debug("ct2 runtime: dropped %s (cache size %d)", old, self.cache_size)
        return model

    def unload(self, ref: str) -> None:
        self.models.pop(ref, None)

    @property
    def resident(self):
        """References of the compiled adapter models held now (least recently used first)."""
        return self.models

    def combine(self, refs: list[str], how: str, weights) -> None:
        raise TorchOnlyError(
            "--combine needs the torch runtime (the ct2 runtime has no such feature): use --runtime torch"
        )

    def check(self, options) -> None:
        check_runtime_options(self.kind, options)

    def model_for(self, ref: str | None):
        if ref is None:
            return self.model
        return self.load(self.record(ref))

    # ---- detect / decode ------------------------------------------------------------------------------------------
    def detect(self, audio: np.ndarray, candidates: list[str] | None = None, adapter: str | None = None) -> dict:
        """Language probabilities (sorted, highest first) from the first 30 s of ``audio``, on the base or an adapter's
        compiled model; restricted to ``candidates`` (renormalised: the softmax over their logits) when given."""
        if not self.languages:
            return {}
        record = self.record(adapter) if adapter else None
        model = self.load(record) if record is not None else self.model
        head = np.ascontiguousarray(audio[: int(WINDOW_SECONDS * SAMPLE_RATE)], dtype=np.float32)
        if record is None or record.decoder_only:
            # faster-whisper's detect_language (features, encode, one decoder step) split in two, so that the base's
            # encoder output serves the base and every decoder-only adapter: their compiled encoder is the base's
            results = model.model.detect_language(self._encoded(head))[0]
            all_probs = [(token[2:-2], prob) for token, prob in results]
        else:
            _lang, _p, all_probs = model.detect_language(audio=head)
        probs = {k: float(v) for k, v in all_probs if k in self.languages}
        keep = {k: v for k, v in probs.items() if k in candidates} if candidates else {}
        probs = keep or probs
        # normalised over the languages kept: the softmax over their logits, as the torch runtime computes it
        total = sum(probs.values()) or 1.0
        return dict(sorted(((k, v / total) for k, v in probs.items()), key=lambda kv: -kv[1]))

    def _encoded(self, head: np.ndarray):
        """The base's encoder output for ``head`` (at most 30 s), kept for the last heads (one per worker): the base's
        detection and the consulted adapters' detections of the same audio share one encoder pass."""
        from faster_whisper.audio import pad_or_trim

        key = (head.shape[0], hashlib.blake2b(head.tobytes(), digest_size=16).digest())
        with self._lock:
            if key in self._encodings:
                self._encodings.move_to_end(key)
                return self._encodings[key]
        fe = self.model.feature_extractor
        enc = self.model.encode(pad_or_trim(fe(head)[..., : fe.nb_max_frames]))
        with self._lock:
            self._encodings[key] = enc
            # a file is detected on the base and consulted right after (calibration does the same per clip), one
            # file per worker at a time: keep one encoder output (3 MB for whisper-base) per worker, one spare
            while len(self._encodings) > self.workers + 1:
                self._encodings.popitem(last=False)
        return enc

    def decode(self, audio: np.ndarray, language: str | None, options, adapter: str | None = None) -> Iterator[dict]:
        """Raw segments of ``audio`` (times in seconds from its start), as faster-whisper decodes them (lazily)."""
        model = self.model_for(adapter)
        kw = fw_options(options, language)
        # the previous-text prompt takes up to half the decoder's positions (and 4 start tokens): what is left bounds
        # the new tokens, as on torch; None keeps faster-whisper's default on Whisper's 448 positions
        n = self.base.max_length
        room = n - n // 2 - 4
        if kw["max_new_tokens"] is not None or n < 448:
            kw["max_new_tokens"] = min(kw["max_new_tokens"] or room, room)
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if getattr(options, "long_form", "sequential") == "batched":
            from faster_whisper import BatchedInferencePipeline

            kw.update(vad_filter=True, temperature=kw["temperature"][:1], batch_size=options.batch_size)
            kw.pop("condition_on_previous_text")
            segments, _info = BatchedInferencePipeline(model).transcribe(audio, **kw)
        else:
            segments, _info = model.transcribe(audio, **kw)
        # temperature fallback samples. CTranslate2's generator is thread-local and seeded once, at its first use in
        # a model's worker thread, from the seed set last: a fixed seed makes a run's text the same run after run
        # (same files, same order, one worker), so a figure measured twice is the same figure
        import ctranslate2

        ctranslate2.set_random_seed(0)
        for s in segments:
            yield {
                "start": float(s.start),
                "end": float(s.end),
                "text": s.text.strip(),
                "avg_logprob": s.avg_logprob,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": s.no_speech_prob,
                "temperature": s.temperature,
                "words": None
                if s.words is None
                else [Word(float(w.start), float(w.end), w.word, float(w.probability)) for w in s.words],
            }

    # ---- inputs ---------------------------------------------------------------------------------------------------
    def claims(self, units: list[Unit], record: AdapterRecord, options) -> dict[int, float]:
        """How sure adapter ``record`` is of its own language on each unit (by ``id``), from its compiled model."""
        return {id(u): self.detect(u.piece.audio, None, adapter=record.ref).get(record.language, 0.0) for u in units}

    def detect_inputs(self, items: list, options, candidates) -> Iterator[tuple | FileError]:
        for item in items:
            try:
                audio = read(item, options)
            except AudioError as e:
                yield FileError(input_name(item), str(e))
                continue
            first = _head(audio, options)
            yield item, (self.detect(first.audio, candidates) if first is not None else {})

    def transcribe(self, items: list, options, router: Router) -> Iterator:
        """Inputs in input order; with ``workers`` > 1 that many decode at once on Python threads (CTranslate2 and
        the audio decoders release the GIL), one replica of the model each."""

        def final(item):
            return [r for r in self.stream(item, options, router) if not isinstance(r, Segment)][-1]

        workers, pool = min(self.workers, len(items)), None
        if workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(workers, thread_name_prefix="ct2-file")
        try:
            yield from pool.map(final, items) if pool else map(final, items)
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)

    def stream(self, item, options, router: Router) -> Iterator:
        """One input: detect on its first 30 s of speech (base model), route (the engine: adapter-consulted detection
        on compiled adapters when the base is unsure), decode the whole input with faster-whisper's ``transcribe`` on
        the routed model; segments come out as faster-whisper yields them."""
        try:
            audio = read(item, options)
        except AudioError as e:
            yield FileError(input_name(item), str(e))
            return
        duration = round(len(audio) / SAMPLE_RATE, 3)
        first = _head(audio, options)
        if first is None:
            yield router.result(item, [], [], duration, options, [])
            return
        unit = Unit(0, first)
        if not options.language:
            unit.probs = self.detect(first.audio, router.candidates(options))
        warnings: dict[int, list[str]] = {}
        router.route_units([unit], options, warnings)
        segs: list[Segment] = []
        options = decoding_for(self, unit.route.adapter, options)
        for raw in self.decode(audio, unit.route.language, options, unit.route.adapter):
            if not raw["text"] or (options.drop_failed and failed_window(raw, options)):
                continue
            seg = _segment(raw, unit, len(audio) / SAMPLE_RATE)
            segs.append(seg)
            yield seg
        yield router.result(item, [unit], segs, duration, options, warnings.get(0, []))


def _head(audio: np.ndarray, options) -> Piece | None:
    """The first 30 s (of speech, with VAD) that detection and routing look at; None when VAD finds no speech."""
    n = int(WINDOW_SECONDS * SAMPLE_RATE)
    if not options.vad:
        return Piece(audio[:n], 0.0)
    speech = join(pieces(audio[: 4 * n], 0.0, options, split=False), 0.0)
    return None if speech is None else head(speech)


def _segment(raw: dict, unit: Unit, length: float) -> Segment:
    """One faster-whisper segment as a row, inside the file (its words inside the segment)."""
    r = unit.route
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
    return Segment(
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
