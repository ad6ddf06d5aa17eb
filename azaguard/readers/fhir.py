"""FHIR R4 Bundle (JSON) -> PatientRecord.

The reader is deliberately strict about structure (a wrong type or a missing date is a
`ReaderError` naming the entry and field, never a traceback) and deliberately lenient about
content it cannot interpret (an unknown unit becomes a RejectedResult, which the engine turns
into a data-quality finding): structural damage means the file cannot be trusted at all,
whereas one odd result must not hide the rest of the record.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from azaguard import domain as d
from azaguard.knowledge import Knowledge, word_match

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
UCUM = "http://unitsofmeasure.org"

_DATE = re.compile(r"^(\d{4})(-(\d{2})(-(\d{2}))?)?(T[0-9:.]+(Z|[+-]\d{2}:\d{2})?)?$")
_OBS_STATUS_USED = {"final", "amended", "corrected", "preliminary"}
_OBS_STATUS_IGNORED = {"registered", "cancelled", "entered-in-error", "unknown"}
# The newest version of a result with one of these statuses withdraws the result altogether.
_OBS_STATUS_WITHDRAWN = {"entered-in-error", "cancelled"}
# A course on hold is withheld for now and will be resumed: it must not be read as stopped, or a
# withheld azathioprine loses its monitoring, interaction checks and red-flag guidance. R4 calls it
# `on-hold`; `suspended` (R5 MedicationRequest, some other systems) is the same state.
_MS_STATUS: dict[str, d.MedStatus | None] = {
    "active": "active",
    "completed": "stopped",
    "stopped": "stopped",
    "on-hold": "on-hold",
    "suspended": "on-hold",
    "intended": "intended",
    "unknown": "unknown",
    "not-taken": None,
    "entered-in-error": None,
}
_MR_STATUS: dict[str, d.MedStatus | None] = {
    "active": "active",
    "draft": "draft",
    "on-hold": "on-hold",
    "suspended": "on-hold",
    "completed": "stopped",
    "stopped": "stopped",
    "cancelled": None,
    "entered-in-error": None,
    "unknown": "unknown",
}
_PERIOD_DAYS = {"s": 1 / 86400, "min": 1 / 1440, "h": 1 / 24, "d": 1.0, "wk": 7.0, "mo": 30.4375, "a": 365.25}
_MASS_MG = {"mg": 1.0, "g": 1000.0, "ug": 0.001, "mcg": 0.001}


_TEXT_FREQUENCY = (
    (re.compile(r"\b(three times|tds|tid)\b"), 3.0),
    (re.compile(r"\b(twice|bd|bid)\b"), 2.0),
    (re.compile(r"\b(once daily|once a day|daily|od|qd|each day|every day|at night|in the morning)\b"), 1.0),
)


def _per_day_from_text(text: str) -> float | None:
    low = text.lower()
    if re.search(r"\b(week|weekly|weeks|every other|alternate|fortnight|month)", low):
        return None  # not a daily schedule: never read "twice weekly" as twice daily
    for pattern, n in _TEXT_FREQUENCY:
        if pattern.search(low):
            return n
    return None


# (vaccine key, live, live_unknown): live_unknown = the code or name may be a live vaccine.
_Vaccine = tuple[str, bool, bool]


class ReaderError(Exception):
    """Malformed input: names the resource and the field so an integrator can fix it."""

    def __init__(self, where: str, field: str, problem: str) -> None:
        self.where, self.field, self.problem = where, field, problem
        super().__init__(f"{where}: field '{field}' {problem}" if field else f"{where}: {problem}")


def read_bundle_file(path: str | Path, kb: Knowledge) -> d.PatientRecord:
    """Read a Bundle from disk; unreadable or non-JSON files are ReaderErrors too."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")  # a byte-order mark is harmless
    except OSError as exc:
        raise ReaderError(str(p), "", f"cannot be read ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ReaderError(str(p), "", "is not UTF-8 text") from exc
    try:
        data = json.loads(text)  # NaN/Infinity are refused where they are read, naming the field
    except json.JSONDecodeError as exc:
        raise ReaderError(str(p), "", f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    except RecursionError as exc:
        raise ReaderError(str(p), "", "is nested too deeply to be a FHIR Bundle") from exc
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise ReaderError(str(p), "", f"is not readable JSON ({str(exc).split(';')[0]})") from exc
    try:
        return read_bundle(data, kb)
    except RecursionError as exc:
        raise ReaderError(str(p), "", "is nested too deeply to be a FHIR Bundle") from exc


def read_bundle(data: Any, kb: Knowledge) -> d.PatientRecord:
    return _BundleReader(kb).read(data)


# ---------------------------------------------------------------- small typed accessors
def _type_name(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), "number" if isinstance(v, int | float) else type(v).__name__
    )


def _obj(res: dict[str, Any], key: str, where: str, required: bool = False) -> dict[str, Any] | None:
    v = res.get(key)
    if v is None:
        if required:
            raise ReaderError(where, key, "is required")
        return None
    if not isinstance(v, dict):
        raise ReaderError(where, key, f"must be an object, got {_type_name(v)}")
    return v


def _list(res: dict[str, Any], key: str, where: str) -> list[Any]:
    v = res.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        raise ReaderError(where, key, f"must be an array, got {_type_name(v)}")
    return v


def _str(res: dict[str, Any], key: str, where: str, required: bool = False) -> str | None:
    v = res.get(key)
    if v is None:
        if required:
            raise ReaderError(where, key, "is required")
        return None
    if not isinstance(v, str):
        raise ReaderError(where, key, f"must be a string, got {_type_name(v)}")
    return v


def _num(res: dict[str, Any], key: str, where: str) -> float | None:
    v = res.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ReaderError(where, key, f"must be a number, got {_type_name(v)} {json.dumps(v)[:40]}")
    try:
        x = float(v)
    except OverflowError:
        raise ReaderError(where, key, "is too large to be a measurement") from None
    if not math.isfinite(x):
        raise ReaderError(where, key, f"must be a finite number, got {x}")
    return x


def parse_date(value: Any, where: str, field: str) -> date:
    """FHIR date or dateTime -> date; partial dates (YYYY, YYYY-MM) take the first day."""
    if not isinstance(value, str):
        raise ReaderError(where, field, f"must be a FHIR date string, got {_type_name(value)}")
    m = _DATE.match(value.strip())
    if not m:
        raise ReaderError(where, field, f"is not a FHIR date or dateTime: '{value[:40]}'")
    try:
        return date(int(m.group(1)), int(m.group(3) or 1), int(m.group(5) or 1))
    except ValueError as exc:
        raise ReaderError(where, field, f"is not a real date: '{value[:40]}'") from exc


def _codings(cc: dict[str, Any] | None, where: str, field: str) -> list[tuple[str, str, str]]:
    """(system, code, display) for each coding of a CodeableConcept."""
    if cc is None:
        return []
    out = []
    for i, c in enumerate(_list(cc, "coding", f"{where}")):
        if not isinstance(c, dict):
            raise ReaderError(where, f"{field}.coding[{i}]", f"must be an object, got {_type_name(c)}")
        out.append(
            (
                _str(c, "system", where) or "",
                _str(c, "code", where) or "",
                _str(c, "display", where) or "",
            )
        )
    return out


def _cc_text(cc: dict[str, Any] | None, where: str, field: str) -> str:
    """The human label of a CodeableConcept: its text, else its codings' displays."""
    if cc is None:
        return ""
    text = _str(cc, "text", where) or ""
    if text:
        return text
    displays = list(dict.fromkeys(disp for _, _, disp in _codings(cc, where, field) if disp))
    return " ".join(displays)


def _cc_search_text(cc: dict[str, Any] | None, where: str, field: str) -> str:
    """Text and every display, for matching names when codes are absent or unknown."""
    if cc is None:
        return ""
    parts = [_str(cc, "text", where) or "", *(disp for _, _, disp in _codings(cc, where, field))]
    return " ".join(p for p in parts if p)


def _cc_label(cc: Any, where: str, field: str) -> str:
    """One short label for a CodeableConcept: its text, else the first coding display, else the
    first code.

    For values a person reads back (why a course is on hold, which assay measured an activity):
    one label, not every synonym a system sent. Wrong JSON types are ReaderErrors naming the full
    field path (`statusReason[1].coding[0].display`), like every other structural defect.
    """
    if cc is None:
        return ""
    if not isinstance(cc, dict):
        raise ReaderError(where, field, f"must be an object, got {_type_name(cc)}")
    text = cc.get("text")
    if text is not None and not isinstance(text, str):
        raise ReaderError(where, f"{field}.text", f"must be a string, got {_type_name(text)}")
    if text and text.strip():
        return text.strip()
    codings = cc.get("coding")
    if codings is None:
        codings = []
    if not isinstance(codings, list):
        raise ReaderError(where, f"{field}.coding", f"must be an array, got {_type_name(codings)}")
    displays: list[str] = []
    codes: list[str] = []
    for i, c in enumerate(codings):
        if not isinstance(c, dict):
            raise ReaderError(where, f"{field}.coding[{i}]", f"must be an object, got {_type_name(c)}")
        for key, found in (("display", displays), ("code", codes)):
            v = c.get(key)
            if v is None:
                continue
            if not isinstance(v, str):
                raise ReaderError(where, f"{field}.coding[{i}].{key}", f"must be a string, got {_type_name(v)}")
            if v.strip():
                found.append(v.strip())
    return (displays or codes or [""])[0]


_INSTANT = re.compile(r"^(\d{4}-\d{2}-\d{2})(T\d{2}:\d{2}(:\d{2})?(\.\d+)?(Z|[+-]\d{2}:\d{2})?)?$")


def _instant(value: Any, where: str, field: str) -> datetime:
    """FHIR instant (meta.lastUpdated) -> aware datetime, so versions sent from different time zones
    compare by the moment they were written, not by their text. A missing zone is read as UTC and a
    bare date as its midnight (lenient: only the order between versions matters)."""
    if not isinstance(value, str):
        raise ReaderError(where, field, f"must be a FHIR instant string, got {_type_name(value)}")
    v = value.strip()
    m = _INSTANT.match(v)
    if not m:
        raise ReaderError(where, field, f"is not a FHIR instant: '{v[:40]}'")
    # Python reads at most 6 fractional digits; more precision cannot change the order of real writes.
    fraction = m.group(4) or ""
    normalised = v.replace(fraction, fraction[:7], 1) if fraction else v
    try:
        dt = datetime.fromisoformat(normalised.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ReaderError(where, field, f"is not a real date and time: '{v[:40]}'") from exc
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


_OLDEST = datetime.min.replace(tzinfo=UTC)


def _version_rank(vid: str | None, updated: datetime | None, numeric: bool) -> tuple[Any, ...]:
    """Sort key of one version: versionId first (a missing one lowest), then lastUpdated."""
    version: int | str = (int(vid) if numeric else vid) if vid is not None else (0 if numeric else "")
    return (vid is not None, version, updated is not None, updated or _OLDEST)


def _current_observations(resources: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Keep only the current version of each result; drop withdrawn ones.

    A bundle may carry several versions of one Observation (same `id`): the original and its
    correction, or a result and its retraction. Reading them all would put a superseded value (a
    neutrophil count of 3.6 corrected to 1.2) next to the real one, and which one the engine then
    trusted would depend on bundle order. So, per id: the highest `meta.versionId` wins (as whole
    numbers when every version of that id is a digit string, else as text), then the latest
    `meta.lastUpdated`; a version without either ranks below one that has it. Only the winner is
    read; if its status is `entered-in-error` or `cancelled` the result is gone (an older version
    never comes back). Identical copies are read once. Versions that still tie but differ cannot
    be put in order: that is a ReaderError, because guessing could pick the superseded value.
    Observations without an id are independent results. Superseded versions are not read at all,
    so a defect that a correction fixed does not stop the bundle.
    """
    groups: dict[str, list[int]] = {}
    for i, (_, res) in enumerate(resources):
        rid = res.get("id")
        if res.get("resourceType") == "Observation" and isinstance(rid, str) and rid:
            groups.setdefault(rid, []).append(i)
    drop: set[int] = set()
    for rid, members in groups.items():
        if len(members) < 2:
            continue
        metas: list[tuple[str | None, datetime | None]] = []
        for i in members:
            where, res = resources[i]
            meta = _obj(res, "meta", where)
            vid: str | None = None
            updated: datetime | None = None
            if meta is not None:
                raw = meta.get("versionId")
                if raw is not None and not isinstance(raw, str):
                    raise ReaderError(where, "meta.versionId", f"must be a string, got {_type_name(raw)}")
                vid = raw.strip() if isinstance(raw, str) and raw.strip() else None
                if meta.get("lastUpdated") is not None:
                    updated = _instant(meta["lastUpdated"], where, "meta.lastUpdated")
            metas.append((vid, updated))
        numeric = all(v is None or re.fullmatch(r"[0-9]+", v) for v, _ in metas)
        ranks = [_version_rank(vid, updated, numeric) for vid, updated in metas]
        best = max(ranks)
        top = [i for i, r in zip(members, ranks, strict=True) if r == best]
        if len({json.dumps(resources[i][1], sort_keys=True) for i in top}) > 1:
            others = ", ".join(resources[i][0].split(" ")[0] for i in top[1:])
            raise ReaderError(
                resources[top[0]][0],
                "meta.versionId",
                f"does not say which version of Observation/{rid} is current (same version and "
                f"lastUpdated as {others}, different content): give each version its own meta.versionId",
            )
        winner = top[0]
        drop.update(i for i in members if i != winner)
        if resources[winner][1].get("status") in _OBS_STATUS_WITHDRAWN:
            drop.add(winner)
    return [r for i, r in enumerate(resources) if i not in drop]


class _BundleReader:
    def __init__(self, kb: Knowledge) -> None:
        self.kb = kb
        self.labs: list[d.LabResult] = []
        self.rejected: list[d.RejectedResult] = []
        self.meds: list[d.MedicationEntry] = []
        self.genotypes: list[d.GenotypeResult] = []
        self.activity: list[d.ActivityResult] = []
        self.conditions: list[d.Condition] = []
        self.allergies: list[d.Allergy] = []
        self.vaccinations: list[d.Vaccination] = []
        self.symptoms: list[d.Symptom] = []
        self.statuses: list[d.StatusObservation] = []
        self.screening: list[tuple[str, date]] = []
        self.screening_results: list[tuple[str, date, bool]] = []
        self.medications_by_id: dict[str, dict[str, Any]] = {}
        self._screening_index = {code: key for key, codes in kb.screening_codes.items() for code in codes}
        # Vaccine lookup: key -> (key, live, live_unknown). Names are searched in order: live,
        # inactivated, then uncertain (a formulation that may be live, e.g. CVX 188 zoster
        # unspecified). Uncertain names are generic ("zoster vaccine"), so they only decide when no
        # live or inactivated name matched: "zoster vaccine live" stays live, "recombinant zoster
        # vaccine" stays inactivated, and a bare "zoster vaccine" is never read as either.
        self._vaccine_cvx: dict[str, _Vaccine] = {}
        self._vaccine_names: list[tuple[str, _Vaccine]] = []
        self._uncertain_names: list[tuple[str, _Vaccine]] = []
        groups = (
            (kb.vaccines.live, (True, False), self._vaccine_names),
            (kb.vaccines.inactivated, (False, False), self._vaccine_names),
            (kb.vaccines.uncertain, (False, True), self._uncertain_names),
        )
        for group, (live, unknown), names in groups:
            for key, v in group.items():
                for c in v.cvx:
                    self._vaccine_cvx[c] = (key, live, unknown)
                for n in v.names:
                    names.append((n.lower(), (key, live, unknown)))

    # ------------------------------------------------------------ bundle
    def read(self, data: Any) -> d.PatientRecord:
        if not isinstance(data, dict):
            raise ReaderError("input", "", f"must be a FHIR Bundle object, got {_type_name(data)}")
        if data.get("resourceType") != "Bundle":
            raise ReaderError("input", "resourceType", f"must be 'Bundle', got {json.dumps(data.get('resourceType'))}")
        entries = _list(data, "entry", "Bundle")
        resources: list[tuple[str, dict[str, Any]]] = []
        for i, entry in enumerate(entries):
            where = f"Bundle.entry[{i}]"
            if not isinstance(entry, dict):
                raise ReaderError(where, "", f"must be an object, got {_type_name(entry)}")
            res = _obj(entry, "resource", where, required=True)
            assert res is not None
            rtype = _str(res, "resourceType", where, required=True)
            rid = _str(res, "id", where)
            label = f"{where} ({rtype}/{rid})" if rid else f"{where} ({rtype})"
            resources.append((label, res))
            if rtype == "Medication":
                if rid:
                    self.medications_by_id[f"Medication/{rid}"] = res
                full_url = entry.get("fullUrl")
                if isinstance(full_url, str) and full_url:
                    self.medications_by_id[full_url] = res
        patients = [(w, r) for w, r in resources if r["resourceType"] == "Patient"]
        if not patients:
            raise ReaderError("Bundle", "entry", "contains no Patient resource")
        if len(patients) > 1:
            raise ReaderError(
                "Bundle", "entry", f"contains {len(patients)} Patient resources; assess one patient per bundle"
            )
        pw, patient = patients[0]
        pid = _str(patient, "id", pw) or "unknown"
        birth = parse_date(patient["birthDate"], pw, "birthDate") if patient.get("birthDate") is not None else None
        sex = _str(patient, "gender", pw)
        if sex is not None and sex not in {"male", "female", "other", "unknown"}:
            raise ReaderError(pw, "gender", f"must be male, female, other or unknown, got '{sex}'")
        name = self._patient_name(patient, pw)
        handlers = {
            "Observation": self._observation,
            "MedicationStatement": self._medication_statement,
            "MedicationRequest": self._medication_request,
            "Immunization": self._immunization,
            "Condition": self._condition,
            "AllergyIntolerance": self._allergy,
        }
        for where, res in _current_observations(resources):
            handler = handlers.get(res["resourceType"])
            if handler is not None:
                handler(res, where)
        return d.PatientRecord(
            patient_id=pid,
            birth_date=birth,
            sex=sex,
            name=name,
            labs=tuple(sorted(self.labs, key=lambda r: r.when)),
            rejected=tuple(self.rejected),
            medications=tuple(self.meds),
            genotypes=tuple(self.genotypes),
            tpmt_activity=tuple(sorted(self.activity, key=lambda r: r.when)),
            conditions=tuple(self.conditions),
            allergies=tuple(self.allergies),
            vaccinations=tuple(self.vaccinations),
            symptoms=tuple(sorted(self.symptoms, key=lambda s: s.when)),
            statuses=tuple(sorted(self.statuses, key=lambda s: s.when)),
            screening_done=tuple(self.screening),
            screening_results=tuple(self.screening_results),
        )

    # ------------------------------------------------------------ one resource at a time (imports)
    _HANDLED = (
        "Observation",
        "MedicationStatement",
        "MedicationRequest",
        "Immunization",
        "Condition",
        "AllergyIntolerance",
    )

    def read_resource(self, res: dict[str, Any], where: str) -> list[Any]:
        """Domain objects (and RejectedResults) from one resource; ReaderError if it is malformed.

        Imports use this so one bad resource is quarantined while the rest of a batch is kept.
        """
        lists: list[list[Any]] = [
            self.labs, self.rejected, self.meds, self.genotypes, self.activity, self.conditions,
            self.allergies, self.vaccinations, self.symptoms, self.statuses, self.screening, self.screening_results,
        ]  # fmt: skip
        sizes = [len(x) for x in lists]
        rtype = res.get("resourceType")
        if rtype == "Medication" and isinstance(res.get("id"), str):
            self.medications_by_id[f"Medication/{res['id']}"] = res
            return []
        handler = {
            "Observation": self._observation,
            "MedicationStatement": self._medication_statement,
            "MedicationRequest": self._medication_request,
            "Immunization": self._immunization,
            "Condition": self._condition,
            "AllergyIntolerance": self._allergy,
        }.get(str(rtype))
        if handler is None:
            return []
        try:
            handler(res, where)
        except ReaderError:
            for lst, n in zip(lists, sizes, strict=True):
                del lst[n:]
            raise
        out: list[Any] = []
        for lst, n in zip(lists, sizes, strict=True):
            out.extend(lst[n:])
        return out

    @staticmethod
    def demographics(patient: dict[str, Any], where: str) -> dict[str, Any]:
        """Identifier (first Patient.identifier value, else id), name, birth date and sex."""
        identifier = None
        for ident in _list(patient, "identifier", where):
            if isinstance(ident, dict) and isinstance(ident.get("value"), str) and ident["value"].strip():
                identifier = ident["value"].strip()
                break
        identifier = identifier or _str(patient, "id", where)
        if not identifier:
            raise ReaderError(where, "identifier", "is required (Patient.identifier or Patient.id)")
        sex = _str(patient, "gender", where)
        if sex is not None and sex not in {"male", "female", "other", "unknown"}:
            raise ReaderError(where, "gender", f"must be male, female, other or unknown, got '{sex}'")
        birth = parse_date(patient["birthDate"], where, "birthDate") if patient.get("birthDate") is not None else None
        return {
            "identifier": identifier,
            "name": _BundleReader._patient_name(patient, where) or "",
            "birth_date": birth,
            "sex": sex,
        }

    @staticmethod
    def _patient_name(patient: dict[str, Any], where: str) -> str | None:
        for n in _list(patient, "name", where):
            if isinstance(n, dict):
                if isinstance(n.get("text"), str):
                    return str(n["text"])
                given_list = n.get("given", [])
                if not isinstance(given_list, list):
                    raise ReaderError(where, "name.given", f"must be an array of strings, got {_type_name(given_list)}")
                given = " ".join(g for g in given_list if isinstance(g, str))
                family = n.get("family") if isinstance(n.get("family"), str) else ""
                full = f"{given} {family}".strip()
                if full:
                    return full
        return None

    # ------------------------------------------------------------ observations
    def _obs_date(self, res: dict[str, Any], where: str) -> date:
        if res.get("effectiveDateTime") is not None:
            return parse_date(res["effectiveDateTime"], where, "effectiveDateTime")
        period = _obj(res, "effectivePeriod", where)
        if period and period.get("start") is not None:
            return parse_date(period["start"], where, "effectivePeriod.start")
        if res.get("issued") is not None:
            return parse_date(res["issued"], where, "issued")
        raise ReaderError(where, "effectiveDateTime", "is required (no effective[x] or issued date)")

    def _observation(self, res: dict[str, Any], where: str) -> None:
        status = _str(res, "status", where, required=True)
        if status in _OBS_STATUS_IGNORED:
            return
        if status not in _OBS_STATUS_USED:
            raise ReaderError(where, "status", f"is not an Observation status: '{status}'")
        code = _obj(res, "code", where, required=True)
        codings = _codings(code, where, "code")
        loincs = [c for s, c, _ in codings if s == LOINC]
        snomeds = [c for s, c, _ in codings if s == SNOMED]
        text = _cc_search_text(code, where, "code")
        kb = self.kb
        categories = [
            c
            for cat in _list(res, "category", where)
            if isinstance(cat, dict)
            for _, c, _ in _codings(cat, where, "category")
        ]

        if any(c in kb.status_codes.breastfeeding_loinc for c in snomeds):
            # SNOMED 413712001 "Breastfeeding (mother)" as the question (IGs send it as the code)
            self._status(
                res, where, "breastfeeding", kb.status_codes.breastfeeding_answers,
                kb.status_codes.not_breastfeeding_answers,
            )  # fmt: skip
            return
        if "survey" in categories and (snomeds or text):
            self._symptom(res, where, snomeds, text)
            return
        if any(c in kb.status_codes.pregnancy_loinc for c in loincs):
            self._status(
                res, where, "pregnancy", kb.status_codes.pregnant_answers, kb.status_codes.not_pregnant_answers
            )
            return
        if any(c in kb.status_codes.breastfeeding_loinc for c in loincs):
            self._status(
                res,
                where,
                "breastfeeding",
                kb.status_codes.breastfeeding_answers,
                kb.status_codes.not_breastfeeding_answers,
            )
            return
        if any(c in kb.status_codes.pregnancy_intention_loinc for c in loincs):
            self._status(res, where, "pregnancy-intention", [], [])
            return
        if any(c in kb.pgx_codes.tpmt_activity_loinc for c in loincs):
            self._activity(res, where)
            return
        if any(c in kb.pgx_codes.genotype_loinc or c in kb.pgx_codes.phenotype_loinc for c in loincs):
            self._genotype(res, where, loincs)
            return
        for c in loincs:
            if c in self._screening_index:
                key, when = self._screening_index[c], self._obs_date(res, where)
                self.screening.append((key, when))
                polarity = self._polarity(res, where)
                if polarity is not None:
                    self.screening_results.append((key, when, polarity))
                return
        analyte = next((kb.loinc_index[c] for c in loincs if c in kb.loinc_index), None)
        if analyte is None:
            analyte = next(
                (kb.local_code_index[c.lower()] for _, c, _ in codings if c.lower() in kb.local_code_index), None
            )
        if analyte is None and text:
            analyte = next((k for k, a in kb.analytes.items() if a.text and word_match(text, a.text)), None)
        if analyte is None:
            return  # not something azathioprine monitoring reads
        self._lab(res, where, analyte, loincs[0] if loincs else text)

    def _lab(self, res: dict[str, Any], where: str, analyte: str, code: str) -> None:
        when = self._obs_date(res, where)
        sid = res.get("id", "") if isinstance(res.get("id"), str) else ""
        q = _obj(res, "valueQuantity", where)
        if q is None:
            reason = "no valueQuantity"
            dar = _obj(res, "dataAbsentReason", where)
            if dar is not None:
                reason = f"data absent: {_cc_text(dar, where, 'dataAbsentReason') or 'reason not given'}"
            elif isinstance(res.get("valueString"), str):
                reason = f"text value '{res['valueString'][:30]}'"
            self.rejected.append(d.RejectedResult(analyte, when, "missing-value", detail=reason, source_id=sid))
            return
        value = _num(q, "value", f"{where} valueQuantity")
        if value is None:
            self.rejected.append(
                d.RejectedResult(analyte, when, "missing-value", detail="valueQuantity without value", source_id=sid)
            )
            return
        comparator = _str(q, "comparator", where)
        if value < 0 or (analyte == "weight" and value == 0):
            self.rejected.append(
                d.RejectedResult(analyte, when, "missing-value", detail=f"impossible value {value:g}", source_id=sid)
            )
            return
        ucum = _str(q, "code", where) if (q.get("system") in (UCUM, None)) else None
        unit_text = _str(q, "unit", where)
        converted = None
        used_unit = ""
        for candidate in (ucum, unit_text):
            if candidate:
                converted = self.kb.convert(analyte, value, candidate)
                used_unit = candidate
                if converted is not None:
                    break
        if converted is None:
            self.rejected.append(
                d.RejectedResult(
                    analyte, when, "unknown-unit", unit=used_unit or "(none)", detail=str(value), source_id=sid
                )
            )
            return
        ref_low = ref_high = None
        for rr in _list(res, "referenceRange", where):
            if isinstance(rr, dict):
                low, high = _obj(rr, "low", where), _obj(rr, "high", where)
                if low and _num(low, "value", f"{where} referenceRange.low") is not None:
                    ref_low = self.kb.convert(
                        analyte, float(low["value"]), str(low.get("code") or low.get("unit") or used_unit)
                    )
                if high and _num(high, "value", f"{where} referenceRange.high") is not None:
                    ref_high = self.kb.convert(
                        analyte, float(high["value"]), str(high.get("code") or high.get("unit") or used_unit)
                    )
                break
        self.labs.append(
            d.LabResult(
                analyte=analyte,
                value=converted,
                unit=self.kb.analytes[analyte].canonical,
                when=when,
                source_id=sid,
                code=code,
                original_value=value,
                original_unit=used_unit,
                ref_low=ref_low,
                ref_high=ref_high,
                below_detection=comparator in ("<", "<="),
            )
        )

    def _activity(self, res: dict[str, Any], where: str) -> None:
        when = self._obs_date(res, where)
        q = _obj(res, "valueQuantity", where)
        if q is None:
            self.rejected.append(d.RejectedResult("tpmt-activity", when, "missing-value", detail="no valueQuantity"))
            return
        value = _num(q, "value", f"{where} valueQuantity")
        unit = _str(q, "unit", where) or _str(q, "code", where) or ""
        if value is None:
            self.rejected.append(d.RejectedResult("tpmt-activity", when, "missing-value", detail="no value"))
            return
        # Activity bands belong to one laboratory assay: the assay name travels with the value so
        # the engine interprets it only against that assay's bands (never another lab's cut-offs).
        method = _cc_label(res.get("method"), where, "method")
        self.activity.append(d.ActivityResult(value, unit, when, str(res.get("id", "")), method))

    def _polarity(self, res: dict[str, Any], where: str) -> bool | None:
        """Positive/negative of a qualitative screening result; None when it cannot be read.

        A quantitative result (VZV IgG 5403-1, hCG 19080-1 in units/volume) is read only through
        the laboratory's own interpretation (POS/NEG): its number is never compared with a cut-off
        the knowledge base does not hold."""
        if isinstance(res.get("valueBoolean"), bool):
            return bool(res["valueBoolean"])
        interp = {c for cc in _list(res, "interpretation", where) if isinstance(cc, dict)
                  for _, c, _ in _codings(cc, where, "interpretation")}  # fmt: skip
        if interp & set(self.kb.status_codes.interpretation_positive):
            return True
        if interp & set(self.kb.status_codes.interpretation_negative):
            return False
        if res.get("valueQuantity") is not None:
            return None
        cc = _obj(res, "valueCodeableConcept", where)
        codes = {c for _, c, _ in _codings(cc, where, "valueCodeableConcept")}
        if codes & set(self.kb.status_codes.positive_answers):
            return True
        if codes & set(self.kb.status_codes.negative_answers):
            return False
        text = (_cc_search_text(cc, where, "valueCodeableConcept") or _str(res, "valueString", where) or "").lower()
        if re.search(r"\b(negative|not detected|non-?reactive|undetectable)\b", text):
            return False
        if re.search(r"\b(positive|detected|reactive)\b", text):
            return True
        return None

    def _value_text(self, res: dict[str, Any], where: str) -> str | None:
        if isinstance(res.get("valueString"), str):
            return str(res["valueString"])
        cc = _obj(res, "valueCodeableConcept", where)
        if cc is not None:
            codings = _codings(cc, where, "valueCodeableConcept")
            for _, code, disp in codings:
                if "*" in code or "*" in disp:
                    return code if "*" in code else disp
            return _cc_text(cc, where, "valueCodeableConcept") or (codings[0][1] if codings else None)
        return None

    def _gene_of(self, res: dict[str, Any], where: str, loincs: list[str]) -> str | None:
        """TPMT, NUDT15, "" for a gene we do not use (ignored), or None when no gene is named."""
        genes = self.kb.pgx_codes.genes
        named_other = False
        for i, comp in enumerate(_list(res, "component", where)):
            if not isinstance(comp, dict):
                raise ReaderError(where, f"component[{i}]", "must be an object")
            ccode = _codings(_obj(comp, "code", where), where, f"component[{i}].code")
            if any(c in self.kb.pgx_codes.gene_component_loinc for _, c, _ in ccode):
                vcc = _obj(comp, "valueCodeableConcept", where)
                tokens = [c for _, c, _ in _codings(vcc, where, f"component[{i}].valueCodeableConcept")]
                tokens += _cc_text(vcc, where, "component").split()
                for gene, ids in genes.items():
                    if any(t in ids for t in tokens):
                        return gene
                named_other = named_other or bool(tokens)
        if named_other:
            return ""
        text = _cc_text(_obj(res, "code", where), where, "code").upper()
        if "41048-0" in loincs or "36922-3" in loincs or "80738-8" in loincs or "79713-4" in loincs:
            return "TPMT"
        for gene in genes:
            if gene in text:
                return gene
        return None

    def _genotype(self, res: dict[str, Any], where: str, loincs: list[str]) -> None:
        when = self._obs_date(res, where)
        gene = self._gene_of(res, where, loincs)
        if gene == "":
            return  # a pharmacogene azathioprine dosing does not use (e.g. CYP2C19)
        value = self._value_text(res, where)
        if gene is None:
            raise ReaderError(
                where, "component", "genotype result does not say which gene (component 48018-6 with TPMT or NUDT15)"
            )
        if value is None:
            self.rejected.append(d.RejectedResult(f"{gene}-genotype", when, "missing-value", detail="no value"))
            return
        sid = str(res.get("id", ""))
        if "*" in value:
            self.genotypes.append(d.GenotypeResult(gene, value.strip(), None, when, sid))
        else:
            self.genotypes.append(d.GenotypeResult(gene, None, value.strip(), when, sid))

    def _status(self, res: dict[str, Any], where: str, kind: Any, yes: list[str], no: list[str]) -> None:
        when = self._obs_date(res, where)
        value: bool | None = None
        if res.get("valueBoolean") is not None and not isinstance(res.get("valueBoolean"), bool):
            raise ReaderError(where, "valueBoolean", f"must be true or false, got {_type_name(res['valueBoolean'])}")
        if isinstance(res.get("valueBoolean"), bool):
            value = bool(res["valueBoolean"])
        else:
            cc = _obj(res, "valueCodeableConcept", where)
            codes = [c for _, c, _ in _codings(cc, where, "valueCodeableConcept")]
            text = (
                _cc_text(cc, where, "valueCodeableConcept").lower() or (_str(res, "valueString", where) or "").lower()
            )
            if any(c in yes for c in codes):
                value = True
            elif any(c in no for c in codes):
                value = False
            elif text:
                negative = re.search(r"\b(not|no|never)\b", text) is not None
                positive = re.search(
                    r"\b(yes|pregnant|breast ?feeding|lactating|wants?|plans?|planning|trying)\b", text
                )
                value = False if negative else (True if positive else None)
        self.statuses.append(d.StatusObservation(kind, value, when, str(res.get("id", ""))))

    def _symptom(self, res: dict[str, Any], where: str, snomeds: list[str], text: str) -> None:
        present = res.get("valueBoolean")
        if present is not None and not isinstance(present, bool):
            raise ReaderError(where, "valueBoolean", f"must be true or false, got {_type_name(present)}")
        if present is False:
            return
        answer = _obj(res, "valueCodeableConcept", where)
        if answer is not None:
            answer_codes = {c for _, c, _ in _codings(answer, where, "valueCodeableConcept")}
            answer_text = _cc_search_text(answer, where, "valueCodeableConcept").lower()
            if answer_codes & set(self.kb.status_codes.no_answers) or re.search(r"\b(no|absent|none)\b", answer_text):
                return
        answer_string = res.get("valueString")
        if isinstance(answer_string, str) and re.fullmatch(r"\s*(no|absent|none|false)\s*", answer_string.lower()):
            return
        when = self._obs_date(res, where)
        key = None
        for k, s in self.kb.symptoms.items.items():
            if any(c in s.snomed for c in snomeds) or (word_match(text, s.text) and not word_match(text, s.exclude)):
                key = k
                break
        self.symptoms.append(d.Symptom(key, text or ",".join(snomeds), when, str(res.get("id", ""))))

    # ------------------------------------------------------------ medicines
    def _medication_concept(self, res: dict[str, Any], where: str) -> tuple[list[tuple[str, str, str]], str, str]:
        cc = _obj(res, "medicationCodeableConcept", where)
        if cc is None:
            ref = _obj(res, "medicationReference", where)
            if ref is None:
                raise ReaderError(
                    where, "medication[x]", "is required (medicationCodeableConcept or medicationReference)"
                )
            target = _str(ref, "reference", where) or ""
            med = self.medications_by_id.get(target)
            if med is None and target.startswith("#"):
                med = next(
                    (c for c in _list(res, "contained", where) if isinstance(c, dict) and c.get("id") == target[1:]),
                    None,
                )
            if med is None:
                display = _str(ref, "display", where)
                if display:
                    return [], display, display
                raise ReaderError(
                    where, "medicationReference.reference", f"points to '{target}', which is not in the bundle"
                )
            cc = _obj(med, "code", target) or {}
        return (
            _codings(cc, where, "medication"),
            _cc_text(cc, where, "medication"),
            _cc_search_text(cc, where, "medication"),
        )

    def _daily_dose(self, dosages: list[Any], where: str, field: str) -> float | None:
        total = 0.0
        for i, dose in enumerate(dosages):
            if not isinstance(dose, dict):
                raise ReaderError(where, f"{field}[{i}]", "must be an object")
            qty = None
            for j, dr in enumerate(_list(dose, "doseAndRate", where)):
                if isinstance(dr, dict) and dr.get("doseQuantity") is not None:
                    qty = _obj(dr, "doseQuantity", f"{where} {field}[{i}].doseAndRate[{j}]")
                    break
            if qty is None:
                return None
            amount = _num(qty, "value", f"{where} {field}[{i}].doseQuantity")
            if amount is not None and amount < 0:
                raise ReaderError(where, f"{field}[{i}].doseQuantity.value", "must not be negative")
            unit = (_str(qty, "code", where) or _str(qty, "unit", where) or "").strip().lower()
            if amount is None or unit not in _MASS_MG:
                return None
            timing = _obj(dose, "timing", where) or {}
            repeat = _obj(timing, "repeat", where) or {}
            freq = _num(repeat, "frequency", f"{where} {field}[{i}].timing.repeat")
            period = _num(repeat, "period", f"{where} {field}[{i}].timing.repeat")
            unit_p = _str(repeat, "periodUnit", where)
            if freq is None and period is None and unit_p is None:
                # No structured timing: accept only an unambiguous text; never assume once daily.
                per_day_text = _per_day_from_text(_str(dose, "text", where) or "")
                if per_day_text is None:
                    return None
                per_day = per_day_text
            else:
                if unit_p is not None and unit_p not in _PERIOD_DAYS:
                    raise ReaderError(
                        where, f"{field}[{i}].timing.repeat.periodUnit", f"is not a UCUM time unit: '{unit_p}'"
                    )
                if (freq is not None and freq <= 0) or (period is not None and period <= 0):
                    raise ReaderError(where, f"{field}[{i}].timing.repeat", "frequency and period must be positive")
                per_day = (freq or 1.0) / ((period or 1.0) * _PERIOD_DAYS[unit_p or "d"])
            total += amount * _MASS_MG[unit] * per_day
        return round(total, 3) if dosages else None

    def _generic_vaccine_word(self, text: str) -> bool:
        """The text names a vaccine only by a disease word, which medicines mention too."""
        low = text.lower()
        specific = [
            n
            for n, _ in (*self._vaccine_names, *self._uncertain_names)
            if re.search(r"(?<![a-z0-9])" + re.escape(n) + r"(?![a-z0-9])", low)
        ]
        return bool(specific) and all(n in self.kb.vaccines.generic_words for n in specific)

    def _vaccine_of(self, codings: list[tuple[str, str, str]], text: str) -> _Vaccine | None:
        """(key, live, live_unknown) from a CVX code, else from a whole-word name in the text."""
        for s, c, _ in codings:
            if s == CVX and c in self._vaccine_cvx:
                return self._vaccine_cvx[c]
        low = text.lower()
        for names in (self._vaccine_names, self._uncertain_names):
            for name, vaccine in names:
                if re.search(r"(?<![a-z0-9])" + re.escape(name) + r"(?![a-z0-9])", low):
                    return vaccine
        return None

    def _drug_of(self, codings: list[tuple[str, str, str]], text: str) -> tuple[str | None, str | None]:
        rx = next((c for s, c, _ in codings if s == RXNORM), None)
        for s, c, _ in codings:
            if s == RXNORM and (drug := self.kb.drug_for_rxnorm(c)):
                return drug, c
        return self.kb.drug_for_text(text), rx

    def _medication_statement(self, res: dict[str, Any], where: str) -> None:
        status = _str(res, "status", where, required=True)
        if status not in _MS_STATUS:
            raise ReaderError(where, "status", f"is not a MedicationStatement status: '{status}'")
        norm = _MS_STATUS[status]
        if norm is None:
            return
        codings, text, search = self._medication_concept(res, where)
        start = end = None
        period = _obj(res, "effectivePeriod", where)
        if period is not None:
            start = (
                parse_date(period["start"], where, "effectivePeriod.start") if period.get("start") is not None else None
            )
            end = parse_date(period["end"], where, "effectivePeriod.end") if period.get("end") is not None else None
        elif res.get("effectiveDateTime") is not None:
            start = parse_date(res["effectiveDateTime"], where, "effectiveDateTime")
        if start and end and end < start:
            raise ReaderError(where, "effectivePeriod", "ends before it starts")
        drug, rx = self._drug_of(codings, search)
        dose = self._daily_dose(_list(res, "dosage", where), where, "dosage")
        reasons = []
        for i, cc in enumerate(_list(res, "statusReason", where)):
            if not isinstance(cc, dict):
                raise ReaderError(where, f"statusReason[{i}]", f"must be an object, got {_type_name(cc)}")
            reasons.append(_cc_label(cc, where, f"statusReason[{i}]"))
        # dateAsserted is when the statement was made: for a hold or a stop it is the first date the
        # record knows that state (when the engine counts a hold from). It is checked whatever the
        # status, as every date is, but only used for on-hold and stopped.
        asserted = (
            parse_date(res["dateAsserted"], where, "dateAsserted") if res.get("dateAsserted") is not None else None
        )
        self.meds.append(
            d.MedicationEntry(
                drug,
                text or (rx or "unnamed medicine"),
                norm,
                start,
                end,
                dose,
                "statement",
                rx,
                str(res.get("id", "")),
                reason="; ".join(dict.fromkeys(r for r in reasons if r)),
                status_date=asserted if norm in ("on-hold", "stopped") else None,
            )
        )

    def _medication_request(self, res: dict[str, Any], where: str) -> None:
        status = _str(res, "status", where, required=True)
        if status not in _MR_STATUS:
            raise ReaderError(where, "status", f"is not a MedicationRequest status: '{status}'")
        norm = _MR_STATUS[status]
        if norm is None:
            return
        codings, text, search = self._medication_concept(res, where)
        authored = parse_date(res["authoredOn"], where, "authoredOn") if res.get("authoredOn") is not None else None
        cvx_coded = any(sys_ == CVX for sys_, _, _ in codings)
        looks_like_vaccine = re.search(r"vaccin|immuni[sz]", search.lower()) is not None
        vaccine = self._vaccine_of(codings, search)
        if vaccine is not None and not (cvx_coded or looks_like_vaccine) and self._generic_vaccine_word(search):
            vaccine = None  # "Paxlovid for COVID-19" is a medicine that names a disease, not a vaccine order
        if vaccine is not None:
            if norm in ("draft", "active"):
                key, live, live_unknown = vaccine
                self.vaccinations.append(
                    d.Vaccination(
                        key, live, text or key, authored, "ordered", str(res.get("id", "")), live_unknown=live_unknown
                    )
                )
            return
        end = None
        dispense = _obj(res, "dispenseRequest", where)
        if dispense is not None:
            vp = _obj(dispense, "validityPeriod", where)
            if vp is not None and vp.get("end") is not None and norm == "stopped":
                end = parse_date(vp["end"], where, "dispenseRequest.validityPeriod.end")
        drug, rx = self._drug_of(codings, search)
        dose = self._daily_dose(_list(res, "dosageInstruction", where), where, "dosageInstruction")
        # R4 MedicationRequest.statusReason is one CodeableConcept. A request has no date for its
        # status (authoredOn is when it was written), so status_date stays unknown.
        reason = _cc_label(res.get("statusReason"), where, "statusReason")
        self.meds.append(
            d.MedicationEntry(
                drug,
                text or (rx or "unnamed medicine"),
                norm,
                authored,
                end,
                dose,
                "request",
                rx,
                str(res.get("id", "")),
                reason=reason,
            )
        )

    def _immunization(self, res: dict[str, Any], where: str) -> None:
        status = _str(res, "status", where, required=True)
        if status not in {"completed", "not-done", "entered-in-error"}:
            raise ReaderError(where, "status", f"is not an Immunization status: '{status}'")
        if status != "completed":
            return
        cc = _obj(res, "vaccineCode", where, required=True)
        codings, text = _codings(cc, where, "vaccineCode"), _cc_text(cc, where, "vaccineCode")
        search = _cc_search_text(cc, where, "vaccineCode")
        when = (
            parse_date(res["occurrenceDateTime"], where, "occurrenceDateTime")
            if res.get("occurrenceDateTime") is not None
            else None
        )
        if when is None and not isinstance(res.get("occurrenceString"), str):
            raise ReaderError(where, "occurrenceDateTime", "is required for a given vaccine (or occurrenceString)")
        vaccine = self._vaccine_of(codings, search)
        self.vaccinations.append(
            d.Vaccination(
                vaccine[0] if vaccine else None,
                vaccine[1] if vaccine else False,
                text or "vaccine",
                when,
                "given",
                str(res.get("id", "")),
                live_unknown=vaccine[2] if vaccine else False,
            )
        )

    # ------------------------------------------------------------ conditions, allergies
    def _condition(self, res: dict[str, Any], where: str) -> None:
        ver = _codings(_obj(res, "verificationStatus", where), where, "verificationStatus")
        if any(c in ("refuted", "entered-in-error") for _, c, _ in ver):
            return
        clin = [c for _, c, _ in _codings(_obj(res, "clinicalStatus", where), where, "clinicalStatus")]
        active = not clin or any(c in ("active", "recurrence", "relapse") for c in clin)
        cc = _obj(res, "code", where)
        if cc is None:
            return  # FHIR allows a Condition without code; there is nothing to interpret
        codings, text = _codings(cc, where, "code"), _cc_text(cc, where, "code")
        search = _cc_search_text(cc, where, "code")
        snomeds = {c for s, c, _ in codings if s == SNOMED}
        onset = (
            parse_date(res["onsetDateTime"], where, "onsetDateTime") if res.get("onsetDateTime") is not None else None
        )
        key = None
        for k, ind in self.kb.indications.items():
            if snomeds & set(ind.snomed) or word_match(search, ind.text):
                key = k
                break
        if key is None:
            for k, rule in self.kb.conditions.items():
                if snomeds & set(rule.snomed) or word_match(search, rule.text):
                    key = k
                    break
        code = next(iter(snomeds), None)
        self.conditions.append(
            d.Condition(key, text or (code or "condition"), active, onset, code, str(res.get("id", "")))
        )

    def _allergy(self, res: dict[str, Any], where: str) -> None:
        ver = _codings(_obj(res, "verificationStatus", where), where, "verificationStatus")
        if any(c in ("refuted", "entered-in-error") for _, c, _ in ver):
            return
        clin = _codings(_obj(res, "clinicalStatus", where), where, "clinicalStatus")
        if any(c in ("inactive", "resolved") for _, c, _ in clin):
            return
        cc = _obj(res, "code", where)
        if cc is None:
            return  # FHIR allows an AllergyIntolerance without code; nothing to match
        codings, text = _codings(cc, where, "code"), _cc_text(cc, where, "code")
        drug, _ = self._drug_of(codings, _cc_search_text(cc, where, "code"))
        self.allergies.append(d.Allergy(drug, text, str(res.get("id", ""))))


FhirReader = _BundleReader
