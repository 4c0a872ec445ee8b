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


class IndexClosedError(HybridRAGError, ValueError):
    """A method of a :class:`~hybridrag.index.HybridIndex` was called after its ``close()`` (or
    after its ``with`` block ended); load the index again to use it."""


class EncoderPoolError(HybridRAGError, RuntimeError):
    """A process of an encoder pool (``HybridIndex.encoding_pool``) died or could not start;
    the write that was encoding rolled back."""


class DocumentError(HybridRAGError, ValueError):
    """A document is malformed (bad id, text or metadata)."""


class IndexWriteError(HybridRAGError, OSError):
    """Writing an index failed for a reason outside hybridrag (the disk is full, an I/O error);
    nothing of the failed write was committed: the index on disk is still at its last committed
    generation. An ``OSError``, so code that catches ``OSError`` keeps catching it; ``errno`` and
    ``filename`` are those of the failure, ``str()`` is the whole message."""

    def __str__(self) -> str:
        return str(self.strerror) if self.strerror is not None else super().__str__()


class DiskFullError(IndexWriteError):
    """The disk (``errno.ENOSPC``) or the user's disk quota (``errno.EDQUOT``) is full.
    Raised by every index write (``add``, ``upsert``, ``delete``, ``commit``, ``create``);
    the message names the file and says that the last commit is intact."""
