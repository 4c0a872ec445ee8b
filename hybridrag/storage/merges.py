"""Merges in a background thread, in the manner of Lucene's ``ConcurrentMergeScheduler``.

After a commit, the merge policy's groups are handed to one thread of the index's own. The
thread opens its private copies of the groups' segments (their files never change; the
deletions committed so far applied), merges them and writes each merged segment's files
under a segment id reserved for it; nothing visible changes. A later commit, :meth:`optimize`,
:meth:`wait_for_merges` or :meth:`close` of the writer installs the finished merges, each as a
commit of its own (:func:`hybridrag.storage.commit.install_merge`): rows deleted meanwhile
become the merged segment's deletion list (slots never move). So a commit never waits for a
merge, readers keep their snapshot, and a crash at any point leaves the last commit whole:
files of a merge not installed are not in any manifest, and the next commit's garbage
collection removes them. One merge thread runs at a time per index; the policy's groups
that meet segments in flight wait for a later commit.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from hybridrag.storage import opening
from hybridrag.storage.table import SegmentTable

logger = logging.getLogger("hybridrag.index")

__all__ = ["MergeJob", "after_commit", "cancel", "finish", "reserved"]


class _Cancelled(Exception):
    pass


class MergeJob:
    """The merges of ``groups`` (lists of segment ids), run in a daemon thread."""

    def __init__(self, idx: Any, groups: list[list[str]]) -> None:
        table, manifest = idx._table, idx._manifest
        by_id = {e["id"]: e for e in table.entries}
        self.path: Path = idx.path
        self.limit = int(manifest["counts"]["next_slot"])
        self.stores = {mode: (opening.store_class(idx, mode), manifest["stores"][mode]["config"])
                       for mode in idx._local_stores()}
        self.groups = []
        for ids in groups:
            src = [(i, dict(by_id[i]["files"]), np.array(table.deleted[i])) for i in ids]
            slots = np.sort(np.concatenate([table.live_slots(i) for i in ids]))
            self.groups.append({"ids": list(ids), "sid": table.new_id(), "src": src, "slots": slots})
        self.done: list[dict[str, Any]] = []   # install_merge's arguments, per finished group
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"hybridrag-merge-{self.groups[0]['sid']}",
                                       daemon=True)
        self.thread.start()

    def segment_ids(self) -> set[str]:
        """The segments whose files this job reads or writes (kept from garbage collection)."""
        return {g["sid"] for g in self.groups} | {i for g in self.groups for i in g["ids"]}

    def cancel(self) -> None:
        self._stop.set()
        self.thread.join()

    def _run(self) -> None:
        from hybridrag.storage.commit import merged_part, record

        try:
            for g in self.groups:
                checksums: dict[str, str] = {}
                sealed = {}
                for mode, (cls, config) in self.stores.items():
                    if self._stop.is_set():
                        raise _Cancelled
                    parts = []
                    for _, files, dead in g["src"]:
                        part = cls.load(self.path, files[mode], config, slot_limit=self.limit)
                        if dead.size:
                            part.remove(dead)
                        parts.append(part)
                    sealed[mode] = merged_part(self.path, mode, parts, g["sid"], g["slots"].size, checksums)
                    for part in parts:
                        closer = getattr(part, "close", None)
                        if callable(closer):
                            closer()
                slots_file = record(self.path, SegmentTable.write_slots(self.path, g["sid"], g["slots"]), checksums)
                self.done.append({"ids": g["ids"], "sid": g["sid"], "sealed": sealed, "slots": g["slots"],
                                  "slots_file": slots_file, "checksums": checksums})
        except _Cancelled:
            pass
        except Exception as e:   # noqa: BLE001 - reported when the job is collected
            self.error = e


def reserved(idx: Any) -> set[str]:
    """Segment ids whose files a running merge reads or writes."""
    job = getattr(idx, "_merge_job", None)
    return job.segment_ids() if job is not None else set()


def finish(idx: Any, *, wait: bool) -> None:
    """Install the merges of a finished job (``wait``: wait for a running one first), each as a
    commit. Called by a writer with nothing uncommitted; a failed job is logged and dropped (its
    segments stay as they are and the policy picks them again)."""
    job = idx._merge_job
    if job is None or (job.thread.is_alive() and not wait):
        return
    job.thread.join()
    from hybridrag.storage.commit import install_merge

    try:   # the job stays reserved until every group is in: each install collects garbage
        for r in job.done:
            install_merge(idx, r["ids"], r["sid"], r["sealed"], r["slots"], r["slots_file"], r["checksums"])
    finally:
        idx._merge_job = None
    if job.error is not None:
        logger.warning("background merge of segments %s in %s failed: %r; they stay as they are",
                       [g["ids"] for g in job.groups[len(job.done):]], idx.path, job.error)
    idx._collect_garbage()


def cancel(idx: Any) -> None:
    """Stop a running merge (at its next store) and drop its results; its files are garbage."""
    job = getattr(idx, "_merge_job", None)
    if job is not None:
        job.cancel()
        idx._merge_job = None


def after_commit(idx: Any) -> None:
    """Install finished merges, then merge what the policy picks: in a background thread when
    ``idx.merge_in_background`` (unless one is still running), else here, one commit each."""
    finish(idx, wait=not idx.merge_in_background)
    if idx._merge_job is not None:
        return
    groups = idx.merge_policy.select(idx._table.infos())
    if not groups:
        return
    if idx.merge_in_background:
        idx._merge_job = MergeJob(idx, groups)
        return
    from hybridrag.storage.commit import merge_segments

    for group in groups:
        merge_segments(idx, group)
