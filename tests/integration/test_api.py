"""The Jina dialect over real HTTP: ordering, options, usage, errors, ops endpoints."""

from __future__ import annotations

import socket

import httpx
import pytest

from app.config import Settings
from app.runtime import batch_token_budget
from tests.cli_server import free_port
from tests.conftest import LiveServer, ServerFactory
from tests.reference import reference_scores, reference_tokens
from tests.samples import DOCS, QUERY


def test_results_sorted_by_score_with_documents(client: httpx.Client, xlmr_dir: str) -> None:
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "test-xlmr"
    scores = [x["relevance_score"] for x in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert sorted(x["index"] for x in body["results"]) == [0, 1, 2, 3]
    want = reference_scores(xlmr_dir, QUERY, DOCS)
    expected_order = sorted(range(4), key=lambda i: (-want[i], i))
    assert [x["index"] for x in body["results"]] == expected_order
    for x in body["results"]:
        assert x["document"] == {"text": DOCS[x["index"]]}
    assert body["usage"]["total_tokens"] == reference_tokens(xlmr_dir, QUERY, DOCS)


def test_ties_are_ordered_by_index(client: httpx.Client, xlmr_dir: str) -> None:
    docs = ["same text", "other", "same text", "same text"]
    body = client.post("/v1/rerank", json={"query": "q", "documents": docs}).json()
    # identical documents are scored once: exact ties, and their tokens fed once
    assert body["usage"]["total_tokens"] == reference_tokens(xlmr_dir, "q", ["same text", "other"])
    same = [x["index"] for x in body["results"] if docs[x["index"]] == "same text"]
    assert same == [0, 2, 3]
    assert len({x["relevance_score"] for x in body["results"] if x["index"] in same}) == 1


@pytest.mark.parametrize(("top_n", "count"), [(1, 1), (2, 2), (4, 4), (50, 4)])
def test_top_n_caps_results(client: httpx.Client, top_n: int, count: int) -> None:
    full = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}).json()
    body = client.post(
        "/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": top_n}
    ).json()
    assert body["results"] == full["results"][:count]


def test_return_documents_false_omits_them(client: httpx.Client) -> None:
    body = client.post(
        "/v1/rerank", json={"query": QUERY, "documents": DOCS, "return_documents": False}
    ).json()
    assert all(set(x) == {"index", "relevance_score"} for x in body["results"])


def test_object_documents_echo_every_field(client: httpx.Client) -> None:
    docs = [{"text": "Mars", "id": "a", "tags": ["x", 1], "nested": {"n": None}}, "plain"]
    body = client.post("/v1/rerank", json={"query": QUERY, "documents": docs}).json()
    by_index = {x["index"]: x["document"] for x in body["results"]}
    assert by_index == {0: docs[0], 1: {"text": "plain"}}


def test_empty_document_list_is_an_empty_ranking(client: httpx.Client) -> None:
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": []})
    assert r.status_code == 200
    assert r.json()["results"] == [] and r.json()["usage"] == {"total_tokens": 0}


@pytest.mark.parametrize("name", ["test-xlmr", None])
def test_served_model_name_is_accepted(client: httpx.Client, name: str | None) -> None:
    body = {"query": QUERY, "documents": DOCS[:1], "model": name}
    assert client.post("/v1/rerank", json=body).status_code == 200


def test_other_model_name_is_404_naming_the_served_one(client: httpx.Client) -> None:
    r = client.post(
        "/v1/rerank", json={"query": QUERY, "documents": DOCS, "model": "jina-reranker-v1"}
    )
    assert r.status_code == 404
    assert "test-xlmr" in r.json()["detail"]


def test_timing_headers(client: httpx.Client) -> None:
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
    for header in ("x-queue-time", "x-inference-time", "x-total-time", "x-tokenization-time"):
        assert float(r.headers[header]) >= 0
    assert float(r.headers["x-inference-time"]) > 0


# -- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "headers", "status", "needle"),
    [
        (b'{"query": "q", "documents": [', {"content-type": "application/json"}, 400, "JSON"),
        (b"not json at all", {"content-type": "application/json"}, 400, "JSON"),
        (b'{"query": "q"}', {"content-type": "application/json"}, 422, "documents"),
        (b'{"documents": ["a"]}', {"content-type": "application/json"}, 422, "query"),
        (b'{"query": 5, "documents": ["a"]}', {"content-type": "application/json"}, 422, "query"),
        (b'{"query": "q", "documents": "a"}', {"content-type": "application/json"}, 422,
         "documents"),
        (b'{"query": "q", "documents": [1]}', {"content-type": "application/json"}, 422,
         "documents.0"),
        (b'{"query": "q", "documents": [{"text": 5}]}',
         {"content-type": "application/json"}, 422, "'text'"),
        (b'{"query": "q", "documents": ["a"], "top_n": -1}',
         {"content-type": "application/json"}, 422, "top_n"),
        (b'{"query": null, "documents": ["a"]}', {"content-type": "application/json"}, 422,
         "query"),
        (b'{"query": "\\ud800", "documents": ["a"]}', {"content-type": "application/json"}, 400,
         "surrogate"),
        (b'["q", "a"]', {"content-type": "application/json"}, 422, "body"),
        (b"query=q&documents=a", {"content-type": "application/x-www-form-urlencoded"}, 415,
         "application/json"),
    ],
)
def test_client_mistakes_get_4xx_with_detail(
    client: httpx.Client, content: bytes, headers: dict[str, str], status: int, needle: str
) -> None:
    r = client.post("/v1/rerank", content=content, headers=headers)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and needle in detail
    assert client.post("/v1/rerank", json={"query": "q", "documents": ["a"]}).status_code == 200


def test_unknown_route_and_wrong_method_are_json(client: httpx.Client) -> None:
    r = client.get("/v1/rerank")
    assert r.status_code == 405 and "detail" in r.json()
    r = client.post("/v1/nope", json={})
    assert r.status_code == 404 and "detail" in r.json()


def test_too_many_documents_names_the_limit(
    server_factory: ServerFactory, xlmr_dir: str
) -> None:
    server = server_factory(xlmr_dir, max_documents=3, max_body_bytes=2048)
    with server.client() as c:
        r = c.post("/v1/rerank", json={"query": "q", "documents": ["a"] * 4})
        assert r.status_code == 413
        assert "max_documents" in r.json()["detail"] and "3" in r.json()["detail"]

        big = {"query": "q", "documents": ["x" * 3000]}
        r = c.post("/v1/rerank", json=big)
        assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"]

        def chunks():  # no content-length: the limit still holds while streaming
            yield b'{"query": "q", "documents": ["'
            for _ in range(10):
                yield b"y" * 500
            yield b'"]}'

        r = c.post("/v1/rerank", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "2048" in r.json()["detail"]


# -- auth -------------------------------------------------------------------------------------
def test_api_keys_guard_every_api_route(server_factory: ServerFactory, xlmr_dir: str) -> None:
    server = server_factory(xlmr_dir, api_keys=["k-one", "k-two"])
    body = {"query": "q", "documents": ["a"]}
    with server.client() as c:
        r = c.post("/v1/rerank", json=body)
        assert r.status_code == 401 and "Authorization: Bearer" in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer" and r.headers["x-request-id"]
        r = c.post("/v1/rerank", json=body, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and "invalid" in r.json()["detail"]
        r = c.post("/v1/rerank", json=body, headers={"Authorization": "Basic k-one"})
        assert r.status_code == 401
        routes = [("POST", "/v1/rerank", body), ("POST", "/v2/rerank", body),
                  ("POST", "/rerank", {"query": "q", "texts": ["a"]}), ("POST", "/rerank", body),
                  ("POST", "/v1/ranking", {"query": {"text": "q"}, "passages": [{"text": "a"}]}),
                  ("POST", "/score", {"text_1": "q", "text_2": ["a"]}),
                  ("POST", "/v1/score", {"text_1": "q", "text_2": ["a"]}),
                  ("POST", "/v1/reranking", {"query": "q", "input": ["a"]}),
                  ("GET", "/v1/models", None)]
        for method, path, payload in routes:
            assert c.request(method, path, json=payload).status_code == 401, path
            for key in ("k-one", "k-two"):
                r = c.request(method, path, json=payload,
                              headers={"Authorization": f"Bearer {key}"})
                assert r.status_code == 200, (path, r.text)
        tei = c.post("/rerank", json={"query": "q", "texts": ["a"]}).json()
        assert tei["error_type"] == "Unauthorized" and tei["error"] == tei["detail"]
        assert c.get("/no/such/route").status_code == 401  # nothing is revealed without a key
        for path in ("/health", "/ready", "/metrics", "/docs", "/openapi.json",
                     "/docs/assets/swagger-ui-bundle.js"):
            assert c.get(path).status_code == 200, path
    assert server.metric("reranker_failures_total", {"reason": "unauthorized"}) >= 7


def test_a_missing_key_is_refused_before_the_body_is_read(
    server_factory: ServerFactory, xlmr_dir: str
) -> None:
    server = server_factory(xlmr_dir, api_keys=["k-one"])
    host, port = server.url.removeprefix("http://").split(":")
    # 30 MB announced (under the 32 MiB body limit) and never sent: the server must answer
    # from the headers alone, not wait for the body
    head = (f"POST /v1/rerank HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {30_000_000}\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        answer = sock.recv(4096).decode("latin-1")
    assert answer.startswith("HTTP/1.1 401"), answer[:200]
    assert "missing API key" in answer


# -- ops endpoints ----------------------------------------------------------------------------
def test_models_reports_what_is_served(client: httpx.Client) -> None:
    [card] = client.get("/v1/models").json()["data"]
    assert card["id"] == "test-xlmr"
    assert card["max_input_length"] == 128
    assert card["dtype"] == "float32" and card["devices"] == ["cpu"]
    assert card["backend"] == "native" and card["attention"] == "sdpa-per-sequence"
    assert card["max_batch_tokens"] == 4096  # the CPU default


def test_the_batch_budget_defaults_by_device(xlmr_server: LiveServer) -> None:
    assert xlmr_server.metric("reranker_batch_token_budget") == 4096
    assert batch_token_budget(Settings(), ["cpu"]) == 4096
    assert batch_token_budget(Settings(), ["cuda:0", "cuda:1"]) == 16384
    assert batch_token_budget(Settings(), ["cuda:0", "cpu"]) == 4096
    assert batch_token_budget(Settings(max_batch_tokens=777), ["cuda:0"]) == 777


def test_health_ready_docs(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready"}
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/v1/rerank" in spec["paths"]


def test_metrics_report_each_stage(xlmr_server: LiveServer) -> None:
    before = xlmr_server.metric(
        "reranker_requests_total", {"route": "/v1/rerank", "status": "200"}
    )
    docs_before = xlmr_server.metric("reranker_documents_scored_total")
    with xlmr_server.client() as c:
        assert c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}).status_code == 200
        assert c.post("/v1/rerank", json={"query": 1, "documents": DOCS}).status_code == 422
    m = xlmr_server.metric
    assert m("reranker_requests_total", {"route": "/v1/rerank", "status": "200"}) == before + 1
    assert m("reranker_requests_total", {"route": "/v1/rerank", "status": "422"}) >= 1
    assert m("reranker_documents_scored_total") == docs_before + 4
    assert m("reranker_failures_total", {"reason": "invalid_request"}) >= 1
    for name in (
        "reranker_request_duration_seconds_count",
        "reranker_tokenization_duration_seconds_count",
        "reranker_queue_wait_seconds_count",
        "reranker_inference_duration_seconds_count",
        "reranker_batch_size_count",
        "reranker_batch_tokens_count",
        "reranker_padding_efficiency_count",
        "reranker_tokens_scored_total",
    ):
        assert m(name) > 0, name
    assert m("reranker_ready") == 1
    assert m("reranker_queue_items") == 0 and m("reranker_in_flight_requests") == 0
    text = httpx.get(f"{xlmr_server.url}/metrics").text
    assert 'reranker_request_duration_seconds_bucket{le="0.005",route="/v1/rerank"}' in text


def test_metrics_port_moves_the_scrape_off_the_api_port(
    server_factory: ServerFactory, xlmr_dir: str
) -> None:
    port = free_port()
    server = server_factory(xlmr_dir, metrics_port=port, api_keys=["k"])
    with server.client(headers={"Authorization": "Bearer k"}) as c:
        assert c.post("/v1/rerank", json={"query": "q", "documents": ["a"]}).status_code == 200
        assert c.get("/metrics").status_code == 404
    scrape = httpx.get(f"http://127.0.0.1:{port}/metrics")  # no key: a scrape target
    assert scrape.status_code == 200
    assert 'reranker_requests_total{route="/v1/rerank",status="200"} 1.0' in scrape.text
