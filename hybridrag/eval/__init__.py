"""Evaluation: BEIR-format data sets and ranking metrics (nDCG@k, Recall@k, MRR@k).

Covered by ``tests/test_eval.py``.
"""
from __future__ import annotations

from hybridrag.eval.beir import BeirData, iter_beir_corpus, load_beir, read_beir_queries, read_qrels
from hybridrag.eval.metrics import (
    DEFAULT_METRICS,
    evaluate,
    evaluate_per_query,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    rank_documents,
    recall_at_k,
    results_table,
)

__all__ = [
    "DEFAULT_METRICS", "BeirData", "evaluate", "evaluate_per_query", "iter_beir_corpus",
    "load_beir", "mrr_at_k", "ndcg_at_k", "precision_at_k", "rank_documents", "read_beir_queries",
    "read_qrels", "recall_at_k", "results_table",
]
