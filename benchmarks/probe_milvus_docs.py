"""What a query node pays for reading text, metadata and ids from Milvus (``[milvus] whole_index``,
issue 24) instead of the writer's SQLite docstore: the reads a search makes, side by side. Never
part of the test suite.

    python benchmarks/probe_milvus_docs.py --chunks 10000

Writes ``--chunks`` chunks (SciFact abstracts, repeated with new ids past 5,183; metadata
``{"year": 2000 + i % 25, "group": i % 100, "title": ...}``) into a new ``DocStore`` and a new
``MilvusDocsStore`` (a Milvus Lite file) under ``--dir``, commits both, then times, ``--reps`` times
each after one warm-up, the same call on both: ``get`` of 10 random slots (the hits of one search),
of 100 (a rerank's candidates), ``filter_mask`` of a 1 % filter (``group == 7``), of a 50 % range
(``year >= 2012``), of ``doc_id $in`` 1,000 ids; and the bytes on disk per chunk of each.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=10000)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--corpus", default=str(Path(__file__).resolve().parents[2] / "shared/data/beir/scifact/corpus.jsonl"))
    ap.add_argument("--dir", default=None, help="where the temporary stores go (default: the system's)")
    args = ap.parse_args()

    from hybridrag.stores.docstore import DocStore
    from hybridrag.stores.milvus_docs import MilvusDocsStore, MilvusDocView
    from hybridrag.types import Chunk
    from hybridrag.write import chunk_record

    texts = []
    with open(args.corpus, encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            texts.append((r.get("title", ""), r["text"]))
    n = args.chunks
    chunks = [Chunk(chunk_id=f"c{i}", doc_id=f"d{i}", ordinal=0, text=texts[i % len(texts)][1], start=0,
                    end=len(texts[i % len(texts)][1]),
                    metadata={"year": 2000 + i % 25, "group": i % 100, "title": texts[i % len(texts)][0]})
              for i in range(n)]
    tmp = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        slots = np.arange(n, dtype=np.int64)
        ds = DocStore(tmp / "docstore.sqlite")
        t = time.perf_counter()
        for a in range(0, n, 1000):
            ds.add_chunks(chunks[a:a + 1000], slots[a:a + 1000], 1, {c.doc_id: "h" for c in chunks[a:a + 1000]})
        ds.commit_generation(1)
        t_sql = time.perf_counter() - t
        ms = MilvusDocsStore(uri=str(tmp / "milvus" / "milvus.db"), collection="probe_docs")
        t = time.perf_counter()
        for a in range(0, n, 1000):
            ms.add(slots[a:a + 1000], [chunk_record(c, "h") for c in chunks[a:a + 1000]])
        ms.save(tmp, "probe")
        ms.committed()
        t_mil = time.perf_counter() - t
        view = MilvusDocView(ms, {"generation": 1, "counts": {"chunks": n, "documents": n, "next_slot": n}})
        print(f"{n:,} chunks (SciFact abstracts, {sum(len(c.text.encode()) for c in chunks) / n:,.0f} bytes of "
              f"text each on average); written in {t_sql:.1f} s (SQLite) / {t_mil:.1f} s (Milvus Lite)")
        ds.as_of = 1
        rng = np.random.default_rng(0)
        ids = [f"d{i}" for i in rng.choice(n, 1000, replace=False)]
        calls = [
            ("get, 10 random slots (a search's hits)", lambda s: s.get(rng.choice(n, 10, replace=False))),
            ("get, 100 random slots (rerank candidates)", lambda s: s.get(rng.choice(n, 100, replace=False))),
            ("filter_mask group == 7 (1 %)", lambda s: s.filter_mask({"group": 7})),
            ("filter_mask year >= 2012 (52 %)", lambda s: s.filter_mask({"year": {"$gte": 2012}})),
            ("filter_mask doc_id $in 1,000 ids", lambda s: s.filter_mask({"doc_id": {"$in": ids}})),
        ]
        print("| call | SQLite docstore: median / max ms | docs collection (Milvus Lite): median / max ms |")
        print("|---|---|---|")
        for name, call in calls:
            row = []
            for store in (ds, view):
                call(store)
                times = []
                for _ in range(args.reps):
                    t = time.perf_counter()
                    call(store)
                    times.append((time.perf_counter() - t) * 1000)
                row.append(f"{statistics.median(times):,.2f} / {max(times):,.2f}")
            a, b = ds.filter_mask({"group": 7}), view.filter_mask({"group": 7})
            assert np.array_equal(a, b)
            print(f"| {name} | {row[0]} | {row[1]} |")
        ms.close()
        ds.close()
        print(f"bytes on disk per chunk: SQLite docstore {_size(tmp / 'docstore.sqlite') / n:,.0f} "
              f"(+ WAL {sum(_size(p) for p in tmp.glob('docstore.sqlite-*')) / n:,.0f}), "
              f"Milvus Lite file {_size(tmp / 'milvus') / n:,.0f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
