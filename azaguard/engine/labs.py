"""Lab checks: drug-specific absolute thresholds, rises from baseline and falling trends."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from azaguard import domain as d
from azaguard.engine.context import Context
from azaguard.engine.findings import fmt_num, from_catalogue, from_rule, lab_evidence, when_params
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
        grade = ctcae_grade(kb, rule.ctcae, r) if rule.ctcae else None
        f = from_rule(
            kb,
            f"lab-{rule.id}",
            "lab",
            rule,
            (lab_evidence(r),),
            ctcae=grade,
            value=round(r.value, 2),
            limit=rule.value,
            **when_params(ctx.as_of, r.when),
        )
        if grade is not None:
            worse = [sev for g, sev in rule.grade_severity.items() if grade["grade"] >= g]
            if worse:
                f = dataclasses.replace(f, severity=min([f.severity, *worse], key=lambda x: d.SEVERITY_RANK[x]))
        out.append(f)
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
                    **when_params(ctx.as_of, latest.when),
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
                    **when_params(ctx.as_of, window[-1].when),
                )
            )
    return out


def uln_of(series: list[d.LabResult]) -> float | None:
    """The laboratory's upper limit: the latest result's own, else the most recent one sent."""
    for r in reversed(series):
        if r.ref_high is not None and r.ref_high > 0:
            return r.ref_high
    return None


def check_uln_rules(ctx: Context) -> list[d.Finding]:
    """Results graded in multiples of the laboratory's upper limit (bilirubin, ALP)."""
    kb = ctx.kb
    out: list[d.Finding] = []
    for rule in kb.uln_rules:
        series = ctx.labs.get(rule.analyte, [])
        if not series:
            continue
        r = series[-1]
        uln = uln_of(series)
        spec = kb.analytes[rule.analyte]
        if uln is None:
            out.append(
                from_catalogue(
                    kb, "data-missing-uln", (lab_evidence(r),), label=spec.label, value=round(r.value, 2),
                    unit=r.unit, **when_params(ctx.as_of, r.when),
                )
            )  # fmt: skip
            continue
        graded = r if r.ref_high == uln else d.LabResult(r.analyte, r.value, r.unit, r.when, ref_high=uln)
        ctcae = ctcae_grade(kb, rule.ctcae, graded)
        if rule.analyte == "bilirubin" and r.value > uln:
            jaundice = [s for s in ctx.record.symptoms if s.key == "jaundice" and s.when <= ctx.as_of]
            previous = [x.when for x in series if x.when < r.when]
            # The report belongs to the latest bilirubin if no earlier bilirubin came after it.
            recent = [s for s in jaundice if not previous or s.when > previous[-1]]
            if recent:
                report = {"type": "symptom", "text": recent[-1].text, "date": recent[-1].when.isoformat()}
                out.append(
                    from_catalogue(
                        kb, "lab-bilirubin-jaundice", (lab_evidence(r), report),
                        value=round(r.value, 1), uln=fmt_num(uln), symptom_date=recent[-1].when,
                        **when_params(ctx.as_of, r.when),
                    )
                )  # fmt: skip
                continue
        if ctcae is None or ctcae["grade"] < rule.min_grade:
            continue
        f = from_rule(
            kb, f"lab-{rule.id}", "lab", rule, (lab_evidence(r),), ctcae=ctcae, value=round(r.value, 1),
            uln=fmt_num(uln), ratio=fmt_num(round(r.value / uln, 1)), grade=ctcae["grade"],
            **when_params(ctx.as_of, r.when),
        )  # fmt: skip
        if ctcae["grade"] >= 4 and rule.grade4_severity != f.severity:
            f = dataclasses.replace(f, severity=rule.grade4_severity)
        out.append(f)
    return out
