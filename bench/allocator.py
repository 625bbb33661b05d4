"""The allocator's effect on the native engine: glibc vs tcmalloc, same batches, A B A B.

    .venv/bin/python -m bench.allocator [--pairs 48] [--rounds 2]

Each side is a fresh process (an allocator is chosen at exec time) that loads the full-size
random jina-shaped model, tokenizes the fixed-seed RAG mix, and scores the same batches on a
worker thread, as the service does (glibc serves a non-main thread from mmap'd arenas, so the
main thread would understate the effect). Reports wall time, CPU time in the kernel and minor
page faults per side, and the ratio. Needs tcmalloc installed (libtcmalloc-minimal4);
`--jemalloc` adds a third side when libjemalloc2 is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from app.allocator import exec_env, find_tcmalloc, loaded_tcmalloc
from app.runtime import default_batch_tokens


def measure(model_dir: Path, pairs: int, dtype: str, budget: int) -> dict[str, float]:
    """Runs in the child: time the batches on a worker thread."""
    from app.engine.loading import load_model
    from bench.engine import form_batches
    from bench.workload import make_pairs

    loaded = load_model(str(model_dir), device="cpu", dtype=dtype)
    scorer = loaded.scorers[0]
    windows = [p for q, d in make_pairs(pairs, seed=1) for p in loaded.encoder.encode(q, [d]).pairs]
    batches = form_batches(windows, budget, scorer.pads, lookahead=64)
    result: dict[str, float] = {}

    def run() -> None:
        scorer.score([p.ids for p in batches[0][:2]], [p.split for p in batches[0][:2]])
        before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for batch in batches:
            scorer.score([p.ids for p in batch], [p.split for p in batch])
        after = resource.getrusage(resource.RUSAGE_SELF)
        result.update(wall_s=time.perf_counter() - t0, sys_s=after.ru_stime - before.ru_stime,
                      minor_faults=after.ru_minflt - before.ru_minflt,
                      tokens=sum(len(p.ids) for p in windows))

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    result["tcmalloc"] = float(loaded_tcmalloc())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/reranker-bench/jina-shaped"))
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--max-batch-tokens", type=int, default=None,
                        help="default: the server's default for the device")
    parser.add_argument("--jemalloc", action="store_true",
                        help="also jemalloc, when installed (libjemalloc2)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.max_batch_tokens = args.max_batch_tokens or default_batch_tokens(["cpu"])
    if args.child:
        print(json.dumps(measure(args.model_dir, args.pairs, args.dtype, args.max_batch_tokens)))
        return

    from bench.engine import ensure_model

    library = find_tcmalloc()
    if library is None:
        raise SystemExit("tcmalloc is not installed (Debian/Ubuntu: libtcmalloc-minimal4)")
    ensure_model(args.model_dir)
    base = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    envs = {"glibc": base, "tcmalloc": exec_env(library, base)}
    jemalloc = next((str(p) for p in Path("/usr/lib").glob("*-linux-gnu/libjemalloc.so.2")), None)
    if args.jemalloc and jemalloc:
        envs["jemalloc"] = {**base, "LD_PRELOAD": jemalloc}
    cmd = [sys.executable, "-m", "bench.allocator", "--child", "--model-dir", str(args.model_dir),
           "--pairs", str(args.pairs), "--dtype", args.dtype,
           "--max-batch-tokens", str(args.max_batch_tokens)]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in envs}
    for r in range(args.rounds):
        for name, env in envs.items():
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            run = json.loads(out.strip().splitlines()[-1])
            assert bool(run["tcmalloc"]) == (name == "tcmalloc"), "the allocator did not load"
            runs[name].append(run)
            print(f"round {r + 1} {name:8s} {run['wall_s']:.2f} s", flush=True)

    tokens = runs["glibc"][0]["tokens"]
    print(f"\nworkload: {args.pairs} pairs, {tokens:.0f} tokens, dtype {args.dtype},"
          f" {os.cpu_count()} cores; median of {args.rounds} rounds\n")
    print("| allocator | wall s | tokens/s | kernel CPU s | minor page faults |")
    print("|---|---|---|---|---|")
    wall = {}
    for name, rs in runs.items():
        wall[name] = statistics.median(x["wall_s"] for x in rs)
        print(f"| {name} | {wall[name]:.2f} | {tokens / wall[name]:.0f} |"
              f" {statistics.median(x['sys_s'] for x in rs):.1f} |"
              f" {statistics.median(x['minor_faults'] for x in rs):.0f} |")
    print(f"\ntcmalloc / glibc throughput: {wall['glibc'] / wall['tcmalloc']:.2f}x")


if __name__ == "__main__":
    main()
