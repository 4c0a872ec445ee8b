"""Encoders: text -> dense vectors, lexical weights and/or ColBERT token vectors.

* :class:`M3Encoder` (``m3.py``): BGE-M3, all three outputs from one forward pass.
* :class:`DenseEncoder` (``dense.py``): any Hugging Face / sentence-transformers encoder.

Heavy imports (torch, transformers) happen when a model is loaded, not here.
Covered by ``tests/test_encoders_m3.py`` and ``tests/test_encoders_dense.py``.
"""
from __future__ import annotations

from hybridrag.encoders.base import EncodeOutput
from hybridrag.encoders.dense import DenseEncoder
from hybridrag.encoders.m3 import M3Encoder, colbert_score, dense_score, lexical_score

__all__ = ["DenseEncoder", "EncodeOutput", "M3Encoder", "colbert_score", "dense_score", "lexical_score"]
