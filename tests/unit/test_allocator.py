"""Choosing the allocator: the environment a re-exec gets, and when it happens at all."""

from __future__ import annotations

import pytest

from app import allocator


def test_exec_env_puts_tcmalloc_first_and_keeps_the_callers_preload() -> None:
    env = allocator.exec_env("/lib/libtcmalloc_minimal.so.4", {"LD_PRELOAD": "/x/libfoo.so"})
    assert env["LD_PRELOAD"] == "/lib/libtcmalloc_minimal.so.4 /x/libfoo.so"
    assert env["RERANKER_ALLOCATOR_EXEC"] == "1"
    assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40
    kept = allocator.exec_env("t.so", {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": "5"})
    assert kept["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == "5" and kept["LD_PRELOAD"] == "t.so"


def _no_exec(*_: object) -> None:
    raise AssertionError("must not re-exec")


def test_system_never_re_executes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator.os, "execve", _no_exec)
    monkeypatch.setattr(allocator, "loaded_tcmalloc", lambda: False)
    assert allocator.ensure("system", []) == "system"


def test_auto_without_the_library_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator.os, "execve", _no_exec)
    monkeypatch.setattr(allocator, "loaded_tcmalloc", lambda: False)
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    assert allocator.ensure("auto", []).startswith("system")
    with pytest.raises(allocator.AllocatorUnavailable, match="libtcmalloc-minimal4"):
        allocator.ensure("tcmalloc", [])


def test_re_executes_once_with_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str], dict[str, str]]] = []

    class Exec(Exception):
        pass

    def fake_execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        calls.append((path, argv, env))
        raise Exec

    monkeypatch.setattr(allocator.os, "execve", fake_execve)
    monkeypatch.setattr(allocator, "loaded_tcmalloc", lambda: False)
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "/lib/libtcmalloc_minimal.so.4")
    monkeypatch.delenv("RERANKER_ALLOCATOR_EXEC", raising=False)
    with pytest.raises(Exec):
        allocator.ensure("auto", ["-m", "app.cli", "serve"])
    [(_, argv, env)] = calls
    assert argv[1:] == ["-m", "app.cli", "serve"]
    assert env["LD_PRELOAD"].startswith("/lib/libtcmalloc_minimal.so.4")
    # After the re-exec the marker is set: a library that still did not load is not retried.
    monkeypatch.setenv("RERANKER_ALLOCATOR_EXEC", "1")
    assert allocator.ensure("auto", []).startswith("system")
    assert len(calls) == 1
