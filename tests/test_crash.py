"""Crash safety of hybridrag/index.py: an ingest process (tests/_crash_worker.py) is killed
with SIGKILL at seeded points - in the middle of each store's file write, of the BM25
vocabulary and of the manifest, before the manifest swap, inside docstore writes, after
the swap - and at seeded random times. After every kill the index must load, equal the
last committed state exactly (every committed document searchable, no partial document,
every store holding the docstore's chunks), pass ``check_index``, and running the same
ingest again must complete it without duplicates.

CI runs ``HYBRIDRAG_CRASH_TRIALS`` (default 30) bm25-only trials plus 4 trials with the
tiny tri-modal M3 pipeline; the longer run is
``HYBRIDRAG_CRASH_TRIALS=300 pytest tests/test_crash.py`` (a fifth of them M3).

The Milvus backend (dense and sparse vectors in Milvus Lite, inside the index directory)
gets the same trials: 3 in the fast tier, ``HYBRIDRAG_MILVUS_CRASH_TRIALS`` (default 30)
in the ``slow`` tier, each killed inside a Milvus insert, delete or flush, a store call,
or at a random time; with ColBERT's token collection and with the whole index in Milvus, one
trial per kill point there (``HYBRIDRAG_MILVUS_COLBERT_CRASH_TRIALS`` /
``HYBRIDRAG_MILVUS_WHOLE_CRASH_TRIALS`` for more).

``create(overwrite=True)`` of a full index is killed too (local stores and Milvus, 3
trials each in CI, ``HYBRIDRAG_OVERWRITE_CRASH_TRIALS`` for more): the index then holds
either the old documents, whole, or the new empty index, never a manifest naming missing
files (issue 24, F5).

``HybridIndex.take_over`` of an index held whole in Milvus is killed while it makes the new
writer's directory and while it changes the collections' owners (one trial per kill point in
CI, ``HYBRIDRAG_TAKE_OVER_CRASH_TRIALS`` for more): a new ``take_over`` into an empty directory
then holds the last published commit whole and writes on.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import _crash_worker as cw  # noqa: E402

from hybridrag.index import HybridIndex, check_index, content_hash  # noqa: E402
from hybridrag.storage.commit import drop_stray_collections  # noqa: E402

WORKER = Path(__file__).with_name("_crash_worker.py")
TRIALS = int(os.environ.get("HYBRIDRAG_CRASH_TRIALS", "30"))
M3_TRIALS = max(4, TRIALS // 5) if TRIALS > 30 else 4
SEED = int(os.environ.get("HYBRIDRAG_CRASH_SEED", "20240606"))

BM25_PIPELINE = {
    "name": "crash-bm25",
    "encoder": {"kind": "none"},
    "chunking": {"max_tokens": 12, "overlap": 2},
    "dense": {"enabled": False}, "sparse": {"enabled": False}, "colbert": {"enabled": False},
    "bm25": {"enabled": True, "depth": 50},
    "fusion": {"method": "weighted", "weights": {"bm25": 1.0}},
}

BM25_TARGETS = ["fsync", "replace", "writev", "SparseIndex.save", "BM25Encoder.save_vocabulary",
                "DocStore.add_chunks", "DocStore.delete_docs", "DocStore.commit_generation", "DocStore.purge",
                "HybridIndex._collect_garbage", "HybridIndex.commit", "time"]
M3_TARGETS = ["FaissStore.save", "MultiVectorStore.save", "fsync", "time", "SparseIndex.save", "replace"]
MILVUS_TARGETS = ["MilvusClient.insert", "MilvusClient.delete", "MilvusSparseStore.add", "MilvusSparseStore.remove",
                  "MilvusClient.flush", "MilvusDenseStore.save", "DocStore.commit_generation", "replace",
                  "MilvusSparseStore.committed", "MilvusDenseStore.add", "time"]
MILVUS_TRIALS = int(os.environ.get("HYBRIDRAG_MILVUS_CRASH_TRIALS", "30"))
# ColBERT token vectors in Milvus too ([colbert] backend = "milvus"): its writes and the others'
MILVUS_COLBERT_TARGETS = ["MilvusColbertStore.add", "MilvusClient.insert", "MilvusClient.delete", "MilvusClient.flush",
                          "MilvusColbertStore.remove", "replace", "DocStore.commit_generation", "time"]


def m3_pipeline(m3_dir: Path, milvus: bool = False, colbert_in_milvus: bool = False,
                whole_index: bool = False) -> dict[str, Any]:
    colbert = {"enabled": True, "backend": "milvus"} if colbert_in_milvus else {"enabled": not milvus}
    if whole_index:   # everything in Milvus, BM25's rows and terms too
        p = m3_pipeline(m3_dir, True, True)
        p["bm25"] = {"enabled": True, "depth": 50, "backend": "milvus"}
        p["milvus"] = {"enabled": True, "whole_index": True, "collection": "crash"}
        return p
    return {
        "name": "crash-m3",
        "encoder": {"kind": "m3", "model": str(m3_dir), "max_length": 64, "query_max_length": 32, "batch_size": 8},
        "chunking": {"max_tokens": 24, "overlap": 4},
        "dense": {"enabled": True, "depth": 50}, "sparse": {"enabled": True, "depth": 50},
        "bm25": {"enabled": True, "depth": 50}, "colbert": colbert,
        "fusion": {"method": "weighted", "weights": {"dense": 0.3, "sparse": 0.2, "colbert": 0.3, "bm25": 0.2}},
        "milvus": {"enabled": milvus},
    }


def run_worker(index: Path, seed: int, log: Path, env_extra: dict[str, str],
               kill_after: float | None = None) -> int:
    env = {**os.environ, **env_extra, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, str(WORKER), str(index), str(seed), str(log)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"worker failed ({proc.returncode}): {err.decode()[-3000:]}")
    return proc.returncode


class Zygote:
    """``run_worker`` through one ``_crash_worker.py --zygote`` process that forks each worker
    from a process that has already imported torch and loaded the model."""

    def __init__(self, pipeline: dict[str, Any], seed: int, tmp: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        self.err = tmp / "zygote.err"
        (tmp / "zygote.json").write_text(json.dumps(pipeline))
        self.proc = subprocess.Popen([sys.executable, str(WORKER), "--zygote", str(tmp / "zygote.json"), str(seed)],
                                     env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(self.err, "wb"),
                                     text=True, bufsize=1)

    def _read(self, timeout: float | None) -> dict[str, int] | None:
        import select

        # poll, not select: select() fails on descriptors past 1023, which a long test run reaches
        poller = select.poll()
        poller.register(self.proc.stdout, select.POLLIN)  # type: ignore[arg-type]
        ready = poller.poll(None if timeout is None else int(timeout * 1000))
        if not ready:
            return None
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise AssertionError(f"crash zygote died: {self.err.read_text()[-3000:]}")
        return json.loads(line)

    def __call__(self, index: Path, seed: int, log: Path, env_extra: dict[str, str],
                 kill_after: float | None = None) -> int:
        self.proc.stdin.write(json.dumps({"args": [str(index), str(seed), str(log)], "env": env_extra}) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        pid = self._read(300)["pid"]  # type: ignore[index]
        out = self._read(kill_after) if kill_after is not None else None
        if out is None and kill_after is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if out is None:
            out = self._read(300)
        rc = out["rc"]  # type: ignore[index]
        if rc not in (0, -signal.SIGKILL):
            raise AssertionError(f"worker failed ({rc}): {self.err.read_text()[-3000:]}")
        return rc

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(timeout=60)


def release_milvus_lite(index: Path) -> None:
    """Milvus Lite keeps a data file locked by the process that opened it until that process
    exits (closing the clients is not enough): free it for the worker process."""
    if (index / "milvus.db").exists():
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(str(index / "milvus.db"))


def last_logged(log: Path) -> int:
    lines = log.read_text().split() if log.exists() else []
    return int(lines[-1]) if lines else -1


def index_docs(idx: HybridIndex) -> dict[str, list[dict[str, Any]]]:
    rows = idx.docstore.get(idx.docstore.live_slots())
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["doc_id"], []).append(r)
    return out


def assert_state(idx: HybridIndex, state: dict[str, dict[str, Any]], steps: list[dict[str, Any]]) -> None:
    """The loaded index holds exactly ``state``: same documents, whole, in every store."""
    held = index_docs(idx)
    assert set(held) == set(state)
    for did, doc in state.items():
        assert idx.docstore.doc_hash(did) == content_hash(doc["text"], doc["metadata"])
        want = idx.chunker.chunk(did, doc["text"], dict(doc["metadata"]))
        rows = sorted(held[did], key=lambda r: r["ordinal"])
        assert [r["text"] for r in rows] == [c.text for c in want], f"partial or stale document {did}"
        assert [r["chunk_id"] for r in rows] == [c.chunk_id for c in want]
    n = idx.docstore.count()
    assert len({r["chunk_id"] for rs in held.values() for r in rs}) == n  # no duplicate chunks
    live = idx.docstore.live_slots()
    for mode, store in idx.stores.items():
        assert len(store) == n, f"store {mode} holds {len(store)} rows, docstore {n}"
    # Every committed document is searchable by its unique token; deleted/old versions are not.
    versions = {}
    for st in steps:
        for batch in st.get("batches", []):
            for d in batch:
                versions.setdefault(d["id"], set()).add(d["metadata"]["version"])
    probe = sorted(versions)[:: max(1, len(versions) // 8)]
    queries = [f"u{did}v{v}" for did in probe for v in sorted(versions[did])]
    if "bm25" not in idx.pipeline.modes:   # whole_index: the rows above are the state; no term search
        return
    results = idx.search_batch(queries, k=max(1, min(5, n)), modes=["bm25"]) if n else [[] for _ in queries]
    for q, hits in zip(queries, results):
        did, v = q[1:].rsplit("v", 1)
        live_now = did in state and state[did]["metadata"]["version"] == int(v)
        found = [h for h in hits if h.doc_id == did and q in h.text.lower()]
        assert bool(found) == live_now, f"query {q}: committed={live_now}, hits={[h.doc_id for h in hits]}"
        for h in hits:
            assert h.doc_id in state and h.metadata == dict(
                state[h.doc_id]["metadata"]), "a hit from an uncommitted or deleted write"
    if n and len(idx.stores) > 1:  # the neural stores score every live chunk
        hits = idx.search("alpha bravo", k=n)
        assert {h.chunk_id for h in hits} <= {r["chunk_id"] for rs in held.values() for r in rs}
    assert len(live) == n


def crash_trials(tmp_path: Path, pipeline: dict[str, Any], targets: list[str], trials: int, seed: int,
                 encoder: Any = None, data_seeds: tuple[int, ...] = (1, 2, 3), worker: Any = None) -> Counter[str]:
    run_worker_ = worker or run_worker
    # Every trial starts from a copy of one new, empty index (a Milvus Lite file inside the
    # directory is copied with it, so each trial has its own collections).
    template = tmp_path / "empty"
    HybridIndex.create(template, pipeline, encoder=encoder).close()
    release_milvus_lite(template)
    rng = random.Random(seed)
    # Count every target's calls in one uninterrupted run per data seed (the steps differ by
    # seed), then kill trial t at a seeded N-th call of its target.
    counts: dict[int, dict[str, int]] = {}
    durations: dict[int, float] = {}
    for data_seed in data_seeds:
        d = tmp_path / f"count{data_seed}"
        shutil.copytree(template, d)
        t0 = time.monotonic()
        rc = run_worker_(d, data_seed, tmp_path / f"count{data_seed}.log",
                        {"HYBRIDRAG_CRASH_COUNT": str(tmp_path / f"count{data_seed}.json")})
        durations[data_seed] = time.monotonic() - t0
        assert rc == 0
        counts[data_seed] = json.loads((tmp_path / f"count{data_seed}.json").read_text())
    done: Counter[str] = Counter()
    for t in range(trials):
        data_seed = data_seeds[t % len(data_seeds)]
        target = targets[t % len(targets)]
        d = tmp_path / f"t{t}"
        shutil.copytree(template, d)
        log = tmp_path / f"t{t}.log"
        if target == "time":
            rc = run_worker_(d, data_seed, log, {}, kill_after=rng.uniform(0.3, durations[data_seed]))
        else:
            total = counts[data_seed].get(target, 0)
            assert total > 0, f"target {target} is never called by the ingest"
            n = rng.randint(1, total)
            rc = run_worker_(d, data_seed, log, {"HYBRIDRAG_CRASH_AT": f"{target}:{n}"})
            assert rc == -signal.SIGKILL, f"{target}:{n} was not reached"
        done[target if rc != 0 else "time (finished)"] += 1
        steps = cw.make_steps(data_seed)
        states = cw.expected_states(steps)
        k = last_logged(log)
        assert check_index(d) == [], f"trial {t} ({target})"
        idx = HybridIndex.load(d, encoder=encoder)
        try:
            # the kill came during step k+1: before its manifest swap or after it
            held = set(index_docs(idx))
            cands = [s for s in (states[k + 1], states[min(k + 2, len(states) - 1)]) if set(s) == held]
            assert cands, f"trial {t} ({target}): index holds neither state {k} nor {k + 1}"
            ok = None
            for s in cands:
                try:
                    assert_state(idx, s, steps)
                    ok = s
                    break
                except AssertionError as e:
                    err = e
            if ok is None:
                raise err
            if pipeline.get("milvus", {}).get("whole_index"):
                # a query node sees a whole commit: this one, or the one before when the kill came
                # between the manifest swap and the publication (the next commit publishes it)
                near = [states[i] for i in range(max(k, 0), min(k + 3, len(states)))]
                _assert_query_node(d, t, encoder, near, steps, idx.generation)
            # the same ingest again completes it, without duplicates
            cw.apply_steps(idx, steps)
            assert_state(idx, states[-1], steps)
        finally:
            idx.close()
        again = HybridIndex.load(d, encoder=encoder)
        try:
            assert_state(again, states[-1], steps)
        finally:
            again.close()
        if pipeline.get("milvus", {}).get("whole_index"):
            _assert_query_node(d, t, encoder, [states[-1]], steps, None)
        assert check_index(d) == []
        release_milvus_lite(d)
    return done


def _assert_query_node(d: Path, t: int, encoder: Any, states: list[dict[str, Any]], steps: list[dict[str, Any]],
                       gen: int | None) -> None:
    """A query node attached to the index's Milvus holds one of ``states`` whole, at generation
    ``gen`` or the one before (the kill came between the manifest swap and the publication)."""
    q = HybridIndex.attach(d.parent / f"{d.name}-q{t}-{gen}", collection="crash",
                           milvus_uri=str(d / "milvus.db"), encoder=encoder)
    try:
        assert gen is None or q.generation in (gen, gen - 1), (t, q.generation, gen)
        held = set(index_docs(q))
        match = [s for s in states if set(s) == held]
        assert match, (f"trial {t}: the query node (generation {q.generation}) holds none of the expected states: "
                       f"{sorted(held)} vs {[sorted(s) for s in states]}")
        errors = []
        for state in match:   # an upsert of changed content keeps the ids: try each version
            try:
                assert_state(q, state, steps)
                return
            except AssertionError as e:
                errors.append(e)
        raise errors[-1]
    finally:
        q.close()


def test_sigkill_during_bm25_ingest_leaves_last_committed_state(tmp_path):
    zygote = Zygote(BM25_PIPELINE, 1, tmp_path)   # each worker forked from one that has imported hybridrag
    try:
        done = crash_trials(tmp_path, BM25_PIPELINE, BM25_TARGETS, TRIALS, SEED, worker=zygote)
    finally:
        zygote.close()
    assert sum(done.values()) == TRIALS
    for t in BM25_TARGETS[:-1]:  # every injected point was reached
        assert done[t] >= 1, (t, done)
    print(f"crash trials (bm25): {dict(done)}")


def test_sigkill_during_m3_ingest_leaves_last_committed_state(tmp_path, m3_dir):
    from hybridrag.encoders.m3 import M3Encoder

    enc = M3Encoder.from_pretrained(str(m3_dir))
    done = crash_trials(tmp_path, m3_pipeline(m3_dir), M3_TARGETS, M3_TRIALS, SEED + 1, encoder=enc,
                        data_seeds=(1,))
    assert sum(done.values()) == M3_TRIALS
    print(f"crash trials (m3): {dict(done)}")


def test_worker_counts_are_deterministic():
    # The trial plan relies on make_steps being a pure function of the seed.
    assert cw.make_steps(7) == cw.make_steps(7)
    states = cw.expected_states(cw.make_steps(7))
    assert states[0] == {} and len(states[-1]) > 0
    assert np.all([isinstance(k, str) for k in states[-1]])


def _crash_env(tmp_path_factory: pytest.TempPathFactory, name: str, pipeline: dict[str, Any]) -> Any:
    """A Milvus pipeline, a zygote forking the workers, and the test's encoder, both with every
    chunk of the steps already encoded (the re-ingest after each kill encodes nothing new)."""
    pytest.importorskip("milvus_lite")
    tmp = tmp_path_factory.mktemp(name)
    zygote = Zygote(pipeline, 1, tmp)
    enc = cw.warm_encoder(pipeline, 1, tmp / "warm")
    return pipeline, zygote, enc


@pytest.fixture(scope="module")
def milvus_crash_env(tmp_path_factory: pytest.TempPathFactory, m3_dir: Path) -> Any:
    """The Milvus pipeline's crash environment (shared by the two Milvus tiers)."""
    env = _crash_env(tmp_path_factory, "milvus-crash", m3_pipeline(m3_dir, milvus=True))
    yield env
    env[1].close()


@pytest.fixture(scope="module")
def milvus_colbert_crash_env(tmp_path_factory: pytest.TempPathFactory, m3_dir: Path) -> Any:
    """As :func:`milvus_crash_env`, with the ColBERT token vectors in Milvus too."""
    env = _crash_env(tmp_path_factory, "milvus-colbert-crash", m3_pipeline(m3_dir, milvus=True, colbert_in_milvus=True))
    yield env
    env[1].close()


def _milvus_crash(tmp_path: Path, env: Any, trials: int, seed: int,
                  targets: list[str] = MILVUS_TARGETS) -> Counter[str]:
    pipeline, zygote, enc = env
    done = crash_trials(tmp_path, pipeline, targets, trials, seed, encoder=enc, data_seeds=(1,),
                        worker=zygote)
    assert sum(done.values()) == trials
    print(f"crash trials (milvus): {dict(done)}")
    return done


def test_sigkill_during_milvus_ingest_leaves_last_committed_state(tmp_path, milvus_crash_env):
    # ingest, upsert and delete of the worker's steps, killed in Milvus writes (issue 24, F2)
    _milvus_crash(tmp_path, milvus_crash_env, 3, SEED + 2)


def _milvus_many(tmp_path: Path, env: Any, seed: int, targets: list[str], trials: int = MILVUS_TRIALS) -> None:
    done = _milvus_crash(tmp_path, env, trials, seed, targets)
    if trials >= len(targets):
        for t in targets[:-1]:  # every injected point was reached
            assert done[t] >= 1, (t, done)


@pytest.mark.slow
def test_sigkill_during_milvus_ingest_many_trials(tmp_path, milvus_crash_env):
    _milvus_many(tmp_path, milvus_crash_env, SEED + 3, MILVUS_TARGETS)


def test_sigkill_with_colbert_in_milvus_leaves_last_committed_state(tmp_path, milvus_colbert_crash_env):
    # the token collection under the same kills (issue 24): its add, Milvus writes, the commit point
    _milvus_crash(tmp_path, milvus_colbert_crash_env, 3, SEED + 6, MILVUS_COLBERT_TARGETS)


# One trial per kill point in CI (the Milvus writes these share with the dense and sparse
# collections get HYBRIDRAG_MILVUS_CRASH_TRIALS above); HYBRIDRAG_MILVUS_COLBERT_CRASH_TRIALS for more.
MILVUS_COLBERT_TRIALS = int(os.environ.get("HYBRIDRAG_MILVUS_COLBERT_CRASH_TRIALS", str(len(MILVUS_COLBERT_TARGETS))))


@pytest.mark.slow
def test_sigkill_with_colbert_in_milvus_many_trials(tmp_path, milvus_colbert_crash_env):
    _milvus_many(tmp_path, milvus_colbert_crash_env, SEED + 7, MILVUS_COLBERT_TARGETS, MILVUS_COLBERT_TRIALS)


@pytest.fixture(scope="module")
def milvus_whole_crash_env(tmp_path_factory: pytest.TempPathFactory, m3_dir: Path) -> Any:
    """As :func:`milvus_crash_env`, with the whole index in Milvus ([milvus] whole_index)."""
    env = _crash_env(tmp_path_factory, "milvus-whole-crash", m3_pipeline(m3_dir, whole_index=True))
    yield env
    env[1].close()


# the docs collection's writes, the publication into the head, BM25's terms, and the rest
MILVUS_WHOLE_TARGETS = ["MilvusDocsStore.add", "MilvusHead.publish", "MilvusBm25Store._publish_terms",
                        "MilvusClient.upsert", "MilvusClient.insert", "MilvusClient.delete",
                        "MilvusClient.flush", "MilvusDocsStore.remove", "replace", "DocStore.commit_generation",
                        "time"]


def test_sigkill_with_the_whole_index_in_milvus_leaves_last_committed_state(tmp_path, milvus_whole_crash_env):
    _milvus_crash(tmp_path, milvus_whole_crash_env, 3, SEED + 8, MILVUS_WHOLE_TARGETS)


# Each of these trials also attaches query nodes: by default one trial per kill point (the run of
# 32 in docs/MILVUS.md took HYBRIDRAG_MILVUS_WHOLE_CRASH_TRIALS=32).
MILVUS_WHOLE_TRIALS = int(os.environ.get("HYBRIDRAG_MILVUS_WHOLE_CRASH_TRIALS", str(len(MILVUS_WHOLE_TARGETS))))


@pytest.mark.slow
def test_sigkill_with_the_whole_index_in_milvus_many_trials(tmp_path, milvus_whole_crash_env):
    _milvus_many(tmp_path, milvus_whole_crash_env, SEED + 9, MILVUS_WHOLE_TARGETS, MILVUS_WHOLE_TRIALS)


# --------------------------------------------------------------------------- take_over

# reading Milvus into the new docstore, its commit, the files (the manifest last), the owners
TAKE_OVER_TARGETS = ["DocStore.add_chunks", "DocStore.commit_generation", "fsync", "replace",
                     "MilvusClient.alter_collection_properties", "time"]
TAKE_OVER_TRIALS = int(os.environ.get("HYBRIDRAG_TAKE_OVER_CRASH_TRIALS", str(len(TAKE_OVER_TARGETS))))


@pytest.mark.slow
def test_sigkill_during_take_over_leaves_the_index_to_a_new_take_over(tmp_path, milvus_whole_crash_env, monkeypatch):
    """A take_over killed at any point (issue 24): the next one, into an empty directory, gets the
    last published commit whole and writes on; the killed attempt's directory can never write."""
    from hybridrag.errors import HybridRAGError, IndexFormatError

    pipeline, zygote, enc = milvus_whole_crash_env
    steps = cw.make_steps(1)
    state = cw.expected_states(steps)[-1]
    built = tmp_path / "built"   # the lost writer: every step committed and published
    idx = HybridIndex.create(built, pipeline, encoder=enc)
    try:
        cw.apply_steps(idx, steps)
    finally:
        idx.close()
    release_milvus_lite(built)
    rng = random.Random(SEED + 10)
    # the lost writer's Milvus: a copy of its Lite file outside any index directory (as a server's
    # data is; take_over refuses a Lite file inside an index directory, whose writer is not lost)
    count = tmp_path / "count.db"
    shutil.copytree(built / "milvus.db", count)
    env = {"HYBRIDRAG_CRASH_OP": "take_over", "HYBRIDRAG_CRASH_FROM": str(count)}
    t0 = time.monotonic()
    assert zygote(tmp_path / "count-new", 1, tmp_path / "count.log",
                  {**env, "HYBRIDRAG_CRASH_COUNT": str(tmp_path / "count.json")}) == 0
    duration = time.monotonic() - t0
    counts = json.loads((tmp_path / "count.json").read_text())
    done: Counter[str] = Counter()
    for t in range(TAKE_OVER_TRIALS):
        target = TAKE_OVER_TARGETS[t % len(TAKE_OVER_TARGETS)]
        d = tmp_path / f"t{t}.db"
        shutil.copytree(built / "milvus.db", d)
        lite = str(d)
        env = {"HYBRIDRAG_CRASH_OP": "take_over", "HYBRIDRAG_CRASH_FROM": lite}
        killed = tmp_path / f"t{t}-killed"
        if target == "time":
            rc = zygote(killed, 1, tmp_path / f"t{t}.log", env, kill_after=rng.uniform(0.2, duration))
        else:
            assert counts.get(target, 0) > 0, f"target {target} is never called by take_over"
            n = rng.randint(1, counts[target])
            rc = zygote(killed, 1, tmp_path / f"t{t}.log", {**env, "HYBRIDRAG_CRASH_AT": f"{target}:{n}"})
            assert rc == -signal.SIGKILL, f"{target}:{n} was not reached"
        done[target if rc != 0 else "time (finished)"] += 1
        again = tmp_path / f"t{t}-again"
        new = HybridIndex.take_over(again, collection="crash", milvus_uri=lite, encoder=enc)
        try:
            assert_state(new, state, steps)
            changed = dict(next(iter(state.values())), text="Kilo lima uchangedv9 mike.",
                           metadata={"group": 9, "version": 9})
            new.upsert([changed])
        finally:
            new.close()
        monkeypatch.setenv("HYBRIDRAG_MILVUS_URI", lite)   # check follows no URI read from the index
        assert check_index(again) == []
        monkeypatch.delenv("HYBRIDRAG_MILVUS_URI")
        after = dict(state, **{changed["id"]: changed})
        reopened = HybridIndex.load(again, encoder=enc, milvus_uri=lite)
        try:
            assert set(index_docs(reopened)) == set(after)
            assert [h.doc_id for h in reopened.search("uchangedv9", k=1, modes=["bm25"])] == [changed["id"]]
        finally:
            reopened.close()
        node = HybridIndex.attach(tmp_path / f"t{t}-node", collection="crash", milvus_uri=lite, encoder=enc)
        try:
            assert set(index_docs(node)) == set(after)
            assert [h.doc_id for h in node.search("uchangedv9", k=1, modes=["bm25"])] == [changed["id"]]
        finally:
            node.close()
        # what the killed attempt left never writes: no index, or a writer refused at its first write
        if (killed / "manifest.json").exists():
            try:
                stale = HybridIndex.load(killed, encoder=enc, milvus_uri=lite)
            except HybridRAGError:
                stale = None
            if stale is not None:
                try:
                    with pytest.raises(IndexFormatError, match="took it over"):
                        stale.upsert([dict(changed, text="Oscar papa ustalev1.")])
                finally:
                    stale.close()
        release_milvus_lite(d)
    assert sum(done.values()) == TAKE_OVER_TRIALS
    if TAKE_OVER_TRIALS >= len(TAKE_OVER_TARGETS):
        for target in TAKE_OVER_TARGETS[:-1]:
            assert done[target] >= 1, (target, done)
    print(f"crash trials (take_over): {dict(done)}")


# --------------------------------------------------------------------------- create(overwrite=True)

# The first three of each list are the CI trials: the manifest swap, a store's save before
# it, and a point after it.
OVERWRITE_TARGETS = ["replace", "DocStore.commit_generation", "HybridIndex._collect_garbage", "DocStore.delete_all",
                     "fsync", "time"]
MILVUS_OVERWRITE_TARGETS = ["replace", "MilvusDenseStore.save", "MilvusSparseStore.committed", "DocStore.delete_all",
                            "MilvusClient.flush", "DocStore.commit_generation", "MilvusClient.drop_collection", "time"]
OVERWRITE_TRIALS = int(os.environ.get("HYBRIDRAG_OVERWRITE_CRASH_TRIALS", "3"))


def overwrite_trials(tmp_path: Path, pipeline: dict[str, Any], targets: list[str], trials: int, seed: int,
                     encoder: Any = None, worker: Any = None) -> Counter[str]:
    """Kill ``create(overwrite=True)`` of an index holding every step's documents."""
    run = worker or run_worker
    steps = cw.make_steps(1)
    states = cw.expected_states(steps)
    full = tmp_path / "full"
    HybridIndex.create(full, pipeline, encoder=encoder).close()
    release_milvus_lite(full)
    assert run(full, 1, tmp_path / "full.log", {}) == 0
    op = {"HYBRIDRAG_CRASH_OP": "overwrite"}
    d = tmp_path / "count"
    shutil.copytree(full, d)
    t0 = time.monotonic()
    assert run(d, 1, tmp_path / "count.log", {**op, "HYBRIDRAG_CRASH_COUNT": str(tmp_path / "count.json")}) == 0
    duration = time.monotonic() - t0
    counts = json.loads((tmp_path / "count.json").read_text())
    rng = random.Random(seed)
    done: Counter[str] = Counter()
    gc_dropped: Counter[str] = Counter()
    for t in range(trials):
        target = targets[t % len(targets)]
        d, log = tmp_path / f"o{t}", tmp_path / f"o{t}.log"
        shutil.copytree(full, d)
        if target == "time":
            rc = run(d, 1, log, op, kill_after=rng.uniform(0.05, duration))
        else:
            assert counts.get(target, 0) > 0, f"target {target} is never called by create(overwrite=True)"
            rc = run(d, 1, log, {**op, "HYBRIDRAG_CRASH_AT": f"{target}:{rng.randint(1, counts[target])}"})
            assert rc == -signal.SIGKILL, f"{target} was not reached"
        assert check_index(d) == [], f"trial {t} ({target})"
        idx = HybridIndex.load(d, encoder=encoder)
        try:
            held = index_docs(idx)
            if held or last_logged(log) != len(steps):
                # killed before the new manifest: the old index, whole (an empty index means
                # the kill came after the swap)
                if held:
                    assert_state(idx, states[-1], steps)
                    done[f"{target} (old kept)"] += 1
                else:
                    done[f"{target} (new committed)"] += 1
            else:
                assert len(idx) == 0
                done["finished"] += 1
            if any(hasattr(s, "collection") for s in idx.stores.values()):
                # Milvus: what the killed create left is dropped by milvus-gc (never-committed
                # collections only); every collection left is in use or a published one
                strays = drop_stray_collections(idx)
                remote = [s for s in idx.stores.values() if hasattr(s, "collection")]
                used = {s.collection for s in remote}
                left = set(remote[0]._client.list_collections())
                assert all(s["dropped"] == (s["committed"] is None) for s in strays), strays
                assert left - used == {s["name"] for s in strays if not s["dropped"]}, (left, used, strays)
                if held:
                    assert_state(idx, states[-1], steps)
                gc_dropped[target] += sum(s["dropped"] for s in strays)
        finally:
            idx.close()
        idx = HybridIndex.create(d, pipeline, overwrite=True, encoder=encoder)   # and it can be replaced
        try:
            idx.add([{"id": "after", "text": "alpha bravo after the crash", "metadata": {}}])
            assert index_docs(idx).keys() == {"after"}
        finally:
            idx.close()
        assert check_index(d) == []
        release_milvus_lite(d)
    if gc_dropped:
        print(f"stray collections dropped by milvus-gc after the kill: {dict(gc_dropped)}")
    return done


def test_sigkill_during_create_overwrite_keeps_the_old_index(tmp_path):
    trials = OVERWRITE_TRIALS
    done = overwrite_trials(tmp_path, BM25_PIPELINE, OVERWRITE_TARGETS, trials, SEED + 4)
    print(f"overwrite crash trials: {dict(done)}")
    assert sum(done.values()) == trials
    assert any(k.endswith("(old kept)") for k in done)


def test_sigkill_during_milvus_create_overwrite_keeps_the_old_index(tmp_path, milvus_crash_env):
    pipeline, zygote, enc = milvus_crash_env
    trials = OVERWRITE_TRIALS
    done = overwrite_trials(tmp_path, pipeline, MILVUS_OVERWRITE_TARGETS, trials, SEED + 5, encoder=enc,
                            worker=zygote)
    print(f"overwrite crash trials (milvus): {dict(done)}")
    assert sum(done.values()) == trials
    assert any(k.endswith("(old kept)") for k in done)
