"""Starting and stopping the servers the benchmarks compare, as real processes on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass(frozen=True)
class Running:
    url: str
    pid: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _serve(cmd: list[str], health_path: str, port: int, timeout: float,
           env: dict[str, str] | None = None) -> Iterator[Running]:
    """Run `cmd`; yield once `health_path` answers 200; terminate it afterwards."""
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{cmd[0]} exited with {proc.returncode} before it was ready")
            try:
                if httpx.get(url + health_path, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{url}{health_path} did not answer 200 within {timeout:.0f} s")
            time.sleep(0.5)
        yield Running(url, proc.pid)
    finally:
        proc.terminate()
        proc.wait(120)


def ours(model: str, *flags: str, timeout: float = 300) -> AbstractContextManager[Running]:
    """`reranker serve` on a free port, ready once /ready is 200."""
    port = free_port()
    cmd = [sys.executable, "-m", "app.cli", "serve", "--model", model, "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning", *flags]
    return _serve(cmd, "/ready", port, timeout)


def infinity(
    venv: Path, model: str, *flags: str, timeout: float = 300
) -> AbstractContextManager[Running]:
    """Infinity (`infinity_emb v2`) from its own virtual environment; it inherits this
    process's environment, LD_PRELOAD (the allocator) included."""
    port = free_port()
    cmd = [str(venv / "bin/infinity_emb"), "v2", "--model-id", model, "--port", str(port),
           "--host", "127.0.0.1", "--engine", "torch", "--log-level", "warning", *flags]
    # No telemetry: this machine reaches no outside host, and a benchmark should not try.
    env = {**os.environ, "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "false"}
    return _serve(cmd, "/health", port, timeout, env)
