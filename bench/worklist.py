"""Benchmark: the worklist of a 10,000-patient clinic through a real uvicorn server.

Builds a synthetic clinic (azaguard.synth.generate + load, then every patient assessed), starts
the app with uvicorn on a free local port, logs in as a clinician and times sequential requests:
the worklist page (GET /worklist, HTML, as a browser would ask for it), two filtered pages, and
the REST API (GET /api/v1/worklist, JSON, bearer token). An in-process breakdown (the worklist
query alone, the same query plus the page template) shows where the time goes.
Target (issue #5): p95 <= 300 ms for the page and the API.

Run:  .venv/bin/python bench/worklist.py                                   (temporary SQLite file)
      .venv/bin/python bench/worklist.py --database postgresql+psycopg://user@host/empty_db
      .venv/bin/python bench/worklist.py --database sqlite:///clinic.db --reuse   (skip the build)
"""

from __future__ import annotations

import argparse
import math
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select, text

from azaguard import auth
from azaguard import worklist as wl
from azaguard.app import Settings, create_app
from azaguard.knowledge import load_knowledge
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.synth import generate, load

USER, PASSWORD = "bench-nurse", "bench-nurse-password"
TARGET_MS = 300.0


def say(msg: str) -> None:
    print(msg, flush=True)


def build(db: Database, n: int) -> dict[str, float]:
    """The synthetic clinic in one transaction; returns the seconds each phase took."""
    kb = load_knowledge()
    took: dict[str, float] = {}
    t0 = time.perf_counter()
    clinic = generate(n)
    took["generate"] = time.perf_counter() - t0
    with db.session() as s:
        if (s.scalar(select(func.count()).select_from(m.Patient)) or 0) > 0:
            raise SystemExit("the database already has patients: give an empty database, or --reuse")
        t = time.perf_counter()
        load(s, clinic)
        if db.is_postgres:
            s.execute(text("SELECT setval(pg_get_serial_sequence('patients', 'id'), (SELECT max(id) FROM patients))"))
        took["load"] = time.perf_counter() - t
        t = time.perf_counter()
        ids = [p["id"] for p in clinic.patients]
        refresh_many = getattr(wl, "refresh_many", None)
        if refresh_many is not None:  # batched reads and writes
            refresh_many(s, kb, ids)
        else:
            for pid in ids:
                wl.refresh_patient(s, kb, pid)
        took["assess"] = time.perf_counter() - t
        auth.create_user(s, USER, PASSWORD, "clinician", display_name="Bench Nurse")
        t = time.perf_counter()
    took["commit"] = time.perf_counter() - t
    took["total"] = time.perf_counter() - t0
    took["observations"] = len(clinic.observations)
    return took


def ensure_user(db: Database) -> None:
    with db.session() as s:
        if s.scalar(select(m.User.id).where(m.User.username == USER)) is None:
            auth.create_user(s, USER, PASSWORD, "clinician", display_name="Bench Nurse")


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """uvicorn in a background thread on a free port (as tests/browser_fixtures.py does)."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def web_login(client: httpx.Client) -> None:
    client.get("/login").raise_for_status()
    token = client.cookies.get("azaguard_login_csrf")
    r = client.post("/login", data={"login_csrf": token, "username": USER, "password": PASSWORD})
    if r.status_code != 303 or "azaguard_session" not in client.cookies:
        raise SystemExit(f"web login failed: {r.status_code}")


def api_token(client: httpx.Client) -> str:
    r = client.post("/api/v1/token", json={"username": USER, "password": PASSWORD, "label": "bench"})
    r.raise_for_status()
    return str(r.json()["token"])


def timed(fn: Callable[[], httpx.Response], runs: int, warmup: int = 3) -> tuple[list[float], httpx.Response]:
    last = fn()
    for _ in range(warmup - 1):
        last = fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        last = fn()
        times.append(time.perf_counter() - t)
        if last.status_code != 200:
            raise SystemExit(f"{last.request.url} answered {last.status_code}")
    return times, last


def p95(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def report(label: str, times: list[float], extra: str = "") -> bool:
    med, high = statistics.median(times) * 1000, p95(times) * 1000
    ok = high <= TARGET_MS
    say(
        f"  {label:<34} median {med:7.1f} ms   p95 {high:7.1f} ms   max {max(times) * 1000:7.1f} ms"
        f"   n={len(times)}  {'ok' if ok else 'OVER TARGET'}{extra}"
    )
    return ok


def in_process(db: Database, runs: int) -> None:
    """Where the time goes, without HTTP: the query alone, then query + template."""
    from starlette.requests import Request

    from azaguard.service_models import Principal
    from azaguard.web.views import NEEDS, SORTS, TEMPLATES, WORKLIST_PAGE

    kb = load_knowledge()
    app = create_app(db, kb, Settings())
    scope = {"type": "http", "method": "GET", "path": "/worklist", "headers": [], "query_string": b"", "app": app}
    request = Request(scope)
    categories = sorted({f.category for f in kb.findings.values()} | {"lab", "trend", "interaction"})
    query, render = [], []
    user = Principal(0, "bench", "clinician", None, "Bench")
    with db.session() as s:
        flt = wl.WorklistFilter(limit=WORKLIST_PAGE)
        wl.worklist_with_counts(s, flt)
        for _ in range(runs):
            t = time.perf_counter()
            entries, total, counts = wl.worklist_with_counts(s, flt)  # what the page runs: rows, total, counts
            t1 = time.perf_counter()
            ctx = {"request": request, "user": user, "csrf": "", "settings": app.state.settings, "entries": entries}
            ctx |= {"knowledge_version": kb.version, "total": total, "flt": flt, "categories": categories}
            ctx |= {"indications": kb.indications, "counts": vars(counts), "needs_labels": NEEDS, "sorts": SORTS}
            ctx |= {"page": 1, "pages": 1, "first_row": 1, "last_row": len(entries), "here": "/worklist", "team": []}
            ctx |= {"link": lambda **_: "/worklist", "page_link": lambda n: f"/worklist?page={n}"}
            TEMPLATES.get_template("worklist.html").render(ctx)
            t2 = time.perf_counter()
            query.append(t1 - t)
            render.append(t2 - t1)
    say(f"  in-process worklist() query          median {statistics.median(query) * 1000:7.1f} ms   p95 "
        f"{p95(query) * 1000:7.1f} ms")  # fmt: skip
    say(f"  in-process template render (50 rows)  median {statistics.median(render) * 1000:6.1f} ms   p95 "
        f"{p95(render) * 1000:7.1f} ms")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database", help="SQLAlchemy URL of an empty database (default: a temporary SQLite file)")
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=60, help="timed requests per endpoint (default 60)")
    ap.add_argument("--reuse", action="store_true", help="the database already holds a clinic: skip the build")
    args = ap.parse_args()

    tmp = None
    url = args.database
    if not url:
        tmp = tempfile.TemporaryDirectory(prefix="azaguard-bench-")
        url = f"sqlite:///{Path(tmp.name) / 'bench.db'}"
    db = Database(url)
    say(f"database: {db.engine.dialect.name} ({db.url.split('@')[-1]})")
    if args.reuse:
        ensure_user(db)
    else:
        say(f"building a {args.patients:,}-patient clinic ...")
        took = build(db, args.patients)
        say(
            f"  clinic build {took['total']:.1f} s: generate {took['generate']:.1f} s, load {took['load']:.1f} s "
            f"({int(took['observations']):,} observations), assess every patient {took['assess']:.1f} s, "
            f"commit {took['commit']:.1f} s"
        )
    with db.session() as s:
        patients = s.scalar(select(func.count()).select_from(m.Patient)) or 0
        listed = s.scalar(select(func.count()).select_from(m.AssessmentRow).where(m.AssessmentRow.open_count > 0))
    say(f"  {patients:,} patients, {listed:,} with open findings")

    app = create_app(db, settings=Settings(clinic_name="Benchmark clinic"))
    ok = True
    with live_server(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        web_login(client)
        say(f"HTTP through uvicorn ({base}), sequential requests, after 3 warm-up requests each:")
        pages = [
            ("GET /worklist (page)", "/worklist"),
            ("GET /worklist?severity=critical", "/worklist?severity=critical"),
            ("GET /worklist?q=NMC00999 (search)", "/worklist?q=NMC00999"),
        ]
        for label, path in pages:
            times, last = timed(lambda path=path: client.get(path), args.requests)
            rows = last.text.count("<tr class=")
            ok &= report(label, times, f"  ({rows} rows, {len(last.content) // 1024} KiB)")
        token = api_token(client)
        headers = {"Authorization": f"Bearer {token}"}
        times, last = timed(lambda: client.get("/api/v1/worklist", headers=headers), args.requests)
        body = last.json()
        ok &= report(
            "GET /api/v1/worklist (JSON)",
            times,
            f"  ({len(body['entries'])} of {body['total']}, {len(last.content) // 1024} KiB)",
        )
    say("where the time goes:")
    in_process(db, min(args.requests, 30))
    say(f"target p95 <= {TARGET_MS:.0f} ms: {'met' if ok else 'NOT met'}")
    db.engine.dispose()
    if tmp is not None:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
