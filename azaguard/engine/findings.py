"""Turn knowledge text plus record facts into Finding objects.

All wording comes from the knowledge files; the engine only supplies the facts that fill
the placeholders, so a clinic can change wording without touching code.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from azaguard import domain as d
from azaguard.knowledge import Knowledge


def fmt_num(x: float) -> str:
    """Numbers as a clinician writes them: no trailing .0, at most 2 decimals."""
    return f"{x:.2f}".rstrip("0").rstrip(".") if isinstance(x, float) else str(x)


def fmt_date(day: date) -> str:
    """A date as people read it on a results screen: 29 Sep 2026."""
    return f"{day.day} {day.strftime('%b')} {day.year}"


def age_text(as_of: date, day: date) -> str:
    days = (as_of - day).days
    if days == 0:
        return "today"
    if days == 1:
        return "1 day ago"
    return f"{days} days ago"


def when_params(as_of: date, day: date) -> dict[str, Any]:
    """The {date} and {age} placeholders of a lab finding ("on 29 Sep 2026 (63 days ago)")."""
    return {"date": fmt_date(day), "age": age_text(as_of, day)}


def spec_of(rule: Any) -> d.FollowUpSpec | None:
    fu = getattr(rule, "follow_up", None)
    if fu is None:
        return None
    return d.FollowUpSpec(fu.group, fu.days, tuple(fu.answered_by))


def evidence_date(evidence: tuple[dict[str, Any], ...]) -> date | None:
    """The newest dated fact a finding rests on (result date, report date, medicine start)."""
    best: date | None = None
    for e in evidence:
        raw = e.get("date") or e.get("start")
        if isinstance(raw, str):
            try:
                day = date.fromisoformat(raw)
            except ValueError:
                continue
            if best is None or day > best:
                best = day
    return best


def _fill(template: str, params: dict[str, Any]) -> str:
    shown = {
        k: (fmt_num(v) if isinstance(v, float) else v.isoformat() if isinstance(v, date) else v)
        for k, v in params.items()
    }
    return template.format_map(shown)


def from_catalogue(
    kb: Knowledge,
    code: str,
    evidence: tuple[dict[str, Any], ...] = (),
    severity: d.Severity | None = None,
    as_code: str | None = None,
    follow_up: d.FollowUpSpec | None = None,
    **params: Any,
) -> d.Finding:
    """`as_code` reports a shared text under a more specific code (symptom-fever from symptom-marrow);
    `follow_up` overrides the catalogue's repeat test (a symptom's own test)."""
    text = kb.findings[code]
    return d.Finding(
        code=as_code or code,
        category=text.category,
        severity=severity or text.severity,
        message=_fill(text.message, params),
        action=_fill(text.action, params),
        sources=kb.cite(text.sources),
        evidence=evidence,
        patient_text=_fill(text.patient_text, params),
        date=evidence_date(evidence),
        follow_up=follow_up or spec_of(text),
    )


def from_rule(
    kb: Knowledge,
    code: str,
    category: str,
    rule: Any,
    evidence: tuple[dict[str, Any], ...] = (),
    ctcae: dict[str, Any] | None = None,
    prefix: str = "",
    **params: Any,
) -> d.Finding:
    """A finding whose text and severity live beside a numeric rule (threshold, interaction)."""
    return d.Finding(
        code=code,
        category=category,
        severity=rule.severity,
        message=prefix + _fill(rule.message, params),
        action=_fill(rule.action, params),
        sources=kb.cite(rule.sources),
        evidence=evidence,
        patient_text=_fill(rule.patient_text, params),
        ctcae=ctcae,
        date=evidence_date(evidence),
        follow_up=spec_of(rule),
    )


def lab_evidence(r: d.LabResult) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "type": "lab",
        "analyte": r.analyte,
        "value": round(r.value, 4),
        "unit": r.unit,
        "date": r.when.isoformat(),
    }
    if r.original_unit and r.original_unit != r.unit:
        ev["reported"] = f"{fmt_num(r.original_value or 0.0)} {r.original_unit}"
    if r.source_id:
        ev["id"] = r.source_id
    return ev


def med_evidence(m: d.MedicationEntry) -> dict[str, Any]:
    ev: dict[str, Any] = {"type": "medication", "name": m.name, "status": m.status}
    if m.drug:
        ev["drug"] = m.drug
    if m.start:
        ev["start"] = m.start.isoformat()
    if m.daily_dose_mg is not None:
        ev["mg_per_day"] = m.daily_dose_mg
    if m.source_id:
        ev["id"] = m.source_id
    return ev
