"""Apply parsed items to the store: one transaction per batch, idempotent, nothing lost.

- A record with the same content as a stored version of its source key (the current one or
  history) is a duplicate: replaying old messages never brings back a corrected or deleted result.
- A record the source marks as a correction, or a final result replacing a preliminary one,
  becomes the current version; the earlier version stays as history (`current = False`).
- A different record under an existing key without a correction status is a conflict, and a
  preliminary result never replaces a final one: both go to quarantine rather than silently
  overwriting a result someone may have acted on. A source key never moves between patients.
- Unknown patients, unknown codes or units, impossible values and malformed records go to
  quarantine with their reason and original text (once: a re-sent record already waiting there is
  not listed twice), and can be re-processed after a fix. docs/import.md has the full rules.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import date
from operator import itemgetter
from typing import Any, cast

from sqlalchemy import Table, insert, select, text, update
from sqlalchemy.orm import Session

from azaguard import domain as d
from azaguard.ingest.items import Item, Parsed, Reject
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.store.records import now

CHUNK = 500
OBSERVATION_KINDS = {"lab", "tpmt-activity", "status", "screening"}


@dataclass
class ImportSummary:
    batch_id: int | None = None
    counts: Counter[str] = field(default_factory=Counter)
    patients: set[int] = field(default_factory=set)
    rejects: list[Reject] = field(default_factory=list)  # why each quarantined record was refused

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
            "abnormal_flag": None if item.abnormal_flag is None else _text(item.abnormal_flag)[:8],
        }
    if item.kind == "tpmt-activity":
        assert isinstance(p, d.ActivityResult)
        return {
            "kind": "tpmt-activity",
            "analyte": "tpmt-activity",
            "value": p.value,
            "unit": p.unit,
            "value_text": (p.method or "")[:200] or None,  # the laboratory's assay decides the bands
            "effective": p.when,
        }
    if item.kind == "status":
        assert isinstance(p, d.StatusObservation)
        text = "unknown" if p.value is None else ("true" if p.value else "false")
        return {"kind": "status", "analyte": p.kind, "value_text": text, "effective": p.when}
    key, when, positive = p
    polarity = None if positive is None else ("positive" if positive else "negative")
    return {"kind": "screening", "analyte": key, "effective": when, "value_text": polarity}


def _text(value: str) -> str:
    """Text as PostgreSQL can store it (no NUL characters; SQLite would keep them)."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _fit(model: Any, values: dict[str, Any]) -> dict[str, Any]:
    """Strings cut to their column's size, as PostgreSQL enforces it (SQLite does not)."""
    columns = model.__table__.c
    for k, v in values.items():
        if isinstance(v, str):
            length = getattr(columns[k].type, "length", None)
            v = _text(v)
            values[k] = v[:length] if length else v
    return values


def _hash(fields: dict[str, Any]) -> str:
    """Content identity of an observation: its values in `_obs_fields` order (kind first)."""
    return hashlib.sha1(repr(tuple(fields.values())).encode()).hexdigest()


def _insert_rows(s: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert many rows with the driver's fastest path: COPY on PostgreSQL (psycopg), one
    executemany on SQLite. SQLAlchemy's per-row parameter handling would cost more than the rest
    of an import. Values still go through each column type's bind processor, so they are stored
    exactly as an ORM or Core insert would store them. Every row has the same keys."""
    conn = s.connection()
    dialect = conn.dialect
    if dialect.paramstyle not in ("qmark", "format", "pyformat"):
        s.execute(table.insert(), rows)
        return
    cols = list(rows[0])
    getter = itemgetter(*cols)
    quote = dialect.identifier_preparer.quote
    target = f"{dialect.identifier_preparer.format_table(table)} ({', '.join(quote(c) for c in cols)})"
    procs = [(i, p) for i, c in enumerate(cols) if (p := table.c[c].type.bind_processor(dialect)) is not None]
    params: list[tuple[Any, ...]]
    if procs:
        # Few distinct values per column (one timestamp, two booleans, a few dates): convert each once.
        seen: list[dict[Any, Any]] = [{} for _ in procs]
        params = []
        for r in rows:
            values = list(getter(r))
            for (i, p), cache in zip(procs, seen, strict=True):
                v = values[i]
                try:
                    values[i] = cache[v]
                except KeyError:
                    values[i] = cache[v] = p(v)
                except TypeError:  # unhashable
                    values[i] = p(v)
            params.append(tuple(values))
    else:
        params = [getter(r) for r in rows]
    raw = conn.connection.driver_connection
    if dialect.name == "postgresql" and dialect.driver == "psycopg" and raw is not None:
        with raw.cursor() as cur, cur.copy(f"COPY {target} FROM STDIN") as copy:
            for row in params:
                copy.write_row(row)
        return
    marker = "?" if dialect.paramstyle == "qmark" else "%s"
    conn.exec_driver_sql(f"INSERT INTO {target} VALUES ({', '.join([marker] * len(cols))})", params)


def apply(
    s: Session,
    parsed: Parsed,
    source: str,
    username: str = "",
    today: date | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Write one parsed batch inside the caller's transaction (all or nothing; `apply_in_chunks`
    commits a large batch in bounded chunks instead)."""
    today = today or date.today()
    stamp = now()
    _plan_each_lookup(s)
    batch = m.ImportBatch(started_at=stamp, source=source[:300], format=parsed.format, counts={}, username=username)
    s.add(batch)
    s.flush()
    summary = ImportSummary(batch_id=batch.id)
    quarantine: list[dict[str, Any]] = []
    reject = _rejecter(batch.id, parsed.format, stamp, summary, quarantine)
    for r in parsed.rejects:
        reject(r)
    items = _without_nul(parsed.items, reject)
    # Patients: create or update those the batch describes; everything else must already exist.
    known = _patient_ids(s, {it.patient for it in items})
    _apply_patients(s, [it for it in items if it.kind == "patient"], known, stamp, summary, reject)
    obs_items, other = _screen([it for it in items if it.kind != "patient"], known, today, reject)

    done = 0
    for start in range(0, len(obs_items), CHUNK):
        chunk = obs_items[start : start + CHUNK]
        _apply_observations(s, chunk, known, stamp, summary, reject)
        done += len(chunk)
        if progress:
            progress(len(chunk))
    for it in other:
        _apply_other(s, it, known[it.patient], stamp, summary, reject)
        if progress:
            progress(1)

    summary.counts["quarantined"] += len(quarantine)
    new_items = _not_yet_quarantined(s, quarantine)
    if new_items:
        s.execute(insert(m.QuarantineItem), new_items)
    batch.finished_at = now()
    batch.counts = summary.as_dict()
    return summary


def _plan_each_lookup(s: Session) -> None:
    if s.get_bind().dialect.name == "postgresql":
        # psycopg prepares repeated statements; PostgreSQL would then reuse a generic plan made while
        # the table looked small (a sequential scan) for every source-key lookup of a large batch,
        # which grows quadratically. Plan each lookup for the table as it is.
        s.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))


def _rejecter(
    batch_id: int, fmt: str, stamp: Any, summary: ImportSummary, quarantine: list[dict[str, Any]]
) -> Callable[[Reject], None]:
    def reject(r: Reject) -> None:
        summary.rejects.append(r)
        quarantine.append(
            {
                "batch_id": batch_id,
                "received_at": stamp,
                "format": fmt,
                "record_ref": _text(r.ref)[:200],
                "patient_identifier": _text(r.patient)[:64] if r.patient else None,
                "reason": _text(r.reason),
                "original": _text(r.original),
                "state": "open",
            }
        )

    return reject


def _without_nul(items: Iterable[Item], reject: Callable[[Reject], None]) -> list[Item]:
    """PostgreSQL refuses NUL in any text, queries included: such records cannot even be looked up."""
    out: list[Item] = []
    for it in items:
        if "\x00" in it.patient or "\x00" in it.source_key:
            why = "the patient identifier or record id contains a NUL character"
            reject(Reject(it.ref, why, it.original, it.patient))
        else:
            out.append(it)
    return out


def _apply_patients(
    s: Session,
    items: list[Item],
    known: dict[str, int],
    stamp: Any,
    summary: ImportSummary,
    reject: Callable[[Reject], None],
) -> None:
    """Create the patients the items describe, or update their demographics."""
    for it in items:
        demo = it.payload
        pid = known.get(it.patient)
        if pid is None:
            if len(it.patient) > 64:
                why = "patient identifier is longer than 64 characters"
                reject(Reject(it.ref, why, it.original, it.patient))
                continue
            row = m.Patient(
                identifier=it.patient,
                name=_text(demo.get("name") or "")[:200],
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
            stored.name = _text(demo.get("name") or "")[:200] or stored.name
            stored.birth_date = demo.get("birth_date") or stored.birth_date
            stored.sex = demo.get("sex") or stored.sex
        summary.patients.add(known[it.patient])


def _screen(
    items: list[Item], known: dict[str, int], today: date, reject: Callable[[Reject], None]
) -> tuple[list[Item], list[Item]]:
    """(observations, other records) that can be applied; unknown patients and future dates are rejected."""
    obs_items: list[Item] = []
    other: list[Item] = []
    for it in items:
        if len(it.source_key) > 200:  # the column's size; keep long ids distinct
            it = replace(it, source_key=f"{it.source_key[:150]}#{hashlib.sha1(it.source_key.encode()).hexdigest()}")
        if it.patient not in known:
            reject(Reject(it.ref, f"unknown patient '{it.patient}'", it.original, it.patient))
            continue
        when = _item_date(it)
        if when is not None and when > today:
            reject(Reject(it.ref, f"impossible date {when.isoformat()} (in the future)", it.original, it.patient))
            continue
        (obs_items if it.kind in OBSERVATION_KINDS else other).append(it)
    return obs_items, other


def _not_yet_quarantined(s: Session, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop records already waiting in quarantine (a re-sent file, a re-processing attempt that
    still fails): they are counted as quarantined again but not listed twice; an open item keeps
    the latest reason."""
    by_original: dict[str, dict[str, Any]] = {}
    for r in rows:
        by_original.setdefault(r["original"], r)
    originals = list(by_original)
    q = m.QuarantineItem
    for i in range(0, len(originals), CHUNK):
        for item_id, original, reason in s.execute(
            select(q.id, q.original, q.reason).where(q.state == "open", q.original.in_(originals[i : i + CHUNK]))
        ):
            row = by_original.pop(original, None)
            if row is not None and row["reason"] != reason:
                s.execute(update(q).where(q.id == item_id).values(reason=row["reason"]))
    return list(by_original.values())


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


@dataclass(slots=True)
class _Stored:
    """What the store (and this batch so far) holds under one source key."""

    patient_id: int
    version: int = 0  # highest version written
    hashes: set[str] = field(default_factory=set)  # content of every version, history included
    digest: str | None = None  # content of the current version; None when there is none (deleted)
    status: str = ""  # status of the current version
    row_id: int | None = None  # the current version's row, when it is already in the table
    row: dict[str, Any] | None = None  # the current version's row, when this batch inserts it


# Every column an imported observation row sets, so one executemany covers all kinds.
_ROW_DEFAULTS: dict[str, Any] = {
    "analyte": None,
    "code": "",
    "value": None,
    "unit": None,
    "value_text": None,
    "original_value": None,
    "original_unit": None,
    "ref_low": None,
    "ref_high": None,
    "below_detection": False,
    "abnormal_flag": None,
}


def _apply_observations(
    s: Session,
    chunk: list[Item],
    known: dict[str, int],
    stamp: Any,
    summary: ImportSummary,
    reject: Callable[[Reject], None],
) -> None:
    """Decide each observation against every stored version of its source key, then write.

    Rules (docs/import.md): the same content as any stored version (the current one or history)
    is a duplicate, so replaying old messages never resurrects a superseded or deleted result; a
    correction, or anything replacing a preliminary result, becomes the new current version; a
    preliminary result never replaces a final one; any other change is a conflict (quarantine);
    a source key is never shared across patients.
    """
    obs_t = m.Observation
    counts = summary.counts
    keys = list({it.source_key for it in chunk})
    stored: dict[str, _Stored] = {}
    for key, row_id, digest, status, pid, version, current in s.execute(
        select(
            obs_t.source_key,
            obs_t.id,
            obs_t.content_hash,
            obs_t.status,
            obs_t.patient_id,
            obs_t.version,
            obs_t.current,
        ).where(obs_t.source_key.in_(keys))
    ):
        st = stored.get(key)
        if st is None:
            st = stored[key] = _Stored(pid)
        st.hashes.add(digest)
        st.version = max(st.version, version)
        if current:
            st.digest, st.status, st.row_id = digest, status, row_id
    new_rows: list[dict[str, Any]] = []
    retire: list[int] = []

    def retire_current(st: _Stored) -> None:
        if st.row_id is not None:
            retire.append(st.row_id)
        elif st.row is not None:  # inserted earlier in this batch: it goes in as history
            st.row["current"] = False
        st.digest, st.row_id, st.row = None, None, None

    for it in chunk:
        pid = known[it.patient]
        key = it.source_key
        st = stored.get(key)
        if st is not None and st.patient_id != pid:
            why = f"record id '{key}' already belongs to another patient's result; not applied"
            reject(Reject(it.ref, why, it.original, it.patient))
            continue
        if it.payload is None:  # deletion (HL7 OBX-11 D/W, FHIR entered-in-error)
            if st is not None and st.digest is not None:
                retire_current(st)
                counts["deleted"] += 1
                summary.patients.add(pid)
            else:
                counts["duplicates"] += 1  # already deleted, or never received
            continue
        fields = _obs_fields(it)
        digest = _hash(fields)
        status = "corrected" if it.correction else "preliminary" if it.preliminary else "final"
        if st is None:
            st = stored[key] = _Stored(pid)
        if st.digest is not None:
            finalises = st.status == "preliminary" and status != "preliminary"
            if digest == st.digest and not finalises:
                counts["duplicates"] += 1
                continue
            if digest != st.digest and digest in st.hashes:
                counts["duplicates"] += 1  # a replay of a version that has since been replaced
                continue
            if it.preliminary and st.status != "preliminary":
                why = "a preliminary result arrived after the final result of the same test; the final result is kept"
                reject(Reject(it.ref, why, it.original, it.patient))
                continue
            if not (it.correction or st.status == "preliminary"):
                why = (
                    "arrived after a correction of the same result and is not itself a correction; "
                    "the corrected result is kept"
                    if st.status == "corrected"
                    else "conflicts with the stored result of the same id and is not marked as a correction"
                )
                reject(Reject(it.ref, why, it.original, it.patient))
                continue
            retire_current(st)
            counts["corrected"] += 1
        elif digest in st.hashes:
            counts["duplicates"] += 1  # the same content as a deleted version: it stays deleted
            continue
        else:
            counts["imported"] += 1
        st.version += 1
        row: dict[str, Any] = {
            **_ROW_DEFAULTS,
            **fields,
            "patient_id": pid,
            "source_key": key,
            "version": st.version,
            "current": True,
            "content_hash": digest,
            "status": status,
            "review_state": "pending",
            "received_at": stamp,
        }
        new_rows.append(row)
        st.hashes.add(digest)
        st.digest, st.status, st.row_id, st.row = digest, status, None, row
        summary.patients.add(pid)
    if retire:
        s.execute(update(obs_t).where(obs_t.id.in_(retire)).values(current=False))
    if new_rows:
        _insert_rows(s, m.Observation.__table__, new_rows)  # type: ignore[arg-type]


def _apply_other(
    s: Session, it: Item, pid: int, stamp: Any, summary: ImportSummary, reject: Callable[[Reject], None]
) -> None:
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
            "reason": p.reason or None,
            "status_date": p.status_date,
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
        values = {
            "vaccine": p.vaccine, "live": p.live, "live_unknown": p.live_unknown, "name": p.name[:200],
            "when": p.when, "status": p.status,
        }  # fmt: skip
    elif it.kind == "symptom":
        model = m.Symptom
        values = {"key": p.key, "text": p.text[:200], "when": p.when, "reported_by": "import"}
    else:
        raise ValueError(f"unknown item kind {it.kind}")
    values = _fit(model, values)
    row = s.scalar(select(model).where(model.source_key == it.source_key))
    if row is None:
        s.add(model(patient_id=pid, source_key=it.source_key, **values))
        summary.counts["imported"] += 1
    elif cast(Any, row).patient_id != pid:
        why = f"record id '{it.source_key}' already belongs to another patient's record; not applied"
        reject(Reject(it.ref, why, it.original, it.patient))
        return
    else:
        changed = {k: v for k, v in values.items() if k != "created_at" and getattr(row, k) != v}
        if not changed:
            summary.counts["duplicates"] += 1
            return
        for k, v in changed.items():
            setattr(row, k, v)
        summary.counts["corrected"] += 1
    summary.patients.add(pid)


# ---------------------------------------------------------------- chunked, resumable imports
CHUNK_SECONDS = 0.25  # aim: a chunk holds the write lock about this long (the clinic waits at most that)
CHUNK_FIRST, CHUNK_MIN, CHUNK_MAX = 500, 20, 5000  # records per chunk: first guess and bounds
REFRESH_FIRST = 20  # patients re-assessed per transaction: first guess (then sized like chunks)
# SQLite: the pause between two chunks. Writers of other processes (the server) poll the write lock
# every 2 ms at most; without a gap the import would take it back at once, chunk after chunk.
CHUNK_GAP = 0.01


def import_pause() -> float:
    """AZAGUARD_IMPORT_PAUSE: after each chunk, rest this many times as long as the chunk took
    (0.5: the import uses about two thirds of a CPU core), for imports during clinic hours on a
    small server. Default 0: as fast as possible (other users still wait at most one chunk)."""
    try:
        return max(0.0, float(os.environ.get("AZAGUARD_IMPORT_PAUSE", "0")))
    except ValueError:
        return 0.0


def input_digest(parsed: Parsed) -> str:
    """Identity of a parsed input (format, every record's identity, content and origin, every
    reader reject): the same file read with the same code map gives the same digest."""
    h = hashlib.sha256(parsed.format.encode())
    for it in parsed.items:
        h.update(
            f"\x1e{it.kind}\x1f{it.patient}\x1f{it.source_key}\x1f{it.ref}\x1f{it.correction:d}{it.preliminary:d}".encode()
        )
        h.update(f"\x1f{it.abnormal_flag}\x1f{it.payload!r}".encode())
    for r in parsed.rejects:
        h.update(f"\x1d{r.ref}\x1f{r.reason}\x1f{r.patient}\x1f".encode())
        h.update(r.original.encode("utf-8", "replace"))
    return h.hexdigest()


def _next_size(size: int, seconds: float, lo: int, hi: int) -> int:
    """The next chunk size so a chunk takes about CHUNK_SECONDS (at most doubling per step)."""
    wanted = int(size * CHUNK_SECONDS / max(seconds, 1e-3))
    return max(lo, min(hi, wanted, size * 2))


def apply_in_chunks(
    db: Database,
    parsed: Parsed,
    source: str,
    username: str = "",
    today: date | None = None,
    progress: Callable[[int], None] | None = None,
    refresh: Callable[[Session, list[int]], object] | None = None,
    finish: Callable[[Session, ImportSummary], None] | None = None,
) -> ImportSummary:
    """Import a batch of any size in chunks, each its own short transaction (SQLite BEGIN IMMEDIATE),
    so other users wait at most about CHUNK_SECONDS for the write lock.

    Each chunk is atomic and records how far the batch got (import_batches.items_done) in the same
    transaction, and the pipeline's decisions are idempotent (duplicates, corrections, quarantine),
    so an interrupted run is resumed by running the same input again: a batch in state "running"
    with the same `input_digest` continues after its last committed chunk, and its counts end up
    as an uninterrupted run's. Two runs of the same input at once share the batch, chunk by chunk.

    Then `refresh(session, patient_ids)` re-assesses the patients touched (also in chunks; on a
    resumed run, every patient the batch names), and `finish(session, summary)` runs in the last
    transaction, which marks the batch done (e.g. to write the audit row).
    """
    today = today or date.today()
    digest = input_digest(parsed)
    work = [it for it in parsed.items if it.kind == "patient"] + [it for it in parsed.items if it.kind != "patient"]
    summary, position, resumed = _open_batch(db, parsed, source, username, digest, len(work))
    size = CHUNK_FIRST
    pause = import_pause()
    gap = CHUNK_GAP if db.engine.dialect.name == "sqlite" else 0.0
    while position < len(work):
        started = time.perf_counter()
        with db.write(yielding=True) as s:  # the clinic's writers queued for the lock go first
            _plan_each_lookup(s)
            b = m.ImportBatch
            done, counts = s.execute(
                select(b.items_done, b.counts).where(b.id == summary.batch_id).with_for_update()
            ).one()
            if done != position:  # another run of the same input committed chunks meanwhile
                position, summary.counts = done, Counter(counts or {})
                continue
            chunk = work[position : position + size]
            _apply_chunk(s, chunk, summary, parsed.format, today)
            position += len(chunk)
            s.execute(
                update(b).where(b.id == summary.batch_id).values(items_done=position, counts=dict(summary.counts))
            )
        took = time.perf_counter() - started
        size = _next_size(size, took, CHUNK_MIN, CHUNK_MAX)
        time.sleep(max(gap, took * pause))  # let the clinic's writers in (and leave it the CPU a while)
        if progress:
            progress(len(chunk))
    patients = set(summary.patients)
    if resumed:  # patients of chunks an earlier run committed may not have been re-assessed
        with db.session() as s:
            patients |= set(_patient_ids(s, {it.patient for it in work}).values())
    if refresh is not None:
        _refresh_in_chunks(db, sorted(patients), refresh)
    with db.write() as s:
        b = m.ImportBatch
        counts = s.execute(select(b.counts).where(b.id == summary.batch_id).with_for_update()).scalar_one()
        summary.counts = Counter(counts or {})
        s.execute(
            update(b).where(b.id == summary.batch_id).values(state="done", finished_at=now(), counts=summary.as_dict())
        )
        if finish is not None:
            finish(s, summary)
    summary.patients = patients
    return summary


def _open_batch(
    db: Database, parsed: Parsed, source: str, username: str, digest: str, total: int
) -> tuple[ImportSummary, int, bool]:
    """(summary so far, position to continue from, resumed?): the running batch of the same input,
    or a new one with the reader's rejects quarantined."""
    with db.write() as s:
        b = m.ImportBatch
        found = s.execute(
            select(b.id, b.items_done, b.counts)
            .where(b.digest == digest, b.state == "running")
            .order_by(b.id.desc())
            .limit(1)
        ).first()
        if found is not None:
            summary = ImportSummary(batch_id=found.id, counts=Counter(found.counts or {}))
            return summary, found.items_done, True
        stamp = now()
        batch = m.ImportBatch(
            started_at=stamp, source=source[:300], format=parsed.format, counts={}, username=username,
            state="running", digest=digest, items_done=0, items_total=total,
        )  # fmt: skip
        s.add(batch)
        s.flush()
        summary = ImportSummary(batch_id=batch.id)
        quarantine: list[dict[str, Any]] = []
        reject = _rejecter(batch.id, parsed.format, stamp, summary, quarantine)
        for r in parsed.rejects:
            reject(r)
        _quarantine(s, quarantine, summary)
        batch.counts = dict(summary.counts)
        return summary, 0, False


def _quarantine(s: Session, rows: list[dict[str, Any]], summary: ImportSummary) -> None:
    summary.counts["quarantined"] += len(rows)
    new_items = _not_yet_quarantined(s, rows)
    if new_items:
        s.execute(insert(m.QuarantineItem), new_items)


def _apply_chunk(s: Session, chunk: list[Item], summary: ImportSummary, fmt: str, today: date) -> None:
    """One chunk, with the same decisions as `apply` makes for a whole batch."""
    stamp = now()
    quarantine: list[dict[str, Any]] = []
    assert summary.batch_id is not None
    reject = _rejecter(summary.batch_id, fmt, stamp, summary, quarantine)
    items = _without_nul(chunk, reject)
    known = _patient_ids(s, {it.patient for it in items})
    _apply_patients(s, [it for it in items if it.kind == "patient"], known, stamp, summary, reject)
    obs_items, other = _screen([it for it in items if it.kind != "patient"], known, today, reject)
    for start in range(0, len(obs_items), CHUNK):
        _apply_observations(s, obs_items[start : start + CHUNK], known, stamp, summary, reject)
    for it in other:
        _apply_other(s, it, known[it.patient], stamp, summary, reject)
    _quarantine(s, quarantine, summary)


def _refresh_in_chunks(db: Database, patient_ids: list[int], refresh: Callable[[Session, list[int]], object]) -> None:
    size, i = REFRESH_FIRST, 0
    gap = CHUNK_GAP if db.engine.dialect.name == "sqlite" else 0.0
    while i < len(patient_ids):
        started = time.perf_counter()
        group = patient_ids[i : i + size]
        with db.session() as s:
            refresh(s, group)
        i += len(group)
        size = _next_size(size, time.perf_counter() - started, 1, 500)
        time.sleep(gap)
