"""Blood-test reminders (issue 8 item 7), through a real SMTP server: aiosmtpd on loopback.

Each test builds patients through the real FHIR import, stores their assessment as of a fixed day
(the engine's monitoring plan), lets a patient choose a channel through the service, runs the
reminders and reads what arrived at the SMTP server: the subject carries no patient data, the
body names the tests and the date with its weekday, the .ics parses with its date and alarm.
Due dates are read back from the stored assessment, never worked out here.
"""

from __future__ import annotations

import email
import email.policy
import json
import logging
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from conftest import on_treatment
from icalendar import Calendar
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from azaguard import auth, service
from azaguard import reminders as rem
from azaguard.cli import main
from azaguard.fhirbuild import BundleBuilder
from azaguard.ingest import parse_text
from azaguard.knowledge import Knowledge
from azaguard.notify import ConfigError, Item, Message, ReminderConfig, SendResult, load_channels
from azaguard.service_models import Principal
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.worklist import refresh_patient

STORED_ON = date(2025, 9, 10)  # the day the patients' assessments are stored for
CLINIC = "Test neuromuscular clinic"
PHONE = "0300 123 4567"
WHERE = "the phlebotomy room, Outpatients, Level 2"
NAME = "Ada Quillfeather"  # the patient's name: never in a subject line or a log
IDENT = "NMC900001"
ADDRESS = "ada.q@example.org"


# ---------------------------------------------------------------- a real SMTP server on loopback
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Collector:
    """The aiosmtpd handler: keeps every envelope, or refuses the message when `refuse` is set."""

    refuse: str | None = None
    envelopes: list[Any] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse:
            return self.refuse
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def messages(self) -> list[EmailMessage]:
        out = []
        for e in self.envelopes:
            msg = email.message_from_bytes(e.original_content or e.content, policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            out.append(msg)
        return out


@dataclass
class Smtp:
    handler: Collector
    port: int


@pytest.fixture
def smtp() -> Iterator[Smtp]:
    handler = Collector()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield Smtp(handler, port)
    finally:
        controller.stop()


def config(smtp: Smtp | None, **changes: Any) -> ReminderConfig:
    base = ReminderConfig(
        smtp_host="127.0.0.1",
        smtp_port=smtp.port if smtp else free_port(),
        smtp_tls="none",
        smtp_from="Test clinic <clinic@example.org>",
        smtp_timeout=10,
        days_before=3,
        clinic_name=CLINIC,
        clinic_phone=PHONE,
        where=WHERE,
    )
    return replace(base, **changes)


# ---------------------------------------------------------------- patients with stored assessments
def import_patient(db: Database, kb: Knowledge, b: BundleBuilder) -> int:
    parsed = parse_text(json.dumps(b.bundle()), kb, "fhir", "reminders-test.json", None)
    with db.session() as s:
        service.import_parsed(s, kb, None, parsed, "reminders-test.json", "cli")
        pid = s.scalar(select(m.Patient.id).where(m.Patient.identifier == b.patient_id))
        assert pid is not None
        refresh_patient(s, kb, pid, STORED_ON)  # the stored assessment the reminders read
    return pid


def stable_patient(db: Database, kb: Knowledge, ident: str = IDENT) -> int:
    """On a stable dose, last complete bloods 2025-09-01: the engine plans the next in 12 weeks."""
    b = on_treatment(pid=ident)
    b.entries[0]["name"] = [{"given": ["Ada"], "family": "Quillfeather"}]
    for when in ("2025-06-02", "2025-07-01", "2025-08-01", "2025-09-01"):
        b.bloods(when)
    return import_patient(db, kb, b)


def overdue_patient(db: Database, kb: Knowledge, ident: str = "NMC900002") -> int:
    """Started in January, bloods never repeated after the baseline: overdue on STORED_ON."""
    return import_patient(db, kb, on_treatment(pid=ident))


def stored_groups(db: Database, pid: int) -> dict[str, dict[str, Any]]:
    with db.session() as s:
        row = s.get(m.AssessmentRow, pid)
        assert row is not None and row.as_of == STORED_ON
        return {g["name"]: g for g in row.result["monitoring"]["groups"]}


def stored_due(db: Database, pid: int) -> date:
    """The earliest next_due of the stored assessment (what the engine planned)."""
    dues = {date.fromisoformat(g["next_due"]) for g in stored_groups(db, pid).values() if g["next_due"]}
    return min(dues)


def patient_user(db: Database, pid: int, username: str) -> Principal:
    with db.session() as s:
        ident = s.get(m.Patient, pid)
        assert ident is not None
        user = auth.create_user(s, username, "a-long-password-1", "patient", ident.identifier)
        return service.principal_of(user)


def choose(db: Database, who: Principal, cfg: ReminderConfig, channel: str, address: str = ADDRESS) -> None:
    with db.session() as s:
        service.set_reminder_prefs(s, who, cfg, channel, address, "web")


def sent_rows(db: Database, pid: int | None = None) -> list[m.ReminderSent]:
    with db.session() as s:
        q = select(m.ReminderSent).order_by(m.ReminderSent.id)
        if pid is not None:
            q = q.where(m.ReminderSent.patient_id == pid)
        return list(s.scalars(q))


def body_of(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    text: str = part.get_content()
    return text


def ics_of(msg: EmailMessage) -> Calendar:
    found = [a for a in msg.iter_attachments() if a.get_content_type() == "text/calendar"]
    assert len(found) == 1 and found[0].get_filename() == "blood-test.ics"
    data = found[0].get_payload(decode=True)
    assert isinstance(data, bytes)
    return Calendar.from_ical(data)


def long(d: date) -> str:
    return f"{d:%A} {d.day} {d:%B %Y}"


# ---------------------------------------------------------------- the reminder that arrives
def test_due_reminder_arrives_once_with_a_plain_subject_the_tests_the_weekday_and_an_ics(
    db: Database, kb: Knowledge, smtp: Smtp
) -> None:
    pid = stable_patient(db, kb)
    groups = stored_groups(db, pid)
    due = stored_due(db, pid)
    assert all(g["next_due"] == due.isoformat() and not g["overdue"] for g in groups.values())
    cfg = config(smtp)
    choose(db, patient_user(db, pid, "ada"), cfg, "email")

    run = service.send_reminders(db, cfg, due - timedelta(days=3))
    assert (run.patients, run.due, run.overdue, run.sent, run.failed) == (1, 3, 0, 1, 0)

    [envelope] = smtp.handler.envelopes
    assert envelope.rcpt_tos == [ADDRESS]
    [msg] = smtp.handler.messages()
    subject = msg["Subject"]
    assert subject == f"Your blood test reminder from {CLINIC}"
    for secret in (NAME, "Ada", "Quillfeather", IDENT, ADDRESS, str(pid), due.isoformat()):
        assert secret not in subject
    body = body_of(msg)
    for expected in (
        "Full blood count (FBC)",
        "Liver function tests (LFT)",
        "Kidney function tests",
        long(due),
        WHERE,
        PHONE,
    ):
        assert expected in body, expected
    assert NAME not in body and IDENT not in body

    cal = ics_of(msg)
    [event] = cal.walk("VEVENT")
    assert event.decoded("dtstart") == due and event.decoded("dtend") == due + timedelta(days=1)
    [alarm] = event.walk("VALARM")
    assert str(alarm["action"]) == "DISPLAY" and alarm.decoded("trigger") == timedelta(hours=8)
    assert NAME not in cal.to_ical().decode() and IDENT not in cal.to_ical().decode()

    rows = sent_rows(db, pid)
    assert sorted((r.test_group, r.kind, r.due_date, r.status, r.channel) for r in rows) == [
        (g, "due", due, "sent", "email") for g in ("FBC", "LFT", "renal")
    ]
    # a second run - the same day, and the next day - sends nothing new
    again = service.send_reminders(db, cfg, due - timedelta(days=3))
    later = service.send_reminders(db, cfg, due - timedelta(days=2))
    assert (again.patients, again.sent, later.patients, later.sent) == (0, 0, 0, 0)
    assert len(smtp.handler.envelopes) == 1 and len(sent_rows(db, pid)) == 3
    # audited: one row per reminder, with what and how, never the address
    with db.session() as s:
        audits = list(s.scalars(select(m.AuditEvent).where(m.AuditEvent.action == "reminder")))
    assert [(a.patient_id, a.resource, a.channel) for a in audits] == [(pid, "reminder email", "cli")]
    assert "sent" in audits[0].detail and ADDRESS not in audits[0].detail


def test_the_unique_constraint_sends_a_reminder_once_even_when_two_runs_claim_it(
    sqlite_db: Database, kb: Knowledge
) -> None:
    pid = stable_patient(sqlite_db, kb)
    due = stored_due(sqlite_db, pid)
    planned = rem.Planned(pid, "email", ADDRESS, (Item("due", "FBC", due),))
    with sqlite_db.write() as s:
        assert rem.claim(s, planned) == planned.items
    with sqlite_db.write() as s:
        assert rem.claim(s, planned) == ()  # claimed (pending) by the first run: not again
    with pytest.raises(IntegrityError), sqlite_db.session() as s:
        s.add(
            m.ReminderSent(
                patient_id=pid, kind="due", test_group="FBC", due_date=due, channel="email",
                sent_at=datetime.now(), status="sent", attempts=1,
            )
        )  # fmt: skip
        s.flush()


@pytest.mark.parametrize("days_before", [0, 3, 7])
def test_days_before_on_both_sides_of_the_threshold(
    sqlite_db: Database, kb: Knowledge, smtp: Smtp, days_before: int
) -> None:
    pid = stable_patient(sqlite_db, kb)
    due = stored_due(sqlite_db, pid)
    cfg = config(smtp, days_before=days_before)
    choose(sqlite_db, patient_user(sqlite_db, pid, "ada"), cfg, "email")

    early = service.send_reminders(sqlite_db, cfg, due - timedelta(days=days_before + 1))
    assert (early.patients, early.sent) == (0, 0) and smtp.handler.envelopes == []
    assert sent_rows(sqlite_db) == []

    on_time = service.send_reminders(sqlite_db, cfg, due - timedelta(days=days_before))
    assert (on_time.patients, on_time.sent) == (1, 1)
    assert long(due) in body_of(smtp.handler.messages()[0])


def test_overdue_reminder_for_a_test_the_stored_plan_says_is_overdue(
    sqlite_db: Database, kb: Knowledge, smtp: Smtp
) -> None:
    pid = overdue_patient(sqlite_db, kb)
    groups = stored_groups(sqlite_db, pid)
    assert all(g["overdue"] for g in groups.values())
    due = stored_due(sqlite_db, pid)
    cfg = config(smtp)
    choose(sqlite_db, patient_user(sqlite_db, pid, "bea"), cfg, "email")

    run = service.send_reminders(sqlite_db, cfg, STORED_ON)
    assert (run.patients, run.due, run.overdue, run.sent) == (1, 0, 3, 1)
    [msg] = smtp.handler.messages()
    body = body_of(msg)
    assert f"were due on {long(due)}" in body and "as soon as you can" in body
    assert "Full blood count (FBC)" in body
    [event] = ics_of(msg).walk("VEVENT")
    assert event.decoded("dtstart") == STORED_ON + timedelta(days=1)  # "as soon as you can": tomorrow
    assert len(event.walk("VALARM")) == 1 and "Overdue" in str(event["summary"])
    assert {(r.kind, r.due_date, r.status) for r in sent_rows(sqlite_db, pid)} == {("overdue", due, "sent")}
    # an overdue reminder is sent once for that due date, not every day
    assert service.send_reminders(sqlite_db, cfg, STORED_ON + timedelta(days=1)).sent == 0


def test_a_stored_due_date_that_has_passed_gives_an_overdue_reminder(
    sqlite_db: Database, kb: Knowledge, smtp: Smtp
) -> None:
    """The stored plan (as of STORED_ON) said "due"; on a day after that date it is overdue: the
    date comes from the store, not from a new assessment."""
    pid = stable_patient(sqlite_db, kb)
    due = stored_due(sqlite_db, pid)
    cfg = config(smtp)
    choose(sqlite_db, patient_user(sqlite_db, pid, "ada"), cfg, "email")
    assert service.send_reminders(sqlite_db, cfg, due - timedelta(days=1)).sent == 1
    assert service.send_reminders(sqlite_db, cfg, due).sent == 0  # still "due" (today): already sent
    assert service.send_reminders(sqlite_db, cfg, due + timedelta(days=2)).sent == 1
    kinds = sorted({(r.kind, r.due_date) for r in sent_rows(sqlite_db, pid)})
    assert kinds == [("due", due), ("overdue", due)]
    assert f"were due on {long(due)}" in body_of(smtp.handler.messages()[1])


def test_opt_out_and_no_choice_send_nothing(sqlite_db: Database, kb: Knowledge, smtp: Smtp) -> None:
    chose_none = overdue_patient(sqlite_db, kb, "NMC900003")
    never_chose = overdue_patient(sqlite_db, kb, "NMC900004")
    changed_mind = overdue_patient(sqlite_db, kb, "NMC900005")
    cfg = config(smtp)
    choose(sqlite_db, patient_user(sqlite_db, chose_none, "cy"), cfg, "none", "")
    dee = patient_user(sqlite_db, changed_mind, "dee")
    choose(sqlite_db, dee, cfg, "email")
    choose(sqlite_db, dee, cfg, "none")  # opted out again: the address may stay, nothing is sent
    run = service.send_reminders(sqlite_db, cfg, STORED_ON)
    assert (run.patients, run.sent) == (0, 0)
    assert smtp.handler.envelopes == [] and sent_rows(sqlite_db) == []
    with sqlite_db.session() as s:
        view = service.patient_reminders(s, dee, changed_mind)
        assert (view.channel, view.chosen, view.rows) == ("none", True, [])
        assert service.reminder_prefs(s, dee, cfg).email == ADDRESS
    assert never_chose  # has no reminder_prefs row at all


def outside_the_smtp_server(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [r for r in records if not r.name.startswith("mail.log")]  # aiosmtpd's own log: the test's server


def test_a_failing_smtp_server_records_failed_without_a_traceback_or_patient_data_in_logs(
    sqlite_db: Database, kb: Knowledge, smtp: Smtp, caplog: pytest.LogCaptureFixture
) -> None:
    pid = stable_patient(sqlite_db, kb)
    due = stored_due(sqlite_db, pid)
    cfg = config(smtp)
    choose(sqlite_db, patient_user(sqlite_db, pid, "ada"), cfg, "email")
    smtp.handler.refuse = f"554 5.7.1 message for {ADDRESS} refused"  # a reply that quotes the address
    caplog.set_level(logging.DEBUG)

    run = service.send_reminders(sqlite_db, cfg, due - timedelta(days=3))
    assert (run.sent, run.failed) == (0, 1)
    rows = sent_rows(sqlite_db, pid)
    assert {(r.status, r.error_type, r.attempts) for r in rows} == {("failed", "SMTPDataError", 1)}
    records = outside_the_smtp_server(caplog.records)
    assert any("not sent (SMTPDataError)" in r.getMessage() for r in records)
    text = "\n".join(r.getMessage() for r in records)
    for secret in (NAME, "Quillfeather", IDENT, ADDRESS, "example.org"):
        assert secret not in text
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in records)

    # the server is back: the next run tries again and records it sent
    smtp.handler.refuse = None
    assert service.send_reminders(sqlite_db, cfg, due - timedelta(days=2)).sent == 1
    assert {(r.status, r.error_type, r.attempts) for r in sent_rows(sqlite_db, pid)} == {("sent", None, 2)}


def test_no_server_listening_is_recorded_as_failed_and_retried_at_most_three_times(
    sqlite_db: Database, kb: Knowledge, caplog: pytest.LogCaptureFixture
) -> None:
    pid = overdue_patient(sqlite_db, kb)
    cfg = config(None)  # a port nothing listens on
    choose(sqlite_db, patient_user(sqlite_db, pid, "bea"), cfg, "email")
    caplog.set_level(logging.DEBUG)
    for day in range(4):
        service.send_reminders(sqlite_db, cfg, STORED_ON + timedelta(days=day))
    rows = sent_rows(sqlite_db, pid)
    assert {(r.status, r.error_type, r.attempts) for r in rows} == {("failed", "ConnectionRefusedError", 3)}
    assert "Traceback" not in caplog.text and ADDRESS not in caplog.text
    with sqlite_db.session() as s:
        nurse = service.principal_of(auth.create_user(s, "nurse", "a-long-password-1", "clinician"))
        view = service.patient_reminders(s, nurse, pid)
    assert {(r.status, r.error_type, r.attempts) for r in view.rows} == {("failed", "ConnectionRefusedError", 3)}


# ---------------------------------------------------------------- TLS and login, as a real mail server asks
@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl), trusted through AZAGUARD_SMTP_CA_FILE."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make the test server's certificate"
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def check_login(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"clinic", b"s3cret-pass")
    return AuthResult(success=ok)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")  # the implicit-TLS server
@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_tls_and_login(
    sqlite_db: Database, kb: Knowledge, certificate: tuple[Path, Path], mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(str(cert), str(key))
    handler, port = Collector(), free_port()
    # implicit TLS: aiosmtpd does not count a connection wrapped from the start as TLS for AUTH, so it is told
    tls: dict[str, Any] = {"ssl_context": server_tls, "auth_require_tls": False}
    if mode == "starttls":
        tls = {"tls_context": server_tls, "require_starttls": True}
    controller = Controller(
        handler, hostname="127.0.0.1", port=port, authenticator=check_login, auth_required=True, **tls
    )
    controller.start()
    try:
        pid = overdue_patient(sqlite_db, kb)
        good = config(None, smtp_port=port, smtp_tls=mode, smtp_ca_file=str(cert), smtp_user="clinic")
        choose(sqlite_db, patient_user(sqlite_db, pid, "bea"), good, "email")
        caplog.set_level(logging.DEBUG)
        # aiosmtpd answers a failed AUTH by going silent: a short timeout keeps the test quick
        wrong = replace(good, smtp_password="wrong-password", smtp_timeout=1.5)
        assert service.send_reminders(sqlite_db, wrong, STORED_ON).failed == 1
        assert "wrong-password" not in caplog.text and "wrong-password" not in repr(wrong)
        untrusted = replace(good, smtp_password="s3cret-pass", smtp_ca_file="")  # self-signed: refused
        assert service.send_reminders(sqlite_db, untrusted, STORED_ON).failed == 1
        assert handler.envelopes == []
        assert service.send_reminders(sqlite_db, replace(good, smtp_password="s3cret-pass"), STORED_ON).sent == 1
    finally:
        controller.stop()
    [msg] = handler.messages()
    assert msg["Subject"] == f"Your blood test reminder from {CLINIC}"
    errors = [r.error_type for r in sent_rows(sqlite_db, pid)]
    assert errors == [None] * 3
    with sqlite_db.session() as s:
        details = list(s.scalars(select(m.AuditEvent.detail).where(m.AuditEvent.action == "reminder")))
    # a wrong password: a real server answers 535 (SMTPAuthenticationError); aiosmtpd goes silent until
    # the client's timeout, which smtplib reports as a disconnection
    assert details[0].rsplit(": ", 1)[-1] in ("SMTPAuthenticationError", "SMTPServerDisconnected")
    assert "SSLCertVerificationError" in details[1]


# ---------------------------------------------------------------- the patient's choice
def test_the_choice_is_validated_audited_without_the_address_and_patients_only(
    sqlite_db: Database, kb: Knowledge
) -> None:
    pid = stable_patient(sqlite_db, kb)
    ada = patient_user(sqlite_db, pid, "ada")
    cfg = config(None)
    with sqlite_db.session() as s:
        p = service.reminder_prefs(s, ada, cfg)
        assert (p.channel, p.chosen, p.options, p.days_before) == ("none", False, [("email", "E-mail")], 3)
    bad = [("email", "not-an-address", "email"), ("email", "", "email"), ("sms", ADDRESS, "channel"),
           ("", ADDRESS, "channel"), ("email", "a@b.c\r\nBcc: x@y.z", "email")]  # fmt: skip
    for channel, address, field_name in bad:
        with pytest.raises(service.FormError) as exc, sqlite_db.session() as s:
            service.set_reminder_prefs(s, ada, cfg, channel, address)
        assert exc.value.field == field_name
    choose(sqlite_db, ada, cfg, "email")
    with sqlite_db.session() as s:
        audits = list(s.scalars(select(m.AuditEvent).where(m.AuditEvent.resource == "reminder-prefs")))
        assert ("write", "channel email") in [(a.action, a.detail) for a in audits]
        assert all(ADDRESS not in a.detail for a in audits)
        nurse = service.principal_of(auth.create_user(s, "nurse", "a-long-password-1", "clinician"))
    with pytest.raises(service.Denied), sqlite_db.session() as s:
        service.set_reminder_prefs(s, nurse, cfg, "none", "")


# ---------------------------------------------------------------- a channel added by configuration
@dataclass
class PagerChannel:
    """A stand-in for a gateway a clinic would add (an SMS gateway): it keeps what it is given."""

    config: ReminderConfig
    name: str = "pager"
    label: str = "Pager message"
    contact: str = "phone"
    outbox: list[Message] = field(default_factory=list)

    def send(self, message: Message) -> SendResult:
        self.outbox.append(message)
        PAGERS.append(message)
        return SendResult(True)


PAGERS: list[Message] = []


def pager_channel(config: ReminderConfig) -> PagerChannel:
    return PagerChannel(config)


def test_a_channel_added_by_configuration_is_offered_and_used(sqlite_db: Database, kb: Knowledge, smtp: Smtp) -> None:
    env = {
        "AZAGUARD_SMTP_HOST": "127.0.0.1",
        "AZAGUARD_SMTP_PORT": str(smtp.port),
        "AZAGUARD_SMTP_TLS": "none",
        "AZAGUARD_SMTP_FROM": "clinic@example.org",
        "AZAGUARD_REMINDER_DAYS_BEFORE": "3",
        "AZAGUARD_REMINDER_CHANNELS": "email, pager=test_reminders:pager_channel",
        "AZAGUARD_CLINIC_NAME": CLINIC,
    }
    cfg = ReminderConfig.from_env(env)
    assert cfg.channel_names == ("email", "pager") and cfg.port == smtp.port
    assert list(load_channels(cfg)) == ["email", "pager"]
    pid = overdue_patient(sqlite_db, kb)
    with sqlite_db.session() as s:
        patient = s.get(m.Patient, pid)
        assert patient is not None
        patient.phone = "07700 900123"
    bea = patient_user(sqlite_db, pid, "bea")
    with sqlite_db.session() as s:
        assert service.reminder_prefs(s, bea, cfg).options == [("email", "E-mail"), ("pager", "Pager message")]
    choose(sqlite_db, bea, cfg, "pager", "")
    PAGERS.clear()
    assert service.send_reminders(sqlite_db, cfg, STORED_ON).sent == 1
    [message] = PAGERS
    assert message.to == "07700 900123" and CLINIC in message.short and "overdue since" in message.short
    assert smtp.handler.envelopes == []
    assert {r.channel for r in sent_rows(sqlite_db, pid)} == {"pager"}


@pytest.mark.parametrize(
    "env",
    [
        {"AZAGUARD_SMTP_TLS": "tls1.3"},
        {"AZAGUARD_SMTP_PORT": "smtp"},
        {"AZAGUARD_REMINDER_DAYS_BEFORE": "-1"},
        {"AZAGUARD_REMINDER_CHANNELS": "email,email"},
    ],
)
def test_bad_settings_are_refused_naming_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=next(iter(env))):
        ReminderConfig.from_env(env)


@pytest.mark.parametrize("channels", ["sms", "sms=no_such_module:make", "sms=test_reminders:PAGERS"])
def test_a_channel_that_is_not_there_is_refused(channels: str) -> None:
    """No SMS gateway ships with azaguard: naming one without its code is a configuration error."""
    with pytest.raises(ConfigError, match="AZAGUARD_REMINDER_CHANNELS"):
        load_channels(ReminderConfig(channels=(channels,)))


# ---------------------------------------------------------------- the command
def test_cli_reminders_dry_run_then_send(
    sqlite_db: Database, kb: Knowledge, smtp: Smtp, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pid = overdue_patient(sqlite_db, kb)
    cfg = config(smtp)
    choose(sqlite_db, patient_user(sqlite_db, pid, "bea"), cfg, "email")
    url, day = sqlite_db.url, STORED_ON.isoformat()
    for var in ("AZAGUARD_SMTP_HOST", "AZAGUARD_SMTP_FROM"):
        monkeypatch.delenv(var, raising=False)
    assert main(["reminders", "--database", url, "--as-of", day]) == 2  # no SMTP server configured
    assert "AZAGUARD_SMTP_HOST" in capsys.readouterr().err

    monkeypatch.setenv("AZAGUARD_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("AZAGUARD_SMTP_PORT", str(smtp.port))
    monkeypatch.setenv("AZAGUARD_SMTP_TLS", "none")
    monkeypatch.setenv("AZAGUARD_SMTP_FROM", "clinic@example.org")
    assert main(["reminders", "--database", url, "--as-of", day, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "1 patient(s): 0 test(s) falling due, 3 overdue" in out
    assert smtp.handler.envelopes == [] and sent_rows(sqlite_db) == []

    assert main(["reminders", "--database", url, "--as-of", day]) == 0
    assert "1 sent, 0 failed" in capsys.readouterr().out
    assert main(["reminders", "--database", url, "--as-of", day]) == 0
    assert "0 patient(s)" in capsys.readouterr().out
    assert len(smtp.handler.envelopes) == 1
    with sqlite_db.session() as s:
        assert s.scalar(select(func.count()).select_from(m.ReminderSent)) == 3
