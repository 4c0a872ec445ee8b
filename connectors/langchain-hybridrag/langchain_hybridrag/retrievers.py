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
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LCDocument
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, field_validator, model_validator

from hybridrag.client import RemoteIndex
from hybridrag.index import AddResult, HybridIndex
from hybridrag.types import Document, Hit
from hybridrag.integrations import (
    IndexLike,
    check_index,
    check_search_kwargs,
    check_top_k,
    index_with_documents,
    open_index,
    override_names,
    search,
    to_documents,
    upsert,
)
from hybridrag.search.options import OVERRIDES, SearchOptions

logger = logging.getLogger(__name__)

__all__ = ["ENGINE_METADATA_KEYS", "HybridRAGRetriever", "hit_to_document", "index_from_documents",
           "upsert_documents"]

#: Metadata keys the retriever adds to every document (replacing same-named chunk metadata).
ENGINE_METADATA_KEYS: tuple[str, ...] = ("doc_id", "start_index", "end_index", "score", "hybridrag_scores",
                                         "hybridrag_ranks")


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
        logger.debug("chunk %r: metadata key(s) %s are replaced by hybridrag's own values", hit.chunk_id, clash)
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

    Build with ``HybridRAGRetriever(index=path_or_index)``, :meth:`from_path` or
    :meth:`from_documents`. ``invoke(query)`` returns up to ``k`` documents, best first;
    ``invoke(query, k=..., filters=..., modes=...)`` overrides any setting for one call.

    ``HybridRAGRetriever(url="http://127.0.0.1:8000", api_key=...)`` searches a
    ``hybridrag serve`` server instead (through :class:`hybridrag.client.RemoteIndex`).

    Attributes:
        index: the open :class:`HybridIndex`; given a path, the index this process already
            has open there (shared with every retriever and writer of that path), else it is
            loaded; or a :class:`~hybridrag.client.RemoteIndex` (what ``url=`` gives).
        k: documents per query.
        filters: metadata conditions applied before top-k (``{"year": {"$gte": 2020}}``).
        search_kwargs: pipeline overrides (``modes``, ``fusion``, ``weights``, ``depth``,
            ``rerank``, ``rerank_k``, ``rrf_k``).
    """

    # A misnamed argument (LlamaIndex's ``similarity_top_k``, an override such as ``fusion``
    # given beside ``search_kwargs``) is an error, not silently dropped.
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    index: HybridIndex | RemoteIndex
    k: int = 4
    filters: dict[str, Any] | None = None
    search_kwargs: dict[str, Any] = Field(default_factory=dict)

    def __init__(self, **data: Any) -> None:
        # The index is opened before pydantic sees it, so that a missing or damaged index raises
        # hybridrag's IndexFormatError itself (pydantic wraps a validator's ValueError).
        if data.get("index") is not None and not isinstance(data["index"], (HybridIndex, RemoteIndex)):
            data["index"] = open_index(data["index"])
        super().__init__(**data)

    @model_validator(mode="before")
    @classmethod
    def _known_arguments(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields) - {"url", "api_key"})
            if unknown:
                overrides = [u for u in unknown if u in OVERRIDES]
                hint = (f"; search settings go in search_kwargs={{{overrides[0]!r}: ...}}" if overrides
                        else "; the number of documents is k" if "similarity_top_k" in unknown else "")
                raise ValueError(f"unknown retriever argument(s) {unknown}; valid: "
                                 f"{sorted(set(cls.model_fields) | {'url', 'api_key'})}{hint}")
        return data

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

    @field_validator("index", mode="before")
    @classmethod
    def _validate_index(cls, value: Any) -> HybridIndex | RemoteIndex:
        return value if isinstance(value, RemoteIndex) else open_index(value)

    @field_validator("k")
    @classmethod
    def _validate_k(cls, value: int) -> int:
        return check_top_k(value, "k")

    @field_validator("search_kwargs", mode="before")
    @classmethod
    def _validate_search_kwargs(cls, value: Any) -> dict[str, Any]:
        return check_search_kwargs(value, "k")

    @field_validator("filters", mode="before")
    @classmethod
    def _validate_filters(cls, value: Any) -> dict[str, Any] | None:
        return _check_filters(value)

    @classmethod
    def from_path(cls, index_path: str | os.PathLike[str], **kwargs: Any) -> HybridRAGRetriever:
        """A retriever over the index at ``index_path`` (the one this process already has open
        there, else loaded); the same as ``HybridRAGRetriever(index=index_path, **kwargs)``."""
        return cls(index=index_path, **kwargs)

    @classmethod
    def from_documents(
        cls,
        documents: Iterable[LCDocument],
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
        """Build or update the index at ``index_path`` from LangChain ``documents`` (see
        :func:`index_from_documents`: running this again on the same path upserts into the
        index there); ``kwargs`` (``k``, ``filters``, ``search_kwargs``, ...) go to the
        retriever."""
        if "k" in kwargs:  # bad retriever settings fail before anything is written
            check_top_k(kwargs["k"], "k")
        check_search_kwargs(kwargs.get("search_kwargs"), "k")
        _check_filters(kwargs.get("filters"))
        index = index_from_documents(documents, index_path, pipeline, ids=ids, overwrite=overwrite,
                                     encoder=encoder, reranker=reranker, device=device)
        return cls(index=index, **kwargs)

    def add_documents(self, documents: Iterable[LCDocument], *, ids: Sequence[str] | None = None) -> list[str]:
        """Upsert LangChain ``documents`` into the index (see :func:`upsert_documents`);
        returns the id of each document given, in order."""
        docs, doc_ids = _convert(documents, ids)
        self.index.upsert(docs)
        return doc_ids

    def _search(self, query: str, overrides: Mapping[str, Any]) -> list[Hit]:
        unknown = sorted(set(overrides) - {"k", "filters"} - override_names())
        if unknown:
            raise ValueError(f"unknown retriever argument(s) {unknown}; choose from "
                             f"{sorted({'k', 'filters'} | override_names())}")
        k = check_top_k(overrides["k"], "k") if "k" in overrides else self.k
        filters = _check_filters(overrides["filters"]) if "filters" in overrides else self.filters
        given = {n: v for n, v in overrides.items() if n not in ("k", "filters")}
        return search(self.index, query, SearchOptions(k=k, filters=filters, **{**self.search_kwargs, **given}))

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


def _record(doc: Any, position: int, doc_id: Any) -> tuple[str | None, str, dict[str, Any]]:
    if not isinstance(doc, LCDocument):
        raise TypeError(f"documents[{position}] must be a langchain_core Document, got {type(doc).__name__}")
    return doc_id, doc.page_content, dict(doc.metadata or {})


def _convert(documents: Iterable[LCDocument], ids: Sequence[str] | None) -> tuple[list[Document], list[str]]:
    if isinstance(documents, (str, bytes, LCDocument, Mapping)) or not isinstance(documents, Iterable):
        raise TypeError(f"documents must be a list of langchain_core Document, got {type(documents).__name__}")
    documents = list(documents)
    if ids is not None:
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
            raise TypeError(f"ids must be a list of str, got {type(ids).__name__}")
        if len(ids) != len(documents):
            raise ValueError(f"ids has {len(ids)} entries for {len(documents)} documents")
    return to_documents((_record(d, i, ids[i] if ids is not None else getattr(d, "id", None))
                         for i, d in enumerate(documents)), reserved=ENGINE_METADATA_KEYS)


def upsert_documents(index: IndexLike, documents: Iterable[LCDocument], *,
                     ids: Sequence[str] | None = None) -> AddResult:
    """Upsert LangChain ``documents`` into ``index``: a new id is added, an id whose text or
    metadata changed has all its chunks replaced, an unchanged one is skipped.

    ``index`` is an open :class:`HybridIndex` or the path of one (the index this process
    already has open there, else one opened for this call and closed after it). The id of
    ``documents[i]`` is ``ids[i]`` when given, else ``documents[i].id``, else a stable id from
    its source and text (see :func:`index_from_documents`).
    """
    check_index(index)
    return upsert(index, _convert(documents, ids)[0])


def index_from_documents(
    documents: Iterable[LCDocument],
    index_path: str | os.PathLike[str],
    pipeline: Any,
    *,
    ids: Sequence[str] | None = None,
    overwrite: bool = False,
    **create_kwargs: Any,
) -> HybridIndex:
    """The index at ``index_path`` for ``pipeline`` (TOML path, name, config or dict) with
    LangChain ``documents`` upserted into it: created when there is none; an index already
    there (open in this process, or on disk) is reused when it was built with this same
    pipeline (unchanged documents are skipped), and is a :class:`~hybridrag.errors.ConfigError`
    naming what differs otherwise. ``overwrite=True`` replaces it.

    The id of ``documents[i]`` is ``ids[i]`` when given, else ``documents[i].id``, else (what
    loaders give) a stable id from its source (``metadata["source"]``) and text, so loading
    and ingesting the same files again changes nothing (see
    :func:`hybridrag.integrations.derived_id`). The text is ``page_content``, the metadata
    ``metadata`` (must be JSON-serialisable). ``create_kwargs`` go to
    :meth:`HybridIndex.create` / :meth:`HybridIndex.load` (``encoder``, ``reranker``,
    ``device``). Documents are checked before anything is written; on a failed write an
    index this call opened is closed.
    """
    return index_with_documents(index_path, pipeline, _convert(documents, ids)[0], overwrite=overwrite,
                                **create_kwargs)
