"""SMART App Launch v2 end to end: real Chromium, the reference SMART launcher (the EHR's OAuth
server and FHIR proxy) in front of the FHIR memory server (the EHR's data), azaguard on uvicorn.

- EHR launch: the EHR opens /smart/launch with `iss` and `launch`; the launcher (PKCE required,
  our client id and redirect URI enforced) sends the browser back; azaguard verifies the id_token,
  auto-provisions the EHR user as a clinician, creates the patient, pulls their data from the EHR's
  FHIR server through the import pipeline and lands on the patient's page - where the low
  neutrophil count the EHR holds is the critical finding. Every access is audited under the user
  the EHR user maps to.
- Standalone launch: the clinician starts from azaguard with only `iss`; an EHR user linked by an
  administrator opens the clinic record the EHR patient matches by identifier; nothing is pulled.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ehr_tools
import pytest
from browser_fixtures import browser_type_launch_args, live_server, screenshot  # noqa: F401
from ehr_tools import FhirServer, SmartLauncher
from playwright.sync_api import expect
from sqlalchemy import func, select

from azaguard import auth
from azaguard.app import Settings, create_app
from azaguard.ehr.smart import SmartConfig, link_identity
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.store.records import now

fhir_server = ehr_tools.fhir_server  # the fixtures, by name
smart_launcher = ehr_tools.smart_launcher

CLIENT_ID = "azaguard-e2e"


@pytest.fixture
def clinic(sqlite_db: Database) -> Iterator[tuple[str, Any]]:
    """azaguard on a live server (fresh SQLite); yields (base URL, app) - set app.state.smart."""
    app = create_app(sqlite_db, settings=Settings(clinic_name="Launchfield Neuromuscular Clinic"))
    with live_server(app) as url:
        yield url, app


def _rows(db: Database, **where: Any) -> list[m.AuditEvent]:
    with db.session() as s:
        q = select(m.AuditEvent).filter_by(**where).order_by(m.AuditEvent.id)
        return list(s.scalars(q))


@pytest.fixture
def visited(page: Any) -> list[str]:
    """Every URL the browser navigated to, redirects included, in order."""
    urls: list[str] = []
    page.on("request", lambda req: urls.append(req.url) if req.is_navigation_request() else None)
    return urls


def test_ehr_launch_opens_the_patient_in_context_with_its_data_pulled_from_the_ehr(
    page: Any,
    visited: list[str],
    clinic: tuple[str, Any],
    smart_launcher: SmartLauncher,
    fhir_server: FhirServer,
    sqlite_db: Database,
) -> None:
    url, app = clinic
    ehr_pid = fhir_server.add_patient_on_azathioprine("SMART-EHR-1", name="Ada Launchwell", neut=0.8)
    app.state.smart = SmartConfig(issuers={smart_launcher.iss: CLIENT_ID}, auto_provision="clinician")
    launch = smart_launcher.ehr_launch_url(
        f"{url}/smart/launch",
        ehr_pid,
        "dr-smart-1",
        client_id=CLIENT_ID,
        redirect_uris=f"{url}/smart/callback",
        pkce="always",
    )

    page.goto(launch)

    with sqlite_db.session() as s:
        patient = s.scalars(select(m.Patient).where(m.Patient.identifier == "SMART-EHR-1")).one()
        identity = s.scalars(select(m.SmartIdentity)).one()
        user = s.get(m.User, identity.user_id)
        assert user is not None
        observations = s.scalar(select(func.count()).where(m.Observation.patient_id == patient.id))
        launches_left = s.scalar(select(func.count()).select_from(m.SmartLaunch))
    assert page.url == f"{url}/patients/{patient.id}"
    assert (identity.iss, identity.fhir_user, user.role) == (smart_launcher.iss, "Practitioner/dr-smart-1", "clinician")
    assert patient.name == "Ada Launchwell"
    assert observations and observations >= 10  # weight, genotypes, the full set of bloods
    assert launches_left == 0  # the state was used once and is gone
    critical = page.locator('article.finding.critical[data-code="lab-neutrophils-low"]')
    expect(critical).to_be_visible()
    expect(page.locator("body")).to_contain_text("Ada Launchwell")
    screenshot(page, "smart-ehr-launch-patient")

    # Every access under the mapped user: the launch (channel smart), the import of the pulled
    # record (smart), the page itself (web); nothing about this patient under anyone else.
    mine = [(r.action, r.resource, r.channel) for r in _rows(sqlite_db, patient_id=patient.id)]
    assert ("read", "smart-launch", "smart") in mine
    assert any(a == "import" and c == "smart" for a, _, c in mine)
    assert ("read", "view-patient", "web") in mine
    assert {r.user_id for r in _rows(sqlite_db, patient_id=patient.id)} == {user.id}
    assert [r.action for r in _rows(sqlite_db, user_id=user.id, resource="smart-launch")] == ["login", "read"]
    assert not _rows(sqlite_db, action="denied")

    # The state cannot be used twice: replaying the callback URL is refused and audited.
    callback = [u for u in visited if u.startswith(f"{url}/smart/callback?")]
    assert callback, "the browser never came back through /smart/callback"
    page.goto(callback[0])
    expect(page.locator("#error-message")).to_contain_text("unknown or was already used")
    assert [r.detail for r in _rows(sqlite_db, action="denied", channel="smart")] == ["bad state"]


def test_standalone_launch_opens_the_matching_clinic_record_as_the_linked_user(
    page: Any, clinic: tuple[str, Any], smart_launcher: SmartLauncher, fhir_server: FhirServer, sqlite_db: Database
) -> None:
    url, app = clinic
    ehr_pid = fhir_server.add_patient_on_azathioprine("SMART-STANDALONE-1", name="Ben Standalone")
    iss = smart_launcher.standalone_iss(ehr_pid, "dr-smart-2", client_id=CLIENT_ID, pkce="always")
    with sqlite_db.session() as s:  # the clinic knows the patient already, and the EHR user
        s.add(m.Patient(identifier="SMART-STANDALONE-1", name="Ben Standalone", created_at=now()))
        auth.create_user(s, "dr.jones", "a long password 1", "clinician", display_name="Dr Jones")
        link_identity(s, iss, "Practitioner/dr-smart-2", "dr.jones")
    app.state.smart = SmartConfig(issuers={iss: CLIENT_ID})  # no auto-provisioning

    page.goto(f"{url}/smart/launch?iss={iss}")

    with sqlite_db.session() as s:
        patient = s.scalars(select(m.Patient).where(m.Patient.identifier == "SMART-STANDALONE-1")).one()
        jones = s.scalars(select(m.User).where(m.User.username == "dr.jones")).one()
        observations = s.scalar(select(func.count()).where(m.Observation.patient_id == patient.id))
        users = s.scalar(select(func.count()).select_from(m.User))
    assert page.url == f"{url}/patients/{patient.id}"
    assert observations == 0  # matched, not pulled: later results come through the lab feeds
    assert users == 1  # nobody was provisioned
    expect(page.locator("body")).to_contain_text("Ben Standalone")
    screenshot(page, "smart-standalone-launch-patient")
    launch_rows = _rows(sqlite_db, user_id=jones.id, resource="smart-launch")
    assert [(r.action, r.channel) for r in launch_rows] == [("login", "smart"), ("read", "smart")]
    assert launch_rows[1].patient_id == patient.id
    assert "standalone launch, patient matched by identifier" in launch_rows[1].detail
    assert {r.user_id for r in _rows(sqlite_db, patient_id=patient.id)} == {jones.id}
