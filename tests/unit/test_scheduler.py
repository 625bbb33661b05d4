"""Batch forming, waiting, dropping and failure isolation, with pure-Python fake scorers."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from app.batching import policy
from app.batching.policy import GUARD_EVERY
from app.batching.scheduler import Scheduler
from app.batching.worker import Worker
from app.errors import InferenceFailed, QueueFull, RequestTooLarge
from app.metrics import Metrics
from tests.fakes import SumScorer


def make(**kw: object) -> Scheduler:
    args: dict[str, object] = dict(
        max_batch_tokens=1000, max_wait_s=0.0, max_queue=1000, pads=True,
        metrics=Metrics().for_model("test"),
    )
    args.update(kw)
    return Scheduler(**args)  # type: ignore[arg-type]


def pair(length: int, token: int = 1) -> tuple[list[int], int]:
    return [token] * length, 1


async def next_lengths(s: Scheduler) -> list[int]:
    batch = await asyncio.to_thread(s.next_batch)
    assert batch is not None
    return [item.length for item in batch.items]


async def test_padded_token_budget() -> None:
    s = make(max_batch_tokens=35)
    s.submit([pair(10)] * 10)
    assert await next_lengths(s) == [10, 10, 10]
    assert s.depth == 7


async def test_packed_token_budget_counts_real_tokens() -> None:
    s = make(max_batch_tokens=35, pads=False)
    s.submit([pair(10), pair(20), pair(4), pair(30)])
    # head 10, then its closest neighbours 4 and 20: 34 tokens packed
    assert sorted(await next_lengths(s)) == [4, 10, 20]
    assert await next_lengths(s) == [30]


async def test_similar_lengths_share_a_batch_within_the_lookahead() -> None:
    s = make(max_batch_tokens=320)
    s.submit([pair(n) for n in (5, 100, 6, 101, 7, 102)])
    assert await next_lengths(s) == [5, 6, 7]
    assert await next_lengths(s) == [100, 101, 102]


async def test_the_least_remaining_work_leads_and_an_oversized_head_goes_alone() -> None:
    s = make(max_batch_tokens=50, lookahead=4)
    s.submit([pair(60)])  # longer than the whole budget
    s.submit([pair(3)] * 5)  # arrives later, but 15 tokens of work against 60
    assert await next_lengths(s) == [3] * 4  # a batch never reaches past the look-ahead
    assert await next_lengths(s) == [3]
    assert await next_lengths(s) == [60]  # the head is always taken, alone if need be


async def test_waits_up_to_max_wait_for_a_short_queue() -> None:
    s = make(max_batch_tokens=100, max_wait_s=0.3)
    s.submit([pair(10)])
    t0 = time.perf_counter()
    assert await next_lengths(s) == [10]
    assert time.perf_counter() - t0 >= 0.25


async def test_a_full_budget_does_not_wait() -> None:
    s = make(max_batch_tokens=100, max_wait_s=5.0)
    s.submit([pair(50)] * 3)
    t0 = time.perf_counter()
    assert await next_lengths(s) == [50, 50]
    assert time.perf_counter() - t0 < 1.0


async def test_items_that_arrive_while_waiting_join_the_batch() -> None:
    s = make(max_batch_tokens=100, max_wait_s=0.5)
    s.submit([pair(10)])
    pending = asyncio.ensure_future(next_lengths(s))
    await asyncio.sleep(0.1)
    s.submit([pair(11)])
    assert sorted(await pending) == [10, 11]


async def test_abandoned_items_are_skipped_and_counted() -> None:
    metrics = Metrics().for_model("test")
    s = make(metrics=metrics)
    gone = s.submit([pair(5, 1)] * 3)
    kept = s.submit([pair(6, 2)] * 2)
    gone.abandon()
    batch = await asyncio.to_thread(s.next_batch)
    assert batch is not None
    assert {item.job for item in batch.items} == {kept}
    assert metrics.items_dropped._value.get() == 3
    assert s.depth == 0


async def test_queue_full_is_429_and_oversized_request_is_413() -> None:
    s = make(max_queue=5)
    s.submit([pair(1)] * 3)
    with pytest.raises(QueueFull) as full:
        s.submit([pair(1)] * 3)
    assert full.value.retry_after_s is not None
    with pytest.raises(RequestTooLarge, match="max_queue=5"):
        s.submit([pair(1)] * 6)
    s.submit([pair(1)] * 2)  # what fits is still taken
    assert s.depth == 5


async def test_empty_request_resolves_at_once() -> None:
    job = make().submit([])
    assert (await job.future).shape == (0,)


async def test_close_drains_then_stops() -> None:
    s = make()
    s.submit([pair(3)])
    s.close()
    assert await next_lengths(s) == [3]
    assert await asyncio.to_thread(s.next_batch) is None


async def test_worker_reassembles_each_request_in_order() -> None:
    s = make(max_batch_tokens=12, max_wait_s=0.01)
    scorer = SumScorer()
    worker = Worker(s, scorer, Metrics().for_model("test"))
    worker.start()
    jobs = [s.submit([pair(k % 3 + 1, token=100 * j + k) for k in range(7)]) for j in range(5)]
    results = await asyncio.gather(*(job.future for job in jobs))
    s.close()
    worker.join(5)
    for j, logits in enumerate(results):
        np.testing.assert_allclose(logits, [(100 * j + k) / 100 for k in range(7)], rtol=1e-6)
    assert len(scorer.batches) > 1
    assert any(len({ids[0] // 100 for ids in b}) > 1 for b in scorer.batches), "no mixing"


class FailOn(SumScorer):
    def __init__(self, bad_token: int) -> None:
        super().__init__()
        self.bad_token = bad_token

    def run(self, ids):  # type: ignore[no-untyped-def]
        if any(x[0] == self.bad_token for x in ids):
            raise RuntimeError("boom")
        return super().run(ids)


async def test_a_failed_batch_fails_only_its_requests() -> None:
    s = make(max_batch_tokens=20, max_wait_s=0.0)
    metrics = Metrics().for_model("test")
    worker = Worker(s, FailOn(bad_token=7), metrics)
    ok_before = s.submit([pair(20, token=1)])  # fills a batch alone
    bad = s.submit([pair(10, token=7), pair(10, token=7)])  # exactly one batch
    ok_after = s.submit([pair(20, token=2)])
    worker.start()
    assert (await ok_before.future).tolist() == pytest.approx([0.01])
    with pytest.raises(InferenceFailed):
        await bad.future
    assert (await ok_after.future).tolist() == pytest.approx([0.02])
    s.close()
    worker.join(5)
    assert metrics.failures.labels(reason="batch_error")._value.get() == 1


async def test_a_small_request_is_not_stuck_behind_a_huge_one() -> None:
    s = make(max_batch_tokens=30)
    big = s.submit([pair(10, token=1)] * 100)
    await asyncio.to_thread(s.next_batch)  # the big one is being served
    small = s.submit([pair(10, token=2)] * 2)
    batch = await asyncio.to_thread(s.next_batch)
    assert batch is not None
    # the small request leads the very next batch; the rest of the budget is filled from
    # the request next in line
    assert [item.job for item in batch.items] == [small, small, big]


async def test_equal_requests_finish_one_after_another() -> None:
    s = make(max_batch_tokens=20, pads=False)
    jobs = [s.submit([pair(10, token=j + 1)] * 4) for j in range(3)]
    order = []
    for _ in range(6):
        batch = await asyncio.to_thread(s.next_batch)
        assert batch is not None
        order.append({jobs.index(item.job) for item in batch.items})
    # not processor sharing (every request done only at the end): each one in turn
    assert order == [{0}, {0}, {1}, {1}, {2}, {2}]


async def test_the_oldest_request_still_progresses_under_a_stream_of_small_ones() -> None:
    s = make(max_batch_tokens=10)
    big = s.submit([pair(10, token=1)] * 50)
    big_batches = 0
    for i in range(40):  # a new small request arrives before every batch
        s.submit([pair(10, token=100 + i)])
        batch = await asyncio.to_thread(s.next_batch)
        assert batch is not None
        big_batches += any(item.job is big for item in batch.items)
    assert big_batches == 40 // GUARD_EVERY  # the starvation guard's share, exactly


async def test_the_lock_is_not_held_while_a_batch_is_planned() -> None:
    s = make(max_batch_tokens=10**6, pads=False, max_queue=10**6)
    for j in range(200):
        s.submit([pair(5, token=j)] * 5)
    planned = threading.Event()
    submitted = threading.Event()
    real_line_order = policy.line_order

    def slow_line_order(*args: object, **kw: object) -> list[int]:
        planned.set()
        assert submitted.wait(5), "submit waited for batch forming"
        return real_line_order(*args, **kw)  # type: ignore[arg-type]

    policy.line_order = slow_line_order  # type: ignore[assignment]
    try:
        forming = asyncio.ensure_future(asyncio.to_thread(s.next_batch))
        assert await asyncio.to_thread(planned.wait, 5)
        s.submit([pair(5, token=999)])  # while the worker is planning
        submitted.set()
        assert (await forming) is not None
    finally:
        policy.line_order = real_line_order  # type: ignore[assignment]


async def test_a_prepared_batch_overtaken_by_a_smaller_request_goes_back_in_order() -> None:
    s = make(max_batch_tokens=20, pads=False)
    big = s.submit([pair(10, token=k) for k in range(1, 9)])
    prepared = await asyncio.to_thread(s.next_batch)  # packed ahead, not yet run
    assert prepared is not None and not s.overtaken(prepared)
    small = s.submit([pair(10, token=50)])
    assert s.overtaken(prepared)
    s.requeue(prepared)
    batch = await asyncio.to_thread(s.next_batch)
    assert batch is not None
    assert [(item.job, item.ids[0]) for item in batch.items] == [(small, 50), (big, 1)]
    assert [item.ids[0] for item in (await asyncio.to_thread(s.next_batch)).items] == [2, 3]


async def test_a_request_admitted_before_a_batch_was_formed_but_queued_after_overtakes_it() -> None:
    """Requests admitted together are queued as their tokenizing ends, in any order: a small
    one queued after the worker's next batch was formed from a big one still goes first."""
    s = make(max_batch_tokens=20, pads=False)
    big_job = s.admit(80, timeout_s=60)
    small_job = s.admit(10, timeout_s=60)  # admitted second, still being tokenized
    s.enqueue(big_job, [pair(10, token=k) for k in range(1, 9)])
    prepared = await asyncio.to_thread(s.next_batch)
    assert prepared is not None and not s.overtaken(prepared)
    s.enqueue(small_job, [pair(10, token=50)])
    assert s.overtaken(prepared)


async def test_a_request_whose_deadline_is_at_risk_leads_the_next_batch() -> None:
    """Shortest remaining work first, unless a request would otherwise miss its deadline:
    the safety net for a prediction that ran late (here: the device slowed down)."""
    now = [0.0]
    s = make(max_batch_tokens=20, pads=False, clock=lambda: now[0])
    s.throughput.observe(20, 1.0)  # 20 tokens a second, as measured so far
    big = s.submit([pair(10, token=1)] * 4, timeout_s=7.5)  # 2 s of work
    s.submit([pair(10, token=2)] * 2, timeout_s=60.0)  # 1 s: goes first
    s.submit([pair(10, token=3)] * 3, timeout_s=60.0)  # 1.5 s: next, ahead of the big one
    batch = await asyncio.to_thread(s.next_batch)
    assert batch is not None and {item.ids[0] for item in batch.items} == {2}
    s.complete(batch, np.zeros(2, dtype=np.float32), 0.0, 3.0)  # 3x as long as predicted
    now[0] = 3.0  # 4.5 s left for the big one's ~4.1 s at the new rate: at risk
    batch = await asyncio.to_thread(s.next_batch)
    assert batch is not None and batch.items[0].job is big
    assert not s.overtaken(batch)  # not given up for a smaller newcomer either


async def test_a_newcomer_admitted_behind_the_lead_does_not_overtake_its_prepared_batch() -> None:
    """Admission counts a batch handed to a worker as in flight: a newcomer with more work than
    the lead request has left besides that batch was admitted behind it, and its deadline
    checks assumed so. It does not take the lead from it by the batch's few seconds."""
    s = make(max_batch_tokens=20, pads=False)
    s.submit([pair(10, token=k) for k in range(1, 9)])  # 80 tokens
    prepared = await asyncio.to_thread(s.next_batch)  # 20 of them: 60 left besides it
    assert prepared is not None
    s.submit([pair(10, token=50)] * 7)  # 70: behind the 60 left, though under 80
    assert not s.overtaken(prepared)
    s.submit([pair(10, token=60)] * 5)  # 50: ahead of the 60 left
    assert s.overtaken(prepared)
