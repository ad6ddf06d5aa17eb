"""The clinical hazard log, kept as data: load it, validate it, render it as markdown.

Why data and not a document: a hazard log written by hand drifts away from the code it describes.
Here every control names the tests that verify it, `tests/test_hazard_log.py` fails the build when
a named test disappears or the log breaks a rule below, and the markdown people read
(`docs/safety/hazard-log.md`) is rendered from the same file, so the two cannot disagree.

The structure follows NHS DCB0129 (hazard, cause, effect, harm, initial risk, controls, residual
risk, status). Severity and likelihood use the DCB0129/DCB0160 words and the 5 x 5 risk matrix
NHS Digital publishes with its clinical risk management templates. This module only checks that
the log is well formed and consistent; whether its clinical judgements are right is for a
Clinical Safety Officer to decide.

Regenerate the markdown after editing the TOML:

    .venv/bin/python -m azaguard.safety_log > docs/safety/hazard-log.md
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Computing a path touches no file: nothing is read until load() is called.
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "docs" / "safety" / "hazard-log.toml"

SEVERITY: dict[int, str] = {1: "Minor", 2: "Significant", 3: "Considerable", 4: "Major", 5: "Catastrophic"}
LIKELIHOOD: dict[int, str] = {1: "Very low", 2: "Low", 3: "Medium", 4: "High", 5: "Very high"}

# The DCB0129/DCB0160 risk matrix as NHS Digital publishes it: RISK_MATRIX[likelihood][severity - 1].
# Written out in full rather than computed, so it can be read against the published table cell by cell.
RISK_MATRIX: dict[int, tuple[int, int, int, int, int]] = {
    #   Minor, Significant, Considerable, Major, Catastrophic
    5: (3, 4, 4, 5, 5),  # Very high
    4: (2, 3, 3, 4, 5),  # High
    3: (2, 2, 3, 3, 4),  # Medium
    2: (1, 2, 2, 3, 4),  # Low
    1: (1, 1, 2, 2, 3),  # Very low
}

RATING: dict[int, tuple[str, str]] = {
    1: ("Acceptable", "Acceptable; no further action required."),
    2: (
        "Acceptable where further reduction is impractical",
        "Acceptable where the cost of further reduction outweighs the benefit gained.",
    ),
    3: ("Undesirable", "Eliminate or control the hazard; acceptable only when further risk reduction is impractical."),
    4: ("Mandatory control", "The hazard must be eliminated or controlled to bring the risk to an acceptable level."),
    5: ("Unacceptable", "Unacceptable level of risk."),
}

# Ratings above this are not acceptable as they stand: the log must say what the deploying
# organisation has to do about them (DCB0160 is the deploying organisation's standard).
ACCEPTABLE_MAX = 2

CONTROL_KINDS = ("design", "test", "training", "process")
STATUSES: dict[str, str] = {
    "open": "Residual risk above acceptable: actions remain for the product or the deploying organisation.",
    "controlled": "Controls built and verified by the named tests; residual risk acceptable, awaiting CSO review.",
    "transferred": "The remaining control lies with the deploying organisation (DCB0160).",
    "closed": "Accepted by a named Clinical Safety Officer.",
}

_ID = re.compile(r"HAZ-\d{3}")
_KEY = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
# A pytest node id of a top-level test function, optionally with a parametrize id: "tests/x.py::test_y[a-b]".
TEST_ID = re.compile(r"(?P<path>tests/[A-Za-z0-9_/]+\.py)::(?P<name>test_[A-Za-z0-9_]+)(?:\[.*\])?")

_META_KEYS = {"title", "version", "intro"}
_HAZARD_KEYS = {
    "id", "key", "title", "cause", "effect", "harm", "initial", "residual", "status",
    "controls", "limitations", "deployment_actions", "accepted_by",
}  # fmt: skip
_CONTROL_KEYS = {"description", "kind", "tests"}


class HazardLogError(Exception):
    """The hazard log breaks one or more rules; `problems` lists every one, not just the first."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("hazard log is invalid:\n" + "\n".join(f"- {p}" for p in problems))
        self.problems = tuple(problems)


def risk_rating(severity: int, likelihood: int) -> int:
    """The matrix cell for a severity and likelihood (each 1-5): one lookup, no arithmetic, so the
    rating is exactly what the published matrix says and never a product or sum of the two."""
    if severity not in SEVERITY or likelihood not in LIKELIHOOD:
        raise ValueError(f"severity and likelihood must be 1-5, got {severity!r} and {likelihood!r}")
    return RISK_MATRIX[likelihood][severity - 1]


@dataclass(frozen=True)
class Risk:
    """A severity and likelihood pair; the rating is derived, never stored, so it cannot disagree."""

    severity: int
    likelihood: int

    @property
    def rating(self) -> int:
        return risk_rating(self.severity, self.likelihood)

    def describe(self) -> str:
        label = RATING[self.rating][0]
        return (
            f"{SEVERITY[self.severity]} ({self.severity}) x {LIKELIHOOD[self.likelihood]} ({self.likelihood})"
            f" = **{self.rating}** {label}"
        )


@dataclass(frozen=True)
class Control:
    """One risk control and the pytest node ids that show it works."""

    description: str
    kind: str
    tests: tuple[str, ...]


@dataclass(frozen=True)
class Hazard:
    id: str
    key: str
    title: str
    cause: str
    effect: str
    harm: str
    initial: Risk
    residual: Risk
    status: str
    controls: tuple[Control, ...]
    limitations: tuple[str, ...] = ()
    deployment_actions: tuple[str, ...] = ()
    accepted_by: str = ""


@dataclass(frozen=True)
class HazardLog:
    title: str
    version: str
    intro: tuple[str, ...]
    hazards: tuple[Hazard, ...]

    def test_ids(self) -> list[str]:
        """Every test node id the log names, in order of first mention (for the existence check)."""
        seen: dict[str, None] = {}
        for h in self.hazards:
            for c in h.controls:
                seen.update(dict.fromkeys(c.tests))
        return list(seen)


# ---------------------------------------------------------------- validation
def _text(d: dict[str, Any], name: str, where: str, problems: list[str]) -> str:
    value = d.get(name)
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: '{name}' must be a non-empty string")
        return ""
    return value.strip()


def _texts(d: dict[str, Any], name: str, where: str, problems: list[str]) -> tuple[str, ...]:
    value = d.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        problems.append(f"{where}: '{name}' must be a list of non-empty strings")
        return ()
    return tuple(v.strip() for v in value)


def _unknown(d: dict[str, Any], allowed: set[str], where: str, problems: list[str]) -> None:
    """A misspelt field would otherwise be silently ignored - e.g. a control's 'test' instead of 'tests'."""
    extra = sorted(set(d) - allowed)
    if extra:
        problems.append(f"{where}: unknown field(s) {', '.join(extra)}")


def _risk(d: dict[str, Any], name: str, where: str, problems: list[str]) -> Risk | None:
    value = d.get(name)
    if not isinstance(value, dict) or set(value) != {"severity", "likelihood"}:
        problems.append(f"{where}: '{name}' must be a table with exactly 'severity' and 'likelihood'")
        return None
    sev, lik = value["severity"], value["likelihood"]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 5 for v in (sev, lik)):
        problems.append(f"{where}: '{name}' severity and likelihood must be whole numbers 1-5")
        return None
    return Risk(sev, lik)


def _control(raw: Any, where: str, problems: list[str]) -> Control | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a table")
        return None
    _unknown(raw, _CONTROL_KEYS, where, problems)
    description = _text(raw, "description", where, problems)
    kind = raw.get("kind")
    if kind not in CONTROL_KINDS:
        problems.append(f"{where}: 'kind' must be one of {', '.join(CONTROL_KINDS)}, got {kind!r}")
    tests = _texts(raw, "tests", where, problems)
    if not tests:
        problems.append(f"{where}: names no test; every control must name at least one test that verifies it")
    for t in tests:
        if not TEST_ID.fullmatch(t):
            problems.append(f"{where}: {t!r} is not a node id like 'tests/test_x.py::test_y'")
    if len(set(tests)) != len(tests):
        problems.append(f"{where}: names a test twice")
    return Control(description, str(kind), tests)


def _hazard(raw: Any, n: int, problems: list[str]) -> Hazard | None:
    where = f"hazard #{n}"
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a table")
        return None
    hid = raw.get("id")
    if isinstance(hid, str) and _ID.fullmatch(hid):
        where = hid
    else:
        problems.append(f"{where}: 'id' must look like HAZ-001, got {hid!r}")
    _unknown(raw, _HAZARD_KEYS, where, problems)
    key = raw.get("key")
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        problems.append(f"{where}: 'key' must be lower-case words joined by hyphens, got {key!r}")
    fields = {f: _text(raw, f, where, problems) for f in ("title", "cause", "effect", "harm")}
    initial = _risk(raw, "initial", where, problems)
    residual = _risk(raw, "residual", where, problems)
    status = raw.get("status")
    if status not in STATUSES:
        problems.append(f"{where}: 'status' must be one of {', '.join(STATUSES)}, got {status!r}")
    raw_controls = raw.get("controls", [])
    if not isinstance(raw_controls, list) or not raw_controls:
        problems.append(f"{where}: has no control; every hazard needs at least one")
        raw_controls = raw_controls if isinstance(raw_controls, list) else []
    controls = [_control(c, f"{where} control {i}", problems) for i, c in enumerate(raw_controls, 1)]
    limitations = _texts(raw, "limitations", where, problems)
    actions = _texts(raw, "deployment_actions", where, problems)
    accepted_by = raw.get("accepted_by", "")
    if not isinstance(accepted_by, str):
        problems.append(f"{where}: 'accepted_by' must be a string")
        accepted_by = ""

    if initial and residual:
        # A control can lower severity or likelihood, never raise either; the rating follows.
        if residual.severity > initial.severity or residual.likelihood > initial.likelihood:
            problems.append(f"{where}: residual risk is higher than the initial risk on severity or likelihood")
        if residual.rating > initial.rating:
            problems.append(f"{where}: residual rating {residual.rating} is higher than initial {initial.rating}")
        if residual.rating > ACCEPTABLE_MAX:
            if not actions:
                problems.append(
                    f"{where}: residual rating {residual.rating} is above acceptable; "
                    "'deployment_actions' must say what the deploying organisation must do"
                )
            if status == "controlled":
                problems.append(f"{where}: status 'controlled' needs a residual rating of {ACCEPTABLE_MAX} or less")
    if status == "closed" and not accepted_by.strip():
        problems.append(f"{where}: status 'closed' needs 'accepted_by' (the Clinical Safety Officer who accepted it)")

    if initial is None or residual is None or None in controls or not isinstance(key, str):
        return None
    return Hazard(
        id=str(hid),
        key=key,
        initial=initial,
        residual=residual,
        status=str(status),
        controls=tuple(c for c in controls if c is not None),
        limitations=limitations,
        deployment_actions=actions,
        accepted_by=accepted_by.strip(),
        **fields,
    )


def validate(raw: dict[str, Any]) -> tuple[HazardLog | None, list[str]]:
    """Check the parsed TOML against every rule and build the log.

    Returns all problems at once (an editor fixing the log should see the whole list, not one
    error per run); the log is None when there are problems.
    """
    problems: list[str] = []
    _unknown(raw, {"meta", "hazards"}, "top level", problems)
    meta = raw.get("meta")
    if not isinstance(meta, dict):
        problems.append("top level: a [meta] table with title, version and intro is required")
        meta = {}
    _unknown(meta, _META_KEYS, "meta", problems)
    title = _text(meta, "title", "meta", problems)
    version = _text(meta, "version", "meta", problems)
    intro = _texts(meta, "intro", "meta", problems)
    if not intro:
        problems.append("meta: 'intro' must state the scope and that the log is not a signed safety case")

    raw_hazards = raw.get("hazards")
    if not isinstance(raw_hazards, list) or not raw_hazards:
        problems.append("top level: at least one [[hazards]] entry is required")
        raw_hazards = []
    hazards = [_hazard(h, i, problems) for i, h in enumerate(raw_hazards, 1)]
    for name in ("id", "key"):
        values = [h.get(name) for h in raw_hazards if isinstance(h, dict)]
        dupes = sorted({str(v) for v in values if values.count(v) > 1})
        if dupes:
            problems.append(f"hazards: duplicate {name}(s) {', '.join(dupes)}")

    if problems:
        return None, problems
    return HazardLog(title, version, intro, tuple(h for h in hazards if h is not None)), []


def parse(text: str) -> HazardLog:
    """Parse and validate TOML text; raise HazardLogError listing every problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HazardLogError([f"not valid TOML: {exc}"]) from exc
    log, problems = validate(raw)
    if log is None:
        raise HazardLogError(problems)
    return log


def load(path: str | Path = DEFAULT_PATH) -> HazardLog:
    """Read and validate the hazard log file."""
    return parse(Path(path).read_text(encoding="utf-8"))


# ---------------------------------------------------------------- rendering
def _cell(text: str) -> str:
    """Table cells are one line and must not contain an unescaped column separator."""
    return " ".join(text.split()).replace("|", "\\|")


def render_matrix() -> list[str]:
    lines = [
        "| Likelihood \\ Severity | " + " | ".join(f"{SEVERITY[s]} ({s})" for s in SEVERITY) + " |",
        "|---|" + "---|" * len(SEVERITY),
    ]
    for lik in sorted(LIKELIHOOD, reverse=True):
        cells = " | ".join(str(risk_rating(s, lik)) for s in SEVERITY)
        lines.append(f"| **{LIKELIHOOD[lik]} ({lik})** | {cells} |")
    lines += ["", "| Rating | Meaning |", "|---|---|"]
    lines += [f"| {r} | **{label}.** {meaning} |" for r, (label, meaning) in sorted(RATING.items())]
    return lines


def _render_hazard(h: Hazard) -> list[str]:
    lines = [
        f"## {h.id} {h.title}",
        "",
        "| Field | Value |",
        "|---|---|",
        f"| Key | `{h.key}` |",
        f"| Cause | {_cell(h.cause)} |",
        f"| Effect | {_cell(h.effect)} |",
        f"| Harm | {_cell(h.harm)} |",
        f"| Initial risk | {h.initial.describe()} |",
        f"| Residual risk | {h.residual.describe()} |",
        f"| Status | {h.status}" + (f" (accepted by {_cell(h.accepted_by)})" if h.accepted_by else "") + " |",
        "",
        "**Controls**",
        "",
        "| # | Kind | Control | Verified by |",
        "|---|---|---|---|",
    ]
    for i, c in enumerate(h.controls, 1):
        tests = "<br>".join(f"`{t}`" for t in c.tests)
        lines.append(f"| {i} | {c.kind} | {_cell(c.description)} | {tests} |")
    if h.limitations:
        lines += ["", "**What the controls do not cover**", ""]
        lines += [f"- {' '.join(x.split())}" for x in h.limitations]
    if h.deployment_actions:
        lines += ["", "**The deploying organisation must**", ""]
        lines += [f"- {' '.join(x.split())}" for x in h.deployment_actions]
    return [*lines, ""]


def render(log: HazardLog) -> str:
    """The markdown document; deterministic, so a test can compare it with the committed file."""
    lines = [
        f"# {log.title}",
        "",
        "<!-- Generated from docs/safety/hazard-log.toml by `python -m azaguard.safety_log`."
        " Edit the TOML and regenerate; tests/test_hazard_log.py fails when this file is out of date. -->",
        "",
        f"Version {log.version}.",
        "",
    ]
    for para in log.intro:
        lines += [" ".join(para.split()), ""]
    lines += ["## Risk matrix", "", *render_matrix(), ""]
    lines += [
        f"Ratings up to {ACCEPTABLE_MAX} are acceptable. Where a residual rating stays above {ACCEPTABLE_MAX},"
        " the hazard lists what the deploying organisation must do.",
        "",
        "| Status | Meaning |",
        "|---|---|",
        *(f"| {s} | {meaning} |" for s, meaning in STATUSES.items()),
        "",
        "## Summary",
        "",
        "| ID | Hazard | Initial | Residual | Status |",
        "|---|---|---|---|---|",
    ]
    for h in log.hazards:
        lines.append(
            f"| [{h.id}](#{h.id.lower()}-{_anchor(h.title)}) | {_cell(h.title)} | {h.initial.rating} "
            f"| {h.residual.rating} | {h.status} |"
        )
    lines.append("")
    for h in log.hazards:
        lines += _render_hazard(h)
    return "\n".join(lines).rstrip("\n") + "\n"


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def main(argv: Sequence[str] | None = None) -> int:
    """Print the rendered log (default: docs/safety/hazard-log.toml next to this package)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or (args and args[0].startswith("-")):
        print("usage: python -m azaguard.safety_log [hazard-log.toml]", file=sys.stderr)
        return 2
    try:
        log = load(args[0] if args else DEFAULT_PATH)
    except OSError as exc:
        print(f"error: cannot read the hazard log: {exc}", file=sys.stderr)
        return 2
    except HazardLogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # Bytes, so the file is UTF-8 whatever the locale of the shell that redirects it.
    sys.stdout.flush()
    sys.stdout.buffer.write(render(log).encode("utf-8"))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
