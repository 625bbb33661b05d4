"""Cohere's v2 dialect, `POST /v2/rerank` (Cohere v1 is served by `/v1/rerank`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.body import read_json, request_body_doc
from app.api.common import (
    ERROR_RESPONSES,
    disconnected_response,
    request_id,
    score,
    search_units,
    timing_headers,
)
from app.api.documents import Document, rank_text
from app.api.responses import JSONBytes
from app.api.schemas import ApiVersion, BilledUnits
from app.service import Truncation

router = APIRouter(prefix="/v2", responses=ERROR_RESPONSES)


class CohereV2Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="Must name the served model when given.")
    query: str
    documents: list[Document] = Field(
        description="Texts (objects are ranked on `text`, or on their sorted-JSON form)."
    )
    top_n: int | None = Field(None, ge=1)
    max_tokens_per_doc: int | None = Field(
        None, ge=1,
        description="Cut each document to this many tokens first (Cohere's rule); default:"
        " no cut, long documents are windowed.",
    )
    priority: int | None = Field(None, description="Accepted for compatibility; not used.")



class V2Result(BaseModel):
    index: int
    relevance_score: float


class Tokens(BaseModel):
    input_tokens: int
    output_tokens: int = 0


class V2Meta(BaseModel):
    api_version: ApiVersion
    billed_units: BilledUnits
    tokens: Tokens


class CohereV2Response(BaseModel):
    id: str
    results: list[V2Result]
    meta: V2Meta


@router.post(
    "/rerank",
    response_model=CohereV2Response,
    summary="Rerank documents (Cohere v2 dialect)",
    openapi_extra=request_body_doc(CohereV2Request),
)
async def rerank_v2(request: Request) -> Response:
    body = await read_json(request, CohereV2Request)
    texts = [rank_text(doc, i, None) for i, doc in enumerate(body.documents)]
    outcome = await score(
        request, model=body.model, query=body.query, texts=texts, top_n=body.top_n,
        truncation=Truncation(max_doc_tokens=body.max_tokens_per_doc),
    )
    if outcome is None:
        return disconnected_response()
    payload = {
        "id": request_id(request),
        "results": [{"index": r.index, "relevance_score": r.score} for r in outcome.results],
        "meta": {
            "api_version": {"version": "2"},
            "billed_units": {"search_units": search_units(len(texts))},
            "tokens": {"input_tokens": outcome.total_tokens, "output_tokens": 0},
        },
    }
    return JSONBytes(payload, headers=timing_headers(outcome))
