"""The one route runner of every rerank dialect: read the JSON body, pick the dialect (several
may share a path), validate, decode, check and score (app/api/common.py), encode. Errors
raised on the way leave through the handlers, in the path's error shape."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Union

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.body import read_json_data, request_body_doc, validate
from app.api.common import (
    ERROR_RESPONSES,
    disconnected_response,
    request_id,
    score,
    timing_headers,
)
from app.api.dialects.base import Dialect, Reply
from app.api.responses import JSONBytes


def pick(dialects: Sequence[Dialect[Any]], data: Any) -> Dialect[Any]:
    """The first dialect that recognises the body; the path's first one when none does (its
    validation then says what is missing)."""
    return next((d for d in dialects if d.accepts(data)), dialects[0])


def handler(dialects: Sequence[Dialect[Any]]) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        data = await read_json_data(request)
        dialect = pick(dialects, data)
        body = validate(data, dialect.request)
        call = dialect.decode(body)
        model, outcome = await score(request, call)
        if outcome is None:
            return disconnected_response()
        reply = Reply(request_id(request), model, int(time.time()))
        return JSONBytes(dialect.encode(body, call, outcome, reply),
                         headers=timing_headers(outcome))

    return handle


def rerank_router(dialects: Sequence[Dialect[Any]]) -> APIRouter:
    """One POST route per path the dialects claim, documented with every dialect's request
    schema, answer schema and examples."""
    by_path: dict[str, list[Dialect[Any]]] = {}
    for dialect in dialects:
        for path in dialect.paths:
            by_path.setdefault(path, []).append(dialect)
    router = APIRouter(responses=ERROR_RESPONSES)
    for path, group in by_path.items():
        responses = tuple(d.response for d in group)
        router.add_api_route(
            path, handler(group), methods=["POST"],
            summary="; ".join(d.summary for d in group),
            name="_".join(d.name.replace("-", "_") for d in group),
            response_model=responses[0] if len(responses) == 1 else Union[responses],  # noqa: UP007
            openapi_extra=request_body_doc(
                [d.request for d in group],
                {title: body for d in group for title, body in d.examples.items()},
            ),
        )
    return router
