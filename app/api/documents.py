"""What text an object document is ranked on: its `text`, the fields a client names in
`rank_fields`, or a deterministic serialisation of the whole object (tool and table schemas)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from app.errors import InvalidRequest


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
