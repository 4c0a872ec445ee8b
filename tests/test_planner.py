"""The planner's per-candidate first-stage ranks (``hybridrag/search/planner.py``), against
positions read off each store's own hit list. The planner's ranking itself is tested against
brute force in ``tests/test_index.py``."""
from __future__ import annotations

import numpy as np
import pytest

from hybridrag.search import planner
from hybridrag.stores.faiss import FaissStore
from hybridrag.stores.sparse import SparseIndex


def dict_ranks(hits: np.ndarray, slots: np.ndarray) -> np.ndarray:
    pos = {int(s): r + 1 for r, s in enumerate(hits[hits >= 0])}
    return np.array([pos.get(int(s), 0) for s in slots], dtype=np.int64)


@pytest.mark.parametrize("seed", range(5))
def test_ranks_are_positions_in_the_hit_list(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_hits = int(rng.integers(0, 40))
    hits = np.r_[rng.permutation(1000)[:n_hits], np.full(int(rng.integers(0, 5)), -1)]
    slots = np.unique(np.r_[hits[hits >= 0], rng.integers(0, 1200, 30)])
    got = planner._ranks(hits, slots)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, dict_ranks(hits, slots))


def test_ranks_of_an_empty_hit_list_are_zero() -> None:
    got = planner._ranks(np.full(5, -1), np.array([3, 9]))
    np.testing.assert_array_equal(got, [0, 0])


def test_run_gives_each_candidate_its_rank_in_each_first_stage() -> None:
    rng = np.random.default_rng(3)
    n, d = 400, 8
    dense = FaissStore(d)
    dense.add(np.arange(n) * 3, rng.standard_normal((n, d)).astype(np.float32))
    sparse = SparseIndex("bm25okapi")
    sparse.add(np.arange(n) * 3, [{int(t): 1.0 for t in rng.choice(50, 5, replace=False)} for _ in range(n)])
    plan = planner.QueryPlan(modes=["dense", "bm25"], depths={"dense": 20, "bm25": 20},
                             weights={"dense": 1.0, "bm25": 1.0})
    qd = rng.standard_normal((4, d)).astype(np.float32)
    qs = [{int(t): 1.0 for t in rng.choice(50, 3, replace=False)} for _ in range(4)]
    out = planner.run(plan, {"dense": qd, "bm25": qs}, {"dense": dense, "bm25": sparse})
    d_hits, s_hits = dense.search(qd, 20)[1], sparse.search(qs, 20)[1]
    for i, c in enumerate(out):
        np.testing.assert_array_equal(c.ranks["dense"], dict_ranks(d_hits[i], c.slots))
        np.testing.assert_array_equal(c.ranks["bm25"], dict_ranks(s_hits[i], c.slots))
        assert (c.ranks["dense"] > 0).sum() == (d_hits[i] >= 0).sum()
