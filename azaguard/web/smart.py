"""SMART App Launch v2 routes: `/smart/launch` (EHR and standalone launch) and `/smart/callback`.

The use cases are in azaguard.ehr.smart; these routes only carry the browser's parameters there,
set the session cookie of a completed launch and redirect - to the EHR's authorization endpoint
(from the configured EHR's own SMART configuration) or to our own patient page, nowhere else.
A refused launch is a plain page saying why (and an audit row), never a redirect.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from azaguard.deps import COOKIE, SessionDep, knowledge
from azaguard.ehr import smart
from azaguard.web.views import error_page

router = APIRouter(include_in_schema=False)


def smart_config(request: Request) -> smart.SmartConfig:
    """The SMART configuration: set on the app (tests), else read from the environment (a bad
    setting is SmartRefused, 503, naming it)."""
    given = getattr(request.app.state, "smart", None)
    return given if isinstance(given, smart.SmartConfig) else smart.SmartConfig.from_env()


def _callback(request: Request, config: smart.SmartConfig) -> str:
    return smart.callback_url(config, str(request.base_url))


@router.get("/smart/launch")
def smart_launch(request: Request, s: SessionDep, iss: str = "", launch: str = "") -> Response:
    browser = smart.browser_binding(request.cookies.get(smart.BROWSER_COOKIE))
    try:
        config = smart_config(request)
        url = smart.begin_launch(s, config, iss or None, launch or None, _callback(request, config), browser)
    except smart.SmartRefused as exc:
        return error_page(request, exc.status, str(exc))
    resp = RedirectResponse(url, status_code=302)
    resp.set_cookie(
        smart.BROWSER_COOKIE,
        browser,
        path="/smart",
        httponly=True,
        samesite="lax",  # sent on the EHR's top-level redirect back to /smart/callback
        secure=request.app.state.settings.secure_cookies,
        max_age=int(smart.STATE_TTL.total_seconds()),
    )
    return resp


@router.get("/smart/callback")
def smart_callback(request: Request, s: SessionDep, state: str = "", code: str = "", error: str = "") -> Response:
    browser = request.cookies.get(smart.BROWSER_COOKIE)
    try:
        config = smart_config(request)
        done = smart.complete_launch(
            s, knowledge(request), config, state, code, error, browser, request.cookies.get(COOKIE)
        )
    except smart.SmartRefused as exc:
        return error_page(request, exc.status, str(exc))
    resp = RedirectResponse(f"/patients/{done.patient_id}", status_code=303)
    resp.set_cookie(
        COOKIE,
        done.session_token,
        httponly=True,
        samesite="lax",
        secure=request.app.state.settings.secure_cookies,
        max_age=smart.SESSION_HOURS * 3600,
    )
    return resp
