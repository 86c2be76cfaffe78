"""GET /docs: Swagger UI served from the `swagger-ui-bundle-v2` package, so the docs render on an air-gapped host.

FastAPI's default page loads Swagger UI and its favicon from a CDN (blank
without internet). Here the same page points at assets served from the
installed package (spec-first's bundle of the official swagger-ui dist): no
copied blob in this repository, and upgrades come with `pip`. The online
validator badge, which would call out to another host, is off.

`openapi` is the document itself, saying exactly what this server accepts:
the bearer scheme is declared only when an API key is configured (without one,
no credentials are checked, and a schema that asks for them misleads clients
and validators).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path

DOCS_URL = "/docs"
ASSETS_URL = "/docs/assets"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"

# Only the files the page loads (and their source maps, for the browser's developer tools).
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui-bundle.js.map": "application/json",
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui.css.map": "application/json",
    "favicon-32x32.png": "image/png",
}
BUNDLE = Path(str(swagger_ui_path))

router = APIRouter(include_in_schema=False)


@router.get(DOCS_URL)
async def docs(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} - API docs",
        oauth2_redirect_url=OAUTH2_REDIRECT_URL,
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_URL}/favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get(OAUTH2_REDIRECT_URL)
async def oauth2_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get(ASSETS_URL + "/{name}")
async def asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail=f"no docs asset {name!r}")
    return FileResponse(BUNDLE / name, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})


def openapi(app: FastAPI, *, api_key: bool) -> dict[str, Any]:
    """FastAPI's document for `app`, less the API key's security declarations when none is set; built once.

    (The admin routes' own scheme, `AdminKey`, exists only when they do.)"""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        if not api_key:
            schemes = schema.get("components", {}).get("securitySchemes", {})
            schemes.pop("HTTPBearer", None)
            if not schemes:
                schema.get("components", {}).pop("securitySchemes", None)
            for path in schema["paths"].values():
                for operation in path.values():
                    kept = [s for s in operation.pop("security", []) if "HTTPBearer" not in s]
                    if kept:
                        operation["security"] = kept
        app.openapi_schema = schema
    return app.openapi_schema
