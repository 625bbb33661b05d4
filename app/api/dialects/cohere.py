"""Cohere's v2 dialect, `POST /v2/rerank` (Cohere v1 is served by `/v1/rerank`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.api.dialects.base import Dialect, Reply, RerankCall, Routed, TopN, top_n_field
from app.api.dialects.jina import ApiVersion, BilledUnits, search_units
from app.api.documents import Document, rank_text
from app.service import RerankOutcome, Truncation

EXAMPLES: dict[str, dict[str, Any]] = {
    "Capital of the United States": {
        "query": "What is the capital of the United States?",
        "documents": [
            "Carson City is the capital city of the American state of Nevada.",
            "Washington, D.C. is the capital of the United States.",
            "Capital punishment has existed in the United States since before it was a country.",
        ],
        "top_n": 2,
    },
}


class CohereV2Request(Routed):
    model_config = ConfigDict(json_schema_extra={"examples": list(EXAMPLES.values())})

    query: str
    documents: list[Document] = Field(
        description="Texts (objects are ranked on `text`, or on their sorted-JSON form)."
    )
    top_n: TopN = top_n_field()
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


class CohereV2(Dialect[CohereV2Request], request=CohereV2Request, response=CohereV2Response,
               paths=("/v2/rerank",), examples=EXAMPLES):
    """Rerank documents (Cohere v2 dialect)"""

    def decode(self, body: CohereV2Request) -> RerankCall:
        texts = [rank_text(doc, i, None) for i, doc in enumerate(body.documents)]
        cut = Truncation(max_doc_tokens=body.max_tokens_per_doc)
        return RerankCall(body.query, texts, body.top_n, cut, body.model, body.instruction)

    def encode(self, body: CohereV2Request, call: RerankCall, outcome: RerankOutcome,
               reply: Reply) -> dict[str, Any]:
        return {
            "id": reply.request_id,
            "results": [{"index": r.index, "relevance_score": r.score} for r in outcome.results],
            "meta": {
                "api_version": {"version": "2"},
                "billed_units": {"search_units": search_units(len(call.texts))},
                "tokens": {"input_tokens": outcome.total_tokens, "output_tokens": 0},
            },
        }
