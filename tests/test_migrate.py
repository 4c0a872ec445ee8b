"""``HybridIndex.migrate`` / ``hybridrag migrate`` (issue 24): an index moved from local stores
to Milvus (Lite, inside the new directory) and back, re-encoding nothing, answers with the same
top-10 as the source; the stores that stay local are byte for byte the source's; the source is
never changed; a failed migration leaves nothing behind."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from _ranking import assert_same_ranking
from hybridrag.errors import ConfigError
from hybridrag.index import HybridIndex
from hybridrag.storage.check import check_index
from test_crash import release_milvus_lite
from test_index import QUERIES, docs, m3_pipeline

pytest.importorskip("milvus_lite")
pytestmark = pytest.mark.filterwarnings("ignore:.*exceed the int8 scale:RuntimeWarning")

FILTERS = [None, {"group": "even"}, {"n": {"$gte": 20}}]


def _tree(path: Path) -> dict[str, str]:
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file() and f.name != "LOCK"}


def _answers(idx) -> dict:
    out = {}
    for q in QUERIES:
        for i, f in enumerate(FILTERS):
            out[q, i] = [(h.chunk_id, h.score) for h in idx.search(q, k=10, filters=f)]
            out[q, i, "dense+sparse"] = [(h.chunk_id, h.score)
                                         for h in idx.search(q, k=10, filters=f, modes=["dense", "sparse"])]
            out[q, i, "bm25"] = [(h.chunk_id, h.score) for h in idx.search(q, k=10, filters=f, modes=["bm25"])]
    return out


def _same_answers(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        # Milvus's vectors are rescored on the client: the last bits of a score may differ
        assert_same_ranking(got[key], want[key], tol=1e-5, top_of_more=True)


def _rows(idx) -> list:
    live = idx.docstore.live_slots()
    return [idx.docstore.documents(), live.tolist(), idx.docstore.get(live)]


@pytest.fixture(scope="module")
def source(tmp_path_factory, m3_dir):
    """A local index of several segments, with deletions, an upsert and an empty document."""
    d = tmp_path_factory.mktemp("migrate") / "src"
    idx = HybridIndex.create(d, m3_pipeline(m3_dir, colbert={"encoding": "int8"}, fusion={
        "weights": {"dense": 0.3, "sparse": 0.2, "colbert": 0.3, "bm25": 0.2}}))
    idx.merge_policy = None   # keep the segments as written
    all_docs = docs(48)
    idx.add(all_docs[:24])
    idx.add(all_docs[24:40])
    idx.delete(["d3", "d30"])
    idx.upsert([{"id": "d5", "text": "vitamin D and bone fractures, revised", "metadata": {"group": "odd", "n": 5}}])
    idx.add(all_docs[40:] + [{"id": "empty", "text": "", "metadata": {}}])
    assert len(idx.stats()["segments"]) >= 3 and any(s["deleted"] for s in idx.stats()["segments"])
    want, rows = _answers(idx), _rows(idx)
    idx.close()
    return d, want, rows


def test_migrate_to_milvus_and_back_keeps_every_answer_and_row(tmp_path, source):
    src, want, rows = source
    before = _tree(src)
    mv = HybridIndex.migrate(src, tmp_path / "mv", collection="moved")
    try:
        assert {m: type(s).__name__ for m, s in mv.stores.items() if m in ("dense", "sparse")} == {
            "dense": "MilvusDenseStore", "sparse": "MilvusSparseStore"}
        assert mv.pipeline.milvus.enabled and not (tmp_path / "mv" / "milvus.db").is_symlink()
        _same_answers(_answers(mv), want)
        assert _rows(mv) == rows
        assert mv.stats()["milvus"]["dense"]["collection"].startswith("moved_")
    finally:
        mv.close()
    assert _tree(src) == before, "migrate changed its source"
    # The stores that stay local are the source's segment files, byte for byte.
    dst_tree = _tree(tmp_path / "mv")
    kept = [n for n in before if n.startswith(("colbert.", "sparse-bm25.", "bm25.")) or n.endswith(".slots.npy")
            or ".del." in n]
    assert kept and all(dst_tree[n] == before[n] for n in kept)
    assert not any(n.startswith("dense.") for n in dst_tree)
    assert check_index(tmp_path / "mv") == []
    release_milvus_lite(tmp_path / "mv")
    again = HybridIndex.load(tmp_path / "mv")
    try:
        _same_answers(_answers(again), want)
        again.add([{"id": "new", "text": "vitamin D after the move", "metadata": {}}])   # a writable index
        assert again.search("vitamin D after the move", k=1)[0].doc_id == "new"
        again.delete(["new"])
    finally:
        again.close()
    release_milvus_lite(tmp_path / "mv")
    back = HybridIndex.migrate(tmp_path / "mv", tmp_path / "back", to="local")
    try:
        assert not back.pipeline.milvus.enabled
        assert all(type(s).__name__ == "SegmentedStore" for s in back.stores.values())
        _same_answers(_answers(back), want)
        assert _rows(back) == rows
    finally:
        back.close()
    assert check_index(tmp_path / "back") == []
    assert not any("milvus" in n for n in _tree(tmp_path / "back"))


def test_migrate_refuses_bad_targets_by_name(tmp_path, source):
    src = source[0]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(ConfigError, match="full.*not an empty directory"):
        HybridIndex.migrate(src, tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    with pytest.raises(ConfigError, match="'sideways'"):
        HybridIndex.migrate(src, tmp_path / "d", to="sideways")
    with pytest.raises(ConfigError, match="already keeps its vectors in local stores"):
        HybridIndex.migrate(src, tmp_path / "d", to="local")
    assert not (tmp_path / "d").exists()


def test_a_failed_migration_leaves_no_directory_and_its_source_whole(tmp_path, source, monkeypatch):
    from hybridrag.stores.milvus import MilvusSparseStore

    src, want, _ = source
    before = _tree(src)

    def boom(*a, **k):
        raise RuntimeError("injected")

    monkeypatch.setattr(MilvusSparseStore, "add", boom)
    with pytest.raises(RuntimeError, match="injected"):
        HybridIndex.migrate(src, tmp_path / "mv")
    assert not (tmp_path / "mv").exists()
    (tmp_path / "given").mkdir()   # an empty directory the user named stays, empty
    with pytest.raises(RuntimeError, match="injected"):
        HybridIndex.migrate(src, tmp_path / "given")
    assert (tmp_path / "given").is_dir() and not any((tmp_path / "given").iterdir())
    assert _tree(src) == before
    monkeypatch.undo()
    ok = HybridIndex.migrate(src, tmp_path / "mv")   # and it can run again
    try:
        _same_answers(_answers(ok), want)
    finally:
        ok.close()


def test_cli_migrate(tmp_path, source, capsys):
    from hybridrag.cli import main

    src, want, _ = source
    assert main(["migrate", str(src), str(tmp_path / "mv"), "--collection", "cli", "-q"]) == 0
    out = capsys.readouterr().out
    assert "dense vectors, sparse weights in Milvus" in out and "nothing re-encoded" in out
    release_milvus_lite(tmp_path / "mv")
    idx = HybridIndex.load(tmp_path / "mv")
    try:
        _same_answers(_answers(idx), want)
    finally:
        idx.close()
    assert main(["migrate", str(src), str(tmp_path / "mv")]) != 0
    assert "not an empty directory" in capsys.readouterr().err
