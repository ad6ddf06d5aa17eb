"""The store on both databases: migrate, write, read back exactly what the engine needs."""

from __future__ import annotations

from datetime import date

from azaguard.ingest import parse_text
from azaguard.service import import_parsed
from azaguard.store.records import load_record
from azaguard.store.writes import add_patient


def test_fhir_bundle_imports_to_the_record_it_assesses_to(db, kb):
    from conftest import on_treatment

    from azaguard.engine import assess
    from azaguard.readers.fhir import read_bundle

    b = on_treatment("P-1")
    b.fbc("2025-02-01", 3.0, 1.2, 150)
    import json

    text = json.dumps(b.bundle())
    with db.session() as s:
        summary = import_parsed(s, kb, None, parse_text(text, kb, "fhir", "b.json"), "b.json", "cli")
        assert summary.counts["patients_created"] == 1 and summary.counts["quarantined"] == 0
    with db.session() as s:
        pid = next(iter(summary.patients))
        stored = assess(load_record(s, pid), kb, date(2025, 2, 2))
    direct = assess(read_bundle(b.bundle(), kb), kb, date(2025, 2, 2))
    assert [(f.code, f.severity) for f in stored.findings] == [(f.code, f.severity) for f in direct.findings]
    assert stored.dose == direct.dose and stored.monitoring == direct.monitoring


def test_reimport_is_idempotent(db, kb):
    import json

    from conftest import on_treatment

    text = json.dumps(on_treatment("P-2").bundle())
    with db.session() as s:
        first = import_parsed(s, kb, None, parse_text(text, kb, "fhir", "x"), "x", "cli").as_dict()
    with db.session() as s:
        second = import_parsed(s, kb, None, parse_text(text, kb, "fhir", "x"), "x", "cli").as_dict()
    assert first["imported"] > 0 and second["imported"] == 0 and second["duplicates"] == first["imported"]


def test_add_patient_rejects_duplicate_identifier(db):
    import pytest

    from azaguard.store.writes import FormError

    with db.session() as s:
        add_patient(s, "X1", "A Person")
    with pytest.raises(FormError, match="already exists"), db.session() as s:
        add_patient(s, "X1", "Someone Else")
