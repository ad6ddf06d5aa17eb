"""Pre-treatment screening, time-to-benefit counselling, thiopurine metabolites and data quality."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from conftest import codes, finding, run
from dateutil.relativedelta import relativedelta

from azaguard import domain as d
from azaguard.fhirbuild import BundleBuilder
from azaguard.knowledge import load_knowledge

KB = load_knowledge()
AS_OF = date(2025, 9, 10)
ONE = timedelta(days=1)
START = date(2025, 1, 6)


def pre_treatment(sex: str = "male", bloods: bool = True, indication: tuple[str, str] | None = None) -> BundleBuilder:
    b = BundleBuilder("couns", "1980-03-01", sex)
    code, text = indication or ("91637004", "Myasthenia gravis")
    b.condition(code, text, "2024-06-01")
    b.weight(70, "2025-08-01")
    b.genotype("TPMT", "*1/*1", "2025-08-01")
    b.genotype("NUDT15", "*1/*1", "2025-08-01")
    if bloods:
        b.bloods("2025-09-01")
    return b


def on_treatment(indication: tuple[str | None, str] | None = ("91637004", "Myasthenia gravis")) -> BundleBuilder:
    b = BundleBuilder("couns", "1980-03-01", "male")
    if indication:
        b.condition(indication[0], indication[1], "2024-06-01")
    b.weight(70, "2024-12-20")
    b.genotype("TPMT", "*1/*1", "2024-12-01")
    b.genotype("NUDT15", "*1/*1", "2024-12-01")
    b.bloods("2024-12-20")
    b.azathioprine(START, 150)
    return b


def assert_well_formed(f: d.Finding) -> None:
    assert f.message.strip() and f.action.strip(), f.code
    assert f.sources and all(s.strip() for s in f.sources), f.code


def screening(a: d.Assessment) -> set[str]:
    return {f.code for f in a.findings if f.category == "screening"}


# ---------------------------------------------------------------- screening before the start
@pytest.mark.parametrize(
    ("group", "code"),
    [("FBC", "screening-missing-fbc"), ("LFT", "screening-missing-lft"), ("renal", "screening-missing-renal")],
)
def test_missing_baseline_bloods_are_critical(group: str, code: str) -> None:
    a = run(pre_treatment(bloods=False), AS_OF, KB)
    f = finding(a, code)
    assert f.severity == "critical" and f.category == "screening"
    assert_well_formed(f)
    assert code not in codes(run(pre_treatment(bloods=True), AS_OF, KB))


def test_each_baseline_group_is_judged_separately() -> None:
    b = pre_treatment(bloods=False)
    b.fbc("2025-09-01", 6.0, 3.5, 250)
    s = screening(run(b, AS_OF, KB))
    assert "screening-missing-fbc" not in s
    assert {"screening-missing-lft", "screening-missing-renal"} <= s


def test_baseline_dated_after_as_of_does_not_count() -> None:
    b = pre_treatment(bloods=False)
    b.bloods(AS_OF + ONE)
    assert "screening-missing-fbc" in codes(run(b, AS_OF, KB))


@pytest.mark.parametrize(
    ("code", "loinc", "display", "severity"),
    [
        ("screening-missing-hepatitis-b", "5196-1", "HBsAg", "warning"),
        ("screening-missing-hepatitis-b", "16933-4", "Anti-HBc", "warning"),
        ("screening-missing-vzv", "19162-7", "VZV IgG", "warning"),
        ("screening-missing-hepatitis-c", "16128-1", "HCV antibody", "info"),
        ("screening-missing-hiv", "75622-1", "HIV 1+2 Ag/Ab", "info"),
    ],
)
def test_screening_test_recorded_clears_its_finding(code: str, loinc: str, display: str, severity: str) -> None:
    a = run(pre_treatment(), AS_OF, KB)
    f = finding(a, code)
    assert f.severity == severity
    assert_well_formed(f)
    b = pre_treatment()
    b.screening(loinc, display, "2025-08-20")
    assert code not in codes(run(b, AS_OF, KB))


def test_varicella_vaccination_counts_as_vzv_screening() -> None:
    b = pre_treatment()
    b.immunization("Varivax", "21", "2010-01-01")
    assert "screening-missing-vzv" not in codes(run(b, AS_OF, KB))


def test_positive_hbsag_is_not_silently_accepted() -> None:
    b = pre_treatment()
    b.screening("5196-1", "HBsAg", "2025-08-20", result="Positive")
    a = run(b, AS_OF, KB)
    flagged = [
        f
        for f in a.findings
        if "hepatitis b" in f.message.lower()
        and f.code != "screening-missing-hepatitis-b"
        and f.severity in ("warning", "critical")
    ]
    assert flagged, sorted(codes(a))


def test_pregnancy_test_is_asked_for_women_only() -> None:
    assert "screening-missing-pregnancy-test" in codes(run(pre_treatment("female"), AS_OF, KB))
    assert "screening-missing-pregnancy-test" not in codes(run(pre_treatment("male"), AS_OF, KB))
    b = pre_treatment("female")
    b.screening("2106-3", "hCG", "2025-09-01")
    assert "screening-missing-pregnancy-test" not in codes(run(b, AS_OF, KB))


def test_vaccines_before_start() -> None:
    assert "screening-vaccines-before-start" in codes(run(pre_treatment(), AS_OF, KB))
    b = pre_treatment()
    b.immunization("Influenza vaccine", "88", "2024-10-01")
    assert "screening-vaccines-before-start" in codes(run(b, AS_OF, KB))  # pneumococcal still missing
    b.immunization("Pneumovax 23", "33", "2024-10-01")
    assert "screening-vaccines-before-start" not in codes(run(b, AS_OF, KB))


def test_off_label_indication() -> None:
    f = finding(run(pre_treatment(), AS_OF, KB), "screening-off-label")
    assert f.severity == "info" and "Myasthenia" in f.message
    a = run(pre_treatment(indication=("396230008", "Dermatomyositis")), AS_OF, KB)
    assert "screening-off-label" not in codes(a)  # licensed in the UK


def test_no_screening_findings_once_on_treatment() -> None:
    assert not screening(run(on_treatment(), "2025-03-01", KB))


# ---------------------------------------------------------------- time to benefit
def test_time_to_benefit_before_start_counters_the_seed_claim() -> None:
    f = finding(run(pre_treatment(), AS_OF, KB), "efficacy-time-to-benefit")
    assert f.severity == "info" and f.category == "efficacy"
    ind = KB.indications["myasthenia-gravis"]
    assert ind.time_to_benefit in f.message
    assert KB.efficacy.seed_claim in f.action
    assert "differs" in f.action
    assert any(s.startswith("seed:") for s in f.sources)
    # myasthenia: months, not weeks
    assert "month" in ind.time_to_benefit and ind.time_to_benefit_months.low >= 4


@pytest.mark.parametrize(
    ("indication", "months_high"),
    [(("91637004", "Myasthenia gravis"), 12), (("31384009", "Polymyositis"), 3)],
)
def test_time_to_benefit_then_review_then_nothing(indication: tuple[str, str], months_high: int) -> None:
    b = on_treatment(indication)
    before = START + relativedelta(months=months_high) - ONE
    at = START + relativedelta(months=months_high)
    assert "efficacy-time-to-benefit" in codes(run(b, before, KB))
    a = run(b, at, KB)
    assert "efficacy-time-to-benefit" not in codes(a)
    assert finding(a, "efficacy-review-response").severity == "info"
    until = START + relativedelta(months=18)
    assert "efficacy-review-response" in codes(run(b, until - ONE, KB))
    assert not {"efficacy-review-response", "efficacy-time-to-benefit"} & codes(run(b, until, KB))


def test_time_to_benefit_without_indication_uses_the_default() -> None:
    f = finding(run(on_treatment(indication=None), "2025-03-01", KB), "efficacy-time-to-benefit")
    assert KB.efficacy.default_time_to_benefit in f.message


# ---------------------------------------------------------------- metabolites
def with_metabolites(tgn: float, mmp: float, when: str = "2025-09-01", **kw: Any) -> BundleBuilder:
    b = on_treatment()
    b.bloods("2025-09-01")
    b.metabolites(tgn, mmp, when, **kw)
    return b


def metabolite(a: d.Assessment) -> list[d.Finding]:
    return [f for f in a.findings if f.category == "metabolite"]


# (6-TGN, 6-MMP, expected finding). Therapeutic 6-TGN 235-450; 6-MMP above 5700 is hepatotoxic;
# 6-TGN below 235 with a 6-MMP:6-TGN ratio above 11 is shunting.
METABOLITES = [
    (300, 1000, "metabolite-therapeutic"),
    (235, 1000, "metabolite-therapeutic"),
    (234, 1000, "metabolite-subtherapeutic"),
    (450, 1000, "metabolite-therapeutic"),
    (451, 1000, "metabolite-supratherapeutic"),
    (300, 5700, "metabolite-therapeutic"),
    (300, 5701, "metabolite-supratherapeutic"),
    (200, 2200, "metabolite-subtherapeutic"),  # ratio exactly 11
    (200, 2201, "metabolite-shunting"),  # ratio just above 11
    (100, 1200, "metabolite-shunting"),
    (200, 5701, "metabolite-shunting"),
    (0, 0, "metabolite-non-adherence"),
]
SEVERITY = {
    "metabolite-therapeutic": "info",
    "metabolite-subtherapeutic": "info",
    "metabolite-supratherapeutic": "warning",
    "metabolite-shunting": "warning",
    "metabolite-non-adherence": "warning",
}


@pytest.mark.parametrize(("tgn", "mmp", "code"), METABOLITES)
def test_metabolite_interpretation(tgn: float, mmp: float, code: str) -> None:
    found = metabolite(run(with_metabolites(tgn, mmp), AS_OF, KB))
    assert [f.code for f in found] == [code]
    assert found[0].severity == SEVERITY[code]
    assert_well_formed(found[0])


def test_metabolite_limits_in_knowledge_are_the_published_ones() -> None:
    m = KB.metabolites
    assert (m.tgn_low, m.tgn_high, m.mmp_high, m.mmp_tgn_ratio) == (235, 450, 5700, 11)


def metabolite_obs(code: str, value: float, when: str, comparator: str | None = None) -> dict[str, Any]:
    q: dict[str, Any] = {"value": value, "unit": "pmol/8x10^8 RBC"}
    if comparator:
        q["comparator"] = comparator
    return {
        "resourceType": "Observation",
        "id": f"{code}-{when}-{value}",
        "status": "final",
        "code": {"coding": [{"system": "urn:azaguard:lab", "code": code}], "text": code.upper()},
        "subject": {"reference": "Patient/couns"},
        "effectiveDateTime": when,
        "valueQuantity": q,
    }


def test_both_below_detection_is_non_adherence() -> None:
    b = on_treatment()
    b.add(metabolite_obs("6-tgn", 50, "2025-09-01", "<"))
    b.add(metabolite_obs("6-mmp", 100, "2025-09-01", "<"))
    assert [f.code for f in metabolite(run(b, AS_OF, KB))] == ["metabolite-non-adherence"]
    b = on_treatment()  # 6-TGN detectable at 50 while 6-MMP is not: not "both absent"
    b.add(metabolite_obs("6-tgn", 50, "2025-09-01"))
    b.add(metabolite_obs("6-mmp", 100, "2025-09-01", "<"))
    assert [f.code for f in metabolite(run(b, AS_OF, KB))] != ["metabolite-non-adherence"]


def test_one_metabolite_detectable_is_not_non_adherence() -> None:
    found = metabolite(run(with_metabolites(150, 100, mmp_below_detection=True), AS_OF, KB))
    assert [f.code for f in found] != ["metabolite-non-adherence"]


def test_metabolites_from_different_days_are_not_interpreted_as_a_pair() -> None:
    b = on_treatment()
    b.metabolites(300, 1000, "2025-08-01")
    b.metabolites(600, 1000, "2025-09-01")
    assert [f.code for f in metabolite(run(b, AS_OF, KB))] == ["metabolite-supratherapeutic"]  # latest pair
    b = on_treatment()
    b.add(metabolite_obs("6-tgn", 600, "2025-09-01"))  # 6-TGN alone, newer than the last pair
    b.metabolites(300, 1000, "2025-08-01")
    # no pattern from results of different days; the lone 6-TGN is read against its own range
    assert [f.code for f in metabolite(run(b, AS_OF, KB))] == ["metabolite-tgn-high"]


# ---------------------------------------------------------------- data quality
def neutrophil_obs(value: Any, unit: str | None, when: str = "2025-09-05", **extra: Any) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"neut-{when}-{unit}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "751-8", "display": "Neutrophils"}]},
        "subject": {"reference": "Patient/couns"},
        "effectiveDateTime": when,
    }
    if unit is not None:
        obs["valueQuantity"] = {"value": value, "unit": unit}
    obs.update(extra)
    return obs


def test_unknown_unit_is_reported_and_the_value_is_not_used() -> None:
    b = on_treatment()
    b.bloods("2025-09-01")
    b.add(neutrophil_obs(0.5, "furlongs/fortnight"))
    a = run(b, AS_OF, KB)
    f = finding(a, "data-unknown-unit")
    assert f.severity == "warning" and f.category == "data-quality"
    assert "furlongs/fortnight" in f.message
    assert "lab-neutrophils-low" not in codes(a)  # the earlier normal result is still the latest usable one
    # control: the same value in a known unit would have fired
    b = on_treatment()
    b.bloods("2025-09-01")
    b.add(neutrophil_obs(0.5, "10*9/L"))
    a = run(b, AS_OF, KB)
    assert "lab-neutrophils-low" in codes(a) and "data-unknown-unit" not in codes(a)


def test_missing_value_is_reported() -> None:
    b = on_treatment()
    b.bloods("2025-09-01")
    b.add(neutrophil_obs(None, None, valueString="haemolysed"))
    a = run(b, AS_OF, KB)
    f = finding(a, "data-missing-value")
    assert f.severity == "warning" and "haemolysed" in f.message
    assert "lab-neutrophils-low" not in codes(a)


def test_future_dated_records_are_ignored_and_reported() -> None:
    b = on_treatment()
    b.bloods("2025-09-01")
    b.fbc(AS_OF + ONE, 2.0, 0.5, 100)
    a = run(b, AS_OF, KB)
    assert not [f for f in a.findings if f.category == "lab"]
    f = finding(a, "data-future-dated")
    assert f.severity == "info"
    a = run(b, AS_OF + ONE, KB)  # on its own date it is used
    assert "lab-neutrophils-low" in codes(a) and "data-future-dated" not in codes(a)


def test_missing_indication() -> None:
    f = finding(run(on_treatment(indication=None), AS_OF, KB), "data-missing-indication")
    assert f.severity == "warning"
    assert "data-missing-indication" not in codes(run(on_treatment(), AS_OF, KB))


def test_indication_recognised_by_text() -> None:
    assert "data-missing-indication" not in codes(run(on_treatment((None, "Generalised myasthenia")), AS_OF, KB))


def test_missing_dose_and_start_date() -> None:
    b = BundleBuilder("couns", "1980-03-01", "male")
    b.condition("91637004", "Myasthenia gravis", "2024-06-01")
    b.weight(70, "2024-12-20")
    b.statement("Azathioprine 50 mg tablet", "2025-01-06", None, rxnorm="1256")
    assert finding(run(b, AS_OF, KB), "data-missing-dose").severity == "warning"
    b = BundleBuilder("couns", "1980-03-01", "male")
    b.condition("91637004", "Myasthenia gravis", "2024-06-01")
    b.weight(70, "2024-12-20")
    b.statement("Azathioprine 50 mg tablet", None, 150, rxnorm="1256")
    a = run(b, AS_OF, KB)
    assert finding(a, "data-missing-start-date").severity == "warning"
    assert "data-missing-start-date" not in codes(run(on_treatment(), AS_OF, KB))


def test_incomplete_fbc() -> None:
    b = on_treatment()
    b.lab("6690-2", 6.0, "10*9/L", "2025-09-01", "WBC")
    b.lab("751-8", 3.5, "10*9/L", "2025-09-01", "Neutrophils")
    f = finding(run(b, AS_OF, KB), "data-incomplete-panel")
    assert f.severity == "warning" and "Platelets" in f.message and "FBC" in f.message
    b.lab("777-3", 250, "10*9/L", "2025-09-01", "Platelets")
    assert "data-incomplete-panel" not in codes(run(b, AS_OF, KB))
