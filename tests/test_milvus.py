"""The Milvus backend (hybridrag/stores/milvus.py) on Milvus Lite: filters, traits, persistence.

The protocol itself is covered by tests/test_store_conformance.py. Every test here uses
one Milvus Lite file per module (startup costs seconds) with its own collection.
"""
from __future__ import annotations

import importlib
import itertools
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from hybridrag.errors import ConfigError, IndexFormatError
from hybridrag.stores.docstore import DocStore
from hybridrag.stores.faiss import FaissStore
from hybridrag.stores.milvus import (
    PLACEHOLDER_TERM,
    MilvusDenseStore,
    MilvusSparseStore,
    filter_expression,
    milvus_stores,
)
from hybridrag.stores.sparse import SparseIndex
from hybridrag.types import Chunk

_names = itertools.count()


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("milvus") / "milvus.db")


def coll() -> str:
    return f"t_{next(_names)}"


# --------------------------------------------------------------------------- filters


def test_filter_expression_translation() -> None:
    assert filter_expression({}) == ""
    assert filter_expression({"lang": "en"}) == 'metadata["lang"] == "en"'
    assert filter_expression({"year": {"$gte": 2020, "$lt": 2023}}) == \
        '(metadata["year"] >= 2020 and metadata["year"] < 2023)'
    assert filter_expression({"a": 1.5, "b": True}) == 'metadata["a"] == 1.5 and metadata["b"] == true'
    assert filter_expression({"t": {"$in": ["x", "y"]}}) == '(metadata["t"] == "x" or metadata["t"] == "y")'
    assert filter_expression({"t": {"$in": []}}) == "false"
    assert filter_expression({"t": {"$ne": "x"}}) == '(not exists metadata["t"] or not (metadata["t"] == "x"))'
    assert filter_expression({"t": {"$nin": [1]}}) == '(not exists metadata["t"] or not (metadata["t"] == 1))'
    assert filter_expression({"s": 'a"b\\c\nd'}) == r'metadata["s"] == "a\"b\\c\nd"'
    assert filter_expression({"y": np.int64(3)}) == 'metadata["y"] == 3'


@pytest.mark.parametrize("filters, error, words", [
    ({"year": {"$like": 1}}, ValueError, ["$like", "year", "$gte"]),
    ({"$or": [1]}, ValueError, ["$or"]),
    ({'a"b': 1}, ValueError, ['a"b']),
    ({"tags": ["a", "b"]}, TypeError, ["tags", "$in"]),
    ({"x": None}, ValueError, ["'x'", "None"]),
    ({"x": {"$in": "abc"}}, TypeError, ["'x'", "list"]),
    ({"x": {"$gt": True}}, TypeError, ["'x'", "$gt"]),
    ({"x": float("nan")}, ValueError, ["'x'", "nan"]),
    ({"x": {}}, ValueError, ["'x'", "empty"]),
    ({"x": object()}, TypeError, ["'x'"]),
    ({"x": 2**70}, ValueError, ["'x'", "64-bit"]),
    # lone surrogates: pymilvus raised MilvusException wrapping a UnicodeEncodeError at search
    ({"x": "a\ud800"}, ValueError, ["'x'", "lone surrogate"]),
    ({"x": {"$in": ["a", "\udcff"]}}, ValueError, ["'x'", "lone surrogate"]),
    ({"x\udc80": 1}, ValueError, ["field name", "lone surrogate"]),
])
def test_filter_expression_errors(filters: dict, error: type, words: list[str]) -> None:
    with pytest.raises(error) as info:
        filter_expression(filters)
    for w in words:
        assert w in str(info.value)
    with pytest.raises(TypeError):
        filter_expression([("a", 1)])  # type: ignore[arg-type]


METADATA = [
    {"year": 2018 + i % 7, "lang": ["en", "de", 'q"uote', "b\\s", "é😀", "new\nline"][i % 6],
     "score": round(0.1 * (i % 11), 1), "flag": i % 3 == 0, **({"opt": f"v{i % 4}"} if i % 5 else {})}
    for i in range(60)
]
FILTERS = [
    # thousands of values (e.g. "these 5,000 documents"): the same rows as the docstore
    {"year": {"$in": list(range(-2000, 3000))}},
    {"lang": {"$nin": [f"w{i}" for i in range(5000)] + ["en"]}},
    {"score": {"$in": [round(0.1 * i, 1) for i in range(-2500, 2500)]}},
    {"lang": "en"},
    {"lang": 'q"uote'},
    {"lang": "b\\s"},
    {"lang": "é😀"},
    {"lang": "new\nline"},
    {"year": {"$gte": 2020, "$lte": 2022}},
    {"year": {"$gt": 2020}, "lang": {"$in": ["de", "en"]}},
    {"score": {"$lt": 0.35}},
    {"score": 0.5},
    {"flag": True},
    {"flag": {"$ne": True}},
    {"opt": {"$ne": "v1"}},
    {"opt": {"$nin": ["v1", "v2"]}},
    {"opt": {"$in": []}},
    {"opt": {"$nin": []}},
    {"lang": {"$gte": "d", "$lt": "f"}},
    {"year": "2020"},  # a string never equals a number
    {"missing": {"$eq": 1}},
]


def test_filter_results_equal_docstore(uri: str, tmp_path: Path) -> None:
    n = len(METADATA)
    slots = np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(0)
    store = MilvusDenseStore(8, uri=uri, collection=coll())
    store.add(slots, rng.standard_normal((n, 8)).astype(np.float32), metadata=METADATA)
    docs = DocStore(tmp_path / "docs.sqlite")
    chunks = [Chunk(f"d{i}#0", f"d{i}", 0, f"text {i}", 0, 6, metadata=m) for i, m in enumerate(METADATA)]
    docs.add_chunks(chunks, slots, gen=1)
    q = rng.standard_normal((1, 8)).astype(np.float32)
    for f in FILTERS:
        want = set(np.flatnonzero(docs.filter_mask(f, size=n)).tolist())
        _, got = store.search(q, n, where=f)
        assert set(got[0][got[0] >= 0].tolist()) == want, f
    assert want == set()  # the last filter matches nothing
    # A raw expression and an allowed mask combine with AND.
    allowed = np.zeros(n, dtype=bool)
    allowed[:30] = True
    want = set(np.flatnonzero(docs.filter_mask({"lang": "en"}, size=n) & allowed).tolist())
    _, got = store.search(q, n, allowed=allowed, where=filter_expression({"lang": "en"}))
    assert set(got[0][got[0] >= 0].tolist()) == want and want
    docs.close()


# --------------------------------------------------------------------------- reference parity


def _dense_data(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, dim)).astype(np.float32), rng.standard_normal((6, dim)).astype(np.float32)


def test_dense_top10_equals_faiss_exact(uri: str) -> None:
    x, q = _dense_data(400, 16, 1)
    slots = np.arange(5, 405, dtype=np.int64)
    milvus = MilvusDenseStore(16, uri=uri, collection=coll())
    faiss_store = FaissStore(16)
    for s in (milvus, faiss_store):
        s.add(slots, x)
        s.remove(slots[::7])
    ms, mi = milvus.search(q, 10)
    fs, fi = faiss_store.search(q, 10)
    np.testing.assert_array_equal(mi, fi)
    np.testing.assert_allclose(ms, fs, rtol=0, atol=1e-5)
    allowed = np.random.default_rng(2).random(500) < 0.3
    np.testing.assert_array_equal(milvus.search(q, 10, allowed=allowed)[1], faiss_store.search(q, 10, allowed=allowed)[1])


def test_dense_large_allowed_mask_is_post_filtered(uri: str) -> None:
    """With max_filter_ids small, neither the allowed nor the disallowed ids fit an id list."""
    x, q = _dense_data(300, 8, 3)
    slots = np.arange(300, dtype=np.int64)
    milvus = MilvusDenseStore(8, uri=uri, collection=coll(), max_filter_ids=5)
    faiss_store = FaissStore(8)
    milvus.add(slots, x)
    faiss_store.add(slots, x)
    for frac in (0.5, 0.1):
        allowed = np.random.default_rng(4).random(300) < frac
        got = milvus.search(q, 10, allowed=allowed)
        want = faiss_store.search(q, 10, allowed=allowed)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], atol=1e-5)


def _sparse_data(n: int, seed: int) -> list[dict[int, float]]:
    rng = np.random.default_rng(seed)
    return [{int(t): float(rng.uniform(0.05, 1.0)) for t in rng.choice(300, size=rng.integers(1, 12), replace=False)}
            for _ in range(n)]


def test_sparse_top10_equals_sparse_index(uri: str) -> None:
    rows, queries = _sparse_data(500, 5), _sparse_data(8, 6)
    slots = np.arange(500, dtype=np.int64)
    milvus = MilvusSparseStore(uri=uri, collection=coll())
    ref = SparseIndex()
    for s in (milvus, ref):
        s.add(slots, rows)
        s.remove(slots[::5])
    ms, mi = milvus.search(queries, 10)
    rs, ri = ref.search(queries, 10)
    np.testing.assert_array_equal(mi, ri)
    np.testing.assert_allclose(ms, rs, rtol=0, atol=1e-5)
    cands = [np.array([1, 2, 3, 5, 999])] * len(queries)
    for a, b in zip(milvus.score(queries, cands), ref.score(queries, cands)):
        np.testing.assert_allclose(a, b, atol=1e-5)


# --------------------------------------------------------------------------- Milvus traits


def test_empty_sparse_rows_are_stored_but_never_hits(uri: str, tmp_path: Path) -> None:
    store = MilvusSparseStore(uri=uri, collection=coll())
    rows: list[dict[int, float]] = [{1: 0.5}, {}, {2: 1.0, 1: 0.1}, {}, {3: 0.0}]
    store.add(np.arange(5), rows)
    assert len(store) == 5
    for q in ({1: 1.0}, {1: 1.0, 2: 1.0, 3: 1.0}, {PLACEHOLDER_TERM: 1.0}, {PLACEHOLDER_TERM + 1: 2.0, 2: 1.0}):
        _, slots = store.search([q], 5)
        assert not {1, 3, 4} & set(slots[0].tolist()), q
    _, slots = store.search([{PLACEHOLDER_TERM: 1.0}], 5)
    assert (slots == -1).all()
    np.testing.assert_array_equal(store.score([{1: 1.0}], [np.array([1, 3, 4, 0, 9])])[0],
                                  np.array([0, 0, 0, 0.5, -np.inf], dtype=np.float32))
    with pytest.raises(ValueError, match="must be < "):
        store.add(np.array([9]), [{PLACEHOLDER_TERM: 1.0}])
    with pytest.raises(ValueError, match=">= 0"):
        store.add(np.array([9]), [{4: -1.0}])
    files = store.save(tmp_path, "g1")
    assert len(MilvusSparseStore.load(tmp_path, files, store.config())) == 5


def test_bad_index_type_is_detected(uri: str) -> None:
    with pytest.raises(ConfigError, match="BOGUS"):
        MilvusDenseStore(8, uri=uri, collection=coll(), index_type="BOGUS")
    with pytest.raises(ConfigError, match="HNSW"):
        MilvusSparseStore(uri=uri, collection=coll(), index_type="HNSW")
    # An existing collection whose index differs from the one asked for.
    name = coll()
    MilvusDenseStore(8, uri=uri, collection=name, index_type="HNSW", index_params={"M": 8})
    with pytest.raises(ConfigError, match="HNSW"):
        MilvusDenseStore(8, uri=uri, collection=name, index_type="FLAT")
    with pytest.raises(IndexFormatError, match="dim"):
        MilvusDenseStore(4, uri=uri, collection=name, index_type="HNSW")


def test_existing_collection_with_rows_is_not_reused(uri: str) -> None:
    name = coll()
    MilvusDenseStore(4, uri=uri, collection=name).add(np.arange(3), np.eye(3, 4, dtype=np.float32))
    with pytest.raises(ConfigError, match="already holds 3 rows"):
        MilvusDenseStore(4, uri=uri, collection=name)
    assert len(MilvusDenseStore(4, uri=uri, collection=name, overwrite=True)) == 0


def test_load_checks_collection_and_rows(uri: str, tmp_path: Path) -> None:
    from pymilvus import MilvusClient

    name = coll()
    store = MilvusDenseStore(4, uri=uri, collection=name)
    store.add(np.arange(6), np.eye(6, 4, dtype=np.float32))
    files = store.save(tmp_path, "g1")
    doc = json.loads((tmp_path / files["milvus"]).read_text())
    assert doc["collection"] == name and doc["rows"] == 6 and doc["max_slot"] == 5
    # Rows added and removed after the save were never committed: a loaded store does not
    # see them, and loading changes nothing in Milvus.
    store.add(np.array([6, 7]), np.ones((2, 4), np.float32))
    store.remove(np.array([0]))
    assert len(store) == 7
    for _ in range(2):
        loaded = MilvusDenseStore.load(tmp_path, files, store.config())
        assert len(loaded) == 6
        # rows 4 and 5 are zero vectors: score 0, still hits (as in FAISS)
        assert set(loaded.search(np.ones(4, np.float32), 10)[1][0].tolist()) == {0, 1, 2, 3, 4, 5, -1}
        np.testing.assert_array_equal(loaded.score(np.ones(4, np.float32), [np.array([0, 6])])[0],
                                      np.array([1, -np.inf], np.float32))
    assert len(store) == 7
    assert set(store.search(np.ones(4, np.float32), 10)[1][0].tolist()) == {1, 2, 3, 4, 5, 6, 7, -1}
    # A save with the removal makes it visible; Milvus still holds the row until the next commit.
    files2 = store.save(tmp_path, "g2")
    assert len(MilvusDenseStore.load(tmp_path, files2, store.config())) == 7
    # Rows deleted behind the index's back: the count no longer matches.
    client = MilvusClient(uri)
    client.delete(name, filter="slot in [1, 2]")
    with pytest.raises(IndexFormatError, match="holds 4 rows of generation 1 but the index recorded 6"):
        MilvusDenseStore.load(tmp_path, files, store.config())
    client.drop_collection(name)
    with pytest.raises(IndexFormatError, match=f"{name}.*does not exist"):
        MilvusDenseStore.load(tmp_path, files, store.config())
    with pytest.raises(IndexFormatError, match="milvus"):
        MilvusDenseStore.load(tmp_path, {}, store.config())


def test_a_writer_keeps_its_row_count_without_counting_milvus(uri: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit's save records the rows a reader will see; the writer keeps that count through
    adds and removes (a filtered count(*) reads every row in Milvus Lite) and it always equals the
    exact count, also across a load, duplicate and unknown removals, and removals of its own
    uncommitted rows."""
    exact: list[int] = []
    real = MilvusDenseStore._visible_count
    store = MilvusDenseStore(4, uri=uri, collection=coll())

    def check() -> None:
        assert len(store) == real(store)

    store.add(np.arange(10), np.eye(10, 4, dtype=np.float32))
    check()
    monkeypatch.setattr(MilvusDenseStore, "_visible_count", lambda self: exact.append(1) or real(self))
    store.save(tmp_path, "g1")
    store.committed()
    assert exact == []
    for slots in ([1, 2], [2, 3, 10**6], [1]):   # removed twice, unknown, again
        store.remove(np.array(slots))
    store.add(np.array([20, 21]), np.ones((2, 4), np.float32))
    store.remove(np.array([21]))                  # its own uncommitted row
    store.save(tmp_path, "g2")
    store.committed()
    store.remove(np.array([4]))
    store.save(tmp_path, "g3")                    # purges 1, 2, 3 and 21
    store.committed()
    assert exact == []
    monkeypatch.setattr(MilvusDenseStore, "_visible_count", real)
    check()
    assert len(store) == 10 - 4 + 1
    store.add(np.array([40]), np.ones((1, 4), np.float32))   # uncommitted when the next writer loads
    again = MilvusDenseStore.load(tmp_path, store.save(tmp_path, "g4"), store.config())
    store.committed()
    store.add(np.array([41]), np.ones((1, 4), np.float32))   # a dead writer's row: the next one deletes it
    assert len(again) == 8
    again.remove(np.array([5]))                               # its first write: 41 goes, the count stands
    again.add(np.array([30]), np.ones((1, 4), np.float32))
    assert len(again) == real(again) == 8
    again.close()


def test_load_trusts_its_record_only_while_no_newer_commit_was_published(uri: str, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A filtered count(*) reads every row in Milvus Lite, so load skips it when the collection's
    last published commit is the one it opens; deletions behind the index's back and newer
    commits (which may have purged rows this one shows) still get the exact count."""
    from pymilvus import MilvusClient

    exact: list[int] = []
    real = MilvusDenseStore._visible_count
    monkeypatch.setattr(MilvusDenseStore, "_visible_count", lambda self: exact.append(1) or real(self))
    name = coll()
    store = MilvusDenseStore(4, uri=uri, collection=name)
    store.add(np.arange(6), np.eye(6, 4, dtype=np.float32))
    g1 = store.save(tmp_path, "g1")
    store.committed()
    store.add(np.array([6, 7]), np.ones((2, 4), np.float32))   # a writer's uncommitted rows
    exact.clear()
    assert len(MilvusDenseStore.load(tmp_path, g1, store.config())) == 6 and exact == []
    # A newer commit published (removing slot 0), then the one after it purges slot 0: a reader of
    # g1 (an old copy) no longer finds every row it recorded, and the exact count says so.
    store.remove(np.array([0]))
    store.save(tmp_path, "g2")
    store.committed()
    store.save(tmp_path, "g3")
    store.committed()
    exact.clear()
    with pytest.raises(IndexFormatError, match="holds 5 rows of generation 1 but the index recorded 6"):
        MilvusDenseStore.load(tmp_path, g1, store.config())
    assert exact == [1]
    # Rows deleted behind the index's back, the newest commit's record: fewer rows than it
    # recorded, so the exact count runs and finds them missing.
    g4 = store.save(tmp_path, "g4")
    store.committed()
    MilvusClient(uri).delete(name, filter="slot in [1, 2, 3, 4, 5, 6, 7]")
    with pytest.raises(IndexFormatError, match="holds 0 rows of generation 4 but the index recorded 7"):
        MilvusDenseStore.load(tmp_path, g4, store.config())
    MilvusClient(uri).drop_collection(name)


def test_save_writes_relative_uri_inside_index_dir(tmp_path: Path) -> None:
    stores = milvus_stores({"enabled": True, "uri": "", "token": "", "collection": "hr"}, 4, tmp_path)
    assert set(stores) == {"dense", "sparse"}
    assert Path(stores["dense"].uri) == tmp_path / "milvus.db"
    # each call makes new collections <collection>_<random id>_<kind>
    assert re.fullmatch(r"hr_[0-9a-f]{12}_sparse", stores["sparse"].collection)
    assert stores["dense"].collection[:-6] == stores["sparse"].collection[:-7]
    stores["dense"].add(np.arange(2), np.eye(2, 4, dtype=np.float32))
    stores["sparse"].add(np.arange(2), [{1: 1.0}, {}])
    files = {role: s.save(tmp_path, "g1") for role, s in stores.items()}
    assert files["dense"] != files["sparse"]
    assert json.loads((tmp_path / files["dense"]["milvus"]).read_text())["uri"] == "milvus.db"
    assert "token" not in json.dumps(stores["dense"].config())
    assert len(MilvusSparseStore.load(tmp_path, files["sparse"], stores["sparse"].config())) == 2
    assert set(milvus_stores({"uri": "x/m.db"}, None, tmp_path)) == {"sparse"}
    with pytest.raises(ConfigError, match="colection"):
        milvus_stores({"colection": "x"}, 4, tmp_path)
    with pytest.raises(ConfigError, match=".db"):
        MilvusDenseStore(4, uri=str(tmp_path / "milvus.sqlite"))


def test_missing_pymilvus_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pymilvus", None)
    monkeypatch.delitem(sys.modules, "hybridrag.stores.milvus", raising=False)
    with pytest.raises(ImportError, match=r'pip install "hybridrag\[milvus\]"'):
        importlib.import_module("hybridrag.stores.milvus")


def test_connection_comes_from_the_user_not_the_index_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hybridrag.stores.milvus import resolve_connection

    monkeypatch.delenv("HYBRIDRAG_MILVUS_URI", raising=False)
    monkeypatch.setenv("MILVUS_TOKEN", "tok")
    # a Lite file inside the index directory: followed, and no token is sent
    assert resolve_connection("milvus.db", tmp_path) == (str((tmp_path / "milvus.db").resolve()), None, True)
    # a server, an absolute Lite path or a path leaving the directory: not followed
    for stored in ("http://evil:19530", "https://h", str(tmp_path.parent / "x.db"), "../x.db", "a/../../x.db"):
        with pytest.raises(ConfigError, match=r"milvus_uri=.*HYBRIDRAG_MILVUS_URI"):
            resolve_connection(stored, tmp_path)
    (tmp_path / "link.db").symlink_to(tmp_path.parent / "target.db")
    with pytest.raises(ConfigError, match="outside the index directory"):
        resolve_connection("link.db", tmp_path)
    # the user names it (argument or environment): followed, with the token
    assert resolve_connection("http://evil:19530", tmp_path, "http://mine:19530") == ("http://mine:19530", "tok", False)
    assert resolve_connection("x", tmp_path, "http://mine:19530", "t2")[1] == "t2"
    monkeypatch.setenv("HYBRIDRAG_MILVUS_URI", "http://env:19530")
    assert resolve_connection("http://evil:19530", tmp_path) == ("http://env:19530", "tok", False)
