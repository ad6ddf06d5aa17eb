"""Damaged input the readers must survive record by record (issue 7): one bad line or field is
quarantined with its reason and the rest of the batch is read; patient data never reaches a log."""

from __future__ import annotations

import json
import logging

import pytest

from azaguard.ingest import detect_format, parse_text
from azaguard.knowledge import Knowledge

CSV = "patient_id,date,code,value,unit\nP1,2025-01-01,751-8,3.1,10*9/L\nP2,2025-01-02,751-8,2.9,10*9/L\n"


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_csv_line_endings_lf_crlf_and_cr_only(kb: Knowledge, newline: str) -> None:
    p = parse_text(CSV.replace("\n", newline), kb, "csv", "lab.csv")
    assert [i.patient for i in p.items] == ["P1", "P2"] and p.rejects == []


def test_csv_cell_over_the_field_limit_is_one_reject(kb: Knowledge) -> None:
    text = CSV + "P3,2025-01-03,751-8," + "9" * 200_000 + ",10*9/L\nP4,2025-01-04,751-8,3.0,10*9/L\n"
    p = parse_text(text, kb, "csv", "lab.csv")
    assert [i.patient for i in p.items] == ["P1", "P2", "P4"]
    assert [(r.ref, r.reason) for r in p.rejects] == [("lab.csv line 4", "a cell is longer than 1000 characters")]
    assert p.rejects[0].original.startswith("patient_id,date,code,value,unit\nP3")  # kept for re-processing


def test_csv_unbalanced_quote_does_not_swallow_the_file(kb: Knowledge) -> None:
    text = CSV + 'P3,2025-01-03,751-8,"3.0,10*9/L\n'
    p = parse_text(text, kb, "csv", "lab.csv")
    assert [i.patient for i in p.items] == ["P1", "P2"] and len(p.rejects) == 1


def obs_line(i: int, pad: str = "") -> str:
    return json.dumps(
        {
            "resourceType": "Observation", "id": f"o{i}", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}], "text": pad},
            "subject": {"reference": "Patient/P1"}, "effectiveDateTime": "2025-01-01",
            "valueQuantity": {"value": 3, "unit": "10*9/L"},
        }
    )  # fmt: skip


def test_ndjson_with_a_long_first_line_is_ndjson(kb: Knowledge) -> None:
    text = obs_line(1, "x" * 500) + "\n" + obs_line(2) + "\n"
    assert detect_format(text) == "ndjson"
    assert len(parse_text(text, kb, None, "bulk").items) == 2
    pretty = json.dumps({"resourceType": "Bundle", "type": "collection", "entry": []}, indent=2)
    assert detect_format(pretty) == "fhir" and detect_format(obs_line(1) + "\n") == "fhir"


@pytest.mark.parametrize("bad", ["[" * 5000 + "]" * 5000, '{"resourceType": "Observation", "x": ' + "9" * 5000 + "}"])
def test_one_unreadable_ndjson_line_is_rejected_alone(kb: Knowledge, bad: str) -> None:
    p = parse_text(obs_line(1) + "\n" + bad + "\n" + obs_line(2) + "\n", kb, "ndjson", "bulk")
    assert len(p.items) == 2
    assert [r.ref for r in p.rejects] == ["bulk line 2"] and "too" in p.rejects[0].reason


def test_a_bundle_nested_too_deeply_is_one_reject(kb: Knowledge) -> None:
    p = parse_text('{"resourceType": "Bundle", "entry": ' + "[" * 5000 + "]" * 5000 + "}", kb, "fhir", "b.json")
    assert p.items == [] and len(p.rejects) == 1 and p.rejects[0].original


HL7 = (
    "MSH|^~\\&|LAB|HOSP|AZA|CLINIC|20250101120000||ORU^R01|MSG1|P|2.5\r"
    "PID|1||NMC-SECRET-ID^^^HOSP^MR||Doe^Jane\r"
    "OBR|1||ORD1|CBC|||20250101080000\r"
    "OBX|1|NM|751-8^Neutrophils^LN||{value}|10*9/L|||||F|||20250101080000\r"
    "OBX|2|NM|6690-2^WBC^LN||6.1|10*9/L|||||F|||20250101080000\r"
)


def test_hl7_invalid_escape_is_quarantined_and_nothing_reaches_the_log(
    kb: Knowledge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    p = parse_text(HL7.format(value="3\\Xzz\\1"), kb, "hl7v2", "lab.hl7")
    assert [i.payload.analyte for i in p.items] == ["wbc"]  # the other result of the message is read
    assert len(p.rejects) == 1 and "invalid escape" in p.rejects[0].reason
    assert "NMC-SECRET-ID" not in caplog.text and "Xzz" not in caplog.text
    # a valid escape is decoded, not refused
    ok = parse_text(HL7.format(value="3\\X2E\\1"), kb, "hl7v2", "lab.hl7")
    assert ok.rejects == [] and ok.items[0].payload.value == pytest.approx(3.1)


def test_hl7_damaged_patient_field_quarantines_the_message(kb: Knowledge, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    text = HL7.format(value="3.2").replace("NMC-SECRET-ID", "NMC\\Xq1\\ID")
    p = parse_text(text, kb, "hl7v2", "lab.hl7")
    assert p.items == [] and len(p.rejects) == 1 and p.rejects[0].original == text.rstrip("\r")
    assert "NMC" not in caplog.text


def test_charts_survive_absurd_values_and_dates(kb: Knowledge) -> None:
    from datetime import date

    from azaguard.service_models import MedicineOut, ObservationOut
    from azaguard.web.charts import patient_chart_svg

    def lab(analyte: str, value: float, when: date) -> ObservationOut:
        return ObservationOut(
            id=1, kind="lab", analyte=analyte, code="", value=value, unit="10*9/L", reported=None, date=when,
            status="final", review_state="auto",
        )  # fmt: skip

    labs = [lab("wbc", 1e308, date(2025, 1, 1)), lab("wbc", 6.0, date(1, 1, 1))]
    labs.append(lab("neutrophils", 3.1, date(2025, 2, 1)))
    meds = [
        MedicineOut(
            id=1, drug="azathioprine", name="Azathioprine", status="active", kind="statement", start=date(1, 1, 1),
            end=None, mg_per_day=1e308, reason=None, status_date=None,
        )
    ]  # fmt: skip
    svg = patient_chart_svg(kb, labs, meds)
    assert svg.startswith("<?xml") and "</svg>" in svg


@pytest.mark.parametrize(
    ("value", "when", "field"),
    [("1e308", "2025-01-01", "value"), ("2000000", "2025-01-01", "value"), ("3.1", "0001-01-01", "date")],
)
def test_forms_refuse_implausible_numbers_and_dates(kb: Knowledge, value: str, when: str, field: str) -> None:
    from azaguard.store.writes import FormError, _date, _number

    with pytest.raises(FormError) as info:
        _number(value, "value")
        _date(when, "date", __import__("datetime").date(2026, 12, 1))
    assert info.value.field == field
    assert _number("1000000", "value") == 1_000_000.0  # the bound itself is accepted
