"""CSV lab results with documented columns (docs/import.md) -> import items.

Required columns: patient_id, date (YYYY-MM-DD), code (LOINC, or a local code in the code
table), value, unit. Optional: result_id (the lab's identity of the result; without it the
identity is patient + date + code), status (final | corrected), ref_low, ref_high.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from datetime import date

from azaguard import domain as d
from azaguard.ingest.items import Item, Parsed, Reject
from azaguard.knowledge import Knowledge

REQUIRED = ("patient_id", "date", "code", "value", "unit")


# A single cell longer than this is damage (a number, a code or a date never is): the row is
# quarantined with its reason instead of the csv module's field-size error losing the batch.
MAX_CELL = 1000


def _rows(text: str) -> Iterator[tuple[int, list[str] | None, str]]:
    """(line number, cells or None if the line cannot be read, the raw line), one line at a time,
    so one damaged line never takes the rest of the file with it. CR-only and CRLF line endings
    are read as LF (Excel on old Macs writes CR)."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    buffered: list[str] = []
    start = 0
    for n, line in enumerate(text.split("\n"), 1):
        if not buffered:
            start = n
        buffered.append(line)
        chunk = "\n".join(buffered)
        if chunk.count('"') % 2:  # a quoted cell continues on the next line
            continue
        buffered = []
        try:
            cells = next(csv.reader([chunk]), [])
        except csv.Error:
            yield start, None, chunk
            continue
        yield start, cells, chunk
    if buffered:
        yield start, None, "\n".join(buffered)


def parse_csv_text(text: str, kb: Knowledge, source: str = "csv", local_codes: dict[str, str] | None = None) -> Parsed:
    lines = _rows(text)
    first = next(lines, None)
    header = [h.strip().lower() for h in (first[1] or [])] if first else []
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        return Parsed("csv", [], [Reject(source, f"missing column(s) {', '.join(missing)}", text[:20000])])
    local = {k.upper(): v for k, v in (local_codes or {}).items()}
    items: list[Item] = []
    rejects: list[Reject] = []
    for n, cells, raw in lines:
        if cells is not None and not any(c.strip() for c in cells):
            continue  # blank line
        ref = f"{source} line {n}"
        if cells is None:
            why = (
                f"a cell is longer than {MAX_CELL} characters"
                if len(raw) > csv.field_size_limit()
                else "not a readable CSV line (unbalanced quotes?)"
            )
            rejects.append(Reject(ref, why, ",".join(header) + "\n" + raw))
            continue
        if any(len(c) > MAX_CELL for c in cells):
            rejects.append(Reject(ref, f"a cell is longer than {MAX_CELL} characters", ",".join(header) + "\n" + raw))
            continue
        row = dict(zip(header, cells, strict=False))
        # Header + the row, so a quarantined line can be re-processed on its own.
        original = ",".join(header) + "\n" + ",".join(_cell(row.get(h)) for h in header)
        pid = (row.get("patient_id") or "").strip()
        if not pid:
            rejects.append(Reject(ref, "patient_id is empty", original))
            continue
        code = (row.get("code") or "").strip()
        loinc = code if code in kb.loinc_index else local.get(code.upper(), code)
        analyte = kb.loinc_index.get(loinc)
        if analyte is None:
            rejects.append(Reject(ref, f"unknown code '{code}'", original, pid))
            continue
        try:
            when = date.fromisoformat((row.get("date") or "").strip()[:10])
        except ValueError:
            rejects.append(Reject(ref, f"date '{row.get('date')}' is not YYYY-MM-DD", original, pid))
            continue
        raw_value = (row.get("value") or "").strip()
        below = raw_value.startswith("<")
        try:
            value = float(raw_value.lstrip("<>= "))
        except ValueError:
            rejects.append(Reject(ref, f"value '{raw_value}' is not a number", original, pid))
            continue
        if not math.isfinite(value) or value < 0:
            rejects.append(Reject(ref, f"impossible value {raw_value}", original, pid))
            continue
        unit = (row.get("unit") or "").strip()
        converted = kb.convert(analyte, value, unit)
        if converted is None:
            rejects.append(Reject(ref, f"unknown unit '{unit}' for {analyte}", original, pid))
            continue
        lows = [(row.get(k) or "").strip() for k in ("ref_low", "ref_high")]
        bounds: list[float | None] = []
        for b in lows:
            try:
                bounds.append(kb.convert(analyte, float(b), unit) if b else None)
            except ValueError:
                bounds.append(None)
        result_id = (row.get("result_id") or "").strip()
        key = f"csv:{result_id}" if result_id else f"csv:{pid}:{when.isoformat()}:{loinc}"
        status = (row.get("status") or "final").strip().lower()
        lab = d.LabResult(
            analyte,
            converted,
            kb.analytes[analyte].canonical,
            when,
            "",
            loinc,
            value,
            unit,
            bounds[0],
            bounds[1],
            below,
        )
        items.append(Item("lab", pid, key, lab, ref, original, correction=status in ("corrected", "amended", "c")))
    return Parsed("csv", items, rejects)


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text
