"""One thread per device: pull a batch, run the forward pass, hand results back."""

from __future__ import annotations

import logging
import threading
import time

from app.batching.scheduler import Batch, Scheduler
from app.engine.backends import Scorer
from app.metrics import Metrics

log = logging.getLogger(__name__)


class Worker:
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
        while (batch := self.scheduler.next_batch()) is not None:
            self._process(batch)

    def _process(self, batch: Batch) -> None:
        started = time.perf_counter()
        try:
            logits = self.scorer.score(
                [item.ids for item in batch.items], [item.split for item in batch.items]
            )
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
