"""HL7 v2.5.1 ORU^R01 imports on SQLite and PostgreSQL: real lab files in tests/data/hl7/.

Every database test runs twice (the `db` fixture). The files are what a hospital laboratory
interface sends: MSH/PID/PV1/ORC/OBR/OBX/NTE, LOINC or local codes, the units labs really use,
reference ranges and abnormal flags, corrections (OBX-11 C), preliminary results (P) and
deletions (D), plus a file of damaged messages.
"""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from azaguard import domain as d
from azaguard.ingest import FormatError, detect_format, load_code_map, parse_text
from azaguard.ingest.items import Parsed
from azaguard.service import import_parsed, reprocess_quarantine
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.store.records import load_record
from azaguard.store.writes import add_patient
from azaguard.worklist import stored_assessment

DATA = Path(__file__).resolve().parent / "data" / "hl7"
IN_MESSAGE = "\r(in message)\r"  # how a quarantined OBX is stored with its message
COUNTED = ("imported", "duplicates", "corrected", "deleted", "quarantined")


# ---------------------------------------------------------------- helpers
def read(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def messages(name: str) -> list[str]:
    """The file's messages, each as text ready to import on its own."""
    return ["MSH" + part for part in read(name).split("MSH")[1:]]


def do_import(
    db: Database, kb: Any, text: str, source: str = "lab.hl7", codes: dict[str, str] | None = None
) -> tuple[dict[str, Any], Parsed]:
    parsed = parse_text(text, kb, "hl7v2", source, codes)
    with db.session() as s:
        summary = import_parsed(s, kb, None, parsed, source, "cli").as_dict()
    # nothing lost: every record the reader produced is counted exactly once
    assert sum(summary[k] for k in COUNTED) == len(parsed.items) + len(parsed.rejects), summary
    return summary, parsed


def register(db: Database, *identifiers: str) -> dict[str, int]:
    with db.session() as s:
        return {ident: add_patient(s, ident, f"Patient {ident}").id for ident in identifiers}


def patient_id(db: Database, identifier: str) -> int:
    with db.session() as s:
        pid = s.scalar(select(m.Patient.id).where(m.Patient.identifier == identifier))
    assert pid is not None
    return pid


def rows(db: Database, **where: Any) -> list[m.Observation]:
    with db.session() as s:
        q = select(m.Observation).order_by(m.Observation.id)
        for k, v in where.items():
            q = q.where(getattr(m.Observation, k) == v)
        return list(s.scalars(q))


def quarantine(db: Database, state: str | None = None) -> list[m.QuarantineItem]:
    with db.session() as s:
        q = select(m.QuarantineItem).order_by(m.QuarantineItem.id)
        if state:
            q = q.where(m.QuarantineItem.state == state)
        return list(s.scalars(q))


def count(db: Database, model: Any) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def labs(db: Database, identifier: str, analyte: str) -> list[d.LabResult]:
    with db.session() as s:
        record = load_record(s, patient_id(db, identifier))
    return [r for r in record.labs if r.analyte == analyte]


def finding_codes(db: Database, identifier: str) -> set[str]:
    with db.session() as s:
        result = stored_assessment(s, patient_id(db, identifier))
    assert result is not None
    return {f["code"] for f in result["findings"]}


def by_analyte(db: Database, identifier: str) -> dict[str, m.Observation]:
    pid = patient_id(db, identifier)
    return {o.analyte: o for o in rows(db, patient_id=pid, current=True) if o.analyte}


def import_on_treatment(db: Database, kb: Any, identifier: str) -> None:
    """The patient as the clinic knows them: on azathioprine, registered through a FHIR bundle."""
    from conftest import on_treatment

    parsed = parse_text(json.dumps(on_treatment(identifier).bundle()), kb, "fhir", "ehr.json")
    with db.session() as s:
        import_parsed(s, kb, None, parsed, "ehr.json", "cli")


# ---------------------------------------------------------------- a day's batch
def test_daily_batch_imports_every_result_in_canonical_units(db, kb):
    register(db, "MRN10001", "MRN10002", "MRN10003", "MRN10004")
    first, parsed = do_import(db, kb, read("daily_batch.hl7"), "daily_batch.hl7")
    assert len(parsed.items) == read("daily_batch.hl7").count("\nOBX|") == 27
    assert first["imported"] == 27 and first["quarantined"] == 0 and first["duplicates"] == 0

    jane, ahmed, maria, tom = (by_analyte(db, f"MRN1000{i}") for i in (1, 2, 3, 4))
    assert set(jane) == {
        "wbc", "neutrophils", "lymphocytes", "platelets", "haemoglobin", "mcv",
        "alt", "alp", "bilirubin", "albumin", "creatinine", "egfr",
    }  # fmt: skip
    # escaped x10\S\9/L, g/dL -> g/L, mg/dL creatinine -> umol/L, CE unit with UCUM components
    assert jane["lymphocytes"].value == 1.4 and jane["lymphocytes"].original_unit == "x10^9/L"
    assert jane["haemoglobin"].value == pytest.approx(132) and jane["haemoglobin"].unit == "g/L"
    assert jane["haemoglobin"].ref_low == pytest.approx(120) and jane["haemoglobin"].ref_high == pytest.approx(160)
    assert jane["creatinine"].value == pytest.approx(79.56) and jane["creatinine"].original_unit == "mg/dL"
    assert jane["creatinine"].original_value == "0.9"
    assert jane["wbc"].value == 6.2 and jane["wbc"].unit == "10*9/L" and jane["wbc"].code == "6690-2"
    assert jane["egfr"].value == 88 and jane["egfr"].ref_low is None  # ">60" is not a low-high range
    assert jane["wbc"].effective == date(2025, 3, 1) and jane["wbc"].abnormal_flag == "N"
    # /uL -> 10*9/L, a bare '^' in the unit, flags kept as sent
    assert ahmed["neutrophils"].value == pytest.approx(1.4) and ahmed["neutrophils"].original_value == "1400"
    assert ahmed["neutrophils"].ref_low == pytest.approx(2.0) and ahmed["neutrophils"].abnormal_flag == "L"
    assert ahmed["platelets"].value == 152 and ahmed["platelets"].original_unit == "x10^9/L"
    assert ahmed["alt"].value == 112 and ahmed["alt"].abnormal_flag == "HH"
    assert ahmed["ast"].original_unit == "IU/L"
    assert maria["wbc"].value == pytest.approx(7.1) and maria["wbc"].original_unit == "cells/uL"
    assert maria["platelets"].value == 310 and maria["ck"].value == 250
    # SN values with and without a comparator; several OBR orders in one message
    assert tom["wbc"].value == 5.4 and not tom["wbc"].below_detection
    assert tom["lymphocytes"].value == 0.5 and tom["lymphocytes"].below_detection
    assert tom["bilirubin"].below_detection and tom["creatinine"].value == 76
    assert {o.source_key for o in tom.values()} >= {
        "hl7:NMC-PATH:LAB2503010030:6690-2:1",
        "hl7:NMC-PATH:LAB2503010031:1742-6:1",
        "hl7:NMC-PATH:LAB2503010032:2160-0:1",
    }
    assert {r.status for r in rows(db)} == {"final"}

    before = [(o.id, o.current, o.version, o.content_hash) for o in rows(db)]
    again, _ = do_import(db, kb, read("daily_batch.hl7"), "daily_batch.hl7")
    assert again["duplicates"] == first["imported"] == 27
    assert again["imported"] == again["corrected"] == again["quarantined"] == again["deleted"] == 0
    assert [(o.id, o.current, o.version, o.content_hash) for o in rows(db)] == before
    assert quarantine(db) == []
    with db.session() as s:
        batches = list(s.scalars(select(m.ImportBatch).order_by(m.ImportBatch.id)))
    assert [b.counts["imported"] for b in batches] == [27, 0] and batches[1].format == "hl7v2"


def test_segment_separators_mllp_framing_and_batch_envelopes_read_the_same(kb):
    text = read("daily_batch.hl7")
    plain = parse_text(text, kb, None, "a.hl7")
    framed = "FHS|^~\\&|WINPATH\rBHS|^~\\&|WINPATH\r"
    framed += "".join(f"\x0b{msg.replace(chr(10), chr(13))}\x1c\r" for msg in messages("daily_batch.hl7"))
    framed += "BTS|7\rFTS|1\r"
    crlf = text.replace("\n", "\r\n")
    for other in (framed, crlf):
        again = parse_text(other, kb, "hl7v2", "a.hl7")
        assert again.rejects == []
        assert [(i.source_key, i.payload, i.abnormal_flag) for i in again.items] == [
            (i.source_key, i.payload, i.abnormal_flag) for i in plain.items
        ]
    assert detect_format(framed) == detect_format(crlf) == "hl7v2"
    assert detect_format("anything", "results.hl7") == "hl7v2"
    with pytest.raises(FormatError, match="cannot tell the format"):
        detect_format("this is not a lab file\nat all\n", "upload")


def test_each_pid_owns_the_results_that_follow_it(kb):
    """ORU^R01 allows several PATIENT_RESULT groups: a result never goes to the message's first patient."""
    second_patient = [
        "PID|2||MRN10002^^^NMC^MR||KHAN^AHMED",
        "OBR|1|X1|LAB-X1|58410-2^CBC^LN|||20250325081000",
        "OBX|1|NM|6690-2^WBC^LN||9.9|10*9/L|4.0-11.0|N|||F",
    ]
    two = messages("unknown_patient.hl7")[0].rstrip("\n") + "\n" + "\n".join(second_patient)
    parsed = parse_text(two, kb, "hl7v2", "two.hl7")
    assert [(i.patient, i.payload.value) for i in parsed.items] == [
        ("MRN30077", 5.6),
        ("MRN30077", 3.3),
        ("MRN10002", 9.9),
    ]


# ---------------------------------------------------------------- local codes
def test_local_codes_are_quarantined_until_a_code_map_names_them(db, kb):
    register(db, "MRN10003")
    text = read("local_codes.hl7")
    unmapped, _ = do_import(db, kb, text, "dgh.hl7")
    assert unmapped["imported"] == 0 and unmapped["quarantined"] == 7
    items = quarantine(db, "open")
    assert all("add it to the local code table" in q.reason for q in items)
    assert all(q.patient_identifier == "MRN10003" and q.format == "hl7v2" for q in items)

    codes = load_code_map(DATA / "local_codes.toml")
    for q in items:
        if "'GGT'" in q.reason:
            continue  # not monitored for azathioprine: stays in quarantine
        with db.session() as s:
            summary = reprocess_quarantine(s, kb, None, q.id, "cli", codes)
        assert summary.counts["imported"] == 1
    left = quarantine(db, "open")
    assert [q.reason for q in left] == ["unknown code 'GGT' (99DGH); add it to the local code table"]
    assert len(quarantine(db)) == 7  # re-processing closed items, it did not add any

    maria = by_analyte(db, "MRN10003")
    assert {a: o.value for a, o in maria.items()} == {
        "wbc": 6.8, "neutrophils": 4.1, "platelets": 267, "haemoglobin": 128, "alt": 22, "alp": 77,
    }  # fmt: skip
    assert maria["wbc"].code == "6690-2" and maria["wbc"].original_unit == "x10^9/L"
    # the same file with the map from the start: the very same source keys, so nothing new
    mapped, _ = do_import(db, kb, text, "dgh.hl7", codes)
    assert mapped["duplicates"] == 6 and mapped["imported"] == 0 and mapped["quarantined"] == 1
    assert len(quarantine(db)) == 7  # GGT is already waiting: it is not listed twice


def test_code_map_toml_and_csv_are_equivalent(kb):
    toml_map, csv_map = load_code_map(DATA / "local_codes.toml"), load_code_map(DATA / "local_codes.csv")
    assert toml_map == csv_map and toml_map["WCC"] == "6690-2"
    parsed = parse_text(read("local_codes.hl7"), kb, "hl7v2", "dgh.hl7", {"wcc": "6690-2"})  # case-insensitive
    assert [i.payload.analyte for i in parsed.items] == ["wbc"]


# ---------------------------------------------------------------- corrections, preliminary, deletion
def test_corrected_result_replaces_the_earlier_one_keeping_history(db, kb):
    import_on_treatment(db, kb, "MRN20001")
    initial, _ = do_import(db, kb, read("wbc_initial.hl7"), "wbc_initial.hl7")
    assert initial["imported"] == 3
    assert {"lab-wbc-low", "lab-neutrophils-low"} <= finding_codes(db, "MRN20001")
    assert [r.value for r in labs(db, "MRN20001", "wbc") if r.when == date(2025, 3, 15)] == [2.1]

    corrected, _ = do_import(db, kb, read("wbc_corrected.hl7"), "wbc_corrected.hl7")
    assert corrected["corrected"] == 1 and corrected["imported"] == 0 and corrected["quarantined"] == 0
    key = "hl7:NMC-PATH:LAB2503150007:6690-2:1"
    history = rows(db, source_key=key)
    assert [(o.value, o.current, o.version, o.status) for o in history] == [
        (2.1, False, 1, "final"),
        (6.1, True, 2, "corrected"),
    ]
    assert [r.value for r in labs(db, "MRN20001", "wbc") if r.when == date(2025, 3, 15)] == [6.1]
    codes = finding_codes(db, "MRN20001")  # re-assessed on import
    assert "lab-wbc-low" not in codes and "lab-neutrophils-low" in codes  # only WBC was corrected

    for name in ("wbc_initial.hl7", "wbc_corrected.hl7"):  # replaying both files changes nothing
        again, _ = do_import(db, kb, read(name), name)
        assert again["imported"] == again["corrected"] == again["quarantined"] == 0
    assert len(rows(db, source_key=key)) == 2 and quarantine(db) == []


def test_correction_arriving_before_the_original_is_kept(db, kb):
    register(db, "MRN20001")
    first, _ = do_import(db, kb, read("wbc_corrected.hl7"), "wbc_corrected.hl7")
    assert first["imported"] == 1
    late, _ = do_import(db, kb, read("wbc_initial.hl7"), "wbc_initial.hl7")
    assert late["imported"] == 2 and late["quarantined"] == 1  # neutrophils and platelets are new
    assert [r.value for r in labs(db, "MRN20001", "wbc")] == [6.1]
    [q] = quarantine(db, "open")
    assert "after a correction" in q.reason and "corrected result is kept" in q.reason
    assert q.original.startswith("OBX|1|NM|6690-2^") and "||2.1|" in q.original.split(IN_MESSAGE)[0]
    assert "MSH|^~\\&|WINPATH" in q.original  # with its message, so it can be re-processed


def test_preliminary_then_final_and_a_late_preliminary(db, kb):
    register(db, "MRN20001")
    prelim, final = messages("alt_preliminary_final.hl7")
    assert do_import(db, kb, prelim)[0]["imported"] == 1
    assert [(r.value, r.when) for r in labs(db, "MRN20001", "alt")] == [(150, date(2025, 3, 20))]
    assert do_import(db, kb, final)[0]["corrected"] == 1  # a final result replaces the preliminary one
    key = "hl7:NMC-PATH:LAB2503200020:1742-6:1"
    assert [(o.value, o.status, o.current) for o in rows(db, source_key=key)] == [
        (150, "preliminary", False),
        (38, "final", True),
    ]
    assert [r.value for r in labs(db, "MRN20001", "alt")] == [38]
    again, _ = do_import(db, kb, read("alt_preliminary_final.hl7"))
    assert again["duplicates"] == 2 and again["quarantined"] == 0

    # out of order, on another order number: the final result first, the preliminary late
    other_prelim, other_final = (x.replace("LAB2503200020", "LAB2503200099") for x in (prelim, final))
    assert do_import(db, kb, other_final)[0]["imported"] == 1
    late, _ = do_import(db, kb, other_prelim)
    assert late["quarantined"] == 1 and late["imported"] == late["corrected"] == 0
    assert "preliminary result arrived after the final result" in quarantine(db, "open")[0].reason
    assert [r.value for r in labs(db, "MRN20001", "alt")] == [38, 38]

    # a preliminary result confirmed unchanged becomes final (a new version, same value)
    same = prelim.replace("LAB2503200020", "LAB2503200123")
    do_import(db, kb, same)
    done, _ = do_import(db, kb, same.replace("|P|||2025", "|F|||2025"))
    assert done["corrected"] == 1
    assert [o.status for o in rows(db, source_key="hl7:NMC-PATH:LAB2503200123:1742-6:1", current=True)] == ["final"]


def test_deleted_result_stops_being_current_and_stays_deleted(db, kb):
    register(db, "MRN20001")
    result, deletion = messages("plt_deleted.hl7")
    assert do_import(db, kb, result)[0]["imported"] == 1
    assert [r.value for r in labs(db, "MRN20001", "platelets")] == [95]
    gone, _ = do_import(db, kb, deletion)
    assert gone["deleted"] == 1
    key = "hl7:NMC-PATH:LAB2503220011:777-3:1"
    assert [(o.value, o.current) for o in rows(db, source_key=key)] == [(95, False)]
    assert labs(db, "MRN20001", "platelets") == []
    replay, _ = do_import(db, kb, read("plt_deleted.hl7"))  # the original result does not come back
    assert replay["duplicates"] == 2 and replay["imported"] == replay["deleted"] == 0
    assert labs(db, "MRN20001", "platelets") == []

    # result and deletion in the same batch: nothing current either
    both = read("plt_deleted.hl7").replace("LAB2503220011", "LAB2503220077")
    summary, _ = do_import(db, kb, both)
    assert summary["imported"] == 1 and summary["deleted"] == 1
    assert [o.current for o in rows(db, source_key=key.replace("LAB2503220011", "LAB2503220077"))] == [False]
    assert labs(db, "MRN20001", "platelets") == []


# ---------------------------------------------------------------- damaged input
MALFORMED = {  # record reference -> why it was quarantined
    "malformed.hl7 message 1": "does not start with an MSH segment",
    "(WP20250302-ADT1)": "message type ADT^A01 is not ORU^R01",
    "(WP20250302-NOPID)": "no PID segment",
    "(WP20250302-EMPTYPID)": "PID-3 patient identifier is empty",
    "(WP20250302-MIXED) OBX 2": "non-numeric result 'see comment'",
    "(WP20250302-MIXED) OBX 3": "impossible value -2.0",
    "(WP20250302-MIXED) OBX 4": "unknown unit 'cells/hpf' for lymphocytes",
    "(WP20250302-MIXED) OBX 5": "unknown code 'WCC' (99DGH); add it to the local code table",
    "(WP20250302-MIXED) OBX 6": "impossible date 2099-12-31 (in the future)",
    "(WP20250302-MIXED) OBX 7": "OBX-11 status X",
    "(WP20250302-NOOBX)": "no OBX segment",
    "(WP20250302-DAMAGED)": "not an ORU^R01 segment: '@@@ line damaged in transfer @@@'",
    "(WP20250302-TRUNC) OBX 2": "unknown unit '10*9' for neutrophils",  # the file ends mid-segment
}


def test_damaged_messages_are_quarantined_with_reason_and_original_text(db, kb):
    register(db, "MRN10001")
    text = read("malformed.hl7")
    assert not text.endswith("\n")  # cut off in the middle of the last OBX
    summary, _ = do_import(db, kb, text, "malformed.hl7")
    assert summary["imported"] == 2 and summary["quarantined"] == len(MALFORMED)
    assert [r.value for r in labs(db, "MRN10001", "wbc")] == [6.0, 6.3]  # the good results are kept

    items = quarantine(db, "open")
    found = {next(ref for ref in MALFORMED if ref in q.record_ref): q for q in items}
    assert len(found) == len(items) == len(MALFORMED)
    for ref, q in found.items():
        assert MALFORMED[ref] in q.reason, (ref, q.reason)
        assert q.original.strip() and q.batch_id is not None and q.format == "hl7v2"
    # what was received is kept verbatim: the damaged OBX, the message around it, the headless block
    assert found["(WP20250302-TRUNC) OBX 2"].original.split(IN_MESSAGE)[0].endswith("||3.9|10*9")
    assert found["(WP20250302-MIXED) OBX 3"].original.startswith("OBX|3|NM|777-3^")
    assert "@@@ line damaged in transfer @@@" in found["(WP20250302-DAMAGED)"].original
    assert found["malformed.hl7 message 1"].original.startswith("PID|1||MRN10001")
    assert "EVN|A01" in found["(WP20250302-ADT1)"].original
    assert found["(WP20250302-MIXED) OBX 5"].patient_identifier == "MRN10001"

    again, _ = do_import(db, kb, text, "malformed.hl7")  # re-sent: nothing new, nothing listed twice
    assert again["duplicates"] == 2 and again["quarantined"] == len(MALFORMED) and again["imported"] == 0
    assert len(quarantine(db)) == len(MALFORMED)


def test_text_that_is_not_hl7_is_quarantined_whole(db, kb):
    garbage = "Dear colleague,\nplease find the results attached.\n\x00\x01 binary tail"
    summary, _ = do_import(db, kb, garbage, "letter.hl7")
    assert summary["quarantined"] == 1 and summary["imported"] == 0
    [q] = quarantine(db)
    assert "not a parsable HL7 v2 message" in q.reason and q.original.startswith("Dear colleague,")
    assert count(db, m.Observation) == 0


def test_oversized_fields_and_nul_bytes_do_not_fail_the_batch(db, kb):
    """PostgreSQL enforces column sizes and refuses NUL characters (SQLite does neither): a long
    flag, order number or patient id, or a NUL byte, must not turn a whole batch into an error."""
    register(db, "MRN20001")
    long_order = "LAB" + "7" * 240
    text = read("wbc_initial.hl7").replace("LAB2503150007", long_order).replace("|LL|||F|", "|CRITICAL-LOW|||F|")
    text += messages("unknown_patient.hl7")[0].replace("MRN30077", "MRN" + "9" * 100)
    text += messages("unknown_patient.hl7")[0].replace("MRN30077", "MRN\x0030077")  # a NUL byte in a file
    summary, _ = do_import(db, kb, text)
    assert summary["imported"] == 3 and summary["quarantined"] == 4
    wbc = by_analyte(db, "MRN20001")["wbc"]
    assert wbc.abnormal_flag == "CRITICAL" and len(wbc.source_key) <= 200
    items = quarantine(db)
    assert {q.patient_identifier for q in items} == {"MRN" + "9" * 61, "MRN\ufffd30077"}
    assert sum("NUL character" in q.reason for q in items) == 2 and all("\x00" not in q.original for q in items)
    assert do_import(db, kb, text)[0]["duplicates"] == 3  # the shortened keys are stable


# ---------------------------------------------------------------- unknown patients
def test_unknown_patient_is_quarantined_then_reprocessed_once_registered(db, kb):
    summary, _ = do_import(db, kb, read("unknown_patient.hl7"), "unknown_patient.hl7")
    assert summary["quarantined"] == 2 and summary["imported"] == 0 and count(db, m.Observation) == 0
    items = quarantine(db, "open")
    assert [q.reason for q in items] == ["unknown patient 'MRN30077'"] * 2
    assert all(q.patient_identifier == "MRN30077" for q in items)
    assert items[0].original.startswith("OBX|1|NM|6690-2^") and "PID|1||MRN30077" in items[0].original

    with pytest.raises(ValueError, match="still rejected: unknown patient 'MRN30077'"), db.session() as s:
        reprocess_quarantine(s, kb, None, items[0].id, "cli")  # not registered yet
    assert [q.state for q in quarantine(db)] == ["open", "open"]  # and not listed twice

    register(db, "MRN30077")
    for q in items:
        with db.session() as s:
            result = reprocess_quarantine(s, kb, None, q.id, "cli")
        assert result.counts["imported"] == 1 and result.counts["quarantined"] == 0
    assert [q.state for q in quarantine(db)] == ["reprocessed", "reprocessed"]
    assert all(q.resolved_at is not None for q in quarantine(db))
    assert [r.value for r in labs(db, "MRN30077", "wbc")] == [5.6]
    assert [r.value for r in labs(db, "MRN30077", "neutrophils")] == [3.3]
    with pytest.raises(ValueError, match="is reprocessed"), db.session() as s:
        reprocess_quarantine(s, kb, None, items[0].id, "cli")
    again, _ = do_import(db, kb, read("unknown_patient.hl7"), "unknown_patient.hl7")
    assert again["duplicates"] == 2  # the same source keys as the re-processed records


def test_an_order_number_reused_for_another_patient_never_touches_the_first(db, kb):
    register(db, "MRN20001", "MRN10001")
    do_import(db, kb, read("wbc_initial.hl7"))
    other = read("wbc_corrected.hl7").replace("MRN20001", "MRN10001")  # same lab order id, other patient
    summary, _ = do_import(db, kb, other)
    assert summary["quarantined"] == 1 and summary["corrected"] == 0
    assert "belongs to another patient" in quarantine(db, "open")[0].reason
    assert [r.value for r in labs(db, "MRN20001", "wbc")] == [2.1]
    assert labs(db, "MRN10001", "wbc") == []


# ---------------------------------------------------------------- nothing lost
def test_every_obx_of_every_file_is_stored_or_quarantined(db, kb):
    register(db, "MRN10001", "MRN10002", "MRN10003", "MRN10004", "MRN20001")
    files = sorted(p.name for p in DATA.glob("*.hl7"))
    assert len(files) == 8
    imported_keys: dict[str, str] = {}  # OBX segment text -> source key
    totals = dict.fromkeys(COUNTED, 0)
    for name in files:
        summary, parsed = do_import(db, kb, read(name), name)
        for k in COUNTED:
            totals[k] += summary[k]
        for it in parsed.items:
            imported_keys[it.original.split(IN_MESSAGE)[0]] = it.source_key
    stored_keys = {o.source_key for o in rows(db)}
    items = quarantine(db)
    assert all(q.reason.strip() and q.original.strip() for q in items)
    originals = [q.original for q in items]
    assert len(originals) == totals["quarantined"]
    assert count(db, m.Observation) == totals["imported"] + totals["corrected"]
    for name in files:
        for line in re.findall(r"^OBX\|.*$", read(name), flags=re.M):
            stored = imported_keys.get(line) in stored_keys
            held = any(line in original for original in originals)
            assert stored or held, f"{name}: {line[:60]} is neither stored nor quarantined"


def test_the_example_in_docs_import_reads_as_described(kb):
    doc = (Path(__file__).resolve().parent.parent / "docs" / "import.md").read_text(encoding="utf-8")
    example = doc.split("### 1.3 Example", 1)[1].split("```", 2)[1].strip()
    parsed = parse_text(example, kb, None, "doc.hl7")
    assert parsed.rejects == []
    assert [(i.patient, i.payload.analyte, i.payload.value, i.abnormal_flag) for i in parsed.items] == [
        ("MRN10002", "wbc", 3.2, "L"),
        ("MRN10002", "neutrophils", pytest.approx(1.4), "L"),
        ("MRN10002", "platelets", 152, "N"),
    ]
    assert parsed.items[1].payload.ref_low == pytest.approx(2.0) and parsed.items[0].payload.when == date(2025, 3, 1)
    correction = doc.split("A later message", 1)[1].split("```", 2)[1].strip()
    header = "\n".join(example.splitlines()[:2])  # its own MSH and PID
    [item] = parse_text(f"{header}\n{correction}", kb, "hl7v2", "doc.hl7").items
    assert item.correction and item.payload.value == 4.3 and item.source_key == parsed.items[0].source_key
