"""Issue 25, item 1: what the public call ``HybridIndex.search(query)`` costs beside its core,
the sparse store, and beside bm25s and tantivy, BM25 only, one query per call, one thread.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/bench_search_call.py \\
        --beir /work/shared/data/beir/scifact --synthetic 1000000 --work /tmp/bench-search-call

Corpora: a BEIR folder (title + text; its test queries, ``qrels/test.tsv``) and ``--synthetic``
seeded documents of ``bench_segments.Corpus`` (30-80 Zipf words over ``--vocab`` made-up
words; 2-4 word queries). One chunk per document. Pipeline: BM25 only (``encoder.kind =
"none"``), the word analyser (BEIR: English stopwords and Snowball stemmer; synthetic: none),
the defaults otherwise (lucene, k1 1.5, b 0.75, depth 100, weighted fusion), built with
``add(commit=False)`` + ``commit`` + ``optimize()`` (one segment) into ``--work`` and reused
from there when it is already built (the directory names the corpus, size, vocabulary, seed).

Every system gets the same tokens: the engine's analyser tokenises documents and queries once;
bm25s (numba backend, ``n_threads=1``) is handed the engine's own BM25 weights of the segment as
its score matrix (``bench_sparse.bm25s_from_weights``: the same scores, no second indexing of
10^7 tokens in Python) and each query's term ids; tantivy 0.27 indexes the analysed tokens
joined by spaces with a whitespace tokenizer (term frequencies, no positions;
``writer(num_threads=1)``, then merged into one segment by ``wait_merging_threads``), and is
searched as ``bench_segments.tantivy_worker`` does: ``parse_query`` + top-10 with ``count=False``
+ each hit's stored id, and in a second row its stored text too (``body``: what ``search(q)``
returns, which reads each hit's text from SQLite) (tantivy's BM25 is k1 1.2 and quantised lengths: its top-10 overlap with
the engine's is reported, not expected to be 1).

Rows per corpus, each measured ``--runs`` times (the machine is shared: every run is reported):
p50 / p99 / q/s of one query per call for ``HybridIndex.search(q)`` (k=10; it also fetches each
hit's text and metadata from SQLite), the same call as it was before 2026-12-07 (its store asked
for the pipeline's depth, 100, not k), the sparse store alone on the same encoded queries at
k=10 (what the call asks of it now) and at the depth, bm25s and tantivy;
``search_batch`` of all queries in one call; the façade's share of the call,
``(call p50 - store p50) / call p50`` against both store rows. Raw results (the printed table)
go to ``benchmarks/results/search-call_<date>_<commit>.md``. Never part of the test suite.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Table, latencies  # noqa: E402

row = Table()
THREAD_ENV = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def pipeline(stem: bool) -> dict[str, Any]:
    """BM25 only, the word analyser; everything else the defaults."""
    lang = "english" if stem else ""
    return {"name": "bm25-only", "encoder": {"kind": "none"}, "dense": {"enabled": False},
            "sparse": {"enabled": False}, "colbert": {"enabled": False},
            "bm25": {"enabled": True, "analyzer": "word", "stopwords": lang, "stemmer": lang, "depth": 100},
            "chunking": {"max_tokens": 8192, "overlap": 0},
            "fusion": {"method": "weighted", "weights": {"bm25": 1.0}}, "rerank": {"enabled": False}}


def beir(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    docs = [json.loads(line) for line in open(path / "corpus.jsonl", encoding="utf-8")]
    docs = [{"id": d["_id"], "text": (d.get("title", "") + " " + d.get("text", "")).strip()} for d in docs]
    queries = {q["_id"]: q["text"] for q in map(json.loads, open(path / "queries.jsonl", encoding="utf-8"))}
    test = [line.split("\t")[0] for line in (path / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    return docs, [queries[q] for q in dict.fromkeys(test)]


def build(where: Path, pipe: dict[str, Any], docs: Any, n: int, step: int = 20000) -> Any:
    """The engine's index at ``where`` (reused when built); ``docs(lo, hi)`` gives documents."""
    from hybridrag import HybridIndex

    if not (where / "manifest.json").exists():
        t = time.perf_counter()
        idx = HybridIndex.create(where, pipe, overwrite=True)
        for lo in range(0, n, step):
            idx.add(docs(lo, min(n, lo + step)), commit=False)
        idx.commit()
        idx.optimize()
        idx.close()
        print(f"# built {where} in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    return HybridIndex.load(where)


def tantivy_index(batches: Any) -> Any:
    """An in-memory tantivy index of the analysed tokens (joined by spaces), one segment, each
    document's text stored beside its id; ``batches`` yields ``(ids, token lists, texts)``."""
    import tantivy

    sb = tantivy.SchemaBuilder()
    sb.add_text_field("id", stored=True, tokenizer_name="raw")
    sb.add_text_field("text", tokenizer_name="ws", index_option="freq")
    sb.add_text_field("body", stored=True, index_option="basic")   # the text a RAG app needs back
    index = tantivy.Index(sb.build())
    index.register_tokenizer("ws", tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.whitespace()).build())
    w = index.writer(heap_size=512_000_000, num_threads=1)
    for ids, tokens, texts in batches:
        for i, toks, body in zip(ids, tokens, texts):
            w.add_document(tantivy.Document(id=i, text=" ".join(toks), body=body))
    w.commit()
    w.wait_merging_threads()
    index.reload()
    return index


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


@contextlib.contextmanager
def deep_plan() -> Any:
    """The planner as it was before 2026-12-07: a one-mode search asked its store for the
    mode's depth (100), not for k (``hybridrag/search/plan.py``, ``_keeps_top_k``)."""
    from hybridrag.search import plan

    keep = plan._keeps_top_k
    plan._keeps_top_k = lambda *a: False
    try:
        yield
    finally:
        plan._keeps_top_k = keep


def fmt(lat: dict[str, float]) -> str:
    return f"{lat['p50']:.3f} / {lat['p99']:.3f} / {lat['qps']:,.0f}"


def part(name: str, idx: Any, queries: list[str], args: argparse.Namespace, peer_docs: Any) -> None:
    """Every row of one corpus; ``peer_docs()`` yields ``(ids, token lists)`` batches for tantivy."""
    from bench_sparse import bm25s_from_weights

    store = idx.stores["bm25"]
    seg = store.parts[next(iter(store.parts))] if len(store.parts) == 1 and not len(store.fresh) else None
    depth = idx.pipeline.bm25.depth
    nq = len(queries)
    enc = idx.bm25.encode_queries(queries)
    row(name, "engine", "chunks; segments; queries", f"{idx.docstore.count():,}; {len(store.parts)}; {nq}")
    qtok = idx.bm25.analyzer.tokenize(queries)
    vocab = idx.bm25.vocabulary
    qids = [[vocab[t] for t in q if t in vocab] for q in qtok]
    top_engine = [[h.doc_id for h in idx.search(q)] for q in queries]

    peers: dict[str, Any] = {}
    if "bm25s" in args.peers and seg is not None:
        r = bm25s_from_weights(seg, "lucene", backend="numba")
        slot_of_row = seg._row_slots
        peers[f"bm25s {_version('bm25s')} numba (engine's weights)"] = lambda i: r.retrieve([qids[i]], k=10, n_threads=1,
                                                                            show_progress=False)
        got = r.retrieve(qids, k=10, n_threads=1, show_progress=False)[0]
        slots = [slot_of_row[g] for g in got]
        docs = idx.docstore.get(np.unique(np.concatenate(slots)))
        by_slot = {d["slot"]: d["doc_id"] for d in docs}
        ov = np.mean([len({by_slot[int(s)] for s in ss} & set(te)) / max(1, len(te))
                      for ss, te in zip(slots, top_engine) if len(te)])
        row(name, "bm25s vs engine", "top-10 overlap (same weights; ties may differ)", f"{ov:.3f}")
    if "tantivy" in args.peers:
        t = time.perf_counter()
        tv = tantivy_index(peer_docs())
        s = tv.searcher()
        row(name, "tantivy 0.27", "index s (in memory, 1 thread); segments", f"{time.perf_counter() - t:.0f}; "
            f"{s.num_segments}")
        qtexts = [" ".join(q) for q in qtok]

        def tsearch(i: int, index: Any = tv, searcher: Any = s) -> list[str]:
            hits = searcher.search(index.parse_query(qtexts[i], ["text"]), 10, count=False).hits
            return [searcher.doc(a).get_first("id") for _, a in hits]

        def tsearch_text(i: int, index: Any = tv, searcher: Any = s) -> list[tuple[str, str]]:
            hits = searcher.search(index.parse_query(qtexts[i], ["text"]), 10, count=False).hits
            return [(d.get_first("id"), d.get_first("body")) for d in (searcher.doc(a) for _, a in hits)]

        peers["tantivy 0.27 (parse + search + ids)"] = tsearch
        peers["tantivy 0.27 (parse + search + ids and stored text, as search(q) returns)"] = tsearch_text
        ov = np.mean([len(set(tsearch(i)) & set(te)) / max(1, len(te)) for i, te in enumerate(top_engine) if te])
        row(name, "tantivy vs engine", "top-10 overlap (k1 1.2 vs 1.5, quantised lengths)", f"{ov:.3f}")

    for run in range(1, args.runs + 1):
        tag = f"run {run}: p50 / p99 ms / q/s"
        call = latencies(lambda i: idx.search(queries[i]), nq)
        with deep_plan():
            deep = latencies(lambda i: idx.search(queries[i]), nq)
        s10 = latencies(lambda i: store.search(enc[i:i + 1], 10), nq)
        sd = latencies(lambda i: store.search(enc[i:i + 1], depth), nq)
        row(name, "HybridIndex.search(q), k=10", tag, fmt(call))
        row(name, f"HybridIndex.search(q), k=10, store asked for depth {depth} (before 2026-12-07)", tag, fmt(deep))
        row(name, "sparse store alone, k=10 (what the call asks of it)", tag, fmt(s10))
        row(name, f"sparse store alone, k={depth} (the pipeline's depth)", tag, fmt(sd))
        for pname, fn in peers.items():
            row(name, pname, tag, fmt(latencies(fn, nq)))
        t = time.perf_counter()
        idx.search_batch(queries)
        row(name, "HybridIndex.search_batch(all queries)", f"run {run}: q/s", f"{nq / (time.perf_counter() - t):,.0f}")
        row(name, "façade share of the call", f"run {run}: (call - store) / call at p50, store k=10; k={depth}",
            f"{(call['p50'] - s10['p50']) / call['p50']:.0%}; {(call['p50'] - sd['p50']) / call['p50']:.0%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", type=Path, default=None, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv)")
    ap.add_argument("--synthetic", type=int, default=0, help="synthetic documents (0 skips)")
    ap.add_argument("--vocab", type=int, default=100_000, help="words of the synthetic vocabulary")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--queries", type=int, default=300, help="synthetic queries")
    ap.add_argument("--runs", type=int, default=2, help="measurements of every row (each reported)")
    ap.add_argument("--peers", default="bm25s,tantivy", help="comma-separated: bm25s, tantivy ('' for none)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-search-call"), help="where the indexes are built")
    ap.add_argument("--out", type=Path, default=None, help="raw results file (default benchmarks/results/...)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    row("setup", "threads", ", ".join(THREAD_ENV), ", ".join(os.environ.get(k, "unset") for k in THREAD_ENV))
    row("setup", "code", "commit (working tree)", commit)
    if args.beir is not None:
        docs, queries = beir(args.beir)
        idx = build(args.work / f"beir-{args.beir.name}", pipeline(stem=True), lambda lo, hi: docs[lo:hi], len(docs))
        part(f"{args.beir.name} N={len(docs):,}", idx, queries, args,
             lambda: [([d["id"] for d in docs], idx.bm25.analyzer.tokenize([d["text"] for d in docs]),
                       [d["text"] for d in docs])])
        idx.close()
    if args.synthetic:
        from bench_segments import Corpus

        corpus = Corpus(args.vocab, args.seed)
        n = args.synthetic
        where = args.work / f"synthetic-{n}-v{args.vocab}-s{args.seed}"
        idx = build(where, pipeline(stem=False), corpus.docs, n)

        def peer_docs() -> Any:
            for lo in range(0, n, 20_000):
                d = corpus.docs(lo, min(n, lo + 20_000))
                yield [x["id"] for x in d], idx.bm25.analyzer.tokenize([x["text"] for x in d]), [x["text"] for x in d]

        part(f"synthetic N={n:,} vocab={args.vocab:,}", idx, corpus.queries(args.queries), args, peer_docs)
        idx.close()
    out = args.out or ROOT / "benchmarks" / "results" / f"search-call_{time.strftime('%Y-%m-%d')}_{commit}.md"
    row.save(out, "HybridIndex.search() beside its sparse store, bm25s and tantivy (issue 25, item 1)")


if __name__ == "__main__":
    main()
