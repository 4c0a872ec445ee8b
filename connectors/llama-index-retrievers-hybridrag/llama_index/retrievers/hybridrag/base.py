"""``HybridRAGRetriever``: a hybridrag index as a LlamaIndex retriever, and helpers that
build or update an index from LlamaIndex documents.

Each :class:`~hybridrag.types.Hit` becomes a ``NodeWithScore`` (score = the hit's final
score) whose ``TextNode`` has ``id_ = chunk_id``, the chunk text, its character span in the
source document (``start_char_idx``/``end_char_idx``), a ``SOURCE`` relationship to the
document (so ``node.ref_doc_id == hit.doc_id``), and metadata = the chunk's metadata plus
the engine keys in :data:`ENGINE_METADATA_KEYS`, which are kept out of the embed and LLM
metadata text.

Covered by ``tests/test_connectors.py``.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from llama_index.core.callbacks import CallbackManager
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import (
    BaseNode,
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    QueryBundle,
    RelatedNodeInfo,
    TextNode,
)
from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilters

from hybridrag.index import AddResult, HybridIndex
from hybridrag.types import Document, Hit
from hybridrag.integrations import (
    IndexLike,
    check_index,
    check_search_kwargs,
    check_top_k,
    index_with_documents,
    open_index,
    search,
    to_documents,
    upsert,
)
from hybridrag.search.options import SearchOptions

logger = logging.getLogger(__name__)

__all__ = [
    "ENGINE_METADATA_KEYS",
    "HybridRAGRetriever",
    "hit_to_node",
    "index_from_llama_documents",
    "metadata_filters_to_dict",
    "upsert_llama_documents",
]

#: Metadata keys the retriever adds to every node; excluded from embed and LLM metadata.
#: ``hybridrag_scores`` holds the per-mode scores (``dense``, ``bm25``, ..., ``fused``,
#: ``rerank``), ``hybridrag_ranks`` the 1-based first-stage ranks.
ENGINE_METADATA_KEYS: tuple[str, ...] = ("doc_id", "char_start", "char_end", "hybridrag_scores", "hybridrag_ranks")

# LlamaIndex filter operators that hybridrag's metadata filters can express.
_OPERATORS: dict[FilterOperator, str] = {
    FilterOperator.EQ: "$eq", FilterOperator.NE: "$ne",
    FilterOperator.GT: "$gt", FilterOperator.GTE: "$gte",
    FilterOperator.LT: "$lt", FilterOperator.LTE: "$lte",
    FilterOperator.IN: "$in", FilterOperator.NIN: "$nin",
}


def metadata_filters_to_dict(filters: MetadataFilters) -> dict[str, Any]:
    """Translate LlamaIndex ``MetadataFilters`` into hybridrag's filter dict.

    Supported: ``AND`` (also nested) of ``==, !=, >, >=, <, <=, in, nin`` conditions.
    ``OR``/``NOT`` and the other operators raise ``ValueError`` naming them.
    """
    out: dict[str, dict[str, Any]] = {}

    def visit(fs: MetadataFilters) -> None:
        condition = fs.condition or FilterCondition.AND
        if condition != FilterCondition.AND:
            raise ValueError(f"filter condition {condition.value!r} is not supported by hybridrag; "
                             "only 'and' (every condition must hold)")
        for f in fs.filters:
            if isinstance(f, MetadataFilters):
                visit(f)
                continue
            op = _OPERATORS.get(f.operator)
            if op is None:
                raise ValueError(f"filter operator {f.operator.value!r} on {f.key!r} is not supported by hybridrag; "
                                 f"choose from {[o.value for o in _OPERATORS]}")
            conds = out.setdefault(f.key, {})
            if op in conds:
                raise ValueError(f"filter {f.key!r} uses {f.operator.value!r} twice; combine the values into one "
                                 "condition (e.g. 'in')")
            conds[op] = list(f.value) if op in ("$in", "$nin") else f.value

    visit(filters)
    return out


def _check_filters(filters: MetadataFilters | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if filters is None:
        return None
    if isinstance(filters, MetadataFilters):
        return metadata_filters_to_dict(filters)
    if not isinstance(filters, Mapping):
        raise TypeError("filters must be a dict of metadata conditions or llama_index MetadataFilters, "
                        f"got {type(filters).__name__}")
    return dict(filters)


def hit_to_node(hit: Hit) -> NodeWithScore:
    """Convert one engine hit into a LlamaIndex ``NodeWithScore`` (score = the hit's final score)."""
    metadata: dict[str, Any] = dict(hit.metadata)
    clash = sorted(k for k in ENGINE_METADATA_KEYS if k in metadata)
    if clash:
        logger.debug("chunk %r: metadata key(s) %s are replaced by hybridrag's own values", hit.chunk_id, clash)
    start, end = int(hit.span[0]), int(hit.span[1])
    metadata.update({
        "doc_id": hit.doc_id,
        "char_start": start,
        "char_end": end,
        "hybridrag_scores": dict(hit.scores),
        "hybridrag_ranks": dict(hit.ranks),
    })
    node = TextNode(
        id_=hit.chunk_id,
        text=hit.text,
        metadata=metadata,
        start_char_idx=start,
        end_char_idx=end,
        excluded_embed_metadata_keys=list(ENGINE_METADATA_KEYS),
        excluded_llm_metadata_keys=list(ENGINE_METADATA_KEYS),
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=hit.doc_id)},
    )
    return NodeWithScore(node=node, score=float(hit.score))


class HybridRAGRetriever(BaseRetriever):
    """Retrieve chunks from a hybridrag index.

    Args:
        index: an open :class:`HybridIndex`, or the path of one: the index this process
            already has open there (shared with every retriever and writer of that path),
            else it is loaded.
        url: instead of ``index``, a ``hybridrag serve`` server (``http://127.0.0.1:8000``),
            searched through :class:`hybridrag.client.RemoteIndex`; ``api_key`` its key
            (default ``$HYBRIDRAG_API_KEY``).
        similarity_top_k: number of nodes per query (``k`` of ``HybridIndex.search``).
        filters: metadata conditions applied before top-k: hybridrag's dict
            (``{"year": {"$gte": 2020}}``) or LlamaIndex ``MetadataFilters`` (AND only).
        search_kwargs: per-call overrides of the pipeline (``modes``, ``fusion``, ``weights``,
            ``depth``, ``rerank``, ``rerank_k``, ``rrf_k``).
    """

    def __init__(
        self,
        index: IndexLike | None = None,
        similarity_top_k: int = 10,
        filters: MetadataFilters | Mapping[str, Any] | None = None,
        search_kwargs: Mapping[str, Any] | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
        url: str | None = None,
        api_key: str | None = None,
    ) -> None:
        if url is not None:
            from hybridrag.client import RemoteIndex

            if index is not None:
                raise ValueError("pass index or url, not both")
            remote: RemoteIndex | None = RemoteIndex(url, api_key=api_key)
        else:
            remote = None
        self.similarity_top_k = check_top_k(similarity_top_k, "similarity_top_k")
        self.filters = _check_filters(filters)
        self.search_kwargs = check_search_kwargs(search_kwargs, "similarity_top_k")
        self.index = remote if remote is not None else open_index(index)
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @classmethod
    def from_documents(
        cls,
        documents: Iterable[BaseNode],
        index_path: str | os.PathLike[str],
        pipeline: Any,
        *,
        overwrite: bool = False,
        similarity_top_k: int = 10,
        filters: MetadataFilters | Mapping[str, Any] | None = None,
        search_kwargs: Mapping[str, Any] | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
        **create_kwargs: Any,
    ) -> HybridRAGRetriever:
        """Build or update the index at ``index_path`` from LlamaIndex ``documents`` (see
        :func:`index_from_llama_documents`: running this again on the same path upserts into
        the index there) and return a retriever over it."""
        check_top_k(similarity_top_k, "similarity_top_k")  # bad arguments fail before any write
        _check_filters(filters)
        check_search_kwargs(search_kwargs, "similarity_top_k")
        index = index_from_llama_documents(index_path, pipeline, documents, overwrite=overwrite, **create_kwargs)
        return cls(index, similarity_top_k=similarity_top_k, filters=filters, search_kwargs=search_kwargs,
                   callback_manager=callback_manager, verbose=verbose)

    @classmethod
    def class_name(cls) -> str:
        """Name used by LlamaIndex for serialisation and tracing."""
        return "HybridRAGRetriever"

    def _search(self, query: str) -> list[Hit]:
        options = SearchOptions(k=self.similarity_top_k, filters=self.filters, **self.search_kwargs)
        return search(self.index, query, options)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """Search the index with ``query_bundle.query_str``; nodes best first."""
        return [hit_to_node(h) for h in self._search(query_bundle.query_str)]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """As :meth:`_retrieve`, with the (blocking) search run in a worker thread so the
        event loop stays free."""
        hits = await asyncio.to_thread(self._search, query_bundle.query_str)
        return [hit_to_node(h) for h in hits]


def _record(doc: Any, position: int) -> tuple[str | None, str, dict[str, Any]]:
    if not isinstance(doc, BaseNode):
        raise TypeError(f"documents[{position}] must be a llama_index.core Document (or node), "
                        f"got {type(doc).__name__}")
    # A Document built without id_ (what readers such as SimpleDirectoryReader give) has a
    # random uuid4: not an id to upsert by. It gets a stable id from its source and text.
    doc_id = doc.id_ if "id_" in doc.model_fields_set else None
    return doc_id, doc.get_content(metadata_mode=MetadataMode.NONE), dict(doc.metadata or {})


def _convert(documents: Iterable[BaseNode]) -> list[Document]:
    if isinstance(documents, (str, bytes, BaseNode, Mapping)) or not isinstance(documents, Iterable):
        raise TypeError(f"documents must be a list of llama_index.core Document, got {type(documents).__name__}")
    return to_documents((_record(d, i) for i, d in enumerate(documents)), reserved=ENGINE_METADATA_KEYS)[0]


def upsert_llama_documents(index: IndexLike, documents: Iterable[BaseNode]) -> AddResult:
    """Upsert LlamaIndex ``documents`` into ``index``: a new id is added, an id whose text
    or metadata changed has all its chunks replaced, an unchanged one is skipped.

    ``index`` is an open :class:`HybridIndex` or the path of one (the index this process
    already has open there, else one opened for this call and closed after it).
    """
    check_index(index)
    return upsert(index, _convert(documents))


def index_from_llama_documents(
    path: str | os.PathLike[str],
    pipeline: Any,
    documents: Iterable[BaseNode],
    *,
    overwrite: bool = False,
    **create_kwargs: Any,
) -> HybridIndex:
    """The index at ``path`` for ``pipeline`` (TOML path, name, config or dict) with LlamaIndex
    ``documents`` upserted into it: created when there is none; an index already there (open
    in this process, or on disk) is reused when it was built with this same pipeline (unchanged
    documents are skipped), and is a :class:`~hybridrag.errors.ConfigError` naming what
    differs otherwise. ``overwrite=True`` replaces it.

    The document id is ``doc.id_`` when it was set, else a stable id from the document's
    source (``metadata["source"]`` or ``metadata["file_path"]``) and text (see
    :func:`hybridrag.integrations.derived_id`); the text is ``doc.get_content()`` without
    metadata, the metadata ``doc.metadata`` (must be JSON-serialisable). ``create_kwargs`` go
    to :meth:`HybridIndex.create` / :meth:`HybridIndex.load` (``encoder``, ``reranker``,
    ``device``). Documents are checked before anything is written; on a failed write an
    index this call opened is closed.
    """
    return index_with_documents(path, pipeline, _convert(documents), overwrite=overwrite, **create_kwargs)
