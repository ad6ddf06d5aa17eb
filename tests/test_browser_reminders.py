"""Reminders in a real headless Chromium against a real uvicorn server, and a real SMTP server.

A patient chooses e-mail reminders on their own page (/me) - first with an address the server
refuses, which comes back on its field with the choice kept - then the reminder run sends the
blood-test reminder, and it arrives at aiosmtpd on loopback with its .ics; the nurse then sees it
on the patient page. Screenshots go to test-artifacts/screenshots/ (git-ignored).
"""

from __future__ import annotations

import email
import email.policy
import re
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from browser_fixtures import browser_type_launch_args, live_server, screenshot, screenshot_path  # noqa: F401
from browser_fixtures import login as sign_in
from icalendar import Calendar
from sqlalchemy import select

from azaguard import service
from azaguard.app import Settings, create_app
from azaguard.notify import ReminderConfig
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.synth import build_demo

CLINIC = "Browser reminder clinic"
ADDRESS = "patient.one@example.org"


@dataclass
class Collector:
    envelopes: list[Any] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


@dataclass
class Clinic:
    url: str
    db: Database
    smtp: Collector
    config: ReminderConfig


@pytest.fixture(scope="module")
def clinic(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clinic]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    handler = Collector()
    smtp = Controller(handler, hostname="127.0.0.1", port=port)
    smtp.start()
    path = tmp_path_factory.mktemp("browser-reminders") / "clinic.db"
    shutil.copy(sqlite_template, path)
    db = Database(f"sqlite:///{path}", create=False)
    build_demo(db, 14)  # one patient of each scenario; patient1 is the first on a stable course
    config = ReminderConfig(
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_tls="none",
        smtp_from="clinic@example.org",
        days_before=3,
        clinic_name=CLINIC,
        clinic_phone="0300 555 0100",
        where="Blood test clinic, Outpatients",
    )
    app = create_app(db, settings=Settings(clinic_name=CLINIC, reminders=config))
    try:
        with live_server(app) as url:
            yield Clinic(url, db, handler, config)
    finally:
        smtp.stop()
        db.engine.dispose()


def login(page: Any, base: str, username: str, password: str) -> None:
    sign_in(page, username, password, base)


def test_patient_chooses_email_and_the_reminder_arrives_with_its_ics(page: Any, clinic: Clinic) -> None:
    page.set_default_timeout(15_000)
    page.route(re.compile(r"/charts\.svg$"), lambda route: route.abort())  # not about the chart
    login(page, clinic.url, "patient1", "demo-patient1")
    assert page.url.endswith("/me")
    card = page.locator("section#reminders")
    assert card.is_visible() and page.locator("#reminders-not-chosen").is_visible()
    assert page.locator("#reminder-email").is_visible()

    # an address the browser accepts but the server does not: the error sits on the field, the choice is kept
    page.check("#reminder-channel-email")
    page.fill("#reminder-email", "patient.one@localhost")
    with page.expect_navigation():
        page.click("#save-reminders")
    error = page.locator("#err-reminders-email")
    assert error.is_visible() and "e-mail address" in error.inner_text()
    assert page.locator("#reminder-email").get_attribute("aria-invalid") == "true"
    assert page.locator("#reminder-email").input_value() == "patient.one@localhost"
    assert page.locator("#reminder-channel-email").is_checked()
    screenshot(page, "r1-reminder-choice-refused")

    page.fill("#reminder-email", ADDRESS)
    with page.expect_navigation():
        page.click("#save-reminders")
    assert page.url.endswith("/me?reminders=saved#reminders")  # a redirect: no POST URL left behind
    saved = page.locator("#reminders-saved")
    assert saved.is_visible() and "3 days before" in saved.inner_text()
    assert page.locator("#reminder-channel-email").is_checked()
    assert page.locator("#reminder-email").input_value() == ADDRESS
    screenshot(page, "r2-reminder-choice-saved")

    with clinic.db.session() as s:
        pid = s.scalar(select(m.User.patient_id).where(m.User.username == "patient1"))
        assert pid is not None
        row = s.get(m.AssessmentRow, pid)
        assert row is not None
        groups = row.result["monitoring"]["groups"]
        audits = list(s.scalars(select(m.AuditEvent).where(m.AuditEvent.resource == "reminder-prefs")))
    assert ("write", pid, "channel email") in [(a.action, a.patient_id, a.detail) for a in audits]
    assert ("write-failed", pid) in [(a.action, a.patient_id) for a in audits]  # the refused address
    # the day the reminder falls due: days_before before the earliest date of the stored plan
    due = min(date.fromisoformat(g["next_due"]) for g in groups if g["next_due"])
    due_groups = {g["name"] for g in groups if g["next_due"] == due.isoformat()}
    run = service.send_reminders(clinic.db, clinic.config, due - timedelta(days=3))
    assert (run.sent, run.failed) == (1, 0)

    [envelope] = clinic.smtp.envelopes
    assert envelope.rcpt_tos == [ADDRESS]
    msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert msg["Subject"] == f"Your blood test reminder from {CLINIC}"
    body_part = msg.get_body(preferencelist=("plain",))
    assert body_part is not None
    body = body_part.get_content()
    assert f"{due:%A} {due.day} {due:%B %Y}" in body
    assert ("Full blood count (FBC)" in body) == ("FBC" in due_groups)
    [ics] = [a for a in msg.iter_attachments() if a.get_filename() == "blood-test.ics"]
    data = ics.get_payload(decode=True)
    assert isinstance(data, bytes)
    [event] = Calendar.from_ical(data).walk("VEVENT")
    assert event.decoded("dtstart") == due and len(event.walk("VALARM")) == 1

    # the nurse sees the reminder on the patient page
    page.context.clear_cookies()
    login(page, clinic.url, "nurse", "demo-nurse")
    page.goto(f"{clinic.url}/patients/{pid}#reminders")
    table = page.locator("#reminders table#reminders-sent")
    assert table.is_visible()
    sent = table.locator("tbody tr[data-status='sent'][data-kind='due']")
    assert sent.count() == len(due_groups)
    assert "by email" in page.locator("#reminders h2").inner_text()
    page.locator("#reminders").scroll_into_view_if_needed()
    screenshot(page, "r3-reminders-on-patient-page")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: the table becomes cards, nothing overflows
    page.reload()
    width, inner = page.evaluate("[document.scrollingElement.scrollWidth, window.innerWidth]")
    assert width <= inner
    cell = sent.first.locator("td[data-label=Outcome]")
    assert cell.evaluate("td => getComputedStyle(td).display") == "block"  # a card, not a table row
    assert "Outcome" in cell.evaluate("td => getComputedStyle(td, '::before').content")
    page.locator("#reminders").screenshot(path=str(screenshot_path("r4-reminders-on-a-phone")))
