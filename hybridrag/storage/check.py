"""``hybridrag check``: verify one committed generation of an index without changing it."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from hybridrag.errors import IndexFormatError
from hybridrag.storage.manifest import read_manifest, verify_files
from hybridrag.storage.opening import _LOAD_PATIENCE_S, _require_manifest, _Stale, open_index

DOCSTORE = "docstore.sqlite"


def check_index(path: str | os.PathLike[str]) -> list[str]:
    """Verify an index without changing it; returns a list of problems (empty = healthy).

    Checks one committed generation as a whole: the manifest, every file's sha256, SQLite's
    integrity check and every row's hash in the docstore, that the index opens as
    :meth:`HybridIndex.load` opens it (so ``check`` and ``load`` refuse the same indexes), and
    that every store holds exactly the docstore's live chunks. A writer that commits while
    ``check`` runs may remove the files of the generation being checked: ``check`` then
    checks the newer generation instead (for up to a minute), so it never reports a healthy
    index as damaged.
    """
    p = Path(path)
    deadline = time.monotonic() + _LOAD_PATIENCE_S
    while True:
        try:
            manifest = _require_manifest(p)
        except IndexFormatError as e:
            return [str(e)]
        problems = _check_generation(p, manifest)
        if not problems:
            return []
        try:
            now = read_manifest(p, missing_ok=True)
        except IndexFormatError:
            return problems
        if now is None or now["generation"] == manifest["generation"] or time.monotonic() > deadline:
            return problems


def _check_generation(p: Path, manifest: dict[str, Any]) -> list[str]:
    import sqlite3

    try:
        verify_files(p, manifest)
    except IndexFormatError as e:
        return [str(e)]
    from hybridrag.stores.docstore import DocStore

    try:
        ds = DocStore(p / DOCSTORE, read_only=True)
    except (IndexFormatError, sqlite3.DatabaseError) as e:
        return [f"{p / DOCSTORE}: {e}"]
    problems: list[str] = []
    gen = int(manifest["generation"])
    try:
        ds.as_of = gen
        ds.pin()
        problems += [f"{p / DOCSTORE}: {msg}" for msg in ds.integrity_problems()]
        if problems:
            return problems
        digest = manifest.get("docstore_sha256")
        if digest is not None and ds.content_checksum() != digest:
            problems.append(f"{p / DOCSTORE}: docstore content does not match the manifest (generation {gen})")
        verify_rows = getattr(ds, "verify_rows", None)
        if verify_rows is not None:
            problems += [f"{p / DOCSTORE}: {msg}" for msg in verify_rows(gen)]
        live = ds.live_slots(as_of=gen)
        want = int(manifest["counts"]["chunks"])
        if len(live) != want:
            problems.append(f"docstore holds {len(live)} committed chunks, manifest says {want}")
    except sqlite3.DatabaseError as e:
        problems.append(f"{p / DOCSTORE}: docstore is unreadable or corrupt ({e})")
    finally:
        ds.close()
    if problems:
        return problems
    try:
        idx = open_index(_index_class(), p, manifest, False, None, None, None, read_only=True)
    except (IndexFormatError, OSError, _Stale) as e:
        return [str(e)]
    try:
        held = [idx._table.live_slots(e["id"]) for e in idx._table.entries]
        slots = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
        if idx._local_stores() and not np.array_equal(slots, live):
            problems.append(f"the segments hold {len(slots)} live rows, the docstore {len(live)} chunks, "
                            "and they are not the same chunks")
        for mode, entry in manifest.get("remote", {}).items():
            if entry.get("rows") is not None and int(entry["rows"]) != len(live):
                problems.append(f"store {mode!r} holds {entry['rows']} rows, docstore {len(live)} chunks")
    finally:
        idx.close()
    return problems



def _index_class() -> Any:
    from hybridrag.index import HybridIndex

    return HybridIndex
