"""CPU per request: the load bench's request mix, one request at a time, inside this process.

bench/load.py measures throughput on a real server, which on a shared 2-core machine depends on
whatever else runs. This measures what depends on it much less: the server's CPU time per request,
by type. It builds the demo clinic on a SQLite file (or copies one given with --clinic), signs in as
the demo nurse, and sends bench/load.py's mix (same operations, weights and request bodies: its
`Workload`) to the application through httpx's ASGI transport, one request at a time.

- The CPU of a request is `time.process_time()` around the application (the ASGI call, every
  middleware included, every thread of the process counted; not httpx's client side). uvicorn's
  HTTP parsing and the event loop's socket work are not included: on a real server add about
  0.5 ms a request, and more when many requests compete for Python's GIL.
- By default AnyIO's worker-thread hop (FastAPI's sync endpoints and dependencies) is replaced by a
  direct call, and the audit group commit writes in the calling thread, so every line of server
  code runs in this thread and cProfile sees it. With --threads both stay as served: the figures
  then include what the hand-overs between threads cost (compare the two to see it).

Prints, per request type: count, mean, p50 and p90 CPU ms, mean wall ms and the statuses, and the
mix's mean weighted as bench/load.py weighs it; with --profile, the functions with the most own and
most cumulative time, the share of own time by library, and Python function calls per request
(unlike the CPU figures, that count does not move with the machine's other load).

Run: .venv/bin/python bench/profile_requests.py [--n 2000] [--threads] [--profile] [--top 40]
     [--only "web patient page,api findings"] [--clinic /tmp/clinic.db]
     (--clinic: a demo clinic built there the first time, copied - never changed - afterwards)
To compare with another version of the code: PYTHONPATH=<its checkout> .venv/bin/python bench/profile_requests.py
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib.util
import pstats
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx

from azaguard.app import Settings, create_app
from azaguard.knowledge import load_knowledge
from azaguard.store import db as store_db
from azaguard.store.db import Database
from azaguard.synth import build_demo

ROOT = Path(__file__).resolve().parent.parent


def _load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_load", ROOT / "bench" / "load.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_load"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


load = _load_bench()


async def _run_sync_here(func: Any, *args: Any, **_: Any) -> Any:
    """anyio.to_thread.run_sync without the thread: the profiler sees the work."""
    return func(*args)


def _group_commit_here(self: Any, rows: list[Any]) -> None:
    """The audit group commit in the calling thread (one request's rows per transaction)."""
    self._insert([store_db._Handover(rows)])


class CpuMeter:
    """ASGI wrapper recording the process CPU time of each request inside the application."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.last = 0.0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        started = time.process_time()
        try:
            await self.app(scope, receive, send)
        finally:
            self.last = time.process_time() - started


async def log_in(c: httpx.AsyncClient) -> Any:
    r = await c.post("/api/v1/token", json={"username": "nurse", "password": "demo-nurse", "label": "profile"})
    r.raise_for_status()
    token = r.json()["token"]
    page = await c.get("/login")
    login_csrf = re.search(r'name="login_csrf" value="([^"]+)"', page.text)
    assert login_csrf, "no login form"
    r = await c.post("/login", data={"username": "nurse", "password": "demo-nurse", "login_csrf": login_csrf[1]})
    cookie = r.cookies.get("azaguard_session") or c.cookies.get("azaguard_session")
    assert r.status_code == 303 and cookie, (r.status_code, r.text[:200])
    c.cookies.clear()  # the workload sends the cookie itself, as bench/load.py does
    page = await c.get("/worklist", headers={"Cookie": f"azaguard_session={cookie}"})
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf, "no CSRF token on the worklist page"
    return load.Credentials(token, cookie, csrf[1])


async def run(args: argparse.Namespace, url: str, clinic: Any) -> None:
    if not args.threads:
        anyio.to_thread.run_sync = _run_sync_here  # type: ignore[assignment]
        store_db._GroupCommit.write = _group_commit_here  # type: ignore[method-assign]
    db = Database(url, create=False)
    meter = CpuMeter(create_app(db, load_knowledge(), Settings()))
    cpu: dict[str, list[float]] = defaultdict(list)
    wall: dict[str, list[float]] = defaultdict(list)
    status: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    prof = cProfile.Profile() if args.profile else None
    async with httpx.AsyncClient(transport=httpx.ASGITransport(meter), base_url="http://bench") as c:
        creds = await log_in(c)
        work = load.Workload(clinic, creds, seed=7)
        only = {o.strip() for o in args.only.split(",")} if args.only else None
        for i in range(args.warmup + args.n):
            op, method, path, kw = work.next()
            if only and op not in only:
                continue
            measured = i >= args.warmup
            if prof and measured:
                prof.enable()
            started = time.perf_counter()
            r = await c.request(method, path, **kw)
            took = time.perf_counter() - started
            if prof and measured:
                prof.disable()
            if r.status_code >= 500:
                raise RuntimeError(f"{op}: {r.status_code} {r.text[:200]}")
            if measured:
                cpu[op].append(meter.last)
                wall[op].append(took)
                status[op][r.status_code] += 1
    db.engine.dispose()

    weights = {n: w for n, _, w in load.MIX}
    print(f"\n{'request':<20}{'n':>6}{'CPU ms':>9}{'p50':>8}{'p90':>8}{'wall ms':>9}  statuses")
    total_w = weighted = 0.0
    for name, _, _ in load.MIX:
        if name not in cpu:
            continue
        values = sorted(cpu[name])
        mean = statistics.fmean(values)
        total_w += weights[name]
        weighted += weights[name] * mean
        codes = " ".join(f"{k}:{v}" for k, v in sorted(status[name].items()))
        print(
            f"{name:<20}{len(values):>6}{mean * 1000:>9.2f}{values[len(values) // 2] * 1000:>8.2f}"
            f"{values[int(len(values) * 0.9)] * 1000:>8.2f}{statistics.fmean(wall[name]) * 1000:>9.2f}  {codes}"
        )
    if total_w:
        print(f"{'mix (weighted)':<20}{'':>6}{weighted / total_w * 1000:>9.2f}")
    if prof is not None:
        report(prof, args.top)
        calls = pstats.Stats(prof).total_calls  # type: ignore[attr-defined]
        measured = sum(len(v) for v in cpu.values())
        print(f"Python function calls per request (server and client side): {calls / max(measured, 1):,.0f}")


def _area(filename: str) -> str:
    for key in ("sqlalchemy", "jinja2", "pydantic_core", "pydantic", "fastapi", "starlette", "httpx", "anyio"):
        if f"/{key}/" in filename:
            return key
    if "/azaguard/" in filename:
        part = filename.split("/azaguard/", 1)[1]
        return "azaguard/" + part.split("/", 1)[0] if "/" in part else "azaguard/" + part
    if filename.startswith("<") or filename == "~":
        return "builtins (sqlite3, C)"
    if "/templates/" in filename or filename.endswith(".html"):
        return "jinja2 templates"
    return "other: " + Path(filename).name


def report(prof: cProfile.Profile, top: int) -> None:
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    by_area: dict[str, float] = defaultdict(float)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, _name), (_cc, _nc, tt, _ct, _callers) in raw.items():
        by_area[_area(filename)] += tt
    total = sum(by_area.values()) or 1.0
    print("own time by library")
    for area, t in sorted(by_area.items(), key=lambda kv: -kv[1])[:25]:
        print(f"  {area:<40}{t:>8.2f} s {100 * t / total:>5.1f} %")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="requests measured (default 2000)")
    ap.add_argument("--warmup", type=int, default=200, help="requests first, not measured (default 200)")
    ap.add_argument("--patients", type=int, default=240)
    ap.add_argument("--profile", action="store_true", help="cProfile the measured requests (slower)")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--only", default="", help="comma-separated request types to send (others are skipped)")
    ap.add_argument(
        "--threads",
        action="store_true",
        help="keep the worker threads and group commit (as served; cProfile misses them)",
    )
    ap.add_argument("--clinic", type=Path, help="a demo clinic database to start from (built there if missing)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="azaguard-profile-") as tmp:
        path = Path(tmp) / "clinic.db"
        if args.clinic and args.clinic.exists():
            shutil.copy(args.clinic, path)
        else:
            built = Database(f"sqlite:///{path}")
            build_demo(built, args.patients)
            built.engine.dispose()  # the last connection closed: the WAL is checkpointed into the file
            if args.clinic:
                shutil.copy(path, args.clinic)
        url = f"sqlite:///{path}"
        clinic = load.Clinic(url, [], [], [])
        probe = Database(url, create=False)
        with probe.session() as s:
            from sqlalchemy import select

            from azaguard.store import models as m

            clinic.patients = list(s.scalars(select(m.Patient.id).order_by(m.Patient.id)))
        probe.engine.dispose()
        asyncio.run(run(args, url, clinic))


if __name__ == "__main__":
    main()
