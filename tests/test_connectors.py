"""The framework connectors under connectors/ (LlamaIndex retriever and node postprocessor,
LangChain retriever) on tiny generated models: each returns exactly what the engine returns.

The connectors are installed in editable mode (``pip install -e connectors/...``); a missing
one fails here, it is not skipped.
"""
from __future__ import annotations

import asyncio
import importlib
import sys
import threading

import numpy as np
import pytest

from hybridrag.errors import IndexLockedError
from hybridrag.index import HybridIndex
from hybridrag.rerankers.cross_encoder import CrossEncoderReranker

TEXTS = [
    "Vitamin D deficiency is associated with bone fractures in older adults.",
    "Aspirin reduces the risk of heart attack in some patients.",
    "The quick brown fox jumps over the lazy dog.",
    "Retrieval augmented generation combines search with language models.",
    "Dense vectors, sparse lexical weights and ColBERT token vectors.",
    "FAISS stores dense vectors; an inverted index stores sparse weights.",
    "Bone health depends on vitamin D and calcium intake.",
    "Les modèles de langue répondent aux questions en français.",
    # long enough to be cut into several chunks (max_tokens below), so spans are not (0, len)
    "Calcium and vitamin D keep bones strong. Fractures heal slowly in older adults. Sunlight helps "
    "the skin make vitamin D. Milk, fish and eggs contain some of it. Low bone density raises the risk "
    "of fractures. Exercise also builds bone mass, and so do dense vectors of good habits.",
]
QUERIES = ["vitamin D bone fractures", "dense vectors FAISS", "heart attack aspirin"]
K = 4


def pipeline(m3_dir, reranker_dir):
    return {
        "name": "tiny-connectors",
        "encoder": {"kind": "m3", "model": str(m3_dir), "max_length": 64, "query_max_length": 32, "batch_size": 8},
        "chunking": {"max_tokens": 40, "overlap": 8},
        "dense": {"enabled": True, "depth": 6},
        "sparse": {"enabled": True, "depth": 6},
        "bm25": {"enabled": True, "depth": 6},
        "colbert": {"enabled": True},
        "fusion": {"method": "weighted", "weights": {"dense": 0.4, "sparse": 0.2, "colbert": 0.4, "bm25": 0.1}},
        "rerank": {"enabled": False, "model": str(reranker_dir), "k": 8, "max_length": 128},
    }


def raw_docs():
    return [{"id": f"d{i}", "text": t, "metadata": {"group": "even" if i % 2 == 0 else "odd", "n": i}}
            for i, t in enumerate(TEXTS)]


@pytest.fixture(scope="module")
def sharp_reranker_dir(tmp_path_factory, reranker_dir):
    """The tiny reranker with larger random weights: its scores spread out instead of being
    nearly equal for every pair, so that orders are meaningful (the default init gives logits
    that agree to 5 decimals)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tmp_path_factory.mktemp("sharp-reranker")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(reranker_dir)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(reranker_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def index(tmp_path_factory, m3_dir, sharp_reranker_dir):
    idx = HybridIndex.create(tmp_path_factory.mktemp("conn") / "idx", pipeline(m3_dir, sharp_reranker_dir))
    idx.add(raw_docs())
    assert any(h.span[0] > 0 for q in QUERIES for h in idx.search(q, k=10))  # the corpus has multi-chunk docs
    yield idx
    idx.close()


@pytest.fixture(scope="module")
def reranker(sharp_reranker_dir):
    return CrossEncoderReranker.from_pretrained(str(sharp_reranker_dir), max_length=128)


def assert_same_hits(got_ids, got_scores, hits):
    assert got_ids == [h.chunk_id for h in hits]
    assert got_scores == [h.score for h in hits]  # exact: the same floats, passed through


# ---------------------------------------------------------------------------- LlamaIndex retriever
def test_llama_retriever_returns_the_engine_hits(index):
    from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode
    from llama_index.retrievers.hybridrag import ENGINE_METADATA_KEYS, HybridRAGRetriever

    retriever = HybridRAGRetriever(index, similarity_top_k=K)
    source = {d["id"]: d for d in raw_docs()}
    for q in QUERIES:
        hits = index.search(q, k=K)
        nodes = retriever.retrieve(q)
        assert hits and len(nodes) == len(hits)
        assert_same_hits([n.node.node_id for n in nodes], [n.score for n in nodes], hits)
        for n, h in zip(nodes, hits):
            assert isinstance(n, NodeWithScore) and isinstance(n.node, TextNode)
            node = n.node
            assert node.text == h.text
            assert node.ref_doc_id == h.doc_id
            assert (node.start_char_idx, node.end_char_idx) == h.span
            assert source[h.doc_id]["text"][node.start_char_idx:node.end_char_idx] == node.text
            md = node.metadata
            assert {k: md[k] for k in ("group", "n")} == source[h.doc_id]["metadata"]
            assert md["doc_id"] == h.doc_id and (md["char_start"], md["char_end"]) == h.span
            assert md["hybridrag_scores"] == h.scores and md["hybridrag_ranks"] == h.ranks
            assert set(md["hybridrag_scores"]) >= {"dense", "sparse", "bm25", "colbert", "fused"}
            for mode in (MetadataMode.EMBED, MetadataMode.LLM):
                content = node.get_content(metadata_mode=mode)
                assert "group: " in content  # the document's own metadata stays visible
                for key in ENGINE_METADATA_KEYS:
                    assert f"{key}: " not in content


def test_llama_retriever_from_path_filters_and_overrides(index):
    from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters
    from llama_index.retrievers.hybridrag import HybridRAGRetriever

    q = QUERIES[0]
    by_path = HybridRAGRetriever(str(index.path), similarity_top_k=K)
    assert [n.node.node_id for n in by_path.retrieve(q)] == [h.chunk_id for h in index.search(q, k=K)]

    want = index.search(q, k=K, filters={"group": "even", "n": {"$gte": 2}})
    assert want and all(h.metadata["group"] == "even" and h.metadata["n"] >= 2 for h in want)
    mf = MetadataFilters(filters=[MetadataFilter(key="group", value="even"),
                                  MetadataFilter(key="n", value=2, operator=FilterOperator.GTE)])
    for filters in ({"group": "even", "n": {"$gte": 2}}, mf):
        nodes = HybridRAGRetriever(index, similarity_top_k=K, filters=filters).retrieve(q)
        assert_same_hits([n.node.node_id for n in nodes], [n.score for n in nodes], want)

    over = {"modes": ["bm25"], "weights": {"bm25": 1.0}, "fusion": "rrf"}
    nodes = HybridRAGRetriever(index, similarity_top_k=K, search_kwargs=over).retrieve(q)
    hits = index.search(q, k=K, **over)
    assert_same_hits([n.node.node_id for n in nodes], [n.score for n in nodes], hits)

    with pytest.raises(ValueError, match="unknown search override"):
        HybridRAGRetriever(index, search_kwargs={"top_k": 3})
    with pytest.raises(ValueError, match="similarity_top_k"):
        HybridRAGRetriever(index, similarity_top_k=0)
    with pytest.raises(ValueError, match="'or' is not supported"):
        HybridRAGRetriever(index, filters=MetadataFilters(filters=mf.filters, condition="or"))
    with pytest.raises(TypeError, match="HybridIndex"):
        HybridRAGRetriever(object())


def test_retrievers_pass_one_search_options_and_check_override_values_up_front(index, monkeypatch):
    from langchain_hybridrag import HybridRAGRetriever as LCRetriever
    from llama_index.retrievers.hybridrag import HybridRAGRetriever

    from hybridrag import SearchOptions

    seen = []
    search = index.search
    monkeypatch.setattr(index, "search", lambda q, **kw: seen.append(kw) or search(q, **kw))
    over = {"fusion": "rrf", "depth": 5}
    HybridRAGRetriever(index, similarity_top_k=3, filters={"group": "odd"}, search_kwargs=over).retrieve("x")
    LCRetriever(index=index, k=3, filters={"group": "odd"}, search_kwargs={"fusion": "relative"}).invoke(
        "x", fusion="rrf", depth=5)
    want = SearchOptions(k=3, filters={"group": "odd"}, fusion="rrf", depth=5)
    assert seen == [{"options": want}, {"options": want}]
    # a bad value fails when the retriever is made, naming it, not at its first query
    for bad, named in [({"fusion": "max"}, "unknown fusion 'max'"), ({"depth": 0}, "depth must be a positive"),
                       ({"weights": {"bm25": -1}}, r"weights\['bm25'\] = -1")]:
        with pytest.raises(ValueError, match=named):
            HybridRAGRetriever(index, search_kwargs=bad)
        with pytest.raises(ValueError, match=named):
            LCRetriever(index=index, search_kwargs=bad)
    with pytest.raises(TypeError, match="rerank must be True or False"):
        HybridRAGRetriever(index, search_kwargs={"rerank": "no"})


def test_llama_aretrieve_equals_retrieve_and_runs_off_the_loop(index, monkeypatch):
    from llama_index.retrievers.hybridrag import HybridRAGRetriever

    retriever = HybridRAGRetriever(index, similarity_top_k=K)
    sync = {q: retriever.retrieve(q) for q in QUERIES}
    threads: list[int] = []
    search = index.search

    def spy(*args, **kwargs):
        threads.append(threading.get_ident())
        return search(*args, **kwargs)

    async def main():
        loop_thread = threading.get_ident()
        results = await asyncio.gather(*(retriever.aretrieve(q) for q in QUERIES))
        return loop_thread, results

    monkeypatch.setattr(index, "search", spy)
    loop_thread, results = asyncio.run(main())
    assert len(threads) == len(QUERIES) and loop_thread not in threads  # searched in worker threads
    for q, nodes in zip(QUERIES, results):
        assert [(n.node.node_id, n.score, n.node.text, n.node.metadata) for n in nodes] == \
            [(n.node.node_id, n.score, n.node.text, n.node.metadata) for n in sync[q]]


# ---------------------------------------------------------------------------- LlamaIndex postprocessor
def test_llama_postprocessor_orders_by_cross_encoder_scores(index, reranker):
    from llama_index.core.schema import QueryBundle
    from llama_index.postprocessor.hybridrag_rerank import HybridRAGRerank
    from llama_index.retrievers.hybridrag import HybridRAGRetriever

    retriever = HybridRAGRetriever(index, similarity_top_k=8, search_kwargs={"depth": 8})
    post = HybridRAGRerank(reranker=reranker, top_n=K)
    assert post.reranker is reranker and post.max_length == 128
    for q in QUERIES:
        nodes = retriever.retrieve(q)
        ref = reranker.compute_score([(q, n.node.text) for n in nodes])
        assert np.diff(np.sort(ref)).min() > 1e-4  # distinct scores: the order below is meaningful
        order = np.argsort(-ref, kind="stable")[:K]
        assert list(order) != list(range(K))  # the rerank changes the retrieval order
        out = post.postprocess_nodes(nodes, query_str=q)
        assert [n.node.node_id for n in out] == [nodes[i].node.node_id for i in order]
        np.testing.assert_allclose([n.score for n in out], ref[order], rtol=0, atol=1e-6)
        # the engine's own rerank stage over the same 8 candidates gives the same top K
        engine = index.search(q, k=K, depth=8, rerank=True, rerank_k=8)
        assert [n.node.node_id for n in out] == [h.chunk_id for h in engine]
        np.testing.assert_allclose([n.score for n in out], [h.score for h in engine], atol=1e-6)
        # async equals sync; inputs are left as they were
        aout = asyncio.run(post.apostprocess_nodes(nodes, query_bundle=QueryBundle(q)))
        assert [(n.node.node_id, n.score) for n in aout] == [(n.node.node_id, n.score) for n in out]
        assert [n.score for n in nodes] == [h.score for h in index.search(q, k=8, depth=8)]

    normalized = HybridRAGRerank(reranker=reranker, top_n=2, normalize=True).postprocess_nodes(nodes, query_str=q)
    assert all(0.0 < n.score < 1.0 for n in normalized)
    assert post.postprocess_nodes([], query_str=q) == []
    with pytest.raises(ValueError, match="needs the query"):
        post.postprocess_nodes(nodes)
    with pytest.raises(ValueError, match="top_n"):
        HybridRAGRerank(reranker=reranker, top_n=0)


def test_llama_postprocessor_loads_a_model_folder(sharp_reranker_dir, reranker):
    from llama_index.core.schema import NodeWithScore, TextNode
    from llama_index.postprocessor.hybridrag_rerank import HybridRAGRerank

    post = HybridRAGRerank(model=str(sharp_reranker_dir), top_n=3, max_length=128, device="cpu")
    nodes = [NodeWithScore(node=TextNode(id_=f"n{i}", text=t), score=0.0) for i, t in enumerate(TEXTS)]
    out = post.postprocess_nodes(nodes, query_str="vitamin D")
    ref = reranker.compute_score([("vitamin D", t) for t in TEXTS])
    assert [n.node.node_id for n in out] == [f"n{i}" for i in np.argsort(-ref, kind="stable")[:3]]


# ---------------------------------------------------------------------------- LangChain retriever
def test_langchain_retriever_returns_the_engine_hits(index):
    from langchain_core.documents import Document as LCDocument
    from langchain_hybridrag import HybridRAGRetriever

    retriever = HybridRAGRetriever(index=index, k=K)
    source = {d["id"]: d for d in raw_docs()}
    for q in QUERIES:
        hits = index.search(q, k=K)
        docs = retriever.invoke(q)
        assert hits and len(docs) == len(hits)
        assert_same_hits([d.id for d in docs], [d.metadata["score"] for d in docs], hits)
        for d, h in zip(docs, hits):
            assert isinstance(d, LCDocument)
            assert d.page_content == h.text
            md = d.metadata
            assert {k: md[k] for k in ("group", "n")} == source[h.doc_id]["metadata"]
            assert md["doc_id"] == h.doc_id and (md["start_index"], md["end_index"]) == h.span
            assert source[h.doc_id]["text"][md["start_index"]:md["end_index"]] == d.page_content
            assert md["hybridrag_scores"] == h.scores and md["hybridrag_ranks"] == h.ranks
        adocs = asyncio.run(retriever.ainvoke(q))
        assert [(d.id, d.page_content, d.metadata) for d in adocs] == [(d.id, d.page_content, d.metadata) for d in docs]


def test_langchain_retriever_per_call_overrides_and_async_off_loop(index, monkeypatch):
    from langchain_hybridrag import HybridRAGRetriever

    q = QUERIES[0]
    retriever = HybridRAGRetriever.from_path(index.path, k=K, filters={"group": "odd"})
    want = index.search(q, k=K, filters={"group": "odd"})
    assert [d.id for d in retriever.invoke(q)] == [h.chunk_id for h in want]
    got = retriever.invoke(q, k=2, filters={"group": "even"}, modes=["bm25"], weights={"bm25": 1.0})
    hits = index.search(q, k=2, filters={"group": "even"}, modes=["bm25"], weights={"bm25": 1.0})
    assert_same_hits([d.id for d in got], [d.metadata["score"] for d in got], hits)
    with pytest.raises(ValueError, match="unknown retriever argument"):
        retriever.invoke(q, top_k=3)
    with pytest.raises(ValueError):
        HybridRAGRetriever(index=index, k=0)
    with pytest.raises(ValueError):
        HybridRAGRetriever(index=index, search_kwargs={"bogus": 1})
    # misnamed arguments were dropped silently (extra="ignore"): now named, with where they go
    with pytest.raises(ValueError, match=r"unknown retriever argument\(s\) \['similarity_top_k'\].*is k"):
        HybridRAGRetriever(index=index, similarity_top_k=2)
    with pytest.raises(ValueError, match=r"\['fusion'\].*search_kwargs=\{'fusion': ...\}"):
        HybridRAGRetriever(index=index, fusion="rrf")
    assert HybridRAGRetriever(index=index, tags=["t"]).tags == ["t"]   # LangChain's own fields still pass
    # a missing index raises hybridrag's IndexFormatError itself (it came wrapped in a ValidationError)
    from hybridrag import IndexFormatError

    with pytest.raises(IndexFormatError, match="is not an index"):
        HybridRAGRetriever.from_path(index.path.parent / "missing")

    threads: list[int] = []
    search = retriever.index.search
    monkeypatch.setattr(retriever.index, "search",
                        lambda *a, **kw: threads.append(threading.get_ident()) or search(*a, **kw))

    async def main():
        return threading.get_ident(), await retriever.ainvoke(q, k=3)

    loop_thread, adocs = asyncio.run(main())
    assert threads and loop_thread not in threads
    assert [d.id for d in adocs] == [h.chunk_id for h in search(q, k=3, filters={"group": "odd"})]


# ---------------------------------------------------------------------------- building from framework documents
def test_llama_documents_build_and_upsert(tmp_path, m3_dir, reranker_dir):
    from llama_index.core import Document as LlamaDocument
    from llama_index.retrievers.hybridrag import HybridRAGRetriever, index_from_llama_documents, upsert_llama_documents

    docs = [LlamaDocument(id_=d["id"], text=d["text"], metadata=d["metadata"]) for d in raw_docs()]
    # 50 hits at depth 50: every chunk comes back, so "all documents come back" checks the
    # build, not how a random-weight model ranks the long document's many chunks.
    retriever = HybridRAGRetriever.from_documents(docs, tmp_path / "li", pipeline(m3_dir, reranker_dir),
                                                  similarity_top_k=50, search_kwargs={"depth": 50})
    idx = retriever.index
    try:
        assert idx.stats()["documents"] == len(docs)
        nodes = retriever.retrieve("vitamin D")
        assert {n.node.ref_doc_id for n in nodes} == {d.id_ for d in docs}
        assert all(n.node.node_id.startswith(n.node.ref_doc_id + "#") for n in nodes)

        changed = LlamaDocument(id_="d2", text="Quantum chromodynamics describes the strong force.",
                                metadata={"group": "even", "n": 2})
        res = upsert_llama_documents(idx, [changed, docs[1]])
        assert res.added == ["d2"] and res.unchanged == ["d1"]
        d2 = HybridRAGRetriever(idx, similarity_top_k=20, filters={"doc_id": "d2"}).retrieve("quantum force")
        assert d2 and all(changed.text[n.node.start_char_idx:n.node.end_char_idx] == n.node.text for n in d2)
        assert min(n.node.start_char_idx for n in d2) == 0
        assert max(n.node.end_char_idx for n in d2) == len(changed.text)  # only the new text is indexed
        assert idx.stats()["documents"] == len(docs)
    finally:
        idx.close()

    again = index_from_llama_documents(tmp_path / "li", pipeline(m3_dir, reranker_dir), docs[:2], overwrite=True)
    assert again.stats()["documents"] == 2
    again.close()
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        index_from_llama_documents(tmp_path / "bad", pipeline(m3_dir, reranker_dir),
                                   [LlamaDocument(id_="x", text="t", metadata={"when": object()})])
    assert not (tmp_path / "bad").exists()  # checked before anything is written
    # a metadata key the retrieved nodes fill with the engine's own value: one warning at the write
    # (it was a logged warning at every retrieval of the node)
    with pytest.warns(UserWarning, match=r"\['doc_id'\] of these documents are stored but replaced"):
        mine = index_from_llama_documents(tmp_path / "mine", pipeline(m3_dir, reranker_dir),
                                          [LlamaDocument(id_="m", text="vitamin D", metadata={"doc_id": "mine"})])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [n.node.metadata["doc_id"] for n in HybridRAGRetriever(mine).retrieve("vitamin")] == ["m"]
    mine.close()


def test_langchain_documents_build_and_upsert(tmp_path, m3_dir, reranker_dir):
    from langchain_core.documents import Document as LCDocument
    from langchain_hybridrag import HybridRAGRetriever, index_from_documents, upsert_documents

    docs = [LCDocument(id=d["id"], page_content=d["text"], metadata=d["metadata"]) for d in raw_docs()]
    retriever = HybridRAGRetriever.from_documents(docs, tmp_path / "lc", pipeline(m3_dir, reranker_dir), k=50,
                                                  search_kwargs={"depth": 50})   # every chunk comes back
    idx = retriever.index
    try:
        assert idx.stats()["documents"] == len(docs)
        assert {d.metadata["doc_id"] for d in retriever.invoke("vitamin D")} == {d.id for d in docs}

        changed = LCDocument(id="d2", page_content="Quantum chromodynamics describes the strong force.",
                             metadata={"group": "even", "n": 2})
        assert retriever.add_documents([changed, docs[1]]) == ["d2", "d1"]
        d2 = retriever.invoke("quantum force", filters={"doc_id": "d2"})
        text = changed.page_content
        assert d2 and all(text[d.metadata["start_index"]:d.metadata["end_index"]] == d.page_content for d in d2)
        assert {d.metadata["start_index"] for d in d2} >= {0}
        assert max(d.metadata["end_index"] for d in d2) == len(text)  # only the new text is indexed
        res = upsert_documents(idx, [LCDocument(page_content="new text", metadata={})], ids=["d99"])
        assert res.added == ["d99"] and idx.stats()["documents"] == len(docs) + 1
    finally:
        idx.close()

    with pytest.raises(ValueError, match="not JSON-serialisable"):
        index_from_documents([LCDocument(page_content="t", metadata={"when": object()})], tmp_path / "x",
                             pipeline(m3_dir, reranker_dir))
    assert not (tmp_path / "x").exists()  # checked before anything is written
    built = index_from_documents([LCDocument(page_content="a b c")], tmp_path / "y", pipeline(m3_dir, reranker_dir),
                                 ids=["given"])
    assert [h.doc_id for h in built.search("a b c", k=1)] == ["given"]
    built.close()


# ---------------------------------------------------------------------------- re-runs, one open index per path, paths, ids
def few_llama_docs(n=3):
    from llama_index.core import Document as LlamaDocument

    return [LlamaDocument(id_=d["id"], text=d["text"], metadata=d["metadata"]) for d in raw_docs()[:n]]


def test_llama_from_documents_reruns_on_an_existing_index(tmp_path, m3_dir, reranker_dir):
    from llama_index.core import Document as LlamaDocument
    from llama_index.retrievers.hybridrag import HybridRAGRetriever

    from hybridrag.errors import ConfigError

    path, pipe, docs = tmp_path / "li", pipeline(m3_dir, reranker_dir), few_llama_docs()
    first = HybridRAGRetriever.from_documents(docs, path, pipe)
    gen = first.index.stats()["generation"]
    # the notebook cell run again: the open index is reused, unchanged documents are skipped
    again = HybridRAGRetriever.from_documents(docs, path, pipe, similarity_top_k=2)
    assert again.index is first.index
    assert again.index.stats()["generation"] == gen and again.index.stats()["documents"] == len(docs)
    assert len(again.retrieve("vitamin D")) == 2

    # the next session (the index closed, opened again from disk): new and edited documents are upserted
    first.index.close()
    del first, again
    edited = LlamaDocument(id_="d1", text="Quantum chromodynamics describes the strong force.", metadata={})
    extra = LlamaDocument(id_="d9", text="A ninth document about tides.", metadata={})
    later = HybridRAGRetriever.from_documents([docs[0], edited, extra], path, pipe, similarity_top_k=20)
    assert later.index.stats()["documents"] == len(docs) + 1
    d1 = [n.node.text for n in later.retrieve("quantum force") if n.node.ref_doc_id == "d1"]
    assert d1 and all(text in edited.text for text in d1)

    # another pipeline: an error naming what differs, and nothing written
    other = {**pipe, "chunking": {"max_tokens": 30, "overlap": 8}}
    with pytest.raises(ConfigError, match=r"chunking\.max_tokens.*40.*30.*overwrite=True"):
        HybridRAGRetriever.from_documents(docs, path, other)
    assert later.index.stats()["documents"] == len(docs) + 1
    # overwrite=True replaces it, even while this process has it open
    fresh = HybridRAGRetriever.from_documents(docs[:1], path, other, overwrite=True)
    assert fresh.index.stats()["documents"] == 1 and fresh.index.pipeline.chunking.max_tokens == 30
    fresh.index.close()


def test_one_open_index_per_path_is_shared(tmp_path, m3_dir, reranker_dir):
    import gc

    from langchain_core.documents import Document as LCDocument
    from langchain_hybridrag import HybridRAGRetriever as LCRetriever
    from langchain_hybridrag import upsert_documents
    from llama_index.core import Document as LlamaDocument
    from llama_index.retrievers.hybridrag import HybridRAGRetriever, upsert_llama_documents

    path = tmp_path / "shared"
    HybridIndex.create(path, pipeline(m3_dir, reranker_dir)).close()
    li = HybridRAGRetriever(path, similarity_top_k=20)
    lc = LCRetriever(index=str(path), k=20)
    assert lc.index is li.index and HybridRAGRetriever(str(path)).index is li.index
    # writes by path, by either connector, go through the one open index: no IndexLockedError,
    # and every retriever over it sees them
    upsert_llama_documents(str(path), [LlamaDocument(id_="a", text="alpha particles and helium nuclei")])
    upsert_documents(path, [LCDocument(id="b", page_content="beta decay emits electrons")])
    lc.add_documents([LCDocument(id="c", page_content="gamma rays are photons")])
    assert {n.node.ref_doc_id for n in li.retrieve("decay")} == {"a", "b", "c"}
    assert {d.metadata["doc_id"] for d in lc.invoke("decay")} == {"a", "b", "c"}

    # an index dropped without close() (its retrievers gone) does not keep this process from writing
    del li, lc
    gc.collect()
    again = HybridIndex.load(path)
    assert again.upsert([{"id": "d", "text": "delta rays"}]).added == ["d"]
    # a second object on a path the first is writing: the error says it is this process and what to do
    second = HybridIndex.load(path)
    with pytest.raises(IndexLockedError, match=r"this process.*close\(\)"):
        second.upsert([{"id": "e", "text": "epsilon"}])
    second.close()
    again.close()

    # another writer committed after the shared index was opened (here another object, closed
    # since; in practice another process): the next retriever or writer of the path gets a
    # fresh index that sees the new state and can write
    stale = HybridRAGRetriever(path, similarity_top_k=20)
    with HybridIndex.load(path) as other:
        other.upsert([{"id": "o", "text": "omega decay"}])
    assert upsert_llama_documents(path, [LlamaDocument(id_="p", text="pion decay")]).added == ["p"]
    fresh = HybridRAGRetriever(path, similarity_top_k=20)
    assert fresh.index is not stale.index and fresh.index is LCRetriever(index=path).index
    assert {n.node.ref_doc_id for n in fresh.retrieve("decay")} == {"a", "b", "c", "d", "o", "p"}
    fresh.index.close()


def test_a_path_is_accepted_wherever_an_index_is(tmp_path, m3_dir, reranker_dir):
    from langchain_core.documents import Document as LCDocument
    from langchain_hybridrag import HybridRAGRetriever as LCRetriever
    from langchain_hybridrag import upsert_documents
    from llama_index.retrievers.hybridrag import HybridRAGRetriever, upsert_llama_documents

    path = tmp_path / "p"
    HybridIndex.create(path, pipeline(m3_dir, reranker_dir)).close()
    # a path nobody has open (str or os.PathLike): opened for the write and closed after it,
    # so the writer lock is free again
    assert upsert_llama_documents(str(path), few_llama_docs(2)).added == ["d0", "d1"]
    assert upsert_documents(path, [LCDocument(id="x", page_content="x ray")]).added == ["x"]
    assert upsert_llama_documents(path, few_llama_docs(1)).unchanged == ["d0"]
    assert upsert_documents(str(path), [LCDocument(id="x", page_content="x ray")]).unchanged == ["x"]
    with HybridIndex.load(path) as idx:
        assert idx.upsert([{"id": "y", "text": "y"}]).added == ["y"]
    for as_path in (str, lambda p: p):
        for make in (lambda: HybridRAGRetriever(as_path(path)).index, lambda: LCRetriever(index=as_path(path)).index,
                     lambda: LCRetriever.from_path(as_path(path)).index):
            assert make().stats()["documents"] == 4
    for bad in (3, None, b"path"):
        with pytest.raises((TypeError, ValueError), match="HybridIndex or the path"):
            upsert_llama_documents(bad, few_llama_docs(1))
        with pytest.raises((TypeError, ValueError), match="HybridIndex or the path"):
            upsert_documents(bad, [LCDocument(id="x", page_content="x")])
        with pytest.raises((TypeError, ValueError), match="HybridIndex or the path"):
            LCRetriever(index=bad)


def test_documents_without_ids_get_stable_ids(tmp_path, m3_dir, reranker_dir):
    import hashlib
    import json

    from langchain_core.documents import Document as LCDocument
    from langchain_hybridrag import HybridRAGRetriever as LCRetriever
    from langchain_hybridrag import upsert_documents
    from llama_index.core import Document as LlamaDocument
    from llama_index.retrievers.hybridrag import upsert_llama_documents

    def expected(source, text):  # the documented rule
        return hashlib.sha256(json.dumps([source, text], ensure_ascii=False).encode()).hexdigest()[:32]

    texts = TEXTS[:3]

    def loaded():  # what a LangChain loader gives: no id, a source
        return [LCDocument(page_content=t, metadata={"source": f"notes/{i}.txt"}) for i, t in enumerate(texts)]

    retriever = LCRetriever.from_documents(loaded(), tmp_path / "ids", pipeline(m3_dir, reranker_dir), k=20)
    idx = retriever.index
    ids = [expected(f"notes/{i}.txt", t) for i, t in enumerate(texts)]
    assert {d.metadata["doc_id"] for d in retriever.invoke("vitamin")} == set(ids)
    # loading and ingesting again is idempotent; the ids are returned in input order
    assert retriever.add_documents(loaded()) == ids
    assert upsert_documents(idx, loaded()).unchanged == ids and idx.stats()["documents"] == 3
    # the same text from another source is another document; exact duplicates are one document;
    # same source and text with other metadata (two pages alike) are kept apart
    pages = [LCDocument(page_content="Blank page.", metadata={"source": "a.pdf", "page": p}) for p in (1, 2)]
    res = upsert_documents(idx, [LCDocument(page_content=texts[0], metadata={"source": "other.txt"}),
                                 *loaded()[:1], *loaded()[:1], *pages])
    assert res.unchanged == ids[:1] and len(res.added) == 3 and idx.stats()["documents"] == 6
    # LlamaIndex documents without an explicit id_ (readers give a random uuid4) follow the same rule
    # (``source`` or, as LlamaIndex readers name it, ``file_path``)
    def read(key):
        return [LlamaDocument(text=t, metadata={key: f"notes/{i}.txt"}) for i, t in enumerate(texts)]

    assert upsert_llama_documents(idx, read("source")).unchanged == ids
    assert upsert_llama_documents(idx, read("file_path")).added == ids  # same ids, other metadata: replaced
    assert upsert_llama_documents(idx, read("file_path")).unchanged == ids
    assert upsert_llama_documents(idx, [LlamaDocument(id_="given", text=texts[0])]).added == ["given"]
    assert idx.stats()["documents"] == 7
    idx.close()


def test_bad_retriever_settings_fail_before_anything_is_written(tmp_path, m3_dir, reranker_dir):
    from langchain_core.documents import Document as LCDocument
    from langchain_hybridrag import HybridRAGRetriever as LCRetriever
    from llama_index.retrievers.hybridrag import HybridRAGRetriever

    pipe = pipeline(m3_dir, reranker_dir)
    with pytest.raises(ValueError, match="similarity_top_k"):
        HybridRAGRetriever.from_documents(few_llama_docs(1), tmp_path / "a", pipe, similarity_top_k=0)
    with pytest.raises(ValueError, match="unknown search override"):
        HybridRAGRetriever.from_documents(few_llama_docs(1), tmp_path / "a", pipe, search_kwargs={"top_k": 2})
    with pytest.raises(ValueError, match="k must be"):
        LCRetriever.from_documents([LCDocument(page_content="t")], tmp_path / "b", pipe, k=0)
    with pytest.raises(TypeError, match="filters"):
        LCRetriever.from_documents([LCDocument(page_content="t")], tmp_path / "b", pipe, filters=["year"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_documents_may_be_any_iterable(tmp_path, m3_dir, reranker_dir):
    from langchain_core.documents import Document as LCDocument
    from langchain_hybridrag import upsert_documents
    from llama_index.retrievers.hybridrag import HybridRAGRetriever

    retriever = HybridRAGRetriever.from_documents((d for d in few_llama_docs(2)), tmp_path / "gen",
                                                  pipeline(m3_dir, reranker_dir))
    assert retriever.index.stats()["documents"] == 2
    lazy = (LCDocument(id=f"g{i}", page_content=t) for i, t in enumerate(TEXTS[:2]))  # a loader's lazy_load()
    assert upsert_documents(retriever.index, lazy).added == ["g0", "g1"]
    with pytest.raises(TypeError, match="list of"):
        upsert_documents(retriever.index, LCDocument(id="one", page_content="one"))
    retriever.index.close()


# ---------------------------------------------------------------------------- missing framework
CONNECTORS = [
    ("llama_index.retrievers.hybridrag", "llama_index.core", "pip install 'hybridrag[llamaindex]'"),
    ("llama_index.postprocessor.hybridrag_rerank", "llama_index.core", "pip install 'hybridrag[llamaindex]'"),
    ("langchain_hybridrag", "langchain_core", "pip install 'hybridrag[langchain]'"),
]


def _import_fresh(monkeypatch, module, missing):
    for name in list(sys.modules):
        if name == module or name.startswith(module + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import <missing>` raise ImportError
    return importlib.import_module(module)


@pytest.mark.parametrize(("module", "framework", "hint"), CONNECTORS, ids=[c[0] for c in CONNECTORS])
def test_missing_framework_gives_install_hint(monkeypatch, module, framework, hint):
    importlib.import_module(module)  # installed and importable with the framework present
    with pytest.raises(ImportError) as info:
        _import_fresh(monkeypatch, module, framework)
    msg = str(info.value)
    assert hint in msg and module in msg and framework.replace("_", "-").replace(".", "-") in msg
    monkeypatch.undo()
    assert importlib.import_module(module).__name__ == module


@pytest.mark.parametrize("module", [c[0] for c in CONNECTORS])
def test_missing_hybridrag_gives_install_hint(monkeypatch, module):
    with pytest.raises(ImportError, match="needs hybridrag, which is not installed: pip install hybridrag"):
        _import_fresh(monkeypatch, module, "hybridrag")


def test_llama_packages_are_namespace_packages():
    import llama_index
    import llama_index.postprocessor
    import llama_index.retrievers

    for pkg in (llama_index, llama_index.retrievers, llama_index.postprocessor):
        assert getattr(pkg, "__file__", None) is None, f"{pkg.__name__} must not ship an __init__.py"
