"""What a patient sees, in a real headless Chromium against a real uvicorn server (SQLite).

A patient whose blood test fell due on an England and Wales bank holiday sees it on the working
day before, with its weekday, and why it moved; one whose repeat test falls on a Saturday sees the
Friday. The symptom form chooses nothing in advance; the "call 999 or go to A&E now" box is on the
screen before anything is sent; reporting a fever (a red flag) ends on the confirmation, which says
when the team answers and repeats the emergency advice. Screenshots go to
test-artifacts/screenshots/ (git-ignored).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import holidays
import pytest
from browser_fixtures import browser_type_launch_args, live_server, screenshot  # noqa: F401
from playwright.sync_api import expect
from sqlalchemy import select

from azaguard import auth, service
from azaguard.app import Settings, create_app
from azaguard.fhirbuild import BundleBuilder
from azaguard.ingest import parse_text
from azaguard.knowledge import Knowledge, load_knowledge
from azaguard.plain import long_date
from azaguard.store import models as m
from azaguard.store.db import Database

KB = load_knowledge(holidays="GB-ENG")  # the default calendar, named explicitly
TODAY = date.today()
PASSWORD = "patient-view-password-1"
RESPONSE = "Your team answers reports within two working days (the words of the test clinic)."
BANK = holidays.country_holidays("GB", subdiv="ENG", years=range(TODAY.year - 1, TODAY.year + 2))


def closed(day: date) -> bool:
    return day.weekday() >= 5 or day in BANK


def working_day_before(day: date) -> date:
    """The last working day before `day`, straight from the holidays package (not the engine)."""
    before = day - timedelta(days=1)
    while closed(before):
        before -= timedelta(days=1)
    return before


def last_bank_holiday_on_a_weekday() -> date:
    """The latest England and Wales bank holiday on a weekday before today (never more than a few months)."""
    return max(h for h in BANK if h < TODAY and h.weekday() < 5)


def next_saturday() -> date:
    return TODAY + timedelta(days=(5 - TODAY.weekday()) % 7 or 7)


def patient(ident: str, name: str) -> BundleBuilder:
    """On azathioprine for a year and a half (12-weekly tests), with the project builder's results."""
    b = BundleBuilder(ident, "1961-09-14", "female", name)
    b.condition("91637004", "Myasthenia gravis", (TODAY - timedelta(days=900)).isoformat())
    b.genotype("TPMT", "*1/*1", (TODAY - timedelta(days=700)).isoformat())
    b.genotype("NUDT15", "*1/*1", (TODAY - timedelta(days=700)).isoformat())
    b.azathioprine((TODAY - timedelta(days=600)).isoformat(), 100)
    return b


@dataclass
class Clinic:
    url: str
    db: Database
    kb: Knowledge

    def add(self, build: BundleBuilder, username: str) -> int:
        """Import the patient and give them an account."""
        with self.db.session() as s:
            parsed = parse_text(json.dumps(build.bundle()), self.kb, "fhir")
            service.import_parsed(s, self.kb, None, parsed, "browser-test", "cli")
            pid = s.scalar(select(m.Patient.id).where(m.Patient.identifier == build.patient_id))
            auth.create_user(s, username, PASSWORD, "patient", build.patient_id)
        assert pid is not None
        return int(pid)


@pytest.fixture(scope="module")
def clinic(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clinic]:
    path = tmp_path_factory.mktemp("browser-patient-view") / "clinic.db"
    shutil.copy(sqlite_template, path)
    db = Database(f"sqlite:///{path}", create=False)
    app = create_app(db, KB, Settings(clinic_name="Patient view test clinic", symptom_response=RESPONSE))
    with live_server(app) as url:
        yield Clinic(url, db, KB)
    db.engine.dispose()


@pytest.fixture
def open_page(new_context: Callable[..., Any], clinic: Clinic) -> Callable[[str], Any]:
    """A fresh browser context per patient, logged in through the login page."""

    def make(username: str) -> Any:
        ctx = new_context(base_url=clinic.url)
        ctx.set_default_timeout(15_000)
        page = ctx.new_page()
        page.goto("/login")
        page.fill("#username", username)
        page.fill("#password", PASSWORD)
        with page.expect_navigation():
            page.click("#login")
        assert page.url.endswith("/me")
        return page

    return make


def test_a_test_due_on_a_bank_holiday_is_shown_on_the_working_day_before(
    open_page: Callable[[str], Any], clinic: Clinic
) -> None:
    holiday = last_bank_holiday_on_a_weekday()
    b = patient("PV-BANK", "Beatrice Bankholiday")
    b.bloods(holiday - timedelta(weeks=12))  # 12 weeks later the test falls due on the bank holiday
    clinic.add(b, "pv-bank")
    expected = working_day_before(holiday)
    page = open_page("pv-bank")

    when = page.locator("#next-date time")
    expect(when).to_have_text(long_date(expected))  # "Friday 22 May": the weekday, in words
    assert when.get_attribute("datetime") == expected.isoformat()
    moved = page.locator("#next-moved")
    expect(moved).to_be_visible()
    expect(moved).to_contain_text(long_date(holiday))
    expect(moved).to_contain_text(f"{BANK.get(holiday)}, a public holiday")
    expect(page.locator("#next-overdue")).to_be_visible()  # the bank holiday has passed: overdue since the day before
    screenshot(page, "pv1-bank-holiday-moved")


def test_a_repeat_test_due_on_a_saturday_is_shown_on_the_friday(
    open_page: Callable[[str], Any], clinic: Clinic
) -> None:
    saturday = next_saturday()
    (rule,) = [t for t in clinic.kb.thresholds if t.analyte == "neutrophils" and t.comparator == "<"]
    b = patient("PV-SAT", "Sam Saturday")
    b.bloods(saturday - timedelta(days=14), neut=float(rule.value) / 2)  # the repeat FBC falls on the Saturday
    clinic.add(b, "pv-sat")
    expected = working_day_before(saturday)
    page = open_page("pv-sat")
    expect(page.locator("#next-date time")).to_have_text(long_date(expected))
    expect(page.locator("#next-moved")).to_contain_text(long_date(saturday))
    expect(page.locator("#next-repeat")).to_be_visible()
    screenshot(page, "pv2-saturday-moved")


def test_reporting_a_red_flag_symptom_warns_first_and_confirms(open_page: Callable[[str], Any], clinic: Clinic) -> None:
    b = patient("PV-FEVER", "Frank Fever")
    b.bloods(TODAY - timedelta(days=20))
    pid = clinic.add(b, "pv-fever")
    page = open_page("pv-fever")

    # Nothing is chosen in advance: no symptom, no "how bad", no date.
    symptom = page.locator("select#symptom")
    assert symptom.input_value() == ""
    expect(symptom.locator("option:checked")).to_have_text("Choose one")
    assert page.locator("input[name=how_bad]:checked").count() == 0
    assert page.locator("input#since").input_value() == ""
    names = symptom.locator("option").all_inner_texts()
    assert "Fever or high temperature" in names and "Something else" in names and "sore-throat" not in names

    # The emergency advice is on the screen before anything is sent, above the send button.
    emergency = page.locator("#form-report #emergency")
    expect(emergency).to_be_visible()
    assert clinic.kb.symptoms.emergency is not None
    expect(emergency).to_contain_text(clinic.kb.symptoms.emergency.lead)
    box, send = emergency.bounding_box(), page.locator("#send-report").bounding_box()
    assert box is not None and send is not None and box["y"] < send["y"]
    page.locator("#report").scroll_into_view_if_needed()
    screenshot(page, "pv3-symptom-form-empty")

    symptom.select_option("fever")
    page.check("#how-bad-severe")
    page.fill("#since", (TODAY - timedelta(days=1)).isoformat())
    page.fill("#details", "hot and shivery since last night")
    screenshot(page, "pv4-fever-before-sending")
    with page.expect_navigation():
        page.click("#send-report")
    assert page.url.endswith("/me?reported=1")
    sent = page.locator("#report-sent")
    expect(sent).to_be_visible()
    expect(page.locator("p#reported")).to_contain_text("Your report has reached your clinic team")
    expect(page.locator("#response-time")).to_have_text(RESPONSE)
    expect(sent.locator("#reported-emergency")).to_contain_text(clinic.kb.symptoms.emergency.lead)
    expect(sent.locator("[data-advice]").first).to_be_visible()  # the engine's advice for a fever
    expect(page.locator("#my-reports")).to_contain_text("Fever or high temperature (severe, since")
    screenshot(page, "pv5-fever-confirmed")
    with clinic.db.session() as s:
        keys = list(s.scalars(select(m.Symptom.key).where(m.Symptom.patient_id == pid)))
    assert keys == ["fever"]


def test_the_guides_corrections_name_the_article(open_page: Callable[[str], Any], clinic: Clinic) -> None:
    b = patient("PV-GUIDE", "Grace Guide")
    b.bloods(TODAY - timedelta(days=20))
    clinic.add(b, "pv-guide")
    page = open_page("pv-guide")
    with page.expect_navigation():
        page.click("text=Azathioprine: a guide for patients")
    article = clinic.kb.guide_article
    assert article is not None
    box = page.locator("aside#correction-pregnancy")
    expect(box).to_be_visible()
    expect(box.locator("cite")).to_have_text(article.title)
    expect(box).to_contain_text(article.author)
    assert page.locator("footer").count() == 0  # no clinician footer on what patients read
    box.scroll_into_view_if_needed()
    screenshot(page, "pv6-guide-correction")
