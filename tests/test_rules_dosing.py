"""Dose calculator: weight-based range, tablet rounding, caps, PGx and interaction reductions,
renal/hepatic hold, titration plan and the comparison of the current/proposed dose with the range.

Expected ranges come from the clinical rule (2.0-2.5 mg/kg/day, never above 3 mg/kg/day or
200 mg/day, whole 25 mg steps; low end to the nearest tablet, high end rounded down), not from
the engine's output.
"""

from __future__ import annotations

import itertools
import math
from datetime import date, timedelta

import pytest
from conftest import codes, finding, run

from azaguard import domain as d
from azaguard.fhirbuild import BundleBuilder
from azaguard.knowledge import load_knowledge

KB = load_knowledge()
AS_OF = date(2025, 9, 10)
NORMAL = (1.0, 1.0)
IM = (0.3, 0.8)
COMPOUND = (0.2, 0.5)


def expected_range(
    weight: float, frac: tuple[float, float] = NORMAL, factor: float = 1.0, hold_low: bool = False
) -> tuple[float, float] | None:
    low = 2.0 * weight * frac[0] * factor
    high = min(2.5 * weight, 3.0 * weight, 200.0) * frac[1] * factor
    if hold_low:
        high = min(high, low)
    high_r = math.floor(high / 25 + 1e-9) * 25
    if high_r < 25:
        return None
    low_r = min(max(math.floor(low / 25 + 0.5) * 25, 25), high_r)
    return float(low_r), float(high_r)


def patient(
    weight: float | None = 70,
    tpmt: str | None = "*1/*1",
    nudt15: str | None = "*1/*1",
    dose: float | None = None,
    start: str = "2025-01-06",
    egfr: float = 90,
    sex: str = "male",
    egfr_before: float | None = None,
) -> BundleBuilder:
    """Pre-treatment when dose is None, otherwise on `dose` mg/day since `start`."""
    b = BundleBuilder("dose", "1985-03-01", sex)
    b.condition("91637004", "Myasthenia gravis", "2024-06-01")
    if weight is not None:
        b.weight(weight, "2025-08-01")
    if tpmt:
        b.genotype("TPMT", tpmt, "2024-12-01")
    if nudt15:
        b.genotype("NUDT15", nudt15, "2024-12-01")
    if egfr_before is not None:  # an earlier eGFR, a week before: a fall confirmed on two results
        b.renal("2025-08-25", 75, egfr=egfr_before)
    b.fbc("2025-09-01", 6.0, 3.5, 250, lymph=1.8).lft("2025-09-01", 25, albumin=42).renal("2025-09-01", 75, egfr=egfr)
    if dose is not None:
        b.azathioprine(start, dose)
    return b


def rec(a: d.Assessment) -> tuple[float, float] | None:
    r = a.dose.recommended
    return None if r is None else (r.low, r.high)


def test_knowledge_dosing_is_the_mandated_default() -> None:
    dz = KB.dosing
    assert (dz.target_mg_per_kg.low, dz.target_mg_per_kg.high) == (2.0, 2.5)
    assert dz.max_mg_per_kg == 3.0 and dz.max_mg_per_day == 200
    assert dz.start_mg_per_day == 50 and dz.step_mg == 50
    assert dz.step_interval_weeks.normal == 2 and dz.step_interval_weeks.intermediate == 4


# ---------------------------------------------------------------- weight-based range, rounding and caps
def test_70_kg_normal_metaboliser_gets_150_to_175() -> None:
    assert rec(run(patient(70), AS_OF, KB)) == (150, 175)


def test_100_kg_is_capped_at_200_mg_per_day() -> None:
    r = rec(run(patient(100), AS_OF, KB))
    assert r is not None and r[1] == 200  # 2.5 mg/kg would be 250


@pytest.mark.parametrize("weight", [40, 50, 55, 60, 63, 70, 77, 80, 85, 90, 100, 120, 150])
def test_range_for_weight(weight: float) -> None:
    a = run(patient(weight), AS_OF, KB)
    r = rec(a)
    assert r is not None and r == expected_range(weight)
    low, high = r
    assert low % 25 == 0 and high % 25 == 0
    assert low <= high
    assert high <= 200 and high <= 3.0 * weight and high <= 2.5 * weight


def test_current_mg_per_kg_is_reported() -> None:
    a = run(patient(70, dose=150), AS_OF, KB)
    assert a.dose.current_mg_per_day == 150
    assert a.dose.current_mg_per_kg_per_day == pytest.approx(150 / 70, abs=0.01)


# ---------------------------------------------------------------- PGx
@pytest.mark.parametrize(
    ("tpmt", "nudt15", "frac"),
    [("*1/*3A", "*1/*1", IM), ("*1/*1", "*1/*3", IM), ("*1/*3A", "*1/*3", COMPOUND)],
)
@pytest.mark.parametrize("weight", [50, 70, 100])
def test_intermediate_and_compound_ranges(tpmt: str, nudt15: str, frac: tuple[float, float], weight: float) -> None:
    a = run(patient(weight, tpmt, nudt15), AS_OF, KB)
    assert rec(a) == expected_range(weight, frac)
    assert a.dose.recommended is not None
    assert a.dose.recommended.high <= min(2.5 * weight, 200) * frac[1]


def test_70_kg_intermediate_and_compound_literal() -> None:
    # IM: 30-80 % of 140-175 mg = 42-140 -> 50-125; compound: 20-50 % = 28-87.5 -> 25-75
    assert rec(run(patient(70, "*1/*3A"), AS_OF, KB)) == (50, 125)
    assert rec(run(patient(70, "*1/*3A", "*1/*3"), AS_OF, KB)) == (25, 75)


@pytest.mark.parametrize(("tpmt", "nudt15"), [("*3A/*3C", "*1/*1"), ("*1/*1", "*3/*3")])
def test_poor_metaboliser_gets_no_dose(tpmt: str, nudt15: str) -> None:
    a = run(patient(70, tpmt, nudt15), AS_OF, KB)
    assert a.dose.recommended is None and a.dose.plan == ()
    assert finding(a, "pgx-poor").severity == "critical"


RECENT = "2025-08-20"  # a course started three weeks before AS_OF: still titrating


def test_current_dose_above_pgx_cap_is_critical() -> None:
    # 70 kg IM: high end 125 mg/day
    a = run(patient(70, "*1/*3A", dose=150, start=RECENT), AS_OF, KB)
    f = finding(a, "dosing-above-recommended")
    assert f.severity == "critical" and f.category == "dosing"
    assert f.action and f.sources
    assert "125" in f.message
    a = run(patient(70, "*1/*3A", dose=125, start=RECENT), AS_OF, KB)
    assert "dosing-above-recommended" not in codes(a)


def test_pgx_advice_for_a_patient_already_stable_is_not_a_starting_dose() -> None:
    """CPIC's 30-80% is a starting dose: stable on 150 mg since January, an IM is not told to
    start at 30-80% or cut to 125 mg for the genotype alone."""
    a = run(patient(70, "*1/*3A", dose=150), AS_OF, KB)
    assert a.monitoring.phase == "stable"
    f = finding(a, "pgx-reduced-on-treatment")
    assert f.severity == "info" and "starting dose" in f.action and f.sources
    assert "pgx-intermediate" not in codes(a)
    assert "dosing-above-recommended" not in codes(a)
    assert rec(a) == (50, 150) and [x.mg_per_day for x in a.dose.plan] == [150]
    # stable on a low dose: no titration up to the normal range either (30-80% still bounds it)
    a = run(patient(70, "*1/*3A", dose=25), AS_OF, KB)
    assert (r := rec(a)) is not None and r[1] <= 0.8 * 2.5 * 70
    # starting treatment: the starting-dose advice and the reduced range (other side of the rule)
    a = run(patient(70, "*1/*3A", dose=150, start=RECENT), AS_OF, KB)
    assert "pgx-intermediate" in codes(a) and "pgx-reduced-on-treatment" not in codes(a)
    assert "Start at 30-80%" in finding(a, "pgx-intermediate").action


def test_proposed_dose_above_pgx_cap_is_critical() -> None:
    b = patient(70, "*1/*3A")
    b.request("Azathioprine 50 mg tablets", "2025-09-08", 150, rxnorm="1256")
    f = finding(run(b, AS_OF, KB), "dosing-above-recommended")  # pre-treatment: starting-dose rules
    assert f.severity == "critical" and f.message.startswith("Proposed")
    b = patient(70, "*1/*3A")
    b.request("Azathioprine 50 mg tablets", "2025-09-08", 100, rxnorm="1256")
    assert "dosing-above-recommended" not in codes(run(b, AS_OF, KB))


# ---------------------------------------------------------------- current dose against the normal range
def test_dose_above_target_but_within_maximum_is_a_warning() -> None:
    a = run(patient(70, dose=200), AS_OF, KB)  # 2.86 mg/kg/day
    f = finding(a, "dosing-above-target")
    assert f.severity == "warning"
    assert "dosing-above-maximum" not in codes(a)
    assert not {"dosing-above-target", "dosing-above-maximum"} & codes(run(patient(70, dose=175), AS_OF, KB))


def test_dose_above_3_mg_per_kg_is_above_maximum() -> None:
    a = run(patient(50, dose=175), AS_OF, KB)  # 3.5 mg/kg/day
    f = finding(a, "dosing-above-maximum")
    assert f.severity == "warning" and f.category == "dosing"
    a = run(patient(50, dose=150), AS_OF, KB)  # exactly 3.0 mg/kg/day: not above the maximum
    assert "dosing-above-maximum" not in codes(a)
    assert "dosing-above-target" in codes(a)


def test_dose_above_200_mg_per_day_is_above_maximum() -> None:
    assert "dosing-above-maximum" in codes(run(patient(90, dose=225), AS_OF, KB))  # 2.5 mg/kg but > 200
    assert "dosing-above-maximum" not in codes(run(patient(90, dose=200), AS_OF, KB))


def test_dose_below_target_is_info_with_titration() -> None:
    a = run(patient(70, dose=100), AS_OF, KB)
    f = finding(a, "dosing-below-target")
    assert f.severity == "info"
    assert "dosing-below-target" not in codes(run(patient(70, dose=150), AS_OF, KB))


# ---------------------------------------------------------------- interactions
def test_allopurinol_quarters_the_range_and_is_critical() -> None:
    b = patient(70)
    b.statement("Allopurinol 100 mg tablets", "2025-01-01", 100, rxnorm="519")
    a = run(b, AS_OF, KB)
    f = finding(a, "interaction-allopurinol")
    assert f.severity == "critical"
    assert rec(a) == expected_range(70, factor=0.25)
    assert a.dose.recommended is not None and a.dose.recommended.high <= 175 * 0.25


def test_allopurinol_with_intermediate_metaboliser_multiplies_both_reductions() -> None:
    b = patient(100, "*1/*3A")
    b.statement("Allopurinol", "2025-01-01", 100, rxnorm="519")
    a = run(b, AS_OF, KB)
    assert rec(a) == expected_range(100, IM, factor=0.25)  # 200 x 0.8 x 0.25 = 40 -> 25


def test_allopurinol_draft_order_already_reduces_the_range() -> None:
    """A quarter of the dose the patient takes now (150 -> 37.5, whole tablets 25 mg); one
    problem, one finding: the interaction finding carries the dose excess."""
    b = patient(70, dose=150)
    b.request("Allopurinol 100 mg tablets", "2025-09-08", 100, rxnorm="519")
    a = run(b, AS_OF, KB)
    assert rec(a) == (25, 25)
    f = finding(a, "interaction-allopurinol")
    assert f.severity == "critical" and f.message.startswith("About to be prescribed")
    assert "150 mg/day" in f.message and "at most 25 mg/day" in f.action
    assert "dosing-above-recommended" not in codes(a)


def test_allopurinol_factor_applies_to_the_patients_own_dose_before_it() -> None:
    """Cut correctly from 100 to 25 mg when allopurinol started: not "below target", no
    titration back up to 50 mg (the weight-based target x 25% would say 37.5-43.75 -> 25-50)."""
    b2 = BundleBuilder("dose", "1985-03-01", "male")
    b2.condition("91637004", "Myasthenia gravis", "2024-06-01")
    b2.weight(100, "2025-08-01").genotype("TPMT", "*1/*1", "2024-12-01").genotype("NUDT15", "*1/*1", "2024-12-01")
    b2.bloods("2025-09-01")
    b2.azathioprine("2025-01-06", 100, end="2025-06-30")
    b2.azathioprine("2025-07-01", 25)
    b2.statement("Allopurinol 100 mg tablets", "2025-07-01", 100, rxnorm="519")
    a = run(b2, AS_OF, KB)
    assert rec(a) == (25, 25)
    assert not {"dosing-below-target", "dosing-above-recommended"} & codes(a)
    assert [s.mg_per_day for s in a.dose.plan] == [25]
    assert any("taken before it" in x for x in a.dose.basis)
    # still on the full 100 mg with allopurinol started: the interaction finding says cut to 25
    b3 = BundleBuilder("dose", "1985-03-01", "male")
    b3.condition("91637004", "Myasthenia gravis", "2024-06-01")
    b3.weight(100, "2025-08-01").genotype("TPMT", "*1/*1", "2024-12-01").genotype("NUDT15", "*1/*1", "2024-12-01")
    b3.bloods("2025-09-01")
    b3.azathioprine("2025-01-06", 100)
    b3.statement("Allopurinol 100 mg tablets", "2025-07-01", 100, rxnorm="519")
    a = run(b3, AS_OF, KB)
    f = finding(a, "interaction-allopurinol")
    assert f.severity == "critical" and "at most 25 mg/day" in f.action
    assert "dosing-above-recommended" not in codes(a)


def test_stopped_allopurinol_does_not_reduce_the_range() -> None:
    b = patient(70)
    b.statement("Allopurinol", "2024-01-01", 100, rxnorm="519", status="completed", end="2025-01-01")
    a = run(b, AS_OF, KB)
    assert rec(a) == (150, 175)
    assert "interaction-allopurinol" not in codes(a)


AVOID = [ix for ix in KB.interactions if ix.avoid]


@pytest.mark.parametrize("ix_id", [ix.id for ix in AVOID])
def test_do_not_combine_interactions_give_no_dose(ix_id: str) -> None:
    ix = next(i for i in AVOID if i.id == ix_id)
    name = KB.drugs[ix.drugs[0]].names[0]
    b = patient(70)
    b.statement(name.capitalize(), "2025-01-01", 10)
    a = run(b, AS_OF, KB)
    assert a.dose.recommended is None and a.dose.plan == ()
    assert finding(a, f"interaction-{ix.id}").severity == "critical"


def test_febuxostat_literal() -> None:
    b = patient(70)
    b.statement("Febuxostat 80 mg tablets", "2025-01-01", 80)
    a = run(b, AS_OF, KB)
    assert a.dose.recommended is None
    assert finding(a, "interaction-febuxostat").severity == "critical"


def test_warning_interaction_does_not_change_the_range() -> None:
    b = patient(70)
    b.statement("Mesalazine 400 mg tablets", "2025-01-01", 1200)
    a = run(b, AS_OF, KB)
    assert "interaction-aminosalicylate" in codes(a)
    assert rec(a) == (150, 175)


# ---------------------------------------------------------------- renal and hepatic impairment
def test_single_egfr_below_60_asks_for_a_repeat_not_a_dose_cut() -> None:
    """BSR/SPS: repeat within a week first; one low result does not reduce the dose."""
    a = run(patient(70, egfr=59), AS_OF, KB)
    assert "dosing-renal" not in codes(a)
    assert rec(a) == (150, 175)
    f = finding(a, "lab-egfr-low")
    assert f.follow_up is not None and (f.follow_up.group, f.follow_up.days) == ("renal", 7)
    renal = next(g for g in a.monitoring.groups if g.name == "renal")
    assert renal.next_due == date(2025, 9, 8) and renal.due_reason == "follow-up"


def test_egfr_below_60_twice_holds_the_range_at_the_low_end() -> None:
    a = run(patient(70, egfr=59, egfr_before=58), AS_OF, KB)
    f = finding(a, "dosing-renal")
    assert f.severity == "warning" and f.category == "dosing"
    assert rec(a) == expected_range(70, hold_low=True)
    assert a.dose.recommended is not None
    assert a.dose.recommended.low == a.dose.recommended.high
    assert a.dose.recommended.high <= 2.0 * 70  # never above the low end of the normal range


def test_egfr_60_is_not_renal_impairment() -> None:
    assert "dosing-renal" not in codes(run(patient(70, egfr=59, egfr_before=60), AS_OF, KB))
    a = run(patient(70, egfr=60, egfr_before=59), AS_OF, KB)
    assert "dosing-renal" not in codes(a)
    assert rec(a) == (150, 175)


def test_recorded_renal_impairment_holds_at_low_end() -> None:
    b = patient(70)
    b.condition("709044004", "Chronic kidney disease", "2020-01-01")
    a = run(b, AS_OF, KB)
    assert "dosing-renal" in codes(a)
    assert rec(a) == expected_range(70, hold_low=True)


def test_liver_disease_holds_at_low_end() -> None:
    b = patient(70)
    b.condition("19943007", "Cirrhosis of liver", "2020-01-01")
    a = run(b, AS_OF, KB)
    assert finding(a, "dosing-hepatic").severity == "warning"
    assert rec(a) == expected_range(70, hold_low=True)
    b = patient(70)
    b.condition("19943007", "Cirrhosis of liver", "2020-01-01", status="resolved")
    assert rec(run(b, AS_OF, KB)) == (150, 175)


def test_renal_hold_makes_a_normal_dose_above_recommended() -> None:
    a = run(patient(70, dose=175, egfr=45, egfr_before=50), AS_OF, KB)
    assert finding(a, "dosing-above-recommended").severity == "critical"


# ---------------------------------------------------------------- tablets too large
def test_cap_below_the_smallest_tablet_gives_no_dose() -> None:
    b = patient(40, "*1/*3A", "*1/*3")  # compound IM: 20-50 mg; with allopurinol 5-12.5 mg
    b.statement("Allopurinol", "2025-01-01", 100, rxnorm="519")
    a = run(b, AS_OF, KB)
    assert a.dose.recommended is None
    assert finding(a, "dosing-below-smallest-tablet").severity == "warning"


# ---------------------------------------------------------------- missing weight
def test_missing_weight_gives_no_dose() -> None:
    a = run(patient(None), AS_OF, KB)
    assert a.dose.recommended is None
    assert finding(a, "data-missing-weight").severity == "warning"
    assert "data-missing-weight" not in codes(run(patient(70), AS_OF, KB))


# ---------------------------------------------------------------- titration plan
def assert_titration(plan: tuple[d.DoseStep, ...], start: float, target: float, weeks: int) -> None:
    assert plan[0].start == AS_OF
    assert plan[0].mg_per_day == start
    assert plan[-1].mg_per_day == target
    for prev, nxt in itertools.pairwise(plan):
        assert nxt.start - prev.start == timedelta(weeks=weeks)
        assert 0 < nxt.mg_per_day - prev.mg_per_day <= 50


def test_start_plan_normal_metaboliser() -> None:
    a = run(patient(70), AS_OF, KB)
    assert a.monitoring.phase == "pre-treatment"
    plan = a.dose.plan
    assert [(s.start, s.mg_per_day) for s in plan] == [
        (AS_OF, 50),
        (AS_OF + timedelta(weeks=2), 100),
        (AS_OF + timedelta(weeks=4), 150),
    ]
    f = finding(a, "dosing-start-plan")
    assert f.severity == "info" and "50" in f.message and "150" in f.message


def test_start_plan_intermediate_steps_every_4_weeks() -> None:
    a = run(patient(120, "*1/*3A"), AS_OF, KB)
    r = expected_range(120, IM)
    assert r is not None and r[0] > 50  # guard: the plan needs more than one step
    assert_titration(a.dose.plan, 50, r[0], 4)


@pytest.mark.parametrize("weight", [50, 70, 90, 110])
def test_start_plan_ends_at_the_low_end_of_the_range(weight: float) -> None:
    a = run(patient(weight), AS_OF, KB)
    r = expected_range(weight)
    assert r is not None
    assert_titration(a.dose.plan, 50, r[0], 2)


def test_titration_continues_from_the_current_dose() -> None:
    a = run(patient(70, dose=50, start="2025-09-01"), AS_OF, KB)
    assert_titration(a.dose.plan, 50, 150, 2)
    assert "dosing-start-plan" not in codes(a)


def test_plan_for_a_dose_above_range_is_a_reduction_to_the_high_end() -> None:
    a = run(patient(70, "*1/*3A", dose=150, start=RECENT), AS_OF, KB)
    assert [(s.start, s.mg_per_day) for s in a.dose.plan] == [(AS_OF, 125)]


# ---------------------------------------------------------------- no dose while contraindicated or stopped
BLOCKING = [key for key, rule in KB.conditions.items() if rule.blocks_dosing]


def test_knowledge_blocks_dosing_for_the_absolute_contraindications() -> None:
    assert KB.allergy.blocks_dosing
    assert "cholestasis-of-pregnancy" in BLOCKING


@pytest.mark.parametrize("key", BLOCKING)
def test_blocking_condition_gives_no_dose_while_active(key: str) -> None:
    rule = KB.conditions[key]
    b = patient(70, dose=150)
    b.condition(None, rule.text[0].capitalize(), "2025-08-01")
    a = run(b, AS_OF, KB)
    assert a.dose.recommended is None and a.dose.plan == ()
    assert rule.finding in codes(a)
    b = patient(70, dose=150)
    b.condition(None, rule.text[0].capitalize(), "2025-08-01", status="resolved")
    assert rec(run(b, AS_OF, KB)) == (150, 175)


@pytest.mark.parametrize("allergen", ["Azathioprine", "Mercaptopurine"])
def test_thiopurine_allergy_gives_no_dose(allergen: str) -> None:
    b = patient(70)
    b.allergy(allergen)
    a = run(b, AS_OF, KB)
    assert a.dose.recommended is None
    assert finding(a, "contraindication-hypersensitivity").severity == "critical"
    b = patient(70)
    b.allergy("Penicillin")
    assert rec(run(b, AS_OF, KB)) == (150, 175)


def test_stopped_course_gets_no_dose_or_plan() -> None:
    b = patient(70)
    b.azathioprine("2024-01-08", 150, end="2025-03-01")
    a = run(b, AS_OF, KB)
    assert a.monitoring.phase == "stopped"
    assert a.dose.recommended is None and a.dose.plan == ()
    assert not [f for f in a.findings if f.category == "dosing"]


# ---------------------------------------------------------------- pregnancy caps the range at 2 mg/kg/day
@pytest.mark.parametrize("weight", [50, 60, 70, 74, 75, 90])
def test_pregnancy_caps_the_range_at_2_mg_per_kg(weight: float) -> None:
    b = patient(weight, sex="female")
    b.pregnant("2025-08-15")
    a = run(b, AS_OF, KB)
    r = rec(a)
    assert r is not None
    assert r[1] <= 2.0 * weight
    assert (usual := expected_range(weight)) is not None
    assert r[1] == min(usual[1], math.floor(2.0 * weight / 25 + 1e-9) * 25)
    assert r[0] <= r[1]


def test_pregnancy_over_2_mg_per_kg_is_reported_once_by_reproduction() -> None:
    b = patient(74, dose=150, sex="female")  # 2.03 mg/kg/day: within the normal range, above the pregnancy limit
    b.pregnant("2025-08-15")
    a = run(b, AS_OF, KB)
    assert "reproduction-pregnancy-dose-high" in codes(a)
    assert not {"dosing-above-recommended", "dosing-above-target", "dosing-above-maximum"} & codes(a)


def test_pregnancy_does_not_hide_a_pgx_overdose() -> None:
    b = patient(70, "*1/*3A", dose=150, sex="female", start=RECENT)  # IM cap 125 mg is below the pregnancy cap 140 mg
    b.pregnant("2025-08-15")
    assert finding(run(b, AS_OF, KB), "dosing-above-recommended").severity == "critical"
