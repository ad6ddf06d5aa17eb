"""Lab rules: drug-specific thresholds, CTCAE grades, creatinine rise, falling trends, unit conversion.

Every threshold is exercised on both sides of its limit, with the limit taken from the knowledge
base (so a local protocol or an edit is honoured) and again with the literal BSR 2017 defaults the
project mandates (so a wrong knowledge file is caught).
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from conftest import codes, finding, run
from dateutil.relativedelta import relativedelta

from azaguard import domain as d
from azaguard.fhirbuild import BundleBuilder
from azaguard.knowledge import load_knowledge

KB = load_knowledge()
LAB_DAY = date(2025, 9, 1)
AS_OF = date(2025, 9, 5)


def patient() -> BundleBuilder:
    """An MG patient on a stable normal-metaboliser dose, with no lab results at all."""
    b = BundleBuilder("lab", "1970-03-01", "male")
    b.condition("91637004", "Myasthenia gravis", "2024-06-01")
    b.weight(70, "2024-12-20")
    b.genotype("TPMT", "*1/*1", "2024-12-01")
    b.genotype("NUDT15", "*1/*1", "2024-12-01")
    b.azathioprine("2025-01-06", 150)
    return b


def with_lab(
    analyte: str,
    value: float,
    unit: str | None = None,
    when: date = LAB_DAY,
    ref_low: float | None = None,
    ref_high: float | None = None,
) -> BundleBuilder:
    a = KB.analytes[analyte]
    b = patient()
    b.lab(a.loinc[0], value, unit or a.canonical, when, a.label, ref_low=ref_low, ref_high=ref_high)
    return b


def lab_findings(a: d.Assessment, analyte: str) -> list[d.Finding]:
    """Lab-category findings whose evidence is a result of this analyte (independent of rule ids)."""
    return [f for f in a.findings if f.category == "lab" and any(e.get("analyte") == analyte for e in f.evidence)]


def assert_well_formed(f: d.Finding) -> None:
    assert f.action.strip(), f.code
    assert f.sources and all(s.strip() for s in f.sources), f.code
    assert f.message.strip(), f.code


THRESHOLDS = {t.id: t for t in KB.thresholds}


def beyond(rule) -> list[float]:
    """Values just past the limit: these must fire."""
    if rule.comparator == "<":
        return [rule.value - 0.01, rule.value * 0.5]
    return [rule.value + 1, rule.value + 0.01]


def inside(rule) -> list[float]:
    """The limit itself and a value just inside it: these must not fire."""
    if rule.comparator == "<":
        return [rule.value, rule.value + 0.01]
    return [rule.value, rule.value - 0.01]


def expected_severity(rule, value: float) -> str:
    """The rule's severity, raised where its CTCAE grade reaches a `grade_severity` step."""
    if not rule.grade_severity:
        return str(rule.severity)
    grade = next((g.grade for g in KB.ctcae[rule.ctcae].grades if value < g.limit), None)
    steps = [sev for g, sev in rule.grade_severity.items() if grade is not None and grade >= g]
    return "critical" if "critical" in steps else str(rule.severity)


# ---------------------------------------------------------------- thresholds from the knowledge base
@pytest.mark.parametrize("rule_id", sorted(THRESHOLDS))
def test_threshold_fires_just_beyond_limit(rule_id: str) -> None:
    rule = THRESHOLDS[rule_id]
    for value in beyond(rule):
        a = run(with_lab(rule.analyte, value), AS_OF, KB)
        f = finding(a, f"lab-{rule.id}")
        assert f.severity == expected_severity(rule, value)
        assert f.category == "lab"
        assert_well_formed(f)
        ev = [e for e in f.evidence if e.get("analyte") == rule.analyte]
        assert ev and ev[0]["value"] == pytest.approx(value)
        assert ev[0]["date"] == LAB_DAY.isoformat()


@pytest.mark.parametrize("rule_id", sorted(THRESHOLDS))
def test_threshold_silent_at_and_inside_limit(rule_id: str) -> None:
    rule = THRESHOLDS[rule_id]
    for value in inside(rule):
        a = run(with_lab(rule.analyte, value), AS_OF, KB)
        assert f"lab-{rule.id}" not in codes(a), value
        assert not lab_findings(a, rule.analyte), value


@pytest.mark.parametrize("rule_id", sorted(THRESHOLDS))
def test_threshold_uses_latest_result_only(rule_id: str) -> None:
    """An abnormal result followed by a normal one is no longer a current finding (and vice versa)."""
    rule = THRESHOLDS[rule_id]
    a_ = KB.analytes[rule.analyte]
    bad, good = beyond(rule)[0], inside(rule)[0]
    b = patient()
    b.lab(a_.loinc[0], bad, a_.canonical, "2025-08-01", a_.label)
    b.lab(a_.loinc[0], good, a_.canonical, LAB_DAY, a_.label)
    assert f"lab-{rule.id}" not in codes(run(b, AS_OF, KB))
    b = patient()
    b.lab(a_.loinc[0], good, a_.canonical, "2025-08-01", a_.label)
    b.lab(a_.loinc[0], bad, a_.canonical, LAB_DAY, a_.label)
    assert f"lab-{rule.id}" in codes(run(b, AS_OF, KB))


# ---------------------------------------------------------------- literal BSR 2017 defaults
# (analyte, value that must fire, value that must not, severity)
LITERAL = [
    ("wbc", 3.49, 3.5, "critical"),
    ("neutrophils", 1.59, 1.6, "critical"),
    ("platelets", 139, 140, "critical"),
    ("alt", 101, 100, "critical"),
    ("ast", 101, 100, "critical"),
    ("mcv", 105.1, 105, "warning"),
    ("eosinophils", 0.51, 0.5, "warning"),
    ("albumin", 29.9, 30, "warning"),
    ("lymphocytes", 0.49, 0.5, "warning"),
    ("egfr", 59.9, 60, "warning"),
]


@pytest.mark.parametrize(("analyte", "fires", "silent", "severity"), LITERAL)
def test_literal_clinical_default(analyte: str, fires: float, silent: float, severity: str) -> None:
    hit = lab_findings(run(with_lab(analyte, fires), AS_OF, KB), analyte)
    assert len(hit) == 1, [f.code for f in hit]
    assert hit[0].severity == severity
    assert_well_formed(hit[0])
    assert not lab_findings(run(with_lab(analyte, silent), AS_OF, KB), analyte)


def test_threshold_is_drug_specific_not_the_lab_reference_range() -> None:
    """Neutrophils 1.7 below the lab's lower limit 2.0 is not a BSR withhold threshold."""
    a = run(with_lab("neutrophils", 1.7, ref_low=2.0), AS_OF, KB)
    assert not lab_findings(a, "neutrophils")


# ---------------------------------------------------------------- CTCAE v5 grades
# Grades from CTCAE v5.0 itself (not from labs.toml). Grade 1 needs the lab's limit of normal.
CTCAE_LOW = [
    ("neutrophils", 0.4, None, 4),
    ("neutrophils", 0.5, None, 3),
    ("neutrophils", 0.9, None, 3),
    ("neutrophils", 1.0, None, 2),
    ("neutrophils", 1.4, None, 2),
    ("neutrophils", 1.5, 2.0, 1),
    ("neutrophils", 1.5, None, None),
    ("wbc", 0.9, None, 4),
    ("wbc", 1.0, None, 3),
    ("wbc", 1.9, None, 3),
    ("wbc", 2.0, None, 2),
    ("wbc", 2.9, None, 2),
    ("wbc", 3.0, 4.0, 1),
    ("wbc", 3.0, None, None),
    ("platelets", 24, None, 4),
    ("platelets", 25, None, 3),
    ("platelets", 49, None, 3),
    ("platelets", 50, None, 2),
    ("platelets", 74, None, 2),
    ("platelets", 75, 150, 1),
    ("lymphocytes", 0.19, None, 4),
    ("lymphocytes", 0.2, None, 3),
    ("lymphocytes", 0.49, None, 3),
]


@pytest.mark.parametrize(("analyte", "value", "ref_low", "grade"), CTCAE_LOW)
def test_ctcae_grade_for_low_counts(analyte: str, value: float, ref_low: float | None, grade: int | None) -> None:
    hit = lab_findings(run(with_lab(analyte, value, ref_low=ref_low), AS_OF, KB), analyte)
    assert len(hit) == 1
    if grade is None:
        assert hit[0].ctcae is None
    else:
        assert hit[0].ctcae is not None
        assert hit[0].ctcae["grade"] == grade
        assert hit[0].ctcae["version"] == "5.0"


# ALT/AST are graded in multiples of the upper limit of normal (ULN 40 U/L here).
CTCAE_TRANSAMINASE = [
    (101, 1),  # 2.5 x ULN
    (120, 1),  # exactly 3 x ULN is still grade 1
    (121, 2),
    (200, 2),  # exactly 5 x ULN
    (201, 3),
    (800, 3),  # exactly 20 x ULN
    (801, 4),
]


@pytest.mark.parametrize("analyte", ["alt", "ast"])
@pytest.mark.parametrize(("value", "grade"), CTCAE_TRANSAMINASE)
def test_ctcae_grade_for_transaminases(analyte: str, value: float, grade: int) -> None:
    hit = lab_findings(run(with_lab(analyte, value, ref_high=40), AS_OF, KB), analyte)
    assert len(hit) == 1
    assert hit[0].ctcae is not None and hit[0].ctcae["grade"] == grade


def test_transaminase_without_uln_has_no_ctcae_grade() -> None:
    hit = lab_findings(run(with_lab("alt", 250), AS_OF, KB), "alt")
    assert len(hit) == 1 and hit[0].ctcae is None


# ---------------------------------------------------------------- creatinine rise
def creatinine_series(*points: tuple[date, float, str]) -> BundleBuilder:
    b = patient()
    for when, value, unit in points:
        b.lab(KB.analytes["creatinine"].loinc[0], value, unit, when, "Creatinine")
    return b


RISES = {r.id: r for r in KB.rises}


@pytest.mark.parametrize("rule_id", sorted(RISES))
def test_rise_both_sides_of_fraction(rule_id: str) -> None:
    rule = RISES[rule_id]
    unit = KB.analytes[rule.analyte].canonical
    loinc = KB.analytes[rule.analyte].loinc[0]
    base = 100.0
    earlier = LAB_DAY - relativedelta(months=6)
    for latest, expect in ((base * (1 + rule.rise_fraction) + 0.5, True), (base * (1 + rule.rise_fraction), False)):
        b = patient()
        b.lab(loinc, base, unit, earlier, "baseline")
        b.lab(loinc, latest, unit, LAB_DAY, "latest")
        a = run(b, AS_OF, KB)
        assert (f"lab-{rule.id}" in codes(a)) is expect, latest
        if expect:
            f = finding(a, f"lab-{rule.id}")
            assert f.severity == rule.severity and f.category == "lab"
            assert_well_formed(f)
            assert [e["value"] for e in f.evidence] == [pytest.approx(base), pytest.approx(latest)]


@pytest.mark.parametrize("rule_id", sorted(RISES))
def test_rise_window_edges(rule_id: str) -> None:
    """A baseline exactly one window before counts; one day older does not."""
    rule = RISES[rule_id]
    unit = KB.analytes[rule.analyte].canonical
    loinc = KB.analytes[rule.analyte].loinc[0]
    high = 100 * (1 + rule.rise_fraction) + 5
    for base_day, expect in ((rule.window.sub(LAB_DAY), True), (rule.window.sub(LAB_DAY) - timedelta(days=1), False)):
        b = patient()
        b.lab(loinc, 100, unit, base_day, "baseline")
        b.lab(loinc, high, unit, LAB_DAY, "latest")
        assert (f"lab-{rule.id}" in codes(run(b, AS_OF, KB))) is expect, base_day


def test_creatinine_rise_literal_30_percent_in_12_months() -> None:
    u = "umol/L"
    fires = creatinine_series((date(2025, 3, 1), 100, u), (LAB_DAY, 131, u))
    silent = creatinine_series((date(2025, 3, 1), 100, u), (LAB_DAY, 130, u))
    hit = lab_findings(run(fires, AS_OF, KB), "creatinine")
    assert len(hit) == 1 and hit[0].severity == "warning"
    assert not lab_findings(run(silent, AS_OF, KB), "creatinine")
    # 13 months back is outside the 12-month window
    old = creatinine_series((LAB_DAY - relativedelta(months=13), 100, u), (LAB_DAY, 140, u))
    assert not lab_findings(run(old, AS_OF, KB), "creatinine")


def test_creatinine_rise_is_measured_from_the_lowest_value_in_window() -> None:
    u = "umol/L"
    b = creatinine_series((date(2024, 11, 1), 100, u), (date(2025, 3, 1), 80, u), (LAB_DAY, 105, u))
    hit = lab_findings(run(b, AS_OF, KB), "creatinine")
    assert len(hit) == 1  # 105 is 31 % above 80
    assert hit[0].evidence[0]["value"] == pytest.approx(80)
    # the lowest value outside the window does not count
    b = creatinine_series((LAB_DAY - relativedelta(months=13), 80, u), (date(2025, 3, 1), 100, u), (LAB_DAY, 125, u))
    assert not lab_findings(run(b, AS_OF, KB), "creatinine")


def test_creatinine_mg_per_dl_converts_with_88_4() -> None:
    # 1.2 mg/dL = 106.08 umol/L: 32.6 % above 80 -> fires; 1.1 mg/dL = 97.24 -> 21.6 % -> silent
    b = creatinine_series((date(2025, 3, 1), 80, "umol/L"), (LAB_DAY, 1.2, "mg/dL"))
    hit = lab_findings(run(b, AS_OF, KB), "creatinine")
    assert len(hit) == 1
    assert hit[0].evidence[-1]["value"] == pytest.approx(1.2 * 88.4)
    assert "mg/dL" in str(hit[0].evidence[-1].get("reported"))
    b = creatinine_series((date(2025, 3, 1), 80, "umol/L"), (LAB_DAY, 1.1, "mg/dL"))
    assert not lab_findings(run(b, AS_OF, KB), "creatinine")


# ---------------------------------------------------------------- falling trends
TRENDS = {t.id: t for t in KB.trends}
TREND_CASES = [(t.id, a) for t in KB.trends for a in t.analytes]
START = {"wbc": 8.0, "neutrophils": 5.0, "platelets": 300.0, "haemoglobin": 150.0}


def series(analyte: str, values: list[float], first: date = date(2025, 6, 2)) -> BundleBuilder:
    a_ = KB.analytes[analyte]
    b = patient()
    for i, v in enumerate(values):
        b.lab(a_.loinc[0], v, a_.canonical, first + timedelta(weeks=2 * i), a_.label)
    return b


def falling(start: float, n: int, factor: float) -> list[float]:
    return [round(start * factor**i, 4) for i in range(n)]


@pytest.mark.parametrize(("rule_id", "analyte"), TREND_CASES)
def test_trend_fires_after_required_successive_falls(rule_id: str, analyte: str) -> None:
    rule = TRENDS[rule_id]
    values = falling(START[analyte], rule.successive_falls + 1, 1 - rule.fall_fraction - 0.02)
    a = run(series(analyte, values), AS_OF, KB)
    f = finding(a, f"trend-{analyte}-{rule.id}")
    assert f.severity == rule.severity and f.category == "trend"
    assert_well_formed(f)
    assert [e["value"] for e in f.evidence] == [pytest.approx(v) for v in values]


@pytest.mark.parametrize(("rule_id", "analyte"), TREND_CASES)
def test_trend_needs_enough_values(rule_id: str, analyte: str) -> None:
    rule = TRENDS[rule_id]
    values = falling(START[analyte], rule.successive_falls, 1 - rule.fall_fraction - 0.05)
    assert f"trend-{analyte}-{rule.id}" not in codes(run(series(analyte, values), AS_OF, KB))


@pytest.mark.parametrize(("rule_id", "analyte"), TREND_CASES)
def test_trend_interrupted_by_a_rise_does_not_fire(rule_id: str, analyte: str) -> None:
    rule = TRENDS[rule_id]
    s = START[analyte]
    values = [s, s * 0.8, s * 0.85, s * 0.7, s * 0.6]  # the rise sits inside the last four values
    assert f"trend-{analyte}-{rule.id}" not in codes(run(series(analyte, values), AS_OF, KB))
    values = [s, s * 0.85, s * 0.72, s * 0.61, s * 0.7]  # three falls, then a rise: no longer falling
    assert f"trend-{analyte}-{rule.id}" not in codes(run(series(analyte, values), AS_OF, KB))


# Literal DTB 2002 rule: >10 % at each of three successive tests (four values) of WBC, neutrophils, platelets.
@pytest.mark.parametrize("analyte", ["wbc", "neutrophils", "platelets"])
def test_trend_literal_more_than_10_percent_three_times(analyte: str) -> None:
    s = START[analyte]
    hit = [f for f in run(series(analyte, falling(s, 4, 0.89)), AS_OF, KB).findings if f.category == "trend"]
    assert len(hit) == 1 and hit[0].severity == "critical"
    assert not [f for f in run(series(analyte, falling(s, 3, 0.7)), AS_OF, KB).findings if f.category == "trend"]


# Exactly 10 % is not "more than 10 %". Values chosen so each ratio is exact in binary floating point
# or rounds below 0.1, so the test checks the rule and not float noise.
EXACT_TEN: dict[str, list[list[float]]] = {
    "wbc": [[10.0, 9.0, 7.2, 5.76], [10.0, 8.0, 7.2, 5.76]],
    "neutrophils": [[10.0, 9.0, 7.2, 5.76], [10.0, 8.0, 7.2, 5.76]],
    "platelets": [[1000, 900, 810, 729], [1000, 800, 720, 648]],
}


@pytest.mark.parametrize("analyte", ["wbc", "neutrophils", "platelets"])
def test_trend_exactly_10_percent_does_not_fire(analyte: str) -> None:
    for values in EXACT_TEN[analyte]:
        falls = [(values[i] - values[i + 1]) / values[i] for i in range(3)]
        assert any(f <= 0.1 for f in falls)  # guard: at least one fall is exactly 10 % as computed
        a = run(series(analyte, values), AS_OF, KB)
        assert not [f for f in a.findings if f.category == "trend"], values


# ---------------------------------------------------------------- unit conversion
@pytest.mark.parametrize(
    ("value", "unit", "fires"), [(1500, "/uL", True), (1599, "cells/uL", True), (1600, "/uL", False)]
)
def test_neutrophils_per_microlitre_convert_to_10e9_per_litre(value: float, unit: str, fires: bool) -> None:
    a = run(with_lab("neutrophils", value, unit), AS_OF, KB)
    hit = lab_findings(a, "neutrophils")
    assert bool(hit) is fires
    if fires:
        assert hit[0].evidence[0]["value"] == pytest.approx(value / 1000)
        assert hit[0].severity == "critical"


@pytest.mark.parametrize("unit", ["10^9/L", "x10^9/L", "10*3/uL", "K/uL", "G/L"])
def test_equivalent_count_units_are_used_unchanged(unit: str) -> None:
    hit = lab_findings(run(with_lab("platelets", 120, unit), AS_OF, KB), "platelets")
    assert len(hit) == 1 and hit[0].evidence[0]["value"] == pytest.approx(120)


def test_albumin_g_per_dl_converts_to_g_per_l() -> None:
    assert lab_findings(run(with_lab("albumin", 2.9, "g/dL"), AS_OF, KB), "albumin")  # 29 g/L
    assert not lab_findings(run(with_lab("albumin", 3.0, "g/dL"), AS_OF, KB), "albumin")  # 30 g/L
