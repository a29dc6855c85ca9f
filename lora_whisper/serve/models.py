"""The ``model`` names a server answers to: ``auto``, ``base`` (or the base's hub id) and every adapter of its
registry. Builds the cards of ``/v1/models`` and resolves a request's ``model`` field to an engine adapter option.
The registry folder is read on every call, so adapters filed, pulled or removed elsewhere are seen at once."""

from __future__ import annotations

import logging
import time

from .responses import APIError

logger = logging.getLogger("lora_whisper")


def model_cards(registry, base_id: str) -> list[dict]:
    """``auto``, ``base`` and one card per active adapter of ``registry`` (None: no adapters)."""
    now = int(time.time())
    common = {"object": "model", "created": now, "owned_by": "lora-whisper", "root": base_id}
    cards = [
        {"id": "auto", **common, "description": "detect the language, route to its adapter (or the base)"},
        {"id": "base", **common, "aliases": [base_id]},
    ]
    if registry is None:
        return cards
    records, _ = registry.scan()  # a bad or foreign adapter is skipped; scan warns once per process
    return cards + [_adapter_card(r, records, base_id, now) for r in records if r.active]


def _adapter_card(r, records, base_id: str, now: int) -> dict:
    m = r.metrics or {}
    return {
        "id": r.name,
        "ref": r.ref,
        "object": "model",
        "created": _epoch(r.created, now),
        "owned_by": "lora-whisper",
        "root": base_id,
        "parent": "base",
        "version": r.version,
        "versions": [x.version for x in records if x.name == r.name],
        "language": r.language,
        "domain": r.domain,
        "scope": r.lora.get("scope"),
        "wer_before": (m.get("before") or {}).get("wer"),
        "wer_after": (m.get("after") or {}).get("wer"),
        "metrics": m,
        "source": r.source,
    }


def find_card(cards: list[dict], model_id: str, base_id: str) -> dict:
    """The card ``model_id`` names (an id, an adapter ref, or the base's hub id); 404 listing the valid ids."""
    for c in cards:
        if model_id in (c["id"], c.get("ref")) or (model_id == base_id and c["id"] == "base"):
            return c
    raise APIError(
        404,
        f"model {model_id!r} not found; valid models: {[c['id'] for c in cards]}",
        param="model",
        code="model_not_found",
    )


def resolve_model(registry, base_id: str, name: str) -> tuple[str, str]:
    """(adapter option, metrics label) for a ``model`` field; 404 listing the valid models."""
    from ..adapters.registry import RegistryError

    if name == "auto":
        return "auto", "auto"
    if name in ("base", base_id):
        return "none", "base"
    why = ""
    if registry is not None:
        try:
            rec = registry.get(name)
            return rec.ref, rec.name
        except RegistryError as e:
            why = f" ({e})" if "not usable" in str(e) else ""
    valid = ["auto", "base", base_id]
    if registry is not None:
        recs = registry.list()
        valid += sorted({r.name for r in recs}) + [r.ref for r in recs]
    raise APIError(404, f"model {name!r} not found{why}; valid models: {valid}", param="model", code="model_not_found")


def _epoch(created: str, default: int) -> int:
    import datetime as dt

    try:
        return int(dt.datetime.fromisoformat(created).timestamp())
    except (TypeError, ValueError):
        return default
