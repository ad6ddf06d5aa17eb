"""CSV lab results with documented columns (docs/import.md) -> import items.

Required columns: patient_id, date (YYYY-MM-DD), code (LOINC, or a local code in the code
table), value, unit. Optional: result_id (the lab's identity of the result; without it the
identity is patient + date + code), status (final | corrected), ref_low, ref_high.
"""

from __future__ import annotations

import csv
import io
import math
from datetime import date

from azaguard import domain as d
from azaguard.ingest.items import Item, Parsed, Reject
from azaguard.knowledge import Knowledge

REQUIRED = ("patient_id", "date", "code", "value", "unit")


def parse_csv_text(text: str, kb: Knowledge, source: str = "csv", local_codes: dict[str, str] | None = None) -> Parsed:
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        return Parsed("csv", [], [Reject(source, f"missing column(s) {', '.join(missing)}", text[:20000])])
    reader.fieldnames = header
    local = {k.upper(): v for k, v in (local_codes or {}).items()}
    items: list[Item] = []
    rejects: list[Reject] = []
    for n, row in enumerate(reader, 2):
        ref = f"{source} line {n}"
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
