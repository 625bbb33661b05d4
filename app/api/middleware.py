"""Pure ASGI middleware: request ids, body size limit, per-route request metrics and log
line, `x-total-time` header."""

from __future__ import annotations

import logging
import re
import time
import uuid

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import Metrics

log = logging.getLogger("app.access")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,200}")


class ServingMiddleware:
    """Buffers the request body up to `max_body_bytes` (413 past it) and records every answer."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        headers = dict(scope["headers"])
        sent_id = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = sent_id if _REQUEST_ID.fullmatch(sent_id) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_timed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                elapsed_ms = (time.perf_counter() - start) * 1000.0
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-total-time", f"{elapsed_ms:.2f}".encode()),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                await self._too_large(send_timed)
                return
            body = await self._read_body(receive)
            if body is None:
                await self._too_large(send_timed)
                return
            await self.app(scope, _replay(body, receive), send_timed)
        finally:
            route = _route_label(scope)
            elapsed = time.perf_counter() - start
            self.metrics.requests.labels(route=route, status=str(status)).inc()
            self.metrics.request_duration.labels(route=route).observe(elapsed)
            log.log(
                _level(route, status), "%s %s %d %.1fms request_id=%s",
                scope["method"], scope["path"], status, elapsed * 1000, request_id,
            )

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _too_large(self, send: Send) -> None:
        body = orjson.dumps(
            {
                "detail": f"request body is larger than the limit of {self.max_body_bytes} bytes"
                " (max_body_bytes); send fewer or shorter documents"
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    """Hand the buffered body to the app once, then pass through (to see disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


_PROBES = frozenset({"/health", "/ready", "/metrics"})


def _level(route: str, status: int) -> int:
    """Probes and scrapes (every few seconds, by design) only at debug level."""
    if route in _PROBES:
        return logging.DEBUG
    return logging.WARNING if status >= 500 else logging.INFO


def _route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
