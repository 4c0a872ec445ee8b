"""A deterministic ingest that tests/test_crash.py kills (SIGKILL) at chosen points.

Run as ``python tests/_crash_worker.py INDEX SEED LOG``. The index must
exist (created by the test). The worker applies the steps of :func:`make_steps` in order,
appending ``k`` to LOG (fsynced) after step ``k`` has committed.

``HYBRIDRAG_CRASH_AT`` names where to die, ``TARGET:N`` (the N-th call, 1-based):

* ``fsync:N`` - at the N-th ``os.fsync``: the file being synced is first truncated to half
  its size, so the kill lands in the middle of that file's write (store files, the BM25
  vocabulary, ``manifest.json.tmp``); a directory fsync just dies.
* ``replace:N`` - before the N-th ``os.replace`` (store files and the manifest swap).
* ``writev:N`` - in the middle of the N-th ``os.writev`` (half its bytes written): the
  store files' arrays (``.npy``) are written with it.
* ``Class.method:N`` - on entry to that method (store saves, docstore writes, garbage
  collection after the manifest swap, Milvus store calls and ``MilvusClient`` writes),
  e.g. ``SparseIndex.save:2``.

``HYBRIDRAG_CRASH_OP=overwrite`` replaces the index with an empty one of the same pipeline
(``HybridIndex.create(INDEX, pipeline, overwrite=True)``) instead of applying the steps,
and appends ``len(make_steps(SEED))`` to LOG once that create has returned.

``HYBRIDRAG_CRASH_OP=take_over`` makes INDEX (a new directory) the writer of the index Milvus
holds whole under the collection prefix ``crash``, from the Milvus Lite file named by
``HYBRIDRAG_CRASH_FROM`` (``HybridIndex.take_over``), and appends ``len(make_steps(SEED))`` to LOG
once it has returned.

``HYBRIDRAG_CRASH_COUNT=FILE`` instead counts the calls of every target and writes them
as JSON to FILE at the end (the test uses it to draw N).

``python tests/_crash_worker.py --zygote PIPELINE_JSON SEED`` imports the libraries, loads
the model and encodes every chunk of ``make_steps(SEED)`` once (:class:`CachedEncoder`),
then forks one worker per request (a JSON line ``{"args": [INDEX, SEED, LOG], "env": {...}}``
on stdin), answering ``{"pid": P}`` and then ``{"rc": RC}`` (``-9`` when killed): the
Milvus and BM25 trials use it (a BM25-only pipeline loads no model: the zygote only imports), as a fresh interpreter per trial spends most of its time importing
torch and transformers and encoding the same texts again. The kill points are in storage
and commits, which run for real.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

METHODS = {
    "SparseIndex.save": "hybridrag.stores.sparse",
    "FaissStore.save": "hybridrag.stores.faiss",
    "MultiVectorStore.save": "hybridrag.stores.multivector",
    "BM25Encoder.save_vocabulary": "hybridrag.encoders.bm25",
    "DocStore.add_chunks": "hybridrag.stores.docstore",
    "DocStore.delete_docs": "hybridrag.stores.docstore",
    "DocStore.delete_all": "hybridrag.stores.docstore",
    "DocStore.commit_generation": "hybridrag.stores.docstore",
    "DocStore.purge": "hybridrag.stores.docstore",
    "HybridIndex._collect_garbage": "hybridrag.index",
    "HybridIndex.commit": "hybridrag.index",
    # the Milvus backend: store calls, and each Milvus write (insert batch, delete, flush)
    "MilvusDenseStore.add": "hybridrag.stores.milvus",
    "MilvusSparseStore.add": "hybridrag.stores.milvus",
    "MilvusSparseStore.remove": "hybridrag.stores.milvus",
    "MilvusDenseStore.save": "hybridrag.stores.milvus",
    "MilvusSparseStore.committed": "hybridrag.stores.milvus",
    "MilvusColbertStore.add": "hybridrag.stores.milvus",
    "MilvusColbertStore.remove": "hybridrag.stores.milvus",
    "MilvusDocsStore.add": "hybridrag.stores.milvus_docs",
    "MilvusDocsStore.remove": "hybridrag.stores.milvus_docs",
    "MilvusHead.publish": "hybridrag.stores.milvus_docs",
    "MilvusBm25Store._publish_terms": "hybridrag.stores.milvus_bm25",
    "MilvusClient.upsert": "pymilvus",
    "MilvusClient.insert": "pymilvus",
    "MilvusClient.delete": "pymilvus",
    "MilvusClient.flush": "pymilvus",
    "MilvusClient.drop_collection": "pymilvus",
    "MilvusClient.alter_collection_properties": "pymilvus",
}

_LOG_FSYNC = os.fsync   # taken before install() patches os.fsync

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
         "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def doc_text(rng: random.Random, tag: str, sentences: int) -> str:
    out = []
    for _ in range(sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 12))]
        words.insert(rng.randint(0, len(words)), tag)
        out.append(" ".join(words).capitalize() + ".")
    return " ".join(out)


def make_steps(seed: int) -> list[dict[str, Any]]:
    """Steps: upsert batches (committed), a delete, changed-content upserts and one commit of
    several uncommitted batches. Every document carries a unique token ``u<id>v<version>``
    and the group of the step that wrote it."""
    rng = random.Random(seed)
    steps: list[dict[str, Any]] = []
    n = 0

    def new_docs(count: int, group: int, version: int = 1, ids: list[str] | None = None) -> list[dict[str, Any]]:
        nonlocal n
        out = []
        for i in range(count):
            if ids is None:
                did = f"doc{n}"
                n += 1
            else:
                did = ids[i]
            out.append({"id": did, "text": doc_text(rng, f"u{did}v{version}", rng.randint(2, 6)),
                        "metadata": {"group": group, "version": version}})
        return out

    for g in range(4):
        steps.append({"op": "upsert", "batches": [new_docs(rng.randint(3, 6), g)]})
    first = [d["id"] for d in steps[0]["batches"][0]] + [d["id"] for d in steps[1]["batches"][0]]
    rng.shuffle(first)
    steps.append({"op": "delete", "ids": first[:3]})
    changed = [d["id"] for d in steps[2]["batches"][0]][:3]
    steps.append({"op": "upsert", "batches": [new_docs(len(changed), 5, version=2, ids=changed)]})
    steps.append({"op": "upsert", "batches": [new_docs(3, 6), new_docs(2, 6)]})  # one commit, two batches
    return steps


def expected_states(steps: list[dict[str, Any]]) -> list[dict[str, dict[str, Any]]]:
    """``states[k + 1]`` is the set of documents after step ``k``; ``states[0]`` is empty."""
    states: list[dict[str, dict[str, Any]]] = [{}]
    cur: dict[str, dict[str, Any]] = {}
    for st in steps:
        cur = dict(cur)
        if st["op"] == "delete":
            for i in st["ids"]:
                cur.pop(i, None)
        else:
            for batch in st["batches"]:
                for d in batch:
                    cur[d["id"]] = d
        states.append(cur)
    return states


def apply_steps(idx: Any, steps: list[dict[str, Any]], log: Path | None = None) -> None:
    for k, st in enumerate(steps):
        if st["op"] == "delete":
            idx.delete(st["ids"])
        else:
            for batch in st["batches"]:
                idx.upsert(batch, commit=False, batch_size=4)
            idx.commit()
        if log is not None:
            with open(log, "a") as f:
                f.write(f"{k}\n")
                f.flush()
                _LOG_FSYNC(f.fileno())   # the harness's own log: never a kill point


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(spec: str | None, counter: Counter[str] | None) -> None:
    """Patch the targets: count calls, and die at the chosen one."""
    target, n = (spec.rsplit(":", 1) if spec else (None, "0"))
    at = int(n)

    def hit(name: str) -> bool:
        if counter is not None:
            counter[name] += 1
            return False
        if name != target:
            return False
        hit.calls = getattr(hit, "calls", 0) + 1  # type: ignore[attr-defined]
        return hit.calls == at  # type: ignore[attr-defined]

    real_fsync, real_replace, real_writev = os.fsync, os.replace, os.writev

    def fsync(fd: int) -> None:
        if hit("fsync"):
            try:
                size = os.fstat(fd).st_size
                os.ftruncate(fd, size // 2)
            except OSError:
                pass  # a directory
            _die()
        real_fsync(fd)

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        if hit("replace"):
            _die()
        real_replace(src, dst, **kw)

    def writev(fd: int, bufs: Any) -> int:
        if hit("writev"):
            data = b"".join(bytes(b) for b in bufs)
            os.write(fd, data[: len(data) // 2])
            _die()
        return real_writev(fd, bufs)

    os.fsync, os.replace, os.writev = fsync, replace, writev
    import importlib

    for name, module in METHODS.items():
        cls_name, meth = name.split(".")
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except ImportError:
            continue
        real = getattr(cls, meth, None)
        if real is None:  # a method this version of the code does not have
            continue

        def wrapper(*a: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            if hit(_name):
                _die()
            return _real(*a, **kw)

        setattr(cls, meth, wrapper)


def main(argv: list[str]) -> int:
    index, seed, log = argv
    count_file = os.environ.get("HYBRIDRAG_CRASH_COUNT")
    counter: Counter[str] | None = Counter() if count_file else None
    install(os.environ.get("HYBRIDRAG_CRASH_AT"), counter)
    from hybridrag.index import HybridIndex

    steps = make_steps(int(seed))
    if os.environ.get("HYBRIDRAG_CRASH_OP") == "take_over":
        HybridIndex.take_over(index, collection="crash", milvus_uri=os.environ["HYBRIDRAG_CRASH_FROM"]).close()
        with open(log, "a") as f:
            f.write(f"{len(steps)}\n")
            f.flush()
            _LOG_FSYNC(f.fileno())
        if count_file:
            Path(count_file).write_text(json.dumps(counter))
        return 0
    idx = HybridIndex.load(index)
    try:
        if os.environ.get("HYBRIDRAG_CRASH_OP") == "overwrite":
            pipeline = idx.pipeline
            idx.close()
            HybridIndex.create(index, pipeline, overwrite=True).close()
            with open(log, "a") as f:
                f.write(f"{len(steps)}\n")
                f.flush()
                _LOG_FSYNC(f.fileno())
        else:
            apply_steps(idx, steps, Path(log))
    finally:
        idx.close()
    if count_file:
        Path(count_file).write_text(json.dumps(counter))
    return 0


class CachedEncoder:
    """An encoder whose ``encode`` remembers each text's output (same texts, same vectors:
    the encoder is deterministic); everything else is the wrapped encoder's."""

    def __init__(self, encoder: Any) -> None:
        self._enc = encoder
        self._cache: dict[tuple[Any, ...], tuple[Any, Any, Any]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._enc, name)

    def encode(self, texts: Any, **kw: Any) -> Any:
        import numpy as np

        from hybridrag.encoders.base import EncodeOutput

        opts = (kw.get("max_length"), kw.get("dense", True), kw.get("sparse", True), kw.get("colbert", True))
        todo = [t for t in dict.fromkeys(texts) if (t, *opts) not in self._cache]
        if todo:
            out = self._enc.encode(todo, **kw)
            for i, t in enumerate(todo):
                self._cache[(t, *opts)] = tuple(None if part is None else part[i]
                                                for part in (out.dense, out.sparse, out.colbert))
        rows = [self._cache[(t, *opts)] for t in texts]
        dense, sparse, colbert = opts[1:]
        return EncodeOutput(
            dense=(np.stack([r[0] for r in rows]) if rows else np.zeros((0, self._enc.dim), np.float32))
            if dense else None,
            sparse=[r[1] for r in rows] if sparse else None,
            colbert=[r[2] for r in rows] if colbert else None)


def warm_encoder(pipeline: dict[str, Any], seed: int, scratch: Path) -> CachedEncoder:
    """The pipeline's M3 encoder with every chunk of ``make_steps(seed)`` encoded."""
    from hybridrag.encoders.m3 import M3Encoder
    from hybridrag import write
    from hybridrag.index import HybridIndex

    enc = CachedEncoder(M3Encoder.from_pretrained(pipeline["encoder"]["model"]))
    local = dict(pipeline, milvus={"enabled": False},   # the same encodings from local stores
                 **{m: {k: v for k, v in pipeline.get(m, {}).items() if k != "backend"} for m in ("colbert", "bm25")})
    idx = HybridIndex.create(scratch, local, encoder=enc)
    try:
        e = idx.pipeline.encoder
        flags = write.encode_flags(idx, [m for m in ("dense", "sparse", "colbert") if m in idx.pipeline.modes])
        for st in make_steps(seed):
            for batch in st.get("batches", []):
                texts = [c.text for d in batch for c in idx.chunker.chunk(d["id"], d["text"], dict(d["metadata"]))]
                enc.encode(texts, max_length=e.max_length, batch_size=e.batch_size, **flags)
    finally:
        idx.close()
    return enc


def zygote(pipeline_json: str, seed: int) -> int:
    import atexit
    import tempfile

    pipeline = json.loads(Path(pipeline_json).read_text())
    if pipeline.get("encoder", {}).get("kind") == "none":   # BM25 only: the imports are what a fork saves
        import hybridrag.index  # noqa: F401
        import hybridrag.stores.sparse  # noqa: F401
    else:
        import torch

        torch.set_num_threads(1)  # no intra-op thread pool in the parent of fork()
        import pymilvus  # noqa: F401  (imported only: no channel or server before fork)

        from hybridrag.encoders.m3 import M3Encoder

        with tempfile.TemporaryDirectory() as scratch:
            enc = warm_encoder(pipeline, seed, Path(scratch) / "warm")
        M3Encoder.from_pretrained = classmethod(lambda cls, *a, **k: enc)  # type: ignore[method-assign]
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            rc = 1
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.environ.update(req["env"])
                rc = main(req["args"])
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                atexit._run_exitfuncs()  # Milvus Lite stops its server, as at a normal exit
                os._exit(rc)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"rc": rc}), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--zygote"]:
        sys.exit(zygote(sys.argv[2], int(sys.argv[3])))
    sys.exit(main(sys.argv[1:]))
