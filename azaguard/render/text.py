"""Assessment -> a readable report for the clinic team, most urgent first."""

from __future__ import annotations

import textwrap

from azaguard import domain as d

_MARK = {"critical": "CRITICAL", "warning": "WARNING ", "info": "info    "}


def _wrap(text: str, indent: str) -> str:
    return textwrap.fill(text, width=100, initial_indent=indent, subsequent_indent=indent)


def render_text(a: d.Assessment, show_sources: bool = True) -> str:
    lines = [
        f"azaguard assessment - patient {a.patient_id} - as of {a.as_of.isoformat()}",
        f"Knowledge: {a.knowledge_version}",
        f"Protocol: {a.protocol['name']} v{a.protocol['version']}",
    ]
    t = a.treatment
    if t.state == "on-hold":
        since = t.since.isoformat() if t.since else "an unrecorded date"
        held = f", held dose {t.held_dose_mg_per_day:g} mg/day" if t.held_dose_mg_per_day is not None else ""
        lines.append(f"Treatment: ON HOLD since {since}{held}" + (f" - {t.reason}" if t.reason else ""))
    else:
        since = f" since {t.since.isoformat()}" if t.since else ""
        lines.append(f"Treatment: {t.state}{since}")
    counts = {s: sum(1 for f in a.findings if f.severity == s) for s in ("critical", "warning", "info")}
    lines.append(f"Findings: {counts['critical']} critical, {counts['warning']} warning, {counts['info']} info")
    lines.append("")
    for f in a.findings:
        grade = f" [CTCAE v{f.ctcae['version']} grade {f.ctcae['grade']}]" if f.ctcae else ""
        lines.append(f"[{_MARK[f.severity]}] {f.category}/{f.code}{grade}")
        lines.append(_wrap(f.message, "    "))
        lines.append(_wrap(f"Action: {f.action}", "    "))
        if show_sources:
            lines.append(_wrap("Sources: " + "; ".join(s.split(":")[0] for s in f.sources), "    "))
        lines.append("")
    dose = a.dose
    lines.append("Dose")
    cur = "not recorded" if dose.current_mg_per_day is None else f"{dose.current_mg_per_day:g} mg/day"
    if dose.current_mg_per_kg_per_day is not None:
        cur += f" ({dose.current_mg_per_kg_per_day:g} mg/kg/day)"
    lines.append(f"    {'held (not taken while on hold)' if a.treatment.state == 'on-hold' else 'current'}: {cur}")
    rec = dose.recommended
    lines.append(
        "    recommended: "
        + (
            "none - azathioprine not recommended or not calculable"
            if rec is None
            else f"{rec.low:g}-{rec.high:g} mg/day"
        )
    )
    for b in dose.basis:
        lines.append(_wrap(f"- {b}", "      "))
    if dose.plan:
        lines.append("    plan: " + ", ".join(f"from {s.start.isoformat()} {s.mg_per_day:g} mg/day" for s in dose.plan))
    if dose.restart_criteria:
        lines.append("    restart criteria (instead of a titration plan while on hold):")
        for c in dose.restart_criteria:
            lines.append(_wrap(f"- {c}", "      "))
    lines.append("")
    lines.append(f"Monitoring (phase: {a.monitoring.phase})")
    for g in a.monitoring.groups:
        status = "OVERDUE" if g.overdue else "ok"
        last = g.last.isoformat() if g.last else "never"
        due = g.next_due.isoformat() if g.next_due else "-"
        every = f", every {g.interval}" if g.interval and g.interval != "baseline" else ""
        why = " (repeat asked for)" if g.due_reason == "follow-up" else ""
        if g.moved_from:
            why += f" (brought forward from {g.moved_from.isoformat()}: not a working day)"
        lines.append(f"    {g.name:<6} last {last:<10}  next due {due:<10}  {status}{every}{why}")
    for u in a.monitoring.follow_ups:
        state = {"open": "awaiting result", "overdue": "OVERDUE", "dismissed": "dropped"}[u.state]
        extra = f" - {u.dismissed_reason}" if u.dismissed_reason else ""
        lines.append(
            _wrap(
                f"follow-up {u.group} by {u.due.isoformat()} ({state}{extra}): asked for on "
                f"{u.since.isoformat()} by {u.finding_code}",
                "    ",
            )
        )
    return "\n".join(lines) + "\n"
