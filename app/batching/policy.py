"""The scheduling policy as pure functions over plain data: which request leads the next batch,
the order requests stand in line, and which of the waiting items fill the batch.

Shortest remaining work first: the request with the fewest tokens still to score leads, so
equal requests finish one after another (FIFO-like, each at its own service time instead of
all at N times it) and a small request overtakes a 500,000-token document. One starvation
guard: once GUARD_EVERY - 1 batches in a row have gone by without the oldest request, the next
one is led by it, so a large request always gets at least 1/GUARD_EVERY of the device.
One safety net: a request whose deadline is near enough to be at risk leads (earliest deadline
first), ahead of the guard: admission predicts that every admitted request finishes in time,
and this catches one whose prediction ran late before it is answered 504.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

GUARD_EVERY = 4

URGENCY = 1.5
"""A request is at risk once the time left before its deadline is under this many times its
remaining work at the measured rate (served alone from now on, it would still make it)."""


@dataclass(frozen=True, slots=True)
class JobView:
    """What the policy sees of one waiting request."""

    remaining: float
    """Work still waiting to be scored (token-equivalents: app/batching/cost.py)."""
    arrival: int
    """Admission order: lower is older."""
    deadline: float = math.inf
    """Absolute, on the scheduler's clock."""


def guard_due(batches_without_oldest: int) -> bool:
    """Whether the next batch is the oldest request's turn."""
    return batches_without_oldest >= GUARD_EVERY - 1


def at_risk(jobs: Sequence[JobView], now: float, work_per_s: float) -> int | None:
    """The request to lead the next batch because its deadline is at risk (the earliest
    deadline among those at risk), or None. One that cannot make its deadline even alone is
    not put first: it would take the device from the others and still be late."""
    risky = [
        i for i, job in enumerate(jobs)
        if job.remaining / work_per_s <= job.deadline - now < URGENCY * job.remaining / work_per_s
    ]
    return min(risky, key=lambda i: (jobs[i].deadline, jobs[i].arrival)) if risky else None


def line_order(jobs: Sequence[JobView], guard_turn: bool = False,
               urgent: int | None = None) -> list[int]:
    """Indices of `jobs` in the order they are served: least remaining work first (ties: the
    older first); on the guard's turn the oldest goes to the front; a request at risk of
    missing its deadline (`urgent`, from `at_risk`) goes before all."""
    order = sorted(range(len(jobs)), key=lambda i: (jobs[i].remaining, jobs[i].arrival))
    lead = urgent
    if lead is None and guard_turn and order:
        lead = min(order, key=lambda i: jobs[i].arrival)
    if lead is not None:
        order.remove(lead)
        order.insert(0, lead)
    return order


def fill_batch(lengths: Sequence[int], budget: int, pads: bool) -> list[int]:
    """Which items of a look-ahead window form the next batch; `lengths` is in line order and
    item 0 (the head) is always taken, alone if it exceeds the budget.

    Packed batches cost their real tokens, so items are taken in line order (the head request's
    own first: it finishes soonest), skipping any that would overflow. Padded batches cost
    `count * longest`, so the batch grows around the head by the nearest length on either
    side; when the nearer neighbour does not fit, the other side is still tried.
    """
    if not lengths:
        return []
    if not pads:
        chosen, total = [0], lengths[0]
        for i in range(1, len(lengths)):
            if total + lengths[i] <= budget:
                chosen.append(i)
                total += lengths[i]
        return chosen
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    centre = order.index(0)
    lo = hi = centre
    longest = lengths[0]
    blocked = {"left": lo == 0, "right": hi == len(order) - 1}
    while not (blocked["left"] and blocked["right"]):
        gap_left = lengths[0] - lengths[order[lo - 1]] if not blocked["left"] else None
        gap_right = lengths[order[hi + 1]] - lengths[0] if not blocked["right"] else None
        side = "left" if gap_right is None or (gap_left is not None and gap_left <= gap_right) \
            else "right"
        cand = order[lo - 1] if side == "left" else order[hi + 1]
        new_longest = max(longest, lengths[cand])
        if (hi - lo + 2) * new_longest > budget:
            blocked[side] = True  # in sorted order, nothing further out on this side fits
            continue
        longest = new_longest
        if side == "left":
            lo -= 1
            blocked["left"] = lo == 0
        else:
            hi += 1
            blocked["right"] = hi == len(order) - 1
    return [order[k] for k in range(lo, hi + 1)]
