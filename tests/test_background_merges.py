"""Merges in a background thread (hybridrag/storage/merges.py): a commit never waits for a
merge; rows deleted while a merge runs stay deleted in the merged segment (also when a whole
source segment goes meanwhile); a merge not installed (crash) leaves only garbage; a failed
merge changes nothing; close() and optimize() install what finished."""
from __future__ import annotations

import logging
import shutil
import threading

import pytest

from _ranking import assert_same_ranking
from hybridrag import HybridIndex
from hybridrag.index import check_index
from hybridrag.storage import commit as commit_mod
from hybridrag.storage.policy import TieredMergePolicy
from test_index import QUERIES
from test_segments import corpus, pipeline, ranked


@pytest.fixture(scope="module")
def enc(m3_dir):
    from hybridrag.encoders.m3 import M3Encoder

    return M3Encoder.from_pretrained(str(m3_dir))


@pytest.fixture
def gate(monkeypatch):
    """Background merges wait at their first store until ``gate.set()``."""
    gate, real = threading.Event(), commit_mod.merged_part

    def held(*a, **kw):
        if threading.current_thread() is not threading.main_thread():
            assert gate.wait(60), "the test never opened the gate"
        return real(*a, **kw)

    monkeypatch.setattr(commit_mod, "merged_part", held)
    yield gate
    gate.set()


def _three_segments(path, m3_dir, enc, docs):
    idx = HybridIndex.create(path, pipeline(m3_dir), encoder=enc)
    idx.merge_policy = TieredMergePolicy(segments_per_tier=3, floor_rows=1)
    for i in range(0, 12, 4):
        idx.add(docs[i:i + 4])   # the third commit fills tier 0: a merge of 3 starts
    return idx


def _same_as_fresh(tmp_path, idx, final, m3_dir, enc, name):
    fresh = HybridIndex.create(tmp_path / name, pipeline(m3_dir), encoder=enc)
    fresh.add(final)
    for q in QUERIES:
        assert_same_ranking(ranked(idx, q, 30), ranked(fresh, q, 30))
    fresh.close()


def test_commits_go_on_while_a_merge_runs_and_its_deletions_follow(tmp_path, m3_dir, enc, gate):
    docs = corpus(16)
    idx = _three_segments(tmp_path / "i", m3_dir, enc, docs)
    job = idx._merge_job
    assert job is not None and job.thread.is_alive()
    assert len(idx.stats()["segments"]) == 3   # nothing merged yet: the commit did not wait
    # While the merge is held: delete rows of two source segments, one of them wholly, add more.
    idx.delete(["d1", "d2", "d4", "d5", "d6", "d7"])          # d4..d7 were the second segment
    idx.upsert([dict(docs[9], text="replaced while merging: vitamin D and the fox")])
    idx.add(docs[12:16])
    assert idx._merge_job is job and job.thread.is_alive()    # the commits did not wait for it
    final = {d["id"]: d for d in docs if d["id"] not in {"d1", "d2", "d4", "d5", "d6", "d7"}}
    final["d9"] = dict(docs[9], text="replaced while merging: vitamin D and the fox")
    _same_as_fresh(tmp_path, idx, list(final.values()), m3_dir, enc, "fresh1")
    gate.set()
    idx.wait_for_merges()
    segs = idx.stats()["segments"]
    assert idx._merge_job is None and len(segs) < 5
    merged = idx._manifest["segments"][0]
    assert merged["id"] == job.groups[0]["sid"] and merged["deleted"] >= 4 and merged["deletes"]
    _same_as_fresh(tmp_path, idx, list(final.values()), m3_dir, enc, "fresh2")
    idx.close()
    assert check_index(tmp_path / "i") == []
    again = HybridIndex.load(tmp_path / "i", encoder=enc, verify=True)
    _same_as_fresh(tmp_path, again, list(final.values()), m3_dir, enc, "fresh3")
    again.close()


def test_a_merge_never_installed_leaves_only_garbage(tmp_path, m3_dir, enc, gate):
    docs = corpus(12)
    idx = _three_segments(tmp_path / "i", m3_dir, enc, docs)
    job = idx._merge_job
    # Let the merge write its files, and copy the directory before anything installs them, as a
    # crash would leave it (a merge's files on disk, no manifest naming them).
    gate.set()
    job.thread.join(60)
    assert not job.thread.is_alive() and job.done
    copy = tmp_path / "crashed"
    shutil.copytree(tmp_path / "i", copy, ignore=shutil.ignore_patterns("LOCK"))
    sid = job.groups[0]["sid"]
    assert any(f".{sid}" in f.name or f.name.startswith(f"{sid}.") for f in copy.iterdir())
    assert check_index(copy) == []
    other = HybridIndex.load(copy, encoder=enc)
    before = {q: ranked(other, q, 20) for q in QUERIES}
    other.add([dict(docs[0], id="extra")])   # its commit collects the garbage first (it may reuse the id)
    named = set(other._manifest["checksums"])
    other.close()
    assert not [f.name for f in copy.iterdir() if commit_mod.STORE_FILE.search(f.name) and f.name not in named]
    assert check_index(copy) == []
    idx._merge_job = None   # the original never installs it either: its files are garbage there too
    idx.close()
    reread = HybridIndex.load(tmp_path / "i", encoder=enc)
    assert {q: ranked(reread, q, 20) for q in QUERIES} == before
    reread.close()


def test_a_failed_merge_changes_nothing_and_is_tried_again(tmp_path, m3_dir, enc, monkeypatch, caplog):
    docs = corpus(16)
    real = commit_mod.merged_part
    boom = {"left": 1}

    def failing(*a, **kw):
        if boom["left"]:
            boom["left"] -= 1
            raise OSError("disk on fire")
        return real(*a, **kw)

    monkeypatch.setattr(commit_mod, "merged_part", failing)
    idx = _three_segments(tmp_path / "i", m3_dir, enc, docs)
    idx._merge_job.thread.join(60)
    with caplog.at_level(logging.WARNING, logger="hybridrag.index"):
        idx.add(docs[12:13])   # collects the failed job, then starts the merge again
    assert "disk on fire" in caplog.text
    assert len(idx.stats()["segments"]) == 4
    idx.wait_for_merges()
    assert len(idx.stats()["segments"]) < 4
    _same_as_fresh(tmp_path, idx, docs[:13], m3_dir, enc, "fresh")
    idx.close()
    assert check_index(tmp_path / "i") == []


def test_close_installs_a_merge_and_optimize_waits_for_one(tmp_path, m3_dir, enc, gate):
    docs = corpus(12)
    idx = _three_segments(tmp_path / "i", m3_dir, enc, docs)
    gate.set()
    idx.close()
    reread = HybridIndex.load(tmp_path / "i", encoder=enc)
    assert len(reread.stats()["segments"]) == 1
    reread.close()
    gate.clear()
    idx = _three_segments(tmp_path / "j", m3_dir, enc, docs)
    threading.Timer(0.2, gate.set).start()
    idx.optimize()
    assert idx._merge_job is None and len(idx.stats()["segments"]) == 1
    _same_as_fresh(tmp_path, idx, docs, m3_dir, enc, "fresh")
    idx.close()


def test_a_writer_closed_with_uncommitted_writes_drops_its_merge(tmp_path, m3_dir, enc, gate):
    docs = corpus(13)
    idx = _three_segments(tmp_path / "i", m3_dir, enc, docs)
    idx.add(docs[12:13], commit=False)
    threading.Timer(0.2, gate.set).start()
    idx.close()
    reread = HybridIndex.load(tmp_path / "i", encoder=enc)
    assert len(reread) == len(corpus(12)) and len(reread.stats()["segments"]) == 3
    reread.close()


def test_merges_in_the_commit_when_asked(tmp_path, m3_dir, enc):
    idx = HybridIndex.create(tmp_path / "i", pipeline(m3_dir), encoder=enc)
    idx.merge_in_background = False
    idx.merge_policy = TieredMergePolicy(segments_per_tier=3, floor_rows=1)
    docs = corpus(12)
    for i in range(0, 12, 4):
        idx.add(docs[i:i + 4])
    assert idx._merge_job is None and len(idx.stats()["segments"]) == 1
    idx.close()


def test_one_job_of_several_merges_installs_them_all(tmp_path, m3_dir, enc):
    docs = corpus(14)
    idx = HybridIndex.create(tmp_path / "i", pipeline(m3_dir), encoder=enc)
    idx.merge_policy = None
    for i in range(0, 12, 2):
        idx.add(docs[i:i + 2])                      # six segments, no merge yet
    idx.delete(["d0", "d7"])                        # (no policy yet: this commit starts no merge whose
    idx.merge_policy = TieredMergePolicy(segments_per_tier=3, floor_rows=1)  # job the next would find running)
    idx.add(docs[12:14])                            # seven segments: two groups of three, one job
    job = idx._merge_job
    assert job is not None and len(job.groups) >= 2   # (a segment that lost d0 is rewritten alone)
    idx.wait_for_merges()
    assert idx._merge_job is None and len(idx.stats()["segments"]) < 7
    final = [d for d in docs if d["id"] not in ("d0", "d7")]
    _same_as_fresh(tmp_path, idx, final, m3_dir, enc, "fresh")
    idx.close()
    assert check_index(tmp_path / "i") == []
