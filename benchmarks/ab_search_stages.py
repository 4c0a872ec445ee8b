"""Paired A/B of the search stages: ``HybridIndex.search(q)`` on one index with the planner and
hits stages (``hybridrag/search/planner.py``, ``hits.py``) of git REF against this tree's, the
calls interleaved query by query (``common.paired_latencies``), so that load on a shared machine
hits both alike; the hits of both (ids, scores, per-mode scores, ranks) are compared first.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/ab_search_stages.py --ref f2b43bb \\
        --index /tmp/bench-search-call/beir-scifact --beir /work/shared/data/beir/scifact
    ... --index /tmp/bench-search-call/synthetic-1000000-v50000-s0 --vocab 50000

``--index``: an index that ``bench_search_call.py`` built (BEIR test queries with ``--beir``,
else the synthetic queries of ``bench_segments.Corpus(--vocab, --seed)``). Everything else (the
stores, the docstore, execute.py) is this tree's in both arms. Never part of the test suite.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, paired_latencies  # noqa: E402

from hybridrag import HybridIndex  # noqa: E402
from hybridrag.search import execute  # noqa: E402


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod   # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True, help="git ref whose planner.py and hits.py are the A arm")
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--beir", type=Path, default=None)
    ap.add_argument("--vocab", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for f in ("planner.py", "hits.py"):
            src = subprocess.run(["git", "-C", str(ROOT), "show", f"{args.ref}:hybridrag/search/{f}"],
                                 capture_output=True, text=True, check=True).stdout
            (Path(tmp) / f).write_text(src)
        old = (_load("_ab_planner", Path(tmp) / "planner.py"), _load("_ab_hits", Path(tmp) / "hits.py"))
    new = (execute.planner, execute.hits_mod)
    if args.beir is not None:
        from bench_search_call import beir

        queries = beir(args.beir)[1]
    else:
        from bench_segments import Corpus

        queries = Corpus(args.vocab, args.seed).queries(args.queries)
    idx = HybridIndex.load(args.index)

    def arm(mods):
        def call(i: int):
            execute.planner, execute.hits_mod = mods
            return idx.search(queries[i])
        return call

    a, b = arm(old), arm(new)
    same = all([(h.chunk_id, h.score, h.scores, h.ranks) for h in a(i)]
               == [(h.chunk_id, h.score, h.scores, h.ranks) for h in b(i)] for i in range(len(queries)))
    print(f"# {args.index.name}: {len(queries)} queries; hits identical (ids, scores, per-mode scores, ranks): {same}")
    for r in range(1, args.runs + 1):
        la, lb = paired_latencies([a, b], len(queries))
        print(f"run {r}: {args.ref} stages p50 {la['p50']:.3f} ms ({la['qps']:,.0f} q/s); this tree p50 "
              f"{lb['p50']:.3f} ms ({lb['qps']:,.0f} q/s): {1 - lb['p50'] / la['p50']:.0%} less at p50")
    idx.close()


if __name__ == "__main__":
    main()
