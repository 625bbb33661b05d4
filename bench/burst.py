"""Overload burst: small requests arriving at several times the server's capacity.

    .venv/bin/python -m bench.burst                   # about 2 minutes on 2 CPU cores

Starts `reranker serve` with its defaults on a generated model (hidden 256, 4 layers, max
length 512: about 13 requests/s on 2 CPU cores, so the model, not the HTTP layer, is what is
overloaded), then:
1. capacity: 8 clients work through a fixed set of requests, back to back (requests/s answered
   200, first send to last answer; enough clients for dynamic batching to fill batches);
2. latency alone: 20 requests one after another (p50, p99);
3. the burst: Poisson arrivals at --factor x capacity for --seconds, at most 1,000 in flight,
   each client giving up after 60 s, no retries: every answer is counted by status;
4. after the burst: one request after another for 5 s, to see when latency is normal again.
Each phase's length is a flag (the test suite runs it for a second or two).
The workload is the issue's: 1 query + 20 documents of 30-200 words. Request bodies are
encoded once up front, so the load generator (on the same 2 cores) costs as little as it can.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson

from bench.loadgen import Stats, fixed_work, quiet_heap
from bench.servers import ours
from bench.workload import Request, _text

IN_FLIGHT = 1000
CLIENT_TIMEOUT_S = 60.0


def make_bodies(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [
        orjson.dumps({"query": _text(rng, rng.randint(5, 15)),
                      "documents": [_text(rng, rng.randint(30, 200)) for _ in range(20)],
                      "return_documents": False})
        for _ in range(n)
    ]


async def _post(client: httpx.AsyncClient, body: bytes) -> tuple[str, float, bool]:
    """(status, seconds, whether a 429 carried Retry-After)."""
    t0 = time.perf_counter()
    try:
        r = await client.post("/v1/rerank", content=body,
                              headers={"content-type": "application/json"})
    except httpx.HTTPError as exc:
        return type(exc).__name__, time.perf_counter() - t0, False
    return str(r.status_code), time.perf_counter() - t0, "retry-after" in r.headers


async def sequential(url: str, bodies: list[bytes], seconds: float | None = None,
                     count: int | None = None) -> list[tuple[float, float]]:
    """(sent at, latency) of requests sent one after another."""
    quiet_heap()
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
        t0 = time.perf_counter()
        i = 0
        while (count is None or i < count) and (seconds is None
                                                 or time.perf_counter() - t0 < seconds):
            sent = time.perf_counter()
            status, latency, _ = await _post(client, bodies[i % len(bodies)])
            if status == "200":
                out.append((sent, latency))
            i += 1
    return out


async def burst(url: str, bodies: list[bytes], rate: float, seconds: float
                ) -> list[tuple[float, str, float, bool]]:
    """(sent at, status, latency, retry-after present) of every request of the burst."""
    quiet_heap()
    rng = random.Random(1)
    gate = asyncio.Semaphore(IN_FLIGHT)
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT_S, limits=limits) as client:

        async def one(body: bytes, sent: float) -> tuple[float, str, float, bool]:
            async with gate:
                status, latency, retry_after = await _post(client, body)
            return sent, status, latency, retry_after

        tasks = []
        start = time.perf_counter()
        due = start
        i = 0
        while due - start < seconds:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.ensure_future(one(bodies[i % len(bodies)], due)))
            due += rng.expovariate(rate)
            i += 1
        return await asyncio.gather(*tasks)


def pct(values: list[float], q: float) -> float:
    return Stats(latencies=values).percentile(q)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--factor", type=float, default=10.0, help="arrival rate / capacity")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the burst")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="default: a small model generated in a temporary directory")
    parser.add_argument("--capacity-seconds", type=float, default=15.0,
                        help="about how long the capacity run takes (8 requests a second)")
    parser.add_argument("--after-seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model_dir
        if model is None:
            from app.testmodel import write_test_model

            model = write_test_model(Path(tmp) / "small", max_length=512, hidden=256,
                                     layers=4)
        run(str(model), args.factor, args.seconds, args.capacity_seconds, args.after_seconds)


def run(model: str, factor: float, seconds: float, capacity_s: float, after_s: float) -> None:
    bodies = make_bodies(400, seed=5)
    cap_requests = [Request(orjson.loads(b)["query"], orjson.loads(b)["documents"])
                    for b in bodies[:50]]
    with ours(model, "--device", "cpu") as server:
        asyncio.run(sequential(server.url, bodies, count=10))  # warm-up
        count = max(8, round(capacity_s * 8))
        cap = asyncio.run(fixed_work(server.url, "/v1/rerank",
                                     [cap_requests[i % len(cap_requests)] for i in range(count)],
                                     concurrency=8, retry=True))
        capacity = cap.summary()["requests_per_s"]
        alone = [lat for _, lat in asyncio.run(sequential(server.url, bodies, count=20))]
        normal = pct(alone, 0.99)
        rate = factor * capacity
        print(f"capacity {capacity:.1f} req/s (8 clients, {count} requests in"
              f" {cap.seconds:.1f} s); alone p50"
              f" {1000 * pct(alone, 0.5):.0f} ms, p99 {1000 * normal:.0f} ms;"
              f" burst at {rate:.0f} req/s ({factor:g}x) for {seconds:g} s", flush=True)
        t0 = time.perf_counter()
        results = asyncio.run(burst(server.url, bodies, rate, seconds))
        burst_end = t0 + seconds
        after = asyncio.run(sequential(server.url, bodies, seconds=after_s))

    statuses = Counter(status for _, status, _, _ in results)
    ok_done = [sent + lat for sent, status, lat, _ in results if status == "200"]
    in_burst = sum(t0 <= done <= burst_end for done in ok_done)
    refusals = [lat for _, status, lat, _ in results if status == "429"]
    bare_429 = sum(1 for _, status, _, ra in results if status == "429" and not ra)
    slowest = max(lat for _, _, lat, _ in results)
    accepted = [lat for _, status, lat, _ in results if status == "200"]
    late = [(sent - burst_end, lat) for sent, lat in after if lat > 1.5 * normal]
    settled = max((s + lat for s, lat in late), default=0.0)
    print(f"burst: {len(results)} requests: {dict(statuses)}; 429 without Retry-After:"
          f" {bare_429}; slowest answer {slowest:.2f} s (client deadline {CLIENT_TIMEOUT_S:g} s)")
    print(f"429 latency p50 {1000 * pct(refusals, 0.5):.1f} ms, p99"
          f" {1000 * pct(refusals, 0.99):.1f} ms (target < 50 ms)")
    print(f"200 latency p50 {1000 * pct(accepted, 0.5):.0f} ms, p99"
          f" {1000 * pct(accepted, 0.99):.0f} ms")
    print(f"completed during the burst: {in_burst / seconds:.1f} req/s ="
          f" {in_burst / seconds / capacity:.2f}x capacity (target >= 0.9x)")
    print(f"after the burst: {len(after)} requests; latency above 1.5x the p99 alone"
          f" ({1000 * 1.5 * normal:.0f} ms) until {settled:.2f} s after the burst's last"
          f" arrival (target <= 1 s); p50 after {1000 * pct([x for _, x in after], 0.5):.0f} ms")


if __name__ == "__main__":
    main()
