"""FaissStore specifics: exact Flat vs numpy, HNSW recall, IVF-PQ buffering and training,
filters, tombstones, persistence, validation. The shared protocol checks are in
``test_store_conformance.py``."""
from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from hybridrag.errors import ConfigError, IndexFormatError
from hybridrag.stores import _kernels
from hybridrag.stores.base import topk
from hybridrag.stores.faiss import FaissStore


def data(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def brute(q: np.ndarray, x: np.ndarray, slots: np.ndarray, k: int, metric: str = "ip") -> tuple[np.ndarray, np.ndarray]:
    q64, x64 = q.astype(np.float64), x.astype(np.float64)
    s = q64 @ x64.T if metric == "ip" else -((q64[:, None, :] - x64[None]) ** 2).sum(-1)
    return topk(s, slots, k)


def recall(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean([len(set(g[g >= 0]) & set(r[r >= 0])) / max(1, (r >= 0).sum()) for g, r in zip(got, ref)]))


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_equals_numpy_brute_force(metric: str) -> None:
    x, q = data(3000), data(20, seed=1)
    store = FaissStore(16, metric=metric, exact_below=0)  # through the FAISS index
    store.add(np.arange(3000), x)
    s, i = store.search(q, 10)
    rs, ri = brute(q, x, np.arange(3000), 10, metric)
    np.testing.assert_allclose(s, rs, rtol=1e-4, atol=1e-3)
    # Tie-aware: where two reference scores are within float noise the order may differ.
    for row in range(len(q)):
        gaps = np.abs(np.diff(rs[row])) > 1e-4
        if gaps.all():
            np.testing.assert_array_equal(i[row], ri[row])
        else:
            assert recall(i[row : row + 1], ri[row : row + 1]) >= 0.9


def test_exact_ties_go_to_the_smaller_slot() -> None:
    x = np.ones((50, 4), dtype=np.float32)  # every row scores the same
    for kw in ({}, {"exact_below": 0}):
        store = FaissStore(4, **kw)
        slots = np.arange(100, 150)[::-1].copy()
        store.add(slots, x)
        s, i = store.search(np.ones((2, 4)), 5)
        np.testing.assert_array_equal(i, [[100, 101, 102, 103, 104]] * 2)
        np.testing.assert_allclose(s, 4.0)


def test_hnsw_recall_at_10() -> None:
    x, q = data(2000, 32), data(50, 32, seed=2)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    store = FaissStore(32, "HNSW32", ef_search=128, exact_below=0)
    store.add(np.arange(2000), x)
    _, i = store.search(q, 10)
    _, ri = brute(q, x, np.arange(2000), 10)
    assert recall(i, ri) >= 0.9


def test_hnsw_ef_search_set_after_a_search_takes_effect() -> None:
    # Unfiltered search parameters are cached; a changed ef_search must not reuse them.
    x, q = data(3000, 32), data(50, 32, seed=3)
    store = FaissStore(32, "HNSW8", ef_search=1, exact_below=0)
    store.add(np.arange(3000), x)
    _, ri = brute(q, x, np.arange(3000), 10)
    low = recall(store.search(q, 10)[1], ri)
    store.ef_search = 3000
    assert recall(store.search(q, 10)[1], ri) == 1.0 > low
    store.ef_search = 1
    assert recall(store.search(q, 10)[1], ri) == low


def test_hnsw_tombstones_and_filters_return_k_hits() -> None:
    x, q = data(3000), data(10, seed=3)
    store = FaissStore(16, "HNSW16", exact_below=0)
    store.add(np.arange(3000), x)
    store.remove(np.arange(0, 3000, 2))
    allowed = np.zeros(3000, dtype=bool)
    allowed[1::6] = True  # 500 allowed, all odd (live)
    s, i = store.search(q, 25, allowed=allowed)
    assert (i >= 0).all() and allowed[i].all() and (i % 2 == 1).all()
    _, ri = brute(q, x[1::6], np.arange(1, 3000, 6), 25)
    assert recall(i, ri) >= 0.9
    # A very selective filter (3 rows) still gives exactly those 3.
    few = np.zeros(3000, dtype=bool)
    few[[1, 11, 2999]] = True
    s, i = store.search(q, 5, allowed=few)
    assert sorted(i[0, :3].tolist()) == [1, 11, 2999] and (i[:, 3:] == -1).all()


@pytest.mark.parametrize(("factory", "kernel"), [("Flat", None), ("HNSW16", "rescore_top_k"),
                                                 ("IVF8,Flat", "rescore_top_k")])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_compiled_rescore_equals_the_numpy_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                factory: str, kernel: str | None, metric: str) -> None:
    """The ANN hits' top-k by the numba kernel ``rescore_top_k`` against the numpy path (both
    re-score every hit from the stored vectors); Flat has no FAISS index and no kernel (exact
    brute force). On a store whose rows are split
    between a memory-mapped base and an appended tail, with removed rows, a filter, ties
    (duplicated vectors) and k beyond what the filter lets through."""
    if not _kernels.AVAILABLE:
        pytest.skip("the numba kernel is off (HYBRIDRAG_NUMBA=0, or numba could not compile it)")
    x, q = data(3000), data(30, seed=4)
    x[1500:1600] = x[:100]  # equal scores under different slots
    store = FaissStore(16, factory, metric=metric, exact_below=0)
    store.add(np.arange(0, 4000, 2), x[:2000])
    store = FaissStore.load(tmp_path, store.save(tmp_path, "t"), store.config())
    store.add(np.arange(5000, 6000), x[2000:])
    store.remove(np.arange(0, 400, 4))
    live = np.setdiff1d(np.r_[np.arange(0, 4000, 2), np.arange(5000, 6000)], np.arange(0, 400, 4))
    allowed = np.random.default_rng(5).random(6000) < 0.5
    calls: list[str] = []
    for name in ("rescore_top_k",):
        real = getattr(_kernels, name)
        monkeypatch.setattr(_kernels, name, lambda *a, _f=real, _n=name: calls.append(_n) or _f(*a))
    for k, mask in ((10, None), (1, None), (25, allowed), (10, np.arange(6000) < 30)):
        got = store.search(q, k, allowed=mask)
        with monkeypatch.context() as m:
            m.setattr(_kernels, "AVAILABLE", False)
            ref = store.search(q, k, allowed=mask)
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-5)
        passing = live if mask is None else live[mask[live]]
        assert ((got[1] >= 0).sum(1) == min(k, len(passing))).all()
    want = set() if kernel is None else {kernel}
    assert set(calls) == want, f"compiled path {kernel} expected, took {sorted(set(calls))}"


@pytest.mark.parametrize("l2", [False, True])
def test_rescore_kernel_drops_missing_and_filtered_hits(l2: bool) -> None:
    """``_kernels.rescore_top_k`` itself, against numpy: labels -1 and past the last row and rows
    outside the mask are dropped (FAISS's selector normally filters first), ties go to the
    smaller slot, and ``lowest`` is the smallest kept score."""
    if not _kernels.AVAILABLE:
        pytest.skip("the numba kernel is off (HYBRIDRAG_NUMBA=0, or numba could not compile it)")
    rng = np.random.default_rng(6)
    base, tail, q = data(40, 8), data(20, 8, seed=7), data(5, 8, seed=8)
    tail[:5] = base[:5]  # ties
    slot = rng.permutation(1000)[:60]
    mask = rng.random(60) < 0.7
    # Each query's labels are distinct, as FAISS gives them, then -1 padding.
    rows = np.full((5, 30), -1)
    for i in range(5):
        rows[i, :25] = np.r_[np.arange(5), np.arange(40, 45), rng.permutation(np.r_[5:40, 45:70])[:15]]
    got_s, got_i, low, short = _kernels.rescore_top_k(rows, base, tail, q, slot, mask, l2, 12, need=12)
    kept_per_query = []
    vecs = np.concatenate([base, tail]).astype(np.float64)
    for i in range(5):
        keep = sorted({int(r) for r in rows[i] if 0 <= r < 60 and mask[r]})
        sc = vecs[keep] @ q[i].astype(np.float64)
        if l2:
            sc = -((vecs[keep] - q[i]) ** 2).sum(1)
        sc = sc.astype(np.float32)
        kept = sorted(zip(-sc, slot[keep]))
        hits = [(-a, b) for a, b in kept][:12]
        np.testing.assert_array_equal(got_i[i, : len(hits)], [b for _, b in hits])
        assert (got_i[i, len(hits):] == -1).all() and (got_s[i, len(hits):] == -np.inf).all()
        np.testing.assert_allclose(got_s[i, : len(hits)], [a for a, _ in hits], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(low[i], sc.min(), rtol=1e-5, atol=1e-5)
        kept_per_query.append(len(hits))
    # ``short`` counts the queries that kept fewer than ``need`` hits (of the k returned).
    assert short == sum(n < 12 for n in kept_per_query)
    for need in (0, min(kept_per_query), max(kept_per_query) + 1):
        assert _kernels.rescore_top_k(rows, base, tail, q, slot, mask, l2, 12, need=need)[3] == \
            sum(n < need for n in kept_per_query)


def test_ivfpq_buffers_until_trained() -> None:
    x, q = data(1200), data(8, seed=4)
    store = FaissStore(16, "IVF8,PQ4x4", min_train=600, nprobe=8, exact_below=0, refine_factor=4)
    assert store.min_train == 600
    store.add(np.arange(500), x[:500])
    assert not store._index.is_trained  # still buffering: search is exact brute force
    brute_calls: list[int] = []
    real_brute = store._brute
    store._brute = lambda *a: brute_calls.append(1) or real_brute(*a)   # type: ignore[method-assign]
    s, i = store.search(q, 10)
    assert brute_calls
    rs, ri = brute(q, x[:500], np.arange(500), 10)
    np.testing.assert_array_equal(i, ri)
    store.add(np.arange(500, 1200), x[500:])
    assert store._index.is_trained and store._index.ntotal == 1200
    brute_calls.clear()
    s, i = store.search(q, 10)
    assert not brute_calls, "a trained index must answer (the store's ready state was not renewed)"
    assert (i >= 0).all()
    _, ri = brute(q, x, np.arange(1200), 10)
    assert recall(i, ri) >= 0.5
    # Returned scores are exact (re-scored from the kept vectors), equal to score().
    exact = store.score(q, list(i))
    np.testing.assert_allclose(s, np.stack(exact), rtol=1e-5, atol=1e-5)


def test_default_min_train_follows_faiss_guidance() -> None:
    assert FaissStore(8, "IVF100,Flat").min_train == 39 * 100
    assert FaissStore(8, "IVF16,PQ4").min_train == 39 * 256
    assert FaissStore(8).min_train == 0
    with pytest.raises(ValueError, match="min_train"):
        FaissStore(8, "IVF100,Flat", min_train=10)


def test_ivf_removal_before_and_after_training(tmp_path: Path) -> None:
    x = data(900)
    store = FaissStore(16, "IVF4,Flat", min_train=400, nprobe=4, exact_below=0)
    store.add(np.arange(300), x[:300])
    store.remove(np.arange(100))  # removed while buffering
    store.add(np.arange(300, 900), x[300:])  # crosses min_train: trains on live rows only
    assert store._index.ntotal == 800 and len(store) == 800
    _, i = store.search(x[:5], 50)
    assert (i >= 100).all()
    files = store.save(tmp_path, "t")
    loaded = FaissStore.load(tmp_path, files, store.config())
    np.testing.assert_array_equal(loaded.search(x[:5], 50)[1], i)


def test_fp16_vectors_halve_memory_and_keep_order() -> None:
    x, q = data(2000), data(5, seed=5)
    a, b = FaissStore(16), FaissStore(16, vector_dtype="float16")
    a.add(np.arange(2000), x)
    b.add(np.arange(2000), x)
    assert b._vecs.nbytes * 2 == a._vecs.nbytes
    assert recall(b.search(q, 10)[1], a.search(q, 10)[1]) >= 0.9


def test_save_load_uses_mmap_and_checks_files(tmp_path: Path) -> None:
    x = data(100)
    store = FaissStore(16, "HNSW8")
    store.add(np.arange(100), x)
    files = store.save(tmp_path, "dense.g1")
    assert set(files) == {"index", "vectors", "rows", "live"}
    assert all(name.startswith("dense.g1.") for name in files.values())
    loaded = FaissStore.load(tmp_path, files, store.config())
    assert isinstance(loaded._vecs._base, np.memmap)
    np.testing.assert_array_equal(np.asarray(loaded._vecs._base), x)
    bad = dict(files, rows=files["live"])
    with pytest.raises(IndexFormatError):
        FaissStore.load(tmp_path, bad, store.config())
    with pytest.raises(IndexFormatError):
        FaissStore.load(tmp_path, {k: v for k, v in files.items() if k != "index"}, store.config())
    with pytest.raises(IndexFormatError):
        FaissStore.load(tmp_path, files, dict(store.config(), dim=8))


def test_heavy_removal_compacts() -> None:
    x = data(2500)
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # so each row is its own nearest neighbour
    store = FaissStore(16, "HNSW8", exact_below=0)
    store.add(np.arange(2500), x)
    store.remove(np.arange(1000))
    assert store._n_rows == 2500  # tombstones only
    store.remove(np.arange(1000, 1400))
    assert store._n_rows == 1100 and store._index.ntotal == 1100  # rebuilt without tombstones
    _, i = store.search(x[1400:1405], 1)
    np.testing.assert_array_equal(i[:, 0], np.arange(1400, 1405))


def test_gpu_flag_on_cpu() -> None:
    store = FaissStore(8, use_gpu="auto")  # never breaks on a CPU-only build
    store.add(np.arange(10), data(10, 8))
    assert store.search(data(1, 8), 3)[1].shape == (1, 3)

    if faiss.get_num_gpus() == 0:
        with pytest.raises(ConfigError, match="GPU"):
            FaissStore(8, use_gpu=True)


@pytest.mark.parametrize(
    "kwargs, err",
    [
        ({"factory": "NotAnIndex"}, ConfigError),
        ({"factory": "IDMap,Flat"}, ConfigError),
        ({"metric": "cosine"}, ConfigError),
        ({"vector_dtype": "int8"}, ConfigError),
        ({"nprobe": 0}, ValueError),
        ({"use_gpu": "yes"}, ConfigError),
    ],
)
def test_bad_config(kwargs: dict, err: type) -> None:
    with pytest.raises(err):
        FaissStore(8, **kwargs)


def test_bad_input() -> None:
    store = FaissStore(4)
    with pytest.raises(ValueError, match="shape"):
        store.add(np.arange(2), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        store.add(np.arange(1), np.full((1, 4), np.nan))
    with pytest.raises(TypeError):
        store.add(np.array([0.5]), np.zeros((1, 4)))
    with pytest.raises(ValueError, match=">= 0"):
        store.add(np.array([-1]), np.zeros((1, 4)))
    with pytest.raises(ValueError, match="duplicates"):
        store.add(np.array([1, 1]), np.zeros((2, 4)))
    store.add(np.arange(3), np.eye(3, 4))
    with pytest.raises(ValueError, match="length"):
        store.search(np.zeros((1, 4)), 2, allowed=np.ones(2, dtype=bool))
    with pytest.raises(TypeError, match="k"):
        store.search(np.zeros((1, 4)), 2.0)
    with pytest.raises(ValueError, match="candidate"):
        store.score(np.zeros((2, 4)), [np.array([0])])


@pytest.mark.parametrize("numba_on", [True, False])
def test_queries_the_ann_index_answers_short_go_to_brute_force(numba_on: bool, monkeypatch) -> None:
    """IVF with nprobe=1 returns only its one list's rows; when that is fewer than ``k`` the
    query is answered by exact brute force (every query here: lists hold ~125 rows, k=300),
    on the compiled path (which counts the short queries) and on the numpy one."""
    if numba_on and not _kernels.AVAILABLE:
        pytest.skip("the numba kernel is off (HYBRIDRAG_NUMBA=0, or numba could not compile it)")
    monkeypatch.setattr(_kernels, "AVAILABLE", numba_on and _kernels.AVAILABLE)
    x, q = data(2000), data(6, seed=9)
    store = FaissStore(16, "IVF16,Flat", nprobe=1, exact_below=0)
    store.add(np.arange(2000), x)
    assert store._ready
    raw = store._index.search(q, 300)[1]
    assert ((raw >= 0).sum(1) < 300).all(), "the IVF lists were expected to be shorter than k"
    s, i = store.search(q, 300)
    rs, ri = brute(q, x, np.arange(2000), 300)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(s, rs, rtol=1e-5, atol=1e-5)


def test_rows_added_after_a_search_are_re_scored_without_brute_force(monkeypatch) -> None:
    """The compiled re-score keeps read-only views of the stored rows between searches; adding
    rows must renew them, or the new rows' hits read as missing and every query falls back to
    brute force (right answers, at brute-force cost)."""
    if not _kernels.AVAILABLE:
        pytest.skip("the numba kernel is off (HYBRIDRAG_NUMBA=0, or numba could not compile it)")
    x, q = data(3000), data(10, seed=10)
    store = FaissStore(16, "HNSW16", metric="l2", exact_below=0)
    store.add(np.arange(1500), x[:1500])
    store.search(q, 5)
    brute_calls = []
    real = store._brute
    monkeypatch.setattr(store, "_brute", lambda *a: brute_calls.append(1) or real(*a))
    store.add(np.arange(1500, 3000), x[1500:])
    q_new = x[1500:1510]  # each query's best hit (distance 0) is a row added after the first search
    s, i = store.search(q_new, 5)
    assert (i[:, 0] == np.arange(1500, 1510)).all()
    np.testing.assert_allclose(s, np.stack(store.score(q_new, list(i))), rtol=1e-5, atol=1e-4)
    assert not brute_calls, "the search fell back to brute force"


@pytest.mark.parametrize("numba_on", [True, False])
def test_non_finite_queries_and_vectors_are_refused_on_both_paths(monkeypatch: pytest.MonkeyPatch,
                                                                  numba_on: bool) -> None:
    """The finite check of every vector and query (``base.as_matrix``, compiled as
    ``_kernels.all_finite`` with numba): NaN, +inf or -inf at any position, float64 values that
    overflow float32, and read-only (memory-mapped) input; finite input passes."""
    if numba_on and not _kernels.AVAILABLE:
        pytest.skip("the numba kernel is off (HYBRIDRAG_NUMBA=0, or numba could not compile it)")
    monkeypatch.setattr(_kernels, "AVAILABLE", numba_on)
    store = FaissStore(4)
    store.add(np.arange(3), np.eye(3, 4))
    for bad in (np.nan, np.inf, -np.inf):
        for pos in range(8):
            q = np.ones((2, 4), dtype=np.float32)
            q.flat[pos] = bad
            with pytest.raises(ValueError, match="NaN or infinite"):
                store.search(q, 2)
            q.flags.writeable = False
            with pytest.raises(ValueError, match="NaN or infinite"):
                store.search(q, 2)
    with pytest.raises(ValueError, match="NaN or infinite"), np.errstate(over="ignore"):
        store.add(np.array([7]), np.array([[1e300, 0, 0, 0]]))   # float64 -> float32 overflows
    ok = np.ones((2, 4), dtype=np.float32)
    ok.flags.writeable = False
    assert store.search(ok, 2)[1].shape == (2, 2)
    assert store.search(np.full((1, 4), 3e38, dtype=np.float32), 1)[1][0, 0] >= 0   # large is fine


def test_a_few_queries_run_faiss_on_one_thread_and_restore_the_setting(monkeypatch):
    """A search of a few queries runs FAISS with one OpenMP thread (this thread's setting only,
    restored afterwards); a batch of at least 20 queries keeps the caller's setting. The
    results are the same either way (an HNSW index's search too)."""
    import hybridrag.stores.faiss as faiss_mod

    seen: list[int] = []
    real_knn = faiss.knn_inner_product

    def knn(*a):
        seen.append(faiss.omp_get_max_threads())
        return real_knn(*a)

    monkeypatch.setattr(faiss_mod.faiss, "knn_inner_product", knn)
    rng = np.random.default_rng(5)
    data = rng.standard_normal((3000, 16)).astype(np.float32)
    qs = rng.standard_normal((25, 16)).astype(np.float32)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        for factory in ("Flat", "HNSW8"):
            store = FaissStore(16, factory=factory)
            store.add(np.arange(3000), data)
            seen.clear()
            one = store.search(qs[:3], 10)
            assert faiss.omp_get_max_threads() == 2
            many = store.search(qs, 10)
            assert faiss.omp_get_max_threads() == 2
            np.testing.assert_array_equal(one[1], many[1][:3])
            if factory == "Flat":
                assert seen == [1, 2], seen
    finally:
        faiss.omp_set_num_threads(before)
