"""Who may call what: the bearer API key every endpoint but ``/health`` checks when one is set, and the admin
endpoints, which are off without a key."""

from __future__ import annotations

import hmac

from .responses import APIError

API_KEY_ENV = "LORA_WHISPER_API_KEY"


def check_auth(request) -> None:
    """APIError(401) unless the request carries the server's key (no key configured: everyone may call)."""
    key = request.app.state.options.api_key
    if not key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")


def check_admin(request) -> None:
    """APIError(403) when the server has no key (admin endpoints off), else as :func:`check_auth`."""
    if not request.app.state.options.api_key:
        raise APIError(
            403,
            f"admin endpoints are off: start the server with an API key ({API_KEY_ENV} or --api-key-file)",
            "permission_error",
        )
    check_auth(request)
