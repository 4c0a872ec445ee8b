"""Evaluate an index on a BEIR folder: each mode alone, and the pipeline's fusion.

Chunk hits are turned into document rankings by the best-scoring chunk of each
document (max-P). "A mode alone" ranks by that mode's exact score over the candidates
its own first stage retrieved; ColBERT, which only rescores, ranks the union of the
other first stages. Used by ``hybridrag eval``; tested in ``tests/test_cli.py``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hybridrag.eval.beir import load_beir
from hybridrag.eval.metrics import evaluate

METRICS = ["ndcg@10", "recall@100", "mrr@10"]
DOC_DEPTH = 100


def doc_run(hits: Sequence[Any], depth: int = DOC_DEPTH) -> dict[str, float]:
    """Best chunk per document, keeping the ranking order; at most ``depth`` documents."""
    out: dict[str, float] = {}
    n = len(hits)
    for i, h in enumerate(hits):
        if h.doc_id not in out:
            # Scores are used only for order: rank-derived values keep the chunk order exactly.
            out[h.doc_id] = float(n - i)
            if len(out) >= depth:
                break
    return out


def _runs(index: Any, qids: list[str], texts: list[str], batch_size: int, progress: bool,
          label: str, **overrides: Any) -> dict[str, dict[str, float]]:
    from tqdm import tqdm

    run: dict[str, dict[str, float]] = {}
    chunk_k = DOC_DEPTH * 3
    for start in tqdm(range(0, len(texts), batch_size), desc=label, disable=not progress, leave=False):
        batch = texts[start:start + batch_size]
        results = index.search_batch(batch, k=chunk_k, depth=chunk_k, **overrides)
        for qid, hits in zip(qids[start:start + batch_size], results):
            run[qid] = doc_run(hits)
    return run


def evaluate_index(index: Any, beir_folder: str, split: str = "test", max_queries: int | None = None,
                   per_mode: bool = True, batch_size: int = 64, progress: bool = False) -> list[dict[str, Any]]:
    """Rows of ``{"run": name, "ndcg@10": ..., "recall@100": ..., "mrr@10": ..., "queries": n}``."""
    data = load_beir(beir_folder, split=split)
    qids = sorted(data.queries)
    if max_queries is not None:
        qids = qids[:max_queries]
    qrels = {q: data.qrels[q] for q in qids}
    texts = [data.queries[q] for q in qids]
    modes = index.pipeline.modes
    first = [m for m in modes if m != "colbert"]
    rows = []
    configs: list[tuple[str, dict[str, Any]]] = []
    if per_mode:
        for m in modes:
            if m == "colbert":
                configs.append((m, {"modes": modes, "weights": {x: (1.0 if x == m else 0.0) for x in modes},
                                    "fusion": "weighted", "rerank": False}))
            else:
                configs.append((m, {"modes": [m], "weights": {m: 1.0}, "fusion": "weighted", "rerank": False}))
    fused_name = f"fused ({index.pipeline.fusion.method})"
    configs.append((fused_name, {"rerank": False}))
    if index.pipeline.rerank.enabled:
        configs.append((fused_name + " + rerank", {}))
    del first
    for name, ov in configs:
        run = _runs(index, qids, texts, batch_size, progress, name, **ov)
        scores = evaluate(run, qrels, metrics=METRICS)
        rows.append({"run": name, **{m: round(float(scores[m]), 4) for m in METRICS}, "queries": len(qids)})
    return rows
