"""Lab checks: drug-specific absolute thresholds, rises from baseline and falling trends."""

from __future__ import annotations

import itertools
from typing import Any

from azaguard import domain as d
from azaguard.engine.context import Context
from azaguard.engine.findings import fmt_num, from_rule, lab_evidence
from azaguard.knowledge import Knowledge


def breaches(comparator: str, value: float, limit: float) -> bool:
    return value < limit if comparator == "<" else value > limit


def ctcae_grade(kb: Knowledge, term: str, r: d.LabResult) -> dict[str, Any] | None:
    """CTCAE v5 grade for a result; grade 1 only when the lab sent its own limit of normal."""
    spec = kb.ctcae[term]
    grade = None
    if spec.direction == "low":
        for g in spec.grades:  # worst first
            if r.value < g.limit:
                grade = g.grade
                break
        if grade is None and r.ref_low is not None and r.value < r.ref_low:
            grade = 1
    else:
        if r.ref_high is None or r.ref_high <= 0:
            return None
        ratio = r.value / r.ref_high
        for g in spec.grades:
            if ratio > g.limit:
                grade = g.grade
                break
        if grade is None and ratio > 1:
            grade = 1
    if grade is None:
        return None
    return {"version": "5.0", "term": spec.term, "grade": grade}


def check_thresholds(ctx: Context) -> list[d.Finding]:
    kb = ctx.kb
    out = []
    for rule in kb.thresholds:
        r = ctx.latest(rule.analyte)
        if r is None or not breaches(rule.comparator, r.value, rule.value):
            continue
        out.append(
            from_rule(
                kb,
                f"lab-{rule.id}",
                "lab",
                rule,
                (lab_evidence(r),),
                ctcae=ctcae_grade(kb, rule.ctcae, r) if rule.ctcae else None,
                value=round(r.value, 2),
                limit=rule.value,
            )
        )
    return out


def check_rises(ctx: Context) -> list[d.Finding]:
    kb = ctx.kb
    out = []
    for rule in kb.rises:
        series = ctx.labs.get(rule.analyte, [])
        if len(series) < 2:
            continue
        latest = series[-1]
        window_start = rule.window.sub(latest.when)
        earlier = [r for r in series[:-1] if window_start <= r.when <= latest.when and r.value > 0]
        if not earlier:
            continue
        base = min(earlier, key=lambda r: r.value)
        rise = (latest.value - base.value) / base.value
        if rise > rule.rise_fraction:
            out.append(
                from_rule(
                    kb,
                    f"lab-{rule.id}",
                    "lab",
                    rule,
                    (lab_evidence(base), lab_evidence(latest)),
                    value=round(latest.value, 1),
                    pct=round(rise * 100),
                    baseline=round(base.value, 1),
                    baseline_date=base.when,
                )
            )
    return out


def check_trends(ctx: Context) -> list[d.Finding]:
    kb = ctx.kb
    out = []
    for rule in kb.trends:
        for analyte in rule.analytes:
            by_day: dict[object, d.LabResult] = {}
            for r in ctx.labs.get(analyte, []):
                by_day[r.when] = r  # one value per day: the last reported
            series = list(by_day.values())
            need = rule.successive_falls + 1
            if len(series) < need:
                continue
            window = series[-need:]
            falls = all(
                prev.value > 0 and (prev.value - nxt.value) / prev.value > rule.fall_fraction
                for prev, nxt in itertools.pairwise(window)
            )
            if not falls:
                continue
            label = kb.analytes[analyte].label
            series_text = " -> ".join(f"{fmt_num(round(r.value, 2))} ({r.when.isoformat()})" for r in window)
            out.append(
                from_rule(
                    kb,
                    f"trend-{analyte}-{rule.id}",
                    "trend",
                    rule,
                    tuple(lab_evidence(r) for r in window),
                    label=label,
                    n=rule.successive_falls,
                    series=series_text,
                )
            )
    return out
