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
import threading
from collections.abc import Iterator
from pathlib import Path

from hybridrag.errors import IndexLockedError
from hybridrag.storage.files import is_disk_full, open_plain

__all__ = ["IndexLock", "LOCK_FILE", "ReadWriteLock"]

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


class ReadWriteLock:
    """Searches of one :class:`~hybridrag.index.HybridIndex` object run together; a change of what
    they read (a write's rows going into the stores and docstore, a commit, a merge installed)
    waits for them and holds them off until it is done, so a search never sees half of a write:
    a search beside an ``upsert`` in another thread read slots the write had just deleted from
    the docstore (``KeyError``). Writers are preferred (a waiting writer holds new searches
    back), both sides are re-entrant per thread, and a writer's thread may search."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None
        self._depth = 0
        self._waiting = 0
        self._mine = threading.local()

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        me = threading.get_ident()
        held = getattr(self._mine, "reads", 0)
        if held or self._writer == me:   # already reading, or this thread writes
            self._mine.reads = held + 1
            try:
                yield
            finally:
                self._mine.reads -= 1
            return
        with self._cond:
            while self._writer is not None or self._waiting:
                self._cond.wait()
            self._readers += 1
        self._mine.reads = 1
        try:
            yield
        finally:
            self._mine.reads = 0
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._depth += 1
            else:
                if getattr(self._mine, "reads", 0):
                    raise RuntimeError("a write inside a search of the same index object")
                self._waiting += 1
                try:
                    while self._writer is not None or self._readers:
                        self._cond.wait()
                finally:
                    self._waiting -= 1
                self._writer, self._depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._writer = None
                    self._cond.notify_all()
