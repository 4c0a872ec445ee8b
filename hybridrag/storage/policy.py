"""Which segments to merge: a tiered policy in the manner of Lucene's ``TieredMergePolicy``.

Segments are grouped in tiers by their live rows (tier ``t`` holds segments of about
``floor_rows * segments_per_tier**t`` rows). When a tier holds ``segments_per_tier``
segments, its smallest ones are merged into one segment of the next tier, so every row is
rewritten about ``log(N / floor_rows) / log(segments_per_tier)`` times over the life of an
index and the number of segments stays near ``segments_per_tier`` per tier. A segment whose
deleted rows pass ``max_deleted_fraction`` is rewritten (alone, or with its tier) to reclaim
them. ``max_merge_rows`` bounds the work one commit may do: a merge that would write more
rows is left to :meth:`hybridrag.HybridIndex.optimize`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

__all__ = ["SegmentInfo", "TieredMergePolicy"]


@dataclass(frozen=True)
class SegmentInfo:
    """What the policy sees of a segment: its id, rows written and rows deleted since."""

    id: str
    rows: int
    deleted: int

    @property
    def live(self) -> int:
        return self.rows - self.deleted


@dataclass(frozen=True)
class TieredMergePolicy:
    """Merge ``segments_per_tier`` similar-sized segments at a time (see the module docstring)."""

    segments_per_tier: int = 8
    floor_rows: int = 1000
    max_deleted_fraction: float = 0.3
    max_merge_rows: int = 2_000_000

    def __post_init__(self) -> None:
        for name, lo in (("segments_per_tier", 2), ("floor_rows", 1), ("max_merge_rows", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        f = self.max_deleted_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise ValueError(f"max_deleted_fraction must be a number in (0, 1], got {f!r}")

    def tier(self, live: int) -> int:
        """The tier of a segment holding ``live`` rows."""
        return int(math.log(max(live, self.floor_rows) / self.floor_rows, self.segments_per_tier))

    def select(self, segments: Sequence[SegmentInfo]) -> list[list[str]]:
        """Disjoint groups of segment ids to merge now (each group becomes one segment)."""
        out: list[list[str]] = []
        used: set[str] = set()
        # Rows that are gone: a segment with too many deleted rows is rewritten alone.
        for s in segments:
            if s.rows and s.deleted / s.rows > self.max_deleted_fraction and s.live <= self.max_merge_rows:
                out.append([s.id])
                used.add(s.id)
        # Tiers that are full: merge their smallest segments (ties: the older first).
        tiers: dict[int, list[SegmentInfo]] = {}
        for s in segments:
            if s.id not in used:
                tiers.setdefault(self.tier(s.live), []).append(s)
        for t in sorted(tiers):
            group = sorted(tiers[t], key=lambda s: s.live)
            while len(group) >= self.segments_per_tier:
                take, group = group[: self.segments_per_tier], group[self.segments_per_tier:]
                if sum(s.live for s in take) <= self.max_merge_rows:
                    out.append([s.id for s in take])
        return out
