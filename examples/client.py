"""Rerank from Python with httpx: python examples/client.py [BASE_URL]."""

from __future__ import annotations

import os
import sys

import httpx

BASE_URL = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("BASE_URL", "http://localhost:8080")
HEADERS = {"Authorization": f"Bearer {os.environ['API_KEY']}"} if os.environ.get("API_KEY") else {}


def rerank(query: str, documents: list[str], top_n: int | None = None) -> list[dict]:
    response = httpx.post(
        f"{BASE_URL}/v1/rerank",
        json={"query": query, "documents": documents, "top_n": top_n, "return_documents": False},
        headers=HEADERS,
        timeout=30,
    )
    if response.status_code != 200:  # every error carries a `detail` that says what to fix
        raise RuntimeError(f"{response.status_code}: {response.json()['detail']}")
    return response.json()["results"]


if __name__ == "__main__":
    docs = [
        "Venus is often called Earth's twin because of its similar size and proximity.",
        "Mars, known for its reddish appearance, is often referred to as the Red Planet.",
        "Jupiter, the largest planet in our solar system, has a prominent red spot.",
    ]
    for result in rerank("Which planet is known as the Red Planet?", docs, top_n=2):
        print(f"{result['relevance_score']:.4f}  {docs[result['index']]}")
