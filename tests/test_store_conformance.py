"""One conformance suite for every vector-store backend (docs/CONTRACTS.md, "Stores").

Each backend is a ``Backend`` entry in ``BACKENDS``: how to build an empty store, how
to make rows and queries in its format, and an independent reference scorer (numpy
brute force). Adding a backend (e.g. Milvus) is one more entry in that list.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from hybridrag.stores.base import VectorStore, topk
from hybridrag.stores.faiss import FaissStore
from hybridrag.stores.multivector import MultiVectorStore

DIM = 12
N = 240


# --------------------------------------------------------------------------- data kinds


def dense_rows(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    # Rounded values make exact score ties likely, which the contract breaks by slot.
    return list(np.round(rng.standard_normal((n, DIM)), 1).astype(np.float32))


def dense_pack(rows: list[Any]) -> np.ndarray:
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, DIM), np.float32)


def dense_ref(queries: list[Any], rows: list[Any]) -> np.ndarray:
    return dense_pack(queries).astype(np.float64) @ dense_pack(rows).astype(np.float64).T


def sparse_rows(rng: np.random.Generator, n: int) -> list[dict[int, float]]:
    out = []
    for _ in range(n):
        terms = rng.choice(40, size=rng.integers(1, 6), replace=False)
        out.append({int(t): float(np.round(rng.uniform(0.1, 1.0), 2)) for t in terms})
    return out


def sparse_ref(queries: list[dict[int, float]], rows: list[dict[int, float]]) -> np.ndarray:
    return np.array([[sum(w * r.get(t, 0.0) for t, w in q.items()) for r in rows] for q in queries])


def colbert_rows(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        x = rng.standard_normal((int(rng.integers(1, 7)), DIM)).astype(np.float32)
        out.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return out


def colbert_ref(queries: list[np.ndarray], rows: list[np.ndarray]) -> np.ndarray:
    return np.array([[float((q.astype(np.float64) @ r.astype(np.float64).T).max(1).mean()) for r in rows]
                     for q in queries])


@dataclass
class Backend:
    """How the suite drives one store backend."""

    name: str
    make: Callable[[], Any]
    rows: Callable[[np.random.Generator, int], list[Any]]
    ref: Callable[[list[Any], list[Any]], np.ndarray]
    pack: Callable[[list[Any]], Any] = list
    tol: float = 1e-4  # score tolerance vs the float64 reference
    zero_is_miss: bool = False  # sparse: a row sharing no term with the query is not a hit
    marks: list[Any] = field(default_factory=list)


_MILVUS: dict[str, Any] = {}


def _milvus(kind: str) -> Any:
    """A Milvus store on a new collection in one Milvus Lite file per test session (startup is slow)."""
    import atexit
    import shutil
    import tempfile

    from hybridrag.stores.milvus import MilvusColbertStore, MilvusDenseStore, MilvusSparseStore

    if "dir" not in _MILVUS:
        _MILVUS["dir"] = tempfile.mkdtemp(prefix="hybridrag-milvus-")
        _MILVUS["n"] = 0
        atexit.register(shutil.rmtree, _MILVUS["dir"], True)
    _MILVUS["n"] += 1
    uri = str(Path(_MILVUS["dir"]) / "milvus.db")
    name = f"conf_{kind}_{_MILVUS['n']}"
    if kind == "dense":
        return MilvusDenseStore(DIM, uri=uri, collection=name)
    if kind == "colbert":   # 4 tokens a row: chunks of 1-6 tokens take one or two rows
        return MilvusColbertStore(DIM, uri=uri, collection=name, tokens_per_row=4)
    return MilvusSparseStore(uri=uri, collection=name)


def _sparse() -> Any:
    from hybridrag.stores.sparse import SparseIndex

    return SparseIndex()


BACKENDS = [
    Backend("faiss-flat", lambda: FaissStore(DIM), dense_rows, dense_ref, dense_pack),
    Backend("faiss-flat-fp16", lambda: FaissStore(DIM, vector_dtype="float16"), dense_rows, dense_ref,
            dense_pack, tol=2e-2),
    Backend("faiss-hnsw", lambda: FaissStore(DIM, "HNSW16", ef_search=400, exact_below=0),
            dense_rows, dense_ref, dense_pack),
    Backend("faiss-ivfpq", lambda: FaissStore(DIM, "IVF4,PQ3x4", min_train=64, nprobe=4, exact_below=0,
                                              refine_factor=1000), dense_rows, dense_ref, dense_pack),
    Backend("multivector-fp32", lambda: MultiVectorStore(DIM, encoding="fp32"), colbert_rows, colbert_ref),
    Backend("multivector-fp16", lambda: MultiVectorStore(DIM, encoding="fp16"), colbert_rows, colbert_ref,
            tol=2e-3),
    Backend("multivector-int8", lambda: MultiVectorStore(DIM, encoding="int8", int8_scale=1 / 127),
            colbert_rows, colbert_ref, tol=2e-2),
    # pq below its training threshold (N chunks hold fewer tokens): fp16 rows, same contract
    Backend("multivector-pq", lambda: MultiVectorStore(DIM, encoding="pq"), colbert_rows, colbert_ref,
            tol=2e-3),
    Backend("sparse", _sparse, sparse_rows, sparse_ref, zero_is_miss=True),
    Backend("milvus-dense", lambda: _milvus("dense"), dense_rows, dense_ref, dense_pack),
    Backend("milvus-sparse", lambda: _milvus("sparse"), sparse_rows, sparse_ref, zero_is_miss=True),
    Backend("milvus-colbert", lambda: _milvus("colbert"), colbert_rows, colbert_ref, tol=2e-3),
]


@pytest.fixture(params=[pytest.param(b, id=b.name, marks=b.marks) for b in BACKENDS])
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.param


# --------------------------------------------------------------------------- helpers


def reference_topk(be: Backend, queries: list[Any], rows: dict[int, Any], k: int,
                   allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    slots = np.array(sorted(s for s in rows if allowed is None or allowed[s]), dtype=np.int64)
    if slots.size == 0:
        return np.full((len(queries), k), -np.inf), np.full((len(queries), k), -1)
    sc = be.ref(queries, [rows[s] for s in slots])
    if be.zero_is_miss:
        sc = np.where(sc == 0, -np.inf, sc)
    return topk(sc, slots, k)


def assert_same_topk(be: Backend, got: tuple[np.ndarray, np.ndarray], queries: list[Any],
                     rows: dict[int, Any], k: int, allowed: np.ndarray | None = None) -> None:
    """Tie-aware: same hit count; every returned hit scores (per the reference) within tol of
    the reference's score at that rank; scores sorted; no duplicates; all hits allowed and live."""
    scores, slots = got
    ref_s, ref_i = reference_topk(be, queries, rows, k, allowed)
    assert scores.shape == slots.shape == (len(queries), k)
    for qi in range(len(queries)):
        n_ref = int((ref_i[qi] >= 0).sum())
        hit = slots[qi][slots[qi] >= 0]
        assert len(hit) == n_ref, (qi, slots[qi], ref_i[qi])
        assert (slots[qi][n_ref:] == -1).all() and np.isneginf(scores[qi][n_ref:]).all()
        assert len(set(hit.tolist())) == len(hit)
        assert all(int(s) in rows for s in hit)
        if allowed is not None:
            assert allowed[hit].all()
        true = be.ref([queries[qi]], [rows[int(s)] for s in hit])[0] if len(hit) else np.zeros(0)
        np.testing.assert_allclose(true, ref_s[qi][:n_ref], atol=be.tol, rtol=0)
        np.testing.assert_allclose(scores[qi][:n_ref], true, atol=be.tol, rtol=0)
        assert (np.diff(scores[qi][:n_ref]) <= 1e-6).all()
        # Ties broken by slot: among equal returned scores, slots increase.
        same = np.diff(scores[qi][:n_ref]) == 0
        assert (np.diff(hit)[same] > 0).all()


def build(be: Backend, n: int = N, seed: int = 0) -> tuple[Any, dict[int, Any], np.random.Generator]:
    rng = np.random.default_rng(seed)
    store = be.make()
    data = be.rows(rng, n)
    slots = np.arange(n, dtype=np.int64)
    store.add(slots, be.pack(data))
    return store, dict(zip(range(n), data)), rng


def file_digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir() if p.is_file()}


# --------------------------------------------------------------------------- tests


def test_protocol(backend: Backend) -> None:
    store = backend.make()
    assert isinstance(store, VectorStore)
    cfg = store.config()
    assert isinstance(cfg, dict)
    assert json.loads(json.dumps(cfg)) == cfg  # persisted in the manifest as JSON


def test_empty_store(backend: Backend) -> None:
    store = backend.make()
    rng = np.random.default_rng(1)
    assert len(store) == 0
    q = backend.rows(rng, 3)
    scores, slots = store.search(backend.pack(q), 5)
    assert scores.shape == slots.shape == (3, 5)
    assert (slots == -1).all() and np.isneginf(scores).all()
    got = store.score(backend.pack(q), [np.array([0, 7]), np.zeros(0, np.int64), np.array([3])])
    assert [len(g) for g in got] == [2, 0, 1]
    assert all(np.isneginf(g).all() for g in got)


def test_add_search_matches_brute_force(backend: Backend) -> None:
    store, rows, rng = build(backend)
    assert len(store) == N
    q = backend.rows(rng, 7)
    for k in (1, 10, 37):
        assert_same_topk(backend, store.search(backend.pack(q), k), q, rows, k)


@pytest.mark.parametrize("be", [pytest.param(b, id=b.name, marks=b.marks) for b in BACKENDS if b.rows is dense_rows])
def test_a_dense_row_scoring_exactly_zero_is_a_hit(be: Backend) -> None:
    """A dense store's hit is any live row, whatever its score: a vector orthogonal to the
    query (0.0 exactly) ranks between the positive and the negative ones, as in FAISS (the
    Milvus store dropped it)."""
    e = np.eye(DIM, dtype=np.float32)
    store = be.make()
    store.add(np.arange(4, dtype=np.int64), be.pack([2 * e[0], e[1], -e[0], e[2] + e[0]]))
    scores, slots = store.search(be.pack([e[0]]), 4)
    assert slots[0].tolist() == [0, 3, 1, 2]
    np.testing.assert_allclose(scores[0], [2, 1, 0, -1], atol=be.tol)


def test_k_larger_than_store_is_padded(backend: Backend) -> None:
    store, rows, rng = build(backend, n=5)
    q = backend.rows(rng, 2)
    assert_same_topk(backend, store.search(backend.pack(q), 9), q, rows, 9)


def test_score_is_exact(backend: Backend) -> None:
    store, rows, rng = build(backend)
    q = backend.rows(rng, 3)
    cands = [np.array([5, 0, 17, N + 50]), np.array([3]), np.zeros(0, np.int64)]
    got = store.score(backend.pack(q), cands)
    assert len(got) == 3
    np.testing.assert_allclose(got[0][:3], backend.ref([q[0]], [rows[s] for s in (5, 0, 17)])[0],
                               atol=backend.tol)
    assert np.isneginf(got[0][3])  # unknown slot
    np.testing.assert_allclose(got[1], backend.ref([q[1]], [rows[3]])[0], atol=backend.tol)
    assert got[2].shape == (0,)


def test_remove_and_readd(backend: Backend) -> None:
    store, rows, rng = build(backend)
    gone = np.arange(0, N, 3)
    store.remove(np.concatenate([gone, [N + 1000]]))  # unknown slots are ignored
    store.remove(gone[:4])  # removing twice is harmless
    for s in gone:
        rows.pop(int(s))
    assert len(store) == len(rows)
    q = backend.rows(rng, 5)
    assert_same_topk(backend, store.search(backend.pack(q), 20), q, rows, 20)
    assert np.isneginf(store.score(backend.pack(q[:1]), [gone[:3]])[0]).all()
    # New rows under new slots (the engine never reuses a slot).
    new = backend.rows(rng, 30)
    new_slots = np.arange(N, N + 30, dtype=np.int64)
    store.add(new_slots, backend.pack(new))
    rows.update(zip(new_slots.tolist(), new))
    assert len(store) == len(rows)
    assert_same_topk(backend, store.search(backend.pack(q), 20), q, rows, 20)


def test_duplicate_live_slot_is_rejected(backend: Backend) -> None:
    store, _, rng = build(backend, n=10)
    with pytest.raises(ValueError):
        store.add(np.array([3]), backend.pack(backend.rows(rng, 1)))


def test_allowed_mask(backend: Backend) -> None:
    store, rows, rng = build(backend)
    q = backend.rows(rng, 4)
    for frac in (0.5, 0.05):
        allowed = rng.random(N + 10) < frac
        assert_same_topk(backend, store.search(backend.pack(q), 10, allowed=allowed), q, rows, 10, allowed)
    tiny = np.zeros(N, dtype=bool)
    tiny[[7, 100]] = True
    assert_same_topk(backend, store.search(backend.pack(q), 10, allowed=tiny), q, rows, 10, tiny)
    nothing = np.zeros(N, dtype=bool)
    assert (store.search(backend.pack(q), 10, allowed=nothing)[1] == -1).all()


def test_bad_allowed_mask(backend: Backend) -> None:
    store, _, rng = build(backend, n=20)
    q = backend.pack(backend.rows(rng, 1))
    with pytest.raises((TypeError, ValueError)):
        store.search(q, 3, allowed=np.ones(20, dtype=np.int64))


def test_save_load_roundtrip(backend: Backend, tmp_path: Path) -> None:
    store, rows, rng = build(backend)
    store.remove(np.arange(0, N, 4))
    for s in range(0, N, 4):
        rows.pop(s)
    q = backend.rows(rng, 5)
    before = store.search(backend.pack(q), 15)
    files = store.save(tmp_path, "g1")
    assert files and all("g1" in name for name in files.values())
    assert all((tmp_path / name).is_file() for name in files.values())
    digests = file_digests(tmp_path)

    loaded = type(store).load(tmp_path, files, store.config())
    assert len(loaded) == len(store) == len(rows)
    after = loaded.search(backend.pack(q), 15)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0], atol=1e-6)
    cands = [np.array(sorted(rows)[:9])] * len(q)
    for a, b in zip(loaded.score(backend.pack(q), cands), store.score(backend.pack(q), cands)):
        np.testing.assert_allclose(a, b, atol=1e-6)

    # The loaded store keeps working, and saving again writes new files only.
    new = backend.rows(rng, 12)
    loaded.add(np.arange(N, N + 12), backend.pack(new))
    rows.update(zip(range(N, N + 12), new))
    loaded.remove(np.array([1, 2]))
    rows.pop(1), rows.pop(2)
    assert_same_topk(backend, loaded.search(backend.pack(q), 15), q, rows, 15)
    files2 = loaded.save(tmp_path, "g2")
    assert set(files2.values()).isdisjoint(files.values())
    assert {k: v for k, v in file_digests(tmp_path).items() if k in digests} == digests
    again = type(store).load(tmp_path, files2, loaded.config())
    np.testing.assert_array_equal(again.search(backend.pack(q), 15)[1], loaded.search(backend.pack(q), 15)[1])


def test_save_refuses_to_overwrite(backend: Backend, tmp_path: Path) -> None:
    store, _, _ = build(backend, n=8)
    store.save(tmp_path, "g1")
    with pytest.raises(FileExistsError):
        store.save(tmp_path, "g1")


def test_empty_store_save_load(backend: Backend, tmp_path: Path) -> None:
    store = backend.make()
    files = store.save(tmp_path, "g0")
    loaded = type(store).load(tmp_path, files, store.config())
    assert len(loaded) == 0
    rng = np.random.default_rng(3)
    data = backend.rows(rng, 4)
    loaded.add(np.arange(4), backend.pack(data))
    assert_same_topk(backend, loaded.search(backend.pack(data[:2]), 3), data[:2], dict(enumerate(data)), 3)
