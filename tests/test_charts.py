"""The result charts: plain SVG drawn from the knowledge base's thresholds, kept per evidence."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import date, timedelta

from azaguard.knowledge import Knowledge
from azaguard.service_models import MedicineOut, ObservationOut
from azaguard.web import charts

SVG = "{http://www.w3.org/2000/svg}"


def lab(analyte: str, value: float, when: date, oid: int = 1) -> ObservationOut:
    return ObservationOut(
        id=oid, kind="lab", analyte=analyte, code="", value=value, unit="10*9/L", reported=None, date=when,
        status="final", review_state="auto",
    )  # fmt: skip


def dose(mg: float, start: date) -> MedicineOut:
    return MedicineOut(
        id=1, drug="azathioprine", name="Azathioprine", status="active", kind="statement", start=start, end=None,
        mg_per_day=mg, reason=None, status_date=None,
    )  # fmt: skip


def test_every_charted_threshold_is_a_dotted_line_and_every_result_a_point(kb: Knowledge) -> None:
    day = date(2026, 3, 2)
    labs = [lab("neutrophils", v, day + timedelta(days=14 * i), i) for i, v in enumerate((4.1, 2.2, 1.1))]
    svg = charts.patient_chart_svg(kb, labs, [dose(100, day)])
    root = ET.fromstring(svg.split("?>", 1)[1])  # well-formed XML
    dotted = [e for e in root.iter(f"{SVG}line") if e.get("stroke-dasharray") == "2 3"]
    charted = [t for t in kb.thresholds if t.analyte in charts._CHARTED]
    assert len(dotted) == len(charted) > 0
    assert len(list(root.iter(f"{SVG}circle"))) == 3  # one marker per result
    assert len(list(root.iter(f"{SVG}polyline"))) == 1
    assert "100 mg" in svg and svg.count("no results") == len(charts.PANELS) - 1


def test_a_result_below_the_low_thresholds_is_drawn_below_their_lines(kb: Knowledge) -> None:
    """The lines are the knowledge base's: a value under every '<' threshold for neutrophils is drawn
    below each of their lines, a value over them above."""
    lows = [t.value for t in kb.thresholds if t.analyte == "neutrophils" and t.comparator == "<"]
    assert lows and max(lows) < 5.0
    day = date(2026, 3, 2)
    labs = [lab("neutrophils", min(lows) / 2, day), lab("neutrophils", 5.0, day + timedelta(30), 2)]
    root = ET.fromstring(charts.patient_chart_svg(kb, labs, []).split("?>", 1)[1])
    panel = [title for title, _ in charts.PANELS].index("Neutrophils (x10^9/L)")
    top = charts._TOP + panel * (charts._PANEL + charts._GAP)
    lines = [
        y
        for e in root.iter(f"{SVG}line")
        if e.get("stroke-dasharray") == "2 3" and top <= (y := float(e.get("y1", "0"))) <= top + charts._PANEL
    ]
    low_y, high_y = (float(c.get("cy", "0")) for c in root.iter(f"{SVG}circle"))
    assert len(lines) == len(lows)
    assert all(high_y < y < low_y for y in lines)  # SVG y grows downwards


def test_the_same_evidence_is_drawn_once_and_new_evidence_again(kb: Knowledge) -> None:
    day = date(2026, 5, 1)
    first = charts.patient_chart_svg(kb, [lab("wbc", 5.5, day)], [])
    assert charts.patient_chart_svg(kb, [lab("wbc", 5.5, day)], []) is first  # kept, not drawn again
    changed = charts.patient_chart_svg(kb, [lab("wbc", 5.5, day), lab("wbc", 2.0, day + timedelta(7), 2)], [])
    assert changed != first and len(re.findall("<circle", changed)) == 2
