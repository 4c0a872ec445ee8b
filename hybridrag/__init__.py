"""hybridrag: hybrid retrieval (dense + sparse + late interaction + rerank) for RAG.

The public API is importable from here: ``from hybridrag import HybridIndex``.
"""
from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from hybridrag.errors import (
    ConfigError,
    DiskFullError,
    DocumentError,
    HybridRAGError,
    IndexClosedError,
    IndexFormatError,
    IndexLockedError,
    IndexWriteError,
    ModelLoadError,
)
from hybridrag.types import Chunk, Document, Hit, SearchResults

__version__ = "0.1.0"

# A library adds no handlers of its own (logging HOWTO, "Configuring Logging for a Library").
logging.getLogger(__name__).addHandler(logging.NullHandler())

# Loaded on first use (PEP 562): the engine pulls in numpy, scipy, faiss and numba, ~1 s of
# imports against ~0.05 s for `import hybridrag` alone (python -X importtime; tests/test_package.py).
_LAZY = {
    "HybridIndex": "hybridrag.index",
    "AddResult": "hybridrag.index",
    "PipelineConfig": "hybridrag.config",
    "load_pipeline": "hybridrag.config",
    "SearchOptions": "hybridrag.search.options",
}

if TYPE_CHECKING:  # pragma: no cover
    from hybridrag.config import PipelineConfig, load_pipeline
    from hybridrag.index import AddResult, HybridIndex
    from hybridrag.search.options import SearchOptions


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hybridrag' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AddResult", "Chunk", "ConfigError", "DiskFullError", "Document", "DocumentError", "Hit", "HybridIndex",
    "HybridRAGError", "IndexClosedError", "IndexFormatError", "IndexLockedError", "IndexWriteError", "ModelLoadError", "PipelineConfig",
    "SearchOptions", "SearchResults", "__version__", "load_pipeline",
]
