"""Phones and access, in a real headless Chromium against a real uvicorn server on a demo clinic.

Every page (login, worklist, patient pages, import, quarantine, GP letters, audit log, guide, the
patient's own page, the error pages), as each role sees it, at 390 x 844 (a phone) and 1280 x 900:
- nothing is wider than the window: document.scrollingElement.scrollWidth <= innerWidth;
- axe-core (the npm package, pinned in tests/package.json) finds no serious or critical violation;
- on the pages patients use, every link, button and form field is a tap target of at least 44 x 44 px;
- the page breaks no Content-Security-Policy rule (axe is served from the page's own origin by a
  Playwright route, so it runs under the pages' real CSP).
A new GET route fails `test_every_page_is_on_the_list` until it is added to PAGES or NOT_PAGES.
At 390 px the tables are cards (one per row, headed by the column names). /docs (Swagger UI) and
/redoc render with every request to a host other than this machine refused.
Screenshots: test-artifacts/screenshots/access-*.png.

axe-core is installed by .ci/run (`npm install --prefix tests --no-package-lock`); without it the
tests skip, unless AZAGUARD_REQUIRE_BROWSER=1 (CI), where a missing axe-core fails.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from browser_fixtures import browser_type_launch_args, live_server, screenshot  # noqa: F401
from browser_fixtures import login as sign_in
from fastapi.routing import iter_route_contexts
from sqlalchemy import select

from azaguard import service
from azaguard.app import Settings, create_app
from azaguard.ingest import parse_text
from azaguard.knowledge import load_knowledge
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.synth import build_demo, scenario_list

N_PATIENTS = 40
AXE = Path(__file__).resolve().parent / "node_modules" / "axe-core" / "axe.min.js"
AXE_URL = "/__browser-tests__/axe.min.js"  # answered by a Playwright route, never by the server
LOGINS = {
    "nurse": ("nurse", "demo-nurse"),
    "admin": ("admin", "demo-admin"),
    "patient1": ("patient1", "demo-patient1"),  # NMC000001, a stable course
    "patient2": ("patient2", "demo-patient2"),  # NMC000002, being titrated
}
VIEWPORTS = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1280, "height": 900}}
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
# ReDoc shows its makers' logo from their host; the docs' CSP refuses it and ReDoc then leaves the
# image out (its onError handler). That refusal is the one console message allowed.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def pid(scenario: str) -> int:
    return scenario_list(N_PATIENTS).index(scenario) + 1


@dataclass(frozen=True)
class Visit:
    name: str
    who: str | None  # a key of LOGINS; None: not logged in
    path: str
    status: int = 200
    patient_page: bool = False  # a page patients use: tap targets of 44 px
    axe: bool = True


# The route each page belongs to is matched by test_every_page_is_on_the_list.
PAGES = [
    Visit("login", None, "/login", patient_page=True),
    Visit("not-found", None, "/no-such-page", 404, patient_page=True),
    Visit("worklist", "nurse", "/worklist"),
    Visit("worklist-filtered", "nurse", "/worklist?severity=critical"),
    Visit("patient-interaction", "nurse", f"/patients/{pid('allopurinol')}"),
    Visit("patient-on-hold", "nurse", f"/patients/{pid('on-hold')}"),
    Visit("patient-pregnancy", "nurse", f"/patients/{pid('pregnancy')}"),
    Visit("patient-fever", "nurse", f"/patients/{pid('fever')}"),
    Visit("patient-form-error", "nurse", "POST-LAB-ERROR"),  # a bad value, marked on its form
    Visit("import", "nurse", "/import"),
    Visit("quarantine-clinician", "nurse", "/quarantine"),
    Visit("letters", "nurse", "/letters"),
    Visit("cds-report", "nurse", "/reports/cds"),
    Visit("sources", None, "/sources", patient_page=True),
    Visit("guide-clinician", "nurse", "/guide"),
    Visit("not-allowed", "nurse", "/audit", 403),
    Visit("quarantine-admin", "admin", "/quarantine"),
    Visit("audit", "admin", "/audit"),
    Visit("audit-filtered", "admin", "/audit?user=nurse&action=read"),
    Visit("me", "patient1", "/me", patient_page=True),
    Visit("me-reported", "patient1", "/me?reported=1", patient_page=True),
    Visit("me-titrating", "patient2", "/me", patient_page=True),
    Visit("guide-patient", "patient1", "/guide", patient_page=True),
    Visit("patient-not-found", "patient1", f"/patients/{pid('fever')}", 404, patient_page=True),
    # Third-party pages for developers: checked for width and offline rendering, not by axe (Swagger
    # UI nests buttons in its operation headers and colours its method badges below 4.5:1).
    Visit("docs", None, "/docs", axe=False),
    Visit("redoc", None, "/redoc", axe=False),
]
# GET routes that are not pages: files, redirects and data.
NOT_PAGES = {
    "/",
    "/openapi.json",
    "/patients/{patient_id}/charts.svg",
    "/patients/{patient_id}/documents/{document_id}.pdf",
    "/me/next-test.ics",
    "/audit.csv",
    "/cds-services",  # CDS Hooks discovery: JSON for EHRs (JWT required)
    "/smart/launch",  # SMART App Launch: redirects to the EHR's authorization endpoint
    "/smart/callback",  # SMART App Launch: the EHR's redirect back, then to the patient page
}


@dataclass
class Clinic:
    url: str
    db: Database


@pytest.fixture(scope="module")
def clinic(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clinic]:
    path = tmp_path_factory.mktemp("access") / "clinic.db"
    shutil.copy(sqlite_template, path)
    db = Database(f"sqlite:///{path}", create=False)
    build_demo(db, N_PATIENTS)
    kb = load_knowledge()
    with db.session() as s:  # the nurse imports a file with a record the clinic cannot accept
        nurse = s.scalars(select(m.User).where(m.User.username == "nurse")).one()
        text = "patient_id,date,code,value,unit\nNMC999999,2025-01-01,751-8,2.0,10*9/L\n"
        service.import_parsed(s, kb, service.principal_of(nurse), parse_text(text, kb, "csv", "a.csv"), "a.csv", "web")
    app = create_app(db, kb, settings=Settings(clinic_name="Access test clinic"))
    with live_server(app) as url:
        yield Clinic(url, db)
    db.engine.dispose()


@pytest.fixture(scope="session")
def axe_source() -> Path:
    if AXE.exists():
        return AXE
    hint = "npm install --prefix tests --no-package-lock (as .ci/run does)"
    if os.environ.get("AZAGUARD_REQUIRE_BROWSER") == "1":
        pytest.fail(f"axe-core is required (AZAGUARD_REQUIRE_BROWSER=1) but {AXE} is missing: {hint}")
    pytest.skip(f"axe-core is not installed ({AXE} is missing): {hint}")


def login(page: Any, who: str) -> None:
    sign_in(page, *LOGINS[who])


@pytest.fixture
def browse(new_context: Callable[..., Any], clinic: Clinic) -> Callable[..., Any]:
    """A page in a fresh context of the given size, logged in as `who`; axe is served at AXE_URL
    (the tests that run it ask for the axe_source fixture first). The server-drawn chart image is
    refused (it is slow and not what these tests are about)."""

    def make(who: str | None, viewport: dict[str, int]) -> Any:
        ctx = new_context(base_url=clinic.url, viewport=viewport)
        ctx.set_default_timeout(20_000)
        ctx.route(re.compile(r"/charts\.svg$"), lambda route: route.abort())
        ctx.route(
            re.compile(re.escape(AXE_URL) + "$"),
            lambda route: route.fulfill(path=str(AXE), content_type="application/javascript"),
        )
        page = ctx.new_page()
        page.csp_errors = []
        page.on("console", lambda msg: page.csp_errors.append(msg.text) if csp_refusal(msg.text) else None)
        if who:
            login(page, who)
        return page

    return make


def csp_refusal(text: str) -> bool:
    return "Content Security Policy" in text and not text.startswith(f"Loading the image '{REDOC_LOGO}'")


def open_visit(page: Any, v: Visit) -> int:
    if v.path == "POST-LAB-ERROR":  # the patient page with a form error marked on it
        page.goto(f"/patients/{pid('stable')}")
        form = page.locator("form#form-lab")
        form.locator("input[name=value]").fill("abc")
        with page.expect_navigation() as nav:
            form.locator("button[type=submit]").click()
        return int(nav.value.status)
    response = page.goto(v.path)
    return int(response.status)


def serious_violations(page: Any) -> list[str]:
    page.add_script_tag(url=AXE_URL)
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['impact']} {v['id']} ({v['help']}): " + "; ".join(" ".join(n["target"]) for n in v["nodes"][:5])
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


SMALL_TARGETS = """() => {
  const small = [];
  const sel = 'a[href], button, input:not([type=hidden]), select, textarea, summary';
  for (const el of document.querySelectorAll(sel)) {
    // a checkbox or radio button is tapped through its label
    const box = el.matches('input[type=checkbox], input[type=radio]') ? (el.closest('label') || el) : el;
    const r = box.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;  // not shown (inside a closed <details>)
    if (r.width < 43.5 || r.height < 43.5) {
      small.push(`${el.tagName.toLowerCase()} "${(el.textContent || el.name || '').trim().slice(0, 40)}"`
                 + ` ${Math.round(r.width)}x${Math.round(r.height)}`);
    }
  }
  return small;
}"""


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
@pytest.mark.parametrize("v", PAGES, ids=[v.name for v in PAGES])
def test_page_fits_a_phone_and_passes_axe(
    request: pytest.FixtureRequest, browse: Callable[..., Any], v: Visit, viewport: str
) -> None:
    if v.axe:
        request.getfixturevalue("axe_source")  # skips (or fails in CI) without axe-core
    page = browse(v.who, VIEWPORTS[viewport])
    status = open_visit(page, v)
    if v.path == "POST-LAB-ERROR":
        assert page.locator("[aria-invalid=true]").count() >= 1, "the bad value is marked"
    else:
        assert status == v.status, f"{v.path}: HTTP {status}"
    if v.path in ("/docs", "/redoc"):
        page.wait_for_selector(".swagger-ui .opblock" if v.path == "/docs" else "redoc h1", state="attached")
    screenshot(page, f"access-{v.name}-{viewport}")
    width, inner = page.evaluate("[document.scrollingElement.scrollWidth, window.innerWidth]")
    assert width <= inner, f"{v.path} is {width} px wide in a {inner} px window: it scrolls sideways"
    if v.axe:
        assert serious_violations(page) == [], v.path
    if v.patient_page:
        assert page.evaluate("document.body.classList.contains('for-patient')"), "phone.css targets body.for-patient"
        assert page.evaluate(SMALL_TARGETS) == [], f"{v.path}: tap targets under 44 x 44 px"
    assert page.csp_errors == [], page.csp_errors


def test_every_page_is_on_the_list() -> None:
    """Each GET route of the app (but the REST and FHIR APIs) is visited above, or listed as not a page."""
    app = create_app(Database("sqlite://", create=False), load_knowledge())
    routes = {
        r.path
        for r in iter_route_contexts(app.routes)
        if r.path and not r.path.startswith(("/api/", "/fhir/")) and "GET" in (getattr(r, "methods", None) or ())
    }
    visited = {"/patients/{patient_id}" if v.path.startswith(("/patients/", "POST")) else v.path for v in PAGES}
    visited = {urlsplit(p).path for p in visited}
    unlisted = routes - visited - NOT_PAGES - {"/no-such-page"}
    assert not unlisted, f"pages no access test visits: {sorted(unlisted)} (add them to PAGES or NOT_PAGES)"
    assert not NOT_PAGES - routes, f"stale NOT_PAGES: {sorted(NOT_PAGES - routes)}"


def test_tables_are_cards_on_a_phone_and_tables_on_a_desktop(browse: Callable[..., Any]) -> None:
    shown = {}
    for size in ("phone", "desktop"):
        page = browse("admin", VIEWPORTS[size])
        page.goto("/audit")
        row = page.locator("table#audit tbody tr").first
        shown[size] = row.evaluate("tr => getComputedStyle(tr).display")
        header = page.locator("table#audit thead").bounding_box()
        label = row.locator("td").first.evaluate("td => getComputedStyle(td, '::before').content")
        if size == "phone":
            assert header is not None and header["height"] <= 1, "the column headings are hidden, not removed"
            assert label == '"When: "'
            box = row.bounding_box()
            assert box is not None and box["width"] <= VIEWPORTS[size]["width"]
            screenshot(page, "access-audit-cards-phone")
    assert shown == {"phone": "block", "desktop": "table-row"}


def offline_page(browse: Callable[..., Any]) -> tuple[Any, list[str]]:
    """A desktop page whose requests to any host but this machine are refused (and listed)."""
    page = browse(None, VIEWPORTS["desktop"])
    refused: list[str] = []

    def only_loopback(route: Any) -> None:
        if (urlsplit(route.request.url).hostname or "") in LOOPBACK or route.request.url.startswith(("data:", "blob:")):
            route.fallback()
        else:
            refused.append(route.request.url)
            route.abort()

    page.context.route("**/*", only_loopback)
    return page, refused


def test_swagger_ui_renders_with_no_other_host(browse: Callable[..., Any]) -> None:
    page, refused = offline_page(browse)
    page.goto("/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "azaguard" in page.locator(".swagger-ui .info .title").inner_text()
    assert page.locator(".swagger-ui .opblock").count() >= 20  # every operation is listed
    page.locator(".swagger-ui .opblock-summary-control").first.click()  # and opens
    page.wait_for_selector(".swagger-ui .opblock.is-open .opblock-body")
    screenshot(page, "access-docs-offline")
    assert refused == [] and page.csp_errors == []


def test_redoc_renders_with_no_other_host(browse: Callable[..., Any]) -> None:
    page, refused = offline_page(browse)
    page.goto("/redoc")
    page.wait_for_selector("redoc h1")
    assert "azaguard" in page.locator("redoc h1").first.inner_text()
    assert page.get_by_text("/api/v1/worklist").count() >= 1
    screenshot(page, "access-redoc-offline")
    assert refused == [] and page.csp_errors == []
