"""Rerank, the stage after fusion: a cross-encoder scores each query with each of its top
``rerank_k`` fused candidates, and the candidates are reordered by that score (ties: the
smaller slot first, :func:`hybridrag.stores.base.rank_order`).

Batched across the queries of a call: ONE ``reranker.compute_score`` call gets every
``(query, passage)`` pair of the call (the reranker sorts them by length and batches them
itself), and passage texts come from the rows the caller fetched once for the call
(:func:`hybridrag.search.hits.fetch_rows`), which the hits reuse.

Tested in ``tests/test_index.py`` (order against the reference cross-encoder; one
``compute_score`` and one ``docstore.get`` per ``search_batch``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hybridrag.search.planner import Candidates
from hybridrag.stores.base import rank_order


def rerank(reranker: Any, queries: Sequence[str], tops: Sequence[Candidates], rows: Mapping[int, Mapping[str, Any]],
           *, normalize: bool, batch_size: int, max_length: int | None = None) -> list[tuple[Candidates, np.ndarray]]:
    """Per query ``qi``: ``tops[qi]`` reordered by the cross-encoder score of
    ``(queries[qi], text)``, and those scores (float64 ``[m]``, best first). ``max_length``
    (a budget's choice) truncates the pairs below the reranker's own limit.

    ``rows[slot]["text"]`` is each candidate's passage. A call without candidates leaves
    ``reranker`` untouched (a lazily loaded model is not loaded for nothing)."""
    pairs = [(queries[qi], rows[int(s)]["text"]) for qi, top in enumerate(tops) for s in top.slots]
    if not pairs:
        return [(top, np.zeros(0, dtype=np.float64)) for top in tops]
    kw = {} if max_length is None else {"max_length": max_length}
    scores = np.asarray(reranker.compute_score(pairs, normalize=normalize, batch_size=batch_size, **kw),
                        dtype=np.float64)
    if scores.shape != (len(pairs),):
        raise RuntimeError(f"the reranker returned {scores.shape} scores for {len(pairs)} pairs")
    out = []
    start = 0
    for top in tops:
        rs = scores[start:start + len(top.slots)]
        start += len(top.slots)
        order = rank_order(rs, top.slots)
        out.append((top.reorder(order), rs[order]))
    return out
