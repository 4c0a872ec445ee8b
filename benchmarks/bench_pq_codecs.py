"""ColBERT codecs at about 2 bits per dimension, compared on real token vectors (issue 4, item 7).

The store's ``pq`` encoding (dim/4 bytes per token, 8x smaller than fp16), as a plain PQ, moved
the top-10 of brute-force MaxSim more on NFCorpus than the goal allows; this study led to the
rotated codec (docs/CHANGELOG-performance.md, section 7, part E).
This script measures, on the same MiniLM token vectors as ``bench_storage.py`` part C,
how overlap@10 against fp32 moves with the bytes a product quantiser gets, and what a
ColBERTv2-style residual codec gives (a coarse k-means centroid id in 2 bytes, then a PQ of
the residual), at exactly dim/4 bytes and at dim/4 + 2. Every decoded token is scored at
norm 1, as the store does for unit-norm tokens.

    python benchmarks/bench_pq_codecs.py --beir /work/shared/data/beir/nfcorpus
    python benchmarks/bench_pq_codecs.py --beir /work/shared/data/beir/nfcorpus --coarse 16384 --coarse-train 262144

It is a study, not a benchmark of the engine: the PQ rows use FAISS as the store's plain PQ did
(seed 0, 50 k-means iterations, codebook from 65,536 tokens), the residual rows are not in the
engine; the "rotation + bytes by variance" rows fit the store's codec (``hybridrag.stores._pq``)
with several ``ALPHA`` values and training samples (``--coarse ""`` skips the residual rows).
``--pools`` learns the store's codec from the first N tokens only, as the store does when
documents arrive in batches (``pq_train_pool``):

    python benchmarks/bench_pq_codecs.py --beir /work/shared/data/beir/nfcorpus --coarse "" --alphas "" --pools 65536,131072,262144,483621
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench_storage import minilm_tokens  # noqa: E402
from common import Table  # noqa: E402

row = Table()


def top10(x: np.ndarray, starts: np.ndarray, q: np.ndarray, qstarts: np.ndarray) -> list[np.ndarray]:
    """Brute-force MaxSim top-10 document numbers per query (ties by document number)."""
    out = []
    for a in range(0, len(qstarts) - 1, 40):
        b = min(a + 40, len(qstarts) - 1)
        m = np.maximum.reduceat(x @ q[qstarts[a]:qstarts[b]].T, starts, axis=0)   # docs x query tokens
        for i in range(a, b):
            s = m[:, qstarts[i] - qstarts[a]:qstarts[i + 1] - qstarts[a]].sum(axis=1)
            out.append(np.argsort(-s, kind="stable")[:10])
    return out


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def pq_fit(x: np.ndarray, m: int):
    import faiss

    pq = faiss.ProductQuantizer(x.shape[1], m, 8)
    pq.cp.seed, pq.cp.min_points_per_centroid, pq.cp.niter = 0, 1, 50
    pq.train(np.ascontiguousarray(x, dtype=np.float32))
    return pq


def pq_roundtrip(pq, x: np.ndarray) -> np.ndarray:
    return pq.decode(pq.compute_codes(np.ascontiguousarray(x, dtype=np.float32)))


def split_pq(train: np.ndarray, x: np.ndarray, n_bytes: int) -> np.ndarray:
    """PQ with ``n_bytes`` one-byte sub-quantisers over all dims: sub-vectors of 4 dims and,
    where dim/4 > n_bytes, some of 5 (two FAISS quantisers side by side)."""
    d = x.shape[1]
    n5 = d - 4 * n_bytes          # 4 * n4 + 5 * n5 = d and n4 + n5 = n_bytes
    if n5 < 0 or n5 > n_bytes:
        raise ValueError(f"cannot cut {d} dims into {n_bytes} sub-vectors of 4 or 5")
    cut = 4 * (n_bytes - n5)
    parts = []
    if cut:
        parts.append(pq_roundtrip(pq_fit(train[:, :cut], n_bytes - n5), x[:, :cut]))
    if n5:
        parts.append(pq_roundtrip(pq_fit(train[:, cut:], n5), x[:, cut:]))
    return np.hstack(parts)


def main() -> None:
    import faiss

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", type=Path, required=True)
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--train", type=int, default=65536, help="tokens the PQ codebooks learn from (as the store)")
    ap.add_argument("--coarse", type=str, default="1024,16384", help="coarse centroid counts (<= 65536: 2-byte ids)")
    ap.add_argument("--alphas", type=str, default="0,0.5,1",
                    help="ALPHA values of the store's codec (rotation + bytes by variance) to compare")
    ap.add_argument("--samples", type=int, default=3,
                    help="training samples (seeds 0..N-1) the store's codec (ALPHA 0.5) is learned from "
                         "(from all tokens, and from each of --pools)")
    ap.add_argument("--coarse-train", type=int, default=65536, help="tokens the coarse k-means learns from")
    ap.add_argument("--pools", type=str, default="",
                    help="comma-separated token counts: the store's codec (ALPHA 0.5) learned from a sample of "
                         "only the first N tokens (documents in corpus order), for each of --samples seeds, "
                         "as the store does with pq_train_pool = N")
    args = ap.parse_args()
    faiss.omp_set_num_threads(os.cpu_count() or 1)

    corpus = [json.loads(line) for line in open(args.beir / "corpus.jsonl", encoding="utf-8")][: args.docs]
    texts = [(d.get("title", "") + " " + d.get("text", "")).strip() for d in corpus]
    qtexts = [json.loads(line)["text"] for line in open(args.beir / "queries.jsonl", encoding="utf-8")][: args.queries]
    docs, qs = minilm_tokens(texts, 256), minilm_tokens(qtexts, 64)
    x, q = np.concatenate(docs).astype(np.float32), np.concatenate(qs).astype(np.float32)
    starts = np.concatenate([[0], np.cumsum([len(t) for t in docs])[:-1]])
    qstarts = np.concatenate([[0], np.cumsum([len(t) for t in qs])])
    d = x.shape[1]
    name = f"{args.beir.name}: {len(docs):,} docs, {len(x):,} tokens, d={d}, nq={len(qs)}"
    ref = top10(x, starts, q, qstarts)

    def report(label: str, n_bytes: float, decoded: np.ndarray, seconds: float) -> None:
        got = top10(np.ascontiguousarray(decoded, dtype=np.float32), starts, q, qstarts)
        ov = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(got, ref)]))
        row(name, label, "bytes/token (x smaller than fp16); overlap@10 vs fp32; fit+code s",
            f"{n_bytes:g} ({2 * d / n_bytes:.2f}x); {ov:.4f}; {seconds:.0f}")

    rng = np.random.default_rng(0)
    train = x[np.sort(rng.choice(len(x), size=min(args.train, len(x)), replace=False))]
    report("fp16", 2 * d, x.astype(np.float16), 0)
    report("int8, scale 1/127", d, np.round(x * 127).clip(-127, 127) / 127, 0)
    for m in (d // 4, d // 3, d // 2):
        if d % m:
            continue
        t = time.perf_counter()
        out = unit(pq_roundtrip(pq_fit(train, m), x))
        label = f"PQ, {m} sub-quantisers of {d // m} dims" + (" (the store's pq until 2026-11-24)" if m == d // 4 else "")
        report(label, m, out, time.perf_counter() - t)
    from hybridrag.stores._pq import ALPHA, PQCodec

    alphas = [float(a) for a in args.alphas.split(",") if a]
    for alpha, seed in [(a, 0) for a in alphas] + [(ALPHA, s) for s in range(1, args.samples) if alphas]:
        pick = np.sort(np.random.default_rng(seed).choice(len(x), size=min(args.train, len(x)), replace=False))
        t = time.perf_counter()
        codec = PQCodec.fit(x[pick], d // 4, alpha=alpha)
        codec.unit = True
        out = codec.decode(codec.encode(x))
        label = (f"rotation + bytes by variance, ALPHA {alpha:g}, sample seed {seed}"
                 + (" (the store's pq)" if alpha == ALPHA and seed == 0 else ""))
        report(label, d // 4, out, time.perf_counter() - t)
    for pool in (int(v) for v in args.pools.split(",") if v):
        if not args.train <= pool <= len(x):
            raise SystemExit(f"--pools values must be in {args.train}..{len(x)} (--train .. tokens), got {pool}")
        for seed in range(args.samples):
            pick = np.sort(np.random.default_rng(seed).choice(pool, size=args.train, replace=False))
            t = time.perf_counter()
            codec = PQCodec.fit(x[pick], d // 4)
            codec.unit = True
            out = codec.decode(codec.encode(x))
            report(f"the store's pq, sample seed {seed} from the first {pool:,} tokens "
                   f"({int(np.searchsorted(starts, pool, side='left')):,} docs)", d // 4, out, time.perf_counter() - t)
    coarse_train = x[np.sort(rng.choice(len(x), size=min(args.coarse_train, len(x)), replace=False))]
    for k in (int(v) for v in args.coarse.split(",") if v):
        if not 1 <= k <= 65536:
            raise SystemExit(f"--coarse values must be in 1..65536 (2-byte ids), got {k}")
        t = time.perf_counter()
        km = faiss.Kmeans(d, k, niter=10, seed=0, spherical=True, min_points_per_centroid=1)
        km.train(np.ascontiguousarray(coarse_train))
        assign = km.index.search(np.ascontiguousarray(x), 1)[1][:, 0]
        res_train = train - km.centroids[km.index.search(np.ascontiguousarray(train), 1)[1][:, 0]]
        base, res = km.centroids[assign], x - km.centroids[assign]
        fit = time.perf_counter() - t
        for n_bytes in (d // 4 - 2, d // 4):
            t = time.perf_counter()
            out = unit(base + split_pq(res_train, res, n_bytes))
            report(f"residual: {k:,} centroids (2 B, from {len(coarse_train):,} tokens) + PQ of {n_bytes} B",
                   n_bytes + 2, out, fit + time.perf_counter() - t)
    row.print()


if __name__ == "__main__":
    main()
