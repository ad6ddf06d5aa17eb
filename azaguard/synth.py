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

from azaguard.knowledge import Knowledge, load_knowledge
from azaguard.knowledge.model import Interval
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


def generate(
    n: int = 240, today: date | None = None, seed: int = 7, first_id: int = 1, kb: Knowledge | None = None
) -> Clinic:
    """Rows for `n` patients with ids first_id.. (bulk-insertable dicts)."""
    today = today or date.today()
    kb = kb or load_knowledge()
    rng = random.Random(seed)
    clinic = Clinic()
    stamp = datetime.combine(today, datetime.min.time())
    for i, scenario in enumerate(scenario_list(n)):
        _patient(clinic, rng, kb, Person(first_id + i, scenario, today, stamp))
    return clinic


@dataclass(frozen=True)
class Person:
    """The patient being generated: id, scenario and the day the clinic is built for."""

    pid: int
    scenario: str
    today: date
    stamp: datetime


@dataclass(frozen=True)
class Course:
    """An azathioprine course: when it started, its dose steps, and how it ended or paused."""

    start: date
    baseline: date  # baseline bloods, weight and genotype, before the start
    steps: list[tuple[date, float]]  # (from, mg/day)
    stopped_on: date | None
    hold_on: date | None  # withheld from this day (the day after a low count)


def _patient(c: Clinic, rng: random.Random, kb: Knowledge, who: Person) -> None:
    """One patient, in stages that each add their rows (the random draws keep this order)."""
    sex = _demographics(c, rng, who)
    _indication(c, rng, who)
    weight = round(rng.uniform(52, 98) if sex == "male" else rng.uniform(46, 88), 1)
    course = _course(c, rng, kb, who, weight)
    _azathioprine(c, who, course)
    _co_medications(c, who, course)
    _vaccines_and_reports(c, rng, who, course)
    _blood_tests(c, rng, kb, who, course, weight)


def _demographics(c: Clinic, rng: random.Random, who: Person) -> str:
    """The patients row; returns the sex (a pregnancy scenario is a woman of 24-38)."""
    pregnant = who.scenario == "pregnancy"
    sex = "female" if pregnant or rng.random() < 0.55 else "male"
    age = rng.randint(24, 38) if pregnant else rng.randint(22, 84)
    birth = date(who.today.year - age, rng.randint(1, 12), rng.randint(1, 28))
    c.patients.append(
        {
            "id": who.pid,
            "identifier": f"NMC{who.pid:06d}",
            "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
            "birth_date": birth,
            "sex": sex,
            "monitoring_team": "gp" if rng.random() < 0.35 else "specialist",
            "phone": "",
            "created_at": who.stamp,
        }
    )
    c.scenario_of[who.pid] = who.scenario
    return sex


def _indication(c: Clinic, rng: random.Random, who: Person) -> None:
    code, text, _ = rng.choices(INDICATIONS, [w for *_, w in INDICATIONS])[0]
    onset = who.today - timedelta(days=rng.randint(400, 2500))
    c.conditions.append(
        _row(who.pid, "cond", {"key": None, "text": text, "code": code, "active": True, "onset": onset})
    )


def _days(interval: Interval) -> int:
    """An interval of the knowledge base in whole days (a month as 30.44 days)."""
    return round(interval.days + 7 * interval.weeks + 30.44 * interval.months)


def _course(c: Clinic, rng: random.Random, kb: Knowledge, who: Person, weight: float) -> Course:
    """Genotypes, then the course the protocol gives them: start dose, steps to the target, caps."""
    scenario, today = who.scenario, who.today
    tpmt = "*1/*3A" if scenario == "tpmt-intermediate" else "*1/*1"
    nudt15 = "*1/*3" if scenario == "nudt15-carrier" else ("*1/*1" if rng.random() < 0.6 else None)
    if scenario == "titrating":
        start = today - timedelta(days=rng.randint(28, 55))
    elif scenario == "never-done":
        start = today - timedelta(days=rng.randint(21, 35))
    else:
        start = today - timedelta(days=rng.randint(240, 1090))
    baseline = start - timedelta(days=rng.randint(7, 30))  # baseline bloods and genotype before starting
    for gene, diplotype in (("TPMT", tpmt), ("NUDT15", nudt15)):
        if diplotype:
            fields = {"gene": gene, "diplotype": diplotype, "phenotype": None, "effective": baseline}
            c.genotypes.append(_row(who.pid, "geno", fields))
    steps = _dose_steps(kb, weight, start, today, reduced=scenario in ("tpmt-intermediate", "nudt15-carrier"))
    stopped_on = today - timedelta(days=rng.randint(30, 200)) if scenario == "stopped" else None
    # on hold: withheld the day after a low count, a few days ago (monitoring continues)
    hold_on = today - timedelta(days=rng.randint(3, 10)) if scenario == "on-hold" else None
    return Course(start, baseline, steps, stopped_on, hold_on)


def _dose_steps(kb: Knowledge, weight: float, start: date, today: date, reduced: bool) -> list[tuple[date, float]]:
    """Titration as the knowledge base doses it: the start dose (the smallest tablet for an
    intermediate metaboliser), a step every step interval up to the lower target in mg/kg, rounded
    to whole tablets. Intermediate metabolisers get half the dose (DPWG's 50 %, within CPIC's range)."""
    dosing = kb.dosing
    tablet = min(dosing.tablet_strengths_mg)
    fraction = _REDUCED_FRACTION if reduced else 1.0
    if reduced:
        allowed = kb.pgx.combined["intermediate"].fraction
        assert allowed is not None and allowed.low <= fraction <= allowed.high, "outside the protocol's range"
    target = max(tablet, round(weight * dosing.target_mg_per_kg.low * fraction / tablet) * tablet)
    every = timedelta(days=_days(Interval(weeks=dosing.step_interval_weeks.normal)))
    steps: list[tuple[date, float]] = []
    dose, day = (dosing.start_mg_per_day if not reduced else tablet), start
    while True:
        steps.append((day, dose))
        if dose >= target:
            return steps
        day = day + every
        if day > today:
            return steps
        dose = min(target, dose + dosing.step_mg)


_REDUCED_FRACTION = 0.5  # the synthetic clinic's choice for intermediate metabolisers


def _azathioprine(c: Clinic, who: Person, course: Course) -> None:
    """One row per dose step (each ends the day before the next), and a hold row if withheld."""
    steps = course.steps
    for k, (d0, mg) in enumerate(steps):
        end = steps[k + 1][0] - timedelta(days=1) if k + 1 < len(steps) else course.stopped_on
        if course.hold_on is not None and k + 1 == len(steps):
            end = course.hold_on - timedelta(days=1)
        status = "stopped" if end is not None else "active"
        c.medications.append(
            _medicine(who, "azathioprine", f"Azathioprine {mg:g} mg daily", "1256", d0, mg, status, end)
        )
    if course.hold_on is not None:
        mg = steps[-1][1]
        held = _medicine(who, "azathioprine", f"Azathioprine {mg:g} mg daily", "1256", course.hold_on, mg, "on-hold")
        held.update(reason="Withheld: neutrophils below the withhold limit", status_date=course.hold_on)
        c.medications.append(held)


def _co_medications(c: Clinic, who: Person, course: Course) -> None:
    start = course.start - timedelta(days=30)
    c.medications.append(_medicine(who, "prednisolone", "Prednisolone 10 mg daily", "8638", start, 10, "active"))
    if who.scenario == "allopurinol":
        day = who.today - timedelta(days=20)
        c.medications.append(_medicine(who, "allopurinol", "Allopurinol 100 mg daily", "519", day, 100, "active"))


def _medicine(
    who: Person, drug: str, name: str, rxnorm: str, start: date, mg: float, status: str, end: date | None = None
) -> dict[str, Any]:
    fields = {
        "drug": drug,
        "name": name,
        "rxnorm": rxnorm,
        "kind": "statement",
        "status": status,
        "start": start,
        "end": end,
        "daily_dose_mg": mg,
        "created_at": who.stamp,
    }
    return _row(who.pid, "med", fields)


def _vaccines_and_reports(c: Clinic, rng: random.Random, who: Person, course: Course) -> None:
    """Influenza (everyone), pneumococcal (most), a live vaccine order, a reported fever, a pregnancy."""
    pid, today = who.pid, who.today

    def vaccine(key: str, live: bool, name: str, status: str, when: date) -> None:
        c.immunizations.append(
            _row(pid, "imm", {"vaccine": key, "live": live, "name": name, "status": status, "when": when})
        )

    vaccine("influenza", False, "Influenza vaccine", "given", today - timedelta(days=rng.randint(20, 300)))
    if rng.random() < 0.7:
        vaccine(
            "pneumococcal", False, "Pneumococcal polysaccharide vaccine", "given", course.start - timedelta(days=20)
        )
    if who.scenario == "live-vaccine":
        vaccine("yellow-fever", True, "Yellow fever vaccine", "ordered", today)
    if who.scenario == "fever":
        report = {"key": "fever", "text": "fever", "when": today - timedelta(days=1), "reported_by": "patient"}
        c.symptoms.append(_row(pid, "sym", report))
    if who.scenario == "pregnancy":
        c.observations.append(
            _obs(pid, "status", "pregnancy", None, None, today - timedelta(days=40), who.stamp, text="true")
        )


def _blood_tests(c: Clinic, rng: random.Random, kb: Knowledge, who: Person, course: Course, weight: float) -> None:
    """Weight at baseline, then FBC, LFT and renal results on the protocol's rhythm."""
    c.observations.append(_obs(who.pid, "lab", "weight", weight, "kg", course.baseline, who.stamp))
    dates = _test_dates(rng, kb, who, course)
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
        vals = _results(rng, who.scenario, base, course.start, day, k, len(dates))
        for analyte, v in vals.items():
            c.observations.append(
                _obs(who.pid, "lab", analyte, round(v, 2 if v < 20 else 1), UNITS[analyte], day, who.stamp)
            )


def _test_dates(rng: random.Random, kb: Knowledge, who: Person, course: Course) -> list[date]:
    """Baseline, then every 2 weeks until the dose has been stable for 6 weeks, monthly for 3 months,
    then 12-weekly (the knowledge base's schedule, with a few days' jitter), until the tests stop."""
    schedule, scenario, today = kb.schedule, who.scenario, who.today
    stable = course.steps[-1][0] + timedelta(days=_days(schedule.stable_after))
    consolidated = stable + timedelta(days=_days(schedule.consolidation_duration))
    initial, monthly = _days(schedule.initial_interval), _days(schedule.consolidation_interval)
    maintenance = _days(schedule.maintenance_interval)
    dates = [course.baseline]
    day = course.start + timedelta(days=initial)
    end_tests = today
    if scenario == "overdue":
        end_tests = today - timedelta(days=rng.randint(100, 150))
    if scenario == "stopped" and course.stopped_on:
        end_tests = course.stopped_on
    if course.hold_on is not None:
        end_tests = course.hold_on - timedelta(days=1)
    while day <= end_tests and scenario != "never-done":
        dates.append(day)
        if day < stable:
            day += timedelta(days=initial + rng.randint(-1, 2))
        elif day < consolidated:
            day += timedelta(days=monthly + rng.randint(-2, 3))
        else:
            day += timedelta(days=maintenance + rng.randint(-6, 4))
    if course.hold_on is not None and (not dates or dates[-1] < end_tests):
        dates.append(end_tests)  # the count that made the team withhold it, the day before the hold
    return dates


def _results(
    rng: random.Random, scenario: str, base: dict[str, float], start: date, day: date, k: int, n: int
) -> dict[str, float]:
    """One set of results (the k-th of n): the patient's baseline with noise, a small fall on
    treatment, and the scenario's trouble on the latest tests."""
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
    last = k == n - 1
    if scenario == "neutrophil-decline" and k >= n - 4:
        steps_in = k - (n - 4)
        vals["neutrophils"] = base["neutrophils"] * 0.95 * (0.86**steps_in)
        vals["wbc"] = base["wbc"] * 0.95 * (0.93**steps_in)
    if scenario == "on-hold" and last:
        vals["neutrophils"], vals["wbc"] = rng.uniform(1.1, 1.5), rng.uniform(2.8, 3.4)
    if scenario == "raised-alt" and last:
        vals["alt"] = rng.uniform(125, 180)
    # "fever": the fever is reported after the last count, which is normal
    vals["egfr"] = max(45.0, min(110.0, 140 - vals["creatinine"] * 0.7))
    return vals


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
