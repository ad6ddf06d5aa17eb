"""Rows <-> domain records: the store's side of "readers turn the outside world into records".

`load_record` rebuilds exactly the PatientRecord the engine consumes, from current rows only
(a corrected result's earlier version stays in the table as history but is not assessed).
"""

from __future__ import annotations

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
    from collections import defaultdict

    pats = s.execute(
        select(m.Patient.id, m.Patient.identifier, m.Patient.birth_date, m.Patient.sex, m.Patient.name).where(
            m.Patient.id.in_(ids)
        )
    ).all()
    o = m.Observation
    obs = s.execute(
        select(
            o.patient_id, o.id, o.kind, o.analyte, o.code, o.value, o.unit, o.value_text, o.original_value,
            o.original_unit, o.ref_low, o.ref_high, o.below_detection, o.effective,
        ).where(o.patient_id.in_(ids), o.current.is_(True))
    ).all()  # fmt: skip
    labs: dict[int, list[d.LabResult]] = defaultdict(list)
    activity: dict[int, list[d.ActivityResult]] = defaultdict(list)
    statuses: dict[int, list[d.StatusObservation]] = defaultdict(list)
    screening: dict[int, list[tuple[str, date]]] = defaultdict(list)
    screening_results: dict[int, list[tuple[str, date, bool]]] = defaultdict(list)
    for pid, oid, kind, analyte, code, value, unit, vtext, ovalue, ounit, low, high, below, when in obs:
        if kind == "lab" and value is not None and analyte:
            labs[pid].append(
                d.LabResult(analyte, value, unit or "", when, str(oid), code, _float(ovalue), ounit, low, high, below)
            )
        elif kind == "tpmt-activity" and value is not None:
            activity[pid].append(d.ActivityResult(value, unit or "", when, str(oid), vtext or ""))
        elif kind == "status" and analyte in ("pregnancy", "breastfeeding", "pregnancy-intention"):
            flag = None if vtext in (None, "unknown") else vtext == "true"
            statuses[pid].append(d.StatusObservation(cast(Any, analyte), flag, when, str(oid)))
        elif kind == "screening" and analyte:
            screening[pid].append((analyte, when))
            if vtext in ("positive", "negative"):
                screening_results[pid].append((analyte, when, vtext == "positive"))
    md, g, c, a, i, y = m.Medication, m.Genotype, m.Condition, m.Allergy, m.Immunization, m.Symptom
    med_cols = (
        md.patient_id,
        md.id,
        md.drug,
        md.name,
        md.status,
        md.start,
        md.end,
        md.daily_dose_mg,
        md.kind,
        md.rxnorm,
        md.reason,
        md.status_date,
    )
    meds = _group(s.execute(select(*med_cols).where(md.patient_id.in_(ids))).all())
    genos = _group(
        s.execute(
            select(g.patient_id, g.id, g.gene, g.diplotype, g.phenotype, g.effective).where(g.patient_id.in_(ids))
        ).all()
    )
    conds = _group(
        s.execute(
            select(c.patient_id, c.id, c.key, c.text, c.active, c.onset, c.code).where(c.patient_id.in_(ids))
        ).all()
    )
    alls = _group(s.execute(select(a.patient_id, a.id, a.drug, a.text).where(a.patient_id.in_(ids))).all())
    imms = _group(
        s.execute(
            select(i.patient_id, i.id, i.vaccine, i.live, i.name, i.when, i.status, i.live_unknown).where(
                i.patient_id.in_(ids)
            )
        ).all()
    )
    syms = _group(s.execute(select(y.patient_id, y.id, y.key, y.text, y.when).where(y.patient_id.in_(ids))).all())
    fd = m.FollowUpDismissal
    dismissed = _group(
        s.execute(
            select(fd.patient_id, fd.key, fd.reason, fd.created_at).where(fd.patient_id.in_(ids)).order_by(fd.id)
        ).all()
    )
    out: dict[int, d.PatientRecord] = {}
    for p in pats:
        pid = p.id
        out[pid] = d.PatientRecord(
            patient_id=p.identifier,
            birth_date=p.birth_date,
            sex=p.sex,
            name=p.name,
            labs=tuple(sorted(labs[pid], key=lambda r: (r.when, int(r.source_id)))),
            medications=tuple(
                d.MedicationEntry(
                    x.drug,
                    x.name,
                    cast(Any, x.status),
                    x.start,
                    x.end,
                    x.daily_dose_mg,
                    cast(Any, x.kind),
                    x.rxnorm,
                    str(x.id),
                    x.reason or "",
                    x.status_date,
                )
                for x in meds.get(pid, [])
            ),
            genotypes=tuple(
                d.GenotypeResult(x.gene, x.diplotype, x.phenotype, x.effective, str(x.id)) for x in genos.get(pid, [])
            ),
            tpmt_activity=tuple(sorted(activity[pid], key=lambda r: r.when)),
            conditions=tuple(
                d.Condition(x.key, x.text, x.active, x.onset, x.code, str(x.id)) for x in conds.get(pid, [])
            ),
            allergies=tuple(d.Allergy(x.drug, x.text, str(x.id)) for x in alls.get(pid, [])),
            vaccinations=tuple(
                d.Vaccination(x.vaccine, x.live, x.name, x.when, cast(Any, x.status), str(x.id), bool(x.live_unknown))
                for x in imms.get(pid, [])
            ),
            symptoms=tuple(
                sorted((d.Symptom(x.key, x.text, x.when, str(x.id)) for x in syms.get(pid, [])), key=lambda r: r.when)
            ),
            statuses=tuple(sorted(statuses[pid], key=lambda r: r.when)),
            screening_done=tuple(screening[pid]),
            screening_results=tuple(screening_results[pid]),
            dismissed_follow_ups=tuple((x.key, x.reason, x.created_at.date()) for x in dismissed.get(pid, [])),
        )
    return out


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
