"""How fast FAISS codes sub-vectors of each width: the reason ``PQCodec.encode`` pads its runs.

    python benchmarks/profile_pq_widths.py --n 200000

For each width w, a ``faiss.ProductQuantizer`` of 64 // w one-byte sub-quantizers of w
dimensions (256 centroids each; two k-means iterations, the codes' speed does not depend on
them) codes ``--n`` Gaussian vectors on one thread; printed: nanoseconds per (dimension x
centroid), so widths compare at equal work. Widths FAISS has SIMD distance kernels for come
out several times faster than their neighbours; ``hybridrag.stores._pq._FAST_WIDTHS`` lists the
ones ``encode`` pads to. Never part of the test suite.
"""
from __future__ import annotations

import argparse
import time

import faiss
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="vectors coded per width")
    ap.add_argument("--widths", default="1,2,3,4,5,6,7,8,12,16,32,64")
    args = ap.parse_args()
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"faiss {faiss.__version__}, one thread, n={args.n:,}\n")
    print("| width | bytes | ns per (dimension x centroid) |\n|---:|---:|---:|")
    for w in (int(s) for s in args.widths.split(",")):
        count = max(1, 64 // w)
        x = rng.standard_normal((args.n, w * count)).astype(np.float32)
        pq = faiss.ProductQuantizer(w * count, count, 8)
        pq.cp.niter = 2
        pq.train(x[:20_000])
        t = time.perf_counter()
        pq.compute_codes(x)
        dt = time.perf_counter() - t
        print(f"| {w} | {count} | {dt / (args.n * w * count * 256) * 1e9:.3f} |")


if __name__ == "__main__":
    main()
