"""The ``hybridrag`` command line: ingest, query, eval, info, check, rebuild.

Errors a user can cause print one line (``hybridrag: error: ...``) and exit with
status 2, without a traceback. Long work shows a progress bar (chunks/s) on stderr.
Tested in ``tests/test_cli.py`` through the installed entry point.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hybridrag.errors import HybridRAGError

EXIT_USAGE = 2


def _fail(msg: str) -> int:
    print(f"hybridrag: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _parse_filters(items: Sequence[str] | None) -> dict[str, Any] | None:
    if not items:
        return None
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--filter expects KEY=VALUE (VALUE as JSON or text), got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _open_or_create(index_dir: str, pipeline: str | None) -> Any:
    from hybridrag.index import MANIFEST, HybridIndex

    if (Path(index_dir) / MANIFEST).exists():
        idx = HybridIndex.load(index_dir)
        if pipeline is not None:
            from hybridrag.index import _as_pipeline

            wanted = _as_pipeline(pipeline)
            if wanted.to_dict() != idx.pipeline.to_dict():
                raise HybridRAGError(f"index {index_dir!r} was built with pipeline {idx.pipeline.name!r}; "
                                     f"--pipeline {pipeline!r} differs (use a new --index directory)")
        return idx
    return HybridIndex.create(index_dir, pipeline or "offline")


def cmd_ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hybridrag.sources import SkipReport, iter_documents

    for p in args.paths:
        if not os.path.exists(p):
            return _fail(f"no such file or directory: {p!r}")
    idx = _open_or_create(args.index, args.pipeline)
    report = SkipReport()
    t0 = time.perf_counter()
    total_added = total_unchanged = total_chunks = 0
    empty: list[str] = []
    bar = tqdm(unit=" chunks", desc="ingest", disable=args.quiet, dynamic_ncols=True, smoothing=0.1)
    batch: list[Any] = []
    since_commit = 0

    def flush() -> None:
        nonlocal total_added, total_unchanged, total_chunks, since_commit, batch
        if not batch:
            return
        res = idx.upsert(batch, commit=False, batch_size=args.batch_size, progress=bar.update)
        total_added += len(res.added)
        total_unchanged += len(res.unchanged)
        total_chunks += res.chunks
        empty.extend(res.empty)
        since_commit += res.chunks
        batch = []
        if since_commit >= args.commit_every:
            idx.commit()
            since_commit = 0

    try:
        for doc in iter_documents(args.paths, include=args.include or None, exclude=args.exclude or None,
                                  report=report, max_bytes=idx.pipeline.chunking.max_document_bytes,
                                  id_field=args.id_field, text_field=args.text_field,
                                  csv_text_column=args.text_column, csv_id_column=args.id_column):
            batch.append(doc)
            if len(batch) >= args.batch_size:
                flush()
        flush()
        idx.commit()
    finally:
        bar.close()
        idx.close()
    dt = time.perf_counter() - t0
    print(f"ingested {total_added} document(s) ({total_chunks} chunks) into {args.index} in {dt:.1f}s "
          f"({total_chunks / dt if dt > 0 else 0:.0f} chunks/s); {total_unchanged} unchanged, "
          f"{len(empty)} with no text")
    if report.skipped:
        print(f"skipped {len(report.skipped)} file(s)/record(s):")
        for item in report.skipped[:50]:
            print(f"  {item.path}: {item.reason}")
        if len(report.skipped) > 50:
            print(f"  ... and {len(report.skipped) - 50} more")
    return 0


def _print_hits(hits: Sequence[Any], explain: bool) -> None:
    for rank, h in enumerate(hits, 1):
        text = " ".join(h.text.split())
        print(f"{rank:>3}. {h.score:9.4f}  {h.doc_id}  [{h.chunk_id}]")
        print(f"     {text[:200]}{'…' if len(text) > 200 else ''}")
        if explain:
            parts = [f"{m}={v:.4f}" + (f" (#{h.ranks[m]})" if m in h.ranks else "") for m, v in h.scores.items()]
            print("     " + "  ".join(parts))
            if h.weights:
                print("     weights: " + "  ".join(f"{m}={w:.3f}" for m, w in h.weights.items()))


def cmd_query(args: argparse.Namespace) -> int:
    from hybridrag.index import HybridIndex

    idx = HybridIndex.load(args.index, verify=False)
    overrides: dict[str, Any] = {}
    if args.modes:
        overrides["modes"] = args.modes.split(",")
    if args.fusion:
        overrides["fusion"] = args.fusion
    if args.no_rerank:
        overrides["rerank"] = False
    hits = idx.search(args.question, k=args.k, filters=_parse_filters(args.filter), **overrides)
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], ensure_ascii=False, indent=2))
    else:
        _print_hits(hits, args.explain)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from hybridrag.eval.ablation import evaluate_index
    from hybridrag.eval.metrics import results_table
    from hybridrag.index import HybridIndex

    idx = HybridIndex.load(args.index, verify=False)
    rows = evaluate_index(idx, args.beir, split=args.split, max_queries=args.max_queries,
                          per_mode=not args.fused_only, batch_size=args.batch_size, progress=not args.quiet)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(results_table(rows))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from hybridrag.index import HybridIndex

    idx = HybridIndex.load(args.index, verify=False)
    st = idx.stats()
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print(f"index      {st['path']}")
    print(f"pipeline   {st['pipeline']}   modes: {', '.join(st['modes'])}")
    print(f"documents  {st['documents']}   chunks: {st['chunks']}   generation: {st['generation']}")
    print(f"format     {st['format_version']} (written by hybridrag {st['library_version']})")
    for role, name in st["models"].items():
        print(f"{role:<10} {name}")
    for store, n in st["bytes"].items():
        print(f"  {store:<9} {n / 1e6:10.2f} MB")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from hybridrag.index import check_index

    problems = check_index(args.index)
    if problems:
        for p in problems:
            print(f"PROBLEM: {p}")
        return 1
    print(f"{args.index}: ok")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    from hybridrag.index import HybridIndex

    idx = HybridIndex.rebuild(args.index, pipeline=args.pipeline)
    try:
        stats = idx.stats()
    finally:
        idx.close()
    print(f"{args.index}: rebuilt {stats['chunks']} chunks of {stats['documents']} document(s) "
          f"from the docstore (generation {stats['generation']})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from hybridrag import __version__

    p = argparse.ArgumentParser(prog="hybridrag", description="Hybrid retrieval: ingest, query, evaluate.")
    p.add_argument("--version", action="version", version=f"hybridrag {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("ingest", help="add files/folders (.txt .md .html .pdf .json .jsonl .csv) to an index")
    s.add_argument("paths", nargs="+", metavar="PATH")
    s.add_argument("--index", required=True, metavar="DIR")
    s.add_argument("--pipeline", default=None,
                   help="pipeline TOML (or a shipped name: offline, m3, bm25-dense) for a new index; default offline")
    s.add_argument("--include", action="append", metavar="GLOB")
    s.add_argument("--exclude", action="append", metavar="GLOB")
    s.add_argument("--text-field", default="text", metavar="KEY", help="text key of .json/.jsonl records")
    s.add_argument("--id-field", default="id", metavar="KEY", help="id key of .json/.jsonl records (BEIR _id always works)")
    s.add_argument("--text-column", default=None, metavar="COL", help=".csv column holding the text (default: --text-field)")
    s.add_argument("--id-column", default=None, metavar="COL", help=".csv column holding the id (default: row number)")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--commit-every", type=int, default=20000, metavar="CHUNKS",
                   help="commit (make visible, crash-safe) every this many chunks")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("query", help="search an index")
    s.add_argument("index", metavar="DIR")
    s.add_argument("question")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--explain", action="store_true", help="show per-mode scores and first-stage ranks")
    s.add_argument("--json", action="store_true")
    s.add_argument("--filter", action="append", metavar="KEY=VALUE")
    s.add_argument("--modes", help="comma-separated subset of the index's modes")
    s.add_argument("--fusion", choices=["weighted", "relative", "rrf", "adaptive"])
    s.add_argument("--no-rerank", action="store_true")
    s.set_defaults(func=cmd_query)

    s = sub.add_parser("eval", help="nDCG@10, Recall@100, MRR@10 on a BEIR folder, per mode and fused")
    s.add_argument("index", metavar="DIR")
    s.add_argument("--beir", required=True, metavar="FOLDER")
    s.add_argument("--split", default="test")
    s.add_argument("--max-queries", type=int, default=None)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--fused-only", action="store_true")
    s.add_argument("--json", action="store_true")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("info", help="what an index holds")
    s.add_argument("index", metavar="DIR")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("check", help="verify an index: checksums, docstore integrity, stores agree")
    s.add_argument("index", metavar="DIR")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("rebuild", help="recover damaged store files by re-encoding the docstore's chunks")
    s.add_argument("index", metavar="DIR")
    s.add_argument("--pipeline", default=None,
                   help="the index's pipeline, needed only when its manifest is lost or corrupt")
    s.set_defaults(func=cmd_rebuild)
    return p


def quiet_model_loading() -> None:
    """Command-line runs only: keep transformers' load reports and hub chatter off the terminal."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not os.environ.get("HYBRIDRAG_DEBUG"):
        quiet_model_loading()
    try:
        return int(args.func(args))
    except (HybridRAGError, ValueError, TypeError, FileNotFoundError, PermissionError, ImportError) as e:
        if os.environ.get("HYBRIDRAG_DEBUG"):
            raise
        return _fail(str(e))
    except KeyboardInterrupt:
        return _fail("interrupted")


if __name__ == "__main__":
    sys.exit(main())
