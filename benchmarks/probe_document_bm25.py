"""What document-level BM25 would give beside chunks (issue 26, item 4). Never part of the test suite.

    python benchmarks/probe_document_bm25.py INDEX_DIR BEIR_FOLDER

``INDEX_DIR``: an index of the BEIR corpus built with ``pipelines/offline.toml`` (BM25 + MiniLM;
see docs/RESULTS.md, "Commands"). Every document is ranked exhaustively (no first-stage depth),
so the figures compare evidence, not candidate generation:

* dense: the index's stored chunk vectors against the pipeline's query encodings, best chunk per
  document (max-P);
* BM25 over chunks, best chunk per document (what the pipeline does today), and BM25 over whole
  documents (title + text): both with the index's own analyser and Lucene's BM25 (k1 1.5, b 0.75,
  ``idf = log(1 + (N - df + 0.5) / (df + 0.5))``, each query term once), written out here;
* dense fused with each, by ``relative`` fusion (each mode divided by its best score) at several
  dense weights, and with "mix" (chunk and document BM25 averaged after the same division);
* BM25 over chunks whose rows also count their neighbours' terms (``[bm25] context`` = 1, at
  ``context_weight`` 0.5, 0.75 and 1: :func:`hybridrag.encoders.bm25.with_context` on the chunks'
  term counts), best chunk per document, alone and fused with dense the same way.

Prints nDCG@10 per run (hybridrag.eval.metrics, trec_eval's definition).
"""
from __future__ import annotations

import argparse
import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np


def _bm25_index(tokens: list[list[str]]) -> tuple[dict[str, list[tuple[int, float]]], np.ndarray, Counter[str]]:
    return _counts_index([Counter(toks) for toks in tokens])


def _counts_index(rows: list[Any]) -> tuple[dict[str, list[tuple[int, float]]], np.ndarray, Counter[str]]:
    """The index of rows of term -> count (a row's length: the sum of its counts)."""
    postings: dict[str, list[tuple[int, float]]] = defaultdict(list)
    df: Counter[str] = Counter()
    for i, row in enumerate(rows):
        for term, tf in row.items():
            postings[term].append((i, tf))
            df[term] += 1
    return postings, np.array([float(sum(r.values())) for r in rows], dtype=np.float64), df


def _bm25(index: tuple[Any, np.ndarray, Counter[str]], query: list[str], k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    postings, lengths, df = index
    n, avg = len(lengths), float(lengths.mean())
    out = np.zeros(n)
    for term in set(query):
        if term not in postings:
            continue
        idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
        rows, tfs = (np.array(x) for x in zip(*postings[term]))
        out[rows] += idf * tfs * (k1 + 1) / (tfs + k1 * (1 - b + b * lengths[rows] / avg))
    return out


def main() -> None:
    from hybridrag import HybridIndex
    from hybridrag.encoders.bm25 import with_context
    from hybridrag.eval.beir import load_beir
    from hybridrag.eval.metrics import evaluate
    from hybridrag.search import encode
    from hybridrag.sources import join_title_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("index")
    ap.add_argument("beir")
    args = ap.parse_args()
    idx = HybridIndex.load(args.index)
    data = load_beir(args.beir)
    manifest = json.loads((Path(args.index) / "manifest.json").read_text())
    vectors = {}
    for seg in manifest["segments"]:
        f = seg["files"]["dense"]
        for slot, v in zip(np.load(Path(args.index) / f["rows"]), np.load(Path(args.index) / f["vectors"])):
            vectors[int(slot)] = v
    live = idx.docstore.live_slots()
    mat = np.stack([vectors[int(s)] for s in live])
    rows = idx.docstore.get(live)
    docs = sorted(data.corpus)
    pos = {d: i for i, d in enumerate(docs)}
    chunk_doc = np.array([pos[r["doc_id"]] for r in rows])
    analyse = idx.bm25.analyzer.tokenize
    chunk_tokens = analyse([r["text"] for r in rows])
    chunk_ix = _bm25_index(chunk_tokens)
    # live slots are in reading order within each document (its chunks are written together)
    counts = [dict(Counter(t)) for t in chunk_tokens]
    context_ix = {w: _counts_index(with_context(counts, [r["doc_id"] for r in rows], 1, w)) for w in (0.5, 0.75, 1.0)}
    doc_ix = _bm25_index(analyse([join_title_text(data.corpus[d]["title"], data.corpus[d]["text"]) for d in docs]))
    qids = sorted(data.queries)
    texts = [data.queries[q] for q in qids]
    qvec = np.asarray(encode.encode_queries(idx, texts, ["dense"])["dense"])
    qtok = analyse(texts)

    def max_p(chunk_scores: np.ndarray) -> np.ndarray:
        out = np.full(len(docs), -np.inf)
        np.maximum.at(out, chunk_doc, chunk_scores)
        return out

    def top(scores: np.ndarray) -> dict[str, float]:
        return {docs[j]: float(scores[j]) for j in np.argsort(-scores, kind="stable")[:100]}

    runs: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for i, q in enumerate(qids):
        dense, chunk, whole = max_p(mat @ qvec[i]), max_p(_bm25(chunk_ix, qtok[i])), _bm25(doc_ix, qtok[i])
        rel = {name: s / s.max() if s.max() > 0 else np.zeros_like(s) for name, s in
               (("dense", dense), ("chunk", chunk), ("document", whole))}
        rel["mix"] = (rel["chunk"] + rel["document"]) / 2
        runs["dense"][q], runs["bm25 chunks (max-P)"][q], runs["bm25 documents"][q] = top(dense), top(chunk), top(whole)
        for cw, ix in context_ix.items():
            ctx = max_p(_bm25(ix, qtok[i]))
            runs[f"bm25 chunks + neighbours at {cw} (max-P)"][q] = top(ctx)
            rel[f"chunks + neighbours at {cw}"] = ctx / ctx.max() if ctx.max() > 0 else np.zeros_like(ctx)
        for w in (0.3, 0.4, 0.5, 0.6, 0.7):
            for name in ("chunk", "document", "mix", *(f"chunks + neighbours at {cw}" for cw in context_ix)):
                runs[f"relative, bm25 {name}, dense {w}"][q] = top(w * rel["dense"] + (1 - w) * rel[name])
    qrels = {q: data.qrels[q] for q in qids}
    print(f"| run ({Path(args.beir).name}, {len(qids)} queries, {len(docs)} documents, {len(live)} chunks) | nDCG@10 |")
    print("|---|---:|")
    for name, run in runs.items():
        print(f"| {name} | {evaluate(run, qrels, ['ndcg@10'])['ndcg@10']:.4f} |")


if __name__ == "__main__":
    main()
