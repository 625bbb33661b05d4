"""Bodies of the operational routes and the error body (the dialects' own are in
app/api/dialects/)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    detail: str


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    owned_by: str = "reranker"
    max_input_length: int
    dtype: str
    devices: list[str]
    backend: str
    attention: str
    scoring: str = Field(
        "classifier", description="classifier (a cross-encoder) or the decoder reranker's"
        " recipe: qwen3-reranker, mxbai-rerank-v2, bge-reranker-gemma"
    )
    takes_instruction: bool = Field(
        False, description="Whether requests may send an `instruction`"
    )
    aliases: list[str] = Field(default_factory=list,
                               description="Other names requests may use for this model")
    dtype_probe_gflops: dict[str, float] | None = Field(
        None,
        description="With --dtype auto on a CPU: the start-up probe's matmul speed per candidate"
        " dtype (the fastest was chosen)",
    )
    tokens_per_second: float | None = Field(
        None, description="Measured scoring speed of all devices (moving estimate)"
    )
    max_queue_time_s: float = Field(description="The queue-time limit admission enforces")
    max_batch_tokens: int | None = Field(
        None, description="Token budget of one forward pass in force (halved for a while after"
        " an out-of-memory error)"
    )


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class Status(BaseModel):
    status: str
    detail: str | None = None
