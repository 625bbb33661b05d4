"""Many requests at once share batches, and each gets exactly its own scores."""

from __future__ import annotations

import asyncio
import random

import httpx

from tests.conftest import ServerFactory
from tests.reference import reference_scores

WORDS = (
    "mars venus jupiter saturn red planet rings moon orbit solar system gas giant rocky "
    "Fuchs Hund schnell renard chien rapide 火星 红色 Марс планета"
).split()


def _random_request(rng: random.Random) -> dict[str, object]:
    query = " ".join(rng.choices(WORDS, k=rng.randint(2, 8)))
    docs = [" ".join(rng.choices(WORDS, k=rng.randint(0, 60))) for _ in range(rng.randint(1, 6))]
    return {"query": query, "documents": docs, "return_documents": False}


async def test_fifty_concurrent_requests_get_their_own_scores(
    server_factory: ServerFactory, xlmr_dir: str
) -> None:
    # A long max wait makes the scheduler gather items from many requests into one batch.
    server = server_factory(xlmr_dir, max_wait_ms=50, max_batch_tokens=4096)
    rng = random.Random(7)
    requests = [_random_request(rng) for _ in range(50)]
    batches_before = server.metric("reranker_batch_requests_count")
    single_before = server.metric("reranker_batch_requests_bucket", {"le": "1.0"})

    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        responses = await asyncio.gather(
            *(client.post("/v1/rerank", json=body) for body in requests)
        )

    for body, response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        got = {r["index"]: r["relevance_score"] for r in response.json()["results"]}
        want = reference_scores(xlmr_dir, body["query"], body["documents"])  # type: ignore[arg-type]
        assert len(got) == len(want)
        assert max(abs(got[i] - w) for i, w in enumerate(want)) < 1e-4, (got, want)

    batches = server.metric("reranker_batch_requests_count") - batches_before
    single = server.metric("reranker_batch_requests_bucket", {"le": "1.0"}) - single_before
    assert batches > 0
    assert single < batches, "no forward pass mixed items from several requests"
