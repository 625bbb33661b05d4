"""How a decoder ("LLM") reranker is asked, and how its answer becomes a score: each model
card's prompt template and scoring tokens, as data.

Every recipe reduces to one float per (query, document window), the *logit*, whose sigmoid is
the relevance score, so windows pool, sort and answer exactly like a cross-encoder's:
- Qwen3-Reranker: softmax over the `no`/`yes` logits at the last position, taking `yes`
  = sigmoid(logit_yes - logit_no);
- mxbai-rerank-v2: 2-way softmax over its `0`/`1` tokens = sigmoid(logit_1 - logit_0);
- bge-reranker-v2-gemma: the `Yes` logit itself (its sigmoid is the relevance score).

A prompt is `head + tokens(lead + document) + tail`: the document is tokenized together with
the text just before it in the same string (`lead`), as the model cards do, so a document that
fits in one window gets exactly the model card's tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Scoring = Literal["classifier", "qwen3-reranker", "mxbai-rerank-v2", "bge-reranker-gemma"]
SCORINGS: tuple[Scoring, ...] = (
    "classifier", "qwen3-reranker", "mxbai-rerank-v2", "bge-reranker-gemma"
)
DECODER_MAX_LENGTH = 8192
"""The longest prompt a decoder recipe feeds, unless the model's config allows less."""


@dataclass(frozen=True)
class PromptParts:
    """The text around the documents of one request, for one recipe."""

    head: list[str]
    """Pieces tokenized one by one (no specials added) before the document's text; a piece
    `<bos>` stands for the tokenizer's BOS token id."""
    lead: str
    """Text tokenized together with each document, just before it."""
    tail: list[str]
    """Pieces tokenized one by one after the document."""


@dataclass(frozen=True)
class Recipe:
    name: Scoring
    architectures: tuple[str, ...]
    """`architectures` entries of config.json this recipe is written for."""
    name_hint: str
    """Lower-case text a model id or directory name carries for auto-detection."""
    positive: str
    negative: str | None
    token_lookup: Literal["vocabulary", "encode"]
    """How the scoring tokens are found: `vocabulary` = convert_tokens_to_ids (Qwen3's model
    card); `encode` = the first id of tokenizing the text (mxbai's and bge's)."""
    default_instruction: str | None
    parts: Callable[[str, str | None], PromptParts]
    """(query, instruction or None) -> the prompt around the document."""


QWEN3_SYSTEM = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query"
    ' and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def _qwen3(query: str, instruction: str | None) -> PromptParts:
    lead = f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: "
    return PromptParts(head=[QWEN3_SYSTEM], lead=lead, tail=[QWEN3_SUFFIX])


MXBAI_PREFIX = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful"
    " assistant.<|im_end|>\n<|im_start|>user\n"
)
MXBAI_TASK = (
    "You are a search relevance expert who evaluates how well documents match search queries."
    " For each query-document pair, carefully analyze the semantic relationship between them,"
    " then provide your binary relevance judgment (0 for not relevant, 1 for relevant).\n"
    "Relevance:"
)
MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"


def _mxbai(query: str, instruction: str | None) -> PromptParts:
    asked = f"query: {query}"
    if instruction:
        asked = f"instruction: {instruction}\n{asked}"
    return PromptParts(head=[MXBAI_PREFIX, asked, "\n"], lead="document: ",
                       tail=["\n", MXBAI_TASK, MXBAI_SUFFIX])


BGE_GEMMA_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the"
    " query by providing a prediction of either 'Yes' or 'No'."
)


def _bge_gemma(query: str, instruction: str | None) -> PromptParts:
    return PromptParts(head=["<bos>", f"A: {query}", "\n"], lead="B: ",
                       tail=["\n", instruction or BGE_GEMMA_PROMPT])


RECIPES: dict[Scoring, Recipe] = {
    "qwen3-reranker": Recipe(
        "qwen3-reranker", ("Qwen3ForCausalLM",), "qwen3-reranker", "yes", "no", "vocabulary",
        QWEN3_INSTRUCTION, _qwen3,
    ),
    "mxbai-rerank-v2": Recipe(
        "mxbai-rerank-v2", ("Qwen2ForCausalLM",), "mxbai-rerank", "1", "0", "encode", None,
        _mxbai,
    ),
    "bge-reranker-gemma": Recipe(
        "bge-reranker-gemma", ("GemmaForCausalLM",), "bge-reranker-v2-gemma", "Yes", None,
        "encode", BGE_GEMMA_PROMPT, _bge_gemma,
    ),
}


class UnknownScoring(ValueError):
    """A causal LM with no recipe: the message names the flag to pass."""


def is_causal_lm(config: dict[str, Any]) -> bool:
    return any(a.endswith("ForCausalLM") for a in config.get("architectures") or [])


def detect_scoring(config: dict[str, Any], names: list[str], asked: str = "auto") -> Scoring:
    """The recipe for a model: `asked` unless `auto`; else, for a causal LM, the recipe whose
    architecture it has and whose name hint its model id or directory name carries
    (case-insensitive); `classifier` for everything else."""
    architectures = set(config.get("architectures") or [])
    if asked != "auto":
        if asked not in SCORINGS:
            raise UnknownScoring(f"--scoring {asked!r}: choose one of {', '.join(SCORINGS)}")
        if (asked == "classifier") == is_causal_lm(config):
            kind = "a causal LM" if asked == "classifier" else "not a causal LM"
            raise UnknownScoring(
                f"--scoring {asked} does not fit this model: {'/'.join(sorted(architectures))}"
                f" is {kind} (classifier is for cross-encoders, the recipes for decoder"
                " rerankers)"
            )
        return asked
    if not is_causal_lm(config):
        return "classifier"
    lowered = " ".join(names).lower()
    for recipe in RECIPES.values():
        if architectures & set(recipe.architectures) and recipe.name_hint in lowered:
            return recipe.name
    raise UnknownScoring(
        f"{'/'.join(sorted(architectures))} is a causal LM with no known scoring recipe for"
        f" this model name; pass --scoring {'|'.join(RECIPES)} (RERANKER_SCORING) to say how"
        " it scores"
    )
