"""Reading a JSON request body: orjson (strict UTF-8, depth-limited, exact messages), then a
pydantic model, with every failure mapped to the error table; and the OpenAPI `requestBody`
of a route that reads its body this way."""

from __future__ import annotations

from collections.abc import Mapping
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


async def read_json_data(request: Request) -> Any:
    """The body parsed as JSON. A missing content type is read as JSON (curl users forget
    it)."""
    content_type = request.headers.get("content-type")
    if content_type and not is_json(content_type):
        raise UnsupportedMediaType(
            f"unsupported content type {content_type!r}; send the body as JSON with"
            " 'Content-Type: application/json'"
        )
    try:
        return orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"request body is not valid JSON ({exc}); send a JSON object") from None


def validate(data: Any, model: type[M]) -> M:
    """`data` as `model`, or the 422 that names every problem's place in the body."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors: list[dict[str, Any]] = [
            {**e, "loc": ("body", *e["loc"])}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise RequestValidationError(errors) from None


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema with its `$defs` written in place: inside an OpenAPI document a
    `#/$defs/...` reference would point at the document's root, where there are none."""
    defs = schema.pop("$defs", {})

    def expand(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return expand(defs[ref.removeprefix("#/$defs/")])
            return {k: expand(v) for k, v in node.items()}
        if isinstance(node, list):
            return [expand(v) for v in node]
        return node

    expanded: dict[str, Any] = expand(schema)
    return expanded


def request_body_doc(models: list[type[BaseModel]],
                     examples: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAPI `requestBody` for a route that reads its body with `read_json_data`: one
    schema, or any of several (dialects sharing a path), and named examples."""
    schemas = [inline_refs(m.model_json_schema()) for m in models]
    content: dict[str, Any] = {"schema": schemas[0] if len(schemas) == 1 else {"anyOf": schemas}}
    if examples:
        content["examples"] = {title: {"summary": title, "value": value}
                               for title, value in examples.items()}
    return {"requestBody": {"required": True, "content": {"application/json": content}}}
