"""The ``hybridrag`` command line: ingest, query, eval, info, check, rebuild, serve.

Errors a user can cause print one line (``hybridrag: error: ...``) and exit with
status 2, without a traceback; a write the system refuses (the disk is full:
:class:`hybridrag.errors.DiskFullError`, any :class:`~hybridrag.errors.IndexWriteError`) prints
one line saying the last commit is intact and exits with status 1; an interrupt (SIGINT, and SIGTERM during ``ingest``,
which first commits what it processed) exits with 130. Long work shows a progress bar
(chunks/s) on stderr.
Tested in ``tests/test_cli.py`` through the installed entry point.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hybridrag.errors import HybridRAGError, IndexFormatError, IndexWriteError

EXIT_FAILURE = 1  # the system refused a write (disk full); the index keeps its last commit
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


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


def _open_or_create(index_dir: str, pipeline: str | None, _again: bool = True) -> Any:
    from hybridrag.index import MANIFEST, HybridIndex, _as_pipeline
    from hybridrag.storage import opening

    if (Path(index_dir) / MANIFEST).exists():
        idx = HybridIndex.load(index_dir)
        if pipeline is not None:
            from hybridrag.storage.versions import search_differences

            wanted = _as_pipeline(pipeline)
            diffs = search_differences(idx.pipeline, wanted, idx.pipeline_versions())
            if diffs:
                if idx.docstore.count_documents() == 0:
                    # Nothing would be lost: an index left empty (e.g. by a run whose pipeline
                    # was then fixed) is made again with the pipeline asked for.
                    old = idx.pipeline.name
                    idx.close()
                    print(f"hybridrag: index {index_dir!r} holds no documents: re-creating it with pipeline "
                          f"{wanted.name!r} (was {old!r})", file=sys.stderr)
                    # (only while it is still empty once create holds the write lock)
                    return opening.create(HybridIndex, index_dir, wanted, overwrite=True, only_if_empty=True)
                idx.close()
                diff = "; ".join(diffs)
                raise HybridRAGError(f"index {index_dir!r} was built with pipeline {idx.pipeline.name!r}; "
                                     f"--pipeline {pipeline!r} differs in {diff}. Leave out --pipeline to "
                                     "add to the index with its own pipeline, use a new --index directory, "
                                     f"or remove this one first: rm -r {index_dir!r}")
        return idx
    try:
        return HybridIndex.create(index_dir, pipeline or "offline")
    except IndexFormatError:
        if _again and (Path(index_dir) / MANIFEST).exists():   # another ingest created it meanwhile: add to it
            return _open_or_create(index_dir, pipeline, _again=False)
        raise


# Skips that mean a record or document was refused (what --strict stops at), as opposed
# to files that are not documents at all (binary, unsupported, empty, excluded...).
_RECORD_REASONS = ("bad json", "bad record", "bad csv", "duplicate id", "too large")


def _read_from_another_file(idx: Any, batch: Sequence[Any]) -> dict[str, tuple[str, str]]:
    """``doc id -> (its file now, the file its indexed version was read from)`` for the documents
    of ``batch`` whose id the index holds from another file (``root``/``source`` of the metadata):
    an ingest of ``P`` and then of ``Q``, both with a ``notes.txt``, gives one id to both."""
    paths = {doc.id: _doc_location(doc)[0] for doc in batch if "root" in doc.metadata}
    out = {}
    for doc_id, meta in idx.docstore.first_metadata(paths).items():
        root, source = meta.get("root"), meta.get("source")
        if isinstance(root, str) and isinstance(source, str):
            old = str(Path(root) / source)
            if os.path.abspath(old) != os.path.abspath(paths[doc_id]):
                out[doc_id] = (paths[doc_id], old)
    return out


def _doc_location(doc: Any) -> tuple[str, int | None]:
    """The file (and line/row) a document from ``iter_documents`` was read from."""
    meta = doc.metadata
    path = str(Path(meta["root"]) / meta["source"]) if "root" in meta and "source" in meta else doc.id
    line = meta.get("position") if meta.get("format") in ("jsonl", "json", "csv") else None
    return path, line if isinstance(line, int) else None


def _no_longer_read(idx: Any, roots: Sequence[str], read: dict[str, set[str]], report: Any) -> list[str]:
    """Ids of indexed documents read from a file under one of ``roots`` (folders) that this run
    (which walked those folders whole) did not read again (``--prune``; their metadata
    ``root``/``source`` name the file): the file is gone; it now yields no document (empty,
    binary, a link that leads nowhere); or the document was a record (JSON, JSON lines, CSV
    row) of a file read again without it. A file this run could not read, or one with a bad
    record, keeps its documents (``read``: file -> ids of the documents this run read from it)."""
    import numpy as np

    from hybridrag import sources

    no_document = {sources.EMPTY, sources.BINARY, sources.SYMLINK_LOOP}
    troubled: set[str] = set()   # files with a skip of their own or of a record: their documents stay
    empty: set[str] = set()      # files that yield no document now
    for item in report.skipped:
        path = os.path.abspath(item.path)
        if item.line is None and (item.reason in no_document or item.detail == "broken symlink"):
            empty.add(path)
        else:
            troubled.add(path)
    empty -= troubled
    ds = idx.docstore
    size = ds.next_slot()
    gone: set[str] = set()
    for root in roots:
        r = os.path.abspath(root)
        ancestors = [r, *map(str, Path(r).parents)]
        mask = ds.filter_mask({"root": {"$in": ancestors}}, size)
        mask |= ds.filter_mask({"root": {"$gte": r + "/", "$lt": r + "0"}}, size)  # roots below r
        slots = np.flatnonzero(mask)
        for start in range(0, len(slots), 1000):
            for row in ds.get(slots[start:start + 1000]):
                meta = row["metadata"]
                source = meta.get("source")
                doc_id = row["doc_id"]
                if doc_id in gone or not isinstance(source, str):
                    continue
                path = os.path.abspath(os.path.join(meta["root"], source))
                if not (path == r or path.startswith(r + os.sep)):
                    continue
                if not os.path.lexists(path) or (path in empty and path not in read):
                    gone.add(doc_id)
                elif meta.get("format") in ("jsonl", "json", "csv") and path in read and path not in troubled \
                        and doc_id not in read[path]:
                    gone.add(doc_id)   # a record no longer in its file
    return sorted(gone)


class _Interrupt:
    """SIGINT/SIGTERM during an ingest: the first asks the run to stop after the batch in
    hand (then what was processed is committed); a second stops at once (KeyboardInterrupt:
    the uncommitted work is rolled back, what was committed stays)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_Interrupt":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print("\nhybridrag: interrupted: finishing the current batch and committing "
              "(interrupt again to stop at once and keep only what was committed)", file=sys.stderr)


def cmd_ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hybridrag.sources import SkipReport, iter_documents

    for p in args.paths:
        if not os.path.exists(p):
            if os.path.lexists(p):
                return _fail(f"{p!r} is a symbolic link that leads nowhere (its target is gone, or links loop)")
            return _fail(f"no such file or directory: {p!r}")
    if args.batch_size < 1 or args.commit_every < 1 or args.commit_seconds < 0:
        return _fail("--batch-size and --commit-every must be >= 1, --commit-seconds >= 0")
    idx = _open_or_create(args.index, args.pipeline)
    pool = contextlib.ExitStack()
    if args.encode_devices:
        try:
            pool.enter_context(idx.encoding_pool([d.strip() for d in args.encode_devices.split(",")]))
        except BaseException:
            idx.close()
            raise
    report = SkipReport()
    t0 = time.perf_counter()
    total_added = total_unchanged = total_chunks = 0
    kept_docs = kept_chunks = 0  # committed by this run
    empty: list[str] = []
    pruned: list[str] = []
    bar = tqdm(unit=" chunks", desc="ingest", disable=args.quiet, dynamic_ncols=True, smoothing=0.1)
    batch: list[Any] = []
    since_commit = 0
    last_commit = time.monotonic()
    commit_cost = 0.0

    def commit() -> None:
        nonlocal since_commit, last_commit, commit_cost, kept_docs, kept_chunks
        t = time.monotonic()
        idx.commit()
        commit_cost = time.monotonic() - t
        last_commit = time.monotonic()
        since_commit = 0
        kept_docs, kept_chunks = total_added, total_chunks

    def flush() -> None:
        nonlocal total_added, total_unchanged, total_chunks, since_commit, batch
        if not batch:
            return
        elsewhere = _read_from_another_file(idx, batch)
        res = idx.upsert(batch, commit=False, batch_size=args.batch_size, progress=bar.update,
                         errors="raise" if args.strict else "skip")
        for doc_id in elsewhere.keys() & set(res.added):
            new_path, old_path = elsewhere[doc_id]
            report.warn(new_path, "replaced a document read from another file",
                        f"{doc_id!r} was read from {old_path}: give the same folders on every run, or several "
                        "folders in one run (their ids then start with each folder's name)")
        for pos, _, reason in res.failed:
            path, line = _doc_location(batch[pos])
            report.add(path, "refused by the index", reason, line)
        total_added += len(res.added)
        total_unchanged += len(res.unchanged)
        total_chunks += res.chunks
        empty.extend(res.empty)
        since_commit += res.chunks
        batch = []
        if args.strict:
            return  # all or nothing: one commit at the end
        # Commit by size, and by time so that a crash loses seconds of work; never more
        # often than 10x the last commit's own duration (a commit rewrites store files).
        due = args.commit_seconds and time.monotonic() - last_commit >= max(args.commit_seconds, 10 * commit_cost)
        if since_commit >= args.commit_every or (due and since_commit):
            commit()

    def strict_check(seen: int) -> None:
        for item in report.skipped[seen:]:
            if item.reason in _RECORD_REASONS:
                raise HybridRAGError(f"--strict: {item}; nothing of this run was committed")

    interrupted: _Interrupt | None = None
    aborted = False
    read: dict[str, set[str]] | None = {} if args.prune else None   # file -> ids read from it (--prune)
    n_read = 0   # documents the inputs gave
    try:
        with _Interrupt() as interrupted:
            seen = 0
            for doc in iter_documents(args.paths, include=args.include or None, exclude=args.exclude or None,
                                      report=report, max_bytes=idx.pipeline.chunking.max_document_bytes,
                                      id_field=args.id_field, text_field=args.text_field,
                                      csv_text_column=args.text_column, csv_id_column=args.id_column):
                if args.strict:
                    strict_check(seen)
                    seen = len(report.skipped)
                batch.append(doc)
                n_read += 1
                if read is not None:
                    read.setdefault(os.path.abspath(_doc_location(doc)[0]), set()).add(doc.id)
                if len(batch) >= args.batch_size:
                    flush()
                if interrupted.signum is not None:
                    break
            if args.strict:
                strict_check(seen)
            flush()
            if args.prune and interrupted.signum is None and read is not None:
                pruned = _no_longer_read(idx, [p for p in args.paths if os.path.isdir(p)], read, report)
                if pruned:
                    idx.delete(pruned, commit=False)
            commit()
    except KeyboardInterrupt:
        aborted = True  # a second interrupt: the write in hand was rolled back
    finally:
        bar.close()
        pool.close()
        idx.close()
    if aborted:
        print(f"interrupted: kept {kept_docs} document(s) ({kept_chunks} chunks) committed before the "
              "interrupt; rerun to continue (unchanged documents are skipped)")
        return EXIT_INTERRUPTED
    dt = time.perf_counter() - t0
    if interrupted is not None and interrupted.signum is not None:
        print(f"interrupted: kept {kept_docs} document(s) ({kept_chunks} chunks) committed in {dt:.1f}s; "
              "rerun to continue (unchanged documents are skipped)")
    else:
        print(f"ingested {total_added} document(s) ({total_chunks} chunks) into {args.index} in {dt:.1f}s "
              f"({total_chunks / dt if dt > 0 else 0:.0f} chunks/s); {total_unchanged} unchanged, "
              f"{len(empty)} with no text" + (f", {len(pruned)} pruned" if args.prune else ""))
    for title, items in ((f"pruned {len(pruned)} document(s) no longer in their files", pruned),
                         (f"skipped {len(report.skipped)} file(s)/record(s)", report.skipped),
                         (f"warnings for {len(report.warnings)} file(s)/record(s)", report.warnings)):
        if items:
            print(f"{title}:")
            for item in items[:50]:
                print(f"  {item}")
            if len(items) > 50:
                print(f"  ... and {len(items) - 50} more")
    if interrupted is not None and interrupted.signum is not None:
        return EXIT_INTERRUPTED
    if n_read == 0 and report.skipped:   # a script sees that nothing could be read
        return _fail(f"no document could be read from {', '.join(map(repr, args.paths))}: every input was "
                     "skipped (listed above)")
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

    idx = HybridIndex.load(args.index, verify=False, runtime=args.runtime)
    overrides: dict[str, Any] = {}
    if args.modes:
        overrides["modes"] = args.modes.split(",")
    if args.fusion:
        overrides["fusion"] = args.fusion
    if args.no_rerank:
        overrides["rerank"] = False
    if args.budget_ms is not None:
        overrides["budget_ms"] = args.budget_ms
    hits = idx.search(args.question, k=args.k, filters=_parse_filters(args.filter), **overrides)
    for note in hits.notes:   # why hits are missing (no query terms for a mode, a filter key no document has)
        print(f"note: {note}", file=sys.stderr)
    if args.json and args.explain:   # the HTTP API's body: hits, notes and what a budget chose
        print(json.dumps(hits.to_dict(), ensure_ascii=False, indent=2))
    elif args.json:
        print(json.dumps([h.to_dict() for h in hits], ensure_ascii=False, indent=2))
    else:
        if args.explain and "bm25" in idx.pipeline.modes:
            print(_bm25_terms_line(idx, args.question))
        _print_hits(hits, args.explain)
        if args.explain and hits.timing is not None:
            print(_budget_line(hits.timing))
    return 0


def _bm25_terms_line(idx: Any, question: str) -> str:
    """The query's BM25 terms as the index's analyser makes them (``query --explain``), those the
    index has no document with marked: what to look at when a word finds nothing."""
    terms = idx.bm25.analyzer.tokenize([question])[0]
    vocab = idx.bm25.vocabulary
    prefetch = getattr(vocab, "prefetch", None)
    if prefetch is not None:   # a query node's vocabulary in Milvus: one lookup
        prefetch(set(terms))
    shown = [t if t in vocab else f"{t} (in no document)" for t in terms]
    return "bm25 terms: " + (", ".join(shown) if shown else "(none: no word the analyser keeps)")


def _ms(v: float) -> str:
    """Milliseconds for a person: ``1,500``, ``0.25``, ``1e+300``."""
    return f"{v:,.0f}" if 1 <= v < 1e9 else f"{v:.3g}"


def _budget_line(t: dict[str, Any]) -> str:
    """What a time budget chose and spent, in one line (``query --explain``)."""
    parts = [f"budget {_ms(t['budget_ms'])} ms"]
    if "retrieval_ms" not in t:
        parts.append("no rerank in this call (rerank off): the budget had nothing to choose")
    else:
        parts.append(f"retrieval {t['retrieval_ms']:,.1f} ms")
        if t.get("rerank_depth"):
            parts.append(f"rerank top {t['rerank_depth']} at <= {t['rerank_max_length']} tokens: predicted "
                         f"{t['predicted_rerank_ms']:,.1f} ms, took {t.get('rerank_ms', 0):,.1f} ms")
        else:
            parts.append("no rerank fits")
        if "cost_model_ms" in t:
            parts.append(f"cost model measured {t['cost_model_ms']:,.0f} ms")
    if "models_loaded_ms" in t:
        parts.append(f"models loaded {t['models_loaded_ms']:,.0f} ms (not counted)")
    parts.append(f"total {t['total_ms']:,.1f} ms")
    return "budget: " + "; ".join(parts[1:]) + f" (of {_ms(t['budget_ms'])} ms)"


def cmd_eval(args: argparse.Namespace) -> int:
    from hybridrag.eval.ablation import evaluate_index
    from hybridrag.eval.metrics import results_table
    from hybridrag.index import HybridIndex

    idx = HybridIndex.load(args.index, verify=False, runtime=args.runtime)
    rows = evaluate_index(idx, args.beir, split=args.split, max_queries=args.max_queries,
                          per_mode=not args.fused_only, batch_size=args.batch_size, progress=not args.quiet)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(results_table(rows))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from hybridrag.eval.tune import tune
    from hybridrag.index import HybridIndex

    idx = HybridIndex.load(args.index, verify=False, runtime=args.runtime)
    try:
        report = tune(idx, args.beir, split=args.split, folds=args.folds, seed=args.seed,
                      max_queries=args.max_queries, store=not args.dry_run, force=args.force,
                      progress=not args.quiet, batch_size=args.batch_size)
    finally:
        idx.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(f"{report.queries} queries, {len(report.folds)} folds, {report.settings_scored} settings scored "
          f"(nDCG@10 of the fused ranking; each fold's setting chosen on the other folds)")
    print(report.table(), end="")
    print(f"held out: {report.after - report.before:+.4f} nDCG@10, standard error {report.gain_se:.4f} (stored "
          "only when the gain is above twice its standard error)")
    print(f"active:   {report.baseline.describe()}")
    print(f"tuned:    {report.best.describe()}   (chosen on all queries; nDCG@10 there {report.best_score:.4f})")
    for note in report.notes:
        print(f"note:     {note}")
    if report.version is not None:
        print(f"stored as pipeline version {report.version}, now active; the previous one stays: "
              f"hybridrag pipeline {args.index} --use N")
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from hybridrag.index import HybridIndex

    idx = HybridIndex.load(args.index, verify=False)
    try:
        if args.use is not None:
            idx.use_pipeline_version(args.use)
        versions = idx.pipeline_versions()
    finally:
        idx.close()
    if args.json:
        print(json.dumps([dict(vars(v)) for v in versions], indent=2))
        return 0
    for v in versions:
        s = v.settings
        depth = " ".join(f"{k.split('.')[0]}={d}" for k, d in s.items() if k.endswith(".depth"))
        weights = " ".join(f"{m}={w:g}" for m, w in s["fusion.weights"].items())
        rerank = f"rerank {s['rerank.k']}" if s["rerank.enabled"] else "no rerank"
        print(f"{'*' if v.active else ' '} {v.version:>3}  {v.created}  {s['fusion.method']} ({weights})"
              + (f" rrf_k={s['fusion.rrf_k']}" if s["fusion.method"] == "rrf" else "")
              + f"; depth {depth}; {rerank}" + (f"   {v.note}" if v.note else ""))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from hybridrag.index import HybridIndex

    idx = HybridIndex.load(args.index, verify=False)
    st = idx.stats()
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print(f"index      {st['path']}")
    print(f"pipeline   {st['pipeline']} (version {st['pipeline_version']}; hybridrag pipeline lists them)   "
          f"modes: {', '.join(st['modes'])}")
    print(f"documents  {st['documents']}   chunks: {st['chunks']}   generation: {st['generation']}")
    print(f"format     {st['format_version']} (written by hybridrag {st['library_version']})")
    for role, name in st["models"].items():
        print(f"{role:<10} {name}")
    segs = st["segments"]
    print(f"segments   {len(segs)}   deleted rows: {sum(s['deleted'] for s in segs)}"
          + ("   (hybridrag optimize merges them)" if len(segs) > 1 and idx._attached is None else ""))
    for store, n in st["bytes"].items():
        if store in st["milvus"]:
            continue
        print(f"  {store:<9} {n / 1e6:10.2f} MB")
    for mode, d in st["milvus"].items():
        size = "" if d["vector_bytes"] is None else f", {d['vector_bytes'] / 1e6:.2f} MB of vectors"
        if d.get("disk_bytes") is not None:   # Milvus Lite: the collections' files
            size += f", {d['disk_bytes'] / 1e6:.2f} MB on disk"
        print(f"  {mode:<9} in Milvus ({d['where']}): collection {d['collection']}, {d['rows']} rows "
              f"({d['rows_stored']} stored{size})")
        if "terms_collection" in d:   # BM25 in Milvus: each term's df per commit
            print(f"  {'':<9} terms: collection {d['terms_collection']}, {d['terms_stored']} term versions, "
                  f"average length {d['avgdl']:.1f} (reference {d['avgdl_ref']:.1f})")
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


def cmd_optimize(args: argparse.Namespace) -> int:
    from hybridrag.index import HybridIndex

    idx = HybridIndex.load(args.index)
    try:
        before = idx.stats()["segments"]
        idx.optimize()
        after = idx.stats()["segments"]
    finally:
        idx.close()
    dead = sum(s["deleted"] for s in before)
    print(f"{args.index}: {len(before)} segment{'s' * (len(before) != 1)} ({dead} deleted rows) merged into "
          f"{len(after)} segment{'s' * (len(after) != 1)}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hybridrag.index import HybridIndex
    from hybridrag.storage.manifest import read_manifest

    m = read_manifest(Path(args.src), missing_ok=True)   # none in a query node's directory
    total = int(m["counts"]["chunks"]) if m is not None else None
    with tqdm(total=total, unit=" chunks", desc="migrate", disable=args.quiet, dynamic_ncols=True) as bar:
        idx = HybridIndex.migrate(args.src, args.dst, to=args.to, milvus_uri=args.milvus_uri,
                                  collection=args.collection, progress=bar.update, colbert=args.colbert,
                                  whole_index=args.whole_index)
    try:
        stats = idx.stats()
    finally:
        idx.close()
    names = {"dense": "dense vectors", "sparse": "sparse weights", "bm25": "BM25", "colbert": "ColBERT tokens",
             "docs": "text, metadata and ids"}
    moved = [names[mode] for mode in ("docs", "dense", "sparse", "bm25", "colbert")
             if (mode in stats["milvus"]) == (args.to == "milvus") and (mode == "docs" or mode in stats["modes"])]
    where = "Milvus" if args.to == "milvus" else "local stores"
    print(f"{args.dst}: {stats['chunks']} chunks of {stats['documents']} document(s) from {args.src}, "
          f"{', '.join(moved)} in {where}; nothing re-encoded, {args.src} unchanged")
    return 0


def cmd_attach(args: argparse.Namespace) -> int:
    """``attach`` (a query node) and ``take-over`` (a writer in place of a lost one)."""
    from hybridrag.index import HybridIndex

    writer = args.func is cmd_take_over
    opened = HybridIndex.take_over if writer else HybridIndex.attach
    idx = opened(args.index, collection=args.collection, milvus_uri=args.milvus_uri)
    try:
        st = idx.stats()
    finally:
        idx.close()
    what = "the writer" if writer else "query node"
    print(f"{args.index}: {what} of {args.collection!r} at generation {st['generation']} ({st['chunks']} chunks "
          f"of {st['documents']} document(s)); "
          + ("nothing copied or re-encoded, the lost writer's directory no longer writes it. Load it"
             if writer else "serve it, search it or load it")
          + " with HybridIndex.load, giving the Milvus URI each time (--milvus-uri is not stored)")
    return 0


def cmd_take_over(args: argparse.Namespace) -> int:
    return cmd_attach(args)


def cmd_milvus_gc(args: argparse.Namespace) -> int:
    from hybridrag.index import HybridIndex
    from hybridrag.storage.commit import drop_stray_collections

    idx = HybridIndex.load(args.index, verify=False)
    try:
        strays = drop_stray_collections(idx, committed=args.committed, dry_run=args.dry_run)
    finally:
        idx.close()
    for s in strays:
        state = "never committed" if s["committed"] is None else f"committed generation {s['committed']}"
        action = "dropped" if s["dropped"] else "kept" + (
            " (--dry-run)" if args.dry_run else "" if s["committed"] is None else " (pass --committed to drop it)")
        print(f"{s['name']}: {s['rows']} rows, {state}: {action}")
    print(f"{args.index}: {len(strays)} stray Milvus collection{'s' * (len(strays) != 1)}, "
          f"{sum(s['dropped'] for s in strays)} dropped")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from hybridrag.server import run   # FastAPI/uvicorn are imported here only (hybridrag[serve])
    from hybridrag.server.config import BatchConfig, Limits

    limits = Limits(max_body_bytes=args.max_body_bytes, max_k=args.max_k, max_depth=args.max_depth,
                    max_queries=args.max_queries, max_documents=args.max_documents, max_queue=args.max_queue,
                    max_query_chars=args.max_query_chars)
    for name, value in vars(limits).items():
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    run(args.index, host=args.host, port=args.port, writable=args.writable, api_key=args.api_key,
        limits=limits, batching=BatchConfig(wait_ms=args.batch_wait_ms, max_batch=args.max_batch),
        reload_interval_ms=args.reload_ms, log_level=args.log_level, access_log=args.access_log,
        runtime=args.runtime)
    return 0


_RUNTIME_HELP = ("run the encoder and reranker in torch or ONNX Runtime (CPU; pip install 'hybridrag[onnx]'; "
                 "exported once, kept in $HYBRIDRAG_ONNX_CACHE, else ~/.cache/hybridrag/onnx); default: the "
                 "pipeline's runtime")


#: Commands that open an existing index and take ``--milvus-uri`` for a Milvus-backed one
#: (``migrate``, ``attach`` and ``take-over`` take it as an argument of their own).
_OPENS_AN_INDEX = ("ingest", "query", "eval", "tune", "pipeline", "info", "check", "rebuild", "optimize",
                   "milvus-gc", "serve")


@contextlib.contextmanager
def _milvus_uri_from(args: argparse.Namespace) -> Iterator[None]:
    """``--milvus-uri`` of a command in :data:`_OPENS_AN_INDEX` is ``$HYBRIDRAG_MILVUS_URI`` while it
    runs (every load the command makes, a server's reloads included, reads it there); restored after,
    so that ``main`` called in a process changes nothing that outlives it."""
    uri = getattr(args, "index_milvus_uri", None)
    if uri is None:
        yield
        return
    from hybridrag.stores.milvus import URI_ENV   # (only a Milvus user pays for this import)

    old = os.environ.get(URI_ENV)
    os.environ[URI_ENV] = uri
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(URI_ENV, None)
        else:
            os.environ[URI_ENV] = old


def build_parser() -> argparse.ArgumentParser:
    from hybridrag import __version__

    p = argparse.ArgumentParser(prog="hybridrag", description="Hybrid retrieval: ingest, query, evaluate.")
    p.add_argument("--version", action="version", version=f"hybridrag {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "ingest", help="add files/folders (.txt .md .html .pdf .json .jsonl .csv) to an index",
        description="Add files and folders to an index (created if missing). A bad file or record is "
                    "skipped and reported with its file and line; the rest is indexed. Document ids: "
                    "the path relative to the folder (record ids from --id-field); with several PATHs, "
                    "paths are prefixed with each folder's name (or as many parent names as make it "
                    "unique: a/docs, b/docs), so give the same PATHs on every run. Ctrl-C (or SIGTERM) "
                    "commits what was processed and exits with status 130; a rerun skips unchanged "
                    "documents.")
    s.add_argument("paths", nargs="+", metavar="PATH")
    s.add_argument("--index", required=True, metavar="DIR")
    s.add_argument("--pipeline", default=None,
                   help="pipeline TOML (or a shipped name: offline, m3, bm25-dense, milvus) for a new index; default offline")
    s.add_argument("--include", action="append", metavar="GLOB")
    s.add_argument("--exclude", action="append", metavar="GLOB")
    s.add_argument("--text-field", default="text", metavar="KEY", help="text key of .json/.jsonl records")
    s.add_argument("--id-field", default="id", metavar="KEY", help="id key of .json/.jsonl records (BEIR _id always works)")
    s.add_argument("--text-column", default=None, metavar="COL", help=".csv column holding the text (default: --text-field)")
    s.add_argument("--id-column", default=None, metavar="COL", help=".csv column holding the id (default: row number)")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--encode-devices", default=None, metavar="DEVICES",
                   help="encode in one process per device, e.g. cuda:0,cuda:1 or cpu,cpu (one writer; "
                        "each process loads the model)")
    s.add_argument("--commit-every", type=int, default=20000, metavar="CHUNKS",
                   help="commit (make visible, crash-safe) every this many chunks")
    s.add_argument("--commit-seconds", type=float, default=30.0, metavar="S",
                   help="also commit after this many seconds of work (at least 10x the last commit's "
                        "duration), so a crash loses at most about that much; 0: by chunks only")
    s.add_argument("--strict", action="store_true",
                   help="all or nothing: stop at the first bad record or refused document (exit 2) and "
                        "commit nothing of this run")
    s.add_argument("--prune", action="store_true",
                   help="sync: also delete indexed documents from files under the given folders that are gone, "
                        "yield no document now (empty, binary), or no longer hold the record")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("query", help="search an index")
    s.add_argument("index", metavar="DIR")
    s.add_argument("question")
    s.add_argument("-k", type=int, default=10, help="hits to return (default 10)")
    s.add_argument("--explain", action="store_true",
                   help="show per-mode scores, first-stage ranks, fusion weights and what a time budget chose")
    s.add_argument("--json", action="store_true",
                   help="print the hits as a JSON list; with --explain an object like the HTTP API's: "
                        "hits, notes and (with a budget) timing")
    s.add_argument("--filter", action="append", metavar="KEY=VALUE")
    s.add_argument("--modes", help="comma-separated subset of the index's modes")
    s.add_argument("--fusion", choices=["weighted", "relative", "rrf", "adaptive", "coverage"])
    s.add_argument("--no-rerank", action="store_true")
    s.add_argument("--budget-ms", type=float, default=None,
                   help="time budget of the call: rerank as deep as the measured cost allows (0: none; "
                        "default: the pipeline's rerank.budget_ms)")
    s.add_argument("--runtime", choices=["torch", "onnx"], default=None, help=_RUNTIME_HELP)
    s.set_defaults(func=cmd_query)

    for name, func, help_, beir_help in (
            ("eval", cmd_eval, "nDCG@10, Recall@100, MRR@10 on a BEIR folder, per mode and fused",
             "corpus.jsonl, queries.jsonl and qrels/SPLIT.tsv (BEIR format)"),
            ("tune", cmd_tune, "choose fusion method, weights and depths from judged queries (k-fold "
             "cross-validation) and store them as a new pipeline version",
             "queries.jsonl and qrels/SPLIT.tsv (BEIR format; at least 20 judged queries; no corpus "
             "needed)")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("index", metavar="DIR")
        s.add_argument("--beir", required=True, metavar="FOLDER", help=beir_help)
        s.add_argument("--split", default="test")
        s.add_argument("--max-queries", type=int, default=None)
        s.add_argument("--batch-size", type=int, default=64)
        s.add_argument("--json", action="store_true")
        s.add_argument("-q", "--quiet", action="store_true")
        s.add_argument("--runtime", choices=["torch", "onnx"], default=None,
                       help=_RUNTIME_HELP + " (eval --runtime onnx: what the CPU path costs in quality on your data)")
        s.set_defaults(func=func)
        if name == "eval":
            s.add_argument("--fused-only", action="store_true")
        else:
            s.add_argument("--folds", type=int, default=5)
            s.add_argument("--seed", type=int, default=0, help="how the queries are dealt into folds")
            s.add_argument("--dry-run", action="store_true", help="report only; store nothing")
            s.add_argument("--force", action="store_true",
                           help="store the tuned setting even if its held-out gain is below twice its standard error")

    s = sub.add_parser("pipeline", help="list the versions of an index's pipeline (search settings); "
                                        "--use N makes one active")
    s.add_argument("index", metavar="DIR")
    s.add_argument("--use", type=int, default=None, metavar="N", help="make version N the active one (a commit)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_pipeline)

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

    s = sub.add_parser("optimize", help="merge every segment into one, dropping deleted rows")
    s.add_argument("index", metavar="DIR")
    s.set_defaults(func=cmd_optimize)

    s = sub.add_parser("migrate", help="copy an index into a new directory with its dense and sparse vectors "
                                       "moved to Milvus (or back to local stores), re-encoding nothing")
    s.add_argument("src", metavar="SRC")
    s.add_argument("dst", metavar="DST", help="a new (or empty) directory")
    s.add_argument("--to", choices=["milvus", "local"], default="milvus")
    s.add_argument("--milvus-uri", default=None,
                   help="the Milvus of DST (--to milvus; default $HYBRIDRAG_MILVUS_URI, else a Milvus Lite file "
                        "inside DST) or of SRC (--to local); the token comes from $MILVUS_TOKEN")
    s.add_argument("--collection", default=None, help="prefix of the new Milvus collections")
    s.add_argument("--colbert", action="store_true",
                   help="--to milvus: move the ColBERT token vectors too ([colbert] backend = \"milvus\"; "
                        "fp16 or fp32 stores); --to local always brings them back")
    s.add_argument("--whole-index", action="store_true",
                   help="--to milvus: move everything, text, metadata and ids too ([milvus] whole_index; implies "
                        "--colbert), so that query nodes can attach with only the collection prefix and the URI")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_migrate)

    for name, func, what, help_ in (
            ("attach", cmd_attach, "the query node", "make DIR a query node of an index published in Milvus "
             "([milvus] whole_index): it holds only the collection prefix"),
            ("take-over", cmd_take_over, "the writer", "make DIR the writer of an index published in Milvus "
             "([milvus] whole_index) whose writer directory is lost, in place: same prefix, nothing copied")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("index", metavar="DIR", help=f"a new (or empty) directory for {what}")
        s.add_argument("--collection", required=True, help="the writer's [milvus] collection prefix")
        s.add_argument("--milvus-uri", default=None, help="where Milvus is (default $HYBRIDRAG_MILVUS_URI; the "
                                                          "token comes from $MILVUS_TOKEN)")
        s.set_defaults(func=func)

    s = sub.add_parser("milvus-gc", help="drop Milvus collections this index made and no longer uses "
                                         "(left by a create(overwrite=True) killed before its commit)")
    s.add_argument("index", metavar="DIR")
    s.add_argument("--dry-run", action="store_true", help="list them, drop nothing")
    s.add_argument("--committed", action="store_true",
                   help="also drop strays a commit once published (e.g. after restoring a backup in place)")
    s.set_defaults(func=cmd_milvus_gc)

    from hybridrag.server.config import BatchConfig, Limits

    lim, bat = Limits(), BatchConfig()
    s = sub.add_parser("serve", help="serve an index over HTTP (pip install 'hybridrag[serve]'; docs/SERVE.md)")
    s.add_argument("index", metavar="DIR")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--writable", action="store_true",
                   help="enable POST /add /upsert /delete /commit (default: read-only)")
    s.add_argument("--read-only", dest="writable", action="store_false", help="the default")
    s.add_argument("--api-key", default=None,
                   help="require this key (Authorization: Bearer KEY or X-API-Key: KEY); default $HYBRIDRAG_API_KEY")
    s.add_argument("--max-k", type=int, default=lim.max_k)
    s.add_argument("--max-depth", type=int, default=lim.max_depth, help="largest depth and rerank_k")
    s.add_argument("--max-queries", type=int, default=lim.max_queries, help="queries in one request")
    s.add_argument("--max-query-chars", type=int, default=lim.max_query_chars, help="characters of one query")
    s.add_argument("--max-documents", type=int, default=lim.max_documents, help="documents in one write request")
    s.add_argument("--max-body-bytes", type=int, default=lim.max_body_bytes)
    s.add_argument("--max-queue", type=int, default=lim.max_queue, help="queries waiting before 503")
    s.add_argument("--max-batch", type=int, default=bat.max_batch, help="queries per search_batch call")
    s.add_argument("--batch-wait-ms", type=float, default=bat.wait_ms,
                   help="longest wait for more requests to batch after the first")
    s.add_argument("--reload-ms", type=float, default=200.0, help="how often to look for a newer commit")
    s.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    s.add_argument("--access-log", action="store_true")
    s.add_argument("--runtime", choices=["torch", "onnx"], default=None, help=_RUNTIME_HELP)
    s.set_defaults(func=cmd_serve)
    for name in _OPENS_AN_INDEX:
        sub.choices[name].add_argument(
            "--milvus-uri", dest="index_milvus_uri", default=None, metavar="URI",
            help="where the index's Milvus is, for an index kept in Milvus (default $HYBRIDRAG_MILVUS_URI, else "
                 "a Milvus Lite file inside the index; the token comes from $MILVUS_TOKEN; never stored)")
    return p


def quiet_model_loading() -> None:
    """Command-line runs only: keep transformers' load reports and hub chatter off the terminal.

    transformers and huggingface_hub read these variables when first imported; importing
    transformers here to set them instead cost 0.8 s of every command, also of those that load
    no model (a BM25 index's ``hybridrag query``). Already imported, it is told directly."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Stored text is printed as stored: a lone surrogate (valid in a Python str, kept by the
    # docstore) is written as its \uXXXX escape (in --json output, the same escape JSON
    # uses) instead of failing the whole command with UnicodeEncodeError.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    if not os.environ.get("HYBRIDRAG_DEBUG"):
        quiet_model_loading()
    try:
        with _milvus_uri_from(args):
            return int(args.func(args))
    except IndexWriteError as e:
        if os.environ.get("HYBRIDRAG_DEBUG"):
            raise
        print(f"hybridrag: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except (HybridRAGError, ValueError, TypeError, FileNotFoundError, PermissionError, ImportError) as e:
        if os.environ.get("HYBRIDRAG_DEBUG"):
            raise
        return _fail(str(e))
    except OSError as e:
        from hybridrag.storage.files import is_disk_full

        if not is_disk_full(e) or os.environ.get("HYBRIDRAG_DEBUG"):
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"hybridrag: error: {where}the disk is full ({e.strerror})", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("hybridrag: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
