"""Plain-language dates for what patients read: "Tuesday 22 December".

English names are spelled out here rather than taken from the C library's locale (strftime's %A
and %B follow the server's locale), so a page never says "Dienstag" because of where it runs.
The year is added only when it is not the current one ("Monday 4 January 2027").
"""

from __future__ import annotations

from datetime import date

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


def long_date(value: date | str | None, today: date | None = None) -> str:
    """ "Tuesday 22 December" (with the year when it is not this year's); "" for no date.

    Accepts a date or an ISO string (the stored assessment's dates are strings)."""
    if value is None or value == "":
        return ""
    day = date.fromisoformat(value) if isinstance(value, str) else value
    text = f"{WEEKDAYS[day.weekday()]} {day.day} {MONTHS[day.month - 1]}"
    return text if day.year == (today or date.today()).year else f"{text} {day.year}"


def day_month_year(value: date) -> str:
    """ "14 December 2026": a date inside a sentence that is kept (a stored report's words)."""
    return f"{value.day} {MONTHS[value.month - 1]} {value.year}"
