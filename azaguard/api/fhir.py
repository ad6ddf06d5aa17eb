"""The FHIR R4 API under /fhir (docs/ehr.md section 3): read-only, JSON, bearer tokens as the REST API.

Thin: each route authenticates with the REST API's dependency (ApiUser), calls one use case in
azaguard.ehr.fhir_api and answers `application/fhir+json`. Every error is an OperationOutcome with
its HTTP status - 401 without a valid token, 404 for an id that does not exist or that the user may
not see (one answer for both), 400 for a search parameter the server does not take, 405 for a
write - so a FHIR client never meets the REST API's {"error": ...} shape or an HTML page here.

The CapabilityStatement (/fhir/metadata) is open: it holds no patient data, and FHIR clients read
it before they hold a token. The API is described by it rather than by the OpenAPI schema
(include_in_schema=False): FHIR clients do not read OpenAPI.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from azaguard import service
from azaguard.deps import ApiUser, KbDep, SessionDep, Settings, SettingsDep
from azaguard.ehr import fhir_api
from azaguard.ehr.fhir_api import FhirProblem
from azaguard.render.fhir import operation_outcome

FHIR_JSON = "application/fhir+json"
# HTTP status -> FHIR issue type (http://hl7.org/fhir/issue-type) of the OperationOutcome.
ISSUE = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported", 413: "too-costly"}


class FhirResponse(JSONResponse):
    media_type = FHIR_JSON


def outcome(request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    kb = getattr(request.app.state, "kb", None)
    body = operation_outcome(code, message, kb.version if kb is not None else None)
    return FhirResponse(body, status_code=status, headers=headers)


class FhirRoute(APIRoute):
    """Errors raised before or outside a use case - a missing token (the 401 of ApiUser), a refusal
    the service raised - become OperationOutcomes here, not the app's REST or HTML error answers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handle(request)
            except StarletteHTTPException as exc:
                code = ISSUE.get(exc.status_code, "processing")
                return outcome(request, exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))
            except RequestValidationError:
                return outcome(request, 400, "invalid", "invalid request parameters")
            except service.NotFound as exc:
                return outcome(request, 404, "not-found", str(exc))
            except service.Denied as exc:
                return outcome(request, 403, "forbidden", str(exc))

        return route


router = APIRouter(prefix="/fhir", include_in_schema=False, route_class=FhirRoute)


def _base(request: Request, settings: Settings) -> str:
    """The FHIR base in fullUrl and paging links: AZAGUARD_PUBLIC_URL when set (behind a proxy), else
    the address the request came to."""
    return f"{(settings.public_url or str(request.base_url)).rstrip('/')}/fhir"


def _answer(request: Request, make: Callable[[], dict[str, Any]]) -> Response:
    """The use case's resource, or its OperationOutcome. A FhirProblem is answered here, inside the
    unit of work, so the audit row of a read that was authorised (a 404 or 410 after it) is kept."""
    try:
        return FhirResponse(make())
    except FhirProblem as p:
        return outcome(request, p.status, p.code, p.message)


@router.get("/metadata")
async def metadata(request: Request, kb: KbDep, settings: SettingsDep) -> Response:
    params = list(request.query_params.multi_items())

    def make() -> dict[str, Any]:
        fhir_api.check_format(params)
        return fhir_api.capability_statement(kb, _base(request, settings))

    return _answer(request, make)


@router.get("/Patient/{resource_id}/$everything")
def everything(
    resource_id: str, request: Request, s: SessionDep, kb: KbDep, settings: SettingsDep, who: ApiUser
) -> Response:
    params = list(request.query_params.multi_items())
    return _answer(request, lambda: fhir_api.everything(s, kb, who, resource_id, params, _base(request, settings)))


@router.get("/{resource_type}")
def search(
    resource_type: str, request: Request, s: SessionDep, kb: KbDep, settings: SettingsDep, who: ApiUser
) -> Response:
    params = list(request.query_params.multi_items())
    return _answer(request, lambda: fhir_api.search(s, kb, who, resource_type, params, _base(request, settings)))


@router.get("/{resource_type}/{resource_id}")
def read(resource_type: str, resource_id: str, request: Request, s: SessionDep, kb: KbDep, who: ApiUser) -> Response:
    params = list(request.query_params.multi_items())

    def make() -> dict[str, Any]:
        fhir_api.check_format(params)
        return fhir_api.read(s, kb, who, resource_type, resource_id)

    return _answer(request, make)


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def not_served(path: str, request: Request) -> Response:
    """Writes (405: this API is read-only) and interactions it does not offer (404)."""
    if request.method != "GET":
        return outcome(request, 405, "not-supported", "this FHIR API is read-only", {"Allow": "GET"})
    return outcome(request, 404, "not-supported", "this FHIR interaction is not served here (see /fhir/metadata)")
