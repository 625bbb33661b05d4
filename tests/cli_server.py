"""Starting `reranker serve` as a real process on a free loopback port, for tests that need
signals, exit codes or the console script itself."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RERANKER = [sys.executable, "-m", "app.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_server(*args: str, timeout: float = 60.0) -> tuple[subprocess.Popen[str], str]:
    """`reranker serve --host 127.0.0.1 --port <free> ARGS`, returned once /ready says 200."""
    port = free_port()
    proc = subprocess.Popen(
        [*RERANKER, "serve", "--host", "127.0.0.1", "--port", str(port), *args],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(f"{url}/ready").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the server did not become ready")
        time.sleep(0.1)
