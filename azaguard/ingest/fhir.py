"""FHIR R4 Bundles (JSON) and FHIR Bulk Data NDJSON -> import items.

Resources are read one at a time with the same reader `azaguard assess` uses, so a bundle
imports to exactly the record it assesses to; a malformed resource is rejected alone.
"""

from __future__ import annotations

import json
from typing import Any

from azaguard import domain as d
from azaguard.ingest.items import Item, Parsed, Reject
from azaguard.knowledge import Knowledge
from azaguard.readers.fhir import FhirReader, ReaderError

_KIND = {
    d.LabResult: "lab",
    d.GenotypeResult: "genotype",
    d.ActivityResult: "tpmt-activity",
    d.StatusObservation: "status",
    d.Symptom: "symptom",
    d.MedicationEntry: "medication",
    d.Condition: "condition",
    d.Allergy: "allergy",
    d.Vaccination: "immunization",
}


def parse_bundle_text(text: str, kb: Knowledge, source: str = "fhir", patient: str | None = None) -> Parsed:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return Parsed("fhir", [], [Reject(source, f"not valid JSON (line {exc.lineno}: {exc.msg})", text[:20000])])
    except (ValueError, RecursionError):
        return Parsed("fhir", [], [Reject(source, "JSON too deeply nested or with a number too long", text[:20000])])
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        return Parsed("fhir", [], [Reject(source, "not a FHIR resource or Bundle", text[:20000])])
    if data["resourceType"] != "Bundle":  # a single resource (e.g. re-processed from quarantine)
        known = {_subject(data) or "": patient} if patient else {}
        return parse_resources([(source, data)], kb, "fhir", known)
    entries = data.get("entry")
    if not isinstance(entries, list):
        return Parsed("fhir", [], [Reject(source, "Bundle.entry is missing or not an array", text[:20000])])
    resources: list[tuple[str, Any]] = []
    rejects = []
    for i, e in enumerate(entries):
        if isinstance(e, dict) and isinstance(e.get("resource"), dict):
            resources.append((f"{source} Bundle.entry[{i}]", e["resource"]))
        else:
            rejects.append(Reject(f"{source} Bundle.entry[{i}]", "entry has no resource object", json.dumps(e)[:20000]))
    parsed = parse_resources(resources, kb, "fhir")
    parsed.rejects[:0] = rejects
    return parsed


def parse_ndjson_text(text: str, kb: Knowledge, source: str = "ndjson") -> Parsed:
    resources: list[tuple[str, Any]] = []
    originals: dict[str, str] = {}
    rejects = []
    # NDJSON lines end in LF (CRLF accepted); other Unicode line breaks may sit inside strings.
    for n, line in enumerate(text.replace("\r\n", "\n").split("\n"), 1):
        if not line.strip():
            continue
        try:
            res = json.loads(line)
        except json.JSONDecodeError as exc:
            rejects.append(Reject(f"{source} line {n}", f"not valid JSON ({exc.msg})", line[:20000]))
            continue
        except (ValueError, RecursionError):  # a number too long or nesting too deep: refuse the line only
            rejects.append(
                Reject(f"{source} line {n}", "JSON too deeply nested or with a number too long", line[:20000])
            )
            continue
        if not isinstance(res, dict):
            rejects.append(Reject(f"{source} line {n}", "line is not a FHIR resource object", line[:20000]))
            continue
        resources.append((f"{source} line {n}", res))
        originals[f"{source} line {n}"] = line.strip()  # kept verbatim, as received
    parsed = parse_resources(resources, kb, "ndjson", originals=originals)
    parsed.rejects[:0] = rejects
    return parsed


def _subject(res: dict[str, Any]) -> str | None:
    for key in ("subject", "patient"):
        ref = res.get(key)
        if isinstance(ref, dict):
            if isinstance(ref.get("reference"), str):
                return str(ref["reference"]).removeprefix("Patient/")
            ident = ref.get("identifier")
            if isinstance(ident, dict) and isinstance(ident.get("value"), str):
                return str(ident["value"])
    return None


def parse_resources(
    resources: list[tuple[str, Any]],
    kb: Knowledge,
    fmt: str,
    known: dict[str, str] | None = None,
    originals: dict[str, str] | None = None,
) -> Parsed:
    reader = FhirReader(kb)
    items: list[Item] = []
    rejects: list[Reject] = []
    # A NUL only appears once the JSON escape is decoded; no field may hold one (PostgreSQL refuses it).
    clean = []
    for ref, res in resources:
        dumped = json.dumps(res)
        if "\\u0000" in dumped:
            rejects.append(Reject(ref, "text contains a NUL character, which no field may hold", dumped[:20000]))
        else:
            clean.append((ref, res))
    resources = clean
    # Patients first, so references by resource id resolve to the patient's identifier.
    id_to_identifier: dict[str, str] = {k: v for k, v in (known or {}).items() if k and v}
    for ref, res in resources:
        if res.get("resourceType") == "Patient":
            try:
                demo = FhirReader.demographics(res, ref)
            except ReaderError as exc:
                rejects.append(Reject(ref, str(exc), json.dumps(res)[:20000]))
                continue
            if isinstance(res.get("id"), str):
                id_to_identifier[res["id"]] = demo["identifier"]
            original = originals[ref] if originals else json.dumps(res)
            items.append(Item("patient", demo["identifier"], f"fhir:Patient/{demo['identifier']}", demo, ref, original))
        elif res.get("resourceType") == "Medication":
            reader.read_resource(res, ref)
    for ref, res in resources:
        rtype = res.get("resourceType")
        if rtype in ("Patient", "Medication"):
            continue
        original = originals[ref] if originals else json.dumps(res)
        if rtype not in FhirReader._HANDLED:
            rejects.append(Reject(ref, f"resource type {rtype!r} is not imported", original[:20000]))
            continue
        subject = _subject(res)
        patient = id_to_identifier.get(subject or "", subject)
        if not patient:
            rejects.append(Reject(ref, "no subject/patient reference: the patient is unknown", original[:20000]))
            continue
        rid = res.get("id") if isinstance(res.get("id"), str) else None
        status = res.get("status")
        # Source keys are scoped by patient: resource ids are only unique within one server.
        key_base = f"fhir:{patient}:{rtype}/{rid}" if rid else f"fhir:{patient}:{rtype}/{_hash(json.dumps(res))}"
        if rtype == "Observation" and status == "entered-in-error":
            if rid:  # the source withdraws a result it sent: the stored one stops being current
                items.append(Item("lab", patient, key_base, None, ref, original, correction=True))
            else:
                rejects.append(Reject(ref, "entered-in-error Observation without an id", original[:20000], patient))
            continue
        if rtype == "Observation" and status in ("registered", "cancelled", "unknown"):
            rejects.append(Reject(ref, f"Observation status '{status}' carries no result", original[:20000], patient))
            continue
        try:
            produced = reader.read_resource(res, ref)
        except ReaderError as exc:
            rejects.append(Reject(ref, str(exc), original[:20000], patient))
            continue
        if not produced:
            rejects.append(
                Reject(ref, "unknown code: nothing azathioprine monitoring reads", original[:20000], patient)
            )
            continue
        for i, obj in enumerate(produced):
            key = key_base if len(produced) == 1 else f"{key_base}#{i}"
            if isinstance(obj, d.RejectedResult):
                why = (
                    f"unknown unit '{obj.unit}'" if obj.reason == "unknown-unit" else f"no usable value ({obj.detail})"
                )
                rejects.append(Reject(ref, f"{obj.analyte}: {why}", original[:20000], patient))
                continue
            if isinstance(obj, tuple):  # screening: (key, date), then (key, date, positive?) when readable
                if len(obj) == 3:
                    items = [i for i in items if not (i.kind == "screening" and i.source_key == key_base)]
                    items.append(Item("screening", patient, key_base, obj, ref, original))
                else:
                    items.append(Item("screening", patient, key_base, (*obj, None), ref, original))
                continue
            kind = _KIND.get(type(obj))
            if kind is None:
                continue
            items.append(
                Item(
                    kind,  # type: ignore[arg-type]
                    patient,
                    key,
                    obj,
                    ref,
                    original,
                    correction=status in ("corrected", "amended"),
                    preliminary=rtype == "Observation" and status == "preliminary",
                )
            )
    return Parsed(fmt, items, rejects)


def _hash(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode()).hexdigest()[:16]
