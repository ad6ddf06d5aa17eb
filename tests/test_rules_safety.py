"""Whole-patient safety rules: interactions, contraindications, reproduction, vaccines, symptoms."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from conftest import codes, finding, run
from dateutil.relativedelta import relativedelta

from azaguard import domain as d
from azaguard.fhirbuild import BundleBuilder
from azaguard.knowledge import load_knowledge

KB = load_knowledge()
AS_OF = date(2025, 9, 10)
ONE = timedelta(days=1)


def patient(
    weight: float = 70, dose: float | None = 150, sex: str = "male", bloods: str | None = "2025-09-01"
) -> BundleBuilder:
    """An MG patient on azathioprine since January 2025 (pre-treatment when dose is None)."""
    b = BundleBuilder("safe", "1985-03-01", sex)
    b.condition("91637004", "Myasthenia gravis", "2024-06-01")
    b.weight(weight, "2025-08-01")
    b.genotype("TPMT", "*1/*1", "2024-12-01")
    b.genotype("NUDT15", "*1/*1", "2024-12-01")
    if bloods:
        b.bloods(bloods)
    if dose is not None:
        b.azathioprine("2025-01-06", dose)
    return b


def stopped(end: date) -> BundleBuilder:
    b = patient(dose=None)
    b.azathioprine("2024-01-08", 150, end=end)
    return b


def of_category(a: d.Assessment, category: str) -> list[d.Finding]:
    return [f for f in a.findings if f.category == category]


def assert_well_formed(f: d.Finding) -> None:
    assert f.message.strip() and f.action.strip(), f.code
    assert f.sources and all(s.strip() for s in f.sources), f.code


# ---------------------------------------------------------------- interactions
BY_RXNORM = [(ix.id, drug, code) for ix in KB.interactions for drug in ix.drugs for code in KB.drugs[drug].rxnorm]
BY_NAME = [(ix.id, drug, name) for ix in KB.interactions for drug in ix.drugs for name in KB.drugs[drug].names]
IX = {ix.id: ix for ix in KB.interactions}


@pytest.mark.parametrize(("ix_id", "drug", "rxnorm"), BY_RXNORM)
def test_interaction_fires_by_rxnorm(ix_id: str, drug: str, rxnorm: str) -> None:
    b = patient()
    b.statement("Tablets as directed", "2025-06-01", 10, rxnorm=rxnorm)
    a = run(b, AS_OF, KB)
    f = finding(a, f"interaction-{ix_id}")
    assert f.severity == IX[ix_id].severity and f.category == "interaction"
    assert_well_formed(f)
    assert not f.message.startswith("About to be prescribed")


@pytest.mark.parametrize(("ix_id", "drug", "name"), BY_NAME)
def test_interaction_fires_by_name_text(ix_id: str, drug: str, name: str) -> None:
    b = patient()
    b.statement(f"{name.capitalize()} 10 mg tablets", "2025-06-01", 10)
    a = run(b, AS_OF, KB)
    f = finding(a, f"interaction-{ix_id}")
    assert f.severity == IX[ix_id].severity
    assert "data-unrecognised-medicine" not in codes(a)


@pytest.mark.parametrize("ix_id", sorted(IX))
def test_interaction_fires_for_a_draft_order_about_to_be_prescribed(ix_id: str) -> None:
    name = KB.drugs[IX[ix_id].drugs[0]].names[0]
    b = patient()
    b.request(f"{name.capitalize()} tablets", "2025-09-09", 10)
    f = finding(run(b, AS_OF, KB), f"interaction-{ix_id}")
    assert f.severity == IX[ix_id].severity
    assert f.message.startswith("About to be prescribed")


@pytest.mark.parametrize("ix_id", sorted(IX))
def test_stopped_co_medication_does_not_interact(ix_id: str) -> None:
    name = KB.drugs[IX[ix_id].drugs[0]].names[0]
    b = patient()
    b.statement(name.capitalize(), "2025-01-01", 10, status="completed", end="2025-05-01")
    assert f"interaction-{ix_id}" not in codes(run(b, AS_OF, KB))
    b = patient()
    b.statement(name.capitalize(), "2025-01-01", 10, status="active", end="2025-05-01")  # period over
    assert f"interaction-{ix_id}" not in codes(run(b, AS_OF, KB))


@pytest.mark.parametrize("ix_id", sorted(IX))
def test_no_interaction_once_azathioprine_has_stopped(ix_id: str) -> None:
    name = KB.drugs[IX[ix_id].drugs[0]].names[0]
    b = stopped(date(2025, 3, 1))
    b.statement(name.capitalize(), "2025-01-01", 10)
    assert f"interaction-{ix_id}" not in codes(run(b, AS_OF, KB))


def test_interaction_literal_severities() -> None:
    assert IX["allopurinol"].severity == "critical" and IX["allopurinol"].dose_factor == 0.25
    assert IX["febuxostat"].severity == "critical" and IX["febuxostat"].avoid


def test_unknown_and_non_interacting_medicines() -> None:
    b = patient()
    b.statement("Zzyzxomab 10 mg", "2025-06-01", 10)
    f = finding(run(b, AS_OF, KB), "data-unrecognised-medicine")
    assert f.severity == "warning" and "Zzyzxomab" in f.message
    b = patient()
    b.statement("Pyridostigmine 60 mg tablets", "2025-06-01", 240)
    b.statement("Prednisolone 5 mg tablets", "2025-06-01", 10)
    a = run(b, AS_OF, KB)
    assert not of_category(a, "interaction")
    assert "data-unrecognised-medicine" not in codes(a)


def test_drug_name_must_be_a_whole_word() -> None:
    b = patient()
    b.statement("Preallopurinolate 5 mg", "2025-06-01", 5)
    assert "interaction-allopurinol" not in codes(run(b, AS_OF, KB))


# ---------------------------------------------------------------- contraindications and cautions
@pytest.mark.parametrize(
    ("name", "rxnorm"), [("Azathioprine", "1256"), ("Azathioprine", None), ("Mercaptopurine", None)]
)
def test_thiopurine_allergy_is_a_contraindication(name: str, rxnorm: str | None) -> None:
    b = patient()
    b.allergy(name, rxnorm)
    f = finding(run(b, AS_OF, KB), "contraindication-hypersensitivity")
    assert f.severity == "critical" and f.category == "contraindication"
    assert_well_formed(f)


def test_other_allergy_is_not_a_contraindication() -> None:
    b = patient()
    b.allergy("Penicillin")
    assert "contraindication-hypersensitivity" not in codes(run(b, AS_OF, KB))


CONDITIONS = sorted(KB.conditions)


def condition_variants(key: str) -> list[tuple[str | None, str]]:
    rule = KB.conditions[key]
    out: list[tuple[str | None, str]] = [(None, rule.text[0].capitalize())]
    if rule.snomed:
        out.append((rule.snomed[0], "Coded condition"))
    return out


@pytest.mark.parametrize("key", CONDITIONS)
def test_active_condition_raises_its_finding(key: str) -> None:
    rule = KB.conditions[key]
    for snomed, text in condition_variants(key):
        b = patient()
        b.condition(snomed, text, "2025-08-01")
        f = finding(run(b, AS_OF, KB), rule.finding)
        assert f.severity == KB.findings[rule.finding].severity
        assert_well_formed(f)


@pytest.mark.parametrize("key", CONDITIONS)
@pytest.mark.parametrize("status", ["resolved", "inactive", "remission"])
def test_inactive_condition_is_silent(key: str, status: str) -> None:
    rule = KB.conditions[key]
    for snomed, text in condition_variants(key):
        b = patient()
        b.condition(snomed, text, "2024-08-01", status=status)
        assert rule.finding not in codes(run(b, AS_OF, KB))


@pytest.mark.parametrize("key", CONDITIONS)
def test_condition_with_onset_after_as_of_is_not_used(key: str) -> None:
    rule = KB.conditions[key]
    b = patient()
    b.condition(None, rule.text[0].capitalize(), AS_OF + ONE)
    assert rule.finding not in codes(run(b, AS_OF, KB))
    assert rule.finding in codes(run(b, AS_OF + ONE, KB))


@pytest.mark.parametrize(
    ("snomed", "text", "code", "severity"),
    [
        ("40733004", "Infectious disease", "caution-infection", "warning"),
        ("68566005", "Urinary tract infectious disease", "caution-infection", "warning"),
        ("91302008", "Sepsis", "contraindication-active-infection", "critical"),
        (None, "Pneumonia", "contraindication-active-infection", "critical"),
        ("66071002", "Chronic hepatitis B", "contraindication-hepatitis-b", "critical"),
        (None, "Hepatitis B", "contraindication-hepatitis-b", "critical"),
        (None, "Alcoholic liver disease", "caution-liver-disease", "warning"),
        ("235888006", "Cholestasis of pregnancy", "reproduction-cholestasis-of-pregnancy", "critical"),
    ],
)
def test_condition_literal_severities(snomed: str | None, text: str, code: str, severity: str) -> None:
    b = patient()
    b.condition(snomed, text, "2025-08-01")
    assert finding(run(b, AS_OF, KB), code).severity == severity


def test_uncomplicated_infection_is_a_warning_not_the_serious_infection_critical() -> None:
    """BSR 2025: stop during *severe* infection (IV treatment or admission); a UTI is a warning to
    check the count and consider pausing."""
    b = patient()
    b.condition("68566005", "Urinary tract infection", "2025-08-01")
    a = run(b, AS_OF, KB)
    f = finding(a, "caution-infection")
    assert "Check FBC" in f.action and "consider pausing" in f.action
    assert "contraindication-active-infection" not in codes(a)
    b = patient()
    b.condition("91302008", "Sepsis with serious infection", "2025-08-01")
    a = run(b, AS_OF, KB)
    assert "contraindication-active-infection" in codes(a) and "caution-infection" not in codes(a)


@pytest.mark.parametrize(
    ("snomed", "text"), [("431855005", "Chronic kidney disease stage 1"), ("197321007", "Steatosis of liver")]
)
def test_ckd_stage_1_and_fatty_liver_do_not_cut_the_dose(snomed: str, text: str) -> None:
    b = patient()
    b.condition(snomed, text, "2025-08-01")
    a = run(b, AS_OF, KB)
    assert not {"dosing-renal", "dosing-hepatic", "caution-liver-disease"} & codes(a)
    assert not [f for f in a.findings if f.severity == "critical"]


# ---------------------------------------------------------------- reproduction
NOT_PREGNANT = ("82810-3", "LA26683-5", "Not pregnant")


def test_pregnancy_is_info_with_current_guidance_superseding_old_advice() -> None:
    b = patient(75, 150, "female")
    b.pregnant("2025-08-15")
    f = finding(run(b, AS_OF, KB), "reproduction-pregnancy")
    assert f.severity == "info" and f.category == "reproduction"
    msg = f.message.lower()
    assert "compatible" in msg and "supersedes" in msg
    assert "seed" in msg or "older" in msg
    assert any(s.startswith("seed:") for s in f.sources)
    assert "2" in f.message  # the 2 mg/kg/day limit is stated


def test_later_not_pregnant_status_replaces_pregnant() -> None:
    b = patient(75, 150, "female")
    b.pregnant("2025-01-15")
    b.status(*NOT_PREGNANT, "2025-08-15")
    assert "reproduction-pregnancy" not in codes(run(b, AS_OF, KB))


@pytest.mark.parametrize(
    ("weight", "dose", "high"), [(75, 150, False), (74, 150, True), (50, 100, False), (50, 125, True)]
)
def test_pregnancy_dose_above_2_mg_per_kg(weight: float, dose: float, high: bool) -> None:
    b = patient(weight, dose, "female")
    b.pregnant("2025-08-15")
    a = run(b, AS_OF, KB)
    assert ("reproduction-pregnancy-dose-high" in codes(a)) is high
    if high:
        f = finding(a, "reproduction-pregnancy-dose-high")
        assert f.severity == "warning"
        assert_well_formed(f)


def test_pregnancy_dose_rule_does_not_fire_when_not_pregnant() -> None:
    assert "reproduction-pregnancy-dose-high" not in codes(run(patient(50, 150, "female"), AS_OF, KB))


@pytest.mark.parametrize(("dose", "high"), [(100, False), (125, True), (150, True)])
def test_breastfeeding_dose_above_100_mg(dose: float, high: bool) -> None:
    b = patient(75, dose, "female")
    b.breastfeeding("2025-08-15")
    a = run(b, AS_OF, KB)
    f = finding(a, "reproduction-breastfeeding")
    assert f.severity == "info" and "supersedes" in f.message.lower()
    assert ("reproduction-breastfeeding-dose-high" in codes(a)) is high
    if high:
        assert finding(a, "reproduction-breastfeeding-dose-high").severity == "warning"


def test_planned_dose_counts_for_pregnancy_before_start() -> None:
    b = patient(50, None, "female")
    b.pregnant("2025-08-15")
    b.request("Azathioprine 50 mg tablets", "2025-09-08", 125, rxnorm="1256")
    assert "reproduction-pregnancy-dose-high" in codes(run(b, AS_OF, KB))


def test_cholestasis_of_pregnancy_is_critical() -> None:
    b = patient(75, 150, "female")
    b.pregnant("2025-08-15")
    b.condition(None, "Obstetric cholestasis", "2025-09-01")
    f = finding(run(b, AS_OF, KB), "reproduction-cholestasis-of-pregnancy")
    assert f.severity == "critical" and f.category == "reproduction"


def test_pregnancy_planning_is_info() -> None:
    b = patient(75, 150, "female")
    b.condition(None, "Planning a pregnancy", "2025-08-01")
    f = finding(run(b, AS_OF, KB), "reproduction-planning")
    assert f.severity == "info"


# ---------------------------------------------------------------- vaccines
LIVE = [(key, v.cvx[0], v.names[0]) for key, v in KB.vaccines.live.items() if v.cvx]
INACTIVATED = [(key, v.cvx[0], v.names[0]) for key, v in KB.vaccines.inactivated.items() if v.cvx]


@pytest.mark.parametrize(("key", "cvx", "name"), LIVE)
def test_live_vaccine_ordered_on_treatment_is_critical(key: str, cvx: str, name: str) -> None:
    b = patient()
    b.vaccine_order(name.title(), cvx, "2025-09-09")
    f = finding(run(b, AS_OF, KB), "vaccine-live-ordered")
    assert f.severity == "critical" and f.category == "vaccine"
    assert_well_formed(f)


@pytest.mark.parametrize(("key", "cvx", "name"), INACTIVATED)
def test_inactivated_vaccine_order_is_not_a_live_vaccine_finding(key: str, cvx: str, name: str) -> None:
    b = patient()
    b.vaccine_order(name.title(), cvx, "2025-09-09")
    a = run(b, AS_OF, KB)
    assert not {"vaccine-live-ordered", "vaccine-live-given", "vaccine-live-before-start"} & codes(a)


def test_live_vaccine_after_stopping_within_3_months_is_critical() -> None:
    end = date(2025, 6, 15)
    washout_end = end + relativedelta(months=3)
    for as_of, fires in (
        (end + ONE, True),
        (washout_end - ONE, True),
        (washout_end, False),
        (washout_end + ONE, False),
    ):
        b = stopped(end)
        b.vaccine_order("MMR", "03", as_of)
        a = run(b, as_of, KB)
        assert a.monitoring.phase == "stopped"
        assert ("vaccine-live-ordered" in codes(a)) is fires, as_of
        if fires:
            assert finding(a, "vaccine-live-ordered").severity == "critical"


def test_live_vaccine_before_a_first_start_is_a_timing_warning() -> None:
    b = patient(dose=None)
    b.request("Azathioprine 50 mg tablets", "2025-09-09", 50, rxnorm="1256")
    b.vaccine_order("Zostavax", "121", "2025-09-09")
    a = run(b, AS_OF, KB)
    assert finding(a, "vaccine-live-before-start").severity == "warning"
    assert "vaccine-live-ordered" not in codes(a)
    # no azathioprine planned: nothing to say about the live vaccine
    b = patient(dose=None)
    b.vaccine_order("Zostavax", "121", "2025-09-09")
    assert not {"vaccine-live-before-start", "vaccine-live-ordered"} & codes(run(b, AS_OF, KB))


def test_live_vaccine_within_washout_stays_critical_when_a_restart_is_ordered() -> None:
    b = stopped(date(2025, 8, 1))
    b.request("Azathioprine 50 mg tablets", "2025-09-01", 100, rxnorm="1256")
    b.vaccine_order("Zostavax", "121", "2025-09-05")
    f = finding(run(b, AS_OF, KB), "vaccine-live-ordered")
    assert f.severity == "critical"


def test_restart_after_washout_with_a_live_vaccine_order_is_a_timing_warning() -> None:
    b = stopped(date(2025, 1, 1))
    b.request("Azathioprine 50 mg tablets", "2025-09-01", 100, rxnorm="1256")
    b.vaccine_order("Zostavax", "121", "2025-09-05")
    assert "vaccine-live-before-start" in codes(run(b, AS_OF, KB))


def test_live_vaccine_given_while_on_treatment_is_a_warning() -> None:
    b = patient()
    b.immunization("Yellow fever vaccine", "37", "2025-07-01")
    assert finding(run(b, AS_OF, KB), "vaccine-live-given").severity == "warning"
    b = patient()
    b.immunization("Yellow fever vaccine", "37", "2024-11-01")  # before the course began
    assert "vaccine-live-given" not in codes(run(b, AS_OF, KB))


def test_influenza_vaccine_due_after_12_months() -> None:
    for given, due in ((AS_OF - relativedelta(months=12) + ONE, False), (AS_OF - relativedelta(months=12), True)):
        b = patient()
        b.immunization("Influenza vaccine", "88", given)
        assert ("vaccine-influenza-due" in codes(run(b, AS_OF, KB))) is due, given


def test_pneumococcal_and_shingrix_reminders_clear_when_given() -> None:
    a = run(patient(), AS_OF, KB)
    assert {"vaccine-pneumococcal-missing", "vaccine-shingrix"} <= codes(a)
    b = patient()
    b.immunization("Pneumovax 23", "33", "2025-02-01")
    b.immunization("Shingrix", "187", "2025-02-01")
    a = run(b, AS_OF, KB)
    assert not {"vaccine-pneumococcal-missing", "vaccine-shingrix"} & codes(a)


# ---------------------------------------------------------------- symptoms
FEVER = ("386661006", "Fever")
JAUNDICE = ("18165001", "Jaundice")
RASH = ("271807003", "Rash")


def test_fever_after_the_last_fbc_is_critical() -> None:
    b = patient(bloods="2025-09-01")
    b.symptom(*FEVER, "2025-09-05")
    f = finding(run(b, AS_OF, KB), "symptom-fever")
    assert f.severity == "critical" and f.category == "symptom"
    assert_well_formed(f)


@pytest.mark.parametrize("fbc_day", ["2025-09-05", "2025-09-08"])
def test_fbc_on_or_after_the_report_answers_it(fbc_day: str) -> None:
    b = patient(bloods="2025-09-01")
    b.symptom(*FEVER, "2025-09-05")
    b.fbc(fbc_day, 6.0, 3.5, 250)
    assert "symptom-fever" not in codes(run(b, AS_OF, KB))


def test_fbc_the_day_before_does_not_answer_the_report() -> None:
    b = patient(bloods="2025-09-01")
    b.symptom(*FEVER, "2025-09-05")
    b.fbc("2025-09-04", 6.0, 3.5, 250)
    assert "symptom-fever" in codes(run(b, AS_OF, KB))


def test_liver_symptom_is_answered_by_lft_not_fbc() -> None:
    b = patient(bloods="2025-09-01")
    b.symptom(*JAUNDICE, "2025-09-05")
    b.fbc("2025-09-06", 6.0, 3.5, 250)
    f = finding(run(b, AS_OF, KB), "symptom-jaundice")
    assert f.severity == "critical"
    b.lft("2025-09-06", 30)
    assert "symptom-jaundice" not in codes(run(b, AS_OF, KB))


def test_other_symptom_is_a_warning() -> None:
    b = patient(bloods="2025-09-01")
    b.symptom(*RASH, "2025-09-05")
    assert finding(run(b, AS_OF, KB), "symptom-rash").severity == "warning"


def test_symptom_reported_after_as_of_is_ignored() -> None:
    b = patient(bloods="2025-09-01")
    b.symptom(*FEVER, AS_OF + ONE)
    assert "symptom-fever" not in codes(run(b, AS_OF, KB))


def test_symptom_denied_is_not_a_report() -> None:
    b = patient(bloods="2025-09-01")
    b.symptom(*FEVER, "2025-09-05", present=False)
    assert "symptom-fever" not in codes(run(b, AS_OF, KB))


@pytest.mark.parametrize(("neut", "fires"), [(0.99, True), (0.5, True), (1.0, False), (1.5, False)])
def test_fever_with_neutrophils_below_1_is_neutropenic_fever(neut: float, fires: bool) -> None:
    b = patient(bloods=None)
    b.bloods("2025-09-01", wbc=3.0, neut=neut)
    b.symptom(*FEVER, "2025-09-05")
    a = run(b, AS_OF, KB)
    assert "symptom-fever" in codes(a)
    assert ("symptom-neutropenic-fever" in codes(a)) is fires
    if fires:
        f = finding(a, "symptom-neutropenic-fever")
        assert f.severity == "critical" and f.category == "symptom"
        assert_well_formed(f)


def test_neutropenic_fever_needs_a_fever() -> None:
    b = patient(bloods=None)
    b.bloods("2025-09-01", wbc=3.0, neut=0.5)
    b.symptom(*RASH, "2025-09-05")
    assert "symptom-neutropenic-fever" not in codes(run(b, AS_OF, KB))


@pytest.mark.parametrize(("neut", "fires"), [(0.5, True), (0.99, True), (1.0, False)])
def test_fever_answered_by_a_same_day_fbc_showing_neutropenia_is_neutropenic_fever(neut: float, fires: bool) -> None:
    """The usual sequence - fever reported, urgent FBC the same day - is exactly the emergency."""
    b = patient(bloods="2025-09-01")
    b.symptom(*FEVER, "2025-09-05")
    b.fbc("2025-09-05", 2.0, neut, 200)
    a = run(b, AS_OF, KB)
    assert "symptom-fever" not in codes(a)  # the FBC answered the report ...
    assert ("symptom-neutropenic-fever" in codes(a)) is fires  # ... and its answer may be the emergency
    if fires:
        assert finding(a, "symptom-neutropenic-fever").severity == "critical"


def test_low_neutrophils_after_a_later_normal_count_are_not_linked_to_an_old_fever() -> None:
    b = patient(bloods=None)
    b.symptom(*FEVER, "2025-08-01")
    b.fbc("2025-08-02", 6.0, 3.5, 250)  # answered: normal count
    b.fbc("2025-09-05", 2.0, 0.5, 200)  # a later low count without a new fever
    assert "symptom-neutropenic-fever" not in codes(run(b, AS_OF, KB))
