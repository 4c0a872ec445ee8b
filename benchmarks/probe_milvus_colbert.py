"""Probe behind docs/MILVUS.md "The ColBERT token collection": how fast Milvus Lite returns the
token vectors of the candidates ColBERT scores, by the layout of the token collection. Never
part of the test suite.

    python benchmarks/probe_milvus_colbert.py                       # 10k chunks x 40 tokens x 128-d
    python benchmarks/probe_milvus_colbert.py --chunks 20000 --dim 128 --tokens 40 --reps 20

One Milvus Lite file (a temporary directory) holds two collections of the same random token
vectors (fp32, lengths uniform in [tokens/2, 3*tokens/2]), one row per token, each row with
``gen`` (as every hybridrag row), and:

* ``pk`` layout: primary key ``slot * 2**16 + pos``, plus ``slot`` and ``pos`` INT64 fields;
* ``slot`` layout: an auto primary key and ``slot`` / ``pos`` INT64 fields;
* ``paged`` layout: ``--page`` tokens per row (one ``FLOAT_VECTOR`` of ``page * dim``, the last
  page of a chunk zero-padded), primary key ``slot * 2**16 + page``, and ``n`` (tokens in the row).

Each repetition draws 100 random slots (the candidates of one query) and fetches their token
vectors (``output_fields=[pk or slot, pos, gen, vector]``; visibility is checked on the client)
by:

* ``pk ranges``  : ``(pk >= a and pk < b) or ...``, one range per slot (no lengths needed);
* ``pk list``    : ``pk in [...]`` of every token's key (needs the lengths on the client);
* ``pk range+gen``: the ranges ANDed with ``gen <= 1`` (a non-pk term: evaluated over every row?);
* ``slot in``    : ``slot in [...]`` on the pk layout's ``slot`` field;
* ``slot in (auto pk)``: the same on the slot layout;
* ``paged ranges``: the paged layout by pk ranges;
* ``paged list``: the paged layout by ``pk in [...]`` of every row's key (lengths known);
* ``two-step`` / ``two-step paged``: lengths not known: ``pk in [...]`` of each chunk's first
  row (with ``nrows``, the chunk's row count, and its vector), then ``pk in [...]`` of the rest.

Prints the median and p90 of each in ms, the insert time, and for comparison the time of
``MultiVectorStore.score`` (local fp16 store, 32 query tokens) on the same shapes.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chunks", type=int, default=10000)
    ap.add_argument("--tokens", type=int, default=40, help="mean tokens per chunk")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--page", type=int, default=8, help="tokens per row of the paged layout")
    args = ap.parse_args()

    from pymilvus import DataType, MilvusClient

    rng = np.random.default_rng(0)
    lengths = rng.integers(args.tokens // 2, args.tokens * 3 // 2 + 1, size=args.chunks)
    total = int(lengths.sum())
    with tempfile.TemporaryDirectory() as tmp:
        client = MilvusClient(uri=str(Path(tmp) / "probe.db"))
        for name, auto in (("by_pk", False), ("by_slot", True)):
            s = MilvusClient.create_schema(auto_id=auto, enable_dynamic_field=False)
            s.add_field("pk", DataType.INT64, is_primary=True)
            s.add_field("slot", DataType.INT64)
            s.add_field("pos", DataType.INT64)
            s.add_field("gen", DataType.INT64)
            s.add_field("nrows", DataType.INT64)
            s.add_field("vector", DataType.FLOAT_VECTOR, dim=args.dim)
            ip = client.prepare_index_params()
            ip.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
            client.create_collection(name, schema=s, index_params=ip, consistency_level="Strong")
        P = args.page
        s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field("pk", DataType.INT64, is_primary=True)
        s.add_field("n", DataType.INT64)
        s.add_field("nrows", DataType.INT64)
        s.add_field("gen", DataType.INT64)
        s.add_field("vector", DataType.FLOAT_VECTOR, dim=P * args.dim)
        ip = client.prepare_index_params()
        ip.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
        client.create_collection("paged", schema=s, index_params=ip, consistency_level="Strong")
        batch3: list[dict] = []
        t0 = time.perf_counter()
        batch: list[dict] = []
        batch2: list[dict] = []
        for slot in range(args.chunks):
            v = rng.standard_normal((int(lengths[slot]), args.dim), dtype=np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            for pos in range(v.shape[0]):
                batch.append({"pk": slot * 2**16 + pos, "slot": slot, "pos": pos, "gen": 1, "nrows": v.shape[0],
                              "vector": v[pos]})
                batch2.append({"slot": slot, "pos": pos, "gen": 1, "nrows": v.shape[0], "vector": v[pos]})
            for page in range(0, v.shape[0], P):
                row = np.zeros((P, args.dim), np.float32)
                part = v[page : page + P]
                row[: part.shape[0]] = part
                batch3.append({"pk": slot * 2**16 + page // P, "n": part.shape[0], "gen": 1,
                               "nrows": -(-v.shape[0] // P), "vector": row.ravel()})
            if len(batch) >= 5000:
                client.insert("by_pk", batch)
                client.insert("by_slot", batch2)
                client.insert("paged", batch3)
                batch, batch2, batch3 = [], [], []
        if batch:
            client.insert("by_pk", batch)
            client.insert("by_slot", batch2)
            client.insert("paged", batch3)
        for name in ("by_pk", "by_slot", "paged"):
            client.flush(name)
        ins = time.perf_counter() - t0
        print(f"{args.chunks} chunks, {total} tokens x {args.dim}-d per collection; "
              f"inserted the three collections in {ins:.1f} s")

        def ranges(sl: np.ndarray, extra: str = "") -> str:
            r = " or ".join(f"(pk >= {s * 2**16} and pk < {(s + 1) * 2**16})" for s in sl.tolist())
            return f"({r}) and {extra}" if extra else r

        def pklist(sl: np.ndarray) -> str:
            keys = [s * 2**16 + p for s in sl.tolist() for p in range(int(lengths[s]))]
            return "pk in [" + ",".join(map(str, keys)) + "]"

        def pagelist(sl: np.ndarray) -> str:
            keys = [s * 2**16 + p for s in sl.tolist() for p in range(-(-int(lengths[s]) // P))]
            return "pk in [" + ",".join(map(str, keys)) + "]"

        def slotin(sl: np.ndarray) -> str:
            return "slot in [" + ",".join(map(str, sl.tolist())) + "]"

        ways = {
            "pk ranges": ("by_pk", ranges),
            "pk list": ("by_pk", pklist),
            "pk range+gen": ("by_pk", lambda sl: ranges(sl, "gen <= 1")),
            "slot in": ("by_pk", slotin),
            "slot in (auto pk)": ("by_slot", slotin),
            "paged ranges": ("paged", ranges),
            "paged list": ("paged", pagelist),
            "two-step": ("by_pk", None),
            "two-step paged": ("paged", None),
        }
        times: dict[str, list[float]] = {w: [] for w in ways}
        for rep in range(args.reps + 1):
            sl = np.sort(rng.choice(args.chunks, size=args.candidates, replace=False))
            want = int(lengths[sl].sum())
            for w, (coll, expr) in ways.items():
                t = time.perf_counter()
                if expr is None:   # first rows by key (they say how many rows the chunk has), then the rest
                    first = client.query(coll, filter="pk in [" + ",".join(str(s * 2**16) for s in sl.tolist()) + "]",
                                         output_fields=["pk", "gen", "nrows", "vector"] + (["n"] if coll == "paged" else []))
                    more = [r["pk"] + i for r in first for i in range(1, int(r["nrows"]))]
                    rest = client.query(coll, filter="pk in [" + ",".join(map(str, more)) + "]",
                                        output_fields=["pk", "gen", "vector"] + (["n"] if coll == "paged" else []))
                    res = list(first) + list(rest)   # (HybridExtraList: "+" loses the lazy fields)
                    if coll == "paged":
                        vec = np.concatenate([np.asarray(r["vector"], np.float32).reshape(P, args.dim)[: r["n"]]
                                              for r in res])
                    else:
                        vec = np.asarray([r["vector"] for r in res], dtype=np.float32)
                elif coll == "paged":
                    res = client.query(coll, filter=expr(sl), output_fields=["pk", "n", "gen", "vector"])
                    vec = np.concatenate([np.asarray(r["vector"], np.float32).reshape(P, args.dim)[: r["n"]]
                                          for r in res])
                else:
                    res = client.query(coll, filter=expr(sl), output_fields=["slot", "pos", "gen", "vector"])
                    vec = np.asarray([r["vector"] for r in res], dtype=np.float32)
                dt = (time.perf_counter() - t) * 1e3
                assert vec.shape == (want, args.dim), (w, vec.shape, want)
                if rep:   # the first round warms up
                    times[w].append(dt)
        for w, ts in times.items():
            ts.sort()
            print(f"{w:<18} median {statistics.median(ts):8.1f} ms   p90 {ts[int(0.9 * (len(ts) - 1))]:8.1f} ms")
        client.close()
    # the local store on the same shapes (fp16, memory), for comparison
    from hybridrag.stores.multivector import MultiVectorStore

    local = MultiVectorStore(args.dim)
    local.add(np.arange(args.chunks), [rng.standard_normal((int(n), args.dim), dtype=np.float32) for n in lengths])
    q = [rng.standard_normal((32, args.dim), dtype=np.float32)]
    ts = []
    for _ in range(args.reps):
        c = [np.sort(rng.choice(args.chunks, size=args.candidates, replace=False))]
        t = time.perf_counter()
        local.score(q, c)
        ts.append((time.perf_counter() - t) * 1e3)
    ts.sort()
    print(f"{'local fp16 score':<18} median {statistics.median(ts):8.1f} ms   p90 {ts[int(0.9 * (len(ts) - 1))]:8.1f} ms"
          "   (MultiVectorStore.score, 32 query tokens)")


if __name__ == "__main__":
    main()
