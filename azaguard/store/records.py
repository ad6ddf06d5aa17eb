"""Rows <-> domain records: the store's side of "readers turn the outside world into records".

`load_record` rebuilds exactly the PatientRecord the engine consumes, from current rows only
(a corrected result's earlier version stays in the table as history but is not assessed).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from azaguard import domain as d
from azaguard.store import models as m


def now() -> datetime:
    return datetime.now().replace(microsecond=0)


def load_record(s: Session, patient_id: int) -> d.PatientRecord:
    p = s.get(m.Patient, patient_id)
    if p is None:
        raise KeyError(patient_id)
    obs = s.scalars(
        select(m.Observation).where(m.Observation.patient_id == patient_id, m.Observation.current.is_(True))
    ).all()
    labs, activity, statuses, screening, screening_results = [], [], [], [], []
    for o in obs:
        if o.kind == "lab" and o.value is not None and o.analyte:
            labs.append(
                d.LabResult(
                    analyte=o.analyte,
                    value=o.value,
                    unit=o.unit or "",
                    when=o.effective,
                    source_id=str(o.id),
                    code=o.code,
                    original_value=_float(o.original_value),
                    original_unit=o.original_unit,
                    ref_low=o.ref_low,
                    ref_high=o.ref_high,
                    below_detection=o.below_detection,
                )
            )
        elif o.kind == "tpmt-activity" and o.value is not None:
            activity.append(d.ActivityResult(o.value, o.unit or "", o.effective, str(o.id)))
        elif o.kind == "status" and o.analyte in ("pregnancy", "breastfeeding", "pregnancy-intention"):
            value = None if o.value_text in (None, "unknown") else o.value_text == "true"
            statuses.append(d.StatusObservation(o.analyte, value, o.effective, str(o.id)))  # type: ignore[arg-type]
        elif o.kind == "screening" and o.analyte:
            screening.append((o.analyte, o.effective))
            if o.value_text in ("positive", "negative"):
                screening_results.append((o.analyte, o.effective, o.value_text == "positive"))
    meds = s.scalars(select(m.Medication).where(m.Medication.patient_id == patient_id)).all()
    genos = s.scalars(select(m.Genotype).where(m.Genotype.patient_id == patient_id)).all()
    conds = s.scalars(select(m.Condition).where(m.Condition.patient_id == patient_id)).all()
    alls = s.scalars(select(m.Allergy).where(m.Allergy.patient_id == patient_id)).all()
    imms = s.scalars(select(m.Immunization).where(m.Immunization.patient_id == patient_id)).all()
    syms = s.scalars(select(m.Symptom).where(m.Symptom.patient_id == patient_id)).all()
    return d.PatientRecord(
        patient_id=p.identifier,
        birth_date=p.birth_date,
        sex=p.sex,
        name=p.name,
        labs=tuple(sorted(labs, key=lambda r: (r.when, int(r.source_id)))),
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
            )
            for x in meds
        ),
        genotypes=tuple(d.GenotypeResult(g.gene, g.diplotype, g.phenotype, g.effective, str(g.id)) for g in genos),
        tpmt_activity=tuple(sorted(activity, key=lambda a: a.when)),
        conditions=tuple(d.Condition(c.key, c.text, c.active, c.onset, c.code, str(c.id)) for c in conds),
        allergies=tuple(d.Allergy(a.drug, a.text, str(a.id)) for a in alls),
        vaccinations=tuple(
            d.Vaccination(i.vaccine, i.live, i.name, i.when, i.status, str(i.id))  # type: ignore[arg-type]
            for i in imms
        ),
        symptoms=tuple(sorted((d.Symptom(x.key, x.text, x.when, str(x.id)) for x in syms), key=lambda x: x.when)),
        statuses=tuple(sorted(statuses, key=lambda x: x.when)),
        screening_done=tuple(screening),
        screening_results=tuple(screening_results),
    )


def _float(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None
