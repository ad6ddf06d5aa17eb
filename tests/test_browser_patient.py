"""The clinician's patient page in a real headless Chromium against a real uvicorn server (SQLite).

A nurse enters a whole full blood count with the keyboard alone (Tab from test to test, Enter to
save): a mistyped value comes back on its field with everything typed kept and nothing saved; once
corrected, one save stores the panel, the browser lands on a GET of the patient page (no POST URL
left) with the confirmation on screen, and the results grid shows the new column on the left with
the low neutrophil count flagged. Screenshots go to test-artifacts/screenshots/ (git-ignored).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from browser_fixtures import (  # noqa: F401
    browser_type_launch_args,
    demo_clinic_server,
    live_server,
    login,
    screenshot,
    screenshot_path,
)
from playwright.sync_api import expect
from sqlalchemy import func, select

from azaguard import service
from azaguard.knowledge import Knowledge
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.synth import scenario_list

N_PATIENTS = 12
NURSE = ("nurse", "demo-nurse")


@dataclass
class Clinic:
    url: str
    db: Database

    def observations(self, pid: int) -> int:
        with self.db.session() as s:
            q = select(func.count()).select_from(m.Observation).where(m.Observation.patient_id == pid)
            return int(s.scalar(q) or 0)


@pytest.fixture(scope="module")
def clinic(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clinic]:
    with demo_clinic_server(
        sqlite_template, tmp_path_factory.mktemp("browser-patient"), N_PATIENTS, "Patient page test clinic"
    ) as (url, db):
        yield Clinic(url, db)


@pytest.fixture
def browser_context_args(browser_context_args: dict[str, Any], clinic: Clinic) -> dict[str, Any]:
    """pytest-playwright's `page` opens on the live server."""
    return {**browser_context_args, "base_url": clinic.url}


def day_text(day: date) -> str:
    text = f"{day.day} {day.strftime('%B')}"
    return text if day.year == date.today().year else f"{text} {day.year}"


def test_full_blood_count_entered_with_the_keyboard(page: Any, clinic: Clinic, kb: Knowledge) -> None:
    pid = scenario_list(N_PATIENTS).index("stable") + 1  # ids follow the scenario list
    today = date.today()
    page.set_default_timeout(15_000)
    page.route(re.compile(r"/charts\.svg$"), lambda route: route.abort())  # the chart is not under test
    login(page, *NURSE)
    page.goto(f"/patients/{pid}")
    expect(page.locator("#summary-strip")).to_be_visible()
    expect(page.locator("#results table.results-grid")).to_be_visible()
    before = clinic.observations(pid)
    screenshot(page, "p1-patient-page")

    # The knowledge's own limits give a low neutrophil count and values inside the limits for the rest.
    rules = {t.analyte: t for t in kb.thresholds}
    values = {}
    for analyte in service.panel_analytes(kb, "FBC"):
        rule = rules[analyte]
        values[analyte] = f"{rule.value * (1.5 if rule.comparator == '<' else 0.85):g}"
    values["neutrophils"] = f"{rules['neutrophils'].value / 2:g}"
    typed = dict(values, platelets=values["platelets"][:-1] + "O")  # a letter O where a digit belongs

    form = page.locator("form#form-panel-FBC")
    first = form.locator("input[name='value-wbc']")
    first.focus()
    for i, analyte in enumerate(typed):
        expect(form.locator(f"input[name='value-{analyte}']")).to_be_focused()
        page.keyboard.type(typed[analyte])
        if i < len(typed) - 1:
            page.keyboard.press("Tab")  # the next test, not a unit field
    with page.expect_navigation() as nav:
        page.keyboard.press("Enter")
    assert nav.value.status == 400
    assert clinic.observations(pid) == before  # one wrong field: nothing saved
    form = page.locator("form#form-panel-FBC")
    bad = form.locator("input[name='value-platelets']")
    assert bad.get_attribute("aria-invalid") == "true"
    expect(bad).to_have_value(typed["platelets"])
    error = form.locator(f"#{bad.get_attribute('aria-describedby')}")
    expect(error).to_be_visible()
    assert "not a number" in error.inner_text()
    for analyte, value in typed.items():
        expect(form.locator(f"input[name='value-{analyte}']")).to_have_value(value)
    expect(bad).to_be_in_viewport()
    screenshot(page, "p2-panel-error")
    form.screenshot(path=str(screenshot_path("p2b-panel-error-form")))

    bad.focus()
    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.type(values["platelets"])
    with page.expect_navigation() as nav:
        page.keyboard.press("Enter")
    assert nav.value.status == 200
    assert page.url == f"{clinic.url}/patients/{pid}#findings"  # a GET of the page: no POST URL left
    n = sum(1 for v in values.values() if v)
    assert clinic.observations(pid) == before + n
    flash = page.locator("#flash")
    expect(flash).to_have_text(f"Saved full blood count for {day_text(today)}: {n} results.")
    expect(flash).to_be_in_viewport()
    finding = page.locator("#findings article.finding[data-code='lab-neutrophils-low']")
    expect(finding).to_have_count(1)
    screenshot(page, "p3-panel-saved")

    grid = page.locator("#results table.results-grid")
    assert grid.locator("thead th[data-date]").first.get_attribute("data-date") == today.isoformat()
    neutrophils = grid.locator(f"tr[data-analyte='neutrophils'] td[data-date='{today.isoformat()}'] .result")
    expect(neutrophils).to_have_attribute("data-flag", "critical")
    expect(neutrophils).to_contain_text(values["neutrophils"])
    platelets = grid.locator(f"tr[data-analyte='platelets'] td[data-date='{today.isoformat()}'] .result")
    expect(platelets).to_have_attribute("data-flag", "")
    expect(grid.locator("tr[data-analyte='wbc'] th")).to_contain_text("x10^9/L")
    strip = page.locator("#summary-strip [data-group='FBC'] [data-analyte='neutrophils']")
    expect(strip).to_have_attribute("data-date", today.isoformat())
    expect(strip).to_have_attribute("data-flag", "critical")
    page.locator("#results").scroll_into_view_if_needed()
    page.locator("#results").screenshot(path=str(screenshot_path("p4-results-grid")))

    page.reload()
    expect(page.locator("#flash")).to_have_count(0)  # the confirmation is shown once
