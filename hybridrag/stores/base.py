"""The vector-store protocol and the helpers every backend shares.

Stores address rows by an engine-assigned integer *slot* (int64, dense, increasing,
never reused by the engine). Search is batch-first and returns ``(scores, slots)`` of
shape ``(n_queries, k)``, sorted by score descending with ties broken by the smaller
slot, padded with ``-inf`` / ``-1`` where fewer than ``k`` hits exist.
See ``docs/CONTRACTS.md``. Covered by ``tests/test_store_conformance.py``.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import numpy as np

try:  # Python 3.11+
    from typing import Self
except ImportError:  # pragma: no cover - Python 3.10
    from typing_extensions import Self

from hybridrag.errors import IndexFormatError

__all__ = [
    "VectorStore",
    "AppendableArray",
    "as_slots",
    "as_matrix",
    "check_k",
    "check_allowed",
    "empty_results",
    "topk",
    "merge_topk",
    "new_file",
    "write_npy",
    "load_npy",
    "load_array",
    "widen",
    "SlotMap",
]


@runtime_checkable
class VectorStore(Protocol):
    """What the engine and the query planner need from a vector store."""

    def add(self, slots: np.ndarray, data: Any) -> None:
        """Add rows ``data`` under ``slots`` (one row per slot)."""

    def remove(self, slots: np.ndarray) -> None:
        """Remove rows; unknown slots are ignored."""

    def search(
        self, queries: Any, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, slots)``, each of shape ``(n_queries, k)``."""

    def score(self, queries: Any, candidates: list[np.ndarray]) -> list[np.ndarray]:
        """Exact scores of the given slots, one array per query (``-inf`` for absent slots)."""

    def __len__(self) -> int:
        """Number of live rows."""

    def save(self, directory: Path, tag: str) -> dict[str, str]:
        """Write NEW files named with ``tag`` into ``directory``; return ``{role: filename}``."""

    @classmethod
    def load(cls, directory: Path, files: dict[str, str], config: dict) -> Self:
        """Rebuild a store from the files ``save`` returned and ``config()``."""

    def config(self) -> dict:
        """JSON-serialisable settings; ``cls(**config())`` rebuilds an empty store."""


# --------------------------------------------------------------------------- validation


def as_slots(slots: Any, name: str = "slots") -> np.ndarray:
    """Return ``slots`` as a 1-D int64 array; integer dtype and non-negative values required."""
    arr = np.asarray(slots)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.min() < 0:
        raise ValueError(f"{name} must be >= 0, got {int(arr.min())}")
    return arr


_FINITE: Callable[[np.ndarray], bool] | None = None


def _all_finite(arr: np.ndarray) -> bool:
    """``_kernels.all_finite``, imported on first use: importing this module stays light
    (numba loads only for stores that check vectors)."""
    global _FINITE
    if _FINITE is None:
        from hybridrag.stores import _kernels

        _FINITE = _kernels.all_finite
    return _FINITE(arr)


def as_matrix(x: Any, dim: int, name: str = "queries") -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 ``(n, dim)`` array (a 1-D vector is one row).

    Raises ``ValueError`` on a wrong width or non-finite values, ``TypeError`` on
    non-numeric input.
    """
    arr = np.asarray(x)
    kind = arr.dtype.kind
    if kind not in "fiu":   # float, signed or unsigned int (cheaper per call than np.issubdtype)
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim == 1 and arr.size == dim:
        arr = arr.reshape(1, dim)
    if arr.ndim == 2 and arr.shape[0] == 0 and arr.shape[1] in (0, dim):
        return np.zeros((0, dim), dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{name} must have shape (n, {dim}), got {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if kind == "f" and not _all_finite(arr):   # ints convert to finite float32
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def check_k(k: Any) -> int:
    """Validate ``k`` (a non-negative int, not a bool)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__} {k!r}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return int(k)


def check_allowed(allowed: Any, min_len: int) -> np.ndarray | None:
    """Validate an ``allowed`` mask: 1-D bool, indexed by slot, length >= ``min_len``.

    ``min_len`` is the store's largest slot + 1. Returns the mask as a bool array, or
    ``None`` when ``allowed`` is ``None``.
    """
    if allowed is None:
        return None
    arr = np.asarray(allowed)
    if arr.dtype != np.bool_:
        raise TypeError(f"allowed must be a boolean mask indexed by slot, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"allowed must be 1-D, got shape {arr.shape}")
    if arr.shape[0] < min_len:
        raise ValueError(
            f"allowed has length {arr.shape[0]} but the store holds slots up to {min_len - 1}; "
            f"it must have length >= {min_len}"
        )
    return arr


# --------------------------------------------------------------------------- top-k


def empty_results(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(nq, k)`` arrays filled with ``-inf`` scores and ``-1`` slots."""
    return np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)


def rank_order(scores: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """The order that ranks entries by score descending, ties by the smaller slot: indices
    along the last axis (``[m]`` for 1-D inputs, ``[nq, m]`` per row for 2-D; any float
    dtype, compared as given). The one tie rule of every ranking: :func:`topk` sorts with
    it, and so do the planner's fused ranking and the rerank stage."""
    return np.lexsort((slots, -scores), axis=-1)


def _row_take(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``a[r, idx[r]]`` for every row ``r`` (``np.take_along_axis`` without its per-call set-up)."""
    return a[np.arange(a.shape[0])[:, None], idx]


# Rows no longer than this are sorted whole: cheaper than partition + tie check + sort.
_FULL_SORT_MAX = 64


def topk(scores: np.ndarray, slots: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of a score matrix, ties broken by the smaller slot.

    ``scores`` is ``(nq, n)``; ``slots`` is ``(n,)`` (shared by every query) or
    ``(nq, n)``. Entries scoring ``-inf`` or NaN are treated as absent. Returns
    ``(nq, k)`` float32 scores and int64 slots padded with ``-inf`` / ``-1``.
    """
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D, got shape {scores.shape}")
    nq, n = scores.shape
    slots = np.asarray(slots, dtype=np.int64)
    shared = slots.ndim == 1
    out_s, out_i = empty_results(nq, k)
    if n == 0 or k == 0 or nq == 0:
        return out_s, out_i
    s = np.where(np.isnan(scores), -np.inf, scores)
    kk = min(k, n)
    if n <= _FULL_SORT_MAX:
        full = np.broadcast_to(slots, (nq, n)) if shared else slots
        order = rank_order(s, full)[:, :kk]
        ps, pslots = _row_take(s, order), _row_take(full, order)
    else:
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk] if kk < n else np.broadcast_to(np.arange(n), (nq, n))
        ps = _row_take(s, part)
        if kk < n:
            thr = ps.min(axis=1)
            # A tie at the k-th score may leave a smaller slot outside the partition.
            n_ge = (s >= thr[:, None]).sum(axis=1)
            tied = np.flatnonzero((n_ge > kk) & np.isfinite(thr))
            if tied.size:
                part = part.copy()
                for r in tied:
                    cand = np.flatnonzero(s[r] >= thr[r])
                    cslots = slots[cand] if shared else slots[r, cand]
                    part[r] = cand[rank_order(s[r, cand], cslots)[:kk]]
                ps = _row_take(s, part)
        pslots = slots[part] if shared else _row_take(slots, part)
        order = rank_order(ps, pslots)
        ps, pslots = _row_take(ps, order), _row_take(pslots, order)
    out_s[:, :kk] = ps
    out_i[:, :kk] = np.where(np.isneginf(ps), -1, pslots)
    return out_s, out_i


def merge_topk(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge two ``(scores, slots)`` results of equal ``nq`` into one top-``k``."""
    s = np.concatenate([a[0], b[0]], axis=1)
    i = np.concatenate([a[1], b[1]], axis=1)
    s = np.where(i < 0, -np.inf, s)
    return topk(s, i, k)


# --------------------------------------------------------------------------- storage


class AppendableArray:
    """Rows of a 2-D array: a read-only base (often memory-mapped) plus a growable tail.

    Appends are amortised O(1) (capacity doubling) and never copy the base, so a store
    loaded with ``mmap_mode='r'`` stays memory-mapped while it takes new rows.
    """

    def __init__(self, width: int, dtype: np.dtype | str, base: np.ndarray | None = None) -> None:
        self.width = int(width)
        self.dtype = np.dtype(dtype)
        if base is None:
            base = np.zeros((0, self.width), dtype=self.dtype)
        if base.ndim != 2 or base.shape[1] != self.width or base.dtype != self.dtype:
            raise IndexFormatError(
                f"stored array has shape {base.shape} dtype {base.dtype}, "
                f"expected (n, {self.width}) {self.dtype}"
            )
        self._base = base
        self._tail = np.zeros((0, self.width), dtype=self.dtype)
        self._n_tail = 0

    def __len__(self) -> int:
        return self._base.shape[0] + self._n_tail

    @property
    def nbytes(self) -> int:
        """Bytes held by the rows (base + used tail)."""
        return len(self) * self.width * self.dtype.itemsize

    def append(self, rows: np.ndarray) -> int:
        """Append ``rows`` (already in ``dtype``); return the index of the first new row."""
        start = len(self)
        n = rows.shape[0]
        need = self._n_tail + n
        if need > self._tail.shape[0]:
            cap = max(need, 2 * self._tail.shape[0], 1024)
            grown = np.empty((cap, self.width), dtype=self.dtype)
            grown[: self._n_tail] = self._tail[: self._n_tail]
            self._tail = grown
        self._tail[self._n_tail : need] = rows
        self._n_tail = need
        return start

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows at ``idx`` (int array) as a new in-memory array."""
        idx = np.asarray(idx, dtype=np.int64)
        nb = self._base.shape[0]
        if self._n_tail == 0:
            return np.asarray(self._base[idx])
        if nb == 0:
            return self._tail[idx]
        out = np.empty((idx.shape[0], self.width), dtype=self.dtype)
        in_base = idx < nb
        out[in_base] = self._base[idx[in_base]]
        out[~in_base] = self._tail[idx[~in_base] - nb]
        return out

    def blocks(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, rows)`` over all rows in contiguous blocks of at most ``size``."""
        n = len(self)
        for start in range(0, n, size):
            stop = min(start + size, n)
            yield start, self.slice(start, stop)

    def parts(self) -> tuple[np.ndarray, np.ndarray]:
        """``(base, tail)``: every row, as the base's rows followed by the used tail's (no copy)."""
        return self._base, self._tail[: self._n_tail]

    def slice(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (a view where possible)."""
        nb = self._base.shape[0]
        if stop <= nb:
            return self._base[start:stop]
        if start >= nb:
            return self._tail[start - nb : stop - nb]
        return np.concatenate([self._base[start:], self._tail[: stop - nb]])


# --------------------------------------------------------------------------- files


def new_file(directory: Path | str, name: str, writer: Callable[[Path], None]) -> str:
    """Write a NEW file ``directory/name`` via ``writer(tmp_path)``; fsync; rename into place.

    Refuses to overwrite (``FileExistsError``): stores never modify a file once written.
    Returns ``name``.
    """
    directory = Path(directory)
    if "/" in name or "\\" in name or name in ("", ".", ".."):
        raise ValueError(f"file name must be a plain name, got {name!r}")
    final = directory / name
    if final.exists():
        raise FileExistsError(f"{final} already exists; save with a new tag")
    tmp = directory / f".{name}.tmp-{os.getpid()}"
    # Whatever sits at the temporary name (a link planted there) goes first: the writer
    # (numpy, FAISS) opens the name itself and must create a new file, not follow a link.
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        writer(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    return name


_ALIGN = 2 << 20   # writes end at file offsets that are multiples of this (see write_npy_blocks)


def _write_all(fd: int, bufs: list[memoryview]) -> None:
    """Write ``bufs`` in order with ``writev`` calls (the kernel may take part of them)."""
    bufs = [b for b in bufs if b.nbytes]
    while bufs:
        n = os.writev(fd, bufs)
        while bufs and n >= bufs[0].nbytes:
            n -= bufs[0].nbytes
            bufs.pop(0)
        if bufs and n:
            bufs[0] = bufs[0][n:]


def _npy_header(shape: tuple[int, ...], dt: np.dtype) -> memoryview:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(dt), "fortran_order": False, "shape": tuple(shape)})
    return memoryview(buf.getvalue())


def write_npy_blocks(
    directory: Path | str, name: str, shape: tuple[int, ...], dtype: np.dtype | str,
    blocks: Iterator[np.ndarray],
) -> str:
    """Stream row blocks into a NEW ``.npy`` of ``shape`` without holding it all in memory.

    The header and the rows go through ``writev()`` calls, the header in the same call as the
    first block, not through a writable memory map nor a small first write: the kernel caches
    a file in folios as large as the write that creates them and as the file offset's
    alignment allows, and a scan of memory-mapped vectors is faster on 2 MB pages (a first
    write of the 128-byte header alone leaves the file's first 2 MB in small folios;
    docs/CHANGELOG-performance.md, sections 12 and 13)."""
    dt = np.dtype(dtype)

    def _w(path: Path) -> None:
        with open(path, "wb", buffering=0) as fh:
            carry, done, pos = bytearray(_npy_header(shape, dt)), 0, 0   # carry: bytes not yet written
            for blk in blocks:
                blk = np.ascontiguousarray(blk, dtype=dt)
                if blk.shape[1:] != tuple(shape[1:]) or pos + blk.shape[0] > shape[0]:
                    raise RuntimeError(f"block of shape {blk.shape} does not fit {name} of shape {shape} at row {pos}")
                pos += blk.shape[0]
                data = memoryview(blk.reshape(-1)).cast("B")
                # up to the last 2 MB boundary now; the rest (copied: the caller may reuse the
                # block's memory) goes with the next block
                cut = (done + len(carry) + data.nbytes) // _ALIGN * _ALIGN - done - len(carry)
                if cut < 0:
                    carry += data
                    continue
                _write_all(fh.fileno(), [memoryview(carry), data[:cut]])
                done += len(carry) + cut
                carry = bytearray(data[cut:])
            _write_all(fh.fileno(), [memoryview(carry)])
        if pos != shape[0]:
            raise RuntimeError(f"wrote {pos} rows into {name}, expected {shape[0]}")

    return new_file(directory, name, _w)


def write_npy(directory: Path | str, name: str, array: np.ndarray) -> str:
    """Save ``array`` as a NEW ``.npy`` file (no pickle), as ``np.save`` would; return ``name``."""
    array = np.asarray(array)
    if array.dtype.hasobject or array.ndim == 0:
        raise ValueError(f"cannot save {name}: stores keep arrays of one or more dimensions, not objects")
    return write_npy_blocks(directory, name, array.shape, array.dtype, iter([array]))


def load_npy(directory: Path | str, files: dict[str, str], role: str, mmap: bool = False) -> np.ndarray:
    """Load the ``.npy`` file for ``role`` (memory-mapped read-only when ``mmap``)."""
    if role not in files:
        raise IndexFormatError(f"store files have no {role!r} entry: {sorted(files)}")
    path = Path(directory) / files[role]
    if not path.is_file():
        raise IndexFormatError(f"missing store file {path}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        raise IndexFormatError(f"cannot read {path}: {exc}") from exc


def load_array(
    directory: Path | str, files: dict[str, str], role: str, *, kinds: str, ndim: int,
    mmap: bool = False, shape: tuple[int | None, ...] | None = None,
) -> np.ndarray:
    """:func:`load_npy` plus the structural checks every store's ``load`` needs: the dtype's
    kind is one of ``kinds`` (numpy kind letters, e.g. ``"iu"``), ``ndim`` dimensions and,
    where ``shape`` gives a size (``None``: any), that size. Reads only the ``.npy`` header
    when ``mmap``; any mismatch or unreadable file raises ``IndexFormatError`` naming it."""
    name = files.get(role, role)
    try:
        arr = load_npy(directory, files, role, mmap=mmap)
    except IndexFormatError:
        raise
    except Exception as exc:   # noqa: BLE001 - numpy's header parser raises many kinds on damage
        raise IndexFormatError(f"cannot read {name}: {type(exc).__name__}: {exc}") from exc
    if arr.dtype.kind not in kinds or arr.dtype.hasobject or arr.ndim != ndim or (
        shape is not None and any(w is not None and w != got for w, got in zip(shape, arr.shape))
    ):
        want = "x".join("n" if w is None else str(w) for w in shape) if shape else f"{ndim}-D"
        raise IndexFormatError(
            f"{name} holds a {arr.dtype} array of shape {arr.shape}, expected dtype kind "
            f"{kinds!r} and shape ({want})"
        )
    return arr


def widen(t: np.ndarray) -> np.ndarray:
    """``t`` as float32 (a view when it already is). numpy converts float16 element by element
    (slower than the GEMM that follows; docs/CHANGELOG-performance.md, engine change 3); torch,
    already a dependency, uses the CPU's F16C conversion instructions and gives the same values."""
    if t.dtype != np.float16:
        return np.asarray(t, dtype=np.float32)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return t.astype(np.float32)
    if not t.flags.writeable or not t.flags.c_contiguous:
        t = np.array(t)   # torch takes writable memory only (a memory map's rows are read-only)
    out = np.empty(t.shape, dtype=np.float32)
    src, dst = torch.from_numpy(t), torch.from_numpy(out)
    # Pieces below torch's parallel grain size (32768 elements) run on the calling thread:
    # waking an intra-op thread pool per query costs more than the conversion itself.
    rows = max(1, 32768 // max(1, t.shape[1] if t.ndim > 1 else 1))
    for i in range(0, t.shape[0], rows):
        dst[i:i + rows].copy_(src[i:i + rows])
    return out


class SlotMap:
    """Slot -> row by binary search over the slots in increasing order: memory follows the
    rows, not the largest slot (a segment holds a few of an index's slots, and a damaged slot
    file must not make a huge allocation). Appends of increasing slots (the engine's order)
    cost amortised O(new rows); other orders rebuild (O(rows log rows)). Entries of removed
    rows stay until the next rebuild: callers check that a row is alive."""

    __slots__ = ("keys", "n", "rows")

    def __init__(self, slots: np.ndarray | None = None, rows: np.ndarray | None = None) -> None:
        self.keys = np.zeros(0, dtype=np.int64)
        self.rows = np.zeros(0, dtype=np.int64)
        self.n = 0
        if slots is not None and len(slots):
            self.rebuild(slots, rows)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.rows.nbytes

    def rebuild(self, slots: np.ndarray, rows: np.ndarray) -> None:
        """Hold exactly ``slots[i] -> rows[i]`` (slots distinct)."""
        slots = np.asarray(slots, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        if len(slots) > 1 and not np.all(slots[1:] > slots[:-1]):
            order = np.argsort(slots, kind="stable")
            slots, rows = slots[order], rows[order]
        self.keys, self.rows, self.n = slots.copy(), rows.copy(), len(slots)

    def append(self, slots: np.ndarray, rows: np.ndarray) -> bool:
        """Add entries whose slots all follow the last one, in increasing order; False (nothing
        done) when they do not."""
        m = len(slots)
        if m == 0:
            return True
        if (self.n and slots[0] <= self.keys[self.n - 1]) or (m > 1 and not np.all(slots[1:] > slots[:-1])):
            return False
        if self.n + m > len(self.keys):
            cap = max(self.n + m, 2 * len(self.keys), 1024)
            for name in ("keys", "rows"):
                new = np.empty(cap, dtype=np.int64)
                new[: self.n] = getattr(self, name)[: self.n]
                setattr(self, name, new)
        self.keys[self.n:self.n + m] = slots
        self.rows[self.n:self.n + m] = rows
        self.n += m
        return True

    def lookup(self, slots: np.ndarray) -> np.ndarray:
        """Row of each slot (int64), -1 for a slot never held."""
        out = np.full(len(slots), -1, dtype=np.int64)
        if self.n == 0 or len(slots) == 0:
            return out
        keys = self.keys[: self.n]
        pos = np.minimum(np.searchsorted(keys, slots), self.n - 1)
        hit = keys[pos] == slots
        out[hit] = self.rows[pos[hit]]
        return out
