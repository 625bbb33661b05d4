"""Load generation over HTTP (asyncio + httpx): closed loop (N clients for T seconds, or over a
fixed set of requests) and open loop (Poisson arrivals at R requests/s, bounded count), with
throughput, latency percentiles and errors by status.

With `retry=True` a client honours 429 as a well-behaved one does: it waits as told
(`retry-after-ms` when sent, else `Retry-After`) and sends the same request again; its latency
counts from the first send, and each refusal is counted in `Stats.refusals`."""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.workload import Request

Body = Callable[[Request], dict[str, Any]]


def quiet_heap() -> None:
    """Keep the load generator's own garbage collection out of the latencies it records: with
    torch and transformers imported here, one full collection of this process stopped its event
    loop for ~230 ms, which a probe then reported as the server's latency (the first fairness
    run's one outlier). Every measuring loop calls this before it starts."""
    gc.collect()
    gc.freeze()


def jina_body(req: Request) -> dict[str, Any]:
    return {"query": req.query, "documents": req.documents, "return_documents": False}


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    documents: int = 0
    tokens: int = 0
    started: float = 0.0
    ended: float = 0.0
    refusals: int = 0
    """429 answers that a retrying client waited out (not in `statuses`)."""
    refusal_latencies: list[float] = field(default_factory=list)
    """How long each 429 took to come back."""

    def record(self, status: str, latency: float, req: Request) -> None:
        self.statuses[status] += 1
        if status == "200":
            self.latencies.append(latency)
            self.documents += len(req.documents)
            self.tokens += req.tokens

    @property
    def seconds(self) -> float:
        return max(1e-9, self.ended - self.started)

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> dict[str, float]:
        return {
            "requests_per_s": len(self.latencies) / self.seconds,
            "documents_per_s": self.documents / self.seconds,  # = pairs/s: one pair per document
            "tokens_per_s": self.tokens / self.seconds,
            "p50_ms": 1000 * self.percentile(0.50),
            "p95_ms": 1000 * self.percentile(0.95),
            "p99_ms": 1000 * self.percentile(0.99),
            "max_ms": 1000 * max(self.latencies, default=float("nan")),
            "errors": sum(v for k, v in self.statuses.items() if k != "200"),
            "refusals": self.refusals,
        }


def retry_delay(response: httpx.Response) -> float:
    """Seconds a 429 asks the client to wait."""
    ms = response.headers.get("retry-after-ms")
    if ms is not None:
        return float(ms) / 1000
    return float(response.headers.get("retry-after", "1"))


async def _send(client: httpx.AsyncClient, path: str, body: dict[str, Any],
                stats: Stats | None = None, retry: bool = False,
                give_up_s: float = 3600.0) -> tuple[str, float]:
    """(final status, seconds from the first send). With `retry`, 429s are waited out and
    counted in `stats.refusals`, until `give_up_s` has passed."""
    t0 = time.perf_counter()
    while True:
        sent = time.perf_counter()
        try:
            r = await client.post(path, json=body)
            status = str(r.status_code)
        except httpx.HTTPError as exc:
            return type(exc).__name__, time.perf_counter() - t0
        if status != "429" or not retry or stats is None:
            return status, time.perf_counter() - t0
        stats.refusals += 1
        stats.refusal_latencies.append(time.perf_counter() - sent)
        delay = retry_delay(r)
        if time.perf_counter() + delay - t0 > give_up_s:
            return status, time.perf_counter() - t0
        await asyncio.sleep(delay)


async def closed_loop(
    url: str, path: str, requests: list[Request], *, concurrency: int, seconds: float,
    warmup_s: float = 2.0, body: Body = jina_body, timeout: float = 120.0, retry: bool = False,
) -> Stats:
    """`concurrency` clients send back to back for `warmup_s + seconds`. Counted: requests sent
    after the warm-up that were answered before the end, over exactly `seconds`; requests still
    in flight then are awaited but not counted, so neither end of the window is biased."""
    quiet_heap()
    stats = Stats()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        stats.started = time.perf_counter() + warmup_s
        stats.ended = stats.started + seconds

        async def client_loop(worker: int) -> None:
            i = worker
            while (sent := time.perf_counter()) < stats.ended:
                req = requests[i % len(requests)]
                status, latency = await _send(client, path, body(req), stats, retry)
                if sent >= stats.started and sent + latency <= stats.ended:
                    stats.record(status, latency, req)
                i += concurrency

        await asyncio.gather(*(client_loop(w) for w in range(concurrency)))
    return stats


async def fixed_work(
    url: str, path: str, requests: list[Request], *, concurrency: int, body: Body = jina_body,
    timeout: float = 3600.0, retry: bool = False,
) -> Stats:
    """Every request of `requests` once, `concurrency` clients taking the next one as they
    finish; timed from the first send to the last answer. The same work for every server (and
    for the in-process engine bound), so throughput ratios are not diluted by which requests a
    time window happened to hold. Warm up separately."""
    quiet_heap()
    stats = Stats()
    queue = list(reversed(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def client_loop() -> None:
            while queue:
                req = queue.pop()
                status, latency = await _send(client, path, body(req), stats, retry)
                stats.record(status, latency, req)

        stats.started = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        stats.ended = time.perf_counter()
    return stats


async def open_loop(
    url: str, path: str, requests: list[Request], *, rate: float, count: int, seed: int = 0,
    body: Body = jina_body, timeout: float = 120.0, retry: bool = False,
) -> Stats:
    """`count` requests with Poisson arrivals at `rate`/s, each sent when it is due."""
    quiet_heap()
    stats = Stats()
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=timeout,
                                 limits=httpx.Limits(max_connections=None)) as client:
        tasks = []
        stats.started = time.perf_counter()
        due = stats.started
        for i in range(count):
            due += rng.expovariate(rate)
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            req = requests[i % len(requests)]
            tasks.append(asyncio.ensure_future(_send(client, path, body(req), stats, retry)))
        for req, (status, latency) in zip(
            (requests[i % len(requests)] for i in range(count)), await asyncio.gather(*tasks),
            strict=True,
        ):
            stats.record(status, latency, req)
        stats.ended = time.perf_counter()
    return stats
