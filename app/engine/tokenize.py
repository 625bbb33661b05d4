"""Turns a query and its documents into the model's input pairs, windowing long documents."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from app.engine.windows import window_budget, window_spans

Family = Literal["xlm-roberta", "bert"]


@dataclass(frozen=True, slots=True)
class Pair:
    """One scoring item: the token ids fed to the model for (query, one document window).

    `split` is where the second segment starts (token type 1 from there on, for BERT).
    """

    ids: list[int]
    split: int
    doc: int


@dataclass(frozen=True, slots=True)
class EncodedRequest:
    pairs: list[Pair]
    total_tokens: int
    """Tokens fed to the model: every window with its query and specials."""
    input_tokens: int
    """Query plus document tokens, before windowing (what request limits count)."""


class PairEncoder:
    """Tokenizes with the model's fast tokenizer and applies each family's pair layout.

    Safe to call from several threads: after __init__ it only reads the Rust tokenizer
    (truncation and padding are switched off once, here, never per call).
    """

    def __init__(self, tokenizer: Any, family: Family, max_length: int) -> None:
        self._backend = tokenizer.backend_tokenizer
        self.family: Family = family
        self.max_length = max_length
        self.max_query_length = min(512, max_length // 2)
        self.cls_id: int = tokenizer.cls_token_id
        self.sep_id: int = tokenizer.sep_token_id
        self._backend.no_truncation()
        self._backend.no_padding()
        self._encode_batch = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)

    def encode_query(self, query: str) -> list[int]:
        """The query with specials, cut to max_query_length (content truncated, specials kept)."""
        content = self._backend.encode(query, add_special_tokens=False).ids
        return [self.cls_id, *content[: self.max_query_length - 2], self.sep_id]

    def encode_documents(self, documents: Sequence[str]) -> list[list[int]]:
        if not documents:
            return []
        return [e.ids for e in self._encode_batch(list(documents), add_special_tokens=False)]

    def pair_ids(self, query_ids: list[int], window: list[int]) -> list[int]:
        if self.family == "bert":
            return [*query_ids, *window, self.sep_id]
        return [*query_ids, self.sep_id, *window, self.sep_id]

    def encode(
        self,
        query: str,
        documents: Sequence[str],
        *,
        max_doc_tokens: int | None = None,
        keep_tail: bool = False,
        max_windows: int | None = None,
    ) -> EncodedRequest:
        """Every (query, window) pair of a request, documents in order, windows in order.

        Only on a client's explicit request: `max_doc_tokens` cuts each document to that many
        tokens, `max_windows` scores only that many windows of a document; both keep the
        document's start, or its end with `keep_tail`.
        """
        query_ids = self.encode_query(query)
        budget = window_budget(self.max_length, len(query_ids))
        split = len(query_ids)
        pairs: list[Pair] = []
        total = 0
        inputs = len(query_ids)
        for doc, doc_ids in enumerate(self.encode_documents(documents)):
            if max_doc_tokens is not None and len(doc_ids) > max_doc_tokens:
                doc_ids = doc_ids[-max_doc_tokens:] if keep_tail else doc_ids[:max_doc_tokens]
            inputs += len(doc_ids)
            spans = window_spans(len(doc_ids), budget)
            if max_windows is not None and len(spans) > max_windows:
                spans = spans[-max_windows:] if keep_tail else spans[:max_windows]
            for start, end in spans:
                ids = self.pair_ids(query_ids, doc_ids[start:end])
                total += len(ids)
                pairs.append(Pair(ids, split, doc))
        return EncodedRequest(pairs, total, inputs)
