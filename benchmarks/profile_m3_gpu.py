"""Where M3Encoder's time goes on a GPU: tokenizing, the bare forward pass, and the whole
``encode`` (forward + heads + copies to the host + per-text outputs), on a full-size
BGE-M3 architecture with random weights, fp16, 256 texts x 512 tokens (batch 32) and
32 texts x 8192 tokens (batch 4). Best of 3 after one warm-up, CUDA synchronised.

    python benchmarks/profile_m3_gpu.py

Needs a CUDA GPU. Not part of the test suite; docs/BENCHMARKS.md (section 8) quotes it.
"""
import sys, time, tempfile, os
from pathlib import Path
sys.path.insert(0, os.getcwd()); sys.path.insert(0, "tests"); sys.path.insert(0, "benchmarks")
import torch
import bench_encoders as be
from hybridrag.encoders import M3Encoder
from hybridrag.encoders import base

def best(fn, r=3):
    fn(); b = 1e9
    for _ in range(r):
        torch.cuda.synchronize(); t = time.perf_counter(); fn(); torch.cuda.synchronize(); b = min(b, time.perf_counter() - t)
    return b

with tempfile.TemporaryDirectory() as tmp:
    folder = be.build_full_m3(Path(tmp))
    enc = M3Encoder.from_pretrained(folder)
    for length, count, bs in [(512, 256, 32), (8192, 32, 4)]:
        texts = be.texts_of_length(enc.tokenizer, length, count)
        ntok = length * count
        feats = base.tokenize(enc.tokenizer, texts, length, return_token_type_ids=False)
        batches = [base.pad_batch(enc.tokenizer, feats[i:i+bs], "cuda") for i in range(0, count, bs)]
        def fwd():
            with torch.inference_mode():
                for b in batches: enc.model(**b).last_hidden_state
        def full(): enc.encode(texts, max_length=length, batch_size=bs)
        def tok(): base.tokenize(enc.tokenizer, texts, length, return_token_type_ids=False)
        for name, fn in [("tokenize", tok), ("forward", fwd), ("encode", full)]:
            t = best(fn)
            print(f"L={length} {name:10s} {t*1000:8.1f} ms  {ntok/t:10.0f} tok/s")
