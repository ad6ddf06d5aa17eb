"""SMART App Launch v2: azaguard's clinician pages opened from an EHR, already in the patient's context.

Two launches, one flow (docs/ehr.md, section 2):

- EHR launch: the EHR opens `/smart/launch?iss=...&launch=...`; standalone launch: `/smart/launch?iss=...`
  (or no `iss` when one EHR is configured) and the EHR asks who and which patient.
- `begin_launch` discovers `{iss}/.well-known/smart-configuration`, keeps the OAuth `state` (hashed),
  PKCE verifier and OpenID nonce in `smart_launches`, and sends the browser to the EHR's
  authorization endpoint. Only issuers named in the configuration are contacted: an `iss` is a URL
  anyone can put in a link, and azaguard would otherwise fetch from and send users to it.
- `complete_launch` (the redirect back to `/smart/callback`) takes the state once (single use,
  ten minutes), exchanges the code with the PKCE verifier, verifies the id_token (signature from
  the EHR's JWKS, issuer, audience = our client id, nonce, expiry), maps its `fhirUser` to an
  azaguard user (`smart_identities`; an unknown user is refused unless auto-provisioning is on),
  matches the EHR's patient to the clinic record by identifier - the rule the FHIR import uses - or,
  on first launch, pulls the patient's data from the EHR's FHIR server through the import
  pipeline, and opens an ordinary web session for that user.

Tokens live only in this request's memory: the access token is never stored, logged or shown;
the state is stored as a hash; nothing from the EHR reaches a log line (httpx's request log, which
names the patient's id in every URL, is kept at WARNING). Every step is audited on channel "smart".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import jwt
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from azaguard import auth, service
from azaguard.audit import audit
from azaguard.ingest import parse_text
from azaguard.knowledge import Knowledge
from azaguard.readers.fhir import FhirReader, ReaderError
from azaguard.store import models as m
from azaguard.store.records import now

# httpx logs every request's URL at INFO, and a FHIR URL names the patient: never in a log.
logging.getLogger("httpx").setLevel(logging.WARNING)

CHANNEL = "smart"
SESSION_HOURS = auth.SESSION_HOURS  # the web session a launch opens
BROWSER_COOKIE = "azaguard_smart"  # ties a launch to the browser that started it (path /smart)
STATE_TTL = timedelta(minutes=10)  # a launch must come back within this (security setting)
LEEWAY = 60  # seconds of clock difference allowed on the id_token's exp/iat
EHR_SCOPE = "launch openid fhirUser patient/*.rs"
STANDALONE_SCOPE = "launch/patient openid fhirUser patient/*.rs"
ID_TOKEN_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")  # never "none" or HMAC
# What a first launch pulls from the EHR's FHIR server (each searched by `patient`), as the FHIR
# import reads it: results, medicines, conditions, vaccinations, allergies.
PULLED = ("Observation", "MedicationRequest", "MedicationStatement", "Condition", "Immunization", "AllergyIntolerance")
PAGE_SIZE = 200
MAX_PAGES = 100  # per resource type; a record larger than this is refused, never imported in part
MAX_PARAM = 4096  # longest `iss`, `launch`, `code` or `state` accepted
AUTO_PROVISION_ROLES = ("clinician",)
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # FHIR's id type: the launch's patient goes into a URL


class SmartRefused(Exception):
    """A launch that cannot go on: `str(exc)` is safe to show (no token, no patient data)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SmartConfig:
    """Who may launch azaguard: the EHRs (FHIR base URLs, `iss`) and the client id each gave
    azaguard when it was registered. From the environment (docs/ehr.md):

    - AZAGUARD_SMART_ISSUERS: space-separated issuers; `ISS=CLIENT_ID` gives one its own client id
    - AZAGUARD_SMART_CLIENT_ID: the client id for the others (default "azaguard")
    - AZAGUARD_SMART_AUTO_PROVISION: "clinician" creates a clinician for an EHR user seen for the
      first time; empty (default): such a user is refused until an administrator links them
      (`azaguard smart-user add`)
    - AZAGUARD_PUBLIC_URL: azaguard's own address as the EHR sees it (the redirect URI is
      `{AZAGUARD_PUBLIC_URL}/smart/callback`); default: the address the request came to
    """

    issuers: dict[str, str] = field(default_factory=dict)  # issuer -> client id
    auto_provision: str | None = None
    public_url: str | None = None
    timeout: float = 10.0
    transport: httpx.BaseTransport | None = field(default=None, repr=False, compare=False)  # tests: an EHR in-process

    @classmethod
    def from_env(cls) -> SmartConfig:
        default_client = os.environ.get("AZAGUARD_SMART_CLIENT_ID", "").strip() or "azaguard"
        issuers: dict[str, str] = {}
        for entry in os.environ.get("AZAGUARD_SMART_ISSUERS", "").split():
            iss, _, client = entry.partition("=")
            issuers[normalise(iss)] = client or default_client
        auto = os.environ.get("AZAGUARD_SMART_AUTO_PROVISION", "").strip().lower() or None
        if auto is not None and auto not in AUTO_PROVISION_ROLES:
            allowed = ", ".join(AUTO_PROVISION_ROLES)
            raise SmartRefused(
                503, f"SMART launch is misconfigured: AZAGUARD_SMART_AUTO_PROVISION must be {allowed} or empty"
            )
        public = os.environ.get("AZAGUARD_PUBLIC_URL", "").strip().rstrip("/") or None
        return cls(issuers=issuers, auto_provision=auto, public_url=public)

    def client(self) -> httpx.Client:
        return httpx.Client(timeout=self.timeout, follow_redirects=False, transport=self.transport)


@dataclass(frozen=True)
class Launched:
    """A completed launch: the new web session's cookie value and the patient page to open."""

    session_token: str
    patient_id: int
    user: str


def normalise(iss: str) -> str:
    return iss.strip().rstrip("/")


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge): RFC 7636, 86 characters of verifier."""
    verifier = secrets.token_urlsafe(64)
    return verifier, _b64url(hashlib.sha256(verifier.encode()).digest())


def browser_binding(current: str | None) -> str:
    """The value of the launch cookie: the browser's own if it has a sound one (several launches
    in tabs of one browser share it), else a new one. Without it, anyone could start a launch, stop
    at the callback URL and have another person's browser complete it, signing them in as the
    attacker's EHR user (OAuth login CSRF); the state alone does not tie a launch to a browser."""
    if current and 32 <= len(current) <= 64 and re.fullmatch(r"[A-Za-z0-9_-]+", current):
        return current
    return secrets.token_urlsafe(32)


def state_key(state: str) -> str:
    """How a state is kept: its hash, so the table alone cannot complete anyone's launch."""
    return hashlib.sha256(state.encode()).hexdigest()


def _refuse(
    s: Session, status: int, message: str, detail: str, user: m.User | None = None, patient_id: int | None = None
) -> SmartRefused:
    """Audit a refused launch (kept although the request then fails) and return the error to raise."""
    if audit(s, user, "denied", "smart-launch", patient_id, detail, CHANNEL, keep=True) is None:
        s.commit()
    return SmartRefused(status, message)


def _printable(text: str) -> str:
    """A value the browser sent, fit for an audit row: no control characters (PostgreSQL refuses NUL)."""
    return "".join(c if c.isprintable() else "?" for c in text[:300])


def _loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _endpoint(config: dict[str, Any], key: str, iss: str) -> str:
    """An endpoint from the EHR's configuration: https, or http on this machine (tests, development)."""
    url = config.get(key)
    if not isinstance(url, str) or not url:
        raise ValueError(f"its smart-configuration has no {key}")
    parts = urlsplit(url)
    if parts.scheme != "https" and not (parts.scheme == "http" and _loopback(parts.hostname)):
        raise ValueError(f"its {key} is not an https URL")
    return url


# ---------------------------------------------------------------- 1. the launch
def begin_launch(
    s: Session, config: SmartConfig, iss: str | None, launch: str | None, redirect_uri: str, browser: str
) -> str:
    """Start a launch; returns the EHR's authorization URL to send the browser to. `browser`: the
    value of the browser's launch cookie (BROWSER_COOKIE, see `browser_binding`), which the callback
    must bring back: a callback URL someone else started cannot be completed in this browser."""
    if iss is None or not iss.strip():
        if len(config.issuers) != 1:
            raise _refuse(s, 400, "The launch did not name the EHR (iss).", "no iss")
        iss = next(iter(config.issuers))
    if len(iss) > 400 or (launch is not None and len(launch) > MAX_PARAM):
        raise _refuse(s, 400, "The launch parameters are too long.", "iss or launch too long")
    iss = normalise(iss)
    client_id = config.issuers.get(iss)
    if client_id is None:
        message = "This EHR is not allowed to launch azaguard (its address is not configured)."
        raise _refuse(s, 403, message, f"issuer {_printable(iss)}")
    try:
        with config.client() as http:
            r = http.get(f"{iss}/.well-known/smart-configuration", headers={"Accept": "application/json"})
            if r.status_code != 200:
                raise ValueError(f"its smart-configuration answered HTTP {r.status_code}")
            found = r.json()
            if not isinstance(found, dict):
                raise ValueError("its smart-configuration is not a JSON object")
            authorize = _endpoint(found, "authorization_endpoint", iss)
            token = _endpoint(found, "token_endpoint", iss)
            jwks_uri = _endpoint(found, "jwks_uri", iss)
            methods = found.get("code_challenge_methods_supported")
            if isinstance(methods, list) and "S256" not in methods:
                raise ValueError("it does not support PKCE with S256")
    except (httpx.HTTPError, ValueError) as exc:
        why = str(exc) if type(exc) is ValueError else type(exc).__name__
        message = f"Could not use the EHR's SMART configuration: {why}."
        raise _refuse(s, 502, message, f"discovery {iss}: {why}"[:400]) from None
    issuer = found.get("issuer") if isinstance(found.get("issuer"), str) else iss
    state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    verifier, challenge = pkce_pair()
    mode = "ehr" if launch else "standalone"
    stamp = now()
    s.execute(delete(m.SmartLaunch).where(m.SmartLaunch.created_at < stamp - STATE_TTL))
    s.add(
        m.SmartLaunch(
            state=state_key(state),
            iss=iss,
            created_at=stamp,
            data={
                "mode": mode,
                "issuer": issuer,
                "client_id": client_id,
                "token_endpoint": token,
                "jwks_uri": jwks_uri,
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
                "nonce": nonce,
                "browser": state_key(browser),
            },
        )
    )
    audit(s, None, "smart-launch", "smart-launch", None, f"{mode} launch from {iss}", CHANNEL)
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": EHR_SCOPE if launch else STANDALONE_SCOPE,
        "state": state,
        "nonce": nonce,
        "aud": iss,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if launch:
        params["launch"] = launch
    return f"{authorize}{'&' if '?' in authorize else '?'}{urlencode(params)}"


# ---------------------------------------------------------------- 2. the id_token
class IdTokenError(ValueError):
    """Why an id_token is refused (safe to show and audit: it quotes nothing from the token)."""


def _signing_key(jwks: Any, kid: str | None, alg: str) -> jwt.PyJWK:
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list):
        raise IdTokenError("the EHR's JWKS has no keys")
    usable = [
        k
        for k in keys
        if isinstance(k, dict) and k.get("kty") in ("RSA", "EC") and k.get("use", "sig") == "sig" and "d" not in k
    ]
    if kid is not None:
        usable = [k for k in usable if k.get("kid") == kid]
        if not usable:
            raise IdTokenError("the id_token names a key the EHR does not publish")
    elif len(usable) != 1:  # no kid: only a single published key is unambiguous
        raise IdTokenError("the id_token names no key and the EHR publishes more than one")
    try:
        return jwt.PyJWK(usable[0], algorithm=alg)
    except jwt.PyJWTError:
        raise IdTokenError("the EHR's signing key cannot be used") from None


def verify_id_token(token: str, jwks: Any, issuer: str, client_id: str, nonce: str) -> dict[str, Any]:
    """The id_token's claims, once its signature (the EHR's published key), issuer, audience (our
    client id), expiry and nonce (this launch's) are right; else IdTokenError saying which is wrong."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise IdTokenError("the id_token is not a JWT") from None
    alg = header.get("alg")
    if alg not in ID_TOKEN_ALGORITHMS:
        raise IdTokenError("the id_token's signature algorithm is not accepted")
    kid = header.get("kid") if isinstance(header.get("kid"), str) else None
    key = _signing_key(jwks, kid, alg)
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=[alg],
            audience=client_id,
            issuer=issuer,
            leeway=LEEWAY,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise IdTokenError("the id_token has expired") from None
    except jwt.InvalidAudienceError:
        raise IdTokenError("the id_token was issued to another client") from None
    except jwt.InvalidIssuerError:
        raise IdTokenError("the id_token was issued by another issuer") from None
    except jwt.InvalidSignatureError:
        raise IdTokenError("the id_token's signature does not verify") from None
    except jwt.MissingRequiredClaimError as exc:
        raise IdTokenError(f"the id_token has no {exc.claim} claim") from None
    except jwt.PyJWTError as exc:
        raise IdTokenError(f"the id_token is not valid ({type(exc).__name__})") from None
    sent = claims.get("nonce")
    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), nonce.encode()):
        raise IdTokenError("the id_token's nonce does not belong to this launch")
    fhir_user = claims.get("fhirUser")
    if not isinstance(fhir_user, str) or not fhir_user.strip() or len(fhir_user) > 400:
        raise IdTokenError("the id_token names no fhirUser")
    return claims


# ---------------------------------------------------------------- 3. the callback
def _take_launch(s: Session, state: str) -> m.SmartLaunch | None:
    """The launch this state belongs to, deleted at once and for good (committed before anything
    else happens): a second use of the same state finds nothing, even if this one fails later."""
    if not state or len(state) > MAX_PARAM:
        return None
    key = state_key(state)
    row = s.get(m.SmartLaunch, key)
    if row is None:
        return None
    s.expunge(row)
    taken = s.execute(delete(m.SmartLaunch).where(m.SmartLaunch.state == key))
    s.commit()  # no network call below holds a database lock
    return row if getattr(taken, "rowcount", 0) == 1 else None  # another request took it first


def _fhir_get(http: httpx.Client, url: str, token: str) -> dict[str, Any]:
    r = http.get(url, headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"})
    if r.status_code != 200:
        raise ValueError(f"HTTP {r.status_code} from the EHR's FHIR server")
    found = r.json()
    if not isinstance(found, dict):
        raise ValueError("the EHR's FHIR server answered something that is not a FHIR resource")
    return found


def _about(res: Any, patient_id: str) -> bool:
    """Whether a resource is the launch's patient's (its subject or patient reference)."""
    if not isinstance(res, dict):
        return False
    for key in ("subject", "patient"):
        ref = res.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            return bool(
                ref["reference"] == f"Patient/{patient_id}" or ref["reference"].endswith(f"/Patient/{patient_id}")
            )
    return False


def pull_record(http: httpx.Client, fhir_base: str, token: str, patient: dict[str, Any]) -> list[dict[str, Any]]:
    """The patient's resources azaguard reads (PULLED), every page of each search. Paging links
    are followed only on the EHR's own FHIR base (the token goes nowhere else); resources about
    anyone else are dropped; a record longer than MAX_PAGES pages is refused, never taken in part."""
    patient_id = str(patient["id"])
    out: list[dict[str, Any]] = [patient]
    for rtype in PULLED:
        url: str | None = f"{fhir_base}/{rtype}?{urlencode({'patient': patient_id, '_count': PAGE_SIZE})}"
        pages = 0
        while url:
            pages += 1
            if pages > MAX_PAGES:
                raise ValueError(f"the patient's {rtype} list is longer than azaguard reads at a launch")
            bundle = _fhir_get(http, url, token)
            for entry in bundle.get("entry") or []:
                res = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(res, dict) and res.get("resourceType") == rtype and _about(res, patient_id):
                    out.append(res)
            url = None
            for link in bundle.get("link") or []:
                if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
                    if not link["url"].startswith(f"{fhir_base}/"):
                        raise ValueError("the EHR's next page is not on its FHIR server")
                    url = link["url"]
    return out


def _identity(s: Session, iss: str, fhir_user: str) -> m.User | None:
    return s.scalar(
        select(m.User)
        .join(m.SmartIdentity, m.SmartIdentity.user_id == m.User.id)
        .where(m.SmartIdentity.iss == iss, m.SmartIdentity.fhir_user == fhir_user)
    )


def _provision(s: Session, iss: str, fhir_user: str, role: str) -> m.User:
    """A new azaguard user for an EHR user (auto-provisioning): no password anyone knows, so it
    signs in only through its EHR."""
    name = "ehr-" + hashlib.sha256(f"{iss}\n{fhir_user}".encode()).hexdigest()[:12]
    user = auth.create_user(s, name, secrets.token_urlsafe(32), role, display_name=f"{fhir_user} (EHR)"[:200])
    s.add(m.SmartIdentity(iss=iss, fhir_user=fhir_user, user_id=user.id, created_at=now()))
    audit(s, user, "write", "smart-provision", None, f"{role} for {fhir_user} at {iss}"[:400], CHANNEL)
    return user


def link_identity(s: Session, iss: str, fhir_user: str, username: str) -> None:
    """Map an EHR user (issuer + fhirUser, as the id_token names it) to an existing azaguard user
    (`azaguard smart-user add`)."""
    user = s.scalar(select(m.User).where(m.User.username == username))
    if user is None:
        raise ValueError(f"no user '{username}'")
    iss = normalise(iss)
    row = s.scalar(select(m.SmartIdentity).where(m.SmartIdentity.iss == iss, m.SmartIdentity.fhir_user == fhir_user))
    if row is None:
        s.add(m.SmartIdentity(iss=iss, fhir_user=fhir_user, user_id=user.id, created_at=now()))
    else:
        row.user_id = user.id
    audit(s, None, "write", "smart-identity", None, f"{fhir_user} at {iss} -> {username}"[:400], "cli")


def complete_launch(
    s: Session,
    kb: Knowledge,
    config: SmartConfig,
    state: str,
    code: str,
    error: str,
    browser: str | None,
    old_session: str | None = None,
) -> Launched:
    """The EHR's redirect back: check everything, then open a web session on the patient's page.
    `browser`: the launch cookie this browser sent (None: none)."""
    row = _take_launch(s, state)
    if row is None:
        raise _refuse(s, 400, "This launch is unknown or was already used: start it again from the EHR.", "bad state")
    if row.created_at < now() - STATE_TTL:
        raise _refuse(s, 400, "This launch took too long: start it again from the EHR.", "state expired")
    data: dict[str, Any] = dict(row.data)
    iss = row.iss
    if not browser or not hmac.compare_digest(state_key(browser), str(data.get("browser", ""))):
        raise _refuse(s, 400, "This launch was started in another browser: start it again from the EHR.", "browser")
    if error:
        why = "".join(c for c in error[:40] if c.isalnum() or c in "_-")
        raise _refuse(s, 403, f"The EHR did not authorise the launch ({why}).", f"authorization error {why}")
    if not code or len(code) > MAX_PARAM:
        raise _refuse(s, 400, "The EHR sent no authorization code.", "no code")
    try:
        with config.client() as http:
            r = http.post(
                data["token_endpoint"],
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": data["redirect_uri"],
                    "client_id": data["client_id"],
                    "code_verifier": data["code_verifier"],
                },
                headers={"Accept": "application/json"},
            )
            if r.status_code != 200:
                raise _refuse(
                    s, 502, "The EHR refused to exchange the authorization code.", f"token HTTP {r.status_code}"
                )
            tokens = r.json()
            access = tokens.get("access_token") if isinstance(tokens, dict) else None
            if not isinstance(access, str) or not access or str(tokens.get("token_type", "")).lower() != "bearer":
                raise _refuse(s, 502, "The EHR's token answer has no bearer access token.", "no access token")
            if not isinstance(tokens.get("id_token"), str):
                raise _refuse(s, 502, "The EHR sent no id_token: it must grant openid fhirUser.", "no id_token")
            j = http.get(data["jwks_uri"], headers={"Accept": "application/json"})
            if j.status_code != 200:
                raise _refuse(s, 502, "Could not read the EHR's signing keys.", f"jwks HTTP {j.status_code}")
            try:
                claims = verify_id_token(tokens["id_token"], j.json(), data["issuer"], data["client_id"], data["nonce"])
            except IdTokenError as exc:
                raise _refuse(s, 401, f"The EHR's identity token was refused: {exc}.", f"id_token: {exc}") from None
            fhir_user = str(claims["fhirUser"])
            patient_ref = tokens.get("patient")
            if not isinstance(patient_ref, str) or not FHIR_ID.fullmatch(patient_ref):
                raise _refuse(s, 400, "The EHR launched azaguard without a patient in context.", "no patient")

            user = _identity(s, iss, fhir_user)
            who = f"fhirUser {fhir_user} at {iss}"[:400]
            if user is None and config.auto_provision is None:
                raise _refuse(
                    s,
                    403,
                    "Your EHR account is not linked to an azaguard user. Ask an azaguard administrator to link it "
                    f"(azaguard smart-user add --iss {iss} --fhir-user {fhir_user} --username ...).",
                    f"unknown EHR user: {who}",
                )
            if user is not None and (not user.active or user.role not in ("clinician", "admin")):
                raise _refuse(s, 403, "Your azaguard account may not open patient records from the EHR.", who, user)

            fhir_patient = _fhir_get(http, f"{iss}/Patient/{patient_ref}", access)
            if fhir_patient.get("resourceType") != "Patient" or fhir_patient.get("id") != patient_ref:
                raise ValueError("the EHR's FHIR server did not return the patient in context")
            identifier = FhirReader.demographics(fhir_patient, "the EHR's Patient")["identifier"]
            pid = s.scalar(select(m.Patient.id).where(m.Patient.identifier == identifier))
            pulled = None if pid is not None else pull_record(http, iss, access, fhir_patient)
    except (httpx.HTTPError, ValueError, ReaderError) as exc:
        # Our own messages say what went wrong; a JSON or transport error's text is not for the page.
        plain = isinstance(exc, ReaderError) or type(exc) is ValueError
        message = f"Could not complete the launch with the EHR{': ' + str(exc) if plain else ''}."
        raise _refuse(s, 502, message, f"EHR exchange failed: {type(exc).__name__}") from None
    del access, tokens  # the access token goes no further than this request

    if user is None:
        assert config.auto_provision is not None
        user = _provision(s, iss, fhir_user, config.auto_provision)
    who_p = service.principal_of(user)
    how = "matched by identifier"
    if pulled is not None:
        text = json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in pulled]})
        parsed = parse_text(text, kb, "fhir", f"smart {urlsplit(iss).netloc}"[:60])
        # A whole EHR record holds much azathioprine monitoring does not read (blood pressure,
        # unrelated codes): skipped here rather than quarantined. Known tests that cannot be read
        # (a unit azaguard does not know, no value) still go to quarantine.
        skipped = [r for r in parsed.rejects if r.reason.startswith("unknown code")]
        parsed.rejects = [r for r in parsed.rejects if not r.reason.startswith("unknown code")]
        summary = service.import_parsed(s, kb, who_p, parsed, f"smart {urlsplit(iss).netloc}"[:60], CHANNEL)
        pid = s.scalar(select(m.Patient.id).where(m.Patient.identifier == identifier))
        if pid is None:
            raise _refuse(s, 502, "The patient from the EHR could not be registered (see the quarantine).", who, user)
        counts = summary.as_dict()
        how = f"created on first launch: {counts['imported']} records imported, {len(skipped)} not monitored skipped"
    if old_session:
        auth.end_session(s, old_session)
    token, _csrf = auth.create_session(s, user)
    audit(s, user, "login", "smart-launch", None, who, CHANNEL)
    audit(s, user, "read", "smart-launch", pid, f"{data['mode']} launch, patient {how}"[:400], CHANNEL)
    assert pid is not None
    return Launched(token, pid, user.username)


def callback_url(config: SmartConfig, request_base: str) -> str:
    """Where the EHR sends the browser back: `{public URL}/smart/callback`."""
    return f"{(config.public_url or request_base).rstrip('/')}/smart/callback"
