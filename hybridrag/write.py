"""The write path: documents in, chunks encoded once into every store and the docstore.

``add``/``upsert`` take batches of documents: each document is checked (id, text, metadata,
size, chunk count) before anything of its batch is written, so a refused document
(``errors="skip"``) leaves the others whole; unchanged documents (same content hash) are
skipped; a changed one has its old chunks deleted and its new chunks written under new
slots. The chunks of a batch are encoded in one call (one forward pass gives every neural
representation) and added to each store's fresh part; the docstore rows carry the next
generation, made visible by the commit (``hybridrag/index.py``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hybridrag.encoders.bm25 import with_context
from hybridrag.errors import DocumentError
from hybridrag.modes import MODES
from hybridrag.storage.files import disk_full_errors
from hybridrag.types import Chunk, Document

MAX_ID_CHARS = 1024
# Metadata nested deeper than this is refused (DocumentError): JSON encoders, SQLite's json1
# and every recursive walk would otherwise hit Python's recursion limit on hostile input.
MAX_METADATA_DEPTH = 64


@dataclass
class AddResult:
    """What one ``add``/``upsert`` call did."""

    added: list[str] = field(default_factory=list)      # new or replaced document ids
    unchanged: list[str] = field(default_factory=list)  # skipped: same content hash already indexed
    chunks: int = 0                                      # chunks written
    empty: list[str] = field(default_factory=list)      # documents with no text to index
    # errors="skip" only: (position in the call, id or None, reason) of each refused document
    failed: list[tuple[int, str | None, str]] = field(default_factory=list)

    def merge(self, other: "AddResult") -> None:
        self.added += other.added
        self.unchanged += other.unchanged
        self.chunks += other.chunks
        self.empty += other.empty
        self.failed += other.failed


def _check_depth(metadata: Mapping[str, Any], what: str) -> None:
    """Refuse metadata nested deeper than MAX_METADATA_DEPTH (checked without recursion), and
    integers outside 64 bits: SQLite reads them back as inexact floats, and no filter can name
    them (filters refuse such values)."""
    stack: list[tuple[Any, int]] = [(metadata, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            raise DocumentError(f"{what}: metadata is nested more than {MAX_METADATA_DEPTH} levels deep")
        if isinstance(value, int) and not isinstance(value, bool) and not -(2 ** 63) <= value < 2 ** 63:
            raise DocumentError(f"{what}: metadata integer {value} does not fit in 64 bits (store it as a string)")
        if isinstance(value, Mapping):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)


def content_hash(text: str, metadata: Mapping[str, Any]) -> str:
    """sha256 of a document's text and metadata (what decides "unchanged")."""
    _check_depth(metadata, "content_hash")
    h = hashlib.sha256()
    h.update(text.encode("utf-8", "surrogatepass"))
    h.update(b"\0")
    h.update(json.dumps(metadata, sort_keys=True, ensure_ascii=True, default=str).encode())
    return h.hexdigest()


def as_document(obj: Any, position: int = 0) -> Document:
    """Accept a :class:`Document`, a mapping with ``id``/``text``/``metadata``, or an object with
    those attributes (e.g. a LlamaIndex or LangChain document adapted by a connector)."""
    if isinstance(obj, Document):
        doc = obj
    elif isinstance(obj, Mapping):
        unknown = set(obj) - {"id", "text", "metadata"}
        if unknown:
            raise DocumentError(f"document {position}: unknown key(s) {sorted(unknown)}; "
                                "a document is {'id', 'text', 'metadata'}")
        if "id" not in obj or "text" not in obj:
            raise DocumentError(f"document {position}: needs 'id' and 'text', got keys {sorted(obj)}")
        meta = obj.get("metadata")
        # None means "no metadata"; any other non-mapping (a list, a string, 0) is an error
        # below, never silently replaced by {}.
        doc = Document(obj["id"], obj["text"], {} if meta is None else meta)
    else:
        raise TypeError(f"document {position}: expected a dict or hybridrag.Document, got {type(obj).__name__}")
    if not isinstance(doc.id, str) or not doc.id or len(doc.id) > MAX_ID_CHARS or doc.id != doc.id.strip():
        raise DocumentError(f"document {position}: id must be a non-empty string of at most {MAX_ID_CHARS} "
                            f"characters without surrounding whitespace, got {doc.id!r:.80}")
    if "\0" in doc.id:
        raise DocumentError(f"document {position}: id contains a NUL character: {doc.id!r:.80}")
    try:
        doc.id.encode("utf-8")
    except UnicodeEncodeError:
        raise DocumentError(f"document {position}: id contains a lone surrogate (not valid UTF-8): "
                            f"{doc.id!r:.80}") from None
    if not isinstance(doc.text, str):
        raise DocumentError(f"document {doc.id!r}: text must be a string, got {type(doc.text).__name__}")
    if not isinstance(doc.metadata, Mapping):
        raise DocumentError(f"document {doc.id!r}: metadata must be a dict, got {type(doc.metadata).__name__}")
    _check_depth(doc.metadata, f"document {doc.id!r}")
    try:
        json.dumps(doc.metadata, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise DocumentError(f"document {doc.id!r}: metadata is not JSON-serialisable: {e}") from None
    for key in doc.metadata:
        if not isinstance(key, str):
            raise DocumentError(f"document {doc.id!r}: metadata keys must be strings, got {key!r}")
    return doc


def write_docs(idx: Any, documents: Iterable[Any], replace: bool, commit: bool, batch_size: int,
                progress: Any, errors: str = "raise") -> AddResult:
    if isinstance(documents, (str, bytes, Mapping, Document)):
        raise TypeError("documents must be an iterable of documents (a list), not a single "
                        f"{type(documents).__name__}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
    skip = errors == "skip"
    bar = None
    if progress is True:
        from tqdm import tqdm

        total = len(documents) if isinstance(documents, Sized) else None
        bar = tqdm(total=total, unit=" docs", desc="add" if not replace else "upsert", dynamic_ncols=True)
        progress = None
    elif progress is False:
        progress = None
    elif progress is not None and not callable(progress):
        raise TypeError(f"progress must be True, False, None or a callable taking a chunk count, "
                        f"got {type(progress).__name__} {progress!r}")
    result = AddResult()
    with contextlib.nullcontext() if bar is None else bar, disk_full_errors(idx.path, lambda: idx._gen), \
            idx._writing(), idx._undo_on_error():
        batch: list[tuple[int, Document]] = []
        seen: dict[str, int] = {}
        for i, obj in enumerate(documents):
            try:
                doc = as_document(obj, i)
                if doc.id in seen:
                    raise DocumentError(f"document id {doc.id!r} appears twice in one call "
                                        f"(positions {seen[doc.id]} and {i})")
            except (DocumentError, TypeError) as e:
                if not skip:
                    raise
                raw = obj.get("id") if isinstance(obj, Mapping) else getattr(obj, "id", None)
                result.failed.append((i, raw if isinstance(raw, str) else None, str(e)))
                continue
            seen[doc.id] = i
            batch.append((i, doc))
            if len(batch) >= batch_size:
                result.merge(_write_batch(idx, batch, replace, progress, skip))
                if bar is not None:
                    bar.update(len(batch))
                batch = []
        if batch:
            result.merge(_write_batch(idx, batch, replace, progress, skip))
            if bar is not None:
                bar.update(len(batch))
        if commit:
            idx.commit()
    return result

def _write_batch(idx: Any, docs: list[tuple[int, Document]], replace: bool, progress: Any,
                 skip: bool = False) -> AddResult:
    # Every per-document check runs before anything is written, so a refused document
    # (errors="skip") leaves the batch's other documents to be written whole.
    res = AddResult()
    limit = idx.pipeline.chunking.max_document_bytes
    todo: list[tuple[int, Document]] = []
    hashes: dict[str, str] = {}

    def refuse(pos: int, doc: Document, msg: str) -> None:
        if not skip:
            raise DocumentError(msg)
        res.failed.append((pos, doc.id, msg))

    meta_limit = idx.pipeline.chunking.max_metadata_bytes
    for pos, doc in docs:
        size = len(doc.text.encode("utf-8", "surrogatepass"))
        if size > limit:
            refuse(pos, doc, f"document {doc.id!r} is {size} bytes, over chunking.max_document_bytes = "
                             f"{limit}; split it or raise the limit")
            continue
        if doc.metadata:
            meta_size = len(json.dumps(doc.metadata, ensure_ascii=False).encode("utf-8", "surrogatepass"))
            if meta_size > meta_limit:
                refuse(pos, doc, f"the metadata of document {doc.id!r} is {meta_size} bytes as JSON, over "
                                 f"chunking.max_metadata_bytes = {meta_limit} (each of its chunks keeps a copy); "
                                 "keep large values elsewhere or raise the limit")
                continue
        h = content_hash(doc.text, doc.metadata)
        old = idx.docstore.doc_hash(doc.id)
        if old == h:
            res.unchanged.append(doc.id)
            continue
        if old is not None and not replace:
            refuse(pos, doc, f"document {doc.id!r} is already indexed with other content; use upsert()")
            continue
        hashes[doc.id] = h
        todo.append((pos, doc))
    chunks: list[Chunk] = []
    maxc = idx.pipeline.chunking.max_chunks_per_document
    kept: list[Document] = []
    for pos, doc in todo:
        cs = idx.chunker.chunk(doc.id, doc.text, dict(doc.metadata))
        if len(cs) > maxc:
            refuse(pos, doc, f"document {doc.id!r} gives {len(cs)} chunks, over "
                             f"chunking.max_chunks_per_document = {maxc}")
            del hashes[doc.id]
            continue
        if not cs:
            res.empty.append(doc.id)
        chunks.extend(cs)
        kept.append(doc)
    if not kept:
        return res
    gen = idx._gen + 1
    # The model's pass first, beside this object's searches; then what they read changes at once.
    neural = encode_neural(idx, [c.text for c in chunks]) if chunks else {}
    with idx._rw.writing():
        replaced = [d.id for d in kept if idx.docstore.doc_hash(d.id) is not None]
        if replaced:
            remove_slots(idx, idx.docstore.delete_docs(replaced, gen))
        start = idx.docstore.next_slot()
        slots = np.arange(start, start + len(chunks), dtype=np.int64)
        if chunks:
            add_rows(idx, slots, neural, [c.text for c in chunks], [c.doc_id for c in chunks])
        idx.docstore.add_chunks(chunks, slots, gen, hashes)
        if "docs" in idx.stores and chunks:   # [milvus] whole_index: the chunks in Milvus too
            idx.stores["docs"].add(slots, [chunk_record(c, hashes.get(c.doc_id)) for c in chunks])
        idx._dirty = True
    res.added = [d.id for d in kept]
    res.chunks = len(chunks)
    if progress is not None:
        progress(len(chunks))
    return res

def chunk_record(c: Chunk, doc_hash: str | None) -> dict[str, Any]:
    """What ``MilvusDocsStore.add`` takes for chunk ``c`` (``DocStore.get``'s keys and the
    document's content hash)."""
    raw = c.text.encode("utf-8", "surrogatepass")
    return {"chunk_id": c.chunk_id, "doc_id": c.doc_id, "ordinal": int(c.ordinal), "text": c.text,
            "metadata": dict(c.metadata), "start": int(c.start), "end": int(c.end),
            "content_hash": hashlib.sha256(raw).hexdigest(), "doc_hash": doc_hash}


def encode_into_stores(idx: Any, texts: list[str], slots: np.ndarray, documents: Sequence[str]) -> None:
    """Encode ``texts`` once (one encoder pass for every neural mode, BM25's analyser for the
    others) and add the rows under ``slots`` to each enabled mode's store. ``documents``: each
    text's document id; every chunk of a document is in the call, in reading order (BM25 rows
    count their neighbours' terms with ``[bm25] context``)."""
    add_rows(idx, slots, encode_neural(idx, texts), texts, documents)


def encode_neural(idx: Any, texts: list[str]) -> dict[str, Any]:
    """``mode -> rows`` of the neural modes (one encoder pass for all of them); changes nothing
    a search reads, so it runs beside this object's searches."""
    neural = [m for m in idx.pipeline.modes if MODES[m].neural]
    if not neural:
        return {}
    e = idx.pipeline.encoder
    out = idx.encoder.encode(texts, max_length=e.max_length, batch_size=e.batch_size, **encode_flags(idx, neural))
    return {m: getattr(out, m) for m in neural}


def add_rows(idx: Any, slots: np.ndarray, neural: Mapping[str, Any], texts: list[str],
             documents: Sequence[str]) -> None:
    """Add the neural rows (:func:`encode_neural`) and BM25's, analysed here (new terms get ids
    in the vocabulary searches read), under ``slots`` to each enabled mode's store."""
    for m, rows in neural.items():
        idx.stores[m].add(slots, rows)
    for m in idx.pipeline.modes:
        if not MODES[m].neural:   # BM25, the analysed mode
            b = idx.pipeline.bm25
            rows = with_context(idx.bm25.encode_documents(texts), documents, b.context, b.context_weight)
            idx.stores[m].add(slots, rows)
    idx._table.added(slots)


def encode_flags(idx: Any, neural: Sequence[str]) -> dict[str, bool]:
    """The encoder's switches for the ``neural`` modes wanted (``sparse`` only exists for M3)."""
    flags = {"dense": "dense" in neural, "colbert": "colbert" in neural}
    if idx.pipeline.encoder.kind == "m3":
        flags["sparse"] = "sparse" in neural
    return flags


def remove_slots(idx: Any, slots: Sequence[int] | np.ndarray) -> None:
    arr = np.asarray(list(slots), dtype=np.int64)
    if arr.size:
        for store in idx.stores.values():
            store.remove(arr)
        idx._table.removed(arr)


def delete(idx: Any, ids: Iterable[str] | str | None = None, filters: Mapping[str, Any] | None = None,
           commit: bool = True) -> int:
    """Delete whole documents by id and/or by a metadata filter; returns how many documents."""
    if ids is None and filters is None:
        raise ValueError("delete() needs ids or filters (refusing to delete everything implicitly)")
    if filters is not None and isinstance(filters, Mapping) and not filters:
        # an empty filter matches every document: never a way to delete them all
        raise ValueError("delete(filters={}) would match every document; refusing to delete everything "
                         "implicitly (give ids, or a filter with a condition)")
    if isinstance(ids, str):
        ids = [ids]
    targets: set[str] = set()
    if ids is not None:
        for i in ids:
            if not isinstance(i, str):
                raise TypeError(f"document ids must be strings, got {i!r}")
            targets.add(i)
    with disk_full_errors(idx.path, lambda: idx._gen), idx._writing(), idx._undo_on_error():
        if filters is not None:
            mask = idx.docstore.filter_mask(filters, idx.docstore.next_slot())
            targets |= set(idx.docstore.doc_ids_for_slots(np.flatnonzero(mask)))
        present = [t for t in sorted(targets) if idx.docstore.doc_hash(t) is not None]
        if present:
            with idx._rw.writing():
                remove_slots(idx, idx.docstore.delete_docs(present, idx._gen + 1))
                idx._dirty = True
        if commit:
            idx.commit()
    return len(present)


@contextlib.contextmanager
def encoding_pool(idx: Any, devices: Sequence[str] | int) -> Any:
    """:meth:`hybridrag.index.HybridIndex.encoding_pool` (documented there)."""
    from hybridrag.encoders.pool import EncoderPool

    if isinstance(devices, int) and not isinstance(devices, bool):
        if devices < 1:
            from hybridrag.errors import ConfigError

            raise ConfigError(f"encoding_pool needs at least one process, got {devices}")
        devices = ["cpu"] * devices
    own = idx._encoder
    loaded: list[Any] = []

    def local() -> Any:   # the in-process encoder, for anything but encode()
        if own is not None:
            return own
        if not loaded:
            from hybridrag import components

            loaded.append(components.load_encoder(idx.pipeline, idx._device, idx._manifest))
        return loaded[0]

    pool = EncoderPool(idx.pipeline, devices, idx._manifest, local=local)
    idx._encoder = pool
    try:
        yield pool
    finally:
        idx._encoder = own if own is not None else (loaded[0] if loaded else None)
        pool.close()
