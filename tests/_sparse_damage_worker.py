"""Open damaged SparseIndex files and query them; run by tests/test_sparse_damage.py in a child
process, so that a segfault shows as a failed test, not a dead test runner.

``python tests/_sparse_damage_worker.py CASES_JSON``: CASES_JSON lists ``{"name", "dir", "files",
"config", "queries", "n_slots"}`` (slots below n_slots were written). For each case, in order, the worker prints ``START name`` (flushed), then
loads the index and, unless that raised IndexFormatError (``FORMAT name``), searches (k = 1 and 5;
the numba kernel, its pruned variant and the numpy path; with and without an allowed mask),
scores every slot, removes some slots and searches again, then prints ``OK name``. A result
with NaN, a hit whose score is not finite (BM25; +/-inf is allowed for weighting "none", whose
weights are unbounded) or a padded entry that is not (-inf, -1) prints ``BAD name why`` and
exits 3; any other exception exits 4. Exit 0 after the last case.
"""
from __future__ import annotations

import json
import sys
import traceback

import numpy as np

from hybridrag.errors import IndexFormatError
from hybridrag.stores import _kernels
from hybridrag.stores import sparse as sparse_mod
from hybridrag.stores.sparse import SparseIndex


def check_search(name: str, bm25: bool, scores: np.ndarray, slots: np.ndarray) -> str | None:
    if np.isnan(scores).any():
        return "NaN score"
    pad = slots < 0
    if not np.all(np.isneginf(scores[pad])):
        return "padded entry with a score"
    if bm25 and not np.all(np.isfinite(scores[~pad])):
        return "hit with a non-finite BM25 score"
    if np.isneginf(scores[~pad]).any():
        return "hit scored -inf"
    return None


def check_scores(bm25: bool, arrays: list[np.ndarray]) -> str | None:
    for a in arrays:
        if np.isnan(a).any():
            return "NaN in score()"
        if bm25 and np.isposinf(a).any():
            return "+inf in score()"
    return None


def run_case(case: dict) -> str | None:
    bm25 = case["config"]["weighting"] != "none"
    queries = [{int(t): float(w) for t, w in q.items()} for q in case["queries"]]
    idx = SparseIndex.load(case["dir"], case["files"], case["config"])
    top = int(idx._row_slots.max()) + 1 if len(idx) else 1
    masks = [None] + ([np.arange(top) % 3 != 0] if top < 10**7 else [])   # the engine's mask covers every slot
    cands = [np.r_[0:case["n_slots"] + 3, idx._row_slots[:3]]] * len(queries)
    real_prune, real_avail = sparse_mod._PRUNE_MIN_ROWS, _kernels.AVAILABLE
    try:
        for prune, avail in ((real_prune, real_avail), (0, real_avail), (real_prune, False)):
            sparse_mod._PRUNE_MIN_ROWS, _kernels.AVAILABLE = prune, avail
            for mask in masks:
                for k in (1, 5):
                    why = check_search(case["name"], bm25, *idx.search(queries, k, allowed=mask, threads=1))
                    if why:
                        return f"{why} (k={k}, prune={prune}, kernel={avail}, mask={mask is not None})"
            why = check_scores(bm25, idx.score(queries, cands))
            if why:
                return why
    finally:
        sparse_mod._PRUNE_MIN_ROWS, _kernels.AVAILABLE = real_prune, real_avail
    idx.remove(np.r_[0:case["n_slots"]:5, idx._row_slots[:3]])
    why = check_search(case["name"], bm25, *idx.search(queries, 5))
    return why or check_scores(bm25, idx.score(queries, cands))


def main() -> int:
    with open(sys.argv[1]) as fh:
        cases = json.load(fh)
    for case in cases:
        print("START", case["name"], flush=True)
        try:
            why = run_case(case)
        except IndexFormatError:
            print("FORMAT", case["name"], flush=True)
            continue
        except Exception:  # noqa: BLE001 - reported to the test as a failure
            traceback.print_exc()
            print("ERROR", case["name"], flush=True)
            return 4
        if why:
            print("BAD", case["name"], why, flush=True)
            return 3
        print("OK", case["name"], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
