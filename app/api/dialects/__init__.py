"""The registered dialects. Adding one: a module with its Dialect subclass, and a line here."""

from __future__ import annotations

from typing import Any

from app.api.dialects.base import Dialect
from app.api.dialects.cohere import CohereV2
from app.api.dialects.infinity import Infinity
from app.api.dialects.jina import Jina
from app.api.dialects.mixedbread import Mixedbread
from app.api.dialects.nim import Nim
from app.api.dialects.tei import Tei
from app.api.dialects.vllm_score import VllmScore

DIALECTS: tuple[Dialect[Any], ...] = (
    Jina(),
    CohereV2(),
    Tei(),  # first on /rerank: its error shape is the path's
    Infinity(),
    Nim(),
    VllmScore(),
    Mixedbread(),
)


def _shapes() -> dict[str, Dialect[Any]]:
    shapes: dict[str, Dialect[Any]] = {}
    for dialect in DIALECTS:
        for path in dialect.paths:
            shapes.setdefault(path, dialect)
    return shapes


_SHAPE_OF_PATH = _shapes()


def error_body_for(path: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    """An error answer on `path` in the shape its clients read (`detail` everywhere)."""
    dialect = _SHAPE_OF_PATH.get(path)
    return body if dialect is None else dialect.error_body(status, body)
