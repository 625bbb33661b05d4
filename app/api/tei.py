"""Hugging Face text-embeddings-inference's dialect, `POST /rerank`."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.body import read_json, request_body_doc
from app.api.common import ERROR_RESPONSES, disconnected_response, score, timing_headers
from app.api.responses import JSONBytes
from app.service import Truncation

router = APIRouter(responses=ERROR_RESPONSES)


class TeiRerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    query: str
    texts: list[str]
    raw_scores: bool = Field(False, description="Return logits instead of sigmoid scores.")
    return_text: bool = Field(False, description="Echo each text in the results.")
    truncate: bool | None = Field(
        None,
        description="true: score one window per text (its start, or its end with"
        " truncation_direction Left). Default: long texts are windowed, not refused.",
    )
    truncation_direction: Literal["Right", "Left", "right", "left"] = "Right"



class TeiRank(BaseModel):
    index: int
    score: float
    text: str | None = None


@router.post(
    "/rerank",
    response_model=list[TeiRank],
    summary="Rerank texts (TEI dialect)",
    openapi_extra=request_body_doc(TeiRerankRequest),
)
async def rerank_tei(request: Request) -> Response:
    body = await read_json(request, TeiRerankRequest)
    truncation = None
    if body.truncate:
        left = body.truncation_direction.lower() == "left"
        truncation = Truncation(max_windows=1, keep_tail=left)
    outcome = await score(
        request, model=None, query=body.query, texts=body.texts, top_n=None,
        truncation=truncation,
    )
    if outcome is None:
        return disconnected_response()
    ranks = []
    for r in outcome.results:
        value = r.logit if body.raw_scores else r.score
        rank: dict[str, object] = {"index": r.index, "score": value}
        if body.return_text:
            rank["text"] = body.texts[r.index]
        ranks.append(rank)
    return JSONBytes(ranks, headers=timing_headers(outcome))
