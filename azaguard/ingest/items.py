"""What an import produces before it touches the store: accepted items and rejected records.

Format readers (FHIR, HL7 v2, CSV) only translate; the pipeline decides duplicates,
corrections and quarantine in one place, so every format gets the same guarantees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal[
    "patient", "lab", "genotype", "tpmt-activity", "status", "screening", "symptom",
    "medication", "condition", "allergy", "immunization",
]  # fmt: skip


@dataclass(frozen=True)
class Item:
    kind: Kind
    patient: str  # the patient's identifier as the source knows it
    source_key: str  # stable identity of this record at its source (idempotency)
    payload: Any  # a domain record (LabResult, MedicationEntry ...) or a dict for patients
    ref: str  # where it came from, for messages: "message 3 OBX 2", "Bundle.entry[4]"
    original: str  # the original text, kept for quarantine and audit
    correction: bool = False  # the source says this corrects an earlier version
    abnormal_flag: str | None = None
    preliminary: bool = False  # the source says the result is not final yet (HL7 P/R/S/I, FHIR preliminary)


@dataclass(frozen=True)
class Reject:
    ref: str
    reason: str
    original: str
    patient: str | None = None


@dataclass
class Parsed:
    format: str
    items: list[Item]
    rejects: list[Reject]
