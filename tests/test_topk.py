"""``topk`` / ``merge_topk``, the exact top-k every store and the brute-force references use,
against a plain ``sorted`` over (-score, slot)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from hybridrag.stores import base
from hybridrag.stores.base import merge_topk, topk


def reference(scores: np.ndarray, slots: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    nq, n = scores.shape
    out_s = np.full((nq, k), -np.inf, dtype=np.float32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    for r in range(nq):
        row_slots = slots if slots.ndim == 1 else slots[r]
        kept = [(float(s), int(i)) for s, i in zip(scores[r].astype(np.float32), row_slots)
                if not math.isnan(s) and s != -math.inf]
        kept.sort(key=lambda t: (-t[0], t[1]))
        for j, (s, i) in enumerate(kept[:k]):
            out_s[r, j], out_i[r, j] = s, i
    return out_s, out_i


def case(rng: np.random.Generator, nq: int, n: int, shared: bool) -> tuple[np.ndarray, np.ndarray]:
    # Few distinct values, so ties at the k-th score are common; some absent entries.
    scores = rng.integers(0, 6, size=(nq, n)).astype(np.float32) / 4
    scores[rng.random((nq, n)) < 0.1] = -np.inf
    scores[rng.random((nq, n)) < 0.05] = np.nan
    slots = rng.permutation(10 * n)[:n] if shared else rng.integers(0, 10 * n, size=(nq, n))
    return scores, slots


# n on both sides of the whole-row sort threshold.
@pytest.mark.parametrize("n", [1, 7, base._FULL_SORT_MAX, base._FULL_SORT_MAX + 1, 300])
@pytest.mark.parametrize("shared", [True, False])
def test_topk_matches_a_sorted_reference(n: int, shared: bool) -> None:
    rng = np.random.default_rng(n * 2 + shared)
    for k in sorted({0, 1, 3, 10, n - 1, n, n + 4} - {-1}):
        scores, slots = case(rng, 5, n, shared)
        got_s, got_i = topk(scores, slots, k)
        ref_s, ref_i = reference(scores, slots, k)
        assert got_s.shape == got_i.shape == (5, k)
        assert got_s.dtype == np.float32 and got_i.dtype == np.int64
        np.testing.assert_array_equal(got_i, ref_i, err_msg=f"n={n} k={k} shared={shared}")
        np.testing.assert_array_equal(got_s, ref_s)


def test_topk_keeps_the_smaller_slot_among_ties_past_the_partition() -> None:
    # 200 equal scores: the partition alone may keep any 10 of them.
    scores = np.ones((2, 200), dtype=np.float32)
    slots = np.arange(200)[::-1].copy()
    _, got = topk(scores, slots, 10)
    np.testing.assert_array_equal(got, np.tile(np.arange(10), (2, 1)))


def test_merge_topk_drops_padding_and_merges_in_order() -> None:
    rng = np.random.default_rng(0)
    a_s, a_i = case(rng, 3, 40, False)
    b_s, b_i = case(rng, 3, 90, False)
    b_i += 1000  # distinct from a's slots
    a, b = topk(a_s, a_i, 12), topk(b_s, b_i, 12)
    got = merge_topk(a, b, 12)
    ref = reference(np.concatenate([a_s, b_s], 1), np.concatenate([a_i, b_i], 1), 12)
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_array_equal(got[0], ref[0])


@pytest.mark.parametrize("seed", range(3))
def test_rank_order_is_score_descending_then_smaller_slot(seed: int) -> None:
    """The one tie rule, as the planner, the rerank stage and Milvus's hit lists use it:
    float64 scores as given (no float32 rounding), 1-D and per row."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, 60) / 3 + np.where(rng.random(60) < 0.3, 1e-12, 0.0)  # ties, near-ties
    slots = rng.permutation(1000)[:60]
    want = sorted(range(60), key=lambda i: (-scores[i], slots[i]))
    np.testing.assert_array_equal(base.rank_order(scores, slots), want)
    rows = np.stack([scores, scores[::-1]])
    got = base.rank_order(rows, np.broadcast_to(slots, rows.shape))
    np.testing.assert_array_equal(got[1], sorted(range(60), key=lambda i: (-rows[1, i], slots[i])))
    from hybridrag.stores.milvus import _by_rank

    hits = [(float(s), int(i)) for s, i in zip(scores, slots)]
    assert _by_rank(hits) == sorted(hits, key=lambda h: (-h[0], h[1]))
    assert _by_rank([]) == [] and _by_rank(hits[:1]) == hits[:1]
