"""What opening a ColBERT token collection in Milvus Lite costs (issue 24): the store's load
counts the visible chunks with a filtered ``count(*)``, which Milvus Lite evaluates over every
row. Never part of the test suite.

    python benchmarks/probe_milvus_colbert_load.py --chunks 10000

Writes ``--chunks`` chunks of 20-60 random 128-d token vectors into a new Milvus Lite file (a
temporary folder under ``--dir``) through ``MilvusColbertStore`` (rows of 8 tokens), commits them,
then times ``MilvusColbertStore.load`` (3 times), ``score`` of 100 random candidates for one
32-token query (5 times), the visible count alone, and ``count(*)`` with no filter and with the
filters ``key >= 0`` and ``gen <= 1``.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chunks", type=int, default=10000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--dir", default=None, help="where the temporary Milvus Lite file goes")
    a = ap.parse_args()
    from hybridrag.stores.milvus import MilvusColbertStore

    d = Path(tempfile.mkdtemp(prefix="probe-colbert-load-", dir=a.dir))
    try:
        rng = np.random.default_rng(0)
        s = MilvusColbertStore(a.dim, uri=str(d / "m.db"), collection="c")
        t = time.perf_counter()
        for lo in range(0, a.chunks, 2000):
            hi = min(a.chunks, lo + 2000)
            s.add(np.arange(lo, hi), [rng.standard_normal((int(rng.integers(20, 61)), a.dim)).astype(np.float32)
                                      for _ in range(lo, hi)])
        files = s.save(d, "colbert.g1")
        s.committed()
        print(f"insert + save of {a.chunks:,} chunks: {time.perf_counter() - t:.1f} s")
        cfg = s.config()
        s.close()
        for _ in range(3):
            t = time.perf_counter()
            r = MilvusColbertStore.load(d, files, cfg)
            print(f"load: {1000 * (time.perf_counter() - t):,.0f} ms")
            r.close()
        r = MilvusColbertStore.load(d, files, cfg)
        q = [rng.standard_normal((32, a.dim)).astype(np.float32)]
        for _ in range(5):
            c = np.sort(rng.choice(a.chunks, 100, replace=False))
            t = time.perf_counter()
            r.score(q, [c])
            print(f"score of 100 candidates: {1000 * (time.perf_counter() - t):,.0f} ms")
        t = time.perf_counter()
        r._visible_count()
        print(f"visible count (row == 0 and gen <= g): {1000 * (time.perf_counter() - t):,.0f} ms")
        for e in ("", "key >= 0", "gen <= 1"):
            t = time.perf_counter()
            n = r._live_count(e)
            print(f"count(*) with filter {e!r}: {n:,} rows in {1000 * (time.perf_counter() - t):,.0f} ms")
        r.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
