"""The script-aware analyser (hybridrag/analysis.py UnicodeAnalyzer), the subword analyser's
[UNK] warning, and which analyser a new pipeline / an existing index gets."""
from __future__ import annotations

import json
import re
import warnings

import pytest

from hybridrag.analysis import SubwordAnalyzer, UnicodeAnalyzer, WordAnalyzer
from hybridrag.config import PipelineConfig
from hybridrag.errors import ConfigError
from tests.test_config import PIPELINES


def terms(text: str, **kw) -> list[str]:
    return UnicodeAnalyzer(**kw).tokenize([text])[0]


# ---------------------------------------------------------------- segmentation

def test_chinese_becomes_overlapping_bigrams_and_punctuation_splits_runs():
    assert terms("检索系统很好。中") == ["检索", "索系", "系统", "统很", "很好", "中"]


def test_lone_character_run_is_a_unigram():
    assert terms("中 文") == ["中", "文"]
    assert terms("猫") == ["猫"]


def test_japanese_kana_and_kanji_form_one_run():
    assert terms("東京の天気") == ["東京", "京の", "の天", "天気"]
    # the prolonged sound mark (script Common) stays inside a katakana word
    assert terms("コーヒー") == ["コー", "ーヒ", "ヒー"]
    # halfwidth katakana is NFKC-normalised to fullwidth first
    assert terms("ｺｰﾋｰ") == terms("コーヒー")


def test_korean_hangul_bigrams_per_space_separated_word():
    assert terms("한국어 검색") == ["한국", "국어", "검색"]


def test_thai_bigrams_keep_vowel_and_tone_marks_with_their_base():
    # ที่ = ท + ี (vowel sign) + ่ (tone mark); นี่ likewise: two units, one bigram
    assert terms("ที่นี่") == ["ที่นี่"]
    assert terms("ภาษาไทย") == ["ภา", "าษ", "ษา", "าไ", "ไท", "ทย"]
    # no term starts with a combining mark
    for t in terms("สวัสดีครับ ยินดีต้อนรับ"):
        assert not re.match(r"[\u0e31\u0e34-\u0e3a\u0e47-\u0e4e]", t), t


def test_hindi_vowel_signs_stay_inside_words():
    text = "हिन्दी भाषा"
    assert terms(text) == ["हिन्दी", "भाषा"]
    assert len(WordAnalyzer().tokenize([text])[0]) > 2   # re's \w+ splits at each vowel sign


def test_arabic_words_with_and_without_diacritics():
    assert terms("اللغة العربية") == ["اللغة", "العربية"]   # teh marbuta kept (normalization "full")
    assert terms("كَتَبَ الوَلَدُ") == ["كتب", "الولد"] == terms("كتب الولد")
    basic = UnicodeAnalyzer(normalization="basic")
    assert basic.tokenize(["كَتَبَ الوَلَدُ"]) == [["كَتَبَ", "الوَلَدُ"]]


def test_mixed_latin_and_han():
    assert terms("BM25检索系统 works") == ["bm25", "检索", "索系", "系统", "works"]
    assert terms("2020年") == ["2020", "年"]


def test_nfkc_and_lowercasing():
    assert terms("ＡＢＣ１２３ ﬁle") == ["abc123", "file"]
    assert terms("Hello WORLD Straße") == ["hello", "world", "strasse"]
    assert UnicodeAnalyzer(normalization="basic").tokenize(["Straße"]) == [["straße"]]
    assert terms("Hello WORLD", lowercase=False) == ["Hello", "WORLD"]


def test_no_space_scripts_of_different_kinds_do_not_share_a_bigram():
    assert terms("中文ภาษา") == ["中文", "ภา", "าษ", "ษา"]


# ---------------------------------------------------------------- stemming and stopwords

def test_english_stemming_and_stopwords_match_the_word_analyser_on_english():
    import Stemmer

    text = "The running cats are jumping over the fences"
    got = terms(text, language="english", stopwords="english")
    assert got == WordAnalyzer(stopwords="english", stemmer="english").tokenize([text])[0]
    assert got == Stemmer.Stemmer("english").stemWords(["running", "cats", "jumping", "over", "fences"])


def test_each_script_stemmed_by_its_language():
    import Stemmer

    got = terms("running бегущими 中文", language=["english", "russian"])
    assert got == [Stemmer.Stemmer("english").stemWord("running"),
                   Stemmer.Stemmer("russian").stemWord("бегущими"), "中文"]
    assert got[1] != "бегущими"
    # a language list without Cyrillic leaves Cyrillic words as they are
    assert terms("бегущими", language=["english", "arabic"]) == ["бегущими"]
    # one language: words of other scripts are left as they are too
    assert terms("running бегущими", language="russian") == [
        "running", Stemmer.Stemmer("russian").stemWord("бегущими")]
    assert terms("running бегущими", language="english")[1] == "бегущими"


def test_auto_picks_a_language_per_script():
    import Stemmer

    assert terms("running हिन्दी", language="auto") == [
        Stemmer.Stemmer("english").stemWord("running"), Stemmer.Stemmer("hindi").stemWord("हिन्दी")]


@pytest.mark.parametrize("language,needle", [
    (["english", "german"], "one language per script"),
    (["auto", "english"], "auto"),
    ("klingon", "klingon"),
])
def test_bad_languages_are_config_errors(language, needle):
    with pytest.raises(ConfigError, match=needle):
        UnicodeAnalyzer(language=language)


def test_bad_arguments_are_type_errors():
    with pytest.raises(TypeError, match="lowercase"):
        UnicodeAnalyzer(lowercase="yes")
    with pytest.raises(TypeError, match="language"):
        UnicodeAnalyzer(language=[3])
    with pytest.raises(TypeError, match="single str"):
        UnicodeAnalyzer().tokenize("not a list")


# ---------------------------------------------------------------- subword warning

def test_subword_warns_once_when_a_text_is_mostly_unknown_tokens():
    from transformers import PreTrainedTokenizerFast

    from tests.tiny_models import _wordpiece_tokenizer

    tok = PreTrainedTokenizerFast(tokenizer_object=_wordpiece_tokenizer(), unk_token="[UNK]",
                                  pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    an = SubwordAnalyzer(tok)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        an.tokenize(["the quick brown fox", "中文文本"])   # the tiny vocabulary covers these
    with pytest.warns(UserWarning, match="unicode") as rec:
        an.tokenize(["ภาษาไทยง่าย", "สวัสดีครับ"])
        an.tokenize(["ภาษาไทยง่าย"])
    assert len([w for w in rec if "unknown token" in str(w.message)]) == 1


# ---------------------------------------------------------------- pipelines and indexes

def test_new_pipelines_get_the_unicode_analyser():
    assert PipelineConfig().bm25.analyzer == "unicode"
    off = PipelineConfig.from_toml(PIPELINES / "offline.toml")
    assert off.bm25.analyzer == "unicode" and off.bm25.language == ["english"]
    assert PipelineConfig.from_dict({"bm25": {"language": "auto"}}).bm25.language == ["auto"]


@pytest.mark.parametrize("data,needle", [
    ({"bm25": {"language": ["english", "french"]}}, "one language per script"),
    ({"bm25": {"language": "nonsense"}}, "nonsense"),
    ({"bm25": {"language": 5}}, "bm25.language"),
    ({"bm25": {"analyzer": "word", "language": "english"}}, "needs bm25.analyzer = 'unicode'"),
    ({"bm25": {"language": "english", "stemmer": "english", "analyzer": "unicode"}}, None),
    ({"bm25": {"analyzer": "whitespace"}}, "bm25.analyzer"),
])
def test_language_validation(data, needle):
    if needle is None:
        PipelineConfig.from_dict(data)
        return
    with pytest.raises(ConfigError, match=needle):
        PipelineConfig.from_dict(data)


def test_stored_pipeline_without_analyzer_key_keeps_word():
    d = PipelineConfig().to_dict()
    del d["bm25"]["analyzer"]
    assert PipelineConfig.from_dict(d).bm25.analyzer == "unicode"   # a new pipeline
    assert PipelineConfig.from_stored(d).bm25.analyzer == "word"    # an index's pipeline
    d["bm25"]["analyzer"] = "subword"
    assert PipelineConfig.from_stored(d).bm25.analyzer == "subword"


BM25_ONLY = {
    "name": "bm25-only", "encoder": {"kind": "none"}, "chunking": {"max_tokens": 64, "overlap": 0},
    "dense": {"enabled": False}, "sparse": {"enabled": False}, "colbert": {"enabled": False},
    "bm25": {"enabled": True}, "fusion": {"method": "weighted", "weights": {"bm25": 1.0}},
}
DOCS = ["混合检索结合了稠密向量和稀疏词权重。", "中文文本没有空格分隔单词", "vitamin d deficiency in older adults"]


def _build(path, pipeline):
    from hybridrag.index import HybridIndex
    from hybridrag.types import Document

    idx = HybridIndex.create(path, pipeline)
    idx.add([Document(f"d{i}", t) for i, t in enumerate(DOCS)])
    idx.commit()
    idx.close()


def _drop_stored_keys(path, keys):
    """Rewrite the manifest as an older writer would have: without the given bm25 keys."""
    from hybridrag.storage.manifest import MANIFEST
    from hybridrag.storage.manifest import manifest_digest as _manifest_digest
    from hybridrag.storage.manifest import manifest_text as _manifest_text

    mf = path / MANIFEST
    m = json.loads(mf.read_text(encoding="utf-8"))
    for k in keys:
        del m["pipeline"]["bm25"][k]
    m["manifest_sha256"] = _manifest_digest(m)
    mf.write_text(_manifest_text(m), encoding="utf-8")


@pytest.mark.parametrize("old", ["word-explicit", "word-without-key"])
def test_index_built_with_the_word_analyser_keeps_it(tmp_path, old):
    from hybridrag.index import HybridIndex

    path = tmp_path / "idx"
    _build(path, {**BM25_ONLY, "bm25": {"enabled": True, "analyzer": "word"}})
    if old == "word-without-key":
        _drop_stored_keys(path, ["analyzer", "language"])
    idx = HybridIndex.load(path)
    try:
        assert idx.pipeline.bm25.analyzer == "word"
        assert isinstance(idx.bm25.analyzer, WordAnalyzer)
        # the word analyser's term for a Chinese clause is the whole clause: a bigram query misses
        assert idx.search("检索", k=3) == []
        assert [h.doc_id for h in idx.search("中文文本没有空格分隔单词", k=3)] == ["d1"]
    finally:
        idx.close()


def test_new_index_uses_the_unicode_analyser(tmp_path):
    from hybridrag.index import HybridIndex

    path = tmp_path / "idx"
    _build(path, BM25_ONLY)
    idx = HybridIndex.load(path)
    try:
        assert isinstance(idx.bm25.analyzer, UnicodeAnalyzer)
        assert [h.doc_id for h in idx.search("检索", k=3)] == ["d0"]
    finally:
        idx.close()


def test_unicode_pipeline_with_only_stemmer_stems_by_it(tmp_path):
    """A pipeline file written for the word analyser (``stemmer = "english"``) that now gets
    the unicode default keeps its stemming."""
    from hybridrag.index import HybridIndex

    path = tmp_path / "idx"
    _build(path, {**BM25_ONLY, "bm25": {"enabled": True, "stemmer": "english", "stopwords": "english"}})
    idx = HybridIndex.load(path)
    try:
        assert isinstance(idx.bm25.analyzer, UnicodeAnalyzer)
        assert idx.bm25.analyzer.language == ["english"]
        assert [h.doc_id for h in idx.search("deficient adult", k=3)] == ["d2"]   # stems match
    finally:
        idx.close()


@pytest.mark.parametrize("bm25, ref", [
    ({"language": ["english", "russian"], "stopwords": "english"},
     lambda: UnicodeAnalyzer(language=["english", "russian"], stopwords="english")),
    ({"analyzer": "word", "stopwords": "english", "stemmer": "english"},
     lambda: WordAnalyzer(stopwords="english", stemmer="english")),
])
def test_index_reopens_the_analyser_with_its_settings(tmp_path, bm25, ref):
    """An index stores its pipeline and rebuilds its BM25 analyser from it on load: the same
    languages, stopwords and stemmer, so queries are analysed as the documents were."""
    from hybridrag.index import HybridIndex

    path = tmp_path / "idx"
    _build(path, {**BM25_ONLY, "bm25": {"enabled": True, **bm25}})
    text = ["The runners бегущими 检索系统"]
    want = ref().tokenize(text)
    assert want != UnicodeAnalyzer().tokenize(text)   # the settings change the terms
    idx = HybridIndex.load(path)
    try:
        assert type(idx.bm25.analyzer) is type(ref()) and idx.bm25.analyzer.tokenize(text) == want
    finally:
        idx.close()


# ---------------------------------------------------------------- normalization = "full"

@pytest.mark.parametrize("text,full,basic", [
    ("❤️ 👨\u200d👩\u200d👧", [], ["\ufe0f", "\u200d", "\u200d"]),           # emoji joiners and selectors: no terms
    ("كَتَبَ الطَّالِبُ", ["كتب", "الطالب"], ["كَتَبَ", "الطَّالِبُ"]),       # harakat
    ("العـــربية", ["العربية"], ["العـــربية"]),                             # tatweel (teh marbuta kept)
    ("أحمد إسلام آمن على", ["احمد", "اسلام", "امن", "علي"], ["أحمد", "إسلام", "آمن", "على"]),
    ("हिन्\u200dदी", ["हिन्दी"], ["हिन्\u200dदी"]),                             # zero-width joiner inside a word
    ("Straße STRASSE", ["strasse", "strasse"], ["straße", "strasse"]),      # case folding
    ("İSTANBUL", ["istanbul"], ["i\u0307stanbul"]),                         # Turkish dotted capital I
    ("ΣΟΦΙΑ σοφία ΟΔΟΣ", ["σοφια", "σοφια", "οδοσ"], ["σοφια", "σοφία", "οδος"]),
    ("٢٠١٩ ४२", ["2019", "42"], ["٢٠١٩", "४२"]),                             # decimal digits
    ("Donau\u00addampf", ["donaudampf"], ["donau", "dampf"]),               # soft hyphen
    ("คำ\u200bที่", ["คํา", "ที่"], ["คํา", "ที่"]),                            # zero-width space still splits
    ("vitamin D café", ["vitamin", "d", "café"], ["vitamin", "d", "café"]),  # the rest as before
])
def test_full_normalization_folds_what_basic_kept_apart(text, full, basic):
    assert UnicodeAnalyzer().tokenize([text]) == [full]
    assert UnicodeAnalyzer(normalization="basic").tokenize([text]) == [basic]


def test_full_normalization_maps_every_decimal_digit_and_keeps_stemming():
    import sys
    import unicodedata

    digits = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Nd" and c > 127]
    got = UnicodeAnalyzer().tokenize([" ".join(digits)])[0]
    assert got == [str(unicodedata.decimal(d)) for d in digits]
    ar = UnicodeAnalyzer(language="arabic")
    assert ar.tokenize(["الطَّالِبُ"]) == ar.tokenize(["الطالب"])
    with pytest.raises(ConfigError, match="normalization"):
        UnicodeAnalyzer(normalization="nfkc")
    with pytest.raises(ConfigError, match="bm25.normalization"):
        PipelineConfig.from_dict({"bm25": {"normalization": "strong"}})


def test_an_index_made_before_the_setting_keeps_basic_normalization(tmp_path):
    """The terms an index holds were made with its normalization: an old index (no key in its
    manifest) keeps "basic" so its queries still meet its documents; a new one gets "full",
    where a query without Arabic vowel marks finds a vocalised document."""
    from hybridrag.index import HybridIndex

    assert PipelineConfig().bm25.normalization == "full"
    for name, drop in (("new", False), ("old", True)):
        path = tmp_path / name
        pipe = {**BM25_ONLY, "bm25": {"enabled": True, "normalization": "basic"}} if drop else BM25_ONLY
        idx = HybridIndex.create(path, pipe)   # an older writer: basic, and no key in its manifest
        idx.add([{"id": "ar", "text": "كَتَبَ الطَّالِبُ الدَّرْسَ"}, {"id": "de", "text": "Die Straße ist lang"}])
        idx.close()
        if drop:
            _drop_stored_keys(path, ["normalization"])
        with HybridIndex.load(path) as idx:
            assert idx.pipeline.bm25.normalization == ("basic" if drop else "full")
            assert idx.bm25.analyzer.normalization == idx.pipeline.bm25.normalization
            if drop:   # the old index: its documents' terms and its queries' terms agree as before
                assert [h.doc_id for h in idx.search("Straße", k=1)] == ["de"]
                assert idx.search("STRASSE", k=1) == []
            else:
                assert [h.doc_id for h in idx.search("الطالب", k=1)] == ["ar"]
                assert [h.doc_id for h in idx.search("STRASSE", k=1)] == ["de"]
