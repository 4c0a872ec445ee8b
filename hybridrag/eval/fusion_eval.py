"""Evaluate fusion settings without re-running retrieval for each one.

The candidates of a query (the union of the first stages' hits, each with its exact
score in every enabled mode) do not depend on the fusion method or its weights, so
:func:`collect` runs the planner once per query and :func:`fused_run` re-fuses the stored
candidates with any setting. :func:`mode_run` ranks one first-stage mode alone over the
candidates it retrieved itself, as ``hybridrag eval`` does; with the same depth, the runs
here equal ``hybridrag eval``'s (``tests/test_fusion.py`` checks it on a tiny index).
Used by ``benchmarks/bench_fusion_languages.py``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybridrag.eval.ablation import DOC_DEPTH
from hybridrag.search import fusion as fusion_mod
from hybridrag.search import encode, planner
from hybridrag.search.options import SearchOptions
from hybridrag.search.plan import make_plan
from hybridrag.stores.base import rank_order

CHUNK_DEPTH = DOC_DEPTH * 3  # as hybridrag eval: k = depth = 300 chunks


@dataclass
class QueryCandidates:
    """One query's candidates: doc id per candidate and the planner's output."""

    qid: str
    doc_ids: np.ndarray  # object [m]
    cand: planner.Candidates
    coverage: dict[str, float] | None = None  # per mode, as hybridrag.search.encode.coverage gives it


def collect(index: Any, qids: Sequence[str], texts: Sequence[str], depth: int = CHUNK_DEPTH,
            batch_size: int = 64, progress: bool = False) -> list[QueryCandidates]:
    """Run the index's first stages and exact rescoring once for every query (``progress``: a
    bar on stderr counting queries)."""
    from tqdm import tqdm

    out: list[QueryCandidates] = []
    bar = tqdm(total=len(texts), desc="retrieving candidates", unit="query", disable=not progress, leave=False)
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start:start + batch_size])
        plan = make_plan(SearchOptions(k=depth, depth=depth, rerank=False), index.pipeline, index.docstore.count())
        reps = encode.encode_queries(index, batch, plan.modes)
        cov = encode.coverage(index, batch, plan.modes)
        ranked = planner.run(plan, reps, index.stores)
        for i, (qid, cand) in enumerate(zip(qids[start:start + batch_size], ranked)):
            rows = index.docstore.get(cand.slots)
            out.append(QueryCandidates(qid, np.array([r["doc_id"] for r in rows], dtype=object), cand,
                                       {m: float(c[i]) for m, c in cov.items()}))
        bar.update(len(batch))   # after the batch's work, so the bar counts queries done
    bar.close()
    return out


def _doc_run(doc_ids: np.ndarray, order: np.ndarray, k: int = CHUNK_DEPTH) -> dict[str, float]:
    """Best chunk per document (max-P) over the first ``k`` chunks of ``order``."""
    out: dict[str, float] = {}
    top = order[:k]
    n = len(top)
    for i, j in enumerate(top):
        d = doc_ids[j]
        if d not in out:
            out[d] = float(n - i)
            if len(out) >= DOC_DEPTH:
                break
    return out


def mode_run(cands: Sequence[QueryCandidates], mode: str) -> dict[str, dict[str, float]]:
    """Ranking by one first-stage mode alone, over the candidates that mode retrieved."""
    run = {}
    for qc in cands:
        c = qc.cand
        own = np.flatnonzero(c.ranks[mode] > 0)
        order = own[rank_order(c.scores[mode][own], c.slots[own])]
        run[qc.qid] = _doc_run(qc.doc_ids, order)
    return run


def fused_run(cands: Sequence[QueryCandidates], method: str, weights: Mapping[str, float],
              rrf_k: int = 60) -> dict[str, dict[str, float]]:
    """Ranking by fusing each query's candidates with ``method`` and ``weights``."""
    run = {}
    for qc in cands:
        c = qc.cand
        fused = fusion_mod.fuse(method, c.slots, c.scores, weights, rrf_k=rrf_k, coverage=qc.coverage)
        run[qc.qid] = _doc_run(qc.doc_ids, rank_order(fused, c.slots))
    return run
