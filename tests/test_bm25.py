"""BM25: analysers, the term-count encoder, and scores equal to rank_bm25 / bm25s on the same tokens."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from hybridrag.analysis import SubwordAnalyzer, UnicodeAnalyzer, WordAnalyzer
from hybridrag.encoders.bm25 import BM25Encoder
from hybridrag.errors import ConfigError, IndexFormatError
from hybridrag.stores.sparse import SparseIndex
from tests.tiny_models import CORPUS, _xlmr_tokenizer

ENGLISH = [
    "the cat sat on the mat the cat",
    "the dog sat on the log",
    "the cat and the dog are friends",
    "a quick brown fox jumps over the lazy dog",
    "the the the the",
    "",
    "vitamin d deficiency and bone fractures in older adults",
    "aspirin reduces the risk of heart attack",
    "the cat",
    "dense vectors sparse lexical weights the cat the dog",
]
QUERIES = ["the cat", "cat cat dog", "vitamin deficiency", "the", "unknownword", "sat on the mat", ""]


def bm25_index(encoder: BM25Encoder, texts: list[str]) -> SparseIndex:
    idx = SparseIndex(**encoder.store_config())
    idx.add(np.arange(len(texts)), encoder.encode_documents(texts))
    return idx


def all_scores(idx: SparseIndex, rows: list[dict[int, float]], n: int) -> list[np.ndarray]:
    return idx.score(rows, [np.arange(n)] * len(rows))


@pytest.mark.parity
@pytest.mark.parametrize("analyzer", ["word", "subword", "unicode"])
def test_okapi_equals_rank_bm25(analyzer):
    import rank_bm25
    if analyzer == "word":
        an, corpus, queries = WordAnalyzer(), ENGLISH, QUERIES
    elif analyzer == "unicode":   # words, stems and CJK bigrams in one vocabulary
        an, corpus = UnicodeAnalyzer(language="english"), list(dict.fromkeys(CORPUS)) + ENGLISH
        queries = ["混合检索", "中文文本 单词", "retrieving retrieval", "日本語", "the cat", "الاسترجاع"]
    else:   # multilingual: Chinese, Japanese, Arabic, emoji, French
        an, corpus = SubwordAnalyzer(_xlmr_tokenizer()), list(dict.fromkeys(CORPUS))
        queries = ["混合检索", "中文文本 单词", "retrieval retrieval search", "日本語", "🚀 fun"]
    enc = BM25Encoder(an, variant="okapi")
    idx = bm25_index(enc, corpus)
    toks = an.tokenize(corpus)
    ref = rank_bm25.BM25Okapi(toks)
    ref_neg = {w for w, v in ref.idf.items() if v == ref.average_idf * ref.epsilon}
    if analyzer == "word":
        assert "the" in ref_neg   # terms in most documents take the epsilon path
    got = all_scores(idx, enc.encode_queries(queries), len(corpus))
    for q, g in zip(an.tokenize(queries), got):
        np.testing.assert_allclose(g, ref.get_scores(q), rtol=1e-6, atol=1e-6)


@pytest.mark.parity
def test_okapi_equals_rank_bm25_after_incremental_adds_and_deletes():
    import rank_bm25
    an = WordAnalyzer()
    enc = BM25Encoder(an, variant="okapi")
    idx = SparseIndex(**enc.store_config())
    idx.add(np.arange(5), enc.encode_documents(ENGLISH[:5]))
    idx.search(enc.encode_queries(["cat"]), 3)
    idx.add(np.arange(5, 10), enc.encode_documents(ENGLISH[5:]))
    ref = rank_bm25.BM25Okapi(an.tokenize(ENGLISH))
    for q, g in zip(an.tokenize(QUERIES), all_scores(idx, enc.encode_queries(QUERIES), 10)):
        np.testing.assert_allclose(g, ref.get_scores(q), rtol=1e-6, atol=1e-6)
    idx.remove(np.array([0, 4]))
    keep = [j for j in range(10) if j not in (0, 4)]
    ref = rank_bm25.BM25Okapi(an.tokenize([ENGLISH[j] for j in keep]))
    for q, g in zip(an.tokenize(QUERIES), all_scores(idx, enc.encode_queries(QUERIES), 10)):
        np.testing.assert_allclose(g[keep], ref.get_scores(q), rtol=1e-6, atol=1e-6)


@pytest.mark.parity
def test_lucene_equals_bm25s():
    import bm25s
    an = WordAnalyzer()
    corpus = [t for t in ENGLISH if t]
    enc = BM25Encoder(an, variant="lucene")
    idx = bm25_index(enc, corpus)
    # bm25s fed the same tokens through its token-ids path
    ids = [[enc.vocabulary[t] for t in doc] for doc in an.tokenize(corpus)]
    vocab = {str(i): i for i in range(len(enc.vocabulary))}
    ref = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    ref.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocab), show_progress=False)
    for q, g in zip(an.tokenize(QUERIES), all_scores(idx, enc.encode_queries(QUERIES), len(corpus))):
        qids = [enc.vocabulary[t] for t in q if t in enc.vocabulary]
        if not qids:
            assert not g.any()
            continue
        np.testing.assert_allclose(g, ref.get_scores(qids), rtol=1e-5, atol=1e-6)


def test_top_k_matches_rank_bm25_order():
    import rank_bm25
    an = WordAnalyzer()
    enc = BM25Encoder(an, variant="okapi")
    idx = bm25_index(enc, ENGLISH)
    ref = rank_bm25.BM25Okapi(an.tokenize(ENGLISH))
    scores, slots = idx.search(enc.encode_queries(QUERIES), 4)
    for q, s, i in zip(an.tokenize(QUERIES), scores, slots):
        r = ref.get_scores(q)
        n = int((i >= 0).sum())
        np.testing.assert_allclose(s[:n], np.sort(r[r != 0])[::-1][:n], rtol=1e-6)


def test_word_analyzer():
    an = WordAnalyzer()
    assert an.tokenize(["Hello, World! Héllo_wörld 42 中文"]) == [["hello", "world", "héllo_wörld", "42", "中文"]]
    assert WordAnalyzer(lowercase=False).tokenize(["Hi there"]) == [["Hi", "there"]]
    assert WordAnalyzer(stopwords="english").tokenize(["The cat is on the mat"]) == [["cat", "mat"]]
    assert WordAnalyzer(stopwords=["Cat"]).tokenize(["the cat"]) == [["the"]]
    assert an.tokenize([""]) == [[]]
    with pytest.raises(TypeError, match="single str"):
        an.tokenize("hello")
    with pytest.raises(ConfigError, match="stopwords"):
        WordAnalyzer(stopwords="klingon")


def test_stemmer():
    import Stemmer  # noqa: F401  (a test dependency)
    an = WordAnalyzer(stopwords="english", stemmer="english")
    assert an.tokenize(["The running dogs"]) == [["run", "dog"]]
    with pytest.raises(ConfigError, match="Snowball"):
        WordAnalyzer(stemmer="klingon")


def test_stemmer_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "Stemmer", None)
    with pytest.raises(ImportError, match=r"pip install 'hybridrag\[stem\]'"):
        WordAnalyzer(stemmer="english")


def test_subword_analyzer_drops_special_tokens():
    tok = _xlmr_tokenizer()
    an = SubwordAnalyzer(tok)
    out = an.tokenize(["中文文本没有空格分隔单词。", ""])
    assert out[0] and not set(out[0]) & set(tok.all_special_tokens) and out[1] == []
    with pytest.raises(TypeError):
        SubwordAnalyzer(42)


def test_encoder_vocabulary_and_round_trip(tmp_path):
    enc = BM25Encoder(WordAnalyzer(), variant="lucene", k1=1.2)
    docs = enc.encode_documents(["a b b c", "c d"])
    assert docs == [{0: 1.0, 1: 2.0, 2: 1.0}, {2: 1.0, 3: 1.0}]
    assert enc.encode_queries(["b b zzz"]) == [{1: 2.0}]
    assert "zzz" not in enc.vocabulary
    assert enc.store_config() == {"weighting": "bm25lucene", "k1": 1.2, "b": 0.75, "epsilon": 0.25}
    enc.save_vocabulary(tmp_path / "v1.json")
    back = BM25Encoder(WordAnalyzer())
    back.load_vocabulary(tmp_path / "v1.json")
    assert back.vocabulary == enc.vocabulary
    enc.encode_documents(["d e"])   # a commit writes only the terms it added: ids 4 and up
    enc.save_vocabulary(tmp_path / "v2.json", start=4)
    assert json.loads((tmp_path / "v2.json").read_text(encoding="utf-8")) == ["e"]
    with pytest.raises(FileExistsError):
        enc.save_vocabulary(tmp_path / "v1.json")
    (tmp_path / "bad.json").write_text('{"a": 1}')
    with pytest.raises(IndexFormatError):
        back.load_vocabulary(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="variant"):
        BM25Encoder(variant="bm42")


def test_encode_returns_encode_output():
    import hybridrag.encoders.base as base
    enc = BM25Encoder()
    out = enc.encode(["x y y"])
    assert isinstance(out, base.EncodeOutput) and out.sparse == [{0: 1.0, 1: 2.0}] and out.dense is None
    assert enc.encode(["y q"], is_query=True).sparse == [{1: 1.0}]


HALF = ["the cat sat", "a dog ran", "cat and dog", "a bird flew"]   # "cat": 2 of 4 documents


def _bm25_pipeline(**bm25):
    return {"name": "bm25", "encoder": {"kind": "none"}, "dense": {"enabled": False},
            "sparse": {"enabled": False}, "colbert": {"enabled": False},
            "bm25": {"enabled": True, **bm25}, "fusion": {"weights": {"bm25": 1.0}}}


@pytest.mark.parity
def test_default_finds_a_term_in_half_the_documents(tmp_path):
    """Okapi's idf log((N-n+.5)/(n+.5)) is 0 when n = N/2 (rank_bm25 scores every document 0);
    the default (lucene) idf log(1 + ...) is > 0 for every term, as bm25s scores it."""
    import bm25s
    import rank_bm25

    from hybridrag.index import HybridIndex

    an = WordAnalyzer()
    assert not rank_bm25.BM25Okapi(an.tokenize(HALF)).get_scores(["cat"]).any()
    enc = BM25Encoder(an)
    ids = [[enc.vocabulary.setdefault(t, len(enc.vocabulary)) for t in doc] for doc in an.tokenize(HALF)]
    ref = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    ref.index(bm25s.tokenization.Tokenized(ids=ids, vocab={str(i): i for i in range(len(enc.vocabulary))}),
              show_progress=False)
    want = ref.get_scores([enc.vocabulary["cat"]])
    idx = HybridIndex.create(tmp_path / "i", _bm25_pipeline())
    try:
        idx.add([{"id": f"d{i}", "text": t} for i, t in enumerate(HALF)])
        hits = idx.search("cat", k=4)
        assert sorted(h.doc_id for h in hits) == ["d0", "d2"]
        for h in hits:
            assert h.scores["bm25"] == pytest.approx(want[int(h.doc_id[1:])], rel=1e-5)
    finally:
        idx.close()


@pytest.mark.parity
def test_okapi_stays_available_and_an_index_keeps_its_variant(tmp_path):
    """An index keeps the variant it was built with: the manifest stores the whole pipeline
    (every key, the default included), so indexes built when okapi was the default reload as okapi."""
    import rank_bm25

    from hybridrag.index import HybridIndex

    corpus = [t for t in ENGLISH if t]
    ref = rank_bm25.BM25Okapi(WordAnalyzer().tokenize(corpus))
    idx = HybridIndex.create(tmp_path / "i", _bm25_pipeline(variant="okapi"))
    idx.add([{"id": f"d{i}", "text": t} for i, t in enumerate(corpus)])
    idx.close()
    manifest = json.loads((tmp_path / "i" / "manifest.json").read_text())
    assert manifest["pipeline"]["bm25"]["variant"] == "okapi"
    assert manifest["stores"]["bm25"]["config"]["weighting"] == "bm25okapi"
    idx = HybridIndex.load(tmp_path / "i")
    try:
        assert idx.pipeline.bm25.variant == "okapi"
        got = {h.doc_id: h.scores["bm25"] for h in idx.search("cat dog", k=len(corpus))}
        want = ref.get_scores(["cat", "dog"])
        assert got and all(s == pytest.approx(want[int(d[1:])], rel=1e-5) for d, s in got.items())
    finally:
        idx.close()
