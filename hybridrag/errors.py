"""Exception types raised by hybridrag.

Every error a user can cause is one of these (or a plain ``ValueError`` /
``TypeError`` subclass of them), with a message naming the bad value.
"""
from __future__ import annotations


class HybridRAGError(Exception):
    """Base class of every error hybridrag raises on purpose."""


class ConfigError(HybridRAGError, ValueError):
    """A pipeline file or setting is invalid (unknown key, wrong type, bad value)."""


class ModelLoadError(HybridRAGError, OSError):
    """A model folder or Hugging Face id could not be loaded (missing files, offline, bad layout)."""


class IndexFormatError(HybridRAGError, ValueError):
    """An index directory is missing, corrupt, or written by an unsupported format version."""


class IndexLockedError(HybridRAGError, RuntimeError):
    """Another live process holds the index's write lock."""


class DocumentError(HybridRAGError, ValueError):
    """A document is malformed (bad id, text or metadata)."""
