"""``SearchOptions``: every per-call setting of a search in one value, checked once.

:meth:`hybridrag.index.HybridIndex.search_batch` takes one (``options=``) or builds one from
its keyword arguments (``k``, ``filters``, ``modes``, ``fusion``, ...); the connectors and
the server hold one instead of a dict of keyword arguments. A field left ``None`` means the
index pipeline's own setting. Construction checks everything that does not depend on the
index (types and ranges) and raises ``TypeError``/``ValueError`` naming the bad value; what
depends on the index (are these modes enabled, is there a weight for each, is a depth given
for a first stage) is checked when the search is planned (:mod:`hybridrag.search.plan`).

Tested in ``tests/test_planner.py``.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybridrag.search.fusion import FUSION_METHODS

#: The per-call overrides of the pipeline (every field but ``k`` and ``filters``).
OVERRIDES: tuple[str, ...] = ("modes", "fusion", "weights", "depth", "rerank", "rerank_k", "rrf_k", "budget_ms")
DEFAULT_K = 10


def _is_int(v: Any) -> bool:
    return not isinstance(v, (bool, np.bool_)) and isinstance(v, (int, np.integer))


@dataclass(frozen=True)
class SearchOptions:
    """Per-call search settings; ``None`` = the pipeline's setting.

    ``k``: hits per query (a positive int). ``filters``: metadata conditions applied before
    top-k (hybridrag's filter dict; empty or ``None`` = none). ``modes``: a subset of the
    index's enabled modes (a name or a sequence of names). ``fusion``: one of
    ``weighted | relative | rrf | adaptive | coverage``. ``weights``: mode -> finite number >= 0.
    ``depth``: first-stage candidates per mode (a positive int, or mode -> positive int).
    ``rerank``: ``True``/``False``. ``rerank_k``: candidates reranked (positive int).
    ``rrf_k``: the ``k`` of reciprocal rank fusion (int >= 0). ``budget_ms``: the call's time
    budget in ms (a finite number >= 0; 0 = none): the rerank depth and passage length are
    chosen to fit it (``rerank.budget_ms``; :mod:`hybridrag.search.budget`).

    ``k``, depths and ``rerank_k`` are capped at the index's live chunk count when the
    search is planned. Frozen: :meth:`replace` returns a changed copy (checked again).
    """

    k: int = DEFAULT_K
    filters: Mapping[str, Any] | None = None
    modes: tuple[str, ...] | None = None
    fusion: str | None = None
    weights: Mapping[str, float] | None = None
    depth: int | Mapping[str, int] | None = None
    rerank: bool | None = None
    rerank_k: int | None = None
    rrf_k: int | None = None
    budget_ms: float | None = None

    def __post_init__(self) -> None:
        k = self.k
        if not _is_int(k):
            raise TypeError(f"k must be a positive integer, got {type(k).__name__} {k!r}")
        if k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        self._set("k", int(k))
        if self.filters is not None:
            if not isinstance(self.filters, Mapping):
                raise TypeError(f"filters must be a dict, got {type(self.filters).__name__}")
            self._set("filters", dict(self.filters))
        if self.modes is not None:
            modes = [self.modes] if isinstance(self.modes, str) else self.modes
            if not isinstance(modes, Sequence) or not all(isinstance(m, str) for m in modes):
                raise TypeError(f"modes must be a mode name or a list of them, got {self.modes!r}")
            self._set("modes", tuple(modes))
        if self.fusion is not None and self.fusion not in FUSION_METHODS:
            raise ValueError(f"unknown fusion {self.fusion!r}; choose one of {FUSION_METHODS}")
        if self.weights is not None:
            if not isinstance(self.weights, Mapping):
                raise TypeError(f"weights must be a dict of mode -> number, got {type(self.weights).__name__}")
            for m, v in self.weights.items():
                if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
                        or not math.isfinite(v) or v < 0:
                    raise ValueError(f"weights[{m!r}] = {v!r}: a fusion weight must be a finite number >= 0")
            self._set("weights", dict(self.weights))
        if self.depth is not None:
            if isinstance(self.depth, Mapping):
                for m, d in self.depth.items():
                    if not _is_int(d) or d < 1:
                        raise ValueError(f"depth for {m!r} must be a positive integer, got {d!r}")
                self._set("depth", {m: int(d) for m, d in self.depth.items()})
            elif not _is_int(self.depth) or self.depth < 1:
                raise ValueError(f"depth must be a positive integer, got {self.depth!r} "
                                 "(or give a dict of mode -> positive integer)")
            else:
                self._set("depth", int(self.depth))
        if self.rerank is not None:
            if not isinstance(self.rerank, (bool, np.bool_)):
                raise TypeError(f"rerank must be True or False, got {type(self.rerank).__name__} {self.rerank!r}")
            self._set("rerank", bool(self.rerank))
        if self.rerank_k is not None:
            if not _is_int(self.rerank_k) or self.rerank_k < 1:
                raise ValueError(f"rerank_k must be a positive integer, got {self.rerank_k!r}")
            self._set("rerank_k", int(self.rerank_k))
        if self.rrf_k is not None:
            if not _is_int(self.rrf_k) or self.rrf_k < 0:
                raise ValueError(f"rrf_k must be an integer >= 0, got {self.rrf_k!r}")
            self._set("rrf_k", int(self.rrf_k))
        if self.budget_ms is not None:
            b = self.budget_ms
            if isinstance(b, (bool, np.bool_)) or not isinstance(b, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(b) or b < 0:
                raise ValueError(f"budget_ms must be a finite number >= 0 (0 = no budget), got {b!r}")
            self._set("budget_ms", float(b))

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalising a frozen dataclass in __post_init__

    @classmethod
    def build(cls, options: SearchOptions | None = None, k: int = DEFAULT_K,
              filters: Mapping[str, Any] | None = None, **overrides: Any) -> SearchOptions:
        """The options of one call: ``options`` as given, or built from ``k``, ``filters`` and
        the keyword ``overrides``; ``TypeError`` for an unknown override name, for
        ``options`` that is not a :class:`SearchOptions`, or for both forms at once."""
        unknown = sorted(set(overrides) - set(OVERRIDES))
        if unknown:
            raise TypeError(f"unknown search option(s) {unknown}; choose from {list(OVERRIDES)}")
        if options is None:
            return cls(k=k, filters=filters, **overrides)
        if not isinstance(options, SearchOptions):
            raise TypeError(f"options must be a SearchOptions, got {type(options).__name__}")
        given = [n for n, v in overrides.items() if v is not None]
        given += ["k"] * (not (_is_int(k) and k == DEFAULT_K)) + ["filters"] * (filters is not None)
        if given:
            raise TypeError(f"pass the settings {sorted(given)} inside options, not beside it")
        return options

    def replace(self, **changes: Any) -> SearchOptions:
        """A copy with ``changes`` applied (and checked); ``TypeError`` for an unknown name."""
        unknown = sorted(set(changes) - {"k", "filters", *OVERRIDES})
        if unknown:
            raise TypeError(f"unknown search option(s) {unknown}; choose from {['k', 'filters', *OVERRIDES]}")
        return dataclasses.replace(self, **changes)

    def overrides(self) -> dict[str, Any]:
        """The per-call overrides that are set (not ``None``), as keyword arguments (JSON-able:
        ``modes`` as a list) for ``search(query, k, filters, **overrides)`` of an index or a
        :class:`hybridrag.client.RemoteIndex`."""
        out = {n: getattr(self, n) for n in OVERRIDES if getattr(self, n) is not None}
        if "modes" in out:
            out["modes"] = list(out["modes"])
        return out
