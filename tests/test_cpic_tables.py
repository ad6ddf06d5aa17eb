"""The shipped CPIC TPMT/NUDT15 tables (CPIC data 2026-02-05), row by row, against the engine.

- every one of the 1,225 TPMT and 210 NUDT15 diplotypes, written either way round, goes through the
  whole engine (`assess`) and gets the table's phenotype, the combined category and the dose that
  follow from it;
- the fallback rules in protocol.toml [pgx.function_rules] are the class rules of
  shared/reference/cpic-2026/README.md (written out independently below), reproduce every table row
  when the table is hidden, and decide every allele pair the table does not list;
- NUDT15 *2 (now part of *3) is read as *3 wherever it appears;
- scripts/update_cpic.py regenerates the shipped files byte for byte from PharmCAT-layout files.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import importlib.util
import json
import sys
from collections.abc import Callable
from datetime import date
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from azaguard import domain as d
from azaguard.engine import assess
from azaguard.engine.pgx import phenotype_from_diplotype
from azaguard.knowledge import Knowledge, KnowledgeError, load_knowledge, loader
from azaguard.knowledge.model import FunctionClass

KB = load_knowledge()
ROOT = Path(__file__).resolve().parent.parent
AS_OF = date(2026, 3, 2)
WEIGHT = 70.0
GENES = ("TPMT", "NUDT15")
OTHER = {"TPMT": "NUDT15", "NUDT15": "TPMT"}
LABEL = {
    "NM": "Normal Metabolizer",
    "IM": "Intermediate Metabolizer",
    "PM": "Poor Metabolizer",
    "Indeterminate": "Indeterminate",
}
# CPIC phenotype -> the engine's call ("Possible Intermediate" is dosed as intermediate)
CPIC_TERMS = {
    "Normal Metabolizer": "NM",
    "Intermediate Metabolizer": "IM",
    "Possible Intermediate Metabolizer": "IM",
    "Poor Metabolizer": "PM",
    "Indeterminate": "Indeterminate",
}
# The engine's call for one gene, the other gene normal -> combined dosing category
CATEGORY = {"NM": "normal", "IM": "intermediate", "PM": "poor", "Indeterminate": "indeterminate"}

# shared/reference/cpic-2026/README.md, "Gene rules": class of the two alleles -> phenotype.
# N normal, D decreased, X no function, U uncertain or unknown function (or not listed).
N, D, X, U = "N", "D", "X", "U"
NM, IM, PIM, PM, IND = (
    "Normal Metabolizer",
    "Intermediate Metabolizer",
    "Possible Intermediate Metabolizer",
    "Poor Metabolizer",
    "Indeterminate",
)
README_RULES = {
    "TPMT": {
        (N, N): NM, (N, D): NM, (N, X): IM, (N, U): IND, (D, D): IM,
        (D, X): PIM, (D, U): IND, (X, X): PM, (X, U): PIM, (U, U): IND,
    },
    "NUDT15": {
        (N, N): NM, (N, D): NM, (N, X): IM, (N, U): IND, (D, D): IM,
        (D, X): PM, (D, U): IND, (X, X): PM, (X, U): PIM, (U, U): IND,
    },
}  # fmt: skip
README_CLASS = {
    "Normal function": N,
    "Decreased function": D,
    "No function": X,
    "Uncertain function": U,
    "Unknown function": U,
}
KB_CLASS: dict[FunctionClass, str] = {"normal": N, "decreased": D, "none": X, "uncertain": U}


def readme_rule(gene: str, a: str, b: str) -> str:
    return README_RULES[gene].get((a, b)) or README_RULES[gene][(b, a)]


def tsv(name: str) -> list[dict[str, str]]:
    text = resources.files("azaguard.knowledge.data").joinpath(f"cpic/{name}").read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines(), delimiter="\t"))


FUNCTIONS = {g: {r["allele"]: r["clinical_function"] for r in tsv(f"{g}_allele_function.tsv")} for g in GENES}
ROWS = [(g, r["diplotype"], r["phenotype"]) for g in GENES for r in tsv(f"{g}_diplotype_phenotype.tsv")]


def record(genotypes: dict[str, str]) -> d.PatientRecord:
    """A 70 kg patient about to start, with only the given genotypes (pre-treatment)."""
    day = date(2026, 2, 23)
    return d.PatientRecord(
        patient_id="cpic",
        labs=(d.LabResult("weight", WEIGHT, "kg", day),),
        genotypes=tuple(d.GenotypeResult(gene, dip, None, day) for gene, dip in genotypes.items()),
    )


def codes(a: d.Assessment) -> set[str]:
    return {f.code for f in a.findings}


# ---------------------------------------------------------------- the tables themselves
def test_tables_are_the_2026_data_and_complete() -> None:
    assert KB.meta.cpic_data_version == "2026-02-05-15-04"
    assert f"CPIC data {KB.meta.cpic_data_version}" in KB.version
    assert (len(FUNCTIONS["TPMT"]), len(FUNCTIONS["NUDT15"])) == (49, 20)
    by_gene = {g: [dip for gene, dip, _ in ROWS if gene == g] for g in GENES}
    assert (len(by_gene["TPMT"]), len(by_gene["NUDT15"])) == (1225, 210)
    for gene in GENES:
        names = list(FUNCTIONS[gene])
        pairs = {frozenset(dip.split("/")) for dip in by_gene[gene]}
        assert len(pairs) == len(by_gene[gene])
        assert pairs == {frozenset((a, b)) for i, a in enumerate(names) for b in names[i:]}
        for kind in ("allele_function", "diplotype_phenotype"):
            assert {r["source_version"] for r in tsv(f"{gene}_{kind}.tsv")} == {KB.meta.cpic_data_version}
    assert "*2" not in FUNCTIONS["NUDT15"]  # folded into *3
    assert FUNCTIONS["TPMT"]["*8"] == FUNCTIONS["NUDT15"]["*5"] == "Decreased function"


# ---------------------------------------------------------------- every row through the engine
@pytest.mark.parametrize(("gene", "diplotype", "phenotype"), ROWS, ids=[f"{g}-{dip}" for g, dip, _ in ROWS])
def test_every_row_through_the_engine(gene: str, diplotype: str, phenotype: str) -> None:
    call = CPIC_TERMS[phenotype]
    category = CATEGORY[call]
    a, b = diplotype.split("/")
    for written in {diplotype, f"{b}/{a}"}:
        result = assess(record({gene: written, OTHER[gene]: "*1/*1"}), KB, AS_OF)
        assert result.pgx[gene.lower()] == LABEL[call], (written, phenotype)
        assert result.pgx["category"] == category, written
        if category == "poor":
            assert result.dose.recommended is None and "pgx-poor" in codes(result)
            continue
        fraction = KB.pgx.combined[category].fraction  # type: ignore[index]  # a category from the tables
        assert fraction is not None and result.dose.recommended is not None
        normal_high = min(KB.dosing.target_mg_per_kg.high * WEIGHT, KB.dosing.max_mg_per_day)
        assert result.dose.recommended.high <= normal_high * fraction.high + 1e-9
        if call == "Indeterminate":
            assert {"TPMT": "pgx-indeterminate", "NUDT15": "pgx-nudt15-indeterminate"}[gene] in codes(result)
        else:
            assert f"pgx-{category}" in codes(result)


# ---------------------------------------------------------------- the fallback rules
@pytest.mark.parametrize("gene", GENES)
def test_knowledge_fallback_rules_are_the_readme_rules(gene: str) -> None:
    rules = KB.pgx.function_rules
    assert {fn: KB_CLASS[c] for fn, c in rules.classes.items()} == README_CLASS
    assert KB_CLASS[rules.unlisted] == U
    for a, b in README_RULES[gene]:
        ka, kb_ = (next(k for k, v in KB_CLASS.items() if v == c) for c in (a, b))
        assert rules.phenotype(gene, ka, kb_) == rules.phenotype(gene, kb_, ka) == README_RULES[gene][(a, b)]


def without_tables(kb: Knowledge) -> Knowledge:
    """The knowledge with empty diplotype tables: every call goes through the fallback rules."""
    return dataclasses.replace(kb, cpic={g: dataclasses.replace(t, diplotype_phenotype={}) for g, t in kb.cpic.items()})


@pytest.mark.parametrize("gene", GENES)
def test_fallback_alone_reproduces_every_row(gene: str) -> None:
    bare = without_tables(KB)
    wrong = []
    for g, diplotype, phenotype in ROWS:
        if g != gene:
            continue
        a, b = diplotype.split("/")
        rule = readme_rule(gene, README_CLASS[FUNCTIONS[gene][a]], README_CLASS[FUNCTIONS[gene][b]])
        called = phenotype_from_diplotype(bare, gene, diplotype)
        if rule != phenotype or called != CPIC_TERMS[phenotype]:
            wrong.append((diplotype, phenotype, rule, called))
    assert not wrong, wrong[:5]


UNLISTED = ("*99", "*1A", "*50")


@pytest.mark.parametrize("gene", GENES)
def test_pairs_not_in_the_table_follow_the_class_rules(gene: str) -> None:
    """An allele the table does not list has unknown function (class U): paired with every listed
    allele, and with another unlisted one, the engine gives the README's class rule, never Normal."""
    table = KB.cpic[gene].diplotype_phenotype
    checked = 0
    for unlisted in UNLISTED:
        assert unlisted not in FUNCTIONS[gene]
        pairs = [(listed, README_CLASS[fn]) for listed, fn in FUNCTIONS[gene].items()] + [("*98", U)]
        for other, cls in pairs:
            for diplotype in (f"{other}/{unlisted}", f"{unlisted}/{other}"):
                assert diplotype not in table
                expected = CPIC_TERMS[readme_rule(gene, cls, U)]
                assert expected != "NM"
                assert phenotype_from_diplotype(KB, gene, diplotype) == expected, diplotype
                checked += 1
    assert checked == len(UNLISTED) * (len(FUNCTIONS[gene]) + 1) * 2
    # through the whole engine, one of each class
    for listed in ("*1", "*3A" if gene == "TPMT" else "*3", "*8", "*9" if gene == "TPMT" else "*11"):
        expected = CPIC_TERMS[readme_rule(gene, README_CLASS[FUNCTIONS[gene][listed]], U)]
        result = assess(record({gene: f"{listed}/*99", OTHER[gene]: "*1/*1"}), KB, AS_OF)
        assert result.pgx[gene.lower()] == LABEL[expected]


def test_decreased_function_rules_differ_between_the_genes() -> None:
    """Decreased + no function: Possible Intermediate for TPMT, Poor for NUDT15 (CPIC 2026)."""
    bare = without_tables(KB)
    assert phenotype_from_diplotype(bare, "TPMT", "*8/*3A") == "IM"
    assert phenotype_from_diplotype(bare, "NUDT15", "*5/*3") == "PM"
    assert phenotype_from_diplotype(bare, "TPMT", "*1/*8") == phenotype_from_diplotype(bare, "NUDT15", "*1/*5") == "NM"
    assert phenotype_from_diplotype(bare, "TPMT", "*8/*8") == phenotype_from_diplotype(bare, "NUDT15", "*5/*8") == "IM"


# ---------------------------------------------------------------- NUDT15 *2 -> *3
def test_nudt15_star2_is_an_alias_of_star3_in_knowledge() -> None:
    (alias,) = KB.pgx.allele_aliases
    assert (alias.gene, alias.allele, alias.read_as) == ("NUDT15", "*2", "*3")
    assert "CPIC-changelog" in alias.sources


@pytest.mark.parametrize("other", list(FUNCTIONS["NUDT15"]))
def test_nudt15_star2_is_read_as_star3(other: str) -> None:
    """*2/x is called exactly as *3/x, for every NUDT15 allele x (and *2/*2 as *3/*3)."""
    for written, as_star3 in ((f"*2/{other}", f"*3/{other}"), (f"{other}/*2", f"{other}/*3"), ("*2/*2", "*3/*3")):
        assert phenotype_from_diplotype(KB, "NUDT15", written) == phenotype_from_diplotype(KB, "NUDT15", as_star3)


def test_laboratory_nudt15_star1_star2_is_intermediate_not_indeterminate() -> None:
    result = assess(record({"TPMT": "*1/*1", "NUDT15": "*1/*2"}), KB, AS_OF)
    assert result.pgx["nudt15"] == LABEL["IM"] and result.pgx["category"] == "intermediate"
    assert "data-unknown-allele" not in codes(result)
    f = next(f for f in result.findings if f.code == "pgx-intermediate")
    assert "*1/*2, read as *1/*3" in f.message
    assert any(e.get("detail", "").startswith("*1/*2, read as *1/*3") for e in f.evidence)


# ---------------------------------------------------------------- scripts/update_cpic.py
def update_cpic() -> ModuleType:
    spec = importlib.util.spec_from_file_location("update_cpic", ROOT / "scripts" / "update_cpic.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def pharmcat_file(gene: str, version: str) -> dict[str, object]:
    """The shipped table in PharmCAT's phenotype/<GENE>.json layout. Serialised with json.dumps(indent=2)
    this layout has the exact length of PharmCAT's own files (3.1.1: 14,796 and 287,760 characters for
    the previous tables; 3.2.0: 65,832 and 374,166 for these), docs/knowledge.md "CPIC data"."""
    diplotypes = []
    for g, dip, phen in ROWS:
        if g == gene:
            a, b = dip.split("/")
            key = {a: 2} if a == b else {a: 1, b: 1}
            diplotypes.append(
                {"generesult": phen, "diplotype": dip, "description": None, "lookupkey": phen, "diplotypekey": key}
                | {"activityScore": None, "phenotype": phen}
            )
    named = [
        {"name": a, "activityValue": None, "functionValue": fn, "lookupKey": fn} for a, fn in FUNCTIONS[gene].items()
    ]
    return {
        "gene": gene,
        "haplotypes": FUNCTIONS[gene],
        "activityValues": {},
        "diplotypes": diplotypes,
        "namedAlleles": named,
        "version": version,
    }


def write_files(folder: Path, version: str, edit: dict[str, str] | None = None) -> list[str]:
    paths = []
    for gene in GENES:
        data = pharmcat_file(gene, version)
        for entry in data["diplotypes"]:  # type: ignore[attr-defined]
            if edit and entry["diplotype"] in edit and gene == "NUDT15":
                entry["phenotype"] = entry["generesult"] = entry["lookupkey"] = edit[entry["diplotype"]]
        path = folder / f"{gene}.json"
        path.write_text(json.dumps(data, indent=2), encoding="utf-8")
        paths.append(str(path))
    return paths


def test_pharmcat_layout_has_pharmcats_length() -> None:
    lengths = [len(json.dumps(pharmcat_file(g, KB.meta.cpic_data_version), indent=2)) for g in GENES]
    assert lengths == [374_166, 65_832]


def test_update_script_regenerates_the_shipped_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = update_cpic()
    files = write_files(tmp_path, KB.meta.cpic_data_version)
    assert script.main(["--check", *files]) == 0
    out = tmp_path / "out"
    out.mkdir()
    assert script.main(["--out", str(out), *files]) == 0
    shipped = resources.files("azaguard.knowledge.data").joinpath("cpic")
    for gene in GENES:
        for kind in ("allele_function", "diplotype_phenotype"):
            name = f"{gene}_{kind}.tsv"
            assert (out / name).read_bytes() == shipped.joinpath(name).read_bytes(), name
    capsys.readouterr()


def test_update_script_check_reports_differences(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = update_cpic()
    # a newer data version: the tables match, but protocol.toml must be told
    assert script.main(["--check", *write_files(tmp_path, "2099-01-01-00-00")]) == 1
    assert "set it to '2099-01-01-00-00'" in capsys.readouterr().out
    # a changed phenotype: reported as a transition, and the fallback rules no longer reproduce it
    edited = write_files(tmp_path, KB.meta.cpic_data_version, {"*1/*3": "Poor Metabolizer"})
    assert script.main(["--check", *edited]) == 1
    captured = capsys.readouterr()
    assert "1 x Intermediate Metabolizer -> Poor Metabolizer" in captured.out
    assert "disagrees with 1 row(s)" in captured.err
    # an incomplete file is refused
    data = pharmcat_file("NUDT15", KB.meta.cpic_data_version)
    data["diplotypes"] = data["diplotypes"][1:]  # type: ignore[index]
    (tmp_path / "NUDT15.json").write_text(json.dumps(data), encoding="utf-8")
    assert script.main(["--check", str(tmp_path / "TPMT.json"), str(tmp_path / "NUDT15.json")]) == 2
    assert "have no diplotype row" in capsys.readouterr().err


# ---------------------------------------------------------------- the loader refuses inconsistent CPIC knowledge
def _build(edit: Callable[[dict[str, Any]], None]) -> None:
    raw = copy.deepcopy(loader._load_raw())
    edit(raw["protocol"]["pgx"])
    loader._build(raw, {"name": "t", "version": "0", "local": "no"})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda pgx: pgx["allele_aliases"][0].update(read_as="*77"), "is not a NUDT15 allele"),
        (lambda pgx: pgx["allele_aliases"][0].update(allele="*4"), "is still a CPIC allele"),
        (lambda pgx: pgx["allele_aliases"][0].update(sources=[]), "has no source"),
        (lambda pgx: pgx["function_rules"]["classes"].pop("Decreased function"), "no class for"),
        (lambda pgx: pgx["function_rules"]["genes"]["TPMT"]["none"].pop("uncertain"), "none \\+ uncertain"),
        (lambda pgx: pgx["function_rules"]["genes"]["TPMT"]["none"].update(normal=NM), "normal \\+ none"),
        (lambda pgx: pgx["function_rules"]["genes"].pop("NUDT15"), "exactly the CPIC genes"),
    ],
)
def test_inconsistent_cpic_knowledge_fails_loudly(edit: Callable[[dict[str, Any]], None], message: str) -> None:
    with pytest.raises(KnowledgeError, match=message):
        _build(edit)
