"""Drop-in compatibility: the official Cohere SDK for real, and the exact requests of the Jina
clients in LangChain, LlamaIndex and Haystack and of LlamaIndex's TEI client, replayed."""

from __future__ import annotations

import math

import cohere
import httpx
import orjson
import pytest

from tests.conftest import LiveServer, ServerFactory
from tests.reference import reference_logit, reference_scores
from tests.samples import DOCS, QUERY

KEY = "sk-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(module_servers: ServerFactory, xlmr_dir: str) -> LiveServer:
    return module_servers(xlmr_dir, served_model_name="jina-reranker-v2-base-multilingual",
                          api_keys=[KEY])


def _direct(server: LiveServer, docs: list[str] = DOCS) -> list[tuple[int, float]]:
    with server.client(headers=AUTH) as c:
        body = c.post("/v1/rerank", json={"query": QUERY, "documents": docs}).json()
    return [(r["index"], r["relevance_score"]) for r in body["results"]]


# -- the official Cohere SDK, run for real -----------------------------------------------------
def test_cohere_sdk_v1_client(server: LiveServer) -> None:
    client = cohere.Client(api_key=KEY, base_url=server.url)
    response = client.rerank(
        model="jina-reranker-v2-base-multilingual", query=QUERY, documents=DOCS, top_n=3,
        return_documents=True,
    )
    direct = _direct(server)
    assert [(r.index, r.relevance_score) for r in response.results] == direct[:3]
    assert response.results[0].document is not None
    assert response.results[0].document.text == DOCS[direct[0][0]]
    assert response.id and response.meta is not None
    assert response.meta.billed_units is not None and response.meta.billed_units.search_units == 1


def test_cohere_sdk_v1_structured_documents_with_rank_fields(
    server: LiveServer, xlmr_dir: str
) -> None:
    client = cohere.Client(api_key=KEY, base_url=server.url)
    docs = [{"title": "Mars", "body": "the red planet", "id": 1},
            {"title": "Venus", "body": "the hot planet", "id": 2}]
    response = client.rerank(model="jina-reranker-v2-base-multilingual", query=QUERY,
                             documents=docs, rank_fields=["title", "body"])
    want = reference_scores(xlmr_dir, QUERY, [f"title: {d['title']}\nbody: {d['body']}"
                                              for d in docs])
    for r in response.results:
        assert abs(r.relevance_score - want[r.index]) < 1e-5


def test_cohere_sdk_v2_client(server: LiveServer) -> None:
    client = cohere.ClientV2(api_key=KEY, base_url=server.url)
    response = client.rerank(
        model="jina-reranker-v2-base-multilingual", query=QUERY, documents=DOCS, top_n=4
    )
    assert [(r.index, r.relevance_score) for r in response.results] == _direct(server)
    assert response.meta is not None and response.meta.tokens is not None
    assert response.meta.tokens.input_tokens and response.meta.tokens.input_tokens > 0
    assert response.meta.api_version is not None and response.meta.api_version.version == "2"


def test_cohere_v2_max_tokens_per_doc_cuts_documents(server: LiveServer, xlmr_dir: str) -> None:
    long_doc = " ".join(["filler words here"] * 60 + ["Mars is the Red Planet"])
    with server.client(headers=AUTH) as c:
        body = c.post("/v2/rerank", json={"model": "jina-reranker-v2-base-multilingual",
                                          "query": QUERY, "documents": [long_doc],
                                          "max_tokens_per_doc": 20, "priority": 1}).json()
    want = 1 / (1 + math.exp(-reference_logit(xlmr_dir, QUERY, long_doc, cut=20)))
    assert abs(body["results"][0]["relevance_score"] - want) < 1e-5
    assert set(body) == {"id", "results", "meta"}


# -- Jina clients, replayed from their source ---------------------------------------------------
@pytest.mark.parametrize(
    ("client", "payload", "headers"),
    [
        # langchain_community.document_compressors.JinaRerank
        ("langchain", {"query": QUERY, "documents": DOCS,
                       "model": "jina-reranker-v2-base-multilingual", "top_n": 3},
         {**AUTH, "Accept-Encoding": "identity"}),
        # llama_index.postprocessor.jinaai_rerank.JinaRerank
        ("llamaindex", {"query": QUERY, "documents": DOCS,
                        "model": "jina-reranker-v2-base-multilingual", "top_n": 2},
         {**AUTH, "Accept-Encoding": "identity"}),
        # haystack_integrations.components.rankers.jina.JinaRanker (top_k unset: top_n null)
        ("haystack", {"query": QUERY, "documents": DOCS,
                      "model": "jina-reranker-v2-base-multilingual", "top_n": None},
         {**AUTH, "Accept-Encoding": "identity", "Content-type": "application/json"}),
        # LiteLLM's Jina rerank (exclude_none request, return_documents and rank_fields)
        ("litellm", {"model": "jina-reranker-v2-base-multilingual", "query": QUERY,
                     "documents": DOCS, "top_n": 2, "return_documents": True},
         {**AUTH, "accept": "application/json", "content-type": "application/json"}),
    ],
)
def test_jina_client_requests(
    server: LiveServer, client: str, payload: dict[str, object], headers: dict[str, str]
) -> None:
    with httpx.Client(base_url=server.url, headers=headers) as c:
        r = c.post("/v1/rerank", content=orjson.dumps(payload))
    assert r.status_code == 200, r.text
    resp = r.json()
    assert "results" in resp  # what every one of them checks first
    top_n = payload["top_n"]
    assert len(resp["results"]) == (top_n if isinstance(top_n, int) else len(DOCS))
    for result in resp["results"]:
        assert isinstance(result["index"], int) and 0 <= result["index"] < len(DOCS)
        assert isinstance(result["relevance_score"], float)
    assert isinstance(resp["model"], str)  # Haystack copies model and usage into meta
    assert isinstance(resp["usage"]["total_tokens"], int)
    assert [(x["index"], x["relevance_score"]) for x in resp["results"]] == _direct(server)[
        : len(resp["results"])
    ]


# -- TEI ----------------------------------------------------------------------------------------
def test_tei_client_request(server: LiveServer, xlmr_dir: str) -> None:
    """llama_index.postprocessor.tei_rerank: {"query", "texts"} -> [{"index", "score"}]."""
    headers = {"Content-Type": "application/json", **AUTH}
    with httpx.Client(base_url=server.url, headers=headers) as c:
        scores = c.post("/rerank", json={"query": QUERY, "texts": DOCS}).json()
    assert isinstance(scores, list) and len(scores) == len(DOCS)
    assert [s["score"] for s in scores] == sorted((s["score"] for s in scores), reverse=True)
    want = reference_scores(xlmr_dir, QUERY, DOCS)
    for s in scores:
        assert set(s) == {"index", "score"} and abs(s["score"] - want[s["index"]]) < 1e-5


def test_tei_raw_scores_and_return_text(server: LiveServer, xlmr_dir: str) -> None:
    with server.client(headers=AUTH) as c:
        raw = c.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True,
                                      "return_text": True}).json()
    for s in raw:
        assert abs(s["score"] - reference_logit(xlmr_dir, QUERY, DOCS[s["index"]])) < 1e-4
        assert s["text"] == DOCS[s["index"]]


@pytest.mark.parametrize(("direction", "windows"), [("Right", slice(0, 1)),
                                                    ("Left", slice(-1, None))])
def test_tei_truncate_scores_one_window(
    server: LiveServer, xlmr_dir: str, direction: str, windows: slice
) -> None:
    doc = " ".join(f"Mars {i} is red and Venus {i} is hot" for i in range(60))
    with server.client(headers=AUTH) as c:
        [s] = c.post("/rerank", json={"query": QUERY, "texts": [doc], "truncate": True,
                                      "truncation_direction": direction,
                                      "raw_scores": True}).json()
    assert abs(s["score"] - reference_logit(xlmr_dir, QUERY, doc, windows=windows)) < 1e-4


def test_tei_errors_carry_error_and_error_type(server: LiveServer) -> None:
    with server.client(headers=AUTH) as c:
        r = c.post("/rerank", json={"query": QUERY})
        assert r.status_code == 422
        body = r.json()
        assert body["error_type"] == "Validation" and body["error"] == body["detail"]
        r = c.post("/rerank", content=b"{", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error_type"] == "Validation"
    r = httpx.post(f"{server.url}/rerank", json={"query": "q", "texts": ["a"]})
    assert r.status_code == 401 and r.json()["error_type"] == "Unauthorized"


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_other_dialects_errors_carry_detail(server: LiveServer, path: str) -> None:
    with server.client(headers=AUTH) as c:
        r = c.post(path, json={"query": QUERY, "documents": "not a list"})
        assert r.status_code == 422 and "documents" in r.json()["detail"]
        r = c.post(path, json={"query": QUERY, "documents": DOCS, "model": "rerank-v3.5"})
        assert r.status_code == 404 and "jina-reranker-v2-base-multilingual" in r.json()["detail"]


# -- structured documents and request ids ---------------------------------------------------------
def test_object_without_text_is_ranked_on_sorted_json(server: LiveServer, xlmr_dir: str) -> None:
    tools = [
        {"name": "get_weather", "description": "Weather for a city",
         "parameters": {"city": {"type": "string"}}},
        {"name": "sql_query", "parameters": {"sql": {"type": "string"}},
         "description": "Run SQL on the sales table"},
    ]
    with server.client(headers=AUTH) as c:
        body = c.post("/v1/rerank", json={"query": "what is the weather in Paris",
                                          "documents": tools}).json()
    texts = [orjson.dumps(t, option=orjson.OPT_SORT_KEYS).decode() for t in tools]
    want = reference_scores(xlmr_dir, "what is the weather in Paris", texts)
    for r in body["results"]:
        assert abs(r["relevance_score"] - want[r["index"]]) < 1e-5
        assert r["document"] == tools[r["index"]]


def test_request_id_is_echoed_or_generated(server: LiveServer) -> None:
    with server.client(headers=AUTH) as c:
        r = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS},
                   headers={"x-request-id": "trace-123"})
        assert r.headers["x-request-id"] == "trace-123" and r.json()["id"] == "trace-123"
        r = c.post("/v2/rerank", json={"query": QUERY, "documents": DOCS})
        generated = r.headers["x-request-id"]
        assert len(generated) == 32 and r.json()["id"] == generated
        r = c.get("/health", headers={"x-request-id": "bad id with spaces"})
        assert r.headers["x-request-id"] != "bad id with spaces"
