"""Command line: every command is a few lines over a library function.

argparse (stdlib) rather than Typer: Typer 0.29 builds its parameter coercion on pydantic,
which alone cost ~300 ms per call, and `azaguard assess` must answer within 500 ms.

Exit codes: 0 success, 2 bad input (malformed bundle, bad option, bad protocol file),
75 the database stayed busy (another program held its write lock; try again),
1 unexpected internal error (reported in one line, never a traceback, unless
AZAGUARD_DEBUG=1).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

EXIT_BUSY = 75  # EX_TEMPFAIL: the database stayed busy; try again later


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
            a = kb.guide_article
            article = f"the article '{a.title}' ({a.author}, {a.published.isoformat()})" if a else "the article"
            print(textwrap.fill(f"This corrects {article}, which says: {section.seed_claim}", 100))
            print(textwrap.fill(f"What is different now: {section.correction}", 100))
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
        for suffix in ("", "-wal", "-shm", "-writelock"):
            Path(str(demo_path) + suffix).unlink(missing_ok=True)
        url = f"sqlite:///{demo_path}"
    db = Database(url)
    logins: list[tuple[str, str, str]] = []
    if args.demo:
        from azaguard.synth import build_demo

        logins = build_demo(db, args.patients)
    secure = os.environ.get("AZAGUARD_SECURE_COOKIES") == "1"
    workers = max(1, args.workers)
    # Built (and so checked: SMTP, reminder channels) before "serving" is printed; the worker
    # processes of --workers N build the same settings from the same environment.
    settings = Settings(secure_cookies=secure, background_refresh=workers == 1)
    settings.clinic_name = args.clinic_name or settings.clinic_name
    ready = time.perf_counter() - started
    where = f"on http://{args.host}:{args.port}" + (f" ({workers} processes)" if workers > 1 else "")
    print(f"azaguard serving {db.url.split('@')[-1]} {where} (ready in {ready:.1f} s)")
    if logins:
        print("Demo logins (synthetic clinic; every patient is invented):")
        for username, password, role in logins:
            print(f"  {role:<9} {username:<10} password: {password}")
    if args.mllp_port is not None:
        from azaguard.ehr.mllp import start_in_thread
        from azaguard.knowledge import load_knowledge

        _mllp_log()
        mllp_host = args.mllp_host or args.host
        try:
            feed = start_in_thread(db, load_knowledge(), mllp_host, args.mllp_port)
        except OSError as exc:
            raise UsageError(f"cannot listen on {mllp_host}:{args.mllp_port}: {exc.strerror or exc}") from None
        print(f"azaguard listening for HL7 v2 over MLLP on {mllp_host}:{feed.port}")
    sys.stdout.flush()
    if workers == 1:
        app = create_app(db, settings=settings)  # with its in-flight limit (azaguard.app)
        _settle_gc()
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
        return 0
    return _serve_processes(db, args.host, args.port, workers, args.clinic_name, secure)


def _serve_processes(db: Any, host: str, port: int, workers: int, clinic_name: str | None, secure: bool) -> int:
    """`serve --workers N`: N server processes, each with its own listening socket on the same port
    (SO_REUSEPORT: the kernel spreads new connections evenly, where one shared socket lets one
    process take most keep-alive connections); this process re-assesses stale patients and stops
    the others when it is stopped or one of them stops."""
    import multiprocessing
    import signal
    from multiprocessing.connection import wait

    from azaguard.app import start_refresher
    from azaguard.knowledge import load_knowledge

    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_serve_worker, args=(db.url, host, port, clinic_name, secure), name=f"azaguard-{i}")
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    start_refresher(db, load_knowledge())
    code = 0
    try:
        wait([proc.sentinel for proc in procs])
        code = next((p.exitcode for p in procs if p.exitcode), 0) or 0
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches every process: stop them once
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # uvicorn shuts down gracefully on SIGTERM
        for proc in procs:
            proc.join(15)
            if proc.is_alive():
                proc.kill()
    return code


def _settle_gc() -> None:
    """Move what lives as long as the server (the validated knowledge base, the app, the imported
    modules) out of the garbage collector's sight, and collect less often: a request builds many
    short-lived dicts (a CDS prefetch, a patient's record), and each full collection otherwise walks
    every long-lived object too - tens of milliseconds added to whichever request triggered it."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _serve_worker(url: str, host: str, port: int, clinic_name: str | None, secure: bool) -> None:
    """One server process of `serve --workers N`."""
    import socket

    import uvicorn

    from azaguard.app import Settings, create_app
    from azaguard.store.db import Database

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    settings = Settings(secure_cookies=secure, background_refresh=False)
    settings.clinic_name = clinic_name or settings.clinic_name
    app = create_app(Database(url, create=False), settings=settings)
    _settle_gc()
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


def _mllp_log() -> None:
    """The MLLP listener's one line per connection (counts and addresses, never content) on stderr;
    only its own logger, so no library's log (SQL, URLs) is switched on with it."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    logger = logging.getLogger("azaguard.mllp")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def cmd_listen(args: argparse.Namespace) -> int:
    """The live laboratory feed: HL7 v2 over MLLP into the import pipeline until stopped (docs/ehr.md)."""
    from azaguard.ehr import mllp
    from azaguard.knowledge import load_knowledge

    db, kb = _db(args), load_knowledge()
    _mllp_log()

    def ready(listener: Any) -> None:
        print(f"azaguard listening for HL7 v2 over MLLP on {listener.host}:{listener.port} ({db.url.split('@')[-1]})")
        sys.stdout.flush()

    try:
        mllp.listen(db, kb, args.host, args.mllp_port, args.max_frame, args.store_timeout, ready)
    except OSError as exc:  # the port is taken or the address is not this machine's
        raise UsageError(f"cannot listen on {args.host}:{args.mllp_port}: {exc.strerror or exc}") from None
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from azaguard.synth import build_demo

    db = _db(args)
    for username, password, role in build_demo(db, args.patients):
        print(f"{role:<9} {username:<10} password: {password}")
    print(f"{args.patients} synthetic patients written to {db.url.split('@')[-1]}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Import files in chunks of about a quarter of a second each (the clinic keeps working while a
    large file goes in); an interrupted import continues where it stopped when run again."""
    from rich.progress import Progress

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
                parsed = parse_text(text, kb, args.format, str(path), codes, args.patient)
            except FormatError as exc:
                raise UsageError(str(exc)) from None
            task = bar.add_task(path.name, total=len(parsed.items) or 1)
            result = _import_one(db, kb, parsed, str(path), functools.partial(_advance, bar, task))
            print(f"{path}: " + ", ".join(f"{k} {v}" for k, v in result.items() if k != "batch_id"))
            for k, v in result.items():
                if k != "batch_id":
                    totals[k] = totals.get(k, 0) + v
    if len(files) > 1:
        print("total: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    return 0


def _advance(bar: Any, task: Any, n: int) -> None:
    bar.advance(task, n)


def _import_one(db: Any, kb: Any, parsed: Any, source: str, progress: Callable[[int], None]) -> dict[str, int]:
    """One file through the chunked pipeline, as the API and web imports: re-assess the patients it
    touched, audit the import (with the ids of the patients it changed)."""
    from azaguard import service

    summary = service.import_in_chunks(db, kb, None, parsed, source, "cli", progress)
    result: dict[str, int] = summary.as_dict()
    return result


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


def cmd_smart_user_add(args: argparse.Namespace) -> int:
    """Link an EHR user (the issuer and the id_token's fhirUser) to an azaguard user (docs/ehr.md)."""
    from azaguard.ehr.smart import link_identity

    with _db(args).session() as s:
        try:
            link_identity(s, args.iss, args.fhir_user, args.username)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    print(f"{args.fhir_user} at {args.iss.strip().rstrip('/')} now opens azaguard as {args.username}")
    return 0


def cmd_cds_client(args: argparse.Namespace) -> int:
    """Register, list or remove the EHRs allowed to call the CDS Hooks services (docs/ehr.md)."""
    from azaguard.ehr import cds_auth

    db = _db(args)
    if args.cds_command == "add":
        try:
            c = cds_auth.add_client(db, args.iss, args.jwks_file, args.jwks_url, args.jku, args.fhir_server)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        print(
            f"CDS client {c.iss} registered: {c.keys}; jku allowed: {', '.join(c.jku_allow) or 'none'}; "
            f"FHIR servers: {', '.join(c.fhir_servers) or 'none'}"
        )
    elif args.cds_command == "remove":
        if not cds_auth.remove_client(db, args.iss):
            raise UsageError(f"no CDS client {args.iss}")
        print(f"CDS client {args.iss} removed: its tokens are refused from now on")
    else:
        for c in cds_auth.list_clients(db):
            state = "active" if c.active else "removed"
            jku, fhir = ", ".join(c.jku_allow) or "-", ", ".join(c.fhir_servers) or "-"
            print(f"{c.iss}\t{state}\t{c.keys}\tjku: {jku}\tFHIR: {fhir}")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """`token USER` creates a token; `token --list [USER]` lists them; `token revoke ID` revokes one."""
    from sqlalchemy import select

    from azaguard.audit import audit
    from azaguard.auth import AuthError, create_api_token, list_api_tokens, revoke_api_token
    from azaguard.store import models as m

    with _db(args).session() as s:
        if args.username == "revoke":
            if args.id is None:
                raise UsageError("token revoke needs --id (see azaguard token --list)")
            row = revoke_api_token(s, token_id=args.id)
            if row is None:
                raise UsageError(f"no token with id {args.id}")
            audit(s, None, "revoke-token", f"token {row.id} of user {row.user_id}", None, "", "cli")
            print(f"token {row.id} revoked")
            return 0
        user = None
        if args.username:
            user = s.scalar(select(m.User).where(m.User.username == args.username))
            if user is None:
                raise UsageError(f"no user '{args.username}'")
        if args.list:
            for t in list_api_tokens(s, user.id if user else None):
                expires = f"{t.expires_at:%Y-%m-%d}" if t.expires_at else "never"
                print(f"{t.id}\tuser {t.user_id}\t{t.label}\tcreated {t.created_at:%Y-%m-%d}\texpires {expires}")
            return 0
        if user is None:
            raise UsageError("name the user the token is for")
        try:
            print(create_api_token(s, user, args.label, args.days))
        except AuthError as exc:
            raise UsageError(str(exc)) from None
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    from azaguard import service
    from azaguard.ingest import load_code_map
    from azaguard.knowledge import load_knowledge

    db = _db(args)
    if args.reprocess is not None:
        codes = load_code_map(args.code_map) if args.code_map else None
        with db.session() as s:
            try:
                result = service.reprocess(s, load_knowledge(), None, args.reprocess, "cli", codes)
            except (service.NotFound, ValueError) as exc:
                raise UsageError(str(exc)) from None
            print(f"quarantine {args.reprocess}: {result.state or '?'}; {result.model_dump(exclude={'state'})}")
        return 0
    with db.session() as s:
        found = service.list_quarantine(s, None, args.state, None, "cli", newest_first=False)
    for q in found.items:
        print(f"#{q.id} {q.received_at:%Y-%m-%d %H:%M} {q.format} {q.record}: {q.reason}")
    print(f"{len(found.items)} {args.state} item(s)")
    return 0


REFRESH_BATCH = 50  # patients per transaction: the clinic waits for the write lock at most that long


def cmd_refresh(args: argparse.Namespace) -> int:
    """Re-assess stale patients in small transactions (each assesses without the write lock and
    holds it only to write), so a daily refresh of a large clinic never blocks the server."""
    from azaguard.knowledge import load_knowledge
    from azaguard.worklist import refresh_stale

    db, kb, as_of = _db(args), load_knowledge(), _as_of(args.as_of)
    n = 0
    while True:
        with db.session() as s:
            done = refresh_stale(s, kb, as_of, limit=REFRESH_BATCH)
        n += done
        if done < REFRESH_BATCH:
            break
    print(f"{n} patient(s) re-assessed")
    return 0


def cmd_reminders(args: argparse.Namespace) -> int:
    """Send the blood-test reminders due today (run daily, after `azaguard refresh`): each once."""
    from azaguard import service
    from azaguard.notify import ConfigError, ReminderConfig

    try:
        config = ReminderConfig.from_env()
        if not args.dry_run and "email" in config.channel_names and not (config.smtp_host and config.smtp_from):
            raise ConfigError("set AZAGUARD_SMTP_HOST and AZAGUARD_SMTP_FROM to send e-mail reminders")
        run = service.send_reminders(_db(args), config, _as_of(args.as_of), dry_run=args.dry_run)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    what = f"{run.patients} patient(s): {run.due} test(s) falling due, {run.overdue} overdue"
    if run.dry_run:
        print(f"reminders as of {run.as_of} (dry run, nothing sent): would remind {what}")
    else:
        print(f"reminders as of {run.as_of}: {what}; {run.sent} sent, {run.failed} failed, {run.skipped} skipped")
    return 0


def cmd_letters(args: argparse.Namespace) -> int:
    """`letters --gp-this-month --as USER [--out DIR]`: a GP letter (PDF, stored with the patient's
    documents) for each patient moved to GP care this month who has none since the move."""
    from sqlalchemy import select

    from azaguard import service
    from azaguard.deps import Settings
    from azaguard.knowledge import load_knowledge
    from azaguard.service_models import ClinicContact
    from azaguard.store import models as m

    if not args.gp_this_month:
        raise UsageError("say which letters to write: --gp-this-month")
    settings = Settings(clinic_name=args.clinic_name) if args.clinic_name else Settings()
    contact = ClinicContact(settings.clinic_name, settings.clinic_phone, settings.out_of_hours)
    with _db(args).session() as s:
        user = s.scalar(select(m.User).where(m.User.username == args.as_user, m.User.active.is_(True)))
        if user is None:
            raise UsageError(f"no active user '{args.as_user}' (the letters' author: a clinician or admin)")
        who = service.principal_of(user)
        try:
            done = service.gp_letters_batch(s, load_knowledge(), who, contact, "cli")
        except service.Denied as exc:
            raise UsageError(str(exc)) from None
        files = [service.get_document(s, who, d.id, "cli") for d in done.made] if args.out else []
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for f in files:
            (args.out / f.filename).write_bytes(f.content)
    where = f" in {args.out}" if args.out else ""
    print(
        f"GP letters for {done.month}: {len(done.made)} written{where}, {len(done.already_written)} already written "
        f"({done.transferred} patient(s) moved to GP care)"
    )
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
    p.add_argument("--clinic-name", default=None, help="the clinic named on the pages (default: AZAGUARD_CLINIC_NAME)")
    p.add_argument(
        "--workers", type=int, default=1, help="server processes (default 1; one per CPU core for a busy clinic)"
    )
    p.add_argument("--mllp-port", type=int, help="also run the HL7 v2 MLLP lab feed on this port (see: listen)")
    p.add_argument("--mllp-host", help="address for the MLLP lab feed (default: --host)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("listen", help="receive lab results over HL7 v2 MLLP (ACK per message) until stopped")
    p.add_argument("--mllp-port", type=int, required=True, help="TCP port (2575 is the registered HL7 port)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--max-frame", type=int, default=4 * 1024 * 1024, help="largest frame in bytes (default 4 MiB)")
    p.add_argument(
        "--store-timeout", type=float, default=60.0, help="seconds a message waits for a busy database before AR"
    )
    p.add_argument("--database", help=db_help)
    p.set_defaults(func=cmd_listen)

    p = sub.add_parser("synth", help="write a synthetic clinic and demo users into an empty database")
    p.add_argument("--database", help=db_help)
    p.add_argument("--patients", type=int, default=240)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("import", help="import FHIR Bundles/NDJSON, HL7 v2 ORU^R01, CSV files or PharmCAT reports")
    p.add_argument("paths", nargs="+", help="files or folders")
    p.add_argument("--format", choices=("fhir", "ndjson", "hl7v2", "csv", "pharmcat"), help="default: detected")
    p.add_argument("--patient", help="the patient identifier a PharmCAT report is for (a report names only a sample)")
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

    p = sub.add_parser("reminders", help="e-mail patients whose blood test falls due soon or is overdue (run daily)")
    p.add_argument("--as-of", help="the day to send for, YYYY-MM-DD (default: today)")
    p.add_argument("--dry-run", action="store_true", help="count what would be sent; send and record nothing")
    p.add_argument("--database", help=db_help)
    p.set_defaults(func=cmd_reminders)

    p = sub.add_parser("letters", help="write the GP letters of everyone moved to GP care this month (PDF)")
    p.add_argument("--gp-this-month", action="store_true", help="patients moved from the specialist team to the GP")
    p.add_argument("--as", dest="as_user", required=True, metavar="USER", help="the letters' author (clinician)")
    p.add_argument("--out", type=Path, help="also write each new letter's PDF into this folder")
    p.add_argument("--clinic-name", help="the clinic named in the letters")
    p.add_argument("--database", help=db_help)
    p.set_defaults(func=cmd_letters)

    user = sub.add_parser("user", help="manage users").add_subparsers(dest="user_command", required=True)
    p = user.add_parser("add", help="add a user (clinician, patient bound to one record, or admin)")
    p.add_argument("username")
    p.add_argument("--role", required=True, choices=("clinician", "patient", "admin"))
    p.add_argument("--patient", help="the patient identifier a patient user may see")
    p.add_argument("--name", help="display name")
    p.add_argument("--password", help="default: AZAGUARD_PASSWORD or prompt")
    p.add_argument("--database", help=db_help)
    p.set_defaults(func=cmd_user_add)

    smart_user = sub.add_parser("smart-user", help="link EHR users (SMART launch) to azaguard users")
    p = smart_user.add_subparsers(dest="smart_command", required=True).add_parser(
        "add", help="open azaguard as USERNAME when the EHR at ISS launches it for FHIR_USER"
    )
    p.add_argument("--iss", required=True, help="the EHR's FHIR base URL (the launch's iss)")
    p.add_argument("--fhir-user", required=True, help="the id_token's fhirUser, e.g. Practitioner/123")
    p.add_argument("--username", required=True, help="an existing azaguard user (clinician or admin)")
    p.add_argument("--database", help=db_help)
    p.set_defaults(func=cmd_smart_user_add)

    p = sub.add_parser(
        "token", help="create an API bearer token for a user (or: token --list [USER], token revoke --id N)"
    )
    p.add_argument("username", nargs="?", help="the user, or 'revoke'")
    p.add_argument("--label", default="cli")
    p.add_argument("--days", type=int, help="expiry in days, 1-365 (default: 30)")
    p.add_argument("--list", action="store_true", help="list tokens (of USER, or all)")
    p.add_argument("--id", type=int, help="with 'revoke': the token id to revoke")
    p.add_argument("--database", help=db_help)
    p.set_defaults(func=cmd_token)

    cds = sub.add_parser("cds-client", help="register the EHRs (issuer + JWKS) allowed to call the CDS Hooks services")
    cds_sub = cds.add_subparsers(dest="cds_command", required=True)
    p = cds_sub.add_parser("add", help="register (or update) an EHR's issuer and the keys its JWTs are signed with")
    p.add_argument(
        "--iss", required=True, help="the EHR's issuer (the JWT's iss claim), e.g. https://sandbox.cds-hooks.org"
    )
    keys = p.add_mutually_exclusive_group(required=True)
    keys.add_argument("--jwks-file", help="a JWK Set file of the EHR's public keys (pinned)")
    keys.add_argument("--jwks-url", help="the EHR's JWKS URL (fetched, cached for 5 minutes)")
    p.add_argument("--jku", action="append", default=[], help="a jku URL the EHR may name in a token (repeatable)")
    p.add_argument(
        "--fhir-server",
        action="append",
        default=[],
        help="a FHIR server azaguard may read for this EHR when prefetch is missing (repeatable)",
    )
    p.add_argument("--database", help=db_help)
    p.set_defaults(func=cmd_cds_client)
    p = cds_sub.add_parser("list", help="list registered EHRs")
    p.add_argument("--database", help=db_help)
    p.set_defaults(func=cmd_cds_client)
    p = cds_sub.add_parser("remove", help="stop accepting an EHR's tokens")
    p.add_argument("--iss", required=True)
    p.add_argument("--database", help=db_help)
    p.set_defaults(func=cmd_cds_client)

    p = sub.add_parser("guide", help="print the patient guide (the seed article, corrected and cited)")
    p.add_argument("--sources", action="store_true", help="print the source of each section")
    p.set_defaults(func=cmd_guide)

    p = sub.add_parser("knowledge", help="validate the knowledge base (and a local protocol) and show its version")
    p.add_argument("--protocol", type=Path, help="local protocol TOML to validate and merge")
    p.set_defaults(func=cmd_knowledge)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from azaguard.knowledge import KnowledgeError

    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits 2 with a usage line on bad options
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except KnowledgeError as exc:  # a knowledge file or setting (AZAGUARD_HOLIDAYS) that cannot be used
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # last line of defence: one clear line, never a traceback
        if os.environ.get("AZAGUARD_DEBUG"):
            raise
        from azaguard.notify import ConfigError

        if isinstance(exc, ConfigError):  # AZAGUARD_SMTP_* / AZAGUARD_REMINDER_* settings (e.g. at `serve`)
            print(f"error: {exc}", file=sys.stderr)
            return 2
        from azaguard.store.db import busy_timeout, is_busy

        if is_busy(exc):
            print(
                f"error: the database is busy: another program held its write lock for more than "
                f"{busy_timeout():.0f} s; nothing half-written was kept (an import keeps the chunks it "
                "committed: run the same command again to continue where it stopped)",
                file=sys.stderr,
            )
            return EXIT_BUSY
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
