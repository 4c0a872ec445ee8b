"""The engine end to end on tiny generated models (tests hybridrag/index.py and
hybridrag/search/planner.py): search against exact brute force in every mode,
writes, persistence, filters, integrity checks and the writer lock."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil

import numpy as np
import pytest

from hybridrag import Document, DocumentError, IndexFormatError, IndexLockedError
from hybridrag.errors import ModelLoadError
from hybridrag.index import HybridIndex, check_index

TEXTS = [
    "Vitamin D deficiency is associated with bone fractures in older adults.",
    "Aspirin reduces the risk of heart attack in some patients.",
    "The quick brown fox jumps over the lazy dog.",
    "Retrieval augmented generation combines search with language models.",
    "Dense vectors, sparse lexical weights and ColBERT token vectors.",
    "FAISS stores dense vectors; an inverted index stores sparse weights.",
    "混合检索结合了稠密向量和稀疏词权重。",
    "الاسترجاع الهجين يجمع بين المتجهات الكثيفة والأوزان المتفرقة",
    "Emoji test 🚀🔥 retrieval is fun 😀 👍",
    "Les modèles de langue répondent aux questions en français.",
    "日本語のテキストには単語の区切りがありません。",
    "Bone health depends on vitamin D and calcium intake.",
]
QUERIES = ["vitamin D bone fractures", "dense vectors FAISS", "混合检索", "heart attack aspirin", "fox dog"]


def docs(n=len(TEXTS)):
    return [{"id": f"d{i}", "text": TEXTS[i % len(TEXTS)] + f" (copy {i // len(TEXTS)})" * (i >= len(TEXTS)),
             "metadata": {"group": "even" if i % 2 == 0 else "odd", "n": i}} for i in range(n)]


def m3_pipeline(m3_dir, **extra):
    p = {
        "name": "tiny-m3",
        "encoder": {"kind": "m3", "model": str(m3_dir), "max_length": 128, "query_max_length": 64, "batch_size": 4},
        "chunking": {"max_tokens": 120, "overlap": 16},
        "dense": {"enabled": True, "depth": 3},
        "sparse": {"enabled": True, "depth": 3},
        "bm25": {"enabled": True, "depth": 3},
        "colbert": {"enabled": True},
        "fusion": {"method": "weighted", "weights": {"dense": 0.4, "sparse": 0.2, "colbert": 0.4, "bm25": 0.0}},
    }
    for k, v in extra.items():
        p.setdefault(k, {}).update(v)
    return p


@pytest.fixture
def index(tmp_path, m3_dir):
    idx = HybridIndex.create(tmp_path / "idx", m3_pipeline(m3_dir))
    idx.add(docs())
    yield idx
    idx.close()


def brute_force(idx, query):
    """Exact per-mode scores of every chunk, computed independently of the stores."""
    rows = idx.docstore.get(np.array(sorted(idx.docstore.live_slots()), dtype=np.int64))
    texts = [r["text"] for r in rows]
    enc = idx.encoder
    d = enc.encode(texts, max_length=128)
    q = enc.encode_queries([query], max_length=64)
    out = {
        "dense": d.dense @ q.dense[0],
        "sparse": np.array([sum(w * p.get(t, 0.0) for t, w in q.sparse[0].items()) for p in d.sparse]),
        "colbert": np.array([(q.colbert[0] @ c.T).max(axis=1).mean() for c in d.colbert]),
    }
    return [r["chunk_id"] for r in rows], out


def test_every_candidate_gets_its_exact_score_in_every_mode(index):
    # depth 3 per mode: many candidates are retrieved by one mode only; each still carries
    # its exact score in the others (never a stand-in 0).
    for query in QUERIES:
        ids, exact = brute_force(index, query)
        pos = {c: i for i, c in enumerate(ids)}
        hits = index.search(query, k=5)
        assert hits
        for h in hits:
            for mode in ("dense", "sparse", "colbert"):
                assert h.scores[mode] == pytest.approx(exact[mode][pos[h.chunk_id]], abs=2e-3)


def test_fused_top_k_equals_brute_force_when_depth_covers_all(index):
    w = {"dense": 0.4, "sparse": 0.2, "colbert": 0.4}
    for query in QUERIES:
        ids, exact = brute_force(index, query)
        fused = sum(w[m] * exact[m] for m in w) / sum(w.values())
        hits = index.search(query, k=5, modes=["dense", "sparse", "colbert"], depth=100, weights=w)
        got = [h.scores["fused"] for h in hits]
        want = np.sort(fused)[::-1][:5]
        np.testing.assert_allclose(got, want, atol=2e-3)
        assert [h.chunk_id for h in hits][:1] == [ids[int(np.argmax(fused))]]


def test_search_batch_equals_search(index):
    from _ranking import assert_same_ranking

    # depth 100 (every chunk): with the fixture's depth of 3, a first-stage near-tie at the
    # cut can change the candidate union between the two calls
    batch = index.search_batch(QUERIES, k=4, depth=100)
    for q, hits in zip(QUERIES, batch):
        single = index.search(q, k=4, depth=100)
        # a batch pads queries to a common length, which moves encoder outputs in the last
        # float bits: scores agree within 1e-5 and only near-ties may swap
        assert_same_ranking([(h.chunk_id, h.score) for h in hits], [(h.chunk_id, h.score) for h in single],
                            tol=1e-5)
    # one SearchOptions value is the same call as its keyword arguments
    from hybridrag import SearchOptions

    opts = SearchOptions(k=4, depth=100, filters={"group": "even"}, fusion="rrf")
    assert index.search_batch(QUERIES, options=opts) == index.search_batch(QUERIES, 4, {"group": "even"},
                                                                           depth=100, fusion="rrf")
    assert index.search(QUERIES[0], options=opts) == index.search_batch(QUERIES[:1], options=opts)[0]
    with pytest.raises(TypeError, match="inside options"):
        index.search_batch(QUERIES, k=3, options=opts)


def test_hits_carry_text_metadata_span_and_ranks(index):
    h = index.search("vitamin D bone fractures", k=3)[0]
    src = docs()[int(h.doc_id[1:])]
    assert src["text"][h.span[0]:h.span[1]] == h.text
    assert h.metadata == src["metadata"]
    assert set(h.scores) >= {"dense", "sparse", "bm25", "colbert", "fused"}
    assert h.ranks and all(r >= 1 for r in h.ranks.values())


def test_filters_apply_before_top_k(index):
    hits = index.search("vitamin D", k=5, filters={"group": "odd"})
    assert len(hits) == 5  # six odd documents exist
    assert all(h.metadata["group"] == "odd" for h in hits)
    hits = index.search("vitamin D", k=10, filters={"n": {"$gte": 3, "$lt": 6}})
    assert sorted(h.metadata["n"] for h in hits) == [3, 4, 5]
    assert index.search("vitamin D", filters={"group": {"$in": ["none"]}}) == []


def test_persistence_reload_equality(tmp_path, index):
    before = [[(h.chunk_id, round(h.score, 5)) for h in hs] for hs in index.search_batch(QUERIES, k=5)]
    index.close()
    again = HybridIndex.load(index.path)
    after = [[(h.chunk_id, round(h.score, 5)) for h in hs] for hs in again.search_batch(QUERIES, k=5)]
    assert before == after
    assert again.stats()["chunks"] == len(TEXTS)
    again.close()


def test_add_skips_unchanged_and_upsert_replaces(index):
    res = index.add(docs())
    assert res.added == [] and len(res.unchanged) == len(TEXTS)
    changed = {"id": "d2", "text": "Completely new text about glaciers and ice sheets.", "metadata": {}}
    with pytest.raises(DocumentError, match="d2"):
        index.add([changed])
    res = index.upsert([changed])
    assert res.added == ["d2"]
    hits = index.search("glaciers ice sheets", k=len(TEXTS), modes=["bm25"], weights={"bm25": 1.0})
    assert hits[0].doc_id == "d2"
    assert all("fox" not in h.text for h in hits)
    assert len(index) == len(TEXTS)


def test_delete_by_id_and_filter(index):
    assert index.delete(ids=["d0", "missing"]) == 1
    assert index.delete(filters={"group": "odd"}) == 6
    left = {h.doc_id for h in index.search("vitamin", k=20)}
    assert left == {f"d{i}" for i in range(2, len(TEXTS), 2)}
    for store in index.stores.values():
        assert len(store) == len(left)
    with pytest.raises(ValueError):
        index.delete()


def test_uncommitted_writes_are_invisible_after_reopen(tmp_path, m3_dir):
    idx = HybridIndex.create(tmp_path / "i", m3_pipeline(m3_dir))
    idx.add(docs(4))
    idx.add([{"id": "late", "text": "never committed text", "metadata": {}}], commit=False)
    idx.close()  # dropped, as a crash would
    again = HybridIndex.load(tmp_path / "i")
    assert len(again) == 4
    assert "late" not in {h.doc_id for h in again.search("never committed text", k=10)}
    assert check_index(tmp_path / "i") == []
    again.close()


def test_corrupt_store_file_is_named(index):
    index.close()
    manifest = json.loads((index.path / "manifest.json").read_text())
    name = sorted(manifest["checksums"])[0]
    f = index.path / name
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=name.replace(".", r"\.")):
        HybridIndex.load(index.path)
    assert any(name in p for p in check_index(index.path))


def test_manifest_problems_are_explained(tmp_path, index):
    index.close()
    mf = index.path / "manifest.json"
    m = json.loads(mf.read_text())
    bad = dict(m, format_version=999)
    mf.write_text(json.dumps(bad))
    with pytest.raises(IndexFormatError, match="format_version 999"):
        HybridIndex.load(index.path)
    evil = dict(m, checksums={"../../etc/passwd": "0" * 64})
    mf.write_text(json.dumps(evil))
    with pytest.raises(IndexFormatError, match="refusing file name"):
        HybridIndex.load(index.path)
    with pytest.raises(IndexFormatError, match="not an index"):
        HybridIndex.load(tmp_path / "nowhere")


def _try_write(path, q):
    try:
        idx = HybridIndex.load(path)
        idx.delete(ids=["d1"])
        q.put("wrote")
    except IndexLockedError as e:
        q.put(str(e))


def test_second_writer_gets_a_clear_error(index):
    index.delete(ids=["d0"])  # holds the writer lock from here on
    q = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=_try_write, args=(str(index.path), q))
    p.start()
    p.join(120)
    msg = q.get(timeout=5)
    assert f"pid={os.getpid()}" in msg
    index.close()
    # after the holder is gone, a new writer takes the lock over
    p = mp.get_context("spawn").Process(target=_try_write, args=(str(index.path), q))
    p.start()
    p.join(120)
    assert q.get(timeout=5) == "wrote"


def test_bad_documents_and_queries(index):
    with pytest.raises(DocumentError):
        index.add([{"id": "", "text": "x"}])
    with pytest.raises(DocumentError, match="twice"):
        index.add([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    with pytest.raises(DocumentError, match="JSON"):
        index.add([{"id": "a", "text": "x", "metadata": {"f": object()}}])
    with pytest.raises(TypeError):
        index.add("just a string")
    with pytest.raises(ValueError, match="empty"):
        index.search("   ")
    with pytest.raises(ValueError, match="k must"):
        index.search("x", k=0)
    with pytest.raises(ValueError, match="not enabled"):
        index.search("x", modes=["splade"])
    assert index.add([Document("blank", "   \n ")]).empty == ["blank"]
    long_query = "vitamin " * 20000
    assert len(index.search(long_query, k=3)) == 3


@pytest.fixture
def sharp_reranker(tmp_path, reranker_dir):
    from test_reranker import _scale_weights

    sharp = tmp_path / "sharp-reranker"  # spread-out weights: distinct scores, so order is meaningful
    shutil.copytree(reranker_dir, sharp)
    _scale_weights(sharp, seed=5)
    return sharp


def test_rerank_orders_by_cross_encoder(tmp_path, m3_dir, sharp_reranker):
    from hybridrag.rerankers.cross_encoder import CrossEncoderReranker

    sharp = sharp_reranker
    idx = HybridIndex.create(tmp_path / "r", m3_pipeline(m3_dir, rerank={"enabled": True, "model": str(sharp),
                                                                      "k": 6, "max_length": 128}))
    idx.add(docs())
    # The same candidate depth for both calls: the reranker sees exactly the fused top 6.
    hits = idx.search("vitamin D bone", k=4, depth=6)
    no_rerank = idx.search("vitamin D bone", k=6, depth=6, rerank=False)
    ref = CrossEncoderReranker.from_pretrained(str(sharp), max_length=128)
    want = ref.compute_score([("vitamin D bone", h.text) for h in no_rerank])
    assert np.ptp(want) > 0.05
    order = np.argsort(-want, kind="stable")[:4]
    assert [h.chunk_id for h in hits] == [no_rerank[i].chunk_id for i in order]
    np.testing.assert_allclose([h.score for h in hits], want[order], atol=1e-5)
    assert all("rerank" in h.scores and "fused" in h.scores for h in hits)
    idx.close()


def test_dense_pipeline_with_bm25_and_relative_fusion(tmp_path, bert_dir):
    p = {"name": "tiny-dense", "encoder": {"kind": "dense", "model": str(bert_dir), "max_length": 128},
         "chunking": {"max_tokens": 100, "overlap": 10}, "sparse": {"enabled": False},
         "bm25": {"enabled": True}, "colbert": {"enabled": False},
         "fusion": {"method": "relative", "weights": {"dense": 0.5, "bm25": 0.5}}}
    idx = HybridIndex.create(tmp_path / "d", p)
    idx.add(docs())
    hits = idx.search("vitamin bone fractures", k=3)
    assert hits[0].doc_id in {"d0", "d11"}
    assert set(hits[0].scores) == {"dense", "bm25", "fused"}
    assert hits[0].weights == {"dense": 0.5, "bm25": 0.5}
    idx.close()


@pytest.mark.parametrize("method", ["adaptive", "coverage"])
def test_adaptive_fusion_in_the_index_uses_the_query_coverage(tmp_path, bert_dir, method):
    """``fusion="adaptive"`` (and ``"coverage"``): the hits' fused scores are that fusion over
    the exact per-mode scores, with the coverage of the query by the dense model's tokenizer and
    by the BM25 vocabulary, and the hits carry the weights it chose."""
    from hybridrag.search import fusion, planner

    p = {"name": "tiny-dense", "encoder": {"kind": "dense", "model": str(bert_dir), "max_length": 128},
         "chunking": {"max_tokens": 100, "overlap": 10}, "sparse": {"enabled": False},
         "bm25": {"enabled": True}, "colbert": {"enabled": False},
         "fusion": {"method": method, "weights": {"dense": 0.5, "bm25": 0.5}}}
    idx = HybridIndex.create(tmp_path / "d", p)
    idx.add(docs())
    for q in ("vitamin bone fractures", "Vitamin-D Knochenbrüche कुत्ता 中文"):
        cov = {"dense": float(planner.query_coverage(idx.encoder.tokenizer, [q])[0]),
               "bm25": float(planner.term_coverage(idx.bm25.analyzer.tokenize([q]), idx.bm25.vocabulary)[0])}
        hits = idx.search(q, k=200, depth=200)  # every chunk: the whole candidate set
        scores = {m: np.array([h.scores[m] for h in hits]) for m in ("dense", "bm25")}
        want = fusion.fuse(method, np.arange(len(hits)), scores, {"dense": 0.5, "bm25": 0.5}, coverage=cov)
        np.testing.assert_allclose([h.scores["fused"] for h in hits], want, atol=1e-9)
        assert hits[0].weights == pytest.approx(fusion.effective_weights(method, scores, {"dense": 0.5, "bm25": 0.5},
                                                                         cov))
        if cov["dense"] <= fusion.COVERAGE_LOW:   # a query the model cannot read: dense has no say
            assert hits[0].weights["dense"] == 0.0
    idx.close()


def test_pq_colbert_index_scores_decoded_tokens_and_survives_reload(tmp_path, m3_dir):
    """colbert.encoding = "pq": once the store has pq_train_tokens tokens it keeps 1-byte codes,
    the hits' colbert scores are exact MaxSim over the decoded vectors, and a reload gives
    the same results."""
    idx = HybridIndex.create(tmp_path / "pq", m3_pipeline(m3_dir, colbert={"encoding": "pq", "pq_train_tokens": 4096,
                                                                                   "pq_train_pool": 4096},
                                                          dense={"depth": 100}, sparse={"depth": 100}))
    idx.add(docs(400))
    store = idx.stores["colbert"]
    assert store.trained and store.bytes_per_token == idx.encoder.colbert_dim // 4
    assert store.newest._codec.unit   # M3 token vectors are unit-norm: scored at norm 1 after decoding
    q = idx.encoder.encode_queries([QUERIES[0]], max_length=64).colbert[0]
    hits = idx.search(QUERIES[0], k=5)
    rows = {r["chunk_id"]: r["slot"] for r in idx.docstore.get(idx.docstore.live_slots())}
    for h in hits:
        t = store.decode(rows[h.chunk_id]).astype(np.float64)
        assert h.scores["colbert"] == pytest.approx(float((q @ t.T).max(axis=1).mean()), abs=1e-4)
    idx.commit()
    idx.close()
    again = HybridIndex.load(tmp_path / "pq")
    assert again.stores["colbert"].trained
    assert [(h.chunk_id, h.score) for h in again.search(QUERIES[0], k=5)] == [(h.chunk_id, h.score) for h in hits]
    again.close()


def _nested(depth):
    root = cur = {}
    for _ in range(depth - 1):
        cur["a"] = {}
        cur = cur["a"]
    return root


def test_deep_metadata_and_lone_surrogate_ids_are_document_errors(index):
    from hybridrag.index import MAX_METADATA_DEPTH, as_document, content_hash

    deep = {"id": "deep", "text": "x", "metadata": {"m": _nested(5000)}}
    with pytest.raises(DocumentError, match=r"'deep'.*nested more than"):
        as_document(deep)
    with pytest.raises(DocumentError, match="nested more than"):
        content_hash("x", deep["metadata"])
    with pytest.raises(DocumentError, match=r"'deep'.*nested"):
        index.add([deep])
    as_document({"id": "ok", "text": "x", "metadata": _nested(MAX_METADATA_DEPTH)})  # the limit itself is fine
    with pytest.raises(DocumentError, match="lone surrogate"):
        index.add([{"id": "x\ud800", "text": "x"}])
    assert index.docstore.doc_hash("deep") is None


def test_errors_skip_writes_the_good_documents_and_lists_the_bad(tmp_path, m3_dir):
    idx = HybridIndex.create(tmp_path / "i", m3_pipeline(m3_dir, chunking={"max_document_bytes": 200}))
    batch = [{"id": "g0", "text": "good zero"}, {"id": "", "text": "no id"},
             {"id": "big", "text": "vitamin " * 100}, {"id": "g0", "text": "again"},
             {"id": "g1", "text": "good one", "metadata": {"m": _nested(100)}}, {"id": "g2", "text": "good two"}]
    with pytest.raises(DocumentError):
        idx.upsert(batch)
    assert len(idx) == 0  # errors="raise" writes nothing of the call
    res = idx.upsert(batch, errors="skip", batch_size=2)
    assert res.added == ["g0", "g2"]
    assert sorted((pos, doc_id) for pos, doc_id, _ in res.failed) == [(1, ""), (2, "big"), (3, "g0"), (4, "g1")]
    reasons = {pos: msg for pos, _, msg in res.failed}
    assert "twice" in reasons[3] and "800 bytes" in reasons[2] and "200" in reasons[2]
    assert idx.docstore.count_documents() == 2 and idx.search("good two", k=1)[0].doc_id == "g2"
    with pytest.raises(ValueError, match="errors"):
        idx.upsert(batch, errors="ignore")
    idx.close()


def test_create_checks_lengths_against_the_model_and_leaves_nothing_on_failure(tmp_path, bert_dir, m3_dir):
    from hybridrag import ConfigError

    # tiny BERT: 512 positions (tests/tiny_models.py); tiny M3 (XLM-R): 1026 - pad 1 - 1 = 1024
    pipe = {"name": "too-long", "encoder": {"kind": "dense", "model": str(bert_dir), "max_length": 1024},
            "chunking": {"max_tokens": 1000, "overlap": 10}, "sparse": {"enabled": False},
            "colbert": {"enabled": False}, "fusion": {"weights": {"dense": 1.0}}}
    target = tmp_path / "new" / "idx"
    with pytest.raises(ConfigError, match=r"chunking.max_tokens = 1000 plus 2 special tokens is more than the 512"):
        HybridIndex.create(target, pipe)
    assert not (tmp_path / "new").exists()  # nothing written, no folder left
    with pytest.raises(ConfigError, match=r"encoder.max_length = 1030 is more than the 1024 tokens"):
        HybridIndex.create(target, m3_pipeline(m3_dir, encoder={"max_length": 1030}))
    pipe["encoder"]["max_length"] = 512
    pipe["chunking"]["max_tokens"] = 510
    idx = HybridIndex.create(target, pipe)  # the fixed pipeline is accepted in the same place
    idx.add(docs(3))
    idx.close()
    # A failure after the folder was made (here: the encoder cannot load) removes what was written.
    broken = tmp_path / "broken"
    shutil.copytree(bert_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    pipe["encoder"]["model"] = str(broken)
    with pytest.raises(ModelLoadError, match="could not load model weights"):
        HybridIndex.create(tmp_path / "other" / "idx", pipe)
    assert not (tmp_path / "other").exists()


# ---------------------------------------------------------------------------------- odd questions


class _Counting:
    """A reranker that counts its ``compute_score`` calls and the pairs it was given."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def compute_score(self, pairs, **kw):
        self.calls.append(len(pairs))
        return self.inner.compute_score(pairs, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_rerank_is_one_call_per_batch_and_each_text_is_read_once(tmp_path, m3_dir, sharp_reranker, monkeypatch):
    """search_batch reranks every query with ONE compute_score call and reads the docstore
    ONCE (texts for the reranker and rows for the hits); the hits equal one search per query
    and the reference cross-encoder's order of the fused candidates."""
    from hybridrag.rerankers.cross_encoder import CrossEncoderReranker

    ref = CrossEncoderReranker.from_pretrained(str(sharp_reranker), max_length=128)
    counting = _Counting(ref)
    idx = HybridIndex.create(tmp_path / "r", m3_pipeline(m3_dir, rerank={"enabled": True, "model": str(sharp_reranker),
                                                                      "k": 6, "max_length": 128}), reranker=counting)
    try:
        idx.add(docs())
        gets = []
        real_get = idx.docstore.get
        monkeypatch.setattr(idx.docstore, "get", lambda slots: gets.append(len(slots)) or real_get(slots))
        batch = idx.search_batch(QUERIES, k=4, depth=6)
        assert len(counting.calls) == 1 and len(gets) == 1
        assert counting.calls[0] == 6 * len(QUERIES)     # rerank_k pairs per query, all in one call
        gets.clear()
        idx.search_batch(QUERIES, k=4, rerank=False)
        assert len(gets) == 1 and len(counting.calls) == 1   # without rerank: one read for every query's hits
        counting.calls.clear()
        for q, got in zip(QUERIES, batch):
            one = idx.search(q, k=4, depth=6)
            assert [h.chunk_id for h in got] == [h.chunk_id for h in one]
            np.testing.assert_allclose([h.score for h in got], [h.score for h in one], atol=1e-5)
            fused = idx.search(q, k=6, depth=6, rerank=False)
            want = ref.compute_score([(q, h.text) for h in fused])
            order = np.argsort(-want, kind="stable")[:4]
            assert [h.chunk_id for h in got] == [fused[i].chunk_id for i in order]
            np.testing.assert_allclose([h.scores["rerank"] for h in got], want[order], atol=1e-5)
            np.testing.assert_allclose([h.scores["fused"] for h in got],
                                       [fused[i].scores["fused"] for i in order], rtol=1e-12)
        assert counting.calls == [6] * len(QUERIES)       # one call per single-query search
        # Two queries with the same hits: each hit has its own metadata.
        a, b = idx.search_batch(["vitamin D bone", "vitamin D bone"], k=2)
        assert a[0].chunk_id == b[0].chunk_id and a[0].metadata == b[0].metadata
        a[0].metadata["n"] = -1
        assert b[0].metadata["n"] != -1
    finally:
        idx.close()


def bm25_pipeline(**bm25):
    return {"name": "bm25", "encoder": {"kind": "none"}, "dense": {"enabled": False},
            "sparse": {"enabled": False}, "colbert": {"enabled": False},
            "bm25": {"enabled": True, **bm25}, "fusion": {"weights": {"bm25": 1.0}}}


def _spy_searches(idx, monkeypatch):
    """Record the k every store search is asked for and the size of the arrays it returns."""
    seen = []
    for store in idx.stores.values():
        def spy(q, k, *a, _orig=store.search, **kw):
            scores, slots = _orig(q, k, *a, **kw)
            seen.append((k, scores.size, slots.size))
            return scores, slots
        monkeypatch.setattr(store, "search", spy)
    return seen


def test_k_and_depth_are_capped_at_the_live_chunks(index, monkeypatch):
    """Memory follows the index, never k or depth (k=10**9 on 3 documents was killed at ~20 GB)."""
    import tracemalloc

    n = len(index)
    seen = _spy_searches(index, monkeypatch)
    tracemalloc.start()
    try:
        hits = index.search("vitamin D", k=10**7, depth=10**7, rerank_k=10**7)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen and all(k <= n and s <= n and i <= n for k, s, i in seen)
    assert peak < 16 * 2**20   # uncapped: 120 MB per store for the (1, 10**7) score and slot arrays
    assert [h.chunk_id for h in hits] == [h.chunk_id for h in index.search("vitamin D", k=n, depth=n)]
    assert len(hits) == n      # dense ranks every chunk


def test_depth_in_a_pipeline_is_capped_too(tmp_path, monkeypatch):
    idx = HybridIndex.create(tmp_path / "i", bm25_pipeline(depth=10**7))
    try:
        idx.add(docs(3))
        seen = _spy_searches(idx, monkeypatch)
        assert [h.doc_id for h in idx.search("vitamin bone", k=10**7)] == ["d0"]
        assert seen and all(k <= 3 and s <= 3 for k, s, _ in seen)
    finally:
        idx.close()


@pytest.mark.parametrize("fusion, shallow", [("weighted", True), ("relative", True), ("rrf", True),
                                             ("coverage", True), ("adaptive", False)])
def test_one_mode_without_rerank_asks_its_store_for_k_only(tmp_path, monkeypatch, fusion, shallow):
    """One first-stage mode and nothing after it: the store's top-k is the answer (fusion of one
    mode keeps its order, ties by slot), so the store is asked for k, not the mode's depth; the
    hits and scores are those of a deep search. Adaptive fusion (its weights read the spread of
    the scores) keeps the depth."""
    idx = HybridIndex.create(tmp_path / "i", bm25_pipeline(depth=40) | {"fusion": {"method": fusion,
                                                                                  "weights": {"bm25": 0.7}}})
    try:
        idx.add(docs(60))
        deep = {q: idx.search(q, k=40) for q in QUERIES}
        seen = _spy_searches(idx, monkeypatch)
        for q in QUERIES:
            hits = idx.search(q, k=3)
            assert [(h.chunk_id, h.score, h.ranks) for h in hits] == [(h.chunk_id, h.score, h.ranks)
                                                                      for h in deep[q][:3]], q
        assert {k for k, _, _ in seen} == ({3} if shallow else {40})
        seen.clear()
        idx.search_batch(QUERIES, k=3, depth=30)   # a depth asked for in the call: the same rule
        assert {k for k, _, _ in seen} == ({3} if shallow else {30})
    finally:
        idx.close()


@pytest.mark.parametrize("k, error", [(2.0, TypeError), (True, TypeError), ("3", TypeError), (None, TypeError),
                                      (0, ValueError), (-1, ValueError)])
def test_k_must_be_a_positive_int(index, k, error):
    with pytest.raises(error, match=f"k must be a positive integer.*{k!r}"):
        index.search("x", k=k)
    assert len(index.search("x", k=np.int64(2))) == 2


@pytest.mark.parametrize("w", [float("nan"), float("inf"), -0.5, "1", True])
def test_bad_per_call_weights_are_named(index, w):
    with pytest.raises(ValueError, match=r"weights\['dense'\].*finite number >= 0"):
        index.search("x", weights={"dense": w, "sparse": 0.2, "colbert": 0.4, "bm25": 0.0})


def test_lone_surrogates_in_queries_are_named(index):
    with pytest.raises(ValueError, match="query 1 contains the lone surrogate"):
        index.search_batch(["fine", "bad \udcff bytes"])
    with pytest.raises(ValueError, match="the query is empty"):   # one query: no index to name
        index.search("  ")


def test_results_say_why_hits_are_missing(tmp_path, index):
    from hybridrag import SearchResults

    # Only punctuation: the term modes have nothing to match; dense still ranks neighbours.
    res = index.search("?!", k=3)
    assert isinstance(res, SearchResults) and isinstance(res, list) and len(res) == 3
    assert all("bm25" not in h.ranks for h in res)
    assert any("no query terms for 'bm25'" in n for n in res.notes)
    assert index.search("vitamin D", k=3).notes == ()
    # A filter on a key no document has, and one that matches nothing.
    res = index.search("vitamin", filters={"colour": "red", "group": "even"})
    assert res == [] and res.notes == ("no document has metadata key 'colour'",)
    res = index.search("vitamin", filters={"group": "blue"})
    assert res == [] and len(res.notes) == 1 and "no chunk matches" in res.notes[0]
    # A BM25-only index: nothing, and why.
    idx = HybridIndex.create(tmp_path / "b", bm25_pipeline())
    try:
        idx.add(docs(4))
        res = idx.search("?! ...")
        assert res == [] and res.notes == (
            "no query terms for 'bm25' (none of its words is in the index vocabulary): it retrieved nothing",)
    finally:
        idx.close()


def test_progress_true_shows_a_bar_with_a_total(tmp_path, capsys):
    idx = HybridIndex.create(tmp_path / "i", bm25_pipeline())
    try:
        assert idx.add(docs(5), progress=True, batch_size=2).chunks == 5
        err = capsys.readouterr().err
        assert "5/5" in err and "docs" in err
        calls = []
        idx.upsert([{"id": "x", "text": "one"}, {"id": "y", "text": "two"}], progress=calls.append)
        assert calls == [2]
        idx.add([{"id": "z", "text": "quiet"}], progress=False)
        assert capsys.readouterr().err == ""
        with pytest.raises(TypeError, match="progress.*'yes'"):
            idx.add([{"id": "w", "text": "x"}], progress="yes")
    finally:
        idx.close()


def test_fusion_eval_runs_equal_hybridrag_evals(tmp_path, bert_dir):
    """hybridrag/eval/fusion_eval.py re-fuses stored candidates; its runs must equal those
    of ``hybridrag eval`` (ablation._runs), which searches again for each setting."""
    from hybridrag.eval import ablation, fusion_eval

    p = {"name": "tiny-dense", "encoder": {"kind": "dense", "model": str(bert_dir), "max_length": 128},
         "chunking": {"max_tokens": 40, "overlap": 5}, "sparse": {"enabled": False},
         "bm25": {"enabled": True}, "colbert": {"enabled": False},
         "fusion": {"method": "relative", "weights": {"dense": 0.5, "bm25": 0.5}}}
    idx = HybridIndex.create(tmp_path / "d", p)
    idx.add(docs())
    qids = [f"q{i}" for i in range(len(QUERIES))]
    cands = fusion_eval.collect(idx, qids, QUERIES)  # the same depth as hybridrag eval
    for mode in ("dense", "bm25"):
        want = ablation._runs(idx, qids, QUERIES, 64, False, mode, modes=[mode], weights={mode: 1.0},
                              fusion="weighted", rerank=False)
        assert _ranked(fusion_eval.mode_run(cands, mode)) == _ranked(want)
    for method in ("weighted", "relative", "rrf", "adaptive", "coverage"):
        w = {"dense": 0.3, "bm25": 0.7}
        want = ablation._runs(idx, qids, QUERIES, 64, False, method, fusion=method, weights=w, rerank=False)
        assert _ranked(fusion_eval.fused_run(cands, method, w)) == _ranked(want)
    idx.close()


def _ranked(run):
    return {q: sorted(d, key=lambda x: -d[x]) for q, d in run.items()}


def test_calls_after_close_raise_index_closed_error(tmp_path):
    """Every call after close() names the closed index (it was an AttributeError on a None
    connection); close() stays idempotent and a with block closed inside does not commit."""
    from hybridrag import IndexClosedError

    idx = HybridIndex.create(tmp_path / "c", bm25_pipeline())
    idx.add([{"id": "a", "text": "vitamin d and bone"}])
    idx.close()
    idx.close()
    calls = {"search": lambda: idx.search("vitamin"), "search_batch": lambda: idx.search_batch(["bone"]),
             "add": lambda: idx.add([{"id": "b", "text": "calcium"}]), "upsert": lambda: idx.upsert([]),
             "delete": lambda: idx.delete("a"), "commit": idx.commit, "optimize": idx.optimize,
             "stats": idx.stats, "len": lambda: len(idx), "wait_for_merges": idx.wait_for_merges,
             "add_pipeline_version": lambda: idx.add_pipeline_version({"fusion.method": "rrf"}),
             "use_pipeline_version": lambda: idx.use_pipeline_version(1)}
    for name, call in calls.items():
        with pytest.raises(IndexClosedError, match="is closed"):
            call()
        assert isinstance(IndexClosedError("x"), ValueError), name
    assert repr(idx).endswith("closed)")
    with HybridIndex.load(tmp_path / "c") as again:
        assert [h.doc_id for h in again.search("vitamin")] == ["a"]
        again.close()   # the with block's end then neither commits nor raises
    last = HybridIndex.load(tmp_path / "c")
    assert last.search("bone")[0].doc_id == "a"
    last.close()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts this process's descriptors (/proc, Linux)")
def test_a_closed_index_frees_its_mapped_files_without_the_cyclic_collector(tmp_path):
    """Each store kept a function that held its index (a cycle), so a closed index's memory-mapped
    segment files (an open descriptor each) stayed open until the cyclic collector ran: a
    writable server, which opens and closes a writer per committed write, grew ~5 descriptors a
    write (1,043 after 240). With the collector off, 30 load/add/close rounds keep the count."""
    import gc

    path = tmp_path / "fd"
    HybridIndex.create(path, bm25_pipeline()).close()
    rounds = []
    gc.collect()
    gc.disable()
    try:
        for i in range(30):
            w = HybridIndex.load(path)
            w.add([{"id": f"f{i}", "text": f"ferret {i}"}])
            w.close()
            del w
            rounds.append(len(os.listdir("/proc/self/fd")))
    finally:
        gc.enable()
    assert max(rounds[5:]) <= rounds[4] + 2, rounds


def test_metadata_integers_past_64_bits_are_refused_and_results_serialise(tmp_path):
    """An integer past 64 bits was stored (SQLite reads it back as an inexact float) and no filter
    could name it (filters refuse such values); it is a DocumentError at the write now. And
    ``SearchResults.to_dict()``: ``json.dumps(results)`` fails on the Hit objects."""
    idx = HybridIndex.create(tmp_path / "b", bm25_pipeline())
    res = idx.add([{"id": "ok", "text": "cat on a mat", "metadata": {"n": 2 ** 63 - 1, "m": -(2 ** 63)}},
                   {"id": "big", "text": "dog", "metadata": {"x": {"n": [1, 2 ** 64]}}}], errors="skip")
    assert res.added == ["ok"] and "metadata integer 18446744073709551616 does not fit in 64 bits" in res.failed[0][2]
    with pytest.raises(DocumentError, match="does not fit in 64 bits"):
        idx.add([{"id": "neg", "text": "x", "metadata": {"n": -(2 ** 63) - 1}}])
    hits = idx.search("cat", filters={"n": 2 ** 63 - 1})
    body = json.loads(json.dumps(hits.to_dict()))
    assert [h["doc_id"] for h in body["hits"]] == ["ok"] and body["notes"] == [] and "timing" not in body
    assert body["hits"][0]["metadata"] == {"n": 2 ** 63 - 1, "m": -(2 ** 63)}
    idx.close()
