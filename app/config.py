"""Service settings: one validated object, built by the CLI (flags + RERANKER_* env) or by tests."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.allocator import Allocator

DEFAULT_MODEL = "jinaai/jina-reranker-v2-base-multilingual"

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Scoring = Literal["auto", "classifier", "qwen3-reranker", "mxbai-rerank-v2", "bge-reranker-gemma"]
Backend = Literal["auto", "native", "transformers"]

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+(,cuda:\d+)*)$")


class Settings(BaseSettings):
    """Everything the service can be told. Each field has an env twin `RERANKER_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="RERANKER_", extra="forbid", frozen=True)

    model: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [DEFAULT_MODEL],
        description="Local model directory or Hugging Face hub id. Repeat the flag (env: comma"
        " separated) to serve several models from one process; requests choose by `model`,"
        " the first one serves requests that name none.",
    )
    served_model_name: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Name each model is reported under and requested by, by position"
        " (default: its --model value). Repeatable; env: comma separated.",
    )
    alias: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="ALIAS=NAME: requests naming ALIAS reach the served model NAME (LangChain,"
        " LlamaIndex and Haystack send jina-reranker-v1-base-en by default). Repeatable; env:"
        " comma separated.",
    )
    host: str = Field("0.0.0.0", description="Interface to bind.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port.")
    metrics_port: int | None = Field(
        None, ge=0, le=65535,
        description="Serve /metrics on a listener of its own at this port (same --host), and not"
        " on the API port: keeps the scrape off a public ingress. Default: on the API port.",
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N[,cuda:M...]")
    dtype: Dtype = Field(
        "auto",
        description="auto = bfloat16 on GPUs with native bf16 (compute capability >= 8.0),"
        " float16 below (float32 for Gemma, whose activations overflow float16); on CPU the"
        " faster of float32 and bfloat16, timed at start-up on the model's shapes.",
    )
    backend: Backend = Field(
        "auto",
        description="native (packed batches, both checkpoint namings; auto picks it) or"
        " transformers (stock AutoModelForSequenceClassification, padded).",
    )
    scoring: Annotated[list[Scoring], NoDecode] = Field(
        default_factory=list,
        description="How each model scores, by position: auto, classifier (a cross-encoder's"
        " head) or a decoder reranker's recipe (qwen3-reranker, mxbai-rerank-v2,"
        " bge-reranker-gemma). auto: classifier, or for a causal LM the recipe its"
        " architecture and model name call for. Repeatable; env: comma separated.",
    )
    default_instruction: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Instruction of requests that send none, for each decoder model by"
        " position (default: the recipe's own). Repeatable; env: one instruction, or a JSON"
        " list of them.",
    )
    max_batch_tokens: int | None = Field(
        None, ge=1,
        description="Token budget of one forward pass (padded tokens when padding). Default:"
        " 16384 on CUDA; 4096 on CPU, where smaller batches score as fast and a newcomer waits"
        " less for the batch in progress.",
    )
    max_wait_ms: float = Field(
        2.0, ge=0, description="Longest wait to fill a batch when the queue is short."
    )
    max_queue: int = Field(
        65536, ge=1, description="Scoring items (query-window pairs) allowed to wait; then 429."
    )
    max_queue_time_s: float = Field(
        1.0, gt=0,
        description="Longest predicted wait before a request's work starts; a request predicted"
        " to wait longer gets 429 at once, with Retry-After = when it would fit.",
    )
    max_documents: int = Field(1000, ge=1, description="Documents per request.")
    max_body_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest request body accepted."
    )
    max_document_chars: int = Field(
        4_000_000, ge=1, description="Characters per document (a 524,288-token document fits)."
    )
    max_query_chars: int = Field(100_000, ge=1, description="Characters per query.")
    max_request_tokens: int = Field(
        2_000_000, ge=1,
        description="Query and document tokens per request, before windowing; then 413.",
    )
    request_timeout_s: float = Field(
        60.0, gt=0,
        description="Deadline of one rerank request (a client may ask for less with the"
        " x-request-timeout header, in seconds); then 504.",
    )
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM, how long in-flight requests may take to finish."
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Bearer keys required on every route except /health, /ready, /metrics and"
        " the API docs; none = open. Env: comma separated.",
    )
    docs: Literal["on", "off"] = Field(
        "on",
        description="on: Swagger UI at /docs and the OpenAPI document at /openapi.json, served"
        " from the package (no internet needed); off: neither, no surface beyond the API.",
    )
    hf_cache_dir: str | None = Field(None, description="Hugging Face cache directory.")
    log_level: str = Field("info", description="Log level.")
    allocator: Allocator = Field(
        "auto",
        description="Memory allocator of `reranker serve`: auto = tcmalloc when installed"
        " (faster CPU inference; see app/allocator.py), else glibc's.",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json: one JSON object per line, for log shippers."
    )

    @field_validator("default_instruction", mode="before")
    @classmethod
    def _instructions(cls, value: object) -> object:
        if isinstance(value, str):
            return json.loads(value) if value.lstrip().startswith("[") else [value]
        return [] if value is None else value

    @field_validator("model", "served_model_name", "alias", "scoring", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if value is None:
            return []
        return value

    @model_validator(mode="after")
    def _check_names(self) -> Settings:
        if not self.model:
            raise ValueError("model: give at least one model")
        for field in ("served_model_name", "scoring", "default_instruction"):
            given = len(getattr(self, field))
            if given > len(self.model):
                raise ValueError(f"{field}: {given} values for {len(self.model)} models (one"
                                 " per --model, by position)")
        names = self.served_names
        if len(set(names)) != len(names):
            raise ValueError(f"served_model_name: two models would be served as the same name"
                             f" ({', '.join(names)}): name them with --served-model-name")
        for entry in self.alias:
            alias, sep, target = entry.partition("=")
            if not sep or not alias.strip() or not target.strip():
                raise ValueError(f"alias: {entry!r} is not ALIAS=NAME")
            if self._find(target.strip(), aliases=False) is None:
                raise ValueError(f"alias: {entry!r} names no served model ({', '.join(names)})")
        return self

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower().replace(" ", "")
        if not _DEVICE_RE.match(value):
            raise ValueError("expected auto, cpu, cuda or cuda:N[,cuda:M...]")
        return value

    @property
    def served_names(self) -> list[str]:
        """Each model's name, by position: its --served-model-name, else its --model value."""
        given = self.served_model_name
        return [given[i] if i < len(given) else m.rstrip("/") for i, m in enumerate(self.model)]

    @property
    def served_name(self) -> str:
        """The first model's name (it serves requests that name none)."""
        return self.served_names[0]

    def model_index(self, name: str | None) -> int | None:
        """Which model a request's `model` names: a served name, its last path part, or an
        alias (None names the first model); None when it names none of them."""
        return 0 if name is None else self._find(name, aliases=True)

    def _find(self, name: str, *, aliases: bool) -> int | None:
        """A served name first, then a last path part that only one model has, then (with
        `aliases`) an alias."""
        names = self.served_names
        if name in names:
            return names.index(name)
        parts = [i for i, served in enumerate(names) if served.rsplit("/", 1)[-1] == name]
        if len(parts) == 1:
            return parts[0]
        if aliases:
            for entry in self.alias:
                alias, _, target = entry.partition("=")
                if alias.strip() == name:
                    return self._find(target.strip(), aliases=False)
        return None

    def for_model(self, index: int) -> Settings:
        """These settings for one of the models alone (what a Loader gets)."""
        def at(values: list[Any]) -> list[Any]:
            return values[index:index + 1]

        return self.model_copy(update={
            "model": [self.model[index]], "served_model_name": [self.served_names[index]],
            "scoring": at(self.scoring), "default_instruction": at(self.default_instruction),
        })
