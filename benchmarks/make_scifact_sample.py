"""Build ``hybridrag/data/scifact-sample/``: a small, seeded BEIR-format sample of SciFact.

Picks ``--queries`` test queries (seeded, from ``qrels/test.tsv``), keeps every document
they judge relevant, and fills up to ``--docs`` documents with other corpus documents
(seeded). Files are written in the BEIR layout (``corpus.jsonl``, ``queries.jsonl``,
``qrels/test.tsv`` with its header row; LF line endings), documents in the corpus's own
order. The same source and arguments always give byte-identical files.

    python benchmarks/make_scifact_sample.py --source /path/to/beir/scifact
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from hybridrag.eval.beir import iter_beir_corpus, read_beir_queries, read_qrels

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "beir" / "scifact"
DEFAULT_OUT = REPO / "hybridrag" / "data" / "scifact-sample"


def make_sample(source: Path, out: Path, n_queries: int, n_docs: int, seed: int) -> dict[str, int]:
    """Write the sample; returns counts and total bytes."""
    qrels = read_qrels(source / "qrels" / "test.tsv")
    queries = read_beir_queries(source / "queries.jsonl")
    corpus = list(iter_beir_corpus(source / "corpus.jsonl"))
    rng = random.Random(seed)
    picked = sorted(rng.sample(sorted(qrels, key=int), n_queries), key=int)
    relevant = {d for q in picked for d in qrels[q]}
    others = sorted(doc_id for doc_id, _ in corpus if doc_id not in relevant)
    n_fill = max(0, n_docs - len(relevant))
    keep = relevant | set(rng.sample(others, n_fill))

    (out / "qrels").mkdir(parents=True, exist_ok=True)
    with open(out / "corpus.jsonl", "w", encoding="utf-8", newline="\n") as fh:
        for doc_id, entry in corpus:
            if doc_id in keep:
                fh.write(json.dumps({"_id": doc_id, "title": entry["title"], "text": entry["text"]},
                                    ensure_ascii=False) + "\n")
    with open(out / "queries.jsonl", "w", encoding="utf-8", newline="\n") as fh:
        for qid in picked:
            fh.write(json.dumps({"_id": qid, "text": queries[qid]}, ensure_ascii=False) + "\n")
    with open(out / "qrels" / "test.tsv", "w", encoding="utf-8", newline="\n") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for qid in picked:
            for doc_id, rel in qrels[qid].items():
                fh.write(f"{qid}\t{doc_id}\t{rel}\n")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.name != "README.md")
    return {"queries": len(picked), "relevant_docs": len(relevant), "docs": len(keep), "bytes": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="BEIR scifact folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--docs", type=int, default=250)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    print(make_sample(args.source, args.out, args.queries, args.docs, args.seed))


if __name__ == "__main__":
    main()
