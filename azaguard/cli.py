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
from typing import Any


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


def _db(args: argparse.Namespace) -> Any:
    from azaguard.store.db import Database

    return Database(getattr(args, "database", None))


def cmd_serve(args: argparse.Namespace) -> int:
    import time

    import uvicorn

    from azaguard.app import Settings, create_app
    from azaguard.store.db import Database

    started = time.perf_counter()
    url = args.database
    if args.demo and not url and not os.environ.get("AZAGUARD_DATABASE_URL"):
        demo_path = Path(args.demo_db)
        for suffix in ("", "-wal", "-shm"):
            Path(str(demo_path) + suffix).unlink(missing_ok=True)
        url = f"sqlite:///{demo_path}"
    db = Database(url)
    logins: list[tuple[str, str, str]] = []
    if args.demo:
        from azaguard.synth import build_demo

        logins = build_demo(db, args.patients)
    app = create_app(db, settings=Settings(clinic_name=args.clinic_name, background_refresh=True))
    ready = time.perf_counter() - started
    print(f"azaguard serving {db.url.split('@')[-1]} on http://{args.host}:{args.port} (ready in {ready:.1f} s)")
    if logins:
        print("Demo logins (synthetic clinic; every patient is invented):")
        for username, password, role in logins:
            print(f"  {role:<9} {username:<10} password: {password}")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from azaguard.synth import build_demo

    db = _db(args)
    for username, password, role in build_demo(db, args.patients):
        print(f"{role:<9} {username:<10} password: {password}")
    print(f"{args.patients} synthetic patients written to {db.url.split('@')[-1]}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from azaguard import service
    from azaguard.ingest import FormatError, load_code_map, parse_text
    from azaguard.knowledge import load_knowledge

    kb = load_knowledge()
    db = _db(args)
    codes = load_code_map(args.code_map) if args.code_map else None
    for arg in args.paths:
        if not Path(arg).exists():
            raise UsageError(f"{arg}: no such file or folder (nothing was imported)")
    files = [
        p
        for arg in args.paths
        for p in (sorted(Path(arg).iterdir()) if Path(arg).is_dir() else [Path(arg)])
        if p.is_file()
    ]
    if not files:
        raise UsageError("no files to import")
    totals: dict[str, int] = {}
    with Progress(disable=not sys.stderr.isatty() or args.quiet, transient=True) as bar:
        for path in files:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
            try:
                parsed = parse_text(text, kb, args.format, str(path), codes)
            except FormatError as exc:
                raise UsageError(str(exc)) from None
            task = bar.add_task(path.name, total=len(parsed.items) or 1)
            with db.session() as s:
                summary = service.import_parsed(
                    s, kb, None, parsed, str(path), "cli", lambda n, t=task: bar.advance(t, n)
                )
            result = summary.as_dict()
            print(f"{path}: " + ", ".join(f"{k} {v}" for k, v in result.items() if k != "batch_id"))
            for k, v in result.items():
                if k != "batch_id":
                    totals[k] = totals.get(k, 0) + v
    if len(files) > 1:
        print("total: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    import getpass

    from azaguard.auth import AuthError, create_user

    password = args.password or os.environ.get("AZAGUARD_PASSWORD") or getpass.getpass("Password: ")
    with _db(args).session() as s:
        try:
            user = create_user(s, args.username, password, args.role, args.patient, args.name or "")
        except AuthError as exc:
            raise UsageError(str(exc)) from None
        print(f"user {user.username} ({user.role}) created")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from azaguard.auth import create_api_token
    from azaguard.store import models as m

    with _db(args).session() as s:
        user = s.scalar(select(m.User).where(m.User.username == args.username))
        if user is None:
            raise UsageError(f"no user '{args.username}'")
        print(create_api_token(s, user, args.label, args.days))
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from azaguard import service
    from azaguard.ingest import load_code_map
    from azaguard.knowledge import load_knowledge
    from azaguard.store import models as m

    db = _db(args)
    if args.reprocess is not None:
        codes = load_code_map(args.code_map) if args.code_map else None
        with db.session() as s:
            try:
                summary = service.reprocess_quarantine(s, load_knowledge(), None, args.reprocess, "cli", codes)
            except (service.NotFound, ValueError) as exc:
                raise UsageError(str(exc)) from None
            item = s.get(m.QuarantineItem, args.reprocess)
            print(f"quarantine {args.reprocess}: {item.state if item else '?'}; {summary.as_dict()}")
        return 0
    with db.session() as s:
        rows = s.scalars(
            select(m.QuarantineItem).where(m.QuarantineItem.state == args.state).order_by(m.QuarantineItem.id)
        )
        n = 0
        for q in rows:
            n += 1
            print(f"#{q.id} {q.received_at:%Y-%m-%d %H:%M} {q.format} {q.record_ref}: {q.reason}")
        print(f"{n} {args.state} item(s)")
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    from azaguard.knowledge import load_knowledge
    from azaguard.worklist import refresh_stale

    with _db(args).session() as s:
        n = refresh_stale(s, load_knowledge(), _as_of(args.as_of))
    print(f"{n} patient(s) re-assessed")
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

    db_help = "database URL (default: AZAGUARD_DATABASE_URL or sqlite:///azaguard.db)"
    p = sub.add_parser("serve", help="run the clinic web app and REST API")
    p.add_argument(
        "--demo", action="store_true", help="start on a fresh synthetic clinic (SQLite file azaguard-demo.db)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--database", help=db_help)
    p.add_argument("--patients", type=int, default=240, help="demo clinic size (default 240)")
    p.add_argument("--demo-db", default="azaguard-demo.db", help="file for the demo database (recreated each time)")
    p.add_argument("--clinic-name", default="Neuromuscular clinic (demo)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("synth", help="write a synthetic clinic and demo users into an empty database")
    p.add_argument("--database", help=db_help)
    p.add_argument("--patients", type=int, default=240)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("import", help="import FHIR Bundles/NDJSON, HL7 v2 ORU^R01 or CSV files")
    p.add_argument("paths", nargs="+", help="files or folders")
    p.add_argument("--format", choices=("fhir", "ndjson", "hl7v2", "csv"), help="default: detected per file")
    p.add_argument("--code-map", help="local lab codes -> LOINC (TOML [codes] or CSV local,loinc)")
    p.add_argument("--database", help=db_help)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("quarantine", help="list quarantined records, or re-process one after a fix")
    p.add_argument("--state", default="open", choices=("open", "reprocessed", "discarded"))
    p.add_argument("--reprocess", type=int, metavar="ID")
    p.add_argument("--code-map")
    p.add_argument("--database", help=db_help)
    p.set_defaults(func=cmd_quarantine)

    p = sub.add_parser("refresh", help="re-assess every patient whose assessment is older than today (run daily)")
    p.add_argument("--as-of")
    p.add_argument("--database", help=db_help)
    p.set_defaults(func=cmd_refresh)

    user = sub.add_parser("user", help="manage users").add_subparsers(dest="user_command", required=True)
    p = user.add_parser("add", help="add a user (clinician, patient bound to one record, or admin)")
    p.add_argument("username")
    p.add_argument("--role", required=True, choices=("clinician", "patient", "admin"))
    p.add_argument("--patient", help="the patient identifier a patient user may see")
    p.add_argument("--name", help="display name")
    p.add_argument("--password", help="default: AZAGUARD_PASSWORD or prompt")
    p.add_argument("--database", help=db_help)
    p.set_defaults(func=cmd_user_add)

    p = sub.add_parser("token", help="create an API bearer token for a user")
    p.add_argument("username")
    p.add_argument("--label", default="cli")
    p.add_argument("--days", type=int, help="expiry in days (default: none)")
    p.add_argument("--database", help=db_help)
    p.set_defaults(func=cmd_token)

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
