"""Imports over the REST API and the web page (issue 7): who is asking is checked before the upload
is read; the upload is streamed to a temporary file within the import limit; it is committed in
chunks (other writers get in between), with the counts one transaction gives; a re-import says
that nothing was new; the audit trail names the patients an import changed (by database id)."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from browser_fixtures import live_server
from dbfixtures import fresh_database
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from azaguard import auth, service
from azaguard.api import rest
from azaguard.app import create_app
from azaguard.deps import COOKIE
from azaguard.ingest import parse_text, pipeline
from azaguard.knowledge import Knowledge
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.store.writes import add_patient, add_symptom

PATIENTS = 20
DAYS = 50  # x 3 tests x 20 patients: 3,000 results
CSV_HEAD = "patient_id,date,code,value,unit\n"


def lab_csv(days: int = DAYS, patients: int = PATIENTS, unknown: int = 2) -> str:
    """Full blood counts for STR-00..: one result per patient, day and test; `unknown` rows for a
    patient who is not registered (quarantined)."""
    rows = [CSV_HEAD.rstrip("\n")]
    for p in range(patients):
        for d in range(1, days + 1):
            when = date.today() - timedelta(days=d)
            rows += [
                f"STR-{p:02d},{when},6690-2,{5 + d % 3}.{p % 10},10*9/L",
                f"STR-{p:02d},{when},751-8,3.{d % 9},10*9/L",
                f"STR-{p:02d},{when},777-3,{200 + d},10*9/L",
            ]
    rows += [f"NOBODY-{i},{date.today() - timedelta(days=1)},777-3,250,10*9/L" for i in range(unknown)]
    return "\n".join(rows) + "\n"


@dataclass
class Site:
    db: Database
    client: TestClient
    token: dict[str, str]  # role -> bearer token
    web: dict[str, tuple[str, str]]  # role -> (session cookie, CSRF token)
    patient_ids: list[int]

    def api(self, role: str | None) -> dict[str, str]:
        headers = {"Content-Type": "text/plain"}
        if role is not None:
            headers["Authorization"] = f"Bearer {self.token[role]}"
        return headers

    def post_import(self, body: str | bytes, role: str = "clin", **params: str) -> Any:
        content = body.encode() if isinstance(body, str) else body
        return self.client.post("/api/v1/import", params=params, content=content, headers=self.api(role))

    def post_web_import(self, body: str, role: str = "clin") -> Any:
        cookie, csrf = self.web[role]
        return self.client.post(
            "/import",
            data={"csrf": csrf},
            files={"file": ("labs.csv", body.encode(), "text/csv")},
            headers={"Cookie": f"{COOKIE}={cookie}"},
        )


def make_site(db: Database, kb: Knowledge) -> Site:
    with db.session() as s:
        ids = [
            add_patient(s, f"STR-{p:02d}", f"Streamed Patient{p}", "1960-01-01", "female").id for p in range(PATIENTS)
        ]
        token, web = {}, {}
        for role, username, extra in (("clin", "str-clin", None), ("alma", "str-alma", "STR-00")):
            user = auth.create_user(
                s, username, f"{username}-password-1", "clinician" if extra is None else "patient", extra
            )
            token[role] = auth.create_api_token(s, user, "tests")
            web[role] = auth.create_session(s, user)
    return Site(db, TestClient(create_app(db, kb), raise_server_exceptions=False), token, web, ids)


@pytest.fixture
def site(db: Database, kb: Knowledge) -> Site:
    return make_site(db, kb)


@pytest.fixture
def lite(sqlite_db: Database, kb: Knowledge) -> Site:
    return make_site(sqlite_db, kb)


def count(db: Database, model: Any, *where: Any) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where)) or 0


def stored(db: Database) -> list[tuple[Any, ...]]:
    with db.session() as s:
        o = m.Observation
        rows = s.execute(select(o.source_key, o.version, o.current, o.value).order_by(o.source_key, o.version))
        return [tuple(r) for r in rows]


# ---------------------------------------------------------------- refused before the body is read
class Body:
    """A large request body that records how much of it was read."""

    def __init__(self, mb: int = 40) -> None:
        self.mb, self.read = mb, 0

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(self.mb):
            self.read += 1024 * 1024
            yield b"x" * (1024 * 1024)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.mark.parametrize(
    ("channel", "who", "status"),
    [("api", None, 401), ("api", "bad-token", 401), ("api", "alma", 403), ("web", None, 303), ("web", "alma", 403)],
)
def test_an_import_by_someone_who_may_not_import_is_refused_without_reading_its_body(
    lite: Site, channel: str, who: str | None, status: int
) -> None:
    body = Body()
    if channel == "api":
        headers = lite.api(who if who in lite.token else None)
        if who == "bad-token":
            headers["Authorization"] = "Bearer not-a-token"
        r = lite.client.post("/api/v1/import", content=body, headers=headers, follow_redirects=False)
    else:
        headers = {"Content-Type": "multipart/form-data; boundary=xyz"}
        if who is not None:
            headers["Cookie"] = f"{COOKIE}={lite.web[who][0]}"
        r = lite.client.post("/import", content=body, headers=headers, follow_redirects=False)
    assert r.status_code == status, r.text[:300]
    if status == 303:
        assert r.headers["location"] == "/login"
    assert body.read == 0, f"{body.read} bytes of a refused upload were read"
    assert count(lite.db, m.ImportBatch) == 0


@pytest.mark.parametrize(
    ("path", "content_type", "answer"),
    [
        ("/api/v1/import", "text/plain", b"HTTP/1.1 401"),
        ("/import", "multipart/form-data; boundary=xyz", b"HTTP/1.1 303"),
    ],
)
def test_the_server_refuses_an_unauthenticated_upload_before_the_client_has_sent_it(
    lite: Site, path: str, content_type: str, answer: bytes
) -> None:
    """40 MB declared (under the 50 MB import limit), 64 KB sent: the answer comes at once."""
    with live_server(lite.client.app) as url, socket.create_connection(("127.0.0.1", port_of(url)), timeout=10) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {40 << 20}\r\n\r\n"
        sock.sendall(head.encode() + b"x" * 65536)
        reply = sock.recv(4096)
    assert reply.startswith(answer), reply[:200]


# ---------------------------------------------------------------- streamed within the limit
def test_an_api_upload_is_spooled_to_a_temporary_file(lite: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    files: list[Any] = []

    class Recorded(tempfile.SpooledTemporaryFile[bytes]):
        rolled = False

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            files.append(self)

        def rollover(self) -> None:
            self.rolled = True
            super().rollover()

    monkeypatch.setattr(rest, "tempfile", type("T", (), {"SpooledTemporaryFile": Recorded}))
    monkeypatch.setattr(rest, "SPOOL_BYTES", 8 * 1024)
    text = lab_csv(days=10)
    assert len(text) > 8 * 1024
    r = lite.post_import(text, format="csv")
    assert r.status_code == 200, r.text
    assert r.json()["imported"] == PATIENTS * 10 * 3
    (upload,) = files
    assert upload.rolled and upload.closed  # went to disk once over the threshold, and is gone afterwards


def test_an_upload_over_the_import_limit_gets_413_and_imports_nothing(
    sqlite_db: Database, kb: Knowledge, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZAGUARD_MAX_IMPORT_MB", "1")
    lite = make_site(sqlite_db, kb)
    big = CSV_HEAD + "STR-00,2020-01-01,777-3,250,10*9/L\n" * 40_000  # 1.4 MB
    assert len(big) > 1024 * 1024

    def chunked() -> Iterator[bytes]:  # no Content-Length: cut off as it streams
        raw = big.encode()
        for i in range(0, len(raw), 65536):
            yield raw[i : i + 65536]

    r = lite.client.post("/api/v1/import", params={"format": "csv"}, content=chunked(), headers=lite.api("clin"))
    assert r.status_code == 413 and "larger than 1 MB" in r.json()["error"]["message"], r.text
    assert lite.post_import(big, format="csv").status_code == 413  # declared Content-Length
    assert lite.post_web_import(big).status_code == 413
    assert count(lite.db, m.ImportBatch) == 0 and count(lite.db, m.Observation) == 0
    small = lite.post_import(lab_csv(days=2), format="csv")  # under the limit the same route imports
    assert small.status_code == 200 and small.json()["imported"] == PATIENTS * 2 * 3


# ---------------------------------------------------------------- committed in chunks
def reference(kb: Knowledge, request: pytest.FixtureRequest, folder: Path, text: str) -> tuple[dict[str, Any], Any]:
    """The same file in one transaction (the path API imports took before): (counts, stored rows)."""
    folder.mkdir()
    gen = fresh_database("sqlite", request, folder)
    ref = next(gen)
    try:
        with ref.session() as s:
            for p in range(PATIENTS):
                add_patient(s, f"STR-{p:02d}", f"Streamed Patient{p}", "1960-01-01", "female")
        with ref.session() as s:
            parsed = parse_text(text, kb, "csv", "labs.csv")
            counts = service.import_parsed(s, kb, None, parsed, "labs.csv", "cli").as_dict()
        return counts, stored(ref)
    finally:
        gen.close()


def test_an_api_import_of_thousands_of_results_is_committed_in_chunks_with_the_counts_of_one_transaction(
    site: Site, kb: Knowledge, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    text = lab_csv()
    expected, expected_rows = reference(kb, request, tmp_path / "reference", text)
    assert expected["imported"] == PATIENTS * DAYS * 3 and expected["quarantined"] == 2
    monkeypatch.setattr(pipeline, "CHUNK_FIRST", 500)
    monkeypatch.setattr(pipeline, "CHUNK_MIN", 500)
    monkeypatch.setattr(pipeline, "CHUNK_MAX", 500)
    real = pipeline._apply_chunk
    chunks: list[tuple[int, float]] = []  # (records, when its transaction was about to commit)

    def slow_chunk(s: Any, chunk: list[Any], *args: Any) -> None:
        time.sleep(0.05)  # holds the write lock a while, as a large chunk would
        real(s, chunk, *args)
        chunks.append((len(chunk), time.monotonic()))

    monkeypatch.setattr(pipeline, "_apply_chunk", slow_chunk)
    with site.db.session() as s:
        other = add_patient(s, "STR-OTHER", "Other Writer").id
    result: dict[str, Any] = {}

    def importer() -> None:
        r = site.post_import(text, format="csv", filename="labs.csv")
        result.update(status=r.status_code, body=r.json())

    thread = threading.Thread(target=importer)
    thread.start()
    writes: list[tuple[float, float]] = []  # another clinician's saves while the import runs
    while thread.is_alive() or not writes:
        started = time.monotonic()
        with site.db.session() as s:
            add_symptom(s, kb, other, "rash", date.today(), "clinician")
        writes.append((started, time.monotonic()))
    thread.join(60)

    assert result["status"] == 200, result
    body = result["body"]
    assert {**body, "batch_id": None} == {**expected, "batch_id": None, "message": ""}
    assert stored(site.db) == expected_rows  # the same rows as one transaction stores
    assert [n for n, _ in chunks] == [500] * 6 + [2]  # 3,000 results and 2 of unknown patients: 7 commits
    first, last = chunks[0][1], chunks[-1][1]
    between = [w for w in writes if first < w[1] < last]
    assert len(between) >= 2, (writes, first, last)  # other writers got in between the chunks
    assert max(end - start for start, end in writes) < 1.0  # and waited at most about one chunk
    with site.db.session() as s:
        batch = s.get(m.ImportBatch, body["batch_id"])
        assert batch is not None and batch.state == "done" and batch.items_done == len(text.splitlines()) - 1
        pending = select(func.count()).select_from(m.Observation).where(m.Observation.review_state == "pending")
        assert s.scalar(pending) == 0  # every patient re-assessed after the chunks

    again = site.post_import(text, format="csv", filename="labs.csv")
    assert again.status_code == 200
    n = expected["imported"]
    assert again.json() | {"batch_id": None} == {
        "batch_id": None,
        "imported": 0,
        "duplicates": n,
        "corrected": 0,
        "quarantined": 2,
        "patients_created": 0,
        "deleted": 0,
        "message": f"nothing new: all {n} records were already imported (2 in quarantine)",
    }
    assert stored(site.db) == expected_rows


# ---------------------------------------------------------------- nothing new; audited with patient ids
def test_a_re_import_says_nothing_new_on_the_api_and_the_page(lite: Site) -> None:
    text = lab_csv(days=1, patients=1, unknown=0)  # three results of STR-00
    first = lite.post_import(text, format="csv")
    assert first.status_code == 200 and first.json()["imported"] == 3 and first.json()["message"] == ""
    again = lite.post_import(text, format="csv")
    assert again.json()["imported"] == 0 and again.json()["duplicates"] == 3
    assert again.json()["message"] == "nothing new: all 3 records were already imported"
    page = lite.post_web_import(text)
    assert page.status_code == 200 and "Imported 0, duplicates 3" in page.text
    assert "Nothing new: all 3 records were already imported." in page.text
    changed = text.replace("777-3,201,", "777-3,999,")  # a conflicting result is not "nothing new"
    conflict = lite.post_web_import(changed)
    assert conflict.status_code == 200 and "Imported 0, duplicates 2, corrected 0, quarantined 1" in conflict.text
    assert "Nothing new: all 2 records were already imported (1 in quarantine)." in conflict.text
    new = lite.post_import(lab_csv(days=2, patients=1, unknown=0), format="csv")  # one new day: not "nothing new"
    assert new.json()["imported"] == 3 and new.json()["duplicates"] == 3 and new.json()["message"] == ""
    one = lite.post_import(CSV_HEAD + text.splitlines()[1] + "\n", format="csv")
    assert one.json()["message"] == "nothing new: the 1 record was already imported"


def test_imports_are_audited_with_the_ids_of_the_patients_they_changed(lite: Site) -> None:
    def audit_rows() -> list[m.AuditEvent]:
        with lite.db.session() as s:
            return list(
                s.scalars(select(m.AuditEvent).where(m.AuditEvent.action == "import").order_by(m.AuditEvent.id))
            )

    text = lab_csv(days=2, patients=3)  # STR-00..02, and two rows of unregistered patients
    assert lite.post_import(text, format="csv", filename="daily.csv").json()["imported"] == 18
    rows = audit_rows()
    per_patient = [r.patient_id for r in rows if r.patient_id is not None]
    assert sorted(per_patient) == lite.patient_ids[:3]  # one row each, with the database id
    (batch,) = [r for r in rows if r.patient_id is None]  # and one for the batch, with its counts
    assert "'imported': 18" in batch.detail and "'quarantined': 2" in batch.detail
    for r in rows:
        assert (r.username, r.channel, r.resource) == ("str-clin", "api", "csv daily.csv")
        for secret in ("STR-0", "NOBODY", "Streamed", "Patient0", "10*9/L", "201"):
            assert secret not in r.detail and secret not in r.resource, (secret, r.detail)

    lite.post_web_import(lab_csv(days=3, patients=2, unknown=0))  # day 3 is new for STR-00 and STR-01
    rows = audit_rows()[len(rows) :]
    assert sorted(r.patient_id for r in rows if r.patient_id is not None) == lite.patient_ids[:2]
    assert {r.channel for r in rows} == {"web"}

    before = len(audit_rows())
    lite.post_import(text, format="csv", filename="daily.csv")  # nothing changes: only the batch's row
    assert [r.patient_id for r in audit_rows()[before:]] == [None]
