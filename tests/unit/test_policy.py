"""The scheduling policy's order and batch filling, as pure functions (no threads, no clocks)."""

from __future__ import annotations

from app.batching.policy import (
    GUARD_EVERY,
    URGENCY,
    JobView,
    at_risk,
    fill_batch,
    guard_due,
    line_order,
)


def test_least_remaining_work_first_ties_to_the_older() -> None:
    jobs = [JobView(500, 1), JobView(40, 2), JobView(40, 3), JobView(7, 4)]
    assert line_order(jobs) == [3, 1, 2, 0]


def test_the_guards_turn_puts_the_oldest_in_front() -> None:
    jobs = [JobView(10, 5), JobView(500_000, 1), JobView(40, 2)]
    assert line_order(jobs, guard_turn=True) == [1, 0, 2]
    assert [guard_due(n) for n in range(GUARD_EVERY + 1)] == [False] * (GUARD_EVERY - 1) + [
        True, True
    ]


def test_a_request_whose_deadline_is_at_risk_leads_even_on_the_guards_turn() -> None:
    rate = 1000.0  # token-equivalents per second
    small, oldest = JobView(500, 3, deadline=60.0), JobView(900_000, 1, deadline=5000.0)
    # 20 s of work left: at risk once under URGENCY x 20 s remain before its deadline
    late = JobView(20_000, 2, deadline=20.0 * URGENCY - 0.5)
    jobs = [small, late, oldest]
    assert at_risk(jobs, now=0.0, work_per_s=rate) == 1
    assert line_order(jobs, guard_turn=True, urgent=1) == [1, 0, 2]
    # with time enough, shortest remaining work first again
    assert at_risk([small, JobView(20_000, 2, deadline=31.0), oldest], 0.0, rate) is None
    # one that cannot make it even alone is not put first: it would still be late
    assert at_risk([small, JobView(20_000, 2, deadline=19.0), oldest], 0.0, rate) is None
    # several at risk: the earliest deadline first
    two = [JobView(20_000, 1, deadline=25.0), JobView(10_000, 2, deadline=12.0)]
    assert at_risk(two, 0.0, rate) == 1


def test_packed_batches_fill_in_line_order_past_an_item_that_does_not_fit() -> None:
    # head 10; 30 would overflow the budget of 20, the 5 and 4 behind it still fit
    assert fill_batch([10, 30, 5, 4, 2], budget=20, pads=False) == [0, 2, 3]


def test_an_oversized_head_goes_alone() -> None:
    assert fill_batch([60, 3, 3], budget=50, pads=False) == [0]
    assert fill_batch([60, 3, 3], budget=50, pads=True) == [0]


def test_padded_batches_grow_by_the_nearest_length() -> None:
    lengths = [50, 100, 48, 101, 52, 7]
    # cost = count * longest; around 50: 48 and 52 (gap 2) before 7 or 100
    assert sorted(lengths[i] for i in fill_batch(lengths, budget=160, pads=True)) == [48, 50, 52]


def test_padded_growth_tries_the_other_side_when_the_nearer_does_not_fit() -> None:
    # 12 is nearer to the head (10) but 2 x 12 > 22; 3 is farther yet fits (2 x 10 = 20)
    chosen = fill_batch([10, 12, 3], budget=22, pads=True)
    assert sorted(chosen) == [0, 2]


def test_equal_lengths_keep_line_order() -> None:
    # the budget holds three of five equal items: the head and the two next in line
    assert fill_batch([8, 8, 8, 8, 8], budget=24, pads=True) == [0, 1, 2]
