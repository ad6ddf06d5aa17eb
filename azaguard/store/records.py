"""Rows <-> domain records: the store's side of "readers turn the outside world into records".

`load_record` rebuilds exactly the PatientRecord the engine consumes, from current rows only
(a corrected result's earlier version stays in the table as history but is not assessed).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from azaguard import domain as d
from azaguard.store import models as m


def now() -> datetime:
    return datetime.now().replace(microsecond=0)


def load_record(s: Session, patient_id: int) -> d.PatientRecord:
    records = load_records(s, [patient_id])
    if patient_id not in records:
        raise KeyError(patient_id)
    return records[patient_id]


def load_records(s: Session, patient_ids: list[int]) -> dict[int, d.PatientRecord]:
    """Records for many patients with one query per table (Core selects, no ORM objects).

    This runs after every write and for every patient in a refresh, so it avoids per-patient
    round trips: a 10,000-patient refresh is a few hundred queries, not seventy thousand.
    """
    out: dict[int, d.PatientRecord] = {}
    for i in range(0, len(patient_ids), 500):
        out.update(_load_chunk(s, patient_ids[i : i + 500]))
    return out


def _load_chunk(s: Session, ids: list[int]) -> dict[int, d.PatientRecord]:
    """One query per table for these patients, then one PatientRecord each."""
    observed = _observations(s, ids)
    medications = _medications(s, ids)
    genotypes = _genotypes(s, ids)
    conditions = _conditions(s, ids)
    allergies = _allergies(s, ids)
    vaccinations = _vaccinations(s, ids)
    symptoms = _symptoms(s, ids)
    dismissed = _dismissed_follow_ups(s, ids)
    people = select(m.Patient.id, m.Patient.identifier, m.Patient.birth_date, m.Patient.sex, m.Patient.name)
    return {
        p.id: d.PatientRecord(
            patient_id=p.identifier,
            birth_date=p.birth_date,
            sex=p.sex,
            name=p.name,
            labs=observed.labs(p.id),
            medications=medications.get(p.id, ()),
            genotypes=genotypes.get(p.id, ()),
            tpmt_activity=observed.activity(p.id),
            conditions=conditions.get(p.id, ()),
            allergies=allergies.get(p.id, ()),
            vaccinations=vaccinations.get(p.id, ()),
            symptoms=symptoms.get(p.id, ()),
            statuses=observed.statuses(p.id),
            screening_done=tuple(observed.screening[p.id]),
            screening_results=tuple(observed.screening_results[p.id]),
            dismissed_follow_ups=dismissed.get(p.id, ()),
        )
        for p in s.execute(people.where(m.Patient.id.in_(ids)))
    }


@dataclass
class _Observed:
    """The current observations of some patients, by kind (labs, TPMT activity, statuses, screening)."""

    lab_rows: dict[int, list[d.LabResult]] = field(default_factory=lambda: defaultdict(list))
    activity_rows: dict[int, list[d.ActivityResult]] = field(default_factory=lambda: defaultdict(list))
    status_rows: dict[int, list[d.StatusObservation]] = field(default_factory=lambda: defaultdict(list))
    screening: dict[int, list[tuple[str, date]]] = field(default_factory=lambda: defaultdict(list))
    screening_results: dict[int, list[tuple[str, date, bool]]] = field(default_factory=lambda: defaultdict(list))

    def labs(self, pid: int) -> tuple[d.LabResult, ...]:
        return tuple(sorted(self.lab_rows[pid], key=lambda r: (r.when, int(r.source_id))))

    def activity(self, pid: int) -> tuple[d.ActivityResult, ...]:
        return tuple(sorted(self.activity_rows[pid], key=lambda r: r.when))

    def statuses(self, pid: int) -> tuple[d.StatusObservation, ...]:
        return tuple(sorted(self.status_rows[pid], key=lambda r: r.when))


_STATUS_KINDS = ("pregnancy", "breastfeeding", "pregnancy-intention")


def _observations(s: Session, ids: list[int]) -> _Observed:
    o = m.Observation
    rows = s.execute(
        select(
            o.patient_id, o.id, o.kind, o.analyte, o.code, o.value, o.unit, o.value_text, o.original_value,
            o.original_unit, o.ref_low, o.ref_high, o.below_detection, o.effective,
        ).where(o.patient_id.in_(ids), o.current.is_(True))
    )  # fmt: skip
    out = _Observed()
    for pid, oid, kind, analyte, code, value, unit, vtext, ovalue, ounit, low, high, below, when in rows:
        if kind == "lab" and value is not None and analyte:
            out.lab_rows[pid].append(
                d.LabResult(
                    analyte=analyte,
                    value=value,
                    unit=unit or "",
                    when=when,
                    source_id=str(oid),
                    code=code,
                    original_value=_float(ovalue),
                    original_unit=ounit,
                    ref_low=low,
                    ref_high=high,
                    below_detection=below,
                )
            )
        elif kind == "tpmt-activity" and value is not None:
            out.activity_rows[pid].append(d.ActivityResult(value, unit or "", when, str(oid), vtext or ""))
        elif kind == "status" and analyte in _STATUS_KINDS:
            flag = None if vtext in (None, "unknown") else vtext == "true"
            out.status_rows[pid].append(d.StatusObservation(cast(Any, analyte), flag, when, str(oid)))
        elif kind == "screening" and analyte:
            out.screening[pid].append((analyte, when))
            if vtext in ("positive", "negative"):
                out.screening_results[pid].append((analyte, when, vtext == "positive"))
    return out


def _medications(s: Session, ids: list[int]) -> dict[int, tuple[d.MedicationEntry, ...]]:
    md = m.Medication
    q = select(
        md.patient_id, md.id, md.drug, md.name, md.status, md.start, md.end, md.daily_dose_mg, md.kind, md.rxnorm,
        md.reason, md.status_date,
    ).where(md.patient_id.in_(ids))  # fmt: skip
    return {
        pid: tuple(
            d.MedicationEntry(
                drug=x.drug,
                name=x.name,
                status=cast(Any, x.status),
                start=x.start,
                end=x.end,
                daily_dose_mg=x.daily_dose_mg,
                kind=cast(Any, x.kind),
                rxnorm=x.rxnorm,
                source_id=str(x.id),
                reason=x.reason or "",
                status_date=x.status_date,
            )
            for x in rows
        )
        for pid, rows in _group(s.execute(q)).items()
    }


def _genotypes(s: Session, ids: list[int]) -> dict[int, tuple[d.GenotypeResult, ...]]:
    g = m.Genotype
    q = select(g.patient_id, g.id, g.gene, g.diplotype, g.phenotype, g.effective).where(g.patient_id.in_(ids))
    return {
        pid: tuple(d.GenotypeResult(x.gene, x.diplotype, x.phenotype, x.effective, str(x.id)) for x in rows)
        for pid, rows in _group(s.execute(q)).items()
    }


def _conditions(s: Session, ids: list[int]) -> dict[int, tuple[d.Condition, ...]]:
    c = m.Condition
    q = select(c.patient_id, c.id, c.key, c.text, c.active, c.onset, c.code).where(c.patient_id.in_(ids))
    return {
        pid: tuple(d.Condition(x.key, x.text, x.active, x.onset, x.code, str(x.id)) for x in rows)
        for pid, rows in _group(s.execute(q)).items()
    }


def _allergies(s: Session, ids: list[int]) -> dict[int, tuple[d.Allergy, ...]]:
    a = m.Allergy
    q = select(a.patient_id, a.id, a.drug, a.text).where(a.patient_id.in_(ids))
    return {
        pid: tuple(d.Allergy(x.drug, x.text, str(x.id)) for x in rows) for pid, rows in _group(s.execute(q)).items()
    }


def _vaccinations(s: Session, ids: list[int]) -> dict[int, tuple[d.Vaccination, ...]]:
    i = m.Immunization
    q = select(i.patient_id, i.id, i.vaccine, i.live, i.name, i.when, i.status, i.live_unknown)
    return {
        pid: tuple(
            d.Vaccination(x.vaccine, x.live, x.name, x.when, cast(Any, x.status), str(x.id), bool(x.live_unknown))
            for x in rows
        )
        for pid, rows in _group(s.execute(q.where(i.patient_id.in_(ids)))).items()
    }


def _symptoms(s: Session, ids: list[int]) -> dict[int, tuple[d.Symptom, ...]]:
    y = m.Symptom
    q = select(y.patient_id, y.id, y.key, y.text, y.when).where(y.patient_id.in_(ids))
    return {
        pid: tuple(sorted((d.Symptom(x.key, x.text, x.when, str(x.id)) for x in rows), key=lambda r: r.when))
        for pid, rows in _group(s.execute(q)).items()
    }


def _dismissed_follow_ups(s: Session, ids: list[int]) -> dict[int, tuple[tuple[str, str, date], ...]]:
    fd = m.FollowUpDismissal
    q = select(fd.patient_id, fd.key, fd.reason, fd.created_at).where(fd.patient_id.in_(ids)).order_by(fd.id)
    return {
        pid: tuple((x.key, x.reason, x.created_at.date()) for x in rows) for pid, rows in _group(s.execute(q)).items()
    }


def _group(rows: Any) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {}
    for r in rows:
        out.setdefault(r[0], []).append(r)
    return out


def _float(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None
