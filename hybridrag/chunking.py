"""Token-aware chunking that keeps character offsets into the source text.

:class:`Chunker` splits a document on its structure first - Markdown ATX headings (outside
code fences) start new chunks, then blank-line paragraphs, then sentences and lines - and
packs consecutive pieces of one section into chunks of at most ``max_tokens`` tokens, counted
with the pipeline model's own tokenizer (no special tokens). A sentence that alone is too long
falls back to windows of ``max_tokens`` tokens that overlap by ``overlap`` tokens.

Every chunk's ``text`` is exactly ``source[start:end]``; surrounding whitespace is dropped by
moving the span. Whitespace-only or empty text gives no chunks. Covered by
``tests/test_chunking.py``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybridrag.errors import DocumentError
from hybridrag.types import Chunk

__all__ = ["Chunker", "MAX_TOKENS_LIMIT"]

MAX_TOKENS_LIMIT = 8192
MIN_MAX_TOKENS = 8
DEFAULT_SLICE_CHARS = 100_000
# An unknown token longer than this (in characters) counts one token per character (_HFCounter):
# a phrase of a script the tokenizer lacks; shorter ones ("∼10" in SciFact) count as one.
LONG_UNKNOWN = 8

_SURROGATES = re.compile("[\ud800-\udfff]")
# CJK, kana and Thai are written without spaces; the word counter counts them one char each.
_NOSPACE = "\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_WORD = re.compile(rf"[{_NOSPACE}]|[^\W{_NOSPACE}]{{1,32}}|[^\w\s]|_")
_HEADING = re.compile(r"^ {0,3}#{1,6}(?=[ \t]|$)", re.M)
_FENCE = re.compile(r"^ {0,3}(?:`{3,}|~{3,})", re.M)
_BLANK_LINES = re.compile(r"\n\s*\n")
# A sentence ends after terminal punctuation (plus closing quotes) and whitespace, after CJK
# full stops, or at a line break (list items, code, verse).
_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*\s+|[\u3002\uff01\uff1f]+[\u300d\u300f\u201d\u2019\uff09]*\s*|\n\s*")


def _clean(text: str) -> str:
    # Tokenizers reject lone surrogates; U+FFFD has the same length, so offsets still line up.
    return _SURROGATES.sub("\ufffd", text)


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    """Shrink ``[start, end)`` past leading and trailing whitespace."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


class _HFCounter:
    """Counts tokens and finds token char spans with a Hugging Face fast tokenizer.

    An unknown token (``[UNK]``) that stands for more than :data:`LONG_UNKNOWN` characters
    counts as one token per character, its span cut into single characters: an English
    WordPiece tokenizer gives one
    ``[UNK]`` for a whole Thai, Lao, Khmer or Myanmar phrase (written without spaces), and
    counted as one token a 7,000-character Thai text was one chunk. So counted, such text is
    cut as the word counter cuts it (a character per token), and the model still sees one
    ``[UNK]`` for it (never more tokens than counted)."""

    def __init__(self, tokenizer: Any) -> None:
        from tokenizers import Tokenizer

        backend = tokenizer if isinstance(tokenizer, Tokenizer) else getattr(tokenizer, "backend_tokenizer", None)
        if not isinstance(backend, Tokenizer):
            raise TypeError(
                f"tokenizer must be a Hugging Face fast tokenizer (with offset mapping) or None, "
                f"got {type(tokenizer).__name__}"
            )
        # A private copy: a saved tokenizer.json may switch truncation/padding on.
        self.backend = Tokenizer.from_str(backend.to_str())
        self.backend.no_truncation()
        self.backend.no_padding()
        unk = getattr(tokenizer, "unk_token", None)
        if not isinstance(unk, str):   # a tokenizers.Tokenizer: its model's unknown token, if it has one
            unk = getattr(self.backend.model, "unk_token", None)
        self.unk_id: int | None = self.backend.token_to_id(unk) if isinstance(unk, str) else None

    def counts(self, texts: list[str]) -> list[int]:
        return [self.count(t) for t in texts]

    def count(self, text: str) -> int:
        enc = self.backend.encode(_clean(text), add_special_tokens=False)
        ids = enc.ids
        if self.unk_id is None or self.unk_id not in ids:
            return len(ids)
        offsets = enc.offsets
        return len(ids) + sum(n - 1 for i, t in enumerate(ids)
                              if t == self.unk_id and (n := offsets[i][1] - offsets[i][0]) > LONG_UNKNOWN)

    def spans(self, text: str) -> list[tuple[int, int]]:
        enc = self.backend.encode(_clean(text), add_special_tokens=False)
        if self.unk_id is None or self.unk_id not in enc.ids:
            return enc.offsets
        out: list[tuple[int, int]] = []
        for t, (a, b) in zip(enc.ids, enc.offsets):
            if t == self.unk_id and b - a > LONG_UNKNOWN:
                out.extend((k, k + 1) for k in range(a, b))
            else:
                out.append((a, b))
        return out


class _WordCounter:
    """Counts Unicode words (at most 32 chars each), punctuation marks and CJK/Thai chars."""

    def counts(self, texts: list[str]) -> list[int]:
        return [len(_WORD.findall(t)) for t in texts]

    def count(self, text: str) -> int:
        return len(_WORD.findall(text))

    def spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _WORD.finditer(text)]


@dataclass
class _Unit:
    start: int
    end: int
    n_tokens: int
    solo: bool = False  # a token window: emitted alone, never packed with neighbours


class Chunker:
    """Splits documents into :class:`~hybridrag.types.Chunk` objects of at most ``max_tokens`` tokens.

    ``tokenizer`` is the pipeline model's Hugging Face fast tokenizer (or a ``tokenizers.Tokenizer``);
    ``None`` counts Unicode words instead. ``max_tokens`` is in ``[8, 8192]``; ``overlap`` (tokens
    shared by consecutive windows when a single sentence must be cut) is in ``[0, max_tokens)``.
    Structural chunks do not overlap. ``slice_chars`` bounds how much text is tokenized per call.
    """

    def __init__(
        self,
        tokenizer: Any = None,
        max_tokens: int = 512,
        overlap: int = 64,
        *,
        split_headings: bool = True,
        slice_chars: int = DEFAULT_SLICE_CHARS,
    ) -> None:
        for name, value in (("max_tokens", max_tokens), ("overlap", overlap), ("slice_chars", slice_chars)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
        if not MIN_MAX_TOKENS <= max_tokens <= MAX_TOKENS_LIMIT:
            raise ValueError(f"max_tokens={max_tokens} is out of range [{MIN_MAX_TOKENS}, {MAX_TOKENS_LIMIT}]")
        if not 0 <= overlap < max_tokens:
            raise ValueError(f"overlap={overlap} must be >= 0 and < max_tokens={max_tokens}")
        if slice_chars < 1000:
            raise ValueError(f"slice_chars={slice_chars} must be >= 1000")
        if not isinstance(split_headings, bool):
            raise TypeError(f"split_headings must be a bool, got {split_headings!r}")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.overlap = overlap
        self.split_headings = split_headings
        self.slice_chars = slice_chars
        self._counter: _HFCounter | _WordCounter = _WordCounter() if tokenizer is None else _HFCounter(tokenizer)

    # ------------------------------------------------------------------ public API
    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` as this chunker counts them (no special tokens)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._count(text)

    def _count(self, text: str) -> int:
        return self._counter.count(text)

    def chunk(self, doc_id: str, text: str, metadata: Mapping[str, Any] | None = None) -> list[Chunk]:
        """Split ``text`` into chunks; empty or whitespace-only text gives ``[]``.

        Chunks come in source order, with ``ordinal`` 0, 1, ... and ``chunk_id`` ``f"{doc_id}#{ordinal}"``;
        each carries a copy of ``metadata``.
        """
        if not isinstance(doc_id, str):
            raise TypeError(f"doc_id must be a str, got {type(doc_id).__name__}")
        if not doc_id:
            raise DocumentError("doc_id must be a non-empty str, got ''")
        if not isinstance(text, str):
            raise TypeError(f"text of document {doc_id!r} must be a str, got {type(text).__name__}")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise TypeError(f"metadata of document {doc_id!r} must be a mapping or None, got {type(metadata).__name__}")
        meta = dict(metadata or {})
        chunks: list[Chunk] = []
        for a, b in self._sections(text):
            units = self._units(text, a, b, level=0)
            for start, end, n in self._pack(text, units):
                ordinal = len(chunks)
                chunks.append(Chunk(
                    chunk_id=f"{doc_id}#{ordinal}", doc_id=doc_id, ordinal=ordinal,
                    text=text[start:end], start=start, end=end, n_tokens=n, metadata=dict(meta),
                ))
        return chunks

    def __repr__(self) -> str:
        tok = self.tokenizer
        name = None if tok is None else getattr(tok, "name_or_path", None) or type(tok).__name__
        return (f"{type(self).__name__}(tokenizer={name!r}, "
                f"max_tokens={self.max_tokens}, overlap={self.overlap})")

    # ------------------------------------------------------------------ structure
    def _sections(self, text: str) -> list[tuple[int, int]]:
        """Heading-started sections, as stripped spans (whitespace-only ones dropped)."""
        starts = [0]
        if self.split_headings and "#" in text:
            fences = [m.start() for m in _FENCE.finditer(text)]
            fi, inside = 0, False
            for m in _HEADING.finditer(text):
                while fi < len(fences) and fences[fi] < m.start():
                    inside = not inside
                    fi += 1
                if not inside and m.start() > 0:
                    starts.append(m.start())
        starts.append(len(text))
        spans = (_strip(text, a, b) for a, b in zip(starts, starts[1:]))
        return [(a, b) for a, b in spans if a < b]

    @staticmethod
    def _split(text: str, a: int, b: int, pattern: re.Pattern[str]) -> list[tuple[int, int]]:
        """Stripped, non-empty pieces of ``text[a:b]`` between matches of ``pattern``."""
        out: list[tuple[int, int]] = []
        prev = a
        for m in pattern.finditer(text, a, b):
            if m.end() == m.start():
                continue
            s, e = _strip(text, prev, m.end())
            if s < e:
                out.append((s, e))
            prev = m.end()
        s, e = _strip(text, prev, b)
        if s < e:
            out.append((s, e))
        return out

    def _units(self, text: str, a: int, b: int, level: int) -> list[_Unit]:
        """Pieces of ``[a, b)`` that fit ``max_tokens``: paragraphs (level 0), sentences (1), windows (2)."""
        if level >= 2:
            return self._windows(text, a, b)
        pieces = self._split(text, a, b, _BLANK_LINES if level == 0 else _SENTENCE_END)
        # Pieces longer than a slice are never tokenized whole: they go down a level unseen.
        short = [i for i, (s, e) in enumerate(pieces) if e - s <= self.slice_chars]
        counts = dict(zip(short, self._counter.counts([text[pieces[i][0]:pieces[i][1]] for i in short])))
        out: list[_Unit] = []
        for i, (s, e) in enumerate(pieces):
            n = counts.get(i)
            if n is not None and n <= self.max_tokens:
                out.append(_Unit(s, e, n))
            else:
                out.extend(self._units(text, s, e, level + 1))
        return out

    def _pack(self, text: str, units: list[_Unit]) -> list[tuple[int, int, int]]:
        """Greedily join consecutive units up to ``max_tokens``, checking the joined count exactly."""
        out: list[tuple[int, int, int]] = []
        i = 0
        while i < len(units):
            u = units[i]
            if u.solo:
                out.append((u.start, u.end, u.n_tokens))
                i += 1
                continue
            j, total = i + 1, u.n_tokens
            while j < len(units) and not units[j].solo and total + units[j].n_tokens <= self.max_tokens:
                total += units[j].n_tokens
                j += 1
            # Joining can change tokenization at the seams: recount, and back off if needed.
            while j - i > 1:
                n = self._count(text[u.start:units[j - 1].end])
                if n <= self.max_tokens:
                    break
                j -= 1
            n = u.n_tokens if j - i == 1 else n
            out.append((u.start, units[j - 1].end, n))
            i = j
        return out

    # ------------------------------------------------------------------ token windows
    def _token_spans(self, text: str, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Char spans (absolute) of the tokens of ``text[a:b]``, tokenized in bounded slices."""
        starts: list[np.ndarray] = []
        ends: list[np.ndarray] = []
        s = a
        while s < b:
            e = min(b, s + self.slice_chars)
            cut = e
            if e < b:
                # Prefer cutting just before whitespace in the second half of the slice, where
                # tokenization restarts the same way it would in the full text.
                half = s + (e - s) // 2
                ws = next((k for k in range(e - 1, max(half, e - 2000) - 1, -1) if text[k].isspace()), None)
                cut = ws if ws is not None and ws > s else e
            offs = self._counter.spans(text[s:cut])
            arr = np.asarray(offs, dtype=np.int64).reshape(-1, 2)
            if cut == e and e < b and len(arr) > 1 and arr[-1, 0] > 0:
                # No whitespace to cut at: drop the last token (it may be cut short) and restart there.
                cut = s + int(arr[-1, 0])
                arr = arr[:-1]
            arr = arr[arr[:, 1] > arr[:, 0]]
            starts.append(arr[:, 0] + s)
            ends.append(arr[:, 1] + s)
            s = cut
        if not starts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(starts), np.concatenate(ends)

    def _fit_chars(self, text: str, start: int, end: int) -> int:
        """Largest ``k`` in ``(start, end]`` with ``text[start:k]`` within budget (at least one char)."""
        lo, hi = start + 1, end
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._count(text[start:mid]) <= self.max_tokens:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _windows(self, text: str, a: int, b: int) -> list[_Unit]:
        """Windows of at most ``max_tokens`` tokens over ``[a, b)``, overlapping by ``overlap`` tokens.

        Window edges move back to a word boundary when one lies within the last eighth of the
        window (text without spaces keeps plain token boundaries); every window is recounted.
        """
        m, ov = self.max_tokens, self.overlap
        t_start, t_end = self._token_spans(text, a, b)
        n_tok = len(t_start)
        if n_tok == 0:
            return [_Unit(a, b, self._count(text[a:b]), solo=True)]
        reach = max(1, m // 8)

        def boundary(k: int) -> bool:
            # A word starts at token k: a gap before it, or whitespace at the seam.
            ps, pe = int(t_start[k]), int(t_end[k - 1])
            return ps >= pe and (ps > pe or text[ps].isspace() or text[pe - 1].isspace())

        out: list[_Unit] = []
        covered = a  # every char before this one is in some window already
        i = 0
        while i < n_tok:
            j = min(i + m, n_tok)
            if j < n_tok:
                j = next((k for k in range(j, max(i + 1, j - reach) - 1, -1) if boundary(k)), j)
            while True:
                # Start no later than the end of the last window, so chars that yield no
                # token (dropped by the normaliser) are never lost between windows.
                start = min(int(t_start[i]), covered)
                end = b if j == n_tok else int(t_end[j - 1])
                s, e = _strip(text, start, end)
                n = self._count(text[s:e]) if s < e else 0
                if n <= m or j == i + 1:
                    break
                # Retokenizing a window alone can add a token or two (e.g. a word-start marker).
                j = max(i + 1, j - max(1, n - m))
            if n > m:
                # One token that alone exceeds the budget: cut it by characters.
                while s < e:
                    k = self._fit_chars(text, s, e)
                    ks, ke = _strip(text, s, k)
                    if ks < ke:
                        out.append(_Unit(ks, ke, self._count(text[ks:ke]), solo=True))
                    s = k
            elif s < e:
                out.append(_Unit(s, e, n, solo=True))
            covered = max(covered, end)
            if j >= n_tok:
                break
            nxt = max(j - ov, i + 1)
            if ov:
                # Widen the overlap (never shrink it) to start on a word.
                nxt = next((k for k in range(nxt, max(i + 1, nxt - reach) - 1, -1) if boundary(k)), nxt)
            # Several tokens can share a start offset (a word-start marker and the first
            # piece of the word): the next window must start strictly later in the text,
            # or it would repeat a span the last window already covers.
            last = out[-1].start if out else a - 1
            while nxt < j and int(t_start[nxt]) <= last:
                nxt += 1
            i = nxt
        return out
