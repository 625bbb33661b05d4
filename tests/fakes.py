"""Test-only scorers: pure-Python fakes and wrappers that inject delay or failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from app.config import Settings
from app.engine.backends import Scorer
from app.engine.loading import LoadedModel
from app.runtime import Loader, default_loader


class SumScorer:
    """Logit = mean token id / 100: cheap, deterministic, and differs per input."""

    device = "cpu"

    def __init__(self, pads: bool = True, delay_s: float = 0.0) -> None:
        self.pads = pads
        self.delay_s = delay_s
        self.batches: list[list[list[int]]] = []

    def prepare(self, ids: Sequence[Sequence[int]], splits: Sequence[int]) -> list[list[int]]:
        return [[int(t) for t in x] for x in ids]

    def run(self, ids: list[list[int]]) -> np.ndarray:
        self.batches.append(ids)
        if self.delay_s:
            time.sleep(self.delay_s)
        return np.array([sum(x) / max(1, len(x)) / 100 for x in ids], dtype=np.float32)

    def score(self, ids: Sequence[Sequence[int]], splits: Sequence[int]) -> np.ndarray:
        return self.run(self.prepare(ids, splits))


class WorkerKilled(BaseException):
    """Escapes the worker's error handling, as a crash inside the thread would."""


class WrappedScorer:
    """Delegates to a real scorer; optionally sleeps, or raises when a batch matches.

    `error` picks what a matching batch raises: a plain error, a simulated device
    out-of-memory error, or a thread-killing BaseException. `delay_if` sleeps `delay_s` only
    on matching batches (a hung forward)."""

    def __init__(
        self,
        inner: Scorer,
        *,
        delay_s: float = 0.0,
        fail_if: Callable[[Sequence[Sequence[int]]], bool] | None = None,
        error: Callable[[], BaseException] = lambda: RuntimeError("injected failure: secret"),
        delay_if: Callable[[Sequence[Sequence[int]]], bool] | None = None,
    ) -> None:
        self.inner = inner
        self.device = inner.device
        self.pads = inner.pads
        self.delay_s = delay_s
        self.fail_if = fail_if
        self.error = error
        self.delay_if = delay_if
        self.log: list[tuple[list[tuple[int, ...]], bool]] = []
        self.lock = threading.Lock()

    def prepare(
        self, ids: Sequence[Sequence[int]], splits: Sequence[int]
    ) -> tuple[list[tuple[int, ...]], Any]:
        return [tuple(int(t) for t in x) for x in ids], self.inner.prepare(ids, splits)

    def run(self, prepared: tuple[list[tuple[int, ...]], Any]) -> np.ndarray:
        ids, inner = prepared
        if self.delay_s and (self.delay_if is None or self.delay_if(ids)):
            time.sleep(self.delay_s)
        failed = self.fail_if is not None and self.fail_if(ids)
        with self.lock:
            self.log.append((ids, failed))
        if failed:
            raise self.error()
        return self.inner.run(inner)

    def score(self, ids: Sequence[Sequence[int]], splits: Sequence[int]) -> np.ndarray:
        return self.run(self.prepare(ids, splits))


def wrapping_loader(
    wrap: Callable[[Scorer], WrappedScorer],
    gate: threading.Event | None = None,
    base: Loader = default_loader,
) -> tuple[Loader, list[WrappedScorer]]:
    """A loader whose scorers are wrapped; with a gate, loading waits until it is set."""
    made: list[WrappedScorer] = []

    def load(settings: Settings) -> LoadedModel:
        if gate is not None:
            gate.wait(60)
        loaded = base(settings)
        wrapped = [wrap(s) for s in loaded.scorers]
        made.extend(wrapped)
        return replace(loaded, scorers=list(wrapped))

    return load, made


class ExplodingEncoder:
    """Delegates to a real encoder, but `encode` raises a plain error for one query: an
    unexpected bug outside the batching path (the answer must be a generic 500)."""

    def __init__(self, inner: Any, query: str) -> None:
        self._inner = inner
        self._query = query

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def encode(self, query: str, *args: Any, **kwargs: Any) -> Any:
        if query == self._query:
            raise RuntimeError("unexpected: secret internals")
        return self._inner.encode(query, *args, **kwargs)


def exploding_loader(query: str) -> Loader:
    def load(settings: Settings) -> LoadedModel:
        loaded = default_loader(settings)
        return replace(loaded, encoder=ExplodingEncoder(loaded.encoder, query))

    return load
