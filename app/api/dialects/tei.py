"""Hugging Face text-embeddings-inference's dialect, `POST /rerank` with `texts`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.dialects.base import Dialect, Instructed, Reply, RerankCall
from app.service import RerankOutcome, Truncation

EXAMPLES: dict[str, dict[str, Any]] = {
    "TEI: texts": {
        "query": "What is Deep Learning?",
        "texts": ["Deep Learning is not...", "Deep learning is a branch of machine learning."],
        "raw_scores": False,
    },
}

# TEI clients read `error` and `error_type` (next to `detail`).
_ERROR_TYPES = {401: "Unauthorized", 429: "Overloaded", 500: "Backend", 503: "Unhealthy",
                504: "Backend"}


class TeiRerankRequest(Instructed):
    model_config = ConfigDict(json_schema_extra={"examples": list(EXAMPLES.values())})

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


def tei_error_body(status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "error": body["detail"], "error_type": _ERROR_TYPES.get(status, "Validation")}


class Tei(Dialect[TeiRerankRequest], request=TeiRerankRequest, response=list[TeiRank],
          paths=("/rerank",), examples=EXAMPLES):
    """Rerank texts (TEI dialect)"""

    def accepts(self, data: Any) -> bool:
        return isinstance(data, dict) and "texts" in data

    def decode(self, body: TeiRerankRequest) -> RerankCall:
        cut = None
        if body.truncate:
            cut = Truncation(max_windows=1, keep_tail=body.truncation_direction.lower() == "left")
        return RerankCall(query=body.query, texts=body.texts, truncation=cut,
                          instruction=body.instruction)

    def encode(self, body: TeiRerankRequest, call: RerankCall, outcome: RerankOutcome,
               reply: Reply) -> list[dict[str, Any]]:
        ranks: list[dict[str, Any]] = [
            {"index": r.index, "score": r.logit if body.raw_scores else r.score}
            for r in outcome.results
        ]
        if body.return_text:
            for rank in ranks:
                rank["text"] = body.texts[rank["index"]]
        return ranks

    def error_body(self, status: int, body: dict[str, Any]) -> dict[str, Any]:
        return tei_error_body(status, body)
