"""Pick the tools an agent should see for a request by ranking their JSON function schemas.

An object document without `text` is ranked on its compact JSON with sorted keys, so a tool's
schema can be sent as is and comes back untouched in `document`.

    python examples/tool_selection.py [BASE_URL]
"""

from __future__ import annotations

import os
import sys

import httpx

BASE_URL = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("BASE_URL", "http://localhost:8080")
HEADERS = {"Authorization": f"Bearer {os.environ['API_KEY']}"} if os.environ.get("API_KEY") else {}

TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather and forecast for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
    {
        "name": "query_sales",
        "description": "Run a read-only SQL query on the sales warehouse.",
        "parameters": {"type": "object", "properties": {"sql": {"type": "string"}}},
    },
    {
        "name": "send_email",
        "description": "Send an email to a recipient with a subject and body.",
        "parameters": {
            "type": "object",
            "properties": {"to": {"type": "string"}, "subject": {"type": "string"}},
        },
    },
]


def select_tools(request: str, top_n: int = 2) -> list[dict]:
    response = httpx.post(
        f"{BASE_URL}/v1/rerank",
        json={"query": request, "documents": TOOLS, "top_n": top_n},
        headers=HEADERS,
        timeout=30,
    )
    response.raise_for_status()
    return [result["document"] for result in response.json()["results"]]


if __name__ == "__main__":
    for tool in select_tools("Will it rain in Lisbon tomorrow?"):
        print(tool["name"])
