"""HL7 v2.x ORU^R01 lab messages -> import items (python-hl7 does the parsing).

Honours OBX-11 result status (F final, C corrected, P preliminary, D/W deleted, X cannot be
obtained) and OBX-8 abnormal flags; codes are LOINC (coding system LN) or a clinic's local
codes mapped to LOINC through a code table. A result's identity is the filler order number
plus the test code and sub-id, so a corrected result replaces the one it corrects even though
it arrives in a different message.
"""

from __future__ import annotations

import math
import re
from datetime import date
from typing import Any

import hl7  # type: ignore[import-untyped]

from azaguard import domain as d
from azaguard.ingest.items import Item, Parsed, Reject
from azaguard.knowledge import Knowledge

LOINC_SYSTEMS = {"LN", "LOINC", "HTTP://LOINC.ORG"}
_FINAL = {"F", "C", "A", "P", "R", "S", "I", ""}
_DELETED = {"D", "W"}


def split_messages(text: str) -> list[str]:
    """One string per message; accepts \\r, \\n or \\r\\n segment separators and MLLP framing."""
    text = text.replace("\x0b", "").replace("\x1c", "").replace("\r\n", "\r").replace("\n", "\r")
    messages: list[str] = []
    current: list[str] = []
    for seg in text.split("\r"):
        if not seg.strip():
            continue
        if seg.startswith("MSH") and current:
            messages.append("\r".join(current))
            current = []
        current.append(seg)
    if current:
        messages.append("\r".join(current))
    return messages


def _field(seg: Any, n: int, comp: int = 1, rep: int = 0) -> str:
    """Component `comp` (1-based) of field `n` of a python-hl7 segment, '' when absent."""
    try:
        if len(seg) <= n:
            return ""
        reps = str(seg(n)).split("~")
        parts = reps[rep].split("^") if rep < len(reps) else [""]
        return parts[comp - 1].strip() if comp - 1 < len(parts) else ""
    except (IndexError, KeyError):
        return ""


def _date(value: str) -> date | None:
    m = re.match(r"^(\d{4})(\d{2})(\d{2})", value)
    if not m:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


def _range(text: str) -> tuple[float | None, float | None]:
    m = re.match(r"^\s*([0-9.]+)\s*-\s*([0-9.]+)\s*$", text)
    if m:
        return float(m.group(1)), float(m.group(2))
    return None, None


def parse_hl7_text(text: str, kb: Knowledge, source: str = "hl7", local_codes: dict[str, str] | None = None) -> Parsed:
    items: list[Item] = []
    rejects: list[Reject] = []
    local = {k.upper(): v for k, v in (local_codes or {}).items()}
    for n, raw in enumerate(split_messages(text), 1):
        ref = f"{source} message {n}"
        try:
            msg = hl7.parse(raw)
            msh = msg.segment("MSH")
        except Exception as exc:  # the library raises several types for damaged input
            rejects.append(Reject(ref, f"not a parsable HL7 v2 message ({type(exc).__name__})", raw))
            continue
        msg_type = f"{_field(msh, 9, 1)}^{_field(msh, 9, 2)}"
        if msg_type != "ORU^R01":
            rejects.append(Reject(ref, f"message type {msg_type} is not ORU^R01", raw))
            continue
        facility = _field(msh, 4) or _field(msh, 3) or "lab"
        control = _field(msh, 10)
        ref = f"{source} message {n} ({control or 'no control id'})"
        try:
            pid = msg.segment("PID")
        except KeyError:
            rejects.append(Reject(ref, "no PID segment: the patient is unknown", raw))
            continue
        patient = _field(pid, 3)
        if not patient:
            rejects.append(Reject(ref, "PID-3 patient identifier is empty", raw))
            continue
        obr_filler, obr_date = "", None
        obx_n = 0
        for seg in msg:
            name = str(seg(0))
            if name == "OBR":
                obr_filler = _field(seg, 3) or _field(seg, 2)
                obr_date = _date(_field(seg, 7))
                continue
            if name != "OBX":
                continue
            obx_n += 1
            seg_text = str(seg)
            oref = f"{ref} OBX {_field(seg, 1) or obx_n}"
            result = _obx(seg, kb, local, facility, obr_filler, obr_date, patient, oref, seg_text, raw)
            if isinstance(result, Reject):
                rejects.append(result)
            elif result is not None:
                items.append(result)
    return Parsed("hl7v2", items, rejects)


def _obx(
    seg: Any,
    kb: Knowledge,
    local: dict[str, str],
    facility: str,
    filler: str,
    obr_date: date | None,
    patient: str,
    ref: str,
    seg_text: str,
    raw: str,
) -> Item | Reject | None:
    original = raw  # the whole message: re-processing from quarantine re-reads it (idempotently)
    status = _field(seg, 11).upper()
    if status == "X":
        return Reject(ref, "OBX-11 status X: result cannot be obtained (no value)", original, patient)
    code, system = _field(seg, 3, 1), _field(seg, 3, 3).upper()
    loinc = code if system in LOINC_SYSTEMS else local.get(code.upper())
    if loinc is None and _field(seg, 3, 6).upper() in LOINC_SYSTEMS:  # alternate coding LN in components 4-6
        loinc = _field(seg, 3, 4)
    analyte = kb.loinc_index.get(loinc or "")
    if analyte is None:
        why = f"unknown code '{code}' ({system or 'no coding system'})"
        if system not in LOINC_SYSTEMS and code.upper() not in local:
            why += "; add it to the local code table"
        return Reject(ref, why, original, patient)
    when = _date(_field(seg, 14)) or obr_date
    if when is None:
        return Reject(ref, "no observation date (OBX-14 or OBR-7)", original, patient)
    key = f"hl7:{facility}:{filler or 'no-order'}:{loinc}:{_field(seg, 4) or '1'}"
    if status in _DELETED:
        return Item("lab", patient, key, None, ref, original, correction=True)
    if status not in _FINAL:
        return Reject(ref, f"OBX-11 result status '{status}' is not a known HL7 table 0085 value", original, patient)
    vtype = _field(seg, 2).upper()
    value_text = _field(seg, 5)
    comparator = ""
    if vtype == "SN":
        comparator, value_text = _field(seg, 5, 1), _field(seg, 5, 2)
    m = re.match(r"^\s*([<>]=?)?\s*(-?[0-9]+(?:\.[0-9]+)?)\s*$", value_text)
    if not m:
        return Reject(ref, f"non-numeric result '{value_text[:30]}'", original, patient)
    comparator = comparator or (m.group(1) or "")
    value = float(m.group(2))
    if not math.isfinite(value) or value < 0:
        return Reject(ref, f"impossible value {value_text}", original, patient)
    unit = _field(seg, 6, 1) or _field(seg, 6, 2)
    converted = kb.convert(analyte, value, unit) if unit else None
    if converted is None:
        return Reject(ref, f"unknown unit '{unit or '(none)'}' for {analyte}", original, patient)
    low, high = _range(_field(seg, 7))
    lab = d.LabResult(
        analyte=analyte,
        value=converted,
        unit=kb.analytes[analyte].canonical,
        when=when,
        code=loinc or code,
        original_value=value,
        original_unit=unit,
        ref_low=kb.convert(analyte, low, unit) if low is not None else None,
        ref_high=kb.convert(analyte, high, unit) if high is not None else None,
        below_detection=comparator.startswith("<"),
    )
    flag = _field(seg, 8) or None
    return Item("lab", patient, key, lab, ref, original, correction=status in ("C", "A"), abnormal_flag=flag)
