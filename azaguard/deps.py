"""Request dependencies shared by the REST API (azaguard.api.rest) and the pages (azaguard.web.views).

The unit of work of a request, the knowledge base, the settings and who is asking. Both routers
import this module and azaguard.service, never azaguard.app (which imports them) nor each other,
so the modules form no import cycle.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Annotated, Any, get_type_hints

import anyio
import anyio.to_thread
from fastapi import Depends, HTTPException, Request, Response, params
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
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


# ---------------------------------------------------------------- one worker-thread hop per request
# Dependencies that need no thread of their own: they read no body and touch no database.
_NO_IO = (_knowledge_dep, _settings_dep, bearer)
_BEARER = "_one_hop_bearer"
_REQUEST = "_one_hop_request"
_CREDS = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _dependency(annotation: Any, default: Any) -> Any:
    """The callable a parameter depends on (`Annotated[..., Depends(f)]` or `= Depends(f)`), else None."""
    found = [default] if isinstance(default, params.Depends) else []
    found += [x for x in getattr(annotation, "__metadata__", ()) if isinstance(x, params.Depends)]
    return found[0].dependency if found else None


def _reads_body(dep: Any) -> bool:
    """An async dependency of the request alone (`async def f(request: Request)`), such as the web
    forms' `form_data`: OneHopRoute awaits it itself, between the user check and the endpoint."""
    if not inspect.iscoroutinefunction(dep):
        return False
    hints = get_type_hints(dep)
    names = list(inspect.signature(dep).parameters)
    return len(names) == 1 and hints.get(names[0]) is Request


Creds = HTTPAuthorizationCredentials | None


@dataclass
class _OneHop:
    """A sync endpoint (`call`) made async (`endpoint`, what FastAPI calls), who it asks for
    (`roles`: parameter name -> session_dep, api_principal or web_identity) and what it reads from
    the body (`body`)."""

    call: Callable[..., Any]
    endpoint: Callable[..., Any]
    roles: dict[str, Callable[..., Any]]
    body: dict[str, Callable[[Request], Coroutine[Any, Any, Any]]]

    def check_user(self, request: Request, creds: Creds) -> None:
        """Only the user check, in a unit of work of its own (a refusal is audited and raised)."""
        with database(request).session() as s:
            self._users(request, s, creds, {})

    def _users(self, request: Request, s: Session, creds: Creds, values: dict[str, Any]) -> None:
        for name, dep in self.roles.items():
            if dep is api_principal:
                values[name] = api_principal(request, s, creds)
            elif dep is web_identity:
                values[name] = web_identity(request, s)

    def open(self, request: Request, creds: Creds, values: dict[str, Any]) -> AbstractContextManager[Session]:
        """Open the unit of work and check who is asking (after it opens, as FastAPI orders them);
        a refusal closes it (its audit row kept) and is raised."""
        unit = database(request).session()
        s = unit.__enter__()
        try:
            values.update({name: s for name, dep in self.roles.items() if dep is session_dep})
            self._users(request, s, creds, values)
        except BaseException as exc:
            unit.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return unit

    @staticmethod
    def close(unit: AbstractContextManager[Session], exc: BaseException) -> None:
        """Close a unit of work the request failed in (rolled back; rows kept for a failure written)."""
        unit.__exit__(type(exc), exc, exc.__traceback__)

    def finish(self, unit: AbstractContextManager[Session], values: dict[str, Any]) -> Any:
        """Run the endpoint and close the unit of work: committed if it returns, else rolled back."""
        try:
            result = self.call(**values)
        except BaseException as exc:
            unit.__exit__(type(exc), exc, exc.__traceback__)
            raise
        unit.__exit__(None, None, None)
        return result

    def run(self, request: Request, creds: Creds, values: dict[str, Any]) -> Any:
        return self.finish(self.open(request, creds, values), values)


def in_one_hop(endpoint: Callable[..., Any]) -> _OneHop | None:
    """The sync endpoint as an async one that opens the unit of work, checks who is asking and runs
    the endpoint in one worker-thread hop (see OneHopRoute); None for an endpoint left to FastAPI.

    The parameters that take the unit of work (SessionDep), the API user (ApiUser) or the web user
    (WebUser) leave the signature FastAPI sees; the request and, for an API user, the bearer
    credentials (so OpenAPI still shows the security scheme) take their place. The user is checked
    exactly as the dependencies check it (`api_principal`, `web_identity`: a refusal is audited).
    An endpoint that reads the body through a dependency (a web form) takes two hops: the user is
    checked first, then the body is read on the event loop, then the endpoint runs and the unit of
    work closes - so nothing holds the database's write lock across a hop to the event loop."""
    if inspect.iscoroutinefunction(endpoint):
        return None
    hints = get_type_hints(endpoint, include_extras=True)
    signature = inspect.signature(endpoint)
    roles: dict[str, Callable[..., Any]] = {}
    body: dict[str, Callable[[Request], Coroutine[Any, Any, Any]]] = {}
    kept: list[inspect.Parameter] = []
    request_name = None
    for p in signature.parameters.values():
        annotation = hints.get(p.name, p.annotation)
        dep = _dependency(annotation, p.default)
        if dep in (session_dep, api_principal, web_identity):
            roles[p.name] = dep
            continue
        if dep is not None and dep not in _NO_IO:
            if not _reads_body(dep):
                return None  # a unit of work or a user of its own: FastAPI's order stays
            body[p.name] = dep
            continue
        if annotation is Request:
            request_name = p.name
        kept.append(p.replace(annotation=annotation))
    if not roles:
        return None
    extra = []
    if request_name is None:
        extra.append(inspect.Parameter(_REQUEST, inspect.Parameter.KEYWORD_ONLY, annotation=Request))
    if api_principal in roles.values():
        extra.append(inspect.Parameter(_BEARER, inspect.Parameter.KEYWORD_ONLY, annotation=_CREDS))

    @functools.wraps(endpoint)
    async def one_hop(**values: Any) -> Any:
        request = values.pop(_REQUEST) if request_name is None else values[request_name]
        creds = values.pop(_BEARER, None)
        if not body:
            return await anyio.to_thread.run_sync(hop.run, request, creds, values)
        unit = await anyio.to_thread.run_sync(hop.open, request, creds, values)
        try:
            for name, read in body.items():
                values[name] = await read(request)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(hop.close, unit, exc)
            raise
        return await anyio.to_thread.run_sync(hop.finish, unit, values)

    return_annotation = hints.get("return", signature.return_annotation)
    one_hop.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*kept, *extra], return_annotation=return_annotation
    )
    hop = _OneHop(endpoint, one_hop, roles, body)
    return hop


class OneHopRoute(APIRoute):
    """A route whose sync endpoint runs with its unit of work and its user check in one hop to a
    worker thread, instead of five.

    FastAPI runs each sync dependency and a sync endpoint on a worker thread of its own: the unit of
    work opened, the user checked, the endpoint, its response model validated, the unit of work
    closed - five hops a request, each a wake-up of another thread and a hand-over of Python's GIL
    (about a millisecond of CPU a request in all, a sixth of a small request's). Here the endpoint
    becomes async and does those steps in one hop (`in_one_hop`); the response model is then
    validated on the event loop. What a request does, in which order, and what it audits stay the
    same: a request whose parameters or body are invalid is answered as before - 401 (or the login
    page) when the caller is not signed in, checked and audited first, else 422. Endpoints whose
    other dependencies read the body (forms, uploads) or open a unit of work of their own are left
    to FastAPI, so their user is still checked before the body is read."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        self.one_hop = in_one_hop(endpoint)
        super().__init__(path, self.one_hop.endpoint if self.one_hop else endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        hop = self.one_hop
        if hop is None:
            return handle

        async def handler(request: Request) -> Response:
            try:
                return await handle(request)
            except RequestValidationError as exc:
                # Invalid parameters: FastAPI's own order checked the user first (the dependencies
                # run before the parameters are judged), so a caller who is not signed in hears 401.
                # A body that is not JSON at all is judged before anything, as FastAPI does.
                if not any(e.get("type") == "json_invalid" for e in exc.errors()):
                    creds = await bearer(request) if api_principal in hop.roles.values() else None
                    await anyio.to_thread.run_sync(hop.check_user, request, creds)
                raise

        return handler
