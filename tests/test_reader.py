"""FHIR R4 Bundle reader: every code and unit the knowledge holds, every status, every resource shape.

The reader's contract (azaguard/readers/fhir.py): structural damage is a ReaderError naming the
resource and field; content it cannot interpret (unknown unit, no value) becomes a RejectedResult
so the engine can report it; anything else is read into plain domain records.

Tests marked xfail(strict=True) state the correct behaviour for a bug found while writing them;
each reason starts with "BUG:" and the bug is described in full where the test is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from functools import partial
from typing import Any, TypeVar

import pytest

from azaguard import domain as d
from azaguard.fhirbuild import BundleBuilder
from azaguard.ingest.fhir import parse_bundle_text
from azaguard.knowledge import load_knowledge
from azaguard.readers.fhir import CVX, LOINC, RXNORM, SNOMED, UCUM, ReaderError, read_bundle, read_bundle_file

KB = load_knowledge()  # cached; needed at collection time for parametrisation
WHEN = "2025-03-04"
DAY = date(2025, 3, 4)
HGNC = "http://www.genenames.org/geneId"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

Resource = dict[str, Any]


# ---------------------------------------------------------------- helpers
def patient(**extra: Any) -> Resource:
    return {"resourceType": "Patient", "id": "p", "birthDate": "1970-01-01", "gender": "female", **extra}


def bundle(*resources: Resource, pat: Resource | None = None) -> Resource:
    entries = [pat or patient(), *resources]
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in entries]}


def read(*resources: Resource, pat: Resource | None = None) -> d.PatientRecord:
    return read_bundle(bundle(*resources, pat=pat), KB)


def reader_error(*resources: Resource, pat: Resource | None = None) -> ReaderError:
    with pytest.raises(ReaderError) as info:
        read(*resources, pat=pat)
    return info.value


def concept(
    code: str | None = None, system: str = LOINC, text: str | None = None, display: str | None = None
) -> Resource:
    out: Resource = {}
    if code is not None:
        coding: Resource = {"system": system, "code": code}
        if display is not None:
            coding["display"] = display
        out["coding"] = [coding]
    if text is not None:
        out["text"] = text
    return out


def observation(code: Resource, rid: str = "obs-1", status: str = "final", when: Any = WHEN, **extra: Any) -> Resource:
    res: Resource = {"resourceType": "Observation", "id": rid, "status": status, "code": code}
    if when is not None:
        res["effectiveDateTime"] = when
    res.update(extra)
    return res


def lab(
    loinc: str,
    value: Any = 5.0,
    unit: str | None = None,
    *,
    ucum_code: str | None = None,
    system: str | None = UCUM,
    rid: str = "obs-1",
    **extra: Any,
) -> Resource:
    """A lab Observation; `unit` is the display unit, `ucum_code` the coded unit (both optional)."""
    q: Resource = {"value": value}
    if unit is not None:
        q["unit"] = unit
    if ucum_code is not None:
        q["code"] = ucum_code
        if system is not None:
            q["system"] = system
    return observation(concept(loinc), rid=rid, valueQuantity=q, **extra)


T = TypeVar("T")


def attempt(fn: Callable[[], T]) -> tuple[T | None, str]:
    """Run fn; return (result, "ok") or (None, "<ExceptionType>: <message>").

    Bug tests assert on this at their own frame, so a known failure shows a one-line traceback.
    """
    try:
        return fn(), "ok"
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def only_lab(rec: d.PatientRecord) -> d.LabResult:
    assert not rec.rejected, rec.rejected
    assert len(rec.labs) == 1, rec.labs
    return rec.labs[0]


def only_rejected(rec: d.PatientRecord) -> d.RejectedResult:
    assert not rec.labs, rec.labs
    assert len(rec.rejected) == 1, rec.rejected
    return rec.rejected[0]


def analyte_for_canonical(canonical: str) -> str:
    """An analyte that uses the canonical unit's shared table (not an override table)."""
    return next(k for k, a in KB.analytes.items() if a.canonical == canonical and k not in KB.unit_overrides)


# ---------------------------------------------------------------- bundle structure
def test_minimal_bundle_reads_patient_fields():
    rec = read(pat=patient(name=[{"given": ["Ada", "M"], "family": "Byron"}]))
    assert rec.patient_id == "p"
    assert rec.birth_date == date(1970, 1, 1)
    assert rec.sex == "female"
    assert rec.name == "Ada M Byron"
    assert rec.labs == () and rec.medications == () and rec.conditions == ()


def test_patient_name_text_wins_and_partial_birth_date_takes_first_day():
    rec = read(pat=patient(birthDate="1970-05", name=[{"text": "Ada Lovelace", "family": "X"}]))
    assert rec.name == "Ada Lovelace"
    assert rec.birth_date == date(1970, 5, 1)


def test_patient_without_id_birth_date_or_gender_is_accepted():
    rec = read(pat={"resourceType": "Patient"})
    assert (rec.patient_id, rec.birth_date, rec.sex, rec.name) == ("unknown", None, None, None)


@pytest.mark.parametrize(
    ("pat", "field"),
    [
        (patient(gender="F"), "gender"),
        (patient(gender=1), "gender"),
        (patient(birthDate="01/02/1970"), "birthDate"),
        (patient(birthDate=1970), "birthDate"),
        (patient(name={"text": "x"}), "name"),
        (patient(id=7), "id"),
    ],
)
def test_bad_patient_fields_are_reader_errors(pat, field):
    err = reader_error(pat=pat)
    assert err.field == field
    assert err.where.startswith("Bundle.entry[0]")


def test_patient_name_given_of_wrong_type_is_not_a_crash():
    # fhir.py _patient_name iterates n.get("given", []) without a type check: an int, null or
    # boolean raises TypeError (CLI: exit 1 "internal error" instead of exit 2).
    got = {
        repr(g): attempt(partial(lambda g: read(pat=patient(name=[{"given": g, "family": "B"}])), g))[1]
        for g in (5, None, True)
    }
    assert all(how == "ok" or how.startswith("ReaderError") for how in got.values()), got


@pytest.mark.parametrize(
    ("data", "where", "field"),
    [
        ([], "input", ""),
        ("Bundle", "input", ""),
        (None, "input", ""),
        ({"resourceType": "Patient"}, "input", "resourceType"),
        ({"entry": []}, "input", "resourceType"),
        ({"resourceType": "Bundle", "entry": {}}, "Bundle", "entry"),
        ({"resourceType": "Bundle", "entry": ["x"]}, "Bundle.entry[0]", ""),
        ({"resourceType": "Bundle", "entry": [None]}, "Bundle.entry[0]", ""),
        ({"resourceType": "Bundle", "entry": [{"fullUrl": "urn:x"}]}, "Bundle.entry[0]", "resource"),
        ({"resourceType": "Bundle", "entry": [{"resource": []}]}, "Bundle.entry[0]", "resource"),
        ({"resourceType": "Bundle", "entry": [{"resource": {"id": "x"}}]}, "Bundle.entry[0]", "resourceType"),
        ({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": 3}}]}, "Bundle.entry[0]", "resourceType"),
        ({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient", "id": 3}}]}, "", "id"),
        ({"resourceType": "Bundle"}, "Bundle", "entry"),
        ({"resourceType": "Bundle", "entry": []}, "Bundle", "entry"),
    ],
)
def test_structural_damage_is_a_reader_error_naming_where_and_field(data, where, field):
    with pytest.raises(ReaderError) as info:
        read_bundle(data, KB)
    assert info.value.where.startswith(where)
    assert info.value.field == field
    assert str(info.value).startswith(info.value.where)


def test_no_patient_and_two_patients_are_reader_errors():
    err = reader_error(pat={"resourceType": "Encounter", "id": "e"})
    assert "no Patient" in err.problem
    err = reader_error(patient(id="q"))
    assert "2 Patient" in err.problem


def test_unknown_resource_types_are_ignored():
    rec = read({"resourceType": "Encounter", "id": "e", "status": 12}, {"resourceType": "Practitioner"})
    assert rec.patient_id == "p"


def test_reader_error_message_names_entry_resource_and_field():
    err = reader_error(lab("6690-2", "high", "10*9/L", rid="wbc-1"))
    assert err.where == "Bundle.entry[1] (Observation/wbc-1) valueQuantity"
    assert err.field == "value"
    assert (
        str(err)
        == "Bundle.entry[1] (Observation/wbc-1) valueQuantity: field 'value' must be a number, got string \"high\""
    )


def test_read_bundle_file_reads_a_builder_bundle(tmp_path):
    b = BundleBuilder("f", "1970-01-01", "male")
    b.weight(70, WHEN)
    path = tmp_path / "b.json"
    path.write_text(json.dumps(b.bundle()), encoding="utf-8")
    rec = read_bundle_file(path, KB)
    assert rec.patient_id == "f"
    assert rec.labs[0].value == 70


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "not valid JSON"),
        (b"{not json", "not valid JSON"),
        (b'{"resourceType": "Bundle", "entry": [', "not valid JSON"),
        (b"\xff\xfe\x00{", "not UTF-8"),
    ],
)
def test_read_bundle_file_rejects_unreadable_content(tmp_path, content, problem):
    path = tmp_path / "b.json"
    path.write_bytes(content)
    with pytest.raises(ReaderError) as info:
        read_bundle_file(path, KB)
    assert problem in info.value.problem
    assert info.value.where == str(path)


@pytest.mark.parametrize("name", ["nope.json", "."])
def test_read_bundle_file_missing_file_or_directory(tmp_path, name):
    with pytest.raises(ReaderError) as info:
        read_bundle_file(tmp_path / name, KB)
    assert "cannot be read" in info.value.problem


def test_read_bundle_file_deeply_nested_json_is_a_reader_error(tmp_path):
    # json.loads raises RecursionError (not JSONDecodeError) for ~100k nested arrays; read_bundle_file
    # only catches JSONDecodeError, so the CLI exits 1 "internal error (RecursionError)".
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    _, how = attempt(lambda: read_bundle_file(path, KB))
    assert how.startswith("ReaderError"), how


def test_non_finite_numbers_are_reader_errors(tmp_path):
    # Python's json module accepts NaN/Infinity literals and turns 1e400 into inf; _num() lets them
    # through. A NaN weight crashes dosing (ValueError), an infinite dose makes --format json print
    # the invalid JSON token Infinity, an infinite 6-TGN crashes check_metabolites (OverflowError).
    b = BundleBuilder("p", "1970-01-01", "male")
    b.weight(70, WHEN)
    got = {}
    for literal in ("NaN", "Infinity", "-Infinity", "1e400"):
        text = json.dumps(b.bundle()).replace('"value": 70', f'"value": {literal}')
        if f'"value": {literal}' not in text:  # setup guard: not an AssertionError, so never "xfailed"
            raise LookupError(literal)
        path = tmp_path / f"{literal}.json"
        path.write_text(text, encoding="utf-8")
        got[literal] = attempt(partial(read_bundle_file, path, KB))[1]
    assert all(how.startswith("ReaderError") and "'value'" in how for how in got.values()), got


def test_huge_integer_value_is_a_reader_error():
    # {"value": 10**400} is a valid JSON number; _num() calls float(v) -> OverflowError.
    _, how = attempt(lambda: read(lab("29463-7", 10**400, "kg")))
    assert how.startswith("ReaderError"), how


# ---------------------------------------------------------------- analytes and units
LOINC_CASES = [(key, code) for key, a in KB.analytes.items() for code in a.loinc]


def test_loinc_codes_are_unique_across_analytes():
    codes = [code for _, code in LOINC_CASES]
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize(("analyte", "code"), LOINC_CASES)
def test_each_loinc_maps_to_its_analyte(analyte, code):
    canonical = KB.analytes[analyte].canonical
    r = only_lab(read(lab(code, 5, canonical, ucum_code=canonical)))
    assert (r.analyte, r.value, r.unit, r.code, r.when) == (analyte, 5.0, canonical, code, DAY)
    assert (r.original_value, r.original_unit) == (5.0, canonical)


LOCAL_CODES = [(key, code) for key, a in KB.analytes.items() for code in a.local]
TEXT_NAMES = [(key, text) for key, a in KB.analytes.items() for text in a.text]


@pytest.mark.parametrize(("analyte", "code"), LOCAL_CODES)
def test_local_codes_map_to_metabolite_analytes(analyte, code):
    canonical = KB.analytes[analyte].canonical
    res = observation(concept(code.upper(), system="urn:lab:local"), valueQuantity={"value": 300, "unit": canonical})
    assert only_lab(read(res)).analyte == analyte


@pytest.mark.parametrize(("analyte", "text"), TEXT_NAMES)
def test_test_names_map_to_metabolite_analytes(analyte, text):
    canonical = KB.analytes[analyte].canonical
    res = observation({"text": f"RBC {text.upper()} level"}, valueQuantity={"value": 300, "unit": canonical})
    assert only_lab(read(res)).analyte == analyte


def test_unrelated_observation_is_ignored():
    rec = read(lab("2345-7", 5.5, "mmol/L"))  # glucose: not read for azathioprine monitoring
    assert rec.labs == () and rec.rejected == ()


UNIT_CASES = [
    (analyte_for_canonical(canonical), spelling, factor)
    for canonical, table in KB.units.items()
    for spelling, factor in table.items()
] + [(analyte, spelling, factor) for analyte, table in KB.unit_overrides.items() for spelling, factor in table.items()]


@pytest.mark.parametrize(("analyte", "spelling", "factor"), UNIT_CASES)
def test_every_unit_spelling_converts_through_the_table(analyte, spelling, factor):
    code = next(iter(KB.analytes[analyte].loinc), None)
    concept_ = concept(code) if code else {"text": KB.analytes[analyte].text[0]}
    # as a display unit only
    r = only_lab(read(observation(concept_, valueQuantity={"value": 2.0, "unit": spelling})))
    assert r.value == pytest.approx(2.0 * factor)
    assert r.unit == KB.analytes[analyte].canonical
    assert (r.original_value, r.original_unit) == (2.0, spelling)
    # as a coded UCUM unit with an unknown display
    coded = {"value": 2.0, "unit": "?", "system": UCUM, "code": spelling}
    assert only_lab(read(observation(concept_, valueQuantity=coded))).value == pytest.approx(2.0 * factor)


@pytest.mark.parametrize(
    ("loinc", "value", "unit", "analyte", "expected"),
    [
        ("751-8", 3500, "cells/uL", "neutrophils", 3.5),
        ("751-8", 3500, "/mm3", "neutrophils", 3.5),
        ("6690-2", 6.2, "10*3/uL", "wbc", 6.2),
        ("777-3", 250, "K/uL", "platelets", 250),
        ("2160-0", 1.2, "mg/dL", "creatinine", 106.08),
        ("1975-2", 1.0, "mg/dL", "bilirubin", 17.104),
        ("1975-2", 17, "umol/L", "bilirubin", 17),
        ("1751-7", 4.1, "g/dL", "albumin", 41),
        ("718-7", 13.5, "g/dL", "haemoglobin", 135),
        ("1742-6", 0.5, "ukat/L", "alt", 30),
        ("1920-8", 0.75, "ukat/L", "ast", 45),
        ("29463-7", 154, "lb", "weight", 69.8532),
        ("29463-7", 154, "[lb_av]", "weight", 69.8532),
        ("29463-7", 70500, "g", "weight", 70.5),
        ("2160-0", 80, "µmol/L", "creatinine", 80),
        ("2160-0", 80, "μmol/L", "creatinine", 80),
        ("2160-0", 80, " umol/L ", "creatinine", 80),
        ("98979-8", 75, "mL/min/1.73m2", "egfr", 75),
    ],
)
def test_named_conversions(loinc, value, unit, analyte, expected):
    r = only_lab(read(lab(loinc, value, unit)))
    assert r.analyte == analyte
    assert r.value == pytest.approx(expected, rel=1e-6)
    assert r.unit == KB.analytes[analyte].canonical


def test_bilirubin_uses_its_own_factor_not_creatinines():
    bili = only_lab(read(lab("1975-2", 1.0, "mg/dL"))).value
    creat = only_lab(read(lab("2160-0", 1.0, "mg/dL"))).value
    assert bili == pytest.approx(17.104) and creat == pytest.approx(88.4)


def test_ucum_code_wins_over_display_and_display_is_the_fallback():
    r = only_lab(read(lab("6690-2", 6.0, "x 10 9 per litre", ucum_code="10*9/L")))
    assert (r.value, r.original_unit) == (6.0, "10*9/L")
    # unknown UCUM code but a known display unit: the display converts
    r = only_lab(read(lab("2160-0", 1.0, "mg/dL", ucum_code="mg/dL{calc}")))
    assert r.value == pytest.approx(88.4)


def test_coded_unit_from_another_system_is_not_trusted_as_ucum():
    q = {"value": 1.0, "unit": "mg/dL", "system": "urn:local:units", "code": "umol/L"}
    r = only_lab(read(observation(concept("2160-0"), valueQuantity=q)))
    assert r.value == pytest.approx(88.4)  # the display unit, not the local code


@pytest.mark.parametrize(
    ("loinc", "value", "unit"),
    [
        ("751-8", 55, "%"),  # a differential percentage must never be read as an absolute count
        ("6690-2", 6.0, "10*12/L"),
        ("2160-0", 0.09, "mmol/L"),
        ("718-7", 8.5, "mmol/L"),
        ("29463-7", 11, "st"),
        ("1751-7", 41, "g/l"),
    ],
)
def test_unknown_unit_is_a_rejected_result_and_the_value_is_not_used(loinc, value, unit):
    rej = only_rejected(read(lab(loinc, value, unit, rid="x-1")))
    assert rej.reason == "unknown-unit"
    assert rej.unit == unit
    assert rej.analyte == KB.loinc_index[loinc]
    assert rej.when == DAY
    assert rej.source_id == "x-1"
    assert rej.detail == str(float(value))


def test_missing_unit_is_a_rejected_result():
    rej = only_rejected(read(lab("6690-2", 6.0)))
    assert (rej.reason, rej.unit) == ("unknown-unit", "(none)")


def test_no_value_quantity_is_a_missing_value():
    rej = only_rejected(read(observation(concept("6690-2"), rid="w")))
    assert (rej.analyte, rej.reason, rej.source_id) == ("wbc", "missing-value", "w")
    assert rej.detail == "no valueQuantity"


def test_data_absent_reason_is_a_missing_value_with_the_reason():
    dar: dict[str, Any] = {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "error"}]
    }
    dar["text"] = "Sample haemolysed"
    rej = only_rejected(read(observation(concept("777-3"), dataAbsentReason=dar)))
    assert rej.reason == "missing-value"
    assert rej.detail == "data absent: Sample haemolysed"


def test_text_value_is_a_missing_value():
    rej = only_rejected(read(observation(concept("777-3"), valueString="clumped, see film")))
    assert rej.reason == "missing-value"
    assert "clumped" in rej.detail


def test_value_quantity_without_value_is_a_missing_value():
    rej = only_rejected(read(observation(concept("777-3"), valueQuantity={"unit": "10*9/L"})))
    assert (rej.reason, rej.detail) == ("missing-value", "valueQuantity without value")


@pytest.mark.parametrize(("comparator", "below"), [("<", True), ("<=", True), (">", False), (None, False)])
def test_comparator_marks_below_detection(comparator, below):
    q: Resource = {"value": 5, "unit": "pmol/8x10^8 RBC"}
    if comparator:
        q["comparator"] = comparator
    r = only_lab(read(observation({"text": "6-MMP"}, valueQuantity=q)))
    assert r.below_detection is below


def test_reference_range_is_converted_to_the_canonical_unit():
    rr = [{"low": {"value": 0.6, "unit": "mg/dL"}, "high": {"value": 1.2, "unit": "mg/dL"}}]
    r = only_lab(read(lab("2160-0", 1.0, "mg/dL", referenceRange=rr)))
    assert r.ref_low == pytest.approx(53.04)
    assert r.ref_high == pytest.approx(106.08)


def test_reference_range_without_unit_uses_the_result_unit():
    r = only_lab(read(lab("1742-6", 30, "U/L", referenceRange=[{"high": {"value": 40}}])))
    assert (r.ref_low, r.ref_high) == (None, 40)


@pytest.mark.parametrize(
    ("value", "field"),
    [("high", "value"), (True, "value"), ([5], "value"), ({"v": 5}, "value")],
)
def test_non_numeric_value_is_a_reader_error(value, field):
    err = reader_error(lab("6690-2", value, "10*9/L", rid="w1"))
    assert err.field == field
    assert "(Observation/w1)" in err.where


def test_labs_are_sorted_by_date():
    rec = read(
        lab("6690-2", 3, "10*9/L", rid="a", effectiveDateTime="2025-03-01"),
        lab("6690-2", 1, "10*9/L", rid="b", effectiveDateTime="2024-01-01"),
        lab("6690-2", 2, "10*9/L", rid="c", effectiveDateTime="2024-06-01"),
    )
    assert [r.source_id for r in rec.labs] == ["b", "c", "a"]


# ---------------------------------------------------------------- observation status and dates
@pytest.mark.parametrize("status", ["final", "amended", "corrected", "preliminary"])
def test_result_statuses_that_are_used(status):
    assert only_lab(read(lab("6690-2", 6, "10*9/L", status=status))).value == 6


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled", "registered", "unknown"])
def test_result_statuses_that_are_ignored(status):
    rec = read(lab("6690-2", 6, "10*9/L", status=status))
    assert rec.labs == () and rec.rejected == ()


def test_ignored_status_skips_the_rest_of_the_resource():
    # an entered-in-error result is not read further, so its other defects do not matter
    rec = read(lab("6690-2", "garbage", "10*9/L", status="entered-in-error", effectiveDateTime="yesterday"))
    assert rec.labs == ()


# ---------------------------------------------------------------- result versions (same Observation id)
def neut_version(
    value: float, status: str = "final", vid: Any = None, updated: Any = None, rid: str = "neut"
) -> Resource:
    """One version of a neutrophil count: same id, its own meta.versionId / meta.lastUpdated."""
    meta: Resource = {}
    if vid is not None:
        meta["versionId"] = vid
    if updated is not None:
        meta["lastUpdated"] = updated
    extra: Resource = {"meta": meta} if meta else {}
    return lab("751-8", value, "10*9/L", ucum_code="10*9/L", rid=rid, status=status, **extra)


def neut_values(*resources: Resource) -> list[float]:
    rec = read(*resources)
    assert rec.rejected == (), rec.rejected
    return [r.value for r in rec.labs if r.analyte == "neutrophils"]


@pytest.mark.parametrize("corrected_first", [True, False], ids=["corrected-first", "original-first"])
@pytest.mark.parametrize(
    ("original_meta", "corrected_meta"),
    [
        ({"vid": "1"}, {"vid": "2"}),
        ({"updated": "2025-03-04T09:00:00Z"}, {"updated": "2025-03-05T10:30:00Z"}),
    ],
    ids=["versionId", "lastUpdated"],
)
def test_corrected_result_wins_whatever_the_bundle_order(original_meta, corrected_meta, corrected_first):
    original = neut_version(3.6, **original_meta)
    corrected = neut_version(1.2, "corrected", **corrected_meta)
    pair = (corrected, original) if corrected_first else (original, corrected)
    assert neut_values(*pair) == [1.2]


@pytest.mark.parametrize("status", ["amended", "corrected", "final"])
def test_newer_version_replaces_the_older_whatever_its_status_word(status):
    assert neut_values(neut_version(1.2, status, vid="3"), neut_version(3.6, vid="2")) == [1.2]


@pytest.mark.parametrize("newer_first", [True, False])
def test_version_id_decides_before_last_updated(newer_first):
    # version 2 was written with an older timestamp (clock skew): the version number still decides
    newer = neut_version(1.2, "corrected", vid="2", updated="2025-03-04T08:00:00Z")
    older = neut_version(3.6, vid="1", updated="2025-03-05T08:00:00Z")
    assert neut_values(*((newer, older) if newer_first else (older, newer))) == [1.2]


@pytest.mark.parametrize("later_first", [True, False])
def test_last_updated_breaks_a_version_id_tie(later_first):
    later = neut_version(1.2, "amended", vid="1", updated="2025-03-05T08:00:00Z")
    earlier = neut_version(3.6, vid="1", updated="2025-03-04T08:00:00Z")
    assert neut_values(*((later, earlier) if later_first else (earlier, later))) == [1.2]


def test_last_updated_compares_the_moment_not_the_text():
    # 10:00+02:00 is 08:00Z, earlier than 09:00Z although its text sorts later
    east = neut_version(3.6, updated="2025-03-04T10:00:00+02:00")
    utc = neut_version(1.2, "corrected", updated="2025-03-04T09:00:00Z")
    assert neut_values(east, utc) == neut_values(utc, east) == [1.2]


def test_a_version_with_meta_outranks_one_without():
    bare = neut_version(3.6)
    versioned = neut_version(1.2, "corrected", vid="2")
    assert neut_values(bare, versioned) == neut_values(versioned, bare) == [1.2]


@pytest.mark.parametrize(
    ("newer", "older"),
    [
        ("10", "9"),  # digit strings compare as whole numbers: "10" is newer although "9" > "10" as text
        ("b", "a"),  # non-numeric version ids compare as text
        ("9a", "10"),  # one non-numeric id: the whole group compares as text
    ],
)
def test_non_numeric_version_ids_compare_as_text(newer, older):
    new, old = neut_version(1.2, "corrected", vid=newer), neut_version(3.6, vid=older)
    assert neut_values(new, old) == neut_values(old, new) == [1.2]


@pytest.mark.parametrize("withdrawal", ["entered-in-error", "cancelled"])
@pytest.mark.parametrize("withdrawal_first", [True, False])
def test_newest_version_withdrawn_removes_the_result(withdrawal, withdrawal_first):
    withdrawn = neut_version(3.6, withdrawal, vid="2")
    original = neut_version(3.6, vid="1")
    rec = read(*((withdrawn, original) if withdrawal_first else (original, withdrawn)))
    assert rec.labs == () and rec.rejected == ()  # the older version does not come back


def test_withdrawn_older_version_does_not_remove_the_newer():
    withdrawn = neut_version(3.6, "entered-in-error", vid="1")
    current = neut_version(1.2, "corrected", vid="2")
    assert neut_values(current, withdrawn) == neut_values(withdrawn, current) == [1.2]


def test_versions_of_different_ids_and_without_id_are_independent():
    no_id = [neut_version(3.6, vid="1"), neut_version(1.2, vid="2")]
    for res in no_id:
        del res["id"]
    assert sorted(neut_values(*no_id)) == [1.2, 3.6]
    assert sorted(neut_values(neut_version(3.6, vid="1", rid="a"), neut_version(1.2, vid="2", rid="b"))) == [1.2, 3.6]


def test_identical_copies_are_read_once():
    assert neut_values(neut_version(1.2, vid="2"), neut_version(1.2, vid="2")) == [1.2]


def test_superseded_version_is_not_read():
    # only the current version is read: a defect its correction fixed does not stop the bundle
    broken = neut_version(3.6, vid="1")
    broken["effectiveDateTime"] = "yesterday"
    assert neut_values(broken, neut_version(1.2, "corrected", vid="2")) == [1.2]


@pytest.mark.parametrize(("first", "second"), [({}, {}), ({"vid": "2"}, {"vid": "02"})])
def test_versions_that_cannot_be_ordered_are_a_reader_error(first, second):
    # different content, same (or no) version: guessing could pick the superseded value
    err = reader_error(neut_version(3.6, **first), neut_version(1.2, "corrected", **second))
    assert err.field == "meta.versionId"
    assert "(Observation/neut)" in err.where
    assert "Bundle.entry[2]" in err.problem


@pytest.mark.parametrize(
    ("meta", "field"),
    [
        ([], "meta"),
        ({"versionId": 2}, "meta.versionId"),
        ({"lastUpdated": "yesterday"}, "meta.lastUpdated"),
        ({"lastUpdated": "2025-02-30T10:00:00Z"}, "meta.lastUpdated"),
        ({"lastUpdated": 20250304}, "meta.lastUpdated"),
    ],
)
def test_malformed_version_meta_is_a_reader_error(meta, field):
    bad = neut_version(3.6)
    bad["meta"] = meta
    err = reader_error(neut_version(1.2, "corrected", vid="2"), bad)
    assert err.field == field
    assert "(Observation/neut)" in err.where


@pytest.mark.parametrize("status", ["done", "FINAL", "", 1, None])
def test_invalid_or_missing_observation_status_is_a_reader_error(status):
    res = lab("6690-2", 6, "10*9/L", rid="w1")
    if status is None:
        del res["status"]
    else:
        res["status"] = status
    err = reader_error(res)
    assert err.field == "status"
    assert "(Observation/w1)" in err.where


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025", date(2025, 1, 1)),
        ("2025-03", date(2025, 3, 1)),
        ("2025-03-04", date(2025, 3, 4)),
        ("2025-03-04T10:30:00Z", date(2025, 3, 4)),
        ("2025-03-04T23:30:00+01:00", date(2025, 3, 4)),
        ("2025-03-04T10:30:00.123-05:00", date(2025, 3, 4)),
        ("2025-03-04T10:30", date(2025, 3, 4)),
    ],
)
def test_partial_dates_and_date_times(value, expected):
    assert only_lab(read(lab("6690-2", 6, "10*9/L", effectiveDateTime=value))).when == expected


@pytest.mark.parametrize("value", ["2025-13-45", "2025-02-30", "yesterday", "2025/03/04", "04-03-2025", "", 20250304])
def test_bad_dates_are_reader_errors(value):
    err = reader_error(lab("6690-2", 6, "10*9/L", rid="w1", effectiveDateTime=value))
    assert err.field == "effectiveDateTime"
    assert "(Observation/w1)" in err.where


def test_effective_period_start_then_issued_are_date_fallbacks():
    period = observation(concept("6690-2"), when=None, effectivePeriod={"start": "2025-02-01", "end": "2025-02-02"})
    period["valueQuantity"] = {"value": 6, "unit": "10*9/L"}
    assert only_lab(read(period)).when == date(2025, 2, 1)
    issued = observation(concept("6690-2"), when=None, issued="2025-02-03T08:00:00Z")
    issued["valueQuantity"] = {"value": 6, "unit": "10*9/L"}
    assert only_lab(read(issued)).when == date(2025, 2, 3)
    both = lab("6690-2", 6, "10*9/L", issued="2025-12-31")
    assert only_lab(read(both)).when == DAY


def test_missing_effective_date_on_a_lab_is_a_reader_error():
    res = lab("6690-2", 6, "10*9/L", rid="w1")
    del res["effectiveDateTime"]
    err = reader_error(res)
    assert err.field == "effectiveDateTime"
    assert "required" in err.problem


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.update(code={"coding": {"system": LOINC, "code": "6690-2"}}), "coding"),
        (lambda r: r.update(code={"coding": ["6690-2"]}), "code.coding[0]"),
        (lambda r: r.update(code={"coding": [{"system": LOINC, "code": 6690}]}), "code"),
        (lambda r: r.update(code="6690-2"), "code"),
        (lambda r: r.pop("code"), "code"),
        (lambda r: r.update(valueQuantity=[6]), "valueQuantity"),
        (lambda r: r.update(category={"coding": []}), "category"),
        (lambda r: r.update(effectivePeriod="2025"), "effectivePeriod"),
    ],
)
def test_wrong_types_in_observation_are_reader_errors(mutate, field):
    res = lab("6690-2", 6, "10*9/L", rid="w1")
    res.pop("effectiveDateTime") if field == "effectivePeriod" else None
    mutate(res)
    err = reader_error(res)
    assert err.field == field
    assert "(Observation/w1)" in err.where


# ---------------------------------------------------------------- pharmacogenomics
def genotype_obs(
    code: str = "84413-4", value: Resource | None = None, gene: Resource | None = None, rid: str = "g1", **extra: Any
) -> Resource:
    res = observation(concept(code), rid=rid, **extra)
    if value is not None:
        res["valueCodeableConcept"] = value
    if gene is not None:
        res["component"] = [{"code": concept("48018-6"), "valueCodeableConcept": gene}]
    return res


@pytest.mark.parametrize("gene", ["TPMT", "NUDT15"])
def test_genotype_with_hgnc_component(gene):
    b = BundleBuilder("p", "1970-01-01", "male")
    b.genotype(gene, "*1/*3A", WHEN)
    rec = read_bundle(b.bundle(), KB)
    assert len(rec.genotypes) == 1
    g = rec.genotypes[0]
    assert (g.gene, g.diplotype, g.phenotype, g.when) == (gene, "*1/*3A", None, DAY)


@pytest.mark.parametrize(
    ("gene_cc", "gene"),
    [
        ({"coding": [{"system": HGNC, "code": "HGNC:12014"}]}, "TPMT"),
        ({"coding": [{"system": HGNC, "code": "HGNC:23063", "display": "NUDT15"}]}, "NUDT15"),
        ({"coding": [{"code": "NUDT15"}]}, "NUDT15"),
        ({"text": "TPMT"}, "TPMT"),
        ({"text": "Gene: NUDT15"}, "NUDT15"),
    ],
)
def test_gene_by_hgnc_code_or_symbol(gene_cc, gene):
    rec = read(genotype_obs(value={"text": "*1/*3A"}, gene=gene_cc))
    assert [(g.gene, g.diplotype) for g in rec.genotypes] == [(gene, "*1/*3A")]


@pytest.mark.parametrize("code", KB.pgx_codes.genotype_loinc)
def test_each_genotype_loinc_is_read(code):
    rec = read(genotype_obs(code, value={"text": "*1/*2"}, gene={"text": "TPMT"}))
    assert [(g.gene, g.diplotype) for g in rec.genotypes] == [("TPMT", "*1/*2")]


@pytest.mark.parametrize(
    "value",
    [
        {"valueCodeableConcept": {"text": "*3A/*3C"}},
        {"valueCodeableConcept": {"coding": [{"system": "urn:pharmvar", "code": "x", "display": "*3A/*3C"}]}},
        {"valueCodeableConcept": {"coding": [{"system": "urn:pharmvar", "code": "*3A/*3C"}]}},
        {"valueString": "*3A/*3C"},
        {"valueString": " *3A/*3C "},
    ],
)
def test_diplotype_value_shapes(value):
    rec = read(genotype_obs(gene={"text": "TPMT"}, **value))
    assert [g.diplotype for g in rec.genotypes] == ["*3A/*3C"]


@pytest.mark.parametrize("code", ["41048-0", "36922-3", "80738-8"])
def test_tpmt_specific_genotype_codes_need_no_gene_component(code):
    rec = read(genotype_obs(code, value={"text": "*1/*1"}))
    assert [(g.gene, g.diplotype) for g in rec.genotypes] == [("TPMT", "*1/*1")]


def test_gene_named_in_the_code_text():
    res = genotype_obs(value={"text": "*1/*3"})
    res["code"]["text"] = "NUDT15 gene targeted mutation analysis"
    assert [g.gene for g in read(res).genotypes] == ["NUDT15"]


@pytest.mark.parametrize("code", KB.pgx_codes.phenotype_loinc)
def test_phenotype_text(code):
    b = BundleBuilder("p")
    b.phenotype("NUDT15", "Intermediate metabolizer", WHEN)
    data = b.bundle()
    data["entry"][1]["resource"]["code"]["coding"][0]["code"] = code
    rec = read_bundle(data, KB)
    assert [(g.gene, g.diplotype, g.phenotype) for g in rec.genotypes] == [("NUDT15", None, "Intermediate metabolizer")]


def test_tpmt_phenotype_code_needs_no_gene_component():
    rec = read(genotype_obs("79713-4", value={"text": "Poor metabolizer"}))
    assert [(g.gene, g.phenotype) for g in rec.genotypes] == [("TPMT", "Poor metabolizer")]


def test_genotype_without_gene_is_a_reader_error():
    err = reader_error(genotype_obs(value={"text": "*1/*3A"}, rid="g9"))
    assert err.field == "component"
    assert "(Observation/g9)" in err.where


def test_genotype_without_value_is_rejected():
    rec = read(genotype_obs(gene={"text": "TPMT"}))
    assert rec.genotypes == ()
    assert [(r.analyte, r.reason) for r in rec.rejected] == [("TPMT-genotype", "missing-value")]


def test_genotype_of_an_unrelated_gene_is_ignored():
    # A PGx panel report carries 84413-4 genotypes for many genes. _gene_of finds neither TPMT nor
    # NUDT15, and _genotype raises "genotype result does not say which gene" although the
    # component names the gene (HGNC:2621 CYP2C19). Correct: skip genes the engine does not use.
    cyp = genotype_obs(
        value={"text": "*1/*2"}, gene={"coding": [{"system": HGNC, "code": "HGNC:2621", "display": "CYP2C19"}]}
    )
    tpmt = genotype_obs(value={"text": "*1/*1"}, gene={"text": "TPMT"}, rid="g2")
    rec, how = attempt(lambda: read(cyp, tpmt))
    assert rec is not None, how
    assert [g.gene for g in rec.genotypes] == ["TPMT"]


@pytest.mark.parametrize("code", KB.pgx_codes.tpmt_activity_loinc)
def test_each_tpmt_activity_code(code):
    rec = read(observation(concept(code), rid="t1", valueQuantity={"value": 35.5, "unit": "nmol/h/g Hb"}))
    assert rec.tpmt_activity == (d.ActivityResult(35.5, "nmol/h/g Hb", DAY, "t1"),)
    assert rec.labs == ()


def test_tpmt_activity_unit_from_code_and_missing_value():
    rec = read(observation(concept("21563-2"), valueQuantity={"value": 12, "code": "U/mL"}))
    assert [(a.value, a.unit) for a in rec.tpmt_activity] == [(12, "U/mL")]
    rec = read(observation(concept("21563-2")))
    assert [(r.analyte, r.reason) for r in rec.rejected] == [("tpmt-activity", "missing-value")]


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        (
            {"text": "Red cell TPMT activity (HPLC)", "coding": [{"code": "x", "display": "ignored"}]},
            "Red cell TPMT activity (HPLC)",
        ),
        ({"coding": [{"system": "urn:lab", "code": "TPMT-A", "display": "St Thomas' assay"}]}, "St Thomas' assay"),
        ({"coding": [{"system": "urn:lab", "code": "TPMT-A"}, {"code": "B", "display": "second"}]}, "second"),
        ({"coding": [{"system": "urn:lab", "code": "TPMT-A"}]}, "TPMT-A"),
        (None, ""),
    ],
)
def test_tpmt_activity_method_is_read(method, expected):
    extra = {"method": method} if method is not None else {}
    res = observation(concept("21563-2"), rid="t1", valueQuantity={"value": 35.5, "unit": "nmol/h/g Hb"}, **extra)
    assert read(res).tpmt_activity == (d.ActivityResult(35.5, "nmol/h/g Hb", DAY, "t1", expected),)


@pytest.mark.parametrize(
    ("method", "field"),
    [
        ("HPLC", "method"),
        ({"text": 5}, "method.text"),
        ({"coding": {"code": "x"}}, "method.coding"),
        ({"coding": [{"display": ["a"]}]}, "method.coding[0].display"),
    ],
)
def test_malformed_tpmt_activity_method_is_a_reader_error(method, field):
    res = observation(concept("21563-2"), rid="t1", valueQuantity={"value": 35.5, "unit": "nmol/h/g Hb"}, method=method)
    err = reader_error(res)
    assert err.field == field
    assert "(Observation/t1)" in err.where


# ---------------------------------------------------------------- pregnancy / breastfeeding status
def status_obs(code: str, rid: str = "s1", **value: Any) -> Resource:
    return observation(concept(code), rid=rid, **value)


def answer(code: str, display: str = "", system: str = LOINC) -> Resource:
    return {"valueCodeableConcept": concept(code, system=system, display=display or None)}


@pytest.mark.parametrize(
    ("code", "value", "expected"),
    [
        ("82810-3", answer("LA15173-0", "Pregnant"), True),
        ("82810-3", answer("77386006", system=SNOMED), True),
        ("82810-3", answer("LA26683-5", "Not pregnant"), False),
        ("82810-3", answer("60001007", system=SNOMED), False),
        ("82810-3", {"valueCodeableConcept": {"text": "Not pregnant"}}, False),
        ("82810-3", {"valueCodeableConcept": {"text": "Pregnant"}}, True),
        ("82810-3", {"valueCodeableConcept": {"text": "Unknown"}}, None),
        ("82810-3", {"valueBoolean": True}, True),
        ("82810-3", {"valueBoolean": False}, False),
        ("82810-3", {"valueString": "not pregnant"}, False),
        ("11449-6", answer("LA15173-0"), True),
    ],
)
def test_pregnancy_status(code, value, expected):
    rec = read(status_obs(code, **value))
    assert rec.statuses == (d.StatusObservation("pregnancy", expected, DAY, "s1"),)
    assert rec.labs == () and rec.rejected == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (answer("LA33-6", "Yes"), True),
        (answer("413712001", system=SNOMED), True),
        (answer("169741004", system=SNOMED), None),  # "Breast fed" is the infant's finding: never read
        (answer("LA32-8", "No"), False),
        ({"valueCodeableConcept": {"text": "Breastfeeding"}}, True),
        ({"valueBoolean": False}, False),
    ],
)
def test_breastfeeding_status(value, expected):
    rec = read(status_obs("63895-7", **value))
    assert [(s.kind, s.value) for s in rec.statuses] == [("breastfeeding", expected)]


def test_breastfeeding_snomed_question_code_is_a_status_not_a_symptom():
    """SNOMED 413712001 "Breastfeeding (mother)" is an observable entity IGs send as the code."""
    res = observation(concept("413712001", system=SNOMED), rid="s1", valueBoolean=True)
    res["category"] = [concept("survey", system="http://terminology.hl7.org/CodeSystem/observation-category")]
    rec = read(res)
    assert [(s.kind, s.value) for s in rec.statuses] == [("breastfeeding", True)] and rec.symptoms == ()


@pytest.mark.parametrize(
    ("interpretation", "expected"),
    [("POS", True), ("DET", True), ("NEG", False), ("ND", False), (None, None), ("H", None)],
)
def test_quantitative_vzv_igg_is_read_only_by_its_interpretation(interpretation, expected):
    """5403-1 is VZV IgG in units/volume: the number is never compared with a cut-off."""
    res = observation(concept("5403-1"), rid="v1", valueQuantity={"value": 50, "unit": "[IU]/mL"})
    if interpretation:
        res["interpretation"] = [
            concept(interpretation, system="http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation")
        ]
    rec = read(res)
    assert [k for k, _ in rec.screening_done] == ["vzv_igg"]
    assert [(k, p) for k, _, p in rec.screening_results] == ([("vzv_igg", expected)] if expected is not None else [])


def test_vzv_igg_presence_code_is_the_valid_loinc():
    """19162-6 failed the LOINC check digit; 19162-7 is VZV IgG Ab [Presence]."""
    rec = read(observation(concept("19162-7"), rid="v2", valueCodeableConcept=concept("LA6577-6", display="Negative")))
    assert rec.screening_results[0][0] == "vzv_igg" and rec.screening_results[0][2] is False
    assert (
        read(observation(concept("19162-6"), rid="v3", valueCodeableConcept={"text": "Negative"})).screening_done == ()
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Wants to become pregnant", True), ("Planning pregnancy next year", True), ("No plans", False), ("?", None)],
)
def test_pregnancy_intention(text, expected):
    rec = read(status_obs("86645-9", valueCodeableConcept={"text": text}))
    assert [(s.kind, s.value) for s in rec.statuses] == [("pregnancy-intention", expected)]


def test_status_value_boolean_of_wrong_type_is_a_reader_error():
    # _status only looks at valueBoolean when it is a bool; otherwise it falls through to the
    # CodeableConcept path and records value=None (pregnancy status unknown). The survey path
    # (_symptom) raises ReaderError for the same defect; status should too.
    got = {
        repr(v): attempt(partial(lambda v: read(status_obs("82810-3", valueBoolean=v)), v))[1]
        for v in (1, "true", "yes")
    }
    assert all(how.startswith("ReaderError") and "'valueBoolean'" in how for how in got.values()), got


# ---------------------------------------------------------------- screening
SCREENING_CASES = [(key, code) for key, codes in KB.screening_codes.items() for code in codes]


@pytest.mark.parametrize(("key", "code"), SCREENING_CASES)
def test_each_screening_code(key, code):
    rec = read(observation(concept(code), valueCodeableConcept={"text": "Negative"}))
    assert rec.screening_done == ((key, DAY),)
    assert rec.labs == ()


@pytest.mark.parametrize(
    ("value", "positive"),
    [
        ({"valueCodeableConcept": concept(c, system=SNOMED if c.isdigit() else LOINC)}, True)
        for c in KB.status_codes.positive_answers
    ]
    + [
        ({"valueCodeableConcept": concept(c, system=SNOMED if c.isdigit() else LOINC)}, False)
        for c in KB.status_codes.negative_answers
    ]
    + [
        ({"valueBoolean": True}, True),
        ({"valueBoolean": False}, False),
        ({"valueCodeableConcept": {"text": "Negative"}}, False),
        ({"valueCodeableConcept": {"text": "NOT DETECTED"}}, False),
        ({"valueCodeableConcept": {"text": "Non-reactive"}}, False),
        ({"valueString": "Reactive"}, True),
        ({"valueString": "positive"}, True),
        ({"valueString": "see comment"}, None),
        ({}, None),
    ],
)
def test_screening_result_polarity(value, positive):
    rec = read(observation(concept("5196-1"), **value))
    assert rec.screening_done == (("hbsag", DAY),)
    assert rec.screening_results == ((("hbsag", DAY, positive),) if positive is not None else ())


# ---------------------------------------------------------------- survey symptoms
def survey(code: Resource, rid: str = "q1", **value: Any) -> Resource:
    cat = [{"coding": [{"system": OBS_CATEGORY, "code": "survey"}]}]
    return observation(code, rid=rid, category=cat, **value)


SYMPTOM_CASES = [(key, code) for key, s in KB.symptoms.items.items() for code in s.snomed]


def test_symptom_snomed_codes_are_unambiguous():
    codes = [code for _, code in SYMPTOM_CASES]
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize(("key", "code"), SYMPTOM_CASES)
def test_each_symptom_snomed_code_with_value_true_counts(key, code):
    rec = read(survey(concept(code, system=SNOMED), valueBoolean=True))
    assert [(s.key, s.when, s.source_id) for s in rec.symptoms] == [(key, DAY, "q1")]


@pytest.mark.parametrize(("key", "text"), [(k, t) for k, s in KB.symptoms.items.items() for t in s.text[:1]])
def test_symptom_by_text(key, text):
    rec = read(survey({"text": text.capitalize()}, valueBoolean=True))
    assert [s.key for s in rec.symptoms] == [key]


def test_symptom_value_false_is_ignored():
    rec = read(survey(concept("386661006", system=SNOMED, display="Fever"), valueBoolean=False))
    assert rec.symptoms == ()


def test_unrecognised_symptom_is_kept_without_a_key():
    rec = read(survey(concept("1234567", system=SNOMED, display="Odd feeling"), valueBoolean=True))
    assert [(s.key, s.text) for s in rec.symptoms] == [(None, "Odd feeling")]


def test_symptom_code_outside_a_survey_is_not_a_symptom():
    res = observation(concept("386661006", system=SNOMED), valueBoolean=True)
    rec = read(res)
    assert rec.symptoms == () and rec.labs == ()


@pytest.mark.parametrize("value", [1, "yes", {"text": "yes"}])
def test_symptom_value_boolean_of_wrong_type_is_a_reader_error(value):
    err = reader_error(survey(concept("386661006", system=SNOMED), rid="q9", valueBoolean=value))
    assert err.field == "valueBoolean"
    assert "(Observation/q9)" in err.where


def test_survey_answer_no_is_not_a_symptom():
    # _symptom treats everything except valueBoolean false as "present", so a questionnaire that
    # answers "Fever? -> No" with a coded answer raises a critical symptom-fever finding.
    answers: list[dict[str, Any]] = [
        {"valueCodeableConcept": {"coding": [{"system": LOINC, "code": "LA32-8", "display": "No"}]}},
        {"valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "373067005", "display": "No"}]}},
        {"valueString": "no"},
    ]
    fever = concept("386661006", system=SNOMED, display="Fever")
    got = [read(survey(fever, **value)).symptoms for value in answers]
    assert got == [(), (), ()], got


def test_text_matching_does_not_match_inside_other_words():
    # _text_match is `needle in text`: "itch" matches "twitching" (warning symptom-pruritus),
    # "fever" matches "hay fever" (critical symptom-fever), "septic" matches "aseptic necrosis"
    # (a steroid complication; critical contraindication-active-infection), "devic" matches
    # "device" (NMOSD indication).
    cases = [
        (survey({"text": "Muscle twitching"}, valueBoolean=True), "pruritus"),
        (survey({"text": "Hay fever"}, valueBoolean=True), "fever"),
        (condition({"text": "Aseptic necrosis of femoral head"}), "active-infection"),
        (condition({"text": "Implantable cardiac device in situ"}), "nmosd"),
    ]
    wrong = []
    for resource, key in cases:
        rec = read(resource)
        if key in [s.key for s in rec.symptoms] + [c.key for c in rec.conditions]:
            wrong.append((resource["code"]["text"], key))
    assert not wrong, wrong


# ---------------------------------------------------------------- medicines
def med_statement(
    cc: Resource | None = None, status: str = "active", rid: str = "ms1", dosage: Any = None, **extra: Any
) -> Resource:
    res: Resource = {"resourceType": "MedicationStatement", "id": rid, "status": status}
    if cc is not None:
        res["medicationCodeableConcept"] = cc
    if dosage is not None:
        res["dosage"] = dosage
    res.update(extra)
    return res


def med_request(
    cc: Resource | None = None, status: str = "active", rid: str = "mr1", dosage: Any = None, **extra: Any
) -> Resource:
    res: Resource = {"resourceType": "MedicationRequest", "id": rid, "status": status, "intent": "order"}
    if cc is not None:
        res["medicationCodeableConcept"] = cc
    if dosage is not None:
        res["dosageInstruction"] = dosage
    res.update(extra)
    return res


def aza(text: str = "Azathioprine 50 mg tablets") -> Resource:
    return concept("1256", system=RXNORM, text=text)


def dose(value: Any, unit: str = "mg", freq: Any = None, period: Any = None, period_unit: Any = None, text=None):
    out: Resource = {"doseAndRate": [{"doseQuantity": {"value": value, "unit": unit}}]}
    repeat = {k: v for k, v in (("frequency", freq), ("period", period), ("periodUnit", period_unit)) if v is not None}
    if repeat:
        out["timing"] = {"repeat": repeat}
    if text is not None:
        out["text"] = text
    return out


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("active", "active"),
        ("completed", "stopped"),
        ("stopped", "stopped"),
        ("on-hold", "on-hold"),
        ("suspended", "on-hold"),
        ("intended", "intended"),
        ("unknown", "unknown"),
    ],
)
def test_medication_statement_statuses(status, expected):
    rec = read(med_statement(aza(), status=status))
    assert [(m.drug, m.status, m.kind) for m in rec.medications] == [("azathioprine", expected, "statement")]


@pytest.mark.parametrize("status", ["entered-in-error", "not-taken"])
def test_medication_statement_statuses_that_are_ignored(status):
    assert read(med_statement(aza(), status=status)).medications == ()


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("draft", "draft"),
        ("active", "active"),
        ("completed", "stopped"),
        ("stopped", "stopped"),
        ("on-hold", "on-hold"),
        ("suspended", "on-hold"),
        ("unknown", "unknown"),
    ],
)
def test_medication_request_statuses(status, expected):
    rec = read(med_request(aza(), status=status, authoredOn="2025-01-02"))
    assert [(m.drug, m.status, m.kind, m.start) for m in rec.medications] == [
        ("azathioprine", expected, "request", date(2025, 1, 2))
    ]


@pytest.mark.parametrize("status", ["cancelled", "entered-in-error"])
def test_medication_request_statuses_that_are_ignored(status):
    assert read(med_request(aza(), status=status)).medications == ()


@pytest.mark.parametrize(
    ("make", "status"),
    [(med_statement, "taking"), (med_statement, "draft"), (med_request, "planned"), (med_request, "intended")],
)
def test_invalid_medication_status_is_a_reader_error(make, status):
    err = reader_error(make(aza(), status=status, rid="m9"))
    assert err.field == "status"
    assert "/m9)" in err.where


def test_statement_period_and_date_time():
    rec = read(
        med_statement(aza(), rid="a", effectivePeriod={"start": "2025-01-06", "end": "2025-06"}),
        med_statement(aza(), rid="b", effectiveDateTime="2024"),
    )
    assert [(m.start, m.end) for m in rec.medications] == [
        (date(2025, 1, 6), date(2025, 6, 1)),
        (date(2024, 1, 1), None),
    ]


def test_statement_period_ending_before_it_starts_is_a_reader_error():
    err = reader_error(med_statement(aza(), effectivePeriod={"start": "2025-02-01", "end": "2025-01-01"}))
    assert err.field == "effectivePeriod"


def test_request_validity_end_is_the_end_only_when_stopped():
    vp = {"validityPeriod": {"start": "2025-01-01", "end": "2025-03-01"}}
    stopped = read(med_request(aza(), status="stopped", dispenseRequest=vp)).medications[0]
    active = read(med_request(aza(), status="active", dispenseRequest=vp)).medications[0]
    assert (stopped.end, active.end) == (date(2025, 3, 1), None)


# ---------------------------------------------------------------- treatment on hold
@pytest.mark.parametrize("status", ["on-hold", "suspended"])
def test_statement_on_hold_keeps_reason_and_date_asserted(status):
    res = med_statement(
        aza(),
        status=status,
        effectivePeriod={"start": "2025-01-06"},
        dateAsserted="2025-03-04T09:15:00Z",
        statusReason=[{"text": "Neutrophils 1.2"}],
        dosage=[dose(50, freq=2, period=1, period_unit="d")],
    )
    (m,) = read(res).medications
    assert (m.drug, m.status, m.reason, m.status_date, m.start, m.end) == (
        "azathioprine",
        "on-hold",
        "Neutrophils 1.2",
        DAY,
        date(2025, 1, 6),
        None,
    )
    assert m.daily_dose_mg == 100  # the dose that is withheld, still known for the restart


@pytest.mark.parametrize(
    ("reasons", "expected"),
    [
        ([{"text": "Neutropenia", "coding": [{"system": SNOMED, "code": "165517008", "display": "x"}]}], "Neutropenia"),
        ([concept("165517008", system=SNOMED, display="Neutropenia")], "Neutropenia"),
        ([concept("165517008", system=SNOMED)], "165517008"),
        ([{"text": "Infection"}, {"text": "Surgery"}, {"text": "Infection"}], "Infection; Surgery"),
        ([{}], ""),
        ([], ""),
    ],
)
def test_statement_status_reason_text_then_display_then_code(reasons, expected):
    m = read(med_statement(aza(), status="on-hold", statusReason=reasons)).medications[0]
    assert m.reason == expected


@pytest.mark.parametrize(
    ("status", "status_date"),
    [("on-hold", DAY), ("completed", DAY), ("stopped", DAY), ("active", None), ("intended", None)],
)
def test_statement_status_date_only_for_hold_and_stop(status, status_date):
    m = read(med_statement(aza(), status=status, dateAsserted=WHEN)).medications[0]
    assert m.status_date == status_date


def test_statement_on_hold_without_date_asserted_has_no_status_date():
    m = read(med_statement(aza(), status="on-hold")).medications[0]
    assert (m.status, m.status_date, m.reason) == ("on-hold", None, "")


@pytest.mark.parametrize("status", ["on-hold", "suspended"])
@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ({"text": "Withheld: ALT 3x ULN"}, "Withheld: ALT 3x ULN"),
        (concept("165517008", system=SNOMED, display="Neutropenia"), "Neutropenia"),
        (concept("165517008", system=SNOMED), "165517008"),
        (None, ""),
    ],
)
def test_request_on_hold_keeps_reason_without_status_date(status, reason, expected):
    extra = {"statusReason": reason} if reason is not None else {}
    vp = {"validityPeriod": {"start": "2025-01-01", "end": "2025-03-01"}}
    res = med_request(aza(), status=status, authoredOn="2025-01-02", dispenseRequest=vp, **extra)
    (m,) = read(res).medications
    assert (m.status, m.reason, m.status_date, m.start, m.end) == ("on-hold", expected, None, date(2025, 1, 2), None)


def test_stopped_is_still_stopped_and_keeps_its_reason():
    ms = med_statement(aza(), status="stopped", statusReason=[{"text": "Rash"}], dateAsserted=WHEN)
    mr = med_request(aza(), status="stopped", rid="mr1", statusReason={"text": "Rash"})
    meds = read(ms, mr).medications
    assert [(m.status, m.reason, m.status_date) for m in meds] == [("stopped", "Rash", DAY), ("stopped", "Rash", None)]


@pytest.mark.parametrize(
    ("make", "extra", "field"),
    [
        (med_statement, {"statusReason": {"text": "x"}}, "statusReason"),
        (med_statement, {"statusReason": ["x"]}, "statusReason[0]"),
        (med_statement, {"statusReason": [{"text": 1}]}, "statusReason[0].text"),
        (med_statement, {"statusReason": [{}, {"coding": [{"code": 7}]}]}, "statusReason[1].coding[0].code"),
        (med_statement, {"dateAsserted": "last week"}, "dateAsserted"),
        (med_statement, {"dateAsserted": 20250304}, "dateAsserted"),
        (med_request, {"statusReason": [{"text": "x"}]}, "statusReason"),
        (med_request, {"statusReason": {"coding": "x"}}, "statusReason.coding"),
    ],
)
def test_malformed_status_reason_or_date_asserted_is_a_reader_error(make, extra, field):
    err = reader_error(make(aza(), status="on-hold", rid="m9", **extra))
    assert err.field == field
    assert "/m9)" in err.where


def test_on_hold_and_reason_reach_the_import_item():
    ms = med_statement(
        aza(),
        status="on-hold",
        dateAsserted=WHEN,
        statusReason=[{"text": "Neutropenia"}],
        subject={"reference": "Patient/p"},
    )
    mr = med_request(aza(), status="suspended", statusReason={"text": "Infection"}, subject={"reference": "Patient/p"})
    parsed = parse_bundle_text(json.dumps(bundle(ms, mr)), KB)
    assert parsed.rejects == []
    meds = [
        (i.kind, i.payload.status, i.payload.reason, i.payload.status_date)
        for i in parsed.items
        if i.kind == "medication"
    ]
    assert meds == [("medication", "on-hold", "Neutropenia", DAY), ("medication", "on-hold", "Infection", None)]


RXNORM_CASES = [(key, code) for key, drug in KB.drugs.items() for code in drug.rxnorm]
NAME_CASES = [(key, name) for key, drug in KB.drugs.items() for name in drug.names]


def test_rxnorm_codes_and_names_are_unambiguous():
    assert len({c for _, c in RXNORM_CASES}) == len(RXNORM_CASES)
    assert len({n.lower() for _, n in NAME_CASES}) == len(NAME_CASES)


@pytest.mark.parametrize(("drug", "code"), RXNORM_CASES)
def test_each_rxnorm_code_maps_to_its_drug(drug, code):
    rec = read(med_statement(concept(code, system=RXNORM, text="Medicine as supplied")))
    m = rec.medications[0]
    assert (m.drug, m.rxnorm, m.name) == (drug, code, "Medicine as supplied")


@pytest.mark.parametrize(("drug", "name"), NAME_CASES)
def test_each_generic_and_brand_name_maps_to_its_drug(drug, name):
    rec = read(med_statement({"text": f"{name.title()} 10 mg tablets"}))
    assert rec.medications[0].drug == drug


def test_coding_display_is_matched_when_there_is_no_text():
    cc = {"coding": [{"system": "https://dmd.nhs.uk", "code": "3234211000001104", "display": "Imuran 25mg tablets"}]}
    m = read(med_statement(cc)).medications[0]
    assert (m.drug, m.name, m.rxnorm) == ("azathioprine", "Imuran 25mg tablets", None)


def test_unknown_rxnorm_falls_back_to_the_name_and_keeps_the_code():
    m = read(med_statement(concept("999999", system=RXNORM, text="Allopurinol 100mg"))).medications[0]
    assert (m.drug, m.rxnorm) == ("allopurinol", "999999")


def test_known_rxnorm_wins_over_the_text():
    m = read(med_statement(concept("519", system=RXNORM, text="Azathioprine"))).medications[0]
    assert m.drug == "allopurinol"


@pytest.mark.parametrize(
    "text", ["Methylprednisolone 4 mg", "Hydroxychloroquine 200 mg", "Antiwarfarinase", "Paracetamol"]
)
def test_names_match_whole_words_only(text):
    m = read(med_statement({"text": text})).medications[0]
    assert (m.drug, m.name) == (None, text)


def test_unnamed_medicine_gets_a_placeholder_name():
    m = read(med_statement(concept("12345", system=RXNORM))).medications[0]
    assert (m.drug, m.name) == (None, "12345")


def test_medication_reference_to_a_medication_in_the_bundle():
    med = {"resourceType": "Medication", "id": "m1", "code": concept("519", system=RXNORM, text="Zyloric 300mg")}
    rec = read(med, med_statement(medicationReference={"reference": "Medication/m1"}))
    m = rec.medications[0]
    assert (m.drug, m.name, m.rxnorm) == ("allopurinol", "Zyloric 300mg", "519")


def test_medication_reference_resolves_regardless_of_entry_order():
    med = {"resourceType": "Medication", "id": "m1", "code": {"text": "Imuran"}}
    rec = read(med_request(medicationReference={"reference": "Medication/m1"}), med)
    assert rec.medications[0].drug == "azathioprine"


def test_unresolvable_reference_with_a_display_uses_the_display():
    rec = read(med_statement(medicationReference={"reference": "Medication/elsewhere", "display": "Allopurinol"}))
    assert [(m.drug, m.name) for m in rec.medications] == [("allopurinol", "Allopurinol")]


def test_medication_reference_to_a_missing_medication_is_a_reader_error():
    err = reader_error(med_statement(rid="ms7", medicationReference={"reference": "Medication/nope"}))
    assert err.field == "medicationReference.reference"
    assert "(MedicationStatement/ms7)" in err.where
    assert "Medication/nope" in err.problem


def test_medication_missing_entirely_is_a_reader_error():
    assert reader_error(med_request()).field == "medication[x]"


def test_medication_reference_by_full_url_or_contained():
    # FHIR resolves a reference inside a Bundle against entry.fullUrl (transaction bundles use
    # urn:uuid:...; server exports use absolute URLs), and "#id" against the resource's
    # `contained` list. The reader indexes only "Medication/<id>", so all three are
    # ReaderErrors "points to '...', which is not in the bundle".
    med = {"resourceType": "Medication", "id": "m1", "code": concept("519", system=RXNORM)}
    urls = ["urn:uuid:7f0c3e0e-0000-4000-8000-000000000001", "https://ehr.example/fhir/Medication/m1"]
    bundles = []
    for url in urls:
        data = bundle(med_statement(medicationReference={"reference": url}))
        data["entry"].append({"fullUrl": url, "resource": med})
        bundles.append(data)
    bundles.append(bundle(med_statement(medicationReference={"reference": "#m1"}, contained=[med])))
    got = []
    for data in bundles:
        rec, how = attempt(partial(read_bundle, data, KB))
        got.append(rec.medications[0].drug if rec else how)
    assert got == ["allopurinol"] * 3, got


@pytest.mark.parametrize(
    ("dosage", "mg_per_day"),
    [
        ([dose(50, freq=2, period=1, period_unit="d")], 100),  # 50 mg twice daily
        ([dose(25, freq=1, period=12, period_unit="h")], 50),  # 25 mg every 12 h
        ([dose(150, freq=1, period=1, period_unit="d")], 150),
        ([dose(50, freq=3, period=1, period_unit="d")], 150),
        ([dose(15, freq=1, period=1, period_unit="wk")], 2.143),
        ([dose(100, period=2, period_unit="d")], 50),  # every other day
        ([dose(75, period_unit="d")], 75),
        ([dose(0.1, unit="g", freq=1, period=1, period_unit="d")], 100),
        ([dose(500, unit="ug", freq=1, period=1, period_unit="d")], 0.5),
        ([dose(50, freq=1, period=1, period_unit="d"), dose(100, freq=1, period=1, period_unit="d")], 150),
        ([dose(50, text="50 mg twice daily")], 100),
        ([dose(25, text="25mg BD")], 50),
        ([dose(25, text="25 mg tds")], 75),
        ([dose(100, text="Take 100 mg once daily")], 100),
        ([dose(100, text="100 mg at night")], 100),
    ],
)
def test_daily_dose(dosage, mg_per_day):
    for res in (med_statement(aza(), dosage=dosage), med_request(aza(), dosage=dosage)):
        assert read(res).medications[0].daily_dose_mg == pytest.approx(mg_per_day, abs=1e-3)


@pytest.mark.parametrize(
    "dosage",
    [
        [dose(50)],  # no timing, no text: never assumed once daily
        [dose(50, text="as directed")],
        [dose(50, text="50 mg")],
        [dose(2, unit="tablet", freq=1, period=1, period_unit="d")],
        [{"text": "50 mg twice daily"}],  # no dose quantity
        [dose(50, freq=1, period=1, period_unit="d"), dose(50)],  # one part unknown: total unknown
        [],
        None,
    ],
)
def test_daily_dose_unknown_is_none(dosage):
    assert read(med_statement(aza(), dosage=dosage)).medications[0].daily_dose_mg is None


@pytest.mark.parametrize(
    ("dosage", "field"),
    [
        ([dose(50, freq=1, period=1, period_unit="fortnight")], "dosage[0].timing.repeat.periodUnit"),
        ([dose("fifty", freq=1, period=1, period_unit="d")], "value"),
        ([dose(50, freq="twice", period=1, period_unit="d")], "frequency"),
        (["50 mg daily"], "dosage[0]"),
        ({"text": "50 mg"}, "dosage"),
    ],
)
def test_malformed_dosage_is_a_reader_error(dosage, field):
    err = reader_error(med_statement(aza(), rid="ms3", dosage=dosage))
    assert err.field == field
    assert "(MedicationStatement/ms3)" in err.where


def test_dose_text_with_a_weekly_or_alternate_day_rhythm_is_not_read_as_daily():
    # _per_day_from_text searches for "twice"/"three times"/"at night" anywhere, ignoring
    # "weekly"/"a week"/"every other day": 50 mg twice weekly becomes 100 mg/day (7x).
    # Correct: the right rate (100/7 mg/day) or None (unknown), never the daily reading.
    wrong = {"50 mg twice weekly": 100, "50 mg three times a week": 150, "50 mg every other day at night": 50}
    got = {t: read(med_statement(aza(), dosage=[dose(50, text=t)])).medications[0].daily_dose_mg for t in wrong}
    assert all(got[t] != wrong[t] for t in wrong), got


# ---------------------------------------------------------------- vaccines
CVX_CASES = [
    (key, live, code)
    for live, group in ((True, KB.vaccines.live), (False, KB.vaccines.inactivated))
    for key, v in group.items()
    for code in v.cvx
]


UNCERTAIN_CVX = [(key, code) for key, v in KB.vaccines.uncertain.items() for code in v.cvx]


def test_cvx_codes_are_unambiguous():
    codes = [c for _, _, c in CVX_CASES] + [c for _, c in UNCERTAIN_CVX]
    assert len(set(codes)) == len(codes)


def immunization(cc: Resource, status: str = "completed", rid: str = "i1", **extra: Any) -> Resource:
    res: Resource = {"resourceType": "Immunization", "id": rid, "status": status, "vaccineCode": cc}
    res.setdefault("occurrenceDateTime", WHEN)
    res.update(extra)
    return res


@pytest.mark.parametrize(("key", "live", "code"), CVX_CASES)
def test_each_cvx_code_given(key, live, code):
    rec = read(immunization(concept(code, system=CVX, text="Vaccination")))
    assert rec.vaccinations == (d.Vaccination(key, live, "Vaccination", DAY, "given", "i1"),)


@pytest.mark.parametrize(("key", "live", "code"), CVX_CASES)
def test_each_cvx_code_as_a_draft_order(key, live, code):
    rec = read(med_request(concept(code, system=CVX, text="Vaccine"), status="draft", authoredOn=WHEN))
    assert rec.vaccinations == (d.Vaccination(key, live, "Vaccine", DAY, "ordered", "mr1"),)
    assert rec.medications == ()


@pytest.mark.parametrize(
    ("text", "key", "live"),
    [
        ("Shingrix", "zoster-recombinant", False),
        ("Zostavax", "zoster-live", True),
        ("Yellow fever vaccine", "yellow-fever", True),
        ("BCG", "bcg", True),
        ("Pneumovax 23", "pneumococcal", False),
        ("Comirnaty", "covid-19", False),
    ],
)
def test_vaccine_by_name(text, key, live):
    rec = read(immunization({"text": text}))
    assert [(v.vaccine, v.live) for v in rec.vaccinations] == [(key, live)]


@pytest.mark.parametrize(("key", "code"), UNCERTAIN_CVX)
def test_each_uncertain_cvx_code_is_live_unknown(key, code):
    given = read(immunization(concept(code, system=CVX, text="Vaccination"))).vaccinations
    ordered = read(med_request(concept(code, system=CVX, text="Vaccine"), status="draft", authoredOn=WHEN))
    assert given == (d.Vaccination(key, False, "Vaccination", DAY, "given", "i1", live_unknown=True),)
    assert ordered.vaccinations == (d.Vaccination(key, False, "Vaccine", DAY, "ordered", "mr1", live_unknown=True),)
    assert ordered.medications == ()


@pytest.mark.parametrize(
    ("code", "key", "live", "live_unknown"),
    [
        ("187", "zoster-recombinant", False, False),  # Shingrix: inactivated
        ("121", "zoster-live", True, False),  # Zostavax: live
        ("188", "zoster-unspecified", False, True),  # formulation not stated: may be live
    ],
)
def test_zoster_cvx_codes(code, key, live, live_unknown):
    given = read(immunization(concept(code, system=CVX, text="Zoster vaccine"))).vaccinations
    ordered = read(med_request(concept(code, system=CVX, text="Zoster vaccine"), status="draft")).vaccinations
    assert [(v.vaccine, v.live, v.live_unknown, v.status) for v in (*given, *ordered)] == [
        (key, live, live_unknown, "given"),
        (key, live, live_unknown, "ordered"),
    ]


@pytest.mark.parametrize(
    ("text", "key", "live", "live_unknown"),
    [
        ("Zoster vaccine", "zoster-unspecified", False, True),
        ("Shingles vaccine", "zoster-unspecified", False, True),
        ("Zoster vaccine, unspecified formulation", "zoster-unspecified", False, True),
        # a specific live or recombinant name wins over the generic uncertain one it contains
        ("Zostavax", "zoster-live", True, False),
        ("Zoster vaccine live", "zoster-live", True, False),
        ("Zostavax (zoster vaccine live)", "zoster-live", True, False),
        ("Shingrix", "zoster-recombinant", False, False),
        ("Recombinant zoster vaccine", "zoster-recombinant", False, False),
        ("Shingrix (recombinant zoster vaccine)", "zoster-recombinant", False, False),
        ("Shingles vaccine (Shingrix)", "zoster-recombinant", False, False),
    ],
)
def test_zoster_vaccine_by_name(text, key, live, live_unknown):
    given = read(immunization({"text": text})).vaccinations
    ordered = read(med_request({"text": text}, status="draft")).vaccinations
    assert [(v.vaccine, v.live, v.live_unknown) for v in (*given, *ordered)] == [(key, live, live_unknown)] * 2


def test_unknown_vaccine_is_kept_unclassified():
    rec = read(immunization(concept("999", system=CVX, text="Rabies vaccine")))
    assert [(v.vaccine, v.live, v.name) for v in rec.vaccinations] == [(None, False, "Rabies vaccine")]


@pytest.mark.parametrize("status", ["not-done", "entered-in-error"])
def test_immunization_not_given_is_ignored(status):
    assert read(immunization(concept("03", system=CVX), status=status)).vaccinations == ()


@pytest.mark.parametrize(
    ("res", "field"),
    [
        (immunization(concept("03", system=CVX), status="given"), "status"),
        (
            {
                "resourceType": "Immunization",
                "id": "i1",
                "status": "completed",
                "vaccineCode": concept("03", system=CVX),
            },
            "occurrenceDateTime",
        ),
        (immunization(concept("03", system=CVX), occurrenceDateTime="last year"), "occurrenceDateTime"),
        (
            {"resourceType": "Immunization", "id": "i1", "status": "completed", "occurrenceDateTime": WHEN},
            "vaccineCode",
        ),
    ],
)
def test_malformed_immunization_is_a_reader_error(res, field):
    err = reader_error(res)
    assert err.field == field
    assert "(Immunization/i1)" in err.where


@pytest.mark.parametrize(
    ("status", "ordered"),
    [
        ("draft", True),
        ("active", True),
        ("on-hold", False),
        ("suspended", False),
        ("completed", False),
        ("stopped", False),
        ("cancelled", False),
    ],
)
def test_vaccine_order_status(status, ordered):
    rec = read(med_request(concept("03", system=CVX, text="MMR"), status=status, authoredOn=WHEN))
    assert [v.status for v in rec.vaccinations] == (["ordered"] if ordered else [])
    assert rec.medications == ()  # a vaccine order is never a medicine


def test_vaccine_order_by_name_without_cvx():
    rec = read(med_request({"text": "Varivax"}, status="draft"))
    assert [(v.vaccine, v.live, v.when) for v in rec.vaccinations] == [("varicella", True, None)]


def test_inactivated_influenza_vaccine_by_name_is_not_live():
    # _vaccine_of matches names by substring and searches live vaccines first; "fluenz" (the UK
    # live nasal vaccine) is a substring of "influenza", so a text-only "Influenza vaccine
    # (inactivated)" order is read as influenza-live and raises critical vaccine-live-ordered,
    # and a given flu jab raises vaccine-live-given.
    text = "Influenza vaccine (inactivated)"
    given = read(immunization({"text": text})).vaccinations
    ordered = read(med_request({"text": text}, status="draft")).vaccinations
    got = [(v.vaccine, v.live) for v in (*given, *ordered)]
    assert got == [("influenza", False)] * 2, got


# ---------------------------------------------------------------- conditions
def condition(
    cc: Resource, rid: str = "c1", clinical: str | None = None, verification: str | None = None, **extra: Any
):
    res: Resource = {"resourceType": "Condition", "id": rid, "code": cc}
    if clinical is not None:
        res["clinicalStatus"] = {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": clinical}]
        }
    if verification is not None:
        res["verificationStatus"] = {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": verification}]
        }
    res.update(extra)
    return res


CONDITION_SNOMED = [(k, c) for k, ind in KB.indications.items() for c in ind.snomed] + [
    (k, c) for k, rule in KB.conditions.items() for c in rule.snomed
]
CONDITION_TEXT = [(k, t) for k, ind in KB.indications.items() for t in ind.text] + [
    (k, t) for k, rule in KB.conditions.items() for t in rule.text
]


def test_condition_snomed_codes_are_unambiguous():
    assert len({c for _, c in CONDITION_SNOMED}) == len(CONDITION_SNOMED)


@pytest.mark.parametrize(("key", "code"), CONDITION_SNOMED)
def test_each_indication_and_condition_snomed_code(key, code):
    rec = read(condition(concept(code, system=SNOMED, text="Diagnosis"), onsetDateTime="2024-06"))
    assert rec.conditions == (d.Condition(key, "Diagnosis", True, date(2024, 6, 1), code, "c1"),)


@pytest.mark.parametrize(("key", "text"), CONDITION_TEXT)
def test_each_indication_and_condition_text(key, text):
    label = f"{text.title()} (confirmed)"
    expected = key
    # a text term may also contain an earlier rule's term ("hepatitis b" contains "hepatitis"):
    # the first rule in knowledge order wins, indications before conditions
    for k, t in CONDITION_TEXT:
        if t in label.lower():
            expected = k
            break
    assert [c.key for c in read(condition({"text": label})).conditions] == [expected]


@pytest.mark.parametrize(
    ("clinical", "active"),
    [
        (None, True),
        ("active", True),
        ("recurrence", True),
        ("relapse", True),
        ("inactive", False),
        ("remission", False),
        ("resolved", False),
    ],
)
def test_condition_clinical_status(clinical, active):
    rec = read(condition(concept("91637004", system=SNOMED), clinical=clinical))
    assert [c.active for c in rec.conditions] == [active]


@pytest.mark.parametrize(
    ("verification", "kept"),
    [
        ("confirmed", True),
        ("provisional", True),
        ("unconfirmed", True),
        ("differential", True),
        ("refuted", False),
        ("entered-in-error", False),
    ],
)
def test_condition_verification_status(verification, kept):
    rec = read(condition(concept("91637004", system=SNOMED), verification=verification))
    assert len(rec.conditions) == int(kept)


def test_unknown_condition_is_kept_without_a_key():
    rec = read(condition(concept("73211009", system=SNOMED, display="Diabetes mellitus")))
    assert [(c.key, c.text, c.code) for c in rec.conditions] == [(None, "Diabetes mellitus", "73211009")]


def test_malformed_condition_fields_are_reader_errors():
    assert reader_error(condition({"text": "MG"}, clinicalStatus="active")).field == "clinicalStatus"
    assert reader_error(condition({"text": "MG"}, onsetDateTime="spring")).field == "onsetDateTime"


# ---------------------------------------------------------------- allergies
def allergy(cc: Resource, clinical: str | None = None, verification: str | None = None) -> Resource:
    res: Resource = {"resourceType": "AllergyIntolerance", "id": "a1", "code": cc}
    if clinical:
        res["clinicalStatus"] = {"coding": [{"code": clinical}]}
    if verification:
        res["verificationStatus"] = {"coding": [{"code": verification}]}
    return res


@pytest.mark.parametrize(
    ("cc", "drug"),
    [
        ({"text": "Azathioprine"}, "azathioprine"),
        (concept("1256", system=RXNORM, text="Thiopurine allergy"), "azathioprine"),
        ({"text": "Imuran (rash)"}, "azathioprine"),
        ({"text": "6-mercaptopurine"}, "mercaptopurine"),
        ({"text": "Penicillin"}, None),
    ],
)
def test_allergy_drug(cc, drug):
    rec = read(allergy(cc))
    assert [(a.drug, a.source_id) for a in rec.allergies] == [(drug, "a1")]


@pytest.mark.parametrize(
    ("clinical", "verification", "kept"),
    [
        ("active", None, True),
        (None, "confirmed", True),
        ("inactive", None, False),
        ("resolved", None, False),
        (None, "refuted", False),
        (None, "entered-in-error", False),
    ],
)
def test_allergy_statuses(clinical, verification, kept):
    rec = read(allergy({"text": "Azathioprine"}, clinical, verification))
    assert len(rec.allergies) == int(kept)


# ---------------------------------------------------------------- a full builder bundle
def test_builder_bundle_round_trip():
    b = BundleBuilder("rt", "1980-05-01", "female", name="Ada Lovelace")
    b.condition("91637004", "Myasthenia gravis", "2024-01-01")
    b.weight(64, "2025-06-01")
    b.genotype("TPMT", "*1/*3A", "2024-12-01")
    b.phenotype("NUDT15", "Normal metabolizer", "2024-12-01")
    b.tpmt_activity(35, "nmol/h/g Hb", "2024-12-01")
    b.bloods("2025-06-01")
    b.metabolites(300, 2000, "2025-05-01", mmp_below_detection=True)
    b.screening("5196-1", "HBsAg", "2024-12-01")
    b.pregnant("2025-05-01")
    b.breastfeeding("2025-06-01")
    b.symptom("386661006", "Fever", "2025-06-02")
    b.symptom("271807003", "Rash", "2025-06-02", present=False)
    b.azathioprine("2025-01-06", 50, per_day=2)
    b.request("Mesalazine", "2025-06-01", 400, 3, status="active")
    b.vaccine_order("MMR", "03", "2025-06-10")
    b.immunization("Influenza", "88", "2024-10-01")
    b.allergy("Penicillin")
    rec = read_bundle(b.bundle(), KB)
    assert rec.name == "Ada Lovelace"
    assert {r.analyte for r in rec.labs} >= {"weight", "wbc", "neutrophils", "alt", "creatinine", "egfr", "tgn", "mmp"}
    assert [g.gene for g in rec.genotypes] == ["TPMT", "NUDT15"]
    assert len(rec.tpmt_activity) == 1
    assert [s.kind for s in rec.statuses] == ["pregnancy", "breastfeeding"]
    assert [s.key for s in rec.symptoms] == ["fever"]
    assert [(m.drug, m.daily_dose_mg) for m in rec.medications] == [("azathioprine", 100), ("mesalazine", 1200)]
    assert [(v.vaccine, v.status) for v in rec.vaccinations] == [("mmr", "ordered"), ("influenza", "given")]
    assert rec.screening_done == (("hbsag", date(2024, 12, 1)),)
    assert [c.key for c in rec.conditions] == ["myasthenia-gravis"]
    assert [a.drug for a in rec.allergies] == [None]
    assert next(r for r in rec.labs if r.analyte == "mmp").below_detection
