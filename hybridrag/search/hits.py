"""Hits, the last search stage: the ranked candidates of each query become
:class:`~hybridrag.types.Hit` objects with their text and metadata, read from the docstore
once per call (:func:`fetch_rows`; the rerank stage reads its passages from the same rows).

Tested in ``tests/test_index.py``.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hybridrag.search.planner import Candidates
from hybridrag.types import Hit


def fetch_rows(docstore: Any, cands: Sequence[Candidates]) -> dict[int, dict[str, Any]]:
    """``slot -> docstore row`` for every slot of ``cands``: one ``docstore.get`` for all of
    them (none when there is no slot)."""
    parts = [c.slots for c in cands if len(c.slots)]
    if not parts:
        return {}
    slots = np.unique(np.concatenate(parts))
    return {int(s): row for s, row in zip(slots, docstore.get(slots))}


def to_hits(cand: Candidates, rows: Mapping[int, Mapping[str, Any]],
            rerank_scores: np.ndarray | None = None, given: set[int] | None = None) -> list[Hit]:
    """One :class:`Hit` per candidate, in order. ``score`` is the rerank score when
    ``rerank_scores`` (aligned with ``cand``) is given, else the fused score; ``scores``
    holds each mode's exact score, ``fused`` and ``rerank``; ``ranks`` the first-stage ranks.

    ``given``: the slots whose row already went into a hit of this call (updated here); such
    a hit gets a copy of the metadata, so that two queries' hits never share one dict."""
    hits = []
    for i, slot in enumerate(cand.slots):
        row = rows[int(slot)]
        metadata = row["metadata"]
        if given is not None:
            if int(slot) in given:
                metadata = copy.deepcopy(metadata)
            given.add(int(slot))
        scores = {m: float(s[i]) for m, s in cand.scores.items()}
        scores["fused"] = float(cand.fused[i])
        final = scores["fused"]
        if rerank_scores is not None:
            scores["rerank"] = float(rerank_scores[i])
            final = scores["rerank"]
        ranks = {m: int(r[i]) for m, r in cand.ranks.items() if r[i] > 0}
        hits.append(Hit(chunk_id=row["chunk_id"], doc_id=row["doc_id"], text=row["text"], score=final,
                        metadata=metadata, span=(row["start"], row["end"]), scores=scores, ranks=ranks,
                        weights=dict(cand.weights)))
    return hits
