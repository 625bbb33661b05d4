"""The long-document rule (app/engine/windows.py), checked against hand-worked cases and
invariants."""

from __future__ import annotations

import pytest

from app.engine.windows import scored_tokens, window_budget, window_count, window_spans


def test_budget_leaves_room_for_query_and_two_separators() -> None:
    assert window_budget(1024, 10) == 1012
    assert window_budget(1024, 512) == 510


@pytest.mark.parametrize(
    ("doc_len", "budget", "spans"),
    [
        (0, 10, [(0, 0)]),  # an empty document is one empty window
        (7, 10, [(0, 7)]),
        (10, 10, [(0, 10)]),
        # overlap = min(80, 10 // 4) = 2, step 8; the last window is right-aligned
        (11, 10, [(0, 10), (1, 11)]),
        (18, 10, [(0, 10), (8, 18)]),
        (19, 10, [(0, 10), (8, 18), (9, 19)]),
        # overlap capped at 80: step 430 for budget 510
        (1000, 510, [(0, 510), (430, 940), (490, 1000)]),
    ],
)
def test_spans(doc_len: int, budget: int, spans: list[tuple[int, int]]) -> None:
    assert window_spans(doc_len, budget) == spans


@pytest.mark.parametrize("budget", [1, 3, 4, 50, 510])
@pytest.mark.parametrize("doc_len", [1, 2, 49, 50, 51, 300, 5000])
def test_windows_cover_the_document_in_full_windows(doc_len: int, budget: int) -> None:
    spans = window_spans(doc_len, budget)
    covered = set()
    for start, end in spans:
        covered.update(range(start, end))
        assert end - start == min(budget, doc_len)
        assert 0 <= start < end <= doc_len
    assert covered == set(range(doc_len))
    assert spans[-1][1] == doc_len


def test_rejects_a_budget_that_leaves_no_room() -> None:
    with pytest.raises(ValueError):
        window_spans(10, 0)


def test_window_count_and_scored_tokens_match_the_windows() -> None:
    for budget in (1, 4, 50, 1000):
        for doc_len in (0, 1, budget - 1, budget, budget + 1, 3 * budget + 7, 10 * budget):
            doc_len = max(0, doc_len)
            assert window_count(doc_len, budget) == len(window_spans(doc_len, budget))
    # 1000 max length, 10-token query: 988 per window; 2500 tokens -> 3 windows of 988
    assert scored_tokens(2500, 10, 1000) == 3 * (10 + 2 + 988)
    assert scored_tokens(2500, 10, 1000, max_windows=1) == 10 + 2 + 988
    assert scored_tokens(40, 10, 1000) == 10 + 2 + 40
