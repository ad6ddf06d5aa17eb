"""A real FHIR client reads azaguard's FHIR API over HTTP: fhirpy's SyncFHIRClient against uvicorn.

fhirpy builds its own URLs (search parameters, reads, operations) and parses Bundles itself, so these
tests show that a third-party client - not only our own test helpers - can use the API as documented
in docs/ehr.md section 3: search DetectedIssue, CarePlan, Flag and Observation by patient, read
Patient/{id}, follow a Bundle's paging links, and fetch Patient/{id}/$everything.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from browser_fixtures import live_server
from dbfixtures import fresh_database
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import AuthorizationError, ResourceNotFound
from sqlalchemy import select
from test_fhir_api import ago, hold_bundle, import_bundle, poor_bundle, validate

from azaguard import auth, service
from azaguard.app import create_app
from azaguard.knowledge import Knowledge
from azaguard.store import models as m
from azaguard.store.db import Database


@dataclass
class Server:
    base: str
    db: Database
    token: str
    patient_token: str
    ids: dict[str, int]
    kb: Knowledge

    def client(self, token: str | None = None) -> SyncFHIRClient:
        return SyncFHIRClient(f"{self.base}/fhir", authorization=f"Bearer {token or self.token}")


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kb: Knowledge) -> Iterator[Server]:
    gen = fresh_database("sqlite", request, tmp_path_factory.mktemp("fhir-client"))
    db = next(gen)
    with db.session() as s:
        ids = {"hold": import_bundle(s, kb, hold_bundle()), "poor": import_bundle(s, kb, poor_bundle())}
        clin = auth.create_user(s, "fhirpy-clin", "clinician-password-1", "clinician")
        pat = auth.create_user(s, "fhirpy-pat", "patient-password-1", "patient", "FHIR-POOR")
        token, patient_token = auth.create_api_token(s, clin, "fhirpy"), auth.create_api_token(s, pat, "fhirpy")
        service.hold_azathioprine(s, kb, service.principal_of(clin), ids["hold"], "Neutrophils 1.3", ago(2), "api")
    with live_server(create_app(db, kb)) as base:
        yield Server(base, db, token, patient_token, ids, kb)
    gen.close()


def plain(resource: Any) -> dict[str, Any]:
    """A fhirpy resource as the JSON it came from."""
    out: dict[str, Any] = resource.serialize()
    return out


def test_fhirpy_searches_each_type_by_patient(server: Server) -> None:
    client = server.client()
    pid = str(server.ids["poor"])
    found: dict[str, list[dict[str, Any]]] = {}
    for kind in ("DetectedIssue", "CarePlan", "Flag", "Observation"):
        found[kind] = [plain(r) for r in client.resources(kind).search(patient=pid).fetch_all()]
        assert found[kind], kind
        for r in found[kind]:
            validate(r)
            assert r["resourceType"] == kind
    issues = {r["code"]["coding"][0]["code"]: r for r in found["DetectedIssue"]}
    assert issues["pgx-poor"]["severity"] == "high"
    assert [f["code"]["coding"][0]["code"] for f in found["Flag"]] == ["pgx-poor"]
    assert found["CarePlan"][0]["id"] == f"monitoring-{pid}"
    ids = {o["id"] for o in found["Observation"]}
    assert {f"pgx-{pid}-tpmt-phenotype", f"pgx-{pid}-nudt15-phenotype", f"pgx-{pid}-implication"} <= ids
    # fhirpy's own search helpers: a token search and a count.
    genotypes = client.resources("Observation").search(subject=f"Patient/{pid}", code="http://loinc.org|84413-4")
    assert sorted(plain(o)["valueCodeableConcept"]["text"] for o in genotypes.fetch()) == ["*1/*1", "*3A/*3A"]
    assert client.resources("Observation").search(patient=pid).count() == len(found["Observation"])


def test_fhirpy_follows_paging_links(server: Server) -> None:
    client = server.client()
    pid = str(server.ids["poor"])
    every = [plain(r)["id"] for r in client.resources("Observation").search(patient=pid).fetch_all()]
    paged = [plain(r)["id"] for r in client.resources("Observation").search(patient=pid).limit(3).fetch_all()]
    assert paged == every and len(every) > 3


def test_fhirpy_reads_a_patient_and_a_flag(server: Server) -> None:
    client = server.client()
    pid = str(server.ids["hold"])
    patient = plain(client.reference("Patient", pid).to_resource())
    validate(patient)
    assert patient["identifier"][0]["value"] == "FHIR-HOLD" and patient["name"][0]["text"] == "Henry Hold"
    flag = next(iter(client.resources("Flag").search(patient=pid).fetch()))
    assert plain(flag)["code"]["coding"][0]["code"] == "treatment-on-hold"
    issue = plain(client.reference(reference=plain(flag)["extension"][0]["valueReference"]["reference"]).to_resource())
    assert issue["resourceType"] == "DetectedIssue" and issue["id"] == plain(flag)["id"]


def test_fhirpy_fetches_everything(server: Server) -> None:
    client = server.client()
    pid = str(server.ids["hold"])
    bundle = client.execute(f"Patient/{pid}/$everything", method="get")
    validate(dict(bundle))
    resources = [e["resource"] for e in bundle["entry"]]
    assert resources[0]["resourceType"] == "Patient" and resources[0]["id"] == pid
    assert {r["resourceType"] for r in resources} == {"Patient", "DetectedIssue", "CarePlan", "Flag", "Observation"}
    assert bundle["total"] == len(resources)
    for r in resources:
        assert any(t["code"] == server.kb.version for t in r["meta"]["tag"])


def test_fhirpy_sees_the_refusals(server: Server) -> None:
    with pytest.raises(AuthorizationError):
        SyncFHIRClient(f"{server.base}/fhir").resources("Flag").search(patient=str(server.ids["hold"])).fetch()
    # A patient user reads their own record, and gets "not found" for another's.
    mine = server.client(server.patient_token)
    own = plain(mine.reference("Patient", str(server.ids["poor"])).to_resource())
    assert own["identifier"][0]["value"] == "FHIR-POOR"
    with pytest.raises(ResourceNotFound):
        mine.reference("Patient", str(server.ids["hold"])).to_resource()
    # The CapabilityStatement needs no token.
    metadata = SyncFHIRClient(f"{server.base}/fhir").execute("metadata", method="get")
    assert metadata["resourceType"] == "CapabilityStatement" and metadata["fhirVersion"] == "4.0.1"


def test_reads_by_fhirpy_are_audited_on_the_fhir_channel(server: Server) -> None:
    pid = server.ids["hold"]
    server.client().resources("CarePlan").search(patient=str(pid)).fetch()
    with server.db.session() as s:
        rows = list(s.scalars(select(m.AuditEvent).where(m.AuditEvent.resource == "fhir search CarePlan")))
    assert [(e.username, e.action, e.patient_id, e.channel) for e in rows][-1] == ("fhirpy-clin", "read", pid, "fhir")
    assert all(server.token not in (e.detail or "") for e in rows)
