"""Damaged store files never crash or hang the process: for every file ``save`` wrote
(FaissStore Flat, Flat l2 fp16, HNSW and IVF-PQ; MultiVectorStore fp16, int8 and pq), flipped
bytes and truncations either raise ``IndexFormatError`` at ``load`` or give sane results on
search, score and remove (``tests/_store_damage_worker.py``, run in a subprocess so that a
segfault fails the test instead of killing the runner)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("_store_damage_worker.py")
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("config", ["faiss-flat", "faiss-flat-l2-fp16", "faiss-hnsw", "faiss-ivfpq",
                                    "mv-fp16", "mv-int8", "mv-pq"])
def test_damaged_files_raise_index_format_error_or_give_sane_results(config: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    try:
        run = subprocess.run([sys.executable, str(WORKER), config], capture_output=True, text=True,
                             timeout=240, env=env, check=False)
    except subprocess.TimeoutExpired as exc:
        last = (exc.stdout or b"")[-300:]
        pytest.fail(f"{config}: a damaged file hung load/search/score; last cases: {last!r}")
    tail = "\n".join(run.stdout.splitlines()[-15:])
    assert run.returncode == 0, (f"{config}: exit code {run.returncode} (negative: killed by signal) "
                                 f"on the case printed last:\n{tail}\n{run.stderr[-2000:]}")
    assert f"DONE {config}" in run.stdout
