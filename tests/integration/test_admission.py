"""Admission over HTTP: an overloaded server refuses at once (429 + Retry-After, no tokenizing),
a request that cannot finish in time even alone gets 413 with the numbers, and --dtype auto
shows what it measured."""

from __future__ import annotations

import asyncio

import httpx

from tests.conftest import ServerFactory
from tests.fakes import WrappedScorer, wrapping_loader

DOCS = [f"document {j} tells of the red planet mars and its two small moons" for j in range(20)]


def slow_server(server_factory: ServerFactory, xlmr_dir: str):  # type: ignore[no-untyped-def]
    """A device that takes 0.3 s a batch, warm-up included, so the throughput the server
    measures is that slow one; 0.2 s of queue allowed."""
    loader, _ = wrapping_loader(lambda s: WrappedScorer(s, delay_s=0.3))
    return server_factory(xlmr_dir, loader=loader, max_batch_tokens=256, max_queue_time_s=0.2)


async def test_overload_is_refused_before_tokenizing_and_retry_after_is_honest(
    server_factory: ServerFactory, xlmr_dir: str
) -> None:
    server = slow_server(server_factory, xlmr_dir)
    rate = server.metric("reranker_throughput_tokens_per_second")
    assert 0 < rate < 256 / 0.3
    tokenized_before = server.metric("reranker_tokenization_duration_seconds_count")
    small = {"query": "red", "documents": ["mars"]}
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        big = asyncio.ensure_future(
            client.post("/v1/rerank", json={"query": "which planet is red", "documents": DOCS})
        )
        while server.metric("reranker_queue_items") == 0:  # it is queued
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # and its first batch is in a 0.3 s forward pass
        # each small request would start only after the batches handed to the device, over
        # 0.2 s of work: refused at once, though it is far smaller than the big one
        refused = await asyncio.gather(*(client.post("/v1/rerank", json=small)
                                         for _ in range(5)))
        assert [r.status_code for r in refused] == [429] * 5, [r.text for r in refused]
        for r in refused:
            assert "queue-time limit" in r.json()["detail"]
            assert int(r.headers["retry-after"]) >= 1
            assert int(r.headers["retry-after-ms"]) >= 1
        # no tokenizer time was spent on what was refused
        tokenized = server.metric("reranker_tokenization_duration_seconds_count")
        assert tokenized == tokenized_before + 1
        assert server.metric("reranker_requests_shed_total", {"reason": "queue_time"}) == 5
        assert (await big).status_code == 200
        # a client that waits as told is served
        await asyncio.sleep(int(refused[0].headers["retry-after-ms"]) / 1000)
        again = await client.post("/v1/rerank", json=small)
        assert again.status_code == 200, again.text
    assert server.metric("reranker_predicted_queue_seconds_count") >= 2
    assert server.metric("reranker_deadline_misses_total") == 0


def test_a_request_that_cannot_finish_even_alone_is_413_with_the_numbers(
    server_factory: ServerFactory, xlmr_dir: str
) -> None:
    server = slow_server(server_factory, xlmr_dir)
    with server.client() as c:
        r = c.post("/v1/rerank", json={"query": "red", "documents": DOCS},
                   headers={"x-request-timeout": "0.05"})
    assert r.status_code == 413
    detail = r.json()["detail"]
    assert "tokens/s" in detail and "0.05 s deadline" in detail and "idle server" in detail
    assert server.metric("reranker_requests_shed_total", {"reason": "too_large"}) == 1


def test_dtype_auto_measures_and_reports_its_choice(
    server_factory: ServerFactory, xlmr_dir: str
) -> None:
    server = server_factory(xlmr_dir, dtype="auto")
    with server.client() as c:
        card = c.get("/v1/models").json()["data"][0]
    probe = card["dtype_probe_gflops"]
    assert set(probe) == {"float32", "bfloat16"} and min(probe.values()) > 0
    assert card["dtype"] == max(probe, key=probe.__getitem__)
    assert card["tokens_per_second"] > 0 and card["max_queue_time_s"] == 1.0
