"""``HybridRAGRerank``: rerank LlamaIndex nodes with hybridrag's :class:`CrossEncoderReranker`
(bge-reranker, bge-reranker-v2-m3, any one-logit cross-encoder).

Scores are ``CrossEncoderReranker.compute_score`` of ``(query, node text)`` pairs: raw
logits, or their sigmoid with ``normalize=True``. By default the node text is taken
without metadata, as the engine's own rerank stage does, so scores match it.

Covered by ``tests/test_connectors.py``.
"""
from __future__ import annotations

import os
from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from hybridrag.rerankers.cross_encoder import CrossEncoderReranker

__all__ = ["HybridRAGRerank"]

dispatcher = get_dispatcher(__name__)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class HybridRAGRerank(BaseNodePostprocessor):
    """Keep the ``top_n`` nodes by cross-encoder score, best first (ties keep input order).

    Pass ``model`` (a local folder or Hugging Face id) to load a reranker, or ``reranker``
    to share one already loaded (e.g. ``index.reranker``). Input nodes are not modified:
    the result holds new ``NodeWithScore`` objects around the same nodes.
    """

    model: str = Field(description="Cross-encoder folder or Hugging Face id.")
    top_n: int = Field(description="Number of nodes to return, best first.")
    normalize: bool = Field(description="Sigmoid of the logit (scores in (0, 1)) instead of the raw logit.")
    max_length: int = Field(description="Maximum tokens of a (query, passage) pair.")
    batch_size: int = Field(description="Pairs per forward pass.")
    metadata_mode: MetadataMode = Field(description="Which node metadata goes into the passage text.")
    _reranker: CrossEncoderReranker = PrivateAttr()

    def __init__(
        self,
        model: str | os.PathLike[str] = "BAAI/bge-reranker-v2-m3",
        top_n: int = 5,
        normalize: bool = False,
        max_length: int = 512,
        batch_size: int = 32,
        device: str | None = None,
        metadata_mode: MetadataMode = MetadataMode.NONE,
        reranker: CrossEncoderReranker | None = None,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        _positive_int(top_n, "top_n")
        _positive_int(batch_size, "batch_size")
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be a bool, got {normalize!r}")
        if reranker is None:
            if not isinstance(model, (str, os.PathLike)):
                raise TypeError(f"model must be a path or Hugging Face id, got {type(model).__name__}")
            reranker = CrossEncoderReranker.from_pretrained(model, device=device, max_length=max_length)
        elif not isinstance(reranker, CrossEncoderReranker):
            raise TypeError(f"reranker must be a hybridrag CrossEncoderReranker, got {type(reranker).__name__}")
        super().__init__(
            model=reranker.name_or_path or os.fspath(model),
            top_n=top_n,
            normalize=normalize,
            max_length=reranker.max_length,
            batch_size=batch_size,
            metadata_mode=metadata_mode,
            callback_manager=callback_manager or CallbackManager(),
        )
        self._reranker = reranker

    @classmethod
    def class_name(cls) -> str:
        """Name used by LlamaIndex for serialisation and tracing."""
        return "HybridRAGRerank"

    @property
    def reranker(self) -> CrossEncoderReranker:
        """The loaded cross-encoder."""
        return self._reranker

    def _postprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        """Score every node against ``query_bundle.query_str``; return the best ``top_n``."""
        if query_bundle is None:
            raise ValueError("HybridRAGRerank needs the query: pass query_bundle or query_str")
        dispatcher.event(ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=self.top_n,
                                          model_name=self.model))
        if not nodes:
            dispatcher.event(ReRankEndEvent(nodes=[]))
            return []
        pairs = [(query_bundle.query_str, n.node.get_content(metadata_mode=self.metadata_mode)) for n in nodes]
        with self.callback_manager.event(
            CBEventType.RERANKING,
            payload={
                EventPayload.NODES: nodes,
                EventPayload.MODEL_NAME: self.model,
                EventPayload.QUERY_STR: query_bundle.query_str,
                EventPayload.TOP_K: self.top_n,
            },
        ) as event:
            scores = self._reranker.compute_score(pairs, normalize=self.normalize, batch_size=self.batch_size)
            scored = [NodeWithScore(node=n.node, score=float(s)) for n, s in zip(nodes, scores)]
            # sorted() is stable: equal scores keep the input (retrieval) order.
            new_nodes = sorted(scored, key=lambda n: -float(n.score or 0.0))[: self.top_n]
            event.on_end(payload={EventPayload.NODES: new_nodes})
        dispatcher.event(ReRankEndEvent(nodes=new_nodes))
        return new_nodes
