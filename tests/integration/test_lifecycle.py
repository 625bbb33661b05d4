"""Readiness, failed batches, and disconnected clients, against a live server."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import httpx

from app.errors import InferenceFailed
from tests.conftest import ServerFactory
from tests.fakes import WrappedScorer, wrapping_loader


def test_ready_is_503_until_loaded_and_warm(server_factory: ServerFactory, xlmr_dir: str) -> None:
    gate = threading.Event()
    loader, _ = wrapping_loader(lambda s: WrappedScorer(s), gate=gate)
    server = server_factory(xlmr_dir, loader=loader, wait_ready=False)
    with server.client() as c:
        assert c.get("/health").status_code == 200
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["status"] == "starting"
        r = c.post("/v1/rerank", json={"query": "q", "documents": ["a"]})
        assert r.status_code == 503 and "loading" in r.json()["detail"]
        assert int(r.headers["retry-after"]) >= 1
        assert server.metric("reranker_ready") == 0
        gate.set()
        deadline = time.monotonic() + 30
        while c.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert c.post("/v1/rerank", json={"query": "q", "documents": ["a"]}).status_code == 200
        assert server.metric("reranker_ready") == 1


def test_the_start_up_heap_is_out_of_the_collectors_sight(
    server_factory: ServerFactory, xlmr_dir: str
) -> None:
    """Once ready, a full garbage collection scans only what requests allocated since, not
    the hundreds of thousands of objects of torch, transformers and the model (a pause of
    ~200 ms that every thread, and so every request in flight, would wait out)."""
    server = server_factory(xlmr_dir)
    with server.client() as c:
        assert c.post("/v1/rerank", json={"query": "q", "documents": ["a"]}).status_code == 200
    assert gc.get_freeze_count() > 10 * len(gc.get_objects())


async def test_a_failed_batch_fails_exactly_its_requests(
    server_factory: ServerFactory, xlmr_dir: str
) -> None:
    poison: set[tuple[int, ...]] = set()

    def has_poison(ids: object) -> bool:
        return any(tuple(x) in poison for x in ids)  # type: ignore[attr-defined]

    loader, scorers = wrapping_loader(lambda s: WrappedScorer(s, fail_if=has_poison))
    server = server_factory(xlmr_dir, loader=loader, max_wait_ms=20, max_batch_tokens=64)
    encoder = server.runtime.loaded_model.encoder
    requests = [
        {"query": f"query {i}", "documents": [f"document {i} {j}" for j in range(3)]}
        for i in range(20)
    ]
    for i in (3, 8):
        poison.add(tuple(encoder.encode(requests[i]["query"], requests[i]["documents"][:1])
                         .pairs[0].ids))

    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        responses = await asyncio.gather(*(client.post("/v1/rerank", json=b) for b in requests))

    failed_batches = [set(ids) for ids, failed in scorers[0].log if failed]
    assert failed_batches, "the poison never reached the model"
    for body, response in zip(requests, responses, strict=True):
        pairs = {tuple(p.ids) for p in encoder.encode(body["query"], body["documents"]).pairs}
        in_failed = any(pairs & batch for batch in failed_batches)
        if in_failed:
            assert response.status_code == 500
            assert response.json() == {"detail": InferenceFailed().detail}
            assert "secret" not in response.text
        else:
            assert response.status_code == 200, response.text
    statuses = [r.status_code for r in responses]
    assert statuses.count(500) >= 2 and statuses.count(200) >= 6, statuses
    assert server.metric("reranker_failures_total", {"reason": "batch_error"}) >= 1
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        r = await client.post("/v1/rerank", json={"query": "q", "documents": ["still serving"]})
        assert r.status_code == 200


def test_a_disconnected_clients_items_are_dropped(
    server_factory: ServerFactory, xlmr_dir: str
) -> None:
    loader, scorers = wrapping_loader(lambda s: WrappedScorer(s, delay_s=0.1))
    server = server_factory(xlmr_dir, loader=loader, max_wait_ms=0, max_batch_tokens=64)
    docs = [f"document number {j}" for j in range(60)]
    calls_before = len(scorers[0].log)
    with server.client(timeout=0.35) as c:
        try:
            c.post("/v1/rerank", json={"query": "q", "documents": docs})
            raise AssertionError("the request should have timed out")
        except httpx.ReadTimeout:
            pass
    deadline = time.monotonic() + 10
    while server.metric("reranker_items_dropped_total") == 0:
        assert time.monotonic() < deadline, "abandoned items were not dropped"
        time.sleep(0.05)
    time.sleep(0.3)
    scored = sum(len(ids) for ids, _ in scorers[0].log[calls_before:])
    assert scored < len(docs)
    assert server.metric("reranker_failures_total", {"reason": "client_disconnected"}) == 1
    assert server.metric("reranker_queue_items") == 0
    with server.client() as c:
        assert c.post("/v1/rerank", json={"query": "q", "documents": ["a"]}).status_code == 200


async def test_a_full_queue_answers_429_with_retry_after(
    server_factory: ServerFactory, xlmr_dir: str
) -> None:
    loader, _ = wrapping_loader(lambda s: WrappedScorer(s, delay_s=0.05))
    server = server_factory(xlmr_dir, loader=loader, max_queue=8, max_batch_tokens=64)
    body = {"query": "q", "documents": [f"doc {j}" for j in range(4)]}
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        responses = await asyncio.gather(*(client.post("/v1/rerank", json=body) for _ in range(12)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 429}, statuses
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert "max_queue=8" in r.json()["detail"]
    assert server.metric("reranker_failures_total", {"reason": "queue_full"}) == statuses.count(429)
