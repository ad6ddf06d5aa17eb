"""Benchmark: assess() in-process and `azaguard assess` end-to-end for a heavy patient.

The patient has 10 years of monthly FBC/LFT/renal results (about 1,450 observations), a
titrated azathioprine course and 5 co-medications. Targets (issue #2): median <= 5 ms
in-process, <= 500 ms for the CLI. Run: .venv/bin/python bench/assess.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from azaguard.engine import assess
from azaguard.fhirbuild import BundleBuilder
from azaguard.knowledge import load_knowledge
from azaguard.readers.fhir import read_bundle


def heavy_patient() -> BundleBuilder:
    b = BundleBuilder("bench-1", "1962-04-02", "female", "Bench Patient")
    b.condition("91637004", "Myasthenia gravis", "2015-03-01")
    b.weight(68, "2025-10-01")
    b.genotype("TPMT", "*1/*1", "2015-04-01")
    b.genotype("NUDT15", "*1/*1", "2015-04-01")
    b.azathioprine("2015-05-01", 50, end="2015-05-31")
    b.azathioprine("2015-06-01", 100, end="2015-06-30")
    b.azathioprine("2015-07-01", 150)
    day = date(2015, 5, 1)
    n = 0
    while day < date(2025, 5, 1):
        wbc = 6.5 - (n % 7) * 0.2
        b.fbc(day, wbc, wbc * 0.6, 240 + n % 30, lymph=1.5, mcv=95 + n % 5)
        b.lab("711-2", 0.2, "10*9/L", day, "Eosinophils")
        b.lab("718-7", 135, "g/L", day, "Haemoglobin")
        b.lft(day, 20 + n % 15, albumin=41)
        b.lab("1920-8", 22, "U/L", day, "AST")
        b.renal(day, 70 + n % 9, egfr=88)
        day += timedelta(days=30)
        n += 1
    b.statement("Prednisolone 5 mg", "2015-03-01", 5, rxnorm="8638")
    b.statement("Pyridostigmine 60 mg", "2015-03-01", 60, per_day=4)
    b.statement("Ramipril 5 mg", "2019-01-01", 5)
    b.statement("Warfarin", "2021-02-01", 3, rxnorm="11289")
    b.statement("Mesalazine 800 mg", "2022-02-01", 800, per_day=3)
    return b


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--cli-runs", type=int, default=15)
    args = ap.parse_args()
    kb = load_knowledge()
    bundle = heavy_patient().bundle()
    n_obs = sum(1 for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation")
    record = read_bundle(bundle, kb)
    as_of = date(2025, 6, 1)
    assess(record, kb, as_of)  # warm up
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        assess(record, kb, as_of)
        times.append(time.perf_counter() - t)
    read_times = []
    for _ in range(20):
        t = time.perf_counter()
        read_bundle(bundle, kb)
        read_times.append(time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.json"
        path.write_text(json.dumps(bundle))
        exe = Path(sys.executable).with_name("azaguard")
        cmd = [str(exe), "assess", str(path), "--as-of", as_of.isoformat(), "--format", "json"]
        subprocess.run(cmd, check=True, capture_output=True)  # warm up (imports in the OS page cache)
        cli = []
        for _ in range(args.cli_runs):
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            cli.append(time.perf_counter() - t)
        size_kb = path.stat().st_size / 1024
    print(f"patient: {n_obs} observations, {len(record.labs)} lab results, {len(record.medications)} medicines")
    print(
        f"assess() in-process: median {statistics.median(times) * 1000:.2f} ms, "
        f"p95 {sorted(times)[int(len(times) * 0.95) - 1] * 1000:.2f} ms over {len(times)} runs (target <= 5 ms)"
    )
    print(f"read_bundle() of the same patient: median {statistics.median(read_times) * 1000:.1f} ms")
    print(
        f"CLI end-to-end ({size_kb:.0f} KiB bundle, --format json): median {statistics.median(cli) * 1000:.0f} ms, "
        f"max {max(cli) * 1000:.0f} ms over {len(cli)} runs (target <= 500 ms)"
    )


if __name__ == "__main__":
    main()
