"""Write the example FHIR bundles, their meta files and their text reports.

Run from the repository root:

    .venv/bin/python examples/build_examples.py

Each example is a synthetic patient (invented name) built with `azaguard.fhirbuild.BundleBuilder`,
so the bundles use exactly the FHIR shapes the reader documents. For every example three files are
written:

- ``NN-short-name.json``          the FHIR R4 Bundle
- ``NN-short-name.meta.json``     title, fixed assessment date, a short story and ``expect``
- ``NN-short-name.expected.txt``  the text report (``render_text``) as of that date

``expect`` is written by hand from the clinical rules (knowledge files and the clinical dossier), never
copied from engine output: tests/test_examples.py checks the engine against it. The ``.expected.txt``
files are regenerated from the engine so that the documentation shows what the tool prints today.

``expect`` keys (all but ``findings``, ``absent`` and ``phase`` are optional):

- ``findings``: {code: severity} that must be present
- ``absent``: codes that must not appear
- ``phase``: monitoring phase (pre-treatment, initiation, dose-change, stable, stopped)
- ``recommended_mg_per_day``: {"low": .., "high": ..} or null (no dose can be recommended)
- ``overdue``: {group: true/false}; ``next_due``: {group: "YYYY-MM-DD"}
- ``plan``: [["YYYY-MM-DD", mg_per_day], ...] titration steps
- ``ctcae``: {code: CTCAE v5 grade}
- ``max_severity``: the worst severity allowed in the report ("info" = a quiet report)
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from azaguard import domain as d
from azaguard.engine import assess
from azaguard.fhirbuild import BundleBuilder
from azaguard.knowledge import load_knowledge
from azaguard.readers.fhir import read_bundle_file
from azaguard.render.text import render_text

HERE = Path(__file__).resolve().parent
GENERATED = re.compile(r"^\d{2}-[a-z0-9-]+(\.meta\.json|\.expected\.txt|\.json)$")

# ---------------------------------------------------------------- codes used below
MG = ("91637004", "Myasthenia gravis")
POLYMYOSITIS = ("31384009", "Polymyositis")
DERMATOMYOSITIS = ("396230008", "Dermatomyositis")
CIDP = ("128209004", "Chronic inflammatory demyelinating polyneuropathy")
NMOSD = ("25044007", "Neuromyelitis optica spectrum disorder (AQP4-IgG positive)")
CHRONIC_HEP_B = ("61977001", "Chronic hepatitis B")

FEVER = ("386661006", "Fever")
JAUNDICE = ("18165001", "Jaundice")

RX_PREDNISOLONE = "8638"
RX_PYRIDOSTIGMINE = "9000"
RX_ALLOPURINOL = "519"
RX_FEBUXOSTAT = "73689"
RX_COTRIMOXAZOLE = "10831"
RX_MERCAPTOPURINE = "103"

CVX_FLU = "150"
CVX_PNEUMO = "33"
CVX_SHINGRIX = "187"
CVX_YELLOW_FEVER = "37"
CVX_ZOSTAVAX = "121"
CVX_MMR = "03"


@dataclass(frozen=True)
class Example:
    name: str
    title: str
    shows: str  # one line for docs/examples.md
    as_of: str
    story: str
    expect: dict[str, Any]
    build: Callable[[], BundleBuilder]


EXAMPLES: list[Example] = []


def example(name: str, title: str, shows: str, as_of: str, story: str, expect: dict[str, Any]) -> Callable[..., Any]:
    def register(fn: Callable[[], BundleBuilder]) -> Callable[[], BundleBuilder]:
        EXAMPLES.append(Example(name, title, shows, as_of, " ".join(story.split()), expect, fn))
        return fn

    return register


# ---------------------------------------------------------------- shared pieces
def patient(pid: str, name: str, born: str, sex: str, condition: tuple[str, str], onset: str) -> BundleBuilder:
    b = BundleBuilder(pid, born, sex, name)
    b.condition(condition[0], condition[1], onset)
    return b


def full_screening(b: BundleBuilder, when: str, female: bool = False) -> BundleBuilder:
    """Hepatitis B (HBsAg, anti-HBc), hepatitis C, HIV, VZV IgG and (women) a pregnancy test."""
    b.screening("5196-1", "Hepatitis B surface antigen", when)
    b.screening("16933-4", "Hepatitis B core antibody", when)
    b.screening("16128-1", "Hepatitis C antibody", when)
    b.screening("75622-1", "HIV 1+2 antibody and p24 antigen", when)
    b.screening("19162-7", "Varicella zoster virus IgG", when, result="Positive (immune)")
    if female:
        b.screening("2106-3", "Choriogonadotropin (pregnancy test)", when)
    return b


def vaccinated(b: BundleBuilder, flu: str, pneumo: str, shingrix: str | None = None) -> BundleBuilder:
    b.immunization("Influenza vaccine (inactivated, quadrivalent)", CVX_FLU, flu)
    b.immunization("Pneumococcal polysaccharide vaccine (PPV23)", CVX_PNEUMO, pneumo)
    if shingrix:
        b.immunization("Shingrix (recombinant zoster vaccine)", CVX_SHINGRIX, shingrix)
    return b


def normal_pgx(b: BundleBuilder, when: str) -> BundleBuilder:
    return b.genotype("TPMT", "*1/*1", when).genotype("NUDT15", "*1/*1", when)


def prednisolone(b: BundleBuilder, start: str, mg: float) -> BundleBuilder:
    return b.statement("Prednisolone 5 mg tablet", start, mg, rxnorm=RX_PREDNISOLONE)


def pyridostigmine(b: BundleBuilder, start: str) -> BundleBuilder:
    return b.statement("Pyridostigmine 60 mg tablet", start, 60, per_day=4, rxnorm=RX_PYRIDOSTIGMINE)


def draft_azathioprine(b: BundleBuilder, authored: str, mg: float) -> BundleBuilder:
    return b.request("Azathioprine 50 mg tablet", authored, mg, rxnorm="1256")


def stable_mg(
    pid: str, name: str, born: str, sex: str, weight: float, start: str, dose: float, bloods: list[str]
) -> BundleBuilder:
    """A myasthenia patient on a long-standing azathioprine dose with normal results on the given dates."""
    b = patient(pid, name, born, sex, MG, "2022-01-10")
    normal_pgx(b, "2022-02-01")
    b.weight(weight, bloods[-1])
    for when in bloods:
        b.bloods(when)
    b.azathioprine(start, dose)
    pyridostigmine(b, "2022-01-10")
    return b


# ================================================================ pre-treatment and pharmacogenomics
@example(
    "01-mg-new-start",
    "New myasthenia patient, fully screened, azathioprine order drafted: titration plan",
    "Complete screening; normal TPMT/NUDT15; start plan 50 mg + 50 mg every 2 weeks",
    "2026-01-12",
    """Arthur, 57, has generalised myasthenia gravis and is on prednisolone. All baseline bloods, TPMT and
    NUDT15 genotypes (both normal), hepatitis B/C, HIV and chickenpox immunity checks are done and his flu,
    pneumonia and Shingrix vaccines are given. The neurologist has drafted azathioprine 50 mg daily; azaguard
    proposes a step-up plan to the 2-2.5 mg/kg/day target.""",
    {
        "findings": {
            "pgx-normal": "info",
            "dosing-start-plan": "info",
            "screening-off-label": "info",
            "efficacy-time-to-benefit": "info",
        },
        "absent": [
            "screening-missing-fbc",
            "screening-missing-lft",
            "screening-missing-renal",
            "screening-missing-hepatitis-b",
            "screening-missing-hepatitis-c",
            "screening-missing-hiv",
            "screening-missing-vzv",
            "screening-vaccines-before-start",
            "pgx-tpmt-unknown",
            "pgx-nudt15-unknown",
            "data-missing-weight",
            "vaccine-shingrix",
        ],
        "phase": "pre-treatment",
        # 70 kg x 2-2.5 mg/kg = 140-175 mg -> 25 mg steps: 150-175 mg/day.
        "recommended_mg_per_day": {"low": 150, "high": 175},
        # Start 50 mg, +50 mg every 2 weeks (normal metaboliser) to the low end of the range.
        "plan": [["2026-01-12", 50], ["2026-01-26", 100], ["2026-02-09", 150]],
        "max_severity": "info",
    },
)
def _01() -> BundleBuilder:
    b = patient("ex01", "Arthur Pennington", "1968-05-14", "male", MG, "2025-10-20")
    b.weight(70, "2026-01-05")
    b.bloods("2026-01-05")
    normal_pgx(b, "2026-01-05")
    full_screening(b, "2026-01-05")
    vaccinated(b, flu="2025-10-15", pneumo="2025-12-10", shingrix="2025-12-10")
    prednisolone(b, "2025-11-03", 20)
    pyridostigmine(b, "2025-10-20")
    draft_azathioprine(b, "2026-01-12", 50)
    return b


@example(
    "02-mg-missing-baseline",
    "Azathioprine drafted before any baseline bloods or TPMT result",
    "Missing baseline bloods, TPMT and infection screening block the start; no dose",
    "2026-02-09",
    """Bethany, 34, has newly diagnosed myasthenia and an azathioprine prescription was drafted at her first
    clinic visit. No blood count, liver or kidney tests, TPMT result or infection screening are on her record
    yet. Azathioprine must not start until these are done, so no dose is proposed.""",
    {
        "findings": {
            "screening-missing-fbc": "critical",
            "screening-missing-lft": "critical",
            "screening-missing-renal": "critical",
            "pgx-tpmt-unknown": "critical",
            "screening-missing-hepatitis-b": "warning",
            "screening-missing-vzv": "warning",
            "screening-missing-hepatitis-c": "info",
            "screening-missing-hiv": "info",
            "screening-missing-pregnancy-test": "info",
            "screening-vaccines-before-start": "info",
        },
        "absent": ["dosing-start-plan", "pgx-normal"],
        "phase": "pre-treatment",
        "recommended_mg_per_day": None,
    },
)
def _02() -> BundleBuilder:
    b = patient("ex02", "Bethany Okafor", "1991-02-20", "female", MG, "2025-12-15")
    b.weight(64, "2026-02-09")
    pyridostigmine(b, "2025-12-15")
    draft_azathioprine(b, "2026-02-09", 50)
    return b


@example(
    "03-tpmt-intermediate",
    "TPMT *1/*3A intermediate metaboliser: full-dose draft order is too high",
    "CPIC intermediate band (30-80% of the dose) applied to a draft order",
    "2026-03-02",
    """Graham, 66, with myasthenia, had azathioprine 150 mg daily drafted before his TPMT genotype came back
    as *1/*3A (one non-working copy). Intermediate metabolisers need 30-80% of the usual dose, so the draft is
    above the safe maximum for him.""",
    {
        "findings": {
            "pgx-intermediate": "warning",
            "dosing-above-recommended": "critical",
            "dosing-start-plan": "info",
        },
        "absent": ["pgx-normal", "pgx-nudt15-unknown", "screening-missing-fbc"],
        "phase": "pre-treatment",
        # 70 kg: 140 x 30% = 42 -> 50 mg; 175 x 80% = 140 -> rounded down to 125 mg.
        "recommended_mg_per_day": {"low": 50, "high": 125},
        "plan": [["2026-03-02", 50]],
    },
)
def _03() -> BundleBuilder:
    b = patient("ex03", "Graham Whitlock", "1959-09-03", "male", MG, "2025-11-10")
    b.weight(70, "2026-02-23")
    b.bloods("2026-02-23")
    b.genotype("TPMT", "*1/*3A", "2026-02-23").genotype("NUDT15", "*1/*1", "2026-02-23")
    full_screening(b, "2026-02-23")
    vaccinated(b, flu="2025-10-01", pneumo="2026-01-20", shingrix="2026-01-20")
    prednisolone(b, "2025-11-10", 15)
    draft_azathioprine(b, "2026-02-16", 150)
    return b


@example(
    "04-compound-intermediate",
    "TPMT *1/*3C plus NUDT15 *1/*3: compound intermediate, 20-50% of the dose",
    "Compound TPMT + NUDT15 intermediate band (20-50% of the dose)",
    "2026-03-16",
    """Mei, 40, has dermatomyositis and is about to start azathioprine. She carries one reduced-function copy of
    both TPMT (*3C) and NUDT15 (*3, common in East Asian ancestry). With both genes affected, CPIC advises
    starting at only 20-50% of the normal dose.""",
    {
        "findings": {"pgx-compound-intermediate": "warning", "dosing-start-plan": "info"},
        "absent": ["pgx-intermediate", "pgx-normal", "dosing-above-recommended", "screening-off-label"],
        "phase": "pre-treatment",
        # 60 kg: 120 x 20% = 24 -> 25 mg; 150 x 50% = 75 mg.
        "recommended_mg_per_day": {"low": 25, "high": 75},
        "plan": [["2026-03-16", 25]],
    },
)
def _04() -> BundleBuilder:
    b = patient("ex04", "Mei Lin Tsang", "1985-07-22", "female", DERMATOMYOSITIS, "2025-12-01")
    b.weight(60, "2026-03-09")
    b.bloods("2026-03-09")
    b.genotype("TPMT", "*1/*3C", "2026-03-09").genotype("NUDT15", "*1/*3", "2026-03-09")
    full_screening(b, "2026-03-09", female=True)
    vaccinated(b, flu="2025-10-20", pneumo="2026-02-02", shingrix="2026-02-02")
    prednisolone(b, "2025-12-01", 40)
    draft_azathioprine(b, "2026-03-16", 50)
    return b


@example(
    "05-tpmt-poor",
    "TPMT *3A/*3A poor metaboliser: azathioprine must not be used",
    "Poor metaboliser: no thiopurine, no dose calculated",
    "2026-04-13",
    """Declan, 48, with myasthenia, has two non-working copies of the TPMT gene (*3A/*3A), about 1 in 300
    people. Normal azathioprine doses can cause life-threatening bone-marrow failure in him, so for myasthenia
    a different immunosuppressant should be chosen and no azathioprine dose is calculated.""",
    {
        "findings": {"pgx-poor": "critical"},
        "absent": ["dosing-start-plan", "pgx-normal", "pgx-intermediate"],
        "phase": "pre-treatment",
        "recommended_mg_per_day": None,
    },
)
def _05() -> BundleBuilder:
    b = patient("ex05", "Declan Murphy", "1977-11-30", "male", MG, "2025-12-08")
    b.weight(82, "2026-04-06")
    b.bloods("2026-04-06")
    b.genotype("TPMT", "*3A/*3A", "2026-04-06").genotype("NUDT15", "*1/*1", "2026-04-06")
    full_screening(b, "2026-04-06")
    prednisolone(b, "2025-12-08", 20)
    draft_azathioprine(b, "2026-04-13", 50)
    return b


@example(
    "06-tpmt-activity-unassigned",
    "TPMT activity 15 mU/L: in the laboratory's unassigned 10-20 band",
    "Laboratory-specific TPMT activity bands; indeterminate result dosed as intermediate",
    "2026-04-20",
    """Priya, 45, with myasthenia, had a red-cell TPMT enzyme test reported as 15 mU/L. The laboratory's
    ranges leave 10-20 mU/L unassigned (between deficient and carrier), so her metabolism cannot be predicted.
    Until it is clarified she is dosed cautiously, like an intermediate metaboliser.""",
    {
        # The laboratory's wording is kept (Indeterminate, with the advice to resolve it); the unassigned
        # band is below the carrier band, so it is dosed as intermediate (protocol.toml: dose_as).
        "findings": {"pgx-indeterminate": "warning", "pgx-intermediate": "warning", "dosing-start-plan": "info"},
        "absent": ["pgx-normal", "pgx-poor", "data-tpmt-activity-assay-unknown"],
        "phase": "pre-treatment",
        # Dosed as intermediate: 66 kg: 132 x 30% = 39.6 -> 50 mg; 165 x 80% = 132 -> 125 mg.
        "recommended_mg_per_day": {"low": 50, "high": 125},
    },
)
def _06() -> BundleBuilder:
    b = patient("ex06", "Priya Raman", "1980-06-11", "female", MG, "2025-12-12")
    b.weight(66, "2026-04-13")
    b.bloods("2026-04-13")
    b.tpmt_activity(15, "mU/L", "2026-04-13", "SWBH (Sandwell & West Birmingham) TPMT activity")
    b.genotype("NUDT15", "*1/*1", "2026-04-13")
    full_screening(b, "2026-04-13", female=True)
    vaccinated(b, flu="2025-10-10", pneumo="2026-03-02", shingrix="2026-03-02")
    pyridostigmine(b, "2025-12-12")
    draft_azathioprine(b, "2026-04-20", 50)
    return b


# ================================================================ long-term treatment
@example(
    "07-myositis-stable-quiet",
    "Stable long-term polymyositis patient with everything in order: a quiet report",
    "Quiet report: schedule, metabolites and vaccines all in order",
    "2026-05-04",
    """Margaret, 68, has taken azathioprine 150 mg daily for polymyositis for four years. Her 12-weekly bloods
    are up to date and normal, her metabolite levels last autumn were in range and her vaccines are current.
    The report has nothing to act on beyond routine reminders.""",
    {
        "findings": {"pgx-normal": "info", "metabolite-therapeutic": "info", "symptom-guidance": "info"},
        "absent": [
            "monitoring-overdue",
            "monitoring-never-done",
            "monitoring-non-attendance",
            "monitoring-metabolites-due",
            "vaccine-influenza-due",
            "vaccine-pneumococcal-missing",
            "vaccine-shingrix",
            "dosing-above-target",
            "screening-off-label",
        ],
        "phase": "stable",
        # 68 kg: 136-170 mg -> 125-150 mg/day.
        "recommended_mg_per_day": {"low": 125, "high": 150},
        "overdue": {"FBC": False, "LFT": False, "renal": False},
        "next_due": {"FBC": "2026-07-13"},
        "max_severity": "info",
    },
)
def _07() -> BundleBuilder:
    b = patient("ex07", "Margaret Ellery", "1958-01-17", "female", POLYMYOSITIS, "2021-03-15")
    normal_pgx(b, "2022-04-25")
    for when in ("2022-04-25", "2025-08-11", "2025-11-03", "2026-01-26", "2026-04-20"):
        b.bloods(when)
    b.weight(68, "2026-04-20")
    b.metabolites(320, 1800, "2025-11-03")
    vaccinated(b, flu="2025-10-06", pneumo="2022-04-01", shingrix="2023-10-02")
    b.immunization("Shingrix (recombinant zoster vaccine)", CVX_SHINGRIX, "2024-01-08")
    b.azathioprine("2022-05-09", 150)
    return b


@example(
    "08-allopurinol-full-dose",
    "Allopurinol started for gout while on full-dose azathioprine",
    "Xanthine-oxidase interaction: dose cut to a quarter",
    "2026-05-20",
    """Ronald, 73, takes azathioprine 150 mg daily for myasthenia. His GP started allopurinol for gout two days
    ago. Allopurinol blocks the breakdown of azathioprine and can cause fatal bone-marrow suppression: the
    azathioprine dose must be cut to a quarter, with close blood-count checks.""",
    {
        # One problem, one finding: the interaction finding carries "cut to at most 25 mg/day".
        "findings": {"interaction-allopurinol": "critical"},
        "absent": ["monitoring-overdue", "dosing-above-recommended"],
        "phase": "stable",
        # Quarter of 140-175 mg = 35-43.75 mg -> 25 mg steps, rounded down at the top: 25 mg/day.
        "recommended_mg_per_day": {"low": 25, "high": 25},
        "overdue": {"FBC": False},
    },
)
def _08() -> BundleBuilder:
    b = stable_mg("ex08", "Ronald Figgis", "1952-08-08", "male", 70, "2023-01-09", 150, ["2026-01-19", "2026-04-13"])
    b.statement("Allopurinol 100 mg tablet", "2026-05-18", 100, rxnorm=RX_ALLOPURINOL)
    return b


@example(
    "09-febuxostat-draft",
    "Febuxostat drafted for a patient on azathioprine",
    "Interaction check on a drafted (not yet started) medicine",
    "2026-06-01",
    """Helen, 63, has taken azathioprine for myasthenia for two years. A febuxostat prescription for gout has
    been drafted. Febuxostat, like allopurinol, blocks azathioprine breakdown; the two must not be combined,
    so the prescriber should choose another gout treatment.""",
    {
        "findings": {"interaction-febuxostat": "critical"},
        "absent": ["interaction-allopurinol"],
        "phase": "stable",
        "recommended_mg_per_day": None,
    },
)
def _09() -> BundleBuilder:
    b = stable_mg("ex09", "Helen Stroud", "1962-12-02", "female", 64, "2024-02-05", 125, ["2026-03-02", "2026-05-26"])
    b.request("Febuxostat 80 mg tablet", "2026-06-01", 80, rxnorm=RX_FEBUXOSTAT)
    return b


@example(
    "10-cidp-co-trimoxazole",
    "CIDP patient on azathioprine given a co-trimoxazole course",
    "Antibiotic interaction; CIDP indication; time to review the response",
    "2026-06-24",
    """Oluwaseun, 56, has CIDP and has taken azathioprine for 16 months. He started a 7-day course of
    co-trimoxazole for a urine infection two days ago. Together they can lower blood counts, so a blood count
    during or after the course is advised; it is also time to review whether azathioprine is working.""",
    {
        "findings": {"interaction-co-trimoxazole": "warning", "efficacy-review-response": "info"},
        "absent": ["screening-off-label", "efficacy-time-to-benefit", "data-missing-indication"],
        "phase": "stable",
        # 78 kg: 156-195 mg -> 150-175 mg/day.
        "recommended_mg_per_day": {"low": 150, "high": 175},
        "overdue": {"FBC": False},
    },
)
def _10() -> BundleBuilder:
    b = patient("ex10", "Oluwaseun Adeyemi", "1970-04-25", "male", CIDP, "2024-06-01")
    normal_pgx(b, "2025-01-20")
    for when in ("2025-01-27", "2025-12-08", "2026-03-02", "2026-06-01"):
        b.bloods(when)
    b.weight(78, "2026-06-01")
    b.azathioprine("2025-02-03", 150)
    b.statement(
        "Co-trimoxazole 960 mg tablet",
        "2026-06-22",
        960,
        per_day=2,
        rxnorm=RX_COTRIMOXAZOLE,
        end="2026-06-29",
    )
    return b


# ================================================================ abnormal results
@example(
    "11-neutropenia-1-2",
    "Neutrophils 1.2 x10^9/L: withhold (CTCAE grade 2)",
    "Absolute threshold breaches with CTCAE grades",
    "2026-06-30",
    """Derek, 61, has been on azathioprine 150 mg for myasthenia for over a year. Yesterday's blood count shows
    neutrophils 1.2 and white cells 3.2 x10^9/L, both below the safety limits (1.6 and 3.5). Azathioprine should
    be withheld and the specialist team contacted today.""",
    {
        "findings": {"lab-neutrophils-low": "critical", "lab-wbc-low": "critical"},
        "absent": ["lab-platelets-low", "trend-neutrophils-falling", "symptom-neutropenic-fever"],
        "phase": "stable",
        # 75 kg: 150-187.5 mg -> 150-175 mg/day (the current 150 mg is within range).
        "recommended_mg_per_day": {"low": 150, "high": 175},
        # CTCAE v5: neutrophils <1.5-1.0 = grade 2; WBC below the lab's lower limit (4.0) but >= 3.0 = grade 1.
        "ctcae": {"lab-neutrophils-low": 2, "lab-wbc-low": 1},
    },
)
def _11() -> BundleBuilder:
    b = stable_mg(
        "ex11",
        "Derek Ashworth",
        "1965-02-14",
        "male",
        75,
        "2025-03-03",
        150,
        ["2025-02-24", "2026-01-12", "2026-04-06"],
    )
    when = "2026-06-29"
    b.lab("6690-2", 3.2, "10*9/L", when, "Leukocytes", ref_low=4.0, ref_high=11.0)
    b.lab("751-8", 1.2, "10*9/L", when, "Neutrophils", ref_low=2.0, ref_high=7.5)
    b.lab("777-3", 210, "10*9/L", when, "Platelets", ref_low=150, ref_high=400)
    b.lab("731-0", 1.4, "10*9/L", when, "Lymphocytes", ref_low=1.0, ref_high=4.0)
    b.lft(when, 24, albumin=41).renal(when, 81, egfr=88)
    return b


@example(
    "12-neutrophil-slow-decline",
    "Neutrophils falling >10% at each of three successive tests, still above 1.6",
    "Trend rule: >10% fall at each of 3 successive tests",
    "2026-05-13",
    """Fiona, 52, on azathioprine for myasthenia, has had neutrophils of 4.1, 3.6, 3.2 and now 2.8 x10^9/L over
    the last four 12-weekly tests. Each result is within the safe range, but a steady fall of more than 10% three
    times in a row is itself a reason to withhold and seek specialist advice.""",
    {
        "findings": {"trend-neutrophils-falling": "critical"},
        "absent": ["lab-neutrophils-low", "lab-wbc-low", "trend-wbc-falling", "trend-platelets-falling"],
        "phase": "stable",
        "overdue": {"FBC": False},
        # The repeat FBC the trend asks for, 2 weeks after 2026-05-11, falls on Monday 25 May 2026, the
        # Spring Bank Holiday (England and Wales): brought forward to Friday 22 May, never later.
        "next_due": {"FBC": "2026-05-22"},
    },
)
def _12() -> BundleBuilder:
    b = patient("ex12", "Fiona Gallacher", "1973-10-05", "female", MG, "2024-08-19")
    normal_pgx(b, "2024-12-16")
    b.weight(62, "2026-05-11")
    b.azathioprine("2025-01-13", 125)
    series = [
        ("2025-09-01", 6.8, 4.1, 262),
        ("2025-11-24", 6.3, 3.6, 255),
        ("2026-02-16", 5.9, 3.2, 249),
        ("2026-05-11", 5.4, 2.8, 251),
    ]
    for when, wbc, neut, plt in series:
        b.fbc(when, wbc, neut, plt, lymph=1.6, mcv=95)
        b.lft(when, 22, albumin=43).renal(when, 64, egfr=96)
    return b


@example(
    "13-hepatitis-b-alt-140",
    "Chronic hepatitis B patient on azathioprine with ALT 140 U/L",
    "Liver threshold with CTCAE grade; hepatitis B; an unrecognised medicine",
    "2026-07-07",
    """Colin, 66, has myasthenia and chronic hepatitis B treated with tenofovir. His ALT has risen from 32 to
    140 U/L, above the 100 U/L limit: azathioprine should be withheld today, and with hepatitis B the liver team
    must be involved (reactivation is a risk on immunosuppression).""",
    {
        "findings": {
            "lab-alt-high": "critical",
            "contraindication-hepatitis-b": "critical",
            "data-unrecognised-medicine": "warning",
        },
        "absent": ["lab-albumin-low"],
        "phase": "stable",
        # CTCAE v5 ALT increased: 140 / ULN 41 = 3.4 x ULN -> grade 2 (>3-5 x ULN).
        "ctcae": {"lab-alt-high": 2},
    },
)
def _13() -> BundleBuilder:
    b = patient("ex13", "Colin Mackay", "1960-03-21", "male", MG, "2024-09-09")
    b.condition(CHRONIC_HEP_B[0], CHRONIC_HEP_B[1], "2012-05-01")
    b.statement("Tenofovir disoproxil 245 mg tablet", "2012-06-01", 245)
    normal_pgx(b, "2025-03-24")
    b.bloods("2025-03-31")
    b.bloods("2026-04-13", alt=32)
    b.weight(72, "2026-07-06")
    when = "2026-07-06"
    b.fbc(when, 5.6, 3.3, 221, lymph=1.5, mcv=94)
    b.lab("1742-6", 140, "U/L", when, "ALT", ref_low=7, ref_high=41)
    b.lab("1751-7", 38, "g/L", when, "Albumin")
    b.renal(when, 79, egfr=90)
    b.azathioprine("2025-04-07", 150)
    return b


@example(
    "14-overdue-mcv-108",
    "12-weekly bloods overdue; last count showed MCV 108 fL",
    "12-weekly schedule overdue; raised MCV",
    "2026-07-13",
    """Sandra, 71, has taken azathioprine for myasthenia for over two years. Her last bloods, 15 weeks ago,
    showed large red cells (MCV 108 fL, common on azathioprine but needs B12, folate and thyroid checks), and
    her 12-weekly bloods are now three weeks overdue.""",
    {
        "findings": {"lab-mcv-high": "warning", "monitoring-overdue": "warning"},
        "absent": ["monitoring-non-attendance", "monitoring-never-done"],
        "phase": "stable",
        "overdue": {"FBC": True, "LFT": True, "renal": True},
        "next_due": {"FBC": "2026-06-22"},
    },
)
def _14() -> BundleBuilder:
    b = patient("ex14", "Sandra Pyke", "1955-04-09", "female", MG, "2023-09-18")
    normal_pgx(b, "2024-02-19")
    b.bloods("2026-01-05")
    when = "2026-03-30"
    b.fbc(when, 5.1, 3.0, 231, lymph=1.2, mcv=108)
    b.lft(when, 21, albumin=40).renal(when, 70, egfr=78)
    b.weight(66, when)
    b.azathioprine("2024-03-04", 150)
    return b


@example(
    "15-renal-decline",
    "Creatinine up 37% in a year and eGFR 55: repeat within a week before any dose change",
    "Creatinine rise over 12 months; a single eGFR < 60 asks for a repeat, not yet a dose cut",
    "2026-04-08",
    """Ivan, 75, on azathioprine 150 mg for myasthenia, has creatinine 110 umol/L, up from 80 six months ago,
    and an eGFR of 55. Renal function should be repeated within a week (by 13 April) and the specialist told;
    one low result does not yet lower his dose (BSR/SPS: repeat first; a confirmed fall holds the dose at the
    low end of the range).""",
    {
        "findings": {"lab-creatinine-rise": "warning", "lab-egfr-low": "warning"},
        "absent": ["dosing-above-recommended", "caution-renal-impairment", "dosing-renal"],
        "phase": "stable",
        # 75 kg: 150-187.5 mg -> 150-175 mg/day; the repeat renal test is due 7 days after the result.
        "recommended_mg_per_day": {"low": 150, "high": 175},
        "next_due": {"renal": "2026-04-13"},
    },
)
def _15() -> BundleBuilder:
    b = patient("ex15", "Ivan Petrov", "1950-12-12", "male", MG, "2023-11-06")
    normal_pgx(b, "2024-05-20")
    b.weight(75, "2026-04-06")
    for when, creat, egfr in (("2025-10-06", 80, 84), ("2026-01-05", 86, 77), ("2026-04-06", 110, 55)):
        b.fbc(when, 6.1, 3.8, 240, lymph=1.5, mcv=93).lft(when, 19, albumin=41).renal(when, creat, egfr=egfr)
    b.azathioprine("2024-06-03", 150)
    return b


# ================================================================ monitoring schedule
@example(
    "16-non-attendance",
    "Three 12-weekly blood tests missed: unsafe to continue",
    "More than 2 missed monitoring visits",
    "2026-05-18",
    """Kyle, 37, on azathioprine 175 mg for myasthenia, has not had bloods since September 2025 and has missed
    the tests due in November, February and May. Missing more than two monitoring visits makes continued
    treatment unsafe: contact him today and hold further prescriptions until bloods are done.""",
    {
        "findings": {"monitoring-non-attendance": "critical"},
        "absent": ["monitoring-overdue", "monitoring-never-done"],
        "phase": "stable",
        "overdue": {"FBC": True, "LFT": True, "renal": True},
        # 85 kg: 170-212.5 mg, capped at 200 mg/day -> 175-200 mg/day.
        "recommended_mg_per_day": {"low": 175, "high": 200},
    },
)
def _16() -> BundleBuilder:
    return stable_mg(
        "ex16", "Kyle Brennan", "1988-06-30", "male", 85, "2024-09-02", 175, ["2024-08-26", "2025-06-09", "2025-09-01"]
    )


@example(
    "17-never-done-after-start",
    "Started azathioprine 3 weeks ago, no blood test since",
    "First 2-weekly check never done; dose below target during titration",
    "2026-07-01",
    """Lucy, 46, started azathioprine 50 mg for myasthenia on 8 June after normal baseline bloods. Her first
    2-weekly check was due on 22 June and has not been done. She is also still below her target dose, which
    is raised in 50 mg steps every 2 weeks when counts allow.""",
    {
        "findings": {"monitoring-never-done": "warning", "dosing-below-target": "info"},
        "absent": ["monitoring-overdue", "monitoring-non-attendance", "dosing-start-plan"],
        "phase": "initiation",
        "overdue": {"FBC": True, "LFT": True, "renal": True},
        "next_due": {"FBC": "2026-06-22"},
        # 61 kg: 122-152.5 mg -> 125-150 mg/day; +50 mg every 2 weeks from 50 mg.
        "recommended_mg_per_day": {"low": 125, "high": 150},
        "plan": [["2026-07-01", 50], ["2026-07-15", 100], ["2026-07-29", 125]],
    },
)
def _17() -> BundleBuilder:
    b = patient("ex17", "Lucy Harrington", "1979-08-19", "female", MG, "2026-03-02")
    b.weight(61, "2026-06-01")
    b.bloods("2026-06-01")
    normal_pgx(b, "2026-06-01")
    b.azathioprine("2026-06-08", 50)
    return b


@example(
    "18-dose-increase",
    "Dose raised from 100 to 150 mg: monitoring goes back to every 2 weeks",
    "A dose increase restarts 2-weekly monitoring (dose-change phase)",
    "2026-03-23",
    """Tomasz, 59, took azathioprine 100 mg for myasthenia for six months with stable counts; on 2 March the dose
    was increased to 150 mg. A dose increase restarts 2-weekly blood tests until the new dose has been stable
    for 6 weeks. His first check was on 16 March, so the next is due on 30 March.""",
    {
        "findings": {"pgx-normal": "info"},
        "absent": ["monitoring-overdue", "monitoring-never-done", "dosing-below-target", "dosing-above-target"],
        "phase": "dose-change",
        "overdue": {"FBC": False, "LFT": False, "renal": False},
        "next_due": {"FBC": "2026-03-30", "LFT": "2026-03-30", "renal": "2026-03-30"},
        "recommended_mg_per_day": {"low": 150, "high": 175},
    },
)
def _18() -> BundleBuilder:
    b = patient("ex18", "Tomasz Nowak", "1966-10-10", "male", MG, "2025-06-02")
    normal_pgx(b, "2025-08-18")
    for when in ("2025-08-25", "2025-11-17", "2026-02-09", "2026-03-16"):
        b.bloods(when)
    b.weight(72, "2026-03-16")
    b.azathioprine("2025-09-01", 100, end="2026-03-01")
    b.azathioprine("2026-03-02", 150)
    return b


# ================================================================ pregnancy, breastfeeding
@example(
    "19-nmosd-pregnancy",
    "NMOSD, pregnant, on 2.5 mg/kg/day (above the 2 mg/kg/day compatible dose)",
    "Pregnancy guidance (compatible up to 2 mg/kg/day); NMOSD indication",
    "2026-08-05",
    """Amara, 32, has AQP4-positive NMOSD controlled on azathioprine 125 mg and low-dose prednisolone, and her
    pregnancy was confirmed this week. Current guidance says azathioprine can continue in pregnancy (stopping
    risks a relapse) at up to 2 mg/kg/day; at 50 kg her 125 mg is 2.5 mg/kg/day, so the dose needs review
    (at most 100 mg/day).""",
    {
        "findings": {"reproduction-pregnancy": "info", "reproduction-pregnancy-dose-high": "warning"},
        "absent": ["reproduction-breastfeeding"],
        "phase": "stable",
        # Normal 100-125 mg/day, but in pregnancy at most 2 mg/kg/day = 100 mg/day.
        "recommended_mg_per_day": {"low": 100, "high": 100},
    },
)
def _19() -> BundleBuilder:
    b = patient("ex19", "Amara Nwosu", "1994-01-28", "female", NMOSD, "2023-05-15")
    normal_pgx(b, "2023-12-11")
    for when in ("2026-02-02", "2026-04-27", "2026-07-27"):
        b.bloods(when)
    b.weight(50, "2026-07-27")
    b.azathioprine("2024-01-08", 125)
    prednisolone(b, "2023-05-15", 5)
    b.pregnant("2026-08-03")
    return b


@example(
    "20-breastfeeding",
    "Breastfeeding on azathioprine 100 mg/day: compatible",
    "Breastfeeding compatible up to 100 mg/day",
    "2026-09-09",
    """Chloe, 36, with myasthenia, had her baby in July and is breastfeeding. She takes azathioprine 100 mg
    daily. Older leaflets said not to breastfeed, but current guidance says azathioprine is compatible with
    breastfeeding at doses up to 100 mg a day.""",
    {
        "findings": {"reproduction-breastfeeding": "info"},
        "absent": ["reproduction-breastfeeding-dose-high", "reproduction-pregnancy", "dosing-below-target"],
        "phase": "stable",
        # 56 kg: 112-140 mg -> 100-125 mg/day.
        "recommended_mg_per_day": {"low": 100, "high": 125},
    },
)
def _20() -> BundleBuilder:
    b = stable_mg(
        "ex20",
        "Chloe Barrington",
        "1990-03-03",
        "female",
        56,
        "2024-05-06",
        100,
        ["2026-03-16", "2026-06-08", "2026-08-24"],
    )
    b.breastfeeding("2026-09-07")
    return b


# ================================================================ vaccines
@example(
    "21-live-vaccine-on-treatment",
    "Yellow fever and Zostavax (live vaccines) drafted while on azathioprine",
    "Live vaccines blocked while on treatment",
    "2026-10-06",
    """Gareth, 69, on azathioprine for myasthenia, is planning a trip and the travel clinic drafted a yellow fever
    vaccine; his GP also drafted the live shingles vaccine Zostavax. Live vaccines must not be given on
    azathioprine (or for 3 months after stopping); Shingrix is the non-live shingles alternative.""",
    {
        "findings": {"vaccine-live-ordered": "critical"},
        "absent": ["vaccine-live-before-start", "vaccine-live-given"],
        "phase": "stable",
    },
)
def _21() -> BundleBuilder:
    b = stable_mg(
        "ex21", "Gareth Lloyd", "1957-05-19", "male", 80, "2023-06-05", 150, ["2026-04-13", "2026-07-06", "2026-09-28"]
    )
    b.vaccine_order("Stamaril (yellow fever vaccine, live)", CVX_YELLOW_FEVER, "2026-10-05")
    b.vaccine_order("Zostavax (zoster vaccine live)", CVX_ZOSTAVAX, "2026-10-05")
    return b


@example(
    "22-live-vaccine-2-months-after-stop",
    "MMR drafted 8 weeks after stopping azathioprine: still too soon",
    "Live vaccine inside the 3-month wash-out after stopping",
    "2026-10-27",
    """Rachel, 43, stopped azathioprine for dermatomyositis in remission at the end of August. An MMR vaccine was
    drafted because she is not immune to measles. Live vaccines must wait at least 3 months after the last
    azathioprine dose, so the MMR should not be given before the end of November.""",
    {
        "findings": {"vaccine-live-ordered": "critical"},
        "absent": ["vaccine-live-before-start"],
        "phase": "stopped",
    },
)
def _22() -> BundleBuilder:
    b = patient("ex22", "Rachel Dunmore", "1983-02-11", "female", DERMATOMYOSITIS, "2022-09-05")
    normal_pgx(b, "2023-02-20")
    for when in ("2026-02-23", "2026-05-18", "2026-08-10"):
        b.bloods(when)
    b.weight(63, "2026-08-10")
    b.azathioprine("2023-03-06", 125, end="2026-08-31")
    b.vaccine_order("M-M-R II (measles, mumps and rubella vaccine, live)", CVX_MMR, "2026-10-26")
    return b


@example(
    "23-live-vaccine-4-months-after-stop",
    "Yellow fever vaccine drafted 4 months after stopping azathioprine: no alert",
    "Live vaccine after the wash-out: no alert",
    "2026-11-03",
    """Peter, 51, whose CIDP is in remission, stopped azathioprine on 29 June. The travel clinic has drafted a
    yellow fever vaccine. More than 3 months have passed since the last dose, so azathioprine is no longer a
    reason to avoid the live vaccine and azaguard raises no alert.""",
    {
        "findings": {},
        "absent": ["vaccine-live-ordered", "vaccine-live-given", "vaccine-live-before-start"],
        "phase": "stopped",
    },
)
def _23() -> BundleBuilder:
    b = patient("ex23", "Peter Ainsworth", "1975-07-07", "male", CIDP, "2022-04-04")
    normal_pgx(b, "2022-10-03")
    for when in ("2026-01-05", "2026-03-30", "2026-06-22"):
        b.bloods(when)
    b.weight(81, "2026-06-22")
    b.azathioprine("2022-10-17", 150, end="2026-06-29")
    b.vaccine_order("Stamaril (yellow fever vaccine, live)", CVX_YELLOW_FEVER, "2026-11-02")
    return b


# ================================================================ symptoms
@example(
    "24-fever-after-fbc",
    "Fever reported after the last blood count",
    "Red-flag symptom not yet answered by a blood count",
    "2026-11-12",
    """Nadia, 39, on azathioprine for myasthenia, reported a fever through the patient app today. Her last blood
    count, three days ago, was normal, but fever can be the first sign of bone-marrow suppression or infection:
    she needs an urgent blood count today and azathioprine should be withheld until it is known.""",
    {
        "findings": {"symptom-fever": "critical"},
        "absent": ["symptom-neutropenic-fever", "lab-neutrophils-low"],
        "phase": "stable",
    },
)
def _24() -> BundleBuilder:
    b = stable_mg(
        "ex24",
        "Nadia Rahman",
        "1987-09-09",
        "female",
        58,
        "2026-01-12",
        125,
        ["2026-05-26", "2026-08-17", "2026-11-09"],
    )
    b.symptom(FEVER[0], FEVER[1], "2026-11-12")
    return b


@example(
    "25-fever-neutrophils-0-8",
    "Fever with neutrophils 0.8 x10^9/L: possible neutropenic sepsis",
    "Fever with neutrophils below 1.0: neutropenic sepsis",
    "2026-11-16",
    """William, 78, on azathioprine for myasthenia, phoned with a fever this morning and an urgent blood count
    the same day shows neutrophils 0.8 x10^9/L. Fever with neutrophils below 1.0 is a medical emergency
    (possible neutropenic sepsis): same-day assessment, antibiotics, and azathioprine withheld.""",
    {
        "findings": {
            "symptom-neutropenic-fever": "critical",
            "lab-neutrophils-low": "critical",
            "lab-wbc-low": "critical",
        },
        "absent": [],
        "phase": "stable",
        # CTCAE v5: neutrophils <1.0-0.5 = grade 3; WBC <3.0-2.0 = grade 2.
        "ctcae": {"lab-neutrophils-low": 3, "lab-wbc-low": 2},
    },
)
def _25() -> BundleBuilder:
    b = stable_mg("ex25", "William Hartley", "1948-03-30", "male", 74, "2025-05-05", 150, ["2026-05-11", "2026-08-03"])
    when = "2026-11-16"
    b.symptom(FEVER[0], FEVER[1], when)
    b.fbc(when, 2.1, 0.8, 165, lymph=0.9, mcv=97)
    b.lft(when, 30, albumin=36).renal(when, 92, egfr=68)
    return b


@example(
    "26-jaundice",
    "Jaundice reported during the first weeks of treatment",
    "Liver red-flag symptom during initiation",
    "2026-09-22",
    """Joan, 65, started azathioprine for polymyositis in August and reached 150 mg three weeks ago. Today she
    reports yellow eyes; her last liver tests a week ago were normal. Jaundice can mean drug-induced liver injury
    or pancreatitis: she needs same-day assessment and liver tests, with azathioprine withheld meanwhile.""",
    {
        "findings": {"symptom-jaundice": "critical"},
        "absent": ["lab-alt-high", "monitoring-overdue"],
        "phase": "initiation",
        "overdue": {"LFT": False},
        # A red-flag symptom asks for liver tests the same day (answered only by bilirubin or ALT).
        "next_due": {"LFT": "2026-09-22"},
    },
)
def _26() -> BundleBuilder:
    b = patient("ex26", "Joan Whitfield", "1961-06-14", "female", POLYMYOSITIS, "2026-05-11")
    normal_pgx(b, "2026-07-20")
    for when in ("2026-07-27", "2026-08-17", "2026-08-31", "2026-09-14"):
        b.bloods(when)
    b.weight(70, "2026-09-14")
    b.azathioprine("2026-08-03", 50, end="2026-08-16")
    b.azathioprine("2026-08-17", 100, end="2026-08-30")
    b.azathioprine("2026-08-31", 150)
    prednisolone(b, "2026-05-11", 30)
    b.symptom(JAUNDICE[0], JAUNDICE[1], "2026-09-22")
    return b


# ================================================================ metabolites and data quality
@example(
    "27-metabolite-shunting",
    "Poor response with 6-TGN 180 and 6-MMP 7800: shunting to 6-MMP",
    "Metabolite interpretation: shunting to 6-MMP",
    "2026-10-19",
    """Steven, 54, has taken the maximum azathioprine dose (200 mg) for myasthenia for nearly two years with
    little benefit. His metabolite test shows a low active metabolite (6-TGN 180) and a high 6-MMP (7800), the
    'shunting' pattern. Raising the dose would not help; splitting it, or a lower dose with low-dose allopurinol
    under specialist supervision, may.""",
    {
        "findings": {"metabolite-shunting": "warning"},
        "absent": ["metabolite-subtherapeutic", "metabolite-supratherapeutic", "metabolite-therapeutic"],
        "phase": "stable",
        # 95 kg: 190-237.5 mg, capped at 200 mg/day -> 200-200 mg/day.
        "recommended_mg_per_day": {"low": 200, "high": 200},
        # 12 weeks after 2026-10-05 is Monday 28 December 2026, the Boxing Day bank holiday (observed);
        # 25-27 December are Christmas Day and a weekend: brought forward to Thursday 24 December.
        "next_due": {"FBC": "2026-12-24", "LFT": "2026-12-24", "renal": "2026-12-24"},
    },
)
def _27() -> BundleBuilder:
    b = stable_mg(
        "ex27",
        "Steven Caldwell",
        "1972-12-20",
        "male",
        95,
        "2024-11-04",
        200,
        ["2026-04-20", "2026-07-13", "2026-10-05"],
    )
    b.metabolites(180, 7800, "2026-10-12")
    return b


@example(
    "28-us-units",
    "Results from a US laboratory (cells/uL, mg/dL, g/dL, lb) converted before checking",
    "US units converted before the rules run",
    "2026-10-13",
    """Emily, 50, on azathioprine for myasthenia, had bloods taken while visiting the USA. The report uses US
    units: neutrophils 1400 cells/uL, creatinine 0.9 mg/dL, albumin 4.1 g/dL and weight 154 lb. azaguard converts
    them (neutrophils 1.4 x10^9/L, below 1.6; creatinine 80 umol/L; albumin 41 g/L; 69.9 kg) before applying
    the rules.""",
    {
        "findings": {"lab-neutrophils-low": "critical"},
        "absent": [
            "data-unknown-unit",
            "data-missing-weight",
            "lab-wbc-low",
            "lab-albumin-low",
            "lab-creatinine-rise",
            "lab-platelets-low",
        ],
        "phase": "stable",
        # 69.85 kg: 139.7-174.6 mg -> 150-150 mg/day (top rounded down to the 25 mg step).
        "recommended_mg_per_day": {"low": 150, "high": 150},
        "ctcae": {"lab-neutrophils-low": 2},
    },
)
def _28() -> BundleBuilder:
    b = patient("ex28", "Emily Carter", "1976-02-27", "female", MG, "2024-10-14")
    normal_pgx(b, "2025-03-31")
    b.bloods("2026-07-06", creat=78)
    b.azathioprine("2025-04-14", 150)
    when = "2026-10-12"
    b.lab("29463-7", 154, "[lb_av]", when, "Body weight")
    b.lab("6690-2", 4.1, "10*3/uL", when, "WBC")
    b.lab("751-8", 1400, "/uL", when, "Absolute neutrophil count")
    b.lab("731-0", 1500, "{cells}/uL", when, "Absolute lymphocyte count")
    b.lab("777-3", 210, "10*3/uL", when, "Platelets")
    b.lab("1742-6", 28, "U/L", when, "ALT")
    b.lab("1751-7", 4.1, "g/dL", when, "Albumin")
    b.lab("2160-0", 0.9, "mg/dL", when, "Creatinine")
    b.lab("98979-8", 80, "mL/min/{1.73_m2}", when, "eGFR")
    return b


@example(
    "29-unknown-unit",
    "Platelets reported in an unknown unit (lakh/cumm): not used, flagged",
    "Unknown unit set aside, not misread; incomplete blood count",
    "2026-11-25",
    """Harold, 72, on azathioprine for myasthenia, had his last blood count done abroad. The platelet count came
    back as 2.4 'lakh/cumm', a unit azaguard cannot safely convert, so the value is set aside (not misread as 2.4)
    and the team is asked to check it by hand.""",
    {
        "findings": {"data-unknown-unit": "warning", "data-incomplete-panel": "warning"},
        "absent": ["lab-platelets-low", "trend-platelets-falling"],
        "phase": "stable",
    },
)
def _29() -> BundleBuilder:
    b = stable_mg("ex29", "Harold Benson", "1954-07-01", "male", 77, "2024-10-07", 150, ["2026-06-08", "2026-08-31"])
    when = "2026-11-23"
    b.lab("6690-2", 6.2, "10*9/L", when, "Leukocytes")
    b.lab("751-8", 3.6, "10*9/L", when, "Neutrophils")
    b.lab("731-0", 1.7, "10*9/L", when, "Lymphocytes")
    b.lab("777-3", 2.4, "lakh/cumm", when, "Platelet count", ucum=False)
    b.lft(when, 26, albumin=42).renal(when, 84, egfr=80)
    return b


@example(
    "30-mercaptopurine-allergy",
    "Azathioprine drafted for a patient with a recorded mercaptopurine allergy",
    "Hypersensitivity contraindication",
    "2026-12-07",
    """Yvonne, 57, has myasthenia and a recorded allergy to mercaptopurine from bowel treatment years ago.
    Azathioprine is turned into mercaptopurine in the body, so hypersensitivity to either is a contraindication:
    the draft azathioprine order needs specialist review before anything is started.""",
    {
        "findings": {"contraindication-hypersensitivity": "critical", "pgx-normal": "info"},
        "absent": ["screening-missing-fbc", "pgx-tpmt-unknown"],
        "phase": "pre-treatment",
    },
)
def _30() -> BundleBuilder:
    b = patient("ex30", "Yvonne Castellano", "1969-05-05", "female", MG, "2026-08-10")
    b.allergy("Mercaptopurine", rxnorm=RX_MERCAPTOPURINE)
    b.weight(68, "2026-11-30")
    b.bloods("2026-11-30")
    normal_pgx(b, "2026-11-30")
    full_screening(b, "2026-11-30", female=True)
    vaccinated(b, flu="2026-10-05", pneumo="2026-11-02", shingrix="2026-11-02")
    pyridostigmine(b, "2026-08-10")
    draft_azathioprine(b, "2026-12-07", 50)
    return b


@example(
    "31-corrected-result",
    "Neutrophils 3.6 corrected to 1.2 by the laboratory; the correction is listed first",
    "Result versions: the newest version wins whatever the bundle order",
    "2026-07-01",
    """Gareth, 62, has been on azathioprine 150 mg for myasthenia for over a year. His blood count of 29 June
    first reported neutrophils 3.6 x10^9/L; the next morning the laboratory corrected that same result to 1.2
    (version 2, status corrected). The export lists the correction before the original. Only the newest version
    counts, whatever the order, so the superseded 3.6 cannot hide a count below the safety limit (1.6):
    azathioprine should be withheld and the specialist team contacted today.""",
    {
        "findings": {"lab-neutrophils-low": "critical"},
        "absent": ["lab-wbc-low", "lab-platelets-low"],
        "phase": "stable",
        # CTCAE v5: neutrophils <1.5-1.0 = grade 2 (the corrected 1.2, not the superseded 3.6).
        "ctcae": {"lab-neutrophils-low": 2},
    },
)
def _31() -> BundleBuilder:
    b = stable_mg(
        "ex31",
        "Gareth Llewellyn",
        "1963-08-21",
        "male",
        75,
        "2025-03-03",
        150,
        ["2025-02-24", "2026-01-12", "2026-04-06"],
    )
    when = "2026-06-29"
    b.lab("6690-2", 4.2, "10*9/L", when, "Leukocytes", ref_low=4.0, ref_high=11.0)
    # One neutrophil result in two versions (same id): the correction (version 2) comes first in the
    # bundle, the original (version 1) after it.
    b.lab("751-8", 1.2, "10*9/L", when, "Neutrophils", ref_low=2.0, ref_high=7.5, status="corrected")
    corrected = b.entries[-1]
    corrected["meta"] = {"versionId": "2", "lastUpdated": "2026-06-30T09:10:00+01:00"}
    b.lab("751-8", 3.6, "10*9/L", when, "Neutrophils", ref_low=2.0, ref_high=7.5)
    b.entries[-1]["id"] = corrected["id"]
    b.entries[-1]["meta"] = {"versionId": "1", "lastUpdated": "2026-06-29T16:05:00+01:00"}
    b.lab("777-3", 230, "10*9/L", when, "Platelets", ref_low=150, ref_high=400)
    b.lab("731-0", 1.8, "10*9/L", when, "Lymphocytes", ref_low=1.0, ref_high=4.0)
    b.lft(when, 22, albumin=42).renal(when, 78, egfr=90)
    return b


# ================================================================ the monitoring loop
def course_with_hold(b: BundleBuilder, start: str, dose: float, hold: str, reason: str) -> BundleBuilder:
    """A course withheld by the clinic on `hold`: the active entry ends the day before and an
    on-hold entry (FHIR MedicationStatement status on-hold, with statusReason) starts that day."""
    end = date.fromisoformat(hold).toordinal() - 1
    b.azathioprine(start, dose, end=date.fromordinal(end).isoformat())
    b.statement("Azathioprine 50 mg tablet", hold, dose, 1, "1256", "on-hold")
    b.entries[-1]["statusReason"] = [{"text": reason}]
    return b


@example(
    "32-on-hold-after-neutropenia",
    "Azathioprine withheld after neutrophils 1.3: on hold is not stopped",
    "Treatment on hold: repeat count due from the finding, restart criteria, monitoring continues",
    "2026-06-10",
    """Helen, 58, has taken azathioprine 150 mg for myasthenia since March 2025. On 1 June her neutrophils were
    1.3 x10^9/L and the team withheld azathioprine the next day. On hold is not stopped: her repeat blood count
    is due within two weeks of the low result (15 June), red-flag advice and interaction checks continue, and the
    dose section lists what must be true before she restarts instead of a titration plan.""",
    {
        "findings": {"treatment-on-hold": "warning", "lab-neutrophils-low": "critical", "symptom-guidance": "info"},
        "absent": ["dosing-below-target", "dosing-start-plan"],
        "phase": "on-hold",
        "next_due": {"FBC": "2026-06-15"},
        "overdue": {"FBC": False},
        "plan": [],
    },
)
def _32() -> BundleBuilder:
    b = patient("ex32", "Helen Carter", "1968-02-11", "female", MG, "2024-11-04")
    normal_pgx(b, "2025-02-10")
    b.weight(70, "2026-06-01")
    b.bloods("2025-02-24")
    b.bloods("2026-03-09")
    b.fbc("2026-06-01", 3.6, 1.3, 210, lymph=1.4, mcv=95).lft("2026-06-01", 24, albumin=41)
    b.renal("2026-06-01", 70, egfr=90)
    course_with_hold(b, "2025-03-03", 150, "2026-06-02", "Neutrophils 1.3 x10^9/L on 1 Jun 2026")
    return b


@example(
    "33-follow-up-overdue",
    "Critical ALT asked for a repeat LFT that never came",
    "A follow-up pulls the LFT forward and is overdue when its result does not arrive",
    "2026-07-20",
    """Ian, 49, is stable on azathioprine 125 mg for myasthenia. On 29 June his ALT was 168 U/L. The clinic
    recorded "repeat test booked", but no repeat LFT has arrived. The repeat was due by 13 July, two weeks after
    the result, not at the next 12-weekly visit in September: it is now overdue, and because it answers a critical
    result, the missed repeat is critical too.""",
    {
        "findings": {"lab-alt-high": "critical", "monitoring-follow-up-overdue": "critical"},
        "absent": ["monitoring-overdue"],
        "phase": "stable",
        "next_due": {"LFT": "2026-07-13", "FBC": "2026-09-21"},
        "overdue": {"LFT": True, "FBC": False, "renal": False},
    },
)
def _33() -> BundleBuilder:
    b = stable_mg("ex33", "Ian Porter", "1977-05-02", "male", 60, "2025-03-03", 125, ["2025-02-24", "2026-04-06"])
    when = "2026-06-29"
    b.fbc(when, 6.1, 3.8, 240, lymph=1.6, mcv=93)
    b.lab("1742-6", 168, "U/L", when, "ALT", ref_low=7, ref_high=41)
    b.lab("1751-7", 40, "g/L", when, "Albumin")
    b.renal(when, 76, egfr=90)
    return b


@example(
    "34-partial-panel",
    "Only neutrophils came back: not a full blood count",
    "A lone analyte feeds the thresholds but does not satisfy the FBC; one data-quality finding",
    "2026-07-13",
    """Joan, 66, is stable on azathioprine 100 mg. Her 12-weekly bloods on 29 June came back with liver and kidney
    tests but, from the blood count, only neutrophils (3.1). One analyte is not a full blood count: her FBC (last
    complete on 6 April) is still due, now two weeks overdue, and the missing white cells and platelets are one
    data-quality finding rather than three separate reviews.""",
    {
        "findings": {"monitoring-overdue": "warning", "data-incomplete-panel": "warning"},
        "absent": ["lab-neutrophils-low"],
        "phase": "stable",
        "next_due": {"FBC": "2026-06-29", "LFT": "2026-09-21", "renal": "2026-09-21"},
        "overdue": {"FBC": True, "LFT": False, "renal": False},
    },
)
def _34() -> BundleBuilder:
    b = stable_mg("ex34", "Joan Whitley", "1960-01-30", "female", 52, "2025-03-03", 100, ["2025-02-24", "2026-04-06"])
    when = "2026-06-29"
    b.lab("751-8", 3.1, "10*9/L", when, "Neutrophils")
    b.lft(when, 21, albumin=40).renal(when, 68, egfr=88)
    return b


@example(
    "35-allopurinol-existing-dose",
    "Cut from 100 to 25 mg when allopurinol started: no titration back up",
    "Allopurinol factor on the patient's own dose; no re-escalation; one finding",
    "2026-06-08",
    """Keith, 70, has taken azathioprine 100 mg for myasthenia since 2025. When gout needed allopurinol on 4 May,
    his azathioprine was correctly cut to a quarter, 25 mg. The quarter applies to the dose he took, not to the
    weight-based target: 25 mg is right, he is not "below target", and the plan does not climb back up while
    allopurinol continues. The dose change restarted 2-weekly blood counts.""",
    {
        "findings": {"interaction-allopurinol": "critical"},
        "absent": ["dosing-below-target", "dosing-above-recommended", "monitoring-follow-up-overdue"],
        "phase": "dose-change",
        "recommended_mg_per_day": {"low": 25, "high": 25},
        "plan": [["2026-06-08", 25]],
        "next_due": {"FBC": "2026-06-15"},
    },
)
def _35() -> BundleBuilder:
    b = patient("ex35", "Keith Brennan", "1956-07-19", "male", MG, "2024-10-01")
    normal_pgx(b, "2025-02-10")
    b.weight(80, "2026-06-01")
    for when in ("2025-02-24", "2026-02-16", "2026-05-18", "2026-06-01"):
        b.bloods(when)
    b.azathioprine("2025-03-03", 100, end="2026-05-03")
    b.azathioprine("2026-05-04", 25)
    b.statement("Allopurinol 100 mg tablet", "2026-05-04", 100, rxnorm="519")
    return b


@example(
    "36-bilirubin-alp",
    "Bilirubin 92 umol/L with ALP 410 U/L",
    "Bilirubin and ALP graded by CTCAE v5 from the laboratory's upper limit",
    "2026-07-01",
    """Lena, 54, is stable on azathioprine 125 mg. Her LFT on 29 June shows bilirubin 92 umol/L (upper limit 21:
    4.4 times, CTCAE grade 3) and ALP 410 U/L (upper limit 130: 3.2 times, grade 2), with a normal ALT. ALP rises
    are often not drug-related, but a grade 3 bilirubin on a thiopurine needs review, and the repeat LFT is due
    within two weeks.""",
    {
        "findings": {"lab-bilirubin-high": "warning"},
        "absent": ["lab-alp-high", "lab-alt-high", "lab-bilirubin-jaundice"],
        "phase": "stable",
        "ctcae": {"lab-bilirubin-high": 3},
        "next_due": {"LFT": "2026-07-13"},
    },
)
def _36() -> BundleBuilder:
    b = stable_mg("ex36", "Lena Okafor", "1972-09-08", "female", 64, "2025-03-03", 125, ["2025-02-24", "2026-04-06"])
    when = "2026-06-29"
    b.fbc(when, 6.0, 3.7, 250, lymph=1.7, mcv=92).lft(when, 28, albumin=40).renal(when, 70, egfr=90)
    b.lab("1975-2", 92, "umol/L", when, "Bilirubin", ref_high=21)
    b.lab("6768-6", 410, "U/L", when, "Alkaline phosphatase", ref_high=130)
    return b


# ================================================================ CPIC 2026 tables
@example(
    "37-tpmt-poor-cpic-2026",
    "TPMT *3A/*5: a poor metaboliser by the 2026 CPIC tables (possible intermediate before)",
    "CPIC data 2026-02-05: TPMT *5 is now no function, so *3A/*5 is Poor: no azathioprine",
    "2026-03-09",
    """Rhys, 52, with myasthenia, has TPMT *3A/*5. By the CPIC tables azaguard shipped until early 2026, *5
    had uncertain function and he was a "possible intermediate metaboliser", started at 30-80% of the dose.
    CPIC's 2025 guideline update (loaded Jan-Feb 2026) calls *5 non-functional: with two non-working copies he is
    a poor metaboliser, normal doses can cause life-threatening marrow failure, and a non-thiopurine should be
    chosen. The drafted order is not given a dose.""",
    {
        "findings": {"pgx-poor": "critical"},
        "absent": ["pgx-intermediate", "pgx-indeterminate", "dosing-start-plan", "data-unknown-allele"],
        "phase": "pre-treatment",
        "recommended_mg_per_day": None,
    },
)
def _37() -> BundleBuilder:
    b = patient("ex37", "Rhys Llewellyn", "1973-08-21", "male", MG, "2025-11-17")
    b.weight(78, "2026-03-02")
    b.bloods("2026-03-02")
    b.genotype("TPMT", "*3A/*5", "2026-03-02").genotype("NUDT15", "*1/*1", "2026-03-02")
    full_screening(b, "2026-03-02")
    vaccinated(b, flu="2025-10-14", pneumo="2026-01-26", shingrix="2026-01-26")
    prednisolone(b, "2025-11-17", 20)
    draft_azathioprine(b, "2026-03-09", 50)
    return b


@example(
    "38-nudt15-star2-laboratory",
    "NUDT15 *1/*2 from the laboratory: read as *1/*3, an intermediate metaboliser",
    "Retired allele name: NUDT15 *2 is now part of *3, so *1/*2 is Intermediate (30-80%), not Indeterminate",
    "2026-03-23",
    """Hana, 38, has dermatomyositis and is about to start azathioprine. Her NUDT15 report, written with the
    laboratory's older allele names, says *1/*2. CPIC has since folded *2 into *3 (both non-working), so her
    result is *1/*3: one non-working NUDT15 copy, an intermediate metaboliser who starts at 30-80% of the usual
    dose. Read literally against the new tables, "*2" would be an unknown allele.""",
    {
        "findings": {"pgx-intermediate": "warning", "dosing-start-plan": "info"},
        "absent": ["data-unknown-allele", "pgx-nudt15-indeterminate", "pgx-normal", "dosing-above-recommended"],
        "phase": "pre-treatment",
        # 70 kg: 140 x 30% = 42 -> 50 mg; 175 x 80% = 140 -> rounded down to 125 mg.
        "recommended_mg_per_day": {"low": 50, "high": 125},
        "plan": [["2026-03-23", 50]],
    },
)
def _38() -> BundleBuilder:
    b = patient("ex38", "Hana Sato", "1987-12-04", "female", DERMATOMYOSITIS, "2025-12-15")
    b.weight(70, "2026-03-16")
    b.bloods("2026-03-16")
    b.genotype("TPMT", "*1/*1", "2026-03-16").genotype("NUDT15", "*1/*2", "2026-03-16")
    full_screening(b, "2026-03-16", female=True)
    vaccinated(b, flu="2025-10-20", pneumo="2026-02-09", shingrix="2026-02-09")
    prednisolone(b, "2025-12-15", 30)
    draft_azathioprine(b, "2026-03-23", 50)
    return b


# ================================================================ knowledge currency (issue 11)
@example(
    "39-vzv-igg-negative",
    "Chickenpox antibody negative (LOINC 19162-7) before starting",
    "VZV IgG read with the valid LOINC code: non-immune patients are no longer missed",
    "2026-05-11",
    """Nadia, 34, is about to start azathioprine for myasthenia. Her chickenpox antibody (VZV IgG, LOINC 19162-7)
    is negative. The old code list held an invalid LOINC (19162-6, failing its check digit), so a result like hers
    went unread. Non-immune patients need chickenpox advice and, where appropriate, vaccination before starting.""",
    {
        "findings": {"screening-vzv-non-immune": "warning"},
        "absent": ["screening-missing-vzv"],
        "phase": "pre-treatment",
    },
)
def _39() -> BundleBuilder:
    b = patient("ex39", "Nadia Rahman", "1992-03-14", "female", MG, "2025-11-03")
    normal_pgx(b, "2026-04-20")
    b.weight(61, "2026-04-20").bloods("2026-04-20")
    b.screening("5196-1", "Hepatitis B surface antigen", "2026-04-20")
    b.screening("16933-4", "Hepatitis B core antibody", "2026-04-20")
    b.screening("16128-1", "Hepatitis C antibody", "2026-04-20")
    b.screening("75622-1", "HIV 1+2 antibody and p24 antigen", "2026-04-20")
    b.screening("2106-3", "Choriogonadotropin (pregnancy test)", "2026-04-20")
    b.screening("19162-7", "Varicella zoster virus IgG Ab [Presence] in Serum", "2026-04-20", result="Negative")
    draft_azathioprine(b, "2026-05-11", 50)
    return b


@example(
    "40-lone-high-6-tgn",
    "6-TGN 620 measured without 6-MMP",
    "A metabolite measured alone is read against its own range",
    "2026-07-06",
    """Omar, 58, is stable on azathioprine 175 mg for CIDP. His 6-TGN came back at 620 pmol/8x10^8 RBC, above the
    therapeutic range (235-450), but the laboratory did not measure 6-MMP with it. A lone result used to be ignored;
    a high 6-TGN is a marrow-toxicity risk on its own: check the blood count and consider a lower dose.""",
    {
        "findings": {"metabolite-tgn-high": "warning"},
        "absent": ["metabolite-supratherapeutic", "metabolite-shunting"],
        "phase": "stable",
    },
)
def _40() -> BundleBuilder:
    b = stable_mg("ex40", "Omar Haddad", "1968-01-22", "male", 72, "2025-03-03", 175, ["2025-02-24", "2026-04-06"])
    b.entries[1]["code"] = {"coding": [{"system": "http://snomed.info/sct", "code": CIDP[0], "display": CIDP[1]}]}
    b.fbc("2026-06-29", 5.1, 3.0, 210, lymph=1.2, mcv=99).lft("2026-06-29", 24, albumin=40).renal(
        "2026-06-29", 80, egfr=88
    )
    b.add(
        {
            "resourceType": "Observation",
            "id": "met-tgn-1",
            "status": "final",
            "code": {"coding": [{"system": "urn:oid:2.16.840.1.113883.19.5", "code": "6-tgn"}], "text": "6-TGN"},
            "subject": {"reference": "Patient/ex40"},
            "effectiveDateTime": "2026-06-29",
            "valueQuantity": {"value": 620, "unit": "pmol/8x10^8 RBC"},
        }
    )
    return b


@example(
    "41-falling-haemoglobin",
    "Haemoglobin falling from 138 to 94 g/L over four counts",
    "Anaemia graded by CTCAE v5 and a steady fall seen as a trend",
    "2026-07-06",
    """Rita, 67, is stable on azathioprine 125 mg for myasthenia. Her haemoglobin has fallen at each of her last four
    counts, from 138 to 94 g/L, with a rising MCV; white cells and platelets are normal. Anaemia (and macrocytosis)
    is a published azathioprine harm: the fall is a trend to act on, and 94 g/L is CTCAE grade 2.""",
    {
        "findings": {"trend-haemoglobin-falling": "critical", "lab-haemoglobin-low": "warning"},
        "absent": ["lab-wbc-low", "lab-platelets-low"],
        "phase": "stable",
        "ctcae": {"lab-haemoglobin-low": 2},
        "next_due": {"FBC": "2026-07-13"},
    },
)
def _41() -> BundleBuilder:
    b = stable_mg("ex41", "Rita Moreno", "1959-06-30", "female", 64, "2025-03-03", 125, ["2025-02-24"])
    for when, hb, mcv in (
        ("2026-01-05", 138, 97),
        ("2026-03-30", 121, 100),
        ("2026-05-26", 107, 103),
        ("2026-06-29", 94, 106),
    ):
        b.fbc(when, 6.2, 3.9, 240, lymph=1.5, mcv=mcv).lab("718-7", hb, "g/L", when, "Haemoglobin")
        b.lft(when, 22, albumin=41).renal(when, 70, egfr=85)
    return b


@example(
    "42-hypersensitivity-week-3",
    "Fever, rash and aching joints three weeks after starting",
    "Possible hypersensitivity reaction: not closed by a normal blood count",
    "2026-06-24",
    """Tom, 45, started azathioprine for myasthenia on 1 June. On 22 June he reported fever, a rash and aching
    joints; his blood count the next day was normal. A reaction in the first weeks is a recognised azathioprine
    hypersensitivity: it needs same-day assessment, and a normal count does not rule it out. If confirmed, a
    restart is contraindicated.""",
    {
        "findings": {"symptom-hypersensitivity": "critical", "dosing-no-escalation": "info"},
        "absent": ["symptom-fever", "dosing-below-target"],
        "phase": "initiation",
    },
)
def _42() -> BundleBuilder:
    b = patient("ex42", "Tom Fletcher", "1981-02-17", "male", MG, "2025-12-01")
    normal_pgx(b, "2026-05-11")
    b.weight(80, "2026-05-18").bloods("2026-05-18").bloods("2026-06-15")
    b.azathioprine("2026-06-01", 50)
    b.symptom(FEVER[0], FEVER[1], "2026-06-22")
    b.symptom("271807003", "Rash", "2026-06-22")
    b.add(
        {
            "resourceType": "Observation",
            "id": "sym-joints",
            "status": "final",
            "category": [
                {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey"}]}
            ],
            "code": {"text": "Aching joints"},
            "subject": {"reference": "Patient/ex42"},
            "effectiveDateTime": "2026-06-22",
            "valueBoolean": True,
        }
    )
    b.bloods("2026-06-23")
    return b


# ================================================================ writer
DOCS = HERE.parent / "docs" / "examples.md"
SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _main_findings(expect: dict[str, Any]) -> str:
    found = sorted(expect["findings"].items(), key=lambda cs: (SEVERITY_ORDER[cs[1]], cs[0]))
    if found:
        return ", ".join(f"`{code}` ({sev})" for code, sev in found)
    return "no alert (" + ", ".join(f"`{code}`" for code in expect["absent"]) + " absent)"


def _md(text: str) -> str:
    """Table-cell text: star alleles (*1/*3A) must not turn into emphasis."""
    return text.replace("*", "\\*").replace("|", "\\|")


def render_docs(folder: Path = HERE) -> str:
    """docs/examples.md from the example files on disk (tests/test_examples.py checks it is current)."""
    kb = load_knowledge()
    shows = {ex.name: ex.shows for ex in EXAMPLES}
    names = sorted(p.name.removesuffix(".meta.json") for p in folder.glob("*.meta.json"))
    rows, categories = [], {}
    for name in names:
        meta = json.loads((folder / f"{name}.meta.json").read_text(encoding="utf-8"))
        expect = meta["expect"]
        record = read_bundle_file(folder / f"{name}.json", kb)
        for f in assess(record, kb, date.fromisoformat(meta["as_of"])).findings:
            if f.code in expect["findings"]:
                categories.setdefault(f.category, set()).add(name[:2])
        title, what = (_md(text) for text in (meta["title"], shows.get(name, "")))
        rows.append(
            f"| [{name}](../examples/{name}.json) | {meta['as_of']} | {title} | {what} | {_main_findings(expect)} |"
        )
    coverage = [
        f"| {cat} | {', '.join(sorted(categories[cat]))} |" for cat in sorted(categories, key=d.CATEGORIES.index)
    ]
    lines = [
        "# Examples",
        "",
        "<!-- Generated by examples/build_examples.py; edit that script, not this file. -->",
        "",
        f"`examples/` holds {len(names)} synthetic patients (invented names) that double as tested documentation.",
        "Each example has three files:",
        "",
        "- `NN-name.json`: a FHIR R4 Bundle, built with `azaguard.fhirbuild.BundleBuilder` in exactly the shapes "
        "the reader documents;",
        "- `NN-name.meta.json`: a one-line `title`, the fixed assessment date `as_of`, a short `story` in plain "
        "language and `expect`, the findings, dose and monitoring that the clinical rules require;",
        "- `NN-name.expected.txt`: the text report the engine prints for that date.",
        "",
        "`expect` is written by hand from the knowledge files and the clinical dossier, never copied from engine "
        "output. Keys: `findings` ({code: severity} that must be present), `absent` (codes that must not appear), "
        "`phase`, and optionally `recommended_mg_per_day` ({low, high} or null when no dose can be recommended), "
        "`plan` (titration steps), `overdue` and `next_due` (per test group), `ctcae` (CTCAE v5 grade per finding) "
        "and `max_severity` (`info` = a quiet report).",
        "",
        "## Running them",
        "",
        "```",
        ".venv/bin/azaguard demo                                   # every report, each on its own date",
        ".venv/bin/azaguard assess examples/08-allopurinol-full-dose.json --as-of 2026-05-20",
        ".venv/bin/azaguard assess examples/08-allopurinol-full-dose.json --as-of 2026-05-20 --format json",
        "```",
        "",
        "## The examples",
        "",
        "| File | As of | Title | What it shows | Main findings |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "## Finding categories covered",
        "",
        "| Category | Examples |",
        "|---|---|",
        *coverage,
        "",
        "## Tests and regeneration",
        "",
        "`tests/test_examples.py` assesses every example through the FHIR reader and checks each `expect` item "
        "separately, checks that each `.expected.txt` (and this page) matches what the engine produces now, that "
        "the examples together cover all 14 finding categories, and that the command line honours the JSON "
        "contract. Known engine bugs are marked there as strict expected failures (`xfail`) on the affected "
        "item only, with the reason.",
        "",
        "After changing the knowledge, the engine or the renderer, or an example in the script, regenerate and "
        "review the diff of the `.expected.txt` files:",
        "",
        "```",
        ".venv/bin/python examples/build_examples.py",
        ".venv/bin/python -m pytest tests/test_examples.py",
        "```",
        "",
        "The script deletes and rewrites every `NN-*` file in `examples/` and this page. A changed `expect` "
        "must come from the clinical rules, not from new engine output.",
        "",
    ]
    return "\n".join(lines)


def build(folder: Path = HERE) -> list[Path]:
    names = [ex.name for ex in EXAMPLES]
    assert len(set(names)) == len(names), "duplicate example names"
    assert all(GENERATED.match(f"{n}.json") for n in names), "example names must be NN-lower-case-words"
    for old in folder.iterdir():  # drop files of renamed or removed examples
        if GENERATED.match(old.name):
            old.unlink()
    kb = load_knowledge()
    written = []
    for ex in sorted(EXAMPLES, key=lambda e: e.name):
        bundle_path = folder / f"{ex.name}.json"
        bundle_path.write_text(_dump(ex.build().bundle()), encoding="utf-8")
        meta = {"title": ex.title, "as_of": ex.as_of, "story": ex.story, "expect": ex.expect}
        (folder / f"{ex.name}.meta.json").write_text(_dump(meta), encoding="utf-8")
        assessment = assess(read_bundle_file(bundle_path, kb), kb, date.fromisoformat(ex.as_of))
        (folder / f"{ex.name}.expected.txt").write_text(render_text(assessment), encoding="utf-8")
        written.append(bundle_path)
    DOCS.parent.mkdir(exist_ok=True)
    DOCS.write_text(render_docs(folder), encoding="utf-8")
    return written


def main() -> int:
    written = build()
    print(f"wrote {len(written)} examples to {HERE} and {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
