"""Command line: every command is a few lines over a library function.

argparse (stdlib) rather than Typer: Typer 0.29 builds its parameter coercion on pydantic,
which alone cost ~300 ms per call, and `azaguard assess` must answer within 500 ms.

Exit codes: 0 success, 2 bad input (malformed bundle, bad option, bad protocol file),
1 unexpected internal error (reported in one line, never a traceback, unless
AZAGUARD_DEBUG=1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def _as_of(value: str | None) -> date:
    if value is None:
        return date.today()
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--as-of must be a date as YYYY-MM-DD, got '{value}'") from None


def cmd_assess(args: argparse.Namespace) -> int:
    from azaguard.engine import assess
    from azaguard.knowledge import KnowledgeError, load_knowledge
    from azaguard.readers.fhir import ReaderError, read_bundle_file
    from azaguard.render.json import render_json
    from azaguard.render.text import render_text

    when = _as_of(args.as_of)
    try:
        kb = load_knowledge(args.protocol)
    except KnowledgeError as exc:
        raise UsageError(f"protocol: {exc}") from None
    try:
        record = read_bundle_file(args.bundle, kb)
    except ReaderError as exc:
        raise UsageError(str(exc)) from None
    result = assess(record, kb, when)
    sys.stdout.write(render_json(result) + "\n" if args.format == "json" else render_text(result))
    return 0


def examples_dir() -> Path:
    for candidate in (Path(__file__).resolve().parent.parent / "examples", Path.cwd() / "examples"):
        if candidate.is_dir():
            return candidate
    raise UsageError("cannot find the examples/ folder (run from the repository)")


def cmd_demo(args: argparse.Namespace) -> int:
    from azaguard.engine import assess
    from azaguard.knowledge import load_knowledge
    from azaguard.readers.fhir import read_bundle_file
    from azaguard.render.text import render_text

    kb = load_knowledge()
    bundles = sorted(p for p in examples_dir().glob("*.json") if not p.name.endswith(".meta.json"))
    for path in bundles:
        meta_path = path.with_name(path.stem + ".meta.json")
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
        when = (
            _as_of(args.as_of) if args.as_of else date.fromisoformat(meta["as_of"]) if "as_of" in meta else date.today()
        )
        print("=" * 100)
        print(f"{path.stem}: {meta.get('title', '')}")
        if meta.get("story"):
            print(meta["story"])
        print("=" * 100)
        print(render_text(assess(read_bundle_file(path, kb), kb, when), show_sources=False))
    print(f"{len(bundles)} example patients assessed with {kb.version}.")
    return 0


def cmd_knowledge(args: argparse.Namespace) -> int:
    from azaguard.knowledge import KnowledgeError, load_knowledge

    try:
        kb = load_knowledge(args.protocol)
    except KnowledgeError as exc:
        raise UsageError(str(exc)) from None
    print(kb.version)
    print(
        f"{len(kb.sources)} sources, {len(kb.thresholds)} thresholds, {len(kb.trends)} trend rules, "
        f"{len(kb.interactions)} interactions, {len(kb.drugs)} medicines, {len(kb.findings)} finding texts, "
        f"{sum(len(g.diplotype_phenotype) for g in kb.cpic.values())} CPIC diplotypes"
    )
    return 0


def cmd_guide(args: argparse.Namespace) -> int:
    import textwrap

    from azaguard.knowledge import load_knowledge

    kb = load_knowledge()
    print(f"Azathioprine: a guide for patients ({kb.version})\n")
    for section in kb.guide:
        print(section.title.upper())
        print(textwrap.fill(section.text, 100))
        if section.correction:
            print(textwrap.fill(f"Why this differs from older leaflets: {section.correction}", 100))
        if args.sources:
            print(textwrap.fill("Sources: " + "; ".join(kb.cite(section.sources)), 100))
        print()
    print("This guide supports, and does not replace, advice from your own clinical team.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="azaguard",
        description="azaguard: safe azathioprine therapy for neuromuscular disorders (decision support only).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("assess", help="assess one patient's FHIR R4 Bundle: findings, dose, monitoring plan")
    p.add_argument("bundle", type=Path, help="FHIR R4 Bundle (JSON) with one patient's record")
    p.add_argument("--as-of", help="assessment date YYYY-MM-DD (default: today)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    p.add_argument("--protocol", type=Path, help="local protocol TOML overriding thresholds and intervals")
    p.set_defaults(func=cmd_assess)

    p = sub.add_parser("demo", help="assess every bundled example patient and print the reports")
    p.add_argument("--as-of", help="assess all examples on this date instead of each example's own date")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("guide", help="print the patient guide (the seed article, corrected and cited)")
    p.add_argument("--sources", action="store_true", help="print the source of each section")
    p.set_defaults(func=cmd_guide)

    p = sub.add_parser("knowledge", help="validate the knowledge base (and a local protocol) and show its version")
    p.add_argument("--protocol", type=Path, help="local protocol TOML to validate and merge")
    p.set_defaults(func=cmd_knowledge)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits 2 with a usage line on bad options
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except Exception as exc:  # last line of defence: one clear line, never a traceback
        if os.environ.get("AZAGUARD_DEBUG"):
            raise
        print(
            f"error: internal error ({type(exc).__name__}); please report it with the input that caused it",
            file=sys.stderr,
        )
        return 1


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
