"""docs/codes.md cannot drift from the knowledge: every code, in the right row, flagged when unverified.

Codes are written in backticks in the doc, so a check for `code` cannot be satisfied by a date
or another number that merely contains it ("03" inside "2025-03-04"). Row checks go further:
the row that names a key (drug, vaccine, condition...) must hold every code and name of that key.
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import date
from pathlib import Path

import pytest

from azaguard.knowledge import load_knowledge
from azaguard.readers.fhir import read_bundle
from azaguard.render.fhir import LOINC, WRITTEN_CODES

KB = load_knowledge()
DOC = (Path(__file__).resolve().parent.parent / "docs" / "codes.md").read_text(encoding="utf-8")
ROWS = [line for line in DOC.splitlines() if line.startswith("| ")]
UNVERIFIED = "unverified — confirm locally"

# Codes the dossier (shared/reference/clinical-knowledge.md section 11) marks UNVERIFIED or "not verified".
DOSSIER_UNVERIFIED_LOINC = ["14631-6", "14682-9", *KB.pgx_codes.tpmt_activity_loinc]
DOSSIER_UNVERIFIED_SNOMED = ["25044007"]  # NMO/NMOSD
DOSSIER_UNVERIFIED_UNITS = ["ukat/L"]


def bt(x: str) -> str:
    return f"`{x}`"


def cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def tables() -> list[list[str]]:
    """Each markdown table as its list of lines (header, separator, rows)."""
    out: list[list[str]] = []
    previous_was_row = False
    for line in DOC.splitlines():
        is_row = line.startswith("|")
        if is_row and not previous_was_row:
            out.append([])
        if is_row:
            out[-1].append(line)
        previous_was_row = is_row
    return out


def rows_starting_with(token: str, table: str = "") -> list[str]:
    """Rows whose first cell is `token`, in tables whose first header cell is `table` (any if empty)."""
    pool = [r for t in tables() if not table or cells(t[0])[0] == table for r in t[2:]]
    return [r for r in pool if cells(r)[0] == bt(token)]


def the_row(token: str, table: str = "") -> str:
    found = rows_starting_with(token, table)
    assert len(found) == 1, f"expected one row starting with {bt(token)} in table {table!r}, found {len(found)}"
    return found[0]


def list_fields(obj: object) -> dict[str, list[str]]:
    """Every list-valued field of a knowledge section (dataclass or pydantic model), by name."""
    if dataclasses.is_dataclass(obj):
        items = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    else:
        items = dict(obj)  # type: ignore[call-overload]
    return {k: v for k, v in items.items() if isinstance(v, list)}


def coded_lists() -> set[str]:
    """Every code in codes.toml [pgx] and [status] lists, whatever the list is called."""
    return {c for section in (KB.pgx_codes, KB.status_codes) for codes in list_fields(section).values() for c in codes}


def all_loinc() -> set[str]:
    codes = {c for a in KB.analytes.values() for c in a.loinc}
    codes |= {c for codes_ in KB.screening_codes.values() for c in codes_}
    return codes | {c for c in coded_lists() if re.fullmatch(r"\d+-\d", c)}


def all_status_answers() -> set[str]:
    """LOINC answer codes (LA...) and SNOMED CT answer codes of the [status] lists."""
    return {c for c in coded_lists() if c.startswith("LA") or c.isdigit()}


def all_snomed() -> set[str]:
    codes = {c for i in KB.indications.values() for c in i.snomed}
    codes |= {c for r in KB.conditions.values() for c in r.snomed}
    codes |= {c for s in KB.symptoms.items.values() for c in s.snomed}
    return codes | {c for c in coded_lists() if c.isdigit()}


def all_rxnorm() -> set[str]:
    return {c for drug in KB.drugs.values() for c in drug.rxnorm}


def all_cvx() -> set[str]:
    return {c for g in (KB.vaccines.live, KB.vaccines.inactivated) for v in g.values() for c in v.cvx}


# ---------------------------------------------------------------- every code is in the doc
@pytest.mark.parametrize(
    ("kind", "codes"),
    [
        ("LOINC", all_loinc() | all_status_answers()),
        ("SNOMED CT", all_snomed()),
        ("RxNorm", all_rxnorm()),
        ("CVX", all_cvx()),
    ],
)
def test_every_code_the_knowledge_holds_is_in_the_doc(kind, codes):
    assert codes, kind
    missing = sorted(c for c in codes if bt(c) not in DOC)
    assert not missing, f"{kind} codes missing from docs/codes.md: {missing}"


def test_the_doc_lists_no_loinc_code_the_knowledge_does_not_hold():
    in_doc = set(re.findall(r"`(\d{1,6}-\d)`", DOC))
    stale = sorted(in_doc - all_loinc() - set(WRITTEN_CODES[LOINC]))  # section 9: codes the FHIR API writes
    assert not stale, f"docs/codes.md lists LOINC codes the knowledge no longer holds: {stale}"


# ---------------------------------------------------------------- rows hold the right mapping
@pytest.mark.parametrize(("analyte", "code"), [(k, c) for k, a in KB.analytes.items() for c in a.loinc])
def test_loinc_row_names_its_analyte_and_canonical_unit(analyte, code):
    row = cells(the_row(code))
    assert row[1] == bt(analyte)
    assert row[4] == bt(KB.analytes[analyte].canonical)


@pytest.mark.parametrize("analyte", [k for k, a in KB.analytes.items() if not a.loinc])
def test_metabolite_row_lists_local_codes_and_names(analyte):
    row = the_row(analyte, "Analyte key")
    a = KB.analytes[analyte]
    for token in (*a.local, *a.text, a.canonical):
        assert bt(token) in row
    assert UNVERIFIED in row


@pytest.mark.parametrize(
    ("canonical", "spelling", "factor"),
    [(can, sp, f) for can, table in KB.units.items() for sp, f in table.items()],
)
def test_unit_spelling_row_has_its_factor(canonical, spelling, factor):
    matches = [r for r in rows_starting_with(canonical) if cells(r)[1] == bt(spelling)]
    assert len(matches) == 1, (canonical, spelling)
    assert float(cells(matches[0])[2]) == pytest.approx(factor)


@pytest.mark.parametrize(
    ("analyte", "spelling", "factor"),
    [(a, sp, f) for a, table in KB.unit_overrides.items() for sp, f in table.items()],
)
def test_unit_override_row_has_its_factor(analyte, spelling, factor):
    matches = [r for r in rows_starting_with(analyte) if cells(r)[1] == bt(spelling)]
    assert len(matches) == 1, (analyte, spelling)
    assert float(cells(matches[0])[2]) == pytest.approx(factor)


def test_pgx_codes_and_gene_identifiers_have_rows():
    p = KB.pgx_codes
    for code in (*p.genotype_loinc, *p.gene_component_loinc, *p.phenotype_loinc, *p.tpmt_activity_loinc):
        the_row(code)
    for gene, ids in p.genes.items():
        row = next(r for r in ROWS if cells(r)[0] == gene)
        assert all(bt(i) in row for i in ids), gene


@pytest.mark.parametrize("code", sorted(coded_lists()))
def test_pgx_and_status_codes_have_one_row_each(code):
    the_row(code)


@pytest.mark.parametrize("rule", KB.screening_results, ids=lambda r: f"{r.test}-{r.when}")
def test_screening_result_rules_have_rows(rule):
    rows = [r for r in rows_starting_with(rule.test, "Screening key") if cells(r)[1] == rule.when]
    assert len(rows) == 1, rule
    assert cells(rows[0])[2] == bt(rule.finding)


@pytest.mark.parametrize(("key", "code"), [(k, c) for k, codes in KB.screening_codes.items() for c in codes])
def test_screening_rows(key, code):
    assert [r for r in rows_starting_with(key) if bt(code) in r], (key, code)


@pytest.mark.parametrize("drug", list(KB.drugs))
def test_drug_row_has_every_rxnorm_code_and_name(drug):
    row = the_row(drug, "Drug key")
    spec = KB.drugs[drug]
    for token in (*spec.rxnorm, *spec.names):
        assert bt(token) in row, (drug, token)
    if not spec.verified:
        assert UNVERIFIED in cells(row)[-1], f"{drug} is verified = false in medicines.toml"


@pytest.mark.parametrize("key", list(KB.indications))
def test_indication_row(key):
    row = the_row(key, "Indication key")
    ind = KB.indications[key]
    for token in (*ind.snomed, *ind.text):
        assert bt(token) in row, (key, token)


@pytest.mark.parametrize("key", list(KB.conditions))
def test_condition_row(key):
    row = the_row(key, "Condition key")
    rule = KB.conditions[key]
    for token in (*rule.snomed, *rule.text, rule.finding):
        assert bt(token) in row, (key, token)


@pytest.mark.parametrize("key", list(KB.symptoms.items))
def test_symptom_row(key):
    row = the_row(key, "Symptom key")
    spec = KB.symptoms.items[key]
    for token in (*spec.snomed, *spec.text):
        assert bt(token) in row, (key, token)
    assert cells(row)[3] == spec.severity


@pytest.mark.parametrize(
    ("key", "live"), [(k, True) for k in KB.vaccines.live] + [(k, False) for k in KB.vaccines.inactivated]
)
def test_vaccine_row(key, live):
    row = the_row(key, "Vaccine key")
    spec = (KB.vaccines.live if live else KB.vaccines.inactivated)[key]
    for token in (*spec.cvx, *spec.names):
        assert bt(token) in row, (key, token)
    assert cells(row)[1] == ("**live**" if live else "inactivated")


# ---------------------------------------------------------------- unverified codes are flagged
@pytest.mark.parametrize("code", DOSSIER_UNVERIFIED_LOINC + DOSSIER_UNVERIFIED_SNOMED)
def test_dossier_unverified_codes_say_confirm_locally(code):
    rows = [r for r in ROWS if bt(code) in r]
    assert rows, code
    assert all(UNVERIFIED in r for r in rows), code


@pytest.mark.parametrize("spelling", DOSSIER_UNVERIFIED_UNITS)
def test_dossier_unverified_conversions_say_confirm_locally(spelling):
    rows = [r for r in ROWS if len(cells(r)) > 1 and cells(r)[1] == bt(spelling)]
    assert rows and all(UNVERIFIED in r for r in rows)


def test_every_row_of_a_verified_column_has_a_known_state():
    states = ("verified", UNVERIFIED, "not in dossier §11 — confirm locally", "no code", "exact", "same unit")
    checked = 0
    for table in tables():
        if cells(table[0])[-1] != "Verified":
            continue
        for row in table[2:]:
            assert cells(row)[-1].startswith(states), row
            checked += 1
    assert checked > 200


# ---------------------------------------------------------------- the JSON examples are read as documented
EXAMPLES = [json.loads(block) for block in re.findall(r"```json\n(.*?)\n```", DOC, flags=re.S)]


def test_examples_cover_every_resource_type_the_reader_handles():
    types = {e["resourceType"] for e in EXAMPLES}
    assert types >= {
        "Bundle",
        "Patient",
        "Observation",
        "Medication",
        "MedicationStatement",
        "MedicationRequest",
        "Immunization",
        "Condition",
        "AllergyIntolerance",
    }


def test_bundle_example_reads():
    for example in (e for e in EXAMPLES if e["resourceType"] == "Bundle"):
        assert read_bundle(example, KB).patient_id == "p1"


def test_resource_examples_read_together_as_documented():
    resources = [e for e in EXAMPLES if e["resourceType"] != "Bundle"]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
    rec = read_bundle(bundle, KB)
    assert (rec.patient_id, rec.birth_date, rec.sex, rec.name) == ("p1", date(1970, 3, 1), "female", "Ada Byron")
    neut = next(r for r in rec.labs if r.analyte == "neutrophils")
    assert (neut.value, neut.ref_low, neut.ref_high) == (3.5, 2.0, 7.5)
    mmp = next(r for r in rec.labs if r.analyte == "mmp")
    assert mmp.below_detection
    assert [(r.analyte, r.reason) for r in rec.rejected] == [("platelets", "missing-value")]
    assert [(g.gene, g.diplotype, g.phenotype) for g in rec.genotypes] == [
        ("TPMT", "*1/*3A", None),
        ("NUDT15", None, "Normal metabolizer"),
    ]
    assert [(a.value, a.unit) for a in rec.tpmt_activity] == [(35, "nmol/h/g Hb")]
    assert [(s.kind, s.value) for s in rec.statuses] == [("pregnancy", True), ("breastfeeding", False)]
    assert [s.key for s in rec.symptoms] == ["fever"]
    assert rec.screening_done == (("hbsag", date(2024, 12, 1)),)
    assert rec.screening_results == (("hbsag", date(2024, 12, 1), False),)
    assert [(m.drug, m.status, m.daily_dose_mg) for m in rec.medications] == [
        ("azathioprine", "active", 100),
        ("pyridostigmine", "active", None),
        ("allopurinol", "draft", 100),
    ]
    assert [(v.vaccine, v.live, v.status) for v in rec.vaccinations] == [
        ("mmr", True, "ordered"),
        ("influenza", False, "given"),
    ]
    assert [(c.key, c.active, c.onset) for c in rec.conditions] == [("myasthenia-gravis", True, date(2024, 6, 1))]
    assert [a.drug for a in rec.allergies] == ["azathioprine"]
