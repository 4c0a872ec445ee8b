"""Concurrency of hybridrag/index.py and hybridrag/stores/docstore.py: readers (threads in
this process and a second process) load and search while another process ingests and
deletes whole groups of documents, one group per commit. No reader may error or see part
of a group (each search sees one committed state). A second writer gets IndexLockedError
naming the holder's pid; a lock left by a killed process is taken over.
Helper processes: tests/_concurrency_worker.py."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import _concurrency_worker as cwk  # noqa: E402

from hybridrag import IndexLockedError  # noqa: E402
from hybridrag.index import HybridIndex, check_index  # noqa: E402

HELPER = Path(__file__).with_name("_concurrency_worker.py")
GROUPS = int(os.environ.get("HYBRIDRAG_CONCURRENCY_GROUPS", "45"))
PIPELINE = {
    "name": "conc-bm25",
    "encoder": {"kind": "none"},
    "dense": {"enabled": False}, "sparse": {"enabled": False}, "colbert": {"enabled": False},
    "bm25": {"enabled": True, "depth": 50},
    "fusion": {"method": "weighted", "weights": {"bm25": 1.0}},
}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HELPER), *map(str, args)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
        time.sleep(0.01)


def test_readers_see_whole_commits_while_another_process_writes(tmp_path):
    path = tmp_path / "idx"
    # Compile the search kernels here, before the threads: numba's first compilation in
    # several threads at once can hit CPython 3.11's "AST constructor recursion depth
    # mismatch" (gh-106905), a bug outside the engine.
    warm = HybridIndex.create(tmp_path / "warm", PIPELINE)
    warm.add(cwk.group_docs(0))
    warm.add(cwk.group_docs(1))   # two segments: the merged search path too
    cwk.check_view(warm)
    warm.close()
    warm = HybridIndex.load(tmp_path / "warm")   # the reader's path, then check's
    cwk.check_view(warm)
    warm.close()
    assert check_index(tmp_path / "warm") == []
    HybridIndex.create(path, PIPELINE).close()
    first = HybridIndex.load(path)  # loaded at generation 1 (empty) and kept: must keep working
    early = None
    done = tmp_path / "done"
    writer = _spawn("writer", path, GROUPS, done)
    reader_proc = _spawn("reader", path, done)
    errors: list[BaseException] = []
    seen_groups: list[int] = []
    loads = [0]

    def reader_thread() -> None:
        try:
            while True:
                finished = done.exists()
                idx = HybridIndex.load(path)
                try:
                    for _ in range(2):
                        seen_groups.append(cwk.check_view(idx))
                finally:
                    idx.close()
                loads[0] += 1
                if finished:
                    return
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    checks: list[list[str]] = []

    def check_thread() -> None:
        # `hybridrag check` while the writer commits and merges: it checks one committed
        # generation as a whole, so a healthy index is never reported damaged
        try:
            while not done.exists():
                checks.append(check_index(path))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=reader_thread) for _ in range(3)] + [threading.Thread(target=check_thread)]
    for t in threads:
        t.start()
    # One index shared by threads, loaded mid-ingest, searched while the writer moves on.
    while early is None:
        try:
            candidate = HybridIndex.load(path)
        except Exception as e:  # noqa: BLE001
            errors.append(e)
            break
        if candidate.docstore.count() > 0:
            early = candidate
        else:
            candidate.close()
    shared_errors: list[BaseException] = []
    if early is not None:
        before = cwk.check_view(early)

        def shared() -> None:
            try:
                while not done.exists():
                    assert cwk.check_view(early) == before  # its committed state never changes
                    assert cwk.check_view(first) == 0
            except BaseException as e:  # noqa: BLE001
                shared_errors.append(e)

        sh = [threading.Thread(target=shared) for _ in range(2)]
        for t in sh:
            t.start()
        for t in sh:
            t.join()
    for t in threads:
        t.join()
    out_w = writer.communicate(timeout=300)[0].decode()
    out_r = reader_proc.communicate(timeout=300)[0].decode()
    assert writer.returncode == 0, out_w[-3000:]
    assert reader_proc.returncode == 0, out_r[-3000:]
    assert not errors, repr(errors[0])
    assert not shared_errors, repr(shared_errors[0])
    assert early is not None
    # after the writer is done and has collected old files, the old readers still answer
    assert cwk.check_view(early) == before and cwk.check_view(first) == 0
    early.close()
    first.close()
    final = HybridIndex.load(path)
    assert cwk.check_view(final) == GROUPS - GROUPS // 3
    final.close()
    assert check_index(path) == []
    assert loads[0] >= 3 and len(set(seen_groups)) >= 2, (loads, sorted(set(seen_groups)))
    assert checks and not any(checks), [c for c in checks if c][:3]


def test_second_writer_gets_lock_error_naming_the_holder(tmp_path):
    path = tmp_path / "idx"
    HybridIndex.create(path, PIPELINE).close()
    ready = tmp_path / "ready"
    holder = _spawn("hold", path, ready)
    try:
        _wait_for(ready, holder)
        idx = HybridIndex.load(path)  # reading is fine while another process writes
        try:
            with pytest.raises(IndexLockedError, match=f"pid={holder.pid}"):
                idx.add(cwk.group_docs(0))
            assert len(idx) == 0
        finally:
            idx.close()
        with pytest.raises(IndexLockedError, match=f"pid={holder.pid}"):
            HybridIndex.create(path, PIPELINE, overwrite=True)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    # the holder died: its lock is stale and is taken over
    assert f"pid={holder.pid}" in (path / "LOCK").read_text()
    idx = HybridIndex.load(path)
    idx.add(cwk.group_docs(0))
    assert cwk.check_view(idx) == 1
    assert f"pid={os.getpid()}" in (path / "LOCK").read_text()
    idx.close()
    assert check_index(path) == []


def test_reader_hides_uncommitted_rows_of_a_live_writer(tmp_path):
    path = tmp_path / "idx"
    w = HybridIndex.create(path, PIPELINE)
    w.add(cwk.group_docs(0))
    w.add(cwk.group_docs(1), commit=False)  # written to the docstore, not committed
    w.delete(filters={"group": 0}, commit=False)
    r = HybridIndex.load(path)  # the writer holds the lock: its rows stay, hidden from r
    assert r.docstore.count() == 4 and r.docstore.count_documents() == 4
    assert {h.doc_id for h in r.search("common", k=50)} == {d["id"] for d in cwk.group_docs(0)}
    assert r.search("common", k=50, filters={"group": 1}) == []
    assert r.docstore.doc_hash("g1d0") is None and r.docstore.has_doc("g0d0")
    w.commit()
    w.add(cwk.group_docs(2))  # commits twice more: tombstones of group 0 get purged
    assert {h.doc_id for h in r.search("common", k=50)} == {d["id"] for d in cwk.group_docs(0)}
    w.close()
    r.close()
    again = HybridIndex.load(path)
    assert cwk.check_view(again) == 2
    again.close()


def test_one_index_object_searched_in_threads_while_it_writes(tmp_path):
    """The retrievers of the connectors share one HybridIndex per path: searches in worker threads
    beside upserts and deletes of that object read slots the write had just deleted from the
    docstore (KeyError from the hits stage, ~50 in a run of this loop). A write's change of what
    searches read is now whole or not at all for them (storage/lock.py, ReadWriteLock)."""
    pipe = {"name": "bm25", "encoder": {"kind": "none"}, "dense": {"enabled": False},
            "sparse": {"enabled": False}, "colbert": {"enabled": False}, "bm25": {"enabled": True}}
    idx = HybridIndex.create(tmp_path / "i", pipe)
    idx.add([{"id": f"d{i}", "text": f"cat number {i}"} for i in range(60)])
    errors: list[BaseException] = []
    seen: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                hits = idx.search("cat changed number", k=10)
                assert all(h.text.startswith("cat") for h in hits)
                seen.append(len(hits))
        except BaseException as e:   # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for j in range(40):
            idx.upsert([{"id": f"d{j}", "text": f"cat changed {j}"}], commit=j % 3 == 0)
            idx.delete(ids=[f"d{j + 20}"], commit=j % 5 == 0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors[:3]
    assert seen and all(n == 10 for n in seen)
    # close() waits for the searches of other threads, and those after it get IndexClosedError
    from hybridrag import IndexClosedError

    stop.clear()
    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    idx.close()
    for t in threads:
        t.join(60)
    assert errors and all(isinstance(e, IndexClosedError) for e in errors), errors[:3]


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="reads the kernel's lock table (/proc/locks, Linux)")
def test_opening_the_docstore_again_keeps_the_locks_of_the_open_connections(tmp_path):
    """A process that opened an index's docstore again (a server swapping in a new generation)
    closed a descriptor of the file, which dropped every POSIX lock the process held on it: the
    SHARED lock of the reader still open (SQLite still believes it holds it). A writer in
    another process then took itself for the last user and deleted the WAL under the open
    connections: a served index stopped taking commits after a few outside ingests ("database
    disk image is malformed"). One descriptor per file now stays open while any docstore of the
    process has it open; the kernel's lock table shows the reader's lock kept."""
    pipe = {"name": "bm25", "encoder": {"kind": "none"}, "dense": {"enabled": False},
            "sparse": {"enabled": False}, "colbert": {"enabled": False}, "bm25": {"enabled": True}}
    path = tmp_path / "i"
    with HybridIndex.create(path, pipe) as idx:
        idx.add([{"id": "first", "text": "tapir fauna"}])
    inode = os.stat(path / "docstore.sqlite").st_ino

    def my_locks() -> list[str]:
        with open("/proc/locks") as f:   # "n: POSIX ADVISORY READ <pid> <maj:min:inode> <start> <end>"
            return [ln for ln in f if ln.split()[1] == "POSIX" and ln.split()[4] == str(os.getpid())
                    and ln.split()[5].endswith(f":{inode}")]

    reader = HybridIndex.load(path)   # holds a read snapshot: a SHARED lock on the file
    held = my_locks()
    assert held
    again = HybridIndex.load(path)
    assert my_locks() == held and reader.search("tapir", k=1)[0].doc_id == "first"
    again.close()
    assert my_locks() == held   # closing the second one keeps the first one's lock too
    reader.close()
    assert my_locks() == []
