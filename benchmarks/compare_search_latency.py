"""Two indexes of the same corpus side by side (issue 26 item 4: ``[bm25] context`` = 0 against 1):
each one's BM25 bytes on disk and ``HybridIndex.search(q)`` p50 / p99, one query per call, with
BM25 alone (``modes=["bm25"]``) and with every mode of its pipeline. Never part of the test suite.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/compare_search_latency.py \\
        INDEX_A INDEX_B ../shared/data/beir/scifact/queries.jsonl

Each index is loaded, 30 queries warm it (and its query-encoding cache), then every query of the
file is timed once per setting; run it twice with the indexes swapped to see the machine's noise.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np


def main() -> None:
    from hybridrag import HybridIndex

    a, b, queries = sys.argv[1:4]
    qs = [json.loads(line)["text"] for line in open(queries, encoding="utf-8")]
    print("| index | chunks | segments | bm25 bytes | search, bm25 alone: p50 / p99 ms | search, every mode: p50 / p99 ms |")
    print("|---|---:|---:|---:|---|---|")
    for path in (a, b):
        idx = HybridIndex.load(path)
        try:
            st = idx.stats()
            cells = []
            for kw in ({"modes": ["bm25"]}, {}):
                for q in qs[:30]:
                    idx.search(q, **kw)
                ts = []
                for q in qs:
                    t = time.perf_counter()
                    idx.search(q, **kw)
                    ts.append((time.perf_counter() - t) * 1000)
                cells.append(f"{np.percentile(ts, 50):.3f} / {np.percentile(ts, 99):.3f}")
            print(f"| {path} | {st['chunks']} | {len(st['segments'])} | {st['bytes']['bm25']:,} | {cells[0]} | {cells[1]} |")
        finally:
            idx.close()


if __name__ == "__main__":
    main()
