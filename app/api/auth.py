"""Bearer API keys: compared in constant time, every key every time, before the body is read.

Every route needs a key when keys are set, except the probes, the metrics scrape and the API
documentation (OPEN_PATHS): orchestrators and Prometheus call those without credentials."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from app.errors import Unauthorized

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics", "/docs", "/openapi.json"})
OPEN_PREFIX = "/docs/assets/"
"""Swagger UI's own files (app/api/docs.py)."""


def needs_key(path: str, keys: Sequence[str]) -> bool:
    return bool(keys) and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIX)


def check_api_key(authorization: str, keys: Sequence[str]) -> Unauthorized | None:
    """None when the `Authorization` header carries one of the keys; else the error to send."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return Unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
    given = token.strip().encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    if not matched:
        return Unauthorized("invalid API key: check the key in 'Authorization: Bearer <key>'")
    return None
