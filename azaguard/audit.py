"""The audit trail: who read or changed which patient's data, when, through which channel.

Audit rows are the only place patient access is recorded; application logs never carry
patient identifiers or clinical values.

An audit row is never lost and never makes a read fail: it is kept aside by the unit of work
(`store.db.defer_insert`) and written when the unit of work ends - in the same transaction as the
writes of a request that commits, and in a short transaction of its own after a request that only
read (SQLite: `BEGIN IMMEDIATE`, well under a millisecond), so a read never holds the write lock
while it works. `Database.session()` returns only once the row is on disk, so it exists before
the response is sent. If the request fails, its rows roll back with it, except those committed
before the failure or added with `keep=True` (a refusal, an attempt to record even if it fails),
and those added with `failed=` values (a write: if it fails, its row is written with
`action="write-failed"`); those are written after the rollback, in a short transaction of their own.
"""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy.orm import Session

from azaguard.store import models as m
from azaguard.store.db import Deferred, defer_insert
from azaguard.store.records import now


class Actor(Protocol):
    """Who did it: a user row or the service's Principal (both carry these two)."""

    @property
    def id(self) -> int | None: ...  # None: not a user of azaguard (a registered CDS client)

    @property
    def username(self) -> str: ...


def audit(
    s: Session,
    user: Actor | None,
    action: str,
    resource: str,
    patient_id: int | None = None,
    detail: str = "",
    channel: str = "web",
    keep: bool = False,
    failed: dict[str, Any] | None = None,
) -> Deferred | None:
    """Record an access. `keep`: the row stays even if the request then fails (an attempt);
    `failed`: if the request fails, the row is written with these values instead (a failed write).
    Returns the deferred row (None: a session made outside Database, the row was added to it)."""
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
    deferred = defer_insert(s, m.AuditEvent, row, keep, failed)
    if deferred is None:
        s.add(m.AuditEvent(**row))  # a session made outside Database: the row goes with its transaction
    return deferred
