"""Monitoring scheduler: phase, next due date and overdue status per test group.

The interval that applies to a test depends on where its date falls relative to the latest
"anchor" (treatment start, or a dose event the knowledge lists in `restart_sequence_on`):
initial interval until the dose has been stable for `stable_after`, the consolidation interval
for `consolidation_duration`, then maintenance. A group's "last" test is its last complete
panel. A course on hold keeps its schedule: on hold is not stopped.

Every due date (scheduled or a follow-up's) that falls on a day the clinic's calendar has no blood
tests (a weekend, a public holiday: knowledge `calendar`) moves to the working day before it, in
one place (`working_day`), so the worklist, the JSON, the pages, letters and reminders all show the
same date. SAFETY: never later.
"""

from __future__ import annotations

from datetime import date, timedelta

from azaguard import domain as d
from azaguard.engine.context import Context, maintenance_from, stable_from
from azaguard.engine.findings import from_catalogue
from azaguard.engine.labs import breaches
from azaguard.knowledge.model import Interval, WorkingCalendar


def interval_at(ctx: Context, when: date, anchor: date | None) -> Interval:
    s = ctx.kb.schedule
    if anchor is None or when < stable_from(ctx.kb, anchor):
        return s.initial_interval
    if when < maintenance_from(ctx.kb, anchor):
        return s.consolidation_interval
    if low_risk(ctx, anchor) and when >= s.low_risk.stable_for.add(maintenance_from(ctx.kb, anchor)):
        return s.low_risk.interval
    return s.maintenance_interval


def low_risk(ctx: Context, anchor: date) -> bool:
    """The protocol's extended interval applies (only when a protocol enables it): stable for
    `stable_for` in maintenance, no result beyond a threshold in that time, no renal impairment."""
    lr = ctx.kb.schedule.low_risk
    if not lr.enabled or ctx.course.phase != "stable":
        return False
    since = lr.stable_for.sub(ctx.as_of)
    if since < maintenance_from(ctx.kb, anchor):
        return False
    for rule in ctx.kb.thresholds:
        if any(
            r.when >= since and breaches(rule.comparator, r.value, rule.value) for r in ctx.labs.get(rule.analyte, ())
        ):
            return False
    return not ctx.active_conditions("renal-impairment")


def working_day(calendar: WorkingCalendar | None, due: date, earliest: date) -> date:
    """The due date to book: `due`, or - when the clinic's calendar has no blood tests that day
    (a weekend, a public holiday) - the last working day before it. SAFETY: a blood test is never
    moved later. Nor is it moved before `earliest` (the day it was asked for, the day after the last
    test): if no working day lies in between, `due` stays as it is. Without a calendar, `due`.

    The one place a due date is moved (the plan and every follow-up), so every output agrees."""
    if calendar is None:
        return due
    day = due
    while calendar.closed(day) is not None:
        if day <= earliest:
            return due
        day -= timedelta(days=1)
    return day


def missed_count(ctx: Context, due: date, anchor: date | None) -> int:
    """How many scheduled dates have passed without a test; the first missed one is `due`.

    Each later date follows the interval that applies on the previous one, so a patient who
    drifts from 2-weekly into monthly testing is not over-counted.
    """
    n, when = 0, due
    while when < ctx.as_of and n < 1000:
        n += 1
        when = interval_at(ctx, when, anchor).add(when)
    return n


def plan_monitoring(ctx: Context) -> tuple[d.MonitoringPlan, list[d.Finding]]:
    kb, course = ctx.kb, ctx.course
    findings: list[d.Finding] = []
    groups: list[d.MonitoringGroup] = []
    overdue_groups: dict[tuple[str, date, date | None, int], list[str]] = {}
    for name in kb.schedule.groups:
        dates = ctx.group_dates(name)
        last = dates[-1] if dates else None
        if course.phase in ("pre-treatment", "stopped"):
            due = ctx.as_of if (course.phase == "pre-treatment" and last is None) else None
            baseline = course.phase == "pre-treatment"
            groups.append(
                d.MonitoringGroup(
                    name, last, due, False, "baseline" if baseline else "", due_reason="baseline" if due else ""
                )
            )
            continue
        anchor = course.anchors[-1] if course.anchors else None
        # `base`: the day the due date counts from (a moved date stays after it)
        if anchor is None:  # start date unknown: the most frequent interval is the safe assumption
            interval = kb.schedule.initial_interval
            due, base = (interval.add(last), last) if last else (ctx.as_of, None)  # no test: due now
        elif last is None or (course.start is not None and last < course.start):
            # Nothing since starting: the first scheduled test stays due (a later increase does not hide it).
            interval = kb.schedule.initial_interval
            base = course.start or anchor
            due = interval.add(base)
        elif last < anchor:
            # A dose change restarts the 2-weekly sequence but never postpones a test that was
            # already due under the schedule in force before it.
            interval = kb.schedule.initial_interval
            before = max(a for a in course.anchors if a <= last)
            due, base = min(interval.add(anchor), interval_at(ctx, last, before).add(last)), last
        else:
            interval = interval_at(ctx, last, anchor)
            due, base = interval.add(last), last
        scheduled = due
        if base is not None:
            due = working_day(kb.calendar, scheduled, base + timedelta(days=1))
        overdue = ctx.as_of > due
        current_interval = interval_at(ctx, ctx.as_of, anchor)
        groups.append(
            d.MonitoringGroup(
                name, last, due, overdue, current_interval.label(), due_reason="schedule",
                moved_from=scheduled if due != scheduled else None,
            )
        )  # fmt: skip
        if not overdue:
            continue
        missed = missed_count(ctx, due, anchor)
        if missed > kb.schedule.missed_visits_critical:
            code = "monitoring-non-attendance"
        elif last is None or (course.start is not None and last < course.start):
            code = "monitoring-never-done"
        else:
            code = "monitoring-overdue"
        overdue_groups.setdefault((code, due, last, missed), []).append(name)
    # One finding per missed visit, naming every group that visit should have covered.
    for (code, due, last, missed), names in overdue_groups.items():
        group = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        ev = tuple(
            {"type": "schedule", "group": n, "last": last.isoformat() if last else None, "due": due.isoformat()}
            for n in names
        )
        findings.append(
            from_catalogue(
                kb,
                code,
                ev,
                group=group,
                due=due,
                days=(ctx.as_of - due).days,
                last=last or "never",
                missed=missed,
                start=course.start or "unknown",
            )
        )
    if course.phase != "stopped" and course.phase != "pre-treatment":
        findings.extend(_metabolites_due(ctx))
        findings.extend(_risk_review(ctx))
    calendar = kb.calendar.code if kb.calendar else None
    return d.MonitoringPlan(course.phase, tuple(groups), course.start, calendar=calendar), findings


def _metabolites_due(ctx: Context) -> list[d.Finding]:
    kb, course = ctx.kb, ctx.course
    m = kb.metabolites
    if course.start is None or not course.anchors:
        return []
    tests = sorted({r.when for a in ("tgn", "mmp") for r in ctx.labs.get(a, [])})
    last_test = tests[-1] if tests else None
    anchor, start = course.anchors[-1], course.start
    reason = None
    if last_test is None or last_test < anchor:
        if ctx.as_of >= m.check_after_change.add(anchor):
            if anchor != start:
                reason = f"not measured since the dose change on {anchor.isoformat()}"
            elif ctx.as_of >= m.check_after_start.add(start):
                reason = "never measured, more than 16 weeks after starting"
            else:
                reason = "4 weeks after starting"
    elif (
        last_test < m.check_after_start_from.add(start)
        and ctx.as_of >= m.check_after_start.add(start)
        and anchor == start
    ):
        reason = "12-16 weeks after starting"
    elif ctx.as_of >= m.check_every.add(last_test):
        reason = f"last measured {last_test.isoformat()}, a year or more ago"
    return [from_catalogue(kb, "monitoring-metabolites-due", reason=reason)] if reason else []


def _risk_review(ctx: Context) -> list[d.Finding]:
    """BSR 2025: toxicity risk factors reviewed at least yearly (from the course start)."""
    start = ctx.course.start
    if start is None:
        return []
    every = ctx.kb.schedule.risk_review.every
    due, n = every.add(start), 1
    while due < ctx.as_of:  # Interval.add ends at date.max, so this always stops
        n += 1
        due = every.add(start, n)
    lr = ctx.kb.schedule.low_risk
    extended = (
        f" The protocol's extended interval ({lr.interval.label()}) is on for low-risk patients." if lr.enabled else ""
    )
    return [from_catalogue(ctx.kb, "monitoring-risk-review", due=due, extended=extended)]
