"""BM25 as a sparse encoder: texts -> ``{term id: count}``.

The encoder only analyses text and keeps the term vocabulary (str -> int id, grown
as documents are added, persisted as JSON by an index: :meth:`BM25Encoder.save_vocabulary`).
An index rebuilds the encoder and its analyser from its pipeline's ``[bm25]`` section. The BM25 weighting itself (k1, b,
epsilon, idf) lives in :class:`hybridrag.stores.sparse.SparseIndex`, so BM25 runs
on the same inverted index as BGE-M3 lexical weights; :meth:`BM25Encoder.store_config`
gives the matching store settings.

Tested by ``tests/test_bm25.py``.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from hybridrag.analysis import Analyzer, UnicodeAnalyzer
from hybridrag.errors import ConfigError, IndexFormatError

if TYPE_CHECKING:  # pragma: no cover
    from hybridrag.encoders.base import EncodeOutput

__all__ = ["BM25Encoder", "with_context"]

VARIANTS = ("okapi", "lucene")


def with_context(rows: Sequence[dict[int, float]], documents: Sequence[str], context: int,
                 weight: float) -> list[dict[int, float]]:
    """Each chunk's term counts plus ``weight`` times those of up to ``context`` neighbouring
    chunks of the same document on each side (``[bm25] context`` / ``context_weight``).

    ``rows`` are the chunks' own counts in reading order; ``documents[i]`` is chunk ``i``'s
    document id, and a document's chunks are consecutive (as the write path and ``rebuild``
    hand them over). A row's length, which BM25 normalises by, is then the sum of its counts,
    the neighbours' share included. With ``weight < 1`` the chunk that holds a term outscores
    its neighbours that only see it. ``context = 0`` returns ``rows`` as they are.
    """
    if len(documents) != len(rows):
        raise ValueError(f"got {len(documents)} document ids for {len(rows)} rows")
    if context == 0:
        return list(rows)
    out = []
    n = len(rows)
    for i, own in enumerate(rows):
        row = dict(own)
        doc = documents[i]
        for j in range(max(0, i - context), min(n, i + context + 1)):
            if j != i and documents[j] == doc:
                for t, c in rows[j].items():
                    row[t] = row.get(t, 0.0) + weight * c
        out.append(row)
    return out


class BM25Encoder:
    """Term-count encoder for BM25 (``variant``: ``"lucene"`` = bm25s/Lucene, the default, or
    ``"okapi"`` = rank_bm25, whose idf is <= 0 for a term in half the documents or more).

    ``analyzer``: default :class:`~hybridrag.analysis.UnicodeAnalyzer` (no stemming).
    """

    tokenizer = None   # no Hugging Face tokenizer of its own (CONTRACTS: None for the word analyser)
    dim = None
    colbert_dim = None

    def __init__(
        self,
        analyzer: Analyzer | None = None,
        variant: str = "lucene",
        k1: float = 1.5,
        b: float = 0.75,
        epsilon: float = 0.25,
    ) -> None:
        if variant not in VARIANTS:
            raise ConfigError(f"variant={variant!r} is unknown; choose one of {list(VARIANTS)}")
        for name, v in (("k1", k1), ("b", b), ("epsilon", epsilon)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{name} must be a finite number, got {v!r}")
        self.analyzer = analyzer if analyzer is not None else UnicodeAnalyzer()
        if not hasattr(self.analyzer, "tokenize"):
            raise TypeError(f"analyzer must have tokenize(texts), got {type(self.analyzer).__name__}")
        self.variant, self.k1, self.b, self.epsilon = variant, float(k1), float(b), float(epsilon)
        self.vocabulary: dict[str, int] = {}

    # ------------------------------------------------------------------ encoding

    def _counts(self, tokens: list[str], grow: bool) -> dict[int, float]:
        vocab = self.vocabulary
        out: dict[int, float] = {}
        for term, c in Counter(tokens).items():
            tid = vocab.get(term)
            if tid is None:
                if not grow:
                    continue
                tid = vocab[term] = len(vocab)
            out[tid] = float(c)
        return out

    def encode_documents(self, texts: Sequence[str]) -> list[dict[int, float]]:
        """Term counts per document; new terms get new ids."""
        return [self._counts(toks, True) for toks in self.analyzer.tokenize(texts)]

    def encode_queries(self, texts: Sequence[str]) -> list[dict[int, float]]:
        """Query term counts (a repeated term counts twice); unknown terms are dropped."""
        tokens = self.analyzer.tokenize(texts)
        prefetch = getattr(self.vocabulary, "prefetch", None)
        if prefetch is not None:   # a query node's vocabulary in Milvus: one lookup for the batch
            prefetch({t for toks in tokens for t in toks})
        return [self._counts(toks, False) for toks in tokens]

    def encode(self, texts: Sequence[str], *, is_query: bool = False, dense: bool = True, sparse: bool = True,
               colbert: bool = True, **_: Any) -> "EncodeOutput":
        """``EncodeOutput(sparse=...)`` (documents by default; ``is_query=True`` for queries).

        ``dense``/``colbert`` are accepted for the common encoder signature and ignored.
        """
        from hybridrag.encoders.base import EncodeOutput

        rows = self.encode_queries(texts) if is_query else self.encode_documents(texts)
        return EncodeOutput(sparse=rows if sparse else None)

    # ------------------------------------------------------------------ settings

    def store_config(self) -> dict[str, Any]:
        """Keyword arguments of the :class:`SparseIndex` that scores this encoder's output."""
        return {"weighting": f"bm25{self.variant}", "k1": self.k1, "b": self.b, "epsilon": self.epsilon}

    # ------------------------------------------------------------------ vocabulary

    def save_vocabulary(self, path: str | Path, start: int = 0) -> None:
        """Write the terms with ids ``start`` and up as a JSON list in id order (to a new file):
        an index writes, per commit, only the terms it added."""
        terms = [""] * (len(self.vocabulary) - start)
        for term, tid in self.vocabulary.items():
            if tid >= start:
                terms[tid - start] = term
        with open(path, "x", encoding="utf-8") as fh:
            json.dump(terms, fh, ensure_ascii=False)

    def load_vocabulary(self, path: str | Path) -> None:
        """Replace the vocabulary with one written by :meth:`save_vocabulary`."""
        try:
            terms = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"cannot read BM25 vocabulary {path}: {exc}") from exc
        if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms) or len(set(terms)) != len(terms):
            raise IndexFormatError(f"BM25 vocabulary {path} must be a JSON list of distinct strings")
        self.vocabulary = {t: i for i, t in enumerate(terms)}
