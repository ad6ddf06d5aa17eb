"""Assessment -> CDS Hooks 2.0 cards (JSON dicts).

One finding is one card: the summary a clinician reads in the EHR's order screen (<= 140
characters, the specification's limit), the indicator from the finding's severity, a markdown
detail that says what to do and why (action, evidence date, CTCAE grade, sources, knowledge
version), the knowledge source, suggestions the EHR can apply (change or remove the draft order,
order the repeat test the finding asks for) and a SMART link to the patient's page in azaguard.

Pure: the caller supplies the assessment, the knowledge, the draft order and the URLs.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from azaguard import domain as d
from azaguard.knowledge import Knowledge

SUMMARY_MAX = 140  # CDS Hooks 2.0: "summary ... SHOULD be under 140 characters"
INDICATOR = {"critical": "critical", "warning": "warning", "info": "info"}
FINDING_SYSTEM = "urn:azaguard:finding"  # the finding codes of docs/assessment-json.md
OVERRIDE_SYSTEM = "urn:azaguard:cds-override-reason"
# Why a clinician may go ahead with a dangerous order (offered on critical order-sign cards). Not
# clinical content: the choices a clinician records, so the clinic can count and review overrides.
OVERRIDE_REASONS: tuple[tuple[str, str], ...] = (
    ("specialist-advised", "Specialist team has advised this order"),
    ("already-tolerated", "Patient already tolerates this dose or combination"),
    ("monitoring-arranged", "Benefit outweighs risk; extra blood monitoring arranged"),
    ("information-incorrect", "The information azaguard used is wrong or out of date"),
)
OVERRIDE_DISPLAY = dict(OVERRIDE_REASONS)  # EHRs send back the code alone


@dataclass(frozen=True)
class Draft:
    """The draft order a card is about: the resource as the EHR sent it, normalised to mg."""

    resource: dict[str, Any]  # the MedicationRequest (as received, for update suggestions)
    drug: str | None  # knowledge drug key (azathioprine, allopurinol, ...) or None
    name: str
    mg_per_day: float | None
    tablet_mg: float | None  # strength of one tablet (RxNorm product), when known
    per_day: float | None  # administrations per day


@dataclass(frozen=True)
class CardLinks:
    smart_launch_url: str | None  # our SMART launch URL: the card opens the patient's page
    sources_url: str  # a page listing the knowledge sources, anchors by source key


def summary(text: str, prefix: str = "") -> str:
    """The first sentence of a finding, cut at a word to fit 140 characters."""
    first = text.split(". ")[0].strip().rstrip(".")
    out = f"{prefix}{first}"
    if len(out) <= SUMMARY_MAX:
        return out
    cut = out[: SUMMARY_MAX - 1].rsplit(" ", 1)[0].rstrip(",;:-")
    return cut + "…"


def source_keys(cited: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The source keys of a finding's citations ("KEY: citation" -> "KEY")."""
    return tuple(dict.fromkeys(c.split(":", 1)[0].strip() for c in cited))


def _source(kb: Knowledge, keys: tuple[str, ...] | list[str], links: CardLinks) -> dict[str, Any]:
    first = keys[0] if keys else ""
    src = kb.sources.get(first)
    url = src.url if src and src.url else f"{links.sources_url}#{first}"
    label = f"azaguard {kb.meta.version}: " + "; ".join(keys) if keys else f"azaguard {kb.meta.version}"
    return {"label": label[:200], "url": url}


def _detail(kb: Knowledge, f: d.Finding) -> str:
    # The message opens the detail unless the summary already says all of it.
    lines = [] if summary(f.message) == f.message.strip().rstrip(".") else [f.message, ""]
    lines.append(f"**What to do:** {f.action}")
    if f.date:
        lines.append(f"**Based on data of:** {f.date.isoformat()}")
    if f.ctcae:
        grade = f.ctcae.get("grade")
        term = f.ctcae.get("term", "")
        if grade is not None:
            lines.append(f"**CTCAE v5:** {term} grade {grade}".rstrip())
    lines.append("")
    lines.append("**Why (sources):**")
    lines.extend(f"- {c}" for c in f.sources)  # already cited: "KEY: citation"
    lines.append("")
    lines.append(f"_Decision support from azaguard, knowledge {kb.version}. Finding `{f.code}` ({f.category})._")
    return "\n".join(lines)


def _link(links: CardLinks, patient_label: str | None) -> list[dict[str, Any]]:
    if not links.smart_launch_url:
        return []
    link: dict[str, Any] = {"label": "Open in azaguard", "url": links.smart_launch_url, "type": "smart"}
    if patient_label:
        link["appContext"] = patient_label
    return [link]


def finding_card(
    kb: Knowledge,
    f: d.Finding,
    links: CardLinks,
    suggestions: list[dict[str, Any]] | None = None,
    override: bool = False,
    patient_label: str | None = None,
) -> dict[str, Any]:
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": summary(f.message),
        "indicator": INDICATOR[f.severity],
        "detail": _detail(kb, f),
        "source": {**_source(kb, source_keys(f.sources), links), "topic": {"system": FINDING_SYSTEM, "code": f.code}},
        "links": _link(links, patient_label),
    }
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = "at-most-one"
    if override:
        card["overrideReasons"] = [{"system": OVERRIDE_SYSTEM, "code": c, "display": t} for c, t in OVERRIDE_REASONS]
    return card


def notice_card(
    kb: Knowledge,
    text: str,
    detail: str,
    indicator: str,
    links: CardLinks,
    code: str,
    keys: tuple[str, ...] = (),
    patient_label: str | None = None,
) -> dict[str, Any]:
    """A card that is not one finding: data azaguard could not get, or findings not shown here.
    `code` names the kind (topic), as a finding code does on a finding's card."""
    body = f"{detail}\n\n_Decision support from azaguard, knowledge {kb.version}._"
    return {
        "uuid": str(uuid.uuid4()),
        "summary": summary(text),
        "indicator": indicator,
        "detail": body,
        "source": {**_source(kb, keys, links), "topic": {"system": FINDING_SYSTEM, "code": code}},
        "links": _link(links, patient_label),
    }


# ---------------------------------------------------------------- suggestions
def _ref(draft: Draft) -> str:
    return f"MedicationRequest/{draft.resource.get('id', '')}"


def remove_draft(draft: Draft) -> dict[str, Any]:
    return {
        "label": f"Remove the {draft.name} order"[:140],
        "uuid": str(uuid.uuid4()),
        "isRecommended": True,
        "actions": [
            {"type": "delete", "description": f"Remove the draft {draft.name} order", "resourceId": [_ref(draft)]}
        ],
    }


def change_dose(draft: Draft, mg_per_day: float) -> dict[str, Any] | None:
    """Replace the draft's dose with `mg_per_day`, in whole tablets when the strength allows."""
    per_day = draft.per_day or 1.0
    per_dose = mg_per_day / per_day
    resource = copy.deepcopy(draft.resource)
    if isinstance(resource.get("category"), dict):  # some EHRs send one object; R4 wants an array
        resource["category"] = [resource["category"]]
    if draft.tablet_mg and (per_dose / draft.tablet_mg).is_integer():
        quantity = {
            "value": per_dose / draft.tablet_mg,
            "unit": "tablet",
            "system": "http://unitsofmeasure.org",
            "code": "{tbl}",
        }
        said = f"{int(per_dose / draft.tablet_mg)} x {draft.tablet_mg:g} mg tablet"
    else:
        quantity = {"value": per_dose, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}
        said = f"{per_dose:g} mg"
    dosages = resource.get("dosageInstruction")
    if not isinstance(dosages, list) or not dosages or not isinstance(dosages[0], dict):
        dosages = [{}]
    first = dict(dosages[0])
    first["doseAndRate"] = [{"doseQuantity": quantity}]
    if "timing" not in first:
        first["timing"] = {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}}
    first["text"] = f"{said} {_times(per_day)} ({mg_per_day:g} mg/day)"
    resource["dosageInstruction"] = [first]
    return {
        "label": f"Change the order to {mg_per_day:g} mg/day ({said} {_times(per_day)})"[:140],
        "uuid": str(uuid.uuid4()),
        "isRecommended": True,
        "actions": [
            {
                "type": "update",
                "description": f"Set the {draft.name} dose to {mg_per_day:g} mg/day",
                "resource": resource,
            }
        ],
    }


def _times(per_day: float) -> str:
    return {1.0: "once a day", 2.0: "twice a day", 3.0: "three times a day", 4.0: "four times a day"}.get(
        per_day, f"{per_day:g} times a day"
    )


def order_test(kb: Knowledge, group: str, days: int, since: date, patient_ref: str) -> dict[str, Any]:
    """Order the repeat test a finding asks for (a draft ServiceRequest the clinician can sign)."""
    panel = kb.schedule.panels.get(group)
    label = panel.label if panel else group
    code: dict[str, Any] = {"text": label}
    oc = kb.order_codes.get(group)
    if oc:
        code["coding"] = [{"system": "http://loinc.org", "code": oc.loinc, "display": oc.display}]
    by = since + timedelta(days=days)
    resource = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "code": code,
        "subject": {"reference": patient_ref},
        "occurrencePeriod": {"end": by.isoformat()},
        "note": [{"text": f"Repeat {label} by {by.isoformat()} (azaguard, knowledge {kb.version})"}],
    }
    return {
        "label": f"Order a {label} by {by.isoformat()}"[:140],
        "uuid": str(uuid.uuid4()),
        "actions": [{"type": "create", "description": f"Order a {label}", "resource": resource}],
    }
