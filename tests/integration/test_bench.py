"""The benchmark scripts run end to end (tiny models here; real figures are in docs/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_gpu_check_smoke_runs_on_cpu() -> None:
    out = _run("bench.gpu_check", "--device", "cpu", "--small", "--seconds", "0.5")
    assert "## Parity" in out and "## Throughput" in out
    assert "| RAG mixed |" in out and "error" not in out
