"""The web app in a real headless Chromium against a real uvicorn server on a demo clinic (SQLite).

Clinician: worklist -> patient -> record a critical result -> the finding appears -> review it ->
it leaves the open findings and the critical worklist. A bad form is marked and saves nothing.
Patient: report a fever -> the clinic sees it; another patient's page is refused; the calendar
file is valid. Monitoring loop: a "withheld" review puts azathioprine on hold, the follow-up FBC
stays awaited on the worklist until dropped with a reason, the patient sees the pause.
Screenshots of every step go to test-artifacts/screenshots/ (git-ignored).
PostgreSQL is covered by the API tests; this module runs on SQLite only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
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

from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.synth import scenario_list

N_PATIENTS = 40
NURSE = ("nurse", "demo-nurse")
PATIENT1 = ("patient1", "demo-patient1")  # the first "stable" patient: NMC000001
PATIENT2 = ("patient2", "demo-patient2")  # the first "titrating" patient: NMC000002


@dataclass
class Clinic:
    url: str
    db: Database

    def pids(self, scenario: str) -> list[int]:
        """Ids of the synthetic patients with this scenario (ids follow scenario_list order)."""
        return [i for i, name in enumerate(scenario_list(N_PATIENTS), 1) if name == scenario]

    def pid(self, scenario: str) -> int:
        return self.pids(scenario)[0]

    def identifier(self, pid: int) -> str:
        return f"NMC{pid:06d}"

    def scalar(self, query: Any) -> Any:
        with self.db.session() as s:
            return s.scalar(query)


@pytest.fixture(scope="module")
def clinic(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clinic]:
    with demo_clinic_server(sqlite_template, tmp_path_factory.mktemp("browser"), N_PATIENTS, "Browser test clinic") as (
        url,
        db,
    ):
        yield Clinic(url, db)


@pytest.fixture
def open_page(new_context: Callable[..., Any], clinic: Clinic) -> Callable[..., Any]:
    """A fresh browser context (own cookies) per call, so two users can be logged in at once.

    Tests that are not about the chart refuse its request, so each page load is only the page
    (test (e) loads the chart for real).
    """

    def make(charts: bool = False) -> Any:
        ctx = new_context(base_url=clinic.url)
        ctx.set_default_timeout(15_000)
        if not charts:
            ctx.route(re.compile(r"/charts\.svg$"), lambda route: route.abort())
        return ctx.new_page()

    return make


def finding(page: Any, code: str) -> Any:
    return page.locator(f"#findings article.finding[data-code='{code}']")


def observation_count(clinic: Clinic, pid: int) -> int:
    q = select(func.count()).select_from(m.Observation).where(m.Observation.patient_id == pid)
    return int(clinic.scalar(q) or 0)


# ---------------------------------------------------------------- (a) critical result and review
def test_clinician_records_critical_result_and_reviews_it(open_page: Callable[..., Any], clinic: Clinic) -> None:
    pid = clinic.pid("overdue")  # on the worklist for an overdue test, no critical finding yet
    ident = clinic.identifier(pid)
    page = open_page()
    login(page, *NURSE)
    assert page.url.endswith("/worklist")
    row = page.locator(f"#worklist tr[data-patient='{ident}']")
    assert row.count() == 1
    assert row.locator(".badge.critical").count() == 0
    screenshot(page, "a1-worklist")

    with page.expect_navigation():
        row.locator("a").first.click()
    assert page.url.endswith(f"/patients/{pid}")
    assert ident in page.locator("#summary h1").inner_text()
    assert finding(page, "lab-neutrophils-low").count() == 0
    screenshot(page, "a2-patient-before")

    form = page.locator("form#form-lab")
    form.locator("select[name=analyte]").select_option("neutrophils")
    form.locator("input[name=value]").fill("0.9")
    form.locator("input[name=unit]").fill("10*9/L")
    with page.expect_navigation():
        page.click("#submit-lab")
    assert re.search(rf"/patients/{pid}#findings$", page.url)
    card = finding(page, "lab-neutrophils-low")
    assert card.count() == 1
    assert "critical" in (card.get_attribute("class") or "")
    assert card.locator(".badge.critical").is_visible()
    assert "0.9" in card.inner_text()
    screenshot(page, "a3-critical-finding")

    page.goto("/worklist?severity=critical")
    row = page.locator(f"#worklist tr[data-patient='{ident}']")
    assert row.count() == 1
    assert row.locator(".badge.critical").count() == 1
    assert "lab" in row.locator(".tag").all_inner_texts()
    screenshot(page, "a4-worklist-critical")

    page.goto(f"/patients/{pid}")
    stale = page.context.new_page()  # a second tab (or a colleague) with the same finding open
    stale.goto(f"/patients/{pid}")
    card = finding(page, "lab-neutrophils-low")
    card.locator("select[name=outcome]").select_option("withheld")
    card.locator("input[name=note]").fill("Azathioprine held; repeat FBC in 1 week")
    with page.expect_navigation():
        card.locator("button.review-button").click()
    assert finding(page, "lab-neutrophils-low").count() == 0
    reviewed = page.locator("#findings details", has_text="reviewed finding")
    assert reviewed.count() == 1
    history = page.locator("#history").inner_text()
    assert "Azathioprine withheld: Azathioprine held; repeat FBC in 1 week" in history
    screenshot(page, "a5-after-review")

    card = finding(stale, "lab-neutrophils-low")  # reviewing it again explains why nothing happened
    card.locator("select[name=outcome]").select_option("patient-contacted")
    with stale.expect_navigation() as nav:
        card.locator("button.review-button").click()
    assert nav.value.status == 400
    assert "not open" in stale.locator("p#error-message").inner_text()
    screenshot(stale, "a5b-second-review-refused")
    stale.close()

    page.goto("/worklist?severity=critical")
    assert page.locator(f"#worklist tr[data-patient='{ident}']").count() == 0
    page.goto("/worklist")
    row = page.locator(f"#worklist tr[data-patient='{ident}']")  # still listed for the overdue test only
    assert row.count() == 1
    assert row.locator(".badge.critical").count() == 0
    assert "lab" not in row.locator(".tag").all_inner_texts()
    screenshot(page, "a6-worklist-after-review")


# ---------------------------------------------------------------- (b) validation
def test_bad_lab_value_is_marked_and_nothing_is_saved(open_page: Callable[..., Any], clinic: Clinic) -> None:
    pid = clinic.pids("stable")[1]  # not patient1, whom test (c) changes
    before = observation_count(clinic, pid)
    page = open_page()
    login(page, *NURSE)
    page.goto(f"/patients/{pid}")
    form = page.locator("form#form-lab")
    form.locator("select[name=analyte]").select_option("platelets")
    form.locator("input[name=value]").fill("abc")
    with page.expect_navigation() as nav:
        page.click("#submit-lab")
    assert nav.value.status == 400
    form = page.locator("form#form-lab")
    value = form.locator("input[name=value]")
    assert value.get_attribute("aria-invalid") == "true"
    assert value.input_value() == "abc"  # what was typed comes back for correction
    error = form.locator(".field-error")
    assert error.count() == 1
    assert error.is_visible()
    assert error.get_attribute("id") == value.get_attribute("aria-describedby")
    assert error.inner_text().strip()
    assert form.locator("select[name=analyte]").input_value() == "platelets"
    assert form.locator("input[name=unit]").get_attribute("aria-invalid") is None
    assert page.url.endswith("#form-lab")  # the page opens at the form, so the marked field is on screen
    expect(value).to_be_in_viewport()
    screenshot(page, "b1-invalid-value")
    form.screenshot(path=str(screenshot_path("b2-invalid-value-form")))
    assert observation_count(clinic, pid) == before

    csrf = form.locator("input[name=csrf]").input_value()  # a hand-made request with a value the form cannot send
    resp = page.request.post(f"/patients/{pid}/team", form={"csrf": csrf, "team": "nobody"})
    assert resp.status == 400
    assert "team" in resp.text()

    page.goto(f"/patients/{pid}")  # a fresh page has no error marks
    assert page.locator("form#form-lab .field-error").count() == 0
    assert observation_count(clinic, pid) == before


# ---------------------------------------------------------------- (c) patient reports a fever
def test_patient_fever_report_reaches_the_worklist(open_page: Callable[..., Any], clinic: Clinic) -> None:
    pid = clinic.pid("stable")
    ident = clinic.identifier(pid)
    patient = open_page()
    login(patient, *PATIENT1)
    assert patient.url.endswith("/me")
    for section in ("#call-today", "#next-test", "#report", "#results", "#my-medicines"):
        assert patient.locator(section).is_visible(), section
    assert patient.locator("#reported").count() == 0
    screenshot(patient, "c1-patient-home")

    patient.select_option("select#symptom", "fever")
    patient.check("#how-bad-moderate")
    patient.fill("#since", date.today().isoformat())
    with patient.expect_navigation():
        patient.click("#send-report")
    assert patient.url.endswith("/me?reported=1")
    assert patient.locator("p#reported").is_visible()
    assert "reached your clinic team" in patient.locator("p#reported").inner_text()
    assert "fever" in patient.locator("#report").inner_text()
    screenshot(patient, "c2-fever-reported")

    nurse = open_page()
    login(nurse, *NURSE)
    row = nurse.locator(f"#worklist tr[data-patient='{ident}']")
    assert row.count() == 1
    assert "symptom" in row.locator(".tag").all_inner_texts()
    assert row.locator(".badge.critical").count() == 1
    screenshot(nurse, "c3-worklist-with-fever")
    with nurse.expect_navigation():
        row.locator("a").first.click()
    card = finding(nurse, "symptom-fever")
    assert card.count() == 1
    assert "fever" in card.inner_text()
    assert "(patient)" in nurse.locator("#history").inner_text()
    screenshot(nurse, "c4-patient-fever-finding")


# ---------------------------------------------------------------- (d) patient boundaries and calendar
def test_patient_cannot_open_another_patient_and_gets_calendar(open_page: Callable[..., Any], clinic: Clinic) -> None:
    own, other = clinic.pid("titrating"), clinic.pid("stable")
    page = open_page()
    login(page, *PATIENT2)
    assert page.url.endswith("/me")

    resp = page.goto(f"/patients/{other}")  # answered as a record that does not exist
    assert resp is not None and resp.status == 404
    assert page.locator("h1").inner_text() == "Not found"
    assert page.locator("p#error-message").is_visible()
    assert clinic.identifier(other) not in page.content()
    screenshot(page, "d1-forbidden")
    denied = clinic.scalar(
        select(func.count())
        .select_from(m.AuditEvent)
        .where(m.AuditEvent.action == "denied", m.AuditEvent.patient_id == other)
    )
    assert denied >= 1

    assert page.request.get(f"/patients/{other}/charts.svg").status == 404  # same cookies, no browser route
    assert page.goto("/worklist").status == 403

    resp = page.goto(f"/patients/{own}")  # one's own record is the patient view
    assert resp is not None and resp.ok
    assert page.url.endswith("/me")
    link = page.locator("#next-test a#ics")
    assert link.is_visible()
    screenshot(page, "d2-next-test")
    with page.expect_download() as info:
        link.click()
    download = info.value
    assert download.suggested_filename.endswith(".ics")
    text = Path(download.path()).read_bytes().decode("utf-8")
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")  # RFC 5545: CRLF line endings
    lines = text.split("\r\n")
    assert lines[0] == "BEGIN:VCALENDAR"
    assert "END:VCALENDAR" in lines
    assert "BEGIN:VEVENT" in lines and "END:VEVENT" in lines
    start = next(x for x in lines if x.startswith("DTSTART"))
    assert re.fullmatch(r"DTSTART;VALUE=DATE:\d{8}", start), start
    due = start.rsplit(":", 1)[1]
    shown = page.locator("#next-test #next-date time").get_attribute("datetime") or ""  # shown with its weekday
    assert shown.replace("-", "") == due


# ---------------------------------------------------------------- (e) charts
def test_charts_svg_loads_on_patient_page(open_page: Callable[..., Any], clinic: Clinic) -> None:
    pid = clinic.pid("neutrophil-decline")
    page = open_page(charts=True)
    login(page, *NURSE)
    with page.expect_response(re.compile(rf"/patients/{pid}/charts\.svg$")) as info:
        page.goto(f"/patients/{pid}")
    resp = info.value
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("image/svg+xml")
    img = page.locator("#charts img")
    width = img.evaluate(
        """img => img.complete ? img.naturalWidth : new Promise(done => {
            img.addEventListener('load', () => done(img.naturalWidth));
            img.addEventListener('error', () => done(0));
        })"""
    )
    assert width > 0
    assert img.get_attribute("alt")
    img.scroll_into_view_if_needed()
    screenshot(page, "e1-charts")


# ---------------------------------------------------------------- (f) the monitoring loop: hold, awaiting, drop
def test_withheld_review_holds_azathioprine_and_follow_up_stays_until_dropped(
    open_page: Callable[..., Any], clinic: Clinic
) -> None:
    pid = clinic.pid("titrating")  # patient2, on azathioprine; test (d) has already used their calendar
    ident = clinic.identifier(pid)
    today = date.today().isoformat()
    nurse = open_page()
    login(nurse, *NURSE)
    nurse.goto(f"/patients/{pid}")
    assert nurse.locator("#treatment").get_attribute("data-state") == "active"
    form = nurse.locator("form#form-lab")
    form.locator("select[name=analyte]").select_option("neutrophils")
    form.locator("input[name=value]").fill("1.2")
    form.locator("input[name=unit]").fill("10*9/L")
    with nurse.expect_navigation():
        nurse.click("#submit-lab")
    card = finding(nurse, "lab-neutrophils-low")
    assert card.count() == 1
    follow_up = nurse.locator(f"#follow-ups tr.follow-up[data-key^='FBC|{today}']")
    assert follow_up.count() == 1
    assert "lab-neutrophils-low" in follow_up.inner_text()
    screenshot(nurse, "f1-follow-up-open")

    card.locator("select[name=outcome]").select_option("withheld")
    card.locator("input[name=note]").fill("held, repeat FBC booked")
    with nurse.expect_navigation():
        card.locator("button.review-button").click()
    treatment = nurse.locator("#treatment")
    assert treatment.get_attribute("data-state") == "on-hold"
    assert f"ON HOLD since {today}" in treatment.inner_text()
    assert nurse.locator("#restart-criteria li").count() >= 1
    assert nurse.locator("#medicines tr.on-hold").count() == 1
    assert nurse.locator(f"#follow-ups tr.follow-up[data-key^='FBC|{today}']").count() == 1  # a review is no answer
    screenshot(nurse, "f2-on-hold")

    nurse.goto(f"/worklist?q={ident}")
    row = nurse.locator(f"#worklist tr[data-patient='{ident}']")
    assert row.count() == 1
    assert row.locator(".tag.hold").inner_text() == "on hold"
    assert row.locator(".tag.awaiting[data-awaiting='FBC']").inner_text() == "awaiting FBC result"
    screenshot(nurse, "f3-worklist-on-hold-awaiting")

    patient = open_page()
    login(patient, *PATIENT2)
    assert patient.locator("#paused").is_visible()
    assert "Your azathioprine is paused" in patient.locator("#paused").inner_text()
    screenshot(patient, "f4-patient-paused")

    nurse.goto(f"/patients/{pid}")
    row = nurse.locator(f"#follow-ups tr.follow-up[data-key^='FBC|{today}']")
    with nurse.expect_navigation():
        row.locator("input[name=reason]").fill("FBC taken at the GP surgery; result to follow by letter")
        row.locator("button.dismiss-button").click()
    assert nurse.url.endswith("#follow-ups")
    assert nurse.locator(f"#follow-ups tr.follow-up[data-key^='FBC|{today}']").count() == 0
    dropped = nurse.locator("#follow-ups details")
    dropped.locator("summary").click()
    assert "taken at the GP surgery" in dropped.inner_text()
    screenshot(nurse, "f5-follow-up-dropped")
    nurse.goto(f"/worklist?q={ident}")
    assert nurse.locator(f"#worklist tr[data-patient='{ident}'] .tag.awaiting[data-awaiting='FBC']").count() == 0

    nurse.goto(f"/patients/{pid}")  # a restart is a dose change after the hold began (not the same day)
    form = nurse.locator("form#form-dose")
    assert "Restart" in form.locator("h3").inner_text()
    form.locator("input[name=mg_per_day]").fill("50")
    with nurse.expect_navigation() as nav:
        form.locator("button[type=submit]").click()
    assert nav.value.status == 400
    assert "the hold" in nurse.locator("form#form-dose .field-error").inner_text()
    assert nurse.locator("#treatment").get_attribute("data-state") == "on-hold"
    screenshot(nurse, "f6-same-day-restart-refused")
