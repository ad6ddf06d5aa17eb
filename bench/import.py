"""Benchmark: importing lab results (HL7 v2 ORU^R01 and FHIR Bulk NDJSON) into SQLite and PostgreSQL.

Generates N observations (default 100,000) for P patients (default 1,000) who already exist in
the store, then times, per format and database:

  parse    text -> items (the format reader)
  apply    items -> rows, one transaction (pipeline.apply: duplicate/correction checks, inserts)
  replay   the same batch again (every record is a duplicate: the idempotency check alone)

and prints observations per second. Re-assessment of the touched patients (done by
service.import_parsed after apply) is not included; --assess adds it as a separate figure.
Target (issue): >= 20,000 observations/s into SQLite.

PostgreSQL: --postgres URL uses that server (a scratch database is created and dropped);
otherwise a throwaway cluster is started from the Debian binaries like the test suite does;
--no-postgres skips it.

Run: .venv/bin/python bench/import.py [--n 100000] [--patients 1000] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import resource
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from azaguard.ingest import parse_text
from azaguard.ingest.items import Parsed
from azaguard.ingest.pipeline import apply
from azaguard.knowledge import load_knowledge
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.store.records import now

ROOT = Path(__file__).resolve().parent.parent

# (LOINC, label, value generator, unit as labs send it, reference range, panel)
TESTS: list[tuple[str, str, Callable[[int], str], str, str, str]] = [
    ("6690-2", "Leukocytes", lambda i: f"{4.0 + i % 70 / 10:.1f}", "10*9/L", "4.0-11.0", "FBC"),
    ("751-8", "Neutrophils", lambda i: f"{1500 + i % 50 * 100}", "/uL", "2000-7500", "FBC"),
    ("731-0", "Lymphocytes", lambda i: f"{0.8 + i % 30 / 10:.1f}", "x10\\S\\9/L", "1.0-4.0", "FBC"),
    ("777-3", "Platelets", lambda i: f"{140 + i % 260}", "x10^9/L", "150-400", "FBC"),
    ("718-7", "Hemoglobin", lambda i: f"{11.0 + i % 50 / 10:.1f}", "g/dL", "12.0-16.0", "FBC"),
    ("787-2", "MCV", lambda i: f"{85 + i % 25}", "fL", "80-100", "FBC"),
    ("1742-6", "ALT", lambda i: f"{10 + i % 90}", "U/L", "0-40", "LFT"),
    ("6768-6", "ALP", lambda i: f"{40 + i % 100}", "IU/L", "30-130", "LFT"),
    ("1975-2", "Bilirubin", lambda i: f"{3 + i % 20}", "umol/L", "0-21", "LFT"),
    ("2160-0", "Creatinine", lambda i: f"{0.6 + i % 8 / 10:.1f}", "mg/dL", "0.6-1.2", "renal"),
]
FHIR_UNITS = {"x10\\S\\9/L": "10*9/L", "x10^9/L": "10*9/L"}


def identifiers(patients: int) -> list[str]:
    return [f"BENCH{i:06d}" for i in range(patients)]


def visits(n: int, patients: int) -> Iterator[tuple[int, str, date, list[tuple[int, Any]]]]:
    """(visit number, patient, date, [(obs number, test)]) until n observations: one blood test per visit."""
    ids = identifiers(patients)
    start = date(2015, 1, 5)
    done = visit = 0
    while done < n:
        tests = TESTS[: min(len(TESTS), n - done)]
        who = ids[visit % patients]
        when = start + timedelta(days=7 * (visit // patients))
        yield visit, who, when, [(done + k, t) for k, t in enumerate(tests)]
        done += len(tests)
        visit += 1


def hl7_text(n: int, patients: int) -> str:
    out: list[str] = []
    for visit, who, when, tests in visits(n, patients):
        day = when.strftime("%Y%m%d")
        order = f"LAB{visit:09d}"
        segs = [
            f"MSH|^~\\&|WINPATH|BENCH-LAB|AZAGUARD|NEURO|{day}1015||ORU^R01^ORU_R01|B{visit:09d}|P|2.5.1",
            f"PID|1||{who}^^^NMC^MR||BENCH^PATIENT||19700101|F",
            "PV1|1|O|NEURO^NMC1^^NMC",
            f"ORC|RE|ORD{visit:09d}^EPR|{order}^WINPATH||CM",
            f"OBR|1|ORD{visit:09d}^EPR|{order}^WINPATH|58410-2^CBC panel^LN|||{day}0830",
        ]
        for k, (i, (loinc, label, value, unit, rng, _)) in enumerate(tests, 1):
            flag = "N" if i % 5 else "H"
            segs.append(f"OBX|{k}|NM|{loinc}^{label}^LN||{value(i)}|{unit}|{rng}|{flag}|||F|||{day}0830")
        out.append("\r".join(segs))
    return "\r".join(out) + "\r"


def ndjson_text(n: int, patients: int) -> str:
    lines: list[str] = []
    for visit, who, when, tests in visits(n, patients):
        for i, (loinc, label, value, unit, rng, _) in tests:
            unit = FHIR_UNITS.get(unit, unit)
            low, high = rng.split("-")
            obs = {
                "resourceType": "Observation",
                "id": f"obs-{visit}-{i}",
                "status": "final",
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                "code": "laboratory",
                            }
                        ]
                    }
                ],
                "code": {"coding": [{"system": "http://loinc.org", "code": loinc, "display": label}]},
                "subject": {"reference": f"Patient/{who}"},
                "effectiveDateTime": when.isoformat(),
                "valueQuantity": {"value": float(value(i)), "unit": unit, "system": "http://unitsofmeasure.org"},
                "referenceRange": [{"low": {"value": float(low)}, "high": {"value": float(high)}}],
            }
            lines.append(json.dumps(obs))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- databases
@contextmanager
def sqlite_database() -> Iterator[Database]:
    with tempfile.TemporaryDirectory(prefix="azaguard-bench-") as tmp:
        db = Database(f"sqlite:///{tmp}/bench.db")
        try:
            yield db
        finally:
            db.engine.dispose()


@contextmanager
def postgres_server(url: str | None) -> Iterator[str]:
    """An admin URL: the one given, or a throwaway cluster (the test suite's own starter)."""
    if url:
        yield url
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from dbfixtures import _start_cluster  # type: ignore[import-not-found]

    gen = _start_cluster()
    admin = next(gen)
    try:
        yield admin
    finally:
        gen.close()


@contextmanager
def postgres_database(admin_url: str) -> Iterator[Database]:
    name = f"azaguard_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(make_url(admin_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    db = Database(make_url(admin_url).set(database=name).render_as_string(hide_password=False))
    try:
        yield db
    finally:
        db.engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def create_patients(db: Database, patients: int) -> None:
    stamp = now()
    rows = [{"identifier": ident, "name": f"Bench {ident}", "created_at": stamp} for ident in identifiers(patients)]
    with db.session() as s:
        s.execute(insert(m.Patient), rows)


# ---------------------------------------------------------------- timing
CPU: dict[str, float] = {}  # CPU seconds of this process for the last timed() call, by label


def timed(fn: Callable[[], Any], label: str = "") -> tuple[Any, float]:
    """(result, wall seconds); the process's CPU seconds go to CPU[label]. On a shared machine the
    CPU figure is the fairer one for SQLite (in-process); PostgreSQL works in its own processes."""
    gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    CPU[label] = time.process_time() - cpu
    return result, time.perf_counter() - start


def run_apply(db: Database, parsed: Parsed, profile: bool) -> tuple[dict[str, Any], float]:
    def work() -> dict[str, Any]:
        with db.session() as s:
            return apply(s, parsed, "bench").as_dict()

    if not profile:
        return timed(work, "apply")
    prof = cProfile.Profile()
    result, seconds = timed(lambda: prof.runcall(work), "apply")
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
    print(out.getvalue())
    return result, seconds


def run_assess(db: Database, kb: Any) -> float:
    from azaguard import worklist as wl

    with db.session() as s:
        ids = list(s.scalars(m.Patient.__table__.select().with_only_columns(m.Patient.id)))
        _, seconds = timed(lambda: wl.refresh_many(s, kb, ids))
    return seconds


def bench_one(label: str, db: Database, kb: Any, texts: dict[str, str], args: argparse.Namespace) -> list[str]:
    create_patients(db, args.patients)
    lines = []
    for fmt, body in texts.items():
        parsed, t_parse = timed(lambda body=body, fmt=fmt: parse_text(body, kb, fmt, f"bench.{fmt}"), "parse")
        c_parse = CPU["parse"]
        n = len(parsed.items)
        assert not parsed.rejects, parsed.rejects[:3]
        summary, t_apply = run_apply(db, parsed, args.profile)
        c_apply = CPU["apply"]
        assert summary["imported"] == n and summary["quarantined"] == 0, summary
        again, t_replay = run_apply(db, parsed, False)
        assert again["duplicates"] == n, again
        line = (
            f"{label:<10} {fmt:<6} {n:>7,} obs | parse {n / t_parse:>7,.0f}/s (cpu {n / c_parse:>7,.0f}/s)"
            f" | apply {n / t_apply:>7,.0f}/s (cpu {n / c_apply:>7,.0f}/s)"
            f" | parse+apply {n / (t_parse + t_apply):>7,.0f}/s | replay {n / t_replay:>7,.0f}/s"
        )
        if args.assess:
            line += f"   re-assess {args.patients} patients {run_assess(db, kb):.1f} s"
        print(line, flush=True)
        lines.append(line)
        # next format on an empty observations table, so both see the same starting point
        with db.session() as s:
            s.execute(m.Observation.__table__.delete())
            s.execute(m.ImportBatch.__table__.delete())
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="observations per format (default 100,000)")
    ap.add_argument("--patients", type=int, default=1_000)
    ap.add_argument("--formats", default="hl7v2,ndjson", help="comma-separated: hl7v2, ndjson")
    ap.add_argument("--postgres", metavar="URL", help="PostgreSQL server to use (a scratch database is made)")
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--profile", action="store_true", help="cProfile apply() and print the top functions")
    ap.add_argument("--assess", action="store_true", help="also time re-assessing every patient")
    args = ap.parse_args()
    # a killed run still stops the PostgreSQL cluster it started and removes its files
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    kb = load_knowledge()
    makers = {"hl7v2": hl7_text, "ndjson": ndjson_text}
    texts = {}
    for fmt in args.formats.split(","):
        body, seconds = timed(lambda fmt=fmt: makers[fmt](args.n, args.patients))
        texts[fmt] = body
        print(f"generated {args.n:,} observations as {fmt} ({len(body) / 1e6:.1f} MB) in {seconds:.1f} s", flush=True)

    results = []
    with sqlite_database() as db:
        results += bench_one("sqlite", db, kb, texts, args)
    if not args.no_postgres:
        try:
            with postgres_server(args.postgres) as admin, postgres_database(admin) as db:
                results += bench_one("postgresql", db, kb, texts, args)
        except Exception as exc:  # no server and no binaries: report, keep the SQLite figures
            print(f"postgresql: skipped ({type(exc).__name__}: {exc})")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open("/proc/loadavg") if Path("/proc/loadavg").exists() else io.StringIO("?") as f:
        load = f.read().split()[0]
    print(f"\npeak memory {peak:,.0f} MB; load average {load}; target: >= 20,000 obs/s into SQLite (apply)")
    print("rates are wall-clock; (cpu ...) counts this process's CPU time only, the fair figure on a busy machine")


if __name__ == "__main__":
    main()
