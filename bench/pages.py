"""Page speed benchmark (issue 8): the server time of what a nurse does most, on the demo clinic.

Builds the demo clinic (240 synthetic patients) on a SQLite file, signs in as the demo nurse and
calls the application in this process (httpx's ASGI transport: no network, no other clients), one
request at a time, so each figure is the server's own time for that request:

  worklist page        GET /worklist (first page, 50 rows)
  patient page         GET /patients/{id}
  charts (first view)  GET /patients/{id}/charts.svg for evidence not drawn before (cold)
  charts (again)       the same charts again (drawn once per evidence, then kept)
  page + charts        a patient page and its charts, as a browser loads them (the charts warm or
                       cold as they come: each patient's first view is cold)
  save a result        POST /patients/{id}/lab (web form: stored, re-assessed, redirect)
  save a review        POST /findings/{id}/review (web form)

Prints p50/p95/max per operation. Target (issue 8): saving a result or a review and a patient
page with its charts <= 300 ms p95 server time.

Run: .venv/bin/python bench/pages.py [--n 200] [--patients 240]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from azaguard.app import create_app
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.synth import build_demo


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


async def timed(
    results: dict[str, list[float]], name: str, call: Callable[[], Awaitable[httpx.Response]], refusable: bool = False
) -> Any:
    """Time one request. `refusable`: a 4xx is an expected refusal (a review of a finding a new
    result has resolved meanwhile), not timed and not an error."""
    started = time.perf_counter()
    r = await call()
    took = time.perf_counter() - started
    if refusable and 400 <= r.status_code < 500:
        return r
    if r.status_code >= 400:
        raise RuntimeError(f"{name}: {r.status_code} {r.text[:200]}")
    results.setdefault(name, []).append(took)
    return r


async def run(db: Database, n: int) -> dict[str, list[float]]:
    app = create_app(db)
    with db.session() as s:
        patients = list(s.scalars(select(m.Patient.id).order_by(m.Patient.id)))
        findings = list(s.scalars(select(m.FindingRow.id).where(m.FindingRow.state == "open")))
    rng = random.Random(8)
    results: dict[str, list[float]] = {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as c:
        page = await c.get("/login")
        login_csrf = re.search(r'name="login_csrf" value="([^"]+)"', page.text)
        assert login_csrf
        r = await c.post("/login", data={"username": "nurse", "password": "demo-nurse", "login_csrf": login_csrf[1]})
        assert r.status_code == 303, r.text[:200]
        page = await c.get(f"/patients/{patients[0]}")  # its forms carry the session's CSRF token
        found = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert found
        csrf = found[1]
        for pid in patients[:5]:  # warm-up: templates compiled, connections open (not reported)
            await c.get(f"/patients/{pid}")
        cold = list(patients)
        rng.shuffle(cold)
        for i in range(n):
            pid = rng.choice(patients)
            await timed(results, "worklist page", lambda: c.get("/worklist"))
            await timed(results, "patient page", lambda pid=pid: c.get(f"/patients/{pid}"))
            first = cold[i % len(cold)]
            if i < len(cold):  # each patient's charts drawn for the first time
                await timed(results, "charts (first view)", lambda p=first: c.get(f"/patients/{p}/charts.svg"))
                await timed(results, "charts (again)", lambda p=first: c.get(f"/patients/{p}/charts.svg"))
            t0 = time.perf_counter()
            await c.get(f"/patients/{pid}")
            await c.get(f"/patients/{pid}/charts.svg")
            results.setdefault("page + charts", []).append(time.perf_counter() - t0)
            day = (date.today() - timedelta(days=rng.randint(0, 10))).isoformat()
            form = {"analyte": "wbc", "value": f"{rng.uniform(4, 9):.1f}", "unit": "10*9/L", "date": day, "csrf": csrf}
            await timed(results, "save a result", lambda pid=pid, form=form: c.post(f"/patients/{pid}/lab", data=form))
            if findings:
                fid = findings.pop()
                review = {"outcome": "repeat-test-booked", "note": "bench", "csrf": csrf}
                await timed(
                    results, "save a review", lambda f=fid, rv=review: c.post(f"/findings/{f}/review", data=rv), True
                )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="rounds (each: every operation once)")
    ap.add_argument("--patients", type=int, default=240)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="azaguard-pages-"))
    db = Database(f"sqlite:///{folder / 'clinic.db'}")
    build_demo(db, args.patients)
    results = asyncio.run(run(db, args.n))
    print(f"{'operation':<22}{'n':>6}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    for name, values in results.items():
        print(f"{name:<22}{len(values):>6}{pct(values, 50):>9.0f}{pct(values, 95):>9.0f}{max(values) * 1000:>9.0f}")
    print("target: saving a result or a review, and a patient page with its charts, <= 300 ms p95 server time")


if __name__ == "__main__":
    main()
