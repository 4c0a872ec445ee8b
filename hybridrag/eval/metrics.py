"""Ranking metrics: nDCG@k, Recall@k, MRR@k and Precision@k over a run and qrels.

Definitions follow trec_eval (and so pytrec_eval and ranx):

- a run is ``{query_id: {doc_id: score}}``; each query's documents are ranked by score
  descending, ties broken by doc id descending (trec_eval's order; ranx itself leaves
  ties in an unspecified order, so it is compared on tie-free runs);
- qrels are ``{query_id: {doc_id: relevance}}``; a document is relevant when its
  relevance is >= 1; relevance 0 and negative judgments count as not relevant;
- nDCG@k: gain = relevance, discount = log2(rank + 1), the ideal ranking is the qrels
  sorted by relevance, cut at k (Järvelin & Kekäläinen, trec_eval ``ndcg_cut``);
- Recall@k = relevant in the top k / all relevant; Precision@k = relevant in the top k / k;
  MRR@k = 1 / rank of the first relevant document in the top k, else 0;
- a metric without ``@k`` uses the whole ranking;
- every query in the qrels is scored; one with no run entry, or with no relevant
  document, scores 0; queries in the run but not in the qrels are ignored.

Covered by ``tests/test_eval.py`` (against ranx).
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable

__all__ = [
    "DEFAULT_METRICS", "METRICS", "evaluate", "evaluate_per_query", "mrr_at_k", "ndcg_at_k",
    "parse_metric", "precision_at_k", "rank_documents", "recall_at_k", "results_table",
]

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

DEFAULT_METRICS: tuple[str, ...] = ("ndcg@10", "recall@100", "mrr@10")


def rank_documents(scores: Mapping[str, float], k: int | None = None) -> list[str]:
    """Doc ids of one query's run, best first: score descending, then doc id descending.

    ``k`` keeps only the top k (``None`` keeps all). Raises ``ValueError`` on a NaN score.
    """
    items = list(scores.items())
    for doc_id, score in items:
        if score != score:  # NaN is the only value unequal to itself
            raise ValueError(f"score of document {doc_id!r} is NaN; a run needs comparable scores")
    key: Callable[[tuple[str, float]], tuple[float, str]] = lambda item: (item[1], item[0])
    if k is not None and k < len(items):
        top = heapq.nlargest(k, items, key=key)
    else:
        top = sorted(items, key=key, reverse=True)
    return [doc_id for doc_id, _ in top]


def _relevant(qrel: Mapping[str, int]) -> dict[str, int]:
    return {doc_id: rel for doc_id, rel in qrel.items() if rel >= 1}


def ndcg_at_k(ranked: Sequence[str], qrel: Mapping[str, int], k: int | None = None) -> float:
    """nDCG of a ranked doc-id list (already cut or not) against one query's qrels."""
    rel = _relevant(qrel)
    if not rel:
        return 0.0
    top = ranked if k is None else ranked[:k]
    dcg = sum(rel.get(doc_id, 0) / math.log2(i + 2) for i, doc_id in enumerate(top))
    ideal = sorted(rel.values(), reverse=True)
    if k is not None:
        ideal = ideal[:k]
    idcg = sum(gain / math.log2(i + 2) for i, gain in enumerate(ideal))
    return dcg / idcg


def recall_at_k(ranked: Sequence[str], qrel: Mapping[str, int], k: int | None = None) -> float:
    """Fraction of the query's relevant documents found in the top k."""
    rel = _relevant(qrel)
    if not rel:
        return 0.0
    top = ranked if k is None else ranked[:k]
    return sum(1 for doc_id in top if doc_id in rel) / len(rel)


def precision_at_k(ranked: Sequence[str], qrel: Mapping[str, int], k: int | None = None) -> float:
    """Relevant documents in the top k divided by k (by the ranking length when k is None)."""
    rel = _relevant(qrel)
    top = ranked if k is None else ranked[:k]
    denom = len(top) if k is None else k
    if not rel or denom == 0:
        return 0.0
    return sum(1 for doc_id in top if doc_id in rel) / denom


def mrr_at_k(ranked: Sequence[str], qrel: Mapping[str, int], k: int | None = None) -> float:
    """Reciprocal rank of the first relevant document in the top k, 0 when there is none."""
    rel = _relevant(qrel)
    top = ranked if k is None else ranked[:k]
    for i, doc_id in enumerate(top):
        if doc_id in rel:
            return 1.0 / (i + 1)
    return 0.0


METRICS: dict[str, Callable[[Sequence[str], Mapping[str, int], int | None], float]] = {
    "ndcg": ndcg_at_k,
    "recall": recall_at_k,
    "precision": precision_at_k,
    "mrr": mrr_at_k,
}


def parse_metric(name: str) -> tuple[str, int | None]:
    """Split ``"ndcg@10"`` into ``("ndcg", 10)``; ``"mrr"`` gives ``("mrr", None)``."""
    if not isinstance(name, str):
        raise TypeError(f"metric names are strings like 'ndcg@10', got {name!r}")
    base, sep, cut = name.strip().lower().partition("@")
    if base not in METRICS:
        raise ValueError(f"unknown metric {name!r}; valid: {sorted(METRICS)} with an optional '@k'")
    if not sep:
        return base, None
    if not cut.isdigit() or int(cut) < 1:
        raise ValueError(f"metric {name!r}: the cutoff after '@' must be a positive integer")
    return base, int(cut)


def _check_inputs(run: Any, qrels: Any) -> None:
    for label, value in (("run", run), ("qrels", qrels)):
        if not isinstance(value, Mapping):
            raise TypeError(f"{label} must be a dict {{query_id: {{doc_id: value}}}}, got {type(value).__name__}")
        for qid, docs in value.items():
            if not isinstance(docs, Mapping):
                raise TypeError(f"{label}[{qid!r}] must be a dict {{doc_id: value}}, got {type(docs).__name__}")


def evaluate_per_query(
    run: Run, qrels: Qrels, metrics: Iterable[str] = DEFAULT_METRICS
) -> dict[str, dict[str, float]]:
    """Per-query values: ``{metric: {query_id: value}}`` for every query id in ``qrels``."""
    _check_inputs(run, qrels)
    if isinstance(metrics, str):
        metrics = [metrics]
    parsed = [(name, *parse_metric(name)) for name in metrics]
    if not parsed:
        raise ValueError("metrics is empty; give at least one, e.g. ['ndcg@10']")
    cuts = [k for _, _, k in parsed]
    depth = None if any(k is None for k in cuts) else max(k for k in cuts if k is not None)
    out: dict[str, dict[str, float]] = {name: {} for name, _, _ in parsed}
    for qid in sorted(qrels):
        ranked = rank_documents(run.get(qid, {}), depth)
        for name, base, k in parsed:
            out[name][qid] = METRICS[base](ranked, qrels[qid], k)
    return out


def evaluate(run: Run, qrels: Qrels, metrics: Iterable[str] = DEFAULT_METRICS) -> dict[str, float]:
    """Mean of each metric over all query ids in ``qrels``: ``{metric: mean}``."""
    per_query = evaluate_per_query(run, qrels, metrics)
    return {name: (math.fsum(values.values()) / len(values) if values else 0.0)
            for name, values in per_query.items()}


def results_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 4
) -> str:
    """Render rows (dicts) as a GitHub markdown table; floats get ``digits`` decimals.

    Columns default to the keys of all rows in first-seen order; a missing cell is empty.
    """
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            for key in row:
                seen.setdefault(str(key), None)
        columns = list(seen)
    if not columns:
        raise ValueError("results_table needs at least one column (rows are empty)")

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    numeric = [all(isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool)
                   for r in rows if r.get(c) is not None) and any(r.get(c) is not None for r in rows)
               for c in columns]
    lines = ["| " + " | ".join(cell(c) for c in columns) + " |",
             "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"
