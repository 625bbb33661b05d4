"""What a dialect is: its request schema, `decode` (body -> RerankCall), `encode` (outcome ->
its answer), its error shape and its examples; and the request fields every dialect shares.
The route runner (app/api/runner.py) does the rest (limits, deadline, disconnect, timing
headers, metrics) the same way for every dialect."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field

from app.service import RerankOutcome, Truncation

B = TypeVar("B", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class RerankCall:
    """One rerank, whatever dialect it came in."""

    query: str
    texts: list[str]
    top_n: int | None = None
    truncation: Truncation | None = None
    model: str | None = None
    instruction: str | None = None
    queries: list[str] | None = None
    """One query per text (vLLM's N:N scoring); `query` is then unused."""


@dataclass(frozen=True, slots=True)
class Reply:
    """What an answer echoes besides the scores."""

    request_id: str
    model: str
    """The served model's name."""
    created: int
    """Unix time of the answer (OpenAI-style `created`)."""


class Instructed(BaseModel):
    """Fields every dialect's request has. Unknown fields are ignored, as the APIs they
    copy do."""

    model_config = ConfigDict(extra="ignore")

    instruction: str | None = Field(
        None, description="For models that take an instruction (decoder rerankers); a"
        " cross-encoder refuses it with 422."
    )


class Routed(Instructed):
    """A request that may name its model."""

    model: str | None = Field(
        None, description="Must name the served model (or its last path part) when given."
    )


def _zero_is_all(value: int | None) -> int | None:
    return value or None


TopN = Annotated[int | None, AfterValidator(_zero_is_all)]
"""A result count: 0, vLLM clients' default, reads as absent (every result)."""


def top_n_field(name: str = "top_n", alias: str = "top_k") -> Any:
    """At most this many results; both names are read (Voyage and Mixedbread say `top_k`).
    0 means all of them, as in vLLM, whose clients send it by default."""
    return Field(None, ge=0, validation_alias=AliasChoices(name, alias),
                 description=f"Return at most this many results (`{alias}` is read the same;"
                 " 0 or absent: all).")


class Dialect(ABC, Generic[B]):
    """One API dialect. A subclass names its request and answer types, its paths and its
    examples in the class statement; its docstring is the route's summary in the API docs.

        class Nim(Dialect[NimRequest], request=NimRequest, response=NimResponse,
                  paths=("/v1/ranking",), examples=EXAMPLES):
            '''Rank passages (NVIDIA NIM dialect)'''
    """

    request: type[B]
    response: Any
    """The answer's type, for the OpenAPI document (a pydantic model, or list[...] of one)."""
    paths: tuple[str, ...]
    examples: dict[str, dict[str, Any]]
    """Request bodies the API docs offer pre-filled, by title."""
    summary: str
    name: str

    def __init_subclass__(
        cls, *, request: type[BaseModel], response: Any, paths: tuple[str, ...],
        examples: Mapping[str, dict[str, Any]] | None = None, **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        cls.request = request  # type: ignore[assignment]
        cls.response, cls.paths, cls.examples = response, paths, dict(examples or {})
        cls.summary = " ".join((cls.__doc__ or cls.__name__).split())
        cls.name = cls.__name__.lower()

    def accepts(self, data: Any) -> bool:
        """Whether a JSON body is this dialect's, when several share a path."""
        return True

    @abstractmethod
    def decode(self, body: B) -> RerankCall: ...

    @abstractmethod
    def encode(self, body: B, call: RerankCall, outcome: RerankOutcome, reply: Reply) -> Any: ...

    def error_body(self, status: int, body: dict[str, Any]) -> dict[str, Any]:
        """An error answer in this dialect's shape (every shape keeps `detail`)."""
        return body


def usage_tokens(outcome: RerankOutcome) -> dict[str, int]:
    """OpenAI-style usage: every token fed to the model is a prompt token."""
    return {"prompt_tokens": outcome.total_tokens, "total_tokens": outcome.total_tokens}
