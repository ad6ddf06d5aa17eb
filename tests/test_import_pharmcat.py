"""PharmCAT reports (JSON) as TPMT/NUDT15 evidence: PharmCAT's own example report and damaged
variants of it, read and stored through the same pipeline as every other import (SQLite).

A gene PharmCAT did not call, an ambiguous call, a report without a date or without a patient
identifier never becomes a normal result: it goes to quarantine with its reason and the gene
stays "not tested" in the assessment."""

from __future__ import annotations

import copy
import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from azaguard import domain as d
from azaguard.ingest import detect_format, parse_text
from azaguard.ingest.items import Parsed
from azaguard.knowledge import Knowledge
from azaguard.service import import_parsed, import_upload, reprocess_quarantine
from azaguard.service_models import Principal
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.store.writes import add_patient
from azaguard.worklist import stored_assessment

DATA = Path(__file__).resolve().parent / "data" / "pharmcat"
REPORT = "pharmcat.example.report.trimmed.json"
EXCERPT = "azathioprine_annotations_excerpt.json"


def report() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / REPORT).read_text(encoding="utf-8"))
    return data


def call(gene: str, a1: str, a2: str, phenotype: str) -> dict[str, Any]:
    """A sourceDiplotypes entry as PharmCAT writes it."""
    allele = {"gene": gene, "function": "", "reference": False, "activityValue": "n/a"}
    return {
        "allele1": {**allele, "name": a1}, "allele2": {**allele, "name": a2}, "gene": gene,
        "phenotypes": [phenotype] if phenotype else [], "label": f"{a1}/{a2}", "inferred": False,
        "combination": False, "lookupKey": [phenotype],
    }  # fmt: skip


def with_call(gene: str, *calls: dict[str, Any], source: str = "MATCHER") -> dict[str, Any]:
    r = report()
    section = r["genes"][gene]
    section["callSource"] = source
    section["sourceDiplotypes"] = list(calls)
    section["recommendationDiplotypes"] = list(calls)
    return r


def without(gene: str) -> dict[str, Any]:
    """The report with no trace of `gene`: no gene section, no drug annotations (which repeat calls)."""
    r = report()
    del r["genes"][gene], r["drugs"]
    return r


def parse(r: dict[str, Any] | str, kb: Knowledge, patient: str | None = "P1") -> Parsed:
    text = r if isinstance(r, str) else json.dumps(r, indent=2)
    return parse_text(text, kb, None, "report.json", patient=patient)


def genotypes(p: Parsed) -> dict[str, d.GenotypeResult]:
    return {i.payload.gene: i.payload for i in p.items if i.kind == "genotype"}


def store(db: Database, kb: Knowledge, parsed: Parsed) -> dict[str, Any]:
    with db.session() as s:
        return import_parsed(s, kb, None, parsed, "report.json", "cli").as_dict()


def patient_on_azathioprine(db: Database, kb: Knowledge, identifier: str = "P1") -> int:
    """On azathioprine with no TPMT or NUDT15 result yet (registered through a FHIR bundle)."""
    from conftest import on_treatment

    bundle = on_treatment(identifier, tpmt=None, nudt15=None).bundle()
    with db.session() as s:
        import_parsed(s, kb, None, parse_text(json.dumps(bundle), kb, "fhir", "ehr.json"), "ehr.json", "cli")
        pid = s.scalar(select(m.Patient.id).where(m.Patient.identifier == identifier))
    assert pid is not None
    return int(pid)


def finding_codes(db: Database, pid: int) -> set[str]:
    with db.session() as s:
        result = stored_assessment(s, pid)
    assert result is not None
    return {f["code"] for f in result["findings"]}


# ---------------------------------------------------------------- reading
def test_pharmcats_example_report_gives_both_genes_dated_with_its_version(kb: Knowledge) -> None:
    text = (DATA / REPORT).read_text(encoding="utf-8")
    assert detect_format(text, "sample.report.json") == "pharmcat"
    p = parse(text, kb)
    assert p.format == "pharmcat" and p.rejects == []
    got = genotypes(p)
    assert got["TPMT"] == d.GenotypeResult("TPMT", "*1/*1", "Normal Metabolizer", date(2025, 11, 14))
    assert got["NUDT15"].diplotype == "*1/*1" and got["NUDT15"].phenotype == "Normal Metabolizer"
    for item in p.items:  # provenance: PharmCAT's version and data version, in the record's identity
        assert "v3.1.0-2-g0b250f81" in item.source_key and "2025-11-05-00-25" in item.source_key
        assert "PharmCAT v3.1.0-2-g0b250f81, data 2025-11-05-00-25" in item.ref
        assert item.patient == "P1"


def test_a_version_2_report_keyed_by_source_with_a_java_timestamp(kb: Knowledge) -> None:
    r = report()
    r["genes"] = {"CPIC": r["genes"], "DPWG": {"TPMT": copy.deepcopy(r["genes"]["TPMT"])}}
    r["genes"]["CPIC"]["TPMT"]["sourceDiplotypes"] = [call("TPMT", "*1", "*3A", "Intermediate Metabolizer")]
    r["timestamp"] = "Sep 22, 2023, 3:03:50\u202fPM"  # Java 20+ puts a narrow no-break space before PM
    r.pop("dataVersion")
    r["cpicVersion"] = "v1.31.0"
    got = genotypes(parse(r, kb))
    assert got["TPMT"].diplotype == "*1/*3A" and got["TPMT"].when == date(2023, 9, 22)
    assert got["NUDT15"].diplotype == "*1/*1"


def test_the_reference_excerpt_is_read_from_its_annotations_but_has_no_date(kb: Knowledge) -> None:
    text = (DATA / EXCERPT).read_text(encoding="utf-8")
    assert detect_format(text, "annotations.json") == "pharmcat"
    bare = parse(text, kb)
    assert bare.items == [] and len(bare.rejects) == 1
    assert "no readable timestamp" in bare.rejects[0].reason and bare.rejects[0].patient == "P1"
    # the same annotations inside a report envelope (what PharmCAT writes around them): both genes
    excerpt = json.loads(text)
    envelope = {
        "title": "sample 7", "timestamp": "2025-11-14T22:36:36.135Z", "pharmcatVersion": "v3.1.0",
        "drugs": {"CPIC Guideline Annotation": {"azathioprine": excerpt["CPIC"]},
                  "DPWG Guideline Annotation": {"azathioprine": excerpt["DPWG"]}},
    }  # fmt: skip
    got = genotypes(parse(envelope, kb))
    assert {g: (x.diplotype, x.phenotype) for g, x in got.items()} == {
        "TPMT": ("*1/*1", "Normal Metabolizer"),
        "NUDT15": ("*1/*1", "Normal Metabolizer"),
    }


@pytest.mark.parametrize(
    ("damage", "gene", "reason"),
    [
        (
            lambda: with_call("NUDT15", call("NUDT15", "Unknown", "Unknown", ""), source="NONE"),
            "NUDT15",
            "did not call",
        ),
        (lambda: with_call("NUDT15"), "NUDT15", "did not call"),  # no diplotype at all
        (lambda: with_call("TPMT", call("TPMT", "*1", "Unknown", "n/a")), "TPMT", "did not call"),
        (
            lambda: with_call(
                "TPMT", call("TPMT", "*1", "*3A", "Intermediate Metabolizer"), call("TPMT", "*3B", "*3C", "")
            ),
            "TPMT",
            "2 possible TPMT calls",
        ),
        (lambda: with_call("TPMT", call("TPMT", "*1" * 30, "*2", "")), "TPMT", "longer than 40"),
        (lambda: without("NUDT15"), "NUDT15", "not in"),
    ],
    ids=["call-source-none", "no-diplotype", "unknown-allele", "ambiguous", "too-long", "gene-absent"],
)
def test_a_gene_without_a_usable_call_is_quarantined_never_normal(
    kb: Knowledge, damage: Any, gene: str, reason: str
) -> None:
    p = parse(damage(), kb)
    assert gene not in genotypes(p)  # not imported at all: no default phenotype
    other = "TPMT" if gene == "NUDT15" else "NUDT15"
    assert genotypes(p)[other].diplotype == "*1/*1"  # the other gene of the report is read
    assert len(p.rejects) == 1 and reason in p.rejects[0].reason and f"{gene} stays not tested" in p.rejects[0].reason
    assert json.loads(p.rejects[0].original)["genes"].keys() <= {gene}  # the gene's part of the report, re-readable


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"pharmcatVersion": "v3", "genes": ', "not valid JSON"),
        ('["pharmcatVersion"]', "not a PharmCAT report"),
        ('{"pharmcatVersion": "v3.1.0", "title": "x"}', "not a PharmCAT report"),
        ('{"pharmcatVersion": "v3.1.0", "genes": {}, "timestamp": "next Tuesday"}', "no readable timestamp"),
    ],
)
def test_an_unreadable_report_is_one_reject_with_its_reason(kb: Knowledge, text: str, reason: str) -> None:
    p = parse_text(text, kb, "pharmcat", "report.json", patient="P1")
    assert p.items == [] and len(p.rejects) == 1 and reason in p.rejects[0].reason and p.rejects[0].original


def test_a_report_names_a_sample_not_a_patient(kb: Knowledge) -> None:
    p = parse(report(), kb, patient=None)
    assert p.items == [] and len(p.rejects) == 1
    assert "names a sample ('Sample_1'), not a patient" in p.rejects[0].reason and "--patient" in p.rejects[0].reason
    assert "Sample_1" not in {i.patient for i in p.items}  # the sample id is never taken as the patient


# ---------------------------------------------------------------- stored and assessed
def test_an_intermediate_tpmt_call_feeds_the_assessment_and_re_import_is_a_duplicate(
    sqlite_db: Database, kb: Knowledge
) -> None:
    pid = patient_on_azathioprine(sqlite_db, kb)
    assert "pgx-tpmt-unknown-on-treatment" in finding_codes(sqlite_db, pid)
    r = with_call("TPMT", call("TPMT", "*1", "*3A", "Intermediate Metabolizer"))
    first = store(sqlite_db, kb, parse(r, kb))
    assert (first["imported"], first["quarantined"]) == (2, 0)
    with sqlite_db.session() as s:
        rows = {g.gene: g for g in s.scalars(select(m.Genotype).where(m.Genotype.patient_id == pid))}
    assert (rows["TPMT"].diplotype, rows["TPMT"].phenotype) == ("*1/*3A", "Intermediate Metabolizer")
    assert "v3.1.0-2-g0b250f81" in rows["TPMT"].source_key
    codes = finding_codes(sqlite_db, pid)
    assert "pgx-reduced-on-treatment" in codes and "pgx-tpmt-unknown-on-treatment" not in codes
    again = store(sqlite_db, kb, parse(r, kb))
    assert (again["imported"], again["duplicates"]) == (0, 2)
    with sqlite_db.session() as s:
        assert len(list(s.scalars(select(m.Genotype).where(m.Genotype.patient_id == pid)))) == 2


def test_an_uncalled_nudt15_stays_not_tested_in_the_assessment(sqlite_db: Database, kb: Knowledge) -> None:
    pid = patient_on_azathioprine(sqlite_db, kb)
    r = with_call("NUDT15", call("NUDT15", "Unknown", "Unknown", ""), source="NONE")
    summary = store(sqlite_db, kb, parse(r, kb))
    assert (summary["imported"], summary["quarantined"]) == (1, 1)
    assert "pgx-nudt15-unknown" in finding_codes(sqlite_db, pid)
    with sqlite_db.session() as s:
        result = stored_assessment(s, pid)
    assert result is not None
    assert (result["pgx"]["tpmt"], result["pgx"]["nudt15"]) == ("Normal Metabolizer", None)  # None: not tested
    with sqlite_db.session() as s:
        item = s.scalars(select(m.QuarantineItem)).one()
    assert (
        item.format == "pharmcat" and "PharmCAT did not call NUDT15" in item.reason and item.patient_identifier == "P1"
    )


def test_a_report_for_an_unknown_patient_is_reprocessed_once_the_patient_exists(
    sqlite_db: Database, kb: Knowledge
) -> None:
    summary = store(sqlite_db, kb, parse(report(), kb, patient="NEW-1"))
    assert (summary["imported"], summary["quarantined"]) == (0, 2)
    with sqlite_db.session() as s:
        add_patient(s, "NEW-1", "New Patient")
    with sqlite_db.session() as s:
        for item in s.scalars(select(m.QuarantineItem).order_by(m.QuarantineItem.id)).all():
            assert "unknown patient 'NEW-1'" in item.reason
            reprocess_quarantine(s, kb, None, item.id, "cli")
    with sqlite_db.session() as s:
        stored = {g.gene: g.diplotype for g in s.scalars(select(m.Genotype))}
        states = {q.state for q in s.scalars(select(m.QuarantineItem))}
    assert stored == {"TPMT": "*1/*1", "NUDT15": "*1/*1"} and states == {"reprocessed"}


def test_the_upload_channel_takes_the_patient_identifier(sqlite_db: Database, kb: Knowledge) -> None:
    import io

    from azaguard.auth import create_user

    patient_on_azathioprine(sqlite_db, kb)
    with sqlite_db.session() as s:
        user = create_user(s, "dr", "a long enough password 1", "clinician")
        who = Principal(user.id, user.username, user.role, None, "")
    body = (DATA / REPORT).read_bytes()
    with sqlite_db.session() as s:
        result = import_upload(s, kb, who, io.BytesIO(body), None, "sample.json", "api", patient="P1")
    assert (result.imported, result.quarantined) == (2, 0)
    with sqlite_db.session() as s:
        without = import_upload(s, kb, who, io.BytesIO(body), "pharmcat", "sample.json", "api")
    assert (without.imported, without.quarantined) == (0, 1)


def test_the_command_line_takes_the_patient_identifier(
    sqlite_db: Database, kb: Knowledge, capsys: pytest.CaptureFixture[str]
) -> None:
    from azaguard.cli import main

    patient_on_azathioprine(sqlite_db, kb)
    path = str(DATA / REPORT)
    assert main(["import", path, "--patient", "P1", "--database", sqlite_db.url, "--quiet"]) == 0
    assert "imported 2, duplicates 0" in capsys.readouterr().out
    assert main(["import", path, "--database", sqlite_db.url, "--quiet"]) == 0  # no patient: quarantined
    assert "imported 0, duplicates 0, corrected 0, quarantined 1" in capsys.readouterr().out
