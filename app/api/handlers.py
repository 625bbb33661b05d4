"""Exception handlers: every error leaves as one JSON shape with a `detail` string."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from app.api.dialects import error_body_for
from app.api.responses import JSONBytes
from app.errors import RerankError, error_response_parts


def error_body(request: Request, status: int, body: dict[str, Any]) -> dict[str, Any]:
    """The error answer in the shape of the dialect that owns the path."""
    return error_body_for(request.url.path, status, body)


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def describe_validation_errors(errors: list[dict[str, Any]]) -> str:
    """One sentence per problem, naming where it is: 'documents.2: Input should be ...'."""
    return "; ".join(f"{_location(tuple(e.get('loc', ())))}: {e.get('msg', '')}" for e in errors)


async def on_rerank_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RerankError)
    status, headers, body = error_response_parts(exc)
    request.app.state.runtime.metrics.failures.labels(reason=exc.reason).inc()
    return JSONBytes(error_body(request, status, body), status_code=status, headers=headers)


async def on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    request.app.state.runtime.metrics.failures.labels(reason="invalid_request").inc()
    compact = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in errors
    ]
    body = {"detail": describe_validation_errors(errors), "errors": compact}
    return JSONBytes(error_body(request, 422, body), status_code=422)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    body = error_body(request, exc.status_code, {"detail": str(exc.detail)})
    return JSONBytes(body, status_code=exc.status_code, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RerankError, on_rerank_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
