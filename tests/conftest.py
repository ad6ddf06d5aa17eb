"""Shared fixtures: the real knowledge base and a one-call way to assess a built bundle."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from azaguard import domain as d
from azaguard.engine import assess
from azaguard.fhirbuild import BundleBuilder
from azaguard.knowledge import Knowledge, load_knowledge
from azaguard.readers.fhir import read_bundle


@pytest.fixture(scope="session")
def kb() -> Knowledge:
    return load_knowledge()


def run(builder: BundleBuilder, as_of: str | date, kb: Knowledge | None = None) -> d.Assessment:
    """Read the builder's bundle through the real FHIR reader and assess it."""
    knowledge = kb or load_knowledge()
    when = date.fromisoformat(as_of) if isinstance(as_of, str) else as_of
    return assess(read_bundle(builder.bundle(), knowledge), knowledge, when)


def codes(a: d.Assessment) -> set[str]:
    return {f.code for f in a.findings}


def finding(a: d.Assessment, code: str) -> d.Finding:
    matches = [f for f in a.findings if f.code == code]
    assert matches, f"no finding {code}; got {sorted(codes(a))}"
    return matches[0]


def on_treatment(
    pid: str = "p",
    weight: float = 70,
    start: str = "2025-01-06",
    dose: float = 150,
    tpmt: str | None = "*1/*1",
    nudt15: str | None = "*1/*1",
) -> BundleBuilder:
    """A typical myasthenia patient on a stable dose: the base most rule tests vary."""
    b = BundleBuilder(pid, "1970-03-01", "male")
    b.condition("91637004", "Myasthenia gravis", "2024-06-01")
    b.weight(weight, "2024-12-20")
    if tpmt:
        b.genotype("TPMT", tpmt, "2024-12-01")
    if nudt15:
        b.genotype("NUDT15", nudt15, "2024-12-01")
    b.bloods("2024-12-20")
    b.azathioprine(start, dose)
    return b


from dbfixtures import db, pg_admin_url, pg_template, sqlite_db, sqlite_template  # noqa: E402, F401

# ---------------------------------------------------------------- markers (registered in pyproject.toml)
# Every test gets pg (the PostgreSQL half of a test parametrised over both engines), browser,
# slow, or else fast. `pytest -m "not pg and not browser and not slow"` runs the fast tests alone
# (the engine, readers, knowledge, imports and the clinic on SQLite); plain `pytest` runs them all.
BROWSER_FILES = {
    "test_browser.py",
    "test_browser_access.py",
    "test_browser_letters.py",
    "test_browser_patient_view.py",
    "test_browser_worklist.py",
}
# Whole files of slow tests: generated requests against the whole API, the 2,000-post import fuzz,
# CLI runs in subprocesses, password guessing (argon2 by design costs ~0.1 s a guess), and the
# suites that drive the whole app over HTTP with argon2-hashed users (API, access control,
# security, the monitoring loop through the pages): seconds of fixtures and hundreds of requests.
SLOW_FILES = {
    "test_schemathesis.py",
    "test_import_fuzz.py",
    "test_knowledge_cache.py",
    "test_cli.py",
    "test_lockout.py",
    "test_api.py",
    "test_access.py",
    "test_security.py",
    "test_monitoring_loop_clinic.py",
}
# Whole files that start real EHR-side clients and servers (Node tools from ../shared/tools: the FHIR
# memory server, the SMART launcher, the CDS Hooks sandbox; python-hl7's mllp_send): marked `ehr`.
EHR_FILES: set[str] = {
    "test_cds_sandbox.py",
    "test_ehr_tools.py",
    "test_fhir_client.py",  # fhirpy, a real FHIR client, against a live server (~4 s)
    "test_mllp.py",
    "test_smart_launch.py",
}
# Single tests of a second or more in otherwise fast files: the CLI in a subprocess.
SLOW_TESTS = {
    "test_cli_import_and_quarantine_end_to_end",
    "test_cli_import_reports_a_missing_file",
    "test_cli_demo_assesses_every_example",
    "test_guide_command_prints_corrections_and_sources",
}


def _kinds(item: pytest.Item) -> set[str]:
    params = getattr(getattr(item, "callspec", None), "params", {})
    kinds = set()
    if "postgresql" in params.values():
        kinds.add("pg")
    if item.path.name in BROWSER_FILES or "page" in getattr(item, "fixturenames", ()):
        kinds.add("browser")
    if item.path.name in SLOW_FILES or item.name.split("[")[0] in SLOW_TESTS:
        kinds.add("slow")
    if item.path.name in EHR_FILES:
        kinds.add("ehr")
    return kinds or {"fast"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for kind in sorted(_kinds(item)):
            item.add_marker(getattr(pytest.mark, kind))


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Do not even import a file whose tests the -m expression leaves out (the schemathesis
    module loads the whole API schema at import): only for files marked as a whole."""
    whole = (
        {"slow"}
        if collection_path.name in SLOW_FILES
        else {"browser"}
        if collection_path.name in BROWSER_FILES
        else {"ehr"}
        if collection_path.name in EHR_FILES
        else None
    )
    expression = config.getoption("markexpr", "") or ""
    if whole is None or not expression:
        return None
    try:
        from _pytest.mark.expression import Expression

        compiled = Expression.compile(expression)
    except Exception:
        return None
    # Skipped only if no test of the file could match, whether or not it is also a pg test.
    for marks in (whole, whole | {"pg"}):

        def has(name: str, /, **_: str | int | bool | None) -> bool:
            return name in marks  # noqa: B023 (used at once, inside the loop)

        if compiled.evaluate(has):
            return None
    return True
