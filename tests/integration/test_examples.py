"""Every example in examples/ runs against a live server (with an API key, as in production)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LiveServer, ServerFactory

ROOT = Path(__file__).resolve().parents[2]
KEY = "example-key"


@pytest.fixture(scope="module")
def server(module_servers: ServerFactory, xlmr_dir: str) -> LiveServer:
    return module_servers(xlmr_dir, api_keys=[KEY])


def _run(server: LiveServer, *cmd: str) -> str:
    env = {**os.environ, "BASE_URL": server.url, "API_KEY": KEY}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _two_ranked_lines(out: str) -> None:
    lines = out.strip().splitlines()
    assert len(lines) == 2
    scores = [float(line.split()[0]) for line in lines]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)


def test_curl_example(server: LiveServer) -> None:
    import orjson

    body = orjson.loads(_run(server, "bash", "examples/curl.sh"))
    assert len(body["results"]) == 2 and body["usage"]["total_tokens"] > 0


def test_python_example(server: LiveServer) -> None:
    _two_ranked_lines(_run(server, sys.executable, "examples/client.py"))


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_javascript_example(server: LiveServer) -> None:
    _two_ranked_lines(_run(server, "node", "examples/client.mjs"))


def test_tool_selection_example(server: LiveServer) -> None:
    out = _run(server, sys.executable, "examples/tool_selection.py").split()
    assert len(out) == 2 and set(out) <= {"get_weather", "query_sales", "send_email"}


def test_nim_example(server: LiveServer) -> None:
    import orjson

    rankings = orjson.loads(_run(server, "bash", "examples/nim_ranking.sh"))["rankings"]
    assert sorted(r["index"] for r in rankings) == [0, 1]
    logits = [r["logit"] for r in rankings]
    assert logits == sorted(logits, reverse=True)


def test_vllm_score_example(server: LiveServer) -> None:
    lines = _run(server, sys.executable, "examples/vllm_score.py").strip().splitlines()
    assert len(lines) == 4 and all(0 < float(line.split()[0]) < 1 for line in lines)
    assert [line.split(maxsplit=1)[1] for line in lines[:2]] == [
        "The capital of Brazil is Brasilia.", "The capital of France is Paris."]
