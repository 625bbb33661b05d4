"""Side by side with Infinity, on one machine, same model, same dtype, same workload.

    .venv/bin/python -m bench.compare                 # about 13 minutes on 2 CPU cores

1. Installs Infinity (`infinity-emb[torch,server]`) in its own virtual environment (once),
   with the same torch build as ours, and writes (once) a random model with jina-reranker-v2's
   shapes in stock naming, which both servers load.
2. Saturating closed loop (N clients, T seconds, warm-up excluded) against our `/v1/rerank`
   and Infinity's `/rerank`, alternating A B A B, both in the same dtype.
3. Open loop (Poisson arrivals) at 50% of the lower of the two measured capacities, both.
4. The in-process engine bound: the same requests through our engine, no HTTP.
5. Fairness (our server): small requests alone, then while one 500,000-token document is
   being scored; the tiny generated model is used here, since this measures scheduling, and
   the full-size model would need minutes of CPU for that one document.
Ends with one table. The workload: fixed-seed requests of 1 query (5-25 words) and 10-100
documents (20-400 words, 5% of 1000-3000 words).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from app.engine.loading import load_model
from bench.engine import ensure_model
from bench.loadgen import Stats, closed_loop, jina_body, open_loop
from bench.servers import infinity, ours
from bench.workload import Request, make_requests

ROOT = Path(__file__).resolve().parents[1]


def ensure_infinity(venv: Path) -> Path:
    if (venv / "bin/infinity_emb").exists():
        return venv
    print(f"installing Infinity into {venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin/python"), "-m", "pip", "install", "-q"]
    base = torch.__version__.split("+")[0]
    if torch.cuda.is_available():
        subprocess.run([*pip, f"torch=={base}"], check=True)
    elif subprocess.run([*pip, f"torch=={base}+cpu"]).returncode != 0:
        subprocess.run([*pip, f"torch=={base}", "--index-url",
                        "https://download.pytorch.org/whl/cpu"], check=True)
    subprocess.run([*pip, "infinity-emb[torch,server]"], check=True)
    return venv


def infinity_body(req: Request) -> dict[str, Any]:
    return {"query": req.query, "documents": req.documents, "return_documents": False}


def run_closed(url: str, path: str, requests: list[Request], args: argparse.Namespace,
               body: Any) -> Stats:
    return asyncio.run(closed_loop(url, path, requests, concurrency=args.concurrency,
                                   seconds=args.seconds, warmup_s=args.warmup, body=body))


def run_open(url: str, path: str, requests: list[Request], rate: float, count: int,
             body: Any) -> Stats:
    return asyncio.run(open_loop(url, path, requests, rate=rate, count=count, body=body))


def engine_bound(model: str, requests: list[Request], dtype: str, budget: int) -> float:
    """Documents per second through the engine alone, batches formed per request."""
    from bench.engine import form_batches

    loaded = load_model(model, device="cpu", dtype=dtype)
    scorer = loaded.scorers[0]
    batches = []
    for req in requests:
        pairs = loaded.encoder.encode(req.query, req.documents).pairs
        batches += form_batches(pairs, budget, scorer.pads, lookahead=len(pairs))
    scorer.score([p.ids for p in batches[0][:2]], [p.split for p in batches[0][:2]])
    t0 = time.perf_counter()
    for batch in batches:
        scorer.score([p.ids for p in batch], [p.split for p in batch])
    return sum(len(r.documents) for r in requests) / (time.perf_counter() - t0)


async def _fairness_probe(url: str, small: list[Request], big: Request | None) -> list[float]:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        big_task = None
        if big is not None:
            big_task = asyncio.ensure_future(client.post("/v1/rerank", json=jina_body(big)))
            await asyncio.sleep(2.0)  # let it tokenize and fill the queue
        latencies = []
        for req in small:
            t0 = time.perf_counter()
            r = await client.post("/v1/rerank", json=jina_body(req))
            assert r.status_code == 200, r.text
            latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(0.05)
        if big_task is not None:
            r = await big_task
            assert r.status_code == 200, f"the big request failed: {r.status_code} {r.text[:200]}"
    return latencies


def fairness(tiny_model: str) -> tuple[float, float, int]:
    """p99 of small requests without and with a 500,000-token document in flight."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    small = make_requests(40, seed=9, docs=(5, 10), long_tail=0.0)
    words = make_requests(1, seed=10, docs=(1, 1), long_tail=0.0)[0].documents[0].split()
    text, tokens = "", 0
    while tokens < 500_000:
        chunk = " ".join(words * 200)
        text += " " + chunk
        tokens += len(tok(chunk, add_special_tokens=False)["input_ids"])
    big = Request("which planet is red", [text])
    with ours(tiny_model, "--device", "cpu", "--dtype", "bfloat16", "--request-timeout", "600",
              "--max-queue", "200000") as server:
        alone = asyncio.run(_fairness_probe(server.url, small, None))
        shared = asyncio.run(_fairness_probe(server.url, small, big))
    p99 = lambda xs: sorted(xs)[min(len(xs) - 1, int(0.99 * len(xs)))]  # noqa: E731
    return p99(alone), p99(shared), tokens


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/reranker-bench/jina-shaped"))
    parser.add_argument("--infinity-venv", type=Path,
                        default=Path("/tmp/reranker-bench/infinity-venv"))
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--skip-fairness", action="store_true")
    parser.add_argument("--only-fairness", action="store_true",
                        help="run the fairness probe alone (about a minute)")
    parser.add_argument("--docs", type=int, nargs=2, default=(10, 100), metavar=("MIN", "MAX"),
                        help="documents per request (a lighter mix suits a CPU-only host)")
    parser.add_argument("--open-loop-requests", type=int, default=16)
    parser.add_argument("--requests", type=int, default=16, help="distinct requests cycled")
    args = parser.parse_args()
    t_start = time.monotonic()
    if args.only_fairness:
        report_fairness()
        return

    venv = ensure_infinity(args.infinity_venv)
    model = str(ensure_model(args.model_dir))
    # Both servers and the engine bound cycle through the same requests, so the mix is equal.
    requests = make_requests(args.requests, seed=0, docs=tuple(args.docs))
    servers = {
        "ours": (lambda: ours(model, "--device", "cpu", "--dtype", args.dtype,
                              "--max-batch-tokens", str(args.max_batch_tokens),
                              "--request-timeout", "3600"),
                 "/v1/rerank", jina_body),
        "infinity": (lambda: infinity(venv, model, "--device", "cpu", "--dtype", args.dtype),
                     "/rerank", infinity_body),
    }
    closed: dict[str, list[Stats]] = {name: [] for name in servers}
    for r in range(args.rounds):
        for name, (start, path, body) in servers.items():
            with start() as server:
                stats = run_closed(server.url, path, requests, args, body)
            closed[name].append(stats)
            s = stats.summary()
            print(f"round {r + 1} {name:9s} closed loop: {s['documents_per_s']:.1f} docs/s,"
                  f" {s['requests_per_s']:.3f} req/s, errors {dict(stats.statuses)}", flush=True)

    def capacity(name: str) -> float:
        return statistics.median(st.summary()["requests_per_s"] for st in closed[name])

    rate = 0.5 * min(capacity(name) for name in servers)
    count = args.open_loop_requests
    opened: dict[str, Stats] = {}
    for name, (start, path, body) in servers.items():
        with start() as server:
            asyncio.run(closed_loop(server.url, path, requests, concurrency=1, seconds=0,
                                    warmup_s=args.warmup, body=body))
            opened[name] = run_open(server.url, path, requests, rate, count, body)
        print(f"{name:9s} open loop at {rate:.3f} req/s: p99"
              f" {opened[name].summary()['p99_ms']:.0f} ms", flush=True)

    bound = engine_bound(model, requests, args.dtype, args.max_batch_tokens)
    print(f"engine bound: {bound:.1f} docs/s", flush=True)


    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__},"
          f" dtype {args.dtype}; closed loop {args.concurrency} clients x {args.seconds:.0f} s"
          f" x {args.rounds} rounds (A B A B), median; open loop {count} requests at"
          f" {rate:.3f} req/s")
    print()
    print("| server | docs/s (closed) | req/s | p50 ms | p99 ms | errors | open-loop p50 ms |"
          " open-loop p99 ms | open-loop max ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in servers:
        med = statistics.median(st.summary()["documents_per_s"] for st in closed[name])
        last = closed[name][-1].summary()
        o = opened[name].summary()
        errors = sum(st.summary()["errors"] for st in closed[name]) + o["errors"]
        print(f"| {name} | {med:.1f} | {capacity(name):.3f} | {last['p50_ms']:.0f} |"
              f" {last['p99_ms']:.0f} | {errors:.0f} | {o['p50_ms']:.0f} | {o['p99_ms']:.0f} |"
              f" {o['max_ms']:.0f} |")
    ours_docs = statistics.median(st.summary()["documents_per_s"] for st in closed["ours"])
    inf_docs = statistics.median(st.summary()["documents_per_s"] for st in closed["infinity"])
    print(f"| engine bound (in-process) | {bound:.1f} | | | | | | | |")
    print()
    print(f"ours / infinity saturated throughput: {ours_docs / inf_docs:.2f}x (target >= 1.5x)")
    print(f"ours / engine bound: {ours_docs / bound:.2f}x (target >= 0.9x)")
    print(f"open-loop p99, ours / infinity: {opened['ours'].summary()['p99_ms']:.0f} /"
          f" {opened['infinity'].summary()['p99_ms']:.0f} ms (target: ours lower)")
    if not args.skip_fairness:
        report_fairness()
    print(f"total {time.monotonic() - t_start:.0f} s")


def report_fairness() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        from app.testmodel import write_test_model

        tiny = str(write_test_model(Path(tmp) / "tiny", max_length=512, hidden=64))
        alone, shared, tokens = fairness(tiny)
    print(f"fairness: small-request p99 {alone * 1000:.0f} ms alone, {shared * 1000:.0f} ms"
          f" while a {tokens}-token document is scored: {shared / alone:.2f}x (target <= 3x);"
          " the big request completed")


if __name__ == "__main__":
    main()
