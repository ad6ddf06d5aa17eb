"""Use cases shared by the web pages, the REST API and the CLI: authorise, act, audit, re-assess.

Every read or write of a patient's data goes through here, so authorisation and the audit
trail cannot be forgotten by one channel: a patient may only see and report on their own
record; clinicians and admins see every patient; only admins see quarantine and audit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from azaguard import worklist as wl
from azaguard.audit import audit
from azaguard.ingest.items import Parsed
from azaguard.ingest.pipeline import ImportSummary, apply
from azaguard.knowledge import Knowledge
from azaguard.render.json import SCHEMA_VERSION
from azaguard.store import models as m
from azaguard.store import writes
from azaguard.store.records import now


class Denied(PermissionError):
    """The user may not do this; nothing is shown or changed."""


class NotFound(LookupError):
    pass


def can_read_patient(user: m.User, patient_id: int) -> bool:
    return user.role in ("clinician", "admin") or (user.role == "patient" and user.patient_id == patient_id)


def authorise_patient(
    s: Session, user: m.User, patient_id: int, action: str, channel: str, write: bool = False, detail: str = ""
) -> m.Patient:
    """Check access, audit the attempt (allowed or denied), return the patient."""
    if not can_read_patient(user, patient_id) or (write and user.role == "patient" and action != "report-symptom"):
        audit(s, user, "denied", action, patient_id, channel=channel)
        s.commit()  # the denial is recorded even though the request fails
        raise Denied(f"not allowed to {action} for this patient")
    p = s.get(m.Patient, patient_id)
    if p is None:
        raise NotFound(f"patient {patient_id} does not exist")
    audit(s, user, "write" if write else "read", action, patient_id, detail, channel)
    return p


def require_role(
    s: Session, user: m.User, roles: tuple[str, ...], action: str, channel: str, patient_id: int | None = None
) -> None:
    if user.role not in roles:
        audit(s, user, "denied", action, patient_id, channel=channel)
        s.commit()
        raise Denied(f"{action} needs the role {' or '.join(roles)}")


@dataclass
class PatientView:
    patient: m.Patient
    assessment: dict[str, Any]
    findings: list[m.FindingRow]
    labs: list[m.Observation]
    medicines: list[m.Medication]
    immunizations: list[m.Immunization]
    symptoms: list[m.Symptom]
    reviews: list[m.Review]


def patient_view(s: Session, kb: Knowledge, user: m.User, patient_id: int, channel: str = "web") -> PatientView:
    p = authorise_patient(s, user, patient_id, "view-patient", channel)
    row = _fresh_assessment(s, kb, patient_id)
    labs = list(
        s.scalars(
            select(m.Observation)
            .where(m.Observation.patient_id == patient_id, m.Observation.current.is_(True), m.Observation.kind == "lab")
            .order_by(m.Observation.effective, m.Observation.id)
        )
    )
    meds = list(
        s.scalars(select(m.Medication).where(m.Medication.patient_id == patient_id).order_by(m.Medication.start))
    )
    imms = list(s.scalars(select(m.Immunization).where(m.Immunization.patient_id == patient_id)))
    syms = list(s.scalars(select(m.Symptom).where(m.Symptom.patient_id == patient_id).order_by(m.Symptom.when)))
    reviews = list(s.scalars(select(m.Review).where(m.Review.patient_id == patient_id).order_by(m.Review.created_at)))
    findings = wl.order_findings(wl.open_findings(s, patient_id), row.result)
    return PatientView(p, row.result, findings, labs, meds, imms, syms, reviews)


def _fresh_assessment(s: Session, kb: Knowledge, patient_id: int) -> m.AssessmentRow:
    """The stored assessment, re-assessed first if it is older than today or in an older JSON schema."""
    row = s.get(m.AssessmentRow, patient_id)
    if row is None or row.as_of < date.today() or row.result.get("schema_version") != SCHEMA_VERSION:
        wl.refresh_patient(s, kb, patient_id)
        row = s.get(m.AssessmentRow, patient_id)
    assert row is not None
    return row


def assessment(s: Session, kb: Knowledge, user: m.User, patient_id: int, channel: str = "api") -> dict[str, Any]:
    authorise_patient(s, user, patient_id, "view-assessment", channel)
    wl.refresh_patient(s, kb, patient_id)
    return wl.stored_assessment(s, patient_id) or {}


def write_and_refresh(
    s: Session, kb: Knowledge, user: m.User, patient_id: int, action: str, channel: str, fn: Any, *args: Any, **kw: Any
) -> Any:
    authorise_patient(s, user, patient_id, action, channel, write=True)
    result = fn(s, kb, patient_id, *args, **kw)
    wl.refresh_patient(s, kb, patient_id)
    return result


def add_lab(
    s: Session, kb: Knowledge, user: m.User, pid: int, analyte: str, value: Any, unit: str, when: Any, channel: str
) -> m.Observation:
    return write_and_refresh(s, kb, user, pid, "add-lab", channel, writes.add_lab, analyte, value, unit, when)


def change_dose(s: Session, kb: Knowledge, user: m.User, pid: int, mg: Any, start: Any, channel: str) -> m.Medication:
    return write_and_refresh(s, kb, user, pid, "change-dose", channel, writes.change_dose, mg, start)


def add_medicine(
    s: Session, kb: Knowledge, user: m.User, pid: int, name: str, status: str, start: Any, mg: Any, channel: str
) -> m.Medication:
    return write_and_refresh(s, kb, user, pid, "add-medicine", channel, writes.add_medicine, name, status, start, mg)


def add_vaccine(
    s: Session, kb: Knowledge, user: m.User, pid: int, name: str, status: str, when: Any, channel: str
) -> m.Immunization:
    return write_and_refresh(s, kb, user, pid, "add-vaccine", channel, writes.add_vaccine, name, status, when)


def report_symptom(
    s: Session, kb: Knowledge, user: m.User, pid: int, symptom: str, when: Any, channel: str
) -> m.Symptom:
    by = "patient" if user.role == "patient" else "clinician"
    return write_and_refresh(s, kb, user, pid, "report-symptom", channel, writes.add_symptom, symptom, when, by)


def hold_azathioprine(
    s: Session, kb: Knowledge, user: m.User, pid: int, reason: str, start: Any, channel: str
) -> m.Medication:
    """Withhold azathioprine (on hold, not stopped); a dose change restarts it."""
    authorise_patient(s, user, pid, "hold-azathioprine", channel, write=True, detail=(reason or "").strip())
    row = writes.hold_azathioprine(s, kb, pid, reason, start)
    wl.refresh_patient(s, kb, pid)
    return row


def dismiss_follow_up(
    s: Session, kb: Knowledge, user: m.User, pid: int, key: str, reason: str, channel: str
) -> m.FollowUpDismissal:
    """Drop an open follow-up with a reason (clinicians and admins). Only a follow-up the current
    assessment has open can be dropped; the engine then shows it as dismissed."""
    detail = f"{(key or '').strip()[:120]}: {(reason or '').strip()}"
    authorise_patient(s, user, pid, "dismiss-follow-up", channel, write=True, detail=detail)
    row_a = _fresh_assessment(s, kb, pid)
    open_keys = {
        u["key"] for u in row_a.result["monitoring"].get("follow_ups", []) if u["state"] in ("open", "overdue")
    }
    row = writes.dismiss_follow_up(s, kb, pid, key, reason, user.id, open_keys)
    wl.refresh_patient(s, kb, pid)
    return row


def review(s: Session, kb: Knowledge, user: m.User, finding_id: int, outcome: str, note: str, channel: str) -> m.Review:
    """Record what was done about a finding. "Azathioprine withheld" also puts the drug on hold
    from today (the finding's message is the reason), unless it is already on hold or not being
    taken, and re-assesses the patient."""
    f = s.get(m.FindingRow, finding_id)
    if f is None:
        raise NotFound(f"finding {finding_id} does not exist")
    require_role(s, user, ("clinician", "admin"), "review", channel, f.patient_id)
    authorise_patient(s, user, f.patient_id, "review", channel, write=True)
    r = wl.record_review(s, finding_id, user.id, outcome, note)
    audit(s, user, "review", f"finding {f.code}: {outcome}", f.patient_id, note, channel)
    if outcome == "withheld" and _takes_azathioprine(s, f.patient_id):
        try:
            writes.hold_azathioprine(s, kb, f.patient_id, _AGE.sub("", f.message))
        except writes.FormError as exc:
            raise wl.ReviewError(f"azathioprine could not be recorded as withheld: {exc.message}") from None
        audit(s, user, "write", "hold-azathioprine", f.patient_id, f"review of finding {f.code}", channel)
        wl.refresh_patient(s, kb, f.patient_id)
    return r


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


def list_patients(
    s: Session, user: m.User, search: str | None, limit: int, offset: int, channel: str
) -> tuple[list[m.Patient], int]:
    q = select(m.Patient)
    if user.role == "patient":
        q = q.where(m.Patient.id == user.patient_id)
    if search:
        term = f"%{search.strip().lower()}%"
        q = q.where(func.lower(m.Patient.name).like(term) | func.lower(m.Patient.identifier).like(term))
    total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = list(s.scalars(q.order_by(m.Patient.name, m.Patient.id).limit(limit).offset(offset)))
    audit(s, user, "read", f"list-patients ({len(rows)})", channel=channel)
    return rows, total


def import_parsed(
    s: Session, kb: Knowledge, user: m.User | None, parsed: Parsed, source: str, channel: str, progress: Any = None
) -> ImportSummary:
    if user is not None:
        require_role(s, user, ("clinician", "admin"), "import", channel)
    summary = apply(s, parsed, source, user.username if user else "cli", progress=progress)
    wl.refresh_many(s, kb, sorted(summary.patients))
    audit(s, user, "import", f"{parsed.format} {source}"[:80], detail=str(summary.as_dict()), channel=channel)
    return summary


def _record_tail(ref: str) -> str:
    """The part of a record reference that survives a new source name ("OBX 2", "line 5", "")."""
    import re

    found = re.search(r"(OBX \S+|Bundle\.entry\[\d+\]|line \d+)$", ref)
    return found.group(1) if found else ""


def reprocess_quarantine(
    s: Session,
    kb: Knowledge,
    user: m.User | None,
    item_id: int,
    channel: str,
    local_codes: dict[str, str] | None = None,
) -> ImportSummary:
    """Re-run a quarantined record through its reader after a fix (new patient, code map, unit).

    All or nothing, and never a duplicate: if the record is still rejected, nothing is written,
    the item stays open with the new reason, and no second quarantine row appears. Other records
    of the same message that were imported before come back as duplicates (imports are idempotent).
    """
    from azaguard.ingest import parse_text

    if user is not None:
        require_role(s, user, ("admin",), "reprocess-quarantine", channel)
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
    summary = import_parsed(s, kb, user, parsed, f"quarantine {item_id}", channel)
    if summary.counts.get("quarantined", 0):
        reasons = [r.reason for r in summary.rejects]
        savepoint.rollback()
        item.reason = reasons[0] if reasons else item.reason
        s.commit()
        raise ValueError(f"still rejected: {item.reason}")
    savepoint.commit()
    item.state, item.resolved_at = "reprocessed", now()
    return summary


def discard_quarantine(s: Session, user: m.User | None, item_id: int, reason: str, channel: str) -> None:
    if user is not None:
        require_role(s, user, ("admin",), "discard-quarantine", channel)
    item = s.get(m.QuarantineItem, item_id)
    if item is None:
        raise NotFound(f"quarantine item {item_id} does not exist")
    if not reason.strip():
        raise ValueError("a reason is required to discard a quarantined record")
    item.state, item.resolved_at = "discarded", now()
    audit(s, user, "write", f"discard quarantine {item_id}", detail=reason, channel=channel)
