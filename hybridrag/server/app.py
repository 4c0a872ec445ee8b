"""The HTTP API of ``hybridrag serve`` (FastAPI + uvicorn; ``pip install 'hybridrag[serve]'``).

Endpoints (``docs/SERVE.md``; the OpenAPI page is ``/docs``):

* ``POST /search``: ``{"query": ...}`` or ``{"queries": [...]}`` with ``k``, ``filters``,
  ``modes``, ``fusion``, ``weights``, ``depth``, ``rerank``, ``rerank_k``, ``rrf_k``, ``explain``.
* ``POST /add``, ``/upsert``, ``/delete``, ``/commit``: writes (``--writable`` only; 403 otherwise).
* ``GET /stats``, ``/health``, ``/metrics`` (Prometheus text).

Bad input gets 400 (the library's message), 422 (a malformed body, naming the field), 413
(body too large), 401 (API key), 403 (read-only), 409 (index locked by another writer),
503 (queue full); never a 500 for user input. Covered by ``tests/test_serve.py``.
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import sys
import time
from contextlib import asynccontextmanager
from typing import Any, Literal

try:
    import uvicorn
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from fastapi.responses import JSONResponse as _StarletteJSON
    from fastapi.responses import PlainTextResponse
    from pydantic import BaseModel, ConfigDict, Field
except ImportError as e:  # pragma: no cover - exercised by test_serve.py::test_import_hint
    raise ImportError("hybridrag serve needs FastAPI and uvicorn: pip install 'hybridrag[serve]'") from e

from hybridrag.errors import HybridRAGError, IndexLockedError, ModelLoadError
from hybridrag.server.config import BatchConfig, Limits
from hybridrag.server.engine import Engine, Overloaded, ReadOnlyError, open_engine
from hybridrag.server.metrics import Metrics


class JSONResponse(_StarletteJSON):
    """JSON as UTF-8; a stored text holding a lone surrogate (kept by the docstore as given) is
    written with its ``\\uXXXX`` escape, valid JSON that decodes to the same string. Plain UTF-8
    failed there (UnicodeEncodeError), so every search that would return it got an error."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, indent=None,
                              separators=(",", ":")).encode("ascii")


logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health"})   # answered without the API key (load-balancer probes)
API_KEY_ENV = "HYBRIDRAG_API_KEY"


class SearchRequest(BaseModel):
    """One query (``query``) or a batch (``queries``) and the options of ``HybridIndex.search_batch``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    query: str | None = Field(None, description="one query; the response has 'hits'")
    queries: list[str] | None = Field(None, description="a batch of queries; the response has 'results'")
    k: int = Field(10, description="hits per query (at most --max-k)")
    filters: dict[str, Any] | None = Field(None, description='metadata conditions, e.g. {"year": {"$gte": 2020}}')
    modes: list[str] | None = Field(None, description="a subset of the index's modes")
    fusion: Literal["weighted", "relative", "rrf", "adaptive", "coverage"] | None = None
    weights: dict[str, float] | None = None
    depth: int | dict[str, int] | None = Field(None, description="first-stage candidates per mode (at most --max-depth)")
    rerank: bool | None = None
    rerank_k: int | None = None
    rrf_k: int | None = None
    budget_ms: float | int | None = Field(None, description="the call's time budget in ms: rerank as deep as it allows "
                                                            "(0: none; docs/BUDGET.md)")
    explain: bool = Field(False, description="add per-mode scores and first-stage ranks to each hit")


class WriteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    documents: list[Any] = Field(description="documents {'id', 'text', 'metadata'} (checked as the library does)")
    commit: bool = Field(True, description="commit (make visible) at the end of this call")


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    ids: list[str] | None = None
    filters: dict[str, Any] | None = None
    commit: bool = True


def _hit_json(h: Any, explain: bool) -> dict[str, Any]:
    d = h.to_dict()
    if not explain:
        del d["scores"], d["ranks"], d["weights"]
    return d


def _error(status: int, exc: BaseException | str, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = "Error" if isinstance(exc, str) else type(exc).__name__
    return JSONResponse({"detail": str(exc), "error": kind}, status_code=status, headers=headers)


class _Gate:
    """ASGI middleware: API key, request body limit, request metrics."""

    def __init__(self, app: Any, *, api_key: str | None, max_body: int, metrics: Metrics, routes: set[str]) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.max_body = max_body
        self.metrics = metrics
        self.routes = routes

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        if self.key is None:
            raise RuntimeError("_authorised() called with no API key set")
        given = headers.get(b"x-api-key")
        auth = headers.get(b"authorization", b"")
        if given is None and auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        # compare_digest: the time taken does not depend on how much of the key matched
        return given is not None and hmac.compare_digest(given, self.key)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path = scope.get("path", "")
        endpoint = path if path in self.routes else "other"
        status = [500]

        async def send_(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            headers = dict(scope.get("headers") or [])
            if self.key is not None and path not in OPEN_PATHS and not self._authorised(headers):
                resp = _error(401, "missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                              {"WWW-Authenticate": "Bearer"})
                await resp(scope, receive, send_)
                return
            if scope.get("method") in ("POST", "PUT", "PATCH"):
                declared = headers.get(b"content-length")
                too_big = _error(413, f"request body over this server's limit of {self.max_body} bytes "
                                      "(--max-body-bytes)")
                if declared is not None and declared.isdigit() and int(declared) > self.max_body:
                    await too_big(scope, receive, send_)
                    return
                chunks, size = [], 0
                while True:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        status[0] = 499   # the client went away before sending its body (nginx's code)
                        return
                    body = msg.get("body", b"")
                    size += len(body)
                    if size > self.max_body:
                        await too_big(scope, receive, send_)
                        return
                    chunks.append(body)
                    if not msg.get("more_body"):
                        break
                buffered = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

                async def receive_() -> dict:
                    return buffered.pop() if buffered else await receive()

                await self.app(scope, receive_, send_)
            else:
                await self.app(scope, receive, send_)
        finally:
            self.metrics.request(endpoint, status[0], time.perf_counter() - t0)


def create_app(engine: Engine, *, api_key: str | None = None) -> Any:
    """The ASGI app serving ``engine`` (started and stopped with the app's lifespan)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(title="hybridrag", summary="Hybrid retrieval over one index: search, write, stats, metrics.",
                  lifespan=lifespan)
    metrics = engine.metrics

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Any, exc: StarletteHTTPException) -> JSONResponse:
        # the framework's own errors (no such route or method, a body it cannot parse) in the
        # API's error shape too, {"detail", "error"}
        kind = {400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        return JSONResponse({"detail": str(exc.detail), "error": kind}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(req: Any, exc: RequestValidationError) -> JSONResponse:
        ctype = req.headers.get("content-type", "")
        if req.method == "POST" and "json" not in ctype.lower():   # curl -d sends a form by default
            return JSONResponse({"detail": f"send the body as JSON with 'Content-Type: application/json' "
                                           f"(got {ctype or 'no Content-Type'!r})", "error": "ValidationError"},
                                status_code=422)
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
            got = f", got {err['input']!r:.80}" if "input" in err and err.get("type") != "missing" else ""
            parts.append(f"{loc}: {err.get('msg')}{got}")
        return JSONResponse({"detail": "; ".join(parts), "error": "ValidationError"}, status_code=422)

    @app.exception_handler(ReadOnlyError)
    async def _read_only(_req: Any, exc: ReadOnlyError) -> JSONResponse:
        return _error(403, exc)

    @app.exception_handler(IndexLockedError)
    async def _locked(_req: Any, exc: IndexLockedError) -> JSONResponse:
        return _error(409, exc)

    @app.exception_handler(Overloaded)
    async def _overloaded(_req: Any, exc: Overloaded) -> JSONResponse:
        return _error(503, exc, {"Retry-After": "1"})

    @app.exception_handler(ModelLoadError)
    async def _model(_req: Any, exc: ModelLoadError) -> JSONResponse:
        return _error(500, exc)   # the server's models, not the request

    for kind in (HybridRAGError, ValueError, TypeError):
        @app.exception_handler(kind)
        async def _bad_input(_req: Any, exc: Exception) -> JSONResponse:
            return _error(400, exc)

    @app.post("/search", summary="Search one query or a batch")
    async def search(req: SearchRequest) -> JSONResponse:
        if (req.query is None) == (req.queries is None):
            raise ValueError("pass exactly one of 'query' (a string) or 'queries' (a list of strings)")
        queries = [req.query] if req.query is not None else req.queries
        options = {n: getattr(req, n) for n in ("modes", "fusion", "weights", "depth", "rerank", "rerank_k", "rrf_k",
                                                "budget_ms")}
        res = await engine.search(queries, k=req.k, filters=req.filters, **options)  # type: ignore[arg-type]
        rows = [[_hit_json(h, req.explain) for h in hits] for hits in res.hits]
        notes = [list(getattr(hits, "notes", ())) for hits in res.hits]   # why hits are missing
        timing = getattr(res.hits[0], "timing", None) if res.hits else None
        extra = {"timing": timing} if timing is not None else {}   # with a budget: what it chose and spent
        if req.query is not None:
            return JSONResponse({"generation": res.generation, "hits": rows[0], "notes": notes[0], **extra})
        return JSONResponse({"generation": res.generation, "results": rows, "notes": notes, **extra})

    @app.post("/add", summary="Add documents (--writable)")
    async def add(req: WriteRequest) -> JSONResponse:
        return JSONResponse(await engine.write("add", documents=req.documents, commit=req.commit))

    @app.post("/upsert", summary="Add or replace documents (--writable)")
    async def upsert(req: WriteRequest) -> JSONResponse:
        return JSONResponse(await engine.write("upsert", documents=req.documents, commit=req.commit))

    @app.post("/delete", summary="Delete documents by id and/or metadata filter (--writable)")
    async def delete(req: DeleteRequest) -> JSONResponse:
        return JSONResponse(await engine.write("delete", ids=req.ids, filters=req.filters, commit=req.commit))

    @app.post("/commit", summary="Commit staged writes (--writable)")
    async def commit() -> JSONResponse:
        return JSONResponse(await engine.write("commit"))

    @app.get("/stats", summary="What the served index holds, limits and batching")
    async def stats() -> JSONResponse:
        return JSONResponse(await engine.stats())

    @app.get("/health", summary="Liveness and the generation served (no API key needed)")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok", "generation": engine.generation})

    @app.get("/metrics", summary="Prometheus text format")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = {r.path for r in app.routes if hasattr(r, "path")}
    app.add_middleware(_Gate, api_key=api_key, max_body=engine.limits.max_body_bytes, metrics=metrics, routes=routes)
    return app


def build(index: str | os.PathLike[str], *, writable: bool = False, api_key: str | None = None,
          limits: Limits | None = None, batching: BatchConfig | None = None,
          reload_interval_ms: float = 200.0, runtime: str | None = None) -> tuple[Any, Engine]:
    """Open the index and build the app (the engine starts with the app's lifespan)."""
    holder: dict[str, Engine] = {}
    metrics = Metrics(queue_depth=lambda: holder["e"].queue_depth, generation=lambda: holder["e"].generation)
    engine = open_engine(index, writable=writable, limits=limits, batching=batching,
                         reload_interval_ms=reload_interval_ms, metrics=metrics, runtime=runtime)
    holder["e"] = engine
    key = api_key if api_key is not None else (os.environ.get(API_KEY_ENV) or None)
    return create_app(engine, api_key=key), engine


def log_to_stderr(level: str) -> logging.Handler:
    """``hybridrag serve`` is an application, not a library: the engine's own records (a new
    generation it could not load, a failed poll) go to stderr at ``--log-level``, beside
    uvicorn's (the ``hybridrag`` logger has only a NullHandler otherwise, and they were lost)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s hybridrag %(levelname)s %(message)s"))
    pkg_logger = logging.getLogger("hybridrag")
    pkg_logger.addHandler(handler)
    pkg_logger.setLevel(level.upper() if level.upper() in logging.getLevelNamesMapping() else "WARNING")
    return handler


def run(index: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning",
        access_log: bool = False, **kwargs: Any) -> None:
    """Serve ``index`` on ``host:port`` until interrupted (the ``hybridrag serve`` command)."""
    if kwargs.get("api_key") is not None and not str(kwargs["api_key"]).strip():
        raise ValueError("--api-key is empty (an unset variable?): give a key, or leave the option out")
    log_to_stderr(log_level)
    app, engine = build(index, **kwargs)
    keyed = kwargs.get("api_key") is not None or bool(os.environ.get(API_KEY_ENV))
    if host not in ("127.0.0.1", "localhost", "::1") and not keyed:
        print(f"hybridrag serve: warning: listening on {host} without an API key (--api-key or {API_KEY_ENV})",
              file=sys.stderr)
    print(f"serving {index} (generation {engine.generation}, {'writable' if engine.writable else 'read-only'}) "
          f"on http://{host}:{port}  (API docs: /docs)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)


__all__ = ["SearchRequest", "build", "create_app", "run"]
