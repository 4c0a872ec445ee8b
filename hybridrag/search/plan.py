"""Planning, the first search stage: a call's :class:`~hybridrag.search.options.SearchOptions`
plus the index's pipeline and live chunk count give a :class:`~hybridrag.search.planner.QueryPlan`.

The checks that need the index live here (the options check the rest when built): every
mode asked for is enabled in the index, one of them retrieves (``colbert`` only rescores),
each has a fusion weight, a per-mode depth names a first stage. ``k``, depths and
``rerank_k`` are capped at the live chunk count (at least 1), so no store allocates more
than the index holds; a depth below ``k`` is raised to ``k``, ``rerank_k`` too. A search of one
first-stage mode with nothing after it (no other mode, no rerank) asks its store for ``k``: the
answer is the store's top-k whatever the depth, for the fusions where that holds
(:func:`_keeps_top_k`); looking deeper cost a quarter to a third of a SciFact BM25 call
(``benchmarks/bench_search_call.py``; at 1M chunks within the noise).

Tested in ``tests/test_index.py`` (capping, errors) and ``tests/test_planner.py``.
"""
from __future__ import annotations

from collections.abc import Mapping

from hybridrag.config import PipelineConfig
from hybridrag.search.options import SearchOptions
from hybridrag.search.planner import FIRST_STAGE, QueryPlan


def make_plan(options: SearchOptions, pipeline: PipelineConfig, live: int) -> QueryPlan:
    """The plan for one call over an index built with ``pipeline`` holding ``live`` chunks."""
    enabled = pipeline.modes
    if options.modes is None:
        use = list(enabled)
    else:
        bad = [m for m in options.modes if m not in enabled]
        if bad:
            raise ValueError(f"mode(s) {bad} are not enabled in this index; enabled: {enabled}")
        use = [m for m in enabled if m in options.modes]
        if not any(m in FIRST_STAGE for m in use):
            raise ValueError(f"modes {list(options.modes)}: colbert only rescores; add one of dense/sparse/bm25")
    w = dict(pipeline.fusion.weights if options.weights is None else options.weights)
    missing = [m for m in use if m not in w]
    if missing:
        raise ValueError(f"no fusion weight for mode(s) {missing}; weights given: {w}")
    depths = {m: getattr(pipeline, m).depth for m in use if m in FIRST_STAGE}
    if isinstance(options.depth, Mapping):
        for m, d in options.depth.items():
            if m not in depths:
                raise ValueError(f"depth given for mode {m!r}, which is not a first stage here: {list(depths)}")
            depths[m] = d
    elif options.depth is not None:
        depths = {m: options.depth for m in depths}
    cap = max(1, live)
    k = min(options.k, cap)
    for m, d in depths.items():
        depths[m] = min(max(int(d), k), cap)
    rk = pipeline.rerank.k if options.rerank_k is None else options.rerank_k
    fusion = options.fusion or pipeline.fusion.method
    rerank = pipeline.rerank.enabled if options.rerank is None else options.rerank
    if len(use) == 1 and not rerank and _keeps_top_k(fusion, use[0], pipeline):
        depths[use[0]] = k
    return QueryPlan(modes=use, depths=depths, fusion=fusion, weights=w,
                     rrf_k=pipeline.fusion.rrf_k if options.rrf_k is None else options.rrf_k, k=k,
                     rerank=rerank, rerank_k=min(max(int(rk), k), cap),
                     budget_ms=pipeline.rerank.budget_ms if options.budget_ms is None else options.budget_ms)


def _keeps_top_k(fusion: str, mode: str, pipeline: PipelineConfig) -> bool:
    """Whether fusing one first-stage mode alone gives its store's own top-k with the scores a
    deeper search gives them, so the store need not look past ``k``: the order is the mode's
    (ties by slot, as in every store) and each candidate's fused score depends only on its own
    score (``weighted``), its rank (``rrf``) or the best score (``relative`` over scores that are
    never negative: learned sparse weights, Lucene's BM25, whose idf is never <= 0).
    ``adaptive`` (its weights read the scores' spread) and ``relative`` over dense scores (the
    largest magnitude may be a negative one far down) depend on the depth."""
    if fusion in ("weighted", "rrf"):
        return True
    # ``coverage`` of one mode is ``relative`` (the mode's weight is 1 whatever its coverage)
    return fusion in ("relative", "coverage") and (
        mode == "sparse" or (mode == "bm25" and pipeline.bm25.variant == "lucene"))
