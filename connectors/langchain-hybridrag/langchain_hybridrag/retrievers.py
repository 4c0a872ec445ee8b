"""``HybridRAGRetriever``: a hybridrag index as a LangChain retriever, and helpers that
build or update an index from LangChain documents.

Each :class:`~hybridrag.types.Hit` becomes a LangChain ``Document`` with ``id`` = the chunk
id, ``page_content`` = the chunk text, and metadata = the chunk's metadata plus the engine
keys in :data:`ENGINE_METADATA_KEYS`: ``doc_id`` (source document), ``start_index`` /
``end_index`` (character span in the source document; ``start_index`` is the key LangChain's
text splitters use), ``score`` (final score), ``hybridrag_scores`` (per mode, plus
``fused`` and ``rerank``) and ``hybridrag_ranks`` (1-based first-stage ranks).

Covered by ``tests/test_connectors.py``.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LCDocument
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, field_validator, model_validator

from hybridrag.client import RemoteIndex
from hybridrag.index import AddResult, HybridIndex
from hybridrag.types import Document, Hit

logger = logging.getLogger(__name__)

__all__ = ["ENGINE_METADATA_KEYS", "HybridRAGRetriever", "hit_to_document", "index_from_documents",
           "upsert_documents"]

#: Metadata keys the retriever adds to every document (replacing same-named chunk metadata).
ENGINE_METADATA_KEYS: tuple[str, ...] = ("doc_id", "start_index", "end_index", "score", "hybridrag_scores",
                                         "hybridrag_ranks")


def _override_names() -> frozenset[str]:
    """Keyword-only search overrides that ``HybridIndex.search_batch`` accepts (modes, fusion, ...)."""
    params = inspect.signature(HybridIndex.search_batch).parameters.values()
    return frozenset(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _check_k(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"k must be a positive integer, got {value!r}")
    return value


def _check_search_kwargs(search_kwargs: Any) -> dict[str, Any]:
    if search_kwargs is None:
        return {}
    if not isinstance(search_kwargs, Mapping):
        raise TypeError(f"search_kwargs must be a dict, got {type(search_kwargs).__name__}")
    allowed = _override_names()
    bad = sorted(set(search_kwargs) - allowed)
    if bad:
        raise ValueError(f"unknown search override(s) {bad}; choose from {sorted(allowed)} "
                         "(pass k and filters as their own arguments)")
    return dict(search_kwargs)


def _check_filters(filters: Any) -> dict[str, Any] | None:
    if filters is None:
        return None
    if not isinstance(filters, Mapping):
        raise TypeError(f"filters must be a dict of metadata conditions, got {type(filters).__name__}")
    return dict(filters)


def hit_to_document(hit: Hit) -> LCDocument:
    """Convert one engine hit into a LangChain ``Document`` (``id`` = chunk id)."""
    metadata: dict[str, Any] = dict(hit.metadata)
    clash = sorted(k for k in ENGINE_METADATA_KEYS if k in metadata)
    if clash:
        logger.warning("chunk %r: metadata key(s) %s are replaced by hybridrag's own values", hit.chunk_id, clash)
    metadata.update({
        "doc_id": hit.doc_id,
        "start_index": int(hit.span[0]),
        "end_index": int(hit.span[1]),
        "score": float(hit.score),
        "hybridrag_scores": dict(hit.scores),
        "hybridrag_ranks": dict(hit.ranks),
    })
    return LCDocument(id=hit.chunk_id, page_content=hit.text, metadata=metadata)


class HybridRAGRetriever(BaseRetriever):
    """Retrieve chunks from a hybridrag index.

    Build with ``HybridRAGRetriever(index=HybridIndex.load(path))``, :meth:`from_path` or
    :meth:`from_documents`. ``invoke(query)`` returns up to ``k`` documents, best first;
    ``invoke(query, k=..., filters=..., modes=...)`` overrides any setting for one call.

    ``HybridRAGRetriever(url="http://127.0.0.1:8000", api_key=...)`` searches a
    ``hybridrag serve`` server instead (through :class:`hybridrag.client.RemoteIndex`).

    Attributes:
        index: the open :class:`HybridIndex` (or :class:`~hybridrag.client.RemoteIndex`).
        k: documents per query.
        filters: metadata conditions applied before top-k (``{"year": {"$gte": 2020}}``).
        search_kwargs: pipeline overrides (``modes``, ``fusion``, ``weights``, ``depth``,
            ``rerank``, ``rerank_k``, ``rrf_k``).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: HybridIndex | RemoteIndex
    k: int = 4
    filters: dict[str, Any] | None = None
    search_kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _url_to_index(cls, data: Any) -> Any:
        if isinstance(data, dict) and "url" in data:
            data = dict(data)
            url, api_key = data.pop("url"), data.pop("api_key", None)
            if data.get("index") is not None:
                raise ValueError("pass index or url, not both")
            data["index"] = RemoteIndex(url, api_key=api_key)
        return data

    @field_validator("k")
    @classmethod
    def _validate_k(cls, value: int) -> int:
        return _check_k(value)

    @field_validator("search_kwargs", mode="before")
    @classmethod
    def _validate_search_kwargs(cls, value: Any) -> dict[str, Any]:
        return _check_search_kwargs(value)

    @field_validator("filters", mode="before")
    @classmethod
    def _validate_filters(cls, value: Any) -> dict[str, Any] | None:
        return _check_filters(value)

    @classmethod
    def from_path(cls, index_path: str | os.PathLike[str], **kwargs: Any) -> HybridRAGRetriever:
        """Open the index at ``index_path`` (read) and return a retriever over it."""
        return cls(index=HybridIndex.load(index_path), **kwargs)

    @classmethod
    def from_documents(
        cls,
        documents: Sequence[LCDocument],
        index_path: str | os.PathLike[str],
        pipeline: Any,
        *,
        ids: Sequence[str] | None = None,
        overwrite: bool = False,
        encoder: Any = None,
        reranker: Any = None,
        device: str | None = None,
        **kwargs: Any,
    ) -> HybridRAGRetriever:
        """Create an index at ``index_path`` for ``pipeline`` from LangChain ``documents`` (see
        :func:`index_from_documents`); ``kwargs`` (``k``, ``filters``, ``search_kwargs``, ...)
        go to the retriever."""
        index = index_from_documents(documents, index_path, pipeline, ids=ids, overwrite=overwrite,
                                     encoder=encoder, reranker=reranker, device=device)
        try:
            return cls(index=index, **kwargs)
        except BaseException:
            index.close()
            raise

    def add_documents(self, documents: Sequence[LCDocument], *, ids: Sequence[str] | None = None) -> list[str]:
        """Upsert LangChain ``documents`` into the index (see :func:`upsert_documents`);
        returns the ids of the documents given."""
        docs = _convert(documents, ids)
        self.index.upsert(docs)
        return [d.id for d in docs]

    def _search(self, query: str, overrides: Mapping[str, Any]) -> list[Hit]:
        unknown = sorted(set(overrides) - {"k", "filters"} - _override_names())
        if unknown:
            raise ValueError(f"unknown retriever argument(s) {unknown}; choose from "
                             f"{sorted({'k', 'filters'} | _override_names())}")
        k = _check_k(overrides["k"]) if "k" in overrides else self.k
        filters = _check_filters(overrides["filters"]) if "filters" in overrides else self.filters
        search = {**self.search_kwargs, **{n: v for n, v in overrides.items() if n not in ("k", "filters")}}
        return self.index.search(query, k=k, filters=filters, **search)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[LCDocument]:
        """Search the index; documents best first."""
        return [hit_to_document(h) for h in self._search(query, kwargs)]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[LCDocument]:
        """As :meth:`_get_relevant_documents`, with the (blocking) search run in a worker
        thread so the event loop stays free."""
        hits = await asyncio.to_thread(self._search, query, kwargs)
        return [hit_to_document(h) for h in hits]


def _lc_to_document(doc: Any, position: int, doc_id: Any) -> Document:
    if not isinstance(doc, LCDocument):
        raise TypeError(f"documents[{position}] must be a langchain_core Document, got {type(doc).__name__}")
    if doc_id is None:
        raise ValueError(f"documents[{position}] has no id: set Document(id=...) or pass ids=[...]")
    if not isinstance(doc_id, str) or not doc_id.strip():
        raise ValueError(f"documents[{position}] has no usable id: {doc_id!r}")
    metadata = dict(doc.metadata or {})
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise ValueError(f"documents[{position}] (id {doc_id!r}): metadata key {key!r} is not a string")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"documents[{position}] (id {doc_id!r}): metadata[{key!r}] = {value!r:.80} "
                             f"is not JSON-serialisable ({exc}); hybridrag stores metadata as JSON") from None
    return Document(id=doc_id, text=doc.page_content, metadata=metadata)


def _convert(documents: Sequence[LCDocument], ids: Sequence[str] | None) -> list[Document]:
    if isinstance(documents, (str, bytes, LCDocument)) or not isinstance(documents, Sequence):
        raise TypeError(f"documents must be a list of langchain_core Document, got {type(documents).__name__}")
    if ids is not None:
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
            raise TypeError(f"ids must be a list of str, got {type(ids).__name__}")
        if len(ids) != len(documents):
            raise ValueError(f"ids has {len(ids)} entries for {len(documents)} documents")
    return [_lc_to_document(d, i, ids[i] if ids is not None else d.id) for i, d in enumerate(documents)]


def upsert_documents(index: HybridIndex, documents: Sequence[LCDocument], *,
                     ids: Sequence[str] | None = None) -> AddResult:
    """Upsert LangChain ``documents`` into an open index: a new id is added, an id whose
    text or metadata changed has all its chunks replaced, an unchanged one is skipped.

    The id of ``documents[i]`` is ``ids[i]`` when given, else ``documents[i].id``.
    """
    if not isinstance(index, HybridIndex):
        raise TypeError(f"index must be a HybridIndex, got {type(index).__name__}")
    return index.upsert(_convert(documents, ids))


def index_from_documents(
    documents: Sequence[LCDocument],
    index_path: str | os.PathLike[str],
    pipeline: Any,
    *,
    ids: Sequence[str] | None = None,
    overwrite: bool = False,
    **create_kwargs: Any,
) -> HybridIndex:
    """Create an index at ``index_path`` for ``pipeline`` (TOML path, name, config or dict)
    and upsert LangChain ``documents`` into it.

    The id of ``documents[i]`` is ``ids[i]`` when given, else ``documents[i].id`` (required);
    the text is ``page_content``, the metadata ``metadata`` (must be JSON-serialisable).
    ``create_kwargs`` go to :meth:`HybridIndex.create` (``encoder``, ``reranker``, ``device``).
    Documents are checked before anything is written; on a failed write the index is closed.
    """
    docs = _convert(documents, ids)
    index = HybridIndex.create(Path(index_path), pipeline, overwrite=overwrite, **create_kwargs)
    try:
        index.upsert(docs)
    except BaseException:
        index.close()
        raise
    return index
