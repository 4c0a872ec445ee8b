"""SparseIndex: exact top-k, masks, padding, incremental adds/deletes, memory, persistence, bad input."""
from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridrag.errors import ConfigError, IndexFormatError
from hybridrag.stores import _kernels
from hybridrag.stores.sparse import SparseIndex


@pytest.fixture(params=["numba", "numpy"])
def dense_path(request, monkeypatch):
    """Run a test with the compiled kernel (numba, a dependency) and without (every query by
    scipy's sparse product)."""
    if request.param == "numba":
        if not _kernels.AVAILABLE:
            pytest.skip("the numba kernel is off (HYBRIDRAG_NUMBA=0, or numba could not compile it)")
    else:
        monkeypatch.setattr(_kernels, "AVAILABLE", False)
    return request.param

VOCAB = 250_002


def random_rows(n: int, seed: int, vocab: int = 50, nnz: int = 6, ints: bool = False) -> list[dict[int, float]]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        m = int(rng.integers(0, nnz + 1))
        ids = rng.choice(vocab, size=m, replace=False)
        vals = rng.integers(1, 4, size=m).astype(float) if ints else np.round(rng.random(m), 2) + 0.01
        rows.append({int(i): float(v) for i, v in zip(ids, vals)})
    return rows


def dot(q: dict[int, float], d: dict[int, float]) -> float:
    return float(sum(w * d[t] for t, w in q.items() if t in d))


def brute(queries, docs, slots, k, allowed=None):
    """Reference (scores, slots) with the store's rules: nonzero scores only, score desc, slot asc."""
    out = []
    for q in queries:
        hits = [(dot(q, d), s) for d, s in zip(docs, slots)
                if (allowed is None or allowed[s]) and any(t in d for t in q)]
        hits = [h for h in hits if h[0] != 0]
        hits.sort(key=lambda h: (-h[0], h[1]))
        out.append(hits[:k])
    return out


def assert_topk(scores, ids, ref, rtol=1e-5):
    for i, hits in enumerate(ref):
        n = len(hits)
        assert np.all(ids[i, n:] == -1) and np.all(np.isneginf(scores[i, n:]))
        np.testing.assert_allclose(scores[i, :n], [h[0] for h in hits], rtol=rtol)
        # tie-aware: equal slot sets per distinct score, except possibly at the k-th score boundary
        ref_ids = [h[1] for h in hits]
        if n:
            last = hits[-1][0]
            strict = [s for (v, s) in hits if not np.isclose(v, last, rtol=rtol)]
            got_strict = [int(s) for v, s in zip(scores[i, :n], ids[i, :n]) if not np.isclose(v, last, rtol=rtol)]
            assert sorted(strict) == sorted(got_strict)
            assert len(set(ids[i, :n].tolist())) == n
        assert ids[i, :n].tolist() == ref_ids or np.allclose(scores[i, :n], [h[0] for h in hits], rtol=rtol)


def test_none_weighting_equals_dot_products():
    docs = random_rows(300, 0)
    qs = random_rows(20, 1) + [{}]
    idx = SparseIndex()
    idx.add(np.arange(300), docs)
    assert len(idx) == 300
    s, i = idx.search(qs, 10)
    assert s.shape == (21, 10) and i.shape == (21, 10) and s.dtype == np.float32 and i.dtype == np.int64
    assert_topk(s, i, brute(qs, docs, list(range(300)), 10))
    cands = [np.arange(300)] * len(qs)
    for q, got in zip(qs, idx.score(qs, cands)):
        np.testing.assert_allclose(got, [dot(q, d) for d in docs], rtol=1e-5, atol=1e-7)


def test_ties_broken_by_smaller_slot():
    docs = [{1: 1.0}] * 10
    idx = SparseIndex()
    idx.add(np.arange(10)[::-1].copy(), docs)
    s, i = idx.search([{1: 2.0}], 4)
    assert i.tolist() == [[0, 1, 2, 3]] and np.all(s == 2.0)


def test_allowed_mask_returns_k_hits_when_k_exist():
    docs = [{0: 1.0 + j} for j in range(50)]
    idx = SparseIndex()
    idx.add(np.arange(50), docs)
    allowed = np.zeros(50, dtype=bool)
    allowed[[3, 7, 11, 13]] = True
    s, i = idx.search([{0: 1.0}], 3, allowed=allowed)
    assert i.tolist() == [[13, 11, 7]]
    s, i = idx.search([{0: 1.0}], 6, allowed=allowed)
    assert i[0, :4].tolist() == [13, 11, 7, 3] and i[0, 4:].tolist() == [-1, -1]
    with pytest.raises(ValueError, match="allowed has length"):
        idx.search([{0: 1.0}], 3, allowed=np.ones(10, dtype=bool))
    with pytest.raises(TypeError, match="boolean"):
        idx.search([{0: 1.0}], 3, allowed=np.ones(50, dtype=int))


def test_padding_empty_index_empty_query_large_k():
    idx = SparseIndex("bm25okapi")
    s, i = idx.search([{1: 1.0}, {}], 5)
    assert s.shape == (2, 5) and np.all(np.isneginf(s)) and np.all(i == -1)
    idx.add(np.arange(3), [{1: 1.0}, {}, {2: 2.0}])
    s, i = idx.search([{1: 1.0}, {}, {99: 1.0}], 10)
    assert i[0, 0] == 0 and np.all(i[0, 1:] == -1) and np.all(i[1:] == -1)
    s, i = idx.search([{1: 1.0}], 0)
    assert s.shape == (1, 0)
    s, i = idx.search([], 3)
    assert s.shape == (0, 3)


@pytest.mark.parametrize("weighting", ["none", "bm25okapi", "bm25lucene"])
def test_incremental_adds_and_deletes_equal_fresh_build(weighting):
    docs = random_rows(400, 2, ints=True)
    qs = random_rows(15, 3, ints=True)
    inc = SparseIndex(weighting)
    for start in range(0, 400, 37):   # many small appends, searched in between
        inc.add(np.arange(start, min(400, start + 37)), docs[start:start + 37])
        inc.search(qs[:2], 3)
    fresh = SparseIndex(weighting)
    fresh.add(np.arange(400), docs)
    a, b = inc.search(qs, 20), fresh.search(qs, 20)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    np.testing.assert_array_equal(a[1], b[1])
    gone = np.arange(0, 400, 3)
    inc.remove(gone)
    inc.remove(np.array([10_000]))   # unknown: ignored
    keep = np.setdiff1d(np.arange(400), gone)
    rest = SparseIndex(weighting)
    rest.add(keep, [docs[j] for j in keep])
    assert len(inc) == len(rest) == len(keep)
    a, b = inc.search(qs, 20), rest.search(qs, 20)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.isin(a[1], gone).any()
    sa = inc.score(qs, [np.arange(400)] * len(qs))
    sb = rest.score(qs, [np.arange(400)] * len(qs))
    for x, y in zip(sa, sb):
        np.testing.assert_allclose(x, y, rtol=1e-6)
        assert np.all(np.isneginf(x[gone]))


def test_search_scores_equal_score(dense_path):
    docs = random_rows(200, 4, ints=True)
    qs = random_rows(10, 5, ints=True)
    idx = SparseIndex("bm25okapi")
    idx.add(np.arange(200), docs)
    s, i = idx.search(qs, 7)
    got = idx.score(qs, [row[row >= 0] for row in i])
    for row, g in zip(s, got):
        np.testing.assert_array_equal(row[: len(g)], g)


@pytest.mark.parametrize("weighting", ["none", "bm25okapi"])
def test_compiled_score_equals_the_numpy_path(monkeypatch, weighting):
    """``score()`` through ``_kernels.score_rows`` gives the numpy path's float32 values bit for
    bit: rows in both tiers (main, then a delta of later adds), removed slots, slots never
    added, repeated and unsorted candidates, and query terms past the index's vocabulary."""
    if not _kernels.AVAILABLE:
        pytest.skip("the numba kernel is off (HYBRIDRAG_NUMBA=0, or numba could not compile it)")
    docs = random_rows(600, 11, vocab=80, nnz=12)
    idx = SparseIndex(weighting)
    idx.add(np.arange(500), docs[:500])
    idx.search(random_rows(1, 1), 1)   # folds the first rows into the main tier
    idx.add(np.arange(1000, 1100), docs[500:])   # a delta tier
    idx.remove(np.arange(0, 500, 7))
    idx.search(random_rows(1, 1), 1)
    assert idx._main is not None and idx._delta is not None, "expected two tiers"
    qs = random_rows(12, 12, vocab=120, nnz=9)   # terms 80..119: unknown to the index
    cand = [np.r_[np.random.default_rng(i).permutation(np.r_[0:500, 1000:1100])[:150], 3, 3, 7, 5000]
            for i in range(len(qs))]
    calls = []
    real = _kernels.score_rows
    monkeypatch.setattr(_kernels, "score_rows", lambda *a: calls.append(1) or real(*a))
    got = idx.score(qs, cand)
    assert len(calls) == len(qs), "the compiled path was not taken"
    monkeypatch.setattr(_kernels, "AVAILABLE", False)
    ref = idx.score(qs, cand)
    assert len(calls) == len(qs), "the numpy path called the kernel"
    for g, r in zip(got, ref):
        assert g.dtype == r.dtype == np.float32
        np.testing.assert_array_equal(g, r)
    assert any((g > 0).sum() > 20 for g in got), "too few candidates share a term with the query"


def test_scipy_sparse_input_equals_dicts():
    docs = random_rows(100, 6)
    m = sp.lil_matrix((100, 50), dtype=np.float32)
    for r, d in enumerate(docs):
        for t, v in d.items():
            m[r, t] = v
    a, b = SparseIndex(), SparseIndex()
    a.add(np.arange(100), docs)
    b.add(np.arange(100), m.tocsr())
    qs = random_rows(5, 7)
    np.testing.assert_array_equal(a.search(qs, 5)[1], b.search(qs, 5)[1])


def test_memory_scales_with_postings_not_vocab_times_docs():
    rng = np.random.default_rng(0)
    docs = [{int(t): float(rng.random()) + 0.1 for t in rng.choice(VOCAB, 60, replace=False)} for _ in range(1000)]
    idx = SparseIndex()
    idx.add(np.arange(1000), docs)
    idx.search([{int(next(iter(docs[0]))): 1.0}], 5)   # forces the merge
    nnz = sum(len(d) for d in docs)
    assert idx.nbytes < 2 * nnz * 12 + VOCAB * 8 + 1000 * 64
    bm = SparseIndex("bm25okapi")
    bm.add(np.arange(1000), [{t: 1.0 for t in d} for d in docs])
    bm.search([{int(next(iter(docs[0]))): 1.0}], 5)
    assert bm.nbytes < 3 * nnz * 12 + VOCAB * 8 + 1000 * 64


@pytest.mark.parametrize("weighting", ["none", "bm25okapi"])
def test_save_load_round_trip_mmap(tmp_path, weighting):
    docs = random_rows(120, 8, ints=True)
    qs = random_rows(8, 9, ints=True)
    idx = SparseIndex(weighting, k1=1.2, b=0.7)
    idx.add(np.arange(120), docs)
    idx.remove(np.array([5, 6, 7]))
    files = idx.save(tmp_path, "t1")
    assert set(files) == {"terms", "indptr", "indices", "values", "slots"} | ({"doclen"} if weighting != "none" else set())
    for f in files.values():
        assert (tmp_path / f).exists() and f.endswith(".npy")
        np.load(tmp_path / f, mmap_mode="r", allow_pickle=False)
    with pytest.raises(FileExistsError):
        idx.save(tmp_path, "t1")
    back = SparseIndex.load(tmp_path, files, idx.config())
    assert isinstance(back._main.indices, np.memmap)
    assert back.config() == idx.config() and len(back) == len(idx) == 117
    np.testing.assert_array_equal(back.search(qs, 10)[1], idx.search(qs, 10)[1])
    np.testing.assert_allclose(back.search(qs, 10)[0], idx.search(qs, 10)[0], rtol=1e-6)
    back.add(np.array([500]), [{1: 2.0}])   # a loaded index stays writable (new arrays, files untouched)
    back.remove(np.array([0]))
    assert len(back) == 117
    with pytest.raises(IndexFormatError):
        SparseIndex.load(tmp_path, {"indptr": files["indptr"]}, idx.config())


@pytest.mark.parametrize("weighting", ["bm25okapi", "bm25lucene"])
def test_load_takes_lengths_from_their_file(tmp_path, monkeypatch, weighting):
    """A BM25 index saves each row's length: load reads it instead of summing every posting
    (np.bincount is not called), and files written before it existed (no ``doclen``) still load,
    their lengths summed from the postings; both answer as the index saved."""
    docs = random_rows(300, 13, ints=True)
    qs = random_rows(20, 14, ints=True)
    idx = SparseIndex(weighting)
    idx.add(np.arange(300), docs)
    idx.remove(np.arange(0, 300, 4))
    files = idx.save(tmp_path, "a")
    want = idx.search(qs, 10)
    old = {r: f for r, f in files.items() if r != "doclen"}
    real = np.bincount
    calls = []
    monkeypatch.setattr(np, "bincount", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    back = SparseIndex.load(tmp_path, files, idx.config())
    assert not calls
    older = SparseIndex.load(tmp_path, old, idx.config())
    assert calls
    for b in (back, older):
        np.testing.assert_array_equal(b._doclen, idx._doclen[: len(idx)])
        got = b.search(qs, 10)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_load_opens_format1_files_without_lengths():
    """The BM25 store of tests/fixtures/format1-bm25 (written before the doclen file) loads and
    scores as an index built from its own postings."""
    import json
    from pathlib import Path

    d = Path(__file__).parent / "fixtures" / "format1-bm25"
    entry = json.loads((d / "manifest.json").read_text())["stores"]["bm25"]
    assert "doclen" not in entry["files"]
    back = SparseIndex.load(d, entry["files"], entry["config"])
    assert len(back) == entry["rows"]
    m = sp.csr_matrix((np.load(d / entry["files"]["values"]), np.load(d / entry["files"]["indices"]),
                       np.load(d / entry["files"]["indptr"]))).T.tocsr()   # rows x terms
    fresh = SparseIndex(**{k: entry["config"][k] for k in ("weighting", "k1", "b", "epsilon")})
    fresh.add(np.load(d / entry["files"]["slots"]), m)
    qs = [{int(t): 1.0} for t in range(back.vocab_size)] + [{0: 1.0, 1: 2.0, 5: 1.0}]
    cands = [np.arange(20)] * len(qs)
    for g, w in zip(back.score(qs, cands), fresh.score(qs, cands)):
        np.testing.assert_array_equal(g, w)


def test_bad_input():
    idx = SparseIndex("bm25okapi")
    with pytest.raises(ValueError, match="k must be"):
        idx.search([{1: 1.0}], -1)
    with pytest.raises(TypeError):
        idx.search([{1: 1.0}], 2.5)
    with pytest.raises(TypeError, match="expected dict"):
        idx.add(np.arange(2), [{1: 1.0}, [1, 2]])
    with pytest.raises(ValueError, match="finite"):
        idx.add(np.arange(1), [{1: float("nan")}])
    with pytest.raises(ValueError, match="finite"):
        SparseIndex().search([{1: float("inf")}], 3)
    with pytest.raises(ValueError, match="negative count"):
        idx.add(np.arange(1), [{1: -1.0}])
    with pytest.raises(TypeError, match="term ids"):
        idx.add(np.arange(1), [{1.5: 1.0}])
    with pytest.raises(ValueError, match="one slot per row"):
        idx.add(np.arange(3), [{1: 1.0}])
    with pytest.raises(ValueError, match="duplicates"):
        idx.add(np.array([1, 1]), [{1: 1.0}, {2: 1.0}])
    with pytest.raises(ValueError, match=">= 0"):
        idx.add(np.array([-1]), [{1: 1.0}])
    idx.add(np.array([4]), [{1: 1.0}])
    with pytest.raises(ValueError, match="already in the index"):
        idx.add(np.array([4]), [{1: 1.0}])
    with pytest.raises(ConfigError, match="weighting"):
        SparseIndex("tfidf")
    with pytest.raises(ConfigError, match="b must be"):
        SparseIndex("bm25okapi", b=2.0)


@pytest.mark.parametrize("weighting", ["none", "bm25lucene"])
def test_threaded_batch_equals_one_thread_and_brute_force(dense_path, weighting):
    """Queries with many postings are scored by dense accumulation, split over threads
    for a batch; every thread count must give the one-thread arrays, equal to brute force."""
    docs = random_rows(300, 11, ints=weighting != "none")
    qs = random_rows(64, 12, ints=weighting != "none")
    idx = SparseIndex(weighting)
    idx.add(np.arange(300), docs)
    idx._flush()
    assert idx._heavy_queries(idx._query_matrix(qs)).sum() >= 48   # the threaded path runs
    allowed = np.arange(300) % 3 != 0
    for mask in (None, allowed):
        one = idx.search(qs, 10, allowed=mask, threads=1)
        for threads in (2, 3, None):
            got = idx.search(qs, 10, allowed=mask, threads=threads)
            np.testing.assert_array_equal(got[0], one[0])
            np.testing.assert_array_equal(got[1], one[1])
        if weighting == "none":
            assert_topk(*one, brute(qs, docs, np.arange(300), 10, mask))


def test_kernel_runs_split_by_work_cover_every_query():
    """The threaded kernel cuts a batch into runs of about equal work: every query is in
    exactly one run, in order, and no run is empty; a query's pass over the rows counts."""
    lo = np.zeros(7, dtype=np.int64)
    hi = np.array([100, 1, 1, 1, 1, 1, 1])   # one heavy pair, then light ones
    pair_start = np.array([0, 1, 3, 5, 7])   # 4 queries
    for n in (2, 3, 4):
        b = _kernels._split(pair_start, lo[None], hi[None], n, 1000)
        assert b[0] == 0 and b[-1] == 4 and all(x < y for x, y in zip(b, b[1:]))
        assert b[1] == 1   # the heavy first query is a run of its own
    assert _kernels._split(pair_start, np.stack([lo, lo]), np.stack([hi, lo]), 9, 1000)[-1] == 4
    # 7 queries of 6, 1, 1, ... postings: by postings alone the first is half the work; when
    # each also passes over the rows (4 rows: 4 postings per row or more), the cut moves later
    lo7, hi7 = np.zeros(7, dtype=np.int64), np.array([6, 1, 1, 1, 1, 1, 1])
    ps7 = np.arange(8)
    assert _kernels._split(ps7, lo7[None], hi7[None], 2, 1000) == [0, 1, 7]
    assert _kernels._split(ps7, lo7[None], hi7[None], 2, 4) == [0, 3, 7]


@pytest.mark.parametrize("weighting", ["none", "bm25okapi"])
def test_first_searches_after_add_on_many_threads(weighting):
    """Searches merge pending adds lazily; several threads making the first searches after an
    add (or a remove) at once must not race in that merge (they raised ValueError / IndexError
    before it took a lock) and must all get the one-thread arrays."""
    import threading

    docs = random_rows(2000, 61, vocab=50, nnz=8, ints=True)
    qs = [{1: 1.0, 2: 1.0, 3: 2.0}] * 20 + random_rows(20, 62, vocab=50, ints=True)
    ref_idx = SparseIndex(weighting)
    ref_idx.add(np.arange(2000), docs)
    ref_idx.remove(np.arange(0, 2000, 2))
    want = ref_idx.search(qs, 5, threads=1)
    for trial in range(4):
        idx = SparseIndex(weighting)
        for a in range(0, 2000, 500):   # several pending adds, then deletes: merges and a compaction
            idx.add(np.arange(a, a + 500), docs[a:a + 500])
        if trial % 2:
            idx.search(qs[:1], 1)
        idx.remove(np.arange(0, 2000, 2))
        errors, got = [], []
        barrier = threading.Barrier(6)

        def go():
            try:
                barrier.wait()
                got.append(idx.search(qs, 5, threads=1))
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=go) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        for s_, i_ in got:
            np.testing.assert_array_equal(i_, want[1])
            np.testing.assert_array_equal(s_, want[0])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_threaded_search_works_in_a_forked_child():
    """The kernel's worker threads do not survive a fork: a child must start its own instead of
    waiting forever on its parent's (which would hang here until the timeout)."""
    import multiprocessing as mp

    if not _kernels.AVAILABLE:
        pytest.skip("the numba kernel is off (HYBRIDRAG_NUMBA=0, or numba could not compile it)")
    docs, qs = random_rows(300, 11), random_rows(64, 12)
    idx = SparseIndex("none")
    idx.add(np.arange(300), docs)
    want = idx.search(qs, 10, threads=2)   # the parent's pool exists now
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=lambda: out.put(idx.search(qs, 10, threads=2)[1].tolist()))
    child.start()
    child.join(60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive and child.exitcode == 0
    assert out.get(timeout=10) == want[1].tolist()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_threads_named(bad):
    idx = SparseIndex()
    idx.add([0], [{1: 1.0}])
    with pytest.raises(ValueError, match="threads"):
        idx.search([{1: 1.0}], 3, threads=bad)


@pytest.mark.parametrize("weighting", ["none", "bm25okapi", "bm25lucene"])
def test_dense_accumulation_equals_sparse_product(monkeypatch, dense_path, weighting):
    """Queries scored by dense accumulation (the kernel) give the sparse product's arrays bit
    for bit: same scores, same (score desc, slot asc) order, with two tiers, deletes, ties and
    an allowed mask; with weighting 'none' both equal brute force."""
    import hybridrag.stores.sparse as sparse_mod

    monkeypatch.setattr(sparse_mod, "_SMALL_ROWS", -1)   # routing by _DENSE_RATIO alone

    docs = random_rows(500, 21, vocab=30, nnz=8, ints=True) + [{1: 2.0, 2: 1.0}] * 12   # ties
    qs = random_rows(40, 22, vocab=30, nnz=8, ints=True) + [{1: 1.0, 2: 1.0}, {7: 3.0}]
    idx = SparseIndex(weighting)
    idx.add(np.arange(512)[::-1].copy(), docs)   # slots descend: ties are broken by slot, not row
    idx._flush()
    idx._consolidate()
    idx.add(np.arange(600, 660), random_rows(60, 23, vocab=40, nnz=8, ints=True))   # a second tier
    idx.remove(np.arange(0, 512, 7))
    allowed = np.arange(660) % 5 != 1
    for mask in (None, allowed):
        for k in (1, 10, 100):
            monkeypatch.setattr(sparse_mod, "_DENSE_RATIO", 10**9)   # every query with a hit: dense
            idx._flush()
            assert idx._heavy_queries(idx._query_matrix(qs)).sum() >= 40
            dense = idx.search(qs, k, allowed=mask, threads=1)
            monkeypatch.setattr(sparse_mod, "_DENSE_RATIO", 0)       # every query: sparse product
            assert not idx._heavy_queries(idx._query_matrix(qs)).any()
            light = idx.search(qs, k, allowed=mask, threads=1)
            np.testing.assert_array_equal(dense[0], light[0])
            np.testing.assert_array_equal(dense[1], light[1])


@pytest.mark.parametrize("ratio", [1, 4, 32, 10**9])
def test_one_query_takes_the_path_it_takes_in_a_batch(monkeypatch, ratio):
    """A query alone is routed (dense accumulation or sparse product) as it is in a batch (the
    routing works on cumulative sums over the batch's (term, weight) pairs): negative weights,
    terms that only the second tier holds, unknown terms and empty queries included; and it gets
    the batch's hits, which are brute force's (weighting 'none')."""
    import hybridrag.stores.sparse as sparse_mod

    monkeypatch.setattr(sparse_mod, "_SMALL_ROWS", -1)   # routing by _DENSE_RATIO alone

    docs = random_rows(300, 41, vocab=60, nnz=10)
    more = random_rows(40, 42, vocab=90, nnz=10)     # the second tier also holds terms 60..89
    idx = SparseIndex("none")
    idx.add(np.arange(300), docs)
    idx._flush()
    idx._consolidate()
    idx.add(np.arange(300, 340), more)
    qs = random_rows(60, 43, vocab=90, nnz=12) + [{1: 1.0, 2: -0.5}, {75: 1.0, 80: 2.0}, {500: 1.0}, {}]
    monkeypatch.setattr(sparse_mod, "_DENSE_RATIO", ratio)
    idx._flush()
    batch = idx._heavy_queries(idx._query_matrix(qs))
    assert 0 < batch.sum() < len(qs) or ratio in (1, 10**9)
    alone = [bool(idx._heavy_queries(idx._query_matrix([q]))[0]) for q in qs]
    assert alone == batch.tolist()
    assert not alone[60] and not alone[-1] and not alone[-2]   # negative weight; empty; unknown term only
    assert alone[61] is (ratio == 10**9)   # its postings are all in the second tier: they count
    want = brute(qs, docs + more, list(range(340)), 10)
    got_batch = idx.search(qs, 10, threads=1)
    assert_topk(*got_batch, want)
    for i, q in enumerate(qs):
        s, ids = idx.search([q], 10)
        np.testing.assert_array_equal(s[0], got_batch[0][i])
        np.testing.assert_array_equal(ids[0], got_batch[1][i])


_rows = st.lists(st.dictionaries(st.integers(0, 40), st.integers(1, 5).map(float), max_size=8), min_size=1, max_size=60)


@settings(max_examples=int(os.environ.get("HYBRIDRAG_FUZZ_EXAMPLES", "50")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=_rows, queries=_rows, more=_rows, k=st.integers(1, 12), drop=st.sets(st.integers(0, 130), max_size=20),
       weighting=st.sampled_from(["none", "bm25okapi", "bm25lucene"]))
def test_dense_and_sparse_paths_agree_fuzz(monkeypatch, dense_path, docs, queries, more, k, drop, weighting):
    """Random corpora (two tiers, deletes, repeated rows and ties), random queries: the
    dense-accumulation path (the kernel) returns the sparse product's arrays exactly; with
    weighting 'none' both equal brute force."""
    import hybridrag.stores.sparse as sparse_mod

    monkeypatch.setattr(sparse_mod, "_SMALL_ROWS", -1)   # routing by _DENSE_RATIO alone

    idx = SparseIndex(weighting)
    idx.add(np.arange(len(docs)) * 2, docs)          # even slots
    idx._flush()
    idx._consolidate()
    idx.add(np.arange(len(more)) * 2 + 1, more)      # odd slots: a second tier
    idx.remove(np.array(sorted(drop), dtype=np.int64))
    monkeypatch.setattr(sparse_mod, "_DENSE_RATIO", 10**9)
    dense = idx.search(queries, k, threads=1)
    monkeypatch.setattr(sparse_mod, "_DENSE_RATIO", 0)
    light = idx.search(queries, k, threads=1)
    np.testing.assert_array_equal(dense[0], light[0])
    np.testing.assert_array_equal(dense[1], light[1])
    if weighting == "none":
        slots = np.concatenate([np.arange(len(docs)) * 2, np.arange(len(more)) * 2 + 1])
        rows = docs + more
        live = [s not in drop for s in slots]
        ref = brute(queries, [r for r, a in zip(rows, live) if a], slots[np.array(live, dtype=bool)].tolist(), k)
        assert_topk(*dense, ref)


@pytest.mark.parametrize("weighting", ["none", "bm25okapi"])
def test_compiled_kernel_scores_heavy_queries_once_per_batch(monkeypatch, weighting):
    """With numba the queries with many postings go through the compiled kernel, once per
    batch (not per query), whatever the index's size; with the kernel off none do (every query
    is a sparse product); both give brute force's hits (weighting 'none') and the same arrays."""
    import hybridrag.stores.sparse as sparse_mod

    if not _kernels.AVAILABLE:
        pytest.skip("the numba kernel is off (HYBRIDRAG_NUMBA=0, or numba could not compile it)")
    docs = random_rows(300, 41, vocab=20, nnz=6, ints=True)
    qs = random_rows(25, 42, vocab=20, nnz=6, ints=True)
    idx = SparseIndex(weighting)
    idx.add(np.arange(300), docs)
    calls = []
    real = _kernels.dense_top_k
    monkeypatch.setattr(_kernels, "dense_top_k", lambda *a, **kw: calls.append(len(a[8])) or real(*a, **kw))
    got = idx.search(qs, 10, threads=1)
    assert len(calls) == 1 and calls[0] >= 15   # one call for the batch's heavy queries
    monkeypatch.setattr(sparse_mod, "_PRUNE_MIN_ROWS", 0)   # BM25: the pruned kernel
    pruned = idx.search(qs, 10, threads=1)
    monkeypatch.setattr(_kernels, "AVAILABLE", False)
    off = idx.search(qs, 10, threads=1)
    assert len(calls) == 2
    for ref in (pruned, off):
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
    if weighting == "none":
        assert_topk(*got, brute(qs, docs, list(range(300)), 10))


@pytest.mark.parametrize("weighting", ["none", "bm25lucene"])
def test_block_max_pruning_on_many_blocks(monkeypatch, dense_path, weighting):
    """An index of many 256-row blocks, queries with few postings (the kernel keeps block
    maxima while accumulating) and with many, k smaller than the number of blocks so the
    block-max bound prunes: every query, in sequence, gives the sparse product's arrays.
    Both orders: few-postings queries after many-postings ones must not see their block
    maxima (a bug that returned wrong top-10s for 6% of SciFact's queries). With a second
    tier and with masked rows."""
    import hybridrag.stores.sparse as sparse_mod

    monkeypatch.setattr(sparse_mod, "_SMALL_ROWS", -1)   # routing by _DENSE_RATIO alone

    docs = random_rows(4000, 51, vocab=400, nnz=8, ints=weighting != "none")
    few = random_rows(40, 52, vocab=400, nnz=3, ints=weighting != "none")
    many = random_rows(10, 53, vocab=12, nnz=6, ints=weighting != "none")
    rng = np.random.default_rng(54)
    for d in docs:   # two terms in about half the rows: queries with them pass over every row
        d.update({t: 1.0 for t in (398, 399) if rng.random() < 0.5})
    common = [{398: 3.0, 399: 3.0, **q} for q in many]
    qs = few + many + few[:10] + [x for pair in zip(common, few[10:20]) for x in pair]
    idx = SparseIndex(weighting)
    idx.add(np.arange(3600), docs[:3600])
    idx.search(qs[:1], 1)
    idx.add(np.arange(3600, 4000), docs[3600:])   # a second tier (rows 3600-3999)
    allowed = np.arange(4000) % 7 != 0
    for k, mask in itertools.product((1, 5), (None, allowed)):
        monkeypatch.setattr(sparse_mod, "_DENSE_RATIO", 10**9)
        dense = idx.search(qs, k, allowed=mask, threads=1)
        monkeypatch.setattr(sparse_mod, "_DENSE_RATIO", 0)
        light = idx.search(qs, k, allowed=mask, threads=1)
        np.testing.assert_array_equal(dense[0], light[0])
        np.testing.assert_array_equal(dense[1], light[1])
        if weighting == "none":
            assert_topk(*dense, brute(qs, docs, np.arange(4000), k, mask))
    assert idx._delta is not None   # the second tier was scored as such


def zipf_rows(n: int, seed: int, vocab: int, mean_len: int) -> list[dict[int, float]]:
    """Term-count rows with Zipfian term frequencies: a few terms in most rows, most terms rare."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        ids = np.minimum(rng.zipf(1.3, size=int(rng.integers(1, 2 * mean_len))), vocab) - 1
        u, c = np.unique(ids, return_counts=True)
        rows.append({int(i): float(v) for i, v in zip(u, c)})
    return rows


def pruned_index(monkeypatch) -> tuple[SparseIndex, list[dict[int, float]]]:
    """A BM25 index in two tiers with removed rows, and queries mixing rare and common terms;
    pruned although smaller than sparse._PRUNE_MIN_ROWS."""
    from hybridrag.stores import sparse as sparse_mod

    monkeypatch.setattr(sparse_mod, "_PRUNE_MIN_ROWS", 0)
    idx = SparseIndex("bm25lucene")
    idx.add(np.arange(4000), zipf_rows(4000, 51, vocab=3000, mean_len=40))
    idx.remove(np.arange(0, 4000, 7))
    idx.search([{0: 1.0}], 1)   # merge: what follows goes to a second tier
    idx.add(np.arange(4000, 4600), zipf_rows(600, 52, vocab=3000, mean_len=40))
    idx.search([{0: 1.0}], 1)
    qs = zipf_rows(120, 53, vocab=3000, mean_len=4)
    return idx, qs


def test_search_scores_are_score_bit_for_bit(monkeypatch, dense_path):
    """``search_scores_exact``: what the planner relies on to take a mode's own first-stage
    scores instead of rescoring them: two tiers, removed rows, the kernel's pruning, a mask."""
    assert SparseIndex.search_scores_exact
    idx, qs = pruned_index(monkeypatch)
    mask = np.random.default_rng(55).random(4600) < 0.6
    for allowed in (None, mask):
        for q in (qs, qs[:1]):   # a batch and one query: each may take another path
            s, i = idx.search(q, 60, allowed=allowed)
            got = idx.score(q, [row[row >= 0] for row in i])
            assert sum(len(g) for g in got) > 0.9 * i.size
            for row, g in zip(s, got):
                np.testing.assert_array_equal(row[: len(g)], g)


@pytest.mark.parametrize("k", [1, 10, 60])
def test_pruned_kernel_equals_the_sparse_product(monkeypatch, k):
    """The kernel's pruning (_kernels._maxscore: postings skipped once they cannot change the
    top k, candidates re-scored exactly) gives the sparse product's arrays bit for bit (the
    path without numba): two tiers, removed rows, a mask, one thread and two."""
    if not _kernels.AVAILABLE:
        pytest.skip("the numba kernel is off (HYBRIDRAG_NUMBA=0, or numba could not compile it)")
    idx, qs = pruned_index(monkeypatch)
    assert idx._delta is not None and idx._main is not None
    mask = np.random.default_rng(54).random(4600) < 0.6
    for allowed in (None, mask):
        got = [idx.search(qs, k, allowed=allowed, threads=t) for t in (1, 2)]
        monkeypatch.setattr(_kernels, "AVAILABLE", False)
        ref = idx.search(qs, k, allowed=allowed, threads=1)
        monkeypatch.setattr(_kernels, "AVAILABLE", True)
        assert (ref[1] >= 0).sum() > 0.9 * ref[1].size
        for g in got:
            np.testing.assert_array_equal(g[0], ref[0])
            np.testing.assert_array_equal(g[1], ref[1])


def test_pruning_skips_postings(monkeypatch):
    """The data above do exercise the pruning: with upper bounds understated 100x, postings that
    can change the top 10 get skipped and the results go wrong (with the true bounds they are
    exact, as the test above checks)."""
    from hybridrag.stores import sparse as sparse_mod

    if not _kernels.AVAILABLE:
        pytest.skip("the numba kernel is off (HYBRIDRAG_NUMBA=0, or numba could not compile it)")
    idx, qs = pruned_index(monkeypatch)
    exact = idx.search(qs, 10, threads=1)
    real = sparse_mod.SparseIndex._prepare   # BM25: each term's largest weight comes with the weights

    def understated(self, terms):
        return [(t, w, mw * np.float32(0.01)) for t, w, mw in real(self, terms)]

    monkeypatch.setattr(sparse_mod.SparseIndex, "_prepare", understated)
    wrong = idx.search(qs, 10, threads=1)
    assert (wrong[1] != exact[1]).any(axis=1).sum() >= 10
    monkeypatch.setattr(sparse_mod, "_PRUNE_MIN_ROWS", 10**9)   # below the limit: not pruned
    np.testing.assert_array_equal(idx.search(qs, 10, threads=1)[1], exact[1])


def test_max_weights_per_term():
    """_Tier.max_weights: the largest weight of each term's postings, 0 for terms with none."""
    from hybridrag.stores.sparse import _build_tier

    t = _build_tier(np.array([0, 2, 2, 4]), np.array([0, 0, 1, 3]), np.array([1, 5, 3, 2], dtype=np.float32), 6)
    w = np.array([0.5, 2.0, 7.0, 1.5], dtype=np.float32)
    np.testing.assert_array_equal(t.max_weights(w), [0.5, 0, 7.0, 0, 1.5, 0])


def test_query_conversion_paths_agree():
    """A few queries are converted by plain Python (``_few_queries``), more by array operations
    (``_many_queries``): both give the same CSR arrays (dtypes included) and the same errors,
    and ``search`` gives the same results whichever converted its queries."""
    from hybridrag.stores import sparse

    rng = np.random.default_rng(7)
    for _ in range(300):
        vocab = int(rng.integers(0, 40))
        qs = []
        for _ in range(int(rng.integers(0, 2 * sparse._FEW_QUERIES))):
            q: dict = {}
            for _ in range(int(rng.integers(0, 8))):
                t = int(rng.integers(0, 50))   # past the vocabulary too: dropped
                v = float(rng.choice([0.0, 1.0, 2.0, 0.25, -0.5, rng.random()]))   # zeros dropped
                q[t if rng.random() < 0.7 else np.int64(t)] = v if rng.random() < 0.7 else np.float32(v)
            qs.append(q)
        a, b = sparse._few_queries(qs, vocab), sparse._many_queries(qs, vocab)
        assert a.vocab == b.vocab
        for f in ("indptr", "indices", "data"):
            x, y = getattr(a, f), getattr(b, f)
            assert x.dtype == y.dtype and np.array_equal(x, y), (f, qs, vocab)
    bad = [([{1.5: 1.0}], TypeError, "term ids must be ints"), ([{True: 1.0}], TypeError, "term ids must be ints"),
           ([{1: "x"}], TypeError, "weights must be numbers"), ([{1: True}], TypeError, "weights must be numbers"),
           ([{-1: 1.0}], ValueError, "term ids must be >= 0"), ([{1: float("nan")}], ValueError, "finite"),
           ([{1: 1.0}, [1]], TypeError, r"queries\[1\] is list, expected dict"),
           ("ab", TypeError, "must be a list of dict")]
    for qs, err, msg in bad:
        for convert in (sparse._few_queries, sparse._many_queries):
            with pytest.raises(err, match=msg):
                convert(qs, 10)
    idx = SparseIndex("bm25lucene")
    idx.add(np.arange(200), random_rows(200, 3, ints=True))
    qs = random_rows(3 * sparse._FEW_QUERIES, 4, ints=True)
    few = [idx.search(qs[i:i + 1], 5) for i in range(len(qs))]
    many = idx.search(qs, 5)
    for i, (s, ids) in enumerate(few):
        np.testing.assert_array_equal(s[0], many[0][i])
        np.testing.assert_array_equal(ids[0], many[1][i])


def test_kernel_lists_hold_the_element_type_the_kernels_were_compiled_for(tmp_path):
    """``_kernels.array_list`` makes its typed lists with compiled, cached functions (numba
    compiles a typed list's own methods in every process); the lists must still hold exactly
    the element type the kernels were compiled for (read-only C arrays of the asked dtype, or
    writable ones), or every process would compile the kernels again at its first search. A
    memory-mapped array (as a loaded segment's) gives the same type; the arrays are the lists'."""
    import numba
    from numba import from_dtype, types

    from hybridrag.stores import _kernels

    if not _kernels.AVAILABLE:
        pytest.skip("the numba kernel is off (HYBRIDRAG_NUMBA=0, or numba could not compile it)")
    mapped = np.lib.format.open_memmap(tmp_path / "m.npy", mode="w+", dtype=np.float32, shape=(5,))
    mapped[:] = 2.0
    cases = [(np.int32, 1, False), (np.int64, 1, False), (np.float32, 1, False), (np.float64, 1, False),
             (np.bool_, 1, False), (np.float32, 2, False), (np.bool_, 1, True), (np.float32, 1, True)]
    for dt, nd, writable in cases:
        arrays = [np.zeros((3,) * nd, dtype=dt), np.ones((2,) * nd, dtype=dt)]
        lst = _kernels.array_list({}, "x", arrays, dt, writable=writable)
        assert numba.typeof(lst).item_type == types.Array(from_dtype(np.dtype(dt)), nd, "C", readonly=not writable)
        assert _kernels._list_len(lst) == 2
    lst = _kernels.array_list({}, "m", [np.arange(3, dtype=np.float64), mapped], np.float32)
    assert numba.typeof(lst).item_type == types.Array(types.float32, 1, "C", readonly=True)
    np.testing.assert_array_equal(lst[0], [0, 1, 2])   # converted to the asked dtype
    np.testing.assert_array_equal(lst[1], mapped)
    mapped[0] = 7.0   # a view: changes in place are seen
    assert lst[1][0] == 7.0
