"""The read paths that carry most of a clinic's traffic: the worklist page in pages of 50 and an
assessment read that is served from the stored assessment unless it is out of date.

The demo clinic (240 synthetic patients, SQLite) is built once for the module.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from azaguard import auth
from azaguard import worklist as wl
from azaguard.app import create_app
from azaguard.knowledge import Knowledge
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.synth import build_demo
from azaguard.web.views import COOKIE, WORKLIST_PAGE

ROW = re.compile(r'<tr class="sev-[^"]*" data-patient="([^"]+)">')


@dataclass
class Clinic:
    db: Database
    web: TestClient
    api: TestClient


@pytest.fixture(scope="module")
def clinic(tmp_path_factory: pytest.TempPathFactory, kb: Knowledge) -> Iterator[Clinic]:
    path: Path = tmp_path_factory.mktemp("read-paths") / "clinic.db"
    db = Database(f"sqlite:///{path}")
    build_demo(db, 240)
    with db.session() as s:
        nurse = s.scalar(select(m.User).where(m.User.username == "nurse"))
        assert nurse is not None
        cookie, _ = auth.create_session(s, nurse)
        token = auth.create_api_token(s, nurse, "tests")
    app = create_app(db, kb)
    yield Clinic(
        db,
        TestClient(app, follow_redirects=False, cookies={COOKIE: cookie}),
        TestClient(app, headers={"Authorization": f"Bearer {token}"}),
    )
    db.engine.dispose()


def rows(page: Any) -> list[str]:
    return ROW.findall(page.text)


# ---------------------------------------------------------------- the worklist in pages
def test_the_worklist_comes_in_pages_that_together_hold_every_patient_once(clinic: Clinic) -> None:
    first = clinic.web.get("/worklist")
    assert first.status_code == 200
    total = int(re.search(r"<h1>Worklist <small>(\d+) patient", first.text).group(1))  # type: ignore[union-attr]
    assert total > WORKLIST_PAGE, "the demo clinic must need more than one page for this test to mean anything"
    pages = -(-total // WORKLIST_PAGE)
    seen: list[str] = []
    for n in range(1, pages + 1):
        page = clinic.web.get("/worklist", params={"page": n})
        got = rows(page)
        expected = WORKLIST_PAGE if n < pages else total - WORKLIST_PAGE * (pages - 1)
        assert len(got) == expected, (n, len(got))
        assert f"Patients {(n - 1) * WORKLIST_PAGE + 1}-{(n - 1) * WORKLIST_PAGE + expected} of {total}" in page.text
        assert ('rel="next"' in page.text) == (n < pages) and ('rel="prev"' in page.text) == (n > 1)
        seen += got
    assert len(seen) == total == len(set(seen))
    # The API's worklist holds the same patients in the same order.
    api = clinic.api.get("/api/v1/worklist", params={"limit": 500}).json()
    assert [e["identifier"] for e in api["entries"]] == seen


@pytest.mark.parametrize("raw", ["0", "-3", "abc", "99999999999999999999"])
def test_a_page_number_out_of_range_shows_a_real_page(clinic: Clinic, raw: str) -> None:
    page = clinic.web.get("/worklist", params={"page": raw})
    assert page.status_code == 200 and rows(page), raw


def test_a_page_past_the_end_shows_the_last_page(clinic: Clinic) -> None:
    last = clinic.web.get("/worklist", params={"page": 10_000})
    assert last.status_code == 200 and rows(last)
    assert 'rel="next"' not in last.text and 'rel="prev"' in last.text


def test_the_page_links_keep_the_filters(clinic: Clinic) -> None:
    page = clinic.web.get("/worklist", params={"team": "specialist"})
    links = re.findall(r'<a rel="next" href="([^"]+)"', page.text)
    if not links:
        pytest.skip("the specialist team's list fits on one page in this clinic")
    assert "team=specialist" in links[0] and "page=2" in links[0]
    second = clinic.web.get(links[0].replace("&amp;", "&"))
    assert rows(second) and not set(rows(second)) & set(rows(page))


def test_a_filtered_list_that_fits_on_one_page_has_no_pager(clinic: Clinic) -> None:
    page = clinic.web.get("/worklist", params={"severity": "critical"})
    assert 0 < len(rows(page)) <= WORKLIST_PAGE
    assert 'class="pager"' not in page.text


# ---------------------------------------------------------------- the assessment read
def _some_patient(clinic: Clinic) -> int:
    with clinic.db.session() as s:
        pid = s.scalar(select(m.AssessmentRow.patient_id).order_by(m.AssessmentRow.patient_id))
    assert pid is not None
    return pid


def test_a_current_stored_assessment_is_served_without_assessing_again(
    clinic: Clinic, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = _some_patient(clinic)
    clinic.api.get(f"/api/v1/patients/{pid}/assessment").raise_for_status()  # brought up to date

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("a current assessment was assessed again on a read")

    monkeypatch.setattr(wl, "refresh_patient", refuse)
    body = clinic.api.get(f"/api/v1/patients/{pid}/assessment").json()
    assert body["as_of"] == date.today().isoformat()


@pytest.mark.parametrize(
    "stale",
    [
        {"as_of": date.today() - timedelta(days=1)},  # assessed yesterday: tests fall due with the calendar
        {"knowledge_version": "2000.1.1"},  # assessed with other knowledge
        {"schema_version": "1"},  # stored in an older JSON contract
    ],
    ids=["yesterday", "old-knowledge", "old-schema"],
)
def test_an_out_of_date_stored_assessment_is_assessed_again(
    clinic: Clinic, kb: Knowledge, stale: dict[str, Any]
) -> None:
    pid = _some_patient(clinic)
    with clinic.db.session() as s:
        row = s.get(m.AssessmentRow, pid)
        assert row is not None
        result = dict(row.result)
        values: dict[str, Any] = {}
        if "as_of" in stale:
            values["as_of"] = stale["as_of"]
        else:
            result.update(stale)  # as an assessment stored by an older release would be, digest and all
            values["result"] = result
            values["result_digest"] = wl._digest(result)
        s.execute(update(m.AssessmentRow).where(m.AssessmentRow.patient_id == pid).values(**values))
    body = clinic.api.get(f"/api/v1/patients/{pid}/assessment").json()
    assert body["as_of"] == date.today().isoformat()
    assert body["knowledge_version"] == kb.version and body["schema_version"] != "1"
    with clinic.db.session() as s:
        row = s.get(m.AssessmentRow, pid)
        assert row is not None and row.as_of == date.today() and row.result["knowledge_version"] == kb.version


def test_a_patient_page_view_is_one_audit_row(clinic: Clinic) -> None:
    """The page reads the record, its reminders and its letters: one access, audited once (the
    reminders and letters sections do not each add a row of their own)."""
    from sqlalchemy import func

    pid = _some_patient(clinic)
    with clinic.db.session() as s:
        before = s.scalar(select(func.max(m.AuditEvent.id))) or 0
    assert clinic.web.get(f"/patients/{pid}").status_code == 200
    with clinic.db.session() as s:
        rows = s.execute(
            select(m.AuditEvent.action, m.AuditEvent.resource, m.AuditEvent.patient_id).where(m.AuditEvent.id > before)
        ).all()
    assert [tuple(r) for r in rows] == [("read", "view-patient", pid)]
