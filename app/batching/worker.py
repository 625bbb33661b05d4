"""One worker per device: pull a batch, run the forward pass, hand results back.

Two threads per device: the worker runs forward passes; its packer forms the next batch and
prepares it (packing, the copy to the device) while the current one runs, so a forward pass
never waits for host-side work when a batch is ready.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from app.batching.scheduler import Batch, Item, Scheduler
from app.engine.backends import (
    Scorer,
    is_device_broken,
    is_out_of_memory,
    release_cached_memory,
)
from app.metrics import ModelMetrics

log = logging.getLogger(__name__)

Trace = Callable[[str, Batch], None]
"""Called with "packed", "run" and "done" and the batch (tests watch the pipeline with it)."""
Prepared = tuple[Batch, Any, BaseException | None]


class Worker:
    """Runs batches on one scorer. A failing forward fails its batch; a split is tried first
    when the device ran out of memory. If the thread itself dies, the batches in hand are
    failed and `alive` turns False for the runtime's supervisor to notice. After an error that
    breaks the device (a sticky CUDA error), the worker fails that batch, hands the one it had
    prepared back to the scheduler and stops for good: `broken` tells the supervisor not to
    restart it."""

    def __init__(
        self, scheduler: Scheduler, scorer: Scorer, metrics: ModelMetrics,
        trace: Trace | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.scorer = scorer
        self._metrics = metrics
        self._trace = trace
        self._inference = metrics.inference_duration.labels(device=scorer.device)
        self._go = threading.Semaphore(0)  # released once per batch the worker wants next
        self._ready: queue.SimpleQueue[Prepared | None] = queue.SimpleQueue()
        self._handoff = threading.Lock()
        self._dead = False
        self._last_end = math.nan
        self.broken: BaseException | None = None
        """The error that took the device out of service, if one did."""
        self._thread = threading.Thread(
            target=self._run, name=f"reranker-worker-{scorer.device}", daemon=True
        )
        self._packer = threading.Thread(
            target=self._pack, name=f"reranker-pack-{scorer.device}", daemon=True
        )

    def start(self) -> None:
        self._packer.start()
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _prepare_next(self) -> Prepared | None:
        """On the packer thread: the next batch (blocking until one is due) and its inputs."""
        batch = self.scheduler.next_batch()
        if batch is None:
            return None
        try:
            prepared = self.scorer.prepare(
                [it.ids for it in batch.items], [it.split for it in batch.items]
            )
        except BaseException as exc:  # the worker thread fails the batch
            return batch, None, exc
        if self._trace is not None:
            self._trace("packed", batch)
        return batch, prepared, None

    def _pack(self) -> None:
        """The packer thread: one batch prepared ahead, each time the worker asks."""
        while True:
            self._go.acquire()
            ready = self._prepare_next()
            with self._handoff:
                if self._dead:  # this worker will not run it: another one will
                    if ready is not None:
                        self.scheduler.requeue(ready[0])
                    return
                self._ready.put(ready)
            if ready is None:
                return

    def _run(self) -> None:
        current: Batch | None = None
        self._go.release()
        try:
            while self.broken is None and (ready := self._ready.get()) is not None:
                current, prepared, error = ready
                self._go.release()  # the next batch is packed while this one runs
                if error is None and self.scheduler.overtaken(current):
                    # prepared before a smaller request arrived: that one goes first
                    self.scheduler.requeue(current)
                    current = None
                    continue
                if all(item.job.abandoned for item in current.items):
                    # every request in it went away while it waited its turn: not scored
                    self.scheduler.drop(current)
                elif isinstance(error, Exception):
                    self._failed(current, error)
                elif error is not None:
                    raise error
                else:
                    self._process(current, prepared)
                current = None
        except BaseException as exc:  # the thread is going down: leave nobody waiting
            log.critical("worker on %s died: %r", self.scorer.device, exc)
            if current is not None:
                self.scheduler.fail(current)
        self._hand_back()

    def _hand_back(self) -> None:
        """The batch already prepared for this worker goes back to the scheduler."""
        with self._handoff:
            self._dead = True
            while not self._ready.empty():
                orphan = self._ready.get()
                if orphan is not None:
                    self.scheduler.requeue(orphan[0])

    def _failed(self, batch: Batch, exc: Exception) -> None:
        log.error(
            "forward pass failed on %s (%d pairs): %r", self.scorer.device, len(batch.items), exc,
            exc_info=exc,
        )
        self._metrics.failures.labels(reason="batch_error").inc()
        self.scheduler.fail(batch)

    def _process(self, batch: Batch, prepared: Any) -> None:
        started = time.perf_counter()
        batch.started = started
        if self._trace is not None:
            self._trace("run", batch)
        try:
            logits = self._forward(batch.items, prepared)
        except Exception as exc:
            self._failed(batch, exc)
            if is_device_broken(exc):
                log.critical("%s is out of service after %r; its work goes to the other"
                             " devices", self.scorer.device, exc)
                self.broken = exc
            return
        ended = time.perf_counter()
        if self._trace is not None:
            self._trace("done", batch)
        self._inference.observe(ended - started)
        self._metrics.batch_size.observe(len(batch.items))
        self._metrics.batch_requests.observe(len({id(item.job) for item in batch.items}))
        self._metrics.batch_tokens.observe(batch.cost_tokens)
        self._metrics.padding_efficiency.observe(batch.real_tokens / max(1, batch.cost_tokens))
        self.scheduler.complete(batch, logits, started, ended)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("batch on %s: %d windows of %d requests, %d tokens, %.0f work, forward"
                      " %.3f s, %.3f s after the previous one ended", self.scorer.device,
                      len(batch.items), len({id(item.job) for item in batch.items}),
                      batch.real_tokens, batch.work, ended - started, started - self._last_end)
        self._last_end = ended

    def _forward(self, items: Sequence[Item], prepared: Any) -> np.ndarray:
        """Out of memory: release cached blocks, halve the budget (once per batch, however
        deep the splitting goes), and score the halves one after the other.

        The retry happens after the `except` block is left: inside it, the exception's
        traceback would keep every tensor of the failed forward alive through the retries,
        and emptying the cache would free nothing (PyTorch's FAQ pattern)."""
        try:
            return self.scorer.run(prepared)
        except Exception as exc:
            if len(items) == 1 or not is_out_of_memory(exc):
                raise
        budget = self.scheduler.back_off()
        log.warning(
            "out of memory on %s with %d pairs: splitting the batch in halves;"
            " token budget %d for the next 60 s", self.scorer.device, len(items), budget,
        )
        return self._halves(items)

    def _halves(self, items: Sequence[Item]) -> np.ndarray:
        self._metrics.out_of_memory.inc()
        release_cached_memory()
        half = len(items) // 2
        return np.concatenate([self._score(items[:half]), self._score(items[half:])])

    def _score(self, items: Sequence[Item]) -> np.ndarray:
        try:
            return self.scorer.score([it.ids for it in items], [it.split for it in items])
        except Exception as exc:
            if len(items) == 1 or not is_out_of_memory(exc):
                raise
        return self._halves(items)
