"""The worklist says what is wrong (issue 8, item 1), on SQLite, through the pages and the API.

Each row's words, value, date and age are the engine's most urgent open finding (and the next one
once it is reviewed); days overdue are counted on the day the list is read, on both sides of the due
date, and agree with the engine; the counts at the top are the totals of the lists they link to;
every sort order holds; patients are claimed, assigned and unassigned (audited), and "my patients"
lists the caller's; stored assessments from before migration 0004 are filled in by the next refresh;
and reading the list never assesses anyone.

One demo clinic of 40 synthetic patients (plus the patients the tests add) for the module.
"""

from __future__ import annotations

import html
import itertools
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text, update

from azaguard import auth, domain
from azaguard import worklist as wl
from azaguard.app import create_app
from azaguard.engine import assess
from azaguard.engine.findings import age_text
from azaguard.knowledge import Knowledge
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.store.records import load_record
from azaguard.store.writes import add_lab, add_patient, change_dose
from azaguard.synth import build_demo
from azaguard.web import views
from azaguard.web.views import COOKIE, WORKLIST_PAGE

TODAY = date.today()
# A complete baseline panel, nothing near a threshold (the values test_monitoring_loop_clinic uses).
BASELINE = (
    ("wbc", 6.0), ("neutrophils", 3.5), ("lymphocytes", 1.8), ("platelets", 250), ("haemoglobin", 135),
    ("mcv", 90), ("alt", 20), ("ast", 22), ("alp", 80), ("bilirubin", 8), ("albumin", 42),
    ("creatinine", 80), ("egfr", 90), ("weight", 70),
)  # fmt: skip
ROW = re.compile(r'<tr class="sev-[^"]*" data-patient="([^"]+)">')
SERIAL = itertools.count(1)
NO_ROW = 987_654_321


def ago(n: int) -> str:
    return (TODAY - timedelta(days=n)).isoformat()


@dataclass
class Clinic:
    db: Database
    web: dict[str, TestClient]  # by username, logged in
    csrf: dict[str, str]
    tokens: dict[str, str]
    api: TestClient

    def call(self, who: str, method: str, path: str, **kw: Any) -> Any:
        return self.api.request(method, path, headers={"Authorization": f"Bearer {self.tokens[who]}"}, **kw)

    def entries(self, who: str = "nurse", **params: Any) -> list[dict[str, Any]]:
        r = self.call(who, "GET", "/api/v1/worklist", params={"limit": 1000, **params})
        assert r.status_code == 200, r.text
        out: list[dict[str, Any]] = r.json()["entries"]
        return out

    def entry(self, ident: str) -> dict[str, Any]:
        (found,) = self.entries(search=ident)
        return found


@pytest.fixture(scope="module")
def clinic(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory, kb: Knowledge) -> Iterator[Clinic]:
    path = tmp_path_factory.mktemp("worklist-words") / "clinic.db"
    shutil.copy(sqlite_template, path)
    db = Database(f"sqlite:///{path}", create=False)
    build_demo(db, 40)  # users nurse (clinician), admin, patient1 and patient2
    web: dict[str, TestClient] = {}
    csrf: dict[str, str] = {}
    tokens: dict[str, str] = {}
    app = create_app(db, kb)
    with db.session() as s:
        auth.create_user(s, "jo", "jo-password-1", "clinician", display_name="Jo Ward")
        for name in ("nurse", "jo", "admin", "patient1"):
            user = s.scalar(select(m.User).where(m.User.username == name))
            assert user is not None
            cookie, csrf[name] = auth.create_session(s, user)
            tokens[name] = auth.create_api_token(s, user, "tests")
            web[name] = TestClient(app, follow_redirects=False, cookies={COOKIE: cookie})
    yield Clinic(db, web, csrf, tokens, TestClient(app))
    db.engine.dispose()


def new_patient(clinic: Clinic, kb: Knowledge, neutrophils: float | None = None, alt: float | None = None) -> int:
    """A patient on azathioprine 100 mg/day for 200 days with complete bloods 30 days ago; optionally
    a neutrophil count 3 days ago and an ALT 5 days ago."""
    with clinic.db.session() as s:
        n = next(SERIAL)
        p = add_patient(s, f"WORDS-{n:03d}", f"Wendy Words {n:03d}", "1968-04-02", "female")
        change_dose(s, kb, p.id, 100, ago(200))
        for analyte, value in BASELINE:
            add_lab(s, kb, p.id, analyte, value, "", ago(30))
        if neutrophils is not None:
            add_lab(s, kb, p.id, "neutrophils", neutrophils, "10*9/L", ago(3))
        if alt is not None:
            add_lab(s, kb, p.id, "alt", alt, "U/L", ago(5))
        wl.refresh_patient(s, kb, p.id)
        return p.id


def ident_of(pid: int, clinic: Clinic) -> str:
    with clinic.db.session() as s:
        found = s.scalar(select(m.Patient.identifier).where(m.Patient.id == pid))
    assert found is not None
    return found


def engine_open_findings(clinic: Clinic, kb: Knowledge, pid: int, as_of: date = TODAY) -> list[domain.Finding]:
    """The engine's findings that are open on the worklist (warning or critical, not reviewed), in
    the engine's order: the first is the most urgent."""
    with clinic.db.session() as s:
        a = assess(load_record(s, pid), kb, as_of)
        still = {(r.code, r.message) for r in wl.open_findings(s, pid) if r.state == "open"}
    return [f for f in a.findings if wl.needs_human(f) and (f.code, f.message) in still]


def row_html(page_text: str, ident: str) -> str:
    start = page_text.index(f'data-patient="{ident}"')
    return page_text[start : page_text.index("</tr>", start)]


def threshold(kb: Knowledge, analyte: str, comparator: str) -> float:
    return next(t.value for t in kb.thresholds if t.analyte == analyte and t.comparator == comparator)


# ---------------------------------------------------------------- what is wrong, in words
def test_each_row_says_the_engines_most_urgent_finding_with_value_date_and_age(clinic: Clinic, kb: Knowledge) -> None:
    # Below the neutrophil threshold (3 days ago) and above the ALT one (5 days ago): both from the knowledge base.
    low, high = threshold(kb, "neutrophils", "<") * 0.5, threshold(kb, "alt", ">") * 1.5
    pid = new_patient(clinic, kb, neutrophils=low, alt=high)
    ident = ident_of(pid, clinic)
    first, *rest = engine_open_findings(clinic, kb, pid)
    assert first.code == "lab-neutrophils-low" and rest, [f.code for f in (first, *rest)]
    assert "(3 days ago)" in first.message  # the engine's words carry the age on the day it assessed

    entry = clinic.entry(ident)
    assert entry["urgent_code"] == first.code
    assert entry["urgent"] == first.message.replace(" (3 days ago)", "") == wl.without_age(first.message)
    assert entry["urgent_date"] == ago(3) == (first.date.isoformat() if first.date else None)
    assert entry["urgent_age"] == "3 days ago"
    (lab,) = [e for e in first.evidence if e.get("type") == "lab"]
    assert entry["urgent_value"] == f"{low:g} {lab['unit']}" == f"{low:g} 10*9/L"
    assert entry["worst"] == first.severity == "critical" and entry["open_count"] == 1 + len(rest)

    row = row_html(clinic.web["nurse"].get("/worklist", params={"q": ident}).text, ident)
    assert f'<p class="urgent" data-code="{first.code}">{html.escape(entry["urgent"])}</p>' in row
    # the page writes the unit as screens do (knowledge display_units); the API keeps UCUM
    assert f'<span class="value">{low:g} x10^9/L</span>' in row and "10*9/L" not in row
    assert f'<time datetime="{ago(3)}">' in row and '<span class="age">3 days ago</span>' in row
    assert f"and {len(rest)} more open finding" in row

    # Reviewed, it leaves the row, which then says the engine's next most urgent open finding.
    with clinic.db.session() as s:
        fid = next(r.id for r in wl.open_findings(s, pid) if r.code == first.code and r.state == "open")
    r = clinic.call("nurse", "POST", f"/api/v1/findings/{fid}/reviews", json={"outcome": "repeat-test-booked"})
    assert r.status_code == 201, r.text
    second = engine_open_findings(clinic, kb, pid)[0]
    assert second.code != first.code and second.date is not None
    entry = clinic.entry(ident)
    assert (entry["urgent_code"], entry["urgent"]) == (second.code, wl.without_age(second.message))
    assert entry["urgent_date"] == second.date.isoformat()
    assert entry["urgent_age"] == age_text(TODAY, second.date) != ""
    labs = [e for e in second.evidence if e.get("type") == "lab"]
    assert entry["urgent_value"] == (f"{labs[-1]['value']:g} {labs[-1]['unit']}" if labs else "")


def test_once_every_finding_is_reviewed_the_row_has_no_words(clinic: Clinic, kb: Knowledge) -> None:
    pid = new_patient(clinic, kb)
    for f in engine_open_findings(clinic, kb, pid):
        with clinic.db.session() as s:
            fid = next(r.id for r in wl.open_findings(s, pid) if (r.code, r.message) == (f.code, f.message))
        r = clinic.call("nurse", "POST", f"/api/v1/findings/{fid}/reviews", json={"outcome": "patient-contacted"})
        assert r.status_code == 201, r.text
    with clinic.db.session() as s:
        row = s.get(m.AssessmentRow, pid)
        assert row is not None
        assert (row.open_count, row.urgent_code, row.urgent_message, row.urgent_value, row.urgent_date) == (
            (0, "", "", "", None)
        )
        wl.refresh_patient(s, kb, pid)  # assessed again: still nothing open, nothing to say
        assert (row.open_count, row.urgent_code) == (0, "")


# ---------------------------------------------------------------- days overdue
def test_days_overdue_are_counted_on_the_day_the_list_is_read_on_both_sides_of_the_due_date(
    clinic: Clinic, kb: Knowledge
) -> None:
    pid = new_patient(clinic, kb)  # normal bloods 30 days ago: the next test is a scheduled one
    ident = ident_of(pid, clinic)
    with clinic.db.session() as s:
        due = s.scalar(select(m.AssessmentRow.next_due).where(m.AssessmentRow.patient_id == pid))
        assert due is not None
        for offset, overdue in ((-1, None), (0, None), (1, 1), (9, 9)):
            day = due + timedelta(days=offset)
            flt = wl.WorklistFilter(search=ident)
            (entry,), _, counts = wl.worklist_with_counts(s, flt, day)
            assert (entry.overdue, entry.days_overdue) == (overdue is not None, overdue), offset
            overdue_list, n, _ = wl.worklist_with_counts(s, wl.WorklistFilter(search=ident, needs="overdue"), day)
            assert n == counts.overdue == len(overdue_list) == (1 if overdue else 0), offset
            # The engine, assessing on that day, agrees: overdue from the day after the due date, by as many days.
            a = assess(load_record(s, pid), kb, day)
            assert any(g.overdue for g in a.monitoring.groups) == (overdue is not None), offset
            if overdue:
                late = [f for f in a.findings if f.code.startswith("monitoring-") and f"{overdue} day" in f.message]
                assert late, [f.message for f in a.findings]

    # The page: the badge counts the days since the stored due date, today.
    for offset, badge in ((1, None), (0, None), (-1, "overdue by 1 day<"), (-4, "overdue by 4 days<")):
        with clinic.db.session() as s:
            s.execute(
                update(m.AssessmentRow)
                .where(m.AssessmentRow.patient_id == pid)
                .values(next_due=TODAY + timedelta(days=offset))
            )
        row = row_html(clinic.web["nurse"].get("/worklist", params={"q": ident}).text, ident)
        if badge is None:
            assert "overdue" not in row, offset
        else:
            assert f'data-days="{-offset}">{badge}' in row, row
        assert clinic.entry(ident)["days_overdue"] == (None if badge is None else -offset)
    with clinic.db.session() as s:
        wl.refresh_patient(s, kb, pid)  # the stored due date back to the engine's


# ---------------------------------------------------------------- counts
NEEDS_TEST: dict[str, Callable[[dict[str, Any]], bool]] = {
    "critical": lambda e: e["worst"] == "critical",
    "warning": lambda e: e["worst"] == "warning",
    "overdue": lambda e: bool(e["overdue"] and e["days_overdue"] > 0),
    "awaiting": lambda e: bool(e["awaiting"]),
}


@pytest.mark.parametrize("filters", [{}, {"team": "gp"}, {"severity": "warning"}], ids=["all", "gp", "warning"])
def test_the_counts_are_the_rows_they_link_to(clinic: Clinic, filters: dict[str, str]) -> None:
    body = clinic.call("nurse", "GET", "/api/v1/worklist", params={"limit": 1000, **filters}).json()
    counts, everyone = body["counts"], body["entries"]
    assert body["total"] == len(everyone)
    assert all(counts[k] for k in NEEDS_TEST) or filters, counts  # the demo clinic has some of each
    for key, test in NEEDS_TEST.items():
        assert counts[key] == sum(1 for e in everyone if test(e)), key
        narrowed = clinic.call("nurse", "GET", "/api/v1/worklist", params={"limit": 1000, "needs": key, **filters})
        got = narrowed.json()
        assert got["total"] == len(got["entries"]) == counts[key], key
        assert all(test(e) for e in got["entries"]), key
        assert got["counts"] == counts  # the counts ignore the `needs` filter they set
    # The page: each count is a link that keeps the other filters and lists that many patients.
    page = clinic.web["nurse"].get("/worklist", params=filters).text
    for key in NEEDS_TEST:
        found = re.search(rf'<a class="count {key}" data-needs="{key}" href="([^"]+)"><strong>(\d+)</strong>', page)
        assert found is not None, key
        href, shown = html.unescape(found.group(1)), int(found.group(2))
        assert shown == counts[key] and f"needs={key}" in href and all(f"{k}={v}" in href for k, v in filters.items())
        listed = clinic.web["nurse"].get(href)
        assert f"<h1>Worklist <small>{shown} patient" in listed.text, key
        assert len(ROW.findall(listed.text)) == min(shown, WORKLIST_PAGE), key
        assert 'aria-current="true"><strong>' in listed.text


# ---------------------------------------------------------------- sort orders
RANK = {"critical": 0, "warning": 1, "info": 2, None: 3}


def _due(e: dict[str, Any]) -> tuple[bool, str]:
    return e["next_due"] is None, e["next_due"] or ""


SORT_KEYS: dict[str, Callable[[dict[str, Any]], tuple[Any, ...]]] = {
    "urgency": lambda e: (RANK[e["worst"]], *_due(e), e["name"]),
    "due": lambda e: (*_due(e), RANK[e["worst"]], e["name"]),
    "name": lambda e: (e["name"], e["identifier"]),
    "owner": lambda e: (e["owner"] is None, e["owner_name"] or "", RANK[e["worst"]], *_due(e), e["name"]),
}


@pytest.mark.parametrize("sort", list(SORT_KEYS))
def test_each_sort_order(clinic: Clinic, sort: str) -> None:
    default = clinic.entries()
    for e, owner in zip(default[:6], ("jo", "nurse", "admin", "jo", "nurse", "admin"), strict=True):
        r = clinic.call("nurse", "POST", f"/api/v1/patients/{e['patient_id']}/owner", json={"username": owner})
        assert r.status_code == 200, r.text
    got = clinic.entries(sort=sort)
    keys = [SORT_KEYS[sort](e) for e in got]
    assert keys == sorted(keys), sort
    assert sorted(e["identifier"] for e in got) == sorted(e["identifier"] for e in clinic.entries())
    if sort == "owner":  # the owned first, by their owner's name
        owned = [e for e in got if e["owner"]]
        assert got[: len(owned)] == owned and len(owned) >= 6
        assert {"Clinic Admin", "Jo Ward", "Sam Specialist-Nurse"} <= {e["owner_name"] for e in owned}
    # The page shows the same order, and keeps it in the page links, the count links and the filter form.
    page = clinic.web["nurse"].get("/worklist", params={"sort": sort}).text
    assert ROW.findall(page) == [e["identifier"] for e in got[:WORKLIST_PAGE]]
    assert f'<option value="{sort}" selected>' in page
    links = [html.unescape(h) for h in re.findall(r'<a (?:class="count[^"]*"[^>]*|rel="next") href="([^"]+)"', page)]
    assert links and all(f"sort={sort}" in h for h in links), links


@pytest.mark.parametrize("params", [{"sort": "name"}, {"sort": "due", "team": "specialist", "needs": "overdue"}])
def test_paging_keeps_the_sort_and_the_filters(
    clinic: Clinic, monkeypatch: pytest.MonkeyPatch, params: dict[str, str]
) -> None:
    monkeypatch.setattr(views, "WORKLIST_PAGE", 4)  # this clinic's list in many pages
    page = clinic.web["nurse"].get("/worklist", params=params).text
    seen, pages = ROW.findall(page), 1
    while (link := re.search(r'<a rel="next" href="([^"]+)"', page)) is not None:
        href = html.unescape(link.group(1))
        assert all(f"{k}={v}" in href for k, v in params.items()) and f"page={pages + 1}" in href, href
        page = clinic.web["nurse"].get(href).text
        got = ROW.findall(page)
        assert 0 < len(got) <= 4 and f"(page {pages + 1} of " in page
        seen, pages = seen + got, pages + 1
    assert pages > 1 and seen == [e["identifier"] for e in clinic.entries(**params)]  # every patient once, in order


# ---------------------------------------------------------------- claim, assign, unassign, my patients
def audit_rows(clinic: Clinic, pid: int, since: int) -> list[tuple[str, str, str, str, str]]:
    with clinic.db.session() as s:
        q = select(m.AuditEvent).where(m.AuditEvent.patient_id == pid, m.AuditEvent.id > since)
        return [(a.username, a.action, a.resource, a.channel, a.detail) for a in s.scalars(q.order_by(m.AuditEvent.id))]


def audit_mark(clinic: Clinic) -> int:
    with clinic.db.session() as s:
        return int(s.scalar(select(func.max(m.AuditEvent.id))) or 0)


def test_claim_assign_unassign_and_my_patients(clinic: Clinic, kb: Knowledge) -> None:
    pid = new_patient(clinic, kb, neutrophils=threshold(kb, "neutrophils", "<") * 0.5)
    ident = ident_of(pid, clinic)
    nurse, mark = clinic.web["nurse"], audit_mark(clinic)
    row = row_html(nurse.get("/worklist", params={"q": ident}).text, ident)
    assert 'data-owner=""' in row and '<span class="owner-name">nobody</span>' in row
    assert 'name="username" value="nurse"' in row and ">Assign to me</button>" in row

    # Claim on the worklist row: back to the page it was on, the patient now in "my patients".
    back = "/worklist?sort=owner&page=1"
    r = nurse.post(f"/patients/{pid}/owner", data={"csrf": clinic.csrf["nurse"], "username": "nurse", "next": back})
    assert (r.status_code, r.headers["location"]) == (303, back)
    mine = nurse.get("/worklist", params={"mine": "1"}).text
    assert ident in ROW.findall(mine)
    assert '<span class="owner-name">you</span>' in row_html(mine, ident) and ">Unassign</button>" in mine
    assert all(e["owner"] == "nurse" for e in clinic.entries(mine="true"))
    assert clinic.entry(ident)["owner"] == "nurse" and clinic.entry(ident)["owner_name"] == "Sam Specialist-Nurse"
    assert audit_rows(clinic, pid, mark) == [("nurse", "write", "claim-patient", "web", "owner nurse")]

    # Assigned to another clinician through the API: it leaves the nurse's list for Jo's.
    mark = audit_mark(clinic)
    r = clinic.call("nurse", "POST", f"/api/v1/patients/{pid}/owner", json={"username": "jo"})
    assert r.status_code == 200 and r.json() == {"patient_id": pid, "owner": "jo", "owner_name": "Jo Ward"}
    assert ident not in [e["identifier"] for e in clinic.entries(mine="true")]
    assert ident in [e["identifier"] for e in clinic.entries("jo", mine="true")]
    assert 'data-owner="jo"' in row_html(nurse.get("/worklist", params={"q": ident}).text, ident)
    assert audit_rows(clinic, pid, mark) == [("nurse", "write", "assign-patient", "api", "owner jo")]

    # Jo unassigns with the form on the row (an empty username): nobody owns the patient.
    mark = audit_mark(clinic)
    r = clinic.web["jo"].post(f"/patients/{pid}/owner", data={"csrf": clinic.csrf["jo"], "username": ""})
    assert (r.status_code, r.headers["location"]) == (303, f"/patients/{pid}#summary")
    assert clinic.entry(ident)["owner"] is None
    assert audit_rows(clinic, pid, mark) == [("jo", "write", "unassign-patient", "web", "owner nobody")]
    r = clinic.call("jo", "POST", f"/api/v1/patients/{pid}/owner", json={"username": None})
    assert r.status_code == 200 and r.json()["owner"] is None


@pytest.mark.parametrize(
    ("who", "target", "body", "status"),
    [
        ("nurse", "missing", {"username": "nurse"}, 404),  # an id no patient has, as every other route
        ("nurse", "mine", {"username": "patient1"}, 400),  # a patient cannot own patients
        ("nurse", "mine", {"username": "nobody-by-that-name"}, 400),
        ("nurse", "mine", {}, 422),  # the key is required (null unassigns)
        ("patient1", "own", {"username": "nurse"}, 403),  # a patient may not, even on their own record
        ("patient1", "mine", {"username": "nurse"}, 404),  # and another patient's record is not found
        ("anon", "mine", {"username": "nurse"}, 401),
    ],
    ids=["unknown-id", "patient-owner", "unknown-user", "no-username", "patient-own", "patient-other", "anon"],
)
def test_the_owner_route_refuses(
    clinic: Clinic, kb: Knowledge, who: str, target: str, body: dict[str, Any], status: int
) -> None:
    pid = new_patient(clinic, kb) if target == "mine" else NO_ROW
    if target == "own":
        with clinic.db.session() as s:
            own = s.scalar(select(m.User.patient_id).where(m.User.username == "patient1"))
        assert own is not None
        pid = own
    headers = {"Authorization": f"Bearer {clinic.tokens[who]}"} if who != "anon" else {}
    r = clinic.api.post(f"/api/v1/patients/{pid}/owner", json=body, headers=headers)
    assert r.status_code == status, r.text
    if target != "missing":
        with clinic.db.session() as s:
            assert s.scalar(select(m.Patient.owner_id).where(m.Patient.id == pid)) is None


def test_the_owner_form_needs_its_csrf_token(clinic: Clinic, kb: Knowledge) -> None:
    pid = new_patient(clinic, kb)
    r = clinic.web["nurse"].post(f"/patients/{pid}/owner", data={"username": "nurse"})
    assert r.status_code == 403
    r = clinic.web["nurse"].post(
        f"/patients/{pid}/owner", data={"csrf": clinic.csrf["nurse"], "username": "nurse", "next": "//evil.example/"}
    )
    assert (r.status_code, r.headers["location"]) == (303, f"/patients/{pid}#summary")  # never off the site


# ---------------------------------------------------------------- stored, never re-assessed
def test_a_refresh_writes_the_urgent_columns_a_stored_assessment_lacks(clinic: Clinic, kb: Knowledge) -> None:
    pid = new_patient(clinic, kb, neutrophils=threshold(kb, "neutrophils", "<") * 0.5)
    cols = ("urgent_code", "urgent_message", "urgent_value", "urgent_date")
    with clinic.db.session() as s:
        row = s.get(m.AssessmentRow, pid)
        assert row is not None and row.as_of == TODAY and row.urgent_code == "lab-neutrophils-low"
        filled = {k: getattr(row, k) for k in cols}
        # As a row written before migration 0004 reads (assessed today, so not stale by date)
        s.execute(
            update(m.AssessmentRow)
            .where(m.AssessmentRow.patient_id == pid)
            .values(urgent_code=None, urgent_message="", urgent_value="", urgent_date=None)
        )
    with clinic.db.session() as s:
        assert wl._plans(s, kb, [pid], TODAY)[pid].changed
        wl.refresh_patient(s, kb, pid)
    with clinic.db.session() as s:
        row = s.get(m.AssessmentRow, pid)
        assert row is not None and {k: getattr(row, k) for k in cols} == filled
        assert not wl._plans(s, kb, [pid], TODAY)[pid].changed  # and then nothing more to write


def test_migration_0004_upgrades_a_populated_database(sqlite_db: Database, kb: Knowledge) -> None:
    """Down to 0003, store a patient and an assessment the old way, and up again: nobody owns the
    patient, the urgent columns are empty and the assessment is stale, so the next refresh fills it."""
    from alembic import command
    from alembic.config import Config

    from azaguard.store.db import MIGRATIONS
    from azaguard.store.records import now

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with sqlite_db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003")
    with sqlite_db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO patients (id, identifier, name, monitoring_team, phone, created_at) "
                "VALUES (1, 'MIG-4', 'Mo Migrate', 'specialist', '', :now)"
            ),
            {"now": now()},
        )
        conn.execute(
            text(
                "INSERT INTO assessments (patient_id, as_of, knowledge_version, phase, worst_open, open_count, "
                "categories, awaiting, treatment, result, computed_at, revision, result_digest) "
                "VALUES (1, :today, 'k', 'stable', 1, 1, ' lab ', '', 'active', '{}', :now, 1, '')"
            ),
            {"today": TODAY, "now": now()},
        )
    with sqlite_db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    with sqlite_db.session() as s:
        p, row = s.get(m.Patient, 1), s.get(m.AssessmentRow, 1)
        assert p is not None and p.owner_id is None and p.name == "Mo Migrate"
        assert row is not None and row.urgent_code is None and row.urgent_message == "" and row.as_of < TODAY
        assert wl.refresh_stale(s, kb) == 1
    with sqlite_db.session() as s:
        row = s.get(m.AssessmentRow, 1)
        assert row is not None and row.as_of == TODAY and row.urgent_code is not None


def test_reading_the_worklist_never_assesses(clinic: Clinic, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("the worklist assessed a patient")

    for name in ("assess", "refresh_many", "refresh_patient", "_plans"):
        monkeypatch.setattr(wl, name, refuse)
    for params in ({}, {"sort": "due", "needs": "overdue"}, {"mine": "1", "sort": "owner"}):
        assert clinic.web["nurse"].get("/worklist", params=params).status_code == 200
    assert clinic.call("nurse", "GET", "/api/v1/worklist", params={"sort": "name"}).status_code == 200
