"""The clinic's working-day calendar: weekends and public holidays, from the `holidays` package.

A blood test due on a day the clinic's phlebotomy service is shut (a weekend, a bank holiday)
is shown, booked and reminded on the working day **before** it - never after: a test moved later
would leave a patient unmonitored for longer than the schedule allows. The engine does the move
(azaguard.engine.schedule.working_day); this module only builds the calendar it reads, once at
start-up, as plain data (the engine does no I/O and imports no calendar library).

The calendar is configured with `AZAGUARD_HOLIDAYS`: an ISO 3166 country code with an optional
subdivision (`GB-ENG`, the default: England and Wales; `GB-SCT`, `GB-NIR`, `IE`, `FR`, ...), or
`none` for no calendar (due dates are then shown exactly as the schedule gives them).
"""

from __future__ import annotations

import os
from functools import lru_cache

from azaguard.knowledge.model import WorkingCalendar

ENV = "AZAGUARD_HOLIDAYS"
DEFAULT = "GB-ENG"  # England and Wales bank holidays (the `holidays` package: country GB, subdivision ENG)
FIRST_YEAR, LAST_YEAR = 2000, 2099  # the years whose holidays are computed, once per process
NONE = ("", "none", "off")


class CalendarError(ValueError):
    """The configured calendar is not one the `holidays` package knows."""


def configured() -> str:
    """The calendar setting: `AZAGUARD_HOLIDAYS`, or the default (England and Wales)."""
    value = os.environ.get(ENV)
    return DEFAULT if value is None else value.strip()


@lru_cache(maxsize=8)
def build(spec: str) -> WorkingCalendar | None:
    """The calendar for "CC" or "CC-SUB" (e.g. "GB-ENG"); None for "none". CalendarError if unknown."""
    code = spec.strip()
    if code.lower() in NONE:
        return None
    import holidays  # only when a calendar is configured: it loads every country's module (about 0.1 s)

    country, _, subdiv = code.upper().partition("-")
    try:
        found = holidays.country_holidays(country, subdiv=subdiv or None, years=range(FIRST_YEAR, LAST_YEAR + 1))
    except NotImplementedError as exc:
        raise CalendarError(f"{ENV}={spec!r}: {exc}; use a country code such as GB-ENG, or 'none'") from exc
    return WorkingCalendar(
        code=country + (f"-{subdiv}" if subdiv else ""),
        weekend=frozenset(found.weekend),
        holidays=dict(found.items()),
        first_year=FIRST_YEAR,
        last_year=LAST_YEAR,
    )
