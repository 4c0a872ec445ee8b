"""Load test of ``hybridrag serve`` against the in-process library, on 127.0.0.1 only.

Builds (or reuses, ``--index``) an index of the first ``--docs`` SciFact documents with
``pipelines/offline.toml`` (BM25 + all-MiniLM-L6-v2, offline), starts ``hybridrag serve``
as a subprocess on a free port, and measures, with SciFact test queries:

1. the library in process: ``search_batch`` (batches of 64) and one query per call;
2. the server, one client, one query per request (HTTP round trip + batching overhead);
3. the server, ``--clients`` concurrent clients x ``--requests`` one-query requests
   (threads, each with its own keep-alive connection), p50/p99 per request and throughput;
   the results are compared with the library's one-query calls (ordered ids; score gap);
4. the same while a writer process upserts the next documents of the corpus and commits
   every ``--commit-docs`` documents: errors, generations served, and after the writer is
   done the served results compared with a fresh load of the final generation.

Every loop is bounded in count and in time (``--time-limit`` per phase). Prints a markdown
table with a machine line; ``--out`` also writes it to a file (benchmarks/results/).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from common import ROOT, Table, fmt_lat, latencies

from hybridrag.cli import quiet_model_loading
from hybridrag.client import RemoteIndex
from hybridrag.index import HybridIndex


def read_jsonl(path: Path, n: int | None = None) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.append(json.loads(line))
                if n is not None and len(out) >= n:
                    break
    return out


def corpus_docs(beir: Path, start: int, n: int, rev: str = "") -> list[dict]:
    """Documents start..start+n of the corpus; ``rev`` (metadata) makes an upsert replace them."""
    rows = read_jsonl(beir / "corpus.jsonl", start + n)[start:]
    return [{"id": r["_id"], "text": (r.get("title", "") + "\n\n" + r["text"]).strip(),
             "metadata": {"title": r.get("title", ""), **({"rev": rev} if rev else {})}} for r in rows]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: Path, port: int, env: dict, log: Path, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hybridrag.cli", "serve", str(index), "--host", "127.0.0.1", "--port", str(port),
           *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not answer /health within 180 s")


def run_clients(url: str, queries: list[str], k: int, clients: int, requests: int,
                time_limit: float, until: Any = None) -> dict:
    """``clients`` threads x ``requests`` one-query requests (with ``until``: on until it
    returns True, at most 100x as many); per-request latencies, errors, results by query
    index, generations seen. Throughput counts from the moment all clients are connected."""
    lat: list[float] = []
    errors: list[str] = []
    results: dict[int, list[tuple[str, float]]] = {}
    gens: set[int] = set()
    lock = threading.Lock()
    deadline = time.monotonic() + time_limit
    start: list[float] = []
    barrier = threading.Barrier(clients, action=lambda: start.append(time.perf_counter()))

    def client(c: int) -> None:
        remote = RemoteIndex(url, timeout=60)
        remote.search(queries[c % len(queries)], k=k)   # connect before the clock starts
        barrier.wait()
        mine = []
        for i in range(requests if until is None else 100 * requests):
            if time.monotonic() > deadline or (until is not None and i >= requests and until()):
                break
            qi = (c * requests + i) % len(queries)
            t = time.perf_counter()
            try:
                hits = remote.search(queries[qi], k=k)
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                continue
            mine.append(time.perf_counter() - t)
            with lock:
                results.setdefault(qi, [(h.chunk_id, h.score) for h in hits])
                gens.add(remote.generation)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=time_limit + 120)
    wall = time.perf_counter() - start[0]
    a = np.array(lat) if lat else np.array([np.nan])
    return {"n": len(lat), "errors": errors, "p50": 1000 * float(np.percentile(a, 50)),
            "p99": 1000 * float(np.percentile(a, 99)), "qps": len(lat) / wall, "results": results, "gens": gens}


def batch_counts(url: str) -> tuple[float, float]:
    """(search_batch calls, queries in them) so far, from the server's /metrics."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    got = {}
    for line in text.splitlines():
        if line.startswith(("hybridrag_search_batch_queries_count", "hybridrag_search_batch_queries_sum")):
            name, value = line.split()
            got[name] = float(value)
    return got.get("hybridrag_search_batch_queries_count", 0.0), got.get("hybridrag_search_batch_queries_sum", 0.0)


def compare(results: dict[int, list[tuple[str, float]]], want: dict[int, list[tuple[str, float]]]) -> str:
    same = sum(1 for qi, r in results.items() if [c for c, _ in r] == [c for c, _ in want[qi]])
    gap = max((abs(a[1] - b[1]) for qi, r in results.items() for a, b in zip(r, want[qi])), default=0.0)
    return f"{same}/{len(results)} queries same ordered top-k ids; max score gap {gap:.1e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", type=Path, default=Path("/work/shared/data/beir/scifact"))
    ap.add_argument("--docs", type=int, default=1000, help="index the first N documents")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=50, help="requests per client")
    ap.add_argument("--write-docs", type=int, default=200, help="documents the writer upserts in phase 4")
    ap.add_argument("--commit-docs", type=int, default=20, help="writer commits every this many documents")
    ap.add_argument("--time-limit", type=float, default=240.0, help="seconds per phase at most")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="torch intra-op threads in every process (OMP_NUM_THREADS); 0: torch's default")
    ap.add_argument("--index", type=Path, default=None,
                    help="build (or reuse) the index here and keep it (else a temp dir); phase 4 leaves the "
                         "writer's documents in it, so a reused index holds more than --docs")
    ap.add_argument("--query-cache", type=int, default=0,
                    help="encoder.query_cache of the index built (0: every request is encoded, as for "
                         "queries never seen before; the default 1,024 would serve the repeated queries "
                         "of this test from the cache)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)])}
    os.environ["HF_HUB_OFFLINE"] = "1"
    quiet_model_loading()   # model-load reports off the output, as on the command line
    table = Table()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
        env["OMP_NUM_THREADS"] = str(args.torch_threads)
    import torch

    table("setup", "setup", "torch intra-op threads per process", str(torch.get_num_threads()))
    tmp = tempfile.TemporaryDirectory()
    index = args.index or Path(tmp.name) / "idx"
    part = f"{args.beir.name} first {args.docs} docs, offline pipeline"
    if not (index / "manifest.json").exists():
        t = time.perf_counter()
        from hybridrag.config import load_pipeline

        cfg = load_pipeline(str(ROOT / "pipelines" / "offline.toml")).to_dict()
        cfg["encoder"]["query_cache"] = args.query_cache
        idx = HybridIndex.create(index, cfg)
        idx.upsert(corpus_docs(args.beir, 0, args.docs))
        idx.close()
        table(part, "setup", "index build s", f"{time.perf_counter() - t:.1f}")
    queries = [q["text"] for q in read_jsonl(args.beir / "queries.jsonl", args.queries)]
    lib = HybridIndex.load(index)
    table(part, "setup", "chunks; queries; k; encoder.query_cache",
          f"{len(lib)}; {len(queries)}; {args.k}; {lib.pipeline.encoder.query_cache}")

    # 1. the library in process
    lib.search_batch(queries[:8], k=args.k)
    t = time.perf_counter()
    for i in range(0, len(queries), 64):
        lib.search_batch(queries[i:i + 64], k=args.k)
    dt = time.perf_counter() - t
    table(part, "library in process", "search_batch (64 per call)", f"{len(queries) / dt:,.0f} q/s")
    want = {i: [(h.chunk_id, h.score) for h in lib.search(q, k=args.k)] for i, q in enumerate(queries)}
    table(part, "library in process", "one query per call",
          fmt_lat(latencies(lambda i: lib.search(queries[i % len(queries)], k=args.k), len(queries))))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out_dir = Path(tmp.name)
    server = start_server(index, port, env, out_dir / "server.log", ["--writable", "--reload-ms", "100"])
    try:
        # 2. one client, one query per request
        remote = RemoteIndex(url)
        remote.search(queries[0], k=args.k)   # the server loads its model at the first query
        one = run_clients(url, queries, args.k, 1, len(queries), args.time_limit)
        table(part, "server, 1 client", "one query per request",
              f"p50 {one['p50']:.2f} ms; p99 {one['p99']:.2f} ms; {one['qps']:,.0f} q/s; {len(one['errors'])} errors")
        table(part, "server, 1 client", "vs library one query per call", compare(one["results"], want))

        # 3. concurrent clients
        calls0, queries0 = batch_counts(url)
        many = run_clients(url, queries, args.k, args.clients, args.requests, args.time_limit)
        calls1, queries1 = batch_counts(url)
        name = f"server, {args.clients} clients x {args.requests}"
        table(part, name, "one query per request",
              f"p50 {many['p50']:.2f} ms; p99 {many['p99']:.2f} ms; {many['qps']:,.0f} q/s; "
              f"{len(many['errors'])} errors")
        table(part, name, "vs library one query per call", compare(many["results"], want))
        table(part, name, "search_batch calls; mean queries per call (batcher)",
              f"{calls1 - calls0:,.0f}; {(queries1 - queries0) / max(calls1 - calls0, 1):.2f}")

        # 4. the same while a writer process upserts and commits
        writer_code = (
            "import sys, json; from hybridrag.index import HybridIndex; sys.path.insert(0, sys.argv[4]);"
            "from bench_serve import corpus_docs; from pathlib import Path;"
            "idx = HybridIndex.load(sys.argv[1]); docs = corpus_docs(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[5]), rev=sys.argv[7]);"
            "step = int(sys.argv[6]); idx.encoder; print('ready', flush=True);"
            "[idx.upsert(docs[i:i + step]) for i in range(0, len(docs), step)]; print(idx.generation); idx.close()")
        gen0 = remote.health()["generation"]
        writer = subprocess.Popen([sys.executable, "-c", writer_code, str(index), str(args.beir), str(args.docs),
                                   str(Path(__file__).parent), str(args.write_docs), str(args.commit_docs), time.strftime("%Y%m%d%H%M%S")],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            assert writer.stdout is not None
            seen = []   # wait until the writer's model is loaded, so that its commits overlap the clients
            for line in writer.stdout:
                seen.append(line.decode(errors="replace"))
                if seen[-1].startswith("ready"):
                    break
            else:
                raise RuntimeError(f"writer failed: {''.join(seen)[-2000:]}")
            # the clients go on until the writer is done (bounded in count and time)
            during = run_clients(url, queries, args.k, args.clients, args.requests, args.time_limit,
                                 until=lambda: writer.poll() is not None)
            w_out = writer.communicate(timeout=args.time_limit + 300)[0].decode()
        finally:
            if writer.poll() is None:
                writer.kill()
        if writer.returncode != 0:
            raise RuntimeError(f"writer failed: {w_out[-2000:]}")
        final_gen = int(w_out.strip().splitlines()[-1])
        name = f"server, {args.clients} clients x {args.requests}, writer committing"
        table(part, name, "one query per request",
              f"p50 {during['p50']:.2f} ms; p99 {during['p99']:.2f} ms; {during['qps']:,.0f} q/s; "
              f"{len(during['errors'])} errors")
        table(part, name, "generations served during the phase",
              f"{len(during['gens'])} ({min(during['gens'], default=0)}..{max(during['gens'], default=0)}; "
              f"writer went {gen0} -> {final_gen}, {args.write_docs} docs, a commit per {args.commit_docs})")
        deadline = time.monotonic() + 60
        while remote.health()["generation"] != final_gen and time.monotonic() < deadline:
            time.sleep(0.1)
        fresh = HybridIndex.load(index)
        want_final = {i: [(h.chunk_id, h.score) for h in fresh.search(q, k=args.k)] for i, q in enumerate(queries)}
        after = {i: [(h.chunk_id, h.score) for h in remote.search(q, k=args.k)] for i, q in enumerate(queries)}
        table(part, name, "after the last commit: server vs a fresh library load",
              f"generation {remote.generation} (writer's last {final_gen}); {compare(after, want_final)}")
        fresh.close()
        for phase in (one, many, during):
            for e in phase["errors"][:3]:
                print("ERROR:", e, file=sys.stderr)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        lib.close()
    table.print()
    if args.out:
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            table.print()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(buf.getvalue())
    if args.index is None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
