"""Monitoring schedule (BSR/BHPR 2017 default): FBC, LFT and renal function 2-weekly until the dose
has been stable for 6 weeks, then monthly for 3 months, then every 12 weeks; a dose increase
restarts 2-weekly testing. Expected dates are computed here from that rule with calendar
arithmetic, independently of the engine. The schedule is tested without a working-day calendar
(holidays="none"): moving a due date off a weekend or bank holiday, which the engine does on top of
it, is tested in test_patient_language.py.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from conftest import codes, finding, run
from dateutil.relativedelta import relativedelta

from azaguard import domain as d
from azaguard.fhirbuild import BundleBuilder
from azaguard.knowledge import load_knowledge

KB = load_knowledge(holidays="none")  # the schedule alone (see the docstring)
START = date(2025, 1, 6)
GROUPS = ("FBC", "LFT", "renal")
ONE = timedelta(days=1)

TWO_WEEKS = relativedelta(weeks=2)
SIX_WEEKS = relativedelta(weeks=6)
ONE_MONTH = relativedelta(months=1)
THREE_MONTHS = relativedelta(months=3)
TWELVE_WEEKS = relativedelta(weeks=12)


def stable_from(anchor: date) -> date:
    return anchor + SIX_WEEKS


def maintenance_from(anchor: date) -> date:
    return stable_from(anchor) + THREE_MONTHS


def bsr_interval(when: date, anchor: date) -> relativedelta:
    """The interval that applies after a test on `when`, for a dose started or raised on `anchor`."""
    if when < stable_from(anchor):
        return TWO_WEEKS
    if when < maintenance_from(anchor):
        return ONE_MONTH
    return TWELVE_WEEKS


def bsr_due(last: date, anchor: date) -> date:
    return last + bsr_interval(last, anchor)


def missed_dates(first_due: date, anchor: date, count: int) -> list[date]:
    out = [first_due]
    while len(out) < count:
        out.append(out[-1] + bsr_interval(out[-1], anchor))
    return out


def patient(tests: tuple[date, ...] = (), dose: float | None = 150, start: date | None = START) -> BundleBuilder:
    b = BundleBuilder("sched", "1970-03-01", "male")
    b.condition("91637004", "Myasthenia gravis", "2024-06-01")
    b.weight(70, "2024-12-20")
    b.genotype("TPMT", "*1/*1", "2024-12-01")
    b.genotype("NUDT15", "*1/*1", "2024-12-01")
    b.bloods("2024-12-20")  # baseline, before the start
    if dose is not None:
        b.azathioprine(start, dose) if start else b.statement("Azathioprine 50 mg tablet", None, dose, rxnorm="1256")
    for t in tests:
        b.bloods(t)
    return b


def groups(a: d.Assessment) -> dict[str, d.MonitoringGroup]:
    return {g.name: g for g in a.monitoring.groups}


def monitoring(a: d.Assessment) -> list[d.Finding]:
    return [
        f
        for f in a.findings
        if f.category == "monitoring" and f.code not in ("monitoring-metabolites-due", "monitoring-risk-review")
    ]


def test_knowledge_schedule_is_bsr_2017() -> None:
    s = KB.schedule
    assert (s.initial_interval.weeks, s.initial_interval.months) == (2, 0)
    assert (s.stable_after.weeks, s.stable_after.months) == (6, 0)
    assert (s.consolidation_interval.months, s.consolidation_interval.weeks) == (1, 0)
    assert (s.consolidation_duration.months, s.consolidation_duration.weeks) == (3, 0)
    assert (s.maintenance_interval.weeks, s.maintenance_interval.months) == (12, 0)
    assert s.missed_visits_critical == 2
    assert set(s.groups) == set(GROUPS)


# ---------------------------------------------------------------- next due date and overdue, per boundary
LAST_TESTS = {
    "initiation": START + relativedelta(weeks=2),
    "day before stable": stable_from(START) - ONE,
    "stable 6 weeks": stable_from(START),
    "day before maintenance": maintenance_from(START) - ONE,
    "maintenance": maintenance_from(START),
    "later maintenance": maintenance_from(START) + relativedelta(days=40),
}


@pytest.mark.parametrize("label", list(LAST_TESTS))
def test_next_due_follows_the_interval_of_the_last_test(label: str) -> None:
    last = LAST_TESTS[label]
    a = run(patient((last,)), last + ONE, KB)
    for name in GROUPS:
        g = groups(a)[name]
        assert g.last == last
        assert g.next_due == bsr_due(last, START), name
        assert not g.overdue


def test_boundary_intervals_literal() -> None:
    """Day before 6 stable weeks: 2-weekly; at 6 weeks: monthly; after 3 monthly months: 12-weekly."""
    for last, gap in (
        (date(2025, 2, 16), date(2025, 3, 2)),  # 6 weeks after 6 Jan is 17 Feb
        (date(2025, 2, 17), date(2025, 3, 17)),
        (date(2025, 5, 16), date(2025, 6, 16)),  # maintenance from 17 May
        (date(2025, 5, 17), date(2025, 8, 9)),
    ):
        a = run(patient((last,)), last + ONE, KB)
        assert groups(a)["FBC"].next_due == gap, last


@pytest.mark.parametrize("label", list(LAST_TESTS))
def test_due_date_is_not_overdue_and_the_day_after_is(label: str) -> None:
    last = LAST_TESTS[label]
    due = bsr_due(last, START)
    on_due = run(patient((last,)), due, KB)
    assert not any(g.overdue for g in on_due.monitoring.groups)
    assert not monitoring(on_due)
    late = run(patient((last,)), due + ONE, KB)
    assert all(g.overdue for g in late.monitoring.groups)
    f = finding(late, "monitoring-overdue")
    assert f.severity == "warning" and f.category == "monitoring"
    assert f.action and f.sources
    assert all(n in f.message for n in GROUPS)


def test_only_the_late_group_is_overdue() -> None:
    last = LAST_TESTS["maintenance"]
    b = patient((last,))
    b.fbc(last + relativedelta(weeks=10), 6.0, 3.5, 250, lymph=1.8)  # FBC repeated later
    due = bsr_due(last, START)
    a = run(b, due + ONE, KB)
    assert not groups(a)["FBC"].overdue
    assert groups(a)["LFT"].overdue and groups(a)["renal"].overdue
    f = finding(a, "monitoring-overdue")
    assert "FBC" not in f.message and "LFT" in f.message


def test_2_weekly_until_the_last_increase_has_been_stable_for_6_weeks() -> None:
    """Titration 50 -> 100 -> 150 mg: 6 stable weeks count from the last increase, not the start."""
    b = BundleBuilder("sched", "1970-03-01", "male")
    b.condition("91637004", "Myasthenia gravis", "2024-06-01")
    b.weight(70, "2024-12-20")
    b.genotype("TPMT", "*1/*1", "2024-12-01")
    b.genotype("NUDT15", "*1/*1", "2024-12-01")
    b.azathioprine(START, 50, end=START + timedelta(weeks=2) - ONE)
    b.azathioprine(START + timedelta(weeks=2), 100, end=START + timedelta(weeks=4) - ONE)
    b.azathioprine(START + timedelta(weeks=4), 150)
    last_rise = START + timedelta(weeks=4)
    test_day = START + timedelta(weeks=9)  # 9 weeks after the start but only 5 after the last rise
    b.bloods(test_day)
    a = run(b, test_day + ONE, KB)
    assert a.monitoring.phase == "initiation"
    assert groups(a)["FBC"].next_due == test_day + TWO_WEEKS
    test_day2 = stable_from(last_rise)
    b.bloods(test_day2)
    a = run(b, test_day2 + ONE, KB)
    assert groups(a)["FBC"].next_due == test_day2 + ONE_MONTH


# ---------------------------------------------------------------- phases
def test_phase_pre_treatment() -> None:
    a = run(patient(dose=None), "2025-09-10", KB)
    assert a.monitoring.phase == "pre-treatment"
    for g in a.monitoring.groups:
        assert not g.overdue


def test_pre_treatment_without_baseline_is_due_now() -> None:
    b = BundleBuilder("sched", "1970-03-01", "male")
    a = run(b, "2025-09-10", KB)
    assert all(g.next_due == date(2025, 9, 10) and not g.overdue for g in a.monitoring.groups)


@pytest.mark.parametrize(
    ("as_of", "phase"),
    [
        (START, "initiation"),
        (stable_from(START) - ONE, "initiation"),
        (maintenance_from(START), "stable"),
        (maintenance_from(START) + relativedelta(months=6), "stable"),
    ],
)
def test_phase_on_treatment(as_of: date, phase: str) -> None:
    a = run(patient(), as_of, KB)
    assert a.monitoring.phase == phase
    assert a.monitoring.treatment_start == START


def test_phase_is_not_stable_before_the_maintenance_date() -> None:
    a = run(patient(), maintenance_from(START) - ONE, KB)
    assert a.monitoring.phase != "stable"


def test_phase_stopped_has_no_due_dates_and_nothing_overdue() -> None:
    b = BundleBuilder("sched", "1970-03-01", "male")
    b.condition("91637004", "Myasthenia gravis", "2024-06-01")
    b.weight(70, "2024-12-20")
    b.azathioprine(START, 150, end="2025-06-01")
    b.bloods("2025-05-01")
    a = run(b, "2025-12-01", KB)
    assert a.monitoring.phase == "stopped"
    assert all(g.next_due is None and not g.overdue for g in a.monitoring.groups)
    assert not monitoring(a)


# ---------------------------------------------------------------- dose changes
def dose_change(new_dose: float, change: date, tests: tuple[date, ...]) -> BundleBuilder:
    b = BundleBuilder("sched", "1970-03-01", "male")
    b.condition("91637004", "Myasthenia gravis", "2024-06-01")
    b.weight(70, "2024-12-20")
    b.genotype("TPMT", "*1/*1", "2024-12-01")
    b.genotype("NUDT15", "*1/*1", "2024-12-01")
    b.azathioprine("2024-01-08", 150, end=change - ONE)
    b.azathioprine(change, new_dose)
    for t in tests:
        b.bloods(t)
    return b


CHANGE = date(2025, 3, 3)
BEFORE_CHANGE = date(2025, 2, 10)  # a 12-weekly test in maintenance


def test_dose_increase_restarts_2_weekly_testing() -> None:
    a = run(dose_change(175, CHANGE, (BEFORE_CHANGE,)), CHANGE, KB)
    assert a.monitoring.phase == "dose-change"
    # the next test is 2 weeks after the increase, not 12 weeks after the last test
    assert groups(a)["FBC"].next_due == CHANGE + TWO_WEEKS
    after = CHANGE + relativedelta(weeks=2)
    a = run(dose_change(175, CHANGE, (BEFORE_CHANGE, after)), after + ONE, KB)
    assert groups(a)["FBC"].next_due == after + TWO_WEEKS
    late = run(dose_change(175, CHANGE, (BEFORE_CHANGE,)), CHANGE + TWO_WEEKS + ONE, KB)
    assert "monitoring-overdue" in codes(late)
    assert "monitoring-overdue" not in codes(run(dose_change(175, CHANGE, (BEFORE_CHANGE,)), CHANGE + TWO_WEEKS, KB))


def test_dose_increase_is_2_weekly_until_stable_6_weeks() -> None:
    last = stable_from(CHANGE) - ONE
    a = run(dose_change(175, CHANGE, (BEFORE_CHANGE, last)), last + ONE, KB)
    assert groups(a)["FBC"].next_due == last + TWO_WEEKS
    last = stable_from(CHANGE)
    a = run(dose_change(175, CHANGE, (BEFORE_CHANGE, last)), last + ONE, KB)
    due = groups(a)["FBC"].next_due
    assert due is not None and due > last + TWO_WEEKS


def test_before_the_increase_the_schedule_is_maintenance() -> None:
    """The record as it stood before the increase: one open-ended 150 mg statement."""
    b = BundleBuilder("sched", "1970-03-01", "male")
    b.condition("91637004", "Myasthenia gravis", "2024-06-01")
    b.weight(70, "2024-12-20")
    b.genotype("TPMT", "*1/*1", "2024-12-01")
    b.genotype("NUDT15", "*1/*1", "2024-12-01")
    b.azathioprine("2024-01-08", 150)
    b.bloods(BEFORE_CHANGE)
    a = run(b, CHANGE - ONE, KB)
    assert a.monitoring.phase == "stable"
    assert groups(a)["FBC"].next_due == BEFORE_CHANGE + TWELVE_WEEKS


def test_completed_course_assessed_inside_its_period_is_on_treatment() -> None:
    a = run(dose_change(175, CHANGE, (BEFORE_CHANGE,)), CHANGE - timedelta(days=7), KB)
    assert a.monitoring.phase == "stable"
    assert groups(a)["FBC"].next_due == BEFORE_CHANGE + TWELVE_WEEKS


def test_last_day_of_an_active_statement_is_still_on_treatment() -> None:
    b = BundleBuilder("sched", "1970-03-01", "male")
    b.condition("91637004", "Myasthenia gravis", "2024-06-01")
    b.weight(70, "2024-12-20")
    b.genotype("TPMT", "*1/*1", "2024-12-01")
    b.genotype("NUDT15", "*1/*1", "2024-12-01")
    b.statement("Azathioprine 50 mg tablet", "2024-01-08", 150, rxnorm="1256", status="active", end=CHANGE - ONE)
    b.azathioprine(CHANGE, 175)
    b.bloods(BEFORE_CHANGE)
    a = run(b, CHANGE - ONE, KB)
    assert a.monitoring.phase == "stable"
    assert a.dose.current_mg_per_day == 150


def test_dose_decrease_restarts_2_weekly_testing() -> None:
    """Practical Neurology 2020: tests fortnightly on starting *or changing* the dose (knowledge
    schedule.restart_sequence_on lists dose-reduction)."""
    assert "dose-reduction" in KB.schedule.restart_sequence_on
    after = CHANGE + relativedelta(weeks=2)
    a = run(dose_change(100, CHANGE, (BEFORE_CHANGE, after)), after + ONE, KB)
    assert a.monitoring.phase == "dose-change"
    assert groups(a)["FBC"].next_due == after + TWO_WEEKS
    a = run(dose_change(100, CHANGE, (BEFORE_CHANGE,)), CHANGE + TWO_WEEKS + ONE, KB)
    assert groups(a)["FBC"].next_due == CHANGE + TWO_WEEKS
    assert "monitoring-overdue" in codes(a)
    # the same dose continued is no change: maintenance stays 12-weekly
    a = run(dose_change(150, CHANGE, (BEFORE_CHANGE, after)), after + ONE, KB)
    assert groups(a)["FBC"].next_due == after + TWELVE_WEEKS


# ---------------------------------------------------------------- never done since the start
def test_never_done_after_start() -> None:
    first_due = START + TWO_WEEKS
    a = run(patient(), first_due, KB)
    assert not monitoring(a)
    assert all(g.next_due == first_due for g in a.monitoring.groups)
    a = run(patient(), first_due + ONE, KB)
    f = finding(a, "monitoring-never-done")
    assert f.severity == "warning" and f.category == "monitoring"
    assert all(g.overdue and g.last == date(2024, 12, 20) for g in a.monitoring.groups)


def test_never_done_without_any_baseline() -> None:
    b = BundleBuilder("sched", "1970-03-01", "male")
    b.condition("91637004", "Myasthenia gravis", "2024-06-01")
    b.weight(70, "2024-12-20")
    b.azathioprine(START, 100)
    a = run(b, START + TWO_WEEKS + ONE, KB)
    assert "monitoring-never-done" in codes(a)
    assert all(g.last is None for g in a.monitoring.groups)


# ---------------------------------------------------------------- non-attendance
@pytest.mark.parametrize("label", ["initiation", "stable 6 weeks", "maintenance"])
def test_two_missed_is_a_warning_three_is_critical(label: str) -> None:
    last = LAST_TESTS[label]
    d1, d2, d3 = missed_dates(bsr_due(last, START), START, 3)
    b = patient((last,))
    one = run(b, d1 + ONE, KB)
    assert finding(one, "monitoring-overdue").severity == "warning"
    assert "monitoring-non-attendance" not in codes(one)
    two = run(b, d2 + ONE, KB)
    assert "monitoring-non-attendance" not in codes(two)
    assert finding(two, "monitoring-overdue").severity == "warning"
    still_two = run(b, d3, KB)
    assert "monitoring-non-attendance" not in codes(still_two)
    three = run(b, d3 + ONE, KB)
    f = finding(three, "monitoring-non-attendance")
    assert f.severity == "critical" and f.category == "monitoring"
    assert f.action and f.sources
    assert "monitoring-overdue" not in codes(three)


def test_non_attendance_literal_12_weekly() -> None:
    last = date(2025, 6, 2)  # maintenance for a course started 6 Jan 2025
    b = patient((last,))
    # due 25 Aug, 17 Nov, 9 Feb 2026
    assert "monitoring-non-attendance" not in codes(run(b, date(2026, 2, 9), KB))
    assert "monitoring-non-attendance" in codes(run(b, date(2026, 2, 10), KB))


# ---------------------------------------------------------------- metabolite checks
def test_metabolites_suggested_4_weeks_after_start() -> None:
    four = START + relativedelta(weeks=4)
    tests = (START + TWO_WEEKS, four - ONE)
    assert "monitoring-metabolites-due" not in codes(run(patient(tests), four - ONE, KB))
    f = finding(run(patient(tests), four, KB), "monitoring-metabolites-due")
    assert f.severity == "info"


def test_metabolites_due_after_a_dose_increase_until_measured() -> None:
    change = CHANGE
    b = dose_change(175, change, (BEFORE_CHANGE,))
    b.metabolites(300, 2000, date(2024, 6, 1))  # measured during the earlier dose
    four = change + relativedelta(weeks=4)
    assert "monitoring-metabolites-due" not in codes(run(b, four - ONE, KB))
    assert "monitoring-metabolites-due" in codes(run(b, four, KB))
    b.metabolites(320, 2100, four)
    assert "monitoring-metabolites-due" not in codes(run(b, four + ONE, KB))


def test_metabolites_not_due_again_for_a_year_after_the_12_to_16_week_check() -> None:
    b = patient((START + TWO_WEEKS,))
    b.metabolites(300, 2000, START + relativedelta(weeks=4))
    measured = START + relativedelta(weeks=14)
    b.metabolites(310, 2100, measured)
    assert "monitoring-metabolites-due" not in codes(run(b, measured + relativedelta(weeks=2), KB))
    assert "monitoring-metabolites-due" not in codes(run(b, measured + relativedelta(months=12) - ONE, KB))
    assert "monitoring-metabolites-due" in codes(run(b, measured + relativedelta(months=12), KB))


def test_metabolites_measured_before_week_4_are_due_again_at_12_to_16_weeks() -> None:
    b = patient((START + TWO_WEEKS,))
    b.metabolites(300, 2000, START + relativedelta(weeks=3))
    assert "monitoring-metabolites-due" not in codes(run(b, START + relativedelta(weeks=16) - ONE, KB))
    assert "monitoring-metabolites-due" in codes(run(b, START + relativedelta(weeks=16), KB))


def test_metabolites_due_at_12_to_16_weeks_after_an_on_time_4_week_check() -> None:
    b = patient((START + TWO_WEEKS,))
    b.metabolites(300, 2000, START + relativedelta(weeks=4))
    assert "monitoring-metabolites-due" in codes(run(b, START + relativedelta(weeks=16), KB))
