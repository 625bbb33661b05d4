"""Bearer API keys for /v1/*: compared in constant time, every key every time."""

from __future__ import annotations

import hmac

from fastapi import Request

from app.errors import Unauthorized


def require_api_key(request: Request) -> None:
    keys: list[str] = request.app.state.runtime.settings.api_keys
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
    given = token.strip().encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    if not matched:
        raise Unauthorized("invalid API key: check the key in 'Authorization: Bearer <key>'")
