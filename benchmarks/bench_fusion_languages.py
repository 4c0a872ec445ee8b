"""nDCG@10 per language of BM25 alone, dense alone and each fusion method (issue 26).

For each BEIR-format folder (MLQA per language, SciFact, NFCorpus), an index with the
given pipeline (default ``pipelines/offline.toml``: BM25 + the English-only
all-MiniLM-L6-v2) is built once under ``--work`` (or reused if it is there), the
candidates of every test query are collected once (first stages at depth 300, exact
scores in every mode, as ``hybridrag eval`` does), and each fusion method re-fuses them
with the pipeline's weights (``min-max``: the ``relative`` of before issue 22; re-fusing
is ``hybridrag/eval/fusion_eval.py``, whose runs equal ``hybridrag eval``'s, checked in
``tests/test_index.py``). Also prints the median share
of query words the dense model's vocabulary covers (``planner.query_coverage``) and of
query terms found in the BM25 vocabulary (``planner.term_coverage``).

    python benchmarks/bench_fusion_languages.py --work /tmp/fusion-idx \\
        --mlqa ../shared/data/mlqa --beir ../shared/data/beir/scifact ../shared/data/beir/nfcorpus
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hybridrag.eval import fusion_eval  # noqa: E402
from hybridrag.eval.beir import load_beir  # noqa: E402
from hybridrag.eval.metrics import evaluate  # noqa: E402
from hybridrag.index import HybridIndex  # noqa: E402

METHODS = ("weighted", "relative", "rrf", "adaptive", "coverage")


def minmax_run(cands, weights):
    """The ``relative`` fusion before issue 22 (min-max per mode over the candidates), for comparison."""
    run = {}
    for qc in cands:
        c = qc.cand
        fused = np.zeros(len(c.slots))
        for m, s in c.scores.items():
            span = s.max() - s.min() if len(s) else 0.0
            fused += weights[m] * ((s - s.min()) / span if span > 0 else np.zeros_like(s))
        run[qc.qid] = fusion_eval._doc_run(qc.doc_ids, np.lexsort((c.slots, -fused)))
    return run
LANGS = ("ar", "de", "en", "es", "hi", "vi", "zh")


def ensure_index(work: Path, name: str, beir: Path, pipeline: str) -> Path:
    idx = work / name
    if not (idx / "manifest.json").exists():
        print(f"ingesting {beir} -> {idx}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "hybridrag.cli", "ingest", str(beir / "corpus.jsonl"),
                        "--index", str(idx), "--pipeline", pipeline, "-q"], check=True)
    return idx


def measure(idx_dir: Path, beir: Path) -> dict[str, float]:
    index = HybridIndex.load(idx_dir, verify=False)
    data = load_beir(beir)
    qids = sorted(q for q in data.qrels if q in data.queries)
    qrels = {q: data.qrels[q] for q in qids}
    cands = fusion_eval.collect(index, qids, [data.queries[q] for q in qids])
    weights = index.pipeline.fusion.weights
    nd = lambda run: float(evaluate(run, qrels, ["ndcg@10"])["ndcg@10"])  # noqa: E731
    row = {"queries": len(qids), "bm25": nd(fusion_eval.mode_run(cands, "bm25")),
           "dense": nd(fusion_eval.mode_run(cands, "dense"))}
    row["min-max"] = nd(minmax_run(cands, weights))
    for m in METHODS:
        row[m] = nd(fusion_eval.fused_run(cands, m, weights, rrf_k=index.pipeline.fusion.rrf_k))
    for m in ("dense", "bm25"):
        row[f"cov_{m}"] = float(np.median([qc.coverage[m] for qc in cands]))
    index.close()
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, type=Path, help="folder for the indexes (reused when present)")
    ap.add_argument("--mlqa", type=Path, help="folder with one BEIR folder per language")
    ap.add_argument("--langs", default=",".join(LANGS))
    ap.add_argument("--beir", type=Path, nargs="*", default=[], help="more BEIR folders (SciFact, NFCorpus)")
    ap.add_argument("--pipeline", default=str(ROOT / "pipelines" / "offline.toml"))
    args = ap.parse_args()
    sets: list[tuple[str, Path]] = []
    if args.mlqa:
        sets += [(f"mlqa-{lang}", args.mlqa / lang) for lang in args.langs.split(",")]
    sets += [(p.name, p) for p in args.beir]
    args.work.mkdir(parents=True, exist_ok=True)
    cols = ["bm25", "dense", "min-max", *METHODS]
    print(f"<!-- {time.strftime('%Y-%m-%d %H:%M')} pipeline {args.pipeline} -->")
    print("| set | queries | coverage dense / bm25 (median) | " + " | ".join(cols) + " | adaptive - best single |")
    print("|---|---:|---:|" + "---:|" * (len(cols) + 1))
    for name, folder in sets:
        row = measure(ensure_index(args.work, name, folder, args.pipeline), folder)
        best = max(row["bm25"], row["dense"])
        cells = " | ".join(f"{row[c]:.4f}" for c in cols)
        cov = f"{row['cov_dense']:.2f} / {row['cov_bm25']:.2f}"
        print(f"| {name} | {row['queries']} | {cov} | {cells} | {row['adaptive'] - best:+.4f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
