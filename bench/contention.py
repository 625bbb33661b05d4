"""What CPU taken by another process costs the server: `bench.burst`'s capacity phase, alone and
while a competing process busy-loops for a share of one core (time-sliced: busy, then asleep).

    .venv/bin/python -m bench.contention              # about 1.5 minutes on 2 CPU cores

On a 2-core host the forward pass runs two threads that meet at a barrier after every op, so
CPU taken from either one stalls both: the loss in capacity is larger than the share taken.
A load generator on the same host is such a competitor (bench/burst.py keeps its own small).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.burst import make_bodies, measure_capacity, sequential, small_model
from bench.servers import ours

BUSY_LOOP = """
import time
while True:
    start = time.perf_counter()
    while time.perf_counter() - start < {busy}:
        pass
    time.sleep({idle})
"""
PERIOD_S = 0.01


def capacity(url: str, bodies: list[bytes], count: int, share: float) -> float:
    """`bench.burst`'s capacity (requests/s), with a competitor using `share` of one core
    (none at 0)."""
    competitor = None
    if share > 0:
        code = BUSY_LOOP.format(busy=share * PERIOD_S, idle=(1 - share) * PERIOD_S)
        competitor = subprocess.Popen([sys.executable, "-c", code])
    try:
        stats = measure_capacity(url, bodies, count)
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return float(stats.summary()["requests_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.25, 0.0, 0.25, 0.1],
                        help="the competitor's share of one core, per run (0: none)")
    parser.add_argument("--requests", type=int, default=120, help="per capacity run")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="default: bench.burst's model, generated in a temporary directory")
    args = parser.parse_args()
    bodies = make_bodies(400, seed=5)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model_dir or small_model(Path(tmp))
        with ours(str(model), "--device", "cpu") as server:
            asyncio.run(sequential(server.url, bodies, count=10))  # warm-up
            alone = []
            for share in args.shares:
                rate = capacity(server.url, bodies, args.requests, share)
                if share == 0:
                    alone.append(rate)
                versus = f" = {rate / alone[-1]:.2f}x alone" if share > 0 and alone else ""
                print(f"competitor using {share:.0%} of one core: {rate:.2f} req/s{versus}",
                      flush=True)


if __name__ == "__main__":
    main()
