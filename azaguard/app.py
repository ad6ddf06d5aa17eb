"""The web application: REST API (/api/v1, OpenAPI at /docs) and the server-rendered clinic and patient pages.

Thin by design: every route authenticates (azaguard.deps), then calls a use case in azaguard.service
and renders or returns the view model it gets back (azaguard.service_models).
Application logs carry method, route template and status only - never a patient identifier,
name or clinical value (non-negotiable 6); patient access is recorded in the audit log.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from azaguard import __version__, service
from azaguard.deps import LoginRequired
from azaguard.deps import Settings as Settings  # re-exported: `from azaguard.app import Settings, create_app`
from azaguard.knowledge import Knowledge, load_knowledge
from azaguard.render.letter import PdfEngineMissing
from azaguard.store.db import Database, DatabaseBusy, InFlightLimit

log = logging.getLogger("azaguard.app")
WEB = Path(__file__).resolve().parent / "web"


def create_app(db: Database | None = None, kb: Knowledge | None = None, settings: Settings | None = None) -> FastAPI:
    from azaguard.api.cds import router as cds_router
    from azaguard.api.fhir import router as fhir_router
    from azaguard.api.rest import router as api_router
    from azaguard.web.admin import router as admin_router
    from azaguard.web.apidocs import router as docs_router
    from azaguard.web.smart import router as smart_router
    from azaguard.web.views import router as web_router

    app = FastAPI(
        title="azaguard",
        version=__version__,
        description=(
            "Azathioprine safety for neuromuscular clinics: patients, observations, medicines, assessments, "
            "worklist, reviews, imports and quarantine. Authenticate with `POST /api/v1/token`, then send "
            "`Authorization: Bearer <token>`. Decision support only; every assessment states its knowledge version."
        ),
        docs_url=None,  # /docs and /redoc: azaguard.web.apidocs, with their files served from the package
        redoc_url=None,
    )
    app.state.db = db or Database()
    app.state.kb = kb or load_knowledge()
    app.state.settings = settings or Settings(secure_cookies=os.environ.get("AZAGUARD_SECURE_COOKIES") == "1")
    if app.state.settings.background_refresh:
        start_refresher(app.state.db, app.state.kb)
    app.include_router(api_router)
    app.include_router(cds_router)
    app.include_router(fhir_router)  # FHIR R4 API: /fhir (docs/ehr.md section 3)
    app.include_router(web_router)
    app.include_router(admin_router)
    app.include_router(docs_router)
    app.include_router(smart_router)  # SMART App Launch: /smart/launch, /smart/callback
    app.mount("/static", StaticFiles(directory=WEB / "static"), name="static")
    app.add_middleware(
        BodyLimit, default=body_limit("AZAGUARD_MAX_BODY_MB", 2), imports=body_limit("AZAGUARD_MAX_IMPORT_MB", 50)
    )

    app.add_middleware(SafeHeadersAndLogging, settings=app.state.settings)
    # Outermost: requests beyond the limit wait here, holding no thread, connection or lock.
    app.add_middleware(InFlightLimit)

    from azaguard.web.views import error_page

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Any:
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(service.Denied)
    async def denied(request: Request, exc: service.Denied) -> Any:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": {"status": 403, "message": str(exc)}}, status_code=403)
        return error_page(request, 403, str(exc))

    @app.exception_handler(service.NotFound)
    async def not_found(request: Request, exc: service.NotFound) -> Any:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": {"status": 404, "message": str(exc)}}, status_code=404)
        return error_page(request, 404, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        if not request.url.path.startswith("/api/") and exc.status_code in (401, 403, 404, 405):
            return error_page(request, exc.status_code, str(exc.detail))
        return JSONResponse(
            {"error": {"status": exc.status_code, "message": str(exc.detail)}},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(PdfEngineMissing)
    async def pdf_engine_missing(request: Request, exc: PdfEngineMissing) -> Any:
        # A deployment problem, not a bug: say what to install; the rest of the service works.
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": {"status": 503, "message": str(exc)}}, status_code=503)
        return error_page(request, 503, str(exc))

    @app.exception_handler(DatabaseBusy)
    async def database_busy(request: Request, exc: DatabaseBusy) -> Any:
        # Another writer held the database for longer than the busy timeout: try again, not a bug.
        return JSONResponse(
            {"error": {"status": 503, "message": "the database is busy: try again in a few seconds"}},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Any:
        problems = [
            {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "message": e.get("msg", "")}
            for e in exc.errors()
        ]
        first = problems[0] if problems else {"field": "", "message": "invalid request"}
        return JSONResponse(
            {"error": {"status": 422, "message": f"{first['field']}: {first['message']}", "problems": problems}},
            status_code=422,
        )

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Any:
        log.error("unhandled %s on %s", type(exc).__name__, getattr(request.scope.get("route"), "path", "?"))
        return JSONResponse({"error": {"status": 500, "message": "internal error"}}, status_code=500)

    return app


CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
_IMPORT_PATHS = ("/api/v1/import", "/import")


def body_limit(env: str, default_mb: int) -> int:
    """Bytes allowed in a request body, from the environment (MB) or the default."""
    raw = os.environ.get(env, "")
    try:
        mb = float(raw) if raw else float(default_mb)
    except ValueError:
        mb = float(default_mb)
    return int(max(mb, 0.001) * 1024 * 1024)


class _TooLarge(StarletteHTTPException):
    """Raised while a body is read: an HTTP error, so the routes' handlers answer 413 as JSON/page."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit // (1024 * 1024) or 1} MB")


class BodyLimit:
    """Refuse a request body over its limit with 413, before it is read into memory.

    A declared Content-Length over the limit is refused at once (a 200 MB upload costs nothing);
    a chunked body is counted as it arrives and cut off at the limit. Imports get a larger limit
    than the JSON and form routes.
    """

    def __init__(self, app: Any, default: int, imports: int) -> None:
        self.app, self.default, self.imports = app, default, imports

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.imports if scope.get("path", "") in _IMPORT_PATHS else self.default
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await self._refuse(send, limit)
            return
        seen = 0
        started = False

        async def counted_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge(limit)
            return message

        async def tracked_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send: Any, limit: int) -> None:
        body = json.dumps(
            {"error": {"status": 413, "message": f"the request body is larger than {limit // (1024 * 1024) or 1} MB"}}
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class SafeHeadersAndLogging:
    """Security headers on every response and one log line per request - without patient data.

    A plain ASGI wrapper (Starlette's BaseHTTPMiddleware costs a task and a stream per request).
    Unhandled errors are caught here so nothing re-raises to uvicorn, whose traceback log would
    carry database error text with patient values: only the error type and the route template
    ("/patients/{patient_id}", never the id itself) are logged.
    """

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0
        path: str = scope.get("path", "")
        secure = self.settings.secure_cookies or scope.get("scheme") == "https"

        async def send_with_headers(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("Referrer-Policy", "no-referrer")
                headers.setdefault("Cache-Control", "no-store")
                if headers.get("content-type", "").startswith("text/html") and not path.startswith(("/docs", "/redoc")):
                    # The pages use no script and no inline style: nothing else may run or load.
                    headers.setdefault("Content-Security-Policy", CSP)
                if secure:
                    headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            log.error("unhandled %s on %s %s", type(exc).__name__, scope.get("method"), _template(scope))
            if status == 0:
                response = JSONResponse({"error": {"status": 500, "message": "internal error"}}, status_code=500)
                await response(scope, receive, send_with_headers)
        log.info("%s %s %s %.0fms", scope.get("method"), _template(scope), status, (time.perf_counter() - start) * 1000)


def _template(scope: Any) -> str:
    """The matched route's template ("/patients/{patient_id}"), never the path with its ids."""
    return str(getattr(scope.get("route"), "path", "(unmatched)"))


def start_refresher(db: Database, kb: Knowledge) -> threading.Thread:
    """Re-assess patients whose stored assessment is older than today, in small transactions.

    Tests fall due with the calendar, not only with new data: without this, an overdue patient
    would only surface when someone opened their page.
    """
    from datetime import date

    from azaguard.worklist import refresh_stale

    def loop() -> None:
        while True:
            try:
                while True:
                    with db.session() as s:
                        if refresh_stale(s, kb, date.today(), limit=200) == 0:
                            break
            except Exception as exc:  # keep the service up; the next pass retries
                log.error("background refresh failed: %s", type(exc).__name__)
            time.sleep(600)

    thread = threading.Thread(target=loop, name="azaguard-refresh", daemon=True)
    thread.start()
    return thread
