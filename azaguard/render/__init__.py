"""Renderers turn an Assessment into text, JSON (and later HTML, FHIR, CDS cards)."""
