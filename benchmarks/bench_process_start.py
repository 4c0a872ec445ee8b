"""What a new process waits before its first answer, on two commits of the engine, one after the
other in turns: importing the compiled kernels (``hybridrag.stores._kernels``, which every index
with a sparse or BM25 store loads) and a whole ``hybridrag query INDEX "..."`` (load the index,
search, print), beside the same wait for tantivy (``--beir``: a process that opens a tantivy 0.27
index of the same corpus on disk, parses the query, takes the top 10 and prints their ids and
stored text; the index is built once under ``--work`` with tantivy's ``en_stem`` analyser). Never
part of the test suite.

    python benchmarks/bench_process_start.py --before 4bded90 --index /tmp/bsc/beir-scifact \
        --beir /work/shared/data/beir/scifact

Each commit runs from its own ``git worktree`` (under ``--work``; ``--after .`` = this working
tree) with its own numba cache, warmed by one discarded run of each command; then ``--runs``
turns, each timing both commits' commands (wall clock of the child process, ``OMP_NUM_THREADS=1``).
Prints the median per command and commit; raw results go to
``benchmarks/results/process-start_<date>_<before>-<after>.md``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from compare_commits_search import checkout  # noqa: E402


def timed(cmd: list[str], code: str) -> float:
    env = {**os.environ, "PYTHONPATH": code, "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=code, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


_TANTIVY_QUERY = """
import sys, tantivy
index = tantivy.Index.open(sys.argv[1])
searcher = index.searcher()
hits = searcher.search(index.parse_query(sys.argv[2], ["body"]), 10).hits
for _, a in hits:
    d = searcher.doc(a)
    print(d.get_first("id"), d.get_first("body")[:200])
"""


def tantivy_index(beir: Path, where: Path) -> Path:
    """A tantivy index of the BEIR corpus (title + text) on disk at ``where`` (built once)."""
    import json

    import tantivy

    if (where / "meta.json").exists():
        return where
    where.mkdir(parents=True, exist_ok=True)
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("id", stored=True, tokenizer_name="raw")
    sb.add_text_field("body", stored=True, tokenizer_name="en_stem")
    index = tantivy.Index(sb.build(), path=str(where))
    w = index.writer(heap_size=256_000_000, num_threads=1)
    for line in open(beir / "corpus.jsonl", encoding="utf-8"):
        d = json.loads(line)
        w.add_document(tantivy.Document(id=d["_id"], body=(d.get("title", "") + " " + d.get("text", "")).strip()))
    w.commit()
    w.wait_merging_threads()
    return where


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default=".")
    ap.add_argument("--index", required=True, help="an index to query (any pipeline)")
    ap.add_argument("--query", default="microRNA in cancer")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--beir", type=Path, default=None, help="the index's BEIR corpus, for the tantivy row")
    ap.add_argument("--work", type=Path, default=Path("/tmp/compare-commits"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    sides = [checkout(args.before, args.work), checkout(args.after, args.work)]
    commands = {
        "import hybridrag.stores._kernels": [sys.executable, "-c", "import hybridrag.stores._kernels"],
        f"hybridrag query {Path(args.index).name}": [sys.executable, "-m", "hybridrag.cli", "query", args.index,
                                                     args.query],
    }
    peer = None
    if args.beir is not None:
        tv = tantivy_index(args.beir, args.work / f"tantivy-{args.beir.name}")
        peer = [sys.executable, "-c", _TANTIVY_QUERY, str(tv), args.query]
        timed(peer, str(ROOT))   # warm the page cache as the engine's commands are
    for _, code in sides:   # compile / warm each commit's numba cache
        for cmd in commands.values():
            timed(cmd, code)
    got: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.runs):
        for name, cmd in commands.items():
            for short, code in sides:
                got.setdefault((name, short), []).append(timed(cmd, code))
        if peer is not None:
            got.setdefault(("tantivy", ""), []).append(timed(peer, str(ROOT)))
    lines = [f"| command | {sides[0][0]}: median (runs) s | {sides[1][0]}: median (runs) s |", "|---|---|---|"]
    for name in commands:
        cells = []
        for short, _ in sides:
            v = got[(name, short)]
            cells.append(f"{statistics.median(v):.2f} ({', '.join(f'{x:.2f}' for x in v)})")
        lines.append(f"| `{name}` | {cells[0]} | {cells[1]} |")
    if peer is not None:
        v = got[("tantivy", "")]
        lines.append(f"| peer: tantivy 0.27 (open, parse, top 10, print ids and text) | | "
                     f"{statistics.median(v):.2f} ({', '.join(f'{x:.2f}' for x in v)}) |")
    text = "\n".join(lines)
    print(text)
    out = ROOT / "benchmarks" / "results" / f"process-start_{time.strftime('%Y-%m-%d')}_{sides[0][0]}-{sides[1][0]}.md"
    out.write_text(f"# A new process's wait on two commits ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs)\n\n"
                   f"command: {' '.join(sys.argv)}\n\n{text}\n")
    print(f"# raw results: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
