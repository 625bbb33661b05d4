"""Reference scores of the decoder rerankers, from stock transformers `AutoModelForCausalLM`
and each model card's own procedure, written independently of app/engine/recipes.py.

Each prompt runs alone (no batching, no padding) in float32. The logit is the model card's
score before its final squashing: Qwen3-Reranker logit(yes) - logit(no), mxbai-rerank-v2
logit(1) - logit(0), bge-reranker-v2-gemma logit(Yes); the relevance score is its sigmoid.

The model cards cut long inputs; this service windows them. For a document that fits one
prompt the reference is the model card's exactly; for longer ones it applies the documented
rule (MODEL.md): the document's tokens are those of the text it is tokenized with from the
first token holding a character of the document, cut into windows of
P = max_length - (every other token of the prompt), overlap min(80, P // 4), last one
right-aligned; the document scores its best window.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.reference import reference_windows

# From the Qwen3-Reranker model card.
QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query"
    " and the Instruct provided. Note that the answer can only be \"yes\" or \"no\"."
    "<|im_end|>\n<|im_start|>user\n"
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_TASK = "Given a web search query, retrieve relevant passages that answer the query"
# From mixedbread's mxbai-rerank library (v2 models).
MXBAI_CHAT_PREFIX = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a"
                     " helpful assistant.<|im_end|>\n<|im_start|>user\n")
MXBAI_CHAT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
MXBAI_TASK_PROMPT = (
    "You are a search relevance expert who evaluates how well documents match search queries."
    " For each query-document pair, carefully analyze the semantic relationship between them,"
    " then provide your binary relevance judgment (0 for not relevant, 1 for relevant).\n"
    "Relevance:"
)
# From FlagEmbedding's bge-reranker-v2-gemma example.
GEMMA_PROMPT = ("Given a query A and a passage B, determine whether the passage contains an"
                " answer to the query by providing a prediction of either 'Yes' or 'No'.")
MAX_LENGTH = 8192


@functools.lru_cache(maxsize=8)
def _load(model_dir: str) -> tuple[Any, Any, int]:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    max_len = min(MAX_LENGTH, model.config.max_position_embeddings, tok.model_max_length)
    return tok, model, max_len


def _ids(tok: Any, text: str) -> list[int]:
    ids: list[int] = tok(text, add_special_tokens=False)["input_ids"]
    return ids


def _split(tok: Any, lead: str, doc: str) -> tuple[list[int], list[int]]:
    """Tokens of `lead + doc`, split where the document's first character falls."""
    enc = tok(lead + doc, add_special_tokens=False, return_offsets_mapping=True)
    cut = next((i for i, (_, end) in enumerate(enc["offset_mapping"]) if end > len(lead)),
               len(enc["input_ids"]))
    return enc["input_ids"][:cut], enc["input_ids"][cut:]


def _cut_query(tok: Any, query: str, max_len: int) -> str:
    enc = tok(query, add_special_tokens=False, return_offsets_mapping=True)
    limit = min(512, max_len // 2)
    if len(enc["input_ids"]) <= limit:
        return query
    return query[: enc["offset_mapping"][limit - 1][1]]


def prompts(model_dir: str, recipe: str, query: str, doc: str,
            instruction: str | None = None) -> tuple[list[list[int]], list[int]]:
    """Every window's prompt of `doc`, and the vocabulary rows the recipe reads."""
    tok, _, max_len = _load(model_dir)
    query = _cut_query(tok, query, max_len)
    if recipe == "qwen3-reranker":
        head = _ids(tok, QWEN3_PREFIX)
        lead = f"<Instruct>: {instruction or QWEN3_TASK}\n<Query>: {query}\n<Document>: "
        tail = _ids(tok, QWEN3_SUFFIX)
        rows = [tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")]
    elif recipe == "mxbai-rerank-v2":
        query_text = f"query: {query}"
        if instruction:
            query_text = f"instruction: {instruction}\n{query_text}"
        head = _ids(tok, MXBAI_CHAT_PREFIX) + _ids(tok, query_text) + _ids(tok, "\n")
        lead = "document: "
        tail = _ids(tok, "\n") + _ids(tok, MXBAI_TASK_PROMPT) + _ids(tok, MXBAI_CHAT_SUFFIX)
        rows = [_ids(tok, "1")[0], _ids(tok, "0")[0]]
    else:
        head = [tok.bos_token_id] + _ids(tok, f"A: {query}") + _ids(tok, "\n")
        lead = "B: "
        tail = _ids(tok, "\n") + _ids(tok, instruction or GEMMA_PROMPT)
        rows = [_ids(tok, "Yes")[0]]
    lead_ids, doc_ids = _split(tok, lead, doc)
    before = head + lead_ids
    budget = max_len - len(before) - len(tail)
    return [before + w + tail for w in reference_windows(doc_ids, budget)], rows


@torch.inference_mode()
def reference_decoder_logit(model_dir: str, recipe: str, query: str, doc: str,
                            instruction: str | None = None) -> float:
    """Best window's logit (see the module docstring)."""
    _, model, _ = _load(model_dir)
    windows, rows = prompts(model_dir, recipe, query, doc, instruction)
    best = -float("inf")
    for ids in windows:
        last = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        logit = last[rows[0]] - last[rows[1]] if len(rows) == 2 else last[rows[0]]
        best = max(best, float(logit))
    return best


def reference_decoder_scores(model_dir: str, recipe: str, query: str, docs: list[str],
                             instruction: str | None = None) -> list[float]:
    logits = torch.tensor([reference_decoder_logit(model_dir, recipe, query, d, instruction)
                           for d in docs], dtype=torch.float32)
    return torch.sigmoid(logits).tolist()
