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
    body = {"query": "which planet is red", "documents": DOCS}  # over a second of work each
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        # Each may wait behind queued work as long as its own work takes: the first two are
        # admitted, the later ones would wait longer and are refused at once.
        answers = await asyncio.gather(*(client.post("/v1/rerank", json=body) for _ in range(6)))
        refused = [r for r in answers if r.status_code == 429]
        served = [r for r in answers if r.status_code == 200]
        assert len(refused) + len(served) == 6 and len(refused) >= 2 and served, \
            [r.text for r in answers]
        for r in refused:
            assert "queue-time limit" in r.json()["detail"]
            assert int(r.headers["retry-after"]) >= 1
            assert int(r.headers["retry-after-ms"]) >= 1
        # no tokenizer time was spent on what was refused
        tokenized = server.metric("reranker_tokenization_duration_seconds_count")
        assert tokenized == tokenized_before + len(served)
        shed = server.metric("reranker_requests_shed_total", {"reason": "queue_time"})
        assert shed == len(refused)
        # a client that waits as told is served (the figure is a prediction: allow it to be
        # told once more, never to be refused outright)
        wait_ms = int(refused[0].headers["retry-after-ms"])
        for _ in range(2):
            await asyncio.sleep(wait_ms / 1000)
            again = await client.post("/v1/rerank", json=body)
            if again.status_code != 429:
                break
            wait_ms = int(again.headers["retry-after-ms"])
        assert again.status_code == 200, again.text
    assert server.metric("reranker_predicted_queue_seconds_count") >= len(served) + 1
    assert server.metric("reranker_deadline_misses_total") == 0


async def test_the_batch_in_flight_does_not_count_against_the_queue_time_limit(
    server_factory: ServerFactory, xlmr_dir: str
) -> None:
    server = slow_server(server_factory, xlmr_dir)
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        big = asyncio.ensure_future(
            client.post("/v1/rerank", json={"query": "which planet is red", "documents": DOCS})
        )
        while server.metric("reranker_queue_items") == 0:  # it is queued
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # and its first batch is in a 0.3 s forward pass
        # a small request waits for that batch (more than the 0.2 s limit), then overtakes
        # the big one's remaining windows: admitted
        small = await client.post("/v1/rerank", json={"query": "red", "documents": ["mars"]})
        assert small.status_code == 200, small.text
        assert (await big).status_code == 200
    assert server.metric("reranker_requests_shed_total", {"reason": "queue_time"}) == 0


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
