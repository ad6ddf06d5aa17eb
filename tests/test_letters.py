"""Shared-care letters (issue 8 item 5): a PDF to the GP or the specialist team, made from the stored
assessment, stored as a document with its date, author and knowledge version, listed, audited, and
written in a batch for everyone moved to GP care this month.

One SQLite clinic for the module: patient A with a full record imported as a FHIR Bundle (weight,
TPMT/NUDT15, azathioprine, a low neutrophil count that opens a critical finding and a repeat FBC),
patient B, and the patients of the batch. Every check on a letter reads the PDF's own text (pypdf)
and compares it with the assessment the API serves, never with numbers written here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pypdf
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from azaguard import auth, service
from azaguard.app import Settings, create_app
from azaguard.fhirbuild import BundleBuilder
from azaguard.ingest import parse_text
from azaguard.knowledge import Knowledge
from azaguard.render import letter as letters
from azaguard.render.letter import pdf_engine_available
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.store.writes import add_patient
from azaguard.web.views import COOKIE

# WeasyPrint draws with the system's Pango: without it these tests skip, unless the run requires
# the PDF engine (AZAGUARD_REQUIRE_PDF=1, as .ci/run sets), when they fail instead.
pytestmark = pytest.mark.skipif(
    not pdf_engine_available() and os.environ.get("AZAGUARD_REQUIRE_PDF") != "1",
    reason="the PDF engine's system libraries (Pango) are not installed",
)

TODAY = date.today()
SETTINGS = Settings(
    clinic_name="Letterfold Neuromuscular Clinic",
    clinic_phone="01632 960 123",
    out_of_hours="Ring the on-call neurologist through switchboard, 01632 960 000",
)
A_IDENT, B_IDENT = "LET-A-0001", "LET-B-0002"
NO_ROW = 987_654_321


def ago(days: int) -> str:
    return (TODAY - timedelta(days=days)).isoformat()


def day(value: str | date) -> str:
    """A date as the letter writes it ("5 Jan 2027")."""
    when = date.fromisoformat(value) if isinstance(value, str) else value
    return f"{when.day} {when:%b %Y}"


def squash(text: str) -> str:
    """Text without any whitespace: a PDF breaks lines where the layout needs, so words are compared
    with every space and line break taken out of both sides."""
    return "".join(text.split())


def pdf_text(content: bytes) -> str:
    reader = pypdf.PdfReader(io.BytesIO(content))
    return "\n".join(page.extract_text() for page in reader.pages)


@dataclass
class Clinic:
    db: Database
    kb: Knowledge
    ids: dict[str, int]
    api: dict[str, TestClient]  # by username, with that user's bearer token
    web: dict[str, TestClient]  # by username, with that user's session cookie
    csrf: dict[str, str]

    def audit_mark(self) -> int:
        with self.db.session() as s:
            return s.scalar(select(func.max(m.AuditEvent.id))) or 0

    def audit_since(self, mark: int) -> list[tuple[str, str, str, int | None, str, str]]:
        with self.db.session() as s:
            rows = s.scalars(select(m.AuditEvent).where(m.AuditEvent.id > mark).order_by(m.AuditEvent.id))
            return [(r.username, r.action, r.resource, r.patient_id, r.channel, r.detail) for r in rows]


def record_a() -> str:
    """Patient A: myasthenia, 64 kg, TPMT and NUDT15 normal, azathioprine 100 mg/day since 120 days
    ago, a complete panel 10 days ago with neutrophils low enough to raise a critical finding."""
    b = BundleBuilder(A_IDENT, "1961-05-17", "female", name="Agatha Letterman")
    b.condition("91637004", "Myasthenia gravis", ago(400))
    b.weight(64, ago(30))
    b.genotype("TPMT", "*1/*1", ago(200))
    b.genotype("NUDT15", "*1/*1", ago(200))
    b.bloods(ago(150))
    b.screening("5196-1", "HBsAg", ago(150))
    b.azathioprine(ago(120), 100)
    b.fbc(ago(10), wbc=3.2, neut=0.9, plt=210, lymph=1.1, mcv=95)
    b.lft(ago(10), alt=31, albumin=40)
    b.renal(ago(10), 71, egfr=88)
    return json.dumps(b.bundle())


@pytest.fixture(scope="module")
def clinic(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path, kb: Knowledge) -> Iterator[Clinic]:
    path = tmp_path_factory.mktemp("letters") / "clinic.db"
    path.write_bytes(sqlite_template.read_bytes())
    db = Database(f"sqlite:///{path}", create=False)
    with db.session() as s:
        service.import_parsed(s, kb, None, parse_text(record_a(), kb, "fhir", "a.json"), "a.json", "cli")
        a = s.scalar(select(m.Patient).where(m.Patient.identifier == A_IDENT))
        assert a is not None
        b = add_patient(s, B_IDENT, "Bertha Otherpatient", "1970-01-01", "female")
        users = {
            "clin": auth.create_user(s, "clin", "clinician-password", "clinician"),
            "alma": auth.create_user(s, "alma", "patient-password-a", "patient", A_IDENT),
            "bert": auth.create_user(s, "bert", "patient-password-b", "patient", B_IDENT),
        }
        tokens = {k: auth.create_api_token(s, u, "tests") for k, u in users.items()}
        sessions = {k: auth.create_session(s, u) for k, u in users.items()}
        ids = {"a": a.id, "b": b.id}
    app = create_app(db, kb, settings=SETTINGS)
    api = {k: TestClient(app, headers={"Authorization": f"Bearer {t}"}) for k, t in tokens.items()}
    web = {k: TestClient(app, follow_redirects=False, cookies={COOKIE: c}) for k, (c, _) in sessions.items()}
    yield Clinic(db, kb, ids, api, web, {k: csrf for k, (_, csrf) in sessions.items()})
    db.engine.dispose()


@pytest.fixture(scope="module")
def letter_a(clinic: Clinic) -> dict[str, Any]:
    """A GP letter for patient A written through the API by the clinician (with its audit rows)."""
    mark = clinic.audit_mark()
    r = clinic.api["clin"].post(f"/api/v1/patients/{clinic.ids['a']}/letters", json={"recipient": "gp"})
    assert r.status_code == 201, r.text
    return {"doc": r.json(), "audit": clinic.audit_since(mark)}


# ---------------------------------------------------------------- what the letter says
def test_the_letter_states_the_assessment_and_the_record(clinic: Clinic, letter_a: dict[str, Any]) -> None:
    doc = letter_a["doc"]
    pdf = clinic.api["clin"].get(f"/api/v1/documents/{doc['id']}")
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.headers["content-disposition"].startswith("attachment;") and ".pdf" in pdf.headers["content-disposition"]
    assert pdf.content.startswith(b"%PDF-")
    text = squash(pdf_text(pdf.content))
    a = clinic.api["clin"].get(f"/api/v1/patients/{clinic.ids['a']}/assessment").json()

    # The dose in mg/day and mg/kg/day exactly as the assessment has it, with the weight it used
    dose = a["dose"]
    assert dose["current_mg_per_day"] is not None and dose["current_mg_per_kg_per_day"] is not None
    said = f"{dose['current_mg_per_day']:g} mg/day = {dose['current_mg_per_kg_per_day']:g} mg/kg/day"
    assert squash(said) in text
    assert squash(f"weight 64 kg on {day(ago(30))}") in text  # the record's weight and its date
    assert squash(f"TPMT: {a['pgx']['tpmt']}; NUDT15: {a['pgx']['nudt15']}") in text

    # The monitoring plan: each test group with its last complete panel and next due date, in one row
    for g in a["monitoring"]["groups"]:
        assert g["next_due"], g
        assert squash(f"{g['name']} {day(g['last'])} {day(g['next_due'])}") in text, g
    for u in a["monitoring"]["follow_ups"]:
        if u["state"] in ("open", "overdue"):
            assert squash(f"{u['group']} by {day(u['due'])}") in text

    # The latest FBC, liver and renal results with their dates (the newest panel, 10 days ago)
    labs = clinic.api["clin"].get(f"/api/v1/patients/{clinic.ids['a']}/observations").json()["observations"]
    latest = {o["analyte"]: o for o in sorted(labs, key=lambda o: (o["date"], o["id"])) if o["kind"] == "lab"}
    for analyte in ("wbc", "neutrophils", "platelets", "alt", "albumin", "creatinine", "egfr"):
        o = latest[analyte]
        assert o["date"] == ago(10)
        label = clinic.kb.analytes[analyte].label
        assert squash(f"{label} {o['value']:g}") in text, analyte
        assert squash(f"{letters._unit(o['unit'])} {day(o['date'])}") in text, analyte

    # The open actions: every open finding with why (message), what to do (action) and its sources
    found = clinic.api["clin"].get(f"/api/v1/patients/{clinic.ids['a']}/findings").json()["findings"]
    open_findings = [f for f in found if f["state"] == "open"]
    assert any(f["code"] == "lab-neutrophils-low" and f["severity"] == "critical" for f in open_findings)
    stated = {(f["code"], f["message"]): f for f in a["findings"]}
    for f in open_findings:
        assert squash(f["message"]) in text, f["code"]
        assert squash(f"What to do: {f['action']}") in text, f["code"]
        for source in stated[(f["code"], f["message"])]["sources"]:
            assert squash(source) in text, (f["code"], source)

    # Who to call, the knowledge version, the decision-support statement, the author and the date
    for said in (SETTINGS.clinic_name, SETTINGS.clinic_phone, SETTINGS.out_of_hours):
        assert squash(said) in text
    assert squash(f"Knowledge: {a['knowledge_version']}") in text
    assert squash(letters.DECISION_SUPPORT) in text
    assert squash(f"Written by clin on {day(TODAY)}") in text
    assert squash("Agatha Letterman") in text and A_IDENT in text
    assert squash("To: the patient's GP") in text


def test_the_letter_is_stored_with_its_author_date_and_digest_and_audited(
    clinic: Clinic, letter_a: dict[str, Any]
) -> None:
    doc = letter_a["doc"]
    with clinic.db.session() as s:
        row = s.get(m.Document, doc["id"])
        assert row is not None
        clin = s.scalar(select(m.User).where(m.User.username == "clin"))
        assert clin is not None
        assert (row.patient_id, row.kind, row.recipient, row.author, row.author_id) == (
            clinic.ids["a"],
            "gp-letter",
            "gp",
            "clin",
            clin.id,
        )
        assert abs(row.created_at - datetime.now()) < timedelta(minutes=5)
        assert row.sha256 == hashlib.sha256(row.content).hexdigest() == doc["sha256"]
        assert row.knowledge_version == clinic.kb.version == doc["knowledge_version"]
        assert doc["size"] == len(row.content) and doc["media_type"] == "application/pdf"
    listed = clinic.api["clin"].get(f"/api/v1/patients/{clinic.ids['a']}/documents").json()["documents"]
    assert doc in listed
    assert ("clin", "write", "write-letter", clinic.ids["a"], "api", "gp") in letter_a["audit"]
    mark = clinic.audit_mark()
    assert clinic.api["clin"].get(f"/api/v1/documents/{doc['id']}").status_code == 200
    assert ("clin", "read", "read-document", clinic.ids["a"], "api", f"document {doc['id']}") in clinic.audit_since(
        mark
    )


def test_a_letter_to_the_specialist_team_says_so(clinic: Clinic) -> None:
    r = clinic.api["clin"].post(f"/api/v1/patients/{clinic.ids['a']}/letters", json={"recipient": "specialist"})
    assert r.status_code == 201 and r.json()["kind"] == "specialist-letter"
    text = squash(pdf_text(clinic.api["clin"].get(f"/api/v1/documents/{r.json()['id']}").content))
    assert squash("To: the specialist team") in text
    bad = clinic.api["clin"].post(f"/api/v1/patients/{clinic.ids['a']}/letters", json={"recipient": "dentist"})
    assert bad.status_code == 422


# ---------------------------------------------------------------- the web page
def test_the_web_button_writes_a_letter_listed_with_its_download_link(clinic: Clinic) -> None:
    pid, web = clinic.ids["a"], clinic.web["clin"]
    page = web.get(f"/patients/{pid}")
    assert page.status_code == 200 and 'id="documents"' in page.text and "Write GP letter" in page.text
    r = web.post(f"/patients/{pid}/letters", data={"csrf": clinic.csrf["clin"], "recipient": "gp"})
    assert r.status_code == 303
    location = r.headers["location"]
    assert location.startswith(f"/patients/{pid}?letter=") and location.endswith("#documents")
    doc_id = int(location.split("letter=")[1].split("#")[0])
    page = web.get(location.split("#")[0])
    link = f"/patients/{pid}/documents/{doc_id}.pdf"
    assert 'id="letter-written"' in page.text and link in page.text
    mark = clinic.audit_mark()
    pdf = web.get(link)
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.headers["content-disposition"] == f'attachment; filename="gp-letter-{A_IDENT}-{TODAY}-{doc_id}.pdf"'
    assert squash(SETTINGS.clinic_phone) in squash(pdf_text(pdf.content))
    assert ("clin", "read", "read-document", pid, "web", f"document {doc_id}") in clinic.audit_since(mark)
    # Without the form's CSRF token nothing is written
    with clinic.db.session() as s:
        before = s.scalar(select(func.count()).select_from(m.Document))
    assert web.post(f"/patients/{pid}/letters", data={"recipient": "gp"}).status_code == 403
    with clinic.db.session() as s:
        assert s.scalar(select(func.count()).select_from(m.Document)) == before


# ---------------------------------------------------------------- who may see a letter
def test_a_patient_reads_their_own_letters_and_never_anothers(clinic: Clinic, letter_a: dict[str, Any]) -> None:
    a, b, doc = clinic.ids["a"], clinic.ids["b"], letter_a["doc"]["id"]
    own = clinic.api["alma"].get(f"/api/v1/documents/{doc}")
    assert own.status_code == 200 and own.content.startswith(b"%PDF-")
    assert clinic.api["alma"].get(f"/api/v1/patients/{a}/documents").status_code == 200
    assert clinic.web["alma"].get(f"/patients/{a}/documents/{doc}.pdf").status_code == 200
    # ... and finds it listed on her own page; B's page lists none of A's letters
    assert f'href="/patients/{a}/documents/{doc}.pdf"' in clinic.web["alma"].get("/me").text
    assert f"/documents/{doc}.pdf" not in clinic.web["bert"].get("/me").text

    mark = clinic.audit_mark()
    other = clinic.api["bert"].get(f"/api/v1/documents/{doc}")
    missing = clinic.api["bert"].get(f"/api/v1/documents/{NO_ROW}")
    assert other.status_code == missing.status_code == 404
    assert other.json() == missing.json() == {"error": {"status": 404, "message": service.NO_DOCUMENT}}
    assert "Agatha" not in other.text and A_IDENT not in other.text
    rows = clinic.audit_since(mark)
    assert ("bert", "denied", "read-document", a, "api", "") in rows
    assert ("bert", "not-found", "read-document", None, "api", f"document {NO_ROW}") in rows

    # On the web: A's letter under A's record (404 for the record) or under B's own (404 for the letter)
    for path in (f"/patients/{a}/documents/{doc}.pdf", f"/patients/{b}/documents/{doc}.pdf"):
        r = clinic.web["bert"].get(path)
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html"), path
        assert "%PDF" not in r.text and "Agatha" not in r.text
    assert (
        clinic.web["bert"].get(f"/patients/{b}/documents/{doc}.pdf").text
        == clinic.web["bert"].get(f"/patients/{b}/documents/{NO_ROW}.pdf").text
    )
    assert clinic.api["bert"].get(f"/api/v1/patients/{a}/documents").status_code == 404

    # A patient writes no letter: 403 on their own record, 404 on another's (as for a missing record)
    assert clinic.api["alma"].post(f"/api/v1/patients/{a}/letters", json={}).status_code == 403
    assert clinic.api["bert"].post(f"/api/v1/patients/{a}/letters", json={}).status_code == 404
    assert clinic.api["alma"].post("/api/v1/letters/batch").status_code == 403
    assert clinic.web["alma"].get("/letters").status_code == 403


# ---------------------------------------------------------------- the batch: moved to GP care this month
def _move(clinic: Clinic, pid: int, team: str) -> None:
    r = clinic.web["clin"].post(f"/patients/{pid}/team", data={"csrf": clinic.csrf["clin"], "team": team})
    assert r.status_code == 303, r.text


def test_the_batch_writes_one_letter_for_each_patient_moved_to_gp_care_this_month(clinic: Clinic) -> None:
    with clinic.db.session() as s:
        made = {
            k: add_patient(s, f"LET-{k.upper()}-{n}", f"Batch {k.title()}", "1965-03-03", "male").id
            for n, k in enumerate(("moved", "moved2", "earlier", "back", "born-gp", "stayed"), 10)
        }
        s.execute(update(m.Patient).where(m.Patient.id == made["born-gp"]).values(monitoring_team="gp"))
    _move(clinic, made["moved"], "gp")
    _move(clinic, made["moved2"], "gp")
    _move(clinic, made["earlier"], "gp")
    _move(clinic, made["back"], "gp")
    _move(clinic, made["back"], "specialist")  # moved back: the GP does not monitor them now
    _move(clinic, made["born-gp"], "gp")  # already with the GP: a save, not a move
    # "earlier" moved last month: its audit row is dated before this month began
    last_month = datetime(TODAY.year, TODAY.month, 1) - timedelta(days=3)
    with clinic.db.session() as s:
        s.execute(
            update(m.AuditEvent)
            .where(m.AuditEvent.resource == "set-team", m.AuditEvent.patient_id == made["earlier"])
            .values(at=last_month)
        )
    # "moved2" already has a GP letter written since the move: the batch does not write a second
    first = clinic.api["clin"].post(f"/api/v1/patients/{made['moved2']}/letters", json={"recipient": "gp"})
    assert first.status_code == 201

    page = clinic.web["clin"].get("/letters")
    assert page.status_code == 200
    assert 'data-patient="LET-MOVED-10"' in page.text and 'data-patient="LET-MOVED2-11"' in page.text
    assert "Write GP letters for the 1 without one" in page.text

    mark = clinic.audit_mark()
    r = clinic.api["clin"].post("/api/v1/letters/batch")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["month"] == f"{TODAY:%Y-%m}" and out["transferred"] == 2
    assert [d["patient_id"] for d in out["made"]] == [made["moved"]]
    assert out["already_written"] == [made["moved2"]]
    assert out["made"][0]["kind"] == "gp-letter" and out["made"][0]["author"] == "clin"
    text = squash(pdf_text(clinic.api["clin"].get(f"/api/v1/documents/{out['made'][0]['id']}").content))
    assert squash("Blood monitoring is done by: the GP (shared care)") in text
    rows = clinic.audit_since(mark)
    assert ("clin", "write", "write-letter", made["moved"], "api", "gp (batch)") in rows
    assert any(r[:3] == ("clin", "write", "gp-letters-batch (1)") for r in rows)
    with clinic.db.session() as s:
        docs = s.execute(select(m.Document.patient_id, m.Document.kind).where(m.Document.patient_id.in_(made.values())))
        assert sorted(docs) == sorted([(made["moved"], "gp-letter"), (made["moved2"], "gp-letter")])

    again = clinic.api["clin"].post("/api/v1/letters/batch").json()
    assert again["made"] == [] and again["already_written"] == sorted([made["moved"], made["moved2"]])
    # The web button does the same (nothing left to write) and says so after the redirect
    r = clinic.web["clin"].post("/letters/batch", data={"csrf": clinic.csrf["clin"]})
    assert r.status_code == 303 and r.headers["location"] == "/letters?made=0&already=2"
    assert 'id="batch-done"' in clinic.web["clin"].get(r.headers["location"]).text


def test_the_cli_writes_the_months_gp_letters_into_a_folder(
    clinic: Clinic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from azaguard.cli import main

    with clinic.db.session() as s:
        pid = add_patient(s, "LET-CLI-20", "Cleo Commandline", "1959-09-09", "female").id
    _move(clinic, pid, "gp")
    url = str(clinic.db.engine.url)
    assert main(["letters", "--as", "clin", "--database", url]) == 2  # which letters: --gp-this-month
    assert main(["letters", "--gp-this-month", "--as", "alma", "--database", url]) == 2  # a patient writes none
    capsys.readouterr()
    out = tmp_path / "letters"
    assert main(["letters", "--gp-this-month", "--as", "clin", "--out", str(out), "--database", url]) == 0
    assert "1 written" in capsys.readouterr().out
    [pdf] = list(out.iterdir())
    assert pdf.name.startswith("gp-letter-LET-CLI-20-") and pdf.read_bytes().startswith(b"%PDF-")
    assert squash("Cleo Commandline") in squash(pdf_text(pdf.read_bytes()))
    with clinic.db.session() as s:
        row = s.scalar(select(m.Document).where(m.Document.patient_id == pid))
        assert row is not None and row.author == "clin" and row.content == pdf.read_bytes()
        channels = set(s.scalars(select(m.AuditEvent.channel).where(m.AuditEvent.patient_id == pid)))
        assert "cli" in channels


# ---------------------------------------------------------------- nothing from outside the letter
def test_a_letter_loads_nothing_from_outside_it() -> None:
    template = (letters.TEMPLATES / "letter.html").read_text()
    for reference in ("src=", "href=", "url(", "@import", "@font-face"):
        assert reference not in template, reference
    # The renderer refuses every fetch: an image on the network makes the PDF fail, never a request
    from weasyprint.urls import FatalURLFetchingError

    with pytest.raises(FatalURLFetchingError):
        letters.html_to_pdf('<p>x</p><img src="http://192.0.2.1/logo.png">')
