"""Where M3Encoder's time goes on a GPU: tokenizing, the bare forward pass, and the whole
``encode`` (forward + heads + copies to the host + per-text outputs), on a full-size
BGE-M3 architecture with random weights, fp16, 256 texts x 512 tokens (batch 32) and
32 texts x 8192 tokens (batch 4). Best of 3 after one warm-up, CUDA synchronised.

    python benchmarks/profile_m3_gpu.py

Needs a CUDA GPU. Not part of the test suite; docs/CHANGELOG-performance.md (section 8) quotes it.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
for p in (HERE.parent, HERE.parent / "tests", HERE):
    sys.path.insert(0, os.fspath(p))

import torch  # noqa: E402

import bench_encoders as be  # noqa: E402
from hybridrag.encoders import M3Encoder, base  # noqa: E402


def best(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best wall time of ``fn`` in seconds, after one warm-up, with the GPU synchronised."""
    fn()
    out = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out = min(out, time.perf_counter() - t)
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        enc = M3Encoder.from_pretrained(be.build_full_m3(Path(tmp)))
        for length, count, bs in [(512, 256, 32), (8192, 32, 4)]:
            texts = be.texts_of_length(enc.tokenizer, length, count)
            feats = base.tokenize(enc.tokenizer, texts, length, return_token_type_ids=False)
            batches = [base.pad_batch(enc.tokenizer, feats[i:i + bs], "cuda") for i in range(0, count, bs)]

            def forward() -> None:
                with torch.inference_mode():
                    for b in batches:
                        enc.model(**b).last_hidden_state

            steps = [("tokenize", lambda: base.tokenize(enc.tokenizer, texts, length, return_token_type_ids=False)),
                     ("forward", forward),
                     ("encode", lambda: enc.encode(texts, max_length=length, batch_size=bs))]
            for name, fn in steps:
                t = best(fn)
                print(f"L={length} {name:10s} {t * 1000:8.1f} ms  {length * count / t:10.0f} tok/s")


if __name__ == "__main__":
    main()
