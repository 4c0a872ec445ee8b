"""Where one dense query's time goes: ``FaissStore.search`` against raw FAISS, split at the FAISS call.

    python benchmarks/profile_dense_call.py --n 10000,100000

Same synthetic vectors as ``bench_dense.py`` (384-d, ``synth.dense_vectors``). For each size
and index (``Flat``, ``HNSW32`` with efSearch 64) it builds the store and a raw FAISS index of
the same factory string, then answers every query one per call on both, interleaved (the
order alternates per query and round, so load that comes and goes hits both alike). Inside the
store, the FAISS call (``hybridrag.stores.faiss._search``) and the compiled top-k are timed by
thin wrappers, so each engine call splits into: its FAISS call, the compiled top-k kernel
(0 for a query whose fetched scores are distinct on Flat and HNSW: ``_untied_hits`` takes
FAISS's order then, inside "rest"), and the rest (input checks, parameters, rows to slots,
fallback checks). Printed: p50s in microseconds, and the overhead the way ``bench_dense.py``
states it (engine p50 over raw p50). The wrappers add well under a microsecond per call.
With ``--same-index`` the raw calls search the store's own FAISS index object, so both read
the same memory (and graph), kept warm by each other's calls. Never part of the test suite.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from common import ROOT  # noqa: F401 - puts the repository on sys.path
import faiss  # noqa: E402
import synth  # noqa: E402

from hybridrag.stores import _kernels  # noqa: E402
from hybridrag.stores import faiss as faiss_store  # noqa: E402
from hybridrag.stores.faiss import FaissStore  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="10000,100000", help="store sizes, comma-separated")
    ap.add_argument("--nq", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5, help="passes over the queries")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--same-index", action="store_true",
                    help="raw FAISS searches the store's own index object (same memory, same graph)")
    args = ap.parse_args()
    d = 384
    kernel_ns = [0]
    search_ns = [0]
    real_search = faiss_store._search

    def timed_search(*a: Any) -> Any:   # the store's call into FAISS (search_c)
        t = time.perf_counter_ns()
        out = real_search(*a)
        search_ns[0] = time.perf_counter_ns() - t
        return out

    faiss_store._search = timed_search

    def timed(real_kernel: Any) -> Any:
        def timed_kernel(*a: Any) -> Any:
            t = time.perf_counter_ns()
            out = real_kernel(*a)
            kernel_ns[0] = time.perf_counter_ns() - t
            return out
        return timed_kernel

    # Whichever compiled pass the store takes: the re-score, or FAISS's own distances to slots.
    _kernels.rescore_top_k = timed(_kernels.rescore_top_k)
    _kernels.faiss_top_k = timed(_kernels.faiss_top_k)
    print(f"faiss {faiss.__version__}, numba kernel {'on' if _kernels.AVAILABLE else 'off'}, "
          f"d={d}, {args.nq} queries x {args.rounds} rounds, k={args.k}"
          f"{', raw FAISS on the store index' if args.same_index else ''}\n")
    print("| N | index | raw FAISS p50 | engine p50 | overhead | engine: its FAISS call | top-k kernel | rest |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    q = synth.dense_vectors(args.nq, d, seed=2)
    for n in (int(s) for s in args.n.split(",")):
        x = synth.dense_vectors(n, d, seed=1)
        for factory in ("Flat", "HNSW32"):
            store = FaissStore(d, factory=factory, ef_search=64)
            store.add(np.arange(n), x)
            if args.same_index:
                raw = store._index
            else:
                raw = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
                raw.add(x)
            if factory != "Flat":
                faiss.downcast_index(raw).hnsw.efSearch = 64
            store.search(q[:3], args.k)
            raw.search(q[:3], args.k)
            lat = np.zeros((2, args.rounds * args.nq))
            inner = np.zeros(args.rounds * args.nq)
            kern = np.zeros(args.rounds * args.nq)
            t = 0
            for r in range(args.rounds):
                for i in range(args.nq):
                    qi = q[i:i + 1]
                    for j in ((0, 1) if (i + r) % 2 == 0 else (1, 0)):
                        kernel_ns[0] = 0
                        s = time.perf_counter_ns()
                        if j == 0:
                            raw.search(qi, args.k)
                        else:
                            store.search(qi, args.k)
                        lat[j, t] = time.perf_counter_ns() - s
                        if j == 1:
                            inner[t], kern[t] = search_ns[0], kernel_ns[0]
                    t += 1
            p = [float(np.median(v)) / 1e3 for v in (lat[0], lat[1], inner, kern, lat[1] - inner - kern)]
            print(f"| {n:,} | {factory} | {p[0]:.1f} us | {p[1]:.1f} us | {100 * (p[1] / p[0] - 1):+.1f}% | "
                  f"{p[2]:.1f} us | {p[3]:.1f} us | {p[4]:.1f} us |", flush=True)


if __name__ == "__main__":
    main()
