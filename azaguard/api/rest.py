"""REST API, version 1. Bearer tokens; every error is JSON {"error": {"status", "message"}}."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from azaguard import auth, service
from azaguard import worklist as wl
from azaguard.app import session_dep
from azaguard.audit import audit
from azaguard.ingest import FormatError, parse_text
from azaguard.knowledge import Knowledge
from azaguard.store import models as m
from azaguard.store.writes import FormError

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad request (invalid value)"},
    401: {"description": "Missing or invalid bearer token"},
    403: {"description": "Not allowed for this user"},
    404: {"description": "Not found"},
    422: {"description": "Invalid request body or parameters"},
    429: {"description": "Too many failed logins (token endpoint)"},
}
bearer = HTTPBearer(auto_error=False)
router = APIRouter(prefix="/api/v1", responses=ERRORS)

SessionDep = Annotated[Session, Depends(session_dep, scope="function")]  # commit before responding
# Row ids are 32-bit INTEGER columns: a larger id is a 422, not an overflow in the database driver (a 500).
MAX_ID = 2**31 - 1
PatientId = Annotated[int, Path(ge=1, le=MAX_ID)]
FindingId = Annotated[int, Path(ge=1, le=MAX_ID)]
ItemId = Annotated[int, Path(ge=1, le=MAX_ID)]


def kb_of(request: Request) -> Knowledge:
    return request.app.state.kb


KbDep = Annotated[Knowledge, Depends(kb_of)]


def api_user(s: SessionDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> m.User:
    user = auth.token_user(s, creds.credentials if creds else None)
    if user is None:
        raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
    return user


UserDep = Annotated[m.User, Depends(api_user)]


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


class MedicineOut(BaseModel):
    """A medicine row; azathioprine rows are the dose history (status on-hold while withheld)."""

    id: int
    drug: str | None
    name: str
    status: str = Field(description="active, on-hold, draft, intended, stopped or unknown")
    kind: str
    start: dt.date | None
    end: dt.date | None
    mg_per_day: float | None
    reason: str | None = Field(description="why it is on hold or stopped")
    status_date: dt.date | None = Field(description="when the hold or stop took effect")


class FollowUpDismissalOut(BaseModel):
    id: int
    patient_id: int
    key: str
    reason: str
    created_at: dt.datetime


def _run(fn: Any, *args: Any) -> Any:
    """Map domain errors to HTTP errors in one place."""
    try:
        return fn(*args)
    except service.Denied as exc:
        raise HTTPException(403, str(exc)) from None
    except service.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except FormError as exc:
        raise HTTPException(400, f"{exc.field}: {exc.message}") from None
    except (wl.ReviewError, auth.AuthError, FormatError, ValueError) as exc:
        raise HTTPException(400, str(exc)) from None


def patient_json(p: m.Patient) -> dict[str, Any]:
    return {
        "id": p.id,
        "identifier": p.identifier,
        "name": p.name,
        "birth_date": p.birth_date.isoformat() if p.birth_date else None,
        "sex": p.sex,
        "monitoring_team": p.monitoring_team,
    }


def observation_json(o: m.Observation) -> dict[str, Any]:
    return {
        "id": o.id,
        "kind": o.kind,
        "analyte": o.analyte,
        "code": o.code,
        "value": o.value,
        "unit": o.unit,
        "reported": f"{o.original_value} {o.original_unit}" if o.original_value else None,
        "date": o.effective.isoformat(),
        "status": o.status,
        "review_state": o.review_state,
    }


def medicine_json(x: m.Medication) -> dict[str, Any]:
    return {
        "id": x.id,
        "drug": x.drug,
        "name": x.name,
        "status": x.status,
        "kind": x.kind,
        "start": x.start.isoformat() if x.start else None,
        "end": x.end.isoformat() if x.end else None,
        "mg_per_day": x.daily_dose_mg,
        "reason": x.reason or None,
        "status_date": x.status_date.isoformat() if x.status_date else None,
    }


def finding_json(f: m.FindingRow) -> dict[str, Any]:
    return {
        "id": f.id,
        "patient_id": f.patient_id,
        "code": f.code,
        "category": f.category,
        "severity": f.severity,
        "message": f.message,
        "action": f.action,
        "state": f.state,
    }


@router.post("/token", tags=["auth"], summary="Exchange username and password for a bearer token")
def token(body: TokenRequest, s: SessionDep) -> dict[str, Any]:
    if auth.login_locked(s, body.username):
        audit(s, None, "login-locked", "api-token", detail=f"username {body.username.strip()[:40]}", channel="api")
        s.commit()
        raise HTTPException(429, "too many failed logins: try again in 15 minutes")
    user = auth.authenticate(s, body.username, body.password)
    if user is None:
        audit(s, None, "login-failed", "api-token", detail=f"username {body.username.strip()[:40]}", channel="api")
        s.commit()
        raise HTTPException(401, "wrong username or password")
    tok = auth.create_api_token(s, user, body.label)
    audit(s, user, "login", "api-token", channel="api")
    return {"token": tok, "token_type": "bearer", "role": user.role, "patient_id": user.patient_id}


@router.get("/patients", tags=["patients"])
def list_patients(
    s: SessionDep,
    user: UserDep,
    search: Annotated[str | None, Query(max_length=100, pattern=NO_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> dict[str, Any]:
    rows, total = service.list_patients(s, user, search, limit, offset, "api")
    return {"total": total, "patients": [patient_json(p) for p in rows]}


@router.post("/patients", tags=["patients"], status_code=201)
def create_patient(body: PatientIn, s: SessionDep, kb: KbDep, user: UserDep) -> dict[str, Any]:
    from azaguard.store.writes import add_patient

    _run(service.require_role, s, user, ("clinician", "admin"), "create-patient", "api")
    p = _run(add_patient, s, body.identifier, body.name, body.birth_date, body.sex, body.monitoring_team)
    audit(s, user, "write", "create-patient", p.id, channel="api")
    wl.refresh_patient(s, kb, p.id)
    return patient_json(p)


@router.get("/patients/{patient_id}", tags=["patients"])
def get_patient(patient_id: PatientId, s: SessionDep, user: UserDep) -> dict[str, Any]:
    p = _run(service.authorise_patient, s, user, patient_id, "view-patient", "api")
    return patient_json(p)


@router.get("/patients/{patient_id}/observations", tags=["observations"])
def list_observations(
    patient_id: PatientId,
    s: SessionDep,
    user: UserDep,
    analyte: Annotated[str | None, Query(max_length=40, pattern=NO_NUL)] = None,
    include_history: bool = False,
) -> dict[str, Any]:
    _run(service.authorise_patient, s, user, patient_id, "list-observations", "api")
    q = select(m.Observation).where(m.Observation.patient_id == patient_id)
    if not include_history:
        q = q.where(m.Observation.current.is_(True))
    if analyte:
        q = q.where(m.Observation.analyte == analyte)
    rows = s.scalars(q.order_by(m.Observation.effective, m.Observation.id))
    return {"observations": [observation_json(o) for o in rows]}


@router.post("/patients/{patient_id}/observations", tags=["observations"], status_code=201)
def add_observation(
    patient_id: PatientId, body: ObservationIn, s: SessionDep, kb: KbDep, user: UserDep
) -> dict[str, Any]:
    o = _run(service.add_lab, s, kb, user, patient_id, body.analyte, body.value, body.unit, body.date, "api")
    return observation_json(o)


@router.get("/patients/{patient_id}/medicines", tags=["medicines"])
def list_medicines(patient_id: PatientId, s: SessionDep, user: UserDep) -> dict[str, Any]:
    _run(service.authorise_patient, s, user, patient_id, "list-medicines", "api")
    rows = s.scalars(select(m.Medication).where(m.Medication.patient_id == patient_id).order_by(m.Medication.start))
    return {"medicines": [medicine_json(x) for x in rows]}


@router.post("/patients/{patient_id}/medicines", tags=["medicines"], status_code=201)
def add_medicine(patient_id: PatientId, body: MedicineIn, s: SessionDep, kb: KbDep, user: UserDep) -> dict[str, Any]:
    x = _run(service.add_medicine, s, kb, user, patient_id, body.name, body.status, body.start, body.mg_per_day, "api")
    return medicine_json(x)


@router.post("/patients/{patient_id}/dose", tags=["medicines"], status_code=201, summary="Change the azathioprine dose")
def change_dose(patient_id: PatientId, body: DoseIn, s: SessionDep, kb: KbDep, user: UserDep) -> dict[str, Any]:
    x = _run(service.change_dose, s, kb, user, patient_id, body.mg_per_day, body.start, "api")
    return medicine_json(x)


@router.post(
    "/patients/{patient_id}/hold",
    tags=["medicines"],
    status_code=201,
    summary="Withhold azathioprine (on hold, not stopped)",
    response_model=MedicineOut,
)
def hold(patient_id: PatientId, body: HoldIn, s: SessionDep, kb: KbDep, user: UserDep) -> MedicineOut:
    x = _run(service.hold_azathioprine, s, kb, user, patient_id, body.reason, body.start, "api")
    return MedicineOut(**medicine_json(x))


@router.post(
    "/patients/{patient_id}/follow-ups/dismiss",
    tags=["reviews"],
    status_code=201,
    summary="Drop an open follow-up (repeat test) with a reason",
    response_model=FollowUpDismissalOut,
)
def dismiss_follow_up(
    patient_id: PatientId, body: FollowUpDismissIn, s: SessionDep, kb: KbDep, user: UserDep
) -> FollowUpDismissalOut:
    x = _run(service.dismiss_follow_up, s, kb, user, patient_id, body.key, body.reason, "api")
    return FollowUpDismissalOut(id=x.id, patient_id=x.patient_id, key=x.key, reason=x.reason, created_at=x.created_at)


@router.post("/patients/{patient_id}/vaccines", tags=["medicines"], status_code=201)
def add_vaccine(patient_id: PatientId, body: VaccineIn, s: SessionDep, kb: KbDep, user: UserDep) -> dict[str, Any]:
    v = _run(service.add_vaccine, s, kb, user, patient_id, body.name, body.status, body.date, "api")
    return {
        "id": v.id,
        "vaccine": v.vaccine,
        "live": v.live,
        "status": v.status,
        "date": v.when.isoformat() if v.when else None,
    }


@router.post("/patients/{patient_id}/symptoms", tags=["observations"], status_code=201)
def report_symptom(patient_id: PatientId, body: SymptomIn, s: SessionDep, kb: KbDep, user: UserDep) -> dict[str, Any]:
    x = _run(service.report_symptom, s, kb, user, patient_id, body.symptom, body.date, "api")
    return {"id": x.id, "symptom": x.key or x.text, "date": x.when.isoformat(), "reported_by": x.reported_by}


@router.get(
    "/patients/{patient_id}/assessment", tags=["assessment"], summary="Assessment in the azaguard JSON contract"
)
def get_assessment(patient_id: PatientId, s: SessionDep, kb: KbDep, user: UserDep) -> dict[str, Any]:
    return _run(service.assessment, s, kb, user, patient_id, "api")


@router.get("/patients/{patient_id}/findings", tags=["reviews"])
def list_findings(patient_id: PatientId, s: SessionDep, user: UserDep) -> dict[str, Any]:
    _run(service.authorise_patient, s, user, patient_id, "list-findings", "api")
    rows = wl.order_findings(wl.open_findings(s, patient_id), wl.stored_assessment(s, patient_id))
    return {"findings": [finding_json(f) for f in rows]}


@router.post("/findings/{finding_id}/reviews", tags=["reviews"], status_code=201)
def review_finding(finding_id: FindingId, body: ReviewIn, s: SessionDep, kb: KbDep, user: UserDep) -> dict[str, Any]:
    r = _run(service.review, s, kb, user, finding_id, body.outcome, body.note, "api")
    return {
        "id": r.id,
        "finding_id": r.finding_id,
        "outcome": r.outcome,
        "note": r.note,
        "created_at": r.created_at.isoformat(),
    }


@router.get("/worklist", tags=["reviews"])
def get_worklist(
    s: SessionDep,
    user: UserDep,
    severity: Literal["critical", "warning"] | None = None,
    category: Annotated[str | None, Query(max_length=40, pattern=NO_NUL)] = None,
    indication: Annotated[str | None, Query(max_length=40, pattern=NO_NUL)] = None,
    team: Literal["specialist", "gp"] | None = None,
    search: Annotated[str | None, Query(max_length=100, pattern=NO_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> dict[str, Any]:
    _run(service.require_role, s, user, ("clinician", "admin"), "worklist", "api")
    entries, total = wl.worklist(
        s, wl.WorklistFilter(severity, category, indication, team, search, limit=limit, offset=offset)
    )
    audit(s, user, "read", f"worklist ({len(entries)})", channel="api")
    return {
        "total": total,
        "entries": [
            {
                **{k: v for k, v in e.__dict__.items() if k != "next_due"},
                "next_due": e.next_due.isoformat() if e.next_due else None,
            }
            for e in entries
        ],
    }


async def raw_body(request: Request) -> str:
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(400, "the body must be UTF-8 text") from None
    if "\x00" in text:
        raise HTTPException(400, "the body must not contain NUL characters")
    return text


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
    summary="Import FHIR Bundle/NDJSON, HL7 v2 ORU^R01 or CSV (raw body)",
    openapi_extra=IMPORT_BODY,
)
def import_data(
    s: SessionDep,
    kb: KbDep,
    user: UserDep,
    body: Annotated[str, Depends(raw_body)],
    format: Literal["fhir", "ndjson", "hl7v2", "csv"] | None = None,
    filename: Annotated[str, Query(max_length=200, pattern=NO_NUL)] = "upload",
) -> dict[str, Any]:
    _run(service.require_role, s, user, ("clinician", "admin"), "import", "api")
    if not body.strip():
        raise HTTPException(400, "the body is empty")
    parsed = _run(parse_text, body, kb, format, filename)
    summary = _run(service.import_parsed, s, kb, user, parsed, filename, "api")
    return summary.as_dict()


@router.get("/quarantine", tags=["import"])
def list_quarantine(
    s: SessionDep,
    user: UserDep,
    state: Literal["open", "reprocessed", "discarded"] = "open",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    _run(service.require_role, s, user, ("admin",), "quarantine", "api")
    rows = s.scalars(
        select(m.QuarantineItem)
        .where(m.QuarantineItem.state == state)
        .order_by(m.QuarantineItem.id.desc())
        .limit(limit)
    )
    audit(s, user, "read", "quarantine", channel="api")
    return {
        "items": [
            {
                "id": q.id,
                "received_at": q.received_at.isoformat(),
                "format": q.format,
                "record": q.record_ref,
                "patient_identifier": q.patient_identifier,
                "reason": q.reason,
                "original": q.original,
                "state": q.state,
            }
            for q in rows
        ]
    }


@router.post("/quarantine/{item_id}/reprocess", tags=["import"])
def reprocess(item_id: ItemId, s: SessionDep, kb: KbDep, user: UserDep) -> dict[str, Any]:
    summary = _run(service.reprocess_quarantine, s, kb, user, item_id, "api")
    item = s.get(m.QuarantineItem, item_id)
    return {**summary.as_dict(), "state": item.state if item else None}


@router.post("/quarantine/{item_id}/discard", tags=["import"])
def discard(item_id: ItemId, body: DiscardIn, s: SessionDep, user: UserDep) -> dict[str, Any]:
    _run(service.discard_quarantine, s, user, item_id, body.reason, "api")
    return {"id": item_id, "state": "discarded"}


@router.get("/audit", tags=["admin"])
def audit_log(
    s: SessionDep,
    user: UserDep,
    patient_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> dict[str, Any]:
    _run(service.require_role, s, user, ("admin",), "audit-log", "api")
    q = select(m.AuditEvent).order_by(m.AuditEvent.id.desc()).limit(limit)
    if patient_id is not None:
        q = q.where(m.AuditEvent.patient_id == patient_id)
    rows = list(s.scalars(q))
    return {
        "events": [
            {
                "at": e.at.isoformat(),
                "user": e.username,
                "action": e.action,
                "resource": e.resource,
                "patient_id": e.patient_id,
                "channel": e.channel,
                "detail": e.detail,
            }
            for e in rows
        ]
    }
