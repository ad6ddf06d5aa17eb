"""Dose calculator in stages: blockers -> base range -> modifiers -> rounding -> comparison -> plan.

Order matters for safety: every cap is applied to the unrounded range and the upper bound is
rounded *down* to a tablet step, so rounding can never lift a dose above a cap. A course on hold
gets restart criteria instead of a titration plan; a plan never re-escalates after a reduction,
a restart, an interaction cap or a critical result without a clinician's recorded dose change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta
from functools import reduce
from typing import Any

from azaguard import domain as d
from azaguard.engine.context import Context
from azaguard.engine.findings import fmt_num, from_catalogue, med_evidence
from azaguard.engine.labs import breaches
from azaguard.engine.pgx import stable_on_treatment
from azaguard.knowledge.model import Interaction


def tablet_step(strengths: list[float]) -> float:
    """The finest dose increment whole tablets can make (gcd of the strengths)."""
    scaled = [round(s * 1000) for s in strengths]
    return reduce(math.gcd, scaled) / 1000


def _metaboliser(category: str | None) -> str:
    return {"poor": "poor", "normal": "normal"}.get(category or "", "intermediate")


@dataclass
class _Range:
    """The unrounded range as it passes through the stages, with why each cap applies."""

    low: float
    high: float
    cap_day: float
    reasons: list[str] = field(default_factory=list)  # modifiers that lowered the range
    interaction_caps: dict[str, dict[str, Any]] = field(default_factory=dict)  # drug name -> facts
    renal: bool = False
    hepatic: bool = False
    high_before_pregnancy: float = 0.0


def compute_dose(ctx: Context) -> tuple[d.DosePlan, list[d.Finding]]:
    kb, course = ctx.kb, ctx.course
    findings: list[d.Finding] = []
    current = course.current_dose if not course.on_hold else course.held_dose
    current_mgkg = ctx.mg_per_kg(current)
    restart = tuple(kb.schedule.restart.criteria) if course.on_hold else ()
    basis: list[str] = []
    if course.on_hold:
        findings.append(_hold_finding(ctx))
        basis.append("on hold: restart only when the restart criteria are met")

    interactions = _dose_interactions(ctx)
    blocked = _blocker(ctx, interactions)
    if blocked:
        basis.append(blocked)
        return d.DosePlan(current, _round(current_mgkg), None, (), tuple(basis), restart), findings
    weight = ctx.weight.value if ctx.weight else None
    category = ctx.pgx.get("category")
    if weight is None:
        basis.append("weight unknown: mg/kg dose cannot be calculated")
        return d.DosePlan(current, None, None, (), tuple(basis), restart), findings
    if category is None:
        basis.append("TPMT status unknown: no dose is recommended until it is known")
        return d.DosePlan(current, _round(current_mgkg), None, (), tuple(basis), restart), findings

    rng = _base_range(ctx, weight, basis)
    _apply_pgx(ctx, rng, category, basis)
    _apply_interactions(ctx, rng, interactions)
    basis.extend(rng.reasons)
    _apply_organs(ctx, rng)
    _apply_pregnancy(ctx, rng, weight, basis)
    step = tablet_step(kb.dosing.tablet_strengths_mg)
    rec = _rounded(rng, step)
    if rec is None:
        findings.append(from_catalogue(kb, "dosing-below-smallest-tablet", cap=round(rng.high, 1), step=step))
        basis.append("capped dose is below the smallest tablet")
        return d.DosePlan(current, _round(current_mgkg), None, (), tuple(basis), restart), findings
    findings.extend(_organ_findings(ctx, rng, rec, basis))
    findings.extend(_compare(ctx, rng, rec, step, category, current))
    plan = [] if course.on_hold else _plan(ctx, rec, step, category)
    hold_back = _escalation_block(ctx, rng)
    if hold_back and course.current_dose is not None and course.current_dose < rec.low and not course.on_hold:
        plan = [d.DoseStep(ctx.as_of, course.current_dose)]
        findings.append(from_catalogue(kb, "dosing-no-escalation", why=hold_back, current=course.current_dose))
    elif course.current_dose is not None and course.current_dose < rec.low and not course.on_hold:
        findings.append(_below_target(ctx, rec, category))
    if course.phase == "pre-treatment":
        steps = ", then ".join(f"{p.mg_per_day:g} mg/day from {p.start.isoformat()}" for p in plan)
        findings.append(from_catalogue(kb, "dosing-start-plan", steps=steps, low=rec.low, high=rec.high))
    return d.DosePlan(current, _round(current_mgkg), rec, tuple(plan), tuple(basis), restart), findings


# ---------------------------------------------------------------- stages


def _dose_interactions(ctx: Context) -> list[tuple[Interaction, d.MedicationEntry]]:
    return [
        (ix, med)
        for med in ctx.current_medicines()
        for ix in ctx.kb.interactions
        if med.drug in ix.drugs and (ix.avoid or ix.dose_factor is not None)
    ]


def _blocker(ctx: Context, interactions: list[tuple[Interaction, d.MedicationEntry]]) -> str | None:
    """Why no dose can be recommended at all, or None."""
    kb = ctx.kb
    blocking = [
        rule.finding for key, rule in kb.conditions.items() if rule.blocks_dosing and ctx.active_conditions(key)
    ]
    if kb.allergy.blocks_dosing and any(a.drug in kb.allergy.drugs for a in ctx.record.allergies):
        blocking.append(kb.allergy.finding)
    if ctx.course.phase == "stopped":
        return "azathioprine has been stopped"
    if blocking:
        return "contraindicated (" + ", ".join(blocking) + ")"
    if ctx.pgx.get("category") == "poor":
        return "poor metaboliser: choose a non-thiopurine"
    if any(ix.avoid for ix, _ in interactions):
        names = ", ".join(sorted({med.name for ix, med in interactions if ix.avoid}))
        return f"must not be combined with {names}"
    return None


def _base_range(ctx: Context, weight: float, basis: list[str]) -> _Range:
    dosing = ctx.kb.dosing
    cap_day = min(dosing.max_mg_per_kg * weight, dosing.max_mg_per_day)
    target = dosing.target_mg_per_kg
    basis.append(f"{weight:g} kg x {target.low:g}-{target.high:g} mg/kg/day, max {cap_day:g} mg/day")
    return _Range(target.low * weight, min(target.high * weight, cap_day), cap_day)


def _apply_pgx(ctx: Context, rng: _Range, category: str, basis: list[str]) -> None:
    """CPIC's fractions are starting doses. A patient already stable on a tolerated dose keeps
    it (the range reaches up to it, never above the normal range): no cut for the genotype alone,
    and never a titration *up* beyond the reduced range either."""
    if category == "normal":
        return
    frac = ctx.kb.pgx.combined[category].fraction  # type: ignore[index]
    assert frac is not None
    normal_high = rng.high
    rng.low, rng.high = rng.low * frac.low, rng.high * frac.high
    rng.reasons.append(f"{category} metaboliser ({frac.low:.0%}-{frac.high:.0%} of normal)")
    current = ctx.course.current_dose
    if stable_on_treatment(ctx) and current is not None and current > rng.high:
        rng.high = min(current, normal_high)
        basis.append(f"already stable on {current:g} mg/day: CPIC's reduction is for starting doses")


def _apply_interactions(ctx: Context, rng: _Range, interactions: list[tuple[Interaction, d.MedicationEntry]]) -> None:
    """A dose factor applies to the patient's own dose before the combination started (SmPC:
    "one quarter of the original dose"); only when that is unknown, to the weight-based range."""
    course = ctx.course
    for ix, med in interactions:
        if ix.dose_factor is None:
            continue
        if med.status in ("draft", "intended"):
            before = course.current_dose if course.current_dose is not None else course.held_dose
        elif med.start is not None and course.start is not None and med.start > course.start:
            before = course.dose_on(med.start - timedelta(days=1))
        else:
            before = None
        if before is not None:
            cap = before * ix.dose_factor
            rng.low, rng.high = min(rng.low, cap), min(rng.high, cap)
            rng.reasons.append(f"{med.name}: {ix.dose_factor:.0%} of the {fmt_num(before)} mg/day taken before it")
        else:
            rng.low, rng.high = rng.low * ix.dose_factor, rng.high * ix.dose_factor
            rng.reasons.append(f"{med.name}: {ix.dose_factor:.0%} of the dose (dose before it unknown)")
        rng.interaction_caps[med.name] = {"factor": ix.dose_factor, "before": before, "drug": med.name}


def _apply_organs(ctx: Context, rng: _Range) -> None:
    """A confirmed low eGFR (not a single result) or recorded renal/hepatic impairment holds the
    dose at the low end."""
    renal_rule = ctx.kb.dosing.renal
    egfrs = ctx.labs.get("egfr", [])
    last = {r.when: r for r in egfrs}  # one value per day: the last reported
    recent = list(last.values())[-renal_rule.sustained_results :]
    sustained = len(recent) == renal_rule.sustained_results and all(r.value < renal_rule.egfr_below for r in recent)
    rng.renal = sustained or bool(ctx.active_conditions("renal-impairment"))
    rng.hepatic = bool(ctx.active_conditions("liver-disease"))
    if rng.renal or rng.hepatic:
        rng.high = min(rng.high, max(rng.low, 0.0))


def _apply_pregnancy(ctx: Context, rng: _Range, weight: float, basis: list[str]) -> None:
    """Pregnancy caps the range too, but an over-dose is reported by the reproduction check."""
    step = tablet_step(ctx.kb.dosing.tablet_strengths_mg)
    rng.high_before_pregnancy = math.floor(rng.high / step + 1e-9) * step
    if ctx.pregnant():
        limit = ctx.kb.reproduction.pregnancy_max_mg_per_kg
        if limit * weight < rng.high:
            rng.high = limit * weight
            basis.append(f"pregnant: at most {limit:g} mg/kg/day")
    rng.low = min(rng.low, rng.high)


def _rounded(rng: _Range, step: float) -> d.DoseRange | None:
    high = math.floor(rng.high / step + 1e-9) * step
    if high < step:
        return None
    low = min(max(math.floor(rng.low / step + 0.5) * step, step), high)
    return d.DoseRange(low, high)


def _organ_findings(ctx: Context, rng: _Range, rec: d.DoseRange, basis: list[str]) -> list[d.Finding]:
    out = []
    if rng.renal:
        egfr = ctx.latest("egfr")
        shown = f"{egfr.value:g} on {egfr.when.isoformat()}, confirmed" if egfr else "renal impairment recorded"
        out.append(from_catalogue(ctx.kb, "dosing-renal", egfr=shown, high=rec.high))
        basis.append("renal impairment: held at the low end")
    if rng.hepatic:
        out.append(from_catalogue(ctx.kb, "dosing-hepatic", high=rec.high))
        basis.append("hepatic impairment: held at the low end")
    return out


def _compare(
    ctx: Context, rng: _Range, rec: d.DoseRange, step: float, category: str, current: float | None
) -> list[d.Finding]:
    """What the patient takes (or is about to take, or resumes after a hold) against the range."""
    kb, course = ctx.kb, ctx.course
    out: list[d.Finding] = []
    which_current = "Held" if course.on_hold else "Current"
    for dose, label, entry in (
        (current, which_current, course.active_entry),
        (course.proposed_dose, "Proposed", course.draft_entry),
    ):
        if dose is None or dose <= rec.high:
            continue
        if dose <= rng.high_before_pregnancy:
            continue  # only the pregnancy limit is exceeded: reproduction-pregnancy-dose-high says so
        ev = (med_evidence(entry),) if entry else ()
        mgkg = ctx.mg_per_kg(dose)
        if rng.interaction_caps:
            # One problem, one finding: the interaction finding carries the dose excess.
            for name, facts in rng.interaction_caps.items():
                ctx.dose_excess[name] = {**facts, "current": dose, "high": rec.high}
            continue
        if rng.reasons or rng.renal or rng.hepatic:
            why = "; ".join(
                rng.reasons
                + (["renal impairment"] if rng.renal else [])
                + (["hepatic impairment"] if rng.hepatic else [])
            )
            out.append(
                from_catalogue(kb, "dosing-above-recommended", ev, which=label, current=dose, high=rec.high, reason=why)
            )
        elif dose > rng.cap_day + 1e-9:
            out.append(
                from_catalogue(
                    kb, "dosing-above-maximum", ev, which=label, current=dose, mgkg=round(mgkg or 0.0, 2),
                    max_mgkg=kb.dosing.max_mg_per_kg, max_day=kb.dosing.max_mg_per_day, high=rec.high,
                )
            )  # fmt: skip
        else:
            out.append(
                from_catalogue(
                    kb, "dosing-above-target", ev, which=label, current=dose, mgkg=round(mgkg or 0.0, 2),
                    low=rec.low, high=rec.high,
                )
            )  # fmt: skip
    return out


def _escalation_block(ctx: Context, rng: _Range) -> str | None:
    """Why the plan must not go up without a clinician's decision, or None."""
    course = ctx.course
    event = course.last_event
    if event is not None and event[1] == "dose-reduction":
        return f"the dose was reduced on {event[0].isoformat()}"
    if event is not None and event[1] == "restart-after-hold":
        return f"azathioprine was restarted after a hold on {event[0].isoformat()}"
    if rng.interaction_caps:
        return "an interaction caps the dose (" + ", ".join(sorted(rng.interaction_caps)) + ")"
    critical = [
        t.analyte
        for t in ctx.kb.thresholds
        if t.severity == "critical"
        and (r := ctx.latest(t.analyte)) is not None
        and breaches(t.comparator, r.value, t.value)
    ]
    if critical:
        return "a critical result is open (" + ", ".join(ctx.kb.analytes[a].label for a in critical) + ")"
    if ctx.reaction_reports() is not None:
        return "a possible hypersensitivity reaction was reported"
    if ctx.unanswered_red_flags():
        return "a red-flag symptom is not yet answered by a blood test"
    if ctx.active_conditions("active-infection") or ctx.active_conditions("infection"):
        return "an infection is recorded"
    if _shunting_with_liver_injury(ctx):
        return "metabolite shunting with raised liver tests"
    return None


def _shunting_with_liver_injury(ctx: Context) -> bool:
    """High 6-MMP with a transaminase beyond its threshold: a higher dose makes it worse."""
    m = ctx.kb.metabolites
    mmp = ctx.latest("mmp")
    if mmp is None or mmp.value <= m.mmp_high:
        return False
    liver = [t for t in ctx.kb.thresholds if t.analyte in ("alt", "ast")]
    return any((r := ctx.latest(t.analyte)) is not None and breaches(t.comparator, r.value, t.value) for t in liver)


def _below_target(ctx: Context, rec: d.DoseRange, category: str) -> d.Finding:
    course, dosing = ctx.course, ctx.kb.dosing
    ev = (med_evidence(course.active_entry),) if course.active_entry else ()
    return from_catalogue(
        ctx.kb, "dosing-below-target", ev, current=course.current_dose, low=rec.low, high=rec.high,
        step=dosing.step_mg, weeks=getattr(dosing.step_interval_weeks, _metaboliser(category)), target=rec.low,
    )  # fmt: skip


def _hold_finding(ctx: Context) -> d.Finding:
    c = ctx.course
    entry = c.active_entry
    ev = (med_evidence(entry),) if entry else ()
    return from_catalogue(
        ctx.kb, "treatment-on-hold", ev,
        since=c.hold_since.isoformat() if c.hold_since else "an unrecorded date",
        reason=f" ({c.hold_reason})" if c.hold_reason else "",
        dose=f"{fmt_num(c.held_dose)} mg/day" if c.held_dose is not None else "not recorded",
    )  # fmt: skip


def _plan(ctx: Context, rec: d.DoseRange, step: float, category: str) -> list[d.DoseStep]:
    """Titration from the current (or starting) dose to the low end of the target range."""
    dosing = ctx.kb.dosing
    interval_weeks = getattr(dosing.step_interval_weeks, _metaboliser(category))
    target = rec.low
    current = ctx.course.current_dose
    when = ctx.as_of
    if current is None:
        dose = min(dosing.start_mg_per_day, target)
        dose = max(step, math.floor(dose / step + 1e-9) * step)
    elif current > rec.high:
        return [d.DoseStep(when, rec.high)]
    elif current >= target:
        return [d.DoseStep(when, current)]
    else:
        dose = current
    plan = [d.DoseStep(when, dose)]
    while dose < target:
        when = when + timedelta(weeks=interval_weeks)
        dose = min(dose + dosing.step_mg, target)
        plan.append(d.DoseStep(when, dose))
    return plan


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)
