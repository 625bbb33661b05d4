"""Many requests at once share batches, and each gets exactly its own scores."""

from __future__ import annotations

import asyncio
import os
import random
import time

import httpx

from app.service import BULK_NICENESS
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
    # A long max wait makes the scheduler gather items from many requests into one batch; a
    # long queue-time limit admits all fifty however busy the machine (admission has its own
    # tests: this one is about each request getting its own scores).
    server = server_factory(xlmr_dir, max_wait_ms=50, max_batch_tokens=4096,
                            max_queue_time_s=60)
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


async def test_a_huge_documents_tokenization_does_not_hold_up_small_requests(
    server_factory: ServerFactory, xlmr_dir: str
) -> None:
    # A deadline long enough that admission accepts the big one however busy the machine.
    server = server_factory(xlmr_dir, request_timeout_s=600, max_queue_time_s=600)
    # ~1.5 MB of text: about half a second of tokenization, on the bulk lane.
    big = {"query": "red planet", "documents": [" ".join(WORDS) * 12_000]}
    small = {"query": "red planet", "documents": ["mars is red", "venus is hot"]}
    async with httpx.AsyncClient(base_url=server.url, timeout=600) as client:
        sent = time.perf_counter()
        big_call = asyncio.ensure_future(client.post("/v1/rerank", json=big))
        await asyncio.sleep(0.1)  # the big one is being tokenized now
        answered = []
        for _ in range(3):
            r = await client.post("/v1/rerank", json=small)
            assert r.status_code == 200
            answered.append(time.perf_counter())
        big_response = await big_call
    assert big_response.status_code == 200
    big_tokenization_s = float(big_response.headers["x-tokenization-time"]) / 1000
    assert big_tokenization_s > 0.3, "the big request must tokenize long enough to matter"
    # Order, not a time limit: had they queued behind it, none could be answered before the
    # big one's tokenization ended.
    assert answered[0] < sent + big_tokenization_s, (answered, sent, big_tokenization_s)


def test_huge_requests_tokenize_below_the_workers_priority(
    server_factory: ServerFactory, xlmr_dir: str
) -> None:
    """The bulk lane's thread is nicer than the rest of the process (the device workers keep
    their cores while a huge document is tokenized); the Rust tokenizer works in the lane's own
    thread, not in a pool of its own that would run at normal priority."""
    server = server_factory(xlmr_dir)
    service = server.runtime.models[0].service
    base = os.getpriority(os.PRIO_PROCESS, 0)
    bulk = service._bulk_lane.submit(os.getpriority, os.PRIO_PROCESS, 0).result()
    small = service._lane.submit(os.getpriority, os.PRIO_PROCESS, 0).result()
    assert bulk == min(19, base + BULK_NICENESS) and small == base
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
