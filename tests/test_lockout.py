"""Password guessing is stopped: after MAX_FAILED_LOGINS failures a username is locked for LOCKOUT."""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.testclient import TestClient

from azaguard import auth
from azaguard.app import create_app
from azaguard.knowledge import Knowledge
from azaguard.store.db import Database


def _app(db: Database, kb: Knowledge) -> FastAPI:
    with db.session() as s:
        auth.create_user(s, "nurse", "correct-horse", "clinician")
        auth.create_user(s, "other", "battery-staple", "clinician")
    return create_app(db, kb)


def test_api_token_locks_after_repeated_failures(db, kb):
    client = TestClient(_app(db, kb))
    for _ in range(auth.MAX_FAILED_LOGINS - 1):
        assert client.post("/api/v1/token", json={"username": "nurse", "password": "wrong"}).status_code == 401
    # one failure short of the limit: the right password still works
    assert client.post("/api/v1/token", json={"username": "nurse", "password": "correct-horse"}).status_code == 200
    assert client.post("/api/v1/token", json={"username": "nurse", "password": "wrong"}).status_code == 401
    locked = client.post("/api/v1/token", json={"username": "nurse", "password": "correct-horse"})
    assert locked.status_code == 429 and "too many failed logins" in locked.json()["error"]["message"]
    # another account is unaffected
    assert client.post("/api/v1/token", json={"username": "other", "password": "battery-staple"}).status_code == 200


def test_web_login_locks_after_repeated_failures(sqlite_db, kb):
    client = TestClient(_app(sqlite_db, kb), follow_redirects=False)

    def attempt(password: str) -> int:
        page = client.get("/login")
        found = re.search(r'name="login_csrf" value="([^"]+)"', page.text)
        assert found is not None
        token = found.group(1)
        r = client.post("/login", data={"username": "nurse", "password": password, "login_csrf": token})
        return r.status_code

    for _ in range(auth.MAX_FAILED_LOGINS):
        assert attempt("wrong") == 401
    assert attempt("correct-horse") == 429


def test_taking_back_an_unchecked_attempt_keeps_a_lock_another_attempt_set(db: Database) -> None:
    """Five attempts counted at once; the fifth locks the account. The third then finds every
    password-check slot busy and is taken back, unchecked: the lock the fifth set must stay (taking
    back the third used to clear it, and the right password - or more guesses - got in)."""
    from azaguard.store.records import now

    with db.session() as s:
        auth.create_user(s, "nurse", "correct-horse", "clinician")
    stamp = now()
    reserved = []
    for _ in range(auth.MAX_FAILED_LOGINS):
        with db.session() as s:
            reserved.append(auth._counters(s, auth._reserve, "nurse", "10.0.0.9", stamp))
    assert [wait for wait, _ in reserved] == [0] * auth.MAX_FAILED_LOGINS
    assert not any(locked for _, locked in reserved[:-1]) and reserved[-1][1], "the last attempt locks"
    with db.session() as s:  # the third attempt: never checked, taken back
        auth._counters(s, auth._release, "nurse", "10.0.0.9", stamp, False, reserved[2][1])
    with db.session() as s:
        assert auth.login_locked(s, "nurse", "10.0.0.9")
    # ... while the attempt that set a lock takes back its own lock with it.
    with db.session() as s:
        auth._counters(s, auth._release, "nurse", "10.0.0.9", stamp, False, reserved[-1][1])
    with db.session() as s:
        assert not auth.login_locked(s, "nurse", "10.0.0.9")
