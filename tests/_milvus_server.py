"""A real Milvus standalone server on 127.0.0.1 for the tests, and a second process that
opens an index on it.

The server is the Milvus 2.3.5 standalone binary (Go, embedded etcd and RocksMQ) that the
PyPI package ``milvus`` 2.3.5 ships compressed inside its wheel (a test dependency, Linux
x86_64 only); nothing is downloaded at run time. Milvus 2.3 has no sparse vectors, so
the server tests keep the dense vectors in Milvus and the lexical weights local
(docs/MILVUS.md, "Where it was tested").

``python tests/_milvus_server.py read|write INDEX URI`` is the other process: it loads
the index with ``milvus_uri=URI`` and prints, as JSON, the committed documents it sees,
the dense store's rows and whether every live chunk has a dense vector in Milvus;
``write`` then tries to add one document and adds the error's type and message (or
``null``).
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def unavailable() -> str | None:
    """Why the server cannot be started here (None when it can)."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return f"the milvus wheel ships a Linux x86_64 server binary only (this is {sys.platform} {platform.machine()})"
    try:
        import milvus  # noqa: F401
    except ImportError:
        return "the Milvus server binary comes with the PyPI package milvus==2.3.5: pip install 'milvus==2.3.5'"
    run = PID_FILE.parent
    if not (os.access(run, os.W_OK) if run.exists() else os.access(run.parent, os.W_OK)):
        return f"the Milvus 2.3 server writes its pid file in {run}, which this user cannot write"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PID_FILE = Path("/run/milvus/standalone.pid")


def _check_pid_file() -> None:
    """Milvus 2.3 standalone locks ``/run/milvus/standalone.pid`` whatever its data directory,
    so one runs per machine; a second one crashes (embedded etcd) and the package's start
    waits 180 s for it. Say so at once instead."""
    import fcntl

    if not PID_FILE.is_file():
        return
    with open(PID_FILE, "rb") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RuntimeError(f"another Milvus standalone server runs on this machine (pid "
                               f"{f.read().decode(errors='replace').strip() or '?'} holds {PID_FILE}); "
                               "Milvus 2.3 runs one per machine: stop it, or wait for it to finish") from None
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def start(base_dir: Path) -> Any:
    """Start a server with its data under ``base_dir``; returns the ``MilvusServer`` (its
    ``uri`` attribute set); raises when it does not come up (within the package's 180 s)."""
    from milvus import MilvusServer

    _check_pid_file()

    server = MilvusServer()
    server.set_base_dir(str(base_dir))
    server.listen_port = _free_port()
    server.start()
    server.uri = f"http://127.0.0.1:{server.listen_port}"
    return server


def peer(command: str, index: Path, uri: str, timeout: float = 300) -> Any:
    """Run ``command`` (``read`` / ``write``) in another Python process; its JSON result."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, str(Path(__file__)), command, str(index), uri], env=env,
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"peer {command} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


#: ``attach``: the queries and filters a query node answers (``tests/test_milvus_whole_index.py``)
ATTACH_QUERIES = ["vitamin D bone fractures", "dense vectors FAISS", "heart attack aspirin", "fox dog"]
ATTACH_FILTERS = [None, {"group": "even"}, {"n": {"$gte": 3}}, {"doc_id": {"$in": ["d1", "d2", "d5"]}}]


def attached_answers(idx: Any, filters: list[Any] | None = None) -> list[Any]:
    """What a query node is compared on: every hit's chunk id, document, score, text, metadata,
    for each query and filter (default :data:`ATTACH_FILTERS`)."""
    return [[[h.chunk_id, h.doc_id, round(h.score, 5), h.text, h.metadata] for h in idx.search(q, k=10, filters=f)]
            for q in ATTACH_QUERIES for f in (ATTACH_FILTERS if filters is None else filters)]


def _main(command: str, index: str, uri: str) -> Any:
    import numpy as np

    from hybridrag.index import HybridIndex

    if command == "attach":   # a query node: a directory of its own, the collection prefix "srvw"
        idx = HybridIndex.attach(index, collection="srvw", milvus_uri=uri)
        try:
            return {"generation": idx.generation, "answers": attached_answers(idx)}
        finally:
            idx.close()

    idx = HybridIndex.load(index, milvus_uri=uri)
    try:
        live = idx.docstore.live_slots()
        q = idx.encoder.encode_queries(["vitamin"], max_length=32).dense
        scores = idx.stores["dense"].score(q, [np.asarray(live)])[0]
        out: dict[str, Any] = {"docs": sorted({r["doc_id"] for r in idx.docstore.get(live)}),
                               "rows": len(idx.stores["dense"]), "complete": bool(np.isfinite(scores).all())}
        if command == "write":
            out["error"] = None
            try:
                idx.add([{"id": "peer", "text": "written by another process", "metadata": {}}])
            except Exception as e:  # the refusal is the result
                out.update(error=type(e).__name__, message=str(e))
        return out
    finally:
        idx.close()


if __name__ == "__main__":
    print(json.dumps(_main(*sys.argv[1:4])))
