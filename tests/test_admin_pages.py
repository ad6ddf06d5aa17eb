"""The admin pages over HTTP (TestClient, SQLite): the audit log, its CSV export, quarantine, API docs.

- /audit shows patients by clinic identifier, never by database id; filters by user, patient
  identifier, action and date range, kept in the URL (page links and the CSV link carry them);
  50 events a page.
- /audit.csv exports the same events (csv module), neutralises cells a spreadsheet would run as a
  formula, and is itself audited as a read; clinicians are refused.
- /quarantine: a clinician sees, read-only, only the items of the imports they ran; an admin sees
  every item with the re-process and discard forms.
- /docs and /redoc load every file from this server: no other host is named, and each file loads.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dbfixtures import fresh_database
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from azaguard import auth
from azaguard.app import create_app
from azaguard.knowledge import Knowledge
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.store.writes import add_patient
from azaguard.web.admin import AUDIT_PAGE, csv_cell
from azaguard.web.views import COOKIE

IDENT = "ADM-P-000417"  # the patient whose page is read; their database id must not show
OTHER = "ADM-P-000009"
PAGER = "seeded-pager"  # a user with exactly PAGED seeded events
PAGED = 2 * AUDIT_PAGE + 20
DAY1, DAY2, DAY3 = date(2031, 3, 1), date(2031, 3, 2), date(2031, 3, 3)  # seeded events on fixed days
# Values a spreadsheet would run as formulas (the export must keep them as text)
FORMULAS = ['=HYPERLINK("http://x","y")', "+SUM(1,2)", "-2+3", "@cmd", "\tTAB", "\rCR"]


@dataclass
class Site:
    db: Database
    app: Any
    web: dict[str, TestClient] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)
    csrf: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    def html(self, who: str, url: str, status: int = 200) -> str:
        r = self.web[who].get(url)
        assert r.status_code == status, (r.status_code, r.text[:400])
        return r.text

    def audit_rows(self, who: str, url: str) -> list[dict[str, str]]:
        """The audit table's rows as {column: text}."""
        page = self.html(who, url)
        rows = []
        for tr in re.findall(r"<tr class=\"[^\"]*\" data-action=.*?</tr>", page, re.S):
            cells = dict(re.findall(r'<td data-label="([^"]+)"[^>]*>(.*?)</td>', tr, re.S))
            rows.append({k: unescape(v).strip() for k, v in cells.items()})
        return rows

    def last_audit(self) -> m.AuditEvent:
        with self.db.session() as s:
            row = s.scalars(select(m.AuditEvent).order_by(m.AuditEvent.id.desc()).limit(1)).one()
            s.expunge(row)
            return row


def unescape(text: str) -> str:
    import html

    return html.unescape(text)


def csv_upload(client: TestClient, csrf: str, text: str, name: str) -> None:
    files = {"file": (name, text.encode(), "text/csv")}
    r = client.post("/import", data={"csrf": csrf}, files=files)
    assert r.status_code == 200 and 'id="import-summary"' in r.text, r.text[:400]


@pytest.fixture(scope="module")
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kb: Knowledge) -> Iterator[Site]:
    gen = fresh_database("sqlite", request, tmp_path_factory.mktemp("admin-pages"))
    db = next(gen)
    with db.session() as s:
        # Other patients first, so the identifier's database id (a small number) differs from it
        for n in range(1, 12):
            add_patient(s, f"ADM-FILL-{n:03d}", f"Filler {n}", "1970-01-01", "female")
        p = add_patient(s, IDENT, "Petra Auditview", "1966-05-04", "female")
        q = add_patient(s, OTHER, "Otto Other", "1961-01-01", "male")
        users = {
            "boss": auth.create_user(s, "boss", "admin-password-1", "admin"),
            "cleo": auth.create_user(s, "cleo", "clinician-password-c", "clinician"),
            "carl": auth.create_user(s, "carl", "clinician-password-k", "clinician"),
            "petra": auth.create_user(s, "petra", "patient-password-p", "patient", IDENT),
        }
        sessions = {k: auth.create_session(s, u) for k, u in users.items()}
        tokens = {k: auth.create_api_token(s, users[k], "tests") for k in ("boss", "cleo")}
        base = datetime.combine(DAY1, datetime.min.time()) + timedelta(hours=9)
        for i in range(PAGED):  # spread over three days: DAY1 40, DAY2 40, DAY3 the rest
            day = min(i // 40, 2)
            at = base + timedelta(days=day, minutes=i)
            s.add(m.AuditEvent(at=at, username=PAGER, action="read", resource=f"seeded {i}", channel="cli"))
        for i, text in enumerate(FORMULAS):
            s.add(
                m.AuditEvent(
                    at=base + timedelta(hours=2, minutes=i),
                    username="formula-user",
                    action="write",
                    resource=text,
                    detail=text,
                    channel="web",
                )
            )
        for action, user in (("read", "seed-a"), ("read", "seed-a"), ("write", "seed-b"), ("denied", "seed-a")):
            s.add(m.AuditEvent(at=base, username=user, action=action, resource="seeded", patient_id=q.id))
        ids = {"p": p.id, "q": q.id}
    app = create_app(db, kb)
    web = {"anon": TestClient(app, follow_redirects=False)}
    for k, (tok, _) in sessions.items():
        web[k] = TestClient(app, follow_redirects=False, cookies={COOKIE: tok})
    site = Site(db, app, web, ids, {k: v[1] for k, v in sessions.items()}, tokens)
    # Each clinician imports a file with one record the clinic cannot accept (an unknown patient)
    csv_upload(
        web["cleo"],
        site.csrf["cleo"],
        "patient_id,date,code,value,unit\nCLEO-NOBODY,2025-01-01,751-8,2.0,10*9/L\n",
        "cleo.csv",
    )
    csv_upload(
        web["carl"],
        site.csrf["carl"],
        "patient_id,date,code,value,unit\nCARL-NOBODY,2025-01-01,751-8,2.0,10*9/L\n",
        "carl.csv",
    )
    # A clinician reads both patients' pages: audited reads that name the patients
    for pid in (p.id, q.id):
        assert web["cleo"].get(f"/patients/{pid}").status_code == 200
    yield site
    gen.close()


# ---------------------------------------------------------------- audit page
def test_the_audit_page_names_patients_by_identifier_not_database_id(site: Site) -> None:
    rows = site.audit_rows("boss", f"/audit?user=cleo&patient={IDENT}")
    assert rows, "cleo's reads of the patient are on the audit page"
    assert {r["Patient"] for r in rows} == {IDENT}
    assert {r["User"] for r in rows} == {"cleo"}
    assert all(r["Patient"] != str(site.ids["p"]) for r in rows)
    # and the whole unfiltered page shows no bare database id in the patient column
    for r in site.audit_rows("boss", "/audit"):
        assert not r["Patient"].isdigit(), r


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (f"user={PAGER}", PAGED),
        (f"user={PAGER}&from={DAY2}", PAGED - 40),
        (f"user={PAGER}&to={DAY1}", 40),
        (f"user={PAGER}&from={DAY2}&to={DAY2}", 40),
        (f"user={PAGER}&action=write", 0),
        ("user=formula-user&action=write", len(FORMULAS)),
        (f"patient={OTHER}&user=seed-a", 3),
        (f"patient={OTHER}&user=seed-a&action=read", 2),
        (f"patient={OTHER}&action=write", 1),
        (f"patient={IDENT}&user=seed-a", 0),
        ("patient=NO-SUCH-PATIENT", 0),
    ],
)
def test_the_audit_filters_narrow_the_events(site: Site, query: str, expected: int) -> None:
    page = site.html("boss", f"/audit?{query}")
    assert re.search(rf"<small>{expected} events? matching the filters", page), (query, page[:1500])


def test_an_audit_filter_by_patient_and_action_shows_only_those_events(site: Site) -> None:
    rows = site.audit_rows("boss", f"/audit?patient={OTHER}&action=denied")
    assert [(r["Patient"], r["Action"], r["User"]) for r in rows] == [(OTHER, "denied", "seed-a")]
    assert rows[0]["When"] == f"{DAY1} 09:00:00"


def test_a_bad_date_is_marked_on_the_form(site: Site) -> None:
    page = site.html("boss", "/audit?from=2031-13-45", 400)
    assert 'aria-invalid="true"' in page and "From: a date in YYYY-MM-DD" in page
    page = site.html("boss", f"/audit?from={DAY3}&to={DAY1}", 400)
    assert "To: on or after the From date" in page
    assert site.web["boss"].get("/audit.csv?to=yesterday").status_code == 400


def test_the_audit_log_pages_by_50_with_the_filters_in_the_links(site: Site) -> None:
    first = site.audit_rows("boss", f"/audit?user={PAGER}")
    assert len(first) == AUDIT_PAGE
    assert first[0]["What"] == f"seeded {PAGED - 1}"  # newest first
    page = site.html("boss", f"/audit?user={PAGER}")
    assert f"Events 1-{AUDIT_PAGE} of {PAGED} (page 1 of 3)" in page
    assert f'href="/audit?user={PAGER}&amp;page=2"' in page
    assert f'href="/audit.csv?user={PAGER}"' in page
    last = site.audit_rows("boss", f"/audit?user={PAGER}&page=3")
    assert len(last) == PAGED - 2 * AUDIT_PAGE
    assert last[-1]["What"] == "seeded 0"
    # a page past the end shows the last page; a page number that is not one shows the first
    assert site.audit_rows("boss", f"/audit?user={PAGER}&page=99") == last
    assert site.audit_rows("boss", f"/audit?user={PAGER}&page=x") == first
    everything = [r["What"] for n in (1, 2, 3) for r in site.audit_rows("boss", f"/audit?user={PAGER}&page={n}")]
    assert everything == [f"seeded {i}" for i in reversed(range(PAGED))]


def test_clinicians_and_patients_may_not_read_the_audit_log(site: Site) -> None:
    for who in ("cleo", "petra"):
        for url in ("/audit", "/audit.csv", "/audit?from=bad"):
            r = site.web[who].get(url)
            assert r.status_code == 403, (who, url, r.status_code)
            assert "seeded" not in r.text
    assert site.web["anon"].get("/audit.csv").headers["location"] == "/login"


# ---------------------------------------------------------------- CSV export
def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_the_csv_export_has_the_filtered_events_and_is_audited(site: Site) -> None:
    r = site.web["boss"].get(f"/audit.csv?user={PAGER}&from={DAY2}")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"].startswith('attachment; filename="audit-')
    assert r.text.splitlines()[0] == "when,user,action,what,patient,channel,detail"
    rows = read_csv(r.text)
    assert len(rows) == PAGED - 40  # every matching event, not one page
    assert {x["user"] for x in rows} == {PAGER}
    assert rows[0]["what"] == f"seeded {PAGED - 1}" and rows[-1]["what"] == "seeded 40"
    assert all(x["when"] >= f"{DAY2} 00:00:00" for x in rows)
    # the export is itself a read in the audit log, with the filters it used
    row = site.last_audit()
    assert (row.username, row.action, row.resource) == ("boss", "read", "audit-log export")
    assert f"user={PAGER}" in row.detail and f"from={DAY2}" in row.detail and f"{PAGED - 40} events" in row.detail


def test_the_csv_export_names_patients_by_identifier(site: Site) -> None:
    rows = read_csv(site.web["boss"].get(f"/audit.csv?patient={IDENT}&user=cleo").text)
    assert rows and {x["patient"] for x in rows} == {IDENT}


def test_the_csv_export_keeps_formulas_as_text(site: Site) -> None:
    rows = read_csv(site.web["boss"].get("/audit.csv?user=formula-user").text)
    assert sorted(x["what"] for x in rows) == sorted("'" + f for f in FORMULAS)
    assert sorted(x["detail"] for x in rows) == sorted("'" + f for f in FORMULAS)
    for x in rows:
        for value in x.values():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), x


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=1+2", "'=1+2"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("a=1", "a=1"),
        ("2026-01-01", "2026-01-01"),
        ("", ""),
        (None, ""),
        ("'quoted", "'quoted"),
    ],
)
def test_csv_cell_neutralises_formula_starts_only(value: str | None, cell: str) -> None:
    assert csv_cell(value) == cell


# ---------------------------------------------------------------- quarantine
def quarantine_reasons(page: str) -> list[tuple[str, str]]:
    """(record, patient identifier) of each quarantine row."""
    return re.findall(r'<td data-label="Record">(.*?)</td><td data-label="Patient">(.*?)</td>', page)


def test_a_clinician_sees_only_their_own_imports_quarantine_read_only(site: Site) -> None:
    page = site.html("cleo", "/quarantine")
    assert 'id="quarantine-read-only"' in page
    patients = {p for _, p in quarantine_reasons(page)}
    assert patients == {"CLEO-NOBODY"}
    assert "/reprocess" not in page and "/discard" not in page and '<button type="submit">Re-process' not in page
    assert {p for _, p in quarantine_reasons(site.html("carl", "/quarantine"))} == {"CARL-NOBODY"}
    # the nav offers quarantine to clinicians, the audit log only to admins
    assert 'href="/quarantine"' in page and 'href="/audit"' not in page


def test_an_admin_sees_every_quarantined_item_with_its_actions(site: Site) -> None:
    page = site.html("boss", "/quarantine")
    assert {"CLEO-NOBODY", "CARL-NOBODY"} <= {p for _, p in quarantine_reasons(page)}
    assert "/reprocess" in page and "/discard" in page and 'id="quarantine-read-only"' not in page


def test_a_clinician_cannot_act_on_quarantine_even_their_own(site: Site) -> None:
    with site.db.session() as s:
        batch = select(m.ImportBatch.id).where(m.ImportBatch.username == "cleo")
        item = s.scalar(select(func.min(m.QuarantineItem.id)).where(m.QuarantineItem.batch_id.in_(batch)))
    assert item is not None
    for verb, form in (("reprocess", {}), ("discard", {"reason": "mine"})):
        r = site.web["cleo"].post(f"/quarantine/{item}/{verb}", data={**form, "csrf": site.csrf["cleo"]})
        assert r.status_code == 403, (verb, r.status_code)
    with site.db.session() as s:
        found = s.get(m.QuarantineItem, item)
        assert found is not None and found.state == "open"


def test_a_patient_may_not_see_quarantine(site: Site) -> None:
    assert site.web["petra"].get("/quarantine").status_code == 403


def test_the_api_lists_a_clinicians_own_quarantine_too(site: Site) -> None:
    def listed(who: str) -> set[str]:
        headers = {"Authorization": f"Bearer {site.tokens[who]}"}
        r = site.web["anon"].get("/api/v1/quarantine", headers=headers)
        assert r.status_code == 200, r.text
        return {x["patient_identifier"] for x in r.json()["items"]}

    assert listed("cleo") == {"CLEO-NOBODY"}
    assert {"CLEO-NOBODY", "CARL-NOBODY"} <= listed("boss")


# ---------------------------------------------------------------- API documentation, no CDN
LOCAL_REF = re.compile(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""")


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_api_docs_load_every_file_from_this_server(site: Site, path: str) -> None:
    r = site.web["anon"].get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://|//[a-z0-9]", r.text, re.I), "the page names another host"
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "http" not in csp
    refs = LOCAL_REF.findall(r.text)
    assert "/openapi.json" in refs
    assets = [x for x in refs if x.startswith("/static/")]
    assert len(assets) >= (3 if path == "/docs" else 2), refs  # script (+ stylesheet) + favicon
    for ref in assets:
        asset = site.web["anon"].get(ref)
        assert asset.status_code == 200 and len(asset.content) > 500, ref
        kind = asset.headers["content-type"]
        assert kind.split("/")[0] in ("text", "image", "application"), (ref, kind)
        vendored = Path(__file__).resolve().parents[1] / "azaguard" / "web" / ref.lstrip("/")
        assert vendored.read_bytes() == asset.content
    assert site.web["anon"].get("/openapi.json").json()["info"]["title"] == "azaguard"


def test_the_vendored_docs_files_keep_their_licences() -> None:
    vendor = Path(__file__).resolve().parents[1] / "azaguard" / "web" / "static" / "vendor"
    for folder, licence in (("swagger-ui", "Apache License"), ("redoc", "MIT License")):
        assert licence in (vendor / folder / "LICENSE").read_text()
    readme = (vendor / "README.md").read_text()
    assert "swagger-ui-dist@5.35.0" in readme and "redoc@2.5.4" in readme
