"""A new writer directory for an index Milvus holds whole, in place (``HybridIndex.take_over``).

With ``[milvus] whole_index = true`` everything a commit makes is in Milvus: the vector and
BM25 rows, the text, metadata, ids and document hashes (the docs collection), and each
published commit's manifest with its stores' records (the head collection). The writer's
directory holds a copy of that (its SQLite docstore, the BM25 vocabulary, the records) plus
the write lock. When it is lost, :func:`take_over` makes that state again in a new directory
from the newest published commit, reading Milvus and writing local files only, and then makes
the new directory the owner of the index's collections, so that it writes them from then on
under the same collection prefix: query nodes keep working, and no row is copied or encoded.

Order: the local files first (the manifest last), then Milvus's collection properties
(``hybridrag.owner`` = the new directory, ``hybridrag.committed`` = the taken commit's
generations, so that a commit the lost writer made but never published is dropped by the new
writer's first write, as a crashed writer's rows are). A failure before the properties change
removes the new directory and leaves Milvus as it was. The old writer must be gone: a writer
still running on the old directory is refused at its next commit (every commit checks the
owner), but its uncommitted rows would share slots with the new writer's.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hybridrag.errors import ConfigError, IndexFormatError
from hybridrag.storage import commit as commit_mod
from hybridrag.storage import opening
from hybridrag.storage.commit import DOCSTORE
from hybridrag.storage.manifest import write_manifest
from hybridrag.storage.migrate import _copy_docstore
from hybridrag.storage.table import SegmentTable

__all__ = ["take_over"]


def _refuse_a_living_writers_file(milvus_uri: str | None) -> None:
    """A Milvus Lite file inside an index directory belongs to that directory (a copy of the
    directory copies it; its writer does not check the owner of collections in it), so the
    writer there is not lost: taking it over would leave two writers of one index."""
    from hybridrag.stores.milvus import URI_ENV, _is_server

    uri = milvus_uri or os.environ.get(URI_ENV) or None
    if not isinstance(uri, str) or _is_server(uri):
        return   # (attach reports a missing or bad uri)
    for d in Path(uri).expanduser().resolve().parents:
        if (d / opening.MANIFEST).is_file():
            raise ConfigError(f"the Milvus Lite file {uri!r} is inside the index directory {str(d)!r}, whose writer "
                              f"owns it: open that index (HybridIndex.load({str(d)!r})). take_over is for a writer "
                              "whose directory is lost; to make a writer elsewhere, migrate it "
                              "(hybridrag migrate, with a collection prefix of its own)")


def take_over(cls: Any, path: str | os.PathLike[str], *, collection: str, milvus_uri: str | None = None,
              milvus_token: str | None = None, encoder: Any = None, batch_size: int = 4096) -> Any:
    """:meth:`hybridrag.index.HybridIndex.take_over` (documented there)."""
    from hybridrag.stores.base import new_file
    from hybridrag.stores.milvus import _COMMITTED, _OWNER, directory_owner

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}")
    p = Path(path)
    if p.exists() or p.is_symlink():
        if not p.is_dir() or p.is_symlink() or any(p.iterdir()):
            raise ConfigError(f"{str(p)!r} exists and is not an empty directory; take_over makes the new writer's "
                              "directory there")
    _refuse_a_living_writers_file(milvus_uri)
    made = not p.exists()
    node = opening.attach(cls, p, collection=collection, milvus_uri=milvus_uri, milvus_token=milvus_token,
                          encoder=encoder)
    try:
        head = node._attached
        uri, token = node._milvus_conn["uri"], node._milvus_conn.get("token")
        gen = node._gen
        got = head.latest()
        if got is None or got[0] != gen:
            raise IndexFormatError(f"a writer published generation {None if got is None else got[0]} under "
                                   f"{collection!r} while this one took generation {gen} over: it is alive. "
                                   "take_over is for a writer whose directory is lost; stop it first")
        records = got[1]["records"]
        manifest = copy.deepcopy(node._manifest)
        manifest.pop("manifest_sha256", None)
        checksums: dict[str, str] = {}
        # the docstore: every chunk at its slot, every document's hash (documents without
        # chunks have no row in Milvus and are not carried, as in migrate)
        from hybridrag.stores.docstore import DocStore

        ds = DocStore(p / DOCSTORE)
        try:
            _copy_docstore(node, SimpleNamespace(docstore=ds), gen, batch_size)
            ds.commit_generation(gen)
            counts = {"documents": ds.count_documents(), "chunks": ds.count(), "next_slot": ds.next_slot()}
            live = ds.live_slots()
        finally:
            ds.close()
        if counts["chunks"] != int(manifest["counts"]["chunks"]):
            raise IndexFormatError(f"generation {gen} under {collection!r} has {manifest['counts']['chunks']} chunks, "
                                   f"its docs collection gave {counts['chunks']}")
        # the committed chunks as one segment (no local store files: every store is in Milvus)
        slots = commit_mod.record(p, SegmentTable.write_slots(p, "s1", live), checksums)
        manifest["segments"] = [{"id": "s1", "rows": int(live.size), "deleted": 0, "slots": slots,
                                 "deletes": None, "files": {}}]
        manifest["next_segment"] = 2
        manifest["counts"] = counts
        manifest["docstore"] = DOCSTORE
        # each Milvus store's record, under the name the commit gave it
        for mode, entry in manifest.get("remote", {}).items():
            name = entry["files"]["milvus"]
            text = json.dumps(records[mode], indent=1, sort_keys=True)
            new_file(p, name, lambda f, text=text: f.write_text(text, encoding="utf-8"))
            commit_mod.record(p, name, checksums)
        # the BM25 vocabulary, in term-id order, from the terms collection
        vocab: list[str] = []
        if "bm25" in node.stores:
            terms = node.stores["bm25"].vocabulary_terms()
            name = f"bm25.g{gen}.vocab.json"
            text = json.dumps(terms, ensure_ascii=False)
            new_file(p, name, lambda f: f.write_text(text, encoding="utf-8"))
            vocab = [commit_mod.record(p, name, checksums)]
        manifest["bm25_vocab"] = vocab
        manifest["checksums"] = checksums
        write_manifest(p, manifest)
        # Milvus last: the new directory owns every collection of the index from here on
        if head.newest() != gen:
            raise IndexFormatError(f"a writer published generation {head.newest()} under {collection!r} during "
                                   "take_over: it is alive; stop it first")
        owner = directory_owner(p)
        client = head._client
        for store in node.stores.values():
            for name in store.collections():
                client.alter_collection_properties(name, properties={_OWNER: owner, _COMMITTED: str(store._gen)})
        client.alter_collection_properties(head.name, properties={_OWNER: owner, _COMMITTED: str(gen)})
    except BaseException:
        node.close()
        # Nothing of this attempt stays here; collections already given to it stay refused to the
        # lost writer, and a new take_over (into an empty directory) gives it all of them again.
        shutil.rmtree(p, ignore_errors=True)
        if not made:
            p.mkdir(exist_ok=True)
        raise
    node.close()
    (p / opening.POINTER).unlink()
    return cls.load(p, encoder=encoder, milvus_uri=uri, milvus_token=token)
