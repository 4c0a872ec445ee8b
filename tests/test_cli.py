"""The command line through its installed entry point (tests hybridrag/cli.py); follow-up
commands in one test run in this process (``cli``): the same ``main``, without an interpreter
start-up and the imports behind it (several seconds per command on a 2-core CI machine)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "hybridrag" / "data" / "scifact-sample"


def hybridrag(*args, check=True):
    exe = shutil.which("hybridrag") or os.path.join(os.path.dirname(sys.executable), "hybridrag")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("HYBRIDRAG_DEBUG", None)
    r = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r


def cli(*args, check=True):
    """``hybridrag ARGS`` in this process: ``returncode``, ``stdout``, ``stderr`` as ``hybridrag`` gives them."""
    from types import SimpleNamespace

    from hybridrag.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:   # argparse's usage errors
            code = e.code if isinstance(e.code, int) else 2
    r = SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r


@pytest.fixture(scope="module")
def pipeline_file(tmp_path_factory, bert_dir):
    p = tmp_path_factory.mktemp("pipe") / "tiny.toml"
    p.write_text(f"""
name = "tiny"
[encoder]
kind = "dense"
model = "{bert_dir}"
max_length = 128
[chunking]
max_tokens = 100
overlap = 10
[sparse]
enabled = false
[bm25]
enabled = true
stemmer = "english"
[colbert]
enabled = false
[fusion]
method = "relative"
weights = {{ dense = 0.5, bm25 = 0.5 }}
""")
    return p


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    (d / "a.txt").write_text("Vitamin D deficiency is associated with bone fractures.")
    (d / "b.md").write_text("# Aspirin\n\nAspirin reduces the risk of heart attack.")
    (d / "c.html").write_text("<html><script>var x;</script><p>The quick brown fox.</p></html>")
    (d / "empty.txt").write_text("")
    (d / "blob.bin").write_bytes(bytes(range(256)) * 4)
    return d


def test_ingest_query_info_check(tmp_path, pipeline_file, corpus):
    idx = tmp_path / "idx"
    r = hybridrag("ingest", corpus, "--index", idx, "--pipeline", pipeline_file, "-q")
    assert "ingested 3 document(s)" in r.stdout
    assert "empty.txt" in r.stdout and "blob.bin" in r.stdout  # every skipped file is reported
    r = cli("query", idx, "vitamin bone", "-k", "2", "--json")
    hits = json.loads(r.stdout)
    assert hits[0]["doc_id"] == "a.txt" and set(hits[0]["scores"]) == {"dense", "bm25", "fused"}
    r = cli("query", idx, "aspirin heart", "--explain")
    assert "bm25=" in r.stdout and "b.md" in r.stdout
    assert "weights: dense=0.500  bm25=0.500" in r.stdout
    r = cli("query", idx, "Aspirin and zebras", "--explain")   # the analysed terms, unknown ones marked
    assert "bm25 terms: aspirin, and (in no document), zebra (in no document)" in r.stdout
    # why nothing (or less) came back goes to stderr; a big $in works; a bad value is one line
    r = cli("query", idx, "vitamin", "--filter", "colour=red")
    assert "note: no document has metadata key 'colour'" in r.stderr and "a.txt" not in r.stdout
    r = cli("query", idx, "?!", "--json")
    assert "note: no query terms for 'bm25'" in r.stderr and json.loads(r.stdout)   # dense still ranks
    ids = json.dumps({"$in": [f"{i}.txt" for i in range(5000)] + ["a.txt"]})
    r = cli("query", idx, "vitamin", "--json", "--filter", f"doc_id={ids}")
    assert [h["doc_id"] for h in json.loads(r.stdout)] == ["a.txt"]
    r = cli("query", idx, "vitamin", "--filter", f"n={2**64}", check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(2**64) in r.stderr
    # adaptive fusion shows the weights it chose for this query
    r = cli("query", idx, "aspirin heart", "--fusion", "adaptive", "--explain")
    shown = re.findall(r"weights: dense=([0-9.]+)  bm25=([0-9.]+)", r.stdout)
    assert shown and abs(sum(map(float, shown[0])) - 1.0) < 2e-3
    r = cli("info", idx, "--json")
    assert json.loads(r.stdout)["documents"] == 3
    assert cli("check", idx).stdout.strip().endswith("ok")
    # re-running the same ingest adds nothing
    r = cli("ingest", corpus, "--index", idx, "-q")
    assert "ingested 0 document(s)" in r.stdout and "3 unchanged" in r.stdout


def test_eval_on_beir_sample(tmp_path, pipeline_file):
    idx = tmp_path / "beir"
    cli("ingest", SAMPLE / "corpus.jsonl", "--index", idx, "--pipeline", pipeline_file, "-q")
    r = cli("eval", idx, "--beir", SAMPLE, "--max-queries", "10", "--json", "-q")
    rows = {row["run"]: row for row in json.loads(r.stdout)}
    assert set(rows) == {"dense", "bm25", "fused (relative)"}
    for row in rows.values():
        assert 0.0 <= row["ndcg@10"] <= 1.0 and row["queries"] == 10
    assert rows["bm25"]["recall@100"] > 0.5  # BM25 on real text finds the cited abstracts


@pytest.mark.parametrize("args,needle", [
    (["query", "/nonexistent/idx", "q"], "not an index"),
    (["ingest", "/nonexistent/file.txt", "--index", "/tmp/x"], "no such file"),
    (["info", "/tmp"], "not an index"),
])
def test_user_errors_are_one_line_without_traceback(args, needle):
    r = hybridrag(*args, check=False)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_pipeline_names_the_key(tmp_path, corpus):
    bad = tmp_path / "bad.toml"
    bad.write_text("[encoder]\nkind = 'dense'\nmodle = 'x'\n")
    r = hybridrag("ingest", corpus, "--index", tmp_path / "i", "--pipeline", bad, check=False)
    assert r.returncode == 2 and "encoder.modle" in r.stderr


def test_model_not_found_offline(tmp_path, corpus):
    p = tmp_path / "p.toml"
    p.write_text("[encoder]\nkind = 'dense'\nmodel = 'no-such-org/no-such-model'\n"
                 "[sparse]\nenabled = false\n[colbert]\nenabled = false\n"
                 "[fusion]\nweights = { dense = 1.0 }\n")
    r = hybridrag("ingest", corpus, "--index", tmp_path / "i", "--pipeline", p, check=False)
    assert r.returncode == 2 and "no-such-org/no-such-model" in r.stderr
    assert "Traceback" not in r.stderr


def test_query_prints_stored_lone_surrogates_as_escapes(tmp_path, pipeline_file):
    from hybridrag import HybridIndex

    idx = tmp_path / "idx"
    with HybridIndex.create(idx, str(pipeline_file)) as index:   # the docstore keeps such text as given
        index.add([{"id": "s", "text": "vitamin \ud800 bone"}, {"id": "t", "text": "heart attack"}])
    r = hybridrag("query", idx, "vitamin bone", "--explain")
    assert "vitamin \\ud800 bone" in r.stdout                    # was UnicodeEncodeError, exit 2
    hits = json.loads(cli("query", idx, "vitamin bone", "--json").stdout)
    assert hits[0]["text"] == "vitamin \ud800 bone"              # JSON's own escape: read back exactly


def test_ingest_csv_and_json_columns(tmp_path, pipeline_file):
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.csv").write_text("key,body,other\nn1,Calcium intake and bone health,x\nn2,Heart attack risk,y\n")
    (src / "recs.jsonl").write_text('{"pk": "r1", "content": "Vitamin D and latitude"}\n')
    idx = tmp_path / "idx"
    cli("ingest", src, "--index", idx, "--pipeline", pipeline_file, "-q", "--text-column", "body",
              "--id-column", "key", "--text-field", "content", "--id-field", "pk")
    hits = json.loads(cli("query", idx, "calcium bone", "-k", "3", "--json").stdout)
    ids = {h["doc_id"] for h in hits}
    assert any(i.endswith("n1") for i in ids), ids
    assert hits[0]["text"] == "Calcium intake and bone health"
    hits = json.loads(cli("query", idx, "vitamin latitude", "-k", "1", "--json").stdout)
    assert hits[0]["doc_id"].endswith("r1") and hits[0]["text"] == "Vitamin D and latitude"


# ---------------------------------------------------------------- a real folder (in process: fast)

def run_cli(capsys, *args):
    r = cli(*args, check=False)
    return r.returncode, r.stdout, r.stderr


def limited_pipeline(tmp_path, pipeline_file, **chunking):
    p = tmp_path / "limited.toml"
    extra = "".join(f"{k} = {v}\n" for k, v in chunking.items())
    p.write_text(pipeline_file.read_text().replace("overlap = 10\n", "overlap = 10\n" + extra))
    return p


def index_ids(idx_dir):
    from hybridrag.index import HybridIndex

    idx = HybridIndex.load(idx_dir)
    try:
        return sorted(idx.docstore.doc_ids_for_slots(idx.docstore.live_slots())), idx
    finally:
        pass


def test_bad_records_are_skipped_with_file_line_and_reason(tmp_path, capsys, pipeline_file):
    from test_sources import EXPECTED_REASON, write_bad_corpus

    src = tmp_path / "src"
    bad_at = write_bad_corpus(src)
    (src / "products.csv").write_text("name,price\nchair,10\n")
    good = ("Le café est très bon, déjà payé. " * 20).encode()
    (src / "mostly.txt").write_bytes(good[:50] + b"\xff" + good[50:])
    pipe = limited_pipeline(tmp_path, pipeline_file, max_document_bytes=2000)
    code, out, _ = run_cli(capsys, "ingest", src, "--index", tmp_path / "idx", "--pipeline", pipe, "-q")
    assert code == 0, out
    ids, idx = index_ids(tmp_path / "idx")
    assert ids == sorted([f"g{i}" for i in range(100)] + ["other-1", "mostly.txt"])
    assert idx.search("good record number 42 about topic42", k=1, modes=["bm25"])[0].doc_id == "g42"
    idx.close()
    assert "ingested 102 document(s)" in out
    for line, kind in bad_at.items():
        assert f"data.jsonl:{line}: {EXPECTED_REASON[kind]} (" in out, kind  # file:line: reason (detail)
    assert "products.csv: bad csv (no text column 'text'; columns: ['name', 'price'])" in out
    assert "mostly.txt: invalid UTF-8 replaced (1 byte(s)" in out
    # --strict keeps the all-or-nothing behaviour: the first bad record stops the run, nothing is kept
    code, out, err = run_cli(capsys, "ingest", src, "--index", tmp_path / "strict", "--pipeline", pipe, "-q",
                             "--strict")
    assert code == 2 and "--strict" in err and "data.jsonl:5: duplicate id" in err
    assert index_ids(tmp_path / "strict")[0] == []


def test_a_document_the_index_refuses_does_not_stop_the_run(tmp_path, capsys, pipeline_file):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.txt").write_text("Vitamin D and bone health in older adults. " * 400)  # over 3 chunks
    for i in range(5):
        (src / f"small{i}.txt").write_text(f"small document {i}")
    pipe = limited_pipeline(tmp_path, pipeline_file, max_chunks_per_document=3)
    code, out, _ = run_cli(capsys, "ingest", src, "--index", tmp_path / "idx", "--pipeline", pipe, "-q",
                           "--batch-size", "3")
    assert code == 0
    ids, idx = index_ids(tmp_path / "idx")
    idx.close()
    assert ids == [f"small{i}.txt" for i in range(5)]
    assert "big.txt: refused by the index (document 'big.txt' gives" in out
    assert "max_chunks_per_document = 3" in out


def test_several_folders_with_the_same_file_names(tmp_path, capsys, pipeline_file):
    for proj in ("projA", "projB", "x/docs", "y/docs"):
        (tmp_path / proj).mkdir(parents=True)
        (tmp_path / proj / "README.md").write_text(f"readme of {proj}")
    roots = [tmp_path / p for p in ("projA", "projB", "x/docs", "y/docs")]
    idx_dir = tmp_path / "idx"
    code, out, _ = run_cli(capsys, "ingest", *roots, "--index", idx_dir, "--pipeline", pipeline_file, "-q")
    assert code == 0 and "ingested 4 document(s)" in out
    ids, idx = index_ids(idx_dir)
    idx.close()
    assert ids == ["projA/README.md", "projB/README.md", "x/docs/README.md", "y/docs/README.md"]
    code, out, _ = run_cli(capsys, "ingest", *roots, "--index", idx_dir, "-q")
    assert "ingested 0 document(s)" in out and "4 unchanged" in out


def test_prune_deletes_documents_whose_file_is_gone(tmp_path, capsys, pipeline_file):
    src, other = tmp_path / "src", tmp_path / "other"
    for folder in (src, src / "sub", other):
        folder.mkdir()
    for name in ("keep.txt", "gone.txt", "sub/gone2.md"):
        (src / name).write_text(f"text of {name}")
    (src / "recs.jsonl").write_text('{"id": "r1", "text": "record one"}\n')
    (other / "elsewhere.txt").write_text("another folder's file")
    idx_dir = tmp_path / "idx"
    run_cli(capsys, "ingest", src, "--index", idx_dir, "--pipeline", pipeline_file, "-q")
    run_cli(capsys, "ingest", other, "--index", idx_dir, "-q")
    (src / "gone.txt").unlink()
    (src / "sub" / "gone2.md").unlink()
    (src / "recs.jsonl").unlink()
    (other / "elsewhere.txt").unlink()  # gone too, but not under the folder pruned below
    code, out, _ = run_cli(capsys, "ingest", src, "--index", idx_dir, "-q")  # without --prune: nothing deleted
    assert len(index_ids(idx_dir)[0]) == 5
    index_ids(idx_dir)[1].close()
    (src / "new.txt").write_text("a new file")
    code, out, _ = run_cli(capsys, "ingest", src, "--index", idx_dir, "-q", "--prune")
    assert code == 0 and "3 pruned" in out
    assert "pruned 3 document(s) no longer in their files:\n  gone.txt\n  r1\n  sub/gone2.md\n" in out
    ids, idx = index_ids(idx_dir)
    idx.close()
    assert ids == ["elsewhere.txt", "keep.txt", "new.txt"]


def test_prune_deletes_documents_their_files_no_longer_yield(tmp_path, capsys, pipeline_file):
    """A file that became empty or binary, a link whose target went, a record taken out of its
    file: gone from the files, so gone from the index with --prune (they stayed searchable). A
    file with a bad record, or one this run could not read, keeps its documents."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("empty.txt", "binary.txt", "target.txt", "keep.txt"):
        (src / name).write_text(f"text of {name}")
    (src / "link.txt").symlink_to(src / "target.txt")
    (src / "recs.jsonl").write_text("".join(f'{{"id": "r{i}", "text": "record {i}"}}\n' for i in range(4)))
    (src / "rows.csv").write_text("id,text\nc1,row one\nc2,row two\n")
    (src / "bad.jsonl").write_text('{"id": "b1", "text": "kept one"}\n{"id": "b2", "text": "kept two"}\n')
    idx_dir = tmp_path / "idx"
    code, out, _ = run_cli(capsys, "ingest", src, "--index", idx_dir, "--pipeline", pipeline_file, "-q")
    assert code == 0 and "ingested 13 document(s)" in out
    (src / "empty.txt").write_text("")
    (src / "binary.txt").write_bytes(b"\x00\x01binary")
    (src / "target.txt").unlink()    # link.txt leads nowhere now (and target.txt is gone)
    (src / "recs.jsonl").write_text('{"id": "r0", "text": "record 0"}\n{"id": "r2", "text": "record 2, edited"}\n')
    (src / "rows.csv").write_text("id,text\nc2,row two\n")
    (src / "bad.jsonl").write_text('{"id": "b1", "text": "kept one"}\n{"id": "b2", "text": \n')   # b2's line is bad now
    code, out, _ = run_cli(capsys, "ingest", src, "--index", idx_dir, "-q", "--prune")
    assert code == 0 and "7 pruned" in out, out
    assert ("pruned 7 document(s) no longer in their files:\n  binary.txt\n  c1\n  empty.txt\n  link.txt\n  r1\n"
            "  r3\n  target.txt\n") in out
    ids, idx = index_ids(idx_dir)
    assert ids == ["b1", "b2", "c2", "keep.txt", "r0", "r2"]
    assert idx.search("edited", k=1)[0].doc_id == "r2"
    idx.close()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_commits_what_was_processed(tmp_path, capsys, pipeline_file, signum):
    from hybridrag.index import HybridIndex

    src = tmp_path / "src"
    src.mkdir()
    n = 400
    for i in range(n):
        (src / f"f{i:04d}.txt").write_text(f"document {i} about subject{i}")
    idx_dir = tmp_path / "idx"
    exe = shutil.which("hybridrag") or os.path.join(os.path.dirname(sys.executable), "hybridrag")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("HYBRIDRAG_DEBUG", None)
    # One document per batch and no commit by count or time: only the interrupt commits.
    proc = subprocess.Popen([exe, "ingest", str(src), "--index", str(idx_dir), "--pipeline", str(pipeline_file),
                             "--batch-size", "1", "--commit-seconds", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    progress = bytearray()
    reader = threading.Thread(target=lambda: [progress.extend(b) for b in iter(lambda: proc.stderr.read(1), b"")],
                              daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while not re.search(rb"\b([2-9]\d) chunks \[", bytes(progress)):  # 20..99 chunks processed
        assert proc.poll() is None, f"ended before the interrupt: {bytes(progress)[-500:]!r}"
        assert time.monotonic() < deadline, bytes(progress)[-500:]
        time.sleep(0.02)
    proc.send_signal(signum)
    out = proc.stdout.read().decode()
    assert proc.wait(timeout=300) == 130, out
    reader.join(timeout=10)
    m = re.search(r"interrupted: kept (\d+) document\(s\) \((\d+) chunks\) committed", out)
    assert m, out
    kept = int(m[1])
    assert 20 <= kept < n and int(m[2]) == kept
    idx = HybridIndex.load(idx_dir)
    ids = sorted(idx.docstore.doc_ids_for_slots(idx.docstore.live_slots()))
    assert ids == [f"f{i:04d}.txt" for i in range(kept)]  # the walk is sorted: the first `kept` files
    rows = idx.docstore.get(idx.docstore.live_slots())
    assert sorted(r["text"] for r in rows) == sorted(f"document {i} about subject{i}" for i in range(kept))
    last = kept - 1
    assert idx.search(f"subject{last}", k=1, modes=["bm25"])[0].doc_id == f"f{last:04d}.txt"
    idx.close()
    code, out, _ = run_cli(capsys, "ingest", src, "--index", idx_dir, "-q")  # the rerun completes the rest
    assert code == 0 and f"ingested {n - kept} document(s)" in out and f"{kept} unchanged" in out


def test_empty_index_is_recreated_with_a_fixed_pipeline(tmp_path, capsys, pipeline_file, corpus):
    from hybridrag.index import HybridIndex

    idx_dir = tmp_path / "idx"
    bad = tmp_path / "too-long.toml"  # max_tokens over the tiny BERT's 512 positions
    bad.write_text(pipeline_file.read_text().replace("max_length = 128", "max_length = 1024")
                   .replace("max_tokens = 100", "max_tokens = 1000"))
    code, _, err = run_cli(capsys, "ingest", corpus, "--index", idx_dir, "--pipeline", bad, "-q")
    assert code == 2 and "chunking.max_tokens = 1000 plus 2 special tokens is more than the 512 tokens" in err
    assert not idx_dir.exists()
    # An index left empty (another pipeline, no documents) gives way to the pipeline asked for.
    other = tmp_path / "other.toml"
    other.write_text(pipeline_file.read_text().replace('name = "tiny"', 'name = "tiny-other"'))
    HybridIndex.create(idx_dir, str(other)).close()
    code, out, err = run_cli(capsys, "ingest", corpus, "--index", idx_dir, "--pipeline", pipeline_file, "-q")
    assert code == 0 and "holds no documents: re-creating it with pipeline 'tiny'" in err
    assert "ingested 3 document(s)" in out
    # One with documents is refused, with the command that clears it.
    code, _, err = run_cli(capsys, "ingest", corpus, "--index", idx_dir, "--pipeline", other, "-q")
    assert code == 2 and f"rm -r '{idx_dir}'" in err
    # ...naming what differs, and that leaving out --pipeline keeps adding with the index's own.
    assert "differs in name ('tiny' there, 'tiny-other' given)" in err and "Leave out --pipeline" in err
    code, out, _ = run_cli(capsys, "ingest", corpus, "--index", idx_dir, "-q")
    assert code == 0 and "3 unchanged" in out


def test_a_query_of_a_bm25_index_loads_no_model_library(tmp_path, corpus):
    """``hybridrag query`` of an index without a neural model never imports transformers (0.8 s
    of every such command when the command line imported it to quiet it) and writes only its
    hits. (With a model, transformers is quieted through the environment it reads at import:
    tests/test_demo.py checks that its load report stays off the terminal.)"""
    toml = tmp_path / "bm25.toml"
    toml.write_text('name = "bm25"\n[encoder]\nkind = "none"\n[dense]\nenabled = false\n[sparse]\nenabled = false\n'
                    '[colbert]\nenabled = false\n[bm25]\nenabled = true\n[fusion]\nweights = { bm25 = 1.0 }\n'
                    '[chunking]\nmax_tokens = 8192\noverlap = 0\n')
    hybridrag("ingest", corpus, "--index", tmp_path / "idx", "--pipeline", toml, "-q")
    code = ("import sys\nfrom hybridrag.cli import main\nrc = main(['query', sys.argv[1], 'aspirin heart'])\n"
            "print('transformers loaded:', 'transformers' in sys.modules)\nsys.exit(rc)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE"))}
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "idx")], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert "b.md" in r.stdout and "transformers loaded: False" in r.stdout
    assert r.stderr == ""


def test_two_ingests_creating_one_index_never_wipe_each_other(tmp_path, capsys, pipeline_file, corpus, monkeypatch):
    """Two ``ingest`` runs creating one new index: the one that loads its model longer found no
    index before and the other's committed index after, once it held the lock. It replaced that
    index (and both exited 0, one run's documents gone); now it adds to it, or refuses it when
    its --pipeline differs, and an empty index is re-created only while still empty."""
    from hybridrag.errors import IndexFormatError
    from hybridrag.index import HybridIndex
    from hybridrag.storage import opening

    other = tmp_path / "other.toml"
    other.write_text(pipeline_file.read_text().replace('name = "tiny"', 'name = "tiny-other"'))
    real_check = opening._check_model_limits

    def another_ingest_meanwhile(path, pipe):
        def check(*a, **kw):   # runs between the "no index here" check and taking the lock
            monkeypatch.setattr(opening, "_check_model_limits", real_check)
            with HybridIndex.create(path, str(pipe)) as idx:
                idx.add([{"id": "first.txt", "text": "the first run's document about magnesium"}])
            return real_check(*a, **kw)
        monkeypatch.setattr(opening, "_check_model_limits", check)

    idx_dir = tmp_path / "same"
    another_ingest_meanwhile(idx_dir, pipeline_file)
    code, out, _ = run_cli(capsys, "ingest", corpus, "--index", idx_dir, "--pipeline", pipeline_file, "-q")
    assert code == 0 and "ingested 3 document(s)" in out
    with HybridIndex.load(idx_dir) as idx:
        assert idx.docstore.count_documents() == 4 and idx.search("magnesium", k=1)[0].doc_id == "first.txt"

    idx_dir = tmp_path / "differs"
    another_ingest_meanwhile(idx_dir, other)
    code, _, err = run_cli(capsys, "ingest", corpus, "--index", idx_dir, "--pipeline", pipeline_file, "-q")
    assert code == 2 and "differs in name" in err
    with HybridIndex.load(idx_dir) as idx:
        assert idx.docstore.count_documents() == 1

    # the library: create without overwrite refuses an index made meanwhile; only_if_empty keeps documents
    idx_dir = tmp_path / "api"
    another_ingest_meanwhile(idx_dir, other)
    with pytest.raises(IndexFormatError, match="another process created it meanwhile"):
        HybridIndex.create(idx_dir, str(pipeline_file))
    with pytest.raises(IndexFormatError, match="holds documents now"):
        opening.create(HybridIndex, idx_dir, str(pipeline_file), overwrite=True, only_if_empty=True)
    with HybridIndex.load(idx_dir) as idx:
        assert idx.pipeline.name == "tiny-other" and idx.docstore.count_documents() == 1


def test_ingest_that_reads_no_document_fails(tmp_path, capsys, pipeline_file):
    """Every input skipped (a binary file, an empty one) printed "ingested 0 document(s)" and
    exited 0, so a script went on as if the corpus were in; a link given by name that leads
    nowhere was "no such file or directory"."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "blob.bin").write_bytes(b"\x00\x01\x02")
    (src / "empty.txt").write_text("")
    code, out, err = run_cli(capsys, "ingest", src, "--index", tmp_path / "idx", "--pipeline", pipeline_file, "-q")
    assert code == 2 and "every input was skipped" in err and "empty.txt: empty" in out
    (src / "a.txt").write_text("now one file has text")
    code, out, _ = run_cli(capsys, "ingest", src, "--index", tmp_path / "idx", "-q")
    assert code == 0 and "ingested 1 document(s)" in out
    code, out, _ = run_cli(capsys, "ingest", src, "--index", tmp_path / "idx", "-q")   # all unchanged: fine
    assert code == 0 and "1 unchanged" in out
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    code, _, err = run_cli(capsys, "ingest", tmp_path / "loop", "--index", tmp_path / "idx", "-q")
    assert code == 2 and "is a symbolic link that leads nowhere" in err


def test_the_same_pipeline_keeps_adding_to_an_index_made_before_a_default_changed(tmp_path, capsys, corpus):
    """An index made before ``bm25.normalization`` existed reads as "basic"; the pipeline file it
    was made with now means "full". Ingesting with that same --pipeline was refused as a
    different pipeline; it adds to the index now, which keeps its own normalization. A pipeline
    that asks for something else is still refused."""
    import json as _json

    from hybridrag.index import HybridIndex
    from hybridrag.storage.manifest import MANIFEST, manifest_digest, manifest_text

    toml = tmp_path / "bm25.toml"
    toml.write_text('name = "bm25"\n[encoder]\nkind = "none"\n[dense]\nenabled = false\n[sparse]\nenabled = false\n'
                    '[colbert]\nenabled = false\n[bm25]\nenabled = true\n[fusion]\nweights = { bm25 = 1.0 }\n')
    idx_dir = tmp_path / "idx"
    first = HybridIndex.create(idx_dir, str(toml))
    pipe = _json.loads(_json.dumps(first.pipeline.to_dict()))
    first.close()
    pipe["bm25"]["normalization"] = "basic"
    with HybridIndex.create(idx_dir, pipe, overwrite=True) as old:   # as an older writer: basic, without the key
        old.add([{"id": "first", "text": "a document of the older index"}])
    m = _json.loads((idx_dir / MANIFEST).read_text())
    del m["pipeline"]["bm25"]["normalization"]
    m["manifest_sha256"] = manifest_digest(m)
    (idx_dir / MANIFEST).write_text(manifest_text(m))
    code, out, err = run_cli(capsys, "ingest", corpus, "--index", idx_dir, "--pipeline", toml, "-q")
    assert code == 0 and "ingested 3 document(s)" in out, err
    with HybridIndex.load(idx_dir) as idx:
        assert idx.pipeline.bm25.normalization == "basic" and idx.docstore.count_documents() == 4
    other = tmp_path / "other.toml"
    other.write_text(toml.read_text().replace("enabled = true\n", "enabled = true\nk1 = 1.2\n", 1))
    code, _, err = run_cli(capsys, "ingest", corpus, "--index", idx_dir, "--pipeline", other, "-q")
    assert code == 2 and "bm25.k1" in err and "normalization" not in err


def test_a_document_replaced_from_another_folder_is_reported(tmp_path, capsys, pipeline_file):
    """Ingesting folder P, then folder Q, both with a notes.txt: one id, so Q's replaced P's with
    no word; now a warning names both files."""
    for name, text in (("P", "pear from P"), ("Q", "quince from Q")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "notes.txt").write_text(text)
        (tmp_path / name / f"only-{name}.txt").write_text(f"only in {name}")
    idx_dir = tmp_path / "idx"
    code, out, _ = run_cli(capsys, "ingest", tmp_path / "P", "--index", idx_dir, "--pipeline", pipeline_file, "-q")
    assert code == 0 and "warnings" not in out
    code, out, _ = run_cli(capsys, "ingest", tmp_path / "Q", "--index", idx_dir, "-q")
    assert code == 0 and "ingested 2 document(s)" in out
    assert (f"{tmp_path / 'Q' / 'notes.txt'}: replaced a document read from another file ('notes.txt' was read "
            f"from {tmp_path / 'P' / 'notes.txt'}") in out
    assert "only-Q.txt" not in out.split("warnings")[1]   # new ids are no warning
