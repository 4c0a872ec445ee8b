"""SparseIndex as a per-segment store: global BM25 statistics across segments, merge, empty_like.

Segments of one corpus, each scored with the statistics summed over all of them and merged
with ``merge_topk``, must give one index's arrays bit for bit (ties by slot included), and
rank_bm25 / bm25s scores; ``SparseIndex.merge`` must keep every stored value."""
from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest

from hybridrag.analysis import WordAnalyzer
from hybridrag.encoders.bm25 import BM25Encoder
from hybridrag.stores.base import merge_topk
from hybridrag.stores.sparse import SparseIndex
from tests.test_bm25 import ENGLISH, QUERIES
from tests.test_sparse_store import random_rows

WEIGHTINGS = ["none", "bm25okapi", "bm25lucene"]


def summed_stats(parts: list[SparseIndex]) -> tuple[int, np.ndarray, float]:
    """The statistics of the parts' union: rows, df (zero-padded to the longest) and lengths summed."""
    stats = [p.term_stats() for p in parts]
    df = np.zeros(max(len(s[1]) for s in stats))
    for _, d, _ in stats:
        df[: len(d)] += d
    return sum(s[0] for s in stats), df, sum(s[2] for s in stats)


def segmented(weighting: str, docs: list[dict[int, float]], cuts: tuple[int, ...], gone: np.ndarray,
              **kw) -> list[SparseIndex]:
    """Segments of ``docs`` (slot = position) cut at ``cuts``, rows ``gone`` removed, the
    first segment in two tiers (a later add) to also cover the delta tier."""
    parts = []
    bounds = (0, *cuts, len(docs))
    for a, e in itertools.pairwise(bounds):
        p = SparseIndex(weighting, **kw)
        half = (a + e) // 2 if not parts else e
        p.add(np.arange(a, half), docs[a:half])
        p.search([{0: 1.0}], 1)   # merge the first rows into the main tier
        p.add(np.arange(half, e), docs[half:e])
        p.remove(gone)
        parts.append(p)
    return parts


def search_parts(parts: list[SparseIndex], qs, k: int, allowed=None) -> tuple[np.ndarray, np.ndarray]:
    return functools.reduce(lambda a, b: merge_topk(a, b, k), (p.search(qs, k, allowed=allowed) for p in parts))


def score_parts(parts: list[SparseIndex], qs, cands) -> list[np.ndarray]:
    per = [p.score(qs, cands) for p in parts]
    return [functools.reduce(np.maximum, [x[i] for x in per]) for i in range(len(qs))]


def corpus(seed: int, n: int = 900) -> tuple[list[dict[int, float]], list[dict[int, float]]]:
    docs = random_rows(n, seed, vocab=60, nnz=10, ints=True)
    for j in range(0, n, 50):   # exact duplicates across segments: ties broken by slot
        docs[n - 1 - j] = dict(docs[j])
    docs[5] = {}   # an empty row
    qs = random_rows(40, seed + 1, vocab=70, nnz=6, ints=True) + [{1: 1.0, 2: 1.0}, {69: 1.0}, {}]
    return docs, qs


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_segments_with_global_stats_equal_one_index(weighting):
    docs, qs = corpus(71)
    gone = np.r_[0:900:11, 7, 450]
    parts = segmented(weighting, docs, (300, 620), gone)
    whole = SparseIndex(weighting)
    whole.add(np.arange(900), docs)
    whole.remove(gone)
    stats = summed_stats(parts)
    own = whole.term_stats()
    assert stats[0] == own[0] == len(whole) and stats[2] == own[2]
    np.testing.assert_array_equal(stats[1][: len(own[1])], own[1])
    for p in parts:
        p.set_global_stats(stats)
    allowed = np.arange(900) % 4 != 1
    for k in (1, 7, 60):
        for mask in (None, allowed):
            got, want = search_parts(parts, qs, k, mask), whole.search(qs, k, allowed=mask)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
    s = want[0]
    assert np.any((s[:, :-1] == s[:, 1:]) & np.isfinite(s[:, 1:])), "no ties among the hits"
    cands = [np.r_[0:900, 5000]] * len(qs)   # every slot, removed ones and one never held
    for g, w in zip(score_parts(parts, qs, cands), whole.score(qs, cands)):
        np.testing.assert_array_equal(g, w)
    if weighting != "none":   # without the summed statistics each segment scores by its own
        for p in parts:
            p.set_global_stats(None)
        assert not np.array_equal(search_parts(parts, qs, 60)[0], whole.search(qs, 60)[0])


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_merge_equals_its_parts(weighting):
    docs, qs = corpus(81)
    gone = np.r_[3:900:13, 899]
    parts = segmented(weighting, docs, (250, 700), gone)
    parts[2].add(np.arange(2000, 2010), random_rows(10, 82, vocab=90, ints=True))   # pending, new terms
    stats = summed_stats(parts)
    for p in parts:
        p.set_global_stats(stats)
    before = [p.search(qs, 10) for p in parts]
    merged = SparseIndex.merge(parts)
    assert merged.config() == parts[0].config() and len(merged) == sum(len(p) for p in parts)
    assert merged._delta is None and not merged._pending and merged._alive.all()
    for p, b in zip(parts, before):   # the parts still answer as before
        np.testing.assert_array_equal(p.search(qs, 10)[1], b[1])
    # the stored values, bit for bit: the merged tier is the one a fresh index of the live rows builds
    live = np.setdiff1d(np.arange(900), gone)
    fresh = SparseIndex(weighting)
    fresh.add(np.r_[live, 2000:2010], [docs[j] for j in live] + random_rows(10, 82, vocab=90, ints=True))
    fresh._consolidate()
    for name in ("indptr", "indices", "values"):
        np.testing.assert_array_equal(getattr(merged._main, name), getattr(fresh._main, name))
    np.testing.assert_array_equal(merged._row_slots, fresh._row_slots[: len(fresh)])
    np.testing.assert_array_equal(merged._doclen, fresh._doclen[: len(fresh)])
    # own statistics of the merge = the summed ones: same results with or without them
    cands = [np.r_[0:900, 2000:2010, 7777]] * len(qs)
    for mstats in (None, stats):
        merged.set_global_stats(mstats)
        for k in (1, 10, 80):
            got, want = merged.search(qs, k), search_parts(parts, qs, k)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
        for g, w in zip(merged.score(qs, cands), score_parts(parts, qs, cands)):
            np.testing.assert_array_equal(g, w)
    # a merged index is an ordinary one: it takes adds and removes
    merged.remove(np.array([1, 2000]))
    merged.add(np.array([3000]), [{1: 2.0}])
    assert len(merged) == sum(len(p) for p in parts) - 2 + 1


def test_merge_rejects_bad_parts():
    a, b = SparseIndex("bm25okapi"), SparseIndex("bm25okapi", k1=1.2)
    a.add([0, 1], [{1: 1.0}, {2: 1.0}])
    b.add([1, 2], [{1: 1.0}, {2: 1.0}])
    with pytest.raises(ValueError, match="different settings"):
        SparseIndex.merge([a, b])
    c = a.empty_like()
    c.add([1], [{3: 1.0}])
    with pytest.raises(ValueError, match="share slots"):
        SparseIndex.merge([a, c])
    a.remove([1])   # slot 1 now live only in c
    assert len(SparseIndex.merge([a, c])) == 2
    with pytest.raises(ValueError, match="at least one"):
        SparseIndex.merge([])
    with pytest.raises(TypeError, match="SparseIndex"):
        SparseIndex.merge([a, object()])
    empty = SparseIndex.merge([a.empty_like(), a.empty_like()])
    assert len(empty) == 0 and empty.search([{1: 1.0}], 3)[1].tolist() == [[-1, -1, -1]]


def test_empty_like_keeps_settings_not_rows_or_stats():
    idx = SparseIndex("bm25lucene", k1=1.1, b=0.6, epsilon=0.3)
    idx.add([4, 5], [{1: 2.0}, {2: 1.0}])
    idx.set_global_stats((10, np.ones(3), 30.0))
    e = idx.empty_like()
    assert type(e) is SparseIndex and e.config() == idx.config() and len(e) == 0 and e._global is None
    e.add([6], [{1: 1.0}])
    assert len(idx) == 2 and len(e) == 1


def test_term_stats_count_live_rows():
    docs = random_rows(200, 91, vocab=30, ints=True)
    idx = SparseIndex("bm25okapi")
    idx.add(np.arange(200), docs)
    idx.search([{1: 1.0}], 1)
    gone = np.arange(0, 200, 3)
    idx.remove(gone)
    idx.add(np.arange(200, 210), docs[:10])   # pending adds count too
    live = [d for j, d in enumerate(docs) if j % 3] + docs[:10]
    n, df, total = idx.term_stats()
    assert n == len(live) and df.dtype == np.float64 and len(df) == idx.vocab_size
    np.testing.assert_array_equal(df, [sum(t in d for d in live) for t in range(len(df))])
    assert total == sum(sum(d.values()) for d in live)


@pytest.mark.parametrize("weighting", ["bm25okapi", "bm25lucene"])
def test_statistics_and_weights_follow_removes_one_at_a_time(weighting):
    """An upsert's commit removes a row or two from a large segment: the statistics are updated
    from the removed rows' postings (the compiled kernel) and the weights recomputed for the
    terms a query needs. Both must equal an index built from the live rows alone, after every
    remove, for terms searched before and after it."""
    docs = random_rows(3000, 93, vocab=40, nnz=12, ints=True)
    qs = random_rows(30, 94, vocab=40, nnz=3, ints=True)
    idx = SparseIndex(weighting)
    idx.add(np.arange(3000), docs)
    idx.search(qs[:5], 10)   # tiers built, the first queries' weights filled
    live = np.ones(3000, dtype=bool)
    # ... then a third of the rows (a recount; the tiers are compacted), then one row again
    removes = [[7], [2999], [0, 1500], [7], [1200], list(range(100, 130)), list(range(1, 3000, 3)), [1502], [2]]
    for step, gone in enumerate(removes):
        idx.remove(gone)
        live[gone] = False
        keep = np.flatnonzero(live)
        fresh = SparseIndex(weighting)
        fresh.add(keep, [docs[j] for j in keep])
        n, df, total = idx.term_stats()
        want = fresh.term_stats()
        assert n == want[0] and total == want[2]
        np.testing.assert_array_equal(df, want[1])
        for batch in (qs[:5], qs[5 + step:12 + step]):   # terms filled before the remove, and new ones
            got, exp = idx.search(batch, 20), fresh.search(batch, 20)
            np.testing.assert_array_equal(got[0], exp[0])
            np.testing.assert_array_equal(got[1], exp[1])
        cands = [np.arange(0, 3000, 7)] * 5
        for g, w in zip(idx.score(qs[:5], cands), fresh.score(qs[:5], cands)):
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("bad, err", [([1, np.ones(2), 1.0], TypeError), ((1, np.ones(2)), TypeError),
                                      ((-1, np.ones(2), 1.0), ValueError), ((True, np.ones(2), 1.0), ValueError),
                                      ((2, np.ones((2, 2)), 1.0), ValueError), ((2, [1.0, np.nan], 1.0), ValueError),
                                      ((2, [3.0], 1.0), ValueError), ((2, [-1.0], 1.0), ValueError),
                                      ((2, [1.0], float("inf")), ValueError), ((2, [1.0], -1.0), ValueError)])
def test_set_global_stats_rejects_bad_stats(bad, err):
    idx = SparseIndex("bm25okapi")
    with pytest.raises(err, match="stats"):
        idx.set_global_stats(bad)


def _segments_of_text(variant: str, texts: list[str], gone: list[int]) -> tuple[list[SparseIndex], BM25Encoder]:
    enc = BM25Encoder(WordAnalyzer(), variant=variant)
    enc.encode_documents(texts)   # the whole vocabulary first: term ids as one index would give
    parts = []
    for a, e in ((0, 7), (7, 15), (15, len(texts))):
        p = SparseIndex(**enc.store_config())
        p.add(np.arange(a, e), enc.encode_documents(texts[a:e]))
        p.remove(np.array(gone))
        parts.append(p)
    stats = summed_stats(parts)
    for p in parts:
        p.set_global_stats(stats)
    return parts, enc


TEXTS = [t for t in ENGLISH if t] + ENGLISH[::-1] + ["the cat sat", "vitamin d and the dog"]
GONE = [2, 8, 16]


@pytest.mark.parity
def test_segments_equal_rank_bm25():
    import rank_bm25

    an = WordAnalyzer()
    parts, enc = _segments_of_text("okapi", TEXTS, GONE)
    keep = [j for j in range(len(TEXTS)) if j not in GONE]
    ref = rank_bm25.BM25Okapi(an.tokenize([TEXTS[j] for j in keep]))
    qs = enc.encode_queries(QUERIES)
    got = score_parts(parts, qs, [np.arange(len(TEXTS))] * len(qs))
    for q, g, row_s, row_i in zip(an.tokenize(QUERIES), got, *search_parts(parts, qs, 6)):
        want = ref.get_scores(q)
        np.testing.assert_allclose(g[keep], want, rtol=1e-6, atol=1e-6)
        assert np.all(np.isneginf(g[GONE]))
        n = int((row_i >= 0).sum())
        np.testing.assert_allclose(row_s[:n], np.sort(want[want != 0])[::-1][:n], rtol=1e-6)


@pytest.mark.parity
def test_segments_equal_bm25s_lucene():
    import bm25s

    an = WordAnalyzer()
    parts, enc = _segments_of_text("lucene", TEXTS, GONE)
    keep = [j for j in range(len(TEXTS)) if j not in GONE]
    ids = [[enc.vocabulary[t] for t in doc] for doc in an.tokenize([TEXTS[j] for j in keep])]
    ref = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    ref.index(bm25s.tokenization.Tokenized(ids=ids, vocab={str(i): i for i in range(len(enc.vocabulary))}),
              show_progress=False)
    qs = enc.encode_queries(QUERIES)
    got = score_parts(parts, qs, [np.arange(len(TEXTS))] * len(qs))
    for q, g in zip(an.tokenize(QUERIES), got):
        qids = [enc.vocabulary[t] for t in q if t in enc.vocabulary]
        if qids:
            np.testing.assert_allclose(g[keep], ref.get_scores(qids), rtol=1e-5, atol=1e-6)
        else:
            assert not g[keep].any()


@pytest.mark.parametrize("weighting", ["none", "bm25lucene"])
def test_remove_after_load_touches_no_file(tmp_path, weighting):
    """The engine applies a segment's deletions with remove() right after load: the files stay
    as written (same bytes), the postings stay memory-mapped, and the results are those of an
    index that never held the removed rows."""
    import hashlib

    docs, qs = corpus(95, n=600)
    idx = SparseIndex(weighting)
    idx.add(np.arange(600), docs)
    files = idx.save(tmp_path, "s1")
    digest = {f: hashlib.sha256((tmp_path / f).read_bytes()).hexdigest() for f in files.values()}
    back = SparseIndex.load(tmp_path, files, idx.config())
    gone = np.r_[0:600:9, 5000]   # 5000: never held
    back.remove(gone)
    assert len(back) == 600 - len(range(0, 600, 9))
    want = SparseIndex(weighting)
    keep = np.setdiff1d(np.arange(600), gone)
    want.add(keep, [docs[j] for j in keep])
    for k in (3, 40):
        got, ref = back.search(qs, k), want.search(qs, k)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
    assert isinstance(back._main.indices, np.memmap) and isinstance(back._main.values, np.memmap)
    assert {f: hashlib.sha256((tmp_path / f).read_bytes()).hexdigest() for f in files.values()} == digest


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_queries_converted_once_for_every_segment(weighting):
    """A segmented store converts a batch of queries once (``queries_for``) and each segment
    takes the terms it knows: a segment that never saw a query's term answers as it does
    given the query itself (the older segments here know only terms below 20 and 40)."""
    parts = []
    for j, vocab in enumerate((20, 40, 70)):
        p = SparseIndex(weighting)
        p.add(np.arange(100 * j, 100 * j + 100), random_rows(100, 60 + j, vocab=vocab, nnz=6, ints=True))
        parts.append(p)
    parts[1].remove([105, 150])
    stats = summed_stats(parts)
    for p in parts:
        p.set_global_stats(stats)
    qs = random_rows(30, 70, vocab=70, nnz=4, ints=True) + [{65: 1.0}, {}, {3: 1.0, 69: 2.0}]
    shared = SparseIndex.queries_for(qs, parts)
    cands = [np.arange(0, 300, 3)] * len(qs)
    for p in parts:
        for got, want in zip(p.search(shared, 15), p.search(qs, 15)):
            np.testing.assert_array_equal(got, want)
        for got, want in zip(p.score(shared, cands), p.score(qs, cands)):
            np.testing.assert_array_equal(got, want)
    only_new = parts[2].search(shared, 15)[0][-3], parts[0].search(shared, 15)[0][-3]   # the query {65: 1.0}
    assert np.isfinite(only_new[0]).any() and not np.isfinite(only_new[1]).any()


def test_a_search_keeps_its_weights_when_the_statistics_change():
    """Another thread's search may change the statistics (a segmented store shares the index's
    statistics at search time, after a commit): the weights a search already holds stay as
    they were; the next search gets new ones, computed under the new statistics."""
    docs = random_rows(500, 97, vocab=30, nnz=8, ints=True)
    idx = SparseIndex("bm25lucene")
    idx.add(np.arange(500), docs)
    idx.search([{1: 1.0}], 1)
    q = idx._query_matrix([{1: 1.0, 2: 1.0}])
    held = idx._prepare(q.indices)
    before = [w.copy() for _, w, _ in held]
    n, df, total = idx.term_stats()
    idx.set_global_stats((n + 100, df + 7, total + 900.0))
    again = idx._prepare(q.indices)
    for (t, w, _), (t2, w2, _), old in zip(held, again, before):
        assert w is not w2
        np.testing.assert_array_equal(w, old)
        a, e = t.indptr[1], t.indptr[3]   # the postings of terms 1 and 2
        assert not np.array_equal(w2[a:e], old[a:e])
