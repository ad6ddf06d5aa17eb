"""View models: what the use cases in azaguard.service hand to every channel.

The web pages, the REST API and the CLI see these, never a database row, so neither a template
nor a JSON answer depends on the table layout. The pydantic models are also the REST API's
`response_model`s: the OpenAPI schema at /openapi.json describes every answer from them.

Dates are `datetime.date` (JSON: "YYYY-MM-DD"), timestamps naive local `datetime`s
(JSON: ISO 8601 without a zone, as the store keeps them: not an RFC 3339 date-time, and the
schema says so).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

# The server's local time without a zone, e.g. "2026-11-27T09:14:03" (what the store records).
LocalTime = Annotated[
    dt.datetime,
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?$",
            "description": "the server's local time, ISO 8601 without a zone",
        }
    ),
]


@dataclass(frozen=True)
class Principal:
    """Who is asking: the signed-in user, as the use cases need to know them."""

    id: int
    username: str
    role: str  # clinician | patient | admin
    patient_id: int | None  # the one record a patient user may see
    display_name: str


@dataclass(frozen=True)
class WebIdentity:
    """A signed-in browser: the user and the session's CSRF token (every form carries it)."""

    principal: Principal
    csrf: str


@dataclass(frozen=True)
class WebLogin:
    """A new browser session: the cookie value (shown once, stored only as a hash) and its user."""

    token: str
    principal: Principal


class Out(BaseModel):
    """A view model: immutable, and refuses fields it does not declare (a typo is a bug, not a silent key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ErrorDetail(Out):
    field: str
    message: str


class ErrorBody(Out):
    status: int
    message: str
    problems: list[ErrorDetail] | None = Field(default=None, description="422 only: every problem found")


class ErrorOut(Out):
    """Every error, from every route, has this shape and the matching HTTP status."""

    error: ErrorBody


# ---------------------------------------------------------------- authentication
class TokenOut(Out):
    token: str = Field(description="send as `Authorization: Bearer <token>`; shown once, stored only as a digest")
    token_type: str = "bearer"
    role: str = Field(description="clinician, patient or admin")
    patient_id: int | None = Field(description="the one patient record a patient user may see")


# ---------------------------------------------------------------- patients and their records
class PatientOut(Out):
    id: int
    identifier: str = Field(description="the clinic's patient identifier (the one imports use)")
    name: str
    birth_date: dt.date | None
    sex: str | None = Field(description="male, female, other or unknown")
    monitoring_team: str = Field(description="specialist or gp")


class PatientList(Out):
    total: int = Field(description="patients matching the search (all pages)")
    patients: list[PatientOut]


class ObservationOut(Out):
    id: int
    kind: str = Field(description="lab, genotype, phenotype, tpmt-activity, status or screening")
    analyte: str | None
    code: str
    value: float | None = Field(description="in the canonical unit")
    unit: str | None
    reported: str | None = Field(description="the value and unit as they arrived, if converted")
    date: dt.date
    status: str
    review_state: str = Field(description="pending, auto (nothing flagged it) or flagged")


class ObservationList(Out):
    observations: list[ObservationOut]


class MedicineOut(Out):
    """A medicine row; azathioprine rows are the dose history (status on-hold while withheld)."""

    id: int
    drug: str | None = Field(description="the known medicine it was matched to, or null")
    name: str
    status: str = Field(description="active, on-hold, draft, intended, stopped or unknown")
    kind: str = Field(description="statement (being taken) or request (about to be prescribed)")
    start: dt.date | None
    end: dt.date | None
    mg_per_day: float | None
    reason: str | None = Field(description="why it is on hold or stopped")
    status_date: dt.date | None = Field(description="when the hold or stop took effect")


class MedicineList(Out):
    medicines: list[MedicineOut]


class VaccineOut(Out):
    id: int
    vaccine: str | None = Field(description="the known vaccine it was matched to, or null")
    live: bool
    status: str = Field(description="given or ordered")
    date: dt.date | None


class SymptomOut(Out):
    id: int
    symptom: str = Field(description="the symptom key (fever, sore-throat, ...) or the words reported")
    text: str = Field(description="the words as shown to people")
    date: dt.date
    reported_by: str = Field(description="patient, clinician or import")


class FindingOut(Out):
    """A finding instance on the worklist (one per code and evidence)."""

    id: int
    patient_id: int
    code: str
    category: str
    severity: str = Field(description="critical, warning or info")
    message: str
    action: str
    state: str = Field(description="open, reviewed or info")


class FindingList(Out):
    findings: list[FindingOut]


class ReviewOut(Out):
    id: int
    finding_id: int
    outcome: str
    note: str
    created_at: LocalTime


class FollowUpDismissalOut(Out):
    id: int
    patient_id: int
    key: str
    reason: str
    created_at: LocalTime


class WorklistEntryOut(Out):
    patient_id: int
    identifier: str
    name: str
    team: str = Field(description="specialist or gp")
    indication: str | None
    worst: str | None = Field(description="the most severe open finding: critical, warning, info or null")
    open_count: int
    categories: list[str]
    next_due: dt.date | None
    overdue: bool
    phase: str
    awaiting: list[str] = Field(description="test groups with an open follow-up (awaiting a result)")
    treatment: str = Field(description="not-started, active, on-hold or stopped")


class WorklistPage(Out):
    total: int
    entries: list[WorklistEntryOut]


# ---------------------------------------------------------------- imports, quarantine, audit
class ImportResult(Out):
    batch_id: int | None
    imported: int
    duplicates: int
    corrected: int
    quarantined: int
    patients_created: int
    deleted: int


class ReprocessResult(ImportResult):
    state: str | None = Field(description="the quarantine item's state afterwards (reprocessed)")


class QuarantineItemOut(Out):
    id: int
    received_at: LocalTime
    format: str
    record: str = Field(description="where in the file the record was (OBX 2, line 5, Bundle.entry[3])")
    patient_identifier: str | None
    reason: str
    original: str = Field(description="the record as it arrived")
    state: str = Field(description="open, reprocessed or discarded")


class QuarantineList(Out):
    items: list[QuarantineItemOut]


class DiscardOut(Out):
    id: int
    state: str


class AuditEventOut(Out):
    at: LocalTime
    user: str
    action: str
    resource: str
    patient_id: int | None
    channel: str = Field(description="web, api or cli")
    detail: str


class AuditList(Out):
    events: list[AuditEventOut]


# ---------------------------------------------------------------- the assessment (docs/assessment-json.md)
class Contract(BaseModel):
    """Part of the assessment JSON contract: fields a newer contract adds pass through unchanged."""

    model_config = ConfigDict(frozen=True, extra="allow")


class ProtocolJson(Contract):
    name: str
    version: str


class TreatmentJson(Contract):
    state: str = Field(description="not-started, active, on-hold or stopped")
    since: str | None
    reason: str | None
    held_dose_mg_per_day: float | int | None


class CtcaeJson(Contract):
    version: str
    term: str
    grade: int


class FindingFollowUpJson(Contract):
    group: str
    days: int
    answered_by: list[str]


class FindingJson(Contract):
    code: str
    category: str
    severity: str = Field(description="critical, warning or info")
    message: str
    action: str
    sources: list[str]
    evidence: list[dict[str, Any]] = Field(description="the record facts the finding rests on, each with a type")
    patient_text: str
    ctcae: CtcaeJson | None = Field(default=None, description="present only on lab findings graded by CTCAE")
    date: str | None
    follow_up: FindingFollowUpJson | None


class DoseRangeJson(Contract):
    low: float | int
    high: float | int


class PlanStepJson(Contract):
    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True, serialize_by_alias=True)

    from_: str = Field(alias="from", description="YYYY-MM-DD")
    mg_per_day: float | int | None


class DoseJson(Contract):
    current_mg_per_day: float | int | None
    current_mg_per_kg_per_day: float | int | None
    recommended_mg_per_day: DoseRangeJson | None
    plan: list[PlanStepJson]
    basis: list[str]
    restart_criteria: list[str]


class MonitoringGroupJson(Contract):
    name: str
    last: str | None
    next_due: str | None
    overdue: bool
    interval: str
    follow_up_due: str | None
    due_reason: str | None


class FollowUpJson(Contract):
    key: str
    group: str
    since: str
    due: str
    state: str = Field(description="open, overdue or dismissed")
    finding_code: str
    severity: str
    reason: str
    answered_by: list[str]
    dismissed_reason: str | None


class MonitoringJson(Contract):
    phase: str
    treatment_start: str | None
    groups: list[MonitoringGroupJson]
    follow_ups: list[FollowUpJson]


class PgxJson(Contract):
    tpmt: str | None = None
    nudt15: str | None = None
    category: str | None = None


class AssessmentOut(Contract):
    """The assessment JSON contract (docs/assessment-json.md), the same as `azaguard assess --format json`."""

    schema_version: str
    patient_id: str = Field(description="the clinic's patient identifier")
    as_of: str
    knowledge_version: str
    protocol: ProtocolJson
    treatment: TreatmentJson
    findings: list[FindingJson]
    dose: DoseJson
    monitoring: MonitoringJson
    pgx: PgxJson


# ---------------------------------------------------------------- pages (not API answers)
@dataclass(frozen=True)
class PatientPage:
    """Everything the clinician's patient page and the patient's own page show."""

    patient: PatientOut
    assessment: dict[str, Any]  # the JSON contract, as stored (docs/assessment-json.md)
    indication: str | None  # the knowledge key of the patient's indication, if one is recorded
    findings: list[FindingOut]  # open, reviewed and info instances, most serious first
    labs: list[ObservationOut]  # current lab results, oldest first
    medicines: list[MedicineOut]
    vaccines: list[VaccineOut]
    symptoms: list[SymptomOut]
    reviews: list[ReviewOut]


@dataclass(frozen=True)
class ChartData:
    labs: list[ObservationOut]
    doses: list[MedicineOut]  # azathioprine rows


@dataclass(frozen=True)
class WorklistQuery:
    severity: str | None = None  # critical | warning
    category: str | None = None
    indication: str | None = None
    team: str | None = None  # specialist | gp
    search: str | None = None
    limit: int = 200
    offset: int = 0
