"""Reminder delivery: the configuration, the message a patient receives, and the channels that carry it.

A channel is anything with the `Channel` interface (a name, a label for the patient's page, the
contact detail it needs and `send(message) -> SendResult`). Which channels a clinic offers is
configuration (`AZAGUARD_REMINDER_CHANNELS`): the built-in `email` (SMTP through smtplib), and any
other as `name=module:factory`, a callable that takes the `ReminderConfig` and returns a channel;
an SMS gateway is added that way without changing azaguard (docs/operations.md, "Reminders").

Nothing here touches the store: azaguard.reminders decides what is due and records what was
sent; azaguard.service runs it. A message's subject never carries patient data, and a failure is
reported by the error's type only (an SMTP server's reply may quote the recipient's address).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import smtplib
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Protocol, runtime_checkable

from icalendar import Alarm, Calendar, Event

TLS_MODES = ("none", "starttls", "ssl")
DEFAULT_PORTS = {"none": 25, "starttls": 587, "ssl": 465}
CONTACTS = ("email", "phone")  # the contact details a channel may need
# Plain names of the protocol's test groups (knowledge schedule.groups); an unknown group is shown by its key.
GROUP_NAMES = {
    "FBC": "Full blood count (FBC)",
    "LFT": "Liver function tests (LFT)",
    "renal": "Kidney function tests (U&E)",
}


class ConfigError(ValueError):
    """A reminder setting is missing or malformed (the message names the variable, never a secret)."""


@dataclass(frozen=True)
class ReminderConfig:
    """Reminder settings, from AZAGUARD_* environment variables (`from_env`; docs/operations.md)."""

    smtp_host: str = ""
    smtp_port: int | None = None  # None: 25, 587 or 465 by `smtp_tls`
    smtp_tls: str = "starttls"  # none | starttls | ssl (implicit TLS)
    smtp_user: str = ""
    smtp_password: str = field(default="", repr=False)
    smtp_from: str = ""
    smtp_timeout: float = 30.0
    smtp_ca_file: str = ""  # a private CA to trust besides the system's (empty: the system's only)
    days_before: int = 3
    channels: tuple[str, ...] = ("email",)  # "name" (built-in) or "name=module:factory"
    clinic_name: str = "Neuromuscular clinic"
    clinic_phone: str = "0300 000 0000 (demo number)"
    where: str = "your usual blood test clinic (GP surgery or hospital)"

    def __post_init__(self) -> None:
        if self.smtp_tls not in TLS_MODES:
            raise ConfigError(f"AZAGUARD_SMTP_TLS must be one of {', '.join(TLS_MODES)}, got '{self.smtp_tls}'")
        if self.smtp_port is not None and not 0 < self.smtp_port < 65536:
            raise ConfigError(f"AZAGUARD_SMTP_PORT must be a port number, got {self.smtp_port}")
        if not 0 <= self.days_before <= 60:
            raise ConfigError(f"AZAGUARD_REMINDER_DAYS_BEFORE must be 0-60 days, got {self.days_before}")
        if self.smtp_timeout <= 0:
            raise ConfigError("AZAGUARD_SMTP_TIMEOUT must be a positive number of seconds")
        names = [channel_name(c) for c in self.channels]
        if len(set(names)) != len(names) or "none" in names or not all(names):
            raise ConfigError("AZAGUARD_REMINDER_CHANNELS must name each channel once (and not 'none')")

    @property
    def port(self) -> int:
        return self.smtp_port or DEFAULT_PORTS[self.smtp_tls]

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(channel_name(c) for c in self.channels)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ReminderConfig:
        e = os.environ if env is None else env

        def number(name: str, default: str, kind: Callable[[str], float | int]) -> float | int:
            raw = e.get(name, "").strip() or default
            try:
                return kind(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a number, got '{raw}'") from None

        port = e.get("AZAGUARD_SMTP_PORT", "").strip()
        channels = tuple(c.strip() for c in e.get("AZAGUARD_REMINDER_CHANNELS", "email").split(",") if c.strip())
        defaults = cls()
        return cls(
            smtp_host=e.get("AZAGUARD_SMTP_HOST", "").strip(),
            smtp_port=int(number("AZAGUARD_SMTP_PORT", port, int)) if port else None,
            smtp_tls=e.get("AZAGUARD_SMTP_TLS", "starttls").strip().lower() or "starttls",
            smtp_user=e.get("AZAGUARD_SMTP_USER", ""),
            smtp_password=e.get("AZAGUARD_SMTP_PASSWORD", ""),
            smtp_from=e.get("AZAGUARD_SMTP_FROM", "").strip(),
            smtp_timeout=float(number("AZAGUARD_SMTP_TIMEOUT", "30", float)),
            smtp_ca_file=e.get("AZAGUARD_SMTP_CA_FILE", "").strip(),
            days_before=int(number("AZAGUARD_REMINDER_DAYS_BEFORE", "3", int)),
            channels=channels,
            clinic_name=e.get("AZAGUARD_CLINIC_NAME", "").strip() or defaults.clinic_name,
            clinic_phone=e.get("AZAGUARD_CLINIC_PHONE", "").strip() or defaults.clinic_phone,
            where=e.get("AZAGUARD_REMINDER_WHERE", "").strip() or defaults.where,
        )


def channel_name(spec: str) -> str:
    return spec.split("=", 1)[0].strip()


# ---------------------------------------------------------------- the message
@dataclass(frozen=True)
class Item:
    """One test group a reminder is about: `due` (falls due on `due`) or `overdue` (was due on `due`)."""

    kind: str  # due | overdue
    group: str
    due: date


@dataclass(frozen=True)
class Message:
    """A reminder as every channel gets it: a channel uses what suits it (e-mail: subject, text and
    the .ics; a text-message gateway: `short`). `to` is the contact detail the channel asked for."""

    to: str
    subject: str  # never patient data
    text: str
    short: str
    ics: bytes
    items: tuple[Item, ...]


@dataclass(frozen=True)
class SendResult:
    ok: bool
    error_type: str | None = None  # the exception's class name: never its message


@runtime_checkable
class Channel(Protocol):
    """A way to reach a patient. `send` reports a failure in its result rather than raising."""

    name: str  # what is stored as the patient's choice ("email")
    label: str  # what the patient's page offers ("E-mail")
    contact: str  # the detail it needs: "email" (given on the patient's page) or "phone" (the record's)

    def send(self, message: Message) -> SendResult: ...


def long_date(d: date) -> str:
    """'Tuesday 22 December 2026'."""
    return f"{d:%A} {d.day} {d:%B %Y}"


def group_name(group: str) -> str:
    return GROUP_NAMES.get(group, group)


def subject(config: ReminderConfig) -> str:
    return f"Your blood test reminder from {config.clinic_name}"


def compose(to: str, items: Sequence[Item], config: ReminderConfig, as_of: date, uid_seed: str) -> Message:
    """The reminder for one patient: the tests falling due (by date) and those overdue, where to
    go, who to call, and a calendar file with an alarm. `uid_seed` makes the calendar events'
    UIDs stable (a calendar updates the event instead of adding a second); it is hashed."""
    due: dict[date, list[str]] = {}
    overdue: dict[date, list[str]] = {}
    for it in sorted(items, key=lambda i: (i.due, i.group)):
        (overdue if it.kind == "overdue" else due).setdefault(it.due, []).append(group_name(it.group))
    parts = [
        "Hello,",
        f"This is a reminder from {config.clinic_name} about the blood tests you need while taking azathioprine.",
    ]
    for when, names in overdue.items():
        parts.append(
            f"These tests were due on {long_date(when)} and no result has reached us yet:\n"
            + "\n".join(f"  - {n}" for n in names)
            + "\nPlease have them done as soon as you can. If you have had them in the last few days, "
            "you can ignore this part."
        )
    for when, names in due.items():
        parts.append(f"Your next blood tests are due on {long_date(when)}:\n" + "\n".join(f"  - {n}" for n in names))
    parts += [
        f"Where to go: {config.where}. Book an appointment there if you need one.",
        "Keep taking azathioprine as usual unless your team has told you otherwise.",
        f"Questions, or cannot go on that day? Call {config.clinic_name} on {config.clinic_phone}.",
        "Call your team the same day if you have a fever, sore throat or any infection, unexplained "
        "bruising or bleeding, mouth ulcers, or yellow skin or eyes.",
        "The attached calendar file (blood-test.ics) puts the test in your calendar with a reminder.",
        "You get these reminders because you asked for them on your azaguard page; choose "
        '"No reminders" there to stop them.',
    ]
    first = min(due) if due else None
    said = ([f"overdue since {long_date(min(overdue))}"] if overdue else []) + (
        [f"next due {long_date(first)}"] if first else []
    )
    short = f"{config.clinic_name}: blood tests {'; '.join(said)}. Questions: {config.clinic_phone}"
    return Message(
        to=to,
        subject=subject(config),
        text="\n\n".join(parts) + "\n",
        short=short,
        ics=_calendar(due, overdue, config, as_of, uid_seed),
        items=tuple(items),
    )


def _calendar(
    due: dict[date, list[str]], overdue: dict[date, list[str]], config: ReminderConfig, as_of: date, seed: str
) -> bytes:
    """One all-day event per due date (an alarm at 08:00 that day); overdue tests get one event on
    the day after the reminder ("as soon as you can"). No patient data but the tests and dates."""
    cal = Calendar()
    cal.add("prodid", "-//azaguard//blood test reminder//EN")
    cal.add("version", "2.0")
    cal.add("method", "PUBLISH")
    stamp = datetime.now(UTC).replace(microsecond=0)
    events = [(when, names, "due") for when, names in due.items()]
    if overdue:
        events.append((as_of + timedelta(days=1), [n for names in overdue.values() for n in names], "overdue"))
    for when, names, kind in events:
        ev = Event()
        uid = hashlib.sha256(f"{seed}|{kind}|{when.isoformat()}".encode()).hexdigest()[:32]
        ev.add("uid", f"{uid}@azaguard")
        ev.add("dtstamp", stamp)
        ev.add("dtstart", when)
        ev.add("dtend", when + timedelta(days=1))
        title = "Overdue blood test" if kind == "overdue" else "Blood test"
        ev.add("summary", f"{title} ({config.clinic_name})")
        ev.add("description", f"{', '.join(names)}. Where: {config.where}. Questions: {config.clinic_phone}")
        ev.add("transp", "TRANSPARENT")
        alarm = Alarm()
        alarm.add("action", "DISPLAY")
        alarm.add(
            "description", f"{'Book your overdue' if kind == 'overdue' else 'Your'} blood test: {', '.join(names)}"
        )
        alarm.add("trigger", timedelta(hours=8))  # 08:00 on the day (all-day events start at midnight)
        ev.add_component(alarm)
        cal.add_component(ev)
    return bytes(cal.to_ical())


# ---------------------------------------------------------------- channels
class EmailChannel:
    """E-mail through an SMTP server with smtplib: STARTTLS, implicit TLS or none; login when a
    user is configured. One connection per message; a failure is returned, never raised."""

    name = "email"
    label = "E-mail"
    contact = "email"

    def __init__(self, config: ReminderConfig) -> None:
        self.config = config

    def build(self, message: Message) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = message.subject
        msg["From"] = self.config.smtp_from
        msg["To"] = message.to
        msg["Date"] = formatdate(localtime=True)
        domain = parseaddr(self.config.smtp_from)[1].rpartition("@")[2] or None
        msg["Message-ID"] = make_msgid("reminder", domain=domain)
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(message.text)
        msg.add_attachment(
            message.ics, maintype="text", subtype="calendar", filename="blood-test.ics", params={"method": "PUBLISH"}
        )
        return msg

    def _tls(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if self.config.smtp_ca_file:
            ctx.load_verify_locations(cafile=self.config.smtp_ca_file)
        return ctx

    def send(self, message: Message) -> SendResult:
        c = self.config
        try:
            if not c.smtp_host or not c.smtp_from:
                raise ConfigError("AZAGUARD_SMTP_HOST and AZAGUARD_SMTP_FROM must be set to send e-mail")
            msg = self.build(message)
            smtp: smtplib.SMTP
            if c.smtp_tls == "ssl":
                smtp = smtplib.SMTP_SSL(c.smtp_host, c.port, timeout=c.smtp_timeout, context=self._tls())
            else:
                smtp = smtplib.SMTP(c.smtp_host, c.port, timeout=c.smtp_timeout)
            with smtp:
                if c.smtp_tls == "starttls":
                    smtp.starttls(context=self._tls())
                if c.smtp_user:
                    smtp.login(c.smtp_user, c.smtp_password)
                smtp.send_message(msg)
        except (smtplib.SMTPException, OSError, ValueError) as exc:  # OSError: refused, timeouts, TLS
            return SendResult(False, type(exc).__name__)
        return SendResult(True)


BUILT_IN: dict[str, Callable[[ReminderConfig], Channel]] = {"email": EmailChannel}


def load_channels(config: ReminderConfig) -> dict[str, Channel]:
    """The channels the configuration offers, by name, in its order. `name` is a built-in;
    `name=module:factory` imports `module` and calls `factory(config)`, which returns a Channel."""
    out: dict[str, Channel] = {}
    for spec in config.channels:
        name, _, target = (part.strip() for part in spec.partition("="))
        if not target:
            if name not in BUILT_IN:
                raise ConfigError(
                    f"AZAGUARD_REMINDER_CHANNELS: no built-in channel '{name}' (give name=module:factory)"
                )
            channel = BUILT_IN[name](config)
        else:
            module, _, attr = target.partition(":")
            try:
                factory = getattr(importlib.import_module(module), attr)
                channel = factory(config)
            except Exception as exc:  # not importable, not there, not callable, or it failed to start
                raise ConfigError(
                    f"AZAGUARD_REMINDER_CHANNELS: cannot load '{target}' for channel '{name}' ({type(exc).__name__})"
                ) from None
        if not isinstance(channel, Channel) or channel.name != name or channel.contact not in CONTACTS:
            raise ConfigError(f"AZAGUARD_REMINDER_CHANNELS: '{spec}' is not a channel named '{name}'")
        out[name] = channel
    return out
