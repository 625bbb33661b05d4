"""One bounded queue of scoring items shared by all requests, and the rule that forms batches.

Requests are submitted from the event loop; device worker threads pull batches. Each request's
items wait in their own FIFO. A batch is built around a head item taken from the request that
has had the fewest tokens scored so far (so a small request is not stuck behind a 500,000-token
one), except that every OLDEST_EVERY-th batch serves the oldest request (so a large one always
progresses). Around the head go the look-ahead items closest to it in length, as many as the
token budget allows. Once a request has had BULK_BUDGETS budgets scored, batches it leads get
half the budget: a request arriving behind it then waits at most half a full batch, which costs
the bulk request little (half a budget still fills the device). Results go back to the event
loop with one `call_soon_threadsafe` per batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from app.errors import InferenceFailed, QueueFull, RequestTooLarge
from app.metrics import Metrics


@dataclass(eq=False)
class Job:
    """The scoring items of one request, and the future that resolves with all their logits."""

    size: int
    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop
    logits: np.ndarray = field(init=False)
    remaining: int = field(init=False)
    queue_s: float = 0.0
    inference_s: float = 0.0
    abandoned: bool = False
    on_abandon: Callable[[], None] | None = None
    dispatched_tokens: int = 0
    """Tokens of this request already handed to a forward pass (its attained service)."""

    def __post_init__(self) -> None:
        self.logits = np.empty(self.size, dtype=np.float32)
        self.remaining = self.size

    def abandon(self) -> None:
        """Mark the request as gone: its waiting items are dropped before any forward pass."""
        self.abandoned = True
        if self.on_abandon is not None:
            self.on_abandon()


@dataclass(eq=False, slots=True)
class Item:
    ids: Sequence[int]
    split: int
    job: Job
    pos: int
    enqueued: float

    @property
    def length(self) -> int:
        return len(self.ids)


OLDEST_EVERY = 4
BULK_BUDGETS = 4


@dataclass(slots=True)
class Batch:
    items: list[Item]
    real_tokens: int
    cost_tokens: int


class Scheduler:
    def __init__(
        self,
        *,
        max_batch_tokens: int,
        max_wait_s: float,
        max_queue: int,
        pads: bool,
        metrics: Metrics,
        lookahead: int = 1024,
        workers: int = 1,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.configured_batch_tokens = max_batch_tokens
        self.max_batch_tokens = max_batch_tokens
        self._backoff_until = 0.0
        self.workers = workers
        self._drain_rate = 0.0  # items per second per worker, moving average
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.pads = pads
        self.lookahead = lookahead
        self._metrics = metrics
        self._clock = clock
        self._jobs: OrderedDict[Job, deque[Item]] = OrderedDict()  # in arrival order
        self._depth = 0
        self._queued_tokens = 0
        self._batches_formed = 0
        self._abandoned = False  # set when some job was abandoned: _drop_abandoned has work
        self._cond = threading.Condition()
        self._closed = False

    # -- event-loop side -------------------------------------------------------------------
    def submit(self, pairs: Sequence[tuple[Sequence[int], int]]) -> Job:
        """Queue one request's (ids, split) pairs; the returned job's future gets their logits."""
        loop = asyncio.get_running_loop()
        job = Job(len(pairs), loop.create_future(), loop, on_abandon=self._note_abandoned)
        if not pairs:
            job.future.set_result(job.logits)
            return job
        if len(pairs) > self.max_queue:
            raise RequestTooLarge(
                f"this request needs {len(pairs)} scoring windows, more than the queue holds"
                f" (max_queue={self.max_queue}); send fewer or shorter documents"
            )
        now = self._clock()
        items = [Item(ids, split, job, pos, now) for pos, (ids, split) in enumerate(pairs)]
        tokens = sum(len(ids) for ids, _ in pairs)
        with self._cond:
            if self._depth + len(items) > self.max_queue:
                raise QueueFull(
                    f"the server is at capacity ({self._depth} items queued,"
                    f" max_queue={self.max_queue}); retry after the Retry-After delay",
                    retry_after_s=self.retry_after_s(),
                )
            self._jobs[job] = deque(items)
            self._depth += len(items)
            self._queued_tokens += tokens
            self._update_gauges()
            self._cond.notify()
        return job

    # -- worker side -------------------------------------------------------------------------
    def next_batch(self) -> Batch | None:
        """Block until a batch is due; None once the scheduler is closed and drained."""
        with self._cond:
            while True:
                self._drop_abandoned()
                self._restore_budget()
                if self._jobs:
                    wait = self._fill_wait()
                    if wait <= 0:
                        batch = self._form_batch()
                        self._update_gauges()
                        if self._jobs:
                            self._cond.notify()
                        return batch
                    self._cond.wait(wait)
                elif self._closed:
                    return None
                else:
                    self._cond.wait()

    def retry_after_s(self) -> float:
        """Seconds until the queue has drained at the recent rate (1 s when unknown)."""
        rate = self._drain_rate * self.workers
        if rate <= 0:
            return 1.0
        return min(60.0, max(1.0, self._depth / rate))

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
        oldest = next(iter(self._jobs.values()))[0]
        return oldest.enqueued + self.max_wait_s - self._clock()

    def _note_abandoned(self) -> None:
        self._abandoned = True  # a plain flag: read under the lock, a late set is seen next time

    def _drop_abandoned(self) -> None:
        if not self._abandoned:
            return
        self._abandoned = False
        gone = [job for job in self._jobs if job.abandoned]
        dropped = 0
        for job in gone:
            items = self._jobs.pop(job)
            dropped += len(items)
            self._depth -= len(items)
            self._queued_tokens -= sum(item.length for item in items)
        if dropped:
            self._metrics.items_dropped.inc(dropped)
            self._update_gauges()

    def _cost(self, count: int, longest: int, total: int) -> int:
        return count * longest if self.pads else total

    def _head_job(self) -> tuple[Job, bool]:
        """The job a batch is built around, and whether it is the oldest job's turn."""
        self._batches_formed += 1
        if self._batches_formed % OLDEST_EVERY == 0:
            return next(iter(self._jobs)), True
        return min(self._jobs, key=lambda job: job.dispatched_tokens), False  # ties: the oldest

    def _form_batch(self) -> Batch:
        head_job, oldest_turn = self._head_job()
        budget = self.max_batch_tokens
        if head_job.dispatched_tokens >= BULK_BUDGETS * budget:
            budget = max(1, budget // 2)
        # A batch led by a lightly served request is filled only from requests within one
        # budget of it, so a small request never rides with a huge document's windows.
        ceiling = head_job.dispatched_tokens + self.max_batch_tokens
        others = sorted(
            (job for job in self._jobs
             if job is not head_job and (job.dispatched_tokens <= ceiling or oldest_turn)),
            key=lambda j: j.dispatched_tokens,
        )
        window: list[Item] = []
        for job in (head_job, *others):
            window.extend(islice(self._jobs[job], self.lookahead - len(window)))
            if len(window) >= self.lookahead:
                break

        head = window[0]
        order = sorted(range(len(window)), key=lambda i: window[i].length)
        lengths = [window[i].length for i in order]
        centre = order.index(0)
        lo = hi = centre
        total = longest = head.length
        # Grow around the head in sorted order, taking the neighbour closest in length.
        while True:
            left = order[lo - 1] if lo > 0 else None
            right = order[hi + 1] if hi + 1 < len(order) else None
            if left is None and right is None:
                break
            take_left = right is None or (
                left is not None and head.length - lengths[lo - 1] <= lengths[hi + 1] - head.length
            )
            cand = window[left if take_left else right]  # type: ignore[index]
            new_longest = max(longest, cand.length)
            new_total = total + cand.length
            if self._cost(hi - lo + 2, new_longest, new_total) > budget:
                break
            total, longest = new_total, new_longest
            if take_left:
                lo -= 1
            else:
                hi += 1

        batch_items = [window[i] for i in order[lo : hi + 1]]
        self._remove(batch_items)
        return Batch(batch_items, total, self._cost(len(batch_items), longest, total))

    def _remove(self, chosen: list[Item]) -> None:
        """Take the chosen items out of their requests' FIFOs (they come from its front)."""
        by_job: dict[Job, set[Item]] = {}  # Items hash by identity (eq=False)
        for item in chosen:
            by_job.setdefault(item.job, set()).add(item)
            item.job.dispatched_tokens += item.length
            self._queued_tokens -= item.length
        self._depth -= len(chosen)
        for job, ids in by_job.items():
            items = self._jobs[job]
            kept: list[Item] = []
            while ids:
                item = items.popleft()
                if item in ids:
                    ids.discard(item)
                else:
                    kept.append(item)
            items.extendleft(reversed(kept))
            if not items:
                del self._jobs[job]

    def _update_gauges(self) -> None:
        self._metrics.queue_items.set(self._depth)
        self._metrics.queue_tokens.set(self._queued_tokens)

    # -- completion (called by workers) ---------------------------------------------------
    def complete(self, batch: Batch, logits: np.ndarray, started: float, ended: float) -> None:
        """Hand a batch's logits to the event loop(s) of its requests."""
        for item in batch.items:
            self._metrics.queue_wait.observe(started - item.enqueued)
        if ended > started:
            rate = len(batch.items) / (ended - started)
            previous = self._drain_rate
            self._drain_rate = rate if previous == 0 else 0.8 * previous + 0.2 * rate
        groups = _by_loop(batch.items)
        for loop, idx in groups.items():
            items = [batch.items[i] for i in idx]
            part = logits if len(groups) == 1 else logits[idx]
            loop.call_soon_threadsafe(_deliver, items, part, started, ended)

    def fail(self, batch: Batch) -> None:
        """Fail exactly the requests whose items were in this batch."""
        for loop, idx in _by_loop(batch.items).items():
            loop.call_soon_threadsafe(_fail, [batch.items[i] for i in idx])

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


def _fail(items: list[Item]) -> None:
    for item in items:
        job = item.job
        job.abandon()  # its other queued items go too
        if not job.future.done():
            job.future.set_exception(InferenceFailed())
