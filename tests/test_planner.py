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
