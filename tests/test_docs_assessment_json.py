"""docs/assessment-json.md stays in step with render/json.py.

The doc's example is re-run (its Python block builds the bundle; the engine assesses it as of the
documented date) and the structure of the fresh output must equal the structure of the documented
output: same keys at every level, same finding codes. Wording and sources may change with the
knowledge without touching the doc; a new, removed or renamed field may not.
"""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path
from typing import Any

from azaguard.domain import CATEGORIES
from azaguard.engine import assess
from azaguard.knowledge import load_knowledge
from azaguard.readers.fhir import read_bundle
from azaguard.render.json import SCHEMA_VERSION, assessment_to_dict

KB = load_knowledge()
DOC = (Path(__file__).resolve().parent.parent / "docs" / "assessment-json.md").read_text(encoding="utf-8")
AS_OF = date(2025, 9, 1)


def documented_output() -> dict[str, Any]:
    blocks = re.findall(r"```json\n(.*?)\n```", DOC, flags=re.S)
    assert len(blocks) == 1
    example: dict[str, Any] = json.loads(blocks[0])
    return example


def fresh_output() -> dict[str, Any]:
    (code,) = re.findall(r"```python\n(.*?)\n```", DOC, flags=re.S)
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/assessment-json.md", "exec"), namespace)
    record = read_bundle(namespace["bundle"], KB)
    produced: dict[str, Any] = json.loads(json.dumps(assessment_to_dict(assess(record, KB, AS_OF))))
    return produced


def shape(value: Any) -> Any:
    """Keys at every level; lists reduced to the union of their items' shapes."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        merged: dict[str, Any] = {}
        for item in value:
            s = shape(item)
            if isinstance(s, dict):
                merged.update(s)
        return [merged] if merged else []
    return type(value).__name__ if value is not None else "null"


def keys_of(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys_of(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys_of(v)}
    return set()


def test_documented_example_has_the_structure_of_a_fresh_run():
    doc, fresh = documented_output(), fresh_output()
    assert [f["code"] for f in doc["findings"]] == [f["code"] for f in fresh["findings"]]
    doc_shape, fresh_shape = shape(doc), shape(fresh)
    # the renderer writes whole numbers as integers, so int/float may differ between runs; keys may not
    assert json.dumps(doc_shape).replace("float", "int") == json.dumps(fresh_shape).replace("float", "int")
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["as_of"] == AS_OF.isoformat()


def test_every_field_of_the_output_is_described():
    documented = {word for span in re.findall(r"`([^`\n]+)`", DOC) for word in re.findall(r"[a-z_0-9]+", span)}
    optional = {"ctcae", "version", "term", "grade", "reported", "snomed", "kind", "test", "positive", "drug", "start"}
    fields = keys_of(fresh_output()) | optional
    missing = sorted(f for f in fields if f not in documented)
    assert not missing, f"fields not described in docs/assessment-json.md: {missing}"


def test_every_category_severity_and_phase_is_described():
    for word in (*CATEGORIES, "critical", "warning", "info"):
        assert f"| `{word}` |" in DOC, word
    for phase in ("pre-treatment", "initiation", "dose-change", "stable", "stopped"):
        assert f"`{phase}`" in DOC, phase
    for meaning in ("Act today", "Act soon", "Counselling or plan"):
        assert meaning in DOC


def test_exit_codes_are_described():
    for code in ("0", "1", "2"):
        assert f"| `{code}` |" in DOC
