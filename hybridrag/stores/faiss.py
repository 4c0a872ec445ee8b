"""Dense vectors in FAISS: exact (``Flat``), HNSW, IVF/IVF-PQ, any FAISS factory string.

Design
------
* The store keeps the float vectors themselves (float32, or float16 with
  ``vector_dtype="float16"``). They give exact ``score()`` of candidates, exact re-scoring
  of ANN hits, brute-force search while a trained index is still buffering, and rebuilds.
* ``Flat`` has no FAISS index: the kept vectors are the only copy, memory-mapped after
  ``load``, so opening a Flat store reads the vectors' ``.npy`` header and its small row
  files. (A FAISS ``IndexFlat`` held a second copy, written beside them and read whole into
  memory at load, for the same search.) float32 vectors are searched in place by FAISS's
  exact k-NN kernel (``knn_inner_product`` / ``knn_L2sqr``, what ``IndexFlat.search`` runs;
  a filter is an ``IDSelectorBitmap``), its hits re-scored as below, and a query whose
  k-th score ties with the last fetched one is answered by brute force (ties go to the
  smaller slot); float16 vectors, and rows split between a loaded file and later adds, by
  numpy brute force (one GEMM per block). Single-threaded (``OMP_NUM_THREADS=1``) on a
  shared 2-core machine, ``benchmarks/bench_dense_segments.py``, against the store that held
  an ``IndexFlat``: at 100k x 1024 float32 ``load`` 267-275 ms and +391 MiB resident ->
  17-18 ms and +0 MiB, one query (k=10) p50 17-25 ms -> 16-23 ms (3 runs each); at 20k x 384
  one query p50 0.76-0.78 ms -> 0.78-0.80 ms. With a GPU, unfiltered
  searches go to a GPU ``IndexFlat`` built from the vectors on first use.
* Other factories keep a FAISS index whose ids are internal *row* numbers; ``row -> slot``
  and ``slot -> row`` arrays map them to engine slots. Removal is a tombstone (the row's
  live bit is cleared) and every search on a store with tombstones or an ``allowed`` mask
  passes an ``IDSelectorBitmap`` in FAISS ``SearchParameters``, so removed or disallowed
  slots are never returned and top-k is taken after the filter. Tombstoned rows are dropped
  by a rebuild when more than half the rows are dead, and at ``save`` (always for Flat and
  untrained stores, else when at least a quarter are dead).
* Indexes that need training (IVF, PQ, SQ) buffer vectors until ``min_train`` live
  vectors exist (default ``max(256, 39 * max(nlist, ksub))``, FAISS's own guidance);
  until then search is exact brute force over the buffered vectors. They are then
  trained once and every row is added.
* A query falls back to exact brute force when few rows pass the filter
  (``<= exact_below``, or under 2% of the rows), or when the ANN index returned fewer
  than ``min(k, rows allowed)`` hits, so ``k`` hits come back whenever ``k`` exist.
* Scores: ``metric="ip"`` gives the inner product; ``metric="l2"`` gives the negative
  squared L2 distance (so larger is better, as everywhere in hybridrag). Search scores
  equal ``score()`` to float32 rounding: ANN hits are re-scored from the kept vectors
  (with numba, float32 vectors in one compiled pass, ``_kernels.rescore_top_k``).
  A score that is not finite (only damaged files give one: added vectors are checked)
  counts as absent.

Segments
--------
Each segment of an index holds one ``FaissStore`` over its own rows. ``empty_like()`` gives
a fresh store with the same settings and the same trained state (the IVF coarse quantiser,
PQ/SQ codebooks, OPQ rotation: the trained index, emptied), so every segment codes vectors
alike. ``merge(parts)`` builds one store from the live rows of several: the kept vectors
are copied as stored; a trained IVF index (array inverted lists) or a flat-code index
(``PQ``, ``SQ``...) gets the parts' codes copied entry by entry (renumbered rows), so codes
and ANN distances stay those of the parts; HNSW (its graph depends on every row) and any
other index are rebuilt from the kept vectors (float32 as kept). Parts not all trained
alike (one still buffering, or trained separately) are re-coded from their kept vectors with
the first trained part's state. Flat has nothing but the vectors. Scores after a merge equal
the parts' to float32 rounding (BLAS rounds a dot product by the row's place in the block,
as it already does between two ``score`` calls with different candidates). ``load`` checks the files' structure (shapes, dtypes, slots;
the FAISS index's dimension, size, ids and HNSW links) without reading the vectors, so a
damaged file raises ``IndexFormatError`` naming it instead of crashing a later search.

Tests: ``tests/test_faiss_store.py``, ``tests/test_store_segments.py``,
``tests/test_store_damage.py``, ``tests/test_store_conformance.py``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from hybridrag.errors import ConfigError, IndexFormatError
from hybridrag.stores import _kernels
from hybridrag.stores.base import (
    AppendableArray,
    Self,
    SlotMap,
    as_matrix,
    as_slots,
    check_allowed,
    check_k,
    empty_results,
    load_array,
    merge_topk,
    new_file,
    topk,
    widen,
    write_npy,
    write_npy_blocks,
)

__all__ = ["FaissStore"]

logger = logging.getLogger(__name__)

_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
_VECTOR_DTYPES = ("float32", "float16")
_BLOCK_ROWS = 65536  # rows per brute-force block: bounds the (nq, block) score matrix
_QUERY_BLOCK = 256  # queries per exact re-scoring block
_BRUTE_FRACTION = 0.02  # filters passing fewer rows than this go to brute force
_TIE_MARGIN = 8  # extra hits fetched so ties at the k-th score can be resolved
# A search of fewer queries than this (FAISS's own threshold for its BLAS path) runs FAISS on
# the calling thread only: see _few_threads.
_FEW_QUERIES = 20
_MAX_SLOT = 1 << 40  # slots at or above this in a file are damage (the slot map is dense)
_GPU_COUNT: int | None = None  # faiss.get_num_gpus(), once per process (FaissStore._num_gpus)


def _grow(arr: np.ndarray, n: int, fill: Any) -> np.ndarray:
    """Return ``arr`` with length >= ``n`` (capacity doubling, new entries = ``fill``)."""
    if n <= arr.shape[0]:
        return arr
    cap = max(n, 2 * arr.shape[0], 1024)
    out = np.full(cap, fill, dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    return out


@contextlib.contextmanager
def _few_threads(nq: int) -> Any:
    """FAISS's OpenMP threads for a search of ``nq`` queries: one when there are few (OpenMP's
    setting is per thread, so only this thread's calls change, and it is restored). One query
    scans the vectors at memory speed on one core; split over the cores, it waited for the
    slowest of them, several times longer as soon as another process (or another search)
    used a core. Concurrent searches still use every core (docs/BENCHMARKS.md, section 11)."""
    if nq >= _FEW_QUERIES:
        yield
        return
    before = faiss.omp_get_max_threads()
    if before == 1:
        yield
        return
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class FaissStore:
    """Dense vector store on a FAISS index chosen by factory string.

    Args:
        dim: vector dimension.
        factory: FAISS factory string: ``"Flat"`` (exact), ``"HNSW32"``,
            ``"IVF1024,Flat"``, ``"IVF1024,PQ16"``, ``"OPQ16,IVF1024,PQ16"``, ... The
            store assigns ids itself, so ``IDMap`` prefixes are rejected.
        metric: ``"ip"`` (inner product) or ``"l2"`` (score = -squared distance).
        nprobe: IVF lists probed per query.
        ef_search: HNSW search breadth (raised to the number of hits fetched).
        ef_construction: HNSW build breadth (``None`` keeps FAISS's default).
        use_gpu: ``"auto"`` (GPU when FAISS sees one), ``True`` (require one), ``False``.
        vector_dtype: ``"float32"`` or ``"float16"`` for the kept vectors.
        min_train: live vectors needed before a trainable index is trained.
        exact_below: searches over at most this many allowed rows are brute force.
        refine_factor: ANN hits fetched per wanted hit, re-scored exactly (2-4 helps PQ).
    """

    def __init__(
        self,
        dim: int,
        factory: str = "Flat",
        metric: str = "ip",
        nprobe: int = 16,
        ef_search: int = 64,
        ef_construction: int | None = None,
        use_gpu: bool | str = "auto",
        vector_dtype: str = "float32",
        min_train: int | None = None,
        exact_below: int = 2048,
        refine_factor: int = 1,
    ) -> None:
        for name, val, lo in (("dim", dim, 1), ("nprobe", nprobe, 1), ("ef_search", ef_search, 1),
                              ("exact_below", exact_below, 0), ("refine_factor", refine_factor, 1)):
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {val!r}")
            if val < lo:
                raise ValueError(f"{name} must be >= {lo}, got {val}")
        if not isinstance(factory, str) or not factory.strip():
            raise TypeError(f"factory must be a FAISS factory string, got {factory!r}")
        if factory.replace(" ", "").upper().startswith("IDMAP"):
            raise ConfigError(f"factory {factory!r}: drop the IDMap prefix, FaissStore assigns ids")
        if metric not in _METRICS:
            raise ConfigError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
        if vector_dtype not in _VECTOR_DTYPES:
            raise ConfigError(f"vector_dtype must be one of {_VECTOR_DTYPES}, got {vector_dtype!r}")
        if use_gpu not in ("auto", True, False):
            raise ConfigError(f"use_gpu must be 'auto', True or False, got {use_gpu!r}")
        if use_gpu is True and self._num_gpus() == 0:
            raise ConfigError("use_gpu=True but FAISS sees no GPU (install faiss-gpu, or use 'auto')")
        self.dim = int(dim)
        self.factory = factory
        self.metric = metric
        self.nprobe = int(nprobe)
        self.ef_search = int(ef_search)
        self.ef_construction = ef_construction
        self.use_gpu = use_gpu
        self.vector_dtype = vector_dtype
        self.exact_below = int(exact_below)
        self.refine_factor = int(refine_factor)

        index = self._new_index()
        info = self._inspect(index)
        self._is_flat = info["flat"]
        # Flat: the kept vectors are the index (see the module doc).
        self._index: Any = None if self._is_flat else index
        self._needs_training = not index.is_trained
        floor = max(info["nlist"], info["ksub"], 1)
        if min_train is None:
            min_train = max(256, 39 * floor) if self._needs_training else 0
        if isinstance(min_train, bool) or not isinstance(min_train, (int, np.integer)):
            raise TypeError(f"min_train must be an int, got {min_train!r}")
        if self._needs_training and min_train < floor:
            raise ValueError(
                f"min_train must be >= {floor} (the index's nlist/ksub) for {factory!r}, got {min_train}"
            )
        self.min_train = int(min_train)
        self._max_train = 256 * floor

        self._vecs = AppendableArray(self.dim, self.vector_dtype)
        self._row_slot = np.zeros(0, dtype=np.int64)  # capacity-managed; first _n_rows used
        self._live = np.zeros(0, dtype=bool)
        self._slots = SlotMap()  # slot -> row (memory follows the rows; callers check _live)
        self._n_rows = 0
        self._n_live = 0
        self._max_slot = -1
        self._gpu_index: Any = None
        self._gpu_failed = False
        # Unfiltered SearchParameters by (hits fetched, ef_search, nprobe): building them
        # costs about as much as the exact re-scoring of one query's hits.
        self._plain_params: dict[tuple[int, int, int], tuple[Any, list[Any]]] = {}
        # (base, tail, row_slot) as the compiled re-score takes them; reset when rows change.
        self._kernel_views: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._lists: dict = {}   # the kernels' typed lists of this store's arrays (_kernels.array_list)
        # _ready, kept between searches (reading it from the SWIG index on every query showed
        # in profile_dense_call.py); None after the index or the rows change.
        self._ready_cache: bool | None = None
        self._sq_norms = np.zeros(0, dtype=np.float32)  # l2 brute force: |v|^2 of the first rows

    # ------------------------------------------------------------------ index helpers

    @staticmethod
    def _num_gpus() -> int:
        """GPUs FAISS sees, asked once per process (a GPU does not come or go while it runs)."""
        global _GPU_COUNT
        if _GPU_COUNT is None:
            try:
                _GPU_COUNT = int(faiss.get_num_gpus())
            except AttributeError:  # pragma: no cover - very old builds
                _GPU_COUNT = 0
        return _GPU_COUNT

    def _new_index(self) -> Any:
        try:
            index = faiss.index_factory(self.dim, self.factory, _METRICS[self.metric])
        except RuntimeError as exc:
            raise ConfigError(f"FAISS cannot build factory string {self.factory!r}: {exc}") from exc
        inner = self._innermost(index)
        if self.ef_construction is not None and hasattr(inner, "hnsw"):
            inner.hnsw.efConstruction = int(self.ef_construction)
        return index

    @staticmethod
    def _innermost(index: Any) -> Any:
        idx = faiss.downcast_index(index)
        while isinstance(idx, faiss.IndexPreTransform):
            idx = faiss.downcast_index(idx.index)
        return idx

    def _inspect(self, index: Any) -> dict[str, Any]:
        inner = self._innermost(index)
        try:
            nlist = int(faiss.extract_index_ivf(index).nlist)
        except RuntimeError:
            nlist = 0
        pq = getattr(inner, "pq", None)
        return {
            "flat": isinstance(faiss.downcast_index(index), faiss.IndexFlat),
            "nlist": nlist,
            "ksub": int(pq.ksub) if pq is not None else 0,
        }

    @property
    def _ready(self) -> bool:
        """True when every row is in the FAISS index (trained, or needs no training)."""
        if self._ready_cache is None:
            self._ready_cache = self._index is None or (
                bool(self._index.is_trained) and self._index.ntotal == self._n_rows)
        return self._ready_cache

    def _add_to_index(self, index: Any, start: int, stop: int) -> None:
        for s in range(start, stop, _BLOCK_ROWS):
            e = min(s + _BLOCK_ROWS, stop)
            index.add(np.ascontiguousarray(self._vecs.slice(s, e), dtype=np.float32))

    def _train_and_fill(self) -> None:
        """Train the buffered index on live rows (sampled), then add every row."""
        self._compact_rows()
        n = self._n_rows
        rng = np.random.default_rng(1234)
        idx = np.arange(n) if n <= self._max_train else np.sort(rng.choice(n, self._max_train, replace=False))
        self._index.train(np.ascontiguousarray(self._vecs.take(idx), dtype=np.float32))
        self._add_to_index(self._index, 0, n)

    def _compact_rows(self) -> None:
        """Drop tombstoned rows, renumber, and rebuild the index (keeping any training)."""
        keep = np.flatnonzero(self._live[: self._n_rows])
        if keep.shape[0] != self._n_rows:
            vecs = AppendableArray(self.dim, self.vector_dtype)
            for s in range(0, keep.shape[0], _BLOCK_ROWS):
                vecs.append(self._vecs.take(keep[s : s + _BLOCK_ROWS]))
            self._vecs = vecs
            self._kernel_views = None
            self._row_slot = self._row_slot[keep].copy()
            self._live = np.ones(keep.shape[0], dtype=bool)
            self._n_rows = keep.shape[0]
            self._slots = SlotMap(self._row_slot, np.arange(self._n_rows))
            self._sq_norms = self._sq_norms[:0]
        if self._index is not None and (self._index.ntotal != self._n_rows or not self._index.is_trained):
            if self._needs_training and self._index.is_trained:
                index = faiss.clone_index(self._index)
                index.reset()
            else:
                index = self._new_index()
            if index.is_trained:
                self._add_to_index(index, 0, self._n_rows)
            self._index = index
        self._gpu_index = None
        self._ready_cache = None

    def _params(self, bitmap: np.ndarray | None, kf: int) -> tuple[Any, list[Any]]:
        """SearchParameters for the index (with an IDSelectorBitmap over rows), plus refs to keep alive.

        Unfiltered ones are built once per (hits fetched, ef_search, nprobe) and shared.
        """
        if bitmap is not None:
            return self._new_params(bitmap, kf)
        key = (kf, self.ef_search, self.nprobe)
        got = self._plain_params.get(key)
        if got is None:
            if len(self._plain_params) >= 64:
                self._plain_params.clear()
            got = self._plain_params[key] = self._new_params(None, kf)
        return got

    def _new_params(self, bitmap: np.ndarray | None, kf: int) -> tuple[Any, list[Any]]:
        """Build what :meth:`_params` returns."""
        keep: list[Any] = []
        sel = None
        if bitmap is not None:
            sel = faiss.IDSelectorBitmap(self._n_rows, faiss.swig_ptr(bitmap))
            keep += [bitmap, sel]
        inner = self._innermost(self._index)
        if isinstance(inner, faiss.IndexIVF):
            p = faiss.SearchParametersIVF()
            p.nprobe = self.nprobe
        elif hasattr(inner, "hnsw"):
            p = faiss.SearchParametersHNSW()
            p.efSearch = max(self.ef_search, kf)
        else:
            p = faiss.SearchParameters()
        if sel is not None:
            p.sel = sel
        keep.append(p)
        top = faiss.downcast_index(self._index)
        while isinstance(top, faiss.IndexPreTransform):
            outer = faiss.SearchParametersPreTransform()
            outer.index_params = p
            keep.append(outer)
            p = outer
            top = faiss.downcast_index(top.index)
        # The outermost wrapper holds the chain; keep the Python objects alive with it.
        return p, keep

    def _gpu(self) -> Any:
        """The GPU copy of the index, or None when no GPU is used."""
        if self.use_gpu is False or self._gpu_failed or self._num_gpus() == 0:
            return None
        if self._gpu_index is None:
            try:
                index = self._index
                if index is None:   # Flat: a GPU copy of the vectors (the CPU one is dropped)
                    index = faiss.IndexFlat(self.dim, _METRICS[self.metric])
                    self._add_to_index(index, 0, self._n_rows)
                gpu = faiss.index_cpu_to_all_gpus(index)
                if hasattr(gpu, "nprobe"):
                    gpu.nprobe = self.nprobe
                self._gpu_index = gpu
            except (RuntimeError, AttributeError) as exc:
                logger.debug("FAISS index %r stays on CPU: %s", self.factory, exc)
                self._gpu_failed = True
                return None
        return self._gpu_index

    # ------------------------------------------------------------------ protocol

    def __len__(self) -> int:
        return self._n_live

    def add(self, slots: np.ndarray, data: Any) -> None:
        """Add ``data`` (float ``(n, dim)``) under ``slots`` (int ``(n,)``, not already live)."""
        slots = as_slots(slots)
        vecs = as_matrix(data, self.dim, "vectors")
        if vecs.shape[0] != slots.shape[0]:
            raise ValueError(f"got {slots.shape[0]} slots but {vecs.shape[0]} vectors")
        if slots.shape[0] == 0:
            return
        if np.unique(slots).shape[0] != slots.shape[0]:
            raise ValueError("slots contain duplicates")
        live = slots[self._live_rows_of(slots) >= 0]
        if live.shape[0]:
            raise ValueError(f"slots already present: {live[:10].tolist()}; remove them first")
        n = slots.shape[0]
        start = self._vecs.append(vecs.astype(self.vector_dtype, copy=False))
        self._kernel_views = None
        stop = start + n
        self._row_slot = _grow(self._row_slot, stop, -1)
        self._live = _grow(self._live, stop, False)
        self._row_slot[start:stop] = slots
        self._live[start:stop] = True
        if not self._slots.append(slots, np.arange(start, stop)):
            live = np.flatnonzero(self._live[:stop])
            self._slots = SlotMap(self._row_slot[live], live)
        self._n_rows = stop
        self._n_live += n
        self._max_slot = max(self._max_slot, int(slots.max()))
        self._gpu_index = None
        if self._index is None:
            pass
        elif self._index.is_trained:
            self._index.add(vecs)
        elif self._n_live >= self.min_train:
            self._train_and_fill()
        self._ready_cache = None

    def _live_rows_of(self, slots: np.ndarray) -> np.ndarray:
        """Row of each slot (int64), -1 for a slot that no live row holds."""
        rows = self._slots.lookup(slots)
        held = rows >= 0
        rows[held] = np.where(self._live[rows[held]], rows[held], -1)
        return rows

    def export(self, slots: np.ndarray) -> np.ndarray:
        """The kept vectors of live ``slots``, in their order, as ``add`` takes them (float32
        ``(n, dim)``; a ``float16`` store's values widened exactly): to copy rows into another
        store (:meth:`hybridrag.index.HybridIndex.migrate`). ``KeyError`` names absent slots."""
        slots = as_slots(slots)
        rows = self._live_rows_of(slots)
        if np.any(rows < 0):
            raise KeyError(f"slots not in the store: {slots[rows < 0][:10].tolist()}")
        return np.asarray(self._vecs.take(rows), dtype=np.float32)

    def remove(self, slots: np.ndarray) -> None:
        """Tombstone ``slots``; unknown or already removed slots are ignored. In memory only:
        a loaded store's files are never touched, and it keeps its tombstones (no rebuild of
        the index or copy of the memory-mapped vectors; a merge drops them)."""
        slots = as_slots(slots)
        rows = self._live_rows_of(np.unique(slots))
        rows = rows[rows >= 0]
        if rows.shape[0] == 0:
            return
        self._live[rows] = False
        self._n_live -= rows.shape[0]
        self._gpu_index = None
        dead = self._n_rows - self._n_live
        if dead > max(1024, self._n_live) and self._vecs.parts()[0].shape[0] == 0:
            self._compact_rows()

    def search(
        self, queries: Any, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, slots)`` of shape ``(nq, k)`` for float ``(nq, dim)`` queries."""
        q = as_matrix(queries, self.dim)
        k = check_k(k)
        allowed = check_allowed(allowed, self._max_slot + 1)
        nq = q.shape[0]
        if nq == 0 or k == 0 or self._n_live == 0:
            return empty_results(nq, k)
        rowmask: np.ndarray | None = None
        if allowed is not None or self._n_live < self._n_rows:
            rowmask = self._live[: self._n_rows].copy()
            if allowed is not None:
                rowmask &= allowed[self._row_slot[: self._n_rows]]
        n_ok = self._n_live if rowmask is None else int(rowmask.sum())
        if n_ok == 0:
            return empty_results(nq, k)
        if (
            not self._ready
            or n_ok <= self.exact_below
            or (rowmask is not None and n_ok < _BRUTE_FRACTION * self._n_rows)
            or (self._index is None and self._knn_vectors() is None and (rowmask is not None or self._gpu() is None))
        ):
            if self._flat_kernel():
                # The compiled scan, as search_parts and score give it: BLAS may score two equal
                # vectors a last bit apart by where they sit in a block (numpy 2.4 / OpenBLAS),
                # and ties would then break against the slot rule. None for large batches.
                got = type(self).search_parts([self], q, k, allowed=allowed, cache=self._lists)
                if got is not None:
                    return got
            return self._brute(q, k, rowmask)
        return self._ann(q, k, rowmask, n_ok)

    def score(self, queries: Any, candidates: list[np.ndarray]) -> list[np.ndarray]:
        """Exact scores of ``candidates[i]`` (slots) for query ``i``; ``-inf`` for absent slots."""
        q = as_matrix(queries, self.dim)
        if len(candidates) != q.shape[0]:
            raise ValueError(f"got {q.shape[0]} queries but {len(candidates)} candidate lists")
        if self._flat_kernel():
            # the scores search() gives (its exact re-score, or the one-pass scan of several
            # segments): a chunk's dense score does not depend on the stage that found it
            return type(self).score_parts([self], q, candidates, cache=self._lists)
        out = []
        for qi, cand in zip(q, candidates):
            cand = as_slots(cand, "candidates")
            res = np.full(cand.shape[0], -np.inf, dtype=np.float32)
            rows = self._live_rows_of(cand)
            ok = rows >= 0
            if ok.any():
                res[ok] = self._scores(qi[None, :], self._vecs.take(rows[ok]))[0]
                res[~np.isfinite(res)] = -np.inf   # damaged vectors only (see the module doc)
            out.append(res)
        return out

    def _flat_kernel(self) -> bool:
        """Whether this store's searches of a few queries can scan its vectors in the compiled
        kernels: a ``Flat`` store on the CPU with float32 vectors and numba."""
        return (_kernels.AVAILABLE and self._index is None and self.vector_dtype == "float32"
                and self._gpu() is None)

    @classmethod
    def search_parts(cls, parts: Sequence[FaissStore], queries: Any, k: int, allowed: np.ndarray | None = None,
                     cache: dict | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """:meth:`search` over several ``Flat`` segments of one index as over one store holding
        their rows: one compiled pass over every segment's vectors with one top k (a FAISS
        call and a re-score per segment cost their set-up each, most of a small segment's
        search). The scores are those of the exact re-score of one store's hits. None (the
        caller searches each segment) for other stores, and for batches of ``_FEW_QUERIES``
        queries or more (FAISS's BLAS path per segment is faster there). ``cache``: a dict
        the caller keeps across calls on the same segments."""
        view = _FlatView.of(parts, cache)
        if view is None:
            return None
        q = as_matrix(queries, view.dim)
        k = check_k(k)
        if q.shape[0] >= _FEW_QUERIES:
            return None
        allowed = check_allowed(allowed, view.max_slot + 1)
        if not view.vecs:   # no rows at all
            return empty_results(q.shape[0], k)
        return _kernels.flat_top_k(view.vecs, view.slots, view.slot_off, view.alive, view.every, allowed, q,
                                   view.l2, k)

    @classmethod
    def score_parts(cls, parts: Sequence[FaissStore], queries: Any, candidates: list[np.ndarray],
                    cache: dict | None = None) -> list[np.ndarray] | None:
        """:meth:`score` over several ``Flat`` segments of one index (each slot found in the
        segment holding it alive, its score as :meth:`search_parts` gives it); None for other stores."""
        view = _FlatView.of(parts, cache)
        if view is None:
            return None
        q = as_matrix(queries, view.dim)
        if len(candidates) != q.shape[0]:
            raise ValueError(f"got {q.shape[0]} queries but {len(candidates)} candidate lists")
        if not view.vecs:   # no rows at all
            return [np.full(len(as_slots(c, "candidates")), -np.inf, dtype=np.float32) for c in candidates]
        keys, krows, n_keys, alive, offs = view.locate_args
        return [_kernels.flat_scores(view.vecs, view.start, qi,
                                     _kernels.locate(keys, krows, n_keys, alive, offs, as_slots(c, "candidates")),
                                     view.l2)
                for qi, c in zip(q, candidates)]

    def config(self) -> dict:
        """Settings persisted with the index; ``FaissStore(**config())`` rebuilds an empty store."""
        return {
            "dim": self.dim, "factory": self.factory, "metric": self.metric,
            "nprobe": self.nprobe, "ef_search": self.ef_search,
            "ef_construction": self.ef_construction, "use_gpu": self.use_gpu,
            "vector_dtype": self.vector_dtype, "min_train": self.min_train,
            "exact_below": self.exact_below, "refine_factor": self.refine_factor,
        }

    def empty_like(self) -> Self:
        """An empty store with this one's settings and trained state (the trained FAISS
        index, emptied): a new segment codes vectors as this one does."""
        new = type(self)(**self.config())
        if self._index is not None and self._needs_training and self._index.is_trained:
            index = faiss.clone_index(self._index)
            index.reset()
            new._index = index
        return new

    @classmethod
    def merge(cls, parts: Sequence[FaissStore]) -> Self:
        """One in-memory store holding the live rows of ``parts`` (same settings, disjoint
        slots), rows in part order. Kept vectors are copied as stored; FAISS codes are
        copied where the parts share a trained state, else the index is rebuilt from the
        kept vectors (see the module doc)."""
        parts = list(parts)
        if not parts or not all(isinstance(p, FaissStore) for p in parts):
            raise TypeError(f"merge takes a non-empty sequence of FaissStore, got {parts!r}")
        cfg = parts[0].config()
        for p in parts[1:]:
            if p.config() != cfg:
                raise ValueError(f"cannot merge stores of different settings: {p.config()} vs {cfg}")
        trained = [p for p in parts if p._index is not None and p._needs_training and p._index.is_trained]
        out = (trained[0] if trained else parts[0]).empty_like()
        keeps = [np.flatnonzero(p._live[: p._n_rows]) for p in parts]
        slots = np.concatenate([p._row_slot[keep] for p, keep in zip(parts, keeps)])
        if np.unique(slots).shape[0] != slots.shape[0]:
            raise ValueError("the parts hold a slot in common; merge needs disjoint slots")
        for p, keep in zip(parts, keeps):
            for s in range(0, keep.shape[0], _BLOCK_ROWS):
                out._vecs.append(p._vecs.take(keep[s : s + _BLOCK_ROWS]))
        n = slots.shape[0]
        out._row_slot = slots
        out._live = np.ones(n, dtype=bool)
        out._n_rows = out._n_live = n
        out._max_slot = int(slots.max()) if n else -1
        out._slots = SlotMap(slots, np.arange(n))
        if out._index is not None:
            state = _trained_state(out._index) if trained else None
            if not (trained and all(p._ready and _trained_state(p._index) == state for p in parts)
                    and _copy_codes(out._index, [p._index for p in parts], keeps, n)):
                if out._index.ntotal:
                    out._index.reset()
                if out._index.is_trained:
                    out._add_to_index(out._index, 0, n)
                elif n >= out.min_train:
                    out._train_and_fill()
        out._ready_cache = None
        return out

    def save(self, directory: Path, tag: str) -> dict[str, str]:
        """Write NEW files ``{tag}.faiss.*`` into ``directory``; return ``{role: filename}``
        (``vectors``, ``rows``, ``live``, and ``index`` except for Flat)."""
        directory = Path(directory)
        dead = self._n_rows - self._n_live
        if dead and (self._index is None or not self._ready or dead * 4 >= self._n_rows):
            self._compact_rows()
        n = self._n_rows
        files = {
            "vectors": write_npy_blocks(
                directory, f"{tag}.faiss.vectors.npy", (n, self.dim), self.vector_dtype,
                (blk for _, blk in self._vecs.blocks(_BLOCK_ROWS)),
            ),
            "rows": write_npy(directory, f"{tag}.faiss.rows.npy", self._row_slot[:n]),
            "live": write_npy(directory, f"{tag}.faiss.live.npy", self._live[:n]),
        }
        if self._index is not None:
            files["index"] = new_file(
                directory, f"{tag}.faiss.index", lambda p: faiss.write_index(self._index, str(p))
            )
        return files

    @classmethod
    def load(cls, directory: Path, files: dict[str, str], config: dict, *,
             slot_limit: int | None = None) -> Self:
        """Open a saved store: vectors memory-mapped (read-only), a FAISS index (not Flat) read
        into memory. Structure is checked, the vectors are not read (see the module doc);
        ``slot_limit``: slots in the files must be below it (the engine's next slot), else
        ``IndexFormatError``. An ``index`` file of a Flat store saved before is ignored."""
        try:
            store = cls(**config)
        except (TypeError, ValueError) as exc:
            raise IndexFormatError(f"bad FaissStore config {config!r}: {exc}") from exc
        directory = Path(directory)
        vecs = load_array(directory, files, "vectors", kinds="f", ndim=2, mmap=True, shape=(None, store.dim))
        if vecs.dtype != np.dtype(store.vector_dtype):
            raise IndexFormatError(f"{files['vectors']} holds {vecs.dtype} vectors, expected {store.vector_dtype}")
        rows = np.array(load_array(directory, files, "rows", kinds="iu", ndim=1)).astype(np.int64)
        # A bool .npy may hold any byte after damage: nonzero is live.
        live = np.array(load_array(directory, files, "live", kinds="b", ndim=1)).view(np.uint8) != 0
        n = rows.shape[0]
        if vecs.shape[0] != n or live.shape[0] != n:
            raise IndexFormatError(f"{files['vectors']} ({vecs.shape[0]} rows), {files['rows']} ({n}) and "
                                   f"{files['live']} ({live.shape[0]}) disagree")
        limit = _MAX_SLOT if slot_limit is None else min(int(slot_limit), _MAX_SLOT)
        if n and (rows.min() < 0 or rows.max() >= limit):
            raise IndexFormatError(f"{files['rows']} holds slots outside [0, {limit}): "
                                   f"{int(rows.min())}..{int(rows.max())}")
        kept = rows[live]
        # rows are written in slot order: one pass proves them distinct; otherwise sort
        if not (kept.size < 2 or bool(np.all(kept[1:] > kept[:-1]))) and np.unique(kept).shape[0] != kept.shape[0]:
            raise IndexFormatError(f"{files['rows']} holds a live slot twice")
        if store._index is not None:
            store._index = store._read_index(directory, files, n)
        store._vecs = AppendableArray(store.dim, store.vector_dtype, base=vecs)
        store._kernel_views = None
        store._ready_cache = None
        store._row_slot = rows
        store._live = live
        store._n_rows = n
        store._n_live = int(live.sum())
        store._max_slot = int(rows.max()) if n else -1
        store._slots = SlotMap(rows[live], np.flatnonzero(live))
        return store

    def _read_index(self, directory: Path, files: dict[str, str], n: int) -> Any:
        """The saved FAISS index, checked against this store (type, dimension, metric, size)
        and, where a damaged one could make FAISS read out of bounds, inside: IVF lists and
        ids, HNSW links and levels, flat codes."""
        name = files.get("index")
        if name is None or not (directory / name).is_file():
            raise IndexFormatError(f"missing FAISS index file in {files!r}")
        _precheck_sizes(directory / name)
        try:
            index = faiss.read_index(str(directory / name))
        except (RuntimeError, MemoryError, ValueError) as exc:
            raise IndexFormatError(f"cannot read FAISS index {name}: {exc}") from exc
        fresh = self._new_index()
        chain, want = _chain(index), _chain(fresh)
        if [type(i) for i in chain] != [type(i) for i in want] or any(
            i.d != j.d or i.metric_type != j.metric_type for i, j in zip(chain, want)
        ):
            raise IndexFormatError(f"FAISS index {name} is a {[type(i).__name__ for i in chain]} of d={index.d}, "
                                   f"expected {[type(i).__name__ for i in want]} of d={self.dim} for {self.factory!r}")
        trained = bool(index.is_trained)
        if (not trained and (not self._needs_training or index.ntotal != 0)) or (trained and index.ntotal != n):
            raise IndexFormatError(f"FAISS index {name} (trained: {trained}, ntotal={index.ntotal}) does not "
                                   f"match {n} rows")
        try:
            _check_inside(index, chain, n)
        except (ValueError, TypeError) as exc:
            raise IndexFormatError(f"FAISS index {name}: {exc}") from exc
        return index

    # ------------------------------------------------------------------ search internals

    def _norms(self) -> np.ndarray:
        """``|v|^2`` of every row (l2 brute force), computed once per row, on first use."""
        have = self._sq_norms.shape[0]
        if have < self._n_rows:
            parts = [self._sq_norms]
            for s in range(have, self._n_rows, _BLOCK_ROWS):
                v = widen(self._vecs.slice(s, min(s + _BLOCK_ROWS, self._n_rows)))
                parts.append(np.einsum("ij,ij->i", v, v))
            self._sq_norms = np.concatenate(parts)
        return self._sq_norms

    def _scores(self, q: np.ndarray, vecs: np.ndarray, sq: np.ndarray | None = None) -> np.ndarray:
        """Score matrix ``(nq, n)`` of float32 queries against stored vectors (``sq``: their
        squared norms, when known)."""
        v = widen(vecs)
        ip = q @ v.T
        if self.metric == "ip":
            return ip
        if sq is None:
            sq = np.einsum("ij,ij->i", v, v)
        return 2.0 * ip - (q * q).sum(1)[:, None] - sq[None, :]

    def _top_block(self, sc: np.ndarray, slots: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``topk`` of one block of scores; +inf (only damaged vectors give one) counts as absent."""
        got = topk(sc, slots, k)
        if k and np.isposinf(got[0][:, 0]).any():
            sc[np.isposinf(sc)] = -np.inf
            got = topk(sc, slots, k)
        return got

    def _brute(self, q: np.ndarray, k: int, rowmask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the stored vectors (rows outside ``rowmask`` excluded)."""
        best = empty_results(q.shape[0], k)
        n = self._n_rows
        sq = self._norms() if self.metric == "l2" else None
        if rowmask is not None and rowmask.sum() * 8 < n:
            # A selective filter: gather only the allowed rows.
            rows = np.flatnonzero(rowmask)
            for s in range(0, rows.shape[0], _BLOCK_ROWS):
                r = rows[s : s + _BLOCK_ROWS]
                sc = self._scores(q, self._vecs.take(r), None if sq is None else sq[r])
                best = merge_topk(best, self._top_block(sc, self._row_slot[r], k), k)
            return best
        for start, blk in self._vecs.blocks(_BLOCK_ROWS):
            stop = start + blk.shape[0]
            sc = self._scores(q, blk, None if sq is None else sq[start:stop])
            if rowmask is not None:
                sc[:, ~rowmask[start:stop]] = -np.inf
            got = self._top_block(sc, self._row_slot[start:stop], k)
            best = got if start == 0 else merge_topk(best, got, k)
        return best

    def _ann(
        self, q: np.ndarray, k: int, rowmask: np.ndarray | None, n_ok: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search the FAISS index (or a Flat store's GPU copy), re-score the hits exactly from
        the kept vectors, fall back to brute force per query."""
        kf = min(n_ok, max(k * self.refine_factor, k + _TIE_MARGIN))
        gpu = self._gpu() if rowmask is None and kf <= 2048 else None
        try:
            if gpu is not None:
                _, rows = gpu.search(q, kf)
            elif self._index is None:
                with _few_threads(q.shape[0]):
                    rows = self._flat_knn(q, kf, rowmask)
            else:
                bitmap = None if rowmask is None else np.packbits(rowmask, bitorder="little")
                params, _keep = self._params(bitmap, kf)
                with _few_threads(q.shape[0]):
                    _, rows = self._index.search(q, kf, params=params)
        except RuntimeError as exc:  # an index type without SearchParameters support
            logger.debug("FAISS search failed on %r, using brute force: %s", self.factory, exc)
            return self._brute(q, k, rowmask)
        need = min(k, n_ok)
        if _kernels.AVAILABLE and self._vecs.dtype == np.float32:
            rows = np.asarray(rows, dtype=np.int64)
            rows.flags.writeable = False   # FAISS's fresh output: the kernel then takes it as it is
            # One compiled pass instead of _rescore's ~30 numpy calls, which were most of the
            # per-query overhead against raw FAISS (docs/CHANGELOG-performance.md, change 12).
            base, tail, row_slot = self._views()
            out_s, out_i, lowest, _ = _kernels.rescore_top_k(rows, base, tail, q, row_slot, rowmask,
                                                             self.metric == "l2", k, need)
        else:
            out_s, out_i, lowest = self._rescore(q, rows, rowmask, k)
        # Fewer than min(k, n_ok) hits (topk pads at the end), or a score that is not finite
        # (damaged vectors, which brute force counts absent) -> brute force for that query.
        redo = (out_i[:, need - 1] < 0) | ((out_i >= 0) & ~np.isfinite(out_s)).any(axis=1)
        if self._index is None and kf < n_ok:
            # Flat on the GPU: the k-th score ties with the last fetched one, so a smaller
            # slot with the same score may lie past the fetched hits.
            kth = out_s[:, k - 1]
            redo |= kth - lowest <= _kernels.TIE_RTOL * (1.0 + np.abs(kth))
        if redo.any():
            r = np.flatnonzero(redo)
            out_s[r], out_i[r] = self._brute(q[r], k, rowmask)
        return out_s, out_i

    def _knn_vectors(self) -> np.ndarray | None:
        """Flat: the kept vectors as one float32 array (FAISS's exact k-NN kernel then searches
        them in place), or None (float16, or rows split between a loaded file and later adds:
        numpy brute force)."""
        if self.vector_dtype != "float32":
            return None
        base, tail = self._vecs.parts()
        if tail.shape[0] == 0:
            return base
        return tail if base.shape[0] == 0 else None

    def _flat_knn(self, q: np.ndarray, kf: int, rowmask: np.ndarray | None) -> np.ndarray:
        """Rows of the ``kf`` best kept vectors per query by FAISS's exact k-NN kernel (what
        ``IndexFlat.search`` runs) over the vectors in place, memory-mapped or not."""
        xb = self._knn_vectors()
        nq = q.shape[0]
        dist = np.empty((nq, kf), dtype=np.float32)
        rows = np.empty((nq, kf), dtype=np.int64)
        bitmap = None if rowmask is None else np.packbits(rowmask, bitorder="little")
        sel = None if bitmap is None else faiss.IDSelectorBitmap(self._n_rows, faiss.swig_ptr(bitmap))
        args = (faiss.swig_ptr(q), faiss.swig_ptr(xb), self.dim, nq, xb.shape[0], kf,
                faiss.swig_ptr(dist), faiss.swig_ptr(rows))
        if self.metric == "ip":
            faiss.knn_inner_product(*args, sel)
        else:
            faiss.knn_L2sqr(*args, None, sel)
        return rows

    def _views(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(base, tail)`` rows and ``row -> slot``, read-only, as the compiled re-score takes
        them (made once per change of the rows, not per search)."""
        if self._kernel_views is None:
            base, tail = self._vecs.parts()
            self._kernel_views = (_kernels.readonly(base, np.float32), _kernels.readonly(tail, np.float32),
                                  _kernels.readonly(self._row_slot, np.int64))
        return self._kernel_views

    def _rescore(self, q: np.ndarray, rows: np.ndarray, rowmask: np.ndarray | None,
                 k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact top-``k`` ``(scores, slots, lowest kept score)`` of the FAISS hits ``rows``
        (numpy; :func:`hybridrag.stores._kernels.rescore_top_k` is the compiled equivalent)."""
        nq, kf = rows.shape
        valid = (rows >= 0) & (rows < self._n_rows)
        safe = np.where(valid, rows, 0)
        if rowmask is not None:  # live rows passing the filter; without one every row is live
            valid &= rowmask[safe]
        sc = np.empty(rows.shape, dtype=np.float32)
        for s in range(0, nq, _QUERY_BLOCK):
            e = min(s + _QUERY_BLOCK, nq)
            v = self._vecs.take(safe[s:e].ravel()).astype(np.float32, copy=False).reshape(e - s, kf, self.dim)
            ip = np.matmul(v, q[s:e, :, None])[:, :, 0]
            if self.metric == "l2":
                ip = 2.0 * ip - (q[s:e] ** 2).sum(1)[:, None] - (v * v).sum(2)
            sc[s:e] = ip
        sc[~valid] = -np.inf
        out_s, out_i = topk(sc, np.where(valid, self._row_slot[safe], -1), k)
        return out_s, out_i, np.where(valid, sc, np.inf).min(1)


class _FlatView:
    """``Flat`` CPU float32 segments of one index (``parts``) as the compiled scans take them:
    every part's vectors in pieces (each part's rows in one or two arrays), their row -> slot
    maps, live rows and slot maps, as typed lists. Kept in the caller's cache and used while no
    part changed (``key``: each part's row views, remade by every add, and its live count)."""

    __slots__ = ("key", "dim", "l2", "max_slot", "vecs", "slots", "slot_off", "alive", "every", "start",
                 "locate_args")

    @staticmethod
    def key_of(parts: Sequence[FaissStore]) -> list:
        return [(p, p._kernel_views, p._n_live) for p in parts]

    def current(self, parts: Sequence[FaissStore]) -> bool:
        """Whether ``parts`` are the parts this view was made of, unchanged since."""
        key = self.key
        return len(key) == len(parts) and all(
            a is p and v is p._kernel_views and n == p._n_live for (a, v, n), p in zip(key, parts))

    @classmethod
    def of(cls, parts: Sequence[FaissStore], cache: dict | None) -> _FlatView | None:
        """The view of ``parts`` from ``cache`` (a new one when a part changed); None when a
        part is not such a store or the metrics differ."""
        got = None if cache is None else cache.get("flat_view")
        if got is not None and got.current(parts):
            return got
        first = parts[0] if parts else None
        if first is None or not all(p._flat_kernel() and p.metric == first.metric for p in parts):
            return None
        got = cls(parts, {} if cache is None else cache)
        if cache is not None:
            cache["flat_view"] = got
        return got

    def __init__(self, parts: Sequence[FaissStore], cache: dict) -> None:
        first = parts[0]
        self.dim, self.l2 = first.dim, first.metric == "l2"
        self.max_slot = max(p._max_slot for p in parts)
        pieces, owner, offset = [], [], 0
        for p in parts:
            base, tail, row_slot = p._views()
            for v, start in ((base, 0), (tail, base.shape[0])):
                if v.shape[0]:
                    pieces.append((v, offset + start, row_slot, start))
                    owner.append(p)
            offset += p._n_rows
        self.key = self.key_of(parts)   # (after _views(): an add leaves them to be remade)
        al = _kernels.array_list
        self.vecs = al(cache, "vecs", [x[0] for x in pieces], np.float32) if pieces else None
        self.slots = al(cache, "slots", [x[2] for x in pieces], np.int64) if pieces else None
        self.alive = al(cache, "alive", [p._live for p in owner], np.bool_) if pieces else None
        self.slot_off = np.array([x[3] for x in pieces], dtype=np.int64)
        self.every = np.array([p._n_live == p._n_rows for p in owner], dtype=bool)
        self.start = np.array([x[1] for x in pieces], dtype=np.int64)
        self.locate_args = (al(cache, "keys", [p._slots.keys for p in parts], np.int64),
                            al(cache, "krows", [p._slots.rows for p in parts], np.int64),
                            np.array([p._slots.n for p in parts], dtype=np.int64),
                            al(cache, "live", [p._live for p in parts], np.bool_),
                            np.cumsum([0] + [p._n_rows for p in parts[:-1]]).astype(np.int64))


def _precheck_sizes(path: Path) -> None:
    """Walk the array sizes of an ``IndexHNSWFlat`` file (the HNSW factories' index) before
    FAISS reads it: FAISS allocates (and zero-fills) each array as its size field says, up to
    2**40 elements, before it finds the file too short, so one damaged size field cost
    seconds and gigabytes. Other index types are read as they are (their sizes are checked
    by FAISS and then by :func:`_check_inside`)."""
    with open(path, "rb") as fh:
        data = fh.read(4)
        if data != b"IHNf":
            return
        size = os.fstat(fh.fileno()).st_size
        pos = 4

        def take(fmt: str) -> int:
            nonlocal pos
            fh.seek(pos)
            raw = fh.read(struct.calcsize(fmt))
            if len(raw) != struct.calcsize(fmt):
                raise IndexFormatError(f"FAISS index {path.name} ends at byte {pos}")
            pos += len(raw)
            return struct.unpack("<" + fmt, raw)[0]

        def header() -> None:
            nonlocal pos
            pos += 4 + 8 + 16 + 1   # d, ntotal, two unused fields, is_trained
            if take("i") > 1:       # metric type; some carry a float argument
                pos += 4

        def array(item: int) -> None:
            nonlocal pos
            n = take("Q")
            if n * item > size - pos:
                raise IndexFormatError(f"FAISS index {path.name}: an array of {n} items at byte {pos - 8} "
                                       f"runs past the end of the file ({size} bytes)")
            pos += n * item

        header()
        for item in (8, 4, 4, 8, 4):   # assign_probas, cum_nneighbor_per_level, levels, offsets, neighbors
            array(item)
        pos += 20                      # entry_point, max_level, efConstruction, efSearch, unused
        fh.seek(pos)
        if fh.read(4) not in (b"IxFI", b"IxF2"):
            raise IndexFormatError(f"FAISS index {path.name}: HNSW storage at byte {pos} is not a flat index")
        pos += 4
        header()
        array(4)
        if pos != size:
            raise IndexFormatError(f"FAISS index {path.name} has {size - pos} bytes after its end")


def _chain(index: Any) -> list[Any]:
    """``index`` and the indexes its ``IndexPreTransform`` wrappers hold, outermost first
    (downcast to their concrete types)."""
    out = [faiss.downcast_index(index)]
    while isinstance(out[-1], faiss.IndexPreTransform):
        out.append(faiss.downcast_index(out[-1].index))
    return out


def _size(v: Any) -> int:
    return int(v.size())


def _check_inside(index: Any, chain: list[Any], n: int) -> None:
    """Raise ``ValueError`` where a read index could make FAISS read out of bounds: sizes of
    transforms, codebooks, codes, IVF lists and ids, HNSW links (``n`` rows)."""
    for outer in chain[:-1]:
        d = outer.d
        for t in range(outer.chain.size()):
            vt = faiss.downcast_VectorTransform(outer.chain.at(t))
            if vt.d_in != d:
                raise ValueError(f"transform {t} takes d={vt.d_in}, expected {d}")
            if isinstance(vt, faiss.LinearTransform) and (
                    _size(vt.A) != vt.d_in * vt.d_out or _size(vt.b) not in (0, vt.d_out)):
                raise ValueError(f"transform {t} has {_size(vt.A)} matrix values for {vt.d_in}x{vt.d_out}")
            d = vt.d_out
        if d != chain[-1].d or outer.ntotal != chain[-1].ntotal:
            raise ValueError(f"transforms end at d={d}, index d={chain[-1].d}")
    _check_one(chain[-1], n)


def _check_one(idx: Any, n: int) -> None:
    idx = faiss.downcast_index(idx)
    if idx.ntotal != n:
        raise ValueError(f"{type(idx).__name__} holds {idx.ntotal} vectors, expected {n}")
    pq = getattr(idx, "pq", None)
    if pq is not None and (pq.ksub != 1 << pq.nbits or pq.M * pq.dsub != pq.d
                           or _size(pq.centroids) != pq.d * pq.ksub):
        raise ValueError(f"PQ codebook of {_size(pq.centroids)} values for M={pq.M} nbits={pq.nbits} d={pq.d}")
    if isinstance(idx, faiss.IndexIVF):
        q = faiss.downcast_index(idx.quantizer)
        if q.d != idx.d:
            raise ValueError(f"coarse quantiser d={q.d}, index d={idx.d}")
        if idx.is_trained:
            _check_one(q, idx.nlist)
        inv = faiss.downcast_InvertedLists(idx.invlists)
        if not isinstance(inv, faiss.ArrayInvertedLists):
            raise TypeError(f"inverted lists of type {type(inv).__name__}, expected ArrayInvertedLists")
        if inv.nlist != idx.nlist or inv.code_size != idx.code_size:
            raise ValueError(f"inverted lists ({inv.nlist} lists, code size {inv.code_size}) do not match the "
                             f"index ({idx.nlist}, {idx.code_size})")
        ids = [faiss.rev_swig_ptr(inv.get_ids(li), inv.list_size(li)).copy()
               for li in range(inv.nlist) if inv.list_size(li)]
        ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        if ids.shape[0] != n or (n and (ids.min() < 0 or ids.max() >= n
                                        or np.bincount(ids, minlength=n).max() != 1)):
            raise ValueError(f"inverted lists hold {ids.shape[0]} ids, expected rows 0..{n - 1} once each")
        return
    if hasattr(idx, "hnsw"):
        _check_hnsw(idx.hnsw, n)
        _check_one(idx.storage, n)
        return
    if isinstance(idx, faiss.IndexFlatCodes) and _size(idx.codes) != n * idx.code_size:
        raise ValueError(f"{_size(idx.codes)} code bytes for {n} vectors of {idx.code_size} bytes")


def _check_hnsw(h: Any, n: int) -> None:
    """HNSW links: every node's level and link range, every link to a node on that level."""
    levels = faiss.vector_to_array(h.levels).astype(np.int64)
    offsets = faiss.vector_to_array(h.offsets).astype(np.int64)
    links = faiss.vector_to_array(h.neighbors).astype(np.int64)
    cum = faiss.vector_to_array(h.cum_nneighbor_per_level).astype(np.int64)
    if levels.shape != (n,) or offsets.shape != (n + 1,) or cum.shape[0] < 2 or cum[0] != 0 \
            or (np.diff(cum) < 0).any():
        raise ValueError(f"HNSW levels/offsets of {levels.shape[0]}/{offsets.shape[0]} nodes, expected {n}")
    if n == 0:
        if h.entry_point != -1 or links.shape[0] != 0:
            raise ValueError("an empty HNSW graph has an entry point or links")
        return
    if levels.min() < 1 or levels.max() >= cum.shape[0] or offsets[0] != 0 \
            or (np.diff(offsets) != cum[levels]).any() or offsets[-1] != links.shape[0]:
        raise ValueError("HNSW levels and link offsets disagree")
    if not 0 <= h.entry_point < n or h.max_level != levels[h.entry_point] - 1:
        raise ValueError(f"HNSW entry point {h.entry_point} (max level {h.max_level}) is not a top node")
    if links.min() < -1 or links.max() >= n:
        raise ValueError(f"HNSW links point outside 0..{n - 1}")
    # A link listed at level l must reach a node that has level l (else FAISS reads its
    # links past its range).
    owner = np.repeat(np.arange(n), np.diff(offsets))
    level = np.searchsorted(cum, np.arange(links.shape[0]) - offsets[owner], side="right") - 1
    ok = links >= 0
    if (levels[links[ok]] <= level[ok]).any():
        raise ValueError("HNSW links reach nodes below their level")


def _trained_state(index: Any) -> bytes:
    """The trained part of an index (quantisers, codebooks, transforms) as bytes: the index
    emptied and serialised."""
    empty = faiss.clone_index(index)
    empty.reset()
    return faiss.serialize_index(empty).tobytes()


def _copy_codes(dst: Any, srcs: list[Any], keeps: list[np.ndarray], n: int) -> bool:
    """Fill the empty trained ``dst`` with the codes of rows ``keeps[i]`` of ``srcs[i]`` (same
    trained state), renumbered in order; False (``dst`` untouched) for an index whose codes
    this cannot copy (HNSW, other inverted-list kinds)."""
    inner = _chain(dst)[-1]
    if isinstance(inner, faiss.IndexIVF):
        out = faiss.downcast_InvertedLists(inner.invlists)
        ins = [faiss.downcast_InvertedLists(faiss.extract_index_ivf(s).invlists) for s in srcs]
        if not isinstance(out, faiss.ArrayInvertedLists) or not all(isinstance(i, faiss.ArrayInvertedLists) for i in ins):
            return False
        cs, base = inner.code_size, 0
        for inv, keep, src in zip(ins, keeps, srcs):
            renum = np.full(src.ntotal, -1, dtype=np.int64)
            renum[keep] = base + np.arange(keep.shape[0])
            base += keep.shape[0]
            for li in range(inv.nlist):
                size = inv.list_size(li)
                if size == 0:
                    continue
                ids = renum[faiss.rev_swig_ptr(inv.get_ids(li), size)]
                codes = faiss.rev_swig_ptr(inv.get_codes(li), size * cs).reshape(size, cs)
                ok = ids >= 0
                if ok.any():
                    new_ids = np.ascontiguousarray(ids[ok])
                    new_codes = np.ascontiguousarray(codes[ok])
                    out.add_entries(li, new_ids.shape[0], faiss.swig_ptr(new_ids), faiss.swig_ptr(new_codes))
    elif isinstance(inner, faiss.IndexFlatCodes) and not hasattr(inner, "hnsw"):
        cs = inner.code_size
        codes = [faiss.vector_to_array(_chain(s)[-1].codes).reshape(-1, cs)[keep] for s, keep in zip(srcs, keeps)]
        all_codes = np.ascontiguousarray(np.concatenate(codes)) if codes else np.zeros((0, cs), np.uint8)
        inner.add_sa_codes(all_codes)
    else:
        return False
    for idx in _chain(dst):
        idx.ntotal = n
    return True
