"""hybridrag: hybrid retrieval (dense + sparse + late interaction + rerank) for RAG."""
from __future__ import annotations

import logging

from hybridrag.errors import (
    ConfigError,
    DocumentError,
    HybridRAGError,
    IndexFormatError,
    IndexLockedError,
    ModelLoadError,
)
from hybridrag.types import Chunk, Document, Hit, SearchResults

__version__ = "0.1.0"

# A library adds no handlers of its own (logging HOWTO, "Configuring Logging for a Library").
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Chunk", "ConfigError", "Document", "DocumentError", "Hit", "HybridRAGError",
    "IndexFormatError", "IndexLockedError", "ModelLoadError", "SearchResults", "__version__",
]
