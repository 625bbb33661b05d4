"""Several models in one process: a cross-encoder and a decoder reranker side by side, each
with its own queue, routed by the request's `model` (served name, last path part or alias)."""

from __future__ import annotations

import pytest

from tests.conftest import LiveServer, ServerFactory
from tests.reference import reference_scores
from tests.reference_decoders import reference_decoder_scores
from tests.samples import DOCS, QUERY


@pytest.fixture(scope="module")
def pair(module_servers: ServerFactory, xlmr_dir: str,
         decoder_dirs: dict[str, str]) -> LiveServer:
    return module_servers(
        [xlmr_dir, decoder_dirs["qwen3"]],
        served_model_name=["jina-reranker-v2-base-multilingual", "Qwen/Qwen3-Reranker-0.6B"],
        alias=["jina-reranker-v1-base-en=jina-reranker-v2-base-multilingual"],
    )


def _ranked(server: LiveServer, model: str | None, path: str = "/v1/rerank") -> dict[str, object]:
    body: dict[str, object] = {"query": QUERY, "documents": DOCS}
    if model is not None:
        body["model"] = model
    with server.client() as c:
        r = c.post(path, json=body)
    assert r.status_code == 200, r.text
    answer: dict[str, object] = r.json()
    return answer


def test_requests_reach_the_model_they_name(
    pair: LiveServer, xlmr_dir: str, decoder_dirs: dict[str, str]
) -> None:
    encoder = reference_scores(xlmr_dir, QUERY, DOCS)
    decoder = reference_decoder_scores(decoder_dirs["qwen3"], "qwen3-reranker", QUERY, DOCS)
    for model, want, served in [
        (None, encoder, "jina-reranker-v2-base-multilingual"),
        ("jina-reranker-v1-base-en", encoder, "jina-reranker-v2-base-multilingual"),  # alias
        ("Qwen/Qwen3-Reranker-0.6B", decoder, "Qwen/Qwen3-Reranker-0.6B"),
        ("Qwen3-Reranker-0.6B", decoder, "Qwen/Qwen3-Reranker-0.6B"),  # last path part
    ]:
        answer = _ranked(pair, model)
        assert answer["model"] == served
        for r in answer["results"]:  # type: ignore[attr-defined]
            assert abs(r["relevance_score"] - want[r["index"]]) < 1e-5, model


def test_an_unknown_model_is_404_listing_the_served_names(pair: LiveServer) -> None:
    with pair.client() as c:
        r = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "model": "bge-m3"})
    assert r.status_code == 404
    detail = r.json()["detail"]
    assert "'jina-reranker-v2-base-multilingual'" in detail
    assert "'Qwen/Qwen3-Reranker-0.6B'" in detail


def test_an_instruction_goes_to_the_model_that_takes_one(pair: LiveServer) -> None:
    with pair.client() as c:
        body = {"query": QUERY, "documents": DOCS, "instruction": "Find the red planet"}
        ok = c.post("/v1/rerank", json={**body, "model": "Qwen3-Reranker-0.6B"})
        refused = c.post("/v1/rerank", json=body)
    assert ok.status_code == 200
    assert refused.status_code == 422 and "takes no instruction" in refused.json()["detail"]


def test_models_lists_every_model_and_metrics_carry_its_name(pair: LiveServer) -> None:
    _ranked(pair, "Qwen3-Reranker-0.6B")
    with pair.client() as c:
        cards = {card["id"]: card for card in c.get("/v1/models").json()["data"]}
    assert list(cards) == ["jina-reranker-v2-base-multilingual", "Qwen/Qwen3-Reranker-0.6B"]
    jina, qwen = cards.values()
    assert jina["scoring"] == "classifier" and jina["aliases"] == ["jina-reranker-v1-base-en"]
    assert qwen["scoring"] == "qwen3-reranker" and qwen["takes_instruction"] is True
    assert qwen["backend"] == "native" and qwen["max_input_length"] == 512
    for model in cards:
        assert pair.metric("reranker_documents_scored_total", {"model": model}) >= len(DOCS)
        assert pair.metric("reranker_batch_token_budget", {"model": model}) == 4096
