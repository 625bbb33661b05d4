"""The worker's pipeline: the next batch is packed while the current one is in its forward pass,
so the worker never waits for packing when a batch is ready."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from app.batching.scheduler import Batch, Scheduler
from app.batching.worker import Worker
from app.metrics import Metrics
from tests.fakes import SumScorer

BATCHES = 6


class Handshake(SumScorer):
    """Batch k's forward pass returns only after batch k+1 has been packed (or after 2 s):
    a worker that packed only between forward passes could not satisfy it."""

    def __init__(self) -> None:
        super().__init__(pads=False)
        self.packed = [threading.Event() for _ in range(BATCHES)]
        self.in_time: list[bool] = []
        self._prepared = 0
        self._ran = 0

    def prepare(self, ids: Sequence[Sequence[int]], splits: Sequence[int]) -> list[list[int]]:
        out = super().prepare(ids, splits)
        self.packed[self._prepared].set()
        self._prepared += 1
        return out

    def run(self, ids: list[list[int]]) -> np.ndarray:
        k, self._ran = self._ran, self._ran + 1
        if k + 1 < BATCHES:
            self.in_time.append(self.packed[k + 1].wait(2))
        return super().run(ids)


async def test_the_next_batch_is_packed_during_the_forward_pass() -> None:
    s = Scheduler(max_batch_tokens=10, max_wait_s=0.0, max_queue=100, pads=False,
                  metrics=Metrics().for_model("test"))
    jobs = [s.submit([([j + 1] * 10, 1)]) for j in range(BATCHES)]  # one batch each, all ready
    events: list[tuple[str, int]] = []

    def trace(event: str, batch: Batch) -> None:
        events.append((event, int(batch.items[0].ids[0]) - 1))  # batch k holds token k + 1

    scorer = Handshake()
    worker = Worker(s, scorer, Metrics().for_model("test"), trace=trace)
    worker.start()
    results = await asyncio.gather(*(job.future for job in jobs))
    s.close()
    worker.join(5)
    assert [r[0] for r in results] == pytest.approx([(j + 1) / 100 for j in range(BATCHES)])
    assert scorer.in_time == [True] * (BATCHES - 1)
    for k in range(BATCHES - 1):
        # batch k+1 was ready on the device side before batch k's forward pass ended, so
        # the worker went from one forward pass to the next without waiting for packing
        assert events.index(("packed", k + 1)) < events.index(("done", k)) < events.index(
            ("run", k + 1)
        ), events
