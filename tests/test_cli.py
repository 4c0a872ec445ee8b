"""The command line through its installed entry point (tests hybridrag/cli.py)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
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
    r = hybridrag("query", idx, "vitamin bone", "-k", "2", "--json")
    hits = json.loads(r.stdout)
    assert hits[0]["doc_id"] == "a.txt" and set(hits[0]["scores"]) == {"dense", "bm25", "fused"}
    r = hybridrag("query", idx, "aspirin heart", "--explain")
    assert "bm25=" in r.stdout and "b.md" in r.stdout
    assert "weights: dense=0.500  bm25=0.500" in r.stdout
    # adaptive fusion shows the weights it chose for this query
    r = hybridrag("query", idx, "aspirin heart", "--fusion", "adaptive", "--explain")
    shown = re.findall(r"weights: dense=([0-9.]+)  bm25=([0-9.]+)", r.stdout)
    assert shown and abs(sum(map(float, shown[0])) - 1.0) < 2e-3
    r = hybridrag("info", idx, "--json")
    assert json.loads(r.stdout)["documents"] == 3
    assert hybridrag("check", idx).stdout.strip().endswith("ok")
    # re-running the same ingest adds nothing
    r = hybridrag("ingest", corpus, "--index", idx, "-q")
    assert "ingested 0 document(s)" in r.stdout and "3 unchanged" in r.stdout


def test_eval_on_beir_sample(tmp_path, pipeline_file):
    idx = tmp_path / "beir"
    hybridrag("ingest", SAMPLE / "corpus.jsonl", "--index", idx, "--pipeline", pipeline_file, "-q")
    r = hybridrag("eval", idx, "--beir", SAMPLE, "--max-queries", "10", "--json", "-q")
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


def test_ingest_csv_and_json_columns(tmp_path, pipeline_file):
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.csv").write_text("key,body,other\nn1,Calcium intake and bone health,x\nn2,Heart attack risk,y\n")
    (src / "recs.jsonl").write_text('{"pk": "r1", "content": "Vitamin D and latitude"}\n')
    idx = tmp_path / "idx"
    hybridrag("ingest", src, "--index", idx, "--pipeline", pipeline_file, "-q", "--text-column", "body",
              "--id-column", "key", "--text-field", "content", "--id-field", "pk")
    hits = json.loads(hybridrag("query", idx, "calcium bone", "-k", "3", "--json").stdout)
    ids = {h["doc_id"] for h in hits}
    assert any(i.endswith("n1") for i in ids), ids
    assert hits[0]["text"] == "Calcium intake and bone health"
    hits = json.loads(hybridrag("query", idx, "vitamin latitude", "-k", "1", "--json").stdout)
    assert hits[0]["doc_id"].endswith("r1") and hits[0]["text"] == "Vitamin D and latitude"
