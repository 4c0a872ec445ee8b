"""``runtime = "onnx"`` (hybridrag/encoders/onnx.py): the M3 and dense encoders and the
cross-encoder run in ONNX Runtime, checked against the same models run by torch.

fp32 must match torch within float32 rounding, at sequence lengths and batch shapes other
than the one the export traced (a traced shape baked into the graph would break this);
int8 (ONNX Runtime's dynamic quantization) must stay close to fp32 and really be quantized.
The cache: a second load reads the export, nothing is written with the cache off, a cache that
cannot be written is a ConfigError naming it. On the real all-MiniLM-L6-v2 (``realweights``)
fp32 matches torch and int8 keeps the top-10.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from hybridrag.config import PipelineConfig
from hybridrag.encoders import DenseEncoder, M3Encoder
from hybridrag.encoders.onnx import OnnxModel, check_runtime, onnx_cache_dir
from hybridrag.errors import ConfigError
from hybridrag.index import HybridIndex
from hybridrag.rerankers.cross_encoder import CrossEncoderReranker
from test_index import QUERIES, TEXTS, docs, m3_pipeline

# Lengths from 1 to ~60 tokens (the export traced 2 x 8), batched with padding and alone.
LONG = " ".join(TEXTS)[:300]
SAMPLES = ["x", "vitamin D and bone health", LONG, TEXTS[0], TEXTS[1] + " " + TEXTS[2]]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: each tiny model is exported once."""
    return tmp_path_factory.mktemp("onnx-cache")


def _entries(cache: Path) -> dict[str, list[str]]:
    return {p.name: sorted(f.name for f in p.iterdir()) for p in cache.iterdir()} if cache.exists() else {}


def _ops(model: OnnxModel) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(model.path), load_external_data=False).graph.node}

# ----------------------------------------------------------------------------- fp32 parity


def test_m3_onnx_matches_torch_in_every_output(m3_dir, onnx_cache):
    ref = M3Encoder.from_pretrained(m3_dir, device="cpu")
    ox = M3Encoder.from_pretrained(m3_dir, runtime="onnx", onnx_cache=onnx_cache)
    assert isinstance(ox.model, OnnxModel) and ox.runtime == "onnx" and ox.device == "cpu"
    for texts in (SAMPLES, SAMPLES[2:3], SAMPLES[:1]):
        a = ref.encode(texts, dense=True, sparse=True, colbert=True)
        b = ox.encode(texts, dense=True, sparse=True, colbert=True)
        assert np.abs(a.dense - b.dense).max() < 1e-5
        for x, y in zip(a.colbert, b.colbert):
            assert x.shape == y.shape and np.abs(x - y).max() < 1e-5
        for x, y in zip(a.sparse, b.sparse):
            assert x.keys() == y.keys() and max((abs(x[k] - y[k]) for k in x), default=0.0) < 1e-5
    assert ox.config()["runtime"] == "onnx" and ref.config()["runtime"] == "torch"


def test_dense_and_reranker_onnx_match_torch(bert_dir, reranker_dir, onnx_cache):
    ref = DenseEncoder.from_pretrained(bert_dir, device="cpu")
    ox = DenseEncoder.from_pretrained(bert_dir, runtime="onnx", onnx_cache=onnx_cache)
    assert isinstance(ox.model, OnnxModel)
    for texts in (SAMPLES, SAMPLES[2:3]):
        assert np.abs(ref.encode(texts).dense - ox.encode(texts).dense).max() < 1e-5
    assert np.abs(ref.encode_queries(QUERIES).dense - ox.encode_queries(QUERIES).dense).max() < 1e-5

    r_ref = CrossEncoderReranker.from_pretrained(reranker_dir, device="cpu")
    r_ox = CrossEncoderReranker.from_pretrained(reranker_dir, runtime="onnx", onnx_cache=onnx_cache)
    assert isinstance(r_ox.model, OnnxModel) and r_ox.runtime == "onnx"
    pairs = [(q, t) for q in QUERIES[:2] for t in SAMPLES]
    a, b = r_ref.compute_score(pairs), r_ox.compute_score(pairs)
    assert a.shape == b.shape == (len(pairs),) and np.abs(a - b).max() < 1e-5
    assert np.abs(r_ref.compute_score(pairs, batch_size=3) - r_ox.compute_score(pairs, batch_size=3)).max() < 1e-5


# ----------------------------------------------------------------------------- int8


def test_int8_is_quantized_by_onnx_runtime_and_stays_close(m3_dir, reranker_dir, onnx_cache):
    ref = M3Encoder.from_pretrained(m3_dir, device="cpu")
    q8 = M3Encoder.from_pretrained(m3_dir, dtype="int8", runtime="onnx", onnx_cache=onnx_cache)
    assert q8.int8 and isinstance(q8.model, OnnxModel)
    ops = _ops(q8.model)
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops, ops
    a, b = ref.encode(SAMPLES).dense, q8.encode(SAMPLES).dense
    cos = (a * b).sum(1)  # both L2-normalised
    assert cos.min() > 0.98, cos  # tiny random model: measured >= 0.999
    assert q8.model.path.name == "model.int8.onnx"
    assert q8.model.path.stat().st_size < (q8.model.path.parent / "model.onnx").stat().st_size

    r_ref = CrossEncoderReranker.from_pretrained(reranker_dir, device="cpu")
    r_q8 = CrossEncoderReranker.from_pretrained(reranker_dir, dtype="int8", runtime="onnx", onnx_cache=onnx_cache)
    pairs = [(QUERIES[0], t) for t in SAMPLES]
    assert np.abs(r_ref.compute_score(pairs) - r_q8.compute_score(pairs)).max() < 0.01


# ----------------------------------------------------------------------------- cache


def test_a_second_load_reads_the_cache_and_the_cache_can_be_off(bert_dir, tmp_path, monkeypatch):
    cache = tmp_path / "c"
    first = DenseEncoder.from_pretrained(bert_dir, runtime="onnx", onnx_cache=cache)
    assert first.model.source == "export"
    files = _entries(cache)
    assert len(files) == 1 and list(files.values())[0] == ["model.onnx"]
    stamp = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
    second = DenseEncoder.from_pretrained(bert_dir, runtime="onnx", onnx_cache=cache)
    assert second.model.source == "cache"
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == stamp  # nothing rewritten
    assert np.array_equal(first.encode(SAMPLES).dense, second.encode(SAMPLES).dense)
    # a build another process left half done is not read, and is not in the way
    (cache / ".building-x").mkdir()
    (cache / ".building-x" / "model.onnx").write_bytes(b"half")
    assert DenseEncoder.from_pretrained(bert_dir, runtime="onnx", onnx_cache=cache).model.source == "cache"

    # a damaged entry (cut short) is exported again, not an error; an export removes what
    # exports killed long ago left (not a build that may still be running)
    os.utime(cache / ".building-x", (time.time() - 7 * 3600,) * 2)
    (cache / ".building-y").mkdir()
    entry = next(p for p in cache.iterdir() if not p.name.startswith("."))
    data = (entry / "model.onnx").read_bytes()
    (entry / "model.onnx").write_bytes(data[: len(data) // 3])
    again = DenseEncoder.from_pretrained(bert_dir, runtime="onnx", onnx_cache=cache)
    assert again.model.source == "export" and (entry / "model.onnx").stat().st_size == len(data)
    assert np.abs(again.encode(SAMPLES).dense - first.encode(SAMPLES).dense).max() < 1e-6
    assert not (cache / ".building-x").exists() and (cache / ".building-y").is_dir()
    # int8 is quantized from the entry's fp32 file: a damaged one is exported again first
    (entry / "model.onnx").write_bytes(data[: len(data) // 3])
    q8 = DenseEncoder.from_pretrained(bert_dir, dtype="int8", runtime="onnx", onnx_cache=cache)
    assert q8.model.source == "export" and (entry / "model.onnx").stat().st_size == len(data)
    assert (entry / "model.int8.onnx").is_file()
    # the same weights under another config (activation, heads) are another graph: another entry
    other = tmp_path / "bert-relu"
    shutil.copytree(bert_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["hidden_act"] = "relu"
    (other / "config.json").write_text(json.dumps(cfg))
    relu = DenseEncoder.from_pretrained(other, runtime="onnx", onnx_cache=cache)
    assert relu.model.source == "export" and len([e for e in _entries(cache) if not e.startswith(".")]) == 2
    want = DenseEncoder.from_pretrained(other, device="cpu").encode(SAMPLES).dense
    assert np.abs(relu.encode(SAMPLES).dense - want).max() < 1e-5

    # the environment names the cache when the argument does not; "off" keeps nothing
    monkeypatch.setenv("HYBRIDRAG_ONNX_CACHE", str(tmp_path / "env"))
    assert onnx_cache_dir() == tmp_path / "env"
    assert DenseEncoder.from_pretrained(bert_dir, runtime="onnx").model.source == "export"
    assert len(_entries(tmp_path / "env")) == 1
    monkeypatch.setenv("HYBRIDRAG_ONNX_CACHE", "off")
    monkeypatch.setenv("HYBRIDRAG_CACHE_DIR", str(tmp_path / "base"))
    assert onnx_cache_dir() is None
    off = DenseEncoder.from_pretrained(bert_dir, runtime="onnx")
    assert off.model.source == "export" and not (tmp_path / "base").exists()
    assert np.abs(off.encode(SAMPLES).dense - first.encode(SAMPLES).dense).max() < 1e-6
    monkeypatch.delenv("HYBRIDRAG_ONNX_CACHE")
    assert onnx_cache_dir() == tmp_path / "base" / "onnx"  # beside the rerank budget's measurements


def test_a_cache_that_cannot_be_written_is_a_config_error(bert_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="ONNX cache.*file"):
        DenseEncoder.from_pretrained(bert_dir, runtime="onnx", onnx_cache=blocker / "sub")


def test_export_is_quiet(bert_dir, tmp_path, capfd):
    root = logging.getLogger()
    handlers = list(root.handlers)
    DenseEncoder.from_pretrained(bert_dir, dtype="int8", runtime="onnx", onnx_cache=tmp_path / "q")
    out, err = capfd.readouterr()
    # gRPC's own log lines from Milvus clients other tests left open in this process are not ours
    err = "".join(line for line in err.splitlines(keepends=True) if "chttp2_transport" not in line)
    assert out == "" and err == ""
    assert root.handlers == handlers  # ONNX Runtime's quantizer would have configured the root logger


def test_an_export_leaves_other_threads_output_alone(bert_dir, tmp_path, capsys):
    """Quiet is per export, not per process: a thread that prints while another exports is heard."""
    import threading

    done = threading.Event()
    said = []

    def talk():
        while not done.is_set():
            said.append(len(said))
            print(f"tick {said[-1]}")
            time.sleep(0.02)

    t = threading.Thread(target=talk)
    t.start()
    try:
        DenseEncoder.from_pretrained(bert_dir, runtime="onnx", onnx_cache=tmp_path / "t")
    finally:
        done.set()
        t.join()
    out = capsys.readouterr().out
    assert len(said) > 5 and out.splitlines() == [f"tick {i}" for i in said]


# ----------------------------------------------------------------------------- settings


def test_runtime_settings_are_checked(bert_dir, monkeypatch):
    assert check_runtime(None) == check_runtime("") == "torch" and check_runtime(" ONNX ") == "onnx"
    with pytest.raises(ConfigError, match="'tensorrt'"):
        check_runtime("tensorrt")
    with pytest.raises(ConfigError, match="CPU only.*'cuda'"):
        DenseEncoder.from_pretrained(bert_dir, device="cuda", runtime="onnx")
    with pytest.raises(ConfigError, match="fp32 or int8.*'fp16'"):
        DenseEncoder.from_pretrained(bert_dir, dtype="fp16", runtime="onnx")
    with pytest.raises(ConfigError, match="encoder.runtime"):
        PipelineConfig.from_dict({"encoder": {"runtime": "tensorrt"}})
    with pytest.raises(ConfigError, match="rerank.runtime = 'onnx' runs on the CPU only"):
        PipelineConfig.from_dict({"encoder": {"device": "cuda"}, "rerank": {"runtime": "onnx"}})
    with pytest.raises(ConfigError, match="encoder.runtime = 'onnx' runs fp32 or int8"):
        PipelineConfig.from_dict({"encoder": {"runtime": "onnx", "dtype": "bf16"}})
    # without ONNX Runtime installed: a ConfigError saying what to install
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match=r"hybridrag\[onnx\]"):
        DenseEncoder.from_pretrained(bert_dir, runtime="onnx")


def _torch_index(path: Path, m3_dir: Path, reranker_dir: Path) -> tuple[dict, list]:
    """An index of the tiny M3 with a reranker, run by torch: its rerank settings and the hits
    (chunk id, score) of every query."""
    rerank = {"enabled": True, "model": str(reranker_dir), "k": 4, "max_length": 128}
    with HybridIndex.create(path, m3_pipeline(m3_dir, rerank=rerank)) as idx:
        idx.add(docs())
        return rerank, [_hits(idx, q) for q in QUERIES]


def _hits(idx: HybridIndex, query: str) -> list[tuple[str, float]]:
    return [(h.chunk_id, h.score) for h in idx.search(query, k=3)]


def _assert_same_hits(want: list, got: list) -> None:
    for w, g in zip(want, got, strict=True):
        assert [c for c, _ in w] == [c for c, _ in g]
        assert np.allclose([s for _, s in w], [s for _, s in g], atol=1e-5)


def test_an_index_with_the_onnx_runtime_searches_as_with_torch(tmp_path, m3_dir, reranker_dir, onnx_cache,
                                                               monkeypatch):
    monkeypatch.setenv("HYBRIDRAG_ONNX_CACHE", str(onnx_cache))
    rerank, want = _torch_index(tmp_path / "t", m3_dir, reranker_dir)
    pipe = m3_pipeline(m3_dir, encoder={"runtime": "onnx"}, rerank={**rerank, "runtime": "onnx"})
    with HybridIndex.create(tmp_path / "o", pipe) as idx:
        idx.add(docs())
        assert isinstance(idx.encoder.model, OnnxModel) and isinstance(idx.reranker.model, OnnxModel)
    saved = json.loads((tmp_path / "o" / "manifest.json").read_text(encoding="utf-8"))
    assert saved["models"]["encoder"]["config"]["runtime"] == "onnx"
    with HybridIndex.load(tmp_path / "o") as idx:
        assert idx.pipeline.encoder.runtime == "onnx" and idx.pipeline.rerank.runtime == "onnx"
        got = [_hits(idx, q) for q in QUERIES]
    _assert_same_hits(want, got)


# ----------------------------------------------------------------------------- real weights


@pytest.mark.realweights
def test_onnx_minilm_matches_torch_and_int8_keeps_the_ranking(minilm_dir, onnx_cache):
    from test_encoders_dense import TEXTS as MORE

    corpus = TEXTS + MORE
    ref = DenseEncoder.from_pretrained(minilm_dir, device="cpu")
    ox = DenseEncoder.from_pretrained(minilm_dir, runtime="onnx", onnx_cache=onnx_cache)
    a, b = ref.encode(corpus).dense, ox.encode(corpus).dense
    assert np.abs(a - b).max() < 1e-5  # measured 2e-7
    qa, qb = ref.encode_queries(QUERIES).dense, ox.encode_queries(QUERIES).dense
    assert np.abs(qa - qb).max() < 1e-5
    q8 = DenseEncoder.from_pretrained(minilm_dir, dtype="int8", runtime="onnx", onnx_cache=onnx_cache)
    c = q8.encode(corpus).dense
    cos = (a * c).sum(1)
    sa, sc = qa @ a.T, q8.encode_queries(QUERIES).dense @ c.T
    top_a, top_c = np.argsort(-sa, axis=1)[:, :10], np.argsort(-sc, axis=1)[:, :10]
    overlap = [len(set(x) & set(y)) for x, y in zip(top_a, top_c)]
    # bounds from this model (printed on failure): ONNX Runtime int8 vs fp32
    assert cos.min() > 0.95 and np.abs(sa - sc).max() < 0.1, (cos.min(), np.abs(sa - sc).max())
    # measured: cos min 0.968, score gap 0.047, overlap [10, 7, 10, 10, 9] (torch's int8: [9, 9, 10, 10, 8]); same top-1
    assert min(overlap) >= 7 and np.mean(overlap) >= 9 and (top_a[:, 0] == top_c[:, 0]).all(), overlap


def test_load_runtime_runs_an_index_built_with_torch_in_onnx(tmp_path, m3_dir, reranker_dir, onnx_cache,
                                                             monkeypatch):
    from test_cli import cli

    monkeypatch.setenv("HYBRIDRAG_ONNX_CACHE", str(onnx_cache))
    _, want = _torch_index(tmp_path / "t", m3_dir, reranker_dir)
    with HybridIndex.load(tmp_path / "t", runtime="onnx") as idx:
        assert isinstance(idx.encoder.model, OnnxModel) and isinstance(idx.reranker.model, OnnxModel)
        got = [_hits(idx, q) for q in QUERIES]
        idx.add([{"id": "new", "text": "a new document about vitamin D"}])   # a commit keeps the pipeline's runtime
    _assert_same_hits(want, got)
    with HybridIndex.load(tmp_path / "t") as idx:
        assert idx.pipeline.encoder.runtime == "torch" and not isinstance(idx.encoder.model, OnnxModel)
    with pytest.raises(ConfigError, match="'openvino'"):
        HybridIndex.load(tmp_path / "t", runtime="openvino")
    with pytest.raises(ConfigError, match="CPU only"):   # at load, not at the first search
        HybridIndex.load(tmp_path / "t", runtime="onnx", device="cuda")
    with HybridIndex.load(tmp_path / "t", runtime="") as idx:   # "" is no override, as None
        assert idx._runtime is None
    # the command line: the same hits with --runtime onnx; a bad value is a usage error
    a = json.loads(cli("query", tmp_path / "t", QUERIES[0], "-k", "3", "--json").stdout)
    b = json.loads(cli("query", tmp_path / "t", QUERIES[0], "-k", "3", "--json", "--runtime", "onnx").stdout)
    assert [h["chunk_id"] for h in a] == [h["chunk_id"] for h in b]
    assert np.allclose([h["score"] for h in a], [h["score"] for h in b], atol=1e-5)
    assert cli("query", tmp_path / "t", "q", "--runtime", "gpu", check=False).returncode == 2
    # eval and tune take it too (eval --runtime onnx: the CPU path's quality on the user's queries)
    from hybridrag.eval import ablation
    from test_cli import SAMPLE

    seen = []

    def spy(idx, *a, _real=ablation.evaluate_index, **kw):
        seen.append(isinstance(idx.encoder.model, OnnxModel))
        return _real(idx, *a, **kw)

    monkeypatch.setattr(ablation, "evaluate_index", spy)
    runs = [json.loads(cli("eval", tmp_path / "t", "--beir", SAMPLE, "--max-queries", "3", "--fused-only", "--json",
                           "-q", *extra).stdout) for extra in ((), ("--runtime", "onnx"))]
    assert seen == [False, True] and runs[0][0]["queries"] == runs[1][0]["queries"] == 3


def test_the_server_engine_opens_its_indexes_with_the_runtime_it_is_given(tmp_path, m3_dir, onnx_cache,
                                                                          monkeypatch):
    from hybridrag.server.engine import open_engine

    monkeypatch.setenv("HYBRIDRAG_ONNX_CACHE", str(onnx_cache))
    with HybridIndex.create(tmp_path / "s", m3_pipeline(m3_dir)) as idx:
        idx.add(docs())
    engine = open_engine(tmp_path / "s", writable=True, runtime="onnx")
    try:
        assert isinstance(engine.current.encoder.model, OnnxModel)
        engine._write("add", {"documents": [{"id": "w", "text": "written through the engine"}]})
        assert isinstance(engine._writer_encoder.model, OnnxModel)   # the writer (closed at its commit) encoded
    finally:
        engine._close_writer()
        engine.current.close()
