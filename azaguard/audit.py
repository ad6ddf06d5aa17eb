"""The audit trail: who read or changed which patient's data, when, through which channel.

Audit rows are the only place patient access is recorded; application logs never carry
patient identifiers or clinical values.

An audit row is never lost and never makes a read fail: it is kept aside by the unit of work
(`store.db.defer_insert`) and written when the unit of work ends - in the same transaction as the
writes of a request that commits, and in a short transaction of its own after a request that only
read (SQLite: `BEGIN IMMEDIATE`, well under a millisecond), so a read never holds the write lock
while it works. `Database.session()` returns only once the row is on disk, so it exists before
the response is sent. If the request fails, its rows roll back with it, except those committed
before the failure (a refusal: audit, `s.commit()`, raise) or added with `keep=True` (an attempt
to record even if it fails); those are written after the rollback.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from azaguard.store import models as m
from azaguard.store.db import defer_insert
from azaguard.store.records import now


def audit(
    s: Session,
    user: m.User | None,
    action: str,
    resource: str,
    patient_id: int | None = None,
    detail: str = "",
    channel: str = "web",
    keep: bool = False,
) -> None:
    """Record an access. `keep`: the row stays even if the request then fails (an attempt)."""
    row = {
        "at": now(),
        "user_id": user.id if user else None,
        "username": user.username if user else "(anonymous)",
        "action": action[:24],
        "resource": resource[:80],
        "patient_id": patient_id,
        "detail": detail[:400],
        "channel": channel[:8],
    }
    if not defer_insert(s, m.AuditEvent, row, keep):
        s.add(m.AuditEvent(**row))  # a session made outside Database: the row goes with its transaction
