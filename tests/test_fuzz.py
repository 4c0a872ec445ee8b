"""Fuzzing the public surface of hybridrag/index.py, hybridrag/stores/docstore.py and
hybridrag/config.py with hypothesis, plus resource limits and streamed ingest
(hybridrag/sources.py, hybridrag/cli.py). Every input gets a correct result or a
documented exception (hybridrag.errors types, ValueError, TypeError); the index stays
loadable and consistent after each failure. ``HYBRIDRAG_FUZZ_EXAMPLES`` (default 50) sets
hypothesis' example count; ``HYBRIDRAG_STREAM_MB`` (default 40) the streamed file size."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridrag import ConfigError, DocumentError, HybridRAGError
from hybridrag.config import PipelineConfig
from hybridrag.index import HybridIndex, check_index

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("HYBRIDRAG_FUZZ_EXAMPLES", "50"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                              HealthCheck.too_slow])
ALLOWED = (HybridRAGError, ValueError, TypeError)
PIPELINE = {
    "name": "fuzz-bm25", "encoder": {"kind": "none"},
    "chunking": {"max_tokens": 32, "overlap": 4, "max_document_bytes": 200_000, "max_chunks_per_document": 400},
    "dense": {"enabled": False}, "sparse": {"enabled": False}, "colbert": {"enabled": False},
    "bm25": {"enabled": True}, "fusion": {"method": "weighted", "weights": {"bm25": 1.0}},
}

texts = st.one_of(
    st.text(),  # any code point incl. lone surrogates and control characters
    st.text(alphabet=st.characters(blacklist_categories=()), min_size=0, max_size=50),
    st.just(""), st.just(" \t\n"), st.just("\ud800 lone \udfff surrogates"), st.just("\x00\x01\x7f ctrl"),
    st.builds(lambda n: "huge words " * n, st.integers(10_000, 30_000)),  # over the byte or chunk limit
)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
metas = st.one_of(
    st.dictionaries(st.text(max_size=30), st.recursive(json_leaf, lambda c: st.lists(c, max_size=3)
                                                       | st.dictionaries(st.text(max_size=5), c, max_size=3),
                                                       max_leaves=8), max_size=4),
    st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=2),        # non-string keys
    st.builds(lambda v: {"x": v}, st.sampled_from([object(), {1, 2}, b"bytes", float("nan"), 1j])),
    st.builds(lambda k: {k: 1}, st.just("k" * 100_000)),                            # huge key
    st.builds(lambda: {"nested": {1: "int key inside"}}),
    st.sampled_from([None, [], "meta", 3]),
)
ids = st.one_of(st.text(max_size=20), st.just(""), st.just(" padded "), st.just("x" * 2000),
                st.sampled_from(["../../etc/passwd", "/abs/path", "a/b\\c", "..", ".", "dup", "dup", "nul\x00"]),
                st.integers(), st.none())


@pytest.fixture(scope="module")
def fidx(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "idx"
    idx = HybridIndex.create(path, PIPELINE)
    idx.add([{"id": "base", "text": "a base document about retrieval", "metadata": {"k": 1}}])
    yield idx
    idx.close()


def _consistent(idx: HybridIndex) -> None:
    n = idx.docstore.count()
    assert all(len(s) == n for s in idx.stores.values())
    assert check_index(idx.path) == []


@FUZZ
@given(st.lists(st.tuples(ids, texts, metas), min_size=1, max_size=4), st.booleans())
def test_documents_fuzz(fidx, docs, upsert):
    before = (fidx.docstore.checksum(), fidx.docstore.count())
    payload = [{"id": i, "text": t, "metadata": m} for i, t, m in docs]
    try:
        res = (fidx.upsert if upsert else fidx.add)(payload)
    except ALLOWED:
        assert (fidx.docstore.checksum(), fidx.docstore.count()) == before  # a failed call changes nothing
    else:
        for d in payload:
            if d["id"] in res.added:
                rows = fidx.docstore.get(fidx.docstore.slots_for_docs([d["id"]]))
                for r in rows:  # text and metadata come back exactly
                    assert r["text"] == d["text"][r["start"]:r["end"]]
                    want = {} if d["metadata"] is None else json.loads(json.dumps(d["metadata"]))
                    assert r["metadata"] == want  # None is documented as "no metadata"
    _consistent(fidx)
    again = HybridIndex.load(fidx.path)
    assert again.docstore.count() == fidx.docstore.count()
    again.close()


@FUZZ
@given(st.one_of(st.text(max_size=200), st.just(""), st.just("x" * 100_000), st.just("\ud800"), st.integers(),
                 st.none()),
       st.one_of(st.none(), st.dictionaries(st.text(max_size=8), st.one_of(json_leaf, st.lists(json_leaf, max_size=3),
                                                                          st.dictionaries(st.text(max_size=4),
                                                                                          json_leaf, max_size=2)),
                                            max_size=3), st.sampled_from([[], "k=1", 5])),
       st.one_of(st.integers(-2, 50), st.none(), st.just(1.5)))
def test_query_and_filter_fuzz(fidx, query, filters, k):
    try:
        hits = fidx.search(query, k=k, filters=filters)
    except ALLOWED:
        return
    assert len(hits) <= k
    assert all(isinstance(h.score, float) for h in hits)


def _pipeline_mutations():
    keys = ["encoder", "chunking", "dense", "sparse", "bm25", "colbert", "fusion", "rerank", "milvus"]
    vals = st.one_of(json_leaf, st.lists(json_leaf, max_size=2), st.dictionaries(st.text(max_size=6), json_leaf,
                                                                                  max_size=2))
    return st.tuples(st.sampled_from(keys + ["name", "bogus"]), st.text(max_size=12), vals)


@FUZZ
@given(st.lists(_pipeline_mutations(), max_size=3))
def test_pipeline_dict_fuzz(mutations):
    data = json.loads(json.dumps(PIPELINE))
    for section, key, value in mutations:
        if section in ("name", "bogus"):
            data[section] = value
        elif key:
            data.setdefault(section, {})
            if isinstance(data[section], dict):
                data[section][key] = value
        else:
            data[section] = value
    try:
        cfg = PipelineConfig.from_dict(data)
    except ConfigError as e:
        assert str(e)
        return
    assert PipelineConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("text, key", [
    ('name = "x"\n[encoder]\nkind = "none"\nbogus_key = 1\n', "bogus_key"),
    ('[chunking]\nmax_tokens = "many"\n', "max_tokens"),
    ('[unknown_section]\na = 1\n', "unknown_section"),
    ('[bm25]\nk1 = [1, 2]\n', "k1"),
    ('[chunking]\nmax_document_bytes = -5\n', "max_document_bytes"),
])
def test_bad_toml_names_the_key(tmp_path, text, key):
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=key):
        PipelineConfig.from_toml(f)
    f.write_text("this is = = not toml")
    with pytest.raises(ConfigError):
        PipelineConfig.from_toml(f)


def test_document_size_and_chunk_limits(tmp_path):
    p = json.loads(json.dumps(PIPELINE))
    p["chunking"].update(max_document_bytes=1000, max_chunks_per_document=3)
    idx = HybridIndex.create(tmp_path / "i", p)
    idx.add([{"id": "old", "text": "short words here", "metadata": {}}])
    from hybridrag import DocumentError

    with pytest.raises(DocumentError, match="max_document_bytes"):
        idx.add([{"id": "big", "text": "é" * 501, "metadata": {}}])  # 1002 bytes
    idx.add([{"id": "edge", "text": "a " * 25, "metadata": {}}])  # 50 bytes: fine
    with pytest.raises(DocumentError, match="max_chunks_per_document"):
        idx.upsert([{"id": "old", "text": " ".join(f"w{i}" for i in range(150)), "metadata": {}}])
    # the failed upsert left the old version in place (it used to be tombstoned first)
    idx.add([{"id": "later", "text": "later words", "metadata": {}}])
    assert {h.doc_id for h in idx.search("short words", k=10)} >= {"old"}
    assert idx.docstore.count_documents() == 3
    idx.close()
    assert check_index(tmp_path / "i") == []
    defaults = PipelineConfig()
    assert defaults.chunking.max_document_bytes == 10_000_000 and defaults.chunking.max_chunks_per_document == 10_000
    assert defaults.chunking.max_metadata_bytes == 65_536


def test_metadata_over_its_limit_is_refused_not_copied_into_every_chunk(tmp_path, capsys):
    """A document's metadata is stored with each of its chunks: 1 MB of it on a 451-chunk
    document made a 438 MB index from a 2 MB input. Over ``chunking.max_metadata_bytes`` the
    document is refused (skipped and reported by ingest), the others written."""
    from hybridrag import DocumentError
    from hybridrag.cli import main

    p = json.loads(json.dumps(PIPELINE))
    p["chunking"].update(max_metadata_bytes=2000)
    idx = HybridIndex.create(tmp_path / "i", p)
    with pytest.raises(DocumentError, match=r"metadata of document 'big' is 2\d\d\d bytes as JSON, over "
                                            r"chunking.max_metadata_bytes = 2000"):
        idx.add([{"id": "big", "text": "some words", "metadata": {"blob": "é" * 1000}}])
    res = idx.add([{"id": "big", "text": "some words", "metadata": {"blob": "y" * 5000}},
                   {"id": "ok", "text": "other words", "metadata": {"blob": "y" * 1900}}], errors="skip")
    assert res.added == ["ok"] and [f[1] for f in res.failed] == ["big"]
    idx.close()
    with pytest.raises(ConfigError, match="max_metadata_bytes"):
        PipelineConfig.from_dict({**p, "chunking": {"max_metadata_bytes": 0}})
    src = tmp_path / "src"
    src.mkdir()
    (src / "r.jsonl").write_text(json.dumps({"id": "huge", "text": "words", "metadata": {"b": "y" * 70_000}}) + "\n"
                                 + json.dumps({"id": "fine", "text": "words", "metadata": {"b": "y"}}) + "\n")
    _write_bm25_toml(tmp_path / "p.toml")
    assert main(["ingest", str(src), "--index", str(tmp_path / "cli"), "--pipeline", str(tmp_path / "p.toml"),
                 "-q"]) == 0
    out = capsys.readouterr().out
    assert "ingested 1 document(s)" in out and "refused by the index" in out and "max_metadata_bytes = 65536" in out


def _peak_rss_kib(args: list[str]) -> int:
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    return int(out.stdout.strip().splitlines()[-1])


def test_large_jsonl_is_streamed_by_ingest(tmp_path):
    mb = int(os.environ.get("HYBRIDRAG_STREAM_MB", "40"))
    toml = tmp_path / "bm25.toml"
    toml.write_text('name = "stream"\n[encoder]\nkind = "none"\n[dense]\nenabled = false\n[sparse]\nenabled = false\n'
                    '[colbert]\nenabled = false\n[bm25]\nenabled = true\n[fusion]\nweights = { bm25 = 1.0 }\n')
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet ".split()
    big = tmp_path / "big.jsonl"
    line_text = " ".join(words[i % 10] for i in range(400))
    with open(big, "w") as f:
        i = 0
        while f.tell() < mb * 1024 * 1024:
            f.write(json.dumps({"id": f"r{i}", "text": f"rec{i} {line_text}"}) + "\n")
            i += 1
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps({"id": f"r{j}", "text": f"rec{j} {line_text}"}) + "\n" for j in range(50)))
    cli = [sys.executable, "-m", "hybridrag.cli", "ingest", "-q", "--pipeline", str(toml), "--commit-every", "5000"]
    base = _peak_rss_kib(cli + [str(small), "--index", str(tmp_path / "small_idx")])
    peak = _peak_rss_kib(cli + [str(big), "--index", str(tmp_path / "big_idx")])
    size_kib = big.stat().st_size // 1024
    growth = peak - base
    print(f"streamed {size_kib} KiB: peak RSS {peak} KiB, baseline {base} KiB, growth {growth} KiB")
    assert growth < size_kib / 2, (growth, size_kib)
    idx = HybridIndex.load(tmp_path / "big_idx")
    assert idx.docstore.count_documents() == i
    assert [h.doc_id for h in idx.search(f"rec{i - 1}", k=1)] == [f"r{i - 1}"]
    idx.close()


@pytest.mark.parametrize("meta", [[], "", 0, "meta", [("k", 1)]])
def test_non_mapping_metadata_is_an_error_not_dropped(fidx, meta):
    # found by test_documents_fuzz: metadata [] used to be stored silently as {}
    before = (fidx.docstore.checksum(), fidx.docstore.count())
    with pytest.raises(DocumentError, match="metadata must be a dict"):
        fidx.add([{"id": "m", "text": "some text", "metadata": meta}])
    assert (fidx.docstore.checksum(), fidx.docstore.count()) == before


def _write_bm25_toml(path):
    path.write_text('name = "b"\n[encoder]\nkind = "none"\n[dense]\nenabled = false\n[sparse]\nenabled = false\n'
                    '[colbert]\nenabled = false\n[bm25]\nenabled = true\n[fusion]\nweights = { bm25 = 1.0 }\n')
