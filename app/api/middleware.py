"""Pure ASGI middleware: request ids, API keys and the body size limit (both before the body
is read), per-route request metrics and log line, `x-total-time` header, and a generic 500
for any unexpected error."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Sequence

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.auth import check_api_key, needs_key
from app.api.dialects import error_body_for
from app.errors import INTERNAL_ERROR_DETAIL, error_response_parts
from app.metrics import Metrics

log = logging.getLogger("app.access")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,200}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def printable(text: str) -> str:
    """Control characters as \\xNN, so a client cannot forge log lines (`%0A` in a path)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class ServingMiddleware:
    """Checks the API key, buffers the request body up to `max_body_bytes` (413 past it), and
    records every answer."""

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, metrics: Metrics,
        api_keys: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.api_keys = list(api_keys)

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

        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send_timed(message)

        path: str = scope["path"]
        try:
            if needs_key(path, self.api_keys):
                refused = check_api_key(headers.get(b"authorization", b"").decode("latin-1"),
                                        self.api_keys)
                if refused is not None:
                    self.metrics.failures.labels(reason=refused.reason).inc()
                    code, extra, body = error_response_parts(refused)
                    await _send_json(send_timed, code, error_body_for(path, code, body), extra)
                    return
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                await self._too_large(send_timed)
                return
            raw = await self._read_body(receive)
            if raw is None:
                await self._too_large(send_timed)
                return
            await self.app(scope, _replay(raw, receive), send_tracked)
        except Exception:
            if started:
                raise
            log.exception("unhandled error on %s %s", scope["method"], printable(path))
            self.metrics.failures.labels(reason="internal").inc()
            body = error_body_for(path, 500, {"detail": INTERNAL_ERROR_DETAIL})
            await _send_json(send_timed, 500, body, {})
        finally:
            route = _route_label(scope)
            elapsed = time.perf_counter() - start
            self.metrics.requests.labels(route=route, status=str(status)).inc()
            self.metrics.request_duration.labels(route=route).observe(elapsed)
            log.log(
                _level(route, status), "%s %s %d %.1fms request_id=%s",
                scope["method"], printable(path), status, elapsed * 1000, request_id,
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
        detail = (f"request body is larger than the limit of {self.max_body_bytes} bytes"
                  " (max_body_bytes); send fewer or shorter documents")
        await _send_json(send, 413, {"detail": detail}, {})


async def _send_json(send: Send, status: int, body: dict[str, object],
                     headers: dict[str, str]) -> None:
    """An answer sent before (or instead of) reading the body: the connection is closed after
    it, so an unread body cannot be taken for the next request."""
    data = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"connection", b"close"),
                *((k.encode(), v.encode()) for k, v in headers.items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


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
