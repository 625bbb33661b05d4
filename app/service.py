"""The rerank use case: tokenize and window, score through the shared queue, pool, sort, cut.

No HTTP and no torch here; the api layer calls `rerank`, the batching layer does the scoring.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from app.batching.scheduler import Scheduler
from app.engine.tokenize import EncodedRequest, Encoder, Pair
from app.engine.windows import prompt_windows
from app.errors import InvalidRequest, RequestTooLarge
from app.metrics import ModelMetrics

BULK_CHARS = 200_000
"""Requests with more characters than this (about 50,000 tokens, ~50 ms of tokenization) are
tokenized on the bulk lane."""

BULK_NICENESS = 10
"""The bulk lane's thread runs this much nicer than the process (Linux; elsewhere as is): a
huge document's second of tokenization then takes the CPU the device workers leave, instead
of preempting one of their threads mid-operation while small requests wait on it."""


def _lower_priority() -> None:
    # on Linux a thread id names one thread: only the calling thread gets nicer
    with contextlib.suppress(AttributeError, OSError):
        thread = threading.get_native_id()
        nice = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, nice + BULK_NICENESS))


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
        # Two tokenizer lanes of one thread each (the Rust tokenizer works in the calling
        # thread: TOKENIZERS_PARALLELISM, set in app/main.py): requests past BULK_CHARS take
        # their own, nicer one, so a huge document's seconds of tokenization hold up neither
        # the small requests arriving behind it nor the device workers.
        self._lane = ThreadPoolExecutor(1, thread_name_prefix="reranker-tokenize")
        self._bulk_lane = ThreadPoolExecutor(1, thread_name_prefix="reranker-tokenize-bulk",
                                             initializer=_lower_priority)

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
        first_seen: dict[str, int] = {}
        slot = np.fromiter(
            (first_seen.setdefault(text, len(first_seen)) for text in documents),
            dtype=np.int64, count=len(documents),
        )
        unique = list(first_seen)
        doc_logits, stats = await self._score([(query, unique, list(range(len(unique))))],
                                              len(unique), truncation, timeout_s, instruction)
        doc_logits = doc_logits[slot]
        scores = sigmoid32(doc_logits)
        order = np.lexsort((np.arange(len(documents)), -scores))
        if top_n is not None:
            order = order[:top_n]
        results = [
            RankedDocument(int(i), float(scores[i]), float(doc_logits[i])) for i in order
        ]
        self._metrics.documents_scored.inc(len(documents))
        return RerankOutcome(results, *stats)

    async def rerank_each(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        truncation: Truncation | None = None,
        timeout_s: float = math.inf,
        instruction: str | None = None,
    ) -> RerankOutcome:
        """Each document scored against its own query (vLLM's N:N scoring); results in input
        order. One request for admission and the queue, however many distinct queries."""
        groups: dict[str, list[int]] = {}
        for i, query in enumerate(queries):
            groups.setdefault(query, []).append(i)
        work = [(query, [documents[i] for i in idx], idx) for query, idx in groups.items()]
        doc_logits, stats = await self._score(work, len(documents), truncation, timeout_s,
                                              instruction)
        scores = sigmoid32(doc_logits)
        results = [RankedDocument(i, float(scores[i]), float(doc_logits[i]))
                   for i in range(len(documents))]
        self._metrics.documents_scored.inc(len(documents))
        return RerankOutcome(results, *stats)

    async def _score(
        self,
        work: list[tuple[str, list[str], list[int]]],
        n_docs: int,
        truncation: Truncation | None,
        timeout_s: float,
        instruction: str | None,
    ) -> tuple[np.ndarray, tuple[int, float, float, float]]:
        """Best-window logit of each document of `work` ((query, documents, each document's
        output slot) per query), admitted, tokenized and queued as one request; and the
        outcome's (total tokens, tokenization, queue and inference seconds)."""
        if instruction is not None and not self.encoder.takes_instruction:
            raise InvalidRequest(
                "instruction: the served model is a cross-encoder that reads only the query and"
                " each document; it takes no instruction: leave it out"
            )
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        cut = truncation or Truncation()
        chars = sum(len(query) + sum(map(len, docs)) for query, docs, _ in work)
        estimate = sum(self.estimate_work(query, docs, cut, instruction)
                       for query, docs, _ in work)
        encode = functools.partial(self._encode, work, cut, instruction)
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
        self._metrics.tokens_scored.inc(encoded.total_tokens)
        doc_logits = _max_per_document(logits, [p.doc for p in encoded.pairs], n_docs)
        return doc_logits, (encoded.total_tokens, tokenization_s, job.queue_s, job.inference_s)

    def _encode(self, work: list[tuple[str, list[str], list[int]]], cut: Truncation,
                instruction: str | None) -> EncodedRequest:
        """Every query's pairs, their `doc` mapped to the document's output slot."""
        encode = functools.partial(
            self.encoder.encode, instruction=instruction, max_doc_tokens=cut.max_doc_tokens,
            keep_tail=cut.keep_tail, max_windows=cut.max_windows,
        )
        if len(work) == 1 and work[0][2] == list(range(len(work[0][1]))):  # one query, in order
            return encode(work[0][0], work[0][1])
        pairs: list[Pair] = []
        total = inputs = 0
        for query, docs, slots in work:
            encoded = encode(query, docs)
            pairs += [Pair(p.ids, p.split, slots[p.doc]) for p in encoded.pairs]
            total += encoded.total_tokens
            inputs += encoded.input_tokens
        return EncodedRequest(pairs, total, inputs)

    def estimate_work(self, query: str, documents: Sequence[str], cut: Truncation,
                      instruction: str | None = None) -> float:
        """The work the request will give the model, in token-equivalents (each window's
        tokens weighed by its length: app/batching/cost.py), from its characters alone (no
        tokenizing)."""
        per_token = self.chars_per_token.value
        encoder = self.encoder
        cost = self.scheduler.cost
        prompt_len = encoder.prompt_tokens(math.ceil(len(query) / per_token),
                                           math.ceil(len(instruction or "") / per_token))
        total = 0.0
        for text in documents:
            doc_len = math.ceil(len(text) / per_token)
            if cut.max_doc_tokens is not None:
                doc_len = min(doc_len, cut.max_doc_tokens)
            windows, length = prompt_windows(doc_len, prompt_len, encoder.max_length,
                                             cut.max_windows)
            total += windows * cost.of(length)
        return total


def _max_per_document(logits: np.ndarray, doc_of_pair: list[int], n_docs: int) -> np.ndarray:
    """Each document's best window (a document's windows are contiguous; documents may come
    in any order)."""
    best = np.full(n_docs, -np.inf, dtype=np.float32)
    if doc_of_pair:
        np.maximum.at(best, np.asarray(doc_of_pair), logits.astype(np.float32, copy=False))
    return best
