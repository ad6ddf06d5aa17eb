"""CDS Hooks 2.0 endpoints: discovery, the three services and their feedback.

Every request, discovery included, carries the EHR's signed JWT (azaguard.ehr.cds_auth); a CORS
preflight does not (browsers never send credentials with one), so OPTIONS answers without it.
Errors are JSON, with CORS headers, so a browser-based EHR (the CDS Hooks sandbox) can read them.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from azaguard.deps import KbDep, database, public_base, settings
from azaguard.ehr import cds, cds_auth
from azaguard.render.cards import CardLinks
from azaguard.service_models import CdsCardsOut, CdsDiscoveryOut, CdsErrorOut, CdsFeedbackOut

router = APIRouter(prefix="/cds-services", tags=["cds-hooks"])
log = logging.getLogger("azaguard.cds")

MAX_HOOK_BYTES = 5 * 1024 * 1024  # a prefetch of years of results fits; the app-wide body limit applies too
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
}


class _OrJSON(JSONResponse):
    """JSON written by orjson: a hook answer carries long markdown details, read on every chart open."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _json(body: Any, status: int = 200, extra: dict[str, str] | None = None) -> JSONResponse:
    return _OrJSON(body, status_code=status, headers={**CORS, **(extra or {})})


def _refused(request: Request, exc: cds_auth.CdsAuthError) -> JSONResponse:
    cds_auth.record_refusal(database(request), exc, f"{request.method} {request.url.path}"[:80])
    return _json({"error": "unauthorized", "reason": exc.reason}, 401, {"WWW-Authenticate": "Bearer"})


LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


async def _caller(request: Request) -> cds_auth.CdsCaller:
    # The audience a token must name is this server's public URL. Taken from the Host header only on
    # a loopback address: elsewhere a forged Host would let a token minted for another service in.
    if not settings(request).public_url and (request.url.hostname or "") not in LOOPBACK:
        raise cds_auth.CdsAuthError("this server has no AZAGUARD_PUBLIC_URL set: CDS Hooks calls are refused")
    audience = public_base(request) + request.url.path
    return await run_in_threadpool(cds_auth.verify, database(request), request.headers.get("authorization"), audience)


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": CdsErrorOut, "description": "Not a usable CDS Hooks request (names the field)"},
    401: {"model": CdsErrorOut, "description": "JWT missing or refused (audited)"},
    404: {"model": CdsErrorOut, "description": "No such service"},
}


@router.options("", include_in_schema=False)
@router.options("/{service_id}", include_in_schema=False)
@router.options("/{service_id}/feedback", include_in_schema=False)
async def preflight() -> Response:
    return Response(status_code=204, headers=CORS)


@router.get("", response_model=CdsDiscoveryOut, responses=ERRORS)
async def discovery(request: Request, kb: KbDep) -> JSONResponse:
    try:
        caller = await _caller(request)
        await run_in_threadpool(cds_auth.remember_jti_now, database(request), caller)
    except cds_auth.CdsAuthError as exc:
        return await run_in_threadpool(_refused, request, exc)
    return _json(cds.discovery(kb))


async def _body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_HOOK_BYTES:
        raise cds.HookRequestError("request", f"is larger than {MAX_HOOK_BYTES // (1024 * 1024)} MB")
    try:
        return orjson.loads(raw)  # a prefetch is tens of KiB: orjson reads it in a third of json's time
    except (ValueError, RecursionError) as exc:
        raise cds.HookRequestError("request", "is not valid JSON") from exc


@router.post("/{service_id}", response_model=CdsCardsOut, responses=ERRORS)
async def call_service(service_id: str, request: Request, kb: KbDep) -> JSONResponse:
    if service_id not in cds.SERVICES:
        return _json({"error": "not found", "reason": "no such CDS service"}, 404)
    try:
        caller = await _caller(request)
    except cds_auth.CdsAuthError as exc:
        return await run_in_threadpool(_refused, request, exc)
    try:
        call = cds.parse_call(service_id, await _body(request))
    except cds.HookRequestError as exc:
        return _json({"error": "bad request", "reason": str(exc)}, 400)
    except (TypeError, AttributeError, KeyError) as exc:
        log.warning("CDS hook %s: unreadable request (%s)", service_id, type(exc).__name__)
        return _json({"error": "bad request", "reason": "request: has a field of an unexpected type"}, 400)
    base = public_base(request)
    links = CardLinks(smart_launch_url=f"{base}/smart/launch", sources_url=f"{base}/sources")
    db = database(request)

    def work() -> dict[str, Any]:
        with db.session() as s:
            try:
                result = cds.run_hook(s, kb, call, caller, links, date.today())
            except (TypeError, AttributeError, KeyError) as exc:
                # A field of a type the tolerant reading did not expect: the request, not the server.
                log.warning("CDS hook %s: unreadable request (%s)", service_id, type(exc).__name__)
                raise cds.HookRequestError("request", "has a field of an unexpected type") from exc
        cds.record_cards(db, caller, service_id, result, call.user_id)
        return {"cards": result.cards}

    try:
        body = await run_in_threadpool(work)
    except cds_auth.CdsAuthError as exc:
        return await run_in_threadpool(_refused, request, exc)
    except cds.HookRequestError as exc:
        return _json({"error": "bad request", "reason": str(exc)}, 400)
    return _json(body)


@router.post("/{service_id}/feedback", response_model=CdsFeedbackOut, responses=ERRORS)
async def feedback(service_id: str, request: Request) -> JSONResponse:
    if service_id not in cds.SERVICES:
        return _json({"error": "not found", "reason": "no such CDS service"}, 404)
    try:
        caller = await _caller(request)
    except cds_auth.CdsAuthError as exc:
        return await run_in_threadpool(_refused, request, exc)
    try:
        items = cds.parse_feedback(await _body(request))
    except cds.HookRequestError as exc:
        return _json({"error": "bad request", "reason": str(exc)}, 400)
    try:
        stored = await run_in_threadpool(cds.record_feedback, database(request), caller, service_id, items)
    except cds_auth.CdsAuthError as exc:
        return await run_in_threadpool(_refused, request, exc)
    return _json({"stored": stored})
