"""Query planner: first-stage retrieval, exact rescoring of the candidate union, fusion.

The planner is batch-first: it takes encoded queries for every enabled mode and the
stores, and returns, per query, the fused ranking of candidates with the exact score
every candidate has in every enabled mode and the rank it had in each first stage.

Steps for each query:

1. each first-stage mode (``dense``, ``sparse``, ``bm25``) retrieves its own ``depth``
   candidates, restricted to the ``allowed`` slots (filters are applied before top-k);
2. candidates = the union of those slots;
3. every candidate is scored exactly in every enabled mode (``store.score``), so a mode
   that did not retrieve a candidate still gives its real score, never a stand-in 0
   (a store whose search scores are exact, ``search_scores_exact``, scores only the
   candidates other modes brought); ColBERT MaxSim runs here on the candidate set only;
4. :func:`hybridrag.search.fusion.fuse` combines them; candidates are sorted by fused
   score (ties: smaller slot first). The weights fusion gave each mode for the query
   (per query for ``adaptive``, from the scores and the query's :func:`query_coverage`)
   are kept for explain output.

Reranking with a cross-encoder needs the chunk texts: it is the next stage
(:mod:`hybridrag.search.rerank`, run by :mod:`hybridrag.search.execute`). Tested in ``tests/test_index.py`` (the planner against brute
force over every mode), ``tests/test_planner.py`` (first-stage ranks) and
``tests/test_fusion.py``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import unicodedata

import numpy as np

from hybridrag import modes as _modes
from hybridrag.search import fusion as fusion_mod
from hybridrag.stores.base import rank_order

FIRST_STAGE = _modes.FIRST_STAGE   # modes that retrieve candidates (hybridrag/modes.py)
NEURAL = _modes.NEURAL             # modes the neural encoder's one pass gives
MIN_CHARS_PER_PIECE = 2.0  # a word split into shorter pieces than this (on average) is not covered


def _is_ideograph(ch: str) -> bool:
    o = ord(ch)
    return 0x3400 <= o <= 0x4DBF or 0x4E00 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF or 0x3040 <= o <= 0x30FF \
        or 0x20000 <= o <= 0x2FFFF


def _words(text: str) -> list[str]:
    """Runs of letters, marks and digits; each CJK ideograph or kana is a word of its own
    (as the tokenizers of BERT and XLM-R treat them)."""
    words: list[str] = []
    cur: list[str] = []
    for ch in text:
        if _is_ideograph(ch):
            if cur:
                words.append("".join(cur))
                cur = []
            words.append(ch)
        elif unicodedata.category(ch)[0] in "LMN":
            cur.append(ch)
        elif cur:
            words.append("".join(cur))
            cur = []
    if cur:
        words.append("".join(cur))
    return words


def term_coverage(tokens: Sequence[Sequence[str]], vocabulary: Mapping[str, int]) -> np.ndarray:
    """Share of each query's analysed terms (BM25) that occur in the index's vocabulary:
    float64 ``[n]``, 0 for a query with no term. An analyser that cannot split a language
    into the words its documents use (Chinese without segmentation) matches few terms."""
    return np.array([sum(t in vocabulary for t in toks) / len(toks) if len(toks) else 0.0 for toks in tokens],
                    dtype=np.float64)


def query_coverage(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """Share of each text's words (:func:`_words`) that ``tokenizer`` encodes without an
    unknown token, in one piece or in pieces of at least :data:`MIN_CHARS_PER_PIECE`
    characters on average: float64 ``[n]``, 0 for a text with no word.

    A vocabulary that does not know a script spells its words out letter by letter (an
    English WordPiece vocabulary on Hindi or Arabic) or gives ``[UNK]`` (on most Chinese
    characters); rare words of a language it knows still come in pieces of a few letters
    ("bisphenol" -> bis ##phe ##no ##l). ``adaptive`` fusion uses this to tell whether
    the model read the query.
    """
    per_text = [_words(t) for t in texts]
    flat = [w for ws in per_text for w in ws]
    unk = getattr(tokenizer, "unk_token_id", None)
    ok = []
    if flat:
        enc = tokenizer(flat, add_special_tokens=False)["input_ids"]
        ok = [0 < len(ids) and unk not in ids and (len(ids) == 1 or len(w) / len(ids) >= MIN_CHARS_PER_PIECE)
              for w, ids in zip(flat, enc)]
    out = np.zeros(len(texts), dtype=np.float64)
    pos = 0
    for i, ws in enumerate(per_text):
        if ws:
            out[i] = sum(ok[pos:pos + len(ws)]) / len(ws)
        pos += len(ws)
    return out


@dataclass
class QueryPlan:
    """What to run for a batch of queries (built from the pipeline plus per-call overrides)."""

    modes: list[str]
    depths: dict[str, int]
    fusion: str = "weighted"
    weights: dict[str, float] = field(default_factory=dict)
    rrf_k: int = 60
    k: int = 10
    rerank: bool = False
    rerank_k: int = 100
    budget_ms: float = 0.0   # the call's time budget (0: none); see hybridrag.search.budget

    @property
    def first_stage(self) -> list[str]:
        return [m for m in self.modes if m in FIRST_STAGE]


@dataclass
class Candidates:
    """The fused ranking of one query's candidates, best first.

    ``slots`` int64 ``[m]``; ``fused`` float64 ``[m]``; ``scores[mode]`` float64 ``[m]``;
    ``ranks[mode]`` int64 ``[m]`` with the 1-based first-stage rank, 0 where that mode did
    not retrieve the candidate; ``weights[mode]`` the weight fusion gave the mode for this
    query (summing to 1; see :func:`hybridrag.search.fusion.effective_weights`).
    """

    slots: np.ndarray
    fused: np.ndarray
    scores: dict[str, np.ndarray]
    ranks: dict[str, np.ndarray]
    weights: dict[str, float] = field(default_factory=dict)

    def take(self, n: int) -> "Candidates":
        return Candidates(self.slots[:n], self.fused[:n], {m: s[:n] for m, s in self.scores.items()},
                          {m: r[:n] for m, r in self.ranks.items()}, self.weights)

    def reorder(self, order: np.ndarray) -> "Candidates":
        return Candidates(self.slots[order], self.fused[order], {m: s[order] for m, s in self.scores.items()},
                          {m: r[order] for m, r in self.ranks.items()}, self.weights)


def _ranks(hits: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """1-based rank of each of ``slots`` in one mode's hit list ``hits`` (best first, ``-1``
    padding, no repeats), 0 where absent (a few numpy calls instead of a dict per query)."""
    hits = hits[hits >= 0]
    if hits.shape[0] == 0:
        return np.zeros(slots.shape[0], dtype=np.int64)
    order = np.argsort(hits, kind="stable")
    pos = np.minimum(np.searchsorted(hits, slots, sorter=order), hits.shape[0] - 1)
    found = hits[order[pos]] == slots
    return np.where(found, order[pos] + 1, 0).astype(np.int64)


def _exact_scores(store: Any, queries: Sequence[Any], unions: list[np.ndarray],
                  stage: tuple[np.ndarray, np.ndarray] | None, ranks: list[np.ndarray] | None) -> list[np.ndarray]:
    """Each query's exact score (float64) of every slot of its ``unions`` in one mode.

    A store whose ``search`` returns the exact scores (``search_scores_exact``: the ones
    ``score`` gives, bit for bit) already scored the candidates it retrieved itself: ``stage``
    (its ``(scores, slots)``) and ``ranks`` (each union slot's 1-based rank in it, 0 where
    absent) give those, and ``score`` runs on the others only, once per call and not at all
    when there is none (a one-mode search: every candidate is its own).
    """
    if stage is None or ranks is None or not getattr(store, "search_scores_exact", False):
        return [np.asarray(s, dtype=np.float64) for s in store.score(queries, unions)]
    out = []
    rest: list[np.ndarray] = []
    for qi, (u, r) in enumerate(zip(unions, ranks)):
        got = np.empty(len(u), dtype=np.float64)
        own = r > 0
        got[own] = stage[0][qi][r[own] - 1]
        out.append(got)
        rest.append(u[~own])
    if any(len(x) for x in rest):
        for qi, s in enumerate(store.score(queries, rest)):
            out[qi][ranks[qi] == 0] = np.asarray(s, dtype=np.float64)
    return out


def run(plan: QueryPlan, queries: Mapping[str, Sequence[Any]], stores: Mapping[str, Any],
        allowed: np.ndarray | None = None, coverage: Mapping[str, np.ndarray] | None = None) -> list[Candidates]:
    """Execute ``plan`` for a batch.

    ``queries[mode]`` holds the encoded queries for that mode (a float32 ``[nq, d]`` array
    for dense, a list of ``dict[int, float]`` for sparse/bm25, a list of ``[t, d]`` arrays
    for colbert). ``stores[mode]`` follows the store protocol in ``docs/CONTRACTS.md``.
    ``coverage[mode]`` (``[nq]``; :func:`query_coverage` with the encoder's tokenizer for
    the neural modes, :func:`term_coverage` for bm25) is how well each mode's vocabulary
    covers each query; ``adaptive`` fusion uses it (a mode absent from it counts as 1).
    """
    first = plan.first_stage
    if not first:
        raise ValueError(f"no first-stage mode among {plan.modes}; need one of {FIRST_STAGE}")
    nq = len(queries[first[0]])
    stage: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for mode in first:
        scores, slots = stores[mode].search(queries[mode], plan.depths[mode], allowed=allowed)
        stage[mode] = (np.asarray(scores), np.asarray(slots))

    unions: list[np.ndarray] = []
    if len(first) == 1:   # one first stage: its hits (no repeats) in its order; rank = position
        unions = [h[h >= 0].astype(np.int64) for h in stage[first[0]][1]]
        ranks = {first[0]: [np.arange(1, len(u) + 1, dtype=np.int64) for u in unions]}
    else:
        for qi in range(nq):
            u = np.unique(np.concatenate([stage[m][1][qi] for m in first]))
            unions.append(u[u >= 0].astype(np.int64))
        ranks = {m: [_ranks(stage[m][1][qi], unions[qi]) for qi in range(nq)] for m in first}
    exact: dict[str, list[np.ndarray]] = {}
    for mode in plan.modes:
        exact[mode] = _exact_scores(stores[mode], queries[mode], unions, stage.get(mode), ranks.get(mode))

    out: list[Candidates] = []
    for qi in range(nq):
        slots = unions[qi]
        per_mode = {m: exact[m][qi] for m in plan.modes}
        cov = None if coverage is None else {m: float(coverage[m][qi]) for m in plan.modes if m in coverage}
        fused = fusion_mod.fuse(plan.fusion, slots, per_mode, plan.weights, rrf_k=plan.rrf_k, coverage=cov)
        used = fusion_mod.effective_weights(plan.fusion, per_mode, plan.weights, coverage=cov)
        order = rank_order(fused, slots)
        out.append(Candidates(slots, fused, per_mode, {m: r[qi] for m, r in ranks.items()}, used)
                   .reorder(order))
    return out
