"""Validated writes from forms and the REST API (one record at a time).

Every function validates everything before it adds anything, and raises FormError naming the
field; the caller's transaction then rolls back, so nothing is ever saved half-way.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Collection, Mapping
from datetime import date, timedelta
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from azaguard.knowledge import Knowledge
from azaguard.plain import day_month_year
from azaguard.store import models as m
from azaguard.store.records import now

RowT = TypeVar("RowT", bound=m.Base)


class FormError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


def _key(prefix: str) -> str:
    return f"{prefix}:{uuid.uuid4().hex}"


# Bounds of plausibility for what a form may store (not clinical limits: those are knowledge):
# numbers beyond a million or dates before 1900 are typing errors, and 1e308 or year 1 broke the
# charts and the calendar arithmetic.
MAX_NUMBER = 1_000_000.0
MIN_DATE = date(1900, 1, 1)


def _date(value: date | str | None, field: str, today: date, required: bool = True) -> date | None:
    if value in (None, ""):
        if required:
            raise FormError(field, "is required (YYYY-MM-DD)")
        return None
    if isinstance(value, str):
        try:
            value = date.fromisoformat(value.strip())
        except ValueError:
            raise FormError(field, f"'{value}' is not a date (YYYY-MM-DD)") from None
    if value > today:
        raise FormError(field, "cannot be in the future")
    if value < MIN_DATE:
        raise FormError(field, f"cannot be before {MIN_DATE.isoformat()}")
    return value


def _number(value: float | str | None, field: str) -> float:
    if value in (None, ""):
        raise FormError(field, "is required")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise FormError(field, f"'{value}' is not a number") from None
    if not math.isfinite(x) or x < 0:
        raise FormError(field, "must be a number of zero or more")
    if x > MAX_NUMBER:
        raise FormError(field, f"is implausibly large (more than {MAX_NUMBER:,.0f})")
    return x


def _day_before(day: date, field: str) -> date:
    """The end of the entry a new one replaces (the calendar's first day has none: a 400, not a 500)."""
    if day == date.min:
        raise FormError(field, f"{day.isoformat()} is too early")
    return day - timedelta(days=1)


def _save(s: Session, row: RowT) -> RowT:
    """Add and flush, so the caller gets the id and any constraint error is raised here."""
    s.add(row)
    s.flush()
    return row


def require_patient(s: Session, patient_id: int) -> m.Patient:
    p = s.get(m.Patient, patient_id)
    if p is None:
        raise FormError("patient", f"patient {patient_id} does not exist")
    return p


def add_patient(
    s: Session,
    identifier: str,
    name: str,
    birth_date: date | str | None = None,
    sex: str | None = None,
    team: str = "specialist",
    today: date | None = None,
) -> m.Patient:
    today = today or date.today()
    identifier = (identifier or "").strip()
    if not identifier:
        raise FormError("identifier", "is required")
    if s.scalar(select(m.Patient.id).where(m.Patient.identifier == identifier)) is not None:
        raise FormError("identifier", f"a patient with identifier '{identifier}' already exists")
    if sex not in (None, "", "male", "female", "other", "unknown"):
        raise FormError("sex", "must be male, female, other or unknown")
    if team not in ("specialist", "gp"):
        raise FormError("team", "must be specialist or gp")
    p = m.Patient(
        identifier=identifier,
        name=(name or "").strip(),
        birth_date=_date(birth_date, "birth_date", today, required=False),
        sex=sex or None,
        monitoring_team=team,
        created_at=now(),
    )
    return _save(s, p)


def add_lab(
    s: Session,
    kb: Knowledge,
    patient_id: int,
    analyte: str,
    value: float | str | None,
    unit: str,
    when: date | str | None,
    today: date | None = None,
) -> m.Observation:
    today = today or date.today()
    require_patient(s, patient_id)
    if analyte not in kb.analytes:
        raise FormError("analyte", f"unknown test '{analyte}'")
    x = _number(value, "value")
    unit = (unit or kb.analytes[analyte].canonical).strip()
    converted = kb.convert(analyte, x, unit)
    if converted is None:
        raise FormError("unit", _unknown_unit(kb, analyte, unit))
    effective = _date(when, "date", today)
    assert effective is not None
    return _save(s, _lab_row(kb, patient_id, analyte, x, unit, converted, effective))


def _unknown_unit(kb: Knowledge, analyte: str, unit: str) -> str:
    accepted = ", ".join(sorted(kb.unit_overrides.get(analyte) or kb.units[kb.analytes[analyte].canonical]))
    return f"'{unit}' is not a known unit for {kb.analytes[analyte].label} (accepted: {accepted})"


def _lab_row(
    kb: Knowledge, patient_id: int, analyte: str, x: float, unit: str, converted: float, effective: date
) -> m.Observation:
    """A lab result entered by hand: the value in the canonical unit, and as it was entered."""
    return m.Observation(
        patient_id=patient_id,
        kind="lab",
        analyte=analyte,
        code=kb.analytes[analyte].loinc[0] if kb.analytes[analyte].loinc else analyte,
        value=converted,
        unit=kb.analytes[analyte].canonical,
        original_value=f"{x:g}",
        original_unit=unit,
        effective=effective,
        status="final",
        source_key=_key("form"),
        version=1,
        current=True,
        content_hash="",
        review_state="pending",
        received_at=now(),
        below_detection=False,
    )


class PanelError(FormError):
    """Every field of a panel that is wrong (field -> message), found before anything is saved."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        field, message = next(iter(errors.items()))
        super().__init__(field, message)


def panel_analytes(kb: Knowledge, group: str) -> list[str]:
    """The tests a panel form offers: every analyte of the panel's test group, in knowledge order."""
    return [key for key, a in kb.analytes.items() if a.group == group]


def add_panel(
    s: Session,
    kb: Knowledge,
    patient_id: int,
    group: str,
    when: date | str | None,
    values: Mapping[str, float | str | None],
    units: Mapping[str, str],
    today: date | None = None,
) -> list[m.Observation]:
    """A whole panel (a knowledge `schedule.panels` group: FBC, LFT, renal) on one date.

    Blank values are left out. Every field is checked before anything is added; if any is wrong,
    PanelError names each one (`date`, `value-<analyte>`, `unit-<analyte>`) and nothing is saved."""
    today = today or date.today()
    require_patient(s, patient_id)
    if group not in kb.schedule.panels:
        raise FormError("panel", f"unknown panel '{group}'")
    errors: dict[str, str] = {}
    effective = None
    try:
        effective = _date(when, "date", today)
    except FormError as exc:
        errors[exc.field] = exc.message
    entered: list[tuple[str, float, str, float]] = []
    analytes = panel_analytes(kb, group)
    for analyte in analytes:
        raw = values.get(analyte)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            continue
        try:
            x = _number(raw.strip() if isinstance(raw, str) else raw, f"value-{analyte}")
        except FormError as exc:
            errors[exc.field] = exc.message
            continue
        unit = (units.get(analyte) or kb.analytes[analyte].canonical).strip()
        converted = kb.convert(analyte, x, unit)
        if converted is None:
            errors[f"unit-{analyte}"] = _unknown_unit(kb, analyte, unit)
            continue
        entered.append((analyte, x, unit, converted))
    if not entered and not errors:
        errors[f"value-{analytes[0]}"] = "enter at least one result"
    if errors:
        raise PanelError(errors)
    assert effective is not None
    return [_save(s, _lab_row(kb, patient_id, a, x, unit, v, effective)) for a, x, unit, v in entered]


def _aza_rows(s: Session, patient_id: int, status: str, open_only: bool = False) -> list[m.Medication]:
    """The patient's azathioprine rows with this status (only those without an end date if
    `open_only`), oldest first."""
    q = select(m.Medication).where(
        m.Medication.patient_id == patient_id, m.Medication.drug == "azathioprine", m.Medication.status == status
    )
    if open_only:
        q = q.where(m.Medication.end.is_(None))
    return list(s.scalars(q.order_by(m.Medication.start, m.Medication.id)))


def _reason(value: str | None, field: str = "reason") -> str:
    text = (value or "").strip()
    if not text:
        raise FormError(field, "is required")
    if len(text) > 2000:
        raise FormError(field, "must be 2000 characters or fewer")
    return text


def change_dose(
    s: Session,
    kb: Knowledge,
    patient_id: int,
    mg_per_day: float | str | None,
    start: date | str | None,
    today: date | None = None,
) -> m.Medication:
    """A new azathioprine dose from `start`; the current course entry ends the day before.

    This is also how a course on hold restarts: the hold row ends the day before the new dose
    (it keeps its status "on-hold", so the history shows when the drug was withheld)."""
    today = today or date.today()
    require_patient(s, patient_id)
    dose = _number(mg_per_day, "mg_per_day")
    if dose == 0:
        raise FormError("mg_per_day", "use 'stop azathioprine' rather than a dose of 0")
    begin = _date(start, "start", today)
    assert begin is not None
    current = _aza_rows(s, patient_id, "active")
    held = _aza_rows(s, patient_id, "on-hold", open_only=True)
    for row in [*current, *held]:
        if row.start is not None and row.start >= begin:
            what = "the hold" if row.status == "on-hold" else "the current dose"
            raise FormError("start", f"must be after the start of {what} ({row.start.isoformat()})")
    _end_before(current, begin, "stopped")
    _end_before(held, begin)  # a hold keeps its status: the history shows when the drug was withheld
    return _save(s, _azathioprine_row(patient_id, begin, dose, "active", f"Azathioprine {dose:g} mg daily", "1256"))


def _end_before(rows: list[m.Medication], begin: date, status: str | None = None) -> None:
    """Entries that a new one replaces end the day before it (optionally with a new status)."""
    for row in rows:
        row.end = _day_before(begin, "start")
        if status is not None:
            row.status = status


def _azathioprine_row(
    patient_id: int,
    begin: date,
    dose: float | None,
    status: str,
    name: str,
    rxnorm: str | None,
    reason: str | None = None,
) -> m.Medication:
    return m.Medication(
        patient_id=patient_id,
        drug="azathioprine",
        name=name,
        rxnorm=rxnorm,
        kind="statement",
        status=status,
        start=begin,
        daily_dose_mg=dose,
        reason=reason,
        status_date=begin if status == "on-hold" else None,
        source_key=_key("form"),
        created_at=now(),
    )


def hold_azathioprine(
    s: Session,
    kb: Knowledge,
    patient_id: int,
    reason: str | None,
    start: date | str | None = None,
    today: date | None = None,
) -> m.Medication:
    """Withhold azathioprine from `start` (default today): the active row ends the day before and a
    row with status "on-hold" at the same dose begins. On hold is not stopped: monitoring goes on,
    and a dose change (writes.change_dose) restarts it."""
    today = today or date.today()
    require_patient(s, patient_id)
    text = _reason(reason)
    begin = _date(start or today, "start", today)
    assert begin is not None
    held = _aza_rows(s, patient_id, "on-hold", open_only=True)
    if held:
        since = held[-1].start.isoformat() if held[-1].start else "an unknown date"
        raise FormError("azathioprine", f"azathioprine is already on hold (since {since})")
    # Active rows still running on the hold date (an entry that already ended is history)
    active = [r for r in _aza_rows(s, patient_id, "active") if r.end is None or r.end >= begin]
    if not active:
        raise FormError("azathioprine", "there is no active azathioprine to withhold")
    for row in active:
        if row.start is not None and row.start >= begin:
            raise FormError("start", f"must be after the current dose's start ({row.start.isoformat()})")
    current = active[-1]
    _end_before(active, begin, "stopped")
    row = _azathioprine_row(patient_id, begin, current.daily_dose_mg, "on-hold", current.name, current.rxnorm, text)
    return _save(s, row)


def dismiss_follow_up(
    s: Session,
    kb: Knowledge,
    patient_id: int,
    key: str | None,
    reason: str | None,
    user_id: int | None = None,
    open_keys: Collection[str] | None = None,
) -> m.FollowUpDismissal:
    """Drop a follow-up (a repeat test a finding asked for) with a reason. `open_keys`, when given,
    are the follow-ups open now: any other key is refused, so a typo is never recorded."""
    require_patient(s, patient_id)
    key = (key or "").strip()
    if not key:
        raise FormError("key", "is required")
    text = _reason(reason)
    found = s.scalar(
        select(m.FollowUpDismissal.id).where(
            m.FollowUpDismissal.patient_id == patient_id, m.FollowUpDismissal.key == key
        )
    )
    if found is not None:
        raise FormError("key", f"follow-up '{key[:80]}' has already been dismissed")
    if open_keys is not None and key not in open_keys:
        raise FormError("key", f"no open follow-up '{key[:80]}' for this patient")
    row = m.FollowUpDismissal(patient_id=patient_id, key=key[:200], reason=text, user_id=user_id, created_at=now())
    return _save(s, row)


def add_medicine(
    s: Session,
    kb: Knowledge,
    patient_id: int,
    name: str,
    status: str,
    start: date | str | None,
    mg_per_day: float | str | None = None,
    today: date | None = None,
) -> m.Medication:
    """A co-medication being taken (active) or about to be prescribed (draft)."""
    today = today or date.today()
    require_patient(s, patient_id)
    name = (name or "").strip()
    if not name:
        raise FormError("name", "is required")
    if status not in ("active", "draft"):
        raise FormError("status", "must be active (taking now) or draft (about to be prescribed)")
    begin = _date(start, "start", today, required=status == "active")
    dose = None if mg_per_day in (None, "") else _number(mg_per_day, "mg_per_day")
    med = m.Medication(
        patient_id=patient_id,
        drug=kb.drug_for_text(name),
        name=name[:200],
        kind="statement" if status == "active" else "request",
        status=status,
        start=begin or today,
        daily_dose_mg=dose,
        source_key=_key("form"),
        created_at=now(),
    )
    return _save(s, med)


def add_vaccine(
    s: Session,
    kb: Knowledge,
    patient_id: int,
    name: str,
    status: str,
    when: date | str | None,
    today: date | None = None,
) -> m.Immunization:
    today = today or date.today()
    require_patient(s, patient_id)
    name = (name or "").strip()
    if not name:
        raise FormError("name", "is required")
    if status not in ("given", "ordered"):
        raise FormError("status", "must be given or ordered")
    effective = _date(when, "date", today, required=status == "given")
    low = name.lower()
    vaccine, live, unknown = None, False, False
    groups = (
        (True, False, kb.vaccines.live),
        (False, False, kb.vaccines.inactivated),
        (False, True, kb.vaccines.uncertain),
    )
    for is_live, is_unknown, group in groups:
        for key, v in group.items():
            if any(n in low for n in v.names) or low in v.cvx:
                vaccine, live, unknown = key, is_live, is_unknown
                break
        if vaccine:
            break
    row = m.Immunization(
        patient_id=patient_id,
        vaccine=vaccine,
        live=live,
        live_unknown=unknown,
        name=name[:200],
        when=effective or today,
        status=status,
        source_key=_key("form"),
    )
    return _save(s, row)


def add_symptom(
    s: Session,
    kb: Knowledge,
    patient_id: int,
    symptom: str,
    when: date | str | None,
    reported_by: str = "clinician",
    today: date | None = None,
) -> m.Symptom:
    today = today or date.today()
    require_patient(s, patient_id)
    symptom = (symptom or "").strip()
    if not symptom:
        raise FormError("symptom", "is required")
    effective = _date(when or today, "date", today)
    assert effective is not None
    key = symptom if symptom in kb.symptoms.items else None
    if key is None:
        low = symptom.lower()
        key = next((k for k, v in kb.symptoms.items.items() if any(t in low for t in v.text)), None)
    text = symptom.replace("-", " ") if key == symptom else symptom
    row = m.Symptom(
        patient_id=patient_id,
        key=key,
        text=text[:200],
        when=effective,
        reported_by=reported_by,
        source_key=_key("form"),
    )
    return _save(s, row)


# The patient's own symptom report (the form on /me): how bad, since when, in their words.
HOW_BAD = ("mild", "moderate", "severe")
SOMETHING_ELSE = "other"  # the form's "Something else" choice: the words say what it is
DETAILS_MAX = 150


def add_patient_report(
    s: Session,
    kb: Knowledge,
    patient_id: int,
    symptom: str,
    how_bad: str,
    since: date | str | None,
    details: str = "",
    today: date | None = None,
) -> m.Symptom:
    """A symptom the patient reports: `symptom` is a knowledge key or "other" (then `details` says
    what it is), `how_bad` one of HOW_BAD, `since` the day it started. FormError names the field.

    The row's date is the day of the report, not the day it started: a report stays open until a
    result taken on or after it answers it, so a test from before the clinic knew of the symptom
    never closes it. How bad it is and since when are kept in the report's words (`text`), which
    the clinic sees with the finding; the store has no columns for them (yet)."""
    today = today or date.today()
    require_patient(s, patient_id)
    key = (symptom or "").strip()
    words = " ".join((details or "").split())
    if key != SOMETHING_ELSE and key not in kb.symptoms.items:
        raise FormError("symptom", "choose what is wrong, or 'Something else' and describe it")
    if key == SOMETHING_ELSE and not words:
        raise FormError("details", "say what is wrong")
    if len(words) > DETAILS_MAX:
        raise FormError("details", f"use {DETAILS_MAX} characters or fewer (you used {len(words)})")
    if how_bad not in HOW_BAD:
        raise FormError("how_bad", "choose mild, moderate or severe")
    started = _date(since, "since", today)
    assert started is not None
    if key == SOMETHING_ELSE:
        low = words.lower()
        found = next((k for k, v in kb.symptoms.items.items() if any(t in low for t in v.text)), None)
        name = "Something else"
    else:
        found, item = key, kb.symptoms.items[key]
        name = item.label or key.replace("-", " ")
    text = f"{name} ({how_bad}, since {day_month_year(started)})" + (f": {words}" if words else "")
    row = m.Symptom(
        patient_id=patient_id,
        key=found,
        text=text[:200],
        when=today,
        reported_by="patient",
        source_key=_key("form"),
    )
    return _save(s, row)


def set_team(s: Session, patient_id: int, team: str) -> None:
    if team not in ("specialist", "gp"):
        raise FormError("team", "must be specialist or gp")
    require_patient(s, patient_id).monitoring_team = team


OWNER_ROLES = ("clinician", "admin")  # who may own a patient on the worklist


def set_owner(s: Session, patient_id: int, username: str | None) -> m.User | None:
    """Give the patient to a team member (an active clinician or admin), or to nobody (None or "")."""
    p = require_patient(s, patient_id)
    name = (username or "").strip()
    if not name:
        p.owner_id = None
        return None
    user = s.scalar(select(m.User).where(m.User.username == name))
    if user is None or not user.active or user.role not in OWNER_ROLES:
        raise FormError("username", f"'{name[:80]}' is not an active clinician or admin")
    p.owner_id = user.id
    return user
