"""Damaged SparseIndex files: every file that ``save`` writes, with bytes flipped or cut off,
either fails ``load`` with IndexFormatError or gives finite results; never a crash (the numba
kernels do no bounds checks, so a bad row id in a posting list used to segfault the process).
The queries run in a child process (tests/_sparse_damage_worker.py), so a crash fails the test."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hybridrag.errors import IndexFormatError
from hybridrag.stores.sparse import SparseIndex
from tests.test_sparse_store import random_rows

WORKER = Path(__file__).with_name("_sparse_damage_worker.py")


def header_len(path: Path) -> int:
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        reader(fh)
        return fh.tell()


def damages(path: Path, seed: int) -> list[tuple[str, bytes]]:
    """(label, new content) for flipped bytes in the header and in the data, and cut files."""
    data = path.read_bytes()
    size, hl = len(data), header_len(path)
    rng = np.random.default_rng(seed)
    spots = {0, 6, 8, hl - 2, hl, hl + 1, hl + 3, hl + 7, (hl + size) // 2, size - 1}
    spots |= set(rng.integers(hl, size, 10).tolist())
    out = []
    for pos in sorted(p for p in spots if 0 <= p < size):
        for mask in (0xFF, 0x80):
            b = bytearray(data)
            b[pos] ^= mask
            out.append((f"flip{mask:x}@{pos}", bytes(b)))
    for cut in sorted({0, hl // 2, hl, (hl + size) // 2, size - 1}):
        out.append((f"cut@{cut}", data[:cut]))
    return out


def build(tmp: Path, weighting: str) -> tuple[dict, dict, list]:
    rng = np.random.default_rng(3)
    docs = random_rows(400, 5, vocab=40, nnz=10, ints=weighting != "none")
    for d in docs[::2]:   # a common term: its queries are scored by dense accumulation
        d[39] = 1.0
    idx = SparseIndex(weighting)
    idx.add(np.arange(400) * 3, docs)   # sparse slots
    idx.remove(np.arange(0, 1200, 21))
    files = idx.save(tmp, "s")
    queries = ([{t: 1.0} for t in range(41)] + [{t: 1.0 for t in range(40)}]
               + [{int(t): 1.0 for t in rng.choice(40, 4, replace=False)} | {39: 2.0} for _ in range(8)])
    return files, idx.config(), queries


@pytest.mark.parametrize("weighting", ["bm25okapi", "none"])
def test_damaged_files_fail_to_load_or_give_finite_results(tmp_path, weighting):
    files, config, queries = build(tmp_path, weighting)
    assert set(files) >= {"indptr", "indices", "values", "slots"}
    cases = []
    for role, name in sorted(files.items()):
        for label, content in damages(tmp_path / name, seed=len(cases)):
            d = tmp_path / f"{role}-{label}"
            d.mkdir()
            for other in files.values():
                if other != name:
                    os.link(tmp_path / other, d / other)
            (d / name).write_bytes(content)
            cases.append({"name": f"{role}:{label}", "dir": str(d), "files": files, "config": config, "n_slots": 1200,
                          "queries": [{str(t): w for t, w in q.items()} for q in queries]})
    cases.append({"name": "undamaged", "dir": str(tmp_path), "files": files, "config": config, "n_slots": 1200,
                  "queries": [{str(t): w for t, w in q.items()} for q in queries]})
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps(cases))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(WORKER), str(spec)], capture_output=True, text=True, timeout=600, check=False,
                          env=env)
    lines = proc.stdout.split("\n")
    started = [ln.split(" ", 1)[1] for ln in lines if ln.startswith("START ")]
    assert proc.returncode == 0, (f"worker exit {proc.returncode} on case {started[-1] if started else None}:\n"
                                  + "\n".join(lines[-5:]) + proc.stderr[-3000:])
    outcome = {ln.split(" ")[1]: ln.split(" ")[0] for ln in lines if ln.startswith(("OK ", "FORMAT "))}
    assert len(outcome) == len(cases) and outcome["undamaged"] == "OK"
    # the checks do catch damage: every cut file, and each flipped high byte of a row id
    assert all(v == "FORMAT" for k, v in outcome.items() if ":cut@" in k)
    hl = header_len(tmp_path / files["indices"])
    assert outcome[f"indices:flipff@{hl + 3}"] == "FORMAT"
    shutil.rmtree(tmp_path, ignore_errors=True)


def _rewrite(path: Path, fn) -> None:
    a = np.load(path)
    path.unlink()
    np.save(path, fn(a.copy()), allow_pickle=False)


def _set(i, v):
    def f(a):
        a[i] = v
        return a
    return f


@pytest.mark.parametrize("role, change, why", [
    ("indptr", _set(0, 1), "from 0"),
    ("indptr", _set(-1, 10**6), "from 0"),
    ("indptr", _set(5, 0), "decrease"),
    ("indptr", lambda a: a.astype(np.int32), "int64"),
    ("indices", _set(0, -1), r"\[0, 342\)"),   # 342 live rows were saved
    ("indices", _set(3, 342), r"\[0, 342\)"),
    ("indices", lambda a: a[::-1].copy(), "increase within a term"),
    ("indices", lambda a: a.astype(np.float64), "int32 or int64"),
    ("values", _set(2, np.nan), "finite"),
    ("values", _set(2, np.inf), "finite"),
    ("values", _set(2, 0.0), "> 0"),
    ("values", _set(2, -1.0), "> 0"),
    ("values", lambda a: a[:-1], "values for"),
    ("values", lambda a: a.astype(np.float64), "float32"),
    ("slots", lambda a: _set(1, a[0])(a), "held by two rows"),
    ("slots", _set(7, -3), "negative"),
    ("slots", lambda a: a.reshape(-1, 2), "1-D"),
    ("doclen", _set(4, -1.0), ">= 0"),
    ("doclen", _set(4, np.inf), "finite"),
    ("doclen", lambda a: a[:-1], "expected 342"),
    ("terms", _set(0, -1), "term ids must increase"),
    ("terms", _set(-1, 1 << 40), "term ids must increase"),   # would ask for 8 TiB of offsets
    ("terms", lambda a: a[:-1], "offsets"),
])
def test_each_check_names_the_file(tmp_path, role, change, why):
    """Each structural check of load: a file changed in that one way raises IndexFormatError
    naming the file and what is wrong."""
    files, config, _ = build(tmp_path, "bm25okapi")
    _rewrite(tmp_path / files[role], change)
    with pytest.raises(IndexFormatError, match=why) as err:
        SparseIndex.load(tmp_path, files, config)
    assert files[role] in str(err.value) or role == "indptr" and "from 0" in why
