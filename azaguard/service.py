"""Use cases shared by the web pages, the REST API and the CLI: authorise, act, audit, re-assess.

This is the one door to the clinic's data. Every read or write of a patient's data, every query a
page or an API answer shows, every login and every audit record goes through here, so
authorisation and the audit trail cannot be forgotten by one channel: a patient may only see and
report on their own record; clinicians and admins see every patient; only admins see the audit
log and act on quarantine (a clinician sees, read-only, what their own imports left there).
Callers get view models (azaguard.service_models), never database rows.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import date, datetime, time, timedelta
from typing import IO, Any

from sqlalchemy import BindParameter, bindparam, func, select
from sqlalchemy.orm import Session, SessionTransaction

from azaguard import auth, results_view
from azaguard import reminders as rem
from azaguard import worklist as wl
from azaguard.audit import audit
from azaguard.auth import LoginRefused as LoginRefused  # re-exported: 429/503 refusals of a login attempt
from azaguard.ingest import parse_text
from azaguard.ingest.items import Parsed
from azaguard.ingest.pipeline import ImportSummary, apply, apply_in_chunks
from azaguard.knowledge import Knowledge
from azaguard.notify import Channel, ReminderConfig, SendResult, compose, load_channels
from azaguard.render import letter as letters
from azaguard.render.json import SCHEMA_VERSION
from azaguard.results_view import GRID_DATES as GRID_DATES  # result dates the patient page's grid shows
from azaguard.results_view import group_label as group_label  # a test group's name ("full blood count")
from azaguard.service_models import (
    AssessmentOut,
    AuditEventOut,
    AuditList,
    AuditPage,
    AuditQuery,
    AuditRow,
    CdsAlertRow,
    CdsAlerts,
    CdsReport,
    CdsReportRow,
    ChartData,
    ClinicContact,
    DiscardOut,
    DocumentFile,
    DocumentList,
    DocumentOut,
    FindingList,
    FindingOut,
    FollowUpDismissalOut,
    GpTransfer,
    ImportResult,
    LetterBatchOut,
    MedicineList,
    MedicineOut,
    ObservationList,
    ObservationOut,
    OwnerOut,
    PanelOut,
    PatientList,
    PatientOut,
    PatientPage,
    PatientReminders,
    Principal,
    QuarantineItemOut,
    QuarantineList,
    ReminderPrefs,
    ReminderRun,
    ReminderSentRow,
    ReprocessResult,
    ReviewOut,
    SymptomOut,
    TeamMemberOut,
    TokenOut,
    VaccineOut,
    WebIdentity,
    WebLogin,
    WorklistCounts,
    WorklistEntryOut,
    WorklistPage,
    WorklistQuery,
)
from azaguard.store import models as m
from azaguard.store import writes
from azaguard.store.db import Database, Deferred, database_of
from azaguard.store.records import LAB_FIELDS, load_record_and_labs, now
from azaguard.store.writes import FormError as FormError  # re-exported: the channels catch it by this name
from azaguard.store.writes import PanelError as PanelError  # a FormError naming every wrong field of a panel
from azaguard.store.writes import panel_analytes as panel_analytes  # the tests a panel form offers
from azaguard.worklist import REVIEW_OUTCOMES as REVIEW_OUTCOMES
from azaguard.worklist import ReviewError as ReviewError

SESSION_HOURS = auth.SESSION_HOURS  # how long a browser session lasts


class Denied(PermissionError):
    """The user may not do this; nothing is shown or changed."""


class NotFound(LookupError):
    """No such row - or one the user may not see: both get the same answer (NO_PATIENT, NO_FINDING),
    so a refusal never tells whether an id exists. The audit log tells them apart."""


NO_PATIENT = "this patient does not exist or you may not see it"
NO_FINDING = "this finding does not exist or you may not see it"
CSRF_REFUSAL = "the form has expired or did not come from this site; reload the page and try again"


class LoginFailed(Exception):
    """Wrong username or password (the same whether or not the user exists)."""


class LoginLocked(Exception):
    """Too many recent failed logins for this username."""


# ---------------------------------------------------------------- who is asking
def principal_of(user: m.User | auth.Caller) -> Principal:
    """Who is asking, from a user row (or the columns auth reads for a token or session)."""
    return Principal(user.id, user.username, user.role, user.patient_id, user.display_name or user.username)


def api_principal(s: Session, token: str | None) -> Principal | None:
    """The user a bearer token belongs to (None: missing, unknown or expired)."""
    user = auth.token_user(s, token)
    return None if user is None else principal_of(user)


def web_identity(s: Session, cookie: str | None) -> WebIdentity | None:
    """The user and CSRF token of a browser session (None: no session, or it has expired)."""
    found = auth.session_user(s, cookie)
    if found is None:
        return None
    return WebIdentity(principal_of(found), found.csrf_token)


def _audit(
    s: Session,
    who: Principal | None,
    action: str,
    resource: str,
    patient_id: int | None = None,
    detail: str = "",
    channel: str = "web",
    keep: bool = False,
    failed: dict[str, object] | None = None,
) -> Deferred | None:
    """The one place the use cases write the audit trail (`keep`, `failed`: see audit.audit)."""
    return audit(s, who, action, resource, patient_id, detail, channel, keep, failed)


def _refusal(
    s: Session, who: Principal | None, action: str, resource: str, patient_id: int | None, detail: str, channel: str
) -> None:
    """Audit a refused request: the row is kept although the request then fails (written after its
    rollback, in a short transaction of its own)."""
    if _audit(s, who, action, resource, patient_id, detail, channel, keep=True) is None:
        s.commit()  # a session made outside Database: the row must not roll back with the request


def record_unauthenticated(s: Session, resource: str, reason: str, channel: str) -> None:
    """Audit a request refused for want of a valid token or session (401, or the web's redirect to
    the login page): the route, never the token or anything the request carried."""
    _refusal(s, None, "unauthenticated", resource, None, reason, channel)


def check_form_token(
    s: Session, who: WebIdentity, sent: str | None, resource: str, patient_id: int | None = None
) -> None:
    """A web form must carry its session's CSRF token; a refusal (403) is audited. `patient_id`: the
    record the form was aimed at (audited only if it exists)."""
    if secrets.compare_digest((sent or "").encode(), who.csrf.encode()):
        return
    known = patient_id if patient_id is not None and s.get(m.Patient, patient_id) is not None else None
    _refusal(s, who.principal, "denied", resource, known, "CSRF token missing or wrong", "web")
    raise Denied(CSRF_REFUSAL)


def record_login_form_refusal(s: Session) -> None:
    """The login form came without its own CSRF token (a stale page, or another site)."""
    _audit(s, None, "denied", "web-login", detail="login form CSRF token missing or wrong", channel="web")


def _login(s: Session, username: str, password: str, channel: str, client: str | None) -> m.User:
    """The login sequence for every channel: lock-out check, password check, audit of each outcome.
    `client` is the client's address (lock-out counts per username and per address)."""
    resource = "api-token" if channel == "api" else "web-login"
    name = (username or "").strip()
    detail = f"username {name[:40]}"
    if auth.login_locked(s, name, client):
        _audit(s, None, "login-locked", resource, detail=detail, channel=channel)
        s.commit()  # the attempt is recorded although the request fails
        raise LoginLocked(name)
    user = auth.authenticate(s, name, password, client)
    if user is None:
        _audit(s, None, "login-failed", resource, detail=detail, channel=channel)
        s.commit()
        raise LoginFailed(name)
    audit(s, user, "login", resource, channel=channel)
    return user


def issue_api_token(s: Session, username: str, password: str, label: str = "", client: str | None = None) -> TokenOut:
    """Exchange a username and password for a bearer token (API)."""
    user = _login(s, username, password, "api", client)
    token = auth.create_api_token(s, user, label)
    return TokenOut(token=token, token_type="bearer", role=user.role, patient_id=user.patient_id)


def revoke_own_api_token(s: Session, who: Principal, token: str) -> None:
    """The bearer revokes the token it authenticated with (a leaked or finished integration)."""
    row = auth.revoke_api_token(s, token=token)
    _audit(s, who, "revoke-token", f"api-token {row.id if row else '?'}", channel="api")


def open_web_session(s: Session, username: str, password: str, client: str | None = None) -> WebLogin:
    """Log a browser in: the session cookie's value and who it belongs to."""
    user = _login(s, username, password, "web", client)
    token, _csrf = auth.create_session(s, user)
    return WebLogin(token, principal_of(user))


def close_web_session(s: Session, who: Principal, cookie: str | None) -> None:
    auth.end_session(s, cookie)
    _audit(s, who, "logout", "web-login")


# ---------------------------------------------------------------- authorisation
def can_read_patient(who: Principal, patient_id: int) -> bool:
    return who.role in ("clinician", "admin") or (who.role == "patient" and who.patient_id == patient_id)


def _deny(s: Session, who: Principal, resource: str, channel: str, patient_id: int | None, message: str) -> Denied:
    """A 403 that tells nothing about any record (a role's refusal, or a write the user's role may
    not make on a record they may see); audited, the row kept although the request fails."""
    _refusal(s, who, "denied", resource, patient_id, "", channel)
    return Denied(message)


def _unseen(
    s: Session, who: Principal, resource: str, channel: str, what: str, patient_id: int | None, message: str
) -> NotFound:
    """The one answer (404, `message`) for an id that does not exist and for one the user may not
    see, so the answer never tells whether it exists. The audit log tells them apart: `denied` with
    the patient's id when the record exists, else `not-found` with the id asked for in `detail`."""
    if patient_id is not None:
        _refusal(s, who, "denied", resource, patient_id, "", channel)
    else:
        _refusal(s, who, "not-found", resource, None, what, channel)
    return NotFound(message)


_AUTHORISED = "azaguard.authorised-patients"


def _authorise_patient(
    s: Session,
    who: Principal,
    patient_id: int,
    action: str,
    channel: str,
    write: bool = False,
    detail: str = "",
    record: bool = True,
) -> m.Patient:
    """Check access, audit the attempt (allowed or refused), return the patient. A patient the user
    may not see is answered exactly as one that does not exist (NotFound, NO_PATIENT); a write the
    user's role may not make on a record they may see is Denied (403). `record` False: the caller
    audits the allowed access itself."""
    p = s.get(m.Patient, patient_id)
    if p is None or not can_read_patient(who, patient_id):
        raise _unseen(s, who, action, channel, f"patient {patient_id}", None if p is None else p.id, NO_PATIENT)
    # Held for the unit of work: the session keeps loaded rows only while something refers to them,
    # and a page authorises its sections one by one (another SELECT each, without this).
    s.info.setdefault(_AUTHORISED, {})[p.id] = p
    if write and who.role == "patient" and action != "report-symptom":
        raise _deny(s, who, action, channel, patient_id, f"not allowed to {action} for this patient")
    if record:
        _audit(s, who, "write" if write else "read", action, patient_id, detail, channel)
    return p


def _failure(exc: BaseException) -> str:
    """What went wrong, for the audit row of a failed write: the error's type and the field it
    names, never its message (which may quote the value entered)."""
    field = getattr(exc, "field", None)
    return f"failed: {type(exc).__name__}" + (f" ({field})" if isinstance(field, str) and field else "")


@contextmanager
def _recorded(
    s: Session, who: Principal | None, action: str, patient_id: int | None, channel: str, detail: str = ""
) -> Iterator[None]:
    """Audit a write (`write`), or - if it fails - its attempt and outcome (`write-failed`, with the
    error's type): when the write raises here (also inside a savepoint the request then survives),
    and when the unit of work fails later (its commit), the row is written after the rollback in a
    short transaction of its own. Use it after authorising: refusals are audited on their own."""
    entry = _audit(s, who, "write", action, patient_id, detail, channel, failed={"action": "write-failed"})
    try:
        yield
    except BaseException as exc:
        if entry is not None:
            entry.fail(detail=f"{_failure(exc)}; {detail}"[:400] if detail else _failure(exc))
        raise


@contextmanager
def _writing(
    s: Session, who: Principal, patient_id: int, action: str, channel: str, detail: str = ""
) -> Iterator[m.Patient]:
    """Authorise a write to a patient's record, then audit it as `_recorded` does."""
    p = _authorise_patient(s, who, patient_id, action, channel, write=True, record=False)
    with _recorded(s, who, action, patient_id, channel, detail):
        yield p


def require_role(
    s: Session, who: Principal, roles: tuple[str, ...], action: str, channel: str, patient_id: int | None = None
) -> None:
    if who.role not in roles:
        raise _deny(s, who, action, channel, patient_id, f"{action} needs the role {' or '.join(roles)}")


def own_record(s: Session, who: Principal, resource: str, refusal: str, channel: str = "web") -> int:
    """The patient record of a patient user (their own view); anyone else is refused and audited."""
    if who.role != "patient" or who.patient_id is None:
        raise _deny(s, who, resource, channel, None, refusal)
    return who.patient_id


def attempt(s: Session) -> AbstractContextManager[SessionTransaction]:
    """A part of a unit of work that a bad form rolls back on its own (nothing is saved half-way),
    while the request goes on to show the form again."""
    return s.begin_nested()


# ---------------------------------------------------------------- rows -> view models
def _patient_out(p: m.Patient) -> PatientOut:
    return PatientOut(
        id=p.id,
        identifier=p.identifier,
        name=p.name,
        birth_date=p.birth_date,
        sex=p.sex,
        monitoring_team=p.monitoring_team,
    )


def _observation_outs(rows: Iterable[Sequence[Any]]) -> list[ObservationOut]:
    """Rows of `_OBSERVATION_COLUMNS` (or of store.records.LAB_FIELDS, the same columns) as view
    models: unpacked by position, which costs a fiftieth of reading a row's columns by name."""
    out = []
    for oid, kind, analyte, code, value, unit, original_value, original_unit, effective, status, review in rows:
        reported = None
        if original_value:
            reported = f"{original_value} {original_unit}" if original_unit else original_value
        out.append(
            ObservationOut(
                id=oid,
                kind=kind,
                analyte=analyte,
                code=code,
                value=value,
                unit=unit,
                reported=reported,
                date=effective,
                status=status,
                review_state=review,
            )
        )
    return out


def _observation_out(o: Any) -> ObservationOut:
    """An observation row (an ORM object or a row of `_OBSERVATION_COLUMNS`) as its view model."""
    reported = None
    if o.original_value:
        reported = f"{o.original_value} {o.original_unit}" if o.original_unit else o.original_value
    return ObservationOut(
        id=o.id,
        kind=o.kind,
        analyte=o.analyte,
        code=o.code,
        value=o.value,
        unit=o.unit,
        reported=reported,
        date=o.effective,
        status=o.status,
        review_state=o.review_state,
    )


# The columns a list of observations shows: a list reads these, not whole ORM objects (4x faster).
# The hot reads below are Core statements built once with bound parameters: building a select and
# working out its cache key costs SQLAlchemy more CPU than SQLite spends running it.
_PID: BindParameter[int] = bindparam("pid")
_O = m.core(m.Observation).c
_OBSERVATION_COLUMNS = tuple(_O[name] for name in LAB_FIELDS)
_BY_DATE = (_O.effective, _O.id)
_LABS = select(*_OBSERVATION_COLUMNS).where(_O.patient_id == _PID, _O.current.is_(True), _O.kind == "lab")
_LABS_BY_DATE = _LABS.order_by(*_BY_DATE)
_OBSERVATIONS = {  # (with history, one analyte) -> the statement
    (history, one): select(*_OBSERVATION_COLUMNS)
    .where(_O.patient_id == _PID, *(() if history else (_O.current.is_(True),)))
    .where(*((_O.analyte == bindparam("analyte"),) if one else ()))
    .order_by(*_BY_DATE)
    for history in (False, True)
    for one in (False, True)
}
_MD = m.core(m.Medication)
_MEDICINES = select(_MD).where(_MD.c.patient_id == _PID).order_by(_MD.c.start)
_Y = m.core(m.Symptom)
_SYMPTOMS = select(_Y).where(_Y.c.patient_id == _PID).order_by(_Y.c.when)
_RV = m.core(m.Review)
_REVIEWS = select(_RV).where(_RV.c.patient_id == _PID).order_by(_RV.c.created_at)


def _medicine_out(x: Any) -> MedicineOut:
    """A medication row (an ORM object or a row of its table) as its view model."""
    return MedicineOut(
        id=x.id,
        drug=x.drug,
        name=x.name,
        status=x.status,
        kind=x.kind,
        start=x.start,
        end=x.end,
        mg_per_day=x.daily_dose_mg,
        reason=x.reason or None,
        status_date=x.status_date,
    )


def _vaccine_out(v: m.Immunization) -> VaccineOut:
    return VaccineOut(id=v.id, vaccine=v.vaccine, live=v.live, status=v.status, date=v.when)


def _symptom_out(x: Any) -> SymptomOut:
    return SymptomOut(id=x.id, symptom=x.key or x.text, text=x.text, date=x.when, reported_by=x.reported_by)


def _finding_out(f: m.FindingRow) -> FindingOut:
    return FindingOut(
        id=f.id,
        patient_id=f.patient_id,
        code=f.code,
        category=f.category,
        severity=f.severity,
        message=f.message,
        action=f.action,
        state=f.state,
    )


def _review_out(r: Any) -> ReviewOut:
    return ReviewOut(id=r.id, finding_id=r.finding_id, outcome=r.outcome, note=r.note, created_at=r.created_at)


def _import_result(summary: ImportSummary) -> ImportResult:
    counts = summary.as_dict()
    return ImportResult(**counts, message=import_message(counts))


def import_message(counts: dict[str, int | None]) -> str:
    """What a batch that added nothing says: its records were all stored before ("" otherwise)."""
    new = sum(counts.get(k) or 0 for k in ("imported", "corrected", "deleted", "patients_created"))
    n, q = counts.get("duplicates") or 0, counts.get("quarantined") or 0
    if new or not n:
        return ""
    records = f"all {n} records were" if n > 1 else "the 1 record was"
    said = f"nothing new: {records} already imported"
    return f"{said} ({q} in quarantine)" if q else said


# ---------------------------------------------------------------- patients
def list_patients(s: Session, who: Principal, search: str | None, limit: int, offset: int, channel: str) -> PatientList:
    q = select(m.Patient)
    if who.role == "patient":
        q = q.where(m.Patient.id == who.patient_id)
    if search:
        term = f"%{search.strip().lower()}%"
        q = q.where(func.lower(m.Patient.name).like(term) | func.lower(m.Patient.identifier).like(term))
    total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = list(s.scalars(q.order_by(m.Patient.name, m.Patient.id).limit(limit).offset(offset)))
    _audit(s, who, "read", f"list-patients ({len(rows)})", channel=channel)
    return PatientList(total=total, patients=[_patient_out(p) for p in rows])


def get_patient(s: Session, who: Principal, patient_id: int, channel: str) -> PatientOut:
    return _patient_out(_authorise_patient(s, who, patient_id, "view-patient", channel))


def create_patient(
    s: Session,
    kb: Knowledge,
    who: Principal,
    identifier: str,
    name: str = "",
    birth_date: date | str | None = None,
    sex: str | None = None,
    team: str = "specialist",
    channel: str = "api",
) -> PatientOut:
    """Register a patient (clinicians and admins) and assess them at once."""
    require_role(s, who, ("clinician", "admin"), "create-patient", channel)
    try:
        p = writes.add_patient(s, identifier, name, birth_date, sex, team)
        wl.refresh_patient(s, kb, p.id)
    except BaseException as exc:  # the new row rolls back: its attempt is audited without an id
        _audit(s, who, "write-failed", "create-patient", None, _failure(exc), channel, keep=True)
        raise
    failed: dict[str, object] = {"action": "write-failed", "patient_id": None}  # a failed commit: no such id
    _audit(s, who, "write", "create-patient", p.id, channel=channel, failed=failed)
    return _patient_out(p)


def set_team(s: Session, who: Principal, patient_id: int, team: str, channel: str) -> PatientOut:
    """Who monitors the patient's blood tests: the specialist team or the GP (shared care)."""
    before = s.scalar(select(m.Patient.monitoring_team).where(m.Patient.id == patient_id))
    detail = f"{before} -> {team}"[:60] if before is not None else ""  # TEAM_TO_GP: a move to GP care
    with _writing(s, who, patient_id, "set-team", channel, detail) as p:  # a patient may not: 403 (404 for another's)
        writes.set_team(s, patient_id, team)
    return _patient_out(p)


def list_observations(
    s: Session, who: Principal, patient_id: int, analyte: str | None, include_history: bool, channel: str
) -> ObservationList:
    _authorise_patient(s, who, patient_id, "list-observations", channel)
    q = _OBSERVATIONS[include_history, bool(analyte)]
    rows = s.execute(q, {"pid": patient_id, "analyte": analyte} if analyte else {"pid": patient_id})
    return ObservationList(observations=_observation_outs(rows))


def _medicines(s: Session, patient_id: int) -> list[MedicineOut]:
    return [_medicine_out(x) for x in s.execute(_MEDICINES, {"pid": patient_id})]


def list_medicines(s: Session, who: Principal, patient_id: int, channel: str) -> MedicineList:
    _authorise_patient(s, who, patient_id, "list-medicines", channel)
    return MedicineList(medicines=_medicines(s, patient_id))


def list_findings(s: Session, who: Principal, patient_id: int, channel: str) -> FindingList:
    _authorise_patient(s, who, patient_id, "list-findings", channel)
    rows = wl.order_findings(wl.open_findings(s, patient_id), wl.stored_assessment(s, patient_id))
    return FindingList(findings=[_finding_out(f) for f in rows])


def _labs(s: Session, patient_id: int, ordered: bool = True) -> list[ObservationOut]:
    return _observation_outs(s.execute(_LABS_BY_DATE if ordered else _LABS, {"pid": patient_id}))


def patient_page(
    s: Session,
    kb: Knowledge,
    who: Principal,
    patient_id: int,
    channel: str = "web",
    grid_dates: int | None = results_view.GRID_DATES,
) -> PatientPage:
    """Everything the patient page (clinicians) and the patient's own page show, assessed as of today.

    `grid_dates`: how many result dates (columns) the results grid shows, the latest first (None: all)."""
    p = _authorise_patient(s, who, patient_id, "view-patient", channel)
    row = _fresh_assessment(s, kb, patient_id)
    record, lab_rows = load_record_and_labs(s, patient_id)  # the results the page lists and the engine reads
    indication = next((c.key for c in record.conditions if c.key in kb.indications), None)
    symptoms = s.execute(_SYMPTOMS, {"pid": patient_id})
    reviews = s.execute(_REVIEWS, {"pid": patient_id})
    findings = wl.order_findings(wl.open_findings(s, patient_id), row.result)
    labs = _observation_outs(lab_rows)
    summary, grid = results_view.page_results(kb, labs, record, row.as_of, grid_dates)
    return PatientPage(
        patient=_patient_out(p),
        assessment=row.result,
        indication=indication,
        findings=[_finding_out(f) for f in findings],
        labs=labs,
        medicines=_medicines(s, patient_id),
        vaccines=[
            VaccineOut(id=int(v.source_id), vaccine=v.vaccine, live=v.live, status=v.status, date=v.when)
            for v in record.vaccinations
        ],
        symptoms=[_symptom_out(x) for x in symptoms],
        reviews=[_review_out(r) for r in reviews],
        summary=summary,
        results=grid,
    )


def chart_data(s: Session, who: Principal, patient_id: int, channel: str = "web") -> ChartData:
    """The current lab results and the azathioprine dose history, for the result charts."""
    _authorise_patient(s, who, patient_id, "view-charts", channel)
    q = select(m.Medication).where(m.Medication.patient_id == patient_id, m.Medication.drug == "azathioprine")
    return ChartData(labs=_labs(s, patient_id, ordered=False), doses=[_medicine_out(x) for x in s.scalars(q)])


def _fresh_assessment(s: Session, kb: Knowledge, patient_id: int) -> m.AssessmentRow:
    """The stored assessment, re-assessed first if it is older than today, in an older JSON schema,
    or made with other knowledge or another working-day calendar (due dates move with it)."""
    row = s.get(m.AssessmentRow, patient_id)
    if (
        row is None
        or row.as_of < date.today()
        or row.result.get("schema_version") != SCHEMA_VERSION
        or row.result.get("knowledge_version") != kb.version
        or row.result.get("monitoring", {}).get("calendar") != (kb.calendar.code if kb.calendar else None)
    ):
        wl.refresh_patient(s, kb, patient_id)
        row = s.get(m.AssessmentRow, patient_id)
    assert row is not None
    return row


def assessment(s: Session, kb: Knowledge, who: Principal, patient_id: int, channel: str = "api") -> AssessmentOut:
    """The patient assessed as of today, in the JSON contract of docs/assessment-json.md.

    Every write to a record re-assesses its patient in the same unit of work, so the stored
    assessment is current unless the day, the JSON schema or the knowledge version has changed
    since: only then is it assessed again here (a read, not a write, in the usual case)."""
    _authorise_patient(s, who, patient_id, "view-assessment", channel)
    return AssessmentOut.model_validate(_fresh_assessment(s, kb, patient_id).result)


# ---------------------------------------------------------------- for the EHR channels (azaguard.ehr)
def authorise_read(
    s: Session, who: Principal, patient_id: int | None, resource: str, channel: str, asked: str = "", detail: str = ""
) -> PatientOut:
    """A read by a channel that reaches the patient through another id (the FHIR API: a finding's or
    a result's id), authorised and audited as every read is. `patient_id` None - the id led to no
    record - is answered as a patient the user may not see (NotFound), `asked` naming it in the audit."""
    if patient_id is None:
        raise _unseen(s, who, resource, channel, asked, None, NO_PATIENT)
    return _patient_out(_authorise_patient(s, who, patient_id, resource, channel, detail=detail))


def current_assessment(s: Session, kb: Knowledge, patient_id: int) -> dict[str, Any]:
    """The assessment `assessment` serves (the stored one, re-assessed only when stale), for a caller
    that has authorised the read itself (authorise_read)."""
    return _fresh_assessment(s, kb, patient_id).result


# ---------------------------------------------------------------- writes to a patient's record
def add_lab(
    s: Session,
    kb: Knowledge,
    who: Principal,
    pid: int,
    analyte: str,
    value: float | str | None,
    unit: str,
    when: date | str | None,
    channel: str,
) -> ObservationOut:
    with _writing(s, who, pid, "add-lab", channel):
        row = writes.add_lab(s, kb, pid, analyte, value, unit, when)
        wl.refresh_patient(s, kb, pid)
    return _observation_out(row)


def add_panel(
    s: Session,
    kb: Knowledge,
    who: Principal,
    pid: int,
    group: str,
    when: date | str | None,
    values: Mapping[str, float | str | None],
    units: Mapping[str, str],
    channel: str,
) -> PanelOut:
    """A whole panel (FBC, LFT or renal: knowledge `schedule.panels`) on one date, in one unit of
    work: every field is checked first (PanelError names each wrong one and nothing is saved), then
    every result is added and the patient is re-assessed once."""
    with _writing(s, who, pid, "add-panel", channel, detail=group[:40]):
        rows = writes.add_panel(s, kb, pid, group, when, values, units)
        wl.refresh_patient(s, kb, pid)
    return PanelOut(
        group=group,
        label=results_view.group_label(kb, group),
        date=rows[0].effective,
        observations=[_observation_out(r) for r in rows],
    )


def change_dose(
    s: Session, kb: Knowledge, who: Principal, pid: int, mg: float | str | None, start: date | str | None, channel: str
) -> MedicineOut:
    with _writing(s, who, pid, "change-dose", channel):
        row = writes.change_dose(s, kb, pid, mg, start)
        wl.refresh_patient(s, kb, pid)
    return _medicine_out(row)


def add_medicine(
    s: Session,
    kb: Knowledge,
    who: Principal,
    pid: int,
    name: str,
    status: str,
    start: date | str | None,
    mg: float | str | None,
    channel: str,
) -> MedicineOut:
    with _writing(s, who, pid, "add-medicine", channel):
        row = writes.add_medicine(s, kb, pid, name, status, start, mg)
        wl.refresh_patient(s, kb, pid)
    return _medicine_out(row)


def add_vaccine(
    s: Session, kb: Knowledge, who: Principal, pid: int, name: str, status: str, when: date | str | None, channel: str
) -> VaccineOut:
    with _writing(s, who, pid, "add-vaccine", channel):
        row = writes.add_vaccine(s, kb, pid, name, status, when)
        wl.refresh_patient(s, kb, pid)
    return _vaccine_out(row)


def report_symptom(
    s: Session, kb: Knowledge, who: Principal, pid: int, symptom: str, when: date | str | None, channel: str
) -> SymptomOut:
    with _writing(s, who, pid, "report-symptom", channel):
        by = "patient" if who.role == "patient" else "clinician"
        row = writes.add_symptom(s, kb, pid, symptom, when, by)
        wl.refresh_patient(s, kb, pid)
    return _symptom_out(row)


def report_my_symptom(
    s: Session, kb: Knowledge, who: Principal, symptom: str, how_bad: str, since: str | None, details: str, channel: str
) -> SymptomOut:
    """The patient's own report (the form on /me): what, how bad, since when, in their words.
    Only a patient, on their own record; re-assessed at once (a fever reaches the worklist)."""
    pid = own_record(s, who, "report-symptom (patient view)", "only patients report symptoms here", channel)
    with _writing(s, who, pid, "report-symptom", channel):
        row = writes.add_patient_report(s, kb, pid, symptom, how_bad, since, details)
        wl.refresh_patient(s, kb, pid)
    return _symptom_out(row)


def hold_azathioprine(
    s: Session, kb: Knowledge, who: Principal, pid: int, reason: str, start: date | str | None, channel: str
) -> MedicineOut:
    """Withhold azathioprine (on hold, not stopped); a dose change restarts it."""
    with _writing(s, who, pid, "hold-azathioprine", channel, detail=(reason or "").strip()):
        row = writes.hold_azathioprine(s, kb, pid, reason, start)
        wl.refresh_patient(s, kb, pid)
    return _medicine_out(row)


def dismiss_follow_up(
    s: Session, kb: Knowledge, who: Principal, pid: int, key: str, reason: str, channel: str
) -> FollowUpDismissalOut:
    """Drop an open follow-up with a reason (clinicians and admins). Only a follow-up the current
    assessment has open can be dropped; the engine then shows it as dismissed."""
    detail = f"{(key or '').strip()[:120]}: {(reason or '').strip()}"
    with _writing(s, who, pid, "dismiss-follow-up", channel, detail=detail):
        row_a = _fresh_assessment(s, kb, pid)
        open_keys = {
            u["key"] for u in row_a.result["monitoring"].get("follow_ups", []) if u["state"] in ("open", "overdue")
        }
        row = writes.dismiss_follow_up(s, kb, pid, key, reason, who.id, open_keys)
        wl.refresh_patient(s, kb, pid)
    return FollowUpDismissalOut(
        id=row.id, patient_id=row.patient_id, key=row.key, reason=row.reason, created_at=row.created_at
    )


# ---------------------------------------------------------------- reviews and the worklist
def _visible_finding(s: Session, who: Principal, finding_id: int, action: str, channel: str) -> m.FindingRow:
    """A finding of a patient the user may see; else NotFound (NO_FINDING), the same whether it
    does not exist or belongs to someone else, audited."""
    f = s.get(m.FindingRow, finding_id)
    if f is None or not can_read_patient(who, f.patient_id):
        pid = None if f is None else f.patient_id
        raise _unseen(s, who, action, channel, f"finding {finding_id}", pid, NO_FINDING)
    return f


def finding(s: Session, who: Principal, finding_id: int, channel: str = "web") -> FindingOut:
    """A finding the user may see, by id, for routing a review form (no patient data is shown from it)."""
    return _finding_out(_visible_finding(s, who, finding_id, "review", channel))


def review(
    s: Session, kb: Knowledge, who: Principal, finding_id: int, outcome: str, note: str, channel: str
) -> ReviewOut:
    """Record what was done about a finding. "Azathioprine withheld" also puts the drug on hold
    from today (the finding's message is the reason), unless it is already on hold or not being
    taken, and re-assesses the patient."""
    f = _visible_finding(s, who, finding_id, "review", channel)
    require_role(s, who, ("clinician", "admin"), "review", channel, f.patient_id)
    with _writing(s, who, f.patient_id, "review", channel):
        r = wl.record_review(s, finding_id, who.id, outcome, note)
        held = outcome == "withheld" and _takes_azathioprine(s, f.patient_id)
        if held:
            try:
                writes.hold_azathioprine(s, kb, f.patient_id, wl.without_age(f.message))
            except FormError as exc:
                raise ReviewError(f"azathioprine could not be recorded as withheld: {exc.message}") from None
            wl.refresh_patient(s, kb, f.patient_id)
    # Only once the review is recorded (a failed one is audited as write-failed above)
    _audit(s, who, "review", f"finding {f.code}: {outcome}", f.patient_id, note, channel)
    if held:
        _audit(s, who, "write", "hold-azathioprine", f.patient_id, f"review of finding {f.code}", channel)
    return _review_out(r)


def _takes_azathioprine(s: Session, patient_id: int) -> bool:
    """An active azathioprine entry still running today (not on hold, not ended)."""
    today = date.today()
    q = select(m.Medication.id).where(
        m.Medication.patient_id == patient_id,
        m.Medication.drug == "azathioprine",
        m.Medication.status == "active",
        (m.Medication.end.is_(None)) | (m.Medication.end >= today),
    )
    held = select(m.Medication.id).where(
        m.Medication.patient_id == patient_id,
        m.Medication.drug == "azathioprine",
        m.Medication.status == "on-hold",
        m.Medication.end.is_(None),
    )
    return s.scalar(q.limit(1)) is not None and s.scalar(held.limit(1)) is None


def worklist(s: Session, who: Principal, query: WorklistQuery, channel: str) -> WorklistPage:
    """Patients who need action, most urgent first (clinicians and admins)."""
    require_role(s, who, ("clinician", "admin"), "worklist", channel)
    flt = wl.WorklistFilter(
        query.severity,
        query.category,
        query.indication,
        query.team,
        query.search,
        limit=query.limit,
        offset=query.offset,
        needs=query.needs,
        owner_id=who.id if query.mine else None,
        sort=query.sort,
    )
    entries, total, counts = wl.worklist_with_counts(s, flt)
    _audit(s, who, "read", f"worklist ({len(entries)})", channel=channel)
    return WorklistPage(
        total=total, entries=[WorklistEntryOut(**vars(e)) for e in entries], counts=WorklistCounts(**vars(counts))
    )


def set_owner(s: Session, who: Principal, patient_id: int, username: str | None, channel: str) -> OwnerOut:
    """Claim a patient (`username` is the asking user's own), assign them to another clinician or
    admin, or unassign them (None or ""): clinicians and admins; audited as claim-patient,
    assign-patient or unassign-patient with the new owner's username."""
    name = (username or "").strip()
    action = "unassign-patient" if not name else "claim-patient" if name == who.username else "assign-patient"
    with _writing(s, who, patient_id, action, channel, detail=f"owner {name[:80] or 'nobody'}"):
        user = writes.set_owner(s, patient_id, name)
    if user is None:
        return OwnerOut(patient_id=patient_id, owner=None, owner_name=None)
    return OwnerOut(patient_id=patient_id, owner=user.username, owner_name=user.display_name or user.username)


def team_members(s: Session, who: Principal, channel: str) -> list[TeamMemberOut]:
    """The active clinicians and admins a patient can be assigned to, by name (clinicians and admins)."""
    require_role(s, who, writes.OWNER_ROLES, "team-members", channel)
    return [TeamMemberOut(username=u, name=shown or u) for u, shown in s.execute(_TEAM)]


_U = m.core(m.User).c
_TEAM = (  # built once: see _OBSERVATION_COLUMNS
    select(_U.username, _U.display_name)
    .where(_U.active.is_(True), _U.role.in_(writes.OWNER_ROLES))
    .order_by(func.lower(func.coalesce(func.nullif(_U.display_name, ""), _U.username)))
)


# ---------------------------------------------------------------- imports and quarantine
def import_parsed(
    s: Session,
    kb: Knowledge,
    who: Principal | None,
    parsed: Parsed,
    source: str,
    channel: str,
    progress: Callable[..., None] | None = None,
) -> ImportSummary:
    """Store what a reader parsed (`who` None: the CLI, run by whoever runs the server)."""
    if who is not None:
        require_role(s, who, ("clinician", "admin"), "import", channel)
    # Without a user: the CLI or a feed (MLLP), named by its channel in the batch's record
    summary = apply(s, parsed, source, who.username if who else channel, progress=progress)
    wl.refresh_many(s, kb, sorted(summary.patients))
    _audit_import_patients(s, who, parsed.format, source, sorted(summary.patients), channel)
    _audit(s, who, "import", f"{parsed.format} {source}"[:80], detail=str(summary.as_dict()), channel=channel)
    return summary


def _audit_import_patients(
    s: Session, who: Principal | None, fmt: str, source: str, patient_ids: list[int], channel: str
) -> None:
    """One audit row for each patient whose records an import changed: their database id, never a
    name, identifier or value (the batch's own row, with its counts, has no patient)."""
    for pid in patient_ids:
        _audit(s, who, "import", f"{fmt} {source}"[:80], pid, detail="records changed", channel=channel)


def import_in_chunks(
    db: Database,
    kb: Knowledge,
    who: Principal | None,
    parsed: Parsed,
    source: str,
    channel: str,
    progress: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Store what a reader parsed in chunks, each a short transaction of its own
    (`ingest.pipeline.apply_in_chunks`: atomic, idempotent, resumable by importing the same input
    again), so other users wait at most about one chunk for the write lock. Then the patients it
    touched are re-assessed and audited (one row each, in the same small transactions), and the
    batch's own audit row is written in the transaction that marks it done. `who` None: the CLI."""
    if who is not None and who.role not in ("clinician", "admin"):
        with db.session() as s:
            require_role(s, who, ("clinician", "admin"), "import", channel)

    def refresh(s: Session, patient_ids: list[int]) -> None:
        wl.refresh_many(s, kb, patient_ids)
        _audit_import_patients(s, who, parsed.format, source, patient_ids, channel)

    def finish(s: Session, summary: ImportSummary) -> None:
        _audit(s, who, "import", f"{parsed.format} {source}"[:80], detail=str(summary.as_dict()), channel=channel)

    username = who.username if who else "cli"
    return apply_in_chunks(db, parsed, source, username, progress=progress, refresh=refresh, finish=finish)


def may_import(s: Session, who: Principal, channel: str) -> None:
    """Refuse (and audit) anyone but a clinician or admin before their upload is read; then end the
    unit of work's reads, so no connection or snapshot is held while the upload arrives."""
    require_role(s, who, ("clinician", "admin"), "import", channel)
    s.commit()


def _upload_text(upload: IO[bytes]) -> str:
    upload.seek(0)
    try:
        text = upload.read().decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the body must be UTF-8 text") from None
    if "\x00" in text:
        raise ValueError("the body must not contain NUL characters")
    if not text.strip():
        raise ValueError("the body is empty")
    return text


def import_upload(
    s: Session,
    kb: Knowledge,
    who: Principal,
    upload: IO[bytes],
    fmt: str | None,
    filename: str,
    channel: str,
    patient: str | None = None,
) -> ImportResult:
    """Import an uploaded file (web page, REST API), which the channel streamed to a temporary file:
    format detected unless given; committed in chunks (`import_in_chunks`), as the CLI imports.
    `patient`: the identifier of the patient a PharmCAT report is for (the report names a sample)."""
    require_role(s, who, ("clinician", "admin"), "import", channel)
    parsed = parse_text(_upload_text(upload), kb, fmt, filename, patient=patient)
    db = database_of(s)
    if db is None:  # a session made outside Database has no units of work to chunk into
        return _import_result(import_parsed(s, kb, who, parsed, filename, channel))
    s.commit()  # the request holds no lock while the chunks take the write lock one at a time
    return _import_result(import_in_chunks(db, kb, who, parsed, filename, channel))


def _record_tail(ref: str) -> str:
    """The part of a record reference that survives a new source name ("OBX 2", "line 5", "")."""
    found = re.search(r"(OBX \S+|Bundle\.entry\[\d+\]|line \d+)$", ref)
    return found.group(1) if found else ""


def reprocess_quarantine(
    s: Session,
    kb: Knowledge,
    who: Principal | None,
    item_id: int,
    channel: str,
    local_codes: dict[str, str] | None = None,
) -> ImportSummary:
    """Re-run a quarantined record through its reader after a fix (new patient, code map, unit).

    All or nothing, and never a duplicate: if the record is still rejected, nothing is written,
    the item stays open with the new reason, and no second quarantine row appears. Other records
    of the same message that were imported before come back as duplicates (imports are idempotent).
    """
    if who is not None:
        require_role(s, who, ("admin",), "reprocess-quarantine", channel)
    item = s.get(m.QuarantineItem, item_id)
    if item is None:
        raise NotFound(f"quarantine item {item_id} does not exist")
    if item.state != "open":
        raise ValueError(f"quarantine item {item_id} is {item.state}")
    parsed = parse_text(item.original, kb, item.format, f"quarantine {item_id}", local_codes, item.patient_identifier)
    tail = _record_tail(item.record_ref)
    still = [r for r in parsed.rejects if _record_tail(r.ref) == tail]
    parsed.rejects = []  # other records of the message have quarantine items of their own
    if still:
        item.reason = still[0].reason
        s.commit()  # keep the up-to-date reason although the request fails
        raise ValueError(f"still rejected: {still[0].reason}")
    savepoint = s.begin_nested()
    summary = import_parsed(s, kb, who, parsed, f"quarantine {item_id}", channel)
    if summary.counts.get("quarantined", 0):
        reasons = [r.reason for r in summary.rejects]
        savepoint.rollback()
        item.reason = reasons[0] if reasons else item.reason
        s.commit()
        raise ValueError(f"still rejected: {item.reason}")
    savepoint.commit()
    item.state, item.resolved_at = "reprocessed", now()
    return summary


def reprocess(
    s: Session,
    kb: Knowledge,
    who: Principal | None,
    item_id: int,
    channel: str,
    local_codes: dict[str, str] | None = None,
) -> ReprocessResult:
    """reprocess_quarantine for the channels: the import counts and the item's state afterwards."""
    summary = reprocess_quarantine(s, kb, who, item_id, channel, local_codes)
    item = s.get(m.QuarantineItem, item_id)
    return ReprocessResult(**summary.as_dict(), state=item.state if item else None)


def discard_quarantine(s: Session, who: Principal | None, item_id: int, reason: str, channel: str) -> DiscardOut:
    if who is not None:
        require_role(s, who, ("admin",), "discard-quarantine", channel)
    item = s.get(m.QuarantineItem, item_id)
    if item is None:
        raise NotFound(f"quarantine item {item_id} does not exist")
    if not reason.strip():
        raise ValueError("a reason is required to discard a quarantined record")
    item.state, item.resolved_at = "discarded", now()
    _audit(s, who, "write", f"discard quarantine {item_id}", detail=reason, channel=channel)
    return DiscardOut(id=item_id, state=item.state)


def list_quarantine(
    s: Session, who: Principal | None, state: str, limit: int | None, channel: str, newest_first: bool = True
) -> QuarantineList:
    """What imports could not accept, with the reason and the original. Admins (and the CLI: `who`
    None) see every item; a clinician sees, read-only, the items of the imports they ran themselves."""
    if who is not None:
        require_role(s, who, ("clinician", "admin"), "quarantine", channel)
    q = select(m.QuarantineItem).where(m.QuarantineItem.state == state)
    if who is not None and who.role != "admin":
        mine = select(m.ImportBatch.id).where(m.ImportBatch.username == who.username)
        q = q.where(m.QuarantineItem.batch_id.in_(mine))
    q = q.order_by(m.QuarantineItem.id.desc() if newest_first else m.QuarantineItem.id)
    if limit is not None:
        q = q.limit(limit)
    items = [
        QuarantineItemOut(
            id=x.id,
            received_at=x.received_at,
            format=x.format,
            record=x.record_ref,
            patient_identifier=x.patient_identifier,
            reason=x.reason,
            original=x.original,
            state=x.state,
        )
        for x in s.scalars(q)
    ]
    _audit(s, who, "read", "quarantine", channel=channel)
    return QuarantineList(items=items)


# ---------------------------------------------------------------- the audit trail
def audit_log(s: Session, who: Principal, patient_id: int | None, limit: int, channel: str) -> AuditList:
    """The latest audit events, newest first, optionally for one patient (admins)."""
    require_role(s, who, ("admin",), "audit-log", channel)
    q = select(m.AuditEvent).order_by(m.AuditEvent.id.desc()).limit(limit)
    if patient_id is not None:
        q = q.where(m.AuditEvent.patient_id == patient_id)
    events = [
        AuditEventOut(
            at=e.at,
            user=e.username,
            action=e.action,
            resource=e.resource,
            patient_id=e.patient_id,
            channel=e.channel,
            detail=e.detail,
        )
        for e in s.scalars(q)
    ]
    return AuditList(events=events)


# Actions the audit trail records (the audit page offers them as suggestions; any value filters).
AUDIT_ACTIONS = (
    "read",
    "write",
    "write-failed",
    "review",
    "import",
    "denied",
    "not-found",
    "login",
    "login-failed",
    "login-locked",
    "login-refused",
    "logout",
    "revoke-token",
)
AUDIT_EXPORT_LIMIT = 100_000  # events in one CSV export, newest first


def _audit_conditions(query: AuditQuery) -> list[Any]:
    conds: list[Any] = []
    if query.user:
        conds.append(m.AuditEvent.username == query.user)
    if query.patient:
        conds.append(m.AuditEvent.patient_id.in_(select(m.Patient.id).where(m.Patient.identifier == query.patient)))
    if query.action:
        conds.append(m.AuditEvent.action == query.action)
    if query.since:
        conds.append(m.AuditEvent.at >= datetime.combine(query.since, time()))
    if query.until:
        conds.append(m.AuditEvent.at < datetime.combine(query.until + timedelta(days=1), time()))
    return conds


def _audit_rows(s: Session, query: AuditQuery, limit: int, offset: int) -> list[AuditRow]:
    q = (
        select(m.AuditEvent, m.Patient.identifier)
        .outerjoin(m.Patient, m.Patient.id == m.AuditEvent.patient_id)
        .where(*_audit_conditions(query))
        .order_by(m.AuditEvent.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [
        AuditRow(
            at=e.at,
            user=e.username,
            action=e.action,
            resource=e.resource,
            patient=ident or ("" if e.patient_id is None else "(deleted record)"),
            channel=e.channel,
            detail=e.detail,
        )
        for e, ident in s.execute(q)
    ]


def audit_search(s: Session, who: Principal, query: AuditQuery, channel: str = "web") -> AuditPage:
    """One page of the audit trail, newest first, filtered by user, patient identifier, action and
    dates (admins). Patients appear by their clinic identifier, never by database id."""
    require_role(s, who, ("admin",), "audit-log", channel)
    total = s.scalar(select(func.count()).select_from(m.AuditEvent).where(*_audit_conditions(query))) or 0
    return AuditPage(total=total, rows=_audit_rows(s, query, query.limit, query.offset))


def audit_export(s: Session, who: Principal, query: AuditQuery, channel: str = "web") -> list[AuditRow]:
    """The events matching the filters, newest first, at most AUDIT_EXPORT_LIMIT, for a CSV file
    (admins). The export itself is audited as a read, with the filters it used."""
    require_role(s, who, ("admin",), "audit-log export", channel)
    rows = _audit_rows(s, query, AUDIT_EXPORT_LIMIT, 0)
    used = {
        "user": query.user,
        "patient": query.patient,
        "action": query.action,
        "from": query.since,
        "to": query.until,
    }
    detail = " ".join(f"{k}={v}" for k, v in used.items() if v) or "no filters"
    _audit(s, who, "read", "audit-log export", detail=f"{detail}; {len(rows)} events", channel=channel)
    return rows


# ---------------------------------------------------------------- reminders (issue 8 item 7)
_reminder_log = logging.getLogger("azaguard.reminders")
_EMAIL = re.compile(r"[^@\s<>\"(),;:]+@[^@\s<>\"(),;:]+\.[^@\s<>\"(),;:.]+")


def _prefs_view(row: m.ReminderPref | None, offered: dict[str, Channel], config: ReminderConfig) -> ReminderPrefs:
    return ReminderPrefs(
        channel=row.channel if row else "none",
        email=row.email if row else "",
        chosen=row is not None,
        options=[(c.name, c.label) for c in offered.values()],
        days_before=config.days_before,
    )


def reminder_prefs(s: Session, who: Principal, config: ReminderConfig, channel: str = "web") -> ReminderPrefs:
    """The signed-in patient's reminder choice and the channels on offer (their own page only)."""
    pid = own_record(s, who, "reminder-prefs", "only patients choose their reminders", channel)
    _audit(s, who, "read", "reminder-prefs", pid, channel=channel)
    return _prefs_view(rem.prefs(s, pid), load_channels(config), config)


def set_reminder_prefs(
    s: Session, who: Principal, config: ReminderConfig, choice: str, email: str, channel: str = "web"
) -> ReminderPrefs:
    """The patient chooses a channel (and gives an e-mail address) or opts out ("none"). Audited
    with the channel chosen, never the address; a bad form raises FormError naming the field."""
    pid = own_record(s, who, "reminder-prefs", "only patients choose their reminders", channel)
    offered = load_channels(config)
    choice, email = (choice or "").strip(), (email or "").strip()
    with _recorded(s, who, "reminder-prefs", pid, channel, detail=f"channel {choice[:16]}"):
        if choice != "none" and choice not in offered:
            raise FormError("channel", "choose how you want to be reminded, or no reminders")
        if email and (len(email) > 254 or not _EMAIL.fullmatch(email)):
            raise FormError("email", "this does not look like an e-mail address (name@example.org)")
        if choice != "none" and offered[choice].contact == "email" and not email:
            raise FormError("email", "enter the e-mail address the reminders should go to")
        row = rem.set_prefs(s, pid, choice, email)
    return _prefs_view(row, offered, config)


def patient_reminders(
    s: Session, who: Principal, patient_id: int, channel: str = "web", record: bool = True
) -> PatientReminders:
    """The patient's reminder choice and the reminders sent to them (the patient page). `record`
    False: the caller's page already audits its read of the record, as for list_documents."""
    _authorise_patient(s, who, patient_id, "view-reminders", channel, record=record)
    row = rem.prefs(s, patient_id)
    return PatientReminders(
        channel=row.channel if row else "none",
        chosen=row is not None,
        rows=[
            ReminderSentRow(
                sent_at=r.sent_at,
                kind=r.kind,
                group=r.test_group,
                due_date=r.due_date,
                channel=r.channel,
                status=r.status,
                error_type=r.error_type,
                attempts=r.attempts,
            )
            for r in rem.sent(s, patient_id)
        ],
    )


def send_reminders(
    db: Database,
    config: ReminderConfig,
    as_of: date | None = None,
    dry_run: bool = False,
    channel: str = "cli",
) -> ReminderRun:
    """Remind every patient who chose a channel of the tests falling due within
    `config.days_before` days and of those overdue, by the stored assessment (reminders.py), once
    each. Each reminder is claimed in a short transaction, sent with no transaction open, then
    recorded and audited (channel, tests, due date, outcome: never the address). A failure is
    recorded with the error's type; the log gets counts and error types only."""
    as_of = as_of or date.today()
    offered = load_channels(config)
    with db.session() as s:
        planned = rem.plan(s, as_of, config.days_before, {n: c.contact for n, c in offered.items()})
    items = [i for p in planned for i in p.items]
    counts = {"due": sum(i.kind == "due" for i in items), "overdue": sum(i.kind == "overdue" for i in items)}
    sent = failed = skipped = 0
    for p in [] if dry_run else planned:
        with db.write() as s:
            claimed = rem.claim(s, p)
        if not claimed:
            skipped += 1
            continue
        message = compose(p.contact, claimed, config, as_of, uid_seed=f"{p.patient_id}")
        try:
            result = offered[p.channel].send(message)
        except Exception as exc:  # a channel added by configuration that raises instead of reporting
            result = SendResult(False, type(exc).__name__)
        what = "; ".join(f"{i.kind} {i.group} {i.due.isoformat()}" for i in claimed)
        outcome = "sent" if result.ok else f"failed: {result.error_type}"
        with db.write() as s:
            rem.finish(s, p.patient_id, claimed, result.ok, result.error_type)
            _audit(s, None, "reminder", f"reminder {p.channel}", p.patient_id, f"{what}: {outcome}"[:400], channel)
        if result.ok:
            sent += 1
        else:
            failed += 1
            _reminder_log.warning("a reminder was not sent (%s); recorded as failed", result.error_type)
    if not dry_run:
        _reminder_log.info("reminders as of %s: %d sent, %d failed, %d skipped", as_of, sent, failed, skipped)
    return ReminderRun(as_of, dry_run, len(planned), counts["due"], counts["overdue"], sent, failed, skipped)


# ---------------------------------------------------------------- letters and documents (shared care)
NO_DOCUMENT = "this document does not exist or you may not see it"
LETTER_RECIPIENTS = ("gp", "specialist")
# set_team's audit detail for a move to GP care: the letters batch finds this month's moves by it
TEAM_TO_GP = "specialist -> gp"

# A document's columns without its bytes (and their length): lists never load a PDF.
_DOCUMENT_COLUMNS = (
    m.Document.id, m.Document.patient_id, m.Document.kind, m.Document.recipient, m.Document.title,
    m.Document.created_at, m.Document.author, m.Document.knowledge_version, m.Document.media_type,
    m.Document.sha256, func.length(m.Document.content).label("size"),
)  # fmt: skip


_DOCUMENTS = (  # built once: see _OBSERVATION_COLUMNS
    select(*_DOCUMENT_COLUMNS)
    .where(m.Document.patient_id == bindparam("pid"))
    .order_by(m.Document.created_at.desc(), m.Document.id.desc())
)


def _document_out(d: Any) -> DocumentOut:
    """A documents row (an ORM object, or a row of `_DOCUMENT_COLUMNS`) as its view model."""
    size = d.size if hasattr(d, "size") else len(d.content)
    return DocumentOut(
        id=d.id,
        patient_id=d.patient_id,
        kind=d.kind,
        recipient=d.recipient,
        title=d.title,
        created_at=d.created_at,
        author=d.author,
        knowledge_version=d.knowledge_version,
        media_type=d.media_type,
        size=size,
        sha256=d.sha256,
    )


def _letter_results(s: Session, kb: Knowledge, patient_id: int, as_of: date) -> list[letters.ResultGroup]:
    """The latest result of each analyte of each scheduled test group (FBC, LFT, renal), with its date."""
    groups = {g: [k for k, a in kb.analytes.items() if a.group == g] for g in kb.schedule.groups}
    wanted = [k for keys in groups.values() for k in keys]
    q = (
        select(m.Observation.analyte, m.Observation.value, m.Observation.unit, m.Observation.effective)
        .where(
            m.Observation.patient_id == patient_id,
            m.Observation.current.is_(True),
            m.Observation.kind == "lab",
            m.Observation.analyte.in_(wanted),
            m.Observation.value.is_not(None),
            m.Observation.effective <= as_of,
        )
        .order_by(m.Observation.effective, m.Observation.id)
    )
    latest = {row.analyte: row for row in s.execute(q)}
    return [
        letters.ResultGroup(
            group,
            [
                letters.Result(kb.analytes[k].label, latest[k].value, latest[k].unit or "", latest[k].effective)
                for k in keys
                if k in latest
            ],
        )
        for group, keys in groups.items()
    ]


def _letter_actions(s: Session, patient_id: int, result: dict[str, Any]) -> list[letters.Action]:
    """The patient's open findings (warning and critical, not yet reviewed), most serious first, each
    with the sources the stored assessment gives for it."""
    stated = {(f["code"], f["message"]): f for f in result.get("findings", [])}
    by_code = {f["code"]: f for f in result.get("findings", [])}
    rows = [f for f in wl.order_findings(wl.open_findings(s, patient_id), result) if f.state == "open"]
    out = []
    for f in rows:
        found = stated.get((f.code, f.message)) or by_code.get(f.code) or {}
        out.append(
            letters.Action(f.severity, f.code, f.message, f.action, list(found.get("sources", [])), found.get("date"))
        )
    return out


def _compose_letter(
    s: Session, kb: Knowledge, who: Principal, p: m.Patient, contact: ClinicContact, recipient: str
) -> tuple[str, bytes]:
    """The letter as a PDF, from the patient's assessment (re-assessed first if stale) and record:
    (the knowledge version it was made with, the PDF). Reads only, so no write lock is held while
    the PDF is drawn."""
    if recipient not in LETTER_RECIPIENTS:
        raise FormError("recipient", "must be gp or specialist")
    row = _fresh_assessment(s, kb, p.id)
    result = row.result
    as_of = date.fromisoformat(result["as_of"])
    conditions = s.scalars(select(m.Condition.key).where(m.Condition.patient_id == p.id))
    indication = next((kb.indications[k].label for k in conditions if k in kb.indications), None)
    weight = s.execute(
        select(m.Observation.value, m.Observation.effective)
        .where(
            m.Observation.patient_id == p.id,
            m.Observation.current.is_(True),
            m.Observation.analyte == "weight",
            m.Observation.value.is_not(None),
            m.Observation.effective <= as_of,
        )
        .order_by(m.Observation.effective.desc(), m.Observation.id.desc())
        .limit(1)
    ).first()
    letter = letters.Letter(
        recipient=recipient,
        patient_name=p.name,
        identifier=p.identifier,
        birth_date=p.birth_date,
        monitoring_team=p.monitoring_team,
        indication=indication,
        assessment=result,
        weight_kg=weight.value if weight else None,
        weight_date=weight.effective if weight else None,
        results=_letter_results(s, kb, p.id, as_of),
        actions=_letter_actions(s, p.id, result),
        clinic_name=contact.name,
        clinic_phone=contact.phone,
        out_of_hours=contact.out_of_hours,
        author=who.display_name if who.display_name == who.username else f"{who.display_name} ({who.username})",
        made_at=now(),
    )
    return str(result["knowledge_version"]), letters.render_letter_pdf(letter)


def _store_letter(s: Session, who: Principal, p: m.Patient, recipient: str, knowledge: str, pdf: bytes) -> m.Document:
    doc = m.Document(
        patient_id=p.id,
        kind=letters.kind_of(recipient),
        recipient=recipient,
        title=letters.title_of(recipient),
        created_at=now(),
        author_id=who.id,
        author=who.username,
        knowledge_version=knowledge[:200],
        media_type="application/pdf",
        content=pdf,
        sha256=hashlib.sha256(pdf).hexdigest(),
    )
    s.add(doc)
    s.flush()
    return doc


def make_letter(
    s: Session,
    kb: Knowledge,
    who: Principal,
    patient_id: int,
    contact: ClinicContact,
    recipient: str = "gp",
    channel: str = "web",
) -> DocumentOut:
    """Write a shared-care letter to the GP or the specialist team from the patient's assessment and
    store it as a PDF document with its date, author and knowledge version (clinicians and admins;
    a patient is refused, 403 on their own record and 404 on another's)."""
    with _writing(s, who, patient_id, "write-letter", channel, detail=(recipient or "")[:20]) as p:
        knowledge, pdf = _compose_letter(s, kb, who, p, contact, recipient)
        doc = _store_letter(s, who, p, recipient, knowledge, pdf)
    return _document_out(doc)


def list_documents(s: Session, who: Principal, patient_id: int, channel: str, record: bool = True) -> DocumentList:
    """The patient's documents, newest first (a patient: their own). `record` False: the caller's
    page already audits its read of the record (the patient page)."""
    _authorise_patient(s, who, patient_id, "list-documents", channel, record=record)
    return DocumentList(documents=[_document_out(d) for d in s.execute(_DOCUMENTS, {"pid": patient_id})])


def _document_file(d: m.Document, identifier: str) -> DocumentFile:
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", identifier).strip("-")[:40] or "patient"
    filename = f"{d.kind}-{safe}-{d.created_at:%Y-%m-%d}-{d.id}.pdf"
    return DocumentFile(id=d.id, patient_id=d.patient_id, filename=filename, media_type=d.media_type, content=d.content)


def get_document(s: Session, who: Principal, document_id: int, channel: str) -> DocumentFile:
    """A document's bytes: clinicians and admins any, a patient their own; any other id is answered
    as one that does not exist (NO_DOCUMENT), audited."""
    d = s.get(m.Document, document_id)
    if d is None or not can_read_patient(who, d.patient_id):
        pid = None if d is None else d.patient_id
        raise _unseen(s, who, "read-document", channel, f"document {document_id}", pid, NO_DOCUMENT)
    p = _authorise_patient(s, who, d.patient_id, "read-document", channel, detail=f"document {d.id}")
    return _document_file(d, p.identifier)


def patient_document(s: Session, who: Principal, patient_id: int, document_id: int, channel: str) -> DocumentFile:
    """A document of this patient (the web download): the patient must be one the user may see
    (else NO_PATIENT), and the document theirs (else NO_DOCUMENT); both audited."""
    p = _authorise_patient(s, who, patient_id, "read-document", channel, record=False)
    d = s.get(m.Document, document_id)
    if d is None or d.patient_id != patient_id:
        hidden = d.patient_id if d is not None and not can_read_patient(who, d.patient_id) else None
        raise _unseen(s, who, "read-document", channel, f"document {document_id}", hidden, NO_DOCUMENT)
    _audit(s, who, "read", "read-document", patient_id, f"document {d.id}", channel)
    return _document_file(d, p.identifier)


def _month_of(today: date) -> tuple[datetime, datetime]:
    start = datetime(today.year, today.month, 1)
    end = datetime(today.year + 1, 1, 1) if today.month == 12 else datetime(today.year, today.month + 1, 1)
    return start, end


def _gp_moves(s: Session, today: date) -> list[tuple[m.Patient, datetime, str]]:
    """Patients moved from the specialist team to GP care in `today`'s month (set_team's audit rows)
    and still monitored by their GP: (patient, the latest move, who made it), by the move's time."""
    start, end = _month_of(today)
    q = (
        select(m.AuditEvent.patient_id, m.AuditEvent.at, m.AuditEvent.username)
        .where(
            m.AuditEvent.at >= start,
            m.AuditEvent.at < end,
            m.AuditEvent.action == "write",
            m.AuditEvent.resource == "set-team",
            m.AuditEvent.detail == TEAM_TO_GP,
            m.AuditEvent.patient_id.is_not(None),
        )
        .order_by(m.AuditEvent.at, m.AuditEvent.id)
    )
    latest: dict[int, tuple[datetime, str]] = {}
    for pid, at, username in s.execute(q):
        if pid is not None:
            latest[pid] = (at, username)
    if not latest:
        return []
    patients = s.scalars(select(m.Patient).where(m.Patient.id.in_(latest), m.Patient.monitoring_team == "gp"))
    found = [(p, *latest[p.id]) for p in patients]
    return sorted(found, key=lambda x: (x[1], x[0].id))


def _gp_letters_since(s: Session, moves: list[tuple[m.Patient, datetime, str]]) -> dict[int, DocumentOut]:
    """The newest GP letter of each moved patient written since their move."""
    since = {p.id: at for p, at, _ in moves}
    q = (
        select(*_DOCUMENT_COLUMNS)
        .where(m.Document.patient_id.in_(since), m.Document.kind == letters.kind_of("gp"))
        .order_by(m.Document.created_at, m.Document.id)
    )
    return {d.patient_id: _document_out(d) for d in s.execute(q) if d.created_at >= since[d.patient_id]}


def gp_moves(s: Session, who: Principal, channel: str, today: date | None = None) -> list[GpTransfer]:
    """The patients moved to GP care this month, each with the GP letter written since, if any
    (clinicians and admins)."""
    require_role(s, who, ("clinician", "admin"), "gp-letters", channel)
    moves = _gp_moves(s, today or date.today())
    written = _gp_letters_since(s, moves)
    _audit(s, who, "read", f"gp-letters ({len(moves)})", channel=channel)
    return [GpTransfer(_patient_out(p), at, by, written.get(p.id)) for p, at, by in moves]


def gp_letters_batch(
    s: Session, kb: Knowledge, who: Principal, contact: ClinicContact, channel: str, today: date | None = None
) -> LetterBatchOut:
    """One GP letter for each patient moved to GP care this month who has none since the move
    (clinicians and admins); each letter is audited on its patient like make_letter, the batch once.
    The PDFs are drawn first and stored together, so the write lock is held only to store them."""
    require_role(s, who, ("clinician", "admin"), "gp-letters-batch", channel)
    when = today or date.today()
    moves = _gp_moves(s, when)
    written = _gp_letters_since(s, moves)
    drawn = []
    for p, _at, _by in moves:
        if p.id in written:
            continue
        with _writing(s, who, p.id, "write-letter", channel, detail="gp (batch)"):
            drawn.append((p, *_compose_letter(s, kb, who, p, contact, "gp")))
    made = [_document_out(_store_letter(s, who, p, "gp", knowledge, pdf)) for p, knowledge, pdf in drawn]
    month = f"{when:%Y-%m}"
    detail = f"month {month}: {len(moves)} moved, {len(made)} written, {len(written)} already written"
    _audit(s, who, "write", f"gp-letters-batch ({len(made)})", detail=detail, channel=channel)
    return LetterBatchOut(month=month, transferred=len(moves), made=made, already_written=sorted(written))


# ---------------------------------------------------------------- CDS Hooks cards (patient page, reports)
# The patient page's reads of the EHR cards, built once (see _OBSERVATION_COLUMNS)
_CDS_CARDS = (
    select(m.CdsCard)
    .where(m.CdsCard.patient_id == bindparam("pid"))
    .order_by(m.CdsCard.issued_at.desc())
    .limit(bindparam("limit"))
)
_CDS_FEEDBACK = (
    select(m.CdsFeedback)
    .where(m.CdsFeedback.card_uuid.in_(bindparam("uuids", expanding=True)))
    .order_by(m.CdsFeedback.outcome_at)
)
_CDS_OUTCOMES = (
    select(m.CdsFeedback.outcome, func.count())
    .where(m.CdsFeedback.patient_id == bindparam("pid"))
    .group_by(m.CdsFeedback.outcome)
)
_CDS_SHOWN = select(func.count()).select_from(m.CdsCard).where(m.CdsCard.patient_id == bindparam("pid"))


def cds_alerts(
    s: Session, who: Principal, patient_id: int, channel: str = "web", record: bool = True, limit: int = 50
) -> CdsAlerts:
    """The cards shown in the EHR for this patient (newest first) with their accepted/overridden
    outcome and reason, and the counts. `record` False: the page's own read is already audited."""
    _authorise_patient(s, who, patient_id, "view-cds-alerts", channel, record=record)
    cards = s.scalars(_CDS_CARDS, {"pid": patient_id, "limit": limit}).all()
    feedback: dict[str, m.CdsFeedback] = {}
    if cards:
        for fb in s.scalars(_CDS_FEEDBACK, {"uuids": [c.uuid for c in cards]}):
            feedback[fb.card_uuid] = fb  # the latest outcome of each card wins
    counts = dict(s.execute(_CDS_OUTCOMES, {"pid": patient_id}).all())
    # Fewer than `limit` cards: that is all of them (the patient page asks on every view)
    shown = len(cards) if len(cards) < limit else s.scalar(_CDS_SHOWN, {"pid": patient_id}) or 0
    rows = []
    for c in cards:
        latest = feedback.get(c.uuid)
        rows.append(
            CdsAlertRow(
                issued_at=c.issued_at,
                service=c.service_id,
                indicator=c.indicator,
                code=c.code,
                summary=c.summary,
                outcome=latest.outcome if latest else "",
                reason=(latest.reason_display or latest.reason_code) if latest else "",
                comment=latest.comment if latest else "",
            )
        )
    return CdsAlerts(
        rows=rows, shown=shown, accepted=int(counts.get("accepted", 0)), overridden=int(counts.get("overridden", 0))
    )


SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}


def cds_report(s: Session, who: Principal, since: date, until: date, channel: str = "web") -> CdsReport:
    """Cards shown in the EHR between two dates, per finding code, with accepted/overridden counts
    and the override reasons given: what a clinic reviews to see which alerts are heeded (staff)."""
    require_role(s, who, ("clinician", "admin"), "cds-report", channel)
    start, end = datetime.combine(since, time.min), datetime.combine(until, time.max)
    cards = s.execute(
        select(m.CdsCard.uuid, m.CdsCard.code, m.CdsCard.indicator, m.CdsCard.patient_id).where(
            m.CdsCard.issued_at >= start, m.CdsCard.issued_at <= end
        )
    ).all()
    code_of = {c.uuid: c.code for c in cards}
    rows: dict[str, dict[str, Any]] = {}
    for c in cards:
        r = rows.setdefault(
            c.code,
            {"indicator": c.indicator, "shown": 0, "patients": set(), "accepted": 0, "overridden": 0, "reasons": {}},
        )
        r["shown"] += 1
        if c.patient_id is not None:
            r["patients"].add(c.patient_id)
        if SEVERITY_RANK.get(c.indicator, 3) < SEVERITY_RANK.get(r["indicator"], 3):
            r["indicator"] = c.indicator
    if code_of:
        outcomes = s.execute(
            select(
                m.CdsFeedback.card_uuid, m.CdsFeedback.outcome, m.CdsFeedback.reason_display, m.CdsFeedback.reason_code
            )
            .where(m.CdsFeedback.card_uuid.in_(list(code_of)))
            .order_by(m.CdsFeedback.outcome_at)
        ).all()
        latest = {fb.card_uuid: fb for fb in outcomes}  # a card counts once, by its latest outcome
        for uuid_, fb in latest.items():
            r = rows[code_of[uuid_]]
            r[fb.outcome] = r.get(fb.outcome, 0) + 1
            if fb.outcome == "overridden":
                reason = fb.reason_display or fb.reason_code or "(no reason given)"
                r["reasons"][reason] = r["reasons"].get(reason, 0) + 1
    out = [
        CdsReportRow(
            code=code,
            indicator=r["indicator"],
            shown=r["shown"],
            patients=len(r["patients"]),
            accepted=r["accepted"],
            overridden=r["overridden"],
            reasons=r["reasons"],
        )
        for code, r in rows.items()
    ]
    out.sort(key=lambda x: (SEVERITY_RANK.get(x.indicator, 3), -x.shown, x.code))
    _audit(s, who, "read", f"cds-report ({len(out)} codes)", channel=channel)
    return CdsReport(
        since=since,
        until=until,
        rows=out,
        shown=sum(x.shown for x in out),
        accepted=sum(x.accepted for x in out),
        overridden=sum(x.overridden for x in out),
    )
