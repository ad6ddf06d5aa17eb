"""Command line: every command is a few lines over a library function.

Exit codes: 0 success, 2 bad input (malformed bundle, bad option, bad protocol file),
1 unexpected internal error (reported in one line, never a traceback, unless
AZAGUARD_DEBUG=1).
"""

from __future__ import annotations

import os
import sys
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="azaguard: safe azathioprine therapy for neuromuscular disorders (decision support, not autopilot).",
)


class Format(StrEnum):
    text = "text"
    json = "json"


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _parse_as_of(value: str | None) -> date:
    if value is None:
        return date.today()
    try:
        return date.fromisoformat(value)
    except ValueError:
        _fail(f"--as-of must be a date as YYYY-MM-DD, got '{value}'")
        raise  # unreachable; keeps type checkers happy


@app.command()
def assess(
    bundle: Annotated[Path, typer.Argument(help="FHIR R4 Bundle (JSON) with one patient's record.")],
    as_of: Annotated[str | None, typer.Option("--as-of", help="Assessment date YYYY-MM-DD (default: today).")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.text,
    protocol: Annotated[
        Path | None, typer.Option("--protocol", help="Local protocol TOML overriding thresholds/intervals.")
    ] = None,
) -> None:
    """Assess one patient's record and print findings, dose and monitoring plan."""
    from azaguard.engine import assess as run_assess
    from azaguard.knowledge import KnowledgeError, load_knowledge
    from azaguard.readers.fhir import ReaderError, read_bundle_file
    from azaguard.render.json import render_json
    from azaguard.render.text import render_text

    when = _parse_as_of(as_of)
    try:
        kb = load_knowledge(protocol)
    except KnowledgeError as exc:
        _fail(f"protocol: {exc}")
    try:
        record = read_bundle_file(bundle, kb)
    except ReaderError as exc:
        _fail(str(exc))
    result = run_assess(record, kb, when)
    typer.echo(render_json(result) if fmt is Format.json else render_text(result), nl=fmt is Format.json)


def _examples_dir() -> Path:
    for candidate in (Path(__file__).resolve().parent.parent / "examples", Path.cwd() / "examples"):
        if candidate.is_dir():
            return candidate
    _fail("cannot find the examples/ folder (run from the repository)")
    raise AssertionError


@app.command()
def demo(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Assessment date YYYY-MM-DD (default: each example's own date).")
    ] = None,
) -> None:
    """Assess every bundled example and print its report."""
    import json

    from azaguard.engine import assess as run_assess
    from azaguard.knowledge import load_knowledge
    from azaguard.readers.fhir import read_bundle_file
    from azaguard.render.text import render_text

    kb = load_knowledge()
    folder = _examples_dir()
    for path in sorted(folder.glob("*.json")):
        meta_path = path.with_suffix(".meta.json")
        when = _parse_as_of(as_of) if as_of else None
        title = path.stem
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            when = when or date.fromisoformat(meta["as_of"])
            title = f"{path.stem}: {meta.get('title', '')}"
        record = read_bundle_file(path, kb)
        typer.echo("=" * 100)
        typer.echo(title)
        typer.echo("=" * 100)
        typer.echo(render_text(run_assess(record, kb, when or date.today()), show_sources=False))


@app.command()
def knowledge(
    protocol: Annotated[
        Path | None, typer.Option("--protocol", help="Local protocol TOML to validate and merge.")
    ] = None,
) -> None:
    """Validate the knowledge base (and a local protocol) and print its version and rule counts."""
    from azaguard.knowledge import KnowledgeError, load_knowledge

    try:
        kb = load_knowledge(protocol)
    except KnowledgeError as exc:
        _fail(str(exc))
    typer.echo(f"{kb.version}")
    typer.echo(
        f"{len(kb.sources)} sources, {len(kb.thresholds)} thresholds, {len(kb.trends)} trend rules, "
        f"{len(kb.interactions)} interactions, {len(kb.drugs)} medicines, {len(kb.findings)} finding texts, "
        f"{sum(len(g.diplotype_phenotype) for g in kb.cpic.values())} CPIC diplotypes"
    )


def main() -> None:
    try:
        app()
    except SystemExit:
        raise
    except Exception as exc:  # last line of defence: one clear line, never a traceback
        if os.environ.get("AZAGUARD_DEBUG"):
            raise
        typer.echo(
            f"error: internal error ({type(exc).__name__}); please report it with the input that caused it", err=True
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
