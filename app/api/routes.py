"""Operational routes: models, health, readiness, metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from app.api.common import ERROR_RESPONSES, runtime_of
from app.api.responses import JSONBytes
from app.api.schemas import ModelCard, ModelList, Status
from app.metrics import CONTENT_TYPE

v1 = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)
ops = APIRouter()
scrape = APIRouter()
"""/metrics on the API port; left out when --metrics-port gives it a listener of its own."""


@v1.get("/models", response_model=ModelList, summary="The served models")
async def list_models(request: Request) -> Response:
    runtime = runtime_of(request)
    cards = []
    for index, name in enumerate(runtime.settings.served_names):
        if index >= len(runtime.models):
            raise runtime.not_ready()  # still loading: 503
        served = runtime.models[index]
        loaded = served.loaded
        cards.append(ModelCard(
            id=name,
            max_input_length=loaded.encoder.max_length,
            dtype=loaded.dtype,
            devices=loaded.devices,
            backend=loaded.backend,
            attention=loaded.attention,
            scoring=loaded.scoring,
            takes_instruction=loaded.encoder.takes_instruction,
            aliases=[a.partition("=")[0] for a in runtime.settings.alias
                     if runtime.settings.model_index(a.partition("=")[2]) == index],
            dtype_probe_gflops=loaded.dtype_probe,
            tokens_per_second=served.scheduler.tokens_per_s(),
            max_queue_time_s=runtime.settings.max_queue_time_s,
            max_batch_tokens=served.scheduler.max_batch_tokens,
        ))
    return JSONBytes(ModelList(data=cards).model_dump())


@ops.get("/health", summary="Liveness: the process is up", response_model=Status)
async def health() -> Response:
    return JSONBytes({"status": "ok"})


@ops.get(
    "/ready",
    summary="Readiness: 200 once the model is loaded and warmed up",
    response_model=Status,
    responses={503: {"model": Status, "description": "Loading, recovering or shutting down"}},
)
async def ready(request: Request) -> Response:
    runtime = runtime_of(request)
    if runtime.phase == "ready":
        return JSONBytes({"status": "ready"})
    return JSONBytes(
        {"status": runtime.phase, "detail": f"not ready: {runtime.phase}"},
        status_code=503,
        headers={"retry-after": "5"},
    )


@scrape.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    return Response(runtime_of(request).metrics.render(), media_type=CONTENT_TYPE)
