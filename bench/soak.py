"""Soak: a steady closed-loop load for a while, reporting throughput, errors and RSS growth.

    .venv/bin/python -m bench.soak --model ./models/tiny --minutes 30 --concurrency 8
    .venv/bin/python -m bench.soak --url http://127.0.0.1:8080 --pid 1234 --minutes 60

With --model it starts `reranker serve` itself (CPU, default settings) on a free port and stops
it at the end. The mix: 1 query and 5-40 documents of 20-400 words (2% of them 1000-3000), and
every 25th request carries one document of about 50,000 tokens. Clients honour 429 +
Retry-After. Every --interval seconds it prints requests/s, p50/p99 latency, answers by
status, 429s waited out and the server's resident memory; the last lines compare the RSS after
warm-up with the end, and over the last third of the run (the steady state), and a figure of
memory and throughput over time is written (--plot, SVG). Not part of CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from pathlib import Path

from bench.loadgen import closed_loop
from bench.plots import SoakSample, soak_memory
from bench.servers import ours
from bench.workload import Request, make_requests

ROOT = Path(__file__).resolve().parents[1]
BIG_EVERY = 25
BIG_WORDS = 40_000
"""About 50,000 tokens with the generated models' tokenizer."""


def soak_requests() -> list[Request]:
    """Mostly RAG-sized requests; every BIG_EVERY-th has a ~50,000-token document."""
    requests = make_requests(200, seed=3, docs=(5, 40), long_tail=0.02)
    big_doc = " ".join(requests[0].documents[0].split() * (BIG_WORDS // 20 + 1))
    big_doc = " ".join(big_doc.split()[:BIG_WORDS])
    for i in range(0, len(requests), BIG_EVERY):
        requests[i] = Request(requests[i].query, [*requests[i].documents[:4], big_doc])
    return requests


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="start a server for this model directory")
    parser.add_argument("--url", help="an already running server")
    parser.add_argument("--pid", type=int, help="its process id, to read RSS")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--interval", type=float, default=30, help="seconds per report line")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--plot", type=Path, default=ROOT / "docs/img/soak.svg",
                        help="where the figure (SVG) is written")
    args = parser.parse_args()
    if not (args.model or args.url):
        parser.error("give --model or --url")
    with contextlib.ExitStack() as stack:
        if args.model:
            server = stack.enter_context(
                ours(args.model, "--device", "cpu", timeout=120)
            )
            soak(args, server.url, server.pid)
        else:
            soak(args, args.url, args.pid)


def soak(args: argparse.Namespace, url: str, pid: int | None) -> None:
    requests = soak_requests()
    end = time.monotonic() + 60 * args.minutes
    samples: list[SoakSample] = []
    totals = {"requests": 0, "errors": 0, "refusals": 0}
    print("  t(s)  req/s  p50 ms  p99 ms  non-200  429s  RSS MB")
    t0 = time.monotonic()
    while time.monotonic() < end:
        seconds = min(args.interval, end - time.monotonic())
        stats = asyncio.run(closed_loop(url, "/v1/rerank", requests,
                                        concurrency=args.concurrency, seconds=seconds,
                                        warmup_s=0.0, retry=True))
        s = stats.summary()
        rss = rss_mb(pid) if pid else float("nan")
        samples.append(SoakSample(time.monotonic() - t0, rss, s["requests_per_s"],
                                  s["p99_ms"] / 1000))
        totals["requests"] += len(stats.latencies)
        totals["errors"] += int(s["errors"])
        totals["refusals"] += stats.refusals
        bad = {k: v for k, v in stats.statuses.items() if k != "200"}
        print(f"{samples[-1].t_s:6.0f} {s['requests_per_s']:6.1f} {s['p50_ms']:7.0f}"
              f" {s['p99_ms']:7.0f} {bad or 0!s:>8} {stats.refusals:5d} {rss:7.0f}", flush=True)
    first, last = samples[0].rss_mb, samples[-1].rss_mb
    total_s = samples[-1].t_s
    steady = next(x.rss_mb for x in samples if x.t_s >= total_s * 2 / 3)
    print(f"total: {totals['requests']} requests answered 200, {totals['errors']} errors,"
          f" {totals['refusals']} 429s waited out; RSS {first:.0f} -> {last:.0f} MB"
          f" ({last - first:+.0f} MB)")
    print(f"last third of the run ({total_s / 3 / 60:.0f} min): RSS {steady:.0f} -> {last:.0f} MB,"
          f" {100 * (last - steady) / steady:+.2f}% (target < 2%)")
    title = (f"Soak: {args.concurrency} clients, {total_s / 60:.0f} min,"
             f" {totals['requests']} requests answered 200, {totals['errors']} errors")
    print(f"wrote {soak_memory(args.plot, samples, title)}")


if __name__ == "__main__":
    main()
