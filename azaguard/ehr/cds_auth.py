"""Who may call the CDS Hooks services: registered clients and the JWT each request carries.

The CDS Hooks 2.0 specification (Security and Safety) has the EHR sign a short-lived JWT per call:
`iss` names the EHR, `aud` the exact service URL called, `exp`/`iat` bound its life, `jti` is unique,
and the signature is checked against keys the service already trusts. Trust comes only from a
registration (`azaguard cds-client add`): a pinned JWK Set or a JWKS URL, and a list of `jku` URLs
the client may name in a token header. A `jku` not on that list is never fetched (a token could
otherwise point us at keys its sender made up); the registered keys are used instead.

A token is refused for any doubt: unknown issuer, algorithm outside ES384/RS384 (and their 256/512
siblings; never `none` or HMAC), bad signature, wrong audience, expired, issued in the future (beyond
a few seconds of clock leeway), or a `jti` already seen - checked by a primary key in the database,
so two replays at once cannot both pass.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from azaguard.audit import audit
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.store.records import now

# Signature algorithms the specification names (ES384, RS384) and their siblings. Never "none" or
# HS*: a shared secret would let anyone who can read the registration sign tokens.
ALGORITHMS = ["ES384", "RS384", "ES256", "RS256", "ES512", "RS512"]
LEEWAY_SECONDS = 5  # clocks differ; the sandbox rounds iat to the nearest second
JWKS_CACHE_SECONDS = 300
MAX_LIFETIME_SECONDS = 3600  # exp - iat
MAX_ISS = 400  # the registration's column width
JWKS_TIMEOUT_SECONDS = 3.0
JWKS_MAX_BYTES = 256 * 1024


class CdsAuthError(Exception):
    """The request is refused (401). `reason` is safe to log and audit: it never quotes the token."""

    def __init__(self, reason: str, iss: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.iss = iss


@dataclass(frozen=True)
class CdsCaller:
    """A verified CDS client: its issuer and the FHIR servers azaguard may read on its behalf."""

    iss: str
    fhir_servers: tuple[str, ...]
    jti: str
    expires: datetime  # when the token (and so the memory of its jti) expires

    @property
    def id(self) -> int | None:  # an audit actor that is not an azaguard user
        return None

    @property
    def username(self) -> str:
        return f"cds:{self.iss}"[:80]


@dataclass(frozen=True)
class ClientOut:
    iss: str
    keys: str  # "pinned JWKS (n keys)" or the JWKS URL
    jku_allow: tuple[str, ...]
    fhir_servers: tuple[str, ...]
    active: bool


# ---------------------------------------------------------------- registration (CLI)
def _check_jwks(jwks: Any, where: str) -> dict[str, Any]:
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise ValueError(f"{where}: not a JWK Set (an object with a non-empty 'keys' array)")
    try:
        jwt.PyJWKSet.from_dict(jwks)
    except jwt.PyJWTError as exc:
        raise ValueError(f"{where}: no usable key ({exc})") from exc
    for key in jwks["keys"]:
        if isinstance(key, dict) and any(k in key for k in ("d", "p", "q", "k")):
            raise ValueError(f"{where}: contains private or symmetric key material; register the public keys only")
    return jwks


def _check_url(url: str, what: str) -> str:
    parsed = httpx.URL(url)
    if parsed.scheme not in ("https", "http") or not parsed.host:
        raise ValueError(f"{what} must be an http(s) URL, got {url!r}")
    return url


def add_client(
    db: Database,
    iss: str,
    jwks_file: str | None = None,
    jwks_url: str | None = None,
    jku_allow: list[str] | None = None,
    fhir_servers: list[str] | None = None,
) -> ClientOut:
    """Register (or re-register) an EHR's issuer with its keys. Exactly one of the key sources."""
    if not iss.strip():
        raise ValueError("--iss must not be empty")
    if (jwks_file is None) == (jwks_url is None):
        raise ValueError("give exactly one of --jwks-file and --jwks-url")
    jwks: dict[str, Any] | None = None
    if jwks_file is not None:
        try:
            jwks = _check_jwks(json.loads(Path(jwks_file).read_text(encoding="utf-8")), jwks_file)
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{jwks_file}: cannot be read as JSON ({exc})") from exc
    if jwks_url is not None:
        _check_url(jwks_url, "--jwks-url")
    allow = [_check_url(u, "--jku") for u in jku_allow or []]
    servers = [_check_url(u, "--fhir-server").rstrip("/") for u in fhir_servers or []]
    with db.write() as s:
        row = s.scalar(select(m.CdsClient).where(m.CdsClient.iss == iss))
        if row is None:
            row = m.CdsClient(iss=iss, created_at=now())
            s.add(row)
        row.jwks, row.jwks_url, row.jku_allow, row.fhir_servers, row.active = jwks, jwks_url, allow, servers, True
        out = _client_out(row)
    _KEYS.forget(db, iss)
    return out


def remove_client(db: Database, iss: str) -> bool:
    """Deactivate a client: its tokens are refused from now on (the row stays for the audit trail)."""
    with db.write() as s:
        row = s.scalar(select(m.CdsClient).where(m.CdsClient.iss == iss))
        if row is None:
            return False
        row.active = False
    _KEYS.forget(db, iss)
    return True


def list_clients(db: Database) -> list[ClientOut]:
    with db.session() as s:
        return [_client_out(r) for r in s.scalars(select(m.CdsClient).order_by(m.CdsClient.iss))]


def _client_out(row: m.CdsClient) -> ClientOut:
    keys = f"pinned JWKS ({len(row.jwks['keys'])} keys)" if row.jwks else f"JWKS URL {row.jwks_url}"
    return ClientOut(row.iss, keys, tuple(row.jku_allow or ()), tuple(row.fhir_servers or ()), bool(row.active))


# ---------------------------------------------------------------- key sets
class _KeyCache:
    """Fetched JWK Sets, cached briefly (a hook call must not wait on a key server; a rotation is
    picked up within JWKS_CACHE_SECONDS), and parsed pinned sets, by content. The registration itself
    is read on every call (one indexed row): a client removed or re-keyed with the CLI, in another
    process, is refused or accepted from the next call on."""

    MAX_ENTRIES = 256  # parsed sets and fetched URLs kept; beyond that the cache starts afresh

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sets: dict[str, tuple[float, jwt.PyJWKSet]] = {}
        self._parsed: dict[str, jwt.PyJWKSet] = {}

    def forget(self, db: Database, iss: str) -> None:
        with self._lock:
            self._sets.clear()

    def client(self, db: Database, s: Session, iss: str) -> m.CdsClient | None:
        return s.scalar(select(m.CdsClient).where(m.CdsClient.iss == iss, m.CdsClient.active.is_(True)))

    def pinned(self, client: m.CdsClient) -> jwt.PyJWKSet:
        """A registered JWK Set, parsed once per registration (parsing a key costs as much as a check)."""
        jwks: dict[str, Any] = client.jwks or {}
        key = json.dumps(jwks, sort_keys=True)
        hit = self._parsed.get(key)
        if hit is None:
            hit = jwt.PyJWKSet.from_dict(jwks)
            with self._lock:
                if len(self._parsed) >= self.MAX_ENTRIES:
                    self._parsed.clear()
                self._parsed[key] = hit
        return hit

    def remote(self, url: str) -> jwt.PyJWKSet:
        hit = self._sets.get(url)
        if hit and time.monotonic() - hit[0] < JWKS_CACHE_SECONDS:
            return hit[1]
        try:
            with httpx.Client(timeout=JWKS_TIMEOUT_SECONDS, follow_redirects=False) as client:
                response = client.get(url, headers={"Accept": "application/json"})
            if response.status_code != 200 or len(response.content) > JWKS_MAX_BYTES:
                raise CdsAuthError(f"the JWKS URL answered {response.status_code}")
            keyset = jwt.PyJWKSet.from_dict(_check_jwks(response.json(), "JWKS"))
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            raise CdsAuthError(f"the client's JWKS could not be fetched ({type(exc).__name__})") from exc
        with self._lock:
            if len(self._sets) >= self.MAX_ENTRIES:
                self._sets.clear()
            self._sets[url] = (time.monotonic(), keyset)
        return keyset


_KEYS = _KeyCache()


def _key_for(s: Session, client: m.CdsClient, header: dict[str, Any]) -> Any:
    jku = header.get("jku")
    if isinstance(jku, str) and jku in (client.jku_allow or []):
        keyset = _KEYS.remote(jku)
    elif client.jwks:
        keyset = _KEYS.pinned(client)
    elif client.jwks_url:
        keyset = _KEYS.remote(client.jwks_url)
    else:
        raise CdsAuthError("the client has no keys registered", client.iss)
    kid = header.get("kid")
    if isinstance(kid, str):
        for key in keyset.keys:
            if key.key_id == kid:
                return key
        raise CdsAuthError("no registered key has the token's kid", client.iss)
    if len(keyset.keys) == 1:
        return keyset.keys[0]
    raise CdsAuthError("the token has no kid and the client has several keys", client.iss)


# ---------------------------------------------------------------- verification
def verify(db: Database, authorization: str | None, audience: str) -> CdsCaller:
    """Check the bearer JWT of a CDS Hooks request for `audience` (the service URL called)."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise CdsAuthError("no bearer token")
    token = authorization[7:].strip()
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise CdsAuthError(f"the token is not a JWT ({type(exc).__name__})") from exc
    iss = unverified.get("iss")
    if not isinstance(iss, str) or not iss:
        raise CdsAuthError("the token has no iss")
    if len(iss) > MAX_ISS:
        raise CdsAuthError("the token's iss is not a registered CDS client (too long)")
    if header.get("alg") not in ALGORITHMS:
        raise CdsAuthError(f"algorithm {str(header.get('alg'))[:20]!r} is not accepted", iss)
    with db.session() as s:
        client = _KEYS.client(db, s, iss)
        if client is None:
            raise CdsAuthError("the issuer is not a registered CDS client", iss[:200])
        key = _key_for(s, client, header)
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=ALGORITHMS,
            audience=audience,
            issuer=iss,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "iat", "jti", "iss", "aud"]},
        )
    except jwt.PyJWTError as exc:
        raise CdsAuthError(f"the token was refused ({type(exc).__name__}: {exc})", iss) from exc
    if float(claims["iat"]) > time.time() + LEEWAY_SECONDS:
        raise CdsAuthError("the token was issued in the future", iss)
    if float(claims["exp"]) - float(claims["iat"]) > MAX_LIFETIME_SECONDS:
        # CDS Hooks asks for short-lived tokens (the sandbox's live 5 minutes); a long one is a
        # credential someone could keep and replay against another service id.
        raise CdsAuthError(f"the token lives longer than {MAX_LIFETIME_SECONDS} s (exp - iat)", iss)
    expires = datetime.fromtimestamp(float(claims["exp"])) + timedelta(seconds=LEEWAY_SECONDS)
    return CdsCaller(iss, tuple(client.fhir_servers or ()), str(claims["jti"]), expires.replace(microsecond=0))


_SWEEP_EVERY = 500
_sweep = {"count": 0}


def remember_jti(s: Session, caller: CdsCaller) -> None:
    """Add the token id to the unit of work that answers the request: if the id was seen before, the
    commit fails on the primary key (IntegrityError, a replay) and nothing of the request is kept."""
    key = hashlib.sha256(f"{caller.iss}\n{caller.jti}".encode()).hexdigest()
    s.add(m.CdsJti(jti=key, expires_at=caller.expires))
    _sweep["count"] += 1
    if _sweep["count"] % _SWEEP_EVERY == 0:  # expired ids can never be replayed: forget them
        s.execute(delete(m.CdsJti).where(m.CdsJti.expires_at < now()))


def remember_jti_now(db: Database, caller: CdsCaller) -> None:
    """The token id in a unit of its own (discovery, which writes nothing else)."""
    try:
        with db.write() as s:
            remember_jti(s, caller)
    except IntegrityError as exc:
        raise CdsAuthError("the token's jti was used before (a replay)", caller.iss) from exc


@dataclass(frozen=True)
class _Refused:
    """The audit actor of a refused request: the issuer it claimed, if any (unverified)."""

    username: str

    @property
    def id(self) -> int | None:
        return None


def record_refusal(db: Database, exc: CdsAuthError, route: str) -> None:
    """Audit a refused call: the route and the reason (never the token, never patient data)."""
    with db.write() as s:
        who = _Refused(f"cds:{exc.iss}"[:80] if exc.iss else "(anonymous)")
        audit(s, who, "denied", route, None, f"CDS Hooks JWT refused: {exc.reason}"[:400], channel="cds")
