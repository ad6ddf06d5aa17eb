"""The EHR test tools themselves work: the FHIR memory server starts, stores a transaction Bundle
with its references resolved, and answers searches (tests/ehr_tools.py)."""

from __future__ import annotations

import ehr_tools
from ehr_tools import IDENTIFIER_SYSTEM, FhirServer

fhir_server = ehr_tools.fhir_server  # the fixture


def test_fhir_server_stores_a_transaction_and_answers_searches(fhir_server: FhirServer) -> None:
    pid = fhir_server.add_patient_on_azathioprine("EHR-TOOLS-1", neut=0.8)

    patient = fhir_server.get(f"Patient/{pid}")
    assert patient["identifier"] == [{"system": IDENTIFIER_SYSTEM, "value": "EHR-TOOLS-1"}]
    found = fhir_server.search("Patient", identifier=f"{IDENTIFIER_SYSTEM}|EHR-TOOLS-1")
    assert [p["id"] for p in found] == [pid]

    observations = fhir_server.search("Observation", patient=pid)
    neutrophils = [o for o in observations if o["code"]["coding"][0]["code"] == "751-8"]
    assert [o["valueQuantity"]["value"] for o in neutrophils] == [0.8]
    # every reference resolved to the server's own id of the patient
    assert {o["subject"]["reference"] for o in observations} == {f"Patient/{pid}"}
    statements = fhir_server.search("MedicationStatement", subject=f"Patient/{pid}")
    assert [s["medicationCodeableConcept"]["coding"][0]["code"] for s in statements] == ["1256"]
    assert fhir_server.search("Observation", patient="no-such-patient") == []
