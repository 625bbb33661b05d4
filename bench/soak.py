"""Soak: a steady closed-loop load for a while, reporting throughput, errors and RSS growth.

    .venv/bin/python -m bench.soak --model ./models/tiny --minutes 10 --concurrency 8
    .venv/bin/python -m bench.soak --url http://127.0.0.1:8080 --pid 1234 --minutes 60

With --model it starts `reranker serve` itself (CPU, float32) on a free port and stops it at
the end. Every --interval seconds it prints requests/s, p50/p99 latency, errors by status and
the server's resident memory; the last line compares the RSS after warm-up with the end.
Not part of CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from pathlib import Path

from bench.loadgen import closed_loop
from bench.servers import ours
from bench.workload import make_requests


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
    args = parser.parse_args()
    if not (args.model or args.url):
        parser.error("give --model or --url")
    with contextlib.ExitStack() as stack:
        if args.model:
            server = stack.enter_context(
                ours(args.model, "--device", "cpu", "--dtype", "float32", timeout=120)
            )
            soak(args, server.url, server.pid)
        else:
            soak(args, args.url, args.pid)


def soak(args: argparse.Namespace, url: str, pid: int | None) -> None:
    requests = make_requests(200, seed=3, docs=(5, 40), long_tail=0.02)
    end = time.monotonic() + 60 * args.minutes
    first_rss = None
    totals = {"requests": 0, "errors": 0}
    print("  t(s)  req/s  p50 ms  p99 ms  errors  RSS MB")
    t0 = time.monotonic()
    while time.monotonic() < end:
        seconds = min(args.interval, end - time.monotonic())
        stats = asyncio.run(closed_loop(url, "/v1/rerank", requests,
                                        concurrency=args.concurrency, seconds=seconds,
                                        warmup_s=0.0))
        s = stats.summary()
        rss = rss_mb(pid) if pid else float("nan")
        first_rss = first_rss or rss
        totals["requests"] += len(stats.latencies)
        totals["errors"] += int(s["errors"])
        bad = {k: v for k, v in stats.statuses.items() if k != "200"}
        print(f"{time.monotonic() - t0:6.0f} {s['requests_per_s']:6.1f} {s['p50_ms']:7.0f}"
              f" {s['p99_ms']:7.0f} {bad or 0!s:>7} {rss:7.0f}", flush=True)
    print(f"total: {totals['requests']} requests answered 200, {totals['errors']} errors;"
          f" RSS {first_rss:.0f} -> {rss:.0f} MB ({rss - (first_rss or 0):+.0f} MB)")


if __name__ == "__main__":
    main()
