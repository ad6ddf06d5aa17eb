"""The review workflow: stored assessments, finding instances, the worklist and reviews.

Exception-only review, as clinics value in DAWN: after every change to a patient's data the
engine re-assesses the record; results that raise nothing are reviewed automatically; each
warning or critical finding appears once on the worklist until a clinician records what was
done. A finding is tied to the evidence that raised it (its fingerprint), so a review closes it
until different evidence - a later low result, a new due date - re-opens it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    CursorResult,
    Date,
    Integer,
    Select,
    String,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, defer
from sqlalchemy.orm.attributes import set_committed_value

from azaguard import domain as d
from azaguard.engine import assess
from azaguard.engine.findings import age_text, fmt_num
from azaguard.knowledge import Knowledge
from azaguard.render.json import assessment_to_dict
from azaguard.store import models as m
from azaguard.store.db import begin_write, is_writing
from azaguard.store.records import load_records, now

REVIEW_OUTCOMES = {
    "repeat-test-booked": "Repeat test booked",
    "dose-reduced": "Dose reduced",
    "withheld": "Azathioprine withheld",
    "discussed-with-specialist": "Discussed with specialist",
    "patient-contacted": "Patient contacted",
    "not-relevant": "Not relevant (reason required)",
}
_EVIDENCE_KEYS = ("type", "id", "date", "due", "last", "analyte", "name", "gene", "detail", "text", "status", "start")


def fingerprint(f: d.Finding) -> str:
    """Code + the identity of the evidence: same evidence -> same worklist item."""
    ev = [{k: e.get(k) for k in _EVIDENCE_KEYS if k in e} for e in f.evidence]
    raw = f.code + "|" + json.dumps(ev, sort_keys=True, default=str)
    return hashlib.sha1(raw.encode()).hexdigest()


def needs_human(f: d.Finding) -> bool:
    return f.severity in ("critical", "warning")


def refresh_patient(s: Session, kb: Knowledge, patient_id: int, as_of: date | None = None) -> d.Assessment:
    """Re-assess one patient and bring the stored assessment, findings and review states up to date."""
    return refresh_many(s, kb, [patient_id], as_of)[patient_id]


def refresh_many(
    s: Session, kb: Knowledge, patient_ids: list[int], as_of: date | None = None
) -> dict[int, d.Assessment]:
    """Re-assess many patients with batched reads and writes (imports, daily refresh, demo build)."""
    as_of = as_of or date.today()
    out: dict[int, d.Assessment] = {}
    for i in range(0, len(patient_ids), 500):
        out.update(_refresh_chunk(s, kb, patient_ids[i : i + 500], as_of))
    return out


@dataclass
class _Plan:
    """What a refresh of one patient will write, decided before the write lock is taken."""

    patient_id: int
    assessment: d.Assessment
    revision: int | None  # the stored assessment's revision when it was read (None: no row yet)
    stored: m.AssessmentRow | None
    values: dict[str, Any]  # the assessment row's new values (without computed_at and revision)
    new_findings: list[dict[str, Any]]  # without first_seen / last_seen
    updates: list[tuple[m.FindingRow, dict[str, Any]]]  # finding rows and their changed values
    auto: list[int]  # results nothing flagged: reviewed automatically
    flagged: list[int]  # results a finding that needs a clinician rests on

    @property
    def changed(self) -> bool:
        if self.stored is None or self.new_findings or self.updates or self.auto or self.flagged:
            return True
        return any(getattr(self.stored, k) != v for k, v in self.values.items() if k != "result")


def _digest(result: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(result, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


# The reads of a refresh (after every write), built once: building a select and working out its
# cache key costs SQLAlchemy more CPU than SQLite spends running it. Rows read again after the lock
# must not keep stale values (populate_existing).
_IDS: BindParameter[list[int]] = bindparam("ids", expanding=True)
_STORED = (
    select(m.AssessmentRow)
    .where(m.AssessmentRow.patient_id.in_(_IDS))
    .options(defer(m.AssessmentRow.result))  # compared by its digest: not parsed here
    .execution_options(populate_existing=True)
)
_PENDING = select(m.Observation.patient_id, m.Observation.id).where(
    m.Observation.patient_id.in_(_IDS), m.Observation.review_state == "pending", m.Observation.current.is_(True)
)
_FINDINGS = select(m.FindingRow).where(m.FindingRow.patient_id.in_(_IDS)).execution_options(populate_existing=True)


def _plans(s: Session, kb: Knowledge, ids: list[int], as_of: date) -> dict[int, _Plan]:
    """Read, assess and decide (the slow part), changing nothing. The order of the reads matters
    when they are not one snapshot (SQLite outside a write transaction, PostgreSQL READ COMMITTED):
    the stored assessments (their revisions) first, so that a review or refresh committed after any
    later read moves the revision and is noticed under the lock; then the results waiting for
    review, before the records, so every result marked reviewed below was part of the assessment."""
    stored = {row.patient_id: row for row in s.scalars(_STORED, {"ids": ids})}
    pending: dict[int, list[int]] = {pid: [] for pid in ids}
    for pid, oid in s.execute(_PENDING, {"ids": ids}):
        pending[pid].append(oid)
    findings: dict[int, dict[str, m.FindingRow]] = {pid: {} for pid in ids}
    for row in s.scalars(_FINDINGS, {"ids": ids}):
        findings[row.patient_id][row.fingerprint] = row
    records = load_records(s, ids)
    missing = set(ids) - set(records)
    if missing:
        raise KeyError(sorted(missing)[0])
    return {pid: _plan(kb, pid, records[pid], as_of, findings[pid], stored.get(pid), pending[pid]) for pid in ids}


def _plan(
    kb: Knowledge,
    pid: int,
    record: d.PatientRecord,
    as_of: date,
    rows: dict[str, m.FindingRow],
    stored: m.AssessmentRow | None,
    pending: list[int],
) -> _Plan:
    a = assess(record, kb, as_of)
    seen: set[str] = set()
    flagged_ids: set[str] = set()
    open_sev: list[tuple[int, str]] = []
    urgent: d.Finding | None = None  # the first open finding in the engine's order: the most urgent
    new_findings: list[dict[str, Any]] = []
    updates: list[tuple[m.FindingRow, dict[str, Any]]] = []
    for f in a.findings:
        fp = fingerprint(f)
        if fp in seen:
            continue
        seen.add(fp)
        human = needs_human(f)
        if human:
            flagged_ids.update(str(e["id"]) for e in f.evidence if e.get("type") == "lab" and "id" in e)
        found = rows.get(fp)
        if found is None:
            state = "open" if human else "info"
            new_findings.append(
                {
                    "patient_id": pid, "code": f.code, "category": f.category, "severity": f.severity,
                    "message": f.message, "action": f.action, "fingerprint": fp, "state": state,
                }
            )  # fmt: skip
        else:
            state = ("open" if human else "info") if found.state == "resolved" else found.state
            change = {
                k: v
                for k, v in (("message", f.message), ("action", f.action), ("severity", f.severity), ("state", state))
                if getattr(found, k) != v
            }
            if change:
                updates.append((found, change))
        if state == "open":
            open_sev.append((d.SEVERITY_RANK[f.severity], f.category))
            urgent = urgent or f
    for fp, row in rows.items():
        if fp not in seen and row.state != "resolved":
            updates.append((row, {"state": "resolved"}))
    auto = [oid for oid in pending if str(oid) not in flagged_ids]
    flagged = [oid for oid in pending if str(oid) in flagged_ids]
    dues = [g.next_due for g in a.monitoring.groups if g.next_due is not None]
    cats = sorted({c for _, c in open_sev})
    waiting = awaiting_groups(a)
    result = assessment_to_dict(a)
    values = {
        "as_of": as_of,
        "knowledge_version": a.knowledge_version,
        "phase": a.monitoring.phase,
        "worst_open": min((r for r, _ in open_sev), default=3),
        "open_count": len(open_sev),
        "next_due": min(dues) if dues else None,
        "indication": next((c.key for c in record.conditions if c.key in kb.indications), None),
        "categories": f" {' '.join(cats)} " if cats else "",
        "awaiting": f" {' '.join(waiting)} " if waiting else "",
        "treatment": a.treatment.state,
        "result_digest": _digest(result),
        **(NO_URGENT if urgent is None else _urgent(urgent.code, urgent.message, urgent.evidence, urgent.date)),
    }
    plan = _Plan(
        pid, a, None if stored is None else stored.revision, stored, values, new_findings, updates, auto, flagged
    )
    plan.values["result"] = result  # compared through its digest (see `changed`), written with the rest
    return plan


# "(63 days ago)", "(latest 3 days ago)": true on the day of the assessment only; the worklist shows
# the age on the day it is read, next to the words.
_AGE = re.compile(r" \((?:latest )?(?:today|1 day ago|\d+ days ago)\)")
NO_URGENT: dict[str, Any] = {"urgent_code": "", "urgent_message": "", "urgent_value": "", "urgent_date": None}


def without_age(message: str) -> str:
    """A finding's message without its "(N days ago)": for what is stored (the worklist row, the
    reason of a hold recorded by a review), where the age would soon be wrong."""
    return _AGE.sub("", message)


def _urgent(code: str, message: str, evidence: Sequence[dict[str, Any]], day: date | None) -> dict[str, Any]:
    """The assessment row's columns for its most urgent open finding: code, words, the newest result
    it rests on ("0.9 10*9/L", "" when it rests on none) and the finding's date."""
    labs = [e for e in evidence if e.get("type") == "lab" and isinstance(e.get("value"), int | float)]
    newest = max(labs, key=lambda e: str(e.get("date") or ""), default=None)
    value = "" if newest is None else f"{fmt_num(newest['value'])} {newest.get('unit') or ''}".strip()
    return {"urgent_code": code, "urgent_message": without_age(message), "urgent_value": value, "urgent_date": day}


def lock_patients(s: Session, ids: list[int]) -> None:
    """Serialise writers of these patients' assessments and findings: SQLite takes the write lock
    (BEGIN IMMEDIATE), PostgreSQL locks the patient rows (in id order, so never a deadlock; FOR NO
    KEY UPDATE, so results can still be inserted for them meanwhile)."""
    if s.get_bind().dialect.name == "sqlite":
        begin_write(s)
        return
    s.execute(select(m.Patient.id).where(m.Patient.id.in_(ids)).order_by(m.Patient.id).with_for_update(key_share=True))


def _refresh_chunk(s: Session, kb: Knowledge, ids: list[int], as_of: date) -> dict[int, d.Assessment]:
    """Assess and decide without the write lock; then, only for patients whose assessment, findings
    or review states change, lock and write. If another refresh or a review changed a patient's
    stored assessment in between (its revision moved), that patient is assessed again under the
    lock, so a result is never overwritten by an assessment that did not see it. A refresh that
    changes nothing writes nothing (computed_at and last_seen say when a row last changed)."""
    locked = is_writing(s)  # SQLite: this unit of work already writes, its reads are consistent
    plans = _plans(s, kb, ids, as_of)
    todo = [pid for pid in ids if plans[pid].changed]
    if todo and not locked:
        lock_patients(s, todo)
        now_rev = dict(
            s.execute(
                select(m.AssessmentRow.patient_id, m.AssessmentRow.revision).where(m.AssessmentRow.patient_id.in_(todo))
            ).all()
        )
        moved = [pid for pid in todo if now_rev.get(pid) != plans[pid].revision]
        if moved:
            plans.update(_plans(s, kb, moved, as_of))
            todo = [pid for pid in todo if plans[pid].changed]
    if todo:
        _write(s, [plans[pid] for pid in todo])
    return {pid: plans[pid].assessment for pid in ids}


def _write(s: Session, plans: list[_Plan]) -> None:
    stamp = now()
    new_findings: list[dict[str, Any]] = []
    new_assessments: list[dict[str, Any]] = []
    auto: list[int] = []
    flagged: list[int] = []
    for plan in plans:
        for row, change in plan.updates:
            for k, v in change.items():
                setattr(row, k, v)
            row.last_seen = stamp
        new_findings += [{**f, "first_seen": stamp, "last_seen": stamp} for f in plan.new_findings]
        auto += plan.auto
        flagged += plan.flagged
        values = {**plan.values, "computed_at": stamp, "revision": (plan.revision or 0) + 1}
        if plan.stored is not None:
            for k, v in values.items():
                setattr(plan.stored, k, v)
        else:
            new_assessments.append({"patient_id": plan.patient_id, **values})
    s.flush()
    if new_findings:
        s.execute(insert(m.core(m.FindingRow)), new_findings)
    if new_assessments:
        s.execute(insert(m.core(m.AssessmentRow)), new_assessments)
    for chunk_ids, state in ((auto, "auto"), (flagged, "flagged")):
        for j in range(0, len(chunk_ids), 500):
            s.execute(
                update(m.Observation).where(m.Observation.id.in_(chunk_ids[j : j + 500])).values(review_state=state)
            )


def awaiting_groups(a: d.Assessment) -> list[str]:
    """Test groups with a follow-up still open (or overdue). Only the engine closes one - when a
    result that answers it arrives, or a clinician dismisses it - so a review leaves it in place."""
    return sorted({u.group for u in a.monitoring.follow_ups if u.state in ("open", "overdue")})


def refresh_stale(s: Session, kb: Knowledge, as_of: date | None = None, limit: int | None = None) -> int:
    """Re-assess patients whose stored assessment is older than `as_of` (daily drift: tests fall due)."""
    as_of = as_of or date.today()
    q = (
        select(m.Patient.id)
        .outerjoin(m.AssessmentRow, m.AssessmentRow.patient_id == m.Patient.id)
        .where(or_(m.AssessmentRow.as_of.is_(None), m.AssessmentRow.as_of < as_of))
    )
    if limit:
        q = q.limit(limit)
    ids = list(s.scalars(q))
    refresh_many(s, kb, ids, as_of)
    return len(ids)


SORTS = ("urgency", "due", "name", "owner")  # the worklist's orders (urgency: the default)
NEEDS = ("critical", "warning", "overdue", "awaiting")  # the counts at the top of the list, each a filter


@dataclass
class WorklistFilter:
    severity: str | None = None  # critical | warning (warning includes critical)
    category: str | None = None
    indication: str | None = None
    team: str | None = None  # specialist | gp
    search: str | None = None
    include_due_days: int = 7
    limit: int = 200
    offset: int = 0
    # One of NEEDS: the worst open finding is critical / is a warning (not critical), the next blood
    # test is overdue, a follow-up result is awaited. Each count at the top is the total of its filter.
    needs: str | None = None
    owner_id: int | None = None  # only the patients this user owns ("my patients")
    sort: str = "urgency"  # one of SORTS


@dataclass
class WorklistEntry:
    patient_id: int
    identifier: str
    name: str
    team: str
    indication: str | None
    worst: str | None
    open_count: int
    categories: list[str]
    next_due: date | None
    overdue: bool
    phase: str
    awaiting: list[str]  # test groups with an open follow-up ("awaiting FBC result")
    treatment: str  # not-started | active | on-hold | stopped ("" before the first assessment with it)
    urgent_code: str | None = None  # the most urgent open finding (None: nothing open)
    urgent: str = ""  # its words, as the engine wrote them (without the age on the day it was assessed)
    urgent_value: str = ""  # the newest result it rests on, with its unit ("" when it rests on none)
    urgent_date: date | None = None  # the finding's date (the newest fact it rests on)
    urgent_age: str = ""  # that date's age today: "today", "1 day ago", "3 days ago"
    days_overdue: int | None = None  # days since the next blood test fell due (None: not overdue)
    owner: str | None = None  # username of the team member who owns the patient
    owner_name: str | None = None  # their display name (the username when they have none)


@dataclass
class WorklistCounts:
    """How many patients on the list (under every filter but `needs`) match each of NEEDS."""

    critical: int = 0
    warning: int = 0
    overdue: int = 0
    awaiting: int = 0


def worklist(s: Session, flt: WorklistFilter, today: date | None = None) -> tuple[list[WorklistEntry], int]:
    """Patients who need action: open critical first, then warning, then overdue, then due soon.
    A patient awaiting a follow-up result stays on the list until the result (or a dismissal)."""
    entries, total, _ = worklist_with_counts(s, flt, today)
    return entries, total


def worklist_with_counts(
    s: Session, flt: WorklistFilter, today: date | None = None
) -> tuple[list[WorklistEntry], int, WorklistCounts]:
    """The page of the worklist `flt` asks for, the number of patients it holds, and the counts by
    need. Two queries, both on the stored assessments (nobody is assessed here): one aggregate for
    the total and the counts, one for the page's rows."""
    today = today or date.today()
    if flt.sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}")
    if flt.needs is not None and flt.needs not in NEEDS:
        raise ValueError(f"needs must be one of {', '.join(NEEDS)}")
    severity = flt.severity if flt.severity in ("critical", "warning") else None
    tally, page = _worklist_statements(
        severity,
        bool(flt.category),
        bool(flt.indication),
        bool(flt.team),
        flt.owner_id is not None,
        bool(flt.search),
        flt.needs,
        flt.sort,
    )
    values: dict[str, Any] = {
        "today": today,
        "due_limit": today + timedelta(days=flt.include_due_days),
        "severity": d.SEVERITY_RANK[severity] if severity else None,
        "category": f"% {flt.category} %",
        "indication": flt.indication,
        "team": flt.team,
        "owner_id": flt.owner_id,
        "search": f"%{(flt.search or '').strip().lower()}%",
        "limit": flt.limit,
        "offset": flt.offset,
    }
    everyone, *by_need = s.execute(tally, values).one()
    counts = WorklistCounts(*(int(n) for n in by_need))
    total = int(getattr(counts, flt.needs) if flt.needs else everyone)
    names = {v: k for k, v in d.SEVERITY_RANK.items()}
    out = []
    for row in s.execute(page, values):
        # unpacked by position: reading a row's columns by name costs several times more
        pid, identifier, name, team, indication, worst, open_count, categories, next_due, phase, awaiting = row[:11]
        treatment, urgent_code, urgent_message, urgent_value, urgent_date, owner, owner_name = row[11:]
        overdue = next_due is not None and next_due < today
        out.append(
            WorklistEntry(
                patient_id=pid,
                identifier=identifier,
                name=name,
                team=team,
                indication=indication,
                worst=names.get(worst),
                open_count=open_count,
                categories=categories.split(),
                next_due=next_due,
                overdue=overdue,
                phase=phase,
                awaiting=awaiting.split(),
                treatment=treatment,
                urgent_code=urgent_code or None,
                urgent=urgent_message if urgent_code else "",
                urgent_value=urgent_value if urgent_code else "",
                urgent_date=urgent_date if urgent_code else None,
                urgent_age=age_text(today, urgent_date) if urgent_code and urgent_date else "",
                days_overdue=(today - next_due).days if overdue else None,
                owner=owner,
                owner_name=(owner_name or owner) if owner else None,
            )
        )
    return out, total, counts


@functools.cache
def _worklist_statements(
    severity: str | None,
    category: bool,
    indication: bool,
    team: bool,
    owner: bool,
    search: bool,
    needs: str | None,
    sort: str,
) -> tuple[Select[*tuple[Any, ...]], Select[*tuple[Any, ...]]]:
    """The worklist's two queries (the tally of the counts, and a page of rows) for one combination of
    filters, built once with bound parameters (today, due_limit, severity, category, indication,
    team, owner_id, search, limit, offset): building them costs SQLAlchemy several times what
    SQLite spends running them, and a clinic uses a handful of combinations."""
    a, p, u = m.AssessmentRow, m.Patient, m.User
    today = bindparam("today", type_=Date)
    need = {
        "critical": (a.worst_open == d.SEVERITY_RANK["critical"]) & (a.open_count > 0),
        "warning": (a.worst_open == d.SEVERITY_RANK["warning"]) & (a.open_count > 0),
        "overdue": a.next_due < today,
        "awaiting": a.awaiting != "",
    }
    conditions = [or_(a.open_count > 0, a.next_due <= bindparam("due_limit", type_=Date), a.awaiting != "")]
    if severity:
        conditions += [a.worst_open <= bindparam("severity", type_=Integer), a.open_count > 0]
    if category:
        conditions.append(a.categories.like(bindparam("category", type_=String)))
    if indication:
        conditions.append(a.indication == bindparam("indication", type_=String))
    if team:
        conditions.append(p.monitoring_team == bindparam("team", type_=String))
    if owner:
        conditions.append(p.owner_id == bindparam("owner_id", type_=Integer))
    if search:
        term = bindparam("search", type_=String)
        conditions.append(or_(func.lower(p.name).like(term), func.lower(p.identifier).like(term)))
    tally = select(
        func.count(a.patient_id), *(func.coalesce(func.sum(case((need[k], 1), else_=0)), 0) for k in NEEDS)
    ).join(p, p.id == a.patient_id)
    if needs:
        conditions.append(need[needs])
    # Only the columns the list shows: the stored assessment JSON (kilobytes per row) stays on disk.
    cols = (
        p.id, p.identifier, p.name, p.monitoring_team, a.indication, a.worst_open, a.open_count,
        a.categories, a.next_due, a.phase, a.awaiting, a.treatment, a.urgent_code, a.urgent_message,
        a.urgent_value, a.urgent_date, u.username.label("owner"), u.display_name.label("owner_name"),
    )  # fmt: skip
    q = select(*cols).join(p, p.id == a.patient_id).outerjoin(u, u.id == p.owner_id).where(*conditions)
    urgency = (a.worst_open, a.next_due.is_(None), a.next_due)
    owner_label = func.coalesce(func.nullif(u.display_name, ""), u.username)
    order = {
        "urgency": (*urgency, p.name),
        "due": (a.next_due.is_(None), a.next_due, a.worst_open, p.name),
        "name": (p.name, p.identifier),
        "owner": (u.id.is_(None), owner_label, *urgency, p.name),
    }[sort]
    # the id last: pages never overlap
    page = q.order_by(*order, p.id).limit(bindparam("limit", type_=Integer)).offset(bindparam("offset", type_=Integer))
    return tally.where(*conditions[: len(conditions) - (1 if needs else 0)]), page


class ReviewError(ValueError):
    """A review that cannot be recorded (unknown finding, bad outcome, missing reason)."""


def record_review(s: Session, finding_id: int, user_id: int | None, outcome: str, note: str = "") -> m.Review:
    """Record what was done about an open finding: exactly one review closes it, however many
    clinicians submit at once (a conditional UPDATE ... WHERE state is open, checked by its row
    count, under the patient's lock)."""
    f = s.get(m.FindingRow, finding_id)
    if f is None:
        raise ReviewError(f"finding {finding_id} does not exist")
    if outcome not in REVIEW_OUTCOMES:
        raise ReviewError(f"outcome must be one of {', '.join(REVIEW_OUTCOMES)}")
    if outcome == "not-relevant" and not note.strip():
        raise ReviewError("a reason is required when a finding is marked not relevant")
    lock_patients(s, [f.patient_id])
    closed = cast(
        CursorResult[Any],
        s.execute(
            update(m.FindingRow)
            .where(m.FindingRow.id == finding_id, m.FindingRow.state.in_(("open", "info")))
            .values(state="reviewed")
            .execution_options(synchronize_session=False)
        ),
    )
    if closed.rowcount != 1:
        state = s.scalar(select(m.FindingRow.state).where(m.FindingRow.id == finding_id))
        set_committed_value(f, "state", state)
        raise ReviewError(f"finding {finding_id} is {state}, not open")
    set_committed_value(f, "state", "reviewed")
    review = m.Review(
        finding_id=f.id, patient_id=f.patient_id, user_id=user_id, outcome=outcome, note=note.strip(), created_at=now()
    )
    s.add(review)
    s.flush()
    _update_counts(s, f.patient_id)
    return review


def _categories(rows: Sequence[m.FindingRow]) -> str:
    """Space-padded so a LIKE filter matches whole category names only."""
    cats = sorted({r.category for r in rows})
    return f" {' '.join(cats)} " if cats else ""


def _update_counts(s: Session, patient_id: int) -> None:
    rows = s.scalars(
        select(m.FindingRow).where(m.FindingRow.patient_id == patient_id, m.FindingRow.state == "open")
    ).all()
    row_a = s.get(m.AssessmentRow, patient_id)
    if row_a is not None:
        row_a.revision = (row_a.revision or 0) + 1  # a refresh computed before this review computes again
        row_a.open_count = len(rows)
        row_a.worst_open = min((d.SEVERITY_RANK[r.severity] for r in rows), default=3)
        row_a.categories = _categories(rows)
        for k, v in _urgent_open(rows, row_a.result).items():
            setattr(row_a, k, v)


def _urgent_open(rows: Sequence[m.FindingRow], result: dict[str, Any] | None) -> dict[str, Any]:
    """The most urgent of the open finding rows, in the stored assessment's order (the engine's:
    worst severity, then newest), for the assessment row's urgent_* columns."""
    still = {(r.code, r.message) for r in rows}
    for f in (result or {}).get("findings", []):
        if (f.get("code"), f.get("message")) in still:
            day = date.fromisoformat(f["date"]) if f.get("date") else None
            return _urgent(f["code"], f["message"], f.get("evidence") or [], day)
    top = order_findings(rows, result)
    return _urgent(top[0].code, top[0].message, [], None) if top else NO_URGENT


# Built once (a patient page and the findings list read it every time): see store/records.py.
_OPEN_FINDINGS = (
    select(m.FindingRow)
    .where(m.FindingRow.patient_id == bindparam("pid"), m.FindingRow.state.in_(("open", "reviewed", "info")))
    .order_by(m.FindingRow.id)
)


def open_findings(s: Session, patient_id: int) -> list[m.FindingRow]:
    return list(s.scalars(_OPEN_FINDINGS, {"pid": patient_id}))


def order_findings(rows: Sequence[m.FindingRow], result: dict[str, Any] | None) -> list[m.FindingRow]:
    """Most serious first (critical, warning, info), then newest first: the date is the finding's
    own date from the stored assessment (the newest fact it rests on), else when it was first seen."""
    dates: dict[tuple[str, str], date] = {}
    for f in (result or {}).get("findings", []):
        if f.get("date"):
            dates.setdefault((f["code"], f["message"]), date.fromisoformat(f["date"]))

    def key(r: m.FindingRow) -> tuple[int, int, int]:
        when = dates.get((r.code, r.message)) or r.first_seen.date()
        return d.SEVERITY_RANK.get(r.severity, 3), -when.toordinal(), -r.id

    return sorted(rows, key=key)


def stored_assessment(s: Session, patient_id: int) -> dict[str, Any] | None:
    row = s.get(m.AssessmentRow, patient_id)
    return None if row is None else row.result
