"""The engine on the Milvus backend (Milvus Lite, embedded): the same hits as the local
stores on the same data and settings, and writes/reloads that stay consistent."""
from __future__ import annotations

import numpy as np
import pytest

from hybridrag.index import HybridIndex
from test_index import QUERIES, docs, m3_pipeline


def _pair(tmp_path, m3_dir):
    local = HybridIndex.create(tmp_path / "local", m3_pipeline(m3_dir, dense={"depth": 6}, sparse={"depth": 6}))
    remote = HybridIndex.create(tmp_path / "remote", m3_pipeline(
        m3_dir, dense={"depth": 6}, sparse={"depth": 6}, milvus={"enabled": True, "collection": "t"}),
        encoder=local.encoder)
    return local, remote


def _top(idx, q, **kw):
    return [(h.chunk_id, round(h.score, 5)) for h in idx.search(q, k=10, **kw)]


def test_milvus_top10_equals_local(tmp_path, m3_dir):
    local, remote = _pair(tmp_path, m3_dir)
    try:
        assert type(remote.stores["dense"]).__name__ == "MilvusDenseStore"
        assert type(remote.stores["sparse"]).__name__ == "MilvusSparseStore"
        for idx in (local, remote):
            idx.add(docs(20))
        for q in QUERIES:
            assert _top(remote, q) == _top(local, q)
            assert _top(remote, q, filters={"group": "odd"}) == _top(local, q, filters={"group": "odd"})
        # upsert and delete reach Milvus and the docstore alike
        changed = [{"id": "d3", "text": "Milvus holds dense and sparse vectors.", "metadata": {"group": "odd"}}]
        for idx in (local, remote):
            idx.upsert(changed)
            idx.delete(ids=["d4", "d5"])
        assert len(remote.stores["dense"]) == len(remote.stores["sparse"]) == len(remote) == len(local)
        for q in QUERIES + ["Milvus vectors"]:
            assert _top(remote, q) == _top(local, q)
            assert not {"d4", "d5"} & {h.doc_id for h in remote.search(q, k=10)}
    finally:
        local.close()
        remote.close()
    # Milvus Lite allows one client per data file: the reload happens after close().
    again = HybridIndex.load(tmp_path / "remote")
    ref = HybridIndex.load(tmp_path / "local")
    try:
        for q in QUERIES:
            assert _top(again, q) == _top(ref, q)
    finally:
        again.close()
        ref.close()
