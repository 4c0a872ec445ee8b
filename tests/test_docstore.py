"""Unit tests for :mod:`hybridrag.stores.docstore` (``DocStore``, SQLite).

Covers exact text and metadata round trips (surrogates, nested JSON, numpy scalars),
content hashes against ``hashlib``, generation bookkeeping (``live_slots(as_of)``,
``rollback_to``, ``commit_generation`` and tombstone purging, slots never reused), and
``filter_mask`` checked against an independent pure-Python evaluator of the documented
filter semantics on random metadata and random filters, plus every documented error.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hybridrag.errors import DocumentError, IndexFormatError
from hybridrag.stores.docstore import FILTER_OPERATORS, DocStore
from hybridrag.types import Chunk


def chunk(doc: str, i: int, text: str | None = None, **meta: Any) -> Chunk:
    t = f"text of {doc} chunk {i}" if text is None else text
    return Chunk(chunk_id=f"{doc}#{i}", doc_id=doc, ordinal=i, text=t, start=10 * i, end=10 * i + len(t),
                 n_tokens=3, metadata=meta)


@pytest.fixture
def store(tmp_path: Path) -> DocStore:
    s = DocStore(tmp_path / "docs.sqlite")
    yield s
    s.close()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# --------------------------------------------------------------------------- round trips


def test_add_get_round_trip(store: DocStore) -> None:
    texts = ["plain", "emoji 🚀 and 中文", "NUL \x00 and control \x07", "lone \ud800 surrogate \udfff", ""]
    chunks = [chunk("d1", i, t, n=i) for i, t in enumerate(texts)]
    store.add_chunks(chunks, np.arange(len(chunks)), gen=0, doc_hashes={"d1": "h-d1"})
    got = store.get([4, 0, 3, 3])
    assert [g["slot"] for g in got] == [4, 0, 3, 3]
    for g in store.get(list(range(len(chunks)))):
        ch = chunks[g["slot"]]
        assert g["text"] == ch.text
        assert (g["chunk_id"], g["doc_id"], g["ordinal"], g["start"], g["end"]) == (
            ch.chunk_id, ch.doc_id, ch.ordinal, ch.start, ch.end)
        assert g["metadata"] == {"n": g["slot"]}
        assert g["content_hash"] == sha(ch.text)
    assert store.count() == 5 and store.doc_count() == store.count_documents() == 1
    assert store.doc_hash("d1") == "h-d1" and store.has_doc("d1")
    assert store.doc_hash("nope") is None and not store.has_doc("nope")
    assert store.next_slot() == 5
    assert store.integrity_problems() == []
    with pytest.raises(KeyError, match="99"):
        store.get([0, 99])
    assert store.get([]) == []


def test_metadata_json_round_trip(store: DocStore) -> None:
    meta = {
        "str": "café ✓", "int": -3, "big": 2**53, "float": 0.1, "bool": True, "none": None,
        "list": [1, "a", None, [2.5]], "tuple": (1, 2), "nested": {"a": {"b": [True, False]}},
        "np_int": np.int64(7), "np_float": np.float32(0.5), "surrogate": "x\ud800y",
        "key with spaces.and.dots": 1, "ключ": "значение",
    }
    store.add_chunks([chunk("d", 0, **meta)], [0], gen=0)
    (got,) = store.get([0])
    expected = json.loads(json.dumps({**meta, "np_int": 7, "np_float": 0.5, "tuple": [1, 2]}))
    assert got["metadata"] == expected
    assert type(got["metadata"]["np_int"]) is int and got["metadata"]["surrogate"] == "x\ud800y"
    # Survives closing and reopening, also read-only.
    path = store.path
    store.close()
    with DocStore(path, read_only=True) as ro:
        assert ro.get([0])[0]["metadata"] == expected


@pytest.mark.parametrize("bad,match", [
    ({"s": {1, 2}}, "set"),
    ({"b": b"bytes"}, "bytes"),
    ({"nan": float("nan")}, "not finite"),
    ({"inf": [1.0, float("inf")]}, "not finite"),
    ({"nested": {1: "int key"}}, "key 1"),
    ({"obj": object()}, "object"),
    ({"np_arr": np.zeros(2)}, "ndarray"),
])
def test_bad_metadata_is_rejected(store: DocStore, bad: dict[str, Any], match: str) -> None:
    with pytest.raises(DocumentError, match=match):
        store.add_chunks([chunk("d", 0, **bad)], [0], gen=0)
    assert store.count() == 0 and store.doc_count() == 0  # nothing half-written


def test_non_str_metadata_key_is_rejected(store: DocStore) -> None:
    c = Chunk("d#0", "d", 0, "t", 0, 1, metadata={5: "x"})  # type: ignore[dict-item]
    with pytest.raises(DocumentError, match="5"):
        store.add_chunks([c], [0], gen=0)


def test_content_hashes_follow_text(store: DocStore) -> None:
    store.add_chunks([chunk("a", 0, "same"), chunk("b", 0, "same"), chunk("c", 0, "other")], [0, 1, 2], gen=0,
                     doc_hashes={"a": "ha", "b": "hb", "c": "hc"})
    h = [g["content_hash"] for g in store.get([0, 1, 2])]
    assert h[0] == h[1] == hashlib.sha256(b"same").hexdigest() != h[2]
    assert [store.doc_hash(d) for d in "abc"] == ["ha", "hb", "hc"]


@pytest.mark.parametrize("make,exc,match", [
    (lambda: ([chunk("d", 0)], [0, 1]), ValueError, "1 chunks but 2 slots"),
    (lambda: ([chunk("d", 0), chunk("d", 1)], [3, 3]), ValueError, "duplicates"),
    (lambda: (["not a chunk"], [0]), TypeError, "Chunk"),
    (lambda: ([Chunk("d\ud800#0", "d", 0, "t", 0, 1)], [0]), DocumentError, "chunk_id"),
    (lambda: ([Chunk("d#0", 5, 0, "t", 0, 1)], [0]), DocumentError, "doc_id"),  # type: ignore[arg-type]
    (lambda: ([Chunk("d#0", "d", True, "t", 0, 1)], [0]), DocumentError, "ordinal"),
    (lambda: ([Chunk("d#0", "d", 0, "t", "0", 1)], [0]), DocumentError, "start"),  # type: ignore[arg-type]
    (lambda: ([Chunk("d#0", "d", 0, b"t", 0, 1)], [0]), DocumentError, "text"),  # type: ignore[arg-type]
])
def test_bad_chunks(store: DocStore, make: Any, exc: type[Exception], match: str) -> None:
    chunks, slots = make()
    with pytest.raises(exc, match=match):
        store.add_chunks(chunks, slots, gen=0)
    assert store.count() == 0


def test_duplicates_and_slot_reuse_are_rejected(store: DocStore) -> None:
    store.add_chunks([chunk("d", 0), chunk("d", 1)], [0, 1], gen=0)
    with pytest.raises(DocumentError, match="'d' is already stored"):
        store.add_chunks([chunk("d", 2)], [2], gen=1)
    other = Chunk("d#0", "e", 0, "t", 0, 1)  # a live chunk id under another document
    with pytest.raises(DocumentError, match="duplicate"):
        store.add_chunks([other], [5], gen=1)
    with pytest.raises(ValueError, match="never reused"):
        store.add_chunks([chunk("f", 0)], [1], gen=1)
    assert store.count() == 2 and store.doc_count() == 1 and store.integrity_problems() == []
    # A deleted document can be added again, on new slots.
    store.delete_docs(["d"], gen=1)
    with pytest.raises(ValueError, match="never reused"):
        store.add_chunks([chunk("d", 0)], [0], gen=1)
    store.add_chunks([chunk("d", 0, "new text")], [2], gen=1)
    assert store.get([2])[0]["text"] == "new text"


def test_delete_docs(store: DocStore) -> None:
    store.add_chunks([chunk("a", 0), chunk("a", 1), chunk("b", 0), chunk("c", 0)], [0, 3, 1, 2], gen=0)
    assert store.slots_for_docs(["a", "zzz"]).tolist() == [0, 3]
    assert store.doc_ids_for_slots([3, 1, 1, 77]) == ["a", "b"]
    gone = store.delete_docs(["a", "a", "missing"], gen=1)
    assert gone.dtype == np.int64 and gone.tolist() == [0, 3]
    assert store.live_slots().tolist() == [1, 2]
    assert store.count() == 2 and store.doc_count() == 2 and not store.has_doc("a")
    with pytest.raises(KeyError):
        store.get([0])
    assert store.delete_docs(["a"], gen=1).tolist() == []  # already deleted: no-op
    assert store.integrity_problems() == []


def test_documents_without_chunks(store: DocStore) -> None:
    store.add_chunks([], [], gen=0, doc_hashes={"empty-doc": "h0"})
    assert store.has_doc("empty-doc") and store.doc_hash("empty-doc") == "h0"
    assert store.count() == 0 and store.doc_count() == 1
    assert store.integrity_problems() == []


# --------------------------------------------------------------------------- generations


def test_generations_and_live_slots_as_of(store: DocStore) -> None:
    assert store.generation() == -1 and store.committed_generation() == -1 and store.max_generation() == -1
    store.add_chunks([chunk("a", 0), chunk("a", 1)], [0, 1], gen=1)
    store.add_chunks([chunk("b", 0)], [2], gen=2)
    store.delete_docs(["a"], gen=3)
    store.add_chunks([chunk("a", 0, "a v2")], [3], gen=3)
    assert store.generation() == 3 and store.max_generation() == 3
    assert store.live_slots(as_of=0).tolist() == []
    assert store.live_slots(as_of=1).tolist() == [0, 1]
    assert store.live_slots(as_of=2).tolist() == [0, 1, 2]
    assert store.live_slots(as_of=3).tolist() == [2, 3]
    assert store.live_slots().tolist() == [2, 3]
    with pytest.raises(ValueError, match="older"):
        store.add_chunks([chunk("c", 0)], [4], gen=2)
    with pytest.raises(ValueError, match="older"):
        store.delete_docs(["b"], gen=1)
    for bad, exc in ((-1, ValueError), (True, TypeError), (1.0, TypeError), ("1", TypeError)):
        with pytest.raises(exc, match="gen"):
            store.add_chunks([chunk("c", 0)], [4], gen=bad)
        with pytest.raises(exc, match="gen"):
            store.live_slots(as_of=bad)
        with pytest.raises(exc, match="gen"):
            store.rollback_to(bad)
    assert store.count() == 2


def test_rollback_undoes_uncommitted_writes(store: DocStore) -> None:
    store.add_chunks([chunk("a", 0, "a v1"), chunk("a", 1)], [0, 1], gen=1, doc_hashes={"a": "hash-v1"})
    store.add_chunks([chunk("b", 0)], [2], gen=1, doc_hashes={"b": "hb"})
    store.commit_generation(1)
    checksum = store.checksum()
    # An upsert of "a" and a delete of "b" at gen 2, never committed.
    store.delete_docs(["a"], gen=2)
    store.add_chunks([chunk("a", 0, "a v2")], [3], gen=2, doc_hashes={"a": "hash-v2"})
    store.delete_docs(["b"], gen=2)
    assert store.doc_hash("a") == "hash-v2" and store.checksum() != checksum
    assert store.max_generation() == 2 and store.committed_generation() == 1
    store.rollback_to(1)
    assert store.live_slots().tolist() == [0, 1, 2]
    assert store.get([0])[0]["text"] == "a v1"
    assert store.doc_hash("a") == "hash-v1" and store.has_doc("b")
    assert store.checksum() == checksum
    assert store.generation() == 1 and store.max_generation() == 1
    assert store.integrity_problems() == []
    with pytest.raises(KeyError):
        store.get([3])


def test_rollback_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    with DocStore(path) as s:
        s.add_chunks([chunk("a", 0)], [0], gen=0)
        s.commit_generation(0)
        s.add_chunks([chunk("b", 0)], [1], gen=1)  # written, then the process "crashes"
    with DocStore(path) as s:
        assert s.committed_generation() == 0 and s.max_generation() == 1
        s.rollback_to(s.committed_generation())
        assert s.live_slots().tolist() == [0] and not s.has_doc("b")


def test_commit_generation_purges_old_tombstones(store: DocStore) -> None:
    store.add_chunks([chunk("a", 0), chunk("b", 0)], [0, 1], gen=0)
    store.commit_generation(0)
    store.delete_docs(["a"], gen=1)
    store.commit_generation(1)
    # Still kept: the previous manifest (gen 0) may need the tombstone of gen 1.
    assert store.live_slots(as_of=0).tolist() == [0, 1]
    store.add_chunks([chunk("c", 0)], [2], gen=2)
    store.commit_generation(2)  # now tombstones deleted at or before gen 1 go
    assert store.live_slots(as_of=0).tolist() == [1]
    assert store.committed_generation() == 2
    # Slots are never reused, even though slot 0's row is gone.
    assert store.next_slot() == 3
    store.delete_docs(["c"], gen=3)
    store.commit_generation(3)
    store.commit_generation(4)
    assert store.next_slot() == 3  # slot 2's row was purged; the high-water mark stays
    with pytest.raises(ValueError, match="never reused"):
        store.add_chunks([chunk("d", 0)], [2], gen=4)
    with pytest.raises(ValueError, match="older"):
        store.commit_generation(3)
    assert store.purge(4) == 0


def test_checksum_is_stable_and_sensitive(tmp_path: Path) -> None:
    def build(path: Path, text: str) -> str:
        with DocStore(path) as s:
            s.add_chunks([chunk("a", 0, text, k=1), chunk("b", 0)], [0, 1], gen=0, doc_hashes={"a": "x"})
            return s.checksum()

    a = build(tmp_path / "1.sqlite", "hello")
    assert build(tmp_path / "2.sqlite", "hello") == a
    assert build(tmp_path / "3.sqlite", "hello!") != a
    with DocStore(tmp_path / "1.sqlite") as s:
        assert s.checksum() == a


def test_read_only(tmp_path: Path) -> None:
    with pytest.raises(IndexFormatError, match="does not exist"):
        DocStore(tmp_path / "missing.sqlite", read_only=True)
    with DocStore(tmp_path / "d.sqlite") as s:
        s.add_chunks([chunk("a", 0)], [0], gen=0)
    with DocStore(tmp_path / "d.sqlite", read_only=True) as ro:
        assert ro.count() == 1
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            ro.add_chunks([chunk("b", 0)], [1], gen=1)
        assert ro.count() == 1


# --------------------------------------------------------------------------- filters

FIELDS = ["year", "lang", "flag", "score", "tags", "title"]


def random_meta(rng: random.Random) -> dict[str, Any]:
    pools: dict[str, list[Any]] = {
        "year": [2018, 2019, 2020, 2021, 2022, "2021", 2020.5, None],
        "lang": ["en", "fr", "de", "", "EN", None, 1],
        "flag": [True, False, 0, 1, "true"],
        "score": [0.0, -1.5, 0.25, 3, 1e9],
        "tags": [["a", "b"], [], {"k": 1}],
        "title": ["Alpha", "beta", "Gamma", "ähnlich", "中文", "a\"quote"],
    }
    return {f: rng.choice(pool) for f, pool in pools.items() if rng.random() < 0.75}


def kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "num"
    if isinstance(v, str):
        return "str"
    return "other"


def ref_eq(present: bool, have: Any, want: Any) -> bool:
    return present and kind(have) == kind(want) and have == want


def ref_match(rec: dict[str, Any], filters: dict[str, Any]) -> bool:
    """The documented semantics, independently: AND over fields, same-type comparisons only."""
    for field, cond in filters.items():
        if field in ("doc_id", "chunk_id"):
            present, have = True, rec[field]
        else:
            present, have = field in rec["metadata"], rec["metadata"].get(field)
        ops = cond if isinstance(cond, dict) else {"$eq": cond}
        for op, want in ops.items():
            if op == "$eq":
                ok = ref_eq(present, have, want)
            elif op == "$ne":
                ok = not ref_eq(present, have, want)
            elif op == "$in":
                ok = any(ref_eq(present, have, w) for w in want)
            elif op == "$nin":
                ok = not any(ref_eq(present, have, w) for w in want)
            else:
                same = present and kind(have) == kind(want) and kind(want) in ("num", "str")
                ok = same and {"$gt": have > want, "$gte": have >= want, "$lt": have < want,
                               "$lte": have <= want}[op] if same else False
            if not ok:
                return False
    return True


def random_filter(rng: random.Random) -> dict[str, Any]:
    values: dict[str, list[Any]] = {
        "year": [2019, 2020, 2021, "2021", 2020.5, None, 2021.0],
        "lang": ["en", "fr", "", "EN", None, 1],
        "flag": [True, False, 1, 0],
        "score": [0, 0.25, -1.5, 3.0],
        "tags": ["a", None],
        "title": ["Alpha", "beta", "b", "Z", "中", "a\"quote"],
        "doc_id": ["d0", "d3", "d10"],
        "chunk_id": ["d0#0", "d3#1", "d5"],
        "missing_field": [1, "x", None],
    }
    out: dict[str, Any] = {}
    for field in rng.sample(sorted(values), rng.randint(1, 3)):
        pool = values[field]
        op = rng.choice(["scalar", *FILTER_OPERATORS])
        if op == "scalar":
            out[field] = rng.choice(pool)
            continue
        if op in ("$in", "$nin"):
            out[field] = {op: rng.sample(pool, rng.randint(0, min(3, len(pool))))}
            continue
        if op in ("$gt", "$gte", "$lt", "$lte"):
            pool = [v for v in pool if kind(v) in ("num", "str")]
            if field in ("doc_id", "chunk_id"):
                pool = [v for v in pool if isinstance(v, str)]
        cond = {op: rng.choice(pool)}
        if rng.random() < 0.3 and op in ("$gt", "$gte"):  # a range on one field
            upper = [v for v in pool if kind(v) == kind(cond[op])]
            cond[rng.choice(["$lt", "$lte"])] = rng.choice(upper)
        out[field] = cond
    return out


@pytest.fixture
def filled(store: DocStore) -> tuple[DocStore, dict[int, dict[str, Any]]]:
    rng = random.Random(0)
    recs: dict[int, dict[str, Any]] = {}
    slot = 0
    for d in range(12):
        chunks = [chunk(f"d{d}", i, **random_meta(rng)) for i in range(rng.randint(1, 4))]
        slots = list(range(slot, slot + len(chunks)))
        slot += len(chunks) + 1  # leave a gap: masks are indexed by slot
        store.add_chunks(chunks, slots, gen=0)
        for s, c in zip(slots, chunks):
            recs[s] = {"doc_id": c.doc_id, "chunk_id": c.chunk_id, "metadata": json.loads(json.dumps(c.metadata))}
    for s in store.delete_docs(["d4", "d7"], gen=1).tolist():
        del recs[s]
    return store, recs


def test_filter_mask_matches_reference(filled: tuple[DocStore, dict[int, dict[str, Any]]]) -> None:
    store, recs = filled
    rng = random.Random(1)
    n = store.next_slot()
    nontrivial = 0
    for _ in range(400):
        f = random_filter(rng)
        mask = store.filter_mask(f)
        assert mask.dtype == np.bool_ and mask.shape == (n,)
        expected = np.zeros(n, dtype=bool)
        for s, rec in recs.items():
            expected[s] = ref_match(rec, f)
        assert np.array_equal(mask, expected), (f, np.flatnonzero(mask ^ expected).tolist())
        nontrivial += 0 < expected.sum() < len(recs)
    assert nontrivial > 100  # the random filters really discriminate


def test_filter_examples(store: DocStore) -> None:
    metas = [
        {"year": 2020, "lang": "en", "flag": True},
        {"year": "2021", "lang": "fr", "flag": 1},
        {"year": 2022, "lang": None},
        {"year": 2021.0, "tags": ["x"]},
        {},
    ]
    store.add_chunks([chunk(f"d{i}", 0, **m) for i, m in enumerate(metas)], range(5), gen=0)

    def match(f: dict[str, Any]) -> list[int]:
        return np.flatnonzero(store.filter_mask(f)).tolist()

    assert match({}) == [0, 1, 2, 3, 4]
    assert match({"lang": "en"}) == [0]
    assert match({"year": 2021}) == [3]  # the number, not the string "2021"
    assert match({"year": "2021"}) == [1]
    assert match({"year": {"$gte": 2020}}) == [0, 2, 3]  # never the string
    assert match({"year": {"$gt": 2020, "$lte": 2021}}) == [3]
    assert match({"year": {"$in": [2020, "2021"]}}) == [0, 1]
    assert match({"year": {"$nin": [2020, 2022]}}) == [1, 3, 4]  # also chunks without the field
    assert match({"lang": {"$ne": "en"}}) == [1, 2, 3, 4]
    assert match({"lang": None}) == [2]  # an explicit null, not a missing field
    assert match({"flag": True}) == [0]  # booleans only match booleans
    assert match({"flag": 1}) == [1]
    assert match({"no_such_field": "x"}) == []  # unknown fields match nothing ...
    assert match({"no_such_field": {"$ne": "x"}}) == [0, 1, 2, 3, 4]  # ... except negations
    assert match({"doc_id": {"$in": ["d1", "d3", "zzz"]}}) == [1, 3]
    assert match({"chunk_id": "d2#0"}) == [2]
    assert match({"doc_id": {"$gte": "d3"}}) == [3, 4]
    assert match({"lang": {"$in": []}}) == [] and match({"lang": {"$nin": []}}) == [0, 1, 2, 3, 4]
    assert match({"year": np.int64(2022)}) == [2]
    # AND over fields; size pads the mask; deleted chunks never match.
    assert match({"year": {"$lt": 2030}, "lang": "en"}) == [0]
    assert store.filter_mask({"lang": "en"}, size=10).tolist() == [True] + [False] * 9
    store.delete_docs(["d0"], gen=1)
    assert match({"lang": "en"}) == []


@pytest.mark.parametrize("filters,exc,match", [
    ([("lang", "en")], TypeError, "dict"),
    ({"lang": {"$regex": "e.*"}}, ValueError, r"\$regex.*valid operators: \$eq"),
    ({"lang": {}}, ValueError, "empty operator dict"),
    ({"$and": [{"lang": "en"}]}, ValueError, "top-level"),
    ({"lang": ["en", "fr"]}, TypeError, r"\$in"),
    ({"lang": {"$in": "en"}}, TypeError, "must be a list"),
    ({"lang": {"$nin": {"en": 1}}}, TypeError, "must be a list"),
    ({"year": {"$gt": None}}, TypeError, "number or str"),
    ({"year": {"$gte": True}}, TypeError, "number or str"),
    ({"year": float("nan")}, ValueError, "finite"),
    ({"year": {"$lt": float("inf")}}, ValueError, "finite"),
    ({"lang": {"a": 1}}, ValueError, "unknown filter operator"),
    ({"lang": object()}, TypeError, "value must be str"),
    ({"lang": b"en"}, TypeError, "value must be str"),
    ({5: "x"}, TypeError, "field names"),
    ({"": "x"}, TypeError, "field names"),
    ({'la"ng': "x"}, ValueError, "quote"),
    ({"la\\ng": "x"}, ValueError, "backslash"),
    ({"la\nng": "x"}, ValueError, "control"),
    ({"doc_id": 5}, TypeError, "string column"),
    ({"chunk_id": {"$gt": 1}}, TypeError, "string column"),
])
def test_bad_filters(store: DocStore, filters: Any, exc: type[Exception], match: str) -> None:
    store.add_chunks([chunk("d", 0, lang="en")], [0], gen=0)
    with pytest.raises(exc, match=match):
        store.filter_mask(filters)


def test_filter_mask_size(store: DocStore) -> None:
    store.add_chunks([chunk("d", 0, lang="en"), chunk("d", 1, lang="en")], [0, 5], gen=0)
    assert store.filter_mask({"lang": "en"}).shape == (6,)
    with pytest.raises(ValueError, match="too small"):
        store.filter_mask({"lang": "en"}, size=3)
    assert store.filter_mask({"lang": "fr"}, size=3).tolist() == [False] * 3
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match="size"):
            store.filter_mask({"lang": "en"}, size=bad)  # type: ignore[arg-type]


def test_large_in_lists_match_reference(filled: tuple[DocStore, dict[int, dict[str, Any]]]) -> None:
    """$in / $nin with thousands of values (one SQL term per value overflowed SQLite's expression
    depth of 1000 at 997 values): the same matches as the reference, for ids, numbers, strings
    and mixed-type lists."""
    store, recs = filled
    rng = random.Random(2)
    ids = [f"d{i}" for i in range(5000)]
    rng.shuffle(ids)
    pool = [*range(-2500, 2500), *(x / 4 for x in range(-400, 400)), "en", "2021", "Alpha", "", True, None, 0.25]
    filters: list[dict[str, Any]] = [
        {"doc_id": {"$in": ids}}, {"doc_id": {"$nin": ids[:4000]}},
        {"chunk_id": {"$in": [f"d{i}#{j}" for i in range(1000) for j in range(5)]}},
        {"year": {"$in": list(range(-2000, 3000))}}, {"year": {"$nin": list(range(2000, 7000))}},
        {"score": {"$in": [x / 4 for x in range(-8000, 8000)]}},
        {"lang": {"$in": [f"w{i}" for i in range(5000)] + ["en", 1]}},
    ] + [{rng.choice(["year", "lang", "flag", "score", "title"]): {rng.choice(["$in", "$nin"]): rng.sample(pool, 3000)}}
         for _ in range(20)]
    n = store.next_slot()
    for f in filters:
        expected = np.zeros(n, dtype=bool)
        for s, rec in recs.items():
            expected[s] = ref_match(rec, f)
        assert np.array_equal(store.filter_mask(f), expected), str(f)[:80]
    assert store.filter_mask({"doc_id": {"$in": ids}}).sum() == len(recs)


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
def test_integers_outside_64_bits_are_named(store: DocStore, value: int) -> None:
    store.add_chunks([chunk("d", 0, n=1)], [0], gen=0)
    for f in ({"n": value}, {"n": {"$gt": value}}, {"n": {"$in": [1, value]}}, {"n": {"$nin": [value]}}):
        with pytest.raises(ValueError, match=str(value)):
            store.filter_mask(f)
    assert store.filter_mask({"n": {"$in": [2**63 - 1, -(2**63), 1]}}).tolist() == [True]


def test_lone_surrogates_in_filters_are_named(store: DocStore) -> None:
    store.add_chunks([chunk("d", 0, lang="en")], [0], gen=0)
    for f, name in (({"lang": "e\ud800"}, "'lang'"), ({"lang": {"$in": ["en", "\udcff"]}}, "'lang'"),
                    ({"doc_id": {"$gte": "\ud800"}}, "'doc_id'"), ({"la\udc80ng": "en"}, "field name")):
        with pytest.raises(ValueError, match=f"{name}.*lone surrogate"):
            store.filter_mask(f)


def test_missing_keys(filled: tuple[DocStore, dict[int, dict[str, Any]]]) -> None:
    store, recs = filled
    have = {k for rec in recs.values() for k in rec["metadata"]}
    assert store.missing_keys(["year", "colour", "doc_id", "chunk_id", "title", "tag"]) == \
        [k for k in ["year", "colour", "title", "tag"] if k not in have]
    assert "colour" not in have and "year" in have


# --------------------------------------------------------------------------- per-row hashes

FIXTURES = Path(__file__).parent / "fixtures"


def _raw(path: Path, sql: str, *params: Any) -> None:
    """Change the file behind the store's back (as damage or an edit would)."""
    con = sqlite3.connect(path)
    con.execute(sql, params)
    con.commit()
    con.close()


def test_verify_rows_names_every_changed_row(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    with DocStore(path) as s:
        s.add_chunks([chunk("a", i, k=i) for i in range(3)] + [chunk("b", 0, "lone \ud800")], [0, 1, 2, 3],
                     gen=0, doc_hashes={"a": "ha", "b": "hb"})
        s.delete_docs(["b"], gen=1)
        assert s.verify_rows() == [] and s.verify_rows(as_of=0) == []
    _raw(path, "UPDATE chunks SET text = 'changed' WHERE slot = 0")
    _raw(path, "UPDATE chunks SET metadata = '{\"k\": 9}' WHERE slot = 1")
    # text and its content_hash changed together: still caught by the row hash
    _raw(path, "UPDATE chunks SET text = 'other', content_hash = ? WHERE slot = 2", sha("other"))
    _raw(path, "UPDATE documents SET n_chunks = 7 WHERE doc_id = 'a'")
    _raw(path, "UPDATE chunks SET ordinal = 5 WHERE slot = 3")   # tombstoned at gen 1
    with DocStore(path, read_only=True) as s:
        problems = s.verify_rows()
        assert len(problems) == 4, problems
        assert "slot 0 ('a#0'): text" in problems[0] and "slot 1 ('a#1'): ids, metadata" in problems[1]
        assert "slot 2 ('a#2'): ids, metadata" in problems[2] and "document 'a'" in problems[3]
        assert any("slot 3 ('b#0')" in p for p in s.verify_rows(as_of=0))  # live at generation 0


def test_verify_rows_reports_a_count_past_twenty(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    with DocStore(path) as s:
        s.add_chunks([chunk("a", i) for i in range(30)], np.arange(30), gen=0)
    _raw(path, "UPDATE chunks SET text = 'x'")
    with DocStore(path) as s:
        problems = s.verify_rows()
    assert len(problems) == 21 and problems[-1] == "... and 10 more rows that do not match their recorded hashes"


def test_a_write_hashes_only_its_own_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cost of recording hashes follows the change: adding rows hashes those rows only."""
    from hybridrag.stores import docstore as mod

    with DocStore(tmp_path / "d.sqlite") as s:
        s.add_chunks([chunk("a", i) for i in range(50)], np.arange(50), gen=0)
        seen: list[int] = []
        real = mod._row_digest
        monkeypatch.setattr(mod, "_row_digest", lambda fields: seen.append(1) or real(fields))
        s.add_chunks([chunk("b", 0), chunk("b", 1)], [50, 51], gen=1)
        s.commit_generation(1)
        assert len(seen) == 3  # two chunks and their document
        monkeypatch.setattr(mod, "_row_digest", real)
        assert s.verify_rows() == []


def _one(path: Path, sql: str, *params: Any) -> Any:
    con = sqlite3.connect(path)
    try:
        return con.execute(sql, params).fetchone()[0]
    finally:
        con.close()


@pytest.mark.parametrize("fixture", ["format1-bm25", "format1-m3"])
def test_docstore_of_format1_opens_and_gets_row_hashes(tmp_path: Path, fixture: str) -> None:
    src = FIXTURES / fixture / "docstore.sqlite"  # written before row hashes existed; only copied

    def copy(name: str) -> Path:
        (tmp_path / name).mkdir()
        shutil.copyfile(src, tmp_path / name / "docstore.sqlite")
        return tmp_path / name / "docstore.sqlite"

    path = copy("a")
    before = path.read_bytes()
    with DocStore(path) as s:  # a writer that only reads changes nothing (no migration yet)
        assert s.count() > 0 and s.verify_rows() == []
    assert path.read_bytes() == before
    old_slot = _one(path, "SELECT MIN(slot) FROM chunks WHERE gen_deleted IS NULL")
    with DocStore(path) as s:
        slot = s.next_slot()
        s.add_chunks([chunk("new", 0)], [slot], gen=s.generation() + 1, doc_hashes={"new": "h"})
        assert s.verify_rows() == []
    _raw(path, "UPDATE chunks SET metadata = '{\"edited\": 1}' WHERE slot = ?", slot)
    with DocStore(path) as s:  # the new row is covered whole
        assert len(s.verify_rows()) == 1 and f"slot {slot} " in s.verify_rows()[0]
    # old rows have no row hash ("not recorded"): their text is checked, their metadata is not
    _raw(path, "UPDATE chunks SET metadata = '{\"edited\": 1}' WHERE slot = ?", old_slot)
    with DocStore(path) as s:
        assert len(s.verify_rows()) == 1
    _raw(path, "UPDATE chunks SET text = 'edited' WHERE slot = ?", old_slot)
    with DocStore(path) as s:
        assert len(s.verify_rows()) == 2 and f"slot {old_slot} " in s.verify_rows()[0]
    # after record_row_hashes, old rows are covered whole too
    path = copy("b")
    rows = _one(path, "SELECT (SELECT COUNT(*) FROM chunks) + (SELECT COUNT(*) FROM documents)")
    with DocStore(path) as s:
        docs = s.doc_count()
        assert s.record_row_hashes() == rows
        assert s.record_row_hashes() == 0 and s.verify_rows() == [] and s.doc_count() == docs
    _raw(path, "UPDATE chunks SET metadata = '{\"edited\": 1}' WHERE slot = ?", old_slot)
    with DocStore(path) as s:
        assert len(s.verify_rows()) == 1 and "metadata" in s.verify_rows()[0]


def test_commits_and_lookups_never_scan_every_document(tmp_path: Path) -> None:
    """Each commit purges tombstones and each write looks documents up by id: both must go
    through an index (a purge that scanned the documents table cost 90 ms per commit at 1M
    documents; an index that SQLite preferred for lookups by id made them scan it). Checked on
    the statements the store really runs, with SQLite's query plans."""
    path = tmp_path / "docstore.sqlite"
    with DocStore(path) as s:
        for gen in range(1, 4):
            docs = [f"d{gen}-{i}" for i in range(20)]
            s.add_chunks([chunk(d, 0) for d in docs], np.arange(s.next_slot(), s.next_slot() + 20), gen=gen,
                         doc_hashes={d: "h" for d in docs})
            s.commit_generation(gen)
        ran: list[str] = []
        s._conn.set_trace_callback(ran.append)
        s.delete_docs(["d1-3", "d2-5"], gen=4)
        s.commit_generation(4)
        s.commit_generation(5)   # purges what generation 4 deleted
        assert s.doc_hash("d3-1") == "h" and s.has_doc("d1-4") and not s.has_doc("d1-3")
        s._conn.set_trace_callback(None)
        on_documents = [q for q in ran if "documents" in q and q.lstrip().upper().startswith(("SELECT", "DELETE",
                                                                                              "UPDATE"))]
        assert any(q.lstrip().upper().startswith("DELETE FROM DOCUMENTS") for q in on_documents)
        for q in on_documents:
            plan = " | ".join(r[-1] for r in s._conn.execute("EXPLAIN QUERY PLAN " + q))
            assert "SCAN" not in plan, (q, plan)
