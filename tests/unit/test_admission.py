"""Admission arithmetic with an injected clock and throughput: who is admitted, who is refused,
and the Retry-After it is told."""

from __future__ import annotations

import asyncio
import math

import pytest

from app.batching.admission import SLACK, Admitted, forecast
from app.batching.cost import MIN_KNEE, Cost, fit
from app.batching.policy import GUARD_EVERY
from app.batching.scheduler import Scheduler
from app.errors import QueueFull, RequestTooLarge
from app.metrics import Metrics, ModelMetrics

RATE = 1000.0  # tokens per second


def predict(admitted: list[Admitted], tokens: int, *, deadline: float = 60.0,
            in_flight_s: float = 0.0, max_queue_time_s: float = 1.0):  # type: ignore[no-untyped-def]
    return forecast(admitted, work=tokens, now=0.0, deadline=deadline,
                    in_flight_s=in_flight_s, work_per_s=RATE, max_queue_time_s=max_queue_time_s)


def test_an_idle_server_admits_and_predicts_the_requests_own_time() -> None:
    f = predict([], 2500)
    assert (f.verdict, f.wait_s, f.finish_s) == ("admit", 0.0, 2.5)


def test_a_request_that_cannot_finish_even_alone_is_too_large() -> None:
    assert predict([], 61_000).verdict == "too_large"
    assert predict([], 5_000, deadline=4.0).verdict == "too_large"


def test_queued_work_past_the_queue_time_limit_is_refused_with_the_time_until_it_fits() -> None:
    ahead = [Admitted(800, 60.0, 1), Admitted(700, 60.0, 2)]  # 1.5 s of smaller work queued
    f = predict(ahead, 800, in_flight_s=2.0)
    assert f.verdict == "queue_time"
    assert f.wait_s == pytest.approx(3.5)
    assert f.retry_after_s == pytest.approx(0.5)  # 1.5 s queued, less the 1 s allowed
    assert predict(ahead, 800, in_flight_s=2.0, max_queue_time_s=1.5).verdict == "admit"


def test_the_batch_in_flight_alone_never_refuses() -> None:
    # a CPU batch can take seconds; no request could start before it ends anyway
    f = predict([Admitted(500, 60.0, 1)], 100, in_flight_s=5.0)
    assert f.verdict == "admit"
    slowdown = GUARD_EVERY / (GUARD_EVERY - 1)
    assert f.wait_s == pytest.approx(5.0 * slowdown)


def test_a_large_request_may_wait_as_long_as_its_own_work_takes() -> None:
    # 6 s of smaller work ahead: too long for a 2 s request, not for a 7 s one, which would
    # otherwise be refused for as long as smaller requests keep arriving
    ahead = [Admitted(1500, 60.0, i) for i in range(4)]
    assert predict(ahead, 2000).verdict == "queue_time"
    assert predict(ahead, 2000).retry_after_s == pytest.approx(4.0)
    assert predict(ahead, 7000).verdict == "admit"
    more = [*ahead, Admitted(1500, 60.0, 5)]
    assert predict(more, 7000).retry_after_s == pytest.approx(0.5)


def test_only_requests_with_less_remaining_work_count_as_ahead() -> None:
    # a newer, smaller request overtakes a big one: only what is in flight is ahead of it,
    # and the guard may give the older one 1/GUARD_EVERY of the device meanwhile
    f = predict([Admitted(50_000, 600.0, 1)], 100, in_flight_s=0.4)
    assert f.verdict == "admit"
    slowdown = GUARD_EVERY / (GUARD_EVERY - 1)
    assert f.wait_s == pytest.approx(0.4 * slowdown)
    assert f.finish_s == pytest.approx(0.5 * slowdown)


def test_finishing_after_the_deadline_is_refused() -> None:
    f = predict([Admitted(900, 60.0, 1)], 5000, deadline=5.5, max_queue_time_s=10.0)
    assert f.verdict == "deadline"
    assert f.finish_s == pytest.approx(5.9)
    assert f.retry_after_s == pytest.approx(SLACK * 5.9 - 5.5)  # predictions get slack


def test_no_admitted_request_is_pushed_past_its_deadline() -> None:
    big = Admitted(10_000, 13.0, 1)  # 10 s of work: 12.5 s with the prediction's slack
    assert predict([big], 400, max_queue_time_s=10.0).verdict == "admit"
    f = predict([big], 600, max_queue_time_s=10.0)
    assert f.verdict == "deadline"
    assert f.retry_after_s == pytest.approx(10.0)  # once the big one is done
    # one that would make its deadline as predicted, though not with the slack, is still
    # protected: newcomers pushing it further would turn a likely miss into a certain one
    tight = Admitted(10_000, 12.0, 1)
    assert predict([tight], 600, max_queue_time_s=10.0).verdict == "deadline"
    # one that misses its deadline even as predicted (10 s of work, 9.5 s left) is given up on
    late = Admitted(10_000, 9.5, 1)
    assert predict([late], 600, max_queue_time_s=10.0).verdict == "admit"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def scheduler(clock: Clock, metrics: ModelMetrics, max_queue_time_s: float = 1.0) -> Scheduler:
    s = Scheduler(max_batch_tokens=1000, max_wait_s=0.0, max_queue=10_000, pads=False,
                  metrics=metrics, max_queue_time_s=max_queue_time_s, clock=clock)
    s.throughput.observe(int(RATE), 1.0)  # as the warm-up seeds it
    return s


async def test_the_scheduler_refuses_at_once_and_keeps_no_trace() -> None:
    clock, metrics = Clock(), Metrics().for_model("test")
    s = scheduler(clock, metrics)
    for _ in range(3):  # 1.5 s of work, nothing ahead of any of it
        job = s.admit(500, timeout_s=60)
        s.enqueue(job, [([1] * 500, 1)])
    with pytest.raises(QueueFull) as refused:
        s.admit(600, timeout_s=60)
    assert refused.value.retry_after_s == pytest.approx(0.5)
    assert "queue-time limit" in refused.value.detail
    assert metrics.requests_shed.labels(reason="queue_time")._value.get() == 1
    with pytest.raises(RequestTooLarge, match="tokens/s"):
        s.admit(150_000, timeout_s=60)  # 2.5x its deadline, even as an estimate
    assert metrics.requests_shed.labels(reason="too_large")._value.get() == 1
    # a smaller request than those waiting goes ahead of them: admitted
    s.admit(400, timeout_s=60)
    assert s.depth == 3


async def test_in_flight_work_counts_down_with_the_clock() -> None:
    clock, metrics = Clock(), Metrics().for_model("test")
    s = scheduler(clock, metrics)
    s.submit([([1] * 1000, 1), ([1] * 500, 1)])
    batch = await asyncio.to_thread(s.next_batch)
    assert batch is not None and batch.real_tokens == 1000
    batch.started = clock.now  # 1 s in a forward pass; 0.5 s more queued
    # 1 + 0.5 + 0.6 s of own work = 2.1 s, which with the slack misses a 2.5 s deadline
    with pytest.raises(QueueFull) as refused:
        s.admit(600, timeout_s=2.5)
    assert refused.value.retry_after_s == pytest.approx(SLACK * 2.1 - 2.5)
    clock.now += 0.3  # 0.7 s of the batch left: 1.8 s, within the deadline with the slack
    s.admit(600, timeout_s=2.5)


async def test_a_released_reservation_no_longer_counts() -> None:
    clock, metrics = Clock(), Metrics().for_model("test")
    s = scheduler(clock, metrics)
    s.admit(700, timeout_s=60)
    held = s.admit(700, timeout_s=60)  # admitted, still being tokenized
    with pytest.raises(QueueFull):
        s.admit(800, timeout_s=60)
    s.release(held)  # its tokenization failed, or the client left
    s.admit(800, timeout_s=60)


async def test_the_real_token_count_replaces_the_estimate() -> None:
    clock, metrics = Clock(), Metrics().for_model("test")
    s = scheduler(clock, metrics, max_queue_time_s=math.inf)
    job = s.admit(500, timeout_s=60)  # estimated from characters
    with pytest.raises(RequestTooLarge, match=r"about 70\.0 s of compute"):
        s.enqueue(job, [([1] * 1000, 1)] * 70, timeout_s=60)  # 70 s of work: never fits
    assert s.depth == 0


async def test_only_the_real_token_count_decides_413_near_the_line() -> None:
    clock, metrics = Clock(), Metrics().for_model("test")
    s = scheduler(clock, metrics, max_queue_time_s=math.inf)
    # estimated at 1.5x its 10 s deadline: the estimate may be off, so it is tokenized first
    job = s.admit(15_000, timeout_s=10)
    s.enqueue(job, [([1] * 1000, 1)] * 8, timeout_s=10)  # really 8 s of work: served
    assert s.depth == 8
    with pytest.raises(RequestTooLarge):  # estimated at 3x its deadline: refused at once
        s.admit(30_000, timeout_s=10)


async def test_a_request_larger_than_estimated_is_checked_again_before_any_device_time() -> None:
    clock, metrics = Clock(), Metrics().for_model("test")
    s = scheduler(clock, metrics)
    job = s.admit(500, timeout_s=5.0)  # estimated 0.5 s of work: admitted
    with pytest.raises(QueueFull) as refused:
        s.enqueue(job, [([1] * 1100, 1)] * 4, timeout_s=5.0)  # really 4.4 s: 5.5 s with slack
    assert "deadline" in refused.value.detail
    assert metrics.requests_shed.labels(reason="deadline")._value.get() == 1
    assert s.depth == 0 and not s._jobs  # nothing queued, no reservation left
    fits = s.admit(500, timeout_s=5.0)
    s.enqueue(fits, [([1] * 1000, 1)] * 3, timeout_s=5.0)  # 3 s, 3.75 s with the slack: fine
    assert s.depth == 3


def test_the_cost_fit_recovers_how_a_forward_pass_grows_with_length() -> None:
    """seconds = a·tokens + b·Σ L²: two timed mixes give a and b back, and the knee a/b."""
    a, b = 1e-3, 2e-6  # the knee: 500 tokens
    short, long = [100] * 40, [1000] * 4

    def seconds(lengths: list[int]) -> float:
        return a * sum(lengths) + b * sum(n * n for n in lengths)

    cost = fit([(short, seconds(short)), (long, seconds(long))])
    assert cost.knee == pytest.approx(500)
    assert cost.of(1000) == pytest.approx(3000) and cost.per_token(1000) == pytest.approx(3)
    # one work rate now predicts both mixes: seconds / token-equivalents is the same
    assert seconds(short) / cost.of_lengths(short) == pytest.approx(
        seconds(long) / cost.of_lengths(long))
    # no length effect, or noise that makes it negative: tokens only
    assert fit([(short, a * 4000), (long, a * 4000)]).knee == math.inf
    assert fit([(short, seconds(long)), (long, seconds(short))]).knee == math.inf
    assert fit([(short, 1.0), (short, 1.0)]).knee == math.inf
    # a knee no model has (attention as dear as the linears at 20 tokens) is noise: held
    def noisy(lengths: list[int]) -> float:  # a knee of 10 tokens
        return a * sum(lengths) + a / 10 * sum(n * n for n in lengths)

    assert fit([(short, noisy(short)), (long, noisy(long))]).knee == MIN_KNEE


async def test_admission_weighs_long_windows_by_their_cost() -> None:
    """The same tokens in long windows take longer: measured on short windows, a rate in
    plain tokens would admit a request of long ones that then misses its deadline."""
    clock, metrics = Clock(), Metrics().for_model("test")
    s = Scheduler(max_batch_tokens=1000, max_wait_s=0.0, max_queue=10_000, pads=False,
                  metrics=metrics, clock=clock, cost=Cost(knee=1000))
    s.throughput.observe(1000, 1.0, s.cost.of_lengths([100] * 10))  # short windows: 1100/s
    short = [([1] * 100, 1)] * 60  # 6000 tokens, 6600 token-equivalents: 6 s
    long = [([1] * 1000, 1)] * 6  # 6000 tokens, 12000 token-equivalents: ~10.9 s
    job = s.admit(s.cost.of_lengths([100] * 60), timeout_s=8)
    s.enqueue(job, short, timeout_s=8)
    assert job.work == pytest.approx(6600)
    s2 = Scheduler(max_batch_tokens=1000, max_wait_s=0.0, max_queue=10_000, pads=False,
                   metrics=metrics, clock=clock, cost=Cost(knee=1000))
    s2.throughput.observe(1000, 1.0, s2.cost.of_lengths([100] * 10))
    with pytest.raises(RequestTooLarge, match=r"about 10\.9 s of compute"):
        s2.enqueue(s2.admit(6000, timeout_s=8), long, timeout_s=8)


def test_a_batch_that_may_start_while_it_is_tokenized_counts_only_with_someone_behind() -> None:
    # a bigger request admitted before it may have a batch started before this one is queued
    f = forecast([Admitted(50_000, 600.0, 1)], work=100, now=0.0, deadline=60.0,
                 in_flight_s=0.0, work_per_s=RATE, max_queue_time_s=1.0, next_batch_s=2.0)
    slowdown = GUARD_EVERY / (GUARD_EVERY - 1)
    assert f.wait_s == pytest.approx(2.0 * slowdown)
    # only smaller work waiting: it is ahead in line anyway, and no other batch can start
    f = forecast([Admitted(50, 600.0, 1)], work=100, now=0.0, deadline=60.0,
                 in_flight_s=0.0, work_per_s=RATE, max_queue_time_s=1.0, next_batch_s=2.0)
    assert f.wait_s == pytest.approx(0.05)


async def test_a_batch_prepared_for_the_worker_is_the_only_one_that_can_start_first() -> None:
    clock, metrics = Clock(), Metrics().for_model("test")
    s = scheduler(clock, metrics, max_queue_time_s=math.inf)
    s.submit([([1] * 1000, 1)] * 20)  # 20 s of work queued, nothing prepared yet

    def predicted() -> float:
        job = s.admit(100, timeout_s=60)
        s.release(job)
        return job.predicted_s

    assert predicted() == pytest.approx((1.0 + 0.1) * 4 / 3)  # a full batch may start first
    prepared = await asyncio.to_thread(s.next_batch)  # the worker's next batch, packed
    assert prepared is not None and prepared.started is None
    # it is in flight (1 s): no other batch can start before the newcomer is queued
    assert predicted() == pytest.approx((1.0 + 0.1) * 4 / 3)
    prepared.started = clock.now  # now it runs: the next one may be packed from the others
    assert predicted() == pytest.approx((2.0 + 0.1) * 4 / 3)


async def test_a_request_smaller_than_estimated_may_not_push_one_it_overtakes_past_its_deadline(
) -> None:
    """Admitted behind an older request on its estimate, it turns out smaller once tokenized
    and would go ahead of it: checked again, and refused if that one would then miss."""
    clock, metrics = Clock(), Metrics().for_model("test")
    s = scheduler(clock, metrics, max_queue_time_s=math.inf)
    older = s.admit(30_000, timeout_s=40)
    s.enqueue(older, [([1] * 1000, 1)] * 30, timeout_s=40)  # 30 s of work, 37.5 s with slack
    newer = s.admit(30_500, timeout_s=80)  # estimated just above it: behind it in line
    assert newer.predicted_s == pytest.approx(60.5)
    with pytest.raises(QueueFull) as refused:  # really 29.5 s: it would go first
        s.enqueue(newer, [([1] * 500, 1)] * 59, timeout_s=80)
    assert "push an earlier request past its own" in refused.value.detail
    assert refused.value.retry_after_s == pytest.approx(30.0)  # once the older one is done
    assert metrics.requests_shed.labels(reason="deadline")._value.get() == 1
    assert s.depth == 30 and list(s._jobs) == [older]


def test_a_request_behind_the_newcomer_is_protected_with_the_guards_share_counted() -> None:
    # while an older, larger request waits behind it, the guard may take a quarter of the
    # device for that one: the 10 s of work still to do before b is done may take 13.3 s
    b = Admitted(10_000, 16.0, 2)
    oldest = Admitted(20_000, 600.0, 1)
    # without the guard's share, 1.25 x 10.4 s = 13 s would fit b's 16 s
    f = predict([b, oldest], 400, max_queue_time_s=10.0)
    assert f.verdict == "deadline"
    assert f.retry_after_s == pytest.approx(10.0 * GUARD_EVERY / (GUARD_EVERY - 1))
    # with nobody behind b, nothing can take the device from it: the newcomer fits
    assert predict([b], 400, max_queue_time_s=10.0).verdict == "admit"
