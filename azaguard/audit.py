"""The audit trail: who read or changed which patient's data, when, through which channel.

Audit rows are the only place patient access is recorded; application logs never carry
patient identifiers or clinical values.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from azaguard.store import models as m
from azaguard.store.records import now


def audit(
    s: Session,
    user: m.User | None,
    action: str,
    resource: str,
    patient_id: int | None = None,
    detail: str = "",
    channel: str = "web",
) -> None:
    s.add(
        m.AuditEvent(
            at=now(),
            user_id=user.id if user else None,
            username=user.username if user else "(anonymous)",
            action=action,
            resource=resource[:80],
            patient_id=patient_id,
            detail=detail[:400],
            channel=channel,
        )
    )
