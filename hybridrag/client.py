"""``RemoteIndex``: a ``hybridrag serve`` server used like a :class:`~hybridrag.index.HybridIndex`
(``search``, ``search_batch``, ``stats``, and the writes when the server is ``--writable``).

Standard library only (``http.client``; one keep-alive connection per thread). Hits come
back as :class:`~hybridrag.types.Hit` with the same scores as a local index (JSON carries
floats exactly). The server's 4xx errors are raised as the library would raise them
locally: ``ValueError``/``TypeError``/the :mod:`hybridrag.errors` type named in the reply,
with the server's message; 401/403/409/503 and connection failures as
:class:`RemoteError` (an ``OSError``) naming the URL.
Covered by ``tests/test_serve.py`` (``test_remote_index_*``, ``test_connectors_*``).
"""
from __future__ import annotations

import http.client
import json
import os
import threading
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hybridrag import errors
from hybridrag.types import Document, Hit, SearchResults

API_KEY_ENV = "HYBRIDRAG_API_KEY"


class RemoteError(errors.HybridRAGError, OSError):
    """The server could not be reached, refused the request (key, read-only, busy) or failed."""


# error names the server reports that are raised as the same type here
_RAISE_AS: dict[str, type[Exception]] = {
    "ValueError": ValueError, "TypeError": TypeError, "ValidationError": ValueError,
    "ConfigError": errors.ConfigError, "DocumentError": errors.DocumentError,
    "IndexFormatError": errors.IndexFormatError, "IndexLockedError": errors.IndexLockedError,
    "HybridRAGError": errors.HybridRAGError,
}


def _hit(d: Mapping[str, Any]) -> Hit:
    return Hit(chunk_id=d["chunk_id"], doc_id=d["doc_id"], text=d["text"], score=float(d["score"]),
               metadata=dict(d.get("metadata") or {}), span=tuple(d.get("span", (0, 0))),  # type: ignore[arg-type]
               scores=dict(d.get("scores") or {}), ranks=dict(d.get("ranks") or {}),
               weights=dict(d.get("weights") or {}))


class RemoteIndex:
    """A client of ``hybridrag serve`` at ``url`` (e.g. ``http://127.0.0.1:8000``).

    ``api_key`` defaults to ``$HYBRIDRAG_API_KEY``; ``timeout`` is seconds per request.
    ``generation`` is the index generation that answered the last search.
    """

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a string like 'http://127.0.0.1:8000', got {type(url).__name__}")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be http(s)://HOST[:PORT], got {url!r}")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self.api_key = api_key if api_key is not None else (os.environ.get(API_KEY_ENV) or None)
        self.timeout = timeout
        self.generation: int | None = None
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"RemoteIndex({self.url!r})"

    # ------------------------------------------------------------------ transport
    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            c = self._local.conn = cls(self._host, self._port, timeout=self.timeout)
        return c

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in (0, 1):
            conn = self._conn()
            try:
                conn.request(method, self._prefix + path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                conn.close()
                self._local.conn = None
                # a kept-alive connection the server closed: one fresh try
                if attempt == 1 or not isinstance(e, (ConnectionError, http.client.RemoteDisconnected,
                                                      http.client.BadStatusLine)):
                    raise RemoteError(f"{method} {self.url}{path}: {e}") from e
        try:
            payload = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            payload = None
        if resp.status < 400:
            return payload
        detail = payload.get("detail") if isinstance(payload, dict) else raw[:200].decode("utf-8", "replace")
        kind = payload.get("error") if isinstance(payload, dict) else None
        if resp.status in (400, 422) and kind in _RAISE_AS:
            raise _RAISE_AS[kind](detail)
        raise RemoteError(f"{method} {self.url}{path}: HTTP {resp.status}: {detail}")

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    # ------------------------------------------------------------------ search
    def search(self, query: str, k: int = 10, filters: Mapping[str, Any] | None = None,
               **overrides: Any) -> SearchResults:
        """Search one query; as :meth:`HybridIndex.search <hybridrag.index.HybridIndex.search>`."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a string, got {type(query).__name__}")
        out = self._request("POST", "/search", {"query": query, "k": k, "filters": filters, "explain": True,
                                                **overrides})
        self.generation = out["generation"]
        return SearchResults([_hit(h) for h in out["hits"]], out.get("notes", ()))

    def search_batch(self, queries: Sequence[str], k: int = 10, filters: Mapping[str, Any] | None = None,
                     **overrides: Any) -> list[SearchResults]:
        """Search a batch in one request; as :meth:`HybridIndex.search_batch`."""
        if isinstance(queries, str) or not isinstance(queries, Sequence):
            raise TypeError("queries must be a list of strings (use search() for one query)")
        if not queries:
            return []
        out = self._request("POST", "/search", {"queries": list(queries), "k": k, "filters": filters,
                                                "explain": True, **overrides})
        self.generation = out["generation"]
        notes = out.get("notes") or [()] * len(out["results"])
        return [SearchResults([_hit(h) for h in hits], n) for hits, n in zip(out["results"], notes)]

    # ------------------------------------------------------------------ info
    def stats(self) -> dict[str, Any]:
        return self._request("GET", "/stats")

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    # ------------------------------------------------------------------ writes (server started with --writable)
    @staticmethod
    def _docs(documents: Iterable[Any]) -> list[dict[str, Any]]:
        out = []
        for d in documents:
            if isinstance(d, Document):
                out.append({"id": d.id, "text": d.text, "metadata": dict(d.metadata)})
            else:
                out.append(d)
        return out

    def add(self, documents: Iterable[Any], *, commit: bool = True) -> dict[str, Any]:
        """Add documents; returns the server's summary (``added``, ``unchanged``, ``chunks``, ``empty``)."""
        return self._request("POST", "/add", {"documents": self._docs(documents), "commit": commit})

    def upsert(self, documents: Iterable[Any], *, commit: bool = True) -> dict[str, Any]:
        """Add documents, replacing those whose content changed."""
        return self._request("POST", "/upsert", {"documents": self._docs(documents), "commit": commit})

    def delete(self, ids: Iterable[str] | str | None = None, filters: Mapping[str, Any] | None = None,
               *, commit: bool = True) -> int:
        """Delete whole documents by id and/or metadata filter; returns how many."""
        if isinstance(ids, str):
            ids = [ids]
        body = {"ids": None if ids is None else list(ids), "filters": filters, "commit": commit}
        return int(self._request("POST", "/delete", body)["deleted"])

    def commit(self) -> int:
        """Commit staged writes; returns the generation now served."""
        return int(self._request("POST", "/commit", {})["generation"])
