"""BM25 in Milvus (``[bm25] backend = "milvus"``, issue 24) beside the local BM25 store, on the
same analysed rows: search time, agreement, commit cost and bytes. Never part of the test suite.

    python benchmarks/probe_milvus_bm25.py --docs 5183

Analyses ``--docs`` SciFact abstracts (title + text, cycled with new slots past 5,183) with the
default analyser (``unicode``, lowercased), writes the term counts into a ``SparseIndex``
(``bm25lucene``) and into a ``MilvusBm25Store`` (a Milvus Lite file under ``--dir``), commits,
then times each SciFact test query (300, one per call, ``k=10``, after one warm-up pass) on the
local store, on the Milvus store's writer and on a reader that opened the commit. It reports
p50/p99, how many top-10 lists are identical to the local one and the largest score difference;
the time of the first commit and of an upsert of 100 rows with its commit (publishing the df of
the terms they touch); and the Lite file's bytes per row. Then it tries Milvus's own BM25 (a
``BM25`` function over a ``VARCHAR`` of the same analysed terms, whitespace tokenizer, else the
standard one) on the same Milvus Lite and reports what happened. Before that, the call a user
makes: the same documents through ``HybridIndex`` (``add``, then ``search(query, k=10)``) on a local
BM25 index and on a query node with the whole index in Milvus Lite.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared/data/beir/scifact"


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _timed(store, queries, k=10):
    store.search(queries, k)   # warm-up
    times, out_s, out_i = [], [], []
    for q in queries:
        t = time.perf_counter()
        s, i = store.search([q], k)
        times.append((time.perf_counter() - t) * 1000)
        out_s.append(s[0])
        out_i.append(i[0])
    return times, np.array(out_s), np.array(out_i)


def _pct(times, p):
    return float(np.percentile(times, p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=5183)
    ap.add_argument("--dir", default=None, help="where the temporary stores go (default: the system's)")
    ap.add_argument("--drift", type=int, default=1,
                    help="multiply the term counts of all rows but the first 1,000 by this (the average length "
                         "moves away from the reference one, the first rows'); skips Milvus's own BM25")
    args = ap.parse_args()

    from hybridrag.encoders.bm25 import BM25Encoder
    from hybridrag.stores.milvus_bm25 import MilvusBm25Store
    from hybridrag.stores.sparse import SparseIndex

    corpus = [json.loads(line) for line in open(DATA / "corpus.jsonl", encoding="utf-8")]
    texts = [(r.get("title", "") + " " + r["text"]).strip() for r in corpus]
    qids = {line.split("\t")[0] for line in open(DATA / "qrels/test.tsv", encoding="utf-8")} - {"query-id"}
    qtexts = [r["text"] for r in map(json.loads, open(DATA / "queries.jsonl", encoding="utf-8")) if r["_id"] in qids]
    enc = BM25Encoder()
    n = args.docs
    base = enc.encode_documents(texts)
    rows = [base[i % len(base)] for i in range(n)]
    if args.drift != 1:
        rows = rows[:1000] + [{t: c * args.drift for t, c in r.items()} for r in rows[1000:]]
    queries = enc.encode_queries(qtexts)
    tmp = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        slots = np.arange(n, dtype=np.int64)
        loc = SparseIndex("bm25lucene")
        loc.add(slots, rows)
        m = MilvusBm25Store(uri=str(tmp / "m.db"), collection="b")
        m.bind_vocabulary(enc.vocabulary)
        t = time.perf_counter()
        for a in range(0, n, 1000):
            m.add(slots[a:a + 1000], rows[a:a + 1000])   # (the reference length: the first 1,000 rows')
        t_add = time.perf_counter() - t
        t = time.perf_counter()
        files = m.save(tmp, "g1")
        m.committed()
        t_commit = time.perf_counter() - t
        print(f"{n:,} rows (SciFact, {sum(sum(r.values()) for r in rows) / n:.1f} terms each, "
              f"{len(enc.vocabulary):,} distinct), {len(queries)} queries; Milvus Lite add {t_add:.1f} s, "
              f"first commit {t_commit:.1f} s; average length / reference length "
              f"{m.describe()['avgdl'] / m.describe()['avgdl_ref']:.2f}")
        size = _size(tmp / "m.db")
        print(f"Milvus Lite file: {size / n:,.0f} bytes per row (rows and terms collections; "
              f"{m.describe()['terms_stored']:,} term versions)")
        r = MilvusBm25Store.load(tmp, files, {"uri": str(tmp / "m.db")})
        r.bind_vocabulary(enc.vocabulary)
        ref_t, ref_s, ref_i = _timed(loc, queries)
        print("| store | p50 ms | p99 ms | top-10 identical | max score diff |")
        print("|---|---|---|---|---|")
        print(f"| local SparseIndex | {_pct(ref_t, 50):.2f} | {_pct(ref_t, 99):.2f} | - | - |")
        for name, st in (("Milvus BM25, writer", m), ("Milvus BM25, reader", r)):
            tt, s, i = _timed(st, queries)
            same = int(sum(np.array_equal(a, b) for a, b in zip(i, ref_i)))
            fin = np.isfinite(ref_s) & np.isfinite(s)
            diff = float(np.max(np.abs(s[fin] - ref_s[fin]))) if fin.any() else 0.0
            print(f"| {name} | {_pct(tt, 50):.2f} | {_pct(tt, 99):.2f} | {same}/{len(queries)} | {diff:.2e} |")
        # an upsert of 100 rows, then its commit
        up = np.arange(0, min(n, 100))
        t = time.perf_counter()
        m.remove(up)
        m.save(tmp, "g2")   # the removal's commit (an upsert's new rows need new slots)
        m.committed()
        m.add(up + n, [rows[(i + 7) % n] for i in up.tolist()])
        m.save(tmp, "g3")
        m.committed()
        print(f"upsert of {len(up)} rows with two commits: {(time.perf_counter() - t) * 1000:.0f} ms")
        r.close()
        m.close()
        if args.drift == 1:
            _engine(tmp, corpus, qtexts)
            _native(tmp, texts, n, enc, qtexts, ref_i)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _engine(tmp: Path, corpus, qtexts) -> None:
    """The call a user makes, ``HybridIndex.search(query, k=10)`` (analysis, the store, the hits'
    text and metadata), on a local BM25 index and on a query node of the same documents with the
    whole index in Milvus Lite (``[milvus] whole_index``, ``[bm25] backend = "milvus"``)."""
    from hybridrag.index import HybridIndex

    def pipe(milvus: bool) -> dict:
        p = {"name": "bm25", "encoder": {"kind": "none"}, "dense": {"enabled": False}, "sparse": {"enabled": False},
             "colbert": {"enabled": False}, "bm25": {"enabled": True}, "fusion": {"weights": {"bm25": 1.0}}}
        if milvus:
            p["bm25"]["backend"] = "milvus"
            p["milvus"] = {"enabled": True, "collection": "e", "whole_index": True}
        return p

    docs = [{"id": r["_id"], "text": (r.get("title", "") + " " + r["text"]).strip(), "metadata": {}} for r in corpus]
    loc = HybridIndex.create(tmp / "local", pipe(False))
    w = HybridIndex.create(tmp / "writer", pipe(True))
    t = time.perf_counter()
    loc.add(docs)
    t_loc = time.perf_counter() - t
    t = time.perf_counter()
    w.add(docs)
    t_w = time.perf_counter() - t
    w.close()
    q = HybridIndex.attach(tmp / "node", collection="e", milvus_uri=str(tmp / "writer" / "milvus.db"))
    print(f"`add` + commit of {len(docs):,} documents: local {t_loc:.1f} s, whole index in Milvus Lite {t_w:.1f} s")
    print("| `HybridIndex.search(q, k=10)` | p50 ms | p99 ms | top-10 identical to the local index |")
    print("|---|---|---|---|")
    ref = None
    for name, idx in (("local BM25 index", loc), ("query node, whole index in Milvus Lite", q)):
        idx.search(qtexts[0], k=10)   # warm-up
        times, tops = [], []
        for text in qtexts:
            t = time.perf_counter()
            hits = idx.search(text, k=10)
            times.append((time.perf_counter() - t) * 1000)
            tops.append([h.chunk_id for h in hits])
        same = "-" if ref is None else f"{sum(a == b for a, b in zip(tops, ref))}/{len(ref)}"
        ref = ref or tops
        print(f"| {name} | {_pct(times, 50):.2f} | {_pct(times, 99):.2f} | {same} |")
    loc.close()
    q.close()


def _native(tmp: Path, texts, n, enc, qtexts, ref_i) -> None:
    for tokenizer in ("whitespace", "standard"):
        if _native_with(tmp, texts, n, enc, qtexts, ref_i, tokenizer):
            return


def _native_with(tmp: Path, texts, n, enc, qtexts, ref_i, tokenizer: str) -> bool:
    """Milvus's own BM25 over the same analysed terms, if this Milvus has it."""
    try:
        from pymilvus import DataType, Function, FunctionType, MilvusClient

        c = MilvusClient(str(tmp / f"native-{tokenizer}.db"))
        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("text", DataType.VARCHAR, max_length=65535, enable_analyzer=True,
                         analyzer_params={"tokenizer": tokenizer})
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(Function(name="bm25", function_type=FunctionType.BM25, input_field_names=["text"],
                                     output_field_names=["sparse"]))
        ip = c.prepare_index_params()
        ip.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25",
                     params={"bm25_k1": 1.5, "bm25_b": 0.75})
        c.create_collection("native", schema=schema, index_params=ip)
        toks = enc.analyzer.tokenize(texts)
        data = [{"id": i, "text": " ".join(toks[i % len(toks)])} for i in range(n)]
        for a in range(0, n, 1000):
            c.insert("native", data[a:a + 1000])
        q = [" ".join(t) for t in enc.analyzer.tokenize(qtexts)]
        times, same = [], 0
        for j, text in enumerate(q):
            t = time.perf_counter()
            res = c.search("native", data=[text], anns_field="sparse", limit=10, output_fields=["id"])[0]
            times.append((time.perf_counter() - t) * 1000)
            same += [h["id"] for h in res] == [s for s in ref_i[j].tolist() if s >= 0]
        print(f"| Milvus's own BM25 function ({tokenizer} tokenizer over the analysed terms) | {_pct(times, 50):.2f} | "
              f"{_pct(times, 99):.2f} | {same}/{len(q)} | (its own statistics) |")
        return True
    except Exception as exc:  # noqa: BLE001 - a probe: report what this Milvus does
        print(f"Milvus's own BM25 function, {tokenizer} tokenizer: not available here "
              f"({type(exc).__name__}: {str(exc)[:200]})")
        return False


if __name__ == "__main__":
    main()
