"""Segments (hybridrag/storage/): an index written in many commits, with deletes and upserts,
answers exactly as one built in a single call (and as brute force); deleted rows never come
back; a commit writes only the new segment and small deletion files; merges (the tiered
policy and ``optimize``) change nothing a search returns; indexes of format 1 still open."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _ranking import assert_same_ranking
from hybridrag import HybridIndex
from hybridrag.index import check_index
from hybridrag.storage.policy import SegmentInfo, TieredMergePolicy
from test_index import QUERIES, TEXTS, brute_force, m3_pipeline

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
BM25 = {"name": "seg-bm25", "encoder": {"kind": "none"}, "chunking": {"max_tokens": 32, "overlap": 0},
        "dense": {"enabled": False}, "sparse": {"enabled": False}, "colbert": {"enabled": False},
        "bm25": {"enabled": True, "depth": 1000}, "fusion": {"method": "weighted", "weights": {"bm25": 1.0}}}


def corpus(n: int, tag: str = "") -> list[dict]:
    return [{"id": f"d{i}", "text": TEXTS[i % len(TEXTS)] + f" {tag}copy {i % 7} item{i}",
             "metadata": {"group": "even" if i % 2 == 0 else "odd", "n": i}} for i in range(n)]


def pipeline(m3_dir):
    # every first stage retrieves every chunk, so fused results are exact and comparable
    return m3_pipeline(m3_dir, dense={"depth": 1000}, sparse={"depth": 1000}, bm25={"depth": 1000},
                       fusion={"weights": {"dense": 0.3, "sparse": 0.2, "colbert": 0.3, "bm25": 0.2}})


def grow(idx: HybridIndex, docs: list[dict], batches: int) -> list[dict]:
    """Add ``docs`` in ``batches`` commits, then delete and replace some; the final documents."""
    step = -(-len(docs) // batches)
    for i in range(0, len(docs), step):
        idx.add(docs[i:i + step])
    idx.delete(["d3", "d4"])                                 # two segments lose rows
    idx.delete(filters={"n": {"$in": [len(docs) - 1]}})      # the newest one too
    changed = [dict(docs[1], text="replaced: vitamin D and the fox"), dict(docs[10], text="aspirin again")]
    idx.upsert(changed)
    final = {d["id"]: d for d in docs if d["id"] not in ("d3", "d4", f"d{len(docs) - 1}")}
    final.update({d["id"]: d for d in changed})
    return list(final.values())


def ranked(idx: HybridIndex, q: str, k: int, **kw) -> list[tuple[str, float]]:
    return [(h.chunk_id, h.score) for h in idx.search(q, k=k, **kw)]


def test_many_segments_answer_as_one_and_as_brute_force(tmp_path, m3_dir):
    from hybridrag.encoders.m3 import M3Encoder

    enc = M3Encoder.from_pretrained(str(m3_dir))
    seg = HybridIndex.create(tmp_path / "seg", pipeline(m3_dir), encoder=enc)
    seg.merge_policy = None
    final = grow(seg, corpus(40), batches=5)
    assert len(seg.stats()["segments"]) >= 5
    one = HybridIndex.create(tmp_path / "one", pipeline(m3_dir), encoder=enc)
    one.add(final)
    assert len(one.stats()["segments"]) == 1 and len(seg) == len(one)
    for q in QUERIES + ["vitamin fox", "copy 3"]:
        for k in (5, 1000):                                  # 1000: more than the live chunks
            got, want = ranked(seg, q, k), ranked(one, q, k)
            assert_same_ranking(got, want)
            hits = seg.search(q, k=k)
            ids, exact = brute_force(seg, q)
            for h in hits:
                for mode in ("dense", "sparse", "colbert"):
                    assert h.scores[mode] == pytest.approx(exact[mode][ids.index(h.chunk_id)], abs=1e-4)
        # BM25 with the whole index's statistics: every part scores as the single store does
        got = {h.chunk_id: h.scores["bm25"] for h in seg.search(q, k=1000)}
        want = {h.chunk_id: h.scores["bm25"] for h in one.search(q, k=1000)}
        assert got.keys() == want.keys()
        assert all(got[c] == pytest.approx(want[c], rel=1e-5, abs=1e-6) for c in got)
    seg.optimize()
    assert [s["deleted"] for s in seg.stats()["segments"]] == [0] and len(seg.stats()["segments"]) == 1
    for q in QUERIES:
        assert_same_ranking(ranked(seg, q, 1000), ranked(one, q, 1000))
    seg.close()
    again = HybridIndex.load(tmp_path / "seg", encoder=enc)
    for q in QUERIES:
        assert_same_ranking(ranked(again, q, 1000), ranked(one, q, 1000))
    again.close()
    one.close()
    assert check_index(tmp_path / "seg") == []


def test_deleted_rows_never_come_back(tmp_path):
    idx = HybridIndex.create(tmp_path / "i", BM25)
    idx.merge_policy = None
    docs = corpus(30)
    for i in range(0, 30, 10):
        idx.add(docs[i:i + 10])
    gone = {"d0", "d2", "d12", "d13", "d29"}
    idx.delete(sorted(gone))
    for path_idx in (idx, None):
        cur = path_idx or HybridIndex.load(tmp_path / "i")
        for q in ("vitamin", "fox dog", "copy 3 item12"):
            for filters in (None, {"group": "even"}):
                hits = cur.search(q, k=10_000, filters=filters)
                assert not {h.doc_id for h in hits} & gone
                if filters:
                    assert all(h.metadata["group"] == "even" for h in hits)
        everything = cur.search("copy", k=10_000)
        assert {h.doc_id for h in everything} == {d["id"] for d in docs} - gone
        if path_idx is None:
            cur.close()
    idx.close()


def test_a_commit_writes_only_the_change(tmp_path):
    idx = HybridIndex.create(tmp_path / "i", BM25)
    idx.merge_policy = None
    idx.add(corpus(200))
    before = {f.name: (f.stat().st_ino, f.stat().st_mtime_ns, f.stat().st_size) for f in (tmp_path / "i").iterdir()}
    idx.upsert([dict(corpus(200)[5], text="one changed document about vitamins")])
    after = {f.name: (f.stat().st_ino, f.stat().st_mtime_ns, f.stat().st_size) for f in (tmp_path / "i").iterdir()}
    segs = idx.stats()["segments"]
    assert [s["id"] for s in segs] == ["s1", "s2"] and segs[0]["deleted"] == 1 and segs[1]["rows"] == 1
    new = sorted(n for n in after if n not in before)
    # the new segment's files, s1's deletion record, the new vocabulary terms; nothing else
    assert all(".s2" in n or n.startswith("s2.") or n.startswith("s1.del.") for n in new), new
    for name, st in before.items():
        if name not in ("manifest.json", "LOCK") and not name.startswith("docstore"):
            assert after.get(name) == st, name        # old segment files untouched
    written = sum(after[n][2] for n in new)
    total = sum(st[2] for n, st in after.items() if not n.startswith("docstore"))
    assert written < total / 5, (written, total)
    idx.close()


def test_merge_policy_picks_full_tiers_and_deleted_segments():
    p = TieredMergePolicy(segments_per_tier=3, floor_rows=10, max_deleted_fraction=0.5, max_merge_rows=1000)
    segs = [SegmentInfo("a", 500, 0), SegmentInfo("b", 10, 0), SegmentInfo("c", 12, 0), SegmentInfo("d", 9, 0),
            SegmentInfo("e", 100, 80), SegmentInfo("f", 11, 0)]
    groups = p.select(segs)
    assert ["e"] in groups                      # mostly deleted: rewritten alone
    assert sorted(["d", "b", "f"]) == sorted(next(g for g in groups if "b" in g))   # the 3 smallest of tier 0
    assert all("a" not in g and "c" not in g for g in groups)
    assert p.select([SegmentInfo(str(i), 600, 0) for i in range(3)]) == []   # over max_merge_rows
    with pytest.raises(ValueError, match="segments_per_tier"):
        TieredMergePolicy(segments_per_tier=1)


def test_automatic_merges_bound_the_segments_and_change_no_result(tmp_path):
    idx = HybridIndex.create(tmp_path / "i", BM25)
    idx.merge_policy = TieredMergePolicy(segments_per_tier=3, floor_rows=2)
    idx.merge_in_background = False   # the bound after each commit (background: tests/test_background_merges.py)
    docs = corpus(60)
    for i in range(0, 60, 2):
        idx.add(docs[i:i + 2])
        assert len(idx.stats()["segments"]) <= 3 * 3   # about segments_per_tier per tier
    one = HybridIndex.create(tmp_path / "one", BM25)
    one.add(docs)
    for q in ("vitamin bone", "fox", "copy 5 item33"):
        assert_same_ranking(ranked(idx, q, 100), ranked(one, q, 100))
    idx.close()
    one.close()
    assert check_index(tmp_path / "i") == []


def _fixture_docs() -> list[dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tiny_models

    return [{"id": f"d{i}", "text": t, "metadata": {"n": i, "lang": "zh" if i in (6, 7) else "x"}}
            for i, t in enumerate(tiny_models.CORPUS[:12])]


@pytest.mark.parametrize("name", ["format1-bm25", "format1-m3"])
def test_format_1_indexes_open_and_take_writes(tmp_path, name, m3_dir):
    """The fixtures were written by the format-1 code (tests/fixtures/README.md): they load,
    answer as an index built today from the same documents, and take new writes."""
    path = tmp_path / name
    shutil.copytree(FIXTURES / name, path)
    m = json.loads((path / "manifest.json").read_text())
    assert m["format_version"] == 1
    enc = None
    if name.endswith("m3"):
        from hybridrag.encoders.m3 import M3Encoder

        enc = M3Encoder.from_pretrained(str(m3_dir))
    cfg = dict(m["pipeline"])
    if enc is not None:
        cfg["encoder"] = dict(cfg["encoder"], model=str(m3_dir))
    docs = _fixture_docs()
    fresh = HybridIndex.create(tmp_path / "fresh", cfg, encoder=enc)
    fresh.add(docs[:8])
    fresh.add(docs[8:])
    fresh.upsert([{"id": "d3", "text": "Aspirin and vitamin D, rewritten.", "metadata": {"n": 3, "lang": "x"}}])
    fresh.delete(["d5"])
    old = HybridIndex.load(path, encoder=enc, verify=True)
    queries = ["vitamin D bone", "fox dog", "混合检索", "retrieval models"]
    for q in queries:
        assert_same_ranking(ranked(old, q, 20), ranked(fresh, q, 20))
    change = [{"id": "d20", "text": "A new document about vitamins and foxes.", "metadata": {"n": 20, "lang": "x"}}]
    old.upsert(change)
    old.delete(["d0"])
    fresh.upsert(change)
    fresh.delete(["d0"])
    old.close()
    assert json.loads((path / "manifest.json").read_text())["format_version"] == 2
    assert check_index(path) == []
    again = HybridIndex.load(path, encoder=enc)
    for q in queries:
        assert_same_ranking(ranked(again, q, 20), ranked(fresh, q, 20))
    again.optimize()
    for q in queries:
        assert_same_ranking(ranked(again, q, 20), ranked(fresh, q, 20))
    again.close()
    fresh.close()


def test_optimize_on_the_command_line(tmp_path):
    path = tmp_path / "i"
    idx = HybridIndex.create(path, BM25)
    idx.merge_policy = None
    for i in range(0, 20, 5):
        idx.add(corpus(20)[i:i + 5])
    idx.delete(["d1"])
    idx.close()
    r = subprocess.run([sys.executable, "-m", "hybridrag.cli", "optimize", str(path)], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "4 segments" in r.stdout and "1 segment" in r.stdout, r.stdout
    again = HybridIndex.load(path)
    assert [(s["rows"], s["deleted"]) for s in again.stats()["segments"]] == [(19, 0)]
    again.close()
