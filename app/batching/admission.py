"""Admission by predicted completion, as pure arithmetic over plain data.

A request is admitted only if, served by the policy (shortest remaining work first), it would
start within the queue-time limit and finish before its deadline, without making any request
admitted before it miss its own. Otherwise it is refused at once with the predicted time until
it would fit (429 + Retry-After), or, when it cannot finish in time even on an idle server,
as too large (413). Predictions divide work by the device's measured rate; both are in
token-equivalents (app/batching/cost.py), which weigh a long window's tokens by what its
attention costs, so the rate holds whatever mix of lengths it was measured on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from app.batching.policy import GUARD_EVERY

GUARD_SLOWDOWN = GUARD_EVERY / (GUARD_EVERY - 1)
"""How much slower a request progresses while the guard may hand the device to an older one."""

Verdict = Literal["admit", "queue_time", "deadline", "too_large"]

SLACK = 1.25
"""Predicted durations are stretched by this much before they are held against a deadline:
the measured rate moves (with the host's speed, and with what the length-weighed cost model
does not capture), and a request that finishes a little late has wasted all its compute."""


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request already admitted: its work not yet scored and its absolute deadline."""

    remaining: float
    deadline: float
    arrival: int


@dataclass(frozen=True, slots=True)
class Forecast:
    verdict: Verdict
    wait_s: float
    """Predicted time until the request's own work starts."""
    finish_s: float
    """Predicted time until its last window is scored."""
    retry_after_s: float
    """For a refusal: predicted time until it would fit (0 when admitted)."""


def forecast(
    admitted: Sequence[Admitted],
    *,
    work: float,
    now: float,
    deadline: float,
    in_flight_s: float,
    work_per_s: float,
    max_queue_time_s: float,
    next_batch_s: float = 0.0,
) -> Forecast:
    """Whether a request of `work` token-equivalents can be admitted at `now`, and when it
    would finish.

    Work ahead of it: what is already in forward passes (`in_flight_s`) plus every admitted
    request with no more remaining work than it (ties go to the older one). That queued work
    may take up to `max_queue_time_s`, or the request's own compute time if that is longer:
    a large request would otherwise never be admitted while smaller ones keep arriving ahead
    of it (each wait bounded by its own size keeps every request within twice its own time,
    plus the queue-time limit). The batch in flight does not count against the limit: no
    request could start before it ends, and on a CPU one batch can take seconds, so a limit
    that counted it would refuse requests on an otherwise idle server. While a request older
    than it waits behind it, the starvation guard may hand that one up to 1/GUARD_EVERY of
    the device, so its own progress is predicted at the rest.

    `next_batch_s`: how long a batch takes that a worker may start from a request behind this
    one while this one is being tokenized (it is not in line until then, and a started batch
    runs to its end). Only counted when some request is behind it.
    """
    own = work / work_per_s
    if own > deadline - now:
        return Forecast("too_large", 0.0, own, 0.0)
    ahead = [a for a in admitted if a.remaining <= work]
    behind = sorted((a for a in admitted if a.remaining > work),
                    key=lambda a: (a.remaining, a.arrival))
    slowdown = GUARD_SLOWDOWN if behind else 1.0
    queued = sum(a.remaining for a in ahead) / work_per_s * slowdown
    unseen = next_batch_s if behind else 0.0
    wait = (in_flight_s + unseen) * slowdown + queued
    finish = wait + own * slowdown
    allowed = max(max_queue_time_s, own)
    if queued > allowed:
        return Forecast("queue_time", wait, finish, queued - allowed)
    if now + SLACK * finish > deadline:
        return Forecast("deadline", wait, finish, now + SLACK * finish - deadline)
    # Those behind it are each delayed by its own work: none may be pushed past its deadline,
    # slack included. Each is predicted as the newcomer is: after the batch that may start
    # unseen, and slowed by the guard while someone is behind it in turn. Only one that would
    # miss its deadline even as predicted, without the newcomer and without slack, is given up
    # on (it is not held against newcomers).
    done = in_flight_s + unseen + sum(a.remaining for a in ahead) / work_per_s
    for i, a in enumerate(behind):
        done += a.remaining / work_per_s
        slow = GUARD_SLOWDOWN if i < len(behind) - 1 else 1.0
        if now + done * slow <= a.deadline < now + SLACK * (done + own) * slow:
            return Forecast("deadline", wait, finish, done * slow)
    return Forecast("admit", wait, finish, 0.0)
