"""ColBERT token vectors in Milvus (``MilvusColbertStore``, ``[colbert] backend = "milvus"``):
scores equal to the local ``MultiVectorStore``, and the commit protocol of docs/MILVUS.md
(readers see the last commit, a dead writer's rows are removed by the next writer only)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from _ranking import assert_same_ranking
from hybridrag.errors import ConfigError
from hybridrag.index import HybridIndex
from hybridrag.stores.milvus import MilvusColbertStore
from hybridrag.stores.multivector import MultiVectorStore
from test_index import QUERIES, docs, m3_pipeline

_names = itertools.count()


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("milvus") / "milvus.db")


@pytest.fixture(scope="module")
def m3_encoder(m3_dir):
    from hybridrag.encoders.m3 import M3Encoder

    return M3Encoder.from_pretrained(str(m3_dir))


def _tokens(rng, n, dim, lo=1, hi=30):
    out = []
    for _ in range(n):
        t = rng.standard_normal((int(rng.integers(lo, hi)), dim)).astype(np.float32)
        out.append(t / np.linalg.norm(t, axis=1, keepdims=True))
    return out


# --------------------------------------------------------------------------- the store


@pytest.mark.parametrize("encoding", ["fp16", "fp32"])
@pytest.mark.parametrize("per_row", [1, 8])
def test_scores_equal_the_local_store(uri, encoding, per_row):
    rng = np.random.default_rng(7)
    dim = 16
    remote = MilvusColbertStore(dim, encoding=encoding, tokens_per_row=per_row, uri=uri,
                                collection=f"t_{next(_names)}")
    local = MultiVectorStore(dim, encoding=encoding)
    data = _tokens(rng, 40, dim)
    data[3] = data[3][:1]                       # one token
    data[4] = _tokens(rng, 1, dim, 17, 18)[0]   # a whole number of rows of 8 (+1: 17 = 2 rows + 1)
    data[5] = _tokens(rng, 1, dim, 16, 17)[0]   # exactly two rows of 8
    slots = np.arange(40, dtype=np.int64) * 5 + 2
    for store in (remote, local):
        store.add(slots[:25], data[:25])
        store.add(slots[25:], data[25:])
        store.remove(np.array([7, 12, 12, 10**6]))   # two present, one unknown
    assert len(remote) == len(local) == 38
    queries = [rng.standard_normal((t, dim)).astype(np.float32) for t in (5, 1, 9)]
    cands = [np.concatenate([slots, [0, 1, 7, 12, 10**6]]), np.zeros(0, np.int64), slots[[4, 5, 3, 4]]]
    got, want = remote.score(queries, cands), local.score(queries, cands)
    for g, w in zip(got, want):
        assert g.dtype == np.float32 and g.shape == w.shape
        assert np.array_equal(np.isinf(g), np.isinf(w))
        np.testing.assert_allclose(g[np.isfinite(w)], w[np.isfinite(w)], rtol=0, atol=1e-5)
    assert np.isneginf(got[0][-5:]).all()   # unknown, removed and never-added slots
    # export gives the stored (encoded) values: what the local store decodes
    for s, t in zip([2, 17, 22], remote.export(np.array([2, 17, 22]))):
        np.testing.assert_array_equal(t, local.decode(s))
    with pytest.raises(KeyError, match="7"):
        remote.export(np.array([2, 7]))
    s1, i1 = remote.search(queries, 6)
    s2, i2 = local.search(queries, 6)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, rtol=0, atol=1e-5)
    assert remote.score([], []) == []


def test_bad_rows_and_settings_are_refused(uri):
    store = MilvusColbertStore(8, uri=uri, collection=f"t_{next(_names)}")
    with pytest.raises(ValueError, match="no token vectors"):
        store.add(np.array([1]), [np.zeros((0, 8), np.float32)])
    with pytest.raises(ValueError, match="slots but"):
        store.add(np.array([1, 2]), [np.ones((2, 8), np.float32)])
    store.add(np.array([1]), [np.ones((2, 8), np.float32)])
    with pytest.raises(ValueError, match="already present"):
        store.add(np.array([1]), [np.ones((2, 8), np.float32)])
    with pytest.raises(ConfigError, match="fp16' or 'fp32"):
        MilvusColbertStore(8, encoding="pq", uri=uri, collection=f"t_{next(_names)}")
    with pytest.raises(ConfigError, match="tokens_per_row"):
        MilvusColbertStore(1024, tokens_per_row=64, uri=uri, collection=f"t_{next(_names)}")


def test_save_load_and_the_commit_protocol_of_the_store(tmp_path):
    rng = np.random.default_rng(3)
    dim = 8
    db = str(tmp_path / "milvus.db")
    w = MilvusColbertStore(dim, tokens_per_row=4, uri=db, collection="c", owner="me")
    first = _tokens(rng, 6, dim)
    w.add(np.arange(6), first)
    w.save(tmp_path, "g1")
    w.committed()
    w.remove(np.array([0]))
    w.add(np.arange(6, 9), _tokens(rng, 3, dim))           # written, not committed
    q = [rng.standard_normal((3, dim)).astype(np.float32)]
    stored = w._live_count()
    r = MilvusColbertStore.load(tmp_path, {"milvus": "milvus-colbert-g1.json"}, {})
    try:
        assert len(r) == 6 and len(w) == 8
        got = r.score(q, [np.arange(9)])[0]
        assert np.isfinite(got[:6]).all() and np.isneginf(got[6:]).all()   # the commit, no more
        assert np.isneginf(w.score(q, [np.array([0])])[0]).all() and np.isfinite(w.score(q, [np.arange(1, 9)])[0]).all()
    finally:
        r.close()
    assert w._live_count() == stored   # the reader deleted nothing
    w.save(tmp_path, "g2")
    w.committed()
    w.save(tmp_path, "g3")              # the commit after the removal's purges slot 0's rows
    w.committed()
    assert w._live_count() == stored - -(-first[0].shape[0] // 4)
    w.close()
    again = MilvusColbertStore.load(tmp_path, {"milvus": "milvus-colbert-g3.json"}, {})
    try:
        assert len(again) == 8 and np.isfinite(again.score(q, [np.arange(1, 9)])[0]).all()
    finally:
        again.close()


# --------------------------------------------------------------------------- the engine


def _pipe(m3_dir, colbert_backend, **milvus):
    return m3_pipeline(m3_dir, dense={"depth": 100}, sparse={"depth": 100},
                       colbert={"backend": colbert_backend} if colbert_backend else {},
                       milvus={"enabled": True, "collection": "c", **milvus})


def _hits(idx, q, **kw):
    return [(h.chunk_id, h.score) for h in idx.search(q, k=10, **kw)]


def _colbert_scores(idx, q):
    return {h.chunk_id: h.scores["colbert"] for h in idx.search(q, k=10)}


def _same(remote, local):
    for q in QUERIES + ["Milvus token vectors"]:
        assert_same_ranking(_hits(remote, q), _hits(local, q), tol=1e-5)
        got, want = _colbert_scores(remote, q), _colbert_scores(local, q)
        assert got.keys() == want.keys()
        for c in got:
            assert abs(got[c] - want[c]) <= 1e-5, (q, c, got[c], want[c])


def _assert_colbert_complete(idx, ids):
    """The index holds exactly documents ``ids`` and every chunk has its token vectors."""
    live = np.asarray(idx.docstore.live_slots())
    assert {r["doc_id"] for r in idx.docstore.get(live)} == set(ids)
    store = idx.stores["colbert"]
    assert len(store) == len(live)
    q = idx.encoder.encode_queries(["vitamin"], max_length=32).colbert
    scores = store.score(q, [live])[0]
    assert np.isfinite(scores).all(), f"slots without token vectors: {live[~np.isfinite(scores)]}"


def test_the_default_keeps_colbert_local_and_the_backend_is_checked(m3_dir):
    from hybridrag.config import PipelineConfig

    on = PipelineConfig.from_dict(m3_pipeline(m3_dir, milvus={"enabled": True}))
    assert on.backend("colbert") == "multivector" and on.remote_modes() == ["dense", "sparse"]
    moved = PipelineConfig.from_dict(_pipe(m3_dir, "milvus"))
    assert moved.backend("colbert") == "milvus" and moved.remote_modes() == ["dense", "sparse", "colbert"]
    with pytest.raises(ConfigError, match=r"needs \[milvus\] enabled"):
        PipelineConfig.from_dict(m3_pipeline(m3_dir, colbert={"backend": "milvus"}))
    with pytest.raises(ConfigError, match="local-store encoding"):
        PipelineConfig.from_dict(m3_pipeline(m3_dir, colbert={"backend": "milvus", "encoding": "int8"},
                                             milvus={"enabled": True}))


def test_index_with_colbert_in_milvus_equals_local_colbert(tmp_path, m3_dir, m3_encoder, capsys):
    from hybridrag.cli import main
    from hybridrag.storage.check import check_index

    local = HybridIndex.create(tmp_path / "local", _pipe(m3_dir, ""), encoder=m3_encoder)
    remote = HybridIndex.create(tmp_path / "remote", _pipe(m3_dir, "milvus"), encoder=m3_encoder)
    try:
        assert type(remote.stores["colbert"]).__name__ == "MilvusColbertStore"
        assert type(local.stores["colbert"]).__name__ == "SegmentedStore"
        for idx in (local, remote):
            idx.add(docs(12))
        _same(remote, local)
        for idx in (local, remote):   # several commits: upserts, deletes, adds
            idx.upsert([{"id": "d3", "text": "Milvus holds the ColBERT token vectors now.", "metadata": {}}])
            idx.delete(ids=["d4", "d5"])
            idx.add(docs(16)[12:])
            idx.delete(ids=["d13"], commit=False)
            idx.upsert([{"id": "d1", "text": "A second upsert, uncommitted.", "metadata": {}}], commit=False)
            idx.commit()
        _same(remote, local)
        ids = {f"d{i}" for i in range(16)} - {"d4", "d5", "d13"}
        _assert_colbert_complete(remote, ids)
        st = remote.stats()["milvus"]["colbert"]
        assert st["rows"] == len(remote) and st["rows_stored"] >= st["rows"] and st["vector_bytes"] > 0
        coll = st["collection"]
    finally:
        local.close()
        remote.close()
    assert check_index(tmp_path / "remote") == []
    assert main(["info", str(tmp_path / "remote")]) == 0
    assert f"colbert   in Milvus (milvus.db): collection {coll}" in capsys.readouterr().out
    again, ref = HybridIndex.load(tmp_path / "remote", encoder=m3_encoder), HybridIndex.load(tmp_path / "local",
                                                                                           encoder=m3_encoder)
    try:
        _same(again, ref)
        _assert_colbert_complete(again, ids)
    finally:
        again.close()
        ref.close()


def test_a_reader_does_not_see_a_writers_uncommitted_token_rows_and_deletes_nothing(tmp_path, m3_dir, m3_encoder):
    p = tmp_path / "i"
    w = HybridIndex.create(p, _pipe(m3_dir, "milvus"), encoder=m3_encoder)
    try:
        w.add(docs(6))
        w.add([dict(d, id=f"n{d['id']}") for d in docs(4)], commit=False)   # in Milvus, not committed
        w.delete(ids=["d0"], commit=False)
        stored = w.stores["colbert"]._live_count()
        r = HybridIndex.load(p, encoder=m3_encoder)
        try:
            _assert_colbert_complete(r, [f"d{i}" for i in range(6)])   # the commit: d0 in, nd* out
            new = np.asarray(w.docstore.live_slots())
            new = new[new >= int(r._manifest["counts"]["next_slot"])]   # the uncommitted chunks
            assert new.size and np.isneginf(r.stores["colbert"].score(
                r.encoder.encode_queries(["x"], max_length=16).colbert, [new])[0]).all()
        finally:
            r.close()
        assert w.stores["colbert"]._live_count() == stored              # the reader deleted nothing
        w.commit()
        _assert_colbert_complete(w, [f"d{i}" for i in range(1, 6)] + [f"nd{i}" for i in range(4)])
    finally:
        w.close()
    with HybridIndex.load(p, encoder=m3_encoder) as again:
        _assert_colbert_complete(again, [f"d{i}" for i in range(1, 6)] + [f"nd{i}" for i in range(4)])


def test_a_dead_writers_token_rows_are_removed_by_the_next_writer_only(tmp_path, m3_dir, m3_encoder):
    from hybridrag.storage.check import check_index

    p = tmp_path / "i"
    w = HybridIndex.create(p, _pipe(m3_dir, "milvus"), encoder=m3_encoder)
    w.add(docs(5))
    committed = w.stores["colbert"]._live_count()
    w.add([dict(d, id=f"x{d['id']}") for d in docs(3)], commit=False)
    left = w.stores["colbert"]._live_count()
    assert left > committed
    # The writer dies: no commit, no rollback; its lock goes with the process (released here,
    # and Milvus Lite's file too, by closing the clients without touching the data).
    w._lock.release()
    for store in w.stores.values():
        if hasattr(store, "close"):
            store.close()
    del w
    r = HybridIndex.load(p, encoder=m3_encoder)   # a load in between: complete, deletes nothing
    try:
        _assert_colbert_complete(r, [f"d{i}" for i in range(5)])
        assert r.stores["colbert"]._live_count() == left
    finally:
        r.close()
    nxt = HybridIndex.load(p, encoder=m3_encoder)
    try:
        nxt.add([{"id": "y", "text": "the next writer", "metadata": {}}], commit=False)
        store = nxt.stores["colbert"]
        # the dead writer's rows went at this first write; only the new document's are above
        assert store._live_count(f"gen > {store._gen}") == store._live_count() - committed
        nxt.commit()
        _assert_colbert_complete(nxt, [f"d{i}" for i in range(5)] + ["y"])
    finally:
        nxt.close()
    assert check_index(p) == []
    with HybridIndex.load(p, encoder=m3_encoder) as again:
        _assert_colbert_complete(again, [f"d{i}" for i in range(5)] + ["y"])


def test_overwrite_rebuild_and_gc_handle_the_token_collection(tmp_path, m3_dir, m3_encoder, capsys):
    from pymilvus import MilvusClient

    from hybridrag.cli import main
    from hybridrag.stores.milvus import milvus_stores

    p = tmp_path / "i"
    idx = HybridIndex.create(p, _pipe(m3_dir, "milvus"), encoder=m3_encoder)
    idx.add(docs(4))
    first = {s.collection for s in idx.stores.values() if hasattr(s, "collection")}
    assert any(c.endswith("_colbert") for c in first)
    idx.close()
    idx = HybridIndex.create(p, _pipe(m3_dir, "milvus"), overwrite=True, encoder=m3_encoder)
    idx.add(docs(3))
    second = {s.collection for s in idx.stores.values() if hasattr(s, "collection")}
    cfg = idx.pipeline.milvus
    idx.close()
    idx = HybridIndex.rebuild(p, encoder=m3_encoder)
    try:
        _assert_colbert_complete(idx, ["d0", "d1", "d2"])
        third = {s.collection for s in idx.stores.values() if hasattr(s, "collection")}
    finally:
        idx.close()
    killed = milvus_stores(cfg, m3_encoder.dim, p, modes=("dense", "sparse", "colbert"),
                           colbert_dim=m3_encoder.colbert_dim)   # what a killed create left
    for store in killed.values():
        store.close()
    stray = {s.collection for s in killed.values()}
    assert any(c.endswith("_colbert") for c in stray)
    assert main(["milvus-gc", str(p)]) == 0
    assert "3 stray Milvus collections, 3 dropped" in capsys.readouterr().out
    client = MilvusClient(str(p / "milvus.db"))
    try:
        left = set(client.list_collections())
    finally:
        client.close()
    assert left == third and not (first | second) & left
    with HybridIndex.load(p, encoder=m3_encoder) as again:
        _assert_colbert_complete(again, ["d0", "d1", "d2"])


def test_migrate_to_local_moves_the_token_vectors(tmp_path, m3_dir, m3_encoder):
    from hybridrag.storage.check import check_index

    src = HybridIndex.create(tmp_path / "src", _pipe(m3_dir, "milvus"), encoder=m3_encoder)
    src.add(docs(8))
    src.delete(ids=["d2"])
    src.close()
    dst = HybridIndex.migrate(tmp_path / "src", tmp_path / "dst", to="local", encoder=m3_encoder)
    try:
        assert type(dst.stores["colbert"]).__name__ == "SegmentedStore"
        assert dst.pipeline.backend("colbert") == "multivector"
    finally:
        dst.close()
    assert check_index(tmp_path / "dst") == []
    with HybridIndex.load(tmp_path / "src", encoder=m3_encoder) as a, \
            HybridIndex.load(tmp_path / "dst", encoder=m3_encoder) as b:
        for q in QUERIES:
            assert_same_ranking(_hits(b, q), _hits(a, q), tol=1e-5)
            got, want = _colbert_scores(b, q), _colbert_scores(a, q)
            assert got.keys() == want.keys() and all(abs(got[cid] - want[cid]) <= 1e-5 for cid in got)


def test_migrate_to_milvus_with_colbert_moves_the_local_token_vectors_and_back(tmp_path, m3_dir, m3_encoder, capsys):
    from hybridrag.cli import main
    from hybridrag.storage.check import check_index

    src = HybridIndex.create(tmp_path / "src", m3_pipeline(m3_dir, dense={"depth": 100}, sparse={"depth": 100}),
                             encoder=m3_encoder)
    src.add(docs(10))
    src.delete(ids=["d2"])
    src.upsert([{"id": "d5", "text": "The token vectors move to Milvus unchanged.", "metadata": {}}])
    src.close()
    with pytest.raises(ConfigError, match="to='milvus'"):
        HybridIndex.migrate(tmp_path / "src", tmp_path / "bad", to="local", colbert=True)
    assert main(["migrate", str(tmp_path / "src"), str(tmp_path / "mid"), "--colbert", "-q"]) == 0
    assert "dense vectors, sparse weights, ColBERT tokens in Milvus; nothing re-encoded" in capsys.readouterr().out
    back = HybridIndex.migrate(tmp_path / "mid", tmp_path / "back", to="local", encoder=m3_encoder)
    back.close()
    for d in ("mid", "back"):
        assert check_index(tmp_path / d) == []
    with HybridIndex.load(tmp_path / "src", encoder=m3_encoder) as a, \
            HybridIndex.load(tmp_path / "mid", encoder=m3_encoder) as b, \
            HybridIndex.load(tmp_path / "back", encoder=m3_encoder) as c:
        assert type(b.stores["colbert"]).__name__ == "MilvusColbertStore"
        assert type(c.stores["colbert"]).__name__ == "SegmentedStore"
        for other in (b, c):
            for q in QUERIES:
                assert_same_ranking(_hits(other, q), _hits(a, q), tol=1e-5)
                got, want = _colbert_scores(other, q), _colbert_scores(a, q)
                assert got.keys() == want.keys() and all(abs(got[cid] - want[cid]) <= 1e-5 for cid in got)
        live = np.asarray(a.docstore.live_slots())
        for s in live[:5].tolist():   # fp16 tokens arrive bit for bit
            np.testing.assert_array_equal(b.stores["colbert"].export([s])[0], a.stores["colbert"].parts[
                next(p for p, part in a.stores["colbert"].parts.items() if s < part._lengths.shape[0]
                     and part._lengths[s] > 0)].decode(s))
