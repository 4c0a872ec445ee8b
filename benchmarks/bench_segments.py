"""Issue 23: the cost of a commit, of a load and of searching many segments, as an index grows.

    python benchmarks/bench_segments.py --quick --baseline-ref 5c1e3cc      # 10k and 100k
    python benchmarks/bench_segments.py --sizes 10000,100000,1000000 --baseline-ref 5c1e3cc \\
        --baseline-sizes 10000,100000

Everything goes through the public API (``HybridIndex.create/add/upsert/commit/load/search/
optimize``), one process per code version. Data: seeded synthetic documents, one chunk each
(``chunking.max_tokens`` far above a document's length): 30-80 words drawn Zipf(1.05) over a
``--vocab``-word vocabulary of made-up letter words. Pipeline: BM25 (word analyser) + dense
(FAISS Flat) with relative fusion 0.5/0.5, top-10, depth 100 each. The dense vectors come from
a fake encoder (no model is loaded): each text's vector is a function of a 64-bit hash of the
text, a unit vector near a fixed random 64-dim subspace of R^``--dim`` (as ``synth.py``), so
documents and queries are deterministic and cost microseconds. ``--dim`` defaults to 256 (not
a model's 384-1024) so that 1M chunks fit a small machine in reasonable time.

The index grows in batches of ``--batch`` documents (one ``add`` = one commit, the default
merge policy; merges run in the engine's background thread where it has one, so an add +
commit row excludes them, as tantivy's does). At each size N of ``--sizes`` (documents 0..N-1
are in the index), after waiting for a background merge still running (its time is a row):

* hybrid p50/p99 over ``--queries`` queries, one per call, on the grown index as it is (its
  segment count is reported);
* 1-document upsert + commit: ``--upserts`` times, each a different document (new text, so
  one row deleted and one added); median and max time; bytes that commit wrote: the sizes of
  the files that are new in the directory plus ``manifest.json``, and every byte the process
  passed to ``write`` meanwhile (``wchar`` of ``/proc/self/io``: SQLite's writes included);
* ``HybridIndex.load`` as a user calls it (each code version's default ``verify``): the first
  (cold-ish: the files were just written) and the median of ``--loads``; then the first search
  on the loaded index (work a load may leave to it);
* the same N documents written as exactly ``--segments`` equal commits with
  ``merge_policy=None`` (20 segments), then a copy of it merged into one by ``optimize()``
  (merge time reported); hybrid p50/p99 of both, loaded fresh, queries interleaved between the
  two (``common.paired_latencies``) so that load from other processes hits both alike. Where
  ``optimize()`` fails (stores without ``merge()`` yet) the row says so and the one-segment
  index is written instead as one commit of the N documents;
* bytes on disk of the grown index;
* BM25-only p50/p99 on the grown index (``search(q, k=10, modes=["bm25"])``), the row to compare
  with a peer that has only BM25.

Peer (``--peers tantivy``, the default when ``tantivy`` is importable; ``--peers none`` skips it;
``pip install 'hybridrag[bench]'``): tantivy, a Lucene-like engine with immutable segments, delete
bitsets and a background merge policy, in a worker process of its own, grown at each size N from
the same documents in the same ``--batch`` commits (schema: ``id`` raw tokenizer, stored; ``text``
its ``default`` tokenizer, which for these lowercase letter words gives the same tokens as the word
analyser (the worker checks it: a row), term frequencies without positions; ``writer(num_threads=1)``
so that one commit makes one segment; the default LogMergePolicy, merging in background threads).
Its rows, system "tantivy 0.27", under the engine's metric names where they measure the same:

* 1-document update + commit (``delete_documents_by_term`` on the id, ``add_document`` of the same
  new text as the engine's upsert, ``commit``, as a user calls it: background merges not waited
  for); bytes that commit wrote (new files + ``meta.json`` + ``.managed.json``; ``wchar``: both
  count merge files written meanwhile);
* ``tantivy.Index.open``: first and median of ``--loads``; the first search after it;
* BM25 p50/p99 as grown (``parse_query`` + top-10 with ``count=False`` + each hit's stored id,
  one query per call) and its segment count; segments after the upserts;
* the mean overlap of its top-10 ids with the engine's BM25-only top-10 on the first 20 queries
  (BM25 variants differ: k1 1.2 vs 1.5, quantised lengths; not expected to be 1);
* merge to one segment: n/a (tantivy-py 0.27 has no ``merge``); instead the time of
  ``garbage_collect_files()`` and of ``wait_merging_threads()`` after the upserts, with the
  segments and bytes on disk after it;
* growth (add + commit of a batch), bytes on disk as grown, peak RSS of its worker.

``--baseline-ref REF`` runs the same script on the code of git REF (``git archive`` into a temp
folder, this script and ``common.py`` copied beside it) and prints before (REF) and after (the
working tree) side by side; a format-1 engine has no segments, merge policy or ``optimize``:
those rows say "n/a" for it, and its one store is the comparison for the 1- and 20-segment
rows. ``--baseline-sizes`` separately, since the old engine rewrites every file at each commit.
Raw results (every sample) go to ``benchmarks/results/segments_<date>_<commit>.md``. On a shared
machine set ``OMP_WAIT_POLICY=PASSIVE`` (FAISS's OpenMP threads otherwise spin while waiting for a
core, and search times triple); the thread settings are recorded with the results.
Never part of the test suite.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import ROOT, Table, latencies, paired_latencies, peak_rss_mib, rss_mib  # noqa: E402

INTRINSIC = 64
# Thread settings recorded with the results: on a shared machine FAISS's OpenMP threads spin while
# waiting for cores (run with OMP_WAIT_POLICY=PASSIVE, or OMP_NUM_THREADS=1, there).
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
BLOCK = 1000   # documents are generated per block of this many, so any range is reproducible
OVERLAP_QUERIES = 20   # queries whose top-10 ids a peer and the engine's BM25 are compared on


# --------------------------------------------------------------------------- data
def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A 64-bit mixing function (uint64 in, uint64 out): cheap, seedable pseudo-random numbers."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _uniform(keys: np.ndarray, width: int, salt: int) -> np.ndarray:
    """float32 [len(keys), width] in [-sqrt(3), sqrt(3)) (unit variance), a function of the keys."""
    with np.errstate(over="ignore"):
        x = keys[:, None] * np.uint64(0x100000001B3) + np.arange(width, dtype=np.uint64)[None, :] \
            + np.uint64(salt) * np.uint64(0xD6E8FEB86659FD93)
    u = (_splitmix64(x) >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)
    return (u * 2 - 1) * np.float32(3 ** 0.5)


class FakeEncoder:
    """Stands in for a dense model: ``encode``/``encode_queries`` as ``DenseEncoder`` has them,
    no tokenizer (the chunker counts words), each text's vector a function of its hash."""

    tokenizer = None
    capacity = 1 << 20   # a position table far longer than any chunk here

    def __init__(self, dim: int, seed: int = 12345, noise: float = 0.05) -> None:
        self.dim = dim
        self.seed = seed
        self.noise = noise
        self.basis = np.random.default_rng(seed).standard_normal((INTRINSIC, dim)).astype(np.float32)

    def config(self) -> dict[str, Any]:
        return {"kind": "bench_segments.FakeEncoder", "dim": self.dim, "seed": self.seed}

    def vectors(self, texts: list[str]) -> np.ndarray:
        keys = np.array([int.from_bytes(hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                                        "little") for t in texts], dtype=np.uint64)
        x = _uniform(keys, INTRINSIC, 1) @ self.basis
        x += np.float32(self.noise * INTRINSIC ** 0.5) * _uniform(keys, self.dim, 2)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def encode(self, texts: Any, *, max_length: int | None = None, batch_size: int = 32, dense: bool = True,
               sparse: bool = False, colbert: bool = False) -> Any:
        from hybridrag.encoders.base import EncodeOutput

        if sparse or colbert:
            raise ValueError("FakeEncoder gives dense vectors only")
        texts = [texts] if isinstance(texts, str) else list(texts)
        return EncodeOutput(dense=self.vectors(texts) if dense else None)

    encode_queries = encode


class Corpus:
    """Seeded documents: ``doc(i)`` and any range are the same at every call and in every process."""

    def __init__(self, vocab: int, seed: int, a: float = 1.05) -> None:
        self.seed = seed
        p = np.arange(1, vocab + 1, dtype=np.float64) ** -a
        self.cdf = np.cumsum(p) / p.sum()
        syl = [c + v for c in "bcdfghjklmnprstvz" for v in "aeiou"]
        # word of rank r: its base-85 digits as syllables, at least two (no two-letter stopword-like words)
        words = []
        for r in range(vocab):
            s, x = [], r
            while True:
                s.append(syl[x % len(syl)])
                x //= len(syl)
                if x == 0 and len(s) >= 2:
                    break
            words.append("".join(s))
        self.words = np.array(words, dtype=object)
        self._block_cache: dict[int, list[str]] = {}

    def _texts(self, rng: np.random.Generator, n: int) -> list[str]:
        lengths = rng.integers(30, 81, size=n)
        ids = np.searchsorted(self.cdf, rng.random(int(lengths.sum())))
        ids = np.minimum(ids, len(self.words) - 1)
        w = self.words[ids]
        out, at = [], 0
        for n_words in lengths.tolist():
            out.append(" ".join(w[at:at + n_words]))
            at += n_words
        return out

    def _block(self, b: int) -> list[str]:
        if b not in self._block_cache:
            if len(self._block_cache) > 64:
                self._block_cache.clear()
            self._block_cache[b] = self._texts(np.random.default_rng([self.seed, b]), BLOCK)
        return self._block_cache[b]

    def docs(self, start: int, end: int) -> list[dict[str, Any]]:
        out = []
        for b in range(start // BLOCK, (end - 1) // BLOCK + 1):
            texts = self._block(b)
            lo, hi = max(start, b * BLOCK), min(end, (b + 1) * BLOCK)
            out += [{"id": f"d{i}", "text": texts[i - b * BLOCK], "metadata": {}} for i in range(lo, hi)]
        return out

    def changed(self, i: int, version: int) -> dict[str, Any]:
        """Document ``i`` with new text (its ``version``-th edit)."""
        return {"id": f"d{i}", "text": self._texts(np.random.default_rng([self.seed, 7, i, version]), 1)[0],
                "metadata": {}}

    def queries(self, n: int) -> list[str]:
        """``n`` queries of 2-4 words, drawn Zipf as the documents' words, without the 20 most
        frequent (every document has them: a query of them alone ranks by dense only)."""
        rng = np.random.default_rng([self.seed, 99])
        out = []
        for _ in range(n):
            ids = np.searchsorted(self.cdf, rng.uniform(self.cdf[19], 1.0, size=int(rng.integers(2, 5))))
            out.append(" ".join(self.words[np.minimum(ids, len(self.words) - 1)]))
        return out


def pipeline(dim: int) -> dict[str, Any]:
    return {
        "name": "bench-segments",
        "description": "BM25 (word analyser) + dense Flat from a fake encoder, relative fusion",
        "encoder": {"kind": "dense", "model": f"bench-segments/fake-encoder-{dim}d", "max_length": 4096,
                    "query_max_length": 512, "batch_size": 256},
        "chunking": {"max_tokens": 4000, "overlap": 0},
        "dense": {"enabled": True, "index": "Flat", "depth": 100},
        "sparse": {"enabled": False},
        "bm25": {"enabled": True, "analyzer": "word", "depth": 100},
        "colbert": {"enabled": False},
        "fusion": {"method": "relative", "weights": {"dense": 0.5, "bm25": 0.5}},
        "rerank": {"enabled": False},
    }


# --------------------------------------------------------------------------- measuring (worker)
def _wchar() -> int:
    try:
        with open("/proc/self/io") as fh:
            for line in fh:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def _listing(d: Path) -> dict[str, int]:
    return {f.name: f.stat().st_size for f in d.iterdir() if f.is_file()}


def _disk_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def _updates(args: argparse.Namespace, corpus: "Corpus", n: int, ci: int, directory: Path, update: Any,
             rewritten: tuple[str, ...]) -> dict[str, list]:
    """``--upserts`` one-document updates (``update(doc)`` commits), each of a different document
    with new text: the time of each, the bytes of the files it created plus the ``rewritten``
    ones (the manifest), and every byte the process wrote meanwhile (``wchar``)."""
    times, new_bytes, wbytes = [], [], []
    for j in range(args.upserts):
        doc = corpus.changed((j * 7919 + n // 3) % n, ci)
        before = _listing(directory)
        w0 = _wchar()
        t = time.perf_counter()
        update(doc)
        times.append(time.perf_counter() - t)
        w1 = _wchar()
        after = _listing(directory)
        new_bytes.append(sum(sz for f, sz in after.items() if f not in before)
                         + sum(after.get(f, 0) for f in rewritten))
        wbytes.append(w1 - w0 if w0 >= 0 else -1)
    return {"upsert_s": times, "upsert_new_file_bytes": new_bytes, "upsert_wchar": wbytes}


def _segments(idx: Any) -> int | None:
    segs = idx.stats().get("segments")
    return None if segs is None else len(segs)


def _why(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}"
    if "merge" in msg:
        return f"n/a (no merge yet: {msg[:160]})"
    return f"n/a ({msg[:200]})"


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import hybridrag
    from hybridrag import HybridIndex

    has_segments = hasattr(HybridIndex, "optimize")
    from hybridrag.stores.sparse import SparseIndex

    out: dict[str, Any] = {"hybridrag": str(Path(hybridrag.__file__).parent), "segments_engine": has_segments,
                           "stores_merge": hasattr(SparseIndex, "merge"),
                           "bm25_global_stats": hasattr(SparseIndex, "set_global_stats"),
                           "dim": args.dim, "checkpoints": {}}
    print(f"[worker] hybridrag from {out['hybridrag']}; segment engine: {has_segments}", file=sys.stderr, flush=True)
    enc = FakeEncoder(args.dim, seed=args.seed + 12345)
    corpus = Corpus(args.vocab, args.seed)
    queries = corpus.queries(args.queries)
    sizes = sorted(args.sizes)
    work = Path(tempfile.mkdtemp(prefix="bench-segments-", dir=args.dir))
    try:
        grown = work / "grown"
        g = HybridIndex.create(grown, pipeline(args.dim), encoder=enc)
        have, adds = 0, []
        for ci, n in enumerate(sizes):
            res: dict[str, Any] = {}
            t_grow = time.perf_counter()
            while have < n:
                step = min(args.batch, n - have)
                docs = corpus.docs(have, have + step)
                t = time.perf_counter()
                g.add(docs)
                adds.append(time.perf_counter() - t)
                have += step
            res["grow_s"] = time.perf_counter() - t_grow
            res["add_commit_s"] = adds[-max(1, min(len(adds), 10)):]
            res["add_commit_all_s"] = list(adds)
            if hasattr(g, "wait_for_merges"):   # merges in the background: searches measured without one running
                t = time.perf_counter()
                g.wait_for_merges()
                res["wait_merges_grown_s"] = time.perf_counter() - t
            res["segments_grown"] = _segments(g) if has_segments else None
            print(f"[worker] {n:,} chunks in {res['grow_s']:.1f} s; segments {res['segments_grown']}; "
                  f"RSS {rss_mib():,.0f} MiB", file=sys.stderr, flush=True)
            res["lat_grown"] = latencies(lambda i: g.search(queries[i], k=10), len(queries))
            # BM25 alone, as a peer that has only BM25 searches, and its top-10 for the overlap row
            try:
                res["lat_grown_bm25"] = latencies(lambda i: g.search(queries[i], k=10, modes=["bm25"]),
                                                  len(queries))
                res["top10_bm25"] = [[h.doc_id for h in g.search(q, k=10, modes=["bm25"])]
                                     for q in queries[:OVERLAP_QUERIES]]
            except Exception as e:   # noqa: BLE001 - an older engine without per-call modes
                res["lat_grown_bm25"] = f"n/a ({type(e).__name__}: {str(e)[:120]})"
            res["disk_bytes"] = _disk_bytes(grown)
            # 1-document upserts, each a different document, each committed
            res.update(_updates(args, corpus, n, ci, grown, lambda d: g.upsert([d]), ("manifest.json",)),
                       segments_after_upserts=_segments(g) if has_segments else None)
            # load, as a user calls it
            loads, first_q = [], []
            for _ in range(args.loads):
                t = time.perf_counter()
                r = HybridIndex.load(grown, encoder=enc)
                loads.append(time.perf_counter() - t)
                t = time.perf_counter()
                r.search(queries[0], k=10)
                first_q.append(time.perf_counter() - t)
                r.close()
            res.update(load_s=loads, first_search_s=first_q)
            # the same N documents as exactly --segments segments, and as one; the grown index is
            # closed meanwhile (its memory would add to theirs) and opened again to grow further
            g.close()
            if has_segments:
                res.update(_segment_counts(HybridIndex, enc, corpus, queries, n, work, args))
            else:
                res.update(_one_store(HybridIndex, enc, corpus, queries, n, work, args))
            g = HybridIndex.load(grown, encoder=enc)
            out["checkpoints"][str(n)] = res
            print(f"[worker] {n:,} done; peak RSS {peak_rss_mib():,.0f} MiB", file=sys.stderr, flush=True)
        g.close()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    out["peak_rss_mib"] = peak_rss_mib()
    out["env"] = {k: os.environ[k] for k in THREAD_ENV if k in os.environ}
    return out


def _build(HybridIndex: Any, enc: Any, corpus: Corpus, n: int, path: Path, commits: int,
           policy_off: bool, step: int = 10000) -> tuple[Any, list[float]]:
    """Documents 0..n-1 in ``commits`` equal commits (each added ``step`` documents at a time)."""
    idx = HybridIndex.create(path, pipeline(enc.dim), encoder=enc, overwrite=True)
    if policy_off:
        idx.merge_policy = None
    times = []
    bounds = np.linspace(0, n, commits + 1).round().astype(int)
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        t = time.perf_counter()
        for s in range(lo, hi, step):
            idx.add(corpus.docs(s, min(hi, s + step)), commit=False)
        idx.commit()
        times.append(time.perf_counter() - t)
    return idx, times


def _segment_counts(HybridIndex: Any, enc: Any, corpus: Corpus, queries: list[str], n: int, work: Path,
                    args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {}
    many, one = work / f"many-{n}", work / f"one-{n}"
    w, _ = _build(HybridIndex, enc, corpus, n, many, args.segments, policy_off=True, step=args.batch)
    res["segments_many"] = _segments(w)
    print(f"[worker] {n:,} chunks as {res['segments_many']} segments; RSS {rss_mib():,.0f} MiB", file=sys.stderr,
          flush=True)
    w.close()
    shutil.copytree(many, one)
    o = HybridIndex.load(one, encoder=enc)
    try:
        t = time.perf_counter()
        o.optimize()
        res["optimize_s"] = time.perf_counter() - t
        res["one_from"] = "optimize()"
    except Exception as e:   # noqa: BLE001 - reported in the table; stores without merge() yet
        res["optimize_s"] = _why(e)
        print(f"[worker] optimize failed: {e!r}\n{traceback.format_exc(limit=3)}", file=sys.stderr, flush=True)
        o.close()
        o, _ = _build(HybridIndex, enc, corpus, n, one, 1, policy_off=True, step=args.batch)
        res["one_from"] = "one commit of the N documents (optimize failed)"
    res["segments_one"] = _segments(o)
    print(f"[worker] {n:,} chunks as {res['segments_one']} segment(s); RSS {rss_mib():,.0f} MiB", file=sys.stderr,
          flush=True)
    o.close()
    rm, ro = HybridIndex.load(many, encoder=enc), HybridIndex.load(one, encoder=enc)
    lm, lo = paired_latencies([lambda i: rm.search(queries[i], k=10), lambda i: ro.search(queries[i], k=10)],
                              len(queries))
    res.update(lat_many=lm, lat_one=lo, same_top10=_same_top10(rm, ro, queries))
    rm.close()
    ro.close()
    shutil.rmtree(many, ignore_errors=True)
    shutil.rmtree(one, ignore_errors=True)
    return res


def _one_store(HybridIndex: Any, enc: Any, corpus: Corpus, queries: list[str], n: int, work: Path,
               args: argparse.Namespace) -> dict[str, Any]:
    """A format-1 engine: the N documents in one commit (one store per mode), for the 1- and
    20-segment rows' comparison."""
    one = work / f"one-{n}"
    o, _ = _build(HybridIndex, enc, corpus, n, one, 1, policy_off=False, step=args.batch)
    o.close()
    ro = HybridIndex.load(one, encoder=enc)
    res = {"lat_one": latencies(lambda i: ro.search(queries[i], k=10), len(queries))}
    ro.close()
    shutil.rmtree(one, ignore_errors=True)
    return res


def _same_top10(a: Any, b: Any, queries: list[str]) -> dict[str, float]:
    """Share of queries whose top-10 chunk ids (in order) are the same on both indexes, and the
    largest difference of a final score at the same rank."""
    same, diff = 0, 0.0
    for q in queries:
        ha, hb = a.search(q, k=10), b.search(q, k=10)
        same += [h.chunk_id for h in ha] == [h.chunk_id for h in hb]
        diff = max([diff] + [abs(x.score - y.score) for x, y in zip(ha, hb)])
    return {"same_ids": same / len(queries), "max_score_diff": diff}


# --------------------------------------------------------------------------- peer: tantivy (worker)
TANTIVY_HEAP = 128_000_000   # tantivy-py's default writer heap


def _tantivy_version() -> str:
    from importlib.metadata import version

    return version("tantivy")


def tantivy_worker(args: argparse.Namespace) -> dict[str, Any]:
    """The same documents, batches, upserts and queries in a tantivy index on disk (no hybridrag
    import: a process of its own). Schema: ``id`` raw and stored, ``text`` indexed with the
    ``default`` tokenizer, term frequencies without positions (BM25 needs no positions)."""
    import re

    import tantivy

    out: dict[str, Any] = {"system": f"tantivy {_tantivy_version()}", "checkpoints": {}}
    corpus = Corpus(args.vocab, args.seed)
    queries = corpus.queries(args.queries)
    # tantivy's "default" tokenizer splits on what is not alphanumeric, drops tokens longer than
    # 40 bytes and lowercases; the engine's word analyser (no stopwords, no stemmer) lowercases
    # and takes \w+ runs. For these lowercase letter words both give the same tokens: checked
    # here on the first documents and the queries, with the same chain built explicitly.
    analyser = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple()).filter(
        tantivy.Filter.remove_long(40)).filter(tantivy.Filter.lowercase()).build()
    sample = [d["text"] for d in corpus.docs(0, min(1000, min(args.sizes)))] + queries
    out["tokens_same"] = sum(analyser.analyze(t) == re.findall(r"\w+", t.lower()) for t in sample) / len(sample)
    print(f"[tantivy] {out['system']}; tokens as the word analyser's: {out['tokens_same']:.3f} of {len(sample)} "
          "texts", file=sys.stderr, flush=True)
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("id", stored=True, tokenizer_name="raw")
    sb.add_text_field("text", tokenizer_name="default", index_option="freq")
    schema = sb.build()

    def doc(d: dict[str, Any]) -> Any:
        return tantivy.Document(id=d["id"], text=d["text"])

    def search(index: Any, searcher: Any, q: str) -> list[str]:
        # count=False: the engine returns no total hit count either; the ids are what a caller uses
        hits = searcher.search(index.parse_query(q, ["text"]), 10, count=False).hits
        return [searcher.doc(a).get_first("id") for _, a in hits]

    work = Path(tempfile.mkdtemp(prefix="bench-segments-tantivy-", dir=args.dir))
    try:
        grown = work / "grown"
        grown.mkdir()
        index = tantivy.Index(schema, path=str(grown), reuse=False)
        have, adds = 0, []
        for ci, n in enumerate(sorted(args.sizes)):
            res: dict[str, Any] = {}
            # one indexing thread: one commit makes one segment, as the engine's; merges run in
            # tantivy's background threads (default LogMergePolicy). A new writer per checkpoint:
            # the last one was consumed by wait_merging_threads().
            w = index.writer(heap_size=TANTIVY_HEAP, num_threads=1)
            t_grow = time.perf_counter()
            while have < n:
                step = min(args.batch, n - have)
                docs = corpus.docs(have, have + step)
                t = time.perf_counter()
                for d in docs:
                    w.add_document(doc(d))
                w.commit()
                adds.append(time.perf_counter() - t)
                have += step
            res["grow_s"] = time.perf_counter() - t_grow
            res["add_commit_s"] = adds[-max(1, min(len(adds), 10)):]
            res["add_commit_all_s"] = list(adds)
            index.reload()
            s = index.searcher()
            res["segments_grown"] = s.num_segments
            print(f"[tantivy] {n:,} chunks in {res['grow_s']:.1f} s; segments {res['segments_grown']}; "
                  f"RSS {rss_mib():,.0f} MiB", file=sys.stderr, flush=True)
            res["lat_grown_bm25"] = latencies(lambda i: search(index, s, queries[i]), len(queries))
            res["top10_bm25"] = [search(index, s, q) for q in queries[:OVERLAP_QUERIES]]
            res["disk_bytes"] = _disk_bytes(grown)
            # 1-document updates, the engine's documents and texts: delete by id term, add, commit

            def update(d: dict[str, Any], writer: Any = w) -> None:
                writer.delete_documents_by_term("id", d["id"])
                writer.add_document(doc(d))
                writer.commit()

            # meta.json is tantivy's manifest; .managed.json (the files it manages) is rewritten too
            res.update(_updates(args, corpus, n, ci, grown, update, ("meta.json", ".managed.json")))
            index.reload()
            res["segments_after_upserts"] = index.searcher().num_segments
            # no merge() in tantivy-py: what there is, files collected and the background merges waited for
            t = time.perf_counter()
            w.garbage_collect_files()
            res["gc_s"] = time.perf_counter() - t
            t = time.perf_counter()
            w.wait_merging_threads()
            res["wait_merges_s"] = time.perf_counter() - t
            del w
            index.reload()
            res["segments_after_merges"] = index.searcher().num_segments
            res["disk_bytes_after_merges"] = _disk_bytes(grown)
            loads, first_q = [], []
            for _ in range(args.loads):
                t = time.perf_counter()
                r = tantivy.Index.open(str(grown))
                loads.append(time.perf_counter() - t)
                t = time.perf_counter()
                search(r, r.searcher(), queries[0])
                first_q.append(time.perf_counter() - t)
                del r
            res.update(load_s=loads, first_search_s=first_q)
            out["checkpoints"][str(n)] = res
            print(f"[tantivy] {n:,} done; peak RSS {peak_rss_mib():,.0f} MiB", file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def _overlap(a: list[list[str]], b: list[list[str]]) -> float:
    """Mean share of ``b``'s top-10 ids that ``a``'s top-10 has, over the queries both answered."""
    pairs = list(zip(a, b))
    return sum(len(set(x) & set(y)) / max(len(y), 1) for x, y in pairs) / max(len(pairs), 1)


def _peer_metrics(c: dict[str, Any] | None, engine: dict[str, Any] | None) -> dict[str, str]:
    """The table's values of one checkpoint of the tantivy worker, under the engine's metric
    names where it has an equivalent."""
    if c is None:
        return {}
    m = _update_metrics(c, " (new files + meta.json + .managed.json)")
    ld = c["load_s"]
    m["load: first / median of %d (ms)" % len(ld)] = f"{_ms(ld[0])} / {_ms(statistics.median(ld))} (Index.open)"
    m["first search after load (ms), median"] = _ms(statistics.median(c["first_search_s"]))
    m["BM25 p50 / p99 (ms), as grown"] = f"{_p(c['lat_grown_bm25'])} ({c['segments_grown']} segments)"
    if engine is not None and "top10_bm25" in engine:
        m["top-10 ids vs the engine's BM25-only top-10 (mean overlap, %d queries)" % len(c["top10_bm25"])] = \
            f"{_overlap(c['top10_bm25'], engine['top10_bm25']):.3f}"
    m["merge to one segment (s)"] = "n/a (tantivy-py 0.27 has no merge(); background LogMergePolicy only)"
    m["garbage_collect_files() after the upserts (s)"] = f"{c['gc_s']:.3f}"
    m["wait_merging_threads() after the upserts (s); segments, MiB on disk after"] = \
        f"{c['wait_merges_s']:.3f}; {c['segments_after_merges']}, {c['disk_bytes_after_merges'] / 2**20:,.1f}"
    m["segments after the upserts"] = str(c["segments_after_upserts"])
    return m | _growth_metrics(c)


# --------------------------------------------------------------------------- orchestration (parent)
def _git(*a: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *a], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _run_worker(code_root: Path, script: Path, sizes: list[int], args: argparse.Namespace, out_json: Path,
                peer: str = "") -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(code_root), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, str(script), "--worker", str(out_json), "--sizes", ",".join(map(str, sizes)),
           "--batch", str(args.batch), "--dim", str(args.dim), "--queries", str(args.queries),
           "--upserts", str(args.upserts), "--loads", str(args.loads), "--segments", str(args.segments),
           "--vocab", str(args.vocab), "--seed", str(args.seed)]
    if args.dir:
        cmd += ["--dir", args.dir]
    if args.keep:
        cmd.append("--keep")
    if peer:
        cmd += ["--peer-worker", peer]
    print(f"# {' '.join(cmd)}  (PYTHONPATH={code_root})", file=sys.stderr, flush=True)
    subprocess.run(cmd, env=env, cwd=code_root, check=True)
    return json.loads(out_json.read_text())


def _export(ref: str, dest: Path) -> Path:
    """The tree of git ``ref`` in ``dest``, with this script and common.py beside its benchmarks."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    (dest / "benchmarks").mkdir(exist_ok=True)
    for name in ("bench_segments.py", "common.py"):
        shutil.copy2(HERE / name, dest / "benchmarks" / name)
    return dest / "benchmarks" / "bench_segments.py"


def _ms(x: float) -> str:
    return f"{1000 * x:,.1f}"


def _kib(b: float) -> str:
    return f"{b / 1024:,.1f}"


def _p(d: Any) -> str:
    return d if isinstance(d, str) else f"{d['p50']:.2f} / {d['p99']:.2f}"


def _growth_metrics(c: dict[str, Any]) -> dict[str, str]:
    """The rows of the growth: add + commit of a batch, bytes on disk."""
    adds, every = c["add_commit_s"], c.get("add_commit_all_s") or c["add_commit_s"]
    m = {"growth: add + commit of a batch, median / max of the last %d (s)" % len(adds):
         f"{statistics.median(adds):.2f} / {max(adds):.2f}",
         "growth: add + commit of a batch, max of all %d (s)" % len(every): f"{max(every):.2f}"}
    if "wait_merges_grown_s" in c:
        m["growth: then waiting for the background merge running (s)"] = f"{c['wait_merges_grown_s']:.2f}"
    return m | {"bytes on disk (MiB)": f"{c['disk_bytes'] / 2**20:,.1f}"}


def _update_metrics(c: dict[str, Any], files_note: str = "") -> dict[str, str]:
    """The rows of the one-document updates (see :func:`_updates`)."""
    up = c["upsert_s"]
    return {
        "1-doc upsert + commit, median / max of %d (ms)" % len(up): f"{_ms(statistics.median(up))} / {_ms(max(up))}",
        "bytes written by that commit: new files + manifest, median (KiB)":
            _kib(statistics.median(c["upsert_new_file_bytes"])) + files_note,
        "bytes written by that commit: all write() calls, median (KiB)": _kib(statistics.median(c["upsert_wchar"])),
    }


def _metrics(c: dict[str, Any] | None, engine_segments: bool) -> dict[str, str]:
    """The table's values of one checkpoint of one worker (metric -> text)."""
    if c is None:
        return {}
    m = _update_metrics(c)
    ld = c["load_s"]
    m["load: first / median of %d (ms)" % len(ld)] = f"{_ms(ld[0])} / {_ms(statistics.median(ld))}"
    m["first search after load (ms), median"] = _ms(statistics.median(c["first_search_s"]))
    seg = c.get("segments_grown")
    m["hybrid p50 / p99 (ms), as grown"] = \
        f"{_p(c['lat_grown'])} ({'%d segments' % seg if seg is not None else 'one store'})"
    if "lat_grown_bm25" in c:
        m["BM25 p50 / p99 (ms), as grown"] = _p(c["lat_grown_bm25"])
    m["hybrid p50 / p99 (ms), 1 segment"] = _p(c["lat_one"]) + ("" if engine_segments else " (one store)")
    if engine_segments:
        m["hybrid p50 / p99 (ms), %s segments" % c["segments_many"]] = _p(c["lat_many"])
        m["hybrid p50, many segments / 1 segment"] = f"{c['lat_many']['p50'] / c['lat_one']['p50']:.3f}"
        m["same top-10 ids, many vs 1 segment (share of queries); max score difference"] = \
            f"{c['same_top10']['same_ids']:.3f}; {c['same_top10']['max_score_diff']:.2g}"
        o = c["optimize_s"]
        m["merge time: optimize() of %s segments (s)" % c["segments_many"]] = o if isinstance(o, str) else f"{o:.2f}"
        m["segments after the upserts"] = str(c["segments_after_upserts"])
    return m | _growth_metrics(c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="checkpoints (chunks), comma-separated")
    ap.add_argument("--quick", action="store_true", help="--sizes 10000,100000")
    ap.add_argument("--batch", type=int, default=10000, help="documents per add + commit while growing")
    ap.add_argument("--dim", type=int, default=256, help="dense dimensions (256 so that 1M fits a small machine)")
    ap.add_argument("--vocab", type=int, default=100_000, help="words in the synthetic vocabulary")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--upserts", type=int, default=10)
    ap.add_argument("--loads", type=int, default=3)
    ap.add_argument("--segments", type=int, default=20, help="segments of the many-segment index")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline-ref", default="", help="git ref of the 'before' code (e.g. 5c1e3cc)")
    ap.add_argument("--baseline-sizes", default="10000,100000", help="checkpoints of the baseline run")
    ap.add_argument("--dir", default=None, help="where the indexes are written (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the index folders")
    ap.add_argument("--note", default="", help="a line for the result file (e.g. machine busy)")
    ap.add_argument("--out", default="", help="result file (default benchmarks/results/segments_<date>_<commit>.md)")
    ap.add_argument("--peers", default="", help="'tantivy' or 'none' (default: tantivy when it is importable)")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    ap.add_argument("--peer-worker", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.sizes = "10000,100000"
    args.sizes = [int(s) for s in str(args.sizes).split(",") if s]
    if args.worker:
        Path(args.worker).write_text(json.dumps(tantivy_worker(args) if args.peer_worker == "tantivy" else worker(args)))
        return
    if not args.sizes or min(args.sizes) < args.segments:
        ap.error(f"--sizes must be >= --segments ({args.segments}), got {args.sizes}")
    has_tantivy = importlib.util.find_spec("tantivy") is not None
    if args.peers == "":
        args.peers = "tantivy" if has_tantivy else "none"
        if not has_tantivy:
            print("# tantivy is not installed (pip install 'hybridrag[bench]'): no peer", file=sys.stderr)
    if args.peers not in ("tantivy", "none"):
        ap.error(f"--peers must be 'tantivy' or 'none', got {args.peers!r}")
    if args.peers == "tantivy" and not has_tantivy:
        ap.error("--peers tantivy: tantivy is not installed; pip install 'hybridrag[bench]'")
    # "after" is named by the last commit of the engine (hybridrag/), plus "+changes" when the
    # working tree changes it
    head = _git("log", "-1", "--format=%h", "--", "hybridrag")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", "hybridrag"))
    after_name = head + ("+changes" if dirty else "")
    tmp = Path(tempfile.mkdtemp(prefix="bench-segments-run-", dir=args.dir))
    results: dict[str, Any] = {}
    try:
        results["after"] = _run_worker(ROOT, Path(__file__).resolve(), args.sizes, args, tmp / "after.json")
        if args.baseline_ref:
            ref = _git("rev-parse", "--short", args.baseline_ref)
            script = _export(ref, tmp / f"ref-{ref}")
            bsizes = [int(s) for s in args.baseline_sizes.split(",") if s]
            results["before"] = _run_worker(tmp / f"ref-{ref}", script, bsizes, args, tmp / "before.json")
        if args.peers == "tantivy":
            results["tantivy"] = _run_worker(ROOT, Path(__file__).resolve(), args.sizes, args, tmp / "tantivy.json",
                                             peer="tantivy")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    before_name = _git("rev-parse", "--short", args.baseline_ref) if args.baseline_ref else ""
    row = Table()
    a, b, tv = results["after"], results.get("before"), results.get("tantivy")
    tv_name = "tantivy " + ".".join(tv["system"].split()[1].split(".")[:2]) if tv else ""
    for n in args.sizes:
        ma = _metrics(a["checkpoints"].get(str(n)), a["segments_engine"])
        mb = _metrics(b["checkpoints"].get(str(n)), b["segments_engine"]) if b else {}
        system = f"{before_name} → {after_name}" if b else after_name
        for k, va in ma.items():
            if b is None:
                row(f"{n:,} chunks", system, k, va)
                continue
            # the format-1 store is the comparison for the 20-segment row
            key = k
            if key not in mb and key.startswith("hybrid p50 / p99 (ms),") and "segment" in key:
                key = "hybrid p50 / p99 (ms), 1 segment"
            vb = mb.get(key, "n/a (not run)" if not mb else "n/a (format 1)")
            row(f"{n:,} chunks", system, k, f"{vb} → {va}")
        if tv:
            for k, v in _peer_metrics(tv["checkpoints"].get(str(n)), a["checkpoints"].get(str(n))).items():
                row(f"{n:,} chunks", tv_name, k, v)
    rss = f"{b['peak_rss_mib']:,.0f} → {a['peak_rss_mib']:,.0f}" if b else f"{a['peak_rss_mib']:,.0f}"
    row("whole run", f"{before_name} → {after_name}" if b else after_name, "peak RSS of the worker (MiB)", rss)
    if tv:
        row("whole run", tv_name, "peak RSS of the worker (MiB)", f"{tv['peak_rss_mib']:,.0f}")
        row("whole run", tv_name, "texts whose tantivy tokens equal the word analyser's (share)",
            f"{tv['tokens_same']:.3f}")
    notes = [f"Dense vectors: {args.dim}-d from a fake encoder (a hash of the text; no model), so that 1M chunks "
             f"fit a small machine; BM25 word analyser; top-10, relative fusion; {args.queries} queries, one per call."]
    if b:
        notes.append(f"Before = {before_name}, after = {after_name} (working tree). For the format-1 engine the 1- "
                     "and 20-segment rows show its one store (the same N documents in one commit).")
    if a["segments_engine"] and not a["bm25_global_stats"]:
        notes.append("Note: this SparseIndex has no term_stats/set_global_stats yet, so each BM25 segment scores "
                     "with its own idf and average length: many-segment BM25 scores differ from one segment's.")
    if a["segments_engine"] and not a["stores_merge"]:
        notes.append("Note: the stores have no merge() yet: the engine skips automatic merges and optimize() "
                     "fails, so the grown index keeps every commit as a segment.")
    if tv:
        notes.append(f"Peer: {tv['system']} (a process of its own), the same documents, batches, upserts and queries; "
                     "schema: id (raw tokenizer, stored), text (default tokenizer: the same tokens as the word analyser "
                     "for these lowercase letter words; term frequencies, no positions); writer(num_threads=1, "
                     "128 MB heap): one commit = one segment; the default LogMergePolicy merges in background "
                     "threads, so its commit times exclude merges and its bytes rows count merge files that appeared "
                     "meanwhile. Its p50 is BM25 only (parse_query + top-10 with count=False + the stored id of each "
                     "hit; BM25 k1 1.2, b 0.75, quantised lengths; the engine's k1 1.5, b 0.75): compare it with the "
                     "engine's BM25 row, not the hybrid ones. No merge API in tantivy-py, so no 1- or 20-segment "
                     "rows; its bytes on disk: inverted index and ids only (the engine's: also texts and vectors).")
    env = ", ".join(f"{k}={v}" for k, v in a.get("env", {}).items()) or "none set"
    notes.append(f"Thread settings (environment): {env}.")
    print("\n" + "\n".join(notes))
    row.print()
    date = time.strftime("%Y-%m-%d")
    out = Path(args.out) if args.out else HERE / "results" / f"segments_{date}_{after_name.replace('+', '-')}.md"
    _write_result(out, args, row, results, before_name, after_name, notes)
    print(f"\nraw results: {out}", file=sys.stderr)


def _write_result(out: Path, args: argparse.Namespace, row: Table, results: dict[str, Any], before: str,
                  after: str, notes: list[str]) -> None:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        row.print()
    lines = [f"# Segments (issue 23): commit, load and search as the index grows; {after}"
             + (f" against {before}" if before else ""), ""]
    if args.note:
        lines += [args.note, ""]
    argv = [a for i, a in enumerate(sys.argv[1:]) if a != "--note" and (i == 0 or sys.argv[i] != "--note")]
    env = "".join(f"{k}={shlex.quote(os.environ[k])} " for k in THREAD_ENV if k in os.environ)
    lines += [f"`{env}python benchmarks/bench_segments.py {shlex.join(argv)}" + (" --note ...`" if args.note else "`"),
              "",
              *[x for note in notes for x in (note, "")], f"Growth in batches of {args.batch:,} documents (one add + commit each, default merge "
              "policy); relative fusion 0.5/0.5, depth 100.", "",
              buf.getvalue().strip(), "", "Raw samples (seconds; bytes):", "", "```json",
              json.dumps(results, indent=1), "```", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
