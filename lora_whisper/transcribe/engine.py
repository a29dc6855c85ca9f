"""The engine: inputs -> detect -> route -> decode -> rows, over one runtime.

The engine routes; the runtime (``runtime_protocol.Runtime``: ``runtime_torch.TorchRuntime`` or
``runtime_ct2.CT2Runtime``) does everything that differs between runtimes. The walk of one input: the engine checks
and validates the options and hands the input to ``runtime.stream`` (or a list to ``runtime.transcribe``); the runtime
reads it (in blocks when long), optionally keeps only speech (VAD), cuts it into units and detects the language on
its first 30 s of speech; it calls back ``route_units`` here (``routing.consult`` says which adapters may win,
``runtime.claims`` runs only those, ``routing.decide`` weighs their claims against the base's detection: pure
functions, docs/routing.md), decodes each unit with its routed
adapter, and has ``result`` here build the input's row. Segments come out as they are decoded (``stream``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from ..adapters.registry import AdapterRecord, Registry
from .audio import expand_inputs
from .options import LONG_FORM_MODES, TranscribeOptions
from .pool import adapter_key
from .results import Detection, FileError, Transcription
from .routing import Route, RouteRequest, consult, decide
from .runtime_protocol import Runtime
from .segments import Segment, Word
from .units import D, Unit, decoding_for, input_name

logger = logging.getLogger("lora_whisper")

__all__ = [
    "LONG_FORM_MODES",
    "Detection",
    "Engine",
    "FileError",
    "Segment",
    "TranscribeOptions",
    "Transcription",
    "Word",
    "adapter_key",
]


class Engine:
    """Inputs -> detect -> route -> decode -> rows, over one runtime (``runtime_protocol.Runtime``).

    ``Engine(base, registry)`` runs on the torch runtime (a loaded ``Base``); ``Engine(None, registry,
    runtime=CT2Runtime(...))`` on the CTranslate2 one (``runtime.build_engine`` picks). Routing (``routing.route``,
    adapter-consulted detection, the fallback to the base, combinations) and the rows are written here once; how
    inputs are cut, batched, detected and decoded is the runtime's (``transcribe`` / ``stream``), which calls back
    ``candidates``, ``route_units`` and ``result``.
    """

    def __init__(self, base, registry: Registry | None = None, cache_size: int = 4, runtime: Runtime | None = None):
        if runtime is None:
            from .runtime_torch import TorchRuntime

            runtime = TorchRuntime(base, registry, cache_size)
        self.runtime = runtime
        self.base = runtime.base
        self.registry = registry

    # kept for callers of the first release (the torch runtime's model work)
    @property
    def decoder(self):
        return self.runtime.decoder

    @property
    def pool(self):
        return self.runtime.pool

    @property
    def peft(self):
        return self.runtime.pool.peft

    def features(self, audios):
        return self.runtime.decoder.features(audios)

    def encode(self, features, adapter: str | None = None):
        with self.runtime.pool.active(adapter):
            return self.runtime.decoder.encode(features)

    @property
    def resident(self):
        """Resident adapters: peft adapter names (torch) or references of loaded compiled models (ct2)."""
        return self.runtime.resident

    def pin(self, record: AdapterRecord) -> None:
        """Make an adapter that is not (yet) in the registry resolvable by its reference (used after training)."""
        self.runtime.add(record)

    # ---- public API -------------------------------------------------------------------------------------------
    def detect(
        self, paths: list[str | Path], options: TranscribeOptions | None = None
    ) -> Iterator[Detection | FileError]:
        """Language probabilities per file, from its first 30 s (of speech, with ``vad``)."""
        options = options or TranscribeOptions()
        for got in self.runtime.detect_inputs(expand_inputs(paths), options, self.candidates(options)):
            if isinstance(got, FileError):
                yield got
                continue
            item, probs = got
            top = next(iter(probs), None)
            yield Detection(input_name(item), top, probs.get(top), dict(list(probs.items())[: options.top_k]))

    def transcribe(
        self,
        paths: list,
        options: TranscribeOptions | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[Transcription | FileError]:
        """Transcribe files (folders are expanded), yielding one result per file in input order."""
        options = self._checked(options)
        for res in self.runtime.transcribe(expand_inputs(paths), options, self):
            yield res
            if progress:
                progress(1)

    def stream(self, item, options: TranscribeOptions | None = None) -> Iterator[Segment | Transcription | FileError]:
        """Transcribe one input, yielding its segments as they are decoded, then the Transcription (or a FileError).

        Memory stays flat in the length of the audio: long files are read and decoded in blocks.
        """
        yield from self.runtime.stream(item, self._checked(options), self)

    def _checked(self, options: TranscribeOptions | None) -> TranscribeOptions:
        options = options or TranscribeOptions()
        self.runtime.check(options)
        options.validate(self.base.languages)
        return options

    # ---- routing: what the runtime calls back while it walks an input ------------------------------------------
    def candidates(self, options: TranscribeOptions) -> list[str] | None:
        """The languages detection is restricted to: ``languages``, plus the registry's when routing to adapters."""
        if not options.languages:
            return None
        extra = self.registry.languages() if (self.registry and options.adapter == "auto") else set()
        return sorted(set(options.languages) | extra)

    def route_units(self, units: list[Unit], options: TranscribeOptions, warnings: dict[int, list[str]]) -> None:
        """Give every unit its route: per file (from the file's first piece, as Whisper detects on its first 30 s
        of speech) or per unit (``per_segment``)."""
        records = self.registry.active() if (self.registry and options.adapter != "none") else []
        request = RouteRequest(options.adapter, options.domain, options.language, options.threshold)
        owners: dict = {}
        for j, u in enumerate(units):
            key = j if options.per_segment else u.file
            owners.setdefault(key, []).append(u)
        claims = self._consult(owners, records, options)
        for key, members in owners.items():
            r = decide(members[0].probs or None, claims.get(key, {}), records, request)
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
                self.runtime.combine([lang_rec.ref, rec.ref], options.combine, options.combine_weights)
                r.adapter = f"{lang_rec.ref}+{rec.ref}"
                r.reason += f" + {lang_rec.ref} ({options.combine})"
            except Exception as e:  # noqa: BLE001 - e.g. linear needs equal ranks: say so, keep the domain adapter
                warn.append(f"cannot combine {lang_rec.ref} and {rec.ref}: {str(e).splitlines()[0]}")
        return r

    def _consult(self, owners: dict, records: list[AdapterRecord], options: TranscribeOptions) -> dict:
        """Adapter-consulted detection: each candidate adapter that may win a unit (``routing.consult``) scores its
        own language on it (``runtime.claims``); ``routing.decide`` then weighs the claims. Returns, per owner key,
        adapter ref -> the adapter's probability of its own language; adapters that cannot win are never run."""
        if options.adapter != "auto" or options.language or not records:
            return {}
        domains = [options.domain] if isinstance(options.domain, str) else list(options.domain or [])
        cands = [r for r in records if r.active and ((r.domain in domains) if domains else not r.domain)]
        if options.languages:
            cands = [r for r in cands if r.language in options.languages]
        asked = {
            k: {r.ref for r in consult(m[0].probs, cands, options.consult_below)}
            for k, m in owners.items()
            if m[0].probs
        }
        out: dict = {}
        for rec in cands:
            keys = [k for k, refs in asked.items() if rec.ref in refs]
            if not keys or self.runtime.resolve(rec.ref)[0] is None:
                continue
            own = self.runtime.claims([owners[k][0] for k in keys], rec, options)
            for k in keys:
                out.setdefault(k, {})[rec.ref] = own[id(owners[k][0])]
        return out

    def decoding_for(self, ref: str | None, options: D) -> D:
        """``options`` for adapter ``ref`` (None: the base), with what its record files (``units.decoding_for``)."""
        return decoding_for(self.runtime, ref, options)

    def result(self, item, units: list[Unit], segs: list[Segment], duration: float, options, warnings) -> Transcription:
        """The row of one input: its first unit's route and probabilities (per-segment routing: the language spoken
        longest), every unit's adapter, the decoded segments, the warnings once each."""
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
            file=input_name(item),
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
