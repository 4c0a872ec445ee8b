"""Run by ``tests/test_store_damage.py`` in a subprocess (a segfault then fails one test
instead of killing the runner): damage every file a store's ``save`` wrote, one way at a
time, then load, search, score and remove. Each case must raise ``IndexFormatError`` at
load or give sane results: slots ``-1`` or below the slot limit, scores finite (``-inf``
only for absent hits). Prints each case before running it, so a crash names it.

    python tests/_store_damage_worker.py CONFIG     (CONFIG: a key of CONFIGS)
"""
from __future__ import annotations

import inspect
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np

from hybridrag.errors import IndexFormatError
from hybridrag.stores.faiss import FaissStore
from hybridrag.stores.multivector import MultiVectorStore

N = 300          # rows / chunks per store; slots are 0, 2, 4, ...
LIMIT = 1600     # the slot limit an engine would pass (its next slot; above every slot stored)


def _tokens(rng: np.random.Generator, n: int, dim: int = 32) -> list[np.ndarray]:
    centres = np.random.default_rng(99).standard_normal((16, dim)).astype(np.float32)
    out = []
    for _ in range(n):
        x = centres[rng.integers(0, 16, int(rng.integers(2, 10)))] + 0.3 * rng.standard_normal((1, dim))
        out.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
    return out


def _dense(**kw: object) -> tuple[FaissStore, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((N, 16)).astype(np.float32)
    store = FaissStore(16, exact_below=0, **kw)
    store.add(np.arange(0, 2 * N, 2), x)
    store.remove([4])
    return store, x[:3] + 0.01


def _multi(encoding: str) -> tuple[MultiVectorStore, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    n = 800 if encoding == "pq" else N
    store = MultiVectorStore(32, encoding=encoding, pq_train_tokens=4096, pq_train_pool=4096)
    store.add(np.arange(0, 2 * n, 2), _tokens(rng, n))
    store.remove([4])
    return store, _tokens(rng, 2)


CONFIGS = {
    "faiss-flat": lambda: _dense(),
    "faiss-flat-l2-fp16": lambda: _dense(metric="l2", vector_dtype="float16"),
    "faiss-hnsw": lambda: _dense(factory="HNSW8"),
    "faiss-ivfpq": lambda: _dense(factory="IVF4,PQ4", min_train=256, nprobe=2),
    "mv-fp16": lambda: _multi("fp16"),
    "mv-int8": lambda: _multi("int8"),
    "mv-pq": lambda: _multi("pq"),
}


def damages(size: int) -> list[tuple[str, int, int]]:
    """(kind, position, xor mask) cases for a file of ``size`` bytes: the header region
    densely, the rest at spread positions, and truncations."""
    out: list[tuple[str, int, int]] = [("truncate", t, 0) for t in sorted({0, 8, min(64, size - 1), size // 2, size - 1})]
    for p in range(0, min(size, 130), 5):
        out += [("xor", p, 0xFF), ("xor", p, 0x40)]
    out += [("xor", int(p), 0xFF) for p in np.linspace(130, size - 1, 12) if p < size]
    return out


def hnsw_links(data: bytes) -> tuple[int, int]:
    """(byte offset, count) of the int32 link array of an ``IndexHNSWFlat`` file (its layout as
    ``FaissStore._precheck_sizes`` walks it)."""
    import struct

    pos = 4 + 4 + 8 + 16 + 1
    pos += 4 + (4 if struct.unpack_from("<i", data, pos)[0] > 1 else 0)
    for item in (8, 4, 4, 8):
        pos += 8 + struct.unpack_from("<Q", data, pos)[0] * item
    return pos + 8, struct.unpack_from("<Q", data, pos)[0]


def check(store: object, queries: object, k: int = 10) -> None:
    allowed = np.ones(LIMIT * 4, dtype=bool)
    for mask in (None, allowed):
        s, i = store.search(queries, k, mask)
        ok = (i == -1) | ((i >= 0) & (i < LIMIT))
        assert ok.all(), f"search returned slots {i[~ok][:5]}"
        assert np.isfinite(s[i >= 0]).all() and np.isneginf(s[i < 0]).all(), f"search scores {s}"
    for sc in store.score(queries, [np.arange(0, LIMIT + 20, 3)] * len(queries)):
        assert (np.isfinite(sc) | np.isneginf(sc)).all(), f"score gave {sc[~np.isfinite(sc)][:5]}"
    store.remove(np.arange(0, 60, 2))
    s, i = store.search(queries, k)
    assert np.isfinite(s[i >= 0]).all() and ((i == -1) | (i >= 60)).all()


def main(name: str) -> int:
    store, queries = CONFIGS[name]()
    cls = type(store)
    kw = {"slot_limit": LIMIT} if "slot_limit" in inspect.signature(cls.load).parameters else {}
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        good, work = Path(tmp, "good"), Path(tmp, "work")
        good.mkdir()
        files = store.save(good, "seg")
        shutil.copytree(good, work)
        config = store.config()
        check(cls.load(good, files, config, **kw), queries)   # the undamaged files pass
        n_cases = n_error = 0
        for role, fname in sorted(files.items()):
            original = (good / fname).read_bytes()
            cases = damages(len(original))
            if role == "index" and original[:4] == b"IHNf":
                # Links to nodes that do not exist, in the first, middle and last node's lists.
                at, count = hnsw_links(original)
                cases += [("link", at + 4 * j, 0) for j in (0, count // 2, count - 1)]
            for kind, pos, mask in cases:
                case = f"{name} {role} {kind} @{pos}" + (f" ^{mask:#x}" if kind == "xor" else "")
                print(case, flush=True)
                data = bytearray(original[:pos] if kind == "truncate" else original)
                if kind == "xor":
                    data[pos] ^= mask
                elif kind == "link":
                    data[pos:pos + 4] = (10 * N + 7).to_bytes(4, "little")
                (work / fname).write_bytes(bytes(data))
                n_cases += 1
                try:
                    loaded = cls.load(work, files, config, **kw)
                    check(loaded, queries)
                    del loaded
                except IndexFormatError:
                    n_error += 1
                except Exception:   # noqa: BLE001 - every other outcome is a failure, reported
                    failures += 1
                    print(f"FAILED {case}:\n{traceback.format_exc()}", flush=True)
            (work / fname).write_bytes(original)
    print(f"DONE {name}: {n_cases} cases, {n_error} IndexFormatError at load, {failures} failures", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
