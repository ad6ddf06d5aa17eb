"""Users, passwords (argon2), web sessions with CSRF tokens, and API bearer tokens.

Only hashes are stored: a leaked database gives no usable password, session or token.

Password guessing (docs/operations.md): every attempt is counted *before* its password is
checked, in a short transaction of its own on counter rows (`login_throttle`), so concurrent
attempts cannot slip past the limit. Three counters: the username at the client's address
(MAX_FAILED_LOGINS), the username from anywhere (MAX_FAILED_LOGINS) and the address for every
username (MAX_FAILED_LOGINS_PER_ADDRESS). Reaching a limit locks that counter with a back-off
that doubles on each lock-out in a row, from BACKOFF_FIRST up to LOCKOUT at most, so every
lock-out ends. An address where the username logged in successfully within TRUSTED_FOR is
bound only by its own (username, address) counter: an attacker elsewhere cannot lock an
administrator out of their usual workstation, and one address cannot lock out everyone.
At most ARGON2_CONCURRENCY password checks (64 MiB each) run at once; an attempt that cannot
start one within ARGON2_WAIT seconds is refused with 503 instead of queueing memory.
"""

from __future__ import annotations

import hashlib
import os
import random
import secrets
import threading
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Connection, Row, bindparam, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException

from azaguard.audit import audit
from azaguard.store import models as m
from azaguard.store.db import begin_write, is_writing
from azaguard.store.records import now

ROLES = ("clinician", "patient", "admin")
SESSION_HOURS = 12
# Lock-out against password guessing (security settings, not clinical numbers).
MAX_FAILED_LOGINS = 5  # per username (from anywhere) and per username at one client address
MAX_FAILED_LOGINS_PER_ADDRESS = 20  # per client address, all usernames together
LOCKOUT = timedelta(minutes=15)  # failures are counted in windows this long; the longest lock-out
BACKOFF_FIRST = timedelta(minutes=1)  # the first lock-out; each one in a row doubles it, up to LOCKOUT
TRUSTED_FOR = timedelta(days=30)  # a successful login makes the address trusted for that username
ARGON2_CONCURRENCY = int(os.environ.get("AZAGUARD_ARGON2_CONCURRENCY", "0")) or max(2, os.cpu_count() or 2)
ARGON2_WAIT = 1.0  # seconds an attempt may wait for a password-check slot
_hasher = PasswordHasher()
_argon2_slots = threading.BoundedSemaphore(ARGON2_CONCURRENCY)


class AuthError(ValueError):
    pass


class LoginRefused(HTTPException):
    """An attempt refused before its password was checked (an HTTP error as it stands)."""


class TooManyAttempts(LoginRefused):
    """429: a lock-out counter reached its limit while this attempt was on its way."""

    def __init__(self, retry_after: int) -> None:
        minutes = max(1, (retry_after + 59) // 60)
        super().__init__(
            429,
            f"too many failed logins: try again in {minutes} minute{'s' if minutes != 1 else ''}",
            headers={"Retry-After": str(max(1, retry_after))},
        )


class LoginBusy(LoginRefused):
    """503: every password-check slot stayed busy for ARGON2_WAIT seconds."""

    def __init__(self) -> None:
        super().__init__(503, "too many logins at once: try again in a moment", headers={"Retry-After": "1"})


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def create_user(
    s: Session,
    username: str,
    password: str,
    role: str,
    patient_identifier: str | None = None,
    display_name: str = "",
) -> m.User:
    username = (username or "").strip()
    if not username:
        raise AuthError("username is required")
    if role not in ROLES:
        raise AuthError(f"role must be one of {', '.join(ROLES)}")
    if len(password or "") < 8:
        raise AuthError("password must have at least 8 characters")
    if s.scalar(select(m.User.id).where(m.User.username == username)) is not None:
        raise AuthError(f"user '{username}' already exists")
    patient_id = None
    if role == "patient":
        if not patient_identifier:
            raise AuthError("a patient user must be bound to a patient record (--patient IDENTIFIER)")
        patient_id = s.scalar(select(m.Patient.id).where(m.Patient.identifier == patient_identifier))
        if patient_id is None:
            raise AuthError(f"no patient with identifier '{patient_identifier}'")
    elif patient_identifier:
        raise AuthError("only patient users are bound to a patient record")
    user = m.User(
        username=username,
        password_hash=hash_password(password),
        role=role,
        patient_id=patient_id,
        display_name=display_name or username,
        active=True,
        created_at=now(),
    )
    s.add(user)
    s.flush()
    return user


# ---------------------------------------------------------------- lock-out counters
def _name(username: str | None) -> str:
    return (username or "").strip()[:80]


def _keys(username: str, client: str | None) -> tuple[str, str, str | None, str]:
    """(username at address, username, address or None when unknown, trust marker)."""
    address = (client or "").strip()[:64]
    pair = f"{username}|{address}"
    return f"ua:{pair}", f"u:{username}", f"a:{address}" if address else None, f"ok:{pair}"


def _limits(
    conn: Connection | Session, username: str, client: str | None, stamp: datetime
) -> dict[str, tuple[int, bool]]:
    """Counter key -> (limit, binding): a trusted address is bound only by its own pair counter."""
    pair, user, address, trust = _keys(username, client)
    last = conn.execute(select(m.LoginThrottle.last_success).where(m.LoginThrottle.key == trust)).scalar()
    trusted = last is not None and stamp - last <= TRUSTED_FOR
    limits = {pair: (MAX_FAILED_LOGINS, True), user: (MAX_FAILED_LOGINS, not trusted)}
    if address:
        limits[address] = (MAX_FAILED_LOGINS_PER_ADDRESS, not trusted)
    return limits


def _locked_for(row: Any, stamp: datetime) -> int:
    """Seconds this counter stays locked (0: not locked)."""
    if row.locked_until is not None and row.locked_until > stamp:
        return int((row.locked_until - stamp).total_seconds()) + 1
    return 0


def login_locked(s: Session, username: str, client: str | None = None) -> bool:
    """This username (at this client address, when given) is locked out just now. A fast check
    before the password is looked at; `authenticate` counts the attempt itself, atomically."""
    stamp = now()
    name = _name(username)
    limits = _limits(s, name, client, stamp)
    binding = [k for k, (_, bind) in limits.items() if bind]
    rows = s.execute(select(m.LoginThrottle).where(m.LoginThrottle.key.in_(binding))).scalars()
    return any(_locked_for(r, stamp) for r in rows)


def _upsert_missing(conn: Connection, keys: list[str]) -> None:
    values = [{"key": k, "failures": 0, "lockouts": 0} for k in keys]
    if conn.dialect.name == "postgresql":
        conn.execute(pg_insert(m.LoginThrottle).values(values).on_conflict_do_nothing(index_elements=["key"]))
    else:
        conn.execute(sqlite_insert(m.LoginThrottle).values(values).on_conflict_do_nothing(index_elements=["key"]))


def _backoff(row: Any, stamp: datetime) -> timedelta:
    recent = row.last_lockout is not None and stamp - row.last_lockout < timedelta(days=1)
    in_a_row = int(row.lockouts) if recent else 0
    backoff: timedelta = BACKOFF_FIRST * 2 ** min(in_a_row, 20)
    return min(backoff, LOCKOUT)


def _reserve(conn: Connection, username: str, client: str | None, stamp: datetime) -> tuple[int, set[str]]:
    """Count one attempt on every counter, before the password is checked. Returns (0, the counters
    this attempt locked) if the attempt may go on, else (the seconds until a binding counter unlocks,
    nothing): the attempt is then not counted."""
    begin_write(conn)  # SQLite: BEGIN IMMEDIATE, so the counters are read and written as one
    limits = _limits(conn, username, client, stamp)
    _upsert_missing(conn, sorted(limits))
    t = m.LoginThrottle
    rows = {}
    for key in sorted(limits):  # one order everywhere: no deadlock between concurrent attempts
        rows[key] = conn.execute(select(t).where(t.key == key).with_for_update()).one()
    wait = max((_locked_for(rows[k], stamp) for k, (_, bind) in limits.items() if bind), default=0)
    if wait:
        return wait, set()
    locked_here: set[str] = set()
    for key, (limit, _) in limits.items():
        row = rows[key]
        failures, window, locked, lockouts, last_lockout = (
            row.failures, row.window_start, row.locked_until, row.lockouts, row.last_lockout
        )  # fmt: skip
        if window is None or stamp - window >= LOCKOUT or (locked is not None and locked <= stamp):
            failures, window, locked = 0, stamp, None
        failures += 1
        if failures >= limit and locked is None:  # this is the last attempt allowed: lock the rest out
            locked = stamp + _backoff(row, stamp)
            lockouts, last_lockout = lockouts + 1, stamp
            locked_here.add(key)
        conn.execute(
            update(t)
            .where(t.key == key)
            .values(failures=failures, window_start=window, locked_until=locked, lockouts=lockouts,
                    last_lockout=last_lockout)
        )  # fmt: skip
    if random.random() < 0.01:  # forget old counters now and then
        old = stamp - timedelta(days=1)
        conn.execute(
            delete(t).where(
                ~t.key.startswith("ok:"), t.window_start < old, (t.locked_until.is_(None)) | (t.locked_until < stamp)
            )
        )
        conn.execute(delete(t).where(t.key.startswith("ok:"), t.last_success < stamp - TRUSTED_FOR))
    return 0, locked_here


def _release(
    conn: Connection, username: str, client: str | None, stamp: datetime, success: bool, locked_here: set[str]
) -> None:
    """Take back an attempt that was not a failure (the right password, or never checked), and the
    lock-outs it set itself (`locked_here`). A lock another attempt set stays: that attempt's
    password was wrong, and taking back an earlier attempt must not open the door to the rest."""
    begin_write(conn)
    t = m.LoginThrottle
    limits = _limits(conn, username, client, stamp)
    for key in sorted(limits):
        row = conn.execute(select(t).where(t.key == key).with_for_update()).one_or_none()
        if row is None or row.failures <= 0:
            continue
        failures = row.failures - 1
        values: dict[str, Any] = {"failures": failures}
        if key in locked_here and row.locked_until is not None:  # the lock this attempt set
            values |= {"locked_until": None, "lockouts": max(0, row.lockouts - 1)}
        conn.execute(update(t).where(t.key == key).values(**values))
    if success:
        _, _, _, trust = _keys(username, client)
        _upsert_missing(conn, [trust])
        conn.execute(update(t).where(t.key == trust).values(last_success=stamp))


def _counters(s: Session, fn: Any, *args: Any) -> Any:
    """Run fn(connection, ...) in a short transaction of its own on the session's connection,
    committed at once (the request may go on much longer; PostgreSQL: no second connection per
    login, so logins cannot exhaust the pool). Inside the request's transaction instead if that
    already holds the SQLite write lock. A login writes nothing before it is authenticated, so
    ending the session's transaction first loses nothing."""
    if is_writing(s):
        return fn(s.connection(), *args)
    s.commit()
    try:
        result = fn(s.connection(), *args)
        s.commit()
    except BaseException:
        s.rollback()
        raise
    return result


def authenticate(s: Session, username: str, password: str, client: str | None = None) -> m.User | None:
    """The user, or None for a wrong username or password (counted as a failed login). The attempt
    is counted, and committed, before the password is checked: the session's transaction so far is
    committed with it (call this before the request writes anything).

    Raises TooManyAttempts (429) when a lock-out counter reached its limit while this attempt was
    on its way, and LoginBusy (503) when no password-check slot came free in ARGON2_WAIT seconds;
    both are audited here and leave the counters as they were. `client` is the client's address
    (per-address limits apply only when it is given)."""
    name = _name(username)
    stamp = now()
    wait, locked_here = _counters(s, _reserve, name, client, stamp)
    if wait:
        audit(s, None, "login-locked", "login", detail=f"username {name[:40]} (limit reached meanwhile)", keep=True)
        raise TooManyAttempts(wait)
    if not _argon2_slots.acquire(timeout=ARGON2_WAIT):
        _counters(s, _release, name, client, stamp, False, locked_here)
        audit(s, None, "login-refused", "login", detail=f"username {name[:40]} (server busy)", keep=True)
        raise LoginBusy()
    try:
        user = _check_password(s, name, password)
    finally:
        _argon2_slots.release()
    if user is not None:
        _counters(s, _release, name, client, stamp, True, locked_here)
    return user


def _check_password(s: Session, username: str, password: str) -> m.User | None:
    user = s.scalar(select(m.User).where(m.User.username == username))
    if user is None or not user.active:
        _hasher.hash("timing-equaliser")  # same cost whether or not the user exists
        return None
    try:
        _hasher.verify(user.password_hash, password or "")
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return user


def create_session(s: Session, user: m.User) -> tuple[str, str]:
    """Returns (session token for the cookie, CSRF token for forms)."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    stamp = now()
    s.add(
        m.WebSession(
            token_hash=_digest(token),
            user_id=user.id,
            csrf_token=csrf,
            created_at=stamp,
            expires_at=stamp + timedelta(hours=SESSION_HOURS),
        )
    )
    return token, csrf


# Who is asking, read on every request: built once (building a select costs SQLAlchemy more CPU than
# SQLite spends running it), the columns a Principal needs rather than ORM objects.
Caller = Row[*tuple[Any, ...]]  # id, username, role, patient_id, display_name, active, ...
_U, _WS, _TK = m.core(m.User), m.core(m.WebSession), m.core(m.ApiToken)
_CALLER = (_U.c.id, _U.c.username, _U.c.role, _U.c.patient_id, _U.c.display_name, _U.c.active)
_SESSION_USER = (
    select(*_CALLER, _WS.c.csrf_token, _WS.c.expires_at)
    .join_from(_U, _WS, _WS.c.user_id == _U.c.id)
    .where(_WS.c.token_hash == bindparam("hash"))
)
_TOKEN_USER = (
    select(*_CALLER, _TK.c.expires_at)
    .join_from(_U, _TK, _TK.c.user_id == _U.c.id)
    .where(_TK.c.token_hash == bindparam("hash"))
)


def session_user(s: Session, token: str | None) -> Caller | None:
    """The user of a browser session (id, username, role, patient_id, display_name) and its
    csrf_token; None: no such session, it has expired, or the user is no longer active."""
    if not token:
        return None
    found = s.execute(_SESSION_USER, {"hash": _digest(token)}).first()  # one query per page, not two
    if found is None or found.expires_at < datetime.now() or not found.active:
        return None
    return found


def end_session(s: Session, token: str | None) -> None:
    if token:
        s.execute(delete(m.WebSession).where(m.WebSession.token_hash == _digest(token)))


# API tokens expire by default (a leaked token must not work forever) and can be revoked.
TOKEN_DAYS = 30
TOKEN_MAX_DAYS = 365


def create_api_token(s: Session, user: m.User, label: str = "", days: int | None = None) -> str:
    """A bearer token valid for `days` (default TOKEN_DAYS, at most TOKEN_MAX_DAYS)."""
    days = TOKEN_DAYS if days is None else days
    if not 1 <= days <= TOKEN_MAX_DAYS:
        raise AuthError(f"a token lasts 1 to {TOKEN_MAX_DAYS} days, not {days}")
    token = "azg_" + secrets.token_urlsafe(32)
    stamp = now()
    s.add(
        m.ApiToken(
            user_id=user.id,
            token_hash=_digest(token),
            label=label,
            created_at=stamp,
            expires_at=stamp + timedelta(days=days),
        )
    )
    return token


def revoke_api_token(s: Session, token: str | None = None, token_id: int | None = None) -> m.ApiToken | None:
    """Delete a token (by its value or id) so it can never be used again; the row is returned."""
    if token is not None:
        row = s.scalar(select(m.ApiToken).where(m.ApiToken.token_hash == _digest(token)))
    elif token_id is not None:
        row = s.get(m.ApiToken, token_id)
    else:
        row = None
    if row is not None:
        s.delete(row)
        s.flush()
    return row


def list_api_tokens(s: Session, user_id: int | None = None) -> list[m.ApiToken]:
    q = select(m.ApiToken).order_by(m.ApiToken.id)
    if user_id is not None:
        q = q.where(m.ApiToken.user_id == user_id)
    return list(s.scalars(q))


def token_user(s: Session, token: str | None) -> Caller | None:
    """The user of a bearer token (id, username, role, patient_id, display_name); None: no such
    token, it has expired, or the user is no longer active."""
    if not token:
        return None
    found = s.execute(_TOKEN_USER, {"hash": _digest(token)}).first()  # every API call comes through here
    if found is None or (found.expires_at is not None and found.expires_at < datetime.now()):
        return None
    return found if found.active else None
