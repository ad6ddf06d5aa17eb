"""What the patient's own page (/me) shows, in plain language, taken from the engine's assessment.

Nothing here judges a result or moves a date itself: the meaning of each result is the patient
text of the engine's findings about that result (worst first, as the engine sorts them); the next
blood test is the engine's due date, already moved off weekends and public holidays
(engine.schedule.working_day), so the page, the calendar file, the worklist and the API agree;
the symptom names and the emergency advice are the knowledge base's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from azaguard.knowledge import Knowledge
from azaguard.service_models import PatientPage

RESULT_GROUPS = ("FBC", "LFT", "renal")
NOTHING_FOUND = "No problem found with this result."
SOMETHING_ELSE = ("other", "Something else")  # the form's last choice: the words say what it is
HOW_BAD = (("mild", "Mild"), ("moderate", "Moderate"), ("severe", "Severe"))


@dataclass(frozen=True)
class NextTest:
    due: date
    overdue: bool
    is_repeat: bool  # a repeat a finding asked for, earlier than the schedule alone
    moved_from: date | None  # the schedule's date, when it fell on a weekend or public holiday
    moved_because: str  # "a weekend" or "Christmas Day, a public holiday"; "" when not moved


@dataclass(frozen=True)
class ResultLine:
    analyte: str
    label: str
    value: float
    unit: str
    date: date
    meanings: tuple[str, ...]  # the engine's patient texts about this result, worst first
    severity: str  # the worst finding's severity, or "" when nothing was found


def next_test(kb: Knowledge, assessment: dict[str, Any], today: date) -> NextTest | None:
    """The earliest next_due of the assessment's test groups (the engine's date), or None."""
    groups = [g for g in assessment["monitoring"]["groups"] if g["next_due"]]
    if not groups:
        return None
    due = min(g["next_due"] for g in groups)
    first = [g for g in groups if g["next_due"] == due]
    moved = next((g["moved_from"] for g in first if g.get("moved_from")), None)
    moved_from = date.fromisoformat(moved) if moved else None
    return NextTest(
        due=date.fromisoformat(due),
        overdue=date.fromisoformat(due) < today,
        is_repeat=any(g.get("due_reason") == "follow-up" for g in first),
        moved_from=moved_from,
        moved_because=closed_because(kb, moved_from) if moved_from else "",
    )


def closed_because(kb: Knowledge, day: date) -> str:
    """Why a day is not a working day, in words: "a weekend", "Christmas Day, a public holiday"."""
    why = kb.calendar.closed(day) if kb.calendar else None
    if why is None:
        return ""
    return "a weekend" if why == "weekend" else f"{why}, a public holiday"


def results(kb: Knowledge, view: PatientPage) -> list[ResultLine]:
    """The latest full blood count, liver and kidney results, each explained by the engine's findings."""
    latest = {o.analyte: o for o in view.labs if o.analyte and o.value is not None}
    findings = view.assessment["findings"]  # most severe first (the engine's order)
    out = []
    for key, o in latest.items():
        analyte = kb.analytes.get(key)
        if analyte is None or analyte.group not in RESULT_GROUPS or o.value is None:
            continue
        about = [f for f in findings if f["patient_text"] and _cites(f, key, o.date)]
        meanings = tuple(dict.fromkeys(f["patient_text"] for f in about))
        out.append(
            ResultLine(
                analyte=key,
                label=analyte.label,
                value=o.value,
                unit=kb.display_unit(o.unit),
                date=o.date,
                meanings=meanings or (NOTHING_FOUND,),
                severity=about[0]["severity"] if about else "",
            )
        )
    return out


def _cites(finding: dict[str, Any], analyte: str, when: date) -> bool:
    return any(
        e.get("type") == "lab" and e.get("analyte") == analyte and e.get("date") == when.isoformat()
        for e in finding["evidence"]
    )


def symptom_choices(kb: Knowledge) -> list[tuple[str, str]]:
    """(value, plain name) for the symptom form: the knowledge base's red-flag list, then "Something else"."""
    items = [(key, item.label or key.replace("-", " ").capitalize()) for key, item in kb.symptoms.items.items()]
    return [*items, SOMETHING_ELSE]


def report_advice(assessment: dict[str, Any], today: date) -> list[str]:
    """What the engine tells the patient about symptoms reported today (worst first), for the
    confirmation: "Fever ... Call your team today and have an urgent blood test."."""
    out = []
    for f in assessment["findings"]:
        if f["category"] != "symptom" or not f["patient_text"] or f["code"] == "symptom-guidance":
            continue
        if any(e.get("type") == "symptom" and e.get("date") == today.isoformat() for e in f["evidence"]) or (
            f["code"] == "symptom-neutropenic-fever"
        ):
            out.append(f["patient_text"])
    return list(dict.fromkeys(out))
