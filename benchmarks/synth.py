"""Seeded synthetic data for benchmarks (never downloaded, same output for the same seed).

* :func:`dense_vectors`      - float32 [n, d] of low intrinsic dimension (random low-rank + noise), L2-normalised
* :func:`zipf_sparse`        - Zipfian sparse rows (CSR, 250k vocab; ~60 nnz per document, ~10 per query)
* :func:`zipf_term_counts`   - Zipfian term counts (CSR) with a log-normal length distribution, for BM25
* :func:`token_counts`       - tokens per chunk from a realistic (log-normal, clipped) length distribution
* :func:`token_vectors`      - ColBERT-like token vectors for those counts (flat float array + offsets)
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

M3_VOCAB = 250_002


def dense_vectors(n: int, d: int = 1024, intrinsic: int = 64, noise: float = 0.05, seed: int = 0,
                  basis_seed: int = 12345) -> np.ndarray:
    """``n`` unit vectors in R^d near a random ``intrinsic``-dim subspace (float32 [n, d]).

    Queries and documents drawn with different ``seed`` but the same ``basis_seed``
    share the subspace, as real embeddings do.
    """
    basis = np.random.default_rng(basis_seed).standard_normal((intrinsic, d)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    step = 65536
    for s in range(0, n, step):
        e = min(n, s + step)
        x = rng.standard_normal((e - s, intrinsic), dtype=np.float32) @ basis
        x += noise * np.sqrt(intrinsic) * rng.standard_normal((e - s, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:e] = x
    return out


def _zipf_ids(rng: np.random.Generator, size: int, vocab: int, a: float) -> np.ndarray:
    """Term ids with P(rank r) ~ 1/r^a over ``vocab`` ids, ranks shuffled by a fixed permutation."""
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    p = ranks ** -a
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    r = np.searchsorted(cdf, rng.random(size))
    perm = np.random.default_rng(vocab).permutation(vocab)   # ids are not sorted by frequency, as in real vocabularies
    return perm[np.minimum(r, vocab - 1)]


def _rows_from_lengths(rng: np.random.Generator, lengths: np.ndarray, vocab: int, a: float,
                       weights: str) -> sp.csr_matrix:
    n = len(lengths)
    rid = np.repeat(np.arange(n, dtype=np.int64), lengths)
    tid = _zipf_ids(rng, int(lengths.sum()), vocab, a)
    if weights == "count":   # repeats add up to term counts
        m = sp.csr_matrix((np.ones(len(tid), dtype=np.float32), (rid, tid)), shape=(n, vocab))
    else:   # M3-like lexical weights (a repeated token keeps one weight): relu outputs mostly in (0, 0.4)
        key = np.unique(rid * vocab + tid)
        vals = rng.gamma(2.0, 0.06, size=len(key)).astype(np.float32)
        m = sp.csr_matrix((vals, (key // vocab, key % vocab)), shape=(n, vocab))
    m.sort_indices()
    return m


def zipf_sparse(n: int, nnz: int = 60, vocab: int = M3_VOCAB, a: float = 1.1, seed: int = 0) -> sp.csr_matrix:
    """M3-like lexical-weight rows: CSR float32 [n, vocab], about ``nnz`` distinct Zipfian ids per row
    (~60 for documents, ~10 for queries)."""
    rng = np.random.default_rng(seed)
    lengths = np.maximum(1, rng.poisson(nnz * (1.0 + 0.0075 * nnz), size=n))   # draws collide on frequent ids
    return _rows_from_lengths(rng, lengths, vocab, a, "weight")


def zipf_term_counts(n: int, mean_len: int = 120, vocab: int = 200_000, a: float = 1.05,
                     seed: int = 0) -> sp.csr_matrix:
    """BM25 corpus as term counts: CSR float32 [n, vocab]; lengths log-normal around ``mean_len`` tokens."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(mean_len) - 0.18, 0.6, size=n), 1, 20 * mean_len).astype(np.int64)
    return _rows_from_lengths(rng, lengths, vocab, a, "count")


def token_counts(n: int, median: int = 180, sigma: float = 0.7, max_len: int = 8192, seed: int = 0) -> np.ndarray:
    """Tokens per chunk (int64 [n]): log-normal (median ``median``), clipped to [4, max_len]."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(np.log(median), sigma, size=n)), 4, max_len).astype(np.int64)


def token_vectors(counts: np.ndarray, d: int = 1024, seed: int = 0, dtype: type = np.float16) -> tuple[np.ndarray, np.ndarray]:
    """ColBERT-like token vectors for ``counts``: (flat [sum(counts), d] L2-normalised, offsets [n + 1])."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    flat = dense_vectors(int(offsets[-1]), d=d, intrinsic=min(128, d), seed=seed).astype(dtype)
    return flat, offsets
