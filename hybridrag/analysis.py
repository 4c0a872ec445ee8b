"""Text analysers: turn texts into lists of terms for lexical (BM25) indexing.

* :class:`UnicodeAnalyzer` - script-aware (the default of new pipelines): NFKC, lowercase;
  scripts written without spaces (Han, Hiragana, Katakana, Hangul, Thai, Lao, Khmer,
  Myanmar) become overlapping character bigrams, every other script Unicode words
  (combining marks stay with their base), optionally stemmed per script's language.
* :class:`WordAnalyzer`    - Python ``re`` word tokens (``\\w+``), optional lowercasing,
  stopword removal and Snowball stemming (PyStemmer). A run of Chinese or Thai becomes
  one term and Indic vowel signs split words: use it for space-separated Latin text only
  (indexes built with it keep it).
* :class:`SubwordAnalyzer` - the tokens of a Hugging Face tokenizer, without special
  tokens. It is only as good as the tokenizer's vocabulary: an English WordPiece vocabulary
  maps most Chinese characters and all of Thai to ``[UNK]`` (it warns then); prefer
  :class:`UnicodeAnalyzer` for scripts without spaces.

An index builds its analyser from its pipeline's ``[bm25]`` section (``HybridIndex.bm25``).
Tested by ``tests/test_analysis.py`` and ``tests/test_bm25.py``.
"""
from __future__ import annotations

import re
import unicodedata
import warnings
from typing import Any, Iterable, Sequence, Union

import regex

from hybridrag.errors import ConfigError

__all__ = ["AUTO_LANGUAGES", "Analyzer", "ENGLISH_STOPWORDS", "NORMALIZATIONS", "SNOWBALL_LANGUAGES",
           "SubwordAnalyzer", "UnicodeAnalyzer", "WordAnalyzer", "languages_by_script"]

_WORD = re.compile(r"\w+", re.UNICODE)

# The English stopword list used by Lucene/Elasticsearch's ``_english_`` analyser
# (and by bm25s as "en"), so BM25 results are comparable with those systems.
ENGLISH_STOPWORDS: tuple[str, ...] = (
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into",
    "is", "it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then",
    "there", "these", "they", "this", "to", "was", "will", "with",
)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not a single str; wrap it: [text]")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
    return out


def _stopword_set(stopwords: str | Iterable[str] | None, lowercase: bool) -> frozenset[str]:
    """The set to filter with for ``None``, ``"english"`` or a list of words."""
    if stopwords is None:
        return frozenset()
    if isinstance(stopwords, str):
        if stopwords != "english":
            raise ConfigError(f"stopwords={stopwords!r} is not a known list; use None, 'english' or a list of words")
        return frozenset(ENGLISH_STOPWORDS)
    words = list(stopwords)
    for w in words:
        if not isinstance(w, str):
            raise TypeError(f"stopwords must be strings, got {w!r}")
    return frozenset(w.lower() for w in words) if lowercase else frozenset(words)


def _snowball(language: str, what: str) -> Any:
    """A PyStemmer Snowball stemmer for ``language`` (``what`` names the setting in errors)."""
    try:
        import Stemmer  # PyStemmer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("pip install 'hybridrag[stem]'") from exc
    langs = Stemmer.algorithms()
    if language not in langs:
        raise ConfigError(f"{what}={language!r} is not a Snowball language; choose one of {sorted(langs)}")
    return Stemmer.Stemmer(language)


class WordAnalyzer:
    """Split on Unicode word boundaries (``\\w+``), then lowercase, drop stopwords, stem.

    ``stopwords``: None, ``"english"`` or an iterable of words (compared after
    lowercasing when ``lowercase``). ``stemmer``: None or a Snowball language name
    such as ``"english"`` (needs ``pip install 'hybridrag[stem]'``). Stopwords are
    removed before stemming.
    """

    def __init__(
        self,
        lowercase: bool = True,
        stopwords: str | Iterable[str] | None = None,
        stemmer: str | None = None,
    ) -> None:
        if not isinstance(lowercase, bool):
            raise TypeError(f"lowercase must be a bool, got {lowercase!r}")
        self.lowercase = lowercase
        self._stop = _stopword_set(stopwords, lowercase)
        self.stemmer = stemmer
        self._stem = None
        if stemmer is not None:
            if not isinstance(stemmer, str):
                raise TypeError(f"stemmer must be None or a language name such as 'english', got {stemmer!r}")
            self._stem = _snowball(stemmer, "stemmer")

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        """Terms of each text, in order (repeats kept)."""
        out: list[list[str]] = []
        stop, stem = self._stop, self._stem
        for text in _check_texts(texts):
            toks = _WORD.findall(text.lower() if self.lowercase else text)
            if stop:
                toks = [t for t in toks if t not in stop]
            if stem is not None:
                toks = stem.stemWords(toks)
            out.append(toks)
        return out


# Scripts written without spaces between words, as code point ranges of their word
# characters (letters, digits, combining marks; not punctuation such as "。" or "๏"). Their
# runs become overlapping character bigrams (as Lucene's CJKAnalyzer): without a dictionary
# a word boundary cannot be found, and bigrams match any word of two or more characters
# with no vocabulary to maintain. Han, Hiragana and Katakana form one run (Japanese mixes
# them inside words; "ー" U+30FC lengthens katakana words; U+3099/U+309A are kana voicing
# marks; variation selectors follow Han). Ranges, not regex script properties: a
# property class is several times slower to scan.
_NOSPACE_SCRIPTS = {
    "Han+Kana": ("\u2e80-\u2fd5\u3005\u3007\u3021-\u3029\u3038-\u303b\u3041-\u3096\u3099-\u309f"
                 "\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
                 "\ufe00-\ufe0f\U0001b000-\U0001b16f\U00020000-\U0003ffff\U000e0100-\U000e01ef"),
    "Hangul": "\u1100-\u11ff\u3131-\u318e\ua960-\ua97c\uac00-\ud7a3\ud7b0-\ud7fb",
    "Thai": "\u0e01-\u0e3a\u0e40-\u0e4e\u0e50-\u0e59",
    "Lao": "\u0e81-\u0ec6\u0ec8-\u0ece\u0ed0-\u0ed9\u0edc-\u0edf",
    "Khmer": "\u1780-\u17d3\u17d7\u17dc\u17dd\u17e0-\u17e9",
    "Myanmar": "\u1000-\u1049\u1050-\u109f\ua9e0-\ua9fe\uaa60-\uaa7f",
}
_NOSPACE_CHAR = re.compile("[" + "".join(_NOSPACE_SCRIPTS.values()) + "]")
# Splits a word into (other, run, other, run, ..., other): one capture per no-space run,
# a run being of one script only.
_NOSPACE_SPLIT = re.compile("(" + "|".join(f"[{r}]+" for r in _NOSPACE_SCRIPTS.values()) + ")")
# regex's \w (unlike re's) includes combining marks (Unicode category M), so Hindi and
# Arabic vowel signs stay inside their word; it also includes the no-space scripts,
# which _NOSPACE_SPLIT then takes out of the words that hold them.
_UWORD = regex.compile(r"\w+")
_UNIT = regex.compile(r"\P{M}\p{M}*|\p{M}+")   # a base character with its marks
_MARK = regex.compile(r"\p{M}")

# ``normalization = "full"`` (UnicodeAnalyzer): one table applied after NFKC, before case folding.
#  * invisible format characters go (Unicode's default-ignorable code points: soft hyphen, zero-width
#    joiner and non-joiner, direction marks, word joiner, BOM, variation selectors, tags), so
#    ``"हिन्\u200dदी"`` is ``"हिन्दी"``, ``"Donau\u00addampf"`` one word and the ``U+FE0F`` of an
#    emoji no term; the zero-width space, a word boundary (Thai uses it so), becomes a space;
#  * every decimal digit becomes its ASCII digit (``"٢٠١٩"`` -> ``"2019"``, as Lucene's
#    DecimalDigitFilter);
#  * Arabic as Lucene's ArabicNormalizationFilter: short vowels and other marks (harakat) and the
#    tatweel go; alef with hamza or madda -> alef, alef maksura -> yeh; but teh marbuta stays (mapped
#    to heh it cost the Snowball Arabic stemmer 0.012 nDCG@10 on MLQA-R ar, benchmarks/bench_languages.py);
#  * Greek letters lose their accents and breathings (as Lucene's GreekLowerCaseFilter), so an
#    upper-case ``"ΣΟΦΙΑ"`` (written without them) matches ``"σοφία"``.
# Then ``str.casefold`` instead of ``lower`` (``"Straße"`` matches ``"STRASSE"``; final sigma is
# sigma), and the dot that case folding leaves on a Turkish ``"İ"`` (``i`` + U+0307) goes.


# The digit zeros of Unicode 14's decimal digit blocks (Python 3.11's unicodedata), but ASCII's:
# ``[c for c in range(0x110000) if unicodedata.decimal(chr(c), -1) == 0 and c > 127]``, listed
# here because scanning every code point at import takes 0.1 s.
_DIGIT_ZEROS = (
    0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66, 0xDE6, 0xE50, 0xED0,
    0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50,
    0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10, 0x104A0, 0x10D30, 0x11066, 0x110F0,
    0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0, 0x11650, 0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50,
    0x11D50, 0x11DA0, 0x16A60, 0x16AC0, 0x16B50, 0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140,
    0x1E2F0, 0x1E950, 0x1FBF0,
)


def _full_normalization_table() -> dict[int, int | str | None]:
    table: dict[int, int | str | None] = {}
    drop = [(0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x180B, 0x180F), (0x200C, 0x200F),
            (0x202A, 0x202E), (0x2060, 0x206F), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0x1BCA0, 0x1BCA3),
            (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
            (0x0640, 0x0640), (0x064B, 0x065F), (0x0670, 0x0670), (0x06D6, 0x06DC), (0x06DF, 0x06E8),
            (0x06EA, 0x06ED)]   # the invisible ones, then Arabic: tatweel, harakat, Quranic marks
    for a, b in drop:
        table.update(dict.fromkeys(range(a, b + 1)))
    table[0x200B] = " "
    table.update({0x0622: 0x0627, 0x0623: 0x0627, 0x0625: 0x0627, 0x0649: 0x064A})
    for zero in _DIGIT_ZEROS:   # each the zero of a block of ten decimal digits
        if unicodedata.decimal(chr(zero), -1) == 0:   # (one this Python's Unicode knows)
            table.update({zero + k: ord("0") + k for k in range(10)})
    for cp in (*range(0x0370, 0x0400), *range(0x1F00, 0x2000)):
        base = unicodedata.normalize("NFD", chr(cp))
        if len(base) > 1 and unicodedata.name(base[0], "").startswith("GREEK") and \
                all(unicodedata.category(m) == "Mn" for m in base[1:]):
            table[cp] = ord(base[0])
    return table


_FULL_TABLE = _full_normalization_table()
NORMALIZATIONS = ("basic", "full")


# The script each Snowball language is written in (Latin unless listed), and the language
# "auto" picks for a script.
_SNOWBALL_SCRIPT = {
    "arabic": "Arabic", "persian": "Arabic", "armenian": "Armenian", "greek": "Greek",
    "hindi": "Devanagari", "nepali": "Devanagari", "russian": "Cyrillic", "serbian": "Cyrillic",
    "tamil": "Tamil", "yiddish": "Hebrew",
}
AUTO_LANGUAGES: dict[str, str] = {
    "Latin": "english", "Cyrillic": "russian", "Greek": "greek", "Arabic": "arabic",
    "Armenian": "armenian", "Devanagari": "hindi", "Tamil": "tamil",
}


# PyStemmer's Snowball algorithms (Stemmer.algorithms() of PyStemmer 2.2+), so a pipeline
# can be checked without PyStemmer installed.
SNOWBALL_LANGUAGES: tuple[str, ...] = (
    "arabic", "armenian", "basque", "catalan", "czech", "danish", "dutch", "dutch_porter", "english",
    "esperanto", "estonian", "finnish", "french", "german", "greek", "hindi", "hungarian", "indonesian",
    "irish", "italian", "lithuanian", "nepali", "norwegian", "persian", "polish", "porter", "portuguese",
    "romanian", "russian", "serbian", "sesotho", "spanish", "swedish", "tamil", "turkish", "yiddish",
)


def languages_by_script(languages: Sequence[str]) -> dict[str, str]:
    """``{script: language}`` for a list of Snowball languages (one per script) or ``["auto"]``.

    Raises :class:`ConfigError` for two languages of one script, ``"auto"`` beside others,
    or a name that is not a Snowball language.
    """
    for lang in languages:
        if not isinstance(lang, str):
            raise TypeError(f"language must be a name or a list of names, got {lang!r}")
    if "auto" in languages:
        if len(languages) > 1:
            raise ConfigError(f"language 'auto' cannot be listed with other languages, got {list(languages)}")
        return dict(AUTO_LANGUAGES)
    by_script: dict[str, str] = {}
    for lang in languages:
        if lang not in SNOWBALL_LANGUAGES:
            raise ConfigError(f"language {lang!r} is not a Snowball language nor 'auto'; "
                              f"choose from {list(SNOWBALL_LANGUAGES)}")
        script = _SNOWBALL_SCRIPT.get(lang, "Latin")
        if script in by_script:
            raise ConfigError(f"languages {by_script[script]!r} and {lang!r} are both written in {script} "
                              "script; list one language per script")
        by_script[script] = lang
    return by_script


class UnicodeAnalyzer:
    """Script-aware analyser: NFKC, lowercase, bigrams for scripts without spaces, stemmed words.

    Text is NFKC-normalised (fullwidth ``Ａ`` -> ``A``, ligatures split) and lowercased, then
    cut into runs by script:

    * Han + Hiragana + Katakana, Hangul, Thai, Lao, Khmer, Myanmar: overlapping bigrams of
      characters (``"检索系统"`` -> ``检索 索系 系统``); a run of one character is one term.
      A character's combining marks stay with it.
    * every other script: Unicode words (letters, digits, ``_`` and combining marks), so
      ``"हिन्दी"`` stays one word where ``re``'s ``\\w+`` splits it at each vowel sign.

    ``normalization``: ``"full"`` (the default; new pipelines) also removes invisible format
    characters, maps every decimal digit to ASCII, normalises Arabic (harakat, tatweel, alef
    and alef maksura forms) and Greek accents, and case-folds (``ß`` -> ``ss``) instead of lowercasing;
    ``"basic"`` is NFKC and lowercase only (indexes made before the setting).
    ``language``: None (no stemming), a Snowball language name (``"english"``), a list of
    them (one per script, e.g. ``["english", "russian", "arabic"]``), or ``"auto"`` (each
    script its usual language: :data:`AUTO_LANGUAGES`). A word is stemmed by the language
    of its script, found from its first character; words of other scripts are kept as
    they are. ``stopwords``: None, ``"english"`` or a list of words, removed before stemming.
    Stemming needs ``pip install 'hybridrag[stem]'``.
    """

    def __init__(
        self,
        lowercase: bool = True,
        language: str | Iterable[str] | None = None,
        stopwords: str | Iterable[str] | None = None,
        normalization: str = "full",
    ) -> None:
        if not isinstance(lowercase, bool):
            raise TypeError(f"lowercase must be a bool, got {lowercase!r}")
        if normalization not in NORMALIZATIONS:
            raise ConfigError(f"normalization={normalization!r} is not one of {NORMALIZATIONS}")
        self.lowercase = lowercase
        self.normalization = normalization
        self._full = normalization == "full"
        self._stop = _stopword_set(stopwords, lowercase)
        if self._full and lowercase:
            self._stop = frozenset(w.casefold() for w in self._stop)
        if language is None or isinstance(language, str):
            langs = [language] if language else []
        else:
            langs = list(language)
        by_script = languages_by_script(langs)
        self.language: list[str] = langs
        # script -> (a pattern matching one character of it, its stemmer)
        self._stemmers = [(regex.compile(rf"\p{{Script={script}}}"), _snowball(lang, "language"))
                          for script, lang in by_script.items()]
        self._stemmer_of_char: dict[str, Any] = {}

    def _stemmer_for(self, ch: str) -> Any:
        try:
            return self._stemmer_of_char[ch]
        except KeyError:
            found = next((stem for pat, stem in self._stemmers if pat.match(ch)), None)
            if len(self._stemmer_of_char) < 65536:
                self._stemmer_of_char[ch] = found
            return found

    def _stem_words(self, words: list[str]) -> list[str]:
        if len(self._stemmers) == 1:
            # A Snowball stemmer leaves words of other scripts as they are (its suffix rules
            # name its own letters only), so one stemmer needs no per-word script check.
            return self._stemmers[0][1].stemWords(words)
        out = []
        for w in words:
            stem = self._stemmer_for(w[0])
            out.append(stem.stemWord(w) if stem is not None else w)
        return out

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        """Terms of each text, in order of appearance (repeats kept)."""
        out: list[list[str]] = []
        stop = self._stop
        for text in _check_texts(texts):
            text = unicodedata.normalize("NFKC", text)
            if self._full and not text.isascii():   # (ASCII holds nothing the table changes)
                text = text.translate(_FULL_TABLE)
                if self.lowercase:
                    text = text.casefold()
                    if "\u0307" in text:
                        text = text.replace("i\u0307", "i")
            elif self.lowercase:
                text = text.lower()
            toks = _UWORD.findall(text)
            # isascii first: most texts of most corpora, and ASCII holds no no-space script.
            if text.isascii() or _NOSPACE_CHAR.search(text) is None:
                out.append(self._finish_words(toks, stop))
                continue
            terms: list[str] = []
            words: list[str] = []
            for tok in toks:
                if _NOSPACE_CHAR.search(tok) is None:
                    words.append(tok)
                    continue
                parts = _NOSPACE_SPLIT.split(tok)
                for i, part in enumerate(parts):
                    if not part:
                        continue
                    if i % 2 == 0:
                        words.append(part)
                        continue
                    if words:
                        terms.extend(self._finish_words(words, stop))
                        words = []
                    units = _UNIT.findall(part) if _MARK.search(part) else part
                    if len(units) == 1:
                        terms.append(part)
                    else:
                        terms.extend([units[j] + units[j + 1] for j in range(len(units) - 1)])
            if words:
                terms.extend(self._finish_words(words, stop))
            out.append(terms)
        return out

    def _finish_words(self, words: list[str], stop: frozenset[str]) -> list[str]:
        if stop:
            words = [w for w in words if w not in stop]
        return self._stem_words(words) if self._stemmers else words


class SubwordAnalyzer:
    """Terms are a Hugging Face tokenizer's tokens (no special tokens).

    Only as good as the tokenizer's vocabulary for the corpus's scripts: a multilingual
    one (XLM-R's, BGE-M3's) has pieces for Chinese and Thai, an English WordPiece (MiniLM, BERT) maps
    most Chinese characters and a whole Thai phrase to ``[UNK]``; prefer
    :class:`UnicodeAnalyzer` unless the terms must be the encoder's tokens.

    ``tokenizer`` is a tokenizer object or a name/path for ``AutoTokenizer``.
    """

    def __init__(self, tokenizer: Any, lowercase: bool = False) -> None:
        self.name_or_path: str | None = None
        if isinstance(tokenizer, str):
            from transformers import AutoTokenizer

            self.name_or_path = tokenizer
            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        elif not hasattr(tokenizer, "tokenize"):
            raise TypeError(f"tokenizer must be a Hugging Face tokenizer or a name/path, got {type(tokenizer).__name__}")
        else:
            self.name_or_path = getattr(tokenizer, "name_or_path", None) or None
        self.tokenizer = tokenizer
        self.lowercase = lowercase
        self._special = set(getattr(tokenizer, "all_special_tokens", []) or [])
        self._unk: str | None = getattr(tokenizer, "unk_token", None)
        self._warned = False

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        """Subword tokens of each text, special tokens dropped.

        Warns (once per analyser, :class:`UserWarning`) at the first text whose tokens are
        mostly the tokenizer's unknown token: its vocabulary does not cover that script, so
        those words cannot be told apart; :class:`UnicodeAnalyzer` can.
        """
        texts = _check_texts(texts)
        if self.lowercase:
            texts = [t.lower() for t in texts]
        special, unk = self._special, self._unk
        out = []
        for text in texts:
            toks = self.tokenizer.tokenize(text)
            if not self._warned and unk is not None and toks and 2 * toks.count(unk) > len(toks):
                self._warned = True
                warnings.warn(
                    f"subword analyser: {toks.count(unk)} of the {len(toks)} tokens of {text[:40]!r} are the "
                    f"unknown token {unk!r} of tokenizer {self.name_or_path!r}, so BM25 cannot tell those words "
                    "apart; use the script-aware analyser instead ([bm25] analyzer = \"unicode\", "
                    "UnicodeAnalyzer)", UserWarning, stacklevel=2)
            out.append([t for t in toks if t not in special])
        return out


Analyzer = Union["UnicodeAnalyzer", "WordAnalyzer", "SubwordAnalyzer"]
