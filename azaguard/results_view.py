"""The clinician's patient page, as results: the summary strip and the cumulative results grid.

Names and units come from the knowledge base (analyte labels, `display_units`, panel labels), never
codes or UCUM strings. A result is flagged by the engine's own lab checks (thresholds, limits of
normal, rises) run as of the result's date, so a flag here is exactly what the engine said, or would
have said, on that day: no threshold is re-derived here or in a template.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import date

from azaguard import domain as d
from azaguard.engine.context import build_context
from azaguard.engine.labs import check_rises, check_thresholds, check_uln_rules
from azaguard.knowledge import Knowledge
from azaguard.service_models import (
    LatestGroup,
    LatestResult,
    ObservationOut,
    ResultCell,
    ResultGroup,
    ResultRow,
    ResultsGrid,
    SummaryStrip,
)

GRID_DATES = 12  # result dates (columns) the grid shows unless all are asked for: presentation only
FLAGS = ("critical", "warning")  # what marks a result; info findings do not
PREGNANCY_KINDS = (("pregnancy", "pregnant"), ("breastfeeding", "breastfeeding"))

Flags = dict[int, tuple[str, tuple[str, ...]]]


def num(x: float) -> str:
    """A value as a results screen writes it: no trailing zeros, at most three decimals (0.425,
    89.25, 125), and two significant digits for the smallest (0.0042)."""
    if x != 0 and abs(x) < 0.01:
        return f"{x:.2g}"
    return f"{x:.3f}".rstrip("0").rstrip(".")


def group_label(kb: Knowledge, group: str) -> str:
    panel = kb.schedule.panels.get(group)
    return panel.label if panel is not None and panel.label else group


def engine_flags(kb: Knowledge, record: d.PatientRecord, days: Iterable[date]) -> Flags:
    """Observation id -> (worst severity, finding codes) for the results dated on `days`, from the
    engine's lab checks as of each of those days (only the result a finding is about is marked:
    a rise marks the new value, not the baseline it is compared with). The whole record goes in,
    as the engine sees it: some lab rules read more than results (a bilirubin above the limit with
    jaundice reported is critical at any multiple), and the context hides what came later."""
    marks: dict[int, list[tuple[str, str]]] = {}
    for day in sorted(set(days)):
        ctx = build_context(record, kb, day)
        for f in (*check_thresholds(ctx), *check_uln_rules(ctx), *check_rises(ctx)):
            if f.category != "lab" or f.severity not in FLAGS:
                continue
            for ev in f.evidence:
                if ev.get("type") == "lab" and ev.get("date") == day.isoformat() and str(ev.get("id", "")).isdigit():
                    marks.setdefault(int(ev["id"]), []).append((f.severity, f.code))
    return {
        oid: (min((sev for sev, _ in found), key=FLAGS.index), tuple(dict.fromkeys(code for _, code in found)))
        for oid, found in marks.items()
    }


def reported_if_different(o: ObservationOut) -> str | None:
    """The value as it arrived, only when its number differs from the one shown (another unit)."""
    if not o.reported or o.value is None:
        return None
    try:
        same = math.isclose(float(o.reported.split(" ", 1)[0]), o.value, rel_tol=1e-9, abs_tol=1e-12)
    except ValueError:
        same = False
    return None if same else o.reported


def _groups_in_order(kb: Knowledge) -> list[str]:
    """The monitored groups first (FBC, LFT, renal), then the others as the knowledge lists them."""
    return list(dict.fromkeys([*kb.schedule.groups, *(a.group for a in kb.analytes.values())]))


def _cell(o: ObservationOut, flags: Flags) -> ResultCell:
    flag, why = flags.get(o.id, (None, ()))
    return ResultCell(
        id=o.id,
        value=num(o.value) if o.value is not None else "",
        reported=reported_if_different(o),
        flag=flag,
        why=why,
        review_state=o.review_state,
    )


def results_grid(
    kb: Knowledge, labs: Sequence[ObservationOut], flags: Flags, limit: int | None = GRID_DATES
) -> ResultsGrid:
    """Tests (rows, grouped by test group) x dates (columns, the latest on the left)."""
    known = [o for o in labs if o.analyte in kb.analytes and o.value is not None]
    days = sorted({o.date for o in known}, reverse=True)
    shown = tuple(days if limit is None else days[:limit])
    column = {day: i for i, day in enumerate(shown)}
    cells: dict[str, list[list[ResultCell]]] = {}
    for o in sorted(known, key=lambda o: o.id):
        if o.date in column:
            assert o.analyte is not None
            cells.setdefault(o.analyte, [[] for _ in shown])[column[o.date]].append(_cell(o, flags))
    groups = []
    for group in _groups_in_order(kb):
        rows = tuple(
            ResultRow(
                analyte=key,
                label=a.label,
                unit=kb.display_unit(a.canonical),
                group=group,
                cells=tuple(tuple(c) for c in cells[key]),
            )
            for key, a in kb.analytes.items()
            if a.group == group and key in cells
        )
        if rows:
            groups.append(ResultGroup(key=group, label=group_label(kb, group), rows=rows))
    return ResultsGrid(dates=shown, groups=tuple(groups), older_dates=len(days) - len(shown))


def latest_results(labs: Sequence[ObservationOut]) -> dict[str, ObservationOut]:
    """The newest result of each test (`labs` oldest first, as the service lists them)."""
    latest: dict[str, ObservationOut] = {}
    for o in labs:
        if o.analyte and o.value is not None:
            latest[o.analyte] = o
    return latest


def _latest(kb: Knowledge, o: ObservationOut, flags: Flags) -> LatestResult:
    assert o.analyte is not None and o.value is not None
    spec = kb.analytes[o.analyte]
    return LatestResult(
        analyte=o.analyte,
        label=spec.label,
        value=num(o.value),
        unit=kb.display_unit(spec.canonical),
        date=o.date,
        flag=flags.get(o.id, (None, ()))[0],
        reported=reported_if_different(o),
    )


def summary_strip(
    kb: Knowledge,
    labs: Sequence[ObservationOut],
    flags: Flags,
    allergies: Sequence[d.Allergy],
    statuses: Sequence[d.StatusObservation],
    today: date,
) -> SummaryStrip:
    """The latest value of every test of the monitored groups, the weight, allergies, and whether
    the record says pregnant, breastfeeding or planning a pregnancy (the latest known status of each,
    as the engine reads it: an old "yes" is never assumed to have ended)."""
    latest = {k: o for k, o in latest_results(labs).items() if k in kb.analytes}
    groups = []
    for group in kb.schedule.groups:
        found = tuple(_latest(kb, latest[k], flags) for k, a in kb.analytes.items() if a.group == group and k in latest)
        newest = max((r.date for r in found), default=None)
        groups.append(LatestGroup(key=group, label=group_label(kb, group), date=newest, results=found))
    weight = latest.get("weight")
    known: dict[str, d.StatusObservation] = {}
    for st in sorted(statuses, key=lambda x: x.when):
        if st.value is not None and st.when <= today:
            known[st.kind] = st
    pregnancy = [(name, known[kind].when) for kind, name in PREGNANCY_KINDS if kind in known and known[kind].value]
    plan = known.get("pregnancy-intention")
    if plan is not None and plan.value and not any(name == "pregnant" for name, _ in pregnancy):
        pregnancy.append(("planning-pregnancy", plan.when))
    return SummaryStrip(
        groups=tuple(groups),
        weight=_latest(kb, weight, flags) if weight is not None else None,
        allergies=tuple(a.text for a in allergies if a.text),
        pregnancy=tuple(pregnancy),
    )


def page_results(
    kb: Knowledge, labs: Sequence[ObservationOut], record: d.PatientRecord, today: date, limit: int | None = GRID_DATES
) -> tuple[SummaryStrip, ResultsGrid]:
    """The summary strip and the results grid of one patient (`labs` oldest first; `record` the
    same results as the engine reads them, with the laboratory's limits, plus allergies and statuses).
    The engine's checks run for the days the page shows: the grid's columns and each latest result."""
    days = sorted({o.date for o in labs if o.analyte in kb.analytes and o.value is not None}, reverse=True)
    shown = days if limit is None else days[:limit]
    flags = engine_flags(kb, record, {*shown, *(o.date for o in latest_results(labs).values())})
    strip = summary_strip(kb, labs, flags, record.allergies, record.statuses, today)
    return strip, results_grid(kb, labs, flags, limit)
