"""The pure assessment engine: (record, knowledge, as_of) -> Assessment. No clock, no I/O."""

from __future__ import annotations

from datetime import date

from azaguard import domain as d
from azaguard.engine.context import Course, build_context
from azaguard.engine.counselling import (
    check_data_quality,
    check_efficacy,
    check_metabolites,
    check_screening,
    check_screening_results,
)
from azaguard.engine.dosing import compute_dose
from azaguard.engine.followups import apply_follow_ups, follow_ups
from azaguard.engine.labs import check_rises, check_thresholds, check_trends, check_uln_rules
from azaguard.engine.pgx import LABEL, check_pgx
from azaguard.engine.safety import (
    check_contraindications,
    check_interactions,
    check_reproduction,
    check_symptoms,
    check_vaccines,
)
from azaguard.engine.schedule import plan_monitoring
from azaguard.knowledge import Knowledge

# Checks that only read the context. PGx runs first (dose and others read its call).
CHECKS = (
    check_screening,
    check_screening_results,
    check_thresholds,
    check_uln_rules,
    check_rises,
    check_trends,
    check_interactions,
    check_contraindications,
    check_reproduction,
    check_vaccines,
    check_symptoms,
    check_efficacy,
    check_metabolites,
    check_data_quality,
)


def sort_key(f: d.Finding) -> tuple[int, int, int, str]:
    """Most severe first, then the newest evidence first (undated last), then category and code."""
    newest = -f.date.toordinal() if f.date else 0
    return (d.SEVERITY_RANK[f.severity], newest, d.CATEGORIES.index(f.category), f.code)


def treatment_state(course: Course) -> d.TreatmentState:
    if course.on_hold:
        return d.TreatmentState("on-hold", course.hold_since, course.hold_reason, course.held_dose)
    if course.phase == "stopped":
        return d.TreatmentState("stopped", course.stopped_on)
    if course.phase == "pre-treatment":
        return d.TreatmentState("not-started")
    return d.TreatmentState("active", course.start)


def assess(record: d.PatientRecord, knowledge: Knowledge, as_of: date) -> d.Assessment:
    ctx = build_context(record, knowledge, as_of)
    findings = check_pgx(ctx)
    dose, dose_findings = compute_dose(ctx)
    monitoring, schedule_findings = plan_monitoring(ctx)
    findings += dose_findings + schedule_findings
    for check in CHECKS:
        findings.extend(check(ctx))
    items = follow_ups(ctx, findings)
    monitoring, overdue = apply_follow_ups(ctx, monitoring, items, findings)
    findings += overdue
    pgx_summary = {
        gene.lower(): (LABEL[call.phenotype] if call.phenotype else None)
        for gene, call in (("TPMT", ctx.pgx["tpmt"]), ("NUDT15", ctx.pgx["nudt15"]))
    }
    pgx_summary["category"] = ctx.pgx["category"]
    return d.Assessment(
        patient_id=record.patient_id,
        as_of=as_of,
        knowledge_version=knowledge.version,
        protocol={"name": knowledge.protocol["name"], "version": knowledge.protocol["version"]},
        findings=tuple(sorted(findings, key=sort_key)),
        dose=dose,
        monitoring=monitoring,
        pgx=pgx_summary,
        treatment=treatment_state(ctx.course),
    )
