"""TPMT / NUDT15: CPIC diplotype tables, phenotype text, red-cell activity bands, discordance and
combined dosing categories.
"""

from __future__ import annotations

import csv
import math
from importlib import resources

import pytest
from conftest import codes, finding, run

from azaguard import domain as d
from azaguard.engine.pgx import phenotype_from_diplotype
from azaguard.fhirbuild import BundleBuilder
from azaguard.knowledge import load_knowledge

KB = load_knowledge()
AS_OF = "2025-09-10"
WEIGHT = 70.0
LABEL = {
    "NM": "Normal Metabolizer",
    "IM": "Intermediate Metabolizer",
    "PM": "Poor Metabolizer",
    "Indeterminate": "Indeterminate",
}


def patient(
    tpmt: str | None = "*1/*1",
    nudt15: str | None = "*1/*1",
    on_treatment: bool = False,
    weight: float | None = WEIGHT,
) -> BundleBuilder:
    b = BundleBuilder("pgx", "1970-03-01", "male")
    b.condition("91637004", "Myasthenia gravis", "2024-06-01")
    if weight is not None:
        b.weight(weight, "2025-08-01")
    if tpmt:
        b.genotype("TPMT", tpmt, "2025-08-01")
    if nudt15:
        b.genotype("NUDT15", nudt15, "2025-08-01")
    b.bloods("2025-08-01")
    if on_treatment:
        b.azathioprine("2025-01-06", 50)
        b.bloods("2025-09-01")
    return b


def recommended(a: d.Assessment) -> tuple[float, float]:
    assert a.dose.recommended is not None, "no recommended range"
    return a.dose.recommended.low, a.dose.recommended.high


def expected_range(weight: float, frac: tuple[float, float]) -> tuple[float, float]:
    """The clinical rule: 2.0-2.5 mg/kg/day (max 3 mg/kg, 200 mg/day) x PGx fraction; whole 25 mg
    tablets, low end to the nearest tablet, high end rounded down so it never exceeds a cap."""
    low = 2.0 * weight * frac[0]
    high = min(2.5 * weight, 3.0 * weight, 200.0) * frac[1]
    high_r = math.floor(high / 25 + 1e-9) * 25
    low_r = min(max(math.floor(low / 25 + 0.5) * 25, 25), high_r)
    return float(low_r), float(high_r)


# ---------------------------------------------------------------- CPIC diplotypes (data 2026-02-05)
DIPLOTYPES = [
    ("TPMT", "*1/*1", "NM"),
    ("TPMT", "*1/*3A", "IM"),
    ("TPMT", "*3A/*1", "IM"),
    ("TPMT", "*3A/*3C", "PM"),
    ("TPMT", "*1/*5", "IM"),  # *5 uncertain -> no function in 2026 (was Indeterminate)
    ("TPMT", "*3A/*5", "PM"),  # was Possible Intermediate: now Poor
    ("TPMT", "*2/*6", "PM"),  # was Possible Intermediate: now Poor
    ("TPMT", "*5/*5", "PM"),  # was Indeterminate: now Poor
    ("TPMT", "*1/*8", "NM"),  # normal + decreased = Normal
    ("TPMT", "*8/*8", "IM"),  # decreased + decreased = Intermediate
    ("TPMT", "*2/*8", "IM"),  # decreased + no function = Possible Intermediate for TPMT, dosed as IM
    ("TPMT", "*1/*9", "Indeterminate"),  # *9 still uncertain
    ("TPMT", "*3A/*9", "IM"),  # no function + uncertain = Possible Intermediate
    ("NUDT15", "*1/*1", "NM"),
    ("NUDT15", "*1/*3", "IM"),
    ("NUDT15", "*3/*3", "PM"),
    ("NUDT15", "*1/*2", "IM"),  # *2 is now part of *3: read as *1/*3, never Indeterminate
    ("NUDT15", "*2/*2", "PM"),  # read as *3/*3
    ("NUDT15", "*3/*4", "PM"),  # was Possible Intermediate: now Poor
    ("NUDT15", "*3/*5", "PM"),  # decreased + no function = Poor for NUDT15 (unlike TPMT)
    ("NUDT15", "*1/*5", "NM"),
    ("NUDT15", "*5/*8", "IM"),
    ("NUDT15", "*1/*11", "Indeterminate"),
]


@pytest.mark.parametrize(("gene", "diplotype", "phenotype"), DIPLOTYPES)
def test_cpic_diplotype_calls(gene: str, diplotype: str, phenotype: str) -> None:
    b = patient(**{gene.lower(): diplotype})  # type: ignore[arg-type]  # tpmt= or nudt15=
    a = run(b, AS_OF, KB)
    assert a.pgx[gene.lower()] == LABEL[phenotype]


# CPIC phenotype wording -> the call it must produce.
CPIC_TERMS = {
    "Normal Metabolizer": "NM",
    "Intermediate Metabolizer": "IM",
    "Possible Intermediate Metabolizer": "IM",
    "Poor Metabolizer": "PM",
    "Indeterminate": "Indeterminate",
}


@pytest.mark.parametrize("gene", ["TPMT", "NUDT15"])
def test_every_shipped_cpic_diplotype_is_called_as_cpic_says(gene: str) -> None:
    text = resources.files("azaguard.knowledge.data").joinpath(f"cpic/{gene}_diplotype_phenotype.tsv").read_text()
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    assert len(rows) > 10
    wrong = [
        (r["diplotype"], r["phenotype"], phenotype_from_diplotype(KB, gene, r["diplotype"]))
        for r in rows
        if phenotype_from_diplotype(KB, gene, r["diplotype"]) != CPIC_TERMS[r["phenotype"]]
    ]
    assert not wrong, wrong[:5]


@pytest.mark.parametrize(
    ("diplotype", "phenotype"),
    [("*1/*99", "Indeterminate"), ("*99/*98", "Indeterminate"), ("*3A/*99", "IM"), ("*8/*99", "Indeterminate")],
)
def test_unlisted_diplotype_never_called_normal(diplotype: str, phenotype: str) -> None:
    """An allele CPIC does not list has unknown function: the call is never Normal, and an
    Indeterminate call asks for TPMT activity."""
    a = run(patient(tpmt=diplotype), AS_OF, KB)
    assert a.pgx["tpmt"] == LABEL[phenotype]
    assert a.pgx["category"] != "normal"
    if phenotype == "Indeterminate":
        assert "TPMT activity" in finding(a, "pgx-indeterminate").action


def test_nudt15_star2_from_a_laboratory_is_read_as_star3() -> None:
    """A laboratory's legacy NUDT15 *1/*2 is *1/*3 (Intermediate), and the report says so."""
    a = run(patient(nudt15="*1/*2"), AS_OF, KB)
    assert a.pgx["nudt15"] == LABEL["IM"]
    assert a.pgx["category"] == "intermediate"
    assert "data-unknown-allele" not in codes(a) and "pgx-nudt15-indeterminate" not in codes(a)
    f = finding(a, "pgx-intermediate")
    assert "*1/*2, read as *1/*3" in f.message
    assert recommended(a) == expected_range(WEIGHT, (0.3, 0.8))


def test_uninterpretable_genotype_is_a_data_quality_finding_and_tpmt_unknown() -> None:
    a = run(patient(tpmt="positive for something"), AS_OF, KB)
    f = finding(a, "data-unknown-allele")
    assert f.severity == "warning" and f.category == "data-quality"
    assert a.pgx["tpmt"] is None
    assert "pgx-tpmt-unknown" in codes(a)
    assert a.dose.recommended is None


# ---------------------------------------------------------------- phenotype text
@pytest.mark.parametrize(
    ("gene", "text", "phenotype"),
    [
        ("TPMT", "TPMT Intermediate Metabolizer", "IM"),
        ("TPMT", "Intermediate Metabolizer", "IM"),
        ("TPMT", "Possible Intermediate Metabolizer", "IM"),
        ("TPMT", "TPMT Poor Metabolizer", "PM"),
        ("TPMT", "Normal Metabolizer", "NM"),
        ("TPMT", "Indeterminate", "Indeterminate"),
        ("NUDT15", "NUDT15 Intermediate Metabolizer", "IM"),
        ("NUDT15", "NUDT15 Poor Metabolizer", "PM"),
    ],
)
def test_reported_phenotype_text(gene: str, text: str, phenotype: str) -> None:
    b = patient(**{gene.lower(): None})  # type: ignore[arg-type]  # tpmt= or nudt15=
    b.phenotype(gene, text, "2025-08-01")
    a = run(b, AS_OF, KB)
    assert a.pgx[gene.lower()] == LABEL[phenotype]


# ---------------------------------------------------------------- red-cell activity bands
def band_cases() -> list[tuple[str, str, float, str]]:
    cases: list[tuple[str, str, float, str]] = []
    for table in KB.pgx.activity_units:
        for unit in table.unit:
            for band in table.bands:
                if band.low > 0:
                    cases.append((table.assay[0], unit, band.low, band.phenotype))
                if band.high < 1e6:
                    cases.append((table.assay[0], unit, round(band.high - 0.01, 2), band.phenotype))
    return cases


# The assay each literal unit below is reported by (the result must name it: Observation.method).
ASSAY = {"nmol/h/g Hb": "GSTT Purine Research Laboratory", "mU/L": "SWBH TPMT activity", "NMOL/H/G HB": "GSTT"}


def activity_only(value: float, unit: str, on_treatment: bool = False, method: str | None = "") -> BundleBuilder:
    b = patient(tpmt=None, on_treatment=on_treatment)
    b.tpmt_activity(value, unit, "2025-08-01", ASSAY.get(unit) if method == "" else method)
    return b


@pytest.mark.parametrize(("assay", "unit", "value", "phenotype"), band_cases())
def test_activity_band_edges_from_knowledge(assay: str, unit: str, value: float, phenotype: str) -> None:
    a = run(activity_only(value, unit, method=f"{assay} assay"), AS_OF, KB)
    assert a.pgx["tpmt"] == LABEL[phenotype]


def test_two_assays_with_one_unit_are_never_merged() -> None:
    """ARUP calls < 17 U/mL "low - avoid thiopurines"; an older US reference calls 6.3-15 low.
    10 U/mL from ARUP is a poor metaboliser (no dose), not a 30-80% dose."""
    arup = run(activity_only(10, "U/mL", method="ARUP TPMT RBC"), AS_OF, KB)
    assert arup.pgx["tpmt"] == LABEL["PM"] and arup.dose.recommended is None
    older = run(activity_only(10, "U/mL", method="ClinLabNavigator reference"), AS_OF, KB)
    assert older.pgx["tpmt"] == LABEL["IM"]
    # just above ARUP's low cut-off: intermediate
    assert run(activity_only(17, "U/mL", method="ARUP"), AS_OF, KB).pgx["tpmt"] == LABEL["IM"]


@pytest.mark.parametrize("method", [None, "Some other laboratory's assay"])
def test_activity_without_a_matching_assay_is_not_interpreted(method: str | None) -> None:
    a = run(activity_only(10, "U/mL", method=method), AS_OF, KB)
    f = finding(a, "data-tpmt-activity-assay-unknown")
    assert f.severity == "warning" and f.category == "data-quality"
    assert "assay" in f.message and f.sources
    assert a.pgx["tpmt"] is None and a.dose.recommended is None
    # a matching assay is interpreted (other side of the rule)
    assert "data-tpmt-activity-assay-unknown" not in codes(run(activity_only(10, "U/mL", method="ARUP"), AS_OF, KB))


# Literal laboratory bands (Gloucester nmol/h/g Hb; Exeter mU/L, whose 10-20 band is unassigned).
@pytest.mark.parametrize(
    ("value", "unit", "phenotype"),
    [
        (9.9, "nmol/h/g Hb", "PM"),
        (10, "nmol/h/g Hb", "IM"),
        (25.9, "nmol/h/g Hb", "IM"),
        (26, "nmol/h/g Hb", "NM"),
        (9.9, "mU/L", "PM"),
        (10, "mU/L", "Indeterminate"),
        (19.9, "mU/L", "Indeterminate"),
        (20, "mU/L", "IM"),
        (67.9, "mU/L", "IM"),
        (68, "mU/L", "NM"),
    ],
)
def test_activity_band_literal(value: float, unit: str, phenotype: str) -> None:
    a = run(activity_only(value, unit), AS_OF, KB)
    assert a.pgx["tpmt"] == LABEL[phenotype]


def test_activity_unit_is_matched_case_insensitively() -> None:
    assert run(activity_only(15, "NMOL/H/G HB"), AS_OF, KB).pgx["tpmt"] == LABEL["IM"]


def test_unknown_activity_unit_is_not_used() -> None:
    a = run(activity_only(15, "umol/min/L", method="GSTT"), AS_OF, KB)
    f = finding(a, "data-tpmt-activity-assay-unknown")
    assert f.severity == "warning" and f.category == "data-quality"
    assert a.pgx["tpmt"] is None
    assert a.dose.recommended is None
    # with a genotype as well, the genotype alone decides
    b = patient(tpmt="*1/*1")
    b.tpmt_activity(5, "umol/min/L", "2025-08-01", "GSTT")
    a = run(b, AS_OF, KB)
    assert a.pgx["tpmt"] == LABEL["NM"]
    assert "data-tpmt-activity-assay-unknown" in codes(a)


# ---------------------------------------------------------------- discordant genotype and activity
@pytest.mark.parametrize(
    ("diplotype", "activity", "used"),
    [
        ("*1/*1", 15, "IM"),  # genotype NM, activity IM
        ("*1/*3A", 5, "PM"),  # genotype IM, activity PM
        ("*3A/*3C", 30, "PM"),  # genotype PM, activity NM: the genotype is worse
    ],
)
def test_discordant_results_use_the_worse_and_say_so(diplotype: str, activity: float, used: str) -> None:
    b = patient(tpmt=diplotype)
    b.tpmt_activity(activity, "nmol/h/g Hb", "2025-08-01", "GSTT")
    a = run(b, AS_OF, KB)
    assert a.pgx["tpmt"] == LABEL[used]
    f = finding(a, "pgx-discordant")
    assert f.severity == "warning" and f.category == "pgx"
    assert f.action and f.sources


@pytest.mark.parametrize(("diplotype", "activity"), [("*1/*1", 30), ("*1/*3A", 15), ("*3A/*3C", 5)])
def test_concordant_results_are_not_discordant(diplotype: str, activity: float) -> None:
    b = patient(tpmt=diplotype)
    b.tpmt_activity(activity, "nmol/h/g Hb", "2025-08-01", "GSTT")
    assert "pgx-discordant" not in codes(run(b, AS_OF, KB))


def test_normal_genotype_with_unassigned_low_activity_is_not_dosed_as_normal() -> None:
    b = patient(tpmt="*1/*1")
    b.tpmt_activity(15, "mU/L", "2025-08-01", "SWBH")  # below the carrier band (20-68 mU/L)
    a = run(b, AS_OF, KB)
    assert a.pgx["category"] != "normal"
    assert a.dose.recommended is not None
    assert a.dose.recommended.high <= 0.8 * 2.5 * WEIGHT


# ---------------------------------------------------------------- TPMT unknown
def test_tpmt_unknown_pre_treatment_is_critical_and_no_dose() -> None:
    a = run(patient(tpmt=None), AS_OF, KB)
    f = finding(a, "pgx-tpmt-unknown")
    assert f.severity == "critical" and f.category == "pgx"
    assert f.action and f.sources
    assert a.dose.recommended is None
    assert a.dose.plan == ()


def test_tpmt_unknown_on_treatment_is_a_warning_and_no_dose() -> None:
    a = run(patient(tpmt=None, on_treatment=True), AS_OF, KB)
    assert a.monitoring.phase != "pre-treatment"
    f = finding(a, "pgx-tpmt-unknown-on-treatment")
    assert f.severity == "warning"
    assert "pgx-tpmt-unknown" not in codes(a)
    assert a.dose.recommended is None


@pytest.mark.parametrize("on_treatment", [False, True])
def test_tpmt_known_has_no_unknown_finding(on_treatment: bool) -> None:
    a = run(patient(on_treatment=on_treatment), AS_OF, KB)
    assert not {"pgx-tpmt-unknown", "pgx-tpmt-unknown-on-treatment"} & codes(a)
    assert a.dose.recommended is not None


def test_tpmt_unknown_is_never_assumed_normal_when_only_nudt15_is_known() -> None:
    a = run(patient(tpmt=None, nudt15="*1/*1"), AS_OF, KB)
    assert a.pgx["category"] is None
    assert a.dose.recommended is None


def test_genotype_dated_after_as_of_is_not_used() -> None:
    b = patient(tpmt=None)
    b.genotype("TPMT", "*1/*1", "2025-12-01")
    a = run(b, AS_OF, KB)
    assert a.pgx["tpmt"] is None and "pgx-tpmt-unknown" in codes(a)
    assert run(b, "2025-12-01", KB).pgx["tpmt"] == LABEL["NM"]


def test_restart_order_with_tpmt_unknown_is_flagged_as_before_a_start() -> None:
    """A draft order after a stopped course is a (re)start: TPMT must be known before it."""
    b = patient(tpmt=None)
    b.azathioprine("2024-01-01", 150, end="2025-01-01")
    b.request("Azathioprine 50 mg tablets", "2025-09-01", 100, rxnorm="1256")
    a = run(b, AS_OF, KB)
    assert finding(a, "pgx-tpmt-unknown").severity == "critical"
    assert a.dose.recommended is None
    # without the restart order the stopped course raises no TPMT finding
    b = patient(tpmt=None)
    b.azathioprine("2024-01-01", 150, end="2025-01-01")
    a = run(b, AS_OF, KB)
    assert a.monitoring.phase == "stopped"
    assert not {"pgx-tpmt-unknown", "pgx-tpmt-unknown-on-treatment"} & codes(a)


def test_nudt15_unknown_is_info_only() -> None:
    a = run(patient(nudt15=None), AS_OF, KB)
    f = finding(a, "pgx-nudt15-unknown")
    assert f.severity == "info"
    assert "pgx-nudt15-unknown" not in codes(run(patient(), AS_OF, KB))


# ---------------------------------------------------------------- combined categories
def test_knowledge_fractions_are_cpic_defaults() -> None:
    """CPIC 2025 update (guideline v59): standard dose, 30-80% (strong), 20-50% (moderate), avoid;
    an Indeterminate result with the other gene normal gets the standard dose, and the stricter
    reading (dose as intermediate) stays recorded as the alternative."""
    c = KB.pgx.combined
    fractions = {k: (v.fraction.low, v.fraction.high) for k, v in c.items() if v.fraction is not None}
    assert fractions["normal"] == (1.0, 1.0)
    assert fractions["intermediate"] == (0.3, 0.8)
    assert fractions["compound-intermediate"] == (0.2, 0.5)
    assert c["poor"].avoid and c["poor"].fraction is None
    assert fractions["indeterminate"] == (1.0, 1.0)
    assert "30-80%" in c["indeterminate"].alternatives
    assert [c[k].strength for k in ("normal", "intermediate", "compound-intermediate", "poor")] == [
        "Strong",
        "Strong",
        "Moderate",
        "Strong",
    ]
    assert all("CPIC2025" in c[k].sources for k in c)


@pytest.mark.parametrize(
    ("tpmt", "nudt15", "category", "frac", "severity"),
    [
        ("*1/*1", "*1/*1", "normal", (1.0, 1.0), "info"),
        ("*1/*3A", "*1/*1", "intermediate", (0.3, 0.8), "warning"),
        ("*1/*1", "*1/*3", "intermediate", (0.3, 0.8), "warning"),
        ("*1/*3A", "*1/*3", "compound-intermediate", (0.2, 0.5), "warning"),
        ("*2/*8", "*1/*1", "intermediate", (0.3, 0.8), "warning"),  # possible IM
        ("*8/*8", "*5/*8", "compound-intermediate", (0.2, 0.5), "warning"),
        ("*1/*8", "*1/*5", "normal", (1.0, 1.0), "info"),  # one decreased-function allele each
        ("*1/*9", "*1/*1", "indeterminate", (1.0, 1.0), "warning"),  # CPIC 2026: standard dose
        ("*1/*1", "*1/*11", "indeterminate", (1.0, 1.0), "warning"),
    ],
)
def test_combined_category_and_dose_fraction(
    tpmt: str, nudt15: str, category: str, frac: tuple[float, float], severity: str
) -> None:
    a = run(patient(tpmt=tpmt, nudt15=nudt15), AS_OF, KB)
    assert a.pgx["category"] == category
    code = f"pgx-{category}"
    if category == "indeterminate":  # the Indeterminate gene's own finding carries the advice
        code = "pgx-indeterminate" if a.pgx["tpmt"] == LABEL["Indeterminate"] else "pgx-nudt15-indeterminate"
    f = finding(a, code)
    assert f.severity == severity and f.category == "pgx"
    assert f.action and f.sources
    assert a.dose.recommended is not None
    assert recommended(a) == expected_range(WEIGHT, frac)
    normal_high = min(2.5 * WEIGHT, 200)
    assert a.dose.recommended.high <= normal_high * frac[1]


@pytest.mark.parametrize(
    ("tpmt", "nudt15"),
    [
        ("*3A/*3C", "*1/*1"),
        ("*1/*1", "*3/*3"),
        ("*3A/*3C", "*3/*3"),
        ("*1/*3A", "*3/*3"),
        (None, "*3/*3"),
        ("*3A/*5", "*1/*1"),  # Possible Intermediate by the 2025-11-05 tables
        ("*1/*1", "*3/*4"),  # Possible Intermediate by the 2025-11-05 tables
        ("*1/*9", "*3/*5"),  # TPMT Indeterminate, NUDT15 decreased + no function
    ],
)
@pytest.mark.parametrize("on_treatment", [False, True])
def test_poor_metaboliser_in_either_gene_gets_no_dose(tpmt: str | None, nudt15: str, on_treatment: bool) -> None:
    a = run(patient(tpmt=tpmt, nudt15=nudt15, on_treatment=on_treatment), AS_OF, KB)
    assert a.pgx["category"] == "poor"
    f = finding(a, "pgx-poor")
    assert f.severity == "critical" and f.category == "pgx"
    assert a.dose.recommended is None
    assert a.dose.plan == ()


def test_indeterminate_nudt15_with_normal_tpmt_gets_the_standard_dose() -> None:
    """CPIC 2026: TPMT normal + NUDT15 Indeterminate -> "Based on TPMT, ... standard starting dose"."""
    a = run(patient(nudt15="*1/*11"), AS_OF, KB)
    assert a.pgx["nudt15"] == LABEL["Indeterminate"]
    assert a.pgx["category"] == "indeterminate"
    f = finding(a, "pgx-nudt15-indeterminate")
    assert f.severity == "warning" and f.category == "pgx"
    assert "monitor closely" in f.action and "CPIC2025" in " ".join(f.sources)
    assert recommended(a) == expected_range(WEIGHT, (1.0, 1.0))
    assert "pgx-indeterminate" not in codes(a)  # that one is about TPMT


@pytest.mark.parametrize("nudt15", ["*1/*1", "*1/*11", None])
def test_indeterminate_tpmt_gets_the_standard_dose_and_is_asked_to_measure_activity(nudt15: str | None) -> None:
    """CPIC 2026: TPMT Indeterminate + NUDT15 normal -> standard dose (based on NUDT15); neither gene
    informative -> measure TPMT activity and monitor closely, no reduction. The finding always asks
    for TPMT activity: an uncertain-function allele may have no function."""
    a = run(patient(tpmt="*1/*9", nudt15=nudt15), AS_OF, KB)
    assert a.pgx["tpmt"] == LABEL["Indeterminate"]
    assert a.pgx["category"] == "indeterminate"
    f = finding(a, "pgx-indeterminate")
    assert f.severity == "warning"
    assert "measure red-cell TPMT activity" in f.action and "monitor closely" in f.action
    assert recommended(a) == expected_range(WEIGHT, (1.0, 1.0))
    assert not {"pgx-normal", "pgx-intermediate"} & codes(a)


def test_indeterminate_tpmt_with_intermediate_nudt15_is_dosed_by_nudt15() -> None:
    """CPIC 2026: TPMT Indeterminate + NUDT15 IM -> "Based on NUDT15", 30-80%; TPMT activity still asked."""
    a = run(patient(tpmt="*1/*9", nudt15="*1/*3"), AS_OF, KB)
    assert a.pgx["category"] == "intermediate"
    assert {"pgx-intermediate", "pgx-indeterminate"} <= codes(a)
    assert recommended(a) == expected_range(WEIGHT, (0.3, 0.8))


def test_activity_in_an_unassigned_band_is_reported_indeterminate_but_dosed_as_intermediate() -> None:
    """A measured activity below the laboratory's carrier band is not CPIC's Indeterminate genotype:
    it keeps the laboratory's wording and the advice to resolve it, and is dosed as intermediate
    (the band's `dose_as`), not at the standard dose."""
    band = next(b for t in KB.pgx.activity_units for b in t.bands if b.phenotype == "Indeterminate")
    assert band.dose_as == "IM"
    a = run(activity_only(15, "mU/L"), AS_OF, KB)
    assert a.pgx["tpmt"] == LABEL["Indeterminate"]
    assert a.pgx["category"] == "intermediate"
    assert {"pgx-indeterminate", "pgx-intermediate"} <= codes(a)
    assert recommended(a) == expected_range(WEIGHT, (0.3, 0.8))
    # the other side of the band: 20 mU/L is the laboratory's carrier band, 9.9 deficient
    assert "pgx-indeterminate" not in codes(run(activity_only(20, "mU/L"), AS_OF, KB))
    assert run(activity_only(9.9, "mU/L"), AS_OF, KB).dose.recommended is None


def test_activity_resolves_an_indeterminate_genotype() -> None:
    b = patient(tpmt="*1/*9")
    b.tpmt_activity(30, "nmol/h/g Hb", "2025-08-01", "GSTT")
    a = run(b, AS_OF, KB)
    assert a.pgx["tpmt"] == LABEL["NM"] and a.pgx["category"] == "normal"
    assert "pgx-indeterminate" not in codes(a) and "pgx-discordant" not in codes(a)
