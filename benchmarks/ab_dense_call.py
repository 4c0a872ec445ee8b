"""One dense query per call: the store as it is against the store with one step put back the
way it was, and raw FAISS, all on the store's own FAISS index.

    python benchmarks/ab_dense_call.py --n 10000 --factory HNSW32 --runs 3

Variants (each query answered by all three before the next query; the order of the three
cycles through all six permutations, so no variant always runs right after raw FAISS, which
leaves the store's code colder than when it follows another store call):

* ``raw``: ``index.search(q, k)`` on the store's own index (efSearch 64 set on it);
* ``store``: ``FaissStore.search`` as committed;
* ``store, wrapper search`` (``--step search``): the FAISS call through the Python wrapper
  ``index.search(q, kf, params=...)`` instead of ``search_c`` (before commit 66b6a89);
* ``store, no untied path`` (``--step untied``): a single query's hits always go through the
  compiled ``faiss_top_k`` instead of ``_untied_hits`` first.

Printed per run: p50 latency and p50 over raw FAISS. Synthetic vectors of ``bench_dense.py``
(384-d, ``synth.dense_vectors``), 500 queries x ``--rounds``. Never part of the test suite.
"""
from __future__ import annotations

import argparse
import itertools
import time
from typing import Any, Callable

import numpy as np

from common import ROOT  # noqa: F401 - puts the repository on sys.path
import faiss  # noqa: E402
import synth  # noqa: E402

from hybridrag.stores import faiss as faiss_store  # noqa: E402
from hybridrag.stores.faiss import FaissStore  # noqa: E402


def _wrapper_search(index: Any, q: np.ndarray, kf: int, params: Any) -> tuple[np.ndarray, np.ndarray]:
    return index.search(q, kf, params=params)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--factory", default="HNSW32")
    ap.add_argument("--step", choices=["search", "untied"], default="untied")
    ap.add_argument("--nq", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    d = 384
    x = synth.dense_vectors(args.n, d, seed=1)
    qs = synth.dense_vectors(args.nq, d, seed=2)
    store = FaissStore(d, factory=args.factory, ef_search=64)
    store.add(np.arange(args.n), x)
    index = store._index
    if args.factory != "Flat":
        faiss.downcast_index(index).hnsw.efSearch = 64
    real_search, real_untied = faiss_store._search, FaissStore._untied_hits

    def as_committed() -> None:
        faiss_store._search, FaissStore._untied_hits = real_search, real_untied

    def step_back() -> None:
        if args.step == "search":
            faiss_store._search = _wrapper_search
        else:
            FaissStore._untied_hits = lambda *a: None

    label = "store, wrapper search" if args.step == "search" else "store, no untied path"
    variants: list[tuple[str, Callable[[], None], Callable[[np.ndarray], Any]]] = [
        ("raw FAISS", as_committed, lambda qi: index.search(qi, args.k)),
        ("store", as_committed, lambda qi: store.search(qi, args.k)),
        (label, step_back, lambda qi: store.search(qi, args.k)),
    ]
    for _, setup, call in variants:
        setup()
        call(qs[:3])
    as_committed()
    perms = list(itertools.permutations(range(len(variants))))
    print(f"faiss {faiss.__version__}, {args.factory}, N={args.n:,}, d={d}, {args.nq} queries x "
          f"{args.rounds} rounds, k={args.k}\n")
    print("| run | " + " | ".join(f"{name} p50" for name, _, _ in variants) + " | "
          + " | ".join(f"{name} over raw" for name, _, _ in variants[1:]) + " |")
    print("|---:|" + "---:|" * (2 * len(variants) - 1))
    for run in range(1, args.runs + 1):
        lat: list[list[int]] = [[] for _ in variants]
        for r in range(args.rounds):
            for i in range(args.nq):
                qi = qs[i:i + 1]
                for j in perms[(i + r) % len(perms)]:
                    _, setup, call = variants[j]
                    setup()
                    t = time.perf_counter_ns()
                    call(qi)
                    lat[j].append(time.perf_counter_ns() - t)
        as_committed()
        p50 = [float(np.median(v)) / 1e3 for v in lat]
        print(f"| {run} | " + " | ".join(f"{p:.1f} us" for p in p50) + " | "
              + " | ".join(f"{100 * (p / p50[0] - 1):+.1f}%" for p in p50[1:]) + " |", flush=True)


if __name__ == "__main__":
    main()
