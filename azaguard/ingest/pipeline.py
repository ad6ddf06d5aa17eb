"""Apply parsed items to the store: one transaction per batch, idempotent, nothing lost.

- A record whose source key is already stored with the same content is a duplicate (no change).
- A record the source marks as a correction (or an update of a preliminary result) replaces the
  current version; the earlier version stays as history (`current = False`).
- A different record under an existing key without a correction status is a conflict: it goes
  to quarantine rather than silently overwriting a result someone may have acted on.
- Unknown patients, unknown codes or units, impossible values and malformed records go to
  quarantine with their reason and original text, and can be re-processed after a fix.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from azaguard import domain as d
from azaguard.ingest.items import Item, Parsed, Reject
from azaguard.store import models as m
from azaguard.store.records import now

CHUNK = 500
OBSERVATION_KINDS = {"lab", "tpmt-activity", "status", "screening"}


@dataclass
class ImportSummary:
    batch_id: int | None = None
    counts: Counter[str] = field(default_factory=Counter)
    patients: set[int] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        keys = ("imported", "duplicates", "corrected", "quarantined", "patients_created", "deleted")
        return {"batch_id": self.batch_id, **{k: self.counts.get(k, 0) for k in keys}}


def _obs_fields(item: Item) -> dict[str, Any]:
    p = item.payload
    if item.kind == "lab":
        assert isinstance(p, d.LabResult)
        return {
            "kind": "lab",
            "analyte": p.analyte,
            "code": p.code,
            "value": p.value,
            "unit": p.unit,
            "original_value": None if p.original_value is None else f"{p.original_value:g}",
            "original_unit": p.original_unit,
            "ref_low": p.ref_low,
            "ref_high": p.ref_high,
            "below_detection": p.below_detection,
            "effective": p.when,
            "abnormal_flag": item.abnormal_flag,
        }
    if item.kind == "tpmt-activity":
        assert isinstance(p, d.ActivityResult)
        return {
            "kind": "tpmt-activity",
            "analyte": "tpmt-activity",
            "value": p.value,
            "unit": p.unit,
            "effective": p.when,
        }
    if item.kind == "status":
        assert isinstance(p, d.StatusObservation)
        text = "unknown" if p.value is None else ("true" if p.value else "false")
        return {"kind": "status", "analyte": p.kind, "value_text": text, "effective": p.when}
    key, when, positive = p
    polarity = None if positive is None else ("positive" if positive else "negative")
    return {"kind": "screening", "analyte": key, "effective": when, "value_text": polarity}


def _hash(fields: dict[str, Any]) -> str:
    return hashlib.sha1(repr(sorted(fields.items())).encode()).hexdigest()


def apply(
    s: Session,
    parsed: Parsed,
    source: str,
    username: str = "",
    today: date | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Write one parsed batch inside the caller's transaction."""
    today = today or date.today()
    stamp = now()
    batch = m.ImportBatch(started_at=stamp, source=source[:300], format=parsed.format, counts={}, username=username)
    s.add(batch)
    s.flush()
    summary = ImportSummary(batch_id=batch.id)
    quarantine: list[dict[str, Any]] = []

    def reject(r: Reject) -> None:
        quarantine.append(
            {
                "batch_id": batch.id,
                "received_at": stamp,
                "format": parsed.format,
                "record_ref": r.ref[:200],
                "patient_identifier": r.patient,
                "reason": r.reason,
                "original": r.original,
                "state": "open",
            }
        )

    for r in parsed.rejects:
        reject(r)

    # Patients: create or update those the batch describes; everything else must already exist.
    identifiers = {it.patient for it in parsed.items}
    known = _patient_ids(s, identifiers)
    for it in parsed.items:
        if it.kind != "patient":
            continue
        demo = it.payload
        pid = known.get(it.patient)
        if pid is None:
            row = m.Patient(
                identifier=it.patient,
                name=demo.get("name") or "",
                birth_date=demo.get("birth_date"),
                sex=demo.get("sex"),
                created_at=stamp,
            )
            s.add(row)
            s.flush()
            known[it.patient] = row.id
            summary.counts["patients_created"] += 1
        else:
            stored = s.get(m.Patient, pid)
            assert stored is not None
            stored.name = demo.get("name") or stored.name
            stored.birth_date = demo.get("birth_date") or stored.birth_date
            stored.sex = demo.get("sex") or stored.sex
        summary.patients.add(known[it.patient])

    obs_items: list[Item] = []
    other: list[Item] = []
    for it in parsed.items:
        if it.kind == "patient":
            continue
        if it.patient not in known:
            reject(Reject(it.ref, f"unknown patient '{it.patient}'", it.original, it.patient))
            continue
        when = _item_date(it)
        if when is not None and when > today:
            reject(Reject(it.ref, f"impossible date {when.isoformat()} (in the future)", it.original, it.patient))
            continue
        (obs_items if it.kind in OBSERVATION_KINDS else other).append(it)

    done = 0
    for start in range(0, len(obs_items), CHUNK):
        chunk = obs_items[start : start + CHUNK]
        _apply_observations(s, chunk, known, stamp, summary, reject)
        done += len(chunk)
        if progress:
            progress(len(chunk))
    for it in other:
        _apply_other(s, it, known[it.patient], stamp, summary)
        if progress:
            progress(1)

    if quarantine:
        s.execute(insert(m.QuarantineItem), quarantine)
    summary.counts["quarantined"] += len(quarantine)
    batch.finished_at = now()
    batch.counts = summary.as_dict()
    return summary


def _item_date(it: Item) -> date | None:
    p = it.payload
    for attr in ("when", "start", "onset"):
        v = getattr(p, attr, None)
        if isinstance(v, date):
            return v
    if isinstance(p, tuple) and len(p) >= 2 and isinstance(p[1], date):
        return p[1]
    return None


def _patient_ids(s: Session, identifiers: Iterable[str]) -> dict[str, int]:
    ids = list(identifiers)
    out: dict[str, int] = {}
    for i in range(0, len(ids), CHUNK):
        rows = s.execute(select(m.Patient.identifier, m.Patient.id).where(m.Patient.identifier.in_(ids[i : i + CHUNK])))
        out.update({ident: pid for ident, pid in rows})
    return out


def _apply_observations(
    s: Session,
    chunk: list[Item],
    known: dict[str, int],
    stamp: Any,
    summary: ImportSummary,
    reject: Callable[[Reject], None],
) -> None:
    keys = list({it.source_key for it in chunk})
    # source_key -> (row id, content hash, status) of the current version
    existing: dict[str, tuple[int | None, str, str]] = {}
    for key, row_id, digest, status in s.execute(
        select(m.Observation.source_key, m.Observation.id, m.Observation.content_hash, m.Observation.status).where(
            m.Observation.source_key.in_(keys), m.Observation.current.is_(True)
        )
    ):
        existing[key] = (row_id, digest, status)
    versions: dict[str, int] = {}
    for key, version in s.execute(
        select(m.Observation.source_key, m.Observation.version).where(m.Observation.source_key.in_(keys))
    ):
        versions[key] = max(versions.get(key, 0), version)
    new_rows: list[dict[str, Any]] = []
    retire: list[int] = []
    for it in chunk:
        pid = known[it.patient]
        old = existing.get(it.source_key)
        if it.payload is None:  # deletion (HL7 OBX-11 D/W)
            if old is not None:
                if old[0] is not None:
                    retire.append(old[0])
                existing.pop(it.source_key)
                summary.counts["deleted"] += 1
                summary.patients.add(pid)
            else:
                summary.counts["duplicates"] += 1
            continue
        fields = _obs_fields(it)
        digest = _hash(fields)
        if old is not None:
            old_id, old_hash, old_status = old
            if old_hash == digest:
                summary.counts["duplicates"] += 1
                continue
            if not (it.correction or old_status == "preliminary"):
                reject(
                    Reject(
                        it.ref,
                        "conflicts with the stored result of the same id and is not marked as a correction",
                        it.original,
                        it.patient,
                    )
                )
                continue
            if old_id is not None:
                retire.append(old_id)
            else:  # corrected twice within one batch: drop the superseded row before inserting
                new_rows[:] = [r for r in new_rows if r["source_key"] != it.source_key] + [
                    {**r, "current": False} for r in new_rows if r["source_key"] == it.source_key
                ]
            summary.counts["corrected"] += 1
        else:
            summary.counts["imported"] += 1
        version = versions.get(it.source_key, 0) + 1
        versions[it.source_key] = version
        status = "corrected" if it.correction else "final"
        new_row: dict[str, Any] = {
            "patient_id": pid,
            "source_key": it.source_key,
            "version": version,
            "current": True,
            "content_hash": digest,
            "status": status,
            "review_state": "pending",
            "received_at": stamp,
            "code": "",
            "below_detection": False,
            **fields,
        }
        new_rows.append(new_row)
        existing[it.source_key] = (None, digest, status)
        summary.patients.add(pid)
    if retire:
        s.execute(update(m.Observation).where(m.Observation.id.in_(retire)).values(current=False))
    if new_rows:
        s.execute(insert(m.Observation), new_rows)


def _apply_other(s: Session, it: Item, pid: int, stamp: Any, summary: ImportSummary) -> None:
    p = it.payload
    values: dict[str, Any]
    model: type[Any]
    if it.kind == "medication":
        model = m.Medication
        values = {
            "drug": p.drug,
            "name": p.name[:200],
            "rxnorm": p.rxnorm,
            "kind": p.kind,
            "status": p.status,
            "start": p.start,
            "end": p.end,
            "daily_dose_mg": p.daily_dose_mg,
            "created_at": stamp,
        }
    elif it.kind == "genotype":
        model = m.Genotype
        values = {"gene": p.gene, "diplotype": p.diplotype, "phenotype": p.phenotype, "effective": p.when}
    elif it.kind == "condition":
        model = m.Condition
        values = {"key": p.key, "text": p.text[:200], "code": p.code, "active": p.active, "onset": p.onset}
    elif it.kind == "allergy":
        model = m.Allergy
        values = {"drug": p.drug, "text": p.text[:200]}
    elif it.kind == "immunization":
        model = m.Immunization
        values = {"vaccine": p.vaccine, "live": p.live, "name": p.name[:200], "when": p.when, "status": p.status}
    elif it.kind == "symptom":
        model = m.Symptom
        values = {"key": p.key, "text": p.text[:200], "when": p.when, "reported_by": "import"}
    else:
        raise ValueError(f"unknown item kind {it.kind}")
    row = s.scalar(select(model).where(model.source_key == it.source_key))
    if row is None:
        s.add(model(patient_id=pid, source_key=it.source_key, **values))
        summary.counts["imported"] += 1
    else:
        changed = {k: v for k, v in values.items() if k != "created_at" and getattr(row, k) != v}
        if not changed:
            summary.counts["duplicates"] += 1
            return
        for k, v in changed.items():
            setattr(row, k, v)
        summary.counts["corrected"] += 1
    summary.patients.add(pid)
