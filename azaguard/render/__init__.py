"""Renderers turn an Assessment into text, JSON and a shared-care letter (HTML, then PDF)."""
