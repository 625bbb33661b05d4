"""Decoder ("LLM") rerankers, scored exactly as their model cards do: tiny random Qwen3, Qwen2
and Gemma models with locally trained tokenizers, against stock transformers'
AutoModelForCausalLM and each card's procedure (tests/reference_decoders.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.engine.loading import load_model
from app.errors import ModelUnavailable
from tests.conftest import LiveServer, ServerFactory
from tests.reference_decoders import prompts, reference_decoder_logit, reference_decoder_scores
from tests.samples import DOCS, QUERY

RECIPE = {"qwen3": "qwen3-reranker", "qwen2": "mxbai-rerank-v2", "gemma": "bge-reranker-gemma"}
LONG_DOC = " ".join(f"Mars {i} is red and Venus {i} is hot, said the report." for i in range(90))
MIXED = [*DOCS, "", "Mars", LONG_DOC]


def _scores(model_dir: str, backend: str, query: str, docs: list[str],
            instruction: str | None = None, dtype: str = "float32") -> list[float]:
    """The engine's scores, the way the service computes them: one batch of every window,
    best window per document, sigmoid in float32."""
    loaded = load_model(model_dir, device="cpu", dtype=dtype, backend=backend)
    encoded = loaded.encoder.encode(query, docs, instruction=instruction)
    logits = loaded.scorers[0].score([p.ids for p in encoded.pairs],
                                     [p.split for p in encoded.pairs])
    best = np.full(len(docs), -np.inf, dtype=np.float32)
    for pair, logit in zip(encoded.pairs, logits, strict=True):
        best[pair.doc] = max(best[pair.doc], logit)
    return (1 / (1 + np.exp(-best.astype(np.float64)))).tolist()


@pytest.mark.parametrize("family", ["qwen3", "qwen2", "gemma"])
@pytest.mark.parametrize("instruction", [None, "Find the red one"])
def test_prompts_are_the_model_cards_tokens(
    decoder_dirs: dict[str, str], family: str, instruction: str | None
) -> None:
    """Token for token: a document that fits is the model card's prompt; a long one, its
    windows; a query longer than max_query_length is cut at a token's end."""
    model_dir = decoder_dirs[family]
    loaded = load_model(model_dir, device="cpu", dtype="float32")
    long_query = " ".join(["Which red planet"] * 200)
    for query in (QUERY, long_query):
        encoded = loaded.encoder.encode(query, MIXED, instruction=instruction)
        for doc_index, doc in enumerate(MIXED):
            got = [p.ids.tolist() for p in encoded.pairs if p.doc == doc_index]
            want, _ = prompts(model_dir, RECIPE[family], query, doc, instruction)
            assert got == want, (family, doc_index)


@pytest.mark.parametrize(("family", "backend"), [
    ("qwen3", "native"), ("qwen3", "transformers"), ("qwen2", "native"),
    ("qwen2", "transformers"), ("gemma", "transformers"),
])
def test_scores_match_the_model_card_in_float32(
    decoder_dirs: dict[str, str], family: str, backend: str
) -> None:
    """A batch mixing lengths (an empty document, a one-word one, one long enough for several
    windows), every score within 1e-5 of the reference."""
    model_dir = decoder_dirs[family]
    got = _scores(model_dir, backend, QUERY, MIXED)
    want = reference_decoder_scores(model_dir, RECIPE[family], QUERY, MIXED)
    assert np.abs(np.array(got) - np.array(want)).max() < 1e-5, (got, want)
    assert len(set(np.round(want, 6))) > 3  # the random model does tell documents apart


@pytest.mark.parametrize("family", ["qwen3", "qwen2", "gemma"])
def test_the_instruction_is_part_of_the_prompt(decoder_dirs: dict[str, str], family: str) -> None:
    model_dir = decoder_dirs[family]
    backend = "transformers" if family == "gemma" else "native"
    asked = "Find the planet the question names"
    got = _scores(model_dir, backend, QUERY, DOCS[:2], instruction=asked)
    want = reference_decoder_scores(model_dir, RECIPE[family], QUERY, DOCS[:2], asked)
    default = reference_decoder_scores(model_dir, RECIPE[family], QUERY, DOCS[:2])
    assert np.abs(np.array(got) - np.array(want)).max() < 1e-5
    assert np.abs(np.array(want) - np.array(default)).max() > 1e-6


def test_a_long_document_is_windowed_not_cut(decoder_dirs: dict[str, str]) -> None:
    model_dir = decoder_dirs["qwen3"]
    loaded = load_model(model_dir, device="cpu", dtype="float32")
    encoded = loaded.encoder.encode(QUERY, [LONG_DOC])
    assert len(encoded.pairs) >= 2
    assert max(len(p.ids) for p in encoded.pairs) <= loaded.encoder.max_length == 512
    want = reference_decoder_logit(model_dir, "qwen3-reranker", QUERY, LONG_DOC)
    got = loaded.scorers[0].score([p.ids for p in encoded.pairs], [0] * len(encoded.pairs))
    assert abs(float(got.max()) - want) < 1e-4


def test_bfloat16_is_within_2e2_of_float32(decoder_dirs: dict[str, str]) -> None:
    model_dir = decoder_dirs["qwen3"]
    fp32 = np.array(_scores(model_dir, "native", QUERY, MIXED))
    bf16 = np.array(_scores(model_dir, "native", QUERY, MIXED, dtype="bfloat16"))
    assert np.abs(fp32 - bf16).max() < 2e-2


def test_a_causal_lm_without_a_recipe_says_which_flag(
    decoder_dirs: dict[str, str], tmp_path: Path
) -> None:
    anonymous = tmp_path / "my-finetune"
    anonymous.symlink_to(decoder_dirs["qwen3"], target_is_directory=True)
    with pytest.raises(ModelUnavailable, match="--scoring qwen3-reranker"):
        load_model(str(anonymous), device="cpu", dtype="float32")
    loaded = load_model(str(anonymous), device="cpu", dtype="float32", scoring="qwen3-reranker")
    assert loaded.scoring == "qwen3-reranker" and loaded.backend == "native"


def test_served_over_http_with_an_instruction(
    server_factory: ServerFactory, decoder_dirs: dict[str, str]
) -> None:
    model_dir = decoder_dirs["qwen3"]
    server: LiveServer = server_factory(model_dir, served_model_name="Qwen3-Reranker-0.6B",
                                        default_instruction="Judge planets")
    with server.client() as c:
        card = c.get("/v1/models").json()["data"][0]
        assert card["scoring"] == "qwen3-reranker" and card["takes_instruction"] is True
        asked = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS,
                                           "instruction": "Find the red one"}).json()
        default = c.post("/v2/rerank", json={"query": QUERY, "documents": DOCS}).json()
    want = reference_decoder_scores(model_dir, "qwen3-reranker", QUERY, DOCS, "Find the red one")
    for r in asked["results"]:
        assert abs(r["relevance_score"] - want[r["index"]]) < 1e-5
    want = reference_decoder_scores(model_dir, "qwen3-reranker", QUERY, DOCS, "Judge planets")
    for r in default["results"]:
        assert abs(r["relevance_score"] - want[r["index"]]) < 1e-5
