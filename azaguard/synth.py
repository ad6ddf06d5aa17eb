"""A synthetic clinic for the demo, tests and benchmarks. Every person in it is invented.

Trajectories follow the monitoring protocol (2-weekly, monthly, then 12-weekly bloods) with
realistic values, and a fixed share of patients carries each situation a clinic must catch:
new starters being titrated, TPMT intermediate and NUDT15 carriers, an allopurinol
co-prescription, a slow neutrophil decline, raised ALT, overdue and never-done tests,
pregnancy, a live vaccine request and a patient-reported fever.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from azaguard.store import models as m

FIRST = [
    "Ann",
    "Ben",
    "Cara",
    "Dev",
    "Ella",
    "Femi",
    "Grace",
    "Hari",
    "Iris",
    "Jon",
    "Kemi",
    "Liam",
    "Maya",
    "Nia",
    "Omar",
    "Pia",
    "Quinn",
    "Rosa",
    "Sam",
    "Tara",
    "Uma",
    "Vik",
    "Wen",
    "Yusuf",
    "Zoe",
    "Aled",
    "Bea",
    "Cal",
]
LAST = [
    "Abbott",
    "Bryce",
    "Carver",
    "Dunn",
    "Ekwueme",
    "Farrow",
    "Gill",
    "Hale",
    "Ince",
    "Joshi",
    "Kerr",
    "Lowe",
    "Moss",
    "Nash",
    "Okafor",
    "Pryce",
    "Quayle",
    "Reid",
    "Shah",
    "Tan",
    "Usher",
    "Vance",
    "Wu",
    "Yates",
]
INDICATIONS = [
    ("91637004", "Myasthenia gravis", 0.5),
    ("31384009", "Polymyositis", 0.1),
    ("396230008", "Dermatomyositis", 0.1),
    ("128209004", "Chronic inflammatory demyelinating polyneuropathy", 0.15),
    ("25044007", "Neuromyelitis optica spectrum disorder", 0.15),
]
SCENARIOS = {  # share of the clinic; every scenario appears at least once
    "stable": 0.50,
    "titrating": 0.10,
    "tpmt-intermediate": 0.07,
    "nudt15-carrier": 0.04,
    "allopurinol": 0.02,
    "neutrophil-decline": 0.03,
    "raised-alt": 0.03,
    "overdue": 0.07,
    "never-done": 0.03,
    "pregnancy": 0.03,
    "live-vaccine": 0.02,
    "fever": 0.03,
    "stopped": 0.03,
    "on-hold": 0.02,
}
LOINC = {
    "wbc": "6690-2",
    "neutrophils": "751-8",
    "lymphocytes": "731-0",
    "platelets": "777-3",
    "mcv": "787-2",
    "haemoglobin": "718-7",
    "alt": "1742-6",
    "albumin": "1751-7",
    "creatinine": "2160-0",
    "egfr": "98979-8",
    "weight": "29463-7",
}
UNITS = {
    "wbc": "10*9/L",
    "neutrophils": "10*9/L",
    "lymphocytes": "10*9/L",
    "platelets": "10*9/L",
    "mcv": "fL",
    "haemoglobin": "g/L",
    "alt": "U/L",
    "albumin": "g/L",
    "creatinine": "umol/L",
    "egfr": "mL/min/{1.73_m2}",
    "weight": "kg",
}

DEMO_USERS = [
    ("nurse", "clinician", "demo-nurse", "Sam Specialist-Nurse"),
    ("admin", "admin", "demo-admin", "Clinic Admin"),
]


@dataclass
class Clinic:
    patients: list[dict[str, Any]] = field(default_factory=list)
    observations: list[dict[str, Any]] = field(default_factory=list)
    medications: list[dict[str, Any]] = field(default_factory=list)
    genotypes: list[dict[str, Any]] = field(default_factory=list)
    conditions: list[dict[str, Any]] = field(default_factory=list)
    immunizations: list[dict[str, Any]] = field(default_factory=list)
    symptoms: list[dict[str, Any]] = field(default_factory=list)
    scenario_of: dict[int, str] = field(default_factory=dict)


def scenario_list(n: int) -> list[str]:
    names = list(SCENARIOS)
    out = names[:]  # one of each first
    weights = list(SCENARIOS.values())
    rng = random.Random(n)
    while len(out) < n:
        out.append(rng.choices(names, weights)[0])
    return out[:n]


def generate(n: int = 240, today: date | None = None, seed: int = 7, first_id: int = 1) -> Clinic:
    """Rows for `n` patients with ids first_id.. (bulk-insertable dicts)."""
    today = today or date.today()
    rng = random.Random(seed)
    clinic = Clinic()
    stamp = datetime.combine(today, datetime.min.time())
    for i, scenario in enumerate(scenario_list(n)):
        pid = first_id + i
        _patient(clinic, rng, pid, scenario, today, stamp)
    return clinic


def _patient(c: Clinic, rng: random.Random, pid: int, scenario: str, today: date, stamp: datetime) -> None:
    sex = "female" if scenario == "pregnancy" or rng.random() < 0.55 else "male"
    age = rng.randint(24, 38) if scenario == "pregnancy" else rng.randint(22, 84)
    birth = date(today.year - age, rng.randint(1, 12), rng.randint(1, 28))
    ident = f"NMC{pid:06d}"
    c.patients.append(
        {
            "id": pid,
            "identifier": ident,
            "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
            "birth_date": birth,
            "sex": sex,
            "monitoring_team": "gp" if rng.random() < 0.35 else "specialist",
            "phone": "",
            "created_at": stamp,
        }
    )
    c.scenario_of[pid] = scenario
    code, text, _ = rng.choices(INDICATIONS, [w for *_, w in INDICATIONS])[0]
    onset = today - timedelta(days=rng.randint(400, 2500))
    c.conditions.append(_row(pid, "cond", {"key": None, "text": text, "code": code, "active": True, "onset": onset}))
    weight = round(rng.uniform(52, 98) if sex == "male" else rng.uniform(46, 88), 1)
    tpmt = "*1/*3A" if scenario == "tpmt-intermediate" else "*1/*1"
    nudt15 = "*1/*3" if scenario == "nudt15-carrier" else ("*1/*1" if rng.random() < 0.6 else None)
    # Course: start date and dose steps
    if scenario in ("titrating",):
        start = today - timedelta(days=rng.randint(28, 55))
    elif scenario == "never-done":
        start = today - timedelta(days=rng.randint(21, 35))
    else:
        start = today - timedelta(days=rng.randint(240, 1090))
    test_day = start - timedelta(days=rng.randint(7, 30))  # baseline bloods and genotype before starting
    c.genotypes.append(_row(pid, "geno", {"gene": "TPMT", "diplotype": tpmt, "phenotype": None, "effective": test_day}))
    if nudt15:
        c.genotypes.append(
            _row(pid, "geno", {"gene": "NUDT15", "diplotype": nudt15, "phenotype": None, "effective": test_day})
        )
    factor = 0.5 if scenario in ("tpmt-intermediate", "nudt15-carrier") else 1.0
    target = max(25, round(weight * 2.0 * factor / 25) * 25)
    steps: list[tuple[date, float]] = []
    dose, day = 50.0 if factor == 1 else 25.0, start
    while True:
        steps.append((day, dose))
        if dose >= target:
            break
        day = day + timedelta(days=14)
        if day > today:
            break
        dose = min(target, dose + 50)
    stopped_on = None
    if scenario == "stopped":
        stopped_on = today - timedelta(days=rng.randint(30, 200))
    # on hold: withheld the day after a low count, a few days ago (monitoring continues)
    hold_on = today - timedelta(days=rng.randint(3, 10)) if scenario == "on-hold" else None
    for k, (d0, mg) in enumerate(steps):
        end = steps[k + 1][0] - timedelta(days=1) if k + 1 < len(steps) else stopped_on
        if hold_on is not None and k + 1 == len(steps):
            end = hold_on - timedelta(days=1)
        status = "stopped" if end is not None else "active"
        c.medications.append(
            _row(
                pid,
                "med",
                {
                    "drug": "azathioprine",
                    "name": f"Azathioprine {mg:g} mg daily",
                    "rxnorm": "1256",
                    "kind": "statement",
                    "status": status,
                    "start": d0,
                    "end": end,
                    "daily_dose_mg": mg,
                    "created_at": stamp,
                },
            )
        )
    if hold_on is not None:
        c.medications.append(
            _row(
                pid,
                "med",
                {
                    "drug": "azathioprine",
                    "name": f"Azathioprine {steps[-1][1]:g} mg daily",
                    "rxnorm": "1256",
                    "kind": "statement",
                    "status": "on-hold",
                    "start": hold_on,
                    "end": None,
                    "daily_dose_mg": steps[-1][1],
                    "reason": "Withheld: neutrophils below the withhold limit",
                    "status_date": hold_on,
                    "created_at": stamp,
                },
            )
        )
    c.medications.append(
        _row(
            pid,
            "med",
            {
                "drug": "prednisolone",
                "name": "Prednisolone 10 mg daily",
                "rxnorm": "8638",
                "kind": "statement",
                "status": "active",
                "start": start - timedelta(days=30),
                "end": None,
                "daily_dose_mg": 10,
                "created_at": stamp,
            },
        )
    )
    if scenario == "allopurinol":
        c.medications.append(
            _row(
                pid,
                "med",
                {
                    "drug": "allopurinol",
                    "name": "Allopurinol 100 mg daily",
                    "rxnorm": "519",
                    "kind": "statement",
                    "status": "active",
                    "start": today - timedelta(days=20),
                    "end": None,
                    "daily_dose_mg": 100,
                    "created_at": stamp,
                },
            )
        )
    c.immunizations.append(
        _row(
            pid,
            "imm",
            {
                "vaccine": "influenza",
                "live": False,
                "name": "Influenza vaccine",
                "status": "given",
                "when": today - timedelta(days=rng.randint(20, 300)),
            },
        )
    )
    if rng.random() < 0.7:
        c.immunizations.append(
            _row(
                pid,
                "imm",
                {
                    "vaccine": "pneumococcal",
                    "live": False,
                    "name": "Pneumococcal polysaccharide vaccine",
                    "status": "given",
                    "when": start - timedelta(days=20),
                },
            )
        )
    if scenario == "live-vaccine":
        c.immunizations.append(
            _row(
                pid,
                "imm",
                {
                    "vaccine": "yellow-fever",
                    "live": True,
                    "name": "Yellow fever vaccine",
                    "status": "ordered",
                    "when": today,
                },
            )
        )
    if scenario == "fever":
        c.symptoms.append(
            _row(
                pid,
                "sym",
                {"key": "fever", "text": "fever", "when": today - timedelta(days=1), "reported_by": "patient"},
            )
        )
    if scenario == "pregnancy":
        c.observations.append(
            _obs(pid, "status", "pregnancy", None, None, today - timedelta(days=40), stamp, text="true")
        )

    # Blood tests on the protocol's rhythm
    c.observations.append(_obs(pid, "lab", "weight", weight, "kg", test_day, stamp))
    dates = [test_day]
    last_increase = steps[-1][0]
    day = start + timedelta(days=14)
    end_tests = today
    if scenario == "overdue":
        end_tests = today - timedelta(days=rng.randint(100, 150))
    if scenario == "stopped" and stopped_on:
        end_tests = stopped_on
    if hold_on is not None:
        end_tests = hold_on - timedelta(days=1)
    while day <= end_tests and scenario != "never-done":
        dates.append(day)
        if day < last_increase + timedelta(weeks=6):
            day += timedelta(days=14 + rng.randint(-1, 2))
        elif day < last_increase + timedelta(weeks=6) + timedelta(days=91):
            day += timedelta(days=30 + rng.randint(-2, 3))
        else:
            day += timedelta(days=84 + rng.randint(-6, 4))
    if hold_on is not None and (not dates or dates[-1] < end_tests):
        dates.append(end_tests)  # the count that made the team withhold it, the day before the hold
    base = {
        "wbc": rng.uniform(5.5, 8.0),
        "neutrophils": rng.uniform(3.0, 5.0),
        "platelets": rng.uniform(200, 320),
        "lymphocytes": rng.uniform(1.2, 2.4),
        "alt": rng.uniform(14, 32),
        "creatinine": rng.uniform(60, 90),
        "albumin": rng.uniform(38, 46),
    }
    for k, day in enumerate(dates):
        on = day >= start
        drift = 0.88 if on else 1.0
        vals = {
            "wbc": base["wbc"] * drift * rng.uniform(0.93, 1.07),
            "neutrophils": base["neutrophils"] * drift * rng.uniform(0.92, 1.08),
            "platelets": base["platelets"] * rng.uniform(0.94, 1.06),
            "lymphocytes": base["lymphocytes"] * drift * rng.uniform(0.9, 1.1),
            "mcv": 90 + (6 if on else 0) * min(1.0, (day - start).days / 365 if on else 0) + rng.uniform(-2, 2),
            "alt": base["alt"] * rng.uniform(0.85, 1.2),
            "albumin": base["albumin"] * rng.uniform(0.97, 1.03),
            "creatinine": base["creatinine"] * rng.uniform(0.95, 1.05),
        }
        if scenario == "neutrophil-decline" and k >= len(dates) - 4:
            steps_in = k - (len(dates) - 4)
            vals["neutrophils"] = base["neutrophils"] * 0.95 * (0.86**steps_in)
            vals["wbc"] = base["wbc"] * 0.95 * (0.93**steps_in)
        if scenario == "on-hold" and k == len(dates) - 1:
            vals["neutrophils"], vals["wbc"] = rng.uniform(1.1, 1.5), rng.uniform(2.8, 3.4)
        if scenario == "raised-alt" and k == len(dates) - 1:
            vals["alt"] = rng.uniform(125, 180)
        if scenario == "fever" and k == len(dates) - 1:
            pass  # the fever is reported after this count
        vals["egfr"] = max(45.0, min(110.0, 140 - vals["creatinine"] * 0.7))
        for analyte, v in vals.items():
            c.observations.append(_obs(pid, "lab", analyte, round(v, 2 if v < 20 else 1), UNITS[analyte], day, stamp))


_counter = [0]


def _row(pid: int, prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    _counter[0] += 1
    return {"patient_id": pid, "source_key": f"synth:{prefix}:{pid}:{_counter[0]}", **values}


def _obs(
    pid: int,
    kind: str,
    analyte: str,
    value: float | None,
    unit: str | None,
    day: date,
    stamp: datetime,
    text: str | None = None,
) -> dict[str, Any]:
    _counter[0] += 1
    return {
        "patient_id": pid,
        "kind": kind,
        "analyte": analyte,
        "code": LOINC.get(analyte, ""),
        "value": value,
        "unit": unit,
        "value_text": text,
        "original_value": None if value is None else f"{value:g}",
        "original_unit": unit,
        "ref_low": None,
        "ref_high": None,
        "below_detection": False,
        "abnormal_flag": None,
        "effective": day,
        "status": "final",
        "source_key": f"synth:obs:{pid}:{_counter[0]}",
        "version": 1,
        "current": True,
        "content_hash": "",
        "review_state": "pending",
        "received_at": stamp,
    }


def load(s: Session, clinic: Clinic, progress: Callable[[str], None] | None = None) -> None:
    """Bulk-insert a generated clinic (one transaction, owned by the caller)."""
    from azaguard.knowledge import load_knowledge

    kb = load_knowledge()
    for cond in clinic.conditions:  # the reader's matching, so keys are what an import would give
        cond["key"] = next((k for k, ind in kb.indications.items() if cond["code"] in ind.snomed), None)
    for table, rows in (
        (m.Patient, clinic.patients),
        (m.Condition, clinic.conditions),
        (m.Genotype, clinic.genotypes),
        (m.Medication, clinic.medications),
        (m.Immunization, clinic.immunizations),
        (m.Symptom, clinic.symptoms),
        (m.Observation, clinic.observations),
    ):
        if rows:
            # executemany binds the first row's keys: give every row the same ones (column default if unset)
            cols = m.core(table).c
            defaults = {
                c.name: getattr(c.default, "arg", None) for c in cols if c.default is not None and c.default.is_scalar
            }
            keys = {k for row in rows for k in row}
            rows = [{k: row.get(k, defaults.get(k)) for k in keys} for row in rows]
            s.execute(insert(m.core(table)), rows)  # Core executemany: no ORM bookkeeping
        if progress:
            progress(f"{len(rows)} {table.__tablename__}")


def build_demo(
    db: Any, n: int = 240, today: date | None = None, progress: Callable[[str], None] | None = None
) -> list[tuple[str, str, str]]:
    """Fill an empty database with a synthetic clinic and demo users; returns (username, password, role) logins."""
    from sqlalchemy import func, select, text

    from azaguard import auth
    from azaguard.knowledge import load_knowledge
    from azaguard.worklist import refresh_many

    kb = load_knowledge()
    today = today or date.today()
    with db.session() as s:
        if (s.scalar(select(func.count()).select_from(m.Patient)) or 0) > 0:
            raise ValueError("the database already has patients; the demo clinic needs an empty database")
        clinic = generate(n, today)
        load(s, clinic, progress)
        if db.is_postgres:
            s.execute(text("SELECT setval(pg_get_serial_sequence('patients', 'id'), (SELECT max(id) FROM patients))"))
        logins = []
        for username, role, password, display in DEMO_USERS:
            auth.create_user(s, username, password, role, display_name=display)
            logins.append((username, password, role))
        # Two patient logins: one who has just reported a fever, one on a stable course.
        by_scenario: dict[str, int] = {}
        for pid, scen in clinic.scenario_of.items():
            by_scenario.setdefault(scen, pid)
        for n_, scen in enumerate(("stable", "titrating"), 1):
            pid = by_scenario[scen]
            ident = next(p["identifier"] for p in clinic.patients if p["id"] == pid)
            name = next(p["name"] for p in clinic.patients if p["id"] == pid)
            auth.create_user(s, f"patient{n_}", f"demo-patient{n_}", "patient", ident, display_name=name)
            logins.append((f"patient{n_}", f"demo-patient{n_}", "patient"))
        if progress:
            progress("assessing every patient")
        refresh_many(s, kb, [p["id"] for p in clinic.patients], today)
    return logins
