"""Fusion functions against hand-computed cases (tests hybridrag/search/fusion.py)."""
import numpy as np
import pytest

from hybridrag.search import fusion

IDS = np.array(["a", "b", "c"])


def test_weighted_matches_flagembedding_formula():
    scores = {"dense": np.array([0.9, 0.5, 0.1]), "sparse": np.array([0.2, 0.4, 0.0]),
              "colbert": np.array([0.7, 0.6, 0.3])}
    w = {"dense": 0.4, "sparse": 0.2, "colbert": 0.4}
    got = fusion.weighted(IDS, scores, w)
    # (0.4*0.9 + 0.2*0.2 + 0.4*0.7) / 1.0 = 0.68 ; (0.2+0.08+0.24) = 0.52 ; (0.04+0+0.12) = 0.16
    np.testing.assert_allclose(got, [0.68, 0.52, 0.16])
    # weights that do not sum to 1 are divided by their sum
    got2 = fusion.weighted(IDS, scores, {"dense": 2, "sparse": 1, "colbert": 2})
    np.testing.assert_allclose(got2, got)


def test_relative_min_max():
    scores = {"bm25": np.array([10.0, 5.0, 0.0]), "dense": np.array([0.2, 0.8, 0.5])}
    got = fusion.relative(IDS, scores, {"bm25": 0.5, "dense": 0.5})
    # bm25 -> [1, .5, 0]; dense -> [0, 1, .5]
    np.testing.assert_allclose(got, [0.5, 0.75, 0.25])


def test_relative_constant_mode_contributes_zero():
    scores = {"bm25": np.array([3.0, 3.0, 3.0]), "dense": np.array([0.0, 1.0, 0.5])}
    got = fusion.relative(IDS, scores, {"bm25": 1.0, "dense": 1.0})
    np.testing.assert_allclose(got, [0.0, 0.5, 0.25])


def test_rrf_hand_computed_with_ties():
    scores = {"x": np.array([3.0, 2.0, 2.0]), "y": np.array([0.1, 0.3, 0.2])}
    got = fusion.rrf(IDS, scores, {"x": 1.0, "y": 1.0}, k=60)
    # x ranks: a=1, b=2, c=2 ; y ranks: b=1, c=2, a=3
    np.testing.assert_allclose(got, [1 / 61 + 1 / 63, 1 / 62 + 1 / 61, 1 / 62 + 1 / 62])


def test_rrf_is_order_independent():
    scores = {"x": np.array([3.0, 2.0, 2.0]), "y": np.array([0.1, 0.3, 0.2])}
    perm = np.array([2, 0, 1])
    a = fusion.rrf(IDS, scores, {"x": 1, "y": 1})
    b = fusion.rrf(IDS[perm], {m: s[perm] for m, s in scores.items()}, {"x": 1, "y": 1})
    np.testing.assert_allclose(a[perm], b)


def test_fusion_is_pure():
    s = {"dense": np.array([0.3, 0.2, 0.1])}
    before = s["dense"].copy()
    for method in fusion.FUSION_METHODS:
        out = fusion.fuse(method, IDS, s, {"dense": 1.0})
        assert out is not s["dense"]
    np.testing.assert_array_equal(s["dense"], before)


def test_empty_candidates():
    for method in fusion.FUSION_METHODS:
        out = fusion.fuse(method, np.array([]), {"dense": np.array([])}, {"dense": 1.0})
        assert out.shape == (0,)


@pytest.mark.parametrize("bad", [
    dict(method="max"), dict(weights={"dense": -1.0}), dict(weights={"dense": float("nan")}),
    dict(weights={}), dict(weights={"dense": 0.0}),
])
def test_bad_input_names_the_value(bad):
    args = dict(method="weighted", weights={"dense": 1.0})
    args.update(bad)
    with pytest.raises(ValueError) as e:
        fusion.fuse(args["method"], IDS, {"dense": np.array([1.0, 2.0, 3.0])}, args["weights"])
    assert str(e.value)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        fusion.weighted(IDS, {"dense": np.array([1.0, 2.0])}, {"dense": 1.0})
