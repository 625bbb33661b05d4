"""What every rerank route shares: routing by model name, limit checks, the deadline,
cancellation on disconnect, and the timing headers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from app.api.dialects.base import RerankCall
from app.api.schemas import ErrorBody
from app.config import Settings
from app.errors import DeadlineExceeded, InvalidRequest, RequestTooLarge
from app.runtime import Runtime
from app.service import RerankOutcome

CLIENT_CLOSED_REQUEST = 499

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 413, 415, 422, 429, 500, 503, 504)
}


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def request_id(request: Request) -> str:
    """The id the middleware gave this request (echoed from `x-request-id` or generated)."""
    return str(request.scope.get("state", {}).get("request_id", ""))


async def score(request: Request, call: RerankCall) -> tuple[str, RerankOutcome | None]:
    """Route the call to the model it names, check it against the limits, then rank. Returns
    the served model's name and the outcome (None when the client went away before the
    answer was ready)."""
    runtime = runtime_of(request)
    settings = runtime.settings
    served = runtime.route(call.model)
    check_limits(settings, call)
    timeout = request_timeout(request, settings.request_timeout_s)
    service = served.service
    if call.queries is None:
        work = service.rerank(call.query, call.texts, call.top_n, call.truncation, timeout,
                              call.instruction)
    else:
        work = service.rerank_each(call.queries, call.texts, call.truncation, timeout,
                                   call.instruction)
    runtime.metrics.in_flight.inc()
    try:
        outcome = await _unless_disconnected(work, request, timeout)
    except DeadlineExceeded:
        served.metrics.deadline_misses.inc()  # it was admitted: the prediction failed
        raise
    finally:
        runtime.metrics.in_flight.dec()
    if outcome is None:
        runtime.metrics.failures.labels(reason="client_disconnected").inc()
    return served.name, outcome


def check_limits(settings: Settings, call: RerankCall) -> None:
    if len(call.texts) > settings.max_documents:
        raise RequestTooLarge(
            f"{len(call.texts)} documents sent; the limit is {settings.max_documents} per"
            " request (max_documents)"
        )
    for query in call.queries or [call.query]:
        if len(query) > settings.max_query_chars:
            raise RequestTooLarge(
                f"the query has {len(query)} characters; the limit is"
                f" {settings.max_query_chars} (max_query_chars)"
            )
    for i, text in enumerate(call.texts):
        if len(text) > settings.max_document_chars:
            raise RequestTooLarge(
                f"document {i} has {len(text)} characters; the limit is"
                f" {settings.max_document_chars} (max_document_chars): split it"
            )


def disconnected_response() -> Response:
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def timing_headers(outcome: RerankOutcome) -> dict[str, str]:
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
    work: Awaitable[RerankOutcome], request: Request, timeout: float
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
