"""A time budget the search keeps (issue 25, item 3; hybridrag/search/budget.py): the rerank
depth and passage length follow the cost model, a budget too small for any rerank says so, the
cost model is measured once and kept, and bad budgets are refused by name."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hybridrag.errors import ConfigError
from hybridrag.index import HybridIndex
from hybridrag.search import budget
from hybridrag.search.budget import RerankCost, choose
from test_index import QUERIES, _Counting, docs, m3_pipeline

K, RERANK_K = 3, 8


def _brute_choice(cost, lengths, k, rerank_k, max_length, min_length, batch, left):
    """The rule of choose(), by trying every depth and every token limit in order."""
    def c(n, cap):
        return cost.predict([min(v, cap) for ls in lengths for v in ls[:n]], batch)

    lo = max(1, min(k, rerank_k))
    fits = [n for n in range(lo, rerank_k + 1) if c(n, max_length) <= left]
    if fits:
        return max(fits), max_length
    caps = [cap for cap in range(min_length, max_length) if c(lo, cap) <= left]
    return (lo, max(caps)) if caps else (0, min_length)


def test_rerank_cost_is_its_formula():
    cost = RerankCost(a=0.01, b=2e-4, c=3e-7, scale=1.5)
    lengths, batch = [40, 300, 12, 300, 77], 2
    ls = sorted(lengths, reverse=True)   # batches: [300, 300], [77, 40], [12]
    want = 0.01 + 2 * (2e-4 * 300 + 3e-7 * 300 ** 2) + 2 * (2e-4 * 77 + 3e-7 * 77 ** 2) + (2e-4 * 12 + 3e-7 * 144)
    assert ls[0] == 300
    assert cost.raw(lengths, batch) == pytest.approx(want)
    assert cost.predict(lengths, batch) == pytest.approx(1.5 * want)
    cost.observe(lengths, batch, 10 * want)   # much slower than predicted: the scale follows, bounded
    assert 1.5 < cost.scale <= 4.0
    for _ in range(50):
        cost.observe(lengths, batch, 10 * want)
    assert cost.scale == 4.0


def test_choose_takes_the_deepest_rerank_that_fits_then_shorter_passages():
    rng = np.random.default_rng(0)
    seen = set()
    for trial in range(200):
        cost = RerankCost(a=float(rng.uniform(0, 0.05)), b=float(rng.uniform(1e-5, 1e-3)),
                          c=float(rng.uniform(0, 1e-6)))
        nq = int(rng.integers(1, 4))
        lengths = [sorted(rng.integers(8, 512, size=int(rng.integers(1, 12))).tolist(), reverse=bool(trial % 2))
                   for _ in range(nq)]
        left = float(rng.uniform(0, 3))
        args = (cost, lengths, K, RERANK_K, 512, 64, 4, left)
        got = choose(*args)
        assert (got.depth, got.max_length) == _brute_choice(*args)
        if got.depth:
            assert got.predicted_s <= left
        seen.add("full" if got.depth and got.max_length == 512 else "short" if got.depth else "none")
    assert seen == {"full", "short", "none"}   # every branch was exercised


@pytest.fixture
def sharp_reranker(tmp_path, reranker_dir):
    """The tiny reranker with spread-out weights (distinct scores), as in test_index."""
    import shutil

    from test_reranker import _scale_weights

    sharp = tmp_path / "sharp-reranker"
    shutil.copytree(reranker_dir, sharp)
    _scale_weights(sharp, seed=5)
    return sharp


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv(budget.CACHE_ENV, str(d))
    monkeypatch.setattr(budget, "_MODELS", {})
    return d


@pytest.fixture
def ranked(tmp_path, m3_dir, sharp_reranker, cache_dir):
    from hybridrag.rerankers.cross_encoder import CrossEncoderReranker

    counting = _Counting(CrossEncoderReranker.from_pretrained(str(sharp_reranker), max_length=128))
    kw = []
    inner = counting.compute_score

    def recording(pairs, **k):
        kw.append(k)
        return inner(pairs, **k)

    counting.compute_score = recording
    idx = HybridIndex.create(tmp_path / "r", m3_pipeline(m3_dir, rerank={
        "enabled": True, "model": str(sharp_reranker), "k": RERANK_K, "max_length": 128}), reranker=counting)
    idx.add(docs())
    yield idx, counting, kw
    idx.close()


def test_a_large_budget_reranks_as_without_one_and_keeps_the_measured_cost(ranked, cache_dir, monkeypatch):
    idx, counting, kw = ranked
    plain = idx.search_batch(QUERIES, k=K)
    pairs = counting.calls[-1]   # every query's fused candidates up to rerank.k
    counting.calls.clear()
    kw.clear()
    got = idx.search_batch(QUERIES, k=K, budget_ms=1e9)
    assert [[(h.chunk_id, h.score) for h in r] for r in got] == [[(h.chunk_id, h.score) for h in r] for r in plain]
    t = got[0].timing
    assert t is not None and t["rerank_depth"] == RERANK_K and t["rerank_max_length"] == 128
    assert "cost_model_ms" in t and any("measured in this call" in n for n in got[0].notes)
    assert t["total_ms"] >= t["retrieval_ms"] > 0 and t["rerank_ms"] > 0
    assert counting.calls[-1] == pairs and kw[-1] == {"normalize": False, "batch_size": 32}
    entry = json.loads(budget.cache_file().read_text())
    assert len(entry) == 1 and all(math.isfinite(v["a"] + v["b"] + v["c"]) for v in entry.values())
    # kept: a new process (empty memory) reads the file and measures nothing
    monkeypatch.setattr(budget, "_MODELS", {})
    monkeypatch.setattr(budget, "calibrate", lambda *a: pytest.fail("measured again"))
    again = idx.search("vitamin D bone", k=K, budget_ms=1e9)
    assert "cost_model_ms" not in again.timing and not again.notes
    assert plain[0] and idx.search("vitamin D bone", k=K).timing is None   # no budget: no timing


def test_the_rerank_depth_and_passage_length_follow_the_cost_model(ranked, cache_dir):
    idx, counting, kw = ranked
    rr = idx.reranker
    # A model where each pair costs about a second: retrieval's milliseconds are noise beside it.
    key = budget._key(rr)
    model = budget._MODELS[key] = RerankCost(a=0.0, b=0.02, c=0.0)
    q = "vitamin D bone fractures"
    fused = idx.search(q, k=RERANK_K, depth=RERANK_K, rerank=False)   # the candidates the budget sees
    assert len(fused) == RERANK_K
    lengths = rr.pair_lengths([(q, h.text) for h in fused])
    for depth in (K, K + 2, RERANK_K):
        # halfway between this depth's predicted cost and the next one's
        budget_ms = 1000 * (model.predict(lengths[:depth], 32) + 0.5 * 0.02 * (lengths + [50])[depth]) / budget.HEADROOM
        counting.calls.clear()
        kw.clear()
        res = idx.search(q, k=K, depth=RERANK_K, budget_ms=budget_ms)
        assert res.timing["rerank_depth"] == depth, (depth, res.timing)
        assert counting.calls == [depth] and "max_length" not in kw[0]
        assert res.timing["predicted_rerank_ms"] <= budget.HEADROOM * budget_ms
        model.scale = 1.0   # the tiny model is far faster than this model says: undo what it learnt
    # K passages at 128 tokens do not fit, at 64 they do (and at 65 not): shorter passages
    short = [min(v, 64) for v in lengths[:K]]
    step = 0.02 * sum(v > 64 for v in lengths[:K])   # what one more token of limit costs
    assert step > 0
    budget_ms = 1000 * (model.predict(short, 32) + 0.5 * step) / budget.HEADROOM
    assert model.predict(lengths[:K], 32) * 1000 > budget.HEADROOM * budget_ms
    counting.calls.clear()
    kw.clear()
    res = idx.search(q, k=K, depth=RERANK_K, budget_ms=budget_ms)
    assert res.timing["rerank_depth"] == K and res.timing["rerank_max_length"] == 64
    assert counting.calls == [K] and kw[0]["max_length"] == 64


def test_a_budget_too_small_for_any_rerank_says_so(ranked, cache_dir):
    idx, counting, _ = ranked
    budget._MODELS[budget._key(idx.reranker)] = RerankCost(a=1.0, b=0.0, c=0.0)   # any rerank: 1 s
    counting.calls.clear()
    res = idx.search("vitamin D bone", k=K, budget_ms=500)
    fused = idx.search("vitamin D bone", k=K, rerank=False)
    assert counting.calls == []
    assert [(h.chunk_id, h.score) for h in res] == [(h.chunk_id, h.score) for h in fused]
    assert res.timing["rerank_depth"] == 0
    assert any("not reranked" in n and "500 ms" in n for n in res.notes), res.notes


def test_bad_budgets_are_refused_by_name(ranked, m3_dir):
    idx = ranked[0]
    for bad in (-1, float("nan"), float("inf"), True, "1s"):
        with pytest.raises(ValueError, match="budget_ms"):
            idx.search("vitamin", budget_ms=bad)
    with pytest.raises(ConfigError, match="rerank.budget_ms"):
        HybridIndex.create(idx.path.parent / "bad", m3_pipeline(m3_dir, rerank={"budget_ms": -5}))
    with pytest.raises(ConfigError, match="rerank.min_length"):
        HybridIndex.create(idx.path.parent / "bad", m3_pipeline(m3_dir, rerank={"max_length": 128, "min_length": 256}))


def test_pipeline_budget_and_cli_explain(tmp_path, m3_dir, sharp_reranker, cache_dir, capsys):
    from hybridrag.cli import main

    d = tmp_path / "p"
    idx = HybridIndex.create(d, m3_pipeline(m3_dir, rerank={"enabled": True, "model": str(sharp_reranker), "k": 6,
                                                            "max_length": 128, "budget_ms": 1e7}))
    idx.add(docs())
    first = idx.search("vitamin", k=2)   # loads the reranker first: once per process, not counted
    assert first.timing["budget_ms"] == 1e7 and first.timing["models_loaded_ms"] > 0   # the pipeline's budget
    assert "models_loaded_ms" not in idx.search("vitamin", k=2).timing
    assert idx.search("vitamin", k=2, budget_ms=0).timing is None        # switched off per call
    idx.close()
    assert main(["query", str(d), "vitamin D", "-k", "2", "--explain", "--budget-ms", "100000"]) == 0
    out = capsys.readouterr().out
    assert "budget: retrieval" in out and "rerank top 6 at <= 128 tokens: predicted" in out and "(of 100,000 ms)" in out
    assert "models loaded" in out and "(not counted)" in out   # a new process loads its models
    assert main(["query", str(d), "vitamin D", "-k", "2", "--explain", "--budget-ms", "1e300", "--no-rerank"]) == 0
    out = capsys.readouterr().out
    assert "no rerank in this call (rerank off): the budget had nothing to choose" in out and "(of 1e+300 ms)" in out
    # --json --explain: the HTTP API's body, timing included; --json alone stays a list of hits
    assert main(["query", str(d), "vitamin D", "-k", "2", "--json", "--explain", "--budget-ms", "100000"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["timing"]["budget_ms"] == 100000 and body["timing"]["rerank_depth"] == 6
    assert len(body["hits"]) == 2 and "rerank" in body["hits"][0]["scores"] and body["notes"] == []
    assert main(["query", str(d), "vitamin D", "-k", "2", "--json", "--explain", "--budget-ms", "0"]) == 0
    assert "timing" not in json.loads(capsys.readouterr().out)
    assert main(["query", str(d), "vitamin D", "-k", "2", "--json", "--budget-ms", "100000"]) == 0
    assert [h["doc_id"] for h in json.loads(capsys.readouterr().out)] == [h["doc_id"] for h in body["hits"]]


def test_the_http_api_takes_a_budget_and_reports_its_timing(tmp_path, m3_dir, sharp_reranker, cache_dir):
    from hybridrag.server import build
    from hybridrag.server.config import Limits
    from test_serve import Server, call

    d = tmp_path / "s"
    idx = HybridIndex.create(d, m3_pipeline(m3_dir, rerank={"enabled": True, "model": str(sharp_reranker), "k": 6,
                                                            "max_length": 128}))
    idx.add(docs())
    want = idx.search("vitamin D", k=3, budget_ms=1e7)
    idx.close()
    app, _ = build(d, api_key="", limits=Limits())
    s = Server(app)
    try:
        status, out, _ = call(s.url, "POST", "/search", {"query": "vitamin D", "k": 3, "budget_ms": 10000000})
        assert status == 200, out
        assert [h["chunk_id"] for h in out["hits"]] == [h.chunk_id for h in want]
        assert out["timing"]["budget_ms"] == 1e7 and out["timing"]["rerank_depth"] == want.timing["rerank_depth"]
        status, out, _ = call(s.url, "POST", "/search", {"query": "vitamin D", "k": 3})
        assert status == 200 and "timing" not in out
        status, out, _ = call(s.url, "POST", "/search", {"query": "vitamin D", "budget_ms": -1})
        assert status == 400 and "budget_ms" in out["detail"], out
    finally:
        s.stop()
