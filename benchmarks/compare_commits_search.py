"""The same public call on two commits of the engine, side by side: ``HybridIndex.search(q)``
(one query per call) and its sparse store alone, BM25 only, on an index that
``bench_search_call.py`` built (issue 25, item 1). Never part of the test suite.

    python benchmarks/compare_commits_search.py --before 379e921 --index /tmp/bsc/beir-scifact \\
        --beir /work/shared/data/beir/scifact

Why two processes at once: on the shared VM the same code's p50 moved by a factor of two from one
minute to the next (bm25s's too), so runs one after the other compared the machine, not the code.
Here each commit runs in its own process (its ``hybridrag`` from a ``git worktree`` of that commit,
made under ``--work``; the working tree for ``--after`` = ``.``), both at once, each pinned to one
of the two cores (``taskset``), one thread each; every round swaps the cores. A round times every
query three times over and keeps the lowest of the three medians. Raw results:
``benchmarks/results/compare-commits-search_<date>_<before>-<after>.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(code: str, index: str, beir: str | None, synthetic_vocab: int) -> None:
    sys.path.insert(0, code)
    sys.path.insert(1, str(ROOT / "benchmarks"))
    import numpy as np

    import hybridrag
    from hybridrag import HybridIndex

    if not hybridrag.__file__.startswith(code):
        raise SystemExit(f"hybridrag came from {hybridrag.__file__}, not {code}")
    if beir:
        from bench_search_call import beir as read_beir

        queries = read_beir(Path(beir))[1]
    else:
        from bench_segments import Corpus

        queries = Corpus(synthetic_vocab, 0).queries(300)
    idx = HybridIndex.load(index)
    store = idx.stores["bm25"]
    enc = idx.bm25.encode_queries(queries)
    for q in queries[:50]:
        idx.search(q)

    def p50(fn: object) -> float:
        meds = []
        for _ in range(3):
            ts = []
            for i in range(len(queries)):
                t = time.perf_counter()
                fn(i)   # type: ignore[operator]
                ts.append(time.perf_counter() - t)
            meds.append(float(np.median(ts)) * 1e3)
        return min(meds)

    print(json.dumps({"search": p50(lambda i: idx.search(queries[i])),
                      "store": p50(lambda i: store.search(enc[i:i + 1], 10))}))


def checkout(rev: str, work: Path) -> tuple[str, str]:
    """(short commit, code directory) of ``rev``; ``.`` is the working tree."""
    if rev == ".":
        short = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                               text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "hybridrag"], capture_output=True,
                               text=True, check=True).stdout.strip()
        return short + ("+dirty" if dirty else ""), str(ROOT)
    short = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True, text=True,
                           check=True).stdout.strip()
    where = work / f"worktree-{short}"
    if not where.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), short], check=True,
                       capture_output=True)
    return short, str(where)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="the earlier commit (any git revision)")
    ap.add_argument("--after", default=".", help="the later commit ('.': the working tree)")
    ap.add_argument("--index", required=True, help="an index built by bench_search_call.py")
    ap.add_argument("--beir", default=None, help="its BEIR folder (queries); without it, synthetic queries")
    ap.add_argument("--vocab", type=int, default=50_000, help="synthetic vocabulary (as the index was built)")
    ap.add_argument("--rounds", type=int, default=4, help="rounds (the cores swap every round)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/compare-commits"), help="where worktrees are made")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.index, args.beir, args.vocab)
        return
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs two cores: one per commit")
    args.work.mkdir(parents=True, exist_ok=True)
    sides = [checkout(args.before, args.work), checkout(args.after, args.work)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    lines = [f"| round | cores (before, after) | {sides[0][0]}: search() p50 ms | {sides[1][0]}: search() p50 ms | "
             f"store alone p50 ms, before / after |", "|---|---|---|---|---|"]
    got: list[list[dict[str, float]]] = [[], []]
    for r in range(args.rounds):
        cores = (r % 2, 1 - r % 2)
        procs = [subprocess.Popen(["taskset", "-c", str(c), sys.executable, __file__, "--worker", code, "--index",
                                   args.index, "--vocab", str(args.vocab), "--before", "-"]
                                  + (["--beir", args.beir] if args.beir else []),
                                  stdout=subprocess.PIPE, text=True, env=env) for c, (_, code) in zip(cores, sides)]
        outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        for side, o in zip(got, outs):
            side.append(o)
        lines.append(f"| {r + 1} | {cores[0]}, {cores[1]} | {outs[0]['search']:.3f} | {outs[1]['search']:.3f} | "
                     f"{outs[0]['store']:.3f} / {outs[1]['store']:.3f} |")
        print(lines[-1], flush=True)
    med = [statistics.median(x["search"] for x in side) for side in got]
    lines.append(f"| median of rounds | | {med[0]:.3f} | {med[1]:.3f} ({med[1] / med[0] - 1:+.0%}) | |")
    head = (f"# search() on two commits side by side ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs)\n\n"
            f"command: {' '.join(sys.argv)}\n\n")
    out = ROOT / "benchmarks" / "results" / (f"compare-commits-search_{time.strftime('%Y-%m-%d')}_{sides[0][0]}-"
                                             f"{sides[1][0]}_{Path(args.index).name}.md")
    out.write_text(head + "\n".join(lines) + "\n")
    print(lines[-1])
    print(f"# raw results: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
