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
    **params: Any,
) -> d.Finding:
    """`as_code` reports a shared text under a more specific code (symptom-fever from symptom-marrow)."""
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
