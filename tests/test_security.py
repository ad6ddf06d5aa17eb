"""Security properties: hashed secrets, CSRF on every web form and on login, sessions that end, no patient data in
the application logs, security headers and cookie flags, and `azaguard user add` as a real subprocess.

Runs on a SQLite file (the byte-level checks read it); access rules on both databases are in test_access.py.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from dbfixtures import fresh_database
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from azaguard import auth
from azaguard import worklist as wl
from azaguard.app import Settings, create_app
from azaguard.ingest import parse_text
from azaguard.knowledge import Knowledge
from azaguard.service import import_parsed
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.store.writes import add_lab, add_patient, change_dose
from azaguard.web.views import COOKIE, FORMS, LOGIN_CSRF

TODAY = date.today()
WHEN = (TODAY - timedelta(days=2)).isoformat()
PASSWORDS = {"clin": "clinician-secret-pw", "boss": "admin-secret-pw-9", "alma": "patient-secret-pw-3"}
# Patient data that must never reach a log line.
NAME, FAMILY, IDENT, BIRTH = "Zebedee Quillfeather", "Quillfeather", "SEC-7731-XQ", "1961-04-27"
NEW_NAME, NEW_IDENT = "Ottoline Wraxhall", "SEC-5590-ZZ"
VALUE, FREE_TEXT = "4.321", "Zebedee's toes tingle at night"
SECRETS = [NAME, FAMILY, IDENT, BIRTH, NEW_NAME, "Wraxhall", NEW_IDENT, VALUE, FREE_TEXT, "tingle"]


def days_ago(n: int) -> str:
    return (TODAY - timedelta(days=n)).isoformat()


@dataclass
class Site:
    db: Database
    path: Path
    app: Any
    kb: Knowledge
    ids: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> tuple[Any, ...]:
        """Everything a refused form could have changed."""
        with self.db.session() as s:
            tables = (
                m.Observation, m.Medication, m.Immunization, m.Symptom, m.Review, m.ImportBatch, m.Patient,
                m.FollowUpDismissal, m.Document, m.ReminderPref,
            )  # fmt: skip
            counts = tuple(s.scalar(select(func.count()).select_from(t)) or 0 for t in tables)
            teams = tuple(s.execute(select(m.Patient.monitoring_team, m.Patient.owner_id).order_by(m.Patient.id)))
            findings = tuple(s.scalars(select(m.FindingRow.state).order_by(m.FindingRow.id)))
            quarantine = tuple(s.scalars(select(m.QuarantineItem.state).order_by(m.QuarantineItem.id)))
            return counts, teams, findings, quarantine

    def session(self, who: str) -> tuple[TestClient, str]:
        """A logged-in web client (session made directly: argon2 is slow) and its CSRF token."""
        with self.db.session() as s:
            user = s.scalar(select(m.User).where(m.User.username == who))
            assert user is not None
            token, csrf = auth.create_session(s, user)
        return TestClient(self.app, follow_redirects=False, cookies={COOKIE: token}), csrf

    def raw_bytes(self) -> bytes:
        """The database as stored on disk (main file, write-ahead log and shared memory)."""
        self.db.engine.dispose()
        return b"".join(p.read_bytes() for p in self.path.parent.glob(self.path.name + "*"))


@pytest.fixture(scope="module")
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kb: Knowledge) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("security")
    gen = fresh_database("sqlite", request, folder)
    db = next(gen)
    with db.session() as s:
        p = add_patient(s, IDENT, NAME, BIRTH, "male")
        change_dose(s, kb, p.id, 100, days_ago(100))  # on azathioprine, so the hold form can withhold it
        add_lab(s, kb, p.id, "neutrophils", 0.8, "10*9/L", days_ago(4))
        wl.refresh_patient(s, kb, p.id)
        # A second patient whose open finding only the review form touches (the other forms change the first).
        r = add_patient(s, "SEC-REVIEW-1", "Rhoda Reviewform", "1950-01-01", "female")
        add_lab(s, kb, r.id, "neutrophils", 0.8, "10*9/L", days_ago(4))
        wl.refresh_patient(s, kb, r.id)
        fid = next(f.id for f in wl.open_findings(s, r.id) if f.code == "lab-neutrophils-low")
        auth.create_user(s, "clin", PASSWORDS["clin"], "clinician")
        auth.create_user(s, "boss", PASSWORDS["boss"], "admin")
        auth.create_user(s, "alma", PASSWORDS["alma"], "patient", IDENT)
        csv = "patient_id,date,code,value,unit\nSEC-NOBODY,2025-01-01,751-8,2.0,10*9/L\n"
        import_parsed(s, kb, None, parse_text(csv, kb, "csv", "q.csv"), "q.csv", "cli")
        qid = s.scalar(select(func.max(m.QuarantineItem.id)))
        assert qid is not None
        ids = {"p": p.id, "f": fid, "q": qid}
    yield Site(db, folder / "test.db", create_app(db, kb), kb, ids)
    gen.close()


# ---------------------------------------------------------------- secrets at rest
def test_passwords_are_stored_only_as_argon2_hashes(site: Site) -> None:
    with site.db.session() as s:
        users = {u.username: u.password_hash for u in s.scalars(select(m.User))}
    hasher = PasswordHasher()
    for name, password in PASSWORDS.items():
        stored = users[name]
        assert stored.startswith("$argon2id$") and password not in stored
        assert hasher.verify(stored, password)
    raw = site.raw_bytes()
    for password in PASSWORDS.values():
        assert password.encode() not in raw, "a plaintext password is in the database file"


def test_api_tokens_and_session_tokens_are_stored_only_as_hashes(site: Site) -> None:
    client = TestClient(site.app, follow_redirects=False)
    token = client.post("/api/v1/token", json={"username": "clin", "password": PASSWORDS["clin"]}).json()["token"]
    assert client.get("/api/v1/patients", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    cookie = _login(client, "alma", PASSWORDS["alma"])
    with site.db.session() as s:
        token_rows = list(s.scalars(select(m.ApiToken.token_hash)))
        session_rows = list(s.scalars(select(m.WebSession.token_hash)))
    assert hashlib.sha256(token.encode()).hexdigest() in token_rows
    assert hashlib.sha256(cookie.encode()).hexdigest() in session_rows
    raw = site.raw_bytes()
    assert token.encode() not in raw and token.removeprefix("azg_").encode() not in raw
    assert cookie.encode() not in raw


# ---------------------------------------------------------------- login, logout and CSRF
def _login(client: TestClient, username: str, password: str) -> str:
    """The real login flow; returns the session cookie."""
    page = client.get("/login")
    assert page.status_code == 200
    token = client.cookies[LOGIN_CSRF]
    assert f'name="login_csrf" value="{token}"' in page.text
    r = client.post("/login", data={"username": username, "password": password, "login_csrf": token})
    assert r.status_code == 303 and r.headers["location"] == "/", (r.status_code, r.text[:200])
    return client.cookies[COOKIE]


def _session_count(site: Site) -> int:
    with site.db.session() as s:
        return s.scalar(select(func.count()).select_from(m.WebSession)) or 0


def test_login_page_sets_a_strict_httponly_csrf_cookie(site: Site) -> None:
    r = TestClient(site.app).get("/login")
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith(f"{LOGIN_CSRF}="))
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()


@pytest.mark.parametrize("variant", ["no-cookie", "no-field", "wrong-field", "other-browsers-token"])
def test_login_without_the_matching_csrf_pair_is_refused(site: Site, variant: str) -> None:
    client, other = TestClient(site.app, follow_redirects=False), TestClient(site.app)
    client.get("/login")
    other.get("/login")
    mine, theirs = client.cookies[LOGIN_CSRF], other.cookies[LOGIN_CSRF]
    form = {"username": "clin", "password": PASSWORDS["clin"], "login_csrf": mine}
    if variant == "no-cookie":
        client.cookies.clear()
    elif variant == "no-field":
        del form["login_csrf"]
    elif variant == "wrong-field":
        form["login_csrf"] = "x" * len(mine)
    else:
        form["login_csrf"] = theirs  # a real token, but for another browser
    before = _session_count(site)
    r = client.post("/login", data=form)
    assert r.status_code == 400 and "reload the page" in r.text.lower()
    assert COOKIE not in client.cookies and _session_count(site) == before


def test_login_with_csrf_sets_a_safe_session_cookie_and_a_wrong_password_does_not(site: Site) -> None:
    client = TestClient(site.app, follow_redirects=False)
    client.get("/login")
    r = client.post("/login", data={"username": "clin", "password": "wrong", "login_csrf": client.cookies[LOGIN_CSRF]})
    assert r.status_code == 401 and COOKIE not in client.cookies
    client.get("/login")
    r = client.post(
        "/login", data={"username": "clin", "password": PASSWORDS["clin"], "login_csrf": client.cookies[LOGIN_CSRF]}
    )
    assert r.status_code == 303
    cookies = r.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith(f"{COOKIE}=")).lower()
    assert "httponly" in session and "samesite=lax" in session and "path=/" in session and "secure" not in session
    assert any(c.startswith(f'{LOGIN_CSRF}=""') or "max-age=0" in c.lower() for c in cookies if LOGIN_CSRF in c)
    assert client.get("/worklist").status_code == 200


def test_cookies_are_secure_when_configured(site: Site) -> None:
    client = TestClient(create_app(site.db, site.kb, Settings(secure_cookies=True)), follow_redirects=False)
    r = client.get("/login")
    assert "secure" in r.headers["set-cookie"].lower()
    token = r.cookies[LOGIN_CSRF]
    client.cookies.set(LOGIN_CSRF, token)
    r = client.post("/login", data={"username": "clin", "password": PASSWORDS["clin"], "login_csrf": token})
    session = next(c for c in r.headers.get_list("set-cookie") if c.startswith(f"{COOKIE}="))
    assert "secure" in session.lower()


def test_logout_ends_the_session(site: Site) -> None:
    client = TestClient(site.app, follow_redirects=False)
    cookie = _login(client, "clin", PASSWORDS["clin"])
    page = client.get("/worklist")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert page.status_code == 200 and csrf
    r = client.post("/logout", data={"csrf": csrf.group(1)})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert any(c.startswith(f"{COOKIE}=") for c in r.headers.get_list("set-cookie"))
    with site.db.session() as s:
        digest = hashlib.sha256(cookie.encode()).hexdigest()
        assert s.scalar(select(m.WebSession).where(m.WebSession.token_hash == digest)) is None
    # The old cookie, replayed, no longer works.
    replay = TestClient(site.app, follow_redirects=False, cookies={COOKIE: cookie})
    assert replay.get("/worklist").status_code == 303
    assert replay.get("/worklist").headers["location"] == "/login"


# Every state-changing web route: who posts to it and with what (a valid form apart from the CSRF field).
CSRF_FORMS: dict[str, tuple[str, str, dict[str, str]]] = {
    **{
        f"form-{name}": ("clin", "/patients/{p}/" + name, body)
        for name, body in {
            "lab": {"analyte": "wbc", "value": "5", "unit": "10*9/L", "date": WHEN},
            "dose": {"mg_per_day": "50", "start": WHEN},
            "medicine": {"name": "Allopurinol 100 mg", "status": "draft"},
            "vaccine": {"name": "Influenza", "status": "given", "date": WHEN},
            "symptom": {"symptom": "fever", "date": WHEN},
            "team": {"team": "gp"},
            "hold": {"reason": "infection"},
            "panel": {
                "panel": "FBC",
                "date": WHEN,
                "value-wbc": "5.1",
                "value-neutrophils": "3.2",
                "value-platelets": "250",
            },
            # the follow-up FBC the fixture's low neutrophil count (4 days ago) opens
            "follow-up": {"key": f"FBC|{days_ago(4)}", "reason": "repeated elsewhere"},
        }.items()
    },
    "review": ("clin", "/findings/{f}/review", {"outcome": "withheld", "note": "held"}),
    "my-symptom": ("alma", "/me/symptom", {"symptom": "fever", "how_bad": "moderate", "since": WHEN}),
    "my-reminders": ("alma", "/me/reminders", {"channel": "email", "email": "alma@example.org"}),
    "reprocess": ("boss", "/quarantine/{q}/reprocess", {}),
    "discard": ("boss", "/quarantine/{q}/discard", {"reason": "junk"}),
    "import": ("clin", "/import", {}),
    "logout": ("clin", "/logout", {}),
    "letters": ("clin", "/patients/{p}/letters", {"recipient": "gp"}),
    "letters-batch": ("clin", "/letters/batch", {}),
    "owner": ("clin", "/patients/{p}/owner", {"username": "clin"}),  # claim the patient
}
# Which route template each case covers (for the completeness check below).
CSRF_ROUTE = {
    "review": "/findings/{finding_id}/review",
    "my-symptom": "/me/symptom",
    "my-reminders": "/me/reminders",
    "reprocess": "/quarantine/{item_id}/{verb}",
    "discard": "/quarantine/{item_id}/{verb}",
    "import": "/import",
    "logout": "/logout",
    "letters": "/patients/{patient_id}/letters",
    "letters-batch": "/letters/batch",
    "owner": "/patients/{patient_id}/owner",
}


# POST routes that take no browser cookie, so no CSRF token: each call carries its own credential
# (CDS Hooks: the EHR's signed JWT, tests/test_cds_hooks.py; FHIR: a bearer token, and every write is a 405).
TOKEN_ROUTES = ("/cds-services/", "/fhir/")


def test_every_web_post_route_is_in_the_csrf_table(site: Site) -> None:
    posts = {
        r.path or ""
        for r in iter_route_contexts(site.app.routes)
        if "POST" in (r.methods or ()) and "/api/" not in (r.path or "") and not (r.path or "").startswith(TOKEN_ROUTES)
    }
    covered = {CSRF_ROUTE.get(k, "/patients/{patient_id}/{form_name}") for k in CSRF_FORMS} | {"/login"}
    assert posts == covered, f"web POST routes without a CSRF test: {sorted(posts - covered)}"
    assert {k.removeprefix("form-") for k in CSRF_FORMS if k.startswith("form-")} == {*FORMS, "team"}


@pytest.mark.parametrize("variant", ["missing", "wrong", "another-sessions"])
@pytest.mark.parametrize("case", sorted(CSRF_FORMS))
def test_a_web_post_without_the_sessions_csrf_token_changes_nothing(site: Site, case: str, variant: str) -> None:
    who, path, body = CSRF_FORMS[case]
    client, csrf = site.session(who)
    _, others = site.session("boss" if who != "boss" else "clin")
    form = dict(body)
    if variant == "wrong":
        form["csrf"] = csrf[:-4] + "AAAA"
    elif variant == "another-sessions":
        form["csrf"] = others  # valid, but for someone else's session
    before = site.snapshot()
    url = path.format(p=site.ids["p"], f=site.ids["f"], q=site.ids["q"])
    files = {"file": ("lab.csv", f"patient_id,date,code,value,unit\n{IDENT},{WHEN},751-8,3,10*9/L\n", "text/csv")}
    r = client.post(url, data=form, files=files if case == "import" else None)
    assert r.status_code == 403, (r.status_code, r.text[:300])
    assert "expired" in r.text
    assert site.snapshot() == before, "a form without its CSRF token changed data"
    assert client.get("/guide").status_code == 200  # and the session is still alive (logout did not happen)
    # Once per form: the same post with the session's token is accepted, so the refusal above was the CSRF check.
    if variant == "missing" and case != "logout":
        r = client.post(url, data={**body, "csrf": csrf}, files=files if case == "import" else None)
        assert r.status_code in (200, 303), (r.status_code, r.text[:300])


# ---------------------------------------------------------------- headers
def test_security_headers_on_every_kind_of_response(site: Site) -> None:
    client, _ = site.session("clin")
    token = TestClient(site.app).post("/api/v1/token", json={"username": "clin", "password": PASSWORDS["clin"]})
    bearer = {"Authorization": f"Bearer {token.json()['token']}"}
    responses = {
        "api 200": client.get("/api/v1/patients", headers=bearer),
        "api 401": client.get("/api/v1/patients"),
        "api 404": client.get("/api/v1/nothing", headers=bearer),
        "api 422": client.get("/api/v1/patients/x", headers=bearer),
        "openapi": client.get("/openapi.json"),
        "web page": client.get("/worklist"),
        "web redirect": client.get("/"),
        "web 403": client.get("/audit"),
        "web 404": client.get("/nothing"),
        "login page": TestClient(site.app).get("/login"),
        "static": client.get("/static/style.css"),
    }
    expected = {
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
        "cache-control": "no-store",
    }
    for what, r in responses.items():
        for header, value in expected.items():
            assert r.headers.get(header) == value, f"{what} ({r.status_code}): {header}={r.headers.get(header)}"


def test_security_headers_on_a_server_error(site: Site) -> None:
    app = create_app(site.db, site.kb)

    def boom() -> None:
        raise RuntimeError("boom")

    app.add_api_route("/api/v1/boom", boom)
    r = TestClient(app, raise_server_exceptions=False).get("/api/v1/boom")
    assert r.status_code == 500 and r.json() == {"error": {"status": 500, "message": "internal error"}}
    assert r.headers.get("x-content-type-options") == "nosniff" and r.headers.get("cache-control") == "no-store"


# ---------------------------------------------------------------- logs
# `azaguard serve` in a subprocess, as an operator runs it, with the azaguard logger at DEBUG and uvicorn raised
# from the serve command's "warning" to "debug" (its other options, the access log switched off among them,
# kept): everything either logger writes goes to one file, which must never hold patient data. Root logging is
# left alone, as in production (a root DEBUG handler would also switch on SQLAlchemy's SQL echo).
SERVE = """
import logging, sys
import uvicorn
import azaguard.app
from sqlalchemy.exc import DataError

handler = logging.StreamHandler(sys.stderr)
handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
logger = logging.getLogger("azaguard")
logger.setLevel(logging.DEBUG)
logger.addHandler(handler)


def db_error():  # stands for any unexpected database error: SQLAlchemy puts the parameters in its message
    raise DataError("SELECT * FROM patients WHERE name = %(name)s", {"name": sys.argv[3]}, ValueError("bad byte"))


real_create_app = azaguard.app.create_app


def create_app(*args, **kwargs):
    app = real_create_app(*args, **kwargs)
    app.add_api_route("/api/v1/test-only-db-error", db_error)
    return app


azaguard.app.create_app = create_app
real_run = uvicorn.run


def run(app, **options):
    print("serve options:", sorted(options.items()), flush=True)
    real_run(app, **{**options, "log_level": "debug"})


uvicorn.run = run
from azaguard.cli import main

sys.exit(main(["serve", "--database", sys.argv[1], "--port", sys.argv[2]]))
"""


@dataclass
class Server:
    url: str
    log: Path

    def log_since(self, offset: int) -> str:
        time.sleep(0.3)  # the server thread writes its last lines after the response
        return self.log.read_text(errors="replace")[offset:]

    def mark(self) -> int:
        return len(self.log.read_text(errors="replace"))


@pytest.fixture(scope="module")
def server(site: Site) -> Iterator[Server]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = site.path.parent / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, f"sqlite:///{site.path}", str(port), NAME],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=site.path.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/login", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield Server(url, log)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_serve_disables_the_access_log(server: Server) -> None:
    """uvicorn's access log would print every URL with its query string (?search=<patient name>)."""
    assert "('access_log', False)" in server.log.read_text()


def test_no_patient_data_in_the_logs(server: Server, site: Site) -> None:
    mark = server.mark()
    with httpx.Client(base_url=server.url, follow_redirects=False, timeout=30) as c:
        assert c.post("/api/v1/token", json={"username": IDENT, "password": NAME}).status_code == 401
        token = c.post("/api/v1/token", json={"username": "clin", "password": PASSWORDS["clin"]}).json()["token"]
        h = {"Authorization": f"Bearer {token}"}
        pid = site.ids["p"]
        calls: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", "/api/v1/patients", {"params": {"search": NAME}}),
            ("GET", "/api/v1/patients", {"params": {"search": IDENT}}),
            ("GET", "/api/v1/worklist", {"params": {"search": FAMILY}}),
            ("POST", "/api/v1/patients", {"json": {"identifier": NEW_IDENT, "name": NEW_NAME, "birth_date": BIRTH}}),
            ("POST", "/api/v1/patients", {"json": {"identifier": NEW_IDENT, "name": NEW_NAME}}),  # 400 duplicate
            ("POST", "/api/v1/patients", {"json": {"identifier": IDENT, "nickname": NAME}}),  # 422
            ("GET", f"/api/v1/patients/{pid}", {}),
            ("GET", f"/api/v1/patients/{IDENT}", {}),  # 422: not an id
            ("GET", f"/api/v1/{IDENT}/{FAMILY}", {}),  # no such route
            ("POST", f"/api/v1/patients/{pid}/observations", {"json": _lab("wbc", VALUE)}),
            ("POST", f"/api/v1/patients/{pid}/observations", {"json": {**_lab("wbc", VALUE), "unit": FAMILY}}),
            ("POST", f"/api/v1/patients/{pid}/symptoms", {"json": {"symptom": FREE_TEXT}}),
            ("GET", f"/api/v1/patients/{pid}/observations", {}),
            ("GET", f"/api/v1/patients/{pid}/assessment", {}),
            ("GET", f"/api/v1/patients/{pid}/findings", {}),
            (
                "POST",
                "/api/v1/import",
                {"content": f"patient_id,date,code,value,unit\n{IDENT},{WHEN},751-8,{VALUE},x\n"},
            ),
            ("GET", "/api/v1/patients", {"params": {"search": NAME}, "headers": {"Authorization": "Bearer nope"}}),
        ]
        for method, url, kw in calls:
            r = c.request(method, url, headers={**h, **kw.pop("headers", {})}, **kw)
            assert r.status_code < 500, (method, url, r.status_code)
        # The web pages, as the clinician and as the patient; a failed login with patient data as the username.
        for who, password, pages in (
            ("clin", PASSWORDS["clin"], ["/worklist?q=" + NAME, f"/patients/{pid}", f"/patients/{pid}/charts.svg"]),
            ("alma", PASSWORDS["alma"], ["/me", "/me/next-test.ics", "/guide"]),
            (NAME, IDENT, []),
        ):
            c.cookies.clear()
            c.get("/login")
            r = c.post("/login", data={"username": who, "password": password, "login_csrf": c.cookies[LOGIN_CSRF]})
            assert r.status_code == (401 if who == NAME else 303)
            for page in pages:
                assert c.get(page).status_code < 500, page
    with httpx.Client(base_url=server.url, follow_redirects=False, timeout=30) as c:  # uvicorn drops it after
        c.get("/login")
        c.post("/login", data={"username": "clin", "password": PASSWORDS["clin"], "login_csrf": c.cookies[LOGIN_CSRF]})
        assert c.get(f"/patients/{2**63}").status_code in (404, 422, 500)  # a 500 today: see test_access.py
    log = server.log_since(mark)
    lines = log.splitlines()
    assert "azaguard.app INFO GET /api/v1/patients/{patient_id} 200" in log, log[:2000]  # templates, never ids
    assert len([line for line in lines if line.startswith("azaguard.app INFO")]) >= len(calls), log[:2000]
    leaks = [(secret, line) for line in lines for secret in SECRETS if secret in line]
    assert not leaks, leaks[:5]


def _lab(analyte: str, value: str) -> dict[str, Any]:
    return {"analyte": analyte, "value": float(value), "unit": "10*9/L", "date": WHEN}


def test_a_server_error_does_not_write_patient_data_to_the_log(server: Server) -> None:
    mark = server.mark()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.get("/api/v1/test-only-db-error")
    assert r.status_code == 500 and r.json() == {"error": {"status": 500, "message": "internal error"}}
    log = server.log_since(mark)
    assert "unhandled DataError on GET /api/v1/test-only-db-error" in log, log
    assert NAME not in log, log


# ---------------------------------------------------------------- azaguard user add
def _cli(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "azaguard.cli", "user", "add", *args, "--database", f"sqlite:///{folder / 'u.db'}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=folder,
        env={**os.environ, "AZAGUARD_DEBUG": "", **(env or {})},
    )


USER_ADD = {
    "clinician": (["nurse9", "--role", "clinician", "--password", "nurse9-password", "--name", "Nurse Nine"], 0),
    "patient": (["pat9", "--role", "patient", "--patient", "CLI-P-1"], 0),  # password from AZAGUARD_PASSWORD
    "bad-role": (["x1", "--role", "superuser", "--password", "long-enough-pw"], 2),
    "unknown-patient": (["x2", "--role", "patient", "--patient", "NOPE-404", "--password", "long-enough-pw"], 2),
    "patient-without-record": (["x3", "--role", "patient", "--password", "long-enough-pw"], 2),
    "existing-user": (["taken", "--role", "admin", "--password", "long-enough-pw"], 2),
}


@pytest.fixture(scope="module")
def user_add(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, subprocess.CompletedProcess[str]]]:
    folder = tmp_path_factory.mktemp("useradd")
    db = Database(f"sqlite:///{folder / 'u.db'}")
    with db.session() as s:
        add_patient(s, "CLI-P-1", "Cli Patient")
        auth.create_user(s, "taken", "already-here-pw", "admin")
    db.engine.dispose()
    env = {"AZAGUARD_PASSWORD": "pat9-password-env"}
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(_cli, folder, *args, env=env) for name, (args, _) in USER_ADD.items()}
        return folder, {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("name", sorted(USER_ADD))
def test_user_add_exit_codes_and_messages(user_add: tuple[Path, dict[str, Any]], name: str) -> None:
    proc = user_add[1][name]
    expected = USER_ADD[name][1]
    assert proc.returncode == expected, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    if expected == 0:
        assert proc.stdout.strip().startswith("user ") and proc.stdout.strip().endswith("created"), proc.stdout
        assert proc.stderr == ""
        return
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    if name != "bad-role":  # argparse adds its usage line before the error; ours is the one line only
        assert proc.stderr.strip().splitlines() == errors and errors[0].startswith("error: ")
    assert proc.stdout == ""


def test_user_add_creates_usable_users_and_nothing_else(user_add: tuple[Path, dict[str, Any]], kb: Knowledge) -> None:
    folder, _ = user_add
    db = Database(f"sqlite:///{folder / 'u.db'}", create=False)
    with db.session() as s:
        users = {u.username: u for u in s.scalars(select(m.User))}
        patient_id = s.scalar(select(m.Patient.id).where(m.Patient.identifier == "CLI-P-1"))
        assert s.execute(text("SELECT count(*) FROM users WHERE password_hash LIKE '%password%'")).scalar() == 0
    assert set(users) == {"taken", "nurse9", "pat9"}, "a refused `user add` created a user"
    assert users["nurse9"].role == "clinician" and users["nurse9"].display_name == "Nurse Nine"
    assert users["pat9"].role == "patient" and users["pat9"].patient_id == patient_id
    assert all(u.password_hash.startswith("$argon2id$") for u in users.values())
    client = TestClient(create_app(db, kb))
    r = client.post("/api/v1/token", json={"username": "nurse9", "password": "nurse9-password"})
    assert r.status_code == 200 and r.json()["role"] == "clinician"
    r = client.post("/api/v1/token", json={"username": "pat9", "password": "pat9-password-env"})
    assert r.status_code == 200 and r.json()["patient_id"] == patient_id
    me = client.get("/api/v1/patients", headers={"Authorization": f"Bearer {r.json()['token']}"}).json()
    assert [p["identifier"] for p in me["patients"]] == ["CLI-P-1"]
    db.engine.dispose()
