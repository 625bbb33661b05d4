"""Reference scores from stock transformers, written independently of the app's engine.

Each (query, window) pair runs alone (no batching, no padding) through
`AutoModelForSequenceClassification` with eager attention in float32; windowing follows the
model's published `rerank()` loop.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


@functools.lru_cache(maxsize=8)
def _load(model_dir: str) -> tuple[object, object, int, bool]:
    """(tokenizer, model, max length, BERT-style pair layout) of a stock checkpoint."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    config = json.loads((Path(model_dir) / "config.json").read_text())
    is_bert = config["model_type"] not in ("xlm-roberta", "roberta")
    positions = config["max_position_embeddings"]
    if not is_bert:
        positions -= config["pad_token_id"] + 1
    max_len = min(positions, tok.model_max_length)
    return tok, model, max_len, is_bert


def reference_windows(doc_ids: list[int], budget: int) -> list[list[int]]:
    """The reference loop: step by budget - overlap, the last window right-aligned."""
    overlap = min(80, budget // 4)
    if len(doc_ids) <= budget:
        return [doc_ids]
    out = []
    start = 0
    while start < len(doc_ids):
        end = start + budget
        if end >= len(doc_ids):
            out.append(doc_ids[-budget:])
            break
        out.append(doc_ids[start:end])
        start = end - overlap
    return out


def reference_pairs(
    model_dir: str, query: str, doc: str, cut: int | None = None
) -> list[tuple[list[int], list[int]]]:
    """(input_ids, token_type_ids) of every window of `doc` (its first `cut` tokens if given)."""
    tok, _, max_len, is_bert = _load(model_dir)
    q = tok(query, truncation=True, max_length=min(512, max_len // 2))["input_ids"]
    d = tok(doc, add_special_tokens=False)["input_ids"][:cut]
    sep = tok.sep_token_id
    pairs = []
    for window in reference_windows(d, max_len - len(q) - 2):
        if is_bert:
            ids = q + window + [sep]
            types = [0] * len(q) + [1] * (len(window) + 1)
        else:
            ids = q + [sep] + window + [sep]
            types = [0] * len(ids)
        pairs.append((ids, types))
    return pairs


@torch.inference_mode()
def reference_logit(
    model_dir: str, query: str, doc: str, cut: int | None = None, windows: slice | None = None
) -> float:
    """Max logit over the document's windows (only `windows` of them, if given)."""
    _, model, _, _ = _load(model_dir)
    with_types = getattr(model.config, "type_vocab_size", 0) > 0  # type: ignore[attr-defined]
    best = -float("inf")
    for ids, types in reference_pairs(model_dir, query, doc, cut)[windows or slice(None)]:
        extra = {"token_type_ids": torch.tensor([types])} if with_types else {}
        out = model(input_ids=torch.tensor([ids]), **extra).logits[0, 0]  # type: ignore[operator]
        best = max(best, float(out))
    return best


def reference_scores(model_dir: str, query: str, docs: list[str]) -> list[float]:
    logits = torch.tensor([reference_logit(model_dir, query, d) for d in docs], dtype=torch.float32)
    return torch.sigmoid(logits).tolist()


def reference_tokens(model_dir: str, query: str, docs: list[str]) -> int:
    return sum(len(ids) for d in docs for ids, _ in reference_pairs(model_dir, query, d))
