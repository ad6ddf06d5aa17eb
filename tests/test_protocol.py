"""Local protocol files: they change thresholds and intervals, are cited, and are validated."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import codes, finding, on_treatment, run

from azaguard.knowledge import KnowledgeError, load_knowledge

EXAMPLE = Path(__file__).resolve().parent.parent / "protocols" / "example-trust-neurology.toml"


@pytest.fixture(scope="module")
def local_kb():
    return load_knowledge(EXAMPLE)


def test_local_protocol_is_named_in_every_output(local_kb):
    a = run(on_treatment(), "2025-03-01", local_kb)
    assert "Example Trust neurology azathioprine shared-care protocol" in a.knowledge_version
    assert "v3.1" in a.knowledge_version
    assert a.protocol == {"name": "Example Trust neurology azathioprine shared-care protocol", "version": "3.1"}


def test_default_knowledge_names_no_local_protocol(kb):
    assert "local protocol" not in kb.version


@pytest.mark.parametrize(
    ("value", "fires_default", "fires_local"), [(1.9, False, True), (2.0, False, False), (1.5, True, True)]
)
def test_local_neutrophil_threshold_replaces_default(kb, local_kb, value, fires_default, fires_local):
    b = on_treatment()
    b.fbc("2025-02-20", 5.0, value, 250)
    assert ("lab-neutrophils-low" in codes(run(b, "2025-02-21", kb))) is fires_default
    local = run(b, "2025-02-21", local_kb)
    assert ("lab-neutrophils-low" in codes(local)) is fires_local
    if fires_local:
        assert (
            finding(local, "lab-neutrophils-low").sources[0].startswith("local-protocol: Local protocol 'Example Trust")
        )


def test_local_maintenance_interval_is_three_calendar_months(kb, local_kb):
    b = on_treatment(start="2024-01-01")
    b.bloods("2025-01-15")
    default = {g.name: g for g in run(b, "2025-02-01", kb).monitoring.groups}
    local = {g.name: g for g in run(b, "2025-02-01", local_kb).monitoring.groups}
    assert str(default["FBC"].next_due) == "2025-04-09"  # 12 weeks
    assert str(local["FBC"].next_due) == "2025-04-15"  # 3 calendar months


def test_local_live_vaccine_washout(kb, local_kb):
    b = on_treatment(start="2024-01-01")
    b.entries = [e for e in b.entries if e["resourceType"] != "MedicationStatement"]
    b.azathioprine("2024-01-01", 150, end="2025-01-01")
    b.vaccine_order("Yellow fever vaccine", "37", "2025-05-01")
    assert "vaccine-live-ordered" not in codes(run(b, "2025-05-01", kb))  # 4 months > 3
    assert "vaccine-live-ordered" in codes(run(b, "2025-05-01", local_kb))  # 4 months < 6


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[protocol]\nname='x'\n", "needs string fields 'name' and 'version'"),
        ("[protocol]\nname='x'\nversion='1'\n[thresholds.no-such-rule]\nvalue=1\n", "names no rule"),
        ("[protocol]\nname='x'\nversion='1'\n[thresholds.wbc-low]\ncomparator='>'\n", "cannot set ['comparator']"),
        ("[protocol]\nname='x'\nversion='1'\n[interactions]\n", "cannot be overridden"),
        ("[protocol]\nname='x'\nversion='1'\n[thresholds.wbc-low]\nvalue='low'\n", "thresholds"),
        ("[protocol]\nname='x'\nversion='1'\n[schedule]\nmaintenance_interval={weeks=0}\n", "schedule"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_bad_local_protocol_fails_loudly(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(KnowledgeError) as exc:
        load_knowledge(path)
    assert message in str(exc.value)


def test_missing_local_protocol_file(tmp_path):
    with pytest.raises(KnowledgeError, match="cannot read local protocol"):
        load_knowledge(tmp_path / "absent.toml")
