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
encoded once up front and the burst's client is a minimal HTTP/1.1 one (`RawClient`), so the
load generator (on the same 2 cores) costs as little as it can; its CPU time is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

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


class RawClient:
    """A minimal HTTP/1.1 keep-alive client for the burst: it writes a pre-encoded request and
    reads the status line, headers and body, nothing else. The load generator shares the
    server's 2 cores, and there CPU taken from one of the forward pass's two threads stalls both
    (a process using a quarter of one core cut capacity by ~20%); httpx spent ~1.6 ms of CPU per
    request, this about a quarter of that, so the burst measures the server rather than the
    load generator."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    def request(self, body: bytes) -> bytes:
        return (f"POST /v1/rerank HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
                ).encode() + body

    async def post(self, request: bytes) -> tuple[str, float, bool]:
        """(status, seconds, whether a 429 carried Retry-After), as `_post` answers."""
        t0 = time.perf_counter()
        try:
            status, retry_after = await asyncio.wait_for(self._send(request), self.timeout)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
            return type(exc).__name__, time.perf_counter() - t0, False
        return status, time.perf_counter() - t0, retry_after

    async def _send(self, request: bytes) -> tuple[str, bool]:
        while self.idle:  # the server closes idle connections after its keep-alive timeout
            reader, writer = self.idle.pop()
            try:
                return await self._exchange(reader, writer, request)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:  # an answer was under way: not a stale connection
                    raise
            except ConnectionError:
                pass
        return await self._exchange(*await asyncio.open_connection(self.host, self.port),
                                    request)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        request: bytes) -> tuple[str, bool]:
        try:
            writer.write(request)
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            lines = head.split("\r\n")
            headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
            await reader.readexactly(int(headers.get("content-length", "0")))
        except BaseException:
            writer.close()
            raise
        if "close" in headers.get("connection", ""):
            writer.close()
        else:
            self.idle.append((reader, writer))
        return lines[0].split()[1], "retry-after" in headers

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


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
    client = RawClient(url, CLIENT_TIMEOUT_S)
    requests = [client.request(body) for body in bodies]

    async def one(request: bytes, sent: float) -> tuple[float, str, float, bool]:
        async with gate:
            status, latency, retry_after = await client.post(request)
        return sent, status, latency, retry_after

    tasks = []
    start = time.perf_counter()
    due = start
    i = 0
    try:
        while due - start < seconds:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.ensure_future(one(requests[i % len(requests)], due)))
            due += rng.expovariate(rate)
            i += 1
        return await asyncio.gather(*tasks)
    finally:
        client.close()


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
        model = args.model_dir or small_model(Path(tmp))
        run(str(model), args.factor, args.seconds, args.capacity_seconds, args.after_seconds)


def small_model(tmp: Path) -> Path:
    """The burst's model: heavy enough that the forward passes, not HTTP, are the bottleneck."""
    from app.testmodel import write_test_model

    return write_test_model(tmp / "small", max_length=512, hidden=256, layers=4)


def measure_capacity(url: str, bodies: list[bytes], count: int) -> Stats:
    """8 clients through `count` requests (the first 50 bodies in turn), back to back."""
    decoded = [orjson.loads(b) for b in bodies[:50]]
    requests = [Request(d["query"], d["documents"]) for d in decoded]
    work = [requests[i % len(requests)] for i in range(count)]
    return asyncio.run(fixed_work(url, "/v1/rerank", work, concurrency=8, retry=True))


def run(model: str, factor: float, seconds: float, capacity_s: float, after_s: float) -> None:
    bodies = make_bodies(400, seed=5)
    with ours(model, "--device", "cpu") as server:
        asyncio.run(sequential(server.url, bodies, count=10))  # warm-up
        count = max(8, round(capacity_s * 8))
        cap = measure_capacity(server.url, bodies, count)
        capacity = cap.summary()["requests_per_s"]
        alone = [lat for _, lat in asyncio.run(sequential(server.url, bodies, count=20))]
        normal = pct(alone, 0.99)
        rate = factor * capacity
        print(f"capacity {capacity:.1f} req/s (8 clients, {count} requests in"
              f" {cap.seconds:.1f} s); alone p50"
              f" {1000 * pct(alone, 0.5):.0f} ms, p99 {1000 * normal:.0f} ms;"
              f" burst at {rate:.0f} req/s ({factor:g}x) for {seconds:g} s", flush=True)
        t0, cpu0 = time.perf_counter(), time.process_time()
        results = asyncio.run(burst(server.url, bodies, rate, seconds))
        client_cpu = time.process_time() - cpu0
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
          f" {bare_429}; slowest answer {slowest:.2f} s (client deadline {CLIENT_TIMEOUT_S:g} s);"
          f" the load generator used {client_cpu:.1f} CPU-seconds")
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
