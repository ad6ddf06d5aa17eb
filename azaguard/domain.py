"""Typed domain records: what readers produce and what the engine consumes and returns.

Everything here is plain, frozen data so that the engine stays a pure function of
(record, knowledge, as_of) and results are reproducible and easy to compare in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK: dict[str, int] = {"critical": 0, "warning": 1, "info": 2}

CATEGORIES: tuple[str, ...] = (
    "screening",
    "pgx",
    "dosing",
    "monitoring",
    "lab",
    "trend",
    "interaction",
    "contraindication",
    "reproduction",
    "vaccine",
    "symptom",
    "efficacy",
    "metabolite",
    "data-quality",
)

Phase = Literal["pre-treatment", "initiation", "dose-change", "stable", "on-hold", "stopped"]
# What the patient's azathioprine is doing now. "on-hold" (withheld) is not "stopped": monitoring,
# interaction checks and red-flag guidance all continue while a course is on hold.
TreatmentStateName = Literal["not-started", "active", "on-hold", "stopped"]
MedStatus = Literal["active", "on-hold", "draft", "intended", "stopped", "unknown"]


@dataclass(frozen=True, slots=True)
class LabResult:
    """One numeric result in the analyte's canonical unit (conversion happened at the edge)."""

    analyte: str
    value: float
    unit: str
    when: date
    source_id: str = ""
    code: str = ""
    original_value: float | None = None
    original_unit: str | None = None
    ref_low: float | None = None
    ref_high: float | None = None
    below_detection: bool = False


@dataclass(frozen=True, slots=True)
class RejectedResult:
    """A result the reader could not use (unknown unit, no value): kept so it becomes a finding."""

    analyte: str
    when: date
    reason: Literal["unknown-unit", "missing-value"]
    unit: str = ""
    detail: str = ""
    source_id: str = ""


@dataclass(frozen=True, slots=True)
class MedicationEntry:
    """A medicine statement or order.

    status is normalised to: active (taking now), on-hold (withheld for now, to be resumed),
    draft (being ordered now), intended (planned), stopped (history) or unknown.
    `reason` is why it is on hold or stopped (FHIR statusReason, or the clinic's review).
    """

    drug: str | None
    name: str
    status: MedStatus
    start: date | None
    end: date | None
    daily_dose_mg: float | None
    kind: Literal["statement", "request"] = "statement"
    rxnorm: str | None = None
    source_id: str = ""
    reason: str = ""
    # When the status (hold, stop) took effect, if the source says (FHIR dateAsserted, a clinic
    # hold recorded as its own entry starting that day)
    status_date: date | None = None


@dataclass(frozen=True, slots=True)
class GenotypeResult:
    gene: str
    diplotype: str | None
    phenotype: str | None
    when: date | None
    source_id: str = ""


@dataclass(frozen=True, slots=True)
class ActivityResult:
    """TPMT enzyme activity. `method` names the laboratory's assay (Observation.method): bands
    are only valid for the assay they were published for, so an activity without a matching
    assay is never interpreted."""

    value: float
    unit: str
    when: date
    source_id: str = ""
    method: str = ""


@dataclass(frozen=True, slots=True)
class Condition:
    key: str | None
    text: str
    active: bool
    onset: date | None = None
    code: str | None = None
    source_id: str = ""


@dataclass(frozen=True, slots=True)
class Allergy:
    drug: str | None
    text: str
    source_id: str = ""


@dataclass(frozen=True, slots=True)
class Vaccination:
    """`live_unknown` marks a code that may be a live vaccine (CVX 188, zoster of unspecified
    formulation): it is never silently read as inactivated."""

    vaccine: str | None
    live: bool
    name: str
    when: date | None
    status: Literal["given", "ordered"]
    source_id: str = ""
    live_unknown: bool = False


@dataclass(frozen=True, slots=True)
class Symptom:
    key: str | None
    text: str
    when: date
    source_id: str = ""


@dataclass(frozen=True, slots=True)
class StatusObservation:
    """Pregnancy, breastfeeding or pregnancy-intention status; value True/False/None (unknown)."""

    kind: Literal["pregnancy", "breastfeeding", "pregnancy-intention"]
    value: bool | None
    when: date
    source_id: str = ""


@dataclass(frozen=True, slots=True)
class PatientRecord:
    patient_id: str
    birth_date: date | None = None
    sex: str | None = None
    name: str | None = None
    labs: tuple[LabResult, ...] = ()
    rejected: tuple[RejectedResult, ...] = ()
    medications: tuple[MedicationEntry, ...] = ()
    genotypes: tuple[GenotypeResult, ...] = ()
    tpmt_activity: tuple[ActivityResult, ...] = ()
    conditions: tuple[Condition, ...] = ()
    allergies: tuple[Allergy, ...] = ()
    vaccinations: tuple[Vaccination, ...] = ()
    symptoms: tuple[Symptom, ...] = ()
    statuses: tuple[StatusObservation, ...] = ()
    screening_done: tuple[tuple[str, date], ...] = ()
    # (test key, date, positive?) for screening results whose polarity could be read
    screening_results: tuple[tuple[str, date, bool], ...] = ()
    # Follow-ups a clinician dropped, with the reason: (follow-up key, reason, date)
    dismissed_follow_ups: tuple[tuple[str, str, date], ...] = ()


@dataclass(frozen=True, slots=True)
class Finding:
    code: str
    category: str
    severity: Severity
    message: str
    action: str
    sources: tuple[str, ...]
    evidence: tuple[dict[str, Any], ...] = ()
    patient_text: str = ""
    ctcae: dict[str, Any] | None = None
    # The date of the newest fact the finding rests on (result date, report date, order date)
    date: date | None = None
    # The repeat test the action asks for, as data: (test group, days after `date`, analytes that
    # answer it; empty = a complete panel of the group)
    follow_up: FollowUpSpec | None = None


@dataclass(frozen=True, slots=True)
class FollowUpSpec:
    group: str
    days: int
    answered_by: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FollowUp:
    """A repeat test a finding asked for; open until a result that answers it, dated after
    `since`, arrives, or a clinician records a reason to drop it (then "dismissed", still shown)."""

    key: str
    group: str
    since: date
    due: date
    finding_code: str
    reason: str
    severity: Severity
    state: Literal["open", "overdue", "dismissed"]
    answered_by: tuple[str, ...] = ()
    dismissed_reason: str = ""
    # The date `since` + days gave when it fell on a non-working day, so `due` is the working day
    # before it (engine.schedule.working_day); None when the date was not moved.
    moved_from: date | None = None


@dataclass(frozen=True, slots=True)
class TreatmentState:
    state: TreatmentStateName
    since: date | None = None
    reason: str = ""
    held_dose_mg_per_day: float | None = None


@dataclass(frozen=True, slots=True)
class DoseRange:
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class DoseStep:
    start: date
    mg_per_day: float


@dataclass(frozen=True, slots=True)
class DosePlan:
    current_mg_per_day: float | None
    current_mg_per_kg_per_day: float | None
    recommended: DoseRange | None
    plan: tuple[DoseStep, ...]
    basis: tuple[str, ...] = ()
    restart_criteria: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MonitoringGroup:
    name: str
    last: date | None
    next_due: date | None
    overdue: bool
    interval: str = ""
    # Earliest open follow-up for this group (next_due already takes it into account)
    follow_up_due: date | None = None
    due_reason: Literal["schedule", "follow-up", "baseline", ""] = ""
    # The date the schedule (or follow-up) gave when it fell on a weekend or public holiday:
    # next_due is then the working day before it, never after. None when not moved.
    moved_from: date | None = None


@dataclass(frozen=True, slots=True)
class MonitoringPlan:
    phase: Phase
    groups: tuple[MonitoringGroup, ...]
    treatment_start: date | None = None
    follow_ups: tuple[FollowUp, ...] = ()
    calendar: str | None = None  # the working-day calendar due dates were moved by ("GB-ENG"), or None


@dataclass(frozen=True, slots=True)
class Assessment:
    patient_id: str
    as_of: date
    knowledge_version: str
    protocol: dict[str, str]
    findings: tuple[Finding, ...]
    dose: DosePlan
    monitoring: MonitoringPlan
    pgx: dict[str, str | None] = field(default_factory=dict)
    treatment: TreatmentState = TreatmentState("not-started")
