"""CDS Hooks 2.0 services: the EHR asks at the moment of opening a chart or signing an order.

Three services (discovery at GET /cds-services):
- `azaguard-patient-view` (hook patient-view): the critical and overdue findings of a patient on
  azathioprine (or mercaptopurine), one card each, and one card counting any other warnings.
- `azaguard-order-select` / `azaguard-order-sign` (hooks order-select / order-sign): a draft
  thiopurine order checked against weight, TPMT/NUDT15, kidneys, pregnancy and co-medicines; a
  draft interacting medicine or vaccine for a patient on a thiopurine checked too. On order-sign a
  dangerous order's card is critical and offers override reasons.

What the engine reads comes from the prefetch the EHR sends; a key the EHR left out is fetched from
its FHIR server (only a server registered for that client, with the `fhirAuthorization` token when
given). If neither works, a card says what is missing and nothing is assessed: a check on partial
data would look like a clean bill of health.

The EHR's resources go through the same FHIR reader and the same `assess` as everything else; the
draft order is first normalised (tablets -> mg through the RxNorm product table, a lone
`category` object wrapped in an array) because real order screens send both.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from azaguard import domain as d
from azaguard.audit import audit
from azaguard.ehr.cds_auth import CdsAuthError, CdsCaller, remember_jti
from azaguard.engine import assess
from azaguard.knowledge import Knowledge
from azaguard.readers.fhir import ReaderError, read_bundle
from azaguard.render import cards as rc
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.store.records import now

log = logging.getLogger("azaguard.cds")

THIOPURINES = ("azathioprine", "mercaptopurine")
FETCH_TIMEOUT_SECONDS = 4.0
FETCH_MAX_PAGES = 10
# Categories a thiopurine order is checked against (the order's own safety), whatever their age.
ORDER_CATEGORIES = ("pgx", "dosing", "contraindication", "reproduction", "interaction", "screening", "vaccine")
# How order screens write "tablets": UCUM annotations, plain words, and SNOMED CT's "Tablet" (unit of
# presentation 732936001, dose form 385055001). Matched on the code and on the unit text.
TABLET_UNITS = {
    "{pill}",
    "{pills}",
    "{tbl}",
    "{tab}",
    "{tabs}",
    "{tablet}",
    "{tablets}",
    "tablet",
    "tablets",
    "tablet(s)",
    "tab",
    "tabs",
    "pill",
    "pills",
    "732936001",
    "385055001",
}
PER_DAY_UNITS = {"d": 1.0, "h": 24.0, "wk": 1 / 7, "mo": 1 / 30, "a": 1 / 365}


class HookRequestError(ValueError):
    """The request is not a usable CDS Hooks call (400): `field` names what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


# ---------------------------------------------------------------- discovery
def _observation_codes(kb: Knowledge) -> list[str]:
    codes = set(kb.loinc_index)
    p, st = kb.pgx_codes, kb.status_codes
    for group in (p.genotype_loinc, p.gene_component_loinc, p.phenotype_loinc, p.tpmt_activity_loinc):
        codes.update(group)
    for group in (st.pregnancy_loinc, st.breastfeeding_loinc, st.pregnancy_intention_loinc):
        codes.update(group)
    for group in kb.screening_codes.values():
        codes.update(group)
    return sorted(codes)


def prefetch_templates(kb: Knowledge) -> dict[str, str]:
    """What the engine reads, as FHIR searches on the patient in context."""
    p = "{{context.patientId}}"
    loinc = ",".join(f"http://loinc.org|{c}" for c in _observation_codes(kb))
    return {
        "patient": f"Patient/{p}",
        "observations": f"Observation?patient={p}&code={loinc}",
        # with the Medication a medicationReference points at (else the reader cannot name the medicine)
        "medicationRequests": f"MedicationRequest?patient={p}&_include=MedicationRequest:medication",
        "medicationStatements": f"MedicationStatement?patient={p}&_include=MedicationStatement:medication",
        "conditions": f"Condition?patient={p}",
        "immunizations": f"Immunization?patient={p}",
        "allergies": f"AllergyIntolerance?patient={p}",
    }


@dataclass(frozen=True)
class Service:
    id: str
    hook: str
    title: str
    description: str


SERVICES: dict[str, Service] = {
    s.id: s
    for s in (
        Service(
            "azaguard-patient-view",
            "patient-view",
            "azaguard: azathioprine safety",
            "Critical and overdue azathioprine monitoring findings (blood counts, liver, PGx, interactions) "
            "for a patient on azathioprine or mercaptopurine.",
        ),
        Service(
            "azaguard-order-select",
            "order-select",
            "azaguard: thiopurine order check",
            "Checks a draft azathioprine or mercaptopurine order (dose for weight, TPMT/NUDT15, kidneys, pregnancy, "
            "co-medicines) and a draft interacting medicine or live vaccine for a patient on a thiopurine.",
        ),
        Service(
            "azaguard-order-sign",
            "order-sign",
            "azaguard: thiopurine order check at signing",
            "The same checks as order-select, at signing: a dangerous order gets a critical card with "
            "override reasons.",
        ),
    )
}


def discovery(kb: Knowledge) -> dict[str, Any]:
    prefetch = prefetch_templates(kb)
    return {
        "services": [
            {
                "hook": s.hook,
                "id": s.id,
                "title": s.title,
                "description": f"{s.description} Knowledge {kb.version}.",
                "prefetch": prefetch,
                "usageRequirements": "Register the EHR's issuer and JWKS with `azaguard cds-client add` (docs/ehr.md).",
            }
            for s in SERVICES.values()
        ]
    }


# ---------------------------------------------------------------- request
@dataclass
class HookCall:
    service: Service
    patient_fhir_id: str
    user_id: str
    fhir_server: str | None
    access_token: str | None
    prefetch: dict[str, Any]
    draft_orders: list[dict[str, Any]] = field(default_factory=list)
    selections: list[str] = field(default_factory=list)


def parse_call(service_id: str, body: Any) -> HookCall:
    service = SERVICES.get(service_id)
    if service is None:
        raise LookupError(service_id)
    if not isinstance(body, dict):
        raise HookRequestError("request", "must be a JSON object")
    if body.get("hook") != service.hook:
        raise HookRequestError("hook", f"must be '{service.hook}' for service {service.id}")
    ctx = body.get("context")
    if not isinstance(ctx, dict):
        raise HookRequestError("context", "is required (an object)")
    pid = ctx.get("patientId")
    if not isinstance(pid, str) or not pid.strip():
        raise HookRequestError("context.patientId", "is required (a string)")
    user = ctx.get("userId")
    server = body.get("fhirServer")
    if server is not None and not isinstance(server, str):
        raise HookRequestError("fhirServer", "must be a string")
    auth = body.get("fhirAuthorization")
    token = auth.get("access_token") if isinstance(auth, dict) else None
    prefetch = body.get("prefetch") or {}
    if not isinstance(prefetch, dict):
        raise HookRequestError("prefetch", "must be an object")
    call = HookCall(
        service,
        pid.strip(),
        user if isinstance(user, str) else "",
        server.rstrip("/") if server else None,
        token if isinstance(token, str) else None,
        prefetch,
    )
    if service.hook in ("order-select", "order-sign"):
        drafts = ctx.get("draftOrders")
        if not isinstance(drafts, dict) or drafts.get("resourceType") != "Bundle":
            raise HookRequestError("context.draftOrders", "is required (a Bundle)")
        entries = drafts.get("entry") or []
        if not isinstance(entries, list):
            raise HookRequestError("context.draftOrders.entry", "must be an array")
        call.draft_orders = [
            e["resource"] for e in entries if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        ]
        sel = ctx.get("selections")
        call.selections = [x for x in sel if isinstance(x, str)] if isinstance(sel, list) else []
    return call


# ---------------------------------------------------------------- data
@dataclass
class Gathered:
    patient: dict[str, Any] | None
    resources: list[dict[str, Any]]
    missing: list[str]  # prefetch keys neither sent nor fetched, with why


def _incomplete(value: Any) -> bool:
    """A searchset the EHR cut short: a `next` page it did not send, or fewer entries than its total."""
    if not isinstance(value, dict) or value.get("resourceType") != "Bundle":
        return False
    if any(isinstance(lk, dict) and lk.get("relation") == "next" for lk in _list(value.get("link"))):
        return True
    total = value.get("total")
    return isinstance(total, int) and total > len(_list(value.get("entry")))


def _resources_of(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, dict):
        return []
    if value.get("resourceType") == "Bundle":
        out = []
        entries = value.get("entry")
        for e in entries if isinstance(entries, list) else []:
            res = e.get("resource") if isinstance(e, dict) else None
            if isinstance(res, dict) and res.get("resourceType") not in (None, "OperationOutcome"):
                out.append(res)
        return out
    return [value]


def _fetch(call: HookCall, caller: CdsCaller, query: str) -> tuple[Any, str]:
    """GET {fhirServer}/{query}, following `next` pages on the same server; (value, problem)."""
    server = call.fhir_server
    if not server:
        return None, "not sent, and the request named no FHIR server"
    if server not in caller.fhir_servers:
        return None, "not sent, and the request's FHIR server is not registered for this client"
    headers = {"Accept": "application/fhir+json"}
    if call.access_token:
        headers["Authorization"] = f"Bearer {call.access_token}"
    url: str | None = f"{server}/{query}"
    entries: list[Any] = []
    first: Any = None
    try:
        with httpx.Client(timeout=FETCH_TIMEOUT_SECONDS, follow_redirects=False) as client:
            for _ in range(FETCH_MAX_PAGES):
                if url is None:
                    break
                r = client.get(url, headers=headers)
                if r.status_code == 404 and "?" not in query:
                    return None, ""  # a read of a resource that does not exist
                if r.status_code != 200:
                    return None, f"not sent, and the FHIR server answered {r.status_code}"
                page = r.json()
                if first is None:
                    first = page
                if not isinstance(page, dict) or page.get("resourceType") != "Bundle":
                    return page, ""
                page_entries = page.get("entry")
                entries.extend(page_entries if isinstance(page_entries, list) else [])
                nxt = [
                    lk.get("url")
                    for lk in page.get("link") or []
                    if isinstance(lk, dict) and lk.get("relation") == "next"
                ]
                if nxt and not (isinstance(nxt[0], str) and nxt[0].startswith(server + "/")):
                    return None, "not sent, and the FHIR server's next page is on another server (not followed)"
                url = nxt[0] if nxt else None
            if url is not None:
                return None, f"not sent, and the FHIR server has more than {FETCH_MAX_PAGES} pages of it"
    except (httpx.HTTPError, ValueError) as exc:
        return None, f"not sent, and the FHIR server could not be read ({type(exc).__name__})"
    if isinstance(first, dict) and first.get("resourceType") == "Bundle":
        return {"resourceType": "Bundle", "type": "searchset", "entry": entries}, ""
    return first, ""


def gather(call: HookCall, caller: CdsCaller, kb: Knowledge) -> Gathered:
    templates = prefetch_templates(kb)
    patient: dict[str, Any] | None = None
    resources: list[dict[str, Any]] = []
    missing: list[str] = []
    for key, template in templates.items():
        value = call.prefetch.get(key)
        failed = isinstance(value, dict) and value.get("resourceType") == "OperationOutcome"
        # Not sent, the EHR's own prefetch failed, or it sent only part of a search: fetch it whole.
        if key not in call.prefetch or failed or _incomplete(value):
            value, problem = _fetch(call, caller, template.replace("{{context.patientId}}", call.patient_fhir_id))
            if problem:
                sent = "sent in part" if _incomplete(call.prefetch.get(key)) else ""
                missing.append(f"{key}: {problem.replace('not sent', sent, 1) if sent else problem}")
                continue
        if key == "patient":
            patient = value if isinstance(value, dict) and value.get("resourceType") == "Patient" else None
            if patient is None:
                missing.append("patient: the EHR sent no Patient resource")
        else:
            resources.extend(_resources_of(value))
    return Gathered(patient, resources, missing)


# ---------------------------------------------------------------- draft orders
def _per_day(dosage: dict[str, Any]) -> float | None:
    repeat = (dosage.get("timing") or {}).get("repeat") if isinstance(dosage.get("timing"), dict) else None
    if not isinstance(repeat, dict):
        return None
    freq, period, unit = repeat.get("frequency", 1), repeat.get("period", 1), repeat.get("periodUnit", "d")
    if not isinstance(freq, int | float) or not isinstance(period, int | float) or unit not in PER_DAY_UNITS:
        return None
    if freq <= 0 or period <= 0:
        return None
    return float(freq) / float(period) * PER_DAY_UNITS[unit]


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _concept(res: dict[str, Any], medications: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The medicine of an order: its medicationCodeableConcept, or the code of the Medication its
    medicationReference points at (contained, in the draft bundle, or in the prefetch)."""
    cc = res.get("medicationCodeableConcept")
    if isinstance(cc, dict):
        return cc
    ref = _dict(res.get("medicationReference")).get("reference")
    if not isinstance(ref, str):
        return {}
    if ref.startswith("#"):
        found = next((c for c in _list(res.get("contained")) if isinstance(c, dict) and c.get("id") == ref[1:]), None)
    else:
        found = medications.get(ref) or medications.get(ref.rsplit("/", 1)[-1] if "/" in ref else ref)
    concept = _dict(_dict(found).get("code"))
    display = _dict(res.get("medicationReference")).get("display")
    if not concept and isinstance(display, str):
        concept = {"text": display}
    return concept


def _codings(cc: dict[str, Any]) -> list[dict[str, Any]]:
    codings = cc.get("coding")
    return [c for c in codings if isinstance(c, dict)] if isinstance(codings, list) else []


def medications_by_reference(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Medication resources by "Medication/{id}" (and full URL, when given), for medicationReference."""
    out: dict[str, dict[str, Any]] = {}
    for r in resources:
        if r.get("resourceType") == "Medication" and isinstance(r.get("id"), str):
            out[f"Medication/{r['id']}"] = r
    return out


def normalise_draft(
    kb: Knowledge,
    res: dict[str, Any],
    patient_ref: str,
    today: date,
    medications: dict[str, dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], rc.Draft]:
    """A draft MedicationRequest as the reader expects it, and what the cards need to know of it."""
    out = copy.deepcopy(res)
    out["status"] = "draft"
    out.setdefault("intent", "order")
    out["subject"] = {"reference": patient_ref}
    if not isinstance(out.get("authoredOn"), str):
        out["authoredOn"] = today.isoformat()
    if isinstance(out.get("category"), dict):
        out["category"] = [out["category"]]
    cc = _concept(res, medications or {})
    if "medicationCodeableConcept" not in out and cc:
        # The reader is given the medicine itself: the Medication a reference points at may not be sent.
        out.pop("medicationReference", None)
        out["medicationCodeableConcept"] = cc
    codings = _codings(cc)
    product = next(
        (kb.products.codes[str(c.get("code"))] for c in codings if str(c.get("code")) in kb.products.codes), None
    )
    name = (
        (cc.get("text") if isinstance(cc.get("text"), str) else None)
        or next((c.get("display") for c in codings if isinstance(c.get("display"), str)), None)
        or (product.name if product else "medicine")
    )
    drug = product.drug if product else None
    if drug is None:
        drug = next(
            (kb.drug_for_rxnorm(str(c.get("code"))) for c in codings if kb.drug_for_rxnorm(str(c.get("code")))), None
        )
    if drug is None:
        drug = kb.drug_for_text(name)
    tablet_mg = product.mg if product else None
    per_day: float | None = None
    total = 0.0
    known = True
    dosages = out.get("dosageInstruction")
    for dosage in dosages if isinstance(dosages, list) else []:
        if not isinstance(dosage, dict):
            continue
        per_day = _per_day(dosage) or per_day
        rates = dosage.get("doseAndRate")
        for dr in rates if isinstance(rates, list) else []:
            q = dr.get("doseQuantity") if isinstance(dr, dict) else None
            if not isinstance(q, dict) or not isinstance(q.get("value"), int | float):
                continue
            units = {str(q.get(k) or "").strip().lower() for k in ("code", "unit")} - {""}
            unit = "mg" if "mg" in units else next(iter(units & TABLET_UNITS), next(iter(units), ""))
            if unit in TABLET_UNITS:
                if tablet_mg is None:
                    known = False  # tablets of an unknown strength: the reader sees no dose
                    dr["doseQuantity"] = {k: v for k, v in q.items() if k not in ("value",)}
                    continue
                q2 = {
                    "value": float(q["value"]) * float(tablet_mg),
                    "unit": "mg",
                    "system": "http://unitsofmeasure.org",
                    "code": "mg",
                }
                dr["doseQuantity"] = q2
                total += float(q["value"]) * float(tablet_mg) * (_per_day(dosage) or 0)
            elif unit == "mg":
                total += float(q["value"]) * (_per_day(dosage) or 0)
    mg_per_day = round(total, 3) if known and total > 0 else None
    return out, rc.Draft(res, drug, str(name), mg_per_day, tablet_mg, per_day)


# ---------------------------------------------------------------- the hook
@dataclass
class HookResult:
    cards: list[dict[str, Any]]
    patient_id: int | None  # the clinic's record, when matched by identifier
    codes: list[str]  # finding code (or notice kind) of each card, in order


def _clinic_patient(s: Session, patient: dict[str, Any] | None) -> int | None:
    values = [
        i["value"].strip()
        for i in _list(_dict(patient).get("identifier"))
        if isinstance(i, dict) and isinstance(i.get("value"), str) and i["value"].strip()
    ]
    if not values:
        return None
    return s.scalar(select(m.Patient.id).where(m.Patient.identifier.in_(values)).limit(1))


def _on_thiopurine(record: d.PatientRecord) -> bool:
    return any(med.drug in THIOPURINES and med.status in ("active", "on-hold") for med in record.medications)


def _key(f: d.Finding) -> tuple[str, str]:
    return (f.code, f.message)


def run_hook(
    s: Session, kb: Knowledge, call: HookCall, caller: CdsCaller, links: rc.CardLinks, today: date
) -> HookResult:
    gathered = gather(call, caller, kb)
    patient_id = _clinic_patient(s, gathered.patient)
    label = None
    if gathered.missing:
        card = rc.notice_card(
            kb,
            "azaguard could not check this patient: the EHR did not send all the data it needs",
            "azaguard checks azathioprine safety only on complete data, so it has not assessed this patient.\n\n"
            + "\n".join(f"- {x}" for x in gathered.missing)
            + "\n\nCheck the blood results, TPMT/NUDT15 status and co-medicines yourself, "
            "or open the patient in azaguard.",
            "warning",
            links,
            "data-prefetch-missing",
        )
        return HookResult([card], patient_id, ["data-prefetch-missing"])
    assert gathered.patient is not None
    patient_ref = f"Patient/{gathered.patient.get('id') or call.patient_fhir_id}"
    drafts: list[rc.Draft] = []
    draft_resources: list[dict[str, Any]] = []
    medications = medications_by_reference(gathered.resources + call.draft_orders)
    for res in call.draft_orders:
        if res.get("resourceType") == "MedicationRequest":
            normalised, draft = normalise_draft(kb, res, patient_ref, today, medications)
            drafts.append(draft)
            draft_resources.append(normalised)
        elif res.get("resourceType") != "Medication":
            draft_resources.append(res)  # other draft orders (vaccines as Immunization...): the reader decides
    base = [r for r in gathered.resources if r.get("resourceType") != "Patient"]
    try:
        baseline = read_bundle(_bundle(gathered.patient, base), kb)
        record, ordered = _with_drafts(baseline, gathered.patient, base, draft_resources, kb)
    except ReaderError as exc:
        card = rc.notice_card(
            kb,
            "azaguard could not read this patient's record from the EHR",
            f"The EHR's data has a problem azaguard cannot read past, so it has not assessed this patient:\n\n"
            f"- {exc}\n\nCheck the patient's azathioprine safety yourself, or open the patient in azaguard.",
            "warning",
            links,
            "data-unreadable",
        )
        return HookResult([card], patient_id, ["data-unreadable"])
    # What the reader made of the draft orders decides, as for every other medicine (a coded
    # Medication, a brand name in free text...), not only what the card code recognised.
    thiopurine_draft = any(med.drug in THIOPURINES for med in ordered) or any(dr.drug in THIOPURINES for dr in drafts)
    if not (_on_thiopurine(baseline) or thiopurine_draft):
        return HookResult([], patient_id, [])  # azathioprine is not part of this patient's care
    result = assess(record, kb, today)
    if call.service.hook == "patient-view":
        return _patient_view(kb, result, links, patient_id, label)
    before = {_key(f) for f in assess(baseline, kb, today).findings} if draft_resources else set()
    return _order(kb, call, result, before, drafts, thiopurine_draft, links, patient_ref, patient_id)


def _with_drafts(
    baseline: d.PatientRecord,
    patient: dict[str, Any],
    base: list[dict[str, Any]],
    drafts: list[dict[str, Any]],
    kb: Knowledge,
) -> tuple[d.PatientRecord, tuple[d.MedicationEntry, ...]]:
    """The record with the draft orders added: the drafts read on their own (with the Medication
    resources they may point at) and appended, so the EHR's record is read once, not twice."""
    if not drafts:
        return baseline, ()
    meds = [r for r in base if r.get("resourceType") == "Medication"]
    extra = read_bundle(_bundle(patient, meds + drafts), kb)
    merged = {
        f.name: getattr(baseline, f.name) + getattr(extra, f.name)
        for f in dataclasses.fields(baseline)
        if isinstance(getattr(baseline, f.name), tuple)
    }
    return dataclasses.replace(baseline, **merged), extra.medications


def _bundle(patient: dict[str, Any], resources: list[dict[str, Any]]) -> dict[str, Any]:
    seen: set[tuple[str, str]] = set()
    entries = [{"resource": patient}]
    for r in resources:
        rid = r.get("id")
        key = (str(r.get("resourceType")), str(rid))
        if rid is not None and key in seen:
            continue
        seen.add(key)
        entries.append({"resource": r})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def _patient_view(
    kb: Knowledge, a: d.Assessment, links: rc.CardLinks, patient_id: int | None, label: str | None
) -> HookResult:
    shown = [
        f for f in a.findings if f.severity == "critical" or (f.severity == "warning" and f.category == "monitoring")
    ]
    cards = [rc.finding_card(kb, f, links, patient_label=label) for f in shown]
    codes = [f.code for f in shown]
    rest = [f for f in a.findings if f.severity == "warning" and f not in shown]
    if rest:
        cards.append(_more_card(kb, rest, links))
        codes.append("more-findings")
    return HookResult(cards, patient_id, codes)


def _more_card(kb: Knowledge, rest: list[d.Finding], links: rc.CardLinks) -> dict[str, Any]:
    n = len(rest)
    return rc.notice_card(
        kb,
        f"{n} more azathioprine warning{'s' if n != 1 else ''} in azaguard",
        "Not shown as cards here, never hidden:\n\n" + "\n".join(f"- {f.message}" for f in rest),
        "info",
        links,
        "more-findings",
        tuple(dict.fromkeys(k for f in rest for k in rc.source_keys(f.sources))),
    )


def _order(
    kb: Knowledge,
    call: HookCall,
    a: d.Assessment,
    before: set[tuple[str, str]],
    drafts: list[rc.Draft],
    thiopurine_draft: bool,
    links: rc.CardLinks,
    patient_ref: str,
    patient_id: int | None,
) -> HookResult:
    def relevant(f: d.Finding) -> bool:
        if f.severity == "critical":
            return True  # never folded into a summary card, whatever it is about
        if f.severity == "info" and f.category not in ("pgx", "dosing"):
            return False
        if _key(f) not in before:
            return True  # the draft order caused or changed it
        return thiopurine_draft and f.category in ORDER_CATEGORIES

    shown = [f for f in a.findings if relevant(f)]
    sign = call.service.hook == "order-sign"
    cards: list[dict[str, Any]] = []
    codes: list[str] = []
    for dr in drafts:
        if dr.drug in THIOPURINES and dr.mg_per_day is None:
            # Never a silent pass: a dose azaguard could not turn into mg/day was not checked.
            cards.append(
                rc.notice_card(
                    kb,
                    f"azaguard could not work out the dose of this {dr.name} order: not checked",
                    "The order's dose could not be turned into mg per day (a unit, tablet strength or frequency "
                    "azaguard does not know), so it was not checked against the patient's weight, TPMT/NUDT15 "
                    "status, kidneys or co-medicines. Check the dose yourself, or write it in mg with a daily "
                    "frequency.",
                    "warning",
                    links,
                    "data-draft-dose-unreadable",
                )
            )
            codes.append("data-draft-dose-unreadable")
    for f in shown:
        suggestions = _suggestions(kb, f, a, drafts, patient_ref, thiopurine_draft)
        cards.append(rc.finding_card(kb, f, links, suggestions, override=sign and f.severity == "critical"))
    codes += [f.code for f in shown]
    rest = [f for f in a.findings if f.severity in ("critical", "warning") and f not in shown]
    if rest:
        cards.append(_more_card(kb, rest, links))
        codes.append("more-findings")
    return HookResult(cards, patient_id, codes)


def _suggestions(
    kb: Knowledge, f: d.Finding, a: d.Assessment, drafts: list[rc.Draft], patient_ref: str, thiopurine_draft: bool
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    thio = next((dr for dr in drafts if dr.drug in THIOPURINES), None)
    others = [dr for dr in drafts if dr.drug not in THIOPURINES]
    text = f.message.lower()
    named = [dr for dr in others if (dr.drug and dr.drug.lower() in text) or dr.name.lower() in text]
    other = named[0] if named else (others[0] if len(others) == 1 else None)
    if f.category == "dosing" and thio and a.dose.plan and f.severity != "info":
        target = a.dose.plan[0].mg_per_day
        if thio.mg_per_day is None or abs(target - thio.mg_per_day) > 1e-6:
            change = rc.change_dose(thio, target)
            if change:
                out.append(change)
    if f.severity == "critical" and f.category in ("pgx", "contraindication", "reproduction") and thio:
        out.append(rc.remove_draft(thio))
    if f.severity == "critical" and f.category in ("interaction", "vaccine") and other:
        out.append(rc.remove_draft(other))
    if f.follow_up and f.date and f.severity != "info":
        out.append(rc.order_test(kb, f.follow_up.group, f.follow_up.days, f.date, patient_ref))
    return out


# ---------------------------------------------------------------- storing, feedback
def record_cards(db: Database, caller: CdsCaller, service_id: str, result: HookResult, user_id: str) -> None:
    """One write: the token id (a replay fails here, on the primary key), the cards, the audit row."""
    try:
        _record_cards(db, caller, service_id, result, user_id)
    except IntegrityError as exc:
        raise CdsAuthError("the token's jti was used before (a replay)", caller.iss) from exc


def _record_cards(db: Database, caller: CdsCaller, service_id: str, result: HookResult, user_id: str) -> None:
    with db.write() as s:
        remember_jti(s, caller)
        t = now()
        for card, code in zip(result.cards, result.codes, strict=True):
            s.add(
                m.CdsCard(
                    uuid=card["uuid"],
                    service_id=service_id,
                    patient_id=result.patient_id,
                    code=code[:80],
                    indicator=card["indicator"],
                    summary=card["summary"][:200],
                    client_iss=caller.iss[:400],
                    issued_at=t,
                )
            )
        audit(
            s,
            caller,
            "read",
            f"cds:{service_id}",
            result.patient_id,
            f"{len(result.cards)} cards ({', '.join(result.codes)[:200]}); EHR user {user_id[:80]}",
            channel="cds",
        )


@dataclass(frozen=True)
class FeedbackItem:
    card: str
    outcome: str
    outcome_at: datetime
    reason_code: str
    reason_system: str
    reason_display: str
    comment: str
    accepted: list[str]


def parse_feedback(body: Any) -> list[FeedbackItem]:
    if not isinstance(body, dict) or not isinstance(body.get("feedback"), list):
        raise HookRequestError("feedback", "is required (an array)")
    items = []
    for i, fb in enumerate(body["feedback"]):
        where = f"feedback[{i}]"
        if not isinstance(fb, dict):
            raise HookRequestError(where, "must be an object")
        card = fb.get("card")
        outcome = fb.get("outcome")
        if not isinstance(card, str) or not card or len(card) > 64:
            raise HookRequestError(f"{where}.card", "must be the card's uuid")
        if outcome not in ("accepted", "overridden"):
            raise HookRequestError(f"{where}.outcome", "must be 'accepted' or 'overridden'")
        ts = fb.get("outcomeTimestamp")
        try:
            when = datetime.fromisoformat(ts.replace("Z", "+00:00")) if isinstance(ts, str) else now()
            if when.tzinfo is not None:
                when = when.astimezone().replace(tzinfo=None)
        except (ValueError, OverflowError) as exc:
            raise HookRequestError(f"{where}.outcomeTimestamp", "must be an ISO 8601 instant") from exc
        reason = _dict(fb.get("overrideReason"))
        coding = _dict(reason.get("reason"))
        accepted = [
            str(x.get("id"))[:80] for x in fb.get("acceptedSuggestions") or [] if isinstance(x, dict) and x.get("id")
        ]
        code = str(coding.get("code") or "")[:80]
        display = str(coding.get("display") or "")[:400] or rc.OVERRIDE_DISPLAY.get(code, "")
        items.append(
            FeedbackItem(
                card,
                outcome,
                when.replace(microsecond=0),
                code,
                str(coding.get("system") or "")[:400],
                display,
                str(reason.get("userComment") or "")[:2000],
                accepted,
            )
        )
    return items


def record_feedback(db: Database, caller: CdsCaller, service_id: str, items: list[FeedbackItem]) -> int:
    """Store each outcome once (a resend of the same outcome is not counted twice); audited."""
    try:
        return _record_feedback(db, caller, service_id, items)
    except IntegrityError as exc:
        raise CdsAuthError("the token's jti was used before (a replay)", caller.iss) from exc


def _record_feedback(db: Database, caller: CdsCaller, service_id: str, items: list[FeedbackItem]) -> int:
    stored = 0
    with db.write() as s:
        remember_jti(s, caller)
        for it in items:
            card = s.get(m.CdsCard, it.card)
            patient_id = card.patient_id if card else None
            exists = s.scalar(
                select(m.CdsFeedback.id).where(
                    m.CdsFeedback.card_uuid == it.card,
                    m.CdsFeedback.outcome_at == it.outcome_at,
                    m.CdsFeedback.outcome == it.outcome,
                )
            )
            if exists is None:
                s.add(
                    m.CdsFeedback(
                        card_uuid=it.card,
                        service_id=service_id,
                        patient_id=patient_id,
                        outcome=it.outcome,
                        outcome_at=it.outcome_at,
                        reason_code=it.reason_code,
                        reason_system=it.reason_system,
                        reason_display=it.reason_display,
                        comment=it.comment,
                        accepted_suggestions=it.accepted,
                        client_iss=caller.iss[:400],
                        received_at=now(),
                    )
                )
                stored += 1
            audit(
                s,
                caller,
                "write",
                f"cds-feedback:{service_id}",
                patient_id,
                f"{it.outcome} card {it.card}" + (f" ({it.reason_code})" if it.reason_code else ""),
                channel="cds",
            )
    return stored
