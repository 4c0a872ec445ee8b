"""HybridIndex: the engine. Chunks documents, encodes them once, keeps every store in step,
plans and fuses searches, reranks, and persists all of it as one directory.

On disk (``docs/DESIGN.md``, "On disk")::

    INDEX/
      manifest.json              format + library version, pipeline, models, counts, files, checksums
      docstore.sqlite            chunk text, doc id, metadata, char span, content hash (SQLite)
      <mode>.g<N>.*              one set of files per store, written fresh at generation N
      LOCK                       the writer's lock (flock + pid)

A write (``add``/``upsert``/``delete``) goes to new store files and to docstore rows
tagged with the next generation; :meth:`HybridIndex.commit` makes it visible by
atomically replacing ``manifest.json``. Loading rolls the docstore back to the
manifest's generation, so a crash at any point leaves the last committed state whole.

Tested in ``tests/test_index.py`` (conformance, persistence, filters, search against
brute force) and ``tests/test_cli.py``.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybridrag import __version__
from hybridrag.config import PipelineConfig, load_pipeline, resolve_model_path
from hybridrag.errors import (
    ConfigError,
    DocumentError,
    IndexFormatError,
    IndexLockedError,
)
from hybridrag.search import encode, execute, planner
from hybridrag.search.options import SearchOptions
from hybridrag.search.plan import make_plan
from hybridrag.types import Chunk, Document, Hit, SearchResults

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DOCSTORE = "docstore.sqlite"
LOCKFILE = "LOCK"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
MAX_ID_CHARS = 1024
# Metadata nested deeper than this is refused (DocumentError): JSON encoders, SQLite's json1
# and every recursive walk would otherwise hit Python's recursion limit on hostile input.
MAX_METADATA_DEPTH = 64
# Every file a store writes carries "<mode>.g<generation>" in its name (the save tag).
_STORE_FILE = re.compile(r"(dense|sparse|bm25|colbert)\.g\d+")
# A reader retries its load while a writer's commits keep replacing the files it is opening
# (each retry opens the newer generation), for up to _LOAD_PATIENCE_S; a failure with no newer
# generation (a damaged index, or a writer between its manifest swap and our read) is retried
# _LOAD_SAME_GEN_RETRIES times with a short sleep, then raised.
_LOAD_PATIENCE_S = 60.0
_LOAD_SAME_GEN_RETRIES = 3


class _Stale(Exception):
    """Internal: a concurrent commit overtook a load in progress (it is retried)."""


@dataclass
class AddResult:
    """What one ``add``/``upsert`` call did."""

    added: list[str] = field(default_factory=list)      # new or replaced document ids
    unchanged: list[str] = field(default_factory=list)  # skipped: same content hash already indexed
    chunks: int = 0                                      # chunks written
    empty: list[str] = field(default_factory=list)      # documents with no text to index
    # errors="skip" only: (position in the call, id or None, reason) of each refused document
    failed: list[tuple[int, str | None, str]] = field(default_factory=list)

    def merge(self, other: "AddResult") -> None:
        self.added += other.added
        self.unchanged += other.unchanged
        self.chunks += other.chunks
        self.empty += other.empty
        self.failed += other.failed


def _check_depth(metadata: Mapping[str, Any], what: str) -> None:
    """Refuse metadata nested deeper than MAX_METADATA_DEPTH (checked without recursion)."""
    stack: list[tuple[Any, int]] = [(metadata, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            raise DocumentError(f"{what}: metadata is nested more than {MAX_METADATA_DEPTH} levels deep")
        if isinstance(value, Mapping):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)


def content_hash(text: str, metadata: Mapping[str, Any]) -> str:
    """sha256 of a document's text and metadata (what decides "unchanged")."""
    _check_depth(metadata, "content_hash")
    h = hashlib.sha256()
    h.update(text.encode("utf-8", "surrogatepass"))
    h.update(b"\0")
    h.update(json.dumps(metadata, sort_keys=True, ensure_ascii=True, default=str).encode())
    return h.hexdigest()


def as_document(obj: Any, position: int = 0) -> Document:
    """Accept a :class:`Document`, a mapping with ``id``/``text``/``metadata``, or an object with
    those attributes (e.g. a LlamaIndex or LangChain document adapted by a connector)."""
    if isinstance(obj, Document):
        doc = obj
    elif isinstance(obj, Mapping):
        unknown = set(obj) - {"id", "text", "metadata"}
        if unknown:
            raise DocumentError(f"document {position}: unknown key(s) {sorted(unknown)}; "
                                "a document is {'id', 'text', 'metadata'}")
        if "id" not in obj or "text" not in obj:
            raise DocumentError(f"document {position}: needs 'id' and 'text', got keys {sorted(obj)}")
        meta = obj.get("metadata")
        # None means "no metadata"; any other non-mapping (a list, a string, 0) is an error
        # below, never silently replaced by {}.
        doc = Document(obj["id"], obj["text"], {} if meta is None else meta)
    else:
        raise TypeError(f"document {position}: expected a dict or hybridrag.Document, got {type(obj).__name__}")
    if not isinstance(doc.id, str) or not doc.id or len(doc.id) > MAX_ID_CHARS or doc.id != doc.id.strip():
        raise DocumentError(f"document {position}: id must be a non-empty string of at most {MAX_ID_CHARS} "
                            f"characters without surrounding whitespace, got {doc.id!r:.80}")
    if "\0" in doc.id:
        raise DocumentError(f"document {position}: id contains a NUL character: {doc.id!r:.80}")
    try:
        doc.id.encode("utf-8")
    except UnicodeEncodeError:
        raise DocumentError(f"document {position}: id contains a lone surrogate (not valid UTF-8): "
                            f"{doc.id!r:.80}") from None
    if not isinstance(doc.text, str):
        raise DocumentError(f"document {doc.id!r}: text must be a string, got {type(doc.text).__name__}")
    if not isinstance(doc.metadata, Mapping):
        raise DocumentError(f"document {doc.id!r}: metadata must be a dict, got {type(doc.metadata).__name__}")
    _check_depth(doc.metadata, f"document {doc.id!r}")
    try:
        json.dumps(doc.metadata, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise DocumentError(f"document {doc.id!r}: metadata is not JSON-serialisable: {e}") from None
    for key in doc.metadata:
        if not isinstance(key, str):
            raise DocumentError(f"document {doc.id!r}: metadata keys must be strings, got {key!r}")
    return doc


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _model_fingerprint(resolved: str) -> dict[str, Any]:
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


class _Lock:
    """An exclusive writer lock: ``flock`` on ``LOCK`` (released by the kernel when the
    holder dies, so a stale lock from a dead process is taken over) plus the holder's pid."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCKFILE
        self.fd: int | None = None

    def acquire(self) -> None:
        if self.fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                if holder == f"pid={os.getpid()} host={os.uname().nodename}":
                    raise IndexLockedError(
                        f"index {str(self.path.parent)!r} is being written by this process ({holder}) through "
                        "another HybridIndex object of the same directory: write through that open object, "
                        "or close() it first") from None
                raise IndexLockedError(f"index {str(self.path.parent)!r} is being written by another process "
                                       f"({holder}); wait for it to finish") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()} host={os.uname().nodename}".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class HybridIndex:
    """A hybrid index on disk. Create with :meth:`create`, open with :meth:`load`.

    ``search`` is a thin wrapper over ``search_batch``. Writes are committed at the end
    of each call unless ``commit=False`` is passed (then call :meth:`commit`).
    """

    def __init__(self, path: Path, pipeline: PipelineConfig, manifest: dict[str, Any] | None,
                 encoder: Any = None, reranker: Any = None, device: str | None = None) -> None:
        self.path = path
        self.pipeline = pipeline
        self._device = device or (pipeline.encoder.device or None)
        self._encoder = encoder
        self._reranker = reranker
        self._bm25: Any = None
        self._bm25_vocab: dict[str, int] | None = None
        self._chunker: Any = None
        self.stores: dict[str, Any] = {}
        self._lock = _Lock(path)
        self._manifest = manifest
        self._gen = int(manifest["generation"]) if manifest else 0
        self._dirty = False
        # Milvus connection settings the user gave (never read from the index alone).
        self._milvus_conn: dict[str, str] = {}
        self._milvus_from_index = False  # the [milvus] section came from the manifest
        from hybridrag.stores.docstore import DocStore

        self.docstore = DocStore(path / DOCSTORE)

    # ------------------------------------------------------------------ creation / loading
    @classmethod
    def create(cls, path: str | os.PathLike[str], pipeline: str | os.PathLike[str] | PipelineConfig | Mapping[str, Any],
               *, overwrite: bool = False, encoder: Any = None, reranker: Any = None,
               device: str | None = None) -> "HybridIndex":
        """Create an empty index at ``path`` for ``pipeline``: a shipped pipeline's name (``"offline"``,
        ``"m3"``, ``"bm25-dense"``, ``"milvus"``), a TOML path, a :class:`PipelineConfig` or a dict.

        ``encoder``/``reranker`` may pass already-loaded models to share between indexes.
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
        idx = None
        try:
            old = _milvus_collections(p)
            try:
                idx = cls(p, cfg, None, encoder=encoder, reranker=reranker, device=device)
            except sqlite3.DatabaseError:  # the old docstore is unreadable: nothing to keep
                _remove_index_files(p)
                idx = cls(p, cfg, None, encoder=encoder, reranker=reranker, device=device)
            idx._lock = lock
            # The new stores first: a pipeline that cannot be built leaves an old index whole.
            # Its manifest is only replaced by the new one's commit, and its Milvus collections
            # are dropped after that.
            idx._init_components(fresh=True)
            if existed:
                from hybridrag.stores.docstore import DocStore

                idx.docstore.close()
                _remove_index_files(p)
                idx.docstore = DocStore(p / DOCSTORE)
            idx._dirty = True
            idx.commit()
        except BaseException:
            # Leave nothing that only `rm -rf` could clear: a new index's files and the
            # folders made go again (a failure here means no index was committed); an index
            # being overwritten keeps its manifest, and create(overwrite=True) can run again.
            if idx is not None:
                idx.close()
            lock.release()
            if not existed:
                _remove_created(p, made, files=True)
            raise
        idx._drop_milvus_collections(old)
        return idx
        return idx

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, verify: bool = True, encoder: Any = None,
             reranker: Any = None, device: str | None = None, milvus_uri: str | None = None,
             milvus_token: str | None = None) -> "HybridIndex":
        """Open the last committed state of the index at ``path``.

        ``verify`` checks every store file against the manifest's sha256 (reads each file
        once); a mismatch raises :class:`IndexFormatError` naming the file.
        ``milvus_uri`` / ``milvus_token`` (else ``$HYBRIDRAG_MILVUS_URI`` / ``$MILVUS_TOKEN``):
        where a Milvus-backed index's vectors are; required unless they are in a Milvus Lite
        file inside ``path`` (docs/MILVUS.md, "Security").
        """
        p = Path(path)
        deadline = time.monotonic() + _LOAD_PATIENCE_S
        same_gen = 0
        while True:
            manifest = _require_manifest(p)
            try:
                return cls._open(p, manifest, verify, encoder, reranker, device,
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

    @classmethod
    def _open(cls, p: Path, manifest: dict[str, Any], verify: bool, encoder: Any, reranker: Any,
              device: str | None, milvus_conn: dict[str, str] | None = None) -> "HybridIndex":
        if verify:
            verify_files(p, manifest)
        cfg = PipelineConfig.from_stored(manifest["pipeline"], source=f"{p / MANIFEST}")
        import sqlite3

        try:
            idx = cls(p, cfg, manifest, encoder=encoder, reranker=reranker, device=device)
        except sqlite3.DatabaseError as e:
            raise IndexFormatError(f"{p / DOCSTORE}: docstore is unreadable or corrupt ({e})") from None
        idx._milvus_conn = dict(milvus_conn or {})
        try:
            idx._check_docstore(verify)
            idx._init_components(fresh=False)
            want = int(manifest.get("counts", {}).get("chunks", -1))
            for mode, store in idx.stores.items():
                if want >= 0 and len(store) != want and not cfg.milvus.enabled:
                    raise IndexFormatError(f"{p / MANIFEST}: store {mode!r} holds {len(store)} rows, the manifest "
                                           f"says {want} chunks")
        except BaseException:
            idx.close()
            raise
        return idx

    def _check_docstore(self, verify: bool = True) -> None:
        import sqlite3

        ds = self.docstore
        try:
            if ds.max_generation() > self._gen:
                # An uncommitted write left rows tagged with a later generation. Undo it when no
                # live writer holds the lock; otherwise it is that writer's work in progress.
                try:
                    self._lock.acquire()
                except IndexLockedError:
                    pass
                else:
                    try:
                        if ds.max_generation() > self._gen and self._on_disk_generation() == self._gen:
                            ds.rollback_to(self._gen)
                    finally:
                        self._lock.release()
            # Reads see exactly the committed generation, from a pinned snapshot: rows a
            # concurrent writer adds, deletes or purges later stay out of (or in) this view.
            ds.as_of = self._gen
            ds.pin()
            if ds.purged_generation() > self._gen:
                ds.unpin()
                raise _Stale(f"{self.path}: the docstore moved past generation {self._gen} while loading")
            if verify:
                problems = ds.integrity_problems(quick=True)
                if problems:
                    raise IndexFormatError(f"{self.path / DOCSTORE}: docstore is corrupt: {'; '.join(problems[:3])}")
                digest = (self._manifest or {}).get("docstore_sha256")
                if digest is not None and ds.content_checksum() != digest:
                    raise IndexFormatError(f"{self.path / DOCSTORE}: docstore content does not match the manifest "
                                           f"(generation {self._gen}): the file is corrupt or was changed")
            elif ds.count() != int((self._manifest or {}).get("counts", {}).get("chunks", ds.count())):
                raise IndexFormatError(f"{self.path / DOCSTORE}: docstore does not hold the manifest's chunks")
        except sqlite3.DatabaseError as e:
            raise IndexFormatError(f"{self.path / DOCSTORE}: docstore is unreadable or corrupt ({e})") from None

    @classmethod
    def rebuild(cls, path: str | os.PathLike[str], *, pipeline: Any = None, encoder: Any = None,
                device: str | None = None, batch_size: int = 256, milvus_uri: str | None = None,
                milvus_token: str | None = None) -> "HybridIndex":
        """Recover damaged or missing store files: re-encode every committed chunk text in the
        docstore into fresh stores and commit them as a new generation.

        The pipeline comes from the manifest; pass ``pipeline`` (the one the index was built
        with) when the manifest itself is lost or corrupt. The docstore must be intact: a
        docstore that fails SQLite's integrity check or the manifest's content checksum raises
        :class:`IndexFormatError`. Returns the index, holding the writer lock (close it).
        A Milvus-backed index gets new collections (``milvus_uri`` / ``milvus_token`` as in
        :meth:`load` unless ``pipeline`` names them); the old ones it owns are dropped after
        the commit.
        """
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
            idx._manifest = None if manifest is None else dict(manifest, bm25_vocab=None)
            idx._init_components(fresh=True)
            slots = ds.live_slots()
            for i in range(0, len(slots), batch_size):
                part = slots[i:i + batch_size]
                idx._encode_into_stores([r["text"] for r in ds.get(part)], part)
            idx._dirty = True
            idx.commit()
            idx._drop_milvus_collections(old)
        except sqlite3.DatabaseError as e:
            idx.close()
            raise IndexFormatError(f"{p / DOCSTORE}: docstore is unreadable or corrupt ({e})") from None
        except BaseException:
            idx.close()
            raise
        return idx

    def _on_disk_generation(self) -> int | None:
        m = read_manifest(self.path, missing_ok=True)
        return None if m is None else int(m["generation"])

    def _init_components(self, fresh: bool) -> None:
        cfg = self.pipeline
        modes = cfg.modes
        if self._manifest is not None and not fresh:
            self._load_stores()
        else:
            self.stores = {}
            from hybridrag.stores.faiss import FaissStore
            from hybridrag.stores.multivector import MultiVectorStore
            from hybridrag.stores.sparse import SparseIndex

            enc = self.encoder if any(m in modes for m in ("dense", "sparse", "colbert")) else None
            if cfg.milvus.enabled and ("dense" in modes or "sparse" in modes):
                from hybridrag.stores.milvus import milvus_stores

                remote = milvus_stores(cfg.milvus, enc.dim if "dense" in modes else None, self.path,
                                       from_index=self._milvus_from_index, **self._milvus_conn)
                self.stores.update({m: remote[m] for m in ("dense", "sparse") if m in modes})
                self._milvus_conn = remote["sparse"].connection()
            if "dense" in modes and "dense" not in self.stores:
                self.stores["dense"] = FaissStore(enc.dim, factory=cfg.dense.index)
            if "sparse" in modes and "sparse" not in self.stores:
                self.stores["sparse"] = SparseIndex(weighting="none")
            if "bm25" in modes:
                self.stores["bm25"] = SparseIndex(weighting=f"bm25{cfg.bm25.variant}", k1=cfg.bm25.k1,
                                                  b=cfg.bm25.b, epsilon=cfg.bm25.epsilon)
            if "colbert" in modes:
                dim = getattr(enc, "colbert_dim", None) or enc.dim
                self.stores["colbert"] = MultiVectorStore(dim, encoding=cfg.colbert.encoding,
                                                          pq_train_tokens=cfg.colbert.pq_train_tokens,
                                                          pq_train_pool=cfg.colbert.pq_train_pool)

    def _store_class(self, mode: str) -> Any:
        from hybridrag.stores.faiss import FaissStore
        from hybridrag.stores.multivector import MultiVectorStore
        from hybridrag.stores.sparse import SparseIndex

        if self.pipeline.milvus.enabled and mode in ("dense", "sparse"):
            from hybridrag.stores.milvus import MilvusDenseStore, MilvusSparseStore

            return {"dense": MilvusDenseStore, "sparse": MilvusSparseStore}[mode]
        return {"dense": FaissStore, "sparse": SparseIndex, "bm25": SparseIndex, "colbert": MultiVectorStore}[mode]

    def _load_stores(self) -> None:
        if self._manifest is None:
            raise IndexFormatError(f"{self.path / MANIFEST}: no committed manifest to load stores from")
        self.stores = {}
        for mode, entry in self._manifest["stores"].items():
            files = entry["files"]
            for name in files.values():
                _check_name(self.path, name)
            config = entry.get("config", {})
            if self.pipeline.milvus.enabled and mode in ("dense", "sparse"):
                # where Milvus is comes from the user, never from the manifest (docs/MILVUS.md)
                config = {**{k: v for k, v in config.items() if k not in ("uri", "token")}, **self._milvus_conn}
            self.stores[mode] = self._store_class(mode).load(self.path, files, config)
        # Read the BM25 vocabulary now, not at the first search: a writer may collect the
        # file once it commits a newer generation.
        self._bm25_vocab = None
        saved = self._manifest.get("bm25_vocab")
        if saved:
            from hybridrag.encoders.bm25 import BM25Encoder

            _check_name(self.path, saved)
            probe = BM25Encoder()
            probe.load_vocabulary(self.path / saved)
            self._bm25_vocab = dict(probe.vocabulary)

    # ------------------------------------------------------------------ components
    @property
    def encoder(self) -> Any:
        """The neural encoder (M3Encoder or DenseEncoder), loaded on first use."""
        if self._encoder is None and self.pipeline.encoder.kind != "none":
            e = self.pipeline.encoder
            path = resolve_model_path(e.model)
            dtype = e.dtype or None
            if e.kind == "m3":
                from hybridrag.encoders.m3 import M3Encoder

                self._encoder = M3Encoder.from_pretrained(path, device=self._device, dtype=dtype,
                                                          query_cache=e.query_cache)
            else:
                from hybridrag.encoders.dense import DenseEncoder

                self._encoder = DenseEncoder.from_pretrained(
                    path, device=self._device, dtype=dtype, pooling=e.pooling or None,
                    normalize=e.normalize, query_instruction=e.query_instruction or None,
                    query_cache=e.query_cache)
            self._check_model(path)
        return self._encoder

    def _check_model(self, resolved: str) -> None:
        if self._manifest is None:
            return
        saved = self._manifest.get("models", {}).get("encoder", {})
        now = _model_fingerprint(resolved)
        if saved.get("fingerprint") and now.get("fingerprint") and saved["fingerprint"] != now["fingerprint"]:
            raise IndexFormatError(
                f"the encoder at {resolved!r} is not the one this index was built with "
                f"({saved.get('resolved')!r}, revision {saved.get('revision', 'unknown')}); "
                "queries would not match the stored vectors")

    @property
    def reranker(self) -> Any:
        if self._reranker is None:
            r = self.pipeline.rerank
            from hybridrag.rerankers.cross_encoder import CrossEncoderReranker

            self._reranker = CrossEncoderReranker.from_pretrained(
                resolve_model_path(r.model), device=self._device, dtype=r.dtype or None, max_length=r.max_length)
        return self._reranker

    @property
    def bm25(self) -> Any:
        if self._bm25 is None:
            from hybridrag.analysis import SubwordAnalyzer, UnicodeAnalyzer, WordAnalyzer
            from hybridrag.encoders.bm25 import BM25Encoder

            c = self.pipeline.bm25
            saved = (self._manifest or {}).get("bm25_vocab")
            if c.analyzer == "subword":
                analyzer: Any = SubwordAnalyzer(self.encoder.tokenizer)
            elif c.analyzer == "unicode":
                analyzer = UnicodeAnalyzer(lowercase=True, language=c.language or c.stemmer or None,
                                           stopwords=c.stopwords or None)
            else:
                analyzer = WordAnalyzer(lowercase=True, stopwords=c.stopwords or None, stemmer=c.stemmer or None)
            enc = BM25Encoder(analyzer, variant=c.variant, k1=c.k1, b=c.b, epsilon=c.epsilon)
            if self._bm25_vocab is not None:
                enc.vocabulary = dict(self._bm25_vocab)
            elif saved:
                _check_name(self.path, saved)
                enc.load_vocabulary(self.path / saved)
            self._bm25 = enc
        return self._bm25

    @property
    def chunker(self) -> Any:
        if self._chunker is None:
            from hybridrag.chunking import Chunker

            c = self.pipeline.chunking
            tok = self.encoder.tokenizer if self.pipeline.encoder.kind != "none" else None
            if tok is not None and c.max_tokens + 2 > self.pipeline.encoder.max_length:
                raise ConfigError(
                    f"chunking.max_tokens = {c.max_tokens} does not fit encoder.max_length = "
                    f"{self.pipeline.encoder.max_length} (2 positions go to special tokens)")
            self._chunker = Chunker(tokenizer=tok, max_tokens=c.max_tokens, overlap=c.overlap)
        return self._chunker

    # ------------------------------------------------------------------ writes
    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        self._lock.acquire()
        on_disk = read_manifest(self.path, missing_ok=True) if self._manifest is not None else None
        if on_disk is not None and int(on_disk["generation"]) != self._gen:
            raise IndexLockedError(
                f"index {str(self.path)!r} was changed by another writer (generation {on_disk['generation']} "
                f"on disk, {self._gen} here); load it again before writing")
        if self.docstore.as_of is not None:
            # This index was opened as a reader: switch to the writer's view, first undoing what
            # a writer that died after we loaded left uncommitted.
            self.docstore.unpin()
            self.docstore.as_of = None
            if not self._dirty and self.docstore.max_generation() > self._gen:
                self.docstore.rollback_to(self._gen)
        yield

    @contextlib.contextmanager
    def _undo_on_error(self) -> Iterator[None]:
        """A write that fails part-way may have changed the in-memory stores and docstore rows:
        go back to the last committed state (uncommitted earlier writes are dropped too)."""
        try:
            yield
        except BaseException:
            if self._manifest is not None and self._lock.fd is not None:
                logger.warning("write to %s failed; rolling back to generation %d", self.path, self._gen)
                self.docstore.rollback_to(self._gen)
                self._bm25 = None
                self._init_components(fresh=False)
                self._dirty = False
            raise

    def add(self, documents: Iterable[Any], *, commit: bool = True, batch_size: int = 256,
            progress: Any = None, errors: str = "raise") -> AddResult:
        """Add documents. A document whose id is already indexed with the same content is
        skipped (``unchanged``); with different content it is an error: use :meth:`upsert`.

        ``errors="raise"`` (default): a bad document (malformed, a duplicate id within the
        call, over ``chunking.max_document_bytes`` or ``max_chunks_per_document``) raises
        :class:`DocumentError` naming it and nothing of the call is written.
        ``errors="skip"``: such documents are left out and listed in ``AddResult.failed``
        as ``(position in the call, id or None, reason)``; the others are written (a
        repeated id keeps its first occurrence).
        ``progress``: ``None``/``False`` (quiet), ``True`` (a tqdm bar on stderr counting
        documents, with a total when ``documents`` has a length), or a callable called with
        the number of chunks each batch wrote (e.g. a tqdm bar's ``update``).
        """
        return self._write_docs(documents, replace=False, commit=commit, batch_size=batch_size, progress=progress,
                                errors=errors)

    def upsert(self, documents: Iterable[Any], *, commit: bool = True, batch_size: int = 256,
               progress: Any = None, errors: str = "raise") -> AddResult:
        """Add documents, replacing every chunk of a document whose content changed
        (``errors`` and ``progress`` as in :meth:`add`)."""
        return self._write_docs(documents, replace=True, commit=commit, batch_size=batch_size, progress=progress,
                                errors=errors)

    def _write_docs(self, documents: Iterable[Any], replace: bool, commit: bool, batch_size: int,
                    progress: Any, errors: str = "raise") -> AddResult:
        if isinstance(documents, (str, bytes, Mapping, Document)):
            raise TypeError("documents must be an iterable of documents (a list), not a single "
                            f"{type(documents).__name__}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
        skip = errors == "skip"
        bar = None
        if progress is True:
            from tqdm import tqdm

            total = len(documents) if isinstance(documents, Sized) else None
            bar = tqdm(total=total, unit=" docs", desc="add" if not replace else "upsert", dynamic_ncols=True)
            progress = None
        elif progress is False:
            progress = None
        elif progress is not None and not callable(progress):
            raise TypeError(f"progress must be True, False, None or a callable taking a chunk count, "
                            f"got {type(progress).__name__} {progress!r}")
        result = AddResult()
        with contextlib.nullcontext() if bar is None else bar, self._writing(), self._undo_on_error():
            batch: list[tuple[int, Document]] = []
            seen: dict[str, int] = {}
            for i, obj in enumerate(documents):
                try:
                    doc = as_document(obj, i)
                    if doc.id in seen:
                        raise DocumentError(f"document id {doc.id!r} appears twice in one call "
                                            f"(positions {seen[doc.id]} and {i})")
                except (DocumentError, TypeError) as e:
                    if not skip:
                        raise
                    raw = obj.get("id") if isinstance(obj, Mapping) else getattr(obj, "id", None)
                    result.failed.append((i, raw if isinstance(raw, str) else None, str(e)))
                    continue
                seen[doc.id] = i
                batch.append((i, doc))
                if len(batch) >= batch_size:
                    result.merge(self._write_batch(batch, replace, progress, skip))
                    if bar is not None:
                        bar.update(len(batch))
                    batch = []
            if batch:
                result.merge(self._write_batch(batch, replace, progress, skip))
                if bar is not None:
                    bar.update(len(batch))
            if commit:
                self.commit()
        return result

    def _write_batch(self, docs: list[tuple[int, Document]], replace: bool, progress: Any,
                     skip: bool = False) -> AddResult:
        # Every per-document check runs before anything is written, so a refused document
        # (errors="skip") leaves the batch's other documents to be written whole.
        res = AddResult()
        limit = self.pipeline.chunking.max_document_bytes
        todo: list[tuple[int, Document]] = []
        hashes: dict[str, str] = {}

        def refuse(pos: int, doc: Document, msg: str) -> None:
            if not skip:
                raise DocumentError(msg)
            res.failed.append((pos, doc.id, msg))

        for pos, doc in docs:
            size = len(doc.text.encode("utf-8", "surrogatepass"))
            if size > limit:
                refuse(pos, doc, f"document {doc.id!r} is {size} bytes, over chunking.max_document_bytes = "
                                 f"{limit}; split it or raise the limit")
                continue
            h = content_hash(doc.text, doc.metadata)
            old = self.docstore.doc_hash(doc.id)
            if old == h:
                res.unchanged.append(doc.id)
                continue
            if old is not None and not replace:
                refuse(pos, doc, f"document {doc.id!r} is already indexed with other content; use upsert()")
                continue
            hashes[doc.id] = h
            todo.append((pos, doc))
        chunks: list[Chunk] = []
        maxc = self.pipeline.chunking.max_chunks_per_document
        kept: list[Document] = []
        for pos, doc in todo:
            cs = self.chunker.chunk(doc.id, doc.text, dict(doc.metadata))
            if len(cs) > maxc:
                refuse(pos, doc, f"document {doc.id!r} gives {len(cs)} chunks, over "
                                 f"chunking.max_chunks_per_document = {maxc}")
                del hashes[doc.id]
                continue
            if not cs:
                res.empty.append(doc.id)
            chunks.extend(cs)
            kept.append(doc)
        if not kept:
            return res
        gen = self._gen + 1
        replaced = [d.id for d in kept if self.docstore.doc_hash(d.id) is not None]
        if replaced:
            self._remove_slots(self.docstore.delete_docs(replaced, gen))
        start = self.docstore.next_slot()
        slots = np.arange(start, start + len(chunks), dtype=np.int64)
        if chunks:
            self._encode_into_stores([c.text for c in chunks], slots)
        self.docstore.add_chunks(chunks, slots, gen, hashes)
        self._dirty = True
        res.added = [d.id for d in kept]
        res.chunks = len(chunks)
        if progress is not None:
            progress(len(chunks))
        return res

    def _encode_into_stores(self, texts: list[str], slots: np.ndarray) -> None:
        modes = self.pipeline.modes
        neural = [m for m in ("dense", "sparse", "colbert") if m in modes]
        if neural:
            e = self.pipeline.encoder
            out = self.encoder.encode(texts, max_length=e.max_length, batch_size=e.batch_size,
                                      **self._encode_flags(neural))
            if "dense" in modes:
                self.stores["dense"].add(slots, out.dense)
            if "sparse" in modes:
                self.stores["sparse"].add(slots, out.sparse)
            if "colbert" in modes:
                self.stores["colbert"].add(slots, out.colbert)
        if "bm25" in modes:
            self.stores["bm25"].add(slots, self.bm25.encode_documents(texts))

    def _encode_flags(self, neural: Sequence[str]) -> dict[str, bool]:
        flags = {"dense": "dense" in neural, "colbert": "colbert" in neural}
        if self.pipeline.encoder.kind == "m3":
            flags["sparse"] = "sparse" in neural
        return flags

    def _remove_slots(self, slots: Sequence[int] | np.ndarray) -> None:
        arr = np.asarray(list(slots), dtype=np.int64)
        if arr.size:
            for store in self.stores.values():
                store.remove(arr)

    def delete(self, ids: Iterable[str] | str | None = None, filters: Mapping[str, Any] | None = None,
               *, commit: bool = True) -> int:
        """Delete whole documents by id and/or by a metadata filter; returns how many documents."""
        if ids is None and filters is None:
            raise ValueError("delete() needs ids or filters (refusing to delete everything implicitly)")
        if isinstance(ids, str):
            ids = [ids]
        targets: set[str] = set()
        if ids is not None:
            for i in ids:
                if not isinstance(i, str):
                    raise TypeError(f"document ids must be strings, got {i!r}")
                targets.add(i)
        with self._writing(), self._undo_on_error():
            if filters is not None:
                mask = self.docstore.filter_mask(filters, self.docstore.next_slot())
                targets |= set(self.docstore.doc_ids_for_slots(np.flatnonzero(mask)))
            present = [t for t in sorted(targets) if self.docstore.doc_hash(t) is not None]
            if present:
                self._remove_slots(self.docstore.delete_docs(present, self._gen + 1))
                self._dirty = True
            if commit:
                self.commit()
        return len(present)

    def commit(self) -> None:
        """Write new store files and atomically swap the manifest. No-op when nothing changed."""
        if not self._dirty:
            return
        with self._writing():
            gen = self._gen + 1
            tag = f"g{gen}"
            self._collect_garbage()  # files a crashed commit of this generation left behind
            stores_entry: dict[str, Any] = {}
            checksums: dict[str, str] = {}
            for mode, store in self.stores.items():
                files = store.save(self.path, f"{mode}.{tag}")
                for name in files.values():
                    _check_name(self.path, name)
                    f = self.path / name
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
                    checksums[name] = _sha256(f)
                stores_entry[mode] = {"files": files, "config": store.config(), "rows": len(store)}
            bm25_vocab = None
            if "bm25" in self.stores:
                bm25_vocab = f"bm25.{tag}.vocab.json"
                self.bm25.save_vocabulary(self.path / bm25_vocab)
                checksums[bm25_vocab] = _sha256(self.path / bm25_vocab)
            models: dict[str, Any] = {}
            if self.pipeline.encoder.kind != "none":
                models["encoder"] = {"name": self.pipeline.encoder.model,
                                     **_model_fingerprint(resolve_model_path(self.pipeline.encoder.model))}
                if self._encoder is not None and hasattr(self._encoder, "config"):
                    models["encoder"]["config"] = _jsonable(self._encoder.config())
            if self.pipeline.rerank.enabled:
                models["reranker"] = {"name": self.pipeline.rerank.model}
            old = self._manifest or {}
            manifest = {
                "format_version": FORMAT_VERSION,
                "library_version": __version__,
                "generation": gen,
                "created": old.get("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
                "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "pipeline": _pipeline_for_disk(self.pipeline),
                "models": models,
                "counts": {"documents": self.docstore.count_documents(), "chunks": self.docstore.count(),
                           "next_slot": self.docstore.next_slot()},
                "stores": stores_entry,
                "bm25_vocab": bm25_vocab,
                "docstore": DOCSTORE,
                "checksums": checksums,
            }
            manifest["docstore_sha256"] = self.docstore.content_checksum()
            manifest["manifest_sha256"] = _manifest_digest(manifest)
            self.docstore.commit_generation(gen)
            tmp = self.path / f"{MANIFEST}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(_manifest_text(manifest))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / MANIFEST)
            _fsync_dir(self.path)
            self._manifest = manifest
            self._gen = gen
            self._dirty = False
            for store in self.stores.values():
                done = getattr(store, "committed", None)  # Milvus: the saved generation is now live
                if done is not None:
                    done()
            self._collect_garbage()

    def _drop_milvus_collections(self, names: list[str]) -> None:
        """Drop the Milvus collections of the index this one replaced (create/rebuild)."""
        for store in self.stores.values():
            if names and hasattr(store, "drop_collections"):
                store.drop_collections(names)
                return

    def _collect_garbage(self) -> None:
        keep = set((self._manifest or {}).get("checksums", {})) | {MANIFEST, DOCSTORE, LOCKFILE}
        for f in self.path.iterdir():
            if f.name in keep or f.name.startswith(DOCSTORE) or not f.is_file():
                continue
            if _STORE_FILE.search(f.name) or f.name == f"{MANIFEST}.tmp":
                with contextlib.suppress(OSError):
                    f.unlink()

    def close(self) -> None:
        """Release the writer lock and the docstore connection (uncommitted writes are dropped)."""
        self._lock.release()
        for store in self.stores.values():
            closer = getattr(store, "close", None)
            if callable(closer):
                closer()
        self.docstore.close()

    def __enter__(self) -> "HybridIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.commit()
        self.close()

    # ------------------------------------------------------------------ search
    def search(self, query: str, k: int = 10, filters: Mapping[str, Any] | None = None,
               **overrides: Any) -> SearchResults:
        """Search one query; see :meth:`search_batch`."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a string, got {type(query).__name__}")
        return self.search_batch([query], k=k, filters=filters, **overrides)[0]

    def search_batch(self, queries: Sequence[str], k: int = 10, filters: Mapping[str, Any] | None = None,
                     *, options: SearchOptions | None = None, **overrides: Any) -> list[SearchResults]:
        """Search a batch of queries; returns one :class:`SearchResults` (a ``list`` of up to
        ``k`` :class:`Hit`, best first) per query.

        Overrides (per call, the pipeline is unchanged): ``modes`` (a subset of the
        index's enabled modes), ``fusion`` (weighted | relative | rrf | adaptive), ``weights``
        (finite numbers >= 0), ``depth`` (first-stage candidates per mode), ``rerank`` /
        ``rerank_k``, ``rrf_k``. ``filters`` restrict hits to chunks whose metadata match
        before top-k. ``options``: all of these as one
        :class:`~hybridrag.search.options.SearchOptions` (then give none of them beside it).

        ``k``, ``depth`` and ``rerank_k`` are capped at the number of live chunks, so the
        memory a search takes follows the index, never these numbers (``k=10**9`` returns
        every matching chunk). A mode that retrieves by terms (``bm25``, ``sparse``)
        retrieves nothing for a query with no term it knows (only punctuation, or words
        no document has); ``dense`` always returns the nearest chunks. Each result's
        ``notes`` says why hits are missing: a term mode without query terms, a filter
        key that no document has, a filter that matches nothing. The stages are in
        :mod:`hybridrag.search.execute`.
        """
        queries = execute.check_queries(queries)
        return execute.search_batch(self, queries, SearchOptions.build(options, k, filters, **overrides))

    def _plan(self, k: int, modes: Sequence[str] | None, fusion: str | None, weights: Mapping[str, float] | None,
              depth: int | Mapping[str, int] | None, rerank: bool | None, rerank_k: int | None,
              rrf_k: int | None, live: int) -> planner.QueryPlan:
        """The plan for one call (:func:`hybridrag.search.plan.make_plan`)."""
        options = SearchOptions(k=k, modes=modes, fusion=fusion, weights=weights, depth=depth, rerank=rerank,
                                rerank_k=rerank_k, rrf_k=rrf_k)
        return make_plan(options, self.pipeline, live)

    def _coverage(self, queries: list[str], modes: Sequence[str]) -> dict[str, np.ndarray]:
        """How well each mode's vocabulary covers each query (:func:`hybridrag.search.encode.coverage`)."""
        return encode.coverage(self, queries, modes)

    def _encode_queries(self, queries: list[str], modes: Sequence[str]) -> dict[str, Any]:
        """Each mode's encoded queries (:func:`hybridrag.search.encode.encode_queries`)."""
        return encode.encode_queries(self, queries, modes)

    # ------------------------------------------------------------------ info
    def stats(self) -> dict[str, Any]:
        """Counts, generation, pipeline name, modes and bytes on disk per store."""
        m = self._manifest or {}
        sizes: dict[str, int] = {}
        for mode, entry in m.get("stores", {}).items():
            sizes[mode] = sum((self.path / f).stat().st_size for f in entry["files"].values()
                              if (self.path / f).exists())
        db = self.path / DOCSTORE
        sizes["docstore"] = sum(f.stat().st_size for f in self.path.glob(DOCSTORE + "*")) if db.exists() else 0
        return {
            "path": str(self.path), "pipeline": self.pipeline.name, "modes": self.pipeline.modes,
            "generation": self._gen, "documents": self.docstore.count_documents(),
            "chunks": self.docstore.count(), "format_version": m.get("format_version", FORMAT_VERSION),
            "library_version": m.get("library_version", __version__), "bytes": sizes,
            "models": {k: v.get("name") for k, v in m.get("models", {}).items()},
        }

    @property
    def generation(self) -> int:
        """The committed generation this object reads (``manifest.json``'s ``generation``)."""
        return self._gen

    def __len__(self) -> int:
        return self.docstore.count()

    def __repr__(self) -> str:
        return f"HybridIndex({str(self.path)!r}, pipeline={self.pipeline.name!r}, chunks={len(self)})"


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _pipeline_for_disk(cfg: PipelineConfig) -> dict[str, Any]:
    """The pipeline as the manifest records it: without the Milvus token (a secret)."""
    d = cfg.to_dict()
    if d.get("milvus", {}).get("token"):
        d["milvus"]["token"] = ""
    return d


def _milvus_collections(path: Path) -> list[str]:
    """The Milvus collections the committed index at ``path`` uses (none if unreadable)."""
    try:
        m = read_manifest(path, missing_ok=True)
    except IndexFormatError:
        return []
    if m is None or not m["pipeline"].get("milvus", {}).get("enabled"):
        return []
    return [str(e.get("config", {}).get("collection")) for mode, e in m["stores"].items()
            if mode in ("dense", "sparse") and isinstance(e, dict)]


def _as_pipeline(p: Any) -> PipelineConfig:
    if isinstance(p, PipelineConfig):
        return p
    if isinstance(p, Mapping):
        return PipelineConfig.from_dict(dict(p))
    if isinstance(p, (str, os.PathLike)):
        return load_pipeline(p)
    raise TypeError(f"pipeline must be a path to a TOML file, a PipelineConfig or a dict, got {type(p).__name__}")


def _check_name(directory: Path, name: str) -> None:
    """A file named in a manifest must be a plain file name inside the index directory."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in (".", ".."):
        raise IndexFormatError(f"{directory / MANIFEST}: refusing file name {name!r} (not a plain file name "
                               "inside the index directory)")
    if (directory / name).is_symlink():
        raise IndexFormatError(f"{directory / MANIFEST}: refusing file {name!r}: it is a symbolic link "
                               "(index files must be plain files inside the index directory)")


def _manifest_text(manifest: Mapping[str, Any]) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True)


def _manifest_digest(manifest: Mapping[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(_manifest_text(body).encode("utf-8")).hexdigest()


def read_manifest(path: Path, missing_ok: bool = False) -> dict[str, Any] | None:  # type: ignore[return]
    """Read and check ``manifest.json``; raises :class:`IndexFormatError` saying what is wrong."""
    mf = path / MANIFEST
    if not path.is_dir():
        if missing_ok:
            return None
        raise IndexFormatError(f"{str(path)!r} is not an index: no such directory")
    if not mf.is_file():
        if missing_ok:
            return None
        raise IndexFormatError(f"{str(path)!r} is not an index: {MANIFEST} is missing")
    try:
        text = mf.read_text(encoding="utf-8")
        m = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexFormatError(f"{mf}: unreadable manifest ({e})") from None
    if not isinstance(m, dict):
        raise IndexFormatError(f"{mf}: manifest is not a JSON object")
    fv = m.get("format_version")
    if fv != FORMAT_VERSION:
        raise IndexFormatError(f"{mf}: format_version {fv!r} is not supported by hybridrag {__version__} "
                               f"(reads format {FORMAT_VERSION}); rebuild the index or use the library version "
                               f"that wrote it ({m.get('library_version', 'unknown')})")
    for key in ("generation", "pipeline", "stores", "checksums"):
        if key not in m:
            raise IndexFormatError(f"{mf}: manifest lacks {key!r}")
    if not isinstance(m["stores"], dict) or not isinstance(m["checksums"], dict):
        raise IndexFormatError(f"{mf}: manifest 'stores'/'checksums' must be objects")
    for name in m["checksums"]:
        _check_name(path, name)
    # The manifest checks itself: its sha256 (over the other keys) and its exact bytes, so a
    # flipped byte that still parses as JSON (a digit, a key name, whitespace) is caught too.
    if m.get("manifest_sha256") != _manifest_digest(m):
        raise IndexFormatError(f"{mf}: manifest checksum mismatch (the file is corrupt or was edited)")
    if text != _manifest_text(m):
        raise IndexFormatError(f"{mf}: manifest bytes differ from what hybridrag writes (the file is corrupt "
                               "or was edited)")
    return m


def _require_manifest(path: Path) -> dict[str, Any]:
    """:func:`read_manifest` for callers that need one: a missing manifest is an error."""
    manifest = read_manifest(path)
    if manifest is None:  # read_manifest raises when missing_ok is False; kept explicit for -O
        raise IndexFormatError(f"{str(path)!r} is not an index: {MANIFEST} is missing")
    return manifest


def verify_files(path: Path, manifest: dict[str, Any]) -> None:
    """Check every file the manifest names against its sha256."""
    for name, digest in manifest["checksums"].items():
        f = path / name
        if not f.is_file():
            raise IndexFormatError(f"{f}: file named in the manifest is missing")
        got = _sha256(f)
        if got != digest:
            raise IndexFormatError(f"{f}: checksum mismatch (file is corrupt or was changed: "
                                   f"sha256 {got[:12]}… expected {digest[:12]}…)")


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
            (p / LOCKFILE).unlink(missing_ok=True)
        for d in made:  # deepest first; a folder someone else filled meanwhile stays
            d.rmdir()


def _remove_index_files(p: Path) -> None:
    """Remove an old index's docstore and store files; its manifest stays until the new
    index's commit replaces it (so a failed create never leaves a directory without one)."""
    for f in p.iterdir():
        if f.is_file() and (f.name == f"{MANIFEST}.tmp" or f.name.startswith(DOCSTORE)
                            or _STORE_FILE.search(f.name)):
            f.unlink()


def check_index(path: str | os.PathLike[str]) -> list[str]:
    """Verify an index without changing it; returns a list of problems (empty = healthy).

    Checks the manifest, every store file's sha256, SQLite's integrity check, and that
    every store holds exactly the docstore's committed chunks.
    """
    p = Path(path)
    problems: list[str] = []
    try:
        manifest = _require_manifest(p)
        verify_files(p, manifest)
    except IndexFormatError as e:
        return [str(e)]
    from hybridrag.stores.docstore import DocStore

    import sqlite3

    try:
        ds = DocStore(p / DOCSTORE, read_only=True)
    except (IndexFormatError, sqlite3.DatabaseError) as e:
        return [f"{p / DOCSTORE}: {e}"]
    try:
        problems += [f"{p / DOCSTORE}: {msg}" for msg in ds.integrity_problems()]
        if problems:
            return problems
        gen = int(manifest["generation"])
        ds.as_of = gen
        digest = manifest.get("docstore_sha256")
        if digest is not None and ds.content_checksum() != digest:
            problems.append(f"{p / DOCSTORE}: docstore content does not match the manifest (generation {gen})")
        live = ds.live_slots(as_of=gen)
        want = int(manifest["counts"]["chunks"])
        if len(live) != want:
            problems.append(f"docstore holds {len(live)} committed chunks, manifest says {want}")
        for mode, entry in manifest["stores"].items():
            if entry.get("rows") is not None and int(entry["rows"]) != len(live):
                problems.append(f"store {mode!r} holds {entry['rows']} rows, docstore {len(live)} chunks")
    except sqlite3.DatabaseError as e:
        problems.append(f"{p / DOCSTORE}: docstore is unreadable or corrupt ({e})")
    finally:
        ds.close()
    return problems
