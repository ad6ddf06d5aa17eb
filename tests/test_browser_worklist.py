"""The worklist in a real headless Chromium against a real uvicorn server (issue 8, item 1).

A demo clinic big enough for the worklist to need more than one page of 50 (SQLite). A clinician
reads what is wrong on each row, narrows the list with a count, sorts it by name and pages through
it with the sort kept, claims a patient on page 2 (and lands back on page 2), finds them under
"My patients", assigns them to a colleague and unassigns them. Screenshots of every step go to
test-artifacts/screenshots/ (git-ignored).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from browser_fixtures import browser_type_launch_args, demo_clinic_server, live_server, login, screenshot  # noqa: F401
from playwright.sync_api import expect
from sqlalchemy import select

from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.web.views import WORKLIST_PAGE

N_PATIENTS = 240  # the demo size: its worklist needs more than one page of 50
NURSE = ("nurse", "demo-nurse")


@dataclass
class Clinic:
    url: str
    db: Database

    def owner_of(self, identifier: str) -> str | None:
        with self.db.session() as s:
            owner_id = s.scalar(select(m.Patient.owner_id).where(m.Patient.identifier == identifier))
            return None if owner_id is None else s.scalar(select(m.User.username).where(m.User.id == owner_id))


@pytest.fixture(scope="module")
def clinic(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clinic]:
    with demo_clinic_server(
        sqlite_template, tmp_path_factory.mktemp("browser-worklist"), N_PATIENTS, "Worklist test clinic"
    ) as (url, db):
        yield Clinic(url, db)


@pytest.fixture
def browser_context_args(browser_context_args: dict[str, Any], clinic: Clinic) -> dict[str, Any]:
    """pytest-playwright's `page` opens this clinic (paths are relative to it)."""
    return {**browser_context_args, "base_url": clinic.url}


def rows(page: Any) -> Any:
    return page.locator("#worklist tbody tr[data-patient]")


def identifiers(page: Any) -> list[str]:
    return [str(r.get_attribute("data-patient")) for r in rows(page).all()]


def test_worklist_words_counts_sorting_and_paging(page: Any, clinic: Clinic) -> None:
    page.set_default_timeout(15_000)
    login(page, *NURSE)
    assert page.url.endswith("/worklist")
    total = int(re.search(r"(\d+) patient", page.locator("h1 small").inner_text()).group(1))  # type: ignore[union-attr]
    assert total > WORKLIST_PAGE
    assert rows(page).count() == WORKLIST_PAGE
    expect(page.locator("nav.pager")).to_contain_text(f"Patients 1-{WORKLIST_PAGE} of {total}")
    # The most urgent patients first, each saying what is wrong in words, not only category tags
    first = rows(page).first
    assert first.locator(".badge.critical").count() == 1
    assert len(first.locator("p.urgent").inner_text()) > 20
    assert first.locator("p.urgent").get_attribute("data-code")
    overdue = page.locator("#worklist .badge.overdue").first
    assert re.fullmatch(r"overdue by \d+ days?", overdue.inner_text().strip().lower())
    screenshot(page, "w1-worklist-words")

    # A count narrows the list to the patients it counts.
    critical = page.locator("#counts a.count.critical")
    n_critical = int(critical.locator("strong").inner_text())
    with page.expect_navigation():
        critical.click()
    assert "needs=critical" in page.url
    assert rows(page).count() == n_critical == rows(page).locator(".badge.critical").count()
    expect(page.locator("#counts a.count.critical")).to_have_attribute("aria-current", "true")
    screenshot(page, "w2-critical-count")

    # Sorted by name, page 2 continues page 1 and keeps the sort.
    page.goto("/worklist")
    page.select_option("#sort", "name")
    with page.expect_navigation():
        page.click("form.filters button[type=submit]")
    assert "sort=name" in page.url
    page1 = [r.locator("td a").first.inner_text() for r in rows(page).all()]
    assert page1 == sorted(page1)
    with page.expect_navigation():
        page.click("nav.pager a[rel=next]")
    assert "sort=name" in page.url and "page=2" in page.url
    expect(page.locator("nav.pager")).to_contain_text(f"Patients {WORKLIST_PAGE + 1}-")
    page2 = [r.locator("td a").first.inner_text() for r in rows(page).all()]
    assert page2 and page2 == sorted(page2) and page1[-1] <= page2[0]
    screenshot(page, "w3-sorted-by-name-page-2")


def test_claim_my_patients_assign_and_unassign(page: Any, clinic: Clinic) -> None:
    page.set_default_timeout(15_000)
    login(page, *NURSE)
    page.goto("/worklist?sort=name&page=2")
    row = rows(page).first
    ident = str(row.get_attribute("data-patient"))
    assert row.locator(".owner-name").inner_text() == "nobody"

    # Assign to me: back on the same page, which now says "you".
    with page.expect_navigation():
        row.locator("button.claim").click()
    assert "sort=name" in page.url and "page=2" in page.url
    row = page.locator(f"#worklist tr[data-patient='{ident}']")
    expect(row.locator(".owner-name")).to_have_text("you")
    expect(row.locator("button.unassign")).to_be_visible()
    assert clinic.owner_of(ident) == "nurse"
    screenshot(page, "w4-claimed")

    with page.expect_navigation():
        page.click("#my-patients")
    assert "mine=1" in page.url and identifiers(page) == [ident]
    screenshot(page, "w5-my-patients")

    # Assigned to a colleague: it leaves "my patients".
    row = page.locator(f"#worklist tr[data-patient='{ident}']")
    row.locator("details.assign summary").click()
    row.locator("details.assign select[name=username]").select_option(label="Clinic Admin")
    with page.expect_navigation():
        row.locator("details.assign button[type=submit]").click()
    assert "mine=1" in page.url and identifiers(page) == []
    expect(page.locator("#worklist tbody")).to_contain_text("Nothing needs action.")
    assert clinic.owner_of(ident) == "admin"
    page.goto(f"/worklist?q={ident}")
    expect(page.locator(f"#worklist tr[data-patient='{ident}'] .owner-name")).to_have_text("Clinic Admin")
    screenshot(page, "w6-assigned-to-colleague")

    # Unassigned: nobody owns the patient.
    row = page.locator(f"#worklist tr[data-patient='{ident}']")
    row.locator("details.assign summary").click()
    row.locator("details.assign select[name=username]").select_option(value="")
    with page.expect_navigation():
        row.locator("details.assign button[type=submit]").click()
    expect(page.locator(f"#worklist tr[data-patient='{ident}'] .owner-name")).to_have_text("nobody")
    assert clinic.owner_of(ident) is None
    screenshot(page, "w7-unassigned")
