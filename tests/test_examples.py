"""The examples/ folder is documentation that is tested.

Every example bundle is read through the real FHIR reader and assessed on its own fixed date; each
item of its hand-written `expect` (examples/NN-name.meta.json) is checked separately, so a known
engine bug marks only the affected item as an expected failure. The committed text reports must
equal what the engine prints today, the examples together must exercise every finding category,
and the command line must honour the JSON contract on a couple of them.

Regenerate the examples (bundles, meta files and reports) with:
    .venv/bin/python examples/build_examples.py
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from azaguard import domain as d
from azaguard.engine import assess
from azaguard.knowledge import Knowledge, load_knowledge
from azaguard.readers.fhir import read_bundle_file
from azaguard.render.text import render_text

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
REGENERATE = "re-run `.venv/bin/python examples/build_examples.py` and review the diff"
NAMES = sorted(p.name.removesuffix(".meta.json") for p in EXAMPLES.glob("*.meta.json"))
SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}
GROUPS = ("FBC", "LFT", "renal")

# Known engine bugs: (example, expectation item) -> reason. strict=True: fixing the bug makes the
# test XPASS and fail, so the entry must then be removed here.
BUGS: dict[tuple[str, str], str] = {}


@cache
def kb() -> Knowledge:
    return load_knowledge()


@cache
def meta(name: str) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((EXAMPLES / f"{name}.meta.json").read_text(encoding="utf-8"))
    return meta


@cache
def assessment(name: str) -> d.Assessment:
    record = read_bundle_file(EXAMPLES / f"{name}.json", kb())
    return assess(record, kb(), date.fromisoformat(meta(name)["as_of"]))


def _severities(a: d.Assessment) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in a.findings:
        out.setdefault(f.code, set()).add(f.severity)
    return out


def _groups(a: d.Assessment) -> dict[str, d.MonitoringGroup]:
    return {g.name: g for g in a.monitoring.groups}


# ---------------------------------------------------------------- one checker per expectation item
def check_findings(a: d.Assessment, want: dict[str, str]) -> list[str]:
    got = _severities(a)
    return [
        f"{code}: expected {sev}, got {sorted(got[code]) if code in got else 'absent'}"
        for code, sev in want.items()
        if sev not in got.get(code, set())
    ]


def check_absent(a: d.Assessment, codes: list[str]) -> list[str]:
    got = _severities(a)
    return [f"{code} must not appear (got {sorted(got[code])})" for code in codes if code in got]


def check_phase(a: d.Assessment, want: str) -> list[str]:
    return [] if a.monitoring.phase == want else [f"phase: expected {want}, got {a.monitoring.phase}"]


def check_dose(a: d.Assessment, want: dict[str, float] | None) -> list[str]:
    rec = a.dose.recommended
    got = None if rec is None else {"low": rec.low, "high": rec.high}
    return [] if got == want else [f"recommended mg/day: expected {want}, got {got}"]


def check_plan(a: d.Assessment, want: list[list[Any]]) -> list[str]:
    got = [[s.start.isoformat(), s.mg_per_day] for s in a.dose.plan]
    return [] if got == want else [f"plan: expected {want}, got {got}"]


def check_overdue(a: d.Assessment, want: dict[str, bool]) -> list[str]:
    groups = _groups(a)
    return [
        f"{name} overdue: expected {flag}, got {groups[name].overdue if name in groups else 'no such group'}"
        for name, flag in want.items()
        if name not in groups or groups[name].overdue is not flag
    ]


def check_next_due(a: d.Assessment, want: dict[str, str]) -> list[str]:
    groups = _groups(a)
    out = []
    for name, due in want.items():
        got = groups[name].next_due if name in groups else None
        if got is None or got.isoformat() != due:
            out.append(f"{name} next due: expected {due}, got {got}")
    return out


def check_ctcae(a: d.Assessment, want: dict[str, int]) -> list[str]:
    out = []
    for code, grade in want.items():
        graded = [f.ctcae for f in a.findings if f.code == code]
        if not graded or not graded[0] or graded[0].get("grade") != grade:
            out.append(f"{code}: expected CTCAE grade {grade}, got {graded[0] if graded else 'no finding'}")
    return out


def check_max_severity(a: d.Assessment, want: str) -> list[str]:
    too_high = [f"{f.code} ({f.severity})" for f in a.findings if SEVERITY_ORDER[f.severity] > SEVERITY_ORDER[want]]
    return [f"nothing above {want} expected, got {', '.join(too_high)}"] if too_high else []


CHECKS: dict[str, tuple[str, Callable[[d.Assessment, Any], list[str]]]] = {
    "findings": ("findings", check_findings),
    "absent": ("absent", check_absent),
    "phase": ("phase", check_phase),
    "dose": ("recommended_mg_per_day", check_dose),
    "plan": ("plan", check_plan),
    "overdue": ("overdue", check_overdue),
    "next_due": ("next_due", check_next_due),
    "ctcae": ("ctcae", check_ctcae),
    "max_severity": ("max_severity", check_max_severity),
}
REQUIRED = ("findings", "absent", "phase")


def _expectation_params() -> list[Any]:
    params = []
    for name in NAMES:
        expect = meta(name)["expect"]
        for item, (key, _) in CHECKS.items():
            if key not in expect:
                continue
            marks = [pytest.mark.xfail(strict=True, reason=BUGS[name, item])] if (name, item) in BUGS else []
            params.append(pytest.param(name, item, id=f"{name}:{item}", marks=marks))
    return params


# ---------------------------------------------------------------- tests
def test_examples_folder_is_complete() -> None:
    assert len(NAMES) >= 22, f"expected at least 22 examples, found {len(NAMES)}"
    bundles = sorted(p.stem for p in EXAMPLES.glob("*.json") if not p.name.endswith(".meta.json"))
    assert bundles == NAMES, "every examples/NN-name.json needs a .meta.json (and vice versa)"
    for name in NAMES:
        assert (EXAMPLES / f"{name}.expected.txt").exists(), f"{name}.expected.txt missing: {REGENERATE}"
    assert [n[:2] for n in NAMES] == [f"{i:02d}" for i in range(1, len(NAMES) + 1)], "examples are numbered 01.."


@pytest.mark.parametrize("name", NAMES)
def test_meta_is_well_formed(name: str) -> None:
    m = meta(name)
    assert set(m) == {"title", "as_of", "story", "expect"}, sorted(m)
    assert m["title"] and "\n" not in m["title"]
    assert 2025 <= date.fromisoformat(m["as_of"]).year <= 2026
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z(])", m["story"].strip())
    assert 2 <= len(sentences) <= 4, f"story: 2-4 plain sentences, got {len(sentences)}"
    expect = m["expect"]
    assert all(k in expect for k in REQUIRED), f"expect needs {REQUIRED}"
    assert set(expect) <= {key for key, _ in CHECKS.values()}, f"unknown expect keys {sorted(expect)}"
    assert set(expect["findings"].values()) <= set(SEVERITY_ORDER)
    assert not set(expect["findings"]) & set(expect["absent"]), "a code cannot be both expected and absent"
    assert set(expect.get("overdue", {})) <= set(GROUPS)


def known_codes() -> set[str]:
    """Every finding code the knowledge base can produce (catalogue texts plus rule-generated codes)."""
    k = kb()
    codes = set(k.findings)
    codes |= {f"lab-{rule.id}" for rule in k.thresholds} | {f"lab-{rule.id}" for rule in k.rises}
    codes |= {f"lab-{rule.id}" for rule in k.uln_rules}
    codes |= {f"trend-{analyte}-{rule.id}" for rule in k.trends for analyte in rule.analytes}
    codes |= {f"interaction-{ix.id}" for ix in k.interactions}
    codes |= {f"symptom-{key}" for key in k.symptoms.items}
    return codes


@pytest.mark.parametrize("name", NAMES)
def test_expected_codes_exist(name: str) -> None:
    """A misspelt code would make an `absent` check pass vacuously."""
    expect = meta(name)["expect"]
    used = set(expect["findings"]) | set(expect["absent"]) | set(expect.get("ctcae", {}))
    unknown = sorted(used - known_codes())
    assert not unknown, f"{name}: codes not in the knowledge base: {unknown}"


def test_bug_marks_point_at_real_items() -> None:
    for name, item in BUGS:
        assert name in NAMES and CHECKS[item][0] in meta(name)["expect"], f"stale BUGS entry {(name, item)}"


@pytest.mark.parametrize(("name", "item"), _expectation_params())
def test_example_expectation(name: str, item: str) -> None:
    key, check = CHECKS[item]
    problems = check(assessment(name), meta(name)["expect"][key])
    assert not problems, f"{name} ({meta(name)['title']}):\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("name", NAMES)
def test_expected_text_is_current(name: str) -> None:
    committed = (EXAMPLES / f"{name}.expected.txt").read_text(encoding="utf-8")
    current = render_text(assessment(name))
    if committed != current:
        diff = "".join(
            list(
                difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    current.splitlines(keepends=True),
                    f"examples/{name}.expected.txt (committed)",
                    "render_text (current engine)",
                )
            )[:60]
        )
        pytest.fail(f"examples/{name}.expected.txt is out of date: {REGENERATE}.\n{diff}")


def test_docs_page_is_current() -> None:
    spec = importlib.util.spec_from_file_location("build_examples", EXAMPLES / "build_examples.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script
    no_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in examples/
    try:
        spec.loader.exec_module(script)
        expected = script.render_docs(EXAMPLES)
    finally:
        del sys.modules[spec.name]
        sys.dont_write_bytecode = no_bytecode
    committed = (ROOT / "docs" / "examples.md").read_text(encoding="utf-8")
    assert committed == expected, f"docs/examples.md is out of date: {REGENERATE}"


def test_examples_cover_every_finding_category() -> None:
    covered: dict[str, list[str]] = {}
    for name in NAMES:
        wanted = set(meta(name)["expect"]["findings"])
        for f in assessment(name).findings:
            if f.code in wanted:
                covered.setdefault(f.category, []).append(name)
    missing = sorted(set(d.CATEGORIES) - set(covered))
    assert not missing, f"no example expects a finding in categories {missing}"


def _cli_json(name: str) -> dict[str, Any]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "azaguard.cli",
            "assess",
            str(EXAMPLES / f"{name}.json"),
            "--as-of",
            meta(name)["as_of"],
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def _is_date(value: Any) -> bool:
    try:
        date.fromisoformat(value)
    except (TypeError, ValueError):
        return False
    return True


def _number_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


@pytest.mark.parametrize("name", ["01-mg-new-start", "11-neutropenia-1-2"])
def test_cli_json_contract(name: str) -> None:
    out = _cli_json(name)
    assert out["as_of"] == meta(name)["as_of"]
    assert isinstance(out["knowledge_version"], str) and out["knowledge_version"]

    assert isinstance(out["findings"], list) and out["findings"]
    for f in out["findings"]:
        assert {"code", "category", "severity", "message", "action", "sources", "evidence"} <= set(f), f
        assert f["category"] in d.CATEGORIES
        assert f["severity"] in SEVERITY_ORDER
        assert isinstance(f["message"], str) and f["message"]
        assert isinstance(f["action"], str) and f["action"]
        assert isinstance(f["sources"], list) and f["sources"] and all(isinstance(s, str) for s in f["sources"])
        assert isinstance(f["evidence"], list) and all(isinstance(e, dict) for e in f["evidence"])

    dose = out["dose"]
    assert {"current_mg_per_day", "current_mg_per_kg_per_day", "recommended_mg_per_day", "plan"} <= set(dose)
    assert _number_or_none(dose["current_mg_per_day"])
    assert _number_or_none(dose["current_mg_per_kg_per_day"])
    rec = dose["recommended_mg_per_day"]
    assert rec is None or (set(rec) == {"low", "high"} and rec["low"] <= rec["high"])
    assert isinstance(dose["plan"], list)
    for step in dose["plan"]:
        assert set(step) >= {"from", "mg_per_day"} and _is_date(step["from"]) and _number_or_none(step["mg_per_day"])

    monitoring = out["monitoring"]
    assert monitoring["phase"] in ("pre-treatment", "initiation", "dose-change", "stable", "stopped")
    assert [g["name"] for g in monitoring["groups"]] == list(GROUPS)
    for g in monitoring["groups"]:
        assert {"name", "last", "next_due", "overdue"} <= set(g)
        assert g["last"] is None or _is_date(g["last"])
        assert g["next_due"] is None or _is_date(g["next_due"])
        assert isinstance(g["overdue"], bool)

    # The command line reports exactly what the library computes, and what the example expects.
    a = assessment(name)
    assert [(f["code"], f["severity"]) for f in out["findings"]] == [(f.code, f.severity) for f in a.findings]
    expect = meta(name)["expect"]
    assert monitoring["phase"] == expect["phase"]
    if "recommended_mg_per_day" in expect:
        assert rec == expect["recommended_mg_per_day"]
    cli_severities = {(f["code"], f["severity"]) for f in out["findings"]}
    assert set(expect["findings"].items()) <= cli_severities


def test_cli_demo_assesses_every_example() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "azaguard.cli", "demo"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for name in NAMES:
        assert f"{name}: {meta(name)['title']}" in proc.stdout, f"demo did not show {name}"
