"""Domain errors and the one table that maps them to HTTP status codes and JSON bodies.

Every error body has a `detail` string (what Jina, LangChain and Haystack clients read) that says
what to fix. Server-side failures never echo exception text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class RerankError(Exception):
    """Base of every error the service answers on purpose."""

    reason = "error"

    def __init__(self, detail: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = retry_after_s


class InvalidRequest(RerankError):
    reason = "invalid_request"


class MalformedBody(RerankError):
    reason = "invalid_json"


class UnsupportedMediaType(RerankError):
    reason = "unsupported_media_type"


class ModelNotServed(RerankError):
    reason = "model_not_served"


class RequestTooLarge(RerankError):
    reason = "request_too_large"


class Unauthorized(RerankError):
    reason = "unauthorized"


class QueueFull(RerankError):
    reason = "queue_full"


class NotReady(RerankError):
    reason = "not_ready"


class DeadlineExceeded(RerankError):
    reason = "deadline_exceeded"


class InferenceFailed(RerankError):
    """A batch carrying this request's items failed; the detail is generic on purpose."""

    reason = "inference_failed"

    def __init__(self) -> None:
        super().__init__("internal error while scoring this request; it is safe to retry")


class ModelUnavailable(Exception):
    """The model cannot be found or loaded; raised at start-up, never per request."""


@dataclass(frozen=True)
class ErrorSpec:
    status: int
    headers: tuple[tuple[str, str], ...] = ()


ERROR_TABLE: dict[type[RerankError], ErrorSpec] = {
    InvalidRequest: ErrorSpec(422),
    MalformedBody: ErrorSpec(400),
    UnsupportedMediaType: ErrorSpec(415),
    ModelNotServed: ErrorSpec(404),
    RequestTooLarge: ErrorSpec(413),
    Unauthorized: ErrorSpec(401, (("www-authenticate", "Bearer"),)),
    QueueFull: ErrorSpec(429),
    NotReady: ErrorSpec(503),
    DeadlineExceeded: ErrorSpec(504),
    InferenceFailed: ErrorSpec(500),
}

INTERNAL_ERROR_DETAIL = "internal server error"


def error_response_parts(exc: RerankError) -> tuple[int, dict[str, str], dict[str, object]]:
    """(status, headers, body) for a domain error, from ERROR_TABLE."""
    spec = next(
        (ERROR_TABLE[cls] for cls in type(exc).__mro__ if cls in ERROR_TABLE),
        ErrorSpec(500),
    )
    headers = dict(spec.headers)
    if exc.retry_after_s is not None:
        # Retry-After is whole seconds (rounded up, so a client that honours it does not come
        # back too early); retry-after-ms, which OpenAI's and Azure's clients read, is exact.
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after_s)))
        headers["retry-after-ms"] = str(max(1, math.ceil(exc.retry_after_s * 1000)))
    return spec.status, headers, {"detail": exc.detail}
