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
    urgent_code: str | None = Field(description="the code of the most urgent open finding, or null when none is open")
    urgent: str = Field(
        description="the most urgent open finding in the engine's words (without its age on the day it was assessed)"
    )
    urgent_value: str = Field(description='the newest result it rests on with its unit ("0.9 10*9/L"), or ""')
    urgent_date: dt.date | None = Field(description="the finding's date (the newest fact it rests on)")
    urgent_age: str = Field(description='how old that date is today: "today", "1 day ago", "3 days ago", or ""')
    days_overdue: int | None = Field(description="days since the next blood test fell due, or null when not overdue")
    owner: str | None = Field(description="username of the team member who owns the patient (claimed or assigned)")
    owner_name: str | None = Field(description="the owner's display name")


class WorklistCounts(Out):
    """Patients on the list (under every filter but `needs`) by what they need; each is the total of
    the list filtered by that `needs` value."""

    critical: int = Field(description="the worst open finding is critical")
    warning: int = Field(description="the worst open finding is a warning")
    overdue: int = Field(description="the next blood test is overdue")
    awaiting: int = Field(description="a repeat test's result is awaited")


class WorklistPage(Out):
    total: int
    entries: list[WorklistEntryOut]
    counts: WorklistCounts


class OwnerOut(Out):
    """Who owns a patient on the worklist after a claim, an assignment or an unassignment."""

    patient_id: int
    owner: str | None = Field(description="username of the owner, or null: nobody")
    owner_name: str | None = Field(description="the owner's display name")


class TeamMemberOut(Out):
    """A clinician or admin a patient can be assigned to."""

    username: str
    name: str


# ---------------------------------------------------------------- imports, quarantine, audit
class ImportResult(Out):
    batch_id: int | None
    imported: int
    duplicates: int
    corrected: int
    quarantined: int
    patients_created: int
    deleted: int
    message: str = Field(
        default="",
        description='"nothing new: all N records were already imported" when the batch added nothing, else empty',
    )


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
    moved_from: str | None = Field(None, description="the schedule's date, when next_due moved off a non-working day")


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
    moved_from: str | None = Field(None, description="since + days, when that fell on a non-working day")


class MonitoringJson(Contract):
    phase: str
    treatment_start: str | None
    groups: list[MonitoringGroupJson]
    follow_ups: list[FollowUpJson]
    calendar: str | None = Field(None, description='the working-day calendar used ("GB-ENG"), or null')


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
    summary: SummaryStrip | None = None  # the strip at the top of the clinician's page
    results: ResultsGrid | None = None  # the cumulative results grid


@dataclass(frozen=True)
class ChartData:
    labs: list[ObservationOut]
    doses: list[MedicineOut]  # azathioprine rows


# ---------------------------------------------------------------- patient page: summary strip, results grid, panels
@dataclass(frozen=True)
class ResultCell:
    """One result in the grid: the value in the test's display unit, flagged by the engine."""

    id: int
    value: str  # the number in the display unit ("0.9")
    reported: str | None  # as it arrived ("9 g/dL"), only when that differs from value and unit
    flag: str | None  # critical | warning: the engine's lab checks as of the result's date; else None
    why: tuple[str, ...]  # the finding codes that flag it (lab-neutrophils-low)
    review_state: str  # pending | auto | flagged


@dataclass(frozen=True)
class ResultRow:
    analyte: str
    label: str  # knowledge display name ("Neutrophils")
    unit: str  # knowledge display unit ("x10^9/L")
    group: str  # the test group (FBC, LFT, renal, vitals, ...)
    cells: tuple[tuple[ResultCell, ...], ...]  # one entry per grid date (empty: not measured that day)


@dataclass(frozen=True)
class ResultGroup:
    key: str  # FBC, LFT, renal, ...
    label: str  # knowledge panel label ("full blood count"), else the key
    rows: tuple[ResultRow, ...]


@dataclass(frozen=True)
class ResultsGrid:
    """Tests x dates, the latest date on the left."""

    dates: tuple[dt.date, ...]  # newest first
    groups: tuple[ResultGroup, ...]
    older_dates: int  # result dates left out (older than the last column)


@dataclass(frozen=True)
class LatestResult:
    analyte: str
    label: str
    value: str  # in the display unit
    unit: str
    date: dt.date
    flag: str | None  # critical | warning (as in the grid)
    reported: str | None  # as it arrived, when different


@dataclass(frozen=True)
class LatestGroup:
    key: str  # FBC, LFT, renal
    label: str
    date: dt.date | None  # the newest result of the group
    results: tuple[LatestResult, ...]


@dataclass(frozen=True)
class SummaryStrip:
    """The top of the clinician's patient page (treatment state and TPMT/NUDT15 come from the assessment)."""

    groups: tuple[LatestGroup, ...]  # the monitored test groups, in the knowledge's order
    weight: LatestResult | None
    allergies: tuple[str, ...]  # as recorded
    pregnancy: tuple[tuple[str, dt.date], ...]  # (pregnant | breastfeeding | planning-pregnancy, recorded on)


class PanelOut(Out):
    """A panel entered on one date in one save (one result per test filled in)."""

    group: str = Field(description="the test group of the panel: FBC, LFT or renal")
    label: str = Field(description="the panel's name, e.g. full blood count")
    date: dt.date
    observations: list[ObservationOut]


@dataclass(frozen=True)
class WorklistQuery:
    severity: str | None = None  # critical | warning
    category: str | None = None
    indication: str | None = None
    team: str | None = None  # specialist | gp
    search: str | None = None
    limit: int = 200
    offset: int = 0
    needs: str | None = None  # critical | warning | overdue | awaiting (the counts at the top)
    mine: bool = False  # only the patients the asking user owns
    sort: str = "urgency"  # urgency | due | name | owner


# ---------------------------------------------------------------- reminders (issue 8 item 7)
@dataclass(frozen=True)
class ReminderPrefs:
    """A patient's reminder choice, and the channels the clinic offers (name, label)."""

    channel: str  # a channel's name, or "none" (also when the patient has not chosen)
    email: str
    chosen: bool  # False: never chosen (no reminders)
    options: list[tuple[str, str]]
    days_before: int


@dataclass(frozen=True)
class ReminderSentRow:
    sent_at: dt.datetime  # the latest attempt
    kind: str  # due | overdue
    group: str
    due_date: dt.date
    channel: str
    status: str  # pending | sent | failed
    error_type: str | None
    attempts: int


@dataclass(frozen=True)
class PatientReminders:
    """What staff see on the patient page: the patient's choice and the reminders sent."""

    channel: str  # as ReminderPrefs.channel
    chosen: bool
    rows: list[ReminderSentRow]


@dataclass(frozen=True)
class ReminderRun:
    """The outcome of one `azaguard reminders` run (counts only: no patient data)."""

    as_of: dt.date
    dry_run: bool
    patients: int  # patients with something to remind of (dry run: who would get a reminder)
    due: int  # items (test group x due date) falling due
    overdue: int
    sent: int  # reminders (messages) sent
    failed: int
    skipped: int  # claimed by another run meanwhile, or no channel to send it


# ---------------------------------------------------------------- the audit page (admins)
@dataclass(frozen=True)
class AuditQuery:
    """The audit page's and CSV export's filters (each optional; dates inclusive, server local time)."""

    user: str | None = None  # username, exact
    patient: str | None = None  # the patient's clinic identifier, exact
    action: str | None = None  # read, write, denied, login, ...
    since: dt.date | None = None
    until: dt.date | None = None
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True)
class AuditRow:
    """One audit event as people read it: the patient's clinic identifier, never a database id."""

    at: dt.datetime
    user: str
    action: str
    resource: str
    patient: str  # the clinic identifier ("" when no patient; "(deleted)" when the record is gone)
    channel: str
    detail: str


@dataclass(frozen=True)
class AuditPage:
    total: int  # events matching the filters
    rows: list[AuditRow]  # newest first, `limit` of them from `offset`


# ---------------------------------------------------------------- letters and documents (issue 8 item 5)
@dataclass(frozen=True)
class ClinicContact:
    """Whom a letter says to call: the clinic's name, telephone and out-of-hours advice (settings)."""

    name: str
    phone: str
    out_of_hours: str


class DocumentOut(Out):
    """A stored document (a shared-care letter) without its bytes: GET /api/v1/documents/{id} gives them."""

    id: int
    patient_id: int
    kind: str = Field(description="gp-letter or specialist-letter")
    recipient: str = Field(description="gp or specialist")
    title: str
    created_at: LocalTime
    author: str = Field(description="username of the user who made it")
    knowledge_version: str = Field(description="the knowledge version of the assessment it was made from")
    media_type: str = Field(description="application/pdf")
    size: int = Field(description="bytes")
    sha256: str = Field(description="SHA-256 of the bytes (hex)")


class DocumentList(Out):
    documents: list[DocumentOut] = Field(description="newest first")


class LetterBatchOut(Out):
    month: str = Field(description="YYYY-MM: the month whose moves to GP care were looked at")
    transferred: int = Field(description="patients moved to GP care that month and still monitored by their GP")
    made: list[DocumentOut] = Field(description="the GP letters written now, one per patient")
    already_written: list[int] = Field(description="ids of patients who already had a GP letter since their move")


@dataclass(frozen=True)
class DocumentFile:
    """A document's bytes, for a download."""

    id: int
    patient_id: int
    filename: str
    media_type: str
    content: bytes


@dataclass(frozen=True)
class GpTransfer:
    """A patient moved to GP care this month and still monitored by their GP (the /letters page)."""

    patient: PatientOut
    moved_at: dt.datetime  # the latest move this month
    moved_by: str  # username
    letter: DocumentOut | None  # the newest GP letter written since the move, if any


# ---------------------------------------------------------------- CDS Hooks 2.0 (azaguard.api.cds)
class CdsServiceOut(BaseModel):
    hook: str
    id: str
    title: str
    description: str
    prefetch: dict[str, str]
    usageRequirements: str = ""  # the CDS Hooks field names are camelCase


class CdsDiscoveryOut(BaseModel):
    services: list[CdsServiceOut]


class CdsCardSource(BaseModel):
    model_config = ConfigDict(extra="allow")
    label: str
    url: str
    topic: dict[str, str] | None = None  # the finding code (system urn:azaguard:finding)


class CdsCardLink(BaseModel):
    label: str
    url: str
    type: str  # "smart": our SMART launch URL
    appContext: str | None = None


class CdsSuggestion(BaseModel):
    label: str
    uuid: str
    isRecommended: bool | None = None
    actions: list[dict[str, Any]]  # create / update (with a FHIR resource) / delete (resourceId)


class CdsCard(BaseModel):
    """A CDS Hooks 2.0 card: one finding (or a notice), what to do and why, with its source."""

    uuid: str
    summary: str = Field(max_length=140)
    indicator: str  # info | warning | critical
    detail: str  # markdown
    source: CdsCardSource
    links: list[CdsCardLink] = []
    suggestions: list[CdsSuggestion] | None = None
    selectionBehavior: str | None = None
    overrideReasons: list[dict[str, str]] | None = None


class CdsCardsOut(BaseModel):
    cards: list[CdsCard]


class CdsFeedbackOut(BaseModel):
    stored: int  # outcomes stored now (a resent outcome is not stored twice)


class CdsErrorOut(BaseModel):
    error: str
    reason: str


class CdsAlertRow(BaseModel):
    """A card azaguard showed in the EHR for this patient, and what the clinician did with it."""

    issued_at: dt.datetime
    service: str
    indicator: str
    code: str
    summary: str
    outcome: str  # accepted | overridden | "" (no feedback received)
    reason: str  # the override reason (display, else code)
    comment: str


class CdsAlerts(BaseModel):
    rows: list[CdsAlertRow]
    shown: int
    accepted: int
    overridden: int


class CdsReportRow(BaseModel):
    """One finding code's cards in the EHR over the period: how often shown, accepted, overridden."""

    code: str
    indicator: str  # the most severe indicator the code was shown with
    shown: int
    patients: int
    accepted: int
    overridden: int
    reasons: dict[str, int]  # override reason (display, else code) -> times given


class CdsReport(BaseModel):
    since: dt.date
    until: dt.date
    rows: list[CdsReportRow]
    shown: int
    accepted: int
    overridden: int
