"""Who may see and change what, on SQLite and PostgreSQL, over the REST API and the web pages.

Every patient-scoped route - every route whose path has {patient_id} or {finding_id}, read from the app's
route table so a new route cannot escape - is called
  (a) with no token or cookie: 401 (API) or a redirect to /login (web), and no patient data;
  (b) by patient A on patient B's record: 404, the very answer a missing id gets (so A cannot tell whether
      an id exists), B's name, identifier and results absent from it, the refusal audited with B's id;
  (c) by patient A on A's own record: reads and symptom reports allowed, every other write refused;
  (d) by a clinician: allowed.
Role-only routes are refused to the wrong role (worklist, import, quarantine and reviews for patients; acting on
quarantine and the audit log for clinicians, who see only their own imports' quarantine, read-only). Every
allowed read or write and every denial leaves an audit row naming the user, the action, the patient and the
time; a refused write changes nothing.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import pytest
from dbfixtures import fresh_database
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from azaguard import auth
from azaguard import worklist as wl
from azaguard.app import create_app
from azaguard.ingest import parse_text
from azaguard.knowledge import Knowledge, load_knowledge
from azaguard.service import import_parsed
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.store.records import now
from azaguard.store.writes import add_lab, add_patient, change_dose
from azaguard.web.views import COOKIE, FORMS

TODAY = date.today()
WHEN = (TODAY - timedelta(days=2)).isoformat()
# Patient B's data: none of it may appear in an answer to anyone but B and the clinic.
B_NAME, B_IDENT, B_VALUE = "Bertram Secretname", "ACC-B-990217", "0.37"
SERIAL = itertools.count(1)
NO_ROW = 987_654_321  # an id no patient or finding has


def days_ago(n: int) -> str:
    return (TODAY - timedelta(days=n)).isoformat()


# ---------------------------------------------------------------- the routes under test
def scoped_routes(app: Any) -> list[tuple[str, str]]:
    """(method, template) of every route with a patient or finding id in its path. FastAPI 0.165 keeps
    included routers nested inside app.routes; iter_route_contexts flattens them."""
    return sorted(
        (method, r.path)
        for r in iter_route_contexts(app.routes)
        if r.path and ("{patient_id}" in r.path or "{finding_id}" in r.path)
        for method in (r.methods or ())
        if method != "HEAD"
    )


WEB_FORMS_ROUTE = "/patients/{patient_id}/{form_name}"
# The forms the web route accepts: the table in views.py plus "team", which it handles itself.
WEB_FORMS = [*sorted(FORMS), "team"]

# What each route is: "read", "symptom" (a patient may do it on their own record), "write" (clinic only).
KIND: dict[tuple[str, str], str] = {
    ("GET", "/api/v1/patients/{patient_id}"): "read",
    ("GET", "/api/v1/patients/{patient_id}/observations"): "read",
    ("POST", "/api/v1/patients/{patient_id}/observations"): "write",
    ("GET", "/api/v1/patients/{patient_id}/medicines"): "read",
    ("POST", "/api/v1/patients/{patient_id}/medicines"): "write",
    ("POST", "/api/v1/patients/{patient_id}/dose"): "write",
    ("POST", "/api/v1/patients/{patient_id}/hold"): "write",
    ("POST", "/api/v1/patients/{patient_id}/follow-ups/dismiss"): "write",
    ("POST", "/api/v1/patients/{patient_id}/vaccines"): "write",
    ("POST", "/api/v1/patients/{patient_id}/symptoms"): "symptom",
    ("GET", "/api/v1/patients/{patient_id}/assessment"): "read",
    ("GET", "/api/v1/patients/{patient_id}/findings"): "read",
    ("POST", "/api/v1/findings/{finding_id}/reviews"): "write",
    ("GET", "/patients/{patient_id}"): "read",
    ("GET", "/patients/{patient_id}/charts.svg"): "read",
    ("POST", "/api/v1/patients/{patient_id}/letters"): "write",
    ("GET", "/api/v1/patients/{patient_id}/documents"): "read",
    ("POST", "/patients/{patient_id}/letters"): "write",
    ("GET", "/patients/{patient_id}/documents/{document_id}.pdf"): "read",  # a document of that patient
    ("POST", "/api/v1/patients/{patient_id}/owner"): "write",  # claim / assign / unassign
    ("POST", "/patients/{patient_id}/owner"): "write",
    ("POST", WEB_FORMS_ROUTE): "form",  # one target per form name below
    ("POST", "/findings/{finding_id}/review"): "write",
}
FORM_KIND = {"symptom": "symptom"}  # every other form is a clinic write
SETS_A_VALUE = {"/api/v1/patients/{patient_id}/owner"}  # API writes that create nothing: 200, not 201

# Valid request bodies (JSON for the API, form fields for the web), so a refusal is never a validation error.
BODY: dict[str, dict[str, Any]] = {
    "/api/v1/patients/{patient_id}/observations": {"analyte": "wbc", "value": 5.1, "unit": "10*9/L", "date": WHEN},
    "/api/v1/patients/{patient_id}/medicines": {"name": "Prednisolone 5 mg", "status": "active", "start": WHEN},
    "/api/v1/patients/{patient_id}/dose": {"mg_per_day": 75, "start": WHEN},
    "/api/v1/patients/{patient_id}/hold": {"reason": "neutropenia", "start": WHEN},
    # The follow-up FBC that Clinic.new_patient's low neutrophil count (3 days ago) opens
    "/api/v1/patients/{patient_id}/follow-ups/dismiss": {"key": f"FBC|{days_ago(3)}", "reason": "repeated elsewhere"},
    "/api/v1/patients/{patient_id}/vaccines": {"name": "Influenza vaccine", "status": "given", "date": WHEN},
    "/api/v1/patients/{patient_id}/symptoms": {"symptom": "sore-throat", "date": WHEN},
    "/api/v1/patients/{patient_id}/letters": {"recipient": "gp"},
    "/patients/{patient_id}/letters": {"recipient": "gp"},
    "/api/v1/findings/{finding_id}/reviews": {"outcome": "patient-contacted", "note": "phoned"},
    "/api/v1/patients/{patient_id}/owner": {"username": "clin"},
    "/patients/{patient_id}/owner": {"username": "clin"},
    "/findings/{finding_id}/review": {"outcome": "patient-contacted", "note": "phoned"},
    "lab": {"analyte": "wbc", "value": "5.1", "unit": "10*9/L", "date": WHEN},
    "dose": {"mg_per_day": "75", "start": WHEN},
    "hold": {"reason": "neutropenia", "start": WHEN},
    "follow-up": {"key": f"FBC|{days_ago(3)}", "reason": "repeated elsewhere"},
    "medicine": {"name": "Prednisolone 5 mg", "status": "active", "start": WHEN},
    "vaccine": {"name": "Influenza vaccine", "status": "given", "date": WHEN},
    "symptom": {"symptom": "sore-throat", "date": WHEN},
    "panel": {"panel": "FBC", "date": WHEN, "value-wbc": "5.1", "value-neutrophils": "3.2", "value-platelets": "250"},
    "team": {"team": "gp"},
}


@dataclass(frozen=True)
class Target:
    method: str
    route: str
    kind: str
    form: str | None = None

    @property
    def api(self) -> bool:
        return self.route.startswith("/api/")

    @property
    def id(self) -> str:
        return f"{self.method} {self.route.replace('{form_name}', self.form or '{form_name}')}"

    def url(self, patient_id: int, finding_id: int, document_id: int = NO_ROW) -> str:
        ids = {"patient_id": patient_id, "finding_id": finding_id, "document_id": document_id}
        return self.route.format(**ids, form_name=self.form)

    def body(self) -> dict[str, Any] | None:
        return BODY.get(self.form or self.route)


def targets(app: Any) -> list[Target]:
    out = []
    for method, route in scoped_routes(app):
        kind = KIND.get((method, route), "unclassified")
        if kind == "form":
            out += [Target(method, route, FORM_KIND.get(f, "write"), f) for f in WEB_FORMS]
        else:
            out.append(Target(method, route, kind))
    return out


# Collected from the real app's route table (the database is never opened for this).
TARGETS = targets(create_app(Database("sqlite://", create=False), load_knowledge()))
PARAMS = [pytest.param(t, id=t.id) for t in TARGETS]


def test_every_patient_scoped_route_is_classified() -> None:
    """A new route with {patient_id} or {finding_id} fails here until its access rule is written down above."""
    found = set(scoped_routes(create_app(Database("sqlite://", create=False), load_knowledge())))
    assert found == set(KIND), f"unclassified: {sorted(found - set(KIND))}; stale: {sorted(set(KIND) - found)}"
    assert len(TARGETS) >= 20
    for t in TARGETS:
        if t.method == "POST":
            assert t.body() is not None, f"no request body for {t.id}"


# ---------------------------------------------------------------- the clinic
def add_document(s: Any, patient_id: int) -> None:
    """A stored letter of the patient, for the download route (its bytes stand in for a PDF)."""
    content = b"%PDF-1.7 access test"
    fields = {"kind": "gp-letter", "recipient": "gp", "title": "Letter", "author": "tests", "knowledge_version": "-"}
    digest = hashlib.sha256(content).hexdigest()
    s.add(m.Document(patient_id=patient_id, created_at=now(), content=content, sha256=digest, **fields))


@dataclass
class Clinic:
    db: Database
    app: Any
    api: TestClient
    web: dict[str, TestClient] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    csrf: dict[str, str] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)

    def request(self, who: str, t: Target, patient_id: int, finding_id: int) -> Any:
        url, body = t.url(patient_id, finding_id, self.document_of(patient_id)), t.body()
        if t.api:
            headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who != "anon" else {}
            return self.api.request(t.method, url, headers=headers, json=body if t.method == "POST" else None)
        client = self.web[who]
        if t.method == "POST":
            return client.post(url, data={**(body or {}), "csrf": self.csrf.get(who, "")})
        return client.get(url)

    def document_of(self, patient_id: int) -> int:
        """A document of this patient (for the download route), or NO_ROW when there is none."""
        with self.db.session() as s:
            found = s.scalar(select(m.Document.id).where(m.Document.patient_id == patient_id).limit(1))
            return found or NO_ROW

    def audit_mark(self) -> int:
        with self.db.session() as s:
            return s.scalar(select(func.max(m.AuditEvent.id))) or 0

    def audit_since(self, mark: int) -> list[m.AuditEvent]:
        with self.db.session() as s:
            return list(s.scalars(select(m.AuditEvent).where(m.AuditEvent.id > mark).order_by(m.AuditEvent.id)))

    def snapshot(self) -> tuple[Any, ...]:
        """Everything a refused write could have changed."""
        with self.db.session() as s:
            counts = tuple(
                s.scalar(select(func.count()).select_from(t)) or 0
                for t in (
                    m.Observation,
                    m.Medication,
                    m.Immunization,
                    m.Symptom,
                    m.Review,
                    m.Patient,
                    m.FollowUpDismissal,
                    m.Document,
                )
            )
            teams = tuple(s.scalars(select(m.Patient.monitoring_team).order_by(m.Patient.id)))
            states = tuple(s.scalars(select(m.FindingRow.state).order_by(m.FindingRow.id)))
            return counts, teams, states

    def new_patient(self, kb: Knowledge, ident: str) -> tuple[int, int]:
        """A patient with an open critical finding, for the clinician's allowed writes."""
        with self.db.session() as s:
            p = add_patient(s, ident, "Clara Clinicwrite", "1960-01-01", "female")
            change_dose(s, kb, p.id, 100, days_ago(100))  # on azathioprine, so it can be withheld
            add_lab(s, kb, p.id, "neutrophils", 0.5, "10*9/L", days_ago(3))
            wl.refresh_patient(s, kb, p.id)
            fid = next(f.id for f in wl.open_findings(s, p.id) if f.code == "lab-neutrophils-low")
            add_document(s, p.id)
            return p.id, fid


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def clinic(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kb: Knowledge) -> Iterator[Clinic]:
    gen = fresh_database(request.param, request, tmp_path_factory.mktemp(f"access-{request.param}"))
    db = next(gen)
    with db.session() as s:
        a = add_patient(s, "ACC-A-000001", "Alma Accesstest", "1971-02-03", "female")
        b = add_patient(s, B_IDENT, B_NAME, "1958-09-30", "male")
        add_lab(s, kb, a.id, "neutrophils", 0.9, "10*9/L", days_ago(5))
        add_lab(s, kb, b.id, "neutrophils", float(B_VALUE), "10*9/L", days_ago(5))
        for p in (a, b):
            wl.refresh_patient(s, kb, p.id)
        finding = {
            p.id: next(f.id for f in wl.open_findings(s, p.id) if f.code == "lab-neutrophils-low") for p in (a, b)
        }
        users = {
            "clin": auth.create_user(s, "clin", "clinician-password", "clinician"),
            "boss": auth.create_user(s, "boss", "admin-password-1", "admin"),
            "alma": auth.create_user(s, "alma", "patient-password-a", "patient", a.identifier),
            "bert": auth.create_user(s, "bert", "patient-password-b", "patient", B_IDENT),
        }
        tokens = {k: auth.create_api_token(s, u, "tests") for k, u in users.items()}
        sessions = {k: auth.create_session(s, u) for k, u in users.items()}
        csv = "patient_id,date,code,value,unit\nACC-NOBODY,2025-01-01,751-8,2.0,10*9/L\n"
        import_parsed(s, kb, None, parse_text(csv, kb, "csv", "q.csv"), "q.csv", "cli")
        qid = s.scalar(select(func.max(m.QuarantineItem.id)))
        assert qid is not None
        for p in (a, b):
            add_document(s, p.id)
        ids = {"a": a.id, "b": b.id, "fa": finding[a.id], "fb": finding[b.id], "q": qid}
    app = create_app(db, kb)
    web = {"anon": TestClient(app, follow_redirects=False)}
    for k, (tok, _) in sessions.items():
        web[k] = TestClient(app, follow_redirects=False, cookies={COOKIE: tok})
    c = Clinic(db, app, TestClient(app), web, tokens, {k: v[1] for k, v in sessions.items()}, ids)
    yield c
    gen.close()


def assert_audited(rows: list[m.AuditEvent], user: str, action: str, patient_id: int | None, channel: str) -> None:
    """An audit row: who, what (action + resource), which patient, when (now), through which channel."""
    stamp = now()
    hits = [
        r
        for r in rows
        if r.username == user
        and r.action == action
        and r.patient_id == patient_id
        and r.channel == channel
        and r.resource
        and abs(r.at - stamp) < timedelta(minutes=2)
    ]
    got = [(r.username, r.action, r.resource, r.patient_id, r.channel) for r in rows]
    assert hits, f"no audit row ({user}, {action}, patient {patient_id}, {channel}); got {got}"


def assert_no_patient_data(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret!r} leaked into the response"


ROLE_FIRST = {
    "POST /api/v1/findings/{finding_id}/reviews",
    "POST /findings/{finding_id}/review",
    "POST /patients/{patient_id}/team",
}


def marked(bug_ids: set[str]) -> list[Any]:
    return [pytest.param(t, id=t.id) for t in TARGETS]


# ---------------------------------------------------------------- (a) no credentials
@pytest.mark.parametrize("t", PARAMS)
def test_no_credentials_is_refused(clinic: Clinic, t: Target) -> None:
    assert t.kind != "unclassified", t.id
    before = clinic.snapshot()
    r = clinic.request("anon", t, clinic.ids["b"], clinic.ids["fb"])
    if t.api:
        assert r.status_code == 401, r.text
        assert r.json()["error"]["status"] == 401
    else:
        assert r.status_code == 303 and r.headers["location"] == "/login", (r.status_code, r.text[:200])
    assert_no_patient_data(r.text, B_NAME, B_IDENT, B_VALUE)
    assert clinic.snapshot() == before


# ---------------------------------------------------------------- (b) another patient's record
@pytest.mark.parametrize("t", marked(ROLE_FIRST))
def test_a_patient_cannot_touch_another_patients_record(clinic: Clinic, t: Target) -> None:
    assert t.kind != "unclassified", t.id
    before, mark = clinic.snapshot(), clinic.audit_mark()
    r = clinic.request("alma", t, clinic.ids["b"], clinic.ids["fb"])
    assert r.status_code == 404, (r.status_code, r.text[:300])
    missing = clinic.request("alma", t, NO_ROW, NO_ROW)
    assert (missing.status_code, missing.text) == (404, r.text), "B's id is answered unlike an id that does not exist"
    assert missing.headers["content-type"] == r.headers["content-type"]
    if t.api:
        assert r.json()["error"]["status"] == 404
    assert_no_patient_data(r.text, B_NAME, B_IDENT, B_VALUE)
    assert clinic.snapshot() == before, "a refused request changed data"
    rows = clinic.audit_since(mark)
    channel = "api" if t.api else "web"
    assert_audited(rows, "alma", "denied", clinic.ids["b"], channel)
    assert_audited(rows, "alma", "not-found", None, channel)  # the missing id: audited too, told apart here


# ---------------------------------------------------------------- (c) the patient's own record
@pytest.mark.parametrize("t", marked(ROLE_FIRST))
def test_a_patient_may_read_and_report_symptoms_on_their_own_record(clinic: Clinic, t: Target) -> None:
    assert t.kind != "unclassified", t.id
    before, mark = clinic.snapshot(), clinic.audit_mark()
    channel = "api" if t.api else "web"
    r = clinic.request("alma", t, clinic.ids["a"], clinic.ids["fa"])
    rows = clinic.audit_since(mark)
    if t.kind == "read":
        if t.route == "/patients/{patient_id}":
            # The patient's own page is their own view: a redirect, nothing read yet.
            assert r.status_code == 303 and r.headers["location"] == "/me"
            return
        assert r.status_code == 200, (r.status_code, r.text[:300])
        assert_no_patient_data(r.text, B_NAME, B_IDENT)
        assert_audited(rows, "alma", "read", clinic.ids["a"], channel)
        assert clinic.snapshot()[0] == before[0]
    elif t.kind == "symptom":
        assert r.status_code in (201, 303), (r.status_code, r.text[:300])
        with clinic.db.session() as s:
            last = s.scalars(select(m.Symptom).order_by(m.Symptom.id.desc())).first()
            assert last is not None and last.patient_id == clinic.ids["a"] and last.reported_by == "patient"
        assert_audited(rows, "alma", "write", clinic.ids["a"], channel)
    else:
        assert r.status_code == 403, (r.status_code, r.text[:300])
        assert clinic.snapshot() == before, "a refused write changed data"
        assert_audited(rows, "alma", "denied", clinic.ids["a"], channel)


# ---------------------------------------------------------------- (d) the clinic
@pytest.mark.parametrize("t", PARAMS)
def test_a_clinician_may_read_and_write_any_record(clinic: Clinic, kb: Knowledge, t: Target) -> None:
    pid, fid = clinic.new_patient(kb, f"ACC-C-{next(SERIAL)}")
    mark = clinic.audit_mark()
    r = clinic.request("clin", t, pid, fid)
    if t.api:
        created = t.method == "POST" and t.route not in SETS_A_VALUE
        assert r.status_code == (201 if created else 200), (r.status_code, r.text[:300])
    else:
        assert r.status_code == (200 if t.method == "GET" else 303), (r.status_code, r.text[:300])
    action = "read" if t.kind == "read" else "write"
    assert_audited(clinic.audit_since(mark), "clin", action, pid, "api" if t.api else "web")


# ---------------------------------------------------------------- role-only routes
@dataclass(frozen=True)
class RoleRoute:
    method: str
    path: str
    roles: tuple[str, ...]
    json: Any = None
    form: dict[str, str] | None = None
    content: str | None = None


CSV = "patient_id,date,code,value,unit\nACC-A-000001,2025-01-01,751-8,2.0,10*9/L\n"
ROLE_ROUTES = {
    "api-worklist": RoleRoute("GET", "/api/v1/worklist", ("clinician", "admin")),
    "api-import": RoleRoute("POST", "/api/v1/import", ("clinician", "admin"), content=CSV),
    "api-create-patient": RoleRoute("POST", "/api/v1/patients", ("clinician", "admin"), json={"identifier": "NEW-1"}),
    "api-quarantine": RoleRoute("GET", "/api/v1/quarantine", ("clinician", "admin")),  # a clinician: own imports
    "api-reprocess": RoleRoute("POST", "/api/v1/quarantine/{q}/reprocess", ("admin",)),
    "api-discard": RoleRoute("POST", "/api/v1/quarantine/{q}/discard", ("admin",), json={"reason": "x"}),
    "api-audit": RoleRoute("GET", "/api/v1/audit", ("admin",)),
    "web-worklist": RoleRoute("GET", "/worklist", ("clinician", "admin")),
    "web-import-page": RoleRoute("GET", "/import", ("clinician", "admin")),
    "web-import": RoleRoute("POST", "/import", ("clinician", "admin"), form={}),
    "web-quarantine": RoleRoute("GET", "/quarantine", ("clinician", "admin")),  # read-only, own imports
    "web-reprocess": RoleRoute("POST", "/quarantine/{q}/reprocess", ("admin",), form={}),
    "web-discard": RoleRoute("POST", "/quarantine/{q}/discard", ("admin",), form={"reason": "x"}),
    "web-audit": RoleRoute("GET", "/audit", ("admin",)),
    "web-audit-csv": RoleRoute("GET", "/audit.csv", ("admin",)),
    "api-letters-batch": RoleRoute("POST", "/api/v1/letters/batch", ("clinician", "admin")),
    "web-letters": RoleRoute("GET", "/letters", ("clinician", "admin")),
    "web-letters-batch": RoleRoute("POST", "/letters/batch", ("clinician", "admin"), form={}),
}
REFUSALS = [
    pytest.param(name, who, id=f"{name}-as-{who}")
    for name, rr in ROLE_ROUTES.items()
    for who, role in (("alma", "patient"), ("clin", "clinician"))
    if role not in rr.roles
]


@pytest.mark.parametrize(("name", "who"), REFUSALS)
def test_role_only_routes_refuse_other_roles(clinic: Clinic, name: str, who: str) -> None:
    rr = ROLE_ROUTES[name]
    path = rr.path.format(q=clinic.ids["q"])
    before, mark = clinic.snapshot(), clinic.audit_mark()
    if path.startswith("/api/"):
        headers = {"Authorization": f"Bearer {clinic.tokens[who]}"}
        if rr.content is not None:
            headers["Content-Type"] = "text/plain"
        r = clinic.api.request(rr.method, path, headers=headers, json=rr.json, content=rr.content)
        assert r.status_code == 403 and r.json()["error"]["status"] == 403, r.text
    elif rr.method == "POST":
        files = {"file": ("lab.csv", CSV.encode(), "text/csv")} if path == "/import" else None
        r = clinic.web[who].post(path, data={**(rr.form or {}), "csrf": clinic.csrf[who]}, files=files)
        assert r.status_code == 403, (r.status_code, r.text[:300])
    else:
        r = clinic.web[who].get(path)
        assert r.status_code == 403, (r.status_code, r.text[:300])
    assert_no_patient_data(r.text, B_NAME, B_IDENT)
    assert clinic.snapshot() == before
    with clinic.db.session() as s:
        item = s.get(m.QuarantineItem, clinic.ids["q"])
        assert item is not None and item.state == "open"
    assert_audited(clinic.audit_since(mark), who, "denied", None, "api" if path.startswith("/api/") else "web")


@pytest.mark.parametrize("name", [n for n, rr in ROLE_ROUTES.items() if rr.method == "GET"])
def test_role_only_pages_open_for_the_right_role(clinic: Clinic, name: str) -> None:
    rr = ROLE_ROUTES[name]
    who = "boss" if rr.roles == ("admin",) else "clin"
    if rr.path.startswith("/api/"):
        r = clinic.api.get(rr.path, headers={"Authorization": f"Bearer {clinic.tokens[who]}"})
    else:
        r = clinic.web[who].get(rr.path)
    assert r.status_code == 200, (r.status_code, r.text[:300])


def test_a_patient_lists_only_their_own_record(clinic: Clinic) -> None:
    headers = {"Authorization": f"Bearer {clinic.tokens['alma']}"}
    r = clinic.api.get("/api/v1/patients", headers=headers)
    assert r.status_code == 200 and [p["id"] for p in r.json()["patients"]] == [clinic.ids["a"]]
    r = clinic.api.get("/api/v1/patients", headers=headers, params={"search": "Bertram"})
    assert r.json() == {"total": 0, "patients": []}
    assert_no_patient_data(r.text, B_NAME, B_IDENT)


def test_the_patient_view_shows_only_the_patients_own_record(clinic: Clinic) -> None:
    mark = clinic.audit_mark()
    r = clinic.web["alma"].get("/me")
    assert r.status_code == 200 and "Alma" in r.text
    assert_no_patient_data(r.text, B_NAME, B_IDENT)
    assert_audited(clinic.audit_since(mark), "alma", "read", clinic.ids["a"], "web")
    assert clinic.web["alma"].get("/me/next-test.ics").status_code in (200, 404)


def test_a_clinician_on_the_patient_symptom_form_is_refused_and_audited(clinic: Clinic) -> None:
    mark = clinic.audit_mark()
    r = clinic.web["clin"].post("/me/symptom", data={"symptom": "fever", "csrf": clinic.csrf["clin"]})
    assert r.status_code == 403
    assert_audited(clinic.audit_since(mark), "clin", "denied", None, "web")


@pytest.mark.parametrize("path", ["/patients/{}", "/patients/{}/charts.svg"])
def test_an_out_of_range_id_on_a_web_route_is_not_a_server_error(clinic: Clinic, path: str) -> None:
    client = TestClient(clinic.app, follow_redirects=False, raise_server_exceptions=False)
    client.cookies.set(COOKIE, clinic.web["clin"].cookies[COOKIE])
    r = client.get(path.format(2**63))
    assert r.status_code in (404, 422), r.status_code


@pytest.mark.parametrize("case", ["symptom-form", "worklist-search", "login-username"])
def test_a_nul_character_in_a_web_request_is_not_a_server_error(
    clinic: Clinic, case: str, request: pytest.FixtureRequest
) -> None:
    """The REST API refuses U+0000 (test_api.py); the web pages must not store it or fail on it either."""
    client = TestClient(clinic.app, follow_redirects=False, raise_server_exceptions=False)
    if case == "login-username":
        client.get("/login")
        form = {"username": "clin\x00", "password": "x", "login_csrf": client.cookies["azaguard_login_csrf"]}
        assert client.post("/login", data=form).status_code in (400, 401)
        return
    client.cookies.set(COOKIE, clinic.web["clin"].cookies[COOKIE])
    if case == "worklist-search":
        assert client.get("/worklist", params={"q": "Alma\x00"}).status_code in (200, 400)
        return
    before = clinic.snapshot()
    form = {"symptom": "fever\x00", "date": WHEN, "csrf": clinic.csrf["clin"]}
    r = client.post(f"/patients/{clinic.ids['b']}/symptom", data=form)
    assert r.status_code == 400, r.status_code
    assert clinic.snapshot() == before
