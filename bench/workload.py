"""A fixed-seed, RAG-like reranking workload shared by the benchmarks."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from app.testmodel import _CORPUS

_WORDS = sorted({w.strip(".,;:!?\"'()") for line in _CORPUS for w in line.split()} - {""})


@dataclass(frozen=True)
class Request:
    query: str
    documents: list[str]
    tokens: int = 0  # query + document tokens over its pairs, before windowing; 0 = not counted


def with_token_counts(requests: list[Request], tokenizer: Any) -> list[Request]:
    """The requests with `tokens` filled in by `tokenizer` (a Hugging Face tokenizer)."""
    def count(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    out = []
    for req in requests:
        [query] = count([req.query])
        out.append(replace(req, tokens=sum(query + n for n in count(req.documents))))
    return out


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(_WORDS, k=words))


def document_words(rng: random.Random, long_tail: float = 0.05) -> int:
    """20-400 words, with a `long_tail` share of 1000-3000-word documents (windowed)."""
    if rng.random() < long_tail:
        return rng.randint(1000, 3000)
    return rng.randint(20, 400)


def make_requests(
    n: int, *, seed: int = 0, docs: tuple[int, int] = (10, 100), long_tail: float = 0.05
) -> list[Request]:
    """`n` requests: a query of 5-25 words and `docs` documents each."""
    rng = random.Random(seed)
    return [
        Request(
            _text(rng, rng.randint(5, 25)),
            [_text(rng, document_words(rng, long_tail)) for _ in range(rng.randint(*docs))],
        )
        for _ in range(n)
    ]


def make_pairs(n: int, *, seed: int = 0, long_tail: float = 0.05) -> list[tuple[str, str]]:
    """`n` (query, document) pairs with the same length mix, for in-process benchmarks."""
    rng = random.Random(seed)
    return [
        (_text(rng, rng.randint(5, 25)), _text(rng, document_words(rng, long_tail)))
        for _ in range(n)
    ]
