"""Compiled kernels for :class:`hybridrag.stores.sparse.SparseIndex`, for the ``pq`` codec
of :class:`hybridrag.stores.multivector.MultiVectorStore` (:func:`pq_scores`) and for the
exact re-score of :class:`hybridrag.stores.faiss.FaissStore`'s ANN hits (:func:`rescore_top_k`);
numba, with numpy as the fallback of each.

With numba (a dependency; the kernel is skipped if it is missing) the queries with many
postings (``sparse._DENSE_RATIO``) go through :func:`dense_top_k` in one compiled call per
batch: accumulate, block-max top-k and reset per query, with no Python work per query. Given
upper bounds (BM25 indexes from 100k rows, ``sparse._PRUNE_MIN_ROWS``), queries of several
terms skip the postings that cannot change their top k (:func:`_maxscore`). Scores and
ordering are bit-identical to scipy's sparse product, the path of every other query (same
float32 products, same summation order per row, ties by slot ascending: rows scored in
another order are re-scored in this one); ``tests/test_sparse_store.py`` checks the equality.
The sparse kernels take a set of posting tiers of one or several segments (see the comment
above :func:`_accumulate`), so several segments are searched in one pass; :func:`flat_top_k` does
the same for ``Flat`` dense segments. Arrays of several segments are passed as numba typed
lists, made once per set of arrays (:func:`array_list`) and passed as separate arguments (a
tuple holding typed lists costs ~25 us per call to unbox).
``HYBRIDRAG_NUMBA=0`` in the environment turns the kernel off. It is compiled when this module is first imported (seconds, once; later
imports load it from numba's on-disk cache); see :func:`_compile_now` for why not lazily. The typed
lists are made by compiled functions too (:func:`array_list`): numba does not cache a typed list's
own methods, which cost every process ~4 s of compiling before an index could be searched.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

#: Rows per block of the block-max top-k (as ``sparse._BLOCK``); a power of two.
BLOCK = 256
_SHIFT = 8   # log2(BLOCK)
_TINY = np.float32(1e-45)   # the smallest positive float32
# Pruning (see _maxscore): a step of a galloping search (mostly a cache miss) costs about as
# much as accumulating this many postings (measured with benchmarks/bench_sparse.py)...
_GALLOP = 12.0
# ...and the k-th best partial score is taken over at most this many rows.
_SAMPLE = 4096

try:
    if os.environ.get("HYBRIDRAG_NUMBA", "1").strip().lower() in ("0", "false", "no", "off"):
        raise ImportError("disabled by HYBRIDRAG_NUMBA")
    from numba import njit
except ImportError:  # numba missing or disabled: the numpy path is used
    njit = None

AVAILABLE = njit is not None
# A k-th score this close (relative) to the lowest fetched one counts as tied with it: the
# dense store then answers that query exactly (FaissStore._ann).
TIE_RTOL = 1e-5

if njit is not None:
    from numba import uint64
    from numba.typed import List

    # Index arithmetic is done in uint64: numba checks signed indices for wrap-around on every
    # access, which made the posting loop slower than scipy's csc_matvec.

    # A set of posting tiers, as every kernel below takes it: ``tiers = (R, W, LO, HI, OFF, END,
    # RS)``. Tier ``t`` holds postings ``R[t]`` (rows local to its segment, increasing within a
    # term) with weights ``W[t]``; a (query, term) pair ``p`` has postings ``LO[t, p]:HI[t, p]``
    # of it. Its rows are the index's rows ``OFF[t]:END[t]`` (local row + ``OFF[t]``; the tiers
    # of one segment share its range) and ``RS[t][local row]`` is a row's slot. One segment is
    # its tiers at offset 0; several are laid end to end, so that their search is one pass with
    # one top k, as if they were one index (``SparseIndex.search_parts``).

    @njit(cache=True, nogil=True)
    def _spans(IP, MW, terms, qws, prune, LO, HI, ub):  # pragma: no cover - compiled
        """Per tier ``t`` and (query, term) pair ``p``: the pair's postings ``LO[t, p]:HI[t, p]``
        (``IP[t]``: the tier's indptr; none for a term past its vocabulary) and, with ``prune``,
        ``ub[p]``: the largest addend the pair can give (``qws[p]`` times the largest weight of
        its term in any tier, ``MW[t]``); ``ub`` holds zeros beforehand."""
        for t in range(LO.shape[0]):
            ip = IP[t]
            vocab = ip.shape[0] - 1
            mw = MW[t]
            for p in range(terms.shape[0]):
                x = terms[p]
                if x < vocab:
                    LO[t, p] = ip[x]
                    HI[t, p] = ip[x + 1]
                    if prune and mw[x] > ub[p]:
                        ub[p] = mw[x]
                else:
                    LO[t, p] = HI[t, p] = ip[vocab]
        if prune:
            for p in range(terms.shape[0]):
                ub[p] *= qws[p]

    @njit(cache=True, nogil=True)
    def _accumulate(acc, tiers, a, e, qws):  # pragma: no cover - compiled
        """``acc[OFF[t] + rows[x]] += w[x] * qws[p]`` for the postings of pairs a:e, tier by tier, in order."""
        R, W, LO, HI, OFF = tiers[0], tiers[1], tiers[2], tiers[3], tiers[4]
        for t in range(LO.shape[0]):
            rows, w, lo, hi = R[t], W[t], LO[t], HI[t]
            off = uint64(OFF[t])
            for p in range(a, e):
                qw = qws[p]
                x, stop = uint64(lo[p]), uint64(hi[p])
                while x < stop:
                    acc[off + uint64(rows[x])] += w[x] * qw
                    x += uint64(1)

    @njit(cache=True, nogil=True)
    def _accumulate_max(acc, bmax, tiers, a, e, qws):  # pragma: no cover - compiled
        """As :func:`_accumulate`, keeping ``bmax[r // BLOCK]`` >= ``acc[r]`` on the way (scores only
        grow: weights are >= 0), so a query with few postings needs no pass over every row."""
        R, W, LO, HI, OFF = tiers[0], tiers[1], tiers[2], tiers[3], tiers[4]
        shift = uint64(_SHIFT)
        for t in range(LO.shape[0]):
            rows, w, lo, hi = R[t], W[t], LO[t], HI[t]
            off = uint64(OFF[t])
            for p in range(a, e):
                qw = qws[p]
                x, stop = uint64(lo[p]), uint64(hi[p])
                while x < stop:
                    r = off + uint64(rows[x])
                    v = acc[r] + w[x] * qw
                    acc[r] = v
                    b = r >> shift
                    m = bmax[b]
                    bmax[b] = v if v > m else m
                    x += uint64(1)

    @njit(cache=True, nogil=True)
    def _zero(acc, tiers, a, e):  # pragma: no cover - compiled
        R, LO, HI, OFF = tiers[0], tiers[2], tiers[3], tiers[4]
        for t in range(LO.shape[0]):
            rows, lo, hi = R[t], LO[t], HI[t]
            off = uint64(OFF[t])
            for p in range(a, e):
                x, stop = uint64(lo[p]), uint64(hi[p])
                while x < stop:
                    acc[off + uint64(rows[x])] = 0
                    x += uint64(1)

    @njit(cache=True, nogil=True)
    def _accumulate_track(acc, touched, nt, tiers, p, qw):  # pragma: no cover - compiled
        """As :func:`_accumulate` for pair ``p``, appending to ``touched[nt:]`` each row whose
        score turns positive; returns the new count."""
        R, W, LO, HI, OFF = tiers[0], tiers[1], tiers[2], tiers[3], tiers[4]
        for t in range(LO.shape[0]):
            rows, w = R[t], W[t]
            off = uint64(OFF[t])
            x, stop = uint64(LO[t, p]), uint64(HI[t, p])
            while x < stop:
                r = off + uint64(rows[x])
                old = acc[r]
                v = old + w[x] * qw
                acc[r] = v
                touched[nt] = r   # branch-free: the slot is kept only when the row is new
                nt += (old == 0) & (v > 0)
                x += uint64(1)
        return nt

    @njit(cache=True, nogil=True)
    def _find(rows, lo, hi, r):  # pragma: no cover - compiled
        """Position of row ``r`` in ``rows[lo:hi]`` (increasing within a term), or -1."""
        a, b = uint64(lo), uint64(hi)
        while a < b:
            mid = (a + b) >> uint64(1)
            if rows[mid] < r:
                a = mid + uint64(1)
            else:
                b = mid
        if a < uint64(hi) and rows[a] == r:
            return np.int64(a)
        return np.int64(-1)

    @njit(cache=True, nogil=True)
    def _gallop_add(tiers, p, qw, cand, cval, nc):  # pragma: no cover - compiled
        """``cval[j] += w[x] * qw`` where a posting ``x`` of pair ``p`` holds row ``cand[j]``, for
        candidates ``cand[:nc]`` in increasing order: per tier one forward galloping search
        through the postings, so far fewer cache misses than a binary search per candidate."""
        R, W, LO, HI, OFF, END = tiers[0], tiers[1], tiers[2], tiers[3], tiers[4], tiers[5]
        for t in range(LO.shape[0]):
            rows, w = R[t], W[t]
            off, end = OFF[t], END[t]
            x, stop = uint64(LO[t, p]), uint64(HI[t, p])
            for j in range(nc):
                if x >= stop or cand[j] >= end:
                    break
                r = cand[j] - off
                if r < 0:
                    continue
                if rows[x] < r:   # gallop: rows[base] < r; find the first position >= r
                    base = x
                    step = uint64(1)
                    b = x + step
                    while b < stop and rows[b] < r:
                        base = b
                        step <<= uint64(1)
                        b = x + step
                    if b > stop:
                        b = stop
                    x = base + uint64(1)
                    while x < b:
                        mid = (x + b) >> uint64(1)
                        if rows[mid] < r:
                            x = mid + uint64(1)
                        else:
                            b = mid
                if x < stop and rows[x] == r:
                    cval[j] += w[x] * qw

    @njit(cache=True, nogil=True)
    def _lookup_cost(n, nc):  # pragma: no cover - compiled
        """Estimated cost, in postings accumulated, of finding ``nc`` sorted candidates in a
        posting list of ``n`` by galloping search."""
        if n == 0 or nc == 0:
            return 0.0
        return _GALLOP * nc * np.log2(2.0 + n / nc)

    @njit(cache=True, nogil=True)
    def _exact(r, a, e, qws, tiers):  # pragma: no cover - compiled
        """Row ``r``'s score summed as the accumulation sums it (its tiers in order, each tier's
        pairs in order), so bit-identical to it; one binary search per pair."""
        R, W, LO, HI, OFF, END = tiers[0], tiers[1], tiers[2], tiers[3], tiers[4], tiers[5]
        s = np.float32(0)
        for t in range(LO.shape[0]):
            if r < OFF[t] or r >= END[t]:
                continue
            rows, w, lo, hi = R[t], W[t], LO[t], HI[t]
            lr = r - OFF[t]
            for p in range(a, e):
                x = _find(rows, lo[p], hi[p], lr)
                if x >= 0:
                    s += w[x] * qws[p]
        return s

    @njit(cache=True, nogil=True)
    def _better(v, s, v2, s2):  # pragma: no cover - compiled
        """Score desc, slot asc."""
        return v > v2 or (v == v2 and s < s2)

    @njit(cache=True, nogil=True)
    def _insert(v, s, n, k, tv, ts):  # pragma: no cover - compiled
        """Insert hit (score v, slot s) into the ordered top list tv/ts holding n; returns n."""
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
        return n

    @njit(cache=True, nogil=True)
    def _block_maxima(acc, bmax, nb):  # pragma: no cover - compiled
        ublock = uint64(BLOCK)
        r = uint64(0)
        for b in range(nb):   # branch-free block maxima: a per-row test mispredicts half the time
            m = np.float32(0)
            stop = r + ublock
            while r < stop:
                x = acc[r]
                m = x if x > m else m
                r += uint64(1)
            bmax[b] = m

    @njit(cache=True, nogil=True)
    def _scan_top_k(acc, bmax, nb, k, tiers, tv, ts):  # pragma: no cover - compiled
        """Top-k of ``acc`` into tv/ts (returns the number of hits): the k-th largest block
        maximum bounds the k-th largest score from below, so only blocks reaching it are read.
        A row's slot is looked up only when it makes the top list, by a call out of the scan's
        loop (a typed list's item taken in the loop made every row pay reference counting)."""
        OFF, END, RS = tiers[4], tiers[5], tiers[6]
        thr = np.partition(bmax[:nb], nb - k)[nb - k] if nb > k else np.float32(0)
        if thr < _TINY:
            thr = _TINY   # a hit has a score > 0
        ublock = uint64(BLOCK)
        n = 0
        for b in range(nb):
            if bmax[b] < thr:
                continue
            r = uint64(b) * ublock
            stop = r + ublock
            while r < stop:
                v = acc[r]
                if v >= thr and (n < k or v >= tv[k - 1]):
                    n = _insert(v, _slot_in(OFF, END, RS, np.int64(r)), n, k, tv, ts)
                r += uint64(1)
        return n

    @njit(cache=True, nogil=True, inline="never")
    def _slot_in(OFF, END, RS, g):  # pragma: no cover - compiled
        """Slot of index row ``g`` (see the tiers above)."""
        for t in range(OFF.shape[0]):
            if OFF[t] <= g < END[t]:
                return RS[t][g - OFF[t]]
        return np.int64(-1)

    @njit(cache=True, nogil=True)
    def _exact_top_k(cand, cval, nc, k, eps, a, e, qws, tiers, tv, ts):  # pragma: no cover - compiled
        """Top-k of the candidate rows ``cand[:nc]`` whose scores ``cval`` were summed in another
        order (within a relative ``eps`` of the exact sums): every candidate that can be in the
        exact top k is re-scored exactly, then ranked. Returns the number of hits."""
        bound = _TINY
        if nc > k:
            kth = np.partition(cval[:nc], nc - k)[nc - k]
            bound = max(_TINY, kth * np.float32(1 - 2 * eps))
        n = 0
        for j in range(nc):
            if cval[j] >= bound:
                r = cand[j]
                v = _exact(r, a, e, qws, tiers)
                if v > 0:
                    n = _insert(v, _slot_in(tiers[4], tiers[5], tiers[6], r), n, k, tv, ts)
        return n

    @njit(cache=True, nogil=True)
    def _maxscore(acc, bmax, touched, cand, cval, ok, n_rows, k, a, e, qws, ub, tiers, invalid, tv, ts):  # pragma: no cover - compiled
        """One query, exact, by MaxScore-style pruning (Turtle and Flood, 1995): its pairs are
        accumulated by decreasing upper bound ``ub`` (the pair's largest possible addend); once
        the k-th best partial score among the rows seen so far exceeds what the remaining pairs
        can add in all (their ``ub`` summed), no row they alone reach can enter the top k, so
        their postings are not read: the rows still in reach get those pairs' weights by binary
        search. Partial sums in that order differ from the accumulation's by rounding, so every
        row that can be in the top k is re-scored exactly (:func:`_exact`) before ranking. Leaves
        ``acc`` all zero; returns the number of hits written to tv/ts, or -1 without touching
        anything when the bounds show that too few postings could be skipped."""
        m = e - a
        LO, HI = tiers[2], tiers[3]
        npost = np.zeros(e, dtype=np.int64)   # postings of each pair (a:e), in all tiers
        for t in range(LO.shape[0]):
            for p in range(a, e):
                npost[p] += HI[t, p] - LO[t, p]
        order = np.argsort(-ub[a:e]) + a
        rem = np.zeros(m + 1, dtype=np.float64)     # upper bound of what pairs order[i:] can add
        remp = np.zeros(m + 1, dtype=np.int64)      # their postings
        for i in range(m - 1, -1, -1):
            p = order[i]
            rem[i] = rem[i + 1] + np.float64(ub[p])
            remp[i] = remp[i + 1] + npost[p]
        # skip the attempt when too few postings lie past the point where the remaining bound
        # drops below half the total (no earlier pair can be skipped: theta <= what was added)
        i = 0
        while i < m and rem[i] >= 0.5 * rem[0]:
            i += 1
        if 3 * remp[i] < remp[0]:
            return -1
        eps = 1e-6 * (m + 4)   # relative: float32 sums of m non-negative terms in any two orders agree within ~m * 1.2e-7
        cap = n_rows // 4      # past this many rows with a score, stop listing them (one pass over the rows is then cheaper)
        nt = 0
        tracking = True
        stop_at = m            # pairs order[stop_at:] are looked up for the candidates only
        nc = 0
        reach = np.inf         # theta can gain at most what the pairs since the last test add
        for i in range(m):
            p = order[i]
            if tracking and nt + npost[p] > cap:
                tracking = False   # (listing them would cost more than it can save)
            if tracking:
                nt = _accumulate_track(acc, touched, nt, tiers, p, qws[p])
            else:
                _accumulate(acc, tiers, p, p + 1, qws)
            rest = rem[i + 1] * (1 + eps)
            # worth testing: postings enough left to skip, and the k-th best partial score could
            # already exceed the rest (it is at most the pairs done in all, and at most the last
            # test's value plus what was added since)
            if (not tracking or i + 1 == m or nt < k or remp[i + 1] < 4 * nt
                    or rest >= (rem[0] - rem[i + 1]) * (1 - eps) or rest >= reach - rem[i + 1]):
                continue
            # theta: the k-th best partial score among the first rows listed (those of the
            # highest-bound pairs, where the best rows usually are): a lower bound of the k-th
            # best over all rows, so of the k-th best final score
            nv = 0
            for j in range(nt):
                r = touched[j]
                if len(ok) == 0 or ok[r]:
                    cval[nv] = acc[r]
                    nv += 1
                    if nv == _SAMPLE:
                        break
            if nv < k:
                continue
            theta = np.partition(cval[:nv], nv - k)[nv - k] * (1 - eps)
            reach = theta / (1 - eps) * (1 + eps) + rem[i + 1]
            if rest >= theta:
                continue
            nc = 0
            most = 0.8 * remp[i + 1] / (_GALLOP * (m - i - 1))   # more candidates cost more than the rest
            for j in range(nt):
                r = touched[j]
                if (len(ok) == 0 or ok[r]) and acc[r] * (1 + eps) + rest >= theta:
                    cand[nc] = r
                    nc += 1
                    if nc > most:
                        break
            if nc > most:
                continue
            cost = 0.0
            for i2 in range(i + 1, m):
                p2 = order[i2]
                for t in range(tiers[2].shape[0]):
                    cost += _lookup_cost(tiers[3][t, p2] - tiers[2][t, p2], nc)
            if cost < 0.8 * remp[i + 1]:   # finding the candidates is cheaper than accumulating the rest
                stop_at = i + 1
                break
        if tracking and (stop_at < m or 16 * nt < n_rows):
            if stop_at == m:   # nothing skipped, few rows scored: every row with a score is listed
                nc = 0
                for j in range(nt):
                    r = touched[j]
                    if len(ok) == 0 or ok[r]:
                        cand[nc] = r
                        nc += 1
            else:
                cand[:nc].sort()
            for j in range(nc):
                cval[j] = acc[cand[j]]
            for i in range(stop_at, m):
                p = order[i]
                _gallop_add(tiers, p, qws[p], cand, cval, nc)
            for j in range(nt):
                acc[touched[j]] = 0
            return _exact_top_k(cand, cval, nc, k, eps, a, e, qws, tiers, tv, ts)
        # many rows scored: the k-th largest block maximum is at most the k-th best sum in this
        # order, so every row that can be in the exact top k is within rounding of it or above:
        # those rows are the candidates (one pass over the blocks that reach it)
        for r in invalid:
            acc[uint64(r)] = 0
        nb = (n_rows + BLOCK - 1) // BLOCK
        _block_maxima(acc, bmax, nb)
        thr = np.partition(bmax[:nb], nb - k)[nb - k] if nb > k else np.float32(0)
        bound = max(_TINY, thr * np.float32(1 - 2 * eps))
        nc = 0
        ublock = uint64(BLOCK)
        for b in range(nb):
            if bmax[b] < bound:
                continue
            r = uint64(b) * ublock
            stop = r + ublock
            while r < stop:
                v = acc[r]
                if v >= bound:
                    cand[nc] = r
                    cval[nc] = v
                    nc += 1
                r += uint64(1)
        acc[:] = 0
        return _exact_top_k(cand, cval, nc, k, eps, a, e, qws, tiers, tv, ts)

    @njit(cache=True, nogil=True)
    def _one_query(acc, bmax, nb, n_rows, k, a, e, qws, tiers, invalid, tv, ts):  # pragma: no cover - compiled
        """One query, every posting read in order: accumulate, block-max top-k, reset."""
        LO, HI = tiers[2], tiers[3]
        n_post = 0
        for t in range(LO.shape[0]):
            for p in range(a, e):
                n_post += HI[t, p] - LO[t, p]
        sparse = 4 * n_post < n_rows and len(invalid) == 0
        if sparse:   # block maxima kept while accumulating: O(postings), not O(rows)
            bmax[:] = 0   # (they may hold the previous query's maxima: a memset of rows / 256)
            _accumulate_max(acc, bmax, tiers, a, e, qws)
        else:
            _accumulate(acc, tiers, a, e, qws)
            for r in invalid:
                acc[uint64(r)] = 0
            _block_maxima(acc, bmax, nb)
        n = _scan_top_k(acc, bmax, nb, k, tiers, tv, ts)
        if sparse:   # few postings: undo them; else one memset
            _zero(acc, tiers, a, e)
        else:
            acc[:] = 0
        return n

    @njit(cache=True, nogil=True)
    def _dense_top_k(n_rows, k, pair_start, qws, ub, R, W, LO, HI, OFF, END, RS, invalid, ok, out_s, out_i,
                     out_rows):  # pragma: no cover - compiled
        tiers = (R, W, LO, HI, OFF, END, RS)   # (a tuple of typed lists as an argument: ~25 us per call to unbox)
        nb = (n_rows + BLOCK - 1) // BLOCK
        acc = np.zeros(nb * BLOCK, dtype=np.float32)
        bmax = np.empty(nb, dtype=np.float32)
        tv = np.empty(k, dtype=np.float32)
        ts = np.empty(k, dtype=np.int64)
        prune = len(ub) > 0
        if prune:   # scratch of the pruned path
            touched = np.empty(n_rows, dtype=np.int64)
            cand = np.empty(n_rows, dtype=np.int64)
            cval = np.empty(n_rows, dtype=np.float32)
        else:
            touched = cand = np.empty(0, dtype=np.int64)
            cval = np.empty(0, dtype=np.float32)
        for qi in range(len(pair_start) - 1):
            a, e = pair_start[qi], pair_start[qi + 1]
            n = -1
            if prune and e - a > 1:
                n = _maxscore(acc, bmax, touched, cand, cval, ok, n_rows, k, a, e, qws, ub, tiers, invalid, tv, ts)
            if n < 0:
                n = _one_query(acc, bmax, nb, n_rows, k, a, e, qws, tiers, invalid, tv, ts)
            o = out_rows[qi]
            for j in range(n):
                out_s[o, j] = tv[j]
                out_i[o, j] = ts[j]

    @njit(cache=True, nogil=True)
    def _pq_scores(codes, table, sq, unit, out):  # pragma: no cover - compiled
        """``out[i] = sum_g table[g*256 + codes[i, g]]`` (times 1/norm when ``unit``; ``sq`` holds
        every centroid's squared norm): MaxSim's token-by-query-token scores read from per-query
        tables instead of decoded vectors (see ``hybridrag.stores._pq``)."""
        n, groups = codes.shape
        tq = table.shape[1]
        acc = np.empty(tq, dtype=np.float32)
        for i in range(n):
            acc[:] = 0
            s = np.float32(0)
            for g in range(groups):
                r = g * 256 + codes[i, g]
                s += sq[r]
                for j in range(tq):
                    acc[j] += table[r, j]
            inv = np.float32(1) / np.sqrt(max(s, np.float32(1e-30))) if unit else np.float32(1)
            for j in range(tq):
                out[i, j] = acc[j] * inv

    @njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
    def _dot(a, b):  # pragma: no cover - compiled
        """float32 dot product, summed in any order (so it vectorises, as BLAS does)."""
        s = np.float32(0)
        for c in range(a.shape[0]):
            s += a[c] * b[c]
        return s

    @njit(cache=True, nogil=True)
    def _top_of_hits(sc, rows, row_slot, k, ts, ti):  # pragma: no cover - compiled
        """Top-``k`` of one query's hits (scores ``sc``, rows ``rows``, -1: none) into
        ``ts``/``ti`` as scores and slots, ties by slot ascending, padded with -inf / -1;
        returns (hits kept, smallest score of the hits, inf when none)."""
        ts[:] = -np.inf
        ti[:] = -1
        n = 0
        low = np.inf
        for j in range(rows.shape[0]):
            r = rows[j]
            if r >= 0:
                low = min(low, np.float64(sc[j]))
                n = _insert(sc[j], row_slot[r], n, k, ts, ti)
        return n, low

    @njit(cache=True, nogil=True)
    def _rescore_top_k(rows, base, tail, q, row_slot, mask, use_mask, l2, k, need, out_s, out_i, lowest):  # pragma: no cover - compiled
        """Exact top-k of ANN hits: ``rows`` ``(nq, kf)`` are FAISS labels (-1: none) into the
        stored vectors (``base`` rows, then ``tail`` rows); hits outside ``mask`` (when
        ``use_mask``) are dropped. Scores are float32 dot products (``2 ip - |q|^2 - |v|^2`` when
        ``l2``), summed in another order than numpy's; ties by slot ascending. Fills ``out_*``
        (padded with -inf / -1) and ``lowest[i]``, the smallest kept score (inf when none);
        returns how many queries kept fewer than ``need`` hits."""
        nq, kf = rows.shape
        nb = base.shape[0]
        n_rows = nb + tail.shape[0]
        short = 0
        sc = np.empty(kf, dtype=np.float32)
        kept = np.empty(kf, dtype=np.int64)
        for i in range(nq):
            qi = q[i]
            qq = _dot(qi, qi) if l2 else np.float32(0)
            for j in range(kf):
                r = rows[i, j]
                kept[j] = -1 if r < 0 or r >= n_rows or (use_mask and not mask[r]) else r
                if kept[j] < 0:
                    continue
                v = base[r] if r < nb else tail[r - nb]
                sc[j] = _dot(qi, v)
                if l2:
                    sc[j] = np.float32(2) * sc[j] - qq - _dot(v, v)
            n, lowest[i] = _top_of_hits(sc, kept, row_slot, k, out_s[i], out_i[i])
            if n < need:
                short += 1
        return short

    @njit(cache=True, nogil=True)
    def _flat_top_k(VECS, RS, RSOFF, ALIVE, all_alive, allowed, q, l2, k, out_s, out_i):  # pragma: no cover - compiled
        """Exact top-``k`` of queries ``q`` over float32 vectors in pieces (one or more
        segments' rows, each in one or two arrays): piece ``p``'s row ``r`` is ``VECS[p][r]``,
        its slot ``RS[p][RSOFF[p] + r]``, live when ``all_alive[p]`` or ``ALIVE[p][RSOFF[p] + r]``;
        with a non-empty ``allowed`` (by slot) only allowed slots count. Scores as
        :func:`_rescore_top_k` computes them; not finite (damaged vectors): absent. Fills
        ``out_s``/``out_i`` (which hold -inf / -1), ties by slot ascending."""
        use_allowed = allowed.shape[0] > 0
        for i in range(q.shape[0]):
            qi = q[i]
            qq = _dot(qi, qi) if l2 else np.float32(0)
            tv = out_s[i]
            ts = out_i[i]
            n = 0
            for p in range(len(VECS)):
                x, rs, al = VECS[p], RS[p], ALIVE[p]
                ro = RSOFF[p]
                every = all_alive[p]
                for r in range(x.shape[0]):
                    lr = ro + r
                    if not every and not al[lr]:
                        continue
                    s = rs[lr]
                    if use_allowed and (s >= allowed.shape[0] or not allowed[s]):
                        continue
                    v = _dot(qi, x[r])
                    if l2:
                        v = np.float32(2) * v - qq - _dot(x[r], x[r])
                    if not np.isfinite(v):
                        continue
                    if n < k or _better(v, s, tv[k - 1], ts[k - 1]):
                        n = _insert(v, s, n, k, tv, ts)

    @njit(cache=True, nogil=True)
    def _flat_scores(VECS, OFF, q, rows, l2, out):  # pragma: no cover - compiled
        """``out[j]``: the score (as :func:`_flat_top_k`'s) of index row ``rows[j]``, piece ``p``
        holding rows ``OFF[p]:OFF[p] + len(VECS[p])``; -inf for -1 or a score not finite."""
        qq = _dot(q, q) if l2 else np.float32(0)
        out[:] = -np.inf
        for p in range(len(VECS)):
            x = VECS[p]
            lo, hi = OFF[p], OFF[p] + x.shape[0]
            for j in range(rows.shape[0]):
                r = rows[j]
                if r < lo or r >= hi:
                    continue
                v = x[r - lo]
                s = _dot(q, v)
                if l2:
                    s = np.float32(2) * s - qq - _dot(v, v)
                if np.isfinite(s):
                    out[j] = s

    @njit(cache=True, nogil=True)
    def _all_finite(a):  # pragma: no cover - compiled
        """True when no value of the 1-D float32 ``a`` is NaN or infinite (stops at the first)."""
        for i in range(a.shape[0]):
            if not np.isfinite(a[i]):
                return False
        return True

    @njit(cache=True, nogil=True)
    def _score_rows(terms, qws, IP, R, W, OFF, END, cand, acc):  # pragma: no cover - compiled
        """``acc[j] += qws[a] * w`` for each query term ``terms[a]`` (in order) and each tier
        holding a posting of row ``cand[j]`` (an index row, see the tiers above; < 0: skipped),
        ``w`` that posting's weight: the numpy path of ``SparseIndex.score`` in the same order
        and precision. Tier ``t``'s term ``x`` has postings ``IP[t][x]:IP[t][x + 1]`` of ``R[t]``
        (rows increasing, found by binary search); terms past a tier's vocabulary have none."""
        for a in range(terms.shape[0]):
            x = terms[a]
            qw = qws[a]
            for t in range(OFF.shape[0]):
                ip = IP[t]
                if x >= ip.shape[0] - 1:
                    continue
                lo = ip[x]
                hi = ip[x + 1]
                if lo == hi:
                    continue
                r, w = R[t], W[t]
                off, end = OFF[t], END[t]
                for j in range(cand.shape[0]):
                    row = cand[j]
                    if row < off or row >= end:
                        continue
                    pos = _find(r, lo, hi, row - off)
                    if pos >= 0:
                        acc[j] += qw * w[pos]

    @njit(cache=True, nogil=True)
    def _bm25_fill(indptr, rows, values, doclen, idf, avgdl, k1, b, plus, terms, filled, weights, maxw):  # pragma: no cover - compiled
        """BM25 weights of the postings of each of ``terms`` not yet ``filled`` (and its largest
        in ``maxw``): the numpy path of ``SparseIndex._fill``, the same float64 operations in
        the same order, so the same float32 weights."""
        vocab = indptr.shape[0] - 1
        for i in range(terms.shape[0]):
            x = terms[i]
            if x >= vocab or filled[x]:
                continue
            filled[x] = True
            lo, hi = indptr[x], indptr[x + 1]
            if lo == hi:
                continue
            m = np.float32(-np.inf)
            for j in range(lo, hi):
                tf = np.float64(values[j])
                if avgdl > 0:
                    norm = k1 * (1.0 - b + b * doclen[rows[j]] / avgdl)
                else:
                    norm = k1 * (1.0 - b)
                w = np.float32(idf[x] * (tf * plus / (tf + norm)))
                weights[j] = w
                m = max(m, w)
            maxw[x] = m

    @njit(cache=True, nogil=True)
    def _bm25_fill_tiers(IP, R, V, DL, IDF, AVG, k1, b, plus, FILLED, W, MW, terms):  # pragma: no cover - compiled
        """:func:`_bm25_fill` of ``terms`` in each tier ``t`` (its arrays the ``t``-th of each list)."""
        for t in range(len(IP)):
            _bm25_fill(IP[t], R[t], V[t], DL[t], IDF[t], AVG[t], k1, b, plus, terms, FILLED[t], W[t], MW[t])

    @njit(cache=True, nogil=True)
    def _locate(KEYS, KROWS, NKEYS, ALIVE, OFF, slots, out):  # pragma: no cover - compiled
        """``out[j]``: the index row of ``slots[j]`` (segment ``s``'s row + ``OFF[s]``) over
        segments whose slot maps are ``KEYS[s][:NKEYS[s]]`` (increasing) -> ``KROWS[s]``, or -1
        when no segment holds it alive (``ALIVE[s][row]``). Segments in the outer loop: an item
        of a typed list costs a reference count each time it is taken."""
        out[:] = -1
        for s in range(OFF.shape[0]):
            n = NKEYS[s]
            if n == 0:
                continue
            keys, krows, alive = KEYS[s], KROWS[s], ALIVE[s]
            first, last = keys[0], keys[n - 1]
            for j in range(slots.shape[0]):
                x = slots[j]
                if out[j] >= 0 or x < first or x > last:
                    continue
                pos = _find(keys, 0, n, x)
                if pos >= 0:
                    row = krows[pos]
                    if alive[row]:
                        out[j] = OFF[s] + row

    @njit(cache=True, nogil=True)
    def _rows_per_term(indptr, rows, removed, out):  # pragma: no cover - compiled
        """``out[t] +=`` how many of ``removed`` (sorted, distinct) term ``t``'s postings hold."""
        for t in range(indptr.shape[0] - 1):
            lo = indptr[t]
            hi = indptr[t + 1]
            if lo == hi:
                continue
            first = rows[lo]
            last = rows[hi - 1]
            for j in range(removed.shape[0]):
                row = removed[j]
                if row < first:
                    continue
                if row > last:
                    break
                if _find(rows, lo, hi, row) >= 0:
                    out[t] += 1.0

    # Typed lists are made and measured by these compiled, cached functions: a typed list's own
    # methods, called from Python, are compiled in every process (numba does not cache them),
    # 0.4-1 s per element type, ~4 s of every process that opened an index (issue 25).
    @njit(cache=True)
    def _list_of(a):  # pragma: no cover - compiled
        lst = List()
        lst.append(a)
        return lst

    @njit(cache=True)
    def _list_push(lst, a):  # pragma: no cover - compiled
        lst.append(a)

    @njit(cache=True)
    def _list_len(lst):  # pragma: no cover - compiled
        return len(lst)


def rows_per_term(indptr: np.ndarray, rows: np.ndarray, removed: np.ndarray, out: np.ndarray) -> None:
    """Add to ``out`` (float64 [terms]) how many of the rows ``removed`` (sorted, distinct) each
    term's postings hold (``indptr``/``rows``: postings by term, rows increasing within a term).
    O(terms x removed x log postings): for a few removed rows, much less than a pass over the
    postings (compiled kernel; callers check :data:`AVAILABLE`)."""
    _rows_per_term(_ro(indptr, np.int64), _ro(rows), _ro(removed, np.int64), out)


def score_rows(terms: np.ndarray, qws: np.ndarray, tiers: tuple, cand: np.ndarray, acc: np.ndarray) -> None:
    """Add one query's exact scores of the index rows ``cand`` (int64; < 0: skipped) to ``acc``
    (float32), as :func:`_score_rows`; ``tiers``: ``(IP, R, W, OFF, END)`` (typed lists of
    each tier's indptr, rows and weights; offsets and ends), made once by a caller that scores
    several queries (:func:`array_list`)."""
    _score_rows(_ro(terms), _ro(qws, np.float32), *tiers, _ro(cand, np.int64), acc)


def flat_top_k(vecs: Any, slots: Any, slot_off: np.ndarray, alive: Any, all_alive: np.ndarray,
               allowed: np.ndarray | None, q: np.ndarray, l2: bool, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, slots)`` ``(nq, k)``: :func:`_flat_top_k` (typed lists from :func:`array_list`)."""
    nq = q.shape[0]
    out_s = np.full((nq, k), -np.inf, dtype=np.float32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    if k:
        _flat_top_k(vecs, slots, _ro(slot_off, np.int64), alive, _ro(all_alive, np.bool_),
                    _ro(_NO_MASK if allowed is None else allowed, np.bool_), _ro(q, np.float32), bool(l2), k,
                    out_s, out_i)
    return out_s, out_i


def flat_scores(vecs: Any, off: np.ndarray, q: np.ndarray, rows: np.ndarray, l2: bool) -> np.ndarray:
    """float32 scores of index rows ``rows`` for one query ``q``: :func:`_flat_scores`."""
    out = np.empty(len(rows), dtype=np.float32)
    _flat_scores(vecs, _ro(off, np.int64), _ro(q, np.float32), _ro(rows, np.int64), bool(l2), out)
    return out


def spans(IP: Any, MW: Any, terms: np.ndarray, qws: np.ndarray,
          prune: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(LO, HI, ub or None)``: :func:`_spans` over ``len(IP)`` tiers (typed lists of each
    tier's indptr and largest weight per term, see :func:`array_list`)."""
    nt, npairs = _list_len(IP), len(terms)
    lo = np.empty((nt, npairs), dtype=np.int64)
    hi = np.empty((nt, npairs), dtype=np.int64)
    ub = np.zeros(npairs, dtype=np.float32)
    _spans(IP, MW, _ro(terms), _ro(qws, np.float32), bool(prune), lo, hi, ub)
    return lo, hi, (ub if prune else None)


def bm25_fill(indptr: np.ndarray, rows: np.ndarray, values: np.ndarray, doclen: np.ndarray, idf: np.ndarray,
              avgdl: float, k1: float, b: float, plus: float, terms: np.ndarray, filled: np.ndarray,
              weights: np.ndarray, maxw: np.ndarray) -> None:
    """:func:`_bm25_fill` (``filled``, ``weights``, ``maxw`` are written in place)."""
    _bm25_fill(_ro(indptr, np.int64), _ro(rows), _ro(values, np.float32), _ro(doclen, np.float64),
               _ro(idf, np.float64), float(avgdl), float(k1), float(b), float(plus), _ro(terms), filled, weights, maxw)


def bm25_fill_tiers(IP: Any, R: Any, V: Any, DL: Any, IDF: Any, avgdl: np.ndarray, k1: float, b: float, plus: float,
                    FILLED: Any, W: Any, MW: Any, terms: np.ndarray) -> None:
    """:func:`_bm25_fill_tiers`: typed lists from :func:`array_list` (``FILLED``, ``W``, ``MW``
    writable; written in place), one average length per tier."""
    _bm25_fill_tiers(IP, R, V, DL, IDF, _ro(avgdl, np.float64), float(k1), float(b), float(plus), FILLED, W, MW,
                     _ro(terms))


def locate(keys: Any, rows: Any, n_keys: np.ndarray, alive: Any, off: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Index row (int64) of each of ``slots`` over several segments, -1 where none holds it
    alive: :func:`_locate` (``keys``, ``rows``, ``alive``: typed lists, see :func:`array_list`)."""
    out = np.empty(len(slots), dtype=np.int64)
    _locate(keys, rows, _ro(n_keys, np.int64), alive, _ro(off, np.int64), _ro(slots, np.int64), out)
    return out


def array_list(cache: dict, name: str, arrays: Sequence[np.ndarray], dtype: Any, writable: bool = False) -> Any:
    """A numba typed list of read-only views of ``arrays`` (as ``dtype``), kept in ``cache``
    under ``name`` and reused while the same arrays (by identity) are asked for: building one
    costs 20-70 us, more than a small search, and a search of several segments passes a few
    per store. Arrays changed in place are seen through the views. ``writable``: the arrays
    themselves (C-contiguous, of ``dtype``, writeable), for a kernel that writes them."""
    got = cache.get(name)
    if got is not None and len(got[0]) == len(arrays) and all(x is y for x, y in zip(got[0], arrays)):
        return got[1]
    views = []
    for x in arrays:
        if writable:
            if not (x.flags.writeable and x.flags.c_contiguous and x.dtype == dtype):
                raise ValueError(f"{name}: a kernel writes these arrays in place; got dtype {x.dtype}, "
                                 f"writeable {x.flags.writeable}")
            v = x
        else:
            v = _ro(x, dtype)
        views.append(v if type(v) is np.ndarray else v.view(np.ndarray))   # np.memmap -> ndarray
    if views:
        lst = _list_of(views[0])
        for v in views[1:]:
            _list_push(lst, v)
    else:   # (no array: the element type from dtype; compiles the list's methods here, rare)
        from numba import from_dtype, typed, types

        lst = typed.List.empty_list(types.Array(from_dtype(np.dtype(dtype)), 1, "C", readonly=not writable))
    cache[name] = (tuple(arrays), lst)
    return lst


def rows_dtype(arrays: Sequence[np.ndarray]) -> type:
    """int32 unless one of the posting row arrays is int64 (> 2**31 rows)."""
    return np.int64 if any(a.dtype == np.int64 for a in arrays) else np.int32


def _ro(a: np.ndarray, dtype: type | None = None) -> np.ndarray:
    """A read-only C-contiguous view (a copy only when the dtype or layout differs): every
    input then has the same numba type whether the index was built or memory-mapped, so the
    kernel compiled at import is the one every call uses."""
    if not a.flags.writeable and a.flags.c_contiguous and (dtype is None or a.dtype == dtype):
        return a   # already one (a call on the hot path passes several)
    v = np.ascontiguousarray(a, dtype=dtype).view()
    v.flags.writeable = False
    return v


def dense_top_k(n_rows: int, k: int, pair_start: np.ndarray, qws: np.ndarray, tiers: tuple,
                invalid: np.ndarray | None, out_s: np.ndarray, out_i: np.ndarray,
                out_rows: np.ndarray, threads: int = 1, ub: np.ndarray | None = None) -> None:
    """Top-k by dense accumulation of the queries whose (query, term) pairs are
    ``pair_start[j]:pair_start[j + 1]`` (weights ``qws``), written to rows ``out_rows`` of
    ``out_s`` / ``out_i`` (which hold -inf / -1 beforehand). ``tiers``: ``(R, W, LO, HI, OFF,
    END, RS)`` as the kernels take them (see the comment above :func:`_accumulate`; typed lists
    from :func:`array_list`; ``LO``/``HI`` int64 ``[tiers, pairs]``), over ``n_rows`` index
    rows. ``invalid``: index rows that may not be returned (or None). ``ub``: per pair, its
    largest addend (``qws[p]`` times the largest weight of its postings); given, queries of
    several terms skip the postings that cannot change their top k (see :func:`_maxscore`; same
    results). ``threads`` > 1 splits the queries into runs of about equal estimated work (see
    :func:`_split`; four per thread with ``ub``), which the calling thread and ``threads - 1``
    workers of a shared pool take in turn (each run writes its own rows)."""
    if not AVAILABLE:
        raise RuntimeError("the numba kernel is not available")
    R, W, LO, HI, OFF, END, RS = tiers
    t = (R, W, _ro(LO, np.int64), _ro(HI, np.int64), _ro(OFF, np.int64), _ro(END, np.int64), RS)
    inv = _ro(np.zeros(0, dtype=np.int64) if invalid is None else invalid, np.int64)
    ok = np.zeros(0, dtype=np.bool_)   # the pruned path's mask of returnable rows (empty: all)
    if ub is not None and invalid is not None and len(invalid):
        ok = np.ones(int(n_rows), dtype=np.bool_)
        ok[invalid] = False
    ok = _ro(ok)
    ps, qw = _ro(pair_start, np.int64), _ro(qws, np.float32)
    ubs = _ro(np.zeros(0, dtype=np.float32) if ub is None else ub, np.float32)
    rows = _ro(out_rows, np.int64)
    nq = len(ps) - 1
    n = min(int(threads), nq)
    if n <= 1:   # one run on this thread (a one-query search): no pool, no lock
        _dense_top_k(int(n_rows), int(k), ps, qw, ubs, *t, inv, ok, out_s, out_i, rows)
        return
    # with several threads: runs of about equal estimated work, taken in turn by whichever
    # thread is free; four per thread when pruning makes a query's real work hard to foresee
    per = 4 if len(ubs) else 1
    bounds = _split(ps, t[2], t[3], min(per * n, nq), int(n_rows)) if n > 1 else [0, nq]
    taken = iter(range(len(bounds) - 1))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                j = next(taken, None)
            if j is None:
                return
            a, e = bounds[j], bounds[j + 1]
            _dense_top_k(int(n_rows), int(k), ps[a:e + 1], qw, ubs, *t, inv, ok, out_s, out_i, rows[a:e])

    futures = []
    for _ in range(n - 1):
        try:
            futures.append(_pool().submit(work))
        except RuntimeError:   # the interpreter is shutting down: no new threads; this one does it all
            break
    try:
        work()
    finally:
        for f in futures:
            f.result()   # wait for every run (and re-raise its error) before returning


def pq_scores(codes: np.ndarray, table: np.ndarray, sq: np.ndarray, unit: bool) -> np.ndarray:
    """float32 ``(n, tq)``: row ``i`` is ``sum_g table[g*256 + codes[i, g]]``, divided by the norm
    ``sqrt(sum_g sq[g*256 + codes[i, g]])`` when ``unit`` (compiled kernel; callers check
    :data:`AVAILABLE`)."""
    out = np.empty((codes.shape[0], table.shape[1]), dtype=np.float32)
    _pq_scores(_ro(codes, np.uint8), _ro(table, np.float32), _ro(sq, np.float32), bool(unit), out)
    return out


_NO_MASK = np.zeros(0, dtype=np.bool_)   # rescore_top_k's mask argument when there is no filter
_NO_MASK.flags.writeable = False


def rescore_top_k(rows: np.ndarray, base: np.ndarray, tail: np.ndarray, q: np.ndarray, row_slot: np.ndarray,
                  mask: np.ndarray | None, l2: bool, k: int,
                  need: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Exact top-``k`` ``(scores, slots, lowest, short)`` of the ANN hits ``rows`` of float32
    queries ``q`` against float32 stored rows (``base`` then ``tail``), as
    :func:`_rescore_top_k`; ``short`` counts the queries left with fewer than ``need`` hits
    (compiled kernel; callers check :data:`AVAILABLE`). Read-only C-contiguous inputs (see
    :func:`readonly`) are passed on as they are, so a caller that keeps them saves the views."""
    nq = rows.shape[0]
    out_s = np.empty((nq, k), dtype=np.float32)
    out_i = np.empty((nq, k), dtype=np.int64)
    lowest = np.empty(nq, dtype=np.float64)
    use_mask = mask is not None
    short = _rescore_top_k(_ro(rows, np.int64), _ro(base, np.float32), _ro(tail, np.float32), _ro(q, np.float32),
                           _ro(row_slot, np.int64), _ro(mask if use_mask else _NO_MASK, np.bool_), use_mask,
                           bool(l2), k, need, out_s, out_i, lowest)
    return out_s, out_i, lowest, int(short)


def all_finite(a: np.ndarray) -> bool:
    """Whether every value of the C-contiguous float32 array ``a`` is finite: one compiled
    pass with numba (faster than ``np.isfinite(a).all()`` for a query vector, and without
    its mask as large as ``a``; docs/CHANGELOG-performance.md, engine change 16), numpy
    without."""
    if not AVAILABLE:
        return bool(np.isfinite(a).all())
    return bool(_all_finite(a.reshape(-1)))


def readonly(a: np.ndarray, dtype: type) -> np.ndarray:
    """``a`` as the kernels take it: a read-only C-contiguous ``dtype`` view (a copy only
    when the dtype or layout differs)."""
    return _ro(a, dtype)


def _split(pair_start: np.ndarray, lo: np.ndarray, hi: np.ndarray, n: int, n_rows: int) -> list[int]:
    """Query boundaries ``[0, ..., nq]`` cutting the queries into ``n`` runs of about equal
    work (``pair_start[0]`` is 0; ``lo``/``hi``: each tier's postings per pair). A query's
    work is its postings, plus half the rows when it makes a pass over them (at 4 postings per
    row or more, as :func:`_dense_top_k` decides; the pass costs about half a scattered posting
    per row)."""
    per_pair = (hi - lo).sum(axis=0)
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
    """Compile (or load from numba's cache) the kernels (int32 posting rows; pq scores; dense
    re-score; sparse scores of given rows; rows per term) at import.

    Lazily, the first search would compile it; several threads searching at once could then
    run numba's lowering (which calls ``ast.parse``) beside other ``ast`` users, and CPython
    3.11 can raise ``SystemError: AST constructor recursion depth mismatch`` when two threads
    build AST objects at once (seen in CI in tests/test_concurrency.py; python/cpython#106905).
    Imports run one at a time, usually before a program starts its threads."""
    rows = np.array([0, 1], dtype=np.int32)
    cache: dict = {}
    one = np.ones(2, dtype=np.float32)
    slots = np.arange(2)
    R, W = array_list(cache, "r", [rows], np.int32), array_list(cache, "w", [one], np.float32)
    RS = array_list(cache, "s", [slots], np.int64)
    lo, hi, off, end = np.zeros((1, 1), dtype=np.int64), np.full((1, 1), 2), np.zeros(1, dtype=np.int64), np.full(1, 2)
    dense_top_k(2, 1, np.array([0, 1]), one[:1], (R, W, lo, hi, off, end, RS), None,
                np.full((1, 1), -np.inf, dtype=np.float32), np.full((1, 1), -1), np.arange(1), ub=one[:1])
    IP = array_list(cache, "ip", [np.array([0, 2])], np.int64)
    spans(IP, W, np.zeros(1, dtype=np.int32), one[:1], True)
    score_rows(np.zeros(1, dtype=np.int32), one[:1], (IP, R, W, off, end), np.arange(2), np.zeros(2, dtype=np.float32))
    alive = array_list(cache, "a", [np.ones(2, dtype=bool)], np.bool_)
    locate(RS, RS, np.full(1, 2), alive, off, slots)
    v2 = array_list(cache, "v", [np.ones((2, 2), dtype=np.float32)], np.float32)
    flat_top_k(v2, RS, np.zeros(1, dtype=np.int64), alive, np.ones(1, dtype=bool), None, np.ones((1, 2), np.float32),
               False, 1)
    flat_scores(v2, off, np.ones(2, dtype=np.float32), slots, False)
    bm25_fill(np.array([0, 2]), rows, one, np.ones(2), np.ones(1), 1.0, 1.5, 0.75, 2.5, np.zeros(1, dtype=np.int32),
              np.zeros(1, dtype=bool), np.zeros(2, dtype=np.float32), np.zeros(1, dtype=np.float32))
    bm25_fill_tiers(IP, R, W, array_list(cache, "dl", [np.ones(2)], np.float64),
                    array_list(cache, "idf", [np.ones(1)], np.float64), np.ones(1), 1.5, 0.75, 2.5,
                    array_list(cache, "f", [np.zeros(1, dtype=bool)], np.bool_, writable=True),
                    array_list(cache, "fw", [np.zeros(2, dtype=np.float32)], np.float32, writable=True),
                    array_list(cache, "fm", [np.zeros(1, dtype=np.float32)], np.float32, writable=True),
                    np.zeros(1, dtype=np.int32))
    pq_scores(np.zeros((1, 1), dtype=np.uint8), np.ones((256, 1), dtype=np.float32),
              np.ones(256, dtype=np.float32), True)
    one = np.ones((1, 2), dtype=np.float32)
    rescore_top_k(np.zeros((1, 1), dtype=np.int64), one, one[:0], one, np.zeros(1, dtype=np.int64), None, False, 1)
    all_finite(one)
    all_finite(_ro(one))   # memory-mapped or read-only inputs
    rows_per_term(np.array([0, 2]), rows, np.arange(1), np.zeros(1))

if AVAILABLE:
    try:
        _compile_now()
    except Exception as exc:  # noqa: BLE001 - an unusable numba must not break the index
        import warnings

        warnings.warn(f"hybridrag: numba kernel unavailable ({type(exc).__name__}: {exc}); using numpy",
                      RuntimeWarning, stacklevel=2)
        AVAILABLE = False
