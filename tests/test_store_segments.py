"""FaissStore and MultiVectorStore as per-segment stores: ``empty_like`` keeps the trained
state, ``merge`` keeps stored values bit for bit and equals the union of its parts, and
``remove`` after ``load`` leaves the files alone (the segment design, issue 23).

Scores are compared to float32 rounding, not bit for bit: BLAS rounds a row's dot product
differently by where the row falls in the matrix it multiplies, so a store's own ``score``
of one slot already varies in the last bit with the other candidates scored beside it."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import faiss
import numpy as np
import pytest

from hybridrag.stores.base import merge_topk, topk
from hybridrag.stores.faiss import FaissStore, _trained_state
from hybridrag.stores.multivector import MultiVectorStore


def vecs(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def union_search(parts: list, q: object, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    got = parts[0].search(q, k, allowed)
    for p in parts[1:]:
        got = merge_topk(got, p.search(q, k, allowed), k)
    return got


def same_scores(a: np.ndarray, b: np.ndarray) -> None:
    """Equal to float32 rounding (see the module doc); -inf (absent) exactly where absent."""
    np.testing.assert_array_equal(np.isneginf(a), np.isneginf(b))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def union_score(parts: list, q: object, cands: list[np.ndarray]) -> list[np.ndarray]:
    per = [p.score(q, cands) for p in parts]
    return [np.max(np.stack(cols), axis=0) for cols in zip(*per)]


# --------------------------------------------------------------------------- FAISS


def faiss_parts(tmp_path: Path, **kw: object) -> tuple[list[FaissStore], np.ndarray, np.ndarray]:
    """Segment 1 saved and re-opened (memory-mapped) with deletions, segment 2 made by
    empty_like and still in memory, with deletions. Returns the parts, the live slots and
    their vectors (slot order)."""
    x = vecs(1200)
    a = FaissStore(16, **kw)
    a.add(np.arange(0, 1400, 2)[:700], x[:700])
    a = FaissStore.load(tmp_path, a.save(tmp_path, "dense.s1"), a.config())
    b = a.empty_like()
    b.add(np.arange(2000, 2500), x[700:])
    a.remove(np.arange(0, 300, 6))
    b.remove(np.arange(2000, 2100, 3))
    slots = np.r_[np.arange(0, 1400, 2)[:700], np.arange(2000, 2500)]
    keep = ~np.isin(slots, np.r_[np.arange(0, 300, 6), np.arange(2000, 2100, 3)])
    return [a, b], slots[keep], x[keep]


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("vector_dtype", ["float32", "float16"])
def test_faiss_flat_merge_equals_the_union_and_keeps_vectors(tmp_path: Path, metric: str, vector_dtype: str) -> None:
    parts, live, x = faiss_parts(tmp_path, metric=metric, vector_dtype=vector_dtype)
    merged = FaissStore.merge(parts)
    assert len(merged) == live.shape[0] and merged._index is None
    for p in parts:   # stored vectors bit-identical, slot by slot
        own = p._row_slot[np.flatnonzero(p._live[: p._n_rows])]
        np.testing.assert_array_equal(merged._vecs.take(merged._live_rows_of(own)).view(np.uint8),
                                      p._vecs.take(p._live_rows_of(own)).view(np.uint8))
    q = vecs(7, seed=3)
    allowed = np.random.default_rng(4).random(2600) < 0.6
    for k, mask in ((10, None), (1, None), (40, allowed), (5, np.arange(2600) < 40)):
        got, ref = merged.search(q, k, mask), union_search(parts, q, k, mask)
        np.testing.assert_array_equal(got[1], ref[1])
        same_scores(got[0], ref[0])
    if vector_dtype == "float32":   # and both equal exact brute force (float64 reference)
        ref64 = topk(q.astype(np.float64) @ x.astype(np.float64).T if metric == "ip"
                     else -((q[:, None, :].astype(np.float64) - x[None]) ** 2).sum(-1), live, 10)
        np.testing.assert_array_equal(merged.search(q, 10)[1], ref64[1])
    cands = [np.r_[live[:50], [1, 2001, 9999]]] * q.shape[0]
    for a, b in zip(merged.score(q, cands), union_score(parts, q, cands)):
        same_scores(a, b)


@pytest.mark.parametrize("factory", ["IVF4,PQ4", "IVF4,Flat", "PQ4", "SQ8", "OPQ4,IVF4,PQ4"])
def test_faiss_trained_merge_copies_the_codes(tmp_path: Path, factory: str) -> None:
    """empty_like carries the trained index (a new segment is trained at once and codes alike);
    merge copies every live row's code (IVF: list and code) from its part."""
    parts, live, _ = faiss_parts(tmp_path, factory=factory, min_train=600, nprobe=4, exact_below=0)
    a, b = parts
    assert a._index.is_trained and b._index.is_trained and b._index.ntotal == 500
    assert _trained_state(a._index) == _trained_state(b._index)
    merged = FaissStore.merge(parts)
    assert merged._index.ntotal == live.shape[0] == len(merged)

    def codes_by_slot(store: FaissStore) -> dict[int, tuple[int, bytes]]:
        inner = faiss.downcast_index(store._index)
        while isinstance(inner, faiss.IndexPreTransform):
            inner = faiss.downcast_index(inner.index)
        out = {}
        if isinstance(inner, faiss.IndexIVF):
            inv = inner.invlists
            for li in range(inner.nlist):
                n = inv.list_size(li)
                ids = faiss.rev_swig_ptr(inv.get_ids(li), n)
                codes = faiss.rev_swig_ptr(inv.get_codes(li), n * inner.code_size).reshape(n, -1)
                for r, c in zip(ids, codes):
                    out[int(store._row_slot[r])] = (li, c.tobytes())
        else:
            codes = faiss.vector_to_array(inner.codes).reshape(-1, inner.code_size)
            for r in range(store._n_rows):
                out[int(store._row_slot[r])] = (0, codes[r].tobytes())
        return out

    got = codes_by_slot(merged)
    want = {**codes_by_slot(a), **codes_by_slot(b)}
    assert set(got) == set(live.tolist())
    assert all(got[s] == want[s] for s in got)
    q = vecs(5, seed=8)
    cands = [live[::7]] * 5
    for s1, s2 in zip(merged.score(q, cands), union_score(parts, q, cands)):
        same_scores(s1, s2)
    _, i = merged.search(q, 10)
    assert np.isin(i, live).all()


def test_faiss_hnsw_merge_rebuilds_the_graph(tmp_path: Path) -> None:
    parts, live, x = faiss_parts(tmp_path, factory="HNSW8", ef_search=200, exact_below=0)
    merged = FaissStore.merge(parts)
    assert merged._index.ntotal == live.shape[0]
    q = vecs(5, seed=9)
    ref = topk(q.astype(np.float64) @ x.astype(np.float64).T, live, 10)
    s, i = merged.search(q, 10)
    assert np.mean([len(set(a) & set(b)) for a, b in zip(i, ref[1])]) >= 9
    same_scores(np.stack(merged.score(q, list(i))), s)


def test_faiss_untrained_parts_train_when_merged_past_min_train() -> None:
    x = vecs(700)
    a = FaissStore(16, "IVF4,Flat", min_train=600)
    a.add(np.arange(400), x[:400])
    b = a.empty_like()
    b.add(np.arange(400, 700), x[400:])
    assert not a._index.is_trained and not b._index.is_trained
    merged = FaissStore.merge([a, b])
    assert merged._index.is_trained and merged._index.ntotal == 700


def test_faiss_merge_refuses_shared_slots_and_other_settings() -> None:
    a, b = FaissStore(16), FaissStore(16)
    a.add([1, 2], vecs(2))
    b.add([2, 3], vecs(2, seed=1))
    with pytest.raises(ValueError, match="slot in common"):
        FaissStore.merge([a, b])
    with pytest.raises(ValueError, match="different settings"):
        FaissStore.merge([a, FaissStore(16, metric="l2")])
    with pytest.raises(TypeError):
        FaissStore.merge([])


@pytest.mark.parametrize("factory", ["Flat", "HNSW8"])
def test_faiss_remove_after_load_leaves_files_and_map(tmp_path: Path, factory: str) -> None:
    x = vecs(3000)
    store = FaissStore(16, factory, exact_below=0)
    store.add(np.arange(3000), x)
    files = store.save(tmp_path, "dense.s1")
    if factory == "Flat":
        assert "index" not in files   # the vectors are the only copy
    before = digests(tmp_path)
    loaded = FaissStore.load(tmp_path, files, store.config())
    loaded.remove(np.arange(2500))   # more than half: an in-memory store would rebuild
    assert isinstance(loaded._vecs.parts()[0], np.memmap) and loaded._n_rows == 3000
    assert digests(tmp_path) == before
    _, i = loaded.search(x[:3], 10)
    assert (i >= 2500).all()


def test_faiss_flat_saved_with_an_index_file_still_opens(tmp_path: Path) -> None:
    """Flat stores saved before wrote an IndexFlat beside the vectors: it is ignored."""
    x = vecs(50)
    store = FaissStore(16)
    store.add(np.arange(50), x)
    files = store.save(tmp_path, "old")
    index = faiss.IndexFlatIP(16)
    index.add(x)
    faiss.write_index(index, str(tmp_path / "old.faiss.index"))
    loaded = FaissStore.load(tmp_path, {**files, "index": "old.faiss.index"}, store.config())
    np.testing.assert_array_equal(loaded.search(x[:4], 5)[1], store.search(x[:4], 5)[1])


# --------------------------------------------------------------------------- multi-vector


def tokens(rng: np.random.Generator, n: int, dim: int = 32) -> list[np.ndarray]:
    """Unit-norm token vectors around a few centres (pq learns a usable codec from them)."""
    centres = np.random.default_rng(99).standard_normal((16, dim)).astype(np.float32)
    out = []
    for _ in range(n):
        x = centres[rng.integers(0, 16, int(rng.integers(2, 12)))] + 0.3 * rng.standard_normal(
            (1, dim)).astype(np.float32)
        out.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return out


def mv_parts(tmp_path: Path, encoding: str) -> tuple[list[MultiVectorStore], np.ndarray]:
    rng = np.random.default_rng(0)
    kw = {"pq_train_tokens": 4096, "pq_train_pool": 4096} if encoding == "pq" else {}
    a = MultiVectorStore(32, encoding=encoding, **kw)
    a.add(np.arange(0, 1400, 2)[:700], tokens(rng, 700))
    if encoding == "pq":
        assert a.trained
    a = MultiVectorStore.load(tmp_path, a.save(tmp_path, "mv.s1"), a.config())
    b = a.empty_like()
    b.add(np.arange(2000, 2300), tokens(rng, 300))
    a.remove(np.arange(0, 300, 6))
    b.remove(np.arange(2000, 2100, 3))
    live = np.r_[[s for s in np.arange(0, 1400, 2)[:700] if not (s < 300 and s % 6 == 0)],
                 [s for s in range(2000, 2300) if not (s < 2100 and (s - 2000) % 3 == 0)]]
    return [a, b], live


@pytest.mark.parametrize("encoding", ["fp32", "fp16", "int8", "pq"])
def test_multivector_merge_equals_the_union_and_keeps_tokens(tmp_path: Path, encoding: str) -> None:
    parts, live = mv_parts(tmp_path, encoding)
    merged = MultiVectorStore.merge(parts)
    assert len(merged) == live.shape[0] and merged.trained
    for p in parts:
        for s in np.flatnonzero(p._lengths > 0):
            o, n = int(p._offsets[s]), int(p._lengths[s])
            mo, mn = int(merged._offsets[s]), int(merged._lengths[s])
            assert mn == n
            np.testing.assert_array_equal(merged._tokens.slice(mo, mo + mn).view(np.uint8),
                                          p._tokens.slice(o, o + n).view(np.uint8))
    q = tokens(np.random.default_rng(5), 4)
    cands = [np.r_[live[::5], [1, 2001, 99999]]] * 4
    for a, b in zip(merged.score(q, cands), union_score(parts, q, cands)):
        same_scores(a, b)
    allowed = np.random.default_rng(6).random(2400) < 0.5
    for k, mask in ((10, None), (30, allowed)):
        got, ref = merged.search(q, k, mask), union_search(parts, q, k, mask)
        np.testing.assert_array_equal(got[1], ref[1])
        same_scores(got[0], ref[0])


def test_multivector_empty_like_keeps_the_int8_scale_and_pq_codec() -> None:
    rng = np.random.default_rng(1)
    a = MultiVectorStore(32, encoding="int8")
    a.add(np.arange(10), tokens(rng, 10))
    b = a.empty_like()
    wide = [3 * t for t in tokens(rng, 5)]   # would set a wider scale on a store of its own
    with pytest.warns(RuntimeWarning, match="clipped"):
        b.add(np.arange(10, 15), wide)
    np.testing.assert_array_equal(b.scale, a.scale)
    with pytest.raises(ValueError, match="different scales"):
        c = MultiVectorStore(32, encoding="int8")
        c.add(np.arange(20, 25), wide)
        MultiVectorStore.merge([a, c])
    p = MultiVectorStore(32, encoding="pq", pq_train_tokens=4096, pq_train_pool=4096)
    p.add(np.arange(700), tokens(rng, 700))
    fresh = p.empty_like()
    assert fresh.trained and fresh.bytes_per_token == p.bytes_per_token
    x = tokens(rng, 3)
    fresh.add(np.arange(700, 703), x)
    np.testing.assert_array_equal(fresh._tokens.slice(0, sum(len(t) for t in x)), p._codec.encode(np.concatenate(x)))


def test_multivector_untrained_pq_parts_learn_the_codec_when_merged_past_the_pool() -> None:
    rng = np.random.default_rng(2)
    kw = {"encoding": "pq", "pq_train_tokens": 4096, "pq_train_pool": 4096}
    a, b = MultiVectorStore(32, **kw), MultiVectorStore(32, **kw)
    a.add(np.arange(400), tokens(rng, 400))
    b.add(np.arange(400, 800), tokens(rng, 400))
    assert not a.trained and not b.trained
    merged = MultiVectorStore.merge([a, b])
    assert merged.trained and len(merged) == 800


def test_multivector_merge_refuses_shared_slots(tmp_path: Path) -> None:
    a, b = MultiVectorStore(32), MultiVectorStore(32)
    rng = np.random.default_rng(3)
    a.add([1, 2], tokens(rng, 2))
    b.add([2, 3], tokens(rng, 2))
    with pytest.raises(ValueError, match="slot in common"):
        MultiVectorStore.merge([a, b])


def test_multivector_remove_after_load_leaves_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    store = MultiVectorStore(32)
    store.add(np.arange(100), tokens(rng, 100))
    files = store.save(tmp_path, "mv.s1")
    before = digests(tmp_path)
    loaded = MultiVectorStore.load(tmp_path, files, store.config())
    loaded.remove(np.arange(80))
    assert isinstance(loaded._tokens.parts()[0], np.memmap) and len(loaded) == 20
    assert digests(tmp_path) == before


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("dtype, shape, block", [("float32", (700, 16), 256), ("float16", (5, 3), 256),
                                                 ("int8", (0, 4), 256), ("int64", (9,), 256), (">i8", (9,), 2),
                                                 ("float32", (6000, 256), 999), ("float32", (3000, 256), 1)])
def test_write_npy_blocks_writes_what_np_save_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     dtype: str, shape: tuple, block: int) -> None:
    """Row blocks streamed through writev() calls make the bytes np.save writes (np.load reads
    them, also memory-mapped), whatever the block size; every write but the last ends at a
    2 MB file offset, the first carries the header (the page cache then holds large files in
    2 MB pages); blocks that do not fill the shape exactly are refused and leave no file."""
    from hybridrag.stores import base
    from hybridrag.stores.base import write_npy, write_npy_blocks

    ends, real = [], os.writev

    def writev(fd: int, bufs: list) -> int:
        n = real(fd, bufs)
        ends.append(os.lseek(fd, 0, os.SEEK_CUR))
        return n

    monkeypatch.setattr(base.os, "writev", writev)
    a = (np.random.default_rng(1).standard_normal(shape) * 50).astype(dtype)
    write_npy_blocks(tmp_path, "x.npy", shape, dtype, (a[s:s + block] for s in range(0, max(len(a), 1), block)))
    np.save(tmp_path / "ref.npy", a)
    assert (tmp_path / "x.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()
    assert ends and ends[-1] == (tmp_path / "x.npy").stat().st_size
    assert all(e % (2 << 20) == 0 for e in ends[:-1]), ends
    assert len(ends) <= (tmp_path / "x.npy").stat().st_size // (2 << 20) + 1
    write_npy(tmp_path, "w.npy", a)
    assert (tmp_path / "w.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()
    for mode in (None, "r"):
        got = np.load(tmp_path / "x.npy", mmap_mode=mode)
        assert got.dtype == a.dtype and got.shape == a.shape
        np.testing.assert_array_equal(got, a)
    short_or_long = ([a[:-1]], [a, a[:1]]) if len(a) else ([np.zeros((1, *shape[1:]), dtype)],)
    for bad in short_or_long:
        with pytest.raises(RuntimeError, match="rows into|does not fit"):
            write_npy_blocks(tmp_path, "y.npy", shape, dtype, iter(bad))
        assert not any(p.name.startswith((".y.npy", "y.npy")) for p in tmp_path.iterdir())
