"""The model's own long-document rule, as jina-reranker-v2's reference code applies it.

With P = max_length - len(query_ids) - 2 document tokens per window and an overlap of
min(80, P // 4), the document's tokens are cut into windows of P stepping by P - overlap, the
last window right-aligned on the document's end; a document of at most P tokens is one window
(an empty one too). Each window is scored as query + separator + window + separator, and the
document's score is the maximum over its windows.
"""

from __future__ import annotations

import numpy as np

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


def client_cut(doc_ids: np.ndarray, max_doc_tokens: int | None, keep_tail: bool) -> np.ndarray:
    """A document's tokens, cut to `max_doc_tokens` when a client asked (its start, or its
    end with `keep_tail`)."""
    if max_doc_tokens is None or len(doc_ids) <= max_doc_tokens:
        return doc_ids
    return doc_ids[-max_doc_tokens:] if keep_tail else doc_ids[:max_doc_tokens]


def client_windows(doc_len: int, budget: int, max_windows: int | None,
                   keep_tail: bool) -> list[tuple[int, int]]:
    """window_spans, of which only `max_windows` are kept when a client asked (the first, or
    the last with `keep_tail`)."""
    spans = window_spans(doc_len, budget)
    if max_windows is None or len(spans) <= max_windows:
        return spans
    return spans[-max_windows:] if keep_tail else spans[:max_windows]


def window_count(doc_len: int, budget: int, overlap: int = MAX_OVERLAP) -> int:
    """len(window_spans(doc_len, budget, overlap)), in constant time."""
    if doc_len <= budget:
        return 1
    step = budget - min(overlap, budget // 4)
    return -(-(doc_len - budget) // step) + 1


def scored_tokens(
    doc_len: int, query_len: int, max_length: int, max_windows: int | None = None
) -> int:
    """Tokens fed to the model for one document of `doc_len` tokens: each window with the query
    and separators (at most two: XLM-R's layout; BERT's uses one)."""
    return prompt_scored_tokens(doc_len, query_len + 2, max_length, max_windows)


def prompt_scored_tokens(
    doc_len: int, prompt_len: int, max_length: int, max_windows: int | None = None
) -> int:
    """Tokens fed to the model for one document of `doc_len` tokens, each window carrying
    `prompt_len` tokens besides the document's (query, separators, a decoder's template)."""
    windows, length = prompt_windows(doc_len, prompt_len, max_length, max_windows)
    return windows * length


def prompt_windows(
    doc_len: int, prompt_len: int, max_length: int, max_windows: int | None = None
) -> tuple[int, int]:
    """(how many windows, tokens in each) for one document of `doc_len` tokens, each window
    carrying `prompt_len` tokens besides the document's. All windows of a document have the
    same length (the last one is right-aligned)."""
    budget = max(1, max_length - prompt_len)
    windows = window_count(doc_len, budget)
    if max_windows is not None:
        windows = min(windows, max_windows)
    return windows, prompt_len + min(doc_len, budget)
