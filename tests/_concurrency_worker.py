"""Helper processes for tests/test_concurrency.py.

``python tests/_concurrency_worker.py writer INDEX GROUPS DONE_FILE`` adds GROUPS groups of
``GROUP_SIZE`` documents, each group in one commit (several internal batches), and deletes
an older group whole every third group; it touches DONE_FILE when finished.

``python tests/_concurrency_worker.py reader INDEX DONE_FILE`` loads the index again and
again and searches until DONE_FILE exists; it exits 1 printing the first torn read or error.

``python tests/_concurrency_worker.py hold INDEX READY_FILE`` takes the writer lock, touches
READY_FILE and sleeps (the test kills it to leave a stale lock).
"""
from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

GROUP_SIZE = 4


def group_docs(g: int) -> list[dict[str, Any]]:
    return [{"id": f"g{g}d{i}", "text": f"common grp{g} member {i} of group {g}",
             "metadata": {"group": g}} for i in range(GROUP_SIZE)]


def check_view(idx: Any) -> int:
    """Raise AssertionError on a torn read; return how many groups the view holds."""
    n = idx.docstore.count()
    assert n % GROUP_SIZE == 0, f"docstore view holds {n} chunks, not whole groups"
    hits = idx.search("common", k=max(1, n + 10))
    assert len(hits) == n, f"search saw {len(hits)} chunks, the view holds {n}"
    per = Counter(h.metadata["group"] for h in hits)
    bad = {g: c for g, c in per.items() if c != GROUP_SIZE}
    assert not bad, f"part of a group visible: {bad}"
    if per:
        g = sorted(per)[len(per) // 2]
        sub = idx.search("common", k=n + 10, filters={"group": g})
        assert len(sub) == GROUP_SIZE, f"filter on group {g} saw {len(sub)} chunks"
    if len(per) >= 3:  # (with fewer, BM25 Okapi's idf of a group token is floored near 0)
        spec = idx.search(f"grp{g}", k=5)
        assert {h.doc_id for h in spec} >= {d["id"] for d in group_docs(g)}
    return len(per)


def writer(index: str, groups: int, done: str) -> None:
    from hybridrag.index import HybridIndex

    idx = HybridIndex.load(index)
    try:
        for g in range(groups):
            idx.upsert(group_docs(g), batch_size=GROUP_SIZE // 2)
            if g % 3 == 2:
                idx.delete(filters={"group": g - 2})
    finally:
        idx.close()
        Path(done).touch()


def reader(index: str, done: str) -> None:
    from hybridrag.index import HybridIndex

    loads = 0
    while True:
        finished = Path(done).exists()
        idx = HybridIndex.load(index)
        try:
            for _ in range(3):
                check_view(idx)
        finally:
            idx.close()
        loads += 1
        if finished and loads >= 3:
            break
    print(f"reader loads={loads}")


def hold(index: str, ready: str) -> None:
    from hybridrag.index import HybridIndex

    idx = HybridIndex.load(index)
    idx._lock.acquire()
    Path(ready).touch()
    time.sleep(600)


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "writer":
        writer(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif role == "reader":
        try:
            reader(sys.argv[2], sys.argv[3])
        except Exception as e:  # report, then fail
            import traceback

            traceback.print_exc()
            print(f"READER FAILED: {type(e).__name__}: {e}")
            sys.exit(1)
    else:
        hold(sys.argv[2], sys.argv[3])
