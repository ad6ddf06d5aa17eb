"""Benchmark: the HL7 v2 lab feed over MLLP (`azaguard listen`).

For each database (SQLite file, PostgreSQL) this builds the demo clinic (`azaguard serve --demo`'s
synthetic clinic), starts `azaguard listen` on 127.0.0.1 in its own process, and sends N ORU^R01
messages - full blood counts (6 results) and liver tests (3 results) alternately, each a new order
for a patient of the clinic - over K connections at once. Each connection does what a laboratory's
interface engine does: send a message, wait for its ACK, send the next. Then the same messages are
sent again (a resend after an outage: every result a duplicate).

Printed per run: messages, messages/s, results/s, the ACK latency (message sent -> whole ACK
received) p50/p95/p99 in ms, and the ACK codes (all AA expected; anything else is an error).
Every message is one unit of work: stored, the patient re-assessed, audited, then answered.

The clients run in this process, the listener in another, on the same machine: the figures are a floor.

Run: .venv/bin/python bench/mllp.py [--n 2000] [--connections 4] [--patients 240]
     [--databases sqlite,postgresql] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import select

from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.synth import build_demo

ROOT = Path(__file__).resolve().parent.parent
EXE = Path(sys.executable).with_name("azaguard")
# The test suite's lab panels and framing bytes, and bench/load.py's scratch PostgreSQL database:
# bench scripts are not a package, so both are imported by path.
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]
_fixtures = importlib.import_module("mllp_fixtures")
START: bytes = _fixtures.START
END: bytes = _fixtures.END
FBC: list[tuple[str, str, str, str, str]] = _fixtures.FBC
LFT: list[tuple[str, str, str, str, str]] = _fixtures.LFT
postgres_url = importlib.import_module("load").postgres_url


def message(n: int, patient: str, day: date) -> bytes:
    """One ORU^R01 in an MLLP frame, as a hospital laboratory sends it."""
    tests, panel = (FBC, "58410-2^CBC panel^LN") if n % 2 else (LFT, "24325-3^Hepatic function panel^LN")
    stamp = day.strftime("%Y%m%d")
    segs = [
        f"MSH|^~\\&|WINPATH|NMC-PATH|AZAGUARD|NEURO-CLINIC|{stamp}102000||ORU^R01^ORU_R01|B{n:07d}|P|2.5.1",
        f"PID|1||{patient}^^^NMC^MR||BENCH^PATIENT||19780415|F",
        "PV1|1|O|NEURO^^^NMC",
        f"ORC|RE|B{n}^NEUROEPR|B{n}L^WINPATH||CM",
        f"OBR|1|B{n}^NEUROEPR|B{n}L^WINPATH|{panel}|||{stamp}083000|||||||||||||||{stamp}102000||HM|F",
    ]
    segs += [f"OBX|{i}|NM|{c}^{t}^LN||{v}|{u}|{r}|N|||F|||{stamp}083000" for i, (c, t, v, u, r) in enumerate(tests, 1)]
    return START + ("\r".join(segs) + "\r").encode() + END


@dataclass
class Run:
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


async def send_all(port: int, frames: list[bytes], connections: int) -> Run:
    run = Run()

    async def connection(mine: list[bytes]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for f in mine:
            started = time.perf_counter()
            writer.write(f)
            await writer.drain()
            ack = await asyncio.wait_for(reader.readuntil(END), 120)
            run.latencies.append(time.perf_counter() - started)
            found = re.search(rb"\rMSA\|(\w\w)\|", ack)
            run.codes[found.group(1).decode() if found else "??"] += 1
        writer.close()
        await writer.wait_closed()

    started = time.perf_counter()
    await asyncio.gather(*(connection(frames[i::connections]) for i in range(connections)))
    run.seconds = time.perf_counter() - started
    return run


@contextmanager
def listener(url: str, log: Path) -> Iterator[int]:
    env = {k: v for k, v in os.environ.items() if k != "AZAGUARD_DATABASE_URL"}
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [str(EXE), "listen", "--mllp-port", "0", "--database", url], stdout=subprocess.PIPE, stderr=err, env=env
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            found = re.search(r":(\d+) \(", line)
            if not found:
                raise SystemExit(f"azaguard listen did not start: {line!r}\n{log.read_text()}")
            yield int(found.group(1))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def row(label: str, phase: str, n: int, results: int, connections: int, run: Run) -> str:
    rate = n / run.seconds if run.seconds else 0.0
    bad = sum(v for k, v in run.codes.items() if k != "AA")
    return (
        f"{label:<11}{phase:<8}{connections:>6}{n:>9}{rate:>8.0f}{results / run.seconds:>10.0f}"
        f"{pct(run.latencies, 50):>8.1f}{pct(run.latencies, 95):>8.1f}{pct(run.latencies, 99):>8.1f}"
        f"{bad:>8}  {dict(run.codes)}"
    )


def bench(label: str, url: str, args: argparse.Namespace, folder: Path) -> list[str]:
    print(f"{label}: building the demo clinic ({args.patients} patients) ...", flush=True)
    db = Database(url)
    build_demo(db, args.patients)
    with db.session() as s:
        patients = list(s.scalars(select(m.Patient.identifier).order_by(m.Patient.id)))
    db.engine.dispose()
    day = date.today() - timedelta(days=1)
    frames = [message(n, patients[n % len(patients)], day) for n in range(args.n)]
    results = sum(f.count(b"\rOBX|") for f in frames)
    lines = []
    with listener(url, folder / f"listen-{label}.log") as port:
        for phase in ("new", "resend"):
            run = asyncio.run(send_all(port, frames, args.connections))
            lines.append(row(label, phase, args.n, results, args.connections, run))
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="messages per run (default 2000)")
    ap.add_argument("--connections", type=int, default=4, help="connections sending at once (default 4)")
    ap.add_argument("--patients", type=int, default=240, help="demo clinic size (default 240)")
    ap.add_argument("--databases", default="sqlite,postgresql")
    ap.add_argument("--postgres", metavar="URL", help="PostgreSQL server to use (a scratch database is made)")
    args = ap.parse_args()
    header = (
        f"{'database':<11}{'phase':<8}{'conns':>6}{'messages':>9}{'msg/s':>8}{'results/s':>10}"
        f"{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'errors':>8}  codes"
    )
    lines = []
    with tempfile.TemporaryDirectory(prefix="azaguard-mllp-bench-") as tmp:
        folder = Path(tmp)
        for label in args.databases.split(","):
            if label == "sqlite":
                lines += bench(label, f"sqlite:///{folder / 'mllp.db'}", args, folder)
            elif label == "postgresql":
                with postgres_url(args.postgres) as url:
                    lines += bench(label, url, args, folder)
            else:
                raise SystemExit(f"unknown database {label}")
    print()
    print(header)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
