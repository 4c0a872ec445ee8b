"""LlamaIndex retriever over a hybridrag :class:`~hybridrag.index.HybridIndex`.

``from llama_index.retrievers.hybridrag import HybridRAGRetriever, index_from_llama_documents``

Covered by ``tests/test_connectors.py``.
"""
from llama_index.retrievers.hybridrag import _compat  # noqa: F401  (clear ImportError first)
from llama_index.retrievers.hybridrag.base import (
    ENGINE_METADATA_KEYS,
    HybridRAGRetriever,
    hit_to_node,
    index_from_llama_documents,
    metadata_filters_to_dict,
    upsert_llama_documents,
)

__all__ = [
    "ENGINE_METADATA_KEYS",
    "HybridRAGRetriever",
    "hit_to_node",
    "index_from_llama_documents",
    "metadata_filters_to_dict",
    "upsert_llama_documents",
]
