"""A dense store as a segment: the cost of ``FaissStore.load`` and of one query per call.

    PYTHONPATH=<checkout> python benchmarks/bench_dense_segments.py [--part load,hybrid]

Part ``load``: a ``Flat`` store of ``--n`` x ``--d`` float32 vectors (seeded Gaussian rows,
L2-normalised) is saved, then ``FaissStore.load`` is timed (best of ``--rounds``; the files
are in the page cache after the save, so this is the warm open) with the resident memory it
adds, followed by single-query searches (k=10, ``--nq`` queries, p50 and p90).

Part ``hybrid``: a ``HybridIndex`` with only a dense mode (a random 2-layer BERT of hidden
384 from ``tests/tiny_models.py``, Flat index) over ``--docs`` short generated documents;
``index.search(query, k=10)`` one query per call, p50 over ``--nq`` queries after a warm-up.

Part ``store``: ``FaissStore.search`` alone on a Flat store of ``--docs`` x 384 rows, one
query per call (the dense store's share of the ``hybrid`` figure).

Run it once per checkout (PYTHONPATH first) to compare two versions on the same machine.
Never part of the test suite.
"""
from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time

import numpy as np

from common import ROOT  # noqa: F401 - puts the repository on sys.path


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def part_load(n: int, d: int, nq: int, rounds: int) -> None:
    from hybridrag.stores.faiss import FaissStore

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.standard_normal((nq, d), dtype=np.float32)
    store = FaissStore(d)
    store.add(np.arange(n), x)
    del x
    with tempfile.TemporaryDirectory() as tmp:
        files = store.save(tmp, "dense.s1")
        size = sum(os.path.getsize(os.path.join(tmp, f)) for f in files.values())
        cfg = store.config()
        del store
        gc.collect()
        best, rss = float("inf"), 0.0
        for _ in range(rounds):
            before = _rss_mib()
            t = time.perf_counter()
            loaded = FaissStore.load(tmp, files, cfg)
            best = min(best, time.perf_counter() - t)
            rss = _rss_mib() - before
            del loaded
            gc.collect()
        loaded = FaissStore.load(tmp, files, cfg)
        for i in range(5):
            loaded.search(q[i], 10)
        lat = []
        for i in range(nq):
            t = time.perf_counter()
            loaded.search(q[i], 10)
            lat.append(time.perf_counter() - t)
        print(f"load  n={n} d={d}: files {size / 2**20:.0f} MiB ({sorted(files)}), "
              f"FaissStore.load best {best * 1e3:.2f} ms, RSS +{rss:.0f} MiB; "
              f"search k=10 p50 {np.percentile(lat, 50) * 1e3:.2f} ms p90 {np.percentile(lat, 90) * 1e3:.2f} ms")


def part_hybrid(docs: int, nq: int) -> None:
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import make_bert_folder

    from hybridrag.index import HybridIndex

    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(2000)]
    texts = [" ".join(rng.choice(words, size=12)) for _ in range(docs)]
    with tempfile.TemporaryDirectory() as tmp:
        model = make_bert_folder(os.path.join(tmp, "bert"), hidden=384)
        pipe = {"name": "dense-flat", "encoder": {"kind": "dense", "model": str(model), "max_length": 32,
                                                  "query_max_length": 32, "batch_size": 256},
                "chunking": {"max_tokens": 30, "overlap": 0},
                "sparse": {"enabled": False}, "colbert": {"enabled": False}, "bm25": {"enabled": False},
                "fusion": {"weights": {"dense": 1.0}}}
        idx = HybridIndex.create(os.path.join(tmp, "idx"), pipe)
        idx.add({"id": str(i), "text": t} for i, t in enumerate(texts))
        store = idx.stores["dense"]
        queries = [" ".join(rng.choice(words, size=6)) for _ in range(nq)]
        for qq in queries[:10]:
            idx.search(qq, k=10)
        lat = []
        for qq in queries:
            t = time.perf_counter()
            idx.search(qq, k=10)
            lat.append(time.perf_counter() - t)
        print(f"hybrid docs={docs} (dense {type(store).__name__} {getattr(store, 'factory', '?')}, "
              f"{len(store)} rows x {store.dim}): index.search k=10 p50 {np.percentile(lat, 50) * 1e3:.3f} ms "
              f"p90 {np.percentile(lat, 90) * 1e3:.3f} ms over {nq} queries")
        idx.close()


def part_store(n: int, d: int, nq: int, rounds: int) -> None:
    """The dense store's share of a search: ``FaissStore.search`` alone (Flat, one query per
    call, k=10), p50 of each of ``rounds`` passes over the queries."""
    from hybridrag.stores.faiss import FaissStore

    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.standard_normal((nq, d), dtype=np.float32)
    store = FaissStore(d)
    store.add(np.arange(n), x)
    for i in range(10):
        store.search(q[i], 10)
    p50s = []
    for _ in range(rounds):
        lat = []
        for i in range(nq):
            t = time.perf_counter()
            store.search(q[i], 10)
            lat.append(time.perf_counter() - t)
        p50s.append(np.percentile(lat, 50) * 1e3)
    print(f"store n={n} d={d}: FaissStore.search k=10 one query per call, p50 per pass (ms): "
          + " ".join(f"{v:.3f}" for v in p50s))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", default="load,hybrid,store")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--nq", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    parts = args.part.split(",")
    if "load" in parts:
        part_load(args.n, args.d, args.nq, args.rounds)
    if "hybrid" in parts:
        part_hybrid(args.docs, args.nq)
    if "store" in parts:
        part_store(args.docs, 384, args.nq, args.rounds)


if __name__ == "__main__":
    main()
