"""Property-based fuzzing of every route from the OpenAPI schema (schemathesis): no 5xx, and
responses match their declared schemas and content types."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from tests.conftest import LiveServer

pytestmark = pytest.mark.slow

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
EXAMPLES = 80  # per route and mode: about a minute for all routes here
RERANK_ROUTES = ("/v1/rerank", "/v2/rerank", "/rerank", "/v1/ranking", "/score", "/v1/score",
                 "/v1/reranking")


def test_every_route_survives_generated_input(xlmr_server: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(f"{xlmr_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {*RERANK_ROUTES, "/v1/models", "/ready", "/health"}
    before = _rerank_answers(xlmr_server)
    for operation in operations:
        # valid inputs, then (for routes that take a body) inputs that break the schema
        modes = list(GenerationMode) if operation.method.upper() == "POST" else [
            GenerationMode.POSITIVE
        ]
        for mode in modes:

            @given(case=operation.as_strategy(mode))
            @settings(
                max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck),
            )
            def fuzz(case: schemathesis.Case) -> None:
                case.call_and_validate(base_url=xlmr_server.url, checks=CHECKS)

            fuzz()
    after = _rerank_answers(xlmr_server)
    for route in RERANK_ROUTES:  # each route got both kinds
        assert after[route]["200"] - before[route]["200"] >= 10, f"few valid requests: {route}"
        assert after[route]["4xx"] - before[route]["4xx"] >= 10, f"few invalid requests: {route}"


def _rerank_answers(server: LiveServer) -> dict[str, dict[str, float]]:
    counts = {route: {"200": 0.0, "4xx": 0.0} for route in RERANK_ROUTES}
    for route in RERANK_ROUTES:
        for status in ("200", "400", "401", "404", "413", "415", "422"):
            value = server.metric("reranker_requests_total", {"route": route, "status": status})
            counts[route]["200" if status == "200" else "4xx"] += value
    return counts
