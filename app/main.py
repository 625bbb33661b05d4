"""App factory: `create_app(settings)` wires settings, metrics, runtime, routes and handlers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import start_http_server

from app.api.dialects import DIALECTS
from app.api.docs import OPENAPI_URL, install_docs
from app.api.handlers import install_error_handlers
from app.api.middleware import ServingMiddleware
from app.api.routes import ops, scrape, v1
from app.api.runner import rerank_router
from app.config import Settings
from app.metrics import Metrics
from app.runtime import Loader, Runtime, default_loader


def create_app(
    settings: Settings,
    *,
    loader: Loader = default_loader,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """A ready-to-serve app. The model is downloaded (when a hub id is not cached yet), loaded
    and warmed up in the background once the listener is up: /health answers 200 at once,
    /ready 503 until the model is ready; a download or load failure stops the server."""
    # The Rust tokenizer runs in the calling thread, not in a pool of its own: the service's
    # tokenizer lanes then decide where tokenization runs and at what priority (app/service.py).
    # Set here, by the app that owns the process, not when the engine package is imported.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    metrics = Metrics()
    runtime = Runtime(settings, metrics, loader=loader, on_fatal=on_fatal)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        listener = None
        if settings.metrics_port is not None:
            listener, _ = start_http_server(
                settings.metrics_port, addr=settings.host, registry=metrics.registry
            )
        starting = asyncio.create_task(runtime.start())
        try:
            yield
        finally:
            if not starting.done():
                starting.cancel()
            await runtime.stop()
            if listener is not None:
                listener.shutdown()
                listener.server_close()

    app = FastAPI(
        title="reranker",
        summary="Reranking behind the APIs its clients already speak: Jina, Cohere, TEI, Infinity,"
        " vLLM, NVIDIA NIM and Mixedbread",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # install_docs serves /docs from the package, not from a CDN
        redoc_url=None,
        openapi_url=OPENAPI_URL if settings.docs == "on" else None,
    )
    app.state.runtime = runtime
    app.include_router(rerank_router(DIALECTS))
    app.include_router(v1)
    app.include_router(ops)
    if settings.metrics_port is None:
        app.include_router(scrape)
    if settings.docs == "on":
        install_docs(app, api_keys=bool(settings.api_keys))
    install_error_handlers(app)
    app.add_middleware(
        ServingMiddleware, max_body_bytes=settings.max_body_bytes, metrics=metrics,
        api_keys=settings.api_keys,
    )
    return app
