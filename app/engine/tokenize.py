"""Turns a query and its documents into the model's input pairs, windowing long documents."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from app.engine.windows import client_cut, client_windows, window_budget

Family = Literal["xlm-roberta", "bert"]


@dataclass(frozen=True, slots=True)
class Pair:
    """One scoring item: the token ids fed to the model for (query, one document window).

    `split` is where the second segment starts (token type 1 from there on, for BERT).
    """

    ids: np.ndarray
    """int32 token ids: handed to the engine as they are (no per-token Python work)."""
    split: int
    doc: int


@dataclass(frozen=True, slots=True)
class EncodedRequest:
    pairs: list[Pair]
    total_tokens: int
    """Tokens fed to the model: every window with its query and specials."""
    input_tokens: int
    """Query plus document tokens, before windowing (what request limits count)."""


class Encoder(Protocol):
    """What the service needs from a model's input side: a cross-encoder's pairs
    (PairEncoder) or a decoder reranker's prompts (app/engine/prompts.py)."""

    max_length: int
    takes_instruction: bool

    def encode(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None,
        max_doc_tokens: int | None = None, keep_tail: bool = False,
        max_windows: int | None = None,
    ) -> EncodedRequest: ...

    def prompt_tokens(self, query_tokens: int, instruction_tokens: int = 0) -> int: ...

    def filler(self, doc_tokens: int) -> tuple[np.ndarray, int]: ...

    def window_tokens(self) -> int: ...


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
        self._sep = np.array([self.sep_id], dtype=np.int32)
        self._encode_batch = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)

    takes_instruction = False
    """Cross-encoders read the query and the document only."""

    def prompt_tokens(self, query_tokens: int, instruction_tokens: int = 0) -> int:
        """Tokens of a window besides the document's, for a query of `query_tokens` tokens
        (specials, the cut to max_query_length and the separators included)."""
        return min(self.max_query_length, query_tokens + 2) + 2

    def filler(self, doc_tokens: int) -> tuple[np.ndarray, int]:
        """A pair with `doc_tokens` document tokens (for warm-up), and its split."""
        query = self.encode_query("warm up")
        return self.pair_ids(query, [self.sep_id] * doc_tokens), len(query)

    def window_tokens(self) -> int:
        """Document tokens of a full window behind a short query."""
        return window_budget(self.max_length, len(self.encode_query("warm up")))

    def encode_query(self, query: str) -> np.ndarray:
        """The query with specials, cut to max_query_length (content truncated, specials kept)."""
        content = self._backend.encode(query, add_special_tokens=False).ids
        return np.array(
            [self.cls_id, *content[: self.max_query_length - 2], self.sep_id], dtype=np.int32
        )

    def encode_documents(self, documents: Sequence[str]) -> list[np.ndarray]:
        if not documents:
            return []
        encodings = self._encode_batch(list(documents), add_special_tokens=False)
        return [np.array(e.ids, dtype=np.int32) for e in encodings]

    def pair_ids(self, query_ids: Sequence[int] | np.ndarray,
                 window: Sequence[int] | np.ndarray) -> np.ndarray:
        """`<s> q </s></s> window </s>` (XLM-R) or `[CLS] q [SEP] window [SEP]` (BERT)."""
        sep = self._sep
        parts = (query_ids, sep, window, sep) if self.family == "xlm-roberta" else (
            query_ids, window, sep)
        return np.concatenate([np.asarray(p, dtype=np.int32) for p in parts])

    def encode(
        self,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        max_doc_tokens: int | None = None,
        keep_tail: bool = False,
        max_windows: int | None = None,
    ) -> EncodedRequest:
        """Every (query, window) pair of a request, documents in order, windows in order.

        Only on a client's explicit request: `max_doc_tokens` cuts each document to that many
        tokens, `max_windows` scores only that many windows of a document; both keep the
        document's start, or its end with `keep_tail`. `instruction` is never read (the caller
        refuses one: takes_instruction is False).
        """
        query_ids = self.encode_query(query)
        budget = window_budget(self.max_length, len(query_ids))
        split = len(query_ids)
        pairs: list[Pair] = []
        total = 0
        inputs = len(query_ids)
        for doc, encoded in enumerate(self.encode_documents(documents)):
            doc_ids = client_cut(encoded, max_doc_tokens, keep_tail)
            inputs += len(doc_ids)
            for start, end in client_windows(len(doc_ids), budget, max_windows, keep_tail):
                ids = self.pair_ids(query_ids, doc_ids[start:end])
                total += len(ids)
                pairs.append(Pair(ids, split, doc))
        return EncodedRequest(pairs, total, inputs)
