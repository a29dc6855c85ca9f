"""Routes and units (steps 3 and 4 of the flow): the route every file takes when it does not depend on the audio
(``_static_route``; else a detection pass is needed), and ``make_units``, which cuts items sorted by route into the
units Ray Data carries: at most ``--batch-size`` files each, never two routes in one."""

from __future__ import annotations

from .options import Item


def _static_route(options, registry: str | None) -> str | None:
    """The route every file takes when it does not depend on the audio, else None (detection needed)."""
    if options.adapter == "none":
        return "base"
    if options.adapter not in ("auto", None, ""):
        return options.adapter
    if registry is None:
        return "base"
    from ..adapters.registry import Registry

    records = Registry(registry).active()
    if not records:
        return "base"
    if options.language:
        from ..transcribe.routing import RouteRequest, route

        r = route(None, records, RouteRequest(options.adapter, options.domain, options.language, options.threshold))
        return r.adapter or "base"
    return None


def make_units(items: list[Item], routes: dict[str, str], batch_size: int, **settings) -> list[dict]:
    """Cut items (sorted by route, then input order) into units of at most ``batch_size`` that never mix routes.

    ``settings`` go into every unit for the decode task: ``head_seconds`` (keep only the start: detection),
    ``check_silence`` (False with VAD, as the engine does)."""
    order = sorted(items, key=lambda it: (routes.get(it.key, "base") != "base", routes.get(it.key, "base"), it.index))
    units: list[dict] = []
    for it in order:
        r = routes.get(it.key, "base")
        if not units or units[-1]["route"] != r or len(units[-1]["keys"]) >= batch_size:
            units.append(
                {"route": r, "keys": [], "indices": [], "files": [], "ids": [], "paths": [], "data": [], "errors": []}
                | settings
            )
        u = units[-1]
        u["keys"].append(it.key)
        u["indices"].append(it.index)
        u["files"].append(it.file)
        u["ids"].append(it.id or "")
        u["paths"].append(it.path or "")
        u["data"].append(it.data or b"")
        u["errors"].append(it.error or "")
    return units
