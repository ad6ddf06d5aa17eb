"""Facts derived once per assessment and shared by every check.

Checks stay small because the awkward derivations (which azathioprine course is current,
when the dose last rose, what the patient's metaboliser status is) happen here, once.
Only data dated on or before `as_of` is visible: an assessment "as of" a date shows what
was knowable then, which is what makes it reproducible.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from azaguard import domain as d
from azaguard.knowledge import Knowledge

AZA = "azathioprine"
# Consecutive prescriptions count as one course when one ends the day before the next starts
# (a recording convention, not a clinical interval).
_ONE_DAY = timedelta(days=1)


def stable_from(kb: Knowledge, anchor: date) -> date:
    """Date from which a dose started/raised on `anchor` counts as stable."""
    return kb.schedule.stable_after.add(anchor)


def maintenance_from(kb: Knowledge, anchor: date) -> date:
    """Date from which the maintenance (12-weekly) interval applies after `anchor`."""
    return kb.schedule.consolidation_duration.add(stable_from(kb, anchor))


@dataclass(frozen=True)
class Course:
    """The azathioprine treatment state at as_of."""

    phase: d.Phase
    start: date | None  # start of the current continuous course
    start_known: bool
    anchors: tuple[date, ...]  # start and every dose increase, in order
    current_dose: float | None  # mg/day of the active entry
    proposed_dose: float | None  # mg/day of a draft order, if any
    stopped_on: date | None
    active_entry: d.MedicationEntry | None
    draft_entry: d.MedicationEntry | None
    ever_stable: bool  # dose was stable >= stable_after at some point before the last anchor


@dataclass
class Context:
    record: d.PatientRecord
    kb: Knowledge
    as_of: date
    labs: dict[str, list[d.LabResult]]
    future_count: int
    course: Course
    weight: d.LabResult | None
    pgx: dict[str, Any] = field(default_factory=dict)

    def latest(self, analyte: str) -> d.LabResult | None:
        series = self.labs.get(analyte)
        return series[-1] if series else None

    def group_dates(self, group: str) -> list[date]:
        return sorted({r.when for a, series in self.labs.items() if self.kb.analytes[a].group == group for r in series})

    def age(self) -> int | None:
        b = self.record.birth_date
        if b is None:
            return None
        return self.as_of.year - b.year - ((self.as_of.month, self.as_of.day) < (b.month, b.day))

    def mg_per_kg(self, mg: float | None) -> float | None:
        if mg is None or self.weight is None or self.weight.value <= 0:
            return None
        return mg / self.weight.value

    def active_conditions(self, key: str) -> list[d.Condition]:
        return [
            c
            for c in self.record.conditions
            if c.key == key and c.active and (c.onset is None or c.onset <= self.as_of)
        ]

    def latest_status(self, kind: str) -> d.StatusObservation | None:
        """Latest known pregnancy / breastfeeding / intention status; an old "yes" is never assumed to have ended."""
        items = [s for s in self.record.statuses if s.kind == kind and s.when <= self.as_of and s.value is not None]
        return items[-1] if items else None

    def pregnant(self) -> bool:
        status = self.latest_status("pregnancy")
        return bool(status and status.value)

    def indication(self) -> str | None:
        for c in self.record.conditions:
            if c.key in self.kb.indications and (c.onset is None or c.onset <= self.as_of):
                return c.key
        return None

    def current_medicines(self) -> list[d.MedicationEntry]:
        """Medicines being taken now, or about to be prescribed (draft/intended), other than azathioprine."""
        out = []
        for med in self.record.medications:
            if med.drug == AZA:
                continue
            if med.status in ("draft", "intended") or (
                med.status in ("active", "unknown")
                and (med.start is None or med.start <= self.as_of)
                and (med.end is None or med.end >= self.as_of)
            ):
                out.append(med)
        return out


def build_context(record: d.PatientRecord, kb: Knowledge, as_of: date) -> Context:
    labs: dict[str, list[d.LabResult]] = defaultdict(list)
    future = 0
    for r in record.labs:  # reader sorts by date
        if r.when > as_of:
            future += 1
            continue
        labs[r.analyte].append(r)
    future += sum(1 for s in record.symptoms if s.when > as_of)
    weight_series = labs.pop("weight", [])
    course = derive_course(record.medications, kb, as_of)
    return Context(record, kb, as_of, dict(labs), future, course, weight_series[-1] if weight_series else None)


def derive_course(meds: tuple[d.MedicationEntry, ...], kb: Knowledge, as_of: date) -> Course:
    aza = [m for m in meds if m.drug == AZA]
    drafts = [m for m in aza if m.status in ("draft", "intended")]
    draft = max(drafts, key=lambda m: m.start or date.min) if drafts else None
    taken = [m for m in aza if m.status in ("active", "stopped", "unknown") and (m.start is None or m.start <= as_of)]
    # FHIR Period.end is inclusive; a completed entry was still being taken on dates inside its period.
    active = [
        m
        for m in taken
        if (m.status in ("active", "unknown") and (m.end is None or m.end >= as_of))
        or (m.status == "stopped" and m.end is not None and m.end >= as_of and m.start is not None)
    ]
    proposed = draft.daily_dose_mg if draft else None
    if not active:
        # A draft order with nothing active is a (re)start: baseline checks apply again.
        ended = [m.end for m in taken if m.end is not None and m.end < as_of]
        stopped_on = max(ended) if ended else None
        idle: d.Phase = "stopped" if taken and draft is None else "pre-treatment"
        return Course(idle, None, True, (), None, proposed, stopped_on, None, draft, False)

    current = max(active, key=lambda m: m.start or date.min)
    if current.start is None:
        return Course("initiation", None, False, (), current.daily_dose_mg, proposed, None, current, draft, False)

    # Walk back through contiguous entries to find where this course began; note dose rises.
    dated = sorted((m for m in taken if m.start is not None), key=lambda m: m.start or date.min)
    chain = [current]
    for m in reversed(dated):
        if m is current or m.start is None or chain[0].start is None:
            continue
        if m.start < chain[0].start and (m.end is None or m.end >= chain[0].start - _ONE_DAY):
            chain.insert(0, m)
    start = chain[0].start
    assert start is not None
    anchors = [start]
    for prev, nxt in itertools.pairwise(chain):
        if prev.daily_dose_mg is not None and nxt.daily_dose_mg is not None and nxt.daily_dose_mg > prev.daily_dose_mg:
            assert nxt.start is not None
            anchors.append(nxt.start)
    ever_stable = any(stable_from(kb, a) <= b for a, b in itertools.pairwise(anchors))
    phase: d.Phase
    phase = "stable" if maintenance_from(kb, anchors[-1]) <= as_of else "dose-change" if ever_stable else "initiation"
    return Course(
        phase, start, True, tuple(anchors), current.daily_dose_mg, proposed, None, current, draft, ever_stable
    )
