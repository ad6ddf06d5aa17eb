"""Users, passwords (argon2), web sessions with CSRF tokens, and API bearer tokens.

Only hashes are stored: a leaked database gives no usable password, session or token.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from azaguard.store import models as m
from azaguard.store.records import now

ROLES = ("clinician", "patient", "admin")
SESSION_HOURS = 12
# Account lock-out against password guessing (a security setting, not a clinical number).
MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=15)
_hasher = PasswordHasher()


class AuthError(ValueError):
    pass


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


def login_locked(s: Session, username: str) -> bool:
    """Too many recent failed logins for this username (counted from the audit log, so it holds
    across processes and restarts)."""
    since = datetime.now() - LOCKOUT
    failures = s.scalar(
        select(func.count())
        .select_from(m.AuditEvent)
        .where(
            m.AuditEvent.action == "login-failed",
            m.AuditEvent.detail == f"username {(username or '').strip()[:40]}",
            m.AuditEvent.at >= since,
        )
    )
    return (failures or 0) >= MAX_FAILED_LOGINS


def authenticate(s: Session, username: str, password: str) -> m.User | None:
    user = s.scalar(select(m.User).where(m.User.username == (username or "").strip()))
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


def session_user(s: Session, token: str | None) -> tuple[m.User, m.WebSession] | None:
    if not token:
        return None
    ws = s.scalar(select(m.WebSession).where(m.WebSession.token_hash == _digest(token)))
    if ws is None or ws.expires_at < datetime.now():
        return None
    user = s.get(m.User, ws.user_id)
    if user is None or not user.active:
        return None
    return user, ws


def end_session(s: Session, token: str | None) -> None:
    if token:
        s.execute(delete(m.WebSession).where(m.WebSession.token_hash == _digest(token)))


def create_api_token(s: Session, user: m.User, label: str = "", days: int | None = None) -> str:
    token = "azg_" + secrets.token_urlsafe(32)
    stamp = now()
    s.add(
        m.ApiToken(
            user_id=user.id,
            token_hash=_digest(token),
            label=label,
            created_at=stamp,
            expires_at=stamp + timedelta(days=days) if days else None,
        )
    )
    return token


def token_user(s: Session, token: str | None) -> m.User | None:
    if not token:
        return None
    row = s.scalar(select(m.ApiToken).where(m.ApiToken.token_hash == _digest(token)))
    if row is None or (row.expires_at is not None and row.expires_at < datetime.now()):
        return None
    user = s.get(m.User, row.user_id)
    return user if user is not None and user.active else None
