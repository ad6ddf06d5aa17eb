"""azaguard: safe azathioprine therapy for people with neuromuscular disorders."""

__version__ = "0.1.0"
