"""A search of several segments in one compiled pass (``SparseIndex.search_parts`` /
``score_parts``, ``FaissStore.search_parts`` / ``score_parts``, used by ``SegmentedStore``)
answers as one store holding the segments' live rows: the same slots in the same order (ties
by slot), the same scores (sparse: bit for bit; dense: the scores of one store's exact
re-score), under removals, a slot removed in one segment and added again in a later one,
filters and k past the live count; and as the search of each segment merged, which is what
``SegmentedStore`` runs without the kernels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hybridrag.storage.segments import SegmentedStore
from hybridrag.stores import _kernels
from hybridrag.stores.faiss import FaissStore
from hybridrag.stores.sparse import SparseIndex
from tests.test_sparse_segments import corpus, score_parts, search_parts, segmented, summed_stats
from tests.test_store_segments import faiss_parts, same_scores, union_score, union_search, vecs

pytestmark = pytest.mark.skipif(not _kernels.AVAILABLE, reason="the numba kernels are off")


def sparse_case(weighting: str) -> tuple[list[SparseIndex], SparseIndex, list, int]:
    """Three segments with removals, a fourth holding slots removed from the first again
    (an upsert), every one with the statistics of their union; and one index of the live rows."""
    docs, qs = corpus(83)
    gone = np.r_[0:900:13, 7, 450]
    parts = segmented(weighting, docs, (300, 620), gone)
    again = np.array([0, 13, 26])   # removed above; new rows under the same slots
    new_docs = [dict(docs[900 - 1 - i]) for i in range(3)]
    last = SparseIndex(weighting)
    last.add(again, new_docs)
    parts.append(last)
    stats = summed_stats(parts)
    for p in parts:
        p.set_global_stats(stats)
    whole = SparseIndex(weighting)
    live = np.setdiff1d(np.arange(900), gone)
    whole.add(np.r_[live, again], [docs[i] for i in live] + new_docs)
    return parts, whole, qs, 900


@pytest.mark.parametrize("weighting", ["none", "bm25okapi", "bm25lucene"])
@pytest.mark.parametrize("prune", [False, True])
def test_sparse_segments_in_one_pass_equal_one_index(monkeypatch, weighting, prune):
    import hybridrag.stores.sparse as sparse_mod

    if prune:   # BM25: the pruned kernel (from _PRUNE_MIN_ROWS rows; these are small)
        monkeypatch.setattr(sparse_mod, "_PRUNE_MIN_ROWS", 0)
    parts, whole, qs, n = sparse_case(weighting)
    allowed = np.random.default_rng(5).random(n) < 0.5
    for k, mask in ((10, None), (1, None), (25, allowed), (2000, None), (3, np.arange(n) < 30)):
        for batch in (qs, qs[:1], qs[-3:]):   # 43 queries run on two threads; one; odd ones
            got = SparseIndex.search_parts(parts, batch, k, allowed=mask)
            ref = whole.search(batch, k, allowed=mask)
            np.testing.assert_array_equal(got[1], ref[1])
            np.testing.assert_array_equal(got[0], ref[0])
            merged = search_parts(parts, batch, k, allowed=mask)
            np.testing.assert_array_equal(got[1], merged[1])
    cands = [np.r_[0, 13, 7, 450, 899, 5000, np.arange(100, 140)]] * len(qs)
    for a, b, c in zip(SparseIndex.score_parts(parts, qs, cands), whole.score(qs, cands),
                       score_parts(parts, qs, cands)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_sparse_one_pass_declines_what_it_cannot_do(monkeypatch):
    """Negative weights (scores may cancel: no block-max bound) and no kernel: None, so that
    ``SegmentedStore`` searches segment by segment, with the same results."""
    parts, whole, qs, _ = sparse_case("none")
    neg = [{1: -1.0, 2: 1.0}]
    assert SparseIndex.search_parts(parts, neg, 5) is None
    store = SegmentedStore({str(i): p for i, p in enumerate(parts[:-1])}, parts[-1], lambda: SparseIndex("none"))
    for q in (neg, qs):
        got = store.search(q, 7)
        monkeypatch.setattr(_kernels, "AVAILABLE", False)
        assert SparseIndex.search_parts(parts, q, 7) is None and SparseIndex.score_parts(parts, q, [[1]] * len(q)) is None
        off = store.search(q, 7)
        monkeypatch.setattr(_kernels, "AVAILABLE", True)
        np.testing.assert_array_equal(got[1], off[1])
        np.testing.assert_array_equal(got[0], off[0])
        np.testing.assert_array_equal(got[1], whole.search(q, 7)[1])


@pytest.mark.parametrize("weighting", ["none", "bm25okapi"])
def test_sparse_view_kept_across_searches_follows_every_change(weighting):
    """The caller's cache keeps the segments' layout between searches; a removal, an add (to a
    segment's pending rows, then merged into its tiers by the search), new statistics and two
    threads searching at once all give what one index of the live rows gives."""
    from concurrent.futures import ThreadPoolExecutor

    parts, whole, qs, _ = sparse_case(weighting)
    cache: dict = {}
    cands = [np.r_[0, 13, 7, 450, 899, 5000, 5001, np.arange(100, 140)]] * len(qs)

    def same() -> None:
        for p in parts:
            p.set_global_stats(summed_stats(parts))
        for k in (10, 300):
            got, ref = SparseIndex.search_parts(parts, qs, k, cache=cache), whole.search(qs, k)
            np.testing.assert_array_equal(got[1], ref[1])
            np.testing.assert_array_equal(got[0], ref[0])
        for a, b in zip(SparseIndex.score_parts(parts, qs, cands, cache=cache), whole.score(qs, cands)):
            np.testing.assert_array_equal(a, b)

    same()
    view = cache["view"]
    same()
    assert cache["view"] is view   # nothing changed: the same layout
    for p in parts:
        p.remove([100, 101, 899])
    whole.remove([100, 101, 899])
    same()
    docs = corpus(84, n=10)[0][6:]
    parts[1].add([5000, 5001], docs[:2])
    whole.add([5000, 5001], docs[:2])
    parts[-1].add([5002, 5003], docs[2:])
    whole.add([5002, 5003], docs[2:])
    same()
    assert cache["view"] is not view
    ref = whole.search(qs, 10)
    for p in parts:   # new statistics: every weight is computed again, by the threads below
        p.set_global_stats(None)
    for p in parts:
        p.set_global_stats(summed_stats(parts))
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda b: SparseIndex.search_parts(parts, qs[b:b + 3], 10, cache=cache),
                            range(0, len(qs), 3)))
    np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), ref[1])
    np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), ref[0])


def faiss_case(tmp_path: Path, metric: str) -> tuple[list[FaissStore], FaissStore]:
    """``faiss_parts``' memory-mapped and in-memory segments (both with removals) and a third
    holding a removed slot again and copies of other rows' vectors (ties); one store of the
    live rows."""
    (a, b), _, _ = faiss_parts(tmp_path, metric=metric)
    x = vecs(1200)
    c = a.empty_like()
    c.add(np.array([0, 2600, 2601]), np.r_[x[[5, 800]], x[[5]]])   # slot 0 again; two ties with slot 10
    parts = [a, b, c]
    whole = FaissStore(16, metric=metric, exact_below=0)
    for p in parts:
        rows = np.flatnonzero(p._live[: p._n_rows])
        whole.add(p._row_slot[rows], p._vecs.take(rows))
    return parts, whole


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_segments_in_one_pass_equal_one_store(tmp_path, metric):
    parts, whole = faiss_case(tmp_path, metric)
    q = np.r_[vecs(6, seed=3), vecs(1200)[[5]]]   # the last: ties at the top
    allowed = np.random.default_rng(4).random(2700) < 0.6
    for k, mask in ((10, None), (1, None), (40, allowed), (5, np.arange(2700) < 40), (5000, None)):
        got = FaissStore.search_parts(parts, q, k, allowed=mask)
        ref = whole.search(q, k, allowed=mask)
        np.testing.assert_array_equal(got[1], ref[1])
        same_scores(got[0], ref[0])
        np.testing.assert_array_equal(got[1], union_search(parts, q, k, mask)[1])
    assert list(got[1][-1][:3]) == [0, 10, 2601]   # one vector under three slots: by slot
    cands = [np.r_[0, 6, 10, 2001, 2003, 2601, 9999, np.arange(1000, 1040, 2)]] * q.shape[0]
    mine = FaissStore.score_parts(parts, q, cands)
    for a, b, c in zip(mine, whole.score(q, cands), union_score(parts, q, cands)):
        np.testing.assert_array_equal(a, b)   # both the compiled scores of the same vectors
        same_scores(a, c)
    s, i = FaissStore.search_parts(parts, q, 10)
    for row in range(q.shape[0]):   # search and score agree bit for bit
        np.testing.assert_array_equal(FaissStore.score_parts(parts, q[row:row + 1], [i[row]])[0], s[row])


def test_flat_view_kept_across_searches_follows_every_change(tmp_path):
    """The caller's cache keeps the segments' pieces between searches; a removal and an add
    give what one store of the live rows gives."""
    parts, whole = faiss_case(tmp_path, "ip")
    cache: dict = {}
    q = vecs(3, seed=7)
    cands = [np.r_[0, 6, 10, 2001, 2601, 3000, 3001, np.arange(1000, 1040, 2)]] * 3

    def same() -> None:
        got, ref = FaissStore.search_parts(parts, q, 30, cache=cache), whole.search(q, 30)
        np.testing.assert_array_equal(got[1], ref[1])
        same_scores(got[0], ref[0])
        for a, b in zip(FaissStore.score_parts(parts, q, cands, cache=cache), whole.score(q, cands)):
            np.testing.assert_array_equal(a, b)

    same()
    view = cache["flat_view"]
    same()
    assert cache["flat_view"] is view
    top = FaissStore.search_parts(parts, q, 3, cache=cache)[1][:, 0]
    for p in parts:
        p.remove(top)
    whole.remove(top)
    same()
    new = vecs(2, seed=9) * 3   # far from the others: the new top hits
    parts[-1].add([3000, 3001], new)
    whole.add([3000, 3001], new)
    same()
    assert set(FaissStore.search_parts(parts, new, 1, cache=cache)[1][:, 0]) == {3000, 3001}


def test_flat_one_pass_declines_what_it_cannot_do(tmp_path):
    """Batches of 20 queries or more (FAISS's BLAS path per segment), trained or float16
    stores, different metrics: None (``SegmentedStore`` then searches segment by segment)."""
    parts, _ = faiss_case(tmp_path, "ip")
    assert FaissStore.search_parts(parts, vecs(20), 5) is None
    assert FaissStore.search_parts(parts, vecs(19), 5) is not None
    half = FaissStore(16, vector_dtype="float16")
    half.add([5000], vecs(1))
    assert FaissStore.search_parts([*parts, half], vecs(2), 5) is None
    assert FaissStore.score_parts([*parts, FaissStore(16, metric="l2")], vecs(1), [[1]]) is None
    with pytest.raises(ValueError, match="allowed"):
        FaissStore.search_parts(parts, vecs(1), 5, allowed=np.ones(10, dtype=bool))


def test_merged_away_segments_are_not_kept_by_the_search_cache():
    """The typed lists a store keeps across searches hold its segments' arrays (memory maps of
    their files): a merge, a seal and close drop them, so a merged-away segment's memory and
    mapped files go when nothing else holds them; search results do not change."""
    import gc
    import weakref

    parts, whole, qs, _ = sparse_case("bm25okapi")
    store = SegmentedStore({str(i): p for i, p in enumerate(parts)}, SparseIndex("bm25okapi"),
                           lambda: SparseIndex("bm25okapi"))
    before = store.search(qs, 10)
    assert store._cache   # the one-pass search keeps its typed lists
    gone = weakref.ref(parts[1]._main.indices)
    merged = SparseIndex.merge(parts[1:3])
    store.replace(["1", "2"], "m", merged)
    assert store._cache == {}
    del parts[1:3]
    gc.collect()
    assert gone() is None
    after = store.search(qs, 10)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    store.close()
    assert store._cache == {}
