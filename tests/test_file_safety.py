"""No write follows a link out of the index directory, and a full disk is one clear error.

Tests ``hybridrag/storage/`` (``files.py``, ``lock.py``), the docstore's file checks and the
CLI's handling of :class:`hybridrag.errors.DiskFullError`: a ``LOCK``, ``docstore.sqlite`` or
SQLite side file replaced by a symbolic link (or a FIFO, a directory) is refused with
``IndexFormatError`` naming it, through the CLI and the library, and the file it points to is
left byte-identical; a full disk (a real tmpfs in a private mount namespace where ``unshare``
allows it, SQLite's own ``max_page_count`` limit, and an ``ENOSPC`` from ``os.fsync``) gives
``DiskFullError`` / one CLI line with exit status 1, and the index still loads at its last
committed generation with every committed document.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from hybridrag import IndexFormatError
from hybridrag.errors import DiskFullError, IndexWriteError
from hybridrag.index import HybridIndex
from hybridrag.storage.files import check_plain_file, disk_full_errors, open_for_write, open_plain
from hybridrag.storage.lock import IndexLock

ROOT = Path(__file__).resolve().parents[1]
BM25 = {"name": "bm25", "encoder": {"kind": "none"}, "dense": {"enabled": False},
        "sparse": {"enabled": False}, "colbert": {"enabled": False},
        "bm25": {"enabled": True}, "fusion": {"weights": {"bm25": 1.0}}}
TEXTS = ["vitamin d deficiency and bone fractures", "aspirin lowers the risk of heart attack",
         "the quick brown fox jumps over the lazy dog", "dense vectors and sparse weights"]


def docs(start: int, n: int) -> list[dict]:
    return [{"id": f"d{i}", "text": f"{TEXTS[i % 4]} number{i}", "metadata": {"i": i}} for i in range(start, start + n)]


def cli(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    env.pop("HYBRIDRAG_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "hybridrag.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)


def state(path: Path) -> tuple[int, list[str]]:
    """(generation, sorted live document ids) of the committed index at ``path``."""
    idx = HybridIndex.load(path)
    try:
        slots = idx.docstore.live_slots()
        return idx.generation, sorted({r["doc_id"] for r in idx.docstore.get(slots)})
    finally:
        idx.close()


@pytest.fixture
def built(tmp_path: Path) -> Path:
    """A committed bm25 index of 6 documents (two commits) and a corpus file it already holds."""
    path = tmp_path / "idx"
    idx = HybridIndex.create(path, BM25)
    idx.add(docs(0, 4))
    idx.add(docs(4, 2))
    idx.close()
    with open(tmp_path / "corpus.jsonl", "w") as f:
        for d in docs(0, 6):
            f.write(json.dumps(d) + "\n")
    return path


def outside_file(tmp_path: Path, name: str = "outside.txt") -> tuple[Path, bytes]:
    f = tmp_path / "elsewhere" / name
    f.parent.mkdir(exist_ok=True)
    data = b"precious data that is not part of any index\n" * 20
    f.write_bytes(data)
    return f, data


def leave_uncommitted_rows(path: Path) -> None:
    """What a writer that died before its commit leaves: docstore rows of a later generation."""
    idx = HybridIndex.load(path)
    idx.add(docs(100, 2), commit=False)
    idx.docstore.close()  # as a dead process would: no rollback, no commit
    idx._lock.release()


# ---------------------------------------------------------------------- symbolic links


def test_lock_symlink_is_refused_by_a_noop_ingest(tmp_path, built):
    target, data = outside_file(tmp_path)
    (built / "LOCK").unlink(missing_ok=True)
    (built / "LOCK").symlink_to(target)
    r = cli("ingest", tmp_path / "corpus.jsonl", "--index", built, "-q")  # every document unchanged
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and str(built / "LOCK") in r.stderr and "symbolic link" in r.stderr
    assert target.read_bytes() == data


def test_lock_symlink_is_refused_by_a_query_that_would_roll_back(tmp_path, built):
    leave_uncommitted_rows(built)
    target, data = outside_file(tmp_path)
    (built / "LOCK").unlink(missing_ok=True)
    (built / "LOCK").symlink_to(target)
    r = cli("query", built, "vitamin bone")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert str(built / "LOCK") in r.stderr and "symbolic link" in r.stderr
    with pytest.raises(IndexFormatError, match="LOCK.*symbolic link"):
        HybridIndex.load(built)
    assert target.read_bytes() == data


def test_lock_symlink_is_refused_by_library_writes(tmp_path, built):
    idx = HybridIndex.load(built)
    target, data = outside_file(tmp_path)
    (built / "LOCK").unlink(missing_ok=True)
    (built / "LOCK").symlink_to(target)
    with pytest.raises(IndexFormatError, match="LOCK.*symbolic link"):
        idx.add(docs(50, 1))
    with pytest.raises(IndexFormatError, match="LOCK.*symbolic link"):
        idx.delete(["d0"])
    idx.close()
    with pytest.raises(IndexFormatError, match="LOCK.*symbolic link"):
        HybridIndex.create(built, BM25, overwrite=True)
    assert target.read_bytes() == data
    (built / "LOCK").unlink()
    assert state(built) == (3, [f"d{i}" for i in range(6)])  # create, two adds: nothing changed


def test_dangling_lock_symlink_creates_nothing_outside(tmp_path, built):
    target = tmp_path / "elsewhere" / "not-yet"
    (built / "LOCK").unlink(missing_ok=True)
    (built / "LOCK").symlink_to(target)
    with pytest.raises(IndexFormatError, match="symbolic link"):
        IndexLock(built).acquire()
    assert not target.exists() and not target.parent.exists()


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_lock_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path, kind):
    d = tmp_path / "idx"
    d.mkdir()
    if kind == "fifo":
        os.mkfifo(d / "LOCK")
    else:
        (d / "LOCK").mkdir()
    with pytest.raises(IndexFormatError, match=f"LOCK.*{'a FIFO' if kind == 'fifo' else 'a directory'}"):
        IndexLock(d).acquire()


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm", "-journal"])
def test_docstore_symlink_is_refused_before_sqlite_opens_it(tmp_path, built, suffix):
    # the target: a foreign SQLite database (for the main file) or a plain file (side files)
    target = tmp_path / "elsewhere" / f"foreign{suffix}.sqlite"
    target.parent.mkdir()
    if suffix == "":
        con = sqlite3.connect(target)
        con.execute("CREATE TABLE mine (x INTEGER)")
        con.commit()
        con.close()
    else:
        target.write_bytes(b"not yours\n" * 50)
    data = target.read_bytes()
    link = built / f"docstore.sqlite{suffix}"
    if suffix == "":
        link.unlink()
    else:
        link.unlink(missing_ok=True)
    link.symlink_to(target)
    r = cli("query", built, "vitamin bone")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert str(link) in r.stderr and "symbolic link" in r.stderr
    with pytest.raises(IndexFormatError, match=f"docstore.sqlite{suffix}.*symbolic link"):
        HybridIndex.load(built)
    r = cli("ingest", tmp_path / "corpus.jsonl", "--index", built, "-q")
    assert r.returncode == 2 and str(link) in r.stderr, r.stderr
    assert target.read_bytes() == data


def test_docstore_that_is_a_directory_is_refused(tmp_path):
    from hybridrag.stores.docstore import DocStore

    (tmp_path / "docstore.sqlite").mkdir()
    with pytest.raises(IndexFormatError, match="docstore.sqlite.*a directory"):
        DocStore(tmp_path / "docstore.sqlite")


def test_docstore_swapped_while_opening_is_refused(tmp_path, monkeypatch):
    """The file SQLite opened must be the one checked (same inode)."""
    from hybridrag.stores import docstore as ds_mod

    path = tmp_path / "docstore.sqlite"
    ds_mod.DocStore(path).close()
    other = tmp_path / "other.sqlite"
    ds_mod.DocStore(other).close()
    real_connect = sqlite3.connect

    def swapping_connect(*a, **k):
        os.replace(other, path)  # another regular file takes the name between check and open
        return real_connect(*a, **k)

    monkeypatch.setattr(ds_mod.sqlite3, "connect", swapping_connect)
    with pytest.raises(IndexFormatError, match="replaced while it was being opened"):
        ds_mod.DocStore(path)


def test_open_for_write_never_writes_through_an_existing_entry(tmp_path):
    target, data = outside_file(tmp_path)
    d = tmp_path / "idx"
    d.mkdir()
    (d / "manifest.json.tmp").symlink_to(target)
    with pytest.raises(IndexFormatError, match="symbolic link"):
        open_for_write(d, "manifest.json.tmp")
    (d / "plain").write_bytes(b"old")
    with pytest.raises(IndexFormatError, match="already exists"):
        open_for_write(d, "plain")
    assert (d / "plain").read_bytes() == b"old"
    with pytest.raises(IndexFormatError, match="symbolic link"):
        check_plain_file(d, "manifest.json.tmp")
    with pytest.raises(IndexFormatError, match="symbolic link"):
        open_plain(d, "manifest.json.tmp", os.O_WRONLY | os.O_TRUNC)
    with open_for_write(d, "manifest.json.tmp", replace=True) as f:  # the link goes, a new file comes
        f.write(b"new")
    assert target.read_bytes() == data
    assert not (d / "manifest.json.tmp").is_symlink() and (d / "manifest.json.tmp").read_bytes() == b"new"
    assert check_plain_file(d, "absent") is None
    for bad in ("../x", "a/b", "..", ".", ""):
        with pytest.raises(IndexFormatError, match="not a plain file name"):
            open_for_write(d, bad)
    (d / "sub").mkdir()
    with pytest.raises(IndexFormatError, match="a directory"):
        open_for_write(d, "sub", replace=True)


# ---------------------------------------------------------------------- full disk


def test_disk_full_error_is_an_oserror_and_one_line():
    with pytest.raises(DiskFullError) as info:
        with disk_full_errors("/some/index", generation=7):
            raise OSError(errno.ENOSPC, "No space left on device", "/some/index/x.npy")
    e = info.value
    assert isinstance(e, OSError) and isinstance(e, IndexWriteError) and e.errno == errno.ENOSPC
    assert e.filename == "/some/index/x.npy"
    msg = str(e)
    assert "\n" not in msg and msg.startswith("/some/index/x.npy: the disk is full")
    assert "generation 7" in msg and "intact" in msg
    with pytest.raises(DiskFullError, match="quota"):
        with disk_full_errors("/i"):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
    with pytest.raises(DiskFullError, match="docstore.sqlite: the disk is full"):
        with disk_full_errors("/i/docstore.sqlite"):
            raise sqlite3.OperationalError("database or disk is full")
    for other in (OSError(errno.EIO, "I/O error"), sqlite3.OperationalError("database is locked")):
        with pytest.raises(type(other)) as info2:
            with disk_full_errors("/i"):
                raise other
        assert not isinstance(info2.value, DiskFullError)


def test_docstore_full_is_a_disk_full_error_and_the_commit_survives(tmp_path, built):
    idx = HybridIndex.load(built)
    con = idx.docstore._conn
    pages = con.execute("PRAGMA page_count").fetchone()[0]
    con.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own SQLITE_FULL, as on a full disk
    big = [{"id": f"big{i}", "text": " ".join(f"w{i}x{j}" for j in range(2000))} for i in range(3)]
    with pytest.raises(DiskFullError, match="docstore.sqlite: the disk is full.*intact") as info:
        idx.add(big)
    assert isinstance(info.value, OSError)
    idx.close()
    assert state(built) == (3, [f"d{i}" for i in range(6)])
    idx = HybridIndex.load(built)
    assert [h.doc_id for h in idx.search("vitamin bone", k=1)] == ["d0"]
    idx.add(big[:1])  # no limit on this connection: the write goes through
    idx.close()
    assert state(built) == (4, ["big0", *[f"d{i}" for i in range(6)]])


def test_store_file_enospc_through_the_cli_is_one_line_exit_1(tmp_path, built, monkeypatch, capsys):
    from hybridrag import cli as cli_mod

    real_fsync = os.fsync

    def full_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    with open(tmp_path / "more.jsonl", "w") as f:
        for d in docs(6, 3):
            f.write(json.dumps(d) + "\n")
    monkeypatch.setattr(os, "fsync", full_fsync)  # the commit fsyncs every file it writes
    code = cli_mod.main(["ingest", str(tmp_path / "more.jsonl"), "--index", str(built), "-q"])
    monkeypatch.setattr(os, "fsync", real_fsync)
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.count("\n") == 1 and err.startswith("hybridrag: error: ") and "the disk is full" in err
    assert "intact" in err and "generation 3" in err and str(built) in err
    assert state(built) == (3, [f"d{i}" for i in range(6)])


_TMPFS_SCRIPT = r"""
set -e
mount -t tmpfs -o size=1m tmpfs "$MNT"
"$PY" - <<'EOF'
import os, sys
sys.path.insert(0, os.environ["TESTS"])
from test_file_safety import BM25, docs
from hybridrag.index import HybridIndex
idx = HybridIndex.create(os.path.join(os.environ["MNT"], "idx"), BM25)
idx.add(docs(0, 6))
idx.close()
with open(os.path.join(os.environ["MNT"], "spare"), "wb") as f:   # freed after the failure
    f.write(b"\0" * 600_000)
EOF
set +e
"$PY" -m hybridrag.cli ingest "$OUT/big.jsonl" --index "$MNT/idx" -q 2> "$OUT/ingest.err"
echo $? > "$OUT/ingest.rc"
"$PY" -m hybridrag.cli query "$MNT/idx" "vitamin bone" -k 1 > "$OUT/fullq.out" 2> "$OUT/fullq.err"; echo $? > "$OUT/fullq.rc"
rm "$MNT/spare"
"$PY" - <<'EOF' > "$OUT/after.json"
import json, os
from hybridrag.index import HybridIndex
idx = HybridIndex.load(os.path.join(os.environ["MNT"], "idx"))
ids = sorted({r["doc_id"] for r in idx.docstore.get(idx.docstore.live_slots())})
top = [h.doc_id for h in idx.search("vitamin bone", k=1)]
print(json.dumps({"generation": idx.generation, "ids": ids, "top": top}))
idx.close()
EOF
echo $? > "$OUT/load.rc"
"""


def _unshare(probe: Path) -> list[str] | None:
    """A command prefix that runs as root in a private mount namespace (where a tmpfs can be
    mounted, tried on the empty folder ``probe``), or None."""
    exe = shutil.which("unshare")
    if exe is None:
        return None
    for prefix in ([exe, "--mount"], [exe, "--user", "--map-root-user", "--mount"]):
        try:
            r = subprocess.run([*prefix, "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                               capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0:
            return prefix
    return None


def test_real_full_disk_via_the_cli(tmp_path):
    """A real filesystem that fills up: a 1 MiB tmpfs mounted in a private mount namespace (it
    vanishes with the namespace; nothing is mounted on the machine)."""
    (tmp_path / "mnt").mkdir()
    prefix = _unshare(tmp_path / "mnt")
    if prefix is None:
        pytest.skip("cannot mount a tmpfs in a private mount namespace here (unshare missing or not "
                    "permitted); the max_page_count and ENOSPC tests above still run")
    import random

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnop") for _ in range(8)) for _ in range(20000)]
    with open(tmp_path / "big.jsonl", "w") as f:  # ~1 MB of text: more than the tmpfs holds
        for i in range(800):
            f.write(json.dumps({"id": f"big{i}", "text": " ".join(rng.choice(words) for _ in range(150))}) + "\n")
    env = {**os.environ, "MNT": str(tmp_path / "mnt"), "OUT": str(tmp_path), "PY": sys.executable,
           "TESTS": str(Path(__file__).parent),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "HF_HUB_OFFLINE": "1"}
    env.pop("HYBRIDRAG_DEBUG", None)
    r = subprocess.run([*prefix, "bash", "-c", _TMPFS_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    err = (tmp_path / "ingest.err").read_text()
    assert (tmp_path / "ingest.rc").read_text().strip() == "1", err
    assert err.count("\n") == 1 and err.startswith("hybridrag: error: ") and "Traceback" not in err
    assert "the disk is full" in err and "intact" in err
    # a query while the disk is still full reads the last commit
    assert (tmp_path / "fullq.rc").read_text().strip() == "0", (tmp_path / "fullq.err").read_text()
    assert "d0" in (tmp_path / "fullq.out").read_text()
    assert (tmp_path / "load.rc").read_text().strip() == "0", r.stderr
    after = json.loads((tmp_path / "after.json").read_text())
    assert after == {"generation": 2, "ids": [f"d{i}" for i in range(6)], "top": ["d0"]}
