"""The resident-adapter pool: adapters loaded into one peft model on the base, LRU with pins, combinations and merges.

Adapters in use by the current batch are pinned: eviction only touches unpinned ones, so a run (or a server batch)
may need any number of adapters whatever the cache size; the cache is over its size only while they are in use.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict

from ..adapters.registry import (
    AdapterRecord,
    Registry,
    RegistryError,
    ResolvesAdapters,
    check_adapter_files,
    check_base,
)

logger = logging.getLogger("lora_whisper")


def adapter_key(ref: str) -> str:
    """peft adapter names are module-dict keys: no dots."""
    return ref.replace(".", "_")


class AdapterPool(ResolvesAdapters):
    """Resident adapters of one base (one PeftModel), loaded lazily from the registry."""

    def __init__(self, base, registry: Registry | None = None, cache_size: int = 4):
        self.base = base
        self.registry = registry
        self.cache_size = max(1, cache_size)
        self.peft = None
        self.resident: OrderedDict[str, AdapterRecord] = OrderedDict()
        self.in_use: dict[str, int] = {}
        """Pin counts of resident keys (never evicted while > 0)."""
        self.extra: dict[str, AdapterRecord] = {}
        """Adapters resolvable without the registry (e.g. just trained, not yet filed)."""
        self._failed: dict[str, str] = {}
        self._merged_cache: tuple[str, object] | None = None
        self.stats = {"loads": 0, "evictions": 0, "swaps": 0}
        self._active: str | None = None

    # ---- loading -----------------------------------------------------------------------------------------------
    def load(self, record: AdapterRecord) -> str:
        """Make ``record`` resident (LRU) and return its peft adapter name.

        Raises:
            RegistryError / AdapterMismatchError: corrupt files, pickles, or another base.
        """
        key = adapter_key(record.ref)
        if key in self.resident:
            if _same_files(self.resident[key], record):
                self.resident.move_to_end(key)
                return key
            # the registry reuses a version number after a whole family was removed: drop the stale weights
            del self.resident[key]
            self.peft.delete_adapter(key)
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
        self.stats["loads"] += 1
        logger.debug("loaded adapter %s in %.0f ms", record.ref, 1000 * (time.perf_counter() - t))
        self._evict(keep=key)
        return key

    def _evict(self, keep: str | None = None) -> None:
        """Drop least recently used adapters beyond the cache size: never a pinned one, nor ``keep`` (just loaded)."""
        for old in list(self.resident):
            if len(self.resident) <= self.cache_size:
                return
            if self.in_use.get(old) or old == keep:
                continue
            del self.resident[old]
            self.peft.delete_adapter(old)
            self.stats["evictions"] += 1
            if self._merged_cache and self._merged_cache[0] == old:
                self._merged_cache = None

    def key_for(self, ref: str | None, combine: str | None = None, weights=(1.0, 1.0)) -> str | None:
        """The peft adapter name of a reference; a combination's name holds its method and weights."""
        if ref is None:
            return None
        if "+" in ref:
            return adapter_key(ref) + f"-{combine}-" + "-".join(adapter_key(f"{float(w):g}") for w in weights)
        return adapter_key(ref)

    def ensure(self, ref: str | None, combine: str | None = None, weights=(1.0, 1.0)) -> str | None:
        """The resident key of ``ref`` (a reference or ``a+b`` combination), loading it again if it was evicted."""
        if ref is None:
            return None
        key = self.key_for(ref, combine, weights)
        if key in self.resident:
            self.resident.move_to_end(key)
            return key
        if "+" in ref:
            self.combined(ref.split("+"), combine, weights)
        else:
            self.load(self.record(ref))
        return key

    # ---- pins and activation -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def using(self, keys):
        """Pin these resident keys (and the parts of combinations) while a batch uses them."""
        keys = [k for k in keys if k]
        for k in keys:
            self.in_use[k] = self.in_use.get(k, 0) + 1
        try:
            yield
        finally:
            for k in keys:
                self.in_use[k] -= 1
                if not self.in_use[k]:
                    del self.in_use[k]
            if self.peft is not None:
                self._evict()

    def active(self, key: str | None):
        """Context: one adapter active (hot swap), or none (the base)."""
        if key is None:
            return self.peft.disable_adapter() if self.peft is not None else contextlib.nullcontext()
        if self._active != key:
            self.stats["swaps"] += 1
            self._active = key
        self.peft.set_adapter(key)
        return contextlib.nullcontext()

    def rows(self, adapter_names: list[str]):
        """Context: a different adapter per batch row (peft adapter_names; "__base__" = none)."""
        return self.peft._enable_peft_forward_hooks(adapter_names=adapter_names)

    # ---- combinations and merges -------------------------------------------------------------------------------
    def combined(self, refs: list[str], combine: str, weights=(1.0, 1.0)) -> AdapterRecord:
        """A derived adapter combining resident ones (peft add_weighted_adapter), cached like any other."""
        key = self.key_for("+".join(refs), combine, weights)
        if key in self.resident:
            self.resident.move_to_end(key)
            return self.resident[key]
        recs = [self.record(r) for r in refs]
        keys = [self.load(r) for r in recs]
        with self.using(keys):
            kwargs = {"density": 0.5} if combine in ("ties", "dare_linear", "dare_ties") else {}
            self.peft.add_weighted_adapter(
                keys, list(weights)[: len(keys)], adapter_name=key, combination_type=combine, **kwargs
            )
        last = recs[-1]
        derived = AdapterRecord(
            name="+".join(r.name for r in recs),
            version=0,
            language=last.language,
            base=last.base,
            domain=last.domain,
            lora={
                "scope": "decoder" if all(r.decoder_only for r in recs) else "encoder+decoder",
                "combination": combine,
                "of": refs,
            },
        )
        self.resident[key] = derived
        self._evict(keep=key)
        return derived

    def merged(self, key: str):
        """Context yielding the model to decode with, the adapter merged into weights.

        float32 base: merge in place, unmerge after (exact), yields None (use the base model).
        8-bit base: a float32 copy with the adapter merged (cached for the next group), since merging into int8
        weights loses accuracy and unmerging does not restore them. Dynamic int8 base: the same copy, quantized
        afresh after the merge (its int8 kernels are built from the float weights once).
        """

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

        from ..base.loading import load_model

        self._merged_cache = None  # free the previous copy first
        # the resident adapter's LoRA weights (loaded or derived by combination) go onto a float32 base, then merge
        fp32 = load_model(self.base.path, "none", self.base.device)
        model = get_peft_model(fp32, self.peft.peft_config[key], adapter_name=key)
        set_peft_model_state_dict(model, get_peft_model_state_dict(self.peft, adapter_name=key), adapter_name=key)
        model = model.merge_and_unload()
        model.eval()
        if self.base.quantize == "dynamic":
            from ..base.int8 import dynamic_int8

            dynamic_int8(model)
        self._merged_cache = (key, model)
        return model


def _same_files(a: AdapterRecord, b: AdapterRecord) -> bool:
    """Whether two records of one reference are the same adapter (not a removed one filed again under its number)."""
    return a.created == b.created and str(a.path) == str(b.path)
