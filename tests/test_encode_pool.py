"""Encoding in several processes feeding one writer (``HybridIndex.encoding_pool``,
``hybridrag.encoders.pool``, ``hybridrag ingest --encode-devices``): the rows stored are those
of the in-process encoder, errors reach the writer as themselves, a dead process raises
``EncoderPoolError`` and the write rolls back. Processes start with ``spawn`` (seconds each):
the tests share few pools."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from _ranking import assert_same_ranking
from hybridrag.config import PipelineConfig
from hybridrag.encoders.pool import EncoderPool
from hybridrag.errors import ConfigError, EncoderPoolError, HybridRAGError
from hybridrag.index import HybridIndex
from test_index import QUERIES, docs, m3_pipeline


def _top(idx, q):
    return [(h.chunk_id, h.score) for h in idx.search(q, k=10)]


def test_a_pool_stores_what_one_encoder_stores_and_a_dead_process_rolls_the_write_back(tmp_path, m3_dir):
    one = HybridIndex.create(tmp_path / "one", m3_pipeline(m3_dir))
    two = HybridIndex.create(tmp_path / "two", m3_pipeline(m3_dir))
    try:
        one.add(docs(13))
        with two.encoding_pool(["cpu", "cpu"]) as pool:
            assert two.encoder is pool
            two.add(docs(13))   # 13 texts per batch of the write path: split 7 + 6
            texts = [d["text"] for d in docs(5)]
            mine = pool.encode(texts, max_length=128, dense=True, sparse=True, colbert=True)
            ref = one.encoder.encode(texts, max_length=128, dense=True, sparse=True, colbert=True)
            np.testing.assert_allclose(mine.dense, ref.dense, atol=1e-5)
            for a, b in zip(mine.sparse, ref.sparse):
                assert a.keys() == b.keys()
                np.testing.assert_allclose(list(a.values()), [b[t] for t in a], atol=1e-5)
            for a, b in zip(mine.colbert, ref.colbert):
                np.testing.assert_allclose(a, b, atol=1e-5)
            assert pool.dim == one.encoder.dim   # anything but encode(): the in-process encoder
            # a process that dies: the next write raises and rolls back; the index keeps its rows
            os.kill(next(iter(pool._pools[0]._processes)), signal.SIGKILL)
            with pytest.raises(EncoderPoolError, match="died"):
                two.add([{"id": "late", "text": "written while an encoder process is gone"}])
        assert two.encoder is not pool   # the context gave the index its own encoder back
        assert len(two) == len(one) and "late" not in {h.doc_id for h in two.search("encoder process gone", k=20)}
        for q in QUERIES:
            assert_same_ranking(_top(two, q), _top(one, q), tol=1e-5)
        two.add([{"id": "late", "text": "written while an encoder process is gone"}])   # in-process again
        assert "late" in {h.doc_id for h in two.search("encoder process gone", k=20)}
    finally:
        one.close()
        two.close()


def test_pool_errors_are_clear(tmp_path, m3_dir):
    pipe = PipelineConfig.from_dict(m3_pipeline(m3_dir))
    for bad in ([], "cpu", [""], [1]):
        with pytest.raises(ConfigError, match="devices"):
            EncoderPool(pipe, bad)
    idx = HybridIndex.create(tmp_path / "i", m3_pipeline(m3_dir))
    try:
        for bad in (0, -2):
            with pytest.raises(ConfigError, match=f"at least one process, got {bad}"), idx.encoding_pool(bad):
                pass
    finally:
        idx.close()
    bm25 = PipelineConfig.from_dict({"name": "bm25", "encoder": {"kind": "none"}, "dense": {"enabled": False},
                                     "sparse": {"enabled": False}, "colbert": {"enabled": False},
                                     "bm25": {"enabled": True}, "fusion": {"weights": {"bm25": 1.0}}})
    with pytest.raises(ConfigError, match="no neural encoder"):
        EncoderPool(bm25, ["cpu"])
    # the model cannot be loaded: the process's error reaches the writer as itself
    gone = PipelineConfig.from_dict(m3_pipeline(tmp_path / "no-model"))
    with pytest.raises(HybridRAGError) as in_process:
        from hybridrag.components import load_encoder

        load_encoder(gone, "cpu", None)
    with EncoderPool(gone, ["cpu"]) as pool, pytest.raises(type(in_process.value)):
        pool.encode(["text"], max_length=16)
    with pytest.raises(EncoderPoolError, match="closed"):
        pool.encode(["text"])


def test_ingest_encode_devices(tmp_path, m3_dir):
    import json

    from hybridrag.cli import main

    toml = []
    for section, values in m3_pipeline(m3_dir).items():
        if not isinstance(values, dict):
            toml.insert(0, f"{section} = {json.dumps(values)}")
            continue
        toml.append(f"[{section}]")
        for key, v in values.items():
            toml.append(f"{key} = " + ("{" + ", ".join(f"{a} = {b}" for a, b in v.items()) + "}"
                                       if isinstance(v, dict) else json.dumps(v)))
    (tmp_path / "p.toml").write_text("\n".join(toml) + "\n")
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs(9)))
    for name, extra in (("one", []), ("two", ["--encode-devices", "cpu,cpu"])):
        assert main(["ingest", str(data), "--index", str(tmp_path / name), "--pipeline", str(tmp_path / "p.toml"),
                     "-q", *extra]) == 0
    one, two = HybridIndex.load(tmp_path / "one"), HybridIndex.load(tmp_path / "two")
    try:
        assert len(one) == len(two) > 0
        for q in QUERIES:
            assert_same_ranking(_top(two, q), _top(one, q), tol=1e-5)
    finally:
        one.close()
        two.close()
