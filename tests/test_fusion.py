"""Fusion functions against hand-computed cases (tests hybridrag/search/fusion.py)."""
import statistics

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


def test_relative_divides_by_the_largest_magnitude():
    scores = {"bm25": np.array([10.0, 5.0, 0.0]), "dense": np.array([0.2, 0.8, 0.5])}
    got = fusion.relative(IDS, scores, {"bm25": 0.5, "dense": 0.5})
    # bm25 -> [1, .5, 0]; dense -> [.25, 1, .625]
    np.testing.assert_allclose(got, [0.625, 0.75, 0.3125])


def test_relative_all_zero_mode_contributes_zero():
    scores = {"bm25": np.array([0.0, 0.0, 0.0]), "dense": np.array([0.0, 1.0, 0.5])}
    got = fusion.relative(IDS, scores, {"bm25": 1.0, "dense": 1.0})
    np.testing.assert_allclose(got, [0.0, 0.5, 0.25])


@pytest.mark.parametrize("method", ["relative", "adaptive"])
def test_lone_hit_keeps_its_evidence(method):
    """Issue 22: min-max gave a lone hit 0 in every mode. Now a lone hit that every mode
    scores above 0 gets the full fused score, and one that a mode scores 0 loses that
    mode's share."""
    one = np.array(["a"])
    w = {"bm25": 0.5, "dense": 0.5}
    both = fusion.fuse(method, one, {"bm25": np.array([7.0]), "dense": np.array([0.4])}, w)
    np.testing.assert_allclose(both, [1.0])
    dense_only = fusion.fuse(method, one, {"bm25": np.array([0.0]), "dense": np.array([0.4])}, w)
    np.testing.assert_allclose(dense_only, [0.5])


def test_last_hit_score_is_proportional_to_its_evidence():
    """Issue 22: the last hit of each mode got exactly 0 under min-max."""
    ids = np.array(["a", "b", "c", "d"])
    bm25 = np.array([8.0, 4.0, 2.0, 1.0])
    dense = np.array([0.6, 0.3, 0.15, 0.075])
    got = fusion.relative(ids, {"bm25": bm25, "dense": dense}, {"bm25": 1.0, "dense": 3.0})
    np.testing.assert_allclose(got, bm25 / bm25.max())
    assert got[-1] > 0


@pytest.mark.parametrize("seed", range(5))
def test_relative_and_adaptive_are_invariant_to_scaling_a_mode(seed):
    rng = np.random.default_rng(seed)
    ids = np.arange(40)
    scores = {"bm25": rng.gamma(2.0, 3.0, 40), "dense": rng.uniform(-0.2, 0.9, 40)}
    w = {"bm25": 0.3, "dense": 0.7}
    scaled = {"bm25": scores["bm25"] * 17.5, "dense": scores["dense"] * 0.01}
    for method in ("relative", "adaptive"):
        np.testing.assert_allclose(fusion.fuse(method, ids, scaled, w), fusion.fuse(method, ids, scores, w))
    # adaptive's evidence (how far the best candidate stands out) is also shift-invariant
    shifted = {"bm25": scores["bm25"] + 5.0, "dense": scores["dense"] - 0.3}
    assert fusion.adaptive_weights(shifted, w) == pytest.approx(fusion.adaptive_weights(scores, w))


def _expected_adaptive_weights(scores, weights, coverage):
    """Independent re-statement of the module doc's formula (statistics module, loops)."""
    raw = {}
    for m, s in scores.items():
        top = sorted(s, reverse=True)[:fusion.EVIDENCE_DEPTH]
        sd = statistics.pstdev(top)
        z = (top[0] - statistics.fmean(top)) / sd if sd > 0 else 0.0
        c = coverage.get(m, 1.0)
        g = min(max((c - fusion.COVERAGE_LOW) / (fusion.COVERAGE_HIGH - fusion.COVERAGE_LOW), 0.0), 1.0)
        raw[m] = weights[m] * g * max(z - fusion.Z_NOISE, fusion.EPS)
    total = sum(raw.values())
    return {m: v / total for m, v in raw.items()}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("cov", [0.0, 0.45, 0.7, 1.0])
def test_adaptive_weights_follow_the_formula(seed, cov):
    rng = np.random.default_rng(seed)
    n = 150  # more than EVIDENCE_DEPTH: only the best 100 count
    scores = {"bm25": rng.gamma(1.0, 2.0, n), "dense": rng.normal(0.4, 0.1, n)}
    scores["bm25"][int(rng.integers(n))] += 30.0  # bm25 has a clear best candidate
    w = {"bm25": 0.5, "dense": 0.5}
    got = fusion.adaptive_weights(scores, w, {"dense": cov})
    want = _expected_adaptive_weights(scores, w, {"dense": cov})
    assert got == pytest.approx(want)
    assert sum(got.values()) == pytest.approx(1.0)
    fused = fusion.adaptive(np.arange(n), scores, w, {"dense": cov})
    manual = sum(want[m] * scores[m] / np.abs(scores[m]).max() for m in scores)
    np.testing.assert_allclose(fused, manual)


def test_adaptive_drops_a_mode_whose_model_cannot_read_the_query():
    """Issue 26: with coverage at or below COVERAGE_LOW the dense mode gets no weight, so
    the ranking is that of bm25 alone, however the dense scores look."""
    rng = np.random.default_rng(0)
    n = 60
    scores = {"bm25": rng.gamma(1.0, 2.0, n), "dense": rng.normal(0.8, 0.05, n)}
    scores["dense"][3] = 2.0  # a very peaked dense mode still does not count
    w = {"bm25": 0.5, "dense": 0.5}
    got = fusion.adaptive(np.arange(n), scores, w, {"dense": fusion.COVERAGE_LOW})
    np.testing.assert_array_equal(np.argsort(-got, kind="stable"), np.argsort(-scores["bm25"], kind="stable"))
    assert fusion.adaptive_weights(scores, w, {"dense": 0.0})["dense"] == 0.0
    # full coverage: dense, peaked, now carries weight
    assert fusion.adaptive_weights(scores, w, {"dense": 1.0})["dense"] > 0.5


@pytest.mark.parametrize("cov", [0.0, 0.3, 0.55, 0.8, 1.0])
def test_coverage_fusion_is_relative_with_weights_scaled_by_coverage_only(cov):
    """``coverage``: w'_m = w_m * g(c_m), normalised; no evidence factor, so with every mode
    covered it is ``relative`` exactly however peaked the scores are."""
    rng = np.random.default_rng(1)
    n = 80
    scores = {"bm25": rng.gamma(1.0, 2.0, n), "dense": rng.normal(0.4, 0.1, n)}
    scores["bm25"][5] += 30.0
    w = {"bm25": 0.4, "dense": 0.6}
    g = min(max((cov - 0.3) / (0.8 - 0.3), 0.0), 1.0)   # COVERAGE_LOW 0.3, COVERAGE_HIGH 0.8
    want = {"bm25": 0.4 / (0.4 + 0.6 * g), "dense": 0.6 * g / (0.4 + 0.6 * g)}
    got = fusion.effective_weights("coverage", scores, w, {"dense": cov})
    assert got == pytest.approx(want)
    fused = fusion.fuse("coverage", np.arange(n), scores, w, coverage={"dense": cov})
    np.testing.assert_allclose(fused, sum(want[m] * scores[m] / np.abs(scores[m]).max() for m in scores))
    if cov >= 0.8:
        np.testing.assert_allclose(fused, fusion.relative(np.arange(n), scores, w))
    assert fusion.effective_weights("coverage", scores, w, {"dense": 1.0}) != \
        fusion.effective_weights("adaptive", scores, w, {"dense": 1.0})


def test_adaptive_with_no_covered_mode_falls_back_to_the_configured_weights():
    s = {"dense": np.array([0.3, 0.2, 0.1])}
    assert fusion.adaptive_weights(s, {"dense": 2.0}, {"dense": 0.0}) == {"dense": 1.0}
    np.testing.assert_allclose(fusion.adaptive(IDS, s, {"dense": 2.0}, {"dense": 0.0}), s["dense"] / 0.3)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_adaptive_rejects_coverage_outside_0_1(bad):
    with pytest.raises(ValueError, match="coverage"):
        fusion.adaptive(IDS, {"dense": np.array([1.0, 2.0, 3.0])}, {"dense": 1.0}, {"dense": bad})


def test_effective_weights():
    s = {"dense": np.array([0.3, 0.2, 0.1]), "bm25": np.array([1.0, 0.0, 2.0])}
    assert fusion.effective_weights("rrf", s, {"dense": 1.0, "bm25": 3.0}) == {"dense": 0.25, "bm25": 0.75}
    assert fusion.effective_weights("adaptive", s, {"dense": 1.0, "bm25": 3.0}, {"dense": 0.9}) == \
        fusion.adaptive_weights(s, {"dense": 1.0, "bm25": 3.0}, {"dense": 0.9})


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
