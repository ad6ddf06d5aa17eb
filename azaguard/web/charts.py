"""Result charts drawn server-side as plain SVG: no JavaScript, no CDN, deterministic.

Threshold bands come from the knowledge base (the same numbers the engine uses, local
protocol included), so the shading can never disagree with the findings.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from html import escape

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


# Layout of the drawing, in SVG user units (the page scales the image to its width).
_WIDTH, _LEFT, _RIGHT = 1000, 64, 16
_PANEL, _GAP, _TOP, _BOTTOM = 120, 44, 34, 30
_LINE_COLOURS = ("#1f5fa8", "#c0560f")
_THRESHOLD_COLOURS = {"critical": "#b00020", "warning": "#a15c00"}
_DOSE_COLOUR = "#16324f"
_FONT = "DejaVu Sans, Arial, sans-serif"


def _nice_step(span: float, ticks: int = 4) -> float:
    """A round tick step (1, 2 or 5 times a power of ten) giving about `ticks` ticks over `span`."""
    raw = span / ticks if span > 0 else 1.0
    power = float(10.0 ** math.floor(math.log10(raw)))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return factor * power
    return 10 * power


def _draw(kb: Knowledge, points: Points, doses: Doses) -> str:
    """The charts as plain SVG: one panel per test group, results as lines with markers, the
    knowledge base's thresholds as shaded bands with a dotted line, dose changes as dashed lines.
    Written directly (a few milliseconds) rather than through a plotting library (hundreds)."""
    days = [when for _, when, _ in points] + [start for start, _ in doses]
    first, last = (min(days), max(days)) if days else (date.today(), date.today())
    if (last - first).days < 2:
        first, last = first - timedelta(days=15), last + timedelta(days=15)
    span = (last - first).days
    inner = _WIDTH - _LEFT - _RIGHT
    height = _TOP + len(PANELS) * (_PANEL + _GAP) - _GAP + _BOTTOM

    def x_of(when: date) -> float:
        return _LEFT + inner * (when - first).days / span

    out = [
        '<?xml version="1.0" encoding="utf-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_WIDTH} {height}" width="{_WIDTH}" '
        f'height="{height}" font-family="{_FONT}" role="img">',
        "<title>Results over time</title>",
        "<desc>Each panel is one test; shaded bands are the thresholds that give a finding; dashed lines "
        "are azathioprine dose changes.</desc>",
        f'<rect width="{_WIDTH}" height="{height}" fill="#ffffff"/>',
    ]
    for i, (title, analytes) in enumerate(PANELS):
        top_y = _TOP + i * (_PANEL + _GAP)
        out += _panel(kb, title, analytes, points, doses, top_y, x_of, i == 0)
    out += _date_axis(first, last, x_of, _TOP + len(PANELS) * (_PANEL + _GAP) - _GAP)
    out.append("</svg>")
    return "\n".join(out)


def _panel(
    kb: Knowledge,
    title: str,
    analytes: tuple[str, ...],
    points: Points,
    doses: Doses,
    top_y: float,
    x_of: Callable[[date], float],
    first_panel: bool,
) -> list[str]:
    series = [(a, [(w, v) for name, w, v in points if name == a]) for a in analytes]
    values = [v for _, pts in series for _, v in pts]
    limits = [t for t in kb.thresholds if t.analyte in analytes]
    top = max([*values, *(t.value for t in limits), 0.0]) * 1.15 or 1.0
    bottom_y = top_y + _PANEL

    def y_of(value: float) -> float:
        return bottom_y - _PANEL * min(max(value, 0.0), top) / top

    right = _WIDTH - _RIGHT
    out = [
        f'<text x="{_LEFT}" y="{top_y - 8:.1f}" font-size="13" font-weight="bold" fill="#1b1b1b">'
        f"{escape(title)}</text>",
        f'<rect x="{_LEFT}" y="{top_y}" width="{right - _LEFT}" height="{_PANEL}" fill="none" stroke="#8a8a8a"/>',
    ]
    for t in limits:  # the knowledge base's thresholds: the same numbers the engine uses
        colour = _THRESHOLD_COLOURS.get(t.severity, _THRESHOLD_COLOURS["warning"])
        line = y_of(t.value)
        band_top, band_bottom = (line, bottom_y) if t.comparator == "<" else (top_y, line)
        out.append(
            f'<rect x="{_LEFT}" y="{band_top:.1f}" width="{right - _LEFT}" '
            f'height="{max(band_bottom - band_top, 0):.1f}" fill="{colour}" fill-opacity="0.12"/>'
        )
        out.append(
            f'<line x1="{_LEFT}" y1="{line:.1f}" x2="{right}" y2="{line:.1f}" stroke="{colour}" '
            'stroke-width="1" stroke-dasharray="2 3"/>'
        )
    step = _nice_step(top)
    tick = 0.0
    while tick <= top + 1e-9:
        y = y_of(tick)
        out.append(f'<line x1="{_LEFT - 4}" y1="{y:.1f}" x2="{_LEFT}" y2="{y:.1f}" stroke="#8a8a8a"/>')
        out.append(
            f'<text x="{_LEFT - 7}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#333">{tick:g}</text>'
        )
        tick += step
    label_row, last_label = 0, -1e9
    for start, mg in doses:
        x = x_of(start)
        out.append(
            f'<line x1="{x:.1f}" y1="{top_y}" x2="{x:.1f}" y2="{bottom_y}" stroke="{_DOSE_COLOUR}" '
            'stroke-width="1" stroke-dasharray="5 4" stroke-opacity="0.6"/>'
        )
        if first_panel:  # the dose, once, at the top; labels of close changes step down, not overlap
            label_row = label_row + 1 if x - last_label < 60 else 0
            last_label = x
            out.append(
                f'<text x="{x + 3:.1f}" y="{top_y + 12 + 13 * (label_row % 4)}" font-size="11" '
                f'fill="{_DOSE_COLOUR}">{mg:g} mg</text>'
            )
    for n, (analyte, pts) in enumerate(series):
        colour = _LINE_COLOURS[n % len(_LINE_COLOURS)]
        coords = " ".join(f"{x_of(w):.1f},{y_of(v):.1f}" for w, v in pts)
        if len(pts) > 1:
            out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
        out += [f'<circle cx="{x_of(w):.1f}" cy="{y_of(v):.1f}" r="2.6" fill="{colour}"/>' for w, v in pts]
        if len(analytes) > 1 and pts:
            label = escape(kb.analytes[analyte].label)
            lx = _LEFT + 8 + 150 * n
            out.append(f'<rect x="{lx}" y="{top_y + 6}" width="10" height="10" fill="{colour}"/>')
            out.append(f'<text x="{lx + 14}" y="{top_y + 15}" font-size="11" fill="#1b1b1b">{label}</text>')
    if not values:
        out.append(
            f'<text x="{(_LEFT + right) / 2:.1f}" y="{top_y + _PANEL / 2 + 4:.1f}" font-size="12" '
            'text-anchor="middle" fill="#666">no results</text>'
        )
    return out


def _date_axis(first: date, last: date, x_of: Callable[[date], float], y: float) -> list[str]:
    """About six dates under the last panel, evenly spaced across the period shown."""
    out = []
    span = (last - first).days
    count = min(6, span)
    for k in range(count + 1):
        when = first + timedelta(days=round(span * k / count))
        x = x_of(when)
        anchor = "start" if k == 0 else "end" if k == count else "middle"
        out.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 4}" stroke="#8a8a8a"/>')
        out.append(
            f'<text x="{x:.1f}" y="{y + 17}" font-size="11" text-anchor="{anchor}" fill="#333">'
            f"{when.day} {when:%b %Y}</text>"
        )
    return out
