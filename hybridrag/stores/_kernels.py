"""Compiled kernel for :class:`hybridrag.stores.sparse.SparseIndex` (numba; numpy is the fallback).

With numba (a dependency; the kernel is skipped if it is missing) the queries that an index of
fewer than 500k rows scores by dense accumulation go through :func:`dense_top_k` in one
compiled call per batch: accumulate, block-max top-k and reset per query, with no Python
work per query (``sparse._KERNEL_MAX_ROWS`` says why larger indexes keep the numpy path).
Scores and ordering are bit-identical to the numpy path (same float32 products, same
summation order per row, ties by slot ascending); ``tests/test_sparse_store.py`` runs
the equality tests on both paths. ``HYBRIDRAG_NUMBA=0`` in the environment turns the
kernel off. It is compiled when this module is first imported (seconds, once; later
imports load it from numba's on-disk cache); see :func:`_compile_now` for why not lazily.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

#: Rows per block of the block-max top-k (as ``sparse._BLOCK``); a power of two.
BLOCK = 256
_SHIFT = 8   # log2(BLOCK)

try:
    if os.environ.get("HYBRIDRAG_NUMBA", "1").strip().lower() in ("0", "false", "no", "off"):
        raise ImportError("disabled by HYBRIDRAG_NUMBA")
    from numba import njit
except ImportError:  # numba missing or disabled: the numpy path is used
    njit = None

AVAILABLE = njit is not None

if njit is not None:
    from numba import uint64

    # Index arithmetic is done in uint64: numba checks signed indices for wrap-around on every
    # access, which made the posting loop 1.6x slower (slower than scipy's csc_matvec).

    @njit(cache=True, nogil=True)
    def _better(v, s, v2, s2):  # pragma: no cover - compiled
        """Score desc, slot asc."""
        return v > v2 or (v == v2 and s < s2)

    @njit(cache=True, nogil=True)
    def _accumulate(acc, rows, w, lo, hi, a, e, qws):  # pragma: no cover - compiled
        """``acc[rows[x]] += w[x] * qws[p]`` for the postings lo[p]:hi[p] of pairs a:e, in order."""
        for p in range(a, e):
            qw = qws[p]
            x, stop = uint64(lo[p]), uint64(hi[p])
            while x < stop:
                acc[uint64(rows[x])] += w[x] * qw
                x += uint64(1)

    @njit(cache=True, nogil=True)
    def _accumulate_max(acc, bmax, rows, w, lo, hi, a, e, qws):  # pragma: no cover - compiled
        """As :func:`_accumulate`, keeping ``bmax[r // BLOCK]`` >= ``acc[r]`` on the way (scores only
        grow: weights are >= 0), so a query with few postings needs no pass over every row."""
        shift = uint64(_SHIFT)
        for p in range(a, e):
            qw = qws[p]
            x, stop = uint64(lo[p]), uint64(hi[p])
            while x < stop:
                r = uint64(rows[x])
                v = acc[r] + w[x] * qw
                acc[r] = v
                b = r >> shift
                m = bmax[b]
                bmax[b] = v if v > m else m
                x += uint64(1)

    @njit(cache=True, nogil=True)
    def _zero(acc, rows, lo, hi, a, e):  # pragma: no cover - compiled
        for p in range(a, e):
            x, stop = uint64(lo[p]), uint64(hi[p])
            while x < stop:
                acc[uint64(rows[x])] = 0
                x += uint64(1)

    @njit(cache=True, nogil=True)
    def _dense_top_k(n_rows, k, pair_start, qws, rows1, w1, lo1, hi1, rows2, w2, lo2, hi2,
                     row_slots, invalid, out_s, out_i, out_rows):  # pragma: no cover - compiled
        nb = (n_rows + BLOCK - 1) // BLOCK
        acc = np.zeros(nb * BLOCK, dtype=np.float32)
        bmax = np.empty(nb, dtype=np.float32)
        tv = np.empty(k, dtype=np.float32)
        ts = np.empty(k, dtype=np.int64)
        tiny = np.float32(1e-45)   # the smallest positive float32: a hit has a score > 0
        ublock = uint64(BLOCK)
        for qi in range(len(pair_start) - 1):
            a, e = pair_start[qi], pair_start[qi + 1]
            n_post = 0
            for p in range(a, e):
                n_post += (hi1[p] - lo1[p]) + (hi2[p] - lo2[p])
            sparse = 4 * n_post < n_rows and len(invalid) == 0
            if sparse:   # block maxima kept while accumulating: O(postings), not O(rows)
                bmax[:] = 0   # (they may hold the previous query's maxima: a memset of rows / 256)
                _accumulate_max(acc, bmax, rows1, w1, lo1, hi1, a, e, qws)
                _accumulate_max(acc, bmax, rows2, w2, lo2, hi2, a, e, qws)
            else:
                _accumulate(acc, rows1, w1, lo1, hi1, a, e, qws)
                _accumulate(acc, rows2, w2, lo2, hi2, a, e, qws)
                for r in invalid:
                    acc[uint64(r)] = 0
                r = uint64(0)
                for b in range(nb):   # branch-free block maxima: a per-row test mispredicts half the time
                    m = np.float32(0)
                    stop = r + ublock
                    while r < stop:
                        x = acc[r]
                        m = x if x > m else m
                        r += uint64(1)
                    bmax[b] = m
            # the k-th largest block maximum bounds the k-th largest score from below
            thr = np.partition(bmax, nb - k)[nb - k] if nb > k else np.float32(0)
            if thr < tiny:
                thr = tiny
            n = 0
            for b in range(nb):
                if bmax[b] < thr:
                    continue
                r = uint64(b) * ublock
                stop = r + ublock
                while r < stop:
                    v = acc[r]
                    if v >= thr:
                        s = row_slots[r]
                        if n < k or _better(v, s, tv[k - 1], ts[k - 1]):
                            j = n if n < k else k - 1
                            while j > 0 and _better(v, s, tv[j - 1], ts[j - 1]):
                                tv[j] = tv[j - 1]
                                ts[j] = ts[j - 1]
                                j -= 1
                            tv[j] = v
                            ts[j] = s
                            if n < k:
                                n += 1
                    r += uint64(1)
            if sparse:   # few postings: undo them; else one memset
                _zero(acc, rows1, lo1, hi1, a, e)
                _zero(acc, rows2, lo2, hi2, a, e)
            else:
                acc[:] = 0
            o = out_rows[qi]
            for j in range(n):
                out_s[o, j] = tv[j]
                out_i[o, j] = ts[j]


def _ro(a: np.ndarray, dtype: type | None = None) -> np.ndarray:
    """A read-only C-contiguous view (a copy only when the dtype or layout differs): every
    input then has the same numba type whether the index was built or memory-mapped, so the
    kernel compiled at import is the one every call uses."""
    v = np.ascontiguousarray(a, dtype=dtype).view()
    v.flags.writeable = False
    return v


def dense_top_k(n_rows: int, k: int, pair_start: np.ndarray, qws: np.ndarray, tiers: list[tuple],
                row_slots: np.ndarray, invalid: np.ndarray | None, out_s: np.ndarray, out_i: np.ndarray,
                out_rows: np.ndarray, threads: int = 1) -> None:
    """Top-k by dense accumulation of the queries whose (query, term) pairs are
    ``pair_start[j]:pair_start[j + 1]`` (weights ``qws``), written to rows ``out_rows`` of
    ``out_s`` / ``out_i`` (which hold -inf / -1 beforehand). ``tiers``: one or two
    ``(rows, weights, lo, hi)``: a pair's postings are ``lo[p]:hi[p]`` of the tier's arrays.
    ``invalid``: rows that may not be returned (or None). ``threads`` > 1 splits the queries
    into that many runs of about equal work (see :func:`_split`), scored at once (the calling thread takes the
    first; the others go to a shared pool of worker threads; each run writes its own rows)."""
    if not AVAILABLE:
        raise RuntimeError("the numba kernel is not available")
    t = [(_ro(r), _ro(w, np.float32), _ro(lo, np.int64), _ro(hi, np.int64)) for r, w, lo, hi in tiers]
    if len(t) == 1:
        r, w, lo, _ = t[0]
        t.append((r[:0], w[:0], lo, lo))   # an empty second tier
    inv = _ro(np.zeros(0, dtype=np.int64) if invalid is None else invalid, np.int64)
    ps, rs, qw = _ro(pair_start, np.int64), _ro(row_slots, np.int64), _ro(qws, np.float32)
    rows = _ro(out_rows, np.int64)
    nq = len(ps) - 1
    bounds = _split(ps, t, min(int(threads), nq), int(n_rows)) if threads > 1 and nq > 1 else [0, nq]

    def run(j: int) -> None:
        a, e = bounds[j], bounds[j + 1]
        _dense_top_k(int(n_rows), int(k), ps[a:e + 1], qw, *t[0], *t[1], rs, inv, out_s, out_i, rows[a:e])

    futures, inline = [], [0]
    for j in range(1, len(bounds) - 1):
        try:
            futures.append(_pool().submit(run, j))
        except RuntimeError:   # the interpreter is shutting down: no new threads, so run it here
            inline.append(j)
    try:
        for j in inline:
            run(j)
    finally:
        for f in futures:
            f.result()   # wait for every run (and re-raise its error) before returning


def _split(pair_start: np.ndarray, tiers: list[tuple], n: int, n_rows: int) -> list[int]:
    """Query boundaries ``[0, ..., nq]`` cutting the queries into ``n`` runs of about equal
    work (``pair_start[0]`` is 0). A query's work is its postings, plus half the rows when it
    makes a pass over them (at 4 postings per row or more, as :func:`_dense_top_k` decides; the
    pass costs about half a scattered posting per row)."""
    per_pair = np.zeros(int(pair_start[-1]), dtype=np.int64)
    for _, _, lo, hi in tiers:
        per_pair += hi - lo
    cum = np.zeros(len(per_pair) + 1, dtype=np.int64)
    np.cumsum(per_pair, out=cum[1:])
    postings = np.diff(cum[pair_start])
    work = postings + np.where(4 * postings >= n_rows, n_rows // 2, 0)
    before = np.zeros(len(work) + 1, dtype=np.int64)
    np.cumsum(work, out=before[1:])   # work before each query, and the total last
    cut = np.searchsorted(before, before[-1] * np.arange(1, n) / n)
    return sorted({0, len(pair_start) - 1, *np.clip(cut, 1, len(pair_start) - 2).tolist()})


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """Worker threads shared by every index, created on first use (one per core). They run
    kernel calls only, which never wait on other work, so callers on any thread cannot deadlock."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="hybridrag-sparse")
        return _POOL


def _forget_pool() -> None:
    """A forked child has none of its parent's threads: it makes its own pool when needed."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _compile_now() -> None:
    """Compile (or load from numba's cache) the kernel for int32 posting rows at import.

    Lazily, the first search would compile it; several threads searching at once could then
    run numba's lowering (which calls ``ast.parse``) beside other ``ast`` users, and CPython
    3.11 can raise ``SystemError: AST constructor recursion depth mismatch`` when two threads
    build AST objects at once (seen in CI in tests/test_concurrency.py; python/cpython#106905).
    Imports run one at a time, usually before a program starts its threads."""
    rows = np.array([0, 1], dtype=np.int32)
    dense_top_k(2, 1, np.array([0, 1]), np.ones(1, dtype=np.float32),
                [(rows, np.ones(2, dtype=np.float32), np.array([0]), np.array([2]))],
                np.arange(2), None, np.full((1, 1), -np.inf, dtype=np.float32), np.full((1, 1), -1),
                np.arange(1))


if AVAILABLE:
    try:
        _compile_now()
    except Exception as exc:  # noqa: BLE001 - an unusable numba must not break the index
        import warnings

        warnings.warn(f"hybridrag: numba kernel unavailable ({type(exc).__name__}: {exc}); using numpy",
                      RuntimeWarning, stacklevel=2)
        AVAILABLE = False
