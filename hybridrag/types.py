"""Documents, chunks and search hits: the small value types every part shares."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping


@dataclass(frozen=True)
class Document:
    """A source document: a string id, its text, and JSON-serialisable metadata."""

    id: str
    text: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    """A piece of a document, as indexed.

    ``start``/``end`` are character offsets into the original document text, so that
    ``document.text[start:end] == chunk.text``. ``chunk_id`` is deterministic:
    ``f"{doc_id}#{ordinal}"``.
    """

    chunk_id: str
    doc_id: str
    ordinal: int
    text: str
    start: int
    end: int
    n_tokens: int = 0
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Hit:
    """One search result.

    ``score`` is the final score (after fusion, and after reranking when enabled).
    ``scores`` holds the exact per-mode scores (``dense``, ``sparse``, ``bm25``,
    ``colbert``, ``fused``, ``rerank`` as applicable) and ``ranks`` the 1-based rank
    the chunk had in each first-stage retriever that returned it (absent when that
    retriever did not return it). ``weights`` holds the weight fusion gave each mode for
    this query (summing to 1; per query with ``adaptive`` fusion).
    """

    chunk_id: str
    doc_id: str
    text: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)
    span: tuple[int, int] = (0, 0)
    scores: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "chunk_id": self.chunk_id, "doc_id": self.doc_id, "text": self.text,
            "score": self.score, "metadata": self.metadata, "span": list(self.span),
            "scores": self.scores, "ranks": self.ranks, "weights": self.weights,
        }


class SearchResults(list):  # type: ignore[type-arg]  # list[Hit]
    """The hits of one query, best first: a plain ``list`` of :class:`Hit` (compare, slice,
    serialise it as one) that also carries ``notes``, a tuple of sentences saying why fewer
    hits, or none, came back than were asked for: e.g. ``"no query terms for 'bm25': ..."``
    or ``"no document has metadata key 'colour'"``. Empty when there is nothing to say.
    ``timing``: with a time budget, what the planner chose and spent (else ``None``).
    """

    def __init__(self, hits: Iterable[Hit] = (), notes: Iterable[str] = ()) -> None:
        super().__init__(hits)
        self.notes: tuple[str, ...] = tuple(notes)
        # With a time budget: what the planner chose and spent (milliseconds), shared by the
        # results of one call: budget_ms, retrieval_ms, rerank_depth, rerank_max_length,
        # predicted_rerank_ms, rerank_ms, total_ms (docs/BUDGET.md). None without a budget.
        self.timing: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"hits": [hit.to_dict(), ...], "notes": [...]}`` plus ``"timing"`` with a
        budget (the HTTP API's shape); ``json.dumps(results)`` itself fails on the Hit objects."""
        out: dict[str, Any] = {"hits": [h.to_dict() for h in self], "notes": list(self.notes)}
        if self.timing is not None:
            out["timing"] = self.timing
        return out

    def __repr__(self) -> str:
        return f"SearchResults({list.__repr__(self)}, notes={self.notes!r})"
