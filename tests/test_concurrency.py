"""Concurrency on real SQLite and PostgreSQL (docs/operations.md): writers at once, one review per
finding, the lock-out limit under a burst of guesses, chunked resumable imports, reads during imports.

Every test using `db` runs on both engines. Threads start together at a barrier so the races the
issue measured (69 % of two clinicians' saves failing with "database is locked", 18 password
checks against a limit of 5, up to 8 reviews of one finding) get their chance to happen.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from sqlalchemy import event, func, select, update

from azaguard import auth
from azaguard import worklist as wl
from azaguard.app import create_app
from azaguard.audit import audit
from azaguard.ingest import parse_text, pipeline
from azaguard.ingest.pipeline import ImportSummary, apply_in_chunks
from azaguard.knowledge import Knowledge
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.store.records import now
from azaguard.store.writes import add_lab, add_patient, add_symptom

HL7 = Path(__file__).resolve().parent / "data" / "hl7"
T = TypeVar("T")


def together(n: int, fn: Callable[[int], T]) -> list[T | BaseException]:
    """Run fn(0..n-1) on n threads released at the same moment; results or the exceptions raised."""
    barrier = threading.Barrier(n)

    def run(i: int) -> T | BaseException:
        barrier.wait()
        try:
            return fn(i)
        except BaseException as exc:  # collected: the test looks at every outcome
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def days_ago(n: int) -> date:
    return date.today() - timedelta(days=n)


def patient_with_open_finding(db: Database, kb: Knowledge, ident: str) -> tuple[int, int]:
    """A patient with an open critical finding (neutrophils 0.5): (patient id, finding id)."""
    with db.session() as s:
        p = add_patient(s, ident, "Connie Current", "1970-01-01", "female")
        add_lab(s, kb, p.id, "neutrophils", 0.5, "10*9/L", days_ago(2))
        wl.refresh_patient(s, kb, p.id)
        fid = next(f.id for f in wl.open_findings(s, p.id) if f.code == "lab-neutrophils-low")
        return p.id, fid


# ---------------------------------------------------------------- a live server
class LiveServer:
    def __init__(self, app: Any) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def clinic(db: Database, kb: Knowledge) -> Iterator[tuple[Database, LiveServer, dict[str, Any]]]:
    """The app behind a real server (with the InFlightLimit every app has), two clinicians with an
    API token and a web session each, and two patients."""
    with db.session() as s:
        ids = [add_patient(s, f"CONC-{i}", f"Pat {i}", "1960-01-01", "male").id for i in range(2)]
        who: dict[str, Any] = {"patients": ids}
        for name in ("nurse-a", "nurse-b"):
            user = auth.create_user(s, name, f"{name}-password", "clinician")
            cookie, csrf = auth.create_session(s, user)
            who[name] = {"token": auth.create_api_token(s, user, "tests"), "cookie": cookie, "csrf": csrf}
        for pid in ids:
            wl.refresh_patient(s, kb, pid)
    with LiveServer(create_app(db, kb)) as live:
        yield db, live, who


# ---------------------------------------------------------------- two writers at once
def test_writes_that_begin_with_a_savepoint_never_find_the_database_locked(db: Database) -> None:
    """The web forms' pattern (read, SAVEPOINT, write) from 8 threads at once: on SQLite the
    SAVEPOINT used to open a deferred read transaction that could not become a write one."""
    with db.session() as s:
        pid = add_patient(s, "SAVEPOINT-1", "Sam Point").id

    def clinician(i: int) -> int:
        for k in range(15):
            with db.session() as s:
                s.scalar(select(func.count()).select_from(m.Symptom))  # a read first, as every page does
                with s.begin_nested():
                    s.add(
                        m.Symptom(
                            patient_id=pid, key=None, text=f"t{i}-{k}", when=date.today(), source_key=f"sp:{i}:{k}"
                        )
                    )
        return 15

    outcomes = together(8, clinician)
    assert outcomes == [15] * 8, [repr(o) for o in outcomes if isinstance(o, BaseException)][:3]
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(m.Symptom).where(m.Symptom.patient_id == pid)) == 120


@pytest.mark.slow
def test_two_clinicians_saving_results_at_once_all_succeed(
    clinic: tuple[Database, LiveServer, dict[str, Any]], kb: Knowledge
) -> None:
    """Web lab form and API lab results from two clinicians on the same patients, with patients'
    symptom reports and reads in between: every request answered, none with a 5xx."""
    db, live, who = clinic
    pids = who["patients"]
    statuses: Counter[str] = Counter()

    def client(i: int) -> list[int]:
        me = who["nurse-a" if i % 2 else "nurse-b"]
        codes = []
        with httpx.Client(base_url=live.url, timeout=60, follow_redirects=False) as c:
            for k in range(8):
                pid = pids[k % 2]
                value = 3.0 + (i + k) % 5
                if i % 3 == 0:
                    r = c.post(
                        f"/patients/{pid}/lab",
                        data={"analyte": "wbc", "value": str(value), "unit": "10*9/L", "date": days_ago(1).isoformat(),
                              "csrf": me["csrf"]},
                        headers={"Cookie": f"azaguard_session={me['cookie']}"},
                    )  # fmt: skip
                elif i % 3 == 1:
                    body = {
                        "analyte": "platelets",
                        "value": 150 + value,
                        "unit": "10*9/L",
                        "date": days_ago(1).isoformat(),
                    }
                    r = c.post(
                        f"/api/v1/patients/{pid}/observations",
                        json=body,
                        headers={"Authorization": f"Bearer {me['token']}"},
                    )
                else:
                    r = c.get(f"/api/v1/patients/{pid}/findings", headers={"Authorization": f"Bearer {me['token']}"})
                codes.append(r.status_code)
        return codes

    outcomes = together(24, client)
    for outcome in outcomes:
        assert not isinstance(outcome, BaseException), repr(outcome)
        statuses.update(str(c) for c in outcome)
    assert set(statuses) <= {"200", "201", "303"}, statuses
    with db.session() as s:
        saved = s.scalar(select(func.count()).select_from(m.Observation).where(m.Observation.patient_id.in_(pids)))
        reads = s.scalar(select(func.count()).select_from(m.AuditEvent).where(m.AuditEvent.resource == "list-findings"))
    assert saved == statuses["201"] + statuses["303"] == 16 * 8
    assert reads == 8 * 8  # every read audited, none lost


# ---------------------------------------------------------------- one review per finding
def test_concurrent_reviews_of_one_finding_record_exactly_one(db: Database, kb: Knowledge) -> None:
    with db.session() as s:
        uid = auth.create_user(s, "reviewer", "reviewer-password", "clinician").id
    for n in range(3):
        pid, fid = patient_with_open_finding(db, kb, f"REVIEW-{n}")
        with db.session() as s:
            before = s.get(m.AssessmentRow, pid).open_count  # type: ignore[union-attr]

        def review(i: int, fid: int = fid) -> int:
            with db.session() as s:
                return wl.record_review(s, fid, uid, "repeat-test-booked", f"clinician {i}").id

        outcomes = together(8, review)
        recorded = [o for o in outcomes if isinstance(o, int)]
        refused = [o for o in outcomes if isinstance(o, wl.ReviewError)]
        assert len(recorded) == 1 and len(refused) == 7, [repr(o) for o in outcomes]
        assert all("is reviewed, not open" in str(e) for e in refused)
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(m.Review).where(m.Review.finding_id == fid)) == 1
            assert s.get(m.FindingRow, fid).state == "reviewed"  # type: ignore[union-attr]
            row = s.get(m.AssessmentRow, pid)
            assert row is not None and row.open_count == before - 1  # the worklist counts follow the review


def test_a_review_and_a_refresh_at_once_keep_the_review(db: Database, kb: Knowledge) -> None:
    """A refresh assessed before a review committed must not reopen the finding or undo the counts."""
    with db.session() as s:
        uid = auth.create_user(s, "reviewer", "reviewer-password", "clinician").id
    for n in range(3):
        pid, fid = patient_with_open_finding(db, kb, f"REVIEW-R{n}")
        with db.session() as s:
            before = s.get(m.AssessmentRow, pid).open_count  # type: ignore[union-attr]

        def work(i: int, pid: int = pid, fid: int = fid) -> object:
            with db.session() as s:
                if i == 0:
                    return wl.record_review(s, fid, uid, "patient-contacted", "").id
                return wl.refresh_patient(s, kb, pid)

        outcomes = together(6, work)
        assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
        with db.session() as s:
            assert s.get(m.FindingRow, fid).state == "reviewed"  # type: ignore[union-attr]
            row = s.get(m.AssessmentRow, pid)
            assert row is not None and row.open_count == before - 1


# ---------------------------------------------------------------- password guessing
@pytest.fixture
def nurse(db: Database) -> str:
    with db.session() as s:
        auth.create_user(s, "nurse", "correct-horse", "clinician")
        auth.create_user(s, "admin", "admin-password", "admin")
    return "nurse"


def attempt(db: Database, username: str, password: str, client: str | None = "10.0.0.9") -> str:
    """One login as the routes make it: 'ok', 'wrong', 'locked' (the check before the attempt),
    'refused' (the limit was reached while the attempt was on its way) or 'busy'."""
    try:
        with db.session() as s:
            if auth.login_locked(s, username, client):
                return "locked"
            return "ok" if auth.authenticate(s, username, password, client) is not None else "wrong"
    except auth.TooManyAttempts:
        return "refused"
    except auth.LoginBusy:
        return "busy"


@pytest.mark.slow
def test_sixty_concurrent_wrong_passwords_never_exceed_the_limit(db: Database, nurse: str) -> None:
    outcomes = together(60, lambda i: attempt(db, nurse, f"guess-{i}"))
    counted = Counter(o if isinstance(o, str) else repr(o) for o in outcomes)
    assert counted["wrong"] <= auth.MAX_FAILED_LOGINS, counted  # at most 5 passwords were checked
    assert set(counted) <= {"wrong", "locked", "refused", "busy"}, counted
    assert attempt(db, nurse, "correct-horse") == "locked"  # the right password waits too
    with db.session() as s:
        audited = s.scalar(
            select(func.count())
            .select_from(m.AuditEvent)
            .where(m.AuditEvent.action.in_(("login-locked", "login-refused")))
        )
    assert audited == counted["refused"] + counted["busy"]  # every refusal inside authenticate is audited


@pytest.mark.slow
def test_an_attacker_elsewhere_cannot_lock_an_administrator_out_of_their_usual_address(
    db: Database, nurse: str
) -> None:
    assert attempt(db, "admin", "admin-password", "10.1.1.1") == "ok"  # the admin's workstation, now trusted
    for _ in range(auth.MAX_FAILED_LOGINS):
        assert attempt(db, "admin", "guess", "203.0.113.7") == "wrong"
    assert attempt(db, "admin", "admin-password", "203.0.113.7") in ("locked", "refused")  # the attacker's address
    assert attempt(db, "admin", "admin-password", "198.51.100.2") == "locked"  # any untrusted address
    assert attempt(db, "admin", "admin-password", "10.1.1.1") == "ok"  # not the trusted one
    # ... where guessing is still limited on its own counter
    for _ in range(auth.MAX_FAILED_LOGINS):
        assert attempt(db, "admin", "guess", "10.1.1.1") == "wrong"
    assert attempt(db, "admin", "admin-password", "10.1.1.1") == "locked"


@pytest.mark.slow
def test_one_address_cannot_lock_everyone_out(db: Database, nurse: str) -> None:
    for i in range(auth.MAX_FAILED_LOGINS_PER_ADDRESS):  # spraying many usernames, one guess each
        assert attempt(db, f"user{i}", "guess", "203.0.113.9") == "wrong"
    assert attempt(db, nurse, "correct-horse", "203.0.113.9") == "locked"  # that address is stopped
    assert attempt(db, nurse, "correct-horse", "10.2.2.2") == "ok"  # everyone else is not


@pytest.mark.slow
def test_lock_outs_back_off_and_always_end(db: Database, nurse: str) -> None:
    t = m.LoginThrottle
    durations = []
    for _ in range(6):
        for _ in range(auth.MAX_FAILED_LOGINS):
            assert attempt(db, nurse, "guess", "192.0.2.1") == "wrong"
        assert attempt(db, nurse, "correct-horse", "192.0.2.1") == "locked"
        with db.session() as s:
            row = s.get(t, f"ua:{nurse}|192.0.2.1")
            assert row is not None and row.locked_until is not None and row.last_lockout is not None
            durations.append(row.locked_until - row.last_lockout)
            past = now() - timedelta(seconds=1)  # the lock-out has run its course
            s.execute(update(t).values(locked_until=past, window_start=past - auth.LOCKOUT))
    assert durations == [min(auth.BACKOFF_FIRST * 2**n, auth.LOCKOUT) for n in range(6)]
    assert max(durations) == auth.LOCKOUT  # capped: every lock-out ends
    assert attempt(db, nurse, "correct-horse", "192.0.2.1") == "ok"


def test_password_checks_beyond_the_cap_are_refused_at_once(
    db: Database, nurse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    slots = threading.BoundedSemaphore(1)
    monkeypatch.setattr(auth, "_argon2_slots", slots)
    monkeypatch.setattr(auth, "ARGON2_WAIT", 0.05)
    assert slots.acquire()  # every slot busy
    started = time.perf_counter()
    assert attempt(db, nurse, "correct-horse") == "busy"
    assert time.perf_counter() - started < 1.0
    slots.release()
    with db.session() as s:  # a refused attempt is not counted as a failure
        assert all(
            r.failures == 0 for r in s.scalars(select(m.LoginThrottle).where(~m.LoginThrottle.key.startswith("ok:")))
        )
    assert attempt(db, nurse, "correct-horse") == "ok"


# ---------------------------------------------------------------- chunked, resumable imports
def hl7_batch(kb: Knowledge) -> Any:
    text = (HL7 / "daily_batch.hl7").read_text(encoding="utf-8") + (HL7 / "malformed.hl7").read_text(encoding="utf-8")
    return parse_text(text, kb, "hl7v2", "daily+malformed.hl7")


def register(db: Database) -> None:
    with db.session() as s:
        for ident in ("MRN10001", "MRN10002", "MRN10003", "MRN10004"):
            add_patient(s, ident, f"Patient {ident}")


def run_import(db: Database, kb: Knowledge, parsed: Any) -> ImportSummary:
    def refresh(s: Any, ids: list[int]) -> None:
        wl.refresh_many(s, kb, ids)

    def finish(s: Any, summary: ImportSummary) -> None:
        audit(s, None, "import", "hl7v2 test", detail=str(summary.as_dict()), channel="cli")

    return apply_in_chunks(db, parsed, "daily+malformed.hl7", "cli", refresh=refresh, finish=finish)


def stored(db: Database) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with db.session() as s:
        o, q = m.Observation, m.QuarantineItem
        obs = s.execute(
            select(o.source_key, o.version, o.current, o.value, o.status).order_by(o.source_key, o.version)
        ).all()
        quarantined = s.execute(select(q.record_ref, q.reason, q.state).order_by(q.record_ref)).all()
    return [tuple(r) for r in obs], [tuple(r) for r in quarantined]


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "CHUNK_FIRST", 4)
    monkeypatch.setattr(pipeline, "CHUNK_MIN", 4)
    monkeypatch.setattr(pipeline, "CHUNK_MAX", 4)


def reference_import(kb: Knowledge, request: pytest.FixtureRequest, folder: Path) -> tuple[dict[str, Any], Any]:
    """The batch imported in one transaction (pipeline.apply) on a database of its own: (counts, rows)."""
    from dbfixtures import fresh_database

    folder.mkdir()
    gen = fresh_database("sqlite", request, folder)
    ref = next(gen)
    try:
        register(ref)
        with ref.session() as s:
            counts = pipeline.apply(s, hl7_batch(kb), "daily+malformed.hl7", "cli").as_dict()
        return counts, stored(ref)
    finally:
        gen.close()


def test_a_chunked_import_gives_what_one_transaction_gives(
    db: Database, kb: Knowledge, small_chunks: None, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    expected, expected_rows = reference_import(kb, request, tmp_path / "reference")
    register(db)
    parsed = hl7_batch(kb)
    summary = run_import(db, kb, parsed).as_dict()
    assert {**summary, "batch_id": None} == {**expected, "batch_id": None}
    assert stored(db) == expected_rows
    counted = ("imported", "duplicates", "corrected", "deleted", "quarantined")
    assert sum(summary[k] for k in counted) == len(parsed.items) + len(parsed.rejects)  # nothing lost
    with db.session() as s:
        batch = s.get(m.ImportBatch, summary["batch_id"])
        assert batch is not None and batch.state == "done" and batch.items_done == len(parsed.items)
        assert batch.counts == summary and batch.finished_at is not None
        pending = select(func.count()).select_from(m.Observation).where(m.Observation.review_state == "pending")
        assert s.scalar(pending) == 0  # every result seen by a re-assessment
    again = run_import(db, kb, hl7_batch(kb)).as_dict()  # idempotent: a finished import run again adds nothing
    assert again["imported"] == 0 and again["duplicates"] == summary["imported"]
    assert again["batch_id"] != summary["batch_id"] and stored(db) == expected_rows


def test_an_interrupted_import_resumes_with_only_what_is_missing(
    db: Database, kb: Knowledge, small_chunks: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    expected, expected_rows = reference_import(kb, request, tmp_path / "reference")
    register(db)
    real = pipeline._apply_observations
    calls = []

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("power cut")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_apply_observations", failing)
    with pytest.raises(RuntimeError, match="power cut"):
        run_import(db, kb, hl7_batch(kb))
    with db.session() as s:
        (batch,) = s.scalars(select(m.ImportBatch))
        assert batch.state == "running" and 0 < batch.items_done < batch.items_total  # type: ignore[operator]
        partial = s.scalar(select(func.count()).select_from(m.Observation))
    assert partial == 12  # three chunks of four committed; the fourth rolled back whole

    monkeypatch.setattr(pipeline, "_apply_observations", real)
    resumed = run_import(db, kb, hl7_batch(kb)).as_dict()
    assert resumed == {**expected, "batch_id": batch.id}  # the same counts as one transaction
    assert stored(db) == expected_rows  # and the same rows: nothing twice, nothing missing
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(m.ImportBatch)) == 1
        assert (
            s.scalar(select(func.count()).select_from(m.Observation).where(m.Observation.review_state == "pending"))
            == 0
        )
        assessed = s.scalar(select(func.count()).select_from(m.AssessmentRow))
    assert assessed == 4  # every patient of the batch re-assessed, including those of the first run


def test_a_read_and_a_write_during_an_import_succeed_quickly(
    db: Database, kb: Knowledge, small_chunks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(db)
    with db.session() as s:
        reader = auth.create_user(s, "reader", "reader-password", "clinician")
        pid = add_patient(s, "READER-1", "Rita Reader").id
    real = pipeline._apply_chunk

    def slow_chunk(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.15)  # each chunk holds the write lock a while, as a big chunk would
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_apply_chunk", slow_chunk)
    done = threading.Event()

    def importer() -> None:
        try:
            run_import(db, kb, hl7_batch(kb))
        finally:
            done.set()

    thread = threading.Thread(target=importer)
    thread.start()
    slowest, rounds = 0.0, 0
    try:
        while not done.is_set() or rounds < 3:
            started = time.perf_counter()
            with db.session() as s:  # a read (audited)...
                s.scalar(select(func.count()).select_from(m.Observation))
                audit(s, reader, "read", "list-observations", pid, channel="api")
            with db.session() as s:  # ... and a write
                add_symptom(s, kb, pid, "rash", date.today(), "clinician")
            slowest = max(slowest, time.perf_counter() - started)
            rounds += 1
    finally:
        thread.join(60)
    assert rounds >= 3 and slowest < 1.0, (rounds, slowest)  # waited at most about one chunk
    with db.session() as s:
        reads = s.scalar(
            select(func.count()).select_from(m.AuditEvent).where(m.AuditEvent.resource == "list-observations")
        )
        assert reads == rounds


def test_reads_ending_at_once_share_group_commits_and_find_their_audit_rows_on_disk(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty reads end while a writer holds the write lock: each read's audit row is committed
    before its unit of work returns; the rows waiting when the writer commits go with its
    transaction, the others in fewer transactions than there are reads (the lead passes from one
    waiting read to the next); and nobody is left holding the lead."""
    db = sqlite_db
    group = db._group
    assert group is not None
    batches: list[int] = []
    real = group._insert

    def counted(batch: list[Any]) -> None:
        batches.append(len(batch))
        real(batch)

    monkeypatch.setattr(group, "_insert", counted)
    holding = threading.Event()

    def writer() -> None:
        with db.session() as s:
            add_patient(s, "GROUP-1", "Gail Group")  # the write lock, held while the reads end
            holding.set()
            time.sleep(0.3)

    thread = threading.Thread(target=writer)
    thread.start()
    assert holding.wait(10)
    path = db.engine.url.database
    assert path

    def read(i: int) -> int:
        with db.session() as s:
            s.scalar(select(func.count()).select_from(m.Patient))
            audit(s, None, "read", f"group-read-{i}", channel="api")
        with sqlite3.connect(path) as raw:  # another connection: committed, not only queued
            found: int = raw.execute(
                "SELECT count(*) FROM audit_log WHERE resource = ?", (f"group-read-{i}",)
            ).fetchone()[0]
        return found

    outcomes = together(40, read)
    thread.join(10)
    assert outcomes == [1] * 40, [repr(o) for o in outcomes if isinstance(o, BaseException)][:3]
    assert sum(batches) < 40 and len(batches) < 40, batches  # some went with the writer's commit
    assert not group.leading and not group.queue


def test_rows_waiting_on_a_write_that_fails_to_commit_are_written_all_the_same(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads queue their audit rows while a writer holds the write lock; the writer takes them
    along and then fails to commit: its write is gone, the reads' rows go back to the group commit
    and are on disk when each read returns."""
    db = sqlite_db
    group = db._group
    assert group is not None
    path = db.engine.url.database
    assert path
    holding, queued = threading.Event(), threading.Event()
    aboard: list[int] = []
    real = group.board

    def board(conn: Any) -> list[Any]:
        riders = real(conn)
        aboard.append(len(riders))
        return riders

    monkeypatch.setattr(group, "board", board)

    class Refused(Exception):
        pass

    def refuse(session: Any) -> None:
        raise Refused()

    def writer() -> BaseException | None:
        try:
            with db.session() as s:
                add_patient(s, "FAIL-1", "Fay Failed")
                holding.set()
                assert queued.wait(10)
                event.listen(s, "before_commit", refuse)  # the commit fails after the rows went aboard
        except Refused as exc:
            return exc
        return None

    def read(i: int) -> int:
        with db.session() as s:
            audit(s, None, "read", f"aboard-{i}", channel="api")
        with sqlite3.connect(path) as raw:
            found: int = raw.execute("SELECT count(*) FROM audit_log WHERE resource = ?", (f"aboard-{i}",)).fetchone()[
                0
            ]
        return found

    with ThreadPoolExecutor(11) as pool:
        failed = pool.submit(writer)
        assert holding.wait(10)
        reads = [pool.submit(read, i) for i in range(10)]
        deadline = time.monotonic() + 10
        while sum(not item.lead for item in group.queue) < 9 and time.monotonic() < deadline:  # one leads
            time.sleep(0.005)
        queued.set()
        assert isinstance(failed.result(20), Refused)
        assert [r.result(20) for r in reads] == [1] * 10
    assert aboard == [9]  # the waiting rows went aboard the failed commit, then back to the group commit
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(m.Patient).where(m.Patient.identifier == "FAIL-1")) == 0
    assert not group.leading and not group.queue


# ---------------------------------------------------------------- the CLI
def azaguard(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("AZAGUARD_DEBUG", "AZAGUARD_DATABASE_URL")}
    exe = Path(sys.executable).with_name("azaguard")
    return subprocess.Popen(
        [str(exe), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**base, **(env or {})},
    )


@pytest.mark.slow
def test_two_cli_imports_at_once_both_finish(sqlite_db: Database, tmp_path: Path) -> None:
    register(sqlite_db)
    url = sqlite_db.url
    runs = [
        azaguard("import", str(HL7 / name), "--database", url, "--quiet", cwd=tmp_path)
        for name in ("daily_batch.hl7", "malformed.hl7")
    ]
    results = [(p.wait(120), *p.communicate()) for p in runs]
    for code, out, err in results:
        assert code == 0 and err == "", (code, out, err)
    assert "imported 27" in results[0][1] and "quarantined 13" in results[1][1]


@pytest.mark.slow
def test_a_cli_import_into_a_busy_database_says_so(sqlite_db: Database, tmp_path: Path) -> None:
    register(sqlite_db)
    path = sqlite_db.url.removeprefix("sqlite:///")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another program holds the write lock throughout
    try:
        run = azaguard(
            "import", str(HL7 / "daily_batch.hl7"), "--database", sqlite_db.url, "--quiet", cwd=tmp_path,
            env={"AZAGUARD_BUSY_TIMEOUT": "1"},
        )  # fmt: skip
        code = run.wait(60)
        out, err = run.communicate()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == 75, (code, out, err)
    assert err.startswith("error: the database is busy") and "run the same command again" in err
    assert "Traceback" not in err and "internal error" not in err
