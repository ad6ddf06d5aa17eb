"""Request limits and security headers (issue 7): bodies over the limit are refused with 413
before they are read; pages carry a Content-Security-Policy; HSTS behind TLS; tokens expire and
can be revoked."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dbfixtures import fresh_database
from fastapi.testclient import TestClient
from sqlalchemy import select

from azaguard import auth
from azaguard.app import create_app
from azaguard.knowledge import Knowledge
from azaguard.store import models as m

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kb: Knowledge
) -> Iterator[tuple[TestClient, str]]:
    gen = fresh_database("sqlite", request, tmp_path_factory.mktemp("limits"))
    db = next(gen)
    with db.session() as s:
        user = auth.create_user(s, "lim", "limits-password-1", "clinician")
        token = auth.create_api_token(s, user, "t")
    yield TestClient(create_app(db, kb), raise_server_exceptions=False), token
    gen.close()


def test_a_declared_200_mb_body_is_refused_with_413_without_being_read(client: tuple[TestClient, str]) -> None:
    c, _ = client

    def never_read() -> Iterator[bytes]:
        raise AssertionError("the body must not be read")
        yield b""  # pragma: no cover

    for path in ("/api/v1/token", "/api/v1/import", "/login"):
        r = c.post(path, content=never_read(), headers={"Content-Length": str(200 * 1024 * 1024)})
        assert r.status_code == 413, (path, r.status_code, r.text[:200])


def test_a_chunked_body_over_the_limit_is_cut_off(client: tuple[TestClient, str]) -> None:
    c, _ = client

    def chunks() -> Iterator[bytes]:
        for _ in range(4):
            yield b"x" * (1024 * 1024)

    r = c.post("/api/v1/token", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than 2 MB" in r.json()["error"]["message"]
    # under the limit the same route answers normally
    assert c.post("/api/v1/token", json={"username": "lim", "password": "wrong-password"}).status_code == 401


def test_pages_have_a_content_security_policy_and_hsts_only_behind_tls(client: tuple[TestClient, str]) -> None:
    c, _ = client
    page = c.get("/login")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "strict-transport-security" not in page.headers
    assert "strict-transport-security" in c.get("https://testserver/login").headers


def test_tokens_expire_by_default_refuse_bad_lifetimes_and_can_be_revoked(client: tuple[TestClient, str]) -> None:
    c, _ = client
    r = c.post("/api/v1/token", json={"username": "lim", "password": "limits-password-1"})
    assert r.status_code == 200
    token = r.json()["token"]
    h = {"Authorization": f"Bearer {token}"}
    assert c.get("/api/v1/patients", headers=h).status_code == 200
    assert c.delete("/api/v1/token", headers=h).status_code == 204
    assert c.get("/api/v1/patients", headers=h).status_code == 401  # revoked at once
    db = c.app.state.db  # type: ignore[attr-defined]
    with db.session() as s:
        user = s.scalar(select(m.User).where(m.User.username == "lim"))
        assert user is not None
        for days in (0, -1, 366):
            with pytest.raises(auth.AuthError):
                auth.create_api_token(s, user, "bad", days)
        tok = auth.create_api_token(s, user, "default")
        row = s.scalar(select(m.ApiToken).where(m.ApiToken.label == "default"))
        assert row is not None and row.expires_at is not None
        assert 29 <= (row.expires_at - row.created_at).days <= 30
        assert auth.token_user(s, tok) is not None
