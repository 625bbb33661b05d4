"""The benchmark scripts run end to end (tiny models here; real figures are in docs/)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.allocator import find_tcmalloc
from bench.compare import stage_totals, where_time_went
from bench.loadgen import closed_loop, fixed_work, open_loop
from bench.workload import Request, make_requests, with_token_counts
from tests.conftest import LiveServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_engine_benchmark_prints_its_table(xlmr_dir: str) -> None:
    out = _run("bench.engine", "--model-dir", xlmr_dir, "--pairs", "8", "--rounds", "1",
               "--dtype", "float32")
    assert "| native |" in out and "| transformers |" in out
    assert "native / transformers throughput" in out


def test_last_layer_ablation_runs_both_variants(xlmr_dir: str) -> None:
    out = _run("bench.engine", "--model-dir", xlmr_dir, "--pairs", "8", "--rounds", "1",
               "--dtype", "float32", "--last-layer-ablation")
    assert "last layer for every token" in out and "last layer for one position" in out
    assert "for one position / for every token:" in out


def test_gpu_check_smoke_runs_on_cpu() -> None:
    out = _run("bench.gpu_check", "--device", "cpu", "--small", "--seconds", "0.5")
    rows = [line for line in out.splitlines() if line.startswith("| bfloat16 |")]
    # the cross-encoder's table, then the decoder's
    assert [row.split(" | ")[1] for row in rows] == ["sdpa-per-sequence", "sdpa-padded"] * 2
    assert all(row.endswith("| ok |") for row in rows) and "all rows ok" in out
    assert "start-up phases:" in out and "# decoder (qwen3-reranker" in out
    assert "error" not in out


@pytest.mark.parametrize(("name", "entry"), [
    ("NVIDIA H100 80GB HBM3", "H100 HBM3"),
    ("NVIDIA H100 PCIe", "H100 PCIE"),
    ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200"),
    ("NVIDIA A100-SXM4-80GB", "A100"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA L4", "L4"),
    ("Tesla T4", None),
])
def test_gpu_check_finds_the_datasheet_peak_by_device_name(name: str, entry: str | None) -> None:
    from bench.gpu_check import peak_for

    found = peak_for(name)
    assert (found[0] if found else None) == entry


def test_load_generator_counts_what_a_live_server_answered(
    xlmr_server: LiveServer, xlmr_dir: str
) -> None:
    from transformers import AutoTokenizer

    requests = with_token_counts(make_requests(6, seed=3, docs=(2, 5)),
                                 AutoTokenizer.from_pretrained(xlmr_dir))
    assert all(r.tokens > sum(len(d.split()) for d in r.documents) for r in requests)
    url = xlmr_server.url

    before = stage_totals(url)
    t0 = time.perf_counter()
    fixed = asyncio.run(fixed_work(url, "/v1/rerank", requests, concurrency=3))
    wall = time.perf_counter() - t0
    after = stage_totals(url)
    assert after["reranker_batch_tokens_sum"] - before["reranker_batch_tokens_sum"] > sum(
        r.tokens for r in requests)  # windows add the query and special tokens
    assert "worker in forward passes" in where_time_went(before, after, fixed)
    s = fixed.summary()
    assert dict(fixed.statuses) == {"200": 6} and s["errors"] == 0
    assert fixed.documents == sum(len(r.documents) for r in requests)
    assert fixed.tokens == sum(r.tokens for r in requests)
    # the rate is over the run's wall time: no shorter than its slowest request, no longer
    # than the call that ran it
    assert max(fixed.latencies) <= fixed.seconds <= wall
    assert 0 < s["p50_ms"] <= s["p99_ms"] <= s["max_ms"] <= 1000 * fixed.seconds

    served_before = xlmr_server.metric("reranker_requests_total",
                                       {"route": "/v1/rerank", "status": "200"})
    timed = asyncio.run(closed_loop(url, "/v1/rerank", requests, concurrency=2, seconds=1.0,
                                    warmup_s=0.2))
    served = xlmr_server.metric("reranker_requests_total",
                                {"route": "/v1/rerank", "status": "200"}) - served_before
    assert timed.statuses["200"] > 0
    assert max(timed.latencies) <= 1.0  # only requests answered inside the window count
    # the warm-up's answers (and those straddling the window's edges) are not counted
    assert len(timed.latencies) < served

    opened = asyncio.run(open_loop(url, "/v1/rerank", requests, rate=50.0, count=10))
    assert dict(opened.statuses) == {"200": 10}

    # Errors are counted by status, not as throughput.
    failed = asyncio.run(fixed_work(url, "/v1/rerank", [Request("q", ["d"], tokens=2)],
                                    concurrency=1, body=lambda r: {"query": r.query}))
    assert dict(failed.statuses) == {"422": 1} and failed.documents == 0


@pytest.mark.skipif(find_tcmalloc() is None, reason="tcmalloc is not installed on this host")
def test_allocator_benchmark_runs_each_side_on_its_allocator(xlmr_dir: str) -> None:
    out = _run("bench.allocator", "--model-dir", xlmr_dir, "--pairs", "4", "--rounds", "1",
               "--dtype", "float32")
    assert "| glibc |" in out and "| tcmalloc |" in out and "tcmalloc / glibc" in out


def test_burst_benchmark_counts_every_answer(xlmr_dir: str) -> None:
    out = _run("bench.burst", "--model-dir", xlmr_dir, "--factor", "10", "--seconds", "1",
               "--capacity-seconds", "1", "--after-seconds", "1")
    assert "capacity" in out and "429 latency p50" in out and "completed during the burst" in out
    burst_line = next(line for line in out.splitlines() if line.startswith("burst:"))
    assert "'429'" in burst_line, burst_line  # 10x capacity is shed, not queued
    assert "429 without Retry-After: 0" in burst_line


def test_contention_benchmark_runs_alone_and_beside_a_competitor(xlmr_dir: str) -> None:
    out = _run("bench.contention", "--model-dir", xlmr_dir, "--shares", "0", "0.5",
               "--requests", "8")
    lines = [line for line in out.splitlines() if line.startswith("competitor using")]
    assert len(lines) == 2 and "0% of one core" in lines[0] and "50% of one core" in lines[1]
    assert "x alone" in lines[1] and "x alone" not in lines[0]


def test_soak_reports_memory_over_the_last_third(xlmr_dir: str, tmp_path: Path) -> None:
    plot = tmp_path / "soak.svg"
    out = _run("bench.soak", "--model", xlmr_dir, "--minutes", "0.1", "--interval", "2",
               "--concurrency", "2", "--plot", str(plot))
    assert "last third of the run" in out and "requests answered 200" in out
    svg = plot.read_text()
    assert svg.startswith("<?xml") and "RSS (MB)" in svg and "requests/s" in svg


def test_attention_benchmark_prints_its_table() -> None:
    from app.engine import cpu_kernel

    try:
        cpu_kernel.load()
    except cpu_kernel.KernelUnavailable as exc:
        pytest.skip(f"the kernel cannot run on this host: {exc}")
    out = _run("bench.attention")
    rows = [line for line in out.splitlines() if line.startswith("| 4 x 1024 |")]
    assert len(rows) == 1 and rows[0].count("|") == 9
