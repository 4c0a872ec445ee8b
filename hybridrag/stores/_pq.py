"""The ``pq`` codec of :class:`~hybridrag.stores.multivector.MultiVectorStore`: ``dim/4`` bytes per vector.

Transform coding with a product quantiser. Learned once from a sample of token vectors:

1. **Rotation** to the sample's principal axes (eigenvectors of its covariance, by decreasing
   variance). Rotating changes no inner product, so a query scores the codes after the same
   rotation.
2. **Bytes allocated by variance.** The ``dim/4`` one-byte codes cover consecutive runs of the
   principal axes, of ``width`` 1 to 64 dimensions each; a run is one sub-space of a product
   quantiser (256 k-means centroids, FAISS). Wide runs on the low-variance axes, narrow runs
   (up to 8 bits per dimension) on the high-variance ones: :func:`allocate` picks the widths
   that minimise ``sum over runs of width * g**(1 + ALPHA) * 2**(-16 / width)``, ``g`` the
   geometric mean of the run's variances (the high-resolution distortion of a 256-centroid
   quantiser, each run weighted by ``g**ALPHA``, by dynamic programming over the sorted axes).
   ``ALPHA = 0.5`` leans the bytes further towards the axes that queries use most than plain
   squared error would (``ALPHA = 0``); chosen on MaxSim top-10 overlap against fp32 on real
   token vectors (docs/CHANGELOG-performance.md, section 7, part E).
3. **Decoding** gathers the centroids (the sample's mean is in them) in the rotated space.

Uniform 4-dimensional sub-vectors without a rotation (``widths`` all 4, ``rotation`` None) are
the plain product quantiser that stores saved before this codec used; :meth:`PQCodec.legacy`
opens their codebooks unchanged.

Scores: ``scores(q, codes)`` is ``decode(codes) @ q.T``. With numba it never decodes: it builds,
per query, a table of every centroid's inner product with the rotated query tokens
(``dim/4 * 256`` rows of ``tq`` floats, a few small GEMMs) and sums one table row per code
(:func:`hybridrag.stores._kernels.pq_scores`); measured faster than gathering the centroids
and multiplying (docs/CHANGELOG-performance.md, section 7, "MaxSim speed"). Without numba:
gather, then the GEMM.

Tests: ``tests/test_multivector.py`` (``test_pq_*``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from hybridrag.stores import _kernels

K = 256            # centroids per sub-space (one byte)
ALPHA = 0.5        # weight of a run's variance in the byte allocation (see the module doc)
MAX_WIDTH = 64     # widest run one byte covers
NITER = 50         # k-means iterations (FAISS default 25; 50 gave a better codebook on real tokens)


def allocate(variances: np.ndarray, n_bytes: int, alpha: float = ALPHA, max_width: int = MAX_WIDTH) -> np.ndarray:
    """Widths (int64, summing to ``len(variances)``) of ``n_bytes`` consecutive runs of the axes,
    ``variances`` sorted in decreasing order; minimises the cost in the module doc."""
    d = variances.shape[0]
    if not 1 <= n_bytes <= d or n_bytes * max_width < d:
        raise ValueError(f"cannot cover {d} dimensions with {n_bytes} runs of 1..{max_width}")
    v = np.asarray(variances, dtype=np.float64)
    v = np.maximum(v, max(float(v.max(initial=0.0)), 1e-30) * 1e-9)   # no log(0) on flat axes
    cum = np.concatenate([[0.0], np.cumsum(np.log(v))])
    inf = np.inf
    best = np.full((d + 1, n_bytes + 1), inf)   # best[i, j]: first i axes in j runs
    best[0, 0] = 0.0
    arg = np.zeros((d + 1, n_bytes + 1), dtype=np.int64)
    for i in range(d):
        if not np.isfinite(best[i]).any():
            continue
        for m in range(1, min(max_width, d - i) + 1):
            cost = m * np.exp((1.0 + alpha) * (cum[i + m] - cum[i]) / m) * 2.0 ** (-16.0 / m)
            cand = best[i, :-1] + cost
            better = cand < best[i + m, 1:]
            best[i + m, 1:][better] = cand[better]
            arg[i + m, 1:][better] = m
    widths, i, j = [], d, n_bytes
    while i > 0:
        widths.append(int(arg[i, j]))
        i, j = i - widths[-1], j - 1
    return np.array(widths[::-1], dtype=np.int64)


def _runs(widths: np.ndarray) -> list[tuple[int, int, int]]:
    """Runs of equal width as (first byte, end byte, width): one FAISS quantiser / gather each."""
    cuts = np.flatnonzero(np.diff(widths)) + 1
    bounds = np.concatenate([[0], cuts, [widths.shape[0]]])
    return [(int(a), int(b), int(widths[a])) for a, b in zip(bounds[:-1], bounds[1:])]


def _quantiser(m: int, count: int) -> Any:
    import faiss

    return faiss.ProductQuantizer(m * count, count, 8)


# FAISS codes sub-vectors of these widths with its SIMD distance kernels; other widths took
# longer per dimension than the next of these (width 1 the worst; benchmarks/profile_pq_widths.py,
# docs/CHANGELOG-performance.md engine change 13), so encode() pads each run with zero
# dimensions up to the next of these (exact: a dimension that is zero in the vector and in
# every centroid adds nothing to any distance).
_FAST_WIDTHS = (2, 4, 8, 16, 32, 64)


def _padded(m: int) -> int:
    return next(w for w in _FAST_WIDTHS if w >= m)


class PQCodec:
    """``n_bytes`` one-byte codes per vector (see the module doc).

    Args:
        widths: dimensions per byte, in rotated-axis order (sums to the vector dimension).
        centroids: float32, ``256 * dim`` values: byte ``g``'s 256 centroids of ``widths[g]``
            floats each, one after another (FAISS's layout for a run of equal widths).
        rotation: ``(dim, dim)`` orthogonal; a vector ``x`` is coded as ``x @ rotation``.
            ``None``: no rotation.
        unit: decode every vector to norm 1 (the vectors it codes are unit-norm).
    """

    def __init__(self, widths: np.ndarray, centroids: np.ndarray, rotation: np.ndarray | None,
                 unit: bool = False) -> None:
        self.widths = np.asarray(widths, dtype=np.int64)
        self.dim = int(self.widths.sum())
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32).ravel()
        if self.centroids.shape[0] != K * self.dim:
            raise ValueError(f"{self.centroids.shape[0]} centroid values for dim {self.dim}, expected {K * self.dim}")
        self.rotation = None if rotation is None else np.ascontiguousarray(rotation, dtype=np.float32)
        self.unit = bool(unit)
        self.starts = np.concatenate([[0], np.cumsum(self.widths)[:-1]]).astype(np.int64)
        self.runs = _runs(self.widths)
        self._quantisers: list[Any] | None = None
        self._sq: np.ndarray | None = None

    @property
    def n_bytes(self) -> int:
        return int(self.widths.shape[0])

    @classmethod
    def legacy(cls, codebook: np.ndarray, unit: bool) -> PQCodec:
        """The plain 4-dimensional PQ of a ``(dim/4 * 256, 4)`` codebook (stores saved before)."""
        return cls(np.full(codebook.shape[0] // K, 4), codebook, None, unit)

    @classmethod
    def fit(cls, sample: np.ndarray, n_bytes: int, seed: int = 0, alpha: float = ALPHA) -> PQCodec:
        """Learn rotation, widths (:func:`allocate` with ``alpha``) and centroids (k-means seeded
        with ``seed``) from ``sample`` (float32 ``(n, dim)``, n >= 256)."""
        import faiss

        sample = np.ascontiguousarray(sample, dtype=np.float32)
        n, dim = sample.shape
        mean = sample.mean(axis=0, dtype=np.float64)
        cov = np.zeros((dim, dim))
        for i in range(0, n, 8192):   # float64 in blocks: M3's 1024-d sample is 256 MiB as float32
            c = sample[i:i + 8192] - mean
            cov += c.T @ c
        variances, axes = np.linalg.eigh(cov / max(1, n - 1))
        order = np.argsort(-variances, kind="stable")
        rotation = np.ascontiguousarray(axes[:, order], dtype=np.float32)
        widths = allocate(variances[order], n_bytes, alpha)
        xr = sample @ rotation
        quantisers, lo = [], 0
        for a, b, m in _runs(widths):
            pq = _quantiser(m, b - a)
            pq.cp.seed, pq.cp.niter = seed, NITER
            pq.cp.min_points_per_centroid = 1   # the store's own minimum applies; no FAISS warning
            pq.train(np.ascontiguousarray(xr[:, lo:lo + m * (b - a)]))
            quantisers.append(pq)
            lo += m * (b - a)
        return cls(widths, np.concatenate([faiss.vector_to_array(pq.centroids) for pq in quantisers]), rotation)

    def rotate(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return x if self.rotation is None else x @ self.rotation

    def _run_slice(self, a: int, b: int, m: int) -> tuple[int, int]:
        return int(self.starts[a]), int(self.starts[b - 1]) + m

    def encode(self, x: np.ndarray) -> np.ndarray:
        """uint8 ``(n, n_bytes)`` codes of float32 ``(n, dim)`` vectors (nearest centroid per byte;
        FAISS quantisers over runs zero-padded to :data:`_FAST_WIDTHS`)."""
        import faiss

        if self._quantisers is None:
            qs = []
            for a, b, m in self.runs:
                lo, hi = self._run_slice(a, b, m)
                cents = np.zeros((b - a, K, _padded(m)), dtype=np.float32)
                cents[:, :, :m] = self.centroids[K * lo:K * hi].reshape(b - a, K, m)
                pq = _quantiser(_padded(m), b - a)
                faiss.copy_array_to_vector(cents.ravel(), pq.centroids)
                qs.append(pq)
            self._quantisers = qs
        xr = self.rotate(x)
        n = xr.shape[0]
        out = np.empty((n, self.n_bytes), dtype=np.uint8)
        for (a, b, m), pq in zip(self.runs, self._quantisers):
            lo, hi = self._run_slice(a, b, m)
            if _padded(m) == m:
                part = np.ascontiguousarray(xr[:, lo:hi])
            else:
                part = np.zeros((n, b - a, _padded(m)), dtype=np.float32)
                part[:, :, :m] = xr[:, lo:hi].reshape(n, b - a, m)
            out[:, a:b] = pq.compute_codes(part.reshape(n, -1))
        return out

    def _gather(self, codes: np.ndarray) -> np.ndarray:
        """float32 ``(n, dim)`` centroids of the codes in the rotated space (not normalised); one
        ``np.take`` of whole centroid rows per run (the numpy path; numba scores by tables)."""
        n = codes.shape[0]
        out = np.empty((n, self.dim), dtype=np.float32)
        for a, b, m in self.runs:
            lo, hi = self._run_slice(a, b, m)
            rows = codes[:, a:b].astype(np.int32)
            rows += np.arange(0, (b - a) * K, K, dtype=np.int32)
            out[:, lo:hi] = np.take(self.centroids[K * lo:K * hi].reshape(-1, m), rows, axis=0).reshape(n, hi - lo)
        return out

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """float32 ``(n, dim)`` decoded vectors in the original space (norm 1 when ``unit``)."""
        x = self._gather(codes)
        if self.unit:
            x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-15))
        return x if self.rotation is None else x @ self.rotation.T

    def squared_norms(self) -> np.ndarray:
        """Every centroid's squared norm, float32 ``(n_bytes * 256,)`` (byte-major)."""
        if self._sq is None:
            sq = np.empty(self.n_bytes * K, dtype=np.float32)
            for a, b, m in self.runs:
                lo, hi = self._run_slice(a, b, m)
                c = self.centroids[K * lo:K * hi].reshape(-1, m)
                sq[K * a:K * b] = np.einsum("ij,ij->i", c, c)
            self._sq = sq
        return self._sq

    def table(self, q: np.ndarray) -> np.ndarray:
        """float32 ``(n_bytes * 256, tq)``: every centroid's inner product with each rotated query token."""
        qr = self.rotate(q)
        tq = qr.shape[0]
        out = np.empty((self.n_bytes * K, tq), dtype=np.float32)
        for a, b, m in self.runs:
            lo, hi = self._run_slice(a, b, m)
            c = self.centroids[K * lo:K * hi].reshape(b - a, K, m)
            qs = np.ascontiguousarray(qr[:, lo:hi].T).reshape(b - a, m, tq)
            out[K * a:K * b] = np.matmul(c, qs).reshape(-1, tq)
        return out

    def scores(self, q: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """float32 ``(n, tq)`` = ``decode(codes) @ q.T`` (tokens-major, as MaxSim reduces it)."""
        if _kernels.AVAILABLE:
            return _kernels.pq_scores(codes, self.table(q), self.squared_norms(), self.unit)
        x = self._gather(codes)
        s = x @ self.rotate(q).T
        if self.unit:
            s /= np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), np.float32(1e-15))[:, None]
        return s
