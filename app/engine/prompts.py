"""Turns a query and its documents into a decoder reranker's prompts, windowing long documents.

Per document: `head + lead-and-document tokens + tail` (see app/engine/recipes.py). The
document's tokens are those of `lead + document` from the first token that holds a character of
the document; the tokens before it (the lead's) go into every window. With
P = max_length - (head + lead + tail tokens), windows follow the same rule as for
cross-encoders (app/engine/windows.py): P tokens a window, overlap min(80, P // 4), the last
one right-aligned, the document taking its best window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from app.engine.recipes import Recipe
from app.engine.tokenize import EncodedRequest, Pair
from app.engine.windows import client_cut, client_windows
from app.errors import ModelUnavailable, RequestTooLarge


class PromptEncoder:
    """Thread-safe after __init__, like PairEncoder (it only reads the Rust tokenizer)."""

    def __init__(self, tokenizer: Any, recipe: Recipe, max_length: int,
                 default_instruction: str | None = None) -> None:
        self._backend = tokenizer.backend_tokenizer
        self._backend.no_truncation()
        self._backend.no_padding()
        self.recipe = recipe
        self.max_length = max_length
        self.max_query_length = min(512, max_length // 2)
        self.min_window = min(256, max_length // 4)
        """Fewest document tokens a window may hold: an instruction that leaves less would
        cut a long document into a great many windows; it is refused (413) instead."""
        self.default_instruction = default_instruction or recipe.default_instruction
        self._bos = tokenizer.bos_token_id
        self.positive_id = _token_id(tokenizer, recipe.positive, recipe.token_lookup)
        self.negative_id = (None if recipe.negative is None else
                            _token_id(tokenizer, recipe.negative, recipe.token_lookup))
        bare = recipe.parts("", "")
        self._template_tokens = (len(self._pieces(bare.head)) + len(self._ids(bare.lead))
                                 + len(self._pieces(bare.tail)))
        self._default_instruction_tokens = len(self._ids(self.default_instruction or ""))

    takes_instruction = True

    def prompt_tokens(self, query_tokens: int, instruction_tokens: int = 0) -> int:
        """Tokens of a window besides the document's: the template, the instruction (the
        default one when none is given) and the query cut to max_query_length."""
        instruction = instruction_tokens or self._default_instruction_tokens
        return self._template_tokens + instruction + min(self.max_query_length, query_tokens)

    def _ids(self, text: str) -> list[int]:
        ids: list[int] = self._backend.encode(text, add_special_tokens=False).ids
        return ids

    def _pieces(self, pieces: Sequence[str]) -> list[int]:
        out: list[int] = []
        for piece in pieces:
            out += [self._bos] if piece == "<bos>" else self._ids(piece)
        return out

    def cut_query(self, query: str) -> str:
        """The query, cut after `max_query_length` tokens (at a token's end)."""
        encoding = self._backend.encode(query, add_special_tokens=False)
        if len(encoding.ids) <= self.max_query_length:
            return query
        return query[: encoding.offsets[self.max_query_length - 1][1]]

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
        """Every (query, window) prompt of a request, documents in order, windows in order;
        `split` of each pair is where its document tokens start."""
        parts = self.recipe.parts(self.cut_query(query), instruction or self.default_instruction)
        head, tail = self._pieces(parts.head), self._pieces(parts.tail)
        lead = parts.lead
        texts = [lead + doc for doc in documents]
        encodings = self._backend.encode_batch(texts, add_special_tokens=False) if texts else []
        pairs: list[Pair] = []
        total = 0
        inputs = len(head) + len(tail)
        for doc, encoding in enumerate(encodings):
            ids = np.asarray(encoding.ids, dtype=np.int32)
            split = _document_start(encoding.offsets, len(lead))
            lead_ids = ids[:split]
            doc_ids = client_cut(ids[split:], max_doc_tokens, keep_tail)
            inputs += len(doc_ids)
            prompt = len(head) + len(lead_ids) + len(tail)
            budget = self.max_length - prompt
            if budget < self.min_window:
                raise RequestTooLarge(
                    f"the prompt around the document (template, instruction and query) takes"
                    f" {prompt} of the model's {self.max_length} tokens, leaving {budget} for"
                    f" the document (at least {self.min_window} needed): shorten the"
                    " instruction or the query"
                )
            if doc == 0:  # the query and instruction once, as a cross-encoder counts them
                inputs += len(lead_ids)
            before = np.asarray([*head, *lead_ids], dtype=np.int32)
            after = np.asarray(tail, dtype=np.int32)
            for start, end in client_windows(len(doc_ids), budget, max_windows, keep_tail):
                pair_ids = np.concatenate([before, doc_ids[start:end], after])
                total += len(pair_ids)
                pairs.append(Pair(pair_ids, len(before), doc))
        return EncodedRequest(pairs, total, inputs)

    def filler(self, doc_tokens: int) -> tuple[np.ndarray, int]:
        """A prompt with `doc_tokens` document tokens (for warm-up), and its split."""
        parts = self.recipe.parts("warm up", self.default_instruction)
        before = [*self._pieces(parts.head), *self._ids(parts.lead)]
        filler_id = self._ids(" the")[-1:] or [0]
        ids = [*before, *(filler_id * doc_tokens), *self._pieces(parts.tail)]
        return np.asarray(ids, dtype=np.int32), len(before)

    def window_tokens(self) -> int:
        """Document tokens of a full window behind a short query."""
        return self.max_length - len(self.filler(0)[0])


def _document_start(offsets: Sequence[tuple[int, int]], lead_chars: int) -> int:
    """Index of the first token holding a character at or after `lead_chars`."""
    for i, (_, end) in enumerate(offsets):
        if end > lead_chars:
            return i
    return len(offsets)


def _token_id(tokenizer: Any, text: str, lookup: str) -> int:
    """The vocabulary row a recipe reads, found as its model card finds it; an error at
    start-up if the tokenizer does not have it as one token."""
    if lookup == "vocabulary":
        token_id = tokenizer.convert_tokens_to_ids(text)
        found = token_id is not None and token_id != tokenizer.unk_token_id
    else:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        token_id, found = (ids[0] if ids else None), len(ids) >= 1
    if not found or not isinstance(token_id, int):
        raise ModelUnavailable(f"the tokenizer has no token {text!r}, which the scoring recipe"
                               " reads: is --scoring right for this model?")
    return token_id
