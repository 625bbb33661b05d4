"""The Jina dialect, `POST /v1/rerank`, which also takes Cohere v1's fields and answers with
the fields both SDKs read."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.body import read_json, request_body_doc
from app.api.common import (
    ERROR_RESPONSES,
    disconnected_response,
    request_id,
    runtime_of,
    score,
    search_units,
    timing_headers,
)
from app.api.documents import rank_text
from app.api.responses import JSONBytes
from app.api.schemas import RerankRequest, RerankResponse
from app.service import Truncation

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)


@router.post(
    "/rerank",
    response_model=RerankResponse,
    summary="Rerank documents (Jina dialect; Cohere v1 fields accepted)",
    openapi_extra=request_body_doc(RerankRequest),
)
async def rerank(request: Request) -> Response:
    body = await read_json(request, RerankRequest)
    texts = [rank_text(doc, i, body.rank_fields) for i, doc in enumerate(body.documents)]
    truncation = Truncation(max_windows=body.max_chunks_per_doc)
    outcome = await score(
        request, model=body.model, query=body.query, texts=texts, top_n=body.top_n,
        truncation=truncation,
    )
    if outcome is None:
        return disconnected_response()
    results = []
    for ranked in outcome.results:
        result: dict[str, Any] = {"index": ranked.index, "relevance_score": ranked.score}
        if body.return_documents:
            doc = body.documents[ranked.index]
            result["document"] = {"text": doc} if isinstance(doc, str) else doc
        results.append(result)
    payload = {
        "id": request_id(request),
        "model": runtime_of(request).settings.served_name,
        "usage": {"total_tokens": outcome.total_tokens},
        "results": results,
        "meta": {
            "api_version": {"version": "1"},
            "billed_units": {"search_units": search_units(len(body.documents))},
        },
    }
    return JSONBytes(payload, headers=timing_headers(outcome))
