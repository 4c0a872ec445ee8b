"""``manifest.json``: the one commit point of an index.

Format 2 (written since segments)::

    {"format_version": 2, "generation": N, "pipeline": {...}, "models": {...},
     "counts": {"documents", "chunks", "next_slot"},
     "stores": {mode: {"config": {...}}},          # local modes: settings of every segment
     "remote": {mode: {"files", "config", "rows"}}, # Milvus-held modes (not segmented)
     "segments": [{"id": "s7", "rows": 120, "deleted": 3, "slots": "s7.slots.npy",
                   "deletes": "s7.del.g9.npy" | null, "files": {mode: {role: name}}}, ...],
     "bm25_vocab": ["bm25.s1.vocab.json", ...],     # the vocabulary, in id order, one part per segment
     "next_segment": 8, "docstore": "docstore.sqlite",
     "checksums": {file name: sha256}, "manifest_sha256": "..."}

Format 1 (one file set per store, rewritten at every commit) is read too: it is turned into
one segment holding every store's files, and the next commit writes format 2.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

from hybridrag import __version__
from hybridrag.errors import IndexFormatError

__all__ = ["FORMAT_VERSION", "MANIFEST", "read_manifest", "write_manifest", "manifest_text", "manifest_digest",
           "check_name", "verify_files", "sha256_file", "fsync_dir"]

FORMAT_VERSION = 2
READS = (1, 2)
MANIFEST = "manifest.json"
POINTER = "milvus-attach.json"   # a query node's directory (HybridIndex.attach): the prefix it reads
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_name(directory: Path, name: Any) -> None:
    """A file named in a manifest must be a plain file name inside the index directory."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in (".", ".."):
        raise IndexFormatError(f"{directory / MANIFEST}: refusing file name {name!r} (not a plain file name "
                               "inside the index directory)")
    if (directory / name).is_symlink():
        raise IndexFormatError(f"{directory / MANIFEST}: refusing file {name!r}: it is a symbolic link "
                               "(index files must be plain files inside the index directory)")


def manifest_text(manifest: Mapping[str, Any]) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True)


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(manifest_text(body).encode("utf-8")).hexdigest()


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Seal ``manifest`` with its digest and swap it in atomically (the commit point)."""
    manifest["manifest_sha256"] = manifest_digest(manifest)
    tmp = path / f"{MANIFEST}.tmp"
    with _open_new(tmp) as f:
        f.write(manifest_text(manifest).encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / MANIFEST)
    fsync_dir(path)


def _open_new(path: Path) -> Any:
    """A new file opened for writing that is never a symlink's target (an old one is replaced)."""
    try:
        if path.is_symlink() or path.exists():
            path.unlink()
    except OSError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    return os.fdopen(fd, "wb")


def _segment_names(m: Mapping[str, Any]) -> list[str]:
    names: list[str] = []
    for seg in m["segments"]:
        for files in seg["files"].values():
            names += list(files.values())
        names += [n for n in (seg.get("slots"), seg.get("deletes")) if n]
    for entry in m.get("remote", {}).values():
        names += list(entry.get("files", {}).values())
    names += list(m.get("bm25_vocab") or [])
    return names


def _upgrade_v1(m: dict[str, Any]) -> dict[str, Any]:
    """A format-1 manifest as format 2 in memory: one segment holding every local store's files."""
    milvus = bool(m["pipeline"].get("milvus", {}).get("enabled"))
    remote = {k: v for k, v in m["stores"].items() if milvus and k in ("dense", "sparse")}
    local = {k: v for k, v in m["stores"].items() if k not in remote}
    rows = int(m.get("counts", {}).get("chunks", 0))
    segs = []
    if local:
        segs.append({"id": f"g{m['generation']}", "rows": rows, "deleted": 0, "slots": None, "deletes": None,
                     "files": {k: dict(v["files"]) for k, v in local.items()}})
    vocab = m.get("bm25_vocab")
    return dict(m, format_version=1, stores={k: {"config": v.get("config", {})} for k, v in local.items()},
                remote=remote, segments=segs, bm25_vocab=[vocab] if vocab else [],
                next_segment=1)


def read_manifest(path: Path, missing_ok: bool = False) -> dict[str, Any] | None:  # type: ignore[return]
    """Read and check ``manifest.json`` (format 1 is returned in format 2's shape, with
    ``format_version`` 1); raises :class:`IndexFormatError` saying what is wrong."""
    mf = path / MANIFEST
    if not path.is_dir():
        if missing_ok:
            return None
        raise IndexFormatError(f"{str(path)!r} is not an index: "
                               + ("a file, not a directory" if path.exists() else "no such directory"))
    if not mf.is_file():
        if missing_ok:
            return None
        if (path / POINTER).is_file():
            raise IndexFormatError(f"{str(path)!r} is a query node (HybridIndex.attach): it holds only a pointer "
                                   "to the index a writer publishes in Milvus; its files are the writer's "
                                   "directory's (check that)")
        raise IndexFormatError(f"{str(path)!r} is not an index: {MANIFEST} is missing")
    if mf.is_symlink():
        raise IndexFormatError(f"{mf}: refusing a manifest that is a symbolic link")
    try:
        text = mf.read_text(encoding="utf-8")
        m = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise IndexFormatError(f"{mf}: unreadable manifest ({e})") from None
    if not isinstance(m, dict):
        raise IndexFormatError(f"{mf}: manifest is not a JSON object")
    fv = m.get("format_version")
    if fv not in READS:
        raise IndexFormatError(f"{mf}: format_version {fv!r} is not supported by hybridrag {__version__} "
                               f"(reads formats {list(READS)}); rebuild the index or use the library version "
                               f"that wrote it ({m.get('library_version', 'unknown')})")
    if isinstance(m.get("checksums"), dict):   # before anything else opens a named file
        for name in m["checksums"]:
            check_name(path, name)
    # The manifest checks itself: its sha256 (over the other keys) and its exact bytes, so a
    # flipped byte that still parses as JSON (a digit, a key name, whitespace) is caught too.
    if m.get("manifest_sha256") != manifest_digest(m):
        raise IndexFormatError(f"{mf}: manifest checksum mismatch (the file is corrupt or was edited)")
    if text != manifest_text(m):
        raise IndexFormatError(f"{mf}: manifest bytes differ from what hybridrag writes (the file is corrupt "
                               "or was edited)")
    need = ("generation", "pipeline", "stores", "checksums") + (("segments",) if fv == 2 else ())
    for key in need:
        if key not in m:
            raise IndexFormatError(f"{mf}: manifest lacks {key!r}")
    if not isinstance(m["stores"], dict) or not isinstance(m["checksums"], dict):
        raise IndexFormatError(f"{mf}: manifest 'stores'/'checksums' must be objects")
    try:
        if fv == 1:
            for entry in m["stores"].values():
                if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
                    raise IndexFormatError(f"{mf}: a store entry lacks its files")
            m = _upgrade_v1(m)
        for name in _segment_names(m):   # every one was checked above, as a checksum's name
            if name not in m["checksums"]:
                raise IndexFormatError(f"{mf}: file {name!r} has no checksum in the manifest")
        for seg in m["segments"]:
            if not isinstance(seg.get("id"), str) or not _SAFE_NAME.match(seg["id"]):
                raise IndexFormatError(f"{mf}: bad segment id {seg.get('id')!r}")
            for key in ("rows", "deleted"):
                v = seg.get(key)
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise IndexFormatError(f"{mf}: segment {seg['id']!r} has {key} = {v!r}")
            if seg["deleted"] > seg["rows"]:
                raise IndexFormatError(f"{mf}: segment {seg['id']!r} deletes more rows than it holds")
    except (KeyError, TypeError, AttributeError) as e:
        raise IndexFormatError(f"{mf}: malformed manifest ({type(e).__name__}: {e})") from None
    return m


def read_generation(path: Path) -> int | None:
    """The generation of the manifest on disk (``None``: there is none), read without the
    checks of :func:`read_manifest`: a writer compares it with its own before a commit that
    replaces the manifest anyway (``load`` and ``check`` read it whole)."""
    mf = path / MANIFEST
    if mf.is_symlink():
        raise IndexFormatError(f"{mf}: refusing a manifest that is a symbolic link")
    try:
        m = json.loads(mf.read_bytes())
        return int(m["generation"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, RecursionError) as e:
        raise IndexFormatError(f"{mf}: unreadable manifest ({type(e).__name__}: {e})") from None


def verify_files(path: Path, manifest: Mapping[str, Any]) -> None:
    """Check every file the manifest names against its sha256 (reads each file once)."""
    for name, digest in manifest["checksums"].items():
        f = path / name
        if not f.is_file():
            raise IndexFormatError(f"{f}: file named in the manifest is missing")
        try:
            got = sha256_file(f)
        except OSError as e:   # e.g. collected by a writer's commit since the check above
            raise IndexFormatError(f"{f}: cannot read a file named in the manifest ({e})") from None
        if got != digest:
            raise IndexFormatError(f"{f}: checksum mismatch (file is corrupt or was changed: "
                                   f"sha256 {got[:12]}… expected {digest[:12]}…)")
