"""Probes behind docs/CHANGELOG-performance.md section 11 (where a 1M-chunk index's calls spent
their time). Never part of the test suite.

    # an index kept by the segments benchmark (its "grown" folder), then:
    python benchmarks/bench_segments.py --sizes 1000000 --keep --dir /tmp/seg
    python benchmarks/probe_segments.py upserts /tmp/seg/bench-segments-*/grown   # cProfile of 10 upserts
    python benchmarks/probe_segments.py first-search /tmp/seg/bench-segments-*/grown
    python benchmarks/probe_segments.py flat-threads      # FAISS Flat scan: 1 vs 2 threads, 1 vs 20 arrays
    python benchmarks/probe_segments.py mapped DIR_ONE DIR_MANY   # 2 MB page mappings of vector files
    python benchmarks/probe_segments.py paired 1000000 /tmp/pm   # 20 segments vs 1: hybrid and dense p50

``upserts`` and ``first-search`` use the benchmark's fake encoder and corpus (same seed), so the
index must come from ``bench_segments.py`` with its defaults (256-d, 100k-word vocabulary).
``mapped`` scans every ``dense.*.vectors.npy`` of two index folders (e.g. one optimized into one
segment and one of 20) through memory maps and prints FAISS's scan time and how much of each file
the kernel mapped as 2 MB pages (``FilePmdMapped`` in ``/proc/self/smaps``). ``paired N DIR``
writes (once; kept in ``DIR/pm-N``) the benchmark's first N documents as 20 commits with merges
off (``many``) and a copy of it after ``optimize()`` (``one``), then prints, twice, the p50 of
200 hybrid queries (one per call, the two indexes interleaved query by query, as the benchmark's
20-vs-1 rows) and the p50 of the dense store's search alone (100 queries, interleaved).
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _knn(q: np.ndarray, x: np.ndarray, k: int = 108) -> None:
    import faiss

    d = np.empty((1, k), np.float32)
    r = np.empty((1, k), np.int64)
    faiss.knn_inner_product(faiss.swig_ptr(q), faiss.swig_ptr(x), x.shape[1], 1, x.shape[0], k,
                            faiss.swig_ptr(d), faiss.swig_ptr(r))


def _median_ms(f, n: int = 15) -> float:
    f()
    s = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        s.append(time.perf_counter() - t)
    return 1000 * float(np.median(s))


def _index(path: str):
    from bench_segments import Corpus, FakeEncoder
    from hybridrag import HybridIndex

    enc = FakeEncoder(256, seed=12345)
    return HybridIndex.load(path, encoder=enc), Corpus(100_000, 0)


def upserts(path: str) -> None:
    idx, corpus = _index(path)
    n = len(idx)
    idx.search(corpus.queries(1)[0], k=10)
    prof, times = cProfile.Profile(), []
    for j in range(12):   # two to warm up, ten profiled
        doc = corpus.changed((j * 7919 + n // 5) % n, 50)
        if j >= 2:
            prof.enable()
        t = time.perf_counter()
        idx.upsert([doc])
        times.append(time.perf_counter() - t)
        if j >= 2:
            prof.disable()
    print("upsert + commit (ms):", [round(1000 * x, 1) for x in times])
    pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    idx.close()


def first_search(path: str) -> None:
    t = time.perf_counter()
    idx, corpus = _index(path)
    print(f"load {1000 * (time.perf_counter() - t):.1f} ms")
    qs = corpus.queries(20)
    for label, q in (("first search", qs[0]), ("second search", qs[1])):
        t = time.perf_counter()
        idx.search(q, k=10)
        print(f"{label} {1000 * (time.perf_counter() - t):.1f} ms")
    n = len(idx)
    for j in range(3):
        t = time.perf_counter()
        idx.upsert([corpus.changed((j * 7919 + n // 7) % n, 90)])
        u = time.perf_counter() - t
        t = time.perf_counter()
        idx.search(qs[2 + j], k=10)
        print(f"upsert + commit {1000 * u:.1f} ms; the search after it {1000 * (time.perf_counter() - t):.1f} ms")
    idx.close()


def flat_threads() -> None:
    import faiss

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1_000_000, 256)).astype(np.float32)
    parts = [x[i * 50_000:(i + 1) * 50_000] for i in range(20)]
    q = rng.standard_normal((1, 256)).astype(np.float32)
    for threads in (2, 1, 2, 1):
        faiss.omp_set_num_threads(threads)
        one = _median_ms(lambda: _knn(q, x))
        many = _median_ms(lambda: [_knn(q, p) for p in parts])
        print(f"FAISS threads {threads}: one 1M x 256 array {one:.1f} ms; 20 arrays of 50k {many:.1f} ms")


def mapped(one: str, many: str) -> None:
    import faiss

    faiss.omp_set_num_threads(1)
    q = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
    for folder in (one, many):
        arrays = [np.load(f, mmap_mode="r") for f in sorted(Path(folder).glob("dense.*.vectors.npy"))]
        ms = _median_ms(lambda: [_knn(q, a) for a in arrays], n=10)
        pmd, size = 0, sum(a.nbytes for a in arrays)
        cur = ""
        with open("/proc/self/smaps") as fh:
            for line in fh:
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                    cur = line
                elif line.startswith("FilePmdMapped") and str(Path(folder).resolve()) in cur:
                    pmd += int(line.split()[1]) * 1024
        print(f"{folder}: {len(arrays)} vector files, {size / 2**20:,.0f} MiB, one thread scan {ms:.1f} ms, "
              f"mapped as 2 MB pages {pmd / 2**20:,.0f} MiB")


def paired(n: int, where: str) -> None:
    import shutil

    from bench_segments import Corpus, FakeEncoder, _build
    from common import paired_latencies
    from hybridrag import HybridIndex

    enc, corpus = FakeEncoder(256, seed=12345), Corpus(100_000, 0)
    many, one = Path(where) / f"pm-{n}" / "many", Path(where) / f"pm-{n}" / "one"
    if not (one / "manifest.json").exists():
        shutil.rmtree(many.parent, ignore_errors=True)
        w, _ = _build(HybridIndex, enc, corpus, n, many, 20, policy_off=True)
        w.close()
        shutil.copytree(many, one)
        o = HybridIndex.load(one, encoder=enc)
        o.optimize()
        o.close()
    qs = corpus.queries(200)
    rm, ro = HybridIndex.load(many, encoder=enc), HybridIndex.load(one, encoder=enc)
    for q in qs[:20]:
        rm.search(q, k=10)
        ro.search(q, k=10)
    vecs = enc.vectors(qs[:100]).astype(np.float32)
    dm, do = rm.stores["dense"], ro.stores["dense"]
    for _ in range(2):
        lm, lo = paired_latencies([lambda i: rm.search(qs[i], k=10), lambda i: ro.search(qs[i], k=10)], len(qs))
        dlm, dlo = paired_latencies([lambda i: dm.search(vecs[i:i + 1], 100), lambda i: do.search(vecs[i:i + 1], 100)],
                                    len(vecs))
        print(f"{n:,} chunks: hybrid p50 20 segments {lm['p50']:.2f} ms, 1 segment {lo['p50']:.2f} ms "
              f"({lm['p50'] / lo['p50']:.3f}x); dense store alone {dlm['p50']:.2f} / {dlo['p50']:.2f} ms "
              f"({dlm['p50'] / dlo['p50']:.3f}x)")
    rm.close()
    ro.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("probe", choices=["upserts", "first-search", "flat-threads", "mapped", "paired"])
    ap.add_argument("paths", nargs="*")
    a = ap.parse_args()
    if a.probe == "upserts":
        upserts(a.paths[0])
    elif a.probe == "first-search":
        first_search(a.paths[0])
    elif a.probe == "flat-threads":
        flat_threads()
    elif a.probe == "paired":
        paired(int(a.paths[0]), a.paths[1])
    else:
        mapped(a.paths[0], a.paths[1])


if __name__ == "__main__":
    main()
