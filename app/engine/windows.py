"""The model's own long-document rule: overlapping windows, last one right-aligned (MODEL.md)."""

from __future__ import annotations

MAX_OVERLAP = 80


def window_budget(max_length: int, query_len: int) -> int:
    """Document tokens per window: the model's max length less the query and two separators."""
    return max_length - query_len - 2


def window_spans(doc_len: int, budget: int, overlap: int = MAX_OVERLAP) -> list[tuple[int, int]]:
    """[start, end) spans covering `doc_len` document tokens in windows of at most `budget`.

    A document that fits is one window (an empty document is one empty window). Longer ones
    step by `budget - min(overlap, budget // 4)`; the window that would run past the end is
    replaced by the last `budget` tokens.
    """
    if budget < 1:
        raise ValueError(f"window budget must be positive, got {budget}")
    if doc_len <= budget:
        return [(0, doc_len)]
    step = budget - min(overlap, budget // 4)
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        end = start + budget
        if end >= doc_len:
            spans.append((doc_len - budget, doc_len))
            return spans
        spans.append((start, end))
        start += step
