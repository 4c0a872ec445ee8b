"""ColBERT token vectors: one contiguous token array, memory-mapped, scored by MaxSim.

Layout: every token vector of every chunk lives in ONE ``(n_tokens, dim)`` array
(``float16``, ``int8`` or ``float32``); ``offsets[slot]`` / ``lengths[slot]`` give a
chunk's rows (``-1`` / ``0`` when the slot is absent). Saved as ``.npy`` and loaded
with ``mmap_mode='r'``; appends after a load go to an in-memory tail, and ``save``
writes one new compacted array (removed chunks' tokens dropped).

Encodings (bytes per token): ``fp32`` 4*dim, ``fp16`` 2*dim, ``int8`` dim, ``pq`` dim/4
(8x smaller than fp16).

``int8`` is symmetric per-dimension quantisation: ``scale[d] = max|x[:, d]| / 127``,
computed once from the first ``add`` (or taken from ``int8_scale``) and then FIXED,
so stored codes never change meaning. Later values beyond ``127 * scale[d]`` are
clipped; that is counted in ``clipped`` and reported with a ``RuntimeWarning``, never
silent. For L2-normalised ColBERT vectors (|x| <= 1), ``int8_scale=1/127`` avoids
clipping altogether at a small cost in precision.

``pq`` is product quantisation with ``dim/4`` one-byte codes per token (2 bits per dimension on
average): the tokens are rotated to their principal axes and the bytes are spread over those
axes by variance, more bits where the tokens vary most (the codec: :mod:`hybridrag.stores._pq`).
It is learned once, as soon as the store holds ``pq_train_pool`` live tokens (262,144 by
default), from a seeded sample of ``pq_train_tokens`` (65,536) of them, taken in slot order;
until then tokens are kept (and saved) as fp16 and scored exactly, so a small index never gets
a codec learned from a handful of vectors. The pool is larger than the sample so that the
sample spans more of the collection (more documents, and more sources or topics where they
arrive grouped): a codec learned from the first batches alone served the rest worse
(docs/CHANGELOG-performance.md, engine change 18; current figures: docs/BENCHMARKS.md
section 7).
Afterwards the codec is FIXED: later tokens are coded with it, and MaxSim scores the decoded
vectors. ``rebuild`` learns a new one. Stores saved with the earlier plain 4-dimensional PQ
(a ``codebook`` file) load and keep using it.

Unit-norm tokens (what BGE-M3 and every ColBERT model emit): when every token held at training
time has norm 1 (within 1e-2), the store records it and decodes every token to norm 1 (the
decoded vector divided by its norm: the score is scaled, the vector is not stored). Restoring
the norm removes the error component along the token itself, which is the one that moves
MaxSim most. Such a store then refuses tokens that are not unit-norm (``ValueError`` naming
the slot and the norm): their scores would be wrong. How much pq moves MaxSim's top-10 on real
token vectors: docs/BENCHMARKS.md, section 7.

``score`` is ColBERT MaxSim, vectorised over the candidates: the candidates' token rows
are gathered into one matrix, scored with one GEMM ``q @ T.T`` (pq: per-query tables of the
centroids' inner products instead, see :mod:`hybridrag.stores._pq`), reduced per candidate
with ``np.maximum.reduceat`` over the offsets, summed over query tokens and divided by
the number of query tokens. ``search`` is brute-force MaxSim over every live chunk
(the planner only calls ``score``).

Segments: each segment of an index holds one store. ``empty_like()`` gives an empty store
with the same settings, int8 scale and pq codec, so a new segment stores tokens exactly as the
others; ``merge(parts)`` copies the live chunks' stored rows as they are (codes, not decoded
values). Two pq cases change stored values, as ``add`` would: untrained parts joining a
trained one have their fp16 tokens coded, and untrained parts whose live tokens reach
``pq_train_pool`` learn the codec. ``load`` checks dtypes, shapes, offsets and lengths
against the token count, the scale and the codec without reading the tokens; a token that
damage turned into NaN or infinity makes its chunk score ``-inf`` (absent).

Tests: ``tests/test_multivector.py``, ``tests/test_store_segments.py``,
``tests/test_store_damage.py``, ``tests/test_store_conformance.py``.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hybridrag.errors import ConfigError, IndexFormatError
from hybridrag.stores._pq import K as _PQ_K
from hybridrag.stores._pq import MAX_WIDTH as _PQ_MAX_WIDTH
from hybridrag.stores._pq import PQCodec
from hybridrag.stores.base import (
    AppendableArray,
    Self,
    as_matrix,
    as_slots,
    check_allowed,
    check_k,
    empty_results,
    load_array,
    topk,
    widen,
    write_npy,
    write_npy_blocks,
)

__all__ = ["MultiVectorStore"]

_ENCODINGS = {"fp32": np.float32, "fp16": np.float16, "int8": np.int8, "pq": np.uint8}
_PQ_SUB = 4          # dimensions per code byte on average (2 bits per dimension)
_PQ_MIN_TRAIN = 4096
_UNIT_TOL = 1e-2     # |norm - 1| under which a token counts as unit-norm
_FP16_MAX = float(np.finfo(np.float16).max)


def _grow(arr: np.ndarray, n: int, fill: Any) -> np.ndarray:
    """Return ``arr`` with length >= ``n`` (capacity doubling, new entries = ``fill``)."""
    if n <= arr.shape[0]:
        return arr
    out = np.full(max(n, 2 * arr.shape[0], 1024), fill, dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    return out


def _off_unit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x`` (float32) whose norm is not 1 within ``_UNIT_TOL``, and every row's norm."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    return np.flatnonzero(np.abs(norms - 1.0) > _UNIT_TOL), norms


def _token_index(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Row numbers of all tokens of chunks at ``starts`` with ``lengths``, concatenated."""
    total = int(lengths.sum())
    seg = np.cumsum(lengths) - lengths
    return np.repeat(starts - seg, lengths) + np.arange(total, dtype=np.int64)


def _same_codec(a: PQCodec, b: PQCodec) -> bool:
    return a is b or (a.unit == b.unit and np.array_equal(a.widths, b.widths)
                      and np.array_equal(a.centroids, b.centroids)
                      and (a.rotation is None) == (b.rotation is None)
                      and (a.rotation is None or np.array_equal(a.rotation, b.rotation)))


def _load_codec(directory: Path, files: dict[str, str], dim: int) -> PQCodec:
    """The saved pq codec; ``codebook`` is the plain 4-dimensional PQ that stores saved before."""
    unit = False
    if "pq_unit" in files:
        flag = np.array(load_array(directory, files, "pq_unit", kinds="f", ndim=1), dtype=np.float32)
        if flag.shape != (1,) or flag[0] != 1.0:
            raise IndexFormatError(f"pq_unit file {files['pq_unit']} holds {flag.tolist()[:4]}, expected [1.0]")
        unit = True
    if "codebook" in files:
        codebook = np.array(load_array(directory, files, "codebook", kinds="f", ndim=2), dtype=np.float32)
        want = (dim // _PQ_SUB * _PQ_K, _PQ_SUB)
        if codebook.shape != want or not np.isfinite(codebook).all():
            raise IndexFormatError(f"{files['codebook']}: pq codebook has shape {codebook.shape} (finite: "
                                   f"{bool(np.isfinite(codebook).all())}), expected {want}, finite")
        return PQCodec.legacy(codebook, unit)
    widths = np.array(load_array(directory, files, "pq_widths", kinds="iu", ndim=1))
    centroids = np.array(load_array(directory, files, "pq_centroids", kinds="f", ndim=1), dtype=np.float32)
    rotation = (np.array(load_array(directory, files, "pq_rotation", kinds="f", ndim=2), dtype=np.float32)
                if "pq_rotation" in files else None)
    n_bytes = dim // _PQ_SUB
    if (widths.shape != (n_bytes,) or widths.dtype.kind not in "iu" or widths.min(initial=1) < 1
            or widths.max(initial=1) > _PQ_MAX_WIDTH or int(widths.sum()) != dim):
        raise IndexFormatError(f"{files['pq_widths']}: pq widths {widths.tolist()[:8]}... (shape {widths.shape}) must be {n_bytes} "
                               f"ints in 1..{_PQ_MAX_WIDTH} summing to dim {dim}")
    if centroids.shape != (_PQ_K * dim,) or not np.isfinite(centroids).all():
        raise IndexFormatError(f"{files['pq_centroids']}: pq centroids have shape {centroids.shape} (finite: "
                               f"{bool(np.isfinite(centroids).all())}), expected ({_PQ_K * dim},), finite")
    if rotation is not None and (rotation.shape != (dim, dim) or not np.isfinite(rotation).all()
                                 or not np.allclose(rotation.T @ rotation, np.eye(dim), atol=1e-3)):
        raise IndexFormatError(f"{files['pq_rotation']}: pq rotation has shape {rotation.shape}; expected an orthogonal ({dim}, {dim}) matrix")
    return PQCodec(widths, centroids, rotation, unit)


class MultiVectorStore:
    """Per-chunk token vectors with exact MaxSim scoring.

    Args:
        dim: token vector dimension.
        encoding: ``"fp16"`` (default), ``"int8"``, ``"pq"`` or ``"fp32"``.
        int8_scale: optional fixed per-dimension scale (scalar or ``(dim,)``) for int8.
        block_tokens: candidate tokens scored per GEMM (bounds temporary memory).
        pq_train_tokens: tokens the ``pq`` codec is learned from (>= 4096; see the module doc).
        pq_train_pool: live tokens the store holds (fp16) before it learns the ``pq`` codec; the
            ``pq_train_tokens`` sample is drawn from all of them (>= ``pq_train_tokens``).
    """

    def __init__(
        self,
        dim: int,
        encoding: str = "fp16",
        int8_scale: float | Sequence[float] | None = None,
        block_tokens: int = 262144,
        pq_train_tokens: int = 65536,
        pq_train_pool: int = 262144,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise TypeError(f"dim must be an int, got {dim!r}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if encoding not in _ENCODINGS:
            raise ConfigError(f"encoding must be one of {sorted(_ENCODINGS)}, got {encoding!r}")
        if isinstance(block_tokens, bool) or not isinstance(block_tokens, (int, np.integer)) or block_tokens < 1:
            raise ValueError(f"block_tokens must be a positive int, got {block_tokens!r}")
        if encoding == "pq" and dim % _PQ_SUB:
            raise ConfigError(f"encoding='pq' needs dim divisible by {_PQ_SUB}, got dim={dim}")
        if (isinstance(pq_train_tokens, bool) or not isinstance(pq_train_tokens, (int, np.integer))
                or pq_train_tokens < _PQ_MIN_TRAIN):
            raise ConfigError(f"pq_train_tokens must be an int >= {_PQ_MIN_TRAIN}, got {pq_train_tokens!r}")
        if (isinstance(pq_train_pool, bool) or not isinstance(pq_train_pool, (int, np.integer))
                or pq_train_pool < pq_train_tokens):
            raise ConfigError(f"pq_train_pool must be an int >= pq_train_tokens ({pq_train_tokens}), "
                              f"got {pq_train_pool!r}")
        self.dim = int(dim)
        self.encoding = encoding
        self.block_tokens = int(block_tokens)
        self.pq_train_tokens = int(pq_train_tokens)
        self.pq_train_pool = int(pq_train_pool)
        self._codec: PQCodec | None = None         # pq: the codec, once learned
        self._scale: np.ndarray | None = None
        if int8_scale is not None:
            if encoding != "int8":
                raise ConfigError(f"int8_scale only applies to encoding='int8', not {encoding!r}")
            scale = np.broadcast_to(np.asarray(int8_scale, dtype=np.float32), (self.dim,)).copy()
            if not (np.isfinite(scale).all() and (scale > 0).all()):
                raise ValueError("int8_scale must be finite and > 0")
            self._scale = scale
        self._fixed_scale = int8_scale is not None
        self._tokens = AppendableArray(*self._layout())
        self._offsets = np.zeros(0, dtype=np.int64)  # by slot; -1 absent
        self._lengths = np.zeros(0, dtype=np.int64)  # by slot; 0 absent
        self._n_live = 0
        self._max_slot = -1
        self._dead_tokens = 0
        self.clipped = 0  # int8 values clipped to the fixed scale since creation/load

    # ------------------------------------------------------------------ encoding

    def _layout(self) -> tuple[int, Any]:
        """(width, dtype) of the stored token rows now (pq: fp16 rows until the codebook exists)."""
        if self.encoding == "pq":
            return (self.dim // _PQ_SUB, np.uint8) if self._codec is not None else (self.dim, np.float16)
        return self.dim, _ENCODINGS[self.encoding]

    @property
    def trained(self) -> bool:
        """Whether the stored tokens are in their final encoding (False only for pq before its codebook)."""
        return self.encoding != "pq" or self._codec is not None

    @property
    def bytes_per_token(self) -> int:
        """Bytes one stored token vector takes now (pq: ``dim/4``; ``2*dim`` until the codebook exists)."""
        width, dtype = self._layout()
        return width * np.dtype(dtype).itemsize

    @property
    def nbytes(self) -> int:
        """Bytes held by stored token vectors (removed chunks included until ``save``)."""
        return self._tokens.nbytes

    @property
    def scale(self) -> np.ndarray | None:
        """The int8 per-dimension scale (``None`` for float encodings or before the first add)."""
        return None if self._scale is None else self._scale.copy()

    def _encode(self, x: np.ndarray) -> np.ndarray:
        if self.encoding == "fp32":
            return x
        if self.encoding == "pq" and self._codec is not None:
            return self._codec.encode(x)
        if self.encoding in ("fp16", "pq"):
            if x.size and float(np.abs(x).max()) > _FP16_MAX:
                raise ValueError(f"token values exceed the float16 range (|x| > {_FP16_MAX}); use encoding='fp32'")
            return x.astype(np.float16)
        if self._scale is None:
            m = np.abs(x).max(axis=0)
            self._scale = np.where(m > 0, m / 127.0, 1.0 / 127.0).astype(np.float32)
        q = np.rint(x / self._scale)
        over = int((np.abs(q) > 127).sum())
        if over:
            self.clipped += over
            warnings.warn(
                f"{over} token values exceed the int8 scale fixed at the first add and were "
                "clipped to it (MultiVectorStore.clipped counts them; pass int8_scale to fix the range)",
                RuntimeWarning,
                stacklevel=3,
            )
        return np.clip(q, -127, 127).astype(np.int8)

    # ------------------------------------------------------------------ pq codec

    def _check_unit(self, x: np.ndarray, slots: np.ndarray, lengths: np.ndarray) -> None:
        """A unit-norm pq store takes unit-norm tokens only (see the module doc)."""
        bad, norms = _off_unit(x)
        if bad.shape[0]:
            j = int(np.searchsorted(np.cumsum(lengths), bad[0], side="right"))
            raise ValueError(
                f"token vectors of slot {int(slots[j])} have norm {float(norms[bad[0]]):.4g}: this pq store's "
                "codec was learned from unit-norm tokens and decodes every token to norm 1; normalise the "
                "tokens (or use a store that was trained on unnormalised ones)")

    def _maybe_train(self) -> None:
        """pq: learn the codec once ``pq_train_pool`` tokens are stored, then code them all."""
        if (self.encoding != "pq" or self._codec is not None
                or len(self._tokens) - self._dead_tokens < self.pq_train_pool):
            return
        # Live tokens in slot order: the same sample whether or not the store was saved
        # (and compacted) and loaded in between.
        live = np.flatnonzero(self._lengths[: self._max_slot + 1] > 0)
        rows = _token_index(self._offsets[live], self._lengths[live])
        rng = np.random.default_rng(0)
        pick = rows[np.sort(rng.choice(rows.shape[0], size=self.pq_train_tokens, replace=False))]
        codec = PQCodec.fit(widen(self._tokens.take(pick)), self.dim // _PQ_SUB)
        coded = AppendableArray(codec.n_bytes, np.uint8)
        unit = True
        for _, blk in self._tokens.blocks(self.block_tokens):
            x = widen(blk)
            unit = unit and _off_unit(x)[0].shape[0] == 0
            coded.append(codec.encode(x))
        codec.unit = unit
        self._codec = codec
        self._tokens = coded

    def _decode_scores(self, q: np.ndarray, t: np.ndarray) -> np.ndarray:
        """``decode(t) @ q.T`` as float32 ``(tokens, tq)``; int8 folds the scale into the query.

        Tokens-major: the GEMM output and the per-candidate ``reduceat`` then run over
        contiguous rows (faster than ``q @ t.T`` for a few dozen query tokens;
        docs/CHANGELOG-performance.md, engine change 2).
        """
        if self.encoding == "int8":
            return t.astype(np.float32) @ (q * self._scale).T
        if t.dtype == np.uint8:
            return self._codec.scores(q, t)
        return widen(t) @ q.T

    def decode(self, slot: int) -> np.ndarray:
        """The stored token vectors of ``slot`` as float32 ``(n_tokens, dim)`` (as scored)."""
        slot = int(slot)
        if slot >= self._lengths.shape[0] or self._lengths[slot] == 0:
            raise KeyError(f"slot {slot} is not in the store")
        o, n = int(self._offsets[slot]), int(self._lengths[slot])
        t = self._tokens.slice(o, o + n)
        if t.dtype == np.uint8:
            return self._codec.decode(t)
        t = t.astype(np.float32)
        return t * self._scale if self.encoding == "int8" else t

    def export(self, slots: np.ndarray) -> list[np.ndarray]:
        """The token vectors of ``slots`` as scored (float32 ``(n_tokens, dim)`` each, in their
        order; fp16 and fp32 exactly as stored, int8 and pq decoded), in the form ``add`` takes:
        to copy rows into another store (``HybridIndex.migrate``). ``KeyError`` names absent slots."""
        slots = as_slots(slots)
        missing = [int(s) for s in slots.tolist() if s >= self._lengths.shape[0] or self._lengths[s] == 0]
        if missing:
            raise KeyError(f"slots not in the store: {missing[:10]}")
        return [self.decode(s) for s in slots.tolist()]

    # ------------------------------------------------------------------ protocol

    def __len__(self) -> int:
        return self._n_live

    def add(self, slots: np.ndarray, data: Sequence[np.ndarray]) -> None:
        """Add one ``(n_tokens_i, dim)`` array per slot (``n_tokens_i >= 1``)."""
        slots = as_slots(slots)
        if len(data) != slots.shape[0]:
            raise ValueError(f"got {slots.shape[0]} slots but {len(data)} token arrays")
        if slots.shape[0] == 0:
            return
        if np.unique(slots).shape[0] != slots.shape[0]:
            raise ValueError("slots contain duplicates")
        known = slots[slots < self._lengths.shape[0]]
        live = known[self._lengths[known] > 0]
        if live.shape[0]:
            raise ValueError(f"slots already present: {live[:10].tolist()}; remove them first")
        mats = []
        for slot, x in zip(slots, data):
            m = as_matrix(x, self.dim, f"token vectors of slot {int(slot)}")
            if m.shape[0] == 0:
                raise ValueError(f"slot {int(slot)} has no token vectors; every chunk needs >= 1")
            mats.append(m)
        lengths = np.array([m.shape[0] for m in mats], dtype=np.int64)
        x = np.concatenate(mats)
        if self._codec is not None and self._codec.unit:
            self._check_unit(x, slots, lengths)
        start = self._tokens.append(self._encode(x))
        top = int(slots.max()) + 1
        self._offsets = _grow(self._offsets, top, -1)
        self._lengths = _grow(self._lengths, top, 0)
        self._offsets[slots] = start + np.cumsum(lengths) - lengths
        self._lengths[slots] = lengths
        self._n_live += slots.shape[0]
        self._max_slot = max(self._max_slot, top - 1)
        self._maybe_train()

    def remove(self, slots: np.ndarray) -> None:
        """Tombstone ``slots``; their tokens are dropped at the next ``save``."""
        slots = as_slots(slots)
        slots = np.unique(slots[slots < self._lengths.shape[0]])
        slots = slots[self._lengths[slots] > 0]
        self._dead_tokens += int(self._lengths[slots].sum())
        self._lengths[slots] = 0
        self._offsets[slots] = -1
        self._n_live -= slots.shape[0]

    def score(self, queries: Sequence[np.ndarray], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        """MaxSim of each query ``[tq, dim]`` against its candidate slots; ``-inf`` for absent slots."""
        if len(queries) != len(candidates):
            raise ValueError(f"got {len(queries)} queries but {len(candidates)} candidate lists")
        return [self._score_one(q, c, i) for i, (q, c) in enumerate(zip(queries, candidates))]

    def _score_one(self, query: np.ndarray, cand: np.ndarray, i: int) -> np.ndarray:
        q = as_matrix(query, self.dim, f"queries[{i}]")
        if q.shape[0] == 0:
            raise ValueError(f"queries[{i}] has no token vectors")
        cand = as_slots(cand, f"candidates[{i}]")
        out = np.full(cand.shape[0], -np.inf, dtype=np.float32)
        lens = np.zeros(cand.shape[0], dtype=np.int64)
        inside = cand < self._lengths.shape[0]
        lens[inside] = self._lengths[cand[inside]]
        pos = np.flatnonzero(lens > 0)
        if pos.shape[0] == 0:
            return out
        starts = self._offsets[cand[pos]]
        plen = lens[pos]
        tq = q.shape[0]
        # Split candidates into blocks of about block_tokens tokens each.
        ends = np.cumsum(plen)
        cuts = [0]
        while cuts[-1] < pos.shape[0]:
            base = ends[cuts[-1] - 1] if cuts[-1] else 0
            nxt = int(np.searchsorted(ends, base + self.block_tokens, side="right"))
            cuts.append(max(nxt, cuts[-1] + 1))
        for a, b in zip(cuts[:-1], cuts[1:]):
            t = self._tokens.take(_token_index(starts[a:b], plen[a:b]))
            sim = self._decode_scores(q, t)  # (tokens in block, tq)
            seg = np.cumsum(plen[a:b]) - plen[a:b]
            out[pos[a:b]] = np.maximum.reduceat(sim, seg, axis=0).sum(axis=1) / tq
        out[~np.isfinite(out)] = -np.inf   # only damaged token files give one: absent
        return out

    def search(
        self, queries: Sequence[np.ndarray], k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force MaxSim top-``k`` over every live chunk (exact, cost ~ all tokens)."""
        k = check_k(k)
        allowed = check_allowed(allowed, self._max_slot + 1)
        nq = len(queries)
        live = np.flatnonzero(self._lengths[: self._max_slot + 1] > 0)
        if allowed is not None:
            live = live[allowed[live]]
        if nq == 0 or k == 0 or live.shape[0] == 0:
            if nq:  # still validate the queries
                [as_matrix(q, self.dim, f"queries[{i}]") for i, q in enumerate(queries)]
            return empty_results(nq, k)
        scores = np.stack(self.score(queries, [live] * nq))
        return topk(scores, live, k)

    def config(self) -> dict:
        """Settings persisted with the index; ``MultiVectorStore(**config())`` rebuilds it empty."""
        cfg: dict[str, Any] = {"dim": self.dim, "encoding": self.encoding, "block_tokens": self.block_tokens}
        if self.encoding == "pq":
            cfg["pq_train_tokens"] = self.pq_train_tokens
            cfg["pq_train_pool"] = self.pq_train_pool
        if self._fixed_scale and self._scale is not None:
            cfg["int8_scale"] = self._scale.tolist()
        return cfg

    def _live_blocks(self, live: np.ndarray) -> Any:
        """The stored token rows of slots ``live`` (in that order), as blocks of about
        ``block_tokens`` rows."""
        plen = self._lengths[live]
        starts = self._offsets[live]
        ends = np.cumsum(plen)
        a = 0
        while a < live.shape[0]:
            base = ends[a - 1] if a else 0
            b = max(int(np.searchsorted(ends, base + self.block_tokens, side="right")), a + 1)
            yield self._tokens.take(_token_index(starts[a:b], plen[a:b]))
            a = b

    def empty_like(self) -> Self:
        """An empty store with this one's settings and encoding state (the int8 scale, the pq
        codec), so a new segment stores tokens exactly as this one does."""
        new = type(self)(**self.config())
        new._codec = self._codec
        if self._scale is not None:
            new._scale = self._scale.copy()
        new._tokens = AppendableArray(*new._layout())
        return new

    @classmethod
    def merge(cls, parts: Sequence[MultiVectorStore]) -> Self:
        """One in-memory store holding the live chunks of ``parts`` (same settings and int8
        scale, disjoint slots): stored token rows are copied as they are, so every score is
        unchanged. pq: parts sharing a codec (or none trained) are copied; an untrained
        part's fp16 tokens are coded with the trained parts' codec (as training codes the
        buffered tokens), and untrained parts whose live tokens reach ``pq_train_pool``
        learn the codec (as ``add`` would), the two cases where scores change."""
        parts = list(parts)
        if not parts or not all(isinstance(p, MultiVectorStore) for p in parts):
            raise TypeError(f"merge takes a non-empty sequence of MultiVectorStore, got {parts!r}")
        cfg = parts[0].config()
        for p in parts[1:]:
            if p.config() != cfg:
                raise ValueError(f"cannot merge stores of different settings: {p.config()} vs {cfg}")
        scales = [p._scale for p in parts if p._scale is not None and p._n_live]
        if any(not np.array_equal(sc, scales[0]) for sc in scales):
            raise ValueError("cannot merge int8 stores quantised with different scales (make new segments "
                             "with empty_like, or pass int8_scale)")
        codecs = [p._codec for p in parts if p._codec is not None]
        if any(not _same_codec(c, codecs[0]) for c in codecs):
            raise ValueError("cannot merge pq stores with different codecs")
        ref = next((p for p in parts if p._codec is not None), None) or next(
            (p for p in parts if p._scale is not None and p._n_live), parts[0])
        out = ref.empty_like()
        lives = [np.flatnonzero(p._lengths[: p._max_slot + 1] > 0) for p in parts]
        slots = np.concatenate(lives)
        if np.unique(slots).shape[0] != slots.shape[0]:
            raise ValueError("the parts hold a slot in common; merge needs disjoint slots")
        top = int(slots.max()) + 1 if slots.shape[0] else 0
        out._offsets = np.full(top, -1, dtype=np.int64)
        out._lengths = np.zeros(top, dtype=np.int64)
        for p, live in zip(parts, lives):
            plen = p._lengths[live]
            start = len(out._tokens)
            for blk in p._live_blocks(live):
                if out._codec is not None and blk.dtype != np.uint8:
                    x = widen(blk)
                    if out._codec.unit and _off_unit(x)[0].shape[0]:
                        raise ValueError("an untrained part holds tokens that are not unit-norm; they cannot "
                                         "join the unit-norm pq codec of the others")
                    blk = out._codec.encode(x)
                out._tokens.append(blk)
            out._offsets[live] = start + np.cumsum(plen) - plen
            out._lengths[live] = plen
            out.clipped += p.clipped
        out._n_live = slots.shape[0]
        out._max_slot = top - 1
        out._maybe_train()
        return out

    def save(self, directory: Path, tag: str) -> dict[str, str]:
        """Write NEW compacted files ``{tag}.mv.*.npy``; return ``{role: filename}``."""
        directory = Path(directory)
        top = self._max_slot + 1
        offsets = self._offsets[:top].copy()
        lengths = self._lengths[:top].copy()
        width, dtype = self._layout()
        if self._dead_tokens == 0:
            n_tok = len(self._tokens)
            blocks = (blk for _, blk in self._tokens.blocks(self.block_tokens))
        else:
            live = np.flatnonzero(lengths > 0)
            plen = lengths[live]
            n_tok = int(plen.sum())
            offsets[live] = np.cumsum(plen) - plen
            blocks = self._live_blocks(live)
        files = {
            "tokens": write_npy_blocks(directory, f"{tag}.mv.tokens.npy", (n_tok, width), dtype, blocks),
            "offsets": write_npy(directory, f"{tag}.mv.offsets.npy", offsets),
            "lengths": write_npy(directory, f"{tag}.mv.lengths.npy", lengths),
        }
        if self.encoding == "int8":
            scale = self._scale if self._scale is not None else np.zeros(0, dtype=np.float32)
            files["scale"] = write_npy(directory, f"{tag}.mv.scale.npy", scale)
        if self._codec is not None:
            codec = self._codec
            files["pq_widths"] = write_npy(directory, f"{tag}.mv.pq_widths.npy", codec.widths)
            files["pq_centroids"] = write_npy(directory, f"{tag}.mv.pq_centroids.npy", codec.centroids)
            if codec.rotation is not None:
                files["pq_rotation"] = write_npy(directory, f"{tag}.mv.pq_rotation.npy", codec.rotation)
            if codec.unit:   # absent: decode as gathered (also what indexes saved before it read as)
                files["pq_unit"] = write_npy(directory, f"{tag}.mv.pq_unit.npy", np.ones(1, dtype=np.float32))
        return files

    @classmethod
    def load(cls, directory: Path, files: dict[str, str], config: dict, *,
             slot_limit: int | None = None) -> Self:
        """Open a saved store; token vectors are memory-mapped read-only (not read; the
        other files' structure is checked); ``slot_limit``: slots in the files must be
        below it (the engine's next slot), else ``IndexFormatError``."""
        if config.get("encoding") == "pq" and "pq_train_pool" not in config:
            # Saved before the pool existed: such a store learned its codec at pq_train_tokens.
            config = {**config, "pq_train_pool": config.get("pq_train_tokens", 65536)}
        try:
            store = cls(**config)
        except TypeError as exc:
            raise IndexFormatError(f"bad MultiVectorStore config {config!r}: {exc}") from exc
        directory = Path(directory)
        if store.encoding == "pq" and ("codebook" in files or "pq_centroids" in files):
            try:
                store._codec = _load_codec(directory, files, store.dim)
            except (OSError, EOFError) as exc:
                raise IndexFormatError(f"cannot read the pq codec files {files!r}: {exc}") from exc
        width, dtype = store._layout()
        tokens = load_array(directory, files, "tokens", kinds="fiu", ndim=2, mmap=True, shape=(None, width))
        if tokens.dtype != np.dtype(dtype):
            raise IndexFormatError(f"{files['tokens']} holds {tokens.dtype} tokens, expected {np.dtype(dtype)}")
        offsets = np.array(load_array(directory, files, "offsets", kinds="iu", ndim=1)).astype(np.int64)
        lengths = np.array(load_array(directory, files, "lengths", kinds="iu", ndim=1)).astype(np.int64)
        n_tok = tokens.shape[0]
        if offsets.shape != lengths.shape:
            raise IndexFormatError(f"{files['offsets']} {offsets.shape} and {files['lengths']} {lengths.shape} disagree")
        live = lengths > 0
        # Compared without adding (offsets + lengths could overflow int64).
        if lengths.min(initial=0) < 0 or lengths.max(initial=0) > n_tok or (
                live.any() and (offsets[live].min() < 0 or (offsets[live] > n_tok - lengths[live]).any())):
            raise IndexFormatError(f"{files['offsets']}/{files['lengths']} point outside the {n_tok} tokens of "
                                   f"{files['tokens']}")
        if slot_limit is not None and offsets.shape[0] > slot_limit:
            raise IndexFormatError(f"{files['offsets']} holds slots up to {offsets.shape[0] - 1}, "
                                   f"beyond the limit {slot_limit}")
        store._tokens = AppendableArray(width, dtype, base=tokens)
        store._offsets = offsets
        store._lengths = lengths
        store._n_live = int(live.sum())
        store._max_slot = offsets.shape[0] - 1
        if store.encoding == "int8":
            scale = np.array(load_array(directory, files, "scale", kinds="f", ndim=1), dtype=np.float32)
            if scale.shape not in ((0,), (store.dim,)) or not (np.isfinite(scale).all() and (scale > 0).all()):
                raise IndexFormatError(f"{files['scale']}: int8 scale of shape {scale.shape} must be ({store.dim},), "
                                       "finite and > 0")
            if scale.shape[0] == 0 and store._n_live:
                raise IndexFormatError(f"{files['scale']} is empty but the store holds int8 tokens")
            store._scale = scale if scale.shape[0] else None
        return store
