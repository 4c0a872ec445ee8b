"""What replacing the compiled top-k kernels by ``hybridrag.stores.base.topk`` would cost a search.

    python benchmarks/bench_topk_kernels.py --n 100000 --nq 200

The stores pick their top-k with numba kernels (``hybridrag/stores/_kernels.py``) where
numba is installed: ``faiss_top_k`` / ``rescore_top_k`` (dense: FAISS rows to slots, exact
re-score, ties by slot) and ``dense_top_k`` (sparse and BM25: accumulate and top-k in one
call). Their numpy replacements with the one ``topk``: the dense store's ``_rescore`` (exact
re-score + ``topk``, the path taken without numba), and for the sparse stores the numpy
accumulation with its block-max top-k (``sparse._dense_top_k``) swapped for ``topk``.

Timed on the same synthetic hybrid data as ``bench_hybrid.py`` (dense Flat ``--dim``,
M3-like lexical weights, BM25 term counts, ColBERT tokens): ``planner.run`` (first stages,
exact scores of the union, ColBERT MaxSim, fusion), which is an ``index.search`` without the
query encoder and the docstore, so the share measured here is an upper bound of the share
in a user's ``index.search``. Kernels and replacement run interleaved per query
(``paired_latencies``), one query per call and in batches of ``--batch``. Results of the two
variants are checked equal. Never part of the test suite.
"""
from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synth  # noqa: E402
from bench_hybrid import build_colbert  # noqa: E402
from common import Table, csr_to_dicts, paired_latencies  # noqa: E402

from hybridrag.search import planner  # noqa: E402
from hybridrag.stores import _kernels  # noqa: E402
from hybridrag.stores import faiss as faiss_mod  # noqa: E402
from hybridrag.stores import sparse as sparse_mod  # noqa: E402
from hybridrag.stores.base import topk  # noqa: E402
from hybridrag.stores.faiss import FaissStore  # noqa: E402
from hybridrag.stores.sparse import SparseIndex  # noqa: E402

row = Table()


def dense_top_k_by_topk(acc: np.ndarray, k: int, row_slots: np.ndarray) -> tuple[np.ndarray, ...]:
    """``sparse._dense_top_k`` (block-max numpy top-k of an accumulator) done by ``topk``."""
    c, npad = acc.shape
    n = row_slots.shape[0]
    s = np.where(acc[:, :n] > 0, acc[:, :n], -np.inf)    # a hit has a score > 0
    sc, sl = topk(s, row_slots, k)
    qi, rank = np.nonzero(sl >= 0)
    return qi, rank, sc[qi, rank], sl[qi, rank]


class _Variant:
    """Switch the stores between their compiled kernels and the topk replacement."""

    def __init__(self) -> None:
        self.kernels = faiss_mod._kernels
        self.no_kernels = types.SimpleNamespace(**{n: getattr(_kernels, n) for n in dir(_kernels)
                                                   if not n.startswith("__")})
        self.no_kernels.AVAILABLE = False
        self.orig_use = SparseIndex._use_kernel
        self.orig_dtk = sparse_mod._dense_top_k

    def compiled(self) -> None:
        faiss_mod._kernels = self.kernels
        SparseIndex._use_kernel = self.orig_use
        sparse_mod._dense_top_k = self.orig_dtk

    def topk(self) -> None:
        faiss_mod._kernels = self.no_kernels
        SparseIndex._use_kernel = lambda self: False
        sparse_mod._dense_top_k = dense_top_k_by_topk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--nq", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--colbert-dim", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32, help="median ColBERT tokens per chunk")
    ap.add_argument("--depth", type=int, default=100)
    args = ap.parse_args()
    if not _kernels.AVAILABLE:
        sys.exit("numba is not installed: there are no compiled kernels to compare")
    n, nq = args.n, args.nq
    ds = FaissStore(args.dim, "Flat", use_gpu=False)
    ds.add(np.arange(n), synth.dense_vectors(n, d=args.dim, seed=0))
    sp_store = SparseIndex("none")
    sp_store.add(np.arange(n), synth.zipf_sparse(n, nnz=60, seed=0))
    bm = SparseIndex("bm25lucene")
    bm.add(np.arange(n), synth.zipf_term_counts(n, seed=0))
    cb = build_colbert(n, args.colbert_dim, args.tokens)
    qd = synth.dense_vectors(nq, d=args.dim, seed=1)
    qs = csr_to_dicts(synth.zipf_sparse(nq, nnz=10, seed=1))
    qb = csr_to_dicts(synth.zipf_term_counts(nq, mean_len=6, seed=1))
    qflat, qoff = synth.token_vectors(np.full(nq, 32), d=args.colbert_dim, seed=7, dtype=np.float32)
    qc = [qflat[qoff[i]:qoff[i + 1]] for i in range(nq)]
    stores = {"dense": ds, "sparse": sp_store, "bm25": bm, "colbert": cb}
    queries = {"dense": qd, "sparse": qs, "bm25": qb, "colbert": qc}
    plans = {
        "M3 (dense+sparse+colbert)": planner.QueryPlan(
            modes=["dense", "sparse", "colbert"], depths={"dense": args.depth, "sparse": args.depth},
            weights={"dense": 1.0, "sparse": 0.3, "colbert": 1.0}, k=10),
        "offline (dense+bm25)": planner.QueryPlan(
            modes=["dense", "bm25"], depths={"dense": args.depth, "bm25": args.depth}, fusion="relative",
            weights={"dense": 1.0, "bm25": 1.0}, k=10),
    }
    v = _Variant()
    for name, plan in plans.items():
        for size in (1, args.batch):
            starts = list(range(0, nq - size + 1, size))

            def call(i: int, _p=plan, _s=size) -> list[planner.Candidates]:
                a = starts[i]
                return planner.run(_p, {m: queries[m][a:a + _s] for m in _p.modes}, stores)

            def compiled(i: int) -> None:
                v.compiled()
                call(i)

            def by_topk(i: int) -> None:
                v.topk()
                call(i)

            v.compiled()
            want = [call(i) for i in range(len(starts))]
            v.topk()
            got = [call(i) for i in range(len(starts))]
            same = all(np.array_equal(a.slots[:10], b.slots[:10]) for x, y in zip(want, got) for a, b in zip(x, y))
            lat_c, lat_t = paired_latencies([compiled, by_topk], len(starts), rounds=3)
            label = f"N={n:,} {name}, {size} quer{'y' if size == 1 else 'ies'} per call"
            row(label, "compiled kernels", "p50 / mean ms", f"{lat_c['p50']:.3f} / {lat_c['mean']:.3f}")
            row(label, "base.topk instead", "p50 / mean ms", f"{lat_t['p50']:.3f} / {lat_t['mean']:.3f}")
            row(label, "cost of the replacement", "p50 / mean; top-10 equal",
                f"{lat_t['p50'] / lat_c['p50'] - 1:+.1%} / {lat_t['mean'] / lat_c['mean'] - 1:+.1%}; {same}")
    v.compiled()
    row.print()


if __name__ == "__main__":
    main()
