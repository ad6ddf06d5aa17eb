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
