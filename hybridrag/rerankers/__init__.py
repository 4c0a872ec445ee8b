"""Rerankers: score (query, passage) pairs after first-stage retrieval.

* :class:`CrossEncoderReranker` - bge-reranker / bge-reranker-v2-m3 and any one-logit
  ``AutoModelForSequenceClassification`` cross-encoder (``tests/test_reranker.py``).
"""
from __future__ import annotations

from hybridrag.rerankers.cross_encoder import CrossEncoderReranker

__all__ = ["CrossEncoderReranker"]
