"""The running service's moving parts: load and warm up the model, start and stop the workers."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Literal

import numpy as np

from app.batching.scheduler import Scheduler
from app.batching.worker import Worker
from app.config import Settings
from app.engine.backends import Scorer, device_memory_bytes, is_out_of_memory, release_cached_memory
from app.engine.loading import LoadedModel, load_model
from app.engine.tokenize import Encoder
from app.errors import NotReady
from app.metrics import Metrics
from app.service import RerankService

log = logging.getLogger(__name__)

Loader = Callable[[Settings], LoadedModel]
Phase = Literal["starting", "ready", "recovering", "stopping", "failed"]

MAX_WORKER_DEATHS = 3
"""Worker deaths within DEATH_WINDOW_S after which the process gives up (exit non-zero)."""
DEATH_WINDOW_S = 60.0
SUPERVISE_EVERY_S = 0.1
GPU_BATCH_TOKENS = 16384
CPU_BATCH_TOKENS = 4096
"""On CPU, 4096-token batches score jina-reranker-v2 at least as fast as 16384-token ones
(docs/benchmarks.md) and a newcomer waits a quarter as long for the batch in progress."""


def default_batch_tokens(devices: list[str]) -> int:
    return GPU_BATCH_TOKENS if all(d.startswith("cuda") for d in devices) else CPU_BATCH_TOKENS


def batch_token_budget(settings: Settings, devices: list[str]) -> int:
    """--max-batch-tokens, or the default for the devices the model landed on."""
    if settings.max_batch_tokens is not None:
        return settings.max_batch_tokens
    return default_batch_tokens(devices)


def default_loader(settings: Settings) -> LoadedModel:
    return load_model(
        settings.model, device=settings.device, dtype=settings.dtype,
        backend=settings.backend, cache_dir=settings.hf_cache_dir, scoring=settings.scoring,
        default_instruction=settings.default_instruction,
    )


def _timed_forward(scorer: Scorer, batch: list[np.ndarray], split: int) -> tuple[int, float]:
    """(tokens, seconds) of one forward pass over `batch`."""
    t0 = time.perf_counter()
    scorer.score(batch, [split] * len(batch))
    return sum(map(len, batch)), time.perf_counter() - t0


def _mixed_windows(encoder: Encoder, window: int, tokens: int) -> list[np.ndarray]:
    """Windows of six different lengths (full down to an eighth) filling `tokens`."""
    batch: list[np.ndarray] = []
    total = part = 0
    while total < tokens or not batch:
        size = max(1, window // (1, 2, 3, 4, 6, 8)[part % 6])
        pair, _ = encoder.filler(size)
        if batch and total + len(pair) > tokens:
            break
        batch.append(pair)
        total += len(pair)
        part += 1
    return batch


class Runtime:
    """Owned by one app. `service` is usable only while `phase == "ready"`."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        loader: Loader = default_loader,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.phase: Phase = "starting"
        self.model: LoadedModel | None = None
        self._service: RerankService | None = None
        self._scheduler: Scheduler | None = None
        self._workers: list[Worker] = []
        self._loader = loader
        self._on_fatal = on_fatal
        self._deaths: list[float] = []
        self._supervisor: asyncio.Task[None] | None = None

    def _not_ready(self) -> NotReady:
        detail = {
            "starting": "the model is still loading; retry shortly",
            "stopping": "the server is shutting down; retry on another replica",
            "recovering": "a device worker is restarting; retry shortly",
            "failed": "the model failed to load; see the server log",
        }.get(self.phase, "not ready")
        return NotReady(detail, retry_after_s=5.0 if self.phase == "starting" else 1.0)

    @property
    def service(self) -> RerankService:
        """The rerank service; raises NotReady (503) unless the phase is ready."""
        if self.phase != "ready" or self._service is None:
            raise self._not_ready()
        return self._service

    @property
    def loaded_model(self) -> LoadedModel:
        if self.model is None:
            raise self._not_ready()
        return self.model

    async def start(self) -> None:
        """Load, warm up each device, start one worker per device, then report ready once a
        request has gone through the whole path."""
        try:
            log.info("loading model %s", self.settings.model)
            self.model = await asyncio.to_thread(self._loader, self.settings)
            for device in self.model.devices:
                if device.startswith("cuda"):
                    for kind in ("allocated", "reserved"):
                        self.metrics.device_memory.labels(device=device, kind=kind).set_function(
                            functools.partial(device_memory_bytes, device, kind)
                        )
            asked = batch_token_budget(self.settings, self.model.devices)
            budget, timings = await asyncio.to_thread(self._warm_up, self.model, asked)
            if budget < asked:
                log.warning(
                    "a %d-token batch does not fit in device memory; token budget lowered to"
                    " %d (set --max-batch-tokens to choose it yourself)", asked, budget,
                )
            self._scheduler = Scheduler(
                max_batch_tokens=budget,
                max_wait_s=self.settings.max_wait_ms / 1000.0,
                max_queue=self.settings.max_queue,
                max_queue_time_s=self.settings.max_queue_time_s,
                pads=all(s.pads for s in self.model.scorers),
                metrics=self.metrics,
                workers=len(self.model.scorers),
            )
            self.metrics.batch_token_budget.set(budget)
            self.metrics.queue_capacity.set(self.settings.max_queue)
            for tokens, seconds in timings:
                self._scheduler.throughput.observe(tokens, seconds)
            log.info(
                "warm-up: %d-token batches, %s tokens/s per device", budget,
                ", ".join(f"{t / s:.0f}" for t, s in timings),
            )
            self._workers = [
                Worker(self._scheduler, scorer, self.metrics) for scorer in self.model.scorers
            ]
            for worker in self._workers:
                worker.start()
            self._service = RerankService(
                self.model.encoder, self._scheduler, self.metrics,
                max_request_tokens=self.settings.max_request_tokens,
            )
            log.info("warming up")
            await self._service.rerank("warm up", ["warm up"])
        except Exception as exc:
            self.phase = "failed"
            log.error("start-up failed: %s", exc)
            if self._on_fatal is not None:
                self._on_fatal(exc)
            return
        if self.phase == "starting":
            self._set_phase("ready")
            self._supervisor = asyncio.create_task(self._supervise())
            log.info("ready: serving %s", self.settings.served_name)

    def _set_phase(self, phase: Phase) -> None:
        self.phase = phase
        self.metrics.ready.set(1 if phase == "ready" else 0)

    async def _supervise(self) -> None:
        """Restart dead workers; after MAX_WORKER_DEATHS in DEATH_WINDOW_S, give up. A worker
        whose device broke is not restarted: the device leaves service, and with no device
        left the process gives up (a fresh process gets a fresh CUDA context)."""
        while self.phase in ("ready", "recovering"):
            await asyncio.sleep(SUPERVISE_EVERY_S)
            self._retire_broken()
            if not self._workers:
                log.critical("no device left in service; giving up so the orchestrator"
                             " restarts the process")
                self._set_phase("failed")
                if self._on_fatal is not None:
                    self._on_fatal(RuntimeError("every device failed with a CUDA error"))
                return
            for i, worker in enumerate(self._workers):
                if worker.alive or self.phase not in ("ready", "recovering"):
                    continue
                self._set_phase("recovering")
                now = time.monotonic()
                self._deaths = [t for t in self._deaths if now - t < DEATH_WINDOW_S] + [now]
                if len(self._deaths) >= MAX_WORKER_DEATHS:
                    log.critical(
                        "%d worker deaths in %.0f s; giving up so the orchestrator restarts"
                        " the process", len(self._deaths), DEATH_WINDOW_S,
                    )
                    self._set_phase("failed")
                    if self._on_fatal is not None:
                        self._on_fatal(RuntimeError("device workers keep dying"))
                    return
                assert self._scheduler is not None
                replacement = Worker(self._scheduler, worker.scorer, self.metrics)
                replacement.start()
                self._workers[i] = replacement
                self.metrics.worker_restarts.inc()
                log.warning("restarted the worker on %s", worker.scorer.device)
            if self.phase == "recovering" and all(w.alive for w in self._workers):
                self._set_phase("ready")

    def _retire_broken(self) -> None:
        broken = [w for w in self._workers if w.broken is not None and not w.alive]
        if not broken:
            return
        self._workers = [w for w in self._workers if w not in broken]
        for worker in broken:
            self.metrics.devices_out_of_service.inc()
            log.error("%s taken out of service: %r", worker.scorer.device, worker.broken)
        if self._scheduler is not None:
            self._scheduler.workers = max(1, len(self._workers))

    def begin_shutdown(self) -> None:
        """Called on SIGTERM: readiness and new requests answer 503 from now on."""
        if self.phase != "failed":
            self._set_phase("stopping")

    def tokens_per_s(self) -> float | None:
        """Measured scoring speed of all devices; None before start-up measured it."""
        return None if self._scheduler is None else self._scheduler.tokens_per_s()

    def batch_tokens(self) -> int | None:
        """The token budget in force (halved for a while after an out-of-memory error)."""
        return None if self._scheduler is None else self._scheduler.max_batch_tokens

    @staticmethod
    def _warm_up(model: LoadedModel, budget: int) -> tuple[int, list[tuple[int, float]]]:
        """Per device: one max-length forward, so the first real long input pays no set-up;
        then a full-budget batch of windows of mixed lengths (the masked and varlen branches
        warmed, and an out-of-memory error met now, not under live traffic: the budget is
        halved until the batch fits every device). That batch, timed twice, seeds the
        throughput estimate admission predicts with. Returns the budget and the timings."""
        encoder = model.encoder
        window = encoder.window_tokens()
        longest, split = encoder.filler(window)
        for scorer in model.scorers:
            scorer.score([longest], [split])
        while True:
            batch = _mixed_windows(encoder, window, budget)
            try:
                timings = []
                for scorer in model.scorers:
                    # the faster of two runs: the first can still pay one-time costs
                    runs = [_timed_forward(scorer, batch, split) for _ in range(2)]
                    timings.append(min(runs, key=lambda run: run[1] / run[0]))
                return budget, timings
            except Exception as exc:
                if budget <= len(longest) or not is_out_of_memory(exc):
                    raise
            # out of the except block: the failed attempt's tensors are freed before the retry
            release_cached_memory()
            budget //= 2

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stop taking work, let workers drain the queue, and release threads."""
        if self.phase != "failed":
            self._set_phase("stopping")
        if self._supervisor is not None:
            self._supervisor.cancel()
        if self._scheduler is not None:
            self._scheduler.close()
        for worker in self._workers:
            await asyncio.to_thread(worker.join, timeout_s)
        if self._service is not None:
            self._service.close()
