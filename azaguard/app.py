"""The web application: REST API (/api/v1, OpenAPI at /docs) and the server-rendered clinic and patient pages.

Thin by design: every route authenticates, then calls a function in azaguard.service.
Application logs carry method, route template and status only - never a patient identifier,
name or clinical value (non-negotiable 6); patient access is recorded in the audit log.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from azaguard import __version__
from azaguard.knowledge import Knowledge, load_knowledge
from azaguard.store.db import Database

log = logging.getLogger("azaguard.app")
WEB = Path(__file__).resolve().parent / "web"


@dataclass
class Settings:
    clinic_name: str = "Neuromuscular clinic"
    clinic_phone: str = "0300 000 0000 (demo number)"
    out_of_hours: str = "Call NHS 111 or go to the emergency department"
    secure_cookies: bool = False
    background_refresh: bool = False  # `azaguard serve` turns it on: re-assess stale patients daily


def create_app(db: Database | None = None, kb: Knowledge | None = None, settings: Settings | None = None) -> FastAPI:
    from azaguard.api.rest import router as api_router
    from azaguard.web.views import router as web_router

    app = FastAPI(
        title="azaguard",
        version=__version__,
        description=(
            "Azathioprine safety for neuromuscular clinics: patients, observations, medicines, assessments, "
            "worklist, reviews, imports and quarantine. Authenticate with `POST /api/v1/token`, then send "
            "`Authorization: Bearer <token>`. Decision support only; every assessment states its knowledge version."
        ),
    )
    app.state.db = db or Database()
    app.state.kb = kb or load_knowledge()
    app.state.settings = settings or Settings(secure_cookies=os.environ.get("AZAGUARD_SECURE_COOKIES") == "1")
    if app.state.settings.background_refresh:
        start_refresher(app.state.db, app.state.kb)
    app.include_router(api_router)
    app.include_router(web_router)
    app.mount("/static", StaticFiles(directory=WEB / "static"), name="static")

    @app.middleware("http")
    async def headers_and_safe_logging(request: Request, call_next: Any) -> Any:
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as exc:
            # Caught here so nothing re-raises to uvicorn, whose traceback log would carry database
            # error text with patient values. Only the error type and route template are logged.
            template = getattr(request.scope.get("route"), "path", "(unmatched)")
            log.error("unhandled %s on %s %s", type(exc).__name__, request.method, template)
            response = JSONResponse({"error": {"status": 500, "message": "internal error"}}, status_code=500)
        route = request.scope.get("route")
        template = getattr(route, "path", "(unmatched)")  # "/patients/{patient_id}", never the id itself
        log.info(
            "%s %s %s %.0fms", request.method, template, response.status_code, (time.perf_counter() - start) * 1000
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    from azaguard import service
    from azaguard.web.views import LoginRequired, error_page

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


def session_dep(request: Request) -> Iterator[Session]:
    """One transaction per request: committed if the handler returns, rolled back if it raises."""
    db: Database = request.app.state.db
    with db.session() as s:
        yield s
