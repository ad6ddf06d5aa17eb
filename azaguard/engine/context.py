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
from azaguard.knowledge import Knowledge, word_match

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
    anchors: tuple[date, ...]  # start and every dose event that restarts the 2-weekly sequence
    current_dose: float | None  # mg/day taken now (None while on hold)
    proposed_dose: float | None  # mg/day of a draft order, if any
    stopped_on: date | None
    active_entry: d.MedicationEntry | None  # the current entry (active or on hold)
    draft_entry: d.MedicationEntry | None
    ever_stable: bool  # dose was stable >= stable_after at some point before the last anchor
    on_hold: bool = False
    hold_since: date | None = None
    hold_reason: str = ""
    held_dose: float | None = None
    # The latest dose event of the course: (date, "increase" | "reduction" | "hold" | "restart-after-hold")
    last_event: tuple[date, str] | None = None
    chain: tuple[d.MedicationEntry, ...] = ()

    def dose_on(self, day: date) -> float | None:
        """mg/day the patient was taking on `day` within this course (None if unknown or on hold)."""
        found = None
        for m in self.chain:
            if m.start is not None and m.start <= day and (m.end is None or m.end >= day):
                found = m
        if found is None or found.status == "on-hold":
            return None
        return found.daily_dose_mg

    @property
    def treating(self) -> bool:
        return self.phase in ("initiation", "dose-change", "stable", "on-hold")


@dataclass
class Context:
    record: d.PatientRecord
    kb: Knowledge
    as_of: date
    labs: dict[str, list[d.LabResult]]
    future_count: int
    course: Course
    weight: d.LabResult | None
    # Per test group: every date with a result of the group -> the analytes measured that day
    group_days: dict[str, dict[date, set[str]]] = field(default_factory=dict)
    pgx: dict[str, Any] = field(default_factory=dict)
    # Set by the dose check for the interaction check: drug name -> facts of a dose above its factor
    dose_excess: dict[str, dict[str, Any]] = field(default_factory=dict)

    def latest(self, analyte: str) -> d.LabResult | None:
        series = self.labs.get(analyte)
        return series[-1] if series else None

    def complete(self, group: str, day: date) -> bool:
        have = self.group_days.get(group, {}).get(day, set())
        return all(any(a in have for a in alt) for alt in self.kb.schedule.panels[group].require)

    def group_dates(self, group: str) -> list[date]:
        """Dates with a complete panel of the group: one analyte is not a full blood count."""
        return sorted(day for day in self.group_days.get(group, {}) if self.complete(group, day))

    def answered_after(self, group: str, analytes: tuple[str, ...], since: date, same_day: bool) -> bool:
        """Is there a result that answers a question raised on `since` (a complete panel, or one of
        `analytes`), dated after it (or on it, for same-day questions such as a reported fever)?"""

        def later(day: date) -> bool:
            return day > since or (same_day and day == since)

        if analytes:
            return any(later(r.when) for a in analytes for r in self.labs.get(a, ()))
        return any(later(day) and self.complete(group, day) for day in self.group_days.get(group, {}))

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

    def reaction_reports(self) -> tuple[str, date, list[d.Symptom]] | None:
        """Reaction symptoms reported within the hypersensitivity window after starting or
        restarting azathioprine: (event, its date, the reports), the latest event first."""
        course, sym = self.course, self.kb.symptoms
        if course.start is None or course.phase in ("stopped", "pre-treatment"):
            return None
        events = [(course.start, "starting azathioprine")]
        if course.last_event is not None and course.last_event[1] == "restart-after-hold":
            events.append((course.last_event[0], "restarting azathioprine"))
        keys = set(sym.hypersensitivity_symptoms)
        for start, event in reversed(events):
            end = sym.hypersensitivity_within.add(start)
            reports = [
                s for s in self.record.symptoms if s.key in keys and start <= s.when <= end and s.when <= self.as_of
            ]
            if reports:
                return event, start, reports
        return None

    def unanswered_red_flags(self) -> list[d.Symptom]:
        """Critical symptoms (knowledge severity) not yet answered by the result they ask for."""
        out = []
        for s in self.record.symptoms:
            spec = self.kb.symptoms.items.get(s.key) if s.key else None
            if spec is None or spec.severity != "critical" or s.when > self.as_of:
                continue
            if not self.answered_after(spec.group, tuple(spec.answered_by), s.when, same_day=True):
                out.append(s)
        return out

    def other_indication(self) -> str | None:
        """An indication outside neuromuscular disease (Crohn's, lupus, transplant...), by code or word."""
        for c in self.record.conditions:
            if c.onset is not None and c.onset > self.as_of:
                continue
            for key, other in self.kb.other_indications.items():
                if (c.code and c.code in other.snomed) or word_match(c.text, other.text):
                    return key
        return None

    def current_medicines(self) -> list[d.MedicationEntry]:
        """Medicines being taken now, or about to be prescribed (draft/intended), other than azathioprine."""
        out = []
        for med in self.record.medications:
            if med.drug == AZA:
                continue
            if med.status in ("draft", "intended") or (
                med.status in ("active", "unknown", "on-hold")
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
    for analyte, series in labs.items():
        drop = kb.analytes[analyte].drop_if_other_same_day if analyte in kb.analytes else []
        if drop and any(r.code in drop for r in series):
            # A race-coefficient variant is ignored when the same day has another result of the analyte.
            days_other = {r.when for r in series if r.code not in drop}
            labs[analyte] = [r for r in series if not (r.code in drop and r.when in days_other)]
    weight_series = labs.pop("weight", [])
    course = derive_course(record.medications, kb, as_of)
    group_days: dict[str, dict[date, set[str]]] = defaultdict(dict)
    for analyte, series in labs.items():
        spec = kb.analytes.get(analyte)
        if spec is None:
            continue
        days = group_days[spec.group]
        for r in series:
            days.setdefault(r.when, set()).add(analyte)
    return Context(
        record,
        kb,
        as_of,
        dict(labs),
        future,
        course,
        weight_series[-1] if weight_series else None,
        dict(group_days),
    )


def derive_course(meds: tuple[d.MedicationEntry, ...], kb: Knowledge, as_of: date) -> Course:
    aza = [m for m in meds if m.drug == AZA]
    drafts = [m for m in aza if m.status in ("draft", "intended")]
    draft = max(drafts, key=lambda m: m.start or date.min) if drafts else None
    taken = [
        m
        for m in aza
        if m.status in ("active", "on-hold", "stopped", "unknown") and (m.start is None or m.start <= as_of)
    ]
    # FHIR Period.end is inclusive; a completed entry was still being taken on dates inside its period.
    active = [
        m
        for m in taken
        if (m.status in ("active", "unknown", "on-hold") and (m.end is None or m.end >= as_of))
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
    held = current.status == "on-hold"
    if current.start is None:
        phase0: d.Phase = "on-hold" if held else "initiation"
        return Course(
            phase0, None, False, (), None if held else current.daily_dose_mg, proposed, None, current, draft, False,
            on_hold=held, hold_since=current.status_date, hold_reason=current.reason,
            held_dose=current.daily_dose_mg if held else None, chain=(current,),
        )  # fmt: skip

    # Walk back through contiguous entries to find where this course began; note dose events.
    dated = sorted((m for m in taken if m.start is not None), key=lambda m: m.start or date.min)
    chain = [current]
    for m in reversed(dated):
        if m is current or m.start is None or chain[0].start is None:
            continue
        if m.start < chain[0].start and (m.end is None or m.end >= chain[0].start - _ONE_DAY):
            chain.insert(0, m)
    start = chain[0].start
    assert start is not None
    restart_on = set(kb.schedule.restart_sequence_on)
    anchors = [start]
    last_event: tuple[date, str] | None = None
    for prev, nxt in itertools.pairwise(chain):
        assert nxt.start is not None
        event = _dose_event(prev, nxt)
        if event is None:
            continue
        last_event = (nxt.start, event)
        if event in restart_on:
            anchors.append(nxt.start)
    ever_stable = any(stable_from(kb, a) <= b for a, b in itertools.pairwise(anchors))
    phase: d.Phase
    if held:
        phase = "on-hold"
    else:
        phase = (
            "stable" if maintenance_from(kb, anchors[-1]) <= as_of else "dose-change" if ever_stable else "initiation"
        )
    hold_since = current.status_date or (current.start if held and len(chain) > 1 else None)
    return Course(
        phase, start, True, tuple(anchors), None if held else current.daily_dose_mg, proposed, None, current, draft,
        ever_stable, on_hold=held, hold_since=hold_since if held else None, hold_reason=current.reason if held else "",
        held_dose=current.daily_dose_mg if held else None, last_event=last_event, chain=tuple(chain),
    )  # fmt: skip


def _dose_event(prev: d.MedicationEntry, nxt: d.MedicationEntry) -> str | None:
    """What changed between two consecutive entries of a course (None: same dose, or unknown)."""
    if nxt.status == "on-hold":
        return None if prev.status == "on-hold" else "hold"
    if prev.status == "on-hold":
        return "restart-after-hold"
    if prev.daily_dose_mg is None or nxt.daily_dose_mg is None or nxt.daily_dose_mg == prev.daily_dose_mg:
        return None
    return "dose-increase" if nxt.daily_dose_mg > prev.daily_dose_mg else "dose-reduction"
