"""The retrieval modes and the store backends that hold them: one entry per mode, one per
backend. Adding a mode means an entry here, its config section (``hybridrag/config.py``) and
its backend's store file in ``hybridrag/stores/``; the engine, the write path and the query
side read everything else from here.

A pipeline picks each mode's backend by name (``[dense] backend = "faiss"``); ``[milvus]
enabled = true`` is the short form of ``backend = "milvus"`` for the modes Milvus holds by
default (dense and sparse; ColBERT's token vectors and BM25 move to Milvus only with their own
``backend = "milvus"``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Mode", "Backend", "MODES", "BACKENDS", "NEURAL", "FIRST_STAGE", "store_class", "new_store"]


@dataclass(frozen=True)
class Mode:
    """A retrieval mode.

    ``neural``: its rows are one output of the neural encoder (``EncodedBatch.<name>``), made
    by the encoder's single pass; otherwise BM25's own analyser makes them. ``first_stage``:
    it retrieves candidates (ColBERT only rescores them). ``by_terms``: it matches shared
    terms, so a query with no known term retrieves nothing. ``backends``: the backends that
    can hold it, the default first. ``milvus_default``: ``[milvus] enabled`` alone moves it to
    Milvus (when Milvus is among its backends); otherwise only its own ``backend = "milvus"``.
    """

    name: str
    neural: bool
    first_stage: bool
    by_terms: bool
    backends: tuple[str, ...]
    #: the local store's settings from the pipeline and the loaded encoder
    settings: Callable[[Any, Any], dict[str, Any]]
    milvus_default: bool = True


@dataclass(frozen=True)
class Backend:
    """Where a mode's rows live: a store class (``module:Class``) and whether it is local
    (segments in the index directory) or remote (a service the index points at)."""

    name: str
    store: str
    local: bool


MODES: dict[str, Mode] = {
    "dense": Mode("dense", neural=True, first_stage=True, by_terms=False, backends=("faiss", "milvus"),
                  settings=lambda cfg, enc: {"dim": enc.dim, "factory": cfg.dense.index}),
    "sparse": Mode("sparse", neural=True, first_stage=True, by_terms=True, backends=("inverted", "milvus"),
                   settings=lambda cfg, enc: {"weighting": "none"}),
    "bm25": Mode("bm25", neural=False, first_stage=True, by_terms=True, backends=("inverted", "milvus"),
                 settings=lambda cfg, enc: {"weighting": f"bm25{cfg.bm25.variant}", "k1": cfg.bm25.k1,
                                            "b": cfg.bm25.b, "epsilon": cfg.bm25.epsilon},
                 # only with [bm25] backend = "milvus": an index made before BM25 had a Milvus
                 # backend keeps its local BM25 under [milvus] enabled
                 milvus_default=False),
    "colbert": Mode("colbert", neural=True, first_stage=False, by_terms=False, backends=("multivector", "milvus"),
                    settings=lambda cfg, enc: {"dim": getattr(enc, "colbert_dim", None) or enc.dim,
                                               "encoding": cfg.colbert.encoding,
                                               "pq_train_tokens": cfg.colbert.pq_train_tokens,
                                               "pq_train_pool": cfg.colbert.pq_train_pool},
                    # kept local unless asked: Milvus holds tokens as float32 rows, and fetching
                    # a candidate's tokens from Milvus Lite costs more than scoring them
                    milvus_default=False),
}

BACKENDS: dict[str, Backend] = {
    "faiss": Backend("faiss", "hybridrag.stores.faiss:FaissStore", local=True),
    "inverted": Backend("inverted", "hybridrag.stores.sparse:SparseIndex", local=True),
    "multivector": Backend("multivector", "hybridrag.stores.multivector:MultiVectorStore", local=True),
    "milvus": Backend("milvus", "hybridrag.stores.milvus:{Mode}", local=False),
}

NEURAL = tuple(m for m, d in MODES.items() if d.neural)
FIRST_STAGE = tuple(m for m, d in MODES.items() if d.first_stage)


def store_class(backend: str, mode: str) -> Any:
    """The store class of ``backend`` for ``mode`` (imported on first use)."""
    target = BACKENDS[backend].store.replace("{Mode}", f"Milvus{mode.capitalize()}Store")
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def new_store(mode: str, pipeline: Any, encoder: Any) -> Any:
    """An empty local store for ``mode`` as ``pipeline`` configures it (``encoder``: the loaded
    encoder, for vector widths; ``None`` for a mode that is not neural)."""
    return store_class(pipeline.backend(mode), mode)(**MODES[mode].settings(pipeline, encoder))
