"""BM25 in Milvus (``[bm25] backend = "milvus"``): the rows and the statistics of
:class:`~hybridrag.stores.sparse.SparseIndex` with ``weighting="bm25lucene"``, kept in two
collections, with the same scores (within float32 rounding of a different summation order).

BM25's weight of a term in a row depends on the whole index (idf from the rows holding the
term, length normalisation from the average row length), which changes with every commit; a
collection cannot be rewritten at each commit. So:

* The rows collection ``<collection>`` (key = slot, the commit protocol of every Milvus store)
  keeps per row a ``SPARSE_FLOAT_VECTOR`` of *reference* weights,
  ``w_ref = tf / (tf + k1 (1 - b + b dl / avgdl_ref))``, with ``avgdl_ref`` the mean length of
  the first rows ever added (fixed for the collection's life), and the exact term counts
  (field ``tf``: varints in ascending term id order, base64).
* The terms collection ``<collection>_terms`` keeps, per term, its id and ``df`` (live rows
  holding it) at a commit: two versions per term (key ``"0" + term`` / ``"1" + term``), each
  with the store generation it was written at. A commit writes the terms its changes touched
  into the slot that does not hold the committed version; a reader of generation ``G`` takes
  the newer version at or below ``G``. Read by primary key only (Milvus Lite evaluates other
  filters over every row).
* The record of each commit (the index's ``milvus-bm25-<tag>.json``, or a query node's head
  record) holds ``N`` (live rows), the total length and ``avgdl_ref``.

A search asks Milvus for the top rows by ``sum_t idf(t) q(t) w_ref(t, d)`` (the exact score
when the average length is ``avgdl_ref``), then rescores them exactly on the client from
``tf`` and the current statistics. With ``avgdl`` above ``avgdl_ref`` a row's exact score is at
most ``avgdl / avgdl_ref`` times its reference score, below it at most the reference score: the
search widens its limit until the k-th exact score beats that bound for every row not fetched,
so the top-k is exact (ties to the smaller slot), as ``SparseIndex`` gives it.

Only the ``lucene`` variant (the default): ``okapi`` floors negative idf at a fraction of the
mean idf of *every* term, which no commit can keep without reading every term's ``df``.

Query nodes (``HybridIndex.attach``) have no vocabulary file: :class:`MilvusVocabulary` looks
query terms up in the terms collection (one query per search call, cached per generation).

Tests: ``tests/test_milvus_bm25.py``.
"""
from __future__ import annotations

import base64
import hashlib
import math
import threading
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from hybridrag.errors import ConfigError, IndexFormatError
from hybridrag.stores.milvus import (
    _COMMITTED, _GEN, _OWNER, _VEC, PLACEHOLDER_TERM, DataType, MilvusClient, MilvusSparseStore,
    _is_server, _quote, bm25_terms_name, load_repairing, logger,
)

__all__ = ["MilvusBm25Store", "MilvusVocabulary"]

_TF = "tf"
_TKEY = "key"
_TERM = "term"
_TID = "tid"
_DF = "df"
_TDUMMY = "v"           # the terms collection's vector field (Milvus needs one; never searched)
_MAX_TERM = 256         # characters of a term kept as its key; longer terms are keyed by SHA-256
_TERMS_BATCH = 2048     # terms per lookup or upsert
_CACHE_MAX = 200_000    # terms a reader keeps looked up (per generation)


def _pack(counts: Sequence[int]) -> str:
    """Counts (ints >= 1) as LEB128 varints, base64."""
    out = bytearray()
    for c in counts:
        while c >= 0x80:
            out.append((c & 0x7F) | 0x80)
            c >>= 7
        out.append(c)
    return base64.b64encode(bytes(out)).decode("ascii")


def _unpack(text: str) -> list[int]:
    out, cur, shift = [], 0, 0
    for byte in base64.b64decode(text):
        cur |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
        else:
            out.append(cur)
            cur, shift = 0, 0
    return out


def term_key(term: str) -> str:
    """The key text of ``term`` in the terms collection (long terms by their SHA-256)."""
    if len(term) <= _MAX_TERM:
        return term
    return "#sha256:" + hashlib.sha256(term.encode("utf-8", "surrogatepass")).hexdigest()


class MilvusBm25Store(MilvusSparseStore):
    """BM25 rows in Milvus (see the module docstring). ``add`` takes term counts
    (``{term id: count}`` rows, as :class:`~hybridrag.encoders.bm25.BM25Encoder` gives them),
    queries are term counts too; scores are those of ``SparseIndex(weighting="bm25lucene")``
    over the same rows. ``bind_vocabulary`` gives the store the terms of the ids (an index does
    it); without one a term is known by its id."""

    _kind = "bm25"
    _params = MilvusSparseStore._params + ("k1", "b", "variant")
    _out_fields = (_VEC, _TF)

    def __init__(
        self,
        uri: str = "milvus.db",
        token: str | None = None,
        collection: str = "hybridrag_bm25",
        k1: float = 1.5,
        b: float = 0.75,
        variant: str = "lucene",
        index_type: str = "SPARSE_INVERTED_INDEX",
        index_params: dict[str, Any] | None = None,
        search_params: dict[str, Any] | None = None,
        max_filter_ids: int = 16384,
        overwrite: bool = False,
        owner: str | None = None,
        _attach: bool = False,
    ) -> None:
        if variant != "lucene":
            raise ConfigError(f"bm25.variant = {variant!r} has no Milvus backend: okapi's idf floor needs every "
                              "term's df at each commit; use variant = 'lucene' (the default) or the local backend")
        for name, v in (("k1", k1), ("b", b)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{name} must be a finite number, got {v!r}")
        if k1 < 0 or not 0 <= b <= 1:
            raise ConfigError(f"need k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b, self.variant = float(k1), float(b), variant
        self.terms_collection = bm25_terms_name(collection)
        self._avgdl_ref = 0.0
        self._total = 0.0            # total length (sum of counts) of the committed live rows
        self._pending_total = 0.0    # its change since the last commit
        self._delta: dict[int, int] = {}   # df change since the last commit, per touched term id
        self._saved_state: tuple[float, dict[int, int]] | None = None
        self._vocab: Mapping[str, int] | None = None   # bound: term -> id (an index's vocabulary)
        self._rev: list[str] = []                      # id -> term of the bound vocabulary
        self._vocab_size = 0
        self._lock = threading.Lock()
        self._cache_gen = -1
        self._by_term: dict[str, tuple[int, int] | None] = {}   # term -> (id, df) at _gen, or unknown
        self._df_at: dict[int, int] = {}                        # id -> df at _gen
        self._view: MilvusVocabulary | None = None
        self._keys = "terms"          # "ids": written without a vocabulary (the store API)
        super().__init__(uri, token, collection, index_type, index_params, search_params, max_filter_ids,
                         overwrite, owner, _attach)

    # ------------------------------------------------------------------ collections

    def _vector_field(self, schema: Any) -> None:
        schema.add_field(_VEC, DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field(_TF, DataType.VARCHAR, max_length=65535)

    def _create(self) -> None:
        if self._client.has_collection(self.terms_collection):
            self._client.drop_collection(self.terms_collection)
        super()._create()
        self._create_terms()

    def _create_terms(self) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(_TKEY, DataType.VARCHAR, is_primary=True, max_length=4 * _MAX_TERM + 16)
        schema.add_field(_TERM, DataType.VARCHAR, max_length=65535)
        schema.add_field(_TID, DataType.INT64)
        schema.add_field(_GEN, DataType.INT64)
        schema.add_field(_DF, DataType.INT64)
        schema.add_field(_TDUMMY, DataType.FLOAT_VECTOR, dim=2)
        ip = self._client.prepare_index_params()
        ip.add_index(field_name=_TDUMMY, index_type="FLAT", metric_type="IP", params={})
        props = {_OWNER: self._owner} if self._owner else {}
        self._client.create_collection(self.terms_collection, schema=schema, index_params=ip,
                                       consistency_level="Strong", properties=props)

    def _load_collection(self) -> None:
        super()._load_collection()
        if not self._client.has_collection(self.terms_collection):
            raise IndexFormatError(f"Milvus collection {self.terms_collection!r} (the BM25 terms of "
                                   f"{self.collection!r}) does not exist at {self.uri!r}")
        fields = {f["name"] for f in self._client.describe_collection(self.terms_collection).get("fields", [])}
        if not {_TKEY, _TERM, _TID, _GEN, _DF} <= fields:
            raise IndexFormatError(f"Milvus collection {self.terms_collection!r} does not have the BM25 terms "
                                   f"schema; fields: {sorted(fields)}")
        load_repairing(self._client, self.uri, self.terms_collection, _TDUMMY, "FLAT", {})

    def _check_collection(self) -> None:
        super()._check_collection()
        fields = {f["name"] for f in self._client.describe_collection(self.collection).get("fields", [])}
        if _TF not in fields:
            raise IndexFormatError(f"Milvus collection {self.collection!r} has no {_TF!r} field: not a BM25 "
                                   f"collection (fields: {sorted(fields)})")

    def collections(self) -> list[str]:
        return [self.collection, self.terms_collection]

    def drop(self) -> None:
        super().drop()
        if self._client.has_collection(self.terms_collection):
            self._client.drop_collection(self.terms_collection)

    # ------------------------------------------------------------------ vocabulary

    def bind_vocabulary(self, vocabulary: Mapping[str, int]) -> None:
        """The index's vocabulary (term -> id, ids in insertion order): the terms collection is
        keyed by the terms themselves, so that a query node looks them up by text."""
        self._vocab, self._rev = vocabulary, []

    @property
    def bound(self) -> Mapping[str, int] | None:
        return self._vocab

    def _term_of(self, tid: int) -> str:
        if self._vocab is None:
            if self._writer:
                self._keys = "ids"
            return f"#{tid}"
        if tid >= len(self._rev):
            start = len(self._rev)
            for i, term in enumerate(self._vocab):   # dict order is id order (ids are given in turn)
                if i >= start:
                    self._rev.append(term)
        if tid >= len(self._rev) or self._vocab.get(self._rev[tid]) != tid:
            raise KeyError(f"term id {tid} is not in the bound BM25 vocabulary")
        return self._rev[tid]

    def vocabulary(self) -> MilvusVocabulary:
        """The committed vocabulary as a lookup in Milvus (a query node's)."""
        if self._view is None:
            self._view = MilvusVocabulary(self)
        return self._view

    def vocabulary_terms(self) -> list[str]:
        """Every term of the committed generation in id order (a scan of the terms collection):
        the vocabulary of a writer made from a query node (``hybridrag migrate``). An id no
        committed version names (none should) gets a placeholder no analyser emits."""
        best: dict[int, tuple[int, str]] = {}
        where, fields = f"{_GEN} <= {self._gen}", [_TERM, _TID, _GEN]
        if _is_server(self.uri):   # a server caps a query's rows: page through them
            it = self._client.query_iterator(self.terms_collection, batch_size=4096, filter=where,
                                             output_fields=fields)
            batches: list[Any] = []
            try:
                while batch := it.next():
                    batches.append(batch)
            finally:
                it.close()
        else:                      # Milvus Lite returns them all to one query
            batches = [self._client.query(self.terms_collection, filter=where, output_fields=fields)]
        for batch in batches:
            for r in batch:
                tid, gen = int(r[_TID]), int(r[_GEN])
                if tid not in best or best[tid][0] < gen:
                    best[tid] = (gen, r[_TERM])
        size = max(self._vocab_size, max(best, default=-1) + 1)
        return [best[t][1] if t in best else f"\x00missing term {t}" for t in range(size)]

    def _versions(self, keys: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Both stored versions of each term key (any generation)."""
        out: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
        for s in range(0, len(keys), _TERMS_BATCH):
            part = keys[s : s + _TERMS_BATCH]
            lits = ", ".join(_quote(p + k) for k in part for p in "01")
            for r in self._client.query(self.terms_collection, filter=f"{_TKEY} in [{lits}]",
                                        output_fields=[_TKEY, _TID, _GEN, _DF]):
                out[r[_TKEY][1:]].append(r)
        return out

    def _committed_of(self, versions: list[dict[str, Any]]) -> dict[str, Any] | None:
        seen = [r for r in versions if int(r[_GEN]) <= self._gen]
        return max(seen, key=lambda r: int(r[_GEN])) if seen else None

    def _fresh_cache(self) -> None:
        if self._cache_gen != self._gen or len(self._by_term) > _CACHE_MAX:
            self._by_term, self._df_at, self._cache_gen = {}, {}, self._gen

    def lookup(self, terms: Iterable[str]) -> dict[str, tuple[int, int] | None]:
        """``term -> (id, df)`` at the committed generation, or None for a term it does not hold."""
        terms = list(terms)
        with self._lock:
            self._fresh_cache()
            want = sorted({t for t in terms if t not in self._by_term})
            if want:
                keys = {term_key(t): t for t in want}
                got = self._versions(list(keys))
                for key, term in keys.items():
                    row = self._committed_of(got[key])
                    if row is None:
                        self._by_term[term] = None
                    else:
                        tid, df = int(row[_TID]), int(row[_DF])
                        self._by_term[term] = (tid, df)
                        self._df_at[tid] = df
            return {t: self._by_term[t] for t in terms}

    def _committed_df(self, tids: Sequence[int]) -> dict[int, int]:
        """df at the committed generation of each term id (0 for a term it does not hold)."""
        with self._lock:
            self._fresh_cache()
            missing = [t for t in tids if t not in self._df_at]
        if missing:
            if self._vocab is not None or self._keys == "ids":
                self.lookup([self._term_of(t) for t in missing])
            else:   # a query node given raw term ids: find them by id (a scan of the terms)
                self._df_by_id(missing)
        with self._lock:
            return {t: self._df_at.get(t, 0) for t in tids}

    def _df_by_id(self, tids: list[int]) -> None:
        for s in range(0, len(tids), _TERMS_BATCH):
            part = tids[s : s + _TERMS_BATCH]
            rows = self._client.query(self.terms_collection, filter=f"{_TID} in [{', '.join(map(str, part))}]",
                                      output_fields=[_TKEY, _TID, _GEN, _DF])
            by: dict[int, list[dict[str, Any]]] = {}
            for r in rows:
                by.setdefault(int(r[_TID]), []).append(r)
            with self._lock:
                for t in part:
                    row = self._committed_of(by.get(t, []))
                    self._df_at[t] = int(row[_DF]) if row is not None else 0

    # ------------------------------------------------------------------ statistics

    def _stats(self) -> tuple[int, float]:
        """(live rows, total length) this store sees."""
        n = len(self)
        total = self._total + (self._pending_total if self._writer else 0.0)
        return n, total

    def _df(self, tids: Sequence[int]) -> dict[int, int]:
        df = self._committed_df(tids)
        if self._writer:
            for t in tids:
                df[t] += self._delta.get(t, 0)
        return df

    def term_stats_of(self, tids: Sequence[int]) -> tuple[int, dict[int, int], float]:
        """``(N, {id: df}, total length)`` this store scores ``tids`` with (for tests and ``info``)."""
        n, total = self._stats()
        return n, self._df(list(tids)), total

    # ------------------------------------------------------------------ rows

    def _prepare_rows(self, data: Any, n: int) -> list[Any]:
        rows, m = self._split(data, "rows")
        if m != n:
            raise ValueError(f"got {n} slots for {m} rows; pass one slot per row")
        out: list[Any] = []
        lengths = []
        for i, r in enumerate(rows):
            if r and max(r) >= PLACEHOLDER_TERM:
                raise ValueError(f"rows[{i}]: term id {max(r)} is too large; Milvus term ids must be < {PLACEHOLDER_TERM}")
            tids = sorted(r)
            counts = []
            for t in tids:
                c = r[t]
                if c != int(c) or c < 1:
                    raise ValueError(f"rows[{i}]: BM25 rows are term counts (ints >= 1), got {c} for term {t}")
                counts.append(int(c))
            lengths.append(float(sum(counts)))
            out.append((tids, counts))
        total = float(sum(lengths))
        if not self._avgdl_ref and n:
            # any reference keeps scores exact (only the search's depth depends on it): the first
            # rows' mean length, fixed from here on (recorded by the next save)
            self._avgdl_ref = total / n if total else 1.0
        ref = self._avgdl_ref
        k1, b = self.k1, self.b
        prepared = []
        for (tids, counts), dl in zip(out, lengths):
            norm = k1 * (1.0 - b + b * dl / ref)
            vec = {t: float(np.float32(c / (c + norm))) for t, c in zip(tids, counts)} if tids else \
                {PLACEHOLDER_TERM: 1.0}
            prepared.append((vec, _pack(counts)))
        return prepared

    def _row_fields(self, row: Any) -> dict[str, Any]:
        vec, tf = row
        return {_VEC: vec, _TF: tf}

    def _row_value(self, entity: Mapping[str, Any]) -> Any:
        return entity[_VEC], entity[_TF]

    def _tally(self, rows: Any, sign: int) -> None:
        """Add (``sign`` 1) or take away (-1) rows ``(vector, tf)`` in the pending statistics."""
        for vec, tf in rows:
            self._pending_total += sign * float(sum(_unpack(tf)))
            for t in _row_terms(vec):
                self._delta[t] = self._delta.get(t, 0) + sign

    def _added(self, rows: list[Any]) -> None:
        self._tally(rows, 1)

    def _removing(self, slots: set[int]) -> None:
        if slots:
            self._tally(self._fetch(np.array(sorted(slots), dtype=np.int64)).values(), -1)

    def _exported(self, vectors: list[Any]) -> Any:
        out = []
        for vec, tf in vectors:
            out.append({t: float(c) for t, c in zip(_row_terms(vec), _unpack(tf))})
        return out

    # ------------------------------------------------------------------ scoring

    def _prepare_queries(self, queries: Any) -> tuple[list[Any], list[Any]]:
        rows, _ = self._split(queries, "queries")
        rows = [{t: v for t, v in r.items() if t < PLACEHOLDER_TERM} for r in rows]
        n, total = self._stats()
        avgdl = total / max(n, 1)
        df = self._df(sorted({t for r in rows for t in r}))
        mq: list[Any] = []
        local: list[Any] = []
        for r in rows:
            idf = {t: (math.log1p((n - df[t] + 0.5) / (df[t] + 0.5)) if df[t] > 0 else 0.0) for t in r}
            weights = {t: float(np.float32(v * idf[t])) for t, v in r.items()}
            live = {t: w for t, w in weights.items() if w > 0}
            mq.append(live if live else None)
            local.append((r, idf, avgdl))
        return mq, local

    def _rescore(self, q: Any, vectors: list[Any]) -> np.ndarray:
        r, idf, avgdl = q
        k1, b = self.k1, self.b
        out = np.zeros(len(vectors), dtype=np.float32)
        for i, (vec, tf) in enumerate(vectors):
            counts = _unpack(tf)
            tids = _row_terms(vec)
            dl = float(sum(counts))
            norm = k1 * (1.0 - b + b * dl / avgdl) if avgdl > 0 else k1 * (1.0 - b)
            have = dict(zip(tids, counts))
            s = 0.0
            for t, qv in r.items():
                c = have.get(t)
                if c is not None:
                    s += float(np.float32(qv)) * float(np.float32(idf[t] * (c / (c + norm))))
            out[i] = s
        return out

    def _unseen_bound(self, floor: float) -> float:
        n, total = self._stats()
        avgdl = total / max(n, 1)
        ref = self._avgdl_ref or avgdl or 1.0
        return floor * max(1.0, avgdl / ref) if floor > 0 else floor

    # ------------------------------------------------------------------ commits

    def _begin_write(self) -> None:
        if self._writer:
            return
        super()._begin_write()
        # a dead writer's term versions of uncommitted generations
        self._client.delete(self.terms_collection, filter=f"{_GEN} > {self._gen}")

    def _publish_terms(self, gen: int) -> None:
        """Write the df at generation ``gen`` of every term the changes since the last commit touched."""
        if not self._delta:
            return
        tids = sorted(self._delta)
        terms = [self._term_of(t) for t in tids]
        keys = [term_key(t) for t in terms]
        versions = self._versions(keys)
        new, replace = [], []   # rows into an empty slot / over an older version
        for tid, term, key in zip(tids, terms, keys):
            row = self._committed_of(versions[key])
            slot = "0" if row is None or row[_TKEY][0] == "1" else "1"
            df = (int(row[_DF]) if row is not None else 0) + self._delta[tid]
            if df < 0:
                raise IndexFormatError(f"BM25 term {term!r}: df would fall to {df}; the terms collection "
                                       f"{self.terms_collection!r} does not match the rows")
            # the term itself (a restore of the vocabulary needs it), its key past 16,383 characters
            out = {_TKEY: slot + key, _TERM: term if len(term) <= 16383 else key, _TID: tid, _GEN: gen, _DF: df, _TDUMMY: [0.0, 0.0]}
            taken = any(r[_TKEY] == slot + key for r in versions[key])
            (replace if taken else new).append(out)
        for s in range(0, len(new), _TERMS_BATCH):   # (an insert costs Milvus Lite half an upsert)
            self._client.insert(self.terms_collection, new[s : s + _TERMS_BATCH])
        for s in range(0, len(replace), _TERMS_BATCH):
            self._client.upsert(self.terms_collection, replace[s : s + _TERMS_BATCH])
        self._client.flush(self.terms_collection)

    def save(self, directory: Any, tag: str) -> dict[str, str]:
        self._begin_write()
        gen = self._next
        self._publish_terms(gen)
        self._saved_state = (self._total + self._pending_total, dict(self._delta))
        try:
            return super().save(directory, tag)
        except BaseException:
            self._saved_state = None
            raise

    def _record(self) -> dict[str, Any]:
        total = self._total + self._pending_total
        vocab = max(self._vocab_size, max(self._delta, default=-1) + 1)
        return {"bm25": {"total_length": total, "avgdl_ref": self._avgdl_ref, "vocab_size": vocab,
                         "keys": self._keys}}

    def _restore(self, doc: Mapping[str, Any], source: str) -> None:
        try:
            st = doc["bm25"]
            self._total, self._avgdl_ref = float(st["total_length"]), float(st["avgdl_ref"])
            self._vocab_size = int(st["vocab_size"])
            self._keys = "ids" if st.get("keys") == "ids" else "terms"
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{source}: no BM25 statistics in the Milvus store record ({exc})") from None
        if not (math.isfinite(self._total) and self._total >= 0 and math.isfinite(self._avgdl_ref)
                and self._avgdl_ref >= 0):
            raise IndexFormatError(f"{source}: bad BM25 statistics {st!r}")

    def committed(self) -> None:
        saved = self._saved_state
        super().committed()
        if saved is None:
            return
        self._saved_state = None
        self._total, _ = saved
        self._vocab_size = self._record()["bm25"]["vocab_size"]
        self._pending_total, self._delta = 0.0, {}
        try:
            self._client.alter_collection_properties(self.terms_collection, properties={_COMMITTED: str(self._gen)})
        except Exception as exc:  # noqa: BLE001 - advisory, as on the rows collection
            logger.debug("could not record commit %d on %r: %s", self._gen, self.terms_collection, exc)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["terms_collection"] = self.terms_collection
        out["terms_stored"] = int(self._client.query(self.terms_collection, filter="",
                                                     output_fields=["count(*)"])[0]["count(*)"])
        n, total = self._stats()
        out["avgdl"] = total / max(n, 1)
        out["avgdl_ref"] = self._avgdl_ref
        return out

    def config(self) -> dict:
        return {**super().config(), "k1": self.k1, "b": self.b, "variant": self.variant}


def _row_terms(vec: Any) -> list[int]:
    """The term ids of a stored row, ascending (the placeholder of an empty row left out)."""
    return sorted(int(t) for t in dict(vec) if int(t) != PLACEHOLDER_TERM)


class MilvusVocabulary(Mapping[str, int]):
    """A query node's BM25 vocabulary: term -> id at the store's committed generation, looked up
    in the terms collection (:meth:`prefetch` looks up many terms in one query). Not
    iterable: the vocabulary is Milvus's."""

    def __init__(self, store: MilvusBm25Store) -> None:
        self.store = store

    def prefetch(self, terms: Iterable[str]) -> None:
        self.store.lookup(terms)

    def __getitem__(self, term: str) -> int:
        got = self.store.lookup([term])[term]
        if got is None:
            raise KeyError(term)
        return got[0]

    def __contains__(self, term: object) -> bool:
        return isinstance(term, str) and self.store.lookup([term])[term] is not None

    def __len__(self) -> int:
        return self.store._vocab_size

    def __iter__(self) -> Iterator[str]:
        raise TypeError("a query node's BM25 vocabulary is kept in Milvus and looked up term by term; "
                        "it cannot be listed")
