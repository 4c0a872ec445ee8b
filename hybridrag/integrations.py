"""What hybridrag's framework connectors (LlamaIndex, LangChain) share (used by them, not a user API).

- One open :class:`~hybridrag.index.HybridIndex` per index directory in a process
  (:func:`open_index`): every retriever and writer given the same path, by any connector,
  uses the same object, so they share its one writer lock and see each other's writes.
  The registry holds the objects weakly: an index lives as long as something of the user's
  (a retriever) holds it.
- Opening or creating an index for framework documents (:func:`index_with_documents`): an
  index already at the path is opened and the documents upserted (unchanged ones skipped by
  content hash) when its pipeline is the one given; another pipeline is a
  :class:`~hybridrag.errors.ConfigError` naming the differences; ``overwrite=True`` rebuilds.
- Stable ids for documents that have none (:func:`derived_id`), so re-ingesting the same
  loader output is idempotent.
- The argument checks both retrievers make, and their search call (:func:`search`: one
  :class:`~hybridrag.search.options.SearchOptions` per query).

Covered by ``tests/test_connectors.py``.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from hybridrag.storage.versions import search_differences
from hybridrag.errors import ConfigError
from hybridrag.index import MANIFEST, AddResult, HybridIndex, _as_pipeline, read_manifest
from hybridrag.search.options import OVERRIDES, SearchOptions
from hybridrag.types import Document, SearchResults

__all__ = [
    "SOURCE_KEYS",
    "IndexLike",
    "check_index",
    "check_search_kwargs",
    "check_top_k",
    "derived_id",
    "index_with_documents",
    "open_index",
    "override_names",
    "search",
    "to_documents",
    "upsert",
]

#: An open index, or the path of its directory.
IndexLike = Union[HybridIndex, str, "os.PathLike[str]"]

#: Metadata keys naming where a document came from, first found wins: ``source`` (LangChain
#: loaders), ``file_path`` (LlamaIndex readers). Part of an id made by :func:`derived_id`.
SOURCE_KEYS: tuple[str, ...] = ("source", "file_path")

_OPEN: weakref.WeakValueDictionary[Path, HybridIndex] = weakref.WeakValueDictionary()
_OPEN_LOCK = threading.RLock()
_WATCHED: weakref.WeakSet[HybridIndex] = weakref.WeakSet()


# ------------------------------------------------------------------ one open index per path
def _key(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve()


def check_index(index: Any) -> None:
    """``TypeError`` unless ``index`` is a :class:`HybridIndex` or a path (``str``/``os.PathLike``)."""
    if not isinstance(index, (HybridIndex, str, os.PathLike)):
        raise TypeError(f"index must be a HybridIndex or the path of one, got {type(index).__name__}")


def _is_open(index: HybridIndex) -> bool:
    # HybridIndex has no public "closed" flag; close() drops the docstore's connection.
    return getattr(index.docstore, "_conn", None) is not None


def _open_at(path: str | os.PathLike[str]) -> HybridIndex | None:
    """The open index registered for ``path``, unless it is closed or out of date."""
    current = _OPEN.get(_key(path))
    if current is None or not _is_open(current):
        return None
    # Another process committed since this object was opened: it cannot write (the library
    # asks to load again) and it searches the old state, so a fresh load takes its place for
    # whoever asks next. It cannot be this process's writer: a writer keeps the lock until
    # it is closed, so no other process could have committed.
    on_disk = read_manifest(current.path, missing_ok=True)
    if on_disk is not None and int(on_disk["generation"]) != current._gen:
        return None
    return current


def _register(index: HybridIndex) -> HybridIndex:
    with _OPEN_LOCK:
        if _open_at(index.path) is None:
            _OPEN[_key(index.path)] = index  # a closed or out-of-date one is replaced
        if index not in _WATCHED:
            # An index dropped without close() keeps its writer lock (a raw file descriptor) until
            # the process exits, so no later object of this path could write: release the lock
            # when the object is collected. The bound method keeps the lock alive, not the index.
            weakref.finalize(index, index._lock.release)
            _WATCHED.add(index)
    return index


def open_index(index: IndexLike) -> HybridIndex:
    """The :class:`HybridIndex` for ``index``.

    An index object is returned as it is (and becomes the open index of its path, unless
    another open object already is). For a path: the index this process already has open
    there, else ``HybridIndex.load(path)``, kept as the open index of that path for as long
    as something holds it.
    """
    if isinstance(index, HybridIndex):
        if not _is_open(index):
            raise ValueError(f"the HybridIndex of {str(index.path)!r} is closed; pass its path to open it again")
        return _register(index)
    check_index(index)
    with _OPEN_LOCK:
        current = _open_at(index)  # not `or`: an empty index is falsy (len 0)
        return current if current is not None else _register(HybridIndex.load(index))


def upsert(index: IndexLike, documents: list[Document]) -> AddResult:
    """Upsert ``documents`` into ``index`` (an index object, or a path: the index this process
    has open there, else one opened for this call and closed after it)."""
    if isinstance(index, HybridIndex):
        return open_index(index).upsert(documents)
    check_index(index)
    with _OPEN_LOCK:
        current = _open_at(index)
        opened = HybridIndex.load(index) if current is None else None
    if opened is None:
        return current.upsert(documents)  # type: ignore[union-attr]
    try:
        return opened.upsert(documents)
    finally:
        opened.close()


def index_with_documents(path: str | os.PathLike[str], pipeline: Any, documents: list[Document], *,
                         overwrite: bool = False, **create_kwargs: Any) -> HybridIndex:
    """The index at ``path`` for ``pipeline`` with ``documents`` upserted into it.

    No index there: one is created. An index there (open in this process, or on disk): it is
    opened and the documents upserted (new ids added, changed ones replaced, unchanged ones
    skipped) when it was built with this same pipeline; with another pipeline a
    :class:`ConfigError` names the settings that differ and nothing is written.
    ``overwrite=True`` replaces whatever is there (closing the index this process has open at
    that path). ``create_kwargs`` (``encoder``, ``reranker``, ``device``) go to
    :meth:`HybridIndex.create` or :meth:`HybridIndex.load`. On a failed write an index this
    call opened or created is closed.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"the index path must be a str or os.PathLike, got {type(path).__name__}")
    cfg = _as_pipeline(pipeline)
    with _OPEN_LOCK:
        index = _open_at(path)
        opened_here = index is None or overwrite
        if overwrite:
            if index is not None:
                index.close()
            index = HybridIndex.create(path, cfg, overwrite=True, **create_kwargs)
        elif index is None and (Path(path) / MANIFEST).is_file():
            index = HybridIndex.load(path, **create_kwargs)
        elif index is None:
            index = HybridIndex.create(path, cfg, **create_kwargs)
        diff = search_differences(index.pipeline, cfg, index.pipeline_versions())
        if diff:
            if opened_here:
                index.close()
            raise ConfigError(f"{str(path)!r} holds an index built with another pipeline "
                              f"({index.pipeline.name!r}); it differs in {'; '.join(diff)}. Pass "
                              "overwrite=True to rebuild it with this pipeline (every document is "
                              "encoded again), or open it as it is by its path")
        _register(index)
    try:
        index.upsert(documents)
    except BaseException:
        if opened_here:
            index.close()
        raise
    return index


# ------------------------------------------------------------------ documents
def derived_id(text: str, metadata: Mapping[str, Any], *, with_metadata: bool = False) -> str:
    """The id of a document that has none: the first 32 hex digits of the sha256 of the UTF-8
    JSON ``[source, text]`` (``json.dumps(..., ensure_ascii=False)``), ``source`` being the
    value of the first of :data:`SOURCE_KEYS` in ``metadata`` (``None`` when there is none);
    ``with_metadata``: of ``[source, text, metadata]`` (keys sorted).

    The same text from the same source always gets the same id, so ingesting it again is a
    no-op, and a change of its other metadata replaces it rather than adding a copy."""
    source = next((metadata[k] for k in SOURCE_KEYS if k in metadata), None)
    fields = [source, text, dict(metadata)] if with_metadata else [source, text]
    payload = json.dumps(fields, ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _check_metadata(metadata: Mapping[str, Any], position: int, doc_id: str | None) -> dict[str, Any]:
    where = f"documents[{position}]" + (f" (id {doc_id!r})" if doc_id is not None else "")
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise ValueError(f"{where}: metadata key {key!r} is not a string")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: metadata[{key!r}] = {value!r:.80} is not JSON-serialisable "
                             f"({exc}); hybridrag stores metadata as JSON") from None
    return dict(metadata)


def to_documents(records: Iterable[tuple[str | None, str, Mapping[str, Any]]],
                 reserved: Sequence[str] = ()) -> tuple[list[Document], list[str]]:
    """Turn ``(id or None, text, metadata)`` records into hybridrag documents, checking ids and
    metadata (JSON) before anything is written; returns the documents and each record's id.
    ``reserved``: metadata keys the connector's retrieved documents fill with hybridrag's own
    values; a record holding one gets one ``UserWarning`` for the call, here, at the write
    (every retrieval of it logged a warning before, and its value cannot come back).

    A record without an id gets :func:`derived_id`. Records whose derived ids coincide are
    one document when their metadata is equal too (the same document given twice); when
    their metadata differs (two pages of one file with the same text), their ids are
    derived ``with_metadata``, so each is kept.
    """
    rows: list[tuple[str | None, str, dict[str, Any]]] = []
    for position, (doc_id, text, metadata) in enumerate(records):
        if doc_id is not None and (not isinstance(doc_id, str) or not doc_id.strip()):
            raise ValueError(f"documents[{position}] has no usable id: {doc_id!r}")
        rows.append((doc_id, text, _check_metadata(metadata, position, doc_id)))
    clash = sorted({k for _, _, m in rows for k in reserved if k in m})
    if clash:
        import warnings

        warnings.warn(f"metadata key(s) {clash} of these documents are stored but replaced by hybridrag's own "
                      f"values in retrieved documents ({list(reserved)}); rename them to keep them visible",
                      UserWarning, stacklevel=3)
    ids = [i if i is not None else derived_id(t, m) for i, t, m in rows]
    variants: dict[str, set[str]] = {}
    for (given, _, metadata), doc_id in zip(rows, ids):
        if given is None:
            variants.setdefault(doc_id, set()).add(json.dumps(metadata, sort_keys=True))
    ids = [doc_id if given is not None or len(variants[doc_id]) == 1
           else derived_id(text, meta, with_metadata=True)
           for (given, text, meta), doc_id in zip(rows, ids)]
    docs: dict[str, Document] = {}
    out: list[Document] = []
    for (given, text, metadata), doc_id in zip(rows, ids):
        if given is None and doc_id in docs:
            continue  # the same document again (same derived id, text and metadata)
        docs[doc_id] = Document(id=doc_id, text=text, metadata=metadata)
        out.append(docs[doc_id])
    return out, ids


# ------------------------------------------------------------------ retriever arguments
def override_names() -> frozenset[str]:
    """The per-call search overrides beside ``k`` and ``filters`` (modes, fusion, ...): the
    fields of :class:`~hybridrag.search.options.SearchOptions`."""
    return frozenset(OVERRIDES)


def check_top_k(value: Any, name: str) -> int:
    """``value`` if it is a positive int, else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_search_kwargs(search_kwargs: Any, top_k_name: str) -> dict[str, Any]:
    """A copy of ``search_kwargs`` (``None`` = ``{}``) once every key is a search override and
    every value a valid one (checked by :class:`SearchOptions`, so a bad value fails when the
    retriever is made, not at its first query)."""
    if search_kwargs is None:
        return {}
    if not isinstance(search_kwargs, Mapping):
        raise TypeError(f"search_kwargs must be a dict, got {type(search_kwargs).__name__}")
    allowed = override_names()
    bad = sorted(set(search_kwargs) - allowed)
    if bad:
        raise ValueError(f"unknown search override(s) {bad}; choose from {sorted(allowed)} "
                         f"(pass {top_k_name} and filters as their own arguments)")
    SearchOptions(**search_kwargs)
    return dict(search_kwargs)


def search(index: Any, query: str, options: SearchOptions) -> SearchResults:
    """Search ``query`` with ``options`` in ``index``: a :class:`HybridIndex`, or a
    :class:`hybridrag.client.RemoteIndex` (which sends the options as the request's fields)."""
    if isinstance(index, HybridIndex):
        return index.search(query, options=options)
    return index.search(query, k=options.k, filters=options.filters, **options.overrides())
