"""Mixedbread's dialect, `POST /v1/reranking`: `input` and `top_k`, answered as `data`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.dialects.base import (
    Dialect,
    Reply,
    RerankCall,
    Routed,
    TopN,
    top_n_field,
    usage_tokens,
)
from app.api.documents import Document, rank_text
from app.service import RerankOutcome

EXAMPLES: dict[str, dict[str, Any]] = {
    "Bake bread": {
        "query": "What do you need to bake bread?",
        "input": ["To bake bread you need flour", "To eat bread you need nothing but good taste"],
        "top_k": 1,
        "return_input": True,
    },
}


class MixedbreadRequest(Routed):
    model_config = ConfigDict(json_schema_extra={"examples": list(EXAMPLES.values())})

    query: str
    input: list[Document] = Field(description="Strings, or objects (see rank_fields).")
    rank_fields: list[str] | None = Field(
        None, description="For object inputs, the top-level fields ranked on (as `field: value`"
        " lines); default: `text`, or the whole object as sorted JSON."
    )
    top_k: TopN = top_n_field("top_k", "top_n")
    return_input: bool = Field(False, description="Echo each input in its result.")


class RankResult(BaseModel):
    index: int
    score: float
    input: str | dict[str, Any] | None = None
    object: Literal["rank_result"] = "rank_result"


class MixedbreadUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class MixedbreadResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[RankResult]
    top_k: int
    return_input: bool
    usage: MixedbreadUsage


class Mixedbread(Dialect[MixedbreadRequest], request=MixedbreadRequest,
                 response=MixedbreadResponse, paths=("/v1/reranking",), examples=EXAMPLES):
    """Rerank input (Mixedbread dialect)"""

    def decode(self, body: MixedbreadRequest) -> RerankCall:
        texts = [rank_text(doc, i, body.rank_fields) for i, doc in enumerate(body.input)]
        return RerankCall(body.query, texts, body.top_k, None, body.model, body.instruction)

    def encode(self, body: MixedbreadRequest, call: RerankCall, outcome: RerankOutcome,
               reply: Reply) -> dict[str, Any]:
        data = [{"index": r.index, "score": r.score, "object": "rank_result"}
                | ({"input": body.input[r.index]} if body.return_input else {})
                for r in outcome.results]
        return {"object": "list", "model": reply.model, "data": data,
                "top_k": body.top_k or len(body.input), "return_input": body.return_input,
                "usage": usage_tokens(outcome)}
