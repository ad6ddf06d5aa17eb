"""Rows <-> domain records: the store's side of "readers turn the outside world into records".

`load_record` rebuilds exactly the PatientRecord the engine consumes, from current rows only
(a corrected result's earlier version stays in the table as history but is not assessed).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, cast

from sqlalchemy import BindParameter, bindparam, select
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


# What a page lists of a lab result, in this order (load_record_and_labs)
LAB_FIELDS = (
    "id", "kind", "analyte", "code", "value", "unit", "original_value", "original_unit", "effective", "status",
    "review_state",
)  # fmt: skip


def load_record_and_labs(s: Session, patient_id: int) -> tuple[d.PatientRecord, list[tuple[Any, ...]]]:
    """One patient's record and their current lab results as rows of `LAB_FIELDS` (oldest first,
    for a page that lists them), from one read of the observations."""
    labs: list[tuple[Any, ...]] = []
    records = _load_chunk(s, [patient_id], labs)
    if patient_id not in records:
        raise KeyError(patient_id)
    labs.sort(key=lambda r: (r[8], r[0]))  # effective, id
    return records[patient_id], labs


# Every statement here is built once, with bound parameters: building a select and working out its
# cache key costs SQLAlchemy more CPU than SQLite spends running it (a patient page reads ten tables).
_IDS: BindParameter[list[int]] = bindparam("ids", expanding=True)
_P = m.core(m.Patient).c
_PEOPLE = select(_P.id, _P.identifier, _P.birth_date, _P.sex, _P.name).where(_P.id.in_(_IDS))


def _load_chunk(s: Session, ids: list[int], labs: list[tuple[Any, ...]] | None = None) -> dict[int, d.PatientRecord]:
    """One query per table for these patients, then one PatientRecord each (`labs`: a list to
    collect the current lab rows in, as `load_record_and_labs` returns them)."""
    observed = _observations(s, ids, labs)
    medications = _medications(s, ids)
    genotypes = _genotypes(s, ids)
    conditions = _conditions(s, ids)
    allergies = _allergies(s, ids)
    vaccinations = _vaccinations(s, ids)
    symptoms = _symptoms(s, ids)
    dismissed = _dismissed_follow_ups(s, ids)
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
        for p in s.execute(_PEOPLE, {"ids": ids})
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


_O = m.core(m.Observation).c
_OBSERVATIONS = select(
    _O.patient_id, _O.id, _O.kind, _O.analyte, _O.code, _O.value, _O.unit, _O.value_text, _O.original_value,
    _O.original_unit, _O.ref_low, _O.ref_high, _O.below_detection, _O.effective, _O.status, _O.review_state,
).where(_O.patient_id.in_(_IDS), _O.current.is_(True))  # fmt: skip


def _observations(s: Session, ids: list[int], labs: list[tuple[Any, ...]] | None = None) -> _Observed:
    out = _Observed()
    for row in s.execute(_OBSERVATIONS, {"ids": ids}):
        pid, oid, kind, analyte, code, value, unit, vtext, ovalue, ounit, low, high, below, when, status, review = row
        if kind == "lab" and labs is not None:
            labs.append((oid, kind, analyte, code, value, unit, ovalue, ounit, when, status, review))  # LAB_FIELDS
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


_MD = m.core(m.Medication).c
_MEDICATIONS = select(
    _MD.patient_id, _MD.id, _MD.drug, _MD.name, _MD.status, _MD.start, _MD.end, _MD.daily_dose_mg, _MD.kind, _MD.rxnorm,
    _MD.reason, _MD.status_date,
).where(_MD.patient_id.in_(_IDS))  # fmt: skip


def _medications(s: Session, ids: list[int]) -> dict[int, tuple[d.MedicationEntry, ...]]:
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
        for pid, rows in _group(s.execute(_MEDICATIONS, {"ids": ids})).items()
    }


_G = m.core(m.Genotype).c
_GENOTYPES = select(_G.patient_id, _G.id, _G.gene, _G.diplotype, _G.phenotype, _G.effective).where(
    _G.patient_id.in_(_IDS)
)


def _genotypes(s: Session, ids: list[int]) -> dict[int, tuple[d.GenotypeResult, ...]]:
    return {
        pid: tuple(d.GenotypeResult(x.gene, x.diplotype, x.phenotype, x.effective, str(x.id)) for x in rows)
        for pid, rows in _group(s.execute(_GENOTYPES, {"ids": ids})).items()
    }


_C = m.core(m.Condition).c
_CONDITIONS = select(_C.patient_id, _C.id, _C.key, _C.text, _C.active, _C.onset, _C.code).where(_C.patient_id.in_(_IDS))


def _conditions(s: Session, ids: list[int]) -> dict[int, tuple[d.Condition, ...]]:
    return {
        pid: tuple(d.Condition(x.key, x.text, x.active, x.onset, x.code, str(x.id)) for x in rows)
        for pid, rows in _group(s.execute(_CONDITIONS, {"ids": ids})).items()
    }


_A = m.core(m.Allergy).c
_ALLERGIES = select(_A.patient_id, _A.id, _A.drug, _A.text).where(_A.patient_id.in_(_IDS))


def _allergies(s: Session, ids: list[int]) -> dict[int, tuple[d.Allergy, ...]]:
    return {
        pid: tuple(d.Allergy(x.drug, x.text, str(x.id)) for x in rows)
        for pid, rows in _group(s.execute(_ALLERGIES, {"ids": ids})).items()
    }


_I = m.core(m.Immunization).c
_VACCINATIONS = select(_I.patient_id, _I.id, _I.vaccine, _I.live, _I.name, _I.when, _I.status, _I.live_unknown).where(
    _I.patient_id.in_(_IDS)
)


def _vaccinations(s: Session, ids: list[int]) -> dict[int, tuple[d.Vaccination, ...]]:
    return {
        pid: tuple(
            d.Vaccination(x.vaccine, x.live, x.name, x.when, cast(Any, x.status), str(x.id), bool(x.live_unknown))
            for x in rows
        )
        for pid, rows in _group(s.execute(_VACCINATIONS, {"ids": ids})).items()
    }


_Y = m.core(m.Symptom).c
_SYMPTOMS = select(_Y.patient_id, _Y.id, _Y.key, _Y.text, _Y.when).where(_Y.patient_id.in_(_IDS))


def _symptoms(s: Session, ids: list[int]) -> dict[int, tuple[d.Symptom, ...]]:
    return {
        pid: tuple(sorted((d.Symptom(x.key, x.text, x.when, str(x.id)) for x in rows), key=lambda r: r.when))
        for pid, rows in _group(s.execute(_SYMPTOMS, {"ids": ids})).items()
    }


_FD = m.core(m.FollowUpDismissal).c
_DISMISSED = (
    select(_FD.patient_id, _FD.key, _FD.reason, _FD.created_at).where(_FD.patient_id.in_(_IDS)).order_by(_FD.id)
)


def _dismissed_follow_ups(s: Session, ids: list[int]) -> dict[int, tuple[tuple[str, str, date], ...]]:
    return {
        pid: tuple((x.key, x.reason, x.created_at.date()) for x in rows)
        for pid, rows in _group(s.execute(_DISMISSED, {"ids": ids})).items()
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
