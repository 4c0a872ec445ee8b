"""Query encoding, the input of retrieval: each enabled mode's representation of every query
of a call (one encoder pass for the neural modes), how well each mode's vocabulary covers
each query (for ``adaptive`` fusion), and the notes that say why a term mode retrieved
nothing.

``index`` is the :class:`hybridrag.index.HybridIndex` searched (its ``encoder``, ``bm25``,
``pipeline``). Tested in ``tests/test_index.py``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hybridrag import write
from hybridrag.modes import MODES
from hybridrag.search import planner


def encode_queries(index: Any, queries: list[str], modes: Sequence[str]) -> dict[str, Any]:
    """``mode -> encoded queries`` for ``modes`` (see :func:`hybridrag.search.planner.run`)."""
    reps: dict[str, Any] = {}
    neural = [m for m in planner.NEURAL if m in modes]
    if neural:
        cfg = index.pipeline.encoder
        out = index.encoder.encode_queries(queries, max_length=cfg.query_max_length, batch_size=cfg.batch_size,
                                           **write.encode_flags(index, neural))
        for m in neural:
            reps[m] = getattr(out, m)
    if "bm25" in modes:
        reps["bm25"] = index.bm25.encode_queries(queries)
    return reps


def coverage(index: Any, queries: list[str], modes: Sequence[str]) -> dict[str, np.ndarray]:
    """How well each mode's vocabulary covers each query (for adaptive fusion): ``mode -> [nq]``."""
    cov: dict[str, np.ndarray] = {}
    neural = [m for m in modes if m in planner.NEURAL]
    if neural:
        c = planner.query_coverage(index.encoder.tokenizer, queries)
        cov.update({m: c for m in neural})
    if "bm25" in modes:
        cov["bm25"] = planner.term_coverage(index.bm25.analyzer.tokenize(queries), index.bm25.vocabulary)
    return cov


def term_notes(plan: planner.QueryPlan, reps: Mapping[str, Any], qi: int) -> list[str]:
    """A note per first-stage mode that matches terms and got none from query ``qi``."""
    notes = []
    for m in plan.first_stage:
        if MODES[m].by_terms and not any(reps[m][qi].values()):
            why = ("none of its words is in the index vocabulary" if m == "bm25"
                   else "the encoder gave it no lexical weights")
            notes.append(f"no query terms for {m!r} ({why}): it retrieved nothing")
    return notes
