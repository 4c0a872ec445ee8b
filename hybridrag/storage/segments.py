"""One mode's store as the union of immutable segments plus one fresh, in-memory part.

Every commit turns the fresh part's rows into a new segment (its files are written once and
never modified); deletions of rows in older segments are kept by the engine as a list of
slots per segment and applied in memory when the segment is opened. A :class:`SegmentedStore`
answers the store protocol (``docs/CONTRACTS.md``) over all its parts:

* ``search``: the store kind's ``search_parts`` where it has one (the sparse index, ``Flat``
  dense stores: every part in one compiled pass with one top k), else each part's top-k (the
  global ``allowed`` mask applies to every part) merged into one top-k with ties broken by
  the smaller slot; either way the result equals that of one store holding every live row
  (tested against brute force in ``tests/test_segments.py``, ``tests/test_segment_search.py``);
* ``score``: ``score_parts`` likewise, else: a slot lives in exactly one part; every other
  part scores it ``-inf``, so the element-wise maximum is its score;
* BM25 parts share the statistics of the whole index (live rows, document frequencies, total
  length), so a term's idf and the average length are the ones a single store would use.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np

from hybridrag.stores.base import empty_results, topk

__all__ = ["SegmentedStore"]


class SegmentedStore:
    """The parts (``{segment id: store}``, oldest first) and the fresh part of one mode."""

    def __init__(self, parts: dict[str, Any], fresh: Any, new_fresh: Callable[[], Any]) -> None:
        self.parts = dict(parts)
        self.fresh = fresh
        self._new_fresh = new_fresh
        self._stats_key: tuple | None = None
        self._cache: dict = {}   # kept for the store kind's search_parts / score_parts

    # ------------------------------------------------------------------ structure
    def _all(self) -> Iterator[Any]:
        yield from self.parts.values()
        yield self.fresh

    def _live(self) -> list[Any]:
        return [p for p in self._all() if len(p)]

    def __len__(self) -> int:
        return sum(len(p) for p in self._all())

    def __getattr__(self, name: str) -> Any:
        # Read-only attributes of the store kind (``trained``, ``dim``, ``weighting`` ...) come
        # from the newest part; writes and searches go through the methods below.
        if name.startswith("_") or name in ("parts", "fresh"):
            raise AttributeError(name)
        return getattr(self.newest, name)

    @property
    def newest(self) -> Any:
        """The part a new segment is modelled on: the fresh part once it holds rows or when
        there is no segment, else the last segment."""
        if self.fresh is not None and (len(self.fresh) or not self.parts):
            return self.fresh
        return list(self.parts.values())[-1]

    def seal(self, segment_id: str, part: Any) -> None:
        """The fresh part was written as segment ``segment_id`` and reopened as ``part``."""
        self.parts[segment_id] = part
        self.fresh = self._new_fresh()
        self._stats_key = None
        self._cache = {}   # (its typed lists hold the old fresh part's arrays)

    def replace(self, old: Sequence[str], segment_id: str, part: Any) -> None:
        """Segments ``old`` were merged into ``segment_id`` (``part``), placed where the first was."""
        keep: dict[str, Any] = {}
        for sid, p in self.parts.items():
            if sid == old[0]:
                keep[segment_id] = part
            if sid not in old:
                keep[sid] = p
        self.parts = keep
        self._stats_key = None
        self._cache = {}   # its typed lists must not keep the merged segments' mapped files open

    # ------------------------------------------------------------------ writes
    def add(self, slots: np.ndarray, data: Any) -> None:
        self.fresh.add(slots, data)
        self._stats_key = None

    def remove(self, slots: np.ndarray) -> None:
        for p in self._all():
            p.remove(slots)
        self._stats_key = None

    # ------------------------------------------------------------------ reads
    def _share_stats(self, live: list[Any]) -> None:
        """Give every BM25 part the statistics of the whole index (recomputed after changes)."""
        if not live or not hasattr(live[0], "term_stats") or getattr(live[0], "weighting", "none") == "none":
            return
        key = tuple(id(p) for p in live) + tuple(len(p) for p in live)
        if key == self._stats_key:
            return
        if len(live) == 1:
            live[0].set_global_stats(None)
        else:
            stats = [p.term_stats() for p in live]
            width = max(len(s[1]) for s in stats)
            df = np.zeros(width, dtype=np.float64)
            for _, d, _ in stats:
                df[: len(d)] += d
            total = (sum(s[0] for s in stats), df, float(sum(s[2] for s in stats)))
            for p in live:
                p.set_global_stats(total)
        self._stats_key = key

    @staticmethod
    def _converted(queries: Any, live: list[Any]) -> Any:
        """The queries converted once for every part, where the store kind can (``queries_for``)."""
        convert = getattr(type(live[0]), "queries_for", None)
        return queries if convert is None else convert(queries, live)

    def search(self, queries: Any, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        live = self._live()
        if not live:
            nq = queries.shape[0] if hasattr(queries, "shape") else len(queries)
            return empty_results(nq, k)
        self._share_stats(live)
        if len(live) == 1:
            return live[0].search(queries, k, allowed=allowed)
        queries = self._converted(queries, live)
        whole = getattr(type(live[0]), "search_parts", None)   # the parts searched as one
        if whole is not None:
            got = whole(live, queries, k, allowed=allowed, cache=self._cache)
            if got is not None:
                return got
        res = [p.search(queries, k, allowed=allowed) for p in live]
        scores = np.concatenate([r[0] for r in res], axis=1)
        slots = np.concatenate([r[1] for r in res], axis=1)
        return topk(np.where(slots < 0, -np.inf, scores), slots, k)

    def score(self, queries: Any, candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        live = self._live()
        if not live:
            return [np.full(len(c), -np.inf, dtype=np.float32) for c in candidates]
        self._share_stats(live)
        if len(live) > 1:
            queries = self._converted(queries, live)
            whole = getattr(type(live[0]), "score_parts", None)
            if whole is not None:
                got = whole(live, queries, candidates, cache=self._cache)
                if got is not None:
                    return got
        out = [np.asarray(s) for s in live[0].score(queries, candidates)]
        for p in live[1:]:
            out = [np.maximum(a, np.asarray(b)) for a, b in zip(out, p.score(queries, candidates))]
        return out

    def close(self) -> None:
        self._cache = {}
        for p in self._all():
            closer = getattr(p, "close", None)
            if callable(closer):
                closer()
