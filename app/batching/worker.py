"""One thread per device: pull a batch, run the forward pass, hand results back."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import numpy as np

from app.batching.scheduler import Batch, Item, Scheduler
from app.engine.backends import Scorer, is_out_of_memory, release_cached_memory
from app.metrics import Metrics

log = logging.getLogger(__name__)


class Worker:
    """Runs batches on one scorer. A failing forward fails its batch; a split is tried first
    when the device ran out of memory. If the thread itself dies, the batch in hand is failed
    and `alive` turns False for the runtime's supervisor to notice."""

    def __init__(self, scheduler: Scheduler, scorer: Scorer, metrics: Metrics) -> None:
        self.scheduler = scheduler
        self.scorer = scorer
        self._metrics = metrics
        self._inference = metrics.inference_duration.labels(device=scorer.device)
        self._thread = threading.Thread(
            target=self._run, name=f"reranker-worker-{scorer.device}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        current: Batch | None = None
        try:
            while (batch := self.scheduler.next_batch()) is not None:
                current = batch
                self._process(batch)
                current = None
        except BaseException as exc:  # the thread is going down: leave nobody waiting
            log.critical("worker on %s died: %r", self.scorer.device, exc)
            if current is not None:
                self.scheduler.fail(current)

    def _process(self, batch: Batch) -> None:
        started = time.perf_counter()
        try:
            logits = self._score(batch.items)
        except Exception:
            log.exception(
                "forward pass failed on %s (%d pairs)", self.scorer.device, len(batch.items)
            )
            self._metrics.failures.labels(reason="batch_error").inc()
            self.scheduler.fail(batch)
            return
        ended = time.perf_counter()
        self._inference.observe(ended - started)
        self._metrics.batch_size.observe(len(batch.items))
        self._metrics.batch_requests.observe(len({id(item.job) for item in batch.items}))
        self._metrics.batch_tokens.observe(batch.cost_tokens)
        self._metrics.padding_efficiency.observe(batch.real_tokens / max(1, batch.cost_tokens))
        self.scheduler.complete(batch, logits, started, ended)

    def _score(self, items: Sequence[Item], backed_off: bool = False) -> np.ndarray:
        try:
            return self.scorer.score([it.ids for it in items], [it.split for it in items])
        except Exception as exc:
            if len(items) == 1 or not is_out_of_memory(exc):
                raise
            release_cached_memory()
            self._metrics.out_of_memory.inc()
            if not backed_off:  # once per batch, however deep the splitting goes
                budget = self.scheduler.back_off()
                log.warning(
                    "out of memory on %s with %d pairs: splitting the batch in halves;"
                    " token budget %d for the next 60 s", self.scorer.device, len(items), budget,
                )
            half = len(items) // 2
            return np.concatenate(
                [self._score(items[:half], True), self._score(items[half:], True)]
            )
