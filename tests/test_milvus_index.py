"""The engine on the Milvus backend (Milvus Lite, embedded): the same hits as the local
stores on the same data and settings, and writes/reloads that stay consistent."""
from __future__ import annotations

import numpy as np
import pytest

from _ranking import assert_same_ranking
from hybridrag.errors import ConfigError, IndexFormatError
from hybridrag.index import HybridIndex
from test_index import QUERIES, docs, m3_pipeline


def _pair(tmp_path, m3_dir):
    # The pipelines' default candidate depth (100). With a shallow depth, two first-stage
    # candidates whose scores differ only in float rounding (FAISS's SIMD sums against the
    # client-side rescoring of Milvus hits) can fall on either side of the cut, and the
    # candidate unions then differ; store-level top-k parity is tested in test_milvus.py.
    local = HybridIndex.create(tmp_path / "local", m3_pipeline(m3_dir, dense={"depth": 100}, sparse={"depth": 100}))
    remote = HybridIndex.create(tmp_path / "remote", m3_pipeline(
        m3_dir, dense={"depth": 100}, sparse={"depth": 100}, milvus={"enabled": True, "collection": "t"}),
        encoder=local.encoder)
    return local, remote


def _top(idx, q, **kw):
    return [(h.chunk_id, h.score) for h in idx.search(q, k=10, **kw)]


def _same(remote, local, q, **kw):
    # Milvus returns float32 vectors that are rescored on the client; the last bits of a
    # fused score may differ from FAISS's, so scores match within 1e-5 and near-ties may swap.
    assert_same_ranking(_top(remote, q, **kw), _top(local, q, **kw), tol=1e-5)


def test_milvus_top10_equals_local(tmp_path, m3_dir):
    local, remote = _pair(tmp_path, m3_dir)
    try:
        assert type(remote.stores["dense"]).__name__ == "MilvusDenseStore"
        assert type(remote.stores["sparse"]).__name__ == "MilvusSparseStore"
        for idx in (local, remote):
            idx.add(docs(20))
        for q in QUERIES:
            _same(remote, local, q)
            _same(remote, local, q, filters={"group": "odd"})
        # upsert and delete reach Milvus and the docstore alike
        changed = [{"id": "d3", "text": "Milvus holds dense and sparse vectors.", "metadata": {"group": "odd"}}]
        for idx in (local, remote):
            idx.upsert(changed)
            idx.delete(ids=["d4", "d5"])
        assert len(remote.stores["dense"]) == len(remote.stores["sparse"]) == len(remote) == len(local)
        for q in QUERIES + ["Milvus vectors"]:
            _same(remote, local, q)
            assert not {"d4", "d5"} & {h.doc_id for h in remote.search(q, k=10)}
    finally:
        local.close()
        remote.close()
    # Milvus Lite allows one client per data file: the reload happens after close().
    again = HybridIndex.load(tmp_path / "remote")
    ref = HybridIndex.load(tmp_path / "local")
    try:
        for q in QUERIES:
            _same(again, ref, q)
    finally:
        again.close()
        ref.close()


# --------------------------------------------------------------------------- commit protocol (issue 24)


@pytest.fixture(scope="module")
def m3_encoder(m3_dir):
    from hybridrag.encoders.m3 import M3Encoder

    return M3Encoder.from_pretrained(str(m3_dir))


def _mv(m3_dir, **milvus):
    return m3_pipeline(m3_dir, milvus={"enabled": True, "collection": "c", **milvus})


def _assert_complete(idx, ids):
    """The index holds exactly documents ``ids``, and every chunk has its Milvus vectors."""
    live = idx.docstore.live_slots()
    assert {r["doc_id"] for r in idx.docstore.get(live)} == set(ids)
    q = idx.encoder.encode_queries(["vitamin"], max_length=32)
    for mode in ("dense", "sparse"):
        store = idx.stores[mode]
        assert len(store) == len(live), mode
        rep = q.dense if mode == "dense" else q.sparse
        scores = store.score(rep, [np.asarray(live)])[0]
        assert np.isfinite(scores).all(), f"{mode}: slots without a vector: {np.asarray(live)[~np.isfinite(scores)]}"


def test_reader_load_keeps_a_live_writers_uncommitted_rows(tmp_path, m3_dir, m3_encoder):
    # F1: a reader's load used to delete every Milvus row above the saved slot count.
    w = HybridIndex.create(tmp_path / "i", _mv(m3_dir), encoder=m3_encoder)
    try:
        w.add(docs(8))
        w.add([dict(d, id=f"n{d['id']}") for d in docs(8)], commit=False)  # in Milvus, not committed
        r = HybridIndex.load(tmp_path / "i", encoder=m3_encoder)
        try:
            _assert_complete(r, [f"d{i}" for i in range(8)])  # the reader sees the committed state only
        finally:
            r.close()
        w.commit()
        _assert_complete(w, [f"d{i}" for i in range(8)] + [f"nd{i}" for i in range(8)])
    finally:
        w.close()
    again = HybridIndex.load(tmp_path / "i", encoder=m3_encoder)
    try:
        _assert_complete(again, [f"d{i}" for i in range(8)] + [f"nd{i}" for i in range(8)])
    finally:
        again.close()


def test_failed_upsert_leaves_the_committed_state_and_the_next_write_recovers(tmp_path, m3_dir, m3_encoder,
                                                                            monkeypatch):
    # F2: the upsert deleted the old rows in Milvus, then failed: the index no longer loaded.
    from hybridrag.stores.milvus import MilvusSparseStore

    idx = HybridIndex.create(tmp_path / "i", _mv(m3_dir), encoder=m3_encoder)
    idx.add(docs(6))

    def boom(*a, **k):
        raise RuntimeError("injected")

    monkeypatch.setattr(MilvusSparseStore, "add", boom)
    changed = [{"id": "d1", "text": "Milvus keeps the last committed state.", "metadata": {}}]
    with pytest.raises(RuntimeError, match="injected"):
        idx.upsert(changed)
    monkeypatch.undo()
    _assert_complete(idx, [f"d{i}" for i in range(6)])
    idx.close()
    again = HybridIndex.load(tmp_path / "i", encoder=m3_encoder)
    try:
        _assert_complete(again, [f"d{i}" for i in range(6)])
        assert again.docstore.get(again.docstore.live_slots())[1]["text"] == docs(6)[1]["text"]
        again.upsert(changed)  # no rebuild needed
        _assert_complete(again, [f"d{i}" for i in range(6)])
        assert "Milvus" in again.search("Milvus committed state", k=1, modes=["dense", "sparse"])[0].text
    finally:
        again.close()
    last = HybridIndex.load(tmp_path / "i", encoder=m3_encoder)
    try:
        _assert_complete(last, [f"d{i}" for i in range(6)])
    finally:
        last.close()


def test_a_truncated_milvus_lite_index_file_is_rebuilt_on_load(tmp_path, m3_dir, m3_encoder):
    # Milvus Lite writes each segment's vector index file in place; a process killed while
    # writing one left a truncated file that failed every later load_collection (CI, crash
    # trials). The file is derived from the segment's rows, so the store rebuilds it.
    from hybridrag.storage.check import check_index

    from test_crash import release_milvus_lite

    d = tmp_path / "i"
    idx = HybridIndex.create(d, _mv(m3_dir), encoder=m3_encoder)
    idx.add(docs(8))
    idx.commit()
    before = [(h.chunk_id, h.score) for h in idx.search("vitamin", k=5, modes=["dense", "sparse"])]
    idx.close()
    release_milvus_lite(d)
    sidecars = [f for f in (d / "milvus.db").rglob("*.idx") if f.is_file()] if (d / "milvus.db").is_dir() \
        else [f for f in d.rglob("*.idx") if f.is_file()]
    assert sidecars, sorted(str(f.relative_to(d)) for f in d.rglob("*") if f.is_file())
    for f in sidecars:
        f.write_bytes(f.read_bytes()[:20])
    assert check_index(d) == []
    release_milvus_lite(d)
    again = HybridIndex.load(d, encoder=m3_encoder)
    try:
        _assert_complete(again, [f"d{i}" for i in range(8)])
        assert [(h.chunk_id, h.score) for h in again.search("vitamin", k=5, modes=["dense", "sparse"])] == before
    finally:
        again.close()


def _original_and_its_copy(tmp_path, m3_dir, m3_encoder, monkeypatch):
    """An index of 6 documents in a Milvus Lite file outside both directories, and a copy of
    its directory; the file is named by the environment, as a user would for both."""
    import shutil

    lite = str(tmp_path / "shared" / "milvus.db")
    orig, copy = tmp_path / "orig", tmp_path / "copy"
    idx = HybridIndex.create(orig, _mv(m3_dir, uri=lite), encoder=m3_encoder)
    idx.add(docs(6))
    idx.close()
    shutil.copytree(orig, copy)
    monkeypatch.setenv("HYBRIDRAG_MILVUS_URI", lite)
    return orig, copy


def test_opening_a_copy_never_changes_the_original(tmp_path, m3_dir, m3_encoder, monkeypatch):
    # F3: loading a backup copy deleted the live index's newer rows; a writer on the copy
    # must be refused (the collection belongs to the original directory).
    orig, copy = _original_and_its_copy(tmp_path, m3_dir, m3_encoder, monkeypatch)
    idx = HybridIndex.load(orig, encoder=m3_encoder)
    idx.add([dict(d, id=f"n{d['id']}") for d in docs(4)])
    idx.close()
    everything = [f"d{i}" for i in range(6)] + [f"nd{i}" for i in range(4)]
    with HybridIndex.load(copy, encoder=m3_encoder) as cp:
        _assert_complete(cp, [f"d{i}" for i in range(6)])
    with HybridIndex.load(orig, encoder=m3_encoder) as idx:
        _assert_complete(idx, everything)
    with HybridIndex.load(copy, encoder=m3_encoder) as cp:
        with pytest.raises(IndexFormatError, match="another index directory"):
            cp.add([{"id": "x", "text": "written to the copy", "metadata": {}}])
    with HybridIndex.load(orig, encoder=m3_encoder) as idx:   # the refused write changed nothing
        _assert_complete(idx, everything)
    # rebuild gives the copy collections of its own (the original's are left alone)
    cp = HybridIndex.rebuild(copy, encoder=m3_encoder)
    try:
        cp.add([{"id": "x", "text": "written to the copy", "metadata": {}}])
        _assert_complete(cp, [f"d{i}" for i in range(6)] + ["x"])
    finally:
        cp.close()
    for path, ids in ((orig, everything), (copy, [f"d{i}" for i in range(6)] + ["x"])):
        idx = HybridIndex.load(path, encoder=m3_encoder)
        try:
            _assert_complete(idx, ids)
        finally:
            idx.close()


def test_a_copy_opened_on_the_originals_own_lite_file_cannot_write_to_it(tmp_path, m3_dir, m3_encoder):
    # F3 through a uri the user names: the copy is pointed at the Milvus Lite file inside the
    # original (whose collections carried no owner, so the copy's writer purged the
    # original's newer rows and wrote its own into the original's collections).
    import shutil

    orig, copy = tmp_path / "orig", tmp_path / "copy"
    idx = HybridIndex.create(orig, _mv(m3_dir), encoder=m3_encoder)
    idx.add(docs(6))
    idx.close()
    shutil.copytree(orig, copy)
    idx = HybridIndex.load(orig, encoder=m3_encoder)
    idx.add([dict(d, id=f"n{d['id']}") for d in docs(4)])
    idx.close()
    cp = HybridIndex.load(copy, encoder=m3_encoder, milvus_uri=str(orig / "milvus.db"))
    try:
        _assert_complete(cp, [f"d{i}" for i in range(6)])   # reading it is fine
        with pytest.raises(IndexFormatError, match="another index directory"):
            cp.add([{"id": "x", "text": "written to the copy", "metadata": {}}])
    finally:
        cp.close()
    with HybridIndex.load(orig, encoder=m3_encoder) as idx:
        _assert_complete(idx, [f"d{i}" for i in range(6)] + [f"nd{i}" for i in range(4)])
    with HybridIndex.load(copy, encoder=m3_encoder) as cp:   # its own file: a writer as before
        cp.add([{"id": "x", "text": "written to the copy", "metadata": {}}])
        _assert_complete(cp, [f"d{i}" for i in range(6)] + ["x"])


def test_an_older_copy_that_passes_the_owner_check_still_cannot_write(tmp_path, m3_dir, m3_encoder, monkeypatch):
    # F3 where the directory identity cannot tell the copy apart (a backup restored on another
    # machine or container can get the original's device and inode): the collection records
    # the newest generation committed into it, and a writer whose manifest is older is refused.
    from hybridrag.stores import milvus

    monkeypatch.setattr(milvus, "directory_owner", lambda directory: "same-device-and-inode")
    orig, copy = _original_and_its_copy(tmp_path, m3_dir, m3_encoder, monkeypatch)
    with HybridIndex.load(orig, encoder=m3_encoder) as idx:
        idx.add([dict(d, id=f"n{d['id']}") for d in docs(4)])
    with HybridIndex.load(copy, encoder=m3_encoder) as cp:
        _assert_complete(cp, [f"d{i}" for i in range(6)])   # reading it is fine
        with pytest.raises(IndexFormatError, match="older copy"):
            cp.add([{"id": "x", "text": "written to the copy", "metadata": {}}])
    with HybridIndex.load(orig, encoder=m3_encoder) as idx:
        _assert_complete(idx, [f"d{i}" for i in range(6)] + [f"nd{i}" for i in range(4)])
        idx.add([{"id": "y", "text": "the original still writes", "metadata": {}}])
        _assert_complete(idx, [f"d{i}" for i in range(6)] + [f"nd{i}" for i in range(4)] + ["y"])


def test_create_overwrite_replaces_the_old_index_only_once_the_new_one_commits(tmp_path, m3_dir, m3_encoder):
    # F5: create(overwrite=True) removed the old manifest and docstore, then failed on the
    # old Milvus collections.
    from pymilvus import MilvusClient

    p = tmp_path / "i"
    idx = HybridIndex.create(p, _mv(m3_dir), encoder=m3_encoder)
    idx.add(docs(6))
    old = {s.collection for s in idx.stores.values() if hasattr(s, "collection")}
    idx.close()
    # A new pipeline that cannot be built: the old index stays whole.
    with pytest.raises(ConfigError, match=".db"):
        HybridIndex.create(p, _mv(m3_dir, uri="vectors.sqlite"), overwrite=True, encoder=m3_encoder)
    idx = HybridIndex.load(p, encoder=m3_encoder)
    _assert_complete(idx, [f"d{i}" for i in range(6)])
    idx.close()
    idx = HybridIndex.create(p, _mv(m3_dir), overwrite=True, encoder=m3_encoder)
    try:
        assert len(idx) == 0
        idx.add(docs(2))
        _assert_complete(idx, ["d0", "d1"])
        new = {s.collection for s in idx.stores.values() if hasattr(s, "collection")}
        assert not new & old
    finally:
        idx.close()
    client = MilvusClient(str(p / "milvus.db"))
    try:
        left = set(client.list_collections())
    finally:
        client.close()
    assert new <= left and not old & left  # the replaced index's collections were dropped
    again = HybridIndex.load(p, encoder=m3_encoder)
    try:
        _assert_complete(again, ["d0", "d1"])
    finally:
        again.close()


def _collections(index_dir):
    from pymilvus import MilvusClient

    client = MilvusClient(str(index_dir / "milvus.db"))
    try:
        return set(client.list_collections())
    finally:
        client.close()


@pytest.mark.parametrize("milvus", [False, True], ids=["local", "milvus"])
def test_create_overwrite_that_fails_at_its_commit_keeps_the_old_index(tmp_path, m3_dir, m3_encoder, monkeypatch,
                                                                       milvus):
    # F5: create(overwrite=True) removed the old docstore and segment files before the new
    # index's commit; a failure (or a crash) in that commit left a manifest naming missing files.
    import os

    from hybridrag.index import check_index

    p = tmp_path / "i"
    pipe = _mv(m3_dir) if milvus else m3_pipeline(m3_dir)
    idx = HybridIndex.create(p, pipe, encoder=m3_encoder)
    idx.add(docs(6))
    before = _collections(p) if milvus else None
    idx.close()
    real = os.replace

    def fail(src, dst, **kw):
        if str(dst) == str(p / "manifest.json"):
            raise OSError("injected: disk full")
        return real(src, dst, **kw)

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="injected"):
        HybridIndex.create(p, pipe, overwrite=True, encoder=m3_encoder)
    monkeypatch.undo()
    assert check_index(p) == []
    if milvus:
        assert _collections(p) == before   # the failed create's collections were dropped
    idx = HybridIndex.load(p, encoder=m3_encoder)
    try:
        _assert_complete(idx, [f"d{i}" for i in range(6)])
    finally:
        idx.close()
    idx = HybridIndex.create(p, pipe, overwrite=True, encoder=m3_encoder)   # and it can be replaced after all
    try:
        assert len(idx) == 0 and idx.docstore.count_documents() == 0
        idx.add(docs(2))
    finally:
        idx.close()
    assert check_index(p) == []
    idx = HybridIndex.load(p, encoder=m3_encoder)
    try:
        _assert_complete(idx, ["d0", "d1"])
    finally:
        idx.close()


def test_milvus_gc_drops_only_the_collections_a_killed_create_left(tmp_path, m3_dir, m3_encoder, capsys):
    # A create(overwrite=True) killed before its commit leaves its new, empty collections named by
    # no manifest. `hybridrag milvus-gc` drops those: made by this directory (its created log),
    # owned by it, never committed; a stray a commit once published is only listed (it may be the
    # newer data of a backup restored in place) unless --committed; a collection of the same
    # shape the directory never made is not touched.
    from pymilvus import MilvusClient

    from hybridrag.cli import main
    from hybridrag.stores.milvus import milvus_stores

    p = tmp_path / "i"
    idx = HybridIndex.create(p, _mv(m3_dir), encoder=m3_encoder)
    idx.add(docs(6))
    used = {s.collection for s in idx.stores.values() if hasattr(s, "collection")}
    cfg = idx.pipeline.milvus
    idx.close()
    killed = milvus_stores(cfg, m3_encoder.dim, p)   # what a killed create made, then nothing
    once = milvus_stores(cfg, m3_encoder.dim, p)     # as if a commit had published it
    for store in once.values():
        store._client.alter_collection_properties(store.collection, properties={"hybridrag.committed": "3"})
    for group in (killed, once):
        for store in group.values():
            store.close()
    client = MilvusClient(str(p / "milvus.db"))
    try:
        client.create_collection("c_0123456789ab_dense", dimension=4)   # not in the created log
    finally:
        client.close()
    strays = {s.collection for s in killed.values()} | {s.collection for s in once.values()}
    assert main(["milvus-gc", str(p), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}: 0 rows" in out for name in strays) and "4 stray Milvus collections, 0 dropped" in out
    assert _collections(p) == used | strays | {"c_0123456789ab_dense"}
    assert main(["milvus-gc", str(p)]) == 0
    out = capsys.readouterr().out
    assert "committed generation 3: kept (pass --committed to drop it)" in out and "2 dropped" in out
    assert _collections(p) == used | {once["dense"].collection, once["sparse"].collection, "c_0123456789ab_dense"}
    assert main(["milvus-gc", str(p), "--committed"]) == 0
    assert _collections(p) == used | {"c_0123456789ab_dense"}
    again = HybridIndex.load(p, encoder=m3_encoder)
    try:
        _assert_complete(again, [f"d{i}" for i in range(6)])
    finally:
        again.close()


def test_stats_and_info_report_what_milvus_holds(tmp_path, m3_dir, m3_encoder, capsys):
    from hybridrag.cli import main

    p = tmp_path / "i"
    idx = HybridIndex.create(p, _mv(m3_dir), encoder=m3_encoder)
    try:
        idx.add(docs(6))
        n = len(idx.stores["dense"])
        st = idx.stats()["milvus"]
        dense, sparse = st["dense"], st["sparse"]
        assert n > 0 and dense["rows"] == sparse["rows"] == dense["rows_stored"] == sparse["rows_stored"] == n
        assert dense["vector_bytes"] == n * m3_encoder.dim * 4 and sparse["vector_bytes"] is None
        assert dense["where"] == sparse["where"] == "milvus.db"
        # Milvus Lite: each collection's files, counted from its folder
        folder = p / "milvus.db" / "collections" / sparse["collection"]
        assert sparse["disk_bytes"] == sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) > 0
        idx.delete(ids=["d0"], commit=False)   # hidden from searches, still stored until purged
        after = idx.stats()["milvus"]["dense"]
        assert after["rows"] == len(idx.stores["dense"]) < n and after["rows_stored"] == n
    finally:
        idx.close()
    assert main(["info", str(p)]) == 0
    out = capsys.readouterr().out
    assert f"dense     in Milvus (milvus.db): collection {dense['collection']}, {n} rows ({n} stored, " in out
    assert f"sparse    in Milvus (milvus.db): collection {sparse['collection']}, {n} rows ({n} stored, " in out
    assert " MB on disk)" in out


def _tamper(path, mutate):
    """Edit an index's Milvus store files as an attacker with write access would, keeping
    the manifest's checksums valid."""
    import json

    from hybridrag.storage.manifest import MANIFEST
    from hybridrag.storage.manifest import manifest_digest as _manifest_digest
    from hybridrag.storage.manifest import manifest_text as _manifest_text
    from hybridrag.storage.manifest import sha256_file as _sha256

    m = json.loads((path / MANIFEST).read_text())
    for mode in ("dense", "sparse"):
        f = path / m["remote"][mode]["files"]["milvus"]
        doc = json.loads(f.read_text())
        mutate(doc)
        f.write_text(json.dumps(doc))
        m["checksums"][f.name] = _sha256(f)
    m["manifest_sha256"] = _manifest_digest(m)
    (path / MANIFEST).write_text(_manifest_text(m))


def test_milvus_token_is_not_written_into_the_index(tmp_path, m3_dir, m3_encoder):
    p = tmp_path / "i"
    idx = HybridIndex.create(p, _mv(m3_dir, token="s3cret-token"), encoder=m3_encoder)
    idx.add(docs(3))
    idx.close()
    assert "s3cret-token" not in "".join(f.read_text(errors="replace") for f in p.iterdir() if f.is_file())


def test_connection_settings_are_not_read_from_the_index_directory(tmp_path, m3_dir, m3_encoder):
    # F8: a uri stored in the index directory was followed on load (files created anywhere,
    # any server contacted with $MILVUS_TOKEN).
    p = tmp_path / "i"
    idx = HybridIndex.create(p, _mv(m3_dir), encoder=m3_encoder)
    idx.add(docs(3))
    idx.close()
    elsewhere = tmp_path / "elsewhere"
    _tamper(p, lambda doc: doc.update(uri=str(elsewhere / "x.db")))
    with pytest.raises(ConfigError, match="milvus_uri=.*HYBRIDRAG_MILVUS_URI"):
        HybridIndex.load(p, encoder=m3_encoder)
    _tamper(p, lambda doc: doc.update(uri="../elsewhere/x.db"))
    with pytest.raises(ConfigError, match="outside the index directory"):
        HybridIndex.load(p, encoder=m3_encoder)
    assert not elsewhere.exists()
    # The user names where Milvus is: then it is followed.
    idx = HybridIndex.load(p, encoder=m3_encoder, milvus_uri=str(p / "milvus.db"))
    try:
        _assert_complete(idx, ["d0", "d1", "d2"])
    finally:
        idx.close()


def test_index_on_a_lite_file_outside_its_directory_needs_the_uri_at_load(tmp_path, m3_dir, m3_encoder,
                                                                           monkeypatch):
    lite = str(tmp_path / "vectors" / "milvus.db")
    p = tmp_path / "i"
    HybridIndex.create(p, _mv(m3_dir, uri=lite), encoder=m3_encoder).close()
    with pytest.raises(ConfigError, match="outside the index directory"):
        HybridIndex.load(p, encoder=m3_encoder)
    HybridIndex.load(p, encoder=m3_encoder, milvus_uri=lite).close()
    monkeypatch.setenv("HYBRIDRAG_MILVUS_URI", lite)
    HybridIndex.load(p, encoder=m3_encoder).close()


def test_commit_that_fails_before_the_manifest_swap_can_be_retried(tmp_path, m3_dir, m3_encoder, monkeypatch):
    # The stores were saved but the manifest swap failed: readers keep the last commit (the
    # uncommitted delete included), and a later commit publishes everything once.
    import os

    idx = HybridIndex.create(tmp_path / "i", _mv(m3_dir), encoder=m3_encoder)
    idx.merge_policy = None   # a merge is a commit of its own: it would purge d1's row below at once
    try:
        idx.add(docs(6))
        idx.delete(["d0"], commit=False)
        idx.add([{"id": "n1", "text": "first uncommitted document", "metadata": {}}], commit=False)
        real = os.replace

        def fail(src, dst, **kw):
            if str(dst) == str(tmp_path / "i" / "manifest.json"):
                raise OSError("injected: disk full")
            real(src, dst, **kw)

        monkeypatch.setattr(os, "replace", fail)
        with pytest.raises(OSError, match="injected"):
            idx.commit()
        monkeypatch.undo()
        r = HybridIndex.load(tmp_path / "i", encoder=m3_encoder)
        try:
            _assert_complete(r, [f"d{i}" for i in range(6)])
        finally:
            r.close()
        idx.add([{"id": "n2", "text": "second uncommitted document", "metadata": {}}], commit=False)
        idx.commit()
        want = [f"d{i}" for i in range(1, 6)] + ["n1", "n2"]
        _assert_complete(idx, want)
        idx.delete(["d1"])  # the next commit purges d0's rows from Milvus
        want.remove("d1")
        _assert_complete(idx, want)
    finally:
        idx.close()
    again = HybridIndex.load(tmp_path / "i", encoder=m3_encoder)
    try:
        _assert_complete(again, want)
        d0 = again.stores["dense"]
        assert d0._live_count() == len(again) + 1  # d1's row waits for the next commit's purge
    finally:
        again.close()


# --------------------------------------------------------------------------- a real Milvus server


def _on_server(m3_dir, uri):
    # Milvus 2.3 (the server the tests can start) has no sparse vectors: dense in Milvus,
    # lexical weights in the local inverted index.
    return m3_pipeline(m3_dir, milvus={"enabled": True, "uri": uri, "collection": "srv"},
                       sparse={"backend": "inverted"})


def _assert_complete_on_reload(path, encoder, uri, want) -> None:
    """A fresh load of ``path`` holds exactly ``want``, every one findable."""
    again = HybridIndex.load(path, encoder=encoder, milvus_uri=uri)
    try:
        _assert_complete(again, want)
    finally:
        again.close()


def test_server_reader_process_sees_the_committed_state_and_deletes_nothing(tmp_path, m3_dir, m3_encoder,
                                                                           milvus_server):
    # F1 against a real server, reader and writer in two processes.
    from _milvus_server import peer

    p = tmp_path / "i"
    first = [f"d{i}" for i in range(8)]
    w = HybridIndex.create(p, _on_server(m3_dir, milvus_server), encoder=m3_encoder)
    try:
        assert type(w.stores["dense"]).__name__ == "MilvusDenseStore"
        w.add(docs(8))
        w.add([dict(d, id=f"n{d['id']}") for d in docs(8)], commit=False)  # in Milvus, not committed
        got = peer("read", p, milvus_server)
        assert got == {"docs": sorted(first), "rows": 8, "complete": True}
        w.commit()
        everything = first + [f"nd{i}" for i in range(8)]
        _assert_complete(w, everything)
    finally:
        w.close()
    _assert_complete_on_reload(p, m3_encoder, milvus_server, everything)


def test_server_copy_opened_by_another_process_never_changes_the_original(tmp_path, m3_dir, m3_encoder,
                                                                           milvus_server):
    # F3 against a real server: a backup copy is opened (and written to) by another process
    # while the original's writer has committed and uncommitted rows.
    import shutil

    from _milvus_server import peer

    orig, copy = tmp_path / "orig", tmp_path / "copy"
    idx = HybridIndex.create(orig, _on_server(m3_dir, milvus_server), encoder=m3_encoder)
    idx.add(docs(6))
    idx.close()
    shutil.copytree(orig, copy)
    idx = HybridIndex.load(orig, encoder=m3_encoder, milvus_uri=milvus_server)
    try:
        idx.add([dict(d, id=f"n{d['id']}") for d in docs(4)])
        idx.add([{"id": "pending", "text": "not committed yet", "metadata": {}}], commit=False)
        got = peer("write", copy, milvus_server)
        assert {k: got[k] for k in ("docs", "rows", "complete")} == {"docs": [f"d{i}" for i in range(6)],
                                                                     "rows": 6, "complete": True}
        assert got["error"] == "IndexFormatError" and "another index directory" in got["message"]
        idx.commit()
        everything = [f"d{i}" for i in range(6)] + [f"nd{i}" for i in range(4)] + ["pending"]
        _assert_complete(idx, everything)
    finally:
        idx.close()
    _assert_complete_on_reload(orig, m3_encoder, milvus_server, everything)
