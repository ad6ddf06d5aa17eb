"""REST API, version 1. Bearer tokens; every error is JSON {"error": {"status", "message"}}.

Each route validates its input (the request models below), calls one use case in azaguard.service
and answers with that use case's view model, which is also the route's `response_model`: the
OpenAPI schema describes every answer.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import IO, Annotated, Any, Literal, ParamSpec, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field, field_validator

from azaguard import service
from azaguard.deps import ApiUser, KbDep, OneHopRoute, SessionDep, SettingsDep, bearer
from azaguard.service_models import (
    AssessmentOut,
    AuditList,
    ClinicContact,
    DiscardOut,
    DocumentList,
    DocumentOut,
    ErrorOut,
    FindingList,
    FollowUpDismissalOut,
    ImportResult,
    LetterBatchOut,
    MedicineList,
    MedicineOut,
    ObservationList,
    ObservationOut,
    OwnerOut,
    PatientList,
    PatientOut,
    Principal,
    QuarantineList,
    ReprocessResult,
    ReviewOut,
    SymptomOut,
    TokenOut,
    VaccineOut,
    WorklistPage,
    WorklistQuery,
)

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "Bad request (invalid value)"},
    401: {"model": ErrorOut, "description": "Missing or invalid bearer token"},
    403: {"model": ErrorOut, "description": "Not allowed for this user"},
    404: {"model": ErrorOut, "description": "Not found"},
    422: {"model": ErrorOut, "description": "Invalid request body or parameters (every problem listed)"},
    429: {"model": ErrorOut, "description": "Too many failed logins (token endpoint)"},
}
router = APIRouter(prefix="/api/v1", responses=ERRORS, route_class=OneHopRoute)

# Row ids are 32-bit INTEGER columns: a larger id is a 422, not an overflow in the database driver (a 500).
MAX_ID = 2**31 - 1
PatientId = Annotated[int, Path(ge=1, le=MAX_ID)]
FindingId = Annotated[int, Path(ge=1, le=MAX_ID)]
ItemId = Annotated[int, Path(ge=1, le=MAX_ID)]
P = ParamSpec("P")
T = TypeVar("T")


# PostgreSQL text cannot hold NUL (U+0000): refused here as a 422/400 rather than failing in the driver (a 500).
NO_NUL = r"^[^\x00]*$"


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


class Strict(Body):
    model_config = ConfigDict(extra="forbid", strict=True)


class TokenRequest(Strict):
    username: str = Field(min_length=1, max_length=80)
    password: str = Field(min_length=1, max_length=200)
    label: str = Field(default="", max_length=80)


class PatientIn(Strict):
    identifier: str = Field(min_length=1, max_length=64)
    name: str = Field(default="", max_length=200)
    birth_date: dt.date | None = None
    sex: Literal["male", "female", "other", "unknown"] | None = None
    monitoring_team: Literal["specialist", "gp"] = "specialist"

    model_config = ConfigDict(extra="forbid", strict=False)


class ObservationIn(Body):
    analyte: str = Field(
        min_length=1, max_length=40, description="e.g. wbc, neutrophils, platelets, alt, creatinine, egfr, weight"
    )
    value: float = Field(ge=0, allow_inf_nan=False)
    unit: str = Field(
        min_length=1, max_length=40, description="UCUM or a known spelling, e.g. 10*9/L, /uL, U/L, umol/L, mg/dL"
    )
    date: dt.date


class DoseIn(Body):
    mg_per_day: float = Field(gt=0, le=1000, allow_inf_nan=False)
    start: dt.date


class MedicineIn(Body):
    name: str = Field(min_length=1, max_length=200)
    status: Literal["active", "draft"] = "active"
    start: dt.date | None = None
    mg_per_day: float | None = Field(default=None, ge=0, le=100000, allow_inf_nan=False)


class VaccineIn(Body):
    name: str = Field(min_length=1, max_length=200)
    status: Literal["given", "ordered"]
    date: dt.date | None = None


class SymptomIn(Body):
    symptom: str = Field(min_length=1, max_length=200, description="a symptom key (fever, sore-throat, ...) or words")
    date: dt.date | None = None


class ReviewIn(Body):
    outcome: Literal[
        "repeat-test-booked",
        "dose-reduced",
        "withheld",
        "discussed-with-specialist",
        "patient-contacted",
        "not-relevant",
    ]
    note: str = Field(default="", max_length=2000)


class DiscardIn(Body):
    reason: str = Field(min_length=1, max_length=500)


class HoldIn(Body):
    reason: str = Field(min_length=1, max_length=2000, description="why azathioprine is withheld (required)")
    start: dt.date | None = Field(default=None, description="the first day off azathioprine; default today")


class FollowUpDismissIn(Body):
    key: str = Field(
        min_length=1, max_length=200, description="the follow-up's key from the assessment's monitoring.follow_ups"
    )
    reason: str = Field(min_length=1, max_length=2000, description="why the repeat test is not needed (required)")


class OwnerIn(Body):
    username: str | None = Field(
        max_length=80,
        description="the clinician or admin who owns the patient from now on (one's own: a claim), or null: nobody",
    )


def _run(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call a use case, mapping its refusals to HTTP errors in one place."""
    try:
        return fn(*args, **kwargs)
    except service.Denied as exc:
        raise HTTPException(403, str(exc)) from None
    except service.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ValueError as exc:  # FormError, ReviewError, FormatError, ...: a value is wrong
        raise HTTPException(400, str(exc)) from None


@router.post(
    "/token",
    tags=["auth"],
    summary="Exchange username and password for a bearer token",
    response_model=TokenOut,
)
def token(body: TokenRequest, s: SessionDep, request: Request) -> TokenOut:
    client = request.client.host if request.client else None
    try:
        return service.issue_api_token(s, body.username, body.password, body.label, client)
    except service.LoginLocked:
        raise HTTPException(429, "too many failed logins: try again in 15 minutes") from None
    except service.LoginFailed:
        raise HTTPException(401, "wrong username or password") from None


@router.delete(
    "/token",
    tags=["auth"],
    summary="Revoke the bearer token this request is made with (it stops working at once)",
    status_code=204,
)
def revoke_token(
    s: SessionDep, who: ApiUser, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Response:
    if creds is not None:
        service.revoke_own_api_token(s, who, creds.credentials)
    return Response(status_code=204)


@router.get("/patients", tags=["patients"], response_model=PatientList)
def list_patients(
    s: SessionDep,
    who: ApiUser,
    search: Annotated[str | None, Query(max_length=100, pattern=NO_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> PatientList:
    return service.list_patients(s, who, search, limit, offset, "api")


@router.post("/patients", tags=["patients"], status_code=201, response_model=PatientOut)
def create_patient(body: PatientIn, s: SessionDep, kb: KbDep, who: ApiUser) -> PatientOut:
    return _run(
        service.create_patient,
        s,
        kb,
        who,
        body.identifier,
        body.name,
        body.birth_date,
        body.sex,
        body.monitoring_team,
        "api",
    )


@router.get("/patients/{patient_id}", tags=["patients"], response_model=PatientOut)
def get_patient(patient_id: PatientId, s: SessionDep, who: ApiUser) -> PatientOut:
    return _run(service.get_patient, s, who, patient_id, "api")


@router.get("/patients/{patient_id}/observations", tags=["observations"], response_model=ObservationList)
def list_observations(
    patient_id: PatientId,
    s: SessionDep,
    who: ApiUser,
    analyte: Annotated[str | None, Query(max_length=40, pattern=NO_NUL)] = None,
    include_history: bool = False,
) -> ObservationList:
    return _run(service.list_observations, s, who, patient_id, analyte, include_history, "api")


@router.post(
    "/patients/{patient_id}/observations", tags=["observations"], status_code=201, response_model=ObservationOut
)
def add_observation(
    patient_id: PatientId, body: ObservationIn, s: SessionDep, kb: KbDep, who: ApiUser
) -> ObservationOut:
    return _run(service.add_lab, s, kb, who, patient_id, body.analyte, body.value, body.unit, body.date, "api")


@router.get("/patients/{patient_id}/medicines", tags=["medicines"], response_model=MedicineList)
def list_medicines(patient_id: PatientId, s: SessionDep, who: ApiUser) -> MedicineList:
    return _run(service.list_medicines, s, who, patient_id, "api")


@router.post("/patients/{patient_id}/medicines", tags=["medicines"], status_code=201, response_model=MedicineOut)
def add_medicine(patient_id: PatientId, body: MedicineIn, s: SessionDep, kb: KbDep, who: ApiUser) -> MedicineOut:
    return _run(
        service.add_medicine, s, kb, who, patient_id, body.name, body.status, body.start, body.mg_per_day, "api"
    )


@router.post(
    "/patients/{patient_id}/dose",
    tags=["medicines"],
    status_code=201,
    summary="Change the azathioprine dose",
    response_model=MedicineOut,
)
def change_dose(patient_id: PatientId, body: DoseIn, s: SessionDep, kb: KbDep, who: ApiUser) -> MedicineOut:
    return _run(service.change_dose, s, kb, who, patient_id, body.mg_per_day, body.start, "api")


@router.post(
    "/patients/{patient_id}/hold",
    tags=["medicines"],
    status_code=201,
    summary="Withhold azathioprine (on hold, not stopped)",
    response_model=MedicineOut,
)
def hold(patient_id: PatientId, body: HoldIn, s: SessionDep, kb: KbDep, who: ApiUser) -> MedicineOut:
    return _run(service.hold_azathioprine, s, kb, who, patient_id, body.reason, body.start, "api")


@router.post(
    "/patients/{patient_id}/follow-ups/dismiss",
    tags=["reviews"],
    status_code=201,
    summary="Drop an open follow-up (repeat test) with a reason",
    response_model=FollowUpDismissalOut,
)
def dismiss_follow_up(
    patient_id: PatientId, body: FollowUpDismissIn, s: SessionDep, kb: KbDep, who: ApiUser
) -> FollowUpDismissalOut:
    return _run(service.dismiss_follow_up, s, kb, who, patient_id, body.key, body.reason, "api")


@router.post("/patients/{patient_id}/vaccines", tags=["medicines"], status_code=201, response_model=VaccineOut)
def add_vaccine(patient_id: PatientId, body: VaccineIn, s: SessionDep, kb: KbDep, who: ApiUser) -> VaccineOut:
    return _run(service.add_vaccine, s, kb, who, patient_id, body.name, body.status, body.date, "api")


@router.post("/patients/{patient_id}/symptoms", tags=["observations"], status_code=201, response_model=SymptomOut)
def report_symptom(patient_id: PatientId, body: SymptomIn, s: SessionDep, kb: KbDep, who: ApiUser) -> SymptomOut:
    return _run(service.report_symptom, s, kb, who, patient_id, body.symptom, body.date, "api")


@router.get(
    "/patients/{patient_id}/assessment",
    tags=["assessment"],
    summary="Assessment in the azaguard JSON contract",
    response_model=AssessmentOut,
    response_model_exclude_unset=True,  # optional fields of the contract (ctcae) only where present
)
def get_assessment(patient_id: PatientId, s: SessionDep, kb: KbDep, who: ApiUser) -> AssessmentOut:
    return _run(service.assessment, s, kb, who, patient_id, "api")


@router.get("/patients/{patient_id}/findings", tags=["reviews"], response_model=FindingList)
def list_findings(patient_id: PatientId, s: SessionDep, who: ApiUser) -> FindingList:
    return _run(service.list_findings, s, who, patient_id, "api")


@router.post("/findings/{finding_id}/reviews", tags=["reviews"], status_code=201, response_model=ReviewOut)
def review_finding(finding_id: FindingId, body: ReviewIn, s: SessionDep, kb: KbDep, who: ApiUser) -> ReviewOut:
    return _run(service.review, s, kb, who, finding_id, body.outcome, body.note, "api")


@router.get("/worklist", tags=["reviews"], response_model=WorklistPage)
def get_worklist(
    s: SessionDep,
    who: ApiUser,
    severity: Literal["critical", "warning"] | None = None,
    category: Annotated[str | None, Query(max_length=40, pattern=NO_NUL)] = None,
    indication: Annotated[str | None, Query(max_length=40, pattern=NO_NUL)] = None,
    team: Literal["specialist", "gp"] | None = None,
    search: Annotated[str | None, Query(max_length=100, pattern=NO_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    needs: Annotated[
        Literal["critical", "warning", "overdue", "awaiting"] | None,
        Query(description="only the patients one of the counts counts (`counts` in the answer)"),
    ] = None,
    mine: Annotated[bool, Query(description="only the patients the caller owns")] = False,
    sort: Annotated[
        Literal["urgency", "due", "name", "owner"], Query(description="urgency: critical, warning, then by due date")
    ] = "urgency",
) -> WorklistPage:
    query = WorklistQuery(
        severity, category, indication, team, search, limit=limit, offset=offset, needs=needs, mine=mine, sort=sort
    )
    return _run(service.worklist, s, who, query, "api")


@router.post(
    "/patients/{patient_id}/owner",
    tags=["reviews"],
    summary="Claim a patient, assign them to a clinician or admin, or unassign them (null)",
    response_model=OwnerOut,
)
def set_owner(patient_id: PatientId, body: OwnerIn, s: SessionDep, who: ApiUser) -> OwnerOut:
    return _run(service.set_owner, s, who, patient_id, body.username, "api")


def import_user(s: SessionDep, who: ApiUser) -> Principal:
    """A clinician or admin, checked before the upload is read: anyone else gets 401 or 403 and
    their body is never read."""
    service.may_import(s, who, "api")
    return who


SPOOL_BYTES = 1024 * 1024  # an upload stays in memory up to this size, then goes to a temporary file


async def spooled_body(request: Request) -> AsyncIterator[IO[bytes]]:
    """The request body, streamed chunk by chunk into a temporary file (deleted after the request).
    app.BodyLimit counts each chunk as it arrives and cuts an upload over the import limit off with
    413, so the server never holds more than one chunk of it in memory while it arrives."""
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as upload:
        async for chunk in request.stream():
            upload.write(chunk)
        upload.seek(0)
        yield upload


IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            "application/fhir+json": {"schema": {"type": "string"}},
        },
    }
}


@router.post(
    "/import",
    tags=["import"],
    summary="Import FHIR Bundle/NDJSON, HL7 v2 ORU^R01, CSV or a PharmCAT report (raw body)",
    openapi_extra=IMPORT_BODY,
    response_model=ImportResult,
)
def import_data(
    s: SessionDep,
    kb: KbDep,
    who: Annotated[Principal, Depends(import_user)],  # before the body: dependencies are solved in order
    body: Annotated[IO[bytes], Depends(spooled_body, scope="function")],
    format: Literal["fhir", "ndjson", "hl7v2", "csv", "pharmcat"] | None = None,
    filename: Annotated[str, Query(max_length=200, pattern=NO_NUL)] = "upload",
    patient: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
) -> ImportResult:
    """Streamed to a temporary file, then committed in chunks (each atomic; sending the same file
    again after a failure continues where it stopped). `message` says when nothing was new.
    `patient`: the patient identifier a PharmCAT report is for (a report names only a sample)."""
    return _run(service.import_upload, s, kb, who, body, format, filename, "api", patient)


@router.get("/quarantine", tags=["import"], response_model=QuarantineList)
def list_quarantine(
    s: SessionDep,
    who: ApiUser,
    state: Literal["open", "reprocessed", "discarded"] = "open",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> QuarantineList:
    return _run(service.list_quarantine, s, who, state, limit, "api")


@router.post("/quarantine/{item_id}/reprocess", tags=["import"], response_model=ReprocessResult)
def reprocess(item_id: ItemId, s: SessionDep, kb: KbDep, who: ApiUser) -> ReprocessResult:
    return _run(service.reprocess, s, kb, who, item_id, "api")


@router.post("/quarantine/{item_id}/discard", tags=["import"], response_model=DiscardOut)
def discard(item_id: ItemId, body: DiscardIn, s: SessionDep, who: ApiUser) -> DiscardOut:
    return _run(service.discard_quarantine, s, who, item_id, body.reason, "api")


@router.get("/audit", tags=["admin"], response_model=AuditList)
def audit_log(
    s: SessionDep,
    who: ApiUser,
    patient_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> AuditList:
    return _run(service.audit_log, s, who, patient_id, limit, "api")


# ---------------------------------------------------------------- letters and documents (shared care)
DocumentId = Annotated[int, Path(ge=1, le=MAX_ID)]
PDF_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The document as it was stored (a PDF), as an attachment",
        "content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}},
    }
}


class LetterIn(Body):
    recipient: Literal["gp", "specialist"] = Field(default="gp", description="the patient's GP or the specialist team")


def _contact(settings: SettingsDep) -> ClinicContact:
    return ClinicContact(settings.clinic_name, settings.clinic_phone, settings.out_of_hours)


@router.post(
    "/patients/{patient_id}/letters",
    tags=["documents"],
    status_code=201,
    summary="Write a shared-care letter (PDF) to the GP or the specialist team from the assessment, and store it",
    response_model=DocumentOut,
)
def write_letter(
    patient_id: PatientId,
    s: SessionDep,
    kb: KbDep,
    who: ApiUser,
    contact: Annotated[ClinicContact, Depends(_contact)],
    body: LetterIn | None = None,
) -> DocumentOut:
    recipient = body.recipient if body else "gp"
    return _run(service.make_letter, s, kb, who, patient_id, contact, recipient, "api")


@router.get("/patients/{patient_id}/documents", tags=["documents"], response_model=DocumentList)
def list_documents(patient_id: PatientId, s: SessionDep, who: ApiUser) -> DocumentList:
    return _run(service.list_documents, s, who, patient_id, "api")


@router.get(
    "/documents/{document_id}",
    tags=["documents"],
    summary="A stored document's bytes (a letter's PDF)",
    response_class=Response,
    responses=PDF_ANSWER,
)
def get_document(document_id: DocumentId, s: SessionDep, who: ApiUser) -> Response:
    found = _run(service.get_document, s, who, document_id, "api")
    disposition = f'attachment; filename="{found.filename}"'
    return Response(found.content, media_type=found.media_type, headers={"Content-Disposition": disposition})


@router.post(
    "/letters/batch",
    tags=["documents"],
    summary="Write a GP letter for everyone moved to GP care this month who has none since the move",
    response_model=LetterBatchOut,
)
def gp_letters_batch(
    s: SessionDep, kb: KbDep, who: ApiUser, contact: Annotated[ClinicContact, Depends(_contact)]
) -> LetterBatchOut:
    return _run(service.gp_letters_batch, s, kb, who, contact, "api")
