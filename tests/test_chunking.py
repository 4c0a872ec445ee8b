"""Tests for :mod:`hybridrag.chunking` (``Chunker``).

Token counts are checked against the Hugging Face tokenizers themselves (the tiny trained
XLM-R tokenizer from :mod:`tiny_models` and the real all-MiniLM-L6-v2 WordPiece tokenizer),
not against the chunker's own counter. Span invariants (``text == source[start:end]``) and
coverage (no non-whitespace character lost) are checked on hand-written documents, on the
bad inputs of the issue, and with hypothesis on generated text.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridrag.chunking import MAX_TOKENS_LIMIT, Chunker
from hybridrag.errors import DocumentError
from hybridrag.types import Chunk

import tiny_models


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def xlmr_tok() -> Any:
    return tiny_models._xlmr_tokenizer()


@pytest.fixture(scope="module")
def minilm_tok(minilm_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    assert tok.is_fast
    return tok


def ref_count(tok: Any, text: str) -> int:
    """Token count by the reference tokenizer itself (no special tokens, no truncation)."""
    if tok is None:
        return Chunker(None).count_tokens(text)
    return len(tok(text, add_special_tokens=False, truncation=False)["input_ids"])


def check_invariants(chunks: list[Chunk], source: str, doc_id: str, max_tokens: int, tok: Any = None,
                     metadata: dict[str, Any] | None = None) -> None:
    """Every documented property of a chunk list, for one source text."""
    prev_start = -1
    for i, ch in enumerate(chunks):
        assert isinstance(ch, Chunk)
        assert ch.text == source[ch.start:ch.end], (i, ch.start, ch.end)
        assert 0 <= ch.start < ch.end <= len(source)
        assert ch.text == ch.text.strip(), f"chunk {i} is not stripped: {ch.text[:40]!r}"
        assert ch.ordinal == i
        assert ch.chunk_id == f"{doc_id}#{i}"
        assert ch.doc_id == doc_id
        assert ch.start > prev_start, "chunks must come in source order"
        prev_start = ch.start
        assert ch.n_tokens <= max_tokens
        assert dict(ch.metadata) == (metadata or {})
    assert_covered(chunks, source)


def assert_covered(chunks: list[Chunk], source: str) -> None:
    """No non-whitespace character of ``source`` lies outside every chunk span."""
    # Vectorised so that it stays fast on 10 MB sources: a difference array over the spans,
    # and a whitespace test on the code points.
    diff = np.zeros(len(source) + 1, dtype=np.int64)
    np.add.at(diff, np.array([c.start for c in chunks], dtype=np.int64), 1)
    np.add.at(diff, np.array([c.end for c in chunks], dtype=np.int64), -1)
    covered = np.cumsum(diff)[: len(source)] > 0
    codes = np.frombuffer(source.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    space = np.isin(codes, _WHITESPACE)
    lost = np.flatnonzero(~space & ~covered)
    assert lost.size == 0, f"characters lost at {lost[:10].tolist()}: {[source[k] for k in lost[:10]]}"


_WHITESPACE = np.array([c for c in range(0x3000 + 1) if chr(c).isspace()], dtype=np.uint32)


def no_surrogates(text: str) -> str:
    """``text`` as the tokenizer sees it: lone surrogates (which it rejects) become U+FFFD."""
    return re.sub("[\ud800-\udfff]", "\ufffd", text)


MARKDOWN = """# Introduction

Hybrid retrieval combines dense vectors with sparse lexical weights. It also uses ColBERT token
vectors for late interaction! Does it work? Yes.

Second paragraph of the introduction, a little shorter.

## Method

```python
# not a heading: inside a code fence
x = 1
```

The method section talks about FAISS and an inverted index.

### Details
  ## indented heading (up to three spaces is still a heading)

Final words.
"""


# --------------------------------------------------------------------------- spans and token counts


@pytest.mark.parametrize("which", ["words", "xlmr", "minilm"])
@pytest.mark.parametrize("max_tokens,overlap", [(8, 0), (16, 4), (40, 10), (512, 64)])
def test_spans_and_token_counts(which: str, max_tokens: int, overlap: int, request: pytest.FixtureRequest) -> None:
    tok = None if which == "words" else request.getfixturevalue(f"{which}_tok")
    chunker = Chunker(tok, max_tokens=max_tokens, overlap=overlap)
    meta = {"source": "intro.md", "year": 2024}
    chunks = chunker.chunk("doc", MARKDOWN, meta)
    assert chunks
    check_invariants(chunks, MARKDOWN, "doc", max_tokens, tok, meta)
    for ch in chunks:
        n = ref_count(tok, ch.text)
        assert n <= max_tokens, f"{which}: chunk {ch.ordinal} has {n} > {max_tokens} tokens: {ch.text!r}"
        assert ch.n_tokens == n, "n_tokens must be the tokenizer's own count of the chunk text"


def test_count_tokens_matches_tokenizer(xlmr_tok: Any, minilm_tok: Any) -> None:
    text = "Retrieval augmented generation 混合检索 🚀 l'été, naïve café."
    for tok in (xlmr_tok, minilm_tok):
        assert Chunker(tok).count_tokens(text) == ref_count(tok, text)
    # The word counter: words, punctuation marks and CJK characters.
    assert Chunker(None).count_tokens("Hello, world! 中文") == 6
    with pytest.raises(TypeError, match="bytes"):
        Chunker(None).count_tokens(b"abc")  # type: ignore[arg-type]


def test_accepts_raw_tokenizers_object(xlmr_tok: Any) -> None:
    raw = xlmr_tok.backend_tokenizer
    a = Chunker(raw, max_tokens=16, overlap=4).chunk("d", MARKDOWN)
    b = Chunker(xlmr_tok, max_tokens=16, overlap=4).chunk("d", MARKDOWN)
    assert a == b


def test_saved_tokenizer_truncation_is_ignored(minilm_tok: Any) -> None:
    # A tokenizer that truncates at 8 tokens must not make the chunker undercount.
    from tokenizers import Tokenizer

    raw = Tokenizer.from_str(minilm_tok.backend_tokenizer.to_str())
    raw.enable_truncation(8)
    chunker = Chunker(raw, max_tokens=20, overlap=0)
    text = "one two three four five six seven eight nine ten eleven twelve"
    assert chunker.count_tokens(text) == ref_count(minilm_tok, text) == 12


# --------------------------------------------------------------------------- structure


def test_markdown_headings_start_new_chunks() -> None:
    chunks = Chunker(None, max_tokens=4096, overlap=0).chunk("d", MARKDOWN)
    starts = [ch.text.split("\n", 1)[0] for ch in chunks]
    assert starts == ["# Introduction", "## Method", "### Details", "## indented heading (up to three spaces is still a heading)"]
    assert "# not a heading" in chunks[1].text, "a '#' line inside a code fence must not split"
    check_invariants(chunks, MARKDOWN, "d", 4096)


def test_headings_can_be_disabled() -> None:
    chunks = Chunker(None, max_tokens=4096, overlap=0, split_headings=False).chunk("d", MARKDOWN)
    assert len(chunks) == 1
    assert chunks[0].text == MARKDOWN.strip()


def test_hash_without_space_is_not_a_heading() -> None:
    text = "intro text\n#hashtag is not a heading\n####### seven is not one either"
    assert len(Chunker(None, max_tokens=100, overlap=0).chunk("d", text)) == 1


def test_paragraphs_are_packed_and_respected() -> None:
    paras = [" ".join(f"p{i}w{j}" for j in range(6)) + "." for i in range(10)]  # 7 tokens each
    text = "\n\n".join(paras)
    # 7-token paragraphs, max 16: two per chunk, never a paragraph cut.
    chunks = Chunker(None, max_tokens=16, overlap=0).chunk("d", text)
    check_invariants(chunks, text, "d", 16)
    assert [ch.text for ch in chunks] == ["\n\n".join(paras[i:i + 2]) for i in range(0, 10, 2)]
    # Large budget: everything in one chunk.
    assert [ch.text for ch in Chunker(None, max_tokens=512, overlap=0).chunk("d", text)] == [text]


def test_long_paragraph_splits_on_sentences(minilm_tok: Any) -> None:
    sentences = [f"Sentence number {i} talks about dense and sparse retrieval." for i in range(12)]
    text = " ".join(sentences)
    max_tokens = 24
    assert ref_count(minilm_tok, text) > max_tokens
    chunks = Chunker(minilm_tok, max_tokens=max_tokens, overlap=4).chunk("d", text)
    check_invariants(chunks, text, "d", max_tokens, minilm_tok)
    for ch in chunks:
        assert ch.text.endswith("."), "chunks must end at sentence boundaries"
        assert ch.text.startswith("Sentence number"), "chunks must start at sentence boundaries"
        assert ref_count(minilm_tok, ch.text) <= max_tokens
    # Sentence units do not overlap.
    assert all(b.start >= a.end for a, b in zip(chunks, chunks[1:]))
    assert "".join(ch.text for ch in chunks).replace(" ", "") == text.replace(" ", "")


def test_cjk_sentences_split_on_full_stops() -> None:
    text = "混合检索结合了稠密向量和稀疏词权重。中文文本没有空格分隔单词。日本語のテキストには単語の区切りがありません。"
    chunks = Chunker(None, max_tokens=24, overlap=0).chunk("d", text)
    check_invariants(chunks, text, "d", 24)
    assert [ch.text for ch in chunks] == ["混合检索结合了稠密向量和稀疏词权重。", "中文文本没有空格分隔单词。",
                                          "日本語のテキストには単語の区切りがありません。"]


# --------------------------------------------------------------------------- token windows and overlap


@pytest.mark.parametrize("overlap", [0, 1, 5, 12])
def test_overlap_windows_for_one_long_sentence(overlap: int) -> None:
    # Word counter: one word = one token, so window sizes and overlaps are exact.
    words = [f"w{i}" for i in range(200)]
    text = " ".join(words)
    m = 32
    chunks = Chunker(None, max_tokens=m, overlap=overlap).chunk("d", text)
    check_invariants(chunks, text, "d", m)
    assert len(chunks) > 1
    for ch in chunks:
        assert ch.n_tokens == len(ch.text.split()) <= m
        # Windows start and end on whole words.
        assert ch.start == 0 or text[ch.start - 1] == " "
        assert ch.end == len(text) or text[ch.end] == " "
    for a, b in zip(chunks, chunks[1:]):
        shared = len(text[b.start:a.end].split()) if b.start < a.end else 0
        # The overlap is widened to a word start, never shrunk (reach: max_tokens // 8).
        assert overlap <= shared <= overlap + max(1, m // 8)
    # The first window is full, the next one starts ``overlap`` words before its end.
    assert chunks[0].n_tokens == m
    assert chunks[1].text.split()[0] == words[m - overlap]


def test_overlap_windows_with_real_tokenizer(minilm_tok: Any) -> None:
    text = " ".join(f"token{i} retrieval" for i in range(150))  # no sentence end: one unit
    m, ov = 40, 10
    chunks = Chunker(minilm_tok, max_tokens=m, overlap=ov).chunk("d", text)
    check_invariants(chunks, text, "d", m, minilm_tok)
    assert len(chunks) > 3
    for ch in chunks:
        assert ref_count(minilm_tok, ch.text) <= m
    for a, b in zip(chunks, chunks[1:]):
        assert b.start < a.end, "consecutive windows must overlap"
        assert ref_count(minilm_tok, text[b.start:a.end]) >= ov - 1


# --------------------------------------------------------------------------- determinism, ids, metadata


def test_deterministic_ids_and_chunks(xlmr_tok: Any) -> None:
    a = Chunker(xlmr_tok, max_tokens=16, overlap=4).chunk("doc-7", MARKDOWN, {"k": [1, 2]})
    b = Chunker(tiny_models._xlmr_tokenizer(), max_tokens=16, overlap=4).chunk("doc-7", MARKDOWN, {"k": [1, 2]})
    assert a == b
    assert [c.chunk_id for c in a] == [f"doc-7#{i}" for i in range(len(a))]
    # Metadata is copied per chunk: changing one does not change the others or the input.
    meta = {"k": 1}
    chunks = Chunker(None, max_tokens=8, overlap=0).chunk("d", MARKDOWN, meta)
    chunks[0].metadata["k"] = 2  # type: ignore[index]
    assert meta == {"k": 1} and chunks[1].metadata == {"k": 1}


def test_index_reopens_the_chunker_with_its_settings(tmp_path: Path, m3_dir: Path) -> None:
    """An index stores its pipeline and rebuilds its chunker from it on load: the same sizes,
    counted with the encoder's tokenizer, so documents added later are cut as before."""
    from transformers import AutoTokenizer

    from hybridrag.index import HybridIndex

    pipe = {"name": "tiny-m3", "encoder": {"kind": "m3", "model": str(m3_dir), "max_length": 128},
            "chunking": {"max_tokens": 16, "overlap": 4}}
    with HybridIndex.create(tmp_path / "i", pipe) as idx:
        idx.add([{"id": "d0", "text": "first"}])
    want = Chunker(AutoTokenizer.from_pretrained(m3_dir), max_tokens=16, overlap=4).chunk("d", MARKDOWN)
    assert want != Chunker(None, max_tokens=16, overlap=4).chunk("d", MARKDOWN)   # the tokenizer matters
    with HybridIndex.load(tmp_path / "i") as idx:
        assert (idx.chunker.max_tokens, idx.chunker.overlap) == (16, 4)
        assert idx.chunker.chunk("d", MARKDOWN) == want
    assert repr(Chunker(None, max_tokens=16, overlap=4)) == "Chunker(tokenizer=None, max_tokens=16, overlap=4)"


# --------------------------------------------------------------------------- up to 8192 tokens


def test_chunks_up_to_8192_tokens(xlmr_tok: Any) -> None:
    rng = random.Random(0)
    vocab = [w for s in tiny_models.CORPUS[:12] for w in s.split()]
    words = [rng.choice(vocab) for _ in range(9000)]
    text = " ".join(words)  # corpus words, some ending sentences: packed sentences up to the limit
    assert ref_count(xlmr_tok, text) > MAX_TOKENS_LIMIT
    chunks = Chunker(xlmr_tok, max_tokens=MAX_TOKENS_LIMIT, overlap=128).chunk("big", text)
    check_invariants(chunks, text, "big", MAX_TOKENS_LIMIT, xlmr_tok)
    assert len(chunks) >= 2
    counts = [ref_count(xlmr_tok, ch.text) for ch in chunks]
    assert max(counts) <= MAX_TOKENS_LIMIT
    # Windows are filled: the first one is within an eighth of the limit (word-boundary back-off).
    assert counts[0] >= MAX_TOKENS_LIMIT - MAX_TOKENS_LIMIT // 8
    # A text under the limit stays whole.
    small = " ".join(words[:1500])
    assert ref_count(xlmr_tok, small) <= MAX_TOKENS_LIMIT
    assert [c.text for c in Chunker(xlmr_tok, max_tokens=MAX_TOKENS_LIMIT, overlap=0).chunk("s", small)] == [small]


# --------------------------------------------------------------------------- bad input from the issue


@pytest.mark.parametrize("text", ["", " ", "\n\n\t  \r\n", "\u3000\u00a0 \u2003"])
@pytest.mark.parametrize("which", ["words", "xlmr"])
def test_empty_and_whitespace_only_give_no_chunks(text: str, which: str, request: pytest.FixtureRequest) -> None:
    tok = None if which == "words" else request.getfixturevalue("xlmr_tok")
    assert Chunker(tok, max_tokens=16, overlap=4).chunk("d", text) == []


@pytest.mark.parametrize("which", ["words", "xlmr", "minilm"])
def test_control_characters(which: str, request: pytest.FixtureRequest) -> None:
    tok = None if which == "words" else request.getfixturevalue(f"{which}_tok")
    text = "start\x00mid\x01dle \x07bell\x1b[0m esc\x7f del\x0b\x0c vt ff\u200b zw\ufeff bom " * 20 + "\x00\x00\x00"
    chunks = Chunker(tok, max_tokens=16, overlap=4).chunk("d", text)
    assert chunks
    check_invariants(chunks, text, "d", 16, tok)
    for ch in chunks:
        assert ref_count(tok, ch.text) <= 16


@pytest.mark.parametrize("which", ["words", "xlmr", "minilm"])
def test_lone_surrogates(which: str, request: pytest.FixtureRequest) -> None:
    tok = None if which == "words" else request.getfixturevalue(f"{which}_tok")
    text = ("alpha \ud800 beta \udfff gamma \udc80\ud83d delta. " * 30) + "\ud800"
    chunks = Chunker(tok, max_tokens=12, overlap=3).chunk("d", text)
    check_invariants(chunks, text, "d", 12)
    # The surrogates stay in the chunk text (offsets line up with the source).
    assert sum(ch.text.count("\ud800") for ch in chunks) >= 31
    if tok is not None:
        for ch in chunks:  # the tokenizer itself rejects surrogates: count the cleaned text
            assert ref_count(tok, no_surrogates(ch.text)) <= 12


def _ten_mb_line() -> str:
    rng = random.Random(1)
    vocab = ["retrieval", "dense", "sparse", "vectors", "the", "of", "quick", "fox,", "lazy", "dog;",
             "中文", "テキスト", "{\"k\":", "1}", "https://example.org/a?b=c"]
    parts: list[str] = []
    size = 0
    while size < 10_000_000:
        w = rng.choice(vocab)
        parts.append(w)
        size += len(w) + 1
    return " ".join(parts)[:10_000_000]


def test_single_10mb_line_word_counter() -> None:
    text = _ten_mb_line()
    assert "\n" not in text and len(text) == 10_000_000
    chunks = Chunker(None, max_tokens=512, overlap=32).chunk("huge", text)
    check_invariants(chunks, text, "huge", 512)
    assert chunks[-1].end == len(text.rstrip())


def test_single_long_line_real_tokenizer(xlmr_tok: Any) -> None:
    # 1 MB without any newline or sentence end, tokenized in slices (slice_chars) by the real tokenizer.
    text = _ten_mb_line()[:1_000_000]
    chunker = Chunker(xlmr_tok, max_tokens=1024, overlap=64)
    chunks = chunker.chunk("huge", text)
    check_invariants(chunks, text, "huge", 1024)
    for ch in chunks[:5] + chunks[-5:]:
        assert ref_count(xlmr_tok, ch.text) <= 1024


def test_long_run_without_whitespace(xlmr_tok: Any) -> None:
    # No whitespace anywhere: slices must cut at token boundaries and lose nothing.
    text = "abcdefghij" * 25_000  # 250k chars, more than two slices
    chunks = Chunker(xlmr_tok, max_tokens=2048, overlap=0, slice_chars=100_000).chunk("run", text)
    check_invariants(chunks, text, "run", 2048)
    assert "".join(ch.text for ch in chunks) == text  # overlap 0: exact partition
    for ch in chunks:
        assert ref_count(xlmr_tok, ch.text) <= 2048


@pytest.mark.parametrize("which", ["words", "xlmr", "minilm"])
@pytest.mark.parametrize("text", [
    "混合检索结合了稠密向量和稀疏词权重中文文本没有空格分隔单词" * 12,
    "日本語のテキストには単語の区切りがありませんひらがなカタカナ" * 12,
    "ภาษาไทยไม่มีการเว้นวรรคระหว่างคำการค้นหาแบบผสม" * 12,
])
def test_scripts_without_spaces(which: str, text: str, request: pytest.FixtureRequest) -> None:
    tok = None if which == "words" else request.getfixturevalue(f"{which}_tok")
    m = 16
    chunks = Chunker(tok, max_tokens=m, overlap=4).chunk("d", text)
    check_invariants(chunks, text, "d", m, tok)
    # (The tiny XLM-R vocabulary has no Thai: the whole run is one unknown token there.)
    assert len(chunks) > 1 or ref_count(tok, text) <= m
    for ch in chunks:
        assert ref_count(tok, ch.text) <= m
    for a, b in zip(chunks, chunks[1:]):
        assert b.start < a.end, "windows over one unbroken run overlap"


# --------------------------------------------------------------------------- invalid settings and arguments


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"max_tokens": MAX_TOKENS_LIMIT + 1}, ValueError, "8193"),
    ({"max_tokens": 100_000}, ValueError, "100000"),
    ({"max_tokens": 7}, ValueError, "max_tokens=7"),
    ({"max_tokens": 0}, ValueError, "max_tokens=0"),
    ({"max_tokens": -5}, ValueError, "-5"),
    ({"max_tokens": 64, "overlap": 64}, ValueError, "overlap=64"),
    ({"max_tokens": 64, "overlap": 65}, ValueError, "overlap=65"),
    ({"overlap": -1}, ValueError, "overlap=-1"),
    ({"max_tokens": 512.0}, TypeError, "max_tokens"),
    ({"max_tokens": "512"}, TypeError, "max_tokens"),
    ({"max_tokens": True}, TypeError, "max_tokens"),
    ({"overlap": 1.5}, TypeError, "overlap"),
    ({"overlap": None}, TypeError, "overlap"),
    ({"slice_chars": 999}, ValueError, "slice_chars=999"),
    ({"slice_chars": "big"}, TypeError, "slice_chars"),
    ({"split_headings": "yes"}, TypeError, "split_headings"),
])
def test_invalid_settings(kwargs: dict[str, Any], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        Chunker(None, **kwargs)


def test_limits_are_inclusive() -> None:
    assert Chunker(None, max_tokens=MAX_TOKENS_LIMIT, overlap=MAX_TOKENS_LIMIT - 1).max_tokens == MAX_TOKENS_LIMIT
    assert Chunker(None, max_tokens=8, overlap=7).overlap == 7


@pytest.mark.parametrize("bad", ["bert-base-uncased", 42, object()])
def test_invalid_tokenizer(bad: Any) -> None:
    with pytest.raises(TypeError, match="fast tokenizer"):
        Chunker(bad)


@pytest.mark.parametrize("args,exc,match", [
    (("", "text"), DocumentError, "doc_id"),
    ((5, "text"), TypeError, "doc_id"),
    ((None, "text"), TypeError, "doc_id"),
    (("d", b"bytes"), TypeError, "bytes"),
    (("d", None), TypeError, "NoneType"),
    (("d", "text", ["not", "a", "mapping"]), TypeError, "list"),
])
def test_invalid_chunk_arguments(args: tuple[Any, ...], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        Chunker(None).chunk(*args)


def test_document_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Chunker(None).chunk("", "text")


# --------------------------------------------------------------------------- property test

_ALPHABET = st.one_of(
    st.sampled_from(list("abc xyz  \n\n\t.!?#`~-*\u3002\uff01\u300d\u201d)")),
    st.sampled_from(list("中文字日本語テキストไทยภาษา\u00e9\u0301\ufb01")),
    st.sampled_from(["# ", "\n## ", "\n```\n", "\n\n", ". ", "\u00a0", "\x00", "\x07", "\ud800", "\udc00",
                     "\U0001f680", "\r\n", "\u2028"]),
    st.characters(),  # anything else hypothesis likes (no surrogates by default)
)
_TEXT = st.lists(_ALPHABET, max_size=400).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_TEXT, max_tokens=st.integers(8, 40), overlap_frac=st.floats(0, 0.99),
       split_headings=st.booleans())
def test_property_spans_and_coverage_word_counter(text: str, max_tokens: int, overlap_frac: float,
                                                  split_headings: bool) -> None:
    overlap = int(overlap_frac * max_tokens)
    chunker = Chunker(None, max_tokens=max_tokens, overlap=overlap, split_headings=split_headings)
    chunks = chunker.chunk("p", text)
    check_invariants(chunks, text, "p", max_tokens)
    for ch in chunks:
        assert ch.n_tokens == chunker.count_tokens(ch.text)
    assert (chunks == []) == (text.strip() == "")
    assert chunker.chunk("p", text) == chunks


@pytest.fixture(scope="module")
def xlmr_chunkers(xlmr_tok: Any) -> dict[tuple[int, int], Chunker]:
    return {}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(text=_TEXT, max_tokens=st.sampled_from([8, 13, 32]), overlap=st.sampled_from([0, 3, 7]))
def test_property_spans_and_coverage_xlmr(xlmr_tok: Any, xlmr_chunkers: dict[tuple[int, int], Chunker],
                                          text: str, max_tokens: int, overlap: int) -> None:
    key = (max_tokens, overlap)
    if key not in xlmr_chunkers:
        xlmr_chunkers[key] = Chunker(xlmr_tok, max_tokens=max_tokens, overlap=overlap)
    chunks = xlmr_chunkers[key].chunk("p", text)
    check_invariants(chunks, text, "p", max_tokens)
    assert (chunks == []) == (text.strip() == "")
    for ch in chunks:
        assert ref_count(xlmr_tok, no_surrogates(ch.text)) == ch.n_tokens <= max_tokens


def test_windows_start_strictly_later_when_tokens_share_an_offset(xlmr_tok: Any) -> None:
    # Found by the property test: with a large overlap, the next window began on a token
    # that starts at the same character as the previous window, repeating its span.
    chunks = Chunker(xlmr_tok, max_tokens=8, overlap=7).chunk("p", "caaaaaaa" * 3)
    starts = [c.start for c in chunks]
    assert starts == sorted(set(starts)), starts


def test_a_script_the_tokenizer_lacks_is_cut_like_the_word_counter_cuts_it(minilm_tok: Any) -> None:
    """An English WordPiece gives one [UNK] for a whole Thai phrase: counted as one token, a
    7,000-character Thai text was one chunk. A long unknown token counts a token per character
    now, so chunks stay as short as the word counter makes them; short ones ("∼10") as before."""
    th = ("ประเทศไทยมีประชากรประมาณหกสิบล้านคน กรุงเทพมหานครเป็นเมืองหลวงและเมืองที่ใหญ่ที่สุดของประเทศ "
          "ภาษาไทยเป็นภาษาราชการ ") * 60
    assert len(minilm_tok.tokenize(th)) < 200   # the tokenizer's own count: a few [UNK]s
    chunks = Chunker(minilm_tok, max_tokens=128, overlap=16).chunk("th", th)
    assert len(chunks) > 40 and max(len(c.text.replace(" ", "")) for c in chunks) <= 128   # was one chunk
    covered = np.zeros(len(th), dtype=bool)
    for c in chunks:
        assert c.text == th[c.start:c.end]
        covered[c.start:c.end] = True
    assert all(covered[i] or th[i].isspace() for i in range(len(th)))   # nothing lost
    words = Chunker(None, max_tokens=128, overlap=16).chunk("th", th)
    assert abs(len(chunks) - len(words)) <= len(words) // 4
    c = Chunker(minilm_tok, max_tokens=128)
    assert c.count_tokens("∼10 and ∼22nt") == ref_count(minilm_tok, "∼10 and ∼22nt")   # short unknowns: one each
    assert c.count_tokens("กรุงเทพมหานคร") == len("กรุงเทพมหานคร") > ref_count(minilm_tok, "กรุงเทพมหานคร")
