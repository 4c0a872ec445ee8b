"""A search call, stage by stage (what :meth:`hybridrag.index.HybridIndex.search_batch` runs):

1. plan (:func:`hybridrag.search.plan.make_plan`): options + pipeline + live count;
2. encode the queries (:mod:`hybridrag.search.encode`), once per call for every mode;
3. retrieve and fuse (:func:`hybridrag.search.planner.run`): first stages, exact scores of
   the candidate union in every mode, fusion;
4. fetch the docstore rows of every candidate the call still needs, once
   (:func:`hybridrag.search.hits.fetch_rows`);
5. rerank (:func:`hybridrag.search.rerank.rerank`), one cross-encoder call for the batch;
   with a time budget, as deep and with passages as long as the time left allows
   (:mod:`hybridrag.search.budget`);
6. hits (:func:`hybridrag.search.hits.to_hits`), with notes saying why hits are missing.

``index`` is the :class:`~hybridrag.index.HybridIndex` searched. Tested in
``tests/test_index.py``.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from hybridrag.search import budget as budget_mod
from hybridrag.search import encode, planner
from hybridrag.search import hits as hits_mod
from hybridrag.search import rerank as rerank_mod
from hybridrag.search.options import SearchOptions
from hybridrag.search.plan import make_plan
from hybridrag.types import SearchResults


def check_queries(queries: Any) -> list[str]:
    """``queries`` as a list once each is a non-empty string of valid Unicode."""
    if isinstance(queries, str) or not isinstance(queries, Sequence):
        raise TypeError("queries must be a list of strings (use search() for one query)")
    from hybridrag.stores.docstore import check_unicode

    for i, q in enumerate(queries):
        name = "the query" if len(queries) == 1 else f"query {i}"
        if not isinstance(q, str):
            raise TypeError(f"{name} must be a string, got {type(q).__name__}")
        if not q.strip():
            raise ValueError(f"{name} is empty: {q!r}")
        check_unicode(q, name)
    return list(queries)


def search_batch(index: Any, queries: list[str], options: SearchOptions) -> list[SearchResults]:
    """One :class:`SearchResults` per query of ``queries`` (checked by :func:`check_queries`)."""
    t0 = time.perf_counter()
    live = index.docstore.count()
    plan = make_plan(options, index.pipeline, live)
    loaded = budget_mod.load_models(index, plan) if plan.budget_ms > 0 and queries and live else 0.0
    if loaded:   # once per process: not the query's time (docs/BUDGET.md)
        t0 = time.perf_counter()
    if not queries:
        return []
    if live == 0:
        return [SearchResults((), ["the index holds no chunks"]) for _ in queries]
    allowed = None
    filters = options.filters
    if filters:
        allowed = index.docstore.filter_mask(filters, index.docstore.next_slot())
        if not allowed.any():
            notes = [f"no document has metadata key {f!r}" for f in index.docstore.missing_keys(list(filters))]
            notes = notes or [f"no chunk matches the filters {dict(filters)!r}"]
            return [SearchResults((), notes) for _ in queries]
    reps = encode.encode_queries(index, queries, plan.modes)
    # coverage re-weighs modes: with one mode its weight is 1 whatever the coverage, so skip it
    cov = encode.coverage(index, queries, plan.modes) \
        if plan.fusion in ("adaptive", "coverage") and len(plan.modes) > 1 else None
    ranked = planner.run(plan, reps, index.stores, allowed=allowed, coverage=cov)
    tops = [c.take(plan.rerank_k if plan.rerank else plan.k) for c in ranked]
    rows = hits_mod.fetch_rows(index.docstore, tops)
    given: set[int] = set()
    timing: dict[str, Any] | None = None
    extra: list[str] = []
    if plan.budget_ms > 0:
        timing = {"budget_ms": plan.budget_ms}
        if loaded:
            timing["models_loaded_ms"] = loaded * 1000
    if plan.rerank and rows:
        r = index.pipeline.rerank
        depth, max_length, planned = plan.rerank_k, None, None
        if timing is not None:
            planned = budget_mod.plan_rerank(index.reranker, queries, tops, rows, plan, r, t0, timing, extra)
            depth, max_length = planned.depth, planned.max_length
        if depth:
            t1 = time.perf_counter()
            reranked = rerank_mod.rerank(index.reranker, queries, [t.take(depth) for t in tops], rows,
                                         normalize=r.normalize, batch_size=r.batch_size, max_length=max_length)
            if planned is not None:
                budget_mod.observed(planned, timing, time.perf_counter() - t1)
            found = [hits_mod.to_hits(top.take(plan.k), rows, rs[:plan.k], given) for top, rs in reranked]
        else:
            found = [hits_mod.to_hits(top.take(plan.k), rows, None, given) for top in tops]
    else:
        found = [hits_mod.to_hits(top, rows, None, given) for top in tops]
    if timing is not None:
        timing["total_ms"] = (time.perf_counter() - t0) * 1000
    out = [SearchResults(h, [*encode.term_notes(plan, reps, qi), *extra]) for qi, h in enumerate(found)]
    for res in out:
        res.timing = timing
    return out
