"""What opening a Milvus-backed store costs in Milvus Lite (issue 24): load used to count the
visible rows with a filtered ``count(*)``, which Milvus Lite evaluates over every row. Never part
of the test suite.

    python benchmarks/probe_milvus_colbert_load.py --chunks 10000
    python benchmarks/probe_milvus_colbert_load.py --index 50000

``--index N``: the call a user makes, ``HybridIndex.load``, of an index of N synthetic documents
(``bench_segments``' corpus and fake encoder, 1,024-d dense vectors in Milvus Lite, BM25 local;
written once into ``--dir``), 3 times as the code is (the saved count trusted while the collection's
published commit is the one opened) and 3 times with the exact filtered count forced (the code
before), interleaved; then one search, so the loaded index is known to answer; then an upsert of
one document and its commit, 3 times with the count the store keeps and 3 times with the exact
filtered count forced in ``save`` (what every commit paid before), interleaved. Otherwise:

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


def index_load(n: int, where: str | None) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_segments import Corpus, FakeEncoder, pipeline

    from hybridrag import HybridIndex
    from hybridrag.stores.milvus import _MilvusStore

    enc, corpus = FakeEncoder(1024), Corpus(100_000, 0)
    d = Path(where or tempfile.gettempdir()) / f"probe-milvus-index-{n}"
    if not (d / "manifest.json").exists():
        shutil.rmtree(d, ignore_errors=True)
        cfg = dict(pipeline(1024), milvus={"enabled": True})
        t = time.perf_counter()
        idx = HybridIndex.create(d, cfg, encoder=enc)
        for lo in range(0, n, 10000):
            idx.add(corpus.docs(lo, min(n, lo + 10000)), commit=False)
        idx.commit()
        idx.close()
        print(f"built {n:,} documents (dense in Milvus Lite) in {time.perf_counter() - t:.1f} s")
    fast = _MilvusStore._count_at_load
    for _ in range(3):
        for label, count in (("saved count trusted", fast), ("exact count (before)",
                                                              lambda self, rows, gen: self._visible_count())):
            _MilvusStore._count_at_load = count
            t = time.perf_counter()
            idx = HybridIndex.load(d, encoder=enc)
            took = time.perf_counter() - t
            hits = idx.search(corpus.queries(1)[0], k=10)
            idx.close()
            print(f"HybridIndex.load, {label}: {1000 * took:,.0f} ms ({len(hits)} hits)")
    _MilvusStore._count_at_load = fast
    # A commit (the user's call: upsert one document, commit) with the store's kept count, and with
    # the exact filtered count(*) each save made before (forced by forgetting the kept count).
    save = _MilvusStore.save

    def exact_save(self, directory, tag):
        self._count = None
        return save(self, directory, tag)

    idx = HybridIndex.load(d, encoder=enc)
    try:
        for rep in range(3):
            for label, fn in (("kept count", save), ("exact count (before)", exact_save)):
                _MilvusStore.save = fn
                doc = corpus.docs(rep, rep + 1)[0]
                t = time.perf_counter()
                idx.upsert([dict(doc, text=doc["text"] + f" probe {rep} {label}")])
                took = time.perf_counter() - t
                print(f"upsert of 1 document + commit, {label}: {1000 * took:,.0f} ms")
    finally:
        _MilvusStore.save = save
        idx.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", type=int, default=0, help="time HybridIndex.load of an index of N documents")
    ap.add_argument("--chunks", type=int, default=10000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--dir", default=None, help="where the temporary Milvus Lite file goes")
    a = ap.parse_args()
    if a.index:
        index_load(a.index, a.dir)
        return
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
