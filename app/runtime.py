"""The running service's moving parts: load and warm up each model, start and stop the workers."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from app.batching.cost import Cost, fit
from app.batching.scheduler import Scheduler
from app.batching.worker import Worker
from app.config import Settings
from app.engine.backends import Scorer, device_memory_bytes, is_out_of_memory, release_cached_memory
from app.engine.loading import LoadedModel, load_model
from app.engine.tokenize import Encoder
from app.errors import ModelNotServed, ModelUnavailable, NotReady
from app.metrics import Metrics, ModelMetrics
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
        settings.model[0], device=settings.device, dtype=settings.dtype,
        backend=settings.backend, cache_dir=settings.hf_cache_dir,
        scoring=settings.scoring[0] if settings.scoring else "auto",
        default_instruction=settings.default_instruction[0] if settings.default_instruction
        else None,
    )


CALIBRATION_LENGTH = 2048
"""Longest sequence of the warm-up's cost calibration (a decoder's 8192-token window on a CPU
would add a minute to the start)."""


def _timed_forward(scorer: Scorer, batch: list[np.ndarray], split: int) -> float:
    """Seconds of the faster of two forward passes over `batch` (the first can still pay
    one-time costs)."""
    best = math.inf
    for _ in range(2):
        t0 = time.perf_counter()
        scorer.score(batch, [split] * len(batch))
        best = min(best, time.perf_counter() - t0)
    return best


@dataclass(frozen=True)
class WarmUp:
    """What the warm-up measured: the token budget that fits, the cost of a sequence by its
    length, and per device the mixed batch's (tokens, token-equivalents, seconds)."""

    budget: int
    cost: Cost
    runs: list[tuple[int, float, float]]


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


def freeze_start_up_heap() -> None:
    """Move every object alive after start-up out of the cyclic garbage collector's sight.

    With torch, transformers and jina-reranker-v2 loaded a process holds ~360,000 tracked
    objects, and each full collection (which allocation counts trigger from time to time)
    scanned them all: `gc.collect()` took ~220 ms, during which no thread runs Python, so
    every request in flight waits. Frozen, they are still freed by reference counting; a full
    collection scans only what requests allocate (~1 ms)."""
    gc.collect()
    gc.freeze()


@dataclass
class ServedModel:
    """One model being served: its own queue, a worker per device, and its rerank service."""

    name: str
    loaded: LoadedModel
    scheduler: Scheduler
    workers: list[Worker]
    service: RerankService
    metrics: ModelMetrics
    recovering: bool = False
    """A worker of this model died and is being replaced: its requests get 503 meanwhile;
    the other models' requests are served as usual."""


class Runtime:
    """Owned by one app. Services are usable while `phase` is "ready", or "recovering" for the
    models none of whose workers is being replaced (`/ready` says "recovering" meanwhile)."""

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
        self.models: list[ServedModel] = []
        self._loaded: list[LoadedModel] = []
        self._loader = loader
        self._on_fatal = on_fatal
        self._deaths: list[float] = []
        self._supervisor: asyncio.Task[None] | None = None

    def not_ready(self) -> NotReady:
        detail = {
            "starting": "the model is still loading; retry shortly",
            "stopping": "the server is shutting down; retry on another replica",
            "recovering": "a device worker is restarting; retry shortly",
            "failed": "the model failed to load; see the server log",
        }.get(self.phase, "not ready")
        return NotReady(detail, retry_after_s=5.0 if self.phase == "starting" else 1.0)

    def route(self, name: str | None) -> ServedModel:
        """The model a request names (None: the first); 404 listing the served names when it
        names none of them, 503 unless the phase is ready."""
        index = self.settings.model_index(name)
        if index is None:
            raise ModelNotServed(
                f"model {name!r} is not served here; use one of"
                f" {', '.join(map(repr, self.settings.served_names))} or omit 'model'"
            )
        if self.phase not in ("ready", "recovering") or index >= len(self.models):
            raise self.not_ready()
        served = self.models[index]
        if served.recovering:
            raise NotReady(f"a device worker of {served.name} is restarting; retry shortly",
                           retry_after_s=1.0)
        return served

    @property
    def service(self) -> RerankService:
        """The first model's rerank service; raises NotReady (503) unless ready."""
        return self.route(None).service

    @property
    def loaded_model(self) -> LoadedModel:
        """The first model, once loaded."""
        if not self._loaded:
            raise self.not_ready()
        return self._loaded[0]

    @property
    def model(self) -> LoadedModel | None:
        return self._loaded[0] if self._loaded else None

    async def start(self) -> None:
        """Load every model and warm up each device, start one worker per model and device,
        then report ready once a request has gone through each model's whole path."""
        try:
            # Every model is loaded before any is warmed up, so each warm-up batch (the
            # largest a model will run) is measured with all the weights in device memory.
            for index in range(len(self.settings.model)):
                log.info("loading model %s", self.settings.model[index])
                self._loaded.append(await asyncio.to_thread(self._load, index))
            for name, loaded in zip(self.settings.served_names, self._loaded, strict=True):
                self.models.append(await self._start_model(name, loaded))
            for served in self.models:
                log.info("warming up %s", served.name)
                await served.service.rerank("warm up", ["warm up"])
        except Exception as exc:
            self.phase = "failed"
            log.error("start-up failed: %s", exc)
            if self._on_fatal is not None:
                self._on_fatal(exc)
            return
        if self.phase == "starting":
            freeze_start_up_heap()
            self._set_phase("ready")
            self._supervisor = asyncio.create_task(self._supervise())
            log.info("ready: serving %s", ", ".join(self.settings.served_names))

    def _load(self, index: int) -> LoadedModel:
        try:
            return self._loader(self.settings.for_model(index))
        except Exception as exc:
            if index == 0 or not is_out_of_memory(exc):
                raise
            raise ModelUnavailable(
                f"{self.settings.model[index]} does not fit in device memory next to"
                f" {', '.join(self.settings.served_names[:index])}: serve fewer or smaller"
                " models, or a smaller --dtype"
            ) from exc

    async def _start_model(self, name: str, loaded: LoadedModel) -> ServedModel:
        for device in loaded.devices:
            if device.startswith("cuda"):
                for kind in ("allocated", "reserved"):
                    self.metrics.device_memory.labels(device=device, kind=kind).set_function(
                        functools.partial(device_memory_bytes, device, kind)
                    )
        metrics = self.metrics.for_model(name)
        asked = batch_token_budget(self.settings, loaded.devices)
        release_cached_memory()  # what the models warmed up before this one left cached
        try:
            warm = await asyncio.to_thread(self._warm_up, loaded, asked)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            others = [n for n in self.settings.served_names if n != name]
            beside = f" next to {', '.join(others)}" if others else ""
            raise ModelUnavailable(
                f"{name}: not even one full-length input fits in device memory{beside}: serve"
                " fewer or smaller models, or a smaller --dtype"
            ) from exc
        budget = warm.budget
        if budget < asked:
            log.warning(
                "%s: a %d-token batch does not fit in device memory; token budget lowered to"
                " %d (set --max-batch-tokens to choose it yourself)", name, asked, budget,
            )
        scheduler = Scheduler(
            max_batch_tokens=budget,
            max_wait_s=self.settings.max_wait_ms / 1000.0,
            max_queue=self.settings.max_queue,
            max_queue_time_s=self.settings.max_queue_time_s,
            pads=all(s.pads for s in loaded.scorers),
            metrics=metrics,
            workers=len(loaded.scorers),
            cost=warm.cost,
        )
        metrics.batch_token_budget.set(budget)
        metrics.queue_capacity.set(self.settings.max_queue)
        for tokens, work, seconds in warm.runs:
            scheduler.throughput.observe(tokens, seconds, work)
        max_length = loaded.encoder.max_length
        log.info(
            "%s warm-up: %d-token batches, %s tokens/s per device; a token of a %d-token"
            " window costs %.2fx one of a short window", name, budget,
            ", ".join(f"{t / s:.0f}" for t, _, s in warm.runs), max_length,
            warm.cost.per_token(max_length),
        )
        workers = [Worker(scheduler, scorer, metrics) for scorer in loaded.scorers]
        for worker in workers:
            worker.start()
        service = RerankService(loaded.encoder, scheduler, metrics,
                                max_request_tokens=self.settings.max_request_tokens)
        return ServedModel(name, loaded, scheduler, workers, service, metrics)

    def _set_phase(self, phase: Phase) -> None:
        self.phase = phase
        self.metrics.ready.set(1 if phase == "ready" else 0)

    def _give_up(self, why: str) -> None:
        log.critical("%s; giving up so the orchestrator restarts the process", why)
        self._set_phase("failed")
        if self._on_fatal is not None:
            self._on_fatal(RuntimeError(why))

    async def _supervise(self) -> None:
        """Restart dead workers; after MAX_WORKER_DEATHS in DEATH_WINDOW_S, give up. A worker
        whose device broke is not restarted: the device leaves service, and with no device
        left for a model the process gives up (a fresh process gets a fresh CUDA context)."""
        while self.phase in ("ready", "recovering"):
            await asyncio.sleep(SUPERVISE_EVERY_S)
            for served in self.models:
                self._retire_broken(served)
                if not served.workers:
                    self._give_up(f"every device of {served.name} failed with a CUDA error")
                    return
                for i, worker in enumerate(served.workers):
                    if worker.alive or self.phase not in ("ready", "recovering"):
                        continue
                    served.recovering = True
                    self._set_phase("recovering")
                    now = time.monotonic()
                    self._deaths = [t for t in self._deaths if now - t < DEATH_WINDOW_S] + [now]
                    if len(self._deaths) >= MAX_WORKER_DEATHS:
                        self._give_up(f"{len(self._deaths)} worker deaths in"
                                      f" {DEATH_WINDOW_S:.0f} s")
                        return
                    replacement = Worker(served.scheduler, worker.scorer, served.metrics)
                    replacement.start()
                    served.workers[i] = replacement
                    served.metrics.worker_restarts.inc()
                    log.warning("restarted the worker of %s on %s", served.name,
                                worker.scorer.device)
            for served in self.models:
                served.recovering = served.recovering and not all(
                    w.alive for w in served.workers)
            if self.phase == "recovering" and not any(s.recovering for s in self.models):
                self._set_phase("ready")

    def _retire_broken(self, served: ServedModel) -> None:
        broken = [w for w in served.workers if w.broken is not None and not w.alive]
        if not broken:
            return
        served.workers = [w for w in served.workers if w not in broken]
        for worker in broken:
            served.metrics.devices_out_of_service.inc()
            log.error("%s taken out of service for %s: %r", worker.scorer.device, served.name,
                      worker.broken)
        served.scheduler.workers = max(1, len(served.workers))

    def begin_shutdown(self) -> None:
        """Called on SIGTERM: readiness and new requests answer 503 from now on."""
        if self.phase != "failed":
            self._set_phase("stopping")

    @staticmethod
    def _warm_up(model: LoadedModel, budget: int) -> WarmUp:
        """Per device: one max-length forward, so the first real long input pays no set-up;
        then a full-budget batch of windows of mixed lengths (the masked and varlen branches
        warmed, and an out-of-memory error met now, not under live traffic: the budget is
        halved until the batch fits every device). That batch, timed, seeds the throughput
        estimate admission predicts with; on the first device a batch of long windows, timed
        too, gives the cost of a sequence by its length (app/batching/cost.py)."""
        encoder = model.encoder
        window = encoder.window_tokens()
        longest, split = encoder.filler(window)
        for scorer in model.scorers:
            scorer.score([longest], [split])
        prompt = len(longest) - window  # query and separators (a decoder's template)
        long_window, _ = encoder.filler(min(window, CALIBRATION_LENGTH - prompt))
        while True:
            mixed = _mixed_windows(encoder, window, budget)
            long_batch = [long_window] * max(1, budget // len(long_window))
            try:
                seconds = [_timed_forward(scorer, mixed, split) for scorer in model.scorers]
                long_s = _timed_forward(model.scorers[0], long_batch, split)
                break
            except Exception as exc:
                if budget <= len(longest) or not is_out_of_memory(exc):
                    raise
            # out of the except block: the failed attempt's tensors are freed before the retry
            release_cached_memory()
            budget //= 2
        lengths = [len(x) for x in mixed]
        cost = fit([(lengths, seconds[0]), ([len(x) for x in long_batch], long_s)])
        work = cost.of_lengths(lengths)
        return WarmUp(budget, cost, [(sum(lengths), work, s) for s in seconds])

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stop taking work, let workers drain the queues, and release threads."""
        if self.phase != "failed":
            self._set_phase("stopping")
        if self._supervisor is not None:
            self._supervisor.cancel()
        for served in self.models:
            served.scheduler.close()
        for served in self.models:
            for worker in served.workers:
                await asyncio.to_thread(worker.join, timeout_s)
            served.service.close()
