"""Infinity's and vLLM's `POST /rerank`: the TEI path, with `documents` instead of `texts`."""

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
from app.api.dialects.tei import tei_error_body
from app.api.documents import Document, rank_text
from app.service import RankedDocument, RerankOutcome

EXAMPLES: dict[str, dict[str, Any]] = {
    "Infinity / vLLM: documents": {
        "query": "Where is the Eiffel Tower?",
        "documents": ["The Eiffel Tower is in Paris.", "Big Ben is in London."],
        "return_documents": True,
    },
}


class InfinityRerankRequest(Routed):
    model_config = ConfigDict(json_schema_extra={"examples": list(EXAMPLES.values())})

    query: str
    documents: list[Document] = Field(
        description="Strings, or objects with `text` (vLLM); objects without one are ranked"
        " on their sorted-JSON form."
    )
    top_n: TopN = top_n_field()
    return_documents: bool | None = Field(
        None,
        description="Infinity: true puts each document in its result as a plain string, false"
        " leaves it out. Absent: as vLLM answers, `{\"text\": ...}`.",
    )
    raw_scores: bool = Field(False, description="Infinity: logits instead of sigmoid scores.")


class InfinityResult(BaseModel):
    index: int
    relevance_score: float
    document: str | dict[str, Any] | None = None


class InfinityUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class InfinityRerankResponse(BaseModel):
    id: str
    object: Literal["rerank"] = "rerank"
    created: int
    model: str
    usage: InfinityUsage
    results: list[InfinityResult]


class Infinity(Dialect[InfinityRerankRequest], request=InfinityRerankRequest,
               response=InfinityRerankResponse, paths=("/rerank",), examples=EXAMPLES):
    """Rerank documents (Infinity and vLLM dialect)"""

    def accepts(self, data: Any) -> bool:
        return isinstance(data, dict) and "documents" in data

    def decode(self, body: InfinityRerankRequest) -> RerankCall:
        texts = [rank_text(doc, i, None) for i, doc in enumerate(body.documents)]
        return RerankCall(body.query, texts, body.top_n, None, body.model, body.instruction)

    def encode(self, body: InfinityRerankRequest, call: RerankCall, outcome: RerankOutcome,
               reply: Reply) -> dict[str, Any]:
        def result(r: RankedDocument) -> dict[str, Any]:
            out: dict[str, Any] = {"index": r.index,
                                   "relevance_score": r.logit if body.raw_scores else r.score}
            if body.return_documents is None:  # vLLM's answer
                doc = body.documents[r.index]
                out["document"] = {"text": doc} if isinstance(doc, str) else doc
            elif body.return_documents:  # Infinity's
                out["document"] = call.texts[r.index]
            return out

        return {"id": reply.request_id, "object": "rerank", "created": reply.created,
                "model": reply.model, "usage": usage_tokens(outcome),
                "results": [result(r) for r in outcome.results]}

    def error_body(self, status: int, body: dict[str, Any]) -> dict[str, Any]:
        return tei_error_body(status, body)  # the path's shape: TEI's, a superset
