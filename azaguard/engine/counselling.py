"""Screening before treatment, time-to-benefit counselling, metabolites and data quality."""

from __future__ import annotations

from datetime import date
from typing import Any

from azaguard import domain as d
from azaguard.engine.context import Context
from azaguard.engine.findings import from_catalogue, lab_evidence


def check_screening(ctx: Context) -> list[d.Finding]:
    """Baseline items before azathioprine starts; the list itself is knowledge (safety.toml)."""
    kb = ctx.kb
    if ctx.course.phase != "pre-treatment":
        return []
    done = {key for key, when in ctx.record.screening_done if when <= ctx.as_of}
    given = {v.vaccine for v in ctx.record.vaccinations if v.status == "given" and v.when and v.when <= ctx.as_of}
    out = []
    for item in kb.screening:
        if item.sex and ctx.record.sex != item.sex:
            continue
        satisfied = (
            (item.group is not None and bool(ctx.group_dates(item.group)))
            or bool(done & set(item.tests))
            or bool(given & set(item.vaccines))
            or bool(item.vaccines_all and set(item.vaccines_all) <= given)
        )
        if not satisfied:
            out.append(from_catalogue(kb, item.finding))
    ind = ctx.indication()
    if ind is not None and not kb.indications[ind].licensed_uk:
        out.append(from_catalogue(kb, "screening-off-label", indication=kb.indications[ind].label))
    return out


def check_screening_results(ctx: Context) -> list[d.Finding]:
    """Screening results that need action, in any phase (a positive HBsAg matters on treatment too)."""
    kb = ctx.kb
    latest: dict[str, tuple[date, bool]] = {}
    for key, when, positive in ctx.record.screening_results:
        if when <= ctx.as_of and (key not in latest or latest[key][0] <= when):
            latest[key] = (when, positive)
    out = []
    for rule in kb.screening_results:
        if rule.test not in latest:
            continue
        when, positive = latest[rule.test]
        if positive == (rule.when == "positive"):
            ev: tuple[dict[str, Any], ...] = (
                {"type": "screening", "test": rule.test, "date": when.isoformat(), "positive": positive},
            )
            label = f"{rule.test.replace('_', ' ')} {'positive' if positive else 'negative'} on {when.isoformat()}"
            out.append(from_catalogue(kb, rule.finding, ev, date=when, condition=label))
    return out


def check_efficacy(ctx: Context) -> list[d.Finding]:
    kb = ctx.kb
    course = ctx.course
    if course.phase == "stopped":
        return []
    ind_key = ctx.indication()
    ind = kb.indications.get(ind_key) if ind_key else None
    ttb_text = ind.time_to_benefit if ind else kb.efficacy.default_time_to_benefit
    ttb = ind.time_to_benefit_months if ind else kb.efficacy.default_time_to_benefit_months
    label = ind.label if ind else "Indication not recorded"
    months = 0
    if course.start is not None:
        months = (
            (ctx.as_of.year - course.start.year) * 12
            + ctx.as_of.month
            - course.start.month
            - (ctx.as_of.day < course.start.day)
        )
    seed_note = f"Note: {kb.efficacy.seed_claim} Current guidance differs: {ttb_text}"
    if course.phase == "pre-treatment" or months < ttb.high:
        duration = "not started yet" if course.phase == "pre-treatment" else f"on azathioprine for {months} months"
        return [
            from_catalogue(
                kb,
                "efficacy-time-to-benefit",
                indication=label,
                duration=duration,
                time_to_benefit=ttb_text,
                seed_note=seed_note,
            )
        ]
    if kb.efficacy.counsel_until.add(course.start) > ctx.as_of if course.start else False:
        return [from_catalogue(kb, "efficacy-review-response", months=months)]
    return []


def check_metabolites(ctx: Context) -> list[d.Finding]:
    kb = ctx.kb
    m = kb.metabolites
    tgns, mmps = ctx.labs.get("tgn", []), ctx.labs.get("mmp", [])
    if not tgns and not mmps:
        return []
    if not tgns or not mmps or tgns[-1].when != mmps[-1].when:
        # Patterns (shunting, non-adherence) need a pair measured together; each metabolite alone
        # is still read against its own range (a lone high 6-TGN is a myelotoxicity risk).
        return _lone_metabolites(ctx, tgns[-1] if tgns else None, mmps[-1] if mmps else None)
    tgn, mmp = tgns[-1], mmps[-1]
    ev: tuple[dict[str, Any], ...] = (
        {"type": "lab", "analyte": "tgn", "value": tgn.value, "date": tgn.when.isoformat()},
        {"type": "lab", "analyte": "mmp", "value": mmp.value, "date": mmp.when.isoformat()},
    )
    params: dict[str, Any] = {"tgn": round(tgn.value), "mmp": round(mmp.value), "date": tgn.when}
    absent = (tgn.below_detection or tgn.value == 0) and (mmp.below_detection or mmp.value == 0)
    ratio = mmp.value / tgn.value if tgn.value > 0 else float("inf")
    if absent:
        code = "metabolite-non-adherence"
    elif tgn.value > m.tgn_high or mmp.value > m.mmp_high:
        code = "metabolite-supratherapeutic" if tgn.value >= m.tgn_low else "metabolite-shunting"
    elif tgn.value < m.tgn_low and ratio > m.mmp_tgn_ratio:
        code = "metabolite-shunting"
    elif tgn.value < m.tgn_low:
        code = "metabolite-subtherapeutic"
    else:
        code = "metabolite-therapeutic"
    return [from_catalogue(kb, code, ev, ratio=round(ratio, 1) if ratio != float("inf") else "n/a", **params)]


def _lone_metabolites(ctx: Context, tgn: d.LabResult | None, mmp: d.LabResult | None) -> list[d.Finding]:
    kb, m = ctx.kb, ctx.kb.metabolites
    out = []
    if tgn is not None and not tgn.below_detection:
        ev = (lab_evidence(tgn),)
        params: dict[str, Any] = {"tgn": round(tgn.value), "date": tgn.when, "low": m.tgn_low, "high": m.tgn_high}
        if tgn.value > m.tgn_high:
            out.append(from_catalogue(kb, "metabolite-tgn-high", ev, **params))
        elif tgn.value < m.tgn_low:
            out.append(from_catalogue(kb, "metabolite-tgn-low", ev, **params))
        else:
            out.append(from_catalogue(kb, "metabolite-tgn-in-range", ev, **params))
    if mmp is not None and mmp.value > m.mmp_high:
        params = {"mmp": round(mmp.value), "date": mmp.when, "high": m.mmp_high}
        out.append(from_catalogue(kb, "metabolite-mmp-high", (lab_evidence(mmp),), **params))
    return out


def check_data_quality(ctx: Context) -> list[d.Finding]:
    kb = ctx.kb
    out = []
    latest_rejects: dict[tuple[str, str], d.RejectedResult] = {}
    for r in ctx.record.rejected:
        if r.when <= ctx.as_of:
            key = (r.analyte, r.reason)
            if key not in latest_rejects or latest_rejects[key].when <= r.when:
                latest_rejects[key] = r
    for (analyte, reason), r in sorted(latest_rejects.items()):
        label = kb.analytes[analyte].label if analyte in kb.analytes else analyte
        ev: tuple[dict[str, Any], ...] = (
            {"type": "rejected", "analyte": analyte, "date": r.when.isoformat(), "id": r.source_id},
        )
        if reason == "unknown-unit":
            out.append(from_catalogue(kb, "data-unknown-unit", ev, label=label, date=r.when, unit=r.unit))
        else:
            out.append(from_catalogue(kb, "data-missing-value", ev, label=label, date=r.when, reason=r.detail))
    if ctx.future_count:
        out.append(from_catalogue(kb, "data-future-dated", count=ctx.future_count, as_of=ctx.as_of))
    treating = ctx.course.treating or ctx.course.draft_entry is not None
    if treating or ctx.course.phase == "pre-treatment":
        if ctx.weight is None:
            out.append(from_catalogue(kb, "data-missing-weight"))
        if ctx.indication() is None:
            other = ctx.other_indication()
            if other is None:
                out.append(from_catalogue(kb, "data-missing-indication"))
            else:
                out.append(
                    from_catalogue(kb, "indication-outside-protocol", indication=kb.other_indications[other].label)
                )
    dose = ctx.course.held_dose if ctx.course.on_hold else ctx.course.current_dose
    if ctx.course.active_entry is not None and dose is None:
        out.append(from_catalogue(kb, "data-missing-dose"))
    if ctx.course.active_entry is not None and not ctx.course.start_known:
        out.append(from_catalogue(kb, "data-missing-start-date"))
    out.extend(_incomplete_panels(ctx))
    out.extend(_deprecated_codes(ctx))
    return out


def _deprecated_codes(ctx: Context) -> list[d.Finding]:
    """A latest result sent with a superseded code (race-based eGFR equations) is still used, and said."""
    out = []
    for analyte, spec in ctx.kb.analytes.items():
        if not spec.deprecated_loinc:
            continue
        latest = ctx.latest(analyte)
        if latest is not None and latest.code in spec.deprecated_loinc:
            out.append(
                from_catalogue(
                    ctx.kb, "data-deprecated-code", (lab_evidence(latest),), label=spec.label, loinc=latest.code,
                    date=latest.when,
                )
            )  # fmt: skip
    return out


def _incomplete_panels(ctx: Context) -> list[d.Finding]:
    """One finding per group whose latest results do not make a complete panel: the schedule
    does not count them, and the missing members need requesting (never one review per analyte)."""
    kb = ctx.kb
    out = []
    for group, panel in kb.schedule.panels.items():
        days = ctx.group_days.get(group)
        if not days:
            continue
        latest = max(days)
        if ctx.complete(group, latest):
            continue
        have = days[latest]
        missing = [
            " or ".join(kb.analytes[a].label for a in alt) for alt in panel.require if not any(a in have for a in alt)
        ]
        complete = ctx.group_dates(group)
        required = ", ".join(" or ".join(kb.analytes[a].label for a in alt) for alt in panel.require)
        ev = tuple(lab_evidence(r) for a in sorted(have) for r in ctx.labs.get(a, ()) if r.when == latest)
        out.append(
            from_catalogue(
                kb, "data-incomplete-panel", ev, group=group, date=latest, missing=", ".join(missing),
                last=complete[-1].isoformat() if complete else "never", required=required,
            )
        )  # fmt: skip
    return out
