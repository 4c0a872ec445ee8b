"""The planner's per-candidate first-stage ranks (``hybridrag/search/planner.py``), against
positions read off each store's own hit list. The planner's ranking itself is tested against
brute force in ``tests/test_index.py``."""
from __future__ import annotations

import numpy as np
import pytest

from hybridrag.search import fusion, planner
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
    qd = rng.standard_normal((4, d)).astype(np.float32)
    qs = [{int(t): 1.0 for t in rng.choice(50, 3, replace=False)} for _ in range(4)] + [{999: 1.0}]
    qd = np.concatenate([qd, qd[:1]])   # a fifth query: no bm25 term the index knows
    hits = {"dense": dense.search(qd, 20), "bm25": sparse.search(qs, 20)}
    # two first stages (their union), and one alone (its hits in its order: its own code path)
    for modes in (["dense", "bm25"], ["dense"], ["bm25"]):
        plan = planner.QueryPlan(modes=modes, depths={m: 20 for m in modes}, weights={m: 1.0 for m in modes})
        out = planner.run(plan, {"dense": qd, "bm25": qs}, {"dense": dense, "bm25": sparse})
        for i, c in enumerate(out):
            found = np.concatenate([hits[m][1][i] for m in modes])
            assert sorted(c.slots.tolist()) == sorted(set(found[found >= 0].tolist()))
            for m in modes:
                np.testing.assert_array_equal(c.ranks[m], dict_ranks(hits[m][1][i], c.slots))
                assert (c.ranks[m] > 0).sum() == (hits[m][1][i] >= 0).sum()
                if len(modes) == 1:   # one mode: its exact scores, best first
                    order = np.argsort(c.ranks[m])
                    np.testing.assert_array_equal(c.scores[m][order], hits[m][0][i][: len(c.slots)])
            np.testing.assert_array_equal(np.argsort(-c.fused, kind="stable"), np.arange(len(c.slots)))


class _Counting:
    """A store that passes everything to ``store`` and keeps the candidates ``score`` got."""

    def __init__(self, store, exact: bool) -> None:
        self.store, self.search_scores_exact, self.scored = store, exact, []

    def search(self, *a, **kw):
        return self.store.search(*a, **kw)

    def score(self, queries, candidates):
        self.scored.append([np.asarray(c).copy() for c in candidates])
        return self.store.score(queries, candidates)


def test_run_rescores_only_what_an_exact_store_did_not_find_itself() -> None:
    """A store whose search scores are exact (the sparse index) is asked to score only the
    candidates other modes brought, and not at all in a one-mode search; the candidates, their
    scores and ranks are those of rescoring every candidate, bit for bit."""
    rng = np.random.default_rng(7)
    n, d = 500, 8
    dense = FaissStore(d)
    dense.add(np.arange(n), rng.standard_normal((n, d)).astype(np.float32))
    sparse = SparseIndex("bm25okapi")
    sparse.add(np.arange(n), [{int(t): float(rng.integers(1, 4)) for t in rng.choice(60, 6, replace=False)}
                              for _ in range(n)])
    qd = rng.standard_normal((5, d)).astype(np.float32)
    qs = [{int(t): 1.0 for t in rng.choice(60, 3, replace=False)} for _ in range(5)]
    for modes in (["bm25"], ["dense", "bm25"]):
        plan = planner.QueryPlan(modes=modes, depths={m: 25 for m in modes}, weights={m: 1.0 for m in modes},
                                 fusion="relative")
        got = {}
        for exact in (True, False):
            store = _Counting(sparse, exact)
            got[exact] = (planner.run(plan, {"dense": qd, "bm25": qs}, {"dense": dense, "bm25": store}), store)
        (fast, counted), (ref, _) = got[True], got[False]
        own = sparse.search(qs, 25)[1]
        if modes == ["bm25"]:
            assert counted.scored == []
        else:
            assert len(counted.scored) == 1
            for qi, c in enumerate(counted.scored[0]):
                assert len(c) and not np.isin(c, own[qi]).any()
        for a, b in zip(fast, ref):
            np.testing.assert_array_equal(a.slots, b.slots)
            np.testing.assert_array_equal(a.fused, b.fused)
            for m in modes:
                np.testing.assert_array_equal(a.scores[m], b.scores[m])
                np.testing.assert_array_equal(a.ranks[m], b.ranks[m])


def _wordpiece(vocab: list[str]):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordPiece({p: i for i, p in enumerate(vocab)}, unk_token="[UNK]"))
    raw.normalizer = normalizers.BertNormalizer(lowercase=True)
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")


def test_query_coverage_counts_words_the_vocabulary_reads() -> None:
    tok = _wordpiece(["[UNK]", "cat", "dog", "##s", "run", "##n", "##i", "##ng", "中", "t", "##a", "##c"])
    texts = [
        "Cats, dogs!",       # cat ##s, dog ##s: 4 characters in 2 pieces, covered: 2 of 2
        "running cat",       # run ##n ##i ##ng: 7 characters in 4 pieces (< 2 each): 1 of 2
        "tac cat",           # t ##a ##c: spelled letter by letter: 1 of 2
        "Katze läuft",       # unknown words: 0 of 2
        "中文 cat",           # ideographs are words of their own: 中 yes, 文 unk, cat yes: 2 of 3
        "?!",                # no word at all
        "कुत्ता dog",          # Devanagari letters and vowel signs form one (unknown) word: 1 of 2
    ]
    got = planner.query_coverage(tok, texts)
    np.testing.assert_allclose(got, [1.0, 0.5, 0.5, 0.0, 2 / 3, 0.0, 0.5])
    assert planner._words("कुत्ता dog") == ["कुत्ता", "dog"]


def test_term_coverage_is_the_share_of_terms_in_the_vocabulary() -> None:
    vocab = {"bone": 0, "vitamin": 1, "d": 2}
    got = planner.term_coverage([["vitamin", "d", "bone"], ["vitamin", "knochen"], [], ["维生素"]], vocab)
    np.testing.assert_allclose(got, [1.0, 0.5, 0.0, 0.0])


def test_run_returns_the_weights_fusion_used() -> None:
    rng = np.random.default_rng(5)
    n, d = 300, 8
    dense = FaissStore(d)
    dense.add(np.arange(n), rng.standard_normal((n, d)).astype(np.float32))
    sparse = SparseIndex("bm25okapi")
    sparse.add(np.arange(n), [{int(t): 1.0 for t in rng.choice(40, 5, replace=False)} for _ in range(n)])
    qd = rng.standard_normal((3, d)).astype(np.float32)
    qs = [{int(t): 1.0 for t in rng.choice(40, 3, replace=False)} for _ in range(3)]
    queries, stores = {"dense": qd, "bm25": qs}, {"dense": dense, "bm25": sparse}
    plan = planner.QueryPlan(modes=["dense", "bm25"], depths={"dense": 30, "bm25": 30},
                             weights={"dense": 1.0, "bm25": 3.0}, fusion="relative")
    for c in planner.run(plan, queries, stores):
        assert c.weights == {"dense": 0.25, "bm25": 0.75}
    plan.fusion = "adaptive"
    out = planner.run(plan, queries, stores, coverage={"dense": np.array([0.0, 1.0, 0.55])})
    assert out[0].weights["dense"] == 0.0  # the dense model read none of query 0
    for c, cov in zip(out, [0.0, 1.0, 0.55]):
        assert c.weights == pytest.approx(fusion.adaptive_weights(c.scores, plan.weights, {"dense": cov}))
        np.testing.assert_allclose(c.fused, fusion.adaptive(c.slots, c.scores, plan.weights, {"dense": cov}))


# ------------------------------------------------------------------ SearchOptions and the plan stage
from hybridrag import SearchOptions  # noqa: E402  (the public name, exported lazily)
from hybridrag.config import PipelineConfig  # noqa: E402
from hybridrag.search.plan import make_plan  # noqa: E402


@pytest.mark.parametrize("field, value, error, named", [
    ("k", 0, ValueError, "k must be a positive integer, got 0"),
    ("k", 2.0, TypeError, "k must be a positive integer, got float 2.0"),
    ("k", True, TypeError, "k must be a positive integer, got bool True"),
    ("k", None, TypeError, "k must be a positive integer, got NoneType None"),
    ("filters", [("year", 2020)], TypeError, "filters must be a dict, got list"),
    ("modes", 3, TypeError, "modes must be a mode name or a list of them, got 3"),
    ("modes", ["dense", 1], TypeError, r"modes must be .*\['dense', 1\]"),
    ("fusion", "max", ValueError, "unknown fusion 'max'; choose one of"),
    ("weights", [1.0], TypeError, "weights must be a dict of mode -> number, got list"),
    ("weights", {"dense": float("nan")}, ValueError, r"weights\['dense'\] = nan: a fusion weight must be"),
    ("weights", {"dense": -1}, ValueError, r"weights\['dense'\] = -1"),
    ("weights", {"dense": "1"}, ValueError, r"weights\['dense'\] = '1'"),
    ("depth", 0, ValueError, "depth must be a positive integer, got 0"),
    ("depth", "5", ValueError, "depth must be a positive integer, got '5'"),
    ("depth", {"bm25": 2.5}, ValueError, "depth for 'bm25' must be a positive integer, got 2.5"),
    ("rerank", "no", TypeError, "rerank must be True or False, got str 'no'"),
    ("rerank_k", 0, ValueError, "rerank_k must be a positive integer, got 0"),
    ("rerank_k", True, ValueError, "rerank_k must be a positive integer, got True"),
    ("rrf_k", -1, ValueError, "rrf_k must be an integer >= 0, got -1"),
    ("rrf_k", 1.5, ValueError, "rrf_k must be an integer >= 0, got 1.5"),
])
def test_search_options_name_each_bad_value(field, value, error, named) -> None:
    with pytest.raises(error, match=named):
        SearchOptions(**{field: value})
    with pytest.raises(error, match=named):  # replace() checks again
        SearchOptions().replace(**{field: value})


def test_search_options_normalise_copy_and_are_frozen() -> None:
    import dataclasses

    weights = {"dense": 1, "bm25": np.float32(0.5)}
    o = SearchOptions(k=np.int64(3), modes="dense", weights=weights, depth={"dense": np.int32(7)}, rerank=np.bool_(True))
    assert (o.k, o.modes, o.depth, o.rerank) == (3, ("dense",), {"dense": 7}, True)
    assert type(o.k) is int and type(o.depth["dense"]) is int and type(o.rerank) is bool
    weights["dense"] = 9   # the caller's dict is not the options' dict
    assert o.weights["dense"] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.k = 5
    assert o.overrides() == {"modes": ["dense"], "weights": {"dense": 1, "bm25": np.float32(0.5)},
                             "depth": {"dense": 7}, "rerank": True}
    assert SearchOptions().overrides() == {}


def test_search_options_build_takes_options_or_keywords_not_both() -> None:
    o = SearchOptions(k=3, fusion="rrf")
    assert SearchOptions.build(o) is o
    assert SearchOptions.build(None, 4, {"a": 1}, fusion="rrf", rerank=None) == SearchOptions(4, {"a": 1}, fusion="rrf")
    with pytest.raises(TypeError, match=r"unknown search option\(s\) \['bogus', 'top_k'\]"):
        SearchOptions.build(None, 3, top_k=3, bogus=1)
    with pytest.raises(TypeError, match=r"pass the settings \['fusion', 'k'\] inside options"):
        SearchOptions.build(o, 5, fusion="relative")
    with pytest.raises(TypeError, match=r"\['filters'\] inside options"):
        SearchOptions.build(o, filters={"a": 1})
    with pytest.raises(TypeError, match="options must be a SearchOptions, got dict"):
        SearchOptions.build({"k": 3})
    with pytest.raises(TypeError, match=r"unknown search option\(s\) \['top_k'\]"):
        o.replace(top_k=3)


def _pipeline(**over):
    p = {"name": "p", "encoder": {"kind": "m3", "model": "unused"},
         "dense": {"enabled": True, "depth": 50}, "sparse": {"enabled": False}, "bm25": {"enabled": True, "depth": 20},
         "colbert": {"enabled": True}, "rerank": {"enabled": False, "k": 30},
         "fusion": {"method": "relative", "rrf_k": 7, "weights": {"dense": 1.0, "bm25": 0.5, "colbert": 1.0}}}
    for key, v in over.items():
        p[key].update(v)
    return PipelineConfig.from_dict(p)


def test_plan_takes_the_pipeline_for_what_options_leave_none() -> None:
    plan = make_plan(SearchOptions(k=5), _pipeline(), live=1000)
    assert (plan.modes, plan.depths, plan.fusion, plan.rrf_k, plan.k, plan.rerank, plan.rerank_k) == \
        (["dense", "bm25", "colbert"], {"dense": 50, "bm25": 20}, "relative", 7, 5, False, 30)
    assert plan.weights == {"dense": 1.0, "bm25": 0.5, "colbert": 1.0}
    plan = make_plan(SearchOptions(k=5, modes=["bm25", "colbert"], fusion="rrf", rrf_k=0, depth={"bm25": 3},
                                   rerank=True, rerank_k=2, weights={"bm25": 1, "colbert": 2}), _pipeline(), 1000)
    # modes in the pipeline's order; depth and rerank_k raised to k
    assert (plan.modes, plan.depths, plan.fusion, plan.rrf_k, plan.rerank, plan.rerank_k) == \
        (["bm25", "colbert"], {"bm25": 5}, "rrf", 0, True, 5)


def test_plan_asks_one_mode_for_k_only_when_nothing_else_could_reorder() -> None:
    def depths(**kw):
        return make_plan(SearchOptions(k=5, **kw), _pipeline(), live=1000).depths

    assert depths(modes=["bm25"]) == {"bm25": 5}                    # relative: BM25's scores are never negative
    assert depths(modes=["dense"]) == {"dense": 50}                 # relative over dense: max |s| may be the last's
    assert depths(modes=["dense"], fusion="weighted") == {"dense": 5}
    assert depths(modes=["dense"], fusion="rrf", depth=80) == {"dense": 5}
    assert depths(modes=["bm25"], fusion="adaptive") == {"bm25": 20}
    assert depths(modes=["bm25"], rerank=True) == {"bm25": 20}      # the reranker reads past k
    assert depths(modes=["bm25", "colbert"]) == {"bm25": 20}        # ColBERT's scores reorder
    assert depths() == {"dense": 50, "bm25": 20}


def test_plan_caps_k_depth_and_rerank_k_at_the_live_chunks() -> None:
    plan = make_plan(SearchOptions(k=10**9, depth=10**9, rerank_k=10**9), _pipeline(), live=12)
    assert (plan.k, plan.depths, plan.rerank_k) == (12, {"dense": 12, "bm25": 12}, 12)
    assert make_plan(SearchOptions(), _pipeline(), live=0).k == 1


@pytest.mark.parametrize("options, named", [
    (SearchOptions(modes=["splade"]), r"mode\(s\) \['splade'\] are not enabled in this index"),
    (SearchOptions(modes=["sparse", "dense"]), r"mode\(s\) \['sparse'\] are not enabled"),
    (SearchOptions(modes="colbert"), r"modes \['colbert'\]: colbert only rescores"),
    (SearchOptions(weights={"dense": 1.0}), r"no fusion weight for mode\(s\) \['bm25', 'colbert'\]"),
    (SearchOptions(depth={"colbert": 5}), "depth given for mode 'colbert', which is not a first stage here"),
])
def test_plan_names_what_the_index_does_not_have(options, named) -> None:
    with pytest.raises(ValueError, match=named):
        make_plan(options, _pipeline(), live=10)
