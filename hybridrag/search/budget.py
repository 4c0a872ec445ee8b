"""A time budget the search keeps: how many candidates to rerank, and at what passage length.

A search call with a budget (``rerank.budget_ms`` or ``search(..., budget_ms=...)``) runs
retrieval and fusion as always, then looks at the time left. The cross-encoder is the one
stage whose cost the planner can choose, and by far the largest on a CPU, so the planner
picks the largest rerank depth ``n`` (from the pipeline's ``rerank.k`` down to the hits asked
for, ``k``) whose predicted time fits; when even ``k`` passages at ``max_length`` do not fit,
it shortens the passages (the longest token limit that fits, not below ``rerank.min_length``);
when nothing fits, it does not rerank and says so in the results' notes.

The rerank is planned to fill :data:`HEADROOM` (85 %) of the time left, leaving room for
the model's error. The prediction comes from a cost model of the cross-encoder on this machine
(:class:`RerankCost`): the reranker sorts pairs by length and runs them in padded batches, so
one call costs about ``a + sum over batches of rows x (b L + c L^2)`` seconds, ``L`` the
batch's longest pair in tokens (``c`` is attention's quadratic share). ``a``, ``b`` and
``c`` are measured on first use (:func:`calibrate`: a few timed calls on made-up pairs,
seconds on a CPU with a full-size model) and kept in a cache file keyed by the model, its
device, dtype, runtime and the torch thread count (``$HYBRIDRAG_CACHE_DIR``, else
``$XDG_CACHE_HOME/hybridrag`` or ``~/.cache/hybridrag``; ``rerank-costs.json``), so a change
of device or threads measures again. Every reranked call then corrects the model: the ratio
of actual to predicted time is followed as a moving average (``scale``), so a busy machine or
a warmer cache is learnt within a few calls. What was chosen, predicted and spent is in each
result's ``timing`` (``hybridrag query --explain`` prints it).

Tested in ``tests/test_budget.py``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["RerankCost", "BudgetChoice", "Planned", "calibrate", "rerank_cost", "choose", "load_models", "plan_rerank",
           "observed", "cache_file"]

CACHE_ENV = "HYBRIDRAG_CACHE_DIR"
_FILE = "rerank-costs.json"
_SCALE_BOUNDS = (0.25, 4.0)
# The rerank is planned to fill this share of the time left: room for the model's error (the
# full-size int8 cross-encoder on 2 CPUs ran 4 % over its prediction at the median, and 2 of 10
# calls went over a 5 s budget planned to fill all of it; docs/BENCHMARKS.md section 12).
HEADROOM = 0.85
_LOCK = threading.Lock()
_MODELS: dict[str, RerankCost] = {}


@dataclass
class RerankCost:
    """Seconds one ``compute_score`` call takes: ``(a + sum_b rows_b (b L_b + c L_b^2)) x scale``."""

    a: float
    b: float
    c: float
    scale: float = 1.0

    def raw(self, lengths: Sequence[int], batch_size: int) -> float:
        """Seconds predicted for pairs of ``lengths`` tokens, before the learnt ``scale``."""
        if not len(lengths):
            return 0.0
        ls = np.sort(np.asarray(lengths, dtype=np.float64))[::-1]
        total = self.a
        for i in range(0, len(ls), batch_size):
            top = ls[i]
            total += min(batch_size, len(ls) - i) * (self.b * top + self.c * top * top)
        return float(total)

    def predict(self, lengths: Sequence[int], batch_size: int) -> float:
        return self.raw(lengths, batch_size) * self.scale

    def observe(self, lengths: Sequence[int], batch_size: int, seconds: float) -> None:
        """Follow the ratio of actual to predicted time (a moving average, bounded)."""
        raw = self.raw(lengths, batch_size)
        if raw > 0 and seconds > 0:
            lo, hi = _SCALE_BOUNDS
            self.scale = min(hi, max(lo, 0.7 * self.scale + 0.3 * seconds / raw))


def cache_file() -> Path:
    """Where measured cost models are kept (see the module doc)."""
    base = os.environ.get(CACHE_ENV)
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = str(Path(xdg) / "hybridrag") if xdg else str(Path.home() / ".cache" / "hybridrag")
    return Path(base) / _FILE


def _key(reranker: Any) -> str:
    import torch

    dtype = "int8" if getattr(reranker, "int8", False) else str(getattr(reranker, "dtype", ""))
    return "|".join([str(getattr(reranker, "name_or_path", type(reranker).__name__)),
                     str(getattr(reranker, "device", "")), dtype, f"runtime={getattr(reranker, 'runtime', 'torch')}",
                     f"threads={torch.get_num_threads()}",
                     f"max_length={getattr(reranker, 'max_length', '')}"])


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _from_entry(entry: Any) -> RerankCost | None:
    try:
        a, b, c = (float(entry[x]) for x in ("a", "b", "c"))
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) and v >= 0 for v in (a, b, c)) or a + b + c <= 0:
        return None
    return RerankCost(a, b, c)


def _write_cache(path: Path, key: str, cost: RerankCost) -> None:
    """Add ``key`` to the cache file (atomically); a cache that cannot be written is skipped."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path)
        data[key] = {"a": cost.a, "b": cost.b, "c": cost.c,
                     "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        fd, tmp = tempfile.mkstemp(prefix=".rerank-costs.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as e:
        logger.debug("cannot write the rerank cost cache %s: %s", path, e)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def calibrate(reranker: Any, batch_size: int) -> RerankCost:
    """Measure ``a``, ``b``, ``c`` of ``reranker`` with four timed calls on made-up pairs (after
    one warm-up call): one pair of about 16 tokens, one of about 128, two of about 256 and the
    16-token pair again (each capped at the reranker's ``max_length``); least squares, every
    term >= 0."""
    from scipy.optimize import nnls

    top = int(getattr(reranker, "max_length", 512))
    reranker.compute_score([("warm up", "the cost model")], batch_size=batch_size)
    rows, secs = [], []
    for n, target in ((1, 16), (1, 128), (2, 256), (1, 16)):
        words = max(1, min(target, top) - 8)
        pairs = [("how long does this take", " ".join(["time"] * words))] * n
        lengths = reranker.pair_lengths(pairs)
        t = time.perf_counter()
        reranker.compute_score(pairs, batch_size=batch_size)
        secs.append(time.perf_counter() - t)
        L = float(max(lengths))
        rows.append([1.0, n * L, n * L * L])
    coef, _ = nnls(np.asarray(rows), np.asarray(secs))
    a, b, c = (float(x) for x in coef)
    if a + b + c <= 0:   # timer resolution on a tiny model: charge the measured mean per call
        a = float(np.mean(secs))
    return RerankCost(a, b, c)


def rerank_cost(reranker: Any, batch_size: int) -> tuple[RerankCost, bool]:
    """The cost model of ``reranker`` (memory, then the cache file, else :func:`calibrate` and
    saved) and whether it was measured in this call."""
    key = _key(reranker)
    with _LOCK:
        got = _MODELS.get(key)
        if got is not None:
            return got, False
        path = cache_file()
        got = _from_entry(_read_cache(path).get(key))
        measured = got is None
        if got is None:
            got = calibrate(reranker, batch_size)
            _write_cache(path, key, got)
        _MODELS[key] = got
        return got, measured


@dataclass(frozen=True)
class BudgetChoice:
    """What the budget allows: rerank the top ``depth`` at ``max_length`` tokens (``depth`` 0:
    no rerank), predicted to take ``predicted_s``."""

    depth: int
    max_length: int
    predicted_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose(cost: RerankCost, lengths: Sequence[Sequence[int]], k: int, rerank_k: int, max_length: int,
           min_length: int, batch_size: int, left_s: float) -> BudgetChoice:
    """The largest rerank depth ``n`` in ``[k, rerank_k]`` (the same for every query of the
    call) whose pairs, ``lengths[q][:n]`` tokens each at ``max_length``, are predicted to take
    at most ``left_s``; else depth ``k`` at the longest token limit in ``[min_length,
    max_length)`` that fits; else depth 0. ``lengths[q]`` are query ``q``'s pair
    lengths at ``max_length``, best fused candidate first; a query with fewer candidates
    reranks all it has."""

    def cost_of(n: int, cap: int) -> float:
        return cost.predict([min(v, cap) for ls in lengths for v in ls[:n]], batch_size)

    def largest(lo: int, hi: int, fits: Any) -> int:
        """The largest x in [lo, hi] with fits(x), given fits(lo) (the cost grows with x)."""
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        return lo

    n = max(1, min(k, rerank_k))
    if cost_of(n, max_length) <= left_s:
        n = largest(n, rerank_k, lambda d: cost_of(d, max_length) <= left_s)
        return BudgetChoice(n, max_length, cost_of(n, max_length))
    if cost_of(n, min_length) > left_s:
        return BudgetChoice(0, min_length, cost_of(n, min_length))
    cap = largest(min_length, max_length - 1, lambda c: cost_of(n, c) <= left_s)
    return BudgetChoice(n, cap, cost_of(n, cap))


def load_models(index: Any, plan: Any) -> float:
    """Load the models a budgeted call of ``plan`` needs (the encoder, the reranker) if they
    are not loaded yet, each with one tiny warm-up call (a model's first call in a process is
    slower: the full-size reranker's first rerank took 18 % over its prediction); return the
    seconds it took (0.0 when both were loaded). It happens once per process, so it is not
    counted against a budget."""
    from hybridrag.modes import MODES

    t = time.perf_counter()
    took = False
    if index._encoder is None and any(MODES[m].neural for m in plan.modes):
        index.encoder.encode_queries(["warm up"])
        took = True
    if plan.rerank and index._reranker is None:
        index.reranker.compute_score([("warm up", "warm up")])
        took = True
    return time.perf_counter() - t if took else 0.0


@dataclass
class Planned:
    """A budgeted call's rerank: ``depth`` (0: none) and ``max_length`` (``None``: the
    reranker's own), and what :func:`observed` needs to learn from the actual time."""

    depth: int
    max_length: int | None
    cost: RerankCost
    lengths: list[int]
    batch_size: int


def plan_rerank(reranker: Any, queries: Sequence[str], tops: Sequence[Any], rows: Any, plan: Any, rcfg: Any,
                t0: float, timing: dict[str, Any], notes: list[str]) -> Planned:
    """Choose the rerank of a call with ``plan.budget_ms`` that started at ``t0``
    (``time.perf_counter``); fills ``timing`` and, when it does not rerank, ``notes``."""
    if not callable(getattr(reranker, "pair_lengths", None)):
        raise TypeError(f"budget_ms needs a reranker with pair_lengths() and compute_score(max_length=...) "
                        f"(hybridrag.rerankers.CrossEncoderReranker); got {type(reranker).__name__}")
    tc = time.perf_counter()
    cost, measured = rerank_cost(reranker, rcfg.batch_size)
    calib = time.perf_counter() - tc if measured else 0.0
    if measured:
        timing["cost_model_ms"] = calib * 1000
        notes.append(f"budget: the reranker's cost on this machine was measured in this call ({calib * 1000:,.0f} ms, "
                     f"not counted against the budget; kept in {cache_file()})")
    top = int(reranker.max_length)
    pairs = [(q, rows[int(s)]["text"]) for q, t in zip(queries, tops) for s in t.slots[:plan.rerank_k]]
    flat = reranker.pair_lengths(pairs) if pairs else []
    lengths, i = [], 0
    for t in tops:
        n = min(len(t.slots), plan.rerank_k)
        lengths.append(flat[i:i + n])
        i += n
    spent = time.perf_counter() - t0 - calib
    left = plan.budget_ms / 1000 - spent
    timing["retrieval_ms"] = spent * 1000
    choice = choose(cost, lengths, plan.k, plan.rerank_k, top, min(rcfg.min_length, top), rcfg.batch_size,
                    left * HEADROOM)
    timing.update(rerank_depth=choice.depth, rerank_max_length=choice.max_length if choice.depth else None,
                  predicted_rerank_ms=choice.predicted_s * 1000 if choice.depth else 0.0)
    if not choice.depth:
        notes.append(f"budget {plan.budget_ms:,.0f} ms: {max(left, 0) * 1000:,.0f} ms were left after retrieval and "
                     f"reranking the top {min(plan.k, plan.rerank_k)} at {choice.max_length} tokens is predicted to "
                     f"take {choice.predicted_s * 1000:,.0f} ms: the hits are in fused order, not reranked")
    chosen = [min(v, choice.max_length) for ls in lengths for v in ls[:choice.depth]]
    return Planned(choice.depth, None if choice.max_length >= top else choice.max_length, cost, chosen,
                   rcfg.batch_size)


def observed(planned: Planned, timing: dict[str, Any], seconds: float) -> None:
    """The rerank of ``planned`` took ``seconds``: report it and let the cost model learn."""
    timing["rerank_ms"] = seconds * 1000
    planned.cost.observe(planned.lengths, planned.batch_size, seconds)
