"""Hybrid query path end to end: hybridrag planner.run vs Milvus Lite hybrid_search.

    python benchmarks/bench_hybrid.py --n 10000,100000 --dense-index Flat,HNSW32 --nq 200

Per N, M3-shaped synthetic data (pre-encoded, no model in the loop):

* dense: ``--dim`` (1024) unit vectors (synth.dense_vectors) in a FaissStore (``--dense-index``);
* sparse: M3-like lexical weights (250k vocab, ~60 nnz per chunk, ~10 per query) in a SparseIndex;
* ColBERT: ``--colbert-dim`` token vectors, ``--tokens`` median tokens per chunk
  (log-normal), MultiVectorStore in ``--colbert-encoding`` (fp16 default; pq for 1M
  chunks, whose fp16 tokens would not fit in 24 GB); queries have 32 tokens.

The engine runs ``hybridrag.search.planner.run`` one query per call with the real stores:
dense top-``--depth`` and sparse top-``--depth`` first stages, union of candidates (at most
2 x depth), exact dense and sparse scores of every candidate, ColBERT MaxSim of every
candidate, weighted fusion (dense 1, sparse 0.3, colbert 1), top-10. No cross-encoder.
The "stage" rows time steps of that path alone, one query per call on the same queries
(first-stage searches, and MaxSim / dense / sparse exact scores of each query's union of
candidates); what planner.run spends beyond their sum is fusion, ranks and the cost of
running the steps one after another (each leaves the caches to the next).

The peer is Milvus Lite (embedded) with a FLAT dense field and a SPARSE_INVERTED_INDEX
sparse field on the same vectors: ``hybrid_search`` with two AnnSearchRequests (limit
``--depth`` each) and ``WeightedRanker(1, 0.3)``, limit 10. Milvus does no ColBERT step,
so the engine does strictly more work per query. Reported: p50 / p99 latency and QPS,
one query per call, from the same run on the same vectors. Never part of the test suite.

On Milvus (N <= ``--milvus-max``) the engine also runs on its Milvus stores (dense and sparse; ColBERT
local); ``--whole-index`` adds the whole index in Milvus (ColBERT token rows and a docs collection
of ~1.4 KB texts, what a ``[milvus] whole_index`` query node reads) beside the same path with a
SQLite docstore, each timed with the fetch of the 10 hits' rows, and the bytes per chunk of each
collection.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, csr_to_dicts, fmt_lat, latencies, milvus_client, overlap_at_k, peak_rss_mib  # noqa: E402

import synth  # noqa: E402

from hybridrag.search import planner  # noqa: E402
from hybridrag.stores.faiss import FaissStore  # noqa: E402
from hybridrag.stores.multivector import MultiVectorStore  # noqa: E402
from hybridrag.stores.sparse import SparseIndex  # noqa: E402

row = Table()
W_DENSE, W_SPARSE, W_COLBERT = 1.0, 0.3, 1.0


def build_colbert(n: int, dim: int, median: int, seed: int = 0, block: int = 20000,
                  encoding: str = "fp16", pool: int = 0) -> MultiVectorStore:
    """ColBERT store filled block by block (bounds the float32 temporaries).

    ``pool > 0``: token vectors are drawn (seeded, with replacement) from a pool of ``pool``
    generated vectors instead of generated afresh: the random-number generation of 10^8
    fresh vectors would take longer than the benchmark itself. MaxSim cost depends on the
    number of tokens, not their values; every token is still encoded and stored."""
    store = MultiVectorStore(dim, encoding=encoding)
    counts = synth.token_counts(n, median=median, max_len=8 * median, seed=seed)
    pool_vecs = synth.dense_vectors(pool, d=dim, intrinsic=min(128, dim), seed=seed + 1) if pool else None
    pick = np.random.default_rng(seed + 2)
    for s in range(0, n, block):
        c = counts[s:s + block]
        if pool_vecs is not None:
            off = np.concatenate([[0], np.cumsum(c)])
            flat = pool_vecs[pick.integers(pool, size=int(off[-1]))]
        else:
            flat, off = synth.token_vectors(c, d=dim, seed=seed + 1 + s // block, dtype=np.float32)
        store.add(np.arange(s, s + len(c)), [flat[off[i]:off[i + 1]] for i in range(len(c))])
        del flat
    return store


def milvus_hybrid(dense: np.ndarray, sparse, batch: int = 2000):
    from pymilvus import DataType, MilvusClient

    client, _ = milvus_client()
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("dense", DataType.FLOAT_VECTOR, dim=dense.shape[1])
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    ip = client.prepare_index_params()
    ip.add_index(field_name="dense", index_type="FLAT", metric_type="IP")
    ip.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP",
                 params={"drop_ratio_build": 0.0})
    client.create_collection("h", schema=schema, index_params=ip)
    t = time.perf_counter()
    for a in range(0, dense.shape[0], batch):
        rows = csr_to_dicts(sparse[a:a + batch])
        client.insert("h", [{"id": a + i, "dense": dense[a + i], "sparse": r} for i, r in enumerate(rows)])
    client.flush("h")
    from bench_sparse import wait_index

    wait_index(client, "h", "sparse", dense.shape[0])
    wait_index(client, "h", "dense", dense.shape[0])
    return client, time.perf_counter() - t


def part(n: int, args: argparse.Namespace) -> None:
    nq = args.nq
    t = time.perf_counter()
    dense = synth.dense_vectors(n, d=args.dim, seed=0)
    sparse = synth.zipf_sparse(n, nnz=60, seed=0)
    qd = synth.dense_vectors(nq, d=args.dim, seed=1)
    qs = csr_to_dicts(synth.zipf_sparse(nq, nnz=10, seed=1))
    qflat, qoff = synth.token_vectors(np.full(nq, 32), d=args.colbert_dim, seed=7, dtype=np.float32)
    qc = [qflat[qoff[i]:qoff[i + 1]] for i in range(nq)]
    gen = time.perf_counter() - t
    t = time.perf_counter()
    sp_store = SparseIndex("none")
    sp_store.add(np.arange(n), sparse)
    sp_store.search(qs[:1], 1)
    t_sparse = time.perf_counter() - t
    t = time.perf_counter()
    cb = build_colbert(n, args.colbert_dim, args.tokens, encoding=args.colbert_encoding, pool=args.token_pool)
    t_cb = time.perf_counter() - t
    name0 = f"N={n:,}"
    row(name0, "data", f"gen s; sparse build s; colbert ({args.colbert_encoding}) build s; colbert MiB; tokens",
        f"{gen:.1f}; {t_sparse:.1f}; {t_cb:.1f}; {cb.nbytes / 2**20:,.0f}; {cb.nbytes // cb.bytes_per_token:,}")
    plan = planner.QueryPlan(modes=["dense", "sparse", "colbert"], depths={"dense": args.depth, "sparse": args.depth},
                             fusion="weighted", weights={"dense": W_DENSE, "sparse": W_SPARSE, "colbert": W_COLBERT},
                             k=10)
    results: dict[str, np.ndarray] = {}
    engine_p50: dict[str, float] = {}
    for fac in args.dense_index.split(","):
        name = f"N={n:,} dense={fac} nq={nq}"
        t = time.perf_counter()
        ds = FaissStore(args.dim, fac, ef_search=args.ef, use_gpu=False)
        ds.add(np.arange(n), dense)
        ds.search(qd[:1], 1)
        if n > args.milvus_max and fac == args.dense_index.split(",")[-1]:
            del dense   # Milvus will not need it: free the RAM before timing queries
            dense = None
        row(name, f"hybridrag FaissStore {fac}", "build s", f"{time.perf_counter() - t:.1f}")
        stores = {"dense": ds, "sparse": sp_store, "colbert": cb}
        top = np.full((nq, 10), -1, dtype=np.int64)
        ncand = np.zeros(nq)

        def one(i: int) -> None:
            c = planner.run(plan, {"dense": qd[i:i + 1], "sparse": qs[i:i + 1], "colbert": qc[i:i + 1]}, stores)[0]
            top[i, : min(10, len(c.slots))] = c.slots[:10]
            ncand[i] = len(c.slots)

        lat = latencies(one, nq)
        results[fac] = top.copy()
        engine_p50[fac] = lat["p50"]
        row(name, "hybridrag planner.run (dense+sparse+fusion+ColBERT)", "one query per call",
            fmt_lat(lat) + f"; {ncand.mean():.0f} candidates MaxSim-scored on average")
        # where the time goes (same queries, one stage at a time)
        for label, fn in (
            ("dense search", lambda i: ds.search(qd[i:i + 1], args.depth)),
            ("sparse search", lambda i: sp_store.search(qs[i:i + 1], args.depth)),
        ):
            row(name, f"  stage: {label}", "one query per call", fmt_lat(latencies(fn, min(nq, 100))))
        cand = [np.unique(np.concatenate([ds.search(qd[i:i + 1], args.depth)[1][0],
                                          sp_store.search(qs[i:i + 1], args.depth)[1][0]])) for i in range(min(nq, 100))]
        row(name, "  stage: ColBERT MaxSim of the union", "one query per call",
            fmt_lat(latencies(lambda i: cb.score(qc[i:i + 1], cand[i:i + 1]), len(cand))))
        for label, fn in (
            ("dense exact scores of the union", lambda i: ds.score(qd[i:i + 1], cand[i:i + 1])),
            ("sparse exact scores of the union", lambda i: sp_store.score(qs[i:i + 1], cand[i:i + 1])),
        ):
            row(name, f"  stage: {label}", "one query per call", fmt_lat(latencies(fn, len(cand))))
        if "Flat" in results and fac != "Flat":
            row(name, f"hybridrag {fac} vs Flat", "overlap@10 of the fused top-10",
                f"{overlap_at_k(results[fac], results['Flat']):.4f}")
        del ds
    if n > args.milvus_max:
        row(name0, "Milvus Lite hybrid_search", "latency", f"not run (N > --milvus-max {args.milvus_max:,})")
        return
    del sp_store, stores   # the local engine is done: give its RAM to the Milvus Lite process
    gc.collect()
    try:
        from pymilvus import AnnSearchRequest, WeightedRanker
        client, ins = milvus_hybrid(dense, sparse)
    except ImportError as exc:
        row(name0, "Milvus Lite", "hybrid_search", f"skipped ({exc})")
        return
    row(name0, "Milvus Lite (FLAT dense + SPARSE_INVERTED_INDEX)", "insert + flush + index s", f"{ins:.1f}")
    ranker = WeightedRanker(W_DENSE, W_SPARSE)
    sp_params = {"metric_type": "IP", "params": {"drop_ratio_search": 0.0}}

    def mil(i: int) -> None:
        reqs = [AnnSearchRequest(data=[qd[i]], anns_field="dense", param={"metric_type": "IP"}, limit=args.depth),
                AnnSearchRequest(data=[qs[i]], anns_field="sparse", param=sp_params, limit=args.depth)]
        client.hybrid_search("h", reqs, ranker, limit=10, output_fields=["id"])

    mnq = min(nq, args.milvus_nq or nq)
    mlat = latencies(mil, mnq)
    row(f"N={n:,} nq={mnq}", "Milvus Lite hybrid_search WeightedRanker(1, 0.3) (no ColBERT)", "one query per call",
        fmt_lat(mlat) + "; Milvus p50 / engine p50: "
        + ", ".join(f"{mlat['p50'] / p:.1f}x ({fac})" for fac, p in engine_p50.items()))
    client.close()
    engine_on_milvus(n, args, dense, sparse, cb, plan, (qd, qs, qc), results.get("Flat"), mnq)


def engine_on_milvus(n: int, args: argparse.Namespace, dense: np.ndarray, sparse: Any, cb: MultiVectorStore,
                     plan: Any, queries: tuple, flat_top: np.ndarray | None, nq: int) -> None:
    """The engine's query path with its dense and sparse stores on Milvus (the Milvus backend:
    ``MilvusDenseStore`` FLAT, ``MilvusSparseStore``; ColBERT local), on the same vectors;
    and what Milvus Lite keeps on disk per chunk for each representation."""
    from hybridrag.stores.milvus import MilvusDenseStore, MilvusSparseStore

    qd, qs, qc = queries
    folder = Path(tempfile.mkdtemp(prefix="bench-engine-milvus-"))
    uri = str(folder / "milvus.db")
    t = time.perf_counter()
    md = MilvusDenseStore(dense.shape[1], uri=uri, collection="e_dense")
    ms = MilvusSparseStore(uri=uri, collection="e_sparse")
    for a in range(0, n, 2000):
        sl = np.arange(a, min(n, a + 2000))
        md.add(sl, dense[a:a + 2000])
        ms.add(sl, sparse[a:a + 2000])
    md.save(folder, "d")
    ms.save(folder, "s")
    row(f"N={n:,}", "hybridrag on the Milvus backend (MilvusDenseStore FLAT + MilvusSparseStore)",
        "add + save s", f"{time.perf_counter() - t:.1f}")
    stores = {"dense": md, "sparse": ms, "colbert": cb}
    top = np.full((nq, 10), -1, dtype=np.int64)

    def one(i: int) -> None:
        c = planner.run(plan, {"dense": qd[i:i + 1], "sparse": qs[i:i + 1], "colbert": qc[i:i + 1]}, stores)[0]
        top[i, : min(10, len(c.slots))] = c.slots[:10]

    lat = latencies(one, nq)
    same = "" if flat_top is None else f"; overlap@10 with the local Flat run {overlap_at_k(top, flat_top[:nq]):.4f}"
    row(f"N={n:,} nq={nq}", "hybridrag planner.run on the Milvus backend (dense+sparse+fusion+ColBERT)",
        "one query per call", fmt_lat(lat) + same)
    for label, fn in (("dense search", lambda i: md.search(qd[i:i + 1], args.depth)),
                      ("sparse search", lambda i: ms.search(qs[i:i + 1], args.depth))):
        row(f"N={n:,} nq={nq}", f"  stage on Milvus: {label}", "one query per call",
            fmt_lat(latencies(fn, min(nq, 50))))
    names = ["e_dense", "e_sparse"]
    if args.whole_index:
        names += whole_index(n, args, plan, queries, stores, uri, folder, top, nq)
    sizes = {}
    for name in names:
        found = [p for p in folder.rglob(name) if p.is_dir()]
        sizes[name] = sum(f.stat().st_size for p in found for f in p.rglob("*") if f.is_file())
    row(f"N={n:,}", "Milvus Lite on disk per chunk", "dense (dim x float32); sparse",
        f"{sizes['e_dense'] / n:,.0f} B ({dense.shape[1] * 4:,} B of vector); {sizes['e_sparse'] / n:,.0f} B "
        f"({sparse.nnz / n:.0f} weights per chunk)")
    if args.whole_index:
        row(f"N={n:,}", "Milvus Lite on disk per chunk", "ColBERT token rows; docs (text, metadata, ids)",
            f"{sizes['e_colbert'] / n:,.0f} B ({cb.nbytes / n:,.0f} B in the local {args.colbert_encoding} store); "
            f"{sizes['e_docs'] / n:,.0f} B ({TEXT_BYTES:,} B of text)")
    md.close()
    ms.close()


TEXT_BYTES = 1400   # about a SciFact abstract


def whole_index(n: int, args: argparse.Namespace, plan: Any, queries: tuple, stores: dict, uri: str,
                folder: Path, top: np.ndarray, nq: int) -> list[str]:
    """``--whole-index``: the ColBERT token vectors and the chunks' text, metadata and ids in Milvus
    too (what a query node of ``[milvus] whole_index`` reads), against the local ColBERT store and
    a SQLite docstore: the engine's path plus the fetch of the hits' rows (what ``search`` returns)."""
    from hybridrag.stores.docstore import DocStore
    from hybridrag.stores.milvus import MilvusColbertStore
    from hybridrag.stores.milvus_docs import MilvusDocsStore
    from hybridrag.types import Chunk
    from hybridrag.write import chunk_record

    qd, qs, qc = queries
    cb = stores["colbert"]
    rng = np.random.default_rng(5)
    words = np.array([f"w{i}" for i in range(5000)])
    t = time.perf_counter()
    mc = MilvusColbertStore(cb.dim, encoding="fp32" if args.colbert_encoding == "fp32" else "fp16", uri=uri,
                            collection="e_colbert")
    mdoc = MilvusDocsStore(uri=uri, collection="e_docs")
    ds = DocStore(folder / "docstore.sqlite")
    for a in range(0, n, 1000):
        sl = np.arange(a, min(n, a + 1000))
        mc.add(sl, [cb.decode(int(s)) for s in sl])
        chunks = [Chunk(chunk_id=f"c{s}", doc_id=f"d{s}", ordinal=0, start=0, end=TEXT_BYTES,
                        text=" ".join(rng.choice(words, TEXT_BYTES // 6))[:TEXT_BYTES],
                        metadata={"year": 2000 + int(s) % 25, "group": int(s) % 100}) for s in sl.tolist()]
        mdoc.add(sl, [chunk_record(c, "h") for c in chunks])
        ds.add_chunks(chunks, sl, 1, {c.doc_id: "h" for c in chunks})
    mc.save(folder, "c")
    mdoc.save(folder, "t")
    ds.commit_generation(1)
    row(f"N={n:,}", "whole index: ColBERT tokens + docs into Milvus (and a SQLite docstore)", "add + save s",
        f"{time.perf_counter() - t:.1f}")
    remote = dict(stores, colbert=mc)
    for label, st, docs in (("dense + sparse in Milvus, ColBERT local, SQLite docstore (the Milvus backend)",
                             stores, ds),
                            ("the whole index in Milvus (a query node)", remote, mdoc)):
        def one(i: int, st: dict = st, docs: Any = docs) -> None:
            c = planner.run(plan, {"dense": qd[i:i + 1], "sparse": qs[i:i + 1], "colbert": qc[i:i + 1]}, st)[0]
            docs.get(c.slots[:10])
            top[i, : min(10, len(c.slots))] = c.slots[:10]

        row(f"N={n:,} nq={nq}", f"hybridrag, {label}: planner.run + the hits' text", "one query per call",
            fmt_lat(latencies(one, nq)))
    cand = [np.unique(np.concatenate([stores["dense"].search(qd[i:i + 1], args.depth)[1][0],
                                      stores["sparse"].search(qs[i:i + 1], args.depth)[1][0]]))
            for i in range(min(nq, 20))]
    for label, fn in (("ColBERT MaxSim of the union, tokens from Milvus", lambda i: mc.score(qc[i:i + 1], cand[i:i + 1])),
                      ("ColBERT MaxSim of the union, local store", lambda i: cb.score(qc[i:i + 1], cand[i:i + 1])),
                      ("the 10 hits' rows from the docs collection", lambda i: mdoc.get(cand[i][:10])),
                      ("the 10 hits' rows from SQLite", lambda i: ds.get(cand[i][:10]))):
        row(f"N={n:,} nq={len(cand)}", f"  stage: {label}", "one query per call", fmt_lat(latencies(fn, len(cand))))
    mc.close()
    mdoc.close()
    ds.close()
    return ["e_colbert", "e_docs"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="10000", help="comma-separated corpus sizes")
    ap.add_argument("--dim", type=int, default=1024, help="dense dimension (M3: 1024)")
    ap.add_argument("--colbert-dim", type=int, default=128, help="ColBERT token dimension (M3: 1024; memory grows with it)")
    ap.add_argument("--tokens", type=int, default=128, help="median tokens per chunk")
    ap.add_argument("--token-pool", type=int, default=0,
                    help="draw chunk token vectors from a pool of this many generated vectors (0: all fresh)")
    ap.add_argument("--colbert-encoding", default="fp16", choices=["fp16", "int8", "pq", "fp32"],
                    help="MultiVectorStore encoding (pq: 8x smaller than fp16, what fits 1M chunks in RAM)")
    ap.add_argument("--dense-index", default="Flat,HNSW32", help="FaissStore factories to run, comma-separated")
    ap.add_argument("--ef", type=int, default=64)
    ap.add_argument("--depth", type=int, default=50, help="first-stage depth per mode")
    ap.add_argument("--nq", type=int, default=200)
    ap.add_argument("--milvus-max", type=int, default=100_000)
    ap.add_argument("--whole-index", action="store_true",
                    help="on the Milvus backend, also time the whole index in Milvus (ColBERT tokens, text)")
    ap.add_argument("--milvus-nq", type=int, default=0,
                    help="queries timed on Milvus Lite (0: --nq; the first ones of the same query set)")
    args = ap.parse_args()
    for n in [int(s) for s in args.n.split(",") if s]:
        part(n, args)
    row("all", "process", "peak RSS MiB", f"{peak_rss_mib():,.0f}")
    row.print()


if __name__ == "__main__":
    main()
