"""The REST API on SQLite and PostgreSQL: tokens, every endpoint's happy path, the JSON error format, and the
review workflow end to end (a critical result appears at once, a review closes it, a later low result re-opens it).

One migrated database per engine per module (users are created once: argon2 is deliberately slow); each test
makes its own patients where it changes anything, so the tests do not depend on their order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import pytest
from conftest import on_treatment
from dbfixtures import fresh_database
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from azaguard import auth
from azaguard import worklist as wl
from azaguard.app import create_app
from azaguard.ingest import parse_text
from azaguard.knowledge import Knowledge
from azaguard.service import discard_quarantine, import_parsed
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.store.writes import add_lab, add_patient

TODAY = date.today()
PASSWORDS = {"clin": "clinician-password-1", "boss": "admin-password-1", "alma": "patient-password-1"}
MISSING = 987_654  # an id no row has


def days_ago(n: int) -> str:
    return (TODAY - timedelta(days=n)).isoformat()


def api_routes(app: Any) -> set[tuple[str, str]]:
    """(method, path template) of every /api/v1 operation. FastAPI 0.165 keeps included routers nested in
    app.routes, so they are flattened with iter_route_contexts."""
    return {
        (method, r.path or "")
        for r in iter_route_contexts(app.routes)
        if (r.path or "").startswith("/api/")
        for method in (r.methods or ())
        if method != "HEAD"
    }


def assert_error(r: Any, status: int, fragment: str = "") -> dict[str, Any]:
    """The one error shape: {"error": {"status", "message"}} (+ "problems" on 422), JSON, matching status."""
    assert r.status_code == status, f"{r.status_code} != {status}: {r.text[:300]}"
    assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
    body = r.json()
    assert list(body) == ["error"], body
    err: dict[str, Any] = body["error"]
    assert err["status"] == status and isinstance(err["message"], str) and err["message"], err
    assert set(err) <= {"status", "message", "problems"}, err
    if status == 422:
        assert err["problems"] and all(set(p) == {"field", "message"} for p in err["problems"]), err
    assert fragment.lower() in err["message"].lower(), err["message"]
    return err


@dataclass
class Clinic:
    db: Database
    client: TestClient
    tokens: dict[str, str]
    ids: dict[str, int] = field(default_factory=dict)

    def h(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"} if who != "anon" else {}

    def call(self, who: str, method: str, path: str, **kw: Any) -> Any:
        return self.client.request(method, path, headers={**self.h(who), **kw.pop("headers", {})}, **kw)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def clinic(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kb: Knowledge) -> Iterator[Clinic]:
    gen = fresh_database(request.param, request, tmp_path_factory.mktemp(f"api-{request.param}"))
    db = next(gen)
    with db.session() as s:
        alma = add_patient(s, "API-0001", "Alma Apitest", "1970-03-01", "female")
        other = add_patient(s, "API-0002", "Otto Otherpatient", "1965-07-12", "male")
        users = {
            "clin": auth.create_user(s, "clin", PASSWORDS["clin"], "clinician"),
            "boss": auth.create_user(s, "boss", PASSWORDS["boss"], "admin"),
            "alma": auth.create_user(s, "alma", PASSWORDS["alma"], "patient", "API-0001"),
        }
        tokens = {k: auth.create_api_token(s, u, "tests") for k, u in users.items()}
        # Alma: a low neutrophil count (an open critical finding); one other open finding already reviewed.
        add_lab(s, kb, alma.id, "neutrophils", 0.6, "10*9/L", days_ago(1))
        wl.refresh_patient(s, kb, alma.id)
        wl.refresh_patient(s, kb, other.id)
        rows = {f.code: f.id for f in wl.open_findings(s, alma.id)}
        wl.record_review(s, rows["pgx-tpmt-unknown"], users["clin"].id, "repeat-test-booked")
        # One quarantined CSV row (unknown code), already discarded.
        csv = "patient_id,date,code,value,unit\nAPI-0001,2025-01-01,NOPE-1,1.0,10*9/L\n"
        import_parsed(s, kb, None, parse_text(csv, kb, "csv", "bad.csv"), "bad.csv", "cli")
        qid = s.scalar(select(func.max(m.QuarantineItem.id)))
        assert qid is not None
        discard_quarantine(s, None, qid, "test data", "cli")
        ids = {
            "alma": alma.id,
            "other": other.id,
            "open": rows["lab-neutrophils-low"],
            "reviewed": rows["pgx-tpmt-unknown"],
            "discarded": qid,
            "missing": MISSING,
        }
    yield Clinic(db, TestClient(create_app(db, kb)), tokens, ids)
    gen.close()


# ---------------------------------------------------------------- tokens
def test_token_for_a_good_password(clinic: Clinic) -> None:
    r = clinic.client.post("/api/v1/token", json={"username": "clin", "password": PASSWORDS["clin"], "label": "t"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token"].startswith("azg_") and body["token_type"] == "bearer"
    assert body["role"] == "clinician" and body["patient_id"] is None
    assert (
        clinic.client.get("/api/v1/patients", headers={"Authorization": f"Bearer {body['token']}"}).status_code == 200
    )
    r = clinic.client.post("/api/v1/token", json={"username": "alma", "password": PASSWORDS["alma"]})
    assert r.json()["role"] == "patient" and r.json()["patient_id"] == clinic.ids["alma"]


@pytest.mark.parametrize(
    "body",
    [{"username": "clin", "password": "wrong-password"}, {"username": "nobody", "password": PASSWORDS["clin"]}],
    ids=["wrong-password", "unknown-user"],
)
def test_token_for_a_bad_password_is_401_and_audited(clinic: Clinic, body: dict[str, str]) -> None:
    r = clinic.client.post("/api/v1/token", json=body)
    # The same answer whether the user exists or not: nothing to enumerate.
    assert_error(r, 401, "wrong username or password")
    assert "token" not in r.text
    with clinic.db.session() as s:
        last = s.scalars(select(m.AuditEvent).order_by(m.AuditEvent.id.desc())).first()
        assert last is not None and last.action == "login-failed" and body["username"] in last.detail


@pytest.mark.parametrize("header", ["Bearer azg_not-a-real-token", "Bearer ", "Basic Y2xpbjpwdw==", "azg_x"])
def test_a_bad_bearer_header_is_401(clinic: Clinic, header: str) -> None:
    r = clinic.client.get("/api/v1/patients", headers={"Authorization": header})
    assert_error(r, 401, "bearer token")
    assert r.headers.get("www-authenticate") == "Bearer"


def test_every_api_route_needs_a_token(clinic: Clinic) -> None:
    routes = api_routes(clinic.client.app)
    assert len(routes) >= 20
    for method, path in sorted(routes - {("POST", "/api/v1/token")}):
        concrete = path.format(patient_id=clinic.ids["alma"], finding_id=clinic.ids["open"], item_id=1, document_id=1)
        r = clinic.client.request(method, concrete, json={})
        assert_error(r, 401, "bearer token")


# ---------------------------------------------------------------- every endpoint, happy path
def test_every_endpoint_happy_path(clinic: Clinic, kb: Knowledge) -> None:
    """A clinician (an admin for the admin-only quarantine and audit routes) uses every operation once."""
    c, seen = clinic, set()
    tag = c.db.engine.dialect.name

    def call(who: str, method: str, route: str, status: int = 200, **kw: Any) -> Any:
        seen.add((method, route))
        values = kw.pop("path", {})
        r = c.call(who, method, route.format(**values), **kw)
        assert r.status_code == status, f"{method} {route}: {r.status_code} {r.text[:300]}"
        assert r.headers["content-type"].startswith("application/json")
        return r.json()

    seen.add(("POST", "/api/v1/token"))  # tested above
    # a token of its own, revoked: it stops working at once (204, no body)
    spare = c.client.post("/api/v1/token", json={"username": "clin", "password": PASSWORDS["clin"], "label": "spare"})
    spare_h = {"Authorization": f"Bearer {spare.json()['token']}"}
    assert c.client.delete("/api/v1/token", headers=spare_h).status_code == 204
    assert c.client.get("/api/v1/patients", headers=spare_h).status_code == 401
    seen.add(("DELETE", "/api/v1/token"))
    p = call(
        "clin",
        "POST",
        "/api/v1/patients",
        201,
        json={"identifier": f"HP-{tag}", "name": "Hana Happypath", "birth_date": "1980-05-06", "sex": "female"},
    )
    assert p["identifier"] == f"HP-{tag}" and p["monitoring_team"] == "specialist" and p["birth_date"] == "1980-05-06"
    pid = {"patient_id": p["id"]}
    listed = call("clin", "GET", "/api/v1/patients", params={"search": "happypath", "limit": 5})
    assert listed["total"] == 1 and listed["patients"] == [p]
    assert call("clin", "GET", "/api/v1/patients/{patient_id}", path=pid) == p
    low = {"analyte": "neutrophils", "value": 1.2, "unit": "10*9/L", "date": days_ago(3)}
    call("clin", "POST", "/api/v1/patients/{patient_id}/observations", 201, path=pid, json=low)
    ups = call("clin", "GET", "/api/v1/patients/{patient_id}/assessment", path=pid)["monitoring"]["follow_ups"]
    key = next(u["key"] for u in ups if u["group"] == "FBC")
    dis = call(
        "clin",
        "POST",
        "/api/v1/patients/{patient_id}/follow-ups/dismiss",
        201,
        path=pid,
        json={"key": key, "reason": "repeated elsewhere"},
    )
    assert dis["key"] == key and dis["reason"] == "repeated elsewhere"

    o = call(
        "clin",
        "POST",
        "/api/v1/patients/{patient_id}/observations",
        201,
        path=pid,
        json={"analyte": "platelets", "value": 250, "unit": "10*9/L", "date": days_ago(2)},
    )
    assert o["analyte"] == "platelets" and o["value"] == 250 and o["date"] == days_ago(2) and o["kind"] == "lab"
    o2 = call(
        "clin",
        "POST",
        "/api/v1/patients/{patient_id}/observations",
        201,
        path=pid,
        json={"analyte": "creatinine", "value": 1.0, "unit": "mg/dL", "date": days_ago(2)},
    )
    assert (
        o2["unit"] == "umol/L" and round(o2["value"]) == 88 and o2["reported"] == "1 mg/dL"
    )  # converted, original kept
    obs = call("clin", "GET", "/api/v1/patients/{patient_id}/observations", path=pid, params={"analyte": "platelets"})
    assert [x["id"] for x in obs["observations"]] == [o["id"]]

    med = call(
        "clin",
        "POST",
        "/api/v1/patients/{patient_id}/medicines",
        201,
        path=pid,
        json={"name": "Allopurinol 100 mg", "status": "draft", "mg_per_day": 100},
    )
    assert med["drug"] == "allopurinol" and med["status"] == "draft" and med["kind"] == "request"
    dose = call(
        "clin",
        "POST",
        "/api/v1/patients/{patient_id}/dose",
        201,
        path=pid,
        json={"mg_per_day": 100, "start": days_ago(30)},
    )
    assert dose["drug"] == "azathioprine" and dose["mg_per_day"] == 100 and dose["status"] == "active"
    held = call("clin", "POST", "/api/v1/patients/{patient_id}/hold", 201, path=pid, json={"reason": "infection"})
    assert held["status"] == "on-hold" and held["reason"] == "infection" and held["mg_per_day"] == 100
    meds = call("clin", "GET", "/api/v1/patients/{patient_id}/medicines", path=pid)
    assert {x["id"] for x in meds["medicines"]} == {med["id"], dose["id"], held["id"]}
    vac = call(
        "clin",
        "POST",
        "/api/v1/patients/{patient_id}/vaccines",
        201,
        path=pid,
        json={"name": "Yellow fever vaccine", "status": "ordered"},
    )
    assert vac["vaccine"] == "yellow-fever" and vac["live"] is True and vac["status"] == "ordered"
    sym = call("clin", "POST", "/api/v1/patients/{patient_id}/symptoms", 201, path=pid, json={"symptom": "fever"})
    assert sym["symptom"] == "fever" and sym["reported_by"] == "clinician" and sym["date"] == TODAY.isoformat()

    a = call("clin", "GET", "/api/v1/patients/{patient_id}/assessment", path=pid)
    assert a["schema_version"] == "2" and a["patient_id"] == f"HP-{tag}" and a["as_of"] == TODAY.isoformat()
    assert a["knowledge_version"] == kb.version
    codes = {f["code"]: f["severity"] for f in a["findings"]}
    assert codes.get("interaction-allopurinol") == "critical" and "vaccine-live" in " ".join(codes), codes
    findings = call("clin", "GET", "/api/v1/patients/{patient_id}/findings", path=pid)["findings"]
    target = next(f for f in findings if f["code"] == "interaction-allopurinol")
    assert target["state"] == "open" and target["patient_id"] == p["id"]
    rv = call(
        "clin",
        "POST",
        "/api/v1/findings/{finding_id}/reviews",
        201,
        path={"finding_id": target["id"]},
        json={"outcome": "discussed-with-specialist", "note": "allopurinol not started"},
    )
    assert rv["finding_id"] == target["id"] and rv["outcome"] == "discussed-with-specialist"
    after = call("clin", "GET", "/api/v1/patients/{patient_id}/findings", path=pid)["findings"]
    assert next(f for f in after if f["id"] == target["id"])["state"] == "reviewed"
    work = call("clin", "GET", "/api/v1/worklist", params={"search": f"HP-{tag}"})
    assert work["total"] == 1 and work["entries"][0]["patient_id"] == p["id"]
    assert set(work["entries"][0]) >= {"identifier", "name", "worst", "open_count", "categories", "next_due", "overdue"}
    assert set(work["entries"][0]) >= {"urgent", "urgent_value", "urgent_date", "urgent_age", "days_overdue", "owner"}
    assert set(work["counts"]) == {"critical", "warning", "overdue", "awaiting"}
    mine = call("clin", "POST", "/api/v1/patients/{patient_id}/owner", path=pid, json={"username": "clin"})
    assert mine == {"patient_id": p["id"], "owner": "clin", "owner_name": mine["owner_name"]}
    work = call("clin", "GET", "/api/v1/worklist", params={"mine": True, "sort": "owner", "needs": "critical"})
    assert [e["patient_id"] for e in work["entries"]] == [p["id"]] and work["entries"][0]["owner"] == "clin"

    # Import: one row for a known patient, one for a patient not yet registered (quarantined).
    csv = (
        "patient_id,date,code,value,unit\n"
        f"HP-{tag},{days_ago(1)},777-3,240,10*9/L\n"
        f"HP2-{tag},{days_ago(1)},777-3,260,10*9/L\n"
    )
    summary = call(
        "clin",
        "POST",
        "/api/v1/import",
        params={"format": "csv", "filename": "lab.csv"},
        content=csv,
        headers={"Content-Type": "text/plain"},
    )
    assert summary["imported"] == 1 and summary["quarantined"] == 1 and summary["batch_id"]
    items = call("boss", "GET", "/api/v1/quarantine")["items"]
    q = next(i for i in items if i["patient_identifier"] == f"HP2-{tag}")
    assert q["state"] == "open" and "unknown patient" in q["reason"] and q["format"] == "csv"
    call("clin", "POST", "/api/v1/patients", 201, json={"identifier": f"HP2-{tag}", "name": "Second Happypath"})
    redo = call("boss", "POST", "/api/v1/quarantine/{item_id}/reprocess", path={"item_id": q["id"]})
    assert redo["imported"] == 1 and redo["state"] == "reprocessed"

    summary = call(
        "clin",
        "POST",
        "/api/v1/import",
        params={"format": "csv"},
        content=f"patient_id,date,code,value,unit\nHP-{tag},{days_ago(1)},LOCAL-9,1,10*9/L\n",
        headers={"Content-Type": "text/plain"},
    )
    assert summary["quarantined"] == 1
    bad = next(i for i in call("boss", "GET", "/api/v1/quarantine")["items"] if "LOCAL-9" in i["reason"])
    gone = call(
        "boss", "POST", "/api/v1/quarantine/{item_id}/discard", path={"item_id": bad["id"]}, json={"reason": "test row"}
    )
    assert gone == {"id": bad["id"], "state": "discarded"}
    discarded = call("boss", "GET", "/api/v1/quarantine", params={"state": "discarded"})["items"]
    assert bad["id"] in {i["id"] for i in discarded}

    # Shared care: a GP letter made from the assessment, listed, downloaded as its PDF; the month's batch.
    doc = call("clin", "POST", "/api/v1/patients/{patient_id}/letters", 201, path=pid, json={"recipient": "gp"})
    assert doc["patient_id"] == p["id"] and doc["recipient"] == "gp" and doc["author"] == "clin"
    docs = call("clin", "GET", "/api/v1/patients/{patient_id}/documents", path=pid)["documents"]
    assert [x["id"] for x in docs] == [doc["id"]]
    seen.add(("GET", "/api/v1/documents/{document_id}"))
    pdf = c.call("clin", "GET", f"/api/v1/documents/{doc['id']}")
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF")
    batch = call("clin", "POST", "/api/v1/letters/batch")
    assert batch["month"] == TODAY.strftime("%Y-%m") and batch["transferred"] == len(batch["made"]) + len(
        batch["already_written"]
    )

    events = call("boss", "GET", "/api/v1/audit", params={"patient_id": p["id"], "limit": 500})["events"]
    assert {e["patient_id"] for e in events} == {p["id"]}
    done = {(e["user"], e["action"], e["resource"]) for e in events}
    for expected in [
        ("clin", "write", "create-patient"),
        ("clin", "read", "view-patient"),
        ("clin", "write", "add-lab"),
        ("clin", "read", "list-observations"),
        ("clin", "write", "add-medicine"),
        ("clin", "write", "change-dose"),
        ("clin", "write", "hold-azathioprine"),
        ("clin", "write", "dismiss-follow-up"),
        ("clin", "write", "add-vaccine"),
        ("clin", "write", "report-symptom"),
        ("clin", "read", "view-assessment"),
        ("clin", "read", "list-findings"),
        ("clin", "write", "review"),
    ]:
        assert expected in done, (expected, sorted(done))
    assert all(e["channel"] == "api" and e["at"] for e in events)

    assert seen == api_routes(c.client.app), "an API route has no happy-path call here"


# ---------------------------------------------------------------- the JSON error format
@dataclass(frozen=True)
class Bad:
    """One bad request. `path` values name an id in Clinic.ids or are literal; the route is the template."""

    who: str
    method: str
    route: str
    status: int
    fragment: str = ""
    path: tuple[tuple[str, str | int], ...] = ()
    json: Any = None
    params: dict[str, Any] | None = None
    content: str | None = None


P = (("patient_id", "alma"),)
NOBODY = (("patient_id", "missing"),)
FIND = (("finding_id", "open"),)
LAB = {"analyte": "neutrophils", "value": 2.0, "unit": "10*9/L", "date": "2025-01-01"}
R = {
    "patients": "/api/v1/patients",
    "patient": "/api/v1/patients/{patient_id}",
    "obs": "/api/v1/patients/{patient_id}/observations",
    "meds": "/api/v1/patients/{patient_id}/medicines",
    "dose": "/api/v1/patients/{patient_id}/dose",
    "hold": "/api/v1/patients/{patient_id}/hold",
    "dismiss": "/api/v1/patients/{patient_id}/follow-ups/dismiss",
    "vaccines": "/api/v1/patients/{patient_id}/vaccines",
    "symptoms": "/api/v1/patients/{patient_id}/symptoms",
    "assessment": "/api/v1/patients/{patient_id}/assessment",
    "findings": "/api/v1/patients/{patient_id}/findings",
    "reviews": "/api/v1/findings/{finding_id}/reviews",
    "owner": "/api/v1/patients/{patient_id}/owner",
    "letters": "/api/v1/patients/{patient_id}/letters",
    "documents": "/api/v1/patients/{patient_id}/documents",
    "document": "/api/v1/documents/{document_id}",
    "worklist": "/api/v1/worklist",
    "import": "/api/v1/import",
    "quarantine": "/api/v1/quarantine",
    "reprocess": "/api/v1/quarantine/{item_id}/reprocess",
    "discard": "/api/v1/quarantine/{item_id}/discard",
    "audit": "/api/v1/audit",
    "token": "/api/v1/token",
}
BAD: dict[str, Bad] = {
    # 422: the request does not match the schema (body, query or path)
    "token-missing-password": Bad("anon", "POST", R["token"], 422, "password", json={"username": "clin"}),
    "patients-limit-0": Bad("clin", "GET", R["patients"], 422, "limit", params={"limit": 0}),
    "patient-extra-field": Bad("clin", "POST", R["patients"], 422, "extra", json={"identifier": "X", "ssn": "1"}),
    "patient-bad-sex": Bad("clin", "POST", R["patients"], 422, "sex", json={"identifier": "X", "sex": "yes"}),
    "patient-id-not-a-number": Bad("clin", "GET", R["patient"], 422, "patient_id", path=(("patient_id", "abc"),)),
    "patient-id-too-big": Bad("clin", "GET", R["patient"], 422, "patient_id", path=(("patient_id", 2**40),)),
    "patient-id-negative": Bad("clin", "GET", R["patient"], 422, "patient_id", path=(("patient_id", -1),)),
    "obs-history-not-bool": Bad("clin", "GET", R["obs"], 422, "include_history", P, params={"include_history": "x"}),
    "obs-negative-value": Bad("clin", "POST", R["obs"], 422, "value", P, json={**LAB, "value": -1}),
    "obs-not-a-date": Bad("clin", "POST", R["obs"], 422, "date", P, json={**LAB, "date": "yesterday"}),
    "obs-missing-unit": Bad(
        "clin", "POST", R["obs"], 422, "unit", P, json={k: v for k, v in LAB.items() if k != "unit"}
    ),
    "obs-not-json": Bad("clin", "POST", R["obs"], 422, "", P, content="value=1"),
    "meds-id-too-big": Bad("clin", "GET", R["meds"], 422, "patient_id", path=(("patient_id", 2**31),)),
    "meds-bad-status": Bad("clin", "POST", R["meds"], 422, "status", P, json={"name": "x", "status": "stopped"}),
    "hold-no-reason": Bad("clin", "POST", R["hold"], 422, "reason", P, json={}),
    "hold-missing": Bad("clin", "POST", R["hold"], 404, "does not exist", NOBODY, json={"reason": "x"}),
    "dismiss-no-key": Bad("clin", "POST", R["dismiss"], 422, "key", P, json={"reason": "x"}),
    "dismiss-missing": Bad(
        "clin", "POST", R["dismiss"], 404, "does not exist", NOBODY, json={"key": "k", "reason": "x"}
    ),
    "dose-zero": Bad("clin", "POST", R["dose"], 422, "mg_per_day", P, json={"mg_per_day": 0, "start": "2025-01-01"}),
    "vaccine-bad-status": Bad("clin", "POST", R["vaccines"], 422, "status", P, json={"name": "x", "status": "maybe"}),
    "symptom-empty": Bad("clin", "POST", R["symptoms"], 422, "symptom", P, json={"symptom": ""}),
    "assessment-id-text": Bad("clin", "GET", R["assessment"], 422, "patient_id", path=(("patient_id", "1.5"),)),
    "findings-id-text": Bad("clin", "GET", R["findings"], 422, "patient_id", path=(("patient_id", "x"),)),
    "review-bad-outcome": Bad("clin", "POST", R["reviews"], 422, "outcome", FIND, json={"outcome": "ignored"}),
    "worklist-bad-severity": Bad("clin", "GET", R["worklist"], 422, "severity", params={"severity": "info"}),
    "worklist-bad-sort": Bad("clin", "GET", R["worklist"], 422, "sort", params={"sort": "age"}),
    "worklist-bad-needs": Bad("clin", "GET", R["worklist"], 422, "needs", params={"needs": "info"}),
    "owner-no-username": Bad("clin", "POST", R["owner"], 422, "username", P, json={}),
    "owner-a-patient": Bad("clin", "POST", R["owner"], 400, "not an active clinician", P, json={"username": "alma"}),
    "owner-missing": Bad("clin", "POST", R["owner"], 404, "does not exist", NOBODY, json={"username": "clin"}),
    "letter-bad-recipient": Bad("clin", "POST", R["letters"], 422, "recipient", P, json={"recipient": "dentist"}),
    "letter-missing": Bad("clin", "POST", R["letters"], 404, "does not exist", NOBODY, json={"recipient": "gp"}),
    "documents-id-text": Bad("clin", "GET", R["documents"], 422, "patient_id", path=(("patient_id", "x"),)),
    "documents-missing": Bad("clin", "GET", R["documents"], 404, "does not exist", NOBODY),
    "document-id-text": Bad("clin", "GET", R["document"], 422, "document_id", path=(("document_id", "x"),)),
    "document-missing": Bad("clin", "GET", R["document"], 404, "does not exist", (("document_id", "missing"),)),
    "import-bad-format": Bad("clin", "POST", R["import"], 422, "format", params={"format": "xml"}, content="x"),
    "quarantine-bad-state": Bad("boss", "GET", R["quarantine"], 422, "state", params={"state": "all"}),
    "reprocess-id-text": Bad("boss", "POST", R["reprocess"], 422, "item_id", path=(("item_id", "one"),)),
    "discard-no-reason": Bad("boss", "POST", R["discard"], 422, "reason", (("item_id", "discarded"),), json={}),
    "audit-limit-too-big": Bad("boss", "GET", R["audit"], 422, "limit", params={"limit": 100_000}),
    # NUL (U+0000) anywhere in text: PostgreSQL cannot store it, so it is refused up front (was a 500 there)
    "nul-in-username": Bad("anon", "POST", R["token"], 422, "nul", json={"username": "cl\x00in", "password": "x"}),
    "nul-in-identifier": Bad("clin", "POST", R["patients"], 422, "nul", json={"identifier": "NUL\x00-1"}),
    "nul-in-search": Bad("clin", "GET", R["patients"], 422, "search", params={"search": "Alma\x00"}),
    "nul-in-analyte": Bad("clin", "GET", R["obs"], 422, "analyte", P, params={"analyte": "wbc\x00"}),
    "nul-in-unit": Bad("clin", "POST", R["obs"], 422, "nul", P, json={**LAB, "unit": "10*9/L\x00"}),
    "nul-in-medicine": Bad(
        "clin", "POST", R["meds"], 422, "nul", P, json={"name": "Allo\x00purinol", "status": "draft"}
    ),
    "nul-in-vaccine": Bad("clin", "POST", R["vaccines"], 422, "nul", P, json={"name": "Flu\x00", "status": "ordered"}),
    "nul-in-symptom": Bad("clin", "POST", R["symptoms"], 422, "nul", P, json={"symptom": "fever\x00"}),
    "nul-in-review-note": Bad(
        "clin", "POST", R["reviews"], 422, "nul", FIND, json={"outcome": "withheld", "note": "held\x00"}
    ),
    "nul-in-worklist-search": Bad("clin", "GET", R["worklist"], 422, "search", params={"search": "x\x00"}),
    "nul-in-import-body": Bad("clin", "POST", R["import"], 400, "nul", content="patient_id\nAPI-0001\x00\n"),
    "nul-in-import-filename": Bad(
        "clin", "POST", R["import"], 422, "filename", params={"filename": "a\x00.csv"}, content="patient_id\n"
    ),
    "nul-in-discard-reason": Bad(
        "boss", "POST", R["discard"], 422, "nul", (("item_id", "discarded"),), json={"reason": "x\x00"}
    ),
    # 400: well-formed, but the value is wrong
    "patient-duplicate": Bad("clin", "POST", R["patients"], 400, "already exists", json={"identifier": "API-0001"}),
    "patient-born-tomorrow": Bad(
        "clin",
        "POST",
        R["patients"],
        400,
        "future",
        json={"identifier": "API-FUT", "birth_date": (TODAY + timedelta(days=1)).isoformat()},
    ),
    "obs-unknown-unit": Bad("clin", "POST", R["obs"], 400, "not a known unit", P, json={**LAB, "unit": "furlongs"}),
    "obs-unknown-analyte": Bad("clin", "POST", R["obs"], 400, "unknown test", P, json={**LAB, "analyte": "unobtanium"}),
    "obs-future-date": Bad(
        "clin", "POST", R["obs"], 400, "future", P, json={**LAB, "date": (TODAY + timedelta(days=3)).isoformat()}
    ),
    "meds-active-without-start": Bad("clin", "POST", R["meds"], 400, "start", P, json={"name": "Prednisolone 5 mg"}),
    "dose-future-start": Bad(
        "clin",
        "POST",
        R["dose"],
        400,
        "future",
        P,
        json={"mg_per_day": 50, "start": (TODAY + timedelta(days=5)).isoformat()},
    ),
    "vaccine-given-without-date": Bad(
        "clin", "POST", R["vaccines"], 400, "date", P, json={"name": "Flu", "status": "given"}
    ),
    "symptom-future": Bad(
        "clin",
        "POST",
        R["symptoms"],
        400,
        "future",
        P,
        json={"symptom": "fever", "date": (TODAY + timedelta(1)).isoformat()},
    ),
    "review-not-relevant-without-reason": Bad(
        "clin", "POST", R["reviews"], 400, "reason is required", FIND, json={"outcome": "not-relevant"}
    ),
    "review-already-reviewed": Bad(
        "clin", "POST", R["reviews"], 400, "not open", (("finding_id", "reviewed"),), json={"outcome": "withheld"}
    ),
    "import-empty": Bad("clin", "POST", R["import"], 400, "empty", content="  \n"),
    "import-unknown-format": Bad("clin", "POST", R["import"], 400, "cannot tell the format", content="hello"),
    "import-not-utf8": Bad("clin", "POST", R["import"], 400, "utf-8", content="\udcff"),
    "reprocess-discarded": Bad("boss", "POST", R["reprocess"], 400, "discarded", (("item_id", "discarded"),)),
    "discard-blank-reason": Bad(
        "boss", "POST", R["discard"], 400, "reason is required", (("item_id", "discarded"),), json={"reason": "   "}
    ),
    # 403: authenticated, not allowed (the patient-scoped routes are covered in full by test_access.py)
    "patient-creates-patient": Bad("alma", "POST", R["patients"], 403, "needs the role", json={"identifier": "Z"}),
    # Another patient's record is answered as a missing one (404), so its existence is not told
    "patient-reads-other": Bad("alma", "GET", R["patient"], 404, "does not exist", (("patient_id", "other"),)),
    "patient-adds-own-lab": Bad("alma", "POST", R["obs"], 403, "not allowed", P, json=LAB),
    "patient-claims-self": Bad("alma", "POST", R["owner"], 403, "not allowed", P, json={"username": "clin"}),
    "patient-reviews": Bad("alma", "POST", R["reviews"], 403, "clinician", FIND, json={"outcome": "withheld"}),
    "patient-worklist": Bad("alma", "GET", R["worklist"], 403, "clinician"),
    "patient-imports": Bad("alma", "POST", R["import"], 403, "clinician", content="patient_id\n"),
    "patient-quarantine": Bad("alma", "GET", R["quarantine"], 403, "clinician or admin"),
    "clinician-reprocess": Bad("clin", "POST", R["reprocess"], 403, "admin", (("item_id", "discarded"),)),
    "clinician-discard": Bad(
        "clin", "POST", R["discard"], 403, "admin", (("item_id", "discarded"),), json={"reason": "x"}
    ),
    "clinician-audit": Bad("clin", "GET", R["audit"], 403, "admin"),
    # 404: no such row (or no such route)
    "patient-missing": Bad("clin", "GET", R["patient"], 404, "does not exist", NOBODY),
    "obs-list-missing": Bad("clin", "GET", R["obs"], 404, "does not exist", NOBODY),
    "obs-add-missing": Bad("clin", "POST", R["obs"], 404, "does not exist", NOBODY, json=LAB),
    "meds-list-missing": Bad("clin", "GET", R["meds"], 404, "does not exist", NOBODY),
    "meds-add-missing": Bad(
        "clin", "POST", R["meds"], 404, "does not exist", NOBODY, json={"name": "x", "start": "2025-01-01"}
    ),
    "dose-missing": Bad(
        "clin", "POST", R["dose"], 404, "does not exist", NOBODY, json={"mg_per_day": 50, "start": "2025-01-01"}
    ),
    "vaccine-missing": Bad(
        "clin", "POST", R["vaccines"], 404, "does not exist", NOBODY, json={"name": "Flu", "status": "ordered"}
    ),
    "symptom-missing": Bad("clin", "POST", R["symptoms"], 404, "does not exist", NOBODY, json={"symptom": "fever"}),
    "assessment-missing": Bad("clin", "GET", R["assessment"], 404, "does not exist", NOBODY),
    "findings-missing": Bad("clin", "GET", R["findings"], 404, "does not exist", NOBODY),
    "review-missing": Bad(
        "clin", "POST", R["reviews"], 404, "does not exist", (("finding_id", "missing"),), json={"outcome": "withheld"}
    ),
    "reprocess-missing": Bad("boss", "POST", R["reprocess"], 404, "does not exist", (("item_id", "missing"),)),
    "discard-missing": Bad(
        "boss", "POST", R["discard"], 404, "does not exist", (("item_id", "missing"),), json={"reason": "x"}
    ),
    "no-such-route": Bad("clin", "GET", "/api/v1/nothing-here", 404, "not found"),
    "wrong-method": Bad("clin", "DELETE", R["patients"], 405, "not allowed"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_requests_get_the_json_error_shape(clinic: Clinic, name: str) -> None:
    bad = BAD[name]
    values = {k: clinic.ids[v] if isinstance(v, str) and v in clinic.ids else v for k, v in bad.path}
    kw: dict[str, Any] = {"params": bad.params}
    if bad.json is not None:
        kw["json"] = bad.json
    if bad.content is not None:
        raw = bad.content.encode("utf-8", "surrogateescape")
        kw["content"] = raw
        kw["headers"] = {"Content-Type": "text/plain" if bad.route.endswith("import") else "application/json"}
    with clinic.db.session() as s:
        before = _counts(s)
    r = clinic.call(bad.who, bad.method, bad.route.format(**values), **kw)
    assert_error(r, bad.status, bad.fragment)
    with clinic.db.session() as s:
        assert _counts(s) == before, "a refused request changed data"


def _counts(s: Any) -> tuple[int, ...]:
    tables = (m.Patient, m.Observation, m.Medication, m.Immunization, m.Symptom, m.Review, m.ImportBatch)
    return tuple(s.scalar(select(func.count()).select_from(t)) or 0 for t in tables)


def test_the_error_table_covers_every_route_and_status(clinic: Clinic) -> None:
    routes = api_routes(clinic.client.app)
    by_status: dict[int, set[tuple[str, str]]] = {}
    for bad in BAD.values():
        by_status.setdefault(bad.status, set()).add((bad.method, bad.route))
    # no body, no parameters: nothing can be invalid
    takes_input = routes - {("DELETE", "/api/v1/token"), ("POST", "/api/v1/letters/batch")}
    assert by_status[422] >= takes_input, f"no 422 case for {sorted(takes_input - by_status[422])}"
    with_ids = {r for r in routes if "{" in r[1]}
    assert by_status[404] >= with_ids, f"no 404 case for {sorted(with_ids - by_status[404])}"
    assert {400, 403, 404, 405, 422} <= set(by_status)  # 401 on every route: test_every_api_route_needs_a_token


# ---------------------------------------------------------------- the review workflow end to end
def test_critical_result_review_and_reopen(clinic: Clinic, kb: Knowledge) -> None:
    c = clinic
    ident = f"FLOW-{c.db.engine.dialect.name}"
    b = on_treatment(ident, start=days_ago(300))
    b.condition("91637004", "Myasthenia gravis", days_ago(400))
    b.bloods(days_ago(30))
    b.weight(70, days_ago(30))
    r = c.call(
        "clin",
        "POST",
        "/api/v1/import",
        params={"format": "fhir", "filename": "flow.json"},
        content=json.dumps(b.bundle()),
        headers={"Content-Type": "application/fhir+json"},
    )
    assert r.status_code == 200 and r.json()["patients_created"] == 1, r.text
    pid = c.call("clin", "GET", "/api/v1/patients", params={"search": ident}).json()["patients"][0]["id"]

    def worklist() -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = c.call("clin", "GET", "/api/v1/worklist", params={"search": ident}).json()[
            "entries"
        ]
        return entries

    def open_critical() -> list[dict[str, Any]]:
        rows = c.call("clin", "GET", f"/api/v1/patients/{pid}/findings").json()["findings"]
        return [f for f in rows if f["severity"] == "critical" and f["state"] == "open"]

    def fbc(neutrophils: float, when: str) -> dict[str, Any]:
        out = {}
        for analyte, value in (("wbc", 4.2), ("neutrophils", neutrophils), ("platelets", 230)):
            body = {"analyte": analyte, "value": value, "unit": "10*9/L", "date": when}
            r = c.call("clin", "POST", f"/api/v1/patients/{pid}/observations", json=body)
            assert r.status_code == 201, r.text
            out[analyte] = r.json()
        return out

    assert worklist() == [] and open_critical() == []  # a well-monitored patient: nothing to do

    low = fbc(0.6, days_ago(10))
    assert low["neutrophils"]["review_state"] == "flagged" and low["platelets"]["review_state"] == "auto"
    a = c.call("clin", "GET", f"/api/v1/patients/{pid}/assessment").json()
    crit = [f for f in a["findings"] if f["severity"] == "critical"]
    assert [f["code"] for f in crit] == ["lab-neutrophils-low"]
    assert str(low["neutrophils"]["id"]) in {str(e.get("id")) for e in crit[0]["evidence"]}, crit[0]["evidence"]
    (finding,) = open_critical()
    assert finding["code"] == "lab-neutrophils-low"
    (entry,) = worklist()
    assert entry["worst"] == "critical" and "lab" in entry["categories"] and entry["open_count"] >= 1

    r = c.call(
        "clin", "POST", f"/api/v1/findings/{finding['id']}/reviews", json={"outcome": "withheld", "note": "held"}
    )
    assert r.status_code == 201, r.text
    # Closed, and azathioprine on hold; the repeat FBC the finding asked for is still awaited.
    assert open_critical() == [] and [(e["awaiting"], e["treatment"]) for e in worklist()] == [(["FBC"], "on-hold")]
    # Re-assessing the same evidence does not re-open it.
    c.call("clin", "GET", f"/api/v1/patients/{pid}/assessment")
    assert open_critical() == [] and [e["awaiting"] for e in worklist()] == [["FBC"]]

    fbc(0.7, days_ago(3))  # a later low result is new evidence
    (again,) = open_critical()
    assert again["code"] == "lab-neutrophils-low" and again["id"] != finding["id"]
    (entry,) = worklist()
    assert entry["worst"] == "critical"


def test_a_nul_escape_inside_an_imported_bundle_is_not_a_server_error(
    clinic: Clinic, request: pytest.FixtureRequest
) -> None:
    """The body has no NUL byte, but the JSON escape \\u0000 decodes to one inside the FHIR reader."""
    client = TestClient(clinic.client.app, raise_server_exceptions=False)
    body = json.dumps(on_treatment("NUL\x00ID").bundle())
    assert "\x00" not in body
    r = client.post(
        "/api/v1/import",
        params={"format": "fhir"},
        content=body,
        headers={**clinic.h("clin"), "Content-Type": "application/fhir+json"},
    )
    assert r.status_code in (200, 400), r.text
