"""The serving engine behind ``hybridrag serve``, free of any web framework: the loaded
index generation, hot reload, the dynamic batcher, and the writer.

* **Generations.** Searches read one loaded :class:`~hybridrag.index.HybridIndex` (one
  committed generation). A poller stats ``manifest.json`` every ``reload_interval_ms``;
  when it changed, the new generation is loaded in a thread (sharing the loaded models)
  and swapped in with one assignment. A batch takes the current generation once, so every
  request is answered entirely from one generation. The old one is closed on the search
  thread after the batches already queued there, never under a running batch. An open
  generation keeps working after a writer collects its files: the stores hold them
  memory-mapped or in memory (an unlinked file stays readable while mapped) and the
  docstore reads a pinned SQLite snapshot (``DocStore.pin``), as
  ``tests/test_concurrency.py`` checks for a reader held across many commits.
* **Batching.** Concurrent requests queue here; the batcher waits at most ``batch_wait_ms``
  after the first one, takes up to ``max_batch`` queries, groups requests with the same
  ``k``/filters/options and runs each group as one ``search_batch`` call on a single search
  thread (so the event loop never runs model work). A group whose call fails is retried
  request by request, so one bad request never fails the others.
* **Writer.** Writes run on their own thread with their own index object (and encoder: a
  tokenizer is not safe to share between threads). The writer lock is held only while
  writes are uncommitted; after a commit the new generation is loaded before the call
  returns, so a client sees its own write.

Covered by ``tests/test_serve.py``.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hybridrag.errors import HybridRAGError, IndexFormatError
from hybridrag.index import MANIFEST, HybridIndex, read_manifest
from hybridrag.search.execute import check_queries
from hybridrag.search.options import OVERRIDES, SearchOptions
from hybridrag.server.config import BatchConfig, Limits

logger = logging.getLogger(__name__)


class Overloaded(Exception):
    """The search queue is full (HTTP 503)."""


class ReadOnlyError(HybridRAGError):
    """A write endpoint was called on a read-only server (HTTP 403)."""


# search_batch's keyword options a request may set (beside queries, k and filters)
OPTION_NAMES = OVERRIDES


@dataclass
class _Request:
    queries: list[str]
    k: int
    filters: dict[str, Any] | None
    options: dict[str, Any]
    future: asyncio.Future
    key: str = ""

    def __post_init__(self) -> None:
        self.key = json.dumps([self.k, self.filters, self.options], sort_keys=True, default=str)


@dataclass
class SearchResult:
    generation: int
    hits: list[list[Any]] = field(default_factory=list)   # per query: list of Hit


def check_search(queries: Any, k: Any, options: Mapping[str, Any], limits: Limits) -> None:
    """Reject what the server bounds, naming the limit and its flag (the library checks the rest)."""
    if len(queries) > limits.max_queries:
        raise ValueError(f"{len(queries)} queries in one request; this server's limit is {limits.max_queries} "
                         "(--max-queries)")
    if not queries:
        raise ValueError("no query given: pass 'query' (a string) or 'queries' (a list of strings)")
    check_queries(queries)   # the library's own messages ("the query is empty", "query 2 must be a string")
    longest = max(map(len, queries))
    if longest > limits.max_query_chars:   # the search thread is shared: one huge text holds every search
        raise ValueError(f"a query of {longest} characters; this server's limit is {limits.max_query_chars} "
                         "(--max-query-chars)")
    if isinstance(k, int) and k > limits.max_k:
        raise ValueError(f"k={k} exceeds this server's limit of {limits.max_k} (--max-k)")
    depth = options.get("depth")
    depths = depth.values() if isinstance(depth, Mapping) else [depth]
    for d in [*depths, options.get("rerank_k")]:
        if isinstance(d, int) and d > limits.max_depth:
            raise ValueError(f"depth/rerank_k={d} exceeds this server's limit of {limits.max_depth} (--max-depth)")


class Engine:
    """One index served: generations, batcher and writer. Start with :meth:`start` inside
    the event loop, stop with :meth:`stop`."""

    def __init__(self, path: str | os.PathLike[str], *, writable: bool = False, limits: Limits | None = None,
                 batching: BatchConfig | None = None, reload_interval_ms: float = 200.0,
                 metrics: Any = None, runtime: str | None = None) -> None:
        self.path = Path(path)
        #: ``HybridIndex.load(runtime=...)`` of every index this engine opens (None: the pipeline's).
        self.runtime = runtime
        self.writable = writable
        self.limits = limits or Limits()
        self.batching = batching or BatchConfig()
        if self.batching.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.batching.max_batch}")
        if self.batching.wait_ms < 0:
            raise ValueError(f"batch wait must be >= 0 ms, got {self.batching.wait_ms}")
        self.reload_interval_s = max(0.01, reload_interval_ms / 1000.0)
        self.metrics = metrics
        self._search_pool = ThreadPoolExecutor(1, thread_name_prefix="hybridrag-search")
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="hybridrag-write")
        self.current: HybridIndex = HybridIndex.load(self.path, verify=False, runtime=runtime)
        try:   # the models now, not at the first request: a server is healthy when it can answer
            if self.current.pipeline.encoder.kind != "none":
                self.current.encoder   # noqa: B018 - loads it (exports it, with runtime "onnx")
            if self.current.pipeline.rerank.enabled:
                self.current.reranker   # noqa: B018
        except BaseException:
            self.current.close()
            raise
        self._signature = self._manifest_signature()
        self._queue: deque[_Request] = deque()
        self._queued = 0        # queries in _queue
        self._in_flight = 0     # queries in the batch being searched
        self._wake: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._reload_lock: asyncio.Lock | None = None
        self._tasks: list[asyncio.Task] = []
        self._writer: HybridIndex | None = None
        self._writer_encoder: Any = None
        self._uncommitted = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks = [asyncio.create_task(self._batch_loop()), asyncio.create_task(self._poll_loop())]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        while self._queue:
            r = self._queue.popleft()
            if not r.future.done():
                r.future.set_exception(Overloaded("the server is shutting down"))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._write_pool, self._close_writer)
        await loop.run_in_executor(self._search_pool, self.current.close)
        self._search_pool.shutdown(wait=True)
        self._write_pool.shutdown(wait=True)

    @property
    def generation(self) -> int:
        return self.current.generation

    @property
    def queue_depth(self) -> int:
        return self._queued + self._in_flight

    # ------------------------------------------------------------------ reload
    def _manifest_signature(self) -> tuple[int, int, int] | None:
        if self.current._attached is not None:   # a query node: the newest generation published in Milvus
            try:
                newest = self.current.published_generation()
            except Exception as e:  # noqa: BLE001 - Milvus unreachable for a moment: keep serving
                logger.debug("hybridrag serve: cannot read the published generation: %s", e)
                return None
            return None if newest is None else (newest, 0, 0)
        try:
            st = os.stat(self.path / MANIFEST)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    async def _poll_loop(self) -> None:
        while True:
            # a query node asks Milvus (a query, not a stat): at most once a second
            attached = self.current._attached is not None
            await asyncio.sleep(max(self.reload_interval_s, 1.0) if attached else self.reload_interval_s)
            sig = await asyncio.to_thread(self._manifest_signature)
            if sig is not None and sig != self._signature:
                try:
                    await self.reload()
                except Exception:  # noqa: BLE001 - the poller must outlive a bad manifest; logged
                    self._signature = sig
                    logger.exception("hybridrag serve: reload of %s failed", self.path)
                    if self.metrics is not None:
                        self.metrics.reload("error")

    async def reload(self) -> int:
        """Load the index's committed generation if it is not the one served; returns the
        generation served afterwards. Searches go on from the old generation meanwhile."""
        if self._reload_lock is None:
            raise RuntimeError("Engine.start() was not called")
        async with self._reload_lock:
            sig = await asyncio.to_thread(self._manifest_signature)
            if self.current._attached is not None:
                on_disk = None if sig is None else {"generation": sig[0]}
            else:
                on_disk = read_manifest(self.path, missing_ok=True)
            if on_disk is None or int(on_disk["generation"]) == self.current.generation:
                self._signature = sig
                return self.current.generation
            old = self.current
            try:
                conn = {f"milvus_{k}": v for k, v in old._milvus_conn.items() if k in ("uri", "token")}
                new = await asyncio.to_thread(HybridIndex.load, self.path, verify=False,
                                              encoder=old._encoder, reranker=old._reranker, runtime=self.runtime,
                                              **conn)
            except (HybridRAGError, OSError, ValueError) as e:
                # keep serving the loaded generation; the next manifest change retries
                logger.warning("hybridrag serve: could not load the new generation of %s: %s", self.path, e)
                self._signature = sig
                if self.metrics is not None:
                    self.metrics.reload("error")
                return old.generation
            self.current = new   # the swap: batches started from now on read `new`
            self._signature = sig
            if self.metrics is not None:
                self.metrics.reload("ok")
            # queued behind any batch still reading `old` on the (single) search thread
            asyncio.get_running_loop().run_in_executor(self._search_pool, old.close)
            return new.generation

    # ------------------------------------------------------------------ search
    async def search(self, queries: list[str], k: int = 10, filters: dict[str, Any] | None = None,
                     **options: Any) -> SearchResult:
        """Queue one request's queries for the batcher; all of them are answered from one
        generation. Raises what ``search_batch`` raises for bad input."""
        check_search(queries, k, options, self.limits)
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise ValueError(f"unknown search option(s) {unknown}; choose from {list(OPTION_NAMES)}")
        if len(queries) > self.limits.max_queue:   # would never fit: not worth a retry
            raise ValueError(f"{len(queries)} queries in one request; this server queues at most "
                             f"{self.limits.max_queue} (--max-queue)")
        if self._queued + len(queries) > self.limits.max_queue:
            raise Overloaded(f"{self._queued} queries are waiting (limit {self.limits.max_queue}, --max-queue); "
                             "retry later")
        if self._wake is None or self._full is None:
            raise RuntimeError("Engine.start() was not called")
        fut = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(list(queries), k, filters, {n: v for n, v in options.items() if v is not None},
                                    fut))
        self._queued += len(queries)
        self._wake.set()
        if self._queued >= self.batching.max_batch:
            self._full.set()
        return await fut

    async def _batch_loop(self) -> None:
        if self._wake is None or self._full is None:
            raise RuntimeError("Engine.start() was not called")
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if self.batching.wait_ms > 0 and self._queued < self.batching.max_batch:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.batching.wait_ms / 1000.0)
            batch: list[_Request] = []
            n = 0
            while self._queue and (not batch or n + len(self._queue[0].queries) <= self.batching.max_batch):
                r = self._queue.popleft()
                n += len(r.queries)
                if not r.future.done():   # a client that went away is not searched for
                    batch.append(r)
            self._queued -= n
            if not self._queue:
                self._wake.clear()
            if self._queued < self.batching.max_batch:
                self._full.clear()
            if not batch:
                continue
            self._in_flight = sum(len(r.queries) for r in batch)
            try:
                outcomes = await loop.run_in_executor(self._search_pool, self._run_batch, batch)
            except BaseException as e:  # noqa: BLE001 - an engine fault answers these requests, the loop goes on
                outcomes = [e] * len(batch)
            finally:
                self._in_flight = 0
            for r, out in zip(batch, outcomes):
                if r.future.done():
                    continue
                if isinstance(out, BaseException):
                    r.future.set_exception(out)
                else:
                    r.future.set_result(out)

    def _run_batch(self, batch: list[_Request]) -> list[Any]:
        """On the search thread: one generation for the whole batch, one search_batch per group."""
        idx = self.current
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(batch):
            groups.setdefault(r.key, []).append(i)
        out: list[Any] = [None] * len(batch)
        for members in groups.values():
            reqs = [batch[i] for i in members]
            try:
                flat = self._search_group(idx, reqs)
            except Exception as e:  # noqa: BLE001 - retried one by one so that only the bad request fails
                for i in members:
                    out[i] = e if len(members) == 1 else self._one(idx, batch[i])
                continue
            pos = 0
            for i, r in zip(members, reqs):
                out[i] = SearchResult(idx.generation, flat[pos:pos + len(r.queries)])
                pos += len(r.queries)
        return out

    def _search_group(self, idx: HybridIndex, reqs: list[_Request]) -> list[list[Any]]:
        r0 = reqs[0]
        queries = [q for r in reqs for q in r.queries]
        if self.metrics is not None:
            self.metrics.batch(len(queries))
        return idx.search_batch(queries, options=SearchOptions(k=r0.k, filters=r0.filters, **r0.options))

    def _one(self, idx: HybridIndex, r: _Request) -> Any:
        try:
            return SearchResult(idx.generation, self._search_group(idx, [r]))
        except Exception as e:  # noqa: BLE001 - handed to the request's caller
            return e

    async def stats(self) -> dict[str, Any]:
        """``HybridIndex.stats()`` of the served generation, read on the search thread."""
        def read() -> dict[str, Any]:
            idx = self.current
            return idx.stats()

        st = await asyncio.get_running_loop().run_in_executor(self._search_pool, read)
        st.update({"writable": self.writable, "queue_depth": self.queue_depth,
                   "limits": asdict(self.limits), "batching": asdict(self.batching)})
        return st

    # ------------------------------------------------------------------ writes
    async def write(self, op: str, **kwargs: Any) -> dict[str, Any]:
        """Run ``add``/``upsert``/``delete``/``commit`` on the writer thread; after a commit,
        load the new generation before returning (read-your-writes)."""
        if not self.writable:
            raise ReadOnlyError("this server is read-only; start it with --writable to enable add/upsert/delete/commit")
        out = await asyncio.get_running_loop().run_in_executor(self._write_pool, self._write, op, kwargs)
        if out.get("committed"):
            out["generation"] = await self.reload()
        return out

    def _write(self, op: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self._writer is not None and not self._uncommitted:
            on_disk = read_manifest(self.path, missing_ok=True)
            if on_disk is None or int(on_disk["generation"]) != self._writer.generation:
                self._close_writer()   # another process committed since: start from its generation
        if self._writer is None:
            self._writer = HybridIndex.load(self.path, verify=False, encoder=self._writer_encoder,
                                            runtime=self.runtime)
        w = self._writer
        commit = bool(kwargs.get("commit", True))
        try:
            if op in ("add", "upsert"):
                docs = kwargs["documents"]
                if len(docs) > self.limits.max_documents:
                    raise ValueError(f"{len(docs)} documents in one request; this server's limit is "
                                     f"{self.limits.max_documents} (--max-documents)")
                res = getattr(w, op)(docs, commit=commit)
                out: dict[str, Any] = asdict(res)
            elif op == "delete":
                out = {"deleted": w.delete(kwargs.get("ids"), kwargs.get("filters"), commit=commit)}
            elif op == "commit":
                w.commit()
                commit, out = True, {}
            else:  # pragma: no cover - the app routes only the four
                raise ValueError(f"unknown write operation {op!r}")
        except BaseException:
            if not w._dirty:   # nothing staged (or the library rolled the failed write back)
                self._close_writer()
            raise
        if commit:
            self._uncommitted = False
            self._close_writer()       # committed: release the writer lock for other processes
        else:
            self._uncommitted = True
        out["committed"] = commit
        return out

    def _close_writer(self) -> None:
        if self._writer is not None:
            if self._writer.pipeline.encoder.kind != "none" and self._writer._encoder is not None:
                self._writer_encoder = self._writer._encoder
            self._writer.close()   # uncommitted writes (only at shutdown) are dropped
            self._writer = None
            self._uncommitted = False


def open_engine(path: str | os.PathLike[str], **kwargs: Any) -> Engine:
    """An :class:`Engine` over the index at ``path`` (IndexFormatError when there is none)."""
    p = Path(path)
    if not (p / MANIFEST).exists():
        raise IndexFormatError(f"no index at {str(p)!r} (no {MANIFEST}); build one with 'hybridrag ingest'")
    return Engine(p, **kwargs)
