"""The measured speed of a device: tokens (and token-equivalents of work) per second, as a
moving estimate."""

from __future__ import annotations

DECAY = 0.9
"""Weight kept by the past at each new batch (about the last 10 batches count)."""


class Throughput:
    """Decayed sums of tokens, work and seconds over recent forward passes of one device.

    The ratio of sums weighs each batch by its size: a run of one-item batches at low load
    moves the estimate less than full batches do, which is what saturation looks like. Work is
    in token-equivalents (app/batching/cost.py): what admission predicts with; tokens per
    second is what the metrics and /v1/models show.
    """

    def __init__(self) -> None:
        self._tokens = 0.0
        self._work = 0.0
        self._seconds = 0.0

    def observe(self, tokens: int, seconds: float, work: float | None = None) -> None:
        if tokens <= 0 or seconds <= 0:
            return
        self._tokens = DECAY * self._tokens + tokens
        self._work = DECAY * self._work + (tokens if work is None else work)
        self._seconds = DECAY * self._seconds + seconds

    @property
    def tokens_per_s(self) -> float | None:
        """None until a batch (or the warm-up) has been measured."""
        return self._tokens / self._seconds if self._seconds > 0 else None

    @property
    def work_per_s(self) -> float | None:
        """Token-equivalents per second; None until a batch has been measured."""
        return self._work / self._seconds if self._seconds > 0 else None
