"""Refusals tell nothing and are all on the record (issue 7, limits and hardening):

- an id a user may not see is answered exactly like one that does not exist (404, same body), on the
  REST API and the pages, and the refusal is still audited as a denial with the patient's id;
- 401s (no, unknown, expired or revoked token; a stale session cookie), CSRF refusals and failed
  writes leave audit rows - a failed write one that says so (`write-failed`), written after the
  rollback - with no patient data in them or in any log line, and an audit row that cannot be
  written never turns the answer into a 500;
- the web login page answers a lock-out (429) or a busy password check (503) as HTML, with
  Retry-After; the API keeps its JSON.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from dbfixtures import fresh_database
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from azaguard import auth, service
from azaguard import worklist as wl
from azaguard.app import create_app
from azaguard.knowledge import Knowledge
from azaguard.store import models as m
from azaguard.store.db import Database, DatabaseBusy
from azaguard.store.writes import add_lab, add_patient
from azaguard.web.views import COOKIE, LOGIN_CSRF

WHEN = (date.today() - timedelta(days=2)).isoformat()
NO_ROW = 987_654_321  # no patient or finding has this id
A_NAME, A_IDENT = "Ada Refusaltest", "REF-A-31337"
B_NAME, B_IDENT, B_VALUE = "Boris Hiddenname", "REF-B-77001", "0.43"
SECRETS = (A_NAME, A_IDENT, B_NAME, B_IDENT)


@dataclass
class Clinic:
    db: Database
    api: TestClient
    web: dict[str, TestClient]
    tokens: dict[str, str]
    csrf: dict[str, str]
    ids: dict[str, int]

    def bearer(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def mark(self) -> int:
        with self.db.session() as s:
            return s.scalar(select(func.max(m.AuditEvent.id))) or 0

    def audit_since(self, mark: int) -> list[m.AuditEvent]:
        with self.db.session() as s:
            return list(s.scalars(select(m.AuditEvent).where(m.AuditEvent.id > mark).order_by(m.AuditEvent.id)))

    def count(self, model: Any) -> int:
        with self.db.session() as s:
            return s.scalar(select(func.count()).select_from(model)) or 0


@pytest.fixture(scope="module")
def clinic(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kb: Knowledge) -> Iterator[Clinic]:
    gen = fresh_database("sqlite", request, tmp_path_factory.mktemp("refusals"))
    db = next(gen)
    with db.session() as s:
        a = add_patient(s, A_IDENT, A_NAME, "1966-04-05", "female")
        b = add_patient(s, B_IDENT, B_NAME, "1959-11-12", "male")
        for p in (a, b):
            add_lab(s, kb, p.id, "neutrophils", float(B_VALUE), "10*9/L", WHEN)
            wl.refresh_patient(s, kb, p.id)
        finding = {
            p.id: next(f.id for f in wl.open_findings(s, p.id) if f.code == "lab-neutrophils-low") for p in (a, b)
        }
        users = {
            "clin": auth.create_user(s, "clin", "clinician-password", "clinician"),
            "ada": auth.create_user(s, "ada", "patient-password-a", "patient", A_IDENT),
        }
        tokens = {k: auth.create_api_token(s, u, "tests") for k, u in users.items()}
        sessions = {k: auth.create_session(s, u) for k, u in users.items()}
        ids = {"a": a.id, "b": b.id, "fa": finding[a.id], "fb": finding[b.id]}
    app = create_app(db, kb)
    web = {k: TestClient(app, follow_redirects=False, cookies={COOKIE: tok}) for k, (tok, _) in sessions.items()}
    web["anon"] = TestClient(app, follow_redirects=False)
    yield Clinic(db, TestClient(app), web, tokens, {k: v[1] for k, v in sessions.items()}, ids)
    gen.close()


def rows_of(rows: list[m.AuditEvent], action: str) -> list[tuple[str, str, int | None, str, str]]:
    return [(r.username, r.resource, r.patient_id, r.channel, r.detail) for r in rows if r.action == action]


def assert_clean(text: str) -> None:
    for secret in (*SECRETS, B_VALUE):
        assert secret not in text, f"{secret!r} leaked"


# ---------------------------------------------------------------- 1. one 404 for what may not be seen
API_READS = [
    "/api/v1/patients/{p}",
    "/api/v1/patients/{p}/observations",
    "/api/v1/patients/{p}/assessment",
    "/api/v1/patients/{p}/findings",
]


@pytest.mark.parametrize("path", API_READS)
def test_api_answers_another_patients_id_exactly_like_a_missing_one(clinic: Clinic, path: str) -> None:
    mark = clinic.mark()
    other = clinic.api.get(path.format(p=clinic.ids["b"]), headers=clinic.bearer("ada"))
    missing = clinic.api.get(path.format(p=NO_ROW), headers=clinic.bearer("ada"))
    assert other.status_code == missing.status_code == 404
    assert other.content == missing.content
    assert other.json() == {"error": {"status": 404, "message": service.NO_PATIENT}}
    assert_clean(other.text)
    rows = clinic.audit_since(mark)
    assert [(u, pid, ch) for u, _, pid, ch, _ in rows_of(rows, "denied")] == [("ada", clinic.ids["b"], "api")]
    assert [(u, pid, d) for u, _, pid, _, d in rows_of(rows, "not-found")] == [("ada", None, f"patient {NO_ROW}")]


def test_api_answers_another_patients_finding_exactly_like_a_missing_one(clinic: Clinic) -> None:
    mark, before = clinic.mark(), clinic.count(m.Review)
    body = {"outcome": "patient-contacted", "note": "phoned"}
    other = clinic.api.post(f"/api/v1/findings/{clinic.ids['fb']}/reviews", json=body, headers=clinic.bearer("ada"))
    missing = clinic.api.post(f"/api/v1/findings/{NO_ROW}/reviews", json=body, headers=clinic.bearer("ada"))
    assert other.status_code == missing.status_code == 404 and other.content == missing.content
    assert other.json()["error"]["message"] == service.NO_FINDING
    # The patient's own finding exists for them: there the refusal is the role's (403)
    own = clinic.api.post(f"/api/v1/findings/{clinic.ids['fa']}/reviews", json=body, headers=clinic.bearer("ada"))
    assert own.status_code == 403
    assert clinic.count(m.Review) == before
    denied = rows_of(clinic.audit_since(mark), "denied")
    assert [(u, pid) for u, _, pid, _, _ in denied] == [("ada", clinic.ids["b"]), ("ada", clinic.ids["a"])]


def test_a_clinician_asking_for_a_missing_patient_gets_the_same_message_and_is_audited(clinic: Clinic) -> None:
    mark = clinic.mark()
    r = clinic.api.get(f"/api/v1/patients/{NO_ROW}", headers=clinic.bearer("clin"))
    assert r.status_code == 404 and r.json()["error"]["message"] == service.NO_PATIENT
    assert rows_of(clinic.audit_since(mark), "not-found") == [
        ("clin", "view-patient", None, "api", f"patient {NO_ROW}")
    ]


WEB_TARGETS = [
    ("GET", "/patients/{p}"),
    ("GET", "/patients/{p}/charts.svg"),
    ("POST", "/patients/{p}/lab"),
    ("POST", "/patients/{p}/team"),
    ("POST", "/findings/{f}/review"),
]


@pytest.mark.parametrize(("method", "path"), WEB_TARGETS)
def test_web_answers_another_patients_id_exactly_like_a_missing_one(clinic: Clinic, method: str, path: str) -> None:
    web = clinic.web["ada"]
    form = {"csrf": clinic.csrf["ada"], "analyte": "wbc", "value": "5", "unit": "10*9/L", "date": WHEN}
    form |= {"team": "gp", "outcome": "patient-contacted"}
    mark = clinic.mark()

    def ask(pid: int, fid: int) -> Any:
        url = path.format(p=pid, f=fid)
        return web.post(url, data=form) if method == "POST" else web.get(url)

    other, missing = ask(clinic.ids["b"], clinic.ids["fb"]), ask(NO_ROW, NO_ROW)
    assert other.status_code == missing.status_code == 404, (other.status_code, missing.status_code)
    assert other.text == missing.text and other.headers["content-type"].startswith("text/html")
    assert "Not found" in other.text
    assert_clean(other.text)
    rows = clinic.audit_since(mark)
    assert [(u, pid, ch) for u, _, pid, ch, _ in rows_of(rows, "denied")] == [("ada", clinic.ids["b"], "web")]
    assert len(rows_of(rows, "not-found")) == 1


# ---------------------------------------------------------------- 2. 401s, CSRF refusals and failed writes are audited
def test_every_kind_of_bad_token_is_a_401_audited_without_patient_data(
    clinic: Clinic, caplog: pytest.LogCaptureFixture
) -> None:
    with clinic.db.session() as s:
        user = s.scalar(select(m.User).where(m.User.username == "clin"))
        assert user is not None
        revoked = auth.create_api_token(s, user, "to revoke")
        expired = auth.create_api_token(s, user, "to expire")
        auth.revoke_api_token(s, token=revoked)
        s.execute(
            update(m.ApiToken)
            .where(m.ApiToken.label == "to expire")
            .values(expires_at=datetime.now() - timedelta(minutes=1))
        )
    path = f"/api/v1/patients/{clinic.ids['b']}"
    kinds = {"none": {}, "garbage": {"Authorization": "Bearer azg_not-a-token"}}
    kinds |= {"revoked": {"Authorization": f"Bearer {revoked}"}, "expired": {"Authorization": f"Bearer {expired}"}}
    mark = clinic.mark()
    with caplog.at_level(logging.DEBUG):
        for headers in kinds.values():
            r = clinic.api.get(path, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["status"] == 401
            assert_clean(r.text)
    rows = clinic.audit_since(mark)
    assert [e.action for e in rows] == ["unauthenticated"] * 4
    for e in rows:
        assert (e.username, e.user_id, e.patient_id, e.channel) == ("(anonymous)", None, None, "api")
        assert e.resource == "GET /api/v1/patients/{patient_id}"  # the route template, not the id asked for
        assert revoked not in e.detail and expired not in e.detail and "azg_" not in e.detail
    assert [e.detail for e in rows] == ["no bearer token"] + ["unknown, expired or revoked bearer token"] * 3
    assert_clean(caplog.text)
    assert revoked not in caplog.text and expired not in caplog.text


def test_a_stale_session_cookie_is_audited_but_a_browser_without_one_is_not(clinic: Clinic) -> None:
    mark = clinic.mark()
    assert clinic.web["anon"].get("/worklist").headers["location"] == "/login"
    assert clinic.audit_since(mark) == []
    stale = TestClient(clinic.web["anon"].app, follow_redirects=False, cookies={COOKIE: "no-such-session"})
    assert stale.get(f"/patients/{clinic.ids['b']}").headers["location"] == "/login"
    assert rows_of(clinic.audit_since(mark), "unauthenticated") == [
        ("(anonymous)", "GET /patients/{patient_id}", None, "web", "unknown or expired session")
    ]


def test_an_audit_row_that_cannot_be_written_never_turns_a_refusal_into_a_500(
    clinic: Clinic, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    group = clinic.db._group
    assert group is not None

    def busy(rows: Any) -> None:
        raise DatabaseBusy("held by another program")

    monkeypatch.setattr(group, "write", busy)
    with caplog.at_level(logging.ERROR, logger="azaguard.db"):
        r = clinic.api.get(f"/api/v1/patients/{clinic.ids['b']}", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert "could not write 1 kept row(s) after a rollback: DatabaseBusy" in caplog.text
    assert_clean(caplog.text)


@pytest.mark.parametrize("variant", ["missing", "wrong"])
def test_a_csrf_refusal_is_audited_with_the_record_it_aimed_at(clinic: Clinic, variant: str) -> None:
    form = {"analyte": "wbc", "value": "5.0", "unit": "10*9/L", "date": WHEN}
    if variant == "wrong":
        form["csrf"] = clinic.csrf["clin"][:-4] + "Zzé!"  # not even ASCII: still a 403, never a 500
    mark, before = clinic.mark(), clinic.count(m.Observation)
    r = clinic.web["clin"].post(f"/patients/{clinic.ids['a']}/lab", data=form)
    assert r.status_code == 403 and "expired" in r.text
    assert clinic.count(m.Observation) == before
    assert rows_of(clinic.audit_since(mark), "denied") == [
        ("clin", "form lab", clinic.ids["a"], "web", "CSRF token missing or wrong")
    ]


def test_a_login_form_without_its_csrf_token_is_audited(clinic: Clinic) -> None:
    client = TestClient(clinic.web["anon"].app, follow_redirects=False)
    mark = clinic.mark()
    r = client.post("/login", data={"username": "clin", "password": "clinician-password", "login_csrf": "x"})
    assert r.status_code == 400 and COOKIE not in r.cookies
    assert rows_of(clinic.audit_since(mark), "denied") == [
        ("(anonymous)", "web-login", None, "web", "login form CSRF token missing or wrong")
    ]


def test_a_failed_api_write_leaves_a_write_failed_row_after_the_rollback(
    clinic: Clinic, caplog: pytest.LogCaptureFixture
) -> None:
    mark, before = clinic.mark(), clinic.count(m.Observation)
    body = {"analyte": "wbc", "value": 7.25, "unit": "furlongs", "date": WHEN}
    with caplog.at_level(logging.DEBUG):
        r = clinic.api.post(
            f"/api/v1/patients/{clinic.ids['a']}/observations", json=body, headers=clinic.bearer("clin")
        )
    assert r.status_code == 400
    assert clinic.count(m.Observation) == before  # the write rolled back...
    rows = clinic.audit_since(mark)  # ...its audit row did not
    assert [(e.action, e.resource, e.patient_id, e.channel, e.detail) for e in rows] == [
        ("write-failed", "add-lab", clinic.ids["a"], "api", "failed: FormError (unit)")
    ]
    assert "furlongs" not in caplog.text and "7.25" not in caplog.text
    assert_clean(caplog.text)


def test_a_failed_web_form_is_audited_as_failed_not_as_a_write(clinic: Clinic) -> None:
    form = {"csrf": clinic.csrf["clin"], "analyte": "wbc", "value": "abc", "unit": "10*9/L", "date": WHEN}
    mark, before = clinic.mark(), clinic.count(m.Observation)
    r = clinic.web["clin"].post(f"/patients/{clinic.ids['a']}/lab", data=form)
    assert r.status_code == 400  # the form comes back marked; the request itself commits
    assert clinic.count(m.Observation) == before
    rows = clinic.audit_since(mark)
    assert rows_of(rows, "write") == []
    assert rows_of(rows, "write-failed") == [("clin", "add-lab", clinic.ids["a"], "web", "failed: FormError (value)")]


def test_a_write_whose_unit_of_work_fails_after_it_is_audited_as_failed(clinic: Clinic, kb: Knowledge) -> None:
    with clinic.db.session() as s:
        user = s.scalar(select(m.User).where(m.User.username == "clin"))
        assert user is not None
        clin = service.principal_of(user)
    mark, before = clinic.mark(), clinic.count(m.Immunization)
    with pytest.raises(RuntimeError), clinic.db.session() as s:
        service.add_vaccine(s, kb, clin, clinic.ids["a"], "Influenza vaccine", "given", WHEN, "cli")
        raise RuntimeError("the commit never happens")  # e.g. the database failing at commit time
    assert clinic.count(m.Immunization) == before
    assert [(e.action, e.resource, e.patient_id) for e in clinic.audit_since(mark)] == [
        ("write-failed", "add-vaccine", clinic.ids["a"])
    ]


# ---------------------------------------------------------------- 3. the web login page answers 429 and 503 as HTML
@pytest.fixture
def login_client(sqlite_db: Database, kb: Knowledge) -> Iterator[tuple[TestClient, Database]]:
    with sqlite_db.session() as s:
        auth.create_user(s, "nurse", "correct-horse", "clinician")
    yield TestClient(create_app(sqlite_db, kb), follow_redirects=False), sqlite_db


def web_login(client: TestClient, password: str = "correct-horse") -> Any:
    client.get("/login")
    token = client.cookies[LOGIN_CSRF]
    return client.post("/login", data={"username": "nurse", "password": password, "login_csrf": token})


def lock(db: Database, seconds: int) -> None:
    """Lock the username at the test client's address, as failed logins would."""
    stamp = datetime.now()
    with db.session() as s:
        s.add(
            m.LoginThrottle(
                key="ua:nurse|testclient",
                failures=auth.MAX_FAILED_LOGINS,
                window_start=stamp,
                locked_until=stamp + timedelta(seconds=seconds),
                lockouts=1,
                last_lockout=stamp,
            )
        )


def assert_login_page(r: Any, status: int, says: str) -> None:
    assert r.status_code == status
    assert r.headers["content-type"].startswith("text/html")
    assert says in r.text and 'name="login_csrf"' in r.text and 'name="password"' in r.text
    assert int(r.headers["retry-after"]) >= 1


def test_web_login_lock_out_is_the_login_page_with_429(login_client: tuple[TestClient, Database]) -> None:
    client, db = login_client
    lock(db, 300)
    r = web_login(client)
    assert_login_page(r, 429, "Too many failed logins")
    assert r.headers["retry-after"] == "900"


def test_web_login_locked_meanwhile_is_the_login_page_with_429(
    login_client: tuple[TestClient, Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock-out counted with the attempt itself (auth.TooManyAttempts), not the quick check before."""
    client, db = login_client
    lock(db, 150)
    monkeypatch.setattr(auth, "login_locked", lambda *args: False)
    r = web_login(client)
    assert_login_page(r, 429, "Try again in 3 minutes.")
    assert 140 <= int(r.headers["retry-after"]) <= 151
    api = client.post("/api/v1/token", json={"username": "nurse", "password": "correct-horse"})
    assert api.status_code == 429 and api.json()["error"]["status"] == 429  # the API keeps JSON


def test_web_login_with_every_password_check_busy_is_the_login_page_with_503(
    login_client: tuple[TestClient, Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = login_client
    monkeypatch.setattr(auth, "_argon2_slots", threading.BoundedSemaphore(1))
    monkeypatch.setattr(auth, "ARGON2_WAIT", 0.01)
    assert auth._argon2_slots.acquire()  # every slot taken
    r = web_login(client)
    assert_login_page(r, 503, "Try again in a few seconds.")
    api = client.post("/api/v1/token", json={"username": "nurse", "password": "correct-horse"})
    assert api.status_code == 503 and api.json()["error"]["status"] == 503 and api.headers["retry-after"] == "1"
