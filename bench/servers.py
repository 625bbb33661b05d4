"""Starting and stopping the servers the benchmarks compare, as real processes on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(proc: subprocess.Popen[bytes], url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{url} did not answer 200 within {timeout:.0f} s")


@contextmanager
def ours(model: str, *flags: str, timeout: float = 300) -> Iterator[str]:
    """`reranker serve` on a free port; yields its base URL once /ready is 200."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--model", model, "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", *flags],
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(proc, f"{url}/ready", timeout)
        yield url
    finally:
        proc.terminate()
        proc.wait(120)


@contextmanager
def infinity(venv: Path, model: str, *flags: str, timeout: float = 300) -> Iterator[str]:
    """Infinity (`infinity_emb v2`) from its own virtual environment; yields its base URL."""
    port = free_port()
    # No telemetry: this machine reaches no outside host, and a benchmark should not try.
    env = {**os.environ, "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "false"}
    proc = subprocess.Popen(
        [str(venv / "bin/infinity_emb"), "v2", "--model-id", model, "--port", str(port),
         "--host", "127.0.0.1", "--engine", "torch", "--log-level", "warning", *flags],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(proc, f"{url}/health", timeout)
        yield url
    finally:
        proc.terminate()
        proc.wait(120)
