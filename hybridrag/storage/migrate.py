"""``HybridIndex.migrate`` / ``hybridrag migrate``: a copy of an index in a new directory whose
dense and learned-sparse vectors live in Milvus (``to="milvus"``) or in local stores
(``to="local"``), with nothing encoded again.

The copy keeps every slot, chunk, document and generation-independent fact of the source:

* the docstore rows are copied in slot order (whole documents per call, empty documents too);
* the stores that stay local (BM25, ColBERT, and dense/sparse when they stay) keep their
  segments: each segment's files are copied byte for byte (hashed as they are written), with
  its slots and deletion list, so scores are bit for bit those of the source;
* a store that changes backend gets the stored rows of the live slots of each segment, read
  with the stores' ``export`` (the kept float32/float16 vectors, the stored sparse weights,
  the token vectors of a ``[colbert] backend = "milvus"`` index moved ``to="local"``, or of the
  local store moved with ``colbert=True``) and written with ``add``; from Milvus to local stores, one new part per source segment
  (a segment with deletions is then written compacted, every store of it, so all its stores
  hold the same rows);
* the BM25 vocabulary files are copied, so the BM25 rows keep their term ids.

The new index is committed once (one manifest swap); until then it is not an index, and a
failure removes the directory and drops the Milvus collections it made. The source is only
read.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from hybridrag.errors import ConfigError
from hybridrag.storage import commit as commit_mod
from hybridrag.storage import opening
from hybridrag.storage import versions as pipeline_versions
from hybridrag.storage.files import open_for_write, open_plain
from hybridrag.storage.segments import SegmentedStore
from hybridrag.storage.table import SegmentTable
from hybridrag.types import Chunk

__all__ = ["migrate"]

_TARGETS = ("milvus", "local")


def migrate(cls: Any, src: str | os.PathLike[str], dst: str | os.PathLike[str], *, to: str = "milvus",
            milvus_uri: str | None = None, milvus_token: str | None = None, collection: str | None = None,
            encoder: Any = None, batch_size: int = 4096,
            progress: Callable[[int], None] | None = None, colbert: bool = False,
            whole_index: bool = False) -> Any:
    """:meth:`hybridrag.index.HybridIndex.migrate` (documented there)."""
    if to not in _TARGETS:
        raise ConfigError(f"to must be one of {list(_TARGETS)}, got {to!r}")
    if colbert and to != "milvus":
        raise ConfigError("colbert=True moves the ColBERT token vectors to Milvus: it needs to='milvus' "
                          "(to='local' always brings them back)")
    if whole_index and to != "milvus":
        raise ConfigError("whole_index=True moves the whole index (text, metadata, ids too) to Milvus: it needs "
                          "to='milvus' (to='local' always brings everything back)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}")
    src_p, dst_p = Path(src), Path(dst)
    if dst_p.exists() or dst_p.is_symlink():
        if not dst_p.is_dir() or dst_p.is_symlink() or any(dst_p.iterdir()):
            raise ConfigError(f"{str(dst_p)!r} exists and is not an empty directory; migrate writes a new index "
                              "there (the source is never changed)")
    made = not dst_p.exists()
    if to == "milvus":
        milvus_uri = milvus_uri or os.environ.get("HYBRIDRAG_MILVUS_URI") or None
    # a query node (HybridIndex.attach): everything is read from Milvus, so its commit can become
    # a writer's index again (a lost writer directory) or a local index
    node = (src_p / opening.POINTER).is_file() and not (src_p / "manifest.json").exists()
    source = cls.load(src_p, encoder=encoder, **({"milvus_uri": milvus_uri, "milvus_token": milvus_token}
                                                  if to == "local" or node else {}))
    target = None
    try:
        cfg = source.pipeline.to_dict()
        if node:
            if to == "milvus" and not whole_index:
                raise ConfigError(f"{str(src_p)!r} is a query node: a new writer's index from it keeps the whole "
                                  "index in Milvus (whole_index=True, --whole-index) or is local (to='local')")
            if to == "milvus" and (collection is None or collection == cfg["milvus"]["collection"]):
                raise ConfigError(f"a new writer's index from the query node {str(src_p)!r} needs a collection "
                                  f"prefix of its own (not {cfg['milvus']['collection']!r}, which the lost writer "
                                  "owns): pass collection=... (--collection)")
            source._table = _node_table(source)
            source._vocab_files = []   # the writer's files, named by the published manifest
        elif bool(cfg["milvus"]["enabled"]) == (to == "milvus"):
            where = "in Milvus" if to == "milvus" else "in local stores"
            raise ConfigError(f"{str(src_p)!r} already keeps its vectors {where}; nothing to migrate")
        if not node and not whole_index and not source.pipeline.remote_modes() \
                and not set(source.pipeline.modes) & {"dense", "sparse"}:
            raise ConfigError(f"{str(src_p)!r} has no dense or sparse mode (modes {source.pipeline.modes}): "
                              "Milvus would hold nothing of it")
        mv = cfg["milvus"]
        mv["enabled"] = to == "milvus"
        for m in ("colbert", "bm25"):
            if to == "local" and cfg[m].get("backend") == "milvus":
                cfg[m]["backend"] = ""   # token vectors and BM25 back to the local stores too
        mv["whole_index"] = bool(whole_index)
        if whole_index and cfg["bm25"].get("enabled"):
            cfg["bm25"]["backend"] = "milvus"
        if whole_index and cfg["colbert"].get("enabled"):
            colbert = True
        if colbert:
            if not cfg["colbert"].get("enabled"):
                raise ConfigError(f"{str(src_p)!r} has no colbert mode to move")
            cfg["colbert"]["backend"] = "milvus"
        mv["uri"] = (milvus_uri or "") if to == "milvus" else ""
        mv["token"] = (milvus_token or "") if to == "milvus" else ""
        if collection is not None:
            mv["collection"] = collection
        neural = source.pipeline.encoder.kind != "none"
        target = cls.create(dst_p, cfg, encoder=source.encoder if neural else None)
        with target._writing():
            _copy_index(source, target, batch_size, progress)
    except BaseException:
        if target is not None:
            with contextlib.suppress(Exception):   # the original error is the one to raise
                opening._undo_create(target, None)   # drops the Milvus collections it made
            target.close()
            shutil.rmtree(dst_p, ignore_errors=True)
            if not made:
                dst_p.mkdir(exist_ok=True)   # the empty directory the user gave stays
        raise
    finally:
        source.close()
    return target


def _copy_index(source: Any, target: Any, batch_size: int, progress: Callable[[int], None] | None) -> None:
    gen = target._gen + 1
    _copy_docstore(source, target, gen, batch_size)
    modes = list(target.stores)
    kept = [m for m in modes if isinstance(target.stores[m], SegmentedStore)
            and isinstance(source.stores[m], SegmentedStore)]
    to_milvus = [m for m in modes if not isinstance(target.stores[m], SegmentedStore)]
    to_local = [m for m in modes if isinstance(target.stores[m], SegmentedStore)
                and not isinstance(source.stores[m], SegmentedStore)]
    table = source._table
    doc_hashes = {d: h for d, h, _ in source.docstore.documents()} if "docs" in to_milvus else {}
    checksums: dict[str, str] = {}
    entries: list[dict[str, Any]] = []
    slots_of: dict[str, np.ndarray] = {}
    deleted_of: dict[str, np.ndarray] = {}
    for e in table.entries:
        sid = e["id"]
        live = table.live_slots(sid)
        compact = bool(e["deleted"]) and bool(to_local)
        files: dict[str, dict[str, str]] = {}
        if compact:
            for m in kept:
                part = source.stores[m].parts[sid]
                files[m] = commit_mod._save_part(target, type(part).merge([part]), f"{m}.{sid}", checksums)
            entry = {"id": sid, "rows": int(live.size), "deleted": 0, "deletes": None,
                     "slots": commit_mod._written(target, SegmentTable.write_slots(target.path, sid, live), checksums)}
            slots_of[sid], deleted_of[sid] = live, np.zeros(0, np.int64)
        else:
            for m in kept:
                files[m] = {role: _copy_file(source.path, target.path, name, checksums)
                            for role, name in e["files"][m].items()}
            written = table.slots[sid]
            slots = (_copy_file(source.path, target.path, e["slots"], checksums) if e.get("slots") else
                     commit_mod._written(target, SegmentTable.write_slots(target.path, sid, written), checksums))
            deletes = _copy_file(source.path, target.path, e["deletes"], checksums) if e.get("deletes") else None
            entry = {"id": sid, "rows": int(e["rows"]), "deleted": int(e["deleted"]), "slots": slots,
                     "deletes": deletes}
            slots_of[sid], deleted_of[sid] = written, table.deleted[sid]
        for m in to_local:
            part = target.stores[m]._new_fresh()
            for batch in _batches(live, batch_size):
                part.add(batch, source.stores[m].export(batch))
            files[m] = commit_mod._save_part(target, part, f"{m}.{sid}", checksums)
        for m in to_milvus:
            for batch in _batches(live, batch_size):
                if m == "docs":   # the chunks' text, ids and metadata (whole_index)
                    rows = source.docstore.get(batch)
                    target.stores[m].add(batch, [dict(r, doc_hash=doc_hashes[r["doc_id"]]) for r in rows])
                else:
                    src = source.stores[m]
                    target.stores[m].add(batch, (src.parts[sid] if isinstance(src, SegmentedStore) else src).export(batch))
        if progress is not None:
            progress(int(live.size))
        entry["files"] = files
        entries.append(entry)
    vocab = [_copy_file(source.path, target.path, name, checksums) for name in source._vocab_files]
    target._vocab_files, target._bm25, target._bm25_vocab = vocab, None, source._bm25_vocab
    target._vocab_saved = source._vocab_saved
    if source._attached is not None and "bm25" in source.stores:
        # a query node has no vocabulary files: the terms collection names every term by id
        terms = source.stores["bm25"].vocabulary_terms()
        target._bm25_vocab = dict(zip(terms, range(len(terms))))
        name = f"bm25.g{gen}.vocab.json"
        commit_mod._write_vocabulary(target, name, 0)
        commit_mod._written(target, name, checksums)
        target._vocab_files, target._vocab_saved, vocab = [name], len(terms), [name]
    if "bm25" in target.stores:
        target.bm25   # BM25 in Milvus: the store keys its terms by text, from this vocabulary
    target._table = SegmentTable(entries, table.next_segment)
    target._next_versions = pipeline_versions.carried(source._manifest, source.pipeline)   # a version each
    commit_mod._swap_manifest(target, gen, entries, vocab, checksums)
    target._next_versions = None
    # committed: the stores open the segments as a load would
    for m in (*kept, *to_local):
        store = target.stores[m]
        parts = {}
        for e in entries:
            part = commit_mod._open_part(target, m, e["files"][m])
            if deleted_of[e["id"]].size:
                part.remove(deleted_of[e["id"]])
            parts[e["id"]] = part
        store.parts = parts
        store.fresh = store._new_fresh()
        store._stats_key, store._cache = None, {}
    target._table.slots.update(slots_of)
    target._table.deleted.update(deleted_of)
    target._dirty = False


def _copy_docstore(source: Any, target: Any, gen: int, batch_size: int) -> None:
    """Every live chunk at its slot and every live document with its content hash."""
    docs = source.docstore.documents()
    hashes = {d: h for d, h, _ in docs}
    for rows in _whole_documents(source.docstore, source.docstore.live_slots(), batch_size):
        chunks = [Chunk(chunk_id=r["chunk_id"], doc_id=r["doc_id"], ordinal=r["ordinal"], text=r["text"],
                        start=r["start"], end=r["end"], metadata=r["metadata"]) for r in rows]
        ids = dict.fromkeys(r["doc_id"] for r in rows)
        target.docstore.add_chunks(chunks, [r["slot"] for r in rows], gen, {d: hashes[d] for d in ids})
    empty = {d: h for d, h, n in docs if n == 0}
    if empty:
        target.docstore.add_chunks([], [], gen, empty)
    # the segments' slot lists name deleted slots too: they stay below next_slot()
    target.docstore.raise_slot_floor(int(source._manifest["counts"]["next_slot"]))


def _node_table(node: Any) -> SegmentTable:
    """A query node's committed chunks as one segment (it has no segment files; the slots are
    the docs collection's live ones)."""
    live = node.docstore.live_slots()
    table = SegmentTable([{"id": "s1", "rows": int(live.size), "deleted": 0, "slots": None, "deletes": None,
                           "files": {}}], 2)
    table.slots["s1"], table.deleted["s1"] = live, np.zeros(0, np.int64)
    return table


def _whole_documents(ds: Any, slots: np.ndarray, batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """Chunk rows in slot order, in blocks that never split a document (a document's chunks
    are written together, at consecutive slots)."""
    carry: list[dict[str, Any]] = []
    for batch in _batches(slots, batch_size):
        rows = carry + ds.get(batch)
        last = rows[-1]["doc_id"]
        cut = len(rows)
        while cut and rows[cut - 1]["doc_id"] == last:
            cut -= 1
        if cut:
            yield rows[:cut]
        carry = rows[cut:]
    if carry:
        yield carry


def _batches(slots: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(slots), size):
        yield slots[i:i + size]


def _copy_file(src_dir: Path, dst_dir: Path, name: str, checksums: dict[str, str]) -> str:
    """Copy the plain file ``name`` (never through a link), synced, recording its sha256."""
    fd = open_plain(src_dir, name, os.O_RDONLY)
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as fin, open_for_write(dst_dir, name) as fout:
        while True:
            block = fin.read(1 << 23)
            if not block:
                break
            h.update(block)
            fout.write(block)
        fout.flush()
        os.fsync(fout.fileno())
    checksums[name] = h.hexdigest()
    return name
