"""Chunk text, metadata and document bookkeeping in SQLite (stdlib ``sqlite3``, WAL mode).

Generations
-----------
Every write carries the engine's generation number ``gen``. Added rows get
``gen_added = gen``; deleted rows are tombstoned with ``gen_deleted = gen`` (kept
until ``purge(gen)``). On load the engine calls ``rollback_to(committed_gen)``, which
deletes rows added after it and revives rows deleted after it, so a write the
manifest never committed is invisible. The ``documents`` table is versioned the same
way (a row per document version, the live one unique by ``doc_id``), so rolling back
an uncommitted upsert restores the old content hash. Each public write is one
transaction; ``synchronous=FULL`` makes a committed write durable before the engine
swaps its manifest.

Text
----
Text is stored exactly. Python strings holding lone surrogates (which UTF-8 cannot
encode) are stored as a BLOB of their ``'surrogatepass'`` UTF-8 bytes and decoded
the same way on read, so ``get`` returns the identical string. Metadata is stored as
JSON and must be JSON-representable without change: string keys, finite numbers,
str/bool/None, lists (tuples come back as lists) and dicts; anything else raises
``DocumentError`` naming the key. Ids (``doc_id``, ``chunk_id``) must be valid UTF-8.

Filters
-------
``filter_mask`` takes ``{"field": value}`` (equality), or ``{"field": {op: value}}``
with ``op`` in ``$eq $ne $in $nin $gt $gte $lt $lte``, ANDed over fields. Fields are
metadata keys (``json_extract``), or the columns ``doc_id`` / ``chunk_id``. Values
compare only with values of the same JSON type (numbers with numbers, strings with
strings, booleans with booleans), so ``{"year": {"$gte": 2020}}`` never matches the
string ``"2021"``. ``$ne`` / ``$nin`` also match chunks without the field. ``$in`` /
``$nin`` take any number of values (one JSON array parameter per type, not one SQL term per
value). Integers must fit in 64 bits and strings and field names must be valid Unicode (no
lone surrogates): anything else raises ``ValueError`` naming the field and value.

Integrity
---------
Every row carries ``row_sha256``, a SHA-256 computed when the row is written (chunks: over
slot, ids, ordinal, metadata, offsets, the text's own SHA-256 ``content_hash`` and
``gen_added``; documents: over id, content hash, chunk count and ``gen_added``), so a write
costs what it writes and nothing hashes the whole store. :meth:`DocStore.verify_rows`
(``hybridrag check``, not load) recomputes them and reports every row that no longer matches.
Docstores written before the column existed open unchanged: the column is added by the first
write (``ALTER TABLE``, no row rewritten), their old rows keep ``NULL`` ("not recorded": their
text is still checked against ``content_hash``, the rest is not) until
:meth:`DocStore.record_row_hashes` fills them in.

Files
-----
``docstore.sqlite`` and SQLite's ``-wal``, ``-shm`` and ``-journal`` beside it must be absent or
regular files: a symbolic link (even to a file inside the index) or any other kind of entry
raises ``IndexFormatError`` naming it before SQLite opens anything, and the file SQLite opened
must be the one checked (same inode), so no write ever lands outside the index directory.
A write that finds the disk full raises :class:`hybridrag.errors.DiskFullError` (its
transaction rolled back, nothing of it stored).

Tests: ``tests/test_docstore.py``, ``tests/test_file_safety.py``.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from hybridrag.errors import DocumentError, IndexFormatError
from hybridrag.storage.files import check_plain_file, disk_full_errors, open_plain
from hybridrag.types import Chunk

__all__ = ["DocStore", "FILTER_OPERATORS", "check_unicode"]

FILTER_OPERATORS = ("$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte")
_RANGE_SQL = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_COLUMNS = ("doc_id", "chunk_id")
_BATCH = 500  # SQL variables per IN (...) list
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1   # SQLite INTEGER

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    slot INTEGER PRIMARY KEY,
    chunk_id TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    gen_added INTEGER NOT NULL,
    gen_deleted INTEGER,
    row_sha256 TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS chunks_live_id ON chunks(chunk_id) WHERE gen_deleted IS NULL;
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE INDEX IF NOT EXISTS chunks_gen_added ON chunks(gen_added);
CREATE INDEX IF NOT EXISTS chunks_gen_deleted ON chunks(gen_deleted);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    doc_id TEXT NOT NULL,
    content_hash TEXT,
    n_chunks INTEGER NOT NULL,
    gen_added INTEGER NOT NULL,
    gen_deleted INTEGER,
    row_sha256 TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS documents_live_id ON documents(doc_id) WHERE gen_deleted IS NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


# SQLite's files beside the database: none may be a link or a non-regular file.
_SIDE_SUFFIXES = ("", "-wal", "-shm", "-journal")
#: Fields one metadata filter may name (each field gives a few SQL terms; SQLite's expression
#: depth is limited to 1000, and past it the query failed as if the docstore were damaged).
MAX_FILTER_FIELDS = 256
# The rows :func:`_row_digest` covers, as SQL (text columns as their raw bytes, so a damaged byte
# that is no longer UTF-8 is reported, not an exception), in the order of the digest.
_CHUNK_ROW_SQL = ("slot, CAST(chunk_id AS BLOB), CAST(doc_id AS BLOB), ordinal, CAST(metadata AS BLOB), start, "
                  '"end", CAST(content_hash AS BLOB), gen_added')
_DOC_ROW_SQL = "CAST(doc_id AS BLOB), CAST(content_hash AS BLOB), n_chunks, gen_added"
_MAX_REPORTED = 20  # verify_rows: rows named one by one, then a count


def _row_digest(fields: Sequence[int | str | bytes | None]) -> str:
    """SHA-256 (hex) of a row's fields, each tagged with its type and length (unambiguous)."""
    h = hashlib.sha256()
    for f in fields:
        if f is None:
            h.update(b"N")
            continue
        if isinstance(f, int):
            tag, raw = b"I", str(f).encode("ascii")
        elif isinstance(f, str):
            tag, raw = b"B", f.encode("utf-8", "surrogatepass")
        elif isinstance(f, (bytes, memoryview)):
            tag, raw = b"B", bytes(f)
        else:  # a value of a type the row never had (a damaged column): never equal to the recorded one
            tag, raw = b"?", repr(f).encode("ascii", "backslashreplace")
        h.update(tag + len(raw).to_bytes(8, "little") + raw)
    return h.hexdigest()


def _encode_text(text: str) -> str | bytes:
    """``text`` as SQLite can store it exactly: itself, or surrogatepass bytes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _decode_text(value: str | bytes) -> str:
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else value


def _metadata(value: str) -> dict[str, Any]:
    """A chunk's stored metadata (JSON); most chunks have none, and a new ``{}`` is ten times
    cheaper than parsing one (a tenth of a ten-hit ``get``)."""
    return {} if value == "{}" else json.loads(value)


def _check_id(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise DocumentError(f"{what} must be a str, got {type(value).__name__} {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DocumentError(f"{what} {value!r} is not valid UTF-8 (lone surrogate)") from exc
    return value


def check_unicode(text: str, what: str) -> str:
    """``text``, or ``ValueError`` naming ``what`` when it holds a surrogate code point (a lone
    surrogate from a bad decode: not Unicode text, UTF-8 cannot encode it, so no index term,
    SQLite parameter or Milvus expression can hold it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} contains the lone surrogate {text[exc.start]!r} at position {exc.start}, "
                         f"which is not valid Unicode text: {text!r:.80}") from None
    return text


def _check_json(value: Any, path: str) -> None:
    """Raise DocumentError unless ``value`` round-trips through JSON unchanged (tuples -> lists)."""
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise DocumentError(f"metadata {path}: {value!r} is not JSON-serialisable (not finite)")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_json(v, f"{path}[{i}]")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise DocumentError(f"metadata {path}: key {k!r} is not a str (JSON keys are strings)")
            _check_json(v, f"{path}[{k!r}]")
        return
    raise DocumentError(f"metadata {path}: {type(value).__name__} {value!r} is not JSON-serialisable")


def _dump_metadata(meta: Mapping[str, Any], chunk_id: str) -> str:
    if not isinstance(meta, Mapping):
        raise DocumentError(f"metadata of chunk {chunk_id!r} must be a mapping, got {type(meta).__name__}")
    for k, v in meta.items():
        if not isinstance(k, str):
            raise DocumentError(f"metadata key {k!r} of chunk {chunk_id!r} is not a str")
        _check_json(v, f"[{k!r}] of chunk {chunk_id!r}")

    def _np(o: Any) -> Any:  # numpy scalars passed the check above
        return o.item()

    out = json.dumps(dict(meta), ensure_ascii=False, allow_nan=False, default=_np, sort_keys=True)
    try:
        out.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: JSON's \\ud800 escapes keep them exactly
        out = json.dumps(dict(meta), ensure_ascii=True, allow_nan=False, default=_np, sort_keys=True)
    return out


def _batches(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), _BATCH):
        yield items[i : i + _BATCH]


def _check_gen(gen: Any) -> int:
    if isinstance(gen, bool) or not isinstance(gen, (int, np.integer)):
        raise TypeError(f"gen must be an int, got {gen!r}")
    if gen < 0:
        raise ValueError(f"gen must be >= 0, got {gen}")
    return int(gen)



# Descriptors pinning each docstore file this process has open: (st_dev, st_ino) -> [fd, users].
# One per file, closed when its last docstore closes (no connection of ours holds a lock on it then).
_PINS: dict[tuple[int, int], list[int]] = {}
_PINS_LOCK = threading.Lock()


def _pin(directory: Path, name: str, flags: int) -> tuple[int, int]:
    """The inode of ``directory/name``, held open by one descriptor for the whole process; a
    file already pinned is not opened again (a second descriptor, when closed, would drop the
    locks of the connections already open on it)."""
    with _PINS_LOCK:
        st = check_plain_file(directory, name)
        if st is not None and (st.st_dev, st.st_ino) in _PINS:
            _PINS[(st.st_dev, st.st_ino)][1] += 1
            return st.st_dev, st.st_ino
        fd = open_plain(directory, name, flags)
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        if key in _PINS:   # the path changed between the lstat and the open: keep both open
            _PINS[key][1] += 1
            _LEAKED.append(fd)
        else:
            _PINS[key] = [fd, 1]
        return key


_LEAKED: list[int] = []   # descriptors never closed (see _pin): at most one per such race


def _unpin(key: tuple[int, int]) -> None:
    with _PINS_LOCK:
        entry = _PINS.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _PINS[key]
            os.close(entry[0])


def _read(method: Any) -> Any:
    """A read of the docstore: SQLite reporting a damaged file (a malformed page, a text that is
    not UTF-8) or a stored value that no longer parses becomes IndexFormatError naming the file,
    not a raw error from the middle of a query."""
    @functools.wraps(method)
    def wrapper(self: "DocStore", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.DatabaseError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise IndexFormatError(f"{self.path}: docstore is damaged ({type(e).__name__}: {e}); "
                                   "`hybridrag check` says what is damaged") from None
    return wrapper

class DocStore:
    """SQLite store of chunks (by slot) and documents, with generation-tagged writes."""

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = bool(read_only)
        self._lock = threading.RLock()
        # Reads see the rows live at generation ``as_of`` (None: the newest rows, the writer's
        # view). A reader index sets it to its manifest's generation, so rows a concurrent
        # writer has added or tombstoned since are invisible to it.
        self.as_of: int | None = None
        self._pinned = False
        # count() is asked by every search: it is kept per (view, writes seen), so a search
        # pays one SQL COUNT per commit, not per call (29 of 35 ms of a BM25 search at 50k
        # chunks before). Every write transaction, pin and unpin moves _version.
        self._version = 0
        self._count: tuple[Any, int] | None = None
        self._row_hashes: bool | None = None  # whether the tables have row_sha256 (None: not looked)
        self._conn = self._connect()
        if not self.read_only:
            try:
                with disk_full_errors(self.path):
                    self._conn.execute("PRAGMA journal_mode=WAL")
                    self._conn.execute("PRAGMA synchronous=FULL")
                    self._conn.executescript(_SCHEMA)
            except BaseException:
                self._conn.close()
                raise

    def _connect(self) -> sqlite3.Connection:
        """Open the database file, refusing links and non-regular files (see "Files" above)."""
        directory, name = self.path.parent, self.path.name
        for suffix in _SIDE_SUFFIXES:
            check_plain_file(directory, name + suffix)
        if self.read_only and check_plain_file(directory, name) is None:
            raise IndexFormatError(f"docstore {str(self.path)!r} does not exist")
        # A descriptor of ours (O_NOFOLLOW; created here when new, so SQLite never creates the
        # path) pins the inode that SQLite must then have opened. It stays open while any
        # docstore of this process has the file open (_pin): closing a descriptor of a file
        # drops every POSIX lock this process holds on it, those of its open SQLite connections
        # too, and another process then took itself for the last one and deleted the WAL under
        # them (a served index stopped taking new commits: "database disk image is malformed").
        flags = os.O_RDONLY if self.read_only else os.O_RDWR | os.O_CREAT
        key = _pin(directory, name, flags)
        try:
            if self.read_only:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            else:
                conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            try:
                got = os.lstat(self.path)
                if not stat.S_ISREG(got.st_mode) or (got.st_dev, got.st_ino) != key:
                    raise IndexFormatError(f"{self.path}: the file was replaced while it was being opened; "
                                           "refusing to use it")
            except BaseException:
                conn.close()
                raise
        except BaseException:
            _unpin(key)
            raise
        self._pin_key = key
        return conn

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """One write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``, ``ROLLBACK`` on error); a full
        disk raises ``DiskFullError`` with the transaction rolled back."""
        conn = self._conn
        with disk_full_errors(self.path):
            self.unpin()  # a write ends any read snapshot (SQLite has no nested transactions)
            self._version += 1
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled back itself (e.g. on SQLITE_FULL)
                    conn.execute("ROLLBACK")
                raise
            finally:
                self._version += 1

    def _has_row_hashes(self) -> bool:
        if not self._row_hashes:
            cols = {r[1] for r in self._conn.execute("PRAGMA table_info(chunks)")}
            self._row_hashes = "row_sha256" in cols
        return self._row_hashes

    def _upgrade_schema(self) -> None:
        """Inside a write transaction: bring an older docstore up to date (opening one changes
        nothing in it). ``row_sha256`` columns (``NULL`` in old rows: "not recorded"), and an
        index of the tombstoned documents only (partial: the purge at each commit finds them
        without scanning every document; a full index on ``gen_deleted`` made SQLite scan every
        live document for a lookup by ``doc_id``)."""
        self._conn.execute("CREATE INDEX IF NOT EXISTS documents_tombstones ON documents(gen_deleted) "
                           "WHERE gen_deleted IS NOT NULL")
        if self._has_row_hashes():
            return
        for table in ("chunks", "documents"):
            cols = {r[1] for r in self._conn.execute(f"PRAGMA table_info({table})")}
            if "row_sha256" not in cols:
                self._conn.execute(f"ALTER TABLE {table} ADD COLUMN row_sha256 TEXT")
        self._row_hashes = None  # looked up again after the transaction (a rollback undoes it)

    def _meta(self, key: str, default: int) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else int(row[0])

    def _set_meta(self, key: str, value: int) -> None:
        self._conn.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, int(value)),
        )

    # Live rows of the newest view, kept in ``meta`` by every write (so that a commit, which
    # records them in the manifest, does not count every row of a large index); recounted
    # after a rollback and for docstores written before they were kept.
    def _adjust_live(self, chunks: int, documents: int) -> None:
        c, d = self._meta("live_chunks", -1), self._meta("live_documents", -1)
        if c < 0 or d < 0:
            self._recount_live()
            return
        self._set_meta("live_chunks", c + chunks)
        self._set_meta("live_documents", d + documents)

    def _recount_live(self) -> None:
        for key, table in (("live_chunks", "chunks"), ("live_documents", "documents")):
            n = self._conn.execute(f"SELECT COUNT(*) FROM {table} WHERE gen_deleted IS NULL").fetchone()[0]
            self._set_meta(key, int(n))

    def _live_total(self, key: str, table: str) -> int:
        """Live rows of ``table`` in this store's view: the kept count for the newest view of a
        writer, a SQL COUNT otherwise."""
        if self.as_of is None and not self.read_only:
            n = self._meta(key, -1)
            if n >= 0:
                return n
        live, lp = self._live()
        return int(self._conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {live}", lp).fetchone()[0])

    def _live(self, alias: str = "") -> tuple[str, list[int]]:
        """SQL condition (and parameters) for "row is live in this store's view" (see ``as_of``)."""
        if self.as_of is None:
            return f"{alias}gen_deleted IS NULL", []
        g = int(self.as_of)
        return f"({alias}gen_added <= ? AND ({alias}gen_deleted IS NULL OR {alias}gen_deleted > ?))", [g, g]

    def pin(self) -> None:
        """Hold a read snapshot (an open SQLite read transaction) so that tombstones a
        concurrent writer purges stay visible to this connection until :meth:`unpin`."""
        with self._lock:
            if not self._pinned:
                self._version += 1
                self._conn.execute("BEGIN")
                self._conn.execute("SELECT COUNT(*) FROM meta").fetchone()  # starts the read transaction
                self._pinned = True

    def unpin(self) -> None:
        """End the snapshot taken by :meth:`pin` (no-op when not pinned)."""
        with self._lock:
            if self._pinned:
                self._version += 1
                self._pinned = False
                self._conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._pinned = False
            if self._conn is not None:
                self._conn.close()
                self._conn = None  # type: ignore[assignment]
                _unpin(self._pin_key)

    def __enter__(self) -> "DocStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ generations

    def generation(self) -> int:
        """The highest generation written so far (-1 for a new store)."""
        with self._lock:
            return self._meta("gen", -1)

    def _bump_gen(self, gen: int) -> None:
        cur = self._meta("gen", -1)
        if gen < cur:
            raise ValueError(f"gen {gen} is older than the store's generation {cur}")
        self._set_meta("gen", gen)

    def max_generation(self) -> int:
        """The newest generation any row carries (added or deleted); -1 when empty.

        Greater than the manifest's committed generation after an interrupted write.
        """
        with self._lock:
            # Both chunk generations are indexed; a document's generations are those of the
            # write that recorded them, which also set meta "gen" (the table has no index on them:
            # one on gen_deleted led SQLite to scan every live document for a lookup by doc_id).
            row = self._conn.execute(
                "SELECT MAX(g) FROM (SELECT MAX(gen_added) AS g FROM chunks UNION ALL "
                "SELECT MAX(gen_deleted) FROM chunks)"
            ).fetchone()
            return max(-1 if row[0] is None else int(row[0]), self._meta("gen", -1))

    def committed_generation(self) -> int:
        """The generation last passed to ``commit_generation`` (-1 if none)."""
        with self._lock:
            return self._meta("committed", -1)

    def commit_generation(self, gen: int) -> None:
        """Record that the engine is committing ``gen``; purge tombstones no manifest can need.

        Rows deleted at or before the *previously* committed generation are dropped: any
        manifest on disk (old or about to be written) is at least that new, so
        ``rollback_to`` will never need them.
        """
        gen = _check_gen(gen)
        with self._lock:
            prev = self._meta("committed", -1)
            if gen < prev:
                raise ValueError(f"commit_generation({gen}) is older than the committed generation {prev}")
        if prev >= 0:
            self.purge(prev)
        with self._lock, self._tx():
            self._set_meta("committed", gen)
            self._set_meta("gen", max(gen, self._meta("gen", -1)))

    def rollback_to(self, gen: int) -> None:
        """Undo every write tagged with a generation newer than ``gen``."""
        gen = _check_gen(gen)
        with self._lock, self._tx():
            for table in ("chunks", "documents"):
                self._conn.execute(f"DELETE FROM {table} WHERE gen_added > ?", (gen,))
                self._conn.execute(f"UPDATE {table} SET gen_deleted = NULL WHERE gen_deleted > ?", (gen,))
            self._set_meta("gen", min(gen, self._meta("gen", -1)))
            self._set_meta("committed", min(gen, self._meta("committed", -1)))
            self._recount_live()

    def purged_generation(self) -> int:
        """The newest generation whose tombstones were purged (-1 if none). A view ``as_of``
        an older generation may have lost rows, so a reader must not open one."""
        with self._lock:
            return self._meta("purged", -1)

    def purge(self, gen: int) -> int:
        """Drop tombstoned rows deleted at or before committed generation ``gen``; return how many."""
        gen = _check_gen(gen)
        with self._lock, self._tx():
            # Slots are never reused: remember the high-water mark before rows disappear.
            self._set_meta("slot_floor", self._next_slot())
            self._set_meta("purged", max(gen, self._meta("purged", -1)))
            self._upgrade_schema()
            n = self._conn.execute("DELETE FROM chunks WHERE gen_deleted <= ?", (gen,)).rowcount
            self._conn.execute("DELETE FROM documents WHERE gen_deleted <= ?", (gen,))
        return n

    # ------------------------------------------------------------------ writes

    def _next_slot(self) -> int:
        row = self._conn.execute("SELECT MAX(slot) FROM chunks").fetchone()
        top = -1 if row[0] is None else int(row[0])
        return max(top + 1, self._meta("slot_floor", 0))

    def raise_slot_floor(self, n: int) -> None:
        """Make :meth:`next_slot` at least ``n`` (a copy of an index keeps its source's slot
        numbering, deleted slots included: ``HybridIndex.migrate``)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        with self._lock, self._tx():
            self._set_meta("slot_floor", max(int(n), self._next_slot()))

    @_read
    def next_slot(self) -> int:
        """The first slot never used by any stored chunk (live or tombstoned)."""
        with self._lock:
            return self._next_slot()

    def add_chunks(
        self,
        chunks: Sequence[Chunk],
        slots: Sequence[int] | np.ndarray,
        gen: int,
        doc_hashes: Mapping[str, str] | None = None,
    ) -> None:
        """Insert ``chunks`` at ``slots`` and their documents (all chunks of a document in one call).

        ``doc_hashes`` gives each document's content hash; documents listed there with no
        chunks are recorded with ``n_chunks = 0``. Raises ``DocumentError`` when a chunk id
        or document is already live, or on bad text/metadata.
        """
        gen = _check_gen(gen)
        slot_list = [int(s) for s in np.asarray(slots, dtype=np.int64).reshape(-1)] if len(slots) else []
        if len(slot_list) != len(chunks):
            raise ValueError(f"got {len(chunks)} chunks but {len(slot_list)} slots")
        if len(set(slot_list)) != len(slot_list):
            raise ValueError("slots contain duplicates")
        doc_hashes = dict(doc_hashes or {})
        rows = []
        per_doc: dict[str, int] = {}
        for ch, slot in zip(chunks, slot_list):
            if not isinstance(ch, Chunk):
                raise TypeError(f"expected hybridrag.types.Chunk, got {type(ch).__name__}")
            cid = _check_id(ch.chunk_id, "chunk_id")
            did = _check_id(ch.doc_id, "doc_id")
            if not isinstance(ch.text, str):
                raise DocumentError(f"text of chunk {cid!r} must be a str, got {type(ch.text).__name__}")
            for name in ("ordinal", "start", "end"):
                v = getattr(ch, name)
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                    raise DocumentError(f"{name} of chunk {cid!r} must be an int, got {v!r}")
            text = _encode_text(ch.text)
            raw = text if isinstance(text, bytes) else text.encode("utf-8")
            row = (slot, cid, did, int(ch.ordinal), _dump_metadata(ch.metadata, cid), int(ch.start), int(ch.end),
                   hashlib.sha256(raw).hexdigest(), gen)
            rows.append((*row, text, _row_digest(row)))
            per_doc[did] = per_doc.get(did, 0) + 1
        for did in doc_hashes:
            _check_id(did, "doc_id")
            per_doc.setdefault(did, 0)
        with self._lock, self._tx():
            self._upgrade_schema()
            self._bump_gen(gen)
            if slot_list and min(slot_list) < self._next_slot():
                raise ValueError(f"slot {min(slot_list)} is below next_slot() = {self._next_slot()}; slots are never reused")
            docs = list(per_doc)
            for batch in _batches(docs):
                q = ",".join("?" * len(batch))
                hit = self._conn.execute(
                    f"SELECT doc_id FROM documents WHERE gen_deleted IS NULL AND doc_id IN ({q}) LIMIT 1", batch
                ).fetchone()
                if hit:
                    raise DocumentError(f"document {hit[0]!r} is already stored; delete it first")
            try:
                self._conn.executemany(
                    'INSERT INTO chunks(slot, chunk_id, doc_id, ordinal, metadata, start, "end", '
                    "content_hash, gen_added, text, row_sha256) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    rows,
                )
            except sqlite3.IntegrityError as exc:
                raise DocumentError(f"duplicate chunk id or slot: {exc}") from exc
            docrows = [(d, doc_hashes.get(d), n, gen) for d, n in per_doc.items()]
            self._conn.executemany(
                "INSERT INTO documents(doc_id, content_hash, n_chunks, gen_added, row_sha256) VALUES (?,?,?,?,?)",
                [(*r, _row_digest(r)) for r in docrows],
            )
            self._adjust_live(len(rows), len(docrows))

    def delete_docs(self, doc_ids: Iterable[str], gen: int) -> np.ndarray:
        """Tombstone the live chunks of ``doc_ids`` at ``gen``; return their slots (sorted)."""
        gen = _check_gen(gen)
        ids = list(dict.fromkeys(doc_ids))
        with self._lock, self._tx():
            self._bump_gen(gen)
            slots = self._slots_for(ids)
            gone = {"chunks": 0, "documents": 0}
            for batch in _batches(ids):
                q = ",".join("?" * len(batch))
                for table in ("chunks", "documents"):
                    gone[table] += self._conn.execute(
                        f"UPDATE {table} SET gen_deleted = ? WHERE gen_deleted IS NULL AND doc_id IN ({q})",
                        [gen, *batch],
                    ).rowcount
            self._adjust_live(-gone["chunks"], -gone["documents"])
        return slots

    def delete_all(self, gen: int) -> int:
        """Tombstone every live chunk and document at ``gen``; return how many documents.

        ``create(overwrite=True)`` replaces an index this way, as one commit: until the new
        manifest is on disk the old generation's rows stay readable (and ``rollback_to``
        restores them after a failure or a crash).
        """
        gen = _check_gen(gen)
        with self._lock, self._tx():
            self._bump_gen(gen)
            gone = [self._conn.execute(f"UPDATE {table} SET gen_deleted = ? WHERE gen_deleted IS NULL",
                                       (gen,)).rowcount for table in ("chunks", "documents")]
            self._adjust_live(-gone[0], -gone[1])
        return gone[1]

    # ------------------------------------------------------------------ reads

    def _slots_for(self, doc_ids: Sequence[str]) -> np.ndarray:
        out: list[int] = []
        for batch in _batches(list(doc_ids)):
            q = ",".join("?" * len(batch))
            live, lp = self._live()
            out += [r[0] for r in self._conn.execute(
                f"SELECT slot FROM chunks WHERE {live} AND doc_id IN ({q})", [*lp, *batch])]
        return np.array(sorted(out), dtype=np.int64)

    @_read
    def slots_for_docs(self, doc_ids: Iterable[str]) -> np.ndarray:
        """Live slots of the chunks of ``doc_ids`` (sorted; unknown ids ignored)."""
        with self._lock:
            return self._slots_for(list(dict.fromkeys(doc_ids)))

    @_read
    def get(self, slots: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """Live chunk records for ``slots``, in the given order; ``KeyError`` names absent slots."""
        want = np.asarray(slots, dtype=np.int64).reshape(-1).tolist() if len(slots) else []
        found: dict[int, dict[str, Any]] = {}
        uniq = list(dict.fromkeys(want))
        with self._lock:
            live, lp = self._live()
            for batch in _batches(uniq):
                q = ",".join("?" * len(batch))
                for r in self._conn.execute(
                    'SELECT slot, chunk_id, doc_id, ordinal, text, metadata, start, "end", content_hash '
                    f"FROM chunks WHERE {live} AND slot IN ({q})", [*lp, *batch],
                ):
                    found[r[0]] = {
                        "slot": r[0], "chunk_id": r[1], "doc_id": r[2], "ordinal": r[3],
                        "text": _decode_text(r[4]), "metadata": _metadata(r[5]),
                        "start": r[6], "end": r[7], "content_hash": r[8],
                    }
        missing = [s for s in uniq if s not in found]
        if missing:
            raise KeyError(f"slots not in the docstore (absent or deleted): {missing[:10]}")
        return [found[s] for s in want]

    @_read
    def doc_hash(self, doc_id: str) -> str | None:
        """Content hash of live document ``doc_id`` (``None`` when absent)."""
        with self._lock:
            live, lp = self._live()
            row = self._conn.execute(
                f"SELECT content_hash FROM documents WHERE {live} AND doc_id = ?", (*lp, doc_id)
            ).fetchone()
        return None if row is None else row[0]

    @_read
    def first_metadata(self, doc_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """``doc id -> metadata`` of the first chunk of each live document of ``doc_ids`` (unknown
        ids and documents without chunks left out); no text is read."""
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            live, lp = self._live()
            for batch in _batches(list(dict.fromkeys(doc_ids))):
                q = ",".join("?" * len(batch))
                for doc_id, meta in self._conn.execute(
                        f"SELECT doc_id, metadata FROM chunks WHERE {live} AND ordinal = 0 AND doc_id IN ({q})",
                        [*lp, *batch]):
                    out[doc_id] = _metadata(meta)
        return out

    @_read
    def documents(self) -> list[tuple[str, str | None, int]]:
        """``(doc id, content hash, chunks)`` of every live document, by doc id (documents
        with no chunk included): what :meth:`add_chunks` needs to copy them."""
        with self._lock:
            live, lp = self._live()
            return [(r[0], r[1], int(r[2])) for r in self._conn.execute(
                f"SELECT doc_id, content_hash, n_chunks FROM documents WHERE {live} ORDER BY doc_id", lp)]

    @_read
    def has_doc(self, doc_id: str) -> bool:
        """Whether ``doc_id`` is live."""
        with self._lock:
            live, lp = self._live()
            return self._conn.execute(
                f"SELECT 1 FROM documents WHERE {live} AND doc_id = ?", (*lp, doc_id)
            ).fetchone() is not None

    @_read
    def live_slots(self, as_of: int | None = None) -> np.ndarray:
        """Live slots, sorted; with ``as_of``, the slots live at generation ``as_of``
        (default: this store's view, see ``DocStore.as_of``)."""
        with self._lock:
            if as_of is None:
                live, lp = self._live()
                rows = self._conn.execute(f"SELECT slot FROM chunks WHERE {live} ORDER BY slot", lp).fetchall()
            else:
                g = _check_gen(as_of)
                rows = self._conn.execute(
                    "SELECT slot FROM chunks WHERE gen_added <= ? AND (gen_deleted IS NULL OR gen_deleted > ?) "
                    "ORDER BY slot", (g, g),
                ).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    @_read
    def doc_ids_for_slots(self, slots: Sequence[int] | np.ndarray) -> list[str]:
        """Distinct doc ids of the live chunks at ``slots`` (sorted; absent slots ignored)."""
        want = list(dict.fromkeys(int(s) for s in np.asarray(slots, dtype=np.int64).reshape(-1)))
        out: set[str] = set()
        with self._lock:
            live, lp = self._live()
            for batch in _batches(want):
                q = ",".join("?" * len(batch))
                out.update(r[0] for r in self._conn.execute(
                    f"SELECT doc_id FROM chunks WHERE {live} AND slot IN ({q})", [*lp, *batch]))
        return sorted(out)

    def integrity_problems(self, quick: bool = False) -> list[str]:
        """Problems found by SQLite's integrity check (``quick_check`` when ``quick``) and the
        store's own invariants (empty if none)."""
        with self._lock:
            res = [r[0] for r in self._conn.execute("PRAGMA quick_check" if quick else "PRAGMA integrity_check")]
            problems = [] if res == ["ok"] else res
            for table in ("chunks", "documents"):
                if self._conn.execute(
                    f"SELECT 1 FROM sqlite_master WHERE type='table' AND name='{table}'").fetchone() is None:
                    problems.append(f"table {table!r} is missing")
            if problems:
                return problems
            orphan = self._conn.execute(
                "SELECT COUNT(*) FROM chunks c WHERE c.gen_deleted IS NULL AND NOT EXISTS "
                "(SELECT 1 FROM documents d WHERE d.gen_deleted IS NULL AND d.doc_id = c.doc_id)"
            ).fetchone()[0]
            if orphan:
                problems.append(f"{orphan} live chunks belong to no live document")
            bad = self._conn.execute(
                "SELECT COUNT(*) FROM documents d WHERE d.gen_deleted IS NULL AND d.n_chunks != "
                "(SELECT COUNT(*) FROM chunks c WHERE c.gen_deleted IS NULL AND c.doc_id = d.doc_id)"
            ).fetchone()[0]
            if bad:
                problems.append(f"{bad} live documents have a chunk count that disagrees with their chunks")
        return problems

    def assume_count(self, n: int) -> None:
        """Take ``n`` as the live chunks of the present view (the engine knows it from the
        manifest of the generation this view reads), until the next write or snapshot change."""
        with self._lock:
            self._count = ((self.as_of, self._pinned, self._version), int(n))

    @_read
    def count(self) -> int:
        """Number of live chunks (in this store's view; see ``as_of``)."""
        with self._lock:
            key = (self.as_of, self._pinned, self._version)
            if self._count is not None and self._count[0] == key:
                return self._count[1]
            n = self._live_total("live_chunks", "chunks")
            self._count = (key, n)
            return n

    def count_documents(self) -> int:
        """Number of live documents."""
        return self.doc_count()

    @_read
    def doc_count(self) -> int:
        """Number of live documents."""
        with self._lock:
            return self._live_total("live_documents", "documents")

    def checksum(self) -> str:
        """SHA-256 over the live chunks and documents (stable across processes)."""
        h = hashlib.sha256()
        with self._lock:
            live, lp = self._live()
            for r in self._conn.execute(
                'SELECT slot, chunk_id, doc_id, ordinal, content_hash, metadata, start, "end" '
                f"FROM chunks WHERE {live} ORDER BY slot", lp
            ):
                h.update(json.dumps(list(r), ensure_ascii=True).encode("ascii") + b"\n")
            h.update(b"--documents--\n")
            for r in self._conn.execute(
                f"SELECT doc_id, content_hash, n_chunks FROM documents WHERE {live} ORDER BY doc_id", lp
            ):
                h.update(json.dumps(list(r), ensure_ascii=True).encode("ascii") + b"\n")
        return h.hexdigest()

    def content_checksum(self) -> str:
        """SHA-256 over everything a live chunk and document carry, text included, in this
        store's view. The engine records it in the manifest so that a changed byte in the
        docstore's data is caught at load."""
        h = hashlib.sha256()
        with self._lock:
            live, lp = self._live()
            for r in self._conn.execute(
                'SELECT slot, chunk_id, doc_id, ordinal, content_hash, metadata, start, "end", text '
                f"FROM chunks WHERE {live} ORDER BY slot", lp
            ):
                text = r[8].encode("utf-8", "surrogatepass") if isinstance(r[8], str) else bytes(r[8])
                h.update(json.dumps(list(r[:8]), ensure_ascii=True).encode("ascii") + b"\0")
                h.update(hashlib.sha256(text).digest())
            h.update(b"--documents--\n")
            for r in self._conn.execute(
                f"SELECT doc_id, content_hash, n_chunks FROM documents WHERE {live} ORDER BY doc_id", lp
            ):
                h.update(json.dumps(list(r), ensure_ascii=True).encode("ascii") + b"\n")
        return h.hexdigest()

    def verify_rows(self, as_of: int | None = None) -> list[str]:
        """Rows that no longer match the hashes recorded when they were written (empty: none).

        Checks the chunks and documents live at generation ``as_of`` (default: this store's
        view, see ``DocStore.as_of``): each chunk's text against its ``content_hash``, and each
        row's fields against its ``row_sha256`` (rows written before that column existed have
        none: only their text is checked). Reads every such row once (``hybridrag check``;
        load does not call it). The first 20 bad rows are named (slot and chunk id, or doc
        id), then a count of the rest."""
        problems: list[str] = []
        more = 0

        def report(msg: str) -> None:
            nonlocal more
            if len(problems) < _MAX_REPORTED:
                problems.append(msg)
            else:
                more += 1

        with self._lock:
            if as_of is None:
                live, lp = self._live()
            else:
                g = _check_gen(as_of)
                live, lp = "(gen_added <= ? AND (gen_deleted IS NULL OR gen_deleted > ?))", [g, g]
            hashed = self._has_row_hashes()
            rh = "row_sha256" if hashed else "NULL"
            for r in self._conn.execute(
                    f"SELECT {_CHUNK_ROW_SQL}, CAST(text AS BLOB), {rh} FROM chunks WHERE {live} ORDER BY slot", lp):
                *fields, text, digest = r
                name = f"chunk at slot {fields[0]} ({bytes(fields[1] or b'').decode('utf-8', 'replace')!r})"
                if text is None or fields[7] is None \
                        or hashlib.sha256(bytes(text)).hexdigest().encode("ascii") != bytes(fields[7]):
                    report(f"{name}: text does not match its recorded hash (changed or damaged)")
                elif digest is not None and digest != _row_digest(fields):
                    report(f"{name}: ids, metadata or offsets do not match the row's recorded hash "
                           "(changed or damaged)")
            if hashed:
                for r in self._conn.execute(
                        f"SELECT {_DOC_ROW_SQL}, row_sha256 FROM documents WHERE {live} ORDER BY doc_id", lp):
                    *fields, digest = r
                    if digest is not None and digest != _row_digest(fields):
                        doc = bytes(fields[0] or b"").decode("utf-8", "replace")
                        report(f"document {doc!r}: its row does not match its recorded hash (changed or damaged)")
        if more:
            problems.append(f"... and {more} more rows that do not match their recorded hashes")
        return problems

    def record_row_hashes(self) -> int:
        """Record ``row_sha256`` for the rows that have none (written before the column existed);
        return how many. Run it only on rows known to be intact (e.g. after the manifest's
        ``content_checksum`` of a format-1 index matched), since it vouches for what it finds."""
        if self.read_only:
            raise ValueError(f"{self.path}: record_row_hashes needs a writable docstore")
        n = 0
        with self._lock, self._tx():
            self._upgrade_schema()
            for table, sql, key in (("chunks", _CHUNK_ROW_SQL, "slot"), ("documents", _DOC_ROW_SQL, "id")):
                todo = self._conn.execute(
                    f"SELECT {key}, {sql} FROM {table} WHERE row_sha256 IS NULL").fetchall()
                self._conn.executemany(f"UPDATE {table} SET row_sha256 = ? WHERE {key} = ?",
                                       [(_row_digest(r[1:]), r[0]) for r in todo])
                n += len(todo)
        return n

    # ------------------------------------------------------------------ filters

    @_read
    def filter_mask(self, filters: Mapping[str, Any], size: int | None = None) -> np.ndarray:
        """Boolean mask by slot (length ``size``, default ``next_slot()``) of live chunks matching ``filters``."""
        if not isinstance(filters, Mapping):
            raise TypeError(f"filters must be a dict, got {type(filters).__name__}")
        if len(filters) > MAX_FILTER_FIELDS:   # SQLite refuses the expression past ~1000 terms
            raise ValueError(f"a filter of {len(filters)} fields; at most {MAX_FILTER_FIELDS} (a long list of "
                             "values for one field goes in one $in)")
        clauses: list[str] = []
        params: list[Any] = []
        for field, cond in filters.items():
            sql, p = _field_clause(field, cond)
            clauses.append(sql)
            params += p
        with self._lock:
            live, lp = self._live()
            where = " AND ".join([live, *clauses])
            params = [*lp, *params]
            n = self._next_slot() if size is None else size
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
                raise ValueError(f"size must be a non-negative int, got {size!r}")
            slots = np.array([r[0] for r in self._conn.execute(f"SELECT slot FROM chunks WHERE {where}", params)],
                             dtype=np.int64)
        if slots.size and slots.max() >= n:
            raise ValueError(f"size {n} is too small: matching slot {int(slots.max())} is outside the mask")
        mask = np.zeros(int(n), dtype=bool)
        mask[slots] = True
        return mask


    @_read
    def missing_keys(self, fields: Sequence[str]) -> list[str]:
        """The metadata keys among ``fields`` that no live chunk has (``doc_id`` / ``chunk_id``,
        columns, are never missing): what ``search`` tells a user whose filter matched nothing."""
        out = []
        with self._lock:
            live, lp = self._live()
            for field in fields:
                if field in _COLUMNS:
                    continue
                _, typ, p = _field_expr(field)
                row = self._conn.execute(f"SELECT 1 FROM chunks WHERE {live} AND {typ} IS NOT NULL LIMIT 1",
                                         [*lp, *p]).fetchone()
                if row is None:
                    out.append(field)
        return out


# ---------------------------------------------------------------------- filter SQL


def _field_expr(field: Any) -> tuple[str, str | None, list[Any]]:
    """SQL for a field's value, and for its JSON type (None for text columns)."""
    if not isinstance(field, str) or not field:
        raise TypeError(f"filter field names must be non-empty str, got {field!r}")
    if field.startswith("$"):
        raise ValueError(f"unknown top-level filter operator {field!r}; fields are combined with AND")
    if field in _COLUMNS:
        return field, None, []
    check_unicode(field, "filter field name")
    if any(c in field for c in '"\\') or any(ord(c) < 32 for c in field):
        raise ValueError(f"filter field {field!r} contains a quote, backslash or control character")
    path = f'$."{field}"'
    return "json_extract(metadata, ?)", "json_type(metadata, ?)", [path]


def _scalar_kind(value: Any, op: str, field: str) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, np.integer)):
        if not _INT_MIN <= value <= _INT_MAX:
            raise ValueError(f"filter {field!r} {op}: the integer {value!r} does not fit in 64 bits "
                             f"(SQLite's range is {_INT_MIN} to {_INT_MAX})")
        return "num"
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise ValueError(f"filter {field!r} {op}: {value!r} is not a finite number")
        return "num"
    if isinstance(value, str):
        check_unicode(value, f"filter {field!r} {op} value")
        return "str"
    raise TypeError(
        f"filter {field!r} {op}: value must be str, int, float, bool or None, got {type(value).__name__} {value!r}"
    )


_TYPE_SQL = {"num": "IN ('integer', 'real')", "str": "= 'text'", "null": "= 'null'"}


def _eq(field: str, value: Any, op: str) -> tuple[str, list[Any]]:
    expr, typ, p = _field_expr(field)
    kind = _scalar_kind(value, op, field)
    if typ is None:
        if kind != "str":
            raise TypeError(f"filter {field!r} {op}: {field} is a string column, got {value!r}")
        return f"{expr} = ?", [value]
    if kind == "bool":
        return f"{typ} = ?", [*p, "true" if value else "false"]
    if kind == "null":
        return f"{typ} = 'null'", p
    val = value.item() if isinstance(value, np.generic) else value
    return f"({typ} {_TYPE_SQL[kind]} AND {expr} = ?)", [*p, *p, val]


def _in(field: str, values: Iterable[Any], op: str) -> tuple[str, list[Any]]:
    """``$in``: true when the field equals one of ``values`` under :func:`_eq`'s rules.

    Numbers and strings (any count) are looked up in one JSON array parameter each
    (``IN (SELECT value FROM json_each(?))``): SQL has a limit of 1000 on expression depth
    and 32766 on parameters, so one ``OR`` term or one ``?`` per value fails at around a
    thousand values. A JSON array carries integers and strings exactly; floats go as their
    shortest round-trip text, which SQLite parses back to the same double. Booleans and
    null (at most three values) keep their own terms."""
    expr, typ, p = _field_expr(field)
    nums: list[Any] = []
    strs: list[str] = []
    others: list[Any] = []
    for v in values:
        kind = _scalar_kind(v, op, field)
        if kind == "num":
            nums.append(v.item() if isinstance(v, np.generic) else v)
        elif kind == "str":
            strs.append(v)
        else:
            others.append(v)
    if typ is None and (nums or others):
        raise TypeError(f"filter {field!r} {op}: {field} is a string column, got {(nums + others)[0]!r}")
    parts: list[str] = []
    params: list[Any] = []
    for kind, group in (("num", nums), ("str", strs)):
        if not group:
            continue
        arr = json.dumps(group, ensure_ascii=False, allow_nan=False)
        if typ is None:
            parts.append(f"{expr} IN (SELECT value FROM json_each(?))")
            params.append(arr)
        else:
            parts.append(f"({typ} {_TYPE_SQL[kind]} AND {expr} IN (SELECT value FROM json_each(?)))")
            params += [*p, *p, arr]
    for v in dict.fromkeys(others):   # True, False, None: each once
        sql, ps = _eq(field, v, op)
        parts.append(sql)
        params += ps
    return ("(" + " OR ".join(parts) + ")" if parts else "0"), params


def _field_clause(field: Any, cond: Any) -> tuple[str, list[Any]]:
    """One field's condition as SQL: a scalar (equality) or an ``{op: value}`` dict."""
    _field_expr(field)  # check the name first: {"$or": [...]} must not be told to use $in
    if not isinstance(cond, Mapping):
        if isinstance(cond, (list, tuple, set, dict)):
            raise TypeError(f"filter {field!r}: use {{'$in': [...]}} to match several values, got {cond!r}")
        return _eq(field, cond, "$eq")
    if not cond:
        raise ValueError(f"filter {field!r}: empty operator dict; valid operators: {', '.join(FILTER_OPERATORS)}")
    parts: list[str] = []
    params: list[Any] = []
    for op, value in cond.items():
        if op not in FILTER_OPERATORS:
            raise ValueError(f"unknown filter operator {op!r} on {field!r}; valid operators: {', '.join(FILTER_OPERATORS)}")
        if op == "$eq":
            sql, p = _eq(field, value, op)
        elif op == "$ne":
            sql, p = _eq(field, value, op)
            sql = f"NOT COALESCE({sql}, 0)"
        elif op in ("$in", "$nin"):
            if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple, set, frozenset)):
                raise TypeError(f"filter {field!r} {op}: value must be a list, got {type(value).__name__} {value!r}")
            sql, p = _in(field, value, op)
            if op == "$nin":
                sql = f"NOT COALESCE({sql}, 0)"
        else:
            expr, typ, fp = _field_expr(field)
            kind = _scalar_kind(value, op, field)
            if kind not in ("num", "str"):
                raise TypeError(f"filter {field!r} {op}: value must be a number or str, got {value!r}")
            val = value.item() if isinstance(value, np.generic) else value
            if typ is None:
                if kind != "str":
                    raise TypeError(f"filter {field!r} {op}: {field} is a string column, got {value!r}")
                sql, p = f"{expr} {_RANGE_SQL[op]} ?", [val]
            else:
                sql = f"({typ} {_TYPE_SQL[kind]} AND {expr} {_RANGE_SQL[op]} ?)"
                p = [*fp, *fp, val]
        parts.append(sql)
        params += p
    return "(" + " AND ".join(parts) + ")", params
