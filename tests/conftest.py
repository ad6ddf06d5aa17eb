"""Shared fixtures: the real knowledge base and a one-call way to assess a built bundle."""

from __future__ import annotations

from datetime import date

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
