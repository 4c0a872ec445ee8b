"""Read BEIR-format data sets: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.

The layout is the one of the official BEIR archives: JSON lines with ``_id``/``title``/
``text`` (queries: ``_id``/``text``), and a tab-separated qrels file with a header row
``query-id  corpus-id  score``. CRLF line endings (the official qrels use them) and a
UTF-8 byte-order mark are accepted. Only the queries that have judgments in the chosen
split are kept, as BEIR evaluates them.

Covered by ``tests/test_eval.py``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridrag.sources import join_title_text
from hybridrag.types import Document

__all__ = ["BeirData", "iter_beir_corpus", "load_beir", "read_beir_queries", "read_qrels"]

PathLike = str | os.PathLike[str]


@dataclass
class BeirData:
    """One BEIR split in memory.

    ``corpus``: ``{doc_id: {"title": str, "text": str}}``; ``queries``: ``{query_id: text}``
    for the query ids judged in the split; ``qrels``: ``{query_id: {doc_id: relevance}}``.
    """

    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    name: str = ""
    split: str = "test"
    missing_docs: list[str] = field(default_factory=list)

    def documents(self) -> Iterator[Document]:
        """The corpus as :class:`Document` objects; text is ``title + "\\n\\n" + text``."""
        for doc_id, entry in self.corpus.items():
            yield Document(doc_id, join_title_text(entry["title"], entry["text"]),
                           {"title": entry["title"]} if entry["title"] else {})

    def __repr__(self) -> str:
        return (f"BeirData(name={self.name!r}, split={self.split!r}, docs={len(self.corpus)}, "
                f"queries={len(self.queries)}, judgments={sum(len(v) for v in self.qrels.values())})")


def _iter_json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; ValueError names path and line."""
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _record_id(path: Path, lineno: int, obj: dict[str, Any]) -> str:
    raw = obj.get("_id")
    if raw is None or isinstance(raw, (dict, list, bool)) or str(raw) == "":
        raise ValueError(f"{path}:{lineno}: record has no usable '_id' (got {raw!r})")
    return str(raw)


def _str_field(path: Path, lineno: int, obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{path}:{lineno}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def _existing_file(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"BEIR {what} not found: {p}")
    return p


def iter_beir_corpus(path: PathLike) -> Iterator[tuple[str, dict[str, str]]]:
    """Stream ``(doc_id, {"title", "text"})`` from a BEIR ``corpus.jsonl``, line by line."""
    p = _existing_file(path, "corpus file")
    for lineno, obj in _iter_json_lines(p):
        yield _record_id(p, lineno, obj), {"title": _str_field(p, lineno, obj, "title"),
                                           "text": _str_field(p, lineno, obj, "text")}


def read_beir_queries(path: PathLike) -> dict[str, str]:
    """All queries of a BEIR ``queries.jsonl`` as ``{query_id: text}``."""
    p = _existing_file(path, "queries file")
    queries: dict[str, str] = {}
    for lineno, obj in _iter_json_lines(p):
        qid = _record_id(p, lineno, obj)
        if qid in queries:
            raise ValueError(f"{p}:{lineno}: duplicate query id {qid!r}")
        queries[qid] = _str_field(p, lineno, obj, "text")
    return queries


def read_qrels(path: PathLike) -> dict[str, dict[str, int]]:
    """Read a qrels file: BEIR TSV (``qid docid score``, header optional) or TREC
    (``qid iter docid score``). Returns ``{query_id: {doc_id: relevance}}``."""
    p = _existing_file(path, "qrels file")
    qrels: dict[str, dict[str, int]] = {}
    seen_row = False
    with open(p, encoding="utf-8-sig", newline="") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t") if "\t" in line else line.split()
            if len(cols) == 3:
                qid, docid, rel = cols
            elif len(cols) == 4:
                qid, _, docid, rel = cols
            else:
                raise ValueError(f"{p}:{lineno}: expected 3 (BEIR) or 4 (TREC) columns, got {len(cols)}: {line!r}")
            try:
                value = int(rel)
            except ValueError:
                if not seen_row:
                    seen_row = True
                    continue  # the header row: query-id, corpus-id, score
                raise ValueError(f"{p}:{lineno}: relevance must be an integer, got {rel!r}") from None
            seen_row = True
            qrels.setdefault(qid.strip(), {})[docid.strip()] = value
    return qrels


def load_beir(folder: PathLike, split: str = "test", corpus: bool = True) -> BeirData:
    """Load one split of a BEIR data set folder (``corpus=False``: its queries and judgments
    only; ``corpus.jsonl`` is neither read nor needed).

    Raises ``FileNotFoundError`` naming the missing path (and the splits that exist), and
    ``ValueError`` naming ``file:line`` for malformed content or judged query ids that
    ``queries.jsonl`` lacks. Judged doc ids absent from the corpus are listed in
    ``BeirData.missing_docs`` (they still count as relevant, as in BEIR).
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"BEIR data set folder not found: {root}")
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string like 'test', got {split!r}")
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        raise FileNotFoundError(f"BEIR qrels for split {split!r} not found: {qrels_path}; available splits: {available}")
    qrels = read_qrels(qrels_path)
    all_queries = read_beir_queries(root / "queries.jsonl")
    unknown = [qid for qid in qrels if qid not in all_queries]
    if unknown:
        raise ValueError(f"{qrels_path}: {len(unknown)} judged query ids are not in "
                         f"{root / 'queries.jsonl'}, e.g. {unknown[:5]}")
    queries = {qid: all_queries[qid] for qid in sorted(qrels)}
    docs: dict[str, dict[str, str]] = {}
    corpus_path = root / "corpus.jsonl"
    for doc_id, entry in iter_beir_corpus(corpus_path) if corpus else ():
        if doc_id in docs:
            raise ValueError(f"{corpus_path}: duplicate document id {doc_id!r}")
        docs[doc_id] = entry
    missing = sorted({d for judged in qrels.values() for d in judged if d not in docs}) if corpus else []
    return BeirData(corpus=docs, queries=queries, qrels=qrels, name=root.name, split=split,
                    missing_docs=missing)
