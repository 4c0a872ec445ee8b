"""``hybridrag tune``: choose an index's fusion method, weights and depths from labelled queries.

From a few judged queries (a BEIR folder: ``queries.jsonl`` + ``qrels/<split>.tsv``, at least
:data:`MIN_QUERIES`), :func:`tune` scores every setting of a grid (:func:`grid`: the fusion
method, the modes' weights, RRF's ``k`` and each first stage's depth) and picks the best by
nDCG@10 with k-fold cross-validation: the queries are split into ``folds`` parts; for each part
the setting is chosen on the other parts and scored on this one, so a query never scores the
setting it helped choose. The mean over the held-out parts is the estimate of what the tuned
pipeline gives on new queries, beside the active pipeline's score on the same queries. The
setting then chosen on all queries becomes a new version of the index's pipeline
(:meth:`hybridrag.index.HybridIndex.add_pipeline_version`; the old one stays selectable) when
its cross-validated score is above the active pipeline's by more than twice the standard error
of the per-query difference (a gain the folds' luck would not give).

How it scores thousands of settings in seconds: the candidates of a query (the union of the
first stages' top :data:`~hybridrag.eval.fusion_eval.CHUNK_DEPTH` chunks (or the pipeline's depth when deeper), each with its exact
score in every mode) are retrieved once (:func:`~hybridrag.eval.fusion_eval.collect`). A
shallower depth ``d`` for a mode keeps the candidates that mode ranked within ``d`` (or another
mode retrieved): exactly the candidates a search at that depth fuses. Fusion
(:mod:`hybridrag.search.fusion`'s formulas, with one matrix product for all weights of a method)
and the document ranking (best chunk per document, as ``hybridrag eval``) are then computed per
setting. The score is that of the fused ranking before any rerank (rerank settings are not
tuned). nDCG@10 is trec_eval's (:mod:`hybridrag.eval.metrics`); ``tests/test_tune.py`` checks
the scores against real searches of each setting and the folds' separation.
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybridrag.eval.fusion_eval import CHUNK_DEPTH, QueryCandidates, collect
from hybridrag.search import fusion as fusion_mod
from hybridrag.search.planner import FIRST_STAGE

MIN_QUERIES = 20
DEPTHS = (25, 50, 100, 200, 300)
RRF_KS = (10, 30, 60, 100)
CUTOFF = 10   # nDCG@10


@dataclass(frozen=True)
class Setting:
    """One point of the grid: fusion ``method``, ``weights`` (mode -> weight), ``rrf_k`` and
    ``depths`` (first-stage mode -> depth)."""

    method: str
    weights: tuple[tuple[str, float], ...]
    rrf_k: int
    depths: tuple[tuple[str, int], ...]

    def settings(self) -> dict[str, Any]:
        """As pipeline search settings (``"section.key"`` -> value) for a pipeline version."""
        out: dict[str, Any] = {"fusion.method": self.method, "fusion.weights": dict(self.weights),
                               "fusion.rrf_k": self.rrf_k}
        out.update({f"{m}.depth": d for m, d in self.depths})
        return out

    def describe(self) -> str:
        w = " ".join(f"{m}={v:g}" for m, v in self.weights)
        d = " ".join(f"{m}={v}" for m, v in self.depths)
        k = f" rrf_k={self.rrf_k}" if self.method == "rrf" else ""
        return f"{self.method} ({w}){k}; depth {d}"


def _simplex(modes: Sequence[str], steps: int) -> list[tuple[float, ...]]:
    """Weights on a grid of the simplex: every ``(i_1/steps, ..., i_n/steps)`` summing to 1."""
    if len(modes) == 1:
        return [(1.0,)]
    out = []
    for head in itertools.product(range(steps + 1), repeat=len(modes) - 1):
        rest = steps - sum(head)
        if rest >= 0:
            out.append(tuple(round(i / steps, 6) for i in (*head, rest)))
    return out


def grid(pipeline: Any, max_depth: int = CHUNK_DEPTH) -> list[Setting]:
    """The settings :func:`tune` scores; the first is the pipeline's own. Weights: a grid of the
    simplex (steps of 0.05 for two modes, 0.1 for three, 0.2 for more); methods: all of
    :data:`~hybridrag.search.fusion.FUSION_METHODS` (``rrf`` with each ``k`` of :data:`RRF_KS`);
    depths: :data:`DEPTHS` and the pipeline's, each first stage its own with up to two first
    stages, one shared depth with more."""
    modes = list(pipeline.modes)
    first = [m for m in modes if m in FIRST_STAGE]
    f = pipeline.fusion
    own_w = {m: float(f.weights[m]) for m in modes}
    own_d = {m: min(int(getattr(pipeline, m).depth), max_depth) for m in first}
    base = Setting(f.method, tuple(own_w.items()), int(f.rrf_k), tuple(own_d.items()))
    steps = {1: 1, 2: 20, 3: 10}.get(len(modes), 5)
    weights = [tuple(zip(modes, w)) for w in _simplex(modes, steps)]
    depth_values = sorted({d for d in DEPTHS if d <= max_depth} | set(own_d.values()))
    if len(first) <= 2:
        depth_sets = [tuple(zip(first, ds)) for ds in itertools.product(depth_values, repeat=len(first))]
    else:
        depth_sets = [tuple((m, d) for m in first) for d in depth_values]
    out = [base]
    seen = {base}
    for ds in depth_sets:
        for method in fusion_mod.FUSION_METHODS:
            for rk in (sorted(set(RRF_KS) | {base.rrf_k}) if method == "rrf" else [base.rrf_k]):
                for w in weights:
                    s = Setting(method, w, rk, ds)
                    if s not in seen:
                        seen.add(s)
                        out.append(s)
    return out


def _ndcg_rows(fused: np.ndarray, groups: tuple[np.ndarray, np.ndarray, np.ndarray], gains: np.ndarray,
               idcg: float, discount: np.ndarray) -> np.ndarray:
    """nDCG@10 of each row of ``fused`` [W, m], whose columns are in slot order: chunks ranked as
    the engine ranks them (score descending, ties by the smaller slot), documents by their best
    chunk (``hybridrag eval``'s max-P). ``groups``: the columns sorted by document, where each
    document's columns start, and its relevance code."""
    w, m = fused.shape
    by_doc, starts, docs = groups
    order = np.argsort(-fused, axis=1, kind="stable")   # stable: ties keep slot order
    pos = np.empty_like(order)
    np.put_along_axis(pos, order, np.broadcast_to(np.arange(m), (w, m)), axis=1)
    first = np.minimum.reduceat(pos[:, by_doc], starts, axis=1)   # each document's best rank
    k = min(CUTOFF, first.shape[1])
    top = np.argpartition(first, k - 1, axis=1)[:, :k] if first.shape[1] > k else np.broadcast_to(
        np.arange(k), (w, k))
    top = np.take_along_axis(top, np.argsort(np.take_along_axis(first, top, axis=1), axis=1), axis=1)
    return gains[docs[top]] @ discount[:k] / idcg


def score_matrix(cands: Sequence[QueryCandidates], qrels: Mapping[str, Mapping[str, int]],
                 settings: Sequence[Setting], progress: bool = False) -> np.ndarray:
    """nDCG@10 of every setting on every query: float64 ``[len(settings), len(cands)]``."""
    from tqdm import tqdm

    out = np.zeros((len(settings), len(cands)), dtype=np.float64)
    discount = 1.0 / np.log2(np.arange(CUTOFF) + 2.0)
    # settings that share depths are ranked together; within them, those that share a method
    # (and rrf_k) are fused with one matrix product
    by_depths: dict[Any, dict[tuple[str, int | None], list[int]]] = {}
    for i, s in enumerate(settings):
        by_depths.setdefault(s.depths, {}).setdefault((s.method, s.rrf_k if s.method == "rrf" else None), []).append(i)
    plan = []
    for depths, blocks in by_depths.items():
        items = [(method, rk, np.asarray(rows), np.array([[v for _, v in settings[i].weights] for i in rows],
                                                          dtype=np.float64)) for (method, rk), rows in blocks.items()]
        plan.append((depths, np.concatenate([it[2] for it in items]), items))
    modes = [m for m, _ in settings[0].weights] if settings else []
    for q, qc in enumerate(tqdm(cands, desc=f"scoring {len(settings)} settings", unit="query",
                             disable=not progress, leave=False)):
        rel = {d: r for d, r in qrels.get(qc.qid, {}).items() if r >= 1}
        ideal = sorted(rel.values(), reverse=True)[:CUTOFF]
        idcg = float(np.dot(ideal, discount[:len(ideal)]))
        c = qc.cand
        if idcg <= 0 or len(c.slots) == 0:
            continue
        codes_of: dict[Any, int] = {}
        codes = np.array([codes_of.setdefault(d, len(codes_of)) for d in qc.doc_ids], dtype=np.int64)
        gains = np.zeros(len(codes_of), dtype=np.float64)
        for d, j in codes_of.items():
            gains[j] = rel.get(d, 0)
        for depths, all_rows, items in plan:
            keep = np.zeros(len(c.slots), dtype=bool)
            for m, d in depths:
                keep |= (c.ranks[m] > 0) & (c.ranks[m] <= d)
            idx = np.flatnonzero(keep)
            if not idx.size:
                continue
            idx = idx[np.argsort(c.slots[idx], kind="stable")]   # columns in slot order
            mat = np.stack([np.asarray(c.scores[m], dtype=np.float64)[idx] for m in modes])
            by_doc = np.argsort(codes[idx], kind="stable")
            dc = codes[idx][by_doc]
            starts = np.flatnonzero(np.r_[True, dc[1:] != dc[:-1]])
            norm = fusion_mod._normalise(mat)
            fused = []
            for method, rk, _, w in items:
                if method == "weighted":
                    fused.append((w @ mat) / w.sum(axis=1, keepdims=True))
                elif method == "relative":
                    fused.append((w @ norm) / w.sum(axis=1, keepdims=True))
                elif method == "rrf":
                    fused.append(w @ np.stack([1.0 / (rk + fusion_mod.competition_ranks(r)) for r in mat]))
                else:   # adaptive / coverage: the weights of fusion.adaptive_weights for this query, per row
                    ge = np.array([_gain(qc, m) * (max(fusion_mod._peak(r) - fusion_mod.Z_NOISE, fusion_mod.EPS)
                                                   if method == "adaptive" else 1.0)
                                   for m, r in zip(modes, mat)])
                    raw = w * ge
                    tot = raw.sum(axis=1, keepdims=True)
                    wp = np.where(tot > 0, raw / np.where(tot > 0, tot, 1.0), w / w.sum(axis=1, keepdims=True))
                    fused.append((wp @ norm) / wp.sum(axis=1, keepdims=True))
            out[all_rows, q] = _ndcg_rows(np.concatenate(fused), (by_doc, starts, dc[starts]), gains, idcg, discount)
    return out


def _gain(qc: QueryCandidates, mode: str) -> float:
    """The coverage factor ``g_m`` of :func:`hybridrag.search.fusion.adaptive_weights`."""
    c = 1.0 if qc.coverage is None or mode not in qc.coverage else float(qc.coverage[mode])
    return min(max((c - fusion_mod.COVERAGE_LOW) / (fusion_mod.COVERAGE_HIGH - fusion_mod.COVERAGE_LOW), 0.0), 1.0)


def make_folds(n: int, folds: int, seed: int = 0) -> list[np.ndarray]:
    """``folds`` disjoint parts of ``range(n)`` (a seeded shuffle dealt round-robin)."""
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(perm[f::folds]) for f in range(folds)]


def choose(scores: np.ndarray, queries: np.ndarray) -> int:
    """The setting (row of ``scores``) with the best mean over ``queries``; on a tie the first
    (row 0 is the pipeline's own setting, so a tie keeps it)."""
    means = scores[:, queries].mean(axis=1)
    return int(np.flatnonzero(means >= means.max() - 1e-12)[0])


@dataclass
class Fold:
    fold: int
    queries: int
    chosen: Setting
    train: float       # the chosen setting's mean nDCG@10 on the other folds
    before: float      # the active pipeline on this fold
    after: float       # the chosen setting on this fold (held out)


@dataclass
class TuneReport:
    """What :func:`tune` found. ``before``/``after``: mean nDCG@10 over all queries of the active
    pipeline and of each fold's choice on its held-out fold (the cross-validated estimate);
    ``best``: the setting chosen on all queries (``best_score`` its in-sample mean)."""

    queries: int
    folds: list[Fold]
    baseline: Setting
    best: Setting
    best_score: float
    before: float
    after: float
    settings_scored: int
    gain_se: float = 0.0           # standard error of after - before, over the queries
    seconds: dict[str, float] = field(default_factory=dict)
    version: int | None = None     # the pipeline version stored, if any
    notes: list[str] = field(default_factory=list)

    @property
    def improved(self) -> bool:
        """Held out, the tuned settings beat the active one by more than twice the standard error
        of the difference (per query, paired): an improvement, not the luck of the folds."""
        return self.after - self.before > 2 * self.gain_se and self.best != self.baseline

    def table(self) -> str:
        from hybridrag.eval.metrics import results_table

        rows = [{"fold": f.fold + 1, "queries": f.queries, "before": f.before, "after (held out)": f.after,
                 "chosen on the other folds": f.chosen.describe()} for f in self.folds]
        rows.append({"fold": "all", "queries": self.queries, "before": self.before, "after (held out)": self.after,
                     "chosen on the other folds": ""})
        return results_table(rows)

    def to_dict(self) -> dict[str, Any]:
        return {"queries": self.queries, "before": self.before, "after": self.after, "gain_se": self.gain_se,
                "baseline": self.baseline.settings(), "best": self.best.settings(), "best_score": self.best_score,
                "settings_scored": self.settings_scored, "version": self.version, "notes": self.notes,
                "seconds": self.seconds,
                "folds": [{"fold": f.fold + 1, "queries": f.queries, "chosen": f.chosen.settings(),
                           "train": f.train, "before": f.before, "after": f.after} for f in self.folds]}


def cross_validate(scores: np.ndarray, folds: Sequence[np.ndarray]) -> list[tuple[int, float, float, float]]:
    """Per fold ``(chosen row, its train mean, row 0 on the fold, the chosen row on the fold)``:
    each fold's row is chosen from the other folds' columns only."""
    out = []
    n = scores.shape[1]
    for part in folds:
        train = np.setdiff1d(np.arange(n), part)
        best = choose(scores, train)
        out.append((best, float(scores[best, train].mean()), float(scores[0, part].mean()),
                    float(scores[best, part].mean())))
    return out


def held_out(scores: np.ndarray, folds: Sequence[np.ndarray], cv: Sequence[tuple[int, float, float, float]]) -> np.ndarray:
    """Each query's score under the setting its fold chose without it (``cv``: :func:`cross_validate`)."""
    held = np.empty(scores.shape[1])
    for part, (chosen, *_) in zip(folds, cv):
        held[part] = scores[chosen, part]
    return held


def tune(index: Any, beir_folder: str, split: str = "test", folds: int = 5, seed: int = 0,
         max_queries: int | None = None, store: bool = True, force: bool = False, progress: bool = False,
         batch_size: int = 64) -> TuneReport:
    """Tune the fusion of ``index`` on the judged queries of ``beir_folder`` (see the module doc).

    ``store``: add the setting chosen on all queries as a new pipeline version when the
    cross-validated nDCG@10 beats the active pipeline's by more than twice the standard error of
    the per-query difference (:attr:`TuneReport.improved`; ``force``: whenever it differs).
    ``ValueError`` for fewer than :data:`MIN_QUERIES` judged queries, fewer than 2 folds or more
    folds than queries."""
    import time

    from hybridrag.eval.beir import load_beir

    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
    data = load_beir(beir_folder, split=split, corpus=False)   # the index holds the documents
    qids = sorted(q for q in data.queries if any(r >= 1 for r in data.qrels.get(q, {}).values()))
    if max_queries is not None:
        qids = qids[:max_queries]
    if len(qids) < max(MIN_QUERIES, folds):
        raise ValueError(f"{beir_folder} split {split!r}: {len(qids)} queries with a relevant document; "
                         f"tuning needs at least {max(MIN_QUERIES, folds)} ({folds} folds)")
    t0 = time.perf_counter()
    # candidates as deep as the grid's deepest depth, or the pipeline's own when that is deeper
    depth = max([CHUNK_DEPTH] + [getattr(index.pipeline, m).depth for m in index.pipeline.first_stage_modes])
    cands = collect(index, qids, [data.queries[q] for q in qids], depth=depth, batch_size=batch_size,
                    progress=progress)
    t1 = time.perf_counter()
    settings = grid(index.pipeline, max_depth=depth)
    scores = score_matrix(cands, data.qrels, settings, progress=progress)
    t2 = time.perf_counter()
    parts = make_folds(len(qids), folds, seed)
    cv = cross_validate(scores, parts)
    fold_rows = [Fold(i, len(p), settings[b], tr, bf, af) for i, (p, (b, tr, bf, af)) in enumerate(zip(parts, cv))]
    n = len(qids)
    held = held_out(scores, parts, cv)
    gain = held - scores[0]
    best = choose(scores, np.arange(n))
    report = TuneReport(n, fold_rows, settings[0], settings[best], float(scores[best].mean()),
                        float(scores[0].mean()), float(held.mean()), len(settings),
                        float(gain.std(ddof=1) / np.sqrt(n)), {"retrieve": t1 - t0, "score": t2 - t1})
    if index.pipeline.rerank.enabled:
        report.notes.append("the pipeline reranks: the fused ranking before the rerank was tuned")
    if store and report.best != report.baseline and (report.improved or force):
        note = (f"hybridrag tune: {Path(beir_folder).name} {split}, {n} queries, {folds}-fold nDCG@10 "
                f"{report.before:.4f} -> {report.after:.4f}")
        report.version = index.add_pipeline_version(report.best.settings(), note=note)
    elif store:
        report.notes.append("nothing stored: " + ("the active setting is the best one" if report.best == report.baseline
                                                  else "held out, the tuned settings did not beat the active one "
                                                       "by twice the standard error (force to store them anyway)"))
    return report
