"""The API documentation, served from the package: Swagger UI's files are vendored under
app/api/static/swagger-ui (Apache-2.0; see VENDORED.md there), so a browser opening /docs
fetches nothing from outside this server. With API keys set, the OpenAPI document declares the
bearer scheme, and the page's Authorize button sends the key with every call tried."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from app.api.auth import OPEN_PATHS

ASSETS_DIR = Path(__file__).parent / "static" / "swagger-ui"
ASSETS_URL = "/docs/assets"
OPENAPI_URL = "/openapi.json"


def install_docs(app: FastAPI, *, api_keys: bool) -> None:
    """`/docs` (Swagger UI, every call pre-filled with a working example) and its assets."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="swagger-ui-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=OPENAPI_URL,
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon-32x32.png",
            swagger_ui_parameters={
                "validatorUrl": None,  # its badge would call validator.swagger.io
                "tryItOutEnabled": True,
                "persistAuthorization": True,
                "displayRequestDuration": True,
                "defaultModelsExpandDepth": 0,
            },
        )

    if api_keys:
        _declare_bearer(app)


def _declare_bearer(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = build()
        spec.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "One of the server's API keys (--api-key)."}
        }
        for path, item in spec["paths"].items():
            if path not in OPEN_PATHS:
                for operation in item.values():
                    operation["security"] = [{"bearer": []}]
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
