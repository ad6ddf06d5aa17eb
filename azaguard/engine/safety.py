"""Checks about the whole patient: interactions, contraindications, reproduction, vaccines, symptoms."""

from __future__ import annotations

import dataclasses
from typing import Any

from azaguard import domain as d
from azaguard.engine.context import Context
from azaguard.engine.findings import fmt_num, from_catalogue, from_rule, lab_evidence, med_evidence


def check_interactions(ctx: Context) -> list[d.Finding]:
    kb = ctx.kb
    if ctx.course.phase == "stopped" and ctx.course.draft_entry is None:
        return []  # azathioprine is history: co-prescriptions no longer interact
    out: list[d.Finding] = []
    unknown: list[d.MedicationEntry] = []
    for med in ctx.current_medicines():
        if med.drug is None:
            unknown.append(med)
            continue
        for ix in kb.interactions:
            if med.drug not in ix.drugs:
                continue
            prefix = "About to be prescribed: " if med.status in ("draft", "intended") else ""
            f = from_rule(
                kb, f"interaction-{ix.id}", "interaction", ix, (med_evidence(med),), prefix=prefix, drug=med.name
            )
            excess = ctx.dose_excess.get(med.name) if ix.dose_factor is not None else None
            if excess is not None:
                f = _with_dose_excess(ctx, f, excess)
            out.append(f)
    if unknown:
        names = ", ".join(sorted({m.name for m in unknown}))
        out.append(
            from_catalogue(kb, "data-unrecognised-medicine", tuple(med_evidence(m) for m in unknown), name=names)
        )
    return out


def _with_dose_excess(ctx: Context, f: d.Finding, excess: dict[str, Any]) -> d.Finding:
    """Fold "the dose is above the interaction's limit" into the interaction finding itself."""
    text = ctx.kb.findings["interaction-dose-excess"]
    before = excess.get("before")
    params = {
        "current": fmt_num(float(excess["current"])),
        "high": fmt_num(float(excess["high"])),
        "factor": f"{excess['factor']:.0%}",
        "before": fmt_num(float(before)) if before is not None else "unknown",
        "drug": excess["drug"],
    }
    return dataclasses.replace(
        f,
        severity="critical",
        message=f.message + " " + text.message.format_map(params),
        action=text.action.format_map(params) + " " + f.action,
        sources=tuple(dict.fromkeys(f.sources + ctx.kb.cite(text.sources))),
        follow_up=f.follow_up,
    )


def check_contraindications(ctx: Context) -> list[d.Finding]:
    kb = ctx.kb
    out = []
    seen: set[str] = set()
    for key, rule in kb.conditions.items():
        for cond in ctx.active_conditions(key):
            if rule.finding in seen:
                continue
            if rule.finding == "caution-infection" and "contraindication-active-infection" in seen:
                continue  # the serious-infection finding already covers it
            seen.add(rule.finding)
            ev: dict[str, Any] = {"type": "condition", "text": cond.text}
            if cond.code:
                ev["snomed"] = cond.code
            params: dict[str, Any] = {"condition": cond.text}
            if rule.finding == "reproduction-planning":
                params["max"] = kb.reproduction.pregnancy_max_mg_per_kg
            out.append(from_catalogue(kb, rule.finding, (ev,), **params))
    for allergy in ctx.record.allergies:
        if allergy.drug in kb.allergy.drugs and kb.allergy.finding not in seen:
            seen.add(kb.allergy.finding)
            out.append(
                from_catalogue(
                    kb,
                    kb.allergy.finding,
                    ({"type": "allergy", "text": allergy.text},),
                    substance=allergy.text or allergy.drug,
                )
            )
    return out


def check_reproduction(ctx: Context) -> list[d.Finding]:
    kb = ctx.kb
    rep = kb.reproduction
    out = []
    dose = ctx.course.current_dose if ctx.course.current_dose is not None else ctx.course.proposed_dose
    mgkg = ctx.mg_per_kg(dose)
    preg = ctx.latest_status("pregnancy")
    if preg and preg.value:
        ev: tuple[dict[str, Any], ...] = ({"type": "status", "kind": "pregnancy", "date": preg.when.isoformat()},)
        out.append(from_catalogue(kb, "reproduction-pregnancy", ev, date=preg.when, max=rep.pregnancy_max_mg_per_kg))
        if mgkg is not None and mgkg > rep.pregnancy_max_mg_per_kg + 1e-9:
            cap = rep.pregnancy_max_mg_per_kg * (ctx.weight.value if ctx.weight else 0.0)
            out.append(
                from_catalogue(
                    kb,
                    "reproduction-pregnancy-dose-high",
                    ev,
                    mgkg=round(mgkg, 2),
                    max=rep.pregnancy_max_mg_per_kg,
                    cap=round(cap),
                )
            )
    bf = ctx.latest_status("breastfeeding")
    if bf and bf.value:
        ev = ({"type": "status", "kind": "breastfeeding", "date": bf.when.isoformat()},)
        out.append(
            from_catalogue(kb, "reproduction-breastfeeding", ev, date=bf.when, max=rep.breastfeeding_max_mg_per_day)
        )
        if dose is not None and dose > rep.breastfeeding_max_mg_per_day:
            out.append(
                from_catalogue(
                    kb, "reproduction-breastfeeding-dose-high", ev, current=dose, max=rep.breastfeeding_max_mg_per_day
                )
            )
    plan = ctx.latest_status("pregnancy-intention")
    if plan and plan.value and not (preg and preg.value) and not any(f.code == "reproduction-planning" for f in out):
        out.append(from_catalogue(kb, "reproduction-planning", max=rep.pregnancy_max_mg_per_kg))
    return out


def _immunosuppressed_state(ctx: Context) -> str | None:
    """Why a live vaccine is unsafe now, or None if it is not."""
    course = ctx.course
    washout = ctx.kb.vaccines.live_washout
    if course.phase in ("initiation", "dose-change", "stable"):
        return "taking azathioprine"
    if course.phase == "on-hold":
        return "azathioprine is on hold (withheld, to be resumed)"
    if course.stopped_on is not None and washout.add(course.stopped_on) > ctx.as_of:
        return f"within {washout.label()} of stopping azathioprine (stopped {course.stopped_on.isoformat()})"
    if course.phase == "stopped" and course.stopped_on is None:
        return "azathioprine was stopped on an unknown date (the wash-out cannot be confirmed)"
    if course.phase == "pre-treatment" and course.draft_entry is not None:
        return "pre-treatment"
    return None


def check_vaccines(ctx: Context) -> list[d.Finding]:
    kb = ctx.kb
    out: list[d.Finding] = []
    state = _immunosuppressed_state(ctx)
    for v in ctx.record.vaccinations:
        if v.live_unknown and (v.when is None or v.when <= ctx.as_of or v.status == "ordered"):
            ev0: tuple[dict[str, Any], ...] = (
                {"type": "vaccine", "name": v.name, "status": v.status, "date": v.when.isoformat() if v.when else None},
            )
            out.append(
                from_catalogue(
                    kb, "vaccine-formulation-unknown", ev0, vaccine=v.name, status=v.status,
                    date=v.when.isoformat() if v.when else "undated",
                )
            )  # fmt: skip
            continue
        if not v.live or (v.when is not None and v.when > ctx.as_of and v.status == "given"):
            continue
        ev: tuple[dict[str, Any], ...] = (
            {"type": "vaccine", "name": v.name, "status": v.status, "date": v.when.isoformat() if v.when else None},
        )
        if v.status == "ordered":
            if state == "pre-treatment":
                out.append(from_catalogue(kb, "vaccine-live-before-start", ev, vaccine=v.name))
            elif state:
                out.append(from_catalogue(kb, "vaccine-live-ordered", ev, vaccine=v.name, state=state))
        elif v.when is not None and _was_immunosuppressed_on(ctx, v.when):
            out.append(
                from_catalogue(
                    kb,
                    "vaccine-live-given",
                    ev,
                    vaccine=v.name,
                    date=v.when,
                    state="on azathioprine or within the wash-out period",
                )
            )
    if ctx.course.phase == "stopped":
        return out
    given = [v for v in ctx.record.vaccinations if v.status == "given" and v.when is not None and v.when <= ctx.as_of]
    flu = [
        v
        for v in given
        if v.vaccine == "influenza" and v.when and kb.vaccines.influenza_interval.add(v.when) > ctx.as_of
    ]
    if ctx.course.phase != "pre-treatment":  # before starting, screening-vaccines-before-start covers these
        if not flu:
            out.append(from_catalogue(kb, "vaccine-influenza-due"))
        if not any(v.vaccine == "pneumococcal" for v in given):
            out.append(from_catalogue(kb, "vaccine-pneumococcal-missing"))
    if not any(v.vaccine == "zoster-recombinant" for v in given):
        out.append(from_catalogue(kb, "vaccine-shingrix"))
    return out


def _was_immunosuppressed_on(ctx: Context, when: object) -> bool:
    washout = ctx.kb.vaccines.live_washout
    for m in ctx.record.medications:
        if m.drug != "azathioprine" or m.status not in ("active", "on-hold", "stopped", "unknown") or m.start is None:
            continue
        end = m.end if m.end is not None else (ctx.as_of if m.status != "stopped" else None)
        if end is None:
            continue
        if m.start <= when <= washout.add(end):  # type: ignore[operator]
            return True
    return False


def check_symptoms(ctx: Context) -> list[d.Finding]:
    kb = ctx.kb
    out: list[d.Finding] = []
    items = kb.symptoms.items
    seen: set[str] = set()
    for s in reversed([s for s in ctx.record.symptoms if s.when <= ctx.as_of]):
        spec = items.get(s.key) if s.key else None
        group = spec.group if spec else "FBC"
        answered_by = tuple(spec.answered_by) if spec else ()
        # Only a result that answers the question counts (fever: neutrophils), on or after the report.
        if ctx.answered_after(group, answered_by, s.when, same_day=True):
            continue
        name = (s.key or s.text).replace("-", " ")
        code_key = f"symptom-{s.key or 'unrecognised'}"
        if code_key in seen:
            continue
        seen.add(code_key)
        if spec is not None and spec.marrow:
            template = "symptom-marrow"
        elif spec is not None and spec.group == "LFT":
            template = "symptom-liver"
        else:
            template = "symptom-other"
        out.append(
            from_catalogue(
                kb,
                template,
                ({"type": "symptom", "text": s.text, "date": s.when.isoformat()},),
                severity=spec.severity if spec else "warning",
                as_code=code_key,
                symptom=name,
                symptom_cap=name[:1].upper() + name[1:],
                date=s.when,
                follow_up=d.FollowUpSpec(group, spec.follow_up_days if spec else 0, answered_by),
            )
        )

    out.extend(_neutropenic_fever(ctx))
    out.extend(_hypersensitivity(ctx))
    if ctx.course.phase != "stopped":
        out.append(from_catalogue(kb, "symptom-guidance"))
    return out


def _hypersensitivity(ctx: Context) -> list[d.Finding]:
    """Reaction symptoms in the first weeks after starting or restarting: possible hypersensitivity.

    Raised from the reports themselves, so a normal blood count never closes it; only a
    clinician's review does (the worklist keeps it until then).
    """
    found = ctx.reaction_reports()
    if found is None:
        return []
    event, start, reports = found
    names = ", ".join(sorted({(s.key or s.text).replace("-", " ") for s in reports}))
    last = max(s.when for s in reports)
    ev = tuple({"type": "symptom", "text": s.text, "date": s.when.isoformat()} for s in reports)
    return [
        from_catalogue(
            ctx.kb, "symptom-hypersensitivity", ev, symptoms=names, date=last, days=(last - start).days,
            event=event, start=start,
        )
    ]  # fmt: skip


def _neutropenic_fever(ctx: Context) -> list[d.Finding]:
    """Fever whose answering blood count (the first on or after it, if it is still the latest) is low.

    The usual sequence - fever reported, urgent FBC the same day - is exactly the emergency, so
    an FBC that "answers" a fever report must not silence this check.
    """
    kb = ctx.kb
    neut = ctx.labs.get("neutrophils", [])
    if not neut:
        return []
    latest = neut[-1]
    if latest.value >= kb.symptoms.neutropenic_fever_below:
        return []
    fevers = [s for s in ctx.record.symptoms if s.key == "fever" and s.when <= ctx.as_of]
    previous = [r for r in neut if r.when < latest.when]
    window_start = previous[-1].when if previous else None
    for fever in reversed(fevers):
        # The fever belongs to the latest count if no earlier count came after it.
        if window_start is None or fever.when > window_start:
            return [
                from_catalogue(
                    kb,
                    "symptom-neutropenic-fever",
                    (lab_evidence(latest), {"type": "symptom", "text": fever.text, "date": fever.when.isoformat()}),
                    value=round(latest.value, 2),
                )
            ]
    return []
