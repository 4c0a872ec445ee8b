"""``hybridrag serve`` (hybridrag/server/, hybridrag/client.py): the HTTP contract against a real
uvicorn server on 127.0.0.1 (a free port, started per test module, stopped after), over an
offline-pipeline-like index (BM25 + a tiny dense model): results equal the library's, bad
requests get 4xx with the library's messages, limits, API key, writes, hot reload while
another process commits, dynamic batching, /metrics, the connectors' ``url`` option.
Every request loop is bounded in count and in time."""
from __future__ import annotations

import asyncio
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import _concurrency_worker as cwk  # noqa: E402
from _ranking import assert_same_ranking  # noqa: E402
from test_index import QUERIES, docs  # noqa: E402

from hybridrag.index import HybridIndex  # noqa: E402

import uvicorn  # noqa: E402  (a test dependency: its absence must fail, not skip)

from hybridrag.client import RemoteError, RemoteIndex  # noqa: E402
from hybridrag.server import build  # noqa: E402
from hybridrag.server.config import BatchConfig, Limits  # noqa: E402

KEY = "s3cret-key"
BM25_ONLY = {
    "name": "serve-bm25", "encoder": {"kind": "none"},
    "dense": {"enabled": False}, "sparse": {"enabled": False}, "colbert": {"enabled": False},
    "bm25": {"enabled": True, "depth": 50}, "fusion": {"method": "weighted", "weights": {"bm25": 1.0}},
}


def offline_like(bert_dir: Path) -> dict:
    """pipelines/offline.toml's shape (BM25 with stemming + a dense model, relative fusion), tiny model."""
    return {
        "name": "tiny-offline",
        "encoder": {"kind": "dense", "model": str(bert_dir), "max_length": 128, "query_max_length": 64},
        "chunking": {"max_tokens": 100, "overlap": 10},
        "dense": {"enabled": True, "depth": 100}, "sparse": {"enabled": False}, "colbert": {"enabled": False},
        "bm25": {"enabled": True, "stemmer": "english", "depth": 100},
        "fusion": {"method": "relative", "weights": {"dense": 0.5, "bm25": 0.5}},
    }


class Server:
    """uvicorn serving ``app`` on 127.0.0.1:<free port> in a thread."""

    def __init__(self, app) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


def call(url: str, method: str = "GET", path: str = "/", body=None, raw: bytes | None = None,
         headers: dict | None = None) -> tuple[int, object, dict]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, text, hdrs = r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        status, text, hdrs = e.code, e.read().decode(), dict(e.headers)
    try:
        return status, json.loads(text), hdrs
    except json.JSONDecodeError:
        return status, text, hdrs


@pytest.fixture(scope="module")
def index_path(tmp_path_factory, bert_dir) -> Path:
    path = tmp_path_factory.mktemp("serve") / "idx"
    idx = HybridIndex.create(path, offline_like(bert_dir))
    idx.add(docs(24))
    idx.close()
    return path


@pytest.fixture(scope="module")
def local(index_path):
    idx = HybridIndex.load(index_path)
    yield idx
    idx.close()


@pytest.fixture(scope="module")
def server(index_path):
    app, _ = build(index_path, api_key="", limits=Limits(max_k=50, max_queries=8, max_body_bytes=20_000))
    s = Server(app)
    yield s
    s.stop()


def search(url, **body):
    status, out, _ = call(url, "POST", "/search", body)
    assert status == 200, out
    return out


def pairs(hits):
    return [(h["chunk_id"], h["score"]) for h in hits]


# ---------------------------------------------------------------------------------- contract
def test_search_equals_the_library(server, local):
    options = [{}, {"filters": {"group": "even"}}, {"modes": ["bm25"]}, {"fusion": "rrf"},
               {"weights": {"dense": 0.9, "bm25": 0.1}}, {"depth": {"bm25": 5, "dense": 7}}]
    for opt in options:
        for q in QUERIES:
            out = search(server.url, query=q, k=5, explain=True, **opt)
            want = local.search(q, k=5, **opt)
            # one request alone is a batch of one: the same call as the library's, the same floats
            assert [(h["chunk_id"], h["score"], h["scores"], h["ranks"]) for h in out["hits"]] == \
                [(h.chunk_id, h.score, h.scores, h.ranks) for h in want], opt
            assert out["generation"] == local.generation
        out = search(server.url, queries=QUERIES, k=4, **opt)
        want = local.search_batch(QUERIES, k=4, **opt)
        assert [pairs(r) for r in out["results"]] == [[(h.chunk_id, h.score) for h in w] for w in want]
    # without explain a hit has no per-mode scores; text, metadata and span are the library's
    h = search(server.url, query="vitamin D", k=1)["hits"][0]
    w = local.search("vitamin D", k=1)[0].to_dict()
    assert "scores" not in h and "ranks" not in h
    assert {k: h[k] for k in ("chunk_id", "doc_id", "text", "metadata", "span")} == \
        {k: w[k] for k in ("chunk_id", "doc_id", "text", "metadata", "span")}


@pytest.mark.parametrize("body, status, message", [
    ({"query": "x", "k": 0}, 400, "k must be a positive integer, got 0"),
    ({"query": "x", "k": 51}, 400, "k=51 exceeds this server's limit of 50 (--max-k)"),
    ({"query": "x", "modes": ["colbert"]}, 400, "mode(s) ['colbert'] are not enabled in this index"),
    ({"query": "x", "depth": 0}, 400, "must be a positive integer, got 0"),
    ({"query": "x", "depth": 20000}, 400, "exceeds this server's limit of 10000 (--max-depth)"),
    ({"query": "x", "weights": {"bm25": 1.0}}, 400, "no fusion weight for mode(s) ['dense']"),
    ({"query": "x", "filters": {"n": {"$regex": "a"}}}, 400, "$regex"),
    ({"query": "   "}, 400, "the query is empty"),
    ({"queries": []}, 400, "no query given"),
    ({"query": "x", "queries": ["y"]}, 400, "pass exactly one of 'query'"),
    ({}, 400, "pass exactly one of 'query'"),
    ({"queries": ["q"] * 9}, 400, "9 queries in one request; this server's limit is 8 (--max-queries)"),
    ({"query": "x", "kk": 3}, 422, "kk: Extra inputs are not permitted"),
    ({"query": "x", "k": "10"}, 422, "k: Input should be a valid integer"),
    ({"query": 5}, 422, "query: Input should be a valid string"),
    ({"query": "x", "fusion": "max"}, 422, "fusion: Input should be 'weighted', 'relative', 'rrf', 'adaptive' or 'coverage'"),
])
def test_bad_search_requests_get_4xx_with_the_message(server, body, status, message):
    got, out, _ = call(server.url, "POST", "/search", body)
    assert got == status, out
    assert message in out["detail"], out


def test_a_query_longer_than_the_limit_is_refused_naming_the_flag():
    from hybridrag.server.engine import check_search

    check_search(["x" * 10], 10, {}, Limits(max_query_chars=10))
    with pytest.raises(ValueError, match=r"a query of 11 characters; this server's limit is 10 \(--max-query-chars\)"):
        check_search(["short", "x" * 11], 10, {}, Limits(max_query_chars=10))
    assert Limits().max_query_chars == 65536


def test_a_body_sent_without_the_json_content_type_says_so(server):
    """``curl -d`` sends a form: every request got "body: Input should be a valid dictionary"."""
    status, body, _ = call(server.url, "POST", "/search", raw=b'{"query": "vitamin"}',
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 422 and "Content-Type: application/json" in body["detail"]
    assert "application/x-www-form-urlencoded" in body["detail"] and body["error"] == "ValidationError"
    # the framework's own errors have the API's error shape too (they had no "error")
    assert call(server.url, "GET", "/nope")[:2] == (404, {"detail": "Not Found", "error": "NotFound"})
    assert call(server.url, "GET", "/search")[1]["error"] == "MethodNotAllowed"
    status, body, _ = call(server.url, "POST", "/search", raw=b'{"query": "\xff\xfe"}')
    assert status == 400 and body["error"] == "BadRequest"


def test_malformed_bodies_never_get_a_500(server):
    cases = [b"{", b"null", b"[]", b'"text"', b"\xff\xfe", b'{"query": "x", "k": 1e999}',
             b'{"queries": [null]}', b'{"query": "x", "filters": []}', b'{"query": "x", "depth": {"bm25": -1}}',
             b'{"query": "x", "weights": {"dense": "a"}}', b'{"query": "x", "filters": {"$and": 3}}']
    for raw in cases:
        status, out, _ = call(server.url, "POST", "/search", raw=raw)
        assert 400 <= status < 500, (raw, status, out)
        assert isinstance(out, dict) and out["detail"], (raw, out)
    # a lone surrogate in a query is the library's clear error (naming the query), not a crash
    status, out, _ = call(server.url, "POST", "/search", raw=b'{"query": "\\ud800 vitamin"}')
    assert status == 400 and "lone surrogate" in out["detail"], out
    status, out, _ = call(server.url, "POST", "/search", raw=json.dumps({"query": "x" * 30_000}).encode())
    assert status == 413 and "limit of 20000 bytes (--max-body-bytes)" in out["detail"]
    status, out, _ = call(server.url, "GET", "/nowhere")
    assert status == 404


def test_writes_are_refused_by_a_read_only_server(server):
    for path, body in [("/upsert", {"documents": [{"id": "n", "text": "t"}]}), ("/delete", {"ids": ["d1"]}),
                       ("/commit", {})]:
        status, out, _ = call(server.url, "POST", path, body)
        assert status == 403 and "read-only; start it with --writable" in out["detail"], out


def test_stats_and_health(server, local):
    status, st, _ = call(server.url, "GET", "/stats")
    assert status == 200 and st["generation"] == local.generation and st["chunks"] == len(local)
    assert st["writable"] is False and st["limits"]["max_k"] == 50
    assert call(server.url, "GET", "/health")[1] == {"status": "ok", "generation": local.generation}
    status, spec, _ = call(server.url, "GET", "/openapi.json")   # FastAPI's OpenAPI (the /docs page)
    assert status == 200 and {"/search", "/upsert", "/metrics"} <= set(spec["paths"])
    assert call(server.url, "GET", "/docs")[0] == 200


def parse_prometheus(text: str) -> dict[str, dict[tuple, float]]:
    """A strict reader of the text exposition format: every line is HELP, TYPE or a sample of a
    declared family; returns {sample name: {sorted label pairs: value}}."""
    sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? '
                        r'(\S+)$')
    types: dict[str, str] = {}
    out: dict[str, dict[tuple, float]] = {}
    assert text.endswith("\n")
    for line in text.rstrip("\n").split("\n"):
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram") and name not in types
            types[name] = kind
            continue
        m = sample.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        base = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert base in types, f"sample {name} of no declared family"
        pairs_ = tuple(sorted(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', labels)))
        out.setdefault(name, {})[pairs_] = float(value)
    # histograms: buckets cumulative and ending in +Inf == _count
    for name, kind in types.items():
        if kind != "histogram":
            continue
        series: dict[tuple, list[tuple[float, float]]] = {}
        for lab, v in out.get(name + "_bucket", {}).items():
            le = dict(lab)["le"]
            rest = tuple(p for p in lab if p[0] != "le")
            series.setdefault(rest, []).append((math.inf if le == "+Inf" else float(le), v))
        for rest, buckets in series.items():
            buckets.sort()
            counts = [c for _, c in buckets]
            assert counts == sorted(counts) and buckets[-1][0] == math.inf
            assert out[name + "_count"][rest] == counts[-1]
    return out


def test_metrics_parse_as_prometheus_text(server, local):
    before = parse_prometheus(call(server.url, "GET", "/metrics")[1])
    for q in QUERIES[:3]:
        search(server.url, query=q, k=2)
    call(server.url, "POST", "/search", {"query": "x", "k": 0})
    after = parse_prometheus(call(server.url, "GET", "/metrics")[1])
    req = "hybridrag_requests_total"

    def n(m, status):
        return m.get(req, {}).get((("endpoint", "/search"), ("status", status)), 0)

    assert n(after, "200") - n(before, "200") == 3 and n(after, "400") - n(before, "400") == 1
    lat = after["hybridrag_request_duration_seconds_count"][(("endpoint", "/search"),)]
    assert lat >= n(after, "200") + n(after, "400")
    assert after["hybridrag_index_generation"][()] == local.generation
    assert after["hybridrag_queue_depth"][()] == 0
    assert after["hybridrag_search_batch_queries_count"][()] >= 3


def test_api_key(index_path, monkeypatch):
    monkeypatch.setenv("HYBRIDRAG_API_KEY", KEY)   # taken from the environment when not passed
    app, _ = build(index_path)
    s = Server(app)
    try:
        body = {"query": "vitamin", "k": 1}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": KEY[:-1]}, {"Authorization": KEY}):
            status, out, hdrs = call(s.url, "POST", "/search", body, headers=headers)
            assert status == 401 and "API key" in out["detail"] and hdrs.get("www-authenticate") == "Bearer"
        assert call(s.url, "GET", "/metrics")[0] == 401
        assert call(s.url, "POST", "/search", body, headers={"Authorization": f"Bearer {KEY}"})[0] == 200
        assert call(s.url, "POST", "/search", body, headers={"X-API-Key": KEY})[0] == 200
        assert call(s.url, "GET", "/health")[0] == 200   # probes need no key
        assert RemoteIndex(s.url).search("vitamin", k=1)   # the client reads the same variable
        with pytest.raises(RemoteError, match="HTTP 401"):
            RemoteIndex(s.url, api_key="nope").search("vitamin", k=1)
    finally:
        s.stop()


# ---------------------------------------------------------------------------------- client and connectors
def test_remote_index_equals_the_library_and_raises_its_errors(server, local):
    remote = RemoteIndex(server.url)
    for q in QUERIES:
        assert [h.to_dict() for h in remote.search(q, k=3, filters={"group": "odd"})] == \
            [h.to_dict() for h in local.search(q, k=3, filters={"group": "odd"})]
    got = remote.search_batch(QUERIES, k=3, fusion="rrf")
    want = local.search_batch(QUERIES, k=3, fusion="rrf")
    assert [[h.to_dict() for h in r] for r in got] == [[h.to_dict() for h in r] for r in want]
    assert remote.generation == local.generation
    # why hits are missing travels too (SearchResults.notes), and adaptive fusion's weights
    for q, kw in (("?!", {}), ("vitamin", {"filters": {"colour": "red"}}), ("vitamin", {"fusion": "adaptive"})):
        got, want = remote.search(q, k=3, **kw), local.search(q, k=3, **kw)
        assert got.notes == want.notes and [h.to_dict() for h in got] == [h.to_dict() for h in want]
    assert any(remote.search("?!", k=3).notes) and remote.search("vitamin", fusion="adaptive")[0].weights
    assert [r.notes for r in remote.search_batch(["?!", "vitamin"], k=3)] == \
        [r.notes for r in local.search_batch(["?!", "vitamin"], k=3)]
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        remote.search("x", k=0)
    with pytest.raises(ValueError, match="unknown fusion|fusion: Input should be"):
        remote.search("x", fusion="max")
    with pytest.raises(RemoteError, match="read-only"):
        remote.upsert([{"id": "x", "text": "y"}])
    with pytest.raises(ValueError, match="url must be"):
        RemoteIndex("127.0.0.1:8000")


def test_connectors_point_at_a_server(server, local):
    from langchain_hybridrag import HybridRAGRetriever as LCRetriever
    from llama_index.retrievers.hybridrag import HybridRAGRetriever as LIRetriever

    remote = LIRetriever(url=server.url, similarity_top_k=4, filters={"group": "even"})
    here = LIRetriever(local, similarity_top_k=4, filters={"group": "even"})
    remote_lc = LCRetriever(url=server.url, k=3, search_kwargs={"fusion": "rrf"})
    here_lc = LCRetriever(index=local, k=3, search_kwargs={"fusion": "rrf"})
    for q in QUERIES:
        got, want = remote.retrieve(q), here.retrieve(q)
        assert [(n.node.node_id, n.score, n.node.metadata) for n in got] == \
            [(n.node.node_id, n.score, n.node.metadata) for n in want]
        got_lc, want_lc = remote_lc.invoke(q), here_lc.invoke(q)
        assert [(d.id, d.metadata) for d in got_lc] == [(d.id, d.metadata) for d in want_lc]
    with pytest.raises(ValueError, match="not both"):
        LIRetriever(local, url=server.url)


# ---------------------------------------------------------------------------------- batching
def test_concurrent_requests_are_batched_into_search_batch_with_the_same_results(index_path, local):
    """In-process engine: requests queued together run as one search_batch call per
    option group, answer as single calls do, and one bad request fails alone."""
    from hybridrag.server.engine import Engine

    engine = Engine(index_path, batching=BatchConfig(wait_ms=50, max_batch=64))
    calls: list[int] = []
    real = HybridIndex.search_batch

    def spy(self, queries, *a, **kw):
        calls.append(len(queries))
        if "boom" in queries:   # a failure inside one call of a group
            raise ValueError("boom")
        return real(self, queries, *a, **kw)

    async def main():
        await engine.start()
        try:
            reqs = [engine.search([q], k=3) for q in QUERIES] + \
                   [engine.search([q], k=3, modes=["bm25"]) for q in QUERIES] + \
                   [engine.search(["vitamin"], k=3, filters={"n": {"$regex": 1}}), engine.search(["boom"], k=3)]
            return await asyncio.gather(*reqs, return_exceptions=True)
        finally:
            await engine.stop()

    HybridIndex.search_batch = spy
    try:
        out = asyncio.run(main())
    finally:
        HybridIndex.search_batch = real
    n = len(QUERIES)
    # one call per option group: the bad filter's alone; the default group (with "boom") fails
    # as a whole and is retried request by request, so only "boom" fails
    assert sorted(calls) == sorted([n + 1, n, 1] + [1] * (n + 1))
    assert isinstance(out[-2], ValueError) and "$regex" in str(out[-2])
    assert isinstance(out[-1], ValueError) and str(out[-1]) == "boom"
    for i, q in enumerate(QUERIES):
        for res, opts in ((out[i], {}), (out[n + i], {"modes": ["bm25"]})):
            want = local.search(q, k=3, **opts)
            # a batch pads queries to one length: encoder outputs move in the last float bits
            assert_same_ranking([(h.chunk_id, h.score) for h in res.hits[0]], [(h.chunk_id, h.score) for h in want],
                                tol=1e-5)


def test_a_full_queue_answers_overloaded_naming_the_flag(index_path):
    from hybridrag.server.engine import Engine, Overloaded, SearchResult

    engine = Engine(index_path, limits=Limits(max_queue=2))

    async def main():
        await engine.start()
        try:   # the three are queued before the batcher runs: the third finds the queue full
            return await asyncio.gather(*(engine.search([q], k=1) for q in QUERIES[:3]), return_exceptions=True)
        finally:
            await engine.stop()

    out = asyncio.run(main())
    assert isinstance(out[0], SearchResult) and isinstance(out[1], SearchResult)
    assert isinstance(out[2], Overloaded) and "(limit 2, --max-queue)" in str(out[2])

    fresh = Engine(index_path, limits=Limits(max_queue=2))

    async def too_many():   # a request the queue can never hold: bad input, not a 503 to retry forever
        await fresh.start()
        try:
            return await fresh.search(QUERIES[:3], k=1)
        finally:
            await fresh.stop()

    with pytest.raises(ValueError, match="3 queries in one request; this server queues at most 2"):
        asyncio.run(too_many())


def test_many_clients_at_once_get_the_library_results(server, local):
    want = {q: [(h.chunk_id, h.score) for h in local.search(q, k=5)] for q in QUERIES}
    errors: list[BaseException] = []

    def client(j: int) -> None:
        remote = RemoteIndex(server.url)
        try:
            for i in range(10):
                q = QUERIES[(i + j) % len(QUERIES)]
                assert_same_ranking([(h.chunk_id, h.score) for h in remote.search(q, k=5)], want[q], tol=1e-5)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(j,)) for j in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, repr(errors[0])


# ---------------------------------------------------------------------------------- writes and reload
def test_writable_server_writes_and_serves_its_own_commit(tmp_path):
    path = tmp_path / "idx"
    HybridIndex.create(path, BM25_ONLY).close()
    app, _ = build(path, writable=True, reload_interval_ms=60_000)   # the commit itself reloads
    s = Server(app)
    try:
        r = RemoteIndex(s.url)

        def groups() -> set[int]:
            return {h.metadata["group"] for h in r.search("common", k=50)}

        out = r.upsert(cwk.group_docs(0))
        assert out["added"] == [f"g0d{i}" for i in range(cwk.GROUP_SIZE)] and out["generation"] == 2
        assert groups() == {0} and len(r.search("common", k=50)) == cwk.GROUP_SIZE
        r.upsert(cwk.group_docs(1), commit=False)   # staged: not visible until /commit
        assert groups() == {0}
        assert r.commit() == 3 and groups() == {0, 1}
        assert r.delete(filters={"group": 0}) == cwk.GROUP_SIZE and groups() == {1}
        # the lock is released after each commit: another writer may write in between
        other = HybridIndex.load(path)
        other.upsert(cwk.group_docs(7))
        other.close()
        with pytest.raises(ValueError, match="needs 'id' and 'text'"):
            r.add([{"id": "x"}])
        with pytest.raises(ValueError, match="delete\\(\\) needs ids or filters"):
            r.delete()
        with pytest.raises(ValueError, match="would match every document"):   # it deleted them all
            r.delete(filters={})
        # a stored text with a lone surrogate (kept as given) is served as its JSON escape; every
        # search that would return it answered 400 UnicodeEncodeError before
        r.upsert([{"id": "sur", "text": "okapi \ud800 lone"}])
        status, body, _ = call(s.url, "POST", "/search", {"query": "okapi", "k": 1})
        assert status == 200 and body["hits"][0]["text"] == "okapi \ud800 lone"
        r.delete(["sur"])
        r.upsert(cwk.group_docs(8))
        assert cwk.check_view(HybridIndex.load(path)) == 3
        assert groups() == {1, 7, 8}
    finally:
        s.stop()


def test_a_swap_never_closes_the_generation_a_running_batch_reads(tmp_path):
    """A commit lands and the server swaps generations while a batch is inside search_batch:
    that batch finishes on its own (old) generation; the next one reads the new one."""
    from hybridrag.server.engine import Engine

    path = tmp_path / "idx"
    writer = HybridIndex.create(path, BM25_ONLY)
    writer.add(cwk.group_docs(0))
    engine = Engine(path, reload_interval_ms=60_000)   # no polling: the swap happens below only
    real = HybridIndex.search_batch
    swapped: list[int] = []

    async def main():
        loop = asyncio.get_running_loop()

        def spy(self, queries, *a, **kw):
            if not swapped:   # on the search thread, mid-batch: commit, then wait for the swap
                writer.add(cwk.group_docs(1))
                swapped.append(asyncio.run_coroutine_threadsafe(engine.reload(), loop).result(timeout=60))
            return real(self, queries, *a, **kw)

        HybridIndex.search_batch = spy
        await engine.start()
        try:
            return await engine.search(["common"], k=50), await engine.search(["common"], k=50)
        finally:
            await engine.stop()

    try:
        first, second = asyncio.run(main())
    finally:
        HybridIndex.search_batch = real
        writer.close()
    assert swapped == [3]
    assert first.generation == 2 and {h.metadata["group"] for h in first.hits[0]} == {0}
    assert second.generation == 3 and {h.metadata["group"] for h in second.hits[0]} == {0, 1}


def test_an_unreadable_manifest_keeps_the_served_generation_and_reloads_later(tmp_path):
    path = tmp_path / "idx"
    writer = HybridIndex.create(path, BM25_ONLY)
    writer.add(cwk.group_docs(0))
    app, engine = build(path, reload_interval_ms=20)
    s = Server(app)
    try:
        good = (path / "manifest.json").read_text()
        (path / "manifest.json").write_text("{ not json")
        deadline = time.monotonic() + 30
        while engine.metrics.reloads.values.get(("error",), 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.metrics.reloads.values.get(("error",), 0) >= 1
        remote = RemoteIndex(s.url)
        assert len(remote.search("common", k=50)) == cwk.GROUP_SIZE and remote.generation == 2
        (path / "manifest.json").write_text(good)
        writer.add(cwk.group_docs(1))   # generation 3: the poller is still at work
        while engine.generation != 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(remote.search("common", k=50)) == 2 * cwk.GROUP_SIZE and remote.generation == 3
        # a new version of the pipeline is a commit too: served once reloaded
        assert remote.stats()["pipeline_version"] == 1
        assert writer.add_pipeline_version({"fusion.method": "rrf", "fusion.rrf_k": 5}) == 2
        while engine.generation != 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        st = remote.stats()
        assert st["pipeline_version"] == 2 and st["generation"] == 4
        hit = remote.search("common", k=1)[0]
        assert hit.score == pytest.approx(1 / (5 + 1))   # rrf with k 5: the first hit scores 1/6
    finally:
        s.stop()
        writer.close()


def test_hot_reload_while_another_process_commits(tmp_path):
    """A writer process commits group after group (deleting older groups whole); clients
    search all along: no request fails, every answer holds whole groups only (one
    committed generation), generations never go back, and the last commit gets served."""
    path = tmp_path / "idx"
    HybridIndex.create(path, BM25_ONLY).close()
    app, engine = build(path, reload_interval_ms=20)
    s = Server(app)
    done = tmp_path / "done"
    groups = 15
    writer = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_concurrency_worker.py")), "writer",
                               str(path), str(groups), str(done)],
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    errors: list[BaseException] = []
    seen: list[int] = []

    def client() -> None:
        remote = RemoteIndex(s.url)
        last = 0
        deadline = time.monotonic() + 120
        try:
            for _ in range(5000):
                finished = done.exists()
                hits = remote.search("common", k=1000)
                g = remote.generation
                assert g >= last, f"generation went back from {last} to {g}"
                last = g
                per: dict[int, int] = {}
                for h in hits:
                    per[h.metadata["group"]] = per.get(h.metadata["group"], 0) + 1
                assert all(c == cwk.GROUP_SIZE for c in per.values()), f"torn view at generation {g}: {per}"
                seen.append(g)
                if finished or time.monotonic() > deadline:
                    return
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=150)
        out = writer.communicate(timeout=150)[0].decode()
        assert writer.returncode == 0, out[-3000:]
        assert not errors, repr(errors[0])
        final = HybridIndex.load(path)
        deadline = time.monotonic() + 30
        while engine.generation != final.generation and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.generation == final.generation
        got = RemoteIndex(s.url).search("common", k=1000)
        assert sorted(h.chunk_id for h in got) == sorted(h.chunk_id for h in final.search("common", k=1000))
        assert len({h.metadata["group"] for h in got}) == groups - groups // 3
        final.close()
        assert len(set(seen)) >= 2, sorted(set(seen))   # the clients saw the index move
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.communicate()
        s.stop()


# ---------------------------------------------------------------------------------- packaging
def test_import_hint_without_fastapi(monkeypatch, index_path, capsys):
    from hybridrag import cli

    for name in list(sys.modules):
        if name == "hybridrag.server.app":
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fastapi", None)   # import fastapi -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'hybridrag\[serve\]'"):
        build(index_path)
    assert cli.main(["serve", str(index_path)]) == 2
    assert "pip install 'hybridrag[serve]'" in capsys.readouterr().err


def test_serve_command_defaults_and_bad_limits(index_path, capsys):
    from hybridrag import cli

    args = cli.build_parser().parse_args(["serve", str(index_path)])
    assert (args.host, args.port, args.writable, args.api_key) == ("127.0.0.1", 8000, False, None)
    assert cli.build_parser().parse_args(["serve", "x", "--writable"]).writable is True

    assert cli.main(["serve", str(index_path), "--max-k", "0"]) == 2
    assert "--max-k must be a positive integer, got 0" in capsys.readouterr().err
    assert cli.main(["serve", str(index_path), "--max-batch", "0"]) == 2
    assert "max_batch must be >= 1, got 0" in capsys.readouterr().err
    assert cli.main(["serve", str(index_path / "nope")]) == 2
    assert "no index at" in capsys.readouterr().err
    assert cli.main(["serve", str(index_path), "--api-key", " "]) == 2   # "$KEY" of an unset variable
    assert "--api-key is empty" in capsys.readouterr().err


def test_serve_logs_the_engines_warnings_to_stderr(tmp_path, capsys):
    """A generation the server could not load was logged to the library's NullHandler only: a
    server that stopped taking commits said nothing. ``serve`` logs to stderr at --log-level."""
    import logging

    from hybridrag.server.app import log_to_stderr

    handler = log_to_stderr("warning")
    try:
        logging.getLogger("hybridrag.server.engine").warning("could not load the new generation of %s", "X")
        logging.getLogger("hybridrag.server.engine").info("not at warning level")
        err = capsys.readouterr().err
        assert "hybridrag WARNING could not load the new generation of X" in err and "not at warning" not in err
    finally:
        logging.getLogger("hybridrag").removeHandler(handler)
        logging.getLogger("hybridrag").setLevel(logging.NOTSET)


def test_the_models_are_loaded_before_the_server_answers(tmp_path, index_path, bert_dir, monkeypatch):
    """A server is healthy when it can answer: its models load (and export, with runtime onnx)
    at start, so a model that cannot load stops the start instead of failing every request;
    a model the server cannot load at a request is its fault (500), not the client's."""
    from hybridrag.errors import ConfigError
    from hybridrag.server.engine import Engine

    engine = Engine(index_path)
    try:
        assert engine.current._encoder is not None
    finally:
        engine.current.close()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # hybridrag[onnx] not installed
    with pytest.raises(ConfigError, match="hybridrag\\[onnx\\]"):
        Engine(index_path, runtime="onnx")
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = {**offline_like(bert_dir), "rerank": {"enabled": False, "model": str(tmp_path / "no-such-reranker")}}
    path = tmp_path / "rr"
    idx = HybridIndex.create(path, pipe)
    idx.add(docs(3))
    idx.close()
    app, _ = build(path, api_key="")
    s = Server(app)
    try:
        status, out, _ = call(s.url, "POST", "/search", {"query": "fox", "rerank": True})
        assert status == 500 and out["error"] == "ModelLoadError", out
        assert search(s.url, query="fox")["hits"]   # the rest of the server goes on
    finally:
        s.stop()
