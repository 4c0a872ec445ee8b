"""Document sources: turn files and folders into :class:`~hybridrag.types.Document` objects.

``iter_documents(paths)`` walks each folder recursively in sorted (deterministic) order
and reads every supported file:

=================  ==============================================================
extension          how it becomes documents
=================  ==============================================================
``.txt``, ``.md``  one document, the text as is (line endings normalised to ``\\n``)
``.html``, ``.htm`` one document, reduced to text: ``script``/``style`` dropped,
                   block elements become line breaks
``.pdf``           one document, the text of every page (needs ``hybridrag[pdf]``)
``.json``          an object, or a list of objects: one document each
``.jsonl``         one document per line, streamed (never read whole)
``.csv``           one document per row, text from a chosen column
=================  ==============================================================

Ids: a whole-file document's id is its path relative to the folder it was found under
(posix style; for a file named directly, its file name). Records (JSON, JSON lines,
CSV rows) take their id from ``id_field`` (BEIR's ``_id`` is recognised too), else
``"<relative path>#<n>"`` with ``n`` the 1-based line, list position or row number.
Records with a title (``title_field``, BEIR's ``title``) get ``title + "\\n\\n" + text``;
a record's other fields (and those of its ``metadata`` object) become the document's
metadata, a field named like a key that says where it was read (``source``, ``format``,
``position``, ``root``, ``encoding``: :data:`RESERVED_METADATA`) as ``record_<name>``
(with a warning per file).
With several roots, the paths in ids (and in ``metadata["source"]``) start with the
root's name, or as many of its last folder names as tell it from the other roots
(:func:`root_labels`: ``projA/README.md``, ``a/docs/x.md`` beside ``b/docs/x.md``); they
depend on the set of roots only, so a rerun with the same roots gives the same ids. One
root gives the ids above. ``metadata["root"]`` is the absolute folder that
``metadata["source"]`` is relative to: ``root / source`` is the file (what ``hybridrag
ingest --prune`` checks).

Nothing is dropped silently: every file is either yielded or listed in a
:class:`SkipReport` with its reason (binary, unreadable, empty, too large, unsupported
extension, bad json, bad record, bad csv, duplicate id, symlink outside root, symlink
loop, excluded, index directory: a folder holding a hybridrag index is not walked ...) and,
for a record, its line (row, list position). One bad file or record never stops the walk;
a CSV quote never closed is reported at its row (the rows after it would be one field). Every yielded document is one :meth:`HybridIndex.add` accepts
(checked by :func:`hybridrag.index.as_document`: ids without NUL or lone surrogates,
metadata at most 64 levels deep) and its id is unique in the walk (a later duplicate is
skipped, naming where the first was read). JSON with ``NaN``/``Infinity`` or nested too
deeply to parse is "bad json". A document whose text is over ``max_bytes`` (UTF-8) is
skipped as "too large", never truncated; files over ``max_file_bytes`` are not read at
all (JSON lines are streamed, so only each line is limited, and a longer line is read
past, never held).

Text encodings: UTF-8 (with or without BOM), UTF-16/32 with a BOM; data that is UTF-8
but for a few bad bytes (at least 80% of its non-ASCII sequences valid,
``NEARLY_UTF8_SHARE``) is read as UTF-8 with those bytes replaced by U+FFFD and a
warning in ``SkipReport.warnings`` giving the count (for JSON lines, per line); other
data goes to ``charset-normalizer`` when installed, else Latin-1, which never fails.

Covered by ``tests/test_sources.py``.
"""
from __future__ import annotations

import codecs
import csv
import errno
import fnmatch
import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from hybridrag.types import Document

__all__ = [
    "SUPPORTED_EXTENSIONS", "SkipReport", "SkippedFile", "decode_bytes", "html_to_text",
    "iter_documents", "join_title_text", "read_pdf_text", "root_labels",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".txt", ".md", ".html", ".htm", ".pdf", ".json", ".jsonl", ".csv")
DEFAULT_MAX_BYTES = 10_000_000
DEFAULT_MAX_FILE_BYTES = 100_000_000
_SNIFF_BYTES = 8192

# Reasons a file or record is skipped (``SkippedFile.reason``).
BINARY = "binary"
UNREADABLE = "unreadable"
EMPTY = "empty"
TOO_LARGE = "too large"
UNSUPPORTED = "unsupported extension"
BAD_JSON = "bad json"
BAD_RECORD = "bad record"
BAD_CSV = "bad csv"
SYMLINK_OUTSIDE = "symlink outside root"
SYMLINK_LOOP = "symlink loop"
EXCLUDED = "excluded"
DUPLICATE_ID = "duplicate id"
NOT_INCLUDED = "not included"
MISSING_DEPENDENCY = "missing dependency"
NOT_A_FILE = "not a regular file"
INDEX_DIR = "index directory"

#: Metadata keys that say where a document was read (``hybridrag ingest --prune`` reads
#: ``root`` / ``source``); a record's own field of one of these names is kept as ``record_<name>``.
RESERVED_METADATA = ("source", "format", "position", "root", "encoding")
#: Warning (``SkipReport.warnings``, once per file) that record fields were renamed so.
RENAMED_FIELDS = "record fields renamed"

PDF_HINT = "pip install 'hybridrag[pdf]'"

# Warnings (``SkipReport.warnings``): the document is kept, something in it was repaired.
REPLACED_BYTES = "invalid UTF-8 replaced"

# A file that fails strict UTF-8 is still read as UTF-8 (bad bytes -> U+FFFD, with a
# warning) when at least this share of its non-ASCII sequences are valid UTF-8. Legacy
# encodings rarely form valid UTF-8 sequences by chance: 0% for cp1252/Latin-1/cp1251/
# ISO 8859-7 text, 12-24% for Shift-JIS, GBK and EUC-KR text (measured on sample
# sentences, see the commit that added this), so they still go through detection.
NEARLY_UTF8_SHARE = 0.8


@dataclass(frozen=True)
class SkippedFile:
    """One skipped file (or one skipped record in it, with ``line`` set)."""

    path: str
    reason: str
    detail: str = ""
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class SkipReport:
    """Every file or record that :func:`iter_documents` did not turn into a document, and
    ``warnings``: documents that were kept but repaired (invalid UTF-8 bytes replaced)."""

    skipped: list[SkippedFile] = field(default_factory=list)
    warnings: list[SkippedFile] = field(default_factory=list)

    def add(self, path: PathLike, reason: str, detail: str = "", line: int | None = None) -> None:
        """Record one skip (and log it at debug level)."""
        entry = SkippedFile(os.fspath(path), reason, detail, line)
        self.skipped.append(entry)
        logger.debug("skipped %s", entry)

    def warn(self, path: PathLike, reason: str, detail: str = "", line: int | None = None) -> None:
        """Record one warning about a document that was kept (logged at debug level)."""
        entry = SkippedFile(os.fspath(path), reason, detail, line)
        self.warnings.append(entry)
        logger.debug("warning %s", entry)

    def by_reason(self) -> dict[str, int]:
        """How many skips per reason."""
        return dict(Counter(s.reason for s in self.skipped))

    def summary(self) -> str:
        """One line, e.g. ``"3 skipped: binary 1, empty 2"``."""
        if not self.skipped:
            return "0 skipped"
        counts = ", ".join(f"{r} {n}" for r, n in sorted(self.by_reason().items()))
        return f"{len(self.skipped)} skipped: {counts}"

    def __len__(self) -> int:
        return len(self.skipped)

    def __iter__(self) -> Iterator[SkippedFile]:
        return iter(self.skipped)

    def __bool__(self) -> bool:
        return bool(self.skipped)


class _Skip(Exception):
    """Internal: the current file is skipped for ``reason``."""

    def __init__(self, reason: str, detail: str = "", line: int | None = None) -> None:
        super().__init__(reason, detail)
        self.reason, self.detail, self.line = reason, detail, line


def join_title_text(title: str, text: str) -> str:
    """BEIR's document text: ``title + "\\n\\n" + text`` when the title is non-empty."""
    title = title.strip() if title else ""
    return f"{title}\n\n{text}" if title else text


# ---------------------------------------------------------------- encodings

_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)


def _bom_encoding(head: bytes) -> str | None:
    for bom, name in _BOMS:  # UTF-32 LE first: its BOM starts with UTF-16 LE's
        if head.startswith(bom):
            return name
    return None


def _detect_with_charset_normalizer(data: bytes) -> str | None:
    try:
        from charset_normalizer import from_bytes
    except ImportError:
        return None
    try:
        results = from_bytes(data)
        best = results.best()
    except Exception:  # a detector bug must not stop the walk
        return None
    if best is None:
        return None
    # On short texts the detector has little signal and often ranks another single-byte
    # code page (cp1257, cp1250) above Windows-1252 for plain Western European text
    # ("naïve" -> "naļve"). Windows-1252 (Latin-1's printable range and more), the most
    # common legacy encoding, wins when it decodes the data (nearly) as cleanly.
    for match in results:
        if "cp1252" in match.could_be_from_charset and match.chaos <= best.chaos + 0.1:
            return "cp1252"
    return best.encoding


def _nearly_utf8(data: bytes) -> tuple[str, int] | None:
    """``(text, bad bytes)`` when ``data`` is UTF-8 but for a few bad bytes (replaced by
    U+FFFD): at least NEARLY_UTF8_SHARE of its non-ASCII sequences decode; else None."""
    text = data.decode("utf-8", "replace")
    replaced = text.count("\ufffd") - data.count(b"\xef\xbf\xbd")  # less the U+FFFD already there
    valid = sum(1 for ch in text if ord(ch) > 127) - replaced
    if replaced <= 0 or valid < NEARLY_UTF8_SHARE * (valid + replaced):
        return None
    # Each U+FFFD stands for one or more bad bytes and re-encodes as 3 bytes.
    return text, len(data) - len(text.encode("utf-8", "surrogatepass")) + 3 * replaced


def _decode(data: bytes) -> tuple[str, str, int]:
    """``decode_bytes`` plus how many invalid UTF-8 bytes were replaced (0 unless nearly UTF-8)."""
    bom = _bom_encoding(data)
    if bom is not None:
        try:
            return data.decode(bom), bom, 0
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8"), "utf-8", 0
    except UnicodeDecodeError:
        pass
    nearly = _nearly_utf8(data)
    if nearly is not None:
        return nearly[0], "utf-8", nearly[1]
    guess = _detect_with_charset_normalizer(data)
    if guess is not None:
        try:
            return data.decode(guess), guess, 0
        except (UnicodeDecodeError, LookupError):
            pass
    return data.decode("latin-1"), "latin-1", 0


def decode_bytes(data: bytes) -> tuple[str, str]:
    """Decode ``data`` and return ``(text, encoding)``; never raises.

    Order: a BOM (UTF-8/16/32), strict UTF-8, UTF-8 with the few invalid bytes replaced
    by U+FFFD when the data is nearly all UTF-8 (``NEARLY_UTF8_SHARE`` of its non-ASCII
    sequences valid), charset-normalizer if installed, Latin-1.
    """
    text, encoding, _ = _decode(data)
    return text, encoding


def _warn_replaced(report: SkipReport, path: Path, replaced: int, line: int | None = None) -> None:
    if replaced:
        report.warn(path, REPLACED_BYTES, f"{replaced} byte(s) that are not valid UTF-8 became U+FFFD", line)


def _looks_binary(head: bytes) -> bool:
    # NUL bytes do not occur in text files except in UTF-16/32, which we accept only with a BOM.
    return b"\x00" in head and _bom_encoding(head) is None


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


# ---------------------------------------------------------------- HTML

_SKIP_TAGS = frozenset({"script", "style", "noscript", "template", "svg"})
_BLOCK_TAGS = frozenset({
    "address", "article", "aside", "blockquote", "body", "br", "caption", "dd", "details", "div",
    "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5",
    "h6", "header", "hr", "html", "li", "main", "nav", "ol", "p", "pre", "section", "summary",
    "table", "tbody", "td", "tfoot", "th", "thead", "title", "tr", "ul",
})


class _HTMLText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title_parts: list[str] = []
        self._skip_depth = 0
        self._pre_depth = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip_depth += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")
        if tag == "pre":
            self._pre_depth += 1
        if tag == "title":
            self._in_title = True

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")
        if tag == "pre":
            self._pre_depth = max(0, self._pre_depth - 1)
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._skip_depth:
            return
        if self._in_title:
            self.title_parts.append(data)
        if self._pre_depth:
            # Keep preformatted text's own line breaks; mark them so the collapse keeps them.
            self.parts.append(data.replace("\n", "\x00"))
        else:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> tuple[str, str]:
    """Reduce HTML to ``(text, title)``: scripts and styles dropped, one line per block."""
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    raw = "".join(parser.parts)
    lines = [line.strip(" \t") for line in raw.split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    text = "\n".join(out).strip().replace("\x00", "\n")
    title = re.sub(r"\s+", " ", "".join(parser.title_parts)).strip()
    return text, title


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


def _decode_html(data: bytes) -> tuple[str, str, int]:
    if _bom_encoding(data) is None:
        try:
            return data.decode("utf-8"), "utf-8", 0
        except UnicodeDecodeError:
            pass
        match = _META_CHARSET.search(data[:4096])
        if match:
            declared = match.group(1).decode("ascii", "replace")
            try:
                return data.decode(declared), declared, 0
            except (UnicodeDecodeError, LookupError):
                pass
    return _decode(data)


# ---------------------------------------------------------------- PDF

def _import_pypdf() -> Any:
    try:
        import pypdf
    except ImportError:
        raise ImportError(f"reading PDF files needs pypdf: {PDF_HINT}") from None
    return pypdf


def read_pdf_text(path: PathLike) -> tuple[str, dict[str, Any]]:
    """Text of every page of a PDF (pages joined by blank lines) and ``{"pages", "title"?}``.

    Raises ``ImportError`` with the install hint when pypdf is missing.
    """
    pypdf = _import_pypdf()
    reader = pypdf.PdfReader(os.fspath(path))
    if reader.is_encrypted and not reader.decrypt(""):
        raise ValueError(f"{os.fspath(path)}: encrypted PDF that needs a password")
    pages = [(page.extract_text() or "").strip() for page in reader.pages]
    meta: dict[str, Any] = {"pages": len(pages)}
    try:
        title = reader.metadata.title if reader.metadata is not None else None
    except Exception:  # broken metadata dictionaries are common; the text still counts
        title = None
    if isinstance(title, str) and title.strip():
        meta["title"] = title.strip()
    return _normalise_newlines("\n\n".join(p for p in pages if p)), meta


# ---------------------------------------------------------------- walking

def _as_path_list(paths: PathLike | Iterable[PathLike]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        items: list[Any] = [paths]
    elif isinstance(paths, Iterable):
        items = list(paths)
    else:
        raise TypeError(f"paths must be a path or an iterable of paths, got {type(paths).__name__}")
    out = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"paths must hold str or os.PathLike values, got {item!r}")
        out.append(Path(item))
    return out


def _as_patterns(value: str | Sequence[str] | None, name: str) -> list[str] | None:
    if value is None:
        return None
    patterns = [value] if isinstance(value, str) else list(value)
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise TypeError(f"{name} must hold non-empty glob strings, got {pattern!r}")
    return patterns


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    """Glob match on a posix relative path; ``*`` crosses ``/``; a pattern without ``/``
    is also tried on the last component; a leading ``**/`` also matches at the top."""
    name = rel.rsplit("/", 1)[-1]
    for pattern in patterns:
        if fnmatch.fnmatchcase(rel, pattern):
            return True
        if "/" not in pattern and fnmatch.fnmatchcase(name, pattern):
            return True
        if pattern.startswith("**/") and fnmatch.fnmatchcase(rel, pattern[3:]):
            return True
    return False


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


@dataclass
class _Options:
    include: list[str] | None
    exclude: list[str] | None
    max_bytes: int
    max_file_bytes: int
    id_field: str
    text_field: str
    title_field: str | None
    csv_text_column: str | None
    csv_id_column: str | None


def _walk(root: Path, opts: _Options, report: SkipReport) -> Iterator[tuple[Path, str]]:
    """Yield (path, posix id relative to root) for files under ``root`` to read, sorted."""
    real_root = root.resolve()
    visited: set[Path] = {real_root}

    def visit(folder: Path, rel_prefix: str) -> Iterator[tuple[Path, str]]:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            report.add(folder, UNREADABLE, exc.strerror or str(exc))
            return
        for entry in entries:
            path = Path(entry.path)
            rel = f"{rel_prefix}{entry.name}"
            try:
                is_link = entry.is_symlink()
                if is_link:
                    try:
                        target = path.resolve()
                    except RuntimeError:   # Python < 3.13 raises it for a loop of links
                        report.add(path, SYMLINK_LOOP, "the link leads back to itself")
                        continue
                    if not _is_within(target, real_root):
                        report.add(path, SYMLINK_OUTSIDE, f"points to {target}")
                        continue
                    if not target.exists():
                        report.add(path, UNREADABLE, "broken symlink")
                        continue
                is_dir = entry.is_dir()  # follows links that stay inside the root
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    report.add(path, SYMLINK_LOOP, "the link leads back to itself")
                else:
                    report.add(path, UNREADABLE, exc.strerror or str(exc))
                continue
            if opts.exclude and _matches(rel, opts.exclude):
                report.add(path, EXCLUDED, "matches exclude")
                continue
            if is_dir:
                if _is_index_dir(path):
                    report.add(path, INDEX_DIR, "its files are not documents")
                    continue
                real = path.resolve()
                if real in visited:
                    report.add(path, SYMLINK_LOOP, f"folder {real} already walked")
                    continue
                visited.add(real)
                yield from visit(path, rel + "/")
                continue
            if opts.include and not _matches(rel, opts.include):
                report.add(path, NOT_INCLUDED, "matches no include pattern")
                continue
            yield path, rel

    yield from visit(root, "")


def _is_index_dir(folder: Path) -> bool:
    """Whether ``folder`` holds a hybridrag index (its manifest or its docstore): such a folder
    (the ``--index`` of the ingest itself, kept inside the corpus) is not walked."""
    if os.path.lexists(folder / "docstore.sqlite") or os.path.lexists(folder / "milvus-attach.json"):
        return True
    return os.path.lexists(folder / "manifest.json") and os.path.lexists(folder / "LOCK")


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(_SNIFF_BYTES)


def _read_all(path: Path, opts: _Options) -> bytes:
    size = path.stat().st_size
    if size > opts.max_file_bytes:
        raise _Skip(TOO_LARGE, f"file is {size} bytes, max_file_bytes is {opts.max_file_bytes}")
    with open(path, "rb") as fh:
        return fh.read()


def _check_text(text: str, opts: _Options, line: int | None = None) -> None:
    if not text.strip():
        raise _Skip(EMPTY, "no text" if not text else "only whitespace", line)
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > opts.max_bytes:
        raise _Skip(TOO_LARGE, f"text is {size} bytes, max_bytes is {opts.max_bytes}", line)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (not a finite number)")


def _parse_json(text: str, line: int | None = None) -> Any:
    """``json.loads`` that refuses NaN/Infinity and reports too-deep nesting as bad json."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        where = f"column {exc.colno}" if line is not None else f"line {exc.lineno} column {exc.colno}"
        raise _Skip(BAD_JSON, f"{exc.msg.removesuffix(' at')} at {where}", exc.lineno if line is None else line) \
            from None
    except ValueError as exc:
        raise _Skip(BAD_JSON, str(exc), line) from None
    except RecursionError:
        raise _Skip(BAD_JSON, "nested too deeply to parse", line) from None


def _record_document(obj: Any, rel: str, position: int, fmt: str, opts: _Options,
                     default_id: str | None = None, renamed: set[str] | None = None) -> Document:
    """A JSON/CSV record to a Document; raises _Skip(BAD_RECORD/EMPTY/TOO_LARGE). Its other
    fields (and those of its ``metadata`` object) go into the metadata; one named as a key of
    :data:`RESERVED_METADATA` is kept as ``record_<key>`` (added to ``renamed``)."""
    if not isinstance(obj, dict):
        raise _Skip(BAD_RECORD, f"expected an object, got {type(obj).__name__}", position)
    text = obj.get(opts.text_field)
    if not isinstance(text, str):
        why = ("missing" if opts.text_field not in obj else "is null") if text is None \
            else f"not a string ({type(text).__name__})"
        raise _Skip(BAD_RECORD, f"text field {opts.text_field!r} {why}; keys: {sorted(obj)[:10]}", position)
    raw_id = obj.get(opts.id_field, obj.get("_id"))
    if raw_id is None:
        doc_id = default_id if default_id is not None else f"{rel}#{position}"
    elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) and str(raw_id).strip():
        doc_id = str(raw_id)
    else:
        raise _Skip(BAD_RECORD, f"id field {opts.id_field!r} is {raw_id!r}", position)
    title = obj.get(opts.title_field) if opts.title_field else None
    full = join_title_text(title, text) if isinstance(title, str) else text
    _check_text(full, opts, position)
    used = {opts.text_field, opts.id_field, "_id"}
    metadata: dict[str, Any] = {"source": rel, "format": fmt, "position": position}
    if isinstance(title, str):
        used.add(opts.title_field)
        if title.strip():
            metadata["title"] = title.strip()
    extra = obj.get("metadata")
    fields = [(k, v) for k, v in obj.items() if k not in used and (k != "metadata" or not isinstance(v, dict))]
    if isinstance(extra, dict):
        fields += extra.items()
    for key, value in fields:
        if key in RESERVED_METADATA:   # where the record was read: the record's own value is kept beside it
            key = f"record_{key}"
            if renamed is not None:
                renamed.add(key)
        metadata.setdefault(key, value)
    return Document(doc_id, full, metadata)


def _warn_renamed(report: SkipReport, path: Path, renamed: set[str]) -> None:
    if renamed:
        keys = ", ".join(f"{k.removeprefix('record_')!r} as {k!r}" for k in sorted(renamed))
        report.warn(path, RENAMED_FIELDS, f"kept {keys}: {', '.join(RESERVED_METADATA)} say where a record was read")


def _iter_jsonl(path: Path, rel: str, opts: _Options, report: SkipReport) -> Iterator[Document]:
    """Stream a JSON-lines file: one record per line, bad lines reported and skipped."""
    head = _read_head(path)
    bom = _bom_encoding(head)
    yielded = 0
    renamed: set[str] = set()
    if bom in ("utf-16", "utf-32"):
        lines: Iterator[tuple[int, str | int, int]] = _text_lines(path, bom, opts.max_file_bytes)
    else:
        lines = _byte_lines(path, head, opts.max_file_bytes)
    for lineno, line, replaced in lines:
        try:
            if isinstance(line, int):
                raise _Skip(TOO_LARGE, f"line is over {line} bytes, max_file_bytes is {opts.max_file_bytes}",
                            lineno)
            if not line.strip():
                continue
            doc = _record_document(_parse_json(line, lineno), rel, lineno, "jsonl", opts, renamed=renamed)
        except _Skip as skip:
            report.add(path, skip.reason, skip.detail, skip.line)
            continue
        _warn_replaced(report, path, replaced, lineno)
        yielded += 1
        yield doc
    _warn_renamed(report, path, renamed)
    if not yielded:
        raise _Skip(EMPTY, "no documents in file")


def _bounded_lines(fh: Any, limit: int) -> Iterator[tuple[int, Any]]:
    """``(line number, line)`` of a file object, or ``(line number, size so far)`` for a line
    longer than ``limit`` (read past in pieces, never held whole)."""
    lineno = 0
    while True:
        line = fh.readline(limit + 1)
        if not line:
            return
        lineno += 1
        newline = b"\n" if isinstance(line, bytes) else "\n"
        if len(line) <= limit or line.endswith(newline):
            yield lineno, line
            continue
        size = len(line)
        while line and not line.endswith(newline):
            line = fh.readline(1 << 20)
            size += len(line)
        yield lineno, size


def _text_lines(path: Path, encoding: str, limit: int) -> Iterator[tuple[int, str | int, int]]:
    with open(path, encoding=encoding, errors="replace", newline=None) as fh:
        for lineno, line in _bounded_lines(fh, limit):
            yield lineno, line, 0


def _byte_lines(path: Path, head: bytes, limit: int) -> Iterator[tuple[int, str | int, int]]:
    # ASCII-compatible encodings: split on b"\n" and decode line by line, so a huge file
    # is never held in memory and one badly encoded line cannot spoil the rest. Yields
    # (line number, text or the size of an over-long line, invalid UTF-8 bytes replaced).
    fallback = None
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the sniff boundary
            nearly = _nearly_utf8(head.rsplit(b"\n", 1)[0])  # whole lines: no cut character
            fallback = None if nearly else _detect_with_charset_normalizer(head)
    with open(path, "rb") as fh:
        for lineno, raw in _bounded_lines(fh, limit):
            if isinstance(raw, int):
                yield lineno, raw, 0
                continue
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                yield lineno, raw.decode("utf-8"), 0
                continue
            except UnicodeDecodeError:
                pass
            nearly = _nearly_utf8(raw) if fallback is None else None
            if nearly is not None:
                yield lineno, nearly[0], nearly[1]
                continue
            try:
                yield lineno, raw.decode(fallback or "latin-1"), 0
            except (UnicodeDecodeError, LookupError):
                yield lineno, raw.decode("latin-1"), 0


def _iter_json(path: Path, rel: str, opts: _Options, report: SkipReport) -> Iterator[Document]:
    text, _, replaced = _decode(_read_all(path, opts))
    if not text.strip():
        raise _Skip(EMPTY, "no text")
    data = _parse_json(text)
    _warn_replaced(report, path, replaced)
    renamed: set[str] = set()
    if isinstance(data, dict):
        doc = _record_document(data, rel, 1, "json", opts, default_id=rel, renamed=renamed)
        _warn_renamed(report, path, renamed)
        yield doc
        return
    if not isinstance(data, list):
        raise _Skip(BAD_JSON, f"expected an object or a list of objects, got {type(data).__name__}")
    yielded = 0
    for i, obj in enumerate(data, start=1):
        try:
            doc = _record_document(obj, rel, i, "json", opts, renamed=renamed)
        except _Skip as skip:
            report.add(path, skip.reason, skip.detail, skip.line)
            continue
        yielded += 1
        yield doc
    _warn_renamed(report, path, renamed)
    if not yielded:
        raise _Skip(EMPTY, "no documents in file")


def _unterminated_row(text: str) -> int | None:
    """The data row (1-based, after the header) whose quoted field runs to the end of the file
    unclosed, else None. The tolerant reader used for the rows would make the rest of the file
    that row's last field; the strict one says "unexpected end of data" there (and complains
    about quirks the tolerant one reads sensibly, such as ``"b"c``: those rows are counted and
    passed over)."""
    if text.count('"') % 2 == 0:   # an unclosed quote leaves an odd count: most files are not read twice
        return None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows = 0   # complete rows, the header included
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return None
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                return rows   # the header is row 0 of the data rows
            rows += 1
            continue
        rows += bool(row)   # blank lines are no row (as for the reader of the rows)


def _iter_csv(path: Path, rel: str, opts: _Options, report: SkipReport) -> Iterator[Document]:
    text, _, replaced = _decode(_read_all(path, opts))
    if not text.strip():
        raise _Skip(EMPTY, "no text")
    _warn_replaced(report, path, replaced)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    text_col = opts.csv_text_column or opts.text_field
    if text_col not in columns:
        raise _Skip(BAD_CSV, f"no text column {text_col!r}; columns: {columns}")
    id_col = opts.csv_id_column or (opts.id_field if opts.id_field in columns else None)
    if id_col is not None and id_col not in columns:
        raise _Skip(BAD_CSV, f"no id column {id_col!r}; columns: {columns}")
    title_col = opts.title_field if opts.title_field in columns else None
    sub = _Options(**{**opts.__dict__, "text_field": text_col, "id_field": id_col or "\x00no-id",
                      "title_field": title_col})
    unterminated = _unterminated_row(text)
    yielded = 0
    row_no = 0
    renamed: set[str] = set()
    try:
        for row_no, row in enumerate(reader, start=1):
            if row_no == unterminated:
                raise _Skip(BAD_CSV, "a quoted field is never closed: the rest of the file from this row would be "
                                     "one field (the rows after it are not read)", row_no)
            record = {k: v for k, v in row.items() if k is not None}
            try:
                doc = _record_document(record, rel, row_no, "csv", sub, renamed=renamed)
            except _Skip as skip:
                report.add(path, skip.reason, skip.detail, skip.line)
                continue
            yielded += 1
            yield doc
    except csv.Error as exc:
        raise _Skip(BAD_CSV, str(exc), row_no + 1) from None
    finally:
        _warn_renamed(report, path, renamed)
    if not yielded:
        raise _Skip(EMPTY, "no rows with text")


def _file_document(path: Path, rel: str, ext: str, opts: _Options, report: SkipReport) -> Document:
    if ext == ".pdf":
        try:
            text, meta = read_pdf_text(path)
        except ImportError as exc:
            raise _Skip(MISSING_DEPENDENCY, str(exc)) from None
        except Exception as exc:  # pypdf raises many types on damaged files
            raise _Skip(UNREADABLE, f"PDF error: {type(exc).__name__}: {exc}") from None
        if not text.strip():
            raise _Skip(EMPTY, "no extractable text (a scanned PDF?)")
        _check_text(text, opts)
        return Document(rel, text, {"source": rel, "format": "pdf", **meta})
    data = _read_all(path, opts)
    if ext in (".html", ".htm"):
        html, encoding, replaced = _decode_html(data)
        text, title = html_to_text(html)
        _check_text(text, opts)
        _warn_replaced(report, path, replaced)
        meta: dict[str, Any] = {"source": rel, "format": "html", "encoding": encoding}
        if title:
            meta["title"] = title
        return Document(rel, text, meta)
    text, encoding, replaced = _decode(data)
    text = _normalise_newlines(text)
    _check_text(text, opts)
    _warn_replaced(report, path, replaced)
    return Document(rel, text, {"source": rel, "format": ext.lstrip("."), "encoding": encoding})


def _documents_from_file(path: Path, rel: str, opts: _Options, report: SkipReport) -> Iterator[Document]:
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise _Skip(UNSUPPORTED, f"{ext or 'no extension'}; supported: {' '.join(SUPPORTED_EXTENSIONS)}")
    if not path.is_file():
        raise _Skip(NOT_A_FILE, "a device, pipe or socket")
    if path.stat().st_size == 0:
        raise _Skip(EMPTY, "0 bytes")
    if ext != ".pdf" and _looks_binary(_read_head(path)):
        raise _Skip(BINARY, "contains NUL bytes")
    if ext == ".jsonl":
        yield from _iter_jsonl(path, rel, opts, report)
    elif ext == ".json":
        yield from _iter_json(path, rel, opts, report)
    elif ext == ".csv":
        yield from _iter_csv(path, rel, opts, report)
    else:
        yield _file_document(path, rel, ext, opts, report)


def iter_documents(
    paths: PathLike | Iterable[PathLike],
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    id_field: str = "id",
    text_field: str = "text",
    title_field: str | None = "title",
    csv_text_column: str | None = None,
    csv_id_column: str | None = None,
    report: SkipReport | None = None,
) -> Iterator[Document]:
    """Documents from files and folders (folders walked recursively, in sorted order).

    ``include``/``exclude``: glob patterns on the path relative to its root (``*``
    crosses ``/``; a pattern without ``/`` also matches the file or folder name; an
    excluded folder is not entered). ``max_bytes``: largest document text (UTF-8
    bytes); larger ones are skipped as "too large". ``max_file_bytes``: larger files
    are not read (JSON lines files are streamed and exempt). ``id_field``/
    ``text_field``/``title_field``: keys of JSON records (BEIR's ``_id`` is always
    recognised). ``csv_text_column`` (default ``text_field``) and ``csv_id_column``
    (default ``id_field`` when present, else the row number) choose CSV columns.

    Skips go to ``report``; without one they are logged as warnings. Arguments are
    checked at once: a missing path raises ``FileNotFoundError``.
    """
    roots = _as_path_list(paths)
    for name, value in (("max_bytes", max_bytes), ("max_file_bytes", max_file_bytes)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int (bytes), got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be at least 1 byte, got {value}")
    for name, field_value in (("id_field", id_field), ("text_field", text_field)):
        if not isinstance(field_value, str) or not field_value:
            raise TypeError(f"{name} must be a non-empty string, got {field_value!r}")
    for name, opt in (("title_field", title_field), ("csv_text_column", csv_text_column),
                      ("csv_id_column", csv_id_column)):
        if opt is not None and (not isinstance(opt, str) or not opt):
            raise TypeError(f"{name} must be a non-empty string or None, got {opt!r}")
    for root in roots:
        if not root.exists() and not root.is_symlink():
            raise FileNotFoundError(f"document source not found: {root}")
    opts = _Options(_as_patterns(include, "include"), _as_patterns(exclude, "exclude"), max_bytes,
                    max_file_bytes, id_field, text_field, title_field, csv_text_column, csv_id_column)
    return _generate(roots, opts, report)


def root_labels(roots: Sequence[PathLike]) -> list[str]:
    """The id prefix of each root when several are read together: its name, or as many of
    its last path components as make it unique among the roots (``a/docs``, ``b/docs``).
    Depends only on the set of roots, so a rerun with the same roots gives the same ids."""
    parts = [Path(os.path.abspath(r)).parts[1:] or (os.path.abspath(r),) for r in roots]
    labels = []
    for i, mine in enumerate(parts):
        others = [p for j, p in enumerate(parts) if j != i and p != mine]
        k = 1
        while k < len(mine) and any(p[-k:] == mine[-k:] for p in others):
            k += 1
        labels.append("/".join(mine[-k:]))
    return labels


def _generate(roots: list[Path], opts: _Options, report: SkipReport | None) -> Iterator[Document]:
    from hybridrag.errors import DocumentError
    from hybridrag.index import as_document

    own = report is None
    rep = SkipReport() if report is None else report
    unique = list(dict.fromkeys(Path(os.path.abspath(r)) for r in roots))  # a root given twice is read once
    labels = root_labels(unique) if len(unique) > 1 else [None] * len(unique)
    first_seen: dict[str, str] = {}  # document id -> where it was first read
    for root, label in zip(unique, labels):
        is_dir = root.is_dir()
        # ``base / metadata["source"]`` is the file: the root itself for one folder, the
        # folder above the label (``a/docs``) when the ids carry one.
        depth = 0 if label is None and is_dir else (label or root.name).count("/") + 1
        base = root.parents[depth - 1] if depth else root
        prefix = "" if label is None else label + "/"
        if is_dir:
            files: Iterable[tuple[Path, str]] = ((p, prefix + rel) for p, rel in _walk(root, opts, rep))
        else:
            files = [(root, label or root.name)]
        for path, rel in files:
            before = len(rep)
            try:
                for doc in _documents_from_file(path, rel, opts, rep):
                    line = doc.metadata.get("position") if doc.metadata.get("format") in ("jsonl", "json", "csv") \
                        else None
                    doc = Document(doc.id, doc.text, {**doc.metadata, "root": str(base)})
                    try:
                        as_document(doc)
                    except DocumentError as exc:
                        rep.add(path, BAD_RECORD, str(exc), line)
                        continue
                    where = f"{path}:{line}" if line is not None else str(path)
                    if doc.id in first_seen:
                        rep.add(path, DUPLICATE_ID, f"{doc.id!r} was first read at {first_seen[doc.id]}", line)
                        continue
                    first_seen[doc.id] = where
                    yield doc
            except _Skip as skip:
                rep.add(path, skip.reason, skip.detail, skip.line)
            except OSError as exc:
                rep.add(path, UNREADABLE, exc.strerror or str(exc))
            if own:
                for entry in rep.skipped[before:]:
                    logger.warning("skipped %s", entry)
