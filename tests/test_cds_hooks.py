"""CDS Hooks 2.0 services: discovery, JWT security, cards for patient-view / order-select /
order-sign, missing data, feedback. In-process on SQLite with real ES384/RS384 keys; the real
sandbox and FHIR server are driven in tests/test_cds_sandbox.py.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from azaguard.app import Settings, create_app
from azaguard.ehr import cds_auth
from azaguard.fhirbuild import BundleBuilder
from azaguard.knowledge import Knowledge
from azaguard.render.cards import SUMMARY_MAX
from azaguard.store import models as m
from azaguard.store.db import Database

BASE = "http://testserver"
ISS = "https://ehr.example.org"
TODAY = date.today()
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class Signer:
    """An EHR's key pair: signs CDS Hooks JWTs as the specification describes."""

    def __init__(self, alg: str = "ES384", kid: str | None = None) -> None:
        self.alg = alg
        self.kid = kid or str(uuid.uuid4())
        if alg.startswith("ES"):
            self.key: Any = ec.generate_private_key(ec.SECP384R1())
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        else:
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        self.jwks = {"keys": [{**jwk, "kid": self.kid, "alg": alg, "use": "sig"}]}

    def token(self, aud: str, iss: str = ISS, headers: dict[str, Any] | None = None, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": iss, "aud": aud, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4()), **claims}
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.key, algorithm=self.alg, headers={"kid": self.kid, **(headers or {})})


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, kb: Knowledge, signer: Signer
) -> Iterator[tuple[Database, TestClient]]:
    path: Path = tmp_path_factory.mktemp("cds") / "cds.db"
    db = Database(f"sqlite:///{path}")
    jwks = tmp_path_factory.mktemp("keys") / "jwks.json"
    jwks.write_text(json.dumps(signer.jwks))
    cds_auth.add_client(db, ISS, jwks_file=str(jwks), fhir_servers=["http://127.0.0.1:9/fhir"])
    with db.write() as s:
        s.add(m.Patient(identifier="NHS-CDS-1", name="Cds Patient", created_at=m_now()))
    client = TestClient(create_app(db, kb, settings=Settings(public_url=BASE)), base_url=BASE)
    yield db, client
    db.engine.dispose()


def m_now() -> Any:
    from azaguard.store.records import now

    return now()


def auth(signer: Signer, path: str, **kw: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {signer.token(BASE + path, **kw)}"}


# ---------------------------------------------------------------- record builders
def on_azathioprine(neut: float = 3.5, dose: float = 150, weight: float = 70) -> BundleBuilder:
    b = BundleBuilder("ehr-1", birth_date="1970-01-01", gender="female", name="Cds Patient")
    b.entries[0]["identifier"] = [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "NHS-CDS-1"}]
    start = TODAY - timedelta(days=400)
    b.azathioprine(start, dose).weight(weight, TODAY - timedelta(days=30))
    b.genotype("TPMT", "*1/*1", start - timedelta(days=30)).genotype("NUDT15", "*1/*1", start - timedelta(days=30))
    b.bloods(TODAY - timedelta(days=5)).fbc(TODAY - timedelta(days=2), wbc=3.0, neut=neut, plt=200)
    return b


def new_patient(tpmt: str = "*1/*1", weight: float = 70) -> BundleBuilder:
    b = BundleBuilder("ehr-2", birth_date="1980-05-05", gender="male", name="New Patient")
    b.weight(weight, TODAY - timedelta(days=10)).bloods(TODAY - timedelta(days=10))
    b.genotype("TPMT", tpmt, TODAY - timedelta(days=20)).genotype("NUDT15", "*1/*1", TODAY - timedelta(days=20))
    for loinc, name in (("5196-1", "HBsAg"), ("16933-4", "anti-HBc"), ("16128-1", "HCV"), ("75622-1", "HIV")):
        b.screening(loinc, name, TODAY - timedelta(days=20))
    b.screening("19162-7", "VZV IgG", TODAY - timedelta(days=20), result="Positive")
    return b


KEYS = {
    "Observation": "observations",
    "MedicationRequest": "medicationRequests",
    "MedicationStatement": "medicationStatements",
    "Condition": "conditions",
    "Immunization": "immunizations",
    "AllergyIntolerance": "allergies",
}


def prefetch(b: BundleBuilder, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {k: {"resourceType": "Bundle", "type": "searchset", "entry": []} for k in KEYS.values()}
    for r in b.entries:
        if r["resourceType"] == "Patient":
            out["patient"] = r
        else:
            out[KEYS[r["resourceType"]]]["entry"].append({"resource": r})
    return {k: v for k, v in out.items() if k not in drop}


def draft(rxnorm: str, display: str, tablets: float, per_day: int = 1, rid: str = "request-123") -> dict[str, Any]:
    """A draft MedicationRequest as the CDS Hooks sandbox sends it (tablets, category an object)."""
    return {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": "draft",
        "subject": {"reference": "Patient/ehr-1"},
        "category": {"coding": [{"code": "outpatient"}]},
        "medicationCodeableConcept": {
            "text": display,
            "coding": [{"display": display, "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": rxnorm}],
        },
        "dosageInstruction": [
            {
                "doseAndRate": [
                    {"doseQuantity": {"value": tablets, "system": "http://unitsofmeasure.org", "code": "{pill}"}}
                ],
                "timing": {"repeat": {"frequency": per_day, "period": 1, "periodUnit": "d"}},
            }
        ],
    }


def hook_body(hook: str, b: BundleBuilder, drafts: list[dict[str, Any]] | None = None, **kw: Any) -> dict[str, Any]:
    ctx: dict[str, Any] = {"userId": "Practitioner/COREPRACTITIONER1", "patientId": b.patient_id}
    if drafts is not None:
        ctx["draftOrders"] = {"resourceType": "Bundle", "entry": [{"resource": r} for r in drafts]}
        if hook == "order-select":
            ctx["selections"] = [f"MedicationRequest/{drafts[0]['id']}"]
    body = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": ctx, "prefetch": prefetch(b)}
    body.update(kw)
    return body


def call(client: TestClient, signer: Signer, service: str, body: dict[str, Any]) -> Any:
    path = f"/cds-services/{service}"
    r = client.post(path, json=body, headers=auth(signer, path))
    assert r.status_code == 200, r.text
    return r.json()["cards"]


def check_card(card: dict[str, Any]) -> None:
    """A card as CDS Hooks 2.0 defines it (no official JSON schema exists for 2.0: the spec's text)."""
    assert UUID.match(card["uuid"])
    assert 0 < len(card["summary"]) <= SUMMARY_MAX
    assert card["indicator"] in ("info", "warning", "critical")
    assert card["source"]["label"] and card["source"]["url"].startswith("http")
    assert "knowledge" in card["detail"]
    for link in card.get("links", []):
        assert link["type"] in ("absolute", "smart") and link["url"].startswith("http") and link["label"]
    for sug in card.get("suggestions", []):
        assert sug["label"] and UUID.match(sug["uuid"])
        for action in sug["actions"]:
            assert action["type"] in ("create", "update", "delete") and action["description"]
            if action["type"] == "delete":
                assert all(re.match(r"^[A-Za-z]+/[^/]+$", x) for x in action["resourceId"])
            else:
                assert action["resource"]["resourceType"]
    if "suggestions" in card:
        assert card["selectionBehavior"] in ("at-most-one", "any")
    for reason in card.get("overrideReasons", []):
        assert reason["code"] and reason["display"]


# ---------------------------------------------------------------- discovery and security
def test_discovery_lists_three_services_with_prefetch(env: Any, signer: Signer) -> None:
    _, client = env
    r = client.get("/cds-services", headers=auth(signer, "/cds-services"))
    assert r.status_code == 200
    services = {s["hook"]: s for s in r.json()["services"]}
    assert set(services) == {"patient-view", "order-select", "order-sign"}
    pf = services["order-sign"]["prefetch"]
    assert pf["patient"] == "Patient/{{context.patientId}}"
    assert "http://loinc.org|751-8" in pf["observations"]  # neutrophils
    assert "http://loinc.org|84413-4" in pf["observations"]  # a PGx genotype
    assert {"medicationRequests", "medicationStatements", "conditions", "immunizations", "allergies"} <= set(pf)
    assert r.headers["access-control-allow-origin"] == "*"


def test_preflight_needs_no_token(env: Any) -> None:
    _, client = env
    r = client.options("/cds-services/azaguard-order-sign", headers={"Origin": "http://127.0.0.1:8300"})
    assert r.status_code == 204
    assert "Authorization" in r.headers["access-control-allow-headers"]


def denied_rows(db: Database) -> int:
    with db.session() as s:
        return (
            s.scalar(
                select(func.count())
                .select_from(m.AuditEvent)
                .where(m.AuditEvent.channel == "cds", m.AuditEvent.action == "denied")
            )
            or 0
        )


@pytest.mark.parametrize(
    "case",
    [
        "no-token",
        "not-a-jwt",
        "unknown-issuer",
        "wrong-audience",
        "expired",
        "issued-in-the-future",
        "no-jti",
        "hs256",
        "alg-none",
        "other-key",
        "unknown-kid",
    ],
)
def test_bad_tokens_are_refused_and_audited(env: Any, signer: Signer, case: str) -> None:
    db, client = env
    path = "/cds-services/azaguard-patient-view"
    now = int(time.time())
    token: str | None
    if case == "no-token":
        token = None
    elif case == "not-a-jwt":
        token = "abc.def"
    elif case == "unknown-issuer":
        token = signer.token(BASE + path, iss="https://evil.example")
    elif case == "wrong-audience":
        token = signer.token(BASE + "/cds-services/azaguard-order-sign")
    elif case == "expired":
        token = signer.token(BASE + path, iat=now - 400, exp=now - 100)
    elif case == "issued-in-the-future":
        token = signer.token(BASE + path, iat=now + 60, exp=now + 360)
    elif case == "no-jti":
        token = signer.token(BASE + path, jti=None)
    elif case == "hs256":
        token = jwt.encode(
            {"iss": ISS, "aud": BASE + path, "iat": now, "exp": now + 60, "jti": "x"}, "secret" * 6, "HS256"
        )
    elif case == "alg-none":
        token = jwt.encode({"iss": ISS, "aud": BASE + path, "iat": now, "exp": now + 60, "jti": "y"}, "", "none")
    elif case == "other-key":
        token = Signer(kid=signer.kid).token(BASE + path)
    else:
        token = Signer().token(BASE + path)
    before = denied_rows(db)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = client.post(path, json=hook_body("patient-view", on_azathioprine()), headers=headers)
    assert r.status_code == 401, (case, r.text)
    assert r.headers["www-authenticate"] == "Bearer"
    assert "cards" not in r.json()
    assert denied_rows(db) == before + 1


def test_a_token_within_the_clock_leeway_is_accepted(env: Any, signer: Signer) -> None:
    _, client = env
    path = "/cds-services/azaguard-patient-view"
    now = int(time.time())
    token = signer.token(BASE + path, iat=now + 3, exp=now + 303)  # the sandbox rounds iat up
    r = client.post(
        path, json=hook_body("patient-view", on_azathioprine()), headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 200


def test_a_replayed_token_is_refused(env: Any, signer: Signer) -> None:
    db, client = env
    path = "/cds-services/azaguard-patient-view"
    headers = auth(signer, path)
    body = hook_body("patient-view", on_azathioprine())
    assert client.post(path, json=body, headers=headers).status_code == 200
    before = denied_rows(db)
    again = client.post(path, json=body, headers=headers)
    assert again.status_code == 401 and "replay" in again.json()["reason"]
    assert denied_rows(db) == before + 1


class _JwksServer:
    def __init__(self, jwks: dict[str, Any]) -> None:
        payload = json.dumps(jwks).encode()
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_jku_is_honoured_only_when_allow_listed(tmp_path: Path, kb: Knowledge) -> None:
    rotated = Signer(alg="RS384")
    server = _JwksServer(rotated.jwks)
    db = Database(f"sqlite:///{tmp_path / 'jku.db'}")
    pinned = Signer()
    (tmp_path / "k.json").write_text(json.dumps(pinned.jwks))
    cds_auth.add_client(db, ISS, jwks_file=str(tmp_path / "k.json"), jku_allow=[server.url])
    cds_auth.add_client(db, "https://other.example", jwks_file=str(tmp_path / "k.json"))
    client = TestClient(create_app(db, kb, settings=Settings(public_url=BASE)), base_url=BASE)
    path = "/cds-services"
    # The allowed jku: its keys are fetched and a token signed by them passes.
    ok = client.get(
        path, headers={"Authorization": f"Bearer {rotated.token(BASE + path, headers={'jku': server.url})}"}
    )
    assert ok.status_code == 200 and server.hits == 1
    # Another issuer naming the same jku is not allowed it: nothing fetched, its pinned key decides.
    tok = rotated.token(BASE + path, iss="https://other.example", headers={"jku": server.url})
    assert client.get(path, headers={"Authorization": f"Bearer {tok}"}).status_code == 401
    assert server.hits == 1
    # A jku off the list does not stop a token signed by the registered key.
    tok = pinned.token(BASE + path, iss="https://other.example", headers={"jku": "http://127.0.0.1:9/keys"})
    assert client.get(path, headers={"Authorization": f"Bearer {tok}"}).status_code == 200
    server.server.shutdown()
    db.engine.dispose()


def test_registration_refuses_private_keys_and_bad_input(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'reg.db'}")
    private = Signer()
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(private.key, as_dict=True)
    (tmp_path / "private.json").write_text(json.dumps({"keys": [jwk]}))
    with pytest.raises(ValueError, match="private"):
        cds_auth.add_client(db, ISS, jwks_file=str(tmp_path / "private.json"))
    with pytest.raises(ValueError, match="exactly one"):
        cds_auth.add_client(db, ISS)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="JWK Set"):
        cds_auth.add_client(db, ISS, jwks_file=str(tmp_path / "bad.json"))
    assert cds_auth.list_clients(db) == []
    db.engine.dispose()


def test_a_removed_client_is_refused(tmp_path: Path, kb: Knowledge) -> None:
    db = Database(f"sqlite:///{tmp_path / 'rm.db'}")
    s = Signer()
    (tmp_path / "k.json").write_text(json.dumps(s.jwks))
    cds_auth.add_client(db, ISS, jwks_file=str(tmp_path / "k.json"))
    client = TestClient(create_app(db, kb, settings=Settings(public_url=BASE)), base_url=BASE)
    assert client.get("/cds-services", headers=auth(s, "/cds-services")).status_code == 200
    assert cds_auth.remove_client(db, ISS)
    assert client.get("/cds-services", headers=auth(s, "/cds-services")).status_code == 401
    db.engine.dispose()


@pytest.mark.parametrize(
    ("service", "mutate", "status"),
    [
        ("azaguard-patient-view", lambda b: b.update(hook="order-sign"), 400),
        ("azaguard-patient-view", lambda b: b["context"].pop("patientId"), 400),
        ("azaguard-order-sign", lambda b: b["context"].pop("draftOrders", None), 400),
        ("no-such-service", lambda b: None, 404),
    ],
)
def test_bad_requests_name_the_field(env: Any, signer: Signer, service: str, mutate: Any, status: int) -> None:
    _, client = env
    hook = "order-sign" if service == "azaguard-order-sign" else "patient-view"
    body = hook_body(
        hook,
        on_azathioprine(),
        [draft("197388", "Azathioprine 50 MG Oral Tablet", 1)] if hook != "patient-view" else None,
    )
    mutate(body)
    path = f"/cds-services/{service}"
    r = client.post(path, json=body, headers=auth(signer, path))
    assert r.status_code == status, r.text
    if status == 400:
        assert re.search(r"hook|context\.patientId|context\.draftOrders", r.json()["reason"])


def test_invalid_json_is_a_400(env: Any, signer: Signer) -> None:
    _, client = env
    path = "/cds-services/azaguard-patient-view"
    r = client.post(path, content=b"{not json", headers={**auth(signer, path), "Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["reason"]


# ---------------------------------------------------------------- patient-view
def test_patient_view_shows_a_critical_neutrophil_count(env: Any, signer: Signer) -> None:
    db, client = env
    cards = call(client, signer, "azaguard-patient-view", hook_body("patient-view", on_azathioprine(neut=0.9)))
    for c in cards:
        check_card(c)
    critical = [c for c in cards if c["indicator"] == "critical"]
    assert critical, cards
    neut = [c for c in critical if c["source"]["topic"]["code"].startswith("lab-neutrophils")]
    assert neut, [c["source"]["topic"]["code"] for c in critical]
    card = neut[0]
    assert "0.9" in card["summary"] + card["detail"]
    assert card["links"][0]["type"] == "smart" and card["links"][0]["url"] == BASE + "/smart/launch"
    assert "What to do" in card["detail"] and "Why (sources)" in card["detail"]
    # The card is stored against the clinic's record (matched by identifier) and the call audited.
    with db.session() as s:
        row = s.get(m.CdsCard, card["uuid"])
        assert row is not None and row.patient_id is not None and row.indicator == "critical"
        audited = s.scalar(
            select(func.count())
            .select_from(m.AuditEvent)
            .where(
                m.AuditEvent.channel == "cds", m.AuditEvent.patient_id == row.patient_id, m.AuditEvent.action == "read"
            )
        )
        assert audited


def test_patient_view_is_quiet_for_a_normal_count_just_above_the_threshold(
    env: Any, signer: Signer, kb: Knowledge
) -> None:
    _, client = env
    # The neutrophil threshold from the knowledge: a count just above every neutrophil threshold is not critical.
    top = max(t.value for t in kb.thresholds if t.analyte == "neutrophils" and t.comparator == "<")
    cards = call(client, signer, "azaguard-patient-view", hook_body("patient-view", on_azathioprine(neut=top + 0.1)))
    assert not [c for c in cards if c["source"].get("topic", {}).get("code", "").startswith("lab-neutrophils")]


def test_patient_view_says_nothing_for_a_patient_not_on_a_thiopurine(env: Any, signer: Signer) -> None:
    _, client = env
    assert call(client, signer, "azaguard-patient-view", hook_body("patient-view", new_patient())) == []


# ---------------------------------------------------------------- order-select / order-sign
def test_order_sign_azathioprine_for_a_tpmt_poor_metaboliser_is_critical_with_override_reasons(
    env: Any, signer: Signer
) -> None:
    _, client = env
    body = hook_body("order-sign", new_patient(tpmt="*3A/*3A"), [draft("197388", "Azathioprine 50 MG Oral Tablet", 1)])
    cards = call(client, signer, "azaguard-order-sign", body)
    for c in cards:
        check_card(c)
    pgx = [c for c in cards if c["source"]["topic"]["code"] == "pgx-poor"]
    assert pgx and pgx[0]["indicator"] == "critical"
    assert pgx[0]["overrideReasons"]
    actions = [a for s in pgx[0]["suggestions"] for a in s["actions"]]
    assert {"type": "delete", "resourceId": ["MedicationRequest/request-123"]}.items() <= actions[0].items()
    # order-select shows the same finding but asks for no override reason (nothing is being signed).
    body = hook_body(
        "order-select", new_patient(tpmt="*3A/*3A"), [draft("197388", "Azathioprine 50 MG Oral Tablet", 1)]
    )
    select_cards = call(client, signer, "azaguard-order-select", body)
    sel = [c for c in select_cards if c["source"]["topic"]["code"] == "pgx-poor"]
    assert sel and "overrideReasons" not in sel[0]


def test_order_sign_azathioprine_for_a_normal_metaboliser_is_not_critical(env: Any, signer: Signer) -> None:
    _, client = env
    body = hook_body("order-sign", new_patient(), [draft("197388", "Azathioprine 50 MG Oral Tablet", 1)])
    cards = call(client, signer, "azaguard-order-sign", body)
    assert not [c for c in cards if c["indicator"] == "critical"], [c["summary"] for c in cards]
    assert not [c for c in cards if c.get("source", {}).get("topic", {}).get("code") == "pgx-poor"]


def test_tablets_become_mg_through_the_rxnorm_strength(env: Any, signer: Signer, kb: Knowledge) -> None:
    _, client = env
    # 4 x 100 mg tablets = 400 mg/day for 70 kg is above the maximum the knowledge allows.
    body = hook_body("order-sign", new_patient(weight=70), [draft("359228", "Azathioprine 100 MG Oral Tablet", 4)])
    cards = call(client, signer, "azaguard-order-sign", body)
    dosing = [c for c in cards if c["source"]["topic"]["code"].startswith("dosing-above")]
    assert dosing, [c["source"].get("topic") for c in cards]
    assert "400" in dosing[0]["summary"] + dosing[0]["detail"]
    change = [a for s in dosing[0].get("suggestions", []) for a in s["actions"] if a["type"] == "update"]
    assert change, dosing[0]
    q = change[0]["resource"]["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]
    assert change[0]["resource"]["id"] == "request-123"
    assert isinstance(change[0]["resource"]["category"], list)  # the sandbox's object made valid R4
    mg = q["value"] * (100 if q["code"] == "{tbl}" else 1)
    assert mg < 400
    # 1 x 100 mg tablet for the same patient is not above the maximum.
    body = hook_body("order-sign", new_patient(weight=70), [draft("359228", "Azathioprine 100 MG Oral Tablet", 1)])
    assert not [
        c
        for c in call(client, signer, "azaguard-order-sign", body)
        if c["source"].get("topic", {}).get("code", "").startswith("dosing-above")
    ]


def test_order_sign_allopurinol_for_a_patient_on_azathioprine(env: Any, signer: Signer) -> None:
    _, client = env
    body = hook_body("order-sign", on_azathioprine(), [draft("197319", "Allopurinol 100 MG Oral Tablet", 1)])
    cards = call(client, signer, "azaguard-order-sign", body)
    for c in cards:
        check_card(c)
    ix = [c for c in cards if c["source"]["topic"]["code"].startswith("interaction-allopurinol")]
    assert ix and ix[0]["indicator"] == "critical" and ix[0]["overrideReasons"]
    kinds = {a["type"]: a for s in ix[0]["suggestions"] for a in s["actions"]}
    assert kinds["delete"]["resourceId"] == ["MedicationRequest/request-123"]
    order = kinds["create"]["resource"]
    assert order["resourceType"] == "ServiceRequest" and order["code"]["coding"][0]["code"] == "58410-2"
    assert order["subject"]["reference"] == "Patient/ehr-1"


def test_order_of_an_unrelated_medicine_for_a_patient_not_on_azathioprine_is_quiet(env: Any, signer: Signer) -> None:
    _, client = env
    body = hook_body("order-select", new_patient(), [draft("197319", "Allopurinol 100 MG Oral Tablet", 1)])
    assert call(client, signer, "azaguard-order-select", body) == []


# ---------------------------------------------------------------- missing or unreadable data
def test_missing_prefetch_without_a_fhir_server_gives_a_card_not_an_assessment(env: Any, signer: Signer) -> None:
    _, client = env
    body = hook_body("patient-view", on_azathioprine(neut=0.9))
    body["prefetch"].pop("observations")
    cards = call(client, signer, "azaguard-patient-view", body)
    assert len(cards) == 1 and cards[0]["indicator"] == "warning"
    assert "observations" in cards[0]["detail"] and "no FHIR server" in cards[0]["detail"]
    # A FHIR server the client has not registered is never called.
    body["fhirServer"] = "http://127.0.0.1:1/fhir"
    cards = call(client, signer, "azaguard-patient-view", body)
    assert len(cards) == 1 and "not registered" in cards[0]["detail"]


def test_a_prefetch_that_failed_counts_as_missing(env: Any, signer: Signer) -> None:
    _, client = env
    body = hook_body("patient-view", on_azathioprine(neut=0.9))
    body["prefetch"]["observations"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}
    cards = call(client, signer, "azaguard-patient-view", body)
    assert [c["source"]["topic"]["code"] for c in cards] == ["data-prefetch-missing"]
    assert "observations" in cards[0]["detail"]


def test_an_unreachable_registered_fhir_server_gives_a_card(env: Any, signer: Signer) -> None:
    _, client = env
    body = hook_body("patient-view", on_azathioprine(neut=0.9), fhirServer="http://127.0.0.1:9/fhir")
    body["prefetch"].pop("medicationStatements")
    cards = call(client, signer, "azaguard-patient-view", body)
    assert len(cards) == 1 and "could not be read" in cards[0]["detail"]


def test_an_unreadable_record_gives_a_card_naming_the_field(env: Any, signer: Signer) -> None:
    _, client = env
    b = on_azathioprine()
    b.lab("751-8", 0.5, "10*9/L", "not-a-date", "Neutrophils")
    cards = call(client, signer, "azaguard-patient-view", hook_body("patient-view", b))
    assert len(cards) == 1 and cards[0]["indicator"] == "warning"
    assert "effectiveDateTime" in cards[0]["detail"]


# ---------------------------------------------------------------- feedback
def test_feedback_is_stored_once_and_audited(env: Any, signer: Signer) -> None:
    db, client = env
    body = hook_body("order-sign", on_azathioprine(), [draft("197319", "Allopurinol 100 MG Oral Tablet", 1)])
    card = next(c for c in call(client, signer, "azaguard-order-sign", body) if c["indicator"] == "critical")
    fb = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {"code": "specialist-advised", "system": "urn:azaguard:cds-override-reason"}
                },
                "outcomeTimestamp": "2026-12-01T10:00:00Z",
            }
        ]
    }
    path = "/cds-services/azaguard-order-sign/feedback"
    r = client.post(path, json=fb, headers=auth(signer, path))
    assert r.status_code == 200 and r.json()["stored"] == 1
    again = client.post(path, json=fb, headers=auth(signer, path))
    assert again.status_code == 200 and again.json()["stored"] == 0
    with db.session() as s:
        rows = s.scalars(select(m.CdsFeedback).where(m.CdsFeedback.card_uuid == card["uuid"])).all()
        assert len(rows) == 1 and rows[0].reason_code == "specialist-advised" and rows[0].patient_id is not None
        audited = s.scalar(
            select(func.count())
            .select_from(m.AuditEvent)
            .where(m.AuditEvent.resource.like("cds-feedback:%"), m.AuditEvent.patient_id == rows[0].patient_id)
        )
        assert audited == 2
    bad = client.post(
        path, json={"feedback": [{"card": card["uuid"], "outcome": "ignored"}]}, headers=auth(signer, path)
    )
    assert bad.status_code == 400 and "outcome" in bad.json()["reason"]
    # The patient page shows the card and the override with its reason, and counts them.
    page = clinician(db, client).get(f"/patients/{rows[0].patient_id}")
    assert page.status_code == 200
    section = page.text[page.text.index('id="cds-alerts"') :]
    assert 'data-outcome="overridden"' in section and "Specialist team has advised this order" in section
    assert re.search(r"\d+ cards? shown in the EHR; \d+ accepted, 1 overridden", section)


def clinician(db: Database, client: TestClient) -> TestClient:
    from azaguard import auth as az_auth
    from azaguard.web.views import COOKIE

    with db.session() as s:
        user = s.scalar(select(m.User).where(m.User.username == "cds-nurse"))
        if user is None:
            user = az_auth.create_user(s, "cds-nurse", "a long enough password 1", "clinician", None, "Nurse")
        cookie, _ = az_auth.create_session(s, user)
    return TestClient(client.app, base_url=BASE, cookies={COOKIE: cookie}, follow_redirects=False)


def test_card_source_links_lead_to_the_sources_page(env: Any, signer: Signer, kb: Knowledge) -> None:
    _, client = env
    cards = call(client, signer, "azaguard-patient-view", hook_body("patient-view", on_azathioprine(neut=0.9)))
    page = client.get("/sources")
    assert page.status_code == 200
    for c in cards:
        url = c["source"]["url"]
        if url.startswith(BASE + "/sources#"):
            assert f'id="{url.split("#", 1)[1]}"' in page.text
        else:
            assert url in {src.url for src in kb.sources.values()}


# ---------------------------------------------------------------- every example through the hooks
EXAMPLES = sorted(Path(__file__).resolve().parents[1].joinpath("examples").glob("[0-9][0-9]-*.json"))


@pytest.mark.parametrize("path", [p for p in EXAMPLES if not p.name.endswith(".meta.json")], ids=lambda p: p.stem)
def test_every_example_gives_valid_cards(env: Any, signer: Signer, path: Path) -> None:
    _, client = env
    bundle = json.loads(path.read_text())
    b = BundleBuilder("x")
    b.entries = [e["resource"] for e in bundle["entry"]]
    b.patient_id = b.entries[0].get("id", "x")
    if any(r["resourceType"] not in ("Patient", *KEYS) for r in b.entries):
        pytest.skip("holds a resource type the prefetch does not carry")
    cards = call(client, signer, "azaguard-patient-view", hook_body("patient-view", b))
    for c in cards:
        check_card(c)


def test_an_order_card_set_never_folds_a_critical_finding_into_the_summary_card(env: Any, signer: Signer) -> None:
    _, client = env
    body = hook_body("order-sign", on_azathioprine(neut=0.8), [draft("197319", "Allopurinol 100 MG Oral Tablet", 1)])
    cards = call(client, signer, "azaguard-order-sign", body)
    codes = {c["source"]["topic"]["code"]: c for c in cards}
    assert codes["lab-neutrophils-low"]["indicator"] == "critical"  # its own card, not a line in "more"
    assert "overrideReasons" in codes["lab-neutrophils-low"]
    more = codes.get("more-findings")
    assert more is None or "Neutrophils" not in more["detail"]


def test_cds_client_command_registers_lists_and_removes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from azaguard.cli import main

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    keys = tmp_path / "jwks.json"
    keys.write_text(json.dumps(Signer().jwks))
    assert (
        main(
            [
                "cds-client",
                "add",
                "--iss",
                ISS,
                "--jwks-file",
                str(keys),
                "--fhir-server",
                "http://127.0.0.1:8103/fhir/R4",
                "--database",
                url,
            ]
        )
        == 0
    )
    assert main(["cds-client", "list", "--database", url]) == 0
    out = capsys.readouterr().out
    assert f"{ISS}\tactive\tpinned JWKS (1 keys)" in out and "http://127.0.0.1:8103/fhir/R4" in out
    assert (
        main(["cds-client", "add", "--iss", ISS, "--jwks-file", str(tmp_path / "missing.json"), "--database", url]) == 2
    )
    assert "cannot be read" in capsys.readouterr().err
    assert main(["cds-client", "remove", "--iss", ISS, "--database", url]) == 0
    assert main(["cds-client", "remove", "--iss", "https://never.example", "--database", url]) == 2
    main(["cds-client", "list", "--database", url])
    assert f"{ISS}\tremoved" in capsys.readouterr().out


def test_the_cds_report_counts_cards_and_override_reasons(env: Any, signer: Signer) -> None:
    db, client = env
    body = hook_body("order-sign", on_azathioprine(), [draft("197319", "Allopurinol 100 MG Oral Tablet", 1)])
    cards = call(client, signer, "azaguard-order-sign", body)
    card = next(c for c in cards if c["source"]["topic"]["code"] == "interaction-allopurinol")
    path = "/cds-services/azaguard-order-sign/feedback"
    fb = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-12-01T11:00:00Z"}
    fb["overrideReason"] = {"reason": {"code": "monitoring-arranged", "system": "urn:azaguard:cds-override-reason"}}
    assert client.post(path, json={"feedback": [fb]}, headers=auth(signer, path)).status_code == 200
    nurse = clinician(db, client)
    page = nurse.get("/reports/cds")
    assert page.status_code == 200
    row = re.search(r'<tr class="sev-critical" data-code="interaction-allopurinol">(.*?)</tr>', page.text, re.S)
    assert row is not None
    cells = re.findall(r'<td data-label="([^"]+)">(.*?)</td>', row.group(1), re.S)
    got = {k: v for k, v in cells}
    assert int(got["Shown"]) >= 1 and int(got["Overridden"]) >= 1
    assert "Benefit outweighs risk; extra blood monitoring arranged (1)" in got["Override reasons"]
    assert nurse.get("/reports/cds", params={"from": "yesterday"}).status_code == 400
    # A patient user may not see the clinic's report.
    from azaguard import auth as az_auth
    from azaguard.web.views import COOKIE

    with db.session() as s:
        pid = s.scalar(select(m.Patient.id).where(m.Patient.identifier == "NHS-CDS-1"))
        user = az_auth.create_user(s, "cds-patient", "a long enough password 2", "patient", "NHS-CDS-1", "P")
        cookie, _ = az_auth.create_session(s, user)
    assert pid is not None
    as_patient = TestClient(client.app, base_url=BASE, cookies={COOKIE: cookie}, follow_redirects=False)
    assert as_patient.get("/reports/cds").status_code in (403, 404)


def test_order_sign_of_a_live_vaccine_for_a_patient_on_azathioprine(env: Any, signer: Signer) -> None:
    _, client = env
    order = {
        "resourceType": "MedicationRequest",
        "id": "request-vax",
        "status": "draft",
        "medicationCodeableConcept": {
            "text": "zoster vaccine live",
            "coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "121", "display": "zoster vaccine live"}],
        },
    }
    cards = call(client, signer, "azaguard-order-sign", hook_body("order-sign", on_azathioprine(), [order]))
    vaccine = [c for c in cards if c["source"]["topic"]["code"].startswith("vaccine-live")]
    assert vaccine and vaccine[0]["indicator"] == "critical" and vaccine[0]["overrideReasons"], [
        c["source"]["topic"] for c in cards
    ]
    removes = [a for s in vaccine[0].get("suggestions", []) for a in s["actions"] if a["type"] == "delete"]
    assert removes and removes[0]["resourceId"] == ["MedicationRequest/request-vax"]
    # The recombinant (non-live) zoster vaccine is not a live-vaccine card.
    order["medicationCodeableConcept"] = {
        "text": "zoster vaccine recombinant",
        "coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "187", "display": "zoster recombinant"}],
    }
    cards = call(client, signer, "azaguard-order-sign", hook_body("order-sign", on_azathioprine(), [order]))
    assert not [c for c in cards if c["source"]["topic"]["code"].startswith("vaccine-live")]


# ---------------------------------------------------------------- forms real order screens use (review)
def test_a_draft_written_with_medication_reference_is_checked(env: Any, signer: Signer) -> None:
    _, client = env
    order = draft("197388", "Azathioprine 50 MG Oral Tablet", 1)
    concept = order.pop("medicationCodeableConcept")
    order["medicationReference"] = {"reference": "Medication/aza50"}
    medication = {"resourceType": "Medication", "id": "aza50", "code": concept}
    body = hook_body("order-sign", new_patient(tpmt="*3A/*3A"), [order, medication])
    cards = call(client, signer, "azaguard-order-sign", body)
    pgx = [c for c in cards if c["source"]["topic"]["code"] == "pgx-poor"]
    assert pgx and pgx[0]["indicator"] == "critical", [c["source"]["topic"] for c in cards]
    # A contained Medication is read the same way.
    order["medicationReference"] = {"reference": "#m"}
    order["contained"] = [{**medication, "id": "m"}]
    cards = call(client, signer, "azaguard-order-sign", hook_body("order-sign", new_patient(tpmt="*3A/*3A"), [order]))
    assert [c for c in cards if c["source"]["topic"]["code"] == "pgx-poor"]


@pytest.mark.parametrize(
    "quantity",
    [
        {"value": 4, "code": "{tab}"},
        {"value": 4, "system": "http://snomed.info/sct", "code": "732936001", "unit": "tablet"},
        {"value": 4, "unit": "Tablet(s)"},
    ],
    ids=["ucum-tab", "snomed-tablet", "tablet-s"],
)
def test_tablet_units_as_order_screens_write_them(env: Any, signer: Signer, quantity: dict[str, Any]) -> None:
    _, client = env
    order = draft("359228", "Azathioprine 100 MG Oral Tablet", 4)
    order["dosageInstruction"][0]["doseAndRate"] = [{"doseQuantity": quantity}]
    cards = call(client, signer, "azaguard-order-sign", hook_body("order-sign", new_patient(weight=70), [order]))
    assert [c for c in cards if c["source"]["topic"]["code"].startswith("dosing-above")], [
        c["source"]["topic"]["code"] for c in cards
    ]


def test_a_dose_that_cannot_be_read_is_said_to_be_unchecked(env: Any, signer: Signer) -> None:
    _, client = env
    order = draft("359228", "Azathioprine 100 MG Oral Tablet", 4)
    order["dosageInstruction"][0]["doseAndRate"] = [{"doseQuantity": {"value": 4, "unit": "mL"}}]
    cards = call(client, signer, "azaguard-order-sign", hook_body("order-sign", new_patient(weight=70), [order]))
    unread = [c for c in cards if c["source"]["topic"]["code"] == "data-draft-dose-unreadable"]
    assert unread and unread[0]["indicator"] == "warning" and "not checked" in unread[0]["summary"]
    # A readable dose has no such card.
    cards = call(
        client,
        signer,
        "azaguard-order-sign",
        hook_body("order-sign", new_patient(weight=70), [draft("359228", "Azathioprine 100 MG Oral Tablet", 1)]),
    )
    assert not [c for c in cards if c["source"]["topic"]["code"] == "data-draft-dose-unreadable"]


def test_a_prefetch_search_sent_in_part_is_not_assessed(env: Any, signer: Signer) -> None:
    _, client = env
    body = hook_body("patient-view", on_azathioprine(neut=3.5))
    body["prefetch"]["observations"]["link"] = [{"relation": "next", "url": "http://ehr.example/fhir/page2"}]
    cards = call(client, signer, "azaguard-patient-view", body)
    assert [c["source"]["topic"]["code"] for c in cards] == ["data-prefetch-missing"]
    assert "sent in part" in cards[0]["detail"]
    body = hook_body("patient-view", on_azathioprine(neut=3.5))
    body["prefetch"]["observations"]["total"] = 500
    cards = call(client, signer, "azaguard-patient-view", body)
    assert [c["source"]["topic"]["code"] for c in cards] == ["data-prefetch-missing"]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b["context"]["draftOrders"]["entry"][0]["resource"]["medicationCodeableConcept"]["coding"][0].update(
            code=["197388"]
        ),
        lambda b: b["context"]["draftOrders"]["entry"][0]["resource"]["dosageInstruction"][0].update(doseAndRate=5),
        lambda b: b["prefetch"]["observations"].update(entry=5),
        lambda b: b["prefetch"]["patient"].update(identifier=5),
        lambda b: b.update(fhirServer=5),
        lambda b: b["context"].update(draftOrders={"resourceType": "Bundle", "entry": 5}),
    ],
    ids=["code-list", "dose-and-rate-number", "entry-number", "identifier-number", "server-number", "drafts-number"],
)
def test_hostile_field_types_are_a_400_or_cards_never_a_500(env: Any, signer: Signer, mutate: Any) -> None:
    _, client = env
    body = hook_body("order-sign", on_azathioprine(), [draft("197388", "Azathioprine 50 MG Oral Tablet", 1)])
    mutate(body)
    path = "/cds-services/azaguard-order-sign"
    r = client.post(path, json=body, headers=auth(signer, path))
    assert r.status_code in (200, 400), r.text


def test_a_feedback_timestamp_out_of_range_is_a_400(env: Any, signer: Signer) -> None:
    _, client = env
    path = "/cds-services/azaguard-order-sign/feedback"
    fb = {
        "feedback": [
            {"card": str(uuid.uuid4()), "outcome": "accepted", "outcomeTimestamp": "0001-01-01T00:00:00+14:00"}
        ]
    }
    r = client.post(path, json=fb, headers=auth(signer, path))
    assert r.status_code == 400 and "outcomeTimestamp" in r.json()["reason"]


def test_long_lived_tokens_are_refused(env: Any, signer: Signer) -> None:
    _, client = env
    path = "/cds-services"
    now = int(time.time())
    ok = signer.token(BASE + path, iat=now, exp=now + cds_auth.MAX_LIFETIME_SECONDS)
    assert client.get(path, headers={"Authorization": f"Bearer {ok}"}).status_code == 200
    long = signer.token(BASE + path, iat=now, exp=now + cds_auth.MAX_LIFETIME_SECONDS + 60)
    r = client.get(path, headers={"Authorization": f"Bearer {long}"})
    assert r.status_code == 401 and "longer" in r.json()["reason"]


def test_without_a_public_url_the_host_header_decides_nothing(tmp_path: Path, kb: Knowledge) -> None:
    db = Database(f"sqlite:///{tmp_path / 'host.db'}")
    s = Signer()
    (tmp_path / "k.json").write_text(json.dumps(s.jwks))
    cds_auth.add_client(db, ISS, jwks_file=str(tmp_path / "k.json"))
    forged = TestClient(create_app(db, kb, settings=Settings(public_url="")), base_url="http://other-vendor.example")
    token = s.token("http://other-vendor.example/cds-services")  # minted for another vendor's service
    r = forged.get("/cds-services", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and "AZAGUARD_PUBLIC_URL" in r.json()["reason"]
    loopback = TestClient(create_app(db, kb, settings=Settings(public_url="")), base_url="http://127.0.0.1:8000")
    token = s.token("http://127.0.0.1:8000/cds-services")
    assert loopback.get("/cds-services", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    db.engine.dispose()


def test_a_client_removed_by_another_process_is_refused_at_once(tmp_path: Path, kb: Knowledge) -> None:
    url = f"sqlite:///{tmp_path / 'rm2.db'}"
    server_db, cli_db = Database(url), Database(url)  # the server's and the CLI's own connections
    s = Signer()
    (tmp_path / "k.json").write_text(json.dumps(s.jwks))
    cds_auth.add_client(cli_db, ISS, jwks_file=str(tmp_path / "k.json"))
    client = TestClient(create_app(server_db, kb, settings=Settings(public_url=BASE)), base_url=BASE)
    assert client.get("/cds-services", headers=auth(s, "/cds-services")).status_code == 200
    cds_auth.remove_client(cli_db, ISS)
    assert client.get("/cds-services", headers=auth(s, "/cds-services")).status_code == 401
    server_db.engine.dispose()
    cli_db.engine.dispose()
