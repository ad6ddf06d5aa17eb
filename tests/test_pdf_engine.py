"""Letters on a server without the PDF engine's system libraries: a 503 that says what to install,
never a 500, and nothing stored. (Runs everywhere: the missing library is simulated.)"""

from __future__ import annotations

import builtins
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from azaguard import auth
from azaguard.app import create_app
from azaguard.knowledge import Knowledge
from azaguard.render import letter as letters
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.store.writes import add_patient
from azaguard.web.views import COOKIE


@pytest.fixture
def no_pango(monkeypatch: pytest.MonkeyPatch) -> None:
    real = builtins.__import__

    def fake(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "weasyprint" or name.startswith("weasyprint."):
            raise OSError("cannot load library 'libpango-1.0-0': libpango-1.0-0: cannot open shared object file")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)


def test_a_letter_without_the_pdf_engine_is_a_503_that_says_what_to_install(
    sqlite_db: Database, kb: Knowledge, no_pango: None
) -> None:
    assert not letters.pdf_engine_available()
    with sqlite_db.session() as s:
        pid = add_patient(s, "PDF-1", "Pat Pdfless").id
        nurse = auth.create_user(s, "nurse", "correct-horse", "clinician")
        token = auth.create_api_token(s, nurse, "tests")
        cookie, csrf = auth.create_session(s, nurse)
    app = create_app(sqlite_db, kb)
    api = TestClient(app, headers={"Authorization": f"Bearer {token}"})
    r = api.post(f"/api/v1/patients/{pid}/letters", json={"recipient": "gp"})
    assert r.status_code == 503 and "libpango-1.0-0" in r.json()["error"]["message"]
    web = TestClient(app, follow_redirects=False, cookies={COOKIE: cookie})
    page = web.post(f"/patients/{pid}/letters", data={"recipient": "gp", "csrf": csrf})
    assert page.status_code == 503 and "Pango" in page.text
    with sqlite_db.session() as s:
        assert s.scalar(select(func.count()).select_from(m.Document)) == 0
