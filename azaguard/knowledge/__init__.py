"""The clinical knowledge base: versioned data files with provenance, validated on load."""

from azaguard.knowledge.loader import Knowledge, KnowledgeError, load_knowledge, word_match

__all__ = ["Knowledge", "KnowledgeError", "load_knowledge", "word_match"]
