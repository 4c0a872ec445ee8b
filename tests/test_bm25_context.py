"""BM25 rows of chunks with their neighbours' terms (``[bm25] context`` / ``context_weight``,
issue 26 item 4): scores against bm25s and against the formula written out, context never
crossing documents, the chunk holding a term ahead of its neighbours, rebuild and upsert,
the settings' checks."""
from __future__ import annotations

import math

import numpy as np
import pytest

from hybridrag import HybridIndex
from hybridrag.cli import main
from hybridrag.encoders.bm25 import with_context
from hybridrag.errors import ConfigError

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango").split()


def _pipeline(**bm25):
    return {"name": "ctx", "encoder": {"kind": "none"}, "dense": {"enabled": False}, "sparse": {"enabled": False},
            "colbert": {"enabled": False}, "chunking": {"max_tokens": 8, "overlap": 0},
            "bm25": {"enabled": True, "analyzer": "word", **bm25}, "fusion": {"weights": {"bm25": 1.0}}}


def _docs(n=12, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = [WORDS[j] for j in rng.integers(0, len(WORDS), size=int(rng.integers(3, 30)))]
        out.append({"id": f"d{i}", "text": " ".join(words) + f" only{i}"})
    return out


def _rows(idx):
    """Live chunk rows in slot order, with their analysed tokens."""
    rows = idx.docstore.get(idx.docstore.live_slots())
    for r, toks in zip(rows, idx.bm25.analyzer.tokenize([r["text"] for r in rows])):
        r["tokens"] = toks
    return rows


def _context_counts(rows, context, weight):
    """Each chunk's term -> count with its neighbours' (same document, reading order), by hand."""
    out = []
    for i, r in enumerate(rows):
        c: dict[str, float] = {}
        for j, s in enumerate(rows):
            if s["doc_id"] == r["doc_id"] and abs(s["ordinal"] - r["ordinal"]) <= context:
                for t in s["tokens"]:
                    c[t] = c.get(t, 0.0) + (1.0 if j == i else weight)
        out.append(c)
    return out


def _scores(idx, query):
    return {h.chunk_id: h.scores["bm25"] for h in idx.search(query, k=len(idx))}


@pytest.mark.parity
def test_context_of_weight_one_equals_bm25s_over_each_chunk_with_its_neighbours(tmp_path):
    import bm25s

    idx = HybridIndex.create(tmp_path / "i", _pipeline(context=1, context_weight=1.0))
    try:
        idx.add(_docs())
        rows = _rows(idx)
        assert max(r["ordinal"] for r in rows) >= 2   # documents of three chunks and more
        # bm25s over each chunk's tokens followed by its neighbours' (same document only)
        joined = []
        for r in rows:
            near = [s for s in rows if s["doc_id"] == r["doc_id"] and abs(s["ordinal"] - r["ordinal"]) <= 1]
            joined.append([t for s in near for t in s["tokens"]])
        vocab = {t: i for i, t in enumerate(sorted({t for toks in joined for t in toks}))}
        ref = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
        ref.index(bm25s.tokenization.Tokenized(ids=[[vocab[t] for t in toks] for toks in joined],
                                               vocab={str(i): i for i in vocab.values()}), show_progress=False)
        for query in ("alpha", "golf tango", "only3", "only0 only1 kilo", "papa papa romeo"):
            want = ref.get_scores([vocab[t] for t in idx.bm25.analyzer.tokenize([query])[0] if t in vocab])
            got = _scores(idx, query)
            assert got, query
            for r, w in zip(rows, want):
                assert got.get(r["chunk_id"], 0.0) == pytest.approx(w, rel=1e-5, abs=1e-6), (query, r["chunk_id"])
    finally:
        idx.close()


def test_a_neighbour_counts_its_weight_and_context_never_crosses_documents(tmp_path):
    idx = HybridIndex.create(tmp_path / "i", _pipeline(context=1, context_weight=0.5))
    try:
        idx.add(_docs() + [{"id": "p", "text": " ".join(f"p{i}" for i in range(40))}])   # 5 chunks of 8 words
        rows = _rows(idx)
        counts = _context_counts(rows, 1, 0.5)
        n, avgdl = len(rows), sum(sum(c.values()) for c in counts) / len(rows)
        for query in ("only4", "bravo", "only7 hotel"):
            terms = idx.bm25.analyzer.tokenize([query])[0]
            got = _scores(idx, query)
            for r, c in zip(rows, counts):   # Lucene's BM25 (k1 1.5, b 0.75) over the weighted counts
                dl, want = sum(c.values()), 0.0
                for t in terms:
                    df = sum(t in x for x in counts)
                    if t in c:
                        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                        want += idf * c[t] / (c[t] + 1.5 * (1 - 0.75 + 0.75 * dl / avgdl))
                assert got.get(r["chunk_id"], 0.0) == pytest.approx(want, rel=1e-5, abs=1e-6), (query, r["chunk_id"])
        # a word of one chunk: that chunk first, then its neighbours in the same document, nothing else
        mine = [r for r in rows if r["doc_id"] == "p"]
        middle = mine[2]
        assert len(mine) == 5 and "p20" in middle["tokens"]
        hits = idx.search("p20", k=n)
        assert hits[0].chunk_id == middle["chunk_id"]
        assert {h.chunk_id for h in hits[1:]} == {r["chunk_id"] for r in mine
                                                  if abs(r["ordinal"] - middle["ordinal"]) == 1}
        # the last chunk of one document and the first of the next sit at adjacent slots
        last = [r for r in rows if r["doc_id"] == "d3"][-1]
        first = next(r for r in rows if r["slot"] == last["slot"] + 1)
        assert first["doc_id"] != "d3"
        assert first["chunk_id"] not in {h.chunk_id for h in idx.search("only3", k=n)}
    finally:
        idx.close()


def test_rebuild_upsert_and_delete_keep_each_documents_context(tmp_path):
    pipe = _pipeline(context=2, context_weight=0.75)
    docs = _docs(10, seed=1)
    idx = HybridIndex.create(tmp_path / "i", pipe)
    try:
        idx.add(docs)
        changed = dict(docs[4], text=docs[4]["text"].replace(" ", " quebec ", 3))
        idx.upsert([changed])
        idx.delete(["d6"])
        final = [changed if d["id"] == "d4" else d for d in docs if d["id"] != "d6"]
        queries = ["quebec", "only4 alpha", "only5 sierra", "mike only7"]
        before = {q: _scores(idx, q) for q in queries}
    finally:
        idx.close()
    # an index made from the final documents at once scores every chunk the same
    fresh = HybridIndex.create(tmp_path / "f", pipe)
    try:
        fresh.add(final)
        for q in queries:
            got = _scores(fresh, q)
            assert got.keys() == before[q].keys()
            for cid, s in got.items():
                assert s == pytest.approx(before[q][cid], rel=1e-6), (q, cid)
    finally:
        fresh.close()
    # rebuild re-encodes in blocks of whole documents (a block of 3 chunks would split them)
    rebuilt = HybridIndex.rebuild(tmp_path / "i", batch_size=3)
    try:
        for q in queries:
            assert _scores(rebuilt, q) == before[q]
    finally:
        rebuilt.close()


def test_with_context_checks_and_keeps_rows_without_context():
    rows = [{1: 2.0}, {1: 1.0, 2: 1.0}, {3: 1.0}]
    assert with_context(rows, ["a", "a", "b"], 0, 0.5) == rows
    assert with_context(rows, ["a", "a", "b"], 1, 0.5) == [{1: 2.5, 2: 0.5}, {1: 2.0, 2: 1.0}, {3: 1.0}]
    assert rows == [{1: 2.0}, {1: 1.0, 2: 1.0}, {3: 1.0}]   # the input rows are not changed
    with pytest.raises(ValueError, match="2 document ids for 3 rows"):
        with_context(rows, ["a", "a"], 1, 0.5)


@pytest.mark.parametrize("bm25, match", [
    ({"context": -1}, "bm25.context = -1"),
    ({"context": 17}, "bm25.context = 17"),
    ({"context": True}, "bm25.context"),
    ({"context_weight": 0}, "bm25.context_weight = 0"),
    ({"context_weight": 1.5}, "bm25.context_weight = 1.5"),
    ({"context_weight": float("nan")}, "bm25.context_weight = nan"),
])
def test_bad_context_settings_are_named(tmp_path, bm25, match):
    with pytest.raises(ConfigError, match=match):
        HybridIndex.create(tmp_path / "i", _pipeline(**bm25))
    assert not (tmp_path / "i" / "manifest.json").exists()


def test_milvus_bm25_needs_whole_counts_and_ingest_refuses_another_context(tmp_path, capsys):
    pipe = _pipeline(context=1, context_weight=0.75, backend="milvus")
    pipe["milvus"] = {"enabled": True, "whole_index": True, "collection": "ctx"}
    with pytest.raises(ConfigError, match="bm25.context_weight = 0.75 with bm25.backend = 'milvus'"):
        HybridIndex.create(tmp_path / "m", pipe)
    local = HybridIndex.create(tmp_path / "l", _pipeline(context=1, context_weight=0.75))
    local.add(_docs(3))
    local.close()
    with pytest.raises(ConfigError, match="bm25.context_weight = 0.75 with bm25.backend = 'milvus'"):
        HybridIndex.migrate(tmp_path / "l", tmp_path / "m2", to="milvus", whole_index=True, collection="ctx")
    assert not (tmp_path / "m2").exists()
    HybridIndex.load(tmp_path / "l").close()   # the local index is untouched and still loads
    # an index keeps the context it was made with: ingest with another one is refused, naming it
    toml = tmp_path / "p.toml"
    toml.write_text('name = "ctx"\n[encoder]\nkind = "none"\n[dense]\nenabled = false\n[colbert]\nenabled = false\n'
                    '[sparse]\nenabled = false\n[chunking]\nmax_tokens = 8\noverlap = 0\n'
                    '[bm25]\nenabled = true\nanalyzer = "word"\ncontext = 1\n[fusion]\nweights = { bm25 = 1.0 }\n')
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("alpha bravo charlie delta echo foxtrot golf hotel india juliet", encoding="utf-8")
    assert main(["ingest", str(src), "--index", str(tmp_path / "x"), "--pipeline", str(toml), "-q"]) == 0
    other = tmp_path / "o.toml"
    other.write_text(toml.read_text().replace("context = 1", "context = 2"))
    assert main(["ingest", str(src), "--index", str(tmp_path / "x"), "--pipeline", str(other), "-q"]) != 0
    assert "bm25.context" in capsys.readouterr().err
