"""HTTP routes: rerank (Jina dialect), models, health, readiness, metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response

from app.api.auth import require_api_key
from app.api.body import read_json, request_body_doc
from app.api.responses import JSONBytes
from app.api.schemas import (
    ErrorBody,
    ModelCard,
    ModelList,
    RerankRequest,
    RerankResponse,
    Status,
    check_text_limits,
)
from app.errors import DeadlineExceeded, InvalidRequest, ModelNotServed, RequestTooLarge
from app.metrics import CONTENT_TYPE
from app.runtime import Runtime
from app.service import RerankOutcome

CLIENT_CLOSED_REQUEST = 499

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 413, 415, 422, 429, 500, 503, 504)
}

v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=_ERRORS)
ops = APIRouter()


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


@v1.post(
    "/rerank",
    response_model=RerankResponse,
    summary="Rerank documents (Jina dialect)",
    openapi_extra=request_body_doc(RerankRequest),
)
async def rerank(request: Request) -> Response:
    body = await read_json(request, RerankRequest)
    runtime = runtime_of(request)
    settings = runtime.settings
    if body.model is not None and body.model not in settings.accepted_model_names:
        raise ModelNotServed(
            f"model {body.model!r} is not served here; use {settings.served_name!r} or omit"
            " 'model'"
        )
    if len(body.documents) > settings.max_documents:
        raise RequestTooLarge(
            f"{len(body.documents)} documents sent; the limit is {settings.max_documents}"
            " per request (max_documents)"
        )
    check_text_limits(body, settings.max_query_chars, settings.max_document_chars)
    timeout = request_timeout(request, settings.request_timeout_s)
    service = runtime.service
    runtime.metrics.in_flight.inc()
    try:
        outcome = await _unless_disconnected(
            service.rerank(body.query, body.texts(), body.top_n), request, timeout
        )
    finally:
        runtime.metrics.in_flight.dec()
    if outcome is None:
        runtime.metrics.failures.labels(reason="client_disconnected").inc()
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    results = []
    for ranked in outcome.results:
        result: dict[str, Any] = {"index": ranked.index, "relevance_score": ranked.score}
        if body.return_documents:
            doc = body.documents[ranked.index]
            result["document"] = {"text": doc} if isinstance(doc, str) else doc
        results.append(result)
    payload = {
        "model": settings.served_name,
        "usage": {"total_tokens": outcome.total_tokens},
        "results": results,
    }
    return JSONBytes(payload, headers=_timing_headers(outcome))


def _timing_headers(outcome: RerankOutcome) -> dict[str, str]:
    return {
        "x-tokenization-time": f"{outcome.tokenization_s * 1000:.2f}",
        "x-queue-time": f"{outcome.queue_s * 1000:.2f}",
        "x-inference-time": f"{outcome.inference_s * 1000:.2f}",
    }


def request_timeout(request: Request, server_limit: float) -> float:
    """The server's deadline, or less when the client asks with `x-request-timeout` (s)."""
    asked = request.headers.get("x-request-timeout")
    if asked is None:
        return server_limit
    try:
        value = float(asked)
    except ValueError:
        value = float("nan")
    if not value > 0:  # also rejects nan
        raise InvalidRequest(
            f"x-request-timeout must be a positive number of seconds, got {asked!r}"
        )
    return min(value, server_limit)


async def _unless_disconnected(
    work: Any, request: Request, timeout: float
) -> RerankOutcome | None:
    """Await the rerank; if the client goes away (None) or the deadline passes (504), cancel
    it, which drops the request's items that are still queued."""
    task: asyncio.Task[RerankOutcome] = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        timed_out = not task.done() and not watcher.done()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if timed_out:
        raise DeadlineExceeded(
            f"the request did not finish within its {timeout:g} s deadline (request timeout);"
            " it was cancelled: retry later, or send fewer or shorter documents"
        )
    return None if task.cancelled() else task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


@v1.get("/models", response_model=ModelList, summary="The served model")
async def models(request: Request) -> Response:
    runtime = runtime_of(request)
    loaded = runtime.loaded_model
    card = ModelCard(
        id=runtime.settings.served_name,
        max_input_length=loaded.encoder.max_length,
        dtype=loaded.dtype,
        devices=loaded.devices,
        backend=loaded.backend,
        attention=loaded.attention,
    )
    return JSONBytes(ModelList(data=[card]).model_dump())


@ops.get("/health", summary="Liveness: the process is up", response_model=Status)
async def health() -> Response:
    return JSONBytes({"status": "ok"})


@ops.get(
    "/ready",
    summary="Readiness: 200 once the model is loaded and warmed up",
    response_model=Status,
    responses={503: {"model": Status, "description": "Loading, recovering or shutting down"}},
)
async def ready(request: Request) -> Response:
    runtime = runtime_of(request)
    if runtime.phase == "ready":
        return JSONBytes({"status": "ready"})
    return JSONBytes(
        {"status": runtime.phase, "detail": f"not ready: {runtime.phase}"},
        status_code=503,
        headers={"retry-after": "5"},
    )


@ops.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    return Response(runtime_of(request).metrics.render(), media_type=CONTENT_TYPE)
