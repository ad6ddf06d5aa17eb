"""Result charts drawn server-side with matplotlib (SVG): no JavaScript, no CDN, deterministic.

Threshold bands come from the knowledge base (the same numbers the engine uses, local
protocol included), so the shading can never disagree with the findings.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from datetime import date

from azaguard.knowledge import Knowledge
from azaguard.service_models import MedicineOut, ObservationOut

# What a chart can draw: values beyond this or dates before 1900 (an imported 1e308, a year-1
# date) are left out of the drawing rather than breaking it; the results table still lists them.
_PLOTTABLE = 1e9
_FIRST_DAY = date(1900, 1, 1)

PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("White cells (x10^9/L)", ("wbc",)),
    ("Neutrophils (x10^9/L)", ("neutrophils",)),
    ("Lymphocytes (x10^9/L)", ("lymphocytes",)),
    ("Platelets (x10^9/L)", ("platelets",)),
    ("ALT / AST (U/L)", ("alt", "ast")),
    ("MCV (fL)", ("mcv",)),
    ("Albumin (g/L)", ("albumin",)),
)


_CHARTED = frozenset(a for _, analytes in PANELS for a in analytes)
_CACHE_SIZE = 256  # charts kept per process (about 70 KB each)
_cache: OrderedDict[tuple[object, ...], str] = OrderedDict()
_cache_lock = threading.Lock()

Points = tuple[tuple[str, date, float], ...]
Doses = tuple[tuple[date, float], ...]


def patient_chart_svg(kb: Knowledge, labs: Sequence[ObservationOut], meds: Sequence[MedicineOut]) -> str:
    """The patient's charts, drawn once per distinct evidence: drawing costs a few hundred
    milliseconds, so the SVG is kept (in this process, least recently used out first) under a key
    made of everything drawn - the knowledge version, every plotted point and dose - and any new,
    corrected or removed result or dose makes a new key. Nothing else is cached, and nothing is
    written to disk."""
    points: Points = tuple(
        sorted(
            (o.analyte, o.date, o.value)
            for o in labs
            if o.analyte in _CHARTED
            and o.value is not None
            and math.isfinite(o.value)
            and abs(o.value) <= _PLOTTABLE
            and o.date >= _FIRST_DAY
        )
    )
    doses: Doses = tuple(
        sorted(
            (x.start, x.mg_per_day)
            for x in meds
            if x.start is not None and x.start >= _FIRST_DAY and x.mg_per_day is not None and x.mg_per_day <= _PLOTTABLE
        )
    )
    key = (kb.version, points, doses)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    svg = _draw(kb, points, doses)
    with _cache_lock:
        _cache[key] = svg
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return svg


def _draw(kb: Knowledge, points: Points, doses: Doses) -> str:
    import matplotlib
    from matplotlib.figure import Figure

    # A Figure object per request, never pyplot's global state: requests run on several threads.
    matplotlib.rcParams["svg.hashsalt"] = "azaguard"  # stable ids: identical data gives an identical file
    matplotlib.rcParams["svg.fonttype"] = "none"  # text as text, not outlines: smaller, faster, readable
    fig = Figure(figsize=(10, 1.7 * len(PANELS)))
    axes = fig.subplots(len(PANELS), 1, sharex=True)
    for ax, (title, analytes) in zip(axes, PANELS, strict=True):
        ax.set_title(title, loc="left", fontsize=9)
        values: list[float] = []
        for analyte in analytes:
            pts = [(when, value) for name, when, value in points if name == analyte]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=kb.analytes[analyte].label)
                values.extend(ys)
        if not values:
            ax.text(0.5, 0.5, "no results", transform=ax.transAxes, ha="center", va="center", color="#888", fontsize=8)
        lo, hi = ax.get_ylim()
        for t in kb.thresholds:
            if t.analyte not in analytes:
                continue
            color = "#b00020" if t.severity == "critical" else "#a15c00"
            if t.comparator == "<":
                ax.axhspan(min(lo, 0), t.value, color=color, alpha=0.12, linewidth=0)
            else:
                ax.axhspan(t.value, max(hi, t.value * 1.5), color=color, alpha=0.12, linewidth=0)
            ax.axhline(t.value, color=color, linewidth=0.8, linestyle=":")
        if values:
            top = max(max(values), *(t.value for t in kb.thresholds if t.analyte in analytes), 0) * 1.15
            ax.set_ylim(0, top or 1)
        for start, _mg in doses:
            ax.axvline(start, color="#16324f", linewidth=0.8, linestyle="--", alpha=0.6)
        if len(analytes) > 1 and values:
            ax.legend(fontsize=7, loc="upper left")
        ax.tick_params(labelsize=7)
    if doses:
        top_ax = axes[0]
        for start, mg in doses:
            top_ax.annotate(
                f"{mg:g} mg",
                (start, 1.0),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                color="#16324f",
                rotation=90,
                va="top",
            )
    fig.subplots_adjust(left=0.07, right=0.98, top=0.97, bottom=0.04, hspace=0.45)  # tight_layout costs ~40%
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    return buf.getvalue()
