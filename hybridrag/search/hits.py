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
    return dict(zip(slots.tolist(), docstore.get(slots)))


def to_hits(cand: Candidates, rows: Mapping[int, Mapping[str, Any]],
            rerank_scores: np.ndarray | None = None, given: set[int] | None = None) -> list[Hit]:
    """One :class:`Hit` per candidate, in order. ``score`` is the rerank score when
    ``rerank_scores`` (aligned with ``cand``) is given, else the fused score; ``scores``
    holds each mode's exact score, ``fused`` and ``rerank``; ``ranks`` the first-stage ranks.

    ``given``: the slots whose row already went into a hit of this call (updated here); such
    a hit gets a copy of the metadata, so that two queries' hits never share one dict."""
    # Python numbers from each array once (``tolist``: the values ``float(a[i])`` gives),
    # not numpy scalars element by element
    per_mode = [(m, s.tolist()) for m, s in cand.scores.items()]
    fused = cand.fused.tolist()
    rerank = None if rerank_scores is None else np.asarray(rerank_scores, dtype=np.float64).tolist()
    ranks = [(m, r.tolist()) for m, r in cand.ranks.items()]
    hits = []
    for i, slot in enumerate(cand.slots.tolist()):
        row = rows[slot]
        metadata = row["metadata"]
        if given is not None:
            if slot in given:
                metadata = copy.deepcopy(metadata)
            given.add(slot)
        scores = {m: s[i] for m, s in per_mode}
        scores["fused"] = final = fused[i]
        if rerank is not None:
            scores["rerank"] = final = rerank[i]
        hits.append(Hit(chunk_id=row["chunk_id"], doc_id=row["doc_id"], text=row["text"], score=final,
                        metadata=metadata, span=(row["start"], row["end"]), scores=scores,
                        ranks={m: r[i] for m, r in ranks if r[i] > 0}, weights=dict(cand.weights)))
    return hits
