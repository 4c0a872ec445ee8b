"""Commits and merges of an index's segments (called by :class:`hybridrag.index.HybridIndex`).

A commit turns the rows added since the last one into one new segment per store, writes a
new deletion list for each older segment that lost rows and the BM25 terms first seen, records
the sha256 of every file it wrote, and swaps ``manifest.json`` (the commit point); then the
merge policy may merge segments (in a background thread, :mod:`hybridrag.storage.merges`),
each merge installed as a commit of its own. See ``docs/DESIGN.md``, "On disk".
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybridrag import __version__
from hybridrag.config import PipelineConfig, resolve_model_path
from hybridrag.errors import IndexLockedError
from hybridrag.storage import merges, opening
from hybridrag.storage import versions as pipeline_versions
from hybridrag.storage.files import disk_full_errors as _disk_full
from hybridrag.storage.manifest import FORMAT_VERSION, MANIFEST, check_name as _check_name, sha256_file as _sha256
from hybridrag.storage.manifest import read_generation, write_manifest
from hybridrag.storage.segments import SegmentedStore
from hybridrag.storage.table import SegmentTable

logger = logging.getLogger("hybridrag.index")

DOCSTORE = "docstore.sqlite"
LOCKFILE = "LOCK"
# Every file of a segment carries "<mode>.s<n>" (format 1: "<mode>.g<generation>") in its name,
# or is a segment's bookkeeping ("s<n>.slots.npy", "s<n>.del.g<generation>.npy").
STORE_FILE = re.compile(r"(dense|sparse|bm25|colbert|docs)\.[gs]\d+|(^|\.)[gs]\d+\.(slots|del\.g\d+)\.npy")
SEGMENT_ID = re.compile(r"(?:^|\.)(s\d+)(?=[.-])")


def commit(idx, *, merge: bool = True) -> None:
    """Make the writes since the last commit durable and visible: the new rows become one
    new segment per store, deletions a small file per segment they touch, and the manifest
    is swapped atomically (the commit point). Then, unless ``merge=False``, merges that
    finished are installed and the segments the :attr:`merge_policy` picks are merged (in the
    background, or here when ``merge_in_background`` is false), each merge a commit of its
    own. No-op when nothing changed."""
    if not idx._dirty:
        return
    with _disk_full(idx.path, lambda: idx._gen), idx._writing(), idx._rw.writing():
        idx._collect_garbage()  # files a crashed commit left behind
        new, dels = idx._table.pending()
        entries = [dict(e) for e in idx._table.entries]
        checksums: dict[str, str] = {}
        gen = idx._gen + 1
        sealed: dict[str, dict[str, str]] = {}
        sid = None
        if new.size:
            sid = idx._table.new_id()
            for mode, store in idx._local_stores().items():
                sealed[mode] = _save_part(idx, store.fresh, f"{mode}.{sid}", checksums)
            slots_file = _written(idx, SegmentTable.write_slots(idx.path, sid, new), checksums)
            entries.append({"id": sid, "rows": int(new.size), "deleted": 0, "slots": slots_file,
                            "deletes": None, "files": sealed})
        for e in entries:
            if e.get("slots") is None and e["id"] in idx._table.slots:   # a format-1 segment
                e["slots"] = _written(idx, SegmentTable.write_slots(
                    idx.path, e["id"], idx._table.slots[e["id"]]), checksums)
            if e["id"] in dels:
                e["deletes"] = _written(idx, SegmentTable.write_deletes(idx.path, e["id"], gen, dels[e["id"]]),
                                             checksums)
                e["deleted"] = int(dels[e["id"]].size)
        entries = [e for e in entries if e["rows"] > e["deleted"]]   # wholly deleted segments go
        vocab_files = list(idx._vocab_files)
        if "bm25" in idx.stores and len(idx.bm25.vocabulary) > idx._vocab_saved:
            name = f"bm25.{sid or 'g%d' % gen}.vocab.json"
            _write_vocabulary(idx, name, idx._vocab_saved)
            _written(idx, name, checksums)
            vocab_files.append(name)
        _swap_manifest(idx, gen, entries, vocab_files, checksums)
        # The commit is durable: the in-memory state follows it.
        live = {e["id"] for e in entries}
        for mode, store in idx._local_stores().items():
            if sid is not None:
                store.seal(sid, _open_part(idx, mode, sealed[mode]))
            else:
                store.fresh = store._new_fresh()   # rows added and deleted before this commit
            store.parts = {k: v for k, v in store.parts.items() if k in live}
        idx._table.entries = entries
        if sid is not None:
            idx._table.slots[sid], idx._table.deleted[sid] = new, np.zeros(0, np.int64)
        idx._table.deleted.update(dels)
        idx._table.clear_pending()
        idx._vocab_files = vocab_files
        if "bm25" in idx.stores:
            idx._vocab_saved = len(idx.bm25.vocabulary)
        idx._dirty = False
        idx._collect_garbage()
        if merge and idx.merge_policy is not None:
            merges.after_commit(idx)


def set_pipeline(idx, cfg: PipelineConfig, versions: list[dict[str, Any]], active: int) -> None:
    """Commit pending writes, then commit a generation whose manifest has ``cfg`` as its pipeline
    and ``versions`` (``active`` the one in force): :mod:`hybridrag.storage.versions`. A failure
    leaves the index and this object as they were."""
    with idx._writing(), idx._rw.writing():
        idx.commit(merge=False)
        before = idx.pipeline
        idx.pipeline, idx._next_versions, idx._dirty = cfg, (versions, active), True
        try:
            commit(idx, merge=False)
        except BaseException:
            idx.pipeline, idx._dirty = before, False
            raise
        finally:
            idx._next_versions = None


def optimize(idx) -> None:
    """Commit pending writes, then merge every segment into one without deleted rows
    (``hybridrag optimize``): the smallest index and the fastest searches. A merge is a
    commit: readers keep their snapshot, a crash leaves the last commit whole."""
    with idx._writing(), idx._rw.writing():
        idx.commit(merge=False)
        merges.finish(idx, wait=True)
        entries = idx._table.entries
        if len(entries) > 1 or any(e["deleted"] for e in entries):
            merge_segments(idx, [e["id"] for e in entries])


def close_merges(idx) -> None:
    """At close: install a running background merge when the writer has nothing uncommitted,
    else drop it (its files are garbage for the next writer)."""
    if idx._merge_job is None:
        return
    if idx._dirty or idx._lock.fd is None:
        merges.cancel(idx)
        return
    try:
        with idx._writing(), idx._rw.writing():
            merges.finish(idx, wait=True)
    except Exception as e:   # noqa: BLE001 - closing still releases the lock; the last commit is whole
        logger.warning("installing a background merge of %s at close failed: %r", idx.path, e)
        merges.cancel(idx)


def merge_segments(idx, ids: Sequence[str]) -> None:
    """Merge segments ``ids`` into one new segment in the calling thread, as a commit."""
    slots = np.sort(np.concatenate([idx._table.live_slots(i) for i in ids]))
    checksums: dict[str, str] = {}
    sid, sealed, slots_file = None, {}, None
    if slots.size:
        sid = idx._table.new_id()
        for mode, store in idx._local_stores().items():
            sealed[mode] = merged_part(idx.path, mode, [store.parts[i] for i in ids], sid, slots.size, checksums)
        slots_file = record(idx.path, SegmentTable.write_slots(idx.path, sid, slots), checksums)
    install_merge(idx, ids, sid, sealed, slots, slots_file, checksums)


def merged_part(directory: Path, mode: str, parts: list[Any], sid: str, rows: int,
                checksums: dict[str, str]) -> dict[str, str]:
    """Merge one store's ``parts`` (their live rows) and write them as segment ``sid``'s files."""
    merged = type(parts[0]).merge(parts)
    if len(merged) != rows:
        raise RuntimeError(f"merging {mode!r} segments gave {len(merged)} rows, expected {rows}")
    return save_part(directory, merged, f"{mode}.{sid}", checksums)


def install_merge(idx, ids: Sequence[str], sid: str | None, sealed: dict[str, dict[str, str]],
                  slots: np.ndarray, slots_file: str | None, checksums: dict[str, str]) -> None:
    """Replace segments ``ids`` by the merged segment ``sid`` (its files written, holding
    ``slots``), as a commit. Rows deleted since the merge read its segments (a background
    merge) get a deletion list on the merged segment: slots never move, so a slot deleted
    in an old segment is the same slot in the merged one."""
    present = [i for i in ids if i in idx._table.slots]   # a wholly deleted segment is gone
    gen = idx._gen + 1
    live = (np.concatenate([idx._table.live_slots(i) for i in present]) if present
            else np.zeros(0, np.int64))
    dels = np.setdiff1d(slots, live) if sid is not None else slots[:0]
    entries = [dict(e) for e in idx._table.entries]
    if sid is not None and present and dels.size < slots.size:
        entry = {"id": sid, "rows": int(slots.size), "deleted": int(dels.size), "files": sealed, "slots": slots_file,
                 "deletes": record(idx.path, SegmentTable.write_deletes(idx.path, sid, gen, dels), checksums)
                 if dels.size else None}
        entries.insert(next(i for i, e in enumerate(entries) if e["id"] == present[0]), entry)
    else:
        sid = None
    entries = [e for e in entries if e["id"] not in ids]
    _swap_manifest(idx, gen, entries, list(idx._vocab_files), checksums)
    for mode, store in idx._local_stores().items():
        if sid is not None:
            part = _open_part(idx, mode, sealed[mode])
            if dels.size:
                part.remove(dels)
            store.replace(present, sid, part)
        else:
            store.parts = {k: v for k, v in store.parts.items() if k not in ids}
    idx._table.entries = entries
    for i in ids:
        idx._table.slots.pop(i, None)
        idx._table.deleted.pop(i, None)
    if sid is not None:
        idx._table.slots[sid], idx._table.deleted[sid] = slots, dels
    idx._collect_garbage()


def record(directory: Path, name: str, checksums: dict[str, str]) -> str:
    """Record the sha256 of a file just written in ``directory`` (fsynced) for the manifest."""
    _check_name(directory, name)
    f = directory / name
    with open(f, "rb") as fh:
        os.fsync(fh.fileno())
    checksums[name] = _sha256(f)
    return name


def _written(idx, name: str, checksums: dict[str, str]) -> str:
    return record(idx.path, name, checksums)


def save_part(directory: Path, store: Any, tag: str, checksums: dict[str, str]) -> dict[str, str]:
    """Write ``store`` as the files of ``tag`` and record their checksums."""
    files = store.save(directory, tag)
    for name in files.values():
        record(directory, name, checksums)
    return dict(files)


def _save_part(idx, store: Any, tag: str, checksums: dict[str, str]) -> dict[str, str]:
    return save_part(idx.path, store, tag, checksums)


def _open_part(idx, mode: str, files: Mapping[str, str]) -> Any:
    """A segment just written, opened as a loader would (memory-mapped)."""
    return opening.store_class(idx, mode).load(idx.path, dict(files), idx._manifest["stores"][mode]["config"],
                                               slot_limit=int(idx._manifest["counts"]["next_slot"]))


def _write_vocabulary(idx, name: str, start: int) -> None:
    """The BM25 terms with ids ``start`` and up, as a new file (fsynced, renamed into place)."""
    from hybridrag.stores.base import new_file

    new_file(idx.path, name, lambda path: idx.bm25.save_vocabulary(path, start))


def _swap_manifest(idx, gen: int, entries: list[dict[str, Any]], vocab_files: list[str],
                   checksums: dict[str, str]) -> None:
    """Write the manifest of generation ``gen`` (the commit point) and adopt it."""
    old = idx._manifest or {}
    keep = {n for e in entries for n in [*(f for fs in e["files"].values() for f in fs.values()),
                                         e.get("slots"), e.get("deletes")] if n}
    keep.update(vocab_files)
    sums = {n: d for n, d in old.get("checksums", {}).items() if n in keep}
    sums.update({n: d for n, d in checksums.items() if n in keep})
    remote: dict[str, Any] = {}
    if idx.pipeline.milvus.whole_index and idx._manifest is not None and "remote" in idx._manifest:
        # Before this commit purges what its predecessor removed, Milvus must name that
        # predecessor: a head one commit behind would show readers purged rows.
        publish(idx, idx._manifest, retry=True)
    for mode, store in idx.stores.items():
        if not isinstance(store, SegmentedStore):
            files = store.save(idx.path, f"{mode}.g{gen}")
            for name in files.values():
                _written(idx, name, sums)
            remote[mode] = {"files": files, "config": store.config(), "rows": len(store)}
    models: dict[str, Any] = {}
    if idx.pipeline.encoder.kind != "none":
        models["encoder"] = {"name": idx.pipeline.encoder.model,
                             **model_fingerprint(resolve_model_path(idx.pipeline.encoder.model))}
        if idx._encoder is not None and hasattr(idx._encoder, "config"):
            models["encoder"]["config"] = _jsonable(idx._encoder.config())
    if idx.pipeline.rerank.enabled:
        models["reranker"] = {"name": idx.pipeline.rerank.model}
    stores = {m: {"config": s.newest.config()} for m, s in idx._local_stores().items()}
    versions, active = idx._next_versions or pipeline_versions.carried(old, idx.pipeline)
    manifest = {
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "generation": gen,
        "created": old.get("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "pipeline": _pipeline_for_disk(idx.pipeline),
        "pipeline_versions": versions,
        "pipeline_version": active,
        "models": models,
        "counts": {"documents": idx.docstore.count_documents(), "chunks": idx.docstore.count(),
                   "next_slot": idx.docstore.next_slot()},
        "stores": stores,
        "remote": remote,
        "segments": entries,
        "next_segment": idx._table.next_segment,
        "bm25_vocab": vocab_files,
        "docstore": DOCSTORE,
        "checksums": sums,
    }
    if old.get("format_version") == 1 and old.get("docstore_sha256"):
        # The first commit of a format-1 index: its rows have no per-row hash yet; record
        # them if the old manifest's whole-docstore checksum still vouches for them.
        ds, view = idx.docstore, idx.docstore.as_of
        ds.as_of = int(old["generation"])
        try:
            intact = ds.content_checksum() == old["docstore_sha256"]
        finally:
            ds.as_of = view
        if intact:
            ds.record_row_hashes()
    idx.docstore.commit_generation(gen)
    write_manifest(idx.path, manifest)
    idx._manifest = manifest
    idx._gen = gen
    for store in idx.stores.values():
        done = getattr(store, "committed", None)  # Milvus: the saved generation is now live
        if done is not None:
            done()
    if idx.pipeline.milvus.whole_index:
        publish(idx, manifest)


def head_of(idx) -> Any:
    """The index's :class:`~hybridrag.stores.milvus_docs.MilvusHead` (``[milvus] whole_index``),
    opened on the docs collection's Milvus at first use."""
    head = getattr(idx, "_head", None)
    if head is None:
        from hybridrag.stores.milvus_docs import MilvusHead

        docs = idx.stores["docs"]
        head = MilvusHead(docs.uri, docs._token, idx.pipeline.milvus.collection, owner=docs._owner,
                          private=docs._private)
        head.published = head.newest()
        idx._head = head
    return head


def publish(idx, manifest: dict[str, Any], retry: bool = False) -> None:
    """Publish ``manifest`` (with the records its Milvus stores saved) into the index's head
    collection, unless it is the newest published one already. After the manifest swap
    (``retry=False``) a failure is logged and left to the next commit, which publishes its
    predecessor first (``retry=True``, where a failure raises before anything changes)."""
    gen = int(manifest["generation"])
    try:
        head = head_of(idx)
        if head.published == gen:
            return
        records = {}
        for mode, entry in manifest.get("remote", {}).items():
            path = idx.path / entry["files"]["milvus"]
            records[mode] = json.loads(path.read_text(encoding="utf-8"))
        head.publish(gen, {"manifest": manifest, "records": records})
    except Exception as exc:
        if retry:
            raise
        logger.warning("commit %d of %s is durable but could not be published to Milvus (%s); query nodes "
                       "see the previous commit until the next commit publishes it", gen, idx.path, exc)


def drop_milvus_collections(idx, names: list[str]) -> None:
    """Drop the Milvus collections of the index this one replaced (create/rebuild)."""
    for store in idx.stores.values():
        if names and hasattr(store, "drop_collections"):
            store.drop_collections(names)
            return


def collect_garbage(idx) -> None:
    keep = set((idx._manifest or {}).get("checksums", {})) | {MANIFEST, DOCSTORE, LOCKFILE}
    busy = merges.reserved(idx)   # a background merge's sources and output
    for f in idx.path.iterdir():
        if f.name in keep or f.name.startswith(DOCSTORE) or not (f.is_file() or f.is_symlink()):
            continue
        seg = SEGMENT_ID.search(f.name) if busy else None
        if seg is not None and seg.group(1) in busy:
            continue
        if STORE_FILE.search(f.name) or f.name == f"{MANIFEST}.tmp":
            with contextlib.suppress(OSError):
                f.unlink()


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _pipeline_for_disk(cfg: PipelineConfig) -> dict[str, Any]:
    """The pipeline as the manifest records it: without the Milvus token (a secret)."""
    d = cfg.to_dict()
    if d.get("milvus", {}).get("token"):
        d["milvus"]["token"] = ""
    return d


def model_fingerprint(resolved: str) -> dict[str, Any]:
    """Name, revision and a hash of the config/tokenizer files of a local model folder."""
    p = Path(resolved)
    info: dict[str, Any] = {"resolved": resolved}
    m = re.search(r"/snapshots/([0-9a-f]{40})", resolved)
    if m:
        info["revision"] = m.group(1)
    if p.is_dir():
        h = hashlib.sha256()
        for name in ("config.json", "tokenizer.json", "colbert_linear.pt", "sparse_linear.pt"):
            f = p / name
            if f.is_file():
                h.update(name.encode())
                h.update(_sha256(f).encode())
        info["fingerprint"] = h.hexdigest()
    return info


@contextlib.contextmanager
def writing(idx) -> Iterator[None]:
    if idx._attached is not None:
        from hybridrag.errors import IndexWriteError

        raise IndexWriteError(f"{idx.path} is a query node attached to Milvus (HybridIndex.attach): it reads "
                              "only; write through the index directory that publishes the index")
    idx._lock.acquire()
    on_disk = read_generation(idx.path) if idx._manifest is not None else None
    if on_disk is not None and on_disk != idx._gen:
        raise IndexLockedError(
            f"index {str(idx.path)!r} was changed by another writer (generation {on_disk} "
            f"on disk, {idx._gen} here); load it again before writing")
    if idx.docstore.as_of is not None:
        # This index was opened as a reader: switch to the writer's view, first undoing what
        # a writer that died after we loaded left uncommitted.
        idx.docstore.unpin()
        idx.docstore.as_of = None
        if not idx._dirty and idx.docstore.max_generation() > idx._gen:
            idx.docstore.rollback_to(idx._gen)
    yield

@contextlib.contextmanager
def undo_on_error(idx) -> Iterator[None]:
    """A write that fails part-way may have changed the in-memory stores and docstore rows:
    go back to the last committed state (uncommitted earlier writes are dropped too)."""
    try:
        yield
    except BaseException:
        if idx._manifest is not None and idx._lock.fd is not None:
            logger.warning("write to %s failed; rolling back to generation %d", idx.path, idx._gen)
            with idx._rw.writing():
                merges.cancel(idx)   # the table is re-read: its reserved segment ids with it
                idx.docstore.rollback_to(idx._gen)
                idx._bm25 = None
                opening.init_components(idx, fresh=False)
                idx._dirty = False
        raise


def drop_stray_collections(idx, *, committed: bool = False, dry_run: bool = False) -> list[dict[str, Any]]:
    """Milvus collections this index directory made and no longer uses
    (:func:`hybridrag.stores.milvus.stray_collections`), each with ``"dropped"``: those no commit
    ever published (a ``create(overwrite=True)`` killed before its commit) are dropped, those a
    commit published only with ``committed=True`` (a backup restored in place no longer names
    the collections the index had moved on to: they may be the newer data), none with
    ``dry_run``. Takes the writer lock first, so no create of this directory runs meanwhile."""
    from hybridrag.stores.milvus import stray_collections

    idx._lock.acquire()
    out = stray_collections(idx.stores, idx.path)
    store = next((s for s in idx.stores.values() if hasattr(s, "drop_collections")), None)
    drop = [s["name"] for s in out if not dry_run and (s["committed"] is None or committed)]
    dropped = set(store.drop_collections(drop)) if store is not None and drop else set()
    for stray in out:
        stray["dropped"] = stray["name"] in dropped
    return out
