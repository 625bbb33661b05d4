"""What text an object document is ranked on: its `text`, the fields a client names in
`rank_fields`, or a deterministic serialisation of the whole object (tool and table schemas)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator

from app.errors import InvalidRequest

MAX_NESTING = 32
"""Deepest nesting of objects and arrays a document object may have (orjson itself refuses to
serialise past ~254 levels; no real tool or table schema comes near 32)."""


def nesting_depth(value: Any) -> int:
    """Depth of nested objects and arrays, iteratively (no recursion on hostile input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_NESTING:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _checked(doc: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(doc, dict):
        if nesting_depth(doc) > MAX_NESTING:
            raise ValueError(f"the document nests objects or arrays deeper than {MAX_NESTING}"
                             " levels")
        if "text" in doc and not isinstance(doc["text"], str):
            raise ValueError("the document has a 'text' field that is not a string; send an"
                             " object like {\"text\": \"...\"}")
    return doc


Document = Annotated[str | dict[str, Any], AfterValidator(_checked)]
"""A document as every dialect takes it: a string, or an object (ranked on its `text`, its
`rank_fields`, or its sorted-JSON form), checked for depth and for a non-string `text`."""


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def rank_text(doc: str | dict[str, Any], index: int, rank_fields: Sequence[str] | None) -> str:
    """The text the model reads for one document.

    - a string: itself;
    - an object, with `rank_fields`: `field: value` lines in the order the fields were named
      (string values as they are, others as compact JSON), fields it lacks skipped;
      `["text"]` alone is just the text;
    - an object with a string `text`: the text;
    - any other object: compact JSON with sorted keys, so the same object always reads alike.
    """
    if isinstance(doc, str):
        return doc
    if rank_fields:
        present = [f for f in rank_fields if f in doc]
        if not present:
            raise InvalidRequest(
                f"document {index} has none of the rank_fields {list(rank_fields)}"
            )
        if present == ["text"] and isinstance(doc["text"], str):
            return doc["text"]
        return "\n".join(f"{f}: {_value_text(doc[f])}" for f in present)
    text = doc.get("text")
    if isinstance(text, str):
        return text
    return _value_text(doc)
