"""``hybridrag tune`` (hybridrag/eval/tune.py) and pipeline versions (hybridrag/storage/versions.py).

The index: the shipped 250-abstract SciFact sample (30 judged queries) with a tiny random BERT
and BM25, relative fusion. Each setting's nDCG@10 that tune computes from stored candidates is
checked against a real search with that setting, scored by hybridrag's trec_eval metrics.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from hybridrag import HybridIndex
from hybridrag.cli import main
from hybridrag.errors import ConfigError
from hybridrag.eval import ablation, tune as tune_mod
from hybridrag.eval.beir import load_beir
from hybridrag.eval.fusion_eval import collect
from hybridrag.eval.metrics import evaluate_per_query
from hybridrag.storage.check import check_index

SAMPLE = Path(__file__).resolve().parent.parent / "hybridrag" / "data" / "scifact-sample"

PIPELINE_TOML = """name = "tiny-tune"
[encoder]
kind = "dense"
model = "{model}"
max_length = 128
[chunking]
max_tokens = 120
overlap = 16
[dense]
depth = 100
[sparse]
enabled = false
[bm25]
enabled = true
depth = 100
[colbert]
enabled = false
[fusion]
method = "relative"
weights = {{ dense = 0.5, bm25 = 0.5 }}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory, bert_dir):
    """(index directory, pipeline TOML): the sample's judged abstracts and as many others, built
    once; tests that change the index copy it."""
    root = tmp_path_factory.mktemp("tune")
    toml = root / "tiny.toml"
    toml.write_text(PIPELINE_TOML.format(model=bert_dir), encoding="utf-8")
    idx = HybridIndex.create(root / "idx", str(toml))
    idx.add(_sample_documents())
    idx.close()
    return root / "idx", toml


def _sample_documents(others: int | None = None):
    """The sample's judged abstracts and ``others`` more (default: as many)."""
    data = load_beir(SAMPLE)
    judged = {d for q in data.qrels.values() for d in q}
    others = [d for d in sorted(data.corpus) if d not in judged][:len(judged) if others is None else others]
    data.corpus = {d: e for d, e in data.corpus.items() if d in judged or d in others}
    return list(data.documents())


def _grid_size(path) -> int:
    idx = HybridIndex.load(path)
    try:
        return len(tune_mod.grid(idx.pipeline))
    finally:
        idx.close()


def _copy(built, tmp_path):
    d = tmp_path / "idx"
    shutil.copytree(built[0], d)
    return d


def _assert_scores_are_real_searches(idx, picks):
    """score_matrix's nDCG@10 for each setting == nDCG@10 of search_batch with that setting."""
    data = load_beir(SAMPLE)
    qids = sorted(data.queries)
    texts = [data.queries[q] for q in qids]
    cands = collect(idx, qids, texts)
    got = tune_mod.score_matrix(cands, data.qrels, picks)
    for row, s in zip(got, picks):
        depths = dict(s.depths)
        k = min(depths.values())   # a search returns k chunks of the candidates at these depths
        results = idx.search_batch(texts, k=k, depth=depths, fusion=s.method, weights=dict(s.weights),
                                   rrf_k=s.rrf_k, rerank=False)
        run = {q: ablation.doc_run(hits) for q, hits in zip(qids, results)}
        want = evaluate_per_query(run, {q: data.qrels[q] for q in qids}, ["ndcg@10"])["ndcg@10"]
        # the k returned chunks hold a query's top 10 documents unless fewer than 10 are found
        full = [i for i, q in enumerate(qids) if len(run[q]) >= 10]
        assert len(full) >= 20, s.describe()
        np.testing.assert_allclose(row[full], [want[qids[i]] for i in full], atol=1e-12, err_msg=s.describe())


def test_each_settings_score_is_that_of_a_real_search(built):
    idx = HybridIndex.load(built[0])
    try:
        settings = tune_mod.grid(idx.pipeline)
        assert settings[0].settings()["fusion.method"] == "relative"   # the pipeline's own first
        deep = tune_mod.grid(idx.pipeline.replace(**{"dense.depth": 500}), max_depth=500)
        assert dict(deep[0].depths) == {"dense": 500, "bm25": 100}   # a pipeline deeper than 300 keeps its depth
        methods = {s.method for s in settings}
        assert methods == {"weighted", "relative", "rrf", "adaptive", "coverage"}
        picks = [settings[0]]
        rng = np.random.default_rng(1)
        for method in sorted(methods):
            same = [s for s in settings if s.method == method and dict(s.depths)["dense"] != dict(s.depths)["bm25"]]
            picks += [same[i] for i in rng.choice(len(same), 2, replace=False)]
        _assert_scores_are_real_searches(idx, picks)
    finally:
        idx.close()


def test_colbert_and_three_first_stages(tmp_path, m3_dir):
    """An M3 pipeline: ColBERT rescores (a weight, no depth), three first stages share one depth."""
    from test_index import m3_pipeline

    idx = HybridIndex.create(tmp_path / "m3", m3_pipeline(m3_dir, dense={"depth": 30}, sparse={"depth": 30},
                                                          bm25={"depth": 30}))
    try:
        idx.add(_sample_documents(others=5))
        settings = tune_mod.grid(idx.pipeline)
        assert {len(set(dict(s.depths).values())) for s in settings} == {1}
        assert all(set(dict(s.depths)) == {"dense", "sparse", "bm25"} for s in settings)
        assert len({s.weights for s in settings}) == 56   # steps of 0.2 over 4 modes (the pipeline's among them)
        rng = np.random.default_rng(2)
        picks = [settings[0]]
        for method in ("weighted", "relative", "rrf", "adaptive", "coverage"):
            same = [s for s in settings if s.method == method and dict(s.weights)["colbert"] > 0
                    and min(dict(s.depths).values()) >= 25]
            picks.append(same[rng.integers(len(same))])
        _assert_scores_are_real_searches(idx, picks)
    finally:
        idx.close()


def test_a_fold_is_chosen_without_its_own_queries():
    """Setting 1 wins on fold 0's queries by far, setting 2 on the rest: fold 0 must pick 2."""
    n = 25
    folds = tune_mod.make_folds(n, 5, seed=3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(n))   # disjoint, complete
    scores = np.full((3, n), 0.5)
    scores[1, folds[0]] = 1.0
    scores[2, :] = 0.6
    scores[2, folds[0]] = 0.0
    cv = tune_mod.cross_validate(scores, folds)
    assert cv[0][0] == 2 and cv[0][3] == 0.0          # chosen elsewhere, scored 0 on its own queries
    assert all(c[0] == 1 for c in cv[1:])             # fold 0's queries make 1 the best elsewhere
    assert tune_mod.choose(scores[[0, 0]], np.arange(n)) == 0   # a tie keeps the active setting
    held = tune_mod.held_out(scores, folds, cv)
    np.testing.assert_array_equal(held, np.where(np.isin(np.arange(n), folds[0]), 0.0, 0.5))


def test_changing_a_folds_labels_never_changes_its_own_choice(built, tmp_path):
    """End to end: the relevance labels of fold 2's queries replaced by others; fold 2's chosen
    setting stays, while its scores (and the choices of folds that trained on it) follow."""
    idx = HybridIndex.load(built[0])
    try:
        first = tune_mod.tune(idx, str(SAMPLE), folds=5, seed=7, store=False)
        folder = tmp_path / "beir"
        shutil.copytree(SAMPLE, folder)
        data = load_beir(SAMPLE)
        qids = sorted(data.queries)
        held = [qids[i] for i in tune_mod.make_folds(len(qids), 5, seed=7)[2]]
        docs = sorted(data.corpus)
        lines = ["query-id\tcorpus-id\tscore"]
        for i, q in enumerate(qids):
            judged = data.qrels[q] if q not in held else {docs[(7 * i) % len(docs)]: 1, docs[(11 * i + 3) % len(docs)]: 2}
            lines += [f"{q}\t{d}\t{r}" for d, r in judged.items()]
        (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        second = tune_mod.tune(idx, str(folder), folds=5, seed=7, store=False)
    finally:
        idx.close()
    assert second.folds[2].chosen == first.folds[2].chosen
    assert (second.folds[2].before, second.folds[2].after) != (first.folds[2].before, first.folds[2].after)
    assert [f.queries for f in second.folds] == [f.queries for f in first.folds]
    assert first.settings_scored == _grid_size(built[0])


def test_tune_stores_a_version_and_the_old_one_stays_selectable(built, tmp_path, capsys):
    d = _copy(built, tmp_path)
    toml = built[1]
    data = load_beir(SAMPLE)
    queries = [data.queries[q] for q in sorted(data.queries)][:5]
    idx = HybridIndex.load(d)
    before = [[(h.chunk_id, h.score) for h in r] for r in idx.search_batch(queries, k=5)]
    gen = idx.generation
    report = tune_mod.tune(idx, str(SAMPLE), folds=5, store=True, force=True)
    assert report.best != report.baseline and report.version == 2
    assert idx.generation == gen + 1
    best = report.best.settings()
    assert idx.pipeline.fusion.method == best["fusion.method"]
    assert idx.pipeline.fusion.weights == best["fusion.weights"]
    idx.close()

    idx = HybridIndex.load(d, verify=True)
    try:
        versions = idx.pipeline_versions()
        assert [(v.version, v.active) for v in versions] == [(1, False), (2, True)]
        assert versions[1].settings == {**versions[0].settings, **best}
        assert "tune" in versions[1].note and f"{report.before:.4f}" in versions[1].note
        assert (idx.pipeline.dense.depth, idx.pipeline.bm25.depth) == (best["dense.depth"], best["bm25.depth"])
        # version 1 per call: the searches of before the tuning, exactly
        old = [[(h.chunk_id, h.score) for h in r] for r in idx.search_batch(queries, options=versions[0].options(k=5))]
        assert old == before
        tuned = [[(h.chunk_id, h.score) for h in r] for r in idx.search_batch(queries, k=5)]
        assert tuned != before
    finally:
        idx.close()
    assert check_index(d) == []

    # the CLI lists the versions and makes version 1 active again (a commit)
    assert main(["pipeline", str(d)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("    1 ") and out[1].startswith("*   2 ") and "tune" in out[1]
    assert main(["pipeline", str(d), "--use", "1", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["active"] for v in listed] == [True, False]
    idx = HybridIndex.load(d)
    try:
        assert [[(h.chunk_id, h.score) for h in r] for r in idx.search_batch(queries, k=5)] == before
    finally:
        idx.close()
    # the pipeline file the index was made with still opens it for ingest; another one is refused
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "new.txt").write_text("Vitamin D and bone fractures in the elderly.", encoding="utf-8")
    assert main(["ingest", str(extra), "--index", str(d), "--pipeline", str(toml), "-q"]) == 0
    other = tmp_path / "other.toml"
    other.write_text(toml.read_text().replace("dense = 0.5, bm25 = 0.5", "dense = 0.2, bm25 = 0.8"))
    assert main(["ingest", str(extra), "--index", str(d), "--pipeline", str(other), "-q"]) != 0
    assert "fusion.weights" in capsys.readouterr().err
    assert main(["pipeline", str(d), "--use", "7"]) != 0
    assert "no pipeline version 7" in capsys.readouterr().err


def test_the_cli_reports_folds_and_stores_nothing_on_a_dry_run(built, tmp_path, capsys):
    d = _copy(built, tmp_path)
    gen = json.loads((d / "manifest.json").read_text())["generation"]
    judged = tmp_path / "judged"   # queries and judgments only: the index holds the documents
    shutil.copytree(SAMPLE / "qrels", judged / "qrels")
    shutil.copy(SAMPLE / "queries.jsonl", judged)
    assert main(["tune", str(d), "--beir", str(judged), "--folds", "3", "--dry-run"]) == 0
    cap = capsys.readouterr()
    out = cap.out
    n = _grid_size(d)
    # each bar shows its total from its first draw (tqdm throttles later draws, so the last one may not show)
    assert re.search(r"retrieving candidates: +0%\|[^|]*\| 0/30 ", cap.err), cap.err
    assert re.search(rf"scoring {n} settings: +0%\|[^|]*\| 0/30 ", cap.err), cap.err
    assert "30 queries, 3 folds" in out and out.count("\n| ") == 5   # header + 3 folds + all
    assert json.loads((d / "manifest.json").read_text())["generation"] == gen
    assert main(["tune", str(d), "--beir", str(judged), "--folds", "3", "--json", "-q"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert len(rep["folds"]) == 3 and sum(f["queries"] for f in rep["folds"]) == 30
    assert rep["after"] == pytest.approx(sum(f["after"] * f["queries"] for f in rep["folds"]) / 30)
    stored = rep["version"] is not None
    assert rep["gain_se"] >= 0 and "standard error" in out
    assert stored == (rep["after"] - rep["before"] > 2 * rep["gain_se"]), rep["notes"]
    m = json.loads((d / "manifest.json").read_text())
    assert m["pipeline_version"] == (2 if stored else 1)


def test_bad_input_is_refused_with_the_value_named(built, tmp_path):
    d = _copy(built, tmp_path)
    idx = HybridIndex.load(d)
    gen = idx.generation
    try:
        with pytest.raises(ValueError, match="at least 20"):
            tune_mod.tune(idx, str(SAMPLE), max_queries=12, store=False)
        with pytest.raises(ValueError, match="folds must be an integer >= 2, got 1"):
            tune_mod.tune(idx, str(SAMPLE), folds=1, store=False)
        with pytest.raises(ValueError, match="at least 31"):
            tune_mod.tune(idx, str(SAMPLE), folds=31, store=False)
        with pytest.raises(ConfigError, match="bm25.k1"):
            idx.add_pipeline_version({"bm25.k1": 1.2})
        with pytest.raises(ConfigError, match="'sparse.depth'"):
            idx.add_pipeline_version({"sparse.depth": 10})
        with pytest.raises(ConfigError, match=r"no weight for enabled mode\(s\) \['bm25'\]"):
            idx.add_pipeline_version({"fusion.weights": {"dense": 1.0}})
        with pytest.raises(ConfigError, match="fusion.method"):
            idx.add_pipeline_version({"fusion.method": "max"})
        with pytest.raises(ValueError, match="no pipeline version 3"):
            idx.use_pipeline_version(3)
        with pytest.raises(TypeError, match="version must be an int .* got '1'"):   # "no version '1'" before
            idx.use_pipeline_version("1")
        # a version that changes nothing, or switches on a reranker that cannot load here, was made
        # and made active (then every query failed until another version was): refused now
        with pytest.raises(ValueError, match="change nothing: version 1 has them already"):
            idx.add_pipeline_version({})
        with pytest.raises(ValueError, match="change nothing"):
            idx.add_pipeline_version({"fusion.method": idx.pipeline.fusion.method})
        if not idx.pipeline.rerank.enabled:
            from hybridrag.errors import ModelLoadError

            with pytest.raises(ModelLoadError):
                idx.add_pipeline_version({"rerank.enabled": True, "rerank.k": 5})
        assert [v.version for v in idx.pipeline_versions()] == [1] and idx.generation == gen
    finally:
        idx.close()
    # a manifest naming an active version it does not hold is refused at load, naming the file
    from hybridrag.errors import IndexFormatError
    from hybridrag.storage.manifest import read_manifest, write_manifest

    m = read_manifest(d)
    m["pipeline_version"] = 9
    write_manifest(d, m)
    with pytest.raises(IndexFormatError, match=r"manifest.json: .*pipeline_version.*active 9"):
        HybridIndex.load(d)
