"""One queue of scoring items shared by all requests: admission, batch forming, completion.

A request is first admitted (`admit`, before it is tokenized) on a prediction of when it would
finish (app/batching/admission.py), then its items are queued (`enqueue`) in a FIFO of its own.
Device workers pull batches: the lead request and the items that fill the batch come from the
policy (app/batching/policy.py), computed outside the lock on a snapshot, so `admit` and
`enqueue` on the event loop never wait for batch forming. Results go back to the event loop
with one `call_soon_threadsafe` per batch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from app.batching import policy
from app.batching.admission import Admitted, forecast
from app.batching.cost import Cost
from app.batching.throughput import Throughput
from app.engine.backends import TokenIds
from app.errors import InferenceFailed, QueueFull, RequestTooLarge
from app.metrics import ModelMetrics

log = logging.getLogger(__name__)

ESTIMATE_MARGIN = 2.0
"""A request is refused as too large before tokenizing only when its estimated compute is
this many times its deadline; nearer the line, its real token count decides."""


@dataclass(eq=False)
class Job:
    """One admitted request: its queued items, and the future that resolves with all logits."""

    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop
    arrival: int
    deadline: float
    work: float
    """Work not yet handed to a forward pass, in token-equivalents (app/batching/cost.py): an
    estimate until the request is tokenized."""
    items: deque[Item] | None = None
    logits: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float32))
    remaining: int = 0
    queue_s: float = 0.0
    inference_s: float = 0.0
    abandoned: bool = False
    on_abandon: Callable[[], None] | None = None
    queued: int = 0
    """Order in which its items were queued (0 until they are)."""
    admitted_at: float = 0.0
    predicted_s: float = math.nan
    """Predicted seconds from admission to the last window scored (debug log)."""

    def abandon(self) -> None:
        """Mark the request as gone: its waiting items are dropped before any forward pass."""
        self.abandoned = True
        if self.on_abandon is not None:
            self.on_abandon()


@dataclass(eq=False, slots=True)
class Item:
    ids: TokenIds
    split: int
    job: Job
    pos: int
    enqueued: float
    work: float

    @property
    def length(self) -> int:
        return len(self.ids)


@dataclass(eq=False, slots=True)
class Batch:
    items: list[Item]
    real_tokens: int
    cost_tokens: int
    work: float
    """Token-equivalents (app/batching/cost.py): what its forward pass is predicted to cost."""
    started: float | None = None
    """When its forward pass began (set by the worker); None while it is being prepared."""
    lead_work: float = 0
    """Remaining work of the request that led it, besides this batch, when it was formed."""
    newest: int = 0
    """The last request queued when it was formed: one queued later may overtake it."""


class Scheduler:
    def __init__(
        self,
        *,
        max_batch_tokens: int,
        max_wait_s: float,
        max_queue: int,
        pads: bool,
        metrics: ModelMetrics,
        max_queue_time_s: float = math.inf,
        lookahead: int = 1024,
        workers: int = 1,
        cost: Cost | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.configured_batch_tokens = max_batch_tokens
        self.max_batch_tokens = max_batch_tokens
        self._backoff_until = 0.0
        self.workers = workers
        self.cost = cost or Cost()
        self.throughput = Throughput()
        """Tokens and work per second of one worker."""
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.max_queue_time_s = max_queue_time_s
        self.pads = pads
        self.lookahead = lookahead
        self._metrics = metrics
        self._clock = clock
        self._jobs: dict[Job, None] = {}  # admitted and not fully dispatched, in arrival order
        self._arrivals = 0
        self._queued = 0
        self._in_flight: set[Batch] = set()
        self._depth = 0
        self._queued_tokens = 0
        self._without_oldest = 0  # batches formed since the oldest request was last served
        self._abandoned = False  # set when some job was abandoned: _drop_abandoned has work
        self._cond = threading.Condition()
        self._forming = threading.Lock()  # one worker plans a batch at a time
        self._closed = False

    # -- event-loop side -------------------------------------------------------------------
    def tokens_per_s(self) -> float | None:
        """Measured tokens per second of all workers together; None before any measurement."""
        rate = self.throughput.tokens_per_s
        return None if rate is None else rate * self.workers

    def work_per_s(self) -> float | None:
        """Measured token-equivalents per second of all workers together: what admission
        divides work by. None before any measurement."""
        rate = self.throughput.work_per_s
        return None if rate is None else rate * self.workers

    def admit(self, work: float, timeout_s: float) -> Job:
        """Admit a request of about `work` token-equivalents of work (app/batching/cost.py)
        with `timeout_s` to finish, or refuse it:
        QueueFull (429) with the predicted time until it would fit, RequestTooLarge (413) when
        it cannot finish in time even alone. The returned job holds its place in line."""
        loop = asyncio.get_running_loop()
        now = self._clock()
        deadline = now + timeout_s
        rate = self.work_per_s()
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down; retry on another replica",
                                retry_after_s=1.0)
            admitted = [Admitted(j.work, j.deadline, j.arrival) for j in self._jobs]
            in_flight = list(self._in_flight)
        if rate is not None:
            in_flight_s = self._in_flight_s(in_flight, now)
            next_batch_s = self._next_batch_s(in_flight)
            guess = forecast(
                admitted, work=work, now=now, deadline=deadline, in_flight_s=in_flight_s,
                work_per_s=rate, max_queue_time_s=self.max_queue_time_s,
                next_batch_s=next_batch_s,
            )
            if guess.verdict == "too_large" and work / rate <= ESTIMATE_MARGIN * timeout_s:
                # `work` is an estimate from characters: 413 is final, so only the real
                # count (in `enqueue`) decides it unless the estimate is far past the deadline
                guess = forecast(
                    admitted, work=work, now=now, deadline=math.inf,
                    in_flight_s=in_flight_s, work_per_s=rate,
                    max_queue_time_s=self.max_queue_time_s, next_batch_s=next_batch_s,
                )
            if guess.verdict != "admit":
                self._metrics.requests_shed.labels(reason=guess.verdict).inc()
                self._refuse(guess.verdict, work, timeout_s, rate, guess.wait_s,
                             guess.finish_s, guess.retry_after_s)
            self._metrics.predicted_queue_time.observe(guess.wait_s)
        with self._cond:
            self._arrivals += 1
            job = Job(loop.create_future(), loop, self._arrivals, deadline, work,
                      on_abandon=self._note_abandoned, admitted_at=now)
            self._jobs[job] = None
        if rate is not None:
            job.predicted_s = guess.finish_s
            log.debug("admitted request %d: %.0f work (estimate), %.0f work/s, %d ahead, start"
                      " in %.1f s, finish in %.1f s, deadline %.1f s", job.arrival, work,
                      rate, len(admitted), guess.wait_s, guess.finish_s, timeout_s)
        return job

    def _refuse(self, verdict: str, work: float, timeout_s: float, rate: float, wait: float,
                finish: float, retry: float) -> None:
        if verdict == "too_large":
            tokens_rate = self.tokens_per_s() or rate
            raise RequestTooLarge(
                f"this request needs about {work / rate:.1f} s of compute at this server's"
                f" measured speed ({tokens_rate:.0f} tokens/s): more than its {timeout_s:g} s"
                " deadline even on an idle server; send fewer or shorter documents, or allow"
                " more time (x-request-timeout, up to the server's --request-timeout)"
            )
        if verdict == "queue_time":
            why = (f"it would wait about {wait:.1f} s before its work starts, longer than the"
                   f" {self.max_queue_time_s:g} s queue-time limit (max_queue_time) and than"
                   " its own compute time")
        else:
            why = (f"it would finish in about {finish:.1f} s, after its {timeout_s:g} s deadline,"
                   " or push an earlier request past its own")
        raise QueueFull(
            f"the server is at capacity: {why}; retry after {retry:.1f} s",
            retry_after_s=retry,
        )

    def enqueue(
        self, job: Job, pairs: Sequence[tuple[TokenIds, int]], timeout_s: float = math.inf
    ) -> None:
        """Queue an admitted request's (ids, split) pairs; `job.future` gets their logits.
        Its estimated work is replaced by the real token count, and a request that turns out
        unable to finish within `timeout_s` even alone is refused after all (413)."""
        job.logits = np.empty(len(pairs), dtype=np.float32)
        job.remaining = len(pairs)
        if not pairs:
            self.release(job)
            job.future.set_result(job.logits)
            return
        if len(pairs) > self.max_queue:
            self.release(job)
            raise RequestTooLarge(
                f"this request needs {len(pairs)} scoring windows, more than the queue holds"
                f" (max_queue={self.max_queue}); send fewer or shorter documents"
            )
        now = self._clock()
        of = self.cost.of
        items = deque(Item(ids, split, job, pos, now, of(len(ids)))
                      for pos, (ids, split) in enumerate(pairs))
        tokens = sum(item.length for item in items)
        work = sum(item.work for item in items)
        rate = self.work_per_s()
        if rate is not None and work / rate > timeout_s:
            self.release(job)
            self._metrics.requests_shed.labels(reason="too_large").inc()
            self._refuse("too_large", work, timeout_s, rate, 0.0, 0.0, 0.0)
        if rate is not None:
            # The admission is checked again on the real count, whichever way it moved from
            # the estimate: more work may miss its own deadline; less may put it ahead of a
            # request it was admitted behind, and push that one past its deadline. Either is
            # refused here, before any device time, rather than answered 504 after it.
            with self._cond:
                others = [Admitted(j.work, j.deadline, j.arrival) for j in self._jobs
                          if j is not job]
                in_flight = list(self._in_flight)
            guess = forecast(
                others, work=work, now=now, deadline=job.deadline,
                in_flight_s=self._in_flight_s(in_flight, now), work_per_s=rate,
                max_queue_time_s=math.inf,
            )
            if guess.verdict == "deadline":
                self.release(job)
                self._metrics.requests_shed.labels(reason="deadline").inc()
                self._refuse("deadline", work, timeout_s, rate, guess.wait_s, guess.finish_s,
                             guess.retry_after_s)
            job.predicted_s = now - job.admitted_at + guess.finish_s
            log.debug("queued request %d: %d windows, %.0f work (estimate %.0f), %.1f s after"
                      " admission; predicted finish %.1f s after admission", job.arrival,
                      len(items), work, job.work, now - job.admitted_at, job.predicted_s)
        with self._cond:
            if self._depth + len(items) > self.max_queue:
                self._jobs.pop(job, None)
                self._metrics.requests_shed.labels(reason="queue_full").inc()
                raise QueueFull(
                    f"the server is at capacity ({self._depth} items queued,"
                    f" max_queue={self.max_queue}); retry after the Retry-After delay",
                    retry_after_s=self._drain_s(),
                )
            if job.abandoned or job not in self._jobs:
                return
            job.items = items
            job.work = work
            self._queued += 1
            job.queued = self._queued
            self._depth += len(items)
            self._queued_tokens += tokens
            self._update_gauges()
            self._cond.notify()

    def release(self, job: Job) -> None:
        """Give up an admitted request's place before its items were queued."""
        with self._cond:
            if job.items is None:
                self._jobs.pop(job, None)

    def submit(self, pairs: Sequence[tuple[TokenIds, int]], timeout_s: float = math.inf) -> Job:
        """Admit and queue in one step (tests, warm-up)."""
        job = self.admit(self.cost.of_lengths([len(ids) for ids, _ in pairs]), timeout_s)
        self.enqueue(job, pairs)
        return job

    # -- worker side -------------------------------------------------------------------------
    def next_batch(self) -> Batch | None:
        """Block until a batch is due; None once the scheduler is closed and drained."""
        with self._forming:
            snapshot = self._await_work()
            if snapshot is None:
                return None
            ready, guard_turn = snapshot
            views = [policy.JobView(job.work, job.arrival, job.deadline) for job in ready]
            rate = self.work_per_s()
            urgent = None if rate is None else policy.at_risk(views, self._clock(), rate)
            line = [ready[i] for i in policy.line_order(views, guard_turn, urgent)]
            window: list[Item] = []
            for job in line:
                assert job.items is not None
                window.extend(islice(job.items, self.lookahead - len(window)))
                if len(window) >= self.lookahead:
                    break
            lengths = [item.length for item in window]
            chosen = [window[i] for i in policy.fill_batch(lengths, self.max_batch_tokens,
                                                           self.pads)]
            with self._cond:
                batch = self._take(chosen, oldest=min(ready, key=lambda job: job.arrival))
                if urgent is None and not guard_turn:  # else not given up for newcomers
                    # after the take: the remaining work admission compares newcomers with
                    batch.lead_work = line[0].work
                if urgent is not None:
                    log.debug("request %d leads: its deadline is at risk", line[0].arrival)
                batch.newest = self._queued
                if self._jobs:
                    self._cond.notify()
            return batch

    def _await_work(self) -> tuple[list[Job], bool] | None:
        """Wait until a batch is due; then the ready jobs (oldest first) and the guard's turn."""
        with self._cond:
            while True:
                self._drop_abandoned()
                self._restore_budget()
                if self._depth > 0:
                    wait = self._fill_wait()
                    if wait <= 0:
                        ready = [job for job in self._jobs if job.items]
                        return ready, policy.guard_due(self._without_oldest)
                    self._cond.wait(wait)
                elif self._closed:
                    return None
                else:
                    self._cond.wait()

    def _take(self, chosen: list[Item], oldest: Job) -> Batch:
        """Take the chosen items out of their requests' FIFOs (under the lock)."""
        by_job: dict[Job, set[Item]] = {}  # Items hash by identity (eq=False)
        total = longest = 0
        work = 0.0
        for item in chosen:
            by_job.setdefault(item.job, set()).add(item)
            n = item.length
            item.job.work -= item.work
            work += item.work
            total += n
            longest = max(longest, n)
        self._queued_tokens -= total
        self._depth -= len(chosen)
        for job, taken in by_job.items():
            items = job.items
            assert items is not None
            kept: list[Item] = []
            while taken:
                item = items.popleft()
                if item in taken:
                    taken.discard(item)
                else:
                    kept.append(item)
            items.extendleft(reversed(kept))
            if not items:
                self._jobs.pop(job, None)
        self._without_oldest = 0 if oldest in by_job else self._without_oldest + 1
        self._update_gauges()
        batch = Batch(chosen, total, len(chosen) * longest if self.pads else total, work)
        self._in_flight.add(batch)
        return batch

    def _drain_s(self) -> float:
        """Seconds until the queued work is done at the measured rate (1 s when unknown);
        called under the lock."""
        rate = self.work_per_s()
        return 1.0 if rate is None else max(1.0, sum(j.work for j in self._jobs) / rate)

    def _in_flight_s(self, batches: list[Batch], now: float) -> float:
        """Predicted seconds until the batches handed to workers are done."""
        rate = self.throughput.work_per_s
        if rate is None or not batches:
            return 0.0
        left = 0.0
        for batch in batches:
            elapsed = now - batch.started if batch.started is not None else 0.0
            left += max(0.0, batch.work / rate - elapsed)
        return left / self.workers

    def _next_batch_s(self, batches: list[Batch]) -> float:
        """How long a request admitted now may wait, beyond the batches in flight, for one
        that a worker starts while it is being tokenized: a full batch at the measured rate
        for each worker that has none prepared (one that has will run that one next)."""
        rate = self.throughput.tokens_per_s
        if rate is None:
            return 0.0
        prepared = sum(1 for batch in batches if batch.started is None)
        idle = max(0, self.workers - prepared)
        return self.max_batch_tokens / rate * idle / self.workers

    def back_off(self, seconds: float = 60.0) -> int:
        """Halve the token budget for a while (after an out-of-memory error); returns it."""
        with self._cond:
            self.max_batch_tokens = max(1, self.max_batch_tokens // 2)
            self._backoff_until = self._clock() + seconds
            self._metrics.batch_token_budget.set(self.max_batch_tokens)
            return self.max_batch_tokens

    def _restore_budget(self) -> None:
        if self._backoff_until and self._clock() >= self._backoff_until:
            self.max_batch_tokens = self.configured_batch_tokens
            self._backoff_until = 0.0
            self._metrics.batch_token_budget.set(self.max_batch_tokens)

    def _fill_wait(self) -> float:
        """Seconds still worth waiting for more items; 0 when a batch should go now."""
        if self._closed or self._queued_tokens >= self.max_batch_tokens:
            return 0.0
        oldest = min(job.items[0].enqueued for job in self._jobs if job.items)
        return oldest + self.max_wait_s - self._clock()

    def _note_abandoned(self) -> None:
        self._abandoned = True  # a plain flag: read under the lock, a late set is seen next time

    def _drop_abandoned(self) -> None:
        if not self._abandoned:
            return
        self._abandoned = False
        dropped = 0
        for job in [job for job in self._jobs if job.abandoned]:
            del self._jobs[job]
            items = job.items or ()
            dropped += len(items)
            self._depth -= len(items)
            self._queued_tokens -= sum(item.length for item in items)
            job.items = deque()
        if dropped:
            self._metrics.items_dropped.inc(dropped)
            self._update_gauges()

    def _update_gauges(self) -> None:
        self._metrics.queue_items.set(self._depth)
        self._metrics.queue_tokens.set(self._queued_tokens)

    # -- completion (called by workers) ---------------------------------------------------
    def complete(self, batch: Batch, logits: np.ndarray, started: float, ended: float) -> None:
        """Hand a batch's logits to the event loop(s) of its requests; measure the device."""
        with self._cond:
            self._in_flight.discard(batch)
        for item in batch.items:
            self._metrics.queue_wait.observe(started - item.enqueued)
        self.throughput.observe(batch.real_tokens, ended - started, batch.work)
        rate = self.tokens_per_s()
        if rate is not None:
            self._metrics.throughput.set(rate)
        groups = _by_loop(batch.items)
        for loop, idx in groups.items():
            items = [batch.items[i] for i in idx]
            part = logits if len(groups) == 1 else logits[idx]
            loop.call_soon_threadsafe(_deliver, items, part, started, ended)

    def fail(self, batch: Batch) -> None:
        """Fail exactly the requests whose items were in this batch."""
        with self._cond:
            self._in_flight.discard(batch)
        for loop, idx in _by_loop(batch.items).items():
            loop.call_soon_threadsafe(_fail, [batch.items[i] for i in idx])

    def overtaken(self, batch: Batch) -> bool:
        """Whether a request queued after `batch` was formed has less remaining work than the
        request that led it has besides this batch: then it goes first. (Queued, not admitted:
        requests admitted together are queued as their tokenizing ends, in any order. Besides
        this batch: admission counts a batch handed to a worker as in flight, so that is the
        order a newcomer was admitted in; a newcomer that came between would overtake a
        request whose deadline admission never held it against.)"""
        with self._cond:
            return any(job.queued > batch.newest and job.items and job.work < batch.lead_work
                       for job in self._jobs)

    def requeue(self, batch: Batch) -> None:
        """Put a handed-out batch that never ran back at the front of its requests' queues
        (its worker died before running it); a worker that is alive will take it."""
        by_job: dict[Job, list[Item]] = {}
        for item in batch.items:
            by_job.setdefault(item.job, []).append(item)
        with self._cond:
            self._in_flight.discard(batch)
            for job, returned in by_job.items():
                if job.items is None:
                    continue
                returned.sort(key=lambda it: it.pos)
                # a new deque, not appendleft: a planner may be reading the old one unlocked
                job.items = deque([*returned, *job.items])
                tokens = sum(item.length for item in returned)
                job.work += sum(item.work for item in returned)
                self._depth += len(returned)
                self._queued_tokens += tokens
                if job not in self._jobs:
                    self._jobs[job] = None
            self._update_gauges()
            self._cond.notify()

    def drop(self, batch: Batch) -> None:
        """A handed-out batch that will not run (all its requests are gone)."""
        with self._cond:
            self._in_flight.discard(batch)
        self._metrics.items_dropped.inc(len(batch.items))

    def close(self) -> None:
        """Stop accepting work; workers drain what is queued, then get None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def depth(self) -> int:
        return self._depth


def _by_loop(items: list[Item]) -> dict[asyncio.AbstractEventLoop, list[int]]:
    """Indices of a batch's items per event loop (one loop in a server, several in tests)."""
    groups: dict[asyncio.AbstractEventLoop, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.job.loop, []).append(i)
    return groups


def _deliver(items: list[Item], logits: np.ndarray, started: float, ended: float) -> None:
    seen: set[int] = set()
    for item, logit in zip(items, logits.tolist(), strict=True):
        job = item.job
        if job.future.done():
            continue
        job.logits[item.pos] = logit
        job.remaining -= 1
        if id(job) not in seen:
            seen.add(id(job))
            job.inference_s += ended - started
            job.queue_s = max(job.queue_s, started - item.enqueued)
        if job.remaining == 0:
            job.future.set_result(job.logits)
            log.debug("request %d done %.1f s after admission (predicted %.1f s)", job.arrival,
                      ended - job.admitted_at, job.predicted_s)


def _fail(items: list[Item]) -> None:
    for item in items:
        job = item.job
        job.abandon()  # its other queued items go too
        if not job.future.done():
            job.future.set_exception(InferenceFailed())
