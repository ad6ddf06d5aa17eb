"""The API documentation pages, /docs (Swagger UI) and /redoc (ReDoc), served from the package.

FastAPI's own /docs and /redoc load their scripts, styles, favicon and fonts from other hosts, so
they are blank without internet access. These two pages use the same HTML with the files vendored
under azaguard/web/static/vendor/ (versions, licences and checksums in its README.md), and a
Content-Security-Policy that lets them load nothing from any other host.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)
VENDOR = "/static/vendor"
FAVICON = f"{VENDOR}/swagger-ui/favicon-32x32.png"
# Both pages start from an inline script (FastAPI's HTML) and Swagger UI sets inline styles; ReDoc
# runs its search in a worker made from a blob. Nothing may come from another host.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)


def _openapi_url(request: Request) -> str:
    return str(request.scope.get("root_path", "")) + (request.app.openapi_url or "/openapi.json")


def _local(page: HTMLResponse) -> HTMLResponse:
    """FastAPI's page, in English (its <html> names no language), under DOCS_CSP."""
    html = bytes(page.body).decode().replace("<html>", '<html lang="en">', 1)
    return HTMLResponse(html, headers={"Content-Security-Policy": DOCS_CSP})


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    return _local(
        get_swagger_ui_html(
            openapi_url=_openapi_url(request),
            title=f"{request.app.title} - API (Swagger UI)",
            swagger_js_url=f"{VENDOR}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{VENDOR}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=FAVICON,
            # no badge from the public validator service
            swagger_ui_parameters={"validatorUrl": None},
        )
    )


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    return _local(
        get_redoc_html(
            openapi_url=_openapi_url(request),
            title=f"{request.app.title} - API (ReDoc)",
            redoc_js_url=f"{VENDOR}/redoc/redoc.standalone.js",
            redoc_favicon_url=FAVICON,
            with_google_fonts=False,
        )
    )
