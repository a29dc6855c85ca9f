"""The admin endpoints (vLLM's names): ``POST /v1/load_lora_adapter`` pulls a Hub repo or imports a local folder
under ``--import-root`` into the registry, ``POST /v1/unload_lora_adapter`` removes an adapter. Both need the
server's API key (and are off without one)."""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) at runtime
import re
from pathlib import Path

from fastapi import APIRouter, Request

from .auth import check_admin
from .parsing import read_json, run_sync
from .responses import APIError

HUB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")

router = APIRouter()


@router.post("/v1/load_lora_adapter")
async def load_lora_adapter(request: Request):
    check_admin(request)
    body = await read_json(request)
    state = request.app.state
    rec = await run_sync(import_adapter, state.registry, state.options.import_roots, body)
    return {
        "message": f"Success: LoRA adapter {rec.name!r} added as {rec.ref}",
        "id": rec.name,
        "ref": rec.ref,
        "language": rec.language,
        "domain": rec.domain,
        "active": rec.active,
    }


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(request: Request):
    from ..adapters.registry import RegistryError

    check_admin(request)
    body = await read_json(request)
    name = body.get("lora_name")
    if not isinstance(name, str) or not name:
        raise APIError(400, "give lora_name (an adapter name, or name@version)", param="lora_name")
    try:
        removed = await run_sync(request.app.state.registry.remove, name)
    except RegistryError as e:
        status = 404 if "not found" in str(e) or "no version" in str(e) else 400
        raise APIError(status, str(e), param="lora_name", code="model_not_found" if status == 404 else None) from e
    return {"message": f"Success: LoRA adapter {name!r} removed", "removed": removed}


def import_adapter(registry, import_roots: list[str], body: dict):
    """The record filed for a load request's body: a local folder (only under ``import_roots``) or a Hub repo."""
    from ..adapters.hub import HubError, pull
    from ..adapters.registry import RegistryError

    name, path, language, domain = _load_request(body)
    if registry is None:
        raise APIError(400, "this server has no adapter registry")
    local = Path(path).expanduser()
    try:
        if local.is_absolute() or path.startswith(".") or local.exists():
            real = _local_folder(local, path, import_roots)
            return registry.import_folder(real, name=name, language=language, domain=domain)
        if not HUB_ID_RE.fullmatch(path):
            raise APIError(
                400,
                f"lora_path {path!r} is neither a local folder nor a Hub repo id (owner/name)",
                param="lora_path",
            )
        return pull(registry, path, name=name, language=language, domain=domain)
    except (RegistryError, HubError) as e:
        raise APIError(400, str(e), param="lora_path") from e


def _load_request(body: dict) -> tuple[str, str, str | None, str | None]:
    """(lora_name, lora_path, language, domain) of a load request, checked."""
    from ..adapters.registry import RegistryError, check_name

    name, path = body.get("lora_name"), body.get("lora_path")
    language, domain = body.get("language"), body.get("domain")
    for key, v in (("lora_name", name), ("lora_path", path), ("language", language), ("domain", domain)):
        if v is not None and not isinstance(v, str):
            raise APIError(400, f"{key} must be a string", param=key)
    if not name or not path:
        raise APIError(
            400,
            "give lora_name and lora_path (a local PEFT folder or a Hub repo id)",
            param="lora_name" if not name else "lora_path",
        )
    try:
        check_name(name)
    except RegistryError as e:
        raise APIError(400, str(e), param="lora_name") from e
    return name, path, language, domain


def _local_folder(local: Path, path: str, import_roots: list[str]) -> Path:
    """``local`` resolved, when it is a folder under one of ``import_roots``; 403 or 400 otherwise."""
    roots = [Path(r).resolve() for r in import_roots]
    real = local.resolve()
    if not any(real == r or r in real.parents for r in roots):
        raise APIError(
            403,
            f"lora_path {path!r}: local folders can only be imported from under "
            f"--import-root ({[str(r) for r in roots] or 'none configured'})",
            "permission_error",
            param="lora_path",
        )
    if not real.is_dir():
        raise APIError(400, f"lora_path {path!r}: not a folder", param="lora_path")
    return real
