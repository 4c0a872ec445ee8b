"""BEIR loader (on the shipped SciFact sample) and metrics checked against ranx."""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hybridrag.eval import (
    BeirData,
    evaluate,
    evaluate_per_query,
    iter_beir_corpus,
    load_beir,
    rank_documents,
    read_qrels,
    results_table,
)
from hybridrag.eval.metrics import parse_metric

SAMPLE = Path(__file__).resolve().parent.parent / "hybridrag" / "data" / "scifact-sample"


# ------------------------------------------------------------------ BEIR loader

def test_load_beir_sample() -> None:
    data = load_beir(SAMPLE)
    assert isinstance(data, BeirData)
    assert (len(data.corpus), len(data.queries), len(data.qrels)) == (250, 30, 30)
    assert sum(len(v) for v in data.qrels.values()) == 34
    assert set(data.queries) == set(data.qrels)
    assert data.missing_docs == []
    assert all(d in data.corpus for judged in data.qrels.values() for d in judged)
    doc_id, entry = next(iter(data.corpus.items()))
    assert set(entry) == {"title", "text"}
    doc = next(data.documents())
    assert doc.id == doc_id and doc.text == entry["title"] + "\n\n" + entry["text"]


def test_sample_is_small_and_lf() -> None:
    total = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert total < 400_000
    assert b"\r\n" not in (SAMPLE / "qrels" / "test.tsv").read_bytes()


def _write_beir(folder: Path, qrels_text: str, *, extra_query: bool = True) -> None:
    (folder / "qrels").mkdir(parents=True)
    corpus = [{"_id": "d1", "title": "T1", "text": "one"}, {"_id": "d2", "title": "", "text": "two"},
              {"_id": "d3", "title": "T3", "text": "three", "metadata": {}}]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in corpus), encoding="utf-8")
    queries = [{"_id": "q1", "text": "first"}, {"_id": "q2", "text": "second"}]
    if extra_query:
        queries.append({"_id": "q9", "text": "train only"})
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (folder / "qrels" / "test.tsv").write_bytes(qrels_text.encode("utf-8"))


def test_load_beir_crlf_header_and_query_restriction(tmp_path: Path) -> None:
    _write_beir(tmp_path, "query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq1\td3\t2\r\nq2\td2\t0\r\n")
    data = load_beir(tmp_path)
    assert data.qrels == {"q1": {"d1": 1, "d3": 2}, "q2": {"d2": 0}}
    assert data.queries == {"q1": "first", "q2": "second"}  # q9 has no test judgments
    texts = {d.id: d.text for d in data.documents()}
    assert texts == {"d1": "T1\n\none", "d2": "two", "d3": "T3\n\nthree"}


def test_read_qrels_without_header_and_trec_format(tmp_path: Path) -> None:
    p = tmp_path / "q.tsv"
    p.write_text("q1\td1\t1\nq1\td2\t0\n", encoding="utf-8")
    assert read_qrels(p) == {"q1": {"d1": 1, "d2": 0}}
    p.write_text("q1 0 d1 2\nq2 0 d5 1\n", encoding="utf-8")
    assert read_qrels(p) == {"q1": {"d1": 2}, "q2": {"d5": 1}}


def test_load_beir_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_beir(tmp_path / "nowhere")
    _write_beir(tmp_path / "a", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(FileNotFoundError, match=r"dev\.tsv.*available splits: \['test'\]"):
        load_beir(tmp_path / "a", split="dev")
    (tmp_path / "a" / "queries.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="queries.jsonl"):
        load_beir(tmp_path / "a")

    _write_beir(tmp_path / "b", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\tx\n")
    with pytest.raises(ValueError, match=r"test\.tsv:3.*'x'"):
        load_beir(tmp_path / "b")
    _write_beir(tmp_path / "c", "query-id\tcorpus-id\tscore\nq7\td1\t1\n")
    with pytest.raises(ValueError, match="q7"):
        load_beir(tmp_path / "c")
    _write_beir(tmp_path / "d", "q1\td1\t1\n")
    with open(tmp_path / "d" / "corpus.jsonl", "a", encoding="utf-8") as fh:
        fh.write("{not json\n")
    with pytest.raises(ValueError, match=r"corpus\.jsonl:4"):
        load_beir(tmp_path / "d")


def test_missing_docs_are_listed(tmp_path: Path) -> None:
    _write_beir(tmp_path, "q1\td1\t1\nq1\tghost\t1\n")
    assert load_beir(tmp_path).missing_docs == ["ghost"]


def test_iter_beir_corpus_streams() -> None:
    it = iter_beir_corpus(SAMPLE / "corpus.jsonl")
    assert iter(it) is it  # a generator, not a list
    first_id, first = next(it)
    assert first_id and first["text"]
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        next(iter_beir_corpus(SAMPLE / "missing.jsonl"))


def test_load_beir_on_shared_scifact_if_present() -> None:
    folder = Path("/work/shared/data/beir/scifact")
    if not folder.is_dir():
        pytest.skip("shared BEIR data not present")
    data = load_beir(folder)
    assert (len(data.corpus), len(data.queries), sum(len(v) for v in data.qrels.values())) == (5183, 300, 339)


# ------------------------------------------------------------------ metrics

METRICS = ["ndcg@1", "ndcg@5", "ndcg@10", "ndcg", "recall@5", "recall@100", "recall",
           "mrr@10", "mrr", "precision@5"]


def _random_case(seed: int, n_queries: int = 40, n_docs: int = 60, ties: bool = False):
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(n_docs)]
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for q in range(n_queries):
        qid = f"q{q}"
        judged = rng.sample(docs, rng.randint(1, 12))
        qrels[qid] = {d: rng.choice([0, 1, 1, 2, 3]) for d in judged}
        qrels[qid][judged[0]] = rng.choice([1, 2, 3])  # at least one relevant
        retrieved = rng.sample(docs, rng.randint(1, n_docs))
        run[qid] = {d: (round(rng.random(), 1) if ties else rng.random()) for d in retrieved}
    return run, qrels


RANX_SEEDS = range(5)
RANX_TIE_SEEDS = range(100, 103)

_RANX_SCRIPT = """
import json, sys
import ranx
cases = json.load(sys.stdin)
out = []
for run, qrels, metrics in cases:
    means = ranx.evaluate(qrels, run, metrics)
    per_query = ranx.evaluate(qrels, run, metrics, return_mean=False)
    out.append({"mean": {m: float(v) for m, v in means.items()},
                "per_query": {m: [float(x) for x in v] for m, v in per_query.items()}})
json.dump(out, sys.stdout)
"""


def _untie(run: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The trec_eval order of each query as strictly decreasing scores."""
    return {qid: {d: float(len(docs) - i) for i, d in enumerate(rank_documents(docs))}
            for qid, docs in run.items()}


@pytest.fixture(scope="module")
def ranx_reference() -> dict[int, dict]:
    """ranx.evaluate on every random case, run once in a subprocess.

    ranx compiles its kernels with numba, which takes about a minute on a cold cache;
    with NUMBA_DISABLE_JIT the very same ranx code runs as plain Python in seconds.
    """
    import ranx  # noqa: F401  (a test dependency; it runs in the subprocess below)
    seeds = list(RANX_SEEDS) + list(RANX_TIE_SEEDS)
    cases = []
    for seed in seeds:
        run, qrels = _random_case(seed, ties=seed in RANX_TIE_SEEDS)
        # ranx leaves tied scores in an unspecified order (numba's unstable argsort), so it
        # gets the trec_eval order as strictly decreasing scores.
        cases.append([_untie(run), qrels, METRICS])
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    done = subprocess.run([sys.executable, "-c", _RANX_SCRIPT], input=json.dumps(cases), env=env,
                          capture_output=True, text=True, check=True)
    return dict(zip(seeds, json.loads(done.stdout)))


@pytest.mark.parametrize("seed", list(RANX_SEEDS) + list(RANX_TIE_SEEDS))
def test_metrics_match_ranx(seed: int, ranx_reference: dict[int, dict]) -> None:
    run, qrels = _random_case(seed, ties=seed in RANX_TIE_SEEDS)
    ref = ranx_reference[seed]
    ours = evaluate(run, qrels, METRICS)
    per_q = evaluate_per_query(run, qrels, METRICS)
    for m in METRICS:
        assert ours[m] == pytest.approx(ref["mean"][m], abs=1e-9), m
        # ranx returns per-query values in the qrels' key order
        for qid, value in zip(qrels, ref["per_query"][m]):
            assert per_q[m][qid] == pytest.approx(value, abs=1e-9), (m, qid)


def test_ties_broken_by_score_then_docid_descending() -> None:
    assert rank_documents({"a": 1.0, "b": 1.0, "c": 2.0, "d": 1.0}) == ["c", "d", "b", "a"]
    assert rank_documents({"a": 1.0, "b": 1.0, "c": 2.0, "d": 1.0}, k=2) == ["c", "d"]
    # hand-computed: order c, b, a -> gains 0, 1, 2
    value = evaluate({"q": {"a": 1.0, "b": 1.0, "c": 1.0}}, {"q": {"a": 2, "b": 1}}, ["ndcg@10"])["ndcg@10"]
    assert value == pytest.approx((1 / math.log2(3) + 2 / math.log2(4)) / (2 + 1 / math.log2(3)), abs=1e-12)


def test_queries_missing_from_run_count_as_zero() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 2}}
    run = {"q1": {"a": 3.0, "x": 1.0}, "q3": {"b": 1.0}}  # q3 is not judged: ignored
    per_q = evaluate_per_query(run, qrels, ["ndcg@10", "recall@10", "mrr@10"])
    assert per_q["ndcg@10"] == {"q1": 1.0, "q2": 0.0}
    assert evaluate(run, qrels, ["mrr@10"]) == {"mrr@10": 0.5}
    # a judged query without any relevant document scores 0 as well
    assert evaluate({"q": {"a": 1.0}}, {"q": {"a": 0}}, ["ndcg@10", "mrr@10"]) == {"ndcg@10": 0.0, "mrr@10": 0.0}


def test_metric_argument_errors() -> None:
    assert parse_metric("NDCG@10") == ("ndcg", 10)
    assert parse_metric("mrr") == ("mrr", None)
    with pytest.raises(ValueError, match="map@10"):
        parse_metric("map@10")
    with pytest.raises(ValueError, match="ndcg@0"):
        parse_metric("ndcg@0")
    with pytest.raises(ValueError, match="ndcg@x"):
        parse_metric("ndcg@x")
    with pytest.raises(TypeError):
        evaluate([], {}, ["ndcg@10"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        evaluate({"q": {"a": float("nan")}}, {"q": {"a": 1}}, ["ndcg@10"])


def test_evaluate_default_metrics_on_sample() -> None:
    data = load_beir(SAMPLE)
    perfect = {qid: {d: float(r) for d, r in judged.items()} for qid, judged in data.qrels.items()}
    assert evaluate(perfect, data.qrels) == {"ndcg@10": 1.0, "recall@100": 1.0, "mrr@10": 1.0}
    assert evaluate({}, data.qrels) == {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}


def test_results_table() -> None:
    rows = [{"method": "bm25", "ndcg@10": 0.66543, "n": 3}, {"method": "dense|m3", "ndcg@10": 0.7}]
    table = results_table(rows)
    assert table.splitlines() == [
        "| method | ndcg@10 | n |",
        "|---|---:|---:|",
        "| bm25 | 0.6654 | 3 |",
        "| dense\\|m3 | 0.7000 |  |",
    ]
    with pytest.raises(ValueError):
        results_table([])


def test_sample_copy_with_crlf_loads_the_same(tmp_path: Path) -> None:
    copy = tmp_path / "s"
    shutil.copytree(SAMPLE, copy)
    qrels_path = copy / "qrels" / "test.tsv"
    qrels_path.write_bytes(qrels_path.read_bytes().replace(b"\n", b"\r\n"))
    assert load_beir(copy).qrels == load_beir(SAMPLE).qrels
