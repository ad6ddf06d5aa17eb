"""HL7 v2.x ORU^R01 lab messages -> import items.

Honours OBX-11 result status (F final, C/A corrected, P/R/S/I preliminary, D/W deleted,
X cannot be obtained) and OBX-8 abnormal flags; codes are LOINC (coding system LN) or a
clinic's local codes mapped to LOINC through a code table. A result's identity is the
filler order number plus the test code and sub-id, so a corrected result replaces the one it
corrects even though it arrives in a different message.

Segments, fields, repetitions and components are split here with plain string operations
using the separators the message declares in MSH-1/MSH-2 (python-hl7's tree builder costs
about a millisecond per message, which alone would cap imports near 1,000 results/s);
escape sequences (\\S\\, \\T\\, \\F\\, \\Xhh\\ ...) are decoded by python-hl7.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import Any

import hl7  # type: ignore[import-untyped]

from azaguard import domain as d
from azaguard.ingest.items import Item, Parsed, Reject
from azaguard.knowledge import Knowledge

LOINC_SYSTEMS = {"LN", "LOINC", "HTTP://LOINC.ORG"}
_FINAL = {"F", "C", "A", ""}
_PRELIMINARY = {"P", "R", "S", "I"}
_DELETED = {"D", "W"}
_IN_MESSAGE = "\r(in message)\r"  # joins a quarantined OBX to the message it came from
_NUMBER = re.compile(r"^\s*([<>]=?)?\s*(-?[0-9]+(?:\.[0-9]+)?)\s*$")


class HL7Error(ValueError):
    pass


# python-hl7 logs a damaged escape with the whole field (a patient identifier or a result) at
# ERROR level under a logger named after its own file: silence it - patient data never goes to
# a log - and refuse such fields ourselves so the damaged record is quarantined with its reason.
for _name in (hl7.__name__, *(getattr(mod, "__file__", "") for mod in (getattr(hl7, "util", None),) if mod)):
    logging.getLogger(_name).disabled = True
_ESCAPE = re.compile(r"\\([^\\]*)\\")
_KNOWN_ESCAPES = re.compile(
    r"^(F|S|T|R|E|H|N|\.br|\.sp\d*|\.in[+-]?\d*|\.ti[+-]?\d*|\.sk\d*|\.ce|\.fi|\.nf|"
    r"X(?:[0-9A-Fa-f]{2})+|Z.*|C[0-9A-Fa-f]{4}|M[0-9A-Fa-f]{4,6})$"
)


# Segments an ORU^R01 message may contain (v2.5.1 to v2.9), besides site-defined Z segments.
ORU_SEGMENTS = frozenset(
    {"MSH", "SFT", "UAC", "PID", "PD1", "PRT", "NTE", "NK1", "ARV", "PV1", "PV2", "ORC", "OBR", "TQ1", "TQ2"}
    | {"CTD", "OBX", "TCD", "SID", "FT1", "CTI", "SPM", "DSC"}
)
_BATCH_SEGMENTS = ("FHS", "BHS", "BTS", "FTS")  # file/batch envelopes around messages


def split_messages(text: str) -> list[str]:
    """One string per message; accepts \\r, \\n or \\r\\n segment separators, MLLP framing and
    FHS/BHS batch envelopes."""
    text = text.replace("\x0b", "").replace("\x1c", "").replace("\r\n", "\r").replace("\n", "\r")
    messages: list[str] = []
    current: list[str] = []
    for seg in text.split("\r"):
        if not seg.strip() or (seg.startswith(_BATCH_SEGMENTS) and seg[3:4] in ("|", "")):
            continue
        if seg.startswith("MSH") and current:
            messages.append("\r".join(current))
            current = []
        current.append(seg)
    if current:
        messages.append("\r".join(current))
    return messages


@lru_cache(maxsize=64)
def _decoder(fs: str, enc: str) -> Any:
    """A python-hl7 message with these separators: escape sequences depend on nothing else."""
    return hl7.parse(f"MSH{fs}{enc}")


class _Message:
    """A message split into segments and fields; `field(seg, n)` follows HL7 numbering (MSH too)."""

    __slots__ = ("comp", "enc", "esc", "fs", "raw", "rep", "segments")

    def __init__(self, raw: str) -> None:
        if not raw.startswith("MSH"):
            raise HL7Error("does not start with an MSH segment")
        if len(raw) < 8:
            raise HL7Error("the MSH segment is cut short")
        fs = raw[3]
        segs = raw.split("\r")
        msh = segs[0].split(fs)
        enc = msh[1] if len(msh) > 1 else ""
        if len(enc) < 2 or fs.isalnum() or any(c.isalnum() or c == fs for c in enc):
            raise HL7Error("MSH-2 does not declare the encoding characters")
        self.fs, self.comp, self.rep = fs, enc[0], enc[1]
        self.esc = enc[2] if len(enc) > 2 else "\\"
        self.raw = raw
        self.enc = enc
        # MSH-1 is the field separator itself, so MSH field n is at index n like every other segment.
        self.segments: list[list[str]] = [["MSH", fs, *msh[1:]]]
        self.segments.extend(s.split(fs) for s in segs[1:])

    def damaged_segment(self) -> str | None:
        """The first line that is not an ORU^R01 (or Z) segment, e.g. text damaged in transfer."""
        for seg in self.segments[1:]:
            name = seg[0]
            if name not in ORU_SEGMENTS and not (len(name) == 3 and name[0] == "Z" and name.isalnum()):
                return self.fs.join(seg)
        return None

    def field(self, seg: list[str], n: int, comp: int = 1, rep: int = 0) -> str:
        """Component `comp` (1-based) of repetition `rep` of field `n`, unescaped; '' when absent."""
        if n >= len(seg):
            return ""
        value = seg[n]
        if n > 2 or (n and seg[0] != "MSH"):
            if self.rep in value:
                reps = value.split(self.rep)
                value = reps[rep] if rep < len(reps) else ""
            if self.comp in value:
                parts = value.split(self.comp)
                value = parts[comp - 1] if comp - 1 < len(parts) else ""
            elif comp > 1:
                value = ""
            if self.esc in value:
                value = self.unescape(value)
        return value.strip()

    def components(self, seg: list[str], text: str, size: int) -> list[list[str]]:
        """The components of each field's first repetition, unescaped, padded to `size` fields."""
        comp, rep, esc = self.comp, self.rep, self.esc
        if rep in text or esc in text:
            out = [[self.unescape(x) for x in v.split(rep, 1)[0].split(comp)] for v in seg]
        else:
            out = [v.split(comp) for v in seg]
        if len(out) < size:
            out.extend([[""]] * (size - len(out)))
        return out

    def unescape(self, value: str) -> str:
        if self.esc not in value:
            return value
        if self.esc == "\\":
            for match in _ESCAPE.finditer(value):
                if not _KNOWN_ESCAPES.match(match.group(1)):
                    raise HL7Error(f"invalid escape sequence \\{match.group(1)[:8]}\\")
        try:
            return str(_decoder(self.fs, self.enc).unescape(value))
        except Exception as exc:  # python-hl7 raises several types for odd encoding characters
            raise HL7Error("undecodable escape sequence") from exc

    def segment_text(self, seg: list[str]) -> str:
        if seg[0] == "MSH":
            return self.fs.join([seg[0], *seg[2:]])
        return self.fs.join(seg)


@dataclass(frozen=True)
class Header:
    """A message's MSH segment as an acknowledgement needs it, and whether the message is one this
    reader can read at all (the checks `parse_hl7_text` refuses a whole message for), so a live
    feed answers from the same splitter that imports the message rather than from a second parser."""

    field_separator: str
    encoding: str  # MSH-2 as sent
    sending_application: str  # MSH-3 to MSH-6, MSH-10 to MSH-12 as sent (still escaped)
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    control_id: str
    processing_id: str
    version: str
    message_type: str  # MSH-9.1^MSH-9.2, unescaped
    trigger: str  # MSH-9.2 as sent
    damaged_segment: str | None  # the first line that is not an ORU^R01 (or Z) segment

    @property
    def readable(self) -> str | None:
        """Why the reader refuses the whole message before reading any result, or None."""
        if self.message_type != "ORU^R01":
            return f"message type {self.message_type} is not ORU^R01"
        if self.damaged_segment is not None:
            return f"not an ORU^R01 segment: '{self.damaged_segment[:40]}' (damaged message?)"
        return None


def read_header(raw: str) -> Header:
    """The MSH segment of one message (`split_messages` output); HL7Error if it cannot be split."""
    msg = _Message(raw)
    msh = msg.segments[0]

    def sent(n: int) -> str:
        return msh[n] if n < len(msh) else ""

    trigger = sent(9).split(msg.comp)[1] if msg.comp in sent(9) else ""
    return Header(
        msg.fs, msg.enc, sent(3), sent(4), sent(5), sent(6), sent(10), sent(11), sent(12),
        f"{msg.field(msh, 9, 1)}^{msg.field(msh, 9, 2)}", trigger, msg.damaged_segment(),
    )  # fmt: skip


@lru_cache(maxsize=4096)
def _date(value: str) -> date | None:
    m = re.match(r"^(\d{4})(\d{2})(\d{2})", value)
    if not m:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


@lru_cache(maxsize=4096)
def _range(text: str) -> tuple[float | None, float | None]:
    m = re.match(r"^\s*([0-9.]+)\s*-\s*([0-9.]+)\s*$", text)
    if m:
        try:
            return float(m.group(1)), float(m.group(2))
        except ValueError:
            return None, None
    return None, None


def parse_hl7_text(text: str, kb: Knowledge, source: str = "hl7", local_codes: dict[str, str] | None = None) -> Parsed:
    items: list[Item] = []
    rejects: list[Reject] = []
    local = {k.upper(): v for k, v in (local_codes or {}).items()}
    # A quarantined result is stored as "<its OBX>(in message)<the message>": re-processing it
    # reads that one OBX with its message's MSH/PID/OBR context, not the message's other results.
    only: str | None = None
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    if _IN_MESSAGE in text:
        only, text = text.split(_IN_MESSAGE, 1)
    for n, raw in enumerate(split_messages(text), 1):
        ref = f"{source} message {n}"
        try:
            _message(raw, ref, source, n, kb, local, only, items, rejects)
        except HL7Error as exc:  # a damaged header field: the whole message is quarantined
            rejects.append(Reject(ref, f"not a parsable HL7 v2 message ({exc})", raw))
    return Parsed("hl7v2", items, rejects)


def _message(
    raw: str,
    ref: str,
    source: str,
    n: int,
    kb: Knowledge,
    local: dict[str, str],
    only: str | None,
    items: list[Item],
    rejects: list[Reject],
) -> None:
    """One message's results into `items`, its refusals into `rejects`."""
    try:
        msg = _Message(raw)
    except HL7Error as exc:
        rejects.append(Reject(ref, f"not a parsable HL7 v2 message ({exc})", raw))
        return
    msh = msg.segments[0]
    control = msg.field(msh, 10)
    ref = f"{source} message {n} ({control or 'no control id'})"
    msg_type = f"{msg.field(msh, 9, 1)}^{msg.field(msh, 9, 2)}"
    if msg_type != "ORU^R01":
        rejects.append(Reject(ref, f"message type {msg_type} is not ORU^R01", raw))
        return
    facility = msg.field(msh, 4) or msg.field(msh, 3) or "lab"
    damaged = msg.damaged_segment()
    if damaged is not None:
        rejects.append(Reject(ref, f"not an ORU^R01 segment: '{damaged[:40]}' (damaged message?)", raw))
        return
    # ORU^R01 may carry several patients (one PID per PATIENT_RESULT group): every OBX
    # belongs to the PID before it, never simply to the message's first PID.
    pids = [seg for seg in msg.segments if seg[0] == "PID"]
    if not pids:
        rejects.append(Reject(ref, "no PID segment: the patient is unknown", raw))
        return
    if not all(msg.field(pid, 3) for pid in pids):
        rejects.append(Reject(ref, "PID-3 patient identifier is empty", raw))
        return
    patient = ""
    obr_filler, obr_date = "", None
    obx_n = matched = 0
    for seg in msg.segments:
        name = seg[0]
        if name == "PID":
            patient = msg.field(seg, 3)
            obr_filler, obr_date = "", None
            continue
        if name == "OBR":
            obr_filler = msg.field(seg, 3) or msg.field(seg, 2)
            obr_date = _date(msg.field(seg, 7))
            continue
        if name != "OBX":
            continue
        obx_n += 1
        seg_text = msg.segment_text(seg)
        if only is not None and seg_text != only:
            continue
        matched += 1
        oref = f"{ref} OBX {msg.field(seg, 1) or obx_n}"
        if not patient:
            rejects.append(Reject(oref, "OBX before any PID segment: the patient is unknown", raw))
            continue
        try:
            result = _obx(msg, seg, kb, local, facility, obr_filler, obr_date, patient, oref, seg_text)
        except HL7Error as exc:
            result = Reject(oref, f"damaged field: {exc}", f"{seg_text}{_IN_MESSAGE}{raw}", patient)
        if isinstance(result, Reject):
            rejects.append(result)
        else:
            items.append(result)
    if obx_n == 0:
        why = "no OBX segment: the message carries no results (truncated?)"
        rejects.append(Reject(ref, why, raw, msg.field(pids[0], 3)))
    elif only is not None and matched == 0:
        why = "the quarantined OBX segment is not in its message"
        rejects.append(Reject(ref, why, f"{only}{_IN_MESSAGE}{raw}", msg.field(pids[0], 3)))


def _obx(
    msg: _Message,
    seg: list[str],
    kb: Knowledge,
    local: dict[str, str],
    facility: str,
    filler: str,
    obr_date: date | None,
    patient: str,
    ref: str,
    seg_text: str,
) -> Item | Reject:
    original = f"{seg_text}{_IN_MESSAGE}{msg.raw}"
    c = msg.components(seg, seg_text, 15)  # c[n] = the components of OBX-n (first repetition, unescaped)
    status = c[11][0].strip().upper()
    if status == "X":
        return Reject(ref, "OBX-11 status X: result cannot be obtained (no value)", original, patient)
    obx3 = c[3]
    code = obx3[0].strip()
    system = obx3[2].strip().upper() if len(obx3) > 2 else ""
    loinc = code if system in LOINC_SYSTEMS else local.get(code.upper())
    if loinc is None and len(obx3) > 5 and obx3[5].strip().upper() in LOINC_SYSTEMS:  # alternate coding LN
        loinc = obx3[3].strip()
    analyte = kb.loinc_index.get(loinc or "")
    if analyte is None:
        why = f"unknown code '{code}' ({system or 'no coding system'})"
        if system not in LOINC_SYSTEMS and code.upper() not in local:
            why += "; add it to the local code table"
        return Reject(ref, why, original, patient)
    when = _date(c[14][0].strip()) or obr_date
    if when is None:
        return Reject(ref, "no observation date (OBX-14 or OBR-7)", original, patient)
    key = f"hl7:{facility}:{filler or 'no-order'}:{loinc}:{c[4][0].strip() or '1'}"
    if status in _DELETED:
        return Item("lab", patient, key, None, ref, original, correction=True)
    if status not in _FINAL and status not in _PRELIMINARY:
        why = f"OBX-11 result status '{status}' is not one this import accepts (F, C, A, P, R, S, I, D, W, X)"
        return Reject(ref, why, original, patient)
    obx5 = c[5]
    value_text, comparator = obx5[0], ""
    if c[2][0].strip().upper() == "SN":  # structured numeric: comparator^number
        comparator, value_text = obx5[0].strip(), (obx5[1] if len(obx5) > 1 else "")
    m = _NUMBER.match(value_text)
    if not m:
        return Reject(ref, f"non-numeric result '{value_text.strip()[:30]}'", original, patient)
    comparator = comparator or (m.group(1) or "")
    value = float(m.group(2))
    if not math.isfinite(value) or value < 0:
        return Reject(ref, f"impossible value {value_text.strip()}", original, patient)
    obx6 = c[6]
    unit = obx6[0].strip()
    converted = kb.convert(analyte, value, unit) if unit else None
    if converted is None and len(obx6) > 1:
        # OBX-6 is a CE (identifier^text^system); a unit written with a bare '^' (x10^9/L) splits too.
        for candidate in ("^".join(obx6).strip(), obx6[1].strip()):
            converted = kb.convert(analyte, value, candidate) if candidate else None
            if converted is not None:
                unit = candidate
                break
    if converted is None:
        return Reject(ref, f"unknown unit '{unit or '(none)'}' for {analyte}", original, patient)
    low, high = _range(c[7][0])
    lab = d.LabResult(
        analyte,
        converted,
        kb.analytes[analyte].canonical,
        when,
        "",
        loinc or code,
        value,
        unit,
        kb.convert(analyte, low, unit) if low is not None else None,
        kb.convert(analyte, high, unit) if high is not None else None,
        comparator.startswith("<"),
    )
    flag = c[8][0].strip() or None
    return Item(
        "lab",
        patient,
        key,
        lab,
        ref,
        original,
        correction=status in ("C", "A"),
        abnormal_flag=flag,
        preliminary=status in _PRELIMINARY,
    )
