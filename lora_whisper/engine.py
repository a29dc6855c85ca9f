"""The engine: one base, adapters cached in one peft model, detect -> route -> swap -> generate, batched."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, AudioError, Chunk, chunk_audio, expand_inputs, load_audio
from .base import Base
from .registry import AdapterRecord, Registry, RegistryError, check_adapter_files, check_base
from .routing import Route, RouteRequest, route

logger = logging.getLogger("lora_whisper")


@dataclass
class TranscribeOptions:
    """Options of a transcription run."""

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
    """Detect and route every 30 s chunk on its own (code-switched recordings)."""
    batch_size: int = 8
    """Chunks per encoder / generate call."""
    beam_size: int = 1
    """1 = greedy."""
    max_new_tokens: int = 440
    """Token limit per chunk (Whisper's context is 448 including the prompt)."""
    top_k: int = 5
    """Language probabilities reported per file."""
    merge: bool = False
    """Merge an adapter into the weights while a group of chunks uses it (into a float32 copy when the base is 8-bit:
    merging into int8 weights loses accuracy, FACTS.md), unmerge after."""
    combine: str | None = None
    """With --domain: combine the language adapter and the domain adapter (peft add_weighted_adapter: linear, cat,
    ties) into one derived adapter, cached."""
    combine_weights: tuple[float, float] = (1.0, 1.0)
    """Weights of (language adapter, domain adapter) in the combination."""
    consult_below: float = 0.8
    """When the base's top language probability is below this, ask the candidate adapters: one trained with its
    language token in the labels recognises its own acoustic domain (synthetic voices fool the base). 0 disables."""
    batching: str = "grouped"
    """'grouped': one generate per adapter (set_adapter between groups); 'mixed': rows of different adapters in one
    generate call (peft adapter_names=)."""


@dataclass
class Segment:
    """One chunk of a file, as transcribed."""

    start: float
    end: float
    text: str
    language: str | None
    language_probability: float | None
    adapter: str | None
    merged: bool = False


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


def adapter_key(ref: str) -> str:
    """peft adapter names are module-dict keys: no dots."""
    return ref.replace(".", "_")


class Engine:
    """Owns the base and the resident adapters (LRU); applies routes; batches work."""

    def __init__(self, base: Base, registry: Registry | None = None, cache_size: int = 4):
        self.base = base
        self.registry = registry
        self.cache_size = cache_size
        self.peft = None
        self.resident: OrderedDict[str, AdapterRecord] = OrderedDict()
        self._failed: dict[str, str] = {}
        self.pinned: dict[str, AdapterRecord] = {}
        self._merged_cache: tuple[str, object] | None = None
        tok = base.processor.tokenizer
        self.sot = tok.convert_tokens_to_ids("<|startoftranscript|>")
        self.dtype = base.model.model.encoder.conv1.weight.dtype

    # ---- adapters ------------------------------------------------------------------------------------------
    def load_adapter(self, record: AdapterRecord) -> str:
        """Make ``record`` resident (lazily, LRU) and return its peft adapter name.

        Raises:
            RegistryError / AdapterMismatchError: corrupt files, pickles, or another base.
        """
        key = adapter_key(record.ref)
        if key in self.resident:
            self.resident.move_to_end(key)
            return key
        check_base(record, self.base.identity.to_dict())
        check_adapter_files(record.path)
        from peft import PeftModel

        t = time.perf_counter()
        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(
                    self.base.model, str(record.path), adapter_name=key, is_trainable=False
                )
                self.peft.eval()
            else:
                self.peft.load_adapter(str(record.path), adapter_name=key, is_trainable=False)
        except Exception as e:  # noqa: BLE001 - peft/safetensors raise many kinds; report one line
            raise RegistryError(
                f"adapter {record.ref}: cannot load ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            ) from e
        self.resident[key] = record
        logger.debug("loaded adapter %s in %.0f ms", record.ref, 1000 * (time.perf_counter() - t))
        while len(self.resident) > self.cache_size:
            old, _ = self.resident.popitem(last=False)
            self.peft.delete_adapter(old)
        return key

    def _set(self, key: str | None):
        """Activate one adapter (hot swap) or none; returns a context manager."""
        import contextlib

        if key is None:
            return self.peft.disable_adapter() if self.peft is not None else contextlib.nullcontext()
        self.peft.set_adapter(key)
        return contextlib.nullcontext()

    def combined(self, refs: list[str], options: TranscribeOptions) -> AdapterRecord:
        """A derived adapter combining resident ones (peft add_weighted_adapter), cached like any other."""
        key = self._key_for("+".join(refs), options)
        if key in self.resident:
            self.resident.move_to_end(key)
            return self.resident[key]
        recs = [self.registry.get(r) if r not in self.pinned else self.pinned[r] for r in refs]
        keys = [self.load_adapter(r) for r in recs]
        kwargs = {"density": 0.5} if options.combine in ("ties", "dare_linear", "dare_ties") else {}
        self.peft.add_weighted_adapter(
            keys,
            list(options.combine_weights)[: len(keys)],
            adapter_name=key,
            combination_type=options.combine,
            **kwargs,
        )
        first = recs[-1]
        derived = AdapterRecord(
            name="+".join(r.name for r in recs),
            version=0,
            language=first.language,
            base=first.base,
            domain=first.domain,
            lora={
                "scope": "decoder" if all(r.decoder_only for r in recs) else "encoder+decoder",
                "combination": options.combine,
                "of": refs,
            },
        )
        self.resident[key] = derived
        return derived

    def pin(self, record: AdapterRecord) -> None:
        """Make an adapter that is not (yet) in the registry resolvable by its reference (used after training)."""
        self.pinned[record.ref] = record

    def resolve(self, ref: str) -> tuple[AdapterRecord | None, str | None]:
        """Find and load an adapter; on failure return (None, warning) so the run goes on with the base."""
        if ref in self._failed:
            return None, self._failed[ref]
        try:
            if ref in self.pinned:
                rec = self.pinned[ref]
            elif self.registry is None:
                raise RegistryError(f"adapter {ref!r}: no registry")
            else:
                rec = self.registry.get(ref)
            self.load_adapter(rec)
            return rec, None
        except RegistryError as e:
            msg = f"{e}; using the base instead"
            self._failed[ref] = msg
            logger.warning(msg)
            return None, msg

    # ---- model steps ---------------------------------------------------------------------------------------
    def features(self, audios: list[np.ndarray]):
        fe = self.base.processor.feature_extractor
        f = fe(audios, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        return f.to(self.base.device, self.dtype)

    def encode(self, features, adapter: str | None = None, model=None):
        import torch

        if model is not None:
            with torch.inference_mode():
                return model.model.encoder(features.float()).last_hidden_state
        with torch.inference_mode(), self._set(adapter):
            return self.base.model.model.encoder(features).last_hidden_state

    def encode_rows(self, features, adapter_names: list[str]):
        """Encoder pass with a different adapter per row (peft adapter_names; "__base__" = none)."""
        import torch

        with torch.inference_mode(), self.peft._enable_peft_forward_hooks(adapter_names=adapter_names):
            return self.base.model.model.encoder(features).last_hidden_state

    def language_probs(
        self, encoded, candidates: list[str] | None = None, adapter: str | None = None
    ) -> list[dict[str, float]]:
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
        with torch.inference_mode(), self._set(adapter):
            logits = self.base.model(encoder_outputs=(encoded,), decoder_input_ids=start).logits[:, -1]
        probs = logits.float()[:, ids].softmax(-1).cpu().numpy()
        return [dict(sorted(zip(names, map(float, row)), key=lambda kv: -kv[1])) for row in probs]

    def generate(
        self,
        encoded,
        languages: list[str | None],
        adapter: str | None,
        options: TranscribeOptions,
        model=None,
        adapter_names: list[str] | None = None,
    ) -> list[str]:
        """Greedy/beam decoding from encoder output, in each row's language, with one adapter, per-row adapters
        (``adapter_names``), or a separate merged ``model``."""
        import contextlib

        import torch
        from transformers.modeling_outputs import BaseModelOutput

        kwargs = dict(task="transcribe") if self.base.languages else {}
        if self.base.languages:
            kwargs["language"] = languages if len(set(languages)) > 1 else languages[0]
        if adapter_names is not None:
            ctx = self.peft._enable_peft_forward_hooks(adapter_names=adapter_names)
        elif model is not None:
            ctx = contextlib.nullcontext()
        else:
            ctx = self._set(adapter)
        with torch.inference_mode(), ctx:
            out = (model or self.base.model).generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=encoded.float() if model is not None else encoded),
                num_beams=options.beam_size,
                # the prompt (<|sot|><|lang|><|task|><|notimestamps|>) shares the decoder's context with the text
                max_new_tokens=min(options.max_new_tokens, self.base.model.config.max_target_positions - 4),
                **kwargs,
            )
        seqs = out.sequences if hasattr(out, "sequences") else out
        return [t.strip() for t in self.base.processor.tokenizer.batch_decode(seqs, skip_special_tokens=True)]

    # ---- pipelines -----------------------------------------------------------------------------------------
    def _candidates(self, options: TranscribeOptions) -> list[str] | None:
        if not options.languages:
            return None
        extra = self.registry.languages() if (self.registry and options.adapter == "auto") else set()
        return sorted(set(options.languages) | extra)

    def _load_all(self, paths: list[Path], errors: dict[int, FileError]) -> dict[int, np.ndarray]:
        audios = {}
        for i, p in enumerate(paths):
            try:
                audios[i] = p[1] if isinstance(p, tuple) else load_audio(p)
            except AudioError as e:
                errors[i] = FileError(_name(p), str(e))
        return audios

    def detect(
        self, paths: list[str | Path], options: TranscribeOptions | None = None
    ) -> Iterator[Detection | FileError]:
        """Language probabilities per file (mean over its 30 s chunks); one encoder pass per chunk."""
        options = options or TranscribeOptions()
        candidates = self._candidates(options)
        for group in _groups(expand_inputs(paths), options.batch_size):
            errors: dict[int, FileError] = {}
            audios = self._load_all(group, errors)
            chunks = [(i, c) for i, a in audios.items() for c in chunk_audio(a)]
            probs = {}
            for sub in _batches(chunks, options.batch_size):
                enc = self.encode(self.features([c.audio for _, c in sub]))
                for (i, _c), p in zip(sub, self.language_probs(enc, candidates)):
                    probs.setdefault(i, []).append(p)
            for i, p in enumerate(group):
                if i in errors:
                    yield errors[i]
                    continue
                mean = _mean_probs(probs[i])
                top = next(iter(mean), None)
                yield Detection(_name(p), top, mean.get(top), dict(list(mean.items())[: options.top_k]))

    def transcribe(
        self,
        paths: list[str | Path],
        options: TranscribeOptions | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[Transcription | FileError]:
        """Transcribe files (folders are expanded), yielding one result per file in input order."""
        options = options or TranscribeOptions()
        files = expand_inputs(paths)
        for group in _groups(files, max(options.batch_size, 1) * 2):
            yield from self._transcribe_group(group, options)
            if progress:
                progress(len(group))

    def _transcribe_group(self, group: list[Path], options: TranscribeOptions) -> list[Transcription | FileError]:
        errors: dict[int, FileError] = {}
        audios = self._load_all(group, errors)
        chunks: list[tuple[int, Chunk]] = [(i, c) for i, a in audios.items() for c in chunk_audio(a)]
        if not chunks:
            return [errors[i] for i in range(len(group))]
        records = self.registry.active() if (self.registry and options.adapter != "none") else []
        request = RouteRequest(options.adapter, options.domain, options.language, options.threshold)
        candidates = self._candidates(options)
        feats = [None] * len(chunks)
        base_enc = [None] * len(chunks)
        probs: list[dict[str, float] | None] = [None] * len(chunks)
        for idx in _batches(list(range(len(chunks))), options.batch_size):
            f = self.features([chunks[j][1].audio for j in idx])
            enc = self.encode(f)
            p = self.language_probs(enc, candidates) if not options.language else [None] * len(idx)
            for k, j in enumerate(idx):
                feats[j], base_enc[j], probs[j] = f[k : k + 1], enc[k : k + 1], p[k]

        # route per file (mean of its chunks' probabilities) or per chunk
        file_probs = {i: _mean_probs([probs[j] for j, (fi, _) in enumerate(chunks) if fi == i]) for i in audios}
        routes: list[Route] = []
        warnings: dict[int, list[str]] = {i: [] for i in audios}
        adapter_enc: dict = {}
        consulted = self._consult(chunks, feats, base_enc, probs, file_probs, records, options, adapter_enc)
        for j, (i, _) in enumerate(chunks):
            if (j if options.per_segment else i) in consulted:
                routes.append(consulted[j if options.per_segment else i])
                continue
            r = route(probs[j] if options.per_segment else file_probs[i] or None, records, request)
            if r.adapter is not None:
                rec, warn = self.resolve(r.adapter)
                if rec is None:
                    warnings[i].append(warn)
                    r = Route(r.language, r.probability, None, warn)
                else:
                    r.adapter = rec.ref
                    lang_rec = (
                        self.registry.find(r.language) if (self.registry and options.combine and rec.domain) else None
                    )
                    if lang_rec is not None and lang_rec.ref != rec.ref and options.adapter == "auto":
                        try:
                            self.combined([lang_rec.ref, rec.ref], options)
                            r.adapter, r.reason = (
                                f"{lang_rec.ref}+{rec.ref}",
                                r.reason + f" + {lang_rec.ref} ({options.combine})",
                            )
                        except Exception as e:  # noqa: BLE001 - e.g. linear needs equal ranks: say so, keep the domain adapter
                            warnings[i].append(f"cannot combine {lang_rec.ref} and {rec.ref}: {str(e).splitlines()[0]}")
            routes.append(r)

        texts, merged = self._generate_routes(chunks, feats, base_enc, routes, options, adapter_enc)

        results: list[Transcription | FileError] = []
        for i, path in enumerate(group):
            if i in errors:
                results.append(errors[i])
                continue
            js = [j for j, (fi, _) in enumerate(chunks) if fi == i]
            segs = [
                Segment(
                    chunks[j][1].start,
                    chunks[j][1].end,
                    texts[j],
                    routes[j].language,
                    routes[j].probability,
                    routes[j].adapter,
                    merged[j],
                )
                for j in js
            ]
            first = routes[js[0]]
            lang_counts = {}
            for s in segs:
                lang_counts[s.language] = lang_counts.get(s.language, 0) + (s.end - s.start)
            language = max(lang_counts, key=lang_counts.get) if options.per_segment else first.language
            prob = (
                first.probability
                if not options.per_segment
                else (file_probs[i].get(language) if file_probs[i] else None)
            )
            adapters = {s.adapter for s in segs}
            results.append(
                Transcription(
                    file=_name(path),
                    text=" ".join(s.text for s in segs if s.text).strip(),
                    language=language,
                    language_probability=prob,
                    adapter=first.adapter if len(adapters) == 1 else ",".join(sorted(a or "base" for a in adapters)),
                    merged=any(s.merged for s in segs),
                    duration=round(len(audios[i]) / SAMPLE_RATE, 3),
                    languages=dict(list(file_probs[i].items())[: options.top_k]) if file_probs[i] else {},
                    route=first.reason,
                    segments=segs,
                    warnings=list(dict.fromkeys(warnings[i])),
                )
            )
        return results

    # ---- generation strategies -----------------------------------------------------------------------------------
    def _key_for(self, ref: str | None, options: TranscribeOptions) -> str | None:
        if ref is None:
            return None
        if "+" in ref:
            return adapter_key(ref) + f"-{options.combine}"
        return adapter_key(ref)

    def _consult(self, chunks, feats, base_enc, probs, file_probs, records, options, adapter_enc) -> dict[int, Route]:
        """Adapter-consulted detection for files (or chunks) the base is unsure about.

        Each candidate adapter (the requested domain's, else the language adapters) scores its own language on the
        audio; the best one at 0.5 or more wins. Its encoder output is kept for transcription (no second pass).
        """
        import torch

        if options.adapter != "auto" or options.language or not records or options.consult_below <= 0:
            return {}
        domains = [options.domain] if isinstance(options.domain, str) else list(options.domain or [])
        cands = [r for r in records if r.active and ((r.domain in domains) if domains else not r.domain)]
        if options.languages:
            cands = [r for r in cands if r.language in options.languages]
        units = {}  # unit (file or chunk) -> chunk indices
        for j, (i, _) in enumerate(chunks):
            u = j if options.per_segment else i
            top = probs[j] if options.per_segment else file_probs[i]
            if top and max(top.values()) < options.consult_below:
                units.setdefault(u, []).append(j)
        if not units or not cands:
            return {}
        js = sorted(j for v in units.values() for j in v)
        best: dict[int, tuple[float, AdapterRecord]] = {}
        for rec in cands:
            got, _warn = self.resolve(rec.ref)
            if got is None:
                continue
            key = adapter_key(rec.ref)
            own = {}
            for idx in _batches(js, options.batch_size):
                if rec.decoder_only:
                    enc = torch.cat([base_enc[j] for j in idx])
                else:
                    enc = self.encode(torch.cat([feats[j] for j in idx]), key)
                    for k, j in enumerate(idx):
                        adapter_enc[(j, key)] = enc[k : k + 1]
                for j, p in zip(idx, self.language_probs(enc, None, key)):
                    own[j] = p.get(rec.language, 0.0)
            for u, members in units.items():
                score = sum(own[j] for j in members) / len(members)
                if score >= 0.5 and score > best.get(u, (0.0, None))[0]:
                    best[u] = (score, rec)
        out = {}
        for u, (score, rec) in best.items():
            base_top = probs[u] if options.per_segment else file_probs[u]
            lang0 = max(base_top, key=base_top.get)
            out[u] = Route(
                rec.language,
                score,
                rec.ref,
                f"base unsure ({lang0} {base_top[lang0]:.2f}); adapter {rec.ref} recognises {rec.language} ({score:.2f})",
            )
        return out

    def _generate_routes(self, chunks, feats, base_enc, routes, options: TranscribeOptions, adapter_enc=None):
        """Texts (and merged flags) for every chunk, grouped by adapter or in mixed batches."""
        import torch

        texts, merged = [""] * len(chunks), [False] * len(chunks)
        if options.batching == "mixed" and not options.merge and len({r.adapter for r in routes}) > 1:
            for idx in _batches(list(range(len(chunks))), options.batch_size):
                keys = [self._key_for(routes[j].adapter, options) for j in idx]
                recs = [self.resident.get(k) if k else None for k in keys]
                enc_names = [k if (r is not None and not r.decoder_only) else "__base__" for k, r in zip(keys, recs)]
                if any(n != "__base__" for n in enc_names):
                    enc = self.encode_rows(torch.cat([feats[j] for j in idx]), enc_names)
                else:
                    enc = torch.cat([base_enc[j] for j in idx])
                out = self.generate(
                    enc, [routes[j].language for j in idx], None, options, adapter_names=[k or "__base__" for k in keys]
                )
                for j, t in zip(idx, out):
                    texts[j] = t
            return texts, merged
        for ref in dict.fromkeys(r.adapter for r in routes):
            members = [j for j, r in enumerate(routes) if r.adapter == ref]
            key = self._key_for(ref, options)
            rec = self.resident.get(key) if key else None
            merge = bool(options.merge and key)
            with self._merged(key) if merge else _null() as model:
                for idx in _batches(members, options.batch_size):
                    if model is not None:  # a merged float32 copy: its own encoder and decoder
                        enc = self.encode(torch.cat([feats[j] for j in idx]), model=model)
                    elif rec is None or rec.decoder_only:
                        enc = torch.cat([base_enc[j] for j in idx])  # the encoder is unchanged: reuse its pass
                    elif adapter_enc and all((j, key) in adapter_enc for j in idx):
                        enc = torch.cat([adapter_enc[(j, key)] for j in idx])  # computed while consulting
                    else:
                        enc = self.encode(torch.cat([feats[j] for j in idx]), key)
                    out = self.generate(enc, [routes[j].language for j in idx], key, options, model=model)
                    for j, t in zip(idx, out):
                        texts[j], merged[j] = t, merge
        return texts, merged

    def _merged(self, key: str):
        """Context: the adapter merged into weights. float32 base: merge in place, unmerge after (exact).
        8-bit base: a float32 copy with the adapter merged (cached for the next group), since merging into int8
        weights loses accuracy and unmerging does not restore them (FACTS.md)."""
        import contextlib

        @contextlib.contextmanager
        def in_place():
            self.peft.set_adapter(key)
            self.peft.merge_adapter([key])
            try:
                yield None
            finally:
                self.peft.unmerge_adapter()

        if self.base.quantize == "none":
            return in_place()
        return contextlib.nullcontext(self._merged_copy(key))

    def _merged_copy(self, key: str):
        if self._merged_cache and self._merged_cache[0] == key:
            return self._merged_cache[1]
        from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

        from .base import load_model

        self._merged_cache = None  # free the previous copy first
        # the resident adapter's LoRA weights (loaded or derived by combination) go onto a float32 base, then merge
        fp32 = load_model(self.base.path, "none", self.base.device)
        model = get_peft_model(fp32, self.peft.peft_config[key], adapter_name=key)
        set_peft_model_state_dict(model, get_peft_model_state_dict(self.peft, adapter_name=key), adapter_name=key)
        model = model.merge_and_unload()
        model.eval()
        self._merged_cache = (key, model)
        return model


def _null():
    import contextlib

    return contextlib.nullcontext(None)


def _name(item) -> str:
    return item[0] if isinstance(item, tuple) else str(item)


def _groups(items: list, n: int) -> Iterator[list]:
    for k in range(0, len(items), n):
        yield items[k : k + n]


_batches = _groups


def _mean_probs(rows: list[dict[str, float] | None]) -> dict[str, float]:
    rows = [r for r in rows if r]
    if not rows:
        return {}
    keys = rows[0].keys()
    mean = {k: sum(r.get(k, 0.0) for r in rows) / len(rows) for k in keys}
    return dict(sorted(mean.items(), key=lambda kv: -kv[1]))
