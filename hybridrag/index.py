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
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybridrag import __version__
from hybridrag.config import PipelineConfig, load_pipeline, resolve_model_path
from hybridrag.errors import (
    ConfigError,
    DiskFullError,
    IndexFormatError,
    IndexLockedError,
)
from hybridrag import write
from hybridrag.search import planner
from hybridrag.storage.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    check_name as _check_name,
    read_manifest,
    sha256_file as _sha256,
    verify_files,
    write_manifest,
)
from hybridrag.storage.policy import TieredMergePolicy
from hybridrag.storage.segments import SegmentedStore
from hybridrag.storage.table import SegmentTable
from hybridrag.search.fusion import FUSION_METHODS
from hybridrag.storage.files import disk_full_errors as _disk_full
from hybridrag.storage.lock import IndexLock as _Lock
from hybridrag.types import Hit, SearchResults
from hybridrag.write import (  # noqa: F401 - re-exported: the documents' API lived here
    MAX_ID_CHARS,
    MAX_METADATA_DEPTH,
    AddResult,
    as_document,
    content_hash,
)

logger = logging.getLogger(__name__)

DOCSTORE = "docstore.sqlite"
LOCKFILE = "LOCK"
# Every file of a segment carries "<mode>.s<n>" (format 1: "<mode>.g<generation>") in its name,
# or is a segment's bookkeeping ("s<n>.slots.npy", "s<n>.del.g<generation>.npy").
_STORE_FILE = re.compile(r"(dense|sparse|bm25|colbert)\.[gs]\d+|(^|\.)[gs]\d+\.(slots|del\.g\d+)\.npy")
# A reader retries its load while a writer's commits keep replacing the files it is opening
# (each retry opens the newer generation), for up to _LOAD_PATIENCE_S; a failure with no newer
# generation (a damaged index, or a writer between its manifest swap and our read) is retried
# _LOAD_SAME_GEN_RETRIES times with a short sleep, then raised.
_LOAD_PATIENCE_S = 60.0
_LOAD_SAME_GEN_RETRIES = 3


class _Stale(Exception):
    """Internal: a concurrent commit overtook a load in progress (it is retried)."""


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


class HybridIndex:
    """A hybrid index on disk. Create with :meth:`create`, open with :meth:`load`.

    ``search`` is a thin wrapper over ``search_batch``. Writes are committed at the end
    of each call unless ``commit=False`` is passed (then call :meth:`commit`).
    """

    def __init__(self, path: Path, pipeline: PipelineConfig, manifest: dict[str, Any] | None,
                 encoder: Any = None, reranker: Any = None, device: str | None = None,
                 read_only: bool = False) -> None:
        self.path = path
        self._read_only = read_only
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
        # The segments of the committed index and the slots written and deleted since.
        self._table = SegmentTable([], 1)
        self._vocab_files: list[str] = list((manifest or {}).get("bm25_vocab") or [])
        self._vocab_saved = 0   # BM25 terms already in a committed vocabulary file
        #: Which segments a commit merges afterwards (``None``: never; :meth:`optimize` still does).
        self.merge_policy: TieredMergePolicy | None = TieredMergePolicy()
        # Milvus connection settings the user gave (never read from the index alone).
        self._milvus_conn: dict[str, str] = {}
        self._milvus_from_index = False  # the [milvus] section came from the manifest
        from hybridrag.stores.docstore import DocStore

        self.docstore = DocStore(path / DOCSTORE, read_only=read_only)

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
    def load(cls, path: str | os.PathLike[str], *, verify: bool = False, encoder: Any = None,
             reranker: Any = None, device: str | None = None, milvus_uri: str | None = None,
             milvus_token: str | None = None) -> "HybridIndex":
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
              device: str | None, milvus_conn: dict[str, str] | None = None,
              read_only: bool = False) -> "HybridIndex":
        if verify:
            verify_files(p, manifest)
        cfg = PipelineConfig.from_stored(manifest["pipeline"], source=f"{p / MANIFEST}")
        import sqlite3

        try:
            idx = cls(p, cfg, manifest, encoder=encoder, reranker=reranker, device=device, read_only=read_only)
        except sqlite3.DatabaseError as e:
            raise IndexFormatError(f"{p / DOCSTORE}: docstore is unreadable or corrupt ({e})") from None
        idx._milvus_conn = dict(milvus_conn or {})
        try:
            idx._check_docstore(verify)
            idx._init_components(fresh=False)
            want = int(manifest.get("counts", {}).get("chunks", -1))
            for mode, store in idx.stores.items():
                if want >= 0 and len(store) != want and isinstance(store, SegmentedStore):
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
            if ds.max_generation() > self._gen and not self._read_only:
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
                    except DiskFullError:
                        pass   # the rows stay, unseen: this view reads as of the committed generation
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
                digest = (self._manifest or {}).get("docstore_sha256")   # format 1 only
                if digest is not None and ds.content_checksum() != digest:
                    raise IndexFormatError(f"{self.path / DOCSTORE}: docstore content does not match the manifest "
                                           f"(generation {self._gen}): the file is corrupt or was changed")
                verify_rows = getattr(ds, "verify_rows", None)
                bad = verify_rows(self._gen) if verify_rows is not None else []
                if bad:
                    raise IndexFormatError(f"{self.path / DOCSTORE}: docstore is corrupt: {'; '.join(bad[:3])}")
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
            idx._manifest = None if manifest is None else dict(manifest, bm25_vocab=[])
            idx._vocab_files = []
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
        """The stores: opened from the committed segments, or (``fresh``) new and empty."""
        if self._manifest is not None and not fresh:
            self._load_stores()
            return
        cfg = self.pipeline
        modes = cfg.modes
        self.stores = {}
        self._table = SegmentTable([], (self._manifest or {}).get("next_segment", 1))
        self._vocab_saved = 0
        enc = self.encoder if any(m in modes for m in ("dense", "sparse", "colbert")) else None
        if cfg.milvus.enabled and ("dense" in modes or "sparse" in modes):
            from hybridrag.stores.milvus import milvus_stores

            remote = milvus_stores(cfg.milvus, enc.dim if "dense" in modes else None, self.path,
                                   from_index=self._milvus_from_index, **self._milvus_conn)
            self.stores.update({m: remote[m] for m in ("dense", "sparse") if m in modes})
            self._milvus_conn = remote["sparse"].connection()
        for mode in modes:
            if mode not in self.stores:
                self.stores[mode] = SegmentedStore({}, self._new_store(mode, enc), self._fresh_maker(mode))

    def _new_store(self, mode: str, enc: Any) -> Any:
        """An empty store of ``mode`` as the pipeline configures it."""
        from hybridrag.stores.faiss import FaissStore
        from hybridrag.stores.multivector import MultiVectorStore
        from hybridrag.stores.sparse import SparseIndex

        cfg = self.pipeline
        if mode == "dense":
            return FaissStore(enc.dim, factory=cfg.dense.index)
        if mode == "sparse":
            return SparseIndex(weighting="none")
        if mode == "bm25":
            return SparseIndex(weighting=f"bm25{cfg.bm25.variant}", k1=cfg.bm25.k1, b=cfg.bm25.b,
                               epsilon=cfg.bm25.epsilon)
        dim = getattr(enc, "colbert_dim", None) or enc.dim
        return MultiVectorStore(dim, encoding=cfg.colbert.encoding, pq_train_tokens=cfg.colbert.pq_train_tokens,
                                pq_train_pool=cfg.colbert.pq_train_pool)

    def _fresh_maker(self, mode: str, config: Mapping[str, Any] | None = None) -> Any:
        """How a mode's next fresh part is made: like its newest part (same settings and trained
        state: PQ codec, IVF quantizer) when the store kind can, else from its saved config."""
        def make() -> Any:
            store = self.stores[mode]
            model = store.newest
            if hasattr(model, "empty_like"):
                return model.empty_like()
            return _store_from_config(self._store_class(mode), config if config is not None else model.config())
        return make

    def _store_class(self, mode: str) -> Any:
        from hybridrag.stores.faiss import FaissStore
        from hybridrag.stores.multivector import MultiVectorStore
        from hybridrag.stores.sparse import SparseIndex

        if self.pipeline.milvus.enabled and mode in ("dense", "sparse"):
            from hybridrag.stores.milvus import MilvusDenseStore, MilvusSparseStore

            return {"dense": MilvusDenseStore, "sparse": MilvusSparseStore}[mode]
        return {"dense": FaissStore, "sparse": SparseIndex, "bm25": SparseIndex, "colbert": MultiVectorStore}[mode]

    def _load_stores(self) -> None:
        """Open every committed segment of every store (memory-mapped; deletions applied in
        memory); files are checked for structure, not hashed (``load(verify=True)`` hashes)."""
        m = self._manifest
        if m is None:
            raise IndexFormatError(f"{self.path / MANIFEST}: no committed manifest to load stores from")
        self.stores = {}
        gen = self._gen
        self._table = SegmentTable.open(self.path, m, legacy_slots=lambda: self.docstore.live_slots(as_of=gen))
        for mode, entry in m["stores"].items():
            cls, config = self._store_class(mode), entry.get("config", {})
            parts: dict[str, Any] = {}
            for seg in m["segments"]:
                sid, files = seg["id"], seg["files"].get(mode)
                if not isinstance(files, dict) or not files:
                    raise IndexFormatError(f"{self.path / MANIFEST}: segment {sid!r} has no files for {mode!r}")
                part = cls.load(self.path, files, config)
                dead = self._table.deleted[sid]
                if dead.size:
                    part.remove(dead)
                if len(part) != seg["rows"] - seg["deleted"]:
                    raise IndexFormatError(f"{self.path / sorted(files.values())[0]}: store {mode!r} segment {sid!r} "
                                           f"holds {len(part)} live rows, the manifest says "
                                           f"{seg['rows'] - seg['deleted']}")
                parts[sid] = part
            self.stores[mode] = SegmentedStore(parts, None, self._fresh_maker(mode, config))
            if parts:
                self.stores[mode].fresh = self.stores[mode]._new_fresh()
            else:
                self.stores[mode].fresh = _store_from_config(cls, config)
        for mode, entry in m.get("remote", {}).items():
            files = entry["files"]
            # where Milvus is comes from the user, never from the manifest (docs/MILVUS.md)
            config = {**{k: v for k, v in entry.get("config", {}).items() if k not in ("uri", "token")},
                      **self._milvus_conn}
            self.stores[mode] = self._store_class(mode).load(self.path, files, config)
        # Read the BM25 vocabulary now, not at the first search: a writer may collect its files
        # once it commits a newer generation.
        self._bm25_vocab = None
        self._vocab_files = list(m.get("bm25_vocab") or [])
        if self._vocab_files:
            from hybridrag.encoders.bm25 import BM25Encoder

            terms: list[str] = []
            probe = BM25Encoder()
            for name in self._vocab_files:
                probe.load_vocabulary(self.path / name)
                terms += sorted(probe.vocabulary, key=probe.vocabulary.__getitem__)
            vocab = {t: i for i, t in enumerate(terms)}
            if len(vocab) != len(terms):
                raise IndexFormatError(f"{self.path / self._vocab_files[-1]}: BM25 vocabulary repeats a term")
            self._bm25_vocab = vocab
        self._vocab_saved = len(self._bm25_vocab or {})

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
        return write.write_docs(self, documents, replace=False, commit=commit, batch_size=batch_size,
                                progress=progress, errors=errors)

    def upsert(self, documents: Iterable[Any], *, commit: bool = True, batch_size: int = 256,
               progress: Any = None, errors: str = "raise") -> AddResult:
        """Add documents, replacing every chunk of a document whose content changed
        (``errors`` and ``progress`` as in :meth:`add`)."""
        return write.write_docs(self, documents, replace=True, commit=commit, batch_size=batch_size,
                                progress=progress, errors=errors)

    def _encode_into_stores(self, texts: list[str], slots: np.ndarray) -> None:
        write.encode_into_stores(self, texts, slots)

    def _remove_slots(self, slots: Sequence[int] | np.ndarray) -> None:
        write.remove_slots(self, slots)

    def delete(self, ids: Iterable[str] | str | None = None, filters: Mapping[str, Any] | None = None,
               *, commit: bool = True) -> int:
        """Delete whole documents by id and/or by a metadata filter; returns how many documents."""
        return write.delete(self, ids, filters, commit)

    def commit(self, *, merge: bool = True) -> None:
        """Make the writes since the last commit durable and visible: the new rows become one
        new segment per store, deletions a small file per segment they touch, and the manifest
        is swapped atomically (the commit point). Then, unless ``merge=False``, the segments the
        :attr:`merge_policy` picks are merged, each merge a commit of its own. No-op when
        nothing changed."""
        if not self._dirty:
            return
        with _disk_full(self.path, lambda: self._gen), self._writing():
            self._collect_garbage()  # files a crashed commit left behind
            new, dels = self._table.pending()
            entries = [dict(e) for e in self._table.entries]
            checksums: dict[str, str] = {}
            gen = self._gen + 1
            sealed: dict[str, dict[str, str]] = {}
            sid = None
            if new.size:
                sid = self._table.new_id()
                for mode, store in self._local_stores().items():
                    sealed[mode] = self._save_part(store.fresh, f"{mode}.{sid}", checksums)
                slots_file = self._written(SegmentTable.write_slots(self.path, sid, new), checksums)
                entries.append({"id": sid, "rows": int(new.size), "deleted": 0, "slots": slots_file,
                                "deletes": None, "files": sealed})
            for e in entries:
                if e.get("slots") is None and e["id"] in self._table.slots:   # a format-1 segment
                    e["slots"] = self._written(SegmentTable.write_slots(
                        self.path, e["id"], self._table.slots[e["id"]]), checksums)
                if e["id"] in dels:
                    e["deletes"] = self._written(SegmentTable.write_deletes(self.path, e["id"], gen, dels[e["id"]]),
                                                 checksums)
                    e["deleted"] = int(dels[e["id"]].size)
            entries = [e for e in entries if e["rows"] > e["deleted"]]   # wholly deleted segments go
            vocab_files = list(self._vocab_files)
            if "bm25" in self.stores and len(self.bm25.vocabulary) > self._vocab_saved:
                name = f"bm25.{sid or 'g%d' % gen}.vocab.json"
                self._write_vocabulary(name, self._vocab_saved)
                self._written(name, checksums)
                vocab_files.append(name)
            self._swap_manifest(gen, entries, vocab_files, checksums)
            # The commit is durable: the in-memory state follows it.
            live = {e["id"] for e in entries}
            for mode, store in self._local_stores().items():
                if sid is not None:
                    store.seal(sid, self._open_part(mode, sealed[mode]))
                else:
                    store.fresh = store._new_fresh()   # rows added and deleted before this commit
                store.parts = {k: v for k, v in store.parts.items() if k in live}
            self._table.entries = entries
            if sid is not None:
                self._table.slots[sid], self._table.deleted[sid] = new, np.zeros(0, np.int64)
            self._table.deleted.update(dels)
            self._table.clear_pending()
            self._vocab_files = vocab_files
            if "bm25" in self.stores:
                self._vocab_saved = len(self.bm25.vocabulary)
            self._dirty = False
            self._collect_garbage()
            if merge and self.merge_policy is not None and all(  # TEMP until stores have merge()
                    hasattr(type(st.newest), "merge") for st in self._local_stores().values()):
                for group in self.merge_policy.select(self._table.infos()):
                    self._merge(group)

    def optimize(self) -> None:
        """Commit pending writes, then merge every segment into one without deleted rows
        (``hybridrag optimize``): the smallest index and the fastest searches. A merge is a
        commit: readers keep their snapshot, a crash leaves the last commit whole."""
        with self._writing():
            self.commit(merge=False)
            entries = self._table.entries
            if len(entries) > 1 or any(e["deleted"] for e in entries):
                self._merge([e["id"] for e in entries])

    def _merge(self, ids: Sequence[str]) -> None:
        """Merge segments ``ids`` into one new segment, as a commit."""
        gen = self._gen + 1
        checksums: dict[str, str] = {}
        slots = np.concatenate([self._table.live_slots(i) for i in ids])
        slots.sort()
        entries = [dict(e) for e in self._table.entries]
        sealed: dict[str, dict[str, str]] = {}
        sid = self._table.new_id() if slots.size else None
        if sid is not None:
            for mode, store in self._local_stores().items():
                parts = [store.parts[i] for i in ids]
                merged = type(parts[0]).merge(parts)
                if len(merged) != slots.size:
                    raise RuntimeError(f"merging {mode!r} segments {list(ids)} gave {len(merged)} rows, "
                                       f"expected {slots.size}")
                sealed[mode] = self._save_part(merged, f"{mode}.{sid}", checksums)
            entry = {"id": sid, "rows": int(slots.size), "deleted": 0, "deletes": None, "files": sealed,
                     "slots": self._written(SegmentTable.write_slots(self.path, sid, slots), checksums)}
            at = next(i for i, e in enumerate(entries) if e["id"] == ids[0])
            entries.insert(at, entry)
        entries = [e for e in entries if e["id"] not in ids]
        self._swap_manifest(gen, entries, list(self._vocab_files), checksums)
        for mode, store in self._local_stores().items():
            if sid is not None:
                store.replace(list(ids), sid, self._open_part(mode, sealed[mode]))
            else:
                store.parts = {k: v for k, v in store.parts.items() if k not in ids}
        self._table.entries = entries
        for i in ids:
            self._table.slots.pop(i, None)
            self._table.deleted.pop(i, None)
        if sid is not None:
            self._table.slots[sid], self._table.deleted[sid] = slots, np.zeros(0, np.int64)
        self._collect_garbage()

    def _local_stores(self) -> dict[str, SegmentedStore]:
        return {m: s for m, s in self.stores.items() if isinstance(s, SegmentedStore)}

    def _written(self, name: str, checksums: dict[str, str]) -> str:
        """Record the sha256 of a file just written (fsynced) for the manifest."""
        _check_name(self.path, name)
        f = self.path / name
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
        checksums[name] = _sha256(f)
        return name

    def _save_part(self, store: Any, tag: str, checksums: dict[str, str]) -> dict[str, str]:
        files = store.save(self.path, tag)
        for name in files.values():
            self._written(name, checksums)
        return dict(files)

    def _open_part(self, mode: str, files: Mapping[str, str]) -> Any:
        """A segment just written, opened as a loader would (memory-mapped)."""
        return self._store_class(mode).load(self.path, dict(files), self._manifest["stores"][mode]["config"])

    def _write_vocabulary(self, name: str, start: int) -> None:
        """The BM25 terms with ids ``start`` and up, as a new file (fsynced, renamed into place)."""
        from hybridrag.stores.base import new_file

        new_file(self.path, name, lambda path: self.bm25.save_vocabulary(path, start))

    def _swap_manifest(self, gen: int, entries: list[dict[str, Any]], vocab_files: list[str],
                       checksums: dict[str, str]) -> None:
        """Write the manifest of generation ``gen`` (the commit point) and adopt it."""
        old = self._manifest or {}
        keep = {n for e in entries for n in [*(f for fs in e["files"].values() for f in fs.values()),
                                             e.get("slots"), e.get("deletes")] if n}
        keep.update(vocab_files)
        sums = {n: d for n, d in old.get("checksums", {}).items() if n in keep}
        sums.update({n: d for n, d in checksums.items() if n in keep})
        remote: dict[str, Any] = {}
        for mode, store in self.stores.items():
            if not isinstance(store, SegmentedStore):
                files = store.save(self.path, f"{mode}.g{gen}")
                for name in files.values():
                    self._written(name, sums)
                remote[mode] = {"files": files, "config": store.config(), "rows": len(store)}
        models: dict[str, Any] = {}
        if self.pipeline.encoder.kind != "none":
            models["encoder"] = {"name": self.pipeline.encoder.model,
                                 **_model_fingerprint(resolve_model_path(self.pipeline.encoder.model))}
            if self._encoder is not None and hasattr(self._encoder, "config"):
                models["encoder"]["config"] = _jsonable(self._encoder.config())
        if self.pipeline.rerank.enabled:
            models["reranker"] = {"name": self.pipeline.rerank.model}
        stores = {m: {"config": s.newest.config()} for m, s in self._local_stores().items()}
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
            "stores": stores,
            "remote": remote,
            "segments": entries,
            "next_segment": self._table.next_segment,
            "bm25_vocab": vocab_files,
            "docstore": DOCSTORE,
            "checksums": sums,
        }
        if old.get("format_version") == 1 and old.get("docstore_sha256"):
            # The first commit of a format-1 index: its rows have no per-row hash yet; record
            # them if the old manifest's whole-docstore checksum still vouches for them.
            ds, view = self.docstore, self.docstore.as_of
            ds.as_of = int(old["generation"])
            try:
                intact = ds.content_checksum() == old["docstore_sha256"]
            finally:
                ds.as_of = view
            if intact:
                ds.record_row_hashes()
        self.docstore.commit_generation(gen)
        write_manifest(self.path, manifest)
        self._manifest = manifest
        self._gen = gen
        for store in self.stores.values():
            done = getattr(store, "committed", None)  # Milvus: the saved generation is now live
            if done is not None:
                done()

    def _drop_milvus_collections(self, names: list[str]) -> None:
        """Drop the Milvus collections of the index this one replaced (create/rebuild)."""
        for store in self.stores.values():
            if names and hasattr(store, "drop_collections"):
                store.drop_collections(names)
                return

    def _collect_garbage(self) -> None:
        keep = set((self._manifest or {}).get("checksums", {})) | {MANIFEST, DOCSTORE, LOCKFILE}
        for f in self.path.iterdir():
            if f.name in keep or f.name.startswith(DOCSTORE) or not (f.is_file() or f.is_symlink()):
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
                     *, modes: Sequence[str] | None = None, fusion: str | None = None,
                     weights: Mapping[str, float] | None = None, depth: int | Mapping[str, int] | None = None,
                     rerank: bool | None = None, rerank_k: int | None = None,
                     rrf_k: int | None = None) -> list[SearchResults]:
        """Search a batch of queries; returns one :class:`SearchResults` (a ``list`` of up to
        ``k`` :class:`Hit`, best first) per query.

        Overrides (per call, the pipeline is unchanged): ``modes`` (a subset of the
        index's enabled modes), ``fusion`` (weighted | relative | rrf | adaptive), ``weights``
        (finite numbers >= 0), ``depth`` (first-stage candidates per mode), ``rerank`` /
        ``rerank_k``. ``filters`` restrict hits to chunks whose metadata match before top-k.

        ``k``, ``depth`` and ``rerank_k`` are capped at the number of live chunks, so the
        memory a search takes follows the index, never these numbers (``k=10**9`` returns
        every matching chunk). A mode that retrieves by terms (``bm25``, ``sparse``)
        retrieves nothing for a query with no term it knows (only punctuation, or words
        no document has); ``dense`` always returns the nearest chunks. Each result's
        ``notes`` says why hits are missing: a term mode without query terms, a filter
        key that no document has, a filter that matches nothing.
        """
        if isinstance(queries, str) or not isinstance(queries, Sequence):
            raise TypeError("queries must be a list of strings (use search() for one query)")
        from hybridrag.stores.docstore import check_unicode

        for i, q in enumerate(queries):
            if not isinstance(q, str):
                raise TypeError(f"query {i} must be a string, got {type(q).__name__}")
            if not q.strip():
                raise ValueError(f"query {i} is empty: {q!r}")
            check_unicode(q, f"query {i}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be a positive integer, got {type(k).__name__} {k!r}")
        if k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        live = self.docstore.count()
        plan = self._plan(int(k), modes, fusion, weights, depth, rerank, rerank_k, rrf_k, live=live)
        if not queries:
            return []
        if live == 0:
            return [SearchResults((), ["the index holds no chunks"]) for _ in queries]
        allowed = None
        if filters:
            allowed = self.docstore.filter_mask(filters, self.docstore.next_slot())
            if not allowed.any():
                notes = [f"no document has metadata key {f!r}" for f in self.docstore.missing_keys(list(filters))]
                notes = notes or [f"no chunk matches the filters {dict(filters)!r}"]
                return [SearchResults((), notes) for _ in queries]
        reps = self._encode_queries(list(queries), plan.modes)
        coverage = self._coverage(list(queries), plan.modes) if plan.fusion == "adaptive" else None
        ranked = planner.run(plan, reps, self.stores, allowed=allowed, coverage=coverage)
        out: list[SearchResults] = []
        for qi, cand in enumerate(ranked):
            if plan.rerank and len(cand.slots):
                top = cand.take(plan.rerank_k)
                rows = self.docstore.get(top.slots)
                r = self.pipeline.rerank
                rs = np.asarray(self.reranker.compute_score([(queries[qi], row["text"]) for row in rows],
                                                            normalize=r.normalize, batch_size=r.batch_size),
                                dtype=np.float64)
                order = np.lexsort((top.slots, -rs))
                top = top.reorder(order)
                rs = rs[order]
                final = top.take(plan.k)
                hits = self._hits(final, final.fused, rerank_scores=rs[:plan.k])
            else:
                final = cand.take(plan.k)
                hits = self._hits(final, final.fused)
            out.append(SearchResults(hits, _term_notes(plan, reps, qi)))
        return out

    def _plan(self, k: int, modes: Sequence[str] | None, fusion: str | None, weights: Mapping[str, float] | None,
              depth: int | Mapping[str, int] | None, rerank: bool | None, rerank_k: int | None,
              rrf_k: int | None, live: int) -> planner.QueryPlan:
        """The plan for one call; ``k``, depths and ``rerank_k`` are capped at ``live`` chunks
        (at least 1), so no store allocates more than the index holds."""
        cfg = self.pipeline
        enabled = cfg.modes
        if modes is None:
            use = list(enabled)
        else:
            if isinstance(modes, str):
                modes = [modes]
            bad = [m for m in modes if m not in enabled]
            if bad:
                raise ValueError(f"mode(s) {bad} are not enabled in this index; enabled: {enabled}")
            use = [m for m in enabled if m in modes]
            if not any(m in planner.FIRST_STAGE for m in use):
                raise ValueError(f"modes {list(modes)}: colbert only rescores; add one of dense/sparse/bm25")
        if weights is not None:
            if not isinstance(weights, Mapping):
                raise TypeError(f"weights must be a dict of mode -> number, got {type(weights).__name__}")
            for m, v in weights.items():
                if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                        or not math.isfinite(v) or v < 0:
                    raise ValueError(f"weights[{m!r}] = {v!r}: a fusion weight must be a finite number >= 0")
        w = dict(cfg.fusion.weights if weights is None else weights)
        missing = [m for m in use if m not in w]
        if missing:
            raise ValueError(f"no fusion weight for mode(s) {missing}; weights given: {w}")
        depths = {m: getattr(cfg, m).depth for m in use if m in planner.FIRST_STAGE}
        if depth is not None:
            if isinstance(depth, Mapping):
                for m, d in depth.items():
                    if m not in depths:
                        raise ValueError(f"depth given for mode {m!r}, which is not a first stage here: {list(depths)}")
                    depths[m] = d
            else:
                depths = {m: depth for m in depths}
        cap = max(1, live)
        k = min(k, cap)
        for m, d in depths.items():
            if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
                raise ValueError(f"depth for {m!r} must be a positive integer, got {d!r}")
            depths[m] = min(max(int(d), k), cap)
        method = fusion or cfg.fusion.method
        if method not in FUSION_METHODS:
            raise ValueError(f"unknown fusion {method!r}; choose one of {FUSION_METHODS}")
        do_rerank = cfg.rerank.enabled if rerank is None else bool(rerank)
        rk = cfg.rerank.k if rerank_k is None else rerank_k
        if isinstance(rk, bool) or not isinstance(rk, (int, np.integer)) or rk < 1:
            raise ValueError(f"rerank_k must be a positive integer, got {rk!r}")
        return planner.QueryPlan(modes=use, depths=depths, fusion=method, weights=w,
                                 rrf_k=cfg.fusion.rrf_k if rrf_k is None else rrf_k, k=k,
                                 rerank=do_rerank, rerank_k=min(max(int(rk), k), cap))

    def _coverage(self, queries: list[str], modes: Sequence[str]) -> dict[str, np.ndarray]:
        """How well each mode's vocabulary covers each query (for adaptive fusion)."""
        cov: dict[str, np.ndarray] = {}
        neural = [m for m in modes if m in planner.NEURAL]
        if neural:
            c = planner.query_coverage(self.encoder.tokenizer, queries)
            cov.update({m: c for m in neural})
        if "bm25" in modes:
            cov["bm25"] = planner.term_coverage(self.bm25.analyzer.tokenize(queries), self.bm25.vocabulary)
        return cov

    def _encode_queries(self, queries: list[str], modes: Sequence[str]) -> dict[str, Any]:
        reps: dict[str, Any] = {}
        neural = [m for m in ("dense", "sparse", "colbert") if m in modes]
        if neural:
            out = self.encoder.encode_queries(queries, max_length=self.pipeline.encoder.query_max_length,
                                              batch_size=self.pipeline.encoder.batch_size,
                                              **write.encode_flags(self, neural))
            if "dense" in modes:
                reps["dense"] = out.dense
            if "sparse" in modes:
                reps["sparse"] = out.sparse
            if "colbert" in modes:
                reps["colbert"] = out.colbert
        if "bm25" in modes:
            reps["bm25"] = self.bm25.encode_queries(queries)
        return reps

    def _hits(self, cand: planner.Candidates, fused: np.ndarray, rerank_scores: np.ndarray | None = None) -> list[Hit]:
        rows = self.docstore.get(cand.slots)
        hits = []
        for i, row in enumerate(rows):
            scores = {m: float(s[i]) for m, s in cand.scores.items()}
            scores["fused"] = float(fused[i])
            final = scores["fused"]
            if rerank_scores is not None:
                scores["rerank"] = float(rerank_scores[i])
                final = scores["rerank"]
            ranks = {m: int(r[i]) for m, r in cand.ranks.items() if r[i] > 0}
            hits.append(Hit(chunk_id=row["chunk_id"], doc_id=row["doc_id"], text=row["text"], score=final,
                            metadata=row["metadata"], span=(row["start"], row["end"]), scores=scores, ranks=ranks,
                            weights=dict(cand.weights)))
        return hits

    # ------------------------------------------------------------------ info
    def stats(self) -> dict[str, Any]:
        """Counts, generation, pipeline name, modes and bytes on disk per store."""
        m = self._manifest or {}
        sizes: dict[str, int] = {}
        files: dict[str, list[str]] = {}
        for seg in m.get("segments", []):
            for mode, fs in seg["files"].items():
                files.setdefault(mode, []).extend(fs.values())
        for mode, entry in m.get("remote", {}).items():
            files.setdefault(mode, []).extend(entry["files"].values())
        for mode, names in files.items():
            sizes[mode] = sum((self.path / f).stat().st_size for f in names if (self.path / f).exists())
        db = self.path / DOCSTORE
        sizes["docstore"] = sum(f.stat().st_size for f in self.path.glob(DOCSTORE + "*")) if db.exists() else 0
        return {
            "path": str(self.path), "pipeline": self.pipeline.name, "modes": self.pipeline.modes,
            "generation": self._gen, "documents": self.docstore.count_documents(),
            "chunks": self.docstore.count(), "format_version": m.get("format_version", FORMAT_VERSION),
            "library_version": m.get("library_version", __version__), "bytes": sizes,
            "models": {k: v.get("name") for k, v in m.get("models", {}).items()},
            "segments": [{"id": e["id"], "rows": e["rows"], "deleted": e["deleted"]} for e in m.get("segments", [])],
        }

    @property
    def generation(self) -> int:
        """The committed generation this object reads (``manifest.json``'s ``generation``)."""
        return self._gen

    def __len__(self) -> int:
        return self.docstore.count()

    def __repr__(self) -> str:
        return f"HybridIndex({str(self.path)!r}, pipeline={self.pipeline.name!r}, chunks={len(self)})"


def _term_notes(plan: planner.QueryPlan, reps: Mapping[str, Any], qi: int) -> list[str]:
    """A note per first-stage mode that matches terms and got none from query ``qi``."""
    notes = []
    for m in plan.first_stage:
        if m in ("bm25", "sparse") and not any(reps[m][qi].values()):
            why = ("none of its words is in the index vocabulary" if m == "bm25"
                   else "the encoder gave it no lexical weights")
            notes.append(f"no query terms for {m!r} ({why}): it retrieved nothing")
    return notes


def _store_from_config(cls: Any, config: Mapping[str, Any]) -> Any:
    """An empty store of ``cls`` with the settings ``config()`` saved (unknown keys ignored)."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    try:
        return cls(**{k: v for k, v in config.items() if k in params})
    except (TypeError, ValueError) as e:
        raise IndexFormatError(f"bad {cls.__name__} settings in the manifest {dict(config)!r}: {e}") from None


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
    return [str(e.get("config", {}).get("collection")) for mode, e in m.get("remote", {}).items()
            if mode in ("dense", "sparse") and isinstance(e, dict)]


def _as_pipeline(p: Any) -> PipelineConfig:
    if isinstance(p, PipelineConfig):
        return p
    if isinstance(p, Mapping):
        return PipelineConfig.from_dict(dict(p))
    if isinstance(p, (str, os.PathLike)):
        return load_pipeline(p)
    raise TypeError(f"pipeline must be a path to a TOML file, a PipelineConfig or a dict, got {type(p).__name__}")










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

    Checks one committed generation as a whole: the manifest, every file's sha256, SQLite's
    integrity check and every row's hash in the docstore, that the index opens as
    :meth:`HybridIndex.load` opens it (so ``check`` and ``load`` refuse the same indexes), and
    that every store holds exactly the docstore's live chunks. A writer that commits while
    ``check`` runs may remove the files of the generation being checked: ``check`` then
    checks the newer generation instead (for up to a minute), so it never reports a healthy
    index as damaged.
    """
    p = Path(path)
    deadline = time.monotonic() + _LOAD_PATIENCE_S
    while True:
        try:
            manifest = _require_manifest(p)
        except IndexFormatError as e:
            return [str(e)]
        problems = _check_generation(p, manifest)
        if not problems:
            return []
        try:
            now = read_manifest(p, missing_ok=True)
        except IndexFormatError:
            return problems
        if now is None or now["generation"] == manifest["generation"] or time.monotonic() > deadline:
            return problems


def _check_generation(p: Path, manifest: dict[str, Any]) -> list[str]:
    import sqlite3

    try:
        verify_files(p, manifest)
    except IndexFormatError as e:
        return [str(e)]
    from hybridrag.stores.docstore import DocStore

    try:
        ds = DocStore(p / DOCSTORE, read_only=True)
    except (IndexFormatError, sqlite3.DatabaseError) as e:
        return [f"{p / DOCSTORE}: {e}"]
    problems: list[str] = []
    gen = int(manifest["generation"])
    try:
        ds.as_of = gen
        ds.pin()
        problems += [f"{p / DOCSTORE}: {msg}" for msg in ds.integrity_problems()]
        if problems:
            return problems
        digest = manifest.get("docstore_sha256")
        if digest is not None and ds.content_checksum() != digest:
            problems.append(f"{p / DOCSTORE}: docstore content does not match the manifest (generation {gen})")
        verify_rows = getattr(ds, "verify_rows", None)
        if verify_rows is not None:
            problems += [f"{p / DOCSTORE}: {msg}" for msg in verify_rows(gen)]
        live = ds.live_slots(as_of=gen)
        want = int(manifest["counts"]["chunks"])
        if len(live) != want:
            problems.append(f"docstore holds {len(live)} committed chunks, manifest says {want}")
    except sqlite3.DatabaseError as e:
        problems.append(f"{p / DOCSTORE}: docstore is unreadable or corrupt ({e})")
    finally:
        ds.close()
    if problems:
        return problems
    try:
        idx = HybridIndex._open(p, manifest, False, None, None, None, read_only=True)
    except (IndexFormatError, OSError, _Stale) as e:
        return [str(e)]
    try:
        held = [idx._table.live_slots(e["id"]) for e in idx._table.entries]
        slots = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
        if idx._local_stores() and not np.array_equal(slots, live):
            problems.append(f"the segments hold {len(slots)} live rows, the docstore {len(live)} chunks, "
                            "and they are not the same chunks")
        for mode, entry in manifest.get("remote", {}).items():
            if entry.get("rows") is not None and int(entry["rows"]) != len(live):
                problems.append(f"store {mode!r} holds {entry['rows']} rows, docstore {len(live)} chunks")
    finally:
        idx.close()
    return problems
