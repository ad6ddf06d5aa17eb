"""FHIR Bundle / Bulk NDJSON and CSV imports on SQLite and PostgreSQL, transactions, and the CLI.

Database tests run twice (the `db` fixture). The CLI tests run the installed `azaguard` command
in subprocesses against a SQLite file, as an integrator would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from azaguard.fhirbuild import BundleBuilder
from azaguard.ingest import load_code_map, parse_text
from azaguard.ingest import pipeline as pipeline_module
from azaguard.ingest.items import Parsed
from azaguard.service import import_parsed, reprocess_quarantine
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.store.records import load_record
from azaguard.store.writes import add_patient

ROOT = Path(__file__).resolve().parent.parent
HL7 = ROOT / "tests" / "data" / "hl7"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
COUNTED = ("imported", "duplicates", "corrected", "deleted", "quarantined")


# ---------------------------------------------------------------- helpers
def do_import(
    db: Database, kb: Any, text: str, fmt: str, source: str = "upload", codes: dict[str, str] | None = None
) -> tuple[dict[str, Any], Parsed]:
    parsed = parse_text(text, kb, fmt, source, codes)
    with db.session() as s:
        summary = import_parsed(s, kb, None, parsed, source, "cli").as_dict()
    # nothing lost: every record except the Patient resources (created or updated) is counted exactly once
    records = sum(1 for i in parsed.items if i.kind != "patient") + len(parsed.rejects)
    assert sum(summary[k] for k in COUNTED) == records, summary
    return summary, parsed


def observation(
    oid: str,
    subject: str,
    loinc: str,
    value: float | str,
    unit: str,
    when: str,
    status: str = "final",
    display: str = "",
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": status,
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}
        ],
        "code": {"coding": [{"system": LOINC, "code": loinc, "display": display}], "text": display},
        "subject": {"reference": f"Patient/{subject}"},
        "effectiveDateTime": when,
        "issued": f"{when}T14:02:00+00:00",
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def patient(pid: str, mrn: str, given: str, family: str, birth: str, gender: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": "https://nmc.example.org/fhir/sid/mrn", "value": mrn}],
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": gender,
        "birthDate": birth,
    }


def bundle(*resources: dict[str, Any], kind: str = "collection") -> str:
    return json.dumps(
        {
            "resourceType": "Bundle",
            "type": kind,
            "entry": [{"fullUrl": f"urn:uuid:{r['resourceType']}-{r['id']}", "resource": r} for r in resources],
        }
    )


def table_counts(db: Database) -> dict[str, int]:
    with db.session() as s:
        return {
            model.__tablename__: int(s.scalar(select(func.count()).select_from(model)) or 0)
            for model in (
                m.Patient, m.Observation, m.Medication, m.Condition, m.Genotype, m.ImportBatch,
                m.QuarantineItem, m.AuditEvent, m.AssessmentRow, m.FindingRow,
            )
        }  # fmt: skip


def quarantine(db: Database, state: str | None = None) -> list[m.QuarantineItem]:
    with db.session() as s:
        q = select(m.QuarantineItem).order_by(m.QuarantineItem.id)
        return list(s.scalars(q.where(m.QuarantineItem.state == state) if state else q))


def patient_row(db: Database, identifier: str) -> m.Patient:
    with db.session() as s:
        row = s.scalar(select(m.Patient).where(m.Patient.identifier == identifier))
    assert row is not None, identifier
    return row


def lab_values(db: Database, identifier: str, analyte: str) -> list[float]:
    with db.session() as s:
        record = load_record(s, patient_row(db, identifier).id)
    return [r.value for r in record.labs if r.analyte == analyte]


def versions(db: Database, key: str) -> list[tuple[float | None, bool, str]]:
    with db.session() as s:
        found = s.scalars(select(m.Observation).where(m.Observation.source_key == key).order_by(m.Observation.version))
        return [(o.value, o.current, o.status) for o in found]


# ---------------------------------------------------------------- FHIR Bundles
EHR_BUNDLE = bundle(
    patient("pt-1", "MRN40001", "Jane", "Smith", "1970-03-01", "female"),
    patient("pt-2", "MRN40002", "Ahmed", "Khan", "1965-07-12", "male"),
    {
        "resourceType": "Condition",
        "id": "cond-1",
        "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
        },
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91637004"}], "text": "Myasthenia gravis"},
        "subject": {"reference": "Patient/pt-1"},
        "onsetDateTime": "2024-06-01",
    },
    {
        "resourceType": "MedicationStatement",
        "id": "ms-1",
        "status": "active",
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1256"}],
            "text": "Azathioprine 50 mg tablet",
        },
        "subject": {"reference": "Patient/pt-1"},
        "effectivePeriod": {"start": "2025-01-06"},
        "dosage": [{"text": "150 mg once daily", "doseAndRate": [{"doseQuantity": {"value": 150, "unit": "mg"}}]}],
    },
    observation("obs-1", "pt-1", "6690-2", 6.2, "10*9/L", "2025-03-01", display="Leukocytes"),
    observation("obs-2", "pt-1", "751-8", 3.9, "10*9/L", "2025-03-01", display="Neutrophils"),
    observation("obs-3", "pt-1", "777-3", 245, "10*9/L", "2025-03-01", display="Platelets"),
    observation("obs-4", "pt-1", "1742-6", 28, "U/L", "2025-03-01", display="ALT"),
    observation("obs-5", "pt-2", "6690-2", 3.1, "10*9/L", "2025-03-02", display="Leukocytes"),
    observation("obs-6", "pt-2", "2160-0", 1.1, "mg/dL", "2025-03-02", display="Creatinine"),
    kind="transaction",
)


def test_bundle_creates_its_patients_and_imports_their_records(db, kb):
    first, parsed = do_import(db, kb, EHR_BUNDLE, "fhir", "ehr-export.json")
    assert first["patients_created"] == 2 and first["quarantined"] == 0
    assert first["imported"] == len(parsed.items) - 2 == 8
    jane, ahmed = patient_row(db, "MRN40001"), patient_row(db, "MRN40002")
    assert (jane.name, jane.birth_date, jane.sex) == ("Jane Smith", date(1970, 3, 1), "female")
    assert (ahmed.name, ahmed.sex) == ("Ahmed Khan", "male")
    with db.session() as s:
        record = load_record(s, jane.id)
    assert [(x.drug, x.daily_dose_mg) for x in record.medications] == [("azathioprine", 150)]
    assert [c.key for c in record.conditions] == ["myasthenia-gravis"]
    assert lab_values(db, "MRN40001", "wbc") == [6.2] and lab_values(db, "MRN40002", "creatinine") == [
        pytest.approx(97.24)
    ]
    with db.session() as s:
        assert s.get(m.AssessmentRow, jane.id) is not None  # re-assessed as part of the import

    again, _ = do_import(db, kb, EHR_BUNDLE, "fhir", "ehr-export.json")
    assert again["duplicates"] == first["imported"] and again["patients_created"] == 0
    assert again["imported"] == again["corrected"] == again["quarantined"] == 0
    renamed = EHR_BUNDLE.replace('"family": "Smith"', '"family": "Smith-Jones"')
    do_import(db, kb, renamed, "fhir")
    assert patient_row(db, "MRN40001").name == "Jane Smith-Jones" and table_counts(db)["patients"] == 2


def test_the_same_resource_ids_from_two_patients_bundles_do_not_collide(db, kb):
    a = BundleBuilder("MRN40101", "1980-01-01", "female").lab("6690-2", 5.0, "10*9/L", "2025-01-01")
    b = BundleBuilder("MRN40102", "1981-01-01", "male").lab("6690-2", 2.0, "10*9/L", "2025-01-01", status="amended")
    assert a.entries[1]["id"] == b.entries[1]["id"] == "lab-1"  # ids are only unique within one source
    do_import(db, kb, json.dumps(a.bundle()), "fhir")
    summary, _ = do_import(db, kb, json.dumps(b.bundle()), "fhir")
    assert summary["imported"] == 1 and summary["corrected"] == 0
    assert lab_values(db, "MRN40101", "wbc") == [5.0] and lab_values(db, "MRN40102", "wbc") == [2.0]


def test_amended_corrected_preliminary_and_entered_in_error_observations(db, kb):
    pt = patient("pt-10", "MRN40010", "Grace", "Okafor", "1978-04-15", "female")
    do_import(db, kb, bundle(pt, observation("o-wbc", "pt-10", "6690-2", 2.0, "10*9/L", "2025-03-15")), "fhir")
    v1 = [
        observation("o-alt", "pt-10", "1742-6", 140, "U/L", "2025-03-15", status="preliminary"),
        observation("o-plt", "pt-10", "777-3", 250, "10*9/L", "2025-03-15"),
    ]
    do_import(db, kb, "\n".join(json.dumps(r) for r in [pt, *v1]), "ndjson")
    assert lab_values(db, "MRN40010", "alt") == [140]

    v2 = bundle(
        pt,
        observation("o-wbc", "pt-10", "6690-2", 5.5, "10*9/L", "2025-03-15", status="amended"),
        observation("o-alt", "pt-10", "1742-6", 35, "U/L", "2025-03-15"),  # final replaces preliminary
        observation("o-plt", "pt-10", "777-3", 180, "10*9/L", "2025-03-15"),  # changed, not marked amended
    )
    summary, _ = do_import(db, kb, v2, "fhir")
    assert summary["corrected"] == 2 and summary["quarantined"] == 1
    assert versions(db, "fhir:MRN40010:Observation/o-wbc") == [(2.0, False, "final"), (5.5, True, "corrected")]
    assert versions(db, "fhir:MRN40010:Observation/o-alt") == [(140, False, "preliminary"), (35, True, "final")]
    assert lab_values(db, "MRN40010", "wbc") == [5.5] and lab_values(db, "MRN40010", "platelets") == [250]
    [conflict] = quarantine(db, "open")
    assert "not marked as a correction" in conflict.reason and '"value": 180' in conflict.original

    withdrawn = observation("o-wbc", "pt-10", "6690-2", 5.5, "10*9/L", "2025-03-15", status="entered-in-error")
    assert do_import(db, kb, bundle(pt, withdrawn), "fhir")[0]["deleted"] == 1
    assert lab_values(db, "MRN40010", "wbc") == []
    replay, _ = do_import(db, kb, v2, "fhir")  # the amended value does not come back, the conflict is not re-listed
    assert replay["imported"] == replay["corrected"] == 0 and replay["quarantined"] == 1
    assert lab_values(db, "MRN40010", "wbc") == [] and len(quarantine(db)) == 1


# ---------------------------------------------------------------- Bulk Data NDJSON
def test_bulk_ndjson_one_resource_per_line_with_bad_lines(db, kb):
    lines = [
        json.dumps(patient("pt-3", "MRN40003", "Maria", "Rossi", "1988-11-22", "female")),
        json.dumps(observation("n-1", "pt-3", "6690-2", 7.1, "10*9/L", "2025-04-01")),
        json.dumps(observation("n-2", "pt-3", "751-8", 4200, "/uL", "2025-04-01")),
        "",
        '{"resourceType": "Observation", "id": "n-3", "status": "fin',  # cut off mid-line
        "[1, 2, 3]",
        json.dumps(observation("n-4", "pt-3", "777-3", "high", "10*9/L", "2025-04-01")),
        json.dumps(observation("n-5", "pt-3", "2345-7", 5.4, "mmol/L", "2025-04-01", display="Glucose")),
        json.dumps(observation("n-6", "pt-3", "1742-6", 30, "mmol/L", "2025-04-01")),
        json.dumps(observation("n-7", "pt-404", "6690-2", 5.0, "10*9/L", "2025-04-01")),
        json.dumps(observation("n-8", "pt-3", "1742-6", 31, "U/L", "2099-04-01")),
        json.dumps(observation("n-9", "pt-3", "787-2", 91, "fL", "2025-04-01", status="registered")),
        json.dumps(observation("n-10", "pt-3", "1975-2", 0.5, "mg/dL", "2025-04-01")),
    ]
    text = "\n".join(lines) + "\n"
    summary, _ = do_import(db, kb, text, "ndjson", "Observation.ndjson")
    assert summary["patients_created"] == 1 and summary["imported"] == 3 and summary["quarantined"] == 8
    assert lab_values(db, "MRN40003", "neutrophils") == [pytest.approx(4.2)]
    assert lab_values(db, "MRN40003", "bilirubin") == [pytest.approx(8.552)]
    reasons = {q.record_ref.removeprefix("Observation.ndjson "): q for q in quarantine(db)}
    expected = {
        "line 5": "not valid JSON",
        "line 6": "line is not a FHIR resource object",
        "line 7": "field 'value' must be a number",
        "line 8": "unknown code",
        "line 9": "alt: unknown unit 'mmol/L'",
        "line 10": "unknown patient 'pt-404'",
        "line 11": "impossible date 2099-04-01",
        "line 12": "status 'registered' carries no result",
    }
    assert set(reasons) == set(expected)
    for ref, why in expected.items():
        assert why in reasons[ref].reason, (ref, reasons[ref].reason)
    assert reasons["line 5"].original == lines[4] and reasons["line 6"].original == "[1, 2, 3]"
    assert json.loads(reasons["line 10"].original)["id"] == "n-7"

    with db.session() as s:  # the unknown patient is registered under the id the export used
        add_patient(s, "pt-404", "Registered later")
    with db.session() as s:
        assert reprocess_quarantine(s, kb, None, reasons["line 10"].id, "cli").counts["imported"] == 1
    assert lab_values(db, "pt-404", "wbc") == [5.0]
    assert do_import(db, kb, text, "ndjson")[0]["duplicates"] == 4  # n-7's patient is known now


# ---------------------------------------------------------------- CSV
CSV_TEXT = """\
result_id,patient_id,date,code,value,unit,ref_low,ref_high,status
R-1001,MRN40020,2025-04-01,6690-2,2.4,10*9/L,4.0,11.0,final
R-1002,MRN40020,2025-04-01,751-8,1300,/uL,2000,7500,final
R-1003,MRN40020,2025-04-01,ALT,45,U/L,0,40,
R-1004,MRN40020,2025-04-01,2160-0,1.02,mg/dL,0.6,1.2,final
,MRN40020,2025-04-02,777-3,160,10*9/L,,,
R-1001,MRN40020,2025-04-01,6690-2,4.6,10*9/L,4.0,11.0,corrected
R-2001,,2025-04-01,6690-2,5,10*9/L,,,
R-2002,MRN40020,01/04/2025,6690-2,5,10*9/L,,,
R-2003,MRN40020,2025-04-01,6690-2,five,10*9/L,,,
R-2004,MRN40020,2025-04-01,6690-2,-1,10*9/L,,,
R-2005,MRN40020,2025-04-01,6690-2,5,mmol/L,,,
R-2006,MRN40020,2025-04-01,GLU,5,mmol/L,,,
R-2007,MRN49999,2025-04-01,6690-2,5,10*9/L,,,
R-2008,MRN40020,2099-04-01,6690-2,5,10*9/L,,,
R-1002,MRN40020,2025-04-01,751-8,1.9,10*9/L,,,final
"""
CSV_REJECTS = {
    "line 8": "patient_id is empty",
    "line 9": "date '01/04/2025' is not YYYY-MM-DD",
    "line 10": "value 'five' is not a number",
    "line 11": "impossible value -1",
    "line 12": "unknown unit 'mmol/L' for wbc",
    "line 13": "unknown code 'GLU'",
    "line 14": "unknown patient 'MRN49999'",
    "line 15": "impossible date 2099-04-01",
    "line 16": "conflicts with the stored result of the same id",
}


def test_csv_with_documented_columns_corrections_and_bad_rows(db, kb):
    with db.session() as s:
        add_patient(s, "MRN40020", "CSV Patient")
    codes = load_code_map(HL7 / "local_codes.csv")
    summary, _ = do_import(db, kb, CSV_TEXT, "csv", "results.csv", codes)
    assert summary["imported"] == 5 and summary["corrected"] == 1 and summary["quarantined"] == len(CSV_REJECTS)
    assert versions(db, "csv:R-1001") == [(2.4, False, "final"), (4.6, True, "corrected")]
    assert lab_values(db, "MRN40020", "neutrophils") == [pytest.approx(1.3)]
    assert lab_values(db, "MRN40020", "alt") == [45]  # local code ALT through the code map
    assert lab_values(db, "MRN40020", "creatinine") == [pytest.approx(90.168)]
    assert versions(db, "csv:MRN40020:2025-04-02:777-3") == [(160, True, "final")]  # no result_id
    with db.session() as s:
        wbc = s.scalar(select(m.Observation).where(m.Observation.source_key == "csv:R-1001", m.Observation.current))
    assert wbc is not None and (wbc.ref_low, wbc.ref_high, wbc.original_unit) == (4.0, 11.0, "10*9/L")

    found = {q.record_ref.removeprefix("results.csv "): q for q in quarantine(db)}
    assert set(found) == set(CSV_REJECTS)
    for ref, why in CSV_REJECTS.items():
        assert why in found[ref].reason, (ref, found[ref].reason)
        header, row = found[ref].original.split("\n")  # the header and the row: re-processable alone
        assert header == CSV_TEXT.splitlines()[0] and row == CSV_TEXT.splitlines()[int(ref.split()[1]) - 1]

    again, _ = do_import(db, kb, CSV_TEXT, "csv", "results.csv", codes)
    assert again["duplicates"] == 6 and again["imported"] == again["corrected"] == 0
    assert len(quarantine(db)) == len(CSV_REJECTS)  # the bad rows are not listed twice

    with db.session() as s:
        add_patient(s, "MRN49999", "Registered later")
    with db.session() as s:
        assert reprocess_quarantine(s, kb, None, found["line 14"].id, "cli").counts["imported"] == 1
    assert lab_values(db, "MRN49999", "wbc") == [5]


def test_csv_without_the_required_columns_is_one_quarantined_record(db, kb):
    summary, _ = do_import(db, kb, "patient_id,date,code\nMRN1,2025-01-01,6690-2\n", "csv", "short.csv")
    assert summary["quarantined"] == 1
    [q] = quarantine(db)
    assert q.reason == "missing column(s) value, unit" and q.original.startswith("patient_id,date,code")


# ---------------------------------------------------------------- one transaction per batch
def test_an_unexpected_error_mid_batch_leaves_nothing_written(db, kb, monkeypatch):
    with db.session() as s:
        add_patient(s, "MRN10001", "Existing")
    do_import(db, kb, (HL7 / "unknown_patient.hl7").read_text(encoding="utf-8"), "hl7v2")  # some history
    before = table_counts(db)
    calls: list[str] = []

    def fail_on(name: str, n: int) -> None:
        real = getattr(pipeline_module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            result = real(*args, **kwargs)  # this part really is written, inside the transaction
            if calls.count(name) == n:
                raise RuntimeError("disk full")
            return result

        monkeypatch.setattr(pipeline_module, name, wrapper)

    monkeypatch.setattr(pipeline_module, "CHUNK", 2)
    fail_on("_apply_observations", 3)  # HL7: after two chunks of results were inserted
    daily = parse_text((HL7 / "daily_batch.hl7").read_text(encoding="utf-8"), kb, "hl7v2", "daily.hl7")
    with pytest.raises(RuntimeError, match="disk full"), db.session() as s:
        import_parsed(s, kb, None, daily, "daily.hl7", "cli")
    assert calls == ["_apply_observations"] * 3
    assert table_counts(db) == before

    monkeypatch.undo()
    monkeypatch.setattr(pipeline_module, "CHUNK", 2)
    calls.clear()
    fail_on("_apply_other", 2)  # FHIR: after new patients, all labs and the condition were written
    ehr = parse_text(EHR_BUNDLE, kb, "fhir", "ehr.json")
    with pytest.raises(RuntimeError, match="disk full"), db.session() as s:
        import_parsed(s, kb, None, ehr, "ehr.json", "cli")
    assert calls == ["_apply_other"] * 2
    assert table_counts(db) == before
    assert do_import(db, kb, EHR_BUNDLE, "fhir")[0]["patients_created"] == 2  # and the batch can be re-run


# ---------------------------------------------------------------- the CLI, end to end
def _azaguard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AZAGUARD_DEBUG", "AZAGUARD_DATABASE_URL")}
    exe = Path(sys.executable).with_name("azaguard")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env, check=False)


def test_cli_import_and_quarantine_end_to_end(tmp_path):
    url = f"sqlite:///{tmp_path / 'clinic.db'}"
    people = "\n".join(
        json.dumps(patient(f"p{i}", f"MRN1000{i}", "Test", f"Patient{i}", "1970-01-01", "female")) for i in range(1, 5)
    )
    (tmp_path / "Patient.ndjson").write_text(people + "\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("Clinic notes: bloods look fine.\n", encoding="utf-8")
    (tmp_path / "scan.hl7").write_bytes(b"\xff\xfe\x00\x00MSH|\x81\x82")
    (tmp_path / "empty").mkdir()
    daily, malformed, local = (str(HL7 / n) for n in ("daily_batch.hl7", "malformed.hl7", "local_codes.hl7"))

    def clinic() -> list[subprocess.CompletedProcess[str]]:
        db_args = ["--database", url]
        first = _azaguard("import", "Patient.ndjson", daily, malformed, *db_args, cwd=tmp_path)
        mapped = ["--code-map", str(HL7 / "local_codes.toml"), "--quiet"]
        second = _azaguard("import", daily, local, "--format", "hl7v2", *mapped, *db_args, cwd=tmp_path)
        return [first, second, _azaguard("quarantine", *db_args, cwd=tmp_path)]

    errors = {  # each on its own database, in parallel with the clinic's runs
        "unknown-format": ["import", "notes.txt"],
        "not-utf8": ["import", "scan.hl7"],
        "nothing": ["import", "empty"],
        "bad-format-option": ["import", daily, "--format", "xml"],
    }
    with ThreadPoolExecutor(3) as pool:
        main = pool.submit(clinic)
        failed = {
            name: pool.submit(_azaguard, *args, "--database", f"sqlite:///{tmp_path / name}.db", cwd=tmp_path)
            for name, args in errors.items()
        }
        first, second, listed = main.result()
        done = {name: f.result() for name, f in failed.items()}

    assert first.returncode == 0 and first.stderr == "", first.stderr
    assert first.stdout.splitlines() == [
        "Patient.ndjson: imported 0, duplicates 0, corrected 0, quarantined 0, patients_created 4, deleted 0",
        f"{daily}: imported 27, duplicates 0, corrected 0, quarantined 0, patients_created 0, deleted 0",
        f"{malformed}: imported 2, duplicates 0, corrected 0, quarantined 13, patients_created 0, deleted 0",
        "total: imported 29, duplicates 0, corrected 0, quarantined 13, patients_created 4, deleted 0",
    ]
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [
        f"{daily}: imported 0, duplicates 27, corrected 0, quarantined 0, patients_created 0, deleted 0",
        f"{local}: imported 6, duplicates 0, corrected 0, quarantined 1, patients_created 0, deleted 0",
        "total: imported 6, duplicates 27, corrected 0, quarantined 1, patients_created 0, deleted 0",
    ]
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert lines[-1] == "14 open item(s)" and len(lines) == 15  # 13 from malformed.hl7, GGT from local_codes.hl7
    assert all(line.startswith("#") and " hl7v2 " in line for line in lines[:-1])
    assert any(line.endswith("(WP20250302-MIXED) OBX 3: impossible value -2.0") for line in lines)

    for name, result in done.items():
        assert result.returncode == 2, (name, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr and result.stdout == ""
        lines = result.stderr.strip().splitlines()
        if name != "bad-format-option":  # argparse prints its usage line first
            assert len(lines) == 1, (name, lines)
        assert lines[-1].startswith(("error:", "azaguard import: error:")), (name, lines)
    assert "cannot tell the format of notes.txt" in done["unknown-format"].stderr
    assert "scan.hl7: cannot be read as UTF-8 text" in done["not-utf8"].stderr
    assert "no files to import" in done["nothing"].stderr


def test_cli_import_reports_a_missing_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'clinic.db'}"
    result = _azaguard("import", str(HL7 / "unknown_patient.hl7"), "typo.hl7", "--database", url, cwd=tmp_path)
    assert result.returncode == 2 and "typo.hl7" in result.stderr
