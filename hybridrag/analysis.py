"""Text analysers: turn texts into lists of terms for lexical (BM25) indexing.

* :class:`WordAnalyzer`    - Unicode word tokens (regex ``\\w+``), optional lowercasing,
  stopword removal and Snowball stemming (PyStemmer).
* :class:`SubwordAnalyzer` - the tokens of a Hugging Face tokenizer, without special
  tokens; use it for scripts without spaces between words (Chinese, Japanese, Thai).

Both are rebuilt from ``config()`` with :func:`analyzer_from_config`.
Tested by ``tests/test_bm25.py``.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

from hybridrag.errors import ConfigError

__all__ = ["ENGLISH_STOPWORDS", "SubwordAnalyzer", "WordAnalyzer", "analyzer_from_config"]

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
        self._stopwords_spec: str | list[str] | None
        if stopwords is None:
            self._stopwords_spec = None
            self._stop: frozenset[str] = frozenset()
        elif isinstance(stopwords, str):
            if stopwords != "english":
                raise ConfigError(f"stopwords={stopwords!r} is not a known list; use None, 'english' or a list of words")
            self._stopwords_spec = "english"
            self._stop = frozenset(ENGLISH_STOPWORDS)
        else:
            words = list(stopwords)
            for w in words:
                if not isinstance(w, str):
                    raise TypeError(f"stopwords must be strings, got {w!r}")
            self._stopwords_spec = words
            self._stop = frozenset(w.lower() for w in words) if lowercase else frozenset(words)
        self.stemmer = stemmer
        self._stem = None
        if stemmer is not None:
            if not isinstance(stemmer, str):
                raise TypeError(f"stemmer must be None or a language name such as 'english', got {stemmer!r}")
            try:
                import Stemmer  # PyStemmer
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise ImportError("pip install 'hybridrag[stem]'") from exc
            langs = Stemmer.algorithms()
            if stemmer not in langs:
                raise ConfigError(f"stemmer={stemmer!r} is not a Snowball language; choose one of {sorted(langs)}")
            self._stem = Stemmer.Stemmer(stemmer)

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

    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings; ``WordAnalyzer(**cfg["params"])`` rebuilds it."""
        return {"type": "word", "params": {"lowercase": self.lowercase, "stopwords": self._stopwords_spec,
                                           "stemmer": self.stemmer}}


class SubwordAnalyzer:
    """Terms are a Hugging Face tokenizer's tokens (no special tokens), e.g. for CJK/Thai.

    ``tokenizer`` is a tokenizer object or a name/path for ``AutoTokenizer``; only a
    name/path can be persisted in ``config()``.
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

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        """Subword tokens of each text, special tokens dropped."""
        texts = _check_texts(texts)
        if self.lowercase:
            texts = [t.lower() for t in texts]
        special = self._special
        return [[t for t in self.tokenizer.tokenize(text) if t not in special] for text in texts]

    def config(self) -> dict[str, Any]:
        """Settings; the tokenizer is recorded by name/path (needed to rebuild it)."""
        return {"type": "subword", "params": {"tokenizer": self.name_or_path, "lowercase": self.lowercase}}


def analyzer_from_config(cfg: dict[str, Any]) -> WordAnalyzer | SubwordAnalyzer:
    """Rebuild an analyser from its ``config()``."""
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise ConfigError(f"analyzer config must be a dict with a 'type', got {cfg!r}")
    kind, params = cfg["type"], dict(cfg.get("params", {}))
    if kind == "word":
        return WordAnalyzer(**params)
    if kind == "subword":
        if not params.get("tokenizer"):
            raise ConfigError("subword analyzer config has no tokenizer name/path; pass the tokenizer object instead")
        return SubwordAnalyzer(**params)
    raise ConfigError(f"analyzer type {kind!r} is unknown; choose 'word' or 'subword'")
