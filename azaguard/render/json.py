"""Assessment -> the JSON contract documented in docs/assessment-json.md (outside suites rely on it)."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from azaguard import domain as d

SCHEMA_VERSION = "2"


def _num(x: float | None) -> float | int | None:
    if x is None:
        return None
    return int(x) if float(x).is_integer() else round(x, 2)


def finding_to_dict(f: d.Finding) -> dict[str, Any]:
    out: dict[str, Any] = {
        "code": f.code,
        "category": f.category,
        "severity": f.severity,
        "message": f.message,
        "action": f.action,
        "sources": list(f.sources),
        "evidence": list(f.evidence),
        "patient_text": f.patient_text,
    }
    if f.ctcae:
        out["ctcae"] = f.ctcae
    out["date"] = _date(f.date)
    out["follow_up"] = (
        None
        if f.follow_up is None
        else {"group": f.follow_up.group, "days": f.follow_up.days, "answered_by": list(f.follow_up.answered_by)}
    )
    return out


def _date(x: date | None) -> str | None:
    return x.isoformat() if x else None


def follow_up_to_dict(u: d.FollowUp) -> dict[str, Any]:
    return {
        "key": u.key,
        "group": u.group,
        "since": u.since.isoformat(),
        "due": u.due.isoformat(),
        "state": u.state,
        "finding_code": u.finding_code,
        "severity": u.severity,
        "reason": u.reason,
        "answered_by": list(u.answered_by),
        "dismissed_reason": u.dismissed_reason or None,
        "moved_from": _date(u.moved_from),
    }


def assessment_to_dict(a: d.Assessment) -> dict[str, Any]:
    rec = a.dose.recommended
    return {
        "schema_version": SCHEMA_VERSION,
        "patient_id": a.patient_id,
        "as_of": a.as_of.isoformat(),
        "knowledge_version": a.knowledge_version,
        "protocol": a.protocol,
        "treatment": {
            "state": a.treatment.state,
            "since": _date(a.treatment.since),
            "reason": a.treatment.reason or None,
            "held_dose_mg_per_day": _num(a.treatment.held_dose_mg_per_day),
        },
        "findings": [finding_to_dict(f) for f in a.findings],
        "dose": {
            "current_mg_per_day": _num(a.dose.current_mg_per_day),
            "current_mg_per_kg_per_day": _num(a.dose.current_mg_per_kg_per_day),
            "recommended_mg_per_day": None if rec is None else {"low": _num(rec.low), "high": _num(rec.high)},
            "plan": [{"from": s.start.isoformat(), "mg_per_day": _num(s.mg_per_day)} for s in a.dose.plan],
            "basis": list(a.dose.basis),
            "restart_criteria": list(a.dose.restart_criteria),
        },
        "monitoring": {
            "phase": a.monitoring.phase,
            "treatment_start": a.monitoring.treatment_start.isoformat() if a.monitoring.treatment_start else None,
            "groups": [
                {
                    "name": g.name,
                    "last": g.last.isoformat() if g.last else None,
                    "next_due": g.next_due.isoformat() if g.next_due else None,
                    "overdue": g.overdue,
                    "interval": g.interval,
                    "follow_up_due": _date(g.follow_up_due),
                    "due_reason": g.due_reason or None,
                    "moved_from": _date(g.moved_from),
                }
                for g in a.monitoring.groups
            ],
            "follow_ups": [follow_up_to_dict(u) for u in a.monitoring.follow_ups],
            "calendar": a.monitoring.calendar,
        },
        "pgx": a.pgx,
    }


def render_json(a: d.Assessment) -> str:
    return json.dumps(assessment_to_dict(a), indent=2, ensure_ascii=False)


def _day(x: Any) -> date | None:
    return date.fromisoformat(x) if isinstance(x, str) and x else None


def finding_from_dict(f: dict[str, Any]) -> d.Finding:
    """One finding of the JSON contract back as the engine's record (the inverse of finding_to_dict)."""
    fu = f.get("follow_up")
    return d.Finding(
        code=f["code"],
        category=f["category"],
        severity=f["severity"],
        message=f["message"],
        action=f["action"],
        sources=tuple(f.get("sources") or ()),
        evidence=tuple(f.get("evidence") or ()),
        patient_text=f.get("patient_text") or "",
        ctcae=f.get("ctcae"),
        date=_day(f.get("date")),
        follow_up=None if not fu else d.FollowUpSpec(fu["group"], int(fu["days"]), tuple(fu.get("answered_by") or ())),
    )


def assessment_from_dict(a: dict[str, Any]) -> d.Assessment:
    """A stored assessment (the JSON contract, as the clinic service keeps it) back as the engine's
    Assessment, so renderers written against the domain types (FHIR) serve the stored answer
    instead of assessing again. assessment_to_dict(assessment_from_dict(x)) == x."""
    t, dose, mon = a["treatment"], a["dose"], a["monitoring"]
    rec = dose.get("recommended_mg_per_day")
    return d.Assessment(
        patient_id=a["patient_id"],
        as_of=date.fromisoformat(a["as_of"]),
        knowledge_version=a["knowledge_version"],
        protocol=dict(a["protocol"]),
        findings=tuple(finding_from_dict(f) for f in a["findings"]),
        dose=d.DosePlan(
            current_mg_per_day=dose.get("current_mg_per_day"),
            current_mg_per_kg_per_day=dose.get("current_mg_per_kg_per_day"),
            recommended=None if rec is None else d.DoseRange(rec["low"], rec["high"]),
            plan=tuple(d.DoseStep(date.fromisoformat(p["from"]), p["mg_per_day"]) for p in dose.get("plan") or ()),
            basis=tuple(dose.get("basis") or ()),
            restart_criteria=tuple(dose.get("restart_criteria") or ()),
        ),
        monitoring=d.MonitoringPlan(
            phase=mon["phase"],
            groups=tuple(
                d.MonitoringGroup(
                    name=g["name"],
                    last=_day(g.get("last")),
                    next_due=_day(g.get("next_due")),
                    overdue=bool(g.get("overdue")),
                    interval=g.get("interval") or "",
                    follow_up_due=_day(g.get("follow_up_due")),
                    due_reason=g.get("due_reason") or "",
                    moved_from=_day(g.get("moved_from")),
                )
                for g in mon.get("groups") or ()
            ),
            treatment_start=_day(mon.get("treatment_start")),
            follow_ups=tuple(
                d.FollowUp(
                    key=u["key"],
                    group=u["group"],
                    since=date.fromisoformat(u["since"]),
                    due=date.fromisoformat(u["due"]),
                    finding_code=u["finding_code"],
                    reason=u["reason"],
                    severity=u["severity"],
                    state=u["state"],
                    answered_by=tuple(u.get("answered_by") or ()),
                    dismissed_reason=u.get("dismissed_reason") or "",
                    moved_from=_day(u.get("moved_from")),
                )
                for u in mon.get("follow_ups") or ()
            ),
            calendar=mon.get("calendar"),
        ),
        pgx=dict(a.get("pgx") or {}),
        treatment=d.TreatmentState(
            state=t["state"],
            since=_day(t.get("since")),
            reason=t.get("reason") or "",
            held_dose_mg_per_day=t.get("held_dose_mg_per_day"),
        ),
    )
