"""Counters, gauges and histograms for ``GET /metrics``, written in the Prometheus text
exposition format (version 0.0.4) without a client library.

Thread-safe (one lock); label values are a closed set chosen by the server (endpoint
paths it routes, status codes), so the number of series stays bounded.
Covered by ``tests/test_serve.py::test_metrics_parse_as_prometheus_text``.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

# Seconds; request latencies from a cached BM25 hit (well under a millisecond) to a reranked batch (seconds).
LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                      1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer():
        return str(int(v))
    return repr(float(v))


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    esc = (str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for v in values)
    return "{" + ",".join(f'{n}="{v}"' for n, v in zip(names, esc)) + "}"


class _Family:
    def __init__(self, name: str, help_: str, kind: str, labels: Sequence[str]) -> None:
        self.name, self.help, self.kind, self.labels = name, help_, kind, tuple(labels)


class Counter(_Family):
    def __init__(self, name: str, help_: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_, "counter", labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *label_values: str, by: float = 1.0) -> None:
        self.values[label_values] = self.values.get(label_values, 0.0) + by

    def lines(self) -> list[str]:
        return [f"{self.name}{_labels(self.labels, k)} {_fmt(v)}" for k, v in sorted(self.values.items())]


class Gauge(_Family):
    """A gauge read from a callable at scrape time (queue depth, generation)."""

    def __init__(self, name: str, help_: str, read: Callable[[], float]) -> None:
        super().__init__(name, help_, "gauge", ())
        self.read = read

    def lines(self) -> list[str]:
        return [f"{self.name} {_fmt(float(self.read()))}"]


class Histogram(_Family):
    def __init__(self, name: str, help_: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_, "histogram", labels)
        self.buckets = tuple(sorted(buckets))
        self.series: dict[tuple[str, ...], list[float]] = {}  # per-bucket counts (not cumulative), +Inf, sum

    def observe(self, value: float, *label_values: str) -> None:
        s = self.series.get(label_values)
        if s is None:
            s = self.series[label_values] = [0.0] * (len(self.buckets) + 2)
        i = 0
        while i < len(self.buckets) and value > self.buckets[i]:
            i += 1
        s[i] += 1
        s[-1] += value

    def lines(self) -> list[str]:
        out = []
        for key, s in sorted(self.series.items()):
            cum = 0.0
            for le, c in zip((*self.buckets, math.inf), s[:-1]):
                cum += c
                out.append(f"{self.name}_bucket{_labels((*self.labels, 'le'), (*key, _fmt(le)))} {_fmt(cum)}")
            out.append(f"{self.name}_sum{_labels(self.labels, key)} {_fmt(s[-1])}")
            out.append(f"{self.name}_count{_labels(self.labels, key)} {_fmt(cum)}")
        return out


class Metrics:
    """The server's metric families; ``render()`` returns the text for ``GET /metrics``."""

    def __init__(self, queue_depth: Callable[[], float], generation: Callable[[], float]) -> None:
        self._lock = threading.Lock()
        self.requests = Counter("hybridrag_requests_total", "HTTP requests by endpoint and status code.",
                                ("endpoint", "status"))
        self.latency = Histogram("hybridrag_request_duration_seconds",
                                 "HTTP request latency (first byte received to response sent), by endpoint.",
                                 LATENCY_BUCKETS, ("endpoint",))
        self.batch_size = Histogram("hybridrag_search_batch_queries",
                                    "Queries per search_batch call made by the dynamic batcher.", BATCH_BUCKETS)
        self.queries = Counter("hybridrag_queries_total", "Queries searched.")
        self.reloads = Counter("hybridrag_reloads_total", "Index generations loaded while serving, by outcome.",
                               ("outcome",))
        self._gauges = [
            Gauge("hybridrag_queue_depth", "Queries waiting for or in a search batch.", queue_depth),
            Gauge("hybridrag_index_generation", "Committed index generation being served.", generation),
        ]

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests.inc(endpoint, str(status))
            self.latency.observe(seconds, endpoint)

    def batch(self, n_queries: int) -> None:
        with self._lock:
            self.batch_size.observe(float(n_queries))
            self.queries.inc(by=float(n_queries))

    def reload(self, outcome: str) -> None:
        with self._lock:
            self.reloads.inc(outcome)

    def render(self) -> str:
        with self._lock:
            fams: list[_Family] = [self.requests, self.latency, self.batch_size, self.queries, self.reloads,
                                   *self._gauges]
            out: list[str] = []
            for f in fams:
                out.append(f"# HELP {f.name} {f.help}")
                out.append(f"# TYPE {f.name} {f.kind}")
                out.extend(f.lines())  # type: ignore[attr-defined]
        return "\n".join(out) + "\n"
