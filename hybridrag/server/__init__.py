"""``hybridrag serve``: one index as an HTTP service (``docs/SERVE.md``).

``engine`` (batching, hot reload, writer) and ``metrics`` need nothing beyond hybridrag;
``app`` needs FastAPI and uvicorn (``pip install 'hybridrag[serve]'``) and is imported
only by :func:`run` / :func:`build`, so that importing this package never fails.
"""
from __future__ import annotations

from typing import Any


def build(index: Any, **kwargs: Any) -> Any:
    """``(app, engine)`` for ``index``; see :func:`hybridrag.server.app.build`."""
    from hybridrag.server.app import build as _build

    return _build(index, **kwargs)


def run(index: Any, **kwargs: Any) -> None:
    """Serve ``index`` until interrupted; see :func:`hybridrag.server.app.run`."""
    from hybridrag.server.app import run as _run

    _run(index, **kwargs)


__all__ = ["build", "run"]
