"""What azaguard knows about a patient, as FHIR R4 resources (plain dicts, ready for JSON).

Pure: the engine's Assessment and the record's basics in, dicts out - no store, no clock, no I/O.
The FHIR API (azaguard.ehr.fhir_api) gathers the inputs and serves the result; the CDS Hooks
service can reuse the same DetectedIssue for a card's "create" suggestion, so one finding has one
FHIR shape everywhere. docs/ehr.md section 3 tabulates the mapping.

Every resource carries the knowledge version it was made with in `meta.tag` (system
KNOWLEDGE_TAG): an EHR that stores a copy can always tell which cited knowledge produced it.

Codes are used only where their meaning is checked (docs/codes.md lists each with its status);
otherwise a concept is sent as text. azaguard's own concepts (finding codes, test groups) use
`urn:azaguard:` systems: azaguard has no web domain of its own, and a made-up http URL could one
day belong to someone else.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from azaguard import domain as d
from azaguard.knowledge import Knowledge

FHIR_VERSION = "4.0.1"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DIAGNOSTIC_SERVICE = "http://terminology.hl7.org/CodeSystem/v2-0074"  # GE: genetics (Genomics Reporting IG)
FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"
FLAG_DETAIL = "http://hl7.org/fhir/StructureDefinition/flag-detail"
RELATED_ARTIFACT = "http://hl7.org/fhir/StructureDefinition/workflow-relatedArtifact"
# HL7 Genomics Reporting IG STU3 (3.0.0): profiles, its "to be determined" code system, and the HGNC
# system its examples use for the gene studied.
GENOMICS = "http://hl7.org/fhir/uv/genomics-reporting"
GENOMICS_TBD = f"{GENOMICS}/CodeSystem/tbd-codes-cs"
GENOTYPE_PROFILE = f"{GENOMICS}/StructureDefinition/genotype"
IMPLICATION_PROFILE = f"{GENOMICS}/StructureDefinition/therapeutic-implication"
HGNC = "http://www.genenames.org"
# azaguard's own systems
KNOWLEDGE_TAG = "urn:azaguard:knowledge-version"
FINDING_SYSTEM = "urn:azaguard:finding"
TEST_GROUP_SYSTEM = "urn:azaguard:test-group"
ANALYTE_SYSTEM = "urn:azaguard:analyte"

SEVERITY = {"critical": "high", "warning": "moderate", "info": "low"}
# LOINC answers for a metabolizer status (Genomics Reporting IG STU3 GeneticTherapeuticImplicationsVS);
# a status without one (Indeterminate, a combined category) is sent as text only.
METABOLIZER = {
    "Normal Metabolizer": ("LA25391-6", "Normal metabolizer"),
    "Intermediate Metabolizer": ("LA10317-8", "Intermediate metabolizer"),
    "Poor Metabolizer": ("LA9657-3", "Poor metabolizer"),
}
CATEGORY_STATUS = {
    "normal": "Normal Metabolizer",
    "intermediate": "Intermediate Metabolizer",
    "poor": "Poor Metabolizer",
}
GENE_IDS = {"TPMT": "HGNC:12014", "NUDT15": "HGNC:23063"}  # as codes.toml [pgx.genes] (a test compares them)
# The therapeutic implication's dosing advice is the `pgx-<category>` finding's action; failing that,
# one of these findings' (best first).
_PGX_ADVICE = ("pgx-reduced-on-treatment", "pgx-indeterminate", "pgx-nudt15-indeterminate")
# Standing warnings shown as a Flag: azathioprine on hold, and what rules azathioprine out.
_FLAG_CODES = ("treatment-on-hold", "pgx-poor")
# Every code from an outside code system this module writes itself (stored results pass on the
# knowledge's own LOINC codes and UCUM units). docs/codes.md section 9 lists each with its
# verification state; tests/test_fhir_api.py fails if a resource carries a code not listed here.
WRITTEN_CODES: dict[str, tuple[str, ...]] = {
    LOINC: ("84413-4", "48018-6", "53040-2", "51963-7", "LA25391-6", "LA10317-8", "LA9657-3"),
    GENOMICS_TBD: ("therapeutic-implication", "conclusion-string"),
    OBSERVATION_CATEGORY: ("laboratory",),
    DIAGNOSTIC_SERVICE: ("GE",),
    FLAG_CATEGORY: ("drug",),
    RXNORM: ("1256",),
    HGNC: tuple(GENE_IDS.values()),
}


@dataclass(frozen=True)
class PatientBasics:
    id: int
    identifier: str
    name: str
    birth_date: date | None
    sex: str | None


@dataclass(frozen=True)
class StoredFinding:
    """A finding of the current assessment and its worklist instance (the row's id is the
    resource id, so it stays the same across requests while the finding stands)."""

    id: int
    state: str  # open | reviewed | info (azaguard's review state of the instance)
    first_seen: datetime
    finding: d.Finding


@dataclass(frozen=True)
class StoredResult:
    """A current laboratory result or TPMT activity as the store keeps it (value in the canonical unit)."""

    id: int
    kind: str  # lab | tpmt-activity
    analyte: str | None
    code: str
    value: float | None
    unit: str | None
    method: str
    below_detection: bool
    ref_low: float | None
    ref_high: float | None
    effective: date
    status: str


@dataclass(frozen=True)
class PatientView:
    """Everything the FHIR resources of one patient are made from."""

    patient: PatientBasics
    assessment: d.Assessment
    findings: tuple[StoredFinding, ...]
    results: tuple[StoredResult, ...]
    genotypes: tuple[d.GenotypeResult, ...]  # source_id: the stored genotype row's id


# ---------------------------------------------------------------- small parts
def meta(knowledge_version: str, profile: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "tag": [
            {"system": KNOWLEDGE_TAG, "code": knowledge_version, "display": f"azaguard knowledge {knowledge_version}"}
        ]
    }
    if profile:
        out["profile"] = [profile]
    return out


def _ref(kind: str, rid: str | int, display: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"reference": f"{kind}/{rid}"}
    if display:
        out["display"] = display
    return out


def _coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def _citations(sources: Iterable[str]) -> list[dict[str, Any]]:
    return [{"url": RELATED_ARTIFACT, "valueRelatedArtifact": {"type": "citation", "citation": s}} for s in sources]


def _laboratory() -> dict[str, Any]:
    return {"coding": [_coding(OBSERVATION_CATEGORY, "laboratory", "Laboratory")]}


def _genetics() -> list[dict[str, Any]]:
    return [_laboratory(), {"coding": [_coding(DIAGNOSTIC_SERVICE, "GE", "Genetics")]}]


def _gene_studied(gene: str) -> dict[str, Any]:
    gene_id = GENE_IDS.get(gene)
    concept: dict[str, Any] = {"coding": [_coding(HGNC, gene_id, gene)]} if gene_id else {}
    concept["text"] = gene
    return {"code": {"coding": [_coding(LOINC, "48018-6", "Gene studied [ID]")]}, "valueCodeableConcept": concept}


def _metabolizer(status: str) -> dict[str, Any]:
    known = METABOLIZER.get(status)
    return {"coding": [_coding(LOINC, *known)], "text": status} if known else {"text": status}


def _number(x: float) -> float | int:
    return int(x) if float(x).is_integer() else round(x, 4)


# ---------------------------------------------------------------- ids
def careplan_id(patient_id: int) -> str:
    return f"monitoring-{patient_id}"


def result_id(row_id: int) -> str:
    return f"obs-{row_id}"


def genotype_id(row_id: int | str) -> str:
    return f"genotype-{row_id}"


def phenotype_id(patient_id: int, gene: str) -> str:
    return f"pgx-{patient_id}-{gene.lower()}-phenotype"


def implication_id(patient_id: int) -> str:
    return f"pgx-{patient_id}-implication"


# ---------------------------------------------------------------- resources
def patient(view: PatientView) -> dict[str, Any]:
    p = view.patient
    out: dict[str, Any] = {
        "resourceType": "Patient",
        "id": str(p.id),
        "meta": meta(view.assessment.knowledge_version),
        "identifier": [{"use": "usual", "value": p.identifier}],
    }
    if p.name:
        out["name"] = [{"text": p.name}]
    if p.sex in ("male", "female", "other", "unknown"):
        out["gender"] = p.sex
    if p.birth_date:
        out["birthDate"] = p.birth_date.isoformat()
    return out


def _evidence_refs(view: PatientView, f: d.Finding) -> list[dict[str, Any]]:
    """References to the Observations a finding rests on: stored results by id, a TPMT activity by
    its date and value, a TPMT/NUDT15 call by gene (the phenotype Observation azaguard derived)."""
    pid, refs = view.patient.id, []
    results = {str(r.id) for r in view.results}
    for e in f.evidence:
        kind = e.get("type")
        if kind == "lab" and str(e.get("id", "")) in results:
            refs.append(_ref("Observation", result_id(int(e["id"]))))
        elif kind == "pgx" and e.get("gene") and view.assessment.pgx.get(str(e["gene"]).lower()):
            refs.append(_ref("Observation", phenotype_id(pid, str(e["gene"]))))
        elif kind == "pgx-activity":
            refs += [
                _ref("Observation", result_id(r.id))
                for r in view.results
                if r.kind == "tpmt-activity" and r.effective.isoformat() == e.get("date") and r.value == e.get("value")
            ]
    unique = list({r["reference"]: r for r in refs}.values())
    return unique


def _implicated(f: d.Finding) -> list[dict[str, Any]]:
    """The medicines a finding is about, by name (azaguard serves no MedicationStatement resources)."""
    names = [str(e["name"]) for e in f.evidence if e.get("type") == "medication" and e.get("name")]
    return [{"display": n} for n in dict.fromkeys(names)]


def detected_issue(view: PatientView, sf: StoredFinding) -> dict[str, Any]:
    """One finding: severity from the finding's (critical -> high, warning -> moderate, info -> low);
    status preliminary while it waits for a clinician's review on the worklist, final once reviewed
    or when it needs none; mitigation carries the recommended action (not yet taken)."""
    f = sf.finding
    out: dict[str, Any] = {
        "resourceType": "DetectedIssue",
        "id": str(sf.id),
        "meta": meta(view.assessment.knowledge_version),
        "extension": _citations(f.sources),
        "status": "preliminary" if sf.state == "open" else "final",
        "code": {"coding": [_coding(FINDING_SYSTEM, f.code)], "text": f.code},
        "severity": SEVERITY[f.severity],
        "patient": _ref("Patient", view.patient.id),
        "identifiedDateTime": sf.first_seen.date().isoformat(),
        "detail": f.message,
    }
    if not out["extension"]:
        del out["extension"]
    implicated = _implicated(f)
    if implicated:
        out["implicated"] = implicated
    refs = _evidence_refs(view, f)
    if refs:
        out["evidence"] = [{"detail": refs}]
    if f.action:
        out["mitigation"] = [{"action": {"text": f.action}}]
    return out


def detected_issues(view: PatientView) -> list[dict[str, Any]]:
    return [detected_issue(view, sf) for sf in view.findings]


def _flagged(f: d.Finding) -> bool:
    return f.code in _FLAG_CODES or (f.category == "contraindication" and f.severity == "critical")


def flags(view: PatientView) -> list[dict[str, Any]]:
    """A standing warning per active hold (the treatment-on-hold finding), per contraindication
    (critical findings of that category) and for poor thiopurine metabolism; each points to its
    DetectedIssue, which carries the evidence and the action."""
    a, out = view.assessment, []
    for sf in view.findings:
        f = sf.finding
        if not _flagged(f):
            continue
        start = a.treatment.since if f.code == "treatment-on-hold" and a.treatment.since else f.date
        flag: dict[str, Any] = {
            "resourceType": "Flag",
            "id": str(sf.id),
            "meta": meta(a.knowledge_version),
            "extension": [{"url": FLAG_DETAIL, "valueReference": _ref("DetectedIssue", sf.id)}],
            "status": "active",
            "category": [{"coding": [_coding(FLAG_CATEGORY, "drug", "Drug")]}],
            "code": {"coding": [_coding(FINDING_SYSTEM, f.code)], "text": f.message},
            "subject": _ref("Patient", view.patient.id),
        }
        if start:
            flag["period"] = {"start": start.isoformat()}
        out.append(flag)
    return out


def _group_reason(a: d.Assessment, g: d.MonitoringGroup) -> str:
    if g.due_reason == "follow-up":
        asked = [u for u in a.monitoring.follow_ups if u.group == g.name and u.due == g.follow_up_due]
        if asked:
            return f"follow-up: {asked[0].reason}"
    if g.due_reason == "baseline":
        return "baseline test before azathioprine starts"
    if g.due_reason == "schedule":
        return f"monitoring schedule ({g.interval})" if g.interval else "monitoring schedule"
    return g.interval or "no test date yet"


def care_plan(kb: Knowledge, view: PatientView) -> dict[str, Any]:
    """The monitoring plan: one activity per test group, scheduled from its next due date (the
    assessment's own date: moved off weekends and holidays already, pulled forward by follow-ups)."""
    a = view.assessment
    activities = []
    by_code = {sf.finding.code: sf.id for sf in view.findings}
    for g in a.monitoring.groups:
        panel = kb.schedule.panels.get(g.name)
        label = panel.label if panel is not None and panel.label else g.name
        reason = _group_reason(a, g)
        words = [f"{label}: due {g.next_due.isoformat()}" if g.next_due else f"{label}: no due date"]
        if g.overdue:
            words.append("overdue")
        if g.moved_from:
            words.append(f"moved from {g.moved_from.isoformat()} (not a working day)")
        if g.last:
            words.append(f"last done {g.last.isoformat()}")
        detail: dict[str, Any] = {
            "kind": "ServiceRequest",
            "code": {"coding": [_coding(TEST_GROUP_SYSTEM, g.name, label)], "text": label},
            "reasonCode": [{"text": reason}],
            "status": "scheduled" if g.next_due else "not-started",
            "description": "; ".join(words) + f". Reason: {reason.rstrip('.')}.",
        }
        if g.next_due:
            detail["scheduledPeriod"] = {"start": g.next_due.isoformat()}
        else:
            detail["scheduledString"] = reason
        asked = [u for u in a.monitoring.follow_ups if u.group == g.name and u.state in ("open", "overdue")]
        refs = [_ref("DetectedIssue", by_code[u.finding_code]) for u in asked if u.finding_code in by_code]
        if refs:
            detail["reasonReference"] = list({r["reference"]: r for r in refs}.values())
        activities.append({"detail": detail})
    out: dict[str, Any] = {
        "resourceType": "CarePlan",
        "id": careplan_id(view.patient.id),
        "meta": meta(a.knowledge_version),
        "status": "active",
        "intent": "plan",
        "title": "Azathioprine blood test monitoring",
        "description": f"Monitoring phase: {a.monitoring.phase}; treatment: {a.treatment.state}; as of {a.as_of}.",
        "subject": _ref("Patient", view.patient.id),
    }
    if a.monitoring.treatment_start:
        out["period"] = {"start": a.monitoring.treatment_start.isoformat()}
    if activities:
        out["activity"] = activities
    return out


def result(kb: Knowledge, view: PatientView, r: StoredResult) -> dict[str, Any]:
    """A stored result as it is kept: LOINC code when the stored code is one of the analyte's, the
    value in the analyte's canonical UCUM unit (a TPMT activity keeps its laboratory's unit)."""
    codings: list[dict[str, Any]] = []
    if r.kind == "tpmt-activity":
        label = "TPMT activity"
        if r.code in kb.pgx_codes.tpmt_activity_loinc:
            codings.append(_coding(LOINC, r.code))
    else:
        spec = kb.analytes.get(r.analyte or "")
        label = spec.label if spec else (r.analyte or "laboratory result")
        if spec is not None and r.code in spec.loinc:
            codings.append(_coding(LOINC, r.code))
        elif r.analyte:  # stored under a local code (6-TGN, 6-MMP have no LOINC): azaguard's analyte key
            codings.append(_coding(ANALYTE_SYSTEM, r.analyte, label))
    out: dict[str, Any] = {
        "resourceType": "Observation",
        "id": result_id(r.id),
        "meta": meta(view.assessment.knowledge_version),
        "status": r.status if r.status in ("preliminary", "final", "amended", "corrected") else "final",
        "category": [_laboratory()],
        "code": {"coding": codings, "text": label} if codings else {"text": label},
        "subject": _ref("Patient", view.patient.id),
        "effectiveDateTime": r.effective.isoformat(),
    }
    if r.value is not None:
        quantity: dict[str, Any] = {"value": _number(r.value)}
        if r.unit:
            quantity["unit"] = kb.display_units.get(r.unit, r.unit)
            if r.unit in kb.units:  # a canonical unit of the knowledge: UCUM
                quantity.update({"system": UCUM, "code": r.unit})
        if r.below_detection:
            quantity["comparator"] = "<"
        out["valueQuantity"] = quantity
    if r.method:
        out["method"] = {"text": r.method}
    if r.ref_low is not None or r.ref_high is not None:
        bound = {"unit": r.unit, "system": UCUM, "code": r.unit} if r.unit and r.unit in kb.units else {}
        rng: dict[str, Any] = {}
        if r.ref_low is not None:
            rng["low"] = {"value": _number(r.ref_low), **bound}
        if r.ref_high is not None:
            rng["high"] = {"value": _number(r.ref_high), **bound}
        out["referenceRange"] = [rng]
    return out


def results(kb: Knowledge, view: PatientView) -> list[dict[str, Any]]:
    return [result(kb, view, r) for r in view.results]


def _latest(view: PatientView, gene: str) -> d.GenotypeResult | None:
    """The genotype row the engine reads for a gene: the latest dated on or before the assessment."""
    as_of = view.assessment.as_of
    rows = [g for g in view.genotypes if g.gene == gene and (g.when is None or g.when <= as_of)]
    return max(rows, key=lambda g: g.when or as_of) if rows else None


def _pgx_detail(view: PatientView, gene: str) -> str:
    for sf in view.findings:
        for e in sf.finding.evidence:
            if e.get("type") == "pgx" and e.get("gene") == gene and e.get("detail"):
                return str(e["detail"])
    return ""


def genomics(view: PatientView) -> list[dict[str, Any]]:
    """TPMT and NUDT15 as Genomics Reporting IG (STU3) Observations: each stored genotype (LOINC
    84413-4, gene in component 48018-6) or laboratory-reported phenotype; per gene, the phenotype
    azaguard called (LOINC 53040-2) from the results it rests on; and one therapeutic implication
    for azathioprine with the dosing recommendation, derived from those phenotypes."""
    a, pid, kv = view.assessment, view.patient.id, view.assessment.knowledge_version
    out: list[dict[str, Any]] = []
    for g in view.genotypes:
        if not (g.diplotype or g.phenotype):
            continue
        obs: dict[str, Any] = {
            "resourceType": "Observation",
            "id": genotype_id(g.source_id),
            "meta": meta(kv, GENOTYPE_PROFILE if g.diplotype else None),
            "status": "final",
            "category": _genetics(),
            "code": {"coding": [_coding(LOINC, "84413-4", "Genotype display name")]}
            if g.diplotype
            else {"coding": [_coding(LOINC, "53040-2", "Genetic variation's effect on drug metabolism")]},
            "subject": _ref("Patient", pid),
            "valueCodeableConcept": {"text": g.diplotype} if g.diplotype else {"text": g.phenotype},
            "component": [_gene_studied(g.gene)],
        }
        if g.when:
            obs["effectiveDateTime"] = g.when.isoformat()
        out.append(obs)
    called: list[str] = []
    for gene in ("TPMT", "NUDT15"):
        status = a.pgx.get(gene.lower())
        if not status:
            continue
        called.append(gene)
        sources = []
        row = _latest(view, gene)
        if row is not None and (row.diplotype or row.phenotype):
            sources.append(_ref("Observation", genotype_id(row.source_id)))
        if gene == "TPMT":
            activity = [r for r in view.results if r.kind == "tpmt-activity" and r.effective <= a.as_of]
            if activity:
                sources.append(_ref("Observation", result_id(max(activity, key=lambda r: (r.effective, r.id)).id)))
        obs = {
            "resourceType": "Observation",
            "id": phenotype_id(pid, gene),
            "meta": meta(kv),
            "status": "final",
            "category": _genetics(),
            "code": {"coding": [_coding(LOINC, "53040-2", "Genetic variation's effect on drug metabolism")]},
            "subject": _ref("Patient", pid),
            "effectiveDateTime": a.as_of.isoformat(),
            "valueCodeableConcept": _metabolizer(status),
            "method": {"text": "called by azaguard from the results it rests on (CPIC tables, laboratory assay bands)"},
            "component": [_gene_studied(gene)],
        }
        detail = _pgx_detail(view, gene)
        if detail:
            obs["note"] = [{"text": f"Called from: {detail}"}]
        if sources:
            obs["derivedFrom"] = sources
        out.append(obs)
    category = a.pgx.get("category")
    if category and called:
        out.append(_implication(view, category, called))
    return out


def _implication(view: PatientView, category: str, called: list[str]) -> dict[str, Any]:
    a, pid = view.assessment, view.patient.id
    advice = next(
        (sf.finding for code in (f"pgx-{category}", *_PGX_ADVICE) for sf in view.findings if sf.finding.code == code),
        None,
    )
    status = CATEGORY_STATUS.get(category)
    implication = _metabolizer(status) if status else {"text": category.replace("-", " ")}
    if advice is not None:
        implication["text"] = advice.message
    components: list[dict[str, Any]] = [
        {
            "code": {"coding": [_coding(LOINC, "51963-7")], "text": "Medication assessed"},
            "valueCodeableConcept": {"coding": [_coding(RXNORM, "1256", "azathioprine")], "text": "azathioprine"},
        },
        {
            "code": {"coding": [_coding(GENOMICS_TBD, "therapeutic-implication", "Therapeutic Implication")]},
            "valueCodeableConcept": implication,
        },
    ]
    if advice is not None:
        words = advice.action
        rec = a.dose.recommended
        if rec is not None:
            words += (
                f" azaguard's recommended dose range for this patient: {_number(rec.low)}-{_number(rec.high)} mg/day."
            )
        components.append(
            {
                "code": {"coding": [_coding(GENOMICS_TBD, "conclusion-string", "Conclusion Text")]},
                "valueString": words,
            }
        )
    out: dict[str, Any] = {
        "resourceType": "Observation",
        "id": implication_id(pid),
        "meta": meta(a.knowledge_version, IMPLICATION_PROFILE),
        "status": "final",
        "category": _genetics(),
        "code": {"coding": [_coding(GENOMICS_TBD, "therapeutic-implication", "Therapeutic Implication")]},
        "subject": _ref("Patient", pid),
        "effectiveDateTime": a.as_of.isoformat(),
        "derivedFrom": [_ref("Observation", phenotype_id(pid, gene)) for gene in called],
        "component": components,
    }
    if advice is not None and advice.sources:
        out["extension"] = _citations(advice.sources)
    return out


def observations(kb: Knowledge, view: PatientView) -> list[dict[str, Any]]:
    return results(kb, view) + genomics(view)


def everything(kb: Knowledge, view: PatientView) -> list[dict[str, Any]]:
    """All of the patient's resources, the Patient first."""
    return [patient(view), *detected_issues(view), care_plan(kb, view), *flags(view), *observations(kb, view)]


RENDERERS = {
    "Patient": lambda kb, view: [patient(view)],
    "DetectedIssue": lambda kb, view: detected_issues(view),
    "CarePlan": lambda kb, view: [care_plan(kb, view)],
    "Flag": lambda kb, view: flags(view),
    "Observation": observations,
}


def resources(kb: Knowledge, view: PatientView, resource_type: str) -> list[dict[str, Any]]:
    """The patient's resources of one type."""
    made: list[dict[str, Any]] = RENDERERS[resource_type](kb, view)
    return made


# ---------------------------------------------------------------- bundles, errors, capabilities
def bundle(
    entries: list[dict[str, Any]],
    base: str,
    knowledge_version: str,
    total: int,
    links: dict[str, str],
) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "meta": meta(knowledge_version),
        "type": "searchset",
        "total": total,
        "link": [{"relation": rel, "url": url} for rel, url in links.items()],
        "entry": [
            {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in entries
        ],
    }


def operation_outcome(code: str, message: str, knowledge_version: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "OperationOutcome"}
    if knowledge_version:
        out["meta"] = meta(knowledge_version)
    out["issue"] = [{"severity": "error", "code": code, "diagnostics": message}]
    return out


# Search parameters each resource type supports (besides _format); docs/ehr.md section 3.
SEARCH_PARAMS: dict[str, dict[str, str]] = {
    "Patient": {"_id": "token"},
    "DetectedIssue": {"patient": "reference", "subject": "reference", "_id": "token", "code": "token"},
    "CarePlan": {"patient": "reference", "subject": "reference", "_id": "token"},
    "Flag": {"patient": "reference", "subject": "reference", "_id": "token", "code": "token"},
    "Observation": {
        "patient": "reference",
        "subject": "reference",
        "_id": "token",
        "category": "token",
        "code": "token",
    },
}


def capability_statement(knowledge_version: str, software_version: str, base: str, today: date) -> dict[str, Any]:
    """What this server does: read and search by patient for the types above, Patient $everything."""
    resources_out = []
    for kind, params in SEARCH_PARAMS.items():
        entry: dict[str, Any] = {
            "type": kind,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": [{"name": name, "type": kind_} for name, kind_ in params.items()]
            + [{"name": "_count", "type": "number"}],
        }
        if kind == "Patient":
            entry["operation"] = [
                {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}
            ]
        resources_out.append(entry)
    return {
        "resourceType": "CapabilityStatement",
        "id": "azaguard",
        "meta": meta(knowledge_version),
        "name": "AzaguardFhirApi",
        "title": "azaguard FHIR R4 API (read-only)",
        "status": "active",
        "date": today.isoformat(),
        "publisher": "azaguard",
        "description": (
            "Read-only FHIR R4 view of what azaguard knows and derives for a patient: findings (DetectedIssue), "
            "the monitoring plan (CarePlan), holds and contraindications (Flag), laboratory results and TPMT/NUDT15 "
            f"results (Observation). Knowledge version: {knowledge_version}."
        ),
        "kind": "instance",
        "software": {"name": "azaguard", "version": software_version},
        "implementation": {"description": f"azaguard {software_version}, knowledge {knowledge_version}", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": ["json", "application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "documentation": "Read-only decision support: every resource states its knowledge version in meta.tag.",
                "security": {
                    "cors": False,
                    "description": (
                        "Send Authorization: Bearer <token> (from POST /api/v1/token). A patient user sees only their "
                        "own record; clinicians and admins see every patient. The CapabilityStatement itself is open."
                    ),
                },
                "resource": resources_out,
            }
        ],
    }
