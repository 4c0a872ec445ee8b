"""The whole index in Milvus (``[milvus] whole_index = true``): text, metadata, ids and each
commit's manifest in Milvus beside the vectors, and query nodes that hold nothing but the
collection prefix (``HybridIndex.attach``): same results as the writer's own index, filters with
the docstore's semantics (a conformance test over every filter case), commits published in order."""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest

from hybridrag.errors import ConfigError, IndexClosedError, IndexFormatError, IndexWriteError
from hybridrag.index import HybridIndex
from hybridrag.stores.docstore import DocStore
from hybridrag.stores.milvus_docs import MAX_PUSHED_VALUES, MilvusDocsStore, MilvusDocView, MilvusHead
from hybridrag.types import Chunk
from hybridrag.write import chunk_record
from test_index import QUERIES, docs, m3_pipeline

_names = itertools.count()


@pytest.fixture(scope="module")
def m3_encoder(m3_dir):
    from hybridrag.encoders.m3 import M3Encoder

    return M3Encoder.from_pretrained(str(m3_dir))


def _pipe(m3_dir, **milvus):
    return m3_pipeline(m3_dir, dense={"depth": 100}, sparse={"depth": 100}, bm25={"enabled": False},
                       colbert={"backend": "milvus"},
                       fusion={"weights": {"dense": 0.4, "sparse": 0.2, "colbert": 0.4}},
                       milvus={"enabled": True, "collection": "c", "whole_index": True, **milvus})


def _hits(idx, q, **kw):
    return [(h.chunk_id, h.doc_id, round(h.score, 5), h.text, h.metadata) for h in idx.search(q, k=10, **kw)]


FILTERS = [None, {"group": "even"}, {"n": {"$gte": 3, "$lt": 9}}, {"doc_id": {"$in": ["d1", "d2", "d3", "d7"]}},
           {"group": {"$ne": "odd"}, "n": {"$nin": [0, 2]}}]


def _same(a, b, filters=FILTERS):
    for q in QUERIES + ["Milvus"]:
        for f in filters:
            assert _hits(a, q, filters=f) == _hits(b, q, filters=f), (q, f)


# --------------------------------------------------------------------------- the engine


def test_a_query_node_serves_what_the_writer_committed(tmp_path, m3_dir, m3_encoder):
    w_dir, q_dir = tmp_path / "w", tmp_path / "q"
    uri = str(w_dir / "milvus.db")
    w = HybridIndex.create(w_dir, _pipe(m3_dir), encoder=m3_encoder)
    try:
        w.add(docs(12))
        long_text = "Milvus VARCHAR. " * 5000 + "混合检索 " * 4000   # over 65,535 bytes: several rows
        w.upsert([{"id": "d3", "text": long_text, "metadata": {"n": 99, "flag": True}}])
        w.delete(ids=["d4", "d5"])
        w.add([{"id": "x", "text": "text with a lone surrogate \udc80 kept", "metadata": {"none": None}}])
        w.delete(ids=["d6"], commit=False)   # uncommitted: no query node sees it
        q = HybridIndex.attach(q_dir, collection="c", milvus_uri=uri, encoder=m3_encoder)
        try:
            assert sorted(p.name for p in q_dir.iterdir()) == ["milvus-attach.json"]
            assert q.generation == w.generation
            ref = HybridIndex.load(w_dir, encoder=m3_encoder)   # the committed state, from local files
            try:
                _same(q, ref)
                slots = np.asarray(ref.docstore.live_slots())
                assert q.docstore.get(slots) == ref.docstore.get(slots)   # text (long, surrogate), metadata
                assert any("\udc80" in r["text"] for r in q.docstore.get(slots))
                assert q.docstore.count_documents() == ref.docstore.count_documents()
                assert q.docstore.doc_hash("d3") == ref.docstore.doc_hash("d3")
            finally:
                ref.close()
            with pytest.raises(IndexWriteError, match="query node"):
                q.add([{"id": "z", "text": "no"}])
            w.commit()
            w.add([{"id": "later", "text": "a later commit about vitamin D", "metadata": {}}])
            assert q.published_generation() == w.generation > q.generation   # not seen until reopened
            assert "later" not in {h.doc_id for h in q.search("vitamin D", k=50)}
        finally:
            q.close()
        again = HybridIndex.load(q_dir, milvus_uri=uri, encoder=m3_encoder)   # the pointer file
        ref = HybridIndex.load(w_dir, encoder=m3_encoder)
        try:
            assert again.generation == w.generation
            _same(again, ref, FILTERS[:2])   # (every filter was compared above on the same collections)
            assert "later" in {h.doc_id for h in again.search("vitamin D", k=50)}
            st = again.stats()["milvus"]
            assert st["docs"]["rows"] == len(ref) and st["docs"]["rows_stored"] >= st["docs"]["rows"]
        finally:
            again.close()
            ref.close()
    finally:
        w.close()
    from hybridrag.storage.check import check_index

    assert check_index(w_dir) == []


def test_query_node_needs_a_uri_from_the_user_and_a_published_index(tmp_path, m3_dir, m3_encoder, monkeypatch,
                                                                   capsys):
    monkeypatch.delenv("HYBRIDRAG_MILVUS_URI", raising=False)
    w = HybridIndex.create(tmp_path / "w", _pipe(m3_dir, collection="pub"), encoder=m3_encoder)
    try:
        w.add(docs(3))
        with pytest.raises(ConfigError, match="milvus_uri"):
            HybridIndex.attach(tmp_path / "q", collection="pub")
        with pytest.raises(IndexFormatError, match="no index is published under collection prefix 'other'"):
            HybridIndex.attach(tmp_path / "q", collection="other", milvus_uri=str(tmp_path / "w" / "milvus.db"))
        with pytest.raises(ConfigError, match="holds an index directory"):
            HybridIndex.attach(tmp_path / "w", collection="pub", milvus_uri=str(tmp_path / "w" / "milvus.db"))
        q = HybridIndex.attach(tmp_path / "q", collection="pub", milvus_uri=str(tmp_path / "w" / "milvus.db"))
        q.close()
        with pytest.raises(IndexClosedError, match="is closed"):   # was a raw MilvusException
            q.search("doc")
        with pytest.raises(ConfigError, match="milvus_uri"):   # the pointer names no uri: it is asked again
            HybridIndex.load(tmp_path / "q")
        assert json.loads((tmp_path / "q" / "milvus-attach.json").read_text()) == {"collection": "pub"}
        # the command line: --milvus-uri on every command that opens an index, for that command only
        from hybridrag.cli import main

        assert main(["info", str(tmp_path / "q")]) != 0
        assert "--milvus-uri on the command line" in capsys.readouterr().err
        lite = str(tmp_path / "w" / "milvus.db")
        assert main(["query", str(tmp_path / "q"), "doc", "-k", "2", "--json", "--milvus-uri", lite]) == 0
        assert len(json.loads(capsys.readouterr().out)) == 2
        assert "HYBRIDRAG_MILVUS_URI" not in os.environ
        assert main(["info", str(tmp_path / "q"), "--json", "--milvus-uri", lite]) == 0
        assert json.loads(capsys.readouterr().out)["chunks"] == 3
        assert main(["check", str(tmp_path / "q"), "--milvus-uri", lite]) == 1   # a query node: check the writer
        assert "is a query node" in capsys.readouterr().out
    finally:
        w.close()


def test_whole_index_needs_every_mode_in_milvus(m3_dir):
    from hybridrag.config import PipelineConfig

    with pytest.raises(ConfigError, match="bm25 is local"):
        PipelineConfig.from_dict(_pipe(m3_dir) | {"bm25": {"enabled": True}})
    with pytest.raises(ConfigError, match="colbert is local"):
        PipelineConfig.from_dict(_pipe(m3_dir) | {"colbert": {"enabled": True}})
    p = _pipe(m3_dir)
    p["milvus"]["enabled"] = False
    with pytest.raises(ConfigError, match="needs \\[milvus\\] enabled"):
        PipelineConfig.from_dict(p)


def test_a_commit_that_could_not_publish_is_published_before_the_next_one_purges(tmp_path, m3_dir, m3_encoder,
                                                                                 monkeypatch):
    w = HybridIndex.create(tmp_path / "w", _pipe(m3_dir, collection="lag"), encoder=m3_encoder)
    uri = str(tmp_path / "w" / "milvus.db")
    try:
        w.add(docs(6))
        real = MilvusHead.publish
        calls = []

        def failing(self, gen, doc):
            calls.append(gen)
            raise RuntimeError("Milvus went away")

        monkeypatch.setattr(MilvusHead, "publish", failing)
        w.delete(ids=["d1"])   # durable locally; the head still names the commit before
        monkeypatch.setattr(MilvusHead, "publish", real)
        assert calls == [w.generation]
        q = HybridIndex.attach(tmp_path / "q", collection="lag", milvus_uri=uri, encoder=m3_encoder)
        try:
            assert q.generation == w.generation - 1 and "d1" in {h.doc_id for h in q.search("x", k=50)}
        finally:
            q.close()
        w.delete(ids=["d2"])   # publishes the missed commit, then its own
        head = w._head
        assert head.newest() == w.generation
        q = HybridIndex.attach(tmp_path / "q2", collection="lag", milvus_uri=uri, encoder=m3_encoder)
        try:
            got = {h.doc_id for h in q.search("x", k=50)}
            assert got == {"d0", "d3", "d4", "d5"}
        finally:
            q.close()
    finally:
        w.close()


def test_migrate_moves_the_whole_index_and_back(tmp_path, m3_dir, m3_encoder):
    local_pipe = _pipe(m3_dir)
    local_pipe["milvus"] = {"enabled": False}
    local_pipe["colbert"] = {"enabled": True}
    src = HybridIndex.create(tmp_path / "src", local_pipe, encoder=m3_encoder)
    try:
        src.add(docs(10))
        src.upsert([{"id": "d2", "text": "changed text about aspirin", "metadata": {"n": 2, "group": "even"}}])
        src.delete(ids=["d7"])
    finally:
        src.close()
    dst = HybridIndex.migrate(tmp_path / "src", tmp_path / "dst", collection="mig", whole_index=True,
                              encoder=m3_encoder)
    dst.close()
    q = HybridIndex.attach(tmp_path / "q", collection="mig", milvus_uri=str(tmp_path / "dst" / "milvus.db"),
                           encoder=m3_encoder)
    ref = HybridIndex.load(tmp_path / "src", encoder=m3_encoder)
    try:
        for query in QUERIES:
            for f in FILTERS:
                got, want = _hits(q, query, filters=f), _hits(ref, query, filters=f)
                assert [h[:2] for h in got] == [h[:2] for h in want], (query, f)
                for g, h in zip(got, want):
                    assert abs(g[2] - h[2]) <= 1e-4 and g[3:] == h[3:]
    finally:
        q.close()
        ref.close()
    with pytest.raises(ConfigError, match="to='milvus'"):
        HybridIndex.migrate(tmp_path / "src", tmp_path / "x", to="local", whole_index=True)


def test_a_query_node_gives_a_new_writer_when_the_writers_directory_is_lost(tmp_path, m3_dir, m3_encoder):
    import shutil

    uri = str(tmp_path / "shared" / "milvus.db")   # Milvus outlives the writer's directory (a server would)
    w = HybridIndex.create(tmp_path / "w", _pipe(m3_dir, uri=uri), encoder=m3_encoder)
    w.add(docs(10))
    w.upsert([{"id": "d2", "text": "changed text about aspirin", "metadata": {"n": 2, "group": "even"}}])
    w.delete(ids=["d7"])
    want = {(q, str(f)): _hits(w, q, filters=f) for q in QUERIES for f in FILTERS}
    w.close()
    shutil.rmtree(tmp_path / "w")
    HybridIndex.attach(tmp_path / "q", collection="c", milvus_uri=uri, encoder=m3_encoder).close()
    w2 = HybridIndex.migrate(tmp_path / "q", tmp_path / "w2", whole_index=True, milvus_uri=uri, collection="c2",
                             encoder=m3_encoder)
    try:   # the dense, sparse and ColBERT rows, text and metadata copied within Milvus, nothing encoded
        assert {(q, str(f)): _hits(w2, q, filters=f) for q in QUERIES for f in FILTERS} == want
        # the documents' hashes came with them: only d2 (changed), d7 (deleted) and d10 (new) are written
        assert sorted(w2.upsert(docs(11)).unchanged) == sorted(f"d{i}" for i in range(10) if i not in (2, 7))
    finally:
        w2.close()
    # or in place (take_over): the same prefix and collections, every one of them (dense, sparse,
    # ColBERT tokens, docs, head) now written by the new directory
    t = HybridIndex.take_over(tmp_path / "t", collection="c", milvus_uri=uri, encoder=m3_encoder)
    try:
        assert {(q, str(f)): _hits(t, q, filters=f) for q in QUERIES for f in FILTERS} == want
        assert sorted(t.upsert(docs(11)).unchanged) == sorted(f"d{i}" for i in range(10) if i not in (2, 7))
        q = HybridIndex.load(tmp_path / "q", milvus_uri=uri, encoder=m3_encoder)
        try:
            for query in QUERIES:
                assert _hits(q, query) == _hits(t, query), query
        finally:
            q.close()
    finally:
        t.close()


# --------------------------------------------------------------------------- filters: the docstore's semantics


META = [
    {"year": 2020, "lang": "en", "score": 0.5, "flag": True},
    {"year": 2021, "lang": "de", "score": 1, "flag": False},
    {"year": "2021", "lang": "EN", "tags": ["a", "b"]},
    {"year": 2019.0, "lang": "en", "none": None, "flag": 1},
    {"lang": "中文", "score": -3.25, "nested": {"k": 1}},
    {"year": 2022, "lang": "é", "flag": True, "none": 0},
    {},
    {"year": 2021, "lang": "en", "flag": "true"},
]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("conf")
    ds = DocStore(d / "docstore.sqlite")
    n = 3000
    chunks = [Chunk(chunk_id=f"c{i}", doc_id=f"doc{i // 2}", ordinal=i % 2, text=f"text {i}", start=0, end=5,
                    metadata=dict(META[i % len(META)], i=i)) for i in range(n)]
    slots = np.arange(n, dtype=np.int64) * 2 + 1
    ds.add_chunks(chunks, slots, 1, {f"doc{j}": f"h{j}" for j in range(n // 2)})
    ds.delete_docs(["doc5", "doc6"], 2)
    remote = MilvusDocsStore(uri=str(d / "milvus.db"), collection=f"conf_{next(_names)}")
    remote.add(slots, [chunk_record(c, f"h{i // 2}") for i, c in enumerate(chunks)])
    remote.remove(ds_slots_of(slots, [10, 11, 12, 13]))
    view = MilvusDocView(remote, {"generation": 2, "counts": {"chunks": ds.count(), "documents": ds.doc_count(),
                                                              "next_slot": ds.next_slot()}})
    yield ds, view
    ds.close()
    remote.close()


def ds_slots_of(slots, idx):
    return slots[idx]


CASES = [
    {}, {"lang": "en"}, {"lang": "EN"}, {"lang": "中文"}, {"year": 2021}, {"year": "2021"}, {"year": 2019},
    {"year": {"$gte": 2020}}, {"year": {"$gt": 2019.5, "$lte": 2021}}, {"year": {"$lt": "2022"}},
    {"score": {"$lt": 0}}, {"score": 1.0}, {"flag": True}, {"flag": False}, {"flag": 1}, {"flag": "true"},
    {"none": None}, {"none": {"$ne": None}}, {"flag": {"$ne": True}}, {"lang": {"$ne": "en"}},
    {"lang": {"$in": ["en", "de"]}}, {"lang": {"$nin": ["en", "de"]}}, {"year": {"$in": [2020, "2021", True]}},
    {"flag": {"$in": [True, None]}}, {"lang": {"$in": []}}, {"lang": {"$nin": []}},
    {"missing": {"$ne": 1}}, {"missing": 1}, {"tags": "a"}, {"nested": {"$ne": 1}},
    {"lang": {"$gt": "a"}}, {"lang": {"$gte": "é"}},
    {"i": {"$in": list(range(0, 3000, 7))}},                          # hundreds of values on a JSON key
    {"i": {"$in": list(range(MAX_PUSHED_VALUES))}},                   # pushed as ORed equalities
    {"doc_id": {"$in": [f"doc{j}" for j in range(0, 1500, 2)]}},      # a native list of 750 ids
    {"doc_id": {"$nin": [f"doc{j}" for j in range(0, 1500, 3)]}, "lang": "en"},
    {"doc_id": "doc7"}, {"doc_id": {"$ne": "doc7"}, "year": 2021}, {"chunk_id": {"$gt": "c2990"}},
    {"chunk_id": {"$in": ["c1", "c2", "c99999"]}, "flag": True},
    {"lang": "en", "year": {"$gte": 2020}, "flag": {"$nin": [False]}},
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_filters_match_the_docstore_exactly(stores, case):
    ds, view = stores
    f = CASES[case]
    want = ds.filter_mask(f)
    got = view.filter_mask(f)
    assert got.shape == want.shape
    assert np.array_equal(np.flatnonzero(got), np.flatnonzero(want)), (f, np.flatnonzero(got ^ want)[:10])


@pytest.mark.parametrize("bad", [{"$or": []}, {"x": {"$foo": 1}}, {"x": [1, 2]}, {"x": {"$gt": None}},
                                 {"doc_id": 3}, {"x": {"$in": "abc"}}, {"x": 2**70}, "year"])
def test_bad_filters_fail_as_in_the_docstore(stores, bad):
    ds, view = stores
    with pytest.raises((TypeError, ValueError)) as want:
        ds.filter_mask(bad)
    with pytest.raises(type(want.value)) as got:
        view.filter_mask(bad)
    assert str(got.value) == str(want.value)


def test_reads_equal_the_docstore(stores):
    ds, view = stores
    live = np.asarray(ds.live_slots())
    assert view.get(live[::37]) == ds.get(live[::37])
    assert np.array_equal(view.slots_for_docs(["doc1", "doc5", "doc40"]), ds.slots_for_docs(["doc1", "doc5", "doc40"]))
    assert view.missing_keys(["lang", "nope", "doc_id", "none"]) == ds.missing_keys(["lang", "nope", "doc_id", "none"])
    with pytest.raises(KeyError):
        view.get([int(live[0]), 10**6])


def test_long_and_odd_texts_come_back_exactly(stores):
    _, view = stores
    store = MilvusDocsStore(uri=view.store.uri, collection=f"long_{next(_names)}")
    texts = ["a" * 65535, "b" * 65536, "中" * 40000 + "x", "é" * 100000, "lone \udc80 surrogate " * 5000, "", "😀" * 20000]
    recs = [chunk_record(Chunk(chunk_id=f"t{i}", doc_id=f"t{i}", ordinal=0, text=t, start=0, end=len(t),
                               metadata={"k": i}), None) for i, t in enumerate(texts)]
    store.add(np.arange(len(texts)), recs)
    got = store.get(np.arange(len(texts))[::-1])
    assert [r["text"] for r in got] == texts[::-1]
    assert [r["metadata"] for r in got] == [{"k": i} for i in range(len(texts))][::-1]
    assert store._live_count() > len(texts)   # several rows for the long ones
    store.remove(np.array([1, 3]))
    assert len(store) == len(texts) - 2
    d = Path(view.store.uri).parent
    store.save(d, "long")
    store.committed()
    store.save(d, "long2")   # purges the rows the last commit removed: every part of them
    for slot in (1, 3):
        assert store._live_count(f"key >= {slot << 8} and key < {(slot + 1) << 8}") == 0
    assert store._live_count(f"key >= {2 << 8} and key < {3 << 8}") > 1


def test_a_served_query_node_swaps_in_new_commits(tmp_path, m3_dir, m3_encoder, monkeypatch):
    import asyncio

    from hybridrag.server.engine import Engine

    w = HybridIndex.create(tmp_path / "w", _pipe(m3_dir, collection="srv"), encoder=m3_encoder)
    try:
        w.add(docs(4))
        monkeypatch.setenv("HYBRIDRAG_MILVUS_URI", str(tmp_path / "w" / "milvus.db"))
        HybridIndex.attach(tmp_path / "q", collection="srv").close()   # the URI from the environment
        engine = Engine(tmp_path / "q", reload_interval_ms=60_000)   # no polling: reload() below only

        async def main():
            await engine.start()
            try:
                before = await engine.search(["vitamin"], k=50)
                w.add([{"id": "fresh", "text": "vitamin D and fractures, a new commit", "metadata": {}}])
                assert engine._manifest_signature() == (w.generation, 0, 0)
                served = await engine.reload()
                return before, served, await engine.search(["vitamin"], k=50)
            finally:
                await engine.stop()

        before, served, after = asyncio.run(main())
        assert served == w.generation == before.generation + 1
        assert "fresh" not in {h.doc_id for h in before.hits[0]}
        assert "fresh" in {h.doc_id for h in after.hits[0]} and after.generation == served
    finally:
        w.close()


def test_server_query_node_in_another_process_serves_the_writers_commits(tmp_path, m3_dir, m3_encoder,
                                                                          milvus_server):
    # A real Milvus server (2.3: no sparse vectors, so dense + ColBERT in Milvus), the writer here,
    # the query node in another process with only the collection prefix and the URI.
    from _milvus_server import attached_answers, peer

    pipe = _pipe(m3_dir, uri=milvus_server, collection="srvw")
    pipe["sparse"] = {"enabled": False}
    pipe["fusion"]["weights"] = {"dense": 0.6, "colbert": 0.4}
    w = HybridIndex.create(tmp_path / "w", pipe, encoder=m3_encoder)
    try:
        assert {type(s).__name__ for s in w.stores.values()} == {"MilvusDenseStore", "MilvusColbertStore",
                                                                  "MilvusDocsStore"}
        w.add(docs(10))
        w.upsert([{"id": "d2", "text": "a changed text about aspirin", "metadata": {"group": "even", "n": 2}}])
        w.delete(ids=["d7"])
        w.add([{"id": "pending", "text": "vitamin D, not committed", "metadata": {"n": 50}}], commit=False)
        got = peer("attach", tmp_path / "q", milvus_server)
        w_committed = HybridIndex.load(tmp_path / "w", encoder=m3_encoder, milvus_uri=milvus_server)
        try:
            assert got == {"generation": w_committed.generation,
                           "answers": json.loads(json.dumps(attached_answers(w_committed)))}
        finally:
            w_committed.close()
        w.commit()   # the commit reaches a query node (here in this process: one more is slow to start)
        q = HybridIndex.attach(tmp_path / "q2", collection="srvw", milvus_uri=milvus_server, encoder=m3_encoder)
        try:
            assert q.generation == w.generation
            # each filtered search costs the server ~1 s: every filter was compared above, two here
            two = [None, {"n": {"$gte": 3}}]
            got = json.loads(json.dumps(attached_answers(q, two)))
            assert got == json.loads(json.dumps(attached_answers(w, two)))
            assert any(h[1] == "pending" for a in got for h in a)
        finally:
            q.close()
    finally:
        w.close()


def test_rebuild_and_overwrite_replace_every_collection(tmp_path, m3_dir, m3_encoder):
    from hybridrag.storage.check import check_index
    from hybridrag.storage.commit import drop_stray_collections

    p, uri = tmp_path / "w", str(tmp_path / "w" / "milvus.db")
    w = HybridIndex.create(p, _pipe(m3_dir, collection="rb"), encoder=m3_encoder)
    w.add(docs(8))
    before = {s.collection for s in w.stores.values()}
    w.close()
    r = HybridIndex.rebuild(p, encoder=m3_encoder)   # re-encodes into new collections, docs included
    try:
        assert not before & {s.collection for s in r.stores.values()}
        assert len(r.stores["docs"]) == len(r) == r.stores["docs"]._visible_count()
        assert drop_stray_collections(r, dry_run=True) == []   # the old ones, docs too, were dropped
    finally:
        r.close()
    assert check_index(p) == []
    q = HybridIndex.attach(tmp_path / "q", collection="rb", milvus_uri=uri, encoder=m3_encoder)
    ref = HybridIndex.load(p, encoder=m3_encoder)
    try:
        _same(q, ref)
    finally:
        q.close()
        ref.close()
    w = HybridIndex.create(p, _pipe(m3_dir, collection="rb"), encoder=m3_encoder, overwrite=True)
    try:
        w.add(docs(2))
        assert drop_stray_collections(w, dry_run=True) == []
    finally:
        w.close()
    q = HybridIndex.attach(tmp_path / "q2", collection="rb", milvus_uri=uri, encoder=m3_encoder)
    try:
        assert {h.doc_id for h in q.search("vitamin", k=20)} == {"d0", "d1"}
        assert "docstore" not in q.stats()["bytes"]
    finally:
        q.close()


def test_two_index_directories_cannot_publish_under_one_prefix(tmp_path, m3_dir, m3_encoder):
    shared = str(tmp_path / "shared" / "milvus.db")   # a Milvus both use (as a server would be)
    a = HybridIndex.create(tmp_path / "a", _pipe(m3_dir, uri=shared, collection="same"), encoder=m3_encoder)
    try:
        a.add(docs(3))
        with pytest.raises(IndexFormatError, match="another index uses this \\[milvus\\] collection prefix"):
            HybridIndex.create(tmp_path / "b", _pipe(m3_dir, uri=shared, collection="same"), encoder=m3_encoder)
        assert not (tmp_path / "b").exists()   # nothing left behind (no log of collections it dropped again)
        # migrate into a new directory the same way: refused, nothing left, so it can run again
        src = HybridIndex.create(tmp_path / "src", m3_pipeline(m3_dir), encoder=m3_encoder)
        src.add(docs(2))
        src.close()
        with pytest.raises(IndexFormatError, match="another index uses this"):
            HybridIndex.migrate(tmp_path / "src", tmp_path / "m", whole_index=True, milvus_uri=shared,
                                collection="same", encoder=m3_encoder)
        assert not (tmp_path / "m").exists()
        HybridIndex.migrate(tmp_path / "src", tmp_path / "m", whole_index=True, milvus_uri=shared,
                            collection="moved", encoder=m3_encoder).close()
        b = HybridIndex.create(tmp_path / "b", _pipe(m3_dir, uri=shared, collection="other"), encoder=m3_encoder)
        b.close()
        q = HybridIndex.attach(tmp_path / "q", collection="same", milvus_uri=shared, encoder=m3_encoder)
        try:
            assert {h.doc_id for h in q.search("x", k=10)} == {"d0", "d1", "d2"}
        finally:
            q.close()
    finally:
        a.close()


def test_opening_names_no_new_place_and_keeps_one_prefix_per_node(tmp_path, m3_dir, m3_encoder):
    """A mistyped Milvus Lite uri is an error, not a new empty database (with its folders); a
    query node's directory serves the prefix it was attached to; a file is not a directory."""
    uri = str(tmp_path / "w" / "milvus.db")
    w = HybridIndex.create(tmp_path / "w", _pipe(m3_dir, collection="pub"), encoder=m3_encoder)
    w.add(docs(3))
    w.close()
    typo = tmp_path / "typo" / "dir" / "milvus.db"
    with pytest.raises(IndexFormatError, match="no Milvus Lite file at .*typo"):
        HybridIndex.attach(tmp_path / "q", collection="pub", milvus_uri=str(typo))
    with pytest.raises(IndexFormatError, match="no Milvus Lite file at .*typo"):
        HybridIndex.load(tmp_path / "w", milvus_uri=str(typo), encoder=m3_encoder)
    assert not (tmp_path / "typo").exists() and not (tmp_path / "q").exists()
    HybridIndex.attach(tmp_path / "q", collection="pub", milvus_uri=uri, encoder=m3_encoder).close()
    with pytest.raises(ConfigError, match="query node of collection prefix 'pub', not 'other'"):
        HybridIndex.attach(tmp_path / "q", collection="other", milvus_uri=uri)
    assert json.loads((tmp_path / "q" / "milvus-attach.json").read_text()) == {"collection": "pub"}
    q = HybridIndex.attach(tmp_path / "q", collection="pub", milvus_uri=uri, encoder=m3_encoder)   # again: fine
    try:
        assert {h.doc_id for h in q.search("x", k=10)} == {"d0", "d1", "d2"}
    finally:
        q.close()
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        HybridIndex.attach(tmp_path / "f", collection="pub", milvus_uri=uri)
    with pytest.raises(IndexFormatError, match="a file, not a directory"):
        HybridIndex.load(tmp_path / "f")
    from hybridrag.storage.check import check_index

    assert "is a query node" in check_index(tmp_path / "q")[0]   # its files are the writer's to check
    with pytest.raises(ConfigError, match="cannot connect to the Milvus server at 'http://127.0.0.1:1'"):
        HybridIndex.attach(tmp_path / "s", collection="pub", milvus_uri="http://127.0.0.1:1")
    assert not (tmp_path / "s").exists()


def test_take_over_refuses_a_lite_file_inside_a_living_writers_directory(tmp_path, m3_dir, m3_encoder):
    """A Lite file inside an index directory is that directory's own (its writer does not check
    the owner of its collections): taking it over would leave two writers of one index."""
    w = HybridIndex.create(tmp_path / "w", _pipe(m3_dir, collection="c5"), encoder=m3_encoder)
    try:
        w.add(docs(3))
        with pytest.raises(ConfigError, match="inside the index directory"):
            HybridIndex.take_over(tmp_path / "t", collection="c5", milvus_uri=str(tmp_path / "w" / "milvus.db"),
                                  encoder=m3_encoder)
        assert not (tmp_path / "t").exists()
        w.add(docs(4)[3:])   # the writer goes on, alone
        assert w.stats()["documents"] == 4
    finally:
        w.close()


def test_a_lite_file_another_process_holds_is_one_clear_line(tmp_path, m3_dir, m3_encoder):
    """Milvus Lite serves a data file to one process: a second one gets the cause in one line
    (hybridrag's error), not milvus-lite's logged traceback before it."""
    import subprocess
    import sys

    w = HybridIndex.create(tmp_path / "w", _pipe(m3_dir, collection="held"), encoder=m3_encoder)
    try:
        w.add(docs(2))
        out = subprocess.run([sys.executable, "-m", "hybridrag.cli", "info", str(tmp_path / "w")],
                             capture_output=True, text=True, timeout=120)
    finally:
        w.close()
    assert out.returncode != 0
    assert "hybridrag: error: cannot open Milvus Lite file" in out.stderr
    assert "DataDirLockedError: another process holds the lock" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
