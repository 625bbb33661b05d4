"""Drop-in compatibility: the official Cohere SDK for real, and the exact requests of the Jina
clients in LangChain, LlamaIndex and Haystack, of LlamaIndex's TEI client, of NVIDIA NIM's
clients (LangChain's and LlamaIndex's NVIDIARerank), of vLLM's score and rerank APIs, of
Infinity's and of Mixedbread's, replayed."""

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


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank", "/v1/reranking"])
def test_other_dialects_errors_carry_detail(server: LiveServer, path: str) -> None:
    with server.client(headers=AUTH) as c:
        field = "input" if path == "/v1/reranking" else "documents"
        r = c.post(path, json={"query": QUERY, field: "not a list"})
        assert r.status_code == 422 and field in r.json()["detail"]
        assert set(r.json()) == {"detail", "errors"}
        r = c.post(path, json={"query": QUERY, field: DOCS, "model": "rerank-v3.5"})
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


# -- NVIDIA NIM ---------------------------------------------------------------------------------
LONG_DOC = " ".join(f"Mars {i} is red and Venus {i} is hot" for i in range(60))


@pytest.mark.parametrize(("truncate", "windows"), [("END", slice(0, 1)), ("NONE", None),
                                                   (None, None)])
def test_nim_client_request(
    server: LiveServer, xlmr_dir: str, truncate: str | None, windows: slice | None
) -> None:
    """LangChain's and LlamaIndex's NVIDIARerank: {model, query: {text}, passages: [{text}],
    truncate} to {base_url}/ranking -> rankings by logit, highest first."""
    docs = [*DOCS, LONG_DOC]
    payload: dict[str, object] = {"model": "nvidia/llama-3.2-nv-rerankqa-1b-v2",
                                  "query": {"text": QUERY},
                                  "passages": [{"text": d} for d in docs]}
    if truncate is not None:
        payload["truncate"] = truncate
    with httpx.Client(base_url=server.url + "/v1", headers={"accept": "application/json",
                                                             **AUTH}) as c:
        r = c.post("/ranking", json={**payload, "model": "jina-reranker-v2-base-multilingual"})
        assert r.status_code == 200, r.text
        rankings = r.json()["rankings"]
        assert c.post("/ranking", json=payload).status_code == 404  # a model not served here
    assert sorted(x["index"] for x in rankings) == list(range(len(docs)))
    logits = [x["logit"] for x in rankings]
    assert logits == sorted(logits, reverse=True)
    for x in rankings:
        assert set(x) == {"index", "logit"}
        want = reference_logit(xlmr_dir, QUERY, docs[x["index"]],
                               windows=windows if x["index"] == len(DOCS) else None)
        assert abs(x["logit"] - want) < 1e-4


# -- vLLM ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/score", "/v1/score"])
def test_vllm_score_one_to_many(server: LiveServer, xlmr_dir: str, path: str) -> None:
    with server.client(headers=AUTH) as c:
        r = c.post(path, json={"model": "jina-reranker-v2-base-multilingual", "text_1": QUERY,
                               "text_2": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "jina-reranker-v2-base-multilingual"
    assert body["id"] == f"score-{r.headers['x-request-id']}"
    assert isinstance(body["created"], int)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    assert body["usage"]["completion_tokens"] == 0
    assert [d["index"] for d in body["data"]] == list(range(len(DOCS)))  # input order
    want = reference_scores(xlmr_dir, QUERY, DOCS)
    for d in body["data"]:
        assert d["object"] == "score" and abs(d["score"] - want[d["index"]]) < 1e-5


def test_vllm_score_pairs(server: LiveServer, xlmr_dir: str) -> None:
    """N:N scores pair i's text_1 with its text_2; str/str is one pair; a list of one text_1
    is 1:N."""
    queries = [QUERY, "Which planet has rings?", QUERY, "Which planet is hot?"]
    with server.client(headers=AUTH) as c:
        pairs = c.post("/v1/score", json={"text_1": queries, "text_2": DOCS}).json()["data"]
        single = c.post("/v1/score", json={"text_1": QUERY, "text_2": DOCS[1]}).json()["data"]
        one = c.post("/v1/score", json={"text_1": [QUERY], "text_2": DOCS[:2]}).json()["data"]
    for d in pairs:
        want = reference_scores(xlmr_dir, queries[d["index"]], [DOCS[d["index"]]])[0]
        assert abs(d["score"] - want) < 1e-5
    assert [d["index"] for d in pairs] == [0, 1, 2, 3]
    want = reference_scores(xlmr_dir, QUERY, DOCS[:2])
    assert len(single) == 1 and abs(single[0]["score"] - want[1]) < 1e-5
    assert [d["index"] for d in one] == [0, 1]
    assert all(abs(d["score"] - want[d["index"]]) < 1e-5 for d in one)


@pytest.mark.parametrize(("text_1", "text_2", "words"), [
    (["a", "b"], ["x", "y", "z"], "1:N"),
    ([], ["x"], "at least one"),
    ("a", [], "at least one"),
    ("a", 3, "text_2"),
])
def test_vllm_score_mistakes_are_422(
    server: LiveServer, text_1: object, text_2: object, words: str
) -> None:
    with server.client(headers=AUTH) as c:
        r = c.post("/v1/score", json={"text_1": text_1, "text_2": text_2})
    assert r.status_code == 422 and words in r.json()["detail"]
    error = r.json()["error"]  # vLLM's error object, for its clients
    assert error["type"] == "UnprocessableEntityError" and error["code"] == 422
    assert words in error["message"]


def test_rerank_with_documents_answers_like_vllm_and_infinity(
    server: LiveServer, xlmr_dir: str
) -> None:
    want = reference_scores(xlmr_dir, QUERY, DOCS)
    with server.client(headers=AUTH) as c:
        vllm = c.post("/rerank", json={"model": "jina-reranker-v2-base-multilingual",
                                       "query": QUERY, "documents": DOCS, "top_n": 3}).json()
        infinity = c.post("/rerank", json={"query": QUERY, "documents": DOCS,
                                           "return_documents": True, "raw_scores": True}).json()
        bare = c.post("/rerank", json={"query": QUERY, "documents": DOCS,
                                       "return_documents": False}).json()
        error = c.post("/rerank", json={"query": QUERY, "documents": DOCS, "top_n": -1})
    for body in (vllm, infinity, bare):
        assert body["object"] == "rerank" and isinstance(body["created"], int)
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] > 0
        assert body["model"] == "jina-reranker-v2-base-multilingual"
    assert len(vllm["results"]) == 3
    for r in vllm["results"]:
        assert r["document"] == {"text": DOCS[r["index"]]}
        assert abs(r["relevance_score"] - want[r["index"]]) < 1e-5
    for r in infinity["results"]:
        assert r["document"] == DOCS[r["index"]]
        assert abs(r["relevance_score"] - reference_logit(xlmr_dir, QUERY, DOCS[r["index"]])) < 1e-4
    assert all("document" not in r for r in bare["results"])
    assert error.status_code == 422 and error.json()["error_type"] == "Validation"


# -- top_k, Mixedbread ---------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "field"), [("/v1/rerank", "documents"),
                                             ("/v2/rerank", "documents"),
                                             ("/rerank", "documents"),
                                             ("/v1/reranking", "input")])
def test_top_k_is_read_as_top_n(server: LiveServer, path: str, field: str) -> None:
    with server.client(headers=AUTH) as c:
        body = c.post(path, json={"query": QUERY, field: DOCS, "top_k": 2}).json()
    results = body.get("results", body.get("data"))
    assert len(results) == 2
    assert [r["index"] for r in results] == [i for i, _ in _direct(server)[:2]]


def test_mixedbread_request(server: LiveServer, xlmr_dir: str) -> None:
    """Mixedbread's SDKs: {model, query, input, rank_fields, top_k, return_input} to
    /v1/reranking -> {data: [{index, score, input, object}], top_k, return_input, usage}."""
    items = [{"title": "Mars", "content": DOCS[1]}, {"title": "Venus", "content": DOCS[0]},
             {"title": "Saturn", "content": DOCS[3]}]
    with server.client(headers=AUTH) as c:
        body = c.post("/v1/reranking", json={
            "model": "jina-reranker-v2-base-multilingual", "query": QUERY, "input": items,
            "rank_fields": ["content"], "top_k": 2, "return_input": True}).json()
    assert body["object"] == "list" and body["top_k"] == 2 and body["return_input"] is True
    assert body["usage"]["total_tokens"] > 0
    want = reference_scores(xlmr_dir, QUERY, [f"content: {i['content']}" for i in items])
    assert [d["index"] for d in body["data"]] == sorted(range(3), key=lambda i: -want[i])[:2]
    for d in body["data"]:
        assert d["object"] == "rank_result" and d["input"] == items[d["index"]]
        assert abs(d["score"] - want[d["index"]]) < 1e-5


# -- every dialect ------------------------------------------------------------------------------
INSTRUCTED = [
    ("/v1/rerank", {"query": QUERY, "documents": DOCS}),
    ("/v2/rerank", {"query": QUERY, "documents": DOCS}),
    ("/rerank", {"query": QUERY, "texts": DOCS}),
    ("/rerank", {"query": QUERY, "documents": DOCS}),
    ("/v1/ranking", {"query": {"text": QUERY}, "passages": [{"text": d} for d in DOCS]}),
    ("/v1/score", {"text_1": QUERY, "text_2": DOCS}),
    ("/v1/reranking", {"query": QUERY, "input": DOCS}),
]


@pytest.mark.parametrize(("path", "body"), INSTRUCTED)
def test_a_cross_encoder_refuses_an_instruction(
    server: LiveServer, path: str, body: dict[str, object]
) -> None:
    with server.client(headers=AUTH) as c:
        assert c.post(path, json=body).status_code == 200
        r = c.post(path, json={**body, "instruction": "Judge relevance for a web search"})
    assert r.status_code == 422 and "takes no instruction" in r.json()["detail"]


def test_every_dialect_is_documented_with_examples(server: LiveServer) -> None:
    with server.client(headers=AUTH) as c:
        spec = c.get("/openapi.json").json()
        for path in {p for p, _ in INSTRUCTED} | {"/score"}:
            post = spec["paths"][path]["post"]
            content = post["requestBody"]["content"]["application/json"]
            assert content["examples"], path
            assert "200" in post["responses"] and "422" in post["responses"]
            for example in content["examples"].values():  # each example works as it is
                r = c.post(path, json=example["value"])
                assert r.status_code == 200, (path, r.text)


def test_many_pairs_are_one_request_for_admission(
    server_factory: ServerFactory, xlmr_dir: str
) -> None:
    """N:N scoring with many distinct queries is admitted as one request: on an idle server
    with a tight queue-time limit it is answered, as the same pairs sent 1:N are."""
    server = server_factory(xlmr_dir, max_queue_time_s=0.02)
    texts = [f"{DOCS[i % len(DOCS)]} ({i})" for i in range(300)]
    queries = [f"{QUERY} {i}" for i in range(300)]
    with server.client() as c:
        one = c.post("/v1/score", json={"text_1": QUERY, "text_2": texts})
        many = c.post("/v1/score", json={"text_1": queries, "text_2": texts})
        zero = c.post("/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 0})
    assert one.status_code == 200, one.text
    assert many.status_code == 200, many.text
    assert [d["index"] for d in many.json()["data"]] == list(range(300))
    assert len(zero.json()["results"]) == len(DOCS)  # vLLM's top_n 0: every result
