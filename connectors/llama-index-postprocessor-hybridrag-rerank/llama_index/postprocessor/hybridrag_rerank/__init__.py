"""LlamaIndex node postprocessor that reranks with hybridrag's cross-encoder.

``from llama_index.postprocessor.hybridrag_rerank import HybridRAGRerank``
"""
from llama_index.postprocessor.hybridrag_rerank import _compat  # noqa: F401  (clear ImportError first)
from llama_index.postprocessor.hybridrag_rerank.base import HybridRAGRerank

__all__ = ["HybridRAGRerank"]
