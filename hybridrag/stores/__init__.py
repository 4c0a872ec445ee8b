"""Stores: one backend per file (``sparse.py``: inverted index; others beside it).

Backends are imported from their own modules (``from hybridrag.stores.sparse import
SparseIndex``) so that optional dependencies load only when used.
"""
from __future__ import annotations
