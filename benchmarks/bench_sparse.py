"""Sparse and BM25 benchmark: hybridrag's SparseIndex vs bm25s, rank_bm25 and Milvus Lite.

    python benchmarks/bench_sparse.py --beir /work/shared/data/beir/scifact --n 100000,1000000 \
        --rank-n 100000 --m3-n 100000,1000000 --milvus-max 100000

Every figure is measured in the same run on the same data for the engine and its peer;
ratios are engine / peer (higher = engine faster).

(a) BM25 on a BEIR corpus (title + text), one tokenisation (hybridrag WordAnalyzer,
    English stopwords + Snowball stemmer) fed to all libraries: top-10 identical (ordered)
    to rank_bm25 BM25Okapi, top-10 agreement with bm25s (lucene), queries/s.
(b) synthetic BM25 at each ``--n`` (Zipfian term counts, synth.zipf_term_counts): queries/s
    vs bm25s numpy and numba backends, 1 thread and all threads, on the same score matrix
    (bm25s is handed hybridrag's document weights, identical to what its own ``index``
    computes, to skip tokenising 10^8 tokens in Python); top-10 score lists compared.
(b2) rank_bm25 BM25Okapi on the first ``--rank-n`` synthetic documents (it keeps one dict per
    document and scores in Python): top-10 identical, per-query latency vs the engine.
(c) learned sparse (M3-like, weighting none) at each ``--m3-n``: 250k vocab, ~60 nnz per
    chunk, ~10 per query; latency vs Milvus Lite SPARSE_INVERTED_INDEX (IP) on the same
    vectors up to ``--milvus-max`` chunks, overlap@10 with the exact top-10.
Prints a markdown table. Never part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, csr_to_dicts, fmt_lat, latencies, milvus_client, overlap_at_k, timed  # noqa: E402

import synth  # noqa: E402

from hybridrag.analysis import WordAnalyzer  # noqa: E402
from hybridrag.encoders.bm25 import BM25Encoder  # noqa: E402
from hybridrag.stores import _kernels  # noqa: E402
from hybridrag.stores.sparse import SparseIndex  # noqa: E402

row = Table()
NCPU = os.cpu_count() or 1


def bm25s_from_weights(idx: SparseIndex, method: str, backend: str = "numpy"):
    """A bm25s retriever holding hybridrag's document weights as its score matrix (same layout: CSC docs x terms)."""
    import bm25s

    idx._flush()
    idx._consolidate()
    t = idx._main
    # every term's weights under the current statistics (filled on first use otherwise)
    w = np.array(next(wt for tier, wt, _ in idx._prepare(np.arange(t.vocab, dtype=np.int32)) if tier is t))
    r = bm25s.BM25(method=method, backend=backend)
    r.scores = {"data": w, "indices": t.indices.astype(np.int32), "indptr": t.indptr, "num_docs": len(idx)}
    r.vocab_dict = {str(i): i for i in range(t.vocab)}
    r.unique_token_ids_set = set(range(t.vocab))
    r.nonoccurrence_array = None
    return r


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Mean overlap of the top-10 sets."""
    return float(np.mean([len(set(x) & set(y)) / max(len(set(y)), 1) for x, y in zip(a, b)]))


def same_scores(a: np.ndarray, b: np.ndarray, rtol: float = 1e-5) -> float:
    """Share of queries whose top-k score lists are equal (tie-aware: ids among equal scores may differ)."""
    a = np.where(np.isfinite(a), a, 0).astype(np.float64)
    b = np.where(np.isfinite(b), b, 0).astype(np.float64)
    return float(np.mean(np.all(np.isclose(a, b, rtol=rtol, atol=1e-6), axis=1)))


def bm25s_speed(name: str, r, qids: list[list[int]], nq: int, ours_qps: dict[int, float], repeat: int = 2) -> None:
    """Queries/s of a bm25s retriever with 1 thread and all threads, and engine / peer ratios
    at the same thread count (``ours_qps``: engine queries/s by thread count)."""
    for nt in (1, -1):
        label = "1 thread" if nt == 1 else f"{NCPU} threads"
        try:
            dt = timed(lambda: r.retrieve(qids, k=10, n_threads=nt, show_progress=False), repeat=repeat)
        except Exception as exc:  # noqa: BLE001 - report, keep going
            row(name, f"bm25s lucene ({r.backend})", f"queries/s ({label})", f"failed: {type(exc).__name__}: {exc}")
            continue
        ours = ours_qps[1 if nt == 1 else NCPU]
        row(name, f"bm25s lucene ({r.backend})", f"queries/s ({label})",
            f"{nq / dt:,.0f} (engine {'1 thread' if nt == 1 else 'default threads'} / this = {ours * dt / nq:.2f}x)")


def engine_qps(idx: SparseIndex, q, nq: int, repeat: int = 2) -> dict[int, float]:
    """Engine batch queries/s with one thread (``threads=1``) and with its default
    (``threads=None``: every core once the index has >= 100k rows), keyed 1 and NCPU."""
    return {nt: nq / timed(lambda: idx.search(q, 10, threads=1 if nt == 1 else None), repeat=repeat)
            for nt in sorted({1, NCPU})}


def qps_label(nt: int) -> str:
    return "batch, 1 thread" if nt == 1 else f"batch, default threads (up to {nt})"


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
        row(name, f"hybridrag bm25{variant}", "index s (incl. tokenising)", f"{time.perf_counter() - t0:.2f}")
        qrows = enc.encode_queries(qtexts)
        s, ours = idx.search(qrows, 10)
        qps = engine_qps(idx, qrows, len(qrows), repeat=3)
        for nt, v in qps.items():
            row(name, f"hybridrag bm25{variant}", f"queries/s ({qps_label(nt)})", f"{v:,.0f}")
        ours_qps = qps[1]
        lat = latencies(lambda i: idx.search(qrows[i:i + 1], 10), len(qrows))
        row(name, f"hybridrag bm25{variant}", "one query per call", fmt_lat(lat))
        if variant == "okapi":
            ref = rank_bm25.BM25Okapi(doc_toks)
            ref_top, ref_s = [], []
            t = time.perf_counter()
            for q in q_toks:
                sc = ref.get_scores(q)
                order = np.lexsort((np.arange(len(sc)), -sc))[:10]
                ref_top.append(order[sc[order] != 0])
                ref_s.append(sc[order])
            dt = time.perf_counter() - t
            rank_lat = 1000 * dt / len(q_toks)
            row(name, "rank_bm25 BM25Okapi", "ms/query (1 thread)",
                f"{rank_lat:.2f} (engine one-query-per-call is {rank_lat / lat['mean']:,.0f}x faster; "
                f"batch {rank_lat * ours_qps / 1000:,.0f}x)")
            same = np.mean([np.array_equal(o[o >= 0], r) for o, r in zip(ours, ref_top)])
            row(name, "hybridrag vs rank_bm25", "top-10 identical (ordered ids)", f"{same:.1%}")
            max_err = max(float(np.max(np.abs(a[np.isfinite(a)] - b[: np.isfinite(a).sum()]), initial=0))
                          for a, b in zip(s, ref_s))
            row(name, "hybridrag vs rank_bm25", "max |score difference| in top-10", f"{max_err:.2e}")
        else:
            ids = [[enc.vocabulary[t] for t in d] for d in doc_toks]
            r = bm25s.BM25(method="lucene")
            r.index(bm25s.tokenization.Tokenized(ids=ids, vocab={str(i): i for i in range(len(enc.vocabulary))}),
                    show_progress=False)
            qids = [[enc.vocabulary[t] for t in q if t in enc.vocabulary] for q in q_toks]
            res, res_s = r.retrieve(qids, k=10, n_threads=1, show_progress=False)
            row(name, "hybridrag vs bm25s lucene", "top-10 set agreement; score lists equal",
                f"{agreement(ours, res):.1%}; {same_scores(s, res_s):.1%}")
            bm25s_speed(name, r, qids, len(qids), qps, repeat=3)
            rn = bm25s.BM25(method="lucene", backend="numba")
            rn.scores, rn.vocab_dict, rn.unique_token_ids_set = r.scores, r.vocab_dict, r.unique_token_ids_set
            rn.nonoccurrence_array = None
            bm25s_speed(name, rn, qids, len(qids), qps, repeat=3)


def build_from_counts(name: str, weighting: str, docs, q) -> SparseIndex:
    """A SparseIndex over the term-count rows ``docs`` (first query run included), timed."""
    idx = SparseIndex(weighting)
    t = time.perf_counter()
    idx.add(np.arange(docs.shape[0]), docs)
    idx.search(q[:1], 10)
    row(name, f"hybridrag {weighting}", "index s (from term counts)", f"{time.perf_counter() - t:.1f}")
    return idx


def synth_queries(nq: int, vocab: int):
    q = synth.zipf_term_counts(nq, mean_len=6, seed=1)
    return q[:, :vocab]


def part_synth_bm25(n: int, nq: int) -> None:
    import bm25s

    name = f"(b) synthetic BM25 N={n:,} nq={nq}"
    t = time.perf_counter()
    docs = synth.zipf_term_counts(n, mean_len=120, seed=0)
    q = synth_queries(nq, docs.shape[1])
    row(name, "data", "postings / doc; gen s", f"{docs.nnz / n:.1f}; {time.perf_counter() - t:.1f}")
    idx = build_from_counts(name, "bm25lucene", docs, q)
    del docs
    ours_qps = engine_qps(idx, q, nq)
    for nt, v in ours_qps.items():
        row(name, "hybridrag bm25lucene", f"queries/s ({qps_label(nt)})", f"{v:,.0f}")
    lat = latencies(lambda i: idx.search(q[i:i + 1], 10), min(nq, 300))
    row(name, "hybridrag bm25lucene", "one query per call", fmt_lat(lat))
    s, ours = idx.search(q, 10)
    qids = [[int(t) for t in np.repeat(r.indices, r.data.astype(int))] for r in q]
    r = bm25s_from_weights(idx, "lucene")
    res, res_s = r.retrieve(qids, k=10, n_threads=1, show_progress=False)
    row(name, "hybridrag vs bm25s", "top-10 set agreement; score lists equal (tie-aware)",
        f"{agreement(ours, res):.1%}; {same_scores(s, res_s):.1%}")
    bm25s_speed(name, r, qids, nq, ours_qps)
    rn = bm25s.BM25(method="lucene", backend="numba")
    rn.scores, rn.vocab_dict, rn.unique_token_ids_set = r.scores, r.vocab_dict, r.unique_token_ids_set
    rn.nonoccurrence_array = None
    bm25s_speed(name, rn, qids, nq, ours_qps)
    # engine again after the peers: the machine is shared, so bracket the peers
    for nt, v in engine_qps(idx, q, nq).items():
        row(name, "hybridrag bm25lucene", f"queries/s ({qps_label(nt)}), re-measured after peers",
            f"{v:,.0f}")


def part_rank_bm25(n: int, nq: int) -> None:
    """rank_bm25 on the first ``n`` synthetic documents (same generator and seed as part b)."""
    import rank_bm25

    name = f"(b2) synthetic BM25 vs rank_bm25 N={n:,} nq={nq}"
    docs = synth.zipf_term_counts(n, mean_len=120, seed=0)
    q = synth_queries(nq, docs.shape[1])
    names = [str(i) for i in range(docs.shape[1])]   # shared str objects: token lists stay small
    t = time.perf_counter()
    toks = [[names[t] for t, c in zip(docs.indices[a:e], docs.data[a:e].astype(int)) for _ in range(c)]
            for a, e in zip(docs.indptr[:-1], docs.indptr[1:])]
    ref = rank_bm25.BM25Okapi(toks)
    del toks
    row(name, "rank_bm25 BM25Okapi", "index s", f"{time.perf_counter() - t:.1f}")
    idx = build_from_counts(name, "bm25okapi", docs, q)
    q_toks = [[names[t] for t, c in zip(q.indices[a:e], q.data[a:e].astype(int)) for _ in range(c)]
              for a, e in zip(q.indptr[:-1], q.indptr[1:])]
    ref_top, ref_lat = [], []
    for qt in q_toks:
        t = time.perf_counter()
        sc = ref.get_scores(qt)
        order = np.argsort(-sc, kind="stable")[:10]
        ref_lat.append(time.perf_counter() - t)
        ref_top.append(order[sc[order] != 0])
    ms_ref = 1000 * float(np.median(ref_lat))
    lat = latencies(lambda i: idx.search(q[i:i + 1], 10), nq)
    row(name, "rank_bm25 BM25Okapi", "ms/query p50 (1 thread)", f"{ms_ref:,.1f}")
    row(name, "hybridrag bm25okapi", "one query per call", fmt_lat(lat) + f" ({ms_ref / lat['p50']:,.0f}x faster at p50)")
    ours = idx.search(q, 10)[1]
    same = np.mean([np.array_equal(o[o >= 0], r) for o, r in zip(ours, ref_top)])
    row(name, "hybridrag vs rank_bm25", "top-10 identical (ordered ids)", f"{same:.1%}")


def milvus_sparse(docs, name: str = "sparse", batch: int = 5000):
    """Milvus Lite collection with one SPARSE_FLOAT_VECTOR field (SPARSE_INVERTED_INDEX, IP): (client, seconds)."""
    from pymilvus import DataType, MilvusClient

    client, _ = milvus_client()
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    ip = client.prepare_index_params()
    ip.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP",
                 params={"drop_ratio_build": 0.0})
    client.create_collection(name, schema=schema, index_params=ip)
    t = time.perf_counter()
    for a in range(0, docs.shape[0], batch):
        rows = csr_to_dicts(docs[a:a + batch])
        client.insert(name, [{"id": a + i, "sparse": r} for i, r in enumerate(rows)])
    client.flush(name)
    wait_index(client, name, "sparse", docs.shape[0])
    return client, time.perf_counter() - t


def wait_index(client, coll: str, field: str, n: int, limit_s: float = 600) -> None:
    """Wait until Milvus reports every row indexed (so search does not run on an unindexed growing segment)."""
    t = time.perf_counter()
    while time.perf_counter() - t < limit_s:
        try:
            info = client.describe_index(coll, field)
        except Exception:  # noqa: BLE001 - older servers: nothing to wait for
            return
        if int(info.get("indexed_rows", n)) >= n and int(info.get("pending_index_rows", 0)) == 0:
            return
        time.sleep(1)


def part_m3(n: int, nq: int, milvus_max: int, milvus_nq: int = 0) -> None:
    """``milvus_nq`` (0: all): Milvus Lite is timed on the first that many queries, and its
    p50 is compared with the engine's p50 on the same queries."""
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
    qd = csr_to_dicts(q)
    lat = latencies(lambda i: idx.search(qd[i:i + 1], 10), nq)
    row(name, "hybridrag SparseIndex", "one query per call (dict input)", fmt_lat(lat))
    exact = idx.search(q, 10)[1]
    if n > milvus_max:
        row(name, "Milvus Lite", "SPARSE_INVERTED_INDEX", f"not run (N > --milvus-max {milvus_max:,})")
        return
    try:
        client, ins = milvus_sparse(docs)
    except ImportError as exc:
        row(name, "Milvus Lite", "SPARSE_INVERTED_INDEX", f"skipped ({exc})")
        return
    row(name, "Milvus Lite SPARSE_INVERTED_INDEX", "insert + flush + index s", f"{ins:.1f}")
    sp_params = {"metric_type": "IP", "params": {"drop_ratio_search": 0.0}}
    got = np.full((nq, 10), -1, dtype=np.int64)

    def one(i: int) -> None:
        res = client.search("sparse", data=[qd[i]], anns_field="sparse", limit=10, output_fields=["id"],
                            search_params=sp_params)
        ids = [h["id"] for h in res[0]]
        got[i, : len(ids)] = ids

    mnq = min(nq, milvus_nq or nq)
    mlat = latencies(one, mnq)
    lat_m = lat if mnq == nq else latencies(lambda i: idx.search(qd[i:i + 1], 10), mnq)
    row(name, f"Milvus Lite SPARSE_INVERTED_INDEX ({mnq} queries)", "one query per call",
        fmt_lat(mlat) + f" (engine on the same queries p50 {lat_m['p50']:.2f} ms: "
        f"{mlat['p50'] / lat_m['p50']:,.1f}x faster at p50)")
    row(name, "Milvus Lite vs exact", "overlap@10", f"{overlap_at_k(got[:mnq], exact[:mnq]):.3f}")
    lat2 = latencies(lambda i: idx.search(qd[i:i + 1], 10), mnq)
    row(name, "hybridrag SparseIndex", f"one query per call, re-measured after Milvus ({mnq} queries)", fmt_lat(lat2))
    client.close()


def ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip() and int(x) > 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", type=Path, default=None, help="BEIR dataset folder (corpus.jsonl, queries.jsonl, qrels/test.tsv)")
    ap.add_argument("--n", type=ints, default=[200_000], help="synthetic BM25 document counts, comma-separated ('0' skips)")
    ap.add_argument("--rank-n", type=int, default=0, help="documents for the rank_bm25 comparison (0 skips)")
    ap.add_argument("--rank-nq", type=int, default=20, help="queries for the rank_bm25 comparison")
    ap.add_argument("--m3-n", type=ints, default=[200_000], help="synthetic M3-like chunk counts, comma-separated")
    ap.add_argument("--milvus-max", type=int, default=100_000, help="largest N loaded into Milvus Lite")
    ap.add_argument("--nq", type=int, default=1000, help="synthetic queries")
    ap.add_argument("--milvus-nq", type=int, default=0,
                    help="queries timed on Milvus Lite in part c (0: --nq; the first ones of the same set)")
    args = ap.parse_args()
    row("setup", "hybridrag SparseIndex", "dense-accumulation path (HYBRIDRAG_NUMBA=0: sparse product only)",
        "numba kernel for queries with many postings, sparse product else" if _kernels.AVAILABLE
        else "sparse product (numba not installed or disabled)")
    if args.beir is not None:
        part_beir(args.beir)
    for n in args.n:
        part_synth_bm25(n, args.nq)
    if args.rank_n:
        part_rank_bm25(args.rank_n, args.rank_nq)
    for n in args.m3_n:
        part_m3(n, min(args.nq, 300), args.milvus_max, args.milvus_nq)
    row.print()


if __name__ == "__main__":
    main()
