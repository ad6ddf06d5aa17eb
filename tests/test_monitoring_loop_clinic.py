"""The clinic side of the monitoring loop, on SQLite and PostgreSQL.

- Holding azathioprine: the review outcome "withheld", the patient page form and the API put the drug
  on hold (a row with status "on-hold" at the same dose, the active row ending the day before);
  a dose change restarts it and closes the hold.
- Follow-ups stay until answered: a finding's repeat test marks the patient as awaiting that test
  on the worklist; a review does not clear the mark, a complete panel dated after the finding does,
  and so does a clinician dropping the follow-up with a reason (audited).
- Access: a patient can neither hold nor dismiss (403 on their own record; 404 on another's, as for
  an unknown patient; audited).

The engine's contract these tests rely on (docs/assessment-json.md, azaguard/domain.py): a neutrophil
count of 1.2 x10^9/L on azathioprine is a critical lab-neutrophils-low finding whose follow-up is an
FBC within 14 days, answered only by a complete FBC (WBC, neutrophils, platelets) dated after it; an
azathioprine entry with status "on-hold" gives treatment.state "on-hold".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from dbfixtures import fresh_database
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from azaguard import auth, service
from azaguard import worklist as wl
from azaguard.app import create_app
from azaguard.engine.schedule import working_day
from azaguard.knowledge import Knowledge
from azaguard.plain import long_date
from azaguard.service_models import Principal
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.store.records import load_record
from azaguard.store.writes import FormError, add_lab, add_patient, change_dose, hold_azathioprine
from azaguard.web.views import COOKIE

TODAY = date.today()
# A complete baseline: every group's panel done, nothing near a threshold.
BASELINE = (
    ("wbc", 6.0), ("neutrophils", 3.5), ("lymphocytes", 1.8), ("platelets", 250), ("haemoglobin", 135),
    ("mcv", 90), ("alt", 20), ("ast", 22), ("alp", 80), ("bilirubin", 8), ("albumin", 42),
    ("creatinine", 80), ("egfr", 90), ("weight", 70),
)  # fmt: skip
NORMAL_FBC = (("wbc", 5.5), ("neutrophils", 3.0), ("platelets", 240))


def ago(n: int) -> str:
    return (TODAY - timedelta(days=n)).isoformat()


def make_patient(
    s: Any, kb: Knowledge, ident: str, *, aza: bool = True, neutrophils: float | None = 1.2, on: int = 2
) -> int:
    """A patient on azathioprine 100 mg/day for 200 days with complete bloods 30 days ago and, by
    default, a low neutrophil count `on` days ago."""
    p = add_patient(s, ident, f"Nora {ident}", "1968-04-02", "female")
    if aza:
        change_dose(s, kb, p.id, 100, ago(200))
    for analyte, value in BASELINE:
        add_lab(s, kb, p.id, analyte, value, "", ago(30))
    if neutrophils is not None:
        add_lab(s, kb, p.id, "neutrophils", neutrophils, "10*9/L", ago(on))
    wl.refresh_patient(s, kb, p.id)
    return p.id


def open_finding(s: Any, pid: int, code: str) -> m.FindingRow:
    rows = [f for f in wl.open_findings(s, pid) if f.code == code and f.state == "open"]
    assert rows, f"no open {code}; got {[(f.code, f.state) for f in wl.open_findings(s, pid)]}"
    return rows[0]


def aza_rows(s: Any, pid: int) -> list[m.Medication]:
    q = select(m.Medication).where(m.Medication.patient_id == pid, m.Medication.drug == "azathioprine")
    return list(s.scalars(q.order_by(m.Medication.start, m.Medication.id)))


def stored(s: Session, pid: int) -> m.AssessmentRow:
    row = s.get(m.AssessmentRow, pid)
    assert row is not None
    s.refresh(row)
    return row


def fbc_follow_ups(row: m.AssessmentRow, state: tuple[str, ...] = ("open", "overdue")) -> list[dict[str, Any]]:
    return [u for u in row.result["monitoring"]["follow_ups"] if u["group"] == "FBC" and u["state"] in state]


def audit_rows(s: Any, pid: int, resource: str) -> list[m.AuditEvent]:
    q = select(m.AuditEvent).where(m.AuditEvent.patient_id == pid, m.AuditEvent.resource == resource)
    return list(s.scalars(q.order_by(m.AuditEvent.id)))


@pytest.fixture
def clinician(db: Database) -> Principal:
    with db.session() as s:
        return service.principal_of(auth.create_user(s, "nurse", "nurse-password-1", "clinician"))


# ---------------------------------------------------------------- holding azathioprine
def test_a_withheld_review_puts_azathioprine_on_hold(db: Database, kb: Knowledge, clinician: Principal) -> None:
    with db.session() as s:
        pid = make_patient(s, kb, "HOLD-1")
        f = open_finding(s, pid, "lab-neutrophils-low")
        assert f.severity == "critical"
        service.review(s, kb, clinician, f.id, "withheld", "held pending repeat FBC", "api")
    with db.session() as s:
        before, held = aza_rows(s, pid)
        assert (before.status, before.end) == ("stopped", TODAY - timedelta(days=1))
        assert held.status == "on-hold" and held.end is None
        assert held.start == held.status_date == TODAY
        assert held.daily_dose_mg == 100 and held.reason == f.message.replace(" (2 days ago)", "")  # no stale age
        entry = next(x for x in load_record(s, pid).medications if x.status == "on-hold")
        assert entry.reason == f.message.replace(" (2 days ago)", "")
        assert entry.status_date == TODAY and entry.daily_dose_mg == 100
        (review,) = s.scalars(select(m.Review).where(m.Review.patient_id == pid))
        assert review.outcome == "withheld"
        (event,) = audit_rows(s, pid, "hold-azathioprine")
        assert event.action == "write" and event.username == "nurse" and "lab-neutrophils-low" in event.detail
        row = stored(s, pid)
        assert row.result["treatment"]["state"] == "on-hold", row.result["treatment"]
        assert row.result["treatment"]["since"] == TODAY.isoformat()
        assert row.treatment == "on-hold"


def test_a_withheld_review_without_azathioprine_records_the_review_only(
    db: Database, kb: Knowledge, clinician: Principal
) -> None:
    with db.session() as s:
        pid = make_patient(s, kb, "HOLD-2", aza=False, neutrophils=0.6)
        f = open_finding(s, pid, "lab-neutrophils-low")
        service.review(s, kb, clinician, f.id, "withheld", "", "api")
    with db.session() as s:
        assert aza_rows(s, pid) == []
        assert s.scalar(select(m.FindingRow.state).where(m.FindingRow.id == f.id)) == "reviewed"
        assert audit_rows(s, pid, "hold-azathioprine") == []


def test_hold_checks_before_it_writes(db: Database, kb: Knowledge) -> None:
    with db.session() as s:
        pid = make_patient(s, kb, "HOLD-3", neutrophils=None)
        none = make_patient(s, kb, "HOLD-3B", aza=False, neutrophils=None)
    cases: list[tuple[int, dict[str, Any], str, str]] = [
        (pid, {"reason": "  "}, "reason", "required"),
        (pid, {"reason": "infection", "start": (TODAY + timedelta(days=1)).isoformat()}, "start", "future"),
        (pid, {"reason": "infection", "start": ago(200)}, "start", "after"),
        (none, {"reason": "infection"}, "azathioprine", "no active azathioprine"),
    ]
    for patient, kw, fld, fragment in cases:
        with pytest.raises(FormError) as err, db.session() as s:
            hold_azathioprine(s, kb, patient, **kw)
        assert err.value.field == fld and fragment in err.value.message, (kw, err.value)
    with db.session() as s:
        assert [r.status for r in aza_rows(s, pid)] == ["active"]
        hold_azathioprine(s, kb, pid, "chest infection, on IV antibiotics", ago(5))
    with pytest.raises(FormError, match="already on hold"), db.session() as s:
        hold_azathioprine(s, kb, pid, "again")


def test_a_dose_change_restarts_a_course_on_hold(db: Database, kb: Knowledge) -> None:
    with db.session() as s:
        pid = make_patient(s, kb, "RESTART-1", neutrophils=None)
        hold_azathioprine(s, kb, pid, "chest infection", ago(10))
        wl.refresh_patient(s, kb, pid)
        assert stored(s, pid).treatment == "on-hold"
    with pytest.raises(FormError, match="the hold"), db.session() as s:
        change_dose(s, kb, pid, 50, ago(10))  # must start after the hold began
    with db.session() as s:
        change_dose(s, kb, pid, 50, ago(3))
        wl.refresh_patient(s, kb, pid)
    with db.session() as s:
        first, hold, restart = aza_rows(s, pid)
        assert first.status == "stopped" and first.end == TODAY - timedelta(days=11)
        assert hold.status == "on-hold" and hold.end == TODAY - timedelta(days=4)  # closed, kept as history
        assert restart.status == "active" and restart.daily_dose_mg == 50 and restart.end is None
        row = stored(s, pid)
        assert row.result["treatment"]["state"] == "active", row.result["treatment"]
        assert row.treatment == "active"


# ---------------------------------------------------------------- follow-ups stay until answered
def test_the_awaiting_mark_survives_a_review_and_a_complete_fbc_clears_it(
    db: Database, kb: Knowledge, clinician: Principal
) -> None:
    with db.session() as s:
        pid = make_patient(s, kb, "AWAIT-1")
        row = stored(s, pid)
        (fu,) = fbc_follow_ups(row)
        assert fu["finding_code"] == "lab-neutrophils-low" and fu["since"] == ago(2)
        # 14 days after the low count; on a weekend or bank holiday, the working day before (never later)
        asked = TODAY - timedelta(days=2)
        assert fu["due"] == working_day(kb.calendar, asked + timedelta(days=14), asked).isoformat()
        assert "FBC" in row.awaiting.split() and row.awaiting.startswith(" ") and row.awaiting.endswith(" ")
        fbc_group = next(g for g in row.result["monitoring"]["groups"] if g["name"] == "FBC")
        assert fbc_group["next_due"] == fu["due"] and fbc_group["due_reason"] == "follow-up"
        # Every open finding reviewed as "repeat test booked": nothing open, the repeat still awaited.
        for f in wl.open_findings(s, pid):
            if f.state == "open":
                service.review(s, kb, clinician, f.id, "repeat-test-booked", "FBC booked", "api")
    with db.session() as s:
        row = stored(s, pid)
        assert row.open_count == 0 and "FBC" in row.awaiting.split()
        entries, _ = wl.worklist(s, wl.WorklistFilter(search="AWAIT-1"))
        (entry,) = entries
        assert entry.open_count == 0 and "FBC" in entry.awaiting  # on the list for the awaited result only
        for analyte, value in NORMAL_FBC:
            service.add_lab(s, kb, clinician, pid, analyte, value, "10*9/L", ago(0), "api")
    with db.session() as s:
        row = stored(s, pid)
        assert "FBC" not in row.awaiting.split() and fbc_follow_ups(row) == []
        entries, _ = wl.worklist(s, wl.WorklistFilter(search="AWAIT-1"))
        assert all("FBC" not in e.awaiting for e in entries)


def test_a_partial_fbc_after_the_finding_does_not_answer_it(db: Database, kb: Knowledge) -> None:
    """A lone (normal) neutrophil count is not a complete FBC: the repeat is still awaited."""
    with db.session() as s:
        pid = make_patient(s, kb, "AWAIT-3")
        add_lab(s, kb, pid, "neutrophils", 2.4, "10*9/L", ago(1))
        wl.refresh_patient(s, kb, pid)
        row = stored(s, pid)
        assert "FBC" in row.awaiting.split(), row.result["monitoring"]["follow_ups"]
        assert [u["since"] for u in fbc_follow_ups(row)] == [ago(2)]


def test_a_result_dated_before_the_finding_does_not_answer_it(db: Database, kb: Knowledge) -> None:
    with db.session() as s:
        pid = make_patient(s, kb, "AWAIT-2", on=1)
        for analyte, value in NORMAL_FBC:  # a complete FBC, but from the day before the low count
            add_lab(s, kb, pid, analyte, value, "10*9/L", ago(2))
        wl.refresh_patient(s, kb, pid)
        assert "FBC" in stored(s, pid).awaiting.split()


def test_dismissing_a_follow_up_needs_a_reason_and_is_audited(
    db: Database, kb: Knowledge, clinician: Principal
) -> None:
    with db.session() as s:
        pid = make_patient(s, kb, "DISMISS-1")
        (fu,) = fbc_follow_ups(stored(s, pid))
    for key, reason, fragment in ((fu["key"], " ", "required"), ("FBC|1999-01-01", "not needed", "no open follow-up")):
        with pytest.raises(FormError, match=fragment), db.session() as s:
            service.dismiss_follow_up(s, kb, clinician, pid, key, reason, "api")
    with db.session() as s:
        assert s.scalars(select(m.FollowUpDismissal)).all() == []
        service.dismiss_follow_up(s, kb, clinician, pid, fu["key"], "FBC repeated at the district hospital", "web")
    with db.session() as s:
        (dis,) = s.scalars(select(m.FollowUpDismissal).where(m.FollowUpDismissal.patient_id == pid))
        assert dis.key == fu["key"] and dis.user_id == clinician.id
        assert load_record(s, pid).dismissed_follow_ups == (
            (fu["key"], "FBC repeated at the district hospital", TODAY),
        )
        row = stored(s, pid)
        assert "FBC" not in row.awaiting.split() and fbc_follow_ups(row) == []
        (gone,) = fbc_follow_ups(row, ("dismissed",))
        assert gone["dismissed_reason"] == "FBC repeated at the district hospital"
        *refused, event = audit_rows(s, pid, "dismiss-follow-up")
        assert (event.action, event.username, event.channel) == ("write", "nurse", "web")
        assert fu["key"] in event.detail and "district hospital" in event.detail
        # The two refused attempts above are audited too, with their outcome (kept after the rollback)
        outcomes = [(e.action, e.detail.split(";")[0]) for e in refused]
        assert outcomes == [("write-failed", "failed: FormError (reason)"), ("write-failed", "failed: FormError (key)")]
    with pytest.raises(FormError, match="already been dismissed"), db.session() as s:
        service.dismiss_follow_up(s, kb, clinician, pid, fu["key"], "again", "api")


def test_findings_are_ordered_by_severity_then_newest_first() -> None:
    stamp = datetime(2026, 1, 1)

    def row(i: int, code: str, severity: str) -> m.FindingRow:
        return m.FindingRow(id=i, code=code, severity=severity, message=code, first_seen=stamp)

    rows = [row(1, "w-old", "warning"), row(2, "i", "info"), row(3, "c-old", "critical"), row(4, "w-new", "warning")]
    rows.append(row(5, "c-new", "critical"))
    result = {
        "findings": [
            {"code": "c-new", "message": "c-new", "date": "2026-03-02"},
            {"code": "c-old", "message": "c-old", "date": "2026-02-01"},
            {"code": "w-new", "message": "w-new", "date": "2026-03-01"},
            {"code": "w-old", "message": "w-old", "date": None},  # no date: when it was first seen
        ]
    }
    assert [r.code for r in wl.order_findings(rows, result)] == ["c-new", "c-old", "w-new", "w-old", "i"]


def test_migration_0002_upgrades_a_populated_database(db: Database, kb: Knowledge) -> None:
    """Down to 0001, store an assessment the old way, and up again: the new columns are filled with
    their defaults and the assessment is marked stale, so the next refresh re-assesses it."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from azaguard.store.db import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO patients (id, identifier, name, monitoring_team, phone, created_at) "
                "VALUES (1, 'MIG-1', 'Mia Migrate', 'specialist', '', :now)"
            ),
            {"now": datetime.now()},
        )
        conn.execute(
            text(
                "INSERT INTO assessments (patient_id, as_of, knowledge_version, phase, worst_open, open_count, "
                "categories, result, computed_at) VALUES (1, :today, 'k', 'stable', 3, 0, '', '{}', :now)"
            ),
            {"today": TODAY, "now": datetime.now()},
        )
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    with db.session() as s:
        row = s.get(m.AssessmentRow, 1)
        assert row is not None and row.awaiting == "" and row.treatment == "" and row.as_of < TODAY
        assert wl.refresh_stale(s, kb) == 1


# ---------------------------------------------------------------- API and pages (one clinic per engine)
@dataclass
class Clinic:
    db: Database
    api: TestClient
    web: dict[str, TestClient]
    tokens: dict[str, str]
    csrf: dict[str, str]
    ids: dict[str, int] = field(default_factory=dict)

    def call(self, who: str, method: str, path: str, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who != "anon" else {}
        return self.api.request(method, path, headers=headers, **kw)

    def post_form(self, who: str, path: str, data: dict[str, str]) -> Any:
        return self.web[who].post(path, data={**data, "csrf": self.csrf[who]})


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def clinic(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kb: Knowledge) -> Iterator[Clinic]:
    for db in fresh_database(request.param, request, tmp_path_factory.mktemp(f"loop-{request.param}")):
        with db.session() as s:
            own = make_patient(s, kb, "LOOP-OWN")
            users = {
                "clin": auth.create_user(s, "clin", "clinician-password-1", "clinician"),
                "pat": auth.create_user(s, "pat", "patient-password-1", "patient", "LOOP-OWN"),
            }
            tokens = {k: auth.create_api_token(s, u, "tests") for k, u in users.items()}
            sessions = {k: auth.create_session(s, u) for k, u in users.items()}
        app = create_app(db, kb)
        web = {k: TestClient(app, follow_redirects=False, cookies={COOKIE: tok}) for k, (tok, _) in sessions.items()}
        yield Clinic(db, TestClient(app), web, tokens, {k: v[1] for k, v in sessions.items()}, {"own": own})


def new_patient(clinic: Clinic, kb: Knowledge, ident: str, **kw: Any) -> int:
    with clinic.db.session() as s:
        return make_patient(s, kb, f"{ident}-{clinic.db.engine.dialect.name}", **kw)


def follow_up_key(clinic: Clinic, pid: int) -> str:
    a = clinic.call("clin", "GET", f"/api/v1/patients/{pid}/assessment").json()
    keys = [str(u["key"]) for u in a["monitoring"]["follow_ups"] if u["group"] == "FBC" and u["state"] == "open"]
    assert keys, a["monitoring"]["follow_ups"]
    return keys[0]


def assert_error(r: Any, status: int, fragment: str = "") -> None:
    assert r.status_code == status, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert err["status"] == status and fragment.lower() in err["message"].lower(), err


def test_api_hold_and_restart(clinic: Clinic, kb: Knowledge) -> None:
    pid = new_patient(clinic, kb, "API-HOLD", neutrophils=None)
    r = clinic.call("clin", "POST", f"/api/v1/patients/{pid}/hold", json={"reason": "shingles", "start": ago(1)})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["drug"] == "azathioprine" and body["status"] == "on-hold" and body["mg_per_day"] == 100
    assert body["start"] == body["status_date"] == ago(1) and body["end"] is None and body["reason"] == "shingles"
    meds = clinic.call("clin", "GET", f"/api/v1/patients/{pid}/medicines").json()["medicines"]
    assert [x["status"] for x in meds] == ["stopped", "on-hold"] and meds[0]["end"] == ago(2)
    a = clinic.call("clin", "GET", f"/api/v1/patients/{pid}/assessment").json()
    assert a["treatment"]["state"] == "on-hold" and a["treatment"]["reason"] == "shingles", a["treatment"]
    assert a["dose"]["restart_criteria"], a["dose"]
    assert_error(clinic.call("clin", "POST", f"/api/v1/patients/{pid}/hold", json={"reason": "x"}), 400, "already")
    r = clinic.call("clin", "POST", f"/api/v1/patients/{pid}/dose", json={"mg_per_day": 75, "start": ago(0)})
    assert r.status_code == 201, r.text
    meds = clinic.call("clin", "GET", f"/api/v1/patients/{pid}/medicines").json()["medicines"]
    assert [(x["status"], x["end"]) for x in meds][1:] == [("on-hold", ago(1)), ("active", None)]
    a = clinic.call("clin", "GET", f"/api/v1/patients/{pid}/assessment").json()
    assert a["treatment"]["state"] == "active"


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({}, 422, "reason"),
        ({"reason": ""}, 422, "reason"),
        ({"reason": "   "}, 400, "reason"),
        ({"reason": "x", "start": "soon"}, 422, "start"),
        ({"reason": "x", "until": "2030-01-01"}, 422, "extra"),
        ({"reason": "x\x00"}, 422, "nul"),
    ],
    ids=["missing", "empty", "blank", "bad-date", "extra-field", "nul"],
)
def test_api_hold_refuses_bad_requests(
    clinic: Clinic, kb: Knowledge, body: dict[str, Any], status: int, fragment: str
) -> None:
    pid = clinic.ids["own"]
    assert_error(clinic.call("clin", "POST", f"/api/v1/patients/{pid}/hold", json=body), status, fragment)
    with clinic.db.session() as s:
        assert [r.status for r in aza_rows(s, pid)] == ["active"]


def test_api_dismiss_follow_up(clinic: Clinic, kb: Knowledge) -> None:
    pid = new_patient(clinic, kb, "API-DISMISS")
    entry = clinic.call("clin", "GET", "/api/v1/worklist", params={"search": "API-DISMISS"}).json()["entries"][0]
    assert "FBC" in entry["awaiting"] and entry["treatment"] == "active"
    key = follow_up_key(clinic, pid)
    url = f"/api/v1/patients/{pid}/follow-ups/dismiss"
    assert_error(clinic.call("clin", "POST", url, json={"key": key}), 422, "reason")
    assert_error(clinic.call("clin", "POST", url, json={"key": key, "reason": " "}), 400, "reason")
    assert_error(clinic.call("clin", "POST", url, json={"key": "nope", "reason": "x"}), 400, "no open follow-up")
    r = clinic.call("clin", "POST", url, json={"key": key, "reason": "repeated elsewhere"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["key"] == key and body["patient_id"] == pid and body["reason"] == "repeated elsewhere"
    a = clinic.call("clin", "GET", f"/api/v1/patients/{pid}/assessment").json()
    (u,) = [u for u in a["monitoring"]["follow_ups"] if u["key"] == key]
    assert u["state"] == "dismissed" and u["dismissed_reason"] == "repeated elsewhere"
    entries = clinic.call("clin", "GET", "/api/v1/worklist", params={"search": "API-DISMISS"}).json()["entries"]
    assert all("FBC" not in e["awaiting"] for e in entries)
    assert_error(clinic.call("clin", "POST", url, json={"key": key, "reason": "again"}), 400, "already")


@pytest.mark.parametrize(
    ("route", "action"), [("hold", "hold-azathioprine"), ("follow-ups/dismiss", "dismiss-follow-up")]
)
def test_api_a_patient_cannot_hold_or_dismiss(clinic: Clinic, kb: Knowledge, route: str, action: str) -> None:
    body = {"reason": "I feel fine"} if route == "hold" else {"key": "FBC|2026-01-01", "reason": "I feel fine"}
    own = clinic.ids["own"]
    other = new_patient(clinic, kb, f"API-OTHER-{route.replace('/', '-')}")
    for pid, status, says in ((own, 403, "not allowed"), (other, 404, "does not exist")):
        r = clinic.call("pat", "POST", f"/api/v1/patients/{pid}/{route}", json=body)
        assert_error(r, status, says)
        assert "Nora" not in r.text
        with clinic.db.session() as s:
            events = [(e.username, e.action, e.channel) for e in audit_rows(s, pid, action)]
            assert ("pat", "denied", "api") in events and ("pat", "write", "api") not in events, events
            assert [r.status for r in aza_rows(s, pid)] == ["active"]
            assert s.scalars(select(m.FollowUpDismissal).where(m.FollowUpDismissal.patient_id == pid)).all() == []
    assert_error(clinic.call("clin", "POST", f"/api/v1/patients/987654/{route}", json=body), 404, "does not exist")
    assert_error(clinic.call("anon", "POST", f"/api/v1/patients/{own}/{route}", json=body), 401, "bearer")


def test_web_patient_page_shows_hold_restart_criteria_and_follow_ups(clinic: Clinic, kb: Knowledge) -> None:
    pid = new_patient(clinic, kb, "WEB-LOOP")
    page = clinic.web["clin"].get(f"/patients/{pid}")
    assert page.status_code == 200
    html = page.text
    assert 'id="treatment"' in html and 'data-state="active"' in html
    assert 'id="form-hold"' in html and 'id="follow-ups"' in html
    key = follow_up_key(clinic, pid)
    assert f'data-key="{key}"' in html and "repeat asked for by" in html
    # The findings: critical before warning.
    sev = [x.split('"')[0] for x in html.split('<article class="finding ')[1:]]
    ranks = [{"critical": 0, "warning": 1, "info": 2}[x] for x in sev]
    assert ranks == sorted(ranks), sev

    # A hold without a reason is marked and saves nothing.
    r = clinic.post_form("clin", f"/patients/{pid}/hold", {"reason": "", "start": ago(0)})
    assert r.status_code == 400 and 'aria-invalid="true"' in r.text and "is required" in r.text
    with clinic.db.session() as s:
        assert [x.status for x in aza_rows(s, pid)] == ["active"]
    r = clinic.post_form("clin", f"/patients/{pid}/hold", {"reason": "febrile, on antibiotics", "start": ago(0)})
    assert r.status_code == 303 and r.headers["location"].endswith("#summary")
    html = clinic.web["clin"].get(f"/patients/{pid}").text
    assert 'data-state="on-hold"' in html and "ON HOLD since" in html and "febrile, on antibiotics" in html
    assert 'id="restart-criteria"' in html and 'id="titration-plan"' not in html
    with clinic.db.session() as s:
        assert audit_rows(s, pid, "hold-azathioprine")[-1].channel == "web"

    # Dropping the follow-up needs a reason; then it is listed as dropped.
    r = clinic.post_form("clin", f"/patients/{pid}/follow-up", {"key": key, "reason": ""})
    assert r.status_code == 400 and "is required" in r.text
    r = clinic.post_form("clin", f"/patients/{pid}/follow-up", {"key": key, "reason": "done at the GP surgery"})
    assert r.status_code == 303 and r.headers["location"].endswith("#follow-ups")
    html = clinic.web["clin"].get(f"/patients/{pid}").text
    assert "dropped follow-up" in html and "done at the GP surgery" in html
    assert f'data-key="{key}" data-group="FBC"' not in html  # no longer an open row


def test_web_worklist_shows_on_hold_and_awaiting(clinic: Clinic, kb: Knowledge) -> None:
    pid = new_patient(clinic, kb, "WEB-WORK")
    with clinic.db.session() as s:
        hold_azathioprine(s, kb, pid, "neutropenia")
        wl.refresh_patient(s, kb, pid)
        ident = s.scalar(select(m.Patient.identifier).where(m.Patient.id == pid))
    html = clinic.web["clin"].get("/worklist", params={"q": ident}).text
    assert f'data-patient="{ident}"' in html
    assert '<span class="tag hold">on hold</span>' in html
    assert 'data-awaiting="FBC">awaiting FBC result</span>' in html


def test_web_patient_view_says_paused_and_gives_the_repeat_date(clinic: Clinic, kb: Knowledge) -> None:
    pid = new_patient(clinic, kb, "WEB-ME")
    with clinic.db.session() as s:
        ident = s.scalar(select(m.Patient.identifier).where(m.Patient.id == pid))
        user = auth.create_user(s, f"me-{ident}", "patient-password-2", "patient", ident)
        token, _ = auth.create_session(s, user)
    me = TestClient(clinic.api.app, follow_redirects=False, cookies={COOKIE: token})
    html = me.get("/me").text
    assert 'id="paused"' not in html
    # The repeat FBC the low count asked for (14 days after it, or the working day before) comes
    # before the scheduled test; the page writes it with its weekday, the machine-readable date beside it.
    asked = TODAY - timedelta(days=2)
    expected = working_day(kb.calendar, asked + timedelta(days=14), asked)
    assert f'<time datetime="{expected.isoformat()}">{long_date(expected)}</time>' in html
    assert 'id="next-repeat"' in html
    with clinic.db.session() as s:
        hold_azathioprine(s, kb, pid, "neutropenia")
        wl.refresh_patient(s, kb, pid)
    html = me.get("/me").text
    assert 'id="paused"' in html and "Your azathioprine is paused" in html
    assert "neutropenia" not in html  # the clinical reason is for the clinic, not the patient page


@pytest.mark.parametrize("form", ["hold", "follow-up"])
def test_web_a_patient_cannot_hold_or_dismiss(clinic: Clinic, form: str) -> None:
    pid = clinic.ids["own"]
    data = {"reason": "I feel fine", "key": "FBC|2026-01-01", "start": ago(0)}
    r = clinic.post_form("pat", f"/patients/{pid}/{form}", data)
    assert r.status_code == 403
    with clinic.db.session() as s:
        assert [x.status for x in aza_rows(s, pid)] == ["active"]
        assert s.scalars(select(m.FollowUpDismissal).where(m.FollowUpDismissal.patient_id == pid)).all() == []
        last = s.scalars(select(m.AuditEvent).order_by(m.AuditEvent.id.desc())).first()
        assert last is not None and (last.username, last.action, last.patient_id) == ("pat", "denied", pid)
