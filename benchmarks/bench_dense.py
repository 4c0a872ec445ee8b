"""Dense benchmark: hybridrag FaissStore vs raw FAISS on the same vectors.

    python benchmarks/bench_dense.py --n 10000,100000,1000000 --dim 1024 --hnsw-max 100000

Per N (synthetic unit vectors of low intrinsic dimension, synth.dense_vectors; queries
from the same subspace with another seed):

* exact: ``FaissStore("Flat").search`` vs ``faiss.IndexFlatIP.search``: batch queries/s
  and one-query-per-call latency; overhead % = engine time / faiss time - 1 (the store
  fetches k+8 hits, maps FAISS's rows to its slots with FAISS's own distances, which are
  exact for Flat and HNSW-Flat, and checks ties).
  Top-10 identical to faiss is reported too.
* HNSW (N <= ``--hnsw-max``): ``FaissStore("HNSW32", ef_search=64)`` vs a raw
  ``faiss.IndexHNSWFlat(d, 32, IP)`` with the same efSearch: build s, recall@10 against
  exact brute force, queries/s.

Two separate indexes of the same vectors differ by where they lie in memory (and HNSW
graphs by their insertion order), which moves one query's time by a few per cent; so each
part also times raw FAISS against a second copy of its index (control) and the store against
raw FAISS calls on the store's own index object (``same index``: the engine's own work alone).

Engine and peer are timed interleaved (batch: best of 5 rounds, 2 above 100k, ``--batch-rounds``,
the order alternating; one query per
call: both answer query i before query i+1, in turn order rotating, ``--rounds`` passes
over the queries up to 100k rows), so load that comes and goes on a shared machine hits
both alike. FAISS uses all cores (OpenMP) in both the
engine and the peer. Never part of the test suite.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, fmt_lat, overlap_at_k, paired_latencies, paired_timed  # noqa: E402

import faiss  # noqa: E402
import synth  # noqa: E402

from hybridrag.stores.faiss import FaissStore  # noqa: E402

row = Table()


def part(n: int, d: int, nq: int, hnsw_max: int, ef: int, rounds: int, batch_rounds: int | None) -> None:
    name = f"N={n:,} d={d} nq={nq}"
    t = time.perf_counter()
    x = synth.dense_vectors(n, d=d, seed=0)
    q = synth.dense_vectors(nq, d=d, seed=1)
    row(name, "data", "gen s", f"{time.perf_counter() - t:.1f}")

    store = FaissStore(d, "Flat", use_gpu=False)
    t = time.perf_counter()
    store.add(np.arange(n), x)
    row(name, "hybridrag FaissStore Flat", "add s", f"{time.perf_counter() - t:.2f}")
    raw = faiss.IndexFlatIP(d)
    t = time.perf_counter()
    raw.add(x)
    row(name, "faiss IndexFlatIP", "add s", f"{time.perf_counter() - t:.2f}")

    repeat = batch_rounds or (5 if n <= 100_000 else 2)
    t_raw, t_eng = paired_timed([lambda: raw.search(q, 10), lambda: store.search(q, 10)], repeat=repeat)
    row(name, "faiss IndexFlatIP", "batch queries/s", f"{nq / t_raw:,.0f}")
    row(name, "hybridrag FaissStore Flat", "batch queries/s",
        f"{nq / t_eng:,.0f} (overhead {100 * (t_eng / t_raw - 1):+.1f}%)")
    nl = min(nq, 500 if n <= 100_000 else 50)
    rounds = rounds if n <= 100_000 else 1
    lr, le = paired_latencies([lambda i: raw.search(q[i:i + 1], 10), lambda i: store.search(q[i:i + 1], 10)], nl,
                              rounds=rounds)
    row(name, "faiss IndexFlatIP", "one query per call", fmt_lat(lr))
    row(name, "hybridrag FaissStore Flat", "one query per call",
        fmt_lat(le) + f" (p50 overhead {100 * (le['p50'] / lr['p50'] - 1):+.1f}%)")
    _, exact = raw.search(q, 10)
    _, ours = store.search(q, 10)
    row(name, "hybridrag vs faiss Flat", "top-10 identical; overlap@10",
        f"{np.mean(np.all(exact == ours, axis=1)):.1%}; {overlap_at_k(ours, exact):.4f}")
    # Control: the same raw search on a second, identical IndexFlatIP. Where two copies of
    # the same vectors lie in memory moves a scan by a few per cent, so this is the floor of
    # what two separate indexes can show; the rows after it leave placement out.
    raw2 = faiss.IndexFlatIP(d)
    raw2.add(x)
    l1, l2 = paired_latencies([lambda i: raw.search(q[i:i + 1], 10), lambda i: raw2.search(q[i:i + 1], 10)], nl,
                              rounds=rounds)
    row(name, "faiss IndexFlatIP, a second copy (control)", "one query per call",
        fmt_lat(l2) + f" (p50 vs the first copy {100 * (l2['p50'] / l1['p50'] - 1):+.1f}%)")
    del raw, raw2
    same_index(name, "Flat", store, q, nl, rounds)

    if n > hnsw_max:
        row(name, "HNSW32", "build", f"not run (N > --hnsw-max {hnsw_max:,})")
        return
    hs = FaissStore(d, "HNSW32", ef_search=ef, use_gpu=False)
    t = time.perf_counter()
    hs.add(np.arange(n), x)
    hs.search(q[:1], 10)
    row(name, f"hybridrag FaissStore HNSW32 ef={ef}", "build s", f"{time.perf_counter() - t:.1f}")
    rh = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    t = time.perf_counter()
    rh.add(x)
    row(name, f"faiss IndexHNSWFlat M=32 ef={ef}", "build s", f"{time.perf_counter() - t:.1f}")
    rh.hnsw.efSearch = ef
    t_rh, t_hs = paired_timed([lambda: rh.search(q, 10), lambda: hs.search(q, 10)], repeat=repeat)
    _, got_raw = rh.search(q, 10)
    _, got = hs.search(q, 10)
    row(name, f"faiss IndexHNSWFlat M=32 ef={ef}", "recall@10; batch queries/s",
        f"{overlap_at_k(got_raw, exact):.4f}; {nq / t_rh:,.0f}")
    row(name, f"hybridrag FaissStore HNSW32 ef={ef}", "recall@10; batch queries/s",
        f"{overlap_at_k(got, exact):.4f}; {nq / t_hs:,.0f} (overhead {100 * (t_hs / t_rh - 1):+.1f}%; "
        f"{t_eng / t_hs:.1f}x the engine's Flat)")
    lrh, lh = paired_latencies([lambda i: rh.search(q[i:i + 1], 10), lambda i: hs.search(q[i:i + 1], 10)], nl,
                                  rounds=rounds)
    row(name, f"faiss IndexHNSWFlat M=32 ef={ef}", "one query per call", fmt_lat(lrh))
    row(name, f"hybridrag FaissStore HNSW32 ef={ef}", "one query per call",
        fmt_lat(lh) + f" (p50 overhead {100 * (lh['p50'] / lrh['p50'] - 1):+.1f}%)")
    same_index(name, f"HNSW32 ef={ef}", hs, q, nl, rounds)


def same_index(name: str, label: str, store: FaissStore, q: np.ndarray, nl: int, rounds: int) -> None:
    """One query per call: the store's search against a raw FAISS search (k=10, FAISS's
    Python API) on the store's own FAISS index object, so both read the same memory (and, for
    HNSW, the same graph): what is left is the engine's own work. (Flat: the store searches
    its vectors by brute force; raw FAISS an IndexFlat holding a copy of them.)"""
    index = store._index
    if index is None:   # Flat keeps no FAISS index: raw FAISS gets an IndexFlat of the same vectors
        index = faiss.IndexFlatIP(store.dim)
        index.add(np.ascontiguousarray(store._vecs.slice(0, store._n_rows), dtype=np.float32))
    if hasattr(faiss.downcast_index(index), "hnsw"):
        faiss.downcast_index(index).hnsw.efSearch = store.ef_search   # the raw call's setting
    lr, le = paired_latencies([lambda i: index.search(q[i:i + 1], 10), lambda i: store.search(q[i:i + 1], 10)], nl,
                              rounds=rounds)
    row(name, f"faiss search on the store's own {label} index", "one query per call", fmt_lat(lr))
    row(name, f"hybridrag FaissStore {label}, same index", "one query per call",
        fmt_lat(le) + f" (p50 overhead {100 * (le['p50'] / lr['p50'] - 1):+.1f}%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="10000,100000", help="comma-separated corpus sizes")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--hnsw-max", type=int, default=100_000)
    ap.add_argument("--ef", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3,
                    help="passes over the queries for one-query-per-call latency (N <= 100k; 1 above)")
    ap.add_argument("--batch-rounds", type=int, default=None,
                    help="rounds of the batch timing, best of (default 5 up to 100k, 2 above)")
    args = ap.parse_args()
    row("setup", "faiss", "version; OpenMP threads", f"{faiss.__version__}; {faiss.omp_get_max_threads()} ({os.cpu_count()} CPUs)")
    for n in [int(s) for s in args.n.split(",") if s]:
        part(n, args.dim, args.nq, args.hnsw_max, args.ef, args.rounds, args.batch_rounds)
    row.print()


if __name__ == "__main__":
    main()
