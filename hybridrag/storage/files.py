"""Opening an index's files without following links out of it, and disk-full errors.

Every file hybridrag writes lives in the index directory under a plain name. A name that is
a symbolic link, a directory, a FIFO or a device there (planted, or left by a copy tool) must
never make hybridrag write to whatever it points at, so:

* :func:`check_plain_file` refuses such an entry before anything opens it;
* :func:`open_plain` opens with ``O_NOFOLLOW`` and checks the opened file with ``fstat``;
* :func:`open_for_write` creates a new file with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (an existing
  entry of that name, link or not, is never written through).

:func:`disk_full_errors` turns "no space left" (``ENOSPC``, ``EDQUOT``, SQLite's "database or
disk is full") raised while writing into :class:`hybridrag.errors.DiskFullError`, one line
saying which file and that the last commit is intact.

Tests: ``tests/test_file_safety.py``.
"""
from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from hybridrag.errors import DiskFullError, IndexFormatError

__all__ = ["check_plain_file", "open_plain", "open_for_write", "disk_full_errors", "is_disk_full"]

_DISK_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)
_SQLITE_FULL = getattr(sqlite3, "SQLITE_FULL", 13)


def _entry(directory: str | os.PathLike[str], name: str) -> Path:
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\0" in name:
        raise IndexFormatError(f"refusing file name {name!r} in {str(directory)!r}: not a plain file name "
                               "inside the index directory")
    return Path(directory) / name


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device or special file"


def _refuse(path: Path, mode: int) -> IndexFormatError:
    return IndexFormatError(f"{path}: refusing to open it: it is {_kind(mode)}, not a regular file (an index "
                            "only opens plain files inside its directory; remove it or put the real file there)")


def check_plain_file(directory: str | os.PathLike[str], name: str) -> os.stat_result | None:
    """``lstat`` of ``directory/name``: ``None`` when absent, its stat when it is a regular file;
    :class:`IndexFormatError` naming the path when it is a symbolic link (even to a file inside
    the directory) or not a regular file, or when ``name`` is not a plain file name."""
    path = _entry(directory, name)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(path, st.st_mode)
    return st


def open_plain(directory: str | os.PathLike[str], name: str, flags: int, mode: int = 0o644) -> int:
    """``os.open`` of ``directory/name`` that never follows a final symbolic link and only returns
    a descriptor of a regular file (else :class:`IndexFormatError` naming the path; nothing is
    read or written). ``flags`` are ``os.open`` flags (``O_NOFOLLOW``, ``O_NONBLOCK`` and
    ``O_CLOEXEC`` are added). The caller closes the descriptor."""
    path = Path(directory) / name
    check_plain_file(directory, name)  # before opening: a FIFO or device is never opened at all
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:  # replaced by a link since the check
            raise _refuse(path, stat.S_IFLNK) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(path, st.st_mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_for_write(directory: str | os.PathLike[str], name: str, *, replace: bool = False,
                   mode: int = 0o644) -> BinaryIO:
    """A new file ``directory/name`` opened for binary writing (``O_CREAT | O_EXCL | O_NOFOLLOW``).

    An existing entry of that name raises :class:`IndexFormatError` naming it, unless
    ``replace``: then the entry itself is unlinked first (a symbolic link is removed, never
    followed; a directory is refused) and a new file is created in its place. Write to a
    temporary name and ``os.replace`` it to publish a file atomically.
    """
    path = _entry(directory, name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    if replace:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISDIR(st.st_mode):
                raise _refuse(path, st.st_mode)
            path.unlink(missing_ok=True)
    try:
        fd = open_plain(directory, name, flags, mode)
    except FileExistsError:
        raise IndexFormatError(f"{path}: refusing to write it: the file already exists") from None
    return os.fdopen(fd, "wb")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk or quota is full: ``OSError`` ``ENOSPC``/``EDQUOT``, or
    SQLite's ``SQLITE_FULL`` ("database or disk is full")."""
    if isinstance(exc, OSError):
        return exc.errno in _DISK_FULL_ERRNOS
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
        return (code & 0xFF) == _SQLITE_FULL if code is not None else "database or disk is full" in str(exc)
    return False


@contextlib.contextmanager
def disk_full_errors(directory: str | os.PathLike[str],
                     generation: int | Callable[[], int | None] | None = None) -> Iterator[None]:
    """Raise :class:`DiskFullError` in place of a disk-full error raised inside the block.

    ``directory``: the index being written; the message names the file when the error carries
    one (``OSError.filename``), else the directory. ``generation``: the index's last committed
    generation (or a callable giving it, read when the error happens), named in the message.
    Other errors, and a ``DiskFullError`` raised by an inner block, pass unchanged.

    The message says the last commit is intact: true for every hybridrag write, since a
    commit publishes nothing until its manifest swap (``os.replace``) and a docstore write is
    one SQLite transaction, rolled back on error.
    """
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, sqlite3.OperationalError) as e:
        if not is_disk_full(e):
            raise
        gen = generation() if callable(generation) else generation
        target = getattr(e, "filename", None) or directory
        code = e.errno if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS else errno.ENOSPC
        what = "the disk quota is exceeded" if code == getattr(errno, "EDQUOT", None) else "the disk is full"
        at = f" (generation {gen})" if gen is not None and gen >= 0 else ""
        raise DiskFullError(
            code,
            f"{target}: {what} ({e}); nothing of this write was committed and the index's last "
            f"commit{at} is intact: free some space and run it again",
            str(target),
        ) from e
