"""Optional compiled kernel for :class:`hybridrag.stores.sparse.SparseIndex` (numba).

When numba is installed (``pip install 'hybridrag[fast]'``) the queries that an index of
fewer than 500k rows scores by dense accumulation go through :func:`dense_top_k` in one
compiled call per batch: accumulate, block-max top-k and reset per query, with no Python
work per query (``sparse._KERNEL_MAX_ROWS`` says why larger indexes keep the numpy path).
Scores and ordering are bit-identical to the numpy path (same float32 products, same
summation order per row, ties by slot ascending); ``tests/test_sparse_store.py`` runs
the equality tests on both paths. ``HYBRIDRAG_NUMBA=0`` in the environment turns the
kernel off. The first call compiles it (seconds; cached on disk afterwards).
"""
from __future__ import annotations

import os

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
        bmax[:] = 0
        for qi in range(len(pair_start) - 1):
            a, e = pair_start[qi], pair_start[qi + 1]
            n_post = 0
            for p in range(a, e):
                n_post += (hi1[p] - lo1[p]) + (hi2[p] - lo2[p])
            sparse = 4 * n_post < n_rows and len(invalid) == 0
            if sparse:   # block maxima kept while accumulating: O(postings), not O(rows)
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
            if sparse:   # few postings: undo them (and the block maxima); else one memset
                _zero(acc, rows1, lo1, hi1, a, e)
                _zero(acc, rows2, lo2, hi2, a, e)
                bmax[:] = 0
            else:
                acc[:] = 0
            o = out_rows[qi]
            for j in range(n):
                out_s[o, j] = tv[j]
                out_i[o, j] = ts[j]


def dense_top_k(n_rows: int, k: int, pair_start: np.ndarray, qws: np.ndarray, tiers: list[tuple],
                row_slots: np.ndarray, invalid: np.ndarray | None, out_s: np.ndarray, out_i: np.ndarray,
                out_rows: np.ndarray) -> None:
    """Top-k by dense accumulation of the queries whose (query, term) pairs are
    ``pair_start[j]:pair_start[j + 1]`` (weights ``qws``), written to rows ``out_rows`` of
    ``out_s`` / ``out_i`` (which hold -inf / -1 beforehand). ``tiers``: one or two
    ``(rows, weights, lo, hi)``: a pair's postings are ``lo[p]:hi[p]`` of the tier's arrays.
    ``invalid``: rows that may not be returned (or None)."""
    if not AVAILABLE:
        raise RuntimeError("the numba kernel is not available")
    t = [(np.ascontiguousarray(r), np.ascontiguousarray(w, dtype=np.float32),
          np.ascontiguousarray(lo, dtype=np.int64), np.ascontiguousarray(hi, dtype=np.int64)) for r, w, lo, hi in tiers]
    if len(t) == 1:
        r, w, lo, _ = t[0]
        t.append((r[:0], w[:0], lo, lo))   # an empty second tier
    inv = np.zeros(0, dtype=np.int64) if invalid is None else np.ascontiguousarray(invalid, dtype=np.int64)
    _dense_top_k(int(n_rows), int(k), np.ascontiguousarray(pair_start, dtype=np.int64),
                 np.ascontiguousarray(qws, dtype=np.float32), *t[0], *t[1], row_slots, inv, out_s, out_i,
                 np.ascontiguousarray(out_rows, dtype=np.int64))
