"""vLLM's score API from Python: one query against several texts (1:N), then pairs (N:N).

    python examples/vllm_score.py [BASE_URL]

Scores come back in input order, one per pair, between 0 and 1."""

from __future__ import annotations

import os
import sys

import httpx

BASE_URL = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("BASE_URL", "http://localhost:8080")
HEADERS = {"Authorization": f"Bearer {os.environ['API_KEY']}"} if os.environ.get("API_KEY") else {}


def score(text_1: str | list[str], text_2: str | list[str]) -> list[float]:
    response = httpx.post(f"{BASE_URL}/v1/score", json={"text_1": text_1, "text_2": text_2},
                          headers=HEADERS, timeout=30)
    if response.status_code != 200:  # every error carries a `detail` that says what to fix
        raise RuntimeError(f"{response.status_code}: {response.json()['detail']}")
    return [item["score"] for item in response.json()["data"]]


if __name__ == "__main__":
    texts = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]
    for s, text in zip(score("What is the capital of France?", texts), texts, strict=True):
        print(f"{s:.4f}  {text}")
    questions = ["What is the capital of Brazil?", "What is the capital of France?"]
    for s, question in zip(score(questions, texts), questions, strict=True):
        print(f"{s:.4f}  {question}")
