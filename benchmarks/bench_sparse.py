"""Sparse and BM25 benchmark: hybridrag's SparseIndex vs bm25s and rank_bm25 (and Milvus Lite, optional).

    python benchmarks/bench_sparse.py --beir ../shared/data/beir/scifact --n 200000 --m3-n 200000

(a) BM25 on a BEIR corpus (title + text), one tokenisation (hybridrag WordAnalyzer,
    English stopwords + Snowball stemmer) fed to all three libraries: top-10 agreement
    with rank_bm25 (okapi) and bm25s (lucene), queries/s.
(b) synthetic BM25 at ``--n`` documents (Zipfian term counts): queries/s vs bm25s on
    the same score matrix (bm25s is handed hybridrag's document weights, identical to
    what its own ``index`` computes, to skip tokenising 10^8 tokens in Python).
(c) learned-sparse (M3-like, weighting none) at ``--m3-n`` chunks: 250k vocab,
    ~60 nnz per chunk, ~10 per query; latency, and Milvus Lite SPARSE_INVERTED_INDEX if installed.
Prints a markdown table. Never part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import synth  # noqa: E402

from hybridrag.analysis import WordAnalyzer  # noqa: E402
from hybridrag.encoders.bm25 import BM25Encoder  # noqa: E402
from hybridrag.stores.sparse import SparseIndex  # noqa: E402

ROWS: list[tuple[str, str, str, str]] = []


def row(part: str, system: str, metric: str, value: str) -> None:
    ROWS.append((part, system, metric, value))
    print(f"  {part} | {system} | {metric} | {value}", file=sys.stderr, flush=True)


def timed(fn, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` runs after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bm25s_from_weights(idx: SparseIndex, method: str):
    """A bm25s retriever holding hybridrag's document weights as its score matrix (same layout: CSC docs x terms)."""
    import bm25s

    idx._flush()
    idx._consolidate()
    t = idx._main
    w = idx._tier_weights(t)
    r = bm25s.BM25(method=method)
    r.scores = {"data": w, "indices": t.indices.astype(np.int32), "indptr": t.indptr, "num_docs": len(idx)}
    r.vocab_dict = {str(i): i for i in range(t.vocab)}
    r.unique_token_ids_set = set(range(t.vocab))
    r.nonoccurrence_array = None
    return r


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Mean overlap of the top-10 sets."""
    return float(np.mean([len(set(x) & set(y)) / max(len(set(y)), 1) for x, y in zip(a, b)]))


def part_beir(path: Path) -> None:
    import bm25s
    import rank_bm25

    corpus = [json.loads(line) for line in open(path / "corpus.jsonl", encoding="utf-8")]
    queries = {q["_id"]: q["text"] for q in map(json.loads, open(path / "queries.jsonl", encoding="utf-8"))}
    test_ids = [l.split("\t")[0] for l in open(path / "qrels" / "test.tsv", encoding="utf-8").read().splitlines()[1:]]
    qtexts = [queries[q] for q in dict.fromkeys(test_ids)]
    texts = [(d.get("title", "") + " " + d.get("text", "")).strip() for d in corpus]
    an = WordAnalyzer(stopwords="english", stemmer="english")
    doc_toks, q_toks = an.tokenize(texts), an.tokenize(qtexts)
    name = f"(a) {path.name} N={len(texts)} nq={len(qtexts)}"
    for variant in ("okapi", "lucene"):
        enc = BM25Encoder(an, variant=variant)
        idx = SparseIndex(**enc.store_config())
        t0 = time.perf_counter()
        idx.add(np.arange(len(texts)), enc.encode_documents(texts))
        idx.search([{}], 1)
        row(name, f"hybridrag bm25{variant}", "index s", f"{time.perf_counter() - t0:.2f}")
        qrows = enc.encode_queries(qtexts)
        s, ours = idx.search(qrows, 10)
        dt = timed(lambda: idx.search(qrows, 10))
        row(name, f"hybridrag bm25{variant}", "queries/s (1 thread)", f"{len(qrows) / dt:,.0f}")
        if variant == "okapi":
            ref = rank_bm25.BM25Okapi(doc_toks)
            t = time.perf_counter()
            ref_top = []
            for q in q_toks:
                sc = ref.get_scores(q)
                order = np.lexsort((np.arange(len(sc)), -sc))[:10]
                ref_top.append(order[sc[order] != 0])
            dt = time.perf_counter() - t
            row(name, "rank_bm25 BM25Okapi", "queries/s", f"{len(q_toks) / dt:,.1f}")
            same = np.mean([np.array_equal(o[o >= 0], r) for o, r in zip(ours, ref_top)])
            row(name, "hybridrag vs rank_bm25", "top-10 identical (ordered)", f"{same:.1%}")
        else:
            ids = [[enc.vocabulary[t] for t in d] for d in doc_toks]
            r = bm25s.BM25(method="lucene")
            r.index(bm25s.tokenization.Tokenized(ids=ids, vocab={str(i): i for i in range(len(enc.vocabulary))}),
                    show_progress=False)
            qids = [[enc.vocabulary[t] for t in q if t in enc.vocabulary] for q in q_toks]
            res, _ = r.retrieve(qids, k=10, n_threads=1, show_progress=False)
            row(name, "hybridrag vs bm25s lucene", "top-10 set agreement", f"{agreement(ours, res):.1%}")
            for nt in (1, -1):
                dt = timed(lambda: r.retrieve(qids, k=10, n_threads=nt, show_progress=False))
                row(name, "bm25s lucene (numpy)", f"queries/s ({'1 thread' if nt == 1 else f'{os.cpu_count()} threads'})",
                    f"{len(qids) / dt:,.0f}")
            rn = bm25s.BM25(method="lucene", backend="numba")
            rn.scores, rn.vocab_dict, rn.unique_token_ids_set = r.scores, r.vocab_dict, r.unique_token_ids_set
            rn.nonoccurrence_array = None
            try:
                dt = timed(lambda: rn.retrieve(qids, k=10, n_threads=1, show_progress=False))
                row(name, "bm25s lucene (numba)", "queries/s", f"{len(qids) / dt:,.0f}")
            except Exception as exc:  # noqa: BLE001 - report, keep going
                row(name, "bm25s lucene (numba)", "queries/s", f"failed: {type(exc).__name__}")


def part_synth_bm25(n: int, nq: int) -> None:
    name = f"(b) synthetic BM25 N={n:,} nq={nq}"
    t = time.perf_counter()
    docs = synth.zipf_term_counts(n, mean_len=120, seed=0)
    q = synth.zipf_term_counts(nq, mean_len=6, seed=1)
    q = q[:, : docs.shape[1]]
    row(name, "data", "postings / doc; gen s", f"{docs.nnz / n:.1f}; {time.perf_counter() - t:.1f}")
    idx = SparseIndex("bm25lucene")
    t = time.perf_counter()
    idx.add(np.arange(n), docs)
    idx.search(q[:1], 10)
    row(name, "hybridrag bm25lucene", "index s", f"{time.perf_counter() - t:.1f}")
    del docs
    dt = timed(lambda: idx.search(q, 10), repeat=2)
    row(name, "hybridrag bm25lucene", "queries/s (1 thread)", f"{nq / dt:,.0f}")
    ours = idx.search(q, 10)[1]
    qids = [list(np.repeat(r.indices, r.data.astype(int))) for r in q]
    qids = [[int(t) for t in x] for x in qids]
    r = bm25s_from_weights(idx, "lucene")
    res, _ = r.retrieve(qids, k=10, n_threads=1, show_progress=False)
    row(name, "hybridrag vs bm25s", "top-10 set agreement", f"{agreement(ours, res):.1%}")
    for nt in (1, -1):
        dt = timed(lambda: r.retrieve(qids, k=10, n_threads=nt, show_progress=False), repeat=2)
        row(name, "bm25s lucene (numpy)", f"queries/s ({'1 thread' if nt == 1 else f'{os.cpu_count()} threads'})",
            f"{nq / dt:,.0f}")
    import bm25s

    rn = bm25s.BM25(method="lucene", backend="numba")
    rn.scores, rn.vocab_dict, rn.unique_token_ids_set = r.scores, r.vocab_dict, r.unique_token_ids_set
    rn.nonoccurrence_array = None
    try:
        dt = timed(lambda: rn.retrieve(qids, k=10, n_threads=1, show_progress=False), repeat=2)
        row(name, "bm25s lucene (numba)", "queries/s", f"{nq / dt:,.0f}")
    except Exception as exc:  # noqa: BLE001
        row(name, "bm25s lucene (numba)", "queries/s", f"failed: {type(exc).__name__}")


def part_m3(n: int, nq: int) -> None:
    name = f"(c) M3-like sparse N={n:,} nq={nq}"
    t = time.perf_counter()
    docs = synth.zipf_sparse(n, nnz=60, seed=0)
    q = synth.zipf_sparse(nq, nnz=10, seed=1)
    row(name, "data", "nnz / chunk; nnz / query; gen s", f"{docs.nnz / n:.1f}; {q.nnz / nq:.1f}; {time.perf_counter() - t:.1f}")
    idx = SparseIndex("none")
    t = time.perf_counter()
    idx.add(np.arange(n), docs)
    idx.search(q[:1], 10)
    row(name, "hybridrag SparseIndex", "index s; MiB", f"{time.perf_counter() - t:.1f}; {idx.nbytes / 2**20:,.0f}")
    dt = timed(lambda: idx.search(q, 10), repeat=2)
    row(name, "hybridrag SparseIndex", "batch queries/s; ms/query", f"{nq / dt:,.0f}; {1000 * dt / nq:.2f}")
    single = [q[i] for i in range(min(nq, 50))]
    dt = timed(lambda: [idx.search(x, 10) for x in single], repeat=1)
    row(name, "hybridrag SparseIndex", "one query per call: ms/query", f"{1000 * dt / len(single):.2f}")
    try:
        from pymilvus import MilvusClient  # noqa: F401
        import milvus_lite  # noqa: F401
    except ImportError:
        row(name, "Milvus Lite", "SPARSE_INVERTED_INDEX", "skipped (pip install pymilvus milvus-lite)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", type=Path, default=None, help="BEIR dataset folder (corpus.jsonl, queries.jsonl, qrels/test.tsv)")
    ap.add_argument("--n", type=int, default=200_000, help="synthetic BM25 documents (0 to skip)")
    ap.add_argument("--m3-n", type=int, default=200_000, help="synthetic M3-like chunks (0 to skip)")
    ap.add_argument("--nq", type=int, default=1000, help="synthetic queries")
    args = ap.parse_args()
    if args.beir is not None:
        part_beir(args.beir)
    if args.n:
        part_synth_bm25(args.n, args.nq)
    if args.m3_n:
        part_m3(args.m3_n, args.nq)
    print(f"\n<!-- {time.strftime('%Y-%m-%d')} {platform.platform()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, python {platform.python_version()} -->")
    print("| part | system | metric | value |\n|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
