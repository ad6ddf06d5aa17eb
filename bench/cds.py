"""CDS Hooks benchmark: patient-view and order-sign calls with full prefetch, against a real server.

Builds a clinic database (SQLite by default), registers an EHR client with a fresh ES384 key,
starts `azaguard serve` on 127.0.0.1 in its own process and drives C concurrent EHR clients for
--seconds at each level. Each call carries a newly signed JWT (signed before the run: signing is
the EHR's cost, not ours) and a prefetch of a realistic record (a year of monthly bloods, weight,
TPMT/NUDT15, medicines); half the calls are patient-view, half order-sign (an azathioprine draft
for a new patient, or an allopurinol draft for a patient on azathioprine).

Two ways to load it, both printed:
  paced   each client is one clinician's EHR session: a call, then --think seconds (default 1 s)
          before the next. This is how hooks arrive in practice (a chart opened, an order signed)
          and what the latency target is about (p99 <= 50 ms at 50 and 100 clients).
  closed  each client calls again as soon as it has its answer (no think time): the server's
          saturation throughput; latency then only measures the queue (Little's law).

Printed per level: calls, calls/s, p50/p95/p99 (ms), errors (non-200 or dropped), and the server's
CPU per call. The clients (aiohttp) run on the same machine and take some of its CPU.

Run: .venv/bin/python bench/cds.py [--seconds 60] [--levels 50,100] [--think 1.0] [--workers 2]
     [--modes paced,closed] [--database URL]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import sys
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from azaguard.ehr import cds_auth
from azaguard.fhirbuild import BundleBuilder
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.store.records import now

sys.path.insert(0, str(Path(__file__).resolve().parent))
load = importlib.import_module("load")  # bench/load.py: the server runner and CPU meter (scripts, not a package)

ISS = "https://bench-ehr.example"
TODAY = date.today()
KEYS = {
    "Observation": "observations",
    "MedicationRequest": "medicationRequests",
    "MedicationStatement": "medicationStatements",
    "Condition": "conditions",
    "Immunization": "immunizations",
    "AllergyIntolerance": "allergies",
}


def record(i: int, on_aza: bool, neut: float, tpmt: str) -> BundleBuilder:
    b = BundleBuilder(f"ehr-{i}", birth_date="1968-04-02", gender="female" if i % 2 else "male", name=f"Bench {i}")
    b.entries[0]["identifier"] = [{"system": "urn:bench", "value": f"BENCH-{i}"}]
    b.condition("91637004", "Myasthenia gravis", TODAY - timedelta(days=500))
    b.weight(60 + i % 30, TODAY - timedelta(days=20))
    b.genotype("TPMT", tpmt, TODAY - timedelta(days=450)).genotype("NUDT15", "*1/*1", TODAY - timedelta(days=450))
    for month in range(12, 0, -1):
        b.bloods(TODAY - timedelta(days=30 * month + 3))
    b.fbc(TODAY - timedelta(days=2), wbc=4.0, neut=neut, plt=210)
    if on_aza:
        b.azathioprine(TODAY - timedelta(days=420), 150)
    return b


def prefetch(b: BundleBuilder) -> dict[str, Any]:
    out: dict[str, Any] = {k: {"resourceType": "Bundle", "type": "searchset", "entry": []} for k in KEYS.values()}
    for r in b.entries:
        if r["resourceType"] == "Patient":
            out["patient"] = r
        else:
            out[KEYS[r["resourceType"]]]["entry"].append({"resource": r})
    return out


def draft(rxnorm: str, display: str, tablets: float) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": "request-1",
        "status": "draft",
        "medicationCodeableConcept": {
            "text": display,
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": rxnorm, "display": display}],
        },
        "dosageInstruction": [
            {
                "doseAndRate": [{"doseQuantity": {"value": tablets, "code": "{pill}"}}],
                "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
            }
        ],
    }


def bodies(n: int) -> list[tuple[str, bytes]]:
    """(service id, request body) for n patients: half patient-view, half order-sign."""
    out = []
    for i in range(n):
        on_aza = i % 4 != 3
        b = record(i, on_aza, neut=0.9 if i % 5 == 0 else 3.2, tpmt="*3A/*3A" if i % 7 == 0 else "*1/*1")
        ctx: dict[str, Any] = {"userId": "Practitioner/1", "patientId": b.patient_id}
        if i % 2 == 0:
            service, hook = "azaguard-patient-view", "patient-view"
        else:
            service, hook = "azaguard-order-sign", "order-sign"
            order = (
                draft("197319", "Allopurinol 100 MG Oral Tablet", 1)
                if on_aza
                else draft("197388", "Azathioprine 50 MG Oral Tablet", 1)
            )
            ctx["draftOrders"] = {"resourceType": "Bundle", "entry": [{"resource": order}]}
        body = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": ctx, "prefetch": prefetch(b)}
        out.append((service, json.dumps(body).encode()))
    return out


class Tokens:
    """JWTs signed ahead of the run, one per call (each jti is used once)."""

    def __init__(self, key: Any, kid: str, base: str, count: int) -> None:
        self.key, self.kid, self.base = key, kid, base
        self.pool = {s: [self.sign(s) for _ in range(count)] for s in ("azaguard-patient-view", "azaguard-order-sign")}

    def sign(self, service: str) -> str:
        t = int(time.time())
        claims = {"iss": ISS, "aud": f"{self.base}/cds-services/{service}", "iat": t, "exp": t + 3600}
        return jwt.encode({**claims, "jti": str(uuid.uuid4())}, self.key, algorithm="ES384", headers={"kid": self.kid})

    def take(self, service: str) -> str:
        pool = self.pool[service]
        return pool.pop() if pool else self.sign(service)  # ran out: sign now (counts against the client)


async def level(
    base: str, work: list[tuple[str, bytes]], tokens: Tokens, clients: int, seconds: float, think: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as http:

        async def client(k: int) -> None:
            nonlocal errors
            i = k
            await asyncio.sleep((k / clients) * think)  # spread the first calls over one think time
            while time.monotonic() < stop:
                service, body = work[i % len(work)]
                i += clients
                headers = {"Authorization": f"Bearer {tokens.take(service)}", "Content-Type": "application/json"}
                t0 = time.perf_counter()
                try:
                    async with http.post(f"{base}/cds-services/{service}", data=body, headers=headers) as r:
                        await r.read()
                        if r.status != 200:
                            errors += 1
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                latencies.append(time.perf_counter() - t0)  # seconds (load.pct prints ms)
                if think:
                    await asyncio.sleep(think)

        started = time.monotonic()
        await asyncio.gather(*(client(k) for k in range(clients)))
        elapsed = time.monotonic() - started
    return {
        "calls": len(latencies),
        "rate": len(latencies) / elapsed,
        "p50": load.pct(latencies, 50),
        "p95": load.pct(latencies, 95),
        "p99": load.pct(latencies, 99),
        "errors": errors,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--levels", default="50,100")
    ap.add_argument("--think", type=float, default=1.0, help="seconds each paced client waits between calls")
    ap.add_argument("--modes", default="paced,closed")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--database", help="a database URL (default: a new SQLite file)")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="azaguard-cds-bench-"))
    url = args.database or f"sqlite:///{folder / 'clinic.db'}"
    db = Database(url)
    key = ec.generate_private_key(ec.SECP384R1())
    kid = str(uuid.uuid4())
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    (folder / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": kid, "alg": "ES384"}]}))
    cds_auth.add_client(db, ISS, jwks_file=str(folder / "jwks.json"))
    with db.write() as s:
        for i in range(args.patients):
            s.add(m.Patient(identifier=f"BENCH-{i}", name=f"Bench {i}", created_at=now()))
    db.engine.dispose()
    work = bodies(args.patients)
    size = sum(len(b) for _, b in work) / len(work)
    kind = url.split(":")[0]
    print(f"{len(work)} distinct calls, mean body {size / 1024:.0f} KiB; server: {args.workers} worker(s); {kind}")
    print("| mode | clients | think (s) | calls | calls/s | p50 (ms) | p95 (ms) | p99 (ms) | errors | CPU/call (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with load.server(url, folder / "server.log", args.workers) as base:
        pid = load.SERVER_PIDS[base]
        for mode in args.modes.split(","):
            think = args.think if mode == "paced" else 0.0
            for clients in (int(x) for x in args.levels.split(",")):
                expected = clients * args.seconds / think * 1.2 if think else 400 * args.seconds
                tokens = Tokens(key, kid, base, int(expected) // 2 + clients)
                gc.collect()
                gc.freeze()  # the client's bodies and tokens: no collection pause inside a measurement
                cpu0 = load.tree_cpu(pid)
                r = asyncio.run(level(base, work, tokens, clients, args.seconds, think))
                cpu = (load.tree_cpu(pid) - cpu0) / max(r["calls"], 1) * 1000
                print(
                    f"| {mode} | {clients} | {think:g} | {r['calls']} | {r['rate']:.0f} | {r['p50']:.1f} | "
                    f"{r['p95']:.1f} | {r['p99']:.1f} | {r['errors']} | {cpu:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
