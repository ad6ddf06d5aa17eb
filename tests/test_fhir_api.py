"""The FHIR R4 API (/fhir, docs/ehr.md section 3) in-process, on SQLite and PostgreSQL.

Four patients imported as FHIR bundles through the real pipeline: one with critical findings (a
neutrophil count of 0.6 and allopurinol with full-dose azathioprine), one whose azathioprine is on
hold, a TPMT poor metaboliser, and one on azathioprine with no TPMT/NUDT15 result. Every resource the
API returns is validated with the fhir.resources R4B models - which check structure and types but not
code values, so the code values that carry meaning (status, severity, intent) are checked here - and
compared with the assessment the REST API serves, so a wrong mapping fails a test.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from dbfixtures import fresh_database
from fastapi.testclient import TestClient
from fhir.resources.R4B import get_fhir_model_class
from sqlalchemy import func, select

from azaguard import __version__, auth, service
from azaguard.app import create_app
from azaguard.engine import assess
from azaguard.fhirbuild import BundleBuilder
from azaguard.ingest import parse_text
from azaguard.knowledge import Knowledge
from azaguard.readers.fhir import read_bundle
from azaguard.render import fhir as fr
from azaguard.render.json import assessment_from_dict, assessment_to_dict
from azaguard.store import models as m
from azaguard.store.db import Database

TODAY = date.today()
KV_TAG = "urn:azaguard:knowledge-version"
FINDING_SYSTEM = "urn:azaguard:finding"
LOINC = "http://loinc.org"
MISSING = 987_654
FHIR_JSON = "application/fhir+json"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# The code values fhir.resources does not check (it validates a code's syntax, not its value set).
ALLOWED = {
    ("DetectedIssue", "status"): {"preliminary", "final"},
    ("DetectedIssue", "severity"): {"high", "moderate", "low"},
    ("Flag", "status"): {"active"},
    ("CarePlan", "status"): {"active"},
    ("CarePlan", "intent"): {"plan"},
    ("Observation", "status"): {"preliminary", "final", "amended", "corrected"},
    ("Bundle", "type"): {"searchset"},
}


def ago(n: int) -> date:
    return TODAY - timedelta(days=n)


def validate(resource: dict[str, Any]) -> None:
    """The resource parses as its R4B model (no unknown element, right types) and its coded values
    come from the value sets FHIR binds them to."""
    kind = resource["resourceType"]
    get_fhir_model_class(kind).model_validate(resource)
    for (rtype, name), allowed in ALLOWED.items():
        if rtype == kind:
            assert resource[name] in allowed, (kind, name, resource[name])
    if kind == "CarePlan":
        for act in resource.get("activity", []):
            assert act["detail"]["status"] in {"scheduled", "not-started"}, act


def kv_of(resource: dict[str, Any]) -> str:
    tags = [t for t in resource["meta"]["tag"] if t["system"] == KV_TAG]
    assert len(tags) == 1, resource.get("meta")
    code: str = tags[0]["code"]
    return code


def references(obj: Any) -> list[str]:
    """Every `reference` string anywhere in a resource."""
    if isinstance(obj, dict):
        found = [obj["reference"]] if isinstance(obj.get("reference"), str) else []
        return found + [r for v in obj.values() for r in references(v)]
    if isinstance(obj, list):
        return [r for v in obj for r in references(v)]
    return []


def crit_bundle() -> BundleBuilder:
    b = BundleBuilder("FHIR-CRIT", "1970-03-01", "female", "Clara Critical")
    b.condition("91637004", "Myasthenia gravis", ago(400))
    b.condition("235856003", "Liver disease", ago(300))  # a caution (warning): not a Flag
    b.weight(70, ago(200))
    b.genotype("TPMT", "*1/*1", ago(210))
    b.genotype("NUDT15", "*1/*1", ago(210))
    b.bloods(ago(200))
    b.azathioprine(ago(180), 150)
    b.bloods(ago(30))
    b.fbc(ago(1), wbc=2.0, neut=0.6, plt=240)
    b.statement("Allopurinol 100 mg tablets", ago(20), 100, rxnorm="519")
    return b


def hold_bundle() -> BundleBuilder:
    b = BundleBuilder("FHIR-HOLD", "1968-05-02", "male", "Henry Hold")
    b.condition("91637004", "Myasthenia gravis", ago(400))
    b.weight(80, ago(200))
    b.genotype("TPMT", "*1/*1", ago(210))
    b.genotype("NUDT15", "*1/*1", ago(210))
    b.bloods(ago(200))
    b.azathioprine(ago(180), 150)
    b.bloods(ago(3), neut=1.3)
    return b


def poor_bundle() -> BundleBuilder:
    b = BundleBuilder("FHIR-POOR", "1980-01-15", "female", "Paula Poor")
    b.condition("91637004", "Myasthenia gravis", ago(60))
    b.weight(65, ago(10))
    b.genotype("TPMT", "*3A/*3A", ago(14))
    b.genotype("NUDT15", "*1/*1", ago(14))
    b.bloods(ago(10))
    return b


def no_tpmt_bundle() -> BundleBuilder:
    b = BundleBuilder("FHIR-NOTPMT", "1975-09-09", "male", "Nate Notest")
    b.condition("91637004", "Myasthenia gravis", ago(400))
    b.weight(75, ago(200))
    b.bloods(ago(200))
    b.azathioprine(ago(180), 150)
    b.bloods(ago(20))
    return b


def import_bundle(s: Any, kb: Knowledge, b: BundleBuilder) -> int:
    service.import_parsed(s, kb, None, parse_text(json.dumps(b.bundle()), kb, "fhir"), "fhir-test", "cli")
    pid = s.scalar(select(m.Patient.id).where(m.Patient.identifier == b.patient_id))
    assert pid is not None
    return int(pid)


@dataclass
class Clinic:
    db: Database
    client: TestClient
    kb: Knowledge
    tokens: dict[str, str]
    ids: dict[str, int] = field(default_factory=dict)

    def h(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"} if who != "anon" else {}

    def get(self, who: str, path: str, **params: Any) -> Any:
        return self.client.get(path, headers=self.h(who), params=params or None)

    def ok(self, who: str, path: str, **params: Any) -> dict[str, Any]:
        r = self.get(who, path, **params)
        assert r.status_code == 200, f"{path}: {r.status_code} {r.text[:400]}"
        assert r.headers["content-type"].startswith(FHIR_JSON), r.headers["content-type"]
        body: dict[str, Any] = r.json()
        validate(body)
        assert kv_of(body) == self.kb.version
        return body

    def search(self, who: str, kind: str, **params: Any) -> list[dict[str, Any]]:
        bundle = self.ok(who, f"/fhir/{kind}", **params)
        assert bundle["total"] == len(bundle["entry"]), bundle["total"]
        out = [e["resource"] for e in bundle["entry"]]
        for r in out:
            assert r["resourceType"] == kind
            validate(r)
            assert kv_of(r) == self.kb.version
        return out

    def assessment(self, pid: int) -> dict[str, Any]:
        r = self.client.get(f"/api/v1/patients/{pid}/assessment", headers=self.h("clin"))
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def clinic(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kb: Knowledge) -> Iterator[Clinic]:
    gen = fresh_database(request.param, request, tmp_path_factory.mktemp(f"fhir-{request.param}"))
    db = next(gen)
    with db.session() as s:
        ids = {
            "crit": import_bundle(s, kb, crit_bundle()),
            "hold": import_bundle(s, kb, hold_bundle()),
            "poor": import_bundle(s, kb, poor_bundle()),
            "notpmt": import_bundle(s, kb, no_tpmt_bundle()),
        }
        users = {
            "clin": auth.create_user(s, "fhirclin", "clinician-password-1", "clinician"),
            "pat": auth.create_user(s, "fhirpat", "patient-password-1", "patient", "FHIR-CRIT"),
        }
        tokens = {k: auth.create_api_token(s, u, "tests") for k, u in users.items()}
        service.hold_azathioprine(
            s, kb, service.principal_of(users["clin"]), ids["hold"], "Neutrophils 1.3", ago(2), "api"
        )
    yield Clinic(db, TestClient(create_app(db, kb)), kb, tokens, ids)
    gen.close()


def by_code(issues: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {i["code"]["coding"][0]["code"]: i for i in issues}


# ---------------------------------------------------------------- metadata
def test_metadata_is_open_and_states_versions(clinic: Clinic) -> None:
    cs = clinic.ok("anon", "/fhir/metadata")
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "4.0.1"
    assert "json" in cs["format"] and "application/fhir+json" in cs["format"]
    assert cs["software"] == {"name": "azaguard", "version": __version__}
    assert clinic.kb.version in cs["description"] and clinic.kb.version in cs["implementation"]["description"]
    served = {r["type"]: r for r in cs["rest"][0]["resource"]}
    assert set(served) == {"Patient", "DetectedIssue", "CarePlan", "Flag", "Observation"}
    for kind in ("DetectedIssue", "CarePlan", "Flag", "Observation"):
        assert {"patient", "subject"} <= {p["name"] for p in served[kind]["searchParam"]}, kind
        assert {i["code"] for i in served[kind]["interaction"]} == {"read", "search-type"}
    assert {p["name"] for p in served["Observation"]["searchParam"]} >= {"category", "code"}
    assert served["Patient"]["operation"][0]["name"] == "everything"
    assert "Bearer" in cs["rest"][0]["security"]["description"]


# ---------------------------------------------------------------- every resource validates
@pytest.mark.parametrize("who", ["crit", "hold", "poor", "notpmt"])
def test_everything_validates_and_states_the_knowledge_version(clinic: Clinic, who: str) -> None:
    pid = clinic.ids[who]
    bundle = clinic.ok("clin", f"/fhir/Patient/{pid}/$everything")
    resources = [e["resource"] for e in bundle["entry"]]
    assert bundle["total"] == len(resources) and resources[0] == clinic.ok("clin", f"/fhir/Patient/{pid}")
    for e in bundle["entry"]:
        r = e["resource"]
        validate(r)
        assert kv_of(r) == clinic.kb.version
        assert e["fullUrl"].endswith(f"/fhir/{r['resourceType']}/{r['id']}")
        # Every reference points to a resource of the same export: nothing dangles.
    held = {f"{r['resourceType']}/{r['id']}" for r in resources}
    for r in resources:
        for ref in references(r):
            assert ref in held, (r["resourceType"], r["id"], ref)
    # The same resources are reachable by search, one type at a time.
    kinds = {r["resourceType"] for r in resources} - {"Patient"}
    assert sum(len(clinic.search("clin", k, patient=pid)) for k in kinds) == len(resources) - 1


# ---------------------------------------------------------------- DetectedIssue
def test_detected_issues_are_the_assessment_findings(clinic: Clinic) -> None:
    pid = clinic.ids["crit"]
    assessment = clinic.assessment(pid)
    issues = clinic.search("clin", "DetectedIssue", patient=pid)
    findings = {f["code"]: f for f in assessment["findings"]}
    assert set(by_code(issues)) == set(findings) and len(issues) == len(findings)
    severity = {"critical": "high", "warning": "moderate", "info": "low"}
    assert {"critical", "warning", "info"} <= {f["severity"] for f in findings.values()}
    with clinic.db.session() as s:
        rows = {r.code: r for r in s.scalars(select(m.FindingRow).where(m.FindingRow.patient_id == pid))}
        neut = s.scalar(
            select(m.Observation.id).where(
                m.Observation.patient_id == pid, m.Observation.analyte == "neutrophils", m.Observation.value == 0.6
            )
        )
    for code, issue in by_code(issues).items():
        f = findings[code]
        assert issue["code"]["coding"][0]["system"] == FINDING_SYSTEM
        assert issue["severity"] == severity[f["severity"]], code
        assert issue["detail"] == f["message"]
        assert issue["mitigation"][0]["action"]["text"] == f["action"]
        assert issue["patient"]["reference"] == f"Patient/{pid}"
        assert issue["id"] == str(rows[code].id)  # the finding instance's id
        assert issue["identifiedDateTime"] == rows[code].first_seen.date().isoformat()
        assert issue["status"] == ("preliminary" if rows[code].state == "open" else "final")
        cited = [e["valueRelatedArtifact"]["citation"] for e in issue.get("extension", [])]
        assert cited == f["sources"] and cited, code
    low = by_code(issues)["lab-neutrophils-low"]
    assert low["severity"] == "high" and low["status"] == "preliminary"
    assert low["evidence"] == [{"detail": [{"reference": f"Observation/obs-{neut}"}]}]
    observation = clinic.ok("clin", f"/fhir/Observation/obs-{neut}")
    assert observation["valueQuantity"]["value"] == 0.6
    interaction = next(i for c, i in by_code(issues).items() if c.startswith("interaction-"))
    assert any("Allopurinol" in x.get("display", "") for x in interaction["implicated"])


def test_ids_are_stable_and_read_matches_search(clinic: Clinic) -> None:
    pid = clinic.ids["crit"]
    first = clinic.search("clin", "DetectedIssue", patient=pid)
    again = clinic.search("clin", "DetectedIssue", patient=pid)
    assert [i["id"] for i in first] == [i["id"] for i in again]
    for issue in first:
        assert clinic.ok("clin", f"/fhir/DetectedIssue/{issue['id']}") == issue
    for kind in ("CarePlan", "Flag", "Observation"):
        for r in clinic.search("clin", kind, patient=pid):
            assert clinic.ok("clin", f"/fhir/{kind}/{r['id']}") == r


def test_a_review_makes_the_issue_final_and_a_resolved_one_is_gone(clinic: Clinic) -> None:
    kb = clinic.kb
    b = BundleBuilder("FHIR-REVIEW", "1971-02-02", "male")
    b.condition("91637004", "Myasthenia gravis", ago(400)).weight(70, ago(200))
    b.genotype("TPMT", "*1/*1", ago(210)).genotype("NUDT15", "*1/*1", ago(210))
    b.bloods(ago(200)).azathioprine(ago(180), 150).bloods(ago(30)).fbc(ago(2), wbc=2.5, neut=0.7, plt=230)
    with clinic.db.session() as s:
        pid = import_bundle(s, kb, b)
        clin = service.principal_of(s.scalars(select(m.User).where(m.User.username == "fhirclin")).one())
    issue = by_code(clinic.search("clin", "DetectedIssue", patient=pid))["lab-neutrophils-low"]
    assert issue["status"] == "preliminary"
    with clinic.db.session() as s:
        service.review(s, kb, clin, int(issue["id"]), "repeat-test-booked", "", "api")
    reviewed = clinic.ok("clin", f"/fhir/DetectedIssue/{issue['id']}")
    assert reviewed["status"] == "final" and reviewed["id"] == issue["id"]
    # A later normal count resolves the finding: its instance is no longer served, and reading it says why.
    with clinic.db.session() as s:
        service.add_lab(s, kb, clin, pid, "neutrophils", 3.4, "10*9/L", ago(0), "api")
    assert "lab-neutrophils-low" not in by_code(clinic.search("clin", "DetectedIssue", patient=pid))
    gone = clinic.get("clin", f"/fhir/DetectedIssue/{issue['id']}")
    assert gone.status_code == 410 and gone.json()["issue"][0]["code"] == "deleted"
    validate(gone.json())


# ---------------------------------------------------------------- CarePlan
def test_care_plan_dates_are_the_assessment_due_dates(clinic: Clinic) -> None:
    for who in ("crit", "hold", "notpmt", "poor"):
        pid = clinic.ids[who]
        assessment = clinic.assessment(pid)
        (plan,) = clinic.search("clin", "CarePlan", patient=pid)
        assert plan["id"] == f"monitoring-{pid}" and plan["subject"]["reference"] == f"Patient/{pid}"
        groups = assessment["monitoring"]["groups"]
        details = [a["detail"] for a in plan["activity"]]
        assert [d["code"]["coding"][0]["code"] for d in details] == [g["name"] for g in groups]
        for g, detail in zip(groups, details, strict=True):
            if g["next_due"]:
                assert detail["scheduledPeriod"] == {"start": g["next_due"]}, (who, g)
                assert detail["status"] == "scheduled"
            else:
                assert "scheduledPeriod" not in detail and detail["scheduledString"], (who, g)
                assert detail["status"] == "not-started"
    # The low neutrophil count asks for a repeat FBC: the FBC activity says so and points to the issue.
    pid = clinic.ids["crit"]
    assessment = clinic.assessment(pid)
    fbc = next(g for g in assessment["monitoring"]["groups"] if g["name"] == "FBC")
    assert fbc["due_reason"] == "follow-up"
    follow_up = next(u for u in assessment["monitoring"]["follow_ups"] if u["due"] == fbc["follow_up_due"])
    (plan,) = clinic.search("clin", "CarePlan", patient=pid)
    detail = next(a["detail"] for a in plan["activity"] if a["detail"]["code"]["coding"][0]["code"] == "FBC")
    assert detail["reasonCode"][0]["text"] == f"follow-up: {follow_up['reason']}"
    issue = by_code(clinic.search("clin", "DetectedIssue", patient=pid))[follow_up["finding_code"]]
    assert {"reference": f"DetectedIssue/{issue['id']}"} in detail["reasonReference"]


# ---------------------------------------------------------------- Flag
def test_flags_for_a_hold_and_a_contraindication(clinic: Clinic) -> None:
    held = clinic.search("clin", "Flag", patient=clinic.ids["hold"])
    hold = next(f for f in held if f["code"]["coding"][0]["code"] == "treatment-on-hold")
    assert hold["status"] == "active" and hold["period"] == {"start": ago(2).isoformat()}
    assert hold["category"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/flag-category",
        "code": "drug",
        "display": "Drug",
    }
    target = hold["extension"][0]["valueReference"]["reference"]
    assert target == f"DetectedIssue/{hold['id']}"
    assert clinic.ok("clin", f"/fhir/{target}")["code"]["coding"][0]["code"] == "treatment-on-hold"
    assert clinic.assessment(clinic.ids["hold"])["treatment"]["state"] == "on-hold"
    poor = clinic.search("clin", "Flag", patient=clinic.ids["poor"])
    assert [f["code"]["coding"][0]["code"] for f in poor] == ["pgx-poor"]
    # Not on hold, nothing contraindicated: no Flag. A caution (liver disease: a warning of the contraindication
    # category) and an interaction stay DetectedIssues only.
    assert clinic.search("clin", "Flag", patient=clinic.ids["notpmt"]) == []
    crit = by_code(clinic.search("clin", "DetectedIssue", patient=clinic.ids["crit"]))
    assert crit["caution-liver-disease"]["severity"] == "moderate" and "interaction-allopurinol" in crit
    assert clinic.search("clin", "Flag", patient=clinic.ids["crit"]) == []


# ---------------------------------------------------------------- TPMT / NUDT15
def genomics(clinic: Clinic, who: str) -> list[dict[str, Any]]:
    ge = "http://terminology.hl7.org/CodeSystem/v2-0074|GE"
    return clinic.search("clin", "Observation", patient=clinic.ids[who], category=ge)


def test_poor_metaboliser_as_genomics_reporting_observations(clinic: Clinic) -> None:
    pid = clinic.ids["poor"]
    assessment = clinic.assessment(pid)
    found = {o["id"]: o for o in genomics(clinic, "poor")}
    genotypes = [o for o in found.values() if o["code"]["coding"][0]["code"] == "84413-4"]
    tpmt = next(o for o in genotypes if o["component"][0]["valueCodeableConcept"]["text"] == "TPMT")
    assert tpmt["valueCodeableConcept"] == {"text": "*3A/*3A"}
    assert tpmt["component"][0]["valueCodeableConcept"]["coding"][0]["code"] == "HGNC:12014"
    assert tpmt["meta"]["profile"] == ["http://hl7.org/fhir/uv/genomics-reporting/StructureDefinition/genotype"]
    assert {c["coding"][0]["code"] for c in tpmt["category"]} == {"laboratory", "GE"}
    phen_tpmt, phen_nudt15 = found[f"pgx-{pid}-tpmt-phenotype"], found[f"pgx-{pid}-nudt15-phenotype"]
    assert phen_tpmt["code"]["coding"][0]["code"] == "53040-2"
    assert phen_tpmt["valueCodeableConcept"]["coding"][0] == {
        "system": LOINC,
        "code": "LA9657-3",
        "display": "Poor metabolizer",
    }
    assert phen_nudt15["valueCodeableConcept"]["coding"][0]["code"] == "LA25391-6"
    assert assessment["pgx"] == {"tpmt": "Poor Metabolizer", "nudt15": "Normal Metabolizer", "category": "poor"}
    assert phen_tpmt["derivedFrom"] == [{"reference": f"Observation/{tpmt['id']}"}]
    implication = found[f"pgx-{pid}-implication"]
    assert implication["code"]["coding"][0]["code"] == "therapeutic-implication"
    assert "valueCodeableConcept" not in implication  # the IG profile forbids a value
    assert implication["derivedFrom"] == [
        {"reference": f"Observation/{phen_tpmt['id']}"},
        {"reference": f"Observation/{phen_nudt15['id']}"},
    ]
    parts = {c["code"]["coding"][0]["code"]: c for c in implication["component"]}
    assert parts["51963-7"]["valueCodeableConcept"]["coding"][0]["code"] == "1256"
    poor = next(f for f in assessment["findings"] if f["code"] == "pgx-poor")
    assert parts["therapeutic-implication"]["valueCodeableConcept"]["coding"][0]["code"] == "LA9657-3"
    assert parts["therapeutic-implication"]["valueCodeableConcept"]["text"] == poor["message"]
    assert parts["conclusion-string"]["valueString"].startswith(poor["action"])
    assert [e["valueRelatedArtifact"]["citation"] for e in implication["extension"]] == poor["sources"]
    # The finding rests on these calls.
    issue = by_code(clinic.search("clin", "DetectedIssue", patient=pid))["pgx-poor"]
    assert issue["severity"] == "high"
    assert issue["evidence"][0]["detail"] == implication["derivedFrom"]


def test_no_tpmt_result_means_a_finding_and_no_genomics_observation(clinic: Clinic) -> None:
    pid = clinic.ids["notpmt"]
    assert "pgx-tpmt-unknown-on-treatment" in by_code(clinic.search("clin", "DetectedIssue", patient=pid))
    assert genomics(clinic, "notpmt") == []
    assert clinic.search("clin", "Observation", patient=pid, code=f"{LOINC}|84413-4") == []
    missing = clinic.get("clin", f"/fhir/Observation/pgx-{pid}-implication")
    assert missing.status_code == 404 and missing.json()["issue"][0]["code"] == "not-found"
    # Results are still there.
    assert clinic.search("clin", "Observation", patient=pid, category="laboratory")


# ---------------------------------------------------------------- laboratory results
def test_lab_observations_as_stored(clinic: Clinic) -> None:
    pid = clinic.ids["crit"]
    neut = clinic.search("clin", "Observation", patient=pid, category="laboratory", code=f"{LOINC}|751-8")
    with clinic.db.session() as s:
        rows = list(
            s.scalars(
                select(m.Observation)
                .where(m.Observation.patient_id == pid, m.Observation.code == "751-8", m.Observation.current.is_(True))
                .order_by(m.Observation.effective, m.Observation.id)
            )
        )
        labs = s.scalar(
            select(func.count()).where(
                m.Observation.patient_id == pid, m.Observation.kind == "lab", m.Observation.current.is_(True)
            )
        )
    assert [o["id"] for o in neut] == [f"obs-{r.id}" for r in rows] and len(rows) == 3
    for o, row in zip(neut, rows, strict=True):
        assert o["valueQuantity"]["value"] == row.value
        assert (o["valueQuantity"]["system"], o["valueQuantity"]["code"]) == ("http://unitsofmeasure.org", "10*9/L")
        assert o["effectiveDateTime"] == row.effective.isoformat() and o["status"] == "final"
        assert o["category"][0]["coding"][0]["code"] == "laboratory"
    stored = clinic.search("clin", "Observation", patient=pid, category="laboratory")
    assert len([o for o in stored if o["id"].startswith("obs-")]) == labs


# ---------------------------------------------------------------- search forms and paging
def test_search_by_patient_or_subject_in_any_form(clinic: Clinic) -> None:
    pid = clinic.ids["crit"]
    base = str(clinic.client.base_url).rstrip("/")
    forms = [
        {"patient": str(pid)},
        {"patient": f"Patient/{pid}"},
        {"subject": f"Patient/{pid}"},
        {"subject": f"{base}/fhir/Patient/{pid}"},
    ]
    totals = {json.dumps(f): clinic.ok("clin", "/fhir/Observation", **f)["total"] for f in forms}
    assert len(set(totals.values())) == 1 and next(iter(totals.values())) > 5, totals
    bundle = clinic.ok("clin", "/fhir/Observation", patient=pid, _count=2)
    assert len(bundle["entry"]) == 2 and bundle["total"] == totals[json.dumps(forms[0])]
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert "_count=2" in links["self"] and "_offset=2" in links["next"]
    page2 = clinic.client.get(links["next"], headers=clinic.h("clin")).json()
    assert page2["entry"][0]["resource"]["id"] != bundle["entry"][0]["resource"]["id"]
    assert clinic.ok("clin", "/fhir/Patient", _id=pid)["entry"][0]["resource"]["id"] == str(pid)
    # _count=0 asks for the total only: no next link that would point at itself.
    none = clinic.ok("clin", "/fhir/Observation", patient=pid, _count=0)
    assert none["total"] > 0 and not none.get("entry") and "next" not in {lk["relation"] for lk in none["link"]}
    held = clinic.ids["hold"]
    only = clinic.ok("clin", f"/fhir/Patient/{held}/$everything", _type="Flag,CarePlan")
    assert sorted(e["resource"]["resourceType"] for e in only["entry"]) == ["CarePlan", "Flag"]


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/fhir/DetectedIssue", {"patient": "{pid}", "foo": "1"}, 400, "not-supported"),
        ("/fhir/DetectedIssue", {}, 400, "required"),
        ("/fhir/DetectedIssue", {"patient": "Group/1"}, 400, "invalid"),
        ("/fhir/Observation", {"patient": "{pid}", "_count": "many"}, 400, "invalid"),
        ("/fhir/CarePlan", {"patient": "{pid}", "category": "x"}, 400, "not-supported"),
        ("/fhir/DetectedIssue", {"patient": "{pid}", "_format": "xml"}, 406, "not-supported"),
        ("/fhir/Patient/{pid}/$everything", {"_type": "Medication"}, 400, "not-supported"),
        ("/fhir/Medication", {"patient": "{pid}"}, 404, "not-supported"),
        ("/fhir/Patient/{pid}/_history", {}, 404, "not-supported"),
    ],
)
def test_bad_requests_are_operation_outcomes(
    clinic: Clinic, path: str, params: dict[str, str], status: int, code: str
) -> None:
    pid = str(clinic.ids["crit"])
    r = clinic.get("clin", path.replace("{pid}", pid), **{k: v.replace("{pid}", pid) for k, v in params.items()})
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(FHIR_JSON)
    body = r.json()
    validate(body)
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == code
    assert kv_of(body) == clinic.kb.version


def test_writes_are_refused(clinic: Clinic) -> None:
    for method in ("POST", "PUT", "DELETE"):
        r = clinic.client.request(method, "/fhir/DetectedIssue", headers=clinic.h("clin"), json={})
        assert r.status_code == 405 and r.json()["issue"][0]["code"] == "not-supported", method


# ---------------------------------------------------------------- who may see what
def test_401_without_a_valid_token(clinic: Clinic) -> None:
    pid = clinic.ids["crit"]
    paths = [
        f"/fhir/Patient/{pid}",
        f"/fhir/DetectedIssue?patient={pid}",
        f"/fhir/Patient/{pid}/$everything",
        f"/fhir/CarePlan/monitoring-{pid}",
    ]
    for path in paths:
        for headers in ({}, {"Authorization": "Bearer not-a-token"}):
            r = clinic.client.get(path, headers=headers)
            assert r.status_code == 401, (path, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.headers["content-type"].startswith(FHIR_JSON)
            body = r.json()
            validate(body)
            assert body["issue"][0]["code"] == "login"


def test_a_patient_sees_only_their_own_record(clinic: Clinic) -> None:
    own, other = clinic.ids["crit"], clinic.ids["hold"]
    assert clinic.ok("pat", f"/fhir/Patient/{own}")["identifier"][0]["value"] == "FHIR-CRIT"
    assert clinic.search("pat", "DetectedIssue", patient=own)
    other_issue = clinic.search("clin", "DetectedIssue", patient=other)[0]["id"]
    other_lab = next(o["id"] for o in clinic.search("clin", "Observation", patient=other) if o["id"].startswith("obs-"))
    refused = [
        ("Patient", str(other), str(MISSING)),
        ("DetectedIssue", other_issue, str(MISSING)),
        ("Flag", other_issue, str(MISSING)),
        ("CarePlan", f"monitoring-{other}", f"monitoring-{MISSING}"),
        ("Observation", other_lab, f"obs-{MISSING}"),
        ("Observation", f"pgx-{other}-tpmt-phenotype", f"pgx-{MISSING}-tpmt-phenotype"),
    ]
    for kind, theirs, nobodys in refused:
        answers = []
        for rid in (theirs, nobodys):
            r = clinic.get("pat", f"/fhir/{kind}/{rid}")
            assert r.status_code == 404, (kind, rid, r.text)
            body = r.json()
            validate(body)
            answers.append((body["issue"][0]["code"], body["issue"][0]["diagnostics"].replace(rid, "ID")))
        assert answers[0] == answers[1], answers  # the same answer: nothing tells whether it exists
    for path in (f"/fhir/DetectedIssue?patient={other}", f"/fhir/Patient/{other}/$everything"):
        r = clinic.client.get(path, headers=clinic.h("pat"))
        assert r.status_code == 404 and r.json()["issue"][0]["code"] == "not-found", path
    # A clinician sees every patient.
    assert clinic.ok("clin", f"/fhir/Patient/{other}")["id"] == str(other)


def test_reads_and_refusals_are_audited_on_the_fhir_channel(clinic: Clinic) -> None:
    own, other = clinic.ids["crit"], clinic.ids["hold"]

    def rows() -> list[m.AuditEvent]:
        with clinic.db.session() as s:
            return list(s.scalars(select(m.AuditEvent).where(m.AuditEvent.channel == "fhir").order_by(m.AuditEvent.id)))

    before = len(rows())
    issue = clinic.search("clin", "DetectedIssue", patient=own)[0]["id"]
    clinic.ok("clin", f"/fhir/DetectedIssue/{issue}")
    clinic.ok("pat", f"/fhir/Patient/{own}/$everything")
    assert clinic.get("pat", f"/fhir/Patient/{other}").status_code == 404
    assert clinic.get("pat", f"/fhir/DetectedIssue/{MISSING}").status_code == 404
    new = rows()[before:]
    assert [(e.username, e.action, e.resource, e.patient_id) for e in new] == [
        ("fhirclin", "read", "fhir search DetectedIssue", own),
        ("fhirclin", "read", "fhir read DetectedIssue", own),
        ("fhirpat", "read", "fhir everything", own),
        ("fhirpat", "denied", "fhir read Patient", other),
        ("fhirpat", "not-found", "fhir read DetectedIssue", None),
    ]
    assert new[1].detail == f"DetectedIssue/{issue}" and new[4].detail == f"DetectedIssue/{MISSING}"
    # The open CapabilityStatement reads no patient data: nothing to audit.
    clinic.ok("anon", "/fhir/metadata")
    assert len(rows()) == before + len(new)


# ---------------------------------------------------------------- the stored assessment round trip
def test_the_stored_assessment_reads_back_as_the_engine_made_it(kb: Knowledge) -> None:
    """The FHIR renderer works on the engine's Assessment rebuilt from the stored JSON: nothing is lost."""
    examples = sorted(p for p in glob.glob(str(EXAMPLES / "*.json")) if not p.endswith(".meta.json"))
    assert len(examples) > 30
    for path in examples:
        meta = json.loads(Path(path.replace(".json", ".meta.json")).read_text())
        bundle = json.loads(Path(path).read_text())
        a = assess(read_bundle(bundle, kb), kb, date.fromisoformat(meta["as_of"]))
        stored = json.loads(json.dumps(assessment_to_dict(a)))
        again = assessment_from_dict(stored)
        assert json.loads(json.dumps(assessment_to_dict(again))) == stored, path
        made = [(f.code, f.severity, f.date, f.sources, f.evidence, f.follow_up) for f in a.findings]
        assert [(f.code, f.severity, f.date, f.sources, f.evidence, f.follow_up) for f in again.findings] == made


# ---------------------------------------------------------------- codes: documented, and read back as sent
def codings(obj: Any) -> list[tuple[str, str]]:
    """Every (system, code) pair anywhere in a resource: Codings, and Quantities with a unit code."""
    if isinstance(obj, dict):
        here = [(obj["system"], obj["code"])] if isinstance(obj.get("system"), str) and "code" in obj else []
        return here + [c for v in obj.values() for c in codings(v)]
    if isinstance(obj, list):
        return [c for v in obj for c in codings(v)]
    return []


def test_every_code_written_is_known_and_documented(clinic: Clinic) -> None:
    kb = clinic.kb
    doc = (Path(__file__).resolve().parent.parent / "docs" / "codes.md").read_text(encoding="utf-8")
    written = {(system, code) for system, codes in fr.WRITTEN_CODES.items() for code in codes}
    assert {gene: [fr.GENE_IDS[gene]] for gene in kb.pgx_codes.genes} == {
        gene: [i for i in ids if i.startswith("HGNC:")] for gene, ids in kb.pgx_codes.genes.items()
    }
    knowledge_loinc = {c for a in kb.analytes.values() for c in a.loinc} | set(kb.pgx_codes.tpmt_activity_loinc)
    seen: set[tuple[str, str]] = set()
    for pid in clinic.ids.values():
        for entry in clinic.ok("clin", f"/fhir/Patient/{pid}/$everything")["entry"]:
            seen |= set(codings(entry["resource"]))
    assert {(fr.LOINC, "LA9657-3"), (fr.GENOMICS_TBD, "therapeutic-implication"), (fr.FLAG_CATEGORY, "drug")} <= seen
    for system, code in seen:
        known = (
            system.startswith("urn:azaguard:")
            or (system, code) in written
            or (system == fr.LOINC and code in knowledge_loinc)
            or (system == fr.UCUM and code in kb.units)
        )
        assert known, f"{system}|{code} is written but not in render.fhir.WRITTEN_CODES or the knowledge"
    section = doc[doc.index("## 9. Codes azaguard writes") :]
    for _system, code in written:
        row = next((r for r in section.splitlines() if r.startswith(f"| `{code}` |")), None)
        assert row is not None or f"`{code}`" in doc[: doc.index("## 9.")], f"{code} is not in docs/codes.md"
        if row is not None:
            assert row.rstrip(" |").split("|")[-1].strip().startswith(("verified", "not in dossier")), row


def test_observations_read_back_through_the_fhir_reader(clinic: Clinic) -> None:
    """What the API writes is what azaguard's own FHIR reader takes in: results in LOINC/UCUM, genotypes
    and phenotypes in the Genomics Reporting shape - read back, they give the same results and call."""
    kb = clinic.kb
    for who in ("crit", "poor"):
        pid = clinic.ids[who]
        patient = clinic.ok("clin", f"/fhir/Patient/{pid}")
        observations = clinic.search("clin", "Observation", patient=pid)
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": patient}]}
        bundle["entry"] += [{"resource": o} for o in observations if "implication" not in o["id"]]
        record = read_bundle(bundle, kb)
        with clinic.db.session() as s:
            stored = s.execute(
                select(m.Observation.analyte, m.Observation.value, m.Observation.effective).where(
                    m.Observation.patient_id == pid, m.Observation.kind == "lab", m.Observation.current.is_(True)
                )
            ).all()
        assert sorted((r.analyte, r.value, r.when) for r in record.labs) == sorted(tuple(r) for r in stored)
        assert not record.rejected
        pgx = clinic.assessment(pid)["pgx"]
        called = {g.gene: g.phenotype for g in record.genotypes if g.phenotype}
        assert called == {"TPMT": pgx["tpmt"], "NUDT15": pgx["nudt15"]}
