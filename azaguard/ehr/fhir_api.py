"""The FHIR R4 API of what azaguard knows (docs/ehr.md section 3): the use cases behind azaguard.api.fhir.

Read-only. A request names a resource (or a patient to search by); this module finds the patient the
resource belongs to, authorises and audits the read through azaguard.service (channel "fhir": one
audit row per request, the same NotFound for an id that does not exist and for one the user may not
see), takes the assessment the REST API serves (the stored one, re-assessed only when stale) and
hands it, with the record's basics, to the pure renderer azaguard.render.fhir. So the FHIR answer,
the patient page and the REST API always say the same thing.

Resource ids are derived from stored rows, so they stay the same across requests: a DetectedIssue or
Flag is its finding instance's id, a stored result `obs-<row id>`, a stored genotype
`genotype-<row id>`, the CarePlan `monitoring-<patient id>`, azaguard's TPMT/NUDT15 calls
`pgx-<patient id>-<gene>-phenotype` and `pgx-<patient id>-implication`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import select
from sqlalchemy.orm import Session

from azaguard import __version__, service
from azaguard import domain as d
from azaguard import worklist as wl
from azaguard.knowledge import Knowledge
from azaguard.render import fhir as fr
from azaguard.render.json import assessment_from_dict
from azaguard.service_models import PatientOut, Principal
from azaguard.store import models as m

CHANNEL = "fhir"
MAX_ID = 2**31 - 1  # row ids are 32-bit: a larger one is simply not found, never a database error
TYPES = tuple(fr.SEARCH_PARAMS)
JSON_FORMATS = ("json", "application/json", "application/fhir+json")
# Parameters every search accepts besides its type's own (fr.SEARCH_PARAMS): paging, FHIR's general
# _format (JSON only) and _pretty (ignored), and the total a client may ask for - _total (FHIR) or
# _totalMethod (fhirpy's count()) - which is always given exactly, so both are accepted and ignored.
GENERAL_PARAMS = ("_count", "_offset", "_format", "_pretty", "_total", "_totalMethod")
EVERYTHING_PARAMS = ("_type", *GENERAL_PARAMS)
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_PATIENT_REF = re.compile(r"^(?:.*/)?(?:Patient/)?([^/]+)$")


class FhirProblem(Exception):
    """A request the FHIR API answers with an OperationOutcome: HTTP status, FHIR issue type, words."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _row_id(text: str) -> int | None:
    return int(text) if text.isdigit() and 0 < int(text) <= MAX_ID else None


def check_format(params: Sequence[tuple[str, str]]) -> None:
    """JSON is the one format served; asking for another (XML, Turtle) is a 406."""
    for name, value in params:
        if name == "_format" and value.strip().split(";")[0] not in JSON_FORMATS:
            raise FhirProblem(406, "not-supported", f"_format {value[:40]!r}: this server answers in JSON only")


def capability_statement(kb: Knowledge, base: str) -> dict[str, Any]:
    return fr.capability_statement(kb.version, __version__, base, date.today())


# ---------------------------------------------------------------- from a resource id to its patient
def _patient_of(s: Session, resource_type: str, resource_id: str) -> int | None:
    """The patient a resource id belongs to (None: the id names nothing azaguard holds)."""
    if not _ID.fullmatch(resource_id):
        return None
    if resource_type == "Patient":
        return _row_id(resource_id)
    if resource_type in ("DetectedIssue", "Flag"):
        n = _row_id(resource_id)
        return None if n is None else s.scalar(select(m.FindingRow.patient_id).where(m.FindingRow.id == n))
    found = re.fullmatch(r"monitoring-(\d+)", resource_id)
    if resource_type == "CarePlan":
        return _row_id(found.group(1)) if found else None
    if found := re.fullmatch(r"pgx-(\d+)-(?:tpmt-phenotype|nudt15-phenotype|implication)", resource_id):
        return _row_id(found.group(1))
    if found := re.fullmatch(r"obs-(\d+)", resource_id):
        n = _row_id(found.group(1))
        return None if n is None else s.scalar(select(m.Observation.patient_id).where(m.Observation.id == n))
    if found := re.fullmatch(r"genotype-(\d+)", resource_id):
        n = _row_id(found.group(1))
        return None if n is None else s.scalar(select(m.Genotype.patient_id).where(m.Genotype.id == n))
    return None


def _authorise(
    s: Session, who: Principal, patient_id: int | None, resource: str, asked: str, detail: str = ""
) -> PatientOut:
    try:
        return service.authorise_read(s, who, patient_id, resource, CHANNEL, asked=asked[:120], detail=detail[:400])
    except service.NotFound:
        raise FhirProblem(404, "not-found", f"{asked[:120]} does not exist or you may not see it") from None


# ---------------------------------------------------------------- what the renderer is given
def patient_view(s: Session, kb: Knowledge, p: PatientOut) -> fr.PatientView:
    """The assessment the REST API serves, its finding instances, the current results and genotypes.
    Call only after the read has been authorised."""
    pid = p.id
    a = assessment_from_dict(service.current_assessment(s, kb, pid))
    rows = list(s.scalars(select(m.FindingRow).where(m.FindingRow.patient_id == pid).order_by(m.FindingRow.id)))
    by_print = {r.fingerprint: r for r in rows}
    findings: list[fr.StoredFinding] = []
    seen: set[str] = set()
    used: set[int] = set()
    for f in a.findings:
        fp = wl.fingerprint(f)
        if fp in seen:  # the worklist keeps one instance per fingerprint
            continue
        seen.add(fp)
        row = by_print.get(fp)
        if row is None or row.state == "resolved":
            row = next((r for r in rows if r.code == f.code and r.state != "resolved" and r.id not in used), None)
        if row is None:
            raise RuntimeError("a finding of the stored assessment has no finding instance")
        used.add(row.id)
        findings.append(fr.StoredFinding(row.id, row.state, row.first_seen, f))
    o = m.Observation
    columns = (o.id, o.kind, o.analyte, o.code, o.value, o.unit, o.value_text, o.below_detection, o.ref_low)
    stored = s.execute(
        select(*columns, o.ref_high, o.effective, o.status)
        .where(o.patient_id == pid, o.current.is_(True), o.kind.in_(("lab", "tpmt-activity")))
        .order_by(o.effective, o.id)
    )
    results = tuple(
        fr.StoredResult(
            id=r.id,
            kind=r.kind,
            analyte=r.analyte,
            code=r.code or "",
            value=r.value,
            unit=r.unit,
            method=(r.value_text or "") if r.kind == "tpmt-activity" else "",  # the laboratory's assay
            below_detection=bool(r.below_detection),
            ref_low=r.ref_low,
            ref_high=r.ref_high,
            effective=r.effective,
            status=r.status,
        )
        for r in stored
    )
    g = m.Genotype
    genotypes = tuple(
        d.GenotypeResult(r.gene, r.diplotype, r.phenotype, r.effective, str(r.id))
        for r in s.execute(
            select(g.id, g.gene, g.diplotype, g.phenotype, g.effective).where(g.patient_id == pid).order_by(g.id)
        )
    )
    basics = fr.PatientBasics(p.id, p.identifier, p.name, p.birth_date, p.sex)
    return fr.PatientView(basics, a, tuple(findings), results, genotypes)


# ---------------------------------------------------------------- read
def read(s: Session, kb: Knowledge, who: Principal, resource_type: str, resource_id: str) -> dict[str, Any]:
    """GET [base]/[type]/[id]."""
    if resource_type not in TYPES:
        raise FhirProblem(404, "not-supported", f"resource type {resource_type[:40]!r} is not served here")
    asked = f"{resource_type}/{resource_id}"
    pid = _patient_of(s, resource_type, resource_id)
    p = _authorise(s, who, pid, f"fhir read {resource_type}", asked, detail=asked)
    view = patient_view(s, kb, p)
    for r in fr.resources(kb, view, resource_type):
        if r["id"] == resource_id:
            return r
    if resource_type in ("DetectedIssue", "Flag"):
        row = s.get(m.FindingRow, int(resource_id))
        if row is not None and row.state == "resolved":
            raise FhirProblem(410, "deleted", f"{asked} no longer applies: later data resolved the finding")
    raise FhirProblem(404, "not-found", f"{asked} does not exist or you may not see it")


# ---------------------------------------------------------------- search
def _reference(value: str) -> str:
    """The patient id of a reference parameter: "7", "Patient/7" or a full URL ending in Patient/7."""
    found = _PATIENT_REF.match(value.strip())
    if not found or ("/" in value and "Patient/" not in value):
        raise FhirProblem(400, "invalid", f"{value[:60]!r} is not a Patient reference")
    return found.group(1)


def _token_match(concepts: list[dict[str, Any]], wanted: str) -> bool:
    """FHIR token search on CodeableConcepts: code, system|code, |code (no system) or system|."""
    for option in wanted.split(","):
        system, bar, code = option.partition("|")
        if not bar:
            system, code = "", option
        for concept in concepts:
            for c in concept.get("coding", []):
                if bar and system and c.get("system") != system:
                    continue
                if bar and not system and c.get("system"):
                    continue
                if code and c.get("code") != code:
                    continue
                return True
    return False


def _concepts(resource: dict[str, Any], name: str) -> list[dict[str, Any]]:
    found = resource.get(name)
    if found is None:
        return []
    return list(found) if isinstance(found, list) else [found]


def _page(params: Sequence[tuple[str, str]]) -> tuple[int | None, int]:
    """_count and _offset (whole numbers; absent: everything, from the start)."""
    count: int | None = None
    offset = 0
    for name, value in params:
        if name in ("_count", "_offset"):
            if not value.isdigit() or int(value) > MAX_ID:
                raise FhirProblem(400, "invalid", f"{name} must be a whole number, not {value[:20]!r}")
            if name == "_count":
                count = int(value)
            else:
                offset = int(value)
    return count, offset


def _bundle(
    kv: str, base: str, path: str, params: Sequence[tuple[str, str]], matches: list[dict[str, Any]]
) -> dict[str, Any]:
    """A searchset with its total and self link, paged by _count/_offset (next/previous links)."""
    count, offset = _page(params)
    shown = matches[offset:] if count is None else matches[offset : offset + count]
    kept = [(k, v) for k, v in params if k != "_offset"]

    def url(at: int | None) -> str:
        query = urlencode(kept + ([("_offset", str(at))] if at else []))
        return f"{base}/{path}" + (f"?{query}" if query else "")

    links = {"self": url(offset)}
    if count and offset + count < len(matches):  # _count=0 asks for the total only: no next page
        links["next"] = url(offset + count)
    if count and offset > 0:
        links["previous"] = url(max(offset - count, 0))
    return fr.bundle(shown, base, kv, len(matches), links)


def search(
    s: Session, kb: Knowledge, who: Principal, resource_type: str, params: Sequence[tuple[str, str]], base: str
) -> dict[str, Any]:
    """GET [base]/[type]?patient=[id]: one patient's resources of a type, as a searchset Bundle."""
    if resource_type not in TYPES:
        raise FhirProblem(404, "not-supported", f"resource type {resource_type[:40]!r} is not served here")
    allowed = fr.SEARCH_PARAMS[resource_type]
    for name, _ in params:
        if name not in allowed and name not in GENERAL_PARAMS:
            supported = ", ".join([*allowed, "_count"])
            raise FhirProblem(
                400, "not-supported", f"{resource_type} cannot be searched by {name[:40]!r} ({supported})"
            )
    check_format(params)
    _page(params)
    by = ("_id",) if resource_type == "Patient" else ("patient", "subject")
    wanted = {part for k, v in params if k in by for part in v.split(",")}
    if resource_type != "Patient":
        wanted = {_reference(v) for v in wanted}
    if not wanted:
        need = "_id" if resource_type == "Patient" else "patient (or subject)"
        raise FhirProblem(
            400, "required", f"a {resource_type} search needs {need}: azaguard serves one patient at a time"
        )
    if len(wanted) > 1:
        raise FhirProblem(400, "not-supported", "search one patient at a time")
    patient_ref = wanted.pop()
    asked = f"Patient/{patient_ref}"
    names = ",".join(sorted({k for k, _ in params}))
    p = _authorise(s, who, _patient_of(s, "Patient", patient_ref), f"fhir search {resource_type}", asked, names)
    matches = fr.resources(kb, patient_view(s, kb, p), resource_type)
    for name, value in params:
        if name == "_id":
            matches = [r for r in matches if r["id"] in value.split(",")]
        elif name in ("code", "category"):
            matches = [r for r in matches if _token_match(_concepts(r, name), value)]
    return _bundle(kb.version, base, resource_type, params, matches)


def everything(
    s: Session, kb: Knowledge, who: Principal, patient_id: str, params: Sequence[tuple[str, str]], base: str
) -> dict[str, Any]:
    """GET [base]/Patient/[id]/$everything: the Patient and every resource azaguard holds or derives for it."""
    for name, _ in params:
        if name not in EVERYTHING_PARAMS:
            raise FhirProblem(400, "not-supported", f"$everything does not take {name[:40]!r}")
    check_format(params)
    _page(params)
    types = {t.strip() for k, v in params if k == "_type" for t in v.split(",")}
    if types - set(TYPES):
        raise FhirProblem(400, "not-supported", f"_type: azaguard serves {', '.join(TYPES)}")
    asked = f"Patient/{patient_id}"
    p = _authorise(s, who, _patient_of(s, "Patient", patient_id), "fhir everything", asked, asked)
    found = fr.everything(kb, patient_view(s, kb, p))
    if types:
        found = [r for r in found if r["resourceType"] in types]
    return _bundle(kb.version, base, f"Patient/{patient_id}/$everything", params, found)
