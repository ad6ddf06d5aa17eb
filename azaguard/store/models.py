"""Tables. One schema for SQLite and PostgreSQL; migrations in store/migrations mirror it.

Clinical rows keep what the readers normalised (analyte, canonical value and unit, date) and
what arrived (original value, unit, text), plus a `source_key` that makes imports idempotent.
A corrected result never overwrites: the old row is kept with `current = False`.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class Patient(Base):
    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    identifier: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    birth_date: Mapped[date | None] = mapped_column(Date)
    sex: Mapped[str | None] = mapped_column(String(16))
    monitoring_team: Mapped[str] = mapped_column(String(16), default="specialist")  # specialist | gp
    phone: Mapped[str] = mapped_column(String(40), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    # The team member who claimed the patient or was assigned it (users.id; null: nobody). No foreign
    # key: adding one means rebuilding this table on SQLite (migration 0004 says why); users are
    # deactivated, never deleted, and the worklist reads the owner through an outer join.
    owner_id: Mapped[int | None] = mapped_column(Integer, index=True)


class Observation(Base):
    """Labs, weight, genotype/phenotype, TPMT activity, status (pregnancy...), screening and symptoms."""

    __tablename__ = "observations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(
        String(24)
    )  # lab | genotype | phenotype | tpmt-activity | status | screening | rejected
    analyte: Mapped[str | None] = mapped_column(String(40))  # analyte, gene, status kind, screening key
    code: Mapped[str] = mapped_column(String(64), default="")
    value: Mapped[float | None] = mapped_column(Float)
    unit: Mapped[str | None] = mapped_column(String(40))
    value_text: Mapped[str | None] = mapped_column(String(200))
    original_value: Mapped[str | None] = mapped_column(String(64))
    original_unit: Mapped[str | None] = mapped_column(String(64))
    ref_low: Mapped[float | None] = mapped_column(Float)
    ref_high: Mapped[float | None] = mapped_column(Float)
    below_detection: Mapped[bool] = mapped_column(Boolean, default=False)
    abnormal_flag: Mapped[str | None] = mapped_column(String(8))
    effective: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16), default="final")
    source_key: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer, default=1)
    current: Mapped[bool] = mapped_column(Boolean, default=True)
    content_hash: Mapped[str] = mapped_column(String(40), default="")
    review_state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | auto | flagged
    received_at: Mapped[datetime] = mapped_column(DateTime)
    __table_args__ = (
        UniqueConstraint("source_key", "version", name="uq_observation_source_version"),
        Index("ix_observations_patient_effective", "patient_id", "effective"),
        # source_key lookups use the unique (source_key, version) index: a second index only slows inserts
    )


class Medication(Base):
    """Medicine statements and orders, azathioprine included: its rows are the dose history."""

    __tablename__ = "medications"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), index=True)
    drug: Mapped[str | None] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(200))
    rxnorm: Mapped[str | None] = mapped_column(String(20))
    kind: Mapped[str] = mapped_column(String(16), default="statement")  # statement | request
    # active | on-hold | draft | intended | stopped | unknown. An azathioprine hold is its own row
    # (status on-hold, from the hold date); a hold that ended keeps status on-hold and gets an end.
    status: Mapped[str] = mapped_column(String(16))
    start: Mapped[date | None] = mapped_column(Date)
    end: Mapped[date | None] = mapped_column(Date)
    daily_dose_mg: Mapped[float | None] = mapped_column(Float)
    source_key: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    reason: Mapped[str | None] = mapped_column(Text)  # why it is on hold or stopped
    status_date: Mapped[date | None] = mapped_column(Date)  # when the hold or stop took effect


class Genotype(Base):
    __tablename__ = "genotypes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), index=True)
    gene: Mapped[str] = mapped_column(String(16))
    diplotype: Mapped[str | None] = mapped_column(String(40))
    phenotype: Mapped[str | None] = mapped_column(String(80))
    effective: Mapped[date | None] = mapped_column(Date)
    source_key: Mapped[str] = mapped_column(String(200), unique=True)


class Condition(Base):
    __tablename__ = "conditions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), index=True)
    key: Mapped[str | None] = mapped_column(String(40))
    text: Mapped[str] = mapped_column(String(200))
    code: Mapped[str | None] = mapped_column(String(40))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    onset: Mapped[date | None] = mapped_column(Date)
    source_key: Mapped[str] = mapped_column(String(200), unique=True)


class Allergy(Base):
    __tablename__ = "allergies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), index=True)
    drug: Mapped[str | None] = mapped_column(String(40))
    text: Mapped[str] = mapped_column(String(200))
    source_key: Mapped[str] = mapped_column(String(200), unique=True)


class Immunization(Base):
    """Given vaccines and vaccine orders (status ordered = about to be given)."""

    __tablename__ = "immunizations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), index=True)
    vaccine: Mapped[str | None] = mapped_column(String(40))
    live: Mapped[bool] = mapped_column(Boolean, default=False)
    # may be live (unspecified formulation): never read as inactivated
    live_unknown: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    name: Mapped[str] = mapped_column(String(200))
    when: Mapped[date | None] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16))  # given | ordered
    source_key: Mapped[str] = mapped_column(String(200), unique=True)


class Symptom(Base):
    __tablename__ = "symptoms"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), index=True)
    key: Mapped[str | None] = mapped_column(String(40))
    text: Mapped[str] = mapped_column(String(200))
    when: Mapped[date] = mapped_column(Date)
    reported_by: Mapped[str] = mapped_column(String(16), default="clinician")  # patient | clinician | import
    source_key: Mapped[str] = mapped_column(String(200), unique=True)


class AssessmentRow(Base):
    """The latest assessment per patient, kept so the worklist never re-runs the engine."""

    __tablename__ = "assessments"
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), primary_key=True)
    as_of: Mapped[date] = mapped_column(Date)
    knowledge_version: Mapped[str] = mapped_column(String(200))
    phase: Mapped[str] = mapped_column(String(16))
    worst_open: Mapped[int] = mapped_column(Integer, default=3)  # 0 critical, 1 warning, 2 info, 3 none
    open_count: Mapped[int] = mapped_column(Integer, default=0)
    next_due: Mapped[date | None] = mapped_column(Date, index=True)
    indication: Mapped[str | None] = mapped_column(String(40))
    categories: Mapped[str] = mapped_column(String(400), default="")  # space-separated categories of open findings
    # Space-padded test groups with an open (or overdue) follow-up, e.g. " FBC LFT ": the engine
    # closes a follow-up only when a result answers it, so a review does not clear this.
    awaiting: Mapped[str] = mapped_column(String(200), default="", server_default="")
    # The assessment's treatment state: not-started | active | on-hold | stopped
    treatment: Mapped[str] = mapped_column(String(16), default="", server_default="")
    result: Mapped[dict[str, Any]] = mapped_column(JSONType)
    computed_at: Mapped[datetime] = mapped_column(DateTime)
    # Bumped by every refresh and review: a refresh computed outside the write lock is written only
    # if nobody changed the row meanwhile (otherwise it is computed again under the lock).
    revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # SHA-1 of `result`: a refresh that changes nothing writes nothing (and takes no write lock),
    # so computed_at is when the stored assessment last changed.
    result_digest: Mapped[str] = mapped_column(String(40), default="", server_default="")
    # The most urgent open finding (the engine's first open one: worst severity, then newest), so the
    # worklist says what is wrong in one query: its code ("" when nothing is open; null on rows written
    # before it was stored, so the next refresh writes them), its words without the "(3 days ago)" that
    # is true only on the day it was assessed, the newest result it rests on with its unit, its date.
    urgent_code: Mapped[str | None] = mapped_column(String(80))
    urgent_message: Mapped[str] = mapped_column(Text, default="", server_default="")
    urgent_value: Mapped[str] = mapped_column(String(120), default="", server_default="")
    urgent_date: Mapped[date | None] = mapped_column(Date)
    __table_args__ = (Index("ix_assessments_worklist", "worst_open", "next_due"),)


class FindingRow(Base):
    """A finding instance on the worklist. The fingerprint ties it to the evidence that raised it,
    so a review closes it until different evidence (a later result, a new due date) appears."""

    __tablename__ = "findings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    code: Mapped[str] = mapped_column(String(80))
    category: Mapped[str] = mapped_column(String(24))
    severity: Mapped[str] = mapped_column(String(10))
    message: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # open | reviewed | resolved | info
    first_seen: Mapped[datetime] = mapped_column(DateTime)
    last_seen: Mapped[datetime] = mapped_column(DateTime)
    __table_args__ = (
        UniqueConstraint("patient_id", "fingerprint", name="uq_finding_fingerprint"),
        Index("ix_findings_patient_state", "patient_id", "state"),
    )


class Review(Base):
    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    finding_id: Mapped[int] = mapped_column(ForeignKey("findings.id", ondelete="CASCADE"), index=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    outcome: Mapped[str] = mapped_column(String(40))
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime)


class FollowUpDismissal(Base):
    """A follow-up (repeat test) a clinician dropped, with the reason; the engine then shows it as
    dismissed instead of open. One per (patient, follow-up key)."""

    __tablename__ = "follow_up_dismissals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    __table_args__ = (UniqueConstraint("patient_id", "key", name="uq_follow_up_dismissal"),)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))  # clinician | patient | admin
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id", ondelete="SET NULL"))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(80), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime)


class WebSession(Base):
    __tablename__ = "web_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)


class LoginThrottle(Base):
    """Failed-login counters (auth.py): one row per username ("u:"), client address ("a:") and
    username at an address ("ua:"), updated atomically before a password is checked; "ok:" rows
    remember where a username last logged in successfully (its trusted addresses)."""

    __tablename__ = "login_throttle"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_start: Mapped[datetime | None] = mapped_column(DateTime)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime)
    lockouts: Mapped[int] = mapped_column(Integer, default=0)  # lock-outs in a row: the back-off doubles
    last_lockout: Mapped[datetime | None] = mapped_column(DateTime)
    last_success: Mapped[datetime | None] = mapped_column(DateTime)


class AuditEvent(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, index=True)
    user_id: Mapped[int | None] = mapped_column(Integer)
    username: Mapped[str] = mapped_column(String(80), default="")
    action: Mapped[str] = mapped_column(String(24))  # read | write | login | login-failed | import | review | denied
    resource: Mapped[str] = mapped_column(String(80))
    patient_id: Mapped[int | None] = mapped_column(Integer, index=True)
    detail: Mapped[str] = mapped_column(String(400), default="")
    channel: Mapped[str] = mapped_column(String(8), default="web")  # web | api | cli


class ImportBatch(Base):
    __tablename__ = "import_batches"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    source: Mapped[str] = mapped_column(String(300))
    format: Mapped[str] = mapped_column(String(16))
    counts: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    username: Mapped[str] = mapped_column(String(80), default="")
    # Chunked imports (ingest/pipeline.apply_in_chunks) commit every chunk with its position, so an
    # interrupted run is resumed by running the same input again: `digest` identifies the input,
    # `items_done` is how far it got, `state` is running | done (batches before revision 0003: done).
    state: Mapped[str] = mapped_column(String(16), default="done", server_default="done")
    digest: Mapped[str | None] = mapped_column(String(64), index=True)
    items_done: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    items_total: Mapped[int | None] = mapped_column(Integer)


class QuarantineItem(Base):
    """A record an import could not accept: kept whole, with its reason, until fixed and re-processed."""

    __tablename__ = "quarantine"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("import_batches.id", ondelete="SET NULL"))
    received_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    format: Mapped[str] = mapped_column(String(16))
    record_ref: Mapped[str] = mapped_column(String(200))
    patient_identifier: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    original: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="open")  # open | reprocessed | discarded
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime)


class Document(Base):
    """A document made for a patient, kept as it was sent: a letter to the GP or the specialist team
    (PDF), with when, by whom and from which knowledge version it was made, and the SHA-256 of its bytes."""

    __tablename__ = "documents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(24))  # gp-letter | specialist-letter
    recipient: Mapped[str] = mapped_column(String(16))  # gp | specialist
    title: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    author: Mapped[str] = mapped_column(String(80))  # the username, kept if the user row goes
    knowledge_version: Mapped[str] = mapped_column(String(200))
    media_type: Mapped[str] = mapped_column(String(40), default="application/pdf")
    content: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    __table_args__ = (Index("ix_documents_patient_created", "patient_id", "created_at"),)


class ReminderPref(Base):
    """How a patient wants blood-test reminders: a configured channel (email, or one added by
    configuration) or none. Chosen by the patient on their page; no row: no reminders."""

    __tablename__ = "reminder_prefs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), unique=True)
    channel: Mapped[str] = mapped_column(String(16), default="none")  # email | none | a configured channel
    email: Mapped[str] = mapped_column(String(254), default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class ReminderSent(Base):
    """A reminder for one test group falling due (or overdue) on one date: sent once. `status` is
    pending while it is being sent (claimed), then sent or failed (a failed one is tried again by
    later runs, `attempts` times at most); `error_type` is the error's class name, never its text."""

    __tablename__ = "reminders_sent"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(8))  # due | overdue
    test_group: Mapped[str] = mapped_column(String(16))  # FBC | LFT | renal
    due_date: Mapped[date] = mapped_column(Date)
    channel: Mapped[str] = mapped_column(String(16))
    sent_at: Mapped[datetime] = mapped_column(DateTime)  # the latest attempt
    status: Mapped[str] = mapped_column(String(8))  # pending | sent | failed
    error_type: Mapped[str | None] = mapped_column(String(80))
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    __table_args__ = (UniqueConstraint("patient_id", "test_group", "due_date", "kind", name="uq_reminder_once"),)


class CdsClient(Base):
    """A CDS client (an EHR) allowed to call the CDS Hooks services: its issuer and the keys its JWTs
    are checked against - a pinned JWKS, or a JWKS URL fetched by azaguard - plus the `jku` URLs it
    may name in a JWT header (honoured only when listed here). Registered by `azaguard cds-client add`."""

    __tablename__ = "cds_clients"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    iss: Mapped[str] = mapped_column(String(400), unique=True)
    jwks: Mapped[Any | None] = mapped_column(JSONType)  # a pinned JWK Set, or null when jwks_url is used
    jwks_url: Mapped[str | None] = mapped_column(String(400))
    jku_allow: Mapped[Any] = mapped_column(JSONType, default=list)  # list of allowed jku URLs
    fhir_servers: Mapped[Any] = mapped_column(JSONType, default=list)  # fhirServer URLs azaguard may call
    created_at: Mapped[datetime] = mapped_column(DateTime)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class CdsJti(Base):
    """JWT ids seen, kept until the token expires: a replayed token is refused by the primary key,
    not by a check-then-write."""

    __tablename__ = "cds_jti"
    jti: Mapped[str] = mapped_column(String(200), primary_key=True)  # "<iss> <jti>", hashed when long
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class CdsCard(Base):
    """A card azaguard returned, so feedback on its uuid can be tied to a patient and a finding."""

    __tablename__ = "cds_cards"
    uuid: Mapped[str] = mapped_column(String(64), primary_key=True)
    service_id: Mapped[str] = mapped_column(String(40))
    patient_id: Mapped[int | None] = mapped_column(Integer, index=True)
    code: Mapped[str] = mapped_column(String(80), default="")  # the finding code (or a data-* reason)
    indicator: Mapped[str] = mapped_column(String(12))
    summary: Mapped[str] = mapped_column(String(200))
    client_iss: Mapped[str] = mapped_column(String(400))
    issued_at: Mapped[datetime] = mapped_column(DateTime)


class CdsFeedback(Base):
    """What the clinician did with a card (CDS Hooks feedback): accepted or overridden, and why."""

    __tablename__ = "cds_feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    card_uuid: Mapped[str] = mapped_column(String(64), index=True)
    service_id: Mapped[str] = mapped_column(String(40))
    patient_id: Mapped[int | None] = mapped_column(Integer, index=True)
    outcome: Mapped[str] = mapped_column(String(12))  # accepted | overridden
    outcome_at: Mapped[datetime] = mapped_column(DateTime)
    reason_code: Mapped[str] = mapped_column(String(80), default="")
    reason_system: Mapped[str] = mapped_column(String(400), default="")
    reason_display: Mapped[str] = mapped_column(String(400), default="")
    comment: Mapped[str] = mapped_column(String(2000), default="")
    accepted_suggestions: Mapped[Any] = mapped_column(JSONType, default=list)
    client_iss: Mapped[str] = mapped_column(String(400))
    received_at: Mapped[datetime] = mapped_column(DateTime)
    __table_args__ = (UniqueConstraint("card_uuid", "outcome_at", "outcome", name="uq_cds_feedback_once"),)


class SmartIdentity(Base):
    """An EHR user (`fhirUser` of a SMART launch, per issuer) mapped to an azaguard user with a role."""

    __tablename__ = "smart_identities"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    iss: Mapped[str] = mapped_column(String(400))
    fhir_user: Mapped[str] = mapped_column(String(400))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    __table_args__ = (UniqueConstraint("iss", "fhir_user", name="uq_smart_identity"),)


class SmartLaunch(Base):
    """A SMART launch in progress: the OAuth `state`, the PKCE verifier, nonce and endpoints, kept on
    the server between the redirect to the EHR and its return, then deleted."""

    __tablename__ = "smart_launches"
    state: Mapped[str] = mapped_column(String(100), primary_key=True)
    iss: Mapped[str] = mapped_column(String(400))
    data: Mapped[Any] = mapped_column(JSONType, default=dict)  # endpoints, code_verifier, nonce, launch, client
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)


def core(model: type[Base]) -> Table:
    """The Core table of a model, for executemany inserts without ORM bookkeeping."""
    return Base.metadata.tables[model.__tablename__]
