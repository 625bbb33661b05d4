"""Reading a JSON request body: orjson (strict UTF-8, depth-limited, exact messages), then a
pydantic model, with every failure mapped to the error table."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from app.errors import MalformedBody, UnsupportedMediaType

M = TypeVar("M", bound=BaseModel)


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


async def read_json(request: Request, model: type[M]) -> M:
    """The body as `model`. A missing content type is read as JSON (curl users forget it)."""
    content_type = request.headers.get("content-type")
    if content_type and not is_json(content_type):
        raise UnsupportedMediaType(
            f"unsupported content type {content_type!r}; send the body as JSON with"
            " 'Content-Type: application/json'"
        )
    try:
        data = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"request body is not valid JSON ({exc}); send a JSON object") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors: list[dict[str, Any]] = [
            {**e, "loc": ("body", *e["loc"])}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise RequestValidationError(errors) from None


def request_body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI `requestBody` for a route that reads its body with `read_json`."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }
