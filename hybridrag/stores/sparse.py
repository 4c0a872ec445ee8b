"""Inverted index for sparse vectors (BGE-M3 lexical weights, BM25 term counts).

Postings are kept per term as a scipy CSR matrix of shape ``(vocab, rows)`` (the
same arrays as a CSC ``(rows, vocab)``): memory is proportional to the number of
postings plus one ``indptr`` entry per term, never ``vocab x docs``.

* ``weighting="none"``: the stored values are the weights; score = dot product
  (M3 lexical matching).
* ``weighting="bm25okapi"`` / ``"bm25lucene"``: the stored values are term counts;
  the index keeps document lengths and computes the document-side BM25 weights of a
  term's postings when a query first needs them under the current corpus statistics
  (every commit changes them: a search then pays for its own terms' postings only).
  The query side is the query's term counts (a repeated query term counts twice).
  ``bm25okapi`` equals ``rank_bm25.BM25Okapi``; ``bm25lucene`` equals
  ``bm25s.BM25(method="lucene")`` (idf ``log(1 + (N-df+.5)/(df+.5))``, no ``k1+1``
  factor, as in Lucene >= 8). Removed rows do not count in N, df or avgdl.

New rows are buffered and merged lazily into a small delta tier, which is merged
into the main tier when it passes a quarter of its size, so appends cost
amortised O(new postings). A hit is a live row with a nonzero score (a row that
shares no term with the query is not returned; its exact score is 0).

Queries are scored by scipy's sparse product (query x postings), except, with numba
installed (a dependency), those whose postings reach 1/32 of the rows: one compiled call per
batch scores those into a dense per-row accumulator (:mod:`hybridrag.stores._kernels`; with
several threads, one call per thread on runs of queries of about equal work, after one shared
set-up; BM25 indexes from 100k rows are pruned). Both give the same arrays bit for bit. (A
third path, numpy/scipy dense accumulation, was removed: with numba it served only large
non-BM25 indexes, and without numba it measured no faster than the sparse product.)
``score`` (exact scores of given slots, the planner's step after the first stage) finds each
candidate's postings by binary search; with numba one compiled call per query
(``_kernels.score_rows``), else a few numpy calls per query term; also bit for bit the same.

Segments (the engine's immutable parts of an index): :meth:`SparseIndex.empty_like`,
:meth:`SparseIndex.merge` (one index from several, stored values kept), and
:meth:`SparseIndex.term_stats` / :meth:`SparseIndex.set_global_stats`, so that BM25 scores
each segment with the statistics of the whole index (segmented results equal one index's).
:meth:`SparseIndex.load` checks the files' structure (IndexFormatError naming the file), so
no damaged file can make a query read out of bounds.

Threads: concurrent ``search`` / ``score`` calls are safe (the lazy merge of pending adds
that the first search after an ``add`` does is locked); ``add`` / ``remove`` must not run
while another thread searches the same store.

Tested by ``tests/test_sparse_store.py``, ``tests/test_sparse_segments.py``,
``tests/test_sparse_damage.py`` and ``tests/test_bm25.py``.
"""
from __future__ import annotations

import itertools
import math
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from hybridrag.errors import ConfigError, IndexFormatError
from hybridrag.stores import _kernels
from hybridrag.stores.base import SlotMap, topk, write_npy

__all__ = ["SparseIndex", "WEIGHTINGS"]

WEIGHTINGS = ("none", "bm25okapi", "bm25lucene")
FORMAT_VERSION = 1

_INT_TYPES = (int, np.integer)
# up to this many queries (a list of dicts) are converted by _few_queries, more by the array path
_FEW_QUERIES = 8
# With the numba kernel, a query whose postings reach 1/_DENSE_RATIO of the rows is scored into
# a dense per-row accumulator (O(postings + rows)) instead of a sparse product (tens of ns per
# posting).
_DENSE_RATIO = 32
# ... and so is every query of an index of at most this many rows (a small segment of a large
# index): there the scipy product's fixed cost per call was most of a search.
_SMALL_ROWS = 1 << 16
# search(threads=None) splits the kernel's queries over every core when each thread gets
# >= _MIN_PER_THREAD of them (the kernel holds no GIL).
_MIN_PER_THREAD = 8
# BM25 indexes of at least this many rows are pruned (_kernels._maxscore): with pruning at every
# size, benchmarks/bench_sparse.py measured it faster at 100k and 1M rows and slower on smaller
# corpora, where its per-query set-up cost more than the postings it skipped
# (docs/CHANGELOG-performance.md, section 1, "BM25 with pruning"; today's figures:
# docs/BENCHMARKS.md, section 1).
_PRUNE_MIN_ROWS = 100_000
_NUM_TYPES = (int, float, np.integer, np.floating)
_NCPU = os.cpu_count() or 1   # read once: os.cpu_count() reads /sys on every call


class _Queries:
    """Queries as CSR arrays: ``indptr`` int64 [nq + 1], term ids ``indices`` (sorted within a
    row) and float32 ``data``; unknown terms and zero weights dropped. The heavy queries and
    ``score`` read the arrays; only the light queries' sparse products need a scipy matrix
    (:meth:`csr`), whose constructor's format checks were a large share of a one-query BM25
    search (docs/CHANGELOG-performance.md, engine change 19)."""

    __slots__ = ("indptr", "indices", "data", "vocab")

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, vocab: int) -> None:
        self.indptr, self.indices, self.data, self.vocab = indptr, indices, data, vocab

    @property
    def nq(self) -> int:
        return self.indptr.shape[0] - 1

    @property
    def nnz(self) -> int:
        return self.indices.shape[0]

    def within(self, vocab: int) -> "_Queries":
        """These queries for an index of ``vocab`` terms: the terms at or past it dropped (a
        segment that never saw them)."""
        vocab = max(vocab, 1)
        if self.nnz and int(self.indices.max()) >= vocab:
            keep = self.indices < vocab
            rid = np.repeat(np.arange(self.nq, dtype=np.int64), np.diff(self.indptr))
            indptr = np.zeros(self.nq + 1, dtype=np.int64)
            np.cumsum(np.bincount(rid[keep], minlength=self.nq), out=indptr[1:])
            return _Queries(indptr, self.indices[keep], self.data[keep], vocab)
        return self if vocab == self.vocab else _Queries(self.indptr, self.indices, self.data, vocab)

    def csr(self, rows: np.ndarray | None = None) -> sp.csr_matrix:
        """The queries (or those of ``rows``) as a scipy CSR ``(n, vocab)`` matrix."""
        m = sp.csr_matrix((self.data, self.indices, self.indptr), shape=(self.nq, self.vocab), copy=False)
        return m if rows is None else m[rows]


class _Filled:
    """A tier's BM25 weights under one version of the statistics: computed per term when a
    query first needs them (``filled``), with each term's largest (``maxw``). A change of
    statistics makes a new one, so a search running meanwhile keeps the one it started with."""

    __slots__ = ("version", "weights", "filled", "maxw")

    def __init__(self, version: int, nnz: int, vocab: int) -> None:
        self.version = version
        self.weights = np.empty(nnz, dtype=np.float32)
        self.filled = np.zeros(vocab, dtype=bool)
        self.maxw = np.zeros(vocab, dtype=np.float32)


class _Tier:
    """Postings of a set of rows: CSR arrays of a ``(vocab, n_rows)`` matrix."""

    __slots__ = ("indptr", "indices", "values", "bm25", "nonneg", "nonneg_of", "maxw", "maxw_of")

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray) -> None:
        self.indptr = indptr          # int64 [vocab + 1]
        self.indices = indices        # int32/int64 [nnz], row ids, increasing within a term
        self.values = values          # float32 [nnz]
        self.bm25: _Filled | None = None          # BM25 weights under the current statistics
        self.nonneg = False
        self.nonneg_of: np.ndarray | None = None   # the weights array ``nonneg`` was computed for
        self.maxw: np.ndarray | None = None        # float32 [vocab]: largest weight of each term's postings
        self.maxw_of: np.ndarray | None = None     # the weights array ``maxw`` was computed for

    @property
    def vocab(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return len(self.indices)

    def padded_indptr(self, vocab: int) -> np.ndarray:
        if vocab == self.vocab:
            return self.indptr
        return np.concatenate([self.indptr, np.full(vocab - self.vocab, self.indptr[-1], dtype=self.indptr.dtype)])

    def max_weights(self, w: np.ndarray) -> np.ndarray:
        """Largest of ``w`` (one weight per posting) over each term's postings, 0 for a term with none."""
        if self.maxw_of is not w:
            out = np.zeros(self.vocab, dtype=np.float32)
            has = np.flatnonzero(np.diff(self.indptr) > 0)
            if len(has):
                out[has] = np.maximum.reduceat(w, self.indptr[has])
            self.maxw, self.maxw_of = out, w
        return self.maxw

    def terms(self) -> np.ndarray:
        """Term id of every posting (int32 [nnz])."""
        return np.repeat(np.arange(self.vocab, dtype=np.int32), np.diff(self.indptr))


def _build_tier(terms: np.ndarray, rows: np.ndarray, values: np.ndarray, vocab: int) -> _Tier:
    """CSR by term from (term, row, value) triples; rows must be non-decreasing."""
    order = np.argsort(terms, kind="stable")  # stable: keeps rows increasing within a term
    counts = np.bincount(terms, minlength=vocab)
    indptr = np.zeros(vocab + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return _Tier(indptr, rows[order].astype(np.int32 if len(rows) == 0 or rows.max() < 2**31 - 1 else np.int64),
                 values[order].astype(np.float32))


def _merge_tiers(a: _Tier, b: _Tier, vocab: int) -> _Tier:
    """Postings of ``a`` then ``b`` per term (every row of ``b`` is after every row of ``a``)."""
    pa, pb = a.padded_indptr(vocab), b.padded_indptr(vocab)
    ca, cb = np.diff(pa), np.diff(pb)
    indptr = np.zeros(vocab + 1, dtype=np.int64)
    np.cumsum(ca + cb, out=indptr[1:])
    n = int(indptr[-1])
    # Entry j of term t in b goes to indptr[t] + ca[t] + (j - pb[t]); the rest of each run is a's, in order.
    shift_b = indptr[:-1] + ca - pb[:-1]
    pos_b = np.arange(b.nnz, dtype=np.int64) + np.repeat(shift_b, cb)
    from_a = np.ones(n, dtype=bool)
    from_a[pos_b] = False
    idx_dtype = np.result_type(a.indices.dtype, b.indices.dtype)
    indices = np.empty(n, dtype=idx_dtype)
    values = np.empty(n, dtype=np.float32)
    indices[from_a] = a.indices
    values[from_a] = a.values
    indices[pos_b] = b.indices
    values[pos_b] = b.values
    return _Tier(indptr, indices, values)


def _compact_tier(t: _Tier, alive: np.ndarray) -> tuple[_Tier, np.ndarray]:
    """Drop the postings of dead rows and renumber rows; returns (tier, old row -> new row)."""
    keep = alive[t.indices]
    ck = np.zeros(t.nnz + 1, dtype=np.int64)
    np.cumsum(keep, out=ck[1:])
    remap = np.cumsum(alive, dtype=np.int64) - 1
    indices = remap[t.indices[keep]]
    small = len(alive) < 2**31 - 1
    return _Tier(ck[t.indptr], indices.astype(np.int32 if small else np.int64), t.values[keep]), remap


def _check_threads(threads: Any) -> int | None:
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, _INT_TYPES) or threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    return int(threads)


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, _INT_TYPES):
        raise TypeError(f"k must be an int >= 0, got {k!r}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return int(k)


def _rows_to_coo(rows: Any, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(row number, term id, value) arrays from a list of dicts or a scipy sparse matrix."""
    if sp.issparse(rows):
        m = sp.csr_matrix(rows)
        m.sum_duplicates()
        n = m.shape[0]
        rid = np.repeat(np.arange(n, dtype=np.int64), np.diff(m.indptr))
        terms, vals = m.indices.astype(np.int64), np.asarray(m.data, dtype=np.float64)
    else:
        if isinstance(rows, (dict, str, bytes)) or not isinstance(rows, Sequence):
            raise TypeError(f"{what} must be a list of dict[int, float] (or a scipy sparse matrix), got {type(rows).__name__}")
        n = len(rows)
        for i, r in enumerate(rows):
            if not isinstance(r, dict):
                raise TypeError(f"{what}[{i}] is {type(r).__name__}, expected dict[int, float] (term id -> weight)")
        lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=n)
        total = int(lens.sum())
        bad_keys = {t for t in set(map(type, itertools.chain.from_iterable(rows)))
                    if t is bool or not issubclass(t, _INT_TYPES)}
        if bad_keys:
            raise TypeError(f"{what}: term ids must be ints, got keys of type {sorted(t.__name__ for t in bad_keys)}")
        bad_vals = {t for t in set(map(type, itertools.chain.from_iterable(r.values() for r in rows)))
                    if t is bool or not issubclass(t, _NUM_TYPES)}
        if bad_vals:
            raise TypeError(f"{what}: weights must be numbers, got {sorted(t.__name__ for t in bad_vals)}")
        terms = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=total)
        vals = np.fromiter(itertools.chain.from_iterable(r.values() for r in rows), dtype=np.float64, count=total)
        rid = np.repeat(np.arange(n, dtype=np.int64), lens)
    if len(terms) and terms.min() < 0:
        raise ValueError(f"{what}: term ids must be >= 0, got {int(terms.min())}")
    if not np.all(np.isfinite(vals)):
        raise ValueError(f"{what}: weights must be finite, got {vals[~np.isfinite(vals)][0]!r}")
    return rid, terms, vals, n


def _to_queries(queries: Any, vocab: int) -> _Queries:
    """Queries as CSR arrays (nq, vocab), float32, sorted term ids; terms >= ``vocab`` dropped."""
    if not sp.issparse(queries) and isinstance(queries, Sequence) and len(queries) <= _FEW_QUERIES:
        return _few_queries(queries, vocab)
    return _many_queries(queries, vocab)


def _many_queries(queries: Any, vocab: int) -> _Queries:
    """:func:`_to_queries` by array operations: a scipy matrix, or more than a few dicts."""
    rid, terms, vals, nq = _rows_to_coo(queries, "queries")
    keep = (terms < vocab) & (vals != 0)
    rid, terms, vals = rid[keep], terms[keep], vals[keep]
    vocab = max(vocab, 1)
    # rid is non-decreasing and (rid, term) pairs are distinct (dict keys; a scipy input had
    # its duplicates summed): sorting terms within each row is all a CSR needs
    order = np.argsort(rid * vocab + terms, kind="stable")
    indptr = np.zeros(nq + 1, dtype=np.int64)
    np.cumsum(np.bincount(rid, minlength=nq), out=indptr[1:])
    idx_t = np.int32 if vocab < 2**31 else np.int64
    return _Queries(indptr, terms[order].astype(idx_t), vals[order].astype(np.float32), vocab)


def _few_queries(queries: Sequence[Any], vocab: int) -> _Queries:
    """:func:`_to_queries` of a few ``{term id: weight}`` (up to ``_FEW_QUERIES``), checked and
    converted in one pass of plain Python: the array path's twenty-odd numpy calls cost 70 us
    whatever the size, a third of a one-query BM25 store search, where this loop takes 10 us
    for a query of 12 terms; from about 10 queries the array path is faster. Same arrays, same
    errors (``tests/test_sparse_store.py::test_query_conversion_paths_agree``)."""
    if isinstance(queries, (str, bytes)):
        raise TypeError(f"queries must be a list of dict[int, float] (or a scipy sparse matrix), "
                        f"got {type(queries).__name__}")
    indptr = [0]
    terms: list[int] = []
    vals: list[float] = []
    for i, r in enumerate(queries):
        if not isinstance(r, dict):
            raise TypeError(f"queries[{i}] is {type(r).__name__}, expected dict[int, float] (term id -> weight)")
        row = []
        for t, v in r.items():
            if type(t) is not int:
                if isinstance(t, bool) or not isinstance(t, _INT_TYPES):
                    raise TypeError(f"queries: term ids must be ints, got keys of type {[type(t).__name__]}")
                t = int(t)
            if type(v) is not float:
                if isinstance(v, bool) or not isinstance(v, _NUM_TYPES):
                    raise TypeError(f"queries: weights must be numbers, got {[type(v).__name__]}")
                v = float(v)
            if t < 0:
                raise ValueError(f"queries: term ids must be >= 0, got {t}")
            if not math.isfinite(v):
                raise ValueError(f"queries: weights must be finite, got {v!r}")
            if t < vocab and v != 0:
                row.append((t, v))
        row.sort()
        terms.extend(t for t, _ in row)
        vals.extend(v for _, v in row)
        indptr.append(len(terms))
    vocab = max(vocab, 1)
    idx_t = np.int32 if vocab < 2**31 else np.int64
    return _Queries(np.array(indptr, dtype=np.int64), np.array(terms, dtype=idx_t), np.array(vals, dtype=np.float32),
                    vocab)


# ---------------------------------------------------------------------- loading checks

_CHECK_CHUNK = 1 << 22   # postings per step of the load checks (bounded temporaries)


class _Layout:
    """Tiers of one or more segments laid end to end over ``n`` index rows, as the kernels take
    them. ``items``: per tier ``(tier, weights, largest weight per term or None, first row, end
    row, row -> slot)`` (one segment's at row 0, or several segments' one after the other);
    typed lists from ``cache`` (``_kernels.array_list``: rebuilt only for other arrays).
    ``prune``: the kernel gets each (query, term) pair's largest addend (BM25 from
    ``_PRUNE_MIN_ROWS`` rows): idf makes BM25's bounds skewed enough for it to pay; on the
    synthetic M3-like rows (no such skew) it was slower in development runs, so other weightings
    are not pruned."""

    __slots__ = ("n", "prune", "IP", "R", "W", "MW", "RS", "off", "end")

    def __init__(self, items: list[tuple], n_rows: int, cache: dict, prune: bool) -> None:
        rows = [t.indices for t, *_ in items]
        self.n, self.prune = n_rows, prune
        self.IP = _kernels.array_list(cache, "indptr", [t.indptr for t, *_ in items], np.int64)
        self.R = _kernels.array_list(cache, "rows", rows, _kernels.rows_dtype(rows))
        self.W = _kernels.array_list(cache, "weights", [it[1] for it in items], np.float32)
        self.MW = _kernels.array_list(cache, "maxw", [t.max_weights(w) if m is None else m for t, w, m, *_ in items],
                                      np.float32) if prune else self.W
        self.RS = _kernels.array_list(cache, "slots", [it[5] for it in items], np.int64)
        self.off = np.array([it[3] for it in items], dtype=np.int64)
        self.end = np.array([it[4] for it in items], dtype=np.int64)

    def search(self, q: _Queries, which: np.ndarray, k: int, invalid: np.ndarray | None,
               out_s: np.ndarray, out_i: np.ndarray, threads: int) -> None:
        """Top-k of queries ``which`` of ``q`` in one compiled call (``_kernels.dense_top_k``;
        every weight >= 0). ``invalid``: index rows not to return."""
        # (query, term) pairs, query-major, term ids ascending within a query; pair_start[j]:
        # first pair of query which[j]. Per tier, a pair's postings are lo:hi (empty for a term
        # the tier does not hold).
        if len(which) == q.nq:   # every query (a one-query search): its pairs as they are
            pair_start, terms, qws = q.indptr, q.indices, q.data
        else:
            qlen = np.diff(q.indptr)[which]
            pair_start = np.zeros(len(which) + 1, dtype=np.int64)
            np.cumsum(qlen, out=pair_start[1:])
            pos = np.repeat(q.indptr[which] - pair_start[:-1], qlen) + np.arange(pair_start[-1])
            terms, qws = q.indices[pos], q.data[pos]
        lo, hi, ub = _kernels.spans(self.IP, self.MW, terms, qws, self.prune)
        _kernels.dense_top_k(self.n, k, pair_start, qws, (self.R, self.W, lo, hi, self.off, self.end, self.RS),
                             invalid, out_s, out_i, which, threads=threads, ub=ub)

    def score(self, terms: np.ndarray, qws: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """float32 scores of index rows ``rows`` (< 0: -inf) for one query (``terms``, ``qws``)."""
        acc = np.zeros(len(rows), dtype=np.float32)
        _kernels.score_rows(terms, qws, (self.IP, self.R, self.W, self.off, self.end), rows, acc)
        acc[rows < 0] = -np.inf
        return acc


class _View:
    """Segments of one index (``parts``) as one index, for :meth:`SparseIndex.search_parts` /
    ``score_parts``; kept in the caller's cache and used while no part changed (``key``: each
    part's statistics version, bumped by every add, remove and change of statistics, and its
    tiers). Holds the tiers as a :class:`_Layout`, the dead rows, the slot maps, and, for BM25,
    each tier's arrays for one compiled fill of a query's weights over every tier (a fill per
    segment costs its Python set-up each)."""

    __slots__ = ("key", "parts", "layout", "bm25", "nonneg", "invalid", "offs", "fill_args", "locate_args")

    @staticmethod
    def key_of(parts: Sequence[SparseIndex]) -> list:
        return [(p, p._stats_version, p._main, p._delta) for p in parts]

    def current(self, parts: Sequence[SparseIndex]) -> bool:
        """Whether ``parts`` are the parts this view was made of, unchanged since."""
        key = self.key
        return len(key) == len(parts) and all(
            a is p and v == p._stats_version and m is p._main and d is p._delta for (a, v, m, d), p in zip(key, parts))

    def __init__(self, parts: Sequence[SparseIndex], cache: dict) -> None:
        for p in parts:
            p._flush()   # may renumber rows: everything below after it
        self.key = self.key_of(parts)
        self.parts = list(parts)
        self.bm25 = parts[0]._bm25
        items: list[tuple] = []
        fill: list[tuple] = []
        invalid, offs = [], []
        nonneg = True
        n = 0
        for p in parts:
            with p._merge_lock:
                tiers = [t for t in (p._main, p._delta) if t is not None]
                if p._bm25:
                    idf, avgdl = p._idf_current(), p._avgdl()
                    snap = []
                    for t in tiers:
                        f = t.bm25
                        if f is None or f.version != p._stats_version:
                            f = t.bm25 = _Filled(p._stats_version, t.nnz, t.vocab)
                        snap.append((t, f.weights, f.maxw))
                        fill.append((t, p._doclen, idf, avgdl, f))
                else:
                    snap = [(t, t.values, None) for t in tiers]
                nonneg = nonneg and p._tiers_nonneg(snap) is not None
                items += p._kernel_items(snap, n)
            if p._n_live != p._n_rows:
                invalid.append(np.flatnonzero(~p._alive[: p._n_rows]) + n)
            offs.append(n)
            n += p._n_rows
        self.nonneg = nonneg
        self.offs = offs   # each part's first index row
        self.invalid = np.concatenate(invalid) if invalid else None
        self.layout = _Layout(items, n, cache, self.bm25 and n >= _PRUNE_MIN_ROWS)
        self.fill_args = None
        if fill:
            first = parts[0]
            plus = first.k1 + 1.0 if first.weighting == "bm25okapi" else 1.0
            al = _kernels.array_list
            self.fill_args = (
                self.layout.IP, self.layout.R,   # (every tier is filled: fill and items match)
                al(cache, "fill.values", [t.values for t, *_ in fill], np.float32),
                al(cache, "fill.doclen", [x[1] for x in fill], np.float64),
                al(cache, "fill.idf", [x[2] for x in fill], np.float64),
                np.array([x[3] for x in fill], dtype=np.float64), first.k1, first.b, plus,
                al(cache, "fill.filled", [x[4].filled for x in fill], np.bool_, writable=True),
                al(cache, "fill.weights", [x[4].weights for x in fill], np.float32, writable=True),
                al(cache, "fill.maxw", [x[4].maxw for x in fill], np.float32, writable=True))
        al = _kernels.array_list
        self.locate_args = (al(cache, "keys", [p._slots.keys for p in parts], np.int64),
                            al(cache, "krows", [p._slots.rows for p in parts], np.int64),
                            np.array([p._slots.n for p in parts], dtype=np.int64),
                            al(cache, "alive", [p._alive for p in parts], np.bool_),
                            np.array(offs, dtype=np.int64))

    def fill(self, terms: np.ndarray) -> None:
        """BM25 weights of ``terms`` in every tier where not yet computed (one compiled call),
        under every part's lock: no search reads a weight before it is written."""
        if self.fill_args is None:
            return
        locks = [p._merge_lock for p in self.parts]
        for lock in locks:
            lock.acquire()
        try:
            _kernels.bm25_fill_tiers(*self.fill_args, terms)
        finally:
            for lock in reversed(locks):
                lock.release()

    def rows_of(self, slots: np.ndarray) -> np.ndarray:
        """Index row of each slot (-1 where no part holds it alive)."""
        keys, krows, n_keys, alive, offs = self.locate_args
        return _kernels.locate(keys, krows, n_keys, alive, offs, slots)


def _expand_offsets(terms: np.ndarray, offsets: np.ndarray, nnz: int, terms_path: Path,
                    offsets_path: Path) -> np.ndarray:
    """Per-term offsets over every term id up to the largest present, from the ``terms`` that
    have postings and their ``offsets`` (``len(terms) + 1``, from 0 to ``nnz``); checked so
    that a damaged file cannot ask for unbounded memory."""
    if terms.dtype != np.int64 or offsets.dtype != np.int64 or len(offsets) != len(terms) + 1:
        raise IndexFormatError(f"sparse index file {offsets_path}: {len(offsets)} offsets of dtype {offsets.dtype} "
                               f"for {len(terms)} terms of dtype {terms.dtype} in {terms_path.name}")
    t, o = np.asarray(terms), np.asarray(offsets)
    if len(o) < 1 or o[0] != 0 or o[-1] != nnz or np.any(o[1:] <= o[:-1]):
        raise IndexFormatError(f"sparse index file {offsets_path}: offsets must rise from 0 to {nnz}, one or "
                               "more postings per term (they decrease or stand still)")
    # Term ids are increasing; a vocabulary far larger than the terms stored is damage.
    limit = max(1 << 24, 64 * len(t))
    if len(t) and (t[0] < 0 or t[-1] >= limit or np.any(t[1:] <= t[:-1])):
        raise IndexFormatError(f"sparse index file {terms_path}: term ids must increase, from 0, below {limit}")
    vocab = int(t[-1]) + 1 if len(t) else 0
    counts = np.zeros(vocab, dtype=np.int64)
    counts[t] = np.diff(o)
    full = np.zeros(vocab + 1, dtype=np.int64)
    np.cumsum(counts, out=full[1:])
    return full


def _open_npy(directory: Path, files: dict[str, str], role: str) -> np.ndarray:
    """The ``.npy`` of ``role``, memory-mapped read-only; any unreadable file (missing, bad
    header, truncated) raises IndexFormatError naming it."""
    if role not in files:
        raise IndexFormatError(f"sparse index files lack {role!r}; got roles {sorted(files)}")
    path = directory / files[role]
    if not path.is_file():
        raise IndexFormatError(f"sparse index file {path} is missing")
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:   # numpy's header parser raises many types (ValueError, EOFError, tokenize.TokenError...)
        raise IndexFormatError(f"sparse index file {path} is unreadable: {type(exc).__name__}: {exc}") from exc
    if not isinstance(a, np.ndarray) or a.ndim != 1:
        raise IndexFormatError(f"sparse index file {path} holds shape {getattr(a, 'shape', None)}; expected 1-D")
    return a


def _check_slots_file(slots: np.ndarray, path: Path) -> int:
    """Number of rows; raises unless slots are int64, >= 0 and distinct."""
    if slots.dtype != np.int64:
        raise IndexFormatError(f"sparse index file {path}: slots have dtype {slots.dtype}, expected int64")
    n = len(slots)
    if n:
        s = np.asarray(slots)
        if s.min() < 0:
            raise IndexFormatError(f"sparse index file {path}: negative slot {int(s.min())}")
        if not np.all(s[1:] > s[:-1]):   # saved in increasing order unless adds came out of order
            srt = np.sort(s)
            if np.any(srt[1:] == srt[:-1]):
                raise IndexFormatError(f"sparse index file {path}: slot {int(srt[1:][srt[1:] == srt[:-1]][0])} "
                                       "is held by two rows")
    return n


def _check_postings(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, n_rows: int, bm25: bool,
                    paths: dict[str, Path]) -> None:
    """Raises IndexFormatError (naming the file) unless the postings are a valid CSR by term
    over ``n_rows`` rows; see :meth:`SparseIndex.load`."""
    def bad(role: str, what: str) -> IndexFormatError:
        return IndexFormatError(f"sparse index file {paths[role]}: {what}")

    if indptr.dtype != np.int64:
        raise bad("indptr", f"dtype {indptr.dtype}, expected int64")
    if indices.dtype not in (np.int32, np.int64):
        raise bad("indices", f"dtype {indices.dtype}, expected int32 or int64")
    if values.dtype != np.float32:
        raise bad("values", f"dtype {values.dtype}, expected float32")
    nnz = len(indices)
    if len(indptr) < 1 or indptr[0] != 0 or indptr[-1] != nnz:
        raise bad("indptr", f"offsets must run from 0 to {nnz} (the postings in {paths['indices'].name}), "
                            f"got {int(indptr[0]) if len(indptr) else None}..{int(indptr[-1]) if len(indptr) else None}")
    ip = np.asarray(indptr)
    if np.any(ip[1:] < ip[:-1]):
        raise bad("indptr", "offsets decrease")
    if len(values) != nnz:
        raise bad("values", f"{len(values)} values for {nnz} postings")
    starts = ip[1:-1]   # where each term but the first begins: the row ids may go down there
    for a in range(0, nnz, _CHECK_CHUNK):
        e = min(a + _CHECK_CHUNK, nnz)
        lo = max(a - 1, 0)   # one posting of overlap: the order check spans chunk borders
        rows = np.asarray(indices[lo:e])
        if rows.min() < 0 or rows.max() >= n_rows:
            raise bad("indices", f"row ids must be in [0, {n_rows}), got {int(rows.min())}..{int(rows.max())}")
        up = rows[1:] > rows[:-1]   # up[i]: posting lo + 1 + i has a larger row than the one before
        up[starts[np.searchsorted(starts, lo, side="right"):np.searchsorted(starts, e)] - lo - 1] = True
        if not up.all():
            raise bad("indices", "row ids do not increase within a term")
        v = np.asarray(values[a:e])
        lowest, highest = v.min(), v.max()   # NaN propagates into both
        if not (math.isfinite(lowest) and math.isfinite(highest)) or (bm25 and not lowest > 0):
            raise bad("values", "term counts must be finite and > 0" if bm25 else "weights must be finite")


def _check_doclen(doclen: np.ndarray, n_rows: int, path: Path) -> np.ndarray:
    if doclen.dtype != np.float64 or len(doclen) != n_rows:
        raise IndexFormatError(f"sparse index file {path}: {len(doclen)} lengths of dtype {doclen.dtype}, "
                               f"expected {n_rows} float64")
    d = np.array(doclen)
    if n_rows and not (d.min() >= 0 and np.isfinite(d.sum())):
        raise IndexFormatError(f"sparse index file {path}: lengths must be finite and >= 0")
    return d



class SparseIndex:
    """Exact top-k over sparse vectors with an inverted index (see the module docstring)."""

    #: ``search`` returns, for each slot it returns, the score ``score`` gives it, bit for bit
    #: (both sum a row's postings term by term in float32 with the same weights): the planner
    #: takes a mode's first-stage scores as exact and rescoring only what other modes found
    #: (``tests/test_sparse_store.py::test_search_scores_are_score_bit_for_bit``).
    search_scores_exact = True

    def __init__(self, weighting: str = "none", k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25) -> None:
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"weighting={weighting!r} is unknown; choose one of {list(WEIGHTINGS)}")
        for name, v in (("k1", k1), ("b", b), ("epsilon", epsilon)):
            if isinstance(v, bool) or not isinstance(v, _NUM_TYPES) or not math.isfinite(v):
                raise ConfigError(f"{name} must be a finite number, got {v!r}")
        if k1 < 0:
            raise ConfigError(f"k1 must be >= 0, got {k1}")
        if not 0 <= b <= 1:
            raise ConfigError(f"b must be in [0, 1], got {b}")
        self.weighting, self.k1, self.b, self.epsilon = weighting, float(k1), float(b), float(epsilon)
        self._bm25 = weighting != "none"
        self._vocab = 0                                   # max term id + 1 seen
        self._n_rows = 0                                  # rows ever added (live + dead, before compaction)
        self._row_slots = np.zeros(0, dtype=np.int64)     # row -> slot
        self._alive = np.zeros(0, dtype=bool)             # row -> live
        self._doclen = np.zeros(0, dtype=np.float64)      # row -> sum of counts (BM25)
        self._slots = SlotMap()                          # slot -> row (also of removed rows)
        self._n_live = 0
        self._n_dead_main = 0
        self._export_cache: tuple[int, sp.csr_matrix] | None = None   # export(): (stats version, rows)
        self._main: _Tier | None = None                   # rows [0, _main_end)
        self._delta: _Tier | None = None                  # rows [_main_end, _delta_end)
        self._main_end = 0
        self._delta_end = 0
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (rows, terms, values)
        self._stats_version = 0
        self._idf: np.ndarray | None = None
        self._idf_nonneg = True
        self._idf_version = -1
        # (live rows, df, total length) of the live rows (term_stats), and the rows removed since
        # it was computed, applied when it is next needed (_own_stats)
        self._own: tuple[int, np.ndarray, float] | None = None
        self._own_gone: list[np.ndarray] = []
        self._global: tuple[int, np.ndarray, float] | None = None   # set_global_stats
        # Searches merge pending adds lazily (_flush): concurrent searches take turns at that,
        # so the first searches after an add may run on several threads at once.
        self._merge_lock = threading.RLock()
        self._lists: dict = {}   # the kernels' typed lists of this index's arrays (_kernels.array_list)
        self._prepared: tuple | None = None   # the last _prepare: (its key, its result)

    # ------------------------------------------------------------------ sizes

    def __len__(self) -> int:
        return self._n_live

    @property
    def vocab_size(self) -> int:
        """Largest term id seen + 1."""
        return self._vocab

    @property
    def nbytes(self) -> int:
        """Bytes held by the index arrays (postings, weights, per-row and per-slot arrays)."""
        total = sum(a.nbytes for a in (self._row_slots, self._alive, self._doclen)) + self._slots.nbytes
        for t in (self._main, self._delta):
            if t is not None:
                total += t.indptr.nbytes + t.indices.nbytes + t.values.nbytes
                if t.bm25 is not None:
                    total += t.bm25.weights.nbytes
        total += sum(r.nbytes + tt.nbytes + v.nbytes for r, tt, v in self._pending)
        return int(total)

    # ------------------------------------------------------------------ writes

    def add(self, slots: np.ndarray | Sequence[int], rows: Any) -> None:
        """Append rows: ``rows[i]`` (``{term id: weight}``, may be empty) gets ``slots[i]``.

        ``rows`` may also be a scipy sparse matrix of shape (n, vocab). For BM25
        weightings the weights are term counts (>= 0).
        """
        slots = self._check_slots(slots)
        rid, terms, vals, n = _rows_to_coo(rows, "rows")
        if n != len(slots):
            raise ValueError(f"got {len(slots)} slots for {n} rows; pass one slot per row")
        if self._bm25 and len(vals) and vals.min() < 0:
            raise ValueError(f"weighting={self.weighting!r} stores term counts; got a negative count {vals.min()}")
        if n == 0:
            return
        if len(np.unique(slots)) != n:
            raise ValueError("slots contain duplicates; each row needs its own slot")
        held = self._live_rows_of(slots)
        if np.any(held >= 0):
            dup = slots[held >= 0][0]
            raise ValueError(f"slot {int(dup)} is already in the index; remove it first (slots are never reused)")
        nz = vals != 0
        rid, terms, vals = rid[nz], terms[nz], vals[nz]
        start = self._n_rows
        self._grow_rows(start + n)
        self._row_slots[start:start + n] = slots
        self._alive[start:start + n] = True
        if self._bm25:
            self._doclen[start:start + n] = np.bincount(rid, weights=vals, minlength=n)
        self._n_rows += n
        if not self._slots.append(slots, np.arange(start, start + n)):
            self._reindex_slots()
        self._n_live += n
        if len(terms):
            self._vocab = max(self._vocab, int(terms.max()) + 1)
            self._pending.append((rid + start, terms, vals))
        self._own, self._own_gone = None, []
        self._stats_version += 1

    def remove(self, slots: np.ndarray | Sequence[int]) -> None:
        """Drop rows by slot; unknown slots are ignored."""
        rows = self._live_rows_of(self._check_slots(slots))
        rows = np.unique(rows[rows >= 0])
        if len(rows) == 0:
            return
        if self._own is None and self._n_live == self._n_rows and not self._pending:
            self._own_stats()   # no row removed yet (a loaded segment): O(terms + rows)
        if self._own is not None:
            self._own_gone.append(rows)
        self._alive[rows] = False
        self._n_live -= len(rows)
        self._n_dead_main += int(np.count_nonzero(rows < self._main_end))
        self._stats_version += 1

    def export(self, slots: np.ndarray | Sequence[int]) -> sp.csr_matrix:
        """The stored rows of live ``slots``, in their order, as ``add`` takes them (a float32
        CSR matrix ``(n, vocab_size)``; BM25 rows are term counts): to copy rows into another
        store (:meth:`hybridrag.index.HybridIndex.migrate`). The first call makes a row-major
        copy of the postings (as large as they are), kept until the rows change.
        ``KeyError`` names absent slots."""
        slots = self._check_slots(slots)
        self._flush()
        rows = self._live_rows_of(slots)
        if np.any(rows < 0):
            raise KeyError(f"slots not in the index: {slots[rows < 0][:10].tolist()}")
        cached = self._export_cache
        if cached is None or cached[0] != self._stats_version:
            n, vocab = self._n_rows, max(self._vocab, 1)
            by_row = sp.csr_matrix((n, vocab), dtype=np.float32)
            for t in (self._main, self._delta):
                if t is not None and t.nnz:
                    by_term = sp.csr_matrix((t.values, t.indices, t.padded_indptr(vocab)), shape=(vocab, n))
                    by_row = by_row + by_term.T.tocsr()
            cached = self._export_cache = (self._stats_version, by_row)
        out = cached[1][rows]
        out.sort_indices()
        return out

    # ------------------------------------------------------------------ reads

    def search(self, queries: Any, k: int, allowed: np.ndarray | None = None,
               threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k: ``(scores float32 [nq, k], slots int64 [nq, k])``, padded with -inf / -1.

        ``queries``: list of ``{term id: weight}`` (BM25: query term counts) or a
        scipy sparse matrix. ``allowed``: boolean mask by slot, or None.
        ``threads``: threads for the queries the numba kernel scores by dense accumulation
        (those whose postings reach 1/32 of the rows; the kernel releases the GIL). ``None``
        uses every core when each thread gets >= 8 such queries; ``1`` scores everything on
        the calling thread. Results do not depend on it.
        """
        k = _check_k(k)
        threads = _check_threads(threads)
        q = self._query_matrix(queries)
        nq = q.nq
        out_s = np.full((nq, k), -np.inf, dtype=np.float32)
        out_i = np.full((nq, k), -1, dtype=np.int64)
        if k == 0 or nq == 0 or self._n_live == 0 or q.nnz == 0:
            self._valid_rows(allowed)   # still reject a bad mask
            return out_s, out_i
        self._flush()   # may renumber rows: mask after
        snap = self._prepare(q.indices)
        # with the compiled kernel, queries with many postings go to it; all others (every
        # query without numba) are scored by scipy's sparse product
        heavy = self._heavy_queries(q, snap) if _kernels.AVAILABLE else np.zeros(nq, dtype=bool)
        light = np.flatnonzero(~heavy)
        results = []   # sparse products of the light queries, one per tier
        if len(light):
            results = [t_q @ w for t_q, w in self._tier_products(q.csr(None if len(light) == nq else light), snap)]
        valid = self._valid_rows(allowed)
        all_valid = allowed is None and self._n_live == self._n_rows
        if heavy.any():
            which = np.flatnonzero(heavy)
            # no Python work per query holds the GIL in the kernel: threads pay off at any size;
            # the kernel splits its one call itself, after the shared set-up
            nt = threads or max(1, min(_NCPU, len(which) // _MIN_PER_THREAD))
            self._search_dense(q, which, k, None if all_valid else valid, out_s, out_i, threads=nt, snap=snap)
        for j, i in enumerate(light):   # j: row of ``ql`` and ``results``; i: output row
            cols_l, data_l = [], []
            for r in results:
                a, e = r.indptr[j], r.indptr[j + 1]
                cols_l.append(r.indices[a:e])
                data_l.append(r.data[a:e])
            cols = np.concatenate(cols_l) if len(cols_l) > 1 else cols_l[0]
            data = np.concatenate(data_l) if len(data_l) > 1 else data_l[0]
            if not all_valid:
                m = valid[cols]
                cols, data = cols[m], data[m]
            if len(cols) == 0:
                continue
            ts, ti = topk(data[None, :], self._row_slots[cols][None, :], k)
            out_s[i], out_i[i] = ts[0], ti[0]
        return out_s, out_i

    def _tiers_nonneg(self, snap: list[tuple[_Tier, np.ndarray, np.ndarray | None]]
                      ) -> list[tuple[_Tier, np.ndarray, np.ndarray | None]] | None:
        """``snap`` (see :meth:`_prepare`) when every weight is >= 0 (else None: scores may cancel)."""
        if self._bm25:   # a weight is its term's idf times a positive factor
            with self._merge_lock:
                self._idf_current()
                return snap if self._idf_nonneg else None
        for t, w, _ in snap:
            if t.nonneg_of is not w:
                t.nonneg, t.nonneg_of = bool(len(w) == 0 or w.min() >= 0), w
            if not t.nonneg:
                return None
        return snap

    def _heavy_queries(self, q: _Queries, snap: list | None = None) -> np.ndarray:
        """Queries (bool [nq]) to score with a dense accumulator: positive weights, many postings."""
        tiers = self._tiers_nonneg(self._prepare(q.indices) if snap is None else snap)
        if tiers is None or q.nnz == 0:
            return np.zeros(q.nq, dtype=bool)
        if self._n_rows <= _SMALL_ROWS:   # every query (without postings it finds nothing there either)
            heavy = np.ones(q.nq, dtype=bool)
        else:
            # Per query, from cumulative sums over its (term, weight) pairs: its postings in
            # every tier (a term a tier lacks maps to indptr[vocab] twice: none).
            cum = np.zeros(q.nnz + 1, dtype=np.int64)
            for t, _, _ in tiers:
                lo = np.minimum(q.indices, t.vocab)
                cum[1:] += t.indptr[np.minimum(lo + 1, t.vocab)] - t.indptr[lo]
            np.cumsum(cum, out=cum)
            per_q = cum[q.indptr[1:]] - cum[q.indptr[:-1]]
            heavy = (per_q > 0) & (per_q * _DENSE_RATIO >= max(self._n_rows, 1))
        if q.data.min() <= 0:   # rare (BM25 query weights are counts): drop those queries
            nonpos = np.zeros(q.nnz + 1, dtype=np.int64)
            np.cumsum(q.data <= 0, out=nonpos[1:])
            heavy &= nonpos[q.indptr[1:]] == nonpos[q.indptr[:-1]]
        return heavy

    def _search_dense(self, q: _Queries, which: np.ndarray, k: int, valid: np.ndarray | None,
                      out_s: np.ndarray, out_i: np.ndarray, threads: int = 1, snap: list | None = None) -> None:
        """Top-k of queries ``which`` by dense accumulation in the numba kernel, one compiled
        call for them all (``_kernels.dense_top_k``; weights all >= 0, see _heavy_queries;
        ``threads`` runs of it at once)."""
        tiers = self._tiers_nonneg(self._prepare(q.indices) if snap is None else snap) or []
        if len(which) == 0 or not tiers:
            return
        invalid = None if valid is None else np.flatnonzero(~valid)
        _Layout(self._kernel_items(tiers, 0), self._n_rows, self._lists,
                self._bm25 and self._n_rows >= _PRUNE_MIN_ROWS).search(q, which, k, invalid, out_s, out_i, threads)

    @classmethod
    def search_parts(cls, parts: Sequence[SparseIndex], queries: Any, k: int, allowed: np.ndarray | None = None,
                     cache: dict | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """:meth:`search` over several segments of one index (sharing its statistics, see
        :meth:`set_global_stats`) as over one index holding their rows: their tiers laid end
        to end in one compiled pass with one top k, so a search of many small segments costs
        about what one of their total size does (a search per segment and a merge cost their
        Python set-up each and find each segment's own top k). ``cache``: a dict kept by the
        caller across searches of the same segments (the kernels' typed lists). None when the
        kernel is off or a weight is negative: the caller then searches each segment."""
        k = _check_k(k)
        if not _kernels.AVAILABLE or not parts:
            return None
        q = queries if isinstance(queries, _Queries) else cls.queries_for(queries, parts)
        nq = q.nq
        out_s = np.full((nq, k), -np.inf, dtype=np.float32)
        out_i = np.full((nq, k), -1, dtype=np.int64)
        if k == 0 or nq == 0 or q.nnz == 0:
            for p in parts:
                p._valid_rows(allowed)   # still reject a bad mask
            return out_s, out_i
        if q.data.min() <= 0:
            return None
        view = cls._view(parts, cache)
        if not view.nonneg:
            return None
        if view.layout.n == 0 or not view.layout.off.shape[0]:
            for p in parts:
                p._valid_rows(allowed)
            return out_s, out_i
        view.fill(q.indices)
        if allowed is None:
            invalid = view.invalid
        else:
            bad = [np.flatnonzero(~p._valid_rows(allowed)) + o for p, o in zip(parts, view.offs)]
            invalid = np.concatenate(bad)
        nt = max(1, min(_NCPU, nq // _MIN_PER_THREAD))
        view.layout.search(q, np.arange(nq), k, invalid, out_s, out_i, nt)
        return out_s, out_i

    @classmethod
    def _view(cls, parts: Sequence[SparseIndex], cache: dict | None) -> _View:
        """The :class:`_View` of ``parts`` kept in ``cache`` (a new one when a part changed)."""
        if cache is None:
            return _View(parts, {})
        got = cache.get("view")
        if got is None or not got.current(parts):
            got = cache["view"] = _View(parts, cache)
        return got

    @classmethod
    def score_parts(cls, parts: Sequence[SparseIndex], queries: Any, candidates: Sequence[np.ndarray],
                    cache: dict | None = None) -> list[np.ndarray] | None:
        """:meth:`score` over several segments of one index, as :meth:`search_parts`: each slot
        found in the segment that holds it alive and scored in one compiled call per query.
        None when the kernel is off (the caller then scores each segment)."""
        if not _kernels.AVAILABLE or not parts:
            return None
        q = queries if isinstance(queries, _Queries) else cls.queries_for(queries, parts)
        if len(candidates) != q.nq:
            raise ValueError(f"got {len(candidates)} candidate arrays for {q.nq} queries")
        view = cls._view(parts, cache)
        view.fill(q.indices)
        out = []
        for i, cand in enumerate(candidates):
            a, e = q.indptr[i], q.indptr[i + 1]
            out.append(view.layout.score(q.indices[a:e], q.data[a:e], view.rows_of(cls._check_slots(cand))))
        return out

    def _kernel_items(self, snap: list, offset: int) -> list[tuple]:
        """Each tier of ``snap`` (see :meth:`_prepare`) as :class:`_Layout` takes it, its rows
        placed at index rows ``offset:offset + rows``."""
        return [(t, w, mw, offset, offset + self._n_rows, self._row_slots) for t, w, mw in snap]

    def score(self, queries: Any, candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Exact scores (float32) of the given slots per query; 0 for no shared term,
        -inf for slots not in the index."""
        q = self._query_matrix(queries)
        if len(candidates) != q.nq:
            raise ValueError(f"got {len(candidates)} candidate arrays for {q.nq} queries")
        self._flush()
        snap = self._prepare(q.indices)
        tiers = [(t, w) for t, w, _ in snap]
        layout = _Layout(self._kernel_items(snap, 0), self._n_rows, self._lists, False) if _kernels.AVAILABLE else None
        out = []
        for i, cand in enumerate(candidates):
            rows = self._live_rows_of(self._check_slots(cand))
            acc = np.zeros(len(cand), dtype=np.float32)
            a, e = q.indptr[i], q.indptr[i + 1]
            if layout is not None:
                # One compiled call: the numpy loop below costs ~8 numpy calls per query term.
                out.append(layout.score(q.indices[a:e], q.data[a:e], rows))
                continue
            ok = np.flatnonzero(rows >= 0)
            r_ok = rows[ok]
            for t_id, qw in zip(q.indices[a:e], q.data[a:e]):   # same order and precision as search()
                for tier, w in tiers:
                    if t_id >= tier.vocab:
                        continue
                    lo, hi = tier.indptr[t_id], tier.indptr[t_id + 1]
                    if lo == hi:
                        continue
                    seg = tier.indices[lo:hi]
                    pos = np.searchsorted(seg, r_ok)
                    hit = pos < len(seg)
                    hit[hit] = seg[pos[hit]] == r_ok[hit]
                    acc[ok[hit]] += qw * w[lo + pos[hit]]
            acc[rows < 0] = -np.inf
            out.append(acc)
        return out

    # ------------------------------------------------------------------ segments

    def empty_like(self) -> SparseIndex:
        """A new empty index with the same settings (weighting, k1, b, epsilon); global
        statistics are not carried over (see :meth:`set_global_stats`)."""
        return type(self)(self.weighting, self.k1, self.b, self.epsilon)

    def term_stats(self) -> tuple[int, np.ndarray, float]:
        """This index's own BM25 statistics over its live rows: ``(rows, df, total length)``;
        ``df`` is float64 ``[vocab_size]``, the live rows holding each term; the total length
        is the sum of the live rows' term counts (0 with weighting ``"none"``). Summed over
        segments (``df`` zero-padded to the longest), they are the statistics of their union,
        for :meth:`set_global_stats`. Ignores any statistics set there."""
        self._flush()
        return self._own_stats()

    def set_global_stats(self, stats: tuple[int, np.ndarray, float] | None) -> None:
        """Score with these BM25 statistics ``(rows N, df per term id, total length)`` (as
        :meth:`term_stats` gives, summed over the segments of one index) instead of this index's
        own: idf from N and df, avgdl = total / N. ``df`` may be longer or shorter than this
        index's vocabulary (terms past it count as df 0). ``None``: back to the index's own
        statistics. Later adds and removes do not change statistics set here. No effect on the
        scores of weighting ``"none"``."""
        if stats is None:
            if self._global is not None:
                with self._merge_lock:
                    self._global = None
                    self._stats_version += 1
            return
        if not isinstance(stats, tuple) or len(stats) != 3:
            raise TypeError(f"stats must be a tuple (rows, df, total length) or None, got {type(stats).__name__}")
        big_n, df, total = stats
        if isinstance(big_n, bool) or not isinstance(big_n, _INT_TYPES) or big_n < 0:
            raise ValueError(f"stats rows must be an int >= 0, got {big_n!r}")
        if isinstance(total, bool) or not isinstance(total, _NUM_TYPES) or not math.isfinite(total) or total < 0:
            raise ValueError(f"stats total length must be a finite number >= 0, got {total!r}")
        df = np.array(df, dtype=np.float64)   # a copy: the caller's array may change
        if df.ndim != 1:
            raise ValueError(f"stats df must be 1-D (one count per term id), got shape {df.shape}")
        if len(df) and not (np.all(np.isfinite(df)) and df.min() >= 0 and df.max() <= big_n):
            raise ValueError(f"stats df must be finite counts in [0, rows={big_n}]; got values in "
                             f"[{df.min()}, {df.max()}]")
        g = self._global
        if g is not None and g[0] == big_n and g[2] == float(total) and np.array_equal(g[1], df):
            return   # unchanged: keep the computed weights
        df.flags.writeable = False
        with self._merge_lock:   # not in the middle of a search's _prepare
            self._global = (int(big_n), df, float(total))
            self._stats_version += 1

    @classmethod
    def merge(cls, parts: Sequence[SparseIndex]) -> SparseIndex:
        """One new in-memory index holding the live rows of ``parts`` (same settings, disjoint
        slots), with their stored values bit for bit, so its search and score results equal
        those of the parts merged (under the same statistics). Rows keep the parts' order.
        Vectorised over postings: O(postings + parts x vocabulary). The parts are not changed
        (their pending adds are merged into their tiers, as a search does)."""
        parts = list(parts)
        if not parts:
            raise ValueError("merge needs at least one SparseIndex")
        for p in parts:
            if not isinstance(p, SparseIndex):
                raise TypeError(f"merge takes SparseIndex parts, got {type(p).__name__}")
        cfg = parts[0].config()
        for p in parts[1:]:
            if p.config() != cfg:
                raise ValueError(f"cannot merge indexes with different settings: {cfg} and {p.config()}")
        out = parts[0].empty_like()
        slots_l, doclen_l = [], []
        sources = []   # (indptr, rows within the part, values, row offset) per tier with postings
        offset = 0
        for p in parts:
            p._flush()
            n = p._n_rows
            alive = p._alive[:n]
            live = np.flatnonzero(alive)
            slots_l.append(p._row_slots[live])
            doclen_l.append(p._doclen[live])
            remap = None if len(live) == n else np.cumsum(alive, dtype=np.int64) - 1
            for t in (p._main, p._delta):
                if t is None or t.nnz == 0:
                    continue
                if remap is None:
                    sources.append((np.asarray(t.indptr, dtype=np.int64), t.indices, t.values, offset))
                    continue
                keep = alive[t.indices]
                ck = np.zeros(t.nnz + 1, dtype=np.int64)
                np.cumsum(keep, out=ck[1:])
                sources.append((ck[t.indptr], remap[t.indices[keep]], t.values[keep], offset))
            offset += len(live)
        row_slots = np.concatenate(slots_l)
        if len(np.unique(row_slots)) != len(row_slots):
            raise ValueError("merge parts share slots; each live slot must be in one part only")
        vocab = max(p._vocab for p in parts)
        counts = np.zeros(vocab, dtype=np.int64)
        for ip, *_ in sources:
            counts[: len(ip) - 1] += np.diff(ip)
        indptr = np.zeros(vocab + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        nnz = int(indptr[-1])
        indices = np.empty(nnz, dtype=np.int32 if offset < 2**31 - 1 else np.int64)
        values = np.empty(nnz, dtype=np.float32)
        before = indptr[:-1].copy()   # where the next source's postings of each term go
        for ip, rows, vals, off in sources:
            v = len(ip) - 1
            c = np.diff(ip)
            pos = np.repeat(before[:v] - ip[:-1], c) + np.arange(len(rows), dtype=np.int64)   # ip[0] is 0
            indices[pos] = rows + off if off else rows
            values[pos] = vals
            before[:v] += c
        out._vocab = vocab
        out._row_slots = row_slots
        out._alive = np.ones(offset, dtype=bool)
        out._doclen = np.concatenate(doclen_l).astype(np.float64, copy=False)
        out._n_rows = out._n_live = offset
        out._reindex_slots()
        out._main = _Tier(indptr, indices, values) if nnz else None
        out._main_end = out._delta_end = offset
        out._stats_version += 1
        return out

    # ------------------------------------------------------------------ persistence

    def config(self) -> dict[str, Any]:
        """Settings that change scores; ``SparseIndex(**{k: cfg[k] for k in PARAMS})`` rebuilds it."""
        return {"type": "sparse", "format_version": FORMAT_VERSION, "weighting": self.weighting,
                "k1": self.k1, "b": self.b, "epsilon": self.epsilon}

    def save(self, directory: str | Path, tag: str) -> dict[str, str]:
        """Write the live rows to new ``.npy`` files named with ``tag``; returns ``{role: filename}``.

        Roles: ``indptr`` (int64 [vocab + 1]), ``indices`` (row of each posting, int32, or int64
        from 2**31 rows), ``values`` (float32), ``slots`` (int64, one per row) and, for BM25,
        ``doclen`` (float64, each row's length), so that :meth:`load` does not sum every posting."""
        if not isinstance(tag, str) or not tag or "/" in tag or "\\" in tag:
            raise ValueError(f"tag must be a non-empty file-name-safe str, got {tag!r}")
        self._consolidate()
        main = self._main if self._main is not None else _Tier(np.zeros(self._vocab + 1, np.int64),
                                                               np.zeros(0, np.int32), np.zeros(0, np.float32))
        # Only the terms that have postings are written (a segment of one document in a large
        # index would otherwise write one offset per vocabulary term): ``terms`` and their offsets.
        counts = np.diff(main.indptr)
        terms = np.flatnonzero(counts)
        offsets = np.zeros(len(terms) + 1, dtype=np.int64)
        np.cumsum(counts[terms], out=offsets[1:])
        arrays = {"terms": terms.astype(np.int64), "indptr": offsets, "indices": main.indices, "values": main.values,
                  "slots": self._row_slots[: self._n_rows]}
        if self._bm25:
            arrays["doclen"] = self._doclen[: self._n_rows]
        # new_file refuses to overwrite (a manifest may reference the file) and renames into place
        return {role: write_npy(directory, f"sparse-{tag}-{role}.npy", arr) for role, arr in arrays.items()}

    @classmethod
    def load(cls, directory: str | Path, files: dict[str, str], config: dict[str, Any], *,
             slot_limit: int | None = None) -> "SparseIndex":
        """Open an index written by :meth:`save`; postings are memory-mapped read-only.

        Cost: the structural checks below, vectorised over the index arrays (one pass over
        ``indices`` and ``values``, none over a per-posting sum: document lengths come from the
        ``doclen`` file; files written before it existed get them summed from the postings).
        A file that fails them raises :class:`IndexFormatError` naming it, so that no later
        search, score or remove can read out of bounds (the compiled kernels do no bounds
        checks): ``indptr`` 1-D int64 from 0, non-decreasing, up to ``len(indices)``; rows
        ``indices`` int32/int64 in ``[0, len(slots))``, increasing within each term; ``values``
        float32 of the same length, finite (BM25: > 0, stored counts); ``slots`` int64,
        non-negative, distinct; ``doclen`` float64, one per row, finite, >= 0. Damage these
        checks cannot see (a changed weight, count or length) gives wrong but finite scores."""
        if config.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise IndexFormatError(f"sparse index format {config.get('format_version')} is newer than "
                                   f"this library reads ({FORMAT_VERSION}); upgrade hybridrag")
        self = cls(**{k: config[k] for k in ("weighting", "k1", "b", "epsilon") if k in config})
        directory = Path(directory)
        roles = ("indptr", "indices", "values", "slots") + (("doclen",) if self._bm25 and "doclen" in files else ())
        arr = {role: _open_npy(directory, files, role) for role in roles}
        indptr, indices, values, slots = arr["indptr"], arr["indices"], arr["values"], arr["slots"]
        if "terms" in files:   # offsets of the terms present only (see save)
            indptr = _expand_offsets(_open_npy(directory, files, "terms"), indptr, len(indices),
                                     directory / files["terms"], directory / files["indptr"])
        n = _check_slots_file(slots, directory / files["slots"])
        if slot_limit is not None and n and int(np.max(slots)) >= slot_limit:
            raise IndexFormatError(f"sparse index file {directory / files['slots']}: slot {int(np.max(slots))} "
                                   f"is past the index's last slot ({slot_limit - 1})")
        _check_postings(indptr, indices, values, n, self._bm25,
                        {role: directory / files[role] for role in ("indptr", "indices", "values")})
        self._vocab = len(indptr) - 1
        self._row_slots = np.array(slots, dtype=np.int64)
        self._alive = np.ones(n, dtype=bool)
        self._n_rows = self._n_live = n
        self._reindex_slots()
        if "doclen" in arr:
            self._doclen = _check_doclen(arr["doclen"], n, directory / files["doclen"])
        elif self._bm25:   # written before the doclen file: sum the counts (one pass over the postings)
            self._doclen = np.bincount(np.asarray(indices), weights=np.asarray(values, dtype=np.float64),
                                       minlength=n).astype(np.float64)
        else:
            self._doclen = np.zeros(n, dtype=np.float64)
        if len(indices):
            self._main = _Tier(indptr, indices, values)
        self._main_end = self._delta_end = n
        return self

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _check_slots(slots: Any) -> np.ndarray:
        a = np.asarray(slots)
        if a.ndim != 1:
            raise ValueError(f"slots must be a 1-D integer array, got shape {a.shape}")
        if len(a) == 0:
            return a.astype(np.int64)
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"slots must be integers, got dtype {a.dtype}")
        if a.min() < 0:
            raise ValueError(f"slots must be >= 0, got {int(a.min())}")
        return a.astype(np.int64, copy=False)

    def _live_rows_of(self, slots: np.ndarray) -> np.ndarray:
        """Row of each slot (int64), -1 for a slot that no live row holds."""
        rows = self._slots.lookup(slots)
        dead = rows >= 0
        dead[dead] = ~self._alive[rows[dead]]
        rows[dead] = -1
        return rows

    def _reindex_slots(self) -> None:
        """Rebuild the slot map from the live rows."""
        live = np.flatnonzero(self._alive[: self._n_rows])
        self._slots = SlotMap(self._row_slots[live], live)

    def _grow_rows(self, n: int) -> None:
        cap = len(self._row_slots)
        if n <= cap:
            return
        new_cap = max(n, 2 * cap, 1024)
        for name, fill in (("_row_slots", -1), ("_alive", False), ("_doclen", 0.0)):
            old = getattr(self, name)
            new = np.full(new_cap, fill, dtype=old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def _flush(self) -> None:
        """Merge pending rows into the delta tier; fold delta into main when it is large."""
        with self._merge_lock:
            self._flush_unlocked()

    def _flush_unlocked(self) -> None:
        self._flush_pending_only()
        self._delta_end = self._n_rows
        if self._delta is not None and (self._main is None or 4 * self._delta.nnz > self._main.nnz):
            self._main = self._delta if self._main is None else _merge_tiers(self._main, self._delta, self._vocab)
            self._delta = None
            self._n_dead_main = int(self._n_rows - np.count_nonzero(self._alive[: self._n_rows]))
            self._main_end = self._n_rows
        if self._main is not None and self._delta is None and 4 * self._n_dead_main > max(self._main_end, 1):
            self._consolidate_unlocked()

    def _consolidate(self) -> None:
        """Everything into one main tier, without dead rows (renumbers rows)."""
        with self._merge_lock:
            self._consolidate_unlocked()

    def _consolidate_unlocked(self) -> None:
        self._flush_pending_only()
        if self._delta is not None:
            self._main = self._delta if self._main is None else _merge_tiers(self._main, self._delta, self._vocab)
            self._delta = None
        n = self._n_rows
        alive = self._alive[:n]
        if n and not alive.all():
            if self._own_gone:   # row numbers change below
                self._own_stats()
            if self._main is not None:
                self._main, _ = _compact_tier(self._main, alive)
            keep = np.flatnonzero(alive)
            self._row_slots = self._row_slots[keep]
            self._doclen = self._doclen[keep]
            self._alive = np.ones(len(keep), dtype=bool)
            self._n_rows = len(keep)
            self._reindex_slots()
            self._stats_version += 1
        self._n_dead_main = 0
        self._main_end = self._delta_end = self._n_rows

    def _flush_pending_only(self) -> None:
        if self._pending:
            rid = np.concatenate([p[0] for p in self._pending])
            terms = np.concatenate([p[1] for p in self._pending])
            vals = np.concatenate([p[2] for p in self._pending])
            self._pending = []
            new = _build_tier(terms, rid, vals, self._vocab)
            self._delta = new if self._delta is None else _merge_tiers(self._delta, new, self._vocab)

    def _valid_rows(self, allowed: np.ndarray | None) -> np.ndarray:
        valid = self._alive[: self._n_rows]
        if allowed is None:
            return valid
        allowed = np.asarray(allowed)
        if allowed.dtype != np.bool_ or allowed.ndim != 1:
            raise TypeError(f"allowed must be a 1-D boolean mask by slot, got dtype {allowed.dtype} shape {allowed.shape}")
        slots = self._row_slots[: self._n_rows]
        inside = slots < len(allowed)
        if np.any(valid & ~inside):
            raise ValueError(f"allowed has length {len(allowed)} but live slots go up to "
                             f"{int(slots[valid].max())}; it must cover every slot")
        out = np.zeros(self._n_rows, dtype=bool)
        out[inside] = allowed[slots[inside]]
        return out & valid

    @classmethod
    def queries_for(cls, queries: Any, parts: Sequence[SparseIndex]) -> _Queries:
        """``queries`` converted once for a search of several segments of one index (each
        segment's ``search`` / ``score`` takes the terms it knows)."""
        return _to_queries(queries, max(p._vocab for p in parts))

    def _query_matrix(self, queries: Any) -> _Queries:
        """Queries as CSR arrays (nq, vocab), float32, sorted term ids; unknown terms dropped."""
        if isinstance(queries, _Queries):
            return queries.within(self._vocab)
        return _to_queries(queries, self._vocab)

    def _tier_products(self, q: sp.csr_matrix, snap: list) -> list[tuple[sp.csr_matrix, sp.csr_matrix]]:
        out = []
        for t, w, _ in snap:
            mat = sp.csr_matrix((w, t.indices, t.indptr), shape=(t.vocab, self._n_rows), copy=False)
            qt = q[:, : t.vocab] if q.shape[1] != t.vocab else q
            out.append((qt, mat))
        return out

    def _prepare(self, terms: np.ndarray) -> list[tuple[_Tier, np.ndarray, np.ndarray | None]]:
        """``(tier, weights, each term's largest weight or None)`` of every tier, for one search:
        the stored values (weighting 'none'), or BM25 weights with those of ``terms`` computed
        if they are not yet under the current statistics. A change of statistics (every commit
        changes N and avgdl) costs the next searches the postings of their own terms, not a pass
        over the whole index; a search keeps the arrays it got here to its end."""
        tiers = [t for t in (self._main, self._delta) if t is not None]
        if not self._bm25:
            return [(t, t.values, None) for t in tiers]
        with self._merge_lock:
            # the same terms again under the same statistics (a search, then the score of
            # other modes' candidates): nothing to fill
            key = (self._stats_version, *tiers, terms.tobytes())
            last = self._prepared
            if last is not None and len(last[0]) == len(key) and all(
                    a is b or (type(a) is not _Tier and a == b) for a, b in zip(last[0], key)):
                return last[1]
            out = []
            for t in tiers:
                f = self._fill(t, terms)
                out.append((t, f.weights, f.maxw))
            self._prepared = (key, out)
            return out

    def _fill(self, t: _Tier, terms: np.ndarray) -> _Filled:
        f = t.bm25
        if f is None or f.version != self._stats_version:
            f = t.bm25 = _Filled(self._stats_version, t.nnz, t.vocab)
        k1, b = self.k1, self.b
        plus = k1 + 1.0 if self.weighting == "bm25okapi" else 1.0
        if _kernels.AVAILABLE:   # one compiled call (the numpy path below: ~20 numpy calls per tier)
            _kernels.bm25_fill(t.indptr, t.indices, t.values, self._doclen, self._idf_current(), self._avgdl(),
                               k1, b, plus, terms, f.filled, f.weights, f.maxw)
            return f
        todo = terms[terms < t.vocab]
        todo = np.unique(todo[~f.filled[todo]])
        lo = t.indptr[todo]
        n = t.indptr[todo + 1] - lo
        has = n > 0
        f.filled[todo] = True   # (under the lock: no search reads these terms before they are written)
        todo, lo, n = todo[has], lo[has], n[has]
        if len(todo) == 0:
            return f
        starts = np.zeros(len(n), dtype=np.int64)
        np.cumsum(n[:-1], out=starts[1:])
        pos = np.repeat(lo - starts, n) + np.arange(int(n.sum()), dtype=np.int64)
        idf = self._idf_current()
        avgdl = self._avgdl()
        tf = t.values[pos].astype(np.float64)
        if avgdl > 0:
            norm = k1 * (1.0 - b + b * self._doclen[t.indices[pos]] / avgdl)
        else:
            norm = np.full(len(pos), k1 * (1.0 - b))
        w = (np.repeat(idf[todo], n) * (tf * plus / (tf + norm))).astype(np.float32)
        f.weights[pos] = w
        f.maxw[todo] = np.maximum.reduceat(w, starts)
        return f

    def _own_stats(self) -> tuple[int, np.ndarray, float]:
        """(live rows, df, total length) of this index's own live rows (tiers flushed). Under
        the lock: concurrent first searches after a load must not apply removed rows twice."""
        with self._merge_lock:
            return self._own_stats_unlocked()

    def _own_stats_unlocked(self) -> tuple[int, np.ndarray, float]:
        if self._own is not None and self._own_gone:
            gone = np.unique(np.concatenate(self._own_gone))
            self._own_gone = []
            tiers = [t for t in (self._main, self._delta) if t is not None]
            # With the compiled kernel a few removed rows' postings are found by binary search
            # per term, much less than the pass over every posting a recount makes: the first
            # search after an upsert's commit then costs milliseconds, not a second at 1M rows.
            if _kernels.AVAILABLE and len(gone) * self._vocab * 3 <= sum(t.nnz for t in tiers):
                n_live, df, total = self._own
                removed = np.zeros(len(df), dtype=np.float64)
                for t in tiers:
                    _kernels.rows_per_term(t.indptr, t.indices, gone, removed[: t.vocab])
                df = df - removed
                df.flags.writeable = False
                self._own = (n_live - len(gone), df, total - float(self._doclen[gone].sum()))
            else:
                self._own = None
        if self._own is None:
            df = self._live_df()
            df.flags.writeable = False
            self._own = (self._n_live, df, self._live_length())
            self._own_gone = []
        return self._own

    def _live_df(self) -> np.ndarray:
        """Live rows holding each term (float64 [vocab]); tiers flushed beforehand."""
        n = self._n_rows
        alive = self._alive[:n]
        all_alive = self._n_live == n
        df = np.zeros(self._vocab, dtype=np.float64)
        for t in (self._main, self._delta):
            if t is None:
                continue
            if all_alive:   # no removed rows (a freshly loaded segment): O(vocab)
                df[: t.vocab] += np.diff(t.indptr)
                continue
            ck = np.zeros(t.nnz + 1, dtype=np.int64)
            np.cumsum(alive[t.indices], out=ck[1:])
            df[: t.vocab] += np.diff(ck[t.indptr])
        return df

    def _live_length(self) -> float:
        """Total length (sum of term counts) of the live rows."""
        n = self._n_rows
        return float(self._doclen[:n][self._alive[:n]].sum())

    def _avgdl(self) -> float:
        if self._global is not None:
            big_n, _, total = self._global
            return total / max(big_n, 1)
        n_live, _, total = self._own_stats()
        return total / max(n_live, 1)

    def _idf_current(self) -> np.ndarray:
        if self._idf is not None and self._idf_version == self._stats_version:
            return self._idf
        if self._global is not None:
            n_live, df, _ = self._global
        else:
            n_live, df, _ = self._own_stats()
        big_n = float(n_live)
        present = df > 0
        if self.weighting == "bm25okapi":
            idf = np.zeros(len(df), dtype=np.float64)
            idf[present] = np.log(big_n - df[present] + 0.5) - np.log(df[present] + 0.5)
            if present.any():
                # the average over every term of the statistics (all segments' terms when global)
                eps = self.epsilon * (idf[present].sum() / np.count_nonzero(present))
                idf[present & (idf < 0)] = eps
        else:
            idf = np.where(present, np.log1p((big_n - df + 0.5) / (df + 0.5)), 0.0)
        if len(idf) != self._vocab:   # global statistics over another vocabulary: terms past it have df 0
            idf = idf[: self._vocab] if len(idf) > self._vocab else np.concatenate(
                [idf, np.zeros(self._vocab - len(idf))])
        self._idf, self._idf_version = idf, self._stats_version
        self._idf_nonneg = bool(len(idf) == 0 or idf.min() >= 0)
        return idf
