"""CrossEncoderReranker: inputs, scores and errors; parity with FlagEmbedding.FlagReranker."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny_models
from hybridrag.errors import ModelLoadError
from hybridrag.rerankers import CrossEncoderReranker

LATIN = "The quick brown fox jumps over the lazy dog."
CHINESE = "混合检索结合了稠密向量和稀疏词权重。"
ARABIC = "الاسترجاع الهجين يجمع بين المتجهات الكثيفة والأوزان المتفرقة"
EMOJI = "Emoji test 🚀🔥 retrieval is fun 😀 👍"
LONG = " ".join(tiny_models.CORPUS[:12])  # several hundred tokens with the tiny tokenizer

PAIRS = [
    ("quick fox", LATIN),
    ("稠密向量", CHINESE),
    ("الاسترجاع الهجين", ARABIC),
    ("emoji 🚀", EMOJI),
    ("Aspirin heart attack", "Aspirin reduces the risk of heart attack in some patients."),
    (LONG, LONG),  # query and passage both longer than max_length
    ("fox", "dog"),
    ("Retrieval augmented generation", LONG + " " + LONG),
    ("中文", "日本語のテキストには単語の区切りがありません。"),
    ("x", "Les modèles de langue répondent aux questions en français."),
    (CHINESE + EMOJI, ARABIC + " " + LATIN),
]


def _scale_weights(folder: Path, seed: int) -> None:
    """Redraw weights with a larger spread so different inputs get clearly different scores."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, w in model.named_parameters():
            if "LayerNorm" not in name:
                w.copy_(torch.randn(w.shape, generator=gen) * 0.3)
    model.save_pretrained(folder)


@pytest.fixture(scope="module")
def _rr_dir(tmp_path_factory: pytest.TempPathFactory, reranker_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("rr_scaled") / "model"
    shutil.copytree(reranker_dir, folder)
    _scale_weights(folder, seed=7)
    return folder


@pytest.fixture(scope="module")
def _rr_bert_dir(tmp_path_factory: pytest.TempPathFactory, bert_dir: Path) -> Path:
    """A BERT cross-encoder (uses token_type_ids), built from the tiny BERT tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("rr_bert")
    tok = AutoTokenizer.from_pretrained(bert_dir)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=512, num_labels=1, type_vocab_size=2)
    torch.manual_seed(11)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    _scale_weights(folder, seed=8)
    return folder


@pytest.fixture(scope="module")
def rr(_rr_dir: Path) -> CrossEncoderReranker:
    return CrossEncoderReranker.from_pretrained(_rr_dir, device="cpu")


def _flag_scores(path: Path, pairs, max_length: int, normalize: bool) -> np.ndarray:
    from FlagEmbedding import FlagReranker

    ref = FlagReranker(str(path), use_fp16=False, devices="cpu")
    return np.asarray(ref.compute_score(pairs, max_length=max_length, normalize=normalize, batch_size=4),
                      dtype=np.float64)


def _reference_ids(tok, q: str, p: str, max_length: int) -> list[int]:
    """The input ids FlagReranker feeds its model (token-level truncation, then its pair helper)."""
    from FlagEmbedding.utils.tokenizer_compat import prepare_for_model_compat

    q_ids = tok(q, add_special_tokens=False, max_length=max_length * 3 // 4, truncation=True)["input_ids"]
    p_ids = tok(p, add_special_tokens=False, max_length=max_length, truncation=True)["input_ids"]
    item = prepare_for_model_compat(tok, q_ids, p_ids, truncation="only_second", max_length=max_length)
    return list(item["input_ids"])


@pytest.mark.parity
@pytest.mark.parametrize("max_length", [32, 512])
def test_parity_with_flag_reranker(_rr_dir: Path, max_length: int) -> None:
    ours = CrossEncoderReranker.from_pretrained(_rr_dir, device="cpu", max_length=max_length)
    raw = ours.compute_score(PAIRS, batch_size=3)
    norm = ours.compute_score(PAIRS, normalize=True, batch_size=5)
    assert raw.dtype == np.float32 and raw.shape == (len(PAIRS),)
    # Under transformers 5, FlagEmbedding builds the pair by decoding the truncated ids and
    # tokenizing the text again; when a cut falls inside a multi-token character run, that
    # round trip yields different ids than the token-level layout both share by design.
    # Those pairs are compared on inputs (our ids must be the token-level layout), the rest
    # on scores.
    ours_ids = [ids for ids, _ in ours._encode_pairs(PAIRS)]
    same = np.array([_reference_ids(ours.tokenizer, q, p, max_length) == ours_ids[i]
                     for i, (q, p) in enumerate(PAIRS)])
    assert same.sum() >= len(PAIRS) - 2, "the reference's round trip should rarely change the inputs"
    np.testing.assert_allclose(raw[same], _flag_scores(_rr_dir, PAIRS, max_length, False)[same], rtol=0, atol=1e-5)
    np.testing.assert_allclose(norm[same], _flag_scores(_rr_dir, PAIRS, max_length, True)[same], rtol=0, atol=1e-5)
    tok = ours.tokenizer
    for i in np.flatnonzero(~same):
        q, p = PAIRS[i]
        q_ids = tok(q, add_special_tokens=False)["input_ids"][: max_length * 3 // 4]
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        room = max_length - len(q_ids) - 4
        assert ours_ids[i] == [tok.cls_token_id, *q_ids, tok.sep_token_id, tok.sep_token_id,
                               *p_ids[:room], tok.sep_token_id]
    # The fixture must make scores differ, or parity would prove little.
    assert np.ptp(raw) > 0.1


@pytest.mark.parity
def test_parity_bert_cross_encoder(_rr_bert_dir: Path) -> None:
    pairs = [(q.lower(), p.lower()) for q, p in PAIRS]
    ours = CrossEncoderReranker.from_pretrained(_rr_bert_dir, device="cpu", max_length=48)
    assert ours._use_type_ids
    np.testing.assert_allclose(ours.compute_score(pairs, batch_size=4),
                               _flag_scores(_rr_bert_dir, pairs, 48, False), rtol=0, atol=1e-5)


def test_inputs_are_token_level_flag_layout(rr: CrossEncoderReranker) -> None:
    """<s> q[:3/4 L] </s></s> p </s>, passage cut to fit L (only_second)."""
    tok = rr.tokenizer
    rr2 = CrossEncoderReranker(rr.model, tok, max_length=32, device="cpu")
    q_ids = tok(LONG, add_special_tokens=False)["input_ids"]
    p_ids = tok(EMOJI + " " + LONG, add_special_tokens=False)["input_ids"]
    (ids, types), = rr2._encode_pairs([(LONG, EMOJI + " " + LONG)])
    q = q_ids[:24]
    assert ids == [tok.cls_token_id, *q, tok.sep_token_id, tok.sep_token_id, *p_ids[:32 - 24 - 4], tok.sep_token_id]
    assert len(ids) == 32 and types == [0] * 32
    (short, _), = rr2._encode_pairs([("fox", "dog")])
    fox, dog = (tok(t, add_special_tokens=False)["input_ids"] for t in ("fox", "dog"))
    assert short == [0, *fox, 2, 2, *dog, 2]


def test_a_very_long_query_is_tokenized_once_and_only_as_far_as_it_is_read(rr: CrossEncoderReranker) -> None:
    """A 100k-character query paired with 30 passages: the token-level layout of the whole
    texts' tokens, from one tokenization of a prefix of the query (not 30 of all of it: that
    took seconds per pair and stalled a budget or a server)."""
    tok = rr.tokenizer
    rr2 = CrossEncoderReranker(rr.model, tok, max_length=64, device="cpu")
    seen: list[int] = []

    class Counting:   # the reranker's own tokenizer, counting the characters it is given
        def __init__(self, inner):
            self.inner = inner

        def encode_batch(self, texts, **kw):
            seen.extend(len(t) for t in texts)
            return self.inner.encode_batch(texts, **kw)

        def encode(self, text, **kw):
            seen.append(len(text))
            return self.inner.encode(text, **kw)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    rr2._backend = Counting(rr2._backend)
    query = " ".join([LONG] * 200)
    passages = [f"{i} {EMOJI} {LONG}" if i % 3 else " ".join([LONG] * 200) for i in range(30)]
    assert len(query) > 100_000
    got = [ids for ids, _ in rr2._encode_pairs([(query, p) for p in passages])]
    q_ids = tok(query, add_special_tokens=False)["input_ids"][:48]
    for p, ids in zip(passages, got):
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        assert ids == [tok.cls_token_id, *q_ids, tok.sep_token_id, tok.sep_token_id, *p_ids[:64 - 48 - 4],
                       tok.sep_token_id]
    assert sum(seen) < 30 * 2_000 + 40_000, "the long texts were tokenized whole"


def test_batching_keeps_input_order(rr: CrossEncoderReranker) -> None:
    one = rr.compute_score(PAIRS, batch_size=1)
    many = rr.compute_score(PAIRS, batch_size=64)
    np.testing.assert_allclose(one, many, rtol=0, atol=1e-5)
    perm = np.random.default_rng(0).permutation(len(PAIRS))
    shuffled = rr.compute_score([PAIRS[i] for i in perm], batch_size=4)
    np.testing.assert_allclose(shuffled, one[perm], rtol=0, atol=1e-5)
    single = np.array([rr.compute_score([p])[0] for p in PAIRS[:4]])
    np.testing.assert_allclose(single, one[:4], rtol=0, atol=1e-5)


def test_normalize_is_sigmoid_of_logits(rr: CrossEncoderReranker) -> None:
    raw = rr.compute_score(PAIRS).astype(np.float64)
    np.testing.assert_allclose(rr.compute_score(PAIRS, normalize=True), 1 / (1 + np.exp(-raw)), atol=1e-6)


def test_empty_pairs(rr: CrossEncoderReranker) -> None:
    out = rr.compute_score([])
    assert out.shape == (0,) and out.dtype == np.float32
    order, scores = rr.rerank("q", [])
    assert order.shape == (0,) and scores.shape == (0,)


@pytest.mark.parametrize(
    ("pairs", "needle"),
    [
        ([("q", "p"), ("q",)], "pairs[1]"),
        ([("q", "p"), ("q", "p", "x")], "pairs[1]"),
        ([("q", 3)], "pairs[0]"),
        ([(None, "p")], "pairs[0]"),
        (("q", "p"), "pairs[0]"),  # one bare pair, not a list of pairs
        ("qp", "pairs must be a list"),
        ([["q", "p"], "qp"], "pairs[1]"),
        (5, "pairs must be a list"),
    ],
)
def test_bad_pairs_raise_type_error(rr: CrossEncoderReranker, pairs, needle: str) -> None:
    with pytest.raises(TypeError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        rr.compute_score(pairs)


def test_bad_settings(rr: CrossEncoderReranker, _rr_dir: Path) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        rr.compute_score(PAIRS, batch_size=0)
    with pytest.raises(ValueError, match="max_length=8193"):
        CrossEncoderReranker.from_pretrained(_rr_dir, max_length=8193)
    with pytest.raises(ValueError, match="max_length=2"):
        CrossEncoderReranker.from_pretrained(_rr_dir, max_length=2)
    with pytest.raises(TypeError, match="max_length"):
        CrossEncoderReranker.from_pretrained(_rr_dir, max_length="512")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dtype 'int4'"):  # int8 is the CPU path (tests/test_cpu_path.py)
        CrossEncoderReranker.from_pretrained(_rr_dir, dtype="int4")
    with pytest.raises(ValueError, match="top_k"):
        rr.rerank("q", ["a"], top_k=-1)
    with pytest.raises(TypeError, match=r"passages\[1\]"):
        rr.rerank("q", ["a", 1])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="query"):
        rr.rerank(None, ["a"])  # type: ignore[arg-type]


def test_rerank_orders_by_score(rr: CrossEncoderReranker) -> None:
    query = "fox"
    passages = [p for _, p in PAIRS]
    scores = rr.compute_score([(query, p) for p in passages])
    order, top = rr.rerank(query, passages)
    assert order.dtype == np.int64 and sorted(order.tolist()) == list(range(len(passages)))
    assert np.all(np.diff(top) <= 0)
    np.testing.assert_allclose(top, scores[order], atol=1e-6)
    order3, top3 = rr.rerank(query, passages, top_k=3)
    assert order3.tolist() == order[:3].tolist() and top3.shape == (3,)
    # Ties keep input order.
    tie_order, _ = rr.rerank(query, ["same", "same", "same"])
    assert tie_order.tolist() == [0, 1, 2]


def test_odd_text_does_not_crash(rr: CrossEncoderReranker) -> None:
    pairs = [("lone \ud800 surrogate", "ctrl \x00\x07\x1b text"), ("", ""), ("   ", "\n\t"), ("﷽" * 50, "x" * 5000)]
    out = rr.compute_score(pairs)
    assert out.shape == (4,) and np.all(np.isfinite(out))


def test_index_reopens_the_reranker_with_its_settings(tmp_path: Path, _rr_dir: Path,
                                                      rr: CrossEncoderReranker) -> None:
    """An index stores its pipeline and rebuilds its reranker from it on load (model, max_length)."""
    from hybridrag.index import HybridIndex

    pipe = {"name": "bm25-rerank", "encoder": {"kind": "none"}, "chunking": {"max_tokens": 64, "overlap": 0},
            "dense": {"enabled": False}, "sparse": {"enabled": False}, "colbert": {"enabled": False},
            "bm25": {"enabled": True}, "fusion": {"method": "weighted", "weights": {"bm25": 1.0}},
            "rerank": {"enabled": True, "model": str(_rr_dir), "max_length": 64, "k": 5}}
    with HybridIndex.create(tmp_path / "i", pipe) as idx:
        idx.add([{"id": "d0", "text": LATIN}])
    want = CrossEncoderReranker.from_pretrained(_rr_dir, device="cpu", max_length=64).compute_score(PAIRS)
    assert not np.allclose(want, rr.compute_score(PAIRS))   # max_length changes the scores
    with HybridIndex.load(tmp_path / "i") as idx:
        assert idx.reranker.max_length == 64
        np.testing.assert_allclose(idx.reranker.compute_score(PAIRS), want, atol=1e-6)


def test_load_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match="does not exist"):
        CrossEncoderReranker.from_pretrained(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        CrossEncoderReranker.from_pretrained(empty)
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-reranker"):
        CrossEncoderReranker.from_pretrained("no-such-org/no-such-reranker")


def test_multi_label_model_is_rejected(tmp_path: Path, _rr_dir: Path) -> None:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    cfg = AutoConfig.from_pretrained(_rr_dir)
    cfg.num_labels = 2
    folder = tmp_path / "two"
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(folder)
    for f in _rr_dir.iterdir():
        if "token" in f.name or f.name.endswith(".model"):
            shutil.copy(f, folder / f.name)
    with pytest.raises(ModelLoadError, match="num_labels=2"):
        CrossEncoderReranker.from_pretrained(folder)


def test_oom_halves_batch_and_retries(rr: CrossEncoderReranker, monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    expected = rr.compute_score(PAIRS, batch_size=8)
    real_forward = rr.model.forward
    sizes: list[int] = []

    def forward(**batch):
        sizes.append(batch["input_ids"].shape[0])
        if batch["input_ids"].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(**batch)

    monkeypatch.setattr(rr.model, "forward", forward)
    with caplog.at_level(logging.WARNING, logger="hybridrag"):
        got = rr.compute_score(PAIRS, batch_size=8)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert sizes[:3] == [8, 4, 2] and max(sizes[2:]) <= 2
    assert "batch_size=2" in caplog.text

    def always_oom(**batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(rr.model, "forward", always_oom)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        rr.compute_score(PAIRS[:2], batch_size=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_default(_rr_dir: Path) -> None:
    gpu = CrossEncoderReranker.from_pretrained(_rr_dir)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float16
    cpu = CrossEncoderReranker.from_pretrained(_rr_dir, device="cpu")
    np.testing.assert_allclose(gpu.compute_score(PAIRS), cpu.compute_score(PAIRS), atol=2e-2)
