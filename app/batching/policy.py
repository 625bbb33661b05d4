"""The scheduling policy as pure functions over plain data: which request leads the next batch,
the order requests stand in line, and which of the waiting items fill the batch.

Shortest remaining work first: the request with the fewest tokens still to score leads, so
equal requests finish one after another (FIFO-like, each at its own service time instead of
all at N times it) and a small request overtakes a 500,000-token document. One starvation
guard: once GUARD_EVERY - 1 batches in a row have gone by without the oldest request, the next
one is led by it, so a large request always gets at least 1/GUARD_EVERY of the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

GUARD_EVERY = 4


@dataclass(frozen=True, slots=True)
class JobView:
    """What the policy sees of one waiting request."""

    remaining: float
    """Work still waiting to be scored (token-equivalents: app/batching/cost.py)."""
    arrival: int
    """Admission order: lower is older."""


def guard_due(batches_without_oldest: int) -> bool:
    """Whether the next batch is the oldest request's turn."""
    return batches_without_oldest >= GUARD_EVERY - 1


def line_order(jobs: Sequence[JobView], guard_turn: bool = False) -> list[int]:
    """Indices of `jobs` in the order they are served: least remaining work first (ties: the
    older first); on the guard's turn the oldest goes to the front."""
    order = sorted(range(len(jobs)), key=lambda i: (jobs[i].remaining, jobs[i].arrival))
    if guard_turn and order:
        oldest = min(order, key=lambda i: jobs[i].arrival)
        order.remove(oldest)
        order.insert(0, oldest)
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
