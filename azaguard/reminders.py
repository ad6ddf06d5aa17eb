"""Blood-test reminders over the store: who is due, claiming a reminder, recording the outcome.

Due dates are read from the stored assessment (the engine's monitoring plan: `next_due` and
`overdue` per test group, docs/assessment-json.md), never worked out here. A group is

- **due** when its `next_due` is between the run's date and `days_before` days after it, and
- **overdue** when the stored assessment says so, or its `next_due` is before the run's date.

Each (patient, test group, due date, kind) gets one reminder (`reminders_sent`, unique): a run
claims it (`pending`) in a short transaction before sending, so two runs at once never send it
twice; the outcome (`sent` / `failed`, with the error's type) is written after. A failed reminder
is tried again by later runs while it is still due, `MAX_ATTEMPTS` times in all; one left
`pending` by a crash is not sent again (at most once). Only patients who chose a channel are
reminded.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import CursorResult, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from azaguard.notify import Item
from azaguard.store import models as m
from azaguard.store.records import now

MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Planned:
    """One patient's reminder: the items it covers, the channel and the contact detail to use."""

    patient_id: int
    channel: str
    contact: str  # an e-mail address or a phone number, as the channel needs
    items: tuple[Item, ...]


def due_items(result: dict[str, Any], as_of: date, days_before: int) -> list[Item]:
    """The test groups of a stored assessment that are due within `days_before` days or overdue."""
    out: list[Item] = []
    horizon = as_of + timedelta(days=days_before)
    for g in result.get("monitoring", {}).get("groups", []):
        if not g.get("next_due"):
            continue
        when = date.fromisoformat(g["next_due"])
        if g.get("overdue") or when < as_of:
            out.append(Item("overdue", g["name"], when))
        elif when <= horizon:
            out.append(Item("due", g["name"], when))
    return out


def plan(
    s: Session, as_of: date, days_before: int, channels: dict[str, str], limit: int | None = None
) -> list[Planned]:
    """Patients with a channel (`channels`: name -> the contact it needs, email | phone) and a test
    due within `days_before` days or overdue, with the items not yet reminded of. Reads only."""
    a, p, pref = m.AssessmentRow, m.Patient, m.ReminderPref
    q = (
        select(pref.patient_id, pref.channel, pref.email, p.phone, a.result)
        .join(a, a.patient_id == pref.patient_id)
        .join(p, p.id == pref.patient_id)
        .where(pref.channel.in_(list(channels)), a.next_due.is_not(None))
        .where(a.next_due <= as_of + timedelta(days=days_before))  # the earliest group's: a cheap first cut
        .order_by(pref.patient_id)
    )
    if limit:
        q = q.limit(limit)
    candidates: list[Planned] = []
    for pid, channel, email, phone, result in s.execute(q):
        contact = (email if channels[channel] == "email" else phone) or ""
        items = due_items(result, as_of, days_before)
        if contact.strip() and items:
            candidates.append(Planned(pid, channel, contact.strip(), tuple(items)))
    if not candidates:
        return []
    done = _settled(s, [c.patient_id for c in candidates])
    out = []
    for c in candidates:
        left = tuple(i for i in c.items if (c.patient_id, i.group, i.due, i.kind) not in done)
        if left:
            out.append(Planned(c.patient_id, c.channel, c.contact, left))
    return out


def _settled(s: Session, patient_ids: Sequence[int]) -> set[tuple[int, str, date, str]]:
    """Reminders that will not be sent again: sent, being sent, or failed too often."""
    r = m.ReminderSent
    q = select(r.patient_id, r.test_group, r.due_date, r.kind, r.status, r.attempts).where(
        r.patient_id.in_(list(patient_ids))
    )
    return {
        (pid, group, due, kind)
        for pid, group, due, kind, status, attempts in s.execute(q)
        if status != "failed" or attempts >= MAX_ATTEMPTS
    }


def claim(s: Session, planned: Planned) -> tuple[Item, ...]:
    """Mark the reminder's items as being sent (`pending`), in the caller's write transaction.
    Returns the items this run claimed: none of those another run claimed or sent meanwhile."""
    r = m.ReminderSent
    stamp = now()
    claimed = []
    for it in planned.items:
        key = (r.patient_id == planned.patient_id, r.test_group == it.group, r.due_date == it.due, r.kind == it.kind)
        row = s.scalar(select(r).where(*key))
        if row is None:
            try:
                with s.begin_nested():  # a run that claimed it first wins (the unique constraint)
                    s.add(
                        r(
                            patient_id=planned.patient_id,
                            kind=it.kind,
                            test_group=it.group,
                            due_date=it.due,
                            channel=planned.channel,
                            sent_at=stamp,
                            status="pending",
                            attempts=1,
                        )
                    )
            except IntegrityError:
                continue
            claimed.append(it)
            continue
        retry = s.execute(
            update(r)
            .where(r.id == row.id, r.status == "failed", r.attempts < MAX_ATTEMPTS)
            .values(status="pending", attempts=r.attempts + 1, channel=planned.channel, sent_at=stamp)
            .execution_options(synchronize_session=False)
        )
        assert isinstance(retry, CursorResult)
        if retry.rowcount == 1:
            claimed.append(it)
    return tuple(claimed)


def finish(s: Session, patient_id: int, items: Collection[Item], ok: bool, error_type: str | None) -> None:
    """Record how the claimed items' reminder went."""
    r = m.ReminderSent
    for it in items:
        s.execute(
            update(r)
            .where(r.patient_id == patient_id, r.test_group == it.group, r.due_date == it.due, r.kind == it.kind)
            .values(status="sent" if ok else "failed", error_type=None if ok else (error_type or "Error")[:80])
            .execution_options(synchronize_session=False)
        )


# Read on every patient page: built once (building a select costs more CPU than running it)
_SENT = (
    select(m.ReminderSent)
    .where(m.ReminderSent.patient_id == bindparam("pid"))
    .order_by(m.ReminderSent.sent_at.desc(), m.ReminderSent.id.desc())
)
_PREFS = select(m.ReminderPref).where(m.ReminderPref.patient_id == bindparam("pid"))


def sent(s: Session, patient_id: int) -> list[m.ReminderSent]:
    """A patient's reminders, the latest first."""
    return list(s.scalars(_SENT, {"pid": patient_id}))


def prefs(s: Session, patient_id: int) -> m.ReminderPref | None:
    return s.scalar(_PREFS, {"pid": patient_id})


def set_prefs(s: Session, patient_id: int, channel: str, email: str) -> m.ReminderPref:
    row = prefs(s, patient_id)
    if row is None:
        row = m.ReminderPref(patient_id=patient_id, channel=channel, email=email, updated_at=now())
        s.add(row)
    else:
        row.channel, row.email, row.updated_at = channel, email, now()
    s.flush()
    return row
