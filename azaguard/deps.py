"""Request dependencies shared by the REST API (azaguard.api.rest) and the pages (azaguard.web.views).

The unit of work of a request, the knowledge base, the settings and who is asking. Both routers
import this module and azaguard.service, never azaguard.app (which imports them) nor each other,
so the modules form no import cycle.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from azaguard import service
from azaguard.knowledge import Knowledge
from azaguard.notify import ReminderConfig
from azaguard.service_models import Principal, WebIdentity
from azaguard.store.db import Database

COOKIE = "azaguard_session"  # the browser session cookie (its value is stored only as a hash)


# What the confirmation of a patient's symptom report says about when the team will answer. No
# source gives a response time: each clinic states its own (AZAGUARD_SYMPTOM_RESPONSE). The default
# promises no time for the team; it tells the patient when to call if no one has answered.
SYMPTOM_RESPONSE_DEFAULT = (
    "Your team will contact you about it. If you have not heard from them by the end of the next working day, "
    "call them."
)


def _symptom_response() -> str:
    return os.environ.get("AZAGUARD_SYMPTOM_RESPONSE", "").strip() or SYMPTOM_RESPONSE_DEFAULT


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


@dataclass
class Settings:
    # Who to call: on every page, letter and reminder. A clinic must set its own number before
    # letters or reminders go out (docs/operations.md); the default says it is a demo number.
    clinic_name: str = field(default_factory=lambda: _env("AZAGUARD_CLINIC_NAME", "Neuromuscular clinic"))
    clinic_phone: str = field(default_factory=lambda: _env("AZAGUARD_CLINIC_PHONE", "0300 000 0000 (demo number)"))
    out_of_hours: str = field(
        default_factory=lambda: _env("AZAGUARD_OUT_OF_HOURS", "Call NHS 111 or go to the emergency department")
    )
    secure_cookies: bool = False
    # The URL the EHR reaches azaguard at (AZAGUARD_PUBLIC_URL, e.g. https://azaguard.trust.nhs.uk):
    # a CDS Hooks JWT's `aud` must equal it plus the service path, and SMART links and redirects use
    # it. Unset: taken from each request (fine behind no proxy; set it behind one).
    public_url: str = field(default_factory=lambda: os.environ.get("AZAGUARD_PUBLIC_URL", "").strip().rstrip("/"))
    background_refresh: bool = False  # `azaguard serve` turns it on: re-assess stale patients daily
    # Reminder channels offered on the patient's page (AZAGUARD_SMTP_*, AZAGUARD_REMINDER_*: docs/operations.md)
    reminders: ReminderConfig = field(default_factory=ReminderConfig.from_env)
    # Said when a patient's symptom report is sent (see SYMPTOM_RESPONSE_DEFAULT)
    symptom_response: str = field(default_factory=_symptom_response)


class LoginRequired(Exception):
    """A page needs a signed-in user: the app answers with a redirect to /login."""


def database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def session_dep(request: Request) -> Iterator[Session]:
    """One transaction per request: committed if the handler returns, rolled back if it raises."""
    with database(request).session() as s:
        yield s


def knowledge(request: Request) -> Knowledge:
    kb: Knowledge = request.app.state.kb
    return kb


def settings(request: Request) -> Settings:
    found: Settings = request.app.state.settings
    return found


# scope="function": commit before the response is sent, so the page a redirect leads to sees the write
# (FastAPI's default "request" scope commits after the response: a POST-redirect-GET could read stale data).
SessionDep = Annotated[Session, Depends(session_dep, scope="function")]


# The same two as async dependencies: FastAPI runs a sync dependency on a worker thread, a hop
# (and a wait for Python's GIL) per request for what is only an attribute read.
async def _knowledge_dep(request: Request) -> Knowledge:
    return knowledge(request)


async def _settings_dep(request: Request) -> Settings:
    return settings(request)


KbDep = Annotated[Knowledge, Depends(_knowledge_dep)]
SettingsDep = Annotated[Settings, Depends(_settings_dep)]

bearer = HTTPBearer(auto_error=False)


def _route(request: Request) -> str:
    """The method and route template of a request ("GET /api/v1/patients/{patient_id}"), never its ids."""
    return f"{request.method} {getattr(request.scope.get('route'), 'path', '(unmatched)')}"


def api_principal(
    request: Request, s: SessionDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """The user of a bearer token; a missing, unknown, expired or revoked token is a 401 (audited)."""
    token = creds.credentials if creds else None
    who = service.api_principal(s, token)
    if who is None:
        reason = "unknown, expired or revoked bearer token" if token else "no bearer token"
        service.record_unauthenticated(s, _route(request), reason, "api")
        raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
    return who


def web_identity(request: Request, s: SessionDep) -> WebIdentity:
    """The signed-in browser user and their CSRF token; without a valid session, LoginRequired. A
    session cookie that is no longer valid is audited (a browser with no cookie at all is not)."""
    cookie = request.cookies.get(COOKIE)
    found = service.web_identity(s, cookie)
    if found is None:
        if cookie:
            service.record_unauthenticated(s, _route(request), "unknown or expired session", "web")
        raise LoginRequired()
    return found


def public_base(request: Request) -> str:
    """This server's public URL (Settings.public_url, else the request's own base URL)."""
    configured: str = settings(request).public_url
    return configured or str(request.base_url).rstrip("/")


ApiUser = Annotated[Principal, Depends(api_principal)]
WebUser = Annotated[WebIdentity, Depends(web_identity)]
