"""Imports: FHIR Bundles and Bulk NDJSON, HL7 v2 ORU^R01, CSV and PharmCAT reports -> items -> the store."""

from __future__ import annotations

from pathlib import Path

from azaguard.ingest.items import Item, Parsed, Reject
from azaguard.knowledge import Knowledge

FORMATS = ("fhir", "ndjson", "hl7v2", "csv", "pharmcat")


class FormatError(ValueError):
    pass


def _is_json_object(line: str) -> bool:
    import json

    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


def detect_format(text: str, filename: str = "") -> str:
    name = filename.lower()
    head = text.lstrip("\ufeff \r\n\t\x0b")[:200]
    if name.endswith((".hl7", ".oru")) or (head[:3] in ("MSH", "FHS", "BHS") and head[3:4] == "|"):
        return "hl7v2"
    if name.endswith(".ndjson"):
        return "ndjson"
    if name.endswith(".csv"):
        return "csv"
    from azaguard.ingest.pharmcat import looks_like_pharmcat

    if looks_like_pharmcat(text):
        return "pharmcat"
    if head.startswith("{"):
        # NDJSON: the whole first line is a JSON object of its own and more lines follow (a
        # pretty-printed Bundle's first line is just "{"; a one-line Bundle has no second line).
        body = text.lstrip("\ufeff \r\n\t\x0b")
        first_line, _, rest = body.partition("\n")
        if rest.strip() and _is_json_object(first_line):
            return "ndjson"
        return "fhir"
    if "patient_id" in head.split("\n", 1)[0].lower():
        return "csv"
    raise FormatError(
        f"cannot tell the format of {filename or 'the input'}: expected FHIR JSON, NDJSON, HL7 v2, CSV "
        "or a PharmCAT report"
    )


def parse_text(
    text: str,
    kb: Knowledge,
    fmt: str | None = None,
    source: str = "",
    local_codes: dict[str, str] | None = None,
    patient: str | None = None,
) -> Parsed:
    from azaguard.ingest.csvfile import parse_csv_text
    from azaguard.ingest.fhir import parse_bundle_text, parse_ndjson_text
    from azaguard.ingest.hl7v2 import parse_hl7_text
    from azaguard.ingest.pharmcat import parse_pharmcat_text

    fmt = fmt or detect_format(text, source)
    source = source or fmt
    if fmt == "fhir":
        return parse_bundle_text(text, kb, source, patient)
    if fmt == "ndjson":
        return parse_ndjson_text(text, kb, source)
    if fmt == "hl7v2":
        return parse_hl7_text(text, kb, source, local_codes)
    if fmt == "csv":
        return parse_csv_text(text, kb, source, local_codes)
    if fmt == "pharmcat":
        return parse_pharmcat_text(text, kb, source, patient)
    raise FormatError(f"unknown format '{fmt}' (use one of {', '.join(FORMATS)})")


def load_code_map(path: str | Path) -> dict[str, str]:
    """A clinic's local lab codes -> LOINC, as TOML ([codes] LOCAL = "LOINC") or CSV (local,loinc)."""
    import csv
    import tomllib

    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".toml":
        data = tomllib.loads(text)
        codes = data.get("codes", data)
        return {str(k): str(v) for k, v in codes.items()}
    rows = list(csv.reader(text.splitlines()))
    return {r[0].strip(): r[1].strip() for r in rows[1:] if len(r) >= 2 and r[0].strip()}


__all__ = ["FORMATS", "FormatError", "Item", "Parsed", "Reject", "detect_format", "load_code_map", "parse_text"]
