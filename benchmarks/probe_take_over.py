"""A lost writer directory with the whole index in Milvus (issue 24): what the writer's directory
holds beside Milvus, and what it takes to get a writer back: in place (``HybridIndex.take_over``,
same prefix) or as a copy under a new prefix (``HybridIndex.migrate`` from a query node). Never
part of the test suite.

    python benchmarks/probe_take_over.py --docs 5183

Adds ``--docs`` SciFact abstracts (title + text; cycled with new ids past 5,183) to a BM25 index
with the whole index in Milvus Lite (``[milvus] whole_index``, ``[bm25] backend = "milvus"``; the
Lite file outside the writer's directory, as a server would be), then removes the writer's
directory and times: a query node's ``attach``; ``take_over`` into a new directory; ``migrate``
of the query node into a new writer under a new prefix. It checks that the new writers answer
the 300 SciFact test queries with the lost writer's top-10 and times an ``upsert`` of 100 changed
documents on the taken-over writer. Bytes: the writer's directory (the docstore is most of it) and
the Lite file.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared/data/beir/scifact"


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=5183)
    ap.add_argument("--dir", default=None, help="where the temporary indexes go (default: the system's)")
    args = ap.parse_args()

    from hybridrag.index import HybridIndex

    corpus = [json.loads(line) for line in open(DATA / "corpus.jsonl", encoding="utf-8")]
    qids = {line.split("\t")[0] for line in open(DATA / "qrels/test.tsv", encoding="utf-8")} - {"query-id"}
    qtexts = [r["text"] for r in map(json.loads, open(DATA / "queries.jsonl", encoding="utf-8")) if r["_id"] in qids]
    docs = []
    for i in range(args.docs):
        r = corpus[i % len(corpus)]
        docs.append({"id": r["_id"] if i < len(corpus) else f"{r['_id']}-{i}",
                     "text": (r.get("title", "") + " " + r["text"]).strip(), "metadata": {"n": i}})
    tmp = Path(tempfile.mkdtemp(dir=args.dir))
    uri = str(tmp / "milvus" / "milvus.db")
    pipe = {"name": "bm25", "encoder": {"kind": "none"}, "dense": {"enabled": False}, "sparse": {"enabled": False},
            "colbert": {"enabled": False}, "bm25": {"enabled": True, "backend": "milvus"},
            "fusion": {"weights": {"bm25": 1.0}},
            "milvus": {"enabled": True, "collection": "e", "whole_index": True, "uri": uri}}

    def top10(idx) -> list[list[str]]:
        return [[h.chunk_id for h in idx.search(q, k=10)] for q in qtexts]

    try:
        w = HybridIndex.create(tmp / "writer", pipe)
        t = time.perf_counter()
        w.add(docs)
        t_add = time.perf_counter() - t
        want = top10(w)
        w.close()
        writer_bytes = _size(tmp / "writer")
        docstore_bytes = sum(f.stat().st_size for f in (tmp / "writer").glob("docstore*"))
        lite_bytes = _size(tmp / "milvus")
        shutil.rmtree(tmp / "writer")
        rows = []
        t = time.perf_counter()
        q = HybridIndex.attach(tmp / "node", collection="e", milvus_uri=uri)
        rows.append(("`attach` (a query node)", time.perf_counter() - t, f"{sum(a == b for a, b in zip(top10(q), want))}/{len(want)}"))
        q.close()
        t = time.perf_counter()
        tw = HybridIndex.take_over(tmp / "taken", collection="e", milvus_uri=uri)
        rows.append(("`take_over` (same prefix, in place)", time.perf_counter() - t,
                     f"{sum(a == b for a, b in zip(top10(tw), want))}/{len(want)}"))
        t = time.perf_counter()
        mw = HybridIndex.migrate(tmp / "node", tmp / "copy", whole_index=True, collection="e2", milvus_uri=uri)
        rows.append(("`migrate` of the query node (new prefix, rows copied)", time.perf_counter() - t,
                     f"{sum(a == b for a, b in zip(top10(mw), want))}/{len(want)}"))
        mw.close()
        changed = [dict(d, text=d["text"] + " revised") for d in docs[:100]]
        t = time.perf_counter()
        res = tw.upsert(changed)
        t_up = time.perf_counter() - t
        assert len(res.added) == 100, res
        tw.close()
        print(f"{args.docs:,} documents, BM25 with the whole index in Milvus Lite; `add` + commit {t_add:.1f} s")
        print(f"writer's directory {writer_bytes / 1e6:.1f} MB (docstore {docstore_bytes / 1e6:.1f} MB); "
              f"Milvus Lite file {lite_bytes / 1e6:.1f} MB")
        print("| a writer's directory lost: | seconds | top-10 as the lost writer's (300 queries) |")
        print("|---|---|---|")
        for name, secs, same in rows:
            print(f"| {name} | {secs:.1f} | {same} |")
        print(f"then an `upsert` of 100 changed documents with its commit on the taken-over writer: {t_up:.1f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
