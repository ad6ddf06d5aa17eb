"""Follow-ups: the repeat tests findings ask for, closed only by a result that answers them.

A finding's action ("repeat LFT", "FBC within 2 weeks") carries its repeat test as data
(knowledge `follow_up`: group and days). Each becomes a follow-up from the finding's date. It is
answered only by a result of the right test dated after the finding (a complete panel, or the
analytes the rule names); recording a review does not answer it. A clinician may drop one with
a reason (PatientRecord.dismissed_follow_ups): it is then still listed, as dismissed, and no
longer drives the schedule. Open follow-ups pull each group's next due date forward, so the
plan never shows a test 12 weeks away while an action asks for it next week.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Literal

from azaguard import domain as d
from azaguard.engine.context import Context
from azaguard.engine.findings import from_catalogue, from_rule, lab_evidence, when_params
from azaguard.engine.labs import breaches
from azaguard.engine.schedule import working_day

_RANK = d.SEVERITY_RANK
State = Literal["open", "overdue", "dismissed"]


def _past_breaches(ctx: Context, findings: list[d.Finding]) -> list[d.Finding]:
    """A threshold result that asked for a repeat keeps asking after a later *partial* panel.

    A lone normal neutrophil count clears the current finding (thresholds read the latest value)
    but is not the full blood count the action asked for: the repeat stays open until a result that
    answers it. Only the newest breach of each rule counts, and only when no current finding
    already carries that rule's follow-up.
    """
    current = {f.code for f in findings}
    out = []
    for rule in ctx.kb.thresholds:
        code = f"lab-{rule.id}"
        if rule.follow_up is None or code in current:
            continue
        breach = next(
            (r for r in reversed(ctx.labs.get(rule.analyte, [])) if breaches(rule.comparator, r.value, rule.value)),
            None,
        )
        if breach is None:
            continue
        out.append(
            from_rule(
                ctx.kb, code, "lab", rule, (lab_evidence(breach),), value=round(breach.value, 2), limit=rule.value,
                **when_params(ctx.as_of, breach.when),
            )
        )  # fmt: skip
    return out


def follow_ups(ctx: Context, findings: list[d.Finding]) -> list[d.FollowUp]:
    """One follow-up per (group, date): several findings on one panel ask for one repeat."""
    if ctx.course.phase == "stopped":
        return []  # no monitoring after stopping (knowledge: "no monitoring needed" rules)
    dismissed = {key: reason for key, reason, when in ctx.record.dismissed_follow_ups if when <= ctx.as_of}
    merged: dict[str, d.FollowUp] = {}
    for f in [*findings, *_past_breaches(ctx, findings)]:
        spec, since = f.follow_up, f.date
        if spec is None or since is None:
            continue
        if ctx.answered_after(spec.group, spec.answered_by, since, same_day=spec.days == 0):
            continue
        key = f"{spec.group}|{since.isoformat()}" + (f"|{'+'.join(spec.answered_by)}" if spec.answered_by else "")
        asked = since + timedelta(days=spec.days)
        # A weekend or holiday: the working day before (never later), but not back onto the day of
        # the result that asked for it unless it was asked for that same day (a same-day test
        # answers only a same-day follow-up).
        earliest = since if spec.days == 0 else since + timedelta(days=1)
        due = working_day(ctx.kb.calendar, asked, earliest)
        state: State = "dismissed" if key in dismissed else ("overdue" if due < ctx.as_of else "open")
        item = d.FollowUp(
            key=key, group=spec.group, since=since, due=due, finding_code=f.code, reason=f.message,
            severity=f.severity, state=state,
            answered_by=spec.answered_by, dismissed_reason=dismissed.get(key, ""),
            moved_from=asked if due != asked else None,
        )  # fmt: skip
        old = merged.get(key)
        if old is None:
            merged[key] = item
        else:  # keep the earliest due date and the most severe reason
            worse = item if _RANK[item.severity] < _RANK[old.severity] else old
            first = item if item.due < old.due else old
            merged[key] = dataclasses.replace(
                worse, due=first.due, moved_from=first.moved_from, state=_state(ctx, old, item)
            )
    return sorted(merged.values(), key=lambda u: (u.due, u.group))


def _state(ctx: Context, a: d.FollowUp, b: d.FollowUp) -> State:
    if a.state == "dismissed":
        return "dismissed"
    return "overdue" if min(a.due, b.due) < ctx.as_of else "open"


def apply_follow_ups(
    ctx: Context, plan: d.MonitoringPlan, items: list[d.FollowUp], findings: list[d.Finding]
) -> tuple[d.MonitoringPlan, list[d.Finding]]:
    """Pull each group's next due date to its earliest open follow-up; raise overdue ones."""
    live = [u for u in items if u.state != "dismissed"]
    groups = []
    for g in plan.groups:
        mine = [u for u in live if u.group == g.name]
        if not mine:
            groups.append(g)
            continue
        earliest = min(mine, key=lambda u: u.due)
        first = earliest.due
        if g.next_due is None or first < g.next_due:
            groups.append(
                dataclasses.replace(
                    g, next_due=first, follow_up_due=first, due_reason="follow-up", overdue=ctx.as_of > first,
                    moved_from=earliest.moved_from,
                )
            )  # fmt: skip
        else:
            groups.append(dataclasses.replace(g, follow_up_due=first))
    symptom_codes = {f.code for f in findings if f.category == "symptom"}
    out = []
    for u in live:
        # A symptom report is itself the open question (it says "urgent FBC today"); its follow-up
        # drives the plan but raises no second finding.
        if u.state != "overdue" or u.finding_code in symptom_codes:
            continue
        ev = (
            {
                "type": "follow-up",
                "key": u.key,
                "group": u.group,
                "date": u.since.isoformat(),
                "due": u.due.isoformat(),
            },
        )
        out.append(
            from_catalogue(
                ctx.kb, "monitoring-follow-up-overdue", ev, severity="critical" if u.severity == "critical" else None,
                group=u.group, since=u.since, due=u.due, days=(ctx.as_of - u.due).days, reason=u.reason,
            )
        )  # fmt: skip
    return dataclasses.replace(plan, groups=tuple(groups), follow_ups=tuple(items)), out
