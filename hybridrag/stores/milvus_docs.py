"""The rest of the index in Milvus (``[milvus] whole_index = true``): chunk text, metadata, ids and
content hashes (:class:`MilvusDocsStore`), and each commit's manifest (:class:`MilvusHead`), so a
query node with nothing but the pipeline's collection name and the Milvus URI serves the index
(:class:`MilvusDocView`, ``HybridIndex.attach``).

The docs collection ``<collection>_<id>_docs`` follows the commit protocol of the vector
collections (:mod:`hybridrag.stores.milvus`): every row carries the store generation it was
written at, readers see the committed generation only and leave out the slots its commit
removed, rows above it are deleted only by the writer. A chunk is one row, or several when its
text is longer than a Milvus ``VARCHAR`` (65,535 bytes): key ``slot << 8 | part``, the first row
(``part`` 0) holding the ids, offsets, hashes and metadata, every row one piece of the text.
Rows are read by key lists only (Milvus Lite answers ``key in [...]`` from its primary-key index
and evaluates other filters over every row: docs/MILVUS.md).

The head collection ``<collection>_head`` (one per collection prefix, shared by the index's
successive builds) holds the manifest of each published commit (key ``generation << 8 | part``),
with the records the vector stores' ``save`` wrote, so a reader opens exactly the state the
writer committed. The writer publishes each commit after its manifest swap, and before a commit
purges anything it makes sure the head names its last commit: Milvus then never lacks a row the
newest published commit shows.

Filters (:meth:`MilvusDocView.filter_mask`) have the docstore's semantics exactly: a Milvus
expression selects a superset of the matching chunks (pushed down: equality, ranges, ``doc_id`` /
``chunk_id`` lists natively), and the rows it returns are checked on the client with the
docstore's rules (:func:`matches`), which also cover what Milvus cannot express (JSON ``null``,
booleans apart from numbers, ``$in`` over JSON keys with many values).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybridrag.errors import ConfigError, DocumentError, IndexFormatError
from hybridrag.stores.base import as_slots
from hybridrag.stores.milvus import (
    _COMMITTED,
    _GEN,
    _INSERT_BATCH,
    _OWNER,
    _VEC,
    _RowsStore,
    _connect,
    _is_server,
    _literal,
    _quote,
    _slot_list,
    lite_bytes,
    load_repairing,
)

__all__ = ["MilvusDocsStore", "MilvusHead", "MilvusDocView", "matches", "HEAD_SUFFIX"]

logger = logging.getLogger(__name__)

_KEY = "key"
_PART = "part"
_NPARTS = "nparts"
_ENC = "enc"          # 0: text as is; 1: JSON-escaped (a text with lone surrogates)
_DOC = "doc_id"
_CHUNK = "chunk_id"
_ORD = "ordinal"
_START = "start"
_STOP = "stop"
_HASH = "content_hash"
_DOC_HASH = "doc_hash"
_TEXT = "text"
_META = "metadata"
_PART_BITS = 8
_MAX_BYTES = 65535                    # a Milvus VARCHAR
_COLUMNS = (_DOC, _CHUNK)
#: ``$in`` over a JSON key is sent to Milvus as ORed equalities up to this many values; past it
#: the pushed-down part is "the key exists" (Milvus has no ``in`` on JSON paths, and Milvus Lite
#: took 140 s for 3,000 ORed equalities over 20,000 rows).
MAX_PUSHED_VALUES = 32
HEAD_SUFFIX = "_head"


def _pieces(text: str) -> tuple[list[str], int]:
    """``text`` as VARCHAR pieces of at most 65,535 UTF-8 bytes (cut between characters), and
    its encoding flag (1: JSON-escaped, for a text with lone surrogates)."""
    enc = 0
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        text, enc = json.dumps(text, ensure_ascii=True), 1
        raw = text.encode("ascii")
    out: list[str] = []
    a = 0
    while a < len(raw) or not out:
        b = min(a + _MAX_BYTES, len(raw))
        while b < len(raw) and (raw[b] & 0xC0) == 0x80:   # not inside a character
            b -= 1
        out.append(raw[a:b].decode("utf-8"))
        a = b
    return out, enc


def _joined(pieces: list[str], enc: int) -> str:
    text = "".join(pieces)
    return json.loads(text) if enc == 1 else text


def _placeholder() -> list[float]:
    return [0.0, 0.0]


# --------------------------------------------------------------------------- filters


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "num"
    if isinstance(value, str):
        return "str"
    return "other"


def _value(row: Mapping[str, Any], field: str) -> tuple[bool, Any]:
    if field in _COLUMNS:
        return True, row[field]
    meta = row[_META]
    return (field in meta), meta.get(field)


def _eq(present: bool, got: Any, want: Any, column: bool) -> bool:
    if not present:
        return False
    if column:
        return got == want
    kind = _json_kind(want)
    if kind != _json_kind(got):
        return False
    return got == want


def _cmp(present: bool, got: Any, op: str, want: Any, column: bool) -> bool:
    if not present:
        return False
    if not column and _json_kind(got) != _json_kind(want):
        return False
    if op == "$gt":
        return got > want
    if op == "$gte":
        return got >= want
    if op == "$lt":
        return got < want
    return got <= want


def matches(row: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    """Whether a chunk (``doc_id``, ``chunk_id``, ``metadata``) matches ``filters`` under
    :meth:`hybridrag.stores.docstore.DocStore.filter_mask`'s rules (checked by
    ``tests/test_milvus_whole_index.py`` against it): values match values of the same JSON type
    only (numbers as numbers, ``True`` only ``true``), ``$ne`` / ``$nin`` also match chunks
    without the field, strings compare by code point (SQLite's binary order of UTF-8)."""
    for field, cond in filters.items():
        column = field in _COLUMNS
        present, got = _value(row, field)
        if not isinstance(cond, Mapping):
            cond = {"$eq": cond}
        for op, want in cond.items():
            w = want.item() if isinstance(want, np.generic) else want
            if op == "$eq":
                ok = _eq(present, got, w, column)
            elif op == "$ne":
                ok = not _eq(present, got, w, column)
            elif op in ("$in", "$nin"):
                vals = [v.item() if isinstance(v, np.generic) else v for v in w]
                hit = any(_eq(present, got, v, column) for v in vals)
                ok = hit if op == "$in" else not hit
            else:
                ok = _cmp(present, got, op, w, column)
            if not ok:
                return False
    return True


def _pushed(filters: Mapping[str, Any]) -> str:
    """A Milvus expression true for every chunk (first row) ``matches`` accepts, and for as few
    others as it can say (the docstore's validation has run before: values are well-formed)."""
    clauses: list[str] = []
    for field, cond in filters.items():
        column = field in _COLUMNS
        path = field if column else f'{_META}["{field}"]'
        if not isinstance(cond, Mapping):
            cond = {"$eq": cond}
        for op, want in cond.items():
            w = want.item() if isinstance(want, np.generic) else want
            if op == "$eq" and _json_kind(w) in ("num", "str"):
                clauses.append(f"{path} == {_literal(w, field, op)[0]}")
            elif op == "$eq" and _json_kind(w) == "bool" and not column:
                clauses.append(f"exists {path}")
            elif op in ("$gt", "$gte", "$lt", "$lte") and not column:
                clauses.append(f"{path} {_RANGE[op]} {_literal(w, field, op)[0]}")
            elif op == "$in":
                vals = [v.item() if isinstance(v, np.generic) else v for v in w]
                if not vals:
                    clauses.append("false")
                elif column:
                    clauses.append(f"{field} in [" + ",".join(_quote(v) for v in vals) + "]")
                elif all(_json_kind(v) in ("num", "str") for v in vals) and len(vals) <= MAX_PUSHED_VALUES:
                    clauses.append("(" + " or ".join(f"{path} == {_literal(v, field, op)[0]}" for v in vals) + ")")
                elif None not in vals:
                    clauses.append(f"exists {path}")
            elif op == "$nin" and column and w:
                clauses.append(f"{field} not in [" + ",".join(_quote(v) for v in w) + "]")
            elif op == "$ne" and column:
                clauses.append(f"{field} != {_quote(w)}")
    return " and ".join(clauses)


_RANGE = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


# --------------------------------------------------------------------------- docs collection


class MilvusDocsStore(_RowsStore):
    """Chunk text, ids, offsets, hashes and metadata in a Milvus collection (module doc).

    ``add(slots, rows)`` takes one dict per slot with the keys ``DocStore.get`` returns
    (``chunk_id``, ``doc_id``, ``ordinal``, ``text``, ``metadata``, ``start``, ``end``,
    ``content_hash``) and ``doc_hash`` (the document's content hash); :meth:`get` returns them.
    It is not searched (its vector field is a 2-dimensional placeholder Milvus requires)."""

    _kind = "docs"
    _index_types = ("FLAT",)
    _params = ("uri", "collection")
    _bits, _row_field, _n_field = _PART_BITS, _PART, _NPARTS

    def __init__(self, uri: str = "milvus.db", token: str | None = None, collection: str = "hybridrag_docs",
                 overwrite: bool = False, owner: str | None = None, _attach: bool = False) -> None:
        super().__init__(uri, token, collection, "FLAT", None, None, 16384, overwrite, owner, _attach)

    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(_KEY, DataType.INT64, is_primary=True)
        for name in (_GEN, _PART, _NPARTS, _ENC, _ORD, _START, _STOP):
            schema.add_field(name, DataType.INT64)
        for name in (_DOC, _CHUNK, _TEXT):
            schema.add_field(name, DataType.VARCHAR, max_length=_MAX_BYTES)
        for name in (_HASH, _DOC_HASH):
            schema.add_field(name, DataType.VARCHAR, max_length=128)
        schema.add_field(_META, DataType.JSON)
        schema.add_field(_VEC, DataType.FLOAT_VECTOR, dim=2)
        self._create_unsearched(schema)

    def _build_params(self) -> dict[str, Any]:
        return {}

    def _check_collection(self) -> None:
        from pymilvus import DataType

        desc = self._client.describe_collection(self.collection)
        fields = {f["name"]: f for f in desc.get("fields", [])}
        key = fields.get(_KEY)
        ints = all(fields.get(f, {}).get("type") == DataType.INT64 for f in (_GEN, _PART, _NPARTS, _ENC, _ORD))
        texts = all(fields.get(f, {}).get("type") == DataType.VARCHAR for f in (_DOC, _CHUNK, _TEXT, _HASH))
        if key is None or not key.get("is_primary") or key.get("type") != DataType.INT64 or not ints or not texts \
                or fields.get(_META, {}).get("type") != DataType.JSON:
            raise IndexFormatError(f"Milvus collection {self.collection!r} does not have the docs schema; "
                                   f"fields: {sorted(fields)}")

    # ------------------------------------------------------------------ rows

    def add(self, slots: np.ndarray, data: Sequence[Mapping[str, Any]]) -> None:  # type: ignore[override]
        """Add one chunk record per slot (class doc); ``DocumentError`` names a record Milvus
        cannot hold (an id over 65,535 bytes, a text over 255 VARCHARs)."""
        slots = self._checked_slots(slots, data, "chunk records")
        n = slots.shape[0]
        if n == 0:
            return
        rows: list[dict[str, Any]] = []
        for slot, rec in zip(slots.tolist(), data):
            for f in (_DOC, _CHUNK):
                if len(str(rec[f]).encode("utf-8")) > _MAX_BYTES:
                    raise DocumentError(f"{f} {str(rec[f])[:80]!r}... is over {_MAX_BYTES} bytes, the most a Milvus "
                                        "VARCHAR holds")
            pieces, enc = _pieces(rec["text"])
            if len(pieces) > 1 << _PART_BITS:
                raise DocumentError(f"chunk {rec['chunk_id']!r} has {len(rec['text'])} characters, more than the "
                                    f"docs collection holds ({(1 << _PART_BITS) * _MAX_BYTES} bytes)")
            meta = json.loads(json.dumps(dict(rec["metadata"]), default=lambda o: o.item()))   # numpy scalars
            for p, piece in enumerate(pieces):
                first = p == 0
                rows.append({
                    _KEY: (slot << _PART_BITS) | p, _GEN: self._next, _PART: p, _NPARTS: len(pieces), _ENC: enc,
                    _DOC: rec[_DOC] if first else "", _CHUNK: rec[_CHUNK] if first else "",
                    _ORD: int(rec[_ORD]) if first else 0, _START: int(rec["start"]) if first else 0,
                    _STOP: int(rec["end"]) if first else 0, _HASH: rec[_HASH] if first else "",
                    _DOC_HASH: (rec.get(_DOC_HASH) or "") if first else "", _TEXT: piece,
                    _META: meta if first else {}, _VEC: _placeholder(),
                })
        self._begin_write()
        live = self._present(slots)
        if live.shape[0]:
            raise ValueError(f"slots already present: {live[:10].tolist()}; remove them first")
        for s in range(0, len(rows), _INSERT_BATCH):
            self._client.insert(self.collection, rows[s : s + _INSERT_BATCH])
        self._max_slot = max(self._max_slot, int(slots.max()))
        if self._count is not None:
            self._count += n

    _FIRST = [_KEY, _GEN, _NPARTS, _ENC, _DOC, _CHUNK, _ORD, _START, _STOP, _HASH, _DOC_HASH, _TEXT, _META]

    def _fetch(self, slots: np.ndarray) -> dict[int, dict[str, Any]]:  # type: ignore[override]
        """``{slot: record}`` of the visible chunks among ``slots`` (hidden ones left out)."""
        top = self._visible_gen()
        hidden = self._hidden()
        first = [r for r in self._by_keys(np.unique(slots) << _PART_BITS, self._FIRST)
                 if int(r[_GEN]) <= top and int(r[_KEY]) >> _PART_BITS not in hidden]
        more = np.array([int(r[_KEY]) + i for r in first for i in range(1, int(r[_NPARTS]))], dtype=np.int64)
        rest: dict[int, str] = {}
        if more.shape[0]:
            rest = {int(r[_KEY]): r[_TEXT] for r in self._by_keys(more, [_KEY, _GEN, _TEXT]) if int(r[_GEN]) <= top}
        out: dict[int, dict[str, Any]] = {}
        for r in first:
            key, k = int(r[_KEY]), int(r[_NPARTS])
            pieces = [r[_TEXT]] + [rest.get(key + i) for i in range(1, k)]
            if any(p is None for p in pieces):
                continue   # not whole (rows deleted outside hybridrag): absent
            slot = key >> _PART_BITS
            out[slot] = {"slot": slot, "chunk_id": r[_CHUNK], "doc_id": r[_DOC], "ordinal": int(r[_ORD]),
                         "text": _joined(pieces, int(r[_ENC])), "metadata": dict(r[_META] or {}),
                         "start": int(r[_START]), "end": int(r[_STOP]), "content_hash": r[_HASH],
                         "doc_hash": r[_DOC_HASH] or None}
        return out

    def get(self, slots: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """The records of ``slots`` in their order (``DocStore.get``'s keys); ``KeyError`` names
        absent or removed slots."""
        want = as_slots(np.asarray(slots, dtype=np.int64).reshape(-1))
        got = self._fetch(want)
        missing = [s for s in dict.fromkeys(want.tolist()) if s not in got]
        if missing:
            raise KeyError(f"slots not in the docstore (absent or deleted): {missing[:10]}")
        out = []
        for s in want.tolist():
            rec = dict(got[s])
            rec.pop("doc_hash", None)
            out.append(rec)
        return out

    def export(self, slots: np.ndarray) -> list[dict[str, Any]]:  # type: ignore[override]
        """The records of ``slots`` as ``add`` takes them (``doc_hash`` included)."""
        slots = as_slots(slots)
        got = self._fetch(slots)
        missing = [int(s) for s in slots.tolist() if int(s) not in got]
        if missing:
            raise KeyError(f"slots not in Milvus collection {self.collection!r}: {missing[:10]}")
        return [got[int(s)] for s in slots.tolist()]

    def select(self, filters: Mapping[str, Any], fields: Sequence[str] = ()) -> list[dict[str, Any]]:
        """The first rows of the visible chunks that match ``filters`` (already validated:
        module doc), each with ``slot`` and ``fields``; pushed down as far as Milvus can go,
        then checked on the client."""
        expr = _pushed(filters)
        where = f"{_PART} == 0" + (f" and ({expr})" if expr else "")
        want = list(dict.fromkeys([_KEY, _GEN, _DOC, _CHUNK, _META, *fields]))
        top, hidden = self._visible_gen(), self._hidden()
        out = []
        for batch in self._query_all(where, want):
            for r in batch:
                slot = int(r[_KEY]) >> _PART_BITS
                if int(r[_GEN]) > top or slot in hidden:
                    continue
                r[_META] = dict(r[_META] or {})
                if matches(r, filters):
                    r["slot"] = slot
                    out.append(r)
        return out

    def _query_all(self, where: str, fields: list[str]) -> Any:
        """Every row matching ``where``, in batches: Milvus Lite returns them all to one query; a
        server caps a query's rows, so there an iterator pages through them."""
        if not _is_server(self.uri):
            yield self._client.query(self.collection, filter=where, output_fields=fields)
            return
        it = self._client.query_iterator(self.collection, batch_size=4096, filter=where, output_fields=fields)
        try:
            while True:
                batch = it.next()
                if not batch:
                    break
                yield batch
        finally:
            it.close()

    def search(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        raise TypeError("the docs collection is not searched; filter with MilvusDocView.filter_mask")

    def score(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        raise TypeError("the docs collection holds no vectors to score")

    def describe(self) -> dict[str, Any]:
        """As the vector stores: ``rows`` are chunks, ``rows_stored`` Milvus rows (a chunk's text
        over 65,535 bytes takes several; removed and uncommitted ones too); no vector bytes."""
        stored = self._live_count()
        return {"collection": self.collection, "where": self.uri if _is_server(self.uri) else Path(self.uri).name,
                "rows": len(self), "rows_stored": stored, "vector_bytes": None,
                "disk_bytes": lite_bytes(self.uri, [self.collection])}

    def config(self) -> dict:
        return {"uri": self.uri, "collection": self.collection}


# --------------------------------------------------------------------------- the head


class MilvusHead:
    """The published manifests of an index: collection ``<prefix>_head`` (module doc).

    ``publish(gen, doc)`` writes generation ``gen``'s document (a JSON object) and keeps the
    two newest; ``latest()`` returns the newest whole one. The collection names the index
    directory that writes it (``hybridrag.owner``): a writer of another directory is refused,
    unless the Milvus Lite file is inside the writer's own directory."""

    def __init__(self, uri: str, token: str | None, prefix: str, owner: str | None = None,
                 private: bool = False, create: bool = True) -> None:
        if not isinstance(prefix, str) or not prefix or not prefix.replace("_", "a").isalnum() or prefix[0].isdigit():
            raise ConfigError(f"collection must be letters, digits and '_' (not starting with a digit), got {prefix!r}")
        self.uri, self.name, self._owner, self._private = uri, prefix + HEAD_SUFFIX, owner, private
        self._client = _connect(uri, token, create=create)
        self.published: int | None = None   # the newest generation this object knows is published
        if not self._client.has_collection(self.name):
            if not create:
                raise IndexFormatError(f"no index is published under collection prefix {prefix!r} at {uri!r} "
                                       f"(no collection {self.name!r}); is it the prefix of the writer's "
                                       "[milvus] collection, and does the writer use whole_index = true?")
            self._create()
        load_repairing(self._client, uri, self.name, _VEC, "FLAT", {})   # (a kill may truncate Lite's index file)

    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(_KEY, DataType.INT64, is_primary=True)
        for name in (_GEN, _PART, _NPARTS):
            schema.add_field(name, DataType.INT64)
        schema.add_field(_TEXT, DataType.VARCHAR, max_length=_MAX_BYTES)
        schema.add_field(_VEC, DataType.FLOAT_VECTOR, dim=2)
        ip = self._client.prepare_index_params()
        ip.add_index(field_name=_VEC, index_type="FLAT", metric_type="IP", params={})
        props = {_OWNER: self._owner} if self._owner else {}
        self._client.create_collection(self.name, schema=schema, index_params=ip, consistency_level="Strong",
                                       properties=props)

    def check_owner(self) -> None:
        """Refuse to publish into a head another index directory writes."""
        if self._private or self._owner is None:
            return
        props = self._client.describe_collection(self.name).get("properties") or {}
        if props.get(_OWNER, self._owner) != self._owner:
            raise IndexFormatError(
                f"Milvus collection {self.name!r} at {self.uri!r} is the head of an index another directory writes "
                f"(owner {props.get(_OWNER)!r}, this one is {self._owner!r}): another index uses this [milvus] "
                "collection prefix (give this index its own: [milvus] collection, --collection), or this directory "
                "is a copy of that index, or another directory took it over (HybridIndex.take_over)")

    def _firsts(self) -> list[dict[str, Any]]:
        return list(self._client.query(self.name, filter=f"{_PART} == 0", output_fields=[_KEY, _GEN, _NPARTS]))

    def publish(self, gen: int, doc: Mapping[str, Any]) -> None:
        """Publish generation ``gen`` (flushed before it returns), then drop all but the two
        newest generations' rows."""
        self.check_owner()
        text = json.dumps(doc, sort_keys=True, ensure_ascii=True)
        pieces = [text[a : a + _MAX_BYTES] for a in range(0, len(text), _MAX_BYTES)] or [""]
        if len(pieces) > 1 << _PART_BITS:
            raise IndexFormatError(f"generation {gen}'s manifest is {len(text)} bytes, more than the head holds")
        self._client.delete(self.name, filter=f"{_GEN} == {int(gen)}")   # a failed earlier try
        rows = [{_KEY: (int(gen) << _PART_BITS) | p, _GEN: int(gen), _PART: p, _NPARTS: len(pieces), _TEXT: piece,
                 _VEC: _placeholder()} for p, piece in enumerate(pieces)]
        for s in range(0, len(rows), _INSERT_BATCH):
            self._client.insert(self.name, rows[s : s + _INSERT_BATCH])
        self._client.flush(self.name)
        self.published = int(gen)
        old = sorted({int(r[_GEN]) for r in self._firsts()})[:-2]
        if old:
            self._client.delete(self.name, filter=f"{_GEN} in {_slot_list(np.array(old, dtype=np.int64))}")
        try:
            self._client.alter_collection_properties(self.name, properties={_COMMITTED: str(int(gen))})
        except Exception as exc:  # noqa: BLE001 - advisory, as on the vector collections
            logger.debug("could not record generation %d on %r: %s", gen, self.name, exc)

    def newest(self) -> int | None:
        """The newest published generation (None: none)."""
        gens = [int(r[_GEN]) for r in self._firsts()]
        return max(gens) if gens else None

    def latest(self) -> tuple[int, dict[str, Any]] | None:
        """``(generation, document)`` of the newest whole published generation (None: none)."""
        firsts = sorted(self._firsts(), key=lambda r: -int(r[_GEN]))
        for r in firsts:
            gen, k = int(r[_GEN]), int(r[_NPARTS])
            keys = np.array([(gen << _PART_BITS) | p for p in range(k)], dtype=np.int64)
            got = {int(x[_KEY]): x[_TEXT] for x in self._client.query(
                self.name, filter=f"{_KEY} in {_slot_list(keys)}", output_fields=[_KEY, _TEXT])}
            if len(got) != k:
                continue   # being replaced: the older one
            try:
                doc = json.loads("".join(got[int(x)] for x in keys.tolist()))
            except ValueError as exc:
                raise IndexFormatError(f"Milvus collection {self.name!r}: generation {gen} is not valid JSON "
                                       f"({exc})") from None
            if not isinstance(doc, dict):
                raise IndexFormatError(f"Milvus collection {self.name!r}: generation {gen} is not a JSON object")
            return gen, doc
        return None

    def drop(self) -> None:
        self._client.drop_collection(self.name)

    def close(self) -> None:
        self._client.close()


# --------------------------------------------------------------------------- a query node's docstore


class MilvusDocView:
    """What a query node reads of the docstore, from the docs collection: the chunks of one
    published generation (``HybridIndex.attach``). Counts come from that generation's manifest;
    nothing is written."""

    read_only = True

    def __init__(self, store: MilvusDocsStore, manifest: Mapping[str, Any]) -> None:
        self.store = store
        counts = manifest.get("counts", {})
        self._chunks, self._docs = int(counts.get("chunks", 0)), int(counts.get("documents", 0))
        self._next_slot = int(counts.get("next_slot", 0))
        self._gen = int(manifest["generation"])
        self.as_of: int | None = self._gen
        self.path = Path(store.uri) if not _is_server(store.uri) else Path(store.collection)
        self._conn: Any = store   # None once closed (as DocStore's connection)

    # reads
    def count(self) -> int:
        return self._chunks

    def count_documents(self) -> int:
        return self._docs

    doc_count = count_documents

    def next_slot(self) -> int:
        return self._next_slot

    def get(self, slots: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        return self.store.get(slots)

    def _validate(self, filters: Any) -> None:
        from hybridrag.stores.docstore import _field_clause

        if not isinstance(filters, Mapping):
            raise TypeError(f"filters must be a dict, got {type(filters).__name__}")
        for field, cond in filters.items():
            _field_clause(field, cond)   # the docstore's checks and errors, word for word

    def filter_mask(self, filters: Mapping[str, Any], size: int | None = None) -> np.ndarray:
        self._validate(filters)
        n = self._next_slot if size is None else size
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"size must be a non-negative int, got {size!r}")
        slots = np.array([r["slot"] for r in self.store.select(filters)], dtype=np.int64)
        if slots.size and slots.max() >= n:
            raise ValueError(f"size {n} is too small: matching slot {int(slots.max())} is outside the mask")
        mask = np.zeros(int(n), dtype=bool)
        mask[slots] = True
        return mask

    def missing_keys(self, fields: Sequence[str]) -> list[str]:
        out = []
        for field in fields:
            if field in _COLUMNS:
                continue
            expr = f'{_PART} == 0 and exists {_META}["{field}"]'
            top, hidden = self.store._visible_gen(), self.store._hidden()
            rows = self.store._client.query(self.store.collection, filter=expr, output_fields=[_KEY, _GEN, _META])
            if not any(int(r[_GEN]) <= top and int(r[_KEY]) >> _PART_BITS not in hidden
                       and field in (r[_META] or {}) for r in rows):
                out.append(field)
        return out

    def slots_for_docs(self, doc_ids: Sequence[str]) -> np.ndarray:
        ids = list(dict.fromkeys(doc_ids))
        if not ids:
            return np.zeros(0, np.int64)
        return np.array(sorted(r["slot"] for r in self.store.select({_DOC: {"$in": ids}})), dtype=np.int64)

    def doc_ids_for_slots(self, slots: Sequence[int] | np.ndarray) -> list[str]:
        return [r["doc_id"] for r in self.store.get(slots)]

    def has_doc(self, doc_id: str) -> bool:
        return bool(self.slots_for_docs([doc_id]).size)

    def doc_hash(self, doc_id: str) -> str | None:
        rows = self.store.select({_DOC: doc_id}, fields=[_DOC_HASH])
        return (rows[0][_DOC_HASH] or None) if rows else None

    def live_slots(self, as_of: int | None = None) -> np.ndarray:
        return np.array(sorted(r["slot"] for r in self.store.select({})), dtype=np.int64)

    def documents(self) -> list[tuple[str, str | None, int]]:
        """``(doc id, content hash, chunks)`` of every document with a chunk, by doc id, as
        ``DocStore.documents`` gives them (a document without chunks has no row in Milvus)."""
        out: dict[str, list[Any]] = {}
        for r in self.store.select({}, fields=[_DOC_HASH]):
            d = out.setdefault(r[_DOC], [r[_DOC_HASH] or None, 0])
            d[1] += 1
        return [(d, h, n) for d, (h, n) in sorted(out.items())]

    # what the engine asks of any docstore view
    def generation(self) -> int:
        return self._gen

    def max_generation(self) -> int:
        return self._gen

    def committed_generation(self) -> int:
        return self._gen

    def purged_generation(self) -> int:
        return -1

    def assume_count(self, n: int) -> None:
        self._chunks = int(n)

    def integrity_problems(self, quick: bool = False) -> list[str]:
        return []

    def pin(self) -> None:
        pass

    def unpin(self) -> None:
        pass

    def close(self) -> None:
        self._conn = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise IndexFormatError(f"a query node attached to Milvus reads only; DocStore.{name} needs the writer's "
                               "index directory")
