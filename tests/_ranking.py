"""Comparing two rankings that may differ only in floating-point noise."""
from __future__ import annotations

import numpy as np


def assert_same_ranking(got: list[tuple[str, float]], want: list[tuple[str, float]], tol: float = 1e-4,
                        top_of_more: bool = False) -> None:
    """Same length, scores equal within ``tol`` rank by rank, and the same ids rank by rank
    except inside a run of scores tied within ``tol`` (there only the set must match: the
    order of near-ties is decided by rounding, not by the engine's logic). ``top_of_more``:
    the lists are the top of longer rankings, so the last rank may hold either of two chunks
    tied within ``tol`` across the cut (one list's 10th is the other's 11th); its ids are then
    not compared, its score is."""
    assert len(got) == len(want), (got, want)
    g = np.array([s for _, s in got], dtype=np.float64)
    w = np.array([s for _, s in want], dtype=np.float64)
    np.testing.assert_allclose(g, w, rtol=0, atol=tol)
    start = 0
    for i in range(1, len(want) + 1):
        if i == len(want) or abs(w[i] - w[i - 1]) > tol:
            if top_of_more and i == len(want):
                break
            assert {c for c, _ in got[start:i]} == {c for c, _ in want[start:i]}, (start, got, want)
            start = i
