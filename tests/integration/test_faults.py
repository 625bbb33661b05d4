"""Fault injection through test-only scorers: out of memory, a hung forward, dying workers.
Each test asserts exactly which requests failed and that the rest succeeded."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import httpx
import pytest
import torch

from app import runtime as runtime_module
from app.batching.worker import Worker
from tests.conftest import ServerFactory
from tests.fakes import WorkerKilled, WrappedScorer, exploding_loader, wrapping_loader
from tests.reference import reference_scores


def _contains(marker: int):  # type: ignore[no-untyped-def]
    def match(ids: Sequence[Sequence[int]]) -> bool:
        return any(marker in x for x in ids)

    return match


def test_out_of_memory_splits_the_batch_and_backs_off(
    server_factory: ServerFactory, xlmr_dir: str
) -> None:
    def big(ids: Sequence[Sequence[int]]) -> bool:
        return len(ids) > 2  # the "device" only fits two pairs

    loader, scorers = wrapping_loader(
        lambda s: WrappedScorer(s, fail_if=lambda ids: False,
                                error=lambda: torch.OutOfMemoryError("CUDA oom"))
    )
    server = server_factory(xlmr_dir, loader=loader, max_wait_ms=30, max_batch_tokens=4096)
    scorers[0].fail_if = big  # the device shrinks after start-up
    started = len(scorers[0].log)
    docs = [f"document {i} about mars" for i in range(9)]
    with server.client() as c:
        r = c.post("/v1/rerank", json={"query": "red planet", "documents": docs})
    assert r.status_code == 200, r.text
    got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    want = reference_scores(xlmr_dir, "red planet", docs)
    assert max(abs(got[i] - w) for i, w in enumerate(want)) < 1e-5
    assert server.metric("reranker_out_of_memory_total") >= 2  # 9 -> 4 + 5 -> ... -> 2s
    # halved once for the batch, however many times it was split
    assert server.metric("reranker_batch_token_budget") == 2048
    assert any(failed for _, failed in scorers[0].log[started:])
    assert all(len(ids) <= 2 for ids, failed in scorers[0].log[started:] if not failed)


def test_a_hung_forward_answers_504_at_the_deadline_and_drops_queued_work(
    server_factory: ServerFactory, xlmr_dir: str
) -> None:
    # no delay during the warm-up, so the throughput it measures is the healthy one
    loader, made = wrapping_loader(
        lambda s: WrappedScorer(s, delay_s=2.0, delay_if=lambda ids: False)
    )
    server = server_factory(xlmr_dir, loader=loader, max_wait_ms=0, max_batch_tokens=48)
    hang_marker = server.runtime.loaded_model.encoder.encode_query("Saturn")[1]
    made[0].delay_if = _contains(hang_marker)
    dropped_before = server.metric("reranker_items_dropped_total")
    with server.client() as c:
        t0 = time.monotonic()
        r = c.post(
            "/v1/rerank",
            json={"query": "Saturn", "documents": [f"doc {i}" for i in range(12)]},
            headers={"x-request-timeout": "0.5"},
        )
        elapsed = time.monotonic() - t0
        assert r.status_code == 504 and "deadline" in r.json()["detail"]
        assert elapsed >= 0.5  # never before the deadline
        # and not after the hung forward: it is still running (it logs when it ends)
        assert not any(hang_marker in x for ids, _ in made[0].log for x in ids)
        time.sleep(2.2)  # the hung batch ends; nothing else of that request reaches the model
        r = c.post("/v1/rerank", json={"query": "fine", "documents": ["a", "b"]})
        assert r.status_code == 200
    zebra_batches = [ids for ids, _ in made[0].log if any(hang_marker in x for x in ids)]
    assert len(zebra_batches) == 1, "queued items of the timed-out request were scored"
    assert server.metric("reranker_items_dropped_total") > dropped_before
    assert server.metric("reranker_failures_total", {"reason": "deadline_exceeded"}) == 1
    assert server.metric("reranker_deadline_misses_total") == 1  # admitted, then too late


def test_bad_timeout_header_is_422(server_factory: ServerFactory, xlmr_dir: str) -> None:
    server = server_factory(xlmr_dir)
    with server.client() as c:
        for bad in ("0", "-1", "soon", "nan"):
            r = c.post("/v1/rerank", json={"query": "q", "documents": ["a"]},
                       headers={"x-request-timeout": bad})
            assert r.status_code == 422 and "x-request-timeout" in r.json()["detail"]


async def test_a_dying_worker_fails_its_batch_and_is_restarted(
    server_factory: ServerFactory, xlmr_dir: str
) -> None:
    loader, made = wrapping_loader(lambda s: WrappedScorer(s, error=WorkerKilled))
    server = server_factory(xlmr_dir, loader=loader, max_wait_ms=0)
    marker = server.runtime.loaded_model.encoder.encode_query("Saturn")[1]
    kills = {"left": 1}

    def once(ids: Sequence[Sequence[int]]) -> bool:
        if any(marker in x for x in ids) and kills["left"]:
            kills["left"] -= 1
            return True
        return False

    made[0].fail_if = once
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        r = await client.post("/v1/rerank", json={"query": "Saturn", "documents": ["a"]})
        assert r.status_code == 500 and "retry" in r.json()["detail"]
        deadline = time.monotonic() + 10
        while (await client.get("/ready")).status_code != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        ok = await asyncio.gather(
            *(client.post("/v1/rerank", json={"query": "Saturn", "documents": [f"d{i}"]})
              for i in range(5))
        )
    assert [x.status_code for x in ok] == [200] * 5
    assert server.metric("reranker_worker_restarts_total",
                         {"model": server.runtime.models[0].name}) == 1
    assert server.runtime.phase == "ready" and not server.fatal


async def test_one_models_worker_restart_leaves_the_others_serving(
    server_factory: ServerFactory, xlmr_dir: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While model b's worker is being replaced, b answers 503 with Retry-After and /ready
    says recovering, but model a keeps answering 200."""
    loader, made = wrapping_loader(lambda s: WrappedScorer(s, error=WorkerKilled))
    server = server_factory([xlmr_dir, xlmr_dir], served_model_name=["a", "b"], loader=loader,
                            max_wait_ms=0)
    marker = server.runtime.models[1].loaded.encoder.encode_query("Saturn")[1]
    made[1].fail_if = _contains(marker)
    gate = threading.Event()

    class HeldWorker(Worker):
        """A replacement whose threads start only once the test lets them."""

        def start(self) -> None:
            threading.Thread(target=lambda: gate.wait(10) and Worker.start(self)).start()

    monkeypatch.setattr(runtime_module, "Worker", HeldWorker)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            body = {"query": "Saturn", "documents": ["a"]}
            assert (await client.post("/v1/rerank", json={**body, "model": "b"})).status_code \
                == 500
            made[1].fail_if = None
            while not server.runtime.models[1].recovering:
                await asyncio.sleep(0.01)
            held = await client.post("/v1/rerank", json={**body, "model": "b"})
            assert held.status_code == 503 and "restarting" in held.json()["detail"]
            assert held.headers["retry-after"] == "1"
            assert (await client.get("/ready")).json()["status"] == "recovering"
            served = await client.post("/v1/rerank", json={**body, "model": "a"})
            assert served.status_code == 200, served.text
            gate.set()
            deadline = time.monotonic() + 10
            while (await client.get("/ready")).status_code != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            again = await client.post("/v1/rerank", json={**body, "model": "b"})
            assert again.status_code == 200, again.text
    finally:
        gate.set()
    assert server.metric("reranker_worker_restarts_total", {"model": "b"}) == 1
    assert server.metric("reranker_worker_restarts_total", {"model": "a"}) == 0


def test_repeated_worker_deaths_give_up(server_factory: ServerFactory, xlmr_dir: str) -> None:
    loader, made = wrapping_loader(lambda s: WrappedScorer(s, error=WorkerKilled))
    server = server_factory(xlmr_dir, loader=loader, max_wait_ms=0)
    made[0].fail_if = _contains(server.runtime.loaded_model.encoder.encode_query("Saturn")[1])
    with server.client() as c:
        for _ in range(3):
            r = c.post("/v1/rerank", json={"query": "Saturn", "documents": ["d"]})
            assert r.status_code in (500, 503), r.text
            time.sleep(0.3)
        deadline = time.monotonic() + 5
        while not server.fatal:
            assert time.monotonic() < deadline, "the runtime never gave up"
            time.sleep(0.05)
        assert server.runtime.phase == "failed"
        assert c.get("/ready").status_code == 503
        r = c.post("/v1/rerank", json={"query": "q", "documents": ["x"]})
        assert r.status_code == 503 and "failed" in r.json()["detail"]


def test_an_unexpected_error_is_a_generic_500_that_keeps_the_request_id(
    server_factory: ServerFactory, xlmr_dir: str
) -> None:
    server = server_factory(xlmr_dir, loader=exploding_loader("boom"))
    with server.client() as c:
        for route, field in (("/v1/rerank", "documents"), ("/v2/rerank", "documents"),
                             ("/rerank", "texts")):
            r = c.post(route, json={"query": "boom", field: ["Mars"]},
                       headers={"x-request-id": "trace-500"})
            assert r.status_code == 500
            assert r.headers["x-request-id"] == "trace-500"
            assert "secret" not in r.text and r.json()["detail"]
            assert c.post(route, json={"query": "red", field: ["Mars"]}).status_code == 200
    assert server.metric("reranker_failures_total", {"reason": "internal"}) == 3


async def test_a_sticky_cuda_error_takes_the_only_device_out_and_stops_the_process(
    server_factory: ServerFactory, xlmr_dir: str
) -> None:
    loader, made = wrapping_loader(
        lambda s: WrappedScorer(
            s, fail_if=lambda ids: False,
            error=lambda: RuntimeError("CUDA error: an illegal memory access was encountered"),
        )
    )
    server = server_factory(xlmr_dir, loader=loader)
    marker = server.runtime.loaded_model.encoder.encode_query("Saturn")[1]
    made[0].fail_if = _contains(marker)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        r = await client.post("/v1/rerank", json={"query": "Saturn", "documents": ["a"]})
        assert r.status_code == 500
        deadline = time.monotonic() + 10
        while not server.fatal:  # the orchestrator is asked to restart the process
            assert time.monotonic() < deadline, "the broken device was kept in service"
            await asyncio.sleep(0.05)
        assert (await client.get("/ready")).status_code == 503
    assert "CUDA" in str(server.fatal[0])
    assert server.metric("reranker_devices_out_of_service_total",
                         {"model": server.runtime.models[0].name}) == 1
    assert server.metric("reranker_worker_restarts_total") == 0  # not restarted: it is broken


def test_a_budget_that_does_not_fit_is_lowered_at_start_up(
    server_factory: ServerFactory, xlmr_dir: str
) -> None:
    def over_1000_tokens(ids: Sequence[Sequence[int]]) -> bool:
        return sum(map(len, ids)) > 1000

    loader, scorers = wrapping_loader(
        lambda s: WrappedScorer(s, fail_if=over_1000_tokens,
                                error=lambda: torch.OutOfMemoryError("CUDA oom"))
    )
    server = server_factory(xlmr_dir, loader=loader, max_batch_tokens=4096)
    with server.client() as c:
        card = c.get("/v1/models").json()["data"][0]
        docs = [f"document {i} about mars " * 8 for i in range(40)]
        r = c.post("/v1/rerank", json={"query": "red planet", "documents": docs})
    assert card["max_batch_tokens"] == 512  # 4096 -> 2048 -> 1024 -> 512
    assert server.metric("reranker_batch_token_budget") == 512
    assert r.status_code == 200
    warm_up = [ids for ids, failed in scorers[0].log if failed]
    assert warm_up and len({len(x) for x in warm_up[0]}) > 1  # windows of mixed lengths
    # once started, no batch needs splitting: every forward fits
    assert server.metric("reranker_out_of_memory_total") == 0


def test_models_that_do_not_fit_together_stop_the_start_with_one_line(
    server_factory: ServerFactory, xlmr_dir: str, bert_dir: str
) -> None:
    """The second model's warm-up runs out of memory even at one full-length input: the start
    fails naming both models, instead of serving one that cannot run."""
    loader, _ = wrapping_loader(
        lambda s: WrappedScorer(s, fail_if=lambda ids: s.model.cfg.family == "bert",
                                error=lambda: torch.OutOfMemoryError("CUDA oom"))
    )
    server = server_factory([xlmr_dir, bert_dir], loader=loader, wait_ready=False,
                            served_model_name=["xlmr", "bert"])
    deadline = time.monotonic() + 60
    while not server.fatal:
        assert time.monotonic() < deadline, "the start did not fail"
        time.sleep(0.05)
    message = str(server.fatal[0])
    assert "bert: not even one full-length input fits in device memory next to xlmr" in message
    assert server.runtime.phase == "failed"
