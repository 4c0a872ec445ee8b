"""Dense vectors in FAISS: exact (``Flat``), HNSW, IVF/IVF-PQ, any FAISS factory string.

Design
------
* The store keeps the float vectors themselves (float32, or float16 with
  ``vector_dtype="float16"``) next to the FAISS index. They give exact ``score()`` of
  candidates, exact re-scoring of ANN hits, brute-force search while a trained index
  is still buffering, and rebuilds.
* FAISS ids are internal *row* numbers; ``row -> slot`` and ``slot -> row`` arrays map
  them to engine slots. Removal is a tombstone (the row's live bit is cleared) and
  every search on a store with tombstones or an ``allowed`` mask passes an
  ``IDSelectorBitmap`` in FAISS ``SearchParameters``, so removed or disallowed slots
  are never returned and top-k is taken after the filter. This works the same for
  Flat, IVF and HNSW (which cannot remove). Tombstoned rows are dropped by a rebuild
  when more than half the rows are dead, and at ``save`` (always for Flat, else when
  at least a quarter are dead).
* Indexes that need training (IVF, PQ, SQ) buffer vectors until ``min_train`` live
  vectors exist (default ``max(256, 39 * max(nlist, ksub))``, FAISS's own guidance);
  until then search is exact brute force over the buffered vectors. They are then
  trained once and every row is added.
* A query falls back to exact brute force when few rows pass the filter
  (``<= exact_below``, or under 2% of the rows), or when the ANN index returned fewer
  than ``min(k, rows allowed)`` hits, so ``k`` hits come back whenever ``k`` exist.
  Exact (``Flat``) search also falls back per query when a tie at the k-th score
  might reach past the fetched hits, so ties always go to the smaller slot.
* Scores: ``metric="ip"`` gives the inner product; ``metric="l2"`` gives the negative
  squared L2 distance (so larger is better, as everywhere in hybridrag). Search
  scores equal ``score()`` to float32 rounding: ANN hits are re-scored from the stored
  vectors (with numba, float32 vectors are re-scored and ranked in one compiled pass,
  ``_kernels.rescore_top_k``, whose sums run in another order than numpy's), except
  where FAISS's own distances are already exact over the same float32 vectors (``Flat``
  and ``HNSW<M>`` with ``vector_dtype="float32"``, searched on the CPU with numba): those
  are taken as they are (``_kernels.faiss_top_k``: rows to slots, ties by slot).
* GPU: with ``use_gpu="auto"`` (or ``True``) and ``faiss.get_num_gpus() > 0`` the
  index is copied with ``index_cpu_to_all_gpus`` for unfiltered searches; filtered
  searches and index types the GPU build cannot hold run on the CPU index.

Tests: ``tests/test_faiss_store.py``, ``tests/test_store_conformance.py``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from hybridrag.errors import ConfigError, IndexFormatError
from hybridrag.stores import _kernels
from hybridrag.stores.base import (
    AppendableArray,
    Self,
    as_matrix,
    as_slots,
    check_allowed,
    check_k,
    empty_results,
    load_npy,
    merge_topk,
    new_file,
    topk,
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
_GPU_COUNT: int | None = None  # faiss.get_num_gpus(), once per process (FaissStore._num_gpus)


def _grow(arr: np.ndarray, n: int, fill: Any) -> np.ndarray:
    """Return ``arr`` with length >= ``n`` (capacity doubling, new entries = ``fill``)."""
    if n <= arr.shape[0]:
        return arr
    cap = max(n, 2 * arr.shape[0], 1024)
    out = np.full(cap, fill, dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    return out


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

        self._index = self._new_index()
        info = self._inspect(self._index)
        self._is_flat = info["flat"]
        # The store's vectors are the float32 ones FAISS holds: its distances are the scores.
        self._faiss_scores = info["exact"] and vector_dtype == "float32"
        self._needs_training = not self._index.is_trained
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
        self._slot_row = np.zeros(0, dtype=np.int64)  # slot -> row, -1 when absent
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
        # _ready, kept between searches (reading it from the SWIG index on every query showed
        # in profile_dense_call.py); None after the index or the rows change.
        self._ready_cache: bool | None = None

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
        top = faiss.downcast_index(index)
        return {
            "flat": isinstance(inner, faiss.IndexFlat),
            # FAISS's distances are exact float32 ones over the vectors as added (no transform,
            # no codes): its top hits need no re-scoring.
            "exact": isinstance(top, (faiss.IndexFlat, faiss.IndexHNSWFlat)),
            "nlist": nlist,
            "ksub": int(pq.ksub) if pq is not None else 0,
        }

    @property
    def _ready(self) -> bool:
        """True when every row is in the FAISS index (trained, or needs no training)."""
        if self._ready_cache is None:
            self._ready_cache = bool(self._index.is_trained) and self._index.ntotal == self._n_rows
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
            self._slot_row[:] = -1
            self._slot_row[self._row_slot] = np.arange(self._n_rows)
        if self._index.ntotal != self._n_rows or not self._index.is_trained:
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
                gpu = faiss.index_cpu_to_all_gpus(self._index)
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
        known = slots[slots < self._slot_row.shape[0]]
        live = known[self._slot_row[known] >= 0]
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
        self._slot_row = _grow(self._slot_row, int(slots.max()) + 1, -1)
        self._slot_row[slots] = np.arange(start, stop)
        self._n_rows = stop
        self._n_live += n
        self._max_slot = max(self._max_slot, int(slots.max()))
        self._gpu_index = None
        if self._index.is_trained:
            self._index.add(vecs)
        elif self._n_live >= self.min_train:
            self._train_and_fill()
        self._ready_cache = None

    def remove(self, slots: np.ndarray) -> None:
        """Tombstone ``slots``; unknown or already removed slots are ignored."""
        slots = as_slots(slots)
        slots = np.unique(slots[slots < self._slot_row.shape[0]])
        rows = self._slot_row[slots]
        rows = rows[rows >= 0]
        if rows.shape[0] == 0:
            return
        self._live[rows] = False
        self._slot_row[self._row_slot[rows]] = -1
        self._n_live -= rows.shape[0]
        self._gpu_index = None
        dead = self._n_rows - self._n_live
        if dead > max(1024, self._n_live):
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
        ):
            return self._brute(q, k, rowmask)
        return self._ann(q, k, rowmask, n_ok)

    def score(self, queries: Any, candidates: list[np.ndarray]) -> list[np.ndarray]:
        """Exact scores of ``candidates[i]`` (slots) for query ``i``; ``-inf`` for absent slots."""
        q = as_matrix(queries, self.dim)
        if len(candidates) != q.shape[0]:
            raise ValueError(f"got {q.shape[0]} queries but {len(candidates)} candidate lists")
        out = []
        for qi, cand in zip(q, candidates):
            cand = as_slots(cand, "candidates")
            res = np.full(cand.shape[0], -np.inf, dtype=np.float32)
            rows = np.full(cand.shape[0], -1, dtype=np.int64)
            inside = cand < self._slot_row.shape[0]
            rows[inside] = self._slot_row[cand[inside]]
            ok = rows >= 0
            if ok.any():
                res[ok] = self._scores(qi[None, :], self._vecs.take(rows[ok]))[0]
            out.append(res)
        return out

    def config(self) -> dict:
        """Settings persisted with the index; ``FaissStore(**config())`` rebuilds an empty store."""
        return {
            "dim": self.dim, "factory": self.factory, "metric": self.metric,
            "nprobe": self.nprobe, "ef_search": self.ef_search,
            "ef_construction": self.ef_construction, "use_gpu": self.use_gpu,
            "vector_dtype": self.vector_dtype, "min_train": self.min_train,
            "exact_below": self.exact_below, "refine_factor": self.refine_factor,
        }

    def save(self, directory: Path, tag: str) -> dict[str, str]:
        """Write NEW files ``{tag}.faiss.*`` into ``directory``; return ``{role: filename}``."""
        directory = Path(directory)
        dead = self._n_rows - self._n_live
        if dead and (self._is_flat or not self._ready or dead * 4 >= self._n_rows):
            self._compact_rows()
        n = self._n_rows
        files = {
            "vectors": write_npy_blocks(
                directory, f"{tag}.faiss.vectors.npy", (n, self.dim), self.vector_dtype,
                (blk for _, blk in self._vecs.blocks(_BLOCK_ROWS)),
            ),
            "rows": write_npy(directory, f"{tag}.faiss.rows.npy", self._row_slot[:n]),
            "live": write_npy(directory, f"{tag}.faiss.live.npy", self._live[:n]),
            "index": new_file(
                directory, f"{tag}.faiss.index", lambda p: faiss.write_index(self._index, str(p))
            ),
        }
        return files

    @classmethod
    def load(cls, directory: Path, files: dict[str, str], config: dict) -> Self:
        """Open a saved store: vectors memory-mapped (read-only), FAISS index read into memory."""
        try:
            store = cls(**config)
        except TypeError as exc:
            raise IndexFormatError(f"bad FaissStore config {config!r}: {exc}") from exc
        directory = Path(directory)
        vecs = load_npy(directory, files, "vectors", mmap=True)
        rows = np.array(load_npy(directory, files, "rows"))
        live = np.array(load_npy(directory, files, "live"))
        if not np.issubdtype(rows.dtype, np.integer) or live.dtype != np.bool_:
            raise IndexFormatError(f"store files have rows dtype {rows.dtype} and live dtype {live.dtype}, "
                                   "expected int64 and bool")
        rows = rows.astype(np.int64)
        if rows.size and (rows.min() < 0 or np.unique(rows[live]).shape[0] != int(live.sum())):
            raise IndexFormatError("store rows hold negative or duplicate live slots")
        if "index" not in files or not (directory / files["index"]).is_file():
            raise IndexFormatError(f"missing FAISS index file in {files!r}")
        try:
            index = faiss.read_index(str(directory / files["index"]))
        except RuntimeError as exc:
            raise IndexFormatError(f"cannot read FAISS index {files['index']}: {exc}") from exc
        n = rows.shape[0]
        if vecs.ndim != 2 or vecs.shape[0] != n or live.shape != (n,):
            raise IndexFormatError(
                f"inconsistent store files: vectors {vecs.shape}, rows {rows.shape}, live {live.shape}"
            )
        if index.d != store.dim or (index.is_trained and index.ntotal != n) or (
            not index.is_trained and index.ntotal != 0
        ):
            raise IndexFormatError(
                f"FAISS index (d={index.d}, ntotal={index.ntotal}) does not match {n} rows of dim {store.dim}"
            )
        store._vecs = AppendableArray(store.dim, store.vector_dtype, base=vecs)
        store._kernel_views = None
        store._index = index
        store._ready_cache = None
        store._row_slot = rows
        store._live = live
        store._n_rows = n
        store._n_live = int(live.sum())
        store._max_slot = int(rows.max()) if n else -1
        store._slot_row = np.full(store._max_slot + 1, -1, dtype=np.int64)
        store._slot_row[rows[live]] = np.flatnonzero(live)
        return store

    # ------------------------------------------------------------------ search internals

    def _scores(self, q: np.ndarray, vecs: np.ndarray) -> np.ndarray:
        """Score matrix ``(nq, n)`` of float32 queries against stored vectors."""
        v = np.asarray(vecs, dtype=np.float32)
        ip = q @ v.T
        if self.metric == "ip":
            return ip
        return 2.0 * ip - (q * q).sum(1)[:, None] - (v * v).sum(1)[None, :]

    def _brute(self, q: np.ndarray, k: int, rowmask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the stored vectors (rows outside ``rowmask`` excluded)."""
        best = empty_results(q.shape[0], k)
        n = self._n_rows
        if rowmask is not None and rowmask.sum() * 8 < n:
            # A selective filter: gather only the allowed rows.
            rows = np.flatnonzero(rowmask)
            for s in range(0, rows.shape[0], _BLOCK_ROWS):
                r = rows[s : s + _BLOCK_ROWS]
                best = merge_topk(best, topk(self._scores(q, self._vecs.take(r)), self._row_slot[r], k), k)
            return best
        for start, blk in self._vecs.blocks(_BLOCK_ROWS):
            stop = min(start + blk.shape[0], n)
            sc = self._scores(q, blk[: stop - start])
            if rowmask is not None:
                sc[:, ~rowmask[start:stop]] = -np.inf
            best = merge_topk(best, topk(sc, self._row_slot[start:stop], k), k)
        return best

    def _ann(
        self, q: np.ndarray, k: int, rowmask: np.ndarray | None, n_ok: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search the FAISS index, re-score hits exactly (or take its distances where they are
        exact), fall back to brute force per query."""
        kf = min(n_ok, max(k * self.refine_factor, k + _TIE_MARGIN))
        bitmap = None if rowmask is None else np.packbits(rowmask, bitorder="little")
        params, _keep = self._params(bitmap, kf)
        gpu = self._gpu() if rowmask is None and kf <= 2048 else None
        try:
            if gpu is not None:
                dist, rows = gpu.search(q, kf)
            else:
                dist, rows = _search(self._index, q, kf, params)
        except RuntimeError as exc:  # an index type without SearchParameters support
            logger.debug("FAISS search failed on %r, using brute force: %s", self.factory, exc)
            return self._brute(q, k, rowmask)
        need = min(k, n_ok)
        if self._faiss_scores and gpu is None and q.shape[0] == 1 and kf >= k:
            got = self._untied_hits(dist, rows, k, self._is_flat and kf < n_ok)
            if got is not None:
                return got
        if self._faiss_scores and gpu is None and _kernels.AVAILABLE:
            # Flat or HNSW-Flat on the CPU: FAISS's distances are the exact scores (to float32
            # rounding, as the re-score's), so only rows -> slots and ties remain to be done;
            # the kernel also picks the queries to redo exactly (the checks below, which cost
            # as much again in numpy with the caches cold after a Flat search).
            out_s, out_i, _, redo_q = _kernels.faiss_top_k(dist, rows, self._views()[2], self.metric == "l2",
                                                           k, need, self._is_flat and kf < n_ok)
            if redo_q.shape[0]:
                out_s[redo_q], out_i[redo_q] = self._brute(q[redo_q], k, rowmask)
            return out_s, out_i
        if _kernels.AVAILABLE and self._vecs.dtype == np.float32:
            rows = np.asarray(rows, dtype=np.int64)
            rows.flags.writeable = False   # FAISS's fresh output: the kernel then takes it as it is
            # One compiled pass instead of _rescore's ~30 numpy calls, which were most of the
            # per-query overhead against raw FAISS (docs/CHANGELOG-performance.md, change 12).
            base, tail, row_slot = self._views()
            out_s, out_i, lowest, short = _kernels.rescore_top_k(rows, base, tail, q, row_slot, rowmask,
                                                                 self.metric == "l2", k, need)
        else:
            out_s, out_i, lowest = self._rescore(q, rows, rowmask, k)
            short = 1   # not counted on this path: check every query below
        # Fewer than min(k, n_ok) hits (topk pads at the end) -> brute force for that query.
        redo = out_i[:, need - 1] < 0 if short else None
        if self._is_flat and kf < n_ok:
            # The k-th score ties with the last fetched one: a smaller slot with the same
            # score may lie past the fetched hits.
            kth = out_s[:, k - 1]
            tie = kth - lowest <= _kernels.TIE_RTOL * (1.0 + np.abs(kth))
            redo = tie if redo is None else redo | tie
        if redo is None:
            return out_s, out_i
        if redo.any():
            r = np.flatnonzero(redo)
            out_s[r], out_i[r] = self._brute(q[r], k, rowmask)
        return out_s, out_i

    def _untied_hits(self, dist: np.ndarray, rows: np.ndarray, k: int,
                     tie_check: bool) -> tuple[np.ndarray, np.ndarray] | None:
        """One query's top-``k`` straight from FAISS's exact, sorted distances (``Flat``,
        ``HNSW..,Flat`` on the CPU), or ``None`` when the general path must decide: fewer than
        ``k`` hits, two fetched scores equal (ties go by slot there), or (``tie_check``) a
        k-th score tied with the last fetched (a smaller slot may lie past the hits). With
        none of those FAISS's order is the engine's and only rows -> slots remain: a few
        Python operations on the k+8 hits cost less than the compiled call with the caches
        cold after the search (engine change 17 in docs/CHANGELOG-performance.md; the
        current overhead: docs/BENCHMARKS.md, section 3)."""
        d = dist[0].tolist()
        if rows[0, k - 1] < 0 or len(set(d)) < len(d):
            return None
        if tie_check and abs(d[k - 1] - d[-1]) <= _kernels.TIE_RTOL * (1.0 + abs(d[k - 1])):
            return None
        top = dist[:, :k]
        return (-top if self.metric == "l2" else top.copy()), self._row_slot[rows[:, :k]]

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


def _search(index: Any, q: np.ndarray, kf: int, params: Any) -> tuple[np.ndarray, np.ndarray]:
    """``index.search(q, kf, params=params)`` through FAISS's C++ entry point: ``q`` is already
    the C-contiguous float32 ``(nq, d)`` array the index takes (``as_matrix``), so the Python
    wrapper's conversions and checks are skipped (engine change 17 in
    docs/CHANGELOG-performance.md; the current overhead: docs/BENCHMARKS.md, section 3)."""
    nq = q.shape[0]
    dist = np.empty((nq, kf), dtype=np.float32)
    rows = np.empty((nq, kf), dtype=np.int64)
    index.search_c(nq, faiss.swig_ptr(q), kf, faiss.swig_ptr(dist), faiss.swig_ptr(rows), params)
    return dist, rows
