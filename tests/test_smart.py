"""SMART App Launch checks, fast: PKCE, state, nonce and id_token verification, user mapping and
refusals, through the real app and a real SQLite database. The EHR is an in-process stand-in on
httpx's transport that signs real RS256 id_tokens and checks our PKCE verifier as an EHR does; the
end-to-end run against the reference SMART launcher is tests/test_smart_launch.py."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from azaguard import auth
from azaguard.app import Settings, create_app
from azaguard.ehr import smart
from azaguard.ehr.smart import IdTokenError, SmartConfig, verify_id_token
from azaguard.fhirbuild import BundleBuilder
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.store.records import now

ISS = "https://ehr.example.org/fhir"
CLIENT = "azaguard-unit"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: rsa.RSAPrivateKey, kid: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    found.update({"alg": "RS256", "use": "sig"})
    if kid:
        found["kid"] = kid
    return found


def id_token(key: rsa.RSAPrivateKey = KEY, headers: dict[str, Any] | None = None, **claims: Any) -> str:
    t = int(time.time())
    body = {"iss": ISS, "aud": CLIENT, "sub": "abc", "iat": t, "exp": t + 300, "fhirUser": "Practitioner/dr-1"}
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm="RS256", headers=headers)


JWKS = {"keys": [jwk(KEY)]}


# ---------------------------------------------------------------- the checks alone
def test_pkce_challenge_is_the_s256_of_the_verifier() -> None:
    verifier, challenge = smart.pkce_pair()
    assert 43 <= len(verifier) <= 128
    assert challenge == base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    assert smart.pkce_pair()[0] != verifier


def test_a_good_id_token_gives_its_claims_the_single_key_used_without_kid() -> None:
    claims = verify_id_token(id_token(nonce="n1"), JWKS, ISS, CLIENT, "n1")
    assert claims["fhirUser"] == "Practitioner/dr-1"


@pytest.mark.parametrize(
    ("make", "jwks", "why"),
    [
        (lambda: id_token(OTHER_KEY, nonce="n1"), JWKS, "signature does not verify"),
        (lambda: id_token(nonce="n1", aud="someone-else"), JWKS, "issued to another client"),
        (lambda: id_token(nonce="n1", iss="https://other.example.org/fhir"), JWKS, "issued by another issuer"),
        (lambda: id_token(nonce="other"), JWKS, "nonce does not belong to this launch"),
        (lambda: id_token(), JWKS, "nonce does not belong to this launch"),
        (lambda: id_token(nonce="n1", exp=int(time.time()) - 3600, iat=int(time.time()) - 7200), JWKS, "has expired"),
        (lambda: id_token(nonce="n1", fhirUser=None), JWKS, "names no fhirUser"),
        (lambda: id_token(nonce="n1", exp=None), JWKS, "has no exp claim"),
        (lambda: id_token(nonce="n1"), {"keys": [jwk(KEY), jwk(OTHER_KEY)]}, "names no key"),
        (
            lambda: id_token(nonce="n1", headers={"kid": "k9"}),
            {"keys": [jwk(KEY, "k1")]},
            "a key the EHR does not publish",
        ),
        (
            lambda: jwt.encode({"iss": ISS, "aud": CLIENT, "nonce": "n1"}, "s" * 32, algorithm="HS256"),
            JWKS,
            "not accepted",
        ),
        (lambda: "not a token", JWKS, "not a JWT"),
    ],
    ids=[
        "bad-signature",
        "wrong-aud",
        "wrong-iss",
        "wrong-nonce",
        "no-nonce",
        "expired",
        "no-fhirUser",
        "no-exp",
        "two-keys-no-kid",
        "unknown-kid",
        "hmac",
        "garbage",
    ],
)
def test_a_wrong_id_token_is_refused_saying_why(make: Callable[[], str], jwks: dict[str, Any], why: str) -> None:
    # Signed when the test runs, not when the module is collected: a long suite would let the
    # five-minute tokens expire first, and every case would then fail as "expired".
    with pytest.raises(IdTokenError, match=why):
        verify_id_token(make(), jwks, ISS, CLIENT, "n1")


def test_unsigned_tokens_are_refused() -> None:
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').decode().rstrip("=")
    body = base64.urlsafe_b64encode(json.dumps({"iss": ISS, "aud": CLIENT}).encode()).decode().rstrip("=")
    with pytest.raises(IdTokenError, match="not accepted"):
        verify_id_token(f"{header}.{body}.", JWKS, ISS, CLIENT, "n1")


# ---------------------------------------------------------------- the flow through the app
@dataclass
class FakeEhr:
    """An EHR's OAuth server and FHIR server, in-process: what it was asked is recorded."""

    claims: dict[str, Any] = field(default_factory=dict)  # id_token claims to change (None: drop)
    key: rsa.RSAPrivateKey = KEY
    patient_in_context: str | None = "p1"
    next_link: str | None = None
    access_token: str = "at-" + "x" * 40
    requests: list[str] = field(default_factory=list)
    challenge: str = ""
    nonce: str = ""
    verifier_ok: bool | None = None

    def __post_init__(self) -> None:
        t = date.today()
        b = BundleBuilder("p1", "1970-03-01", "female", "Una Unit")
        b.entries[0]["identifier"] = [{"system": "urn:ehr:mrn", "value": "UNIT-1"}]
        b.weight(70, t - timedelta(days=2))
        b.bloods(t - timedelta(days=2), neut=0.8)
        b.azathioprine(t - timedelta(days=200), 150)
        b.lab("8480-6", 120, "mm[Hg]", t - timedelta(days=2), "Systolic blood pressure")  # not monitored
        self.resources = b.entries

    def handle(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        self.requests.append(f"{request.method} {url.split('?')[0]}")
        if url == f"{ISS}/.well-known/smart-configuration":
            return httpx.Response(
                200,
                json={
                    "issuer": ISS,
                    "authorization_endpoint": "https://ehr.example.org/authorize",
                    "token_endpoint": "https://ehr.example.org/token",
                    "jwks_uri": "https://ehr.example.org/keys",
                    "code_challenge_methods_supported": ["S256"],
                },
            )
        if url == "https://ehr.example.org/keys":
            return httpx.Response(200, json=JWKS)
        if url == "https://ehr.example.org/token":
            form = parse_qs(request.content.decode())
            verifier = form["code_verifier"][0]
            digest = hashlib.sha256(verifier.encode()).digest()
            self.verifier_ok = base64.urlsafe_b64encode(digest).decode().rstrip("=") == self.challenge
            if not self.verifier_ok or form["code"] != ["the-code"]:
                return httpx.Response(400, json={"error": "invalid_grant"})
            body: dict[str, Any] = {
                "access_token": self.access_token,
                "token_type": "Bearer",
                "scope": "launch openid fhirUser patient/*.rs",
                "id_token": id_token(self.key, **{"nonce": self.nonce, **self.claims}),
            }
            if self.patient_in_context:
                body["patient"] = self.patient_in_context
            return httpx.Response(200, json=body)
        if request.headers.get("authorization") != f"Bearer {self.access_token}":
            return httpx.Response(401)
        path = urlsplit(url).path.removeprefix(urlsplit(ISS).path + "/")
        if path == "Patient/p1":
            return httpx.Response(200, json=self.resources[0])
        rtype = path.split("/")[0]
        found = [{"resource": r} for r in self.resources if r["resourceType"] == rtype]
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "entry": found}
        if self.next_link and rtype == "Observation":
            bundle["link"] = [{"relation": "next", "url": self.next_link}]
        return httpx.Response(200, json=bundle)


@dataclass
class Clinic:
    client: TestClient
    app: Any
    db: Database
    ehr: FakeEhr

    def launch(self, query: str = f"iss={ISS}&launch=xyz") -> dict[str, str]:
        """Start a launch; returns the authorization request's parameters (as the EHR receives them)."""
        r = self.client.get(f"/smart/launch?{query}", follow_redirects=False)
        assert r.status_code == 302, r.text
        target = urlsplit(r.headers["location"])
        assert f"{target.scheme}://{target.netloc}{target.path}" == "https://ehr.example.org/authorize"
        params = {k: v[0] for k, v in parse_qs(target.query).items()}
        self.ehr.challenge, self.ehr.nonce = params["code_challenge"], params["nonce"]
        return params

    def callback(self, state: str, code: str = "the-code") -> Any:
        return self.client.get("/smart/callback", params={"state": state, "code": code}, follow_redirects=False)

    def rows(self, **where: Any) -> list[m.AuditEvent]:
        with self.db.session() as s:
            return list(s.scalars(select(m.AuditEvent).filter_by(**where).order_by(m.AuditEvent.id)))

    def count(self, model: type[m.Base]) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _clinic(db: Database) -> Iterator[Clinic]:
    ehr = FakeEhr()
    app = create_app(db, settings=Settings())
    app.state.smart = SmartConfig(
        issuers={ISS: CLIENT}, auto_provision="clinician", transport=httpx.MockTransport(ehr.handle)
    )
    with TestClient(app) as client:
        yield Clinic(client, app, db, ehr)


@pytest.fixture
def clinic(sqlite_db: Database) -> Iterator[Clinic]:
    yield from _clinic(sqlite_db)


@pytest.fixture
def clinic_on_both(db: Database) -> Iterator[Clinic]:
    """The same on SQLite and on PostgreSQL (the state's single use rests on the database)."""
    yield from _clinic(db)


def test_ehr_launch_asks_for_code_with_pkce_state_nonce_and_opens_the_patient_page(
    clinic: Clinic, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    params = clinic.launch()
    assert params["response_type"] == "code"
    assert params["client_id"] == CLIENT
    assert params["redirect_uri"] == "http://testserver/smart/callback"
    assert params["scope"] == "launch openid fhirUser patient/*.rs"
    assert params["launch"] == "xyz"
    assert params["aud"] == ISS
    assert params["code_challenge_method"] == "S256"
    with clinic.db.session() as s:  # the state is kept only as its hash
        assert [r.state for r in s.scalars(select(m.SmartLaunch))] == [smart.state_key(params["state"])]

    r = clinic.callback(params["state"])

    assert clinic.ehr.verifier_ok is True
    assert r.status_code == 303
    with clinic.db.session() as s:
        patient = s.scalars(select(m.Patient).where(m.Patient.identifier == "UNIT-1")).one()
        labs = {o.analyte for o in s.scalars(select(m.Observation).where(m.Observation.patient_id == patient.id))}
        user = s.scalars(select(m.User).join(m.SmartIdentity, m.SmartIdentity.user_id == m.User.id)).one()
    assert r.headers["location"] == f"/patients/{patient.id}"
    assert "neutrophils" in labs and "weight" in labs
    assert user.role == "clinician" and user.username.startswith("ehr-")
    assert clinic.count(m.SmartLaunch) == 0
    assert clinic.count(m.QuarantineItem) == 0  # the blood pressure was skipped, not quarantined
    page = clinic.client.get(f"/patients/{patient.id}")  # the session cookie the launch set
    assert page.status_code == 200 and 'data-code="lab-neutrophils-low"' in page.text
    # audited under the mapped user; the access token is nowhere: not in a log, not in the database
    assert [(a.action, a.channel) for a in clinic.rows(user_id=user.id, resource="smart-launch")] == [
        ("login", "smart"),
        ("read", "smart"),
    ]
    assert {a.user_id for a in clinic.rows(patient_id=patient.id)} == {user.id}
    assert clinic.ehr.access_token not in caplog.text and "p1" not in caplog.text
    raw = b"".join(p.read_bytes() for p in _database_files(clinic.db))
    assert clinic.ehr.access_token.encode() not in raw


def _database_files(db: Database) -> list[Any]:
    from pathlib import Path

    path = Path(str(db.engine.url.database))
    return [p for p in (path, Path(f"{path}-wal")) if p.exists()]


def test_a_replayed_state_is_refused_and_audited(clinic_on_both: Clinic) -> None:
    clinic = clinic_on_both
    params = clinic.launch()
    assert clinic.callback(params["state"]).status_code == 303
    again = clinic.callback(params["state"])
    assert again.status_code == 400 and "unknown or was already used" in again.text
    assert [(a.detail, a.channel) for a in clinic.rows(action="denied")] == [("bad state", "smart")]


def test_an_unknown_state_is_refused_before_the_ehr_is_asked_anything(clinic: Clinic) -> None:
    clinic.launch()
    before = list(clinic.ehr.requests)
    r = clinic.callback("made-up-state")
    assert r.status_code == 400 and "set-cookie" not in r.headers
    assert clinic.ehr.requests == before
    assert [a.detail for a in clinic.rows(action="denied")] == ["bad state"]


def test_a_state_older_than_ten_minutes_is_refused(clinic: Clinic) -> None:
    params = clinic.launch()
    with clinic.db.session() as s:
        s.execute(update(m.SmartLaunch).values(created_at=now() - timedelta(minutes=11)))
    r = clinic.callback(params["state"])
    assert r.status_code == 400 and "took too long" in r.text
    assert [a.detail for a in clinic.rows(action="denied")] == ["state expired"]
    assert clinic.count(m.SmartLaunch) == 0


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"key": OTHER_KEY}, "signature does not verify"),
        ({"claims": {"aud": "another-app"}}, "issued to another client"),
        ({"claims": {"nonce": "not-this-launch"}}, "nonce does not belong to this launch"),
        ({"claims": {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}}, "has expired"),
    ],
    ids=["bad-signature", "wrong-aud", "wrong-nonce", "expired"],
)
def test_a_bad_id_token_is_refused_and_nothing_is_read(clinic: Clinic, change: dict[str, Any], why: str) -> None:
    for name, value in change.items():
        setattr(clinic.ehr, name, value)
    params = clinic.launch()
    r = clinic.callback(params["state"])
    assert r.status_code == 401 and why in r.text and "set-cookie" not in r.headers
    [row] = clinic.rows(action="denied", channel="smart")
    assert row.detail.startswith("id_token: ") and why in row.detail
    assert not [q for q in clinic.ehr.requests if "/Patient" in q or "/Observation" in q]
    assert clinic.count(m.Patient) == 0 and clinic.count(m.WebSession) == 0


def test_a_wrong_pkce_verifier_gets_no_token(clinic: Clinic) -> None:
    params = clinic.launch()
    clinic.ehr.challenge = "a-challenge-we-did-not-send"
    r = clinic.callback(params["state"])
    assert clinic.ehr.verifier_ok is False
    assert r.status_code == 502 and clinic.count(m.WebSession) == 0


def test_an_issuer_not_configured_is_refused_without_contacting_it(clinic: Clinic) -> None:
    r = clinic.client.get("/smart/launch?iss=https://evil.example.com/fhir&launch=x", follow_redirects=False)
    assert r.status_code == 403 and "not allowed to launch" in r.text
    assert clinic.ehr.requests == []
    assert [a.detail for a in clinic.rows(action="denied")] == ["issuer https://evil.example.com/fhir"]


def test_an_unknown_ehr_user_is_refused_without_auto_provisioning(clinic: Clinic) -> None:
    clinic.app.state.smart = SmartConfig(issuers={ISS: CLIENT}, transport=httpx.MockTransport(clinic.ehr.handle))
    params = clinic.launch()
    r = clinic.callback(params["state"])
    assert r.status_code == 403 and "not linked to an azaguard user" in r.text
    assert [a.detail for a in clinic.rows(action="denied")] == [
        f"unknown EHR user: fhirUser Practitioner/dr-1 at {ISS}"
    ]
    assert not [q for q in clinic.ehr.requests if "/Patient" in q]  # no patient data read for them
    assert clinic.count(m.User) == 0 and clinic.count(m.Patient) == 0


def test_a_linked_user_opens_the_matching_record_and_nothing_is_pulled(clinic: Clinic) -> None:
    with clinic.db.session() as s:
        s.add(m.Patient(identifier="UNIT-1", name="Una Unit", created_at=now()))
        auth.create_user(s, "dr.khan", "a long password 1", "clinician")
        smart.link_identity(s, ISS + "/", "Practitioner/dr-1", "dr.khan")
    params = clinic.launch(f"iss={ISS}")  # standalone: no launch parameter
    assert params["scope"] == "launch/patient openid fhirUser patient/*.rs" and "launch" not in params
    r = clinic.callback(params["state"])
    assert r.status_code == 303
    assert not [q for q in clinic.ehr.requests if "/Observation" in q]
    assert clinic.count(m.Observation) == 0 and clinic.count(m.User) == 1
    rows = clinic.rows(resource="smart-launch", action="read")
    assert [(a.username, a.detail) for a in rows] == [("dr.khan", "standalone launch, patient matched by identifier")]


def test_a_launch_without_a_patient_in_context_is_refused(clinic: Clinic) -> None:
    clinic.ehr.patient_in_context = None
    r = clinic.callback(clinic.launch()["state"])
    assert r.status_code == 400 and "without a patient in context" in r.text
    assert clinic.count(m.Patient) == 0


def test_a_paging_link_to_another_host_is_not_followed(clinic: Clinic) -> None:
    clinic.ehr.next_link = "https://elsewhere.example.net/fhir/Observation?page=2"
    r = clinic.callback(clinic.launch()["state"])
    assert r.status_code == 502 and "next page is not on its FHIR server" in r.text
    assert not [q for q in clinic.ehr.requests if "elsewhere" in q]
    assert clinic.count(m.Patient) == 0 and clinic.count(m.WebSession) == 0


def test_a_callback_in_another_browser_is_refused(clinic: Clinic) -> None:
    """OAuth login CSRF: someone starts a launch, stops at the callback URL and sends it to another
    person; their browser has no launch cookie (or another one), so the launch is refused."""
    params = clinic.launch()
    cookie = clinic.client.cookies.get(smart.BROWSER_COOKIE)
    assert cookie and len(cookie) >= 32
    with TestClient(clinic.app) as other:
        r = other.get("/smart/callback", params={"state": params["state"], "code": "the-code"}, follow_redirects=False)
    assert r.status_code == 400 and "started in another browser" in r.text and "set-cookie" not in r.headers
    assert [a.detail for a in clinic.rows(action="denied")] == ["browser"]
    assert not [q for q in clinic.ehr.requests if "/token" in q]
    assert clinic.count(m.WebSession) == 0 and clinic.count(m.SmartLaunch) == 0  # and the state is spent


def test_the_launch_cookie_is_http_only_for_smart_paths_and_reused_by_a_second_launch(clinic: Clinic) -> None:
    r = clinic.client.get(f"/smart/launch?iss={ISS}&launch=a", follow_redirects=False)
    header = r.headers["set-cookie"].lower()
    assert f"{smart.BROWSER_COOKIE}=" in header and "httponly" in header and "path=/smart" in header
    first = clinic.client.cookies.get(smart.BROWSER_COOKIE)
    clinic.client.get(f"/smart/launch?iss={ISS}&launch=b", follow_redirects=False)
    assert clinic.client.cookies.get(smart.BROWSER_COOKIE) == first  # two tabs, one browser: both can finish
