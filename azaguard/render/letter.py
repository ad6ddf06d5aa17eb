"""A shared-care letter to the GP (or the specialist team): HTML from a template, then PDF.

The letter says only what the stored assessment (the engine's output, in the JSON contract of
docs/assessment-json.md) and the record say: the azathioprine dose in mg/day and mg/kg/day as the
assessment has it, the recommended range and plan with their basis, TPMT/NUDT15, the monitoring plan
with each test group's next due date, the latest FBC, liver and renal results with their dates, the
open findings with what to do, why and their sources, whom to call, and the knowledge version.
Nothing clinical is worked out here.

The PDF is drawn by WeasyPrint from the HTML alone: the template has no link to anything outside
it, and the URL fetcher refuses every fetch (no network, no file), so a letter never depends on a
server or a font on the internet (fonts come from the system's fontconfig).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

TEMPLATES = Path(__file__).resolve().parent / "templates"
RECIPIENTS = {"gp": "the patient's GP", "specialist": "the specialist team"}
KINDS = {"gp": "gp-letter", "specialist": "specialist-letter"}
DECISION_SUPPORT = (
    "Decision support, not autopilot: azaguard made this letter from the patient's assessment; every "
    "action states why and its source, and the clinician responsible for the patient decides."
)
# UCUM units as people write them (formatting only: the values are never converted here)
_UNITS = {"10*9/L": "×10⁹/L", "10*12/L": "×10¹²/L", "umol/L": "µmol/L", "mL/min/{1.73_m2}": "mL/min/1.73 m²"}


@dataclass(frozen=True)
class Result:
    """One stored result: the analyte's label from the knowledge base, the value in its canonical unit."""

    label: str
    value: float
    unit: str
    date: date


@dataclass(frozen=True)
class ResultGroup:
    name: str  # a test group of the protocol's schedule: FBC, LFT, renal
    results: list[Result]


@dataclass(frozen=True)
class Action:
    """An open finding: what was found (why), what to do, and the sources it rests on."""

    severity: str
    code: str
    message: str
    action: str
    sources: list[str]
    date: str | None = None


@dataclass(frozen=True)
class Letter:
    recipient: str  # gp | specialist
    patient_name: str
    identifier: str
    birth_date: date | None
    monitoring_team: str  # specialist | gp
    indication: str | None  # the indication's label from the knowledge base
    assessment: Mapping[str, Any]  # the stored assessment (docs/assessment-json.md)
    weight_kg: float | None  # the latest recorded weight (the mg/kg figure is the assessment's)
    weight_date: date | None
    results: list[ResultGroup]
    actions: list[Action]
    clinic_name: str
    clinic_phone: str
    out_of_hours: str
    author: str
    made_at: datetime


def kind_of(recipient: str) -> str:
    """The document kind of a letter to `recipient` (gp-letter, specialist-letter)."""
    return KINDS[recipient]


def title_of(recipient: str) -> str:
    return f"Azathioprine shared care letter to {RECIPIENTS[recipient]}"


def _day(value: date | str | None) -> str:
    """A date as a letter writes it: "5 Jan 2027" (ISO strings from the assessment too)."""
    if value is None or value == "":
        return ""
    when = date.fromisoformat(value) if isinstance(value, str) else value
    return f"{when.day} {when:%b %Y}"


def _num(value: float | int | None) -> str:
    if value is None:
        return ""
    return f"{value:g}"


def _unit(unit: str | None) -> str:
    return _UNITS.get(unit or "", unit or "")


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(day=_day, num=_num, unit=_unit)
    return env


_ENV = _environment()


def render_letter_html(letter: Letter) -> str:
    a = letter.assessment
    return _ENV.get_template("letter.html").render(
        letter=letter,
        a=a,
        title=title_of(letter.recipient),
        to=RECIPIENTS[letter.recipient],
        treatment=a.get("treatment") or {"state": "", "since": None, "reason": None, "held_dose_mg_per_day": None},
        dose=a["dose"],
        monitoring=a["monitoring"],
        follow_ups=[u for u in a["monitoring"].get("follow_ups", []) if u["state"] in ("open", "overdue")],
        pgx={"tpmt": None, "nudt15": None, "category": None, **(a.get("pgx") or {})},
        decision_support=DECISION_SUPPORT,
    )


class _NoFetch:
    """WeasyPrint's URL fetcher for letters: nothing outside the HTML is ever loaded."""

    def fetch(self, url: str, headers: Any = None) -> Any:
        from weasyprint.urls import FatalURLFetchingError

        raise FatalURLFetchingError(f"a letter loads nothing from outside it (asked for {url[:80]})")

    def __call__(self, url: str, *args: Any, **kwargs: Any) -> Any:  # the older fetcher interface
        return self.fetch(url)


class PdfEngineMissing(RuntimeError):
    """WeasyPrint is installed but the system libraries it draws with (Pango) are not."""


PDF_ENGINE_HELP = (
    "letters need the PDF engine's system libraries (Pango), which this server lacks: "
    "install them (Debian/Ubuntu: apt-get install libpango-1.0-0 libpangoft2-1.0-0) and restart"
)


def pdf_engine_available() -> bool:
    """Whether letters can be drawn here (WeasyPrint finds Pango)."""
    try:
        import weasyprint  # noqa: F401
    except OSError:
        return False
    return True


def html_to_pdf(html: str) -> bytes:
    """Draw the HTML as a PDF (A4, system fonts); no URL is fetched. Without Pango on the system,
    PdfEngineMissing (the app answers 503 with what to install) rather than a server error."""
    try:
        import weasyprint  # imported here: ~1 s, paid only by the first letter a process writes
    except OSError as error:  # "cannot load library 'libpango-1.0-0'"
        raise PdfEngineMissing(PDF_ENGINE_HELP) from error

    doc = weasyprint.HTML(string=html, base_url=None, url_fetcher=_NoFetch())
    pdf: bytes = doc.write_pdf()
    return pdf


def render_letter_pdf(letter: Letter) -> bytes:
    return html_to_pdf(render_letter_html(letter))
