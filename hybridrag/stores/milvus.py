"""Dense and sparse first-stage stores, and ColBERT token vectors, in Milvus (Milvus Lite
embedded, or a server by URI).

Two first-stage backends of the :class:`~hybridrag.stores.base.VectorStore` protocol, each on
its own Milvus collection whose primary key is the engine slot (``INT64``):

* :class:`MilvusDenseStore`: a ``FLOAT_VECTOR`` field, metric ``IP``; data in the
  format :class:`~hybridrag.stores.faiss.FaissStore` takes (float32 ``(n, dim)``).
* :class:`MilvusSparseStore`: a ``SPARSE_FLOAT_VECTOR`` field, index
  ``SPARSE_INVERTED_INDEX``, metric ``IP``; data in the format
  :class:`~hybridrag.stores.sparse.SparseIndex` takes (a list of ``{term id: weight}`` or
  a scipy sparse matrix), weights must be ``>= 0`` (Milvus rejects negative weights).

and :class:`MilvusColbertStore` (``[colbert] backend = "milvus"``): token vectors in rows of
``tokens_per_row`` tokens keyed ``slot << 16 | row``, fetched by key for ``score`` (MaxSim on
the client, equal to :class:`~hybridrag.stores.multivector.MultiVectorStore`'s), never searched
by Milvus.

The first two carry a ``metadata`` JSON field (optional ``metadata=`` argument of ``add``) that
:func:`filter_expression` filters on, and ``search(..., where=...)`` pushes into Milvus.

How Milvus (Lite) traits are handled
------------------------------------
* ``uri`` is a local ``*.db`` path (Milvus Lite, one process per data file) or an
  ``http(s)://`` URI plus ``token`` for a server or cluster. The token is never written
  to disk, and ``load`` follows a uri only when the caller names it (or it is a Lite
  file inside the index directory): :func:`resolve_connection`.
* Every search and query names its ``output_fields`` (Milvus returns every field
  otherwise). Searches fetch the stored vectors of their hits and re-score them
  exactly on the client (the same code as ``score``), then order by score descending
  and slot ascending; when a tie at the ``k``-th score may reach past the fetched hits
  the search is repeated with a larger limit, so ties always go to the smaller slot.
* Milvus rejects an empty sparse row; a row without lexical weight is stored as a
  placeholder term (``PLACEHOLDER_TERM``) that no query can carry, so it is counted,
  scored 0 by ``score`` and never returned as a hit. Hits scoring 0 are not returned
  (as in ``SparseIndex``).
* Milvus accepts index types it cannot build and reports them as finished. The stores
  accept only the index types listed in ``DENSE_INDEX_TYPES`` / ``SPARSE_INDEX_TYPES``
  and check ``list_indexes`` / ``describe_index`` after creating (or attaching to) a
  collection; anything else raises :class:`~hybridrag.errors.ConfigError`.
* Collections use consistency level ``Strong``, so a search right after ``add`` or
  ``remove`` sees it; ``save`` flushes. A collection re-opened by another client is
  loaded explicitly (Milvus Lite re-opens it in the *released* state).
* ``allowed`` masks become ``slot in [...]`` (or ``slot not in [...]``) filters when
  they list at most ``max_filter_ids`` slots; larger masks are post-filtered with a
  growing search limit and, past Milvus's limit of 16384 hits, searched in chunks of
  ``slot in [...]`` filters whose results are merged, so ``k`` hits come back when
  ``k`` exist.

Persistence: Milvus holds the vectors. Every row carries ``gen``, the store generation it
was written at. ``save`` writes one small JSON file (``milvus-dense-<tag>.json`` /
``milvus-sparse-<tag>.json``) with the collection, the URI (relative when the Milvus Lite
file lies inside the index directory), the generation it makes visible, the row count,
the largest slot, the slots removed since the last commit and the config. ``load`` opens
that state read-only (rows of later generations and removed slots are filtered out of
every search, score and count; nothing in Milvus is changed) and raises
:class:`~hybridrag.errors.IndexFormatError` when the collection is missing or its visible
row count differs. The first write of a loaded store checks that the collection names this
index directory as owner (unless it is in a Milvus Lite file inside the directory) and
holds no commit newer than this store's (``hybridrag.committed``, set by every commit),
then deletes rows no commit made visible; removed rows are purged by the commit after the
one that recorded the removal (docs/MILVUS.md, "Commit protocol").

Tests: ``tests/test_milvus.py``, ``tests/test_store_conformance.py``,
``tests/test_milvus_colbert.py`` (the token collection).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

try:
    from pymilvus import DataType, MilvusClient, MilvusException
except ImportError as _exc:  # pymilvus missing, or blocked (sys.modules entry set to None)
    raise ImportError(
        'the Milvus backend needs pymilvus (and milvus-lite for local files): pip install "hybridrag[milvus]"'
    ) from _exc

from hybridrag.errors import ConfigError, IndexFormatError
from hybridrag.stores.base import (
    Self,
    as_matrix,
    as_slots,
    check_allowed,
    check_k,
    empty_results,
    new_file,
    rank_order,
    topk,
)
from hybridrag.stores.docstore import check_unicode
from hybridrag.stores.sparse import _rows_to_coo

__all__ = [
    "MilvusDenseStore",
    "MilvusSparseStore",
    "MilvusColbertStore",
    "milvus_stores",
    "resolve_connection",
    "directory_owner",
    "filter_expression",
    "DENSE_INDEX_TYPES",
    "SPARSE_INDEX_TYPES",
    "PLACEHOLDER_TERM",
    "MAX_HITS",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
#: Largest ``limit`` a Milvus server accepts for one search.
MAX_HITS = 16384
#: Term id stored for a sparse row without weights (Milvus rejects empty sparse rows).
PLACEHOLDER_TERM = 2**32 - 2
DENSE_INDEX_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW", "DISKANN", "SCANN", "AUTOINDEX")
SPARSE_INDEX_TYPES = ("SPARSE_INVERTED_INDEX", "SPARSE_WAND", "AUTOINDEX")
_SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://", "unix:")
_PK = "slot"
_VEC = "vector"
_META = "metadata"
_GEN = "gen"  # the store generation a row was written at (readers see committed ones only)
_OWNER = "hybridrag.owner"  # collection property: the index directory that writes it
_COMMITTED = "hybridrag.committed"  # collection property: the newest store generation a commit published
#: Environment variable naming the Milvus URI when ``load`` is not given one.
URI_ENV = "HYBRIDRAG_MILVUS_URI"
# In the index directory: one JSON line per set of collections an index made, written before
# Milvus is asked to create them, so that collections a killed create(overwrite=True) left
# behind are known to be this directory's (stray_collections).
CREATED_LOG = "milvus-created.jsonl"
_CREATED_LOG_MAX = 1 << 20   # bytes read of it at most
_MADE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*_[0-9a-f]{12}_(dense|sparse|colbert|docs|bm25|bm25_terms)$")
TOKEN_ENV = "MILVUS_TOKEN"
_INSERT_BATCH = 1000
_ID_CHUNK = 16384  # slots per "slot in [...]" expression
_TIE_MARGIN = 8


# --------------------------------------------------------------------------- filters

_OPS = ("$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte")
_RANGE = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def _quote(s: str) -> str:
    """A Milvus string literal (the parser knows only the escapes below; other bytes go raw)."""
    out = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{out}"'


def _literal(value: Any, field: str, op: str) -> tuple[str, str]:
    """``(literal, kind)`` of a filter value; kind is ``num``, ``str`` or ``bool``."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        raise ValueError(
            f"filter {field!r} {op}: None is not supported by the Milvus backend "
            "(Milvus cannot tell a JSON null from a missing key); filter with the docstore instead"
        )
    if isinstance(value, bool):
        return ("true" if value else "false"), "bool"
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"filter {field!r} {op}: {value!r} does not fit in a 64-bit integer")
        return str(value), "num"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"filter {field!r} {op}: {value!r} is not a finite number")
        return repr(value), "num"
    if isinstance(value, str):
        return _quote(check_unicode(value, f"filter {field!r} {op} value")), "str"
    raise TypeError(
        f"filter {field!r} {op}: value must be str, int, float or bool, got {type(value).__name__} {value!r}"
    )


def _path(field: Any, json_field: str) -> str:
    if not isinstance(field, str) or not field:
        raise TypeError(f"filter field names must be non-empty str, got {field!r}")
    if field.startswith("$"):
        raise ValueError(f"unknown top-level filter operator {field!r}; fields are combined with AND")
    check_unicode(field, "filter field name")
    if any(c in field for c in '"\\') or any(ord(c) < 32 for c in field):
        raise ValueError(f"filter field {field!r} contains a quote, backslash or control character")
    return f'{json_field}["{field}"]'


def filter_expression(filters: Mapping[str, Any], json_field: str = _META) -> str:
    """Translate the engine's metadata filters to a Milvus boolean expression.

    ``filters`` has the syntax of ``DocStore.filter_mask``: ``{"field": value}``
    (equality) or ``{"field": {op: value, ...}}`` with ``op`` in ``$eq $ne $in $nin
    $gt $gte $lt $lte``, ANDed over fields and operators. Every field is a key of the
    JSON field ``json_field`` (``doc_id`` / ``chunk_id`` too: pass them in the metadata
    given to ``add`` to filter on them). As in the docstore, values compare only with
    values of the same JSON type (``{"year": {"$gte": 2020}}`` never matches ``"2021"``),
    and ``$ne`` / ``$nin`` also match rows without the field. Differences: ``None`` is
    rejected (``ValueError``), and Milvus compares JSON booleans as the numbers 1 / 0.
    An empty ``filters`` gives ``""`` (no filter).

    Raises ``TypeError`` / ``ValueError`` naming the bad field, operator or value.
    """
    if not isinstance(filters, Mapping):
        raise TypeError(f"filters must be a dict, got {type(filters).__name__}")
    clauses: list[str] = []
    for field, cond in filters.items():
        path = _path(field, json_field)
        if not isinstance(cond, Mapping):
            if isinstance(cond, (list, tuple, set, frozenset, dict)):
                raise TypeError(f"filter {field!r}: use {{'$in': [...]}} to match several values, got {cond!r}")
            cond = {"$eq": cond}
        if not cond:
            raise ValueError(f"filter {field!r}: empty operator dict; valid operators: {', '.join(_OPS)}")
        parts: list[str] = []
        for op, value in cond.items():
            if op not in _OPS:
                raise ValueError(f"unknown filter operator {op!r} on {field!r}; valid operators: {', '.join(_OPS)}")
            if op in ("$eq", "$ne"):
                eq = f"{path} == {_literal(value, field, op)[0]}"
                parts.append(eq if op == "$eq" else f"(not exists {path} or not ({eq}))")
            elif op in ("$in", "$nin"):
                if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple, set, frozenset)):
                    raise TypeError(f"filter {field!r} {op}: value must be a list, got {type(value).__name__} {value!r}")
                eqs = [f"{path} == {_literal(v, field, op)[0]}" for v in value]
                any_eq = "(" + " or ".join(eqs) + ")" if eqs else "false"
                parts.append(any_eq if op == "$in" else f"(not exists {path} or not {any_eq})")
            else:
                lit, kind = _literal(value, field, op)
                if kind not in ("num", "str"):
                    raise TypeError(f"filter {field!r} {op}: value must be a number or str, got {value!r}")
                parts.append(f"{path} {_RANGE[op]} {lit}")
        clauses.append(parts[0] if len(parts) == 1 else "(" + " and ".join(parts) + ")")
    return " and ".join(clauses)


def _slot_list(slots: np.ndarray) -> str:
    return "[" + ",".join(map(str, slots.tolist())) + "]"


# --------------------------------------------------------------------------- connection


def _by_rank(hits: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """``(score, slot)`` hits by score descending, ties by the smaller slot (the engine's one
    tie rule, :func:`hybridrag.stores.base.rank_order`)."""
    if len(hits) < 2:
        return list(hits)
    a = np.array(hits, dtype=np.float64)   # slots < 2**53 are exact in float64
    return [hits[i] for i in rank_order(a[:, 0], a[:, 1])]


def _is_server(uri: str) -> bool:
    return uri.startswith(_SERVER_SCHEMES)


def _inside(uri: str, directory: Path) -> bool:
    """Whether ``uri`` is a Milvus Lite file inside ``directory`` (symbolic links resolved)."""
    if _is_server(uri):
        return False
    try:
        Path(uri).expanduser().resolve().relative_to(Path(directory).resolve())
    except ValueError:
        return False
    return True


def directory_owner(directory: Path) -> str:
    """The identity of an index directory that a collection records as its writer.

    Device and inode: a renamed directory keeps them, a copy (a backup, a ``cp -r``) does
    not, so a writer on a copy is refused instead of changing the original's collection.
    """
    st = os.stat(directory)
    return f"{st.st_dev}:{st.st_ino}"


def resolve_connection(stored: Any, directory: Path, uri: str | None = None,
                       token: str | None = None) -> tuple[str, str | None, bool]:
    """``(uri, token, private)`` for an index whose files name Milvus at ``stored``.

    Connection settings come from the user, never from the index directory alone:
    ``uri`` (an argument, else ``$HYBRIDRAG_MILVUS_URI``) wins; without it only a Milvus
    Lite file inside ``directory`` is opened (``stored`` relative, resolving inside it).
    A server or a Lite file elsewhere raises :class:`ConfigError` saying how to pass it.
    ``token`` (else ``$MILVUS_TOKEN``) goes only to a URI the user named. ``private``
    is True for a Lite file inside ``directory`` (copied with it, so owned by it).
    """
    directory = Path(directory)
    uri = uri or os.environ.get(URI_ENV) or None
    if uri is not None:
        if not isinstance(uri, str):
            raise ConfigError(f"milvus uri must be a str, got {uri!r}")
        if not _is_server(uri):
            uri = str(Path(uri).expanduser().resolve())
        return uri, token or os.environ.get(TOKEN_ENV) or None, _inside(uri, directory)
    if not isinstance(stored, str) or not stored:
        raise IndexFormatError(f"{directory}: the index names no Milvus uri ({stored!r})")
    where = None
    if _is_server(stored):
        where = "a Milvus server"
    elif Path(stored).expanduser().is_absolute() or not _inside(str(directory / stored), directory):
        where = "a Milvus Lite file outside the index directory"
    if where is not None:
        raise ConfigError(
            f"the index at {str(directory)!r} keeps its vectors in {where} ({stored!r}); hybridrag does not "
            "follow connection settings read from an index directory. If you trust it, pass it: "
            f"HybridIndex.load(path, milvus_uri={stored!r}) (and milvus_token=... for a server), "
            f"--milvus-uri on the command line, or set {URI_ENV} (and {TOKEN_ENV})"
        )
    return str((directory / stored).resolve()), None, True


class _Swallow(logging.Filter):
    """Keeps the records a logger emits (instead of letting Python print them) while hybridrag
    opens a Milvus Lite file: milvus-lite logs its own traceback before the client raises."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


def _connect(uri: str, token: str | None, create: bool = True) -> Any:
    """A client of the Milvus at ``uri``. ``create=False`` (opening an index, a query node):
    a Milvus Lite file that does not exist is an error, never made."""
    if _is_server(uri):
        try:
            return MilvusClient(uri=uri, token=token or "")
        except Exception as exc:  # noqa: BLE001 - pymilvus raises MilvusException (or grpc errors)
            raise ConfigError(f"cannot connect to the Milvus server at {uri!r} (is it running, and is the uri "
                              f"right?): {exc}") from exc
    path = Path(uri).expanduser()
    if path.suffix != ".db":
        raise ConfigError(f"Milvus Lite uri must be a file path ending in .db (or an http(s):// URI), got {uri!r}")
    if not create and not path.exists():
        raise IndexFormatError(f"there is no Milvus Lite file at {str(path)!r} (opening an index never makes one: "
                               "is the uri right?)")
    path.parent.mkdir(parents=True, exist_ok=True)
    quiet = _Swallow()
    lite_log = logging.getLogger("milvus_lite.server_manager")
    lite_log.addFilter(quiet)
    try:
        return MilvusClient(uri=str(path.resolve()))
    except Exception as exc:  # milvus-lite missing, or the data file held by another process
        why = next((f"{type(r.exc_info[1]).__name__}: {r.exc_info[1]}" for r in quiet.records
                    if r.exc_info and r.exc_info[1] is not None), str(exc))
        raise ConfigError(
            f"cannot open Milvus Lite file {str(path)!r} (is milvus-lite installed, and is the file free? "
            f"Milvus Lite allows one process per data file): {why}"
        ) from exc
    finally:
        lite_log.removeFilter(quiet)


def _check_index_type(index_type: Any, valid: tuple[str, ...], store: str) -> str:
    if not isinstance(index_type, str) or index_type.upper() not in valid:
        raise ConfigError(f"{store} index_type {index_type!r} is not supported; choose one of {list(valid)}")
    return index_type.upper()


# --------------------------------------------------------------------------- base


def load_repairing(client: Any, uri: str, name: str, field: str, index_type: str, params: dict[str, Any]) -> None:
    """Load collection ``name`` of ``client`` (at ``uri``), whose vector ``field`` has index
    ``index_type`` (metric IP) with ``params``."""
    try:
        client.load_collection(name)
        return
    except MilvusException as exc:
        if _is_server(uri):
            raise
        first = exc
    # Milvus Lite writes each segment's vector index file in place (no temporary file and
    # rename), so a process killed while writing one leaves a truncated file that fails
    # every later load. The file is derived from the segment's rows: drop the index (which
    # deletes its files) and create it again with the same parameters; no row is touched.
    try:
        client.release_collection(name)
        client.drop_index(name, field)
        ip = client.prepare_index_params()
        ip.add_index(field_name=field, index_type=index_type, metric_type="IP", params=params)
        client.create_index(name, ip)
        client.load_collection(name)
    except MilvusException as exc:
        raise IndexFormatError(
            f"Milvus Lite cannot load collection {name!r} of {uri!r} ({first}); "
            f"rebuilding its vector index failed too: {exc}"
        ) from exc
    logger.warning("rebuilt the vector index of Milvus Lite collection %r (its file was damaged: %s)", name, first)


def bm25_terms_name(collection: str) -> str:
    """The name of the terms collection beside BM25's rows collection ``collection``."""
    return f"{collection}_terms"


def lite_bytes(uri: str, names: Sequence[str]) -> int | None:
    """Bytes on disk of collections ``names`` in the Milvus Lite file ``uri`` (its data, index
    and manifest files; Milvus Lite 3.x keeps each collection in a folder of its own); None for
    a server, which reports no sizes."""
    if _is_server(uri):
        return None
    total = 0
    for name in names:
        folder = Path(uri) / "collections" / name
        if folder.is_dir():
            total += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return total


class _MilvusStore:
    """Shared logic of the two Milvus stores (one collection, primary key = slot)."""

    _kind = ""
    _index_types: tuple[str, ...] = ()

    def __init__(
        self,
        uri: str,
        token: str | None,
        collection: str,
        index_type: str,
        index_params: dict[str, Any] | None,
        search_params: dict[str, Any] | None,
        max_filter_ids: int,
        overwrite: bool,
        owner: str | None = None,
        _attach: bool = False,
    ) -> None:
        if not isinstance(uri, str) or not uri:
            raise ConfigError(f"uri must be a Milvus Lite .db path or an http(s):// URI, got {uri!r}")
        if not isinstance(collection, str) or not collection or not collection.replace("_", "a").isalnum() \
                or collection[0].isdigit():
            raise ConfigError(f"collection must be letters, digits and '_' (not starting with a digit), got {collection!r}")
        if isinstance(max_filter_ids, bool) or not isinstance(max_filter_ids, (int, np.integer)) or max_filter_ids < 1:
            raise ConfigError(f"max_filter_ids must be an int >= 1, got {max_filter_ids!r}")
        for name, val in (("index_params", index_params), ("search_params", search_params)):
            if val is not None and not isinstance(val, dict):
                raise ConfigError(f"{name} must be a dict or None, got {val!r}")
        self.uri = uri
        self.collection = collection
        self.index_type = _check_index_type(index_type, self._index_types, type(self).__name__)
        self.index_params = dict(index_params or {})
        self.search_params = dict(search_params or {})
        self.max_filter_ids = int(max_filter_ids)
        self._token = token
        self._owner = owner
        # A Milvus Lite file inside the index directory that opens it: copied with the
        # directory, so the collections in it are the directory's own whatever owner they name.
        self._private = False
        self._client = _connect(uri, token, create=not _attach)
        self._max_slot = -1
        self._count: int | None = None
        # Commit state (see "Commit protocol" in docs/MILVUS.md): rows carry the store
        # generation they were written at (_next); a reader sees gen <= _gen (committed), the
        # writer also its own later rows. Removed rows stay in Milvus, hidden, until the
        # commit after the one that recorded the removal purges them.
        self._gen = 0
        self._next = 1
        self._writer = not _attach  # a loaded store turns writer at its first write
        self._removed: set[int] = set()  # removed since the last commit (visible to readers)
        self._purge: set[int] = set()  # removed by the last commit, still in Milvus
        self._saved: tuple[int, set[int]] | None = None
        if self._client.has_collection(collection):
            self._check_collection()
            self._load_collection()
            if not _attach:
                n = self._live_count()
                if n and not overwrite:
                    raise ConfigError(
                        f"Milvus collection {collection!r} at {uri!r} already holds {n} rows; load() the index "
                        "that owns it, choose another collection, or pass overwrite=True to drop it"
                    )
                if n:
                    self._client.drop_collection(collection)
                    self._create()
        elif _attach:
            raise IndexFormatError(f"Milvus collection {collection!r} does not exist at {uri!r}")
        else:
            self._create()

    # ------------------------------------------------------------------ schema

    def _vector_field(self, schema: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _create(self) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(_PK, DataType.INT64, is_primary=True)
        schema.add_field(_GEN, DataType.INT64)
        self._vector_field(schema)
        schema.add_field(_META, DataType.JSON)
        ip = self._client.prepare_index_params()
        ip.add_index(field_name=_VEC, index_type=self.index_type, metric_type="IP", params=self._build_params())
        props = {_OWNER: self._owner} if self._owner else {}
        self._client.create_collection(self.collection, schema=schema, index_params=ip, consistency_level="Strong",
                                       properties=props)
        self._check_collection()
        self._count = 0

    def _load_collection(self) -> None:
        load_repairing(self._client, self.uri, self.collection, _VEC, self.index_type, self._build_params())

    def _build_params(self) -> dict[str, Any]:
        return dict(self.index_params)

    def _expected_vector(self) -> tuple[Any, dict[str, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_collection(self) -> None:
        """The collection has our schema and exactly the index we asked for (else ConfigError)."""
        desc = self._client.describe_collection(self.collection)
        fields = {f["name"]: f for f in desc.get("fields", [])}
        want_type, want_params = self._expected_vector()
        pk, vec = fields.get(_PK), fields.get(_VEC)
        gen = fields.get(_GEN)
        if pk is None or not pk.get("is_primary") or pk.get("type") != DataType.INT64 or vec is None \
                or vec.get("type") != want_type or _META not in fields or gen is None \
                or gen.get("type") != DataType.INT64:
            raise IndexFormatError(
                f"Milvus collection {self.collection!r} does not have the {self._kind} schema "
                f"({_PK} INT64 primary key, {_GEN} INT64, {_VEC} {want_type.name}, {_META} JSON); "
                f"fields: {sorted(fields)}"
            )
        for key, val in want_params.items():
            got = vec.get("params", {}).get(key)
            if got is not None and int(got) != int(val):
                raise IndexFormatError(f"Milvus collection {self.collection!r} has {_VEC} {key}={got}, expected {val}")
        indexes = self._client.list_indexes(self.collection, field_name=_VEC)
        if not indexes:
            raise ConfigError(f"Milvus collection {self.collection!r} has no index on {_VEC!r}")
        info = self._client.describe_index(self.collection, index_name=indexes[0])
        got_type = str(info.get("index_type", "")).upper()
        metric = str(info.get("metric_type", "")).upper()
        if got_type != self.index_type or metric != "IP" or str(info.get("state", "Finished")) == "Failed":
            raise ConfigError(
                f"Milvus collection {self.collection!r} has index {got_type or '?'} / metric {metric or '?'} "
                f"(state {info.get('state')!r}); expected {self.index_type} / IP"
            )

    # ------------------------------------------------------------------ data hooks

    def _prepare_rows(self, data: Any, n: int) -> list[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _prepare_queries(self, queries: Any) -> tuple[list[Any], list[Any]]:  # pragma: no cover - abstract
        """``(for Milvus, for local scoring)``; a Milvus entry is None for a query that can hit nothing."""
        raise NotImplementedError

    def _rescore(self, q: Any, vectors: list[Any]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    #: the fields a fetch reads for rescoring and export (:meth:`_row_value` makes one value of them)
    _out_fields: tuple[str, ...] = (_VEC,)

    def _row_fields(self, row: Any) -> dict[str, Any]:
        """The stored fields of one prepared row (besides key, generation and metadata)."""
        return {_VEC: row}

    def _row_value(self, entity: Mapping[str, Any]) -> Any:
        """What :meth:`_rescore` and :meth:`_exported` take of a fetched row."""
        return entity[_VEC]

    def _added(self, rows: list[Any]) -> None:
        """Called after ``add`` stored ``rows`` (prepared)."""

    def _removing(self, slots: set[int]) -> None:
        """Called by ``remove`` with the visible slots it is about to hide."""

    def _unseen_bound(self, floor: float) -> float:
        """The most a row Milvus ranked at or below ``floor`` can score exactly."""
        return floor

    def _record(self) -> dict[str, Any]:
        """More of this store's state for the record ``save`` writes (:meth:`_restore` reads it)."""
        return {}

    def _restore(self, doc: Mapping[str, Any], source: str) -> None:
        """Take back what :meth:`_record` added to the record."""

    # ------------------------------------------------------------------ protocol

    def __len__(self) -> int:
        if self._count is None:
            self._count = self._visible_count()
        return self._count

    def _live_count(self, expr: str = "") -> int:
        res = self._client.query(self.collection, filter=expr, output_fields=["count(*)"])
        return int(res[0]["count(*)"]) if res else 0

    def _visible_gen(self) -> int:
        return self._next if self._writer else self._gen

    def _visible(self) -> str:
        """The rows this store sees: committed ones, plus its own writes when it is the writer."""
        return f"{_GEN} <= {self._visible_gen()}"

    def _hidden(self) -> set[int]:
        return self._purge | self._removed

    def _count_filter(self) -> str:
        """The rows :meth:`_visible_count` counts (one per slot)."""
        return self._visible()

    def _visible_count(self) -> int:
        hidden = self._hidden()
        n = self._live_count(self._count_filter())
        if hidden:
            n -= self._present(np.fromiter(hidden, np.int64, len(hidden)), visible=True).shape[0]
        return n

    def _present(self, slots: np.ndarray, visible: bool = False) -> np.ndarray:
        """The slots among ``slots`` that are stored (unique, sorted); with ``visible``, only
        rows this store sees (checked here, as in :meth:`_fetch`)."""
        found: list[int] = []
        uniq = np.unique(slots)
        top = self._visible_gen()
        for s in range(0, uniq.shape[0], _ID_CHUNK):
            chunk = uniq[s : s + _ID_CHUNK]
            res = self._client.query(self.collection, filter=f"{_PK} in {_slot_list(chunk)}",
                                     output_fields=[_PK, _GEN])
            found += [int(r[_PK]) for r in res if not visible or int(r[_GEN]) <= top]
        return np.array(sorted(found), dtype=np.int64)

    def _begin_write(self) -> None:
        """Turn a loaded store into the writer: called (under the index's write lock) before
        its first change. Refuses a collection another index directory writes, then deletes
        the rows no commit made visible (a dead or failed writer's leftovers)."""
        if self._writer:
            return
        self._check_not_stale()
        self._client.delete(self.collection, filter=f"{_GEN} > {self._gen}")
        self._next = self._gen + 1
        self._writer = True
        # the count stands: the rows deleted were invisible, and the writer sees the same rows now

    def _delete_slots(self, slots: np.ndarray) -> None:
        """Delete every row of ``slots`` (sorted) from Milvus."""
        for s in range(0, slots.shape[0], _ID_CHUNK):
            self._client.delete(self.collection, filter=f"{_PK} in {_slot_list(slots[s : s + _ID_CHUNK])}")

    def _committed_generation(self) -> int:
        """The newest store generation a commit published into the collection (-1: none recorded)."""
        props = self._client.describe_collection(self.collection).get("properties") or {}
        try:
            return int(props.get(_COMMITTED, -1))
        except (TypeError, ValueError):
            return -1

    def _count_at_load(self, rows: int, gen: int) -> int:
        """The visible rows of generation ``gen``, for ``load`` to check against the ``rows`` it
        recorded. Milvus Lite evaluates a filtered ``count(*)`` over every row (seconds for 54k
        rows of 1,024 floats: ``benchmarks/probe_milvus_colbert_load.py``), so when the collection's last
        published commit is ``gen`` itself, nothing a ``gen`` reader sees can have changed since
        (uncommitted rows are invisible, and only a newer commit purges rows this one still shows):
        the recorded count stands, checked against the unfiltered ``count(*)``, which every visible
        row is part of. Otherwise (a newer commit, or none recorded): the exact filtered count."""
        if self._committed_generation() == gen and self._live_count("") >= rows:
            return rows
        return self._visible_count()

    def _check_not_stale(self) -> None:
        """Refuse to write a collection another index directory writes (this index is a copy or
        a backup of it, or another directory took it over: ``HybridIndex.take_over``), or one
        where a commit newer than this store's was published (an older copy: a backup, or a
        restore whose device and inode happen to match the original's). Called at the first
        write and at every ``save``: one ``describe_collection``."""
        props = self._client.describe_collection(self.collection).get("properties") or {}
        # A collection without an owner was made by the store API (or, before every index
        # recorded one, in a private Lite file): the newest-commit check below still applies.
        if self._owner is not None and not self._private and props.get(_OWNER, self._owner) != self._owner:
            raise IndexFormatError(
                f"Milvus collection {self.collection!r} at {self.uri!r} is written by another index "
                f"directory (owner {props.get(_OWNER)!r}, this one is {self._owner!r}): this index is a copy "
                "or a backup of it, or another directory took it over. Open it read-only, or give the copy its "
                "own collections with HybridIndex.rebuild(path, milvus_uri=...)"
            )
        try:
            done = int(props.get(_COMMITTED, -1))
        except (TypeError, ValueError):
            done = -1
        if done > self._gen:
            raise IndexFormatError(
                f"Milvus collection {self.collection!r} at {self.uri!r} holds commits up to store generation "
                f"{done}, this index directory only {self._gen}: it is an older copy (a backup) of the index that "
                "writes the collection. Open it read-only, or give it its own collections with "
                "HybridIndex.rebuild(path, milvus_uri=...)"
            )

    def add(self, slots: np.ndarray, data: Any, metadata: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Add rows ``data`` under ``slots``; ``metadata[i]`` (a JSON dict) is stored for filtering."""
        slots = as_slots(slots)
        rows = self._prepare_rows(data, slots.shape[0])
        n = slots.shape[0]
        if metadata is not None:
            if isinstance(metadata, Mapping) or len(metadata) != n:
                raise ValueError(f"metadata must be a list of {n} dicts (one per slot)")
            for i, m in enumerate(metadata):
                if not isinstance(m, Mapping):
                    raise TypeError(f"metadata[{i}] is {type(m).__name__}, expected a dict")
        if n == 0:
            return
        if np.unique(slots).shape[0] != n:
            raise ValueError("slots contain duplicates; each row needs its own slot")
        self._begin_write()
        live = self._present(slots)
        if live.shape[0]:
            raise ValueError(f"slots already present: {live[:10].tolist()}; remove them first")
        for s in range(0, n, _INSERT_BATCH):
            e = min(s + _INSERT_BATCH, n)
            batch = [
                {_PK: int(slots[i]), _GEN: self._next, **self._row_fields(rows[i]),
                 _META: dict(metadata[i]) if metadata is not None else {}}
                for i in range(s, e)
            ]
            self._client.insert(self.collection, batch)
        self._max_slot = max(self._max_slot, int(slots.max()))
        if self._count is not None:
            self._count += n
        self._added(rows)

    def remove(self, slots: np.ndarray) -> None:
        """Delete rows by slot; unknown slots are ignored.

        The rows disappear from this store at once; in Milvus they stay (readers of the
        committed state still need them) until the commit after the one that saves the
        removal purges them.
        """
        slots = np.unique(as_slots(slots))
        if slots.shape[0] == 0:
            return
        self._begin_write()
        gone = set(self._present(slots, visible=True).tolist()) - self._purge - self._removed
        self._removing(gone)
        self._removed |= gone
        if self._count is not None:   # kept, not recounted: a filtered count(*) reads every row
            self._count -= len(gone)

    def score(self, queries: Any, candidates: list[np.ndarray]) -> list[np.ndarray]:
        """Exact scores of ``candidates[i]`` (slots) for query ``i``; ``-inf`` for absent slots."""
        _, local = self._prepare_queries(queries)
        if len(candidates) != len(local):
            raise ValueError(f"got {len(local)} queries but {len(candidates)} candidate lists")
        cands = [as_slots(c, "candidates") for c in candidates]
        allc = np.unique(np.concatenate(cands)) if cands else np.zeros(0, np.int64)
        vecs = self._fetch(allc)
        for h in self._hidden() & vecs.keys():
            del vecs[h]
        out = []
        for q, cand in zip(local, cands):
            res = np.full(cand.shape[0], -np.inf, dtype=np.float32)
            ok = [i for i, s in enumerate(cand.tolist()) if s in vecs]
            if ok:
                res[ok] = self._rescore(q, [vecs[int(cand[i])] for i in ok])
            out.append(res)
        return out

    def export(self, slots: np.ndarray) -> Any:
        """The stored rows of visible ``slots``, in their order, as ``add`` takes them (dense:
        float32 ``(n, dim)``; sparse: a list of ``{term id: weight}``): to copy rows into
        another store (:meth:`hybridrag.index.HybridIndex.migrate`). ``KeyError`` names
        absent slots."""
        slots = as_slots(slots)
        got = self._fetch(slots)
        missing = [int(s) for s in slots.tolist() if int(s) not in got]
        if missing:
            raise KeyError(f"slots not in Milvus collection {self.collection!r}: {missing[:10]}")
        return self._exported([got[int(s)] for s in slots.tolist()])

    def _exported(self, vectors: list[Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fetch(self, slots: np.ndarray) -> dict[int, Any]:
        # By primary key alone, visibility checked here: Milvus Lite evaluated "gen <= g and
        # slot in [...]" over every row (42 ms for 60 slots of 20k rows, 4 ms by key alone).
        out: dict[int, Any] = {}
        top = self._visible_gen()
        for s in range(0, slots.shape[0], _ID_CHUNK):
            chunk = slots[s : s + _ID_CHUNK]
            res = self._client.query(self.collection, filter=f"{_PK} in {_slot_list(chunk)}",
                                     output_fields=[_PK, _GEN, *self._out_fields])
            for r in res:
                if int(r[_GEN]) <= top:
                    out[int(r[_PK])] = self._row_value(r)
        return out

    def search(
        self, queries: Any, k: int, allowed: np.ndarray | None = None, where: Mapping[str, Any] | str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, slots)`` of shape ``(nq, k)``, padded with ``-inf`` / ``-1``.

        ``allowed``: boolean mask by slot (length > the largest slot added), or None.
        ``where``: metadata filters (``filter_expression`` syntax) or a raw Milvus
        expression, applied in Milvus on top of ``allowed``.
        """
        k = check_k(k)
        if k > MAX_HITS:
            raise ValueError(f"k must be <= {MAX_HITS} (the largest Milvus search limit), got {k}")
        mq, local = self._prepare_queries(queries)
        allowed = check_allowed(allowed, self._max_slot + 1)
        hidden = [h for h in self._hidden() if h <= self._max_slot]
        if hidden:  # removed rows still in Milvus: filtered out like a mask
            allowed = np.ones(self._max_slot + 1, bool) if allowed is None else allowed.copy()
            allowed[hidden] = False
        nq = len(local)
        out_s, out_i = empty_results(nq, k)
        if where is None or where == "":
            base = ""
        elif isinstance(where, str):
            base = f"({where})"
        else:
            expr = filter_expression(where)
            base = f"({expr})" if expr else ""
        live_q = [i for i in range(nq) if mq[i] is not None]
        if nq == 0 or k == 0 or not live_q or self._max_slot < 0:
            return out_s, out_i
        exprs: list[str] | None = [base]
        post: np.ndarray | None = None
        if allowed is not None:
            mask = allowed[: self._max_slot + 1]
            ok = np.flatnonzero(mask)
            if ok.shape[0] == 0:
                return out_s, out_i
            bad = np.flatnonzero(~mask)
            if ok.shape[0] <= self.max_filter_ids:
                exprs = [self._and(base, f"{_PK} in {_slot_list(ok)}")]
            elif bad.shape[0] <= self.max_filter_ids:
                exprs = [self._and(base, f"{_PK} not in {_slot_list(bad)}") if bad.shape[0] else base]
            else:
                post = mask
                exprs = None
        for qi in live_q:
            if exprs is not None:
                hits = self._merged(mq[qi], local[qi], k, exprs)
            else:
                hits = self._post_filtered(mq[qi], local[qi], k, base, post)
            for j, (sc, sl) in enumerate(hits[:k]):
                out_s[qi, j] = sc
                out_i[qi, j] = sl
        return out_s, out_i

    @staticmethod
    def _and(a: str, b: str) -> str:
        return f"{a} and {b}" if a and b else a or b

    def _merged(self, mq: Any, q: Any, k: int, exprs: list[str]) -> list[tuple[float, int]]:
        hits: list[tuple[float, int]] = []
        for expr in exprs:
            hits += self._exact_topk(mq, q, k, expr, None)
        hits = _by_rank(hits)
        return hits[:k]

    def _post_filtered(self, mq: Any, q: Any, k: int, base: str, mask: np.ndarray) -> list[tuple[float, int]]:
        """Search with a growing limit, keeping allowed hits; chunked in-lists past MAX_HITS."""
        frac = max(float(mask.mean()), 1e-6)
        limit = min(MAX_HITS, max(k + _TIE_MARGIN, int(math.ceil((k + _TIE_MARGIN) / frac * 1.5))))
        while True:
            hits, exhausted, safe = self._raw(mq, q, limit, base, mask, k)
            if safe or exhausted:
                return hits
            if limit >= MAX_HITS:
                break
            limit = min(MAX_HITS, limit * 4)
        ok = np.flatnonzero(mask)
        exprs = [self._and(base, f"{_PK} in {_slot_list(ok[s : s + _ID_CHUNK])}") for s in range(0, ok.shape[0], _ID_CHUNK)]
        return self._merged(mq, q, k, exprs)

    def _exact_topk(self, mq: Any, q: Any, k: int, expr: str, mask: np.ndarray | None) -> list[tuple[float, int]]:
        """Top-k under ``expr`` with exact scores and ties to the smaller slot."""
        limit = min(MAX_HITS, k + _TIE_MARGIN)
        while True:
            hits, exhausted, safe = self._raw(mq, q, limit, expr, mask, k)
            if safe or exhausted or limit >= MAX_HITS:
                return hits
            limit = min(MAX_HITS, limit * 4)

    def _raw(
        self, mq: Any, q: Any, limit: int, expr: str, mask: np.ndarray | None, k: int
    ) -> tuple[list[tuple[float, int]], bool, bool]:
        """One Milvus search; returns (sorted exact hits, Milvus ran out of rows, top-k is settled)."""
        res = self._client.search(
            self.collection, data=[mq], anns_field=_VEC, limit=limit, filter=self._and(self._visible(), expr),
            output_fields=list(self._out_fields),
            search_params={"metric_type": "IP", "params": dict(self.search_params)},
        )[0]
        exhausted = len(res) < limit
        slots = [int(h[_PK]) if _PK in h else int(h["id"]) for h in res]
        dist = [float(h["distance"]) for h in res]
        vecs = [self._row_value(h["entity"]) for h in res]
        scores = self._rescore(q, vecs) if vecs else np.zeros(0, np.float32)
        # a dense hit is any live row, whatever its score (as FAISS's); a term store's is a row
        # with a nonzero score (one sharing no term with the query scores 0 and is no hit)
        hits = [(float(s), sl) for s, sl in zip(scores, slots) if s != 0 or not self._zero_is_miss]
        if mask is not None:
            hits = [h for h in hits if h[1] < mask.shape[0] and mask[h[1]]]
        hits = _by_rank(hits)
        if exhausted:
            return hits, True, True
        if len(hits) < k:
            return hits, False, False
        # Rows not fetched score (by Milvus) at most min(dist); allow for rounding differences.
        floor = self._unseen_bound(min(dist))
        kth = hits[k - 1][0]
        safe = kth > floor + 1e-5 * max(1.0, abs(floor))
        return hits, False, safe

    _zero_is_miss = False

    # ------------------------------------------------------------------ persistence

    def _file_name(self, tag: str) -> str:
        return f"milvus-{self._kind}-{tag}.json"

    def save(self, directory: Path, tag: str) -> dict[str, str]:
        """Flush, then write the NEW file ``milvus-<kind>-<tag>.json``; returns ``{"milvus": name}``.

        Called by the writer (under the index's write lock) before it swaps the manifest:
        the file names the store generation whose rows it makes visible and the rows
        removed since the last commit. Rows removed by the last commit are purged from
        Milvus first (that commit is on disk, so no committed state needs them any more).
        """
        if not isinstance(tag, str) or not tag or "/" in tag or "\\" in tag:
            raise ValueError(f"tag must be a non-empty file-name-safe str, got {tag!r}")
        directory = Path(directory)
        name = self._file_name(tag)
        if (directory / name).exists():
            raise FileExistsError(f"{directory / name} already exists; save with a new tag")
        self._begin_write()
        self._check_not_stale()   # a copy may have committed since this writer began
        self._delete_slots(np.array(sorted(self._purge), dtype=np.int64))
        self._purge = set()
        self._client.flush(self.collection)
        if self._count is None:
            # Kept by add / remove otherwise: Milvus Lite evaluates the filtered count(*) over every
            # row, most of a commit's time on a large collection (benchmarks/probe_milvus_colbert_load.py)
            self._count = self._visible_count()
        uri = self.uri
        if not _is_server(uri):
            path = Path(uri).expanduser().resolve()
            try:
                uri = str(path.relative_to(directory.resolve()))
            except ValueError:
                uri = str(path)
        gen = self._next
        doc = {
            "format_version": FORMAT_VERSION, "kind": self._kind, "collection": self.collection, "uri": uri,
            "rows": self._count, "max_slot": self._max_slot, "generation": gen,
            "removed": sorted(self._removed), "config": self.config(), **self._record(),
        }

        def _w(path: Path) -> None:
            path.write_text(json.dumps(doc, indent=1, sort_keys=True), encoding="utf-8")

        new_file(directory, name, _w)
        self._saved = (gen, set(self._removed))
        self._next = gen + 1  # later writes are not part of this save
        return {"milvus": name}

    def committed(self) -> None:
        """The manifest naming the last ``save`` is on disk: its generation is now the
        committed one, and the rows it removed may be purged by the next ``save``."""
        if self._saved is None:
            return
        self._gen, removed = self._saved
        self._purge = removed
        self._removed -= removed
        self._saved = None
        try:
            # Advisory (the manifest is the commit point): a property left behind by a failure
            # here only weakens the check on older copies until the next commit sets it.
            self._client.alter_collection_properties(self.collection, properties={_COMMITTED: str(self._gen)})
        except Exception as exc:  # noqa: BLE001 - any client error: the commit stands
            logger.debug("could not record commit %d on Milvus collection %r: %s", self._gen, self.collection, exc)

    @classmethod
    def load(cls, directory: Path, files: dict[str, str], config: dict) -> Self:
        """Open the committed state ``save`` recorded, read-only until the first write.

        Milvus is not changed: rows written after that save (a live writer's work in
        progress, or a dead writer's leftovers) stay invisible, and are deleted only by
        the next writer's first write. The connection comes from the caller, never from
        the file alone (:func:`resolve_connection`): ``config["uri"]`` / ``config["token"]``
        or ``$HYBRIDRAG_MILVUS_URI`` / ``$MILVUS_TOKEN``; without them only a Milvus Lite
        file inside ``directory`` is opened. Raises :class:`IndexFormatError` when the
        collection is missing or does not hold the saved rows.
        """
        directory = Path(directory)
        if "milvus" not in files:
            raise IndexFormatError(f"Milvus store files have no 'milvus' entry: {sorted(files)}")
        path = directory / files["milvus"]
        if not path.is_file():
            raise IndexFormatError(f"missing Milvus store file {path}")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise IndexFormatError(f"cannot read Milvus store file {path}: {exc}") from exc
        return cls.from_record(doc, directory, config, source=str(path))

    @classmethod
    def from_record(cls, doc: Any, directory: Path, config: dict, source: str = "record") -> Self:
        """Open the committed state described by ``doc`` (what ``save`` wrote; a query node
        reads it from the index's head collection), as :meth:`load` does; ``directory`` is the
        index directory, or the query node's for ``HybridIndex.attach``."""
        directory, path = Path(directory), source
        try:
            version, kind, coll = doc["format_version"], doc["kind"], doc["collection"]
        except (KeyError, TypeError) as exc:
            raise IndexFormatError(f"cannot read Milvus store file {path}: {exc}") from exc
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise IndexFormatError(f"Milvus store format {version} is newer than this library reads "
                                   f"({FORMAT_VERSION}); upgrade hybridrag")
        if version < FORMAT_VERSION:
            raise IndexFormatError(f"{path}: Milvus store format {version} has no commit generations; "
                                   "re-create its collections with `hybridrag rebuild`")
        if kind != cls._kind:
            raise IndexFormatError(f"{path} describes a Milvus {kind} store, not {cls._kind}")
        try:
            rows, max_slot, gen = int(doc["rows"]), int(doc["max_slot"]), int(doc["generation"])
            removed = {int(x) for x in doc["removed"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexFormatError(f"cannot read Milvus store file {path}: {exc}") from exc
        uri, token, private = resolve_connection(doc.get("uri"), directory, config.get("uri"), config.get("token"))
        kw = {key: v for key, v in {**doc.get("config", {}), **config}.items() if key in cls._params}
        kw.update(uri=uri, collection=coll, token=token, owner=directory_owner(directory))
        try:
            store = cls(**kw, _attach=True)
        except TypeError as exc:
            raise IndexFormatError(f"bad {cls.__name__} config {config!r}: {exc}") from exc
        store._max_slot, store._gen, store._next, store._purge = max_slot, gen, gen + 1, removed
        store._private = private
        store._restore(doc, path)
        store._count = store._count_at_load(rows, gen)
        if store._count != rows:
            raise IndexFormatError(
                f"Milvus collection {coll!r} at {uri!r} holds {store._count} rows of generation {gen} but the index "
                f"recorded {rows}; it was changed after this index was committed (purged by a newer commit of "
                "the index this one was copied from, or changed outside hybridrag)"
            )
        return store

    def collections(self) -> list[str]:
        """The Milvus collections this store keeps its rows in."""
        return [self.collection]

    def describe(self) -> dict[str, Any]:
        """What this store holds in Milvus, for ``stats()`` / ``hybridrag info``: the collection,
        where it is (a server URI, or the Lite file's name), the rows this store sees, every row
        the collection holds (also others' uncommitted rows and removed rows not yet purged),
        and the bytes of their vectors where the row size is fixed (dense: 4 per dimension)."""
        stored = self._live_count()
        width = getattr(self, "dim", None)
        return {"collection": self.collection, "where": self.uri if _is_server(self.uri) else Path(self.uri).name,
                "rows": len(self), "rows_stored": stored,
                "vector_bytes": None if width is None else stored * int(width) * 4,
                "disk_bytes": lite_bytes(self.uri, self.collections())}

    def connection(self) -> dict[str, str]:
        """``{"uri", "token"}`` to reopen this store's Milvus (``{}`` for a private Lite file)."""
        if self._private or (self._owner is None and not _is_server(self.uri)):
            return {}
        return {"uri": self.uri, **({"token": self._token} if self._token else {})}

    def drop_collections(self, names: Sequence[str]) -> list[str]:
        """Drop the named collections of this Milvus that this index directory owns (its
        collections before a ``create(overwrite=True)`` or a rebuild); returns those dropped."""
        out = []
        for name in names:
            if name == self.collection or not self._client.has_collection(name):
                continue
            if self._owns(name):
                self._client.drop_collection(name)
                out.append(name)
        return out

    def _owns(self, name: str) -> bool:
        """Whether collection ``name`` of this Milvus is this index directory's (its owner
        property, or any collection of a Lite file inside the directory)."""
        props = self._client.describe_collection(name).get("properties") or {}
        return self._private or (self._owner is not None and props.get(_OWNER) == self._owner)

    def drop(self) -> None:
        """Drop this store's collection (a new index whose first commit failed: no manifest
        names it)."""
        self._client.drop_collection(self.collection)

    _params: tuple[str, ...] = ()

    def config(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Close the Milvus connection (the data stays in Milvus)."""
        self._client.close()


# --------------------------------------------------------------------------- dense


class MilvusDenseStore(_MilvusStore):
    """Dense vectors (float32 ``(n, dim)``) in a Milvus ``FLOAT_VECTOR`` field, metric IP.

    Args:
        dim: vector dimension.
        uri: Milvus Lite ``.db`` file path, or ``http(s)://host:port`` of a server.
        token: server token (``"user:password"`` or an API key); never persisted.
        collection: collection name (created when missing).
        index_type: one of ``DENSE_INDEX_TYPES``; ``FLAT`` (default) is exact, the others
            are approximate (hits are still re-scored exactly).
        index_params: build parameters of the index (e.g. ``{"M": 16}`` for HNSW).
        search_params: search parameters (e.g. ``{"ef": 128}`` or ``{"nprobe": 16}``).
        max_filter_ids: largest ``allowed`` set sent to Milvus as an id list.
        overwrite: drop an existing non-empty collection of that name instead of raising.
        owner: recorded in a new collection's properties (``directory_owner`` of the index
            that writes it); a store loaded with another owner refuses to write. Not persisted.
    """

    _kind = "dense"
    _index_types = DENSE_INDEX_TYPES
    _params = ("dim", "uri", "collection", "index_type", "index_params", "search_params", "max_filter_ids")

    def __init__(
        self,
        dim: int,
        uri: str = "milvus.db",
        token: str | None = None,
        collection: str = "hybridrag_dense",
        index_type: str = "FLAT",
        index_params: dict[str, Any] | None = None,
        search_params: dict[str, Any] | None = None,
        max_filter_ids: int = 16384,
        overwrite: bool = False,
        owner: str | None = None,
        _attach: bool = False,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ConfigError(f"dim must be an int >= 1, got {dim!r}")
        self.dim = int(dim)
        super().__init__(uri, token, collection, index_type, index_params, search_params, max_filter_ids,
                         overwrite, owner, _attach)

    def _vector_field(self, schema: Any) -> None:
        schema.add_field(_VEC, DataType.FLOAT_VECTOR, dim=self.dim)

    def _expected_vector(self) -> tuple[Any, dict[str, Any]]:
        return DataType.FLOAT_VECTOR, {"dim": self.dim}

    def _prepare_rows(self, data: Any, n: int) -> list[Any]:
        vecs = as_matrix(data, self.dim, "vectors")
        if vecs.shape[0] != n:
            raise ValueError(f"got {n} slots but {vecs.shape[0]} vectors")
        return list(vecs)

    def _prepare_queries(self, queries: Any) -> tuple[list[Any], list[Any]]:
        q = as_matrix(queries, self.dim)
        return list(q), list(q)

    def _exported(self, vectors: list[Any]) -> Any:
        return np.asarray(vectors, dtype=np.float32).reshape(len(vectors), self.dim)

    def _rescore(self, q: Any, vectors: list[Any]) -> np.ndarray:
        v = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), self.dim)
        return (v.astype(np.float64) @ np.asarray(q, dtype=np.float64)).astype(np.float32)

    def config(self) -> dict:
        """Settings persisted with the index; ``MilvusDenseStore(**config())`` opens an empty store."""
        return {"dim": self.dim, "uri": self.uri, "collection": self.collection, "index_type": self.index_type,
                "index_params": self.index_params, "search_params": self.search_params,
                "max_filter_ids": self.max_filter_ids}


# --------------------------------------------------------------------------- sparse


class MilvusSparseStore(_MilvusStore):
    """Sparse vectors (``{term id: weight >= 0}``) in a ``SPARSE_FLOAT_VECTOR`` field, metric IP.

    Term ids must be ``< PLACEHOLDER_TERM``. Scores are dot products (``SparseIndex``
    with ``weighting="none"``); a row sharing no term with the query is not a hit.
    Args as :class:`MilvusDenseStore` (no ``dim``; ``index_type`` one of
    ``SPARSE_INDEX_TYPES``; ``drop_ratio_build`` / ``drop_ratio_search`` default to 0 so
    search is exact).
    """

    _kind = "sparse"
    _index_types = SPARSE_INDEX_TYPES
    _zero_is_miss = True
    _params = ("uri", "collection", "index_type", "index_params", "search_params", "max_filter_ids")

    def __init__(
        self,
        uri: str = "milvus.db",
        token: str | None = None,
        collection: str = "hybridrag_sparse",
        index_type: str = "SPARSE_INVERTED_INDEX",
        index_params: dict[str, Any] | None = None,
        search_params: dict[str, Any] | None = None,
        max_filter_ids: int = 16384,
        overwrite: bool = False,
        owner: str | None = None,
        _attach: bool = False,
    ) -> None:
        super().__init__(uri, token, collection, index_type, index_params, search_params, max_filter_ids,
                         overwrite, owner, _attach)
        self.search_params.setdefault("drop_ratio_search", 0.0)

    def _vector_field(self, schema: Any) -> None:
        schema.add_field(_VEC, DataType.SPARSE_FLOAT_VECTOR)

    def _expected_vector(self) -> tuple[Any, dict[str, Any]]:
        return DataType.SPARSE_FLOAT_VECTOR, {}

    def _build_params(self) -> dict[str, Any]:
        return {"drop_ratio_build": 0.0, **self.index_params}

    @staticmethod
    def _split(rows: Any, what: str) -> tuple[list[dict[int, float]], int]:
        rid, terms, vals, n = _rows_to_coo(rows, what)
        if len(vals) and vals.min() < 0:
            raise ValueError(f"{what}: Milvus sparse weights must be >= 0, got {float(vals.min())}")
        out: list[dict[int, float]] = [{} for _ in range(n)]
        for r, t, v in zip(rid.tolist(), terms.tolist(), vals.tolist()):
            if v != 0:  # a dict has unique keys, and scipy input was summed by _rows_to_coo
                out[r][t] = v
        return out, n

    def _prepare_rows(self, data: Any, n: int) -> list[Any]:
        rows, m = self._split(data, "rows")
        if m != n:
            raise ValueError(f"got {n} slots for {m} rows; pass one slot per row")
        for i, r in enumerate(rows):
            if r and max(r) >= PLACEHOLDER_TERM:
                raise ValueError(f"rows[{i}]: term id {max(r)} is too large; Milvus term ids must be < {PLACEHOLDER_TERM}")
            if not r:
                rows[i] = {PLACEHOLDER_TERM: 1.0}
        return rows

    def _prepare_queries(self, queries: Any) -> tuple[list[Any], list[Any]]:
        rows, _ = self._split(queries, "queries")
        local = [{t: v for t, v in r.items() if t < PLACEHOLDER_TERM} for r in rows]
        return [r if r else None for r in local], local

    def _exported(self, vectors: list[Any]) -> Any:
        out: list[dict[int, float]] = []
        for v in vectors:
            row = {int(t): float(w) for t, w in dict(v).items() if int(t) != PLACEHOLDER_TERM}
            out.append(row)
        return out

    def _rescore(self, q: Any, vectors: list[Any]) -> np.ndarray:
        out = np.zeros(len(vectors), dtype=np.float64)
        items = [(t, np.float64(np.float32(w))) for t, w in q.items()]
        for i, v in enumerate(vectors):
            out[i] = sum(w * np.float64(v[t]) for t, w in items if t in v)
        return out.astype(np.float32)

    def config(self) -> dict:
        """Settings persisted with the index; ``MilvusSparseStore(**config())`` opens an empty store."""
        return {"uri": self.uri, "collection": self.collection, "index_type": self.index_type,
                "index_params": self.index_params, "search_params": self.search_params,
                "max_filter_ids": self.max_filter_ids}


# --------------------------------------------------------------------------- colbert


#: Bits of a token collection key below the slot: ``key = slot << 16 | row``.
_ROW_BITS = 16
_KEY = "key"
_ROW = "row"     # the row's number within its chunk (0: the chunk's first row)
_NTOK = "n"      # token vectors in the row (the last row of a chunk may hold fewer)
_NROWS = "nrows"  # rows of the chunk (on each of them): a reader asks for the rest by key
_COLBERT_ENCODINGS = ("fp16", "fp32")


class _RowsStore(_MilvusStore):
    """A store whose slot may take several rows: primary key ``slot << _bits | row``, the row's
    number in field ``_row_field`` (0: the first) and the slot's row count in ``_n_field`` (on the
    first row at least). Read and deleted by key lists only (Milvus Lite answers ``key in [...]``
    from its primary-key index and evaluates other filters over every row); a slot counts once,
    by its first row."""

    _bits = _ROW_BITS
    _row_field = _ROW
    _n_field = _NROWS

    def _count_filter(self) -> str:
        return f"{self._row_field} == 0 and {self._visible()}"

    def _by_keys(self, keys: np.ndarray, fields: list[str]) -> list[dict[str, Any]]:
        """The rows of ``keys`` (by primary key only)."""
        out: list[dict[str, Any]] = []
        for s in range(0, keys.shape[0], _ID_CHUNK):
            out += list(self._client.query(self.collection, filter=f"{_KEY} in {_slot_list(keys[s : s + _ID_CHUNK])}",
                                           output_fields=fields))
        return out

    def _present(self, slots: np.ndarray, visible: bool = False) -> np.ndarray:
        """The slots among ``slots`` that are stored (their first rows, by key)."""
        top = self._visible_gen()
        res = self._by_keys(np.unique(slots) << self._bits, [_KEY, _GEN])
        return np.array(sorted(int(r[_KEY]) >> self._bits for r in res if not visible or int(r[_GEN]) <= top),
                        dtype=np.int64)

    def _create_unsearched(self, schema: Any) -> None:
        """Create the collection with ``schema``: a ``FLAT`` index on its vector field (Milvus
        needs one to load a collection; these collections are read by key, never searched)."""
        ip = self._client.prepare_index_params()
        ip.add_index(field_name=_VEC, index_type="FLAT", metric_type="IP", params={})
        props = {_OWNER: self._owner} if self._owner else {}
        self._client.create_collection(self.collection, schema=schema, index_params=ip, consistency_level="Strong",
                                       properties=props)
        self._check_collection()
        self._count = 0

    def _checked_slots(self, slots: Any, data: Sequence[Any], what: str) -> np.ndarray:
        """``slots`` as int64, checked against ``data`` (one entry each) and the key layout."""
        slots = as_slots(slots)
        n = slots.shape[0]
        if len(data) != n:
            raise ValueError(f"got {n} slots but {len(data)} {what}")
        if n and np.unique(slots).shape[0] != n:
            raise ValueError("slots contain duplicates")
        if n and int(slots.max()) >= 1 << (63 - self._bits):
            raise ValueError(f"slot {int(slots.max())} is too large for the keys of {self._kind} collection")
        return slots

    def _delete_slots(self, slots: np.ndarray) -> None:
        """Delete every row of ``slots``: their keys from the first rows' counts."""
        first = self._by_keys(np.unique(slots) << self._bits, [_KEY, self._n_field])
        keys = np.array([int(r[_KEY]) + i for r in first for i in range(int(r[self._n_field]))], dtype=np.int64)
        for s in range(0, keys.shape[0], _ID_CHUNK):
            self._client.delete(self.collection, filter=f"{_KEY} in {_slot_list(keys[s : s + _ID_CHUNK])}")


class MilvusColbertStore(_RowsStore):
    """ColBERT token vectors in a Milvus collection, scored by MaxSim on the client.

    Milvus (Lite 3.2.2, and servers before 2.6) has no list-of-vectors field, so a chunk is
    stored as rows of ``tokens_per_row`` token vectors each (one ``FLOAT_VECTOR`` of
    ``tokens_per_row * dim``; the chunk's last row zero-padded), primary key
    ``key = slot << 16 | row``, with ``row`` (0 = the chunk's first) and ``n`` (tokens in the
    row) and ``nrows`` (the chunk's rows). ColBERT only rescores candidates, so the collection
    is never searched: its vector index is ``FLAT`` (Milvus needs one to load a collection).
    ``score`` fetches the candidates' rows by key lists only, in two queries: the first rows
    (``slot << 16``), which say how many rows each chunk has, then the others. Milvus Lite
    answers ``key in [...]`` from its primary-key index and evaluates any other filter (key
    ranges too) over every row of the collection (docs/MILVUS.md, "The ColBERT token
    collection", has the measurements).

    Scores equal :class:`~hybridrag.stores.multivector.MultiVectorStore` with the same
    ``encoding`` (``fp16``, default: values rounded to float16 before they are stored as
    float32, as the local store keeps them; or ``fp32``), same rows, same MaxSim code.
    ``int8`` and ``pq`` are local-store encodings only (``ConfigError``).

    Commit protocol, ownership, ``save`` / ``load`` / ``committed``: as
    :class:`MilvusDenseStore` (rows carry ``gen``; visibility is checked on the client).

    Args:
        dim: token vector dimension.
        encoding: ``"fp16"`` or ``"fp32"``.
        tokens_per_row: token vectors per Milvus row (``tokens_per_row * dim <= 32768``, Milvus's
            largest vector); more per row means fewer rows to fetch, and more padding.
        uri, token, collection, overwrite, owner: as :class:`MilvusDenseStore`.
    """

    _kind = "colbert"
    _index_types = ("FLAT",)
    _params = ("dim", "encoding", "tokens_per_row", "uri", "collection")

    def __init__(
        self,
        dim: int,
        encoding: str = "fp16",
        tokens_per_row: int = 8,
        uri: str = "milvus.db",
        token: str | None = None,
        collection: str = "hybridrag_colbert",
        overwrite: bool = False,
        owner: str | None = None,
        _attach: bool = False,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ConfigError(f"dim must be an int >= 1, got {dim!r}")
        if encoding not in _COLBERT_ENCODINGS:
            raise ConfigError(f"the Milvus ColBERT store keeps encoding 'fp16' or 'fp32', got {encoding!r} "
                              "(int8 and pq are encodings of the local store: [colbert] backend = \"multivector\")")
        if (isinstance(tokens_per_row, bool) or not isinstance(tokens_per_row, (int, np.integer))
                or tokens_per_row < 1 or tokens_per_row * dim > 32768):
            raise ConfigError(f"tokens_per_row must be an int >= 1 with tokens_per_row * dim <= 32768 "
                              f"(dim {dim}), got {tokens_per_row!r}")
        self.dim = int(dim)
        self.encoding = encoding
        self.tokens_per_row = int(tokens_per_row)
        super().__init__(uri, token, collection, "FLAT", None, None, 16384, overwrite, owner, _attach)

    # ------------------------------------------------------------------ schema

    def _create(self) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(_KEY, DataType.INT64, is_primary=True)
        schema.add_field(_GEN, DataType.INT64)
        schema.add_field(_ROW, DataType.INT64)
        schema.add_field(_NTOK, DataType.INT64)
        schema.add_field(_NROWS, DataType.INT64)
        schema.add_field(_VEC, DataType.FLOAT_VECTOR, dim=self.tokens_per_row * self.dim)
        self._create_unsearched(schema)

    def _expected_vector(self) -> tuple[Any, dict[str, Any]]:
        return DataType.FLOAT_VECTOR, {"dim": self.tokens_per_row * self.dim}

    def _check_collection(self) -> None:
        desc = self._client.describe_collection(self.collection)
        fields = {f["name"]: f for f in desc.get("fields", [])}
        key, vec = fields.get(_KEY), fields.get(_VEC)
        ints = all(fields.get(f, {}).get("type") == DataType.INT64 for f in (_GEN, _ROW, _NTOK, _NROWS))
        if key is None or not key.get("is_primary") or key.get("type") != DataType.INT64 or vec is None \
                or vec.get("type") != DataType.FLOAT_VECTOR or not ints:
            raise IndexFormatError(
                f"Milvus collection {self.collection!r} does not have the colbert schema ({_KEY} INT64 primary "
                f"key, {_GEN} / {_ROW} / {_NTOK} / {_NROWS} INT64, {_VEC} FLOAT_VECTOR); fields: {sorted(fields)}")
        got = vec.get("params", {}).get("dim")
        if got is not None and int(got) != self.tokens_per_row * self.dim:
            raise IndexFormatError(f"Milvus collection {self.collection!r} has {_VEC} dim={got}, expected "
                                   f"{self.tokens_per_row} tokens x {self.dim}")
        indexes = self._client.list_indexes(self.collection, field_name=_VEC)
        if not indexes:
            raise ConfigError(f"Milvus collection {self.collection!r} has no index on {_VEC!r}")
        info = self._client.describe_index(self.collection, index_name=indexes[0])
        if str(info.get("index_type", "")).upper() != "FLAT" or str(info.get("state", "Finished")) == "Failed":
            raise ConfigError(f"Milvus collection {self.collection!r} has index {info.get('index_type')!r} "
                              f"(state {info.get('state')!r}); expected FLAT")

    # ------------------------------------------------------------------ rows

    def _tokens(self, x: Any, what: str) -> np.ndarray:
        m = as_matrix(x, self.dim, what)
        if self.encoding == "fp16":
            if m.size and float(np.abs(m).max()) > float(np.finfo(np.float16).max):
                raise ValueError(f"{what}: token values exceed the float16 range; use encoding='fp32'")
            m = m.astype(np.float16).astype(np.float32)
        return m

    def add(self, slots: np.ndarray, data: Sequence[np.ndarray]) -> None:  # type: ignore[override]
        """Add one ``(n_tokens_i, dim)`` array per slot (``1 <= n_tokens_i < 65536 * tokens_per_row``)."""
        slots = self._checked_slots(slots, data, "token arrays")
        n = slots.shape[0]
        if n == 0:
            return
        mats = []
        P = self.tokens_per_row
        for slot, x in zip(slots.tolist(), data):
            m = self._tokens(x, f"token vectors of slot {slot}")
            if m.shape[0] == 0:
                raise ValueError(f"slot {slot} has no token vectors; every chunk needs >= 1")
            if m.shape[0] > P << _ROW_BITS:
                raise ValueError(f"slot {slot} has {m.shape[0]} token vectors; at most {P << _ROW_BITS}")
            mats.append(m)
        self._begin_write()
        live = self._present(slots)
        if live.shape[0]:
            raise ValueError(f"slots already present: {live[:10].tolist()}; remove them first")
        batch: list[dict[str, Any]] = []
        width = P * self.dim
        for slot, m in zip(slots.tolist(), mats):
            nrows = -(-m.shape[0] // P)
            for r, a in enumerate(range(0, m.shape[0], P)):
                part = m[a : a + P]
                vec = part.ravel()
                if part.shape[0] < P:
                    vec = np.concatenate([vec, np.zeros(width - vec.shape[0], np.float32)])
                batch.append({_KEY: (slot << _ROW_BITS) | r, _GEN: self._next, _ROW: r,
                              _NTOK: part.shape[0], _NROWS: nrows, _VEC: vec})
                if len(batch) >= _INSERT_BATCH:
                    self._client.insert(self.collection, batch)
                    batch = []
        if batch:
            self._client.insert(self.collection, batch)
        self._max_slot = max(self._max_slot, int(slots.max()))
        if self._count is not None:
            self._count += n

    def _fetch(self, slots: np.ndarray) -> dict[int, np.ndarray]:  # type: ignore[override]
        """``{slot: float32 (n_tokens, dim)}`` of the visible chunks among ``slots``: their first
        rows by key, then their other rows by key (the generation is checked here, as in the
        other stores)."""
        top = self._visible_gen()
        P, d = self.tokens_per_row, self.dim
        fields = [_KEY, _GEN, _NTOK, _NROWS, _VEC]
        first = [r for r in self._by_keys(np.unique(slots) << _ROW_BITS, fields) if int(r[_GEN]) <= top]
        more = np.array([int(r[_KEY]) + i for r in first for i in range(1, int(r[_NROWS]))], dtype=np.int64)
        res = first + ([r for r in self._by_keys(more, fields) if int(r[_GEN]) <= top] if more.shape[0] else [])
        out: dict[int, np.ndarray] = {}
        if not res:
            return out
        keys = np.array([int(r[_KEY]) for r in res], dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        vecs = np.asarray([res[i][_VEC] for i in order.tolist()], dtype=np.float32).reshape(-1, P, d)
        ntok = np.array([int(res[i][_NTOK]) for i in order.tolist()], dtype=np.int64)
        nrows = np.array([int(res[i][_NROWS]) for i in order.tolist()], dtype=np.int64)
        owner = keys >> _ROW_BITS
        bounds = np.flatnonzero(np.diff(owner)) + 1
        for a, b in zip(np.concatenate(([0], bounds)).tolist(), np.concatenate((bounds, [keys.shape[0]])).tolist()):
            rows = keys[a:b] & ((1 << _ROW_BITS) - 1)
            if b - a != nrows[a] or not np.array_equal(rows, np.arange(b - a)) \
                    or ntok[a : b - 1].min(initial=P) < P:
                continue   # not whole (rows deleted outside hybridrag): absent, as a damaged local chunk
            out[int(owner[a])] = np.concatenate([vecs[i, : ntok[i]] for i in range(a, b)])
        return out

    def _prepare_queries(self, queries: Any) -> tuple[list[Any], list[Any]]:
        """Each query's ``[tq, dim]`` token vectors (``score`` is the base class's: MaxSim of each
        query against its candidates, as :meth:`MultiVectorStore.score`; ``-inf`` for absent slots)."""
        qs = []
        for i, q in enumerate(queries):
            m = as_matrix(q, self.dim, f"queries[{i}]")
            if m.shape[0] == 0:
                raise ValueError(f"queries[{i}] has no token vectors")
            qs.append(m)
        return qs, qs

    def _rescore(self, q: Any, mats: list[Any]) -> np.ndarray:
        lens = np.array([m.shape[0] for m in mats], dtype=np.int64)
        sim = np.concatenate(mats) @ q.T                 # (tokens, tq), as the local store
        res = (np.maximum.reduceat(sim, np.cumsum(lens) - lens, axis=0).sum(axis=1) / q.shape[0]).astype(np.float32)
        res[~np.isfinite(res)] = -np.inf
        return res

    def search(self, queries: Sequence[np.ndarray], k: int, allowed: np.ndarray | None = None,  # type: ignore[override]
               where: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force MaxSim top-``k`` over every visible chunk (as ``MultiVectorStore.search``;
        the engine only calls :meth:`score`: ColBERT is not a first stage)."""
        k = check_k(k)
        allowed = check_allowed(allowed, self._max_slot + 1)
        if where not in (None, ""):
            raise ValueError("the ColBERT token collection holds no metadata to filter on")
        nq = len(queries)
        res = self._client.query(self.collection, filter=self._count_filter(), output_fields=[_KEY])
        live = np.unique(np.array([int(r[_KEY]) >> _ROW_BITS for r in res], dtype=np.int64))
        hidden = self._hidden()
        live = np.array([s for s in live.tolist() if s not in hidden], dtype=np.int64)
        if allowed is not None:
            live = live[live < allowed.shape[0]]
            live = live[allowed[live]]
        if nq == 0 or k == 0 or live.shape[0] == 0:
            [as_matrix(q, self.dim, f"queries[{i}]") for i, q in enumerate(queries)]
            return empty_results(nq, k)
        scores = np.stack(self.score(queries, [live] * nq))
        return topk(scores, live, k)

    def export(self, slots: np.ndarray) -> list[np.ndarray]:  # type: ignore[override]
        """The stored token vectors of visible ``slots``, in their order, as float32
        ``(n_tokens, dim)`` arrays (as ``add`` takes them); ``KeyError`` names absent slots."""
        slots = as_slots(slots)
        got = self._fetch(slots)
        hidden = self._hidden()
        missing = [int(s) for s in slots.tolist() if int(s) not in got or int(s) in hidden]
        if missing:
            raise KeyError(f"slots not in Milvus collection {self.collection!r}: {missing[:10]}")
        return [got[int(s)] for s in slots.tolist()]

    def describe(self) -> dict[str, Any]:
        """As the other Milvus stores; ``rows`` are chunks, ``rows_stored`` Milvus rows (of
        ``tokens_per_row`` tokens each, the chunks' removed and uncommitted ones too)."""
        stored = self._live_count()
        return {"collection": self.collection, "where": self.uri if _is_server(self.uri) else Path(self.uri).name,
                "rows": len(self), "rows_stored": stored,
                "vector_bytes": stored * self.tokens_per_row * self.dim * 4,
                "disk_bytes": lite_bytes(self.uri, [self.collection])}

    def config(self) -> dict:
        """Settings persisted with the index; ``MilvusColbertStore(**config())`` opens an empty store."""
        return {"dim": self.dim, "encoding": self.encoding, "tokens_per_row": self.tokens_per_row,
                "uri": self.uri, "collection": self.collection}


# --------------------------------------------------------------------------- factory


def milvus_stores(cfg: Mapping[str, Any] | Any, dim: int | None, index_dir: Path, *, uri: str | None = None,
                  token: str | None = None, from_index: bool = False,
                  modes: Sequence[str] = ("dense", "sparse"), colbert_dim: int | None = None,
                  colbert_encoding: str = "fp16", bm25: Mapping[str, Any] | None = None) -> dict[str, _MilvusStore]:
    """``{"dense": MilvusDenseStore, "sparse": MilvusSparseStore, "colbert": MilvusColbertStore}``
    (those of ``modes``) on NEW collections.

    ``cfg`` is the ``[milvus]`` section as a dict (or a ``MilvusConfig``): ``uri`` (``""``
    or a relative path = a Milvus Lite file inside ``index_dir``, default ``milvus.db``; an
    absolute ``.db`` path; or ``http(s)://host:port``), ``token``, ``collection``. Each call
    creates fresh collections ``<collection>_<id>_dense`` / ``_sparse`` / ``_colbert``
    (``<id>`` random), so an index being built never touches the collections of the one
    it replaces. ``"dense"`` is left out when ``dim`` is None (an encoder without a dense
    output) or not in ``modes`` (the modes the pipeline keeps in Milvus: a dense-only
    pipeline runs on a Milvus without sparse vectors, such as 2.3); ``"colbert"`` (token vectors
    of ``colbert_dim``, kept as ``colbert_encoding``) only when in ``modes`` (a pipeline's
    ``[colbert] backend = "milvus"``) and ``colbert_dim`` is given. ``uri`` / ``token``
    given here override the section; with ``from_index``
    (the section was read from an index directory) its uri and token are not trusted and
    :func:`resolve_connection` applies.
    """
    if not isinstance(cfg, Mapping):
        cfg = {key: getattr(cfg, key) for key in ("enabled", "uri", "token", "collection", "whole_index")
               if hasattr(cfg, key)}
    unknown = set(cfg) - {"enabled", "uri", "token", "collection", "whole_index"}
    if unknown:
        raise ConfigError(f"unknown [milvus] settings {sorted(unknown)}; valid: enabled, uri, token, collection, "
                          "whole_index")
    stored = cfg.get("uri") or ""
    coll = cfg.get("collection") or "hybridrag"
    if not isinstance(stored, str):
        raise ConfigError(f"[milvus] uri must be a str, got {stored!r}")
    if from_index:
        where, token, private = resolve_connection(stored or "milvus.db", Path(index_dir), uri, token)
    else:
        token = token or cfg.get("token") or None
        where = uri or stored
        if not _is_server(where):
            path = Path(where or "milvus.db").expanduser()
            if not path.is_absolute() and not uri:
                path = Path(index_dir) / path
            where = str(path)
        elif token is None:
            token = os.environ.get(TOKEN_ENV) or None
        private = _inside(where, Path(index_dir))
    # Every collection an index makes names its directory as owner, a private Lite file's
    # too: a copy pointed at the original's own file by a uri the user names is then refused.
    owner = directory_owner(Path(index_dir))
    uid = uuid.uuid4().hex[:12]
    width = {"dense": dim, "sparse": 0, "colbert": colbert_dim, "docs": 0, "bm25": 0}
    names = {m: f"{coll}_{uid}_{m}" for m in ("dense", "sparse", "bm25", "colbert", "docs")
             if m in modes and width[m] is not None}
    _record_created(Path(index_dir), list(names.values()) + ([bm25_terms_name(names["bm25"])] if "bm25" in names else []))
    out: dict[str, _MilvusStore] = {}
    if "dense" in names:
        out["dense"] = MilvusDenseStore(dim, uri=where, token=token, collection=names["dense"], owner=owner)
    if "sparse" in names:
        out["sparse"] = MilvusSparseStore(uri=where, token=token, collection=names["sparse"], owner=owner)
    if "bm25" in names:
        from hybridrag.stores.milvus_bm25 import MilvusBm25Store

        out["bm25"] = MilvusBm25Store(uri=where, token=token, collection=names["bm25"], owner=owner,
                                      **{k: v for k, v in (bm25 or {}).items() if k in ("k1", "b", "variant")})
    if "colbert" in names:
        out["colbert"] = MilvusColbertStore(int(colbert_dim), encoding=colbert_encoding, uri=where,  # type: ignore[arg-type]
                                            token=token, collection=names["colbert"], owner=owner)
    if "docs" in names:
        from hybridrag.stores.milvus_docs import MilvusDocsStore

        out["docs"] = MilvusDocsStore(uri=where, token=token, collection=names["docs"], owner=owner)
    for store in out.values():
        store._private = private
    return out


def _record_created(index_dir: Path, names: list[str]) -> None:
    """Append ``names`` to the index directory's :data:`CREATED_LOG` (synced: a kill after
    Milvus made them leaves them listed), never through a link."""
    from hybridrag.storage.files import open_plain

    if not names:
        return
    try:
        fd = open_plain(index_dir, CREATED_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except FileNotFoundError:   # no index directory yet: nothing of it to clean up later
        return
    try:
        os.write(fd, (json.dumps({"collections": names}) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def created_collections(index_dir: Path) -> set[str]:
    """Names of the collections this index directory's :data:`CREATED_LOG` lists (well-formed
    names only; a damaged line is skipped)."""
    from hybridrag.storage.files import open_plain

    try:
        fd = open_plain(index_dir, CREATED_LOG, os.O_RDONLY)
    except FileNotFoundError:
        return set()
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(_CREATED_LOG_MAX)
    out: set[str] = set()
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            names = json.loads(line).get("collections", [])
        except (ValueError, AttributeError):
            continue
        out.update(n for n in names if isinstance(n, str) and _MADE_NAME.match(n))
    return out


def stray_collections(stores: Mapping[str, Any], index_dir: Path) -> list[dict[str, Any]]:
    """Collections that this index directory made (its :data:`CREATED_LOG`), that it still owns
    (``hybridrag.owner``, or a Milvus Lite file inside it) and that the index's current stores do
    not use: what a ``create(overwrite=True)`` killed before its commit leaves behind, or an
    older index's collections that a restored backup no longer names. Each as ``{"name",
    "rows", "committed"}``: ``committed`` is the store generation a commit published on it,
    None when none did (a create that never committed)."""
    mine = [s for s in stores.values() if isinstance(s, _MilvusStore)]
    if not mine:
        return []
    using = {name for s in mine for name in s.collections()}
    store = mine[0]
    out = []
    for name in sorted(created_collections(index_dir) - using):
        if not store._client.has_collection(name):
            continue
        if not store._owns(name):
            continue
        done = (store._client.describe_collection(name).get("properties") or {}).get(_COMMITTED)
        rows = int(store._client.get_collection_stats(name).get("row_count", 0))
        # a damaged property still counts as published (kept unless --committed)
        out.append({"name": name, "rows": rows,
                    "committed": None if done is None else int(done) if str(done).isdigit() else str(done)})
    return out


def __getattr__(name: str) -> Any:
    # the BM25 store lives in its own module (it imports this one)
    if name == "MilvusBm25Store":
        from hybridrag.stores.milvus_bm25 import MilvusBm25Store

        return MilvusBm25Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
