"""Use cases shared by the web pages, the REST API and the CLI: authorise, act, audit, re-assess.

This is the one door to the clinic's data. Every read or write of a patient's data, every query a
page or an API answer shows, every login and every audit record goes through here, so
authorisation and the audit trail cannot be forgotten by one channel: a patient may only see and
report on their own record; clinicians and admins see every patient; only admins see quarantine
and audit. Callers get view models (azaguard.service_models), never database rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import date

from sqlalchemy import func, select
from sqlalchemy.orm import Session, SessionTransaction

from azaguard import auth
from azaguard import worklist as wl
from azaguard.audit import audit
from azaguard.ingest import parse_text
from azaguard.ingest.items import Parsed
from azaguard.ingest.pipeline import ImportSummary, apply
from azaguard.knowledge import Knowledge
from azaguard.render.json import SCHEMA_VERSION
from azaguard.service_models import (
    AssessmentOut,
    AuditEventOut,
    AuditList,
    ChartData,
    DiscardOut,
    FindingList,
    FindingOut,
    FollowUpDismissalOut,
    ImportResult,
    MedicineList,
    MedicineOut,
    ObservationList,
    ObservationOut,
    PatientList,
    PatientOut,
    PatientPage,
    Principal,
    QuarantineItemOut,
    QuarantineList,
    ReprocessResult,
    ReviewOut,
    SymptomOut,
    TokenOut,
    VaccineOut,
    WebIdentity,
    WebLogin,
    WorklistEntryOut,
    WorklistPage,
    WorklistQuery,
)
from azaguard.store import models as m
from azaguard.store import writes
from azaguard.store.records import now
from azaguard.store.writes import FormError as FormError  # re-exported: the channels catch it by this name
from azaguard.worklist import REVIEW_OUTCOMES as REVIEW_OUTCOMES
from azaguard.worklist import ReviewError as ReviewError

SESSION_HOURS = auth.SESSION_HOURS  # how long a browser session lasts


class Denied(PermissionError):
    """The user may not do this; nothing is shown or changed."""


class NotFound(LookupError):
    pass


class LoginFailed(Exception):
    """Wrong username or password (the same whether or not the user exists)."""


class LoginLocked(Exception):
    """Too many recent failed logins for this username."""


# ---------------------------------------------------------------- who is asking
def principal_of(user: m.User) -> Principal:
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
    user, ws = found
    return WebIdentity(principal_of(user), ws.csrf_token)


def _audit(
    s: Session,
    who: Principal | None,
    action: str,
    resource: str,
    patient_id: int | None = None,
    detail: str = "",
    channel: str = "web",
) -> None:
    """The one place the use cases write the audit trail."""
    user = None if who is None else s.get(m.User, who.id)  # in the session's identity map already
    audit(s, user, action, resource, patient_id, detail, channel)


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
    _audit(s, who, "denied", resource, patient_id, channel=channel)
    s.commit()  # the denial is recorded even though the request fails
    return Denied(message)


def _authorise_patient(
    s: Session, who: Principal, patient_id: int, action: str, channel: str, write: bool = False, detail: str = ""
) -> m.Patient:
    """Check access, audit the attempt (allowed or denied), return the patient."""
    if not can_read_patient(who, patient_id) or (write and who.role == "patient" and action != "report-symptom"):
        raise _deny(s, who, action, channel, patient_id, f"not allowed to {action} for this patient")
    p = s.get(m.Patient, patient_id)
    if p is None:
        raise NotFound(f"patient {patient_id} does not exist")
    _audit(s, who, "write" if write else "read", action, patient_id, detail, channel)
    return p


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


def _observation_out(o: m.Observation) -> ObservationOut:
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


def _medicine_out(x: m.Medication) -> MedicineOut:
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


def _symptom_out(x: m.Symptom) -> SymptomOut:
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


def _review_out(r: m.Review) -> ReviewOut:
    return ReviewOut(id=r.id, finding_id=r.finding_id, outcome=r.outcome, note=r.note, created_at=r.created_at)


def _import_result(summary: ImportSummary) -> ImportResult:
    return ImportResult(**summary.as_dict())


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
    p = writes.add_patient(s, identifier, name, birth_date, sex, team)
    _audit(s, who, "write", "create-patient", p.id, channel=channel)
    wl.refresh_patient(s, kb, p.id)
    return _patient_out(p)


def set_team(s: Session, who: Principal, patient_id: int, team: str, channel: str) -> PatientOut:
    """Who monitors the patient's blood tests: the specialist team or the GP (shared care)."""
    require_role(s, who, ("clinician", "admin"), "set-team", channel, patient_id)
    p = _authorise_patient(s, who, patient_id, "set-team", channel, write=True)
    writes.set_team(s, patient_id, team)
    return _patient_out(p)


def list_observations(
    s: Session, who: Principal, patient_id: int, analyte: str | None, include_history: bool, channel: str
) -> ObservationList:
    _authorise_patient(s, who, patient_id, "list-observations", channel)
    q = select(m.Observation).where(m.Observation.patient_id == patient_id)
    if not include_history:
        q = q.where(m.Observation.current.is_(True))
    if analyte:
        q = q.where(m.Observation.analyte == analyte)
    rows = s.scalars(q.order_by(m.Observation.effective, m.Observation.id))
    return ObservationList(observations=[_observation_out(o) for o in rows])


def _medicines(s: Session, patient_id: int) -> list[MedicineOut]:
    q = select(m.Medication).where(m.Medication.patient_id == patient_id).order_by(m.Medication.start)
    return [_medicine_out(x) for x in s.scalars(q)]


def list_medicines(s: Session, who: Principal, patient_id: int, channel: str) -> MedicineList:
    _authorise_patient(s, who, patient_id, "list-medicines", channel)
    return MedicineList(medicines=_medicines(s, patient_id))


def list_findings(s: Session, who: Principal, patient_id: int, channel: str) -> FindingList:
    _authorise_patient(s, who, patient_id, "list-findings", channel)
    rows = wl.order_findings(wl.open_findings(s, patient_id), wl.stored_assessment(s, patient_id))
    return FindingList(findings=[_finding_out(f) for f in rows])


def _labs(s: Session, patient_id: int, ordered: bool = True) -> list[ObservationOut]:
    q = select(m.Observation).where(
        m.Observation.patient_id == patient_id, m.Observation.current.is_(True), m.Observation.kind == "lab"
    )
    if ordered:
        q = q.order_by(m.Observation.effective, m.Observation.id)
    return [_observation_out(o) for o in s.scalars(q)]


def patient_page(s: Session, kb: Knowledge, who: Principal, patient_id: int, channel: str = "web") -> PatientPage:
    """Everything the patient page (clinicians) and the patient's own page show, assessed as of today."""
    p = _authorise_patient(s, who, patient_id, "view-patient", channel)
    row = _fresh_assessment(s, kb, patient_id)
    conditions = s.scalars(select(m.Condition.key).where(m.Condition.patient_id == patient_id))
    indication = next((key for key in conditions if key in kb.indications), None)
    vaccines = s.scalars(select(m.Immunization).where(m.Immunization.patient_id == patient_id))
    symptoms = s.scalars(select(m.Symptom).where(m.Symptom.patient_id == patient_id).order_by(m.Symptom.when))
    reviews = s.scalars(select(m.Review).where(m.Review.patient_id == patient_id).order_by(m.Review.created_at))
    findings = wl.order_findings(wl.open_findings(s, patient_id), row.result)
    return PatientPage(
        patient=_patient_out(p),
        assessment=row.result,
        indication=indication,
        findings=[_finding_out(f) for f in findings],
        labs=_labs(s, patient_id),
        medicines=_medicines(s, patient_id),
        vaccines=[_vaccine_out(v) for v in vaccines],
        symptoms=[_symptom_out(x) for x in symptoms],
        reviews=[_review_out(r) for r in reviews],
    )


def chart_data(s: Session, who: Principal, patient_id: int, channel: str = "web") -> ChartData:
    """The current lab results and the azathioprine dose history, for the result charts."""
    _authorise_patient(s, who, patient_id, "view-charts", channel)
    q = select(m.Medication).where(m.Medication.patient_id == patient_id, m.Medication.drug == "azathioprine")
    return ChartData(labs=_labs(s, patient_id, ordered=False), doses=[_medicine_out(x) for x in s.scalars(q)])


def _fresh_assessment(s: Session, kb: Knowledge, patient_id: int) -> m.AssessmentRow:
    """The stored assessment, re-assessed first if it is older than today or in an older JSON schema."""
    row = s.get(m.AssessmentRow, patient_id)
    if row is None or row.as_of < date.today() or row.result.get("schema_version") != SCHEMA_VERSION:
        wl.refresh_patient(s, kb, patient_id)
        row = s.get(m.AssessmentRow, patient_id)
    assert row is not None
    return row


def assessment(s: Session, kb: Knowledge, who: Principal, patient_id: int, channel: str = "api") -> AssessmentOut:
    """The patient re-assessed as of today, in the JSON contract of docs/assessment-json.md."""
    _authorise_patient(s, who, patient_id, "view-assessment", channel)
    wl.refresh_patient(s, kb, patient_id)
    return AssessmentOut.model_validate(wl.stored_assessment(s, patient_id) or {})


# ---------------------------------------------------------------- writes to a patient's record
def _write(s: Session, who: Principal, patient_id: int, action: str, channel: str, detail: str = "") -> None:
    _authorise_patient(s, who, patient_id, action, channel, write=True, detail=detail)


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
    _write(s, who, pid, "add-lab", channel)
    row = writes.add_lab(s, kb, pid, analyte, value, unit, when)
    wl.refresh_patient(s, kb, pid)
    return _observation_out(row)


def change_dose(
    s: Session, kb: Knowledge, who: Principal, pid: int, mg: float | str | None, start: date | str | None, channel: str
) -> MedicineOut:
    _write(s, who, pid, "change-dose", channel)
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
    _write(s, who, pid, "add-medicine", channel)
    row = writes.add_medicine(s, kb, pid, name, status, start, mg)
    wl.refresh_patient(s, kb, pid)
    return _medicine_out(row)


def add_vaccine(
    s: Session, kb: Knowledge, who: Principal, pid: int, name: str, status: str, when: date | str | None, channel: str
) -> VaccineOut:
    _write(s, who, pid, "add-vaccine", channel)
    row = writes.add_vaccine(s, kb, pid, name, status, when)
    wl.refresh_patient(s, kb, pid)
    return _vaccine_out(row)


def report_symptom(
    s: Session, kb: Knowledge, who: Principal, pid: int, symptom: str, when: date | str | None, channel: str
) -> SymptomOut:
    _write(s, who, pid, "report-symptom", channel)
    by = "patient" if who.role == "patient" else "clinician"
    row = writes.add_symptom(s, kb, pid, symptom, when, by)
    wl.refresh_patient(s, kb, pid)
    return _symptom_out(row)


def hold_azathioprine(
    s: Session, kb: Knowledge, who: Principal, pid: int, reason: str, start: date | str | None, channel: str
) -> MedicineOut:
    """Withhold azathioprine (on hold, not stopped); a dose change restarts it."""
    _write(s, who, pid, "hold-azathioprine", channel, detail=(reason or "").strip())
    row = writes.hold_azathioprine(s, kb, pid, reason, start)
    wl.refresh_patient(s, kb, pid)
    return _medicine_out(row)


def dismiss_follow_up(
    s: Session, kb: Knowledge, who: Principal, pid: int, key: str, reason: str, channel: str
) -> FollowUpDismissalOut:
    """Drop an open follow-up with a reason (clinicians and admins). Only a follow-up the current
    assessment has open can be dropped; the engine then shows it as dismissed."""
    detail = f"{(key or '').strip()[:120]}: {(reason or '').strip()}"
    _write(s, who, pid, "dismiss-follow-up", channel, detail=detail)
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
def finding(s: Session, finding_id: int) -> FindingOut | None:
    """A finding instance by id, for routing a review form (no patient data is shown from it)."""
    f = s.get(m.FindingRow, finding_id)
    return None if f is None else _finding_out(f)


def review(
    s: Session, kb: Knowledge, who: Principal, finding_id: int, outcome: str, note: str, channel: str
) -> ReviewOut:
    """Record what was done about a finding. "Azathioprine withheld" also puts the drug on hold
    from today (the finding's message is the reason), unless it is already on hold or not being
    taken, and re-assesses the patient."""
    f = s.get(m.FindingRow, finding_id)
    if f is None:
        raise NotFound(f"finding {finding_id} does not exist")
    require_role(s, who, ("clinician", "admin"), "review", channel, f.patient_id)
    _authorise_patient(s, who, f.patient_id, "review", channel, write=True)
    r = wl.record_review(s, finding_id, who.id, outcome, note)
    _audit(s, who, "review", f"finding {f.code}: {outcome}", f.patient_id, note, channel)
    if outcome == "withheld" and _takes_azathioprine(s, f.patient_id):
        try:
            writes.hold_azathioprine(s, kb, f.patient_id, _AGE.sub("", f.message))
        except FormError as exc:
            raise ReviewError(f"azathioprine could not be recorded as withheld: {exc.message}") from None
        _audit(s, who, "write", "hold-azathioprine", f.patient_id, f"review of finding {f.code}", channel)
        wl.refresh_patient(s, kb, f.patient_id)
    return _review_out(r)


# "(63 days ago)" in a finding message is true on the day it is shown, not in a stored reason.
_AGE = re.compile(r" \((?:today|1 day ago|\d+ days ago)\)")


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
    )
    entries, total = wl.worklist(s, flt)
    _audit(s, who, "read", f"worklist ({len(entries)})", channel=channel)
    return WorklistPage(total=total, entries=[WorklistEntryOut(**vars(e)) for e in entries])


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
    summary = apply(s, parsed, source, who.username if who else "cli", progress=progress)
    wl.refresh_many(s, kb, sorted(summary.patients))
    _audit(s, who, "import", f"{parsed.format} {source}"[:80], detail=str(summary.as_dict()), channel=channel)
    return summary


def import_text(
    s: Session, kb: Knowledge, who: Principal, text: str, fmt: str | None, filename: str, channel: str
) -> ImportResult:
    """Import an uploaded file (web page, REST API): format detected unless given."""
    require_role(s, who, ("clinician", "admin"), "import", channel)
    if not text.strip():
        raise ValueError("the body is empty")
    parsed = parse_text(text, kb, fmt, filename)
    return _import_result(import_parsed(s, kb, who, parsed, filename, channel))


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
    """What imports could not accept, with the reason and the original (admins; `who` None: the CLI)."""
    if who is not None:
        require_role(s, who, ("admin",), "quarantine", channel)
    q = select(m.QuarantineItem).where(m.QuarantineItem.state == state)
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
