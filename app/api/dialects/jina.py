"""Jina's dialect, `POST /v1/rerank`, which also takes Cohere v1's fields (and vLLM's /v1/rerank
body) and answers with the fields all of their clients read."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.api.dialects.base import Dialect, Reply, RerankCall, Routed, TopN, top_n_field
from app.api.documents import Document, rank_text
from app.service import RerankOutcome, Truncation

EXAMPLES: dict[str, dict[str, Any]] = {
    "Which planet is the Red Planet?": {
        "query": "Which planet is known as the Red Planet?",
        "documents": [
            "Venus is often called Earth's twin.",
            "Mars, known for its reddish appearance, is the Red Planet.",
            "Jupiter, the largest planet, has a Great Red Spot.",
        ],
        "top_n": 2,
    },
    "Pick the tool for a question (JSON schemas)": {
        "query": "What's the weather like in Berlin tomorrow?",
        "documents": [
            {"name": "get_weather", "description": "Forecast for a city and a date",
             "parameters": {"city": "string", "date": "string"}},
            {"name": "send_email", "description": "Send an e-mail to a recipient",
             "parameters": {"to": "string", "body": "string"}},
        ],
        "return_documents": False,
    },
}


class RerankRequest(Routed):
    model_config = ConfigDict(json_schema_extra={"examples": list(EXAMPLES.values())})

    query: str = Field(description="The search query.")
    documents: list[Document] = Field(
        description="Strings, or objects: ranked on `text` (or `rank_fields`, or the whole"
        " object as sorted JSON); every field is echoed back."
    )
    top_n: TopN = top_n_field()
    return_documents: bool = Field(True, description="Echo each document in the results.")
    rank_fields: list[str] | None = Field(
        None,
        description="Cohere v1: for object documents, the fields ranked on (as `field: value`"
        " lines); default: `text`, or the whole object as sorted JSON when it has none.",
    )
    max_chunks_per_doc: int | None = Field(
        None, ge=1,
        description="Cohere v1: score at most this many windows of each long document (its"
        " start); default: every window.",
    )


class Usage(BaseModel):
    total_tokens: int = Field(description="Tokens fed to the model, windows and specials included.")


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: dict[str, Any] | None = None


class ApiVersion(BaseModel):
    version: str


class BilledUnits(BaseModel):
    search_units: int


class Meta(BaseModel):
    api_version: ApiVersion
    billed_units: BilledUnits


class RerankResponse(BaseModel):
    id: str = Field(description="The request id (x-request-id), as Cohere clients read it.")
    model: str
    usage: Usage
    results: list[RerankResult]
    meta: Meta


def search_units(documents: int) -> int:
    """Cohere's billing unit: one query over up to 100 documents."""
    return max(1, math.ceil(documents / 100))


class Jina(Dialect[RerankRequest], request=RerankRequest, response=RerankResponse,
           paths=("/v1/rerank",), examples=EXAMPLES):
    """Rerank documents (Jina dialect; Cohere v1 and vLLM fields accepted)"""

    def decode(self, body: RerankRequest) -> RerankCall:
        return RerankCall(
            query=body.query,
            texts=[rank_text(doc, i, body.rank_fields) for i, doc in enumerate(body.documents)],
            top_n=body.top_n, model=body.model, instruction=body.instruction,
            truncation=Truncation(max_windows=body.max_chunks_per_doc),
        )

    def encode(self, body: RerankRequest, call: RerankCall, outcome: RerankOutcome,
               reply: Reply) -> dict[str, Any]:
        results = []
        for ranked in outcome.results:
            result: dict[str, Any] = {"index": ranked.index, "relevance_score": ranked.score}
            if body.return_documents:
                doc = body.documents[ranked.index]
                result["document"] = {"text": doc} if isinstance(doc, str) else doc
            results.append(result)
        return {
            "id": reply.request_id,
            "model": reply.model,
            "usage": {"total_tokens": outcome.total_tokens},
            "results": results,
            "meta": {
                "api_version": {"version": "1"},
                "billed_units": {"search_units": search_units(len(body.documents))},
            },
        }
