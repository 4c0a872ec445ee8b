"""Opening an index: create, load (the committed generation, retried while a writer moves
on), rebuild from the docstore, and the stores of each mode built from the manifest's segments
(called by :class:`hybridrag.index.HybridIndex`)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybridrag import __version__, write
from hybridrag.config import PipelineConfig, load_pipeline, resolve_model_path
from hybridrag.errors import ConfigError, DiskFullError, IndexFormatError, IndexLockedError
from hybridrag.modes import MODES, new_store
from hybridrag.modes import store_class as _store_class
from hybridrag.storage import commit as commit_mod
from hybridrag.storage import versions as pipeline_versions
from hybridrag.storage.lock import IndexLock as _Lock
from hybridrag.storage.manifest import (FORMAT_VERSION, MANIFEST, POINTER, read_generation, read_manifest,
                                        verify_files)
from hybridrag.storage.segments import SegmentedStore
from hybridrag.storage.table import SegmentTable

logger = logging.getLogger("hybridrag.index")

DOCSTORE = "docstore.sqlite"
# A reader retries its load while a writer's commits keep replacing the files it is opening
# (each retry opens the newer generation), for up to _LOAD_PATIENCE_S; a failure with no newer
# generation (a damaged index, or a writer between its manifest swap and our read) is retried
# _LOAD_SAME_GEN_RETRIES times with a short sleep, then raised.
_LOAD_PATIENCE_S = 60.0
_LOAD_SAME_GEN_RETRIES = 3


def open_index(cls, p: Path, manifest: dict[str, Any], verify: bool, encoder: Any, reranker: Any,
          device: str | None, milvus_conn: dict[str, str] | None = None,
          read_only: bool = False) -> Any:
    if verify:
        verify_files(p, manifest)
    cfg = PipelineConfig.from_stored(manifest["pipeline"], source=f"{p / MANIFEST}")
    try:
        pipeline_versions.history(manifest, cfg)
    except IndexFormatError as e:
        raise IndexFormatError(f"{p / MANIFEST}: {e}") from None
    import sqlite3

    try:
        idx = cls(p, cfg, manifest, encoder=encoder, reranker=reranker, device=device, read_only=read_only)
    except sqlite3.DatabaseError as e:
        raise IndexFormatError(f"{p / DOCSTORE}: docstore is unreadable or corrupt ({e})") from None
    idx._milvus_conn = dict(milvus_conn or {})
    try:
        check_docstore(idx, verify)
        init_components(idx, fresh=False)
        want = int(manifest.get("counts", {}).get("chunks", -1))
        for mode, store in idx.stores.items():
            if want >= 0 and len(store) != want and isinstance(store, SegmentedStore):
                raise IndexFormatError(f"{p / MANIFEST}: store {mode!r} holds {len(store)} rows, the manifest "
                                       f"says {want} chunks")
    except BaseException:
        idx.close()
        raise
    return idx


def check_docstore(idx, verify: bool = True) -> None:
    import sqlite3

    ds = idx.docstore
    try:
        if ds.max_generation() > idx._gen and not idx._read_only:
            # An uncommitted write left rows tagged with a later generation. Undo it when no
            # live writer holds the lock; otherwise it is that writer's work in progress.
            try:
                idx._lock.acquire()
            except IndexLockedError:
                pass
            else:
                try:
                    if ds.max_generation() > idx._gen and read_generation(idx.path) == idx._gen:
                        ds.rollback_to(idx._gen)
                except DiskFullError:
                    pass   # the rows stay, unseen: this view reads as of the committed generation
                finally:
                    idx._lock.release()
        # Reads see exactly the committed generation, from a pinned snapshot: rows a
        # concurrent writer adds, deletes or purges later stay out of (or in) this view.
        ds.as_of = idx._gen
        ds.pin()
        if ds.purged_generation() > idx._gen:
            ds.unpin()
            raise _Stale(f"{idx.path}: the docstore moved past generation {idx._gen} while loading")
        if verify:
            problems = ds.integrity_problems(quick=True)
            if problems:
                raise IndexFormatError(f"{idx.path / DOCSTORE}: docstore is corrupt: {'; '.join(problems[:3])}")
            digest = (idx._manifest or {}).get("docstore_sha256")   # format 1 only
            if digest is not None and ds.content_checksum() != digest:
                raise IndexFormatError(f"{idx.path / DOCSTORE}: docstore content does not match the manifest "
                                       f"(generation {idx._gen}): the file is corrupt or was changed")
            verify_rows = getattr(ds, "verify_rows", None)
            bad = verify_rows(idx._gen) if verify_rows is not None else []
            if bad:
                raise IndexFormatError(f"{idx.path / DOCSTORE}: docstore is corrupt: {'; '.join(bad[:3])}")
            if ds.count() != int((idx._manifest or {}).get("counts", {}).get("chunks", ds.count())):
                raise IndexFormatError(f"{idx.path / DOCSTORE}: docstore does not hold the manifest's chunks")
        elif idx._manifest is not None and "chunks" in idx._manifest.get("counts", {}):
            # The committed view holds the manifest's count (the segments were checked against it);
            # counting a large docstore's rows here would be most of a load's time.
            ds.assume_count(int(idx._manifest["counts"]["chunks"]))
    except sqlite3.DatabaseError as e:
        raise IndexFormatError(f"{idx.path / DOCSTORE}: docstore is unreadable or corrupt ({e})") from None


def init_components(idx, fresh: bool) -> None:
    """The stores: opened from the committed segments, or (``fresh``) new and empty."""
    if idx._manifest is not None and not fresh:
        load_stores(idx)
        return
    cfg = idx.pipeline
    modes = cfg.modes
    idx.stores = {}
    idx._table = SegmentTable([], (idx._manifest or {}).get("next_segment", 1))
    idx._vocab_saved = 0
    enc = idx.encoder if any(MODES[m].neural for m in modes) else None
    remote = cfg.remote_modes() + (["docs"] if cfg.milvus.whole_index else [])
    if remote:   # Milvus, the one remote backend: its stores share one connection
        from hybridrag.stores.milvus import milvus_stores

        made = milvus_stores(cfg.milvus, enc.dim if "dense" in remote else None, idx.path,
                             from_index=idx._milvus_from_index, modes=remote, **idx._milvus_conn,
                             colbert_dim=MODES["colbert"].settings(cfg, enc)["dim"] if "colbert" in remote else None,
                             colbert_encoding=cfg.colbert.encoding,
                             bm25={"k1": cfg.bm25.k1, "b": cfg.bm25.b, "variant": cfg.bm25.variant})
        idx.stores.update({m: made[m] for m in remote})
        idx._milvus_conn = made[remote[0]].connection()
        if cfg.milvus.whole_index:   # before anything is written: the prefix must be this index's
            commit_mod.head_of(idx).check_owner()
    for mode in modes:
        if mode not in idx.stores:
            idx.stores[mode] = SegmentedStore({}, new_store(mode, cfg, enc), fresh_maker(idx, mode))


def fresh_maker(idx, mode: str, config: Mapping[str, Any] | None = None) -> Any:
    """How a mode's next fresh part is made: like its newest part (same settings and trained
    state: PQ codec, IVF quantizer) when the store kind can, else from its saved config. The
    store keeps this function: it holds the index weakly, or index and store would be a cycle
    that only the cyclic collector frees, and a closed index's memory-mapped segment files (an
    open descriptor each) stayed open until it ran (a writable server: ~5 per committed write)."""
    index = weakref.ref(idx)

    def make() -> Any:
        idx = index()
        if idx is None:   # pragma: no cover - a store outliving its index makes no new part
            raise RuntimeError(f"the index of the {mode!r} store is gone")
        store = idx.stores[mode]
        model = store.newest
        if hasattr(model, "empty_like"):
            return model.empty_like()
        return _store_from_config(store_class(idx, mode), config if config is not None else model.config())
    return make


def store_class(idx, mode: str) -> Any:
    if mode == "docs":   # [milvus] whole_index: the chunks' text, ids and metadata
        from hybridrag.stores.milvus_docs import MilvusDocsStore

        return MilvusDocsStore
    return _store_class(idx.pipeline.backend(mode), mode)


def load_stores(idx) -> None:
    """Open every committed segment of every store (memory-mapped; deletions applied in
    memory); files are checked for structure, not hashed (``load(verify=True)`` hashes)."""
    m = idx._manifest
    if m is None:
        raise IndexFormatError(f"{idx.path / MANIFEST}: no committed manifest to load stores from")
    idx.stores = {}
    gen = idx._gen
    idx._table = SegmentTable.open(idx.path, m, legacy_slots=lambda: idx.docstore.live_slots(as_of=gen))
    limit = int(m.get("counts", {}).get("next_slot", 0))   # a slot at or past it is damage
    for mode, entry in m["stores"].items():
        cls, config = store_class(idx, mode), entry.get("config", {})
        parts: dict[str, Any] = {}
        for seg in m["segments"]:
            sid, files = seg["id"], seg["files"].get(mode)
            if not isinstance(files, dict) or not files:
                raise IndexFormatError(f"{idx.path / MANIFEST}: segment {sid!r} has no files for {mode!r}")
            part = cls.load(idx.path, files, config, slot_limit=limit)
            dead = idx._table.deleted[sid]
            if dead.size:
                part.remove(dead)
            if len(part) != seg["rows"] - seg["deleted"]:
                raise IndexFormatError(f"{idx.path / sorted(files.values())[0]}: store {mode!r} segment {sid!r} "
                                       f"holds {len(part)} live rows, the manifest says "
                                       f"{seg['rows'] - seg['deleted']}")
            parts[sid] = part
        idx.stores[mode] = SegmentedStore(parts, None, fresh_maker(idx, mode, config))
        if parts:
            idx.stores[mode].fresh = idx.stores[mode]._new_fresh()
        else:
            idx.stores[mode].fresh = _store_from_config(cls, config)
    for mode, entry in m.get("remote", {}).items():
        files = entry["files"]
        # where Milvus is comes from the user, never from the manifest (docs/MILVUS.md)
        config = {**{k: v for k, v in entry.get("config", {}).items() if k not in ("uri", "token")},
                  **idx._milvus_conn}
        idx.stores[mode] = store_class(idx, mode).load(idx.path, files, config)
    # Read the BM25 vocabulary now, not at the first search: a writer may collect its files
    # once it commits a newer generation.
    idx._bm25_vocab = None
    idx._vocab_files = list(m.get("bm25_vocab") or [])
    if idx._vocab_files:
        terms: list[str] = []
        for name in idx._vocab_files:
            path = idx.path / name
            try:
                part = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise IndexFormatError(f"{path}: unreadable BM25 vocabulary ({e})") from None
            if not isinstance(part, list) or not set(map(type, part)) <= {str}:
                raise IndexFormatError(f"{path}: a BM25 vocabulary must be a JSON list of strings")
            terms += part
        vocab = dict(zip(terms, range(len(terms))))   # (a third faster than a comprehension)
        if len(vocab) != len(terms):
            raise IndexFormatError(f"{idx.path / idx._vocab_files[-1]}: BM25 vocabulary repeats a term")
        idx._bm25_vocab = vocab
    idx._vocab_saved = len(idx._bm25_vocab or {})


def create(cls, path: str | os.PathLike[str], pipeline: str | os.PathLike[str] | PipelineConfig | Mapping[str, Any],
           *, overwrite: bool = False, encoder: Any = None, reranker: Any = None,
           device: str | None = None, only_if_empty: bool = False) -> Any:
    """Create an empty index at ``path`` for ``pipeline``: a shipped pipeline's name (``"offline"``,
    ``"m3"``, ``"bm25-dense"``, ``"milvus"``), a TOML path, a :class:`PipelineConfig` or a dict.

    ``encoder``/``reranker`` may pass already-loaded models to share between indexes.
    Whether an index is already there is decided again once the write lock is held (loading
    the models can take seconds, in which another process may create one): without
    ``overwrite`` it is refused then too. ``only_if_empty`` (with ``overwrite``): replace an
    index only while it holds no document (``hybridrag ingest`` re-creating an empty index
    with another pipeline); else :class:`IndexFormatError`.
    """
    cfg = _as_pipeline(pipeline)
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise IndexFormatError(f"{str(p)!r} exists and is not a directory")
    if (p / MANIFEST).exists() and not overwrite:
        raise IndexFormatError(f"{str(p)!r} already holds an index; load it, or pass overwrite=True")
    # Everything that can be known before the first write is checked first, so a pipeline
    # that cannot work never leaves an index behind that refuses the fixed pipeline.
    _check_model_limits(cfg, encoder, reranker)
    made = [d for d in (p, *p.parents) if not d.exists()]
    p.mkdir(parents=True, exist_ok=True)
    lock = _Lock(p)
    try:
        lock.acquire()  # before removing anything: a live writer's index is not overwritten
    except BaseException:
        _remove_created(p, made, files=False)  # another writer's index: only our empty folders go
        raise
    import sqlite3

    existed = (p / MANIFEST).exists()
    if existed and not overwrite:   # another process created it since the check above
        lock.release()
        raise IndexFormatError(f"{str(p)!r} already holds an index (another process created it meanwhile); "
                               "load it, or pass overwrite=True")
    created_log = None   # [milvus]: the log of collections this directory made, when this create starts it
    if cfg.milvus.enabled:
        from hybridrag.stores.milvus import CREATED_LOG

        created_log = None if (p / CREATED_LOG).exists() else p / CREATED_LOG
    idx = None
    previous = None
    try:
        old = _milvus_collections(p)
        with contextlib.suppress(IndexFormatError):   # unreadable: there is no index to keep
            previous = read_manifest(p, missing_ok=True)
        try:
            idx = cls(p, cfg, None, encoder=encoder, reranker=reranker, device=device)
        except sqlite3.DatabaseError:  # the old docstore is unreadable: nothing to keep
            previous = None
            _remove_index_files(p)
            idx = cls(p, cfg, None, encoder=encoder, reranker=reranker, device=device)
        idx._lock = lock
        if only_if_empty and previous is not None and idx.docstore.count_documents():
            raise IndexFormatError(f"{str(p)!r} holds documents now (another process added them): "
                                   "not replaced")
        # The new stores first: a pipeline that cannot be built leaves an old index whole.
        init_components(idx, fresh=True)
        if previous is not None:
            _replace_previous(idx, previous)
        elif existed:
            from hybridrag.stores.docstore import DocStore

            idx.docstore.close()
            _remove_index_files(p)
            idx.docstore = DocStore(p / DOCSTORE)
        idx._dirty = True
        idx.commit()
    except BaseException:
        # Leave nothing that only `rm -rf` could clear: a new index's files and the
        # folders made go again (a failure here means no index was committed); an index
        # being overwritten stays whole until the new one's manifest replaces its own.
        undone = idx is None
        if idx is not None:
            if not _committed_since(p, previous):
                with contextlib.suppress(Exception):
                    _undo_create(idx, previous)
                    undone = True
            idx.close()
        lock.release()
        if not existed:
            if undone and created_log is not None:   # the collections it made are dropped: nothing to clean up
                with contextlib.suppress(OSError):
                    created_log.unlink(missing_ok=True)
            _remove_created(p, made, files=True)
        raise
    commit_mod.drop_milvus_collections(idx, old)
    return idx


def _replace_previous(idx, previous: dict[str, Any]) -> None:
    """Make the new, empty index one commit on top of the index it replaces (as Lucene's
    ``OpenMode.CREATE``): every old row is tombstoned at the next generation and segment ids
    go on, so the old files stay, still named by the old manifest, until the new manifest
    replaces it; garbage collection after that commit removes them."""
    gen = int(previous["generation"])
    ds = idx.docstore
    if ds.max_generation() > gen:
        ds.rollback_to(gen)   # a dead writer's uncommitted rows (the lock is ours)
    ds.delete_all(gen + 1)
    idx._gen = gen
    idx._manifest = {"generation": gen, "checksums": dict(previous["checksums"])}
    idx._table = SegmentTable([], previous.get("next_segment", 1))


def _committed_since(p: Path, previous: dict[str, Any] | None) -> bool:
    """Whether a manifest newer than ``previous`` (None: any manifest) is on disk."""
    try:
        now = read_manifest(p, missing_ok=True)
    except IndexFormatError:
        return False
    return now is not None and (previous is None or now["generation"] != previous["generation"])


def _undo_create(idx, previous: dict[str, Any] | None) -> None:
    """A create that failed before its commit: drop the Milvus collections it made (nothing
    refers to them) and restore the replaced index's docstore rows."""
    for store in idx.stores.values():
        if not isinstance(store, SegmentedStore) and hasattr(store, "drop"):
            store.drop()
    if previous is not None:
        idx.docstore.rollback_to(int(previous["generation"]))


def load(cls, path: str | os.PathLike[str], *, verify: bool = False, encoder: Any = None,
         reranker: Any = None, device: str | None = None, milvus_uri: str | None = None,
         milvus_token: str | None = None) -> Any:
    """Open the last committed state of the index at ``path``.

    Opening reads the manifest and maps the segment files; it checks their structure
    (sizes, headers, offsets and ids within bounds), not every byte, so it takes about the
    same time at any index size. ``verify=True`` also checks every file against the
    manifest's sha256 (reading each once; ``hybridrag check`` does this and more); a
    mismatch raises :class:`IndexFormatError` naming the file.
    ``milvus_uri`` / ``milvus_token`` (else ``$HYBRIDRAG_MILVUS_URI`` / ``$MILVUS_TOKEN``):
    where a Milvus-backed index's vectors are; required unless they are in a Milvus Lite
    file inside ``path`` (docs/MILVUS.md, "Security").
    """
    p = Path(path)
    if not (p / MANIFEST).exists() and (p / POINTER).is_file():   # a query node (attach)
        return attach(cls, p, collection=None, milvus_uri=milvus_uri, milvus_token=milvus_token,
                      encoder=encoder, reranker=reranker, device=device)
    deadline = time.monotonic() + _LOAD_PATIENCE_S
    same_gen = 0
    while True:
        manifest = _require_manifest(p)
        try:
            return open_index(cls, p, manifest, verify, encoder, reranker, device,
                             {k: v for k, v in (("uri", milvus_uri), ("token", milvus_token)) if v})
        except (IndexFormatError, OSError, _Stale):
            # A writer may have committed and collected the files of the manifest we read
            # between our reading it and opening them: open the new generation instead.
            # Every such retry means the writer made progress, so they are bounded by time,
            # not by count (a reader slower than a fast writer's commits needs several).
            now = read_manifest(p, missing_ok=True)
            if now is None or time.monotonic() > deadline:
                raise
            if now.get("generation") == manifest["generation"]:
                # Either the index is damaged (then every attempt fails the same way and
                # the error is raised) or a writer is between its manifest swap and our
                # next read: give it a moment, a few times at most.
                same_gen += 1
                if same_gen > _LOAD_SAME_GEN_RETRIES:
                    raise
                time.sleep(0.05 * same_gen)
            logger.debug("index %s moved to generation %s while loading; retrying", p, now.get("generation"))


def rebuild(cls, path: str | os.PathLike[str], *, pipeline: Any = None, encoder: Any = None,
            device: str | None = None, batch_size: int = 256, milvus_uri: str | None = None,
            milvus_token: str | None = None) -> Any:
    """:meth:`hybridrag.index.HybridIndex.rebuild` (documented there)."""
    import sqlite3

    p = Path(path)
    try:
        manifest = read_manifest(p)
    except IndexFormatError:
        if pipeline is None:
            raise
        manifest = None
    cfg = _as_pipeline(pipeline) if pipeline is not None else PipelineConfig.from_stored(
        manifest["pipeline"], source=f"{p / MANIFEST}")  # type: ignore[index]
    if not (p / DOCSTORE).is_file():
        raise IndexFormatError(f"{p / DOCSTORE}: missing; there is nothing to rebuild the index from")
    try:
        idx = cls(p, cfg, None, encoder=encoder, device=device)
    except sqlite3.DatabaseError as e:
        raise IndexFormatError(f"{p / DOCSTORE}: docstore is unreadable or corrupt ({e})") from None
    idx._milvus_conn = {k: v for k, v in (("uri", milvus_uri), ("token", milvus_token)) if v}
    idx._milvus_from_index = pipeline is None
    try:
        idx._lock.acquire()
        old = _milvus_collections(p)
        ds = idx.docstore
        problems = ds.integrity_problems()
        if problems:
            raise IndexFormatError(f"{p / DOCSTORE}: docstore is corrupt, cannot rebuild from it: "
                                   f"{'; '.join(problems[:3])}")
        gen = int(manifest["generation"]) if manifest is not None else ds.committed_generation()
        if gen < 0:
            raise IndexFormatError(f"{p / DOCSTORE}: no committed generation to rebuild")
        if ds.max_generation() > gen:
            ds.rollback_to(gen)
        if manifest is not None and manifest.get("docstore_sha256") not in (None, ds.content_checksum()):
            raise IndexFormatError(f"{p / DOCSTORE}: docstore content does not match the manifest; "
                                   "cannot rebuild from it")
        idx._gen = gen
        idx._manifest = None if manifest is None else dict(manifest, bm25_vocab=[])
        idx._vocab_files = []
        init_components(idx, fresh=True)
        slots = ds.live_slots()
        hashes = {d: h for d, h, _ in ds.documents()} if "docs" in idx.stores else {}
        from hybridrag.storage.migrate import _whole_documents

        for rows in _whole_documents(ds, slots, batch_size):   # a document's chunks together ([bm25] context)
            part = np.array([r["slot"] for r in rows], dtype=np.int64)
            write.encode_into_stores(idx, [r["text"] for r in rows], part, [r["doc_id"] for r in rows])
            if "docs" in idx.stores:   # [milvus] whole_index: the chunks themselves, in new collections too
                idx.stores["docs"].add(part, [dict(r, doc_hash=hashes.get(r["doc_id"])) for r in rows])
        idx._dirty = True
        idx.commit()
        commit_mod.drop_milvus_collections(idx, old)
    except sqlite3.DatabaseError as e:
        idx.close()
        raise IndexFormatError(f"{p / DOCSTORE}: docstore is unreadable or corrupt ({e})") from None
    except BaseException:
        idx.close()
        raise
    return idx


def _store_from_config(cls: Any, config: Mapping[str, Any]) -> Any:
    """An empty store of ``cls`` with the settings ``config()`` saved (unknown keys ignored)."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    try:
        return cls(**{k: v for k, v in config.items() if k in params})
    except (TypeError, ValueError) as e:
        raise IndexFormatError(f"bad {cls.__name__} settings in the manifest {dict(config)!r}: {e}") from None


def _milvus_collections(path: Path) -> list[str]:
    """The Milvus collections the committed index at ``path`` uses (none if unreadable)."""
    try:
        m = read_manifest(path, missing_ok=True)
    except IndexFormatError:
        return []
    if m is None or not m["pipeline"].get("milvus", {}).get("enabled"):
        return []
    out = [str(e.get("config", {}).get("collection")) for mode, e in m.get("remote", {}).items()
           if mode in ("dense", "sparse", "bm25", "colbert", "docs") and isinstance(e, dict)]
    if isinstance(m.get("remote", {}).get("bm25"), dict):   # BM25's terms collection beside its rows
        from hybridrag.stores.milvus import bm25_terms_name

        out.append(bm25_terms_name(str(m["remote"]["bm25"].get("config", {}).get("collection"))))
    return out


def attach(cls, path: str | os.PathLike[str], *, collection: str | None, milvus_uri: str | None = None,
           milvus_token: str | None = None, encoder: Any = None, reranker: Any = None,
           device: str | None = None) -> Any:
    """:meth:`hybridrag.index.HybridIndex.attach` (documented there); ``collection=None``: the
    one ``path``'s pointer file names."""
    from hybridrag.stores.milvus import TOKEN_ENV, URI_ENV, _is_server
    from hybridrag.stores.milvus_docs import MilvusDocView, MilvusHead

    p = Path(path)
    if (p / MANIFEST).exists():
        raise ConfigError(f"{str(p)!r} holds an index directory: open it with HybridIndex.load (attach makes "
                          "a query node in a directory of its own)")
    if (p.exists() or p.is_symlink()) and not p.is_dir():
        raise ConfigError(f"{str(p)!r} exists and is not a directory; a query node keeps its pointer file in a "
                          "directory of its own")
    pointer = p / POINTER
    if collection is None or pointer.exists():
        try:
            named = json.loads(pointer.read_text(encoding="utf-8"))["collection"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise IndexFormatError(f"{pointer}: not a query node's pointer file ({e})") from None
        if collection is not None and collection != named:
            raise ConfigError(f"{str(p)!r} is the query node of collection prefix {named!r}, not {collection!r}: "
                              "attach another directory (or remove this one first)")
        collection = named
    uri = milvus_uri or os.environ.get(URI_ENV) or None
    if uri is None:
        raise ConfigError(f"a query node needs to be told where Milvus is: pass milvus_uri=... (and milvus_token=... "
                          f"for a server; --milvus-uri on the command line) or set {URI_ENV} (and {TOKEN_ENV})")
    if not isinstance(uri, str):
        raise ConfigError(f"milvus uri must be a str, got {uri!r}")
    if not _is_server(uri):
        uri = str(Path(uri).expanduser().resolve())
    token = milvus_token or os.environ.get(TOKEN_ENV) or None
    head = MilvusHead(uri, token, collection, create=False)
    try:
        got = head.latest()
        if got is None:
            raise IndexFormatError(f"nothing is published under collection prefix {collection!r} at {uri!r} yet")
        gen, doc = got
        try:
            manifest, records = doc["manifest"], doc["records"]
            cfg = PipelineConfig.from_stored(manifest["pipeline"], source=f"{head.name} generation {gen}")
        except (KeyError, TypeError) as e:
            raise IndexFormatError(f"Milvus collection {head.name!r}: generation {gen} is not a manifest ({e})") \
                from None
        p.mkdir(parents=True, exist_ok=True)
        if not pointer.exists():
            from hybridrag.stores.base import new_file

            new_file(p, POINTER, lambda f: f.write_text(json.dumps({"collection": collection}), encoding="utf-8"))
        idx = cls(p, cfg, manifest, encoder=encoder, reranker=reranker, device=device, read_only=True,
                  docstore=_Closed())
    except BaseException:
        head.close()
        raise
    idx._attached = head
    idx._milvus_conn = {"uri": uri, **({"token": token} if token else {})}
    try:
        for mode in manifest.get("remote", {}):
            if mode not in records:
                raise IndexFormatError(f"Milvus collection {head.name!r}: generation {gen} has no record of {mode!r}")
            config = {**{k: v for k, v in records[mode].get("config", {}).items() if k not in ("uri", "token")},
                      **idx._milvus_conn}
            idx.stores[mode] = store_class(idx, mode).from_record(records[mode], p, config,
                                                                  source=f"{head.name} generation {gen}")
        if "docs" not in idx.stores or set(idx.stores) - {"docs"} != set(cfg.modes):
            raise IndexFormatError(f"generation {gen} under {collection!r} does not hold the whole index in Milvus "
                                   f"(stores {sorted(idx.stores)}, modes {cfg.modes})")
        idx.docstore = MilvusDocView(idx.stores["docs"], manifest)
    except BaseException:
        idx.close()
        raise
    return idx


class _Closed:
    """A placeholder docstore while a query node's stores open."""

    as_of = None

    def close(self) -> None:
        pass


def _require_manifest(path: Path) -> dict[str, Any]:
    """:func:`read_manifest` for callers that need one: a missing manifest is an error."""
    manifest = read_manifest(path)
    if manifest is None:  # read_manifest raises when missing_ok is False; kept explicit for -O
        raise IndexFormatError(f"{str(path)!r} is not an index: {MANIFEST} is missing")
    return manifest


def _check_model_limits(cfg: PipelineConfig, encoder: Any = None, reranker: Any = None) -> None:
    """Check the pipeline's token lengths against what its models can embed (their position
    tables, read from ``config.json`` alone; no weights are loaded) before anything is written."""
    from hybridrag.encoders.base import model_capacity, resolve_model_folder
    from hybridrag.errors import ModelLoadError

    checks: list[tuple[str, str, Any, list[tuple[str, int]]]] = []
    if cfg.encoder.kind != "none":
        e = cfg.encoder
        checks.append(("encoder", e.model, encoder, [("chunking.max_tokens", cfg.chunking.max_tokens + 2),
                                                     ("encoder.max_length", e.max_length),
                                                     ("encoder.query_max_length", e.query_max_length)]))
    if cfg.rerank.enabled:
        checks.append(("reranker", cfg.rerank.model, reranker, [("rerank.max_length", cfg.rerank.max_length)]))
    for role, model, given, lengths in checks:
        capacity = getattr(given, "capacity", None)
        if given is not None and not isinstance(capacity, int):
            continue  # a model passed in already loaded, that does not say: its own checks apply
        if given is None:
            from transformers import AutoConfig

            folder = resolve_model_folder(resolve_model_path(model))
            try:
                capacity = model_capacity(AutoConfig.from_pretrained(folder))
            except (OSError, ValueError, KeyError) as exc:
                raise ModelLoadError(f"{role} model {model!r}: cannot read its config.json ({exc})") from None
        for key, need in lengths:
            if need > capacity:
                value = need - 2 if key == "chunking.max_tokens" else need
                extra = " plus 2 special tokens" if key == "chunking.max_tokens" else ""
                raise ConfigError(f"{key} = {value}{extra} is more than the {capacity} tokens the {role} model "
                                  f"{model!r} can embed (its max_position_embeddings); lower {key}")


def _remove_created(p: Path, made: Sequence[Path], files: bool) -> None:
    """Undo a failed create: the index files and lock file (``files``), the folders it made."""
    with contextlib.suppress(OSError):
        if files:
            _remove_index_files(p)
            (p / commit_mod.LOCKFILE).unlink(missing_ok=True)
        for d in made:  # deepest first; a folder someone else filled meanwhile stays
            d.rmdir()


def _remove_index_files(p: Path) -> None:
    """Remove an old index's docstore and store files; its manifest stays until the new
    index's commit replaces it (so a failed create never leaves a directory without one)."""
    for f in p.iterdir():
        if f.is_file() and (f.name == f"{MANIFEST}.tmp" or f.name.startswith(DOCSTORE)
                            or commit_mod.STORE_FILE.search(f.name)):
            f.unlink()


class _Stale(Exception):
    """Internal: a concurrent commit overtook a load in progress (it is retried)."""

def _as_pipeline(p: Any) -> PipelineConfig:
    if isinstance(p, PipelineConfig):
        return p
    if isinstance(p, Mapping):
        return PipelineConfig.from_dict(dict(p))
    if isinstance(p, (str, os.PathLike)):
        return load_pipeline(p)
    raise TypeError(f"pipeline must be a path to a TOML file, a PipelineConfig or a dict, got {type(p).__name__}")


def stats(idx) -> dict[str, Any]:
    """:meth:`HybridIndex.stats`: counts, generation, pipeline, modes, segments, bytes per store."""
    m = idx._manifest or {}
    files: dict[str, list[str]] = {}
    for seg in m.get("segments", []):
        for mode, fs in seg["files"].items():
            files.setdefault(mode, []).extend(fs.values())
    for mode, entry in m.get("remote", {}).items():
        files.setdefault(mode, []).extend(entry["files"].values())
    sizes = {mode: sum((idx.path / f).stat().st_size for f in names if (idx.path / f).exists())
             for mode, names in files.items()}
    db = idx.path / DOCSTORE
    if idx._attached is None:   # a query node has none: its chunks are the docs collection's
        sizes["docstore"] = sum(f.stat().st_size for f in idx.path.glob(db.name + "*")) if db.exists() else 0
    remote = {mode: store.describe() for mode, store in idx.stores.items() if hasattr(store, "describe")}
    return {
        "path": str(idx.path), "pipeline": idx.pipeline.name, "modes": idx.pipeline.modes,
        "pipeline_version": next(v.version for v in idx.pipeline_versions() if v.active),
        "generation": idx._gen, "documents": idx.docstore.count_documents(),
        "chunks": idx.docstore.count(), "format_version": m.get("format_version", FORMAT_VERSION),
        "library_version": m.get("library_version", __version__), "bytes": sizes,
        "models": {k: v.get("name") for k, v in m.get("models", {}).items()},
        "segments": [{"id": e["id"], "rows": e["rows"], "deleted": e["deleted"]} for e in m.get("segments", [])],
        "milvus": remote,
    }
