"""Request dependencies shared by the REST API (azaguard.api.rest) and the pages (azaguard.web.views).

The unit of work of a request, the knowledge base, the settings and who is asking. Both routers
import this module and azaguard.service, never azaguard.app (which imports them) nor each other,
so the modules form no import cycle.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from azaguard import service
from azaguard.knowledge import Knowledge
from azaguard.service_models import Principal, WebIdentity
from azaguard.store.db import Database

COOKIE = "azaguard_session"  # the browser session cookie (its value is stored only as a hash)


@dataclass
class Settings:
    clinic_name: str = "Neuromuscular clinic"
    clinic_phone: str = "0300 000 0000 (demo number)"
    out_of_hours: str = "Call NHS 111 or go to the emergency department"
    secure_cookies: bool = False
    background_refresh: bool = False  # `azaguard serve` turns it on: re-assess stale patients daily


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
KbDep = Annotated[Knowledge, Depends(knowledge)]
SettingsDep = Annotated[Settings, Depends(settings)]

bearer = HTTPBearer(auto_error=False)


def api_principal(s: SessionDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
    """The user of a bearer token; a missing, unknown or expired token is a 401."""
    who = service.api_principal(s, creds.credentials if creds else None)
    if who is None:
        raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
    return who


def web_identity(request: Request, s: SessionDep) -> WebIdentity:
    """The signed-in browser user and their CSRF token; without a valid session, LoginRequired."""
    found = service.web_identity(s, request.cookies.get(COOKIE))
    if found is None:
        raise LoginRequired()
    return found


ApiUser = Annotated[Principal, Depends(api_principal)]
WebUser = Annotated[WebIdentity, Depends(web_identity)]
