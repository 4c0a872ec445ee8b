"""LangChain integration for hybridrag: ``from langchain_hybridrag import HybridRAGRetriever``.

Covered by ``tests/test_connectors.py``.
"""
from langchain_hybridrag import _compat  # noqa: F401  (clear ImportError first)
from langchain_hybridrag.retrievers import (
    ENGINE_METADATA_KEYS,
    HybridRAGRetriever,
    hit_to_document,
    index_from_documents,
    upsert_documents,
)

__all__ = ["ENGINE_METADATA_KEYS", "HybridRAGRetriever", "hit_to_document", "index_from_documents",
           "upsert_documents"]
