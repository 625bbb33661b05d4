"""Which scoring recipe a model gets: named by --scoring, or detected from its architecture
and its model id or directory name."""

from __future__ import annotations

import re

import pytest

from app.engine.recipes import UnknownScoring, detect_scoring


def _config(arch: str) -> dict[str, object]:
    return {"architectures": [arch]}


@pytest.mark.parametrize(("arch", "name", "want"), [
    ("Qwen3ForCausalLM", "Qwen/Qwen3-Reranker-0.6B", "qwen3-reranker"),
    ("Qwen3ForCausalLM", "/models/qwen3-reranker-8b", "qwen3-reranker"),
    ("Qwen2ForCausalLM", "mixedbread-ai/mxbai-rerank-base-v2", "mxbai-rerank-v2"),
    ("Qwen2ForCausalLM", "/cache/models--mixedbread-ai--MXBAI-RERANK-large-v2/snapshots/1",
     "mxbai-rerank-v2"),
    ("GemmaForCausalLM", "BAAI/bge-reranker-v2-gemma", "bge-reranker-gemma"),
    ("XLMRobertaForSequenceClassification", "jinaai/jina-reranker-v2-base-multilingual",
     "classifier"),
    ("BertForSequenceClassification", "Qwen3-Reranker-lookalike", "classifier"),
])
def test_detected_from_architecture_and_name(arch: str, name: str, want: str) -> None:
    assert detect_scoring(_config(arch), [name]) == want


@pytest.mark.parametrize(("arch", "name"), [
    ("Qwen3ForCausalLM", "Qwen/Qwen3-0.6B"),  # the base LM, not the reranker
    ("Qwen2ForCausalLM", "Qwen3-Reranker-0.6B"),  # name and architecture disagree
    ("LlamaForCausalLM", "my-reranker"),
])
def test_a_causal_lm_without_a_recipe_names_the_flag(arch: str, name: str) -> None:
    with pytest.raises(UnknownScoring, match=re.escape("--scoring qwen3-reranker|mxbai")):
        detect_scoring(_config(arch), [name])


def test_the_flag_wins() -> None:
    assert detect_scoring(_config("Qwen3ForCausalLM"), ["anything"],
                          "qwen3-reranker") == "qwen3-reranker"
    assert detect_scoring(_config("XLMRobertaForSequenceClassification"), ["x"],
                          "classifier") == "classifier"
    with pytest.raises(UnknownScoring, match="choose one of"):
        detect_scoring(_config("Qwen3ForCausalLM"), ["x"], "yes-no")


@pytest.mark.parametrize(("arch", "asked"), [
    ("XLMRobertaForSequenceClassification", "qwen3-reranker"),  # a recipe on a cross-encoder
    ("Qwen3ForCausalLM", "classifier"),  # a head the causal LM does not have
])
def test_a_flag_that_does_not_fit_the_model_is_refused(arch: str, asked: str) -> None:
    with pytest.raises(UnknownScoring, match="does not fit this model"):
        detect_scoring(_config(arch), ["Qwen3-Reranker"], asked)
