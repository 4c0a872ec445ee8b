"""HybridIndex: the engine's façade. Create, load, add, upsert, delete, search, commit,
optimize and close one index directory; the work is done by its parts:

* ``hybridrag/write.py``      the write path: documents -> chunks -> one encoder pass -> stores + docstore
* ``hybridrag/storage/``      the directory: manifest, segments and deletions, commits, merges, lock, check
* ``hybridrag/search/``       planning, first-stage retrieval, exact scores, fusion
* ``hybridrag/stores/``       one file per store (FAISS, inverted index, multi-vector, SQLite docstore, Milvus)

A write goes to each store's fresh in-memory part and to docstore rows tagged with the next
generation; :meth:`HybridIndex.commit` writes the fresh parts as a new segment and swaps
``manifest.json`` atomically, so a crash at any point leaves the last committed state whole
(``docs/DESIGN.md``, "On disk"). Tested in ``tests/test_index.py`` (search against brute
force, persistence, filters), ``tests/test_segments.py`` and ``tests/test_cli.py``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hybridrag import components, write
from hybridrag.config import PipelineConfig
from hybridrag.errors import ConfigError, IndexClosedError
from hybridrag.search import execute
from hybridrag.search.options import SearchOptions
from hybridrag.storage import commit as commit_mod
from hybridrag.storage import opening
from hybridrag.storage import versions as pipeline_versions
from hybridrag.storage.check import check_index  # noqa: F401 - the public name lived here
from hybridrag.storage.lock import IndexLock as _Lock
from hybridrag.storage.lock import ReadWriteLock
from hybridrag.storage.manifest import FORMAT_VERSION, MANIFEST, read_manifest  # noqa: F401 - cli, server
from hybridrag.storage.opening import _as_pipeline  # noqa: F401 - used by cli, integrations
from hybridrag.storage.policy import TieredMergePolicy
from hybridrag.storage.segments import SegmentedStore
from hybridrag.storage.table import SegmentTable
from hybridrag.storage.versions import PipelineVersion
from hybridrag.types import SearchResults
from hybridrag.write import (  # noqa: F401 - re-exported: the documents' API lived here
    MAX_ID_CHARS,
    MAX_METADATA_DEPTH,
    AddResult,
    as_document,
    content_hash,
)

logger = logging.getLogger(__name__)

DOCSTORE = "docstore.sqlite"


class HybridIndex:
    """A hybrid index on disk. Create with :meth:`create`, open with :meth:`load`.

    ``search`` is a thin wrapper over ``search_batch``. Writes are committed at the end
    of each call unless ``commit=False`` is passed (then call :meth:`commit`).
    """

    def __init__(self, path: Path, pipeline: PipelineConfig, manifest: dict[str, Any] | None,
                 encoder: Any = None, reranker: Any = None, device: str | None = None,
                 read_only: bool = False, docstore: Any = None) -> None:
        self.path = path
        self._read_only = read_only
        self.pipeline = pipeline
        self._device = device or (pipeline.encoder.device or None)
        self._encoder = encoder
        self._reranker = reranker
        self._runtime: str | None = None   # load(runtime=...): overrides the pipeline's runtimes
        self._bm25: Any = None
        self._bm25_vocab: dict[str, int] | None = None
        self._chunker: Any = None
        self.stores: dict[str, Any] = {}
        self._lock = _Lock(path)
        self._rw = ReadWriteLock()   # searches of this object beside its writes (storage/lock.py)
        self._manifest = manifest
        self._gen = int(manifest["generation"]) if manifest else 0
        self._dirty = False
        self._next_versions: Any = None   # pipeline versions the next manifest records (storage/versions.py)
        # The segments of the committed index and the slots written and deleted since.
        self._table = SegmentTable([], 1)
        self._vocab_files: list[str] = list((manifest or {}).get("bm25_vocab") or [])
        self._vocab_saved = 0   # BM25 terms already in a committed vocabulary file
        #: Which segments a commit merges afterwards (``None``: never; :meth:`optimize` still does).
        self.merge_policy: TieredMergePolicy | None = TieredMergePolicy()
        #: Merge in a thread of the index's own, installed by a later commit (``False``: in the commit).
        self.merge_in_background = True
        self._merge_job: Any = None
        # Milvus connection settings the user gave (never read from the index alone).
        self._milvus_conn: dict[str, str] = {}
        self._milvus_from_index = False  # the [milvus] section came from the manifest
        self._head: Any = None       # [milvus] whole_index: where commits are published (writer)
        self._attached: Any = None   # a query node (attach): the head it reads
        self._closed = False
        if docstore is not None:
            self.docstore = docstore
        else:
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
        An index at ``path`` (also one another process created while this one loaded its
        models) raises :class:`IndexFormatError` unless ``overwrite=True``.
        """
        return opening.create(cls, path, pipeline, overwrite=overwrite, encoder=encoder, reranker=reranker,
                              device=device)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, verify: bool = False, encoder: Any = None,
             reranker: Any = None, device: str | None = None, milvus_uri: str | None = None,
             milvus_token: str | None = None, runtime: str | None = None) -> "HybridIndex":
        """Open the last committed state of the index at ``path``.

        Opening reads the manifest and maps the segment files; it checks their structure
        (sizes, headers, offsets and ids within bounds), not every byte, so it takes about the
        same time at any index size. ``verify=True`` also checks every file against the
        manifest's sha256 and every docstore row against its hash (reading everything once;
        ``hybridrag check`` does this and more); a mismatch raises :class:`IndexFormatError`
        naming the file.
        ``milvus_uri`` / ``milvus_token`` (else ``$HYBRIDRAG_MILVUS_URI`` / ``$MILVUS_TOKEN``):
        where a Milvus-backed index's vectors are; required unless they are in a Milvus Lite
        file inside ``path`` (docs/MILVUS.md, "Security").
        ``runtime`` (``"torch"`` or ``"onnx"``): runs this process's encoder and reranker so,
        whatever the pipeline says (``encoder.runtime`` / ``rerank.runtime``); the pipeline is
        not changed. ONNX Runtime in fp32 gives the vectors torch does (docs/ENCODERS.md), so an
        index built with torch can be queried with it.
        """
        from hybridrag.encoders.onnx import check_runtime

        chosen = None if runtime is None or runtime == "" else check_runtime(runtime)
        idx = opening.load(cls, path, verify=verify, encoder=encoder, reranker=reranker, device=device,
                           milvus_uri=milvus_uri, milvus_token=milvus_token)
        if chosen == "onnx":   # now, not at the first search: the device asked for, the pipeline's dtypes
            for role, sect, used in (("encoder", idx.pipeline.encoder, idx.pipeline.encoder.kind != "none"),
                                     ("rerank", idx.pipeline.rerank, idx.pipeline.rerank.enabled)):
                try:
                    if used:
                        check_runtime(chosen, device=device or getattr(sect, "device", "") or None,
                                      dtype=sect.dtype or None)
                except ConfigError as exc:
                    idx.close()
                    why = f" (the index's pipeline sets {role}.dtype = {sect.dtype!r})" if sect.dtype else ""
                    raise ConfigError(f"{exc}{why}") from None
        idx._runtime = chosen
        return idx

    @classmethod
    def attach(cls, path: str | os.PathLike[str], *, collection: str, milvus_uri: str | None = None,
               milvus_token: str | None = None, encoder: Any = None, reranker: Any = None,
               device: str | None = None) -> "HybridIndex":
        """Open, as a query node, the index a writer publishes in Milvus (``[milvus] whole_index =
        true``) under the collection prefix ``collection``: its newest published commit, read
        entirely from Milvus (vectors, text, metadata, ids). ``path`` is the query node's own
        directory (made if missing; it keeps one small file naming ``collection``, so
        ``HybridIndex.load(path)`` and the CLI reopen it). ``milvus_uri`` / ``milvus_token``
        (else ``$HYBRIDRAG_MILVUS_URI`` / ``$MILVUS_TOKEN``) are required: where Milvus is
        always comes from the user. The index reads only; load it again to see newer commits
        (:meth:`published_generation` says whether there are any) (docs/MILVUS.md, "The whole index in Milvus").
        """
        return opening.attach(cls, path, collection=collection, milvus_uri=milvus_uri, milvus_token=milvus_token,
                              encoder=encoder, reranker=reranker, device=device)

    @classmethod
    def take_over(cls, path: str | os.PathLike[str], *, collection: str, milvus_uri: str | None = None,
                  milvus_token: str | None = None, encoder: Any = None, batch_size: int = 4096) -> "HybridIndex":
        """Make ``path`` the writer of the index published in Milvus under the collection prefix
        ``collection`` (``[milvus] whole_index = true``), in place of a writer whose directory
        is lost: its state is made again from the newest published commit (the docstore from
        the docs collection, the BM25 vocabulary from the terms collection, the stores' records
        from the head), then every collection of the index names ``path`` as its owner. No row
        is copied or encoded, the prefix stays, query nodes keep working. A commit the lost
        writer made but never published is dropped. ``path`` must not exist or be empty;
        ``milvus_uri`` / ``milvus_token`` as in :meth:`attach`. The old writer must be
        stopped (a writer still running on the old directory is refused at its next commit).
        Returns the index opened as a writer (close it) (docs/MILVUS.md, "A lost writer directory").
        """
        from hybridrag.storage.takeover import take_over

        return take_over(cls, path, collection=collection, milvus_uri=milvus_uri, milvus_token=milvus_token,
                         encoder=encoder, batch_size=batch_size)

    def published_generation(self) -> int | None:
        """A query node (:meth:`attach`): the newest generation the writer has published (None:
        not a query node). Newer than :attr:`generation` when :meth:`attach` again would see more."""
        return None if self._attached is None else self._attached.newest()

    @classmethod
    def rebuild(cls, path: str | os.PathLike[str], *, pipeline: Any = None, encoder: Any = None,
                device: str | None = None, batch_size: int = 256, milvus_uri: str | None = None,
                milvus_token: str | None = None) -> "HybridIndex":
        """Recover damaged or missing store files: re-encode every committed chunk text in the
        docstore into one new segment per store and commit it as a new generation.

        The pipeline comes from the manifest; pass ``pipeline`` (the one the index was built
        with) when the manifest itself is lost or corrupt. The docstore must be intact: a
        docstore that fails SQLite's integrity check or the manifest's content checksum raises
        :class:`IndexFormatError`. Returns the index, holding the writer lock (close it).
        A Milvus-backed index gets new collections (``milvus_uri`` / ``milvus_token`` as in
        :meth:`load` unless ``pipeline`` names them); the old ones it owns are dropped after
        the commit.
        """
        return opening.rebuild(cls, path, pipeline=pipeline, encoder=encoder, device=device, batch_size=batch_size,
                               milvus_uri=milvus_uri, milvus_token=milvus_token)

    @classmethod
    def migrate(cls, src: str | os.PathLike[str], dst: str | os.PathLike[str], *, to: str = "milvus",
                milvus_uri: str | None = None, milvus_token: str | None = None, collection: str | None = None,
                encoder: Any = None, batch_size: int = 4096, progress: Any = None,
                colbert: bool = False, whole_index: bool = False) -> "HybridIndex":
        """Copy the committed index at ``src`` into the new directory ``dst`` with its dense and
        learned-sparse vectors moved to Milvus (``to="milvus"``) or back to local stores
        (``to="local"``); nothing is encoded again and ``src`` is only read.

        Every slot, chunk, document and score stays: the stores that stay local are copied
        segment by segment, byte for byte; the moved stores get the stored rows (FAISS's kept
        vectors, the stored sparse weights), so ``dst`` returns the same top-k as ``src`` (within
        the float rounding of Milvus's client-side rescoring, 1e-5). ``milvus_uri`` /
        ``milvus_token``: the Milvus of ``dst`` (``to="milvus"``; default
        ``$HYBRIDRAG_MILVUS_URI``, else a Milvus Lite file inside ``dst``) or of ``src``
        (``to="local"``, as in :meth:`load`); ``collection`` names the new collections'
        prefix. ``dst`` must not exist or be empty. One commit at the end; a failure removes
        ``dst`` and drops the collections it made. Returns ``dst`` opened (close it).
        ``progress(n)`` is called with the rows copied per segment. ``colbert=True`` (with
        ``to="milvus"``) moves the ColBERT token vectors too (``[colbert] backend = "milvus"``;
        an fp16 or fp32 store only); ``to="local"`` always brings them back. ``whole_index=True``
        (with ``to="milvus"``) moves everything, text, metadata and ids too (``[milvus] whole_index``;
        ColBERT's token vectors and BM25 with them), so that query nodes can :meth:`attach` to it.
        ``src`` may be a query node's directory (:meth:`attach`; ``milvus_uri`` is then the Milvus
        of both): its published commit becomes a new writer's index (``whole_index=True`` and a
        ``collection`` prefix of its own: the way back from a lost writer directory) or a local
        one; documents without chunks are not carried (docs/MILVUS.md, "A lost writer directory").
        """
        from hybridrag.storage.migrate import migrate

        return migrate(cls, src, dst, to=to, milvus_uri=milvus_uri, milvus_token=milvus_token,
                       collection=collection, encoder=encoder, batch_size=batch_size, progress=progress,
                       colbert=colbert, whole_index=whole_index)

    # ------------------------------------------------------------------ components
    @property
    def encoder(self) -> Any:
        """The neural encoder (M3Encoder or DenseEncoder), loaded on first use."""
        if self._encoder is None and self.pipeline.encoder.kind != "none":
            self._encoder = components.load_encoder(self.pipeline, self._device, self._manifest,
                                                    runtime=self._runtime)
        return self._encoder

    @property
    def reranker(self) -> Any:
        """The cross-encoder, loaded on first use."""
        if self._reranker is None:
            self._reranker = components.load_reranker(self.pipeline, self._device, runtime=self._runtime)
        return self._reranker

    @property
    def bm25(self) -> Any:
        """The BM25 analyser and vocabulary (the committed one, then grown by writes)."""
        if self._bm25 is None:
            self._bm25 = components.make_bm25(self.pipeline, lambda: self.encoder, self._bm25_vocab)
        store = self.stores.get("bm25")
        if hasattr(store, "bind_vocabulary"):   # BM25 in Milvus: its terms collection is keyed by term
            if self._attached is not None:      # a query node: the vocabulary is Milvus's
                if self._bm25.vocabulary is not store.vocabulary():
                    self._bm25.vocabulary = store.vocabulary()
            elif store.bound is not self._bm25.vocabulary:
                store.bind_vocabulary(self._bm25.vocabulary)
        return self._bm25

    @property
    def chunker(self) -> Any:
        """The token-aware chunker (the encoder's tokenizer when there is one)."""
        if self._chunker is None:
            self._chunker = components.make_chunker(self.pipeline, lambda: self.encoder)
        return self._chunker

    # ------------------------------------------------------------------ writes
    def _writing(self) -> Any:
        return commit_mod.writing(self)

    def _undo_on_error(self) -> Any:
        return commit_mod.undo_on_error(self)

    def _check_open(self) -> None:
        if self._closed:
            raise IndexClosedError(f"the index {str(self.path)!r} is closed (close() was called or its with "
                                   "block ended); open it again with HybridIndex.load")

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
        self._check_open()
        return write.write_docs(self, documents, replace=False, commit=commit, batch_size=batch_size,
                                progress=progress, errors=errors)

    def upsert(self, documents: Iterable[Any], *, commit: bool = True, batch_size: int = 256,
               progress: Any = None, errors: str = "raise") -> AddResult:
        """Add documents, replacing every chunk of a document whose content changed
        (``errors`` and ``progress`` as in :meth:`add`)."""
        self._check_open()
        return write.write_docs(self, documents, replace=True, commit=commit, batch_size=batch_size,
                                progress=progress, errors=errors)

    def delete(self, ids: Iterable[str] | str | None = None, filters: Mapping[str, Any] | None = None,
               *, commit: bool = True) -> int:
        """Delete whole documents by id and/or by a metadata filter; returns how many documents."""
        self._check_open()
        return write.delete(self, ids, filters, commit)

    def commit(self, *, merge: bool = True) -> None:
        """Make the writes since the last commit durable and visible (one new segment per store,
        a deletion list per segment that lost rows, then the atomic manifest swap), then start
        merging the segments :attr:`merge_policy` picks unless ``merge=False``: in a background
        thread whose merged segments a later commit installs (:attr:`merge_in_background`).
        No-op when nothing changed. See :func:`hybridrag.storage.commit.commit`."""
        self._check_open()
        commit_mod.commit(self, merge=merge)

    def encoding_pool(self, devices: Sequence[str] | int) -> Any:
        """A context in which this index's writes encode in several processes, one per device
        (``["cuda:0", "cuda:1"]``; an int ``n``: ``n`` CPU processes), each loading the pipeline's
        model; the rows stored are those of one in-process encoder. See
        :mod:`hybridrag.encoders.pool`; ``hybridrag ingest --encode-devices``."""
        self._check_open()
        return write.encoding_pool(self, devices)

    def optimize(self) -> None:
        """Commit pending writes, then merge every segment into one without deleted rows
        (``hybridrag optimize``): the smallest index and the fastest searches. A merge is a
        commit: readers keep their snapshot, a crash leaves the last commit whole."""
        self._check_open()
        commit_mod.optimize(self)

    def wait_for_merges(self) -> None:
        """Wait for the background merge running now and install what it merged (each merge a
        commit); with writes not yet committed, the next commit installs it instead."""
        self._check_open()
        with self._writing(), self._rw.writing():
            if not self._dirty:
                commit_mod.merges.finish(self, wait=True)

    def _collect_garbage(self) -> None:
        commit_mod.collect_garbage(self)

    def _local_stores(self) -> dict[str, SegmentedStore]:
        return {m: s for m, s in self.stores.items() if isinstance(s, SegmentedStore)}

    def close(self) -> None:
        """Install a background merge (waiting for it), then release the writer lock and the
        docstore connection (uncommitted writes are dropped, a merge with them)."""
        if self._closed:
            return
        commit_mod.close_merges(self)
        with self._rw.writing():   # searches of this object in other threads finish first
            self._closed = True
            self._lock.release()
            for store in self.stores.values():
                closer = getattr(store, "close", None)
                if callable(closer):
                    closer()
            for head in (self._head, self._attached):
                if head is not None:
                    head.close()
            self.docstore.close()

    def __enter__(self) -> "HybridIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None and not self._closed:
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
        opts = SearchOptions.build(options, k, filters, **overrides)
        with self._rw.reading():   # (checked under the lock: a close() in another thread waits for it)
            self._check_open()
            return execute.search_batch(self, queries, opts)

    # ------------------------------------------------------------------ pipeline versions
    def pipeline_versions(self) -> list[PipelineVersion]:
        """Every version of this index's pipeline, oldest first (one is ``active``): the search
        settings it answered with (fusion, weights, depths, rerank), when and why each was made.
        ``v.options(k=...)`` searches with an old one per call (:mod:`hybridrag.storage.versions`)."""
        return pipeline_versions.as_versions(self._manifest, self.pipeline)

    def add_pipeline_version(self, settings: Mapping[str, Any], note: str = "") -> int:
        """Make a new version of the pipeline with ``settings`` (``"section.key"`` -> value, among
        :data:`~hybridrag.storage.versions.SEARCH_SETTINGS`, e.g. ``{"fusion.method": "rrf"}``;
        the rest as the active version has them) and make it active, as a commit (pending writes
        are committed first). Nothing is re-encoded. Returns its number; the old versions stay
        (:meth:`use_pipeline_version`). ``ConfigError`` names a setting that is not a search
        setting or a bad value; ``ValueError``: the settings change nothing (no version is made);
        switching the reranker on loads it first (``ModelLoadError`` if it cannot load here, and
        no version is made). ``hybridrag tune`` adds the version it chose this way."""
        self._check_open()
        if not isinstance(note, str):
            raise TypeError(f"note must be a str, got {type(note).__name__}")
        cfg = pipeline_versions.with_settings(self.pipeline, settings)
        versions, active = pipeline_versions.carried(self._manifest, self.pipeline)
        if pipeline_versions.settings_of(cfg) == pipeline_versions.settings_of(self.pipeline):
            raise ValueError(f"the settings {dict(settings)!r} change nothing: version {active} has them "
                             "already (no version made)")
        if cfg.rerank.enabled and not self.pipeline.rerank.enabled and self._reranker is None:
            # every later load and query node searches with the new version: its reranker must
            # load here (ModelLoadError), or every query would fail until another version is active
            self._reranker = components.load_reranker(cfg, self._device, runtime=self._runtime)
        versions.append(pipeline_versions.new_version(versions, pipeline_versions.settings_of(cfg), note))
        commit_mod.set_pipeline(self, cfg, versions, versions[-1]["version"])
        return int(versions[-1]["version"])

    def use_pipeline_version(self, version: int) -> None:
        """Make version ``version`` of the pipeline (:meth:`pipeline_versions`) the active one, as
        a commit: every later load and query node searches with its settings. ``ValueError``
        names a version that does not exist."""
        self._check_open()
        if not isinstance(version, int) or isinstance(version, bool):
            raise TypeError(f"version must be an int (a number of pipeline_versions()), got {version!r}")
        versions, active = pipeline_versions.carried(self._manifest, self.pipeline)
        found = [v for v in versions if int(v["version"]) == version]
        if not found:
            raise ValueError(f"no pipeline version {version!r} in {str(self.path)!r}; versions: "
                             f"{[int(v['version']) for v in versions]}")
        if version == active:
            return
        cfg = pipeline_versions.with_settings(self.pipeline, found[0]["settings"])
        commit_mod.set_pipeline(self, cfg, versions, version)

    # ------------------------------------------------------------------ info
    def stats(self) -> dict[str, Any]:
        """Counts, generation, pipeline name, modes, segments, bytes on disk per store and, for the
        modes kept in Milvus, what Milvus holds (``milvus``: collection, rows, vector bytes)."""
        self._check_open()
        return opening.stats(self)

    @property
    def generation(self) -> int:
        """The committed generation this object reads (``manifest.json``'s ``generation``)."""
        return self._gen

    def __len__(self) -> int:
        self._check_open()
        return self.docstore.count()

    def __repr__(self) -> str:
        size = "closed" if self._closed else f"chunks={len(self)}"
        return f"HybridIndex({str(self.path)!r}, pipeline={self.pipeline.name!r}, {size})"


