"""Issue 25, item 1: where one ``HybridIndex.search(q)`` call's time goes, stage by stage, on an
index that ``bench_search_call.py`` built (BM25 only, SciFact by default).

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/profile_search_call.py \\
        --index /tmp/bsc/beir-scifact --beir /work/shared/data/beir/scifact

Each test query runs the stages of ``hybridrag/search/execute.py`` one after the other, timed
with ``perf_counter`` (no profiler: its overhead is larger than most stages): the query check
and options, the plan, BM25's analysis of the query, the sparse store's top-k, what the planner
does after it (unions, exact scores, fusion, order), the docstore fetch of the hits' rows and
the ``Hit`` objects; then the whole call. Medians over ``--rounds`` passes of every query, each
stage's share of their sum, and the call's p50 beside that sum. Printed only; never a test.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from common import ROOT  # noqa: F401  (puts the repo on sys.path)

from hybridrag.index import HybridIndex  # noqa: E402
from hybridrag.search import encode, execute, planner  # noqa: E402
from hybridrag.search import hits as hits_mod  # noqa: E402
from hybridrag.search.options import SearchOptions  # noqa: E402
from hybridrag.search.plan import make_plan  # noqa: E402
from hybridrag.types import SearchResults  # noqa: E402

STAGES = ("check + options", "plan", "analyse the query", "planner: store top-k", "planner: after the store",
          "docstore rows", "hits", "results")


def queries(beir: Path) -> list[str]:
    test = {ln.split("\t")[0] for ln in (beir / "qrels" / "test.tsv").read_text().splitlines()[1:]}
    rows = [json.loads(ln) for ln in (beir / "queries.jsonl").read_text().splitlines() if ln.strip()]
    return [r["text"] for r in rows if r["_id"] in test]


def stages(idx: HybridIndex, q: str) -> list[float]:
    store = idx.stores["bm25"]
    t = [time.perf_counter()]
    qs = execute.check_queries([q])
    opts = SearchOptions.build(None, 10, None)
    t.append(time.perf_counter())
    plan = make_plan(opts, idx.pipeline, idx.docstore.count())
    t.append(time.perf_counter())
    reps = encode.encode_queries(idx, qs, plan.modes)
    t.append(time.perf_counter())
    store.search(reps["bm25"], plan.depths["bm25"])   # what the planner's first stage asks
    t.append(time.perf_counter())
    ranked = planner.run(plan, reps, idx.stores)      # the store again, then the rest: minus the above
    t.append(time.perf_counter())
    tops = [c.take(plan.k) for c in ranked]
    rows = hits_mod.fetch_rows(idx.docstore, tops)
    t.append(time.perf_counter())
    found = [hits_mod.to_hits(top, rows, None, set()) for top in tops]
    t.append(time.perf_counter())
    [SearchResults(h, list(encode.term_notes(plan, reps, i))) for i, h in enumerate(found)]
    t.append(time.perf_counter())
    d = np.diff(t)
    d[4] -= d[3]   # planner.run minus its store search, measured alone just before
    return d.tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", type=Path, required=True, help="a BM25-only index (bench_search_call.py's)")
    ap.add_argument("--beir", type=Path, required=True, help="the BEIR folder of its test queries")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    idx = HybridIndex.load(args.index)
    qs = queries(args.beir)
    for q in qs:   # warm: caches, kernels
        idx.search(q)
    per = np.array([stages(idx, q) for _ in range(args.rounds) for q in qs]) * 1e3
    calls = []
    for _ in range(args.rounds):
        for q in qs:
            t0 = time.perf_counter()
            idx.search(q)
            calls.append(time.perf_counter() - t0)
    med = np.median(per, axis=0)
    print(f"{len(qs)} queries x {args.rounds} rounds; median ms per stage (share of their sum)")
    for name, v in zip(STAGES, med):
        print(f"  {name:28s} {v:8.4f}  ({v / med.sum():5.1%})")
    print(f"  {'sum of the medians':28s} {med.sum():8.4f}")
    print(f"  {'search(q), p50':28s} {np.median(calls) * 1e3:8.4f}")
    idx.close()


if __name__ == "__main__":
    main()
