"""Regenerate azaguard's CPIC TPMT/NUDT15 tables from PharmCAT's phenotype files.

    .venv/bin/python scripts/update_cpic.py TPMT.json NUDT15.json          # write the four TSVs
    .venv/bin/python scripts/update_cpic.py --check TPMT.json NUDT15.json  # compare only

The inputs are ``src/main/resources/org/pharmgkb/pharmcat/phenotype/TPMT.json`` and ``NUDT15.json``
of a PharmCAT release (the same files are inside the release jar). The script never uses the
network: download or unpack the files first and give their paths.

It writes ``azaguard/knowledge/data/cpic/{gene}_allele_function.tsv`` (gene, allele,
clinical_function, source_version) from the file's ``haplotypes`` block and
``{gene}_diplotype_phenotype.tsv`` (gene, diplotype, phenotype, source_version) from its
``diplotypes`` list, in PharmCAT's order. Before writing it checks that every diplotype names
listed alleles, that the list is complete (every pair of listed alleles once), that each allele
function has a class in ``protocol.toml [pgx.function_rules]`` and that those fallback rules give
every row's phenotype, so a CPIC change in how allele classes combine is caught here rather than in
a patient's report. It prints what changed against the shipped tables.

``--check`` writes nothing and exits 1 when the shipped tables differ from the files (or when
``protocol.toml [meta] cpic_data_version`` is not the files' data version), 0 when they agree.
After writing, set ``cpic_data_version`` as printed and run the tests (tests/test_cpic_tables.py
checks every row against the engine).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tomllib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "azaguard" / "knowledge" / "data"
GENES = ("TPMT", "NUDT15")
FUNCTION_HEADER = ("gene", "allele", "clinical_function", "source_version")
DIPLOTYPE_HEADER = ("gene", "diplotype", "phenotype", "source_version")


class InputError(Exception):
    """A phenotype file that is not what this script expects; the message names file and entry."""


@dataclass(frozen=True)
class GeneData:
    gene: str
    version: str
    functions: dict[str, str]  # allele -> CPIC clinical function, in PharmCAT's order
    diplotypes: list[tuple[str, str]]  # (diplotype, phenotype), in PharmCAT's order


def load_phenotype_file(path: Path) -> GeneData:
    """Read one PharmCAT ``phenotype/<GENE>.json`` and check it is complete and consistent."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read a JSON phenotype file ({exc})") from exc
    gene = raw.get("gene")
    version = raw.get("version")
    functions = raw.get("haplotypes")
    entries = raw.get("diplotypes")
    if gene not in GENES:
        raise InputError(f"{path}: gene {gene!r} is not one of {list(GENES)}")
    if not isinstance(version, str) or not version:
        raise InputError(f"{path}: no data 'version'")
    if not isinstance(functions, dict) or not functions or not all(isinstance(v, str) for v in functions.values()):
        raise InputError(f"{path}: 'haplotypes' must map each allele to its clinical function")
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{path}: no 'diplotypes'")
    diplotypes: list[tuple[str, str]] = []
    seen: set[frozenset[str]] = set()
    for i, entry in enumerate(entries):
        diplotype, phenotype = _entry(entry)
        if diplotype is None or phenotype is None:
            raise InputError(f"{path}: diplotypes[{i}] needs 'diplotype' and 'phenotype'")
        alleles = diplotype.split("/")
        unlisted = [a for a in alleles if a not in functions]
        if len(alleles) != 2 or unlisted:
            raise InputError(f"{path}: diplotypes[{i}] {diplotype!r} is not two alleles of 'haplotypes'")
        pair = frozenset(alleles)
        if pair in seen:
            raise InputError(f"{path}: diplotypes[{i}] {diplotype!r} is listed twice")
        seen.add(pair)
        diplotypes.append((diplotype, phenotype))
    names = list(functions)
    expected = {frozenset((a, b)) for i, a in enumerate(names) for b in names[i:]}
    if seen != expected:
        missing = sorted("/".join(sorted(p)) for p in expected - seen)
        raise InputError(f"{path}: {len(missing)} allele pair(s) have no diplotype row, e.g. {missing[:3]}")
    return GeneData(gene, version, dict(functions), diplotypes)


def _entry(entry: Any) -> tuple[str | None, str | None]:
    if not isinstance(entry, dict):
        return None, None
    diplotype, phenotype = entry.get("diplotype"), entry.get("phenotype")
    return (diplotype if isinstance(diplotype, str) else None, phenotype if isinstance(phenotype, str) else None)


def render(data: GeneData) -> dict[str, str]:
    """The two TSV files of one gene, in the layout azaguard's loader reads."""
    functions = [(data.gene, allele, fn, data.version) for allele, fn in data.functions.items()]
    diplotypes = [(data.gene, dip, phen, data.version) for dip, phen in data.diplotypes]
    return {
        f"{data.gene}_allele_function.tsv": _tsv(FUNCTION_HEADER, functions),
        f"{data.gene}_diplotype_phenotype.tsv": _tsv(DIPLOTYPE_HEADER, diplotypes),
    }


def _tsv(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    return "".join("\t".join(row) + "\n" for row in (header, *rows))


def _rows(text: str, key: str, value: str) -> dict[str, str]:
    return {r[key]: r[value] for r in csv.DictReader(io.StringIO(text), delimiter="\t")}


def check_rules(data: GeneData, protocol: dict[str, Any]) -> list[str]:
    """Problems with azaguard's fallback rules (protocol.toml [pgx.function_rules]) for this data:
    an allele function without a class, or a row whose phenotype the rules would not give."""
    rules = protocol["pgx"]["function_rules"]
    classes: dict[str, str] = rules["classes"]
    table: dict[str, dict[str, str]] = rules["genes"].get(data.gene, {})
    problems = [
        f"{data.gene}: allele function {fn!r} ({allele}) has no class in [pgx.function_rules.classes]"
        for allele, fn in data.functions.items()
        if fn not in classes
    ]
    if problems:
        return problems
    wrong: list[str] = []
    for diplotype, phenotype in data.diplotypes:
        a, b = (classes[data.functions[x]] for x in diplotype.split("/"))
        rule = table.get(a, {}).get(b) or table.get(b, {}).get(a)
        if rule != phenotype:
            wrong.append(f"{diplotype} ({a} + {b}): table {phenotype!r}, rules {rule!r}")
    if wrong:
        problems.append(
            f"{data.gene}: [pgx.function_rules.genes.{data.gene}] disagrees with {len(wrong)} row(s), "
            f"e.g. {'; '.join(wrong[:3])}"
        )
    return problems


def describe_changes(name: str, old: str | None, new: str) -> list[str]:
    """One line per kind of change between the shipped table and the regenerated one."""
    if old is None:
        return [f"{name}: new file"]
    if old == new:
        return []
    key, value = ("allele", "clinical_function") if "allele_function" in name else ("diplotype", "phenotype")
    before, after = _rows(old, key, value), _rows(new, key, value)
    lines: list[str] = []
    if key == "allele":
        lines += [f"{name}: {a} {before[a]} -> {after[a]}" for a in after if a in before and before[a] != after[a]]
    else:
        moves = Counter(f"{before[k]} -> {after[k]}" for k in after if k in before and before[k] != after[k])
        lines += [f"{name}: {n} x {move}" for move, n in moves.most_common()]
    added, removed = [k for k in after if k not in before], [k for k in before if k not in after]
    if added:
        lines.append(f"{name}: {len(added)} added, e.g. {', '.join(added[:5])}")
    if removed:
        lines.append(f"{name}: {len(removed)} removed: {', '.join(removed[:10])}{' ...' if len(removed) > 10 else ''}")
    if not lines:
        lines.append(f"{name}: same rows, other differences (order, source_version or layout)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="PharmCAT phenotype/TPMT.json and phenotype/NUDT15.json")
    parser.add_argument("--check", action="store_true", help="compare with the shipped tables; write nothing")
    parser.add_argument("--out", type=Path, default=DATA / "cpic", help="folder of the TSVs (default: %(default)s)")
    parser.add_argument(
        "--protocol", type=Path, default=DATA / "protocol.toml", help="protocol.toml (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        loaded = [load_phenotype_file(path) for path in args.files]
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    by_gene = {d.gene: d for d in loaded}
    if sorted(by_gene) != sorted(GENES) or len(loaded) != len(GENES):
        print(f"error: give one phenotype file for each of {list(GENES)}", file=sys.stderr)
        return 2
    versions = {d.version for d in loaded}
    if len(versions) != 1:
        print(f"error: the files carry different data versions {sorted(versions)}", file=sys.stderr)
        return 2
    (version,) = versions
    protocol = tomllib.loads(args.protocol.read_text(encoding="utf-8"))
    problems = [p for d in loaded for p in check_rules(d, protocol)]
    for problem in problems:
        print(f"rules: {problem}", file=sys.stderr)

    changes: list[str] = []
    files = {name: text for d in loaded for name, text in render(d).items()}
    for name, text in files.items():
        path = args.out / name
        old = path.read_text(encoding="utf-8") if path.exists() else None
        changes += describe_changes(name, old, text)
        if not args.check and old != text:
            path.write_text(text, encoding="utf-8")
    shipped_version = protocol["meta"]["cpic_data_version"]
    for line in changes:
        print(line)
    counts = ", ".join(f"{d.gene} {len(d.functions)} alleles / {len(d.diplotypes)} diplotypes" for d in loaded)
    print(f"CPIC data {version}: {counts}")
    if shipped_version != version:
        print(f"protocol.toml [meta] cpic_data_version is {shipped_version!r}: set it to {version!r}")
    if args.check:
        differs = bool(changes) or shipped_version != version or bool(problems)
        print("differences found" if differs else "the shipped tables match these files")
        return 1 if differs else 0
    print("wrote nothing: the shipped tables already match" if not changes else f"wrote {args.out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
