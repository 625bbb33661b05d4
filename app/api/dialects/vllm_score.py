"""vLLM's score dialect, `POST /score` and `/v1/score`: pairs given as `text_1` x `text_2`."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.dialects.base import Dialect, Reply, RerankCall, Routed, usage_tokens
from app.errors import InvalidRequest
from app.service import RerankOutcome

EXAMPLES: dict[str, dict[str, Any]] = {
    "One query, two texts": {
        "text_1": "What is the capital of France?",
        "text_2": ["The capital of Brazil is Brasilia.", "The capital of France is Paris."],
    },
}


class ScoreRequest(Routed):
    model_config = ConfigDict(json_schema_extra={"examples": list(EXAMPLES.values())})

    text_1: str | list[str] = Field(
        description="The query, or a list: one query for every text_2 (length 1), or one per"
        " text_2 (same length)."
    )
    text_2: str | list[str] = Field(description="The text(s) scored against text_1.")


class Score(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0


class ScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[Score]
    usage: ScoreUsage


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


class VllmScore(Dialect[ScoreRequest], request=ScoreRequest, response=ScoreResponse,
                paths=("/score", "/v1/score"), examples=EXAMPLES):
    """Score text pairs (vLLM dialect; results in input order)"""

    def decode(self, body: ScoreRequest) -> RerankCall:
        firsts, seconds = _as_list(body.text_1), _as_list(body.text_2)
        if not firsts or not seconds:
            raise InvalidRequest("text_1 and text_2 must each hold at least one text")
        if len(firsts) > 1 and len(firsts) != len(seconds):
            raise InvalidRequest(
                f"text_1 has {len(firsts)} texts and text_2 {len(seconds)}: give one text_1 for"
                " all of text_2 (1:N), or one per text_2 (N:N)"
            )
        one = len(firsts) == 1
        return RerankCall(query=firsts[0] if one else "", queries=None if one else firsts,
                          texts=seconds, model=body.model, instruction=body.instruction)

    def encode(self, body: ScoreRequest, call: RerankCall, outcome: RerankOutcome,
               reply: Reply) -> dict[str, Any]:
        in_order = sorted(outcome.results, key=lambda r: r.index)
        return {
            "id": f"score-{reply.request_id}", "object": "list", "created": reply.created,
            "model": reply.model,
            "data": [{"index": r.index, "object": "score", "score": r.score} for r in in_order],
            "usage": {**usage_tokens(outcome), "completion_tokens": 0},
        }

    def error_body(self, status: int, body: dict[str, Any]) -> dict[str, Any]:
        """vLLM's error object next to `detail`: `{"error": {"message", "type", "param",
        "code"}}`, type named after the status as vLLM names it (BadRequestError, ...)."""
        name = HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
        kind = name if name.endswith("Error") else f"{name}Error"
        message = body["detail"] if isinstance(body["detail"], str) else str(body["detail"])
        return {**body, "error": {"message": message, "type": kind, "param": None,
                                  "code": status}}
