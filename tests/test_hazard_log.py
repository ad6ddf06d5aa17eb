"""The clinical hazard log (docs/safety/hazard-log.toml) stays true to the code.

The build fails when a hazard has no control, a control names no test, a named test file or
top-level test function does not exist, a required hazard is missing, a residual risk is higher
than the initial one, or docs/safety/hazard-log.md no longer matches the TOML. Named tests are
found by parsing their files with `ast`: they are never imported or run from here, so this check
stays fast and cannot be fooled by a test that happens to fail or skip.
"""

from __future__ import annotations

import ast
import functools
import itertools
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from azaguard import safety_log as sl

ROOT = Path(__file__).resolve().parent.parent
TOML = ROOT / "docs" / "safety" / "hazard-log.toml"
MARKDOWN = ROOT / "docs" / "safety" / "hazard-log.md"
REGENERATE = ".venv/bin/python -m azaguard.safety_log > docs/safety/hazard-log.md"

# The hazards the log must always cover, by their `key`.
REQUIRED = {
    "missed-neutropenia",
    "missed-overdue-test",
    "follow-up-lost-after-review",
    "wrong-dose-tpmt-nudt15",
    "wrong-dose-with-allopurinol",
    "missed-interaction",
    "live-vaccine-missed",
    "result-from-wrong-patient",
    "superseded-result-used",
    "unit-mis-conversion",
    "stale-knowledge-version",
    "import-drops-result",
    "on-hold-treated-as-stopped",
}


@functools.cache
def log() -> sl.HazardLog:
    return sl.load(TOML)


@functools.cache
def top_level_tests(path: str) -> frozenset[str] | None:
    """Names of the top-level `def test_...` in a test file, or None when the file is missing."""
    file = ROOT / path
    if not file.is_file():
        return None
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    return frozenset(
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    )


def missing_tests(node_ids: list[str]) -> list[str]:
    """The node ids whose file or top-level test function does not exist (a [param] suffix is ignored)."""
    out = []
    for node_id in node_ids:
        m = sl.TEST_ID.fullmatch(node_id)
        if m is None:
            out.append(f"{node_id} (not a node id)")
            continue
        names = top_level_tests(m["path"])
        if names is None:
            out.append(f"{node_id} (no file {m['path']})")
        elif m["name"] not in names:
            out.append(f"{node_id} (no top-level def {m['name']} in {m['path']})")
    return out


# ---------------------------------------------------------------- the log itself
def test_the_log_loads_and_validates() -> None:
    assert log().hazards  # load() raises HazardLogError listing every problem


def test_every_hazard_has_a_control_and_every_control_names_a_test() -> None:
    for h in log().hazards:
        assert h.controls, f"{h.id} has no control"
        for c in h.controls:
            assert c.tests, f"{h.id}: control {c.description[:60]!r} names no test"


def test_every_named_test_exists() -> None:
    names = log().test_ids()
    assert names
    missing = missing_tests(names)
    assert not missing, "the hazard log names tests that do not exist:\n" + "\n".join(missing)


def test_every_test_mentioned_in_the_text_exists() -> None:
    """Limitations cite tests too (as evidence of a behaviour, not as a control): those must exist as well."""
    mentioned = re.findall(r"tests/[A-Za-z0-9_/]+\.py::test_[A-Za-z0-9_]+", TOML.read_text(encoding="utf-8"))
    missing = missing_tests(sorted(set(mentioned)))
    assert not missing, "the hazard log mentions tests that do not exist:\n" + "\n".join(missing)


def test_the_required_hazards_are_present() -> None:
    keys = {h.key for h in log().hazards}
    assert not REQUIRED - keys, f"required hazards missing: {sorted(REQUIRED - keys)}"


def test_residual_risk_is_never_higher_than_initial() -> None:
    for h in log().hazards:
        assert h.residual.severity <= h.initial.severity, h.id
        assert h.residual.likelihood <= h.initial.likelihood, h.id
        assert h.residual.rating <= h.initial.rating, h.id


def test_residual_risk_above_acceptable_says_what_the_deploying_organisation_must_do() -> None:
    for h in log().hazards:
        if h.residual.rating > sl.ACCEPTABLE_MAX:
            assert h.deployment_actions, h.id
            assert h.status != "controlled", h.id


def test_ids_are_numbered_in_order() -> None:
    assert [h.id for h in log().hazards] == [f"HAZ-{i:03d}" for i in range(1, len(log().hazards) + 1)]


def test_the_markdown_is_current() -> None:
    expected = sl.render(log())
    actual = MARKDOWN.read_text(encoding="utf-8") if MARKDOWN.is_file() else ""
    assert actual == expected, f"docs/safety/hazard-log.md is out of date with the TOML; run: {REGENERATE}"


def test_the_markdown_states_it_is_not_a_signed_safety_case() -> None:
    text = sl.render(log())
    assert "DCB0129" in text and "not a signed clinical safety case" in text and "Clinical Safety Officer" in text


def test_the_module_prints_the_markdown(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert sl.main([str(TOML)]) == 0
    assert capsysbinary.readouterr().out.decode("utf-8") == sl.render(log())


# ---------------------------------------------------------------- the risk matrix
# NHS Digital's DCB0129/DCB0160 matrix, rows Very high -> Very low, columns Minor -> Catastrophic.
PUBLISHED = [
    [3, 4, 4, 5, 5],
    [2, 3, 3, 4, 5],
    [2, 2, 3, 3, 4],
    [1, 2, 2, 3, 4],
    [1, 1, 2, 2, 3],
]


def test_the_matrix_is_the_published_one() -> None:
    for row, likelihood in zip(PUBLISHED, (5, 4, 3, 2, 1), strict=True):
        assert [sl.risk_rating(s, likelihood) for s in (1, 2, 3, 4, 5)] == row, sl.LIKELIHOOD[likelihood]


@pytest.mark.parametrize(
    ("below", "above"),
    [
        # (severity, likelihood, rating) on each side of a boundary between two ratings
        ((4, 1, 2), (4, 2, 3)),  # Major: Very low -> Low crosses from acceptable to undesirable
        ((3, 2, 2), (3, 3, 3)),  # Considerable: Low -> Medium
        ((2, 3, 2), (3, 3, 3)),  # Medium: Significant -> Considerable
        ((4, 3, 3), (5, 3, 4)),  # Medium: Major -> Catastrophic
        ((1, 4, 2), (1, 5, 3)),  # Minor: High -> Very high
        ((4, 4, 4), (5, 4, 5)),  # High: Major -> Catastrophic reaches unacceptable
        ((1, 2, 1), (2, 2, 2)),  # Low: Minor -> Significant leaves "no action required"
    ],
)
def test_matrix_lookup_on_both_sides_of_a_boundary(below: tuple[int, int, int], above: tuple[int, int, int]) -> None:
    assert sl.risk_rating(below[0], below[1]) == below[2]
    assert sl.risk_rating(above[0], above[1]) == above[2]
    assert sl.Risk(below[0], below[1]).rating < sl.Risk(above[0], above[1]).rating


def test_the_matrix_never_falls_as_severity_or_likelihood_rises() -> None:
    for s, lik in itertools.product(range(1, 6), repeat=2):
        if s < 5:
            assert sl.risk_rating(s, lik) <= sl.risk_rating(s + 1, lik)
        if lik < 5:
            assert sl.risk_rating(s, lik) <= sl.risk_rating(s, lik + 1)


@pytest.mark.parametrize(("severity", "likelihood"), [(0, 3), (6, 3), (3, 0), (3, 6)])
def test_out_of_range_scores_are_refused(severity: int, likelihood: int) -> None:
    with pytest.raises(ValueError, match="1-5"):
        sl.risk_rating(severity, likelihood)


# ---------------------------------------------------------------- the checks catch what they should
def raw_log() -> dict[str, Any]:
    """A fresh copy of the real log as parsed TOML, for breaking one rule at a time."""
    return tomllib.loads(TOML.read_text(encoding="utf-8"))


def problems_after(change: Any) -> list[str]:
    raw = raw_log()
    change(raw)
    built, problems = sl.validate(raw)
    assert built is None and problems, "the broken log was accepted"
    return problems


def test_a_hazard_without_a_control_is_refused() -> None:
    problems = problems_after(lambda raw: raw["hazards"][0].update(controls=[]))
    assert any("HAZ-001: has no control" in p for p in problems), problems


def test_a_control_without_a_test_is_refused() -> None:
    problems = problems_after(lambda raw: raw["hazards"][0]["controls"][0].update(tests=[]))
    assert any("names no test" in p for p in problems), problems


def test_a_residual_risk_higher_than_the_initial_is_refused() -> None:
    def raise_residual(raw: dict[str, Any]) -> None:
        raw["hazards"][0]["initial"] = {"severity": 4, "likelihood": 2}
        raw["hazards"][0]["residual"] = {"severity": 4, "likelihood": 3}

    problems = problems_after(raise_residual)
    assert any("residual" in p and "higher" in p for p in problems), problems


def test_an_unacceptable_residual_without_deployment_actions_is_refused() -> None:
    def drop_actions(raw: dict[str, Any]) -> None:
        h = next(h for h in raw["hazards"] if h["key"] == "missed-neutropenia")
        h["deployment_actions"] = []

    problems = problems_after(drop_actions)
    assert any("deploying organisation" in p for p in problems), problems


def test_closed_needs_the_clinical_safety_officer_who_accepted_it() -> None:
    problems = problems_after(lambda raw: raw["hazards"][1].update(status="closed"))
    assert any("accepted_by" in p for p in problems), problems


def test_a_misspelt_field_is_refused() -> None:
    def misspell(raw: dict[str, Any]) -> None:
        control = raw["hazards"][0]["controls"][0]
        control["test"] = control.pop("tests")

    problems = problems_after(misspell)
    assert any("unknown field(s) test" in p for p in problems), problems


def test_duplicate_keys_are_refused() -> None:
    problems = problems_after(lambda raw: raw["hazards"][1].update(key=raw["hazards"][0]["key"]))
    assert any("duplicate key" in p for p in problems), problems


def test_the_existence_check_finds_missing_files_and_functions() -> None:
    real = "tests/test_hazard_log.py::test_every_named_test_exists"
    assert missing_tests([real, f"{real}[param-id]"]) == []
    assert missing_tests(["tests/test_hazard_log.py::test_no_such_function"])
    assert missing_tests(["tests/test_no_such_file.py::test_anything"])
    # a helper that is not a top-level test function does not count
    assert missing_tests(["tests/test_hazard_log.py::missing_tests"])
