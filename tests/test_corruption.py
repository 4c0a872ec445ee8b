"""Corruption and safe loading (hybridrag/index.py, hybridrag/cli.py): a flipped byte or a
truncation in every file of an index (each segment file, the BM25 vocabulary, the docstore,
the manifest) is caught by ``load(verify=True)`` with a message naming the file, and by
``hybridrag check`` (exit 1); a plain ``load`` checks structure only, and a query on any
damaged file raises ``IndexFormatError`` or answers, never crashes the process; ``HybridIndex.rebuild`` / ``hybridrag rebuild`` recover the stores from the
docstore; manifest paths outside the directory are refused; no pickle in the package."""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from hybridrag import IndexFormatError
from _ranking import assert_same_ranking
from hybridrag.index import HybridIndex, check_index

ROOT = Path(__file__).resolve().parents[1]
REPS = int(os.environ.get("HYBRIDRAG_CORRUPTION_REPS", "2"))  # damaged copies per file and kind
BM25 = {
    "name": "corrupt-bm25", "encoder": {"kind": "none"}, "chunking": {"max_tokens": 16, "overlap": 2},
    "dense": {"enabled": False}, "sparse": {"enabled": False}, "colbert": {"enabled": False},
    "bm25": {"enabled": True}, "fusion": {"method": "weighted", "weights": {"bm25": 1.0}},
}
TEXTS = ["vitamin d deficiency and bone fractures in older adults",
         "aspirin lowers the risk of heart attack in some patients",
         "the quick brown fox jumps over the lazy dog near the river bank",
         "dense vectors sparse weights and colbert token vectors for retrieval"]


def m3(m3_dir):
    return {
        "name": "corrupt-m3",
        "encoder": {"kind": "m3", "model": str(m3_dir), "max_length": 64, "query_max_length": 32, "batch_size": 8},
        "chunking": {"max_tokens": 24, "overlap": 4},
        "dense": {"enabled": True}, "sparse": {"enabled": True}, "bm25": {"enabled": True},
        "colbert": {"enabled": True},
        "fusion": {"method": "weighted", "weights": {"dense": 0.3, "sparse": 0.2, "colbert": 0.3, "bm25": 0.2}},
    }


def build(path: Path, pipeline, encoder=None) -> list[tuple[str, list[tuple[str, float]]]]:
    idx = HybridIndex.create(path, pipeline, encoder=encoder)
    docs = [{"id": f"d{i}", "text": (TEXTS[i % 4] + " ") * (1 + i % 3), "metadata": {"i": i}} for i in range(12)]
    idx.add(docs[:8])
    idx.delete(["d1", "d2"])
    idx.upsert(docs[8:] + [dict(docs[3], text="replaced text about fox and vitamin")])
    res = [(q, [(h.chunk_id, h.score) for h in idx.search(q, k=5)])
           for q in ("vitamin bone", "fox river", "heart aspirin")]
    idx.close()
    return res


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hybridrag.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


def index_files(path: Path) -> list[str]:
    m = json.loads((path / "manifest.json").read_text())
    return sorted(m["checksums"]) + ["docstore.sqlite", "manifest.json"]


@pytest.fixture(scope="module")
def m3_index(tmp_path_factory, m3_dir):
    from hybridrag.encoders.m3 import M3Encoder

    enc = M3Encoder.from_pretrained(str(m3_dir))
    path = tmp_path_factory.mktemp("m3") / "idx"
    results = build(path, m3(m3_dir), encoder=enc)
    return path, enc, results


def _damage(f: Path, how: str, rng: random.Random, rep: int = 0) -> None:
    data = bytearray(f.read_bytes())
    if how == "truncate":
        f.write_bytes(bytes(data[: rng.randrange(len(data))]))
        return
    if f.name == "docstore.sqlite":
        # SQLite pages hold free space no read ever looks at; flip a byte that carries data:
        # the header's magic string, or a byte of a stored chunk's text.
        if rep % 2 == 0:
            pos = rng.randrange(16)
        else:
            snippet = b"replaced text about fox"  # a live chunk's text (see build)
            hits = [m.start() for m in re.finditer(snippet, bytes(data))]
            assert hits, "chunk text not found in the docstore file"
            pos = rng.choice(hits) + rng.randrange(len(snippet))
    else:
        pos = rng.randrange(len(data))
    data[pos] ^= rng.randrange(1, 256)
    f.write_bytes(bytes(data))


def _checkpoint(path: Path) -> None:
    # fold the WAL into docstore.sqlite so the damage hits the data, not an ignorable log
    con = sqlite3.connect(path / "docstore.sqlite")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damage_to_any_file_is_detected_and_named(tmp_path, m3_index, how):
    src, enc, results = m3_index
    rng = random.Random({"flip": 11, "truncate": 12}[how])
    names = index_files(src)
    for part in ("dense.", "sparse-sparse.", "sparse-bm25.", "bm25.", "colbert.", "docstore", "manifest"):
        assert any(n.startswith(part) for n in names), (part, names)
    tried = 0
    for name in names:
        for rep in range(REPS):  # seeded positions per file
            path = tmp_path / f"{name}-{rep}"
            shutil.copytree(src, path)
            _checkpoint(path)
            _damage(path / name, how, rng, rep)
            with pytest.raises(IndexFormatError, match=re.escape(name)):
                HybridIndex.load(path, encoder=enc, verify=True).close()
            problems = check_index(path)
            assert problems and any(name in p for p in problems), (name, problems)
            tried += 1
    r = _run_cli("check", str(path))
    assert r.returncode == 1 and "manifest.json" in r.stdout, r.stdout + r.stderr
    assert _run_cli("check", str(src)).returncode == 0
    assert tried == REPS * len(names)


_QUERY_DAMAGED = r"""
import sys
from pathlib import Path

from hybridrag import HybridIndex, IndexFormatError

enc = None
if sys.argv[2] != "-":
    from hybridrag.encoders.m3 import M3Encoder

    enc = M3Encoder.from_pretrained(sys.argv[2])
for d in sorted(Path(sys.argv[1]).iterdir()):
    print("TRY", d.name, flush=True)
    try:
        idx = HybridIndex.load(d, encoder=enc)
        try:
            for q in ("vitamin bone", "fox river", "heart"):
                idx.search(q, k=5)
                idx.search(q, k=100, filters={"i": {"$gte": 0}})
            idx.search_batch(["aspirin", "dense vectors"], k=3)
        finally:
            idx.close()
        print("ANSWERED", d.name, flush=True)
    except IndexFormatError as e:
        print("REFUSED", d.name, "|", str(e).replace("\n", " "), flush=True)
"""


@pytest.mark.parametrize("kind", ["m3", "bm25"])
def test_a_query_on_any_damaged_file_never_crashes(tmp_path, m3_index, m3_dir, kind):
    """Every file of an index damaged in turn (flipped bytes, truncated), then loaded WITHOUT
    verification and queried, as ``hybridrag query`` does: each copy is refused with an
    IndexFormatError naming the damaged file, or answers; the process never dies (a
    segmentation fault in a compiled kernel, a Python exception of another type)."""
    if kind == "m3":
        src, model = m3_index[0], str(m3_dir)
    else:
        src, model = tmp_path / "bm25", "-"
        build(src, BM25)
    copies = tmp_path / "copies"
    copies.mkdir()
    rng = random.Random(23)
    names = index_files(src)
    for name in names:
        for rep, how in enumerate(("flip", "flip", "truncate")):
            path = copies / f"{name}-{how}{rep}"
            shutil.copytree(src, path)
            _checkpoint(path)
            (path / "LOCK").unlink(missing_ok=True)
            _damage(path / name, how, rng, rep)
    r = subprocess.run([sys.executable, "-c", _QUERY_DAMAGED, str(copies), model], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=900)
    tried = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("TRY ")]
    assert r.returncode == 0, f"died on {tried[-1:]} (exit {r.returncode}): {r.stderr[-3000:]}"
    assert len(tried) == 3 * len(names)
    for line in r.stdout.splitlines():
        if line.startswith("REFUSED "):
            copy, msg = line.split(" ", 2)[1], line.split("|", 1)[1]
            damaged = copy.rsplit("-", 1)[0]
            assert damaged in msg, line


def test_rebuild_recovers_stores_from_the_docstore(tmp_path, m3_index):
    src, enc, results = m3_index
    path = tmp_path / "idx"
    shutil.copytree(src, path)
    m = json.loads((path / "manifest.json").read_text())
    for name in m["checksums"]:
        if name.startswith(("dense", "colbert")):
            (path / name).unlink()          # lost
        else:
            _damage(path / name, "flip", random.Random(1))  # corrupt
    with pytest.raises(IndexFormatError):
        HybridIndex.load(path, encoder=enc)
    idx = HybridIndex.rebuild(path, encoder=enc)
    idx.close()
    assert check_index(path) == []
    again = HybridIndex.load(path, encoder=enc)
    try:
        for q, want in results:
            # re-encoding may change the last bits of a score and so the order of exact ties
            assert_same_ranking([(h.chunk_id, h.score) for h in again.search(q, k=5)], want)
        assert len(again) == sum(len(s) for s in [again.stores["dense"]]) == again.docstore.count()
    finally:
        again.close()


def test_rebuild_from_docstore_when_manifest_is_lost_via_cli(tmp_path):
    path = tmp_path / "idx"
    results = build(path, BM25)
    (tmp_path / "p.json").write_text(json.dumps(BM25))
    toml = tmp_path / "p.toml"
    toml.write_text('name = "corrupt-bm25"\n[encoder]\nkind = "none"\n[chunking]\nmax_tokens = 16\noverlap = 2\n'
                    '[dense]\nenabled = false\n[sparse]\nenabled = false\n[colbert]\nenabled = false\n'
                    '[bm25]\nenabled = true\n[fusion]\nmethod = "weighted"\nweights = { bm25 = 1.0 }\n')
    (path / "manifest.json").write_text("{ not json")
    r = _run_cli("check", str(path))
    assert r.returncode == 1 and "manifest.json" in r.stdout
    r = _run_cli("rebuild", str(path))
    assert r.returncode == 2 and "manifest.json" in r.stderr
    r = _run_cli("rebuild", str(path), "--pipeline", str(toml))
    assert r.returncode == 0, r.stderr
    assert "rebuilt" in r.stdout
    assert _run_cli("check", str(path)).returncode == 0
    idx = HybridIndex.load(path)
    for q, want in results:
        assert_same_ranking([(h.chunk_id, h.score) for h in idx.search(q, k=5)], want)
    idx.close()


def test_rebuild_refuses_a_corrupt_docstore(tmp_path):
    path = tmp_path / "idx"
    build(path, BM25)
    _checkpoint(path)
    data = bytearray((path / "docstore.sqlite").read_bytes())
    data[0:16] = b"garbage garbage!"
    (path / "docstore.sqlite").write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="docstore.sqlite"):
        HybridIndex.rebuild(path).close()


@pytest.mark.parametrize("content", ['["vitamin", 7]', '{"vitamin": 0}', '["fox", "fox"]'])
def test_a_vocabulary_of_the_wrong_shape_is_refused_by_name(tmp_path, content):
    """Valid JSON that is not a list of distinct strings (a file written by something else,
    whose checksum was updated too) is refused naming the file, at a plain load."""
    path = tmp_path / "idx"
    build(path, BM25)
    m = json.loads((path / "manifest.json").read_text())
    name = m["bm25_vocab"][-1]
    (path / name).write_text(content)
    with pytest.raises(IndexFormatError, match=re.escape(name)):
        HybridIndex.load(path).close()


def test_manifest_paths_outside_the_directory_are_refused(tmp_path):
    path = tmp_path / "idx"
    build(path, BM25)
    mf = path / "manifest.json"
    good = json.loads(mf.read_text())
    store = good["segments"][0]["files"]["bm25"]
    role, name = sorted(store.items())[0]
    outside = tmp_path / "outside.npy"
    shutil.copy(path / name, outside)
    for bad in ("../outside.npy", str(outside), "/etc/passwd", "..", ".", "a/b", ""):
        m = json.loads(json.dumps(good))
        m["checksums"][bad] = m["checksums"].pop(name)
        mf.write_text(json.dumps(m))
        with pytest.raises(IndexFormatError, match="refusing file name"):
            HybridIndex.load(path)
        m = json.loads(json.dumps(good))
        m["segments"][0]["files"]["bm25"][role] = bad
        mf.write_text(json.dumps(m))
        with pytest.raises(IndexFormatError, match="manifest"):
            HybridIndex.load(path)
    mf.write_text(json.dumps(dict(good, bm25_vocab=["../x.json"])))
    with pytest.raises(IndexFormatError, match="manifest"):
        HybridIndex.load(path)
    # a symlink in place of a store file (even to an identical copy) is refused
    from hybridrag.storage.manifest import manifest_text as _manifest_text

    mf.write_text(_manifest_text(good))
    HybridIndex.load(path).close()
    (path / name).unlink()
    (path / name).symlink_to(outside)
    with pytest.raises(IndexFormatError, match="symbolic link"):
        HybridIndex.load(path)
    assert any("symbolic link" in p for p in check_index(path))


def test_no_pickle_in_the_package():
    pkg = ROOT / "hybridrag"
    bad = []
    for f in sorted(pkg.rglob("*.py")):
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\bimport\s+(c?pickle|dill|joblib|shelve)\b|\bpickle\.", code):
                bad.append(f"{f}:{i}: {line.strip()}")
            if "torch.load(" in code and "weights_only=True" not in code:
                bad.append(f"{f}:{i}: {line.strip()}")
            if re.search(r"allow_pickle\s*=\s*True", code):
                bad.append(f"{f}:{i}: {line.strip()}")
            if re.search(r"np\.load\(", code) and "allow_pickle=False" not in code:
                bad.append(f"{f}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)
    assert "torch.load" in (pkg / "encoders" / "m3.py").read_text()  # the scan looks where loads are


def test_check_reports_a_file_that_vanishes_while_it_reads_it(tmp_path, monkeypatch):
    """A writer's commit may collect a file between check's test that it exists and its read
    (seen in tests/test_concurrency.py): check reports it, or checks the newer generation,
    and never raises the OS error."""
    import hybridrag.storage.manifest as manifest_mod

    pipeline = {"name": "vanish", "encoder": {"kind": "none"}, "dense": {"enabled": False},
                "sparse": {"enabled": False}, "colbert": {"enabled": False}, "bm25": {"enabled": True},
                "fusion": {"method": "weighted", "weights": {"bm25": 1.0}}}
    idx = HybridIndex.create(tmp_path / "idx", pipeline)
    idx.add([{"id": f"d{i}", "text": f"text number {i}", "metadata": {}} for i in range(5)])
    idx.close()
    real = manifest_mod.sha256_file
    gone: list[str] = []

    def vanishing(path):
        if not gone and "sparse-bm25" in Path(path).name:
            gone.append(Path(path).name)
            Path(path).unlink()
        return real(path)

    monkeypatch.setattr(manifest_mod, "sha256_file", vanishing)
    problems = check_index(tmp_path / "idx")
    assert gone and len(problems) == 1 and gone[0] in problems[0], problems
