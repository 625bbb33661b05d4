"""Request and response bodies of the Jina dialect (`POST /v1/rerank`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.api.documents import Document


class RerankRequest(BaseModel):
    """Jina's rerank request. Unknown fields are ignored, as Jina's API does."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "model": "jina-reranker-v2-base-multilingual",
                    "query": "Which planet is known as the Red Planet?",
                    "documents": [
                        "Venus is often called Earth's twin.",
                        "Mars, known for its reddish appearance, is the Red Planet.",
                    ],
                    "top_n": 2,
                }
            ]
        },
    )

    model: str | None = Field(None, description="Must name the served model when given.")
    query: str = Field(description="The search query.")
    documents: list[Document] = Field(
        description="Strings, or objects: ranked on `text` (or `rank_fields`, or the whole"
        " object as sorted JSON); every field is echoed back."
    )
    top_n: int | None = Field(None, ge=1, description="Return at most this many results.")
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
