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
