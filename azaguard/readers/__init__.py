"""Readers of whole input documents: a FHIR R4 Bundle -> PatientRecord (the assess CLI)."""
