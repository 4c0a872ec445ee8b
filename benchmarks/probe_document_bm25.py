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
  term counts), best chunk per document, alone and fused with dense the same way;
* the same rows (context 1 at 0.75, and context 16 at 1: a row then holds its whole document)
  under *document* statistics instead of the rows' own: ``N`` and ``df`` count documents, and the
  average length is taken over documents (each document's mean row length, so a document of many
  chunks weighs once), to see what the gap to whole-document BM25 is made of.

Prints nDCG@10 per run (hybridrag.eval.metrics, trec_eval's definition), then, for each
neighbour run against whole documents, the two-sided p-value of a paired randomisation test of
per-query nDCG@10 (10,000 sign flips, seeded).
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


def _bm25(index: tuple[Any, np.ndarray, Counter[str]], query: list[str], k1: float = 1.5, b: float = 0.75,
          stats: tuple[int, Counter[str], float] | None = None) -> np.ndarray:
    """Lucene BM25 of every row; ``stats``: ``(N, df, average length)`` to use instead of the rows'."""
    postings, lengths, df = index
    n, avg = len(lengths), float(lengths.mean())
    out = np.zeros(n)
    big_n, dfs = n, df
    if stats is not None:
        big_n, dfs, avg = stats
    for term in set(query):
        if term not in postings:
            continue
        idf = math.log(1 + (big_n - dfs[term] + 0.5) / (dfs[term] + 0.5))
        rows, tfs = (np.array(x) for x in zip(*postings[term]))
        out[rows] += idf * tfs * (k1 + 1) / (tfs + k1 * (1 - b + b * lengths[rows] / avg))
    return out


def _document_stats(rows: list[Any], doc_of_row: list[str], lengths: np.ndarray) -> tuple[int, Counter[str], float]:
    """``(documents, documents holding each term, mean over documents of their mean row length)``."""
    terms: dict[str, set[str]] = defaultdict(set)
    per_doc: dict[str, list[float]] = defaultdict(list)
    for row, d, n in zip(rows, doc_of_row, lengths):
        terms[d].update(row)
        per_doc[d].append(float(n))
    df: Counter[str] = Counter()
    for ts in terms.values():
        df.update(ts)
    return len(terms), df, float(np.mean([np.mean(v) for v in per_doc.values()]))


def _paired_p(a: np.ndarray, b: np.ndarray, rounds: int = 10_000, seed: int = 0) -> float:
    """Two-sided paired randomisation test of mean(a - b) = 0 (sign flips of the differences)."""
    d = a - b
    flips = np.random.default_rng(seed).choice([-1.0, 1.0], size=(rounds, len(d)))
    return float((np.abs((flips * d).mean(axis=1)) >= abs(d.mean()) - 1e-12).mean())


def main() -> None:
    from hybridrag import HybridIndex
    from hybridrag.encoders.bm25 import with_context
    from hybridrag.eval.beir import load_beir
    from hybridrag.eval.metrics import evaluate, evaluate_per_query
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
    doc_of_row = [r["doc_id"] for r in rows]
    context_ix = {w: _counts_index(with_context(counts, doc_of_row, 1, w)) for w in (0.5, 0.75, 1.0)}
    by_doc_rows = {"context 1 at 0.75": with_context(counts, doc_of_row, 1, 0.75),
                   "context 16 at 1": with_context(counts, doc_of_row, 16, 1.0)}
    by_doc = {name: (_counts_index(r), r) for name, r in by_doc_rows.items()}
    by_doc = {name: (ix, _document_stats(r, doc_of_row, ix[1])) for name, (ix, r) in by_doc.items()}
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
        for name, (ix, st) in by_doc.items():
            runs[f"bm25 chunks, {name}, row statistics (max-P)"][q] = top(max_p(_bm25(ix, qtok[i])))
            runs[f"bm25 chunks, {name}, document statistics (max-P)"][q] = top(max_p(_bm25(ix, qtok[i], stats=st)))
        for w in (0.3, 0.4, 0.5, 0.6, 0.7):
            for name in ("chunk", "document", "mix", *(f"chunks + neighbours at {cw}" for cw in context_ix)):
                runs[f"relative, bm25 {name}, dense {w}"][q] = top(w * rel["dense"] + (1 - w) * rel[name])
    qrels = {q: data.qrels[q] for q in qids}
    print(f"| run ({Path(args.beir).name}, {len(qids)} queries, {len(docs)} documents, {len(live)} chunks) | nDCG@10 |")
    print("|---|---:|")
    for name, run in runs.items():
        print(f"| {name} | {evaluate(run, qrels, ['ndcg@10'])['ndcg@10']:.4f} |")
    whole = evaluate_per_query(runs["bm25 documents"], qrels, ["ndcg@10"])
    print("\n| against bm25 documents (per-query nDCG@10) | mean difference | paired randomisation p |\n|---|---:|---:|")
    for name in [n for n in runs if n.startswith("bm25 chunks")]:
        per = evaluate_per_query(runs[name], qrels, ["ndcg@10"])
        a = np.array([per["ndcg@10"][q] for q in qids])
        b = np.array([whole["ndcg@10"][q] for q in qids])
        print(f"| {name} | {a.mean() - b.mean():+.4f} | {_paired_p(a, b):.3f} |")


if __name__ == "__main__":
    main()
