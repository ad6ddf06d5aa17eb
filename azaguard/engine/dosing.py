"""Dose calculator: weight x target mg/kg, then PGx, interactions and organ function, then tablets.

Order matters for safety: every cap is applied to the unrounded range and the upper bound
is rounded *down* to a tablet step, so rounding can never lift a dose above a cap.
"""

from __future__ import annotations

import math
from datetime import timedelta
from functools import reduce

from azaguard import domain as d
from azaguard.engine.context import Context
from azaguard.engine.findings import from_catalogue, med_evidence


def tablet_step(strengths: list[float]) -> float:
    """The finest dose increment whole tablets can make (gcd of the strengths)."""
    scaled = [round(s * 1000) for s in strengths]
    return reduce(math.gcd, scaled) / 1000


def _metaboliser(category: str | None) -> str:
    return {"poor": "poor", "normal": "normal"}.get(category or "", "intermediate")


def compute_dose(ctx: Context) -> tuple[d.DosePlan, list[d.Finding]]:
    kb, course = ctx.kb, ctx.course
    dosing = kb.dosing
    findings: list[d.Finding] = []
    current = course.current_dose
    current_mgkg = ctx.mg_per_kg(current)
    basis: list[str] = []

    weight = ctx.weight.value if ctx.weight else None
    category = ctx.pgx.get("category")
    interactions = [
        (ix, med)
        for med in ctx.current_medicines()
        for ix in kb.interactions
        if med.drug in ix.drugs and (ix.avoid or ix.dose_factor is not None)
    ]
    reason_avoid = None
    blocking = [
        rule.finding for key, rule in kb.conditions.items() if rule.blocks_dosing and ctx.active_conditions(key)
    ]
    if kb.allergy.blocks_dosing and any(a.drug in kb.allergy.drugs for a in ctx.record.allergies):
        blocking.append(kb.allergy.finding)
    if course.phase == "stopped":
        reason_avoid = "azathioprine has been stopped"
    elif blocking:
        reason_avoid = "contraindicated (" + ", ".join(blocking) + ")"
    elif category == "poor":
        reason_avoid = "poor metaboliser: choose a non-thiopurine"
    elif any(ix.avoid for ix, _ in interactions):
        names = ", ".join(sorted({med.name for ix, med in interactions if ix.avoid}))
        reason_avoid = f"must not be combined with {names}"
    if reason_avoid:
        basis.append(reason_avoid)
        return d.DosePlan(current, _round(current_mgkg), None, (), tuple(basis)), findings
    if weight is None:
        basis.append("weight unknown: mg/kg dose cannot be calculated")
        return d.DosePlan(current, None, None, (), tuple(basis)), findings
    if category is None:
        basis.append("TPMT status unknown: no dose is recommended until it is known")
        return d.DosePlan(current, _round(current_mgkg), None, (), tuple(basis)), findings

    cap_day = min(dosing.max_mg_per_kg * weight, dosing.max_mg_per_day)
    low = dosing.target_mg_per_kg.low * weight
    high = min(dosing.target_mg_per_kg.high * weight, cap_day)
    target = dosing.target_mg_per_kg
    basis.append(f"{weight:g} kg x {target.low:g}-{target.high:g} mg/kg/day, max {cap_day:g} mg/day")
    reasons: list[str] = []
    frac = kb.pgx.combined[category].fraction
    assert frac is not None
    if category != "normal":
        low, high = low * frac.low, high * frac.high
        reasons.append(f"{category} metaboliser ({frac.low:.0%}-{frac.high:.0%} of normal)")
    factor = min((ix.dose_factor for ix, _ in interactions if ix.dose_factor is not None), default=None)
    if factor is not None:
        low, high = low * factor, high * factor
        names = ", ".join(sorted({med.name for ix, med in interactions if ix.dose_factor is not None}))
        reasons.append(f"{names}: {factor:.0%} of the dose")
    basis.extend(reasons)

    egfr = ctx.latest("egfr")
    renal = (egfr is not None and egfr.value < dosing.renal.egfr_below) or bool(
        ctx.active_conditions("renal-impairment")
    )
    hepatic = bool(ctx.active_conditions("liver-disease"))
    if renal or hepatic:
        high = min(high, max(low, 0.0))
    step = tablet_step(dosing.tablet_strengths_mg)
    # Pregnancy caps the range too, but an over-dose is reported by the reproduction check.
    high_before_pregnancy_r = math.floor(high / step + 1e-9) * step
    if ctx.pregnant():
        pregnancy_cap = kb.reproduction.pregnancy_max_mg_per_kg * weight
        if pregnancy_cap < high:
            high = pregnancy_cap
            basis.append(f"pregnant: at most {kb.reproduction.pregnancy_max_mg_per_kg:g} mg/kg/day")
    low = min(low, high)
    high_r = math.floor(high / step + 1e-9) * step
    if high_r < step:
        findings.append(from_catalogue(kb, "dosing-below-smallest-tablet", cap=round(high, 1), step=step))
        basis.append("capped dose is below the smallest tablet")
        return d.DosePlan(current, _round(current_mgkg), None, (), tuple(basis)), findings
    low_r = min(max(math.floor(low / step + 0.5) * step, step), high_r)
    recommended = d.DoseRange(low_r, high_r)
    if renal:
        findings.append(
            from_catalogue(
                kb, "dosing-renal", egfr=f"{egfr.value:g}" if egfr else "renal impairment recorded", high=high_r
            )
        )
        basis.append("renal impairment: held at the low end")
    if hepatic:
        findings.append(from_catalogue(kb, "dosing-hepatic", high=high_r))
        basis.append("hepatic impairment: held at the low end")

    interval_weeks = getattr(dosing.step_interval_weeks, _metaboliser(category))
    plan = _plan(ctx, recommended, step, interval_weeks)

    # Compare what the patient takes (or is about to take) with the recommendation.
    for dose, label, entry in (
        (current, "current", course.active_entry),
        (course.proposed_dose, "proposed", course.draft_entry),
    ):
        if dose is None:
            continue
        ev = (med_evidence(entry),) if entry else ()
        mgkg = ctx.mg_per_kg(dose)
        if dose > high_r and dose <= high_before_pregnancy_r:
            continue  # only the pregnancy limit is exceeded: reproduction-pregnancy-dose-high says so
        if dose > high_r:
            if reasons or renal or hepatic:
                why = "; ".join(
                    reasons + (["renal impairment"] if renal else []) + (["hepatic impairment"] if hepatic else [])
                )
                findings.append(
                    from_catalogue(
                        kb,
                        "dosing-above-recommended",
                        ev,
                        which=label.capitalize(),
                        current=dose,
                        high=high_r,
                        reason=why,
                    )
                )
            elif dose > cap_day + 1e-9:
                findings.append(
                    from_catalogue(
                        kb,
                        "dosing-above-maximum",
                        ev,
                        which=label.capitalize(),
                        current=dose,
                        mgkg=round(mgkg or 0.0, 2),
                        max_mgkg=dosing.max_mg_per_kg,
                        max_day=dosing.max_mg_per_day,
                        high=high_r,
                    )
                )
            else:
                findings.append(
                    from_catalogue(
                        kb,
                        "dosing-above-target",
                        ev,
                        which=label.capitalize(),
                        current=dose,
                        mgkg=round(mgkg or 0.0, 2),
                        low=low_r,
                        high=high_r,
                    )
                )
        elif label == "current" and dose < low_r:
            findings.append(
                from_catalogue(
                    kb,
                    "dosing-below-target",
                    ev,
                    current=dose,
                    low=low_r,
                    high=high_r,
                    step=dosing.step_mg,
                    weeks=interval_weeks,
                    target=low_r,
                )
            )
    if course.phase == "pre-treatment":
        steps = ", then ".join(f"{p.mg_per_day:g} mg/day from {p.start.isoformat()}" for p in plan)
        findings.append(from_catalogue(kb, "dosing-start-plan", steps=steps, low=low_r, high=high_r))
    return d.DosePlan(current, _round(current_mgkg), recommended, tuple(plan), tuple(basis)), findings


def _plan(ctx: Context, rec: d.DoseRange, step: float, interval_weeks: int) -> list[d.DoseStep]:
    """Titration from the current (or starting) dose to the low end of the target range."""
    dosing = ctx.kb.dosing
    target = rec.low
    current = ctx.course.current_dose
    when = ctx.as_of
    if current is None:
        if ctx.course.phase == "stopped":
            return []
        dose = min(dosing.start_mg_per_day, target)
    elif current > rec.high:
        return [d.DoseStep(when, rec.high)]
    elif current >= target:
        return [d.DoseStep(when, current)]
    else:
        dose = current
    dose = max(step, math.floor(dose / step + 1e-9) * step) if current is None else dose
    plan = [d.DoseStep(when, dose)]
    while dose < target:
        when = when + timedelta(weeks=interval_weeks)
        dose = min(dose + dosing.step_mg, target)
        plan.append(d.DoseStep(when, dose))
    return plan


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)
