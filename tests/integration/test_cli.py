"""The console script: flags and env twins, a clear start-up failure, and the README example."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import time
from pathlib import Path

import httpx
import orjson
import pytest

from app.allocator import find_tcmalloc
from app.cli import _SERVE_FLAGS
from tests.cli_server import RERANKER, ROOT, free_port, spawn_server

pytestmark = pytest.mark.slow


def _run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RERANKER, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_help_documents_every_flag_and_its_env_twin() -> None:
    out = _run("serve", "--help").stdout
    readme = (ROOT / "README.md").read_text()
    for flag, field, _ in _SERVE_FLAGS:
        env = "RERANKER_API_KEYS" if field == "api_keys" else f"RERANKER_{field.upper()}"
        assert flag in out and env in out, flag
        assert f"`{flag}`" in readme and f"`{env}`" in readme, f"README misses {flag}"


@pytest.mark.parametrize(
    ("model", "needle"),
    [("nobody/no-such-reranker", "could not be downloaded"), ("./no/such/dir", "does not exist")],
)
def test_a_missing_model_exits_with_one_clear_line(model: str, needle: str) -> None:
    result = _run("serve", "--model", model, "--host", "127.0.0.1", "--port", str(free_port()),
                  env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.startswith("reranker:")]
    assert model in line and needle in line
    if not model.startswith("."):
        assert "--model /path/to/dir" in line


def test_bad_flag_value_is_rejected() -> None:
    result = _run("serve", "--device", "gpu7")
    assert result.returncode == 2 and "device" in result.stderr


def _readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\s*```(?:bash|sh)\n(.*?)```", text, re.S)
    assert match, f"README has no block marked {marker}"
    return match.group(1)


def test_readme_two_models_example_works(tmp_path: Path) -> None:
    """The README's jina-reranker-v2 + Qwen3-Reranker example, offline: the two random test
    models served under the hub ids the example names, then its curl calls."""
    block = _readme_block("example: two models")
    serve = shlex.split(block.split("\ncurl")[0].replace("\\\n", " "))
    assert serve[0] == "scripts/serve.sh"
    models = [serve[i + 1] for i, arg in enumerate(serve) if arg == "--model"]
    dirs = [tmp_path / "jina", tmp_path / "Qwen3-Reranker-tiny"]
    for out, family in zip(dirs, ("xlm-roberta", "qwen3"), strict=True):
        assert _run("make-test-model", str(out), "--family", family).returncode == 0
    flags = [arg for path, name in zip(dirs, models, strict=True)
             for arg in ("--model", str(path), "--served-model-name", name)]
    alias = serve[serve.index("--alias") + 1]
    server, url = spawn_server(*flags, "--alias", alias, "--device", "cpu", timeout=180)
    try:
        for call in ["curl" + c for c in block.split("\ncurl")[1:]]:
            out = subprocess.run(["bash", "-c", call.replace("localhost:8080", url)],
                                 capture_output=True, timeout=60, check=True)
            body = orjson.loads(out.stdout)
            assert len(body["results"]) == 2 and body["model"] in models, body
    finally:
        server.terminate()
        assert server.wait(30) == 0


def test_readme_quickstart_works(tmp_path: Path) -> None:
    """`reranker make-test-model`, `reranker serve`, then the README's curl example."""
    model_dir = tmp_path / "tiny"
    made = _run("make-test-model", str(model_dir), "--max-length", "128")
    assert made.returncode == 0, made.stderr
    server, url = spawn_server("--model", str(model_dir), "--device", "cpu")
    try:
        curl = _readme_block("example: rerank").replace("http://localhost:8080", url)
        out = subprocess.run(["bash", "-c", curl], capture_output=True, timeout=30, check=True)
        body = orjson.loads(out.stdout)
        assert [r["index"] for r in body["results"]] and body["usage"]["total_tokens"] > 0
        assert shlex.split(curl)[0] == "curl"
    finally:
        server.terminate()
        assert server.wait(30) == 0


def test_an_unloadable_model_stops_the_server_with_status_2(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "num_labels": 1}')
    result = _run("serve", "--model", str(tmp_path), "--port", str(free_port()), timeout=60)
    assert result.returncode == 2
    last = result.stderr.splitlines()[-1]
    assert last.startswith("reranker: ") and str(tmp_path) in last
    assert "Traceback" not in result.stderr


def test_json_logs_show_the_start_up_phases(xlmr_dir: str) -> None:
    server, url = spawn_server("--model", xlmr_dir, "--device", "cpu", "--log-format", "json")
    try:
        httpx.post(f"{url}/v1/rerank", json={"query": "q", "documents": ["a"]},
                   headers={"x-request-id": "log-me"})
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    entries = [orjson.loads(line) for line in stderr.splitlines() if line.strip()]
    messages = [e["message"] for e in entries]
    assert all({"time", "level", "logger", "message"} <= e.keys() for e in entries)
    for phase in ("loading model", "loaded ", "warming up", "ready: serving"):
        assert any(m.startswith(phase) for m in messages), (phase, messages)
    assert any("request_id=log-me" in m for m in messages)


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(find_tcmalloc() is None, reason="tcmalloc is not installed on this host")
def test_auto_allocator_runs_the_server_on_tcmalloc_in_the_same_process(xlmr_dir: str) -> None:
    server, url = spawn_server("--model", xlmr_dir, "--device", "cpu")
    try:
        assert "tcmalloc" in _maps(server.pid)  # re-executed in place: same PID, so signals work
        r = httpx.post(f"{url}/v1/rerank", json={"query": "q", "documents": ["a", "b"]})
        assert r.status_code == 200
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    assert server.returncode == 0
    assert "memory allocator: tcmalloc" in stderr


def test_system_allocator_keeps_glibc(xlmr_dir: str) -> None:
    server, _ = spawn_server("--model", xlmr_dir, "--device", "cpu", "--allocator", "system")
    try:
        assert "tcmalloc" not in _maps(server.pid)
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    assert "memory allocator: system" in stderr and "tcmalloc" not in stderr


def test_required_tcmalloc_that_is_missing_fails_with_one_line(xlmr_dir: str) -> None:
    # A host without the library, simulated: the re-exec marker is set and nothing is
    # preloaded, which is what `ensure` sees when the library did not load.
    result = _run("serve", "--model", xlmr_dir, "--allocator", "tcmalloc",
                  env={"RERANKER_ALLOCATOR_EXEC": "1", "LD_PRELOAD": ""})
    assert result.returncode == 2
    [line] = [x for x in result.stderr.splitlines() if x.startswith("reranker:")]
    assert "libtcmalloc-minimal4" in line and "--allocator system" in line


def test_a_client_cannot_forge_a_text_log_line(xlmr_dir: str) -> None:
    server, url = spawn_server("--model", xlmr_dir, "--device", "cpu")
    try:
        # %0A decodes to a newline in the path the access log writes
        httpx.get(f"{url}/v1/x%0A2026-01-01 00:00:00 INFO app.access forged%0D%1B[31m")
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    assert not any(line.lstrip().startswith("2026-01-01") for line in stderr.splitlines())
    [line] = [x for x in stderr.splitlines() if "forged" in x]
    assert "\\x0a2026-01-01" in line and "\\x0d\\x1b[31m" in line


def test_the_listener_is_up_while_the_model_downloads(tmp_path: Path) -> None:
    """A hub that accepts connections and never answers: the download hangs, and meanwhile
    /health is 200 and /ready 503, which is what Kubernetes probes need."""
    with socket.socket() as hub:
        hub.bind(("127.0.0.1", 0))
        hub.listen(16)
        port = free_port()
        proc = subprocess.Popen(
            [*RERANKER, "serve", "--model", "someone/some-reranker", "--host", "127.0.0.1",
             "--port", str(port), "--hf-cache-dir", str(tmp_path)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{hub.getsockname()[1]}",
                 "HF_HUB_ETAG_TIMEOUT": "60", "HF_HUB_DOWNLOAD_TIMEOUT": "60"},
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                try:
                    health = httpx.get(f"{url}/health")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the listener never came up"
                    time.sleep(0.1)
            ready = httpx.get(f"{url}/ready")
            assert health.status_code == 200
            assert ready.status_code == 503 and ready.json()["status"] == "starting"
        finally:
            proc.kill()
            proc.wait(30)
