"""SIGTERM: readiness and new requests turn 503 at once, every accepted request is answered,
and the process exits 0."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest

from tests.cli_server import spawn_server
from tests.conftest import ServerFactory

pytestmark = pytest.mark.slow


def test_begin_shutdown_turns_ready_and_new_requests_503(
    server_factory: ServerFactory, xlmr_dir: str
) -> None:
    server = server_factory(xlmr_dir)
    with server.client() as c:
        assert c.get("/ready").status_code == 200
        server.runtime.begin_shutdown()
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["status"] == "stopping"
        r = c.post("/v1/rerank", json={"query": "q", "documents": ["a"]})
        assert r.status_code == 503 and "shutting down" in r.json()["detail"]
        assert "retry-after" in r.headers
    assert server.metric("reranker_ready") == 0


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def test_sigterm_drains_in_flight_requests_and_exits_0(xlmr_dir: str) -> None:
    proc, url = spawn_server("--model", xlmr_dir, "--device", "cpu", "--dtype", "float32",
                             "--max-batch-tokens", "2048", "--shutdown-grace", "60",
                             "--max-queue-time", "600")  # all of them admitted
    try:
        n = 12
        docs = [f"Mars is the red planet number {j} " * 12 for j in range(150)]
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            pending = [
                asyncio.ensure_future(
                    client.post("/v1/rerank", json={"query": f"q{i}", "documents": docs})
                )
                for i in range(n)
            ]
            give_up = time.monotonic() + 60
            while _metric(url, "reranker_in_flight_requests") < n:  # all accepted
                assert time.monotonic() < give_up and not any(p.done() for p in pending)
                await asyncio.sleep(0.02)
            t_signal = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            responses = await asyncio.gather(*pending)
            drained_s = time.monotonic() - t_signal
        assert [r.status_code for r in responses] == [200] * n
        assert all(len(r.json()["results"]) == len(docs) for r in responses)
        try:
            late = httpx.post(f"{url}/v1/rerank", json={"query": "q", "documents": ["a"]})
            assert late.status_code == 503
        except httpx.TransportError:
            pass  # the listener is already closed: also a fast, clear answer
        assert proc.wait(60) == 0
        print(f"{n} in-flight requests answered 200 within {drained_s:.2f} s of SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
