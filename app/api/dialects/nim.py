"""NVIDIA NIM's text-reranking dialect, `POST /v1/ranking` (LangChain's and LlamaIndex's
`NVIDIARerank` call it)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.dialects.base import Dialect, Reply, RerankCall, Routed
from app.service import RerankOutcome, Truncation

EXAMPLES: dict[str, dict[str, Any]] = {
    "NIM: which way should I go?": {
        "query": {"text": "which way should i go?"},
        "passages": [
            {"text": "two roads diverged in a yellow wood, and sorry i could not travel both"},
            {"text": "i took the one less traveled by, and that has made all the difference."},
        ],
        "truncate": "END",
    },
}


class Text(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: str


class NimRankingRequest(Routed):
    model_config = ConfigDict(json_schema_extra={"examples": list(EXAMPLES.values())})

    query: Text
    passages: list[Text]
    truncate: Literal["NONE", "END"] = Field(
        "NONE",
        description="NONE (default): long passages are windowed, each scored on its best"
        " window; END: only each passage's first window is scored.",
    )


class Ranking(BaseModel):
    index: int
    logit: float


class NimRankingResponse(BaseModel):
    rankings: list[Ranking]


class Nim(Dialect[NimRankingRequest], request=NimRankingRequest, response=NimRankingResponse,
          paths=("/v1/ranking",), examples=EXAMPLES):
    """Rank passages (NVIDIA NIM dialect; raw logits)"""

    def decode(self, body: NimRankingRequest) -> RerankCall:
        cut = Truncation(max_windows=1) if body.truncate == "END" else None
        return RerankCall(body.query.text, [p.text for p in body.passages], None, cut,
                          body.model, body.instruction)

    def encode(self, body: NimRankingRequest, call: RerankCall, outcome: RerankOutcome,
               reply: Reply) -> dict[str, Any]:
        # By logit, as NIM sorts: sigmoid scores can tie in float32 where the logits differ.
        ranked = sorted(outcome.results, key=lambda r: (-r.logit, r.index))
        return {"rankings": [{"index": r.index, "logit": r.logit} for r in ranked]}
