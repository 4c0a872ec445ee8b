"""BM25 in Milvus (``[bm25] backend = "milvus"``, ``hybridrag/stores/milvus_bm25.py``): the
store's search and score equal :class:`SparseIndex` with ``weighting="bm25lucene"`` over the
same rows, under the writer's uncommitted changes, after commits, after the average length
drifts from the reference one, and for a reader that opens a commit; a reader sees the
committed statistics only; the engine's writer and a query node holding nothing but the
collection prefix equal a local BM25 index (scores within 1e-5); migrate moves BM25 to Milvus
and back; okapi and a BM25 in Milvus without ``[milvus]`` are refused."""
from __future__ import annotations

import numpy as np
import pytest

from hybridrag.config import PipelineConfig
from hybridrag.errors import ConfigError
from hybridrag.index import HybridIndex
from hybridrag.stores.milvus_bm25 import MilvusBm25Store, _pack, _unpack, term_key
from hybridrag.stores.sparse import SparseIndex
from test_index import QUERIES, bm25_pipeline, docs


def _rows(rng, n, lo=3, hi=60, vocab=3000):
    out = []
    for _ in range(n):
        terms = np.minimum(rng.zipf(1.3, int(rng.integers(lo, hi))), vocab) - 1
        row: dict[int, float] = {}
        for t in terms.tolist():
            row[t] = row.get(t, 0.0) + 1.0
        out.append(row)
    return out


def _same_search(got, want, queries, k=10):
    gs, gi = got.search(queries, k)
    ws, wi = want.search(queries, k)
    for q in range(len(queries)):
        assert gi[q].tolist() == wi[q].tolist(), (q, gi[q], wi[q], gs[q], ws[q])
        np.testing.assert_allclose(gs[q], ws[q], rtol=1e-5)


def test_varints_round_trip():
    for counts in ([], [1], [1, 127, 128, 300, 16384, 2**31], list(range(1, 2000))):
        assert _unpack(_pack(counts)) == counts
    assert term_key("a" * 256) == "a" * 256
    long = "é" * 300
    assert term_key(long).startswith("#sha256:") and term_key(long) != term_key(long + "x")


def test_store_equals_sparse_index_bm25_before_and_after_commits_and_for_readers(tmp_path):
    rng = np.random.default_rng(7)
    m = MilvusBm25Store(uri=str(tmp_path / "m.db"), collection="t", k1=1.2, b=0.7)
    loc = SparseIndex("bm25lucene", k1=1.2, b=0.7)
    first = _rows(rng, 400) + [{}]          # an empty row counts in N
    m.add(np.arange(401), first)
    loc.add(np.arange(401), first)
    files = m.save(tmp_path, "a")
    m.committed()
    # longer rows: the average length moves away from the reference one (the first rows')
    more = _rows(rng, 300, 30, 120)
    m.add(np.arange(401, 701), more)
    loc.add(np.arange(401, 701), more)
    m.remove(np.arange(0, 400, 5))
    loc.remove(np.arange(0, 400, 5))
    queries = [{int(t): float(c) for t, c in zip(*np.unique(np.minimum(rng.zipf(1.3, 4), 3000) - 1,
                                                                return_counts=True))} for _ in range(25)]
    queries.append({2999: 1.0, 10**6: 1.0})   # a rare and an unknown term
    _same_search(m, loc, queries)            # the writer, uncommitted changes included
    assert m._unseen_bound(1.0) > 1.0        # (the drift the search's stop rule allows for)
    # a reader of the first commit sees its statistics, not the writer's later rows
    old = SparseIndex("bm25lucene", k1=1.2, b=0.7)
    old.add(np.arange(401), first)
    r = MilvusBm25Store.load(tmp_path, files, {"uri": str(tmp_path / "m.db")})
    _same_search(r, old, queries)
    r.close()
    files = m.save(tmp_path, "b")
    m.committed()
    r = MilvusBm25Store.load(tmp_path, files, {"uri": str(tmp_path / "m.db")})
    try:
        _same_search(r, loc, queries)
        cands = [np.arange(0, 701, 3)] * 3
        for a, b in zip(r.score(queries[:3], cands), loc.score(queries[:3], cands)):
            np.testing.assert_allclose(a, b, rtol=1e-5)
        got = r.export(np.array([401, 402, 400]))
        assert got == [more[0], more[1], {}]
        # a new writer continues from the committed statistics in Milvus
        extra = _rows(rng, 50)
        r.add(np.arange(701, 751), extra)
        loc.add(np.arange(701, 751), extra)
        r.remove(np.array([401, 402]))
        loc.remove(np.array([401, 402]))
        _same_search(r, loc, queries)
        files = r.save(tmp_path, "c")
        r.committed()
    finally:
        r.close()
    r = MilvusBm25Store.load(tmp_path, files, {"uri": str(tmp_path / "m.db")})
    try:
        _same_search(r, loc, queries)
        n, df, total = r.term_stats_of([0, 1, 2999])
        ln, ldf, ltotal = loc.term_stats()
        assert (n, total) == (ln, ltotal)
        assert df == {t: int(ldf[t]) for t in (0, 1, 2999)}
    finally:
        r.close()
    m.close()


def test_uncommitted_terms_are_invisible_and_the_next_writer_deletes_them(tmp_path):
    rng = np.random.default_rng(3)
    m = MilvusBm25Store(uri=str(tmp_path / "m.db"), collection="t")
    m.bind_vocabulary(vocab := {f"w{i}": i for i in range(50)})
    rows = _rows(rng, 60, vocab=50)
    m.add(np.arange(60), rows)
    files = m.save(tmp_path, "a")
    m.committed()
    vocab.update({f"new{i}": 50 + i for i in range(5)})
    m.add(np.arange(60, 65), [{50 + i: 2.0, 0: 1.0} for i in range(5)])
    m.save(tmp_path, "b")            # saved, never committed: the writer dies before its manifest
    m.close()
    r = MilvusBm25Store.load(tmp_path, files, {"uri": str(tmp_path / "m.db")})
    try:
        view = r.vocabulary()
        assert "w0" in view and view["w0"] == 0 and "new0" not in view
        assert r.lookup(["w0"])["w0"] == (0, sum(1 for row in rows if 0 in row))
        later = lambda: r._client.query(r.terms_collection, filter="gen > 1", output_fields=["key"])
        assert later()                # the dead writer's versions are still there...
        r.bind_vocabulary({f"w{i}": i for i in range(50)})
        r.remove(np.array([0]))       # ...until the next writer's first write
        assert later() == []
        assert len(r) == 59
    finally:
        r.close()


def _hits(idx, q, **kw):
    return [(h.chunk_id, round(h.score, 5), h.text) for h in idx.search(q, k=10, **kw)]


WHOLE = {"milvus": {"enabled": True, "collection": "c", "whole_index": True}}
TEXTS = ["fox " * 3 + "x" * 300 + " lazy dog", "混合检索 向量 检索", "vitamin D bone fractures and vitamin K"]


def test_writer_and_query_node_equal_a_local_bm25_index(tmp_path):
    w = HybridIndex.create(tmp_path / "w", bm25_pipeline(backend="milvus") | WHOLE)
    loc = HybridIndex.create(tmp_path / "l", bm25_pipeline())
    q = None
    try:
        extra = [{"id": f"x{i}", "text": t, "metadata": {"group": "odd", "n": 100 + i}} for i, t in enumerate(TEXTS)]
        for idx in (w, loc):
            idx.add(docs(25))
            idx.add(docs(40)[25:] + extra)
            idx.upsert([{**docs(4)[3], "text": "fox fox jumps over the lazy dog vitamin"}])
            idx.delete(["d5"])
        queries = QUERIES + ["fox " + "x" * 300, "检索", "vitamin vitamin bone", "nothing-known"]
        for query in queries:
            assert _hits(w, query) == _hits(loc, query), query
        q = HybridIndex.attach(tmp_path / "q", collection="c", milvus_uri=str(tmp_path / "w" / "milvus.db"))
        for query in queries:
            for f in (None, {"group": "even"}, {"n": {"$gte": 3, "$lt": 30}}):
                assert _hits(q, query, filters=f) == _hits(loc, query, filters=f), (query, f)
        # the writer commits more: the query node sees it after a reload
        for idx in (w, loc):
            idx.add(docs(60)[40:])
        q.close()
        q = HybridIndex.attach(tmp_path / "q", collection="c", milvus_uri=str(tmp_path / "w" / "milvus.db"))
        for query in queries:
            assert _hits(q, query) == _hits(loc, query), query
        info = w.stats()["milvus"]["bm25"]
        assert info["rows"] == len(loc) and info["terms_stored"] >= len(loc.bm25.vocabulary)
        with pytest.raises(TypeError, match="looked up term by term"):
            list(q.bm25.vocabulary)
    finally:
        for idx in (w, loc, q):
            if idx is not None:
                idx.close()
    w = HybridIndex.load(tmp_path / "w")   # a writer reopened continues from Milvus's statistics
    loc = HybridIndex.load(tmp_path / "l")
    try:
        for idx in (w, loc):
            idx.delete(["d7", "d8"])
        for query in QUERIES:
            assert _hits(w, query) == _hits(loc, query), query
    finally:
        w.close()
        loc.close()


def test_migrate_a_local_bm25_index_to_the_whole_index_and_back(tmp_path):
    # chunks of 8 tokens whose rows count their neighbours' terms ([bm25] context): Milvus keeps them
    loc = HybridIndex.create(tmp_path / "l", bm25_pipeline(context=1, context_weight=1.0)
                             | {"chunking": {"max_tokens": 8, "overlap": 0}})
    loc.add(docs(30))
    assert loc.pipeline.bm25.context == 1 and len(loc) > 30
    loc.delete(["d2"])
    loc.add_pipeline_version({"bm25.depth": 7, "fusion.method": "rrf"}, note="tuned")   # versions travel too
    versions = loc.pipeline_versions()
    loc.close()
    m = HybridIndex.migrate(tmp_path / "l", tmp_path / "m", to="milvus", whole_index=True, collection="mig")
    loc = HybridIndex.load(tmp_path / "l")
    q = back = q2 = None
    uri = str(tmp_path / "m" / "milvus.db")
    try:
        assert m.pipeline.backend("bm25") == "milvus"
        assert m.pipeline_versions() == versions
        q = HybridIndex.attach(tmp_path / "q", collection="mig", milvus_uri=uri)
        assert q.pipeline_versions() == versions and (q.pipeline.bm25.depth, q.pipeline.fusion.method) == (7, "rrf")
        m.use_pipeline_version(1)   # published: a query node attached after it searches with version 1
        q2 = HybridIndex.attach(tmp_path / "q2", collection="mig", milvus_uri=uri)
        assert [v.active for v in q2.pipeline_versions()] == [True, False] and q2.pipeline.bm25.depth == 100
        m.use_pipeline_version(2)
        m.close()
        back = HybridIndex.migrate(tmp_path / "m", tmp_path / "b", to="local")
        assert back.pipeline.backend("bm25") == "inverted"
        assert [(v.version, v.active, v.settings) for v in back.pipeline_versions()] == [
            (v.version, v.active, v.settings) for v in versions]
        for query in QUERIES:
            assert _hits(q, query) == _hits(loc, query) == _hits(back, query), query
    finally:
        for idx in (loc, q, back, q2):
            if idx is not None:
                idx.close()


def test_rebuild_and_overwrite_replace_the_terms_collection_too(tmp_path):
    p = tmp_path / "w"
    w = HybridIndex.create(p, bm25_pipeline(backend="milvus") | WHOLE)
    w.add(docs(5))
    want = {q: _hits(w, q) for q in QUERIES}
    first = set(w.stores["bm25"].collections())
    w.close()
    w = HybridIndex.rebuild(p)   # re-encodes into new collections, the terms' too
    try:
        old = set(w.stores["bm25"].collections())
        assert {q: _hits(w, q) for q in QUERIES} == want
        assert not first & set(w.stores["bm25"]._client.list_collections())
    finally:
        w.close()
    w = HybridIndex.create(p, bm25_pipeline(backend="milvus") | WHOLE, overwrite=True)
    try:
        w.add(docs(2))
        new = set(w.stores["bm25"].collections())
        names = set(w.stores["bm25"]._client.list_collections())
        assert len(new) == 2 and new <= names and not old & names, (old, new, names)
    finally:
        w.close()


def test_bm25_in_milvus_settings_are_checked():
    with pytest.raises(ConfigError, match="okapi.*no Milvus backend"):
        PipelineConfig.from_dict(bm25_pipeline(backend="milvus", variant="okapi") | {"milvus": {"enabled": True}})
    with pytest.raises(ConfigError, match="needs \\[milvus\\] enabled"):
        PipelineConfig.from_dict(bm25_pipeline(backend="milvus"))
    with pytest.raises(ConfigError, match="bm25 is local \\(set \\[bm25\\] backend = 'milvus'\\)"):
        PipelineConfig.from_dict(bm25_pipeline() | WHOLE)
    # an index made before BM25 had a Milvus backend keeps its BM25 local under [milvus] enabled
    cfg = PipelineConfig.from_dict(bm25_pipeline() | {"dense": {"enabled": True}, "encoder": {"kind": "m3"},
                                                      "fusion": {"weights": {"bm25": 0.5, "dense": 0.5}},
                                                      "milvus": {"enabled": True}})
    assert cfg.backend("bm25") == "inverted" and cfg.backend("dense") == "milvus"


def test_bm25_in_milvus_without_the_whole_index_equals_the_local_store(tmp_path):
    # the docstore and the vocabulary files stay in the directory; BM25's rows and df go to Milvus
    p = bm25_pipeline(backend="milvus") | {"milvus": {"enabled": True, "collection": "half"}}
    w = HybridIndex.create(tmp_path / "w", p)
    loc = HybridIndex.create(tmp_path / "l", bm25_pipeline())
    try:
        for idx in (w, loc):
            idx.add(docs(20))
            idx.delete(["d1"])
        w.close()
        w = HybridIndex.load(tmp_path / "w")
        assert type(w.stores["bm25"]).__name__ == "MilvusBm25Store" and "docs" not in w.stores
        for query in QUERIES:
            assert _hits(w, query, filters={"group": "even"}) == _hits(loc, query, filters={"group": "even"}), query
    finally:
        w.close()
        loc.close()


def test_truncated_milvus_lite_index_files_are_rebuilt_on_load(tmp_path):
    # Milvus Lite writes a segment's vector index file in place: a kill can leave it truncated
    # (a crash trial did, in the terms collection). The head, terms and docs collections rebuild it.
    w = HybridIndex.create(tmp_path / "w", bm25_pipeline(backend="milvus") | WHOLE)
    w.add(docs(12))
    want = {q: _hits(w, q) for q in QUERIES}
    w.close()
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(str(tmp_path / "w" / "milvus.db"))   # the next open reads the files
    damaged = sorted((tmp_path / "w" / "milvus.db").rglob("*.flat.idx"))
    assert {p.parts[-5].rsplit("_", 1)[-1] for p in damaged} >= {"head", "terms", "docs"}, damaged
    for p in damaged:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    q = HybridIndex.attach(tmp_path / "q", collection="c", milvus_uri=str(tmp_path / "w" / "milvus.db"))
    try:
        assert {query: _hits(q, query) for query in QUERIES} == want
    finally:
        q.close()
    w = HybridIndex.load(tmp_path / "w")
    try:
        assert {query: _hits(w, query) for query in QUERIES} == want
        w.add(docs(14)[12:])
    finally:
        w.close()


def test_a_lost_writer_directory_is_made_again_from_a_query_node(tmp_path, monkeypatch, capsys):
    import shutil

    from hybridrag.cli import main

    uri = str(tmp_path / "shared" / "milvus.db")   # Milvus outlives the writer's directory (a server would)
    w = HybridIndex.create(tmp_path / "w", bm25_pipeline(backend="milvus")
                           | {"milvus": {"enabled": True, "collection": "c", "whole_index": True, "uri": uri}})
    loc = HybridIndex.create(tmp_path / "l", bm25_pipeline())
    for idx in (w, loc):
        idx.add(docs(20))
        idx.upsert([{**docs(3)[2], "text": "fox fox over the lazy dog"}])
        idx.delete(["d4"])
    w.close()
    shutil.rmtree(tmp_path / "w")                  # the writer's directory is lost
    q = HybridIndex.attach(tmp_path / "q", collection="c", milvus_uri=uri)
    q.close()
    with pytest.raises(ConfigError, match="collection prefix of its own"):
        HybridIndex.migrate(tmp_path / "q", tmp_path / "w2", to="milvus", whole_index=True, milvus_uri=uri)
    w2 = HybridIndex.migrate(tmp_path / "q", tmp_path / "w2", to="milvus", whole_index=True, milvus_uri=uri,
                             collection="c2")
    back = HybridIndex.migrate(tmp_path / "q", tmp_path / "local", to="local", milvus_uri=uri)
    monkeypatch.setenv("HYBRIDRAG_MILVUS_URI", uri)   # the command line's way
    assert main(["migrate", str(tmp_path / "q"), str(tmp_path / "w3"), "--whole-index", "--collection", "c3",
                 "-q"]) == 0
    assert "text, metadata and ids, BM25 in Milvus; nothing re-encoded" in capsys.readouterr().out
    HybridIndex.load(tmp_path / "w3").close()
    q2 = None
    try:
        for query in QUERIES:
            assert _hits(w2, query) == _hits(loc, query) == _hits(back, query), query
        # the new writer goes on: unchanged documents are skipped, changed ones replaced
        for idx in (w2, loc):
            res = idx.upsert(docs(21))
            idx.delete(["d6"])
        assert sorted(res.added) == ["d2", "d20", "d4"] and len(res.unchanged) == 18 and w2.docstore.doc_hash("d0") == loc.docstore.doc_hash("d0")
        q2 = HybridIndex.attach(tmp_path / "q2", collection="c2", milvus_uri=uri)
        for query in QUERIES:
            assert _hits(w2, query) == _hits(loc, query) == _hits(q2, query), query
    finally:
        for idx in (w2, loc, back, q2):
            if idx is not None:
                idx.close()


def test_a_lost_writer_directory_is_taken_over_in_place(tmp_path, monkeypatch, capsys):
    """take_over: a new writer directory for the same collection prefix, made from Milvus alone;
    the lost writer's unpublished commit is dropped, a query node keeps its prefix, and the old
    writer (or any earlier one) is refused at its next write."""
    import shutil

    from hybridrag.cli import main
    from hybridrag.errors import IndexFormatError
    from hybridrag.stores.milvus_docs import MilvusHead

    uri = str(tmp_path / "shared" / "milvus.db")   # Milvus outlives the writer's directory (a server would)
    pipe = bm25_pipeline(backend="milvus") | {"milvus": {"enabled": True, "collection": "c", "whole_index": True,
                                                         "uri": uri}}
    w = HybridIndex.create(tmp_path / "w", pipe)
    loc = HybridIndex.create(tmp_path / "l", bm25_pipeline())
    for idx in (w, loc):
        idx.add(docs(20))
        idx.upsert([{**docs(3)[2], "text": "fox fox over the lazy dog"}])
        idx.delete(["d4"])
    # the writer's last commit is durable in its directory but never reaches the head
    with monkeypatch.context() as mp:
        mp.setattr(MilvusHead, "publish", lambda *a, **k: (_ for _ in ()).throw(OSError("network down")))
        w.add([{"id": "lost", "text": "fox vitamin unpublished"}])
    assert w.generation > HybridIndex.attach(tmp_path / "q", collection="c", milvus_uri=uri).generation
    # the writer's machine is unreachable (its process may live on): a new writer takes over
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not an empty directory"):
        HybridIndex.take_over(tmp_path / "busy", collection="c", milvus_uri=uri)
    with pytest.raises(IndexFormatError, match="no index is published under collection prefix 'nope'"):
        HybridIndex.take_over(tmp_path / "t0", collection="nope", milvus_uri=uri)
    assert not (tmp_path / "t0").exists()
    t = HybridIndex.take_over(tmp_path / "t", collection="c", milvus_uri=uri)
    q = t2 = None
    try:
        assert sorted(p.name for p in (tmp_path / "t").iterdir() if not p.name.startswith("docstore")) == sorted(
            ["manifest.json", "s1.slots.npy", f"bm25.g{t.generation}.vocab.json", *(
                e["files"]["milvus"] for e in t._manifest["remote"].values())])
        assert t.docstore.doc_hash("lost") is None and t.docstore.doc_hash("d0") == loc.docstore.doc_hash("d0")
        for query in QUERIES + ["unpublished"]:
            assert _hits(t, query) == _hits(loc, query), query
        # the old writer's process, still running, is refused at its next commit
        with pytest.raises(IndexFormatError, match="another directory took it over"):
            w.add([{"id": "zombie", "text": "fox zombie"}])
        w.close()
        shutil.rmtree(tmp_path / "w")
        # the new writer goes on under the same prefix: unchanged documents skipped, its first
        # write drops the lost commit's rows and terms
        for idx in (t, loc):
            res = idx.upsert(docs(21))
            idx.delete(["d6"])
        assert sorted(res.added) == ["d2", "d20", "d4"] and len(res.unchanged) == 18
        q = HybridIndex.load(tmp_path / "q", milvus_uri=uri)   # the query node, as it was, sees the new commits
        for query in QUERIES + ["unpublished", "zombie"]:
            assert _hits(t, query) == _hits(loc, query) == _hits(q, query), query
        monkeypatch.setenv("HYBRIDRAG_MILVUS_URI", uri)   # the command line's way, once more
        assert main(["take-over", str(tmp_path / "t3"), "--collection", "c"]) == 0
        assert "the writer of 'c' at generation" in capsys.readouterr().out
        assert main(["attach", str(tmp_path / "q3"), "--collection", "c"]) == 0
        assert "query node of 'c' at generation" in capsys.readouterr().out
        # a writer mid-session (its stores are writing) is refused at its commit, a writer
        # loaded again at its first write
        with pytest.raises(IndexFormatError, match="another directory took it over"):
            t.add([{"id": "late", "text": "fox"}])
        t.close()
        t2 = HybridIndex.load(tmp_path / "t", milvus_uri=uri)
        with pytest.raises(IndexFormatError, match="another directory took it over"):
            t2.delete(["d1"])
    finally:
        for idx in (t, loc, q, t2):
            if idx is not None:
                idx.close()
    from hybridrag.storage.check import check_index

    assert check_index(tmp_path / "t3") == []   # files, checksums, row hashes, stores = docstore
    t3 = HybridIndex.load(tmp_path / "t3")
    loc = HybridIndex.load(tmp_path / "l")
    try:
        for idx in (t3, loc):
            idx.add([{"id": "after", "text": "vitamin fox after the take over"}])
        for query in QUERIES:
            assert _hits(t3, query) == _hits(loc, query), query
    finally:
        t3.close()
        loc.close()
