"""Issue 11: knowledge that is current - verified codes, and rules that published cases of
azathioprine harm showed missing. Each test checks both sides of its rule through the real reader.
"""

from __future__ import annotations

from datetime import date

import pytest
from conftest import codes, finding, on_treatment, run

from azaguard.fhirbuild import BundleBuilder
from azaguard.knowledge import load_knowledge

KB = load_knowledge()
AS_OF = date(2025, 9, 10)


# ---------------------------------------------------------------- codes
def test_vzv_igg_negative_with_the_valid_loinc_is_non_immune() -> None:
    b = BundleBuilder("v", "1980-01-01", "female")
    b.condition("91637004", "Myasthenia gravis", "2024-06-01")
    b.screening("19162-7", "Varicella zoster virus IgG Ab [Presence] in Serum", "2025-08-01", result="Negative")
    assert finding(run(b, AS_OF, KB), "screening-vzv-non-immune").severity in ("warning", "critical")
    b = BundleBuilder("v", "1980-01-01", "female")
    b.condition("91637004", "Myasthenia gravis", "2024-06-01")
    b.screening("19162-7", "Varicella zoster virus IgG Ab [Presence] in Serum", "2025-08-01", result="Positive")
    assert "screening-vzv-non-immune" not in codes(run(b, AS_OF, KB))


LIVE_NEW = ["38", "54", "55", "143", "80", "105", "125", "169", "204", "317", "333"]


@pytest.mark.parametrize("cvx", LIVE_NEW)
def test_newly_listed_live_vaccines_are_blocked_on_treatment(cvx: str) -> None:
    b = on_treatment()
    b.bloods("2025-08-25")
    b.vaccine_order("Vaccine", cvx, "2025-09-09")
    assert finding(run(b, AS_OF, KB), "vaccine-live-ordered").severity == "critical"


def test_mva_bn_mpox_vaccine_is_not_a_blocking_live_vaccine() -> None:
    b = on_treatment()
    b.bloods("2025-08-25")
    b.vaccine_order("Jynneos", "206", "2025-09-09")
    assert "vaccine-live-ordered" not in codes(run(b, AS_OF, KB))


@pytest.mark.parametrize("cvx", ["325", "330", "26", "91", "89"])
def test_unspecified_formulations_that_may_be_live_ask(cvx: str) -> None:
    b = on_treatment()
    b.vaccine_order("Vaccine, unspecified formulation", cvx, "2025-09-09")
    assert finding(run(b, AS_OF, KB), "vaccine-formulation-unknown").severity == "warning"


@pytest.mark.parametrize(
    ("rxnorm", "name"), [("35208", "Quinapril"), ("38454", "Trandolapril"), ("50166", "Fosinopril")]
)
def test_ace_inhibitors_by_rxnorm(rxnorm: str, name: str) -> None:
    b = on_treatment()
    b.statement(f"{name} 10 mg tablet", "2025-08-01", 10, rxnorm=rxnorm)
    b.entries[-1]["medicationCodeableConcept"].pop("text", None)
    assert "interaction-ace-inhibitor" in codes(run(b, AS_OF, KB))


def test_cyp2c19_interpretation_code_is_not_read_as_tpmt() -> None:
    assert "79714-2" not in KB.pgx_codes.phenotype_loinc
    assert "79713-4" in KB.pgx_codes.phenotype_loinc


def test_thrombocytopenic_disorder_is_a_condition_not_the_bruising_symptom() -> None:
    assert "302215000" not in KB.symptoms.items["bruising"].snomed
    b = on_treatment()
    b.condition("302215000", "Thrombocytopenic disorder", "2025-01-01")
    a = run(b, AS_OF, KB)
    assert "caution-blood-disorder" in codes(a) and "symptom-bruising" not in codes(a)


def egfr_day(*pairs: tuple[str, float]) -> BundleBuilder:
    b = on_treatment()
    b.bloods("2025-08-25")
    for loinc, value in pairs:
        b.lab(loinc, value, "mL/min/{1.73_m2}", "2025-09-01", "eGFR")
    return b


def test_race_based_egfr_is_read_with_a_note_and_the_among_blacks_variant_yields() -> None:
    # MDRD among non-blacks 58 and among blacks 70 the same day: the race-adjusted 70 is ignored
    a = run(egfr_day(("48642-3", 58), ("48643-1", 70)), AS_OF, KB)
    assert "lab-egfr-low" in codes(a)
    assert finding(a, "data-deprecated-code").severity == "info"
    # the current equation alone: no note
    a = run(egfr_day(("98979-8", 58)), AS_OF, KB)
    assert "lab-egfr-low" in codes(a) and "data-deprecated-code" not in codes(a)
    # the among-blacks variant alone is still read (never dropped without another result)
    assert "lab-egfr-low" not in codes(run(egfr_day(("48643-1", 70)), AS_OF, KB))


# ---------------------------------------------------------------- rules published cases showed missing
def hb(*values: tuple[str, float]) -> BundleBuilder:
    b = on_treatment()
    for when, value in values:
        b.fbc(when, 6.0, 3.5, 250).lab("718-7", value, "g/L", when, "Haemoglobin")
    return b


@pytest.mark.parametrize(
    ("value", "severity", "grade"),
    [(100.0, None, None), (99.0, "warning", 2), (80.0, "warning", 2), (79.0, "critical", 3), (44.0, "critical", 3)],
)
def test_low_haemoglobin_is_graded_and_never_silent(value: float, severity: str | None, grade: int | None) -> None:
    a = run(hb(("2025-09-01", value)), AS_OF, KB)
    if severity is None:
        assert "lab-haemoglobin-low" not in codes(a)
        return
    f = finding(a, "lab-haemoglobin-low")
    assert f.severity == severity and f.ctcae is not None and f.ctcae["grade"] == grade
    assert f.follow_up is not None and f.follow_up.group == "FBC"


def test_a_steadily_falling_haemoglobin_is_a_trend() -> None:
    a = run(hb(("2025-06-02", 140), ("2025-07-01", 125), ("2025-08-01", 110), ("2025-09-01", 98)), AS_OF, KB)
    assert finding(a, "trend-haemoglobin-falling").severity == "critical"
    a = run(hb(("2025-06-02", 140), ("2025-07-01", 130), ("2025-08-01", 125), ("2025-09-01", 120)), AS_OF, KB)
    assert "trend-haemoglobin-falling" not in codes(a)


def metabolite(tgn: float | None = None, mmp: float | None = None, when: str = "2025-09-01") -> BundleBuilder:
    b = on_treatment()
    b.bloods("2025-08-25")
    for code, value in (("6-tgn", tgn), ("6-mmp", mmp)):
        if value is not None:
            b.add(
                {
                    "resourceType": "Observation",
                    "id": f"met-{code}",
                    "status": "final",
                    "code": {"coding": [{"system": "http://example.org/local", "code": code}], "text": code.upper()},
                    "effectiveDateTime": when,
                    "valueQuantity": {"value": value, "unit": "pmol/8x10^8 RBC"},
                }
            )
    return b


@pytest.mark.parametrize(
    ("tgn", "code"), [(451, "metabolite-tgn-high"), (450, "metabolite-tgn-in-range"), (234, "metabolite-tgn-low")]
)
def test_a_lone_6_tgn_is_read_against_its_range(tgn: float, code: str) -> None:
    a = run(metabolite(tgn=tgn), AS_OF, KB)
    assert code in codes(a)
    if code == "metabolite-tgn-high":
        assert finding(a, code).severity == "warning"


def test_a_lone_high_6_mmp_is_a_liver_warning() -> None:
    assert finding(run(metabolite(mmp=5701), AS_OF, KB), "metabolite-mmp-high").severity == "warning"
    assert "metabolite-mmp-high" not in codes(run(metabolite(mmp=5700), AS_OF, KB))
    # a pair measured together is read as a pattern, not as two lone results
    a = run(metabolite(tgn=300, mmp=2000), AS_OF, KB)
    assert "metabolite-therapeutic" in codes(a) and "metabolite-tgn-in-range" not in codes(a)


def started(start: str, symptom_day: str, snomed: str = "386661006", name: str = "Fever") -> BundleBuilder:
    b = on_treatment(start=start, dose=50)
    b.bloods(start)
    b.symptom(snomed, name, symptom_day)
    return b


def test_a_reaction_in_week_3_is_possible_hypersensitivity_and_a_normal_count_does_not_close_it() -> None:
    b = started("2025-08-18", "2025-09-05")
    b.bloods("2025-09-06")  # a normal count the next day answers the fever, not the reaction
    a = run(b, AS_OF, KB)
    f = finding(a, "symptom-hypersensitivity")
    assert f.severity == "critical" and "18 days after starting" in f.message
    assert "symptom-fever" not in codes(a)
    # 5 weeks after starting (beyond the 4-week window): a fever, not a hypersensitivity reaction
    a = run(started("2025-07-28", "2025-09-05"), AS_OF, KB)
    assert "symptom-hypersensitivity" not in codes(a) and "symptom-fever" in codes(a)


def test_no_up_titration_while_an_infection_is_recorded() -> None:
    b = on_treatment(start="2025-08-04", dose=50)
    b.bloods("2025-09-01")
    b.condition("68566005", "Urinary tract infection", "2025-09-05")
    a = run(b, AS_OF, KB)
    assert "an infection is recorded" in finding(a, "dosing-no-escalation").message
    assert [s.mg_per_day for s in a.dose.plan] == [50]


@pytest.mark.parametrize(
    ("snomed", "text"), [("34000006", "Crohn's disease"), (None, "Renal transplant recipient"), ("55464009", "SLE")]
)
def test_indications_outside_neuromuscular_disease_are_recognised(snomed: str | None, text: str) -> None:
    b = BundleBuilder("o", "1980-01-01", "female")
    b.condition(snomed, text, "2020-01-01")
    b.weight(60, "2025-08-01").genotype("TPMT", "*1/*1", "2025-01-01").genotype("NUDT15", "*1/*1", "2025-01-01")
    b.bloods("2025-08-25").azathioprine("2025-01-06", 100)
    a = run(b, AS_OF, KB)
    f = finding(a, "indication-outside-protocol")
    assert "neuromuscular" in f.message and "monitoring" in f.action
    assert "data-missing-indication" not in codes(a)
    # with no indication at all: still the missing-indication finding
    b2 = BundleBuilder("o", "1980-01-01", "female")
    b2.weight(60, "2025-08-01").bloods("2025-08-25").azathioprine("2025-01-06", 100)
    assert "data-missing-indication" in codes(run(b2, AS_OF, KB))


def test_yearly_risk_review_reminder() -> None:
    f = finding(run(on_treatment(), AS_OF, KB), "monitoring-risk-review")
    assert f.severity == "info" and "2026-01-06" in f.message
    assert "monitoring-risk-review" not in codes(run(on_treatment(), date(2025, 1, 5), KB))  # not yet started


LOW_RISK = """
[protocol]
name = "Trust with BSR 2025 read"
version = "1"
[schedule.low_risk]
enabled = true
"""


def test_low_risk_extended_interval_is_off_by_default_and_a_protocol_option(tmp_path) -> None:
    assert KB.schedule.low_risk.enabled is False
    assert KB.schedule.maintenance_interval.weeks == 12

    def stable(abnormal: bool = False) -> BundleBuilder:
        b = on_treatment(start="2023-01-09")
        for when in ("2024-10-07", "2024-12-30", "2025-03-24", "2025-06-16", "2025-09-08"):
            b.bloods(when, neut=1.2 if (abnormal and when == "2025-03-24") else 3.5)
        return b

    fbc = {g.name: g for g in run(stable(), AS_OF, KB).monitoring.groups}["FBC"]
    assert fbc.next_due == date(2025, 12, 1)  # 12 weeks
    path = tmp_path / "low.toml"
    path.write_text(LOW_RISK, encoding="utf-8")
    local = load_knowledge(path)
    fbc = {g.name: g for g in run(stable(), AS_OF, local).monitoring.groups}["FBC"]
    # 6 months after 2025-09-08 is Sunday 8 March 2026: brought forward to Friday 6 March (never later)
    assert (fbc.next_due, fbc.moved_from) == (date(2026, 3, 6), date(2026, 3, 8))
    fbc = {g.name: g for g in run(stable(abnormal=True), AS_OF, local).monitoring.groups}["FBC"]
    assert fbc.next_due == date(2025, 12, 1)  # a low count in the past year: not low risk


def test_no_up_titration_while_a_reaction_or_a_red_flag_is_open() -> None:
    a = run(started("2025-08-18", "2025-09-05"), AS_OF, KB)
    assert "hypersensitivity" in finding(a, "dosing-no-escalation").message
    assert [s.mg_per_day for s in a.dose.plan] == [50]
    # a sore throat (red flag) without a neutrophil count since: paused too
    b = on_treatment(start="2025-06-02", dose=50)
    b.bloods("2025-08-25")
    b.symptom("267102003", "Sore throat", "2025-09-08")
    assert "red-flag symptom" in finding(run(b, AS_OF, KB), "dosing-no-escalation").message
    b.bloods("2025-09-09")  # answered by a count: titration may go on
    a = run(b, AS_OF, KB)
    assert "dosing-no-escalation" not in codes(a) and a.dose.plan[-1].mg_per_day > 50
