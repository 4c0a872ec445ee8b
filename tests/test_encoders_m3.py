"""M3Encoder (hybridrag/encoders/m3.py) and the shared machinery in encoders/base.py.

Parity tests compare against FlagEmbedding's BGEM3FlagModel on a tiny random
BGE-M3-layout folder (the ``m3_dir`` fixture in conftest.py).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridrag.encoders import EncodeOutput, M3Encoder, colbert_score, dense_score, lexical_score
from hybridrag.encoders import base
from hybridrag.errors import ModelLoadError

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "混合检索结合了稠密向量和稀疏词权重。",
    "الاسترجاع الهجين يجمع بين المتجهات الكثيفة والأوزان المتفرقة",
    "Emoji test 🚀🔥 retrieval is fun 😀 👍",
    "Vitamin D " * 40,  # longer than max_length=32: truncated
    "Dense vectors.",
    "",
    "   ",
    "tab\there\x00nul\x07bell\x1b",
    "Les modèles de langue répondent aux questions en français. " * 3,
    "中文",
]
TOL = 1e-5


@pytest.fixture(scope="module")
def enc(m3_dir: Path) -> M3Encoder:
    return M3Encoder.from_pretrained(m3_dir, device="cpu")


@pytest.fixture(scope="module")
def flag(m3_dir: Path):
    from FlagEmbedding import BGEM3FlagModel

    return BGEM3FlagModel(str(m3_dir), use_fp16=False, devices="cpu")


def _assert_same(ours: EncodeOutput, ref: dict) -> None:
    assert ours.dense is not None and ours.sparse is not None and ours.colbert is not None
    assert ours.dense.dtype == np.float32
    np.testing.assert_allclose(ours.dense, ref["dense_vecs"], atol=TOL, rtol=0)
    assert len(ours.sparse) == len(ref["lexical_weights"])
    for i, (mine, theirs) in enumerate(zip(ours.sparse, ref["lexical_weights"])):
        assert set(mine) == {int(k) for k in theirs}, i
        for tok, w in mine.items():
            assert isinstance(tok, int) and isinstance(w, float)
            assert abs(w - float(theirs[str(tok)])) <= TOL, (i, tok)
    for i, (mine, theirs) in enumerate(zip(ours.colbert, ref["colbert_vecs"])):
        assert mine.dtype == np.float32 and mine.shape == theirs.shape, i
        np.testing.assert_allclose(mine, theirs, atol=TOL, rtol=0)


# ----------------------------------------------------------------------------- parity


@pytest.mark.parity
@pytest.mark.parametrize("max_length,batch_size", [(32, 3), (512, 4), (9, 1)])
def test_encode_matches_flagembedding(enc: M3Encoder, flag, max_length: int, batch_size: int) -> None:
    ours = enc.encode(TEXTS, max_length=max_length, batch_size=batch_size)
    ref = flag.encode(TEXTS, max_length=max_length, batch_size=batch_size,
                      return_dense=True, return_sparse=True, return_colbert_vecs=True)
    _assert_same(ours, ref)
    assert max(len(c) for c in ours.colbert) <= max_length - 1


@pytest.mark.parity
def test_compute_score_matches_flagembedding(enc: M3Encoder, flag) -> None:
    pairs = [(TEXTS[i], TEXTS[(3 * i + 2) % len(TEXTS)]) for i in range(len(TEXTS))]
    pairs.append(("", "Dense vectors."))
    # very short passages beside long ones: FlagEmbedding's padding zeros enter MaxSim here
    pairs += [(t, "") for t in TEXTS] + [(t, "中文") for t in TEXTS]
    # many short random queries against the one-vector passage "": some query token then
    # has only negative dot products, which is where the padding zeros change the score
    rng = np.random.default_rng(0)
    words = "fox dog lazy quick brown vectors 中文 检索 الاسترجاع 🚀 modèles vitamin".split()
    pairs += [(" ".join(rng.choice(words, size=12)), "") for _ in range(150)]
    weights = (0.4, 0.2, 0.4)
    ref = flag.compute_score(pairs, max_query_length=16, max_passage_length=32,
                             weights_for_different_modes=list(weights))
    ours = enc.compute_score(pairs, weights=weights, max_query_length=16, max_passage_length=32)
    assert set(ours) == {"dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense"}
    for key in ours:
        assert len(ours[key]) == len(pairs)
        np.testing.assert_allclose(ours[key], ref[key], atol=TOL, rtol=0, err_msg=key)
    clean = enc.compute_score(pairs, weights=weights, max_query_length=16, max_passage_length=32, batch_size=1)
    assert not np.allclose(clean["colbert"], ours["colbert"], atol=TOL), "padding quirk not exercised"
    # other weights and one bare pair
    ref1 = flag.compute_score(pairs[0], max_query_length=16, max_passage_length=32,
                              weights_for_different_modes=[1.0, 0.3, 1.0])
    ours1 = enc.compute_score(pairs[0], weights=(1.0, 0.3, 1.0), max_query_length=16, max_passage_length=32)
    for key in ours1:
        assert abs(ours1[key] - ref1[key]) <= TOL, key


def test_compute_score_modes_agree_with_helpers(enc: M3Encoder) -> None:
    pairs = [("fox dog", TEXTS[0]), ("vitamin", TEXTS[4])]
    # batch_size=1: no cross-pair padding, so colbert equals the clean MaxSim helper
    scores = enc.compute_score(pairs, max_query_length=16, max_passage_length=32, batch_size=1)
    q = enc.encode([p[0] for p in pairs], max_length=16)
    p = enc.encode([p[1] for p in pairs], max_length=32)
    for i in range(2):
        assert scores["dense"][i] == pytest.approx(dense_score(q.dense[i], p.dense[i]), abs=1e-6)
        assert scores["sparse"][i] == pytest.approx(lexical_score(q.sparse[i], p.sparse[i]), abs=1e-6)
        assert scores["colbert"][i] == pytest.approx(colbert_score(q.colbert[i], p.colbert[i]), abs=1e-6)
        d, s, c = scores["dense"][i], scores["sparse"][i], scores["colbert"][i]
        assert scores["sparse+dense"][i] == pytest.approx((0.4 * d + 0.2 * s) / 0.6, abs=1e-6)
        assert scores["colbert+sparse+dense"][i] == pytest.approx(0.4 * d + 0.2 * s + 0.4 * c, abs=1e-6)


def test_output_formulas_from_hidden_states(enc: M3Encoder) -> None:
    """Recompute the three outputs from the raw model for one text (no batching)."""
    text = "Vitamin D deficiency 中文 🚀 Vitamin"
    out = enc.encode([text], max_length=64)
    ids = enc.tokenizer(text, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        h = enc.model(**ids).last_hidden_state[0]
        dense = torch.nn.functional.normalize(h[0], dim=-1).numpy()
        col = torch.nn.functional.normalize(enc.colbert_linear(h[1:]), dim=-1).numpy()
        w = torch.relu(enc.sparse_linear(h)).squeeze(-1).numpy()
    np.testing.assert_allclose(out.dense[0], dense, atol=1e-6)
    np.testing.assert_allclose(out.colbert[0], col, atol=1e-6)  # n_tokens - 1 rows, </s> included
    special = {enc.tokenizer.cls_token_id, enc.tokenizer.eos_token_id, enc.tokenizer.pad_token_id,
               enc.tokenizer.unk_token_id}
    expected: dict[int, float] = {}
    for tok, weight in zip(ids["input_ids"][0].tolist(), w.tolist()):
        if tok not in special and weight > 0:
            expected[tok] = max(expected.get(tok, 0.0), weight)
    assert out.sparse[0].keys() == expected.keys()
    for tok in expected:
        assert out.sparse[0][tok] == pytest.approx(expected[tok], abs=1e-6)


def test_scoring_helpers() -> None:
    assert dense_score(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert lexical_score({1: 2.0, 5: 1.0}, {5: 3.0, 7: 1.0}) == pytest.approx(3.0)
    assert lexical_score({}, {1: 1.0}) == 0.0
    q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    p = np.array([[0.6, 0.8], [1.0, 0.0]], dtype=np.float32)
    assert colbert_score(q, p) == pytest.approx((1.0 + 0.8) / 2)
    assert colbert_score(np.zeros((0, 2)), p) == 0.0


# ----------------------------------------------------------------------------- API


def test_shapes_order_and_batching_invariance(enc: M3Encoder) -> None:
    a = enc.encode(TEXTS, max_length=32, batch_size=2)
    b = enc.encode(list(reversed(TEXTS)), max_length=32, batch_size=len(TEXTS))
    assert a.dense.shape == (len(TEXTS), enc.dim) and enc.dim == 32 and enc.colbert_dim == 32
    np.testing.assert_allclose(a.dense, b.dense[::-1], atol=1e-6)
    for x, y in zip(a.colbert, reversed(b.colbert)):
        np.testing.assert_allclose(x, y, atol=1e-6)
    norms = np.linalg.norm(a.dense, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_bare_string_and_flags(enc: M3Encoder) -> None:
    one = enc.encode("Dense vectors.", max_length=32)
    many = enc.encode(["Dense vectors."], max_length=32)
    np.testing.assert_array_equal(one.dense, many.dense)
    only_dense = enc.encode(["x"], dense=True, sparse=False, colbert=False)
    assert only_dense.sparse is None and only_dense.colbert is None and only_dense.dense.shape == (1, 32)
    nothing = enc.encode(["x"], dense=False, sparse=False, colbert=False)
    assert nothing.dense is None and nothing.sparse is None and nothing.colbert is None


def test_encode_queries_defaults_to_512(enc: M3Encoder) -> None:
    long_q = "fox " * 700
    q = enc.encode_queries([long_q])
    assert q.colbert[0].shape[0] == 511
    np.testing.assert_array_equal(q.dense, enc.encode([long_q], max_length=512).dense)
    # passages default to the model's limit (1024 for the tiny folder, 8192 for BAAI/bge-m3)
    n_tokens = len(enc.tokenizer(long_q)["input_ids"])
    assert enc.encode([long_q]).colbert[0].shape[0] == min(enc.capacity, 8192, n_tokens) - 1


def test_empty_input(enc: M3Encoder) -> None:
    out = enc.encode([])
    assert out.dense.shape == (0, enc.dim) and out.dense.dtype == np.float32
    assert out.sparse == [] and out.colbert == []
    assert enc.compute_score([])["dense"] == []


def test_empty_and_whitespace_text(enc: M3Encoder) -> None:
    out = enc.encode(["", "   ", "\n\t"], max_length=32)
    for i in range(3):
        assert np.isfinite(out.dense[i]).all()
        assert out.colbert[i].shape[1] == enc.colbert_dim
    assert out.colbert[0].shape[0] == 1  # only the </s> row
    assert out.sparse[0] == {}


def test_control_chars_and_lone_surrogate(enc: M3Encoder) -> None:
    out = enc.encode(["a\x00b\x07c", "a\ud800b", "a\ufffdb", "ok \ud83d\ude80"], max_length=32)
    np.testing.assert_array_equal(out.dense[1], out.dense[2])  # lone surrogate -> U+FFFD
    # a valid surrogate pair is re-joined into the code point
    np.testing.assert_allclose(out.dense[3], enc.encode(["ok 🚀"], max_length=32).dense[0], atol=1e-6)


def test_ten_megabyte_line_is_truncated(enc: M3Encoder) -> None:
    line = "retrieval augmented generation " * (10_000_000 // 31)
    assert len(line) > 9_900_000
    out = enc.encode([line, "short"], max_length=48)
    assert out.dense.shape == (2, enc.dim)
    assert out.colbert[0].shape == (47, enc.colbert_dim)
    ref = enc.encode([line[:5000]], max_length=48)
    np.testing.assert_allclose(out.dense[0], ref.dense[0], atol=1e-6)
    np.testing.assert_allclose(out.colbert[0], ref.colbert[0], atol=1e-6)
    no_space = "x" * 10_000_000
    assert enc.encode([no_space], max_length=16).colbert[0].shape[0] <= 15


@pytest.mark.parametrize("bad", [5, None, b"bytes", {"a": 1}])
def test_texts_wrong_container(enc: M3Encoder, bad) -> None:
    with pytest.raises(TypeError, match="texts"):
        enc.encode(bad)


def test_texts_wrong_item_names_index(enc: M3Encoder) -> None:
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        enc.encode(["ok", 3])
    with pytest.raises(TypeError, match=r"texts\[0\]"):
        enc.encode([None])


@pytest.mark.parametrize("bad", [0, -1, 8193, 100_000])
def test_max_length_out_of_range(enc: M3Encoder, bad: int) -> None:
    with pytest.raises(ValueError, match=str(bad)):
        enc.encode(["x"], max_length=bad)


@pytest.mark.parametrize("bad", ["32", 32.0, True])
def test_max_length_wrong_type(enc: M3Encoder, bad) -> None:
    with pytest.raises(TypeError, match="max_length"):
        enc.encode(["x"], max_length=bad)


def test_max_length_above_model_capacity_names_both(enc: M3Encoder) -> None:
    assert enc.capacity == 1024  # tiny folder: 1026 positions - 2 (XLM-R offset)
    with pytest.raises(ValueError, match=r"2000.*1024"):
        enc.encode(["x"], max_length=2000)
    enc.encode(["x"], max_length=1024)


def test_batch_size_and_weights_validation(enc: M3Encoder) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        enc.encode(["x"], batch_size=0)
    with pytest.raises(ValueError, match="weights"):
        enc.compute_score([("a", "b")], weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="weights"):
        enc.compute_score([("a", "b")], weights=(-1.0, 1.0, 1.0))
    with pytest.raises(TypeError, match=r"pairs\[0\]"):
        enc.compute_score([("a",)])


def test_oom_halves_batch_and_retries(enc: M3Encoder, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = enc.encode(TEXTS, max_length=32, batch_size=8)
    real_run = enc._run
    sizes: list[int] = []

    def flaky(features, *args):
        sizes.append(len(features))
        if len(features) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_run(features, *args)

    monkeypatch.setattr(enc, "_run", flaky)
    got = enc.encode(TEXTS, max_length=32, batch_size=8)
    assert sizes[:3] == [8, 4, 2] and max(sizes[3:]) == 2
    np.testing.assert_allclose(got.dense, expected.dense, atol=1e-6)

    def broken(features, *args):
        raise RuntimeError("not an OOM")

    monkeypatch.setattr(enc, "_run", broken)
    with pytest.raises(RuntimeError, match="not an OOM"):
        enc.encode(TEXTS, batch_size=8)


def test_oom_at_batch_size_one_propagates() -> None:
    def always(_):
        raise torch.cuda.OutOfMemoryError("simulated")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        base.run_sorted_batches([{"input_ids": [1, 2]}], 4, always)


def test_batches_overlap_launch_and_collect() -> None:
    """Batch i is collected after batch i + 1 is launched (host work overlaps the next
    forward pass); an OOM while a batch is pending loses nothing; order is restored."""
    events: list[str] = []
    feats = [{"input_ids": [0] * n} for n in (3, 9, 5, 7, 1, 8, 2)]  # launched longest first

    def launch(batch):
        if len(batch) > 2 and events.count("oom") == 0 and events:
            events.append("oom")
            raise torch.cuda.OutOfMemoryError("simulated")
        tag = ",".join(str(len(f["input_ids"])) for f in batch)
        events.append(f"launch {tag}")

        def finish():
            events.append(f"finish {tag}")
            return [len(f["input_ids"]) for f in batch]

        return finish

    got = base.run_sorted_batches(feats, 4, launch)
    assert got == [3, 9, 5, 7, 1, 8, 2]
    assert events == ["launch 9,8,7,5", "oom", "launch 3,2", "finish 9,8,7,5", "launch 1", "finish 3,2",
                      "finish 1"]


def test_pad_batch_pads_right_like_the_tokenizer(enc: M3Encoder) -> None:
    feats = base.tokenize(enc.tokenizer, TEXTS, 32, return_token_type_ids=True, return_special_tokens_mask=True)
    ours = base.pad_batch(enc.tokenizer, feats, "cpu")
    ref = enc.tokenizer.pad({k: [f[k] for f in feats] for k in feats[0]}, padding=True, return_tensors="pt")
    assert set(ours) == set(ref)
    for k in ref:
        assert ours[k].dtype == torch.int64
        torch.testing.assert_close(ours[k], ref[k].long(), rtol=0, atol=0)
    no_mask = base.pad_batch(enc.tokenizer, [{"input_ids": f["input_ids"]} for f in feats], "cpu")
    torch.testing.assert_close(no_mask["attention_mask"], ref["attention_mask"].long(), rtol=0, atol=0)


def test_left_padding_tokenizer_gives_the_same_outputs(m3_dir: Path, enc: M3Encoder) -> None:
    """The encoder slices each row's first ``length`` positions, so it pads on the
    right whatever ``padding_side`` the saved tokenizer asks for."""
    left = M3Encoder.from_pretrained(m3_dir, device="cpu")
    left.tokenizer.padding_side = "left"
    a = left.encode(TEXTS, max_length=32, batch_size=4)
    b = enc.encode(TEXTS, max_length=32, batch_size=4)
    np.testing.assert_allclose(a.dense, b.dense, atol=1e-6)
    for x, y in zip(a.sparse, b.sparse):
        assert x.keys() == y.keys() and all(abs(x[t] - y[t]) < 1e-6 for t in x)
    for x, y in zip(a.colbert, b.colbert):
        np.testing.assert_allclose(x, y, atol=1e-6)


# ----------------------------------------------------------------------------- loading and config


def test_bf16_on_cpu_is_close(m3_dir: Path, enc: M3Encoder) -> None:
    low = M3Encoder.from_pretrained(m3_dir, device="cpu", dtype="bf16")
    assert low.dtype == torch.bfloat16 and low.config()["dtype"] == "bfloat16"
    out = low.encode(["The quick brown fox"], max_length=32)
    assert out.dense.dtype == np.float32
    np.testing.assert_allclose(out.dense, enc.encode(["The quick brown fox"], max_length=32).dense, atol=0.1)


@pytest.mark.parity
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_matches_flagembedding_fp16(m3_dir: Path, enc: M3Encoder) -> None:
    """On a GPU both sides default to / are asked for fp16; outputs agree within fp16 noise."""
    from FlagEmbedding import BGEM3FlagModel

    gpu = M3Encoder.from_pretrained(m3_dir)
    assert gpu.device.startswith("cuda") and gpu.dtype == torch.float16
    ref = BGEM3FlagModel(str(m3_dir), use_fp16=True, devices="cuda")
    for max_length, batch_size in [(32, 3), (512, 4)]:
        ours = gpu.encode(TEXTS, max_length=max_length, batch_size=batch_size)
        theirs = ref.encode(TEXTS, max_length=max_length, batch_size=batch_size,
                            return_dense=True, return_sparse=True, return_colbert_vecs=True)
        np.testing.assert_allclose(ours.dense, theirs["dense_vecs"], atol=5e-3, rtol=0)
        for i, (mine, other) in enumerate(zip(ours.sparse, theirs["lexical_weights"])):
            keys = set(mine) | {int(k) for k in other}
            for tok in keys:  # a weight near 0 may be kept on one side only
                assert abs(mine.get(tok, 0.0) - float(other.get(str(tok), 0.0))) <= 5e-3, (i, tok)
        for i, (mine, other) in enumerate(zip(ours.colbert, theirs["colbert_vecs"])):
            assert mine.shape == other.shape, i
            np.testing.assert_allclose(mine, other, atol=5e-3, rtol=0)
    # outputs are the caller's own memory: later batches (reusing the page-locked
    # transfer buffers) leave them as they were
    first = gpu.encode(TEXTS, max_length=32, batch_size=2)
    kept = [c.copy() for c in first.colbert]
    gpu.encode([t[::-1] + " other" for t in TEXTS] * 3, max_length=32, batch_size=2)
    for a, b in zip(first.colbert, kept):
        np.testing.assert_array_equal(a, b)
    # and fp16 on the GPU stays close to fp32 on the CPU
    np.testing.assert_allclose(gpu.encode(TEXTS, max_length=32).dense, enc.encode(TEXTS, max_length=32).dense,
                               atol=2e-2)


def test_device_and_dtype_choice() -> None:
    assert base.resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert base.resolve_dtype(None, "cpu") == torch.float32
    assert base.resolve_dtype(None, "cuda") == torch.float16
    assert base.resolve_dtype("bf16", "cuda") == torch.bfloat16
    assert base.resolve_dtype("int8", "cpu") == torch.float32  # the CPU path: int8 Linears, fp32 elsewhere
    with pytest.raises(ValueError, match="CPU only"):
        base.resolve_dtype("int8", "cuda")
    with pytest.raises(ValueError, match="int4"):
        base.resolve_dtype("int4", "cpu")
    with pytest.raises(ValueError, match="nonsense"):
        base.resolve_device("nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            base.resolve_device("cuda")


@pytest.mark.parametrize("head", ["colbert_linear.pt", "sparse_linear.pt"])
def test_missing_head_names_file(m3_dir: Path, tmp_path: Path, head: str) -> None:
    folder = tmp_path / "m3"
    shutil.copytree(m3_dir, folder)
    (folder / head).unlink()
    with pytest.raises(ModelLoadError, match=head):
        M3Encoder.from_pretrained(folder, device="cpu")


def test_missing_folder_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match="nope"):
        M3Encoder.from_pretrained(missing, device="cpu")


def test_hub_id_offline_raises_model_load_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="hybridrag-test/no-such-model"):
        M3Encoder.from_pretrained("hybridrag-test/no-such-model", device="cpu")
