"""Score fusion: pure functions from per-mode candidate scores to one fused score.

Every function takes the candidate ids of ONE query (``ids``, shape ``[m]``) and a
mapping ``mode -> scores`` (each shape ``[m]``, aligned with ``ids``), and returns a
new float64 array ``[m]`` of fused scores. Inputs are never modified and candidates are
never de-duplicated by text. Because the engine gives every candidate its exact score
in every enabled mode, no mode's score is ever a stand-in 0.

* ``weighted``: FlagEmbedding's ``compute_score`` formula,
  ``sum(w_m * s_m) / sum(w_m)``. Right when the modes' scores share a scale
  (BGE-M3's dense, lexical and ColBERT scores do).
* ``relative``: each mode's scores divided by the largest magnitude among the
  candidates, ``n_m = s_m / max_j |s_m[j]|``, then ``weighted``. Right when scales
  differ (BM25 is unbounded, cosine is in [-1, 1]). The mode's own zero stays zero
  (BM25: no query term matched; cosine: orthogonal), so a candidate's normalised score
  is its evidence relative to the best candidate of that mode: the last hit keeps
  ``s_last / s_max`` and a lone hit with a positive score gets 1, where min-max
  normalisation gave both exactly 0. Invariant to scaling a mode by a positive factor
  (not to shifting it: a shift moves the mode's zero). A mode whose candidates all
  score 0 contributes 0.
* ``rrf``: reciprocal rank fusion, ``sum(w_m / (rrf_k + rank_m))`` with ranks
  (1-based) of each candidate by that mode's exact score among the candidates; ties in
  a mode share the best rank of the tie (competition ranking), so the result does
  not depend on candidate order.
* ``adaptive``: ``relative`` with per-query weights ``w'_m = w_m * c_m * e_m``:
  ``c_m`` is how well the mode's vocabulary covers this query (given by the caller:
  :func:`hybridrag.search.planner.query_coverage` for a neural model's tokenizer,
  :func:`~hybridrag.search.planner.term_coverage` for BM25; 1 when not given), mapped to
  a weight by ``clip((c - COVERAGE_LOW) / (COVERAGE_HIGH - COVERAGE_LOW), 0, 1)``, and
  ``e_m = max(z_m - Z_NOISE, EPS)`` is how far the mode's best candidate stands out:
  ``z_m = (top_1 - mean) / std`` over the mode's ``EVIDENCE_DEPTH`` best candidates
  (``Z_NOISE`` is about what the best of that many unrelated scores reaches). A model
  that cannot read the query (an English-only model on Hindi) thus loses its weight;
  where every mode reads it, the weights follow how peaked each mode's scores are; where
  no mode covers it (Chinese: MiniLM lacks most characters, the word analyser does not
  segment), the configured weights are used as they are.
  :func:`adaptive_weights` returns the ``w'`` it used (summing to 1) for explain output.
* ``coverage``: ``relative`` with ``w'_m = w_m * c_m`` only (``adaptive`` without the
  evidence factor): where every mode covers the query it is ``relative`` exactly; a model
  that cannot read the query loses its weight. The default of the BM25 pipelines: on MLQA-R
  it stays within 0.01 of the better mode alone in every language, where ``relative`` fell
  0.04-0.05 below BM25 in Arabic and Hindi, and on SciFact / NFCorpus it is within 0.001 of
  ``relative`` (``adaptive``'s evidence factor cost 0.009 on NFCorpus; docs/RESULTS.md).

Tested in ``tests/test_fusion.py`` against hand-computed cases.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

FUSION_METHODS = ("weighted", "relative", "rrf", "adaptive", "coverage")

# adaptive: coverage at or below COVERAGE_LOW gives a mode no weight, at or above
# COVERAGE_HIGH its full weight. The English-only MiniLM of pipelines/offline.toml covers few
# of the words of MLQA's Hindi and Arabic queries and all of German and Spanish, the
# BM25 vocabulary most terms of every language: the bounds sit between those groups (medians
# per language: benchmarks/bench_fusion_languages.py, benchmarks/results/fusion_languages.md).
COVERAGE_LOW = 0.3
COVERAGE_HIGH = 0.8
EVIDENCE_DEPTH = 100
Z_NOISE = 2.0
EPS = 1e-3


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


def _normalise(mat: np.ndarray) -> np.ndarray:
    """Each row divided by its largest magnitude (rows of zeros stay zero)."""
    top = np.abs(mat).max(axis=1, keepdims=True) if mat.shape[1] else np.zeros((mat.shape[0], 1))
    return np.divide(mat, top, out=np.zeros_like(mat), where=top > 0)


def relative(ids: Sequence[object] | np.ndarray, scores: Mapping[str, np.ndarray],
             weights: Mapping[str, float]) -> np.ndarray:
    """Divide each mode's scores by their largest magnitude over the candidates, then
    :func:`weighted`: ``sum_m w_m * s_m / max|s_m|  /  sum_m w_m``."""
    modes, mat = _check(ids, scores, weights)
    w = np.array([weights[mode] for mode in modes], dtype=np.float64)
    return (w @ _normalise(mat)) / w.sum()


def _peak(s: np.ndarray, depth: int = EVIDENCE_DEPTH) -> float:
    """``(top_1 - mean) / std`` over the ``depth`` best of ``s`` (0 when they are all equal)."""
    top = -np.partition(-s, depth - 1)[:depth] if s.shape[0] > depth else s
    sd = float(top.std()) if top.shape[0] else 0.0
    return float((top.max() - top.mean()) / sd) if sd > 0 else 0.0


def adaptive_weights(scores: Mapping[str, np.ndarray], weights: Mapping[str, float],
                     coverage: Mapping[str, float] | None = None, evidence: bool = True) -> dict[str, float]:
    """The per-query weights ``w'_m`` of :func:`adaptive`, summing to 1 (see the module doc);
    with ``evidence=False`` those of :func:`covered` (no ``e_m`` factor).

    ``coverage[mode]`` in [0, 1] is the share of the query's words the mode's model
    covers; modes absent from it count as fully covered. When every mode ends at weight 0
    (none covers the query), the configured weights are used unchanged.
    """
    raw = {}
    for mode, s in scores.items():
        c = 1.0 if coverage is None or mode not in coverage else float(coverage[mode])
        if not 0.0 <= c <= 1.0:
            raise ValueError(f"coverage for mode {mode!r} must be in [0, 1], got {c!r}")
        g = min(max((c - COVERAGE_LOW) / (COVERAGE_HIGH - COVERAGE_LOW), 0.0), 1.0)
        e = max(_peak(np.asarray(s, dtype=np.float64)) - Z_NOISE, EPS) if evidence else 1.0
        raw[mode] = weights[mode] * g * e
    total = sum(raw.values())
    if total <= 0:
        base = sum(weights[m] for m in scores)
        return {m: weights[m] / base for m in scores}
    return {m: v / total for m, v in raw.items()}


def adaptive(ids: Sequence[object] | np.ndarray, scores: Mapping[str, np.ndarray],
             weights: Mapping[str, float], coverage: Mapping[str, float] | None = None) -> np.ndarray:
    """:func:`relative` with the per-query weights of :func:`adaptive_weights`."""
    _check(ids, scores, weights)
    return relative(ids, scores, adaptive_weights(scores, weights, coverage))


def covered(ids: Sequence[object] | np.ndarray, scores: Mapping[str, np.ndarray],
            weights: Mapping[str, float], coverage: Mapping[str, float] | None = None) -> np.ndarray:
    """:func:`relative` with each mode's weight scaled by its coverage factor only (fusion
    method ``"coverage"``; :func:`adaptive_weights` with ``evidence=False``)."""
    _check(ids, scores, weights)
    return relative(ids, scores, adaptive_weights(scores, weights, coverage, evidence=False))


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
         weights: Mapping[str, float], rrf_k: int = 60,
         coverage: Mapping[str, float] | None = None) -> np.ndarray:
    """Dispatch to a fusion function by name (one of :data:`FUSION_METHODS`);
    ``coverage`` is used by ``adaptive`` and ``coverage`` only."""
    if method == "weighted":
        return weighted(ids, scores, weights)
    if method == "relative":
        return relative(ids, scores, weights)
    if method == "rrf":
        return rrf(ids, scores, weights, k=rrf_k)
    if method == "adaptive":
        return adaptive(ids, scores, weights, coverage)
    if method == "coverage":
        return covered(ids, scores, weights, coverage)
    raise ValueError(f"unknown fusion method {method!r}; choose one of {FUSION_METHODS}")


def effective_weights(method: str, scores: Mapping[str, np.ndarray], weights: Mapping[str, float],
                      coverage: Mapping[str, float] | None = None) -> dict[str, float]:
    """The weights ``method`` gave each mode for this query, summing to 1: the configured
    ones divided by their sum, or for ``adaptive`` / ``coverage`` those of :func:`adaptive_weights`."""
    if method in ("adaptive", "coverage"):
        return adaptive_weights(scores, weights, coverage, evidence=method == "adaptive")
    total = float(sum(weights[m] for m in scores))
    return {m: weights[m] / total for m in scores}
