"""The real CLI in a subprocess: malformed input is exit 2 with one clean `error:` line, never a traceback.

Every CLI case runs once, all in parallel, in a module fixture (each run is a fresh interpreter,
about half a second); the tests then check the recorded results. The second half is a property
test: random structural damage to a valid bundle is a ReaderError or a record, never a crash,
and any record that reads is assessed without an exception.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from azaguard import domain as d
from azaguard.engine import assess
from azaguard.fhirbuild import BundleBuilder
from azaguard.knowledge import load_knowledge
from azaguard.readers.fhir import RXNORM, ReaderError, read_bundle
from azaguard.render.json import render_json
from azaguard.render.text import render_text

KB = load_knowledge()
AS_OF = "2025-09-10"
ROOT = Path(__file__).resolve().parent.parent

Bundle = dict[str, Any]


# ---------------------------------------------------------------- a valid bundle to damage
def valid_builder() -> BundleBuilder:
    """A patient on azathioprine with one resource of every kind the reader handles."""
    b = BundleBuilder("cli-1", "1972-04-02", "female", name="Ada Byron")
    b.condition("91637004", "Myasthenia gravis", "2024-06-01")
    b.weight(68, "2025-08-20")
    b.genotype("TPMT", "*1/*1", "2024-12-01")
    b.genotype("NUDT15", "*1/*1", "2024-12-01")
    b.bloods("2025-08-20")
    b.symptom("386661006", "Fever", "2025-09-01", present=False)
    b.azathioprine("2025-01-06", 150)
    b.request("Allopurinol 100 mg", "2025-09-01", 100, rxnorm="519", status="draft")
    b.immunization("Influenza", "88", "2024-10-01")
    b.allergy("Penicillin")
    b.add({"resourceType": "Medication", "id": "med-1", "code": {"text": "Pyridostigmine 60 mg"}})
    b.add(
        {
            "resourceType": "MedicationStatement",
            "id": "ms-ref",
            "status": "active",
            "medicationReference": {"reference": "Medication/med-1"},
            "effectiveDateTime": "2024-07-01",
        }
    )
    return b


def valid_bundle() -> Bundle:
    return valid_builder().bundle()


def find(b: Bundle, rtype: str, pred: Callable[[dict[str, Any]], bool] = lambda r: True) -> tuple[int, dict[str, Any]]:
    """(entry index, resource) of the first resource of a type that matches."""
    for i, e in enumerate(b["entry"]):
        r = e["resource"]
        if r["resourceType"] == rtype and pred(r):
            return i, r
    raise LookupError(rtype)


def label(b: Bundle, i: int) -> str:
    r = b["entry"][i]["resource"]
    return f"Bundle.entry[{i}] ({r['resourceType']}/{r['id']})"


def is_lab(code: str) -> Callable[[dict[str, Any]], bool]:
    return lambda r: r.get("code", {}).get("coding", [{}])[0].get("code") == code


# ---------------------------------------------------------------- cases
@dataclass
class Case:
    """One CLI run: files to write, arguments, and the substrings the error line must contain."""

    name: str
    files: dict[str, str | bytes]
    args: list[str]
    expect: list[str] = field(default_factory=list)
    xfail: str = ""


def damaged(name: str, mutate: Callable[[Bundle], list[str]], xfail: str = "") -> Case:
    """A bundle case: `mutate` damages a valid bundle in place and returns the expected substrings."""
    b = valid_bundle()
    expect = mutate(b)
    return Case(name, {"b.json": json.dumps(b, indent=1)}, ["assess", "b.json", "--as-of", AS_OF], expect, xfail)


def m_value_string(b: Bundle) -> list[str]:
    i, r = find(b, "Observation", is_lab("751-8"))
    r["valueQuantity"]["value"] = "high"
    return [label(b, i), "valueQuantity", "field 'value'", "must be a number", '"high"']


def m_boolean_as_number(b: Bundle) -> list[str]:
    i, r = find(b, "Observation", lambda r: "valueBoolean" in r)
    r["valueBoolean"] = 1
    return [label(b, i), "field 'valueBoolean'", "true or false"]


def m_date(value: str) -> Callable[[Bundle], list[str]]:
    def mutate(b: Bundle) -> list[str]:
        i, r = find(b, "Observation", is_lab("777-3"))
        r["effectiveDateTime"] = value
        return [label(b, i), "field 'effectiveDateTime'", value]

    return mutate


def m_no_lab_date(b: Bundle) -> list[str]:
    i, r = find(b, "Observation", is_lab("6690-2"))
    del r["effectiveDateTime"]
    return [label(b, i), "field 'effectiveDateTime'", "is required"]


def m_status(rtype: str, value: str) -> Callable[[Bundle], list[str]]:
    def mutate(b: Bundle) -> list[str]:
        i, r = find(b, rtype)
        r["status"] = value
        return [label(b, i), "field 'status'", f"'{value}'"]

    return mutate


def m_coding_object(b: Bundle) -> list[str]:
    i, r = find(b, "Observation", is_lab("1742-6"))
    r["code"]["coding"] = r["code"]["coding"][0]
    return [label(b, i), "field 'coding'", "must be an array, got object"]


def m_missing_medication(b: Bundle) -> list[str]:
    i, r = find(b, "MedicationStatement", lambda r: "medicationReference" in r)
    r["medicationReference"]["reference"] = "Medication/missing"
    return [label(b, i), "field 'medicationReference.reference'", "Medication/missing", "not in the bundle"]


def m_entry(value: Any, expect: list[str]) -> Callable[[Bundle], list[str]]:
    def mutate(b: Bundle) -> list[str]:
        b["entry"][2] = value
        return expect

    return mutate


def m_entry_not_a_list(b: Bundle) -> list[str]:
    b["entry"] = {"resource": b["entry"][0]["resource"]}
    return ["Bundle", "field 'entry'", "must be an array, got object"]


def m_patient(key: str, value: Any) -> Callable[[Bundle], list[str]]:
    def mutate(b: Bundle) -> list[str]:
        b["entry"][0]["resource"][key] = value
        return [label(b, 0), f"field '{key}'"]

    return mutate


def m_second_patient(b: Bundle) -> list[str]:
    b["entry"].append({"resource": {"resourceType": "Patient", "id": "other"}})
    return ["Bundle", "contains 2 Patient resources"]


def m_no_patient(b: Bundle) -> list[str]:
    del b["entry"][0]
    return ["Bundle", "contains no Patient resource"]


def m_given_int(b: Bundle) -> list[str]:
    b["entry"][0]["resource"]["name"] = [{"given": 5, "family": "Byron"}]
    return [label(b, 0), "given"]


def valid_text() -> str:
    return json.dumps(valid_bundle(), indent=1)


def with_literal(old: str, new: str) -> str:
    text = valid_text()
    assert old in text
    return text.replace(old, new, 1)


def bundle_args(name: str = "b.json") -> list[str]:
    return ["assess", name, "--as-of", AS_OF]


PROTOCOL_HEAD = '[protocol]\nname = "Clinic"\nversion = "1"\n'


def protocol_case(name: str, toml: str, expect: list[str], xfail: str = "", names_file: bool = True) -> Case:
    files: dict[str, str | bytes] = {"b.json": valid_text(), "local.toml": toml}
    expect = ["protocol:", *(["local.toml"] if names_file else []), *expect]
    return Case(name, files, [*bundle_args(), "--protocol", "local.toml"], expect, xfail)


ERROR_CASES = [
    Case("not-json", {"b.json": "this is not JSON {"}, bundle_args(), ["b.json", "is not valid JSON"]),
    Case("truncated-json", {"b.json": valid_text()[: len(valid_text()) // 2]}, bundle_args(), ["is not valid JSON"]),
    Case("empty-file", {"b.json": ""}, bundle_args(), ["is not valid JSON", "line 1"]),
    Case("json-array", {"b.json": "[]"}, bundle_args(), ["must be a FHIR Bundle object", "got array"]),
    Case(
        "not-a-bundle",
        {"b.json": json.dumps({"resourceType": "Patient", "id": "p"})},
        bundle_args(),
        ["field 'resourceType'", "must be 'Bundle'", '"Patient"'],
    ),
    Case("not-utf8", {"b.json": b"\xff\xfe{\x00}"}, bundle_args(), ["b.json", "not UTF-8"]),
    Case("missing-file", {}, bundle_args("nope.json"), ["nope.json", "cannot be read"]),
    damaged("entry-not-a-list", m_entry_not_a_list),
    damaged("entry-item-not-object", m_entry("Observation", ["Bundle.entry[2]", "must be an object, got string"])),
    damaged(
        "missing-resource", m_entry({"fullUrl": "urn:uuid:x"}, ["Bundle.entry[2]", "field 'resource' is required"])
    ),
    damaged("no-patient", m_no_patient),
    damaged("two-patients", m_second_patient),
    damaged("value-string", m_value_string),
    damaged("boolean-as-number", m_boolean_as_number),
    damaged("date-impossible", m_date("2025-13-45")),
    damaged("date-word", m_date("yesterday")),
    damaged("lab-without-date", m_no_lab_date),
    damaged("observation-status", m_status("Observation", "done")),
    damaged("statement-status", m_status("MedicationStatement", "taking")),
    damaged("coding-object", m_coding_object),
    damaged("missing-medication", m_missing_medication),
    damaged("patient-gender", m_patient("gender", "F")),
    Case("as-of-impossible", {"b.json": valid_text()}, ["assess", "b.json", "--as-of", "2025-02-30"], ["--as-of"]),
    Case(
        "as-of-word", {"b.json": valid_text()}, ["assess", "b.json", "--as-of", "yesterday"], ["--as-of", "yesterday"]
    ),
    protocol_case("protocol-invalid-toml", "[protocol\nname = ", ["not valid TOML"]),
    protocol_case("protocol-unknown-section", PROTOCOL_HEAD + "[pharmacology]\nx = 1\n", ["[pharmacology]"]),
    protocol_case(
        "protocol-unknown-rule",
        PROTOCOL_HEAD + "[thresholds.nope]\nvalue = 1\n",
        ["[thresholds.nope]", "names no rule"],
    ),
    # value errors: see test_protocol_value_errors_name_the_local_file_and_rule for the file named
    protocol_case(
        "protocol-wrong-value-type",
        PROTOCOL_HEAD + '[thresholds.wbc-low]\nvalue = "low"\n',
        ["thresholds", "value", "valid number"],
        names_file=False,
    ),
    protocol_case(
        "protocol-bad-interval",
        PROTOCOL_HEAD + "[schedule]\ninitial_interval = { weeks = 0 }\n",
        ["initial_interval", "positive"],
        names_file=False,
    ),
    Case(
        "protocol-missing-file",
        {"b.json": valid_text()},
        [*bundle_args(), "--protocol", "nope.toml"],
        ["protocol:", "nope.toml", "cannot read"],
    ),
    # ---- bugs: each of these is exit 1 "internal error" (or a silent success) today
    Case("deeply-nested-json", {"b.json": "[" * 100_000 + "]" * 100_000}, bundle_args(), ["b.json"]),
    damaged("patient-given-int", m_given_int),
    Case("nan-weight", {"b.json": with_literal('"value": 68', '"value": NaN')}, bundle_args(), ["field 'value'"]),
    Case(
        "infinite-dose",
        {"b.json": with_literal('"value": 150', '"value": 1e400')},
        [*bundle_args(), "--format", "json"],
        ["field 'value'"],
    ),
    protocol_case("protocol-rule-not-a-table", PROTOCOL_HEAD + "[thresholds]\nwbc-low = 5\n", ["thresholds"]),
    protocol_case("protocol-section-not-a-table", "schedule = 5\n" + PROTOCOL_HEAD, ["schedule"]),
    protocol_case("protocol-bool-as-number", PROTOCOL_HEAD + "[dosing]\nmax_mg_per_day = true\n", ["max_mg_per_day"]),
]


def _run(case: Case, folder: Path) -> subprocess.CompletedProcess[str]:
    folder.mkdir(parents=True)
    for name, content in case.files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "AZAGUARD_DEBUG"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "azaguard.cli", *case.args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


EXTRA_RUNS = {
    "text": Case("text", {"b.json": valid_text()}, bundle_args()),
    "json": Case("json", {"b.json": valid_text()}, [*bundle_args(), "--format", "json"]),
    "local-protocol": Case(
        "local-protocol",
        {"b.json": valid_text(), "local.toml": PROTOCOL_HEAD + "[thresholds.wbc-low]\nvalue = 3.0\n"},
        [*bundle_args(), "--format", "json", "--protocol", "local.toml"],
    ),
    "year-9999": Case(
        "year-9999",
        {"b.json": valid_text().replace('"2025-01-06"', '"9999-12-01"')},
        ["assess", "b.json", "--as-of", "9999-12-31"],
    ),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    base = tmp_path_factory.mktemp("cli")
    cases = {c.name: c for c in ERROR_CASES} | EXTRA_RUNS
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {name: pool.submit(_run, case, base / name) for name, case in cases.items()}
        return {name: f.result() for name, f in futures.items()}


def clean_error_problems(proc: subprocess.CompletedProcess[str], expect: list[str]) -> list[str]:
    """Every way the run breaks the contract: exit 2, stdout empty, one `error:` line, no traceback."""
    both = proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    problems = [
        *(["traceback printed"] if "Traceback" in both else []),
        *(["internal error"] if "internal error" in both else []),
        *([f"exit code {proc.returncode}"] if proc.returncode != 2 else []),
        *(["stdout not empty"] if proc.stdout else []),
        *([f"{len(lines)} stderr lines"] if len(lines) != 1 else []),
        *(["stderr does not start with 'error: '"] if not proc.stderr.startswith("error: ") else []),
    ]
    first = lines[0] if lines else ""
    problems += [f"{part!r} not in the message" for part in expect if part not in first]
    return problems


def test_case_names_are_unique():
    names = [c.name for c in ERROR_CASES] + list(EXTRA_RUNS)
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, id=c.name, marks=pytest.mark.xfail(strict=True, reason=c.xfail, raises=AssertionError))
        if c.xfail
        else pytest.param(c, id=c.name)
        for c in ERROR_CASES
    ],
)
def test_malformed_input_is_exit_2_with_one_clean_error_line(results, case):
    proc = results[case.name]
    problems = clean_error_problems(proc, case.expect)
    assert not problems, (problems, proc.stderr[-600:], proc.stdout[:300])


@pytest.mark.parametrize(("case", "rule"), [("protocol-wrong-value-type", "wbc-low"), ("protocol-bad-interval", "")])
def test_protocol_value_errors_name_the_local_file_and_rule(results, case, rule):
    # loader._validate reports the merged data's origin ("labs.toml:thresholds.0.value",
    # "protocol.toml:schedule.initial_interval"): a clinic editing local.toml is pointed at a file
    # it does not have, and at a list index instead of the rule id it wrote.
    line = results[case].stderr.strip()
    assert "local.toml" in line
    assert rule in line


# ---------------------------------------------------------------- successful runs
def test_text_output_states_the_knowledge_version(results):
    proc = results["text"]
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert f"Knowledge: {KB.version}" in proc.stdout
    assert "patient cli-1 - as of 2025-09-10" in proc.stdout
    assert "Traceback" not in proc.stdout


TOP_KEYS = {
    "schema_version",
    "patient_id",
    "as_of",
    "knowledge_version",
    "protocol",
    "findings",
    "dose",
    "monitoring",
    "pgx",
    "treatment",
}
FINDING_KEYS = {
    "code", "category", "severity", "message", "action", "sources", "evidence", "patient_text", "date", "follow_up",
}  # fmt: skip
DOSE_KEYS = {
    "current_mg_per_day", "current_mg_per_kg_per_day", "recommended_mg_per_day", "plan", "basis", "restart_criteria",
}  # fmt: skip


def strict_json(text: str) -> Any:
    def refuse(token: str) -> Any:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_json_output_parses_and_has_the_contract_keys(results):
    proc = results["json"]
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    out = strict_json(proc.stdout)
    assert set(out) == TOP_KEYS
    assert out["schema_version"] == "2"
    assert (out["patient_id"], out["as_of"], out["knowledge_version"]) == ("cli-1", AS_OF, KB.version)
    assert set(out["protocol"]) == {"name", "version"}
    assert out["findings"], "the allopurinol draft order must produce findings"
    ranks = [d.SEVERITY_RANK[f["severity"]] for f in out["findings"]]
    assert ranks == sorted(ranks), "findings are ordered most severe first"
    for f in out["findings"]:
        assert FINDING_KEYS <= set(f) <= FINDING_KEYS | {"ctcae"}
        assert f["category"] in d.CATEGORIES
        assert f["severity"] in ("critical", "warning", "info")
        assert all(isinstance(s, str) for s in f["sources"])
        assert all(isinstance(e, dict) and "type" in e for e in f["evidence"])
    assert "interaction-allopurinol" in {f["code"] for f in out["findings"]}
    assert set(out["dose"]) == DOSE_KEYS
    assert out["dose"]["current_mg_per_day"] == 150
    rec = out["dose"]["recommended_mg_per_day"]
    assert rec is None or set(rec) == {"low", "high"}
    assert all(set(step) == {"from", "mg_per_day"} for step in out["dose"]["plan"])
    mon = out["monitoring"]
    assert set(mon) == {"phase", "treatment_start", "groups", "follow_ups", "calendar"}
    assert mon["phase"] in ("pre-treatment", "initiation", "dose-change", "stable", "stopped")
    assert mon["treatment_start"] == "2025-01-06"
    assert [g["name"] for g in mon["groups"]] == ["FBC", "LFT", "renal"]
    group_keys = {"name", "last", "next_due", "overdue", "interval", "follow_up_due", "due_reason", "moved_from"}
    for g in mon["groups"]:
        assert set(g) == group_keys
        assert isinstance(g["overdue"], bool)
    assert out["pgx"] == {"tpmt": "Normal Metabolizer", "nudt15": "Normal Metabolizer", "category": "normal"}


def test_local_protocol_is_stated_in_the_output(results):
    proc = results["local-protocol"]
    assert proc.returncode == 0, proc.stderr
    out = strict_json(proc.stdout)
    assert out["protocol"] == {"name": "Clinic", "version": "1"}
    assert out["knowledge_version"].endswith("+ local protocol 'Clinic' v1")


def test_dates_at_the_end_of_the_calendar_are_not_an_internal_error(results):
    # Treatment starting 9999-12-01 assessed --as-of 9999-12-31: the scheduler adds intervals past
    # date.max (OverflowError) and the CLI prints "internal error". Correct: assess it (due dates
    # capped) or refuse the date with exit 2; never exit 1.
    proc = results["year-9999"]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode in (0, 2), proc.stderr


# ---------------------------------------------------------------- property test: random damage
def rich_bundle() -> Bundle:
    b = valid_builder()
    b.phenotype("NUDT15", "Normal metabolizer", "2024-12-01")
    b.tpmt_activity(35, "nmol/h/g Hb", "2024-12-01")
    b.lab("1975-2", 0.8, "mg/dL", "2025-06-01", ref_low=0.1, ref_high=1.2)
    b.metabolites(300, 2000, "2025-05-01", mmp_below_detection=True)
    b.screening("5196-1", "HBsAg", "2024-12-01")
    b.pregnant("2025-05-01")
    b.breastfeeding("2025-06-01")
    b.symptom("271807003", "Rash", "2025-06-02")
    b.vaccine_order("MMR", "03", "2025-06-10")
    b.statement("Mesalazine", "2025-02-01", 400, 3, status="completed", end="2025-05-01")
    b.add(
        {
            "resourceType": "Condition",
            "id": "c-old",
            "clinicalStatus": {"coding": [{"code": "resolved"}]},
            "verificationStatus": {"coding": [{"code": "confirmed"}]},
            "code": {"text": "Pancreatitis"},
            "onsetDateTime": "2019",
        }
    )
    b.add(
        {
            "resourceType": "MedicationRequest",
            "id": "mr-ref",
            "status": "active",
            "intent": "order",
            "medicationReference": {"reference": "Medication/med-2"},
            "authoredOn": "2025-03-01",
            "dosageInstruction": [
                {
                    "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk"}},
                    "doseAndRate": [{"doseQuantity": {"value": 15, "unit": "mg"}}],
                }
            ],
        }
    )
    b.add({"resourceType": "Medication", "id": "med-2", "code": {"coding": [{"system": RXNORM, "code": "6851"}]}})
    return b.bundle()


RICH = rich_bundle()
# Known reader bug (test_reader.py::test_patient_name_given_of_wrong_type_is_not_a_crash): damage
# under Patient.name is left out so this test stays green; drop the exclusion once it is fixed.
EXCLUDED_PREFIXES = (("entry", 0, "resource", "name"),)
# Finite values only: non-finite numbers are their own known bug (test_non_finite_numbers_are_reader_errors).
OTHER_TYPE_VALUES: list[Any] = [None, True, False, 0, 7, -2.5, "", "x", "2025-01-01", [], {}, [None], {"a": 1}]

Path_ = tuple[str | int, ...]


def json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    return type(v).__name__


def paths(doc: Any, prefix: Path_ = ()) -> Iterator[Path_]:
    if prefix:
        yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from paths(v, (*prefix, i))


def at(doc: Any, path: Path_) -> Any:
    for k in path:
        doc = doc[k]
    return doc


@st.composite
def damaged_bundles(draw: st.DrawFn) -> Bundle:
    doc = copy.deepcopy(RICH)
    for _ in range(draw(st.integers(1, 4))):
        candidates = [p for p in paths(doc) if not any(p[: len(x)] == x for x in EXCLUDED_PREFIXES)]
        if not candidates:
            break
        path = draw(st.sampled_from(candidates))
        parent, key = at(doc, path[:-1]), path[-1]
        current = parent[key]
        kind = draw(st.sampled_from(["delete", "retype", "truncate", "null"]))
        if kind == "delete":
            del parent[key]
        elif kind == "retype":
            options = [v for v in OTHER_TYPE_VALUES if json_type(v) != json_type(current)]
            parent[key] = copy.deepcopy(draw(st.sampled_from(options)))
        elif kind == "truncate" and isinstance(current, list) and current:
            parent[key] = current[: draw(st.integers(0, len(current) - 1))]
        elif isinstance(current, list):
            current.insert(draw(st.integers(0, len(current))), None)
        else:
            parent[key] = None
    return doc


def test_rich_bundle_is_valid_and_exercises_every_reader_path():
    rec = read_bundle(RICH, KB)
    assert rec.labs and rec.genotypes and rec.tpmt_activity and rec.statuses and rec.symptoms
    assert rec.medications and rec.vaccinations and rec.conditions and rec.allergies and rec.screening_done
    assert {"methotrexate", "pyridostigmine", "azathioprine"} <= {m.drug for m in rec.medications}
    assess(rec, KB, date(2025, 7, 1))


@settings(max_examples=100, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(damaged_bundles(), st.sampled_from([date(2025, 7, 1), date(2020, 1, 1), date(2030, 1, 1)]))
def test_random_damage_is_a_reader_error_or_a_record_and_assessment_never_raises(doc, as_of):
    try:
        rec = read_bundle(doc, KB)
    except ReaderError as exc:
        assert exc.where and str(exc)
        return
    assert isinstance(rec, d.PatientRecord)
    a = assess(rec, KB, as_of)
    strict_json(render_json(a))
    render_text(a)
