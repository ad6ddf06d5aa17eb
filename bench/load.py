"""Load benchmark: the demo clinic behind a real server, many clients at once, with and without a big import.

For each database (SQLite file, PostgreSQL) this builds the demo clinic (`azaguard serve --demo`'s
synthetic clinic), starts `azaguard serve` on 127.0.0.1 in its own process, and drives 10 / 50 /
100 concurrent clients for --seconds each. Every client loops over a mix of what a clinic does:

  reads   web worklist page, web patient page, API worklist, patient, observations, findings,
          assessment
  writes  API lab result, web lab-result form, API symptom report, API review of an open finding

then, with 50 clients, the same mix runs while `azaguard import` loads a 100,000-result HL7 file in
another process (chunked: docs/operations.md), for 1,000 other patients of the hospital.

Printed per level: requests, req/s, p50/p95/p99 of every request and p95 of reads, errors (5xx,
dropped connections, timeouts) and expected refusals (4xx: a review of a finding another client
reviewed first, or one a new result resolved meanwhile; each level reviews the findings open at
its start). Targets (issue 7): 0 errors at every level; >= 200 req/s at 50 clients on SQLite
(2 cores); read p95 <= 300 ms at 50 clients; during the import 0 errors and p99 <= 1 s.

The clients (aiohttp by default, httpx with --client httpx; each client its own keep-alive
connection and cookie jar, as each clinician's browser has) run in this process on the same
machine as the server, so they take some of its CPU: the figures are a floor. aiohttp costs about
half the CPU per request that httpx does, which leaves that much more for the server; the server
and the requests are the same either way. The CPU each side used per request is printed per level.

Run: .venv/bin/python bench/load.py [--seconds 60] [--levels 10,50,100] [--databases sqlite,postgresql]
     [--import-n 100000] [--no-import] [--postgres URL] [--workers N] [--client aiohttp|httpx]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.engine import make_url

from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.synth import build_demo

ROOT = Path(__file__).resolve().parent.parent
EXE = Path(sys.executable).with_name("azaguard")
REQUEST_TIMEOUT = 30.0  # seconds; a request that takes longer counts as an error
NURSE = ("nurse", "demo-nurse")

# (name, kind, weight): what a client does next, chosen at random with these weights
MIX: list[tuple[str, str, int]] = [
    ("web worklist", "read", 12),
    ("web patient page", "read", 14),
    ("api worklist", "read", 8),
    ("api patient", "read", 10),
    ("api observations", "read", 16),
    ("api findings", "read", 14),
    ("api assessment", "read", 10),
    ("api lab result", "write", 6),
    ("web lab form", "write", 4),
    ("api symptom", "write", 3),
    ("api review", "write", 3),
]
LABS = [("wbc", 4.0, 9.5, "10*9/L"), ("neutrophils", 2.0, 6.5, "10*9/L"), ("platelets", 160, 380, "10*9/L")]
SYMPTOMS = ["rash", "nausea-vomiting", "sore-throat", "fever", "tired all the time"]


# ---------------------------------------------------------------- the clinic and its server
@dataclass
class Clinic:
    url: str  # database URL
    patients: list[int]
    identifiers: list[str]
    open_findings: list[int]


def build_clinic(url: str, patients: int) -> Clinic:
    db = Database(url)
    started = time.perf_counter()
    build_demo(db, patients)
    with db.session() as s:
        rows = s.execute(select(m.Patient.id, m.Patient.identifier).order_by(m.Patient.id)).all()
        findings = list(s.scalars(select(m.FindingRow.id).where(m.FindingRow.state == "open")))
    db.engine.dispose()
    print(f"  demo clinic: {len(rows)} patients, {len(findings)} open findings ({time.perf_counter() - started:.1f} s)")
    return Clinic(url, [r.id for r in rows], [r.identifier for r in rows], findings)


def open_findings(url: str) -> list[int]:
    db = Database(url, create=False)
    with db.session() as s:
        found = list(s.scalars(select(m.FindingRow.id).where(m.FindingRow.state == "open")))
    db.engine.dispose()
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


SERVER_PIDS: dict[str, int] = {}  # base URL -> the `azaguard serve` process


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its children (the workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat.parent.name) == pid or int(fields[1]) == pid:  # fields[1]: the parent's pid
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


@contextmanager
def server(url: str, log: Path, workers: int) -> Iterator[str]:
    """`azaguard serve` on the database, on a free loopback port, stopped afterwards."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "AZAGUARD_DATABASE_URL"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                str(EXE),
                "serve",
                "--database",
                url,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        SERVER_PIDS[base] = proc.pid
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the server stopped (exit {proc.returncode}); see {log}")
                try:
                    if httpx.get(f"{base}/login", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not start within 120 s")
                time.sleep(0.2)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@dataclass
class Credentials:
    token: str  # API bearer token (clinician)
    cookie: str  # web session cookie (clinician)
    csrf: str  # that session's CSRF token


def log_in(base: str) -> Credentials:
    with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT, follow_redirects=False) as c:
        r = c.post("/api/v1/token", json={"username": NURSE[0], "password": NURSE[1], "label": "load bench"})
        r.raise_for_status()
        token = r.json()["token"]
        page = c.get("/login")
        login_csrf = re.search(r'name="login_csrf" value="([^"]+)"', page.text)
        assert login_csrf, "no login form"
        r = c.post("/login", data={"username": NURSE[0], "password": NURSE[1], "login_csrf": login_csrf.group(1)})
        cookie = r.cookies.get("azaguard_session") or c.cookies.get("azaguard_session")
        assert r.status_code == 303 and cookie, (r.status_code, r.text[:200])
        page = c.get("/worklist", cookies={"azaguard_session": cookie})
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf, "no CSRF token on the worklist page"
        return Credentials(token, cookie, csrf.group(1))


# ---------------------------------------------------------------- the clients
@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)  # seconds, every request
    reads: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)  # 5xx, dropped connections, timeouts
    refused: Counter[str] = field(default_factory=Counter)  # 4xx (expected: e.g. a finding reviewed already)
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


class Workload:
    def __init__(self, clinic: Clinic, creds: Credentials, seed: int) -> None:
        self.clinic, self.creds = clinic, creds
        self.rng = random.Random(seed)
        self.findings = open_findings(clinic.url)  # still open now: earlier levels reviewed some
        self.rng.shuffle(self.findings)
        self.names = [n for n, _, _ in MIX]
        self.weights = [w for _, _, w in MIX]
        self.kinds = {n: k for n, k, _ in MIX}

    def next(self) -> tuple[str, str, str, dict[str, Any]]:
        """(operation, method, path, httpx keyword arguments)."""
        rng = self.rng
        op = rng.choices(self.names, self.weights)[0]
        pid = rng.choice(self.clinic.patients)
        api = {"Authorization": f"Bearer {self.creds.token}"}
        web = {"Cookie": f"azaguard_session={self.creds.cookie}"}
        day = (date.today() - timedelta(days=rng.randint(0, 20))).isoformat()
        if op == "api review" and not self.findings:
            op = "api findings"
        if op == "web worklist":
            return op, "GET", "/worklist", {"headers": web}
        if op == "web patient page":
            return op, "GET", f"/patients/{pid}", {"headers": web}
        if op == "api worklist":
            return op, "GET", "/api/v1/worklist", {"headers": api, "params": {"limit": 50}}
        if op == "api patient":
            return op, "GET", f"/api/v1/patients/{pid}", {"headers": api}
        if op == "api observations":
            return op, "GET", f"/api/v1/patients/{pid}/observations", {"headers": api}
        if op == "api findings":
            return op, "GET", f"/api/v1/patients/{pid}/findings", {"headers": api}
        if op == "api assessment":
            return op, "GET", f"/api/v1/patients/{pid}/assessment", {"headers": api}
        analyte, low, high, unit = rng.choice(LABS)
        value = round(rng.uniform(low, high), 1)
        if op == "api lab result":
            body = {"analyte": analyte, "value": value, "unit": unit, "date": day}
            return op, "POST", f"/api/v1/patients/{pid}/observations", {"headers": api, "json": body}
        if op == "web lab form":
            form = {"analyte": analyte, "value": str(value), "unit": unit, "date": day, "csrf": self.creds.csrf}
            return op, "POST", f"/patients/{pid}/lab", {"headers": web, "data": form}
        if op == "api symptom":
            body = {"symptom": rng.choice(SYMPTOMS), "date": date.today().isoformat()}
            return op, "POST", f"/api/v1/patients/{pid}/symptoms", {"headers": api, "json": body}
        fid = self.findings.pop()
        body = {"outcome": "repeat-test-booked", "note": "load bench"}
        return op, "POST", f"/api/v1/findings/{fid}/reviews", {"headers": api, "json": body}


def record(stats: Stats, work: Workload, op: str, status: int, took: float) -> None:
    stats.latencies.append(took)
    if work.kinds[op] == "read":
        stats.reads.append(took)
    if status >= 500:
        stats.errors[f"{op}: {status}"] += 1
    elif 400 <= status < 500:
        stats.refused[f"{op}: {status}"] += 1


CLIENT = "aiohttp"  # or "httpx" (--client)


async def drive(base: str, work: Workload, clients: int, until: Callable[[], bool], stats: Stats) -> None:
    """`clients` clients, each with its own keep-alive connection and cookie jar (as each
    clinician's browser or integration has its own), each sending its next request when the last
    one is answered (its whole body read)."""
    if CLIENT == "httpx":
        await drive_httpx(base, work, clients, until, stats)
        return
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)

    async def client() -> None:
        connector = aiohttp.TCPConnector(limit=1)
        jar = aiohttp.CookieJar(unsafe=True)  # unsafe: keeps cookies of an IP address (127.0.0.1)
        async with aiohttp.ClientSession(base, connector=connector, cookie_jar=jar, timeout=timeout) as http:
            while not until():
                op, method, path, kw = work.next()
                started = time.perf_counter()
                try:
                    async with http.request(method, path, allow_redirects=False, **kw) as r:
                        await r.read()
                        status = r.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status = 0
                    stats.errors[f"{op}: {type(exc).__name__}"] += 1
                record(stats, work, op, status, time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    stats.seconds = time.perf_counter() - started


async def drive_httpx(base: str, work: Workload, clients: int, until: Callable[[], bool], stats: Stats) -> None:
    """As `drive`, with httpx (one pool of one connection per client: one shared pool of many
    connections costs httpx more CPU than the server it measures)."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    timeout = httpx.Timeout(REQUEST_TIMEOUT)

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout, follow_redirects=False) as http:
            while not until():
                op, method, path, kw = work.next()
                started = time.perf_counter()
                try:
                    r = await http.request(method, path, **kw)
                    status = r.status_code
                except (httpx.TransportError, httpx.TimeoutException) as exc:
                    status = 0
                    stats.errors[f"{op}: {type(exc).__name__}"] += 1
                record(stats, work, op, status, time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    stats.seconds = time.perf_counter() - started


def run_level(base: str, clinic: Clinic, creds: Credentials, clients: int, seconds: float, seed: int) -> Stats:
    stats = Stats()
    work = Workload(clinic, creds, seed)
    deadline = time.monotonic() + seconds
    asyncio.run(drive(base, work, clients, lambda: time.monotonic() >= deadline, stats))
    return stats


# ---------------------------------------------------------------- the import running alongside
def hl7_for(identifiers: list[str], n: int) -> str:
    """n lab results (10 per visit, a visit per patient per week, ending today) as HL7 v2 ORU^R01."""
    sys.path.insert(0, str(ROOT / "bench"))
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_import", ROOT / "bench" / "import.py")
    assert spec and spec.loader
    bench_import = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_import)
    tests = bench_import.TESTS
    visits = -(-n // len(tests))
    weeks = -(-visits // len(identifiers))
    first = date.today() - timedelta(days=7 * weeks)
    run = uuid.uuid4().hex[:6].upper()
    out: list[str] = []
    done = 0
    for visit in range(visits):
        who = identifiers[visit % len(identifiers)]
        day = (first + timedelta(days=7 * (visit // len(identifiers)))).strftime("%Y%m%d")
        order = f"LOAD{run}{visit:08d}"
        segs = [
            f"MSH|^~\\&|WINPATH|LOAD-LAB|AZAGUARD|NEURO|{day}1015||ORU^R01^ORU_R01|L{run}{visit:08d}|P|2.5.1",
            f"PID|1||{who}^^^NMC^MR||LOAD^PATIENT||19700101|F",
            f"ORC|RE|ORD{order}^EPR|{order}^WINPATH||CM",
            f"OBR|1|ORD{order}^EPR|{order}^WINPATH|58410-2^CBC panel^LN|||{day}0830",
        ]
        for k, (loinc, label, value, unit, rng, _) in enumerate(tests[: min(len(tests), n - done)], 1):
            segs.append(f"OBX|{k}|NM|{loinc}^{label}^LN||{value(done + k)}|{unit}|{rng}|N|||F|||{day}0830")
        done += len(segs) - 4
        out.append("\r".join(segs))
    return "\r".join(out) + "\r"


IMPORT_PATIENTS = 1_000


def register_import_patients(url: str) -> list[str]:
    identifiers = [f"LOADIMP{i:06d}" for i in range(IMPORT_PATIENTS)]
    db = Database(url, create=False)
    stamp = datetime.now().replace(microsecond=0)
    with db.session() as s:
        rows = [{"identifier": ident, "name": f"Feed {ident}", "created_at": stamp} for ident in identifiers]
        s.execute(insert(m.Patient), rows)
    db.engine.dispose()
    return identifiers


def run_import_phase(
    base: str, clinic: Clinic, creds: Credentials, clients: int, n: int, folder: Path, min_seconds: float
) -> tuple[Stats, float, str]:
    """The mix with `clients` clients while `azaguard import` loads n results; stats cover the import.

    The results are for IMPORT_PATIENTS other patients of the hospital (registered first), as a
    laboratory feed brings them: the clinic's own patients keep the size they had, so the figures
    show what the import costs the clinic while it runs, not what 400 more results per patient
    would cost every later page."""
    path = folder / "load-import.hl7"
    path.write_text(hl7_for(register_import_patients(clinic.url), n), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "AZAGUARD_DATABASE_URL"}
    stats = Stats()
    work = Workload(clinic, creds, seed=99)
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(EXE), "import", str(path), "--database", clinic.url, "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    # The mix runs as long as the import (at least min_seconds, at most 15 minutes).
    hard_stop = started + 900

    def until() -> bool:
        now = time.monotonic()
        return now >= hard_stop or (proc.poll() is not None and now - started >= min_seconds)

    asyncio.run(drive(base, work, clients, until, stats))
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - started
    summary = (
        (out.strip().splitlines() or [""])[-1] if proc.returncode == 0 else f"exit {proc.returncode}: {err.strip()}"
    )
    return stats, took, summary


# ---------------------------------------------------------------- databases
@contextmanager
def sqlite_url(folder: Path) -> Iterator[str]:
    yield f"sqlite:///{folder / 'load.db'}"


@contextmanager
def postgres_url(given: str | None) -> Iterator[str]:
    """A scratch database on the given server, or on a throwaway cluster (the test suite's starter)."""
    if given:
        admin = given
        gen = None
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from dbfixtures import _start_cluster  # type: ignore[import-not-found]

        gen = _start_cluster()
        admin = next(gen)
    name = f"azaguard_load_{uuid.uuid4().hex[:8]}"
    engine = create_engine(make_url(admin).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()
        if gen is not None:
            gen.close()


# ---------------------------------------------------------------- report
HEADER = (
    f"{'database':<11}{'phase':<17}{'clients':>7}{'requests':>10}{'req/s':>8}{'p50 ms':>8}{'p95 ms':>8}"
    f"{'p99 ms':>8}{'read p95':>9}{'errors':>8}{'4xx':>6}"
)


def row(database: str, phase: str, clients: int, st: Stats) -> str:
    rate = st.requests / st.seconds if st.seconds else 0.0
    return (
        f"{database:<11}{phase:<17}{clients:>7}{st.requests:>10}{rate:>8.0f}{pct(st.latencies, 50):>8.0f}"
        f"{pct(st.latencies, 95):>8.0f}{pct(st.latencies, 99):>8.0f}{pct(st.reads, 95):>9.0f}"
        f"{sum(st.errors.values()):>8}{sum(st.refused.values()):>6}"
    )


def bench_database(label: str, url: str, args: argparse.Namespace, folder: Path) -> list[str]:
    print(f"{label}: building the demo clinic ({args.patients} patients)", flush=True)
    clinic = build_clinic(url, args.patients)
    lines: list[str] = []
    log = folder / f"server-{label}.log"
    with server(url, log, args.workers) as base:
        creds = log_in(base)
        run_level(base, clinic, creds, 10, min(3.0, args.seconds), seed=1)  # warm-up, not reported
        for level in args.levels:
            server_cpu, client_cpu = tree_cpu(SERVER_PIDS[base]), time.process_time()
            st = run_level(base, clinic, creds, level, args.seconds, seed=level)
            server_cpu, client_cpu = tree_cpu(SERVER_PIDS[base]) - server_cpu, time.process_time() - client_cpu
            lines.append(row(label, "mix", level, st))
            print(lines[-1], flush=True)
            per = 1000 / max(st.requests, 1)
            print(
                f"{'':<11}  CPU per request: server {server_cpu * per:.1f} ms, clients {client_cpu * per:.1f} ms "
                f"({server_cpu / st.seconds:.2f} + {client_cpu / st.seconds:.2f} of {os.cpu_count()} cores busy)"
            )
            for what, n in (st.errors + Counter()).most_common(5):
                print(f"{'':<11}  error  {n} x {what}")
            for what, n in st.refused.most_common(3):
                print(f"{'':<11}  4xx    {n} x {what}")
        if not args.no_import:
            st, took, summary = run_import_phase(
                base, clinic, creds, args.import_clients, args.import_n, folder, min(args.seconds, 10)
            )
            lines.append(row(label, f"mix + {args.import_n // 1000}k import", args.import_clients, st))
            print(lines[-1], flush=True)
            print(f"{'':<11}  import of {args.import_n:,} results took {took:.1f} s: {summary}")
            for what, n in st.errors.most_common(5):
                print(f"{'':<11}  error  {n} x {what}")
    unhandled = [ln for ln in log.read_text(errors="replace").splitlines() if "unhandled" in ln]
    if unhandled:
        print(f"{'':<11}  server log: {len(unhandled)} unhandled errors, e.g. {unhandled[0][:160]}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60, help="seconds per level (default 60)")
    ap.add_argument("--levels", default="10,50,100", help="concurrent clients per level (default 10,50,100)")
    ap.add_argument("--databases", default="sqlite,postgresql")
    ap.add_argument("--postgres", metavar="URL", help="PostgreSQL server to use (a scratch database is made)")
    ap.add_argument("--patients", type=int, default=240, help="demo clinic size (default 240, as serve --demo)")
    ap.add_argument("--import-n", type=int, default=100_000, help="results in the import phase (default 100,000)")
    ap.add_argument("--import-clients", type=int, default=50)
    ap.add_argument("--no-import", action="store_true", help="skip the import phase")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="server processes (default: one per CPU)")
    ap.add_argument("--client", choices=("aiohttp", "httpx"), default="aiohttp", help="the clients' HTTP library")
    args = ap.parse_args()
    global CLIENT
    CLIENT = args.client
    args.levels = [int(x) for x in args.levels.split(",") if x.strip()]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server and cluster we started

    mix = ", ".join(f"{n} {w}%" for n, _, w in MIX)
    print(
        f"mix: {mix}\n{args.seconds:.0f} s per level; {os.cpu_count()} CPUs; `azaguard serve --workers "
        f"{args.workers}`; {args.client} clients in this process\n",
        flush=True,
    )
    results: list[str] = []
    with tempfile.TemporaryDirectory(prefix="azaguard-load-") as tmp:
        folder = Path(tmp)
        for label in args.databases.split(","):
            try:
                if label == "sqlite":
                    with sqlite_url(folder) as url:
                        results += bench_database(label, url, args, folder)
                elif label == "postgresql":
                    with postgres_url(args.postgres) as url:
                        results += bench_database(label, url, args, folder)
                else:
                    raise SystemExit(f"unknown database {label}")
            except RuntimeError as exc:
                print(f"{label}: skipped ({exc})")
    print()
    print(HEADER)
    for line in results:
        print(line)
    print(
        "\ntargets: 0 errors; >= 200 req/s at 50 clients (SQLite); read p95 <= 300 ms at 50 clients; "
        "during the import 0 errors and p99 <= 1000 ms"
    )


if __name__ == "__main__":
    main()
