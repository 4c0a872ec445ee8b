"""The index's writer lock: ``flock`` on the file ``LOCK`` in the index directory.

The kernel releases an ``flock`` when its holder dies, so a stale lock left by a dead process
is simply taken over. The holder writes ``pid=... host=...`` into the file for the message
another writer gets. ``LOCK`` is opened with :func:`hybridrag.storage.files.open_plain`: a
``LOCK`` that is a symbolic link or not a regular file raises ``IndexFormatError`` naming it,
and nothing outside the index directory is opened, truncated or written.

Tests: ``tests/test_file_safety.py``, ``tests/test_index.py`` (the lock between writers).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from hybridrag.errors import IndexLockedError
from hybridrag.storage.files import is_disk_full, open_plain

__all__ = ["IndexLock", "LOCK_FILE"]

LOCK_FILE = "LOCK"


def _holder_tag() -> str:
    return f"pid={os.getpid()} host={os.uname().nodename}"


class IndexLock:
    """An exclusive writer lock on ``directory/LOCK`` (re-entrant: ``acquire`` when held is a no-op)."""

    def __init__(self, directory: str | os.PathLike[str], name: str = LOCK_FILE) -> None:
        self.directory = Path(directory)
        self.name = name
        self.path = self.directory / name
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self.fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`IndexLockedError` naming the holder; a ``LOCK`` that is
        a link or not a regular file raises ``IndexFormatError`` naming it."""
        if self.fd is not None:
            return
        fd = open_plain(self.directory, self.name, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                if holder == _holder_tag():
                    raise IndexLockedError(
                        f"index {str(self.directory)!r} is being written by this process ({holder}) through "
                        "another HybridIndex object of the same directory: write through that open object, "
                        "or close() it first") from None
                raise IndexLockedError(f"index {str(self.directory)!r} is being written by another process "
                                       f"({holder}); wait for it to finish") from None
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, _holder_tag().encode(), 0)
        except OSError as e:
            # The tag only informs other writers: a full disk must not stop a reader from taking
            # the lock (e.g. to read a committed generation). Any other failure is raised.
            if not is_disk_full(e):
                os.close(fd)  # closing drops the flock
                raise
        self.fd = fd

    def release(self) -> None:
        """Release the lock (no-op when not held)."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
