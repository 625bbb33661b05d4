"""Scores over HTTP equal stock transformers (fp32) for every kind of input."""

from __future__ import annotations

import pytest

from tests.conftest import LiveServer
from tests.reference import reference_pairs, reference_scores, reference_tokens

TOL = 1e-5

MULTILINGUAL = [
    "Mars, known for its reddish appearance, is often referred to as the Red Planet.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "火星因其红色外观而被称为红色星球。",
    "Марс часто называют красной планетой.",
    "الثعلب البني السريع يقفز فوق الكلب الكسول",
    "SELECT name FROM planets WHERE color = 'red';",
    "",
    "   \n\t ",
    "emoji 🚀🔴 and accents: àéîõü ß ñ",
]


def _long_doc(words: int) -> str:
    base = "Jupiter the largest planet has a prominent red spot and many moons orbiting it".split()
    return " ".join(base[i % len(base)] + str(i % 7) for i in range(words))


def _rerank(server: LiveServer, query: str, documents: list, **extra: object) -> dict:
    with server.client() as c:
        r = c.post("/v1/rerank", json={"query": query, "documents": documents, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def _assert_parity(server: LiveServer, model_dir: str, query: str, docs: list[str]) -> None:
    body = _rerank(server, query, docs)
    got = {r["index"]: r["relevance_score"] for r in body["results"]}
    want = reference_scores(model_dir, query, docs)
    diffs = {i: abs(got[i] - w) for i, w in enumerate(want)}
    assert max(diffs.values()) < TOL, f"got {got}\nwant {want}"
    assert body["usage"]["total_tokens"] == reference_tokens(model_dir, query, docs)


# (server fixture, directory of the same weights in stock naming for the reference)
SERVERS = [
    ("xlmr_server", "xlmr_dir"),
    ("jina_server", "xlmr_dir"),
    ("bert_server", "bert_dir"),
    ("electra_server", "electra_dir"),  # a family served by the transformers backend
]


@pytest.mark.parametrize(("server_name", "ref_dir"), SERVERS)
def test_multilingual_scores_match_transformers(
    server_name: str, ref_dir: str, request: pytest.FixtureRequest
) -> None:
    server = request.getfixturevalue(server_name)
    model_dir = request.getfixturevalue(ref_dir)
    _assert_parity(server, model_dir, "Which planet is known as the Red Planet?", MULTILINGUAL)


@pytest.mark.parametrize(("server_name", "ref_dir"), SERVERS)
def test_long_documents_are_windowed_not_truncated(
    server_name: str, ref_dir: str, request: pytest.FixtureRequest
) -> None:
    server = request.getfixturevalue(server_name)
    model_dir = request.getfixturevalue(ref_dir)
    query = "red spot"
    docs = [_long_doc(40), _long_doc(300), _long_doc(1200), "short one"]
    assert len(reference_pairs(model_dir, query, docs[2])) > 5  # really several windows
    _assert_parity(server, model_dir, query, docs)


def test_a_late_window_decides_the_score(xlmr_server: LiveServer, xlmr_dir: str) -> None:
    """The best passage sits far past the first window; truncation would miss it."""
    query = "Mars is the Red Planet"
    filler = _long_doc(400)
    docs = [filler, filler + " Mars is the Red Planet. " + filler]
    _assert_parity(xlmr_server, xlmr_dir, query, docs)


def test_long_query_is_truncated_like_the_model(xlmr_server: LiveServer, xlmr_dir: str) -> None:
    _assert_parity(xlmr_server, xlmr_dir, _long_doc(500), ["Mars", _long_doc(200)])


def test_object_documents_score_their_text(xlmr_server: LiveServer, xlmr_dir: str) -> None:
    query = "red planet"
    docs = [{"text": "Mars is red", "id": 1}, {"text": "Venus is hot", "meta": {"k": [1, 2]}}]
    body = _rerank(xlmr_server, query, docs)
    want = reference_scores(xlmr_dir, query, [d["text"] for d in docs])
    for r in body["results"]:
        assert abs(r["relevance_score"] - want[r["index"]]) < TOL
        assert r["document"] == docs[r["index"]]


def test_pair_layout_is_the_tokenizers_own(xlmr_dir: str, bert_dir: str) -> None:
    """For a document that fits, the window layout equals the tokenizer's own pair encoding."""
    from transformers import AutoTokenizer

    for model_dir in (xlmr_dir, bert_dir):
        tok = AutoTokenizer.from_pretrained(model_dir)
        enc = tok("which planet", "Mars is red", return_token_type_ids=True)
        [(ids, types)] = reference_pairs(model_dir, "which planet", "Mars is red")
        assert ids == enc["input_ids"]
        assert types == enc["token_type_ids"]
