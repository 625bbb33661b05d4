"""What a forward pass costs, by sequence length: the unit admission predicts in.

A sequence of L tokens costs about a·L (the linears, per token) plus b·L² (attention, per pair
of tokens). Counted in token-equivalents, `L + L²/knee` with `knee = a/b`: the length at which
attention costs as much as everything else. On a CPU attention runs at a fraction of the
matmul rate, so a full 1024-token window costs 1.4-1.7x per token what a short one does; a rate
measured on short windows then under-predicts a request of long ones by that much, and an
admitted request could finish past its deadline. The knee is measured at warm-up (`fit`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Cost:
    knee: float = math.inf
    """Length at which a token's attention costs as much as its linears (inf: tokens only)."""

    def of(self, length: int) -> float:
        """Token-equivalents of one sequence of `length` tokens."""
        return length + length * length / self.knee

    def of_lengths(self, lengths: Sequence[int]) -> float:
        return sum(self.of(n) for n in lengths)

    def per_token(self, length: int) -> float:
        """How many times a short sequence's per-token cost one of `length` tokens has."""
        return 1.0 + length / self.knee


MIN_KNEE = 256
"""No real model's attention costs as much as its linears at 256 tokens (jina-reranker-v2 on a
CPU: ~1,500): a fit below it is noise, and is held here rather than trusted (it would make
admission refuse long windows it could serve)."""


def fit(runs: Sequence[tuple[Sequence[int], float]]) -> Cost:
    """The knee from two timed forward passes of different length mixes ((lengths, seconds)
    each): solves seconds = a·Σ L + b·Σ L² for a and b. A fit that comes out without a
    positive a and b (too little difference between the mixes, or noise) counts tokens only;
    one below MIN_KNEE is held there."""
    if len(runs) != 2:
        raise ValueError("fit needs exactly two timed runs")
    (l1, t1), (l2, t2) = runs
    s1, q1 = sum(l1), sum(n * n for n in l1)
    s2, q2 = sum(l2), sum(n * n for n in l2)
    det = s1 * q2 - s2 * q1
    if det == 0:
        return Cost()
    a = (t1 * q2 - t2 * q1) / det
    b = (s1 * t2 - s2 * t1) / det
    if a <= 0 or b <= 0:
        return Cost()
    return Cost(knee=max(MIN_KNEE, a / b))
