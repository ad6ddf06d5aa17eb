"""The knowledge base: complete, cited, consistent with CPIC, and the only home of clinical numbers."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest

from azaguard.engine.pgx import phenotype_from_diplotype, phenotype_from_text
from azaguard.knowledge import Knowledge, KnowledgeError, loader

ENGINE = Path(__file__).resolve().parent.parent / "azaguard" / "engine"


def test_every_rule_and_finding_cites_known_sources(kb):
    cited = set()
    for rule in (*kb.thresholds, *kb.rises, *kb.trends, *kb.interactions):
        assert rule.sources, rule.id
        cited.update(rule.sources)
    for code, text in kb.findings.items():
        assert text.sources and text.action and text.message and text.patient_text, code
        cited.update(text.sources)
    assert cited <= set(kb.sources)


def test_issue_defaults_are_the_shipped_defaults(kb):
    """The defaults the issue names (BSR 2017, CPIC, SmPC, BSR 2016/EULAR 2024) - a wrong file fails here."""
    th = {t.id: (t.comparator, t.value, t.severity) for t in kb.thresholds}
    assert th["wbc-low"] == ("<", 3.5, "critical")
    assert th["neutrophils-low"] == ("<", 1.6, "critical")
    assert th["platelets-low"] == ("<", 140, "critical")
    assert th["alt-high"] == (">", 100, "critical")
    assert th["ast-high"] == (">", 100, "critical")
    assert th["mcv-high"] == (">", 105, "warning")
    assert th["eosinophils-high"] == (">", 0.5, "warning")
    assert th["albumin-low"] == ("<", 30, "warning")
    assert th["lymphocytes-low"] == ("<", 0.5, "warning")
    assert th["egfr-low"] == ("<", 60, "warning")
    (rise,) = kb.rises
    assert (rise.analyte, rise.rise_fraction, rise.window.months) == ("creatinine", 0.30, 12)
    (trend,) = kb.trends
    # DTB 2002 names WCC, neutrophils and platelets; haemoglobin is added (issue 11: anaemia cases)
    assert (set(trend.analytes), trend.fall_fraction, trend.successive_falls) == (
        {"wbc", "neutrophils", "platelets", "haemoglobin"},
        0.10,
        3,
    )
    s = kb.schedule
    assert (s.initial_interval.weeks, s.stable_after.weeks) == (2, 6)
    assert (s.consolidation_interval.months, s.consolidation_duration.months, s.maintenance_interval.weeks) == (
        1,
        3,
        12,
    )
    c = kb.pgx.combined
    assert (c["intermediate"].fraction.low, c["intermediate"].fraction.high) == (0.3, 0.8)
    assert (c["compound-intermediate"].fraction.low, c["compound-intermediate"].fraction.high) == (0.2, 0.5)
    assert c["poor"].avoid and c["poor"].severity == "critical"
    ix = {i.id: i for i in kb.interactions}
    assert ix["allopurinol"].dose_factor == 0.25 and ix["allopurinol"].severity == "critical"
    assert ix["febuxostat"].avoid and ix["febuxostat"].severity == "critical"
    assert kb.reproduction.pregnancy_max_mg_per_kg == 2.0
    assert kb.vaccines.live_washout.months == 3


def test_cpic_derivation_rules_reproduce_every_table_row(kb):
    """Our allele-function fallback must agree with CPIC's own table wherever the table has an answer."""
    for gene, table in kb.cpic.items():
        assert table.diplotype_phenotype, gene
        for diplotype, phenotype in table.diplotype_phenotype.items():
            expected = phenotype_from_text(phenotype)
            stripped = copy.copy(table.diplotype_phenotype)
            stripped.pop(diplotype)
            derived = _derive_without_table(kb, gene, diplotype)
            assert derived == expected, (gene, diplotype, phenotype, derived)


def _derive_without_table(kb: Knowledge, gene: str, diplotype: str) -> str | None:
    table = kb.cpic[gene]
    saved = dict(table.diplotype_phenotype)
    table.diplotype_phenotype.clear()
    try:
        return phenotype_from_diplotype(kb, gene, diplotype)
    finally:
        table.diplotype_phenotype.update(saved)


def test_unknown_allele_is_never_called_normal(kb):
    assert phenotype_from_diplotype(kb, "TPMT", "*1/*48") == "Indeterminate"  # *48: not in CPIC's table
    assert phenotype_from_diplotype(kb, "TPMT", "*3A/*48") == "IM"
    assert phenotype_from_diplotype(kb, "NUDT15", "*1/*99") == "Indeterminate"
    assert phenotype_from_diplotype(kb, "TPMT", "garbage") is None


def test_broken_reference_fails_loudly(monkeypatch):
    raw = copy.deepcopy(loader._load_raw())
    raw["labs"]["thresholds"][0]["sources"] = ["NO-SUCH-SOURCE"]
    with pytest.raises(KnowledgeError, match="unknown source"):
        loader._build(raw, {"name": "t", "version": "0", "local": "no"})


def test_unknown_key_in_knowledge_fails_loudly():
    raw = copy.deepcopy(loader._load_raw())
    raw["labs"]["thresholds"][0]["valeu"] = 1
    with pytest.raises(KnowledgeError, match=r"labs\.toml:thresholds"):
        loader._build(raw, {"name": "t", "version": "0", "local": "no"})


# Numbers the engine may contain: structural ones (indexes, percent, rounding, months in a
# year, loop guards), never clinical ones.
ALLOWED_NUMBERS = {0, 1, 2, 4, 0.5, 12, 100, 1000, 1e-9}


def test_engine_holds_no_clinical_numbers():
    offenders = []
    for path in sorted(ENGINE.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Constant) or not isinstance(node.value, int | float):
                continue
            if not isinstance(node.value, bool) and node.value not in ALLOWED_NUMBERS:
                offenders.append(f"{path.name}:{node.lineno}: {node.value}")
    assert not offenders, "clinical numbers belong in the knowledge files: " + ", ".join(offenders)
