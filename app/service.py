"""The rerank use case: tokenize and window, score through the shared queue, pool, sort, cut.

No HTTP and no torch here; the api layer calls `rerank`, the batching layer does the scoring.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from app.batching.scheduler import Scheduler
from app.engine.tokenize import EncodedRequest, Encoder
from app.engine.windows import prompt_scored_tokens
from app.errors import InvalidRequest, RequestTooLarge
from app.metrics import ModelMetrics

BULK_CHARS = 200_000
"""Requests with more characters than this (about 50,000 tokens, ~50 ms of tokenization) are
tokenized on the bulk lane."""

SEED_CHARS_PER_TOKEN = 4.0
"""Before the first request is tokenized (XLM-R: about 4.4 for English, fewer for CJK); one
tokenized request replaces it."""


class CharsPerToken:
    """Characters per token of recent requests (decayed sums), to estimate a request's tokens
    before it is tokenized."""

    def __init__(self) -> None:
        self._chars = SEED_CHARS_PER_TOKEN
        self._tokens = 1.0

    def observe(self, chars: int, tokens: int) -> None:
        if tokens > 0:
            self._chars = 0.9 * self._chars + chars
            self._tokens = 0.9 * self._tokens + tokens

    @property
    def value(self) -> float:
        return self._chars / self._tokens


@dataclass(frozen=True, slots=True)
class RankedDocument:
    index: int
    score: float
    logit: float


@dataclass(frozen=True, slots=True)
class Truncation:
    """What a client explicitly asked to cut (never applied by default)."""

    max_doc_tokens: int | None = None
    """Cut each document to this many tokens (Cohere v2 `max_tokens_per_doc`)."""
    keep_tail: bool = False
    """Keep a cut document's end instead of its start (TEI `truncation_direction: Left`)."""
    max_windows: int | None = None
    """Score only this many windows per document (Cohere v1 `max_chunks_per_doc`; 1 for TEI's
    `truncate`)."""


@dataclass(frozen=True, slots=True)
class RerankOutcome:
    results: list[RankedDocument]
    total_tokens: int
    tokenization_s: float
    queue_s: float
    inference_s: float


def sigmoid32(logits: np.ndarray) -> np.ndarray:
    """The relevance score, in float32 like the model's reference code."""
    x = logits.astype(np.float32, copy=False)
    return np.float32(1.0) / (np.float32(1.0) + np.exp(-x))


class RerankService:
    def __init__(
        self,
        encoder: Encoder,
        scheduler: Scheduler,
        metrics: ModelMetrics,
        *,
        max_request_tokens: int = 2_000_000,
    ) -> None:
        self.encoder = encoder
        self.scheduler = scheduler
        self.max_request_tokens = max_request_tokens
        self._metrics = metrics
        self.chars_per_token = CharsPerToken()
        # Two tokenizer lanes of one thread each (the Rust tokenizer parallelises a batch
        # itself): requests past BULK_CHARS take their own, so a huge document's seconds of
        # tokenization do not hold up the small requests arriving behind it.
        self._lane = ThreadPoolExecutor(1, thread_name_prefix="reranker-tokenize")
        self._bulk_lane = ThreadPoolExecutor(1, thread_name_prefix="reranker-tokenize-bulk")

    def close(self) -> None:
        for lane in (self._lane, self._bulk_lane):
            lane.shutdown(wait=False, cancel_futures=True)

    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        top_n: int | None = None,
        truncation: Truncation | None = None,
        timeout_s: float = math.inf,
        instruction: str | None = None,
    ) -> RerankOutcome:
        """Documents ranked by relevance to the query (score desc, then index asc), cut to top_n.

        A document longer than one model input is scored as the max over its windows.
        Identical documents are scored once, so they tie exactly (a batch's row position can
        change a float's last bit). Cancelling the caller drops its items not yet scored.
        The request is admitted (or refused with 429/413) on its estimated tokens before any
        tokenizing: see Scheduler.admit.
        """
        if instruction is not None and not self.encoder.takes_instruction:
            raise InvalidRequest(
                "instruction: the served model is a cross-encoder that reads only the query and"
                " each document; it takes no instruction: leave it out"
            )
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        first_seen: dict[str, int] = {}
        slot = np.fromiter(
            (first_seen.setdefault(text, len(first_seen)) for text in documents),
            dtype=np.int64, count=len(documents),
        )
        cut = truncation or Truncation()
        unique = list(first_seen)
        encode = functools.partial(
            self.encoder.encode, query, unique, instruction=instruction,
            max_doc_tokens=cut.max_doc_tokens, keep_tail=cut.keep_tail,
            max_windows=cut.max_windows,
        )
        chars = len(query) + sum(map(len, unique))
        estimate = self.estimate_tokens(query, unique, cut, instruction)
        job = self.scheduler.admit(estimate, timeout_s)
        try:
            lane = self._bulk_lane if chars > BULK_CHARS else self._lane
            encoded: EncodedRequest = await loop.run_in_executor(lane, encode)
            tokenization_s = time.perf_counter() - t0
            self._metrics.tokenization_duration.observe(tokenization_s)
            self.chars_per_token.observe(chars, encoded.input_tokens)
            if encoded.input_tokens > self.max_request_tokens:
                raise RequestTooLarge(
                    f"the query and documents come to {encoded.input_tokens} tokens; the limit"
                    f" is {self.max_request_tokens} per request (max_request_tokens)"
                )
            self.scheduler.enqueue(job, [(p.ids, p.split) for p in encoded.pairs], timeout_s)
        except BaseException:
            self.scheduler.release(job)
            raise
        try:
            logits = await job.future
        except asyncio.CancelledError:
            job.abandon()
            raise

        unique_logits = _max_per_document(logits, [p.doc for p in encoded.pairs], len(first_seen))
        doc_logits = unique_logits[slot]
        scores = sigmoid32(doc_logits)
        order = np.lexsort((np.arange(len(documents)), -scores))
        if top_n is not None:
            order = order[:top_n]
        results = [
            RankedDocument(int(i), float(scores[i]), float(doc_logits[i])) for i in order
        ]
        self._metrics.documents_scored.inc(len(documents))
        self._metrics.tokens_scored.inc(encoded.total_tokens)
        return RerankOutcome(
            results, encoded.total_tokens, tokenization_s, job.queue_s, job.inference_s
        )

    async def rerank_each(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        truncation: Truncation | None = None,
        timeout_s: float = math.inf,
        instruction: str | None = None,
    ) -> RerankOutcome:
        """Each document scored against its own query (vLLM's N:N scoring); results in input
        order. The documents of one query are ranked in one call, the calls side by side; if
        one fails, the others are cancelled."""
        groups: dict[str, list[int]] = {}
        for i, query in enumerate(queries):
            groups.setdefault(query, []).append(i)
        calls = [
            asyncio.ensure_future(
                self.rerank(query, [documents[i] for i in idx], None, truncation, timeout_s,
                            instruction)
            )
            for query, idx in groups.items()
        ]
        try:
            outcomes = await asyncio.gather(*calls)
        except BaseException:
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
            raise
        results = sorted(
            (RankedDocument(idx[r.index], r.score, r.logit)
             for idx, outcome in zip(groups.values(), outcomes, strict=True)
             for r in outcome.results),
            key=lambda r: r.index,
        )
        return RerankOutcome(
            results, sum(o.total_tokens for o in outcomes),
            max((o.tokenization_s for o in outcomes), default=0.0),
            max((o.queue_s for o in outcomes), default=0.0),
            max((o.inference_s for o in outcomes), default=0.0),
        )

    def estimate_tokens(self, query: str, documents: Sequence[str], cut: Truncation,
                        instruction: str | None = None) -> int:
        """Tokens the request will feed the model, from its characters alone (no tokenizing)."""
        per_token = self.chars_per_token.value
        encoder = self.encoder
        prompt_len = encoder.prompt_tokens(math.ceil(len(query) / per_token),
                                           math.ceil(len(instruction or "") / per_token))
        total = 0
        for text in documents:
            doc_len = math.ceil(len(text) / per_token)
            if cut.max_doc_tokens is not None:
                doc_len = min(doc_len, cut.max_doc_tokens)
            total += prompt_scored_tokens(doc_len, prompt_len, encoder.max_length,
                                          cut.max_windows)
        return total


def _max_per_document(logits: np.ndarray, doc_of_pair: list[int], n_docs: int) -> np.ndarray:
    """Windows of one document are contiguous and in document order: max-pool each run."""
    if n_docs == 0:
        return np.empty(0, dtype=np.float32)
    starts = np.flatnonzero(np.diff(np.asarray(doc_of_pair), prepend=-1))
    return np.maximum.reduceat(logits, starts).astype(np.float32, copy=False)
