"""Side by side with Infinity, on one machine, same model, same dtype, same work.

    .venv/bin/python -m bench.compare                 # about 45 minutes on 2 CPU cores

1. Installs Infinity (`infinity-emb[torch,server]`) in its own virtual environment (once),
   with the same torch build as ours, and writes (once) a random model with jina-reranker-v2's
   shapes in stock naming, which both servers load.
2. Saturating closed loop: N clients work through a fixed set of requests (every request once,
   each client taking the next as it finishes), against our `/v1/rerank` (with its default
   settings) and Infinity's `/rerank`, alternating A B A B, both in the same dtype (with
   `--dtype auto`, the one our start-up probe picks on this machine), warm-up excluded. The
   clients honour 429 by waiting as told and sending again; latency counts from the first
   send, and the 429s are reported. Fixed work rather than a fixed time: on a CPU one request
   of the RAG mix is seconds of compute, and a time window holds too few of them for a stable
   ratio.
3. Open loop (Poisson arrivals) at fractions of the lower of the two measured capacities
   (`--sweep`, default 0.5 1 1.5), both: completed work and latency against offered load.
4. The in-process engine bound: the same requests through our engine, no HTTP.
5. Fairness (our server): small requests alone, then while one 500,000-token document is
   being scored; the tiny generated model is used here, since this measures scheduling, and
   the full-size model would need minutes of CPU for that one document.
Ends with one table, and writes the figures (SVG) into `--plots` (default docs/img): the load
curves of both servers and the fairness timeline. The workload: fixed-seed requests of 1 query
(5-25 words) and 10-100 documents of 20-400 words, 5% of them 1000-3000 words. Both servers and
the engine bound run on the same allocator: this process re-executes itself on tcmalloc when it is
installed (app/allocator.py), and both servers inherit its LD_PRELOAD, so the allocator (1.15-1.29x
on a CPU, `bench.allocator`) is not part of the ratio.
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
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.allocator import ensure as ensure_allocator
from app.allocator import loaded_tcmalloc
from app.engine.loading import load_model
from app.runtime import default_batch_tokens
from bench.engine import ensure_model
from bench.loadgen import Body, Stats, fixed_work, jina_body, open_loop, quiet_heap
from bench.plots import LoadPoint, Probe, fairness_timeline, load_curves
from bench.servers import Running, infinity, ours
from bench.workload import Request, make_requests, with_token_counts

ROOT = Path(__file__).resolve().parents[1]


def allocator_name() -> str:
    """This process's allocator, which both servers inherit."""
    return "tcmalloc" if loaded_tcmalloc() else "glibc"


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


def first_window_body(req: Request) -> dict[str, Any]:
    """Ours, asked to score only each document's first window: the work Infinity does, which
    truncates documents to the model's input length."""
    return {**jina_body(req), "max_chunks_per_doc": 1}


def warm_up(url: str, path: str, requests: list[Request], body: Body) -> None:
    asyncio.run(fixed_work(url, path, requests[:2], concurrency=2, body=body, retry=True))


def resolve_dtype(dtype: str, device: str, model: str) -> str:
    """`auto`: what our server would pick here (the start-up probe on a CPU), for both."""
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16"
    from app.engine.loading import probe_cpu_dtype, read_config

    chosen, figures = probe_cpu_dtype(read_config(Path(model)))
    print(f"dtype auto: {chosen} ({', '.join(f'{k} {v:.0f} GFLOP/s' for k, v in figures.items())})",
          flush=True)
    return chosen


_STAGES = ("reranker_inference_duration_seconds_sum", "reranker_tokenization_duration_seconds_sum",
           "reranker_batch_tokens_sum", "reranker_batch_tokens_count")


def stage_totals(url: str) -> dict[str, float]:
    """Our server's own per-stage totals from /metrics (summed over label sets)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    totals = dict.fromkeys(_STAGES, 0.0)
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


def where_time_went(before: dict[str, float], after: dict[str, float], stats: Stats) -> str:
    d = {k: after[k] - before[k] for k in _STAGES}
    busy = d["reranker_inference_duration_seconds_sum"] / stats.seconds
    mean_batch = d["reranker_batch_tokens_sum"] / max(1.0, d["reranker_batch_tokens_count"])
    return (f"worker in forward passes {100 * busy:.0f}% of the run, tokenization"
            f" {d['reranker_tokenization_duration_seconds_sum']:.2f} s in all,"
            f" {d['reranker_batch_tokens_count']:.0f} batches, {mean_batch:.0f} tokens each on"
            " average")


def run_open(url: str, path: str, requests: list[Request], rate: float, count: int,
             body: Body) -> Stats:
    warm_up(url, path, requests, body)
    return asyncio.run(open_loop(url, path, requests, rate=rate, count=count, body=body,
                                 timeout=3600, retry=True))


def engine_bound(model: str, requests: list[Request], device: str, dtype: str,
                 budget: int) -> tuple[float, float]:
    """Documents per second through the engine alone, batches formed per request; and the
    model FLOPs of scoring every window over those of scoring each document's first window
    (what a server that truncates does)."""
    from bench.engine import flops_per_pair, form_batches, run_backend

    loaded = load_model(model, device=device, dtype=dtype)
    scorer = loaded.scorers[0]
    batches = []
    windowed = first = 0.0
    for req in requests:
        pairs = loaded.encoder.encode(req.query, req.documents).pairs
        batches += form_batches(pairs, budget, scorer.pads, lookahead=len(pairs))
        windowed += sum(flops_per_pair(len(p.ids)) for p in pairs)
        # a document's windows are contiguous: its first window follows the previous document's
        first += sum(flops_per_pair(len(p.ids)) for i, p in enumerate(pairs)
                     if i == 0 or pairs[i - 1].doc != p.doc)
    seconds = run_backend(scorer, batches)  # scores come back to the host: synchronous
    return sum(len(r.documents) for r in requests) / seconds, windowed / first


async def _fairness_probe(url: str, small: list[Request],
                          big: Request | None) -> tuple[list[Probe], float]:
    """Small requests sent one after another; with `big`, they start right after it is sent
    (its tokenization included) and only those answered while it was still in flight count.
    Returns them with their send times, and when the big request was answered (s from the
    start; 0 without one)."""
    import httpx

    quiet_heap()

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        start = time.perf_counter()
        big_task = None
        if big is not None:
            big_task = asyncio.ensure_future(client.post("/v1/rerank", json=jina_body(big)))
            await asyncio.sleep(0.05)  # it is on the wire first
        probes = []
        for req in small:
            if big_task is not None and big_task.done():
                break
            t0 = time.perf_counter()
            r = await client.post("/v1/rerank", json=jina_body(req))
            assert r.status_code == 200, r.text
            if big_task is None or not big_task.done():
                probes.append(Probe(t0 - start, time.perf_counter() - t0))
            await asyncio.sleep(0.01)
        big_end = 0.0
        if big_task is not None:
            r = await big_task
            big_end = time.perf_counter() - start
            assert r.status_code == 200, f"the big request failed: {r.status_code} {r.text[:200]}"
    return probes, big_end


@dataclass(frozen=True)
class FairnessRun:
    alone: list[Probe]
    shared: list[Probe]
    big_end_s: float
    big_tokens: int

    def p99(self, probes: list[Probe]) -> float:
        return Stats(latencies=[p.latency_s for p in probes]).percentile(0.99)

    @property
    def ratio(self) -> float:
        return self.p99(self.shared) / self.p99(self.alone)


def fairness(tiny_model: str, flags: tuple[str, ...] = ()) -> FairnessRun:
    """Small requests without and with a 500,000-token document in flight."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    small = make_requests(200, seed=9, docs=(5, 10), long_tail=0.0)
    words = make_requests(1, seed=10, docs=(1, 1), long_tail=0.0)[0].documents[0].split()
    chunk = " ".join(words * 200)
    per_chunk = len(tok(chunk, add_special_tokens=False)["input_ids"])
    copies = -(-500_000 // per_chunk)  # ceiling division
    tokens = copies * per_chunk
    big = Request("which planet is red", [" " + " ".join([chunk] * copies)])
    with ours(tiny_model, "--device", "cpu", "--dtype", "bfloat16", "--request-timeout", "600",
              *flags,
              "--max-queue", "200000") as server:
        alone, _ = asyncio.run(_fairness_probe(server.url, small[:40], None))
        shared, big_end = asyncio.run(_fairness_probe(server.url, small, big))
    if len(shared) < 20:
        raise SystemExit(f"only {len(shared)} small requests overlapped the big one: too few")
    return FairnessRun(alone, shared, big_end, tokens)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/reranker-bench/jina-shaped"))
    parser.add_argument("--infinity-venv", type=Path,
                        default=Path("/tmp/reranker-bench/infinity-venv"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto",
                        help="auto: the dtype our start-up probe picks on this machine")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-batch-tokens", type=int, default=None,
                        help="default: the server's default for the device")
    parser.add_argument("--skip-fairness", action="store_true")
    parser.add_argument("--only-ours", action="store_true",
                        help="only our server's as-served closed loop (latency; no Infinity)")
    parser.add_argument("--only-fairness", action="store_true",
                        help="run the fairness probe alone (about a minute a run)")
    parser.add_argument("--fairness-runs", type=int, default=1)
    parser.add_argument("--fairness-batch-tokens", type=int, default=None,
                        help="--max-batch-tokens of the fairness server (default: its default)")
    parser.add_argument("--docs", type=int, nargs=2, default=(10, 100), metavar=("MIN", "MAX"),
                        help="documents per request (default: the RAG mix, 10-100)")
    parser.add_argument("--requests", type=int, default=16,
                        help="distinct requests: the fixed work of one closed-loop run")
    parser.add_argument("--open-loop-requests", type=int, default=8,
                        help="requests per open-loop point; 0 skips the open loop")
    parser.add_argument("--sweep", type=float, nargs="+", default=(0.5, 1.0, 1.5),
                        metavar="FRACTION",
                        help="open-loop arrival rates, as fractions of the lower closed-loop"
                        " capacity")
    parser.add_argument("--plots", type=Path, default=ROOT / "docs/img",
                        help="where the figures (SVG) are written")
    parser.add_argument("--log-level", default="warning",
                        help="our server's log level; debug logs each request's predicted and"
                        " actual finish, and each batch")
    args = parser.parse_args()
    args.max_batch_tokens = args.max_batch_tokens or default_batch_tokens([args.device])
    # The engine bound runs in this process: give it the allocator the server gets.
    ensure_allocator("auto", ["-m", "bench.compare", *sys.argv[1:]])
    t_start = time.monotonic()
    fairness_flags: tuple[str, ...] = ()
    if args.fairness_batch_tokens:
        fairness_flags = ("--max-batch-tokens", str(args.fairness_batch_tokens))
    if args.only_fairness:
        report_fairness(args.fairness_runs, fairness_flags, args.plots)
        return
    docs = tuple(args.docs)

    venv = ensure_infinity(args.infinity_venv)
    model = str(ensure_model(args.model_dir))
    args.dtype = resolve_dtype(args.dtype, args.device, model)
    from transformers import AutoTokenizer

    requests = with_token_counts(make_requests(args.requests, seed=0, docs=docs),
                                 AutoTokenizer.from_pretrained(model))
    infinity_device = "cuda" if args.device.startswith("cuda") else "cpu"
    servers: dict[str, tuple[Callable[[], AbstractContextManager[Running]], str, Body]] = {
        "ours": (lambda: ours(model, "--device", args.device, "--dtype", args.dtype,
                              "--max-batch-tokens", str(args.max_batch_tokens),
                              "--log-level", args.log_level),
                 "/v1/rerank", jina_body),
        "infinity": (lambda: infinity(venv, model, "--device", infinity_device,
                                      "--dtype", args.dtype),
                     "/rerank", jina_body),  # Infinity's /rerank takes the same body
    }
    # Ours runs two workloads per start: as served (every window of a long document scored)
    # and like for like with Infinity (first window only).
    variants: dict[str, list[tuple[str, Body]]] = {
        "ours": [("ours", jina_body), ("ours, first window", first_window_body)],
        "infinity": [("infinity", jina_body)],
    }
    if args.only_ours:  # our as-served closed loop alone: its latencies, no ratios
        servers = {"ours": servers["ours"]}
        variants = {"ours": [("ours", jina_body)]}
    closed: dict[str, list[Stats]] = {v: [] for vs in variants.values() for v, _ in vs}
    for r in range(args.rounds):
        for name, (start, path, _) in servers.items():
            with start() as server:
                for label, body in variants[name]:
                    warm_up(server.url, path, requests, body)
                    before = stage_totals(server.url) if name == "ours" else {}
                    stats = asyncio.run(fixed_work(server.url, path, requests,
                                                   concurrency=args.concurrency, body=body,
                                                   retry=True))
                    detail = ""
                    if name == "ours":
                        detail = "; " + where_time_went(before, stage_totals(server.url), stats)
                    closed[label].append(stats)
                    s = stats.summary()
                    print(f"round {r + 1} {label:18s} closed loop: {s['documents_per_s']:.2f}"
                          f" docs/s ({stats.seconds:.1f} s), statuses {dict(stats.statuses)},"
                          f" 429s waited out {stats.refusals}{detail}", flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(st.summary()[key] for st in closed[name])

    if args.only_ours:
        both = Stats(latencies=[x for st in closed["ours"] for x in st.latencies]).summary()
        print(f"ours: {median('ours', 'documents_per_s'):.2f} docs/s, latency from first send"
              f" p50 {both['p50_ms']:.0f} ms, p99 {both['p99_ms']:.0f} ms, max"
              f" {both['max_ms']:.0f} ms")
        return

    capacity = min(median(name, "requests_per_s") for name in servers)
    count = args.open_loop_requests
    sweep: dict[str, dict[float, Stats]] = {name: {} for name in servers}
    for name, (start, path, body) in servers.items() if count else ():
        with start() as server:
            for fraction in args.sweep:
                stats = run_open(server.url, path, requests, fraction * capacity, count, body)
                sweep[name][fraction] = stats
                s = stats.summary()
                print(f"{name:9s} open loop at {fraction:g}x ({fraction * capacity:.3f} req/s):"
                      f" {s['documents_per_s']:.2f} docs/s, p50 {s['p50_ms']:.0f} ms, p99"
                      f" {s['p99_ms']:.0f} ms, statuses {dict(stats.statuses)}, 429s waited out"
                      f" {stats.refusals}", flush=True)
    opened = {name: runs[0.5] for name, runs in sweep.items() if 0.5 in runs}

    bound, flop_ratio = engine_bound(model, requests, args.device, args.dtype,
                                     args.max_batch_tokens)
    print(f"engine bound: {bound:.2f} docs/s", flush=True)

    docs_total = sum(len(r.documents) for r in requests)
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__},"
          f" device {args.device}, dtype {args.dtype}, allocator {allocator_name()} (both servers)")
    print(f"work: {len(requests)} requests, {docs_total} documents ({docs[0]}-{docs[1]} per"
          f" request), {sum(r.tokens for r in requests)} tokens; closed loop: {args.concurrency}"
          f" clients over all of it, {args.rounds} rounds ({' '.join(['A B'] * args.rounds)}),"
          f" median; clients honour 429 + Retry-After; latency from the first send; open loop:"
          f" {count} requests at {', '.join(f'{f:g}x' for f in args.sweep)} the lower"
          f" capacity ({capacity:.3f} req/s; the table's open-loop columns: 0.5x)")
    print()
    print("| server | docs/s | tokens/s | req/s | p50 ms | p99 ms | non-200 | 504s | 429s waited"
          " out | open-loop p50 ms | open-loop p99 ms | open-loop max ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in closed:
        latencies = [x for st in closed[name] for x in st.latencies]
        both = Stats(latencies=latencies).summary()
        errors = sum(st.summary()["errors"] for st in closed[name])
        timeouts = sum(st.statuses["504"] for st in closed[name])
        refusals = sum(st.refusals for st in closed[name])
        row = (f"| {name} | {median(name, 'documents_per_s'):.2f} |"
               f" {median(name, 'tokens_per_s'):.0f} | {median(name, 'requests_per_s'):.3f} |"
               f" {both['p50_ms']:.0f} | {both['p99_ms']:.0f} | {errors:.0f} | {timeouts} |"
               f" {refusals} |")
        if name in opened:
            o = opened[name].summary()
            print(f"{row} {o['p50_ms']:.0f} | {o['p99_ms']:.0f} | {o['max_ms']:.0f} |")
        else:
            print(f"{row} | | |")
    print(f"| engine bound (in-process) | {bound:.2f} | | | | | | | | | | |")
    print()
    ours_docs, inf_docs = median("ours", "documents_per_s"), median("infinity", "documents_per_s")
    same = median("ours, first window", "documents_per_s")
    print(f"ours / infinity saturated throughput, like for like (both score each document's"
          f" first window): {same / inf_docs:.2f}x (target >= 2x)")
    print(f"ours / infinity as served (ours scores every window: {flop_ratio:.2f}x the model"
          f" FLOPs): {ours_docs / inf_docs:.2f}x (target >= 1.5x)")
    print(f"ours / engine bound: {ours_docs / bound:.2f}x (target >= 0.9x)")
    if len(opened) == len(servers):
        print(f"open-loop p99, ours / infinity: {opened['ours'].summary()['p99_ms']:.0f} /"
              f" {opened['infinity'].summary()['p99_ms']:.0f} ms (target: ours lower)")
    if count:
        print_sweep(sweep, requests, count, capacity)
        mean_docs = docs_total / len(requests)
        written = load_curves(
            args.plots / "load-curves.svg",
            {name: [load_point(stats, f * capacity, requests, count)
                    for f, stats in runs.items()] for name, runs in sweep.items()},
            {name: median(name, "documents_per_s") for name in servers},
            f"{len(requests)}-request RAG mix ({docs[0]}-{docs[1]} documents, mean"
            f" {mean_docs:.0f}), {count} Poisson arrivals per point; {args.device},"
            f" {args.dtype}",
        )
        print(f"wrote {written}")
    if not args.skip_fairness:
        report_fairness(args.fairness_runs, fairness_flags, args.plots)
    print(f"total {time.monotonic() - t_start:.0f} s")


def offered(requests: list[Request], count: int) -> int:
    """Documents in the first `count` requests of an open loop (it cycles through them)."""
    return sum(len(requests[i % len(requests)].documents) for i in range(count))


def load_point(stats: Stats, rate: float, requests: list[Request], count: int) -> LoadPoint:
    return LoadPoint(offered_docs_per_s=rate * offered(requests, count) / count,
                     completed_docs_per_s=stats.summary()["documents_per_s"],
                     p50_s=stats.percentile(0.5), p99_s=stats.percentile(0.99),
                     refusals=stats.refusals)


def print_sweep(sweep: dict[str, dict[float, Stats]], requests: list[Request], count: int,
                capacity: float) -> None:
    print()
    print("| server | offered (x capacity) | offered docs/s | completed docs/s | p50 ms | p99 ms"
          " | non-200 | 429s waited out |")
    print("|---|---|---|---|---|---|---|---|")
    for name, runs in sweep.items():
        for fraction, stats in sorted(runs.items()):
            point = load_point(stats, fraction * capacity, requests, count)
            s = stats.summary()
            print(f"| {name} | {fraction:g} | {point.offered_docs_per_s:.2f} |"
                  f" {point.completed_docs_per_s:.2f} | {s['p50_ms']:.0f} | {s['p99_ms']:.0f} |"
                  f" {s['errors']:.0f} | {stats.refusals} |")


def report_fairness(runs: int = 1, flags: tuple[str, ...] = (),
                    plots: Path | None = None) -> None:
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        from app.testmodel import write_test_model

        tiny = str(write_test_model(Path(tmp) / "tiny", max_length=512, hidden=64))
        for n in range(runs):
            run = fairness(tiny, flags)
            alone, shared = run.p99(run.alone), run.p99(run.shared)
            ratios.append(run.ratio)
            print(f"fairness run {n + 1}: small-request p99 {alone * 1000:.0f} ms alone (40"
                  f" requests), {shared * 1000:.0f} ms while a {run.big_tokens}-token document"
                  f" was tokenized and scored ({len(run.shared)} requests): {run.ratio:.2f}x"
                  " (target <= 3x); the big request completed", flush=True)
    print(f"fairness{' (' + ' '.join(flags) + ')' if flags else ''}:"
          f" {sum(r <= 3 for r in ratios)} of {runs} runs within 3x"
          f" ({min(ratios):.2f}-{max(ratios):.2f}x)")
    if plots is not None:  # the last run's timeline
        written = fairness_timeline(plots / "fairness.svg", run.alone, run.shared,
                                    (0.0, run.big_end_s), run.big_tokens)
        print(f"wrote {written}")


if __name__ == "__main__":
    main()
