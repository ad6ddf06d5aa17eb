"""The official CDS Hooks sandbox (a real EHR-side client, pre-built, in Chromium) calls azaguard's
CDS services with its own ES384 JWT, against the FHIR memory server (Medplum's engine) holding a
patient on azathioprine with a low neutrophil count.

- patient-view: the neutrophil card appears in the sandbox.
- order-sign: signing allopurinol for that patient shows the critical interaction card.
- a prefetch key the sandbox leaves out is fetched from the registered FHIR server.
The sandbox's token is verified against the JWKS registered for its issuer (pinned from its build:
its jku points at the internet, which is not on the allow-list and never fetched).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import ehr_tools
import pytest
from browser_fixtures import browser_type_launch_args, live_server, screenshot
from ehr_tools import FhirServer
from sqlalchemy import func, select

from azaguard.app import create_app
from azaguard.ehr import cds_auth
from azaguard.knowledge import Knowledge
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.store.records import now

fhir_server = ehr_tools.fhir_server
_ = browser_type_launch_args

SANDBOX_ISS = "https://sandbox.cds-hooks.org"
IDENTIFIER = "CDS-SANDBOX-1"


def sandbox_build() -> Path:
    build = ehr_tools.shared_tools() / "cds-hooks-sandbox" / "build"
    if not (build / "index.html").exists():
        ehr_tools._missing(f"the CDS Hooks sandbox build is not at {build}")
    return build


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def sandbox() -> Iterator[str]:
    """The sandbox's static build, served as its README says (any static web server will do)."""
    handler = functools.partial(_Quiet, directory=str(sandbox_build()))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def azaguard_server(
    tmp_path_factory: pytest.TempPathFactory, kb: Knowledge, fhir_server: FhirServer
) -> Iterator[tuple[str, Database, str]]:
    db = Database(f"sqlite:///{tmp_path_factory.mktemp('cds-sandbox') / 'clinic.db'}")
    jwks = sandbox_build() / ".well-known" / "jwks.json"
    cds_auth.add_client(db, SANDBOX_ISS, jwks_file=str(jwks), fhir_servers=[fhir_server.base])
    with db.write() as s:
        s.add(m.Patient(identifier=IDENTIFIER, name="Ada Ehrtest", created_at=now()))
    pid = fhir_server.add_patient_on_azathioprine(IDENTIFIER, neut=0.8, wbc=2.4)
    with live_server(create_app(db, kb)) as base:
        yield base, db, pid
    db.engine.dispose()


def _open(page: Any, sandbox: str, fhir: str, pid: str, ours: str, hook: str, screen: str) -> None:
    page.context.route(
        "**/*",
        lambda route: route.continue_() if "127.0.0.1" in route.request.url else route.abort(),
    )
    query = urlencode(
        {
            "fhirServiceUrl": fhir,
            "patientId": pid,
            "serviceDiscoveryURL": f"{ours}/cds-services",
            "hook": hook,
            "screen": screen,
        }
    )
    page.goto(f"{sandbox}/?{query}")


def _audit(db: Database, action: str) -> int:
    with db.session() as s:
        n = s.scalar(
            select(func.count())
            .select_from(m.AuditEvent)
            .where(m.AuditEvent.channel == "cds", m.AuditEvent.action == action)
        )
        return int(n or 0)


def test_the_sandbox_shows_the_patient_view_card(
    page: Any, sandbox: str, azaguard_server: tuple[str, Database, str], fhir_server: FhirServer
) -> None:
    ours, db, pid = azaguard_server
    _open(page, sandbox, fhir_server.base, pid, ours, "patient-view", "patient-view")
    card = page.locator(".card-summary, [class*='card'] >> text=/neutrophil/i").first
    card.wait_for(timeout=30_000)
    screenshot(page, "cds-sandbox-patient-view")
    text = page.locator("body").inner_text()
    assert "neutrophil" in text.lower()
    assert "Open in azaguard" in text
    assert _audit(db, "read") >= 1 and _audit(db, "denied") == 0


def test_the_sandbox_order_sign_of_allopurinol_is_critical(
    page: Any, sandbox: str, azaguard_server: tuple[str, Database, str], fhir_server: FhirServer
) -> None:
    ours, db, pid = azaguard_server
    _open(page, sandbox, fhir_server.base, pid, ours, "order-sign", "rx-sign")
    box = page.locator("input[name=medication-input]")
    box.wait_for(timeout=30_000)
    box.fill("allopurinol 100")
    page.get_by_text("Allopurinol 100 MG Oral Tablet", exact=False).first.click()
    page.get_by_role("button", name="Sign Order").click()
    page.get_by_text("Allopurinol with azathioprine", exact=False).first.wait_for(timeout=30_000)
    screenshot(page, "cds-sandbox-order-sign-allopurinol")
    text = page.locator("body").inner_text()
    assert "Remove the Allopurinol" in text or "remove the allopurinol" in text.lower()
    with db.session() as s:
        rows = s.scalars(select(m.CdsCard).where(m.CdsCard.service_id == "azaguard-order-sign")).all()
        assert any(r.indicator == "critical" and r.code.startswith("interaction-allopurinol") for r in rows)
        assert all(r.patient_id is not None for r in rows)  # matched to the clinic's record by identifier
    assert _audit(db, "denied") == 0
    # The clinician overrides the card with one of its reasons: the sandbox sends feedback, signed too.
    critical = page.locator("text=Allopurinol with azathioprine").first.locator(
        "xpath=ancestor::*[.//button[normalize-space()='Dismiss']][1]"
    )
    critical.locator("button[aria-haspopup], button:right-of(:text('Dismiss'))").first.click()
    page.get_by_role("menuitem", name="Override: Specialist team has advised this order").click()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with db.session() as s:
            fb = s.scalars(select(m.CdsFeedback).where(m.CdsFeedback.outcome == "overridden")).all()
        if fb:
            break
        time.sleep(0.2)
    assert fb and fb[0].reason_code == "specialist-advised" and fb[0].patient_id is not None
    screenshot(page, "cds-sandbox-order-sign-overridden")
    assert _audit(db, "denied") == 0


def test_missing_prefetch_is_fetched_from_the_registered_fhir_server(
    tmp_path: Path, azaguard_server: tuple[str, Database, str], fhir_server: FhirServer
) -> None:
    import httpx
    from test_cds_hooks import ISS, Signer

    ours, db, pid = azaguard_server
    signer = Signer()
    keys = tmp_path / "jwks.json"
    keys.write_text(__import__("json").dumps(signer.jwks))
    cds_auth.add_client(db, ISS, jwks_file=str(keys), fhir_servers=[fhir_server.base])
    path = "/cds-services/azaguard-patient-view"
    body = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "fhirServer": fhir_server.base,
        "context": {"userId": "Practitioner/1", "patientId": pid},
        "prefetch": {"patient": fhir_server.get(f"Patient/{pid}")},  # everything else: fetched by azaguard
    }
    r = httpx.post(ours + path, json=body, headers={"Authorization": f"Bearer {signer.token(ours + path)}"})
    assert r.status_code == 200, r.text
    codes = {c["source"]["topic"]["code"] for c in r.json()["cards"]}
    assert "lab-neutrophils-low" in codes, codes
    # The same call naming a FHIR server this client has not registered: a card, no fetch, no assessment.
    body["fhirServer"] = "http://127.0.0.1:9/fhir"
    r = httpx.post(ours + path, json=body, headers={"Authorization": f"Bearer {signer.token(ours + path)}"})
    cards = r.json()["cards"]
    assert [c["source"]["topic"]["code"] for c in cards] == ["data-prefetch-missing"]


def test_a_medication_reference_in_the_ehr_is_fetched_with_its_medication(
    tmp_path: Path, azaguard_server: tuple[str, Database, str], fhir_server: FhirServer
) -> None:
    """The prefetch templates `_include` the Medication a MedicationStatement points at: read from the
    real FHIR server, the course on azathioprine is recognised and the low count gives its card."""
    import json

    import httpx
    from test_cds_hooks import ISS, Signer

    from azaguard.fhirbuild import BundleBuilder

    ours, db, _ = azaguard_server

    def by_reference(b: BundleBuilder) -> None:
        st = next(r for r in b.entries if r["resourceType"] == "MedicationStatement")
        b.add({"resourceType": "Medication", "id": "aza-med", "code": st.pop("medicationCodeableConcept")})
        st["medicationReference"] = {"reference": "Medication/aza-med"}

    pid = fhir_server.add_patient_on_azathioprine("CDS-MEDREF-1", neut=0.7, extra=by_reference)
    signer = Signer()
    keys = tmp_path / "jwks.json"
    keys.write_text(json.dumps(signer.jwks))
    cds_auth.add_client(db, ISS, jwks_file=str(keys), fhir_servers=[fhir_server.base])
    path = "/cds-services/azaguard-patient-view"
    body = {
        "hook": "patient-view",
        "hookInstance": "5b4a9b0e-0f3c-4b8e-9f55-3e7b1f0d2a11",
        "fhirServer": fhir_server.base,
        "context": {"userId": "Practitioner/1", "patientId": pid},
        "prefetch": {},  # everything fetched by azaguard with the discovery's templates
    }
    r = httpx.post(ours + path, json=body, headers={"Authorization": f"Bearer {signer.token(ours + path)}"})
    assert r.status_code == 200, r.text
    codes = [c["source"]["topic"]["code"] for c in r.json()["cards"]]
    assert "lab-neutrophils-low" in codes, codes
