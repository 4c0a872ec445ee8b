"""The CPU path and the query cache (hybridrag/encoders/base.py: ``quantize_int8``,
``QueryCache``; used by the M3 and dense encoders and the cross-encoder reranker).

int8 is checked against fp32: on the tiny models that its Linear layers were replaced and
the outputs stay close; on the real all-MiniLM-L6-v2 (``realweights``) that embeddings,
scores and top-10 rankings stay close, within bounds measured on this model (stated below).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridrag.config import PipelineConfig
from hybridrag.encoders import DenseEncoder, M3Encoder
from hybridrag.encoders.base import QueryCache, quantize_int8
from hybridrag.errors import ConfigError
from hybridrag.index import HybridIndex
from hybridrag.rerankers.cross_encoder import CrossEncoderReranker
from test_index import QUERIES, TEXTS, docs, m3_pipeline
from test_reranker import _scale_weights


def _linears(model: torch.nn.Module) -> tuple[int, int]:
    """(float nn.Linear modules, dynamically quantized int8 Linear modules) inside ``model``."""
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    mods = list(model.modules())
    return (sum(type(m) is torch.nn.Linear for m in mods), sum(isinstance(m, QLinear) for m in mods))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def sharp_reranker(tmp_path_factory: pytest.TempPathFactory, reranker_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("sharp_rr") / "model"
    shutil.copytree(reranker_dir, folder)
    _scale_weights(folder, seed=5)  # spread-out scores, so closeness means something
    return folder


# ----------------------------------------------------------------------------- int8, tiny models


@pytest.mark.parametrize("kind", ["m3", "dense"])
def test_int8_encoders_replace_every_body_linear_and_stay_close(kind, m3_dir, bert_dir):
    cls, folder = (M3Encoder, m3_dir) if kind == "m3" else (DenseEncoder, bert_dir)
    ref = cls.from_pretrained(folder, device="cpu")
    q8 = cls.from_pretrained(folder, dtype="int8")  # device None -> the CPU for int8
    n_float = _linears(ref.model)[0]
    assert n_float > 0 and _linears(q8.model) == (0, n_float)
    assert (q8.int8, q8.device, q8.config()["dtype"]) == (True, "cpu", "int8")
    assert not ref.int8
    a, b = ref.encode(TEXTS), q8.encode(TEXTS)
    assert not np.array_equal(a.dense, b.dense)  # int8 did change the computation
    assert _cos(a.dense, b.dense).min() > 0.999


def test_int8_reranker_replaces_linears_and_scores_stay_close(sharp_reranker):
    ref = CrossEncoderReranker.from_pretrained(sharp_reranker, device="cpu")
    q8 = CrossEncoderReranker.from_pretrained(sharp_reranker, dtype="int8")
    n_float = _linears(ref.model)[0]
    assert n_float > 0 and _linears(q8.model) == (0, n_float)
    assert q8.int8 and "int8" in repr(q8)
    pairs = [(q, t) for q in QUERIES for t in TEXTS]
    a, b = ref.compute_score(pairs), q8.compute_score(pairs)
    assert np.ptp(a) > 0.5
    # Measured 0.14 max on these 60 pairs (scores spread over 1.0): bound at a quarter of the spread.
    assert 0 < np.abs(a - b).max() < 0.25 * np.ptp(a)


def test_quantize_int8_leaves_its_input_alone():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    q8 = quantize_int8(model)
    assert _linears(model) == (2, 0) and _linears(q8) == (0, 2)
    x = torch.randn(5, 64)
    with torch.no_grad():
        np.testing.assert_allclose(q8(x).numpy(), model(x).numpy(), atol=0.05)


def test_int8_on_cuda_is_a_config_error(m3_dir, bert_dir, reranker_dir):
    with pytest.raises(ConfigError, match="int8.*CPU only"):
        M3Encoder.from_pretrained(m3_dir, device="cuda", dtype="int8")
    with pytest.raises(ConfigError, match="int8.*CPU only"):
        DenseEncoder.from_pretrained(bert_dir, device="cuda:0", dtype="int8")
    with pytest.raises(ConfigError, match="int8.*CPU only"):
        CrossEncoderReranker.from_pretrained(reranker_dir, device="cuda", dtype="int8")
    with pytest.raises(ConfigError, match="rerank.dtype = 'int8'"):
        PipelineConfig.from_dict({"encoder": {"device": "cuda"}, "rerank": {"dtype": "int8"}})
    with pytest.raises(ConfigError, match="encoder.dtype"):
        PipelineConfig.from_dict({"encoder": {"dtype": "int4"}})
    with pytest.raises(ConfigError, match="query_cache"):
        PipelineConfig.from_dict({"encoder": {"query_cache": -1}})


def test_index_persists_int8_and_query_cache_settings(tmp_path, m3_dir, sharp_reranker):
    pipe = m3_pipeline(m3_dir, encoder={"dtype": "int8", "query_cache": 7},
                       rerank={"enabled": True, "model": str(sharp_reranker), "k": 4, "max_length": 128,
                               "dtype": "int8"})
    idx = HybridIndex.create(tmp_path / "i", pipe)
    idx.add(docs())
    first = idx.search("vitamin D bone", k=3)
    idx.close()
    idx = HybridIndex.load(tmp_path / "i")
    assert idx.pipeline.encoder.dtype == "int8" and idx.pipeline.rerank.dtype == "int8"
    assert idx.encoder.int8 and idx.encoder.query_cache.size == 7 and idx.reranker.int8
    assert _linears(idx.encoder.model)[0] == 0 and _linears(idx.reranker.model)[0] == 0
    # the manifest records the encoder's settings (encoder.config()) beside the pipeline
    assert _manifest(tmp_path / "i")["models"]["encoder"]["config"]["dtype"] == "int8"
    again = idx.search("vitamin D bone", k=3)
    assert [(h.chunk_id, h.score) for h in again] == [(h.chunk_id, h.score) for h in first]
    idx.close()


def test_dense_index_keeps_int8(tmp_path, bert_dir):
    pipe = {"name": "tiny-dense-int8",
            "encoder": {"kind": "dense", "model": str(bert_dir), "max_length": 128, "dtype": "int8"},
            "chunking": {"max_tokens": 100, "overlap": 10}, "sparse": {"enabled": False},
            "colbert": {"enabled": False}, "fusion": {"method": "weighted", "weights": {"dense": 1.0}}}
    with HybridIndex.create(tmp_path / "d", pipe) as idx:
        idx.add(docs())
        first = idx.search("vitamin D bone", k=3)
    with HybridIndex.load(tmp_path / "d") as idx:
        assert idx.encoder.int8 and _linears(idx.encoder.model) == (0, _linears(
            DenseEncoder.from_pretrained(bert_dir, device="cpu").model)[0])
        assert [(h.chunk_id, h.score) for h in idx.search("vitamin D bone", k=3)] == \
            [(h.chunk_id, h.score) for h in first]
    assert _manifest(tmp_path / "d")["models"]["encoder"]["config"]["dtype"] == "int8"


def _manifest(path: Path) -> dict:
    import json

    return json.loads((path / "manifest.json").read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- int8, real weights


@pytest.mark.realweights
def test_int8_minilm_stays_close_to_fp32(minilm_dir):
    from test_encoders_dense import TEXTS as MORE

    corpus = TEXTS + MORE
    ref = DenseEncoder.from_pretrained(minilm_dir, device="cpu")
    q8 = DenseEncoder.from_pretrained(minilm_dir, dtype="int8")
    a, b = ref.encode(corpus).dense, q8.encode(corpus).dense
    cos = _cos(a, b)
    # Measured on these 22 texts (per-channel int8): min 0.918 (the empty string), mean 0.962.
    assert cos.min() > 0.90 and cos.mean() > 0.95
    qa, qb = ref.encode_queries(QUERIES).dense, q8.encode_queries(QUERIES).dense
    sa, sb = qa @ a.T, qb @ b.T
    assert np.abs(sa - sb).max() < 0.15  # cosine scores in [-1, 1]; measured 0.076
    top_a, top_b = np.argsort(-sa, axis=1)[:, :10], np.argsort(-sb, axis=1)[:, :10]
    overlap = [len(set(x) & set(y)) for x, y in zip(top_a, top_b)]
    assert min(overlap) >= 8 and np.mean(overlap) >= 9  # measured [9, 9, 10, 10, 8]
    assert (top_a[:, 0] == top_b[:, 0]).all()


# ----------------------------------------------------------------------------- query cache


def _count_rows(model: torch.nn.Module) -> list[int]:
    """Rows each forward pass of ``model`` gets (a list that grows as it is called)."""
    rows: list[int] = []
    model.register_forward_pre_hook(lambda mod, args, kw: rows.append(int(kw["input_ids"].shape[0])),
                                    with_kwargs=True)
    return rows


@pytest.mark.parametrize("kind", ["m3", "dense"])
def test_repeated_queries_are_not_re_encoded(kind, m3_dir, bert_dir):
    cls, folder = (M3Encoder, m3_dir) if kind == "m3" else (DenseEncoder, bert_dir)
    flags = {"colbert": True, **({"sparse": True} if kind == "m3" else {})}
    enc = cls.from_pretrained(folder, device="cpu")
    uncached = cls.from_pretrained(folder, device="cpu", query_cache=0)
    rows = _count_rows(enc.model)
    first = enc.encode_queries(QUERIES, **flags)
    assert sum(rows) == len(QUERIES)
    again = enc.encode_queries(QUERIES[::-1] + [QUERIES[0]], **flags)
    assert sum(rows) == len(QUERIES)  # all five came from the cache
    assert enc.query_cache.hits == len(QUERIES) + 1
    np.testing.assert_array_equal(again.dense[::-1][1:], first.dense)
    np.testing.assert_array_equal(again.colbert[-1], first.colbert[0])
    if kind == "m3":
        assert again.sparse[-1] == first.sparse[0]
    # Identical to an encoder without a cache.
    plain = uncached.encode_queries(QUERIES, **flags)
    np.testing.assert_array_equal(plain.dense, first.dense)
    # Other settings are other entries: a different max_length is encoded anew.
    enc.encode_queries(QUERIES[:1], max_length=8, **flags)
    assert sum(rows) == len(QUERIES) + 1
    # A repeat inside one batch is encoded once.
    enc.encode_queries(["new one", "new one"], **flags)
    assert sum(rows) == len(QUERIES) + 2


def test_query_cache_off_encodes_every_time(bert_dir):
    enc = DenseEncoder.from_pretrained(bert_dir, device="cpu", query_cache=0)
    rows = _count_rows(enc.model)
    enc.encode_queries(QUERIES)
    enc.encode_queries(QUERIES)
    assert sum(rows) == 2 * len(QUERIES) and len(enc.query_cache) == 0
    with pytest.raises(ValueError, match="query_cache"):
        DenseEncoder.from_pretrained(bert_dir, device="cpu", query_cache=-1)


def test_query_cache_evicts_least_recently_used(bert_dir):
    enc = DenseEncoder.from_pretrained(bert_dir, device="cpu", query_cache=2)
    rows = _count_rows(enc.model)
    enc.encode_queries(["a"])
    enc.encode_queries(["b"])
    enc.encode_queries(["a"])  # hit: "a" is now the most recent
    enc.encode_queries(["c"])  # evicts "b"
    assert len(enc.query_cache) == 2 and sum(rows) == 3
    enc.encode_queries(["a", "c"])
    assert sum(rows) == 3
    enc.encode_queries(["b"])
    assert sum(rows) == 4 and len(enc.query_cache) == 2
    for i in range(20):
        enc.encode_queries([f"q{i}"])
    assert len(enc.query_cache) == 2


def test_query_cache_byte_bound():
    from hybridrag.encoders.base import EncodeOutput

    cache = QueryCache(100, max_bytes=3 * 4 * 16)  # room for three 16-float rows

    def encode(texts):
        return EncodeOutput(dense=np.ones((len(texts), 16), dtype=np.float32))

    for i in range(10):
        cache.encode([str(i)], (), (True, False, False), encode)
    assert len(cache) == 3


def test_cached_results_cannot_be_corrupted_by_the_caller(m3_dir):
    enc = M3Encoder.from_pretrained(m3_dir, device="cpu")
    first = enc.encode_queries(QUERIES[:2])
    keep = (first.dense.copy(), [c.copy() for c in first.colbert], [dict(s) for s in first.sparse])
    for out in (first, enc.encode_queries(QUERIES[:2])):  # a miss's and a hit's results
        out.dense[:] = 7.0
        out.colbert[0][:] = 7.0
        out.sparse[0].clear()
    again = enc.encode_queries(QUERIES[:2])
    np.testing.assert_array_equal(again.dense, keep[0])
    np.testing.assert_array_equal(again.colbert[0], keep[1][0])
    assert again.sparse[0] == keep[2][0]
