"""Unit tests for :mod:`hybridrag.stores.multivector` (``MultiVectorStore``).

What the store conformance suite (``tests/test_store_conformance.py``) does not cover:
the three encodings and their sizes, MaxSim against a float64 numpy brute force on the
values each encoding actually stores (across GEMM blocks), the fixed int8 scale and its
clipping report, memory-mapped loading and compaction, and retrieval quality of int8
against fp32 (overlap@10 on random normalised data).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from hybridrag.errors import ConfigError, IndexFormatError
from hybridrag.stores._pq import PQCodec, allocate
from hybridrag.stores.multivector import MultiVectorStore

DIM = 16
ENCODINGS = ["fp32", "fp16", "int8"]


def token_arrays(rng: np.random.Generator, n: int, dim: int = DIM, lo: int = 1, hi: int = 12,
                 normalise: bool = True) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        x = rng.standard_normal((int(rng.integers(lo, hi + 1)), dim)).astype(np.float32)
        if normalise:
            x /= np.linalg.norm(x, axis=1, keepdims=True)
        out.append(x)
    return out


def maxsim64(q: np.ndarray, p: np.ndarray) -> float:
    """ColBERT MaxSim in float64: mean over query tokens of the max dot product over passage tokens."""
    q64, p64 = q.astype(np.float64), p.astype(np.float64)
    return float((q64 @ p64.T).max(axis=1).sum() / q64.shape[0])


def stored_values(x: np.ndarray, encoding: str, scale: np.ndarray | None) -> np.ndarray:
    """What the store keeps for ``x``, decoded to float64 (independent of the store's code)."""
    if encoding == "fp32":
        return x.astype(np.float64)
    if encoding == "fp16":
        return x.astype(np.float16).astype(np.float64)
    codes = np.clip(np.rint(x.astype(np.float64) / scale.astype(np.float64)), -127, 127)
    return codes * scale.astype(np.float64)


def filled(encoding: str, n: int = 60, seed: int = 0, **kw: object) -> tuple[MultiVectorStore, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    data = token_arrays(rng, n)
    store = MultiVectorStore(DIM, encoding=encoding, **kw)  # type: ignore[arg-type]
    store.add(np.arange(n), data)
    return store, data


# --------------------------------------------------------------------------- encodings and sizes


@pytest.mark.parametrize("encoding,itemsize", [("fp32", 4), ("fp16", 2), ("int8", 1)])
def test_bytes_per_token_and_nbytes(encoding: str, itemsize: int) -> None:
    store, data = filled(encoding)
    assert store.bytes_per_token == DIM * itemsize
    n_tok = sum(x.shape[0] for x in data)
    assert store.nbytes == n_tok * DIM * itemsize
    assert len(store) == len(data)
    assert MultiVectorStore(DIM).encoding == "fp16"  # the documented default


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_decode_is_what_is_stored(encoding: str) -> None:
    store, data = filled(encoding)
    scale = store.scale
    if encoding == "int8":
        first = np.concatenate(data)
        np.testing.assert_allclose(scale, np.abs(first).max(axis=0) / 127, rtol=1e-6)
    else:
        assert scale is None
    for slot in (0, 17, len(data) - 1):
        got = store.decode(slot)
        assert got.dtype == np.float32 and got.shape == data[slot].shape
        np.testing.assert_allclose(got, stored_values(data[slot], encoding, scale), rtol=1e-6, atol=1e-7)
        if encoding == "int8":  # quantisation error is at most half a step per value
            assert (np.abs(got - data[slot]) <= scale / 2 + 1e-7).all()
    with pytest.raises(KeyError):
        store.decode(len(data) + 5)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("block_tokens", [1, 7, 50, 262144])
def test_maxsim_matches_numpy_brute_force(encoding: str, block_tokens: int) -> None:
    store, data = filled(encoding, n=40, seed=1, block_tokens=block_tokens)
    rng = np.random.default_rng(2)
    queries = token_arrays(rng, 5, lo=1, hi=9)
    scale = store.scale
    stored = [stored_values(x, encoding, scale) for x in data]
    # Candidates in any order, with duplicates and slots that were never added.
    cands = [rng.permutation(40)[:25], np.array([3, 3, 39, 0]), np.arange(40), np.array([5, 1000, 41]),
             np.array([], dtype=np.int64)]
    got = store.score(queries, cands)
    for q, c, g in zip(queries, cands, got):
        assert g.shape == c.shape and g.dtype == np.float32
        for slot, s in zip(c, g):
            if slot >= 40:
                assert s == -np.inf
            else:
                assert s == pytest.approx(maxsim64(q, stored[slot]), abs=2e-6)
                # ... and close to the exact fp32 MaxSim, within the encoding's error.
                tol = {"fp32": 2e-6, "fp16": 2e-3, "int8": 2e-2}[encoding]
                assert s == pytest.approx(maxsim64(q, data[slot]), abs=tol)


def test_block_size_does_not_change_scores() -> None:
    a, data = filled("fp16", n=50, seed=3, block_tokens=3)
    b, _ = filled("fp16", n=50, seed=3)
    q = token_arrays(np.random.default_rng(4), 3)
    cands = [np.arange(50)] * 3
    for x, y in zip(a.score(q, cands), b.score(q, cands)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def test_removed_slots_score_minus_inf_and_others_unchanged() -> None:
    store, data = filled("fp32", n=20)
    q = token_arrays(np.random.default_rng(5), 1)
    before = store.score(q, [np.arange(20)])[0]
    store.remove(np.array([2, 3, 2, 99]))  # duplicates and unknown slots are ignored
    assert len(store) == 18
    after = store.score(q, [np.arange(20)])[0]
    assert np.isneginf(after[[2, 3]]).all()
    keep = np.setdiff1d(np.arange(20), [2, 3])
    np.testing.assert_array_equal(after[keep], before[keep])
    with pytest.raises(KeyError):
        store.decode(2)


def test_search_is_brute_force_maxsim() -> None:
    store, data = filled("fp32", n=30, seed=6)
    queries = token_arrays(np.random.default_rng(7), 4)
    scores, slots = store.search(queries, k=5)
    for qi, q in enumerate(queries):
        ref = np.array([maxsim64(q, x) for x in data])
        order = np.lexsort((np.arange(30), -ref))[:5]
        np.testing.assert_array_equal(slots[qi], order)
        np.testing.assert_allclose(scores[qi], ref[order], rtol=1e-5)


# --------------------------------------------------------------------------- int8 scale


def test_int8_scale_is_fixed_and_clipping_is_reported() -> None:
    store = MultiVectorStore(4, encoding="int8")
    store.add(np.array([0]), [np.array([[0.5, -0.25, 0.1, 0.0]], dtype=np.float32)])
    scale = store.scale
    np.testing.assert_allclose(scale, [0.5 / 127, 0.25 / 127, 0.1 / 127, 1 / 127], rtol=1e-6)
    assert store.clipped == 0
    with pytest.warns(RuntimeWarning, match="clipped"):
        store.add(np.array([1]), [np.array([[1.0, 0.25, -0.3, 0.5]], dtype=np.float32)])
    np.testing.assert_array_equal(store.scale, scale)  # fixed: stored codes keep their meaning
    assert store.clipped == 2  # 1.0 > 0.5 and |-0.3| > 0.1
    # Clipped to +-127 steps; the rest rounded to the nearest step (0.5 / (1/127) = 63.5 -> 64).
    np.testing.assert_allclose(store.decode(1), [[0.5, 0.25, -0.1, 64 / 127]], rtol=1e-6)
    np.testing.assert_allclose(store.decode(0), [[0.5, -0.25, 0.1, 0.0]], rtol=1e-6)
    # A copy: changing it does not change the store.
    store.scale[:] = 9
    np.testing.assert_array_equal(store.scale, scale)


def test_int8_fixed_scale_for_normalised_vectors() -> None:
    rng = np.random.default_rng(8)
    store = MultiVectorStore(DIM, encoding="int8", int8_scale=1 / 127)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # |x| <= 1: never clips
        store.add(np.arange(30), token_arrays(rng, 30))
        store.add(np.arange(30, 60), token_arrays(rng, 30))
    assert store.clipped == 0
    np.testing.assert_allclose(store.scale, np.full(DIM, 1 / 127, np.float32))
    assert store.config()["int8_scale"] == pytest.approx([1 / 127] * DIM)
    # Per-dimension scale.
    per_dim = MultiVectorStore(3, encoding="int8", int8_scale=[0.1, 0.2, 0.3])
    np.testing.assert_allclose(per_dim.scale, [0.1, 0.2, 0.3], rtol=1e-6)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), [0.1, 0.0, 0.1]])
def test_int8_scale_must_be_positive_and_finite(bad: object) -> None:
    with pytest.raises(ValueError, match="int8_scale"):
        MultiVectorStore(3, encoding="int8", int8_scale=bad)  # type: ignore[arg-type]


def test_int8_scale_only_for_int8() -> None:
    with pytest.raises(ConfigError, match="int8_scale"):
        MultiVectorStore(3, encoding="fp16", int8_scale=0.1)


def test_fp16_range_is_checked() -> None:
    big = np.full((1, 4), 1e5, dtype=np.float32)
    store = MultiVectorStore(4, encoding="fp16")
    with pytest.raises(ValueError, match="float16"):
        store.add(np.array([0]), [big])
    assert len(store) == 0
    fp32 = MultiVectorStore(4, encoding="fp32")
    fp32.add(np.array([0]), [big])
    np.testing.assert_array_equal(fp32.decode(0), big)


# --------------------------------------------------------------------------- int8 / fp16 retrieval quality


@pytest.mark.parametrize("encoding,int8_scale,min_overlap", [
    ("int8", None, 0.9), ("int8", 1 / 127, 0.9), ("fp16", None, 0.98),
])
def test_overlap_at_10_vs_fp32(encoding: str, int8_scale: float | None, min_overlap: float) -> None:
    rng = np.random.default_rng(9)
    dim = 64
    data = token_arrays(rng, 600, dim=dim, lo=8, hi=32)
    queries = token_arrays(rng, 40, dim=dim, lo=8, hi=8)
    ref = MultiVectorStore(dim, encoding="fp32")
    ref.add(np.arange(600), data)
    test = MultiVectorStore(dim, encoding=encoding, int8_scale=int8_scale)
    test.add(np.arange(600), data)
    _, ref_ids = ref.search(queries, k=10)
    _, ids = test.search(queries, k=10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ref_ids.tolist(), ids.tolist())])
    assert overlap >= min_overlap, f"{encoding} overlap@10 vs fp32 = {overlap:.3f}"
    # fp32 itself agrees with a float64 brute force.
    brute = np.array([[maxsim64(q, x) for x in data] for q in queries[:5]])
    for qi in range(5):
        assert set(ref_ids[qi].tolist()) == set(np.argsort(-brute[qi], kind="stable")[:10].tolist())
    assert test.nbytes * (4 if encoding == "int8" else 2) == ref.nbytes


# --------------------------------------------------------------------------- memory-mapped load, compaction


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_load_is_memory_mapped_and_scores_identically(encoding: str, tmp_path: Path) -> None:
    store, data = filled(encoding, n=40, seed=10)
    q = token_arrays(np.random.default_rng(11), 3)
    cands = [np.arange(45)] * 3
    before = store.score(q, cands)
    files = store.save(tmp_path, "g1")
    assert set(files) == ({"tokens", "offsets", "lengths", "scale"} if encoding == "int8"
                          else {"tokens", "offsets", "lengths"})
    loaded = MultiVectorStore.load(tmp_path, files, store.config())
    assert isinstance(loaded._tokens._base, np.memmap), "token vectors must be memory-mapped"
    assert not loaded._tokens._base.flags.writeable
    on_disk = np.load(tmp_path / files["tokens"], mmap_mode="r")
    assert on_disk.dtype == {"fp32": np.float32, "fp16": np.float16, "int8": np.int8}[encoding]
    assert on_disk.shape == (sum(x.shape[0] for x in data), DIM)
    for a, b in zip(before, loaded.score(q, cands)):
        np.testing.assert_array_equal(a, b)
    if encoding == "int8":
        np.testing.assert_array_equal(loaded.scale, store.scale)
    # Appends after a load go to memory; the saved file does not change.
    raw = (tmp_path / files["tokens"]).read_bytes()
    extra = token_arrays(np.random.default_rng(12), 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # int8: a few values beyond the first add's range
        loaded.add(np.array([40, 41, 42]), extra)
    assert isinstance(loaded._tokens._base, np.memmap)
    assert (tmp_path / files["tokens"]).read_bytes() == raw
    np.testing.assert_allclose(loaded.decode(41), stored_values(extra[1], encoding, loaded.scale), rtol=1e-6, atol=1e-7)
    got = loaded.score([q[0]], [np.array([41])])[0][0]
    assert got == pytest.approx(maxsim64(q[0], stored_values(extra[1], encoding, loaded.scale)), abs=2e-6)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_save_compacts_removed_tokens(encoding: str, tmp_path: Path) -> None:
    store, data = filled(encoding, n=30, seed=13)
    q = token_arrays(np.random.default_rng(14), 2)
    gone = np.array([0, 5, 6, 29])
    store.remove(gone)
    nbytes_before = store.nbytes
    assert nbytes_before == sum(x.shape[0] for x in data) * store.bytes_per_token  # tombstones until save
    files = store.save(tmp_path, "g2")
    loaded = MultiVectorStore.load(tmp_path, files, store.config())
    live = np.setdiff1d(np.arange(30), gone)
    assert loaded.nbytes == sum(data[i].shape[0] for i in live) * store.bytes_per_token
    assert len(loaded) == len(live)
    cands = [np.arange(30)] * 2
    for a, b in zip(store.score(q, cands), loaded.score(q, cands)):
        np.testing.assert_array_equal(a, b)
    for slot in live[:5]:
        np.testing.assert_array_equal(loaded.decode(slot), store.decode(slot))
    # Save, load, add, remove, save again: still consistent.
    loaded.add(np.array([30]), token_arrays(np.random.default_rng(15), 1))
    loaded.remove(np.array([1]))
    files2 = loaded.save(tmp_path, "g3")
    again = MultiVectorStore.load(tmp_path, files2, loaded.config())
    for a, b in zip(loaded.score(q, [np.arange(31)] * 2), again.score(q, [np.arange(31)] * 2)):
        np.testing.assert_array_equal(a, b)


def test_load_rejects_bad_files(tmp_path: Path) -> None:
    store, _ = filled("fp16", n=5)
    files = store.save(tmp_path, "ok")
    with pytest.raises(IndexFormatError):  # stored fp16, config says fp32
        MultiVectorStore.load(tmp_path, files, {**store.config(), "encoding": "fp32"})
    with pytest.raises(IndexFormatError):
        MultiVectorStore.load(tmp_path, files, {**store.config(), "dim": DIM + 1})
    with pytest.raises(IndexFormatError, match="config"):
        MultiVectorStore.load(tmp_path, files, {**store.config(), "colour": "red"})
    with pytest.raises(IndexFormatError, match="missing"):
        MultiVectorStore.load(tmp_path, {**files, "tokens": "nope.npy"}, store.config())
    with pytest.raises(IndexFormatError):
        MultiVectorStore.load(tmp_path, {k: v for k, v in files.items() if k != "lengths"}, store.config())
    bad = np.load(tmp_path / files["offsets"])
    bad[1] = 10_000
    np.save(tmp_path / "bad.offsets.npy", bad)
    with pytest.raises(IndexFormatError, match="outside"):
        MultiVectorStore.load(tmp_path, {**files, "offsets": "bad.offsets.npy"}, store.config())
    i8, _ = filled("int8", n=5)
    f8 = i8.save(tmp_path, "i8")
    np.save(tmp_path / "bad.scale.npy", np.ones(3, dtype=np.float32))
    with pytest.raises(IndexFormatError, match="scale"):
        MultiVectorStore.load(tmp_path, {**f8, "scale": "bad.scale.npy"}, i8.config())


# --------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize("kwargs,exc", [
    ({"dim": 0}, ValueError), ({"dim": 2.5}, TypeError), ({"dim": True}, TypeError),
    ({"dim": 4, "encoding": "bf16"}, ConfigError), ({"dim": 4, "encoding": "FP16"}, ConfigError),
    ({"dim": 4, "block_tokens": 0}, ValueError), ({"dim": 4, "block_tokens": 1.5}, ValueError),
])
def test_bad_constructor_arguments(kwargs: dict[str, object], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        MultiVectorStore(**kwargs)  # type: ignore[arg-type]
    assert issubclass(ConfigError, ValueError)


def test_bad_add_and_score_arguments() -> None:
    store = MultiVectorStore(4, encoding="fp32")
    one = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match="2 slots but 1"):
        store.add(np.array([0, 1]), [one])
    with pytest.raises(ValueError, match="no token vectors"):
        store.add(np.array([0]), [np.zeros((0, 4), np.float32)])
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        store.add(np.array([0]), [np.ones((2, 5), np.float32)])
    with pytest.raises(ValueError, match="NaN"):
        store.add(np.array([0]), [np.array([[np.nan, 0, 0, 0]], np.float32)])
    with pytest.raises(ValueError, match="duplicates"):
        store.add(np.array([0, 0]), [one, one])
    with pytest.raises(TypeError):
        store.add(np.array([0.5]), [one])
    with pytest.raises(ValueError, match=">= 0"):
        store.add(np.array([-1]), [one])
    assert len(store) == 0  # failed adds leave nothing behind
    store.add(np.array([0]), [one])
    with pytest.raises(ValueError, match="already present"):
        store.add(np.array([0]), [one])
    with pytest.raises(ValueError, match="1 queries but 2"):
        store.score([one], [np.array([0]), np.array([0])])
    with pytest.raises(ValueError, match="no token vectors"):
        store.score([np.zeros((0, 4), np.float32)], [np.array([0])])
    with pytest.raises(ValueError):
        store.score([np.ones((1, 3), np.float32)], [np.array([0])])
    # A 1-D query is one token.
    assert store.score([np.ones(4, np.float32)], [np.array([0])])[0][0] == pytest.approx(4.0)


# --------------------------------------------------------------------------- pq (product quantisation)


def clustered_tokens(rng: np.random.Generator, n: int, dim: int = 32, centers: int = 64,
                     lo: int = 20, hi: int = 60, spread: float = 0.35) -> list[np.ndarray]:
    """Token vectors near a few dozen directions, as contextual token embeddings are."""
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    out = []
    for _ in range(n):
        m = int(rng.integers(lo, hi + 1))
        x = c[rng.integers(centers, size=m)] + spread * rng.standard_normal((m, dim)).astype(np.float32)
        out.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return out


def pq_reference_codes(x: np.ndarray, codec: PQCodec) -> np.ndarray:
    """Nearest centroid per byte's run of rotated dimensions, by float64 brute force (independent of FAISS)."""
    xr = x.astype(np.float64) @ (np.eye(x.shape[1]) if codec.rotation is None else codec.rotation.astype(np.float64))
    out = np.empty((len(x), codec.n_bytes), dtype=np.int64)
    for g, (lo, w) in enumerate(zip(codec.starts, codec.widths)):
        cb = codec.centroids[256 * lo:256 * (lo + w)].reshape(256, w).astype(np.float64)
        out[:, g] = ((xr[:, lo:lo + w, None] - cb.T[None]) ** 2).sum(1).argmin(1)
    return out


def pq_reference_decode(codes: np.ndarray, codec: PQCodec) -> np.ndarray:
    """Centroids side by side, rotated back (and scaled to norm 1 in a unit codec), in float64."""
    parts = [codec.centroids[256 * lo:256 * (lo + w)].reshape(256, w)[codes[:, g].astype(np.int64)]
             for g, (lo, w) in enumerate(zip(codec.starts, codec.widths))]
    x = np.hstack(parts).astype(np.float64)
    if codec.unit:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x if codec.rotation is None else x @ codec.rotation.T.astype(np.float64)


def test_pq_keeps_fp16_until_trained_then_codes_everything() -> None:
    rng = np.random.default_rng(30)
    data = clustered_tokens(rng, 200)
    n_tok = sum(len(x) for x in data)
    store = MultiVectorStore(32, encoding="pq", pq_train_tokens=4096, pq_train_pool=4096)
    fp16 = MultiVectorStore(32, encoding="fp16")
    head = int(np.searchsorted(np.cumsum([len(x) for x in data]), 4096))   # chunks before the threshold
    store.add(np.arange(head), data[:head])
    fp16.add(np.arange(head), data[:head])
    q = clustered_tokens(np.random.default_rng(31), 3, lo=8, hi=8)
    assert not store.trained and store.bytes_per_token == 64
    for a, b in zip(store.score(q, [np.arange(head)] * 3), fp16.score(q, [np.arange(head)] * 3)):
        np.testing.assert_array_equal(a, b)   # exact fp16 scoring before the codebook exists
    store.add(np.arange(head, 200), data[head:])
    assert store.trained and store.bytes_per_token == 8           # 32 dims / 4 -> 8 bytes, 8x below fp16
    assert store.nbytes == n_tok * 8
    codec = store._codec
    assert codec.unit   # unit-norm tokens: decoded back to norm 1
    assert codec.rotation is not None and codec.widths.sum() == 32 and codec.n_bytes == 8
    for slot in (0, head - 1, head, 199):   # tokens coded at training time and after it
        o, n = int(store._offsets[slot]), int(store._lengths[slot])
        got_codes = np.asarray(store._tokens.slice(o, o + n)).astype(np.int64)
        want_codes = pq_reference_codes(data[slot], codec)
        if not np.array_equal(got_codes, want_codes):   # a float32 near-tie may pick either: compare errors
            codec.unit = False
            err = [((pq_reference_decode(c, codec) - data[slot]) ** 2).sum() for c in (got_codes, want_codes)]
            codec.unit = True
            assert err[0] == pytest.approx(err[1], rel=1e-4)
        np.testing.assert_allclose(store.decode(slot), pq_reference_decode(got_codes, codec), rtol=1e-5, atol=1e-5)
    # MaxSim is exact on the decoded vectors.
    got = store.score(q, [np.arange(200)] * 3)
    for qi in range(3):
        want = [maxsim64(q[qi], store.decode(s)) for s in range(200)]
        np.testing.assert_allclose(got[qi], want, rtol=2e-5, atol=2e-5)


def test_pq_learns_from_a_sample_of_the_whole_pool() -> None:
    """The codec waits for pq_train_pool tokens (kept fp16 until then) and draws its
    pq_train_tokens sample from all of them: tokens of a second topic, which arrive after the
    first pq_train_tokens, are then coded as well as the first topic's, where a codec learned
    from the first topic alone codes them about 3x worse."""
    rng = np.random.default_rng(60)
    first, second = clustered_tokens(rng, 150), clustered_tokens(rng, 150)   # other directions each
    n_first = sum(len(x) for x in first)
    n_all = n_first + sum(len(x) for x in second)
    assert n_first >= 4096
    errors = {}
    for pool in (4096, n_all):
        store = MultiVectorStore(32, encoding="pq", pq_train_tokens=4096, pq_train_pool=pool)
        store.add(np.arange(150), first)
        assert store.trained is (pool == 4096)
        if pool == n_all:   # not yet: the pool is not full, tokens still fp16
            assert store.bytes_per_token == 64
            np.testing.assert_array_equal(store.decode(3), first[3].astype(np.float16).astype(np.float32))
        store.add(np.arange(150, 300), second)
        assert store.trained and store.bytes_per_token == 8
        errors[pool] = [np.mean([((store.decode(base + i) - part[i]) ** 2).sum(axis=1).mean() for i in range(150)])
                        for base, part in ((0, first), (150, second))]
    (first_only_a, first_only_b), (pooled_a, pooled_b) = errors[4096], errors[n_all]
    assert first_only_b > 2.5 * first_only_a   # the first topic alone does not serve the second
    assert pooled_b < 0.5 * first_only_b
    assert pooled_b < 1.25 * pooled_a          # the pooled sample serves both topics alike


@pytest.mark.parametrize("kernel", [True, False], ids=["numba", "numpy"])
@pytest.mark.parametrize("norm", [1.0, 2.0])
def test_pq_decode_and_scores_match_a_reference(norm: float, kernel: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decode = centroids rotated back (rescaled to norm 1 exactly when every training token had
    norm 1); MaxSim, by the per-query tables (numba) or by decoding (numpy), scores those vectors."""
    from hybridrag.stores import _kernels

    if kernel and not _kernels.AVAILABLE:
        pytest.skip("numba kernel unavailable (HYBRIDRAG_NUMBA=0 or numba missing)")
    monkeypatch.setattr(_kernels, "AVAILABLE", kernel)
    rng = np.random.default_rng(32)
    data = [x * norm for x in clustered_tokens(rng, 150)]
    store = MultiVectorStore(32, encoding="pq", pq_train_tokens=4096, pq_train_pool=4096)
    store.add(np.arange(150), data)
    assert store._codec.unit is (norm == 1.0)
    codes = np.asarray(store._tokens.slice(0, len(store._tokens)))
    np.testing.assert_allclose(store._codec.decode(codes), pq_reference_decode(codes, store._codec),
                               rtol=1e-5, atol=1e-5)
    q = clustered_tokens(np.random.default_rng(39), 2, lo=5, hi=5)
    np.testing.assert_allclose(store._codec.scores(q[0], codes),
                               pq_reference_decode(codes, store._codec) @ q[0].T.astype(np.float64),
                               rtol=1e-5, atol=1e-5)
    got = store.score(q, [np.arange(150)] * 2)
    for qi in range(2):
        np.testing.assert_allclose(got[qi], [maxsim64(q[qi], store.decode(s)) for s in range(150)],
                                   rtol=2e-5, atol=2e-5)


def anisotropic_tokens(rng: np.random.Generator, n: int, dim: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian tokens whose variance falls 30x from the first to the last of ``dim`` random
    orthogonal axes, and those axes (columns)."""
    axes = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    sd = np.sqrt(30.0 ** -np.linspace(0, 1, dim))
    return ((rng.standard_normal((n, dim)) * sd) @ axes.T).astype(np.float32), axes


def test_pq_rotates_to_the_principal_axes_and_gives_them_the_bytes() -> None:
    """On tokens of unequal variance the codec finds the axes, codes the high-variance ones with
    narrow runs (more bits per dimension), and beats the plain 4-dimensional PQ on squared error."""
    import faiss

    x, axes = anisotropic_tokens(np.random.default_rng(50), 20000)
    codec = PQCodec.fit(x[:8192], 8)
    assert abs(float(codec.rotation[:, 0] @ axes[:, 0])) > 0.95      # first principal axis found
    assert codec.widths.sum() == 32 and codec.widths[0] < 4 < codec.widths[-1]
    assert np.all(np.diff(codec.widths) >= 0)                        # wider runs as the variance falls
    err = ((codec.decode(codec.encode(x)) - x) ** 2).sum(1).mean()
    plain = faiss.ProductQuantizer(32, 8, 8)
    plain.cp.seed, plain.cp.niter = 0, 50
    plain.train(x[:8192])
    err_plain = ((plain.decode(plain.compute_codes(x)) - x) ** 2).sum(1).mean()
    assert err < 0.9 * err_plain, (err, err_plain)


def test_pq_encode_of_every_run_width_is_the_nearest_centroid() -> None:
    """encode() zero-pads runs to the widths FAISS has fast kernels for; the codes must still be
    each byte's nearest centroid (float64 reference), for padded and unpadded widths alike."""
    rng = np.random.default_rng(41)
    widths = np.array([1, 1, 2, 3, 3, 5, 6, 7, 8, 12, 16, 17, 33, 64])
    codec = PQCodec(widths, rng.standard_normal(256 * widths.sum()).astype(np.float32), None)
    x = rng.standard_normal((3000, widths.sum())).astype(np.float32)
    got = codec.encode(x)
    want = pq_reference_codes(x, codec)
    assert (got == want).mean(axis=0).min() > 0.998   # float32 near-ties aside, every byte agrees


def test_pq_allocate() -> None:
    assert allocate(np.ones(32), 8).tolist() == [4] * 8          # equal variances: equal runs
    w = allocate(np.geomspace(1.0, 1e-3, 384), 96)
    assert w.sum() == 384 and len(w) == 96 and w[0] < w[-1] and w.max() <= 64
    assert allocate(np.zeros(8), 2).tolist() == [4, 4]           # flat (zero) variances still split
    with pytest.raises(ValueError, match="cannot cover"):
        allocate(np.ones(8), 9)
    with pytest.raises(ValueError, match="cannot cover"):
        allocate(np.ones(200), 3)


def test_pq_opens_the_plain_codebook_of_stores_saved_before(tmp_path: Path) -> None:
    """A store saved with a ``codebook`` (the plain 4-d PQ used until the rotated codec) loads,
    scores and decodes as FAISS decodes it, and codes new tokens with the same codebook."""
    import faiss

    from hybridrag.stores.base import write_npy

    data = clustered_tokens(np.random.default_rng(51), 120)
    x = np.concatenate(data)
    pq = faiss.ProductQuantizer(32, 8, 8)
    pq.cp.seed = 0
    pq.train(x)
    lengths = np.array([len(t) for t in data])
    files = {
        "tokens": write_npy(tmp_path, "old.tokens.npy", pq.compute_codes(x)),
        "offsets": write_npy(tmp_path, "old.offsets.npy", np.cumsum(lengths) - lengths),
        "lengths": write_npy(tmp_path, "old.lengths.npy", lengths),
        "codebook": write_npy(tmp_path, "old.codebook.npy", faiss.vector_to_array(pq.centroids).reshape(-1, 4)),
        "pq_unit": write_npy(tmp_path, "old.unit.npy", np.ones(1, dtype=np.float32)),
    }
    store = MultiVectorStore.load(tmp_path, files, {"dim": 32, "encoding": "pq", "pq_train_tokens": 4096})
    assert store.pq_train_pool == 4096   # saved before the pool: learned at pq_train_tokens, as then
    assert store._codec.rotation is None and store._codec.widths.tolist() == [4] * 8
    want = pq.decode(pq.compute_codes(data[7]))
    np.testing.assert_allclose(store.decode(7), want / np.linalg.norm(want, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    q = clustered_tokens(np.random.default_rng(52), 1, lo=4, hi=4)
    np.testing.assert_allclose(store.score(q, [np.arange(120)])[0],
                               [maxsim64(q[0], store.decode(s)) for s in range(120)], rtol=2e-5, atol=2e-5)
    store.add([500], [data[3]])
    np.testing.assert_array_equal(store.decode(500), store.decode(3))


def test_pq_unit_store_rejects_tokens_that_are_not_unit_norm() -> None:
    store = MultiVectorStore(32, encoding="pq", pq_train_tokens=4096, pq_train_pool=4096)
    store.add(np.arange(150), clustered_tokens(np.random.default_rng(40), 150))
    assert store.trained and store._codec.unit
    before = (len(store), len(store._tokens))
    good, bad = clustered_tokens(np.random.default_rng(41), 2)
    with pytest.raises(ValueError, match=r"slot 301 have norm 1\.5"):
        store.add([300, 301], [good, bad * 1.5])
    assert (len(store), len(store._tokens)) == before   # nothing half-added
    store.add([300, 301], [good, bad * (1 + 1e-3)])      # within the tolerance (fp16-rounded input, say)
    # A store trained on unnormalised tokens takes any norm and decodes centroids as they are.
    free = MultiVectorStore(32, encoding="pq", pq_train_tokens=4096, pq_train_pool=4096)
    free.add(np.arange(150), [x * 3 for x in clustered_tokens(np.random.default_rng(42), 150)])
    assert free.trained and not free._codec.unit
    free.add([400], [good * 0.1])


def test_pq_overlap_at_10_vs_fp32_on_clustered_tokens() -> None:
    """A sanity check of ranking quality on well-clustered tokens (0.90 when written; a broken
    codebook or decode falls far below). Real-token figures: docs/BENCHMARKS.md section 7."""
    rng = np.random.default_rng(33)
    data = clustered_tokens(rng, 400, centers=256, spread=0.15)
    qrng = np.random.default_rng(34)
    queries = []
    for _ in range(40):   # query tokens drawn from one chunk and perturbed
        src = data[int(qrng.integers(400))]
        x = src[qrng.integers(len(src), size=8)] + 0.15 * qrng.standard_normal((8, 32)).astype(np.float32)
        queries.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    ref = MultiVectorStore(32, encoding="fp32")
    ref.add(np.arange(400), data)
    pq = MultiVectorStore(32, encoding="pq", pq_train_tokens=8192, pq_train_pool=8192)
    pq.add(np.arange(400), data)
    assert pq.trained and ref.nbytes == 16 * pq.nbytes   # 4 bytes/dim vs 2 bits/dim
    _, ref_ids = ref.search(queries, k=10)
    _, ids = pq.search(queries, k=10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ref_ids.tolist(), ids.tolist())])
    assert overlap >= 0.8, f"pq overlap@10 vs fp32 = {overlap:.3f}"


@pytest.mark.parametrize("trained", [False, True])
def test_pq_save_load_round_trip(trained: bool, tmp_path: Path) -> None:
    rng = np.random.default_rng(35)
    data = clustered_tokens(rng, 200 if trained else 40)
    store = MultiVectorStore(32, encoding="pq", pq_train_tokens=4096, pq_train_pool=4096)
    store.add(np.arange(len(data)), data)
    assert store.trained is trained
    store.remove(np.array([3]))
    files = store.save(tmp_path, "g1")
    assert ("pq_centroids" in files) is trained and ("pq_rotation" in files) is trained
    loaded = MultiVectorStore.load(tmp_path, files, store.config())
    assert isinstance(loaded._tokens._base, np.memmap) and loaded.trained is trained
    assert ("pq_unit" in files) is trained and (loaded._codec is not None and loaded._codec.unit) is trained
    assert np.load(tmp_path / files["tokens"], mmap_mode="r").dtype == (np.uint8 if trained else np.float16)
    q = clustered_tokens(np.random.default_rng(36), 2, lo=6, hi=6)
    cands = [np.arange(len(data))] * 2
    for a, b in zip(store.score(q, cands), loaded.score(q, cands)):
        np.testing.assert_array_equal(a, b)
    extra = clustered_tokens(np.random.default_rng(37), 100)   # enough to train the untrained store
    slots = np.arange(1000, 1100)
    store.add(slots, extra)
    loaded.add(slots, extra)
    assert loaded.trained
    for s in (1000, 1099):
        np.testing.assert_array_equal(loaded.decode(s), store.decode(s))


def test_pq_bad_settings_and_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dim=30"):
        MultiVectorStore(30, encoding="pq")
    for bad in (100, 4095, 5000.0, True):
        with pytest.raises(ConfigError, match="pq_train_tokens"):
            MultiVectorStore(32, encoding="pq", pq_train_tokens=bad)  # type: ignore[arg-type]
    for bad in (4095, 8191, 9000.0, True):
        with pytest.raises(ConfigError, match=rf"pq_train_pool must be an int >= pq_train_tokens \(8192\), got {bad!r}"):
            MultiVectorStore(32, encoding="pq", pq_train_tokens=8192, pq_train_pool=bad)  # type: ignore[arg-type]
    store = MultiVectorStore(32, encoding="pq", pq_train_tokens=4096, pq_train_pool=4096)
    store.add(np.arange(150), clustered_tokens(np.random.default_rng(38), 150))
    files = store.save(tmp_path, "g1")
    codec = store._codec
    for role, bad, match in (
        ("pq_centroids", codec.centroids[:10], "centroids"),
        ("pq_centroids", np.where(np.arange(codec.centroids.shape[0]) == 5, np.nan, codec.centroids), "centroids"),
        ("pq_widths", np.full(8, 5), "widths"),
        ("pq_widths", codec.widths[:4], "widths"),
        ("pq_rotation", codec.rotation * 2, "rotation"),
        ("pq_rotation", codec.rotation[:8], "rotation"),
        ("codebook", codec.centroids.reshape(-1, 4)[:10], "codebook"),
    ):
        np.save(tmp_path / "bad.npy", bad)
        with pytest.raises(IndexFormatError, match=match):
            MultiVectorStore.load(tmp_path, {**files, role: "bad.npy"}, store.config())
    np.save(tmp_path / "flag.npy", np.array([2.0, 1.0], dtype=np.float32))
    with pytest.raises(IndexFormatError, match=r"pq_unit file flag.npy holds \[2\.0, 1\.0\]"):
        MultiVectorStore.load(tmp_path, {**files, "pq_unit": "flag.npy"}, store.config())
    with pytest.raises(ValueError, match="NaN"):
        store.add([500], [np.full((2, 32), np.nan, dtype=np.float32)])
    assert 500 not in set(np.flatnonzero(store._lengths > 0).tolist())
