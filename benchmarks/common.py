"""Shared helpers for the benchmark scripts (never part of the test suite).

* :class:`Table`          - rows (part, system, metric, value) echoed to stderr, printed as markdown at the end
* :func:`timed`           - best wall time of a few runs after a warm-up
* :func:`latencies`       - per-call latencies (p50 / p99 / QPS) of one query per call
* :func:`peak_rss_mib`    - peak resident set size of this process (ru_maxrss)
* :func:`milvus_client`   - a Milvus Lite client on a fresh file in a temp folder
* :func:`csr_to_dicts`    - CSR rows as ``{int: float}`` dicts (Milvus / hybridrag sparse input)
* :func:`fit_exponent`    - slope of log(y) over log(n): the growth exponent of a time or size
"""
from __future__ import annotations

import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


class Table:
    """Collects result rows; ``print()`` writes a markdown table with a machine line."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def __call__(self, part: str, system: str, metric: str, value: str) -> None:
        self.rows.append((part, system, metric, value))
        print(f"  {part} | {system} | {metric} | {value}", file=sys.stderr, flush=True)

    def text(self) -> str:
        """The table as ``print()`` writes it."""
        lines = [f"\n<!-- {time.strftime('%Y-%m-%d %H:%M')} {platform.platform()} "
                 f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python "
                 f"{platform.python_version()}, peak RSS {peak_rss_mib():,.0f} MiB; command: {' '.join(sys.argv)} -->",
                 "| part | system | metric | value |\n|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def print(self) -> None:
        print(self.text(), end="")

    def save(self, out: Path, title: str) -> None:
        """Print the table and write it to ``out`` (raw results) under the heading ``title``."""
        text = self.text()
        print(text)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(f"# {title}\n{text}")
        print(f"# raw results: {out}", file=sys.stderr)


def timed(fn: Callable[[], Any], repeat: int = 3, warmup: bool = True) -> float:
    """Best wall time (s) of ``repeat`` runs after one warm-up call (none with ``warmup=False``;
    ``repeat=0``: one cold run)."""
    if repeat == 0:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    if warmup:
        fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def latencies(fn: Callable[[int], Any], n: int, warmup: int = 3) -> dict[str, float]:
    """Call ``fn(i)`` for i in range(n), one at a time: p50 / p99 / mean in ms and QPS."""
    for i in range(min(warmup, n)):
        fn(i)
    lat = np.empty(n)
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        lat[i] = time.perf_counter() - t
    total = time.perf_counter() - t0
    return {"p50": 1000 * float(np.percentile(lat, 50)), "p99": 1000 * float(np.percentile(lat, 99)),
            "mean": 1000 * float(lat.mean()), "qps": n / total}


def paired_timed(fns: list[Callable[[], Any]], repeat: int = 5) -> list[float]:
    """Best wall time (s) of each of ``fns`` over ``repeat`` rounds, the calls interleaved
    after one warm-up each, so load that comes and goes hits them alike; the order rotates
    with the round (a, b, then b, a, ...), so neither always runs right after the other."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for r in range(repeat):
        for j in ((r + i) % len(fns) for i in range(len(fns))):
            t = time.perf_counter()
            fns[j]()
            best[j] = min(best[j], time.perf_counter() - t)
    return best


def paired_latencies(fns: list[Callable[[int], Any]], n: int, warmup: int = 3,
                     rounds: int = 1) -> list[dict[str, float]]:
    """As :func:`latencies` for each of ``fns``, interleaved per query: for query ``i`` every
    ``fn(i)`` runs once, in an order that rotates with ``i`` (and with the round: ``rounds``
    passes over the ``n`` queries, every call one sample). ``qps`` is 1000 / mean."""
    for i in range(min(warmup, n)):
        for fn in fns:
            fn(i)
    lat = np.empty((len(fns), n * rounds))
    for r in range(rounds):
        for i in range(n):
            for j in range(len(fns)):
                jj = (i + r + j) % len(fns)
                t = time.perf_counter()
                fns[jj](i)
                lat[jj, r * n + i] = time.perf_counter() - t
    return [{"p50": 1000 * float(np.percentile(x, 50)), "p99": 1000 * float(np.percentile(x, 99)),
             "mean": 1000 * float(x.mean()), "qps": 1.0 / float(x.mean())} for x in lat]


def fmt_lat(d: dict[str, float]) -> str:
    return f"p50 {d['p50']:.2f} ms; p99 {d['p99']:.2f} ms; {d['qps']:,.0f} q/s"


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mib() -> float:
    """Current resident set size (MiB), from /proc."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def milvus_client(tmp: str | None = None) -> tuple[Any, Path]:
    """A Milvus Lite client on a new database file (returns client, folder)."""
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:  # pragma: no cover - optional peer
        raise ImportError("pip install 'hybridrag[milvus]' to compare with Milvus Lite") from exc
    d = Path(tempfile.mkdtemp(prefix="bench-milvus-", dir=tmp))
    return MilvusClient(uri=str(d / "milvus.db")), d


def csr_to_dicts(m: Any) -> list[dict[int, float]]:
    """Rows of a CSR matrix as ``{term id: weight}`` dicts."""
    ind, dat, ptr = m.indices.tolist(), m.data.tolist(), m.indptr.tolist()
    return [dict(zip(ind[ptr[i]:ptr[i + 1]], dat[ptr[i]:ptr[i + 1]])) for i in range(m.shape[0])]


def fit_exponent(ns: list[int], ys: list[float]) -> float:
    """Least-squares slope of log(y) on log(n) (1.0 = linear growth)."""
    if len(ns) < 2:
        return float("nan")
    return float(np.polyfit(np.log(ns), np.log(ys), 1)[0])


def overlap_at_k(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |top-k(a) & top-k(b)| / |top-k(b)| over rows (-1 padding ignored)."""
    out = []
    for x, y in zip(a, b):
        sx, sy = set(x[x >= 0].tolist()), set(y[y >= 0].tolist())
        out.append(len(sx & sy) / max(len(sy), 1))
    return float(np.mean(out))
