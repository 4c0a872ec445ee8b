"""Score fusion: pure functions from per-mode candidate scores to one fused score.

Every function takes the candidate ids of ONE query (``ids``, shape ``[m]``) and a
mapping ``mode -> scores`` (each shape ``[m]``, aligned with ``ids``), and returns a
new float64 array ``[m]`` of fused scores. Inputs are never modified and candidates are
never de-duplicated by text. Because the engine gives every candidate its exact score
in every enabled mode, no mode's score is ever a stand-in 0.

* ``weighted``: FlagEmbedding's ``compute_score`` formula,
  ``sum(w_m * s_m) / sum(w_m)``. Right when the modes' scores share a scale
  (BGE-M3's dense, lexical and ColBERT scores do).
* ``relative``: min-max normalise each mode over the candidate set, then ``weighted``.
  Right when scales differ (BM25 is unbounded, cosine is in [-1, 1]).
* ``rrf``: reciprocal rank fusion, ``sum(w_m / (rrf_k + rank_m))`` with ranks
  (1-based) of each candidate by that mode's exact score among the candidates; ties in
  a mode share the best rank of the tie (competition ranking), so the result does
  not depend on candidate order.

Tested in ``tests/test_fusion.py`` against hand-computed cases.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

FUSION_METHODS = ("weighted", "relative", "rrf")


def _check(ids: Sequence[object] | np.ndarray, scores: Mapping[str, np.ndarray],
           weights: Mapping[str, float]) -> tuple[list[str], np.ndarray]:
    m = len(ids)
    if not scores:
        raise ValueError("fusion needs at least one mode's scores; got none")
    modes = list(scores)
    for mode in modes:
        if mode not in weights:
            raise ValueError(f"no fusion weight for mode {mode!r}; weights given: {sorted(weights)}")
        w = weights[mode]
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not np.isfinite(w) or w < 0:
            raise ValueError(f"fusion weight for {mode!r} must be a finite number >= 0, got {w!r}")
    total = float(sum(weights[mode] for mode in modes))
    if total <= 0:
        raise ValueError(f"fusion weights of the enabled modes {modes} sum to 0")
    mat = np.empty((len(modes), m), dtype=np.float64)
    for i, mode in enumerate(modes):
        s = np.asarray(scores[mode], dtype=np.float64)
        if s.shape != (m,):
            raise ValueError(f"scores for mode {mode!r} have shape {s.shape}, expected ({m},)")
        mat[i] = s
    return modes, mat


def weighted(ids: Sequence[object] | np.ndarray, scores: Mapping[str, np.ndarray],
             weights: Mapping[str, float]) -> np.ndarray:
    """``sum_m w_m * s_m / sum_m w_m`` over the modes present in ``scores``."""
    modes, mat = _check(ids, scores, weights)
    w = np.array([weights[mode] for mode in modes], dtype=np.float64)
    return (w @ mat) / w.sum()


def relative(ids: Sequence[object] | np.ndarray, scores: Mapping[str, np.ndarray],
             weights: Mapping[str, float]) -> np.ndarray:
    """Min-max normalise each mode over the candidates to [0, 1], then :func:`weighted`.

    A mode whose scores are all equal contributes 0 for every candidate (it cannot
    separate them), rather than dividing by zero.
    """
    modes, mat = _check(ids, scores, weights)
    lo = mat.min(axis=1, keepdims=True) if mat.shape[1] else np.zeros((len(modes), 1))
    hi = mat.max(axis=1, keepdims=True) if mat.shape[1] else np.zeros((len(modes), 1))
    span = hi - lo
    norm = np.divide(mat - lo, span, out=np.zeros_like(mat), where=span > 0)
    w = np.array([weights[mode] for mode in modes], dtype=np.float64)
    return (w @ norm) / w.sum()


def competition_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks by descending score; tied scores share the best rank ("1224" ranking)."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    sorted_s = s[order]
    ranks_sorted = np.arange(1, len(s) + 1)
    if len(s):
        new_group = np.empty(len(s), dtype=bool)
        new_group[0] = True
        new_group[1:] = sorted_s[1:] != sorted_s[:-1]
        ranks_sorted = np.maximum.accumulate(np.where(new_group, ranks_sorted, 0))
    ranks = np.empty(len(s), dtype=np.int64)
    ranks[order] = ranks_sorted
    return ranks


def rrf(ids: Sequence[object] | np.ndarray, scores: Mapping[str, np.ndarray],
        weights: Mapping[str, float], k: int = 60) -> np.ndarray:
    """Reciprocal rank fusion: ``sum_m w_m / (k + rank_m)``."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ValueError(f"rrf_k must be an integer >= 0, got {k!r}")
    modes, mat = _check(ids, scores, weights)
    out = np.zeros(mat.shape[1], dtype=np.float64)
    for i, mode in enumerate(modes):
        out += weights[mode] / (k + competition_ranks(mat[i]))
    return out


def fuse(method: str, ids: Sequence[object] | np.ndarray, scores: Mapping[str, np.ndarray],
         weights: Mapping[str, float], rrf_k: int = 60) -> np.ndarray:
    """Dispatch to a fusion function by name (one of :data:`FUSION_METHODS`)."""
    if method == "weighted":
        return weighted(ids, scores, weights)
    if method == "relative":
        return relative(ids, scores, weights)
    if method == "rrf":
        return rrf(ids, scores, weights, k=rrf_k)
    raise ValueError(f"unknown fusion method {method!r}; choose one of {FUSION_METHODS}")
