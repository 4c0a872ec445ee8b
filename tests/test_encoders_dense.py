"""DenseEncoder (hybridrag/encoders/dense.py): parity with SentenceTransformer.encode on
tiny BERT folders (mean and cls pooling) and on the real all-MiniLM-L6-v2 weights."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny_models
from hybridrag.encoders import DenseEncoder
from hybridrag.errors import ModelLoadError

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "混合检索结合了稠密向量和稀疏词权重。",
    "الاسترجاع الهجين يجمع بين المتجهات الكثيفة والأوزان المتفرقة",
    "Emoji test 🚀🔥 retrieval is fun 😀 👍",
    "Vitamin D deficiency " * 60,  # longer than max_seq_length: truncated
    "Aspirin.",
    "",
    "   ",
    "tab\there\x00nul\x07bell",
    "Les modèles de langue répondent aux questions en français.",
]
TOL = 1e-5


@pytest.fixture(scope="module")
def bert_cls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.make_bert_folder(tmp_path_factory.mktemp("bert_cls"), pooling="cls")


@pytest.fixture(scope="module")
def bert_plain_dir(bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT without any sentence-transformers files (a plain HF folder)."""
    folder = tmp_path_factory.mktemp("bert_plain")
    for item in bert_dir.iterdir():
        if item.is_file() and item.name not in ("modules.json", "sentence_bert_config.json"):
            shutil.copy(item, folder / item.name)
    return folder


@pytest.fixture(scope="module")
def enc(bert_dir: Path) -> DenseEncoder:
    return DenseEncoder.from_pretrained(bert_dir, device="cpu")


def _st_encode(path: Path, texts: list[str], batch_size: int) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu").encode(texts, batch_size=batch_size)


# ----------------------------------------------------------------------------- parity


@pytest.mark.parity
@pytest.mark.parametrize("which", ["mean", "cls"])
def test_matches_sentence_transformers(bert_dir: Path, bert_cls_dir: Path, which: str) -> None:
    path = bert_dir if which == "mean" else bert_cls_dir
    enc = DenseEncoder.from_pretrained(path, device="cpu")
    assert enc.pooling == which and enc.normalize is True and enc.max_length == 128
    ours = enc.encode(TEXTS, batch_size=3)
    np.testing.assert_allclose(ours.dense, _st_encode(path, TEXTS, 3), atol=TOL, rtol=0)


@pytest.mark.parity
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_matches_sentence_transformers_fp16(bert_dir: Path) -> None:
    """On a GPU the encoder defaults to fp16; SentenceTransformer.half() on the GPU agrees."""
    from sentence_transformers import SentenceTransformer

    gpu = DenseEncoder.from_pretrained(bert_dir)
    assert gpu.device.startswith("cuda") and gpu.dtype == torch.float16
    ref = SentenceTransformer(str(bert_dir), device="cuda").half()
    np.testing.assert_allclose(gpu.encode(TEXTS, batch_size=3).dense, ref.encode(TEXTS, batch_size=3),
                               atol=5e-3, rtol=0)


@pytest.mark.parity
def test_matches_sentence_transformers_unnormalized(tmp_path: Path) -> None:
    path = tiny_models.make_bert_folder(tmp_path / "raw", normalize=False)
    enc = DenseEncoder.from_pretrained(path, device="cpu")
    assert enc.normalize is False
    ours = enc.encode(TEXTS, batch_size=4)
    assert not np.allclose(np.linalg.norm(ours.dense, axis=1), 1.0)
    np.testing.assert_allclose(ours.dense, _st_encode(path, TEXTS, 4), atol=TOL, rtol=0)


@pytest.mark.parity
@pytest.mark.realweights
def test_minilm_matches_sentence_transformers(minilm_dir: Path) -> None:
    enc = DenseEncoder.from_pretrained(minilm_dir, device="cpu")
    assert (enc.pooling, enc.normalize, enc.max_length, enc.dim) == ("mean", True, 256, 384)
    texts = TEXTS + ["Vitamin D supplementation and fracture risk in older adults: a randomized trial."]
    ours = enc.encode(texts, batch_size=4)
    np.testing.assert_allclose(ours.dense, _st_encode(minilm_dir, texts, 4), atol=TOL, rtol=0)


# ----------------------------------------------------------------------------- behaviour


def test_token_vectors_for_late_interaction(enc: DenseEncoder) -> None:
    text = "Dense vectors and sparse weights"
    out = enc.encode([text, "Aspirin."], colbert=True, batch_size=2)
    ids = enc.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        h = enc.model(**ids).last_hidden_state[0, 1:-1]  # drop [CLS] and [SEP]
    expected = torch.nn.functional.normalize(h, dim=-1).numpy()
    assert out.colbert is not None and out.sparse is None
    assert out.colbert[0].shape == (ids["input_ids"].shape[1] - 2, enc.colbert_dim)
    np.testing.assert_allclose(out.colbert[0], expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out.colbert[1], axis=1), 1.0, atol=1e-5)
    assert enc.encode([""], colbert=True).colbert[0].shape == (0, enc.dim)


def test_plain_folder_defaults_to_cls_normalized(bert_plain_dir: Path, bert_cls_dir: Path) -> None:
    enc = DenseEncoder.from_pretrained(bert_plain_dir, device="cpu")
    assert enc.pooling == "cls" and enc.normalize is True and enc.max_length == 512
    ref = DenseEncoder.from_pretrained(bert_plain_dir, device="cpu", pooling="mean", normalize=False)
    assert ref.pooling == "mean" and ref.normalize is False
    out = enc.encode(["Aspirin reduces risk"])
    np.testing.assert_allclose(np.linalg.norm(out.dense, axis=1), 1.0, atol=1e-6)


def test_explicit_arguments_override_folder(bert_dir: Path) -> None:
    enc = DenseEncoder.from_pretrained(bert_dir, device="cpu", pooling="max", normalize=False, max_length=16)
    assert (enc.pooling, enc.normalize, enc.max_length) == ("max", False, 16)
    out = enc.encode(TEXTS)
    assert np.isfinite(out.dense).all()


def test_query_instruction(bert_dir: Path) -> None:
    enc = DenseEncoder.from_pretrained(bert_dir, device="cpu", query_instruction="query: ")
    np.testing.assert_array_equal(enc.encode_queries(["fox"]).dense, enc.encode(["query: fox"]).dense)
    np.testing.assert_array_equal(enc.encode_queries("fox").dense, enc.encode(["query: fox"]).dense)
    assert enc.config()["query_instruction"] == "query: "


def test_order_and_batching_invariance(enc: DenseEncoder) -> None:
    a = enc.encode(TEXTS, batch_size=1)
    b = enc.encode(list(reversed(TEXTS)), batch_size=len(TEXTS))
    np.testing.assert_allclose(a.dense, b.dense[::-1], atol=1e-6)


def test_empty_input(enc: DenseEncoder) -> None:
    out = enc.encode([])
    assert out.dense.shape == (0, enc.dim) and out.dense.dtype == np.float32
    assert enc.encode([], colbert=True).colbert == []


def test_odd_text(enc: DenseEncoder) -> None:
    out = enc.encode(["", "  ", "a\x00\x07b", "a\ud800b", "a\ufffdb"])
    assert out.dense.shape == (5, enc.dim) and np.isfinite(out.dense).all()
    np.testing.assert_array_equal(out.dense[3], out.dense[4])


def test_ten_megabyte_line(enc: DenseEncoder) -> None:
    line = "vitamin d deficiency fracture " * (10_000_000 // 30)
    out = enc.encode([line], colbert=True)
    assert out.dense.shape == (1, enc.dim)
    assert out.colbert[0].shape == (enc.max_length - 2, enc.dim)
    np.testing.assert_allclose(out.dense, enc.encode([line[:3000]]).dense, atol=1e-6)


def test_a_long_text_is_encoded_quietly(bert_dir: Path) -> None:
    """The prefix probe of a very long text is over the model's length on purpose: transformers'
    "Token indices sequence length is longer than ..." warning is not the user's business."""
    import logging

    fresh = DenseEncoder.from_pretrained(bert_dir, device="cpu")   # the warning comes once per tokenizer
    fresh.tokenizer.model_max_length = fresh.max_length   # as real models' tokenizer_config.json says
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    hf = logging.getLogger("transformers")   # transformers logs there, with a handler of its own
    keep = Keep()
    hf.addHandler(keep)
    try:
        fresh.encode(["vitamin d deficiency fracture " * 2000])
    finally:
        hf.removeHandler(keep)
    assert not [m for m in seen if "sequence length is longer" in m], seen


def test_bad_input(enc: DenseEncoder) -> None:
    with pytest.raises(TypeError, match="texts"):
        enc.encode(42)
    with pytest.raises(TypeError, match=r"texts\[2\]"):
        enc.encode(["a", "b", 3.5])
    with pytest.raises(ValueError, match="sparse"):
        enc.encode(["a"], sparse=True)
    with pytest.raises(ValueError, match="0"):
        enc.encode(["a"], max_length=0)
    with pytest.raises(ValueError, match=r"9000"):
        enc.encode(["a"], max_length=9000)
    with pytest.raises(ValueError, match=r"600.*512"):
        enc.encode(["a"], max_length=600)
    with pytest.raises(ValueError, match="batch_size"):
        enc.encode(["a"], batch_size=-2)


def test_bad_arguments(bert_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="weighted"):
        DenseEncoder.from_pretrained(bert_dir, device="cpu", pooling="weighted")
    with pytest.raises(TypeError, match="normalize"):
        DenseEncoder.from_pretrained(bert_dir, device="cpu", normalize="yes")
    with pytest.raises(ValueError, match="1000"):
        DenseEncoder.from_pretrained(bert_dir, device="cpu", max_length=1000)
    with pytest.raises(ModelLoadError, match="missing-model"):
        DenseEncoder.from_pretrained(tmp_path / "missing-model", device="cpu")


def test_unsupported_st_pooling_is_reported(bert_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "weird"
    shutil.copytree(bert_dir, folder)
    cfg_path = folder / "1_Pooling" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(pooling_mode_mean_tokens=False, pooling_mode_lasttoken=True)
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="lasttoken"):
        DenseEncoder.from_pretrained(folder, device="cpu")


def test_index_reopens_the_encoder_with_its_settings(tmp_path: Path, bert_dir: Path) -> None:
    """An index stores its pipeline and rebuilds its encoder from it on load: the same pooling,
    normalisation and query instruction, so queries encode as they did when it was built."""
    from hybridrag.index import HybridIndex

    settings = {"pooling": "cls", "normalize": False, "query_instruction": "query: "}
    pipe = {"name": "tiny-dense", "encoder": {"kind": "dense", "model": str(bert_dir), "max_length": 128, **settings},
            "chunking": {"max_tokens": 100, "overlap": 10}, "sparse": {"enabled": False},
            "colbert": {"enabled": False}, "fusion": {"method": "weighted", "weights": {"dense": 1.0}}}
    with HybridIndex.create(tmp_path / "d", pipe) as idx:
        idx.add([{"id": "d0", "text": TEXTS[0]}])
    want = DenseEncoder.from_pretrained(bert_dir, device="cpu", **settings).encode_queries(["fox"]).dense
    default = DenseEncoder.from_pretrained(bert_dir, device="cpu").encode_queries(["fox"]).dense
    assert not np.allclose(want, default)   # the settings change the encoding
    with HybridIndex.load(tmp_path / "d") as idx:
        enc = idx.encoder
        assert (enc.pooling, enc.normalize, enc.query_instruction) == ("cls", False, "query: ")
        np.testing.assert_array_equal(enc.encode_queries(["fox"]).dense, want)
        # the manifest keeps encoder.config() as a record of the model it was built with
        manifest = json.loads((tmp_path / "d" / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["models"]["encoder"]["config"] == enc.config()
