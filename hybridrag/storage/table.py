"""The segment table: which slots each segment holds, which of them are deleted, and what
changed since the last commit. It writes the two small files of a segment's bookkeeping
(``<id>.slots.npy``: the sorted slots written, once; ``<id>.del.g<N>.npy``: the sorted
deleted slots, a new file whenever they change) and reads them back with structural checks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hybridrag.errors import IndexFormatError
from hybridrag.storage.policy import SegmentInfo
from hybridrag.stores.base import write_npy

__all__ = ["SegmentTable"]


def _read_slots(directory: Path, name: str, limit: int) -> np.ndarray:
    """A sorted, unique int64 slot array from ``name``; every slot in ``[0, limit)``."""
    path = directory / name
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise IndexFormatError(f"{path}: cannot read segment slots ({e})") from None
    if arr.ndim != 1 or arr.dtype != np.int64:
        raise IndexFormatError(f"{path}: segment slots must be a 1-D int64 array, got {arr.dtype} {arr.shape}")
    arr = np.asarray(arr)
    if arr.size and (arr[0] < 0 or arr[-1] >= limit or np.any(arr[1:] <= arr[:-1])):
        raise IndexFormatError(f"{path}: segment slots are not sorted, unique and within [0, {limit})")
    return arr


class SegmentTable:
    """Segments as the manifest lists them, plus the slots added and deleted since."""

    def __init__(self, entries: Sequence[dict[str, Any]], next_segment: int) -> None:
        self.entries: list[dict[str, Any]] = [dict(e) for e in entries]
        self.next_segment = int(next_segment)
        self.slots: dict[str, np.ndarray] = {}
        self.deleted: dict[str, np.ndarray] = {}
        self._added: list[np.ndarray] = []
        self._removed: list[np.ndarray] = []

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, directory: Path, manifest: dict[str, Any], legacy_slots: Any = None) -> "SegmentTable":
        """Read the slots and deletions of the manifest's segments. ``legacy_slots()`` gives
        the slots of a format-1 segment (which has no slots file: the docstore's live slots)."""
        table = cls(manifest["segments"], manifest.get("next_segment", 1))
        limit = int(manifest.get("counts", {}).get("next_slot", 0))
        seen = 0
        for e in table.entries:
            sid = e["id"]
            if e.get("slots"):
                s = _read_slots(directory, e["slots"], max(limit, 1))
            else:
                s = np.asarray(legacy_slots(), dtype=np.int64) if legacy_slots is not None else np.zeros(0, np.int64)
            if len(s) != e["rows"]:
                raise IndexFormatError(f"{directory / (e.get('slots') or 'manifest.json')}: segment {sid!r} holds "
                                       f"{len(s)} slots, the manifest says {e['rows']}")
            d = _read_slots(directory, e["deletes"], max(limit, 1)) if e.get("deletes") else np.zeros(0, np.int64)
            if len(d) != e["deleted"] or (len(d) and not np.isin(d, s).all()):
                raise IndexFormatError(f"{directory / (e.get('deletes') or 'manifest.json')}: segment {sid!r} "
                                       "deletions do not match its slots or the manifest's count")
            table.slots[sid], table.deleted[sid] = s, d
            seen += len(s) - len(d)
        want = manifest.get("counts", {}).get("chunks")
        if table.entries and want is not None and seen != int(want):
            raise IndexFormatError(f"{directory / 'manifest.json'}: segments hold {seen} live rows, the manifest "
                                   f"says {want} chunks")
        return table

    # ------------------------------------------------------------------ changes
    def added(self, slots: np.ndarray) -> None:
        self._added.append(np.asarray(slots, dtype=np.int64))

    def removed(self, slots: np.ndarray) -> None:
        self._removed.append(np.asarray(slots, dtype=np.int64))

    @property
    def changed(self) -> bool:
        return bool(self._added or self._removed)

    def pending(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(live new slots, {segment id: new full deletion list})`` since the last commit."""
        gone = np.unique(np.concatenate(self._removed)) if self._removed else np.zeros(0, np.int64)
        new = np.unique(np.concatenate(self._added)) if self._added else np.zeros(0, np.int64)
        new = new[~np.isin(new, gone)]
        dels: dict[str, np.ndarray] = {}
        if gone.size:
            for e in self.entries:
                sid = e["id"]
                held = self.slots[sid]   # sorted: a binary search per deleted slot, not a sort of the segment
                pos = np.minimum(np.searchsorted(held, gone), max(len(held) - 1, 0))
                hit = gone[held[pos] == gone] if len(held) else gone[:0]
                hit = hit[~np.isin(hit, self.deleted[sid])]
                if hit.size:
                    dels[sid] = np.union1d(self.deleted[sid], hit)
        return new, dels

    def new_id(self) -> str:
        sid = f"s{self.next_segment}"
        self.next_segment += 1
        return sid

    # ------------------------------------------------------------------ writes (new files only)
    @staticmethod
    def write_slots(directory: Path, sid: str, slots: np.ndarray) -> str:
        return write_npy(directory, f"{sid}.slots.npy", np.ascontiguousarray(slots, dtype=np.int64))

    @staticmethod
    def write_deletes(directory: Path, sid: str, gen: int, slots: np.ndarray) -> str:
        return write_npy(directory, f"{sid}.del.g{gen}.npy", np.ascontiguousarray(slots, dtype=np.int64))

    def infos(self) -> list[SegmentInfo]:
        return [SegmentInfo(e["id"], int(e["rows"]), int(e["deleted"])) for e in self.entries]

    def live_slots(self, sid: str) -> np.ndarray:
        s, d = self.slots[sid], self.deleted[sid]
        return s[~np.isin(s, d, assume_unique=True)] if d.size else np.asarray(s)

    def clear_pending(self) -> None:
        self._added, self._removed = [], []
